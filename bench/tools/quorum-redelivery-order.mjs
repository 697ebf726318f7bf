// Does a quorum queue redeliver a dead consumer's unacknowledged messages to the next consumer in their original
// order, before newer ones? On a RabbitMQ node (or cluster) of its own (test/support/rabbitNode.ts), never the
// shared one on 5672.
//   node bench/tools/quorum-redelivery-order.mjs            one node: the first consumer's socket destroyed, its
//                                                           channel closed, its connection closed, its consumer
//                                                           cancelled and its channel closed 200 ms later
//   CLUSTER=1 node bench/tools/quorum-redelivery-order.mjs  three nodes: the first consumer's node stopped / killed,
//                                                           the queue's leader elsewhere or on that node
// Each case: 200 persistent messages 0..199 in a quorum queue (single active consumer unless SAC=0), consumer A
// (prefetch 50) acks every third message it gets and never the others, consumer B waits; A dies; B acks all.
// Prints, per case, whether B got A's unacknowledged messages first and in their original order, and whether
// anything confirmed is missing.
import amqp from "amqplib"
import { importTs } from "./lib/importTs.mjs"

const { RabbitCluster, RabbitNode } = await importTs("test/support/rabbitNode.ts")
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const sac = process.env.SAC !== "0"
const total = 200
const prefetch = 50

const connect = async (url) => {
  const connection = await amqp.connect(url, { noDelay: true })
  connection.on("error", () => {})
  const channel = await connection.createConfirmChannel()
  channel.on("error", () => {})
  return { connection, channel }
}

/** One case: A consumes through `urlA`, B through `urlB`; `die(a)` ends A. */
const check = async (label, { die, publishUrl, urlA, urlB, describe }) => {
  const queue = `order-${label}-${Date.now()}`
  const publisher = await connect(publishUrl)
  await publisher.channel.assertQueue(queue, {
    durable: true,
    arguments: { "x-queue-type": "quorum", ...(sac ? { "x-single-active-consumer": true } : {}) }
  })
  for (let seq = 0; seq < total; seq++) publisher.channel.sendToQueue(queue, Buffer.from(String(seq)), { persistent: true })
  await publisher.channel.waitForConfirms()
  await publisher.connection.close()

  const acks = (seq) => seq % 3 === 0
  const a = await connect(urlA)
  await a.channel.prefetch(prefetch)
  const gotA = []
  a.consumerTag = (await a.channel.consume(queue, (message) => {
    if (message === null) return
    const seq = Number(message.content)
    gotA.push(seq)
    if (acks(seq)) a.channel.ack(message)
  })).consumerTag
  while (gotA.length < prefetch) await sleep(10)
  const b = await connect(urlB)
  await b.channel.prefetch(prefetch)
  const gotB = []
  await b.channel.consume(queue, (message) => {
    gotB.push({ seq: Number(message.content), redelivered: message.fields.redelivered, count: message.properties.headers?.["x-delivery-count"] })
    b.channel.ack(message)
  })
  await sleep(300)
  const beforeDeath = gotB.length
  const setting = describe ? await describe(queue) : undefined
  const acked = new Set(gotA.filter(acks))
  const unacked = gotA.filter((seq) => !acked.has(seq))
  const died = Date.now()
  await die(a)
  const deadline = Date.now() + 60_000
  while (new Set([...gotB.map((m) => m.seq), ...acked]).size < total && Date.now() < deadline) await sleep(20)
  const seqsB = gotB.map((m) => m.seq)
  const result = {
    case: label,
    ...setting,
    singleActiveConsumer: sac,
    aReceived: gotA.length,
    aUnacked: unacked.length,
    bReceivedBeforeADied: beforeDeath,
    bReceived: seqsB.length,
    unackedFirstAndInOrder: JSON.stringify(seqsB.slice(0, unacked.length)) === JSON.stringify(unacked),
    bAscending: seqsB.every((seq, i) => i === 0 || seq > seqsB[i - 1]),
    missing: total - new Set([...seqsB, ...acked]).size,
    firstToB: gotB.slice(0, 3),
    msUntilBHadAll: Date.now() - died
  }
  console.log(JSON.stringify(result))
  await b.connection.close().catch(() => {})
  const cleanup = await connect(urlB)
  await cleanup.channel.deleteQueue(queue).catch(() => {})
  await cleanup.connection.close().catch(() => {})
  return result
}

if (process.env.CLUSTER === "1") {
  const cluster = await RabbitCluster.start(3)
  try {
    // A on the second node, B on the third; the queue's leader on the first (declared there), or on the second
    // (A's node: the leader dies with the consumer).
    const cases = [
      ["node-stopped", (node) => node.stop(), 0],
      ["node-killed", (node) => node.kill(), 0],
      ["leader-node-stopped", (node) => node.stop(), 1],
      ["leader-node-killed", (node) => node.kill(), 1]
    ]
    for (const [label, end, leader] of cases) {
      const [, second, third] = cluster.nodes
      await check(label, {
        publishUrl: cluster.nodes[leader].url,
        urlA: second.url,
        urlB: third.url,
        die: () => end(second),
        describe: async (queue) => ({ leader: (await cluster.quorumLeader(queue))?.name, consumerA: second.name, consumerB: third.name })
      })
      await second.start()
      await cluster.awaitRunning()
    }
  } finally {
    await cluster.destroy()
  }
} else {
  const node = await RabbitNode.start()
  try {
    const cases = {
      "socket-destroyed": (a) => a.connection.connection.stream.destroy(),
      "channel-closed": (a) => a.channel.close(),
      "connection-closed": (a) => a.connection.close(),
      // How a hub used to release its mover: the consumer cancelled first, the channel closed a little later.
      "cancelled-then-closed": async (a) => {
        await a.channel.cancel(a.consumerTag)
        await sleep(200)
        await a.channel.close()
      }
    }
    for (const [label, die] of Object.entries(cases)) {
      await check(label, { publishUrl: node.url, urlA: node.url, urlB: node.url, die })
    }
  } finally {
    await node.destroy()
  }
}
