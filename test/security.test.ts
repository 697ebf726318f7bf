/**
 * Security: origins and CORS, JWT authentication (HS256 secret, JWKS, public
 * key), `event_types` authorization, token expiry and refresh, and every
 * limit, with real clients against the real server. Each refusal is checked
 * for its answer and its counter in `/metrics`.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Duration, Effect, Option, Redacted } from "effect"
import * as jose from "jose"
import { createServer } from "node:http"
import { WebSocket, type ClientOptions } from "ws"
import { Hub } from "../src/hub/Hub.js"
import {
  baseUrl,
  connect,
  eventually,
  freePort,
  get,
  hubLayer,
  post,
  promise,
  security,
  ServiceProcess,
  TestClient,
  wsUrl
} from "./support.js"

const secret = "a-test-secret-that-is-at-least-32-characters-long"
const secretKey = new TextEncoder().encode(secret)
const issuer = "hub-tests"
const audience = "event-hub"

/** A signed HS256 token for `sub`, valid for `seconds` (negative: already expired). */
const hs256 = (claims: Record<string, unknown> = {}, seconds = 3600, key: Uint8Array = secretKey) =>
  new jose.SignJWT(claims)
    .setProtectedHeader({ alg: "HS256" })
    .setSubject("user-1")
    .setIssuer(issuer)
    .setAudience(audience)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + seconds)
    .sign(key)

/** What a refused handshake got: the HTTP status and the JSON body. */
interface Refusal {
  readonly status: number
  readonly body: { error: string }
  readonly headers: Record<string, string | Array<string> | undefined>
}

/** Tries to connect; resolves with the refusal, or `"accepted"`. */
const attempt = (url: string, options?: ClientOptions & { protocols?: Array<string> }) =>
  new Promise<"accepted" | Refusal>((resolve, reject) => {
    const ws = new WebSocket(url, options?.protocols ?? [], options)
    ws.once("unexpected-response", (_request, response) => {
      let text = ""
      response.on("data", (chunk) => (text += chunk))
      response.on("end", () => {
        ws.terminate()
        resolve({ status: response.statusCode ?? 0, body: JSON.parse(text), headers: response.headers })
      })
    })
    ws.once("open", () => {
      ws.terminate()
      resolve("accepted")
    })
    ws.once("error", (error) => {
      if (!(error.message ?? "").startsWith("Unexpected server response")) reject(error)
    })
  })

/** Connects (with a token, an origin...) as the test's scoped client; fails the test if refused. */
const connectWith = (options: ClientOptions & { protocols?: Array<string> } = {}, query = "") =>
  Effect.flatMap(wsUrl, (url) =>
    Effect.acquireRelease(
      Effect.promise(() => TestClient.connect(`${url}${query}`, options, options.protocols)),
      (client) => Effect.sync(() => client.close())
    ))

const refused = (options?: ClientOptions & { protocols?: Array<string> }, query = "") =>
  Effect.flatMap(wsUrl, (url) =>
    Effect.flatMap(promise(() => attempt(`${url}${query}`, options)), (result) =>
      result === "accepted"
        ? Effect.die(new Error("expected the handshake to be refused, it was accepted"))
        : Effect.succeed(result)))

const securityCounters = Effect.map(get("/metrics"), (response) => response.body.security as Record<string, number>)

const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } })

// ---------------------------------------------------------------------------
// HS256 with a shared secret
// ---------------------------------------------------------------------------

