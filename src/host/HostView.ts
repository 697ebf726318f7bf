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
  | { readonly hub: "listening" }
  | { readonly hub: "tell"; readonly id: number; readonly kind: string; readonly payload: unknown }
  | { readonly hub: "told"; readonly id: number; readonly kind: string; readonly payload: unknown }
  | { readonly hub: "heard"; readonly id: number }
  | { readonly hub: "toldEveryone"; readonly id: number }

/** Longer than the primary's own wait for the workers: a primary that does not answer leaves this worker's alone. */
const askTimeout = "2 seconds"

export class HostView extends Context.Service<HostView, {
  /** The workers this host runs (`HUB_WORKERS`); 1 when this process is the whole hub. */
  readonly workers: number
  /** What this process answers when `kind` is gathered. */
  readonly answer: (kind: string, report: Effect.Effect<unknown>) => Effect.Effect<void>
  /** Every worker's answer to `kind`, in worker order (this process's alone when it is the whole hub). */
  readonly gather: (kind: string) => Effect.Effect<ReadonlyArray<WorkerReport>>
  /**
   * Tells the primary this worker listens (node:cluster does not, for a socket of the worker's own): from then on
   * a worker that exits is started again.
   */
  readonly listening: Effect.Effect<void>
  /**
   * Gives `payload` to what every other worker `hear`s of `kind` (nothing without other workers); done once they
   * have all handled it, so that what anyone tells after comes after it everywhere (or after a time limit).
   */
  readonly tell: (kind: string, payload: unknown) => Effect.Effect<void>
  /** What this process does with what another worker `tell`s of `kind`, one telling after the other, in order. */
  readonly hear: (kind: string, handler: (payload: unknown) => Effect.Effect<void>) => Effect.Effect<void>
}>()("event-hub/HostView") {
  static readonly layer = Layer.effect(
    HostView,
    Effect.gen(function*() {
      const settings = yield* workerSettings
      const context = yield* Effect.context<never>()
      const runFork = Effect.runForkWith(context)
      // A handler that fails is logged; the next one runs all the same.
      const runPromise = (effect: Effect.Effect<void>) =>
        Effect.runPromiseWith(context)(Effect.catchCause(effect, (cause) => Effect.logError("a told message failed", cause)))
      const answers = new Map<string, Effect.Effect<unknown>>()
      const handlers = new Map<string, (payload: unknown) => Effect.Effect<void>>()
      const worker = Option.getOrElse(settings.index, () => 0)
      const own = (kind: string) =>
        Effect.map(answers.get(kind) ?? Effect.succeed(null), (report): ReadonlyArray<WorkerReport> => [
          { worker, pid: process.pid, report }
        ])
      const send = process.send?.bind(process)
      const service = {
        workers: settings.count,
        answer: (kind: string, report: Effect.Effect<unknown>) => Effect.sync(() => void answers.set(kind, report)),
        gather: own,
        listening: Effect.void,
        tell: (_kind: string, _payload: unknown) => Effect.void,
        hear: (kind: string, handler: (payload: unknown) => Effect.Effect<void>) =>
          Effect.sync(() => void handlers.set(kind, handler))
      }
      if (!cluster.isWorker || send === undefined || Option.isNone(settings.index)) return service

      const pending = new Map<number, (reports: ReadonlyArray<WorkerReport>) => void>()
      let next = 0
      /** What other workers told, handled one after the other in the order told. */
      let hearing: Promise<unknown> = Promise.resolve()
      const onMessage = (message: HostMessage) => {
        if (message.hub === "gathered") pending.get(message.id)?.(message.reports)
        else if (message.hub === "toldEveryone") pending.get(message.id)?.([])
        else if (message.hub === "told") {
          const handler = handlers.get(message.kind) ?? (() => Effect.void)
          hearing = hearing.then(() => runPromise(handler(message.payload))).catch(() => undefined).finally(() =>
            send({ hub: "heard", id: message.id } satisfies HostMessage)
          )
        }
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
      /** Sends the primary a message with an id of its own, and waits for the reply that carries that id. */
      const ask = (message: (id: number) => HostMessage) =>
        Effect.callback<ReadonlyArray<WorkerReport>>((resume) => {
          const id = next++
          pending.set(id, (reports) => {
            pending.delete(id)
            resume(Effect.succeed(reports))
          })
          send(message(id))
          return Effect.sync(() => pending.delete(id))
        })
      return {
        ...service,
        listening: Effect.sync(() => void send({ hub: "listening" } satisfies HostMessage)),
        tell: (kind: string, payload: unknown) =>
          Effect.asVoid(ask((id) => ({ hub: "tell", id, kind, payload })).pipe(
            Effect.timeoutOrElse({ duration: askTimeout, orElse: () => Effect.void })
          )),
        gather: (kind: string) =>
          ask((id) => ({ hub: "gather", id, kind })).pipe(
            Effect.timeoutOrElse({ duration: askTimeout, orElse: () => own(kind) })
          )
      }
    })
  )
}
