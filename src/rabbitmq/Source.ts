/**
 * The RabbitMQ source: consumes the publishers' topic exchange and
 * broadcasts every event through the hub, in one of two modes: stream mode
 * (the default; `StreamMode.ts` reads the stream, and `Ingest.ts` moves the
 * ingest queue into it, each in sessions of its own) or queue mode
 * (`QueueMode.ts`).
 *
 * One session (`Session.ts`: connect, declare, consume) is a `Stream`;
 * losing the connection or the channel fails it, and `Stream.retry` starts a
 * new session after a capped, jittered exponential delay. A session emits
 * once it consumes, which resets the backoff.
 *
 * Deliveries are acknowledged only after the hub has taken them, so an event
 * is never acknowledged and lost; a body that is not a JSON object is
 * rejected without requeue (dead-lettered if so configured).
 */
import { Cause, Duration, Effect, Layer, Option, Redacted, Schedule, Stream } from "effect"
import { brokerUrls, RabbitMqConfig, type RabbitMqSettings } from "../config/Config.js"
import { HubHistory } from "../hub/History.js"
import { Hub } from "../hub/Hub.js"
import { Health } from "../ops/Health.js"
import { HubMetrics } from "../ops/Metrics.js"
import { ingestMode } from "./Ingest.js"
import { queueMode } from "./QueueMode.js"
import { type ConsumeMode, type ModeContext, RabbitMqError, safeUrl, session } from "./Session.js"
import { streamMode } from "./StreamMode.js"

export { type MappedEvent, toEvent } from "./Message.js"
export { RabbitMqError, safeUrl } from "./Session.js"

/** Capped exponential backoff with jitter: about delay, 2 x delay, ... up to the cap, forever. */
export const reconnectSchedule = (config: Pick<RabbitMqSettings, "reconnectDelay" | "maxReconnectWait">) =>
  Schedule.min([Schedule.jittered(Schedule.exponential(config.reconnectDelay)), Schedule.spaced(config.maxReconnectWait)])

/**
 * Sessions one after the other, for ever: each failure is reported, then retried by the schedule. With several
 * broker URLs (a cluster's nodes), each session connects to the first that answers, starting after the one the
 * last session used.
 */
const consume = (context: ModeContext, urls: ReadonlyArray<Redacted.Redacted>, mode: ConsumeMode) => {
  const { config, metrics, setHealth } = context
  let next = 0
  return Stream.suspend(() => session(config, urls, next++ % urls.length, mode)).pipe(
    Stream.mapEffect(() => Effect.andThen(Effect.sync(() => metrics.count("rabbitmq", "connections")), mode.connected)),
    // A defect (a bug, an amqplib surprise) ends the session like a lost connection: retried, never fatal.
    Stream.catchCause((cause) => {
      if (Cause.hasInterruptsOnly(cause)) return Stream.failCause(cause)
      // The session's own errors go on as they are (their message says what to do); anything else is unexpected.
      const failure = Cause.findErrorOption(cause)
      return Stream.fail(
        Option.isSome(failure) ? failure.value : new RabbitMqError({ reason: "Unexpected", cause: Cause.squash(cause) })
      )
    }),
    Stream.tapError((error) =>
      Effect.andThen(
        setHealth("down", error.message),
        (error.needsAction ? Effect.logError : Effect.logWarning)("RabbitMQ connection failed").pipe(
          Effect.annotateLogs({ error: error.message, ...mode.describe })
        )
      )
    ),
    Stream.retry(reconnectSchedule(config).pipe(
      Schedule.tap(({ output: delay }) =>
        Effect.andThen(
          Effect.sync(() => metrics.count("rabbitmq", "reconnects")),
          Effect.logInfo("reconnecting to RabbitMQ").pipe(
            Effect.annotateLogs({ delay_ms: Math.round(Duration.toMillis(delay)), ...mode.describe })
          )
        )
      )
    )),
    Stream.runDrain,
    // Whatever ends it, /health must not keep saying it is up.
    Effect.ensuring(setHealth("down", "stopped"))
  )
}

/** The counters of the source, declared so that they show as 0 before their first event. */
const counters = [
  "connections",
  "reconnects",
  "events_consumed",
  "events_refilled",
  "events_rejected",
  "duplicates_dropped",
  "events_moved",
  "moves_repeated",
  "moves_after_hole",
  "stream_holes"
]

/** The health checks of the stream's reader (and of queue mode's consumer) and of the ingest queue's mover. */
const readerCheck = "rabbitmq"
const moverCheck = "rabbitmq_ingest"

/**
 * The source's consumers, checked while the layer is built: a configuration the source cannot run fails the
 * build with what to change, instead of a fiber dying unseen.
 */
const make = Effect.gen(function*() {
  const config = yield* RabbitMqConfig
  const history = yield* HubHistory
  const metrics = yield* HubMetrics
  const health = yield* Health
  const hub = yield* Hub
  const checkOf = (check: string) => (status: "up" | "starting" | "down", detail?: string) =>
    health.set(check, { status, critical: false, detail })

  if (Option.isNone(config.url)) {
    yield* health.set(readerCheck, { status: "disabled", critical: false, detail: "RABBITMQ_URL is empty" })
    yield* Effect.logInfo("RabbitMQ source disabled (RABBITMQ_URL is empty)")
    return Effect.void
  }
  if (config.mode === "stream" && history.mode !== "stream") {
    return yield* Effect.die(new Error(
      "RABBITMQ_MODE=stream needs the hub's history to use stream ids: build the hub with HubLive (Hub.layerLive), " +
        "which reads the same RabbitMqConfig, not with HubLocalLive (Hub.layerLocal)"
    ))
  }
  const urls = brokerUrls(config.url.value)
  metrics.declare("rabbitmq", counters)
  const reader: ModeContext = { config, hub, history, metrics, setHealth: checkOf(readerCheck) }
  const mover: ModeContext = { ...reader, setHealth: checkOf(moverCheck) }
  const modes = config.mode === "queue"
    ? [[reader, queueMode(reader)] as const]
    : config.ingest === "quorum"
    ? [[reader, streamMode(reader)] as const, [mover, ingestMode(mover)] as const]
    : [[reader, streamMode(reader)] as const]
  for (const [context] of modes) yield* context.setHealth("starting", "connecting")
  yield* Effect.logInfo("RabbitMQ source starting").pipe(Effect.annotateLogs({
    urls: urls.map((url) => safeUrl(Redacted.value(url))).join(","),
    exchange: config.exchange,
    ...Object.assign({}, ...modes.map(([, mode]) => mode.describe)),
    binding_keys: config.bindingKeys.join(",")
  }))
  return Effect.forEach(modes, ([context, mode]) => consume(context, urls, mode), {
    concurrency: "unbounded",
    discard: true
  })
}).pipe(Effect.annotateLogs({ component: "rabbitmq" }))

/** Runs the source for the lifetime of the layer; does nothing when `RABBITMQ_URL` is empty. */
export const layer: Layer.Layer<never, never, RabbitMqConfig | Hub | HubHistory | HubMetrics | Health> = Layer
  .effectDiscard(
    Effect.flatMap(make, (run) =>
      Effect.forkScoped(
        run.pipe(
          Effect.onInterrupt(() => Effect.logInfo("RabbitMQ source stopped")),
          Effect.annotateLogs({ component: "rabbitmq" })
        )
      ))
  )
