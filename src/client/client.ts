/**
 * The hub's client: reconnects with backoff and full jitter, keeps the connection alive with the text `ping`,
 * resumes from the last event id it delivered (the hub's resume rule, docs/protocol.md#resume), drops duplicates at
 * the seam, reports `hub.history_gap`, and refreshes its token. No runtime dependency, no Effect: it runs in
 * browsers as it is and in Node with `ws`.
 */
import { openEventSource, openWebSocket, sseUrlOf, type Transport } from "./transport.js"
import type {
  ClientError,
  ClientOptions,
  ConnectionState,
  Environment,
  EventMap,
  EventOf,
  EventSourceConstructor,
  Gap,
  HubEvent,
  LiveData,
  ServerMessage,
  WebSocketConstructor
} from "./types.js"

export type * from "./types.js"

/** Does a RabbitMQ topic pattern match an event type? (`*` one word, `#` zero or more.) */
export const matches = (pattern: string, type: string): boolean =>
  pattern === "#" || pattern === type || words(pattern.split("."), 0, type.split("."), 0)

const words = (p: Array<string>, i: number, t: Array<string>, j: number): boolean => {
  if (i === p.length) return j === t.length
  if (p[i] === "#") return words(p, i + 1, t, j) || (j < t.length && words(p, i, t, j + 1))
  return j < t.length && (p[i] === "*" || p[i] === t[j]) && words(p, i + 1, t, j + 1)
}

/** Close codes after which reconnecting at once is pointless: wait `maxDelay` and report. */
const refusedCodes: Record<number, string> = {
  1002: "protocol error",
  1007: "invalid payload",
  1008: "rate limit exceeded",
  1009: "message too big"
}
/** HTTP refusals of the handshake (known only where the WebSocket implementation reports them, such as `ws`). */
const fatalStatus = new Set([401, 403])
const tokenExpired = 4003
/** Ids remembered to drop a duplicate at a seam: far more than a replay can repeat. */
const seamWindow = 1024

const defaultEnvironment = (): Environment => {
  const scope = globalThis as unknown as { addEventListener?: unknown; window?: Environment["network"] }
  return {
    setTimeout: (callback, ms) => setTimeout(callback, ms),
    clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
    now: () => Date.now(),
    random: Math.random,
    network: typeof scope.window === "object" && scope.window !== null ? scope.window : undefined
  }
}

/** Seconds since the epoch at which a JWT expires, if it says. */
const expiryOf = (token: string): number | undefined => {
  try {
    const payload = token.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/")
    const exp = (JSON.parse(atob(payload)) as { exp?: unknown }).exp
    return typeof exp === "number" ? exp : undefined
  } catch {
    return undefined
  }
}

type Listener<A> = (value: A) => void

class Listeners<A> {
  private readonly set = new Set<Listener<A>>()
  add(listener: Listener<A>): () => void {
    this.set.add(listener)
    return () => void this.set.delete(listener)
  }
  emit(value: A): void {
    for (const listener of [...this.set]) listener(value)
  }
}

interface Pending {
  readonly action: string
  readonly resolve?: () => void
  readonly reject?: (error: Error) => void
}

/** A connection to the hub that survives losses. Create it with `connect`. */
export class HubClient<M extends EventMap = EventMap> {
  #state: ConnectionState = "disconnected"
  #lastId: string | undefined
  #transport: Transport | undefined
  #attempt = 0
  /** When the connection was last lost (undefined while connected): the backoff never waits longer than the outage. */
  #lostAt: number | undefined
  #failures = 0
  #useSse: boolean
  #closed = true
  #generation = 0
  #resuming = false
  #pending: Array<Pending> = []
  #seen = new Set<string>()
  #retryTimer: unknown
  #pingTimer: unknown
  #pongTimer: unknown
  #refreshTimer: unknown
  readonly #handlers = new Map<string, Listeners<HubEvent>>()
  readonly #states = new Listeners<ConnectionState>()
  readonly #gaps = new Listeners<Gap>()
  readonly #lives = new Listeners<LiveData>()
  readonly #errors = new Listeners<ClientError>()
  readonly #env: Environment
  readonly #types: ReadonlyArray<string>
  readonly #rooms: ReadonlyArray<string>
  readonly #min: number
  readonly #max: number
  readonly #ping: number
  readonly #pong: number
  readonly #margin: number

