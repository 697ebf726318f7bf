/**
 * Where HTTP upgrade requests go. The Node server's `upgrade` events for a
 * registered path are handed to its handler instead of the platform's
 * request handling; other paths (and a path whose handler is gone, during
 * shutdown) go on as usual.
 *
 * Long-lived `GET` requests (Server-Sent Events) can be routed the same way
 * (`registerStream`): their handler owns the Node response for as long as the
 * stream lives, with no platform request fiber.
 */
import { Context, Effect, type Scope } from "effect"
import { type IncomingMessage, type Server, type ServerResponse, STATUS_CODES } from "node:http"
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

export class UpgradeRoutes extends Context.Tag("event-hub/UpgradeRoutes")<UpgradeRoutes, {
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
}>() {
  /**
   * Installs the routing on `server` (before anything listens to it) and
   * returns the service.
   */
  static install(server: Server): UpgradeRoutes["Type"] {
    const handlers = new Map<string, UpgradeHandler>()
    const streams = new Map<string, StreamHandler>()
    const emit = server.emit
    let closing = false
    // Requests being answered: once the server is closing, their connections must end with their answers.
    const answering = new Set<ServerResponse>()
    const endConnectionAfter = (response: ServerResponse) => {
      if (!response.headersSent) response.setHeader("connection", "close")
      // An answer already under way (a stream) keeps its connection alive: once it is done, the server, which closed
      // its idle connections when it began closing, closes this one too.
      response.once("finish", () => setImmediate(() => server.closeIdleConnections()))
    }
    server.emit = function(this: Server, event: string | symbol, ...args: Array<any>) {
      if (event === "request") {
        const [request, response] = args as [IncomingMessage, ServerResponse]
        if (closing) {
          response.setHeader("connection", "close")
        } else {
          answering.add(response)
          response.once("close", () => answering.delete(response))
        }
        const handler = request.method === "GET" && streams.size > 0 ? streams.get(pathOf(request.url)) : undefined
        if (handler !== undefined) {
          handler(request, response)
          return true
        }
        // Nothing would answer it (the platform's handler is gone, or not there yet): the client is told.
        if (server.listenerCount("request") === 0) {
          notServing(response, closing ? "the hub is shutting down" : "the hub is starting")
          return true
        }
      } else if (event === "upgrade") {
        const [request, socket, head] = args as [IncomingMessage, Duplex, Buffer]
        const handler = handlers.get(pathOf(request.url))
        if (handler !== undefined) {
          handler(request, socket, head)
          return true
        }
      }
      return (emit as (this: Server, event: string | symbol, ...args: Array<any>) => boolean).call(this, event, ...args)
    } as Server["emit"]
    // Node hands an upgrade to `request` handling when nothing listens to `upgrade`, as after the platform's own
    // listener is gone (shutdown), and nothing would answer it: this listener keeps upgrades upgrades, and answers
    // those nobody else takes.
    server.on("upgrade", (_request: IncomingMessage, socket: Duplex) => {
      if (server.listenerCount("upgrade") > 1) return
      socket.on("error", () => undefined)
      refuseHandshake(socket, 503, "the hub is shutting down")
    })
    return {
      register: (path, handler) =>
        Effect.acquireRelease(
          Effect.sync(() => handlers.set(path, handler)),
          () => Effect.sync(() => handlers.delete(path))
        ),
      registerStream: (path, handler) =>
        Effect.acquireRelease(
          Effect.sync(() => streams.set(path, handler)),
          () => Effect.sync(() => streams.set(path, dropStream))
        ),
      closing: Effect.sync(() => {
        if (closing) return
        closing = true
        for (const response of answering) endConnectionAfter(response)
        answering.clear()
      })
    }
  }
}

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
