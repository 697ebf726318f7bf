// The design card's "each client is a supervised fiber with a bounded buffer (Effect Queue)" against the hub's
// outbox path, on Effect 4, side by side in one run: server CPU per delivery in a fan-out, and memory per idle
// connection. Every server runs in its own process, fresh for each measurement; the clients are bench/loadgen.mjs
// processes; server CPU is read from /proc/<pid>/task/*/schedstat (bench/proc.mjs), as bench/run.mjs does.
//
//   npm run build
//   node_modules/.bin/node bench/tools/fiber-per-client.mjs                  (about 4-5 minutes)
//   node_modules/.bin/node bench/tools/fiber-per-client.mjs --clients 500 --events 300 --idle-clients 2000 --repeats 1
//
// Flags: --clients 1000 --events 1000 --size 450 --burst 50 (events per POST) --idle-clients 10000 --repeats 3
//        --capacity 256 (each client's buffer; the hub's WS_SEND_BUFFER) --scenarios fanout,idle
//        --shapes hub,outbox,fiber,fiber-shared (fan-out) --idle-shapes bare,hub,outbox,fiber,fiber-shared,fiber-scoped
//        --profile [dir] (CPU profile of each minimal server's measured fan-out window, summarised at the end;
//        the figures of a profiled run are inflated by the profiler)
//
// Shapes:
//   hub           dist/main.js as it is (RabbitMQ off), started as bench/run.mjs starts it.
//   outbox        a minimal ws server whose clients each have the hub's own Outbox (dist/hub/Outbox.js), all written
//                 by one Flusher (dist/hub/Flusher.js) through the hub's WebSocket transport (pre-built frames,
//                 corked batches): the hub's delivery path without the rest of the hub.
//   fiber         the same server; each client has a Queue.bounded(capacity) and its own fiber, forked into one
//                 FiberSet, looping Queue.takeAll -> one write of the whole batch through the same transport (one
//                 corked write), waiting for 'drain' when the socket refuses more. The fan-out offers with
//                 Queue.offerUnsafe (synchronously, as the hub's fan-out offers to outboxes); a full queue drops the
//                 client. A closed socket shuts its queue down, which ends the fiber.
//   fiber-shared  as fiber, tuned: Effect 4 gives each fiber its own dispatcher and a Queue wakes its taker through
//                 the dispatcher of the fiber that made it, so a burst costs one setImmediate per client; here a
//                 Scheduler whose makeDispatcher returns one shared dispatcher (provided to the FiberSet's fibers)
//                 wakes every client in one setImmediate, and a connection holds no dispatcher of its own.
//   fiber-scoped  as fiber, plus the card's scope-managed socket: Effect.scoped, the client's registration and socket
//                 as an acquireRelease (release: unregister, close the socket), a finalizer shutting the queue down.
//                 (Idle memory by default; its CPU per delivery measured as fiber's, within the noise.)
//   fiber-take    (not run by default) as fiber with one Queue.take and one write per message: the naive loop.
//   bare          (idle memory only) the same server with nothing per client beyond ws: the reference.
// The minimal servers share everything but the per-client part: the HTTP publish endpoint, the ws server, the
// messages (the hub's Outbound, framed once and shared by every client), the tracer off (as the hub without OTLP).
import { fork, spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { loadavg, tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath, pathToFileURL } from "node:url"
import { cpuMicros, rssBytes } from "../proc.mjs"

const self = fileURLToPath(import.meta.url)
const root = join(dirname(self), "..", "..")

const argv = process.argv.slice(2)
const flag = (name, fallback) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 && argv[i + 1] !== undefined && !argv[i + 1].startsWith("--") ? argv[i + 1] : fallback
}

// ===========================================================================================================
// The minimal servers (`--serve <shape>`, started by the run below)
// ===========================================================================================================

