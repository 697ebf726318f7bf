/**
 * What a WebSocket connection (WebSocketConnection.ts) and a Server-Sent
 * Events stream (SseConnection.ts) share: the hub's side of a connection
 * (`Connection`: offer, kick, keep-alive), its bounded `Outbox` written
 * through its transport, its registration and resume, and its life: one state,
 * and one end.
 *
 * A connection is an actor with a fiber only while it has work that waits
 * (docs/design.md): registration, most requests and a client's close are plain
 * calls from the socket's callbacks and the hub; a fiber, started in the
 * server's `FiberSet` (`Services.run`), runs what waits (a resume, a reply
 * waiting for room, a token check, ...) and the close of the socket. The
 * socket's callbacks, the hub and the fiber run one at a time on the event
 * loop, so the fields need no lock.
 *
 * Whatever ends a connection, it leaves the hub at once and its socket is
 * closed with a reason that says why (in a fiber, unless the client closed it
 * itself: then there is nothing to wait for); a defect in its work ends it
 * alone, logged.
 */
import { Cause, Duration, Effect, Exit, type Fiber, LogLevel } from "effect"
import { HubConfig } from "../config/Config.js"
import { type ClientId, type Connection, HubClients, type RegisterOptions } from "../hub/Hub.js"
import type { Outbox, OutboxOwner, Transport } from "../hub/Outbox.js"
import { HubMetrics } from "../ops/Metrics.js"
import { type DisconnectReason, type ErrorData, HubMessageType, Outbound } from "../protocol/Protocol.js"
import type { Principal } from "../security/Auth.js"
import { Limits } from "../security/Limits.js"
import * as Resume from "./Resume.js"

/**
 * Starts a connection's fiber under the server's supervision (a `FiberSet`'s runtime), at once unless `immediate`
 * is false.
 */
export type RunFiber = (effect: Effect.Effect<void>, options?: { readonly immediate?: boolean }) => Fiber.Fiber<void>

/**
 * `RunFiber` from a `FiberSet`'s run function. Effect 4 runs a new fiber in the caller's stack until it first waits;
 * one that must not (`immediate: false`) starts at the scheduler's next turn.
 */
export const runIn = (fork: (effect: Effect.Effect<void>) => Fiber.Fiber<void>): RunFiber => (effect, options) =>
  fork(options?.immediate === false ? Effect.andThen(Effect.yieldNow, effect) : effect)

/** What every connection of a server uses, taken once by the server's layer: a connection costs no look-up. */
export interface Services {
  readonly hub: HubClients["Service"]
  readonly config: HubConfig["Service"]
  readonly metrics: HubMetrics["Service"]
  readonly limits: Limits["Service"]
  readonly run: RunFiber
  /** Debug lines are logged: otherwise they are not even built (a connection's life has two). */
  readonly debug: boolean
}

/** The services, with `run` for the connections' fibers. */
export const services = (
  run: RunFiber
): Effect.Effect<Services, never, HubClients | HubConfig | HubMetrics | Limits> =>
  Effect.gen(function*() {
    return {
      hub: yield* HubClients,
      config: yield* HubConfig,
      metrics: yield* HubMetrics,
      limits: yield* Limits,
      run,
      debug: yield* LogLevel.isEnabled("Debug")
    }
  })

/**
 * Where a connection is in its life, in the order it goes through them (it only ever moves forward, but for `busy`
 * and `idle`, back and forth while it is open):
 * - `idle`: open, no fiber (a WebSocket frame is answered in the socket's callback);
 * - `busy`: open, a fiber runs its work (a WebSocket's frames wait in its inbox);
 * - `flooded`: busy, and reading nothing more: closed (1008) once the frames before the flood are answered;
 * - `ending`: its end is decided (`reason`); its fiber ends it once the step under way is done;
 * - `erred`: its end is decided by a protocol error, after which `ws` closes the socket itself: the socket's close
 *   ends it;
 * - `closing`: it has left the hub, and its socket is being closed;
 * - `closed`: over.
 */
