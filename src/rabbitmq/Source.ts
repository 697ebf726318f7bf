/**
 * The RabbitMQ source: consumes the publishers' topic exchange through this
 * instance's own queue and broadcasts every event through the hub.
 *
 * One connection session is a `Stream`: connect, declare the topology,
 * consume. Losing the connection or the channel fails the stream, and
 * `Stream.retry` starts a new session after a capped, jittered exponential
 * delay. A session emits once it consumes, which resets the backoff; its
 * deliveries are handled as they arrive (see `session`).
 *
 * Deliveries are acknowledged only after the hub has taken them, so an event
 * is never acknowledged and lost; a body that is not a JSON object is
 * rejected without requeue (dead-lettered if so configured).
 */
import * as amqp from "amqplib"
import {
  Cause,
  Data,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  FiberId,
  Layer,
  Option,
  Redacted,
  Runtime,
  Schedule,
  Schema,
  Stream
} from "effect"
import { hostname } from "node:os"
import { RabbitMqConfig, type RabbitMqSettings } from "../config/Config.js"
import { Health } from "../ops/Health.js"
import { HubHistory, streamId } from "../hub/History.js"
import { Hub } from "../hub/Hub.js"
import { HubMetrics } from "../ops/Metrics.js"
import { EventType } from "../protocol/Protocol.js"

export class RabbitMqError extends Data.TaggedError("RabbitMqError")<{
  readonly reason:
    | "Connect"
    | "Topology"
    | "StreamRefused"
    | "QueueInUse"
    | "ConnectionLost"
    | "ChannelLost"
    | "ConsumerCancelled"
    | "Unexpected"
  readonly cause?: unknown
  /** The queue or stream concerned, for the messages that name it. */
  readonly queue?: string
}> {
  get message() {
    const cause = this.cause instanceof Error ? `: ${this.cause.message}` : ""
    switch (this.reason) {
      case "StreamRefused":
        return `the broker refused the stream queue ${this.queue}${cause}. RABBITMQ_MODE=stream (the default) needs ` +
          "RabbitMQ 3.9 or later with streams enabled (feature flag stream_queue) and no other queue of that name " +
          "(RABBITMQ_STREAM); on a broker without streams set RABBITMQ_MODE=queue (a queue per hub instance, see " +
          "docs/operations.md)"
      case "QueueInUse":
        return `another consumer holds the queue ${this.queue}: another hub instance with the same name (every ` +
          "instance needs its own queue: set HUB_INSTANCE_ID, or RABBITMQ_QUEUE, per instance), or this instance's " +
          `previous connection until the broker notices it is gone${cause}`
      default:
        return `${this.reason}${cause}`
    }
  }
  /** Errors that a retry will not fix without a change of configuration or broker: logged as errors. */
  get needsAction(): boolean {
    return this.reason === "StreamRefused" || this.reason === "QueueInUse"
  }
}

// ---------------------------------------------------------------------------
// Mapping a delivery to an event
// ---------------------------------------------------------------------------

export interface MappedEvent {
  readonly type: string
  readonly data: Record<string, unknown>
}

const isEventType = Schema.is(EventType)

/**
 * The WebSocket event for a delivery: `type` is the routing key renamed by
 * `eventTypeMap`, `data` the body parsed as JSON. Fails with the reason when
 * the delivery cannot be an event.
 */
export const toEvent = (
  routingKey: string,
  body: Buffer,
  eventTypeMap: Readonly<Record<string, string>>
): Either.Either<MappedEvent, string> => {
  const type = Object.hasOwn(eventTypeMap, routingKey) ? eventTypeMap[routingKey]! : routingKey
  if (!isEventType(type)) return Either.left(`routing key ${JSON.stringify(routingKey)} is not a valid event type`)
  let data: unknown
  try {
    data = JSON.parse(body.toString("utf8"))
  } catch {
    return Either.left("body is not valid JSON")
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    return Either.left("body is not a JSON object")
  }
  return Either.right({ type, data: data as Record<string, unknown> })
}

// ---------------------------------------------------------------------------
// A session: one connection, one channel, one consumer
// ---------------------------------------------------------------------------

/** A message from the broker, with the channel it is settled on. */
interface Delivery {
  readonly message: amqp.ConsumeMessage
  readonly channel: amqp.Channel
}

