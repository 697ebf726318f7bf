/**
 * A client's requests: what the hub does with each frame from a client, one
 * at a time, in order.
 *
 * Most requests need no waiting (a `subscribe`, `unsubscribe`, `join`,
 * `leave` or ping whose reply finds room in the send buffer): they are
 * answered at once, in the socket's callback, and a connection that only
 * makes those never starts a fiber. The others (a resume, a token refresh, a
 * publish awaiting the broker, a reply waiting for room, a refusal, which is
 * logged) return the effect that answers them, for the connection's fiber.
 *
 * The handlers are methods of one object per connection rather than closures
 * made for each connection: thousands of idle connections each keep one small
 * object instead of a dozen functions.
 */
import { Effect, Result } from "effect"
import type { Auth, Principal } from "../security/Auth.js"
import { checkPatterns, checkRooms } from "../security/Subscription.js"
import type { HubSettings } from "../config/Config.js"
import type { HubClients } from "../hub/Hub.js"
import type { Limits } from "../security/Limits.js"
import {
  type ClientRequest,
  type ErrorData,
  HubMessageType,
  Outbound,
  parseRequest,
  pongMessage,
  type Publish,
  TextPing
} from "../protocol/Protocol.js"
import type { Publisher } from "../rabbitmq/Publisher.js"
import * as Topic from "../protocol/Topic.js"
import * as Resume from "./Resume.js"

/** A frame from the client, as its connection received it. */
export interface Incoming {
  readonly data: Buffer
  readonly isBinary: boolean
  /** Set when the frame was dropped before being read (rate limit): only this answer is sent. */
  readonly refusal?: ErrorData
}

/** What is left of answering a request: nothing (`undefined`: answered already), or an effect for the fiber. */
export type Answer = Effect.Effect<void> | undefined

/** The services requests use (a WebSocket connection's, see WebSocketConnection.ts). */
export interface RequestServices {
  readonly hub: HubClients["Service"]
  readonly config: HubSettings
  readonly auth: Auth["Service"]
  readonly limits: Limits["Service"]
  /** Where clients' `publish` goes (disabled without a broker: it then fails with `publish_failed`). */
  readonly publisher: Publisher["Service"]
  /** Requests are traced (Tracing.ts): each is then answered inside its span, in the fiber. */
  readonly tracing: boolean
}

/** What a connection's requests act on: the connection (see Connection.ts). */
export interface RequestContext extends Resume.Resuming {
  readonly annotations: Readonly<Record<string, unknown>>
  readonly services: RequestServices
  /** Queues a message for the client if its send buffer has room now; false otherwise (nothing queued). */
  sendNow(message: Outbound): boolean
  /** Queues a message for the client once its send buffer has room (after `sendNow` found none). */
  sendWhenRoom(message: Outbound): Effect.Effect<void>
  /** Who connected (with authentication); replaced by a token refresh. */
  principal: Principal | undefined
  /** Spends a resume of the connection's and its address's allowance; the refusal when there is none left. */
  takeResume(): ErrorData | undefined
}

export class Requests {
  constructor(readonly context: RequestContext) {}

  /** Answers one frame, at once if nothing in it waits (see above). */
  handle({ data, isBinary, refusal }: Incoming): Answer {
    const { id } = this.context
    if (refusal !== undefined) return this.refuse(refusal)
    if (isBinary) {
      return this.refuse({ code: "binary_not_supported", message: "binary frames are not supported; send JSON text" })
    }
    const text = data.toString("utf8")
    if (text === TextPing) return this.answer(pongMessage)
    const request = parseRequest(text)
    if (Result.isFailure(request)) return this.refuse(request.failure)
    const right = request.success
    if (!this.context.services.tracing) return this.dispatch(right)
    // A span for what the client asks, with the whole answer inside it.
    const name = right.action === "subscribe" && right.since !== undefined ? "resume" : right.action
    return Effect.withSpan(Effect.suspend(() => this.dispatch(right) ?? Effect.void), `hub.request.${name}`, {
      attributes: { "hub.client_id": id, "hub.request.action": name },
      captureStackTrace: false
    })
  }

  private dispatch(request: ClientRequest): Answer {
    const { id, services: { hub } } = this.context
    switch (request.action) {
      case "auth":
        return this.refresh(request.token)
      case "publish":
        return this.publish(request)
      case "unsubscribe":
        return this.replyNow(HubMessageType.unsubscribed, { event_types: hub.unsafeUnsubscribe(id, request.event_types) })
      case "join":
        return this.join(request.rooms)
      case "leave":
        return this.replyNow(HubMessageType.rooms, { rooms: hub.unsafeLeave(id, request.rooms) })
      case "subscribe": {
        const { event_types, since } = request
        const refused = this.checkSubscription(event_types)
        if (refused !== undefined) return this.refuse(refused)
        if (since !== undefined) return this.subscribeSince(event_types, since)
        return Result.match(hub.unsafeSubscribe(id, event_types), {
          onFailure: (error) => Resume.tooManySubscriptions(this.context, error),
          onSuccess: (now) => this.replyNow(HubMessageType.subscribed, { event_types: now })
        })
      }
    }
  }

