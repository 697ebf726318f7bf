/**
 * One WebSocket connection: an actor whose mailbox is its inbox of frames
 * from the client. It has a fiber only while it has work that waits: a frame
 * arriving at an idle connection is answered at once if its answer needs no
 * waiting (most requests, see Requests.ts); otherwise it starts a fiber (in
 * the WebSocket server's `FiberSet`, which supervises it), which handles the
 * waiting frames one at a time, in order, and ends when the inbox is empty.
 * An idle connection is a plain object (docs/design.md, "The shape we chose,
 * and where the code departs from it": a suspended fiber per idle connection
 * was the largest part of its memory and of its setup). Messages to the
 * client go through its bounded `Outbox`, written in corked batches (see
 * Outbox.ts). The client is registered with the hub when the upgrade
 * completes; whatever ends the connection, it leaves the hub at once and its
 * socket is closed with a code that says why (in a fiber, unless the client
 * closed it itself).
 */
import { Cause, Duration, Effect, Exit, FiberId, FiberRef, LogLevel, Option } from "effect"
import type { RuntimeFiber } from "effect/Fiber"
import type { Duplex } from "node:stream"
import { WebSocket } from "ws"
import { Auth, type Principal } from "../security/Auth.js"
import { HubConfig } from "../config/Config.js"
import { type ClientId, type Connection, HubClients } from "../hub/Hub.js"
import { Limits } from "../security/Limits.js"
import { MessageRate, TokenBucket } from "../security/TokenBucket.js"
import { HubMetrics } from "../ops/Metrics.js"
import type { Outbox } from "../hub/Outbox.js"
import type { DisconnectReason, ErrorData, Outbound } from "../protocol/Protocol.js"
import { Publisher } from "../rabbitmq/Publisher.js"
import { type Answer, type Incoming, type RequestContext, Requests } from "./Requests.js"
import * as WebSocketTransport from "./WebSocketTransport.js"

/** Inbound frames waiting to be handled before the socket stops being read. */
const inboxHighWater = 16
const inboxLowWater = 4
/** Longest wait for the peer's close frame before the socket is destroyed. */
const maxCloseHandshake = Duration.seconds(2)

export interface Handshake {
  readonly remoteAddress: string | undefined
  /** Who connected, when authentication is enabled (see Auth.ts). */
  readonly principal?: Principal | undefined
  /** The `since` query parameter of the WebSocket URL: resume from this event id. */
  readonly since?: string | undefined
}

/** The close code `ws` attaches to a protocol error (a symbol-keyed property). */
const statusCodeOf = (error: object): number | undefined => {
  const key = Object.getOwnPropertySymbols(error).find((symbol) => symbol.description === "status-code")
  const code = key === undefined ? undefined : (error as Record<symbol, unknown>)[key]
  return typeof code === "number" ? code : undefined
}

const toBuffer = (data: WebSocket.RawData): Buffer =>
  Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data)

/** The services a connection uses, taken once by the WebSocket server's layer (see `services`). */
export interface Services {
  readonly hub: HubClients["Type"]
  readonly config: HubConfig["Type"]
  readonly metrics: HubMetrics["Type"]
  readonly auth: Auth["Type"]
  readonly limits: Limits["Type"]
  /** Optional: without a publisher (an embedding program that provides none), `publish` is refused. */
  readonly publisher: Option.Option<Publisher["Type"]>
  /** Debug lines are logged: otherwise they are not even built (a connection's life has two). */
  readonly debug: boolean
  /** Spans are recorded (Tracing.ts): requests are then answered in the fiber, each inside its span. */
  readonly tracing: boolean
  /** How messages are written to clients (checked once, see WebSocketTransport.ts). */
  readonly webSocket: WebSocketTransport.WebSocketSettings
}

/**
 * Starts a connection's fiber under the server's supervision (a `FiberSet`'s runtime, see WebSocketServer.ts),
 * at once unless `immediate` is false.
 */
