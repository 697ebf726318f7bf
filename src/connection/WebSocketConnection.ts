/**
 * One WebSocket connection (see Connection.ts for what it shares with an SSE
 * stream): an actor whose mailbox is its inbox of frames from the client. A
 * frame arriving at an idle connection is answered at once if its answer
 * needs no waiting (most requests, see Requests.ts); otherwise it starts the
 * connection's fiber, which handles the waiting frames one at a time, in
 * order, and ends when the inbox is empty. An idle connection is a plain
 * object (docs/design.md, "The shape we chose, and where the code departs from
 * it": a suspended fiber per idle connection was the largest part of its
 * memory and of its setup). Messages to the client go through its bounded
 * `Outbox`, written in corked batches (see WebSocketTransport.ts).
 */
import { Duration, Effect, Option, References } from "effect"
import type { Duplex } from "node:stream"
import { WebSocket } from "ws"
import type { HubConfig } from "../config/Config.js"
import type { HubClients } from "../hub/Hub.js"
import type { HubMetrics } from "../ops/Metrics.js"
import type { DisconnectReason, ErrorData } from "../protocol/Protocol.js"
import { Publisher } from "../rabbitmq/Publisher.js"
import { Auth, type Principal } from "../security/Auth.js"
import type { Limits } from "../security/Limits.js"
import { MessageRate, TokenBucket } from "../security/TokenBucket.js"
import { BaseConnection, type RunFiber, type Services as ConnectionServices, services as connectionServices, State } from "./Connection.js"
import { type Answer, type Incoming, type RequestContext, Requests } from "./Requests.js"
import * as Resume from "./Resume.js"
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

/** What every WebSocket connection uses besides what every connection does, taken once by the server's layer. */
export interface Services extends ConnectionServices {
  readonly auth: Auth["Service"]
  /** Where clients' `publish` goes (`WS_PUBLISH_TYPES`). */
  readonly publisher: Publisher["Service"]
  /** Spans are recorded (Tracing.ts): requests are then answered in the fiber, each inside its span. */
  readonly tracing: boolean
  /** `WS_FIRST_MESSAGE_TIMEOUT` in milliseconds, if set. */
  readonly firstMessageTimeout: number | undefined
  /** How messages are written to clients (checked once, see WebSocketTransport.ts). */
  readonly webSocket: WebSocketTransport.WebSocketSettings
}

/** The services, taken once (and `ws`'s frame encoder checked once): each connection then costs no look-up. */
export const services = (
  run: RunFiber
): Effect.Effect<Services, never, HubClients | HubConfig | HubMetrics | Auth | Limits | Publisher> =>
  Effect.gen(function*() {
    const common = yield* connectionServices(run)
    const encodeFrame = WebSocketTransport.frameEncoder()
    if (encodeFrame === undefined) {
      yield* Effect.logWarning(
        "ws's frame encoder (Sender.frame) is missing or frames differently: every message is framed by ws.send, " +
          "once per client (a slower fan-out)"
      )
    }
    return {
      ...common,
      auth: yield* Auth,
      publisher: yield* Publisher,
      tracing: yield* References.TracerEnabled,
      firstMessageTimeout: Option.getOrUndefined(
        Option.map(common.limits.settings.firstMessageTimeout, Duration.toMillis)
      ),
      webSocket: { encodeFrame, closeHandshake: Duration.min(common.config.writeTimeout, maxCloseHandshake) }
    }
  })

/**
 * Serves one upgraded connection until it closes. `socket` is the connection's
 * TCP socket, to which its transport writes pre-built frames directly.
 */
export const serve = (services: Services, ws: WebSocket, socket: Duplex, info: Handshake): void => {
  const connection = new WsConnection(services, ws, socket, info)
  connection.listen()
  connection.begin(info.since)
}

/** The socket's own connection, for the shared listeners. */
const owner = Symbol("connection")
type OwnedSocket = WebSocket & { [owner]?: WsConnection }

