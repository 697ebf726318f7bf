/**
 * `HUB_WORKERS` > 1: this process is the primary. It forks that many workers
 * (node:cluster), each a full hub (`service.ts`'s layers) serving the same port
 * and reading the broker on its own, and it supervises them:
 *
 * - it starts them only on a free port: with `reusePort`, another host's
 *   workers would share the port silently;
 * - a worker that exits is logged and started again (with a growing delay
 *   while it keeps dying young); its clients reconnect to the others and
 *   resume by id;
 * - a stop (SIGTERM, SIGINT) is passed to every worker, and the primary exits
 *   once they have all finished their own graceful shutdown;
 * - a worker's question about the whole host (`HostView.ts`: metrics, health)
 *   is put to every worker, and the answers are sent back to it; what a
 *   worker tells the others (events POSTed without a broker) is passed on,
 *   and the teller hears once they have all handled it.
 *
 * Who spreads the connections is `HUB_WORKERS_BALANCE`: the kernel (each
 * worker listens with `reusePort`) or this process (node:cluster's
 * round-robin); docs/performance.md has both measured.
 */
import cluster, { type Worker } from "node:cluster"
import { Deferred, Duration, Effect, Exit } from "effect"
import { createServer } from "node:net"
import type { WorkerSettings } from "../config/Config.js"
import { type HostMessage, type WorkerReport } from "./HostView.js"

/** A worker that exits sooner than this after it started counts as dying young. */
const youngMs = 10_000
/** The longest wait before a worker that keeps dying young is started again. */
const maxRestartDelayMs = 30_000
/** How long the primary waits for the workers' replies (to a question about the host, to what a worker tells). */
const replyTimeoutMs = 1_000

interface Slot {
  worker: Worker
  started: number
  /** Exits in a row soon after starting. */
  youngExits: number
}

/**
 * Fails if any process listens on the port. The workers listen with `SO_REUSEPORT` (`kernel` balance), which lets
 * another host's workers of the same user share the port silently; a listen without it fails on a port anyone
 * holds, with the option or without.
 */
const portIsFree = (host: string, port: number) =>
  Effect.callback<void, Error>((resume) => {
    const probe = createServer()
    probe.once("error", (cause) =>
      resume(Effect.fail(
        new Error(
          `${host}:${port} is taken by another process (another hub host, say: its workers and these would share ` +
            "the port silently with SO_REUSEPORT)",
          { cause }
        )
      )))
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resume(Effect.void)))
  })

