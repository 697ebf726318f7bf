/**
 * The WebSocket endpoint: a `ws` server that owns no port. The HTTP server
 * hands it the upgrade requests for `wsPath` (see UpgradeRoutes.ts) before the
 * platform's own request handling, so a connection costs no HTTP request
 * fiber: a connection's fibers (`WebSocketConnection.serve`, one while it has
 * work) run in this layer's `FiberSet`. Closing the layer closes every
 * connection with 1001 and waits for them, then refuses new ones (503).
 *
 * Before the handshake, `upgrade` refuses a foreign origin (403), an address
 * opening connections too fast (429), a client over the connection limits
 * (503) and a missing or bad token (401), each
 * with a JSON reason, then closes the socket.
 */
import { Cause, Effect, Result, FiberSet, Layer, Option } from "effect"
import type { IncomingMessage } from "node:http"
import type { Duplex } from "node:stream"
import { WebSocketServer as WsServer } from "ws"
import { Auth, BearerProtocol, type Principal } from "../security/Auth.js"
import * as Connection from "../connection/Connection.js"
import * as WebSocketConnection from "../connection/WebSocketConnection.js"
import { HubConfig } from "../config/Config.js"
import type { HubClients } from "../hub/Hub.js"
import { Limits } from "../security/Limits.js"
import type { HubMetrics } from "../ops/Metrics.js"
import type { Publisher } from "../rabbitmq/Publisher.js"
import { Admission, type Refused, sinceOf } from "./Admission.js"
import { refuseHandshake, UpgradeRoutes } from "./UpgradeRoutes.js"

const ignore = () => undefined

export const layer: Layer.Layer<
  never,
  never,
  HubConfig | HubClients | HubMetrics | UpgradeRoutes | Auth | Limits | Publisher
> = Layer.effectDiscard(
  Effect.gen(function*() {
    const config = yield* HubConfig
    const routes = yield* UpgradeRoutes
    const wss = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new WsServer({
          noServer: true,
          maxPayload: config.maxMessageSize,
          // Off unless WS_COMPRESSION_THRESHOLD is set: compressing costs CPU per client and per message.
          perMessageDeflate: Option.match(config.compressionThreshold, {
            onNone: () => false,
            onSome: (threshold) => ({
              threshold,
              // Each message compressed on its own: no window kept per connection (memory), and only
              // messages above the threshold pay for it.
              serverNoContextTakeover: true,
              clientNoContextTakeover: true,
              zlibDeflateOptions: { level: 1 }
            })
          }),
          clientTracking: true,
          // `Sec-WebSocket-Protocol: bearer, <token>` carries a token: the server selects `bearer`.
          handleProtocols: (protocols) =>
            protocols.has(BearerProtocol) ? BearerProtocol : protocols.values().next().value ?? false
        })
      ),
      (wss) =>
        Effect.callback<void>((resume) => {
          // Connections still open here were not closed by their fibers in time.
          for (const ws of wss.clients) ws.terminate()
          wss.close(() => resume(Effect.void))
        })
    )
    // The connections' fibers; released (any left interrupted) after the shutdown below, before the server above.
    const fibers = yield* FiberSet.make()
    const run = yield* FiberSet.runtime(fibers)<never>()
    const services = yield* WebSocketConnection.services(Connection.runIn(run))
    let closing = false

    const admission = new Admission(config, yield* Limits, yield* Auth)

    /** Refuses the handshake, counts and logs the refusal. */
    const refuse = (socket: Duplex, refused: Refused) => {
      refuseHandshake(socket, refused.status, refused.error, refused.headers)
      run(admission.refused(refused))
    }

    const upgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      // A socket error before or during the handshake must not crash the process.
      socket.on("error", ignore)
      const admitted = admission.check(request)
      if (Result.isFailure(admitted)) return refuse(socket, admitted.failure)
      const address = admitted.success.address
      // The slot is held for as long as the socket lives, whatever ends it.
      socket.once("close", admitted.success.release)
      const accept = (principal: Principal | undefined) => {
        if (socket.destroyed) return
        // After the shutdown began (authenticated or not): past the connections the shutdown closes.
        if (closing) return refuseHandshake(socket, 503, "the hub is shutting down")
        // No closure below may capture `request`: the connection would keep the whole request alive.
        const info: WebSocketConnection.Handshake = { remoteAddress: address, principal, since: sinceOf(request.url) }
        // `ws` answers a bad handshake (400) itself and destroys the socket.
        wss.handleUpgrade(request, socket, head, (ws) => {
          try {
            WebSocketConnection.serve(services, ws, socket, info)
          } catch (error) {
            // A defect in a connection's setup (it runs in the socket's callback, not in a fiber) ends only it.
            ws.terminate()
            run(Effect.logError("a client connection's setup failed; its socket is closed", Cause.die(error)))
          }
        })
      }
      // Without authentication, no fiber before the handshake.
      if (!admission.auth.enabled) return accept(undefined)
      run(admission.authenticate(request, address).pipe(
        Effect.match({ onFailure: (refused) => refuse(socket, refused), onSuccess: accept }),
        // A defect after the token's check (in the handshake) ends only this connection.
        Effect.catchDefect((defect) =>
          Effect.andThen(
            Effect.sync(() => socket.destroy()),
            Effect.logError("a WebSocket handshake failed; its socket is closed", Cause.die(defect))
          )
        )
      ))
    }
    yield* routes.register(config.wsPath, upgrade)
    // Released first, while the route still answers (503): an idle connection has no fiber to interrupt, so each one
    // is told, then their closes are awaited.
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        closing = true
        for (const ws of wss.clients) WebSocketConnection.connectionOf(ws)?.shutdown()
        return FiberSet.awaitEmpty(fibers)
      })
    )
  })
)
