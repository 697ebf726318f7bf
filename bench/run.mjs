// The benchmark: the built hub against bare `ws` baselines, each server in its own process, driven by load
// generators in others. Server CPU is read from /proc/<pid>/task/*/schedstat of the server process, so the load
// generators' own cost never counts.
//
//   npm run bench                  the full run (a few minutes)
//   npm run bench -- --quick       a smaller run (under a minute)
//   npm run bench -- --scenarios fanout,idle --clients 2000 --events 500 --profile
//
// Prints a table and writes bench/results/<date>.json; a full run (every scenario, not --quick) also writes
// bench/results/latest.json, the figures quoted in the README.
import amqp from "amqplib"
import { fork, spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { existsSync, mkdirSync, writeFileSync } from "node:fs"
import { cpus } from "node:os"
import { dirname, join } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import { cpuMicros, rabbitPids, rssBytes } from "./proc.mjs"
import { startWorker } from "./worker.mjs"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const results = join(root, "bench", "results")

// ---------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------

const argv = process.argv.slice(2)
const flag = (name, fallback) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 && argv[i + 1] !== undefined && !argv[i + 1].startsWith("--") ? argv[i + 1] : fallback
}
const quick = argv.includes("--quick")
const options = {
  quick,
  scenarios: flag("scenarios", "fanout,filtered,idle,latency,ingest,storm,churn").split(","),
  clients: Number(flag("clients", quick ? 500 : 1000)),
  events: Number(flag("events", quick ? 300 : 1000)),
  size: Number(flag("size", 450)),
  burst: Number(flag("burst", 50)),
  filteredClients: Number(flag("filtered-clients", quick ? 2000 : 10000)),
  idleClients: Number(flag("idle-clients", quick ? 2000 : 10000)),
  latencyClients: Number(flag("latency-clients", quick ? 500 : 1000)),
  rates: flag("rates", "100,300").split(",").map(Number),
  // The ingest scenario: the default stream path against the plain stream, with few clients (the path's own cost).
  ingestRates: flag("ingest-rates", "100,1000").split(",").map(Number),
  ingestClients: Number(flag("ingest-clients", 100)),
  duration: Number(flag("duration", quick ? 1.5 : 5)),
  // Latency figures move from run to run on a shared 2-core machine: each configuration runs this many times, in
  // turn with the others, and the table shows the median run.
  repeat: Number(flag("repeat", quick ? 1 : 5)),
  slowFraction: Number(flag("slow-fraction", 0.1)),
  profile: argv.includes("--profile"),
  fanoutKinds: flag("fanout-servers", "ws-send,ws-frame,ws-corked,hub").split(","),
  broker: flag("broker", "amqp://guest:guest@127.0.0.1:5672/")
}

// The 18 event types of the seed.
const seedTypes = [
  "optimization.iteration.started", "optimization.iteration.completed", "optimization.new_best",
  "optimization.completed", "optimization.failed", "backtest.submitted", "backtest.completed", "backtest.failed",
  "task.running", "task.failed", "task.cancelled", "strategy.discovered", "strategy.needs_processing",
  "strategy.ready_for_backtest", "strategy.approved", "strategy.evolve", "strategy.archived", "agent.status.changed"
]