layer(
  hubLayer({
    pingPeriod: Duration.millis(100),
    security: security({
      authKeys: { _tag: "secret", secret: Redacted.make(secret) },
      authIssuer: Option.some(issuer),
      authAudience: Option.some(audience)
    })
  }),
  { excludeTestServices: true }
)("authentication (HS256)", (it) => {
  it.effect("accepts a good token from the Authorization header, the query and Sec-WebSocket-Protocol", () =>
    Effect.gen(function*() {
      const token = yield* promise(() => hs256())
      const fromHeader = yield* connectWith(bearer(token))
      const fromQuery = yield* connectWith({}, `?token=${token}`)
      const fromProtocol = yield* connectWith({ protocols: ["bearer", token] })
      expect(fromProtocol.ws.protocol).toBe("bearer")
      const hub = yield* Hub
      expect(yield* hub.broadcast("backtest.completed", { n: 1 })).toBe(3)
      for (const client of [fromHeader, fromQuery, fromProtocol]) {
        yield* promise(() => client.until(() => client.events.length === 1, "the event"))
      }
    }))

  it.effect("refuses a missing token with 401 and a reason", () =>
    Effect.gen(function*() {
      const before = yield* securityCounters
      const refusal = yield* refused()
      expect(refusal.status).toBe(401)
      expect(refusal.body.error).toContain("missing token")
      expect(refusal.headers["www-authenticate"]).toBe("Bearer")
      const after = yield* securityCounters
      expect(after.unauthorized).toBe(before.unauthorized! + 1)
    }))

  it.effect("refuses a token signed with another key, an expired token and alg none", () =>
    Effect.gen(function*() {
      const wrongKey = yield* promise(() => hs256({}, 3600, new TextEncoder().encode("another-secret-of-at-least-32-characters!!")))
      const expired = yield* promise(() => hs256({}, -60))
      const none = new jose.UnsecuredJWT({ sub: "user-1", iss: issuer, aud: audience })
        .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
        .encode()
      const cases = [
        [wrongKey, "signature"],
        [expired, "expired"],
        [none, "not allowed"],
        ["not.a.jwt", "malformed"],
        ["garbage", "malformed"]
      ] as const
      for (const [token, reason] of cases) {
        const refusal = yield* refused(bearer(token))
        expect(refusal.status, token).toBe(401)
        expect(refusal.body.error, token).toContain(reason)
        expect(JSON.stringify(refusal)).not.toContain(token)
      }
    }))

  it.effect("refuses a wrong issuer or audience, and a token without exp", () =>
    Effect.gen(function*() {
      const wrongIssuer = yield* promise(() =>
        new jose.SignJWT({}).setProtectedHeader({ alg: "HS256" }).setIssuer("someone-else").setAudience(audience)
          .setExpirationTime("1h").sign(secretKey)
      )
      const wrongAudience = yield* promise(() =>
        new jose.SignJWT({}).setProtectedHeader({ alg: "HS256" }).setIssuer(issuer).setAudience("other")
          .setExpirationTime("1h").sign(secretKey)
      )
      const noExpiry = yield* promise(() =>
        new jose.SignJWT({}).setProtectedHeader({ alg: "HS256" }).setIssuer(issuer).setAudience(audience).sign(secretKey)
      )
      for (const [token, claim] of [[wrongIssuer, "iss"], [wrongAudience, "aud"], [noExpiry, "exp"]] as const) {
        const refusal = yield* refused(bearer(token))
        expect(refusal.status).toBe(401)
        expect(refusal.body.error).toContain(claim)
      }
    }))

  it.effect("event_types limits the default subscription and refuses subscriptions outside it", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const token = yield* promise(() => hs256({ event_types: ["backtest.*", "agent.status.changed"] }))
      const client = yield* connectWith(bearer(token))
      // Never subscribed: everything it is allowed, nothing more.
      for (const type of ["task.running", "backtest.completed", "optimization.new_best", "agent.status.changed"]) {
        yield* hub.broadcast(type, {})
      }
      yield* hub.broadcast("end.marker.allowed.nowhere", {})
      yield* hub.broadcast("backtest.failed", {})
      yield* promise(() => client.until(() => client.events.length === 3, "three events"))
      expect(client.events.map((event) => event.type)).toEqual(["backtest.completed", "agent.status.changed", "backtest.failed"])

      const refusal = yield* promise(() =>
        client.request({ action: "subscribe", event_types: ["backtest.completed", "optimization.#", "#"] }, "hub.error")
      )
      expect(refusal.data.code).toBe("forbidden_event_types")
      expect(refusal.data.message).toContain("\"optimization.#\"")
      expect(refusal.data.message).toContain("\"#\"")
      expect(refusal.data.message).not.toContain("\"backtest.completed\",")
      const ok = yield* promise(() => client.request({ action: "subscribe", event_types: ["backtest.failed"] }, "hub.subscribed"))
      expect(ok.data.event_types).toEqual(["backtest.failed"])
      expect((yield* securityCounters).forbidden_event_types).toBeGreaterThanOrEqual(1)
    }))

  it.effect("event_types also limits what a resume replays", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const token = yield* promise(() => hs256({ event_types: ["backtest.*"] }))
      const watcher = yield* connectWith(bearer(token))
      yield* hub.broadcast("backtest.submitted", { n: 0 })
      yield* promise(() => watcher.until(() => watcher.events.length === 1, "the first event"))
      const since = watcher.events[0]!.id as string
      for (const [n, type] of ["task.running", "backtest.completed", "optimization.new_best", "backtest.failed"].entries()) {
        yield* hub.broadcast(type, { n: n + 1 })
      }
      // Resuming on a new connection, never subscribed: the replay holds only what the token allows.
      const resumed = yield* connectWith(bearer(token), `?since=${since}`)
      yield* promise(() => resumed.until(() => resumed.messages.some((m) => m.type === "hub.live"), "hub.live"))
      expect(resumed.events.map((event) => event.type)).toEqual(["backtest.completed", "backtest.failed"])
    }))

  it.effect("closes the connection with 4003 when its token expires", () =>
    Effect.gen(function*() {
      const token = yield* promise(() => hs256({}, 1))
      const client = yield* connectWith(bearer(token))
      const closed = yield* promise(() => client.closed)
      expect(closed).toEqual({ code: 4003, reason: "token expired" })
      expect((yield* securityCounters).token_expired).toBeGreaterThanOrEqual(1)
    }))

  it.effect("an auth request with a fresh token keeps the connection open past the old expiry", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const shortToken = yield* promise(() => hs256({ event_types: ["backtest.*"] }, 1))
      const client = yield* connectWith(bearer(shortToken))
      const oldExpiry = (Math.floor(Date.now() / 1000) + 1) * 1000

      const wrong = yield* promise(() => client.request({ action: "auth", token: "garbage" }, "hub.error"))
      expect(wrong.data.code).toBe("invalid_token")
      const otherUser = yield* promise(() =>
        new jose.SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("user-2").setIssuer(issuer)
          .setAudience(audience).setExpirationTime("1h").sign(secretKey)
      )
      const different = yield* promise(() => client.request({ action: "auth", token: otherUser }, "hub.error"))
      expect(different.data.code).toBe("invalid_token")
      expect(different.data.message).toContain("subject")

      const longToken = yield* promise(() => hs256({ event_types: ["backtest.*", "task.*"] }, 3600))
      const reply = yield* promise(() => client.request({ action: "auth", token: longToken }, "hub.authenticated"))
      expect(Date.parse(reply.data.expires_at)).toBeGreaterThan(Date.now() + 3000_000)
      // Pings arrive every 100 ms: wait until the old expiry (plus a tick) has passed.
      yield* promise(() => client.until(() => Date.now() > oldExpiry + 1500, "the old expiry to pass"))
      expect(client.isOpen).toBe(true)
      // The new token's event_types are in effect.
      yield* hub.broadcast("task.running", {})
      yield* promise(() => client.until(() => client.events.length === 1, "the event"))
    }), { timeout: 10_000 })
})

