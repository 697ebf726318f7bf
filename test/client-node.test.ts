/**
 * The client in Node with `ws`, against the built hub and the real broker: network cuts and a restart while events
 * flow lose nothing and repeat nothing; the Effect client consumes the same as a Stream.
 */
import { Effect, Fiber, Stream } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import { createServer } from "node:net"
import WebSocket from "ws"
import { connect, type Gap } from "../src/client/client.js"
import { HubConnection } from "../src/client/effect.js"
import { LiveHub, range, until } from "./support/liveHub.js"

let hub: LiveHub | undefined
afterEach(async () => {
  await hub?.stop()
  hub = undefined
})

const seqOf = (event: { data: unknown }) => (event.data as { seq: number }).seq

describe("the client in Node (ws) against the real hub", () => {
  it("is importable by its package names: effect-event-hub/client, /react and /client/effect", async () => {
    const names = ["effect-event-hub/client", "effect-event-hub/react", "effect-event-hub/client/effect"]
    const [client, react, effect] = await Promise.all(names.map((name) => import(name as string)))
    expect(typeof client.connect).toBe("function")
    expect(typeof react.HubProvider).toBe("function")
    expect(typeof react.useHubEvents).toBe("function")
    expect(typeof effect.HubConnection.layer).toBe("function")
  })

  it("closing while the handshake is under way leaves no unhandled error (ws emits one on abort)", async () => {
    const sockets: Array<import("node:net").Socket> = []
    const silent = createServer((socket) => sockets.push(socket)) // accepts, never answers the handshake
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve))
    const port = (silent.address() as { port: number }).port
    const client = connect(`ws://127.0.0.1:${port}/api/v1/ws/events`, { WebSocket })
    await until(() => sockets.length === 1, "the TCP connection")
    const errors: Array<unknown> = []
    const onError = (error: unknown) => errors.push(error)
    process.on("uncaughtException", onError)
    client.close()
    await new Promise((resolve) => setImmediate(resolve))
    await new Promise((resolve) => setTimeout(resolve, 50)) // ws emits the abort's error on a later tick
    process.off("uncaughtException", onError)
    sockets.forEach((socket) => socket.destroy())
    silent.close()
    expect(errors).toEqual([])
    expect(client.state).toBe("disconnected")
  })

  it("stream mode: two network cuts and a restart at 100 events/s lose nothing and duplicate nothing", async () => {
    hub = await LiveHub.start("stream")
    const client = connect(hub.url, { WebSocket, eventTypes: ["test.#"], minDelay: 100, maxDelay: 1000 })
    const seqs: Array<number> = []
    const gaps: Array<Gap> = []
    client.on("test.tick", (event) => seqs.push(seqOf(event)))
    client.onGap((gap) => gaps.push(gap))
    await until(() => client.state === "connected", "connected")
    const publishing = hub.publish(0, 800, 100)
    await until(() => seqs.length >= 100, "100 events")
    await hub.cut(500)
    await until(() => seqs.length >= 300, "300 events")
    await hub.restart()
    await until(() => seqs.length >= 500, "500 events")
    await hub.cut(300)
    await publishing
    await until(() => seqs.length >= 800, "800 events", 30_000)
    client.close()
    expect(seqs).toEqual(range(0, 800))
    expect(gaps).toEqual([])
  }, 60_000)

  it("queue mode: a restart gives the application a gap event (the hub cannot place the old id)", async () => {
    hub = await LiveHub.start("queue")
    const client = connect(hub.url, { WebSocket, minDelay: 100, maxDelay: 1000 })
    const seqs: Array<number> = []
    const gaps: Array<Gap> = []
    client.on("#", (event) => seqs.push(seqOf(event)))
    client.onGap((gap) => gaps.push(gap))
    await until(() => client.state === "connected", "connected")
    await hub.publish(0, 10, 100)
    await until(() => seqs.length === 10, "10 events")
    await hub.restart()
    await until(() => gaps.length === 1, "a gap")
    await hub.publish(10, 20, 100)
    await until(() => seqs.length === 20, "20 events")
    client.close()
    expect(gaps[0]).toMatchObject({ reason: "unknown" })
    expect(seqs).toEqual(range(0, 20))
  }, 60_000)

  it("the Effect client: events as a Stream, across a cut, closed with its scope", async () => {
    hub = await LiveHub.start("stream")
    const live = hub
    const received = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const connection = yield* HubConnection
      const fiber = yield* connection.events("test.#").pipe(Stream.take(300), Stream.map(seqOf), Stream.runCollect, Effect.forkChild)
      yield* connection.states.pipe(Stream.filter((state) => state === "connected"), Stream.take(1), Stream.runDrain)
      const publishing = Effect.promise(() => live.publish(0, 300, 100))
      yield* Effect.forkChild(publishing)
      yield* Effect.promise(() => until(() => (connection.client.lastId ?? "") !== "", "an event"))
      yield* Effect.promise(() => live.cut(300))
      return yield* Fiber.join(fiber)
    }).pipe(Effect.provide(HubConnection.layer(hub.url, { WebSocket })))))
    expect(received).toEqual(range(0, 300))
  }, 60_000)
})
