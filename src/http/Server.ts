/**
 * The HTTP server: the WebSocket endpoint, `GET /health`, `GET /metrics` and
 * (when `PUBLISH_TOKEN` is set) `POST /api/v1/events`, which publishes to the
 * RabbitMQ exchange when a broker is configured (every instance then delivers
 * the events) and broadcasts to this instance's clients otherwise. CORS follows
 * `ALLOWED_ORIGINS` on every HTTP route.
 */
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Effect, Either, Layer, Option, Redacted, Schema } from "effect"
import { createHash, timingSafeEqual } from "node:crypto"
import { createServer } from "node:http"
import { HubConfig } from "../config/Config.js"
import { Auth } from "../security/Auth.js"
import { Health } from "../ops/Health.js"
import { Hub, HubClients } from "../hub/Hub.js"
import { isOriginAllowed, Limits } from "../security/Limits.js"
import { HubMetrics } from "../ops/Metrics.js"
import * as Dashboard from "../ops/Dashboard.js"
import * as Prometheus from "../ops/Prometheus.js"
import * as Tracing from "../ops/Tracing.js"
import { EventType, formatParseError } from "../protocol/Protocol.js"
import { Publisher } from "../rabbitmq/Publisher.js"
import * as HandshakeDeadline from "./HandshakeDeadline.js"
import { UpgradeRoutes } from "./UpgradeRoutes.js"
import * as SseServer from "./SseServer.js"
import * as WebSocketServer from "./WebSocketServer.js"

/** One event in the body of `POST /api/v1/events`. */
export const PublishedEvent = Schema.Struct({
  type: EventType,
  data: Schema.Record({ key: Schema.String, value: Schema.Unknown })
})

/** Most events in one `POST /api/v1/events`. */
export const maxEventsPerPublish = 1000

/** Body of `POST /api/v1/events`: one event, or an array of events broadcast in order. */
export const PublishRequest = Schema.Union(
  PublishedEvent,
  Schema.Array(PublishedEvent).pipe(Schema.minItems(1), Schema.maxItems(maxEventsPerPublish))
)

/** Decodes one event or an array of them; each shape is decoded on its own, so errors name the field at fault. */
const decodePublish = (json: unknown) =>
  Array.isArray(json)
    ? Schema.decodeUnknownEither(PublishRequest.members[1])(json)
    : Either.map(Schema.decodeUnknownEither(PublishedEvent)(json), (event) => [event])

const problem = (status: number, error: string, headers: Record<string, string> = {}) =>
  HttpServerResponse.unsafeJson({ error }, { status, headers })

/** Compares two secrets in constant time (hashing first, so lengths do not leak either). */
const sameSecret = (given: string, expected: string) =>
  timingSafeEqual(createHash("sha256").update(given).digest(), createHash("sha256").update(expected).digest())

