/**
 * The hub's resume, with in-memory connections whose send buffer the test
 * drains by hand: the replay is paced by the buffer, live events never reach
 * a client that is catching up, and the switch to live loses nothing.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { HubConfig } from "../src/config/Config.js"
import { streamId } from "../src/hub/History.js"
import { type Connection, type Hub, layerLocal } from "../src/hub/Hub.js"
import { wholeHub } from "./inMemoryHub.js"
import type { DisconnectReason, Outbound } from "../src/protocol/Protocol.js"

const capacity = 4
const TestHub = layerLocal.pipe(Layer.provide(HubConfig.layer({ sendBuffer: capacity, historyMaxEvents: 1000 })))

/** A connection with a send buffer of `capacity` that the test drains with `drain()`. */
const manualConnection = (id: number) => {
  const buffer: Array<Outbound> = []
  const received: Array<any> = []
  const kicks: Array<DisconnectReason> = []
  let waiters: Array<{ size: number; ready: () => void }> = []
  const connection: Connection = {
    id,
    offer: (message) => {
      if (buffer.length >= capacity) return false
      buffer.push(message)
      return true
    },
    kick: (reason) => kicks.push(reason),
    keepAlive: () => {},
    whenBelow: (size, ready) => buffer.length < size ? ready() : waiters.push({ size, ready }),
    backlog: () => buffer.length
  }
  const drain = () => {
    for (const message of buffer.splice(0)) received.push(JSON.parse(message.payload.toString()))
    const ready = waiters
    waiters = []
    for (const waiter of ready) waiter.ready()
  }
  const seqs = () => received.filter((m) => !m.type.startsWith("hub.")).map((m) => m.data.seq)
  return { connection, received, kicks, drain, seqs }
}

const broadcast = (hub: { readonly broadcast: Hub["Service"]["broadcast"] }, from: number, to: number) =>
  Effect.forEach(Array.from({ length: to - from }, (_, i) => from + i), (seq) =>
    hub.broadcast("backtest.completed", { seq }), { discard: true })

describe("Hub.resume", () => {
  it.effect("replays in pages as the buffer drains, holds live events back meanwhile, then goes live without a gap", () =>
    Effect.gen(function*() {
      const hub = yield* wholeHub
      yield* broadcast(hub, 0, 10)
      const since = hub.history.after(undefined)!.id // the id of seq 0
      const client = manualConnection(1)
      yield* hub.register(client.connection, { resuming: true })
      const resume = yield* hub.resume(1, since)
      yield* resume.start
      // The first page fills the buffer; a live event now must not jump the queue.
      expect(client.seqs()).toEqual([])
      yield* broadcast(hub, 10, 12)
      expect(client.kicks).toEqual([])
      for (let i = 0; i < 10; i++) {
        client.drain()
        yield* broadcast(hub, 12 + i, 13 + i)
      }
      client.drain()
      client.drain()
      yield* broadcast(hub, 22, 25)
      client.drain()
      expect(client.seqs()).toEqual(Array.from({ length: 24 }, (_, i) => i + 1))
      expect(client.received.filter((m) => m.type === "hub.live")).toHaveLength(1)
      expect(client.kicks).toEqual([])
    }).pipe(Effect.provide(TestHub)))

  it.effect("a new resume replaces the one under way", () =>
    Effect.gen(function*() {
      const hub = yield* wholeHub
      yield* broadcast(hub, 0, 10)
      const ids: Array<string> = []
      for (let entry = hub.history.after(undefined); entry; entry = hub.history.after(entry.id)) ids.push(entry.id)
      const client = manualConnection(1)
      yield* hub.register(client.connection)
      yield* Effect.flatMap(hub.resume(1, ids[0]!), (resume) => resume.start)
      yield* Effect.flatMap(hub.resume(1, ids[7]!), (resume) => resume.start)
      for (let i = 0; i < 5; i++) client.drain()
      yield* broadcast(hub, 10, 11)
      client.drain()
      // What the first resume had queued (1..4), then the second one's replay (8, 9), then live.
      expect(client.seqs()).toEqual([1, 2, 3, 4, 8, 9, 10])
    }).pipe(Effect.provide(TestHub)))

  it.effect("a resume that waits for the stream to reach its id gets the next event once, not also live", () =>
    Effect.gen(function*() {
      const hub = yield* wholeHub
      hub.history.useStreamIds()
      hub.history.markReady()
      const fromStream = (offset: number) =>
        hub.broadcastEvent({ type: "backtest.completed", data: { seq: offset }, id: streamId(offset) })
      yield* fromStream(10)
      // Another instance is ahead: its client resumes from an id between offsets 10 and 12 that this one never had.
      const client = manualConnection(1)
      yield* hub.register(client.connection, { resuming: true })
      yield* Effect.flatMap(hub.resume(1, `${streamId(11)}.0000000001`), (resume) => resume.start)
      yield* fromStream(12)
      yield* fromStream(13)
      client.drain()
      expect(client.seqs()).toEqual([12, 13])
    }).pipe(Effect.provide(TestHub)))
})