export const State = { idle: 0, busy: 1, flooded: 2, ending: 3, erred: 4, closing: 5, closed: 6 } as const
export type State = (typeof State)[keyof typeof State]

export abstract class BaseConnection<S extends Services = Services> implements Connection, OutboxOwner {
  /** Set by `start`, before anything uses it: the hub gives it. */
  id!: ClientId
  /** Who connected, when authentication is enabled (see Auth.ts); a WebSocket's token refresh replaces it. */
  principal: Principal | undefined
  protected readonly outbox: Outbox
  /** Until `start`: `busy`, so that what arrives meanwhile waits. */
  protected state: State = State.busy
  /** Why the connection ends, once that is decided. */
  protected reason: DisconnectReason | undefined = undefined
  /** The fiber running its work, once `run` has returned it: a shutdown interrupts it. */
  #fiber: Fiber.Fiber<void> | undefined = undefined
  /** The reply that waits for room in the send buffer, if any (see `sendWhenRoom`). */
  #waitingSend: (() => void) | undefined = undefined

  constructor(
    readonly services: S,
    transport: Transport,
    readonly remoteAddress: string,
    principal: Principal | undefined
  ) {
    this.principal = principal
    this.outbox = services.hub.outbox(transport, this)
  }

  /** How the client is connected (metrics, logs). */
  abstract get transport(): "ws" | "sse"

  /** What its log lines are annotated with (built when a line is). */
  get annotations(): Readonly<Record<string, unknown>> {
    return { client_id: this.id, remote_address: this.remoteAddress }
  }

  // --- what the hub calls (Connection) ----------------------------------------

  offer(message: Outbound): boolean {
    // A connection that is ending takes nothing more, and is not dropped for it.
    return this.state >= State.ending || this.outbox.offer(message)
  }

  kick(reason: DisconnectReason): void {
    if (this.state >= State.ending) return
    this.reason = reason
    this.end(true)
  }

  whenBelow(size: number, ready: () => void): void {
    this.outbox.whenBelow(size, ready)
  }

  backlog(): number {
    return this.outbox.size
  }

  /** On the hub's tick: a token that expired, a write stuck too long, then what the transport's keep-alive needs. */
  keepAlive(now: number): void {
    if (this.state >= State.ending || !this.outbox.transport.open) return
    if (this.principal !== undefined && now >= this.principal.expiresAt) {
      this.services.limits.refused("token_expired")
      return this.kick("token_expired")
    }
    if (this.overdue(now)) return
    const blockedSince = this.outbox.blockedSince
    if (blockedSince !== undefined && now - blockedSince >= Duration.toMillis(this.services.config.writeTimeout)) {
      return this.kick("write_timeout")
    }
    this.beat(now, blockedSince !== undefined)
  }

  /** Kicks the client if it owed the hub something by `now` (a WebSocket's first message); true when it did. */
  protected overdue(_now: number): boolean {
    return false
  }

  /** The transport's own keep-alive: a ping, an SSE comment. `blocked`: the socket takes no data now. */
  protected abstract beat(now: number, blocked: boolean): void

  // --- its start -----------------------------------------------------------------

  /**
   * Registers the client, to resume from `since` unless its resume was refused (`refusal`, told to it). A fiber
   * starts only for what the registration has to say or do (a debug line, the refusal, the resume): a client that
   * just connects has none.
   */
  protected start(options: RegisterOptions, since: string | undefined, refusal: ErrorData | undefined): void {
    const hub = this.services.hub
    this.id = hub.unsafeNextId()
    hub.unsafeRegister(this, options)
    let setup: Effect.Effect<void> | undefined = undefined
    const then = (next: Effect.Effect<void>) => setup = setup === undefined ? next : Effect.andThen(setup, next)
    if (this.services.debug) then(Effect.logDebug("client connected").pipe(Effect.annotateLogs(this.annotations)))
    if (refusal !== undefined) then(this.refuse(refusal))
    if (options.resuming === true) then(Resume.resume(this, since!))
    if (setup === undefined) this.state = State.idle
    else this.activate(Effect.andThen(setup, this.next))
  }

