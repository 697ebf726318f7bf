/**
 * Process signals for the standalone service. `NodeRuntime.runMain` turns the
 * first SIGTERM/SIGINT into an interruption, which runs every layer's
 * finalizer in order. This layer adds what it lacks: a second signal is
 * logged instead of killing the process mid-shutdown, and a backstop exits
 * the process if the shutdown has not finished within `SHUTDOWN_TIMEOUT`.
 *
 * Its finalizer is the first step of the shutdown (main.ts releases it before
 * the RabbitMQ source and the HTTP server): readiness turns 503, then clients
 * are left alone for `SHUTDOWN_DRAIN_DELAY`, so that a load balancer polling
 * `/health/ready` stops sending new clients before the old ones are told to
 * reconnect (else they would reconnect to this instance).
 */
import { Duration, Effect, Layer, Runtime } from "effect"
import { HubConfig } from "../config/Config.js"
import { Health } from "./Health.js"

const signals = ["SIGINT", "SIGTERM"] as const

export const layer: Layer.Layer<never, never, HubConfig | Health> = Layer.scopedDiscard(
  Effect.gen(function*() {
    const { shutdownDrainDelay, shutdownTimeout } = yield* HubConfig
    const health = yield* Health
    yield* Effect.addFinalizer(() =>
      Effect.zipRight(
        health.set("hub", { status: "down", critical: true, detail: "shutting down" }),
        Effect.logInfo("draining: not ready; clients are closed after the drain delay").pipe(
          Effect.annotateLogs({ drain_delay: Duration.format(shutdownDrainDelay) }),
          Effect.zipRight(Effect.sleep(shutdownDrainDelay))
        )
      )
    )
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    let stopping = false
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        runFork(Effect.logWarning("shutdown already in progress").pipe(Effect.annotateLogs({ signal })))
        return
      }
      stopping = true
      runFork(Effect.zipRight(
        // Load balancers see 503 from now on, while clients are being closed.
        health.set("hub", { status: "down", critical: true, detail: "shutting down" }),
        Effect.logInfo("shutting down").pipe(Effect.annotateLogs({ signal, timeout: Duration.format(shutdownTimeout) }))
      ))
      setTimeout(() => {
        runFork(Effect.logError("shutdown did not finish in time; exiting").pipe(
          Effect.zipRight(Effect.sync(() => process.exit(1)))
        ))
      }, Duration.toMillis(shutdownTimeout)).unref()
    }
    // Kept for the life of the process: removing it would let a late signal kill it.
    for (const signal of signals) process.on(signal, onSignal)
  })
)