// ---------------------------------------------------------------------------
// RS256/ES256: a JWKS endpoint, and one public key
// ---------------------------------------------------------------------------

const esKeys = await jose.generateKeyPair("ES256", { extractable: true })
const otherEsKeys = await jose.generateKeyPair("ES256", { extractable: true })
const rsKeys = await jose.generateKeyPair("RS256", { extractable: true })
const jwk = { ...(await jose.exportJWK(esKeys.publicKey)), kid: "key-1", alg: "ES256", use: "sig" }
let jwksRequests = 0
const jwksServer = createServer((_request, response) => {
  jwksRequests++
  response.writeHead(200, { "content-type": "application/json" })
  response.end(JSON.stringify({ keys: [jwk] }))
})
await new Promise<void>((resolve) => jwksServer.listen(0, "127.0.0.1", resolve))
const jwksPort = (jwksServer.address() as { port: number }).port

const asymmetric = (alg: "ES256" | "RS256", key: CryptoKey, kid?: string) =>
  new jose.SignJWT({}).setProtectedHeader(kid === undefined ? { alg } : { alg, kid }).setSubject("user-1")
    .setExpirationTime("1h").sign(key)

layer(
  hubLayer({
    security: security({
      authKeys: {
        _tag: "jwks",
        url: new URL(`http://127.0.0.1:${jwksPort}/.well-known/jwks.json`),
        cacheMaxAge: Duration.minutes(10)
      }
    })
  }),
  { excludeTestServices: true }
)("authentication (JWKS)", (it) => {
  it.effect("accepts a token signed by a key of the JWKS, fetching the keys once", () =>
    Effect.gen(function*() {
      const token = yield* promise(() => asymmetric("ES256", esKeys.privateKey, "key-1"))
      yield* connectWith(bearer(token))
      yield* connectWith(bearer(token))
      expect(jwksRequests).toBe(1)
    }))

  it.effect("refuses a token signed by another key, and an HS256 token", () =>
    Effect.gen(function*() {
      const forged = yield* promise(() => asymmetric("ES256", otherEsKeys.privateKey, "key-1"))
      const symmetric = yield* promise(() =>
        new jose.SignJWT({}).setProtectedHeader({ alg: "HS256", kid: "key-1" }).setExpirationTime("1h").sign(secretKey)
      )
      const forgedRefusal = yield* refused(bearer(forged))
      expect(forgedRefusal.status).toBe(401)
      expect(forgedRefusal.body.error).toContain("signature")
      const symmetricRefusal = yield* refused(bearer(symmetric))
      expect(symmetricRefusal.status).toBe(401)
      expect(symmetricRefusal.body.error).toContain("not allowed")
    }))
})