  constructor(readonly url: string, readonly options: ClientOptions = {}) {
    this.#env = options.environment ?? defaultEnvironment()
    this.#types = options.eventTypes && options.eventTypes.length > 0 ? [...options.eventTypes] : ["#"]
    this.#rooms = [...(options.rooms ?? [])]
    this.#lastId = options.since
    this.#min = options.minDelay ?? 500
    this.#max = options.maxDelay ?? 20_000
    this.#ping = options.pingInterval ?? 25_000
    this.#pong = options.pongTimeout ?? 10_000
    this.#margin = options.refreshMargin ?? 30_000
    this.#useSse = options.transport === "sse"
    if (!options.lazy) this.open()
  }

  /** The connection state now. */
  get state(): ConnectionState {
    return this.#state
  }

  /** The id of the last event delivered: where the next connection resumes. */
  get lastId(): string | undefined {
    return this.#lastId
  }

  /** The transport in use (`auto` switches to `sse` after WebSockets failed to open three times in a row). */
  get transport(): "websocket" | "sse" {
    return this.#useSse ? "sse" : "websocket"
  }

  /** Calls `handler` with every event whose type `pattern` matches; returns the function that removes it. */
  on<P extends string>(pattern: P, handler: (event: EventOf<M, P>) => void): () => void {
    let listeners = this.#handlers.get(pattern)
    if (!listeners) this.#handlers.set(pattern, listeners = new Listeners())
    return listeners.add(handler as unknown as Listener<HubEvent>)
  }

  /** Calls `listener` with every `hub.history_gap`: events that were missed (`missed`) or may have been (`unknown`). */
  onGap(listener: (gap: Gap) => void): () => void {
    return this.#gaps.add(listener)
  }

  /** Calls `listener` with every state change. */
  onState(listener: (state: ConnectionState) => void): () => void {
    return this.#states.add(listener)
  }

  /** Calls `listener` when a resume has caught up (`hub.live`): from then on, events are live. */
  onLive(listener: (live: LiveData) => void): () => void {
    return this.#lives.add(listener)
  }

  /** Calls `listener` with refusals, closes, `hub.error` replies and handler failures. */
  onError(listener: (error: ClientError) => void): () => void {
    return this.#errors.add(listener)
  }

