/**
 * The WebSocket endpoint: a `ws` server that owns no port. The HTTP server
 * hands it the upgrade requests for `wsPath` (see `UpgradeRoutes` in
 * Server.ts) before the platform's own request handling, so a connection
 * costs no HTTP request fiber: each one runs as its own fiber (`Client.serve`)
 * in this layer's `FiberSet`. Closing the layer interrupts every connection,
 * which then closes with 1001.
 */
import { Effect, FiberSet, Layer } from "effect"
import type { IncomingMessage } from "node:http"
import type { Duplex } from "node:stream"
import { WebSocketServer as WsServer } from "ws"
import * as Client from "../Client.js"
import { HubConfig } from "../Config.js"
import type { Hub } from "../Hub.js"
import type { HubMetrics } from "../Metrics.js"
import { UpgradeRoutes } from "./UpgradeRoutes.js"

const ignore = () => undefined

export const layer: Layer.Layer<never, never, HubConfig | Hub | HubMetrics | UpgradeRoutes> = Layer.scopedDiscard(
  Effect.gen(function*() {
    const config = yield* HubConfig
    const routes = yield* UpgradeRoutes
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
    // Released before the server above: every connection is interrupted (and closed with 1001) first.
    const connections = yield* FiberSet.make()
    const run = yield* FiberSet.runtime(connections)<HubConfig | Hub | HubMetrics>()

    const upgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      // A socket error before or during the handshake must not crash the process.
      socket.on("error", ignore)
      // No closure here may capture `request`: the connection would keep the whole request alive.
      const info: Client.ClientInfo = { remoteAddress: request.socket.remoteAddress }
      // `ws` answers a bad handshake (400) itself and destroys the socket.
      wss.handleUpgrade(request, socket, head, (ws) => {
        // A defect is logged by the connection itself (see Client.serve).
        run(Client.serve(ws, socket, info))
      })
    }
    yield* routes.register(config.wsPath, upgrade)
  })
)