  // --- its fiber -------------------------------------------------------------------

  /** Runs `work` as the connection's fiber; a fiber that fails or is interrupted ends the connection. */
  protected activate(work: Effect.Effect<void>): void {
    if (this.state === State.idle) this.state = State.busy
    const fiber = this.services.run(Effect.onExit(work, this.#afterFiber))
    // A fiber that ran to its end inside `run` is already gone.
    if (this.state >= State.busy && this.state <= State.ending) this.#fiber = fiber
  }

  /** After each piece of the fiber's work: the end, if it was decided meanwhile, or what is left to do. */
  protected readonly next: Effect.Effect<void> = Effect.suspend(() =>
    this.state === State.ending ? this.#finishNow : this.continue()
  )

  /** What is left once a piece of work is done (a WebSocket's inbox); by default nothing: the fiber ends. */
  protected continue(): Effect.Effect<void> {
    return this.idle()
  }

  /** The fiber ends, and the connection is idle again. */
  protected idle(): Effect.Effect<void> {
    this.state = State.idle
    this.#fiber = undefined
    return Effect.void
  }

  readonly #afterFiber = (exit: Exit.Exit<void>): Effect.Effect<void> =>
    Exit.isSuccess(exit)
      ? Effect.void
      : this.state < State.closing
      ? this.finish(exit)
      : Cause.hasInterruptsOnly(exit.cause)
      ? Effect.void
      : Effect.logError("client connection failed while closing", exit.cause).pipe(Effect.annotateLogs(this.annotations))

  // --- its end -----------------------------------------------------------------------

  /**
   * The connection is over (`reason` says why): its fiber, if it has one, ends it once the step under way is done
   * (even a reply that waits for room); otherwise it ends here. `deferred`: the hub is calling (a kick from its
   * fan-out or tick), so the fiber that closes the socket starts after that call rather than inside it. Idempotent.
   */
  protected end(deferred = false): void {
    const state = this.state
    if (state >= State.closing) return
    if (state === State.busy || state === State.flooded || state === State.ending) {
      this.state = State.ending
      const release = this.#waitingSend
      this.#waitingSend = undefined
      return release?.()
    }
    this.#leave()
    // The common end, the client closed its socket: nothing to wait for and no line to log, so no fiber.
    if (this.reason === "client_closed" && !this.outbox.transport.open && !this.services.debug) {
      this.state = State.closed
      this.services.metrics.disconnected(this.reason)
      return
    }
    // Not the work's fiber, so a shutdown does not interrupt it: the close is bounded by its own timers.
    this.services.run(Effect.onExit(this.#finishNow, this.#afterFiber), deferred ? { immediate: false } : undefined)
  }

  /** A write to its socket threw (see Flusher.ts). */
  writeFailed(error: unknown): void {
    this.failed("writing to the client", error)
  }

  /**
   * `what` threw, outside its fiber (a write, a socket's callback): logged at Error level, and the connection ends
   * (WebSocket: 1011); the other clients are served.
   */
  protected failed(what: string, error: unknown): void {
    this.services.run(
      Effect.logError(`${what} failed; the connection is closed, the other clients are served`, Cause.die(error)).pipe(
        Effect.annotateLogs(this.annotations)
      )
    )
    this.kick("error")
  }

  /** The socket closed under the connection (the client left, or a protocol error closed it). */
  protected socketClosed(): void {
    this.reason ??= "client_closed"
    this.end()
  }

  /** The socket failed, and is closing itself: the end is decided, and its close event (or the fiber) ends it. */
  protected erred(reason: DisconnectReason): void {
    if (this.state >= State.ending) return
    this.reason = reason
    this.state = this.state === State.idle ? State.erred : State.ending
  }

  /** Closes the connection for a shutdown (1001): what its fiber is doing, if anything, is interrupted. */
  shutdown(): void {
    if (this.state >= State.closing) return
    this.reason ??= "shutdown"
    const fiber = this.#fiber
    this.end()
    fiber?.interruptUnsafe()
  }

  /** The client leaves the hub (once): at once, so that no event is counted for a connection that is ending. */
  #leave(): void {
    if (this.state >= State.closing) return
    this.state = State.closing
    this.services.hub.unsafeUnregister(this.id)
    this.left()
  }

  /** Called once the client has left the hub. */
  protected left(): void {}

  /** The end, from a fiber that is not failing: not interruptible, so that it runs once and whole. */
  get #finishNow(): Effect.Effect<void> {
    return Effect.uninterruptible(this.finish(Exit.void))
  }

  /** The end: leave the hub, close the socket, and report a defect. */
  protected finish(exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.#leave()
      const closed = this.#close(exit)
      return Exit.isFailure(exit) && Cause.hasDies(exit.cause)
        ? Effect.andThen(
          closed,
          Effect.logError("client connection failed; it is closed, the other clients are served", exit.cause).pipe(
            Effect.annotateLogs(this.annotations)
          )
        )
        : closed
    })
  }

