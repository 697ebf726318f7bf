/**
 * The client's state machine with a fake clock and a fake socket: the test plays the hub frame by frame.
 */
import { Effect, Result, Schedule, Schema, Scope, Exit } from "effect"
import { beforeEach, describe, expect, it } from "vitest"
import { type ClientError, type ClientOptions, connect, type ConnectionState, type Gap, matches } from "../src/client/client.js"
import { make as makeEffectClient } from "../src/client/effect.js"
import { Outbound, ServerMessage } from "../src/protocol/Protocol.js"
import { matches as hubMatches } from "../src/protocol/Topic.js"
import { FakeClock, FakeSocket, flush, idOf, jwt } from "./support/fakeSocket.js"

let clock: FakeClock
beforeEach(() => {
  clock = new FakeClock()
  FakeSocket.instances = []
})

const client = (options: ClientOptions = {}) => {
  const hub = connect("ws://hub/api/v1/ws/events", { WebSocket: FakeSocket, environment: clock, ...options })
  const seqs: Array<number> = []
  const states: Array<ConnectionState> = [hub.state]
  const errors: Array<ClientError> = []
  const gaps: Array<Gap> = []
  hub.on("#", (event) => seqs.push((event.data as { seq: number }).seq))
  hub.onState((state) => states.push(state))
  hub.onError((error) => errors.push(error))
  hub.onGap((gap) => gaps.push(gap))
  return { hub, seqs, states, errors, gaps }
}

/** Opens the last socket and answers its requests as the hub does. */
const accept = (socket = FakeSocket.last) => {
  socket.open()
  for (const request of socket.requests) {
    socket.reply(request.action === "join" ? "hub.rooms" : "hub.subscribed", {})
  }
}