const unreachablePort = await freePort()

layer(
  hubLayer({
    security: security({
      authKeys: { _tag: "jwks", url: new URL(`http://127.0.0.1:${unreachablePort}/jwks`), cacheMaxAge: Duration.minutes(10) }
    })
  }),
  { excludeTestServices: true }
)("authentication (JWKS unreachable)", (it) => {
  it.effect("answers 503 when the signing keys cannot be fetched (not the client's fault)", () =>
    Effect.gen(function*() {
      const token = yield* promise(() => asymmetric("ES256", esKeys.privateKey, "key-1"))
      const refusal = yield* refused(bearer(token))
      expect(refusal.status).toBe(503)
      expect(refusal.body.error).toContain("signing keys are unavailable")
    }))
})

const rsaPem = await jose.exportSPKI(rsKeys.publicKey)

layer(
  hubLayer({ security: security({ authKeys: { _tag: "publicKey", key: rsaPem } }) }),
  { excludeTestServices: true }
)("authentication (public key)", (it) => {
  it.effect("accepts an RS256 token, refuses algorithm confusion (HS256 keyed with the public key)", () =>
    Effect.gen(function*() {
      yield* connectWith(bearer(yield* promise(() => asymmetric("RS256", rsKeys.privateKey))))
      const confused = yield* promise(() =>
        new jose.SignJWT({}).setProtectedHeader({ alg: "HS256" }).setExpirationTime("1h")
          .sign(new TextEncoder().encode(rsaPem))
      )
      const refusal = yield* refused(bearer(confused))
      expect(refusal.status).toBe(401)
      expect(refusal.body.error).toContain("not allowed")
    }))
})

// ---------------------------------------------------------------------------
// Origins and CORS
// ---------------------------------------------------------------------------

const appOrigin = "https://app.example.com"

