/**
 * The resume rule of docs/protocol.md ("Resume"), followed literally by a
 * client that reconnects a hundred times while events arrive as fast as the
 * hub takes them: nothing lost, nothing twice, in order.
 */
import { expect, layer } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { WebSocket } from "ws"
import { Hub } from "../src/hub/Hub.js"
import { hubLayer, promise, range, wsUrl } from "./support.js"

/**
 * A client written from the rule, and nothing else:
 * 1. keep `lastId`, the id of the last event handled;
 * 2. on every connect send `subscribe` (with `since: lastId` once there is one) and handle no event until its
 *    `hub.subscribed` reply;
 * 3. then handle every event and set `lastId` to its id; `hub.history_gap` reports what cannot be sent.
 */
class RuleClient {
  lastId: string | undefined
  readonly handled: Array<number> = []
  readonly gaps: Array<unknown> = []
  ws: WebSocket | undefined

  /** Connects and resumes; resolves once `count` more events have been handled (or `until` holds). */
  session(url: string, patterns: ReadonlyArray<string>, until: () => boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url)
      this.ws = ws
      let subscribed = false
      ws.on("error", reject)
      ws.on("open", () => {
        ws.send(JSON.stringify({
          action: "subscribe",
          event_types: patterns,
          ...(this.lastId === undefined ? {} : { since: this.lastId })
        }))
      })
      ws.on("message", (raw) => {
        const message = JSON.parse(String(raw))
        if (message.type === "hub.subscribed") subscribed = true
        else if (message.type === "hub.history_gap") this.gaps.push(message.data)
        else if (!message.type.startsWith("hub.") && subscribed) {
          this.handled.push(message.data.seq)
          this.lastId = message.id
        }
        if (subscribed && until()) {
          ws.removeAllListeners("message")
          resolve()
        }
      })
    })
  }

  /** Leaves abruptly (as a lost network does). */
  drop(): Promise<void> {
    const ws = this.ws!
    return new Promise((resolve) => {
      ws.once("close", () => resolve())
      ws.terminate()
    })
  }
}

layer(hubLayer({ historyMaxEvents: 1_000_000 }), { excludeTestServices: true })("the documented resume rule", (it) => {
  it.effect("100 resumes with subscribe + since while events arrive at full speed: 0 lost, 0 duplicated, in order", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const url = yield* wsUrl
      let produced = 0
      let stop = false
      // As fast as the hub takes them: 20 events per turn of the event loop, so that sockets still get written.
      const producer = yield* Effect.forkChild(Effect.gen(function*() {
        while (!stop) {
          for (let i = 0; i < 20; i++) yield* hub.broadcast("backtest.completed", { seq: produced++ })
          yield* promise(() => new Promise((resolve) => setImmediate(resolve)))
        }
      }))
      const client = new RuleClient()
      for (let round = 0; round < 100; round++) {
        const before = client.handled.length
        // Each session handles a few events after its resume, then the connection is lost.
        yield* promise(() => client.session(url, ["backtest.#"], () => client.handled.length >= before + 5))
        yield* promise(() => client.drop())
      }
      stop = true
      yield* Fiber.join(producer)
      // Back once more, until the last event produced.
      yield* promise(() => client.session(url, ["backtest.#"], () => client.handled.at(-1) === produced - 1))
      yield* promise(() => client.drop())
      // From the first event of the first session (those before it were broadcast before the client came).
      const first = client.handled[0]!
      const lost = produced - first - new Set(client.handled).size
      const duplicated = client.handled.length - new Set(client.handled).size
      expect({ lost, duplicated, gaps: client.gaps.length }).toEqual({ lost: 0, duplicated: 0, gaps: 0 })
      expect(client.handled).toEqual(range(first, produced))
      expect(produced - first).toBeGreaterThan(1000)
    }), { timeout: 120_000 })
})