/** The routes, built from the services they use. */
export const makeRouter = Effect.gen(function*() {
  const config = yield* HubConfig
  const hub = yield* Hub
  const metrics = yield* HubMetrics
  const health = yield* Health
  const limits = yield* Limits
  // With a broker (RABBITMQ_URL), published events go through the exchange so that every instance delivers them.
  const publisher = Option.filter(yield* Effect.serviceOption(Publisher), (publisher) => publisher.enabled)

  const healthRoute = Effect.map(health.report, (report) =>
    HttpServerResponse.unsafeJson(report, { status: report.status === "unavailable" ? 503 : 200 }))
  // Liveness: the process answers HTTP. Readiness: it accepts clients and consumes RabbitMQ where configured.
  const liveRoute = Effect.succeed(HttpServerResponse.unsafeJson({ status: "ok" }))
  const readyRoute = Effect.map(health.report, (report) => {
    const notReady = Object.entries(report.checks).filter(([, check]) =>
      check.status !== "up" && check.status !== "disabled"
    )
    return HttpServerResponse.unsafeJson(
      notReady.length === 0 ? { status: "ready" } : { status: "not_ready", checks: Object.fromEntries(notReady) },
      { status: notReady.length === 0 ? 200 : 503 }
    )
  })

  const prometheus = yield* Prometheus.make
  const prometheusRoute = Effect.map(prometheus.render, (text) =>
    HttpServerResponse.text(text, { contentType: prometheus.contentType }))

  const metricsRoute = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    if (Prometheus.wantsPrometheus(request.headers["accept"])) return yield* prometheusRoute
    const snapshot = yield* metrics.snapshot
    const { sources, ...websocketCounters } = snapshot
    const memory = process.memoryUsage()
    return HttpServerResponse.unsafeJson({
      websocket: {
        connected_clients: yield* hub.clientCount,
        connected_clients_by_transport: yield* hub.clientCountByTransport,
        ...websocketCounters
      },
      ...sources,
      process: { rss_bytes: memory.rss, heap_used_bytes: memory.heapUsed, uptime_seconds: process.uptime() }
    })
  })

  const publishRoute = (token: Redacted.Redacted) =>
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const authorization = request.headers["authorization"] ?? ""
      const bearer = /^Bearer (.+)$/i.exec(authorization)?.[1]
      if (bearer === undefined) {
        limits.refused("publish_unauthorized")
        return problem(401, "missing bearer token (Authorization: Bearer <PUBLISH_TOKEN>)", {
          "www-authenticate": "Bearer"
        })
      }
      if (!sameSecret(bearer, Redacted.value(token))) {
        limits.refused("publish_unauthorized")
        return problem(401, "invalid token", { "www-authenticate": "Bearer error=\"invalid_token\"" })
      }
      // After the token check (cheap, constant time): requests without the token cannot starve publishers.
      const allowed = limits.takePublish(Date.now())
      if (Either.isLeft(allowed)) {
        limits.refused("publish_rate_limited")
        return problem(429, `more than ${config.security.publishRate} requests per second; retry later`, {
          "retry-after": String(allowed.left)
        })
      }
      const tooLarge = problem(413, `body larger than ${config.publishMaxBody} bytes`)
      const declared = Number(request.headers["content-length"] ?? 0)
      if (declared > config.publishMaxBody) {
        limits.refused("publish_too_large")
        return tooLarge
      }
      const text = yield* request.text.pipe(
        HttpServerRequest.withMaxBodySize(Option.some(config.publishMaxBody)),
        Effect.option
      )
      if (Option.isNone(text)) {
        limits.refused("publish_too_large")
        return tooLarge
      }
      let json: unknown
      try {
        json = JSON.parse(text.value)
      } catch {
        return problem(400, "body is not valid JSON; expected {\"type\": \"...\", \"data\": {...}}")
      }
      const decoded = decodePublish(json)
      if (decoded._tag === "Left") {
        return problem(400, `invalid event: ${formatParseError(decoded.left)}`)
      }
      const events = decoded.right
      if (Option.isSome(publisher)) {
        return yield* publisher.value.publishAll(
          events.map((event) => ({ routingKey: event.type, body: Buffer.from(JSON.stringify(event.data)) }))
        ).pipe(
          Effect.as(HttpServerResponse.unsafeJson({ status: "accepted", events: events.length }, { status: 202 })),
          // Never a silent fallback to this instance's clients only: the publisher is told, and retries.
          Effect.catchAll((error) =>
            Effect.as(
              Effect.logWarning("POST /api/v1/events: not published").pipe(
                Effect.annotateLogs({ reason: error.message, events: events.length })
              ),
              problem(503, `not published: ${error.message}; retry later (an event with an event_id is never ` +
                "delivered twice)", { "retry-after": "5" })
            )
          )
        )
      }
      let recipients = 0
      // `broadcast` waits for the writes while the hub is behind: the burst is written as it goes.
      for (const event of events) {
        recipients += yield* hub.broadcast(event.type, event.data, "http").pipe(Tracing.eventSpan("http", event.type))
      }
      return HttpServerResponse.unsafeJson({ status: "accepted", events: events.length, recipients }, { status: 202 })
    })

  const notFound = Effect.map(
    HttpServerRequest.HttpServerRequest,
    (request) => problem(404, `no route for ${request.method} ${request.url}`)
  )

  const routes = HttpRouter.empty.pipe(
    // Handshakes never get here (see WebSocketServer.ts): only plain requests do.
    HttpRouter.get(
      config.wsPath,
      Effect.succeed(problem(426, "this endpoint only accepts WebSocket connections (Connection: Upgrade, Upgrade: websocket)", {
        upgrade: "websocket"
      }))
    ),
    HttpRouter.get("/health", healthRoute),
    HttpRouter.get("/health/live", liveRoute),
    HttpRouter.get("/health/ready", readyRoute),
    HttpRouter.get("/metrics", metricsRoute),
    HttpRouter.get("/metrics/prometheus", prometheusRoute)
  )
  const withDashboard = HttpRouter.concat(routes, yield* Dashboard.routes)
  const withPublish = Option.match(config.publishToken, {
    onNone: () =>
      HttpRouter.post(
        withDashboard,
        "/api/v1/events",
        Effect.succeed(problem(
          404,
          "publishing is disabled on this hub: set PUBLISH_TOKEN to enable POST /api/v1/events " +
            "(then send Authorization: Bearer <PUBLISH_TOKEN>)"
        ))
      ),
    onSome: (token) => HttpRouter.post(withDashboard, "/api/v1/events", publishRoute(token))
  })
  return Effect.catchTag(withPublish, "RouteNotFound", () => notFound)
})

