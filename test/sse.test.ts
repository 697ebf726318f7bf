/**
 * The Server-Sent Events endpoint, with a real HTTP client (the stream parsed
 * by hand, see test/support/sse.ts) against the real server on a free port:
 * filtering, resume, gap notice, keep-alive, security, limits, slow
 * consumers, shutdown.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Duration, Effect, Redacted } from "effect"
import * as jose from "jose"
import { Hub } from "../src/hub/Hub.js"
import { HubMetrics } from "../src/ops/Metrics.js"
import { baseUrl, connect, eventually, get, hubLayer, promise, range, security } from "./support.js"
import { openSse, SseClient, type SseMessage } from "./support/sse.js"

const seqsOf = (messages: ReadonlyArray<SseMessage>) => messages.map((message) => message.data.seq as number)
const types = (client: SseClient) => client.messages.map((message) => message.type)

/** Broadcasts `backtest.completed` events `{seq}` for `from` to `to - 1`; returns their ids. */
const broadcastRange = (from: number, to: number) =>
  Effect.flatMap(Hub, (hub) =>
    Effect.forEach(range(from, to), (seq) =>
      Effect.andThen(hub.broadcast("backtest.completed", { seq }), Effect.void)))

/** A stream that has received events `0..count-1` (and so knows their ids). */
const readerOf = (count: number) =>
  Effect.gen(function*() {
    const reader = yield* openSse()
    yield* promise(() => reader.until(() => reader.retry !== undefined, "the stream's start"))
    yield* broadcastRange(0, count)
    yield* promise(() => reader.until(() => reader.events.length === count, `${count} events`))
    return reader
  })

layer(hubLayer({ sseKeepAlive: Duration.millis(100) }), { excludeTestServices: true })("SSE stream", (it) => {
  it.effect("answers 200 text/event-stream, starts with retry:, and sends each event as id: and data: (the WebSocket's JSON)", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const client = yield* openSse()
      expect(client.status).toBe(200)
      expect(client.headers["content-type"]).toBe("text/event-stream")
      expect(client.headers["cache-control"]).toBe("no-cache")
      expect(client.headers["x-accel-buffering"]).toBe("no")
      yield* promise(() => client.until(() => client.retry !== undefined, "retry:"))
      expect(client.retry).toBe(2000)
      yield* hub.broadcast("backtest.completed", { job_id: "42", note: "line one\nline two" })
      yield* promise(() => client.until(() => client.events.length === 1, "the event"))
      const event = client.events[0]!
      expect(Object.keys(event)).toEqual(["type", "data", "timestamp", "id", "sseId"])
      expect(event.data).toEqual({ job_id: "42", note: "line one\nline two" })
      expect(event.sseId).toBe(event.id)
      const counts = yield* hub.clientCountByTransport
      expect(counts.sse).toBe(1)
      const metrics = yield* get("/metrics")
      expect(metrics.body.websocket.connected_clients_by_transport).toEqual({ ws: 0, sse: 1 })
    }))

  it.effect("?types= filters by pattern; no types: everything", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const filtered = yield* openSse("?types=backtest.%23,agent.*")
      const everything = yield* openSse()
      for (const client of [filtered, everything]) {
        yield* promise(() => client.until(() => client.retry !== undefined, "the stream's start"))
      }
      for (const type of ["task.running", "backtest.completed", "agent.status", "agent.status.changed", "backtest.failed"]) {
        yield* hub.broadcast(type, {})
      }
      yield* promise(() => everything.until(() => everything.events.length === 5, "five events"))
      yield* promise(() => filtered.until(() => filtered.events.length === 3, "three events"))
      expect(filtered.events.map((event) => event.type)).toEqual(["backtest.completed", "agent.status", "backtest.failed"])
    }))

  it.effect("?rooms= receives only the events of those rooms", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const client = yield* openSse("?types=optimization.%23&rooms=run_id:r1,job_id:j9")
      yield* promise(() => client.until(() => client.retry !== undefined, "the stream's start"))
      yield* hub.broadcast("optimization.new_best", { run_id: "r2", seq: 0 })
      yield* hub.broadcast("optimization.new_best", { run_id: "r1", seq: 1 })
      yield* hub.broadcast("backtest.completed", { run_id: "r1", seq: 2 })
      yield* hub.broadcast("optimization.iteration", { job_id: "j9", seq: 3 })
      yield* hub.broadcast("optimization.iteration", { seq: 4 })
      yield* hub.broadcast("optimization.new_best", { run_id: "r1", seq: 5 })
      yield* promise(() => client.until(() => seqsOf(client.events).includes(5), "event 5"))
      expect(seqsOf(client.events)).toEqual([1, 3, 5])
    }))

  it.effect("bad types, rooms or since are refused with 400 and a JSON reason", () =>
    Effect.gen(function*() {
      const cases: Array<[string, Record<string, string>, string]> = [
        ["?types=backtest..completed", {}, "invalid_pattern"],
        ["?types=back*", {}, "invalid_pattern"],
        ["?rooms=nokey", {}, "invalid_room"],
        ["?rooms=colour:red", {}, "invalid_room"],
        ["?since=undefined", {}, "invalid_request"],
        ["", { "last-event-id": "not an id" }, "invalid_request"]
      ]
      for (const [query, headers, code] of cases) {
        const client = yield* openSse(query, headers)
        yield* promise(() => client.until(() => client.ended, "the answer"))
        expect(client.status, query).toBe(400)
        expect(client.body.code, query).toBe(code)
        expect(client.body.error.length).toBeGreaterThan(10)
      }
    }))

  it.effect("sends a keep-alive comment on an idle stream every SSE_KEEPALIVE", () =>
    Effect.gen(function*() {
      const client = yield* openSse()
      yield* promise(() => client.until(() => client.comments.filter((c) => c === "keepalive").length >= 2, "two keep-alives"))
      expect(client.messages).toEqual([])
    }))
})

