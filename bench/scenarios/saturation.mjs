// Saturation (not in the default list): deliveries per second the hub sustains on this machine with 1 worker and
// with 2 (HUB_WORKERS=2, for each HUB_WORKERS_BALANCE: `kernel` and `primary`), and the 2-worker / 1-worker ratio
// for each (the target is at least 1.7x). Events are POSTed to /api/v1/events, by default without a broker.
//
//   npm run bench -- --scenarios saturation [--saturation-clients 2000] [--saturation-seconds 10]
//                    [--saturation-balance kernel,primary] [--saturation-repeat 1] [--saturation-window 200]
//                    [--saturation-drain-ms 100] [--saturation-broker]
//
// Without a broker, the worker that takes a POST passes its events to the other workers through the primary
// (HostView.tell), so every client gets every event. `--saturation-broker` runs the hub in stream mode on RabbitMQ instead
// (--broker, an exchange and stream of its own, deleted after): every worker reads every event from the stream; the
// broker's own CPU (on the same 2 cores) is not in the server's figure then.
//
// `--saturation-clients` clients (2,000), in 2 load-generator processes (bench/loadgen.mjs), receive every event
// (the hub's default subscription, `#`); they only drain their sockets every 100 ms and count the text frames in
// what they read (countFrames), a few operations per frame. Events (~450 B, 50 per POST) are POSTed as fast as the
// hub delivers them: a POST goes out whenever fewer than `--saturation-window` events (200) per client are still on
// their way (published, not yet counted at the clients), well below the hub's WS_SEND_BUFFER (256), so that no
// client is dropped as a slow consumer: the hub always has events to deliver, never an unbounded pile of them (when
// the server's CPU stays well under its workers' count, something else held it back). After 2 s of warm-up, deliveries
// counted at the clients over `--saturation-seconds` (10) give the deliveries per second. Then publishing stops and
// every event must reach every client (lost: must be 0).
//
// The load generators and this driver run on the same 2 cores as the hub: nothing is pinned (pinning would not give
// the hub a core more). Instead every party's CPU is measured over the window and reported beside the rate: the hub's
// processes (the primary and its workers, from /proc/<pid>/task/*/schedstat), the load generators', and this
// process's (the POSTs). So the 2-worker figure is what the hub reaches with what the generators leave it (they take
// more as the rate rises: at 3 s tries, about 0.5 us of load-generator CPU per delivery, mostly the kernel's receive
// path, against the hub's 0.8), and the server's CPU per delivery, and the deliveries per second per server core
// against 1 worker's ("per server core"), show what a second worker costs apart from that.
import { performance } from "node:perf_hooks"
import { startHub, sumOver } from "./host.mjs"

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const burst = 50
const generatorsPerRun = 2
const warmupMs = 2000

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor((sorted.length - 1) / 2)]
}

/** One hub configuration at saturation. */
const saturationRun = async (config, ctx, settings) => {
  const { startLoadgen, cpuMicros, progress, eventData } = ctx
  const host = await startHub(ctx, { ...config, broker: settings.broker })
  const generators = []
  try {
    for (let i = 0; i < generatorsPerRun; i++) generators.push(await startLoadgen())
    const shares = generators.map((_, i) =>
      Math.round((settings.clients * (i + 1)) / generators.length) - Math.round((settings.clients * i) / generators.length))
    await Promise.all(generators.map((generator, i) =>
      generator.call("connect", {
        url: host.url, count: shares[i], types: [], perClient: 0, hub: true, drainOnly: true, countFrames: true,
        drainEveryMs: settings.drain_ms
      })))
    for (const deadline = Date.now() + 30_000; (await host.metrics()).connected !== settings.clients;) {
      if (Date.now() > deadline) throw new Error(`the hub counts ${(await host.metrics()).connected} clients, not ${settings.clients}`)
      await sleep(200)
    }
    await Promise.all(generators.map((generator) => generator.call("reset")))

    const data = eventData(settings.size)
    // Each event an id of its own: the hub drops an event_id it has seen recently (a publisher's retry).
    const prefix = `${Date.now()}-`
    const bodyOf = (first) =>
      JSON.stringify(Array.from({ length: burst }, (_, k) => ({ type: "backtest.completed", data: { ...data, event_id: `${prefix}${first + k}` } })))
    const received = async () =>
      (await Promise.all(generators.map((generator) => generator.call("read")))).reduce((sum, answer) => sum + answer.received, 0)
    // Resolves once every generator's clients have `events` events each (false: none came for 10 s).
    const reached = async (events) => {
      const answers = await Promise.all(generators.map((generator, i) =>
        generator.call("expect", { total: events * shares[i], timeoutMs: 10_000 })))
      return answers.every((answer) => !answer.timedOut)
    }

    let sent = 0
    let running = true
    let stalled = false
    let failure
    const publishing = (async () => {
      while (running) {
        if (sent + burst > settings.window && !(await reached(sent + burst - settings.window))) {
          stalled = true
          break
        }
        const response = await fetch(`${host.publishBases[0]}/api/v1/events`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: "Bearer bench" },
          body: bodyOf(sent)
        })
        await response.arrayBuffer()
        if (!response.ok) throw new Error(`POST /api/v1/events: HTTP ${response.status}`)
        sent += burst
      }
    })().catch((error) => {
      failure = error
    })

    const name = config.workers === 1 ? "1 worker" : `${config.workers} workers, balance ${config.balance}`
    progress(`saturation: ${name}, ${settings.clients} clients, ${warmupMs / 1000} s warm-up then ${settings.seconds} s`)
    await sleep(warmupMs)
    const pids = host.pids()
    const loadPids = generators.map((generator) => generator.pid)
    const r0 = await received()
    const cpu0 = sumOver(pids, cpuMicros)
    const load0 = sumOver(loadPids, cpuMicros)
    const own0 = process.cpuUsage()
    const t0 = performance.now()
    await sleep(settings.seconds * 1000)
    const r1 = await received()
    const seconds = (performance.now() - t0) / 1000
    const cpu = sumOver(pids, cpuMicros) - cpu0
    const load = sumOver(loadPids, cpuMicros) - load0
    const own = process.cpuUsage(own0)
    running = false
    await publishing
    if (failure !== undefined) throw failure
    const complete = await reached(sent)
    const total = await received()
    const end = await host.metrics()
    const deliveries = r1 - r0
    const result = {
      workers: config.workers,
      balance: config.balance ?? null,
      clients: settings.clients,
      seconds,
      deliveries,
      deliveries_per_second: deliveries / seconds,
      events_per_second: deliveries / seconds / settings.clients,
      server_cores: cpu / 1e6 / seconds,
      loadgen_cores: load / 1e6 / seconds,
      driver_cores: (own.user + own.system) / 1e6 / seconds,
      cpu_us_per_delivery: cpu / deliveries,
      events: sent,
      lost: sent * settings.clients - total,
      complete,
      stalled,
      dropped_by_server: end.dropped
    }
    progress(`saturation: ${name}: ${(result.deliveries_per_second / 1e6).toFixed(3)} M deliveries/s, server ${result.server_cores.toFixed(2)} cores, loadgen ${result.loadgen_cores.toFixed(2)}, lost ${result.lost}`)
    return result
  } finally {
    await Promise.all(generators.map((generator) => generator.stop()))
    await host.stop()
  }
}

