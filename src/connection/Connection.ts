/**
 * One WebSocket connection, run as its own fiber for as long as the socket
 * lives. The fiber is the connection's reader: it handles the client's
 * requests one at a time, in order. Messages to the client go through its
 * bounded `Outbox`, written in corked batches (see Outbox.ts). The fiber's
 * scope registers the client with the hub and, when the fiber ends for any
 * reason, unregisters it and closes the socket with a close code that says why.
 */
import { Cause, Duration, Effect, Exit, Option, Scope } from "effect"
import type { Duplex } from "node:stream"
import { WebSocket } from "ws"
import { Auth, type Principal } from "../security/Auth.js"
import { HubConfig } from "../config/Config.js"
import { type Connection, HubClients } from "../hub/Hub.js"
import { Limits, MessageRate } from "../security/Limits.js"
import { HubMetrics } from "../ops/Metrics.js"
import { Outbox } from "../hub/Outbox.js"
import { closeFor, CloseCode, type DisconnectReason, type Outbound } from "../protocol/Protocol.js"
import { Publisher } from "../rabbitmq/Publisher.js"
import { type Incoming, Requests, type RequestContext } from "./Requests.js"

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

/**
 * Serves one upgraded connection until it closes. `socket` is the connection's
 * TCP socket, to which the outbox writes pre-built frames directly.
 */
export const serve = (ws: WebSocket, socket: Duplex, info: Handshake) =>
  // `Effect.scoped` without putting the scope in the fiber's context: that copy of the context and of the fiber's
  // refs (and `Effect.addFinalizer`'s snapshot of them) cost about 5 KB per idle connection (heap snapshots).
  Effect.acquireUseRelease(
    Scope.make(),
    (scope) => connect(ws, socket, info, scope),
    (scope, exit) => Effect.zipRight(reportDefect(exit), Scope.close(scope, exit))
  )

/**
 * The connection is closed with 1011 by its own finalizer; the cause must not go unseen. (Logged here rather than
 * with `Effect.tapDefect` around the fiber, which would stay on every idle connection's stack.)
 */
const reportDefect = (exit: Exit.Exit<unknown, unknown>) =>
  Exit.isFailure(exit) && Cause.isDie(exit.cause)
    ? Effect.logError("client connection failed", exit.cause)
    : Effect.void

