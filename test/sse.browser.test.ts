/**
 * A plain browser `EventSource` (real headless Chromium) against the real
 * service (`node dist/main.js`) and the real broker in stream mode: events
 * flow at about 100 per second, the hub is restarted, the EventSource
 * reconnects on its own with `Last-Event-ID`, and the page receives every
 * event exactly once, in order. The page is served from another origin, so
 * the stream's CORS headers are exercised too.
 */
import { expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { createServer, type Server } from "node:http"
import { broker, brokerUrl, freePort, promise, range, ServiceProcess, uniqueNames } from "./support.js"
import { launchChromium } from "./support/chromium.js"


/** A page on its own origin whose script reads the hub's stream and records what arrives. */
const pageServer = Effect.acquireRelease(
  promise(async () => {
    const server: Server = createServer((_request, response) => {
      response.writeHead(200, { "content-type": "text/html" })
      response.end("<!doctype html><title>sse</title>")
    })
    const port = await freePort()
    await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve))
    return { server, origin: `http://127.0.0.1:${port}` }
  }),
  ({ server }) => promise(() => new Promise<void>((resolve) => server.close(() => resolve())))
)

const browser = Effect.acquireRelease(
  promise(() => launchChromium()),
  (browser) => promise(() => browser.close())
)

it.live("a browser EventSource resumes across a hub restart (stream mode) with nothing lost or repeated", () =>
  Effect.gen(function*() {
    const chrome = yield* browser
    const publisher = yield* broker
    const names = uniqueNames("sse_browser")
    const stream = `${names.queue}.stream`
    yield* Effect.addFinalizer(() =>
      promise(() => publisher.cleanup({ exchange: names.exchange, queues: [stream] }))
    )
    const page = yield* pageServer
    const port = yield* promise(() => freePort())
    const running: Array<ServiceProcess> = []
    yield* Effect.addFinalizer(() => Effect.sync(() => running.forEach((service) => service.child.kill("SIGKILL"))))
    const start = promise(async () => {
      const service = ServiceProcess.start({
        PORT: String(port),
        HOST: "127.0.0.1",
        RABBITMQ_URL: brokerUrl,
        RABBITMQ_EXCHANGE: names.exchange,
        RABBITMQ_MODE: "stream",
        RABBITMQ_STREAM: stream,
        HUB_INSTANCE_ID: `${names.queue}-instance`,
        ALLOWED_ORIGINS: page.origin,
        // EventSource waits this long before each reconnection attempt.
        SSE_RETRY: "200ms"
      })
      running.push(service)
      await service.waitForLog("consuming from RabbitMQ")
      return service
    })
    const before = yield* start

    const tab = yield* promise(() => chrome.newPage())
    yield* promise(() => tab.goto(page.origin))
    yield* promise(() =>
      tab.evaluate((url) => {
        const state = { seqs: [] as Array<number>, hub: [] as Array<string>, opens: 0, errors: 0 }
        ;(window as any).state = state
        const source = new EventSource(url)
        source.onopen = () => state.opens++
        source.onerror = () => state.errors++
        source.onmessage = (message) => {
          const parsed = JSON.parse(message.data)
          if (parsed.type.startsWith("hub.")) state.hub.push(parsed.type)
          else state.seqs.push(parsed.data.seq)
        }
      }, `http://127.0.0.1:${port}/api/v1/sse/events?types=backtest.%23`)
    )
    /** Waits (in the page, on each animation frame) until `predicate` over `state` holds. */
    const waitFor = (predicate: string) =>
      promise(() => tab.waitForFunction(`(() => { const state = window.state; return ${predicate} })()`, undefined, { timeout: 30_000 }))
    const state = promise(() =>
      tab.evaluate(() => (window as any).state as { seqs: Array<number>; hub: Array<string>; opens: number; errors: number })
    )
    yield* waitFor("state.opens === 1")

    // About 100 events per second, published to the exchange for the whole test.
    const total = 600
    const publishing = yield* Effect.forkChild(promise(async () => {
      for (let seq = 0; seq < total; seq++) {
        await publisher.publish(names.exchange, "backtest.completed", { seq })
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
    }))
    yield* waitFor("state.seqs.length >= 100")
    before.child.kill("SIGTERM")
    yield* promise(() => before.exited)
    yield* start
    yield* Fiber.join(publishing)
    yield* waitFor(`state.seqs.includes(${total - 1})`)
    const final = yield* state
    const lost = range(0, total).filter((seq) => !final.seqs.includes(seq))
    const duplicated = final.seqs.length - new Set(final.seqs).size
    expect({ lost: lost.length, duplicated }).toEqual({ lost: 0, duplicated: 0 })
    expect(final.seqs).toEqual(range(0, total))
    // It reconnected on its own, with Last-Event-ID (the URL has no since): the restarted hub replayed from there.
    expect(final.opens).toBeGreaterThanOrEqual(2)
    expect(final.hub).toContain("hub.live")
  }), { timeout: 90_000 })
