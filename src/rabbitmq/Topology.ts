/**
 * What stream mode declares on the broker: the stream every instance reads and the ingest queue that feeds it
 * (see Ingest.ts). Every instance declares them identically (the broker refuses a different declaration).
 */
import type * as amqp from "amqplib"
import { Duration, Effect, Option } from "effect"
import { ingestQueueName, type RabbitMqSettings } from "../config/Config.js"
import { attempt, RabbitMqError } from "./Session.js"

/** The stream queue's arguments: every instance must declare it identically. */
export const streamArguments = (
  config: Pick<RabbitMqSettings, "streamMaxAge" | "streamMaxBytes" | "streamMaxSegmentBytes">
) => ({
  "x-queue-type": "stream",
  "x-max-age": `${Math.max(1, Math.ceil(Duration.toSeconds(config.streamMaxAge)))}s`,
  "x-max-length-bytes": config.streamMaxBytes,
  // Only when set: a stream declared before without it would otherwise be refused as declared differently.
  ...Option.match(config.streamMaxSegmentBytes, {
    onNone: () => ({}),
    onSome: (bytes) => ({ "x-stream-max-segment-size-bytes": bytes })
  })
})

/** Declares the stream; refused by a broker without streams (or where another queue has the name). */
export const declareStream = (channel: amqp.Channel, config: RabbitMqSettings) =>
  Effect.tryPromise({
    try: () => channel.assertQueue(config.stream, { durable: true, arguments: streamArguments(config) }),
    // 406: refused for good (no streams, or another queue of that name); anything else (a node still starting)
    // passes with a retry.
    catch: (cause) =>
      new RabbitMqError({
        reason: (cause as { code?: unknown })?.code === 406 ? "StreamRefused" : "Topology",
        cause,
        queue: config.stream
      })
  })

/** The ingest queue's arguments: every instance must declare it identically. */
export const ingestArguments = (ingestMaxBytes: number) => ({
  "x-queue-type": "quorum",
  "x-single-active-consumer": true,
  "x-max-length-bytes": ingestMaxBytes,
  "x-overflow": "reject-publish"
})

/**
 * The stream and its ingest queue, bound to the exchange in its place. The stream's reader declares them too, so
 * that once a hub reads, what is published is kept.
 */
export const declareIngest = (channel: amqp.Channel, config: RabbitMqSettings) =>
  Effect.andThen(
    declareStream(channel, config),
    attempt("Topology", async () => {
      const queue = ingestQueueName(config.stream)
      await channel.assertQueue(queue, { durable: true, arguments: ingestArguments(config.ingestMaxBytes) })
      for (const key of config.bindingKeys) {
        await channel.bindQueue(queue, config.exchange, key)
        // A stream bound to the exchange (RABBITMQ_INGEST=none, or an earlier version) would get every event twice.
        await channel.unbindQueue(config.stream, config.exchange, key)
      }
    })
  )
