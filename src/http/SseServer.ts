/**
 * The Server-Sent Events endpoint, `GET /api/v1/sse/events`: the same events
 * as the WebSocket endpoint, for networks and proxies where WebSockets fail
 * and for clients that only read. The HTTP server hands its `GET` requests to
 * this layer (see `UpgradeRoutes.registerStream`) before the platform's own
 * request handling; a stream (`SseConnection.serve`) has a fiber in this
 * layer's `FiberSet` only while it resumes and while it ends. Closing the layer
 * ends every stream's response: `EventSource` then reconnects (to another
 * instance).
 *
 * Before the stream opens, a request gets a plain HTTP answer with a JSON
 * reason, as a WebSocket handshake does (see Admission.ts): 403 foreign
 * origin, 503 over the connection limits, 401 missing or bad token, then 400
 * for a bad `types`, `rooms` or `since` (403 for types the token does not
 * allow). CORS headers follow `ALLOWED_ORIGINS`, refusals included.
 */
import { Cause, Duration, Effect, Result, FiberSet, Layer } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import { HubConfig, type HubSettings } from "../config/Config.js"
import * as Connection from "../connection/Connection.js"
import * as Sse from "../connection/SseConnection.js"
import type { HubClients } from "../hub/Hub.js"
import { isEventId } from "../hub/History.js"
import type { HubMetrics } from "../ops/Metrics.js"
import { SinceParameter } from "../protocol/Protocol.js"
import { Auth, type Principal } from "../security/Auth.js"
import { isOriginAllowed, Limits } from "../security/Limits.js"
import { checkPatterns, checkRooms } from "../security/Subscription.js"
import { Admission, queryOf, type Refused } from "./Admission.js"
import { boundedReason } from "./Problem.js"
import { UpgradeRoutes } from "./UpgradeRoutes.js"

/** CORS for a stream (no preflight: `EventSource` sends a simple `GET`): the allowed origin, and `Vary: Origin`. */
export const corsHeaders = (
  security: HubSettings["security"],
  origin: string | undefined
): Record<string, string> => {
  const wildcard = security.allowedOrigins[0] === "*"
  if (origin === undefined || !isOriginAllowed(security, origin)) return wildcard ? {} : { vary: "Origin" }
  return wildcard ? { "access-control-allow-origin": "*" } : { "access-control-allow-origin": origin, vary: "Origin" }
}

/** A comma-separated query parameter: its non-empty items, or `undefined` when absent or empty. */
const listOf = (query: URLSearchParams, name: string): ReadonlyArray<string> | undefined => {
  const items = (query.get(name) ?? "").split(",").map((item) => item.trim()).filter((item) => item !== "")
  return items.length === 0 ? undefined : items
}

/** The stream's subscription, rooms and resume point from its request, or the 400/403 answer. */
const handshakeOf = (
  config: HubSettings,
  limits: Limits["Service"],
  request: IncomingMessage,
  address: string,
  principal: Principal | undefined
): Result.Result<Sse.SseHandshake, Refused> => {
  const bad = (status: number, code: string, error: string): Result.Result<never, Refused> =>
    Result.fail({ address, refusal: undefined, status, error, code })
  const query = queryOf(request.url)
  const patterns = listOf(query, "types")
  if (patterns !== undefined && patterns.length > config.maxSubscriptions) {
    limits.refused("too_many_subscriptions")
    return bad(400, "too_many_subscriptions", `types: at most ${config.maxSubscriptions} patterns`)
  }
  const refused = patterns === undefined ? undefined : checkPatterns(limits, principal, patterns)
  if (refused !== undefined) {
    return bad(refused.code === "forbidden_event_types" ? 403 : 400, refused.code, `types: ${refused.message}`)
  }
  const rooms = listOf(query, "rooms")
  if (rooms !== undefined && rooms.length > config.maxSubscriptions) {
    return bad(400, "too_many_rooms", `rooms: at most ${config.maxSubscriptions} rooms`)
  }
  const badRoom = rooms === undefined ? undefined : checkRooms(config.roomKeys, rooms)
  if (badRoom !== undefined) return bad(400, badRoom.code, `rooms: ${badRoom.message}`)
  // EventSource sends the id of the last event it received on its own reconnects: it wins over the URL's `since`.
  const lastEventId = request.headers["last-event-id"]
  const since = (typeof lastEventId === "string" && lastEventId !== "" ? lastEventId : undefined) ??
    query.get(SinceParameter) ?? undefined
  if (since !== undefined && !isEventId(since)) {
    return bad(400, "invalid_request", "since (or Last-Event-ID): not the id of an event from this hub")
  }
  return Result.succeed({ remoteAddress: address, principal, since, patterns, rooms })
}

