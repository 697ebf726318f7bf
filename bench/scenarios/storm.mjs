// The reconnect storm: N clients of the client library (in load-generator processes, each client behind a proxy
// of its own) are cut off every ~15 s for ~2 s while events flow through RabbitMQ at a steady rate into the hub
// (node dist/main.js, stream mode, in its own process). Measures the delivery ratio (every event to every client
// exactly once), the time from each reconnect to caught up (`hub.live`), and the hub's CPU with and without cuts.
import amqp from "amqplib"
import { performance } from "node:perf_hooks"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { startWorker } from "../worker.mjs"

const here = dirname(fileURLToPath(import.meta.url))

const flag = (argv, name, fallback) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 && argv[i + 1] !== undefined ? Number(argv[i + 1]) : fallback
}

const generator = () => startWorker(join(here, "storm-clients.mjs"))

const percentile = (values, p) => {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
}

/** Publishes `{ seq }` at `rate` per second until `stop()`; resolves `done` with the number published. */
const publisher = async (brokerUrl, exchange, rate) => {
  const connection = await amqp.connect(brokerUrl)
  const channel = await connection.createConfirmChannel()
  await channel.assertExchange(exchange, "topic", { durable: true })
  let seq = 0
  let running = true
  const started = Date.now()
  const done = (async () => {
    while (running) {
      const due = started + (seq * 1000) / rate
      if (due > Date.now()) await new Promise((resolve) => setTimeout(resolve, due - Date.now()))
      if (!running) break
      channel.publish(exchange, "storm.tick", Buffer.from(JSON.stringify({ seq, event_id: `${exchange}-${seq}` })))
      seq++
    }
    await channel.waitForConfirms()
    return seq
  })()
  return {
    stop: async () => {
      running = false
      const published = await done
      await connection.close()
      return published
    }
  }
}