layer(
  hubLayer({
    publishToken: Option.some(Redacted.make("publish-token")),
    security: security({ allowedOrigins: [appOrigin, "http://localhost:3000"] })
  }),
  { excludeTestServices: true }
)("origins", (it) => {
  it.effect("refuses a foreign origin with 403 before the handshake; accepts a listed one and none", () =>
    Effect.gen(function*() {
      const refusal = yield* refused({ origin: "https://evil.example.com" })
      expect(refusal.status).toBe(403)
      expect(refusal.body.error).toContain("evil.example.com")
      yield* connectWith({ origin: appOrigin })
      yield* connectWith({ origin: "http://LOCALHOST:3000" })
      yield* connectWith()
      expect((yield* securityCounters).origin_refused).toBe(1)
    }))

  it.effect("CORS: answers preflights, echoes a listed origin with Vary, never * or credentials", () =>
    Effect.gen(function*() {
      const url = yield* baseUrl
      const preflight = yield* promise(() =>
        fetch(`${url}/api/v1/events`, {
          method: "OPTIONS",
          headers: { origin: appOrigin, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type" }
        })
      )
      expect(preflight.status).toBe(204)
      expect(preflight.headers.get("access-control-allow-origin")).toBe(appOrigin)
      expect(preflight.headers.get("vary")).toContain("Origin")
      expect(preflight.headers.get("access-control-allow-methods")).toContain("POST")
      expect(preflight.headers.get("access-control-allow-headers")).toContain("authorization")
      expect(preflight.headers.get("access-control-allow-credentials")).toBeNull()

      const health = yield* promise(() => fetch(`${url}/health`, { headers: { origin: appOrigin } }))
      expect(health.headers.get("access-control-allow-origin")).toBe(appOrigin)
      const foreign = yield* promise(() => fetch(`${url}/health`, { headers: { origin: "https://evil.example.com" } }))
      expect(foreign.headers.get("access-control-allow-origin")).toBeNull()
      const noOrigin = yield* promise(() => fetch(`${url}/health`))
      expect(noOrigin.status).toBe(200)
      expect(noOrigin.headers.get("access-control-allow-origin")).toBeNull()
    }))
})

layer(hubLayer(), { excludeTestServices: true })("origins by default", (it) => {
  it.effect("ALLOWED_ORIGINS=* accepts any origin and answers CORS with * and no credentials", () =>
    Effect.gen(function*() {
      yield* connectWith({ origin: "https://anywhere.example.org" })
      const url = yield* baseUrl
      const response = yield* promise(() => fetch(`${url}/metrics`, { headers: { origin: "https://anywhere.example.org" } }))
      expect(response.headers.get("access-control-allow-origin")).toBe("*")
      expect(response.headers.get("access-control-allow-credentials")).toBeNull()
    }))
})

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

layer(
  hubLayer({ security: security({ maxConnections: 3, maxConnectionsPerIp: 2 }) }),
  { excludeTestServices: true }
)("connection limits", (it) => {
  it.effect("refuses connections over WS_MAX_CONNECTIONS_PER_IP and WS_MAX_CONNECTIONS with 503, frees slots on close", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const first = yield* connect()
      yield* connect()
      const perIp = yield* refused()
      expect(perIp.status).toBe(503)
      expect(perIp.body.error).toContain("from your address")
      expect(perIp.headers["retry-after"]).toBe("5")
      yield* connectWith({ localAddress: "127.0.0.2" })
      const total = yield* refused({ localAddress: "127.0.0.3" })
      expect(total.status).toBe(503)
      expect(total.body.error).toContain("too many connections to this hub")
      const counters = yield* securityCounters
      expect(counters.too_many_connections_per_ip).toBe(1)
      expect(counters.too_many_connections).toBe(1)
      // A slot is free again once a client has gone.
      first.close()
      yield* eventually(hub.clientCount, (n) => n === 2)
      yield* connect()
    }))
})

layer(
  hubLayer({ security: security({ maxConnectionsPerIp: 1, trustProxy: true }) }),
  { excludeTestServices: true }
)("connection limits behind a proxy", (it) => {
  it.effect("with TRUST_PROXY, counts connections per X-Forwarded-For address", () =>
    Effect.gen(function*() {
      yield* connectWith({ headers: { "x-forwarded-for": "203.0.113.1" } })
      yield* connectWith({ headers: { "x-forwarded-for": "203.0.113.2" } })
      // A client cannot escape by prepending addresses: the proxy's (last) entry counts.
      const refusal = yield* refused({ headers: { "x-forwarded-for": "198.51.100.9, 203.0.113.1" } })
      expect(refusal.status).toBe(503)
    }))
})

