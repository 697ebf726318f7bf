/**
 * The RabbitMQ source: consumes the publishers' topic exchange and
 * broadcasts every event through the hub, in one of two modes: stream mode
 * (the default; `StreamMode.ts`) or queue mode (`QueueMode.ts`).
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
import { RabbitMqConfig, type RabbitMqSettings } from "../config/Config.js"
import { HubHistory } from "../hub/History.js"
import { Hub } from "../hub/Hub.js"
import { Health } from "../ops/Health.js"
import { HubMetrics } from "../ops/Metrics.js"
import { queueMode } from "./QueueMode.js"
import { type ConsumeMode, type ModeContext, RabbitMqError, safeUrl, session } from "./Session.js"
import { streamMode } from "./StreamMode.js"

export { type MappedEvent, toEvent } from "./Message.js"
export { RabbitMqError, safeUrl } from "./Session.js"

/** Capped exponential backoff with jitter: about delay, 2 x delay, ... up to the cap, forever. */
export const reconnectSchedule = (config: Pick<RabbitMqSettings, "reconnectDelay" | "maxReconnectWait">) =>
  Schedule.exponential(config.reconnectDelay).pipe(
    Schedule.jittered,
    Schedule.union(Schedule.spaced(config.maxReconnectWait)),
    Schedule.delays
  )

/** Sessions one after the other, for ever: each failure is reported, then retried by the schedule. */
const consume = (context: ModeContext, url: Redacted.Redacted, mode: ConsumeMode) => {
  const { config, metrics, setHealth } = context
  return session(config, url, mode).pipe(
    Stream.mapEffect(() => Effect.zipRight(Effect.sync(() => metrics.count("rabbitmq", "connections")), mode.connected)),
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
    Stream.runDrain
  )
}

const run = Effect.gen(function*() {
  const config = yield* RabbitMqConfig
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

  const context: ModeContext = { config, hub: yield* Hub, history, metrics, setHealth }
  const mode = config.mode === "stream" ? streamMode(context) : queueMode(context)
  yield* Effect.logInfo("RabbitMQ source starting").pipe(Effect.annotateLogs({
    url: safeUrl(Redacted.value(url)),
    exchange: config.exchange,
    ...mode.describe,
    binding_keys: config.bindingKeys.join(",")
  }))
  yield* consume(context, url, mode).pipe(
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
