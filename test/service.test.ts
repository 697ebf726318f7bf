/**
 * The built service as users run it: `node dist/main.js`, configured by
 * environment variables, stopped by a signal. (`npm test` builds first.)
 */
import { describe, expect, it } from "@effect/vitest"
import { freePort, ServiceProcess, TestClient } from "./support.js"

/** Waits until `condition` holds (at most 10 s). */
const until = async (condition: () => boolean, what: string) => {
  const deadline = Date.now() + 10_000
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within 10 s`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

const start = async (env: Record<string, string> = {}) => {
  const port = await freePort()
  const service = ServiceProcess.start({ PORT: String(port), HOST: "127.0.0.1", ...env })
  await service.waitForLog("listening")
  return { service, url: `ws://127.0.0.1:${port}/api/v1/ws/events`, http: `http://127.0.0.1:${port}` }
}

describe("node dist/main.js", () => {
  it("exits 0 on SIGTERM after closing every client with 1001", async () => {
    const { service, url, http } = await start({ SHUTDOWN_TIMEOUT: "5s" })
    const clients = await Promise.all([1, 2, 3].map(() => TestClient.connect(url)))
    const health = await fetch(`${http}/health`)
    expect(health.status).toBe(200)
    service.child.kill("SIGTERM")
    const closes = await Promise.all(clients.map((client) => client.closed))
    for (const close of closes) expect(close).toEqual({ code: 1001, reason: "server shutting down" })
    expect(await service.exited).toEqual({ code: 0, signal: null })
    expect(service.output).toContain("\"message\":\"shutting down\"")
  })

  it("a second signal during shutdown does not crash it", async () => {
    const { service, url } = await start({ SHUTDOWN_TIMEOUT: "5s", WS_WRITE_TIMEOUT: "1s" })
    // A client that stops reading keeps the shutdown waiting for its close handshake.
    const stuck = await TestClient.connect(url)
    ;(stuck.ws as any)._socket.pause()
    service.child.kill("SIGTERM")
    await service.waitForLog("shutting down")
    service.child.kill("SIGINT")
    await service.waitForLog("shutdown already in progress")
    expect(await service.exited).toEqual({ code: 0, signal: null })
  })

  it("shuts down as fast with a client POSTing on a kept-alive connection as without one", async () => {
    // Issue 23: stops that followed POSTs took longer, with nothing logged. The condition: a request that came on a
    // kept-alive connection once the routes were gone (the platform's handler removed, the socket still listening)
    // got no answer, and the server waited for that connection: as long as its client waited, up to
    // SHUTDOWN_TIMEOUT (then exit status 1). A client that does not answer its close frame widens that window to the
    // close handshake's 2 s, so that a POST every 10 ms always falls in it. Both stops must fit the same bound.
    const bound = 500 + 2000 + 2500 // the drain, the close handshake, and room for a busy machine
    const stop = async (posting: boolean) => {
      const { service, url, http } = await start({ SHUTDOWN_TIMEOUT: "10s", PUBLISH_TOKEN: "t" })
      const stuck = await TestClient.connect(url)
      await stuck.request({ action: "subscribe", event_types: ["none.of.these"] }, "hub.subscribed")
      ;(stuck.ws as any)._socket.pause()
      const answers = new Map<number, number>()
      let posts = 0
      let loop: Promise<void> = Promise.resolve()
      if (posting) {
        // fetch keeps its connection alive between requests; the loop ends at the first refused connection.
        loop = (async () => {
          for (;;) {
            const response = await fetch(`${http}/api/v1/events`, {
              method: "POST",
              headers: { authorization: "Bearer t", "content-type": "application/json" },
              body: JSON.stringify({ type: "shutdown.probe", data: { n: posts++ } })
            }).catch(() => undefined)
            if (response === undefined) return
            await response.arrayBuffer()
            answers.set(response.status, (answers.get(response.status) ?? 0) + 1)
            await new Promise((resolve) => setTimeout(resolve, 10))
          }
        })()
        await until(() => (answers.get(202) ?? 0) >= 5, "POSTs accepted")
      }
      const started = performance.now()
      service.child.kill("SIGTERM")
      const exit = await service.exited
      const took = performance.now() - started
      await loop
      return { exit, took, answers }
    }
    const quiet = await stop(false)
    const busy = await stop(true)
    process.stderr.write(`shutdown: ${Math.round(quiet.took)} ms without POSTs, ${Math.round(busy.took)} ms with ` +
      `(answers ${JSON.stringify(Object.fromEntries(busy.answers))})\n`)
    expect(quiet.exit).toEqual({ code: 0, signal: null })
    expect(busy.exit).toEqual({ code: 0, signal: null })
    expect(quiet.took).toBeLessThan(bound)
    expect(busy.took).toBeLessThan(bound)
    // Accepted until the routes went; from then on refused (503), not left waiting.
    expect([...busy.answers.keys()].every((status) => status === 202 || status === 503)).toBe(true)
  }, 60_000)

  it("with tracing on and the collector unreachable, shuts down as fast after a POST as without one", async () => {
    // Issue 23's slow stops after a POST, nothing logged after "RabbitMQ source stopped": tracing was on (the
    // OTEL_EXPORTER_OTLP_ENDPOINT of docs/operations.md) and no collector answered. A POST makes spans; without one
    // there are none. At shutdown the last spans were flushed through the exporter's retries, for up to 3 s
    // (3.6-3.7 s stops, against 0.6 s); now for at most 300 ms. The same bound for both stops.
    const bound = 500 + 1500 // the drain, and room for the flush and a busy machine
    const collector = await freePort() // nothing listens there: connections are refused
    const stop = async (posting: boolean) => {
      const { service, http } = await start({
        PUBLISH_TOKEN: "t",
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collector}`
      })
      // No request before the POST (each would make a span): the service said it listens.
      if (posting) {
        const response = await fetch(`${http}/api/v1/events`, {
          method: "POST",
          headers: { authorization: "Bearer t", "content-type": "application/json" },
          body: JSON.stringify({ type: "shutdown.traced", data: {} })
        })
        expect(response.status).toBe(202)
      }
      const started = performance.now()
      service.child.kill("SIGTERM")
      const exit = await service.exited
      return { exit, took: performance.now() - started }
    }
    const quiet = await stop(false)
    const posted = await stop(true)
    process.stderr.write(
      `shutdown with an unreachable collector: ${Math.round(quiet.took)} ms without a POST, ${Math.round(posted.took)} ms after one\n`
    )
    expect(quiet.exit).toEqual({ code: 0, signal: null })
    expect(posted.exit).toEqual({ code: 0, signal: null })
    expect(quiet.took).toBeLessThan(bound)
    expect(posted.took).toBeLessThan(bound)
  }, 60_000)

  it("LOG_FORMAT=pretty writes each line once, in the pretty format only", async () => {
    const port = await freePort()
    const service = ServiceProcess.start({ PORT: String(port), HOST: "127.0.0.1", LOG_FORMAT: "pretty", RABBITMQ_URL: "" })
    await service.waitForOutput("INFO")
    await service.waitForOutput("listening")
    service.child.kill("SIGTERM")
    expect(await service.exited).toEqual({ code: 0, signal: null })
    const lines = service.output.split("\n")
    expect(lines.filter((line) => line.includes("listening"))).toHaveLength(1)
    expect(lines.filter((line) => line.trimStart().startsWith("{"))).toEqual([])
  })

  it("refuses to start on a bad setting, naming the variable", async () => {
    const port = await freePort()
    const service = ServiceProcess.start({ PORT: String(port), WS_PING_PERIOD: "soon" })
    const exit = await service.exited
    expect(exit.code).toBe(1)
    expect(service.output).toContain("WS_PING_PERIOD")
    expect(service.output).toContain("expected a duration")
  })
})