export const storm = async ({ argv, quick, report, progress, cpuMicros, startServer, broker }) => {
  const clients = flag(argv, "storm-clients", quick ? 300 : 2000)
  const rate = flag(argv, "storm-rate", 15)
  const seconds = flag(argv, "storm-seconds", quick ? 20 : 60)
  const cutEvery = flag(argv, "storm-cut-every", quick ? 8 : 15) * 1000
  const cutFor = 2000
  const calmSeconds = quick ? 5 : 10
  const names = `bench_storm_${process.pid}_${Date.now()}`
  const hub = await startServer("hub", {
    RABBITMQ_URL: broker, RABBITMQ_MODE: "stream", RABBITMQ_EXCHANGE: `${names}.events`, RABBITMQ_STREAM: `${names}.stream`
  })
  const port = Number(new URL(hub.url).port)
  // 500 clients per process: each client's proxy runs there too, and a busy process delays its own catch-ups.
  const perGenerator = 500
  const generators = await Promise.all(Array.from({ length: Math.ceil(clients / perGenerator) }, generator))
  try {
    progress(`storm: ${clients} clients connecting`)
    await Promise.all(generators.map((g, i) =>
      g.call("start", { hubPort: port, count: Math.min(perGenerator, clients - i * perGenerator), cutEvery, cutFor })))
    const events = await publisher(broker, `${names}.events`, rate)
    // Without cuts first: the hub's CPU for this rate and these clients.
    let cpu = cpuMicros(hub.pid)
    await new Promise((resolve) => setTimeout(resolve, calmSeconds * 1000))
    const calmCores = (cpuMicros(hub.pid) - cpu) / (calmSeconds * 1e6)
    progress(`storm: ${rate} events/s, hub ${calmCores.toFixed(2)} cores without cuts; cutting for ${seconds} s`)
    cpu = cpuMicros(hub.pid)
    await Promise.all(generators.map((g) => g.call("startCuts", { cutEvery, cutFor })))
    // The hub's responsiveness during the storm: /health every 200 ms over one kept-alive connection.
    const probes = []
    const stormEnd = Date.now() + seconds * 1000
    while (Date.now() < stormEnd) {
      const sent = performance.now()
      await fetch(`${hub.base}/health`).then((response) => response.arrayBuffer()).catch(() => undefined)
      probes.push(performance.now() - sent)
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(200, stormEnd - Date.now()))))
    }
    const stormCores = (cpuMicros(hub.pid) - cpu) / (seconds * 1e6)
    await Promise.all(generators.map((g) => g.call("stopCuts")))
    const published = await events.stop()
    // Every client catches up (or 60 s pass): then count. Events still missing then are reported as missing.
    const stopped = Date.now()
    const deadline = stopped + 60_000
    for (;;) {
      const received = (await Promise.all(generators.map((g) => g.call("received")))).reduce((a, b) => a + b, 0)
      if (received >= published * clients || Date.now() > deadline) break
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    const caughtUpAfter = (Date.now() - stopped) / 1000
    const parts = await Promise.all(generators.map((g) => g.call("report", { events: published })))
    const all = parts.flatMap((part) => part.clients)
    const catchUps = parts.flatMap((part) => part.catchUps)
    const fromRestore = parts.flatMap((part) => part.fromRestore)
    const connects = parts.flatMap((part) => part.connectTimes)
    const received = all.reduce((sum, c) => sum + c.received, 0)
    const result = {
      clients, rate, seconds, cut_every_s: cutEvery / 1000, cut_for_s: cutFor / 1000, published,
      deliveries: received, all_caught_up_s_after_publishing_stopped: caughtUpAfter, expected: published * clients, delivery_ratio: received / (published * clients),
      duplicates: all.reduce((sum, c) => sum + c.duplicates, 0), missing: all.reduce((sum, c) => sum + c.missing, 0),
      cuts: all.reduce((sum, c) => sum + c.cuts, 0), reconnects_caught_up: catchUps.length,
      catch_up_ms: { p50: percentile(catchUps, 50), p99: percentile(catchUps, 99), max: percentile(catchUps, 100) },
      restore_to_caught_up_ms: { p50: percentile(fromRestore, 50), p99: percentile(fromRestore, 99) },
      hub_health_ms: { p50: percentile(probes, 50), p99: percentile(probes, 99), max: percentile(probes, 100) },
      hub_tcp_connect_ms: { p50: percentile(connects, 50), p99: percentile(connects, 99), over_900ms: connects.filter((t) => t > 900).length, count: connects.length },
      loadgen_event_loop_delay_p99_ms: Math.max(...parts.map((part) => part.lagP99)),
      hub_cores_without_cuts: calmCores, hub_cores_during_storm: stormCores
    }
    report.scenarios.storm = result
    const ms = (n) => `${Number.isFinite(n) ? n.toFixed(0) : "n/a"} ms`
    return [
      `storm hub (${clients} clients, ${rate} ev/s, cut ~2 s every ~${cutEvery / 1000} s)`,
      `delivery ${(result.delivery_ratio * 100).toFixed(3)}% (${result.duplicates} dup, ${result.missing} missing)`,
      `reconnect→caught up p50 ${ms(result.catch_up_ms.p50)}, p99 ${ms(result.catch_up_ms.p99)} (${catchUps.length} reconnects; ` +
        `cut end→caught up p99 ${ms(result.restore_to_caught_up_ms.p99)}; load generators' event-loop delay p99 ` +
        `${ms(result.loadgen_event_loop_delay_p99_ms)}; TCP connect to the hub p99 ${ms(result.hub_tcp_connect_ms.p99)}, ` +
        `${result.hub_tcp_connect_ms.over_900ms} of ${connects.length} over 0.9 s; hub /health p99 ${ms(result.hub_health_ms.p99)}, ` +
        `max ${ms(result.hub_health_ms.max)})`,
      `hub CPU ${stormCores.toFixed(2)} cores in the storm, ${calmCores.toFixed(2)} without cuts`
    ]
  } finally {
    await Promise.all(generators.map((g) => g.call("close").catch(() => undefined)))
    await Promise.all(generators.map((g) => g.stop()))
    await hub.stop()
    const connection = await amqp.connect(broker)
    const channel = await connection.createChannel()
    // The stream, and the ingest quorum queue the default path feeds it from (Config.ts, ingestQueueName).
    for (const queue of [`${names}.stream`, `${names}.stream.ingest`]) await channel.deleteQueue(queue).catch(() => undefined)
    await channel.deleteExchange(`${names}.events`).catch(() => undefined)
    await connection.close().catch(() => undefined)
  }
}