/** The scenario: 1 worker, then 2 workers with each balance, `repeat` times in turn; rows and report. */
export const run = async (ctx) => {
  const { report, rows, fmt } = ctx
  const arg = (name) => {
    const i = process.argv.indexOf(`--${name}`)
    return i >= 0 ? process.argv[i + 1] : undefined
  }
  const number = (name, fallback) => arg(name) === undefined ? fallback : Number(arg(name))
  const settings = {
    clients: number("saturation-clients", 2000),
    seconds: number("saturation-seconds", 10),
    window: number("saturation-window", 200),
    repeat: number("saturation-repeat", 1),
    drain_ms: number("saturation-drain-ms", 100),
    balances: (arg("saturation-balance") ?? "kernel,primary").split(",").filter((balance) => balance !== ""),
    burst,
    // Bytes per event message (run.mjs's --size, 450 by default).
    size: ctx.options.size,
    warmup_seconds: warmupMs / 1000,
    // `--saturation-broker`: the hub in stream mode on the broker (ctx.options.broker), POSTs through it to every worker.
    broker: process.argv.includes("--saturation-broker") ? ctx.options.broker : undefined
  }
  const configs = [{ workers: 1 }, ...settings.balances.map((balance) => ({ workers: 2, balance }))]
  const runs = []
  for (let round = 0; round < settings.repeat; round++) {
    for (const config of configs) runs.push(await saturationRun(config, ctx, settings))
  }
  // The median run of each configuration (by deliveries per second).
  const summary = configs.map((config) => {
    const mine = runs.filter((r) => r.workers === config.workers && r.balance === (config.balance ?? null))
    const middle = median(mine.map((r) => r.deliveries_per_second))
    return { ...mine.find((r) => r.deliveries_per_second === middle), runs: mine.length, range: [Math.min(...mine.map((r) => r.deliveries_per_second)), Math.max(...mine.map((r) => r.deliveries_per_second))] }
  })
  const one = summary[0]
  for (const s of summary.slice(1)) {
    s.ratio_to_1_worker = s.deliveries_per_second / one.deliveries_per_second
    // Deliveries per second per core the hub used, against 1 worker's: what a second worker costs in efficiency,
    // apart from the cores the load generators took.
    s.per_server_core_ratio = (s.deliveries_per_second / s.server_cores) / (one.deliveries_per_second / one.server_cores)
  }
  report.scenarios.saturation = { settings, summary, runs }
  for (const s of summary) {
    rows.push([
      `saturation ${s.workers === 1 ? "1 worker" : `${s.workers} workers ${s.balance}`} (${s.clients} clients)`,
      `${fmt(s.deliveries_per_second / 1e6, 3)} M deliveries/s (${fmt(s.events_per_second, 0)} events/s)` +
        (s.runs > 1 ? ` (${fmt(s.range[0] / 1e6, 3)}-${fmt(s.range[1] / 1e6, 3)})` : ""),
      `server ${fmt(s.server_cores)} cores (${fmt(s.cpu_us_per_delivery, 3)} us/delivery), loadgen ${fmt(s.loadgen_cores)}, driver ${fmt(s.driver_cores)}`,
      (s.workers === 1 ? "" : `${fmt(s.ratio_to_1_worker)}x 1 worker (target 1.7x); per server core ${fmt(s.per_server_core_ratio)}x`) +
        (s.lost !== 0 || s.dropped_by_server > 0 || s.stalled ? ` LOST ${s.lost}, ${s.dropped_by_server} dropped${s.stalled ? ", stalled" : ""}` : "") +
        ""
    ])
  }
}