layer(hubLayer({ historyMaxEvents: 20 }), { excludeTestServices: true })("SSE resume", (it) => {
  it.effect("Last-Event-ID resumes after that event (and wins over ?since=); ?since= alone does too", () =>
    Effect.gen(function*() {
      const reader = yield* readerOf(5)
      const ids = reader.events.map((event) => event.id as string)
      const byHeader = yield* openSse(`?since=${ids[3]}`, { "last-event-id": ids[1]! })
      const byQuery = yield* openSse(`?since=${ids[3]}`)
      yield* promise(() => byHeader.until(() => types(byHeader).includes("hub.live"), "hub.live"))
      yield* promise(() => byQuery.until(() => types(byQuery).includes("hub.live"), "hub.live"))
      expect(seqsOf(byHeader.events)).toEqual([2, 3, 4])
      expect(seqsOf(byQuery.events)).toEqual([4])
      expect(byHeader.messages.at(-1)).toMatchObject({ type: "hub.live", data: { replayed: 3, last_id: ids[4] } })
      // Live from there on, with no gap and no duplicate at the seam.
      yield* broadcastRange(5, 8)
      yield* promise(() => byHeader.until(() => seqsOf(byHeader.events).includes(7), "event 7"))
      expect(seqsOf(byHeader.events)).toEqual([2, 3, 4, 5, 6, 7])
    }))

  it.effect("a resume beyond the history gets hub.history_gap (missed), then what is left; an unknown id: reason unknown", () =>
    Effect.gen(function*() {
      const reader = yield* readerOf(1)
      const since = reader.events[0]!.id as string
      yield* broadcastRange(1, 40)
      const missed = yield* openSse("", { "last-event-id": since })
      yield* promise(() => missed.until(() => types(missed).includes("hub.live"), "hub.live"))
      expect(missed.messages[0]).toMatchObject({ type: "hub.history_gap", data: { since, reason: "missed" } })
      expect(missed.messages[0]!.sseId).toBeUndefined()
      expect(seqsOf(missed.events)).toEqual(range(20, 40))
      const other = yield* openSse("?since=1700000000000abcd-0000000000000007")
      yield* promise(() => other.until(() => types(other).includes("hub.live"), "hub.live"))
      expect(other.messages[0]).toMatchObject({ type: "hub.history_gap", data: { reason: "unknown" } })
    }))
})

const secret = "a-test-secret-that-is-at-least-32-characters-long"
const origin = "https://app.example.com"

/** An HS256 token valid for `seconds`, with `claims`. */
const token = (claims: Record<string, unknown> = {}, seconds = 3600) =>
  promise(() =>
    new jose.SignJWT(claims).setProtectedHeader({ alg: "HS256" }).setSubject("user-1")
      .setExpirationTime(Math.floor(Date.now() / 1000) + seconds).sign(new TextEncoder().encode(secret))
  )

/** The answer to a request refused before the stream. */
const refusal = (query: string, headers: Record<string, string> = {}) =>
  Effect.flatMap(openSse(query, headers), (client) =>
    Effect.as(promise(() => client.until(() => client.ended, "the answer")), client))