const progress = (text) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${text}\n`)

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

// Below the ephemeral range (32768-60999 on Linux), so that no outgoing connection of this run holds the port.
let nextPort = 20000 + Math.floor(Math.random() * 10000)

/** The RabbitMQ server on this machine, if it runs here: its CPU is reported too. */
const brokerPid = () => rabbitPids()[0]

const waitFor = async (what, check, timeoutMs = 30_000) => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      if (await check()) return
    } catch (error) {
      if (error.exited) throw error
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** Limits (WS_MAX_CONNECTIONS...) that would otherwise refuse the load generator's clients. */
const benchLimits = {
  WS_MAX_CONNECTIONS: "1000000",
  WS_MAX_CONNECTIONS_PER_IP: "1000000",
  PUBLISH_RATE_LIMIT: "1000000",
  PUBLISH_RATE_BURST: "1000000",
  WS_CONNECTION_RATE_LIMIT: "1000000",
  WS_CONNECTION_RATE_BURST: "1000000",
  // Every load generator's client comes from 127.0.0.1: the storm's resumes would exceed the per-address ration.
  WS_RESUME_RATE_LIMIT_PER_IP: "1000000"
}

/**
 * Starts a server: `hub` (node dist/main.js, or the build named by `BENCH_HUB`, to compare two builds back to back),
 * `ws-send`, `ws-frame` or `ws-corked` (bench/servers/baseline.mjs).
 */
const startServer = async (kind, extraEnv = {}, attempt = 1) => {
  const port = nextPort++
  const env = { ...process.env, PORT: String(port), HOST: "127.0.0.1" }
  let child
  const profileArgs = options.profile ? ["--cpu-prof", `--cpu-prof-dir=${join(results, "profiles", kind)}`] : []
  if (kind === "hub") {
    child = spawn(process.execPath, [...profileArgs, process.env.BENCH_HUB ?? join(root, "dist", "main.js")], {
      // Every load-generator client connects from 127.0.0.1: lift the per-address and publish limits.
      env: { ...env, PUBLISH_TOKEN: "bench", RABBITMQ_URL: "", LOG_LEVEL: "warn", ...benchLimits, ...extraEnv },
      stdio: ["ignore", "inherit", "inherit"]
    })
  } else {
    child = fork(join(root, "bench", "servers", "baseline.mjs"), [], {
      execArgv: profileArgs,
      env: { ...env, MODE: kind.slice(3), ...extraEnv },
      stdio: ["ignore", "inherit", "inherit", "ipc"]
    })
  }
  const base = `http://127.0.0.1:${port}`
  let exited = false
  child.once("exit", () => {
    exited = true
  })
  try {
    await waitFor(`${kind} to listen`, async () => {
      if (exited) throw Object.assign(new Error(`${kind} exited before listening`), { exited: true })
      return (await fetch(`${base}/metrics`)).ok
    })
  } catch (error) {
    child.kill("SIGKILL")
    // Most likely the port was taken: try another one.
    if (exited && attempt < 3) return startServer(kind, extraEnv, attempt + 1)
    throw error
  }
  return {
    kind,
    pid: child.pid,
    base,
    url: `ws://127.0.0.1:${port}/api/v1/ws/events`,
    async stop() {
      const exited = new Promise((resolve) => child.once("exit", resolve))
      child.kill("SIGTERM")
      await exited
    }
  }
}

const startLoadgen = () => startWorker(join(root, "bench", "loadgen.mjs"))

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/** The seed's backtest.completed example, padded so the whole message is about `size` bytes. */
const eventData = (size, extra = {}) => {
  const data = {
    event_id: randomUUID(),
    event_type: "task.completed",
    timestamp: "2025-12-15T10:30:00Z",
    job_id: "123e4567-e89b-12d3-a456-426614174000",
    strategy_id: "987e6543-e21b-43d2-b987-123456789abc",
    result_id: "456e7890-e12b-34d5-c678-234567890def",
    duration_ms: 45000,
    sharpe_ratio: 1.85,
    profit_pct: 15.5,
    total_trades: 142,
    ...extra
  }
  const envelope = JSON.stringify({ type: "backtest.completed", data, timestamp: new Date().toISOString() })
  if (envelope.length < size) data.pad = "x".repeat(size - envelope.length - 9)
  return data
}

/** POSTs `count` events in bursts: each burst of `burst` events is one request (an array), as every server accepts. */
const publishHttp = async (server, count, typeOf) => {
  const data = eventData(options.size)
  for (let sent = 0; sent < count;) {
    const burst = []
    // Each event its own event_id: the hub drops an event_id it has seen recently (a publisher's retry).
    for (let i = 0; i < options.burst && sent < count; i++, sent++) {
      burst.push({ type: typeOf(sent), data: { ...data, event_id: randomUUID() } })
    }
    const response = await fetch(`${server.base}/api/v1/events`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer bench" },
      body: JSON.stringify(burst)
    })
    await response.arrayBuffer()
  }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/** Broadcast cost: CPU of the server per delivered message, while `events` reach `clients` clients. */
