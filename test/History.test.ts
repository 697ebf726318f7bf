/**
 * The history on its own: ids, bounds, and where a `since` stands.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Context, Duration, Effect, Layer, Result } from "effect"
import { HubConfig, RabbitMqConfig } from "../src/config/Config.js"
import { History, streamId } from "../src/hub/History.js"
import { Outbound } from "../src/protocol/Protocol.js"
import { hostname } from "node:os"

const entry = (history: History, at: number, id = history.nextLocalId()) => ({
  id,
  type: "backtest.completed",
  message: Outbound.text(id),
  rooms: [],
  at
})

const fill = (history: History, count: number, at = 0) => {
  const ids: Array<string> = []
  for (let i = 0; i < count; i++) {
    const e = entry(history, at)
    history.append(e)
    ids.push(e.id)
  }
  return ids
}

/** Every entry after `cursor`, in order. */
const replay = (history: History, cursor: string | undefined) => {
  const ids: Array<string> = []
  for (let next = history.after(cursor); next !== undefined; next = history.after(next.id)) ids.push(next.id)
  return ids
}

describe("History", () => {
  it("gives fixed-width local ids that sort as strings in broadcast order, across 9 -> 10 and beyond", () => {
    const history = new History(100_000, 60_000, 1_764_201_234_567)
    const ids = fill(history, 12_000)
    expect(ids[0]).toMatch(/^1764201234567[0-9a-f]{4}-0000000000000001$/)
    expect(new Set(ids.map((id) => id.length)).size).toBe(1)
    expect([...ids].sort()).toEqual(ids)
  })

  it("replays exactly the entries after a cursor", () => {
    const history = new History(100, 60_000)
    const ids = fill(history, 50)
    expect(replay(history, ids[19])).toEqual(ids.slice(20))
    expect(replay(history, ids[49])).toEqual([])
    expect(history.place(ids[19]!)).toEqual({ _tag: "Covered" })
  })

  it("keeps at most HISTORY_MAX_EVENTS; a since before the oldest kept is a gap", () => {
    const history = new History(10, 60_000)
    const ids = fill(history, 25)
    expect(history.size).toBe(10)
    expect(history.oldest!.id).toBe(ids[15])
    // The newest evicted is still a position the history covers: everything after it is held.
    expect(history.place(ids[14]!)).toEqual({ _tag: "Covered" })
    expect(history.place(ids[13]!)).toEqual({ _tag: "Gap", reason: "missed" })
    expect(replay(history, ids[14])).toEqual(ids.slice(15))
  })

  it("drops entries older than HISTORY_MAX_AGE", () => {
    const history = new History(100, 1000)
    const old = fill(history, 5, 0)
    const recent = fill(history, 5, 900)
    history.trim(1500)
    expect(history.size).toBe(5)
    expect(history.oldest!.id).toBe(recent[0])
    expect(history.place(old[0]!)).toEqual({ _tag: "Gap", reason: "missed" })
    history.trim(10_000)
    expect(history.size).toBe(0)
    expect(history.place(recent[4]!)).toEqual({ _tag: "Covered" })
  })

  it("treats an id of another run (a restart, another instance) as a gap, and nonsense as malformed", () => {
    const history = new History(100, 60_000)
    fill(history, 3)
    const other = new History(100, 60_000)
    const foreign = fill(other, 1)[0]!
    expect(history.place(foreign)).toEqual({ _tag: "Gap", reason: "unknown" })
    expect(history.place("")).toEqual({ _tag: "Malformed" })
    expect(history.place("x".repeat(65))).toEqual({ _tag: "Malformed" })
    expect(history.place("1 OR 1=1")).toEqual({ _tag: "Malformed" })
    // What a client that had no id yet might send.
    expect(history.place("undefined")).toEqual({ _tag: "Malformed" })
    expect(history.place("null")).toEqual({ _tag: "Malformed" })
  })

  it("in stream mode, uses offsets as ids; local events sort between two offsets", () => {
    const history = new History(100, 60_000)
    history.useStreamIds()
    expect(history.ready).toBe(false)
    history.startsAt(40)
    for (const offset of [40, 41]) {
      history.append(entry(history, 0, streamId(offset)), true)
    }
    const local = history.nextLocalId()
    history.append(entry(history, 0, local))
    history.append(entry(history, 0, streamId(42)), true)
    expect(local).toBe("00000000000000000041.0000000001")
    expect(replay(history, streamId(40))).toEqual([streamId(41), local, streamId(42)])
    // Offset 39 is the newest this instance does not hold: resuming from it misses nothing; from 38 it does.
    expect(history.place(streamId(39))).toEqual({ _tag: "Covered" })
    expect(history.place(streamId(38))).toEqual({ _tag: "Gap", reason: "missed" })
    // An id from the classic mode cannot be placed in a stream.
    expect(history.place("1764201234567abcd-0000000000000001")).toEqual({ _tag: "Gap", reason: "unknown" })
  })

  it("after a hole in the stream, forgets what came before it", () => {
    const history = new History(100, 60_000)
    history.useStreamIds()
    history.startsAt(0)
    history.append(entry(history, 0, streamId(0)), true)
    history.startsAt(10)
    history.append(entry(history, 0, streamId(10)), true)
    expect(history.size).toBe(1)
    expect(history.place(streamId(0))).toEqual({ _tag: "Gap", reason: "missed" })
    expect(history.place(streamId(9))).toEqual({ _tag: "Covered" })
  })

  it("wakes waiters when ready and after an append", () => {
    const history = new History(100, 60_000)
    history.useStreamIds()
    const calls: Array<string> = []
    history.whenReady(() => calls.push("ready"))
    history.whenAppended(() => calls.push("appended"))
    history.append(entry(history, 0, streamId(0)), true)
    expect(calls).toEqual(["appended"])
    history.markReady()
    expect(calls).toEqual(["appended", "ready"])
  })
})

