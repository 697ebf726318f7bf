/**
 * Stream mode: every instance reads one stream queue bound to the exchange.
 * Stream offsets are the event ids, so a resume is placed on any instance and
 * across restarts; a starting instance refills its history from the stream.
 */
import type * as amqp from "amqplib"
import { Duration, Effect, Either } from "effect"
import { hostname } from "node:os"
import type { RabbitMqSettings } from "../config/Config.js"
import { streamId } from "../hub/History.js"
import { eventSpan } from "../ops/Tracing.js"
import { settle, toEvent } from "./Message.js"
import { attempt, type ConsumeMode, type Delivery, type ModeContext, RabbitMqError } from "./Session.js"

/**
 * The header that marks the hub's own "you are caught up" message. A starting
 * hub writes one (value: its instance id) into the stream after subscribing;
 * everything it reads before its own marker was in the stream before it
 * started, and only refills its history. Every hub skips every marker.
 */
export const markerHeader = "x-event-hub-marker"

/** The stream queue's arguments: every instance must declare it identically. */
export const streamArguments = (config: Pick<RabbitMqSettings, "streamMaxAge" | "streamMaxBytes">) => ({
  "x-queue-type": "stream",
  "x-max-age": `${Math.max(1, Math.ceil(Duration.toSeconds(config.streamMaxAge)))}s`,
  "x-max-length-bytes": config.streamMaxBytes
})

/** One instance's reading of the stream: its position and whether it is still refilling its history. */
class StreamReader {
  /** The instance id this hub writes in its marker. */
  readonly instance = `${hostname()}.${process.pid}.${Math.random().toString(36).slice(2, 10)}`
  /** True until this hub has read its own marker: what it reads until then only refills the history. */
  refilling = true
  /** The last stream offset read; the broker does not keep it for AMQP 0-9-1 consumers. */
  lastOffset: number | undefined = undefined

  constructor(private readonly context: ModeContext) {}

  /** First: back as far as the history keeps events. Then: right after the last offset read. */
  from(): unknown {
    return this.lastOffset === undefined
      ? { "!": "timestamp", value: Math.floor((Date.now() - this.context.history.maxAgeMs) / 1000) }
      : this.lastOffset + 1
  }

  deliver({ channel, message }: Delivery): Effect.Effect<void> {
    const { history, metrics } = this.context
    const headers = message.properties.headers ?? {}
    const offset = headers["x-stream-offset"]
    if (typeof offset !== "number") {
      settle(channel, message, true)
      return Effect.logWarning("stream delivery without an x-stream-offset header; skipped")
    }
    if (this.lastOffset !== undefined && offset <= this.lastOffset) {
      // Read again (a session starts at a chunk boundary): already handled.
      settle(channel, message, true)
      metrics.count("rabbitmq", "duplicates_dropped")
      return Effect.void
    }
    const hole = this.lastOffset !== undefined && offset > this.lastOffset + 1
    if (this.lastOffset === undefined || hole) history.startsAt(offset)
    this.lastOffset = offset
    const logHole = hole
      ? Effect.logWarning("the stream's retention removed events this hub had not read; history starts again here")
        .pipe(Effect.annotateLogs({ offset }))
      : Effect.void
    const marker = headers[markerHeader]
    const handled = marker !== undefined
      ? this.marker(channel, message, marker, offset)
      : this.event(channel, message, offset)
    return Effect.zipRight(logHole, handled)
  }

  private marker(channel: amqp.Channel, message: amqp.ConsumeMessage, marker: unknown, offset: number) {
    settle(channel, message, true)
    if (!this.refilling || marker !== this.instance) return Effect.void
    this.refilling = false
    this.context.history.markReady()
    return Effect.zipRight(
      this.context.setHealth("up"),
      Effect.logInfo("history refilled from the stream; events are live").pipe(
        Effect.annotateLogs({ stream: this.context.config.stream, events: this.context.history.size, offset })
      )
    )
  }

  private event(channel: amqp.Channel, message: amqp.ConsumeMessage, offset: number): Effect.Effect<void> {
    const { config, hub, metrics } = this.context
    const routingKey = message.fields.routingKey
    const event = toEvent(routingKey, message.content, config.eventTypeMap)
    if (Either.isLeft(event)) {
      // A stream cannot reject or dead-letter: the message stays in it, and every hub skips it.
      settle(channel, message, true)
      metrics.count("rabbitmq", "events_rejected")
      return Effect.logWarning("skipped a stream message that is not an event").pipe(
        Effect.annotateLogs({ routing_key: routingKey, reason: event.left, bytes: message.content.length, offset })
      )
    }
    return hub.broadcastEvent({
      type: event.right.type,
      data: event.right.data,
      id: streamId(offset),
      fromStream: true,
      live: !this.refilling,
      source: "rabbitmq"
    }).pipe(
      eventSpan("rabbitmq", event.right.type, message.properties.headers),
      Effect.zipRight(Effect.sync(() => {
        metrics.count("rabbitmq", "events_consumed")
        settle(channel, message, true)
      }))
    )
  }
}

export const streamMode = (context: ModeContext): ConsumeMode => {
  const { config, setHealth } = context
  const reader = new StreamReader(context)
  return {
    queue: config.stream,
    // Refused by a broker without streams (or where another queue has the name): startup must say what to do.
    declare: (channel) =>
      Effect.tryPromise({
        try: () => channel.assertQueue(config.stream, { durable: true, arguments: streamArguments(config) }),
        catch: (cause) => new RabbitMqError({ reason: "StreamRefused", cause, queue: config.stream })
      }).pipe(
        Effect.zipRight(attempt("Topology", async () => {
          // Shared by every instance; a prefetch is mandatory on a stream queue.
          for (const key of config.bindingKeys) await channel.bindQueue(config.stream, config.exchange, key)
          await channel.prefetch(config.prefetch)
        }))
      ),
    // `noAck: true` is refused on a stream (540, which closes the connection).
    consumeOptions: () => ({ noAck: false, arguments: { "x-stream-offset": reader.from() } }),
    consumeRefused: (cause) => new RabbitMqError({ reason: "Topology", cause, queue: config.stream }),
    started: (channel) =>
      reader.refilling
        ? attempt("Topology", async () => {
          channel.sendToQueue(config.stream, Buffer.from("{}"), { headers: { [markerHeader]: reader.instance } })
        })
        : Effect.void,
    deliver: (delivery) => reader.deliver(delivery),
    connected: Effect.suspend(() =>
      Effect.zipRight(
        reader.refilling ? setHealth("starting", "refilling the history from the stream") : setHealth("up"),
        Effect.logInfo("consuming from RabbitMQ").pipe(Effect.annotateLogs({ stream: config.stream }))
      )
    ),
    describe: { mode: "stream", stream: config.stream }
  }
}
