/**
 * The standalone service: every layer, configured from the environment,
 * launched until SIGTERM/SIGINT.
 *
 * Layers are released in the reverse order of their construction, so on
 * shutdown readiness turns 503 first and clients are left alone for
 * `SHUTDOWN_DRAIN_DELAY` (Shutdown.ts), then the RabbitMQ consumer stops
 * (deliveries not yet acknowledged go back to the queue), then the HTTP server
 * stops accepting connections and closes every client with 1001, then the hub
 * itself.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, Config, Duration, Effect, Exit, Layer, Logger, Option, Runtime } from "effect"
import cluster from "node:cluster"
import { HubConfig, layerEnv, RabbitMqConfig, type WorkerSettings, workerSettings } from "./config/Config.js"
import { HostView } from "./host/HostView.js"
import * as Primary from "./host/Primary.js"
import * as HttpServer from "./http/Server.js"
import * as Hub from "./hub/Hub.js"
import * as Logging from "./ops/Logging.js"
import { Publisher } from "./rabbitmq/Publisher.js"
import * as RabbitMqSource from "./rabbitmq/Source.js"
import * as Shutdown from "./ops/Shutdown.js"
import * as Tracing from "./ops/Tracing.js"

const MainLive = Shutdown.layerDrain.pipe(
  // Built last, so released first: the drain comes before anything stops.
  Layer.provideMerge(RabbitMqSource.layer.pipe(Layer.provideMerge(HttpServer.layer))),
  Layer.provide(Hub.layerLive),
  // With HUB_WORKERS, /metrics, /health and the dashboard answer for every worker of the host.
  Layer.provide(HostView.layer),
  // Clients' `publish` requests and POST /api/v1/events go through the exchange; closed after the HTTP server.
  Layer.provide(Publisher.layer),
  // Built before the rest, so released after it: a second signal is logged, not fatal, until the shutdown is over.
  Layer.provide(Shutdown.layer),
  // RabbitMqConfig reaches the hub too: in stream mode its history uses stream ids from the start.
  Layer.provide(Layer.merge(HubConfig.fromEnv, RabbitMqConfig.fromEnv)),
  Layer.provide(Logging.layer),
  // Set but empty is a value (RABBITMQ_URL="" turns the source off), for every setting read above and below.
  Layer.provide(layerEnv),
  // OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set; otherwise Effect's tracer is off. Flushed last.
  Layer.provide(Tracing.layer)
)

/** An error with its cause, such as the server's `listen EADDRINUSE: address already in use 0.0.0.0:8080`. */
const describe = (error: unknown): string => {
  const cause = (error as { cause?: unknown }).cause
  return cause instanceof Error ? `${String(error)}: ${cause.message}` : String(error)
}

/**
 * HUB_WORKERS > 1: the primary, which runs the workers (each of them runs `MainLive`). The hub's settings are
 * checked here once, rather than by every worker in a loop of restarts.
 */
const PrimaryMain = (workers: WorkerSettings) =>
  Effect.flatMap(HubConfig, (hub) => Primary.run(workers, Duration.sum(hub.shutdownTimeout, hub.shutdownDrainDelay))).pipe(
    Effect.provide(Layer.merge(HubConfig.fromEnv, RabbitMqConfig.fromEnv)),
    Effect.provide(Logging.layer),
    Effect.provide(layerEnv)
  )

const readWorkers = Effect.provide(Effect.gen(function*() {
  return yield* workerSettings
}), layerEnv)

const main = Effect.flatMap(readWorkers, (workers) =>
  workers.count > 1 && cluster.isPrimary
    ? PrimaryMain(workers)
    : Layer.launch(MainLive).pipe(
      Effect.annotateLogs(Option.match(workers.index, { onNone: () => ({}), onSome: (worker) => ({ worker }) }))
    )).pipe(
  Effect.tapError((error) =>
    Effect.logFatal(error instanceof Config.ConfigError ? `invalid configuration ${error}` : `cannot start: ${describe(error)}`)
  ),
  // Until LOG_FORMAT has been read (or if it is invalid), log JSON.
  Effect.provide(Logger.layer([Logger.consoleJson]))
)

NodeRuntime.runMain(main, {
  disableErrorReporting: true,
  // SIGTERM and SIGINT interrupt the program: a graceful stop, so exit 0 (Effect 4 reports 130 by default).
  teardown: (exit, onExit) =>
    Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause) ? onExit(0) : Runtime.defaultTeardown(exit, onExit)
})
