/**
 * One session of the RabbitMQ source: one connection (to the first of the
 * broker's nodes that answers), one confirm channel, one consumer, as a
 * `Stream` that emits once consuming and fails when any of them is lost (the
 * source retries it with a `Schedule`). What is declared and how deliveries
 * are handled belong to the consume mode (`QueueMode.ts`, `StreamMode.ts`,
 * `Ingest.ts`).
 */
import * as amqp from "amqplib"
import { Cause, Data, Deferred, Effect, Exit, Redacted, type Scope, Stream } from "effect"
import { hostname } from "node:os"
import type { RabbitMqSettings } from "../config/Config.js"
import type { HubHistory } from "../hub/History.js"
import type { Hub } from "../hub/Hub.js"
import type { HubMetrics } from "../ops/Metrics.js"

export class RabbitMqError extends Data.TaggedError("RabbitMqError")<{
  readonly reason:
    | "Connect"
    | "Topology"
    | "StreamRefused"
    | "QueueInUse"
    | "ConnectionLost"
    | "ChannelLost"
    | "ConsumerCancelled"
    | "MoveRefused"
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
      case "MoveRefused":
        return `the broker did not take an event moved into the stream ${this.queue}${cause}; the ingest queue ` +
          "keeps it, and the next session moves it again"
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

/** A message from the broker, with the channel it is settled on. */
export interface Delivery {
  readonly message: amqp.ConsumeMessage
  readonly channel: amqp.Channel
}

/** Handles one delivery. Must be synchronous (see `session`) and do nothing until run. */
export type Deliver = (delivery: Delivery) => Effect.Effect<void>

/**
 * What differs between the ways of consuming (queue mode, the stream's reader, the ingest queue's mover); the
 * session does the rest. The session's channel is a confirm channel, so that a mode may publish on it with
 * confirms (the mover, the reader's marker).
 */
export interface ConsumeMode {
  /** The queue consumed: this instance's queue, the stream every instance reads, or the ingest queue. */
  readonly queue: string
  /** Declares and binds the queue, once the exchange exists. */
  readonly declare: (channel: amqp.Channel) => Effect.Effect<void, RabbitMqError>
  /**
   * Runs before consuming, in the session's scope; gives what handles this session's deliveries. `fail` ends the
   * session (it is retried), for failures found in amqplib's callbacks after `deliver` returned. A finalizer it adds
   * runs once deliveries are left alone, before the channel closes.
   */
  readonly prepare: (
    channel: amqp.ConfirmChannel,
    fail: (error: RabbitMqError) => void
  ) => Effect.Effect<Deliver, RabbitMqError, Scope.Scope>
  /** The consumer's options, taken when a session starts. */
  readonly consumeOptions: () => amqp.Options.Consume
  /**
   * How a released session lets go of its queue. By default its consumer is cancelled, then the channel closes,
   * and what was not acknowledged returns to the queue. With `closeWithoutCancel` (the mover) the channel closes
   * without a cancel: a single-active-consumer quorum queue then returns what this session holds and hands the
   * queue to the next consumer in one step, so the returns reach it first and in order. A cancel hands the queue
   * over at once, and what returns when the channel closes reaches the next consumer after newer messages.
   */
  readonly closeWithoutCancel?: boolean
  /** Why the broker refused the consumer. */
  readonly consumeRefused: (cause: unknown) => RabbitMqError
  /** Runs once consuming, in the session's scope. */
  readonly started: (channel: amqp.ConfirmChannel) => Effect.Effect<void, RabbitMqError, Scope.Scope>
  /** Health and log once a session consumes. */
  readonly connected: Effect.Effect<void>
  /** Log annotations that name the mode. */
  readonly describe: Readonly<Record<string, string>>
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

export const attempt = <A>(reason: RabbitMqError["reason"], promise: () => Promise<A>) =>
  Effect.tryPromise({ try: promise, catch: (cause) => new RabbitMqError({ reason, cause }) })

/** Connects to the first of `urls` that answers, starting at `first` (the nodes of a cluster, in turn). */
export const connectToAny = async (
  urls: ReadonlyArray<Redacted.Redacted>,
  first: number,
  socketOptions: Record<string, unknown> = {}
): Promise<amqp.ChannelModel> => {
  let failure: unknown
  for (let i = 0; i < urls.length; i++) {
    try {
      return await amqp.connect(Redacted.value(urls[(first + i) % urls.length]!), {
        // Small acks must not wait for Nagle's algorithm.
        noDelay: true,
        clientProperties: { connection_name: `event-hub ${hostname()} pid ${process.pid}` },
        ...socketOptions
      })
    } catch (error) {
      failure = error
    }
  }
  throw failure
}

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
 * A session: a stream that emits once connected and consuming, then fails
 * when the connection, the channel or the consumer is lost.
 *
 * Deliveries do not travel through the stream: each is handled by the
 * mode's `deliver`, synchronously and in order, in amqplib's callback, with
 * the source's runtime: an element of a stream costs a fiber wake-up and the
 * stream's machinery, a third of the hub's own CPU per event (see
 * docs/performance.md). A delivery that arrives once the session is lost or
 * ending is left alone: the broker delivers it again to the next session.
 */
export const session = (
  config: RabbitMqSettings,
  urls: ReadonlyArray<Redacted.Redacted>,
  first: number,
  mode: ConsumeMode
): Stream.Stream<void, RabbitMqError> =>
  Stream.unwrap(Effect.gen(function*() {
    const context = yield* Effect.context<never>()
    const lost = yield* Deferred.make<never, RabbitMqError>()
    let ended = false
    const lose = (error: RabbitMqError) => {
      ended = true
      Deferred.doneUnsafe(lost, Effect.fail(error))
    }
    let open = true
    const connection = yield* Effect.acquireRelease(
      attempt("Connect", () => connectToAny(urls, first)),
      (connection) => open ? closing(() => connection.close()) : Effect.void
    )
    // Without an 'error' listener, a broker hiccup would crash the process.
    connection.on("error", () => undefined)
    connection.on("close", (cause?: Error) => {
      open = false
      lose(new RabbitMqError({ reason: "ConnectionLost", cause }))
    })
    const channel = yield* Effect.acquireRelease(
      attempt("Connect", () => connection.createConfirmChannel()),
      (channel) => open ? closing(() => channel.close()) : Effect.void
    )
    channel.on("error", () => undefined)
    channel.on("close", () => lose(new RabbitMqError({ reason: "ChannelLost" })))

    // Exactly as the publishers declare it: a different declaration would be refused.
    yield* attempt("Topology", () => channel.assertExchange(config.exchange, "topic", { durable: true }))
    yield* mode.declare(channel)
    const deliver = yield* mode.prepare(channel, lose)

    const onMessage = (message: amqp.ConsumeMessage | null) => {
      if (message === null) return lose(new RabbitMqError({ reason: "ConsumerCancelled" }))
      if (ended) return
      const exit = Effect.runSyncExitWith(context)(deliver({ message, channel }))
      if (Exit.isFailure(exit)) {
        // A defect (a bug, an amqplib surprise) ends the session like a lost connection: retried, never fatal.
        const cause = Cause.squash(exit.cause)
        // A handler that went asynchronous (it must not) would finish later, out of order: it is stopped, and the
        // broker delivers the event again.
        if (Cause.isAsyncFiberError(cause)) cause.fiber.interruptUnsafe()
        lose(new RabbitMqError({ reason: "Unexpected", cause }))
      }
    }
    const { consumerTag } = yield* Effect.tryPromise({
      try: () => channel.consume(mode.queue, onMessage, mode.consumeOptions()),
      catch: mode.consumeRefused
    })
    // Deliveries not yet acknowledged return to the queue when the channel closes.
    if (mode.closeWithoutCancel !== true) {
      yield* Effect.addFinalizer(() => open ? closing(() => channel.cancel(consumerTag)) : Effect.void)
    }
    // Released first (finalizers run last registered, first run): what still arrives is left alone.
    yield* Effect.addFinalizer(() => Effect.sync(() => (ended = true)))
    yield* mode.started(channel)
    return Stream.concat(Stream.succeed(undefined), Stream.fromEffect(Deferred.await(lost)))
  }))

/** What a consume mode works with, given by the source. */
export interface ModeContext {
  readonly config: RabbitMqSettings
  readonly hub: Hub["Service"]
  readonly history: HubHistory["Service"]
  readonly metrics: HubMetrics["Service"]
  readonly setHealth: (status: "up" | "starting" | "down", detail?: string) => Effect.Effect<void>
}