const serve = async (shape) => {
  const { createServer } = await import("node:http")
  const { WebSocketServer, WebSocket } = await import("ws")
  const dist = (path) => import(pathToFileURL(join(root, "dist", path)).href)
  const { Outbound } = await dist("protocol/Protocol.js")
  const Transport = await dist("connection/WebSocketTransport.js")
  const { Outbox } = await dist("hub/Outbox.js")
  const { Flusher } = await dist("hub/Flusher.js")
  const { Duration, Effect, FiberSet, Queue, References, Scheduler } = await import("effect")

  const port = Number(process.env.PORT)
  const capacity = Number(process.env.CAPACITY ?? 256)
  const settings = { encodeFrame: Transport.frameEncoder(), closeHandshake: Duration.seconds(5) }
  if (settings.encodeFrame === undefined) throw new Error("ws's frame encoder is missing: the hub would use ws.send")
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 64 * 1024, clientTracking: true })
  const ignore = () => undefined
  const clients = new Set()
  let delivered = 0
  /** Writes to sockets (one per batch): delivered / writes is the mean batch. */
  let writes = 0
  let kicked = 0
  const kick = (client) => {
    if (client.kicked) return
    client.kicked = true
    kicked++
    client.ws.terminate()
  }

  /** Attaches a client's per-connection part (called in ws's upgrade callback). */
  let attach
  /** Offers a message to every client (synchronous, in the publish request's callback). */
  let broadcast

  if (shape === "bare") {
    attach = ignore
    broadcast = ignore
  } else if (shape === "outbox") {
    const flusher = new Flusher()
    const onWritten = (count) => {
      delivered += count
      writes++
    }
    attach = (ws, socket) => {
      const client = { ws, outbox: undefined, kicked: false }
      client.outbox = new Outbox(flusher, Transport.make(ws, socket, settings), capacity, onWritten, {
        writeFailed: () => ws.terminate()
      })
      clients.add(client)
      ws.once("close", () => clients.delete(client))
    }
    broadcast = (message) => {
      const arrival = performance.now()
      for (const client of clients) if (!client.outbox.offer(message)) kick(client)
      flusher.arrived(arrival)
    }
  } else if (shape === "fiber" || shape === "fiber-shared" || shape === "fiber-scoped" || shape === "fiber-take") {
    /** One dispatcher for every fiber (fiber-shared): one setImmediate wakes all the clients a burst reached. */
    class SharedDispatcher extends Scheduler.MixedScheduler {
      #dispatcher
      makeDispatcher() {
        return this.#dispatcher ??= super.makeDispatcher()
      }
    }
    const scheduler = shape === "fiber-shared"
      ? Effect.provideService(Scheduler.Scheduler, new SharedDispatcher())
      : (effect) => effect
    // The FiberSet every client's fiber is forked into, with the tracer off (as the hub's service.ts without OTLP).
    const run = await new Promise((resolve) => {
      Effect.runFork(
        Effect.scoped(Effect.gen(function*() {
          const fibers = yield* FiberSet.make()
          resolve(yield* FiberSet.runtime(fibers)())
          return yield* Effect.never
        })).pipe(Effect.provideService(References.TracerEnabled, false), scheduler)
      )
    })
    const drained = (transport) => Effect.callback((resume) => transport.onDrain(() => resume(Effect.void)))
    // One turn of a client's loop: everything queued, written in one batch (one corked write), then wait for room
    // if the socket refused more. Built once per client; Effect.forever without its yield (the take waits anyway).
    const writeBatch = (queue, transport) =>
      Effect.flatMap(Queue.takeAll(queue), (batch) => {
        delivered += batch.length
        writes++
        const accepted = batch.length === 1 ? transport.write(batch[0]) : transport.writeMany(batch)
        return accepted ? Effect.void : drained(transport)
      })
    const writeOne = (queue, transport) =>
      Effect.flatMap(Queue.take(queue), (message) => {
        delivered++
        writes++
        return transport.write(message) ? Effect.void : drained(transport)
      })
    const step = shape === "fiber-take" ? writeOne : writeBatch

    // Built with flatMap, not Effect.gen: nothing of the setup stays on a waiting fiber's stack (a suspended
    // generator and its frames: about 0.7 KB of heap per connection in a heap-snapshot diff), only the loop.
    const plain = (ws, socket) =>
      Effect.flatMap(Queue.bounded(capacity), (queue) => {
        const transport = Transport.make(ws, socket, settings)
        const client = { ws, queue, kicked: false }
        clients.add(client)
        ws.once("close", () => {
          clients.delete(client)
          Queue.shutdownUnsafe(queue)
        })
        return Effect.forever(step(queue, transport), { disableYield: true })
      })

    const scoped = (ws, socket) =>
      Effect.scoped(Effect.flatMap(Queue.bounded(capacity), (queue) =>
        Effect.andThen(
          Effect.addFinalizer(() => Queue.shutdown(queue)),
          Effect.flatMap(
            Effect.acquireRelease(
              Effect.sync(() => {
                const client = { ws, queue, kicked: false }
                clients.add(client)
                ws.once("close", () => Queue.shutdownUnsafe(queue))
                return { client, transport: Transport.make(ws, socket, settings) }
              }),
              ({ client }) =>
                Effect.sync(() => {
                  clients.delete(client)
                  if (ws.readyState === WebSocket.OPEN) ws.close(1001)
                })
            ),
            ({ transport }) => Effect.forever(step(queue, transport), { disableYield: true })
          )
        )))

    const serveClient = shape === "fiber-scoped" ? scoped : plain
    attach = (ws, socket) => run(serveClient(ws, socket))
    broadcast = (message) => {
      for (const client of clients) if (!Queue.offerUnsafe(client.queue, message)) kick(client)
    }
  } else {
    throw new Error(`unknown shape ${shape}`)
  }

  // CPU profile of a window (`--profile`): started and stopped by the run over HTTP.
  let session
  const profile = async (action, file) => {
    if (action === "start") {
      const { Session } = await import("node:inspector/promises")
      session = new Session()
      session.connect()
      await session.post("Profiler.enable")
      await session.post("Profiler.setSamplingInterval", { interval: 200 })
      await session.post("Profiler.start")
    } else {
      const { profile } = await session.post("Profiler.stop")
      session.disconnect()
      writeFileSync(file, JSON.stringify(profile))
    }
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url, "http://x")
    if (req.method === "POST" && url.pathname === "/api/v1/events") {
      const chunks = []
      req.on("data", (chunk) => chunks.push(chunk))
      req.on("end", () => {
        const body = JSON.parse(Buffer.concat(chunks).toString())
        for (const { type, data } of Array.isArray(body) ? body : [body]) {
          broadcast(Outbound.message(type, data, new Date(), data?.event_id))
        }
        res.writeHead(202, { "content-type": "application/json" }).end("{\"status\":\"accepted\"}")
      })
    } else if (url.pathname === "/metrics") {
      const memory = process.memoryUsage()
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({
        shape,
        clients: shape === "bare" ? wss.clients.size : clients.size,
        delivered,
        writes,
        kicked,
        process: { rss_bytes: memory.rss, heap_used_bytes: memory.heapUsed }
      }))
    } else if (url.pathname === "/profile") {
      profile(url.searchParams.get("action"), url.searchParams.get("file")).then(
        () => res.writeHead(200).end("ok"),
        (error) => res.writeHead(500).end(String(error))
      )
    } else {
      res.writeHead(404).end()
    }
  })
  server.on("upgrade", (req, socket, head) => {
    socket.on("error", ignore)
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on("error", ignore)
      ws.on("message", ignore)
      attach(ws, socket)
    })
  })
  server.listen(port, "127.0.0.1")
  process.on("SIGTERM", () => process.exit(0))
}

