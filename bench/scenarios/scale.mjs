// Scale (not in the default list): `--scale-clients` WebSocket connections (100,000 by default) to one host, the
// hub with HUB_WORKERS = ceil(clients / 15,000) (`--scale-workers`; each worker well under the 20,000 open files a
// process may have), then as many bare `ws` processes (bench/servers/baseline.mjs, MODE=send, REUSE_PORT=1)
// sharing one port the same way. No broker: events are POSTed to /api/v1/events.
//
//   npm run bench -- --scenarios scale [--scale-clients 100000] [--scale-duration 60] [--scale-workers n]
//                    [--scale-balance kernel|primary] [--scale-sample 1000] [--scale-servers hub,ws]
//                    [--scale-bare-mode send|frame|corked] [--scale-drain-ms 1000] [--scale-broker]
//
// Without a broker, the worker that takes a POST passes its events to the other workers through the primary
// (HostView.tell), so every client gets every event. `--scale-broker` runs the hub in stream mode on RabbitMQ instead
// (--broker, an exchange and stream of its own, deleted after): every worker reads every event from the stream; the
// broker's own CPU (on the same 2 cores) is not in the server's figure then.
//
// Clients: load generators (bench/loadgen.mjs), processes of their own with at most 16,000 sockets each, each
// connecting to addresses of its own (127.0.0.x: the servers listen on 0.0.0.0 for this; at most 25,000 connections
// per address, which leaves each about 28,000 ephemeral ports), fresh addresses for each server so that the closed
// connections of the first run (TIME_WAIT) cannot hold ports the second run needs. Not source addresses: binding one
// before each connect made the kernel search its bound ports one by one: with 3,000 to 6,000 sockets a process spent
// 86% of its time in connect, seconds per thousand connections, and the hub timed handshakes out (408). Every client
// receives every event type (the hub's default subscription is `#`; bare ws sends everything to everyone). All but `--scale-sample` clients (1,000) only drain
// their sockets, once a second, and count the text frames in what they read (loadgen.mjs, countFrames; they answer
// the hub's pings); the sampled clients, in a process of their own, parse every event and measure the latency from
// publish (`t` in the event, taken when its POST is sent) to receipt. The clients connect in 10 rounds, each a share
// of every generator's and of the sample, so that the sampled clients are spread over the connection order (bare
// ws writes to its clients in that order).
//
// Measured for each server:
// - connect: from the first connection attempt until every client has had its 101 and the host counts them all;
// - RSS per connection: the sum of the RSS of the server's processes (the hub: its primary and its workers) 2 s
//   after connecting, less the same sum before, over the connections;
// - then 1 event/s for `--scale-duration` s (60), then 10 events/s for half as long (30 s); each event is POSTed
//   once to the hub (any worker takes it) and to every bare ws process at a port of its own (each broadcasts only
//   to its own clients). At each rate: CPU per delivery (the server processes' CPU from /proc/<pid>/task/*/
//   schedstat, from the first POST until every client has every event, over the deliveries received), latency
//   p50/p99 on the sample, and lost: events accepted x clients, less the deliveries received (waited for after the
//   last POST for as long as deliveries still arrive, at least every 10 s; a negative figure would be extra ones).
//   The latency row also shows when the last delivery came, after the last POST's answer (a server that falls
//   behind delivers long after). The load generators' CPU (same 2 cores) is shown beside the servers'.
import { performance } from "node:perf_hooks"
import { rssBytes, startBaselines, startHub, sumOver } from "./host.mjs"

const perGenerator = 16_000
const perAddress = 25_000
const rounds = 10

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Addresses 127.0.0.2-254 to connect to, handed out in turn from a random start (two runs in a row use different ones).
let nextAddress = Math.floor(Math.random() * 253)
const takeAddresses = (count) => Array.from({ length: count }, () => `127.0.0.${2 + (nextAddress++ % 253)}`)

/** `total` split into `parts` near-equal shares. */
const split = (total, parts) =>
  Array.from({ length: parts }, (_, i) => Math.round((total * (i + 1)) / parts) - Math.round((total * i) / parts))

const waitUntil = async (what, check, timeoutMs) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(200)
  }
}

/**
 * POSTs `rate` events a second for `seconds` s (without waiting for one answer before the next event), each to every
 * base in `bases`; resolves with the events every base accepted, once all have answered.
 */
