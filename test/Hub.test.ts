/**
 * The hub's own logic, with in-memory connections: who receives what, and
 * that an event is encoded once. The same behaviour is tested over real
 * sockets in websocket.test.ts.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Layer, Logger, Schedule } from "effect"
import { HubConfig } from "../src/config/Config.js"
import { type Connection, layerLocal } from "../src/hub/Hub.js"
import { wholeHub } from "./inMemoryHub.js"
import { HubMetrics } from "../src/ops/Metrics.js"
import type { DisconnectReason, Outbound } from "../src/protocol/Protocol.js"
import { replaceDefaultLogger } from "./support/heldLogs.js"

const TestHub = layerLocal.pipe(Layer.provide(HubConfig.layer()))

const fakeConnection = (id: number, capacity = Infinity) => {
  const received: Array<Outbound> = []
  const kicks: Array<DisconnectReason> = []
  const connection: Connection = {
    id,
    offer: (message) => {
      if (received.length >= capacity) return false
      received.push(message)
      return true
    },
    kick: (reason) => kicks.push(reason),
    keepAlive: () => {}
  }
  return { connection, received, kicks, types: () => received.map((m) => JSON.parse(m.payload.toString()).type) }
}

describe("Hub", () => {
  it.effect("encodes an event once and offers the same bytes to every recipient", () =>
    Effect.gen(function*() {
      const hub = yield* wholeHub
      const clients = [1, 2, 3].map((id) => fakeConnection(id))
      for (const { connection } of clients) yield* hub.register(connection)
      const recipients = yield* hub.broadcast("backtest.completed", { job_id: "j" })
      expect(recipients).toBe(3)
      const [first, ...rest] = clients.map((client) => client.received[0]!)
      for (const other of rest) expect(other).toBe(first)
      expect(JSON.parse(first!.payload.toString())).toMatchObject({ type: "backtest.completed", data: { job_id: "j" } })
    }).pipe(Effect.provide(TestHub)))

  it.effect("delivers by subscription: default everything, first subscribe replaces it, unsubscribe removes", () =>
    Effect.gen(function*() {
      const hub = yield* wholeHub
      const a = fakeConnection(1)
      yield* hub.register(a.connection)
      yield* hub.broadcast("task.running", {})
      expect(yield* hub.subscribe(1, ["backtest.*", "optimization.#"])).toEqual(["backtest.*", "optimization.#"])
      yield* hub.broadcast("task.running", {})
      yield* hub.broadcast("backtest.completed", {})
      yield* hub.broadcast("optimization.iteration.completed", {})
      expect(yield* hub.unsubscribe(1, ["backtest.*"])).toEqual(["optimization.#"])
      yield* hub.broadcast("backtest.completed", {})
      expect(yield* hub.unsubscribe(1, ["optimization.#"])).toEqual([])
      yield* hub.broadcast("optimization.new_best", {})
      expect(a.types()).toEqual(["task.running", "backtest.completed", "optimization.iteration.completed"])
    }).pipe(Effect.provide(TestHub)))

  it.effect("keeps the recipients of a type already broadcast up to date as clients and subscriptions change", () =>
    Effect.gen(function*() {
      const hub = yield* wholeHub
      const types = ["backtest.completed", "optimization.new_best", "task.running"]
      const a = fakeConnection(1)
      const b = fakeConnection(2)
      const c = fakeConnection(3)
      yield* hub.register(a.connection)
      // Every type is now known to the hub, with its recipients.
      for (const type of types) yield* hub.broadcast(type, {})
      yield* hub.register(b.connection, { allowed: ["backtest.#"] })
      yield* hub.subscribe(1, ["backtest.*", "backtest.#", "optimization.new_best"])
      yield* hub.unsubscribe(1, ["backtest.*"])
      yield* hub.register(c.connection)
      yield* hub.subscribe(3, ["task.running"])
      yield* hub.unregister(3)
      const counts: Array<number> = []
      for (const type of types) counts.push(yield* hub.broadcast(type, {}))
      // a: backtest.# and optimization.new_best; b: only what it is allowed; c: gone.
      expect(counts).toEqual([2, 1, 0])
      expect(a.types().slice(3)).toEqual(["backtest.completed", "optimization.new_best"])
      expect(b.types()).toEqual(["backtest.completed"])
      expect(c.types()).toEqual([])
      // Lifting b's limit lets every type through again; unsubscribing the last matching pattern stops one.
      yield* hub.authorize(2, undefined)
      yield* hub.unsubscribe(1, ["backtest.#"])
      for (const type of types) yield* hub.broadcast(type, {})
      expect(a.types().slice(5)).toEqual(["optimization.new_best"])
      expect(b.types().slice(1)).toEqual(types)
    }).pipe(Effect.provide(TestHub)))

  it.effect("kicks a client whose buffer is full without holding up the others", () =>
    Effect.gen(function*() {
      const hub = yield* wholeHub
      const slow = fakeConnection(1, 2)
      const fast = fakeConnection(2)
      yield* hub.register(slow.connection)
      yield* hub.register(fast.connection)
      for (let i = 0; i < 5; i++) yield* hub.broadcast("backtest.completed", { i })
      expect(slow.kicks[0]).toBe("slow_consumer")
      expect(fast.received).toHaveLength(5)
      const metrics = yield* (yield* HubMetrics).snapshot
      expect(metrics.events_broadcast).toBe(5)
    }).pipe(Effect.provide(TestHub)))

  it.effect("forgets an unregistered client", () =>
    Effect.gen(function*() {
      const hub = yield* wholeHub
      const a = fakeConnection(1)
      yield* hub.register(a.connection)
      yield* hub.unregister(1)
      expect(yield* hub.broadcast("x", {})).toBe(0)
      expect(yield* hub.clientCount).toBe(0)
    }).pipe(Effect.provide(TestHub)))

  it.live("a keep-alive that throws is logged and its client dropped; the next ticks still run, for every client", () =>
    Effect.gen(function*() {
      const logged: Array<{ level: string; message: string; cause: string }> = []
      const logger = Logger.make(({ cause, logLevel, message }) =>
        logged.push({ level: logLevel.toUpperCase(), message: String(message), cause: String(cause) })
      )
      const failing = fakeConnection(1)
      const served = fakeConnection(2)
      let failingTicks = 0
      let servedTicks = 0
      yield* Effect.gen(function*() {
        const hub = yield* wholeHub
        yield* hub.register({
          ...failing.connection,
          keepAlive: () => {
            if (failingTicks++ === 0) throw new Error("a keep-alive that throws")
          }
        })
        yield* hub.register({ ...served.connection, keepAlive: () => void servedTicks++ })
        // Ticks every 10 ms (a quarter of the shortest period).
        yield* Effect.sync(() => failingTicks >= 3 && servedTicks >= 3).pipe(
          Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: (done) => done })
        )
      }).pipe(
        Effect.provide(layerLocal.pipe(Layer.provide(HubConfig.layer({
          pingPeriod: Duration.millis(40),
          pongTimeout: Duration.millis(80),
          writeTimeout: Duration.millis(40),
          sseKeepAlive: Duration.millis(40)
        })))),
        Effect.provide(replaceDefaultLogger(logger))
      )
      expect(failing.kicks).toEqual(["error"])
      const errors = logged.filter((line) => line.level === "ERROR")
      expect(errors).toHaveLength(1)
      expect(errors[0]!.message).toContain("keep-alive failed")
      expect(errors[0]!.cause).toContain("a keep-alive that throws")
    }).pipe(Effect.timeout("5 seconds")))
})