  /** Closes the socket with a reason that says why the connection ended, then counts and logs the end. */
  #close(exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> {
    const transport = this.outbox.transport
    // A socket the peer dropped may not have told its connection yet: look at the socket first.
    const reason = this.reason ??= !transport.open
      ? "client_closed"
      : Exit.hasInterrupts(exit)
      ? "shutdown"
      : "error"
    if (transport.open) {
      // What is already queued for the client (replies, events) goes out first.
      this.outbox.flush()
      this.closing(reason)
    }
    return Effect.andThen(transport.close(reason), Effect.suspend(() => this.#closed()))
  }

  /** Called before the transport closes an open socket for `reason`. */
  protected closing(_reason: DisconnectReason): void {}

  /** Counts and logs the end (routine ends at debug level, built only when debug is on). */
  #closed(): Effect.Effect<void> {
    const reason = this.reason!
    this.state = State.closed
    this.services.metrics.disconnected(reason)
    const routine = reason === "client_closed" || reason === "shutdown"
    if (routine && !this.services.debug) return Effect.void
    return (routine ? Effect.logDebug : Effect.logInfo)("client disconnected").pipe(
      Effect.annotateLogs({ ...this.annotations, ...this.endAnnotations(reason) })
    )
  }

  /** What the line that logs the end says besides the connection's annotations. */
  protected endAnnotations(reason: DisconnectReason): Readonly<Record<string, unknown>> {
    return { reason }
  }

  // --- its replies -------------------------------------------------------------------

  /** Queues a message for the client if its send buffer has room now; false otherwise (nothing queued). */
  sendNow(message: Outbound): boolean {
    const outbox = this.outbox
    // Room now, the usual case: queued without waiting (a connection that is ending takes nothing more).
    return this.state >= State.ending || (outbox.size < outbox.capacity && outbox.offer(message))
  }

  /**
   * Replies wait for room in the send buffer: a client that sends many
   * requests at once is slowed down (its socket is no longer read while the
   * reply waits), not disconnected. Only broadcasts treat a full buffer as
   * a slow consumer.
   */
  sendWhenRoom(message: Outbound): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      if (this.state >= State.ending) return resume(Effect.void)
      const outbox = this.outbox
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

  /** A reply, stamped with the wall clock (as the replay's markers are; events take the hub's `Clock`). */
  reply(type: string, data: unknown): Effect.Effect<void> {
    return Effect.suspend(() => {
      const message = Outbound.message(type, data, new Date())
      return this.sendNow(message) ? Effect.void : this.sendWhenRoom(message)
    })
  }

  /** A `hub.error`, with a debug-level log line. */
  refuse(error: ErrorData): Effect.Effect<void> {
    return Effect.andThen(
      Effect.logDebug("refused client message").pipe(
        Effect.annotateLogs({ ...this.annotations, code: error.code, reason: error.message })
      ),
      this.reply(HubMessageType.error, error)
    )
  }
}