const publishAt = async (bases, rate, seconds, base) => {
  const count = Math.round(rate * seconds)
  const start = performance.now()
  const answers = []
  for (let k = 0; k < count; k++) {
    const due = start + (k * 1000) / rate
    if (due > performance.now()) await sleep(due - performance.now())
    const body = JSON.stringify({
      type: "backtest.completed",
      data: { t: performance.timeOrigin + performance.now(), ...base, event_id: `${start}-${k}` }
    })
    answers.push(Promise.all(bases.map(async (url) => {
      try {
        const response = await fetch(`${url}/api/v1/events`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: "Bearer bench" },
          body
        })
        await response.arrayBuffer()
        return response.ok
      } catch {
        return false
      }
    })).then((oks) => oks.every(Boolean)))
  }
  const accepted = (await Promise.all(answers)).filter(Boolean).length
  return { accepted, failed: count - accepted }
}

/** One server (`hub` or `ws`): connect, memory, then each rate. */
const scaleRun = async (kind, ctx, settings) => {
  const { startLoadgen, cpuMicros, progress, eventData } = ctx
  const hub = kind === "hub"
  const name = hub ? "hub" : "bare ws"
  progress(`scale: ${name}, ${settings.workers} ${hub ? "workers" : "processes"}${hub && settings.balance ? ` (balance ${settings.balance})` : ""} starting`)
  const host = hub
    ? await startHub(ctx, { workers: settings.workers, balance: settings.balance, broker: settings.broker, env: { HOST: "0.0.0.0" } })
    : await startBaselines({ count: settings.workers, mode: settings.bareMode })
  const sample = Math.min(settings.sample, settings.clients)
  const shares = split(settings.clients - sample, Math.ceil((settings.clients - sample) / perGenerator))
  const started = await Promise.allSettled([startLoadgen(), ...shares.map(() => startLoadgen())])
  const workers = started.filter((s) => s.status === "fulfilled").map((s) => s.value)
  try {
    if (workers.length < started.length) throw started.find((s) => s.status === "rejected").reason
    const [sampler, ...generators] = workers
    // Who holds how many clients: what each is expected to receive per event.
    const holders = [{ worker: sampler, count: sample }, ...generators.map((worker, i) => ({ worker, count: shares[i] }))]
    const samplerAddresses = takeAddresses(Math.ceil(sample / perAddress))
    const generatorAddresses = shares.map((share) => takeAddresses(Math.ceil(share / perAddress)))
    const part = (total, round) => Math.round((total * (round + 1)) / rounds) - Math.round((total * round) / rounds)

    await sleep(1000)
    const rss0 = sumOver(host.pids(), rssBytes)
    progress(`scale: ${name}, ${settings.clients} clients connecting (${generators.length} generators + 1 sampler)`)
    const t0 = performance.now()
    let retried = 0
    for (let round = 0; round < rounds; round++) {
      const common = { url: host.url, types: [], perClient: 0, hub, retries: 2 }
      const answers = await Promise.all([
        sampler.call("connect", { ...common, count: part(sample, round), targets: samplerAddresses }),
        ...generators.map((generator, i) =>
          generator.call("connect", {
            ...common,
            count: part(shares[i], round),
            drainOnly: true,
            countFrames: true,
            targets: generatorAddresses[i],
            drainEveryMs: settings.drainMs
          })
        )
      ])
      retried += answers.reduce((sum, answer) => sum + answer.retried, 0)
      if (round % 2 === 1 || round === rounds - 1) {
        progress(`scale: ${name}, ${answers.reduce((sum, answer) => sum + answer.connected, 0)} connected, ${((performance.now() - t0) / 1000).toFixed(1)} s`)
      }
    }
    await waitUntil(`${name} to count ${settings.clients} clients`, async () => (await host.metrics()).connected >= settings.clients, 60_000)
    const connectSeconds = (performance.now() - t0) / 1000
    const connectedMetrics = await host.metrics()
    await sleep(2000)
    const rss1 = sumOver(host.pids(), rssBytes)
    progress(`scale: ${name}, connected in ${connectSeconds.toFixed(1)} s; RSS ${((rss1 - rss0) / settings.clients / 1024).toFixed(1)} KB per connection (all its processes, ${(rss1 / 2 ** 20).toFixed(0)} MB in all)`)

    const all = holders.map((holder) => holder.worker)
    // Waits until every client has `events` events, or until no client has received anything for `stallMs`: a
    // server that falls behind (bare ws buffers without limit) is waited for, as long as it still delivers.
    const stallMs = Math.max(10_000, 3 * settings.drainMs)
    const expectAll = async (events) => {
      const read = await Promise.all(holders.map(({ worker }) => worker.call("read")))
      for (let before = read.reduce((sum, answer) => sum + answer.received, 0); ;) {
        const answers = await Promise.all(holders.map(({ worker, count }) => worker.call("expect", { total: events * count, timeoutMs: stallMs })))
        const received = answers.reduce((sum, answer) => sum + answer.received, 0)
        if (answers.every((answer) => !answer.timedOut) || received === before) return received
        before = received
      }
    }
    const base = eventData(ctx.options.size)
    // Warm-up (both the POST and the broadcast compiled), not measured.
    await Promise.all(all.map((worker) => worker.call("reset")))
    const warm = await publishAt(host.publishBases, 5, 1, base)
    const warmLost = warm.accepted * settings.clients - await expectAll(warm.accepted)
    if (warmLost !== 0) {
      progress(`scale: ${name}: ${warmLost} of ${warm.accepted * settings.clients} warm-up deliveries missing`)
    }

    const pids = host.pids()
    const loadPids = all.map((worker) => worker.pid)
    const phases = []
    for (const { rate, seconds } of settings.phases) {
      progress(`scale: ${name}, ${rate} event${rate === 1 ? "" : "s"}/s for ${seconds} s to ${settings.clients} clients`)
      await Promise.all(all.map((worker) => worker.call("reset")))
      await sampler.call("latencyStart")
      const cpu0 = sumOver(pids, cpuMicros)
      const load0 = sumOver(loadPids, cpuMicros)
      const p0 = performance.now()
      const { accepted, failed } = await publishAt(host.publishBases, rate, seconds, base)
      const published = performance.now()
      const received = await expectAll(accepted)
      const tail = (performance.now() - published) / 1000
      const elapsed = (performance.now() - p0) / 1000
      const cpu = sumOver(pids, cpuMicros) - cpu0
      const load = sumOver(loadPids, cpuMicros) - load0
      const latency = await sampler.call("latencyStop")
      const expected = accepted * settings.clients
      phases.push({
        rate,
        seconds,
        events: accepted,
        failed_posts: failed,
        expected,
        received,
        lost: expected - received,
        cpu_us_per_delivery: cpu / received,
        server_cores: cpu / 1e6 / elapsed,
        loadgen_cores: load / 1e6 / elapsed,
        window_seconds: elapsed,
        // From the last POST's answer until the last delivery (or until deliveries stopped, when some were lost).
        tail_seconds: tail,
        p50_ms: latency.p50,
        p99_ms: latency.p99,
        max_ms: latency.max,
        samples: latency.samples,
        sampler_lag_p99_ms: latency.lag_p99_ms
      })
      const last = phases.at(-1)
      progress(`scale: ${name}, ${rate}/s: lost ${last.lost}, ${last.cpu_us_per_delivery.toFixed(3)} us/delivery, p99 ${last.p99_ms.toFixed(1)} ms`)
    }
    const end = await host.metrics()
    const pidsAfter = host.pids()
    return {
      server: kind,
      processes: settings.workers,
      balance: hub ? settings.balance ?? "default" : "reusePort",
      clients: settings.clients,
      connect_seconds: connectSeconds,
      connect_retries: retried,
      warmup_lost: warmLost,
      connected_at_server: connectedMetrics.connected,
      per_process: connectedMetrics.per_process,
      host: connectedMetrics.host,
      rss_bytes_before: rss0,
      rss_bytes_after: rss1,
      rss_kb_per_connection: (rss1 - rss0) / settings.clients / 1024,
      phases,
      lost: phases.reduce((sum, phase) => sum + phase.lost, 0),
      connected_at_end: end.connected,
      dropped_by_server: end.dropped,
      // A server process that exited (or was replaced) during the run: its CPU and RSS are missing from the sums.
      pids_changed: pidsAfter.length !== pids.length || pidsAfter.some((pid) => !pids.includes(pid))
    }
  } finally {
    await Promise.all(workers.map((worker) => worker.stop()))
    await host.stop()
  }
}

