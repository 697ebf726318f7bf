// Not a scenario: the server processes of one host, shared by scale.mjs and saturation.mjs. The hub with
// HUB_WORKERS=n (a primary and n workers on one port), or n bare `ws` processes (bench/servers/baseline.mjs with
// REUSE_PORT=1) on one port. Both give the same handle: where to connect, where to publish, the processes to
// measure (pids), the host's /metrics figures summed over its processes, and stop().
import { fork } from "node:child_process"
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const here = dirname(fileURLToPath(import.meta.url))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** `pid`'s children, their children... (/proc/<pid>/task/<tid>/children). */
export const descendants = (pid) => {
  const found = []
  const visit = (parent) => {
    if (!existsSync(`/proc/${parent}/task`)) return
    for (const tid of readdirSync(`/proc/${parent}/task`)) {
      let text = ""
      try {
        text = readFileSync(`/proc/${parent}/task/${tid}/children`, "utf8")
      } catch {
        // the thread just exited
      }
      for (const child of text.split(" ").filter((word) => word !== "").map(Number)) {
        found.push(child)
        visit(child)
      }
    }
  }
  visit(pid)
  return found
}

export const rssBytes = (pid) => {
  try {
    return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) * 1024
  } catch {
    return NaN
  }
}

/** Sum of a figure over processes. */
export const sumOver = (pids, of) => pids.reduce((sum, pid) => sum + of(pid), 0)

const getJson = async (url) => {
  const response = await fetch(url)
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`)
  return response.json()
}

/**
 * The hub (`node dist/main.js` via run.mjs's startServer) with HUB_WORKERS=`workers` (and HUB_WORKERS_BALANCE when
 * `balance` is given), once every worker answers in /metrics' `host`. Its processes: the primary and its
 * descendants (the workers).
 *
 * Without a broker (RABBITMQ_URL=""), the worker that takes a POST to /api/v1/events passes its events to the others
 * through the primary (src/http/PublishRoute.ts, HostView.tell). With `broker` (a URL), the hub runs in
 * stream mode on an exchange and stream of its own (deleted after), and POSTed events go through the broker to
 * every worker, as in production; the broker's CPU is then not counted in the server's.
 */
export const startHub = async ({ startServer }, { workers, balance, broker, env = {} }) => {
  const names = `bench_host_${process.pid}_${Date.now()}`
  const brokerEnv = broker === undefined
    ? {}
    : { RABBITMQ_URL: broker, RABBITMQ_MODE: "stream", RABBITMQ_EXCHANGE: `${names}.events`, RABBITMQ_STREAM: `${names}.stream` }
  const cleanUp = async () => {
    if (broker === undefined) return
    const { default: amqp } = await import("amqplib")
    const connection = await amqp.connect(broker)
    const channel = await connection.createChannel()
    // The stream, and the ingest quorum queue the default path feeds it from (as storm.mjs).
    for (const queue of [`${names}.stream`, `${names}.stream.ingest`]) await channel.deleteQueue(queue).catch(() => undefined)
    await channel.deleteExchange(`${names}.events`).catch(() => undefined)
    await connection.close().catch(() => undefined)
  }
  let server
  try {
    server = await startServer("hub", {
      HUB_WORKERS: String(workers),
      ...(balance === undefined ? {} : { HUB_WORKERS_BALANCE: balance }),
      ...brokerEnv,
      ...env
    })
  } catch (error) {
    await cleanUp()
    throw error
  }
  try {
    const deadline = Date.now() + 60_000
    for (;;) {
      const metrics = await getJson(`${server.base}/metrics`)
      const host = metrics.host
      if (host === undefined && workers > 1) {
        throw new Error("the hub's /metrics has no `host`: this build does not run HUB_WORKERS (merge main, rebuild)")
      }
      if (host === undefined || (host.reporting === workers && host.pids?.length === workers)) break
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${workers} hub workers: ${JSON.stringify(host)}`)
      await sleep(200)
    }
    // With a broker: every worker consumes (the host's checks are each at its worst over the workers).
    while (broker !== undefined) {
      const { checks } = await getJson(`${server.base}/health`).catch(() => ({ checks: {} }))
      if (checks.rabbitmq?.status === "up" && (checks.rabbitmq_ingest === undefined || checks.rabbitmq_ingest.status === "up")) break
      if (Date.now() > deadline) throw new Error(`timed out waiting for the hub to consume: ${JSON.stringify(checks)}`)
      await sleep(200)
    }
  } catch (error) {
    await server.stop()
    await cleanUp()
    throw error
  }
  const pids = () => [server.pid, ...descendants(server.pid)]
  const started = pids()
  return {
    kind: "hub",
    url: server.url,
    publishBases: [server.base],
    processes: workers,
    pids,
    async metrics() {
      const metrics = await getJson(`${server.base}/metrics`)
      const disconnected = metrics.websocket.clients_disconnected ?? {}
      return {
        connected: metrics.websocket.connected_clients,
        delivered: metrics.websocket.messages_delivered,
        host: metrics.host,
        per_process: metrics.workers?.map((worker) => worker.connected_clients),
        // Every cause but the client's own close: kicked as a slow consumer, write or pong timeout...
        dropped: Object.entries(disconnected).filter(([reason]) => reason !== "client_closed")
          .reduce((sum, [, count]) => sum + count, 0),
        disconnected
      }
    },
    async stop() {
      await server.stop()
      // The primary stops its workers; any still there after 10 s (ours: forked by the hub we started) is killed.
      const deadline = Date.now() + 10_000
      for (let left = started.filter((pid) => existsSync(`/proc/${pid}`)); left.length > 0;) {
        if (Date.now() > deadline) {
          for (const pid of left) {
            try {
              process.kill(pid, "SIGKILL")
            } catch {
              // gone meanwhile
            }
          }
          break
        }
        await sleep(100)
        left = left.filter((pid) => existsSync(`/proc/${pid}`))
      }
      await cleanUp()
    }
  }
}

