// The load generator: a separate process holding the WebSocket clients, driven by bench/run.mjs over IPC.
// It counts event messages, and measures publish-to-receipt latency on a sample of clients.
import { randomBytes } from "node:crypto"
import { request } from "node:http"
import { performance } from "node:perf_hooks"
import WebSocket from "ws"

const clients = []
let received = 0
let waiting = null
let latencies = null
const now = () => performance.timeOrigin + performance.now()

const onEvent = (client, text) => {
  received++
  if (latencies !== null && client.sampled && !client.paused) {
    const at = text.indexOf("\"t\":")
    if (at >= 0) latencies.push(now() - parseFloat(text.slice(at + 4, at + 24)))
  }
  if (waiting !== null && received >= waiting.total) {
    const done = waiting
    waiting = null
    done.resolve()
  }
}

const connectOne = (url, index, patterns, localAddress) =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, localAddress })
    const client = { ws, sampled: index % 10 === 0, paused: false }
    ws.on("error", reject)
    ws.on("message", (data, isBinary) => {
      if (isBinary) return
      const text = data.toString()
      if (text.startsWith("{\"type\":\"hub.")) {
        if (text.startsWith("{\"type\":\"hub.subscribed")) resolve(client)
        return
      }
      onEvent(client, text)
    })
    ws.on("open", () => {
      if (patterns === null) resolve(client)
      else ws.send(JSON.stringify({ action: "subscribe", event_types: patterns }))
    })
  })

/**
 * A client that completes the handshake and then only drains its socket, without parsing frames: it costs the
 * load generator a read per burst instead of a parse per message, so that measuring the latency of the sampled
 * clients is not limited by the load generator itself (one process on the same 2 cores as the server).
 */
const connectDrainOnly = (url, localAddress) =>
  new Promise((resolve, reject) => {
    const req = request(url.replace("ws:", "http:"), {
      localAddress,
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": randomBytes(16).toString("base64")
      }
    })
    req.on("upgrade", (_response, socket) => {
      socket.on("data", () => {})
      socket.on("error", () => {})
      resolve({ ws: { _socket: socket, terminate: () => socket.destroy() }, sampled: false, paused: false })
    })
    req.on("error", reject)
    req.end()
  })

const handlers = {
  async connect({ url, count, types, perClient, hub, drainOnly = false }) {
    // Source addresses rotate over 127.0.0.2-254 so that many runs never exhaust ephemeral ports.
    for (let start = 0; start < count; start += 200) {
      const batch = []
      for (let i = start; i < Math.min(count, start + 200); i++) {
        const index = clients.length + batch.length
        const patterns = hub && perClient > 0
          ? Array.from({ length: perClient }, (_, k) => types[(index + k * 7) % types.length])
          : null
        const localAddress = `127.0.0.${2 + (index % 253)}`
        batch.push(
          drainOnly && index % 10 !== 0
            ? connectDrainOnly(url, localAddress)
            : connectOne(url, index, hub ? patterns : null, localAddress)
        )
      }
      clients.push(...await Promise.all(batch))
    }
    return { connected: clients.length }
  },
  reset() {
    received = 0
    return { received }
  },
  expect({ total, timeoutMs }) {
    if (received >= total) return { received }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        waiting = null
        resolve({ received, timedOut: true })
      }, timeoutMs)
      waiting = { total, resolve: () => { clearTimeout(timer); resolve({ received }) } }
    })
  },
  pause({ fraction }) {
    const count = Math.round(clients.length * fraction)
    for (const client of clients.slice(0, count)) {
      client.paused = true
      client.ws._socket.pause()
    }
    return { paused: count }
  },
  latencyStart() {
    latencies = []
    return {}
  },
  latencyStop() {
    const sorted = Float64Array.from(latencies ?? []).sort()
    latencies = null
    const at = (q) => sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
    return { samples: sorted.length, p50: at(0.5), p99: at(0.99), max: sorted.length ? sorted[sorted.length - 1] : NaN }
  },
  closeAll() {
    for (const client of clients) client.ws.terminate()
    clients.length = 0
    return {}
  }
}

process.on("message", async ({ id, cmd, ...args }) => {
  try {
    process.send({ id, ok: await handlers[cmd](args) })
  } catch (error) {
    process.send({ id, error: String(error?.message ?? error) })
  }
})
process.send({ ready: true })
