/**
 * The client's public types. The wire messages are the hub's own Schema types (`import type`: erased from the
 * bundle, so the client carries no Effect code).
 */
import type { ErrorData, HistoryGapData, LiveData, ServerMessage } from "../protocol/Protocol.js"

export type { ErrorData, HistoryGapData, LiveData, ServerMessage }

/** `connecting` (first attempt), `connected`, `reconnecting` (after a loss), `disconnected` (closed or gave up). */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "disconnected"

/** The application's events: a map from event type to the type of its `data`. */
export type EventMap = { readonly [type: string]: unknown }

/** An event as handlers receive it: the wire message, with its `id` (events always carry one). */
export interface HubEvent<T extends string = string, D = unknown> {
  readonly type: T
  readonly data: D
  readonly timestamp: string
  readonly id: string
}

/** The event types of `M` that `P` matches, for the common pattern shapes (`#`, `a.#`, `a.*`, exact). */
export type Matching<M extends EventMap, P extends string> = string extends keyof M ? string
  : P extends "#" ? keyof M & string
  : P extends `${infer Prefix}.#` ? Extract<keyof M & string, Prefix | `${Prefix}.${string}`>
  : P extends `${infer Prefix}.*` ? Extract<keyof M & string, `${Prefix}.${string}`>
  : P extends keyof M & string ? P
  : keyof M & string

/** The event a handler of pattern `P` receives: a union of the matching types with their data. */
export type EventOf<M extends EventMap, P extends string> = {
  [K in Matching<M, P>]: HubEvent<K, M[K]>
}[Matching<M, P>]

/** What was missed, as the hub reported it (`hub.history_gap`): `missed` for certain, or `unknown`. */
export type Gap = HistoryGapData

/** Something the application should know: a refused connection, a closed one, a refused request, a throwing handler. */
export interface ClientError {
  /** `refused`: the hub refused the connection; `closed`: it closed it; `hub`: a `hub.error` reply; `token`: the token provider failed; `handler`: an event handler threw. */
  readonly kind: "refused" | "closed" | "hub" | "token" | "handler"
  /** The HTTP status (refused), close code (closed) or `hub.error` code. */
  readonly code?: number | string
  readonly message: string
  /** True when the client stopped reconnecting because of it (the state is then `disconnected`). */
  readonly fatal: boolean
  /** Milliseconds until the next attempt, when one is scheduled. */
  readonly retryIn?: number
}

/**
 * An event handler property the client sets. Typed as a method (compared both ways, not only contravariantly), so
 * that implementations whose handlers take richer events fit as they are: the DOM's `WebSocket`, and `ws`'s, whose
 * `onmessage` takes its own `MessageEvent` (a plain function type would make `connect(url, { WebSocket })` a type
 * error under `strict`).
 */
export type HandlerProperty<E> = { handle(event: E): void }["handle"] | null

/** The browser-compatible WebSocket the client uses (the global one, or `ws`'s in Node). */
export interface WebSocketLike {
  readonly readyState: number
  onopen: HandlerProperty<unknown>
  onmessage: HandlerProperty<{ data: unknown }>
  onclose: HandlerProperty<{ code: number; reason: string }>
  onerror: HandlerProperty<unknown>
  send(data: string): void
  close(code?: number, reason?: string): void
}
/** Its constructor: `globalThis.WebSocket` in browsers, `import WebSocket from "ws"` in Node, without a cast. */
export type WebSocketConstructor = new (url: string, protocols?: string | Array<string>) => WebSocketLike

export interface EventSourceLike {
  onopen: HandlerProperty<unknown>
  onmessage: HandlerProperty<{ data: string }>
  onerror: HandlerProperty<unknown>
  close(): void
}
export type EventSourceConstructor = new (url: string) => EventSourceLike

/** Timers, randomness and the `online`/`offline` source; replaced by tests. */
export interface Environment {
  readonly setTimeout: (callback: () => void, ms: number) => unknown
  readonly clearTimeout: (handle: unknown) => void
  readonly now: () => number
  readonly random: () => number
  /** Where `online` and `offline` are dispatched (the browser's `window`); none in Node. */
  readonly network?: {
    addEventListener(type: string, listener: () => void): void
    removeEventListener(type: string, listener: () => void): void
  }
}

export interface ClientOptions {
  /** Patterns to subscribe to (RabbitMQ topic rules); default `["#"]`, everything the token allows. */
  readonly eventTypes?: ReadonlyArray<string>
  /** Rooms to join (`run_id:789e0123`); default none (every room). */
  readonly rooms?: ReadonlyArray<string>
  /** A JWT, or a function returning one (called on every connect and before the token expires). */
  readonly token?: string | (() => string | Promise<string>)
  /** A WebSocket constructor where there is no global one (Node: `import WebSocket from "ws"`). */
  readonly WebSocket?: WebSocketConstructor
  /** An EventSource constructor where there is no global one (for `transport: "sse"`). */
  readonly EventSource?: EventSourceConstructor
  /** `websocket` (default), `sse` (Server-Sent Events, receive only), or `auto`: SSE when WebSockets keep failing. */
  readonly transport?: "websocket" | "sse" | "auto"
  /** The SSE endpoint; default: the WebSocket URL with `http(s)` and `/sse/` in place of `ws(s)` and `/ws/`. */
  readonly sseUrl?: string
  /** Resume from this id on the first connect (an id saved by a previous page, for example). */
  readonly since?: string
  /** First reconnect delay bound in ms (default 500); doubles per failed attempt up to `maxDelay`. */
  readonly minDelay?: number
  /** Largest reconnect delay in ms (default 20,000); also the wait after a refusal. */
  readonly maxDelay?: number
  /**
   * Replaces the backoff: the delay in ms before reconnect attempt `attempt` (0 after a connection that worked),
   * or `undefined` to give up. Refusals still wait `maxDelay`.
   */
  readonly retryDelay?: (attempt: number, error: ClientError) => number | undefined
  /** Interval of the text `ping` in ms (default 25,000); 0 turns it off. */
  readonly pingInterval?: number
  /** Connection considered lost when nothing arrives this long after a `ping`, in ms (default 10,000). */
  readonly pongTimeout?: number
  /** Refresh the token this many ms before it expires (default 30,000, at most half its lifetime). */
  readonly refreshMargin?: number
  /** Open the connection now (default) or on the first `open()`. */
  readonly lazy?: boolean
  /** Timers and randomness (tests). */
  readonly environment?: Environment
}
