/**
 * The whole host, as a worker of `HUB_WORKERS` sees it: the routes that
 * answer for the host (`/metrics`, `/health`, the dashboard) register what
 * this process answers (`answer`), and `gather` asks every worker through the
 * primary (`Primary.ts`), whichever worker took the request. In a process that
 * is the whole hub, `gather` is this process's own answer, and the routes keep
 * their single-process form.
 */
import cluster from "node:cluster"
import { Context, Effect, Layer, Option } from "effect"
import { workerSettings } from "../config/Config.js"

/** One worker's answer. */
export interface WorkerReport {
  readonly worker: number
  readonly pid: number
  readonly report: unknown
}

/** What the primary and the workers say to each other over node:cluster's channel. */
export type HostMessage =
  | { readonly hub: "gather"; readonly id: number; readonly kind: string }
  | { readonly hub: "report"; readonly id: number; readonly kind: string }
  | { readonly hub: "reported"; readonly id: number; readonly report: WorkerReport }
  | { readonly hub: "gathered"; readonly id: number; readonly reports: ReadonlyArray<WorkerReport> }

/** Longer than the primary's own wait for the workers: a primary that does not answer leaves this worker's alone. */
const askTimeout = "2 seconds"

export class HostView extends Context.Service<HostView, {
  /** The workers this host runs (`HUB_WORKERS`); 1 when this process is the whole hub. */
  readonly workers: number
  /** What this process answers when `kind` is gathered. */
  readonly answer: (kind: string, report: Effect.Effect<unknown>) => Effect.Effect<void>
  /** Every worker's answer to `kind`, in worker order (this process's alone when it is the whole hub). */
  readonly gather: (kind: string) => Effect.Effect<ReadonlyArray<WorkerReport>>
}>()("event-hub/HostView") {
  static readonly layer = Layer.effect(
    HostView,
    Effect.gen(function*() {
      const settings = yield* workerSettings
      const runFork = Effect.runForkWith(yield* Effect.context<never>())
      const answers = new Map<string, Effect.Effect<unknown>>()
      const worker = Option.getOrElse(settings.index, () => 0)
      const own = (kind: string) =>
        Effect.map(answers.get(kind) ?? Effect.succeed(null), (report): ReadonlyArray<WorkerReport> => [
          { worker, pid: process.pid, report }
        ])
      const send = process.send?.bind(process)
      const service = {
        workers: settings.count,
        answer: (kind: string, report: Effect.Effect<unknown>) => Effect.sync(() => void answers.set(kind, report)),
        gather: own
      }
      if (!cluster.isWorker || send === undefined || Option.isNone(settings.index)) return service

      const pending = new Map<number, (reports: ReadonlyArray<WorkerReport>) => void>()
      let next = 0
      const onMessage = (message: HostMessage) => {
        if (message.hub === "gathered") pending.get(message.id)?.(message.reports)
        else if (message.hub === "report") {
          runFork(Effect.flatMap(own(message.kind), ([report]) =>
            Effect.sync(() => send({ hub: "reported", id: message.id, report: report! } satisfies HostMessage))))
        }
      }
      // Without its primary this worker is on its own: it stops, gracefully.
      const onDisconnect = () => {
        runFork(Effect.logError("the primary process is gone; stopping this worker").pipe(
          Effect.andThen(Effect.sync(() => process.kill(process.pid, "SIGTERM")))
        ))
      }
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          process.on("message", onMessage)
          process.on("disconnect", onDisconnect)
        }),
        () =>
          Effect.sync(() => {
            process.off("message", onMessage)
            process.off("disconnect", onDisconnect)
          })
      )
      return {
        ...service,
        gather: (kind: string) =>
          Effect.callback<ReadonlyArray<WorkerReport>>((resume) => {
            const id = next++
            pending.set(id, (reports) => {
              pending.delete(id)
              resume(Effect.succeed(reports))
            })
            send({ hub: "gather", id, kind } satisfies HostMessage)
            return Effect.sync(() => pending.delete(id))
          }).pipe(Effect.timeoutOrElse({ duration: askTimeout, orElse: () => own(kind) }))
      }
    })
  )
}
