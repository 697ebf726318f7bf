// The load generator: a separate process holding the WebSocket clients, driven by bench/run.mjs over IPC.
// It counts event messages, and measures publish-to-receipt latency on a sample of clients.
import { randomBytes } from "node:crypto"
import { connect } from "node:net"
import { monitorEventLoopDelay, performance } from "node:perf_hooks"
import WebSocket from "ws"

const clients = []
let received = 0
let waiting = null
let latencies = null
const lag = monitorEventLoopDelay({ resolution: 1 })
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
    const client = { ws, socket: null, sampled: true, paused: false }

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
      client.socket = ws._socket
      if (patterns === null) resolve(client)
      else ws.send(JSON.stringify({ action: "subscribe", event_types: patterns }))
    })
  })

/**
 * A client that completes the handshake and then only drains its socket, without parsing frames, so that the
 * load generator (on the same 2 cores as the server) does not limit what it measures. Its socket is read into
 * one shared buffer (`onread`, no allocation per read) and only every `DRAIN_EVERY_MS` (100 ms by default):
 * between two drains the bytes wait in the kernel's receive buffer (about 14 KB at 300 events/s, far below its
 * 128 KB), which the server cannot tell from a client reading at once. The drains are spread: every
 * `drainSliceMs` one slice of the sockets is read, so that the load generator never takes the CPU for long in one
 * go. Reading each socket on every event instead costs one read per client and event: 300,000 reads a second at
 * 300 events/s and 1,000 clients, more than a core.
 */
const drainEveryMs = Number(process.env.DRAIN_EVERY_MS ?? 100)
const drainSliceMs = Math.min(10, drainEveryMs)
const drainBuffer = Buffer.alloc(256 * 1024)
const draining = new Set()
let drainTimer = null
let drainTick = 0
const drainSlice = () => {
  const slices = Math.max(1, Math.round(drainEveryMs / drainSliceMs))
  const slice = drainTick++ % slices
  let index = 0
  for (const socket of draining) {
    if (index++ % slices === slice) socket.resume()
  }
}

const connectDrainOnly = (url, localAddress) =>
  new Promise((resolve, reject) => {
    const { hostname, port, pathname } = new URL(url)
    let open = false
    const socket = connect({
      host: hostname,
      port: Number(port),
      localAddress,
      onread: {
        buffer: drainBuffer,
        callback: (bytes) => {
          if (!open) {
            open = true
            if (drainBuffer.toString("latin1", 0, Math.min(bytes, 12)) !== "HTTP/1.1 101") {
              socket.destroy()
              return reject(new Error("handshake refused"))
            }
            resolve(client)
          }
          // Read again at the next drain: the bytes wait in the kernel meanwhile.
          socket.pause()
        }
      }
    })
    const client = { socket, sampled: false, paused: false }
    socket.on("error", (error) => {
      if (!open) reject(error)
    })
    socket.on("close", () => draining.delete(socket))
    socket.write(
      `GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n\r\n`
    )
    draining.add(socket)
    drainTimer ??= setInterval(drainSlice, drainSliceMs)
  })

const handlers = {
  /** `drainOnly`: every client only drains its socket (see connectDrainOnly); the others parse every message. */
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
        batch.push(drainOnly ? connectDrainOnly(url, localAddress) : connectOne(url, index, hub ? patterns : null, localAddress))
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
      draining.delete(client.socket)
      client.socket.pause()
    }
    return { paused: count }
  },
  latencyStart() {
    latencies = []
    lag.reset()
    lag.enable()
    return {}
  },
  latencyStop() {
    const sorted = Float64Array.from(latencies ?? []).sort()
    latencies = null
    lag.disable()
    // This process's own event-loop delay while it measured: what its figures may owe to itself.
    const loop = { lag_p99_ms: lag.percentile(99) / 1e6, lag_max_ms: lag.max / 1e6 }
    const at = (q) => sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
    return {
      samples: sorted.length,
      p50: at(0.5),
      p99: at(0.99),
      max: sorted.length ? sorted[sorted.length - 1] : NaN,
      ...loop
    }
  },
  closeAll() {
    for (const client of clients) client.socket?.destroy()
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