// ===========================================================================================================
// The run
// ===========================================================================================================

const options = {
  clients: Number(flag("clients", 1000)),
  events: Number(flag("events", 1000)),
  size: Number(flag("size", 450)),
  burst: Number(flag("burst", 50)),
  idleClients: Number(flag("idle-clients", 10000)),
  repeats: Number(flag("repeats", 3)),
  capacity: Number(flag("capacity", 256)),
  scenarios: flag("scenarios", "fanout,idle").split(","),
  shapes: flag("shapes", "hub,outbox,fiber,fiber-shared").split(","),
  idleShapes: flag("idle-shapes", "bare,hub,outbox,fiber,fiber-shared,fiber-scoped").split(","),
  profile: argv.includes("--profile") ? flag("profile", join(tmpdir(), `fiber-per-client-${process.pid}`)) : undefined
}

const seedTypes = [
  "optimization.iteration.started", "optimization.iteration.completed", "optimization.new_best",
  "optimization.completed", "optimization.failed", "backtest.submitted", "backtest.completed", "backtest.failed",
  "task.running", "task.failed", "task.cancelled", "strategy.discovered", "strategy.needs_processing",
  "strategy.ready_for_backtest", "strategy.approved", "strategy.evolve", "strategy.archived", "agent.status.changed"
]

