// The ingest path's own cost in the hub, without the fan-out: a hub with no clients consumes events published to
// RabbitMQ at a fixed rate; its CPU per event (and the broker's) on the default path (ingest quorum queue, moved
// into the stream) and on the plain stream, the paths alternated round by round. With two builds (`--hubs a,b`),
// each path runs on each build in turn: an A/B of a change to the path.
// Uses an exchange and queues of its own on the broker of RABBITMQ_URL (default the local one), deleted at the end.
//   node bench/tools/ingest-hub-cpu.mjs [--rate 1000] [--seconds 4] [--rounds 5] [--hubs dist/main.js,other/main.js]
import amqp from "amqplib"
import { spawn } from "node:child_process"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { cpuMicros, measuredBroker } from "../proc.mjs"
import { freePort } from "./lib/freePort.mjs"

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
const argv = process.argv.slice(2)
const flag = (name, fallback) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? argv[i + 1] : fallback
}
const rate = Number(flag("rate", 1000))
const seconds = Number(flag("seconds", 4))
const rounds = Number(flag("rounds", 5))
const hubs = flag("hubs", join(root, "dist", "main.js")).split(",").map((path) => resolve(path))
const url = process.env.RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672/"
const { pid: brokerPid, says } = measuredBroker()
console.log(says)
const sleep = (ms) => new Promise((done) => setTimeout(done, ms))
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor((values.length - 1) / 2)]

/** One run: a client-less hub on `path`, `rate` events/s for `seconds`; CPU per event of the hub and the broker. */
const run = async (hub, path) => {
  const exchange = `ingest-hub-cpu-${process.pid}-${Date.now()}`
  const stream = `${exchange}.stream`
  const port = await freePort()
  const child = spawn(process.execPath, [hub], {
    env: {
      ...process.env,
      PORT: String(port),
      HOST: "127.0.0.1",
      RABBITMQ_URL: url,
      RABBITMQ_EXCHANGE: exchange,
      RABBITMQ_STREAM: stream,
      RABBITMQ_INGEST: path === "default" ? "quorum" : "none",
      LOG_LEVEL: "warn"
    },
    stdio: ["ignore", "inherit", "inherit"]
  })
  const exited = new Promise((done) => child.once("exit", done))
  const connection = await amqp.connect(url, { noDelay: true })
  const channel = await connection.createChannel()
  try {
    for (;;) {
      const health = await fetch(`http://127.0.0.1:${port}/health`).then((response) => response.json(), () => undefined)
      const up = (check) => check === undefined || check.status === "up"
      if (health?.checks.rabbitmq?.status === "up" && up(health.checks.rabbitmq_ingest)) break
      if (child.exitCode !== null) throw new Error(`the hub exited with ${child.exitCode}`)
      await sleep(100)
    }
    const body = (n) => Buffer.from(JSON.stringify({ n, event_id: `${exchange}-${n}`, padding: "x".repeat(400) }))
    const publish = async (from, duration) => {
      const start = performance.now()
      let sent = from
      while (performance.now() - start < duration * 1000) {
        const due = from + Math.floor(((performance.now() - start) / 1000) * rate)
        for (; sent < due; sent++) channel.publish(exchange, "task.completed", body(sent))
        await sleep(2)
      }
      return sent - from
    }
    const warm = await publish(0, 1)
    const hub0 = cpuMicros(child.pid)
    const broker0 = brokerPid === undefined ? NaN : cpuMicros(brokerPid)
    const sent = await publish(warm, seconds)
    // Until the hub has read the last of them: its CPU then belongs to these events.
    await sleep(300)
    return {
      hub: (cpuMicros(child.pid) - hub0) / sent,
      broker: brokerPid === undefined ? NaN : (cpuMicros(brokerPid) - broker0) / sent
    }
  } finally {
    child.kill("SIGTERM")
    await exited
    for (const queue of [stream, `${stream}.ingest`]) await channel.deleteQueue(queue).catch(() => undefined)
    await channel.deleteExchange(exchange).catch(() => undefined)
    await connection.close()
  }
}

const results = new Map()
for (let round = 1; round <= rounds; round++) {
  for (const hub of hubs) {
    for (const path of ["plain", "default"]) {
      const result = await run(hub, path)
      const key = `${hub}\t${path}`
      results.set(key, [...(results.get(key) ?? []), result])
      console.log(`round ${round}: ${path.padEnd(7)} ${hub}: hub ${result.hub.toFixed(1)} us/event, broker ${result.broker.toFixed(1)} us/event`)
    }
  }
}
console.log(`\nmedians of ${rounds} rounds at ${rate}/s, ${seconds} s each, no clients:`)
for (const hub of hubs) {
  const [plain, moved] = ["plain", "default"].map((path) => results.get(`${hub}\t${path}`))
  const hubPlain = median(plain.map((r) => r.hub))
  const hubMoved = median(moved.map((r) => r.hub))
  const brokerPlain = median(plain.map((r) => r.broker))
  const brokerMoved = median(moved.map((r) => r.broker))
  console.log(`${hub}\n  hub: plain ${hubPlain.toFixed(1)}, default ${hubMoved.toFixed(1)} us/event (+${(hubMoved - hubPlain).toFixed(1)}, ` +
    `${(hubMoved / hubPlain).toFixed(2)}x); broker: plain ${brokerPlain.toFixed(1)}, default ${brokerMoved.toFixed(1)} us/event ` +
    `(${(brokerMoved / brokerPlain).toFixed(2)}x)`)
}
