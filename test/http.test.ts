/**
 * The HTTP endpoints: health, metrics, publish, and what unknown or wrong
 * requests get.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Option, Redacted } from "effect"
import { request } from "node:http"
import { maxReasonLength } from "../src/http/Problem.js"
import { Health } from "../src/ops/Health.js"
import { baseUrl, connect, get, hubLayer, post, postChunked, promise } from "./support.js"

const token = "s3cret-token"
const auth = { authorization: `Bearer ${token}` }

layer(hubLayer({ publishToken: Option.some(Redacted.make(token)), publishMaxBody: 4096 }), {
  excludeTestServices: true
})("HTTP with PUBLISH_TOKEN", (it) => {
  describe("POST /api/v1/events", () => {
    it.effect("broadcasts through the hub and answers 202", () =>
      Effect.gen(function*() {
        const client = yield* connect()
        const response = yield* post("/api/v1/events", { type: "backtest.completed", data: { job_id: "j1" } }, auth)
        expect(response.status).toBe(202)
        expect(response.body).toEqual({ status: "accepted", events: 1, recipients: 1 })
        yield* promise(() => client.until(() => client.events.length === 1))
        expect(client.events[0]).toMatchObject({ type: "backtest.completed", data: { job_id: "j1" } })
      }))

    it.effect("broadcasts an array of events in order", () =>
      Effect.gen(function*() {
        const client = yield* connect()
        const events = [1, 2, 3].map((n) => ({ type: "task.running", data: { n } }))
        const response = yield* post("/api/v1/events", events, auth)
        expect(response.status).toBe(202)
        expect(response.body).toEqual({ status: "accepted", events: 3, recipients: 3 })
        yield* promise(() => client.until(() => client.events.length === 3))
        expect(client.events.map((event) => event.data.n)).toEqual([1, 2, 3])
      }))

    it.effect.each([
      ["not json", "not valid JSON"],
      [{ data: {} }, "type"],
      [{ type: "", data: {} }, "empty"],
      [{ type: "hub.fake", data: {} }, "reserved"],
      [{ type: "backtest.*", data: {} }, "wildcard"],
      [{ type: "x", data: "string" }, "data"],
      [{ type: "x" }, "data: is missing"],
      [[], "at least 1"],
      [[{ type: "x", data: {} }, { type: "hub.x", data: {} }], "reserved"]
    ])("400 for %j, with a reason", ([body, reason]) =>
      Effect.gen(function*() {
        const response = yield* post("/api/v1/events", body, auth)
        expect(response.status).toBe(400)
        expect(response.body.error).toContain(reason)
        // A single event's error speaks of that event, not of the array form the body could also take.
        if (!Array.isArray(body)) expect(response.body.error).not.toContain("ReadonlyArray")
      }))

    it.effect("401 without a token, and with a wrong one", () =>
      Effect.gen(function*() {
        const missing = yield* post("/api/v1/events", { type: "x", data: {} })
        expect(missing.status).toBe(401)
        expect(missing.body.error).toContain("missing bearer token")
        const wrong = yield* post("/api/v1/events", { type: "x", data: {} }, { authorization: "Bearer nope" })
        expect(wrong.status).toBe(401)
        expect(wrong.body.error).toBe("invalid token")
      }))

    it.effect("413 for a body larger than PUBLISH_MAX_BODY", () =>
      Effect.gen(function*() {
        const response = yield* post("/api/v1/events", { type: "x", data: { blob: "x".repeat(5000) } }, auth)
        expect(response.status).toBe(413)
        expect(response.body.error).toContain("4096")
      }))

    it.effect("413 for a chunked body (no Content-Length) larger than PUBLISH_MAX_BODY, answered while it is still sent", () =>
      Effect.gen(function*() {
        const url = yield* baseUrl
        // 1 KB chunks until the answer arrives: the hub must answer without waiting for the end (there is none).
        const answer = yield* promise(() => postChunked(`${url}/api/v1/events`, auth, () => "x".repeat(1024)))
        expect(answer.status).toBe(413)
        expect(JSON.parse(answer.body).error).toContain("4096")
        // A chunked body within the limit is read as before.
        const small = yield* promise(() =>
          postChunked(`${url}/api/v1/events`, auth, [JSON.stringify({ type: "chunked.ok", data: { n: 1 } })])
        )
        expect(small.status).toBe(202)
      }))

    it.effect("an error answer quotes at most a short excerpt of the request", () =>
      Effect.gen(function*() {
        // A value of the wrong type, 3,000 characters long: the reason names the field and stops short.
        const long = yield* post("/api/v1/events", { type: "x", data: "y".repeat(3000) }, auth)
        expect(long.status).toBe(400)
        expect(long.body.error).toContain("data")
        expect(long.body.error.length).toBeLessThanOrEqual(maxReasonLength)
        const path = yield* get(`/${"z".repeat(3000)}`)
        expect(path.status).toBe(404)
        expect(path.body.error.length).toBeLessThanOrEqual(maxReasonLength)
      }))
  })

  it.effect("GET /metrics reports clients, events, deliveries and disconnects", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      yield* post("/api/v1/events", { type: "metrics.probe", data: {} }, auth)
      yield* promise(() => client.until(() => client.events.length === 1))
      const { status, body } = yield* get("/metrics")
      expect(status).toBe(200)
      expect(body.websocket.connected_clients).toBeGreaterThanOrEqual(1)
      expect(body.websocket.events_broadcast).toBeGreaterThanOrEqual(1)
      expect(body.websocket.messages_delivered).toBeGreaterThanOrEqual(1)
      expect(body.websocket.events_by_type["metrics.probe"]).toEqual({ broadcast: 1, recipients: 1 })
      expect(body.websocket.clients_disconnected).toBeTypeOf("object")
    }))

  it.effect("GET /health is 200 while the hub serves, 503 while it cannot", () =>
    Effect.gen(function*() {
      const ok = yield* get("/health")
      expect(ok.status).toBe(200)
      expect(ok.body).toEqual({ status: "ok", checks: { hub: { status: "up" } } })
      const health = yield* Health
      yield* health.set("hub", { status: "down", critical: true, detail: "shutting down" })
      const down = yield* get("/health")
      expect(down.status).toBe(503)
      expect(down.body.status).toBe("unavailable")
      yield* health.set("hub", { status: "up", critical: true })
    }))

  it.effect("unknown paths answer 404, a plain GET on the WebSocket path 426", () =>
    Effect.gen(function*() {
      const missing = yield* get("/nowhere")
      expect(missing.status).toBe(404)
      expect(missing.body.error).toContain("/nowhere")
      const plain = yield* get("/api/v1/ws/events")
      expect(plain.status).toBe(426)
      // Upgrade without Connection: Upgrade is a plain request, not a handshake.
      const url = yield* baseUrl
      const status = yield* promise(() =>
        new Promise<number | undefined>((resolve, reject) =>
          request(`${url}/api/v1/ws/events`, { headers: { upgrade: "websocket", connection: "keep-alive" } }, (res) => {
            res.resume()
            resolve(res.statusCode)
          }).on("error", reject).end()
        )
      )
      expect(status).toBe(426)
    }))
})

layer(hubLayer({ publishToken: Option.some(Redacted.make(token)) }), { excludeTestServices: true })(
  "HTTP with PUBLISH_TOKEN and the default PUBLISH_MAX_BODY",
  (it) => {
    it.effect("1,001 events: 400 saying how many are allowed, in a short answer (not the events back)", () =>
      Effect.gen(function*() {
        // About 1 MB, under the default limit, as in issue 23 (whose answer echoed every event: 1,054,131 bytes).
        const events = Array.from({ length: 1001 }, (_, n) => ({ type: "bulk.x", data: { n, pad: "p".repeat(1000) } }))
        const url = yield* baseUrl
        const response = yield* promise(() =>
          fetch(`${url}/api/v1/events`, {
            method: "POST",
            headers: { "content-type": "application/json", ...auth },
            body: JSON.stringify(events)
          })
        )
        const text = yield* promise(() => response.text())
        expect(response.status).toBe(400)
        expect(JSON.parse(text).error).toBe("invalid event: at most 1000 events per request, got 1001")
        expect(text.length).toBeLessThan(maxReasonLength + 20)
      }))
  }
)

layer(hubLayer(), { excludeTestServices: true })("HTTP without PUBLISH_TOKEN", (it) => {
  it.effect("POST /api/v1/events answers that publishing is disabled and how to enable it", () =>
    Effect.gen(function*() {
      const response = yield* post("/api/v1/events", { type: "x", data: {} }, auth)
      expect(response.status).toBe(404)
      // Not a bare "no route": what is off, and how to turn it on.
      expect(response.body.error).toContain("publishing is disabled")
      expect(response.body.error).toContain("PUBLISH_TOKEN")
    }))
})
