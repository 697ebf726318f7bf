/**
 * HUB_WORKERS: the built service as users run it, several hub processes on one port (the real broker, stream mode,
 * each test with its own exchange and stream). The host answers as one; a worker that dies is started again, and
 * its clients resume on the others without losing or repeating an event; a stop reaches every worker.
 */
import { afterEach, describe, expect, it } from "vitest"
import { request as httpRequest } from "node:http"
import { createServer } from "node:net"
import WebSocket from "ws"
import { connect } from "../src/client/client.js"
import { Broker, brokerUrl, freePort, ServiceProcess, TestClient, uniqueNames } from "./support.js"
import { range, until } from "./support/liveHub.js"

interface HostMetrics {
  websocket: { connected_clients: number }
  host: { workers: number; reporting: number; pids: Array<number> }
  workers: Array<{ worker: number; pid: number; connected_clients: number }>
}

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

/** The service with `HUB_WORKERS=2` on its own names; ready once every worker has refilled its history. */
const startHost = async (env: Record<string, string> = {}) => {
  const names = uniqueNames("workers")
  const stream = `${names.queue}.stream`
  const publisher = await Broker.open()
  await publisher.channel.assertExchange(names.exchange, "topic", { durable: true })
  const port = await freePort()
  const service = ServiceProcess.start({
    HUB_WORKERS: "2",
    PORT: String(port),
    HOST: "127.0.0.1",
    RABBITMQ_URL: brokerUrl,
    RABBITMQ_EXCHANGE: names.exchange,
    RABBITMQ_STREAM: stream,
    ...env
  })
  cleanups.push(async () => {
    // The primary and its workers, whatever the test left running.
    for (const pid of [service.child.pid!, ...(await pidsOf(port).catch(() => []))]) {
      try {
        process.kill(pid, "SIGKILL")
      } catch {
        // already gone
      }
    }
    await publisher.cleanup({ exchange: names.exchange, queues: [stream] })
    await publisher.close()
  })
  await until(() => service.output.split("history refilled from the stream; events are live").length === 3, "both workers live", 30_000)
  const base = `http://127.0.0.1:${port}`
  return { base, names, port, publisher, service, url: `ws://127.0.0.1:${port}/api/v1/ws/events` }
}

/** A POST on a connection of its own (fetch would reuse one, and one connection reaches one worker); its status. */
const postOnNewConnection = (port: number, path: string, token: string, body: unknown) =>
  new Promise<number>((resolve, reject) => {
    const request = httpRequest({
      host: "127.0.0.1",
      port,
      path,
      method: "POST",
      agent: false,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }
    }, (response) => {
      response.resume()
      response.on("end", () => resolve(response.statusCode ?? 0))
    })
    request.on("error", reject)
    request.end(JSON.stringify(body))
  })