/** The URL without its password, for logs. */
export const safeUrl = (url: string): string => {
  try {
    const parsed = new URL(url)
    if (parsed.password !== "") parsed.password = "***"
    return parsed.toString()
  } catch {
    return "<unparseable URL>"
  }
}

const attempt = <A>(reason: RabbitMqError["reason"], promise: () => Promise<A>) =>
  Effect.tryPromise({ try: promise, catch: (cause) => new RabbitMqError({ reason, cause }) })

/** Longest wait for the broker while closing: a dead connection may never answer. */
const closeTimeoutMs = 2000

/**
 * Runs a closing step in a finalizer. Finalizers are uninterruptible, so the
 * time limit is a timer of its own, and errors (already closed) are ignored.
 */
export const closing = (step: () => Promise<unknown>) =>
  Effect.promise(() =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, closeTimeoutMs)
      // `Promise.resolve().then` also catches a step that throws instead of rejecting.
      Promise.resolve().then(step).catch(() => undefined).finally(() => {
        clearTimeout(timer)
        resolve()
      })
    })
  )

/**
 * Stream mode: the header that marks the hub's own "you are caught up"
 * message. A starting hub writes one (value: its instance id) into the
 * stream after subscribing; everything it reads before its own marker was
 * in the stream before it started, and only refills its history. Every hub
 * skips every marker.
 */
export const markerHeader = "x-event-hub-marker"

/** Stream mode: how a session consumes. */
export interface StreamPosition {
  /** The `x-stream-offset` to start from (evaluated when the session starts). */
  readonly from: () => unknown
  /** The marker to write once subscribed, while the history is being refilled. */
  readonly marker: () => string | undefined
}

/** The stream queue's arguments: every instance must declare it identically. */
export const streamArguments = (config: Pick<RabbitMqSettings, "streamMaxAge" | "streamMaxBytes">) => ({
  "x-queue-type": "stream",
  "x-max-age": `${Math.max(1, Math.ceil(Duration.toSeconds(config.streamMaxAge)))}s`,
  "x-max-length-bytes": config.streamMaxBytes
})

/**
 * A session: a stream that emits once connected and consuming, then fails
 * when the connection, the channel or the consumer is lost (`Stream.retry`
 * starts the next one).
 *
 * Deliveries do not travel through the stream: each is handled by
 * `deliver`, synchronously and in order, in amqplib's callback, with the
 * source's runtime: an element of a stream costs a fiber wake-up and the
 * stream's machinery, a third of the hub's own CPU per event (see
 * docs/performance.md). `deliver` must therefore be synchronous (the hub's broadcast is). A
 * delivery that arrives once the session is lost or ending is left alone:
 * the broker delivers it again to the next session.
 */