/** Runs the workers until interrupted; then stops them all, each gracefully, and waits for their exits. */
export const run = (
  settings: WorkerSettings,
  listen: { readonly host: string; readonly port: number },
  stopTimeout: Duration.Duration
) =>
  Effect.gen(function*() {
    yield* portIsFree(listen.host, listen.port)
    const runFork = Effect.runForkWith(yield* Effect.context<never>())
    // Must be set before the first fork; with `kernel` the workers bind sockets of their own and this is unused.
    cluster.schedulingPolicy = settings.balance === "primary" ? cluster.SCHED_RR : cluster.SCHED_NONE
    const slots = new Map<number, Slot>()
    let stopping = false
    // Until a worker has listened once, a worker's exit means the hub cannot start (a taken port, say): as a hub of
    // one process does, the primary stops and exits with an error rather than restart them for ever.
    let started = false
    const cannotStart = yield* Deferred.make<never, Error>()
    /** Resumes the stop once every worker has exited. */
    let allExited = () => {}

    /** What each collection still waits for: the workers yet to reply, and what the replies carried. */
    const collections = new Map<number, { waiting: number; reports: Array<WorkerReport>; finish: () => void }>()
    let nextCollection = 0
    /**
     * Sends each of `targets` the message `ask` makes with a key of its own; `done` gets what came back within the
     * time limit (a worker that dies or hangs does not hold the others up).
     */
    const collect = (
      targets: ReadonlyArray<Worker>,
      ask: (key: number) => HostMessage,
      done: (reports: Array<WorkerReport>) => void
    ) => {
      const key = nextCollection++
      const reports: Array<WorkerReport> = []
      const finish = () => {
        clearTimeout(timer)
        if (collections.delete(key)) done(reports)
      }
      const timer = setTimeout(finish, replyTimeoutMs)
      collections.set(key, { waiting: targets.length, reports, finish })
      for (const worker of targets) worker.send(ask(key))
      if (targets.length === 0) finish()
    }
    /** A worker's reply to a collection: a report to keep, or only that it is done. */
    const replied = (key: number, report?: WorkerReport) => {
      const collection = collections.get(key)
      if (collection === undefined) return
      if (report !== undefined) collection.reports.push(report)
      if (--collection.waiting <= 0) collection.finish()
    }
    const connected = () => Array.from(slots.values(), (slot) => slot.worker).filter((worker) => worker.isConnected())
    const reply = (to: Worker, message: HostMessage) => {
      if (to.isConnected()) to.send(message)
    }

    const fork = (index: number, youngExits = 0) => {
      const worker = cluster.fork({ HUB_WORKER: String(index) })
      slots.set(index, { worker, started: Date.now(), youngExits })
      worker.on("message", (message: HostMessage) => {
        if (message.hub === "listening") started = true
        else if (message.hub === "gather") {
          // A question about the host: every worker answers, the asker included.
          collect(connected(), (key) => ({ hub: "report", id: key, kind: message.kind }), (reports) => {
            reports.sort((a, b) => a.worker - b.worker)
            reply(worker, { hub: "gathered", id: message.id, reports })
          })
        }
        else if (message.hub === "tell") {
          // Told to the others; the teller hears back once they have all handled it, so what it tells next (or what
          // another worker is told after its answer) comes after, on every worker.
          const others = connected().filter((other) => other !== worker)
          collect(
            others,
            (key) => ({ hub: "told", id: key, kind: message.kind, payload: message.payload }),
            () => reply(worker, { hub: "toldEveryone", id: message.id })
          )
        }
        else if (message.hub === "reported") replied(message.id, message.report)
        else if (message.hub === "heard") replied(message.id)
      })
      worker.on("exit", (code, signal) => {
        const slot = slots.get(index)
        if (slot?.worker !== worker) return
        slots.delete(index)
        if (stopping) {
          if (slots.size === 0) allExited()
          return
        }
        if (!started) {
          const reason = signal === null ? `exit code ${code}` : `signal ${signal}`
          Deferred.doneUnsafe(cannotStart, Exit.fail(new Error(`worker ${index} stopped before any worker listened (${reason}); its log says why`)))
          return
        }
        const young = Date.now() - slot.started < youngMs ? slot.youngExits + 1 : 0
        const delay = young === 0 ? 0 : Math.min(maxRestartDelayMs, 1000 * 2 ** (young - 1))
        runFork(Effect.logError("worker exited; starting another").pipe(Effect.annotateLogs({
          worker: index,
          pid: worker.process.pid,
          exit_code: code,
          signal: signal ?? undefined,
          restart_in_ms: delay
        })))
        setTimeout(() => {
          if (!stopping) fork(index, young)
        }, delay)
      })
    }

    const stopAll = Effect.callback<void>((resume) => {
      stopping = true
      if (slots.size === 0) return resume(Effect.void)
      allExited = () => resume(Effect.void)
      for (const { worker } of slots.values()) worker.process.kill("SIGTERM")
    }).pipe(
      // Each worker bounds its own shutdown (SHUTDOWN_TIMEOUT); one that hangs past it is killed.
      Effect.timeoutOrElse({
        duration: Duration.sum(stopTimeout, Duration.seconds(5)),
        orElse: () =>
          Effect.sync(() => {
            for (const { worker } of slots.values()) worker.process.kill("SIGKILL")
          })
      })
    )

    yield* Effect.acquireRelease(
      Effect.sync(() => {
        for (let index = 0; index < settings.count; index++) fork(index)
      }),
      () => Effect.andThen(Effect.logInfo("stopping the workers"), stopAll)
    )
    yield* Effect.logInfo("workers started").pipe(
      Effect.annotateLogs({ workers: settings.count, balance: settings.balance })
    )
    return yield* Deferred.await(cannotStart)
  }).pipe(Effect.scoped, Effect.annotateLogs({ component: "primary" }))