const metricsOf = async (base: string): Promise<HostMetrics> => (await fetch(`${base}/metrics`)).json() as Promise<HostMetrics>
const pidsOf = async (port: number) => (await metricsOf(`http://127.0.0.1:${port}`)).host.pids

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe("HUB_WORKERS=2", () => {
  it("two hubs on one port answer as one host: /metrics (JSON and Prometheus), /health, the dashboard; SIGTERM stops them all", async () => {
    const host = await startHost({ DASHBOARD_TOKEN: "secret" })
    const clients = await Promise.all(range(0, 12).map(() => TestClient.connect(host.url)))
    await until(async () => (await metricsOf(host.base)).websocket.connected_clients === 12, "12 clients counted")
    const metrics = await metricsOf(host.base)
    expect(metrics.host).toMatchObject({ workers: 2, reporting: 2 })
    expect(new Set(metrics.host.pids).size).toBe(2)
    // The kernel spread them: both workers serve clients.
    expect(metrics.workers.map((worker) => worker.connected_clients).every((count) => count > 0)).toBe(true)
    const prometheus = await (await fetch(`${host.base}/metrics`, { headers: { accept: "text/plain" } })).text()
    expect(prometheus).toContain("hub_clients_connected{transport=\"ws\"} 12")
    const health = await (await fetch(`${host.base}/health`)).json() as { status: string; workers: Array<unknown> }
    expect(health.status).toBe("ok")
    expect(health.workers).toHaveLength(2)
    expect((await fetch(`${host.base}/health/ready`)).status).toBe(200)
    // The dashboard's figures are the host's too.
    const login = await fetch(`${host.base}/dashboard?token=secret`, { redirect: "manual" })
    const cookie = login.headers.get("set-cookie")!.split(";")[0]!
    const feed = await fetch(`${host.base}/dashboard/stream`, { headers: { cookie } })
    const reader = feed.body!.pipeThrough(new TextDecoderStream()).getReader()
    let text = ""
    while (!text.includes("event: stats\ndata: ")) text += (await reader.read()).value ?? ""
    const stats = JSON.parse(text.split("event: stats\ndata: ")[1]!.split("\n")[0]!)
    await reader.cancel()
    // The 12 clients and this dashboard's own stream.
    expect(stats).toMatchObject({ workers: 2, clients: 13, status: "ok" })

    // Every worker reads the stream: each client gets the event once, whichever worker it is on.
    await host.publisher.publish(host.names.exchange, "test.tick", { seq: 0 })
    for (const client of clients) await client.until(() => client.events.length === 1, "the event")
    expect(clients.every((client) => client.events[0]!.data.seq === 0)).toBe(true)

    const workers = metrics.host.pids
    host.service.child.kill("SIGTERM")
    const exit = await host.service.exited
    expect(exit).toEqual({ code: 0, signal: null })
    expect(workers.filter(alive)).toEqual([])
    for (const client of clients) expect((await client.closed).code).toBe(1001)
    expect(host.service.output).toContain("stopping the workers")
  }, 60_000)

  it("without a broker, events POSTed to the host reach the clients of every worker, once and in order", async () => {
    const port = await freePort()
    const service = ServiceProcess.start({ HUB_WORKERS: "2", PORT: String(port), HOST: "127.0.0.1", PUBLISH_TOKEN: "t" })
    cleanups.push(async () => {
      service.child.kill("SIGTERM")
      await service.exited
    })
    await until(() => service.output.split("\"listening\"").length === 3, "both workers listening")
    const base = `http://127.0.0.1:${port}`
    const clients = await Promise.all(range(0, 12).map(() => TestClient.connect(`ws://127.0.0.1:${port}/api/v1/ws/events`)))
    await until(async () => (await metricsOf(base)).websocket.connected_clients === 12, "12 clients counted")
    expect((await metricsOf(base)).workers.every((worker) => worker.connected_clients > 0)).toBe(true)
    // One after the other, each on a connection of its own, so that the kernel spreads them over the workers: what
    // one worker answered 202 for reaches every client before what the next POST gives another worker.
    for (let batch = 0; batch < 50; batch++) {
      const status = await postOnNewConnection(port, "/api/v1/events", "t", range(batch * 2, batch * 2 + 2).map((seq) => ({ type: "test.tick", data: { seq } })))
      expect(status).toBe(202)
    }
    for (const client of clients) await client.until(() => client.events.length >= 100, "100 events")
    for (const client of clients) expect(client.events.map((event) => event.data.seq)).toEqual(range(0, 100))
  }, 30_000)

  it("a port already taken stops the host with exit status 1 before any worker starts, as a hub of one process does", async () => {
    const taken = createServer()
    const port = await freePort()
    await new Promise<void>((resolve) => taken.listen(port, "127.0.0.1", resolve))
    cleanups.push(() => new Promise((resolve) => taken.close(() => resolve())))
    const service = ServiceProcess.start({ HUB_WORKERS: "2", PORT: String(port), HOST: "127.0.0.1" })
    expect((await service.exited).code).toBe(1)
    const cannotStart = service.output.split("\n").filter((line) => line.includes("cannot start"))
    expect(cannotStart).toHaveLength(1)
    expect(cannotStart[0]).toContain(`127.0.0.1:${port} is taken by another process`)
    expect(cannotStart[0]).toContain("EADDRINUSE")
    expect(service.output).not.toContain("workers started")
  }, 30_000)

  it("a second host on the port of a running one stops with exit status 1 instead of sharing it (SO_REUSEPORT)", async () => {
    const host = await startHost()
    const pids = await pidsOf(host.port)
    const second = ServiceProcess.start({ HUB_WORKERS: "2", PORT: String(host.port), HOST: "127.0.0.1", RABBITMQ_URL: "" })
    // Its workers stop when it does.
    cleanups.push(async () => void second.child.kill("SIGKILL"))
    await until(() => second.child.exitCode !== null || second.output.includes("workers started"), "the second host to start or stop")
    expect(second.output).not.toContain("workers started")
    expect((await second.exited).code).toBe(1)
    expect(second.output).toContain(`127.0.0.1:${host.port} is taken by another process`)
    // The running host still answers there, with the same workers.
    expect(await pidsOf(host.port)).toEqual(pids)
  }, 60_000)

  it("a worker that cannot start stops the host with exit status 1, its last line naming the worker, rather than restarting it", async () => {
    // The primary does not read the tracing settings: each worker finds this one invalid while it starts.
    const service = ServiceProcess.start({ HUB_WORKERS: "2", PORT: String(await freePort()), HOST: "127.0.0.1", OTEL_BSP_SCHEDULE_DELAY: "soon" })
    expect((await service.exited).code).toBe(1)
    expect(service.output).toContain("stopped before any worker listened")
    const invalid = service.output.split("\n").filter((line) => line.includes("OTEL_BSP_SCHEDULE_DELAY") && line.includes("FATAL"))
    expect(invalid.length).toBeGreaterThan(0)
    expect(invalid.every((line) => /"worker":\s*\d/.test(line))).toBe(true)
    expect(service.output).not.toContain("starting another")
  }, 30_000)

  it("a worker killed while events flow is started again; its clients resume on the host: nothing lost, nothing twice", async () => {
    const host = await startHost()
    const received = range(0, 6).map(() => [] as Array<number>)
    const clients = received.map((seqs) => {
      const client = connect(host.url, { WebSocket, eventTypes: ["test.#"], minDelay: 100, maxDelay: 1000 })
      client.on("test.tick", (event) => seqs.push((event.data as { seq: number }).seq))
      return client
    })
    await until(() => clients.every((client) => client.state === "connected"), "6 clients connected")
    await until(async () => (await metricsOf(host.base)).websocket.connected_clients === 6, "6 clients counted")
    const total = 600
    const publishing = (async () => {
      const started = Date.now()
      for (let seq = 0; seq < total; seq++) {
        const due = started + seq * 10
        if (due > Date.now()) await new Promise((resolve) => setTimeout(resolve, due - Date.now()))
        await host.publisher.publish(host.names.exchange, "test.tick", { seq })
      }
    })()
    await until(() => received.every((seqs) => seqs.length >= 150), "150 events each")
    const before = await metricsOf(host.base)
    const victim = before.workers.find((worker) => worker.connected_clients > 0)!
    process.kill(victim.pid, "SIGKILL")
    await publishing
    await until(() => received.every((seqs) => seqs.length >= total), "every event at every client", 30_000)
    for (const client of clients) client.close()
    for (const seqs of received) expect(seqs).toEqual(range(0, total))
    expect(host.service.output).toContain("worker exited; starting another")
    await until(async () => {
      const after = await metricsOf(host.base)
      return after.host.reporting === 2 && !after.host.pids.includes(victim.pid)
    }, "a new worker in its place", 30_000)
  }, 90_000)
})