export type RunFiber = (effect: Effect.Effect<void>, options?: { readonly immediate?: boolean }) => RuntimeFiber<void>

/** The services, taken once: each connection then costs no look-up of them. */
export const services: Effect.Effect<Services, never, HubClients | HubConfig | HubMetrics | Auth | Limits> = Effect.gen(
  function*() {
    const config = yield* HubConfig
    const encodeFrame = WebSocketTransport.frameEncoder()
    if (encodeFrame === undefined) {
      yield* Effect.logWarning(
        "ws's frame encoder (Sender.frame) is missing or frames differently: every message is framed by ws.send, " +
          "once per client (a slower fan-out)"
      )
    }
    return {
      hub: yield* HubClients,
      config,
      metrics: yield* HubMetrics,
      auth: yield* Auth,
      limits: yield* Limits,
      publisher: yield* Effect.serviceOption(Publisher),
      debug: LogLevel.lessThanEqual(yield* FiberRef.get(FiberRef.currentMinimumLogLevel), LogLevel.Debug),
      tracing: yield* FiberRef.get(FiberRef.currentTracerEnabled),
      webSocket: { encodeFrame, closeHandshake: Duration.min(config.writeTimeout, maxCloseHandshake) }
    }
  }
)

/**
 * Serves one upgraded connection until it closes. `socket` is the connection's
 * TCP socket, to which the outbox writes pre-built frames directly.
 */
export const serve = (
  services: Services,
  run: RunFiber,
  ws: WebSocket,
  socket: Duplex,
  info: Handshake
): void => {
  const connection = new WsConnection(ws, socket, info, services, run)
  connection.listen()
  connection.start(info.since)
}

type InboxItem = Incoming | typeof ended | typeof floodClose

/** The socket's own connection, for the shared listeners. */
const owner = Symbol("connection")
type OwnedSocket = WebSocket & { [owner]?: WsConnection }

/** The connection a socket serves, if `serve` has been given it: the server's shutdown closes each one. */
export const connectionOf = (ws: WebSocket): { readonly shutdown: () => void } | undefined => (ws as OwnedSocket)[owner]

/**
 * One connection's state and behaviour. The socket's callbacks, the hub
 * (through `Connection`) and its fiber, when it has one, all act on it; they run one at a
 * time on the event loop, so its fields need no lock. Its requests are
 * answered by `Requests`, with this object as their context.
 */
class WsConnection implements Connection, RequestContext {
  readonly transport = "ws"
  /** Set by `start` (with `annotations`), before anything uses them: the hub gives the id. */
  id!: ClientId
  annotations!: Readonly<Record<string, unknown>>
  readonly hub: HubClients["Type"]
  readonly config: HubConfig["Type"]
  readonly auth: Auth["Type"]
  readonly limits: Limits["Type"]
  readonly publisher: Option.Option<Publisher["Type"]>
  readonly tracing: boolean
  principal: Principal | undefined
  readonly #metrics: HubMetrics["Type"]
  readonly #debug: boolean
  readonly #run: RunFiber
  readonly #remoteAddress: string
  readonly #outbox: Outbox
  #requests: Requests | undefined
  /** Made at the first message (as `#requests`): many connections only listen. */
  #rate: MessageRate | undefined
  readonly #openedAt: number
  readonly #firstMessageTimeout: number | undefined
  /** Frames from the client; `ended` when the connection ends while a fiber is handling them. */
  readonly #inbox: Array<InboxItem> = []
  /**
   * A fiber is running: handling the inbox (arriving frames wait for it; false again once it is empty, or after a
   * `start` with nothing to do) or closing the socket (then it stays true).
   */
  #active = true
  /** The fiber handling the inbox, once `run` has returned it: shutdown interrupts it. */
  #fiber: RuntimeFiber<void> | undefined = undefined
  /** The end has begun: the client has left the hub, and nothing more is read or started. */
  #finishing = false
  /** Frames received and not yet answered: past `inboxHighWater` the socket is no longer read. */
  #unanswered = 0
  #lastSeen: number
  #lastPing: number
  #messageReceived = false
  /** The client went on flooding after `rate_limited`: nothing more is read, and it is closed (1008). */
  #flooded = false
  /** Why the connection ends, once it does. */
  #leaving: DisconnectReason | undefined = undefined
  #closeCode: number | undefined = undefined
  /** The reply that waits for room in the send buffer, if any (see `send`). */
  #waitingSend: (() => void) | undefined = undefined
  /** Resumes allowed on this connection (`WS_RESUME_RATE_LIMIT`), made at the first resume: most never resume. */
  #resumes: TokenBucket | undefined = undefined

