/**
 * No loss and no duplicates: a publisher's retries, events entering through
 * any instance, bursts. Real clients, the real broker (each test with its own
 * exchange, queue and stream, deleted afterwards).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Option, Redacted, Scope } from "effect"
import * as HubLayers from "../src/hub/Hub.js"
import { Hub } from "../src/hub/Hub.js"
import { Publisher } from "../src/rabbitmq/Publisher.js"
import * as RabbitMqSource from "../src/rabbitmq/Source.js"
import { randomUUID } from "node:crypto"
import { HubMetrics } from "../src/ops/Metrics.js"
import {
  broker,
  type Broker,
  brokerUrl,
  connect,
  consuming,
  sourceDown,
  eventually,
  freePort,
  hubLayer,
  hubWithSource,
  post,
  promise,
  rabbitConfig,
  range,
  seqs,
  ServiceProcess,
  tcpProxy,
  TestClient,
  uniqueNames
} from "./support.js"
import type { RabbitMqSettings } from "../src/config/Config.js"

/** A test's own exchange, queue and stream, deleted when the test ends. */
const testNames = (publisher: Broker) => {
  const names = uniqueNames("noloss")
  const stream = `${names.queue}.stream`
  return Effect.as(
    Effect.addFinalizer(() =>
      Effect.promise(() => publisher.cleanup({ exchange: names.exchange, queues: [names.queue, stream] }))
    ),
    { ...names, stream }
  )
}

describe("a publisher's retry (the same event_id published twice)", () => {
  for (const mode of ["queue", "stream"] as const) {
    it.live(`reaches each client once (${mode} mode), whether or not the broker marked it redelivered`, () =>
      Effect.gen(function*() {
        const publisher = yield* broker
        const names = yield* testNames(publisher)
        yield* Effect.gen(function*() {
          yield* consuming
          const clients = yield* Effect.all([connect(), connect()])
          const ids = range(0, 20).map(() => randomUUID())
          // Every event twice, as a publisher resends after a lost confirm; some right away, some later.
          for (let seq = 0; seq < 20; seq++) {
            yield* promise(() => publisher.publish(names.exchange, "backtest.completed", { event_id: ids[seq], seq }))
            if (seq % 2 === 0) {
              yield* promise(() => publisher.publish(names.exchange, "backtest.completed", { event_id: ids[seq], seq }))
            }
          }
          for (let seq = 1; seq < 20; seq += 2) {
            yield* promise(() => publisher.publish(names.exchange, "backtest.completed", { event_id: ids[seq], seq }))
          }
          // A last, new event: anything sent twice would arrive before it.
          yield* promise(() => publisher.publish(names.exchange, "backtest.completed", { event_id: randomUUID(), seq: 20 }))
          for (const client of clients) {
            yield* promise(() => client.until(() => seqs(client).includes(20), "event 20"))
            expect(seqs(client)).toEqual(range(0, 21))
          }
          const metrics = yield* (yield* HubMetrics).snapshot
          expect(metrics.events_deduplicated).toBe(20)
        }).pipe(Effect.provide(hubWithSource({ ...names, mode })))
      }), { timeout: 30_000 })
  }
})

describe("the broker setup is checked at startup", () => {
  it.live("stream mode on a broker that refuses the stream says why and how to choose queue mode", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      // A classic queue already has the stream's name: the broker refuses the declaration, as one without streams does.
      yield* promise(() => publisher.channel.assertQueue(names.stream, { durable: true }))
      yield* Effect.gen(function*() {
        const report = yield* sourceDown
        const detail = report.checks.rabbitmq?.detail ?? ""
        expect(detail).toContain(`the broker refused the stream queue ${names.stream}`)
        expect(detail).toContain("RabbitMQ 3.9 or later")
        expect(detail).toContain("RABBITMQ_MODE=queue")
        // The hub still serves clients.
        expect(report.status).toBe("degraded")
      }).pipe(Effect.provide(hubWithSource({ ...names, mode: "stream" })))
    }), { timeout: 30_000 })

  it.live("queue mode: a second instance with the same queue name is refused and told to set HUB_INSTANCE_ID", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      const first = yield* Layer.build(hubWithSource(names))
      yield* consuming.pipe(Effect.provide(first))
      const second = yield* Layer.build(hubWithSource(names))
      const report = yield* sourceDown.pipe(Effect.provide(second))
      expect(report.checks.rabbitmq?.detail).toContain("HUB_INSTANCE_ID")
      // The first one still has the queue to itself.
      expect(yield* promise(() => publisher.consumerCount(names.queue))).toBe(1)
    }), { timeout: 30_000 })
})