/** A plain HTTP answer with a JSON reason. */
const answer = (response: ServerResponse, refused: Refused, headers: Record<string, string>) => {
  if (response.headersSent || response.destroyed) return
  const error = boundedReason(refused.error)
  const body = JSON.stringify(refused.code === undefined ? { error } : { error, code: refused.code })
  response.writeHead(refused.status, {
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(body)),
    ...headers,
    ...refused.headers
  })
  response.end(body)
}

export const layer: Layer.Layer<never, never, HubConfig | HubClients | HubMetrics | UpgradeRoutes | Auth | Limits> = Layer
  .effectDiscard(
    Effect.gen(function*() {
      const config = yield* HubConfig
      const routes = yield* UpgradeRoutes
      const limits = yield* Limits
      const admission = new Admission(config, limits, yield* Auth)
      // The streams' fibers (a resume, an end); released (any left interrupted) after the shutdown below.
      const streams = yield* FiberSet.make()
      const run = yield* FiberSet.runtime(streams)<never>()
      const services: Sse.Services = { ...yield* Connection.services(Connection.runIn(run)), open: new Set() }
      const retry = `retry: ${Duration.toMillis(config.sseRetry)}\n\n`
      let closing = false
      // Released after the route: new requests are dropped (EventSource retries elsewhere), then every stream is
      // ended and its end awaited.
      yield* Effect.addFinalizer(() =>
        Effect.suspend(() => {
          closing = true
          for (const stream of services.open) stream.shutdown()
          return FiberSet.awaitEmpty(streams)
        })
      )

      const handle = (request: IncomingMessage, response: ServerResponse) => {
        response.on("error", () => undefined)
        const cors = corsHeaders(config.security, request.headers.origin)
        const refuse = (refused: Refused) => {
          answer(response, refused, cors)
          run(admission.refused(refused))
        }
        const admitted = admission.check(request)
        if (Result.isFailure(admitted)) return refuse(admitted.failure)
        const address = admitted.success.address
        // The slot is held for as long as the stream lives (not the connection: HTTP keeps it for the next request).
        response.once("close", admitted.success.release)
        const open = (principal: Principal | undefined) => {
          if (response.destroyed) return
          const handshake = handshakeOf(config, limits, request, address, principal)
          if (Result.isFailure(handshake)) return refuse(handshake.failure)
          response.writeHead(200, {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            ...cors
          })
          response.write(retry)
          try {
            const stream = Sse.serve(services, response, handshake.success)
            // Authenticated after the shutdown began: past the streams the shutdown ended.
            if (closing) stream.shutdown()
          } catch (error) {
            // A defect in a stream's setup (it runs in the request's callback, not in a fiber) ends only it.
            response.destroy()
            run(Effect.logError("an SSE stream's setup failed; its response is closed", Cause.die(error)))
          }
        }
        // Without authentication, no fiber before the stream.
        if (!admission.auth.enabled) return open(undefined)
        run(admission.authenticate(request, address).pipe(
          Effect.match({ onFailure: refuse, onSuccess: open }),
          // A defect after the token's check ends only this request.
          Effect.catchDefect((defect) =>
            Effect.andThen(
              Effect.sync(() => response.destroy()),
              Effect.logError("an SSE request failed; its response is closed", Cause.die(defect))
            )
          )
        ))
      }
      yield* routes.registerStream(config.ssePath, handle)
    })
  )
