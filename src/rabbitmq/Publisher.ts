/**
 * Publishing to the publishers' exchange, for clients' `publish` requests
 * (commands to the backend). It has its own connection and confirm channel,
 * opened on the first publish and opened again after a loss, so a broker that
 * is down costs nothing until someone publishes, and the consumer's
 * connection never waits behind a publish.
 *
 * A publish succeeds once the broker has confirmed the message (persistent,
 * on a durable exchange) and a queue took it (`mandatory`: RabbitMQ also
 * confirms a message no queue took); it fails if the broker cannot be reached,
 * returns the message or does not confirm within `publishTimeout`, and the
 * client is told so: never a success for an event that was dropped.
 */
import type * as amqp from "amqplib"
import { Context, Data, Duration, Effect, Layer, Option } from "effect"
import { hostname } from "node:os"
import { brokerUrls, RabbitMqConfig } from "../config/Config.js"
import { headersFor } from "../ops/Tracing.js"
import { RoutedChannel } from "./Routed.js"
import { closing, connectToAny } from "./Session.js"

/** Names each message this hub publishes, so that a returned one is told apart (see Routed.ts). */
const publishIdHeader = "x-event-hub-publish"

export class PublishError extends Data.TaggedError("PublishError")<{
  readonly reason: "Disabled" | "Unavailable" | "Unroutable" | "Timeout"
  readonly cause?: unknown
}> {
  get message() {
    switch (this.reason) {
      case "Disabled":
        return "publishing is not available: this hub has no RabbitMQ connection (RABBITMQ_URL is empty)"
      case "Unroutable":
        return "no queue took the event (the broker is starting, or no queue is bound for its type); nothing was " +
          "kept: try again"
      case "Timeout":
        return "the broker did not confirm the message in time; it may or may not have been delivered"
      case "Unavailable":
        return `the broker is unavailable${this.cause instanceof Error ? ` (${this.cause.message})` : ""}`
    }
  }
}

/** Longest wait for a connection and a confirmation. */
export const publishTimeout = Duration.seconds(5)

/** A message to publish: its routing key (the event's type) and its JSON body (the event's data). */
export interface OutgoingMessage {
  readonly routingKey: string
  readonly body: Buffer
}

export class Publisher extends Context.Service<Publisher, {
  /** Publishes `body` (JSON) with `routingKey`; succeeds once the broker has confirmed it. */
  readonly publish: (routingKey: string, body: Buffer) => Effect.Effect<void, PublishError>
  /** Publishes the messages in order on one channel; succeeds once the broker has confirmed every one. */
  readonly publishAll: (messages: ReadonlyArray<OutgoingMessage>) => Effect.Effect<void, PublishError>
  /**
   * Publishes an event to the exchange (its type as routing key, its data as body), so that it reaches the
   * clients of every hub instance, and in stream mode gets an id that resumes everywhere: the library's
   * counterpart of `Hub.broadcast`, which reaches this instance's clients only. Succeeds once confirmed.
   */
  readonly publishEvent: (type: string, data: unknown) => Effect.Effect<void, PublishError>
  /** True when a broker is configured (`RABBITMQ_URL`): `publish` can succeed. */
  readonly enabled: boolean
}>()("event-hub/Publisher") {
  // One closure over the publishing connection it opens on first use and closes with the layer; its steps are
  // small named functions inside.
  static readonly layer: Layer.Layer<Publisher, never, RabbitMqConfig> = Layer.effect(
    Publisher,
    Effect.gen(function*() {
      const config = yield* RabbitMqConfig
      if (Option.isNone(config.url)) {
        const disabled = () => Effect.fail(new PublishError({ reason: "Disabled" }))
        return Publisher.of({ publish: disabled, publishAll: disabled, publishEvent: disabled, enabled: false })
      }
      const urls = brokerUrls(config.url.value)
      /** Where the next connection starts: after a loss, the next of a cluster's nodes. */
      let nextUrl = 0
      let connection: amqp.ChannelModel | undefined
      let channel: Promise<RoutedChannel> | undefined
      let published = 0

      /** The open confirm channel, or a new one; a failed attempt is forgotten so the next publish tries again. */
      const open = (): Promise<RoutedChannel> =>
        channel ??= (async () => {
          const opened = await connectToAny(urls, nextUrl++ % urls.length, {
            timeout: Duration.toMillis(publishTimeout),
            clientProperties: { connection_name: `event-hub publisher ${hostname()} pid ${process.pid}` }
          })
          // Without 'error' listeners a broker hiccup would crash the process.
          opened.on("error", () => undefined)
          const forget = () => {
            if (connection === opened) {
              connection = undefined
              channel = undefined
            }
          }
          opened.on("close", forget)
          connection = opened
          const confirm = await opened.createConfirmChannel()
          confirm.on("error", () => undefined)
          confirm.on("close", () => {
            forget()
            opened.close().catch(() => undefined)
          })
          // Declared exactly as the publishers declare it (a different declaration would be refused).
          await confirm.assertExchange(config.exchange, "topic", { durable: true })
          return new RoutedChannel(confirm, publishIdHeader)
        })().catch((error) => {
          channel = undefined
          connection?.close().catch(() => undefined)
          throw error
        })

      yield* Effect.addFinalizer(() => connection === undefined ? Effect.void : closing(() => connection!.close()))

      const publishAll = (messages: ReadonlyArray<OutgoingMessage>) => {
        // A timeout before the messages went out (no connection yet) means nothing was published at all.
        let sent = false
        // The consumers' spans become children of the publishing one (a POST's, a client's `publish`).
        return Effect.flatMap(headersFor, (headers) => Effect.tryPromise({
          try: async () => {
            const routed = await open()
            sent = true
            // One channel keeps the order; each message is settled once the broker confirms (or rejects) it, or
            // the channel closes.
            const outcomes = await Promise.all(messages.map(({ body, routingKey }) =>
              routed.publishAsync(config.exchange, routingKey, body, {
                persistent: true,
                contentType: "application/json",
                headers: { ...headers, [publishIdHeader]: ++published }
              })
            ))
            if (outcomes.includes("returned")) throw new PublishError({ reason: "Unroutable" })
          },
          catch: (cause) => cause instanceof PublishError ? cause : new PublishError({ reason: "Unavailable", cause })
        })).pipe(
          Effect.timeoutOrElse({
            duration: publishTimeout,
            orElse: () => Effect.fail(
              new PublishError(
                sent ? { reason: "Timeout" } : { reason: "Unavailable", cause: new Error("no connection in time") }
              )
            )
          })
        )
      }

      return Publisher.of({
        publish: (routingKey, body) => publishAll([{ routingKey, body }]),
        publishAll,
        publishEvent: (type, data) => publishAll([{ routingKey: type, body: Buffer.from(JSON.stringify(data)) }]),
        enabled: true
      })
    })
  )
}
