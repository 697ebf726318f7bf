// Connection churn (issue 14): steady clients receiving 100 events/s, first alone, then beside `loops` loops that
// each connect a client, subscribe, receive a few events and close, again and again (churn-loops.mjs, in a process
// of its own). The hub and the bare `ws` server (bench/servers/baseline.mjs, MODE=send) do the same, in turn, each
// `repeat` times; the figures are the medians of the runs.
//
// Measured per run: the server's CPU per connect+disconnect cycle (its CPU during the churn window, less what the
// steady clients alone cost it per second in the quiet window), the cycles per second the loops achieve (they run
// as fast as the server lets them: saturation, with the server's share of a core shown), and the steady clients'
// p99 from publish to receipt in both windows.
import { dirname, join } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import { startWorker } from "../worker.mjs"

const here = dirname(fileURLToPath(import.meta.url))

const startChurner = () => startWorker(join(here, "churn-loops.mjs"))

/** Publishes one event every 1/rate s over HTTP (with its publish time in `t`) until `stop` is called. */
const startPublisher = (server, rate, eventData) => {
  const base = eventData(450)
  let running = true
  let sent = 0
  const done = (async () => {
    const start = performance.now()
    while (running) {
      const due = Math.floor(((performance.now() - start) / 1000) * rate)
      for (; sent < due && running; sent++) {
        const data = { t: performance.timeOrigin + performance.now(), ...base, event_id: `${start}-${sent}` }
        const response = await fetch(`${server.base}/api/v1/events`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: "Bearer bench" },
          body: JSON.stringify({ type: "backtest.completed", data })
        })
        await response.arrayBuffer()
      }
      await new Promise((resolve) => setTimeout(resolve, 2))
    }
  })()
  return { stop: async () => { running = false; await done } }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** One run against `kind`: the quiet window, then the churn window. */
const churnRun = async (kind, ctx, settings) => {
  const { startServer, startLoadgen, cpuMicros, seedTypes, eventData } = ctx
  const [server, steady, churner] = await Promise.all([startServer(kind), startLoadgen(), startChurner()])
  let publisher
  try {
    await steady.call("connect", { url: server.url, count: settings.steady, types: seedTypes, perClient: 0, hub: kind === "hub" })
    publisher = startPublisher(server, settings.rate, eventData)
    // Warm-up: both paths (the steady delivery and the connection's life) compiled before anything is measured.
    await churner.call("start", { url: server.url, count: settings.loops, events: settings.events })
    await sleep(settings.warmupMs)
    await churner.call("stop")
    await sleep(500)

    const window = async (churning) => {
      if (churning) {
        await churner.call("start", { url: server.url, count: settings.loops, events: settings.events })
        await sleep(500) // the loops ramp up
      }
      const c0 = churning ? (await churner.call("read")).cycles : 0
      await steady.call("latencyStart")
      const cpu0 = cpuMicros(server.pid)
      const t0 = performance.now()
      await sleep(settings.seconds * 1000)
      const cpu = cpuMicros(server.pid) - cpu0
      const seconds = (performance.now() - t0) / 1000
      const counts = churning ? await churner.call("read") : { cycles: 0, failures: 0 }
      const latency = await steady.call("latencyStop")
      if (churning) await churner.call("stop")
      return { seconds, cpu, cycles: counts.cycles - c0, failures: counts.failures, latency }
    }
    const quiet = await window(false)
    const churn = await window(true)
    const quietRate = quiet.cpu / quiet.seconds
    return {
      server: kind,
      steady_p99_quiet_ms: quiet.latency.p99,
      steady_p99_churn_ms: churn.latency.p99,
      steady_p50_quiet_ms: quiet.latency.p50,
      steady_p50_churn_ms: churn.latency.p50,
      p99_ratio: churn.latency.p99 / quiet.latency.p99,
      samples: quiet.latency.samples + churn.latency.samples,
      cycles_per_second: churn.cycles / churn.seconds,
      cpu_us_per_cycle: (churn.cpu - quietRate * churn.seconds) / churn.cycles,
      server_cores_quiet: quietRate / 1e6,
      server_cores_churn: churn.cpu / churn.seconds / 1e6,
      failed_cycles: churn.failures
    }
  } finally {
    await publisher?.stop()
    await Promise.all([steady.stop(), churner.stop()])
    await server.stop()
  }
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor((sorted.length - 1) / 2)]
}

/** The scenario: hub and bare ws in turn, `repeat` times; adds its rows and `report.scenarios.churn`. */
export const run = async (ctx) => {
  const { options, progress, report, rows, fmt } = ctx
  const arg = (name) => {
    const i = process.argv.indexOf(`--${name}`)
    return i >= 0 ? process.argv[i + 1] : undefined
  }
  const flag = (name, fallback) => arg(name) === undefined ? fallback : Number(arg(name))
  const settings = {
    steady: flag("churn-steady", options.quick ? 100 : 200),
    loops: flag("churn-loops", options.quick ? 50 : 200),
    events: 3,
    rate: 100,
    seconds: flag("churn-seconds", options.quick ? 2 : 5),
    warmupMs: options.quick ? 1000 : 2000,
    repeat: flag("churn-repeat", options.quick ? 1 : 3),
    // `--churn-servers hub`: the hub alone (to compare two builds, see BENCH_HUB in run.mjs).
    servers: (arg("churn-servers") ?? "ws-send,hub").split(",")
  }
  const runs = []
  for (let round = 1; round <= settings.repeat; round++) {
    for (const kind of settings.servers) {
      progress(`churn: ${kind}, ${settings.steady} steady clients at ${settings.rate} events/s, ${settings.loops} churn loops, round ${round} of ${settings.repeat}`)
      runs.push(await churnRun(kind, ctx, settings))
    }
  }
  const summary = (kind) => {
    const mine = runs.filter((r) => r.server === kind)
    const figures = Object.keys(mine[0]).filter((key) => typeof mine[0][key] === "number")
    return {
      server: kind,
      runs: mine.length,
      ...Object.fromEntries(figures.map((key) => [key, median(mine.map((r) => r[key]))])),
      cpu_us_per_cycle_range: [Math.min(...mine.map((r) => r.cpu_us_per_cycle)), Math.max(...mine.map((r) => r.cpu_us_per_cycle))],
      p99_ratio_range: [Math.min(...mine.map((r) => r.p99_ratio)), Math.max(...mine.map((r) => r.p99_ratio))]
    }
  }
  const hub = summary("hub")
  const bare = settings.servers.includes("ws-send") ? summary("ws-send") : undefined
  report.scenarios.churn = { settings, hub, bare, runs }
  for (const s of bare === undefined ? [hub] : [hub, bare]) {
    rows.push([
      `churn ${s.server === "hub" ? "hub" : "bare ws"} (${settings.loops} loops)`,
      `${fmt(s.cpu_us_per_cycle, 0)} us CPU/cycle` + (s === hub && bare !== undefined ? ` (${fmt(hub.cpu_us_per_cycle / bare.cpu_us_per_cycle)}x bare ws)` : ""),
      `${fmt(s.cycles_per_second, 0)} cycles/s, server ${fmt(s.server_cores_churn)} core`,
      `steady p99 ${fmt(s.steady_p99_quiet_ms)} -> ${fmt(s.steady_p99_churn_ms)} ms (${fmt(s.p99_ratio)}x)` +
        (s.failed_cycles > 0 ? `, ${s.failed_cycles} failed cycles` : "")
    ])
  }
}
