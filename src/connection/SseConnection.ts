/**
 * One Server-Sent Events stream (see Connection.ts for what it shares with a
 * WebSocket connection): a hub member registered with its subscription and
 * rooms (from the URL) and its token's `event_types`, resumed from `since` /
 * `Last-Event-ID`, fed through a bounded `Outbox` written with each message's
 * SSE encoding (SseTransport.ts) under the same slow-consumer rule. The
 * client sends nothing, so a stream has no inbox: a fiber runs only for its
 * start (a resume) and its end.
 *
 * The stream ends (the response is ended, and `EventSource` reconnects on its
 * own with `Last-Event-ID`) when the client goes away, when the hub drops it
 * (slow consumer, stuck write), when its token expires (the client reconnects
 * with a fresh one) and when the server shuts down.
 */
import { Duration } from "effect"
import type { ServerResponse } from "node:http"
import type { Principal } from "../security/Auth.js"
import { BaseConnection, type Services as ConnectionServices } from "./Connection.js"
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

export interface Services extends ConnectionServices {
  /** The streams open on this server, which its shutdown ends. */
  readonly open: Set<{ readonly shutdown: () => void }>
}

/** Serves one stream (its `200` and `retry:` already written) until it ends. */
export const serve = (services: Services, response: ServerResponse, info: SseHandshake): { readonly shutdown: () => void } => {
  const connection = new SseConnection(services, response, info)
  connection.listen()
  connection.begin(info)
  return connection
}

class SseConnection extends BaseConnection<Services> {
  readonly #transport: SseTransport
  #lastKeepAlive = Date.now()

  constructor(services: Services, readonly response: ServerResponse, info: SseHandshake) {
    const transport = new SseTransport(response)
    super(services, transport, info.remoteAddress, info.principal)
    this.#transport = transport
  }

  get transport(): "sse" {
    return "sse"
  }

  override get annotations(): Readonly<Record<string, unknown>> {
    return { client_id: this.id, remote_address: this.remoteAddress, transport: "sse" }
  }

  /** Listens to the response: the only place its callbacks are set. */
  listen(): void {
    this.response.on("error", () => undefined)
    this.response.on("close", () => {
      try {
        this.socketClosed()
      } catch (error) {
        // Thrown in the response's callback, it would end the process.
        this.failed("ending the stream after its connection closed", error)
      }
    })
  }

  /** Registers the stream with the subscription its URL asked for, resuming from `since`. */
  begin(info: SseHandshake): void {
    this.services.open.add(this)
    const resuming = info.since !== undefined
    this.start({ allowed: info.principal?.eventTypes, resuming, patterns: info.patterns, rooms: info.rooms }, info.since, undefined)
  }

  protected override left(): void {
    this.services.open.delete(this)
  }

  /** A comment on a stream idle for `SSE_KEEPALIVE`, unless it is blocked. */
  protected beat(now: number, blocked: boolean): void {
    if (blocked || now - this.#lastKeepAlive < Duration.toMillis(this.services.config.sseKeepAlive)) return
    this.#lastKeepAlive = now
    // Only on an idle stream: pending messages are about to be written anyway.
    if (this.outbox.size === 0) this.#transport.keepAlive()
  }
}