  constructor(
    readonly ws: WebSocket,
    readonly socket: Duplex,
    info: Handshake,
    services: Services,
    run: RunFiber
  ) {
    this.#remoteAddress = info.remoteAddress ?? "unknown"
    this.#run = run
    this.hub = services.hub
    this.config = services.config
    this.auth = services.auth
    this.limits = services.limits
    this.publisher = services.publisher
    this.tracing = services.tracing
    this.principal = info.principal
    this.#metrics = services.metrics
    this.#debug = services.debug
    this.#outbox = services.hub.outbox(WebSocketTransport.make(ws, socket, services.webSocket))
    this.#openedAt = this.#lastSeen = this.#lastPing = Date.now()
    this.#firstMessageTimeout = Option.getOrUndefined(Option.map(services.limits.settings.firstMessageTimeout, Duration.toMillis))
  }

  // --- what the hub calls (Connection) ----------------------------------------

  offer(message: Outbound): boolean {
    return this.#leaving !== undefined || this.#outbox.offer(message)
  }

  kick(reason: DisconnectReason): void {
    if (this.#leaving !== undefined) return
    this.#leaving = reason
    this.#end(true)
  }

  whenBelow(size: number, ready: () => void): void {
    this.#outbox.whenBelow(size, ready)
  }

  backlog(): number {
    return this.#outbox.size
  }

  keepAlive(now: number): void {
    if (this.#leaving !== undefined || this.ws.readyState !== WebSocket.OPEN) return
    if (this.#securityDue(now)) return
    const blockedSince = this.#outbox.blockedSince
    if (blockedSince !== undefined && now - blockedSince >= Duration.toMillis(this.config.writeTimeout)) {
      this.kick("write_timeout")
    } else if (now - this.#lastSeen >= Duration.toMillis(this.config.pongTimeout)) this.kick("pong_timeout")
    else if (now - this.#lastPing >= Duration.toMillis(this.config.pingPeriod)) {
      this.#lastPing = now
      this.ws.ping()
    }
  }

  /** Kicks the client if its token expired or it said nothing in time; true when it did. */
  #securityDue(now: number): boolean {
    if (this.principal !== undefined && now >= this.principal.expiresAt) {
      this.limits.refused("token_expired")
      this.kick("token_expired")
      return true
    }
    if (!this.#messageReceived && this.#firstMessageTimeout !== undefined && now - this.#openedAt >= this.#firstMessageTimeout) {
      this.limits.refused("first_message_timeout")
      this.kick("first_message_timeout")
      return true
    }
    return false
  }

  // --- the socket's events ------------------------------------------------------

  /**
   * The socket's listeners, shared by every connection (`this` is the socket, which knows its connection): an
   * idle connection holds no closures of its own for them.
   */
  static readonly #listeners = {
    message(this: OwnedSocket, data: WebSocket.RawData, isBinary: boolean) {
      this[owner]!.#onMessage(data, isBinary)
    },
    seen(this: OwnedSocket) {
      this[owner]!.#lastSeen = Date.now()
    },
    error(this: OwnedSocket, error: Error & { code?: string }) {
      const connection = this[owner]!
      // `ws` closes the connection itself after these, with the status code it attaches (1009, 1007, 1002).
      connection.#leaving ??= error.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH"
        ? "message_too_big"
        : error.code === "WS_ERR_INVALID_UTF8"
        ? "invalid_payload"
        : error.code?.startsWith("WS_ERR_")
        ? "protocol_error"
        : "error"
      connection.#closeCode ??= statusCodeOf(error)
    },
    close(this: OwnedSocket, code: number) {
      const connection = this[owner]!
      // The code of the close frame that ended the connection, unless the hub sent its own first.
      connection.#closeCode ??= code
      connection.#leaving ??= "client_closed"
      connection.#end()
    }
  }

  /** Listens to the socket: the only place its callbacks are set. */
  listen(): void {
    const ws = this.ws as OwnedSocket
    const listeners = WsConnection.#listeners
    ws[owner] = this
    ws.on("message", listeners.message)
    ws.on("pong", listeners.seen)
    ws.on("ping", listeners.seen)
    ws.on("error", listeners.error)
    ws.on("close", listeners.close)
  }

  #onMessage(data: WebSocket.RawData, isBinary: boolean): void {
    this.#lastSeen = Date.now()
    this.#messageReceived = true
    if (this.#flooded || this.#finishing) return
    const verdict = (this.#rate ??= new MessageRate(this.limits.settings, this.#openedAt)).check(this.#lastSeen)
    if (verdict === "drop") return
    if (verdict === "close") {
      // Closed after the requests already queued (and the rate_limited warning) have been answered.
      this.#flooded = true
      this.limits.refused("rate_limit_closed")
      return this.#deliver(floodClose)
    }
    // Counted before it is delivered: an idle connection answers it at once.
    if (++this.#unanswered >= inboxHighWater && !this.ws.isPaused) this.ws.pause()
    if (verdict === "accept") this.#deliver({ data: toBuffer(data), isBinary })
    else {
      this.limits.refused("rate_limited")
      this.#deliver({
        data: Buffer.alloc(0),
        isBinary: false,
        refusal: {
          code: "rate_limited",
          message: `more than ${this.limits.settings.messageRate} messages per second: messages are dropped; ` +
            "the connection is closed (1008) if this goes on"
        }
      })
    }
  }

  #deliver(item: InboxItem): void {
    if (this.#active || this.#finishing || this.#leaving !== undefined || typeof item === "symbol") {
      this.#inbox.push(item)
      if (!this.#active && !this.#finishing) this.#activate(this.#drain)
      return
    }
    // Idle: answered here if nothing in the answer waits, else by a fiber that then handles what follows.
    let rest: Answer
    try {
      rest = this.#requestsOf().handle(item)
    } catch (error) {
      // A defect in a request's answer ends only this connection, as it would in a fiber (1011, logged).
      rest = Effect.die(error)
    }
    if (rest === undefined) this.#countAnswered()
    else this.#activate(Effect.zipRight(rest, this.#answered))
  }

  #requestsOf(): Requests {
    return this.#requests ??= new Requests(this)
  }

  #countAnswered(): void {
    if (--this.#unanswered <= inboxLowWater && this.ws.isPaused) this.ws.resume()
  }

  /**
   * The connection is over: its fiber, if it has one, ends it (even from inside a reply that waits for room);
   * otherwise the end starts here. `deferred`: the hub is calling (a kick from its fan-out or tick), so the
   * fiber that closes the socket starts after that call rather than inside it.
   */
  #end(deferred = false): void {
    if (this.#finishing) return
    if (this.#active) {
      this.#inbox.push(ended)
      const release = this.#waitingSend
      this.#waitingSend = undefined
      return release?.()
    }
    this.#leave()
    // The common end, the client closed its socket: nothing to wait for and no line to log, so no fiber.
    if (this.ws.readyState === WebSocket.CLOSED && this.#leaving === "client_closed" && !this.#debug) {
      this.#metrics.disconnected(this.#leaving)
      return
    }
    // Not the inbox's fiber, so a shutdown does not interrupt it: the close is bounded by its own timers.
    this.#active = true
    this.#run(Effect.onExit(this.#finishNow, this.#afterFiber), deferred ? { immediate: false } : undefined)
  }

  /** The client leaves the hub (once): at once, so that no event is counted for a connection that is ending. */
  #leave(): void {
    if (this.#finishing) return
    this.#finishing = true
    this.hub.unsafeUnregister(this.id)
  }

  // --- the connection's fibers ------------------------------------------------------

  /** Runs `work` as the connection's fiber; a fiber that fails or is interrupted ends the connection. */
  #activate(work: Effect.Effect<void>): void {
    this.#active = true
    const fiber = this.#run(Effect.onExit(work, this.#afterFiber))
    // A fiber that ran to its end inside `run` is already gone.
    if (this.#active) this.#fiber = fiber
  }

  readonly #afterFiber = (exit: Exit.Exit<void>): Effect.Effect<void> =>
    Exit.isSuccess(exit)
      ? Effect.void
      : !this.#finishing
      ? this.finish(exit)
      : Cause.isInterruptedOnly(exit.cause)
      ? Effect.void
      : Effect.logError("client connection failed while closing", exit.cause)

  /** Handles the client's frames, one at a time and in order, until none is left (the fiber then ends). */
  readonly #drain: Effect.Effect<void> = Effect.suspend(() => {
    const incoming = this.#inbox.shift()
    if (incoming === undefined) {
      this.#active = false
      this.#fiber = undefined
      return Effect.void
    }
    if (incoming === ended || this.#leaving !== undefined) return this.#finishNow
    if (incoming === floodClose) {
      this.kick("rate_limited")
      return this.#finishNow
    }
    const rest = this.#requestsOf().handle(incoming)
    return rest === undefined ? this.#answered : Effect.zipRight(rest, this.#answered)
  })