const fanout = async (kind) => {
  progress(`fan-out: ${kind}, ${options.clients} clients, ${options.events} events of ~${options.size} B`)
  const [server, loadgen] = await Promise.all([startServer(kind), startLoadgen()])
  try {
    await loadgen.call("connect", { url: server.url, count: options.clients, types: seedTypes, perClient: 0, hub: kind === "hub" })
    return await measureFanout(server, loadgen)
  } finally {
    await loadgen.stop()
    await server.stop()
  }
}

/** With `loadgen`'s clients connected to `server`: CPU per delivery of `options.events` events to every client. */
const measureFanout = async (server, loadgen) => {
  // Warm up (JIT), then measure.
  await publishHttp(server, 100, () => "backtest.completed")
  await loadgen.call("expect", { total: 100 * options.clients, timeoutMs: 60_000 })
  await loadgen.call("reset")
  const total = options.events * options.clients
  const cpu0 = cpuMicros(server.pid)
  const t0 = performance.now()
  await publishHttp(server, options.events, () => "backtest.completed")
  const got = await loadgen.call("expect", { total, timeoutMs: 120_000 })
  const seconds = (performance.now() - t0) / 1000
  const cpu = cpuMicros(server.pid) - cpu0
  return {
    deliveries: got.received,
    complete: got.received >= total,
    cpu_us_per_delivery: cpu / got.received,
    deliveries_per_second: got.received / seconds
  }
}

/** Each client subscribed to 2 of the 18 seed types: cost per delivery and per event, then events nobody wants. */
const filtered = async () => {
  const clients = options.filteredClients
  progress(`filtered: hub, ${clients} clients subscribed to 2 of 18 types, ${options.events} events`)
  const [server, loadgen] = await Promise.all([startServer("hub"), startLoadgen()])
  try {
    await loadgen.call("connect", { url: server.url, count: clients, types: seedTypes, perClient: 2, hub: true })
    const subscribers = new Map(seedTypes.map((type) => [type, 0]))
    for (let index = 0; index < clients; index++) {
      for (let k = 0; k < 2; k++) {
        const type = seedTypes[(index + k * 7) % seedTypes.length]
        subscribers.set(type, subscribers.get(type) + 1)
      }
    }
    const typeOf = (i) => seedTypes[i % seedTypes.length]
    const expected = (count) => {
      let total = 0
      for (let i = 0; i < count; i++) total += subscribers.get(typeOf(i))
      return total
    }
    await publishHttp(server, 36, typeOf)
    await loadgen.call("expect", { total: expected(36), timeoutMs: 60_000 })
    await loadgen.call("reset")
    const total = expected(options.events)
    const cpu0 = cpuMicros(server.pid)
    await publishHttp(server, options.events, typeOf)
    const got = await loadgen.call("expect", { total, timeoutMs: 120_000 })
    const cpu = cpuMicros(server.pid) - cpu0

    // The same number of events of a type no client subscribed to, once the server is quiet again (the work left
    // from the measurement above, such as collecting its garbage, must not be counted here).
    await new Promise((resolve) => setTimeout(resolve, options.quick ? 500 : 1000))
    // More of them than above: each costs little, and a short window would mostly measure noise.
    const nobodyEvents = Math.max(1000, options.events)
    const cpu1 = cpuMicros(server.pid)
    await publishHttp(server, nobodyEvents, () => "nobody.listens")
    const cpuNobody = cpuMicros(server.pid) - cpu1
    return {
      clients,
      deliveries: got.received,
      complete: got.received >= total,
      cpu_us_per_delivery: cpu / got.received,
      cpu_us_per_event: cpu / options.events,
      recipients_per_event: got.received / options.events,
      cpu_us_per_event_without_recipients: cpuNobody / nobodyEvents
    }
  } finally {
    await loadgen.stop()
    await server.stop()
  }
}

/** Memory of idle connections: RSS and heap per connection. */
const idle = async (kind) => {
  const count = options.idleClients
  progress(`idle memory: ${kind}, ${count} connections`)
  const [server, loadgen] = await Promise.all([startServer(kind), startLoadgen()])
  try {
    const memory = async () => (await (await fetch(`${server.base}/metrics`)).json()).process
    await new Promise((resolve) => setTimeout(resolve, 500))
    const rss0 = rssBytes(server.pid)
    const heap0 = (await memory()).heap_used_bytes
    await loadgen.call("connect", { url: server.url, count, types: seedTypes, perClient: 0, hub: kind === "hub" })
    await new Promise((resolve) => setTimeout(resolve, options.quick ? 1000 : 2000))
    const rss1 = rssBytes(server.pid)
    const heap1 = (await memory()).heap_used_bytes
    return {
      connections: count,
      rss_kb_per_connection: (rss1 - rss0) / count / 1024,
      heap_kb_per_connection: (heap1 - heap0) / count / 1024
    }
  } finally {
    await loadgen.stop()
    await server.stop()
  }
}

