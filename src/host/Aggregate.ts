/** The host's answers made of its workers' (`HostView.ts`): pure functions of their reports. */
import type { ComponentStatus, HealthReport, OverallStatus } from "../ops/Health.js"
import type { WorkerReport } from "./HostView.js"

/**
 * The workers' JSON metrics as one: numbers summed, objects merged key by key (a key one worker lacks counts as 0),
 * anything else the first worker's.
 */
export const sum = (values: ReadonlyArray<unknown>): unknown => {
  const present = values.filter((value) => value !== undefined && value !== null)
  if (present.length === 0) return values[0]
  if (present.every((value) => typeof value === "number")) {
    return (present as Array<number>).reduce((total, value) => total + value, 0)
  }
  if (present.every((value) => typeof value === "object" && !Array.isArray(value))) {
    const keys = new Set(present.flatMap((value) => Object.keys(value as object)))
    return Object.fromEntries(
      Array.from(keys, (key) => [key, sum(present.map((value) => (value as Record<string, unknown>)[key]))])
    )
  }
  return present[0]
}

const componentOrder: ReadonlyArray<ComponentStatus> = ["disabled", "up", "starting", "down"]
const overallOrder: ReadonlyArray<OverallStatus> = ["ok", "degraded", "unavailable"]
const worst = <A>(order: ReadonlyArray<A>, a: A, b: A): A => order.indexOf(b) > order.indexOf(a) ? b : a

/**
 * The host's health: each check at its worst over the workers (its detail names the worker), the status at its
 * worst, and each worker's own status.
 */
export const health = (reports: ReadonlyArray<WorkerReport>) => {
  let status: OverallStatus = "ok"
  const checks: Record<string, { status: ComponentStatus; detail?: string }> = {}
  for (const { report, worker } of reports) {
    const one = report as HealthReport
    status = worst(overallOrder, status, one.status)
    for (const [name, check] of Object.entries(one.checks)) {
      const before = checks[name]
      if (before !== undefined && worst(componentOrder, before.status, check.status) === before.status) continue
      checks[name] = check.detail === undefined
        ? { status: check.status }
        : { status: check.status, detail: `worker ${worker}: ${check.detail}` }
    }
  }
  return {
    status,
    checks,
    workers: reports.map(({ pid, report, worker }) => ({ worker, pid, status: (report as HealthReport).status }))
  }
}