layer(
  hubLayer({
    security: security({
      allowedOrigins: [origin],
      authKeys: { _tag: "secret", secret: Redacted.make(secret) },
      maxConnectionsPerIp: 3
    })
  }),
  { excludeTestServices: true }
)("SSE security and limits", (it) => {
  it.effect("a foreign origin is refused with 403; an allowed one gets CORS headers with Vary: Origin", () =>
    Effect.gen(function*() {
      const foreign = yield* refusal(`?token=${yield* token()}`, { origin: "https://evil.example.com" })
      expect(foreign.status).toBe(403)
      expect(foreign.body.error).toContain("evil.example.com")
      expect(foreign.headers["access-control-allow-origin"]).toBeUndefined()
      const allowed = yield* openSse(`?token=${yield* token()}`, { origin })
      expect(allowed.status).toBe(200)
      expect(allowed.headers["access-control-allow-origin"]).toBe(origin)
      expect(allowed.headers["vary"]).toBe("Origin")
    }))

  it.effect("a missing or bad token is refused with 401; a good one in ?token= or Authorization is accepted", () =>
    Effect.gen(function*() {
      const missing = yield* refusal("", { origin })
      expect(missing.status).toBe(401)
      expect(missing.headers["www-authenticate"]).toBe("Bearer")
      // The browser can read why (CORS headers on the refusal too).
      expect(missing.headers["access-control-allow-origin"]).toBe(origin)
      const expired = yield* refusal(`?token=${yield* token({}, -60)}`)
      expect(expired.status).toBe(401)
      expect(expired.body.error).toBe("token expired")
      const byQuery = yield* openSse(`?token=${yield* token()}`)
      const byHeader = yield* openSse("", { authorization: `Bearer ${yield* token()}` })
      expect([byQuery.status, byHeader.status]).toEqual([200, 200])
    }))

  it.effect("the token's event_types claim: types outside it are refused (403); without types, only what it allows", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const limited = yield* token({ event_types: ["backtest.#"] })
      const forbidden = yield* refusal(`?token=${limited}&types=task.%23`)
      expect(forbidden.status).toBe(403)
      expect(forbidden.body.code).toBe("forbidden_event_types")
      const client = yield* openSse(`?token=${limited}`)
      yield* promise(() => client.until(() => client.retry !== undefined, "the stream's start"))
      yield* hub.broadcast("task.running", {})
      yield* hub.broadcast("backtest.completed", {})
      yield* promise(() => client.until(() => client.events.length === 1, "the allowed event"))
      expect(client.events.map((event) => event.type)).toEqual(["backtest.completed"])
    }))

  it.effect("the stream ends when its token expires", () =>
    Effect.gen(function*() {
      const metrics = yield* HubMetrics
      const client = yield* openSse(`?token=${yield* token({}, 1)}`)
      expect(client.status).toBe(200)
      yield* promise(() => client.until(() => client.ended, "the end of the stream", 5000))
      expect(client.comments).toContain("closing: token_expired")
      const snapshot = yield* metrics.snapshot
      expect(snapshot.clients_disconnected.token_expired).toBeGreaterThanOrEqual(1)
    }))

  it.effect("streams and WebSockets share the connection limits (503 with Retry-After); an ended stream frees its slot", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const good = yield* token()
      const first = yield* openSse(`?token=${good}`)
      yield* openSse(`?token=${good}`)
      yield* connect({ headers: { authorization: `Bearer ${good}` } })
      const refused = yield* refusal(`?token=${good}`)
      expect(refused.status).toBe(503)
      expect(refused.headers["retry-after"]).toBe("5")
      first.close()
      yield* eventually(hub.clientCountByTransport, (counts) => counts.sse === 1)
      const again = yield* openSse(`?token=${good}`)
      expect(again.status).toBe(200)
    }))
})

layer(hubLayer({ sendBuffer: 8, writeTimeout: Duration.seconds(30) }), { excludeTestServices: true })(
  "SSE slow consumers",
  (it) => {
    it.effect("a stream that stops reading is dropped; one that reads receives every event, bursts included", () =>
      Effect.gen(function*() {
        const hub = yield* Hub
        const metrics = yield* HubMetrics
        const slow = yield* openSse()
        const fast = yield* openSse()
        for (const client of [slow, fast]) {
          yield* promise(() => client.until(() => client.retry !== undefined, "the stream's start"))
        }
        slow.pause()
        // A burst far above the send buffer (8), fanned out before any write: the reading stream keeps it all.
        yield* Effect.forEach(range(0, 100), (seq) => hub.broadcastEvent({ type: "backtest.completed", data: { seq } }))
        yield* promise(() => fast.until(() => fast.events.length === 100, "the burst"))
        const payload = "x".repeat(64 * 1024)
        for (let seq = 100; seq < 400; seq++) {
          yield* hub.broadcast("backtest.completed", { seq, payload })
          yield* promise(() => fast.until(() => fast.events.length === seq + 1, `event ${seq}`))
        }
        expect(seqsOf(fast.events)).toEqual(range(0, 400))
        yield* eventually(metrics.snapshot, (snapshot) => snapshot.clients_disconnected.slow_consumer === 1)
        slow.resume()
        yield* promise(() => slow.until(() => slow.ended, "the slow stream's end"))
        expect((yield* metrics.snapshot).clients_disconnected.slow_consumer).toBe(1)
      }), { timeout: 30_000 })
  }
)

describe("SSE shutdown", () => {
  it.live("closing the server ends every stream", () =>
    Effect.gen(function*() {
      const client = yield* Effect.scoped(Effect.gen(function*() {
        const url = yield* baseUrl
        const client = yield* promise(() => SseClient.open(`${url}/api/v1/sse/events`))
        yield* promise(() => client.until(() => client.retry !== undefined, "the stream's start"))
        return client
      })).pipe(Effect.provide(hubLayer()))
      yield* promise(() => client.until(() => client.ended, "the end of the stream"))
      expect(client.comments).toContain("closing: shutdown")
    }))
})