/** The scenario: the hub, then bare ws; adds its rows and `report.scenarios.scale`. */
export const run = async (ctx) => {
  const { progress, report, rows, fmt } = ctx
  const arg = (name) => {
    const i = process.argv.indexOf(`--${name}`)
    return i >= 0 ? process.argv[i + 1] : undefined
  }
  const number = (name, fallback) => arg(name) === undefined ? fallback : Number(arg(name))
  const clients = number("scale-clients", 100_000)
  const duration = number("scale-duration", 60)
  const settings = {
    clients,
    workers: number("scale-workers", Math.ceil(clients / 15_000)),
    balance: arg("scale-balance"),
    sample: number("scale-sample", 1000),
    // Drain-only clients read their sockets once a second: at 10 events/s and 100,000 clients, 100,000 reads a
    // second instead of a million (the load generators share the 2 cores with the servers).
    drainMs: number("scale-drain-ms", 1000),
    phases: [{ rate: 1, seconds: duration }, { rate: 10, seconds: duration / 2 }],
    servers: (arg("scale-servers") ?? "hub,ws").split(","),
    // `--scale-broker`: the hub in stream mode on the broker (ctx.options.broker), POSTs through it to every worker.
    broker: process.argv.includes("--scale-broker") ? ctx.options.broker : undefined,
    // bench/servers/baseline.mjs's MODE: `send` (ws.send per client, how most code uses ws), `frame` or `corked`.
    bareMode: arg("scale-bare-mode") ?? "send"
  }
  const runs = {}
  for (const kind of settings.servers) runs[kind] = await scaleRun(kind, ctx, settings)
  const { hub, ws } = runs
  const ratio = (of) => hub === undefined || ws === undefined ? NaN : of(hub) / of(ws)
  report.scenarios.scale = {
    settings,
    hub,
    bare: ws,
    hub_over_bare: {
      connect_seconds: ratio((r) => r.connect_seconds),
      rss_per_connection: ratio((r) => r.rss_kb_per_connection),
      cpu_per_delivery: Object.fromEntries(settings.phases.map((phase, i) => [`${phase.rate}/s`, ratio((r) => r.phases[i].cpu_us_per_delivery)]))
    }
  }

  const side = (r, show) => r === undefined ? "n/a" : show(r)
  const label = (r) => r.server === "hub" ? `hub (${r.processes} workers)` : `bare ws ${settings.bareMode} (${r.processes} processes)`
  const versus = (of) => Number.isFinite(ratio(of)) ? `hub ${fmt(ratio(of))}x bare` : ""
  const cells = (show, compare) => [side(hub, (r) => `${label(r)}: ${show(r)}`), side(ws, (r) => `${label(r)}: ${show(r)}`), compare]
  rows.push([
    `scale connect ${clients} clients`,
    ...cells((r) => `${fmt(r.connect_seconds, 1)} s` + (r.connect_retries > 0 ? ` (${r.connect_retries} retried)` : ""),
      versus((r) => r.connect_seconds))
  ])
  rows.push([
    "scale RSS/connection",
    ...cells((r) => `${fmt(r.rss_kb_per_connection, 1)} KB`, versus((r) => r.rss_kb_per_connection))
  ])
  settings.phases.forEach((phase, i) => {
    rows.push([
      `scale CPU/delivery at ${phase.rate}/s`,
      ...cells((r) => `${fmt(r.phases[i].cpu_us_per_delivery, 3)} us (${fmt(r.phases[i].server_cores)} cores, loadgen ${fmt(r.phases[i].loadgen_cores)})`,
        versus((r) => r.phases[i].cpu_us_per_delivery))
    ])
    rows.push([
      `scale latency at ${phase.rate}/s`,
      ...cells((r) => `p50 ${fmt(r.phases[i].p50_ms)} ms, p99 ${fmt(r.phases[i].p99_ms)} ms, ` +
        (r.phases[i].lost === 0 ? `last +${fmt(r.phases[i].tail_seconds, 1)} s` : `gave up +${fmt(r.phases[i].tail_seconds, 1)} s`),
        `${side(hub ?? ws, (r) => `${r.phases[i].samples} samples`)}`)
    ])
  })
  rows.push([
    "scale lost",
    ...cells((r) =>
      `${r.lost} of ${r.phases.reduce((sum, phase) => sum + phase.expected, 0)}` +
        (r.dropped_by_server > 0 ? `, ${r.dropped_by_server} clients dropped` : "") +
        (r.phases.some((phase) => phase.failed_posts > 0) ? `, ${r.phases.reduce((sum, phase) => sum + phase.failed_posts, 0)} POSTs failed` : "") +
        (r.pids_changed ? ", SERVER PROCESSES CHANGED" : ""),
      "")
  ])
}