const session = (
  config: RabbitMqSettings,
  url: Redacted.Redacted,
  deliver: (delivery: Delivery) => Effect.Effect<void>,
  stream?: StreamPosition
): Stream.Stream<void, RabbitMqError> =>
  Stream.unwrapScoped(Effect.gen(function*() {
    const runtime = yield* Effect.runtime<never>()
    const lost = yield* Deferred.make<never, RabbitMqError>()
    let ended = false
    const lose = (error: RabbitMqError) => {
      ended = true
      Deferred.unsafeDone(lost, Effect.fail(error))
    }
    let open = true
    const connection = yield* Effect.acquireRelease(
      attempt("Connect", () =>
        amqp.connect(Redacted.value(url), {
          // Small acks must not wait for Nagle's algorithm.
          noDelay: true,
          clientProperties: { connection_name: `event-hub ${hostname()} pid ${process.pid}` }
        })),
      (connection) => open ? closing(() => connection.close()) : Effect.void
    )
    // Without an 'error' listener, a broker hiccup would crash the process.
    connection.on("error", () => undefined)
    connection.on("close", (cause?: Error) => {
      open = false
      lose(new RabbitMqError({ reason: "ConnectionLost", cause }))
    })
    const channel = yield* Effect.acquireRelease(
      attempt("Connect", () => connection.createChannel()),
      (channel) => open ? closing(() => channel.close()) : Effect.void
    )
    channel.on("error", () => undefined)
    channel.on("close", () => {
      lose(new RabbitMqError({ reason: "ChannelLost" }))
    })

    const queue = stream === undefined ? config.queue : config.stream
    // Exactly as the publishers declare it: a different declaration would be refused.
    yield* attempt("Topology", () => channel.assertExchange(config.exchange, "topic", { durable: true }))
    if (stream !== undefined) {
      // Refused by a broker without streams (or where another queue has the name): startup must say what to do.
      yield* Effect.tryPromise({
        try: () => channel.assertQueue(config.stream, { durable: true, arguments: streamArguments(config) }),
        catch: (cause) => new RabbitMqError({ reason: "StreamRefused", cause, queue: config.stream })
      })
    }
    yield* attempt("Topology", async () => {
      if (stream !== undefined) {
        // Shared by every instance; a prefetch is mandatory on a stream queue.
        for (const key of config.bindingKeys) await channel.bindQueue(config.stream, config.exchange, key)
        await channel.prefetch(config.prefetch)
        return
      }
      // Durable (RabbitMQ 4 deprecates transient non-exclusive queues), and deleted by the broker once no hub has
      // consumed it for RABBITMQ_QUEUE_EXPIRES: a stopped instance leaves nothing filling up behind it.
      await channel.assertQueue(config.queue, {
        durable: true,
        arguments: {
          "x-expires": Duration.toMillis(config.queueExpires),
          ...Option.match(config.deadLetterExchange, {
            onNone: () => ({}),
            onSome: (exchange) => ({ "x-dead-letter-exchange": exchange })
          })
        }
      })
      for (const key of config.bindingKeys) await channel.bindQueue(config.queue, config.exchange, key)
      await channel.prefetch(config.prefetch)
    })

    // Queue mode's consumer is exclusive: a second instance with the same queue name is refused (403).
    const inUse = (cause: unknown) => stream === undefined && /exclusive use/i.test(String((cause as Error)?.message))
    const consumeFailed = (cause: unknown) =>
      new RabbitMqError({ reason: inUse(cause) ? "QueueInUse" : "Topology", cause, queue })
    yield* Effect.acquireRelease(
      Effect.tryPromise({
        catch: consumeFailed,
        try: () =>
          channel.consume(queue, (message) => {
            if (message === null) {
              lose(new RabbitMqError({ reason: "ConsumerCancelled" }))
            } else if (!ended) {
              const exit = Runtime.runSyncExit(runtime, deliver({ message, channel }))
              if (Exit.isFailure(exit)) {
                // A defect (a bug, an amqplib surprise) ends the session like a lost connection: retried, never fatal.
                const cause = Cause.squash(exit.cause)
                // A handler that went asynchronous (it must not) would finish later, out of order: it is stopped,
                // and the broker delivers the event again.
                if (Runtime.isAsyncFiberException(cause)) cause.fiber.unsafeInterruptAsFork(FiberId.none)
                lose(new RabbitMqError({ reason: "Unexpected", cause }))
              }
            }
          }, stream === undefined ? { noAck: false, exclusive: true } : {
            // `noAck: true` is refused on a stream (540, which closes the connection).
            noAck: false,
            arguments: { "x-stream-offset": stream.from() }
          })
      }),
      // Released first: deliveries not yet acknowledged return to the queue when the channel closes.
      ({ consumerTag }) => open ? closing(() => channel.cancel(consumerTag)) : Effect.void
    )
    // Released before the consumer is cancelled: however the session ends, what still arrives is left alone.
    yield* Effect.addFinalizer(() => Effect.sync(() => (ended = true)))
    const marker = stream?.marker()
    if (marker !== undefined) {
      yield* attempt("Topology", async () => {
        channel.sendToQueue(config.stream, Buffer.from("{}"), { headers: { [markerHeader]: marker } })
      })
    }
    return Stream.concat(Stream.succeed(undefined), Stream.fromEffect(Deferred.await(lost)))
  }))

// ---------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------

/** Capped exponential backoff with jitter: about delay, 2 x delay, ... up to the cap, forever. */
export const reconnectSchedule = (config: Pick<RabbitMqSettings, "reconnectDelay" | "maxReconnectWait">) =>
  Schedule.exponential(config.reconnectDelay).pipe(
    Schedule.jittered,
    Schedule.union(Schedule.spaced(config.maxReconnectWait)),
    Schedule.delays
  )

