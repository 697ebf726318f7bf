/**
 * The RabbitMQ source against the real broker on 127.0.0.1:5672. Every test
 * declares its own exchange and queue and deletes them afterwards; fault tests
 * break only the hub's own connection, through a TCP proxy (`tcpProxy`).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Result, Exit, Layer, Option, Redacted, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { hostname } from "node:os"
import { defaultEventTypeMap } from "../src/config/Config.js"
import { Hub } from "../src/hub/Hub.js"
import { HubMetrics } from "../src/ops/Metrics.js"
import * as RabbitMqSource from "../src/rabbitmq/Source.js"
import {
  broker,
  Broker,
  consuming,
  sourceDown,
  hubLayer,
  hubWithSource,
  rabbitConfig,
  range,
  seqs,
  brokerUrl,
  connect,
  eventually,
  freePort,
  promise,
  ServiceProcess,
  tcpProxy,
  TestClient,
  uniqueNames
} from "./support.js"

/**
 * Another program's connection to the same broker, open while this file's tests run: the fault tests must leave
 * it alone (checked by the last test).
 */
const bystander = { broker: undefined as unknown as Broker, closed: false }
beforeAll(async () => {
  bystander.broker = await Broker.open()
  bystander.broker.connection.on("close", () => (bystander.closed = true))
})
afterAll(() => bystander.broker.close())

const rabbitCounter = (name: string) =>
  Effect.map(Effect.flatMap(HubMetrics, (metrics) => metrics.snapshot), (s) => s.sources.rabbitmq?.[name] ?? 0)

/** A test's own exchange and queue, deleted when the test ends. */
const testNames = (publisher: Broker, extraQueues: ReadonlyArray<string> = []) => {
  const names = uniqueNames()
  return Effect.as(
    Effect.addFinalizer(() =>
      Effect.promise(() => publisher.cleanup({ exchange: names.exchange, queues: [names.queue, ...extraQueues] }))
    ),
    names
  )
}

const publishAll = (publisher: Broker, exchange: string, from: number, to: number, routingKey = "backtest.completed") =>
  Effect.promise(async () => {
    for (let seq = from; seq < to; seq++) {
      await publisher.publish(exchange, routingKey, { event_id: randomUUID(), seq })
    }
  })


describe("toEvent", () => {
  it.each([
    ["task.completed", "backtest.completed"],
    ["task.running", "backtest.submitted"],
    ["task.failed", "backtest.failed"],
    ["optimization.iteration", "optimization.iteration.completed"],
    ["strategy.discovered", "strategy.discovered"],
    ["task.cancelled", "task.cancelled"]
  ])("routing key %s becomes type %s with the FreqSearch table", (key, type) => {
    const event = toEventRight(key, { event_id: "e1" })
    expect(event).toEqual({ type, data: { event_id: "e1" } })
  })

  it.each([
    ["not json", "not valid JSON"],
    ["[1,2]", "not a JSON object"],
    ["42", "not a JSON object"],
    ["null", "not a JSON object"]
  ])("rejects the body %s", (body, reason) => {
    const result = RabbitMqSource.toEvent("task.completed", Buffer.from(body), defaultEventTypeMap)
    expect(Result.isFailure(result) && result.failure).toContain(reason)
  })

  it("rejects routing keys that cannot be event types", () => {
    expect(Result.isFailure(RabbitMqSource.toEvent("hub.error", Buffer.from("{}"), {}))).toBe(true)
    expect(Result.isFailure(RabbitMqSource.toEvent("", Buffer.from("{}"), {}))).toBe(true)
  })

  it("uses a configured table instead of the default", () => {
    const result = RabbitMqSource.toEvent("task.completed", Buffer.from("{}"), { "task.completed": "job.done" })
    expect(result).toEqual(Result.succeed({ type: "job.done", data: {} }))
  })

  it("never shows the password of the URL", () => {
    expect(RabbitMqSource.safeUrl("amqp://hub:hunter2@rabbit:5672/prod")).toBe("amqp://hub:***@rabbit:5672/prod")
  })

  it.effect("reconnects after about 5, 10, 20 then every 30 seconds", () =>
    Effect.gen(function*() {
      const schedule = RabbitMqSource.reconnectSchedule({
        reconnectDelay: Duration.seconds(5),
        maxReconnectWait: Duration.seconds(30)
      })
      const step = yield* Schedule.toStep(schedule)
      const seconds: Array<number> = []
      for (let i = 0; i < 7; i++) seconds.push(Duration.toSeconds((yield* step(0, undefined))[1]))
      const expected = [5, 10, 20, 30, 30, 30, 30]
      seconds.forEach((actual, i) => {
        expect(actual).toBeGreaterThanOrEqual(Math.min(expected[i]! * 0.8, 30))
        expect(actual).toBeLessThanOrEqual(30)
      })
    }))
})

