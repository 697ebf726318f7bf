/**
 * The standalone service: `service.ts`'s layers, launched until SIGTERM or
 * SIGINT; with `HUB_WORKERS` > 1, the primary that runs them in workers
 * (`host/Primary.ts`). The layers are imported only where they run: the
 * primary does without them.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, Config, Duration, Effect, Exit, Layer, Logger, Option, Runtime } from "effect"
import cluster from "node:cluster"
import { HubConfig, layerEnv, RabbitMqConfig, type WorkerSettings, workerSettings } from "./config/Config.js"
import * as Primary from "./host/Primary.js"
import * as Logging from "./ops/Logging.js"

/** An error with its cause, such as the server's `listen EADDRINUSE: address already in use 0.0.0.0:8080`. */
const describe = (error: unknown): string => {
  const cause = (error as { cause?: unknown }).cause
  return cause instanceof Error ? `${String(error)}: ${cause.message}` : String(error)
}

/**
 * HUB_WORKERS > 1: the primary, which runs the workers (each of them runs `service.ts`'s `MainLive`). The hub's
 * settings are checked here once, rather than by every worker in a loop of restarts.
 */
const PrimaryMain = (workers: WorkerSettings) =>
  Effect.flatMap(HubConfig, (hub) =>
    Primary.run(workers, { host: hub.host, port: hub.port }, Duration.sum(hub.shutdownTimeout, hub.shutdownDrainDelay))
  ).pipe(
    Effect.provide(Layer.merge(HubConfig.fromEnv, RabbitMqConfig.fromEnv)),
    Effect.provide(Logging.layer),
    Effect.provide(layerEnv)
  )

const readWorkers = Effect.provide(Effect.gen(function*() {
  return yield* workerSettings
}), layerEnv)

/** The hub itself: in a single process, or in one worker of the host. */
const HubMain = Effect.tryPromise({
  try: () => import("./service.js"),
  catch: (cause) => new Error("the service's layers (dist/service.js) did not load", { cause })
}).pipe(Effect.flatMap(({ MainLive }) => Layer.launch(MainLive)))

/** One FATAL line for whatever ends the program but a stop: a failure, or a defect (a throw while building). */
const fatal = (cause: Cause.Cause<unknown>) => {
  if (Cause.hasInterruptsOnly(cause)) return Effect.void
  const error = Cause.squash(cause)
  return Effect.logFatal(
    error instanceof Config.ConfigError ? `invalid configuration ${error}` : `cannot start: ${describe(error)}`
  )
}

const main = Effect.flatMap(Effect.tapCause(readWorkers, fatal), (workers) =>
  (workers.count > 1 && cluster.isPrimary ? PrimaryMain(workers) : HubMain).pipe(
    Effect.tapCause(fatal),
    // A worker's lines, its last one included, say which worker wrote them.
    Effect.annotateLogs(Option.match(workers.index, { onNone: () => ({}), onSome: (worker) => ({ worker }) }))
  )).pipe(
  // Until LOG_FORMAT has been read (or if it is invalid), log JSON.
  Effect.provide(Logger.layer([Logger.consoleJson]))
)

NodeRuntime.runMain(main, {
  disableErrorReporting: true,
  // SIGTERM and SIGINT interrupt the program: a graceful stop, so exit 0 (Effect 4 reports 130 by default).
  teardown: (exit, onExit) =>
    Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause) ? onExit(0) : Runtime.defaultTeardown(exit, onExit)
})
