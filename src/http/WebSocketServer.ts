/**
 * The `ws` server behind the WebSocket endpoint. It owns no port: the HTTP
 * router hands it upgrade requests, and each accepted connection is served by
 * `Client.serve` in the request's own fiber, which the HTTP server supervises
 * (closing the server interrupts every connection, which then closes with 1001).
 */
import type { HttpServerRequest } from "@effect/platform"
import { HttpServerResponse } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Context, Effect, Layer } from "effect"
import { type WebSocket, WebSocketServer as WsServer } from "ws"
import * as Client from "../Client.js"
import { HubConfig } from "../Config.js"
import type { Hub } from "../Hub.js"
import type { HubMetrics } from "../Metrics.js"

export class WebSocketServer extends Context.Tag("event-hub/WebSocketServer")<WebSocketServer, {
  /**
   * Completes the WebSocket handshake for `request` and serves the connection
   * until its socket has closed. Requests that are not upgrades get 426.
   */
  readonly upgrade: (request: HttpServerRequest.HttpServerRequest) => Effect.Effect<HttpServerResponse.HttpServerResponse>
}>() {
  static readonly layer: Layer.Layer<WebSocketServer, never, HubConfig | Hub | HubMetrics> = Layer.scoped(
    WebSocketServer,
    Effect.gen(function*() {
      const config = yield* HubConfig
      const context = yield* Effect.context<HubConfig | Hub | HubMetrics>()
      const wss = yield* Effect.acquireRelease(
        Effect.sync(() =>
          new WsServer({
            noServer: true,
            maxPayload: config.maxMessageSize,
            perMessageDeflate: false,
            clientTracking: true
          })
        ),
        (wss) =>
          Effect.async<void>((resume) => {
            // Connections still open here were not closed by their fibers in time.
            for (const ws of wss.clients) ws.terminate()
            wss.close(() => resume(Effect.void))
          })
      )

      const upgrade = (request: HttpServerRequest.HttpServerRequest) => {
        const incoming = NodeHttpServerRequest.toIncomingMessage(request)
        // Node hands a request to the upgrade path only with both headers; without them it is a plain request.
        const isUpgrade = incoming.headers.upgrade?.toLowerCase() === "websocket" &&
          (incoming.headers.connection ?? "").toLowerCase().split(",").some((token) => token.trim() === "upgrade")
        if (!isUpgrade) {
          return Effect.succeed(HttpServerResponse.unsafeJson(
            { error: "this endpoint only accepts WebSocket connections (Connection: Upgrade, Upgrade: websocket)" },
            { status: 426, headers: { upgrade: "websocket" } }
          ))
        }
        const socket = incoming.socket
        return Effect.async<WebSocket>((resume) => {
          // `ws` answers a bad handshake (400) itself and destroys the socket without calling back.
          const onClose = () => resume(Effect.interrupt)
          socket.once("close", onClose)
          wss.handleUpgrade(incoming, socket, Buffer.alloc(0), (ws) => {
            socket.off("close", onClose)
            resume(Effect.succeed(ws))
          })
        }).pipe(
          Effect.flatMap((ws) => Client.serve(ws, socket, { remoteAddress: socket.remoteAddress })),
          Effect.provide(context),
          // The socket is closed by now, so nothing of this response reaches the wire.
          Effect.as(HttpServerResponse.empty())
        )
      }

      return WebSocketServer.of({ upgrade })
    })
  )
}
