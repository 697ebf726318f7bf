/**
 * One Server-Sent Events stream, run as its own fiber for as long as the
 * response lives. It is a hub member like a WebSocket connection (see
 * Connection.ts): registered with its subscription and rooms (from the URL)
 * and its token's `event_types`, resumed from `since` / `Last-Event-ID`, fed
 * through a bounded `Outbox` (written by the hub's `Flusher` with each
 * message's SSE encoding) under the same slow-consumer rule. The client sends
 * nothing, so there is no reader: the fiber waits for the stream to end.
 *
 * The stream ends (the response is ended, and `EventSource` reconnects on its
 * own with `Last-Event-ID`) when the client goes away, when the hub drops it
 * (slow consumer, stuck write), when its token expires (the client reconnects
 * with a fresh one) and when the server shuts down.
 */
import { Cause, Duration, Effect, Exit, Scope } from "effect"
import type { ServerResponse } from "node:http"
import { HubConfig } from "../config/Config.js"
import { type ClientId, type Connection, HubClients } from "../hub/Hub.js"
import type { Outbox } from "../hub/Outbox.js"
import { HubMetrics } from "../ops/Metrics.js"
import { type DisconnectReason, HubMessageType, Outbound } from "../protocol/Protocol.js"
import type { Principal } from "../security/Auth.js"
import { Limits } from "../security/Limits.js"
import { SseTransport } from "./SseTransport.js"

/** What the stream's request said, checked by the endpoint (see SseServer.ts). */
export interface SseHandshake {
  readonly remoteAddress: string
  readonly principal: Principal | undefined
  /** Resume after this event id (`Last-Event-ID`, else `?since=`). */
  readonly since: string | undefined
  /** `?types=`; `undefined`: everything (the default `#`). */
  readonly patterns: ReadonlyArray<string> | undefined
  /** `?rooms=`; `undefined`: every room. */
  readonly rooms: ReadonlyArray<string> | undefined
}

interface Services {
  readonly hub: HubClients["Type"]
  readonly config: HubConfig["Type"]
  readonly metrics: HubMetrics["Type"]
  readonly limits: Limits["Type"]
}

/** Serves one stream (its `200` and `retry:` already written) until it ends. */
export const serve = (response: ServerResponse, info: SseHandshake) =>
  Effect.acquireUseRelease(
    Scope.make(),
    (scope) => connect(response, info, scope),
    (scope, exit) =>
      Effect.zipRight(
        Exit.isFailure(exit) && Cause.isDie(exit.cause)
          ? Effect.logError("SSE stream failed", exit.cause)
          : Effect.void,
        Scope.close(scope, exit)
      )
  )

/** One stream's state; its callbacks, the hub and its fiber run one at a time on the event loop. */
class SseConnection implements Connection {
  readonly transport = "sse" as const
  readonly annotations: Readonly<Record<string, unknown>>
  readonly #outbox: Outbox
  readonly #transport: SseTransport
  readonly #services: Services
  readonly #keepAliveMillis: number
  #lastKeepAlive: number
  /** Why the stream ends, once it does. */
  #leaving: DisconnectReason | undefined = undefined
  #wake: (() => void) | undefined = undefined

  constructor(
    readonly id: ClientId,
    readonly response: ServerResponse,
    readonly principal: Principal | undefined,
    remoteAddress: string,
    services: Services
  ) {
    this.annotations = { client_id: id, remote_address: remoteAddress, transport: "sse" }
    this.#services = services
    this.#transport = new SseTransport(response)
    this.#outbox = services.hub.outbox(this.#transport)
    this.#keepAliveMillis = Duration.toMillis(services.config.sseKeepAlive)
    this.#lastKeepAlive = Date.now()
  }

  // --- what the hub calls (Connection) ----------------------------------------

  offer(message: Outbound): boolean {
    return this.#leaving !== undefined || this.#outbox.offer(message)
  }

