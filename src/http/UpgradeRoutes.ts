/**
 * Where the Node server's requests go. Its `request` and `upgrade` events
 * have one listener each, this module's, added when the layer is built and
 * removed when it is released: an upgrade for a registered path goes to its
 * handler (the WebSocket endpoint), a `GET` for a registered stream path to
 * its handler (Server-Sent Events), which owns the Node response for as long
 * as the stream lives; neither costs a platform request fiber. Everything else
 * goes to the platform's handler (`HttpServer.serve`: the routes), or, once
 * that has stopped (shutdown), is answered 503.
 *
 * The same layer provides the platform's `HttpServer` on this server: it
 * listens, and its `serve` installs the platform's handler here rather than
 * as a listener of its own, which would see the requests the handlers above
 * take.
 */
import * as HttpServer from "@effect/platform/HttpServer"
import type { ServeError } from "@effect/platform/HttpServerError"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Cause, Context, Effect, Layer, Runtime, type Scope } from "effect"
import { type IncomingMessage, type Server, ServerResponse, STATUS_CODES } from "node:http"
import type { ListenOptions, Socket } from "node:net"
import type { Duplex } from "node:stream"

/**
 * Answers a handshake with an HTTP error and a JSON reason, then closes the
 * socket (as `ws` does for the handshakes it refuses itself).
 */
export const refuseHandshake = (socket: Duplex, status: number, error: string, headers: Readonly<Record<string, string>> = {}) => {
  if (socket.destroyed) return
  const body = JSON.stringify({ error })
  const head = {
    connection: "close",
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(body)),
    ...headers
  }
  socket.once("finish", () => socket.destroy())
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n` +
      Object.entries(head).map(([name, value]) => `${name}: ${value}`).join("\r\n") +
      `\r\n\r\n${body}`
  )
}

export type UpgradeHandler = (request: IncomingMessage, socket: Duplex, head: Buffer) => void
export type StreamHandler = (request: IncomingMessage, response: ServerResponse) => void

/**
 * A stream request that arrives once its handler is gone (the server is shutting down): its connection is dropped,
 * not answered, so that a client such as `EventSource` retries (another instance) instead of giving up on an HTTP
 * error.
 */
const dropStream: StreamHandler = (_request, response) => {
  response.socket?.destroy()
}

export class UpgradeRoutes extends Context.Tag("event-hub/UpgradeRoutes")<UpgradeRoutes, {
  /** Sends upgrade requests for `path` to `handler` for the lifetime of the scope. */
  readonly register: (path: string, handler: UpgradeHandler) => Effect.Effect<void, never, Scope.Scope>
  /**
   * Sends `GET` requests for `path` to `handler` for the lifetime of the scope; after it, they are dropped (other
   * methods, such as a CORS preflight, go on to the platform's routes).
   */
  readonly registerStream: (path: string, handler: StreamHandler) => Effect.Effect<void, never, Scope.Scope>
}>() {}

/** What answers a plain request: a stream's handler, the platform's. */
type RequestHandler = StreamHandler

/** A `request` that arrives once nothing serves it (the platform's routes are gone: shutdown). */
const unavailable: RequestHandler = (_request, response) => {
  const body = JSON.stringify({ error: "the hub is shutting down" })
  response.writeHead(503, { connection: "close", "content-type": "application/json" }).end(body)
}

/**
 * The routing of `server`'s requests (`UpgradeRoutes`), and the platform's `HttpServer` listening on it with
 * `options`; the listeners are removed, after the server has closed, when the layer is released.
 */
export const layer = (
  server: Server,
  options: ListenOptions
): Layer.Layer<UpgradeRoutes | HttpServer.HttpServer, ServeError> =>
  Layer.scopedContext(Effect.gen(function*() {
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const upgrades = new Map<string, UpgradeHandler>()
    const streams = new Map<string, StreamHandler>()
    /** The platform's handler (the routes), while it serves. */
    let platform: RequestHandler | undefined = undefined

    /** A handler threw in the server's callback, where it would end the process: logged, and only it is closed. */
    const failed = (what: string, error: unknown, close: () => void) => {
      close()
      runFork(Effect.logError(`${what} failed; its connection is closed`, Cause.die(error)))
    }
    const onRequest = (request: IncomingMessage, response: ServerResponse) => {
      try {
        const stream = streams.size > 0 && request.method === "GET" ? streams.get(pathOf(request.url)) : undefined
        ;(stream ?? platform ?? unavailable)(request, response)
      } catch (error) {
        failed(`the request ${request.method} ${pathOf(request.url)}`, error, () => response.destroy())
      }
    }
    const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      try {
        const handler = upgrades.get(pathOf(request.url))
        if (handler !== undefined) return handler(request, socket, head)
        // A socket error before the answer must not crash the process.
        socket.on("error", () => undefined)
        if (platform === undefined) return refuseHandshake(socket, 503, "the hub is shutting down")
        // Any other path gets the platform's answer (404, ...), written on the socket, which then closes.
        const response = new ServerResponse(request)
        response.assignSocket(socket as Socket)
        response.on("finish", () => socket.end())
        platform(request, response)
      } catch (error) {
        failed(`the upgrade ${pathOf(request.url)}`, error, () => socket.destroy())
      }
    }
    // Listening before the server does, and after it has closed.
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        server.on("request", onRequest)
        server.on("upgrade", onUpgrade)
      }),
      () =>
        Effect.sync(() => {
          server.off("request", onRequest)
          server.off("upgrade", onUpgrade)
        })
    )
    const listening = yield* NodeHttpServer.make(() => server, options)
    const httpServer = HttpServer.make({
      address: listening.address,
      serve: (app, middleware) =>
        Effect.acquireRelease(
          Effect.map(
            NodeHttpServer.makeHandler(app, middleware!) as Effect.Effect<RequestHandler>,
            (handler) => void (platform = handler)
          ),
          () => Effect.sync(() => void (platform = undefined))
        )
    })
    const routes = UpgradeRoutes.of({
      register: (path, handler) =>
        Effect.acquireRelease(
          Effect.sync(() => void upgrades.set(path, handler)),
          () => Effect.sync(() => void upgrades.delete(path))
        ),
      registerStream: (path, handler) =>
        Effect.acquireRelease(
          Effect.sync(() => void streams.set(path, handler)),
          () => Effect.sync(() => void streams.set(path, dropStream))
        )
    })
    return Context.make(UpgradeRoutes, routes).pipe(Context.add(HttpServer.HttpServer, httpServer))
  }))

const pathOf = (url: string | undefined) => {
  const query = (url ?? "/").indexOf("?")
  return query === -1 ? url ?? "/" : url!.slice(0, query)
}