const toEventRight = (key: string, body: object) => {
  const result = RabbitMqSource.toEvent(key, Buffer.from(JSON.stringify(body)), defaultEventTypeMap)
  return Result.getOrThrow(result)
}

describe("building the source's layer", () => {
  it.live("in stream mode over a hub whose history gives local ids, fails to build and names the layer to use", () =>
    Effect.gen(function*() {
      // Hub.layerLocal (via hubLayer) does not read RabbitMqConfig: its history cannot use stream ids.
      const exit = yield* Effect.exit(Layer.build(
        RabbitMqSource.layer.pipe(
          Layer.provideMerge(hubLayer()),
          Layer.provide(rabbitConfig({ ...uniqueNames("build"), mode: "stream" }))
        )
      ))
      expect(exit._tag).toBe("Failure")
      expect(String(Exit.isFailure(exit) ? Cause.squash(exit.cause) : "")).toContain("HubLive (Hub.layerLive)")
    }))
})

describe("RabbitMQ source", () => {
  it.live("delivers published events to subscribed clients, renamed, in publish order", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      yield* Effect.gen(function*() {
        yield* consuming
        const client = yield* connect()
        yield* promise(() =>
          client.request({ action: "subscribe", event_types: ["backtest.*", "optimization.#"] }, "hub.subscribed")
        )
        const published = [
          ["task.running", { job_id: "j1" }],
          ["strategy.discovered", { strategy_id: "s1" }],
          ["task.completed", { job_id: "j1", event_type: "task.completed", sharpe_ratio: 1.85 }],
          ["optimization.iteration", { iteration_number: 42 }],
          ["task.failed", { job_id: "j2" }]
        ] as const
        for (const [key, body] of published) yield* promise(() => publisher.publish(names.exchange, key, body))
        yield* promise(() => client.until(() => client.events.length === 4, "four events"))
        expect(client.events.map(({ type, data }) => ({ type, data }))).toEqual([
          { type: "backtest.submitted", data: { job_id: "j1" } },
          { type: "backtest.completed", data: { job_id: "j1", event_type: "task.completed", sharpe_ratio: 1.85 } },
          { type: "optimization.iteration.completed", data: { iteration_number: 42 } },
          { type: "backtest.failed", data: { job_id: "j2" } }
        ])
        expect(yield* rabbitCounter("events_consumed")).toBe(5)
      }).pipe(Effect.provide(hubWithSource(names)))
    }))

  it.live("a defect while handling a delivery ends the session; the event comes again and arrives once", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      // The hub's first broadcast dies (a bug); the others work.
      let died = 0
      const dyingOnce = Layer.effect(
        Hub,
        Effect.map(Hub, (hub) =>
          Hub.of({
            ...hub,
            // The source's way in (synchronous, see Hub.ts).
            broadcastEvent: (event) =>
              died > 0 ? hub.broadcastEvent(event) : Effect.suspend(() => {
                died++
                return Effect.die(new Error("a bug"))
              })
          }))
      )
      const layer = RabbitMqSource.layer.pipe(
        Layer.provide(rabbitConfig(names)),
        Layer.provide(dyingOnce),
        Layer.provideMerge(hubLayer())
      )
      yield* Effect.gen(function*() {
        yield* consuming
        const client = yield* connect()
        yield* publishAll(publisher, names.exchange, 0, 3)
        yield* promise(() => client.until(() => client.events.length >= 3, "3 events"))
        // Published afterwards: an event handled twice would arrive before it.
        yield* publishAll(publisher, names.exchange, 3, 4)
        yield* promise(() => client.until(() => client.events.length >= 4, "4 events"))
        expect(died).toBe(1)
        expect(seqs(client)).toEqual([0, 1, 2, 3])
        expect(yield* rabbitCounter("reconnects")).toBeGreaterThanOrEqual(1)
      }).pipe(Effect.provide(layer))
      // The hub is gone: whatever it had not acknowledged is back in the queue, and nothing is.
      expect((yield* promise(() => publisher.channel.checkQueue(names.queue))).messageCount).toBe(0)
    }))

  it.live("1,000 events reach each client exactly once, in order", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      yield* Effect.gen(function*() {
        yield* consuming
        const clients = yield* Effect.all([connect(), connect(), connect()])
        yield* publishAll(publisher, names.exchange, 0, 1000)
        for (const client of clients) {
          yield* promise(() => client.until(() => client.events.length >= 1000, "1000 events"))
          expect(seqs(client)).toEqual(range(0, 1000))
        }
        // Nothing arrives twice: the broker has nothing left for us either.
        expect((yield* promise(() => publisher.channel.checkQueue(names.queue))).messageCount).toBe(0)
        for (const client of clients) expect(client.events).toHaveLength(1000)
      }).pipe(Effect.provide(hubWithSource(names)))
    }), { timeout: 60_000 })

  it.live("survives a network outage, and the events published during it arrive afterwards", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      const proxy = yield* tcpProxy
      yield* Effect.gen(function*() {
        yield* consuming
        const client = yield* connect()
        yield* publishAll(publisher, names.exchange, 0, 50)
        yield* promise(() => client.until(() => client.events.length === 50, "50 events"))
        yield* promise(() => proxy.cut())
        const degraded = yield* sourceDown
        expect(degraded.status).toBe("degraded")
        // Published while the hub cannot reach the broker: they wait in the hub's queue.
        yield* publishAll(publisher, names.exchange, 50, 100)
        expect(client.isOpen).toBe(true)
        yield* promise(() => proxy.restore())
        yield* consuming
        yield* publishAll(publisher, names.exchange, 100, 150)
        yield* promise(() => client.until(() => seqs(client).includes(149), "event 149"))
        expect(seqs(client)).toEqual(range(0, 150))
      }).pipe(Effect.provide(hubWithSource({ ...names, url: Option.some(Redacted.make(proxy.url)) })))
    }), { timeout: 60_000 })

  it.live("starts while the broker is unreachable, serves clients, and connects when it comes back", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      const proxy = yield* tcpProxy
      yield* promise(() => proxy.cut())
      yield* Effect.gen(function*() {
        const client = yield* connect()
        const report = yield* sourceDown
        expect(report.status).toBe("degraded")
        yield* eventually(rabbitCounter("reconnects"), (n) => n >= 2)
        yield* promise(() => proxy.restore())
        yield* consuming
        yield* publishAll(publisher, names.exchange, 0, 10)
        yield* promise(() => client.until(() => client.events.length === 10, "10 events"))
      }).pipe(Effect.provide(hubWithSource({ ...names, url: Option.some(Redacted.make(proxy.url)) })))
    }), { timeout: 60_000 })

  it.live("rejects a poison message without requeue (to the dead-letter exchange) and goes on", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const dead = uniqueNames("dead")
      const names = yield* testNames(publisher, [dead.queue])
      yield* Effect.addFinalizer(() => Effect.promise(() => publisher.cleanup({ exchange: dead.exchange })))
      yield* promise(async () => {
        await publisher.channel.assertExchange(dead.exchange, "fanout", { durable: false })
        await publisher.channel.assertQueue(dead.queue, { durable: false })
        await publisher.channel.bindQueue(dead.queue, dead.exchange, "")
      })
      yield* Effect.gen(function*() {
        yield* consuming
        const client = yield* connect()
        yield* promise(() => publisher.publish(names.exchange, "backtest.completed", { seq: 0 }))
        yield* promise(() => publisher.publish(names.exchange, "backtest.completed", "this is not JSON"))
        yield* promise(() => publisher.publish(names.exchange, "backtest.completed", "[1,2,3]"))
        yield* publishAll(publisher, names.exchange, 1, 20)
        yield* promise(() => client.until(() => client.events.length === 20, "20 events"))
        expect(seqs(client)).toEqual(range(0, 20))
        expect(yield* rabbitCounter("events_rejected")).toBe(2)
        const deadLettered = yield* eventually(
          Effect.promise(() => publisher.channel.checkQueue(dead.queue)),
          (queue) => queue.messageCount === 2
        )
        expect(deadLettered.messageCount).toBe(2)
      }).pipe(Effect.provide(hubWithSource({ ...names, deadLetterExchange: Option.some(dead.exchange) })))
    }), { timeout: 30_000 })
})