/**
 * End-to-end latency from publishing to RabbitMQ to receipt, at a fixed rate; optionally with slow consumers.
 * `kind` is `hub`, or `ws-corked` (a bare ws server consuming with amqplib and writing corked batches: the floor).
 */
const latency = async (rate, slowFraction, kind = "hub", path = "queue", clients = options.latencyClients) => {
  const tag = `${rate}/s${slowFraction > 0 ? `, ${slowFraction * 100}% slow consumers` : ""}`
  progress(`latency: ${kind}${path === "queue" ? "" : ` (${path})`}, ${clients} clients, RabbitMQ at ${tag}, ${options.duration} s`)
  const exchange = `bench_${process.pid}_${Date.now()}`
  const queue = `${exchange}.queue`
  const stream = `${exchange}.stream`
  // `queue`: queue mode, as the floor consumes (the same path, no stream left on the broker); `stream`: the default
  // path (an ingest quorum queue moved into the stream); `stream-plain`: the stream bound to the exchange directly.
  const pathEnv = path === "queue"
    ? { RABBITMQ_QUEUE: queue, RABBITMQ_MODE: "queue" }
    : { RABBITMQ_STREAM: stream, RABBITMQ_MODE: "stream", RABBITMQ_INGEST: path === "stream" ? "quorum" : "none" }
  // One client in ten parses every message and measures, in a process of its own; the others only drain their
  // sockets (see loadgen.mjs) in another, so that neither the drain nor the parsing delays the measurement.
  const [server, sampler, drainer, connection] = await Promise.all([
    startServer(kind, { RABBITMQ_URL: options.broker, RABBITMQ_EXCHANGE: exchange, ...pathEnv }),
    startLoadgen(),
    startLoadgen(),
    // Without noDelay, Nagle holds each small publish back until the previous one is acknowledged.
    amqp.connect(options.broker, { noDelay: true })
  ])
  const channel = await connection.createChannel()
  try {
    await waitFor("the hub to consume", async () => {
      const { checks } = await (await fetch(`${server.base}/health`)).json()
      return checks.rabbitmq.status === "up" && (checks.rabbitmq_ingest === undefined || checks.rabbitmq_ingest.status === "up")
    })
    const sampled = Math.max(1, Math.round(clients / 10))
    const common = { url: server.url, types: seedTypes, perClient: 0, hub: kind === "hub" }
    // Connected in alternating groups, so that sampled clients are spread over the server's client list: a bare
    // server writes in connection order, and sampled clients connected first would always be served first.
    const groups = 20
    for (let group = 0, doneSampled = 0, doneDrain = 0; group < groups; group++) {
      const toSampled = Math.round((sampled * (group + 1)) / groups) - doneSampled
      const toDrain = Math.round(((clients - sampled) * (group + 1)) / groups) - doneDrain
      if (toSampled > 0) await sampler.call("connect", { ...common, count: toSampled })
      if (toDrain > 0) await drainer.call("connect", { ...common, count: toDrain, drainOnly: true })
      doneSampled += toSampled
      doneDrain += toDrain
    }
    if (slowFraction > 0) {
      await sampler.call("pause", { fraction: slowFraction })
      await drainer.call("pause", { fraction: slowFraction })
    }
    const base = eventData(options.size)
    const publishFor = async (seconds) => {
      const start = performance.now()
      let sent = 0
      while (performance.now() - start < seconds * 1000) {
        const due = Math.floor(((performance.now() - start) / 1000) * rate)
        for (; sent < due; sent++) {
          const body = JSON.stringify({ t: performance.timeOrigin + performance.now(), ...base, event_id: randomUUID() })
          channel.publish(exchange, "task.completed", Buffer.from(body))
        }
        await new Promise((resolve) => setTimeout(resolve, 2))
      }
      return sent
    }
    await publishFor(options.quick ? 0.5 : 1) // warm-up
    await new Promise((resolve) => setTimeout(resolve, 200))
    // Stream mode's events carry the time they entered the path (the mover's, or the reading hub's without one).
    await sampler.call("latencyStart", { entering: kind === "hub" && path !== "queue" })
    const broker = brokerPid()
    const cpu0 = { server: cpuMicros(server.pid), sampler: cpuMicros(sampler.pid), drainer: cpuMicros(drainer.pid) }
    if (broker !== undefined) cpu0.broker = cpuMicros(broker)
    const t0 = performance.now()
    await publishFor(options.duration)
    await new Promise((resolve) => setTimeout(resolve, 300))
    const seconds = (performance.now() - t0) / 1000
    // Share of one core each process used while the latency was measured.
    const load = (name, pid) => (cpuMicros(pid) - cpu0[name]) / 1e6 / seconds
    const cores = { server: load("server", server.pid), sampler: load("sampler", sampler.pid), drainer: load("drainer", drainer.pid) }
    if (broker !== undefined) cores.broker = load("broker", broker)
    const result = await sampler.call("latencyStop")
    // How many slow consumers the hub had disconnected by the end (send buffer full, or a write stuck too long).
    const disconnected = kind === "hub"
      ? (await (await fetch(`${server.base}/metrics`)).json()).websocket.clients_disconnected
      : undefined
    const kicked = disconnected === undefined ? undefined : disconnected.slow_consumer + disconnected.write_timeout
    return { server: kind, path, rate, slow_fraction: slowFraction, clients, ...result, cores, kicked }
  } finally {
    await Promise.all([sampler.stop(), drainer.stop()])
    await server.stop()
    for (const name of [queue, stream, `${stream}.ingest`]) await channel.deleteQueue(name).catch(() => undefined)
    await channel.deleteExchange(exchange).catch(() => undefined)
    await connection.close().catch(() => undefined)
  }
}

