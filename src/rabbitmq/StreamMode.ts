/**
 * Stream mode: every instance reads one stream queue. Events enter it
 * through the ingest queue (`Ingest.ts`, the default) or, with
 * `RABBITMQ_INGEST=none`, from the exchange directly. Stream offsets are the
 * event ids, so a resume is placed on any instance and across restarts; a
 * starting instance refills its history from the stream.
 *
 * What this source guarantees the hub: ids (offsets) grow and are the same
 * on every instance, an event's timestamp is the time it entered the stream
 * (the same on every instance, live or refilled), and a hole in the offsets
 * read (retention removed events this hub had not read) is told to the
 * clients (`Hub.lost`), never passed over in silence.
 */
import type * as amqp from "amqplib"
import { Effect, Result } from "effect"
import { hostname } from "node:os"
import type { BroadcastEvent } from "../hub/Hub.js"
import { streamId } from "../hub/History.js"
import { eventSpan } from "../ops/Tracing.js"
import { settle, toEvent } from "./Message.js"
import { declareIngest, declareStream } from "./Topology.js"
import { moveHeaders, moveOf, Moves } from "./Moves.js"
import { RoutedChannel } from "./Routed.js"
import { attempt, type ConsumeMode, type Delivery, type ModeContext, RabbitMqError } from "./Session.js"

/**
 * The header that marks the hub's own "you are caught up" message. A starting
 * hub writes one (value: its instance id) into the stream after subscribing;
 * everything it reads before its own marker was in the stream before it
 * started, and only refills its history. Every hub skips every marker.
 */
export const markerHeader = "x-event-hub-marker"

/** How often a reader tries its marker again while the stream does not take messages (the broker is starting). */
const markerRetryMs = 250

/** One instance's reading of the stream: its position and whether it is still refilling its history. */
class StreamReader {
  /** The instance id this hub writes in its marker. */
  readonly instance = `${hostname()}.${process.pid}.${Math.random().toString(36).slice(2, 10)}`
  /** True until this hub has read its own marker: what it reads until then only refills the history. */
  refilling = true
  /** The last stream offset read; the broker does not keep it for AMQP 0-9-1 consumers. */
  lastOffset: number | undefined = undefined
  /** No delivery read yet in this session: the first one tells whether retention removed what was not read. */
  sessionStart = true
  readonly moves = new Moves()

  constructor(private readonly context: ModeContext) {}

  /**
   * First: back as far as the history keeps events. Then: the last offset read, read again, so that the first
   * delivery tells whether it is still there (offsets are not contiguous: a gap within a session is the broker's
   * own bookkeeping, not a loss).
   */
  from(): unknown {
    return this.lastOffset === undefined
      ? { "!": "timestamp", value: Math.floor((Date.now() - this.context.history.maxAgeMs) / 1000) }
      : this.lastOffset
  }

  deliver({ channel, message }: Delivery): Effect.Effect<void> {
    const { history, metrics } = this.context
    const headers = message.properties.headers ?? {}
    const offset = headers["x-stream-offset"]
    settle(channel, message, true)
    if (typeof offset !== "number") return Effect.logWarning("stream delivery without an x-stream-offset header; skipped")
    const previous = this.lastOffset
    // A session starts at or before the offset asked for (a chunk boundary); after it only if retention removed it.
    const hole = this.sessionStart && previous !== undefined && offset > previous
    this.sessionStart = false
    if (previous !== undefined && offset <= previous) {
      // Read again: already handled.
      metrics.count("rabbitmq", "duplicates_dropped")
      return Effect.void
    }
    if (previous === undefined || hole) history.startsAt(offset)
    this.lastOffset = offset
    const handled = this.#message(message, headers, offset)
    if (!hole) return handled
    return Effect.andThen(this.#hole(previous, offset), handled)
  }

  /** Offsets this hub expected and did not get (retention removed them): its live clients are told. */
  #hole(previous: number, offset: number) {
    const missing = offset - previous - 1
    this.context.metrics.count("rabbitmq", "stream_holes")
    const told = this.refilling ? Effect.void : this.context.hub.lost(streamId(previous), streamId(offset))
    return Effect.andThen(told, Effect.logWarning("events this hub had not read are gone from the stream (retention); clients are told")
      .pipe(Effect.annotateLogs({ after_offset: previous, offset, missing })))
  }

