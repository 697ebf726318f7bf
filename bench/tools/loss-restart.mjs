// Measures what a client loses across a restart of the hub (SIGTERM, ~1 s down, start again), as issue 10 did:
// events published to RabbitMQ at 50/s, a client that follows docs/protocol.md's resume rule (subscribe with since,
// nothing handled before hub.subscribed). Prints published, handled, missed, duplicated and the gap notices.
//   npm run build && node bench/tools/loss-restart.mjs [stream|queue] [seconds]
// Needs RabbitMQ on 127.0.0.1:5672; uses its own exchange, stream and queue, deleted at the end.
import amqp from "amqplib"
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { createServer } from "node:net"
import WebSocket from "ws"

const mode = process.argv[2] ?? "stream"
const seconds = Number(process.argv[3] ?? 16)
const id = `loss_${process.pid}`
const names = { exchange: `${id}.events`, stream: `${id}.stream`, instance: `${id}-instance` }
const port = await new Promise((resolve) => {
  const server = createServer().listen(0, "127.0.0.1", () => {
    const { port } = server.address()
    server.close(() => resolve(port))
  })
})
const env = {
  ...process.env,
  PORT: String(port),
  HOST: "127.0.0.1",
  RABBITMQ_URL: "amqp://guest:guest@127.0.0.1:5672/",
  RABBITMQ_EXCHANGE: names.exchange,
  RABBITMQ_STREAM: names.stream,
  HUB_INSTANCE_ID: names.instance,
  LOG_LEVEL: "warn",
  ...(mode === "queue" ? { RABBITMQ_MODE: "queue" } : {})
}
const queue = `websocket_events_queue.${names.instance}`
const start = () =>
  new Promise((resolve) => {
    const child = spawn(process.execPath, ["dist/main.js"], { env, stdio: ["ignore", "pipe", "pipe"] })
    const check = async () => {
      try {
        const response = await fetch(`http://127.0.0.1:${port}/health`)
        const body = await response.json()
        if (body.checks.rabbitmq?.status === "up") return resolve(child)
      } catch {}
      setTimeout(check, 50)
    }
    check()
  })

const connection = await amqp.connect("amqp://guest:guest@127.0.0.1:5672/")
const channel = await connection.createConfirmChannel()
await channel.assertExchange(names.exchange, "topic", { durable: true })

let hub = await start()
let published = 0
const handled = []
const gaps = []
let lastId
let ws
const connectClient = () => {
  ws = new WebSocket(`ws://127.0.0.1:${port}/api/v1/ws/events`)
  let subscribed = false
  ws.on("open", () =>
    ws.send(JSON.stringify({ action: "subscribe", event_types: ["#"], ...(lastId ? { since: lastId } : {}) })))
  ws.on("message", (raw) => {
    const message = JSON.parse(String(raw))
    if (message.type === "hub.subscribed") subscribed = true
    else if (message.type === "hub.history_gap") gaps.push(message.data)
    else if (!message.type.startsWith("hub.") && subscribed) {
      handled.push(message.data.seq)
      lastId = message.id
    }
  })
  ws.on("error", () => {})
  // Reconnects after 1 s, as a client with a short backoff does.
  ws.on("close", () => setTimeout(connectClient, 1000))
}
connectClient()

const publisher = setInterval(() => {
  const seq = published++
  channel.publish(names.exchange, "backtest.completed", Buffer.from(JSON.stringify({ event_id: randomUUID(), seq })))
}, 20)

await new Promise((resolve) => setTimeout(resolve, seconds * 1000 / 2))
hub.kill("SIGTERM")
await new Promise((resolve) => hub.on("exit", resolve))
await new Promise((resolve) => setTimeout(resolve, 1000))
hub = await start()
await new Promise((resolve) => setTimeout(resolve, seconds * 1000 / 2))
clearInterval(publisher)
await channel.waitForConfirms()
const deadline = Date.now() + 10_000
while (handled.at(-1) !== published - 1 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
ws.removeAllListeners("close")
ws.terminate()
hub.kill("SIGTERM")
await new Promise((resolve) => hub.on("exit", resolve))
const first = handled[0] ?? 0
const distinct = new Set(handled)
const missed = Array.from({ length: published - first }, (_, i) => first + i).filter((seq) => !distinct.has(seq))
console.log(JSON.stringify({
  mode,
  published: published - first,
  handled: handled.length,
  missed: missed.length,
  duplicated: handled.length - distinct.size,
  gaps
}))
await channel.deleteQueue(names.stream).catch(() => {})
await channel.deleteQueue(queue).catch(() => {})
await channel.deleteExchange(names.exchange).catch(() => {})
await connection.close()