  kick(reason: DisconnectReason): void {
    if (this.#leaving !== undefined) return
    this.#leaving = reason
    this.#end()
  }

  whenBelow(size: number, ready: () => void): void {
    this.#outbox.whenBelow(size, ready)
  }

  backlog(): number {
    return this.#outbox.size
  }

  keepAlive(now: number): void {
    if (this.#leaving !== undefined || !this.#open) return
    if (this.principal !== undefined && now >= this.principal.expiresAt) {
      this.#services.limits.refused("token_expired")
      return this.kick("token_expired")
    }
    const blockedSince = this.#outbox.blockedSince
    if (blockedSince !== undefined) {
      if (now - blockedSince >= Duration.toMillis(this.#services.config.writeTimeout)) this.kick("write_timeout")
    } else if (now - this.#lastKeepAlive >= this.#keepAliveMillis) {
      this.#lastKeepAlive = now
      // Only on an idle stream: pending messages are about to be written anyway. Whole messages only are ever
      // written, so the comment cannot split one.
      if (this.#outbox.size === 0) this.#transport.keepAlive()
    }
  }

  get #open(): boolean {
    return !this.response.destroyed && !this.response.writableEnded
  }

  /** Listens to the response: the only place its callbacks are set. */
  listen(): void {
    this.response.on("error", () => undefined)
    this.response.on("close", () => {
      this.#leaving ??= "client_closed"
      this.#end()
    })
  }

  #end(): void {
    const wake = this.#wake
    this.#wake = undefined
    wake?.()
  }

  /** Completes when the stream is over (the client went away, or the hub kicked it). */
  // No canceler, as the WebSocket reader: an interrupted fiber ignores a late wake-up.
  readonly ended = Effect.async<void>((resume) => {
    if (this.#leaving !== undefined) return resume(Effect.void)
    this.#wake = () => resume(Effect.void)
  })

  /** A refusal of the `since` (a `hub.error`), should the hub refuse one the endpoint let through. */
  refuse(message: string): Effect.Effect<void> {
    return Effect.sync(() => {
      this.offer(Outbound.message(HubMessageType.error, { code: "invalid_request", message }, new Date()))
    })
  }

  /** Ends the response (what is queued goes out first), then logs why. */
  close(exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.#leaving ??= !this.#open ? "client_closed" : Exit.isInterrupted(exit) ? "shutdown" : "error"
      const leaving = this.#leaving
      // A stream that does not read is destroyed by its transport: nothing written before then would reach it.
      if (this.#open) this.#outbox.flush()
      return Effect.zipRight(this.#transport.close(leaving), Effect.suspend(() => {
        this.#services.metrics.disconnected(leaving)
        const log = leaving === "client_closed" || leaving === "shutdown" ? Effect.logDebug : Effect.logInfo
        return log("client disconnected").pipe(Effect.annotateLogs({ ...this.annotations, reason: leaving }))
      }))
    })
  }
}

/** Sets the stream up in `scope` and returns what waits for its end. */
const connect = (response: ServerResponse, info: SseHandshake, scope: Scope.Scope) =>
  Effect.gen(function*() {
    const hub = yield* HubClients
    const services: Services = { hub, config: yield* HubConfig, metrics: yield* HubMetrics, limits: yield* Limits }
    const connection = new SseConnection(yield* hub.nextId, response, info.principal, info.remoteAddress, services)
    connection.listen()
    // Finalizers run in reverse: leave the hub, then end the response.
    yield* Scope.addFinalizerExit(scope, (exit) => connection.close(exit))
    yield* Scope.addFinalizer(scope, Effect.suspend(() => hub.unregister(connection.id)))
    yield* hub.register(connection, {
      allowed: info.principal?.eventTypes,
      resuming: info.since !== undefined,
      patterns: info.patterns,
      rooms: info.rooms
    })
    yield* Effect.logDebug("client connected").pipe(Effect.annotateLogs(connection.annotations))
    if (info.since !== undefined) {
      yield* hub.resume(connection.id, info.since).pipe(
        Effect.matchEffect({
          onFailure: (error) => connection.refuse(error.message),
          onSuccess: (resume) => resume.start
        })
      )
    }
    return connection.ended
  }).pipe(Effect.flatten)