describe("RabbitMQ source under faults", () => {
  it.live("survives the connection dying while poison messages are being rejected", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      const proxy = yield* tcpProxy
      yield* Effect.gen(function*() {
        yield* consuming
        const client = yield* connect()
        // Many deliveries in flight when the connection dies: rejecting them must not kill the source.
        yield* promise(async () => {
          for (let i = 0; i < 3000; i++) await publisher.publish(names.exchange, "backtest.completed", "not json")
        })
        yield* promise(() => proxy.cut())
        yield* promise(() => proxy.restore())
        yield* eventually(rabbitCounter("connections"), (n) => n >= 2)
        yield* consuming
        yield* publishAll(publisher, names.exchange, 0, 20)
        yield* promise(() => client.until(() => client.events.length === 20, "20 events"))
        expect(seqs(client)).toEqual(range(0, 20))
      }).pipe(Effect.provide(hubWithSource({ ...names, prefetch: 2000, url: Option.some(Redacted.make(proxy.url)) })))
    }), { timeout: 60_000 })

  it.live("reconnects after its connection is dropped (through the TCP proxy) in the middle of a stream", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = yield* testNames(publisher)
      const proxy = yield* tcpProxy
      yield* Effect.gen(function*() {
        yield* consuming
        const client = yield* connect()
        yield* publishAll(publisher, names.exchange, 0, 100)
        // Only the hub's connection goes through the proxy: nobody else's is dropped.
        yield* promise(() => proxy.cut())
        yield* promise(() => proxy.restore())
        yield* eventually(rabbitCounter("connections"), (n) => n >= 2)
        yield* publishAll(publisher, names.exchange, 100, 200)
        yield* promise(() => client.until(() => seqs(client).includes(199), "event 199"))
        // Deliveries whose acknowledgement died with the connection come again, marked redelivered;
        // the hub recognises their event_id and does not send them twice.
        expect(seqs(client)).toEqual(range(0, 200))
        expect(yield* rabbitCounter("reconnects")).toBeGreaterThanOrEqual(1)
      }).pipe(Effect.provide(hubWithSource({ ...names, url: Option.some(Redacted.make(proxy.url)) })))
    }), { timeout: 60_000 })

})

