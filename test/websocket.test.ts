/**
 * The WebSocket endpoint, with real `ws` clients against the real server on a
 * free port.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Fiber, Layer, Logger, Option, Scope } from "effect"
import * as net from "node:net"
import * as ws from "ws"
import { Hub } from "../src/hub/Hub.js"
import { HubMetrics } from "../src/ops/Metrics.js"
import { connect, eventually, hubLayer, promise, TestClient, wsUrl } from "./support.js"
import { replaceDefaultLogger } from "./support/heldLogs.js"

const rfc3339Utc = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/

const eventTypes = (client: TestClient) => client.events.map((event) => event.type)

layer(hubLayer({ maxMessageSize: 512 }), { excludeTestServices: true })("protocol", (it) => {
  it.effect("sends one {type, data, timestamp, id} JSON object per text frame, without raw newlines", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const client = yield* connect()
      const data = { job_id: "123", note: "line one\nline two", nested: { sharpe_ratio: 1.85 } }
      yield* hub.broadcast("backtest.completed", data)
      yield* promise(() => client.until(() => client.events.length === 1, "the event"))
      const frame = client.frames.at(-1)!
      expect(frame).not.toContain("\n")
      const message = JSON.parse(frame)
      // The seed's three fields, then the event id (additive: seed clients ignore it).
      expect(Object.keys(message)).toEqual(["type", "data", "timestamp", "id"])
      expect(message.id).toMatch(/^\d{13}[0-9a-f]{4}-\d{16}$/)
      expect(message.type).toBe("backtest.completed")
      expect(message.data).toEqual(data)
      expect(message.timestamp).toMatch(rfc3339Utc)
    }))

  it.effect("a client that never subscribed receives every event", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const client = yield* connect()
      for (const type of ["task.running", "backtest.completed", "agent.status.changed"]) yield* hub.broadcast(type, {})
      yield* promise(() => client.until(() => client.events.length === 3, "three events"))
      expect(eventTypes(client)).toEqual(["task.running", "backtest.completed", "agent.status.changed"])
    }))

  it.effect("subscribe and unsubscribe filter events; the replies list the subscription in effect", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const client = yield* connect()
      const subscribed = yield* promise(() =>
        client.request({
          action: "subscribe",
          event_types: ["optimization.iteration.completed", "backtest.completed", "backtest.failed"]
        }, "hub.subscribed")
      )
      expect(subscribed.data).toEqual({
        event_types: ["optimization.iteration.completed", "backtest.completed", "backtest.failed"]
      })
      expect(subscribed.timestamp).toMatch(rfc3339Utc)
      const unsubscribed = yield* promise(() =>
        client.request({ action: "unsubscribe", event_types: ["backtest.failed"] }, "hub.unsubscribed")
      )
      expect(unsubscribed.data).toEqual({ event_types: ["optimization.iteration.completed", "backtest.completed"] })
      for (const type of ["backtest.failed", "task.running", "backtest.completed", "optimization.iteration.completed"]) {
        yield* hub.broadcast(type, {})
      }
      yield* promise(() => client.until(() => client.events.length === 2, "two events"))
      expect(eventTypes(client)).toEqual(["backtest.completed", "optimization.iteration.completed"])
    }))

  it.effect("a client that unsubscribed from everything receives no events until it subscribes again", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const client = yield* connect()
      yield* promise(() => client.request({ action: "subscribe", event_types: ["task.running"] }, "hub.subscribed"))
      const reply = yield* promise(() =>
        client.request({ action: "unsubscribe", event_types: ["task.running"] }, "hub.unsubscribed")
      )
      expect(reply.data).toEqual({ event_types: [] })
      yield* hub.broadcast("task.running", { n: 1 })
      yield* hub.broadcast("backtest.completed", { n: 2 })
      yield* promise(() => client.request({ action: "subscribe", event_types: ["#"] }, "hub.subscribed"))
      yield* hub.broadcast("task.failed", { n: 3 })
      yield* promise(() => client.until(() => client.events.length >= 1, "an event"))
      expect(eventTypes(client)).toEqual(["task.failed"])
    }))

  it.effect("patterns follow RabbitMQ topic rules: * is one word, # is zero or more", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const client = yield* connect()
      yield* promise(() =>
        client.request({ action: "subscribe", event_types: ["optimization.#", "*.failed"] }, "hub.subscribed")
      )
      const published = [
        "optimization.iteration.completed",
        "backtest.completed",
        "optimization.new_best",
        "task.failed",
        "optimization.iteration.failed",
        "optimization"
      ]
      for (const type of published) yield* hub.broadcast(type, {})
      yield* hub.broadcast("end.failed", {})
      yield* promise(() => client.until(() => eventTypes(client).includes("end.failed"), "the last event"))
      expect(eventTypes(client)).toEqual([
        "optimization.iteration.completed",
        "optimization.new_best",
        "task.failed",
        "optimization.iteration.failed",
        "optimization",
        "end.failed"
      ])
    }))

  it.effect("answers the text frame ping with the text frame pong", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      client.ws.send("ping")
      yield* promise(() => client.until(() => client.frames.includes("pong"), "pong"))
      expect(client.frames).toEqual(["pong"])
    }))

  it.effect("bad input gets a hub.error and leaves the connection and other clients working", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const client = yield* connect()
      const bystander = yield* connect()
      const cases: ReadonlyArray<readonly [string | Buffer, string]> = [
        ["not json", "invalid_json"],
        ["{\"action\":", "invalid_json"],
        ["[1,2,3]", "invalid_request"],
        ["42", "invalid_request"],
        ["{\"event_types\":[\"a\"]}", "invalid_request"],
        ["{\"action\":\"launch\"}", "unknown_action"],
        ["{\"action\":\"subscribe\",\"event_types\":\"backtest.completed\"}", "invalid_request"],
        ["{\"action\":\"subscribe\",\"event_types\":[1]}", "invalid_request"],
        ["{\"action\":\"subscribe\",\"event_types\":[\"\"]}", "invalid_request"],
        ["{\"action\":\"subscribe\"}", "invalid_request"],
        [Buffer.from([0, 1, 2, 3]), "binary_not_supported"]
      ]
      for (const [input, code] of cases) {
        const reply = yield* promise(() => client.request(input, "hub.error"))
        expect(reply.data.code, String(input)).toBe(code)
        expect(reply.data.message.length).toBeGreaterThan(0)
      }
      expect(client.isOpen).toBe(true)
      yield* hub.broadcast("backtest.completed", { still: "working" })
      yield* promise(() => client.until(() => client.events.length === 1, "the event"))
      yield* promise(() => bystander.until(() => bystander.events.length === 1, "the event"))
      expect(bystander.frames).toHaveLength(1)
    }))

  it.effect("a frame larger than WS_MAX_MESSAGE_SIZE closes that client with 1009, and only it", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const metrics = yield* HubMetrics
      const client = yield* connect()
      const bystander = yield* connect()
      client.ws.send(JSON.stringify({ action: "subscribe", event_types: ["x".repeat(600)] }))
      const closed = yield* promise(() => client.closed)
      expect(closed.code).toBe(1009)
      yield* hub.broadcast("backtest.completed", {})
      yield* promise(() => bystander.until(() => bystander.events.length === 1, "the event"))
      expect((yield* metrics.snapshot).clients_disconnected.message_too_big).toBeGreaterThanOrEqual(1)
    }))

  it.effect("a frame of exactly WS_MAX_MESSAGE_SIZE bytes is accepted", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      const base = JSON.stringify({ action: "subscribe", event_types: ["a".repeat(200), "b".repeat(200), ""] })
      const request = JSON.stringify({
        action: "subscribe",
        event_types: ["a".repeat(200), "b".repeat(200), "c".repeat(512 - base.length)]
      })
      expect(Buffer.byteLength(request)).toBe(512)
      yield* promise(() => client.request(request, "hub.subscribed"))
    }))
})

layer(hubLayer({ sendBuffer: 8, maxSubscriptions: 3 }), { excludeTestServices: true })("request bursts and limits", (it) => {
  it.effect("a client that sends many requests at once gets every reply and stays connected", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      // Far more replies than the send buffer (8) holds: the hub slows the reader down instead of dropping it.
      for (let i = 0; i < 500; i++) client.ws.send("ping")
      for (let i = 0; i < 100; i++) client.ws.send(JSON.stringify({ action: "unsubscribe", event_types: [`t.${i}`] }))
      yield* promise(() =>
        client.until(
          () => client.frames.filter((frame) => frame === "pong").length === 500 && client.messages.length === 100,
          "500 pongs and 100 replies"
        )
      )
      expect(client.isOpen).toBe(true)
    }))

  it.effect("answers requests in the order they were sent, whether answered at once or after waiting", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      // A ping and an unsubscribe are answered in the socket's callback while the send buffer (8) has room; an
      // unknown action is refused (logged) by the connection's fiber, and so is everything sent after it until the
      // fiber is done.
      const expected: Array<string> = []
      for (let i = 0; i < 100; i++) {
        client.ws.send("ping")
        client.ws.send(JSON.stringify({ action: "unsubscribe", event_types: [`t.${i}`] }))
        client.ws.send(JSON.stringify({ action: `nope-${i}` }))
        expected.push("pong", "hub.unsubscribed", `nope-${i}`)
      }
      yield* promise(() => client.until(() => client.frames.length >= expected.length, `${expected.length} replies`))
      const answered = client.frames.map((frame) => {
        if (frame === "pong") return frame
        const message = JSON.parse(frame)
        return message.type === "hub.error" ? /nope-\d+/.exec(message.data.message)?.[0] : message.type
      })
      expect(answered).toEqual(expected)
    }))

  it.effect("refuses a subscription beyond WS_MAX_SUBSCRIPTIONS and leaves the subscription as it was", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      yield* promise(() => client.request({ action: "subscribe", event_types: ["a", "b"] }, "hub.subscribed"))
      const refused = yield* promise(() =>
        client.request({ action: "subscribe", event_types: ["c", "d"] }, "hub.error")
      )
      expect(refused.data.code).toBe("too_many_subscriptions")
      expect(refused.data.message).toContain("at most 3")
      const now = yield* promise(() => client.request({ action: "subscribe", event_types: ["c"] }, "hub.subscribed"))
      expect(now.data.event_types).toEqual(["a", "b", "c"])
    }))
})

layer(hubLayer({ sendBuffer: 8, writeTimeout: Duration.seconds(30) }), { excludeTestServices: true })(
  "slow consumers",
  (it) => {
    it.effect("a client that stops reading is dropped with 4000 while a fast client receives every event in order", () =>
      Effect.gen(function*() {
        const hub = yield* Hub
        const slow = yield* connect()
        const fast = yield* connect()
        // Stop reading: the socket's receive window fills, then the hub's send buffer.
        ;(slow.ws as any)._socket.pause()
        const payload = "x".repeat(64 * 1024)
        const count = 400
        for (let i = 0; i < count; i++) {
          yield* hub.broadcast("backtest.completed", { seq: i, payload })
          // Events arrive over time, not in one synchronous burst larger than the send buffer.
          yield* promise(() => fast.until(() => fast.events.length === i + 1, `event ${i}`))
        }
        yield* promise(() => fast.until(() => fast.events.length === count, `${count} events`, 20_000))
        expect(fast.events.map((event) => event.data.seq)).toEqual(Array.from({ length: count }, (_, i) => i))
        ;(slow.ws as any)._socket.resume()
        const closed = yield* promise(() => slow.closed)
        expect([4000, 1006]).toContain(closed.code)
        const metrics = yield* eventually(
          (yield* HubMetrics).snapshot,
          (snapshot) => snapshot.clients_disconnected.slow_consumer > 0
        )
        expect(metrics.clients_disconnected.slow_consumer).toBe(1)
      }))
  }
)

layer(hubLayer({ sendBuffer: 100_000, writeTimeout: Duration.millis(300) }), { excludeTestServices: true })(
  "write timeout",
  (it) => {
    it.effect("a write that does not complete within WS_WRITE_TIMEOUT closes the client", () =>
      Effect.gen(function*() {
        const hub = yield* Hub
        const metrics = yield* HubMetrics
        const stuck = yield* connect()
        ;(stuck.ws as any)._socket.pause()
        const payload = "x".repeat(64 * 1024)
        // Enough to fill the socket buffers on both sides of the loopback connection.
        for (let i = 0; i < 1000; i++) yield* hub.broadcast("backtest.completed", { payload })
        yield* eventually(metrics.snapshot, (snapshot) => snapshot.clients_disconnected.write_timeout === 1)
        ;(stuck.ws as any)._socket.resume()
        yield* promise(() => stuck.closed)
      }))
  }
)

layer(hubLayer({ sendBuffer: 8, writeTimeout: Duration.millis(300) }), { excludeTestServices: true })(
  "replies to a client that stops reading",
  (it) => {
    it.effect("a reply waiting for room in a full buffer does not keep a stuck client from being closed", () =>
      Effect.gen(function*() {
        const hub = yield* Hub
        const metrics = yield* HubMetrics
        const stuck = yield* connect()
        ;(stuck.ws as any)._socket.pause()
        const payload = "x".repeat(900 * 1024)
        // Enough to block the socket; then the pongs fill the send buffer and the reader waits for room.
        for (let i = 0; i < 7; i++) yield* hub.broadcast("backtest.completed", { payload })
        for (let i = 0; i < 12; i++) stuck.ws.send("ping")
        yield* eventually(metrics.snapshot, (snapshot) => snapshot.clients_disconnected.write_timeout === 1)
        yield* eventually(hub.clientCount, (count) => count === 0)
      }))
  }
)

layer(
  hubLayer({ pingPeriod: Duration.millis(100), pongTimeout: Duration.millis(1000) }),
  { excludeTestServices: true }
)("keep-alive", (it) => {
  it.effect("pings every WS_PING_PERIOD, closes with 4001 a client that sends no pong within WS_PONG_TIMEOUT", () =>
    Effect.gen(function*() {
      const healthy = yield* connect()
      const silent = yield* connect({ autoPong: false })
      const closed = yield* promise(() => silent.closed)
      expect(closed.code).toBe(4001)
      expect(silent.pings).toBeGreaterThanOrEqual(1)
      // The healthy client has answered pings for longer than the pong timeout and is still here.
      yield* promise(() => healthy.until(() => healthy.pings >= 10, "ten pings"))
      expect(healthy.isOpen).toBe(true)
    }))
})

layer(hubLayer(), { excludeTestServices: true })("scale", (it) => {
  it.effect("1,000 concurrent clients all receive a broadcast", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const clients = yield* Effect.all(Array.from({ length: 1000 }, () => connect()), { concurrency: 100 })
      yield* eventually(hub.clientCount, (n) => n >= 1000)
      expect(yield* hub.broadcast("optimization.new_best", { sharpe_ratio: 2.1 })).toBe(1000)
      yield* promise(() => Promise.all(clients.map((client) => client.until(() => client.events.length === 1))))
      for (const client of clients) expect(client.events[0]!.data).toEqual({ sharpe_ratio: 2.1 })
    }), { timeout: 60_000 })
})

layer(hubLayer({ compressionThreshold: Option.some(1024) }), { excludeTestServices: true })("compression", (it) => {
  it.effect("compresses messages above WS_COMPRESSION_THRESHOLD for clients that ask, and only for them", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const deflating = yield* connect({ perMessageDeflate: true })
      const plain = yield* connect({ perMessageDeflate: false })
      expect(deflating.ws.extensions).toContain("permessage-deflate")
      expect(plain.ws.extensions).toBe("")
      const bytesRead = (client: TestClient) => (client.ws as any)._socket.bytesRead as number
      const [deflatingBefore, plainBefore] = [bytesRead(deflating), bytesRead(plain)]
      // About 20 KB of very repetitive JSON, and a small event under the threshold.
      const large = { rows: Array.from({ length: 400 }, (_, i) => ({ strategy_id: "987e6543", sharpe_ratio: 1.85, i })) }
      yield* hub.broadcast("backtest.completed", large)
      yield* hub.broadcast("backtest.failed", { small: true })
      for (const client of [deflating, plain]) {
        yield* promise(() => client.until(() => client.events.length === 2, "both events"))
        expect(client.events[0]!.data).toEqual(large)
        expect(client.events[1]!.data).toEqual({ small: true })
      }
      const size = JSON.stringify(large).length
      expect(bytesRead(plain) - plainBefore).toBeGreaterThan(size)
      expect(bytesRead(deflating) - deflatingBefore).toBeLessThan(size / 4)
    }))
})

describe("a write that throws", () => {
  it.live("closes that client (1011) and logs why, while the other clients are served", () =>
    Effect.gen(function*() {
      const errors: Array<string> = []
      const logger = Logger.make(({ logLevel, message }) => {
        if (logLevel.toUpperCase() === "ERROR") errors.push(String(message))
      })
      const scope = yield* Scope.make()
      yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
      const context = yield* Layer.buildWithScope(
        hubLayer().pipe(Layer.provide(replaceDefaultLogger(logger))),
        scope
      )
      const url = yield* Effect.provide(wsUrl, context)
      const hub = Context.get(context, Hub)
      const [failing, served] = yield* promise(() => Promise.all([1, 2].map(() => TestClient.connect(url))))
      // The server's end of the failing client's connection throws on its next write, once.
      const port = (failing!.ws as any)._socket.localPort as number
      const write = net.Socket.prototype.write
      let thrown = false
      net.Socket.prototype.write = function(this: net.Socket, ...args: Array<unknown>) {
        if (!thrown && this.remotePort === port) {
          thrown = true
          throw new Error("a socket that throws")
        }
        return (write as (...args: Array<unknown>) => boolean).apply(this, args)
      } as typeof write
      yield* Effect.addFinalizer(() => Effect.sync(() => (net.Socket.prototype.write = write)))
      for (let seq = 0; seq < 5; seq++) yield* hub.broadcast("backtest.completed", { seq })
      expect(yield* promise(() => failing!.closed)).toEqual({ code: 1011, reason: "internal error" })
      yield* promise(() => served!.until(() => served!.events.length === 5, "5 events"))
      expect(served!.events.map((event) => event.data.seq)).toEqual([0, 1, 2, 3, 4])
      expect(served!.isOpen).toBe(true)
      expect(thrown).toBe(true)
      expect(errors.some((message) => message.includes("writing to the client failed"))).toBe(true)
    }).pipe(Effect.scoped))
})

describe("without ws's frame encoder", () => {
  // `ws` frames its own messages with `Sender.frame` too: it is taken away only while the server starts (the hub
  // checks it then), and put back before any client connects.
  it.live("falls back to ws.send: every client receives every event, and the replies", () =>
    Effect.gen(function*() {
      const sender = (ws as unknown as { Sender: { frame: unknown } }).Sender
      const frame = sender.frame
      const scope = yield* Scope.make()
      yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
      sender.frame = undefined
      const context = yield* Layer.buildWithScope(hubLayer(), scope).pipe(
        Effect.ensuring(Effect.sync(() => (sender.frame = frame)))
      )
      const url = yield* Effect.provide(wsUrl, context)
      const hub = Context.get(context, Hub)
      const send = ws.WebSocket.prototype.send
      let sent = 0
      ws.WebSocket.prototype.send = function(this: ws.WebSocket, ...args: Array<unknown>) {
        sent++
        return (send as (...args: Array<unknown>) => void).apply(this, args)
      } as typeof send
      yield* Effect.addFinalizer(() => Effect.sync(() => (ws.WebSocket.prototype.send = send)))
      const clients = yield* promise(() => Promise.all([1, 2, 3].map(() => TestClient.connect(url))))
      const reply = yield* promise(() => clients[0]!.request({ action: "subscribe", event_types: ["#"] }, "hub.subscribed"))
      expect(reply.data).toEqual({ event_types: ["#"] })
      const sentBefore = sent
      for (let seq = 0; seq < 20; seq++) yield* hub.broadcast("backtest.completed", { seq })
      for (const client of clients) {
        yield* promise(() => client.until(() => client.events.length === 20, "20 events"))
        expect(client.events.map((event) => event.data.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i))
        client.close()
      }
      // Each event went through ws.send, once per client (the test's clients send nothing meanwhile).
      expect(sent - sentBefore).toBe(60)
    }).pipe(Effect.scoped))
})

layer(hubLayer(), { excludeTestServices: true })("no compression by default", (it) => {
  it.effect("a client that asks for permessage-deflate gets plain frames", () =>
    Effect.gen(function*() {
      const client = yield* connect({ perMessageDeflate: true })
      expect(client.ws.extensions).toBe("")
    }))
})

layer(hubLayer({ maxSubscriptions: 3 }), { excludeTestServices: true })("rooms", (it) => {
  it.effect("a client in rooms receives only their events; leaving every room brings back every event", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const follower = yield* connect()
      const everyone = yield* connect()
      const joined = yield* promise(() =>
        follower.request({ action: "join", rooms: ["run_id:r1", "strategy_id:s9"] }, "hub.rooms")
      )
      expect(joined.data.rooms).toEqual(["run_id:r1", "strategy_id:s9"])
      yield* hub.broadcast("optimization.iteration.completed", { run_id: "r1", n: 1 })
      yield* hub.broadcast("optimization.iteration.completed", { run_id: "r2", n: 2 })
      yield* hub.broadcast("backtest.completed", { job_id: "j", strategy_id: "s9", n: 3 })
      yield* hub.broadcast("agent.status.changed", { n: 4 })
      yield* promise(() => everyone.until(() => everyone.events.length === 4, "every event"))
      yield* promise(() => follower.until(() => follower.events.length === 2, "the events of its rooms"))
      const left = yield* promise(() =>
        follower.request({ action: "leave", rooms: ["run_id:r1", "strategy_id:s9"] }, "hub.rooms")
      )
      expect(left.data.rooms).toEqual([])
      yield* hub.broadcast("agent.status.changed", { n: 5 })
      yield* promise(() => follower.until(() => follower.events.length === 3, "the event after leaving"))
      expect(follower.events.map((event) => event.data.n)).toEqual([1, 3, 5])
    }))

  it.effect("refuses rooms that are not <key>:<value> with a key of ROOM_KEYS, and more than the limit", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      for (const room of ["r1", "run_id:", ":r1", "user_id:u1"]) {
        const refused = yield* promise(() => client.request({ action: "join", rooms: [room] }, "hub.error"))
        expect(refused.data.code).toBe("invalid_room")
      }
      const tooMany = yield* promise(() =>
        client.request({ action: "join", rooms: ["run_id:1", "run_id:2", "run_id:3", "run_id:4"] }, "hub.error")
      )
      expect(tooMany.data.code).toBe("too_many_rooms")
      // Joining no room sets no room filter.
      const none = yield* promise(() => client.request({ action: "join", rooms: [] }, "hub.rooms"))
      expect(none.data.rooms).toEqual([])
      // Nothing was joined: the client still receives every event.
      const hub = yield* Hub
      yield* hub.broadcast("agent.status.changed", { n: 1 })
      yield* promise(() => client.until(() => client.events.length === 1, "the event"))
    }))

  it.effect("a resume replays only the events of the client's rooms", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const client = yield* connect()
      yield* hub.broadcast("optimization.new_best", { run_id: "r0", n: 0 })
      yield* promise(() => client.until(() => client.events.length === 1, "the first event"))
      const since = client.events[0]!.id as string
      client.close()
      yield* hub.broadcast("optimization.new_best", { run_id: "r1", n: 1 })
      yield* hub.broadcast("optimization.new_best", { run_id: "r2", n: 2 })
      yield* hub.broadcast("optimization.new_best", { run_id: "r1", n: 3 })
      const back = yield* connect()
      yield* promise(() => back.request({ action: "join", rooms: ["run_id:r1"] }, "hub.rooms"))
      yield* promise(() => back.request({ action: "subscribe", event_types: ["#"], since }, "hub.subscribed"))
      yield* promise(() => back.until(() => back.messages.some((message) => message.type === "hub.live"), "hub.live"))
      expect(back.events.map((event) => event.data.n)).toEqual([1, 3])
    }))
})

describe("shutdown", () => {
  // An idle connection has no fiber for the server to interrupt: the server's layer must close each one itself.
  it.live("closing the server closes idle, subscribed and busy connections with 1001 and refuses upgrades meanwhile", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        hubLayer({ sendBuffer: 8, writeTimeout: Duration.seconds(60) }),
        scope
      )
      const url = yield* Effect.provide(wsUrl, context)
      const hub = Context.get(context, Hub)
      const idle = yield* promise(() => TestClient.connect(url))
      const subscribed = yield* promise(() => TestClient.connect(url))
      yield* promise(() => subscribed.request({ action: "subscribe", event_types: ["task.#"] }, "hub.subscribed"))
      // A client that stops reading while its requests wait for room in its send buffer: its fiber is busy.
      const stuck = yield* promise(() => TestClient.connect(url))
      ;(stuck.ws as any)._socket.pause()
      const payload = "x".repeat(900 * 1024)
      for (let i = 0; i < 7; i++) yield* hub.broadcast("backtest.completed", { payload })
      for (let i = 0; i < 12; i++) stuck.ws.send("ping")

      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      expect(yield* promise(() => idle.closed)).toEqual({ code: 1001, reason: "server shutting down" })
      expect(yield* promise(() => subscribed.closed)).toEqual({ code: 1001, reason: "server shutting down" })
      // The stuck client does not answer the close frame: the server waits for it (at most 2 s) and meanwhile
      // refuses new connections.
      const refused = yield* promise(() => TestClient.connect(url).then(() => "open", (error: Error) => error.message))
      expect(refused).toBe("HTTP 503")
      yield* Fiber.join(closing)
      expect(yield* hub.clientCount).toBe(0)
      ;(stuck.ws as any)._socket.resume()
      yield* promise(() => stuck.closed)
    }))
})