  /** Publishes a command through the hub (types allowed by `WS_PUBLISH_TYPES`); resolves once the broker confirmed. */
  publish(type: string, data: Record<string, unknown>): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#state !== "connected" || !this.#transport?.duplex) {
        return reject(new Error(`cannot publish while ${this.#state}${this.#useSse ? " (SSE is receive-only)" : ""}`))
      }
      this.#request({ action: "publish", type, data }, { action: "publish", resolve, reject })
    })
  }

  /** Opens the connection (again, after `close`). */
  open(): void {
    if (!this.#closed) return
    this.#closed = false
    this.#attempt = 0
    this.#env.network?.addEventListener("online", this.#online)
    this.#env.network?.addEventListener("offline", this.#offline)
    void this.#connect()
  }

  /** Closes the connection for good (until `open`); the state becomes `disconnected`. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#generation++
    this.#env.network?.removeEventListener("online", this.#online)
    this.#env.network?.removeEventListener("offline", this.#offline)
    this.#env.clearTimeout(this.#retryTimer)
    this.#drop()
    this.#setState("disconnected")
  }

  /** Drops the connection and reconnects now (for example when the application knows the network changed). */
  reconnect(): void {
    if (this.#closed) return
    this.#drop()
    this.#env.clearTimeout(this.#retryTimer)
    this.#attempt = 0
    this.#setState("reconnecting")
    void this.#connect()
  }

  #setState(state: ConnectionState): void {
    if (state === this.#state) return
    this.#state = state
    this.#states.emit(state)
  }

  async #connect(): Promise<void> {
    const generation = ++this.#generation
    if (this.#state === "disconnected") this.#setState("connecting")
    let token: string | undefined
    try {
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token
    } catch (error) {
      if (generation !== this.#generation) return
      return this.#retry({ kind: "token", message: `token provider failed: ${String(error)}`, fatal: false })
    }
    if (generation !== this.#generation) return
    const on = {
      open: () => this.#opened(token),
      message: (text: string) => this.#receive(text),
      close: (code: number, reason: string, opened: boolean, status?: number) => {
        if (generation === this.#generation) this.#lost(code, reason, opened, status)
      }
    }
    try {
      this.#transport = this.#useSse
        ? openEventSource(this.#ctor("EventSource") as EventSourceConstructor, this.options.sseUrl ?? sseUrlOf(this.url),
          { types: this.#types, rooms: this.#rooms, since: this.#lastId, token }, on)
        : openWebSocket(this.#ctor("WebSocket") as WebSocketConstructor, this.url, token, on)
    } catch (error) {
      this.#closed = true
      this.#report({ kind: "refused", message: String(error), fatal: true })
      this.#setState("disconnected")
    }
  }

  #ctor(name: "WebSocket" | "EventSource"): unknown {
    const ctor = this.options[name] ?? (globalThis as Record<string, unknown>)[name]
    if (typeof ctor !== "function") {
      throw new Error(`no ${name} here: pass one in the options (in Node: the "ws" package's WebSocket)`)
    }
    return ctor
  }

  /** Open: join the rooms, then subscribe with `since` and handle nothing until the reply (the resume rule). */
  #opened(token: string | undefined): void {
    this.#failures = 0
    this.#scheduleRefresh(token)
    this.#schedulePing()
    if (!this.#transport?.duplex) return this.#live()
    this.#pending = []
    this.#resuming = true
    if (this.#rooms.length > 0) this.#request({ action: "join", rooms: this.#rooms }, { action: "join" })
    const since = this.#lastId === undefined ? {} : { since: this.#lastId }
    this.#request({ action: "subscribe", event_types: this.#types, ...since }, { action: "subscribe" })
  }

  #live(): void {
    this.#resuming = false
    this.#attempt = 0
    this.#lostAt = undefined
    this.#setState("connected")
  }

  #request(request: object, pending: Pending): void {
    this.#pending.push(pending)
    this.#transport?.send(JSON.stringify(request))
  }

  #receive(text: string): void {
    this.#env.clearTimeout(this.#pongTimer)
    if (text === "pong") return
    let message: ServerMessage
    try {
      message = JSON.parse(text) as ServerMessage
    } catch {
      return
    }
    if (typeof message?.type !== "string") return
    if (message.type.startsWith("hub.")) return this.#hubMessage(message)
    if (this.#resuming || message.id === undefined) return
    if (this.#seen.has(message.id)) return
    this.#remember(message.id)
    this.#lastId = message.id
    this.#deliver(message as HubEvent)
  }

  #remember(id: string): void {
    this.#seen.add(id)
    if (this.#seen.size > seamWindow) this.#seen.delete(this.#seen.values().next().value!)
  }

  #deliver(event: HubEvent): void {
    for (const [pattern, listeners] of this.#handlers) {
      if (!matches(pattern, event.type)) continue
      try {
        listeners.emit(event)
      } catch (error) {
        this.#report({ kind: "handler", code: event.type, message: String(error), fatal: false })
      }
    }
  }

  #hubMessage(message: ServerMessage): void {
    switch (message.type) {
      case "hub.history_gap":
        return this.#gaps.emit(message.data as Gap)
      case "hub.live":
        return this.#lives.emit(message.data as LiveData)
      case "hub.subscribed":
      case "hub.unsubscribed":
      case "hub.rooms":
      case "hub.authenticated":
      case "hub.published":
      case "hub.error":
        return this.#reply(message)
    }
  }

  #reply(message: ServerMessage): void {
    const pending = this.#pending.shift()
    if (message.type !== "hub.error") {
      if (pending?.action === "subscribe") this.#live()
      return pending?.resolve?.()
    }
    const error = message.data as { code: string; message: string }
    pending?.reject?.(new Error(`${error.code}: ${error.message}`))
    if (pending?.action === "subscribe" && this.#lastId !== undefined && error.code === "invalid_request") {
      // A `since` this hub refuses: resume is impossible, say so and subscribe afresh.
      this.#gaps.emit({ since: this.#lastId, oldest_available: null, reason: "unknown" })
      this.#lastId = undefined
      this.#pending.unshift({ action: "subscribe" })
      this.#transport?.send(JSON.stringify({ action: "subscribe", event_types: this.#types }))
    } else if (pending?.action === "subscribe") {
      this.#live()
    }
    this.#report({ kind: "hub", code: error.code, message: error.message, fatal: false })
  }

  #report(error: ClientError): void {
    this.#errors.emit(error)
  }

  /** Stops the current connection's timers and transport, without a state change. */
  #drop(): void {
    this.#generation++
    for (const timer of [this.#pingTimer, this.#pongTimer, this.#refreshTimer]) this.#env.clearTimeout(timer)
    for (const pending of this.#pending) pending.reject?.(new Error("connection lost"))
    this.#pending = []
    this.#transport?.close()
    this.#transport = undefined
  }

  #lost(code: number, reason: string, opened: boolean, status?: number): void {
    this.#transport = undefined
    this.#drop()
    if (!opened && ++this.#failures >= 3 && this.options.transport === "auto" && !this.#useSse) this.#useSse = true
    const staticToken = typeof this.options.token !== "function"
    if (status !== undefined && fatalStatus.has(status) && (staticToken || status === 403)) {
      return this.#giveUp({ kind: "refused", code: status, message: `the hub refused the connection (${status})` })
    }
    if (code === tokenExpired && staticToken) {
      return this.#giveUp({ kind: "closed", code, message: "token expired, and no token provider to get another" })
    }
    const why = status !== undefined ? `refused (${status})` : refusedCodes[code]
    const wait = why !== undefined ? this.#max : undefined
    this.#retry({
      kind: status !== undefined ? "refused" : "closed",
      code: status ?? code,
      message: why ?? (reason || `connection closed (${code})`),
      fatal: false
    }, wait)
  }

  #giveUp(error: Omit<ClientError, "fatal">): void {
    this.#closed = true
    this.#report({ ...error, fatal: true })
    this.#setState("disconnected")
  }

  /**
   * Schedules the next attempt: full jitter over a bound that doubles from `minDelay` to `maxDelay` and is never
   * longer than the outage so far (a 2 s cut is not followed by a 16 s wait; a long outage still reaches `maxDelay`).
   */
  #retry(error: ClientError, wait?: number): void {
    const attempt = this.#attempt++
    const now = this.#env.now()
    this.#lostAt ??= now
    const bound = Math.min(this.#max, this.#min * 2 ** attempt, Math.max(this.#min, now - this.#lostAt))
    const delay = wait ?? (this.options.retryDelay
      ? this.options.retryDelay(attempt, error)
      : Math.floor(this.#env.random() * bound))
    if (delay === undefined) return this.#giveUp(error)
    this.#setState("reconnecting")
    this.#report({ ...error, retryIn: delay })
    this.#env.clearTimeout(this.#retryTimer)
    this.#retryTimer = this.#env.setTimeout(() => void this.#connect(), delay)
  }

  #schedulePing(): void {
    if (this.#ping <= 0 || !this.#transport?.duplex) return
    this.#pingTimer = this.#env.setTimeout(() => {
      this.#check()
      this.#schedulePing()
    }, this.#ping)
  }

  /** Sends `ping`; nothing back within `pongTimeout` means the connection is gone. */
  #check(): void {
    if (!this.#transport?.duplex) return
    this.#env.clearTimeout(this.#pongTimer)
    this.#pongTimer = this.#env.setTimeout(() => {
      this.#drop()
      this.#lost(4001, "pong timeout", true)
    }, this.#pong)
    this.#transport.send("ping")
  }

  #scheduleRefresh(token: string | undefined): void {
    const exp = token === undefined || typeof this.options.token !== "function" ? undefined : expiryOf(token)
    if (exp === undefined) return
    const left = exp * 1000 - this.#env.now()
    this.#refreshTimer = this.#env.setTimeout(() => void this.#refresh(), Math.max(0, left - Math.min(this.#margin, left / 2)))
  }

  async #refresh(): Promise<void> {
    const generation = this.#generation
    let token: string
    try {
      token = await (this.options.token as () => string | Promise<string>)()
    } catch (error) {
      return this.#report({ kind: "token", message: `token provider failed: ${String(error)}`, fatal: false })
    }
    if (generation !== this.#generation) return
    if (!this.#transport?.duplex) return this.reconnect() // SSE: the token is in the URL
    this.#request({ action: "auth", token }, { action: "auth" })
    this.#scheduleRefresh(token)
  }

  readonly #online = (): void => {
    if (this.#state === "reconnecting" && this.#transport === undefined) this.reconnect()
    else this.#check()
  }

  readonly #offline = (): void => this.#check()
}

/**
 * Connects to the hub's WebSocket endpoint (`ws://host:8080/api/v1/ws/events`) and stays connected. Declare the
 * application's events once for typed handlers: `connect<{ "backtest.completed": { job_id: string } }>(url)`.
 */
export const connect = <M extends EventMap = EventMap>(url: string, options: ClientOptions = {}): HubClient<M> =>
  new HubClient<M>(url, options)
