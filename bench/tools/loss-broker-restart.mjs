// What clients lose when the broker restarts under the hub (stream mode, the default), against any build:
//   npm run build && node bench/tools/loss-broker-restart.mjs
//   HUB=/path/to/other/dist/main.js RATE=500 SECONDS=30 CLIENTS=10 node bench/tools/loss-broker-restart.mjs
// It starts a RabbitMQ node of its own (test/support/rabbitNode.ts: never the shared one on 5672), two hub
// processes (`node $HUB`) on it, CLIENTS WebSocket clients spread over both hubs (each subscribed to everything,
// resuming with `since` = the last id received, as docs/protocol.md says, if it loses its hub), and a careful
// publisher: PUBLISHERS (2) connections with publisher confirms and no `mandatory`, RATE events/s in all over
// SECONDS, each event with a unique `event_id` (UUID), its `publisher` and that publisher's `seq`; what was not
// confirmed (nacked, or its channel or connection died first) is sent again with the same event_id, once the
// broker is back. During the run the node is restarted twice: `stop_app`, DOWN_MS (4000) down, `start_app`; then
// a whole `stop` and `start` of the node (same data, same ports). At the end (every event confirmed, then every
// client holding all of them or QUIET_MS (10000) without anything new) it prints a JSON report and a line per
// client: received, lost (confirmed, never received), duplicated (the same publisher+seq twice), out of order (per
// publisher, a seq below one already received after dropping duplicates), `hub.history_gap` notices; and per hub,
// its counters from /metrics and its warning/error log lines. Exits 1 if anything was lost, duplicated or out of
// order. Hubs and node are removed at the end (also on Ctrl-C).
// Other knobs: FIRST_AT / SECOND_AT (fraction of SECONDS at which each restart starts, 0.2 and 0.55),
// HUB_ENV (JSON object of extra hub environment variables), JSON_OUT (a file for the JSON report).
import amqp from "amqplib"
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { resolve } from "node:path"
import WebSocket from "ws"
import { importTs } from "./lib/importTs.mjs"

const { RabbitNode } = await importTs("test/support/rabbitNode.ts")

const env = process.env
const hubPath = resolve(env.HUB ?? "./dist/main.js")
const rate = Number(env.RATE ?? 1000)
const seconds = Number(env.SECONDS ?? 30)
const clientCount = Number(env.CLIENTS ?? 10)
const publisherCount = Number(env.PUBLISHERS ?? 2)
const downMs = Number(env.DOWN_MS ?? 4000)
const quietMs = Number(env.QUIET_MS ?? 10_000)
const firstAt = Number(env.FIRST_AT ?? 0.2)
const secondAt = Number(env.SECOND_AT ?? 0.55)
const hubEnv = env.HUB_ENV ? JSON.parse(env.HUB_ENV) : {}
const sleep = (ms) => new Promise((done) => setTimeout(done, ms))
const started = Date.now()
const elapsed = () => ((Date.now() - started) / 1000).toFixed(1)
const note = (text) => console.error(`[${elapsed()}s] ${text}`)

const freePort = () =>
  new Promise((done, fail) => {
    const server = createServer()
    server.once("error", fail)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address()
      server.close(() => done(port))
    })
  })

// ---------------------------------------------------------------------------
// Broker, hubs
// ---------------------------------------------------------------------------

const id = `lossbr_${process.pid}_${Math.random().toString(36).slice(2, 6)}`
const names = { exchange: `${id}.events`, stream: `${id}.stream` }
let node
const hubs = []

const cleanup = async () => {
  for (const hub of hubs) hub.child.kill("SIGKILL")
  await node?.destroy().catch(() => undefined)
}
process.once("SIGINT", () => cleanup().finally(() => process.exit(130)))