  readonly #answered: Effect.Effect<void> = Effect.suspend(() => {
    this.#countAnswered()
    return this.#drain
  })

  /** The end, from a fiber that is not failing: not interruptible, so that it runs once and whole. */
  get #finishNow(): Effect.Effect<void> {
    return Effect.uninterruptible(this.finish(Exit.void))
  }

  /** Closes the connection for a shutdown (1001): what its fiber is doing, if any, is interrupted. */
  shutdown(): void {
    if (this.#finishing) return
    this.#leaving ??= "shutdown"
    const fiber = this.#fiber
    this.#end()
    fiber?.unsafeInterruptAsFork(FiberId.none)
  }

  sendNow(message: Outbound): boolean {
    const outbox = this.#outbox
    // Room now, the usual case: queued without waiting (a connection that is ending takes nothing more).
    return this.#leaving !== undefined || (outbox.size < outbox.capacity && outbox.offer(message))
  }

  /**
   * Replies wait for room in the send buffer: a client that sends many
   * requests at once is slowed down (its socket is no longer read while the
   * reply waits), not disconnected. Only broadcasts treat a full buffer as
   * a slow consumer.
   */
  sendWhenRoom(message: Outbound): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      if (this.#leaving !== undefined) return resume(Effect.void)
      const outbox = this.#outbox
      let done = false
      const finish = () => {
        if (done) return
        done = true
        this.#waitingSend = undefined
        resume(Effect.void)
      }
      // A buffer that never drains (the client stopped reading) must not hold the fiber: `end` releases it.
      this.#waitingSend = finish
      // Another writer (a replay) may take the room first: then wait again.
      const attempt = () => {
        if (done) return
        if (outbox.offer(message)) finish()
        else outbox.whenRoom(attempt)
      }
      outbox.whenRoom(attempt)
    })
  }

  takeResume(): ErrorData | undefined {
    const { resumeRate, resumeRatePerIp } = this.limits.settings
    const now = Date.now()
    this.#resumes ??= new TokenBucket(resumeRate / 60, resumeRate, now)
    // The connection's own allowance first: a connection over it spends nothing of its address's.
    let limit = `${resumeRate} per minute on one connection`
    let seconds = this.#resumes.take(now) ? 0 : this.#resumes.retryAfter(now)
    if (seconds === 0) {
      limit = `${resumeRatePerIp} per minute from one address`
      seconds = this.limits.takeResume(this.#remoteAddress, now)
    }
    if (seconds === 0) return undefined
    this.limits.refused("resume_rate_limited")
    return { code: "resume_rate_limited", message: `more than ${limit}: nothing replayed; retry in ${seconds} s` }
  }

  /** A refusal of the handshake's `since` (a `hub.error`). */
  refuse(error: ErrorData): Effect.Effect<void> {
    return this.#requestsOf().refuse(error)
  }

  // --- the end --------------------------------------------------------------------

  /**
   * Registers the client. A fiber starts only for what the registration may have to say or do (a resume, a
   * refused `since`, a debug line): a client that just connects has none until its first frame.
   */
  start(since: string | undefined): void {
    const hub = this.hub
    this.id = hub.unsafeNextId()
    this.annotations = { client_id: this.id, remote_address: this.#remoteAddress }
    // A `?since=` over the resume rate: the client is told, and goes live instead.
    const refusal = since === undefined ? undefined : this.takeResume()
    const resuming = since !== undefined && refusal === undefined
    hub.unsafeRegister(this, { allowed: this.principal?.eventTypes, resuming })
    let setup: Effect.Effect<void> | undefined = undefined
    const then = (next: Effect.Effect<void>) => setup = setup === undefined ? next : Effect.zipRight(setup, next)
    if (this.#debug) then(Effect.logDebug("client connected").pipe(Effect.annotateLogs(this.annotations)))
    if (refusal !== undefined) then(this.refuse(refusal))
    if (resuming) {
      then(hub.resume(this.id, since!).pipe(
        Effect.matchEffect({
          onFailure: (error) => this.refuse({ code: "invalid_request", message: error.message }),
          onSuccess: (resume) => resume.start
        })
      ))
    }
    if (setup === undefined) this.#active = false
    else this.#activate(Effect.zipRight(setup, this.#drain))
  }

  /** The end: leave the hub, close the socket, and report a defect (closed with 1011). */
  finish(exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.#leave()
      const left = this.close(exit)
      return Exit.isFailure(exit) && Cause.isDie(exit.cause)
        ? Effect.zipRight(left, Effect.logError("client connection failed", exit.cause))
        : left
    })
  }

  /** Closes the socket with a code that says why the connection ended, then logs it. */
  close(exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> {
    const ws = this.ws
    // A socket the peer dropped may not have told its connection yet: look at the socket first.
    this.#leaving ??= ws.readyState !== WebSocket.OPEN || this.socket.destroyed
      ? "client_closed"
      : Exit.isInterrupted(exit)
      ? "shutdown"
      : "error"
    // Most connections end with the socket already closed (the client left): nothing to wait for.
    if (ws.readyState === WebSocket.CLOSED) return Effect.suspend(() => this.#closed())
    return Effect.gen(this, function*() {
      const leaving = this.#leaving!
      if (ws.readyState === WebSocket.OPEN) {
        // What is already queued for the client (replies, events) goes out before the close frame.
        this.#outbox.flush()
        this.#closeCode = WebSocketTransport.closeFrameFor(leaving).code
      }
      yield* this.#outbox.transport.close(leaving)
      yield* this.#closed()
    })
  }

  /** Counts and logs the end (routine ends at debug level, built only when debug is on). */
  #closed(): Effect.Effect<void> {
    const leaving = this.#leaving!
    this.#metrics.disconnected(leaving)
    const routine = leaving === "client_closed" || leaving === "shutdown"
    if (routine && !this.#debug) return Effect.void
    return (routine ? Effect.logDebug : Effect.logInfo)("client disconnected").pipe(
      Effect.annotateLogs({ ...this.annotations, reason: leaving, code: this.#closeCode })
    )
  }
}

/** The inbox's end marker. */
const ended = Symbol("ended")
/** The inbox's marker for a client closed for flooding, once the requests before it are answered. */
const floodClose = Symbol("floodClose")
