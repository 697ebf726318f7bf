/**
 * The ingest path of stream mode: how events get into the stream without
 * being lost when the broker restarts.
 *
 * Right after a restart RabbitMQ takes publishes before a stream is routable
 * again, and confirms the messages it could not route (docs/operations.md):
 * a stream bound to the exchange loses them. A quorum queue loses nothing in
 * that window. So the exchange feeds an ingest quorum queue, and one hub at a
 * time (single active consumer: the others wait to take over) moves its
 * messages into the stream, `mandatory` and with confirms, acknowledging each
 * one only once the stream has it. A move the broker does not take ends the
 * session, and the ingest queue gives it (and everything after it) to the
 * next one. Every hub reads the stream as before; `Moves.ts` is what a reader
 * makes of the moves.
 *
 * While no hub runs, events wait in the ingest queue, up to
 * `RABBITMQ_INGEST_MAX_BYTES`; past that the broker refuses new publishes
 * (`reject-publish`: a publisher with confirms is told), rather than dropping
 * the oldest.
 */
import type * as amqp from "amqplib"
import { Effect, Schedule } from "effect"
import { hostname } from "node:os"
import { ingestQueueName } from "../config/Config.js"
import { settleAll } from "./Message.js"
import { moveHeaders } from "./Moves.js"
import { RoutedChannel } from "./Routed.js"
import { attempt, closing, type ConsumeMode, type Delivery, type ModeContext, RabbitMqError } from "./Session.js"
import { declareIngest } from "./Topology.js"

/** How often a session asks again whether the stream takes messages, while the broker is starting. */
const routableRetry = Schedule.spaced("250 millis")

/** The properties of the ingest message that travel into the stream (not `userId`: the broker checks it). */
const carried = ({ properties }: amqp.ConsumeMessage): amqp.Options.Publish => ({
  contentType: properties.contentType,
  contentEncoding: properties.contentEncoding,
  correlationId: properties.correlationId,
  messageId: properties.messageId,
  timestamp: properties.timestamp,
  type: properties.type,
  appId: properties.appId
})

interface InFlight {
  readonly seq: number
  readonly message: amqp.ConsumeMessage
  kept: boolean
}

/** One mover session: its numbering, and what it moved that the stream has not confirmed yet. */
class MoverSession {
  readonly id = `${hostname()}.${process.pid}.${Math.random().toString(36).slice(2, 10)}`
  readonly #routed: RoutedChannel
  #seq = 0
  #acked = 0
  readonly #inFlight: Array<InFlight> = []
  /** The newest move whose acknowledgement waits for the end of this turn (one `ack` for a run of confirms). */
  #toAck: amqp.ConsumeMessage | undefined
  /** Who waits for every move made to be confirmed and acknowledged (`settled`). */
  #waiting: Array<() => void> = []

  constructor(
    readonly channel: amqp.ConfirmChannel,
    readonly stream: string,
    private readonly fail: (error: RabbitMqError) => void,
    private readonly moved: () => void
  ) {
    this.#routed = new RoutedChannel(channel, moveHeaders.seq)
  }

  #headers(seq: number): Record<string, unknown> {
    return { [moveHeaders.mover]: this.id, [moveHeaders.seq]: seq, [moveHeaders.acked]: this.#acked }
  }

  /** The session's first message, a marker: once the stream keeps it, the stream is routable. */
  readonly announce = Effect.tryPromise({
    try: () =>
      this.#routed.publishAsync("", this.stream, Buffer.from("{}"), { persistent: true, headers: this.#headers(0) }),
    catch: (cause) => new RabbitMqError({ reason: "ChannelLost", cause })
  })

  move({ message }: Delivery): void {
    const seq = ++this.#seq
    const entry: InFlight = { seq, message, kept: false }
    this.#inFlight.push(entry)
    const headers = {
      ...message.properties.headers,
      ...this.#headers(seq),
      [moveHeaders.routingKey]: message.fields.routingKey,
      [moveHeaders.time]: Date.now(),
      ...(message.fields.redelivered && { [moveHeaders.redelivered]: true })
    }
    this.#routed.publish("", this.stream, message.content, { ...carried(message), persistent: true, headers }, (outcome) => {
      if (outcome !== "kept") {
        // Returned or nacked: the broker refused it; any other error: the channel closed before the confirm.
        const refused = outcome === "returned" || outcome.message === "message nacked"
        // Nothing after it is acknowledged: no one waits for that.
        this.#wake()
        return this.fail(
          new RabbitMqError({
            reason: refused ? "MoveRefused" : "ChannelLost",
            cause: outcome === "returned" ? new Error("returned: the stream is not routable") : outcome,
            queue: this.stream
          })
        )
      }
      entry.kept = true
      this.moved()
      this.#acknowledge()
    })
  }

  /** Acknowledges the moves kept without a hole before them; what follows a refused move is never acknowledged. */
  #acknowledge() {
    let last: InFlight | undefined
    while (this.#inFlight.length > 0 && this.#inFlight[0]!.kept) last = this.#inFlight.shift()
    if (last === undefined) return
    this.#acked = last.seq
    if (this.#toAck === undefined) {
      queueMicrotask(() => {
        settleAll(this.channel, this.#toAck!)
        this.#toAck = undefined
        if (this.#inFlight.length === 0) this.#wake()
      })
    }
    this.#toAck = last.message
  }

  /** Resolves once every move made is confirmed and acknowledged, or one was refused. */
  settled(): Promise<void> {
    if (this.#inFlight.length === 0 && this.#toAck === undefined) return Promise.resolve()
    return new Promise((resolve) => this.#waiting.push(resolve))
  }

  #wake() {
    const waiting = this.#waiting
    this.#waiting = []
    for (const resolve of waiting) resolve()
  }
}

/** The mover: consumes the ingest queue (one hub at a time) and moves each message into the stream. */
export const ingestMode = (context: ModeContext): ConsumeMode => {
  const { config, metrics, setHealth } = context
  const queue = ingestQueueName(config.stream)
  return {
    queue,
    declare: (channel) =>
      Effect.andThen(declareIngest(channel, config), attempt("Topology", () => channel.prefetch(config.prefetch))),
    prepare: (channel, fail) =>
      Effect.gen(function*() {
        const session = new MoverSession(channel, config.stream, fail, () => metrics.count("rabbitmq", "events_moved"))
        // Moving starts once the stream takes messages: before that, every move would be refused.
        yield* session.announce.pipe(
          Effect.tap((outcome) =>
            outcome === "returned"
              ? setHealth("starting", "waiting for the stream to take messages (the broker is starting)")
              : Effect.void
          ),
          Effect.repeat({ schedule: routableRetry, until: (outcome) => outcome === "kept" })
        )
        // Released: the moves in flight are confirmed and acknowledged before the channel closes, so that only
        // what was not moved returns to the ingest queue (a move that returns is moved again).
        yield* Effect.addFinalizer(() => closing(() => session.settled()))
        return (delivery) => Effect.sync(() => session.move(delivery))
      }),
    consumeOptions: () => ({ noAck: false }),
    // The next mover gets what this one leaves before anything newer (Session.ts).
    closeWithoutCancel: true,
    consumeRefused: (cause) => new RabbitMqError({ reason: "Topology", cause, queue }),
    started: () => Effect.void,
    connected: Effect.andThen(
      setHealth("up"),
      Effect.logInfo("ready to move events from the ingest queue into the stream (one hub at a time moves)").pipe(
        Effect.annotateLogs({ queue, stream: config.stream })
      )
    ),
    describe: { ingest: queue }
  }
}
