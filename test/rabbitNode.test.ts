/**
 * The tests' own RabbitMQ nodes (test/support/rabbitNode.ts): a node starts on its own ports, serves a quorum
 * queue, survives stop_app/start_app and a whole stop/start with its data, and leaves nothing behind (no beam
 * process, no directory); a three-node cluster finds a quorum queue's leader and a stream's writer, which move
 * when their node stops. The shared broker on 127.0.0.1:5672 is never touched.
 */
import * as amqp from "amqplib"
import { execFileSync } from "node:child_process"
import { randomUUID } from "node:crypto"
import { existsSync } from "node:fs"
import { afterAll, describe, expect, it } from "vitest"
import { RabbitCluster, RabbitNode } from "./support/rabbitNode.js"

/** `pgrep -f <name>`: the pids of processes whose command line names it (none: []). */
const pgrep = (name: string): Array<number> => {
  try {
    return execFileSync("pgrep", ["-f", name]).toString().trim().split("\n").filter(Boolean).map(Number)
  } catch {
    return []
  }
}

const open = async (url: string) => {
  // Without noDelay, each basic.get waits for the delayed ACK of the previous ack (~40 ms each).
  const connection = await amqp.connect(url, { noDelay: true })
  connection.on("error", () => undefined)
  const channel = await connection.createConfirmChannel()
  channel.on("error", () => undefined)
  return { connection, channel }
}

/** Publishes `count` persistent messages `{ seq }` to `queue` through the default exchange, each confirmed. */
const publishConfirmed = async (url: string, queue: string, from: number, to: number) => {
  const { channel, connection } = await open(url)
  for (let seq = from; seq < to; seq++) {
    channel.sendToQueue(queue, Buffer.from(JSON.stringify({ seq })), { persistent: true })
  }
  await channel.waitForConfirms()
  await connection.close()
}

/** Reads every message in `queue` (acknowledging them), in order. */
const drain = async (url: string, queue: string): Promise<Array<number>> => {
  const { channel, connection } = await open(url)
  const seqs: Array<number> = []
  for (;;) {
    const message = await channel.get(queue, { noAck: false })
    if (message === false) break
    seqs.push(JSON.parse(message.content.toString()).seq)
    channel.ack(message)
  }
  await connection.close()
  return seqs
}

const refused = (url: string) =>
  amqp.connect(url, { timeout: 2000 }).then(
    async (connection) => {
      await connection.close()
      return false
    },
    () => true
  )

const quorum = { durable: true, arguments: { "x-queue-type": "quorum" } }
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i)

const created: Array<RabbitNode | RabbitCluster> = []
afterAll(async () => {
  await Promise.all(created.map((it) => it.destroy()))
}, 60_000)

describe("RabbitNode", () => {
  it("starts a node of its own, keeps a quorum queue's messages across stop_app/start_app and stop/start, and leaves nothing behind", async () => {
    const started = Date.now()
    const laps: Array<string> = []
    const lap = (what: string) => laps.push(`${what} at ${Date.now() - started}`)
    const node = await RabbitNode.start()
    lap("started")
    created.push(node)
    expect(node.name).toMatch(/^hubtest_\d+_[a-z0-9]+@localhost$/)
    expect(node.amqpPort).not.toBe(5672)
    expect(node.url).toBe(`amqp://guest:guest@127.0.0.1:${node.amqpPort}/`)
    expect(pgrep(node.name)).toEqual([node.pid])
    // Its own directory, owned by the rabbitmq user; nothing under /var/lib/rabbitmq.
    expect(existsSync(`${node.dir}/mnesia/${node.name}`)).toBe(true)

    const queue = `q-${randomUUID()}`
    {
      const { channel, connection } = await open(node.url)
      await channel.assertQueue(queue, quorum)
      await connection.close()
    }
    await publishConfirmed(node.url, queue, 0, 100)
    lap("published")

    await node.stopApp()
    lap("app stopped")
    expect(await refused(node.url)).toBe(true)
    // The VM stays up while the application is stopped.
    expect(pgrep(node.name)).toEqual([node.pid])
    await node.startApp()
    lap("app started")
    await publishConfirmed(node.url, queue, 100, 200)
    lap("published")

    const before = node.pid
    await node.stop()
    lap("stopped")
    expect(pgrep(node.name)).toEqual([])
    expect(await refused(node.url)).toBe(true)
    await node.start()
    lap("started again")
    expect(node.pid).not.toBe(before)
    // Same port, same data: every confirmed message, in order.
    expect(await drain(node.url, queue)).toEqual(range(0, 200))
    lap("drained")

    await node.destroy()
    lap("destroyed")
    expect(pgrep(node.name)).toEqual([])
    expect(existsSync(node.dir)).toBe(false)
    expect(await refused(node.url)).toBe(true)
    console.log(`RabbitNode timings (ms): ${node.timings.map(({ ms, op }) => `${op} ${ms}`).join(", ")}; ${laps.join(", ")}`)
  }, 120_000)
})

describe("RabbitCluster", () => {
  it("forms a three-node cluster; a quorum queue's leader and a stream's writer move when their node stops, without losing a confirmed message", async () => {
    const cluster = await RabbitCluster.start(3)
    created.push(cluster)
    console.log(`RabbitCluster timings (ms): ${cluster.timings.map(({ ms, op }) => `${op} ${ms}`).join(", ")}`)
    expect(new Set(cluster.urls).size).toBe(3)
    for (const node of cluster.nodes) expect((await node.runningNodes()).sort()).toEqual(cluster.nodes.map((n) => n.name).sort())

    const queue = `q-${randomUUID()}`
    const stream = `s-${randomUUID()}`
    {
      const { channel, connection } = await open(cluster.urls[1]!)
      await channel.assertQueue(queue, quorum)
      await channel.assertQueue(stream, { durable: true, arguments: { "x-queue-type": "stream" } })
      await connection.close()
    }
    const leader = await cluster.quorumLeader(queue)
    const writer = await cluster.streamWriter(stream)
    expect(cluster.nodes).toContain(leader)
    expect(cluster.nodes).toContain(writer)
    expect((await cluster.queueLeader(stream))?.name).toBe(writer!.name)

    await publishConfirmed(cluster.urls[2]!, queue, 0, 100)
    await leader!.stop()
    // Another node leads now, and has every confirmed message.
    let next: RabbitNode | undefined
    const deadline = Date.now() + 30_000
    while ((next = await cluster.quorumLeader(queue).catch(() => undefined)) === undefined || next === leader) {
      if (Date.now() > deadline) throw new Error("no new leader within 30 s")
    }
    expect(next).not.toBe(leader)
    const other = cluster.nodes.find((node) => node !== leader)!
    await publishConfirmed(other.url, queue, 100, 200)
    await leader!.start()
    await cluster.awaitRunning()
    expect(await drain(leader!.url, queue)).toEqual(range(0, 200))

    await cluster.destroy()
    for (const node of cluster.nodes) {
      expect(pgrep(node.name)).toEqual([])
      expect(existsSync(node.dir)).toBe(false)
    }
  }, 180_000)
})
