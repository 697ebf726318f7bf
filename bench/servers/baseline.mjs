// A bare `ws` broadcast server, the baseline the hub is measured against.
// MODE=send:  `client.send(text)` for every client (how most code uses ws).
// MODE=frame: one pre-built frame, written to every client's socket (one write per frame).
// MODE=corked: one pre-built frame per event; once per turn of the event loop, each client's pending frames are
//              written in one corked batch (the floor measured in shared/notes/stack.md; not a requirement of the
//              issue, shown for reference and used as the floor of the latency scenario).
// Same endpoints as the hub: WS on /api/v1/ws/events, POST /api/v1/events {"type","data"}, GET /metrics.
// REUSE_PORT=1: listens with `reusePort` (several processes share PORT, the kernel spreads the connections), and
//              also on a port of its own (127.0.0.1, picked by the system, sent in the ready message as
//              `{ ready, port }`), where POST /api/v1/events and GET /metrics reach this process alone: each process
//              broadcasts to its own clients only, and answers /metrics for itself.
import { createServer } from "node:http"
import { Sender, WebSocketServer } from "ws"

const mode = process.env.MODE ?? "send"
const port = Number(process.env.PORT ?? 8080)
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 512 })
let delivered = 0
let pending = []

const flush = () => {
  const frames = pending
  pending = []
  for (const client of wss.clients) {
    const socket = client._socket
    socket.cork()
    for (const frame of frames) socket.write(frame)
    socket.uncork()
  }
}

const broadcast = (type, data) => {
  const text = JSON.stringify({ type, data, timestamp: new Date().toISOString() })
  if (mode === "send") {
    for (const client of wss.clients) client.send(text)
  } else {
    const frame = Buffer.concat(Sender.frame(Buffer.from(text), { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false }))
    if (mode === "frame") {
      for (const client of wss.clients) client._socket.write(frame)
    } else {
      // Every client receives every event here, so the pending frames are the same for all of them.
      pending.push(frame)
      if (pending.length === 1) setImmediate(flush)
    }
  }
  delivered += wss.clients.size
}

const handle = (req, res) => {
  if (req.method === "POST" && req.url === "/api/v1/events") {
    const chunks = []
    req.on("data", (chunk) => chunks.push(chunk))
    req.on("end", () => {
      const body = JSON.parse(Buffer.concat(chunks).toString())
      for (const { type, data } of Array.isArray(body) ? body : [body]) broadcast(type, data)
      res.writeHead(202, { "content-type": "application/json" }).end("{\"status\":\"accepted\"}")
    })
  } else if (req.url === "/health") {
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({
      checks: { rabbitmq: { status: consuming ? "up" : "down" } }
    }))
  } else if (req.url === "/metrics") {
    const memory = process.memoryUsage()
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({
      websocket: { connected_clients: wss.clients.size, messages_delivered: delivered },
      process: { rss_bytes: memory.rss, heap_used_bytes: memory.heapUsed }
    }))
  } else {
    res.writeHead(404).end()
  }
}
const server = createServer(handle)
server.on("upgrade", (req, socket, head) => {
  socket.on("error", () => {})
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on("error", () => {})
    ws.on("message", (message) => {
      if (String(message) === "ping") ws.send("pong")
    })
  })
})
if (process.env.REUSE_PORT === "1") {
  const own = createServer(handle)
  await new Promise((resolve) => server.listen({ port, host: process.env.HOST ?? "127.0.0.1", reusePort: true }, resolve))
  await new Promise((resolve) => own.listen(0, "127.0.0.1", resolve))
  process.send?.({ ready: true, port: own.address().port })
} else {
  server.listen(port, "127.0.0.1", () => process.send?.({ ready: true }))
}

// With RABBITMQ_URL set, also consume the exchange (as the hub does, minus everything else) and broadcast each
// delivery: the floor for the end-to-end latency scenario.
let consuming = false
if (process.env.RABBITMQ_URL) {
  const { default: amqp } = await import("amqplib")
  const connection = await amqp.connect(process.env.RABBITMQ_URL, { noDelay: true })
  const channel = await connection.createChannel()
  const exchange = process.env.RABBITMQ_EXCHANGE
  const queue = process.env.RABBITMQ_QUEUE
  await channel.assertExchange(exchange, "topic", { durable: true })
  await channel.assertQueue(queue, { durable: true })
  await channel.bindQueue(queue, exchange, "#")
  await channel.prefetch(100)
  await channel.consume(queue, (message) => {
    broadcast(message.fields.routingKey, JSON.parse(message.content.toString()))
    channel.ack(message)
  })
  consuming = true
}
process.on("SIGTERM", () => process.exit(0))