/** The connection a socket serves, if `serve` has been given it: the server's shutdown closes each one. */
export const connectionOf = (ws: WebSocket): { readonly shutdown: () => void } | undefined => (ws as OwnedSocket)[owner]

/** One connection's inbox, requests and keep-alive; its requests are answered by `Requests`, with it as context. */
class WsConnection extends BaseConnection<Services> implements RequestContext {
  /** Frames from the client, waiting for the fiber. */
  readonly #inbox: Array<Incoming> = []
  /** Frames received and not yet answered: past `inboxHighWater` the socket is no longer read. */
  #unanswered = 0
  readonly #openedAt: number
  #lastSeen: number
  #lastPing: number
  /** Made at the first message (as `#requests`): many connections only listen. */
  #rate: MessageRate | undefined = undefined
  #requests: Requests | undefined = undefined
  /** Resumes allowed on this connection (`WS_RESUME_RATE_LIMIT`), made at the first resume: most never resume. */
  #resumes: TokenBucket | undefined = undefined
  /** The code of the close frame that ended the connection (the hub's, or the client's). */
  #closeCode: number | undefined = undefined

  constructor(services: Services, readonly ws: WebSocket, socket: Duplex, info: Handshake) {
    super(services, WebSocketTransport.make(ws, socket, services.webSocket), info.remoteAddress ?? "unknown", info.principal)
    this.#openedAt = this.#lastSeen = this.#lastPing = Date.now()
  }

  get transport(): "ws" {
    return "ws"
  }

  // --- the hub's tick -------------------------------------------------------------