const load = () => loadavg().map((n) => n.toFixed(2)).join(" ")
const progress = (text) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} [load ${load()}] ${text}\n`)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

let nextPort = 20000 + Math.floor(Math.random() * 10000)

const startServer = async (shape, attempt = 1) => {
  const port = nextPort++
  const env = { ...process.env, PORT: String(port), HOST: "127.0.0.1" }
  const child = shape === "hub"
    ? spawn(process.execPath, [join(root, "dist", "main.js")], {
      env: {
        ...env, PUBLISH_TOKEN: "bench", RABBITMQ_URL: "", LOG_LEVEL: "warn", WS_SEND_BUFFER: String(options.capacity),
        WS_MAX_CONNECTIONS: "1000000", WS_MAX_CONNECTIONS_PER_IP: "1000000", PUBLISH_RATE_LIMIT: "1000000",
        PUBLISH_RATE_BURST: "1000000", WS_CONNECTION_RATE_LIMIT: "1000000", WS_CONNECTION_RATE_BURST: "1000000"
      },
      stdio: ["ignore", "inherit", "inherit"]
    })
    : fork(self, ["--serve", shape], { env: { ...env, CAPACITY: String(options.capacity) }, stdio: ["ignore", "inherit", "inherit", "ipc"] })
  let exited = false
  child.once("exit", () => {
    exited = true
  })
  const base = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 30_000
  for (;;) {
    if (exited) {
      if (attempt < 3) return startServer(shape, attempt + 1)
      throw new Error(`${shape} exited before listening`)
    }
    try {
      if ((await fetch(`${base}/metrics`)).ok) break
    } catch {
      // not yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL")
      throw new Error(`timed out waiting for ${shape}`)
    }
    await sleep(50)
  }
  return {
    shape,
    pid: child.pid,
    base,
    url: `ws://127.0.0.1:${port}/api/v1/ws/events`,
    metrics: async () => (await fetch(`${base}/metrics`)).json(),
    stop: () =>
      new Promise((resolve) => {
        if (exited) return resolve()
        child.once("exit", resolve)
        child.kill("SIGTERM")
        // The hub shuts down gracefully; never wait long.
        setTimeout(() => child.kill("SIGKILL"), 5000).unref()
      })
  }
}

const startLoadgen = async () => (await import(pathToFileURL(join(root, "bench", "worker.mjs")).href)).startWorker(join(root, "bench", "loadgen.mjs"))

/** The seed's backtest.completed example, padded so that the whole message is about `size` bytes (as bench/run.mjs). */
const eventData = (size) => {
  const data = {
    event_id: randomUUID(), event_type: "task.completed", timestamp: "2025-12-15T10:30:00Z",
    job_id: "123e4567-e89b-12d3-a456-426614174000", strategy_id: "987e6543-e21b-43d2-b987-123456789abc",
    result_id: "456e7890-e12b-34d5-c678-234567890def", duration_ms: 45000, sharpe_ratio: 1.85, profit_pct: 15.5,
    total_trades: 142
  }
  const envelope = JSON.stringify({ type: "backtest.completed", data, timestamp: new Date().toISOString() })
  if (envelope.length < size) data.pad = "x".repeat(size - envelope.length - 9)
  return data
}

/** POSTs `count` events, `burst` per request, each request after the previous one's answer (as bench/run.mjs). */
const publish = async (server, count) => {
  const data = eventData(options.size)
  for (let sent = 0; sent < count;) {
    const burst = []
    for (let i = 0; i < options.burst && sent < count; i++, sent++) {
      burst.push({ type: "backtest.completed", data: { ...data, event_id: randomUUID() } })
    }
    const response = await fetch(`${server.base}/api/v1/events`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer bench" },
      body: JSON.stringify(burst)
    })
    await response.arrayBuffer()
  }
}