  #message(message: amqp.ConsumeMessage, headers: Record<string, unknown>, offset: number): Effect.Effect<void> {
    const marker = headers[markerHeader]
    if (marker !== undefined) return this.#marker(marker, offset)
    const { config, metrics } = this.context
    const routingKey = typeof headers[moveHeaders.routingKey] === "string"
      ? headers[moveHeaders.routingKey] as string
      : message.fields.routingKey
    const move = moveOf(headers, routingKey, message.content)
    if (move !== undefined) {
      const verdict = this.moves.judge(move)
      if (verdict !== "take") {
        metrics.count("rabbitmq", verdict === "moved_again" ? "moves_repeated" : "moves_after_hole")
        return Effect.void
      }
      // A mover session's first message carries no event.
      if (move.seq === 0) return Effect.void
    }
    const event = toEvent(routingKey, message.content, config.eventTypeMap)
    if (Result.isFailure(event)) {
      // A stream cannot reject or dead-letter: the message stays in it, and every hub skips it.
      metrics.count("rabbitmq", "events_rejected")
      return Effect.logWarning("skipped a stream message that is not an event").pipe(
        Effect.annotateLogs({ routing_key: routingKey, reason: event.failure, bytes: message.content.length, offset })
      )
    }
    const time = headers[moveHeaders.time]
    const entering: BroadcastEvent = {
      type: event.success.type,
      data: event.success.data,
      id: streamId(offset),
      // Without a mover (RABBITMQ_INGEST=none) the stream does not say when the event entered it.
      ...(typeof time === "number" && { timestamp: time }),
      source: "rabbitmq"
    }
    if (this.refilling) {
      metrics.count("rabbitmq", "events_refilled")
      return this.context.hub.remember(entering)
    }
    metrics.count("rabbitmq", "events_consumed")
    return this.context.hub.broadcastEvent(entering).pipe(
      eventSpan("rabbitmq", event.success.type, message.properties.headers)
    )
  }

  #marker(marker: unknown, offset: number) {
    if (!this.refilling || marker !== this.instance) return Effect.void
    this.refilling = false
    this.context.history.markReady()
    return Effect.andThen(
      this.context.setHealth("up"),
      Effect.logInfo("history refilled from the stream; events are live").pipe(
        Effect.annotateLogs({ stream: this.context.config.stream, events: this.context.history.size, offset })
      )
    )
  }

  /**
   * Writes this hub's marker into the stream, `mandatory`: right after a broker restart the stream may not take
   * messages yet, and a marker lost there would leave the hub refilling for ever.
   */
  writeMarker(channel: amqp.ConfirmChannel): Effect.Effect<void, RabbitMqError> {
    const routed = new RoutedChannel(channel, markerHeader)
    const write = (): Promise<void> =>
      routed.publishAsync("", this.context.config.stream, Buffer.from("{}"), { headers: { [markerHeader]: this.instance } })
        .then((outcome) =>
          outcome === "kept" ? undefined : new Promise<void>((resolve) => setTimeout(resolve, markerRetryMs)).then(write)
        )
    return attempt("ChannelLost", write)
  }
}

export const streamMode = (context: ModeContext): ConsumeMode => {
  const { config, setHealth } = context
  const reader = new StreamReader(context)
  return {
    queue: config.stream,
    declare: (channel) =>
      Effect.andThen(
        config.ingest === "quorum" ? declareIngest(channel, config) : declareStream(channel, config),
        attempt("Topology", async () => {
          // Without the ingest queue, the stream is fed by the exchange directly.
          if (config.ingest === "none") {
            for (const key of config.bindingKeys) await channel.bindQueue(config.stream, config.exchange, key)
          }
          // A prefetch is mandatory on a stream queue.
          await channel.prefetch(config.prefetch)
        })
      ),
    prepare: () =>
      Effect.sync(() => {
        reader.sessionStart = true
        return (delivery) => Effect.suspend(() => reader.deliver(delivery))
      }),
    // `noAck: true` is refused on a stream (540, which closes the connection).
    consumeOptions: () => ({ noAck: false, arguments: { "x-stream-offset": reader.from() } }),
    consumeRefused: (cause) => new RabbitMqError({ reason: "Topology", cause, queue: config.stream }),
    // The marker is written in the background: the session's deliveries must flow meanwhile.
    // A lost channel ends the session anyway (retried), and the next session writes the marker again.
    started: (channel) =>
      reader.refilling
        ? Effect.asVoid(Effect.forkScoped(Effect.ignore(reader.writeMarker(channel))))
        : Effect.void,
    connected: Effect.suspend(() =>
      Effect.andThen(
        reader.refilling ? setHealth("starting", "refilling the history from the stream") : setHealth("up"),
        Effect.logInfo("consuming from RabbitMQ").pipe(Effect.annotateLogs({ stream: config.stream }))
      )
    ),
    describe: { mode: "stream", stream: config.stream }
  }
}