class Hub {
  constructor(index, port) {
    this.index = index
    this.port = port
    this.instance = `${id}-hub${index}`
    this.logs = []
    this.child = spawn(process.execPath, [hubPath], {
      env: {
        ...env,
        PORT: String(port),
        HOST: "127.0.0.1",
        RABBITMQ_URL: node.url,
        RABBITMQ_EXCHANGE: names.exchange,
        RABBITMQ_STREAM: names.stream,
        HUB_INSTANCE_ID: this.instance,
        LOG_LEVEL: "warn",
        LOG_FORMAT: "json",
        RABBITMQ_RECONNECT_DELAY: "100ms",
        RABBITMQ_MAX_RECONNECT_WAIT: "1s",
        ...hubEnv
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let buffered = ""
    const take = (chunk) => {
      buffered += chunk
      let end
      while ((end = buffered.indexOf("\n")) !== -1) {
        const line = buffered.slice(0, end)
        buffered = buffered.slice(end + 1)
        if (line.trim()) this.logs.push(line)
      }
    }
    this.child.stdout.on("data", take)
    this.child.stderr.on("data", take)
    this.exited = new Promise((done) => this.child.on("exit", (code, signal) => done({ code, signal })))
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/api/v1/ws/events`
  }

  async get(path) {
    const response = await fetch(`http://127.0.0.1:${this.port}${path}`)
    return response.json()
  }

  async ready(timeoutMs = 60_000) {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      try {
        if ((await this.get("/health")).checks?.rabbitmq?.status === "up") return
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`hub ${this.index} not ready within ${timeoutMs} ms:\n${this.logs.slice(-20).join("\n")}`)
      await sleep(50)
    }
  }

  /** Warning and error log lines, counted by level and message. */
  logSummary() {
    const counts = {}
    for (const line of this.logs) {
      let key = line.slice(0, 160)
      try {
        const entry = JSON.parse(line)
        const error = entry.error ?? entry.annotations?.error
        key = `${entry.logLevel ?? entry.level ?? "?"}: ${entry.message}${error ? ` (${String(error).slice(0, 140)})` : ""}`
      } catch {
        // not JSON
      }
      counts[key] = (counts[key] ?? 0) + 1
    }
    return counts
  }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

class Client {
  constructor(index) {
    this.index = index
    this.hub = index % 2
    this.received = []
    this.gaps = []
    this.connects = 0
    this.lastId = undefined
    this.stopped = false
  }

  connect() {
    const hub = hubs[this.hub]
    const ws = new WebSocket(hub.wsUrl)
    this.ws = ws
    let subscribed = false
    ws.on("open", () => {
      this.connects++
      ws.send(JSON.stringify({ action: "subscribe", event_types: ["#"], ...(this.lastId ? { since: this.lastId } : {}) }))
    })
    ws.on("message", (raw) => {
      const message = JSON.parse(String(raw))
      if (message.type === "hub.subscribed") subscribed = true
      else if (message.type === "hub.history_gap") this.gaps.push(message.data)
      else if (!message.type.startsWith("hub.") && subscribed) {
        this.lastId = message.id
        this.received.push({ publisher: message.data.publisher, seq: message.data.seq, eventId: message.data.event_id })
        lastArrival = Date.now()
      }
    })
    ws.on("error", () => undefined)
    ws.on("close", () => {
      if (this.stopped) return
      // Its hub is gone: the same one again shortly (it may be restarting), else the other one.
      if (this.connects > 0 && this.ws === ws) this.hub = (this.hub + 1) % 2
      setTimeout(() => this.connect(), 200)
    })
    return new Promise((done) => ws.once("open", done))
  }

  close() {
    this.stopped = true
    this.ws?.terminate()
  }
}

let lastArrival = Date.now()

// ---------------------------------------------------------------------------
// A careful publisher: confirms, no mandatory, resends what was not confirmed, with the same event_id
// ---------------------------------------------------------------------------

class Publisher {
  constructor(name) {
    this.name = name
    this.seq = 0
    /** seq -> event, not confirmed yet (sent or waiting to be sent). */
    this.pending = new Map()
    /** seqs to (re)send, in order. */
    this.outbox = []
    this.confirmed = new Set()
    /** seq -> when it was created and confirmed, in ms since publishing started. */
    this.createdAt = []
    this.confirmedAt = []
    this.nacked = 0
    this.resent = 0
    this.channelLosses = 0
    this.channel = undefined
    this.connecting = false
  }

  /** A new event, sent now if connected, else when the broker is back. */
  create() {
    const seq = this.seq++
    const event = { event_id: randomUUID(), publisher: this.name, seq, created_at: new Date().toISOString() }
    this.createdAt[seq] = Date.now() - publishStart
    this.pending.set(seq, { event, sends: 0 })
    this.outbox.push(seq)
    this.flush()
  }

  flush() {
    const channel = this.channel
    if (stopping) return
    if (!channel) return void this.ensureConnected()
    while (this.outbox.length > 0 && this.channel === channel) {
      const seq = this.outbox.shift()
      const entry = this.pending.get(seq)
      if (!entry || entry.inFlight) continue
      entry.inFlight = true
      if (entry.sends++ > 0) this.resent++
      try {
        channel.publish(names.exchange, "loss.tick", Buffer.from(JSON.stringify(entry.event)), {
          persistent: true,
          contentType: "application/json",
          messageId: entry.event.event_id
        }, (error) => {
          entry.inFlight = false
          if (error) {
            // Nacked, or the channel closed before the confirm: send it again (with the same event_id).
            if (error.message === "message nacked") this.nacked++
            this.outbox.push(seq)
            if (this.channel) queueMicrotask(() => this.flush())
          } else {
            this.pending.delete(seq)
            this.confirmed.add(seq)
            this.confirmedAt[seq] = Date.now() - publishStart
          }
        })
      } catch {
        // The channel is closed: its close handler reconnects.
        entry.inFlight = false
        this.outbox.unshift(seq)
        break
      }
    }
  }

  async ensureConnected() {
    if (this.connecting || this.channel) return
    this.connecting = true
    while (!stopping) {
      try {
        const connection = await amqp.connect(node.url, { noDelay: true, clientProperties: { connection_name: `loss publisher ${this.name}` } })
        connection.on("error", () => undefined)
        const channel = await connection.createConfirmChannel()
        channel.on("error", () => undefined)
        const lost = () => {
          if (this.channel !== channel) return
          this.channel = undefined
          this.channelLosses++
          connection.close().catch(() => undefined)
          // The confirm callbacks of what was in flight have run (error): it is in the outbox again, in seq order.
          setTimeout(() => {
            this.outbox.sort((a, b) => a - b)
            this.ensureConnected()
          }, 100)
        }
        channel.on("close", lost)
        connection.on("close", lost)
        this.channel = channel
        this.connection = connection
        break
      } catch {
        await sleep(200)
      }
    }
    this.connecting = false
    this.outbox.sort((a, b) => a - b)
    if (this.channel) this.flush()
  }

  async close() {
    await this.connection?.close().catch(() => undefined)
  }
}

let stopping = false
let publishStart = Date.now()

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

const report = { hub: hubPath, rate, seconds, clients: clientCount, publishers: publisherCount, restarts: [] }
const clients = []
const publishers = []
let exitCode = 1
try {
  note(`starting a RabbitMQ node of our own`)
  node = await RabbitNode.start()
  report.node = { name: node.name, url: node.url, startMs: node.timings[0]?.ms }
  note(`node ${node.name} on ${node.url} (${node.timings[0]?.ms} ms); starting 2 hubs (${hubPath})`)
  for (let index = 0; index < 2; index++) hubs.push(new Hub(index, await freePort()))
  await Promise.all(hubs.map((hub) => hub.ready()))
  note(`hubs ready on ports ${hubs.map((hub) => hub.port).join(", ")}; ${clientCount} clients`)
  for (let index = 0; index < clientCount; index++) clients.push(new Client(index))
  await Promise.all(clients.map((client) => client.connect()))
  for (let index = 0; index < publisherCount; index++) publishers.push(new Publisher(`p${index}`))
  await Promise.all(publishers.map((publisher) => publisher.ensureConnected()))

  // Events at `rate` per second in all, spread over the publishers, created on schedule whether or not the
  // broker is up (what cannot be sent waits in the publisher's outbox).
  publishStart = Date.now()
  let created = 0
  const total = Math.round(rate * seconds)
  const ticker = setInterval(() => {
    const due = Math.min(total, Math.floor(((Date.now() - publishStart) / 1000) * rate))
    for (; created < due; created++) publishers[created % publisherCount].create()
    if (created >= total) clearInterval(ticker)
  }, 5)

  const restarts = (async () => {
    await sleep(seconds * 1000 * firstAt)
    let t = Date.now()
    note("stop_app")
    await node.stopApp()
    const stopped = Date.now()
    await sleep(downMs)
    note("start_app")
    await node.startApp()
    report.restarts.push({ kind: "stop_app/start_app", at: (t - publishStart) / 1000, back: (Date.now() - publishStart) / 1000, stopAppMs: stopped - t, downMs: Date.now() - stopped, totalMs: Date.now() - t })
    note(`broker back after stop_app/start_app (${Date.now() - t} ms)`)
    const wait = publishStart + seconds * 1000 * secondAt - Date.now()
    if (wait > 0) await sleep(wait)
    t = Date.now()
    note("stop (whole node)")
    await node.stop()
    const down = Date.now()
    note("start (whole node)")
    await node.start()
    report.restarts.push({ kind: "stop/start", at: (t - publishStart) / 1000, back: (Date.now() - publishStart) / 1000, stopMs: down - t, startMs: Date.now() - down, totalMs: Date.now() - t })
    note(`broker back after stop/start (${Date.now() - t} ms)`)
  })()

  await restarts
  while (created < total) await sleep(50)
  note(`all ${total} events created; waiting for every confirm`)
  const confirmDeadline = Date.now() + 120_000
  while (publishers.some((p) => p.pending.size > 0) && Date.now() < confirmDeadline) await sleep(50)
  note("confirmed; waiting until every client has every confirmed event, or nothing arrives for " + quietMs + " ms")
  const confirmedCount = () => publishers.reduce((n, p) => n + p.confirmed.size, 0)
  lastArrival = Date.now()
  while (Date.now() - lastArrival < quietMs) {
    if (clients.every((client) => new Set(client.received.map((e) => `${e.publisher}:${e.seq}`)).size >= confirmedCount())) break
    await sleep(100)
  }

  // Counting
  const confirmed = new Map(publishers.map((p) => [p.name, p.confirmed]))
  report.published = total
  report.confirmed = confirmedCount()
  report.unconfirmed = publishers.reduce((n, p) => n + p.pending.size, 0)
  report.publisher = publishers.map((p) => ({ name: p.name, created: p.seq, confirmed: p.confirmed.size, nacked: p.nacked, resent: p.resent, channelLosses: p.channelLosses }))
  report.perClient = clients.map((client) => {
    const seen = new Map(publishers.map((p) => [p.name, new Set()]))
    const highest = new Map()
    let duplicated = 0
    let outOfOrder = 0
    for (const event of client.received) {
      const set = seen.get(event.publisher)
      if (!set) continue
      if (set.has(event.seq)) {
        duplicated++
        continue
      }
      set.add(event.seq)
      if (event.seq < (highest.get(event.publisher) ?? -1)) outOfOrder++
      highest.set(event.publisher, Math.max(event.seq, highest.get(event.publisher) ?? -1))
    }
    let lost = 0
    const lostSeqs = {}
    for (const [name, seqs] of confirmed) {
      const missing = [...seqs].filter((seq) => !seen.get(name).has(seq)).sort((a, b) => a - b)
      lost += missing.length
      if (missing.length > 0) lostSeqs[name] = ranges(missing)
    }
    return {
      client: client.index,
      hub: client.hub,
      received: client.received.length,
      lost,
      duplicated,
      outOfOrder,
      historyGaps: client.gaps.length,
      connects: client.connects,
      lostSeqs
    }
  })
  // The events some client lost, as ranges per publisher, with when they were created and confirmed (seconds
  // since publishing started; compare with the restarts' `at`).
  report.lostEvents = []
  for (const publisher of publishers) {
    const lostSomewhere = new Set()
    for (const client of clients) {
      const got = new Set(client.received.filter((e) => e.publisher === publisher.name).map((e) => e.seq))
      for (const seq of publisher.confirmed) if (!got.has(seq)) lostSomewhere.add(seq)
    }
    const sorted = [...lostSomewhere].sort((a, b) => a - b)
    for (let i = 0; i < sorted.length;) {
      let j = i
      while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++
      const seqs = sorted.slice(i, j + 1)
      const at = (list) => seqs.map((seq) => list[seq] / 1000)
      report.lostEvents.push({
        publisher: publisher.name,
        seqs: i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`,
        count: seqs.length,
        created: [Math.min(...at(publisher.createdAt)), Math.max(...at(publisher.createdAt))],
        confirmed: [Math.min(...at(publisher.confirmedAt)), Math.max(...at(publisher.confirmedAt))]
      })
      i = j + 1
    }
  }
  report.hubs = []
  for (const hub of hubs) {
    let metrics
    try {
      const m = await hub.get("/metrics")
      metrics = { events_broadcast: m.websocket?.events_broadcast, events_deduplicated: m.websocket?.events_deduplicated, rabbitmq: m.rabbitmq }
    } catch (error) {
      metrics = { error: String(error) }
    }
    report.hubs.push({ hub: hub.index, instance: hub.instance, metrics, logs: hub.logSummary() })
  }
  report.timings = node.timings
  const worst = (key) => Math.max(...report.perClient.map((c) => c[key]))
  const sum = (key) => report.perClient.reduce((n, c) => n + c[key], 0)
  report.totals = { lost: sum("lost"), duplicated: sum("duplicated"), outOfOrder: sum("outOfOrder"), historyGaps: sum("historyGaps"), maxLostPerClient: worst("lost") }
  console.log(JSON.stringify(report, null, 2))
  if (env.JSON_OUT) writeFileSync(env.JSON_OUT, JSON.stringify(report, null, 2))
  for (const c of report.perClient) {
    console.log(`client ${c.client} (hub ${c.hub}): received ${c.received}, lost ${c.lost}, duplicated ${c.duplicated}, out of order ${c.outOfOrder}, history_gap ${c.historyGaps}`)
  }
  for (const l of report.lostEvents) {
    console.log(`lost ${l.publisher} ${l.seqs} (${l.count}): created at ${l.created.join("-")} s, confirmed at ${l.confirmed.join("-")} s`)
  }
  for (const h of report.hubs) {
    console.log(`hub ${h.hub}: broadcast ${h.metrics.events_broadcast}, deduplicated ${h.metrics.events_deduplicated}, rabbitmq ${JSON.stringify(h.metrics.rabbitmq ?? {})}; log lines ${JSON.stringify(h.logs)}`)
  }
  console.log(`RATE=${rate} SECONDS=${seconds} CLIENTS=${clientCount}: published ${report.published}, confirmed ${report.confirmed} (resent ${report.publisher.reduce((n, p) => n + p.resent, 0)}, nacked ${report.publisher.reduce((n, p) => n + p.nacked, 0)}); ` +
    `lost ${report.totals.lost} in all (at most ${report.totals.maxLostPerClient} per client), duplicated ${report.totals.duplicated}, out of order ${report.totals.outOfOrder}, history_gap ${report.totals.historyGaps}; ` +
    `restarts: ${report.restarts.map((r) => `${r.kind} at ${r.at} s, back at ${r.back} s`).join("; ")}`)
  exitCode = report.totals.lost + report.totals.duplicated + report.totals.outOfOrder + report.unconfirmed > 0 ? 1 : 0
} catch (error) {
  console.error(error)
  exitCode = 2
} finally {
  stopping = true
  for (const client of clients) client.close()
  await Promise.all(publishers.map((p) => p.close()))
  for (const hub of hubs) hub.child.kill("SIGTERM")
  await Promise.race([Promise.all(hubs.map((hub) => hub.exited)), sleep(5000)])
  await cleanup()
}
process.exit(exitCode)

/** [1,2,3,7,9,10] -> "1-3,7,9-10" */
function ranges(sorted) {
  const parts = []
  for (let i = 0; i < sorted.length;) {
    let j = i
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`)
    i = j + 1
  }
  return parts.join(",")
}