layer(
  hubLayer({ security: security({ maxPatternLength: 20, maxPatternWords: 4 }) }),
  { excludeTestServices: true }
)("pattern limits", (it) => {
  it.effect("refuses patterns that are too long, have too many words or a bad shape, and changes nothing", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      yield* promise(() => client.request({ action: "subscribe", event_types: ["backtest.*"] }, "hub.subscribed"))
      const cases = [
        ["x".repeat(21), "longer than 20"],
        ["a.b.c.d.e", "more than 4 words"],
        ["a..b", "empty word"],
        [".a", "empty word"],
        ["a b", "whitespace"],
        ["a.\u0001", "control"],
        ["back*.x", "whole words"]
      ] as const
      for (const [pattern, reason] of cases) {
        const reply = yield* promise(() => client.request({ action: "subscribe", event_types: ["ok", pattern] }, "hub.error"))
        expect(reply.data.code, pattern).toBe("invalid_pattern")
        expect(reply.data.message, pattern).toContain(reason)
      }
      const now = yield* promise(() => client.request({ action: "unsubscribe", event_types: [] }, "hub.unsubscribed"))
      expect(now.data.event_types).toEqual(["backtest.*"])
      expect((yield* securityCounters).invalid_pattern).toBe(cases.length)
    }))
})

layer(
  hubLayer({ maxSubscriptions: 2 }),
  { excludeTestServices: true }
)("subscription limit", (it) => {
  it.effect("counts refused subscriptions beyond WS_MAX_SUBSCRIPTIONS", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      const reply = yield* promise(() => client.request({ action: "subscribe", event_types: ["a", "b", "c"] }, "hub.error"))
      expect(reply.data.code).toBe("too_many_subscriptions")
      expect((yield* securityCounters).too_many_subscriptions).toBe(1)
    }))
})

layer(
  hubLayer({ security: security({ messageRate: 5, messageBurst: 10 }) }),
  { excludeTestServices: true }
)("message rate", (it) => {
  it.effect("answers the first message over the rate with rate_limited, then closes with 1008 if the flood goes on", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const before = yield* securityCounters
      const flooder = yield* connect()
      const bystander = yield* connect()
      for (let i = 0; i < 12; i++) flooder.ws.send("ping")
      const error = yield* promise(() => flooder.next("hub.error"))
      expect(error.data.code).toBe("rate_limited")
      expect(error.data.message).toContain("5 messages per second")
      expect(flooder.frames.filter((frame) => frame === "pong").length).toBeLessThanOrEqual(11)
      expect(flooder.isOpen).toBe(true)
      for (let i = 0; i < 30; i++) flooder.ws.send("ping")
      const closed = yield* promise(() => flooder.closed)
      expect(closed).toEqual({ code: 1008, reason: "rate limit exceeded" })
      // Only one rate_limited error was sent, however many messages were dropped.
      expect(flooder.messages.filter((message) => message.type === "hub.error")).toHaveLength(1)
      yield* hub.broadcast("backtest.completed", {})
      yield* promise(() => bystander.until(() => bystander.events.length === 1, "the event"))
      const counters = yield* securityCounters
      expect(counters.rate_limited! - before.rate_limited!).toBe(1)
      expect(counters.rate_limit_closed! - before.rate_limit_closed!).toBe(1)
    }))
})

layer(
  hubLayer({ security: security({ firstMessageTimeout: Option.some(Duration.millis(300)) }) }),
  { excludeTestServices: true }
)("first-message timeout", (it) => {
  it.effect("closes with 4004 a connection that sends nothing within WS_FIRST_MESSAGE_TIMEOUT", () =>
    Effect.gen(function*() {
      const active = yield* connect()
      active.ws.send("ping")
      yield* promise(() => active.until(() => active.frames.includes("pong"), "pong"))
      const silent = yield* connect()
      const closed = yield* promise(() => silent.closed)
      expect(closed).toEqual({ code: 4004, reason: "no message received" })
      expect(active.isOpen).toBe(true)
      expect((yield* securityCounters).first_message_timeout).toBe(1)
    }))
})

