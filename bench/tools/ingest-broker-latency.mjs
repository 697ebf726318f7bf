// Where the default stream path's latency goes, without the hub: publish-to-consume latency through the broker alone,
// for the plain stream, the ingest quorum queue alone, and quorum queue -> minimal mover (confirms, `mandatory`,
// acknowledged once the stream has it) -> stream, the broker's part of what the hub does (rabbitmq/Ingest.ts).
// Also the broker's CPU per event (the RabbitMQ VM's threads, `BROKER_PID` to name it): what each hop costs it.
// Uses queues and an exchange of its own on the broker of RABBITMQ_URL (default the local one), deleted at the end.
//   node bench/tools/ingest-broker-latency.mjs [--rate 1000] [--seconds 10] [--repeat 3]
import amqp from "amqplib"
import { performance } from "node:perf_hooks"
import { cpuMicros, measuredBroker } from "../proc.mjs"

const argv = process.argv.slice(2)
const flag = (name, fallback) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? Number(argv[i + 1]) : fallback
}
const rate = flag("rate", 1000)
const seconds = flag("seconds", 10)
const repeat = flag("repeat", 3)
const url = process.env.RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672/"
const { pid: brokerPid, says } = measuredBroker()
console.log(brokerPid === undefined ? says : `${says} (includes its idle time while the last deliveries arrive)`)
const brokerMicros = () => brokerPid === undefined ? NaN : cpuMicros(brokerPid)
const now = () => performance.timeOrigin + performance.now()
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]

const open = async () => {
  const connection = await amqp.connect(url, { noDelay: true })
  connection.on("error", () => {})
  const channel = await connection.createConfirmChannel()
  channel.on("error", () => {})
  return { connection, channel }
}

/** One run: `setup` declares the path and starts its consumers, calling `seen(body)` at the end of the path. */
const run = async (label, setup) => {
  const tag = `ingest-latency-${label}-${process.pid}-${Date.now()}`
  const latencies = []
  const admin = await open()
  const cleanup = []
  const exchange = `${tag}.x`
  await admin.channel.assertExchange(exchange, "topic", { durable: true, autoDelete: false })
  cleanup.push(() => admin.channel.deleteExchange(exchange))
  const seen = (content) => latencies.push(now() - Number(content.toString()))
  const stop = await setup({ admin, exchange, tag, seen, cleanup })
  const publisher = await open()
  const total = Math.round(rate * seconds)
  const started = now()
  const brokerBefore = brokerMicros()
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate
    const wait = due - now()
    if (wait > 1) await sleep(wait)
    publisher.channel.publish(exchange, "bench.event", Buffer.from(String(now())), { persistent: true })
  }
  await publisher.channel.waitForConfirms()
  const deadline = now() + 10_000
  while (latencies.length < total && now() < deadline) await sleep(20)
  const broker = (brokerMicros() - brokerBefore) / total
  await publisher.connection.close()
  await stop()
  for (const step of cleanup.reverse()) await step().catch(() => undefined)
  await admin.connection.close()
  const sorted = latencies.sort((a, b) => a - b)
  return { label, received: sorted.length, total, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), broker }
}

const streamOf = async ({ admin, cleanup }, name) => {
  await admin.channel.assertQueue(name, { durable: true, arguments: { "x-queue-type": "stream" } })
  cleanup.push(() => admin.channel.deleteQueue(name))
}

const readStream = async (name, seen) => {
  const reader = await open()
  await reader.channel.prefetch(1000)
  await reader.channel.consume(name, (message) => {
    if (message === null) return
    seen(message.content)
    reader.channel.ack(message)
  }, { arguments: { "x-stream-offset": "next" } })
  return () => reader.connection.close()
}

const quorumOf = async ({ admin, cleanup }, name, exchange) => {
  await admin.channel.assertQueue(name, {
    durable: true,
    arguments: { "x-queue-type": "quorum", "x-single-active-consumer": true }
  })
  await admin.channel.bindQueue(name, exchange, "#")
  cleanup.push(() => admin.channel.deleteQueue(name))
}

const paths = {
  // Publisher -> exchange -> stream -> reader: the path before issue 20.
  "plain stream": async (context) => {
    const stream = `${context.tag}.stream`
    await streamOf(context, stream)
    await context.admin.channel.bindQueue(stream, context.exchange, "#")
    return readStream(stream, context.seen)
  },
  // Publisher -> exchange -> quorum queue -> consumer: the ingest queue's own hop.
  "quorum only": async (context) => {
    const queue = `${context.tag}.ingest`
    await quorumOf(context, queue, context.exchange)
    const consumer = await open()
    await consumer.channel.prefetch(1000)
    await consumer.channel.consume(queue, (message) => {
      if (message === null) return
      context.seen(message.content)
      consumer.channel.ack(message)
    })
    return () => consumer.connection.close()
  },
  // Publisher -> exchange -> quorum queue -> mover (publish to the stream with confirms and `mandatory`, ack the
  // ingest message once confirmed) -> stream -> reader: the default path's broker work, with a minimal mover.
  "quorum -> mover -> stream": async (context) => {
    const queue = `${context.tag}.ingest`
    const stream = `${context.tag}.stream`
    await quorumOf(context, queue, context.exchange)
    await streamOf(context, stream)
    const mover = await open()
    await mover.channel.prefetch(1000)
    await mover.channel.consume(queue, (message) => {
      if (message === null) return
      mover.channel.publish("", stream, message.content, { persistent: true, mandatory: true }, (error) => {
        if (error === null) mover.channel.ack(message)
      })
    })
    const stopReader = await readStream(stream, context.seen)
    return async () => {
      await stopReader()
      await mover.connection.close()
    }
  }
}

const results = []
for (let round = 1; round <= repeat; round++) {
  for (const [label, setup] of Object.entries(paths)) {
    const result = await run(label.replace(/\W+/g, "-"), setup)
    result.label = label
    results.push(result)
    console.log(`round ${round}: ${label}: p50 ${result.p50.toFixed(2)} ms, p99 ${result.p99.toFixed(2)} ms (${result.received}/${result.total}), broker ${result.broker.toFixed(0)} us CPU/event`)
  }
}
console.log(`\n${rate}/s for ${seconds} s, ${repeat} rounds; medians of the rounds:`)
for (const label of Object.keys(paths)) {
  const mine = results.filter((result) => result.label === label)
  const median = (key) => mine.map((result) => result[key]).sort((a, b) => a - b)[Math.floor(mine.length / 2)]
  console.log(`${label.padEnd(28)} p50 ${median("p50").toFixed(2).padStart(7)} ms   p99 ${median("p99").toFixed(2).padStart(7)} ms   broker ${median("broker").toFixed(0).padStart(5)} us CPU/event`)
}
