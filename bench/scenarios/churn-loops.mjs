// The churn load generator (a process of its own, driven by bench/scenarios/churn.mjs over IPC): `loops` loops,
// each connecting a client, subscribing, waiting for `events` events, closing (a normal close handshake), again.
// Source addresses rotate over 127.0.0.2-254, so that sockets in TIME_WAIT never exhaust the ephemeral ports.
import WebSocket from "ws"

let running = false
let cycles = 0
let failures = 0
let nextAddress = 0
const loops = []

const cycle = (url, events) =>
  new Promise((resolve) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, localAddress: `127.0.0.${2 + (nextAddress++ % 253)}` })
    let received = 0
    let done = false
    const finish = (ok) => {
      if (done) return
      done = true
      if (ok) cycles++
      else failures++
      resolve()
    }
    ws.on("error", () => finish(false))
    ws.on("open", () => ws.send("{\"action\":\"subscribe\",\"event_types\":[\"#\"]}"))
    ws.on("message", (data) => {
      // The hub's replies (hub.subscribed) are not events; a bare ws server sends none.
      if (data.length > 12 && data.toString("latin1", 0, 13) === "{\"type\":\"hub.") return
      if (++received === events) ws.close(1000)
    })
    ws.on("close", () => finish(received >= events))
  })

const loop = async (url, events) => {
  while (running) await cycle(url, events)
}

const handlers = {
  start({ url, count, events }) {
    running = true
    cycles = 0
    failures = 0
    for (let i = 0; i < count; i++) loops.push(loop(url, events))
    return {}
  },
  /** Counts so far, without stopping (the window's figures are differences of two reads). */
  read() {
    return { cycles, failures }
  },
  async stop() {
    running = false
    await Promise.all(loops.splice(0))
    return { cycles, failures }
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