describe("a restart of the service in queue mode (node dist/main.js, RABBITMQ_MODE=queue)", () => {
  it.live("keeps its queue: the events published while it was down reach a client that resumes; the gap says unknown", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      const port = yield* promise(() => freePort())
      const queue = `${names.queue}.default`
      yield* Effect.addFinalizer(() => Effect.promise(() => publisher.cleanup({ queues: [queue] })))
      const running: Array<ServiceProcess> = []
      yield* Effect.addFinalizer(() => Effect.sync(() => running.forEach((service) => service.child.kill("SIGKILL"))))
      const start = Effect.promise(async () => {
        const service = ServiceProcess.start({
          PORT: String(port),
          HOST: "127.0.0.1",
          RABBITMQ_URL: brokerUrl,
          RABBITMQ_EXCHANGE: names.exchange,
          RABBITMQ_MODE: "queue",
          // The default name is websocket_events_queue.<hostname>.<port>; the test's own instance id keeps it apart.
          HUB_INSTANCE_ID: `${names.queue}-instance`
        })
        running.push(service)
        await service.waitForLog("consuming from RabbitMQ")
        return service
      })
      const before = yield* start
      const client = yield* promise(() => TestClient.connect(`ws://127.0.0.1:${port}/api/v1/ws/events`))
      const publish = (from: number, to: number) =>
        promise(async () => {
          for (let seq = from; seq < to; seq++) await publisher.publish(names.exchange, "backtest.completed", { seq })
        })
      yield* publish(0, 10)
      yield* promise(() => client.until(() => seqs(client).includes(9), "event 9"))
      before.child.kill("SIGTERM")
      yield* promise(() => before.exited)
      yield* publish(10, 60)
      yield* start
      const since = client.events.at(-1)!.id as string
      const again = yield* promise(() => TestClient.connect(`ws://127.0.0.1:${port}/api/v1/ws/events?since=${since}`))
      yield* publish(60, 70)
      yield* promise(() => again.until(() => seqs(again).includes(69), "event 69"))
      expect(seqs(again)).toEqual(range(10, 70))
      const gap = again.messages.find((message) => message.type === "hub.history_gap")!
      expect(gap.data.reason).toBe("unknown")
      again.close()
    }), { timeout: 60_000 })
})

describe("a burst is never blamed on a client that reads (default WS_SEND_BUFFER, 256)", () => {
  const token = "burst-token"
  const slowConsumers = Effect.map(
    Effect.flatMap(HubMetrics, (metrics) => metrics.snapshot),
    (snapshot) => snapshot.clients_disconnected.slow_consumer
  )

  it.live("an array POST of the largest size allowed (1,000 events) reaches a reading client whole", () =>
    Effect.gen(function*() {
      const clients = yield* Effect.all([connect(), connect()])
      const events = range(0, 1000).map((seq) => ({ type: "backtest.completed", data: { seq, job_id: `job-${seq}` } }))
      const response = yield* post("/api/v1/events", events, { authorization: `Bearer ${token}` })
      expect(response.status).toBe(202)
      for (const client of clients) {
        yield* promise(() => client.until(() => seqs(client).length === 1000, "1000 events"))
        expect(seqs(client)).toEqual(range(0, 1000))
        expect(client.isOpen).toBe(true)
      }
      expect(yield* slowConsumers).toBe(0)
    }).pipe(Effect.provide(hubLayer({ publishToken: Option.some(Redacted.make(token)) }))), { timeout: 30_000 })

  it.live("a library broadcast loop of 20,000 events reaches a reading client whole", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const client = yield* connect()
      yield* Effect.forEach(range(0, 20_000), (seq) => hub.broadcast("backtest.completed", { seq }), { discard: true })
      yield* promise(() => client.until(() => seqs(client).length === 20_000, "20,000 events", 30_000))
      expect(seqs(client)).toEqual(range(0, 20_000))
      expect(yield* slowConsumers).toBe(0)
    }).pipe(Effect.provide(hubLayer())), { timeout: 30_000 })

  it.live("a client that stops reading is still dropped (4000); the reading one gets everything", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const reading = yield* connect()
      const stopped = yield* connect()
      ;(stopped.ws as any)._socket.pause()
      // 64 MB in all: more than the kernel's socket buffers hold for the stopped client (up to about 36 MB here).
      const payload = "x".repeat(64 * 1024)
      // Events keep coming, one per turn of the event loop.
      for (let seq = 0; seq < 1000; seq++) {
        yield* hub.broadcast("backtest.completed", { seq, payload })
        yield* promise(() => new Promise((resolve) => setImmediate(resolve)))
      }
      yield* promise(() => reading.until(() => seqs(reading).length === 1000, "1000 events", 30_000))
      expect(seqs(reading)).toEqual(range(0, 1000))
      ;(stopped.ws as any)._socket.resume()
      expect([4000, 1006]).toContain((yield* promise(() => stopped.closed)).code)
      // Counted once the connection is over (after its close handshake).
      yield* eventually(slowConsumers, (n) => n === 1)
      expect(reading.isOpen).toBe(true)
    }).pipe(Effect.provide(hubLayer())), { timeout: 60_000 })

  it.live("a backlog from the broker after an outage (3,000 events) reaches a reading client whole", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      const proxy = yield* tcpProxy
      yield* Effect.gen(function*() {
        yield* consuming
        const client = yield* connect()
        yield* promise(() => proxy.cut())
        yield* sourceDown
        yield* promise(async () => {
          for (let seq = 0; seq < 3000; seq++) await publisher.publish(names.exchange, "backtest.completed", { seq })
        })
        yield* promise(() => proxy.restore())
        yield* promise(() => client.until(() => seqs(client).length === 3000, "3000 events", 30_000))
        expect(seqs(client)).toEqual(range(0, 3000))
        expect(yield* slowConsumers).toBe(0)
      }).pipe(Effect.provide(hubWithSource({ ...names, url: Option.some(Redacted.make(proxy.url)) })))
    }), { timeout: 60_000 })
})