const kickedOf = async (server) => {
  const metrics = await server.metrics()
  if (server.shape !== "hub") return metrics.kicked
  const disconnected = metrics.websocket?.clients_disconnected ?? {}
  return (disconnected.slow_consumer ?? 0) + (disconnected.write_timeout ?? 0)
}

/** One fan-out run in fresh processes: server CPU per delivery of `events` events to `clients` clients. */
const fanoutOnce = async (shape, round) => {
  const [server, loadgen] = await Promise.all([startServer(shape), startLoadgen()])
  try {
    await loadgen.call("connect", { url: server.url, count: options.clients, types: seedTypes, perClient: 0, hub: shape === "hub" })
    // Warm-up (JIT), then the measured window.
    await publish(server, 100)
    await loadgen.call("expect", { total: 100 * options.clients, timeoutMs: 60_000 })
    await loadgen.call("reset")
    const profiling = options.profile !== undefined && shape !== "hub"
    const profileFile = join(options.profile ?? "", `${shape}.${round}.cpuprofile`)
    if (profiling) await fetch(`${server.base}/profile?action=start`)
    const load1 = loadavg()[0]
    const writes0 = shape === "hub" ? undefined : (await server.metrics()).writes
    const total = options.events * options.clients
    const cpu0 = cpuMicros(server.pid)
    const t0 = performance.now()
    await publish(server, options.events)
    const got = await loadgen.call("expect", { total, timeoutMs: 120_000 })
    const seconds = (performance.now() - t0) / 1000
    const cpu = cpuMicros(server.pid) - cpu0
    if (profiling) await fetch(`${server.base}/profile?action=stop&file=${encodeURIComponent(profileFile)}`)
    const writes = shape === "hub" ? undefined : (await server.metrics()).writes - writes0
    return {
      batch: writes === undefined ? undefined : got.received / writes,
      shape,
      us: cpu / got.received,
      deliveries: got.received,
      complete: got.received >= total,
      kicked: await kickedOf(server),
      perSecond: got.received / seconds,
      load: load1,
      profile: profiling ? profileFile : undefined
    }
  } finally {
    await loadgen.stop()
    await server.stop()
  }
}

/** One idle run in fresh processes: RSS and heap growth per connection once `idleClients` are connected. */
const idleOnce = async (shape) => {
  const [server, loadgen] = await Promise.all([startServer(shape), startLoadgen()])
  try {
    await sleep(500)
    const rss0 = rssBytes(server.pid)
    const heap0 = (await server.metrics()).process.heap_used_bytes
    const load1 = loadavg()[0]
    const { connected } = await loadgen.call("connect", { url: server.url, count: options.idleClients, types: seedTypes, perClient: 0, hub: shape === "hub" })
    await sleep(2000)
    const rss1 = rssBytes(server.pid)
    const metrics = await server.metrics()
    const heap1 = metrics.process.heap_used_bytes
    const held = shape === "hub" ? metrics.websocket?.connected_clients : metrics.clients
    return {
      shape,
      connected,
      held,
      rssKb: (rss1 - rss0) / options.idleClients / 1024,
      heapKb: (heap1 - heap0) / options.idleClients / 1024,
      load: load1
    }
  } finally {
    await loadgen.stop()
    await server.stop()
  }
}

const median = (values) => {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b)
  if (sorted.length === 0) return NaN
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}
const fmt = (n, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : "-")
const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? `${(a / b).toFixed(2)}x` : "-")
const range = (values, digits) => (values.length > 1 ? `${fmt(Math.min(...values), digits)}-${fmt(Math.max(...values), digits)}` : "")

const table = (header, rows) => {
  const widths = header.map((_, i) => Math.max(header[i].length, ...rows.map((row) => String(row[i]).length)))
  const line = (row) => row.map((cell, i) => String(cell).padEnd(widths[i])).join(" | ")
  return [line(header), widths.map((w) => "-".repeat(w)).join("-|-"), ...rows.map(line)].join("\n")
}

