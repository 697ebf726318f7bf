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
import * as HttpServer from "effect/http/HttpServer"
import type { ServeError } from "effect/http/HttpServerError"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Cause, Context, Effect, Layer, type Scope } from "effect"
import { type IncomingMessage, type Server, ServerResponse, STATUS_CODES } from "node:http"
import type { ListenOptions, Socket } from "node:net"
import type { Duplex } from "node:stream"
import { boundedReason } from "./Problem.js"

/**
 * Answers a handshake with an HTTP error and a JSON reason, then closes the
 * socket (as `ws` does for the handshakes it refuses itself).
 */
export const refuseHandshake = (socket: Duplex, status: number, error: string, headers: Readonly<Record<string, string>> = {}) => {
  if (socket.destroyed) return
  const body = JSON.stringify({ error: boundedReason(error) })
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

export class UpgradeRoutes extends Context.Service<UpgradeRoutes, {
  /** Sends upgrade requests for `path` to `handler` for the lifetime of the scope. */
  readonly register: (path: string, handler: UpgradeHandler) => Effect.Effect<void, never, Scope.Scope>
  /**
   * Sends `GET` requests for `path` to `handler` for the lifetime of the scope; after it, they are dropped (other
   * methods, such as a CORS preflight, go on to the platform's routes).
   */
  readonly registerStream: (path: string, handler: StreamHandler) => Effect.Effect<void, never, Scope.Scope>
  /**
   * The server is closing (its routes are gone): from now on every answer ends its connection, and a request that
   * comes on a kept-alive connection is answered 503 instead of being left without an answer, which kept the server
   * from closing (and the shutdown waiting) for as long as its client waited.
   */
  readonly closing: Effect.Effect<void>
}>()("event-hub/UpgradeRoutes") {}

/** What answers a plain request: a stream's handler, the platform's. */
type RequestHandler = StreamHandler

/**
 * The routing of `server`'s requests (`UpgradeRoutes`), and the platform's `HttpServer` listening on it with
 * `options`; the listeners are removed, after the server has closed, when the layer is released.
 */
export const layer = (
  server: Server,
  options: ListenOptions
): Layer.Layer<UpgradeRoutes | HttpServer.HttpServer, ServeError> =>
  Layer.effectContext(Effect.gen(function*() {
    const runFork = Effect.runForkWith(yield* Effect.context<never>())
    const upgrades = new Map<string, UpgradeHandler>()
    const streams = new Map<string, StreamHandler>()
    /** The platform's handler (the routes), while it serves. */
    let platform: RequestHandler | undefined = undefined
    let served = false
    let closing = false
    // Requests being answered: once the server is closing, their connections must end with their answers.
    const answering = new Set<ServerResponse>()
    const endConnectionAfter = (response: ServerResponse) => {
      if (!response.headersSent) response.setHeader("connection", "close")
      // An answer already under way (a stream) keeps its connection alive: once it is done, the server, which closed
      // its idle connections when it began closing, closes this one too.
      response.once("finish", () => setImmediate(() => server.closeIdleConnections()))
    }
    /** A request that arrives while nothing serves it (before the routes, or after them: shutdown). */
    const unavailable: RequestHandler = (_request, response) =>
      notServing(response, served ? "the hub is shutting down" : "the hub is starting")

    /** A handler threw in the server's callback, where it would end the process: logged, and only it is closed. */
    const failed = (what: string, error: unknown, close: () => void) => {
      close()
      runFork(Effect.logError(`${what} failed; its connection is closed`, Cause.die(error)))
    }
    const onRequest = (request: IncomingMessage, response: ServerResponse) => {
      try {
        if (closing) {
          response.setHeader("connection", "close")
        } else {
          answering.add(response)
          response.once("close", () => answering.delete(response))
        }
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
            Effect.flatMap(Effect.scope, (scope) =>
              NodeHttpServer.makeHandler(app, { scope, middleware }) as Effect.Effect<RequestHandler>),
            (handler) => {
              platform = handler
              served = true
            }
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
        ),
      closing: Effect.sync(() => {
        if (closing) return
        closing = true
        for (const response of answering) endConnectionAfter(response)
        answering.clear()
      })
    })
    return Context.make(UpgradeRoutes, routes).pipe(Context.add(HttpServer.HttpServer, httpServer))
  }))

/** 503 with a JSON reason, and the connection closed after it. */
const notServing = (response: ServerResponse, error: string) => {
  const body = JSON.stringify({ error })
  response.writeHead(503, {
    connection: "close",
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(body)),
    "retry-after": "1"
  })
  response.end(body)
}

const pathOf = (url: string | undefined) => {
  const query = (url ?? "/").indexOf("?")
  return query === -1 ? url ?? "/" : url!.slice(0, query)
}