const run = Effect.gen(function*() {
  const config = yield* RabbitMqConfig
  const hub = yield* Hub
  const history = yield* HubHistory
  const metrics = yield* HubMetrics
  const health = yield* Health
  const setHealth = (status: "up" | "starting" | "down", detail?: string) =>
    health.set("rabbitmq", { status, critical: false, detail })

  if (Option.isNone(config.url)) {
    yield* health.set("rabbitmq", { status: "disabled", critical: false, detail: "RABBITMQ_URL is empty" })
    yield* Effect.logInfo("RabbitMQ source disabled (RABBITMQ_URL is empty)")
    return
  }
  if (config.mode === "stream" && history.mode !== "stream") {
    return yield* Effect.dieMessage("stream mode: provide RabbitMqConfig to the hub's layer too (HubHistory uses stream ids)")
  }
  const url = config.url.value
  metrics.declare("rabbitmq", ["connections", "reconnects", "events_consumed", "events_rejected", "duplicates_dropped"])
  yield* setHealth("starting", "connecting")

  /**
   * Acknowledges or rejects a delivery. amqplib throws if the channel closed
   * meanwhile; the broker then redelivers the message to the next session.
   */
  const settle = (channel: amqp.Channel, message: amqp.ConsumeMessage, accept: boolean) => {
    try {
      if (accept) channel.ack(message)
      else channel.nack(message, false, false)
    } catch {
      // channel closed: the session is ending and will be retried
    }
  }

  // --- stream mode: offsets are the event ids; the hub keeps its position ---
  const streamMode = config.mode === "stream"
  /** The instance id this hub writes in its marker. */
  const instance = `${hostname()}.${process.pid}.${Math.random().toString(36).slice(2, 10)}`
  /** True until this hub has read its own marker: what it reads until then only refills the history. */
  let refilling = streamMode
  /** The last stream offset read; the broker does not keep it for AMQP 0-9-1 consumers. */
  let lastOffset: number | undefined
  const position: StreamPosition = {
    // First: back as far as the history keeps events. Then: right after the last offset read.
    from: () =>
      lastOffset === undefined
        ? { "!": "timestamp", value: Math.floor((Date.now() - history.maxAgeMs) / 1000) }
        : lastOffset + 1,
    marker: () => refilling ? instance : undefined
  }

  const handleStream = ({ channel, message }: Delivery): Effect.Effect<void> => {
    const headers = message.properties.headers ?? {}
    const offset = headers["x-stream-offset"]
    if (typeof offset !== "number") {
      settle(channel, message, true)
      return Effect.logWarning("stream delivery without an x-stream-offset header; skipped")
    }
    if (lastOffset !== undefined && offset <= lastOffset) {
      // Read again (a session starts at a chunk boundary): already handled.
      settle(channel, message, true)
      metrics.count("rabbitmq", "duplicates_dropped")
      return Effect.void
    }
    const hole = lastOffset !== undefined && offset > lastOffset + 1
    if (lastOffset === undefined || hole) history.startsAt(offset)
    lastOffset = offset
    const logHole = hole
      ? Effect.logWarning("the stream's retention removed events this hub had not read; history starts again here")
        .pipe(Effect.annotateLogs({ offset }))
      : Effect.void
    const marker = headers[markerHeader]
    if (marker !== undefined) {
      settle(channel, message, true)
      if (!refilling || marker !== instance) return logHole
      refilling = false
      history.markReady()
      return Effect.zipRight(
        logHole,
        Effect.zipRight(
          setHealth("up"),
          Effect.logInfo("history refilled from the stream; events are live").pipe(
            Effect.annotateLogs({ stream: config.stream, events: history.size, offset })
          )
        )
      )
    }
    const routingKey = message.fields.routingKey
    const event = toEvent(routingKey, message.content, config.eventTypeMap)
    if (Either.isLeft(event)) {
      // A stream cannot reject or dead-letter: the message stays in it, and every hub skips it.
      settle(channel, message, true)
      metrics.count("rabbitmq", "events_rejected")
      return Effect.zipRight(
        logHole,
        Effect.logWarning("skipped a stream message that is not an event").pipe(
          Effect.annotateLogs({ routing_key: routingKey, reason: event.left, bytes: message.content.length, offset })
        )
      )
    }
    return Effect.zipRight(
      logHole,
      hub.broadcastEvent({
        type: event.right.type,
        data: event.right.data,
        id: streamId(offset),
        fromStream: true,
        live: !refilling
      }).pipe(
        Effect.zipRight(Effect.sync(() => {
          metrics.count("rabbitmq", "events_consumed")
          settle(channel, message, true)
        }))
      )
    )
  }

  const connected: Effect.Effect<void> = Effect.suspend(() => {
    metrics.count("rabbitmq", "connections")
    return streamMode
      ? Effect.zipRight(
        refilling ? setHealth("starting", "refilling the history from the stream") : setHealth("up"),
        Effect.logInfo("consuming from RabbitMQ").pipe(Effect.annotateLogs({ stream: config.stream }))
      )
      : Effect.zipRight(
        setHealth("up"),
        Effect.logInfo("consuming from RabbitMQ").pipe(Effect.annotateLogs({ queue: config.queue }))
      )
  })

  const handleQueue = ({ channel, message }: Delivery): Effect.Effect<void> => {
    const routingKey = message.fields.routingKey
    const event = toEvent(routingKey, message.content, config.eventTypeMap)
    if (Either.isLeft(event)) {
      settle(channel, message, false)
      metrics.count("rabbitmq", "events_rejected")
      return Effect.logWarning("rejected a message that is not an event").pipe(
        Effect.annotateLogs({ routing_key: routingKey, reason: event.left, bytes: message.content.length })
      )
    }
    // A redelivery, or a publisher's retry, of an event the hub already broadcast is dropped by the hub (Dedup.ts).
    // `broadcastEvent`, which never waits: `deliver` must stay synchronous.
    return hub.broadcastEvent({ type: event.right.type, data: event.right.data }).pipe(
      Effect.zipRight(Effect.sync(() => {
        metrics.count("rabbitmq", "events_consumed")
        // The hub has the event: acknowledge.
        settle(channel, message, true)
      }))
    )
  }

  yield* Effect.logInfo("RabbitMQ source starting").pipe(Effect.annotateLogs({
    url: safeUrl(Redacted.value(url)),
    exchange: config.exchange,
    ...(streamMode ? { mode: "stream", stream: config.stream } : { mode: "queue", queue: config.queue }),
    binding_keys: config.bindingKeys.join(",")
  }))
  const deliver = streamMode ? handleStream : handleQueue
  yield* session(config, url, deliver, streamMode ? position : undefined).pipe(
    Stream.mapEffect(() => connected),
    // A defect (a bug, an amqplib surprise) ends the session like a lost connection: retried, never fatal.
    Stream.catchAllCause((cause) => {
      if (Cause.isInterruptedOnly(cause)) return Stream.failCause(cause)
      // The session's own errors go on as they are (their message says what to do); anything else is unexpected.
      const failure = Cause.failureOption(cause)
      return Stream.fail(
        Option.isSome(failure) ? failure.value : new RabbitMqError({ reason: "Unexpected", cause: Cause.squash(cause) })
      )
    }),
    Stream.tapError((error) =>
      Effect.zipRight(
        setHealth("down", error.message),
        (error.needsAction ? Effect.logError : Effect.logWarning)("RabbitMQ connection failed").pipe(
          Effect.annotateLogs({ error: error.message })
        )
      )
    ),
    Stream.retry(reconnectSchedule(config).pipe(
      Schedule.tapOutput((delay) =>
        Effect.zipRight(
          Effect.sync(() => metrics.count("rabbitmq", "reconnects")),
          Effect.logInfo("reconnecting to RabbitMQ").pipe(
            Effect.annotateLogs({ delay_ms: Math.round(Duration.toMillis(delay)) })
          )
        )
      )
    )),
    Stream.runDrain,
    // Whatever ends the source, /health must not keep saying it is up.
    Effect.ensuring(setHealth("down", "stopped"))
  )
}).pipe(
  Effect.onInterrupt(() => Effect.logInfo("RabbitMQ source stopped")),
  Effect.annotateLogs({ component: "rabbitmq" })
)

/** Runs the source for the lifetime of the layer; does nothing when `RABBITMQ_URL` is empty. */
export const layer: Layer.Layer<never, never, RabbitMqConfig | Hub | HubHistory | HubMetrics | Health> = Layer
  .scopedDiscard(Effect.forkScoped(run))
