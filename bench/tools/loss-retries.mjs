// Measures duplicates from a publisher's retries, as issue 10 did: events published to RabbitMQ (100/s, each with an
// event_id), the hub's broker connection dropped 10 times (through a TCP proxy), and after each drop the publisher
// resends its last 13 events (a careful publisher's retry after lost confirms). N clients count what they receive.
//   npm run build && node bench/tools/loss-retries.mjs [stream|queue] [clients] [seconds]
// Needs RabbitMQ on 127.0.0.1:5672; uses its own exchange, stream and queue, deleted at the end.
import amqp from "amqplib"
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { connect as connectTcp, createServer } from "node:net"
import WebSocket from "ws"
import { freePort } from "./lib/freePort.mjs"

const mode = process.argv[2] ?? "stream"
const clientCount = Number(process.argv[3] ?? 100)
const seconds = Number(process.argv[4] ?? 30)
const id = `retries_${process.pid}`
const names = { exchange: `${id}.events`, stream: `${id}.stream`, instance: `${id}-instance` }

// The hub's way to the broker: a proxy that can drop every connection.
const sockets = new Set()
const proxyPort = await freePort()
const proxy = createServer((client) => {
  const upstream = connectTcp(5672, "127.0.0.1")
  for (const socket of [client, upstream]) {
    sockets.add(socket)
    socket.on("error", () => {})
    socket.on("close", () => {
      sockets.delete(socket)
      client.destroy()
      upstream.destroy()
    })
  }
  client.pipe(upstream)
  upstream.pipe(client)
}).listen(proxyPort, "127.0.0.1")

const port = await freePort()
const hub = spawn(process.execPath, ["dist/main.js"], {
  env: {
    ...process.env,
    PORT: String(port),
    HOST: "127.0.0.1",
    RABBITMQ_URL: `amqp://guest:guest@127.0.0.1:${proxyPort}/`,
    RABBITMQ_EXCHANGE: names.exchange,
    RABBITMQ_STREAM: names.stream,
    HUB_INSTANCE_ID: names.instance,
    RABBITMQ_RECONNECT_DELAY: "100ms",
    RABBITMQ_MAX_RECONNECT_WAIT: "500ms",
    LOG_LEVEL: "error",
    ...(mode === "queue" ? { RABBITMQ_MODE: "queue" } : {})
  },
  stdio: "inherit"
})
const health = async () => {
  try {
    return (await (await fetch(`http://127.0.0.1:${port}/health`)).json()).checks.rabbitmq?.status
  } catch {
    return undefined
  }
}
while (await health() !== "up") await new Promise((resolve) => setTimeout(resolve, 50))

const received = Array.from({ length: clientCount }, () => [])
const clients = await Promise.all(received.map((list) =>
  new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/api/v1/ws/events`)
    ws.on("message", (raw) => {
      const message = JSON.parse(String(raw))
      if (!message.type.startsWith("hub.")) list.push(message.data.seq)
    })
    ws.on("open", () => resolve(ws))
  })
))

const connection = await amqp.connect("amqp://guest:guest@127.0.0.1:5672/")
const channel = await connection.createConfirmChannel()
await channel.assertExchange(names.exchange, "topic", { durable: true })
const sent = []
const publish = (event) =>
  channel.publish(names.exchange, "backtest.completed", Buffer.from(JSON.stringify(event)))
let seq = 0
let resent = 0
const publisher = setInterval(() => {
  const event = { event_id: randomUUID(), seq: seq++ }
  sent.push(event)
  publish(event)
}, 10)
for (let drop = 0; drop < 10; drop++) {
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000 / 11))
  for (const socket of sockets) socket.destroy()
  // The publisher lost its confirms for the last events: it sends them again.
  for (const event of sent.slice(-13)) {
    publish(event)
    resent++
  }
}
await new Promise((resolve) => setTimeout(resolve, seconds * 1000 / 11))
clearInterval(publisher)
await channel.waitForConfirms()
const deadline = Date.now() + 15_000
while (received.some((list) => list.at(-1) !== seq - 1) && Date.now() < deadline) {
  await new Promise((resolve) => setTimeout(resolve, 100))
}
let deliveries = 0
let duplicates = 0
let missed = 0
for (const list of received) {
  const distinct = new Set(list)
  deliveries += list.length
  duplicates += list.length - distinct.size
  missed += seq - distinct.size
}
const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).json()
console.log(JSON.stringify({
  mode,
  clients: clientCount,
  events: seq,
  resent,
  deliveries,
  duplicates,
  missed,
  events_deduplicated: metrics.websocket.events_deduplicated,
  reconnects: metrics.rabbitmq?.reconnects
}))
for (const ws of clients) ws.terminate()
hub.kill("SIGTERM")
await new Promise((resolve) => hub.on("exit", resolve))
proxy.close()
await channel.deleteQueue(names.stream).catch(() => {})
await channel.deleteQueue(`websocket_events_queue.${names.instance}`).catch(() => {})
await channel.deleteExchange(names.exchange).catch(() => {})
await connection.close()