/**
 * CORS from `ALLOWED_ORIGINS`: with `*`, `Access-Control-Allow-Origin: *`;
 * with a list, the request's origin echoed when it is listed (with
 * `Vary: Origin`), nothing otherwise. Never with credentials: the endpoints
 * take tokens in headers, not cookies. Preflight requests get 204.
 */
export const corsMiddleware = (config: HubConfig["Type"]) =>
  HttpMiddleware.cors({
    allowedOrigins: config.security.allowedOrigins[0] === "*"
      ? []
      // Called with `undefined` for requests without Origin, which get no CORS header.
      : (origin: string | undefined) => origin !== undefined && isOriginAllowed(config.security, origin),
    allowedMethods: ["GET", "POST", "OPTIONS"],
    allowedHeaders: ["authorization", "content-type", "last-event-id"],
    maxAge: 600,
    credentials: false
  })

/** Serves the routes on whatever `HttpServer` is provided. */
export const layerServe: Layer.Layer<
  never,
  never,
  HttpServer.HttpServer | HubConfig | Hub | HubClients | HubMetrics | Health | Limits
> = Layer.unwrapScoped(
  Effect.zipWith(makeRouter, HubConfig, (router, config) =>
    HttpServer.serve(router, corsMiddleware(config)).pipe(
      // The dashboard's address may hold its token (?token=): never recorded in a span.
      HttpMiddleware.withTracerDisabledWhen((request) => request.url.startsWith("/dashboard")),
      Layer.tap(() =>
        Effect.flatMap(HttpServer.HttpServer, (server) =>
          Effect.logInfo("listening").pipe(Effect.annotateLogs({
            address: HttpServer.formatAddress(server.address)
          })))
      )
    ))
)

/** Authentication and limits, shared by the WebSocket endpoint and the HTTP routes. */
export const layerSecurity = Layer.merge(Auth.layer, Limits.layer)

/** Connections the kernel queues before the hub accepts them. */
const listenBacklog = 4096

/**
 * A Node HTTP server listening on `HOST`:`PORT`, with its upgrade requests
 * routable (`UpgradeRoutes`), and what guards it (`Auth`, `Limits`).
 */
export const layerListen = Layer.unwrapEffect(
  Effect.map(HubConfig, (config) => {
    const server = createServer(HandshakeDeadline.serverOptions(config.security))
    return Layer.mergeAll(
      // Node's default backlog (511) overflows when thousands of clients reconnect at once (after a deploy, a network
      // cut): the kernel drops their SYNs and they wait 1, 3, 7 s for a retry. The kernel caps it at somaxconn.
      NodeHttpServer.layer(() => server, { host: config.host, port: config.port, backlog: listenBacklog }),
      Layer.succeed(UpgradeRoutes, UpgradeRoutes.install(server)),
      // Handshake timeouts are counted with the other refusals.
      Layer.effectDiscard(Effect.map(Limits, (limits) =>
        HandshakeDeadline.guard(server, config.security.handshakeTimeout, () => limits.refused("handshake_timeout"))
      )).pipe(Layer.provideMerge(layerSecurity))
    )
  })
)

/**
 * The whole HTTP side: the routes, the WebSocket endpoint and the SSE endpoint
 * on one listening socket. They are released before the socket closes, so
 * every WebSocket client is closed (1001) and every SSE stream ended before the
 * server waits for its connections. The platform's `HttpServer` stays
 * available (its address, with `PORT=0`).
 */
export const layer = Layer.mergeAll(layerServe, WebSocketServer.layer, SseServer.layer).pipe(
  Layer.provideMerge(layerListen)
)