describe("client state machine", () => {
  it("backs off with full jitter: a random delay below a bound doubling from minDelay to maxDelay, never longer than the outage", () => {
    clock.random = () => 0.999
    const { errors } = client({ minDelay: 500, maxDelay: 20_000 })
    const lostAt = clock.time
    const bounds: Array<number> = []
    for (let attempt = 0; attempt < 16; attempt++) {
      bounds.push(Math.min(20_000, 500 * 2 ** attempt, Math.max(500, clock.time - lostAt)))
      FakeSocket.last.drop()
      clock.advance(clock.nextDelay!)
    }
    expect(errors.map((error) => error.retryIn)).toEqual(bounds.map((bound) => Math.floor(0.999 * bound)))
    expect(bounds.slice(0, 4)).toEqual([500, 500, 998, 1995]) // doubling, bounded by the outage so far
    expect(errors.at(-1)!.retryIn).toBe(19_980) // a long outage reaches maxDelay
    clock.random = () => 0
    FakeSocket.last.drop()
    expect(clock.nextDelay).toBe(0)
  })

  it("resets the backoff once connected, and goes connecting → connected → reconnecting → connected → disconnected", () => {
    clock.random = () => 0.999
    const { hub, states, errors } = client()
    FakeSocket.last.drop()
    clock.advance(clock.nextDelay!)
    accept()
    FakeSocket.last.drop()
    expect(errors.map((error) => error.retryIn)).toEqual([499, 499]) // the second loss starts from minDelay again
    clock.advance(clock.nextDelay!)
    accept()
    hub.close()
    expect(states).toEqual(["connecting", "reconnecting", "connected", "reconnecting", "connected", "disconnected"])
    expect(FakeSocket.last.readyState).toBe(3)
    expect(clock.nextDelay).toBeUndefined()
  })

  it("resumes from the last delivered id: joins rooms, subscribes with since, ignores what comes before the reply, drops the seam's duplicates", () => {
    const { seqs } = client({ eventTypes: ["test.#"], rooms: ["run_id:7"] })
    expect(FakeSocket.last.protocols).toBeUndefined()
    accept()
    expect(FakeSocket.last.requests).toEqual([
      { action: "join", rooms: ["run_id:7"] },
      { action: "subscribe", event_types: ["test.#"] }
    ])
    FakeSocket.last.event(1)
    FakeSocket.last.event(2)
    FakeSocket.last.drop()
    clock.advance(clock.nextDelay!)
    const second = FakeSocket.last
    second.open()
    expect(second.requests).toEqual([
      { action: "join", rooms: ["run_id:7"] },
      { action: "subscribe", event_types: ["test.#"], since: idOf(2) }
    ])
    second.event(5) // sent under the connection's previous subscription: comes again in its place
    second.reply("hub.rooms", { rooms: ["run_id:7"] })
    second.reply("hub.subscribed", { event_types: ["test.#"] })
    second.event(2) // a duplicate at the seam
    for (const seq of [3, 4, 5, 6]) second.event(seq)
    second.reply("hub.live", { replayed: 3, last_id: idOf(5) })
    expect(seqs).toEqual([1, 2, 3, 4, 5, 6])
  })

  it("reports hub.history_gap to the application, and a since the hub refuses as an unknown gap", () => {
    const { gaps, seqs, errors } = client({ since: "bad id" })
    const socket = FakeSocket.last
    socket.open()
    expect(socket.requests).toEqual([{ action: "subscribe", event_types: ["#"], since: "bad id" }])
    socket.reply("hub.error", { code: "invalid_request", message: "since: not an event id" })
    expect(gaps).toEqual([{ since: "bad id", oldest_available: null, reason: "unknown" }])
    expect(socket.requests[1]).toEqual({ action: "subscribe", event_types: ["#"] })
    expect(errors.map((error) => error.code)).toEqual(["invalid_request"])
    socket.reply("hub.subscribed", { event_types: ["#"] })
    socket.event(9)
    socket.drop()
    clock.advance(clock.nextDelay!)
    FakeSocket.last.open()
    FakeSocket.last.reply("hub.subscribed")
    FakeSocket.last.reply("hub.history_gap", { since: idOf(9), oldest_available: idOf(20), reason: "missed" })
    FakeSocket.last.event(20)
    expect(gaps[1]).toEqual({ since: idOf(9), oldest_available: idOf(20), reason: "missed" })
    expect(seqs).toEqual([9, 20])
  })

  it("a resume the hub rations (resume_rate_limited) is tried again later from the same id, never skipped by going live", () => {
    const { seqs, errors, gaps } = client()
    accept()
    FakeSocket.last.event(1)
    FakeSocket.last.drop()
    clock.advance(clock.nextDelay!)
    const refused = FakeSocket.last
    refused.open()
    refused.event(7) // live, before the reply: not handled
    refused.reply("hub.error", { code: "resume_rate_limited", message: "more than 120 resumes per minute from your address: nothing replayed; retry in 12 s" })
    refused.event(8) // live after the refusal: handling it would skip 2-7
    expect(errors.at(-1)).toMatchObject({ code: "resume_rate_limited", retryIn: 12_000 })
    clock.advance(12_000)
    const next = FakeSocket.last
    expect(next).not.toBe(refused)
    next.open()
    expect(next.requests).toEqual([{ action: "subscribe", event_types: ["#"], since: idOf(1) }])
    next.reply("hub.subscribed")
    for (const seq of [2, 3, 4, 5, 6, 7, 8]) next.event(seq)
    expect(seqs).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
    expect(gaps).toEqual([])
  })

  it("does not reconnect after a refused token (401) with a static token: reports it and is disconnected", () => {
    const { states, errors } = client({ token: "static" })
    expect(FakeSocket.last.protocols).toEqual(["bearer", "static"])
    FakeSocket.last.drop(1006, "", "Unexpected server response: 401")
    expect(states).toEqual(["connecting", "disconnected"])
    expect(errors).toMatchObject([{ kind: "refused", code: 401, fatal: true }])
    expect(clock.nextDelay).toBeUndefined()
  })

  it("after a connection limit (503) or a rate-limit close (1008), waits the maximum delay and says so", () => {
    const { errors } = client({ maxDelay: 20_000 })
    FakeSocket.last.drop(1006, "", "Unexpected server response: 503")
    expect(errors).toMatchObject([{ kind: "refused", code: 503, fatal: false, retryIn: 20_000 }])
    clock.advance(20_000)
    accept()
    FakeSocket.last.drop(1008, "rate limit exceeded")
    expect(errors[1]).toMatchObject({ kind: "closed", code: 1008, fatal: false, retryIn: 20_000 })
  })

  it("after 4003 token expired: gives up with a static token, reconnects with a fresh one from a provider", async () => {
    const first = client({ token: "static" })
    accept()
    FakeSocket.last.drop(4003, "token expired")
    expect(first.hub.state).toBe("disconnected")
    expect(first.errors).toMatchObject([{ code: 4003, fatal: true }])

    let calls = 0
    const second = client({ token: () => Promise.resolve(`token-${++calls}`) })
    await flush()
    accept()
    FakeSocket.last.drop(4003, "token expired")
    clock.advance(clock.nextDelay!)
    await flush()
    expect(FakeSocket.last.protocols).toEqual(["bearer", "token-2"])
    expect(second.hub.state).toBe("reconnecting")
  })

  it("sends the text ping and treats a missing pong as a lost connection", () => {
    const { states } = client({ pingInterval: 25_000, pongTimeout: 10_000 })
    accept()
    const socket = FakeSocket.last
    clock.advance(25_000)
    expect(socket.sent.at(-1)).toBe("ping")
    socket.message("pong")
    clock.advance(25_000)
    expect(socket.sent.filter((text) => text === "ping")).toHaveLength(2)
    clock.advance(10_000)
    expect(socket.readyState).toBe(3)
    expect(states.at(-1)).toBe("reconnecting")
    expect(FakeSocket.instances).toHaveLength(1)
    clock.advance(clock.nextDelay!)
    expect(FakeSocket.instances).toHaveLength(2)
  })

  it("reconnects at once when the browser comes back online, and checks the connection when it goes offline", () => {
    clock.random = () => 0.999
    client({ minDelay: 10_000 })
    FakeSocket.last.drop()
    expect(clock.nextDelay).toBe(9_990)
    clock.dispatch("online")
    expect(FakeSocket.instances).toHaveLength(2)
    accept()
    clock.dispatch("offline")
    expect(FakeSocket.last.sent.at(-1)).toBe("ping")
  })

  it("calls the token provider on every connect and refreshes with auth before the token expires", async () => {
    const now = clock.time / 1000
    let calls = 0
    client({ token: () => jwt(now + 120 + 60 * calls++), refreshMargin: 30_000, pingInterval: 0 })
    await flush()
    accept()
    expect(calls).toBe(1)
    clock.advance(89_000)
    await flush()
    expect(calls).toBe(1)
    clock.advance(1_000)
    await flush()
    expect(calls).toBe(2)
    expect(FakeSocket.last.requests.at(-1)).toEqual({ action: "auth", token: jwt(now + 180) })
    FakeSocket.last.reply("hub.authenticated", { expires_at: new Date((now + 180) * 1000).toISOString() })
    clock.advance(60_000) // the next refresh: 30 s before the new expiry
    await flush()
    expect(calls).toBe(3)
  })

  it("gives each handler the events its pattern matches, and the unsubscribe function removes it", () => {
    const hub = connect("ws://hub/x", { WebSocket: FakeSocket, environment: clock })
    const got: Array<string> = []
    const off = hub.on("backtest.*", (event) => got.push(event.type))
    accept()
    FakeSocket.last.event(1, "backtest.completed")
    FakeSocket.last.event(2, "optimization.new_best")
    off()
    FakeSocket.last.event(3, "backtest.failed")
    expect(got).toEqual(["backtest.completed"])
    for (const [pattern, type] of [["a.#", "a"], ["a.#", "a.b.c"], ["*.b", "a.b"], ["*.b", "b"], ["#.c", "a.b.c"], ["a.*.c", "a.b.c"], ["a.*", "a.b.c"]]) {
      expect(matches(pattern!, type!)).toBe(hubMatches(pattern!, type!))
    }
  })

  it("parses what the hub's Schema describes: every message the hub encodes decodes with ServerMessage and reaches the handler", () => {
    const hub = connect("ws://hub/x", { WebSocket: FakeSocket, environment: clock })
    const got: Array<unknown> = []
    hub.on("#", (event) => got.push(event))
    accept()
    const payload = Outbound.message("backtest.completed", { job_id: "1" }, new Date(0), idOf(1)).payload.toString()
    expect(Result.isSuccess(Schema.decodeUnknownResult(ServerMessage)(JSON.parse(payload)))).toBe(true)
    FakeSocket.last.message(payload)
    expect(got).toEqual([JSON.parse(payload)])
  })

  it("types handlers from the application's event map (checked by tsc: the @ts-expect-error lines must be errors)", () => {
    type Events = { "run.progress": { run_id: string; percent: number }; "run.failed": { run_id: string; error: string } }
    const hub = connect<Events>("ws://hub/x", { WebSocket: FakeSocket, environment: clock })
    const seen: Array<string> = []
    hub.on("run.progress", (event) => {
      const percent: number = event.data.percent
      // @ts-expect-error: a progress event has no error
      seen.push(event.data.error)
      seen.push(`${percent}`)
    })
    hub.on("run.#", (event) => {
      if (event.type === "run.failed") seen.push(event.data.error)
      // @ts-expect-error: not every run.# event has a percent
      seen.push(String(event.data.percent))
    })
    accept()
    FakeSocket.last.message({ type: "run.failed", data: { run_id: "1", error: "boom" }, timestamp: "", id: idOf(1) })
    expect(seen).toEqual(["boom", "undefined"])
  })

  it("SSE transport: the subscription, rooms, resume position and token travel in the URL; a break reconnects from the last id", async () => {
    const sources: Array<{ url: string; closed: boolean; onopen: any; onmessage: any; onerror: any }> = []
    class FakeEventSource {
      closed = false
      onopen: any = null
      onmessage: any = null
      onerror: any = null
      constructor(readonly url: string) {
        sources.push(this)
      }
      close() {
        this.closed = true
      }
    }
    const hub = connect("ws://hub:8080/api/v1/ws/events", {
      transport: "sse", EventSource: FakeEventSource, environment: clock,
      eventTypes: ["test.#", "a.b"], rooms: ["run_id:7"], token: () => "tok"
    })
    const seqs: Array<number> = []
    hub.on("#", (event) => seqs.push((event.data as { seq: number }).seq))
    await flush()
    expect(sources[0]!.url).toBe("http://hub:8080/api/v1/sse/events?types=test.%23%2Ca.b&rooms=run_id%3A7&token=tok")
    sources[0]!.onopen({})
    expect(hub.state).toBe("connected")
    sources[0]!.onmessage({ data: JSON.stringify({ type: "test.x", data: { seq: 1 }, timestamp: "", id: idOf(1) }) })
    sources[0]!.onerror({})
    expect(sources[0]!.closed).toBe(true)
    expect(hub.state).toBe("reconnecting")
    clock.advance(clock.nextDelay!)
    await flush()
    expect(sources[1]!.url).toContain(`since=${idOf(1)}`)
    sources[1]!.onopen({})
    for (const seq of [1, 2]) sources[1]!.onmessage({ data: JSON.stringify({ type: "test.x", data: { seq }, timestamp: "", id: idOf(seq) }) })
    expect(seqs).toEqual([1, 2])
    await expect(hub.publish("command.x", {})).rejects.toThrow(/receive-only/)
  })

  it("transport auto: after three WebSocket attempts in a row that never opened, switches to SSE", () => {
    const urls: Array<string> = []
    class FakeEventSource {
      onopen = null
      onmessage = null
      onerror = null
      constructor(url: string) {
        urls.push(url)
      }
      close() {}
    }
    const hub = connect("wss://hub/api/v1/ws/events", { transport: "auto", EventSource: FakeEventSource, WebSocket: FakeSocket, environment: clock })
    for (let i = 0; i < 3; i++) {
      expect(hub.transport).toBe("websocket")
      FakeSocket.last.drop()
      clock.advance(clock.nextDelay!)
    }
    expect(hub.transport).toBe("sse")
    expect(FakeSocket.instances).toHaveLength(3)
    expect(urls).toEqual(["https://hub/api/v1/sse/events?types=%23"])
  })

  it("Effect client: reconnection follows the Schedule (a schedule that ends gives up), and the scope closes the client", () => {
    const scope = Effect.runSync(Scope.make())
    const service = Effect.runSync(Scope.provide(
      makeEffectClient("ws://hub/x", { WebSocket: FakeSocket, environment: clock, schedule: Schedule.max([Schedule.spaced("3 seconds"), Schedule.recurs(2)]) }),
      scope
    ))
    const errors: Array<ClientError> = []
    service.client.onError((error) => errors.push(error))
    for (let i = 0; i < 2; i++) {
      FakeSocket.last.drop()
      expect(clock.nextDelay).toBe(3_000)
      clock.advance(3_000)
    }
    FakeSocket.last.drop()
    expect(service.client.state).toBe("disconnected")
    expect(errors.at(-1)).toMatchObject({ fatal: true })
    expect(FakeSocket.instances).toHaveLength(3)

    const again = Effect.runSync(Scope.provide(makeEffectClient("ws://hub/y", { WebSocket: FakeSocket, environment: clock }), scope))
    accept()
    expect(again.client.state).toBe("connected")
    Effect.runSync(Scope.close(scope, Exit.void))
    expect(again.client.state).toBe("disconnected")
  })
})
