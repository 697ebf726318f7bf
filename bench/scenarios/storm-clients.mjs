// A load generator for the reconnect storm (forked by storm.mjs): clients of the built client library
// (dist/client/client.js with `ws`), each behind a TCP proxy of its own that cuts it off (every connection dropped,
// new ones refused) every ~cutEvery ms for cutFor ms. Reports per-client delivery and the time from each reconnect
// (the socket open) to caught up (`hub.live`).
import { createServer, connect as connectTcp } from "node:net"
import { monitorEventLoopDelay, performance } from "node:perf_hooks"
import WebSocket from "ws"
import { connect } from "../../dist/client/client.js"

const connectTimes = []

class Proxy {
  sockets = new Set()
  server = undefined
  port = 0
  constructor(target) {
    this.target = target
  }
  listen() {
    return new Promise((resolve, reject) => {
      const server = createServer((client) => {
        const upstream = connectTcp(this.target, "127.0.0.1")
        // How long the hub's side takes to accept the TCP connection (a full listen queue shows as 1 s, 3 s, 7 s).
        const connecting = performance.now()
        upstream.once("connect", () => connectTimes.push(performance.now() - connecting))
        for (const socket of [client, upstream]) {
          this.sockets.add(socket)
          socket.on("error", () => undefined)
          socket.on("close", () => {
            this.sockets.delete(socket)
            client.destroy()
            upstream.destroy()
          })
        }
        client.pipe(upstream)
        upstream.pipe(client)
      })
      server.once("error", reject)
      server.listen(this.port, "127.0.0.1", () => {
        this.port = server.address().port
        resolve()
      })
      this.server = server
    })
  }
  async cut() {
    const server = this.server
    this.server = undefined
    for (const socket of this.sockets) socket.destroy()
    if (server) await new Promise((resolve) => server.close(resolve))
  }
}

const clients = []

const start = async ({ hubPort, count, cutEvery, cutFor }) => {
  for (let i = 0; i < count; i++) {
    const proxy = new Proxy(hubPort)
    await proxy.listen()
    const record = { proxy, received: 0, last: -1, duplicates: 0, missing: 0, opened: 0, restored: 0, catchUps: [], fromRestore: [], cuts: 0 }
    // Record when each socket opens: the reconnect that `hub.live` then completes.
    const Socket = class extends WebSocket {
      constructor(url, protocols) {
        super(url, protocols)
        this.addEventListener("open", () => (record.opened = performance.now()))
      }
    }
    const client = connect(`ws://127.0.0.1:${proxy.port}/api/v1/ws/events`, { WebSocket: Socket, eventTypes: ["storm.#"] })
    client.on("storm.#", (event) => {
      const seq = event.data.seq
      if (seq <= record.last) record.duplicates++
      else {
        record.missing += seq - record.last - 1
        record.received++
        record.last = seq
      }
    })
    client.onLive(() => {
      record.catchUps.push(performance.now() - record.opened)
      if (record.restored > 0) record.fromRestore.push(performance.now() - record.restored)
      record.restored = 0
    })
    record.client = client
    clients.push(record)
  }
  const deadline = Date.now() + 60_000
  while (clients.some((record) => record.client.state !== "connected")) {
    if (Date.now() > deadline) throw new Error("clients did not connect")
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return { cutEvery, cutFor }
}

// This process's own event-loop delay during the cuts: a catch-up time is measured here, so it includes it.
const lag = monitorEventLoopDelay({ resolution: 10 })
let cutting = false
const cutLoop = async (record, cutEvery, cutFor) => {
  // A random phase, then every cutEvery ± 20%: the cuts are spread, as a flaky network spreads them.
  let wait = Math.random() * cutEvery
  while (cutting) {
    await new Promise((resolve) => setTimeout(resolve, wait))
    if (!cutting) break
    await record.proxy.cut()
    record.cuts++
    await new Promise((resolve) => setTimeout(resolve, cutFor * (0.8 + Math.random() * 0.4)))
    await record.proxy.listen()
    record.restored = performance.now()
    wait = cutEvery * (0.8 + Math.random() * 0.4)
  }
}

const commands = {
  start,
  startCuts: ({ cutEvery, cutFor }) => {
    cutting = true
    lag.reset()
    lag.enable()
    for (const record of clients) void cutLoop(record, cutEvery, cutFor)
    return true
  },
  stopCuts: () => {
    cutting = false
    lag.disable()
    return true
  },
  /** Per client: received (unique, in order), duplicates, missing, last seq; catch-up times in ms. */
  report: ({ events }) => ({
    clients: clients.map((record) => ({
      received: record.received,
      duplicates: record.duplicates,
      missing: record.missing + Math.max(0, events - 1 - record.last),
      cuts: record.cuts,
      state: record.client.state
    })),
    catchUps: clients.flatMap((record) => record.catchUps),
    lagP99: lag.percentile(99) / 1e6,
    connectTimes,
    fromRestore: clients.flatMap((record) => record.fromRestore)
  }),
  received: () => clients.reduce((sum, record) => sum + record.received, 0),
  close: () => {
    for (const record of clients) record.client.close()
    return true
  }
}

process.on("message", async (message) => {
  try {
    process.send({ id: message.id, ok: await commands[message.cmd](message) })
  } catch (error) {
    process.send({ id: message.id, error: String(error?.stack ?? error) })
  }
})
process.send({ ready: true })