  /** Queues `message` at once if the send buffer has room (the usual case); otherwise the effect that waits. */
  private answer(message: Outbound): Answer {
    return this.context.sendNow(message) ? undefined : this.context.sendWhenRoom(message)
  }

  /** A reply, stamped with the wall clock (as the replay's markers are; events take the hub's `Clock`). */
  private replyNow(type: string, data: unknown): Answer {
    return this.answer(Outbound.message(type, data, new Date()))
  }

  private reply(type: string, data: unknown): Effect.Effect<void> {
    return this.context.reply(type, data)
  }

  private refuse(error: ErrorData): Effect.Effect<void> {
    return this.context.refuse(error)
  }

  /** The pattern limits and the token's `event_types`: the reason to refuse a `subscribe`, if any. */
  private checkSubscription(patterns: ReadonlyArray<string>): ErrorData | undefined {
    return checkPatterns(this.context.services.limits, this.context.principal, patterns)
  }

  /** `subscribe` with `since`: the resume path (Resume.ts), once the resume allowance is spent. */
  private subscribeSince(patterns: ReadonlyArray<string>, since: string): Effect.Effect<void> {
    // Before anything changes: a refused resume leaves the subscription (and a resume under way) as it was.
    const refusal = this.context.takeResume()
    return refusal !== undefined ? this.refuse(refusal) : Resume.resume(this.context, since, patterns)
  }

  /** `{"action":"join"}`: rooms named `<key>:<value>` with a key of `ROOM_KEYS`. */
  private join(rooms: ReadonlyArray<string>): Answer {
    const { id, services: { config, hub } } = this.context
    const refused = checkRooms(config.roomKeys, rooms)
    if (refused !== undefined) return this.refuse(refused)
    return Result.match(hub.unsafeJoin(id, rooms), {
      onFailure: (error) => this.refuse({ code: "too_many_rooms", message: error.message }),
      onSuccess: (now) => this.replyNow(HubMessageType.rooms, { rooms: now })
    })
  }

  /** `{"action":"auth"}`: a new token for this connection, with the same subject. */
  private refresh(token: string): Effect.Effect<void> {
    const context = this.context
    const { auth, hub, limits } = context.services
    if (!auth.enabled) {
      return this.refuse({ code: "auth_disabled", message: "authentication is not enabled on this hub" })
    }
    return auth.verify(token).pipe(
      Effect.flatMap((next) =>
        context.principal !== undefined && next.subject !== context.principal.subject
          ? Effect.fail({ message: "the new token's subject (sub) differs from the connection's" })
          : Effect.succeed(next)
      ),
      Effect.matchEffect({
        onFailure: (error) => {
          limits.refused("token_refresh_refused")
          return this.refuse({ code: "invalid_token", message: `${error.message}; the current token stays in effect` })
        },
        onSuccess: (next) => {
          context.principal = next
          return Effect.andThen(
            hub.authorize(context.id, next.eventTypes),
            this.reply(HubMessageType.authenticated, { expires_at: new Date(next.expiresAt).toISOString() })
          )
        }
      })
    )
  }

  /**
   * `{"action":"publish"}`: to the exchange, with the type as routing key, if `WS_PUBLISH_TYPES` allows
   * it. The connection waits for the broker's confirmation, so a client's publishes stay in order.
   */
  private publish({ data, type }: Publish): Effect.Effect<void> {
    const { annotations, services: { config, limits, publisher } } = this.context
    if (!config.clientPublishTypes.some((pattern) => Topic.matches(pattern, type))) {
      limits.refused("publish_forbidden")
      return this.refuse({
        code: "publish_forbidden",
        message: config.clientPublishTypes.length === 0
          ? "publishing is not enabled on this hub (WS_PUBLISH_TYPES)"
          : `${JSON.stringify(type)} is not a type clients may publish; allowed: ${config.clientPublishTypes.join(", ")}`
      })
    }
    return publisher.publish(type, Buffer.from(JSON.stringify(data))).pipe(
      Effect.matchEffect({
        onFailure: (error) =>
          Effect.andThen(
            Effect.logWarning("client publish failed").pipe(
              Effect.annotateLogs({ ...annotations, event_type: type, reason: error.message })
            ),
            this.refuse({ code: "publish_failed", message: error.message })
          ),
        onSuccess: () => this.reply(HubMessageType.published, { type })
      })
    )
  }
}