  /** Closes (4004) a client that said nothing within `WS_FIRST_MESSAGE_TIMEOUT`. */
  protected override overdue(now: number): boolean {
    const timeout = this.services.firstMessageTimeout
    if (this.#rate !== undefined || timeout === undefined || now - this.#openedAt < timeout) return false
    this.services.limits.refused("first_message_timeout")
    this.kick("first_message_timeout")
    return true
  }

  /** Pings every `WS_PING_PERIOD`; closes (4001) a client silent for `WS_PONG_TIMEOUT`. */
  protected beat(now: number): void {
    const config = this.services.config
    if (now - this.#lastSeen >= Duration.toMillis(config.pongTimeout)) this.kick("pong_timeout")
    else if (now - this.#lastPing >= Duration.toMillis(config.pingPeriod)) {
      this.#lastPing = now
      this.ws.ping()
    }
  }

  // --- the socket's events ------------------------------------------------------

  /**
   * The socket's listeners, shared by every connection (`this` is the socket, which knows its connection): an
   * idle connection holds no closures of its own for them.
   */
  static readonly #listeners = {
    message(this: OwnedSocket, data: WebSocket.RawData, isBinary: boolean) {
      const connection = this[owner]!
      try {
        connection.#onMessage(data, isBinary)
      } catch (error) {
        // Thrown in `ws`'s callback, it would end the process.
        connection.failed("taking a frame from the client", error)
      }
    },
    seen(this: OwnedSocket) {
      this[owner]!.#lastSeen = Date.now()
    },
    error(this: OwnedSocket, error: Error & { code?: string }) {
      const connection = this[owner]!
      // `ws` closes the connection itself after these, with the status code it attaches (1009, 1007, 1002).
      connection.#closeCode ??= statusCodeOf(error)
      connection.erred(
        error.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH"
          ? "message_too_big"
          : error.code === "WS_ERR_INVALID_UTF8"
          ? "invalid_payload"
          : error.code?.startsWith("WS_ERR_")
          ? "protocol_error"
          : "error"
      )
    },
    close(this: OwnedSocket, code: number) {
      const connection = this[owner]!
      // The code of the close frame that ended the connection, unless the hub sent its own first.
      connection.#closeCode ??= code
      try {
        connection.socketClosed()
      } catch (error) {
        connection.failed("ending the connection after its socket closed", error)
      }
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

  /** Registers the client, resuming from the URL's `since` unless its resumes are spent. */
  begin(since: string | undefined): void {
    // A `?since=` over the resume rate: the client is told, and goes live instead.
    const refusal = since === undefined ? undefined : this.takeResume()
    this.start({ allowed: this.principal?.eventTypes, resuming: since !== undefined && refusal === undefined }, since, refusal)
  }

  #onMessage(data: WebSocket.RawData, isBinary: boolean): void {
    this.#lastSeen = Date.now()
    // Flooded, or ending: nothing more is read.
    if (this.state >= State.flooded) return
    const verdict = (this.#rate ??= new MessageRate(this.services.limits.settings, this.#openedAt)).check(this.#lastSeen)
    if (verdict === "drop") return
    if (verdict === "close") {
      // Closed after the requests already queued (and the rate_limited warning) have been answered.
      this.services.limits.refused("rate_limit_closed")
      const idle = this.state === State.idle
      this.state = State.flooded
      if (idle) this.activate(this.next)
      return
    }
    // Counted before it is delivered: an idle connection answers it at once.
    if (++this.#unanswered >= inboxHighWater && !this.ws.isPaused) this.ws.pause()
    if (verdict === "accept") return this.#deliver({ data: toBuffer(data), isBinary })
    this.services.limits.refused("rate_limited")
    this.#deliver({
      data: Buffer.alloc(0),
      isBinary: false,
      refusal: {
        code: "rate_limited",
        message: `more than ${this.services.limits.settings.messageRate} messages per second: messages are dropped; ` +
          "the connection is closed (1008) if this goes on"
      }
    })
  }

  #deliver(item: Incoming): void {
    if (this.state !== State.idle) return void this.#inbox.push(item)
    // Idle: answered here if nothing in the answer waits, else by a fiber that then handles what follows.
    let rest: Answer
    try {
      rest = this.#requestsOf().handle(item)
    } catch (error) {
      // A defect in a request's answer ends only this connection, as it would in a fiber (1011, logged).
      rest = Effect.die(error)
    }
    if (rest === undefined) this.#countAnswered()
    else this.activate(Effect.andThen(rest, this.#answered))
  }

  #requestsOf(): Requests {
    return this.#requests ??= new Requests(this)
  }

  #countAnswered(): void {
    if (--this.#unanswered <= inboxLowWater && this.ws.isPaused) this.ws.resume()
  }

  // --- the connection's fiber --------------------------------------------------------

  /** Handles the client's frames, one at a time and in order, until none is left (the fiber then ends). */
  protected override continue(): Effect.Effect<void> {
    const incoming = this.#inbox.shift()
    if (incoming !== undefined) {
      const rest = this.#requestsOf().handle(incoming)
      return rest === undefined ? this.#answered : Effect.andThen(rest, this.#answered)
    }
    if (this.state !== State.flooded) return this.idle()
    this.kick("rate_limited")
    return this.next
  }

  readonly #answered: Effect.Effect<void> = Effect.suspend(() => {
    this.#countAnswered()
    return this.next
  })

  /** Spends a resume of the connection's and its address's allowance; the refusal when there is none left. */
  takeResume(): ErrorData | undefined {
    const { resumeRate } = this.services.limits.settings
    return Resume.takeAllowance(this, this.#resumes ??= new TokenBucket(resumeRate / 60, resumeRate, Date.now()))
  }

  // --- its end --------------------------------------------------------------------

  /** The close frame the hub sends for `reason`: its code is what the end's log line says. */
  protected override closing(reason: DisconnectReason): void {
    this.#closeCode = WebSocketTransport.closeFrameFor(reason).code
  }

  protected override endAnnotations(reason: DisconnectReason): Readonly<Record<string, unknown>> {
    return { reason, code: this.#closeCode }
  }
}
