// SSE fan-out: the hub's CPU per delivered message to Server-Sent Events streams, next to the same run over
// WebSocket (the fan-out scenario's `hub`), back to back: what the SSE framing (one shared `id:`/`data:` buffer per
// event, chunked HTTP writes) costs compared with pre-built WebSocket frames.
//
//   npm run bench -- --scenarios sse [--quick] [--clients N] [--events N]
//
// Run as `node bench/scenarios/sse.mjs loadgen` (forked by the scenario), this file is the SSE load generator:
// plain HTTP clients that count the `data:` lines they receive, without parsing them.
import { request } from "node:http"
import { fileURLToPath } from "node:url"
import { startWorker } from "../worker.mjs"

const self = fileURLToPath(import.meta.url)
const dataLine = Buffer.from("\ndata: ")

// ---------------------------------------------------------------------------
// The load generator (child process)
// ---------------------------------------------------------------------------

const loadgen = () => {
  const sockets = []
  let received = 0
  let waiting = null
  const count = (chunk, tail) => {
    // A `\ndata: ` split between two chunks is found in the previous chunk's tail joined to this one.
    const text = tail.length === 0 ? chunk : Buffer.concat([tail, chunk])
    for (let at = text.indexOf(dataLine); at !== -1; at = text.indexOf(dataLine, at + 1)) received++
    if (waiting !== null && received >= waiting.total) {
      const done = waiting
      waiting = null
      done.resolve()
    }
    return text.subarray(Math.max(0, text.length - dataLine.length + 1))
  }
  const connectOne = (url, localAddress) =>
    new Promise((resolve, reject) => {
      const req = request(url, { agent: false, localAddress, headers: { accept: "text/event-stream" } }, (response) => {
        if (response.statusCode !== 200) return reject(new Error(`HTTP ${response.statusCode}`))
        let tail = Buffer.alloc(0)
        let started = false
        response.on("data", (chunk) => {
          tail = count(chunk, tail)
          if (!started) {
            started = true
            resolve(response.socket)
          }
        })
      })
      req.on("error", reject)
      req.end()
    })
  const handlers = {
    async connect({ url, count: total }) {
      for (let start = 0; start < total; start += 200) {
        const batch = []
        for (let i = start; i < Math.min(total, start + 200); i++) batch.push(connectOne(url, `127.0.0.${2 + (i % 253)}`))
        sockets.push(...await Promise.all(batch))
      }
      return { connected: sockets.length }
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
}

const startLoadgen = () => startWorker(self, ["loadgen"])

// ---------------------------------------------------------------------------
// The scenario (called by bench/run.mjs with its helpers)
// ---------------------------------------------------------------------------

const sseFanout = async ({ options, startServer, measureFanout, progress }) => {
  progress(`fan-out: hub over SSE, ${options.clients} streams, ${options.events} events of ~${options.size} B`)
  const [server, generator] = await Promise.all([startServer("hub"), startLoadgen()])
  try {
    await generator.call("connect", { url: `${server.base}/api/v1/sse/events`, count: options.clients })
    return await measureFanout(server, generator)
  } finally {
    await generator.stop()
    await server.stop()
  }
}

/** Runs the hub's WebSocket fan-out and its SSE fan-out back to back; adds a row for each to `rows`. */
export const run = async (context) => {
  const fmt = (n, digits = 3) => Number.isFinite(n) ? n.toFixed(digits) : "n/a"
  const ws = await context.fanout("hub")
  const sse = await sseFanout(context)
  for (const [name, result] of [["ws", ws], ["sse", sse]]) {
    context.rows.push([
      `sse scenario: hub over ${name}`,
      `${fmt(result.cpu_us_per_delivery)} us/delivery`,
      `${fmt(result.deliveries_per_second / 1e6, 2)} M deliveries/s`,
      (name === "sse" ? `${fmt(sse.cpu_us_per_delivery / ws.cpu_us_per_delivery, 2)}x ws` : "") +
        (result.complete ? "" : ` INCOMPLETE: ${result.deliveries} deliveries`)
    ])
  }
  return { ws, sse }
}

if (process.argv[2] === "loadgen") loadgen()