/** Self time of a .cpuprofile by function and by area, without idle time. */
const summariseProfile = (file, rows = 14) => {
  const profile = JSON.parse(readFileSync(file, "utf8"))
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]))
  const self = new Map()
  profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)))
  const area = (url, name) => {
    if (!url) return name.startsWith("(") ? name : "(native)"
    if (url.includes("node_modules/effect/")) return "effect"
    if (url.includes("node_modules/ws/")) return "ws"
    if (url.includes("/dist/")) return `hub dist/${url.split("/dist/")[1].split("/")[0]}`
    if (url.startsWith("node:")) return `node:${url.slice(5).split("/")[1] ?? url.slice(5)}`
    if (url.includes("fiber-per-client")) return "this tool's server"
    return url.split("/").slice(-2).join("/")
  }
  const byFunction = new Map()
  const byArea = new Map()
  let total = 0
  for (const [id, micros] of self) {
    const { functionName, url, lineNumber } = nodes.get(id).callFrame
    if (functionName === "(idle)") continue
    const short = url.replace(/.*node_modules\//, "").replace(/^file:\/\/.*?\/(dist|bench)\//, "$1/")
    const fn = `${functionName || "(anonymous)"} ${short}:${lineNumber + 1}`
    byFunction.set(fn, (byFunction.get(fn) ?? 0) + micros)
    const a = area(url, functionName)
    byArea.set(a, (byArea.get(a) ?? 0) + micros)
    total += micros
  }
  const top = (map, count) =>
    [...map].sort((a, b) => b[1] - a[1]).slice(0, count)
      .map(([name, micros]) => `  ${(micros / 1000).toFixed(1).padStart(8)} ms ${((100 * micros) / total).toFixed(1).padStart(5)}%  ${name}`)
      .join("\n")
  return `busy ${(total / 1000).toFixed(0)} ms\n by area:\n${top(byArea, 10)}\n by function:\n${top(byFunction, rows)}`
}

