// What the benchmarks read of other processes in /proc: CPU time, RSS, and which processes are RabbitMQ's.
import { existsSync, readdirSync, readFileSync } from "node:fs"

/**
 * CPU time (user + system) of a process, in microseconds: the sum of its threads' run time in
 * /proc/<pid>/task/<tid>/schedstat (nanoseconds; /proc/<pid>/stat only counts 10 ms clock ticks, too coarse for
 * the short windows of a quick run). NaN for a process that is gone.
 */
export const cpuMicros = (pid) => {
  if (!existsSync(`/proc/${pid}/task`)) return NaN
  let nanos = 0
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      nanos += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0])
    } catch {
      // the thread just exited
    }
  }
  return nanos / 1000
}

export const rssBytes = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) * 1024

/** The RabbitMQ servers (Erlang's beam.smp) running on this machine: the shared one, and any test node. */
export const rabbitPids = () =>
  readdirSync("/proc").filter((entry) => {
    try {
      return /^\d+$/.test(entry) && readFileSync(`/proc/${entry}/comm`, "latin1").startsWith("beam") &&
        readFileSync(`/proc/${entry}/cmdline`, "latin1").includes("rabbit")
    } catch {
      return false // gone, or not ours to read
    }
  }).map(Number)

/**
 * The broker a tool measures: `BROKER_PID`, or the only RabbitMQ VM running (test nodes are RabbitMQ VMs too);
 * `undefined` when several run and none is named, with the line that says so.
 */
export const measuredBroker = () => {
  const brokers = rabbitPids()
  const pid = Number(process.env.BROKER_PID) || (brokers.length === 1 ? brokers[0] : undefined)
  return {
    pid,
    says: pid === undefined
      ? `broker CPU not measured: ${brokers.length} RabbitMQ VMs running (pids ${brokers.join(", ")}); set BROKER_PID`
      : `broker CPU from pid ${pid}`
  }
}