layer(
  hubLayer({
    publishToken: Option.some(Redacted.make("publish-token")),
    security: security({ publishRate: 1, publishBurst: 2 })
  }),
  { excludeTestServices: true }
)("publish endpoint limits", (it) => {
  it.effect("rate-limits POST /api/v1/events with 429 and counts its refusals", () =>
    Effect.gen(function*() {
      const auth = { authorization: "Bearer publish-token" }
      const wrong = yield* post("/api/v1/events", { type: "x", data: {} }, { authorization: "Bearer nope" })
      expect(wrong.status).toBe(401)
      // Requests without the right token do not spend the allowance (burst 2) of the real publishers.
      for (let i = 0; i < 2; i++) {
        const accepted = yield* post("/api/v1/events", { type: "x", data: {} }, auth)
        expect(accepted.status).toBe(202)
      }
      const limited = yield* post("/api/v1/events", { type: "x", data: {} }, auth)
      expect(limited.status).toBe(429)
      expect(limited.body.error).toContain("1 requests per second")
      const counters = yield* securityCounters
      expect(counters.publish_unauthorized).toBe(1)
      expect(counters.publish_rate_limited).toBe(1)
    }))
})

layer(hubLayer(), { excludeTestServices: true })("auth disabled", (it) => {
  it.effect("an auth request gets auth_disabled", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      const reply = yield* promise(() => client.request({ action: "auth", token: "x" }, "hub.error"))
      expect(reply.data.code).toBe("auth_disabled")
    }))
})

// ---------------------------------------------------------------------------
// The service as deployed: settings from the environment, tokens never logged
// ---------------------------------------------------------------------------

describe("node dist/main.js with authentication", () => {
  it("reads the security settings from the environment and never logs a token", async () => {
    const port = await freePort()
    const service = ServiceProcess.start({
      PORT: String(port),
      HOST: "127.0.0.1",
      RABBITMQ_URL: "",
      LOG_LEVEL: "debug",
      AUTH_JWT_SECRET: secret,
      AUTH_JWT_ISSUER: issuer,
      AUTH_JWT_AUDIENCE: audience,
      ALLOWED_ORIGINS: appOrigin,
      WS_MAX_MESSAGE_SIZE: "4096"
    })
    try {
      await service.waitForLog("listening")
      const url = `ws://127.0.0.1:${port}/api/v1/ws/events`
      const badToken = await hs256({}, 3600, new TextEncoder().encode("x".repeat(40)))
      const expired = await hs256({}, -60)
      const refusals = [
        await attempt(`${url}?token=${badToken}`),
        await attempt(url, bearer(expired)),
        await attempt(url, { protocols: ["bearer", badToken] }),
        await attempt(url, { ...bearer(await hs256()), origin: "https://evil.example.com" })
      ]
      expect(refusals.map((r) => r === "accepted" ? r : r.status)).toEqual([401, 401, 401, 403])
      const good = await hs256()
      const client = await TestClient.connect(url, { origin: appOrigin }, ["bearer", good])
      const reply = await client.request({ action: "auth", token: badToken }, "hub.error")
      expect(reply.data.code).toBe("invalid_token")
      await client.request({ action: "auth", token: await hs256({}, 7200) }, "hub.authenticated")
      client.close()
      await service.waitForLog("client disconnected")
      expect(service.output).toContain("\"reason\":\"unauthorized\"")
      for (const token of [badToken, expired, good]) {
        expect(service.output).not.toContain(token)
        expect(service.output).not.toContain(token.split(".")[2]!)
      }
      expect(service.output).not.toContain(secret)
    } finally {
      service.child.kill("SIGKILL")
    }
  })
})

describe("node dist/main.js under a flood", () => {
  // As a separate process: a flood then arrives in one read, as it does from a real client.
  it("a flood sent all at once: the burst is answered, then rate_limited, then the close (1008)", async () => {
    const port = await freePort()
    const service = ServiceProcess.start({
      PORT: String(port),
      HOST: "127.0.0.1",
      RABBITMQ_URL: "",
      WS_RATE_LIMIT: "10",
      WS_RATE_BURST: "50"
    })
    try {
      await service.waitForLog("listening")
      const flooder = await TestClient.connect(`ws://127.0.0.1:${port}/api/v1/ws/events`)
      for (let i = 0; i < 101; i++) flooder.ws.send("ping")
      expect(await flooder.closed).toEqual({ code: 1008, reason: "rate limit exceeded" })
      const pongs = flooder.frames.filter((frame) => frame === "pong").length
      expect(pongs).toBeGreaterThanOrEqual(50)
      expect(flooder.frames.slice(pongs).map((frame) => JSON.parse(frame).data.code)).toEqual(["rate_limited"])
    } finally {
      service.child.kill("SIGTERM")
      await service.exited
    }
  })
})
