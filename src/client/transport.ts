/**
 * The two ways in: a WebSocket (send and receive) and Server-Sent Events (receive only; the subscription, rooms,
 * resume position and token travel in the URL). Both hand the client text messages; one parser serves both.
 */
import type { EventSourceConstructor, WebSocketConstructor } from "./types.js"

export interface TransportEvents {
  readonly open: () => void
  readonly message: (text: string) => void
  /** `opened`: whether the connection was ever open; `status`: the HTTP status of a refused handshake, when known. */
  readonly close: (code: number, reason: string, opened: boolean, status?: number) => void
}

export interface Transport {
  /** False for SSE: requests cannot be sent. */
  readonly duplex: boolean
  send(text: string): void
  close(): void
}

const query = (url: string, params: Record<string, string | undefined>): string => {
  const parts = Object.entries(params)
    .filter((entry): entry is [string, string] => entry[1] !== undefined)
    .map(([key, value]) => `${key}=${encodeURIComponent(value)}`)
  return parts.length === 0 ? url : `${url}${url.includes("?") ? "&" : "?"}${parts.join("&")}`
}

// `ws` reports a refused handshake as an error "Unexpected server response: 401"; browsers say nothing.
const statusOf = (event: unknown): number | undefined => {
  const match = /response: (\d{3})/.exec(String((event as { message?: unknown } | null)?.message ?? ""))
  return match ? Number(match[1]) : undefined
}

export const openWebSocket = (
  Ctor: WebSocketConstructor,
  url: string,
  token: string | undefined,
  on: TransportEvents
): Transport => {
  // The token travels as the subprotocol pair `bearer, <token>`: out of URLs and logs (the hub selects `bearer`).
  const socket = token === undefined ? new Ctor(url) : new Ctor(url, ["bearer", token])
  let opened = false
  let status: number | undefined
  let done = false
  const finish = (code: number, reason: string) => {
    if (done) return
    done = true
    socket.onopen = socket.onmessage = socket.onclose = null
    // Not null: `ws` emits "error" when a connecting socket is closed, and an EventEmitter without a listener throws.
    socket.onerror = () => undefined
    on.close(code, reason, opened, status)
  }
  socket.onopen = () => {
    opened = true
    on.open()
  }
  socket.onmessage = (event) => {
    if (typeof event.data === "string") on.message(event.data)
  }
  socket.onerror = (event) => {
    status ??= statusOf(event)
  }
  socket.onclose = (event) => finish(event.code, event.reason)
  return {
    duplex: true,
    send: (text) => {
      if (socket.readyState === 1) socket.send(text)
    },
    close: () => {
      try {
        socket.close(1000)
      } catch {
        // closing a socket that is still connecting throws in some implementations; it is gone either way
      }
      finish(1000, "closed by the client")
    }
  }
}

/** The SSE endpoint that goes with a WebSocket endpoint: `ws://h/api/v1/ws/events` → `http://h/api/v1/sse/events`. */
export const sseUrlOf = (wsUrl: string): string => wsUrl.replace(/^ws/, "http").replace("/ws/", "/sse/")

export const openEventSource = (
  Ctor: EventSourceConstructor,
  url: string,
  params: { types: ReadonlyArray<string>; rooms: ReadonlyArray<string>; since?: string; token?: string },
  on: TransportEvents
): Transport => {
  const source = new Ctor(query(url, {
    types: params.types.join(","),
    rooms: params.rooms.length > 0 ? params.rooms.join(",") : undefined,
    since: params.since,
    token: params.token
  }))
  let opened = false
  let done = false
  // EventSource would reconnect on its own with the id it saw last; the client reconnects itself instead, with its
  // own backoff, a fresh token and the id it delivered last.
  const finish = (code: number, reason: string) => {
    if (done) return
    done = true
    source.onopen = source.onmessage = source.onerror = null
    source.close()
    on.close(code, reason, opened)
  }
  source.onopen = () => {
    opened = true
    on.open()
  }
  source.onmessage = (event) => on.message(event.data)
  source.onerror = () => finish(1006, "event stream interrupted")
  return { duplex: false, send: () => undefined, close: () => finish(1000, "closed by the client") }
}
