/**
 * A graceful shutdown, in two layers, each placed where its finalizer runs at
 * the right moment (layers are released in the reverse order of their
 * construction).
 *
 * `layerDrain`, for every program that serves clients behind a load balancer:
 * built last, so released first, its finalizer is the shutdown's first step.
 * Readiness turns 503, then clients are left alone for `SHUTDOWN_DRAIN_DELAY`,
 * so that a load balancer polling `/health/ready` stops sending new clients
 * before the old ones are told to reconnect (else they would reconnect to this
 * instance).
 *
 * `layer`, for a program run by `NodeRuntime.runMain` (main.ts), which turns
 * the first SIGTERM/SIGINT into an interruption that runs every finalizer: it
 * adds what `runMain` lacks, a second signal logged instead of killing the
 * process mid-shutdown, and a backstop that exits the process (status 1) if
 * the shutdown has not finished within `SHUTDOWN_TIMEOUT`. Built first, so
 * released last, it removes its listeners and its backstop when its scope
 * closes. A program without `runMain` leaves it out: its listeners would keep
 * SIGTERM from ending the process while nothing runs the finalizers.
 */
import { Duration, Effect, Layer } from "effect"
import { HubConfig } from "../config/Config.js"
import { Health } from "./Health.js"

const signals = ["SIGINT", "SIGTERM"] as const

export const layerDrain: Layer.Layer<never, never, HubConfig | Health> = Layer.effectDiscard(
  Effect.gen(function*() {
    const { shutdownDrainDelay } = yield* HubConfig
    const health = yield* Health
    yield* Effect.addFinalizer(() =>
      Effect.andThen(
        // Load balancers see 503 from now on, while clients are being closed.
        health.set("hub", { status: "down", critical: true, detail: "shutting down" }),
        Effect.logInfo("draining: not ready; clients are closed after the drain delay").pipe(
          Effect.annotateLogs({ drain_delay: Duration.format(shutdownDrainDelay) }),
          Effect.andThen(Effect.sleep(shutdownDrainDelay))
        )
      )
    )
  })
)

export const layer: Layer.Layer<never, never, HubConfig> = Layer.effectDiscard(
  Effect.gen(function*() {
    const { shutdownTimeout } = yield* HubConfig
    const runFork = Effect.runForkWith(yield* Effect.context<never>())
    /** Set by the first signal: the shutdown is under way, and bounded. */
    let backstop: ReturnType<typeof setTimeout> | undefined = undefined
    const onSignal = (signal: NodeJS.Signals) => {
      if (backstop !== undefined) {
        runFork(Effect.logWarning("shutdown already in progress").pipe(Effect.annotateLogs({ signal })))
        return
      }
      runFork(
        Effect.logInfo("shutting down").pipe(Effect.annotateLogs({ signal, timeout: Duration.format(shutdownTimeout) }))
      )
      backstop = setTimeout(() => {
        runFork(Effect.logError("shutdown did not finish in time; exiting").pipe(
          Effect.andThen(Effect.sync(() => process.exit(1)))
        ))
      }, Duration.toMillis(shutdownTimeout)).unref()
    }
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        for (const signal of signals) process.on(signal, onSignal)
      }),
      () =>
        Effect.sync(() => {
          for (const signal of signals) process.off(signal, onSignal)
          clearTimeout(backstop)
        })
    )
  })
)