describe("every instance delivers every event, whatever entered it", () => {
  const token = "publish-token"
  const auth = { authorization: `Bearer ${token}` }
  /** A hub instance as service.ts composes it: the source, and the publisher that POST and clients' publish use. */
  const instance = (rabbit: Partial<RabbitMqSettings>) =>
    RabbitMqSource.layer.pipe(
      Layer.provideMerge(
        hubLayer(
          { publishToken: Option.some(Redacted.make(token)), clientPublishTypes: ["command.#"] },
          HubLayers.layerLive,
          Publisher.layer
        )
      ),
      Layer.provide(rabbitConfig(rabbit))
    )

  for (const mode of ["queue", "stream"] as const) {
    it.live(`an event POSTed to one of two instances (${mode} mode) arrives once at a client of each`, () =>
      Effect.gen(function*() {
        const publisher = yield* broker
        const names = yield* testNames(publisher)
        const second = `${names.queue}.second`
        yield* Effect.addFinalizer(() => Effect.promise(() => publisher.cleanup({ queues: [second] })))
        const first = yield* Layer.build(instance({ ...names, mode }))
        const other = yield* Layer.build(instance({ ...names, queue: second, mode }))
        const clients = []
        for (const hub of [first, other]) {
          yield* consuming.pipe(Effect.provide(hub))
          clients.push(yield* connect().pipe(Effect.provide(hub)))
        }
        const single = yield* post("/api/v1/events", { type: "backtest.completed", data: { seq: 0 } }, auth).pipe(
          Effect.provide(first)
        )
        expect(single).toEqual({ status: 202, body: { status: "accepted", events: 1 } })
        const batch = yield* post("/api/v1/events", range(1, 5).map((seq) => ({ type: "backtest.completed", data: { seq } })), auth).pipe(
          Effect.provide(other)
        )
        expect(batch.status).toBe(202)
        // A last event through the broker: anything delivered twice would arrive before it.
        yield* promise(() => publisher.publish(names.exchange, "backtest.completed", { seq: 5 }))
        for (const client of clients) {
          yield* promise(() => client.until(() => seqs(client).includes(5), "event 5"))
          expect(seqs(client)).toEqual(range(0, 6))
          if (mode === "stream") for (const event of client.events) expect(event.id).toMatch(/^\d{20}$/)
        }
      }), { timeout: 60_000 })
  }

  it.live("a client's publish on one instance reaches a client of the other, once", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      const second = `${names.queue}.second`
      yield* Effect.addFinalizer(() => Effect.promise(() => publisher.cleanup({ queues: [second] })))
      const first = yield* Layer.build(instance(names))
      const other = yield* Layer.build(instance({ ...names, queue: second }))
      yield* consuming.pipe(Effect.provide(first))
      yield* consuming.pipe(Effect.provide(other))
      const sender = yield* connect().pipe(Effect.provide(first))
      const receiver = yield* connect().pipe(Effect.provide(other))
      yield* promise(() =>
        sender.request({ action: "publish", type: "command.run", data: { seq: 0 } }, "hub.published")
      )
      yield* promise(() => publisher.publish(names.exchange, "command.run", { seq: 1 }))
      for (const client of [sender, receiver]) {
        yield* promise(() => client.until(() => seqs(client).includes(1), "event 1"))
        expect(seqs(client)).toEqual([0, 1])
      }
    }), { timeout: 60_000 })

  it.live("the instance that moves stops mid-stream, twice: the next takes the ingest queue over; a client gets every event once, in order", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      // The ingest queue's movers take turns in the order they started: the two instances built first, then `other`.
      const movers = []
      for (let i = 0; i < 2; i++) {
        const scope = yield* Scope.make()
        yield* consuming.pipe(Effect.provide(yield* Layer.buildWithScope(instance({ ...names, mode: "stream" }), scope)))
        movers.push(scope)
      }
      const other = yield* Layer.build(instance({ ...names, mode: "stream" }))
      yield* consuming.pipe(Effect.provide(other))
      const client = yield* connect().pipe(Effect.provide(other))
      const total = 3000
      // About 1,000 events/s, in the order of one channel.
      const publishing = yield* Effect.forkChild(Effect.promise(async () => {
        for (let seq = 0; seq < total; seq++) {
          await publisher.publish(names.exchange, "backtest.completed", { seq })
          if (seq % 10 === 9) await new Promise((resolve) => setTimeout(resolve, 10))
        }
      }))
      for (const [i, mover] of movers.entries()) {
        yield* promise(() => client.until(() => client.events.length >= 800 * (i + 1), "events"))
        yield* Scope.close(mover, Exit.void)
      }
      yield* Fiber.join(publishing)
      yield* promise(() => client.until(() => seqs(client).includes(total - 1), "the last event", 30_000))
      expect(seqs(client)).toEqual(range(0, total))
      expect(client.messages.filter((message) => message.type === "hub.history_gap")).toEqual([])
    }), { timeout: 60_000 })

  it.live("POST answers 503 with the reason while the broker is unreachable, and delivers nothing locally", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      const proxy = yield* tcpProxy
      const hub = yield* Layer.build(instance({ ...names, url: Option.some(Redacted.make(proxy.url)) }))
      yield* consuming.pipe(Effect.provide(hub))
      const client = yield* connect().pipe(Effect.provide(hub))
      yield* promise(() => proxy.cut())
      const refused = yield* post("/api/v1/events", { type: "backtest.completed", data: { seq: 0 } }, auth).pipe(
        Effect.provide(hub)
      )
      expect(refused.status).toBe(503)
      expect(refused.body.error).toContain("not published")
      expect(refused.body.error).toContain("unavailable")
      yield* promise(() => proxy.restore())
      yield* consuming.pipe(Effect.provide(hub))
      const accepted = yield* post("/api/v1/events", { type: "backtest.completed", data: { seq: 1 } }, auth).pipe(
        Effect.provide(hub)
      )
      expect(accepted.status).toBe(202)
      yield* promise(() => client.until(() => seqs(client).includes(1), "event 1"))
      // The refused event never reached anyone.
      expect(seqs(client)).toEqual([1])
    }), { timeout: 60_000 })

  it.live("an event no queue takes is never acknowledged as published: the publisher fails with the reason", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      // The exchange exists and no queue is bound to it: RabbitMQ would confirm the message and drop it.
      yield* promise(() => publisher.channel.assertExchange(names.exchange, "topic", { durable: true }))
      const error = yield* Effect.flip(
        Effect.flatMap(Publisher, (hubPublisher) => hubPublisher.publishEvent("backtest.completed", { seq: 0 })).pipe(
          Effect.provide(Publisher.layer),
          Effect.provide(rabbitConfig(names))
        )
      )
      expect(error.reason).toBe("Unroutable")
      expect(error.message).toContain("no queue took the event")
    }), { timeout: 30_000 })

  it.live("the library's publish goes through the broker to every instance; broadcast stays local", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      const second = `${names.queue}.second`
      yield* Effect.addFinalizer(() => Effect.promise(() => publisher.cleanup({ queues: [second] })))
      const first = yield* Layer.build(instance(names))
      const other = yield* Layer.build(instance({ ...names, queue: second }))
      const clients = []
      for (const hub of [first, other]) {
        yield* consuming.pipe(Effect.provide(hub))
        clients.push(yield* connect().pipe(Effect.provide(hub)))
      }
      yield* Effect.gen(function*() {
        yield* (yield* Hub).broadcast("backtest.completed", { seq: 0 })
        yield* (yield* Publisher).publishEvent("backtest.completed", { seq: 1 })
      }).pipe(Effect.provide(first))
      for (const client of clients) yield* promise(() => client.until(() => seqs(client).includes(1), "event 1"))
      expect(seqs(clients[0]!)).toEqual([0, 1])
      expect(seqs(clients[1]!)).toEqual([1])
    }), { timeout: 60_000 })
})
