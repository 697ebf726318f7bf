/**
 * The HTTP server: the WebSocket and SSE endpoints on upgrade routes, and the
 * plain routes: health and metrics (StatusRoutes.ts), `POST /api/v1/events`
 * (PublishRoute.ts) and the dashboard. CORS follows `ALLOWED_ORIGINS` on every
 * HTTP route.
 */
import * as HttpMiddleware from "effect/http/HttpMiddleware"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServer from "effect/http/HttpServer"
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Effect, Layer, Option } from "effect"
import { createServer } from "node:http"
import { HubConfig } from "../config/Config.js"
import { Auth } from "../security/Auth.js"
import { Health } from "../ops/Health.js"
import { Hub, HubClients } from "../hub/Hub.js"
import { HubHistory } from "../hub/History.js"
import { isOriginAllowed, Limits } from "../security/Limits.js"
import { HubMetrics } from "../ops/Metrics.js"
import * as Dashboard from "./Dashboard.js"
import * as HandshakeDeadline from "./HandshakeDeadline.js"
import { problem } from "./Problem.js"
import * as PublishRoute from "./PublishRoute.js"
import * as StatusRoutes from "./StatusRoutes.js"
import * as UpgradeRoutes from "./UpgradeRoutes.js"
import * as SseServer from "./SseServer.js"
import * as WebSocketServer from "./WebSocketServer.js"

/** The routes, built from the services they use. */
export const makeRouter = Effect.gen(function*() {
  const config = yield* HubConfig
  const notFound = Effect.map(
    HttpServerRequest.HttpServerRequest,
    (request) => problem(404, `no route for ${request.method} ${request.url}`)
  )
  const app = yield* HttpRouter.toHttpEffect(HttpRouter.addAll([
    // Handshakes never get here (see WebSocketServer.ts): only plain requests do.
    HttpRouter.route(
      "GET",
      config.wsPath,
      Effect.succeed(problem(426, "this endpoint only accepts WebSocket connections (Connection: Upgrade, Upgrade: websocket)", {
        upgrade: "websocket"
      }))
    ),
    ...yield* StatusRoutes.healthRoutes,
    ...yield* StatusRoutes.metricsRoutes,
    ...yield* Dashboard.routes,
    HttpRouter.route(
      "POST",
      "/api/v1/events",
      Option.isSome(config.publishToken) ? yield* PublishRoute.make(config.publishToken.value) : PublishRoute.publishDisabled
    )
  ]))
  return Effect.catchTag(
    app,
    "HttpServerError",
    (error) => error.reason._tag === "RouteNotFound" ? notFound : Effect.fail(error)
  )
})

/**
 * CORS from `ALLOWED_ORIGINS`: with `*`, `Access-Control-Allow-Origin: *`;
 * with a list, the request's origin echoed when it is listed (with
 * `Vary: Origin`), nothing otherwise. Never with credentials: the endpoints
 * take tokens in headers, not cookies. Preflight requests get 204.
 */
export const corsMiddleware = (config: HubConfig["Service"]) =>
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

/**
 * Serves the routes on whatever `HttpServer` is provided. When they are released, the server is told it is closing
 * (`UpgradeRoutes.closing`): no connection is kept alive past its answer, and nothing is left unanswered.
 */
export const layerServe: Layer.Layer<
  never,
  never,
  HttpServer.HttpServer | HubConfig | Hub | HubClients | HubHistory | HubMetrics | Health | Limits | UpgradeRoutes.UpgradeRoutes
> = Layer.unwrap(
  Effect.gen(function*() {
    const router = yield* makeRouter
    const config = yield* HubConfig
    const upgrades = yield* UpgradeRoutes.UpgradeRoutes
    // Registered before the routes are served, so run once they are gone.
    yield* Effect.addFinalizer(() => upgrades.closing)
    return HttpServer.serve(router, corsMiddleware(config)).pipe(
      // The dashboard's address may hold its token (?token=): never recorded in a span.
      Layer.provide(Layer.succeed(HttpMiddleware.TracerDisabledWhen, (request) => request.url.startsWith("/dashboard"))),
      Layer.tap(() =>
        Effect.flatMap(HttpServer.HttpServer, (server) =>
          Effect.logInfo("listening").pipe(Effect.annotateLogs({
            address: HttpServer.formatAddress(server.address)
          })))
      )
    )
  })
)

/** Authentication and limits, shared by the WebSocket endpoint and the HTTP routes. */
export const layerSecurity = Layer.merge(Auth.layer, Limits.layer)

/** Connections the kernel queues before the hub accepts them. */
const listenBacklog = 4096

/**
 * A Node HTTP server listening on `HOST`:`PORT`, with its upgrade and stream
 * requests routable (`UpgradeRoutes`), and what guards it (`Auth`, `Limits`).
 */
export const layerListen = Layer.unwrap(
  Effect.map(HubConfig, (config) => {
    const server = createServer(HandshakeDeadline.serverOptions(config.security))
    return Layer.mergeAll(
      // Node's default backlog (511) overflows when thousands of clients reconnect at once (after a deploy, a network
      // cut): the kernel drops their SYNs and they wait 1, 3, 7 s for a retry. The kernel caps it at somaxconn.
      UpgradeRoutes.layer(server, {
        host: config.host,
        port: config.port,
        backlog: listenBacklog,
        // A worker of HUB_WORKERS binds a socket of its own on the shared port (not node:cluster's shared handle).
        ...(config.reusePort && { exclusive: true, reusePort: true })
      }),
      NodeHttpServer.layerHttpServices,
      // Handshake timeouts are counted with the other refusals.
      Layer.effectDiscard(Effect.flatMap(Limits, (limits) =>
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
