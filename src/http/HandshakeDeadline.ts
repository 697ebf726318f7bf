/**
 * The deadline of a request's headers (`WS_HANDSHAKE_TIMEOUT`): an upgrade
 * request (or any request) whose headers are not complete in time is answered
 * 408 and closed, whether it stalls or trickles them. Node's HTTP server does
 * the timing (`headersTimeout`, checked every `connectionsCheckingInterval`);
 * by default it allows 60 s and checks every 30 s, so a stalled handshake lived
 * up to 90 s. Upgraded sockets leave Node's list of checked connections, so the
 * check costs nothing per WebSocket client.
 */
import { Duration, Effect, type Scope } from "effect"
import type { Server, ServerOptions } from "node:http"
import type { Duplex } from "node:stream"
import type { SecuritySettings } from "../config/Config.js"

/** Node's own limit on a whole request (body included), kept unless the deadline is longer. */
const nodeRequestTimeout = 300_000

/** The HTTP server's options that enforce the deadline. */
export const serverOptions = (settings: Pick<SecuritySettings, "handshakeTimeout">): ServerOptions => {
  const deadline = Math.max(1, Math.round(Duration.toMillis(settings.handshakeTimeout)))
  return {
    headersTimeout: deadline,
    // Node refuses a headers timeout longer than the request timeout.
    requestTimeout: Math.max(nodeRequestTimeout, deadline),
    // The check's period bounds how late the cut comes: at most a fifth of the deadline late, at most 1 s.
    connectionsCheckingInterval: Math.min(1000, Math.max(50, Math.floor(deadline / 5)))
  }
}

const answer = (status: string, reason: string) => {
  const body = JSON.stringify({ error: reason })
  return `HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-type: application/json\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
}

/**
 * Answers what Node's HTTP parser refuses as Node would (408, 431, 400), with a
 * JSON reason, and reports the timeouts (`onTimeout`) for the metrics, for the
 * lifetime of the scope.
 */
export const guard = (
  server: Server,
  deadline: Duration.Duration,
  onTimeout: () => void
): Effect.Effect<void, never, Scope.Scope> => {
  const timeout = answer("408 Request Timeout", `request headers not complete within ${Duration.format(deadline)}`)
  const onClientError = (error: Error & { code?: string }, socket: Duplex) => {
    if (error.code === "ERR_HTTP_REQUEST_TIMEOUT") onTimeout()
    // An in-flight response has started writing: nothing more can be said on this socket.
    const inFlight = (socket as Duplex & { _httpMessage?: { _headerSent?: boolean } })._httpMessage
    if (socket.writable && inFlight?._headerSent !== true) {
      socket.write(
        error.code === "ERR_HTTP_REQUEST_TIMEOUT"
          ? timeout
          : error.code === "HPE_HEADER_OVERFLOW"
          ? answer("431 Request Header Fields Too Large", "request headers too large")
          : answer("400 Bad Request", "malformed HTTP request")
      )
    }
    socket.destroy()
  }
  return Effect.acquireRelease(
    Effect.sync(() => void server.on("clientError", onClientError)),
    () => Effect.sync(() => void server.off("clientError", onClientError))
  )
}
