/**
 * `POST /api/v1/events` (when `PUBLISH_TOKEN` is set): publishes to the
 * RabbitMQ exchange when a broker is configured, so that every instance
 * delivers the events, and broadcasts to this instance's clients otherwise
 * (and through the primary to those of the host's other `HUB_WORKERS`).
 */
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import { Effect, Result, Option, Redacted, Schema } from "effect"
import { createHash, timingSafeEqual } from "node:crypto"
import { HubConfig } from "../config/Config.js"
import { Hub } from "../hub/Hub.js"
import * as Tracing from "../ops/Tracing.js"
import { EventType, formatParseError } from "../protocol/Protocol.js"
import { HostView } from "../host/HostView.js"
import { Publisher } from "../rabbitmq/Publisher.js"
import { Limits } from "../security/Limits.js"
import * as Body from "./Body.js"
import { problem } from "./Problem.js"

/** One event in the body of `POST /api/v1/events`. */
export const PublishedEvent = Schema.Struct({
  type: EventType,
  data: Schema.Record(Schema.String, Schema.Unknown)
})

/** Most events in one `POST /api/v1/events`. */
export const maxEventsPerPublish = 1000

/** Body of `POST /api/v1/events`: one event, or an array of events broadcast in order. */
export const PublishRequest = Schema.Union([
  PublishedEvent,
  Schema.Array(PublishedEvent).check(Schema.isMinLength(1), Schema.isMaxLength(maxEventsPerPublish))
])

type Events = ReadonlyArray<typeof PublishedEvent.Type>

/** Decodes one event or an array of them; each shape is decoded on its own, so errors name the field at fault. */
const decodePublish = (json: unknown) =>
  Array.isArray(json)
    ? Schema.decodeUnknownResult(PublishRequest.members[1])(json)
    : Result.map(Schema.decodeUnknownResult(PublishedEvent)(json), (event) => [event])

/** Compares two secrets in constant time (hashing first, so lengths do not leak either). */
const sameSecret = (given: string, expected: string) =>
  timingSafeEqual(createHash("sha256").update(given).digest(), createHash("sha256").update(expected).digest())

/** The answer to a publish request when publishing is off: what is off and how to enable it. */
export const publishDisabled = Effect.succeed(problem(
  404,
  "publishing is disabled on this hub: set PUBLISH_TOKEN to enable POST /api/v1/events " +
    "(then send Authorization: Bearer <PUBLISH_TOKEN>)"
))

/** The route, built from the services it uses: one closure over them, with each step a small named function. */
export const make = (token: Redacted.Redacted) =>
  Effect.gen(function*() {
    const config = yield* HubConfig
    const hub = yield* Hub
    const limits = yield* Limits
    // With a broker (RABBITMQ_URL), published events go through the exchange so that every instance delivers them.
    const publisher = Option.filter(yield* Effect.serviceOption(Publisher), (publisher) => publisher.enabled)

    /** The bearer token, then the rate: a refusal, or nothing. */
    const admit = (request: HttpServerRequest.HttpServerRequest) => {
      const bearer = /^Bearer (.+)$/i.exec(request.headers["authorization"] ?? "")?.[1]
      if (bearer === undefined) {
        limits.refused("publish_unauthorized")
        return Option.some(problem(401, "missing bearer token (Authorization: Bearer <PUBLISH_TOKEN>)", {
          "www-authenticate": "Bearer"
        }))
      }
      if (!sameSecret(bearer, Redacted.value(token))) {
        limits.refused("publish_unauthorized")
        return Option.some(problem(401, "invalid token", { "www-authenticate": "Bearer error=\"invalid_token\"" }))
      }
      // After the token check (cheap, constant time): requests without the token cannot starve publishers.
      const allowed = limits.takePublish(Date.now())
      if (Result.isFailure(allowed)) {
        limits.refused("publish_rate_limited")
        return Option.some(problem(429, `more than ${config.security.publishRate} requests per second; retry later`, {
          "retry-after": String(allowed.failure)
        }))
      }
      return Option.none()
    }

    /** The events of the body, or the 400/413 answer. */
    const readEvents = (request: HttpServerRequest.HttpServerRequest) =>
      Effect.gen(function*() {
        const text = yield* Effect.result(Body.readText(request, config.publishMaxBody))
        if (Result.isFailure(text)) {
          if (text.failure === "unreadable") return Result.fail(problem(400, "the body could not be read", Body.closeAfter))
          limits.refused("publish_too_large")
          return Result.fail(problem(413, `body larger than ${config.publishMaxBody} bytes`, Body.closeAfter))
        }
        let json: unknown
        try {
          json = JSON.parse(text.success)
        } catch {
          return Result.fail(problem(400, "body is not valid JSON; expected {\"type\": \"...\", \"data\": {...}}"))
        }
        // Said before decoding: the schema's message would quote the whole array.
        if (Array.isArray(json) && json.length > maxEventsPerPublish) {
          return Result.fail(problem(400, `invalid event: at most ${maxEventsPerPublish} events per request, got ${json.length}`))
        }
        return Result.mapError(decodePublish(json), (error) => problem(400, `invalid event: ${formatParseError(error)}`))
      })

    /** Through the exchange: 202 once the broker confirmed every event, 503 with the reason otherwise. */
    const publish = (publisher: Publisher["Service"], events: Events) =>
      publisher.publishAll(
        events.map((event) => ({ routingKey: event.type, body: Buffer.from(JSON.stringify(event.data)) }))
      ).pipe(
        Effect.as(HttpServerResponse.jsonUnsafe({ status: "accepted", events: events.length }, { status: 202 })),
        // Never a silent fallback to this instance's clients only: the publisher is told, and retries.
        Effect.catch((error) =>
          Effect.as(
            Effect.logWarning("POST /api/v1/events: not published").pipe(
              Effect.annotateLogs({ reason: error.message, events: events.length })
            ),
            problem(503, `not published: ${error.message}; retry later (an event with an event_id is never ` +
              "delivered twice)", { "retry-after": "5" })
          )
        )
      )

    /** Without a broker: to this instance's clients (`recipients`), and to those of the host's other workers. */
    const deliver = (events: Events) =>
      Effect.gen(function*() {
        let recipients = 0
        // `broadcast` waits for the writes while the hub is behind: the burst is written as it goes.
        for (const event of events) {
          recipients += yield* hub.broadcast(event.type, event.data, "http").pipe(Tracing.eventSpan("http", event.type))
        }
        return recipients
      })
    const host = yield* Effect.serviceOption(HostView)
    if (Option.isSome(host) && Option.isNone(publisher)) {
      yield* host.value.hear("published", (events) => Effect.asVoid(deliver(events as Events)))
    }
    const broadcast = (events: Events) =>
      Effect.gen(function*() {
        if (Option.isSome(host)) yield* host.value.tell("published", events)
        const recipients = yield* deliver(events)
        return HttpServerResponse.jsonUnsafe({ status: "accepted", events: events.length, recipients }, { status: 202 })
      })

    return Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const refused = admit(request)
      if (Option.isSome(refused)) return refused.value
      const events = yield* readEvents(request)
      if (Result.isFailure(events)) return events.failure
      return Option.isSome(publisher) ? yield* publish(publisher.value, events.success) : yield* broadcast(events.success)
    })
  })