describe("another program on the same broker", () => {
  it("keeps its connection through this file's fault tests (they break only the hub's own connections)", async () => {
    expect(bystander.closed).toBe(false)
    // And it still works: a round trip on its channel.
    await bystander.broker.channel.checkExchange("amq.topic")
    expect(bystander.closed).toBe(false)
  })
})

describe("hub instances (node dist/main.js)", () => {
  it.live("two instances in queue mode with default queue names both deliver every event; after SIGTERM no consumer remains", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const { exchange } = uniqueNames()
      const instances = yield* promise(() =>
        Promise.all([1, 2].map(async () => {
          const port = await freePort()
          const service = ServiceProcess.start({
            PORT: String(port),
            HOST: "127.0.0.1",
            RABBITMQ_EXCHANGE: exchange,
            RABBITMQ_URL: brokerUrl,
            RABBITMQ_MODE: "queue"
          })
          await service.waitForLog("consuming from RabbitMQ")
          const client = await TestClient.connect(`ws://127.0.0.1:${port}/api/v1/ws/events`)
          // The default name: this host and the instance's port (stable across restarts, unique per instance).
          return { service, client, queue: `websocket_events_queue.${hostname()}.${port}` }
        }))
      )
      yield* Effect.addFinalizer(() =>
        Effect.promise(async () => {
          for (const { service } of instances) service.child.kill("SIGKILL")
          await publisher.cleanup({ exchange, queues: instances.map((instance) => instance.queue) })
        })
      )
      expect(instances[0]!.queue).not.toBe(instances[1]!.queue)
      for (const { queue } of instances) expect(yield* promise(() => publisher.consumerCount(queue))).toBe(1)

      yield* publishAll(publisher, exchange, 0, 100)
      for (const { client } of instances) {
        yield* promise(() => client.until(() => client.events.length === 100, "100 events"))
        expect(seqs(client)).toEqual(range(0, 100))
      }

      for (const { service, client, queue } of instances) {
        service.child.kill("SIGTERM")
        expect((yield* promise(() => client.closed)).code).toBe(1001)
        expect(yield* promise(() => service.exited)).toEqual({ code: 0, signal: null })
        expect(yield* promise(() => publisher.consumerCount(queue))).toBe(0)
      }
    }), { timeout: 60_000 })
})