/** Sets the connection up in `scope` and returns its reader. */
const connect = (ws: WebSocket, socket: Duplex, info: Handshake, scope: Scope.Scope) =>
  Effect.gen(function*() {
    const hub = yield* HubClients
    const config = yield* HubConfig
    const metrics = yield* HubMetrics
    const auth = yield* Auth
    const limits = yield* Limits
    // Optional: without a publisher (an embedding program that provides none), `publish` is refused.
    const publisher = yield* Effect.serviceOption(Publisher)
    const id = yield* hub.nextId
    const annotations = { client_id: id, remote_address: info.remoteAddress ?? "unknown" }
    const outbox = new Outbox(hub.flusher, ws, socket, config.sendBuffer, metrics.delivered)
    // Frames from the client, then `ended` once the connection is over (closed, or kicked by the hub).
    const inbox: Array<Incoming | typeof ended | typeof floodClose> = []
    let wakeReader: (() => void) | undefined
    const deliver = (item: Incoming | typeof ended | typeof floodClose) => {
      inbox.push(item)
      const wake = wakeReader
      wakeReader = undefined
      wake?.()
    }
    // No canceler: an interrupted reader never reads again, and its fiber ignores a late wake-up (Effect calls an
    // async's resume at most once, interruption included). A canceler would keep an `onInterrupt` frame on the
    // stack of every idle connection (about 1 KB each, measured).
    const nextIncoming = Effect.async<Incoming | typeof ended | typeof floodClose>((resume) => {
      if (inbox.length > 0) return resume(Effect.succeed(inbox.shift()!))
      wakeReader = () => resume(Effect.succeed(inbox.shift()!))
    })
    const pingPeriod = Duration.toMillis(config.pingPeriod)
    const pongTimeout = Duration.toMillis(config.pongTimeout)
    const writeTimeout = Duration.toMillis(config.writeTimeout)
    const closeHandshake = Duration.min(config.writeTimeout, maxCloseHandshake)

    let lastSeen = Date.now()
    let lastPing = lastSeen
    let leaving: DisconnectReason | undefined
    let closeCode: number | undefined

    // --- security: token expiry, first-message deadline, message rate ---------
    const openedAt = lastSeen
    const firstMessageTimeout = Option.map(limits.settings.firstMessageTimeout, Duration.toMillis)
    let messageReceived = false
    const rate = new MessageRate(limits.settings, openedAt)
    /** Kicks the client if its token expired or it said nothing in time; true when it did. */
    const securityDue = (now: number): boolean => {
      const principal = context.principal
      if (principal !== undefined && now >= principal.expiresAt) {
        limits.refused("token_expired")
        kick("token_expired")
        return true
      }
      if (!messageReceived && Option.isSome(firstMessageTimeout) && now - openedAt >= firstMessageTimeout.value) {
        limits.refused("first_message_timeout")
        kick("first_message_timeout")
        return true
      }
      return false
    }

    /** The reader's reply that waits for room in the send buffer, if any (see `send`). */
    let waitingSend: (() => void) | undefined
    /** The connection is over: the reader finishes, even from inside a reply that waits for room. */
    const end = () => {
      deliver(ended)
      const release = waitingSend
      waitingSend = undefined
      release?.()
    }
    const kick = (reason: DisconnectReason) => {
      if (leaving !== undefined) return
      leaving = reason
      end()
    }

    const connection: Connection = {
      id,
      offer: (message) => leaving !== undefined || outbox.offer(message),
      kick,
      whenBelow: (size, ready) => outbox.whenBelow(size, ready),
      backlog: () => outbox.size,
      keepAlive: (now) => {
        if (leaving !== undefined || ws.readyState !== WebSocket.OPEN) return
        if (securityDue(now)) return
        const blockedSince = outbox.blockedSince
        if (blockedSince !== undefined && now - blockedSince >= writeTimeout) kick("write_timeout")
        else if (now - lastSeen >= pongTimeout) kick("pong_timeout")
        else if (now - lastPing >= pingPeriod) {
          lastPing = now
          ws.ping()
        }
      }
    }

    // --- the socket's callbacks: the only place they exist --------------------
    let pending = 0
    /** The client went on flooding after `rate_limited`: nothing more is read, and it is closed (1008). */
    let flooded = false
    ws.on("message", (data, isBinary) => {
      lastSeen = Date.now()
      messageReceived = true
      if (flooded) return
      const verdict = rate.check(lastSeen)
      if (verdict !== "accept") {
        if (verdict === "drop") return
        if (verdict === "close") {
          // Closed after the requests already queued (and the rate_limited warning) have been answered.
          flooded = true
          limits.refused("rate_limit_closed")
          return deliver(floodClose)
        }
        limits.refused("rate_limited")
        deliver({
          data: Buffer.alloc(0),
          isBinary: false,
          refusal: {
            code: "rate_limited",
            message: `more than ${limits.settings.messageRate} messages per second: messages are dropped; ` +
              "the connection is closed (1008) if this goes on"
          }
        })
      } else deliver({ data: toBuffer(data), isBinary })
      if (++pending >= inboxHighWater && !ws.isPaused) ws.pause()
    })
    const seen = () => {
      lastSeen = Date.now()
    }
    ws.on("pong", seen)
    ws.on("ping", seen)
    ws.on("error", (error: Error & { code?: string }) => {
      // `ws` closes the connection itself after these, with the status code it attaches (1009, 1007, 1002).
      leaving ??= error.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH"
        ? "message_too_big"
        : error.code === "WS_ERR_INVALID_UTF8"
        ? "invalid_payload"
        : error.code?.startsWith("WS_ERR_")
        ? "protocol_error"
        : "error"
      closeCode ??= statusCodeOf(error)
    })
    ws.on("close", (code) => {
      // The code of the close frame that ended the connection, unless the hub sent its own first.
      closeCode ??= code
      leaving ??= "client_closed"
      end()
    })

    /**
     * Replies wait for room in the send buffer: a client that sends many
     * requests at once is slowed down (its socket is no longer read while the
     * reader waits), not disconnected. Only broadcasts treat a full buffer as
     * a slow consumer.
     */
    const send = (message: Outbound) =>
      Effect.async<void>((resume) => {
        if (leaving !== undefined) return resume(Effect.void)
        let done = false
        const finish = () => {
          if (done) return
          done = true
          waitingSend = undefined
          resume(Effect.void)
        }
        // A buffer that never drains (the client stopped reading) must not hold the reader: `end` releases it.
        waitingSend = finish
        // Another writer (a replay) may take the room first: then wait again.
        const attempt = () => {
          if (done) return
          if (outbox.offer(message)) finish()
          else outbox.whenRoom(attempt)
        }
        outbox.whenRoom(attempt)
      })
    const context: RequestContext = { id, annotations, hub, config, auth, limits, publisher, send, principal: info.principal }
    const requests = new Requests(context)

    /** Handles the client's frames until the connection ends. */
    const read: Effect.Effect<void> = Effect.flatMap(nextIncoming, (incoming) => {
      if (incoming === ended || leaving !== undefined) return Effect.void
      if (incoming === floodClose) return Effect.sync(() => kick("rate_limited"))
      return requests.handle(incoming).pipe(
        Effect.zipRight(Effect.sync(() => {
          if (--pending <= inboxLowWater && ws.isPaused) ws.resume()
        })),
        Effect.zipRight(Effect.suspend(() => read))
      )
    })

    // --- lifetime --------------------------------------------------------------
    // Finalizers run in reverse: leave the hub, then close the socket.
    yield* Scope.addFinalizerExit(scope, (exit) =>
      Effect.gen(function*() {
        // The HTTP server interrupts this fiber when the peer drops the socket, so look at the socket first.
        leaving ??= ws.readyState !== WebSocket.OPEN || socket.destroyed
          ? "client_closed"
          : Exit.isInterrupted(exit)
          ? "shutdown"
          : "error"
        if (ws.readyState === WebSocket.OPEN) {
          // What is already queued for the client (replies, events) goes out before the close frame.
          outbox.flush()
          const close = leaving in closeFor
            ? closeFor[leaving as keyof typeof closeFor]
            : { code: CloseCode.internalError, reason: "internal error" }
          ws.close(close.code, close.reason)
          closeCode = close.code
        }
        if (!(yield* waitClosed(ws, closeHandshake))) {
          ws.terminate()
          yield* waitClosed(ws, closeHandshake)
        }
        metrics.disconnected(leaving)
        const log = leaving === "client_closed" || leaving === "shutdown" ? Effect.logDebug : Effect.logInfo
        yield* log("client disconnected").pipe(Effect.annotateLogs({ ...annotations, reason: leaving, code: closeCode }))
      })
    )
    // Unregistering a client that is not registered does nothing, so the finalizer can come first.
    yield* Scope.addFinalizer(scope, Effect.suspend(() => hub.unregister(id)))
    yield* hub.register(connection, { allowed: context.principal?.eventTypes, resuming: info.since !== undefined })
    yield* Effect.logDebug("client connected").pipe(Effect.annotateLogs(annotations))
    if (info.since !== undefined) {
      yield* hub.resume(id, info.since).pipe(
        Effect.matchEffect({
          onFailure: (error) => requests.refuse({ code: "invalid_request", message: error.message }),
          onSuccess: (resume) => resume.start
        })
      )
    }
    // The reader runs after this generator has returned, so that an idle connection does not keep it alive.
    return read
  }).pipe(Effect.flatten)

/**
 * Waits for the socket to close, at most `timeout`. It keeps its own timer
 * rather than relying on interruption: it runs in a finalizer, which is
 * uninterruptible, and the HTTP server may already be interrupting this fiber.
 */
const waitClosed = (ws: WebSocket, timeout: Duration.Duration) =>
  Effect.async<boolean>((resume) => {
    if (ws.readyState === WebSocket.CLOSED) return resume(Effect.succeed(true))
    const onClose = () => {
      clearTimeout(timer)
      resume(Effect.succeed(true))
    }
    const timer = setTimeout(() => {
      ws.off("close", onClose)
      resume(Effect.succeed(false))
    }, Duration.toMillis(timeout))
    ws.once("close", onClose)
  })

/** The inbox's end marker. */
const ended = Symbol("ended")
/** The inbox's marker for a client closed for flooding, once the requests before it are answered. */
const floodClose = Symbol("floodClose")