const main = async () => {
  if (!existsSync(join(root, "dist", "main.js"))) throw new Error("dist/ is missing: run npm run build first")
  if (options.profile !== undefined) mkdirSync(options.profile, { recursive: true })
  const started = performance.now()
  const loadStart = load()
  progress(`fiber-per-client on node ${process.version}, effect ${JSON.parse(readFileSync(join(root, "node_modules", "effect", "package.json"), "utf8")).version}`)
  const fanout = []
  const idle = []
  // Fresh processes for every figure; the shapes' order rotates each round so that none always runs first or last.
  const rotate = (list, by) => list.map((_, i) => list[(i + by) % list.length])
  for (let round = 0; round < options.repeats; round++) {
    if (options.scenarios.includes("fanout")) {
      for (const shape of rotate(options.shapes, round)) {
        progress(`fan-out round ${round + 1}/${options.repeats}: ${shape}, ${options.clients} clients, ${options.events} events of ~${options.size} B`)
        const run = await fanoutOnce(shape, round)
        progress(`  ${shape}: ${fmt(run.us, 3)} us/delivery, ${fmt(run.perSecond / 1e6)} M/s${run.batch === undefined ? "" : `, ${fmt(run.batch, 1)} messages per write`}${run.complete ? "" : ` INCOMPLETE ${run.deliveries}`}${run.kicked ? `, ${run.kicked} kicked` : ""}`)
        fanout.push(run)
      }
    }
    if (options.scenarios.includes("idle")) {
      for (const shape of rotate(options.idleShapes, round)) {
        progress(`idle round ${round + 1}/${options.repeats}: ${shape}, ${options.idleClients} connections`)
        const run = await idleOnce(shape)
        progress(`  ${shape}: ${fmt(run.rssKb)} KB RSS, ${fmt(run.heapKb)} KB heap per connection (${run.held} held)`)
        idle.push(run)
      }
    }
  }

  const shapes = [...new Set([...fanout, ...idle].map((run) => run.shape))]
  const order = ["bare", "hub", "outbox", "fiber", "fiber-shared", "fiber-scoped", "fiber-take"]
  shapes.sort((a, b) => order.indexOf(a) - order.indexOf(b))
  const figures = Object.fromEntries(shapes.map((shape) => {
    const f = fanout.filter((run) => run.shape === shape)
    const m = idle.filter((run) => run.shape === shape)
    return [shape, {
      us: median(f.map((run) => run.us)),
      usRuns: f.map((run) => run.us),
      batch: median(f.map((run) => run.batch)),
      incomplete: f.some((run) => !run.complete),
      kicked: f.reduce((sum, run) => sum + (run.kicked ?? 0), 0),
      rss: median(m.map((run) => run.rssKb)),
      rssRuns: m.map((run) => run.rssKb),
      heap: median(m.map((run) => run.heapKb))
    }]
  }))
  const outbox = figures.outbox ?? {}
  const hub = figures.hub ?? {}
  const bare = figures.bare ?? {}
  const rows = shapes.map((shape) => {
    const f = figures[shape]
    return [
      shape,
      `${fmt(f.us, 3)}${f.incomplete ? " INCOMPLETE" : ""}${f.kicked ? ` (${f.kicked} kicked)` : ""}`,
      range(f.usRuns, 3),
      ratio(f.us, outbox.us),
      ratio(f.us, hub.us),
      fmt(f.batch, 1),
      fmt(f.rss),
      range(f.rssRuns, 2),
      fmt(f.heap),
      ratio(f.rss, outbox.rss),
      ratio(f.rss, hub.rss),
      ratio(f.rss, bare.rss)
    ]
  })
  const header = ["shape", "us/delivery", "runs", "x outbox", "x hub", "msgs/write", "KB RSS/conn", "runs", "KB heap/conn", "x outbox", "x hub", "x bare ws"]
  const loads = [...fanout, ...idle].map((run) => run.load)
  const out = []
  out.push("")
  out.push(`fan-out: ${options.clients} clients, ${options.events} events of ~${options.size} B in POSTs of ${options.burst}; ` +
    `idle: ${options.idleClients} connections; capacity ${options.capacity}; medians of ${options.repeats} fresh-process runs` +
    (options.profile ? " (PROFILED: CPU figures inflated)" : ""))
  out.push(table(header, rows))
  for (const shape of ["fiber", "fiber-shared", "fiber-scoped", "fiber-take"].filter((s) => figures[s] !== undefined)) {
    const f = figures[shape]
    const us = hub.us + (f.us - outbox.us)
    const rss = hub.rss + (f.rss - outbox.rss)
    const parts = [
      ...(Number.isFinite(us) ? [`${fmt(us, 3)} us/delivery (${ratio(us, hub.us)} hub)`] : []),
      ...(Number.isFinite(rss) ? [`${fmt(rss)} KB RSS/conn (${ratio(rss, hub.rss)} hub)`] : [])
    ]
    if (parts.length > 0) out.push(`hub with ${shape} instead of outbox (estimate: hub + (${shape} - outbox)): ${parts.join(", ")}`)
  }
  out.push(`load average (1/5/15 min): start ${loadStart}, end ${load()}; 1-min load when each measurement began: ${fmt(Math.min(...loads))}-${fmt(Math.max(...loads))} (2 cores)`)
  out.push(`${fmt((performance.now() - started) / 1000, 0)} s`)
  process.stdout.write(`${out.join("\n")}\n`)

  if (options.profile !== undefined) {
    for (const shape of options.shapes.filter((s) => s !== "hub")) {
      const run = fanout.filter((r) => r.shape === shape && r.profile).at(-1)
      if (run === undefined) continue
      process.stdout.write(`\n--- profile ${shape} (${run.profile}), measured window, ${fmt(run.deliveries / 1e6)} M deliveries\n${summariseProfile(run.profile)}\n`)
    }
  }
}

if (argv[0] === "--serve") {
  serve(argv[1]).catch((error) => {
    process.stderr.write(`server ${argv[1]} failed: ${error.stack ?? error}\n`)
    process.exit(1)
  })
} else {
  main().catch((error) => {
    process.stderr.write(`fiber-per-client failed: ${error.stack ?? error}\n`)
    process.exit(1)
  })
}
