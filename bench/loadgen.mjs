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
/** With `latencyStart({ entering: true })` (the hub): publish to the event's `timestamp`, when it entered the path. */
let entering = null
const lag = monitorEventLoopDelay({ resolution: 1 })
const now = () => performance.timeOrigin + performance.now()

const counted = (n) => {
  received += n
  if (waiting !== null && received >= waiting.total) {
    const done = waiting
    waiting = null
    done.resolve()
  }
}

const onEvent = (client, text) => {
  if (latencies !== null && client.sampled && !client.paused) {
    const at = text.indexOf("\"t\":")
    if (at >= 0) {
      const published = parseFloat(text.slice(at + 4, at + 24))
      latencies.push(now() - published)
      // The hub writes its `timestamp` after the data, whose own fields may be called so too (`Outbound.message`).
      const stamp = entering === null ? -1 : text.lastIndexOf("\"timestamp\":\"")
      if (stamp >= 0) entering.push(Date.parse(text.slice(stamp + 13, stamp + 37)) - published)
    }
  }
  counted(1)
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
 *
 * With `countFrames`, it also walks the frame headers in what it reads (never the payloads): every text frame
 * counts as a received event, and every ping is answered with a pong (the hub closes a client silent for
 * WS_PONG_TIMEOUT, 60 s by default); a few operations per frame.
 */
let drainEveryMs = Number(process.env.DRAIN_EVERY_MS ?? 100)
let drainSliceMs = Math.min(10, drainEveryMs)
const drainBuffer = Buffer.alloc(256 * 1024)
// Each socket is given a slice when it starts draining: a drain reads one slice (no walk over every socket).
let slices = null
let sliced = 0
let drainTimer = null
let drainTick = 0
const drainSlice = () => {
  for (const socket of slices[drainTick++ % slices.length]) socket.resume()
}
/** Sets the drain period (the `connect` request's `drainEveryMs`), before any socket drains. */
const setDrainEvery = (ms) => {
  if (ms === undefined || ms === drainEveryMs) return
  if (slices !== null) throw new Error("drainEveryMs is set before the first drain-only client")
  drainEveryMs = ms
  drainSliceMs = Math.min(10, ms)
}
const drain = (socket) => {
  slices ??= Array.from({ length: Math.max(1, Math.round(drainEveryMs / drainSliceMs)) }, () => new Set())
  const slice = slices[sliced++ % slices.length]
  slice.add(socket)
  drainTimer ??= setInterval(drainSlice, drainSliceMs)
  return slice
}

/** A masked pong frame carrying `payload` (a ping's, at most 125 bytes). */
const pong = (socket, payload) => {
  const mask = randomBytes(4)
  const frame = Buffer.alloc(6 + payload.length)
  frame[0] = 0x8a
  frame[1] = 0x80 | payload.length
  mask.copy(frame, 2)
  for (let k = 0; k < payload.length; k++) frame[6 + k] = payload[k] ^ mask[k & 3]
  socket.write(frame)
}

/** Counts the text frames in `buffer[start, end)`, the next bytes of `socket`'s stream, and answers its pings. */
const frameCounter = (socket) => {
  const header = Buffer.alloc(14)
  let have = 0 // bytes of the current frame's header read so far
  let skip = 0 // bytes of the current frame's payload still to pass over
  let ping = null // a ping's payload, gathered for the pong
  let pingAt = 0
  return (buffer, start, end) => {
    let frames = 0
    for (let i = start; i < end;) {
      if (skip > 0) {
        const take = Math.min(skip, end - i)
        if (ping !== null) pingAt += buffer.copy(ping, pingAt, i, i + take)
        i += take
        skip -= take
        if (skip === 0 && ping !== null) {
          pong(socket, ping)
          ping = null
        }
        continue
      }
      header[have++] = buffer[i++]
      if (have < 2) continue
      const length7 = header[1] & 0x7f
      if (have < 2 + (length7 === 126 ? 2 : length7 === 127 ? 8 : 0) + (header[1] & 0x80 ? 4 : 0)) continue
      const opcode = header[0] & 0x0f
      have = 0
      skip = length7 === 126 ? header.readUInt16BE(2) : length7 === 127 ? Number(header.readBigUInt64BE(2)) : length7
      if (opcode === 1) frames++
      else if (opcode === 9) {
        ping = Buffer.alloc(Math.min(skip, 125))
        pingAt = 0
        if (skip === 0) {
          pong(socket, ping)
          ping = null
        }
      }
    }
    if (frames > 0) counted(frames)
  }
}

const connectDrainOnly = (url, localAddress, countFrames = false) =>
  new Promise((resolve, reject) => {
    const { hostname, port, pathname } = new URL(url)
    let open = false
    let response = "" // the handshake's response, until its end (with countFrames)
    let frames = null
    const socket = connect({
      host: hostname,
      port: Number(port),
      localAddress,
      onread: {
        buffer: drainBuffer,
        callback: (bytes) => {
          let from = 0
          if (!open) {
            if (countFrames) {
              // The frames after the response are counted from the first read on.
              response += drainBuffer.toString("latin1", 0, bytes)
              const end = response.indexOf("\r\n\r\n")
              if (end < 0) return
              from = bytes - (response.length - end - 4)
            }
            open = true
            if ((countFrames ? response : drainBuffer.toString("latin1", 0, Math.min(bytes, 12))).slice(0, 12) !== "HTTP/1.1 101") {
              socket.destroy()
              return reject(new Error("handshake refused"))
            }
            resolve(client)
          }
          if (frames !== null && from < bytes) frames(drainBuffer, from, bytes)
          // Read again at the next drain: the bytes wait in the kernel meanwhile.
          socket.pause()
        }
      }
    })
    if (countFrames) frames = frameCounter(socket)
    const client = { socket, sampled: false, paused: false, slice: null }
    socket.on("error", (error) => {
      if (!open) reject(error)
    })
    socket.on("close", () => client.slice.delete(socket))
    socket.write(
      `GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n\r\n`
    )
    client.slice = drain(socket)
  })

const handlers = {
  /**
   * `drainOnly`: every client only drains its socket (see connectDrainOnly); the others parse every message.
   * `countFrames` (drain-only clients): count the events they receive and answer pings. `addresses`: the source
   * addresses to connect from, in turn (by default 127.0.0.2-254, so that many runs never exhaust ephemeral ports).
   * `targets`: instead, the addresses to connect to, in turn (in place of the URL's 127.0.0.1; the server listens on
   * 0.0.0.0), with no source address: a bind to a source address before connecting searches the kernel's bound
   * ports one by one, and with a few thousand sockets a process took seconds per thousand connections.
   * `drainEveryMs`: the drain period, before the first drain-only client. `retries`: attempts after a failed
   * connection, per client (answered as `retried`).
   */
  async connect({ url, count, types, perClient, hub, drainOnly = false, countFrames = false, addresses, targets, drainEveryMs, retries = 0 }) {
    setDrainEvery(drainEveryMs)
    let retried = 0
    const attempt = async (open, left) => {
      try {
        return await open()
      } catch (error) {
        if (left <= 0) throw error
        retried++
        await new Promise((resolve) => setTimeout(resolve, 200))
        return attempt(open, left - 1)
      }
    }
    for (let start = 0; start < count; start += 200) {
      const batch = []
      for (let i = start; i < Math.min(count, start + 200); i++) {
        const index = clients.length + batch.length
        const patterns = hub && perClient > 0
          ? Array.from({ length: perClient }, (_, k) => types[(index + k * 7) % types.length])
          : null
        const to = targets === undefined ? url : url.replace("//127.0.0.1:", `//${targets[index % targets.length]}:`)
        const localAddress = targets !== undefined
          ? undefined
          : addresses === undefined
          ? `127.0.0.${2 + (index % 253)}`
          : addresses[index % addresses.length]
        const open = drainOnly
          ? () => connectDrainOnly(to, localAddress, countFrames)
          : () => connectOne(to, index, hub ? patterns : null, localAddress)
        batch.push(attempt(open, retries))
      }
      clients.push(...await Promise.all(batch))
    }
    return { connected: clients.length, retried }
  },
  /** The events received so far, without waiting. */
  read() {
    return { received, connected: clients.length }
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
      client.slice?.delete(client.socket)
      client.socket.pause()
    }
    return { paused: count }
  },
  latencyStart({ entering: withEntering = false } = {}) {
    latencies = []
    entering = withEntering ? [] : null
    lag.reset()
    lag.enable()
    return {}
  },
  latencyStop() {
    const sorted = Float64Array.from(latencies ?? []).sort()
    const stamps = Float64Array.from(entering ?? []).sort()
    latencies = null
    entering = null
    lag.disable()
    // This process's own event-loop delay while it measured: what its figures may owe to itself.
    const loop = { lag_p99_ms: lag.percentile(99) / 1e6, lag_max_ms: lag.max / 1e6 }
    const quantile = (values) => (q) =>
      values.length === 0 ? NaN : values[Math.min(values.length - 1, Math.floor(q * values.length))]
    const at = quantile(sorted)
    const stampAt = quantile(stamps)
    return {
      samples: sorted.length,
      p50: at(0.5),
      p99: at(0.99),
      max: sorted.length ? sorted[sorted.length - 1] : NaN,
      // Milliseconds of the event's timestamp (ISO, whole milliseconds): a coarse split, not a measurement of its own.
      entering_p50: stampAt(0.5),
      entering_p99: stampAt(0.99),
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
