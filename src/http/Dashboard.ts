/**
 * The live dashboard: `GET /dashboard`, off unless `DASHBOARD_TOKEN` is set.
 *
 * A browser opens `/dashboard?token=<token>` (or enters the token in the
 * form): it is answered with a redirect to `/dashboard` that drops the token
 * from the address bar and sets an HttpOnly, SameSite=Strict cookie holding
 * an HMAC of the token (never the token itself). The page then reads one
 * server-sent-event stream, `/dashboard/stream`: a snapshot of the counters
 * every second and the tail of events. For the tail the stream is a client
 * of the hub (transport `dashboard`) subscribed to everything; when the
 * browser falls behind, tail events are dropped rather than the stream.
 * uPlot's files are served from node_modules.
 */
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import { Context, Deferred, Duration, Effect, Exit, Option, Queue, Redacted, Schema, Stream } from "effect"
import { createHash, createHmac, timingSafeEqual } from "node:crypto"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { HubConfig } from "../config/Config.js"
import * as Aggregate from "../host/Aggregate.js"
import { HostView } from "../host/HostView.js"
import { Hub, HubClients } from "../hub/Hub.js"
import { HubHistory } from "../hub/History.js"
import type { Connection } from "../hub/Member.js"
import { EventType, formatParseError } from "../protocol/Protocol.js"
import * as Body from "../http/Body.js"
import { problem } from "../http/Problem.js"
import { Publisher } from "../rabbitmq/Publisher.js"
import { dashboardPage, loginPage } from "./DashboardPage.js"
import { Health } from "../ops/Health.js"
import { HubMetrics } from "../ops/Metrics.js"

/** How often the dashboard's stream sends a snapshot of the counters (besides health changes, sent at once). */
export const StatsInterval = Context.Reference<Duration.Duration>("event-hub/DashboardStatsInterval", {
  defaultValue: () => Duration.seconds(1)
})

const cookieName = "hub_dashboard"
/** Tail events held for a browser that reads slowly; past it, tail events are dropped (never the stream). */
const tailBuffer = 1000
/** Largest sign-in form, in bytes (413 above): a token fits many times over. */
const loginMaxBody = 16 * 1024
/** A session lasts this long; then the token is asked again. */
const sessionSeconds = 12 * 60 * 60

const TestEvent = Schema.Struct({
  type: EventType,
  data: Schema.Record(Schema.String, Schema.Unknown)
})

const sameSecret = (given: string, expected: string) =>
  timingSafeEqual(createHash("sha256").update(given).digest(), createHash("sha256").update(expected).digest())

/** uPlot's browser build and stylesheet, read once. */
const assets = () => {
  const require = createRequire(import.meta.url)
  const read = (file: string) => readFileSync(require.resolve(`uplot/dist/${file}`), "utf8")
  return { script: read("uPlot.iife.min.js"), style: read("uPlot.min.css") }
}

const html = (body: string, status = 200, headers: Record<string, string> = {}) =>
  HttpServerResponse.text(body, {
    status,
    contentType: "text/html; charset=utf-8",
    // The page loads nothing from elsewhere; no framing (clickjacking), no referrer (the address had the token).
    headers: {
      "content-security-policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; " +
        "frame-ancestors 'none'",
      "referrer-policy": "no-referrer",
      "cache-control": "no-store",
      ...headers
    }
  })


/**
 * The dashboard's routes, added to the server's router (404 with a reason when DASHBOARD_TOKEN is unset).
 * Longer than our usual functions: one closure over the services and the session key its routes share, each
 * route a small named value inside.
 */