/**
 * One summary per configuration (server, rate, slow fraction) over its repeated runs: the median of each figure
 * (p50, p99, CPU), the worst max, and the range of the p99s.
 */
const summariseLatency = (runs) => {
  const median = (values) => {
    const sorted = [...values].sort((a, b) => a - b)
    return sorted[Math.floor((sorted.length - 1) / 2)]
  }
  const groups = new Map()
  for (const run of runs) {
    const key = `${run.server} ${run.path} ${run.rate} ${run.slow_fraction}`
    groups.set(key, [...(groups.get(key) ?? []), run])
  }
  return [...groups.values()].map((group) => {
    const [first] = group
    const cores = Object.fromEntries(Object.keys(first.cores).map((name) => [name, median(group.map((run) => run.cores[name]))]))
    return {
      server: first.server,
      path: first.path,
      rate: first.rate,
      slow_fraction: first.slow_fraction,
      clients: first.clients,
      runs: group.length,
      samples: group.reduce((sum, run) => sum + run.samples, 0),
      p50: median(group.map((run) => run.p50)),
      p99: median(group.map((run) => run.p99)),
      p99_min: Math.min(...group.map((run) => run.p99)),
      p99_max: Math.max(...group.map((run) => run.p99)),
      max: Math.max(...group.map((run) => run.max)),
      lag_p99_ms: median(group.map((run) => run.lag_p99_ms)),
      entering_p50: median(group.map((run) => run.entering_p50)),
      entering_p99: median(group.map((run) => run.entering_p99)),
      cores,
      // Every client receives every event (the slow ones too, until their socket refuses more).
      cpu_us_per_delivery: (cores.server * 1e6) / (first.rate * first.clients),
      cpu_us_per_event: (cores.server * 1e6) / first.rate,
      broker_cpu_us_per_event: cores.broker === undefined ? undefined : (cores.broker * 1e6) / first.rate,
      kicked: first.kicked === undefined ? undefined : median(group.map((run) => run.kicked))
    }
  })
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

const fmt = (n, digits = 2) => Number.isFinite(n) ? n.toFixed(digits) : "n/a"

const main = async () => {
  if (!existsSync(join(root, "dist", "main.js"))) throw new Error("dist/main.js is missing: run npm run build")
  for (const kind of ["hub", "ws-send", "ws-frame", "ws-corked"]) mkdirSync(join(results, "profiles", kind), { recursive: true })
  const started = performance.now()
  const report = { date: new Date().toISOString(), node: process.version, cpus: cpus().length, options, scenarios: {} }
  const rows = []

  if (options.scenarios.includes("fanout")) {
    const runs = {}
    for (const kind of options.fanoutKinds) runs[kind] = await fanout(kind)
    report.scenarios.fanout = runs
    for (const kind of ["hub", "ws-corked", "ws-frame", "ws-send"].filter((kind) => runs[kind] !== undefined)) {
      rows.push([
        `fan-out ${kind}`,
        `${fmt(runs[kind].cpu_us_per_delivery, 3)} us/delivery`,
        `${fmt(runs[kind].deliveries_per_second / 1e6, 2)} M deliveries/s`,
        `${fmt(runs[kind].cpu_us_per_delivery / runs["ws-send"]?.cpu_us_per_delivery, 2)}x send loop` +
          (kind === "ws-frame" || runs["ws-frame"] === undefined
            ? ""
            : `, ${fmt(runs[kind].cpu_us_per_delivery / runs["ws-frame"].cpu_us_per_delivery, 2)}x frame per socket`) +
          (runs[kind].complete ? "" : ` INCOMPLETE: ${runs[kind].deliveries} deliveries`)
      ])
    }
  }
  if (options.scenarios.includes("filtered")) {
    const run = await filtered()
    report.scenarios.filtered = run
    rows.push([
      `filtered hub (${run.clients} clients)`,
      `${fmt(run.cpu_us_per_delivery, 3)} us/delivery`,
      `${fmt(run.cpu_us_per_event, 1)} us/event (${fmt(run.recipients_per_event, 0)} recipients)`,
      `${fmt(run.cpu_us_per_event_without_recipients, 1)} us/event with 0 recipients` +
        (run.complete ? "" : ` INCOMPLETE: ${run.deliveries} deliveries`)
    ])
  }
  if (options.scenarios.includes("idle")) {
    const runs = {}
    for (const kind of ["ws-send", "hub"]) runs[kind] = await idle(kind)
    report.scenarios.idle = runs
    for (const kind of ["hub", "ws-send"]) {
      rows.push([
        `idle ${kind === "ws-send" ? "bare ws" : kind} (${runs[kind].connections} conns)`,
        `${fmt(runs[kind].rss_kb_per_connection, 1)} KB RSS/conn`,
        `${fmt(runs[kind].heap_kb_per_connection, 1)} KB heap/conn`,
        ""
      ])
    }
  }
  if (options.scenarios.includes("latency")) {
    const runs = []
    for (const rate of options.rates) {
      for (let round = 1; round <= options.repeat; round++) {
        if (options.repeat > 1) progress(`latency at ${rate}/s: round ${round} of ${options.repeat}`)
        runs.push(await latency(rate, 0, "ws-corked"))
        // The floor with slow consumers too (full runs): what paused sockets cost the kernel, whatever the server.
        if (!options.quick) runs.push(await latency(rate, options.slowFraction, "ws-corked"))
        runs.push(await latency(rate, 0))
        runs.push(await latency(rate, options.slowFraction))
      }
    }
    const summaries = summariseLatency(runs)
    report.scenarios.latency = summaries
    report.scenarios.latency_runs = runs
    for (const run of summaries) {
      const healthy = summaries.find((r) => r.server === run.server && r.rate === run.rate && r.slow_fraction === 0)
      const spread = run.runs > 1 ? ` (${fmt(run.p99_min)}-${fmt(run.p99_max)})` : ""
      rows.push([
        `latency ${run.server} ${run.rate}/s${run.slow_fraction > 0 ? ` ${run.slow_fraction * 100}% slow` : ""}`,
        `p50 ${fmt(run.p50)} ms, p99 ${fmt(run.p99)} ms${spread}`,
        `max ${fmt(run.max)} ms, ${fmt(run.cpu_us_per_delivery, 1)} us CPU/delivery, CPU server ${fmt(run.cores.server)} ` +
          `sampler ${fmt(run.cores.sampler)} drain ${fmt(run.cores.drainer)}` +
          `${run.cores.broker === undefined ? "" : ` broker ${fmt(run.cores.broker)}`}, sampler lag p99 ${fmt(run.lag_p99_ms)} ms`,
        run.slow_fraction > 0
          ? `p99 ${fmt(run.p99 / healthy.p99)}x without slow${run.kicked === undefined ? "" : `, ${run.kicked} slow kicked`}`
          : ""
      ])
    }
  }
  if (options.scenarios.includes("ingest")) {
    // The default stream path (ingest quorum queue, moved into the stream) against the plain stream it replaces.
    const runs = []
    for (const rate of options.ingestRates) {
      for (let round = 1; round <= options.repeat; round++) {
        if (options.repeat > 1) progress(`ingest at ${rate}/s: round ${round} of ${options.repeat}`)
        for (const path of ["stream-plain", "stream"]) runs.push(await latency(rate, 0, "hub", path, options.ingestClients))
      }
    }
    const summaries = summariseLatency(runs)
    report.scenarios.ingest = summaries
    report.scenarios.ingest_runs = runs
    for (const run of summaries) {
      const plain = summaries.find((r) => r.path === "stream-plain" && r.rate === run.rate)
      const spread = run.runs > 1 ? ` (${fmt(run.p99_min)}-${fmt(run.p99_max)})` : ""
      rows.push([
        `ingest ${run.path === "stream" ? "default (quorum)" : "plain stream"} ${run.rate}/s`,
        `p50 ${fmt(run.p50)} ms, p99 ${fmt(run.p99)} ms${spread}`,
        `hub ${fmt(run.cpu_us_per_event, 1)} us CPU/event, broker ${fmt(run.broker_cpu_us_per_event, 1)} us CPU/event, ` +
          // The default path's timestamp is the mover's; the plain stream's, the reading hub's.
          `publish to ${run.path === "stream" ? "moved" : "read"} p50 ${fmt(run.entering_p50, 1)} p99 ${fmt(run.entering_p99, 1)} ms`,
        run === plain
          ? ""
          : `hub ${fmt(run.cpu_us_per_event / plain.cpu_us_per_event)}x, broker ` +
            `${fmt(run.broker_cpu_us_per_event / plain.broker_cpu_us_per_event)}x, p99 +${fmt(run.p99 - plain.p99)} ms`
      ])
    }
  }
  if (options.scenarios.includes("storm")) rows.push(await (await import("./scenarios/storm.mjs")).storm({ argv, quick, report, progress, cpuMicros, startServer, broker: options.broker }))

  if (options.scenarios.includes("sse")) report.scenarios.sse = await (await import("./scenarios/sse.mjs")).run({ options, fanout, measureFanout, startServer, publishHttp, cpuMicros, progress, rows })

  if (options.scenarios.includes("churn")) await (await import("./scenarios/churn.mjs")).run({ options, progress, report, rows, fmt, startServer, startLoadgen, cpuMicros, seedTypes, eventData })

  // Not in the default list: 100,000 connections to one host (scale), and deliveries per second with 1 and 2 workers.
  for (const name of ["scale", "saturation"].filter((name) => options.scenarios.includes(name))) await (await import(`./scenarios/${name}.mjs`)).run({ options, progress, report, rows, fmt, startServer, startLoadgen, cpuMicros, seedTypes, eventData })

  report.seconds = (performance.now() - started) / 1000
  const file = join(results, `${report.date.replace(/[:.]/g, "-")}.json`)
  writeFileSync(file, JSON.stringify(report, null, 2))
  const full = !quick && ["fanout", "filtered", "idle", "latency"].every((name) => options.scenarios.includes(name))
  if (full) writeFileSync(join(results, "latest.json"), JSON.stringify(report, null, 2))

  const widths = [0, 1, 2, 3].map((i) => Math.max(...rows.map((row) => row[i].length)))
  process.stdout.write(`\n${rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i])).join("  |  ")).join("\n")}\n\n`)
  process.stdout.write(`results: ${file} (${fmt(report.seconds, 0)} s)\n`)
}

main().catch((error) => {
  process.stderr.write(`bench failed: ${error.stack ?? error}\n`)
  process.exit(1)
})