const fromEnv = <A, E>(layer: Layer.Layer<A, E>, env: Record<string, string>) =>
  Effect.result(Effect.flatMap(Effect.context<A>(), Effect.succeed).pipe(
    Effect.provide(layer.pipe(Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env, preserveEmptyStrings: true })))))
  ))

describe("history and stream settings", () => {
  it.effect("default to 10,000 events for 10 minutes, stream mode, and a 24 h / 1 GiB stream", () =>
    Effect.gen(function*() {
      const hub = Result.getOrThrow(yield* fromEnv(HubConfig.fromEnv, {}))
      const rabbit = Result.getOrThrow(yield* fromEnv(RabbitMqConfig.fromEnv, {}))
      const hubSettings = Context.get(hub, HubConfig)
      const rabbitSettings = Context.get(rabbit, RabbitMqConfig)
      expect(hubSettings.historyMaxEvents).toBe(10_000)
      expect(Duration.toMillis(hubSettings.historyMaxAge)).toBe(600_000)
      expect(rabbitSettings.mode).toBe("stream")
      expect(rabbitSettings.stream).toBe("websocket_events_stream")
      expect(Duration.toMillis(rabbitSettings.streamMaxAge)).toBe(86_400_000)
      expect(rabbitSettings.streamMaxBytes).toBe(1024 ** 3)
    }))

  it.effect("are read from HISTORY_MAX_EVENTS, HISTORY_MAX_AGE, RABBITMQ_MODE, RABBITMQ_STREAM, RABBITMQ_STREAM_MAX_*", () =>
    Effect.gen(function*() {
      const hub = Result.getOrThrow(yield* fromEnv(HubConfig.fromEnv, { HISTORY_MAX_EVENTS: "500", HISTORY_MAX_AGE: "1h" }))
      const rabbit = Result.getOrThrow(yield* fromEnv(RabbitMqConfig.fromEnv, {
        RABBITMQ_MODE: "stream",
        RABBITMQ_STREAM: "hub.events",
        RABBITMQ_STREAM_MAX_AGE: "7h",
        RABBITMQ_STREAM_MAX_BYTES: "5000000"
      }))
      const hubSettings = Context.get(hub, HubConfig)
      const rabbitSettings = Context.get(rabbit, RabbitMqConfig)
      expect(hubSettings.historyMaxEvents).toBe(500)
      expect(Duration.toMillis(hubSettings.historyMaxAge)).toBe(3_600_000)
      expect(rabbitSettings).toMatchObject({ mode: "stream", stream: "hub.events", streamMaxBytes: 5_000_000 })
      expect(Duration.toHours(rabbitSettings.streamMaxAge)).toBe(7)
    }))

  it.effect("queue mode's default queue is named after HUB_INSTANCE_ID, or the hostname and PORT: the same after a restart", () =>
    Effect.gen(function*() {
      const queueOf = (env: Record<string, string>) =>
        Effect.map(fromEnv(RabbitMqConfig.fromEnv, env), (context) =>
          Context.get(Result.getOrThrow(context), RabbitMqConfig).queue)
      expect(yield* queueOf({})).toBe(`websocket_events_queue.${hostname()}.8080`)
      expect(yield* queueOf({ PORT: "9001" })).toBe(`websocket_events_queue.${hostname()}.9001`)
      expect(yield* queueOf({ HUB_INSTANCE_ID: "hub-0" })).toBe("websocket_events_queue.hub-0")
      expect(yield* queueOf({ HUB_INSTANCE_ID: "hub-0", RABBITMQ_QUEUE: "mine" })).toBe("mine")
    }))

  it.effect("the duplicate window: DEDUP_MAX_EVENTS (10,000; 0 turns it off) and DEDUP_MAX_AGE (10 minutes)", () =>
    Effect.gen(function*() {
      const settings = (env: Record<string, string>) =>
        Effect.map(fromEnv(HubConfig.fromEnv, env), (context) =>
          Result.map(context, (c) => Context.get(c, HubConfig)))
      const defaults = Result.getOrThrow(yield* settings({}))
      expect(defaults.dedupMaxEvents).toBe(10_000)
      expect(Duration.toMinutes(defaults.dedupMaxAge)).toBe(10)
      const off = Result.getOrThrow(yield* settings({ DEDUP_MAX_EVENTS: "0", DEDUP_MAX_AGE: "1h" }))
      expect(off.dedupMaxEvents).toBe(0)
      expect(Duration.toHours(off.dedupMaxAge)).toBe(1)
      const refused = yield* settings({ DEDUP_MAX_EVENTS: "-1" })
      expect(Result.isFailure(refused) && String(refused.failure)).toContain("DEDUP_MAX_EVENTS")
    }))

  it.effect.each<[Record<string, string>, string]>([
    [{ HISTORY_MAX_EVENTS: "0" }, "HISTORY_MAX_EVENTS"],
    [{ HISTORY_MAX_AGE: "ten minutes" }, "HISTORY_MAX_AGE"]
  ])("refuse %j", ([env, name]) =>
    Effect.gen(function*() {
      const result = yield* fromEnv(HubConfig.fromEnv, env)
      expect(Result.isFailure(result) && String(result.failure)).toContain(name)
    }))

  it.effect("refuse an unknown RABBITMQ_MODE", () =>
    Effect.gen(function*() {
      const result = yield* fromEnv(RabbitMqConfig.fromEnv, { RABBITMQ_MODE: "streams" })
      expect(Result.isFailure(result) && String(result.failure)).toContain("RABBITMQ_MODE")
    }))
})