/**
 * `count` bare `ws` processes (MODE `mode`) sharing one port with `reusePort`. Each broadcasts only to its own
 * clients, so every event is POSTed to each of them, at the port of its own (`publishBases`); /metrics is read there
 * too and summed.
 */
export const startBaselines = async ({ count, mode = "send" }, attempt = 1) => {
  // Below run.mjs's ports (20000-30000 and up) and below the ephemeral range (32768-60999).
  const port = 30000 + Math.floor(Math.random() * 2500)
  const children = []
  const ready = []
  for (let i = 0; i < count; i++) {
    const child = fork(join(here, "..", "servers", "baseline.mjs"), [], {
      env: { ...process.env, PORT: String(port), HOST: "0.0.0.0", MODE: mode, REUSE_PORT: "1" },
      stdio: ["ignore", "inherit", "inherit", "ipc"]
    })
    children.push(child)
    ready.push(new Promise((resolve, reject) => {
      child.once("message", (message) => resolve(message.port))
      child.once("exit", (code) => reject(new Error(`baseline exited (${code}) before listening on ${port}`)))
    }))
  }
  const stop = () =>
    Promise.all(children.map((child) =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve()
        child.once("exit", resolve)
        child.kill("SIGTERM")
      })
    ))
  let ports
  try {
    ports = await Promise.all(ready)
  } catch (error) {
    await stop()
    // Most likely the port was taken: try another one.
    if (attempt < 3) return startBaselines({ count, mode }, attempt + 1)
    throw error
  }
  const bases = ports.map((own) => `http://127.0.0.1:${own}`)
  return {
    kind: "ws",
    url: `ws://127.0.0.1:${port}/api/v1/ws/events`,
    publishBases: bases,
    processes: count,
    pids: () => children.map((child) => child.pid),
    async metrics() {
      const each = await Promise.all(bases.map((base) => getJson(`${base}/metrics`)))
      return {
        connected: each.reduce((sum, m) => sum + m.websocket.connected_clients, 0),
        delivered: each.reduce((sum, m) => sum + m.websocket.messages_delivered, 0),
        per_process: each.map((m) => m.websocket.connected_clients),
        dropped: 0
      }
    },
    stop
  }
}