export const routes = Effect.gen(function*() {
  const config = yield* HubConfig
  if (Option.isNone(config.dashboardToken)) {
    const off = Effect.succeed(problem(404, "the dashboard is off: set DASHBOARD_TOKEN to enable GET /dashboard"))
    return [HttpRouter.route("GET", "/dashboard", off), HttpRouter.route("GET", "/dashboard/*", off)]
  }
  const token = Redacted.value(config.dashboardToken.value)
  // The cookie proves the token was given without holding it: an HMAC keyed by the token.
  const session = createHmac("sha256", token).update("event-hub dashboard session").digest("base64url")
  const setCookie = `${cookieName}=${session}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=${sessionSeconds}`
  const hub = yield* Hub
  const clients = yield* HubClients
  const metrics = yield* HubMetrics
  const health = yield* Health
  const history = yield* Effect.serviceOption(HubHistory)
  const publisher = Option.filter(yield* Effect.serviceOption(Publisher), (p) => p.enabled)
  const publishing = Option.isSome(config.publishToken)
  const { script, style } = assets()
  // Streams end when the server's routes are released: the HTTP server waits for open responses before it closes.
  const closing = yield* Deferred.make<void>()
  yield* Effect.addFinalizer(() => Deferred.succeed(closing, undefined))

  const signedIn = Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
    const cookie = request.cookies[cookieName]
    return cookie !== undefined && sameSecret(cookie, session)
  })
  const signIn = (given: string | undefined) =>
    given !== undefined && sameSecret(given, token)
      ? HttpServerResponse.empty({ status: 303, headers: { location: "/dashboard", "set-cookie": setCookie } })
      : html(loginPage(given === undefined ? undefined : "That token is not the dashboard's."), given === undefined ? 200 : 401)

  const page = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const query = new URL(request.url, "http://hub").searchParams.get("token")
    if (query !== null) return signIn(query)
    return (yield* signedIn) ? html(dashboardPage({ publishing })) : signIn(undefined)
  })

  const login = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const body = yield* Effect.result(Body.readText(request, loginMaxBody))
    if (body._tag === "Failure") {
      return body.failure === "too_large"
        ? problem(413, `the sign-in form is larger than ${loginMaxBody} bytes`, Body.closeAfter)
        : problem(400, "the body could not be read", Body.closeAfter)
    }
    return signIn(new URLSearchParams(body.success).get("token") ?? "")
  })

  const snapshot = Effect.gen(function*() {
    const report = yield* health.report
    const { counters } = metrics
    return {
      at: Date.now(),
      // The count of GET /metrics (`connected_clients`): every client, open dashboards (this one) included.
      clients: yield* hub.clientCount,
      clients_by_transport: yield* hub.clientCountByTransport,
      events_received: counters.received,
      // Fanned out to clients: neither a stream's refill nor a repeat dropped by its event_id.
      events_broadcast: counters.eventsBroadcast,
      events_by_type: Object.fromEntries(Array.from(counters.eventsByType, ([type, entry]) => [type, entry.broadcast])),
      deliveries: counters.messagesDelivered,
      disconnects: counters.disconnects,
      rabbitmq: { ...(report.checks.rabbitmq ?? { status: "disabled" }), ...(counters.sources.get("rabbitmq") ?? {}) },
      history: Option.match(history, { onNone: () => 0, onSome: (h) => h.size }),
      status: report.status,
      checks: report.checks
    }
  })

  // With HUB_WORKERS, the host: every worker's counters summed, each check at its worst.
  const host = Option.filter(yield* Effect.serviceOption(HostView), (host) => host.workers > 1)
  if (Option.isSome(host)) yield* host.value.answer("dashboard", snapshot)
  const hostSnapshot = Option.match(host, {
    onNone: () => snapshot,
    onSome: (host) =>
      Effect.map(host.gather("dashboard"), (reports) => {
        const each = reports.map(({ report }) => report as Effect.Success<typeof snapshot>)
        const { checks, status } = Aggregate.health(
          reports.map((worker, i) => ({ ...worker, report: { status: each[i]!.status, checks: each[i]!.checks } }))
        )
        const summed = Aggregate.sum(each) as Effect.Success<typeof snapshot>
        return {
          ...summed,
          at: Date.now(),
          rabbitmq: { ...summed.rabbitmq, ...(checks.rabbitmq ?? { status: "disabled" }) },
          // Every worker keeps the same history.
          history: Math.max(...each.map((one) => one.history)),
          status,
          checks,
          workers: reports.length
        }
      })
  })

  /**
   * The SSE stream: a snapshot every second and at once when the health changes (a shutdown's 503 shows without
   * waiting for the next second), every event as the hub fans it out, and a last `end` event saying why it ends.
   */
  const stream = Stream.unwrap(Effect.gen(function*() {
    const interval = yield* StatsInterval
    const tail = yield* Queue.dropping<string>(tailBuffer)
    const kicked = yield* Deferred.make<void>()
    const connection: Connection = {
      id: yield* clients.nextId,
      transport: "dashboard",
      offer: (message) => {
        Queue.offerUnsafe(tail, `event: event\ndata: ${message.payload.toString("utf8")}\n\n`)
        return true
      },
      kick: () => Deferred.doneUnsafe(kicked, Exit.void),
      keepAlive: () => undefined
    }
    yield* Effect.acquireRelease(clients.register(connection), () => clients.unregister(connection.id))
    // The first snapshot comes from `changes`, which starts with the health now.
    const stats = Stream.merge(health.changes, Stream.tick(interval).pipe(Stream.drop(1))).pipe(
      Stream.mapEffect(() => hostSnapshot),
      Stream.map((s) => `event: stats\ndata: ${JSON.stringify(s)}\n\n`)
    )
    let reason = "closed"
    const ended = Effect.race(
      Effect.as(Deferred.await(kicked), "too slow"),
      Effect.as(Deferred.await(closing), "the hub is shutting down")
    ).pipe(Effect.map((why) => void (reason = why)))
    return Stream.merge(stats, Stream.fromQueue(tail)).pipe(
      Stream.interruptWhen(ended),
      Stream.concat(Stream.suspend(() => Stream.make(`event: end\ndata: ${JSON.stringify({ reason })}\n\n`))),
      Stream.encodeText
    )
  }))
  const streamRoute = Effect.flatMap(signedIn, (ok) =>
    ok
      ? Effect.succeed(HttpServerResponse.stream(stream, {
        contentType: "text/event-stream",
        headers: { "cache-control": "no-store", "x-accel-buffering": "no" }
      }))
      : Effect.succeed(problem(401, "sign in at /dashboard first")))

  const publishRoute = Effect.gen(function*() {
    if (!(yield* signedIn)) return problem(401, "sign in at /dashboard first")
    const request = yield* HttpServerRequest.HttpServerRequest
    // JSON only: a cross-site form cannot send it without a preflight (besides the SameSite cookie).
    if (!(request.headers["content-type"] ?? "").startsWith("application/json")) {
      return problem(415, "send the test event as application/json")
    }
    const text = yield* Effect.result(Body.readText(request, config.publishMaxBody))
    if (text._tag === "Failure") {
      return text.failure === "too_large"
        ? problem(413, `body larger than ${config.publishMaxBody} bytes`, Body.closeAfter)
        : problem(400, "the body could not be read", Body.closeAfter)
    }
    let json: unknown
    try {
      json = JSON.parse(text.success)
    } catch {
      return problem(400, "body is not valid JSON")
    }
    const event = Schema.decodeUnknownResult(TestEvent)(json)
    if (event._tag === "Failure") return problem(400, `invalid event: ${formatParseError(event.failure)}`)
    const { data, type } = event.success
    if (Option.isSome(publisher)) {
      return yield* publisher.value.publishEvent(type, data).pipe(
        Effect.as(HttpServerResponse.jsonUnsafe({ status: "published" }, { status: 202 })),
        Effect.catch((error) => Effect.succeed(problem(503, `not published: ${error.message}`)))
      )
    }
    const recipients = yield* hub.broadcast(type, data, "http")
    return HttpServerResponse.jsonUnsafe({ status: "broadcast", recipients }, { status: 202 })
  })

  const asset = (body: string, contentType: string) =>
    Effect.succeed(HttpServerResponse.text(body, { contentType, headers: { "cache-control": "public, max-age=3600" } }))

  return [
    HttpRouter.route("GET", "/dashboard", page),
    HttpRouter.route("POST", "/dashboard/login", login),
    HttpRouter.route("GET", "/dashboard/stream", streamRoute),
    HttpRouter.route("GET", "/dashboard/assets/uPlot.iife.min.js", asset(script, "text/javascript; charset=utf-8")),
    HttpRouter.route("GET", "/dashboard/assets/uPlot.min.css", asset(style, "text/css; charset=utf-8")),
    HttpRouter.route("POST", "/dashboard/publish", publishing ? publishRoute : Effect.succeed(problem(404, "publishing is disabled on this hub")))
  ]
})
