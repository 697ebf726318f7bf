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
// a whole `stop` and `start` of the node (same data, same ports). Publishing lasts SECONDS, or longer when the
// restarts take longer (each `rabbitmqctl` call is slow on a busy machine): until 3 s after the second restart. At the end (every event confirmed, then every
// client holding all of them or QUIET_MS (10000) without anything new) it prints a JSON report and a line per
// client: received, lost (confirmed, never received), duplicated (the same publisher+seq twice), out of order (among events sent once, per
// publisher, a seq below one already received after dropping duplicates), `hub.history_gap` notices, delivery
// latency; the lost events as ranges with when they were created and confirmed; and per hub, its counters from
// /metrics and its warning/error log lines. Exits 1 if anything was lost, duplicated, out of order or unconfirmed.
// Hubs and node are removed at the end (also on Ctrl-C).
// The pieces (hub processes, clients, publisher, counting) are test/support/lossRun.ts, shared with
// test/brokerRestart.test.ts and test/brokerCluster.test.ts.
// Other knobs: RESTARTS=0 (no restart: to find the rate the machine sustains), FIRST_AT / SECOND_AT (fraction of
// SECONDS at which each restart starts, 0.2 and 0.55; the second at least 3 s after the first is over), HUB_ENV (JSON object of extra hub environment variables),
// JSON_OUT (a file for the JSON report).
import { resolve } from "node:path"
import { writeFileSync } from "node:fs"
import { importTs } from "./lib/importTs.mjs"

const { RabbitNode } = await importTs("test/support/rabbitNode.ts")
const { allConfirmed, CarefulPublisher, deliveredOrQuiet, describeTally, EventSchedule, HubProcess, ResumingClient, tally } =
  await importTs("test/support/lossRun.ts")

const env = process.env
const hubPath = resolve(env.HUB ?? "./dist/main.js")
const rate = Number(env.RATE ?? 1000)
const seconds = Number(env.SECONDS ?? 30)
const clientCount = Number(env.CLIENTS ?? 10)
const publisherCount = Number(env.PUBLISHERS ?? 2)
const downMs = Number(env.DOWN_MS ?? 4000)
const quietMs = Number(env.QUIET_MS ?? 10_000)
const restarts = env.RESTARTS !== "0"
const firstAt = Number(env.FIRST_AT ?? 0.2)
const secondAt = Number(env.SECOND_AT ?? 0.55)
const hubEnv = env.HUB_ENV ? JSON.parse(env.HUB_ENV) : {}
const sleep = (ms) => new Promise((done) => setTimeout(done, ms))
const started = Date.now()
const note = (text) => console.error(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${text}`)

const id = `lossbr_${process.pid}_${Math.random().toString(36).slice(2, 6)}`
const names = { exchange: `${id}.events`, stream: `${id}.stream` }
let node
const hubs = []
const clients = []
const publishers = []

const cleanup = async () => {
  for (const client of clients) client.close()
  await Promise.all(publishers.map((publisher) => publisher.close()))
  await Promise.all(hubs.map((hub) => hub.stop()))
  await node?.destroy().catch(() => undefined)
}
process.once("SIGINT", () => cleanup().finally(() => process.exit(130)))

const report = { hub: hubPath, rate, seconds, clients: clientCount, publishers: publisherCount, restarts: [] }
let exitCode = 2
try {
  note("starting a RabbitMQ node of our own")
  node = await RabbitNode.start()
  report.node = { name: node.name, url: node.url }
  note(`node ${node.name} on ${node.url} (${node.timings[0]?.ms} ms); starting 2 hubs (${hubPath})`)
  for (let index = 0; index < 2; index++) {
    hubs.push(await HubProcess.start({ rabbitmqUrl: node.url, ...names, instance: `${id}-hub${index}`, script: hubPath, env: hubEnv }))
  }
  await Promise.all(hubs.map((hub) => hub.ready()))
  note(`hubs ready on ports ${hubs.map((hub) => hub.port).join(", ")}; ${clientCount} clients, ${publisherCount} publishers, ${rate}/s for ${seconds} s`)
  for (let index = 0; index < clientCount; index++) clients.push(new ResumingClient(index, hubs.map((hub) => hub.wsUrl)))
  await Promise.all(clients.map((client) => client.connect()))
  for (let index = 0; index < publisherCount; index++) publishers.push(new CarefulPublisher(`p${index}`, [node.url], names.exchange))
  await Promise.all(publishers.map((publisher) => publisher.connect()))

  const schedule = new EventSchedule(publishers, rate, seconds, true)
  const at = (seconds) => schedule.at(seconds)
  if (restarts) {
    await at(seconds * firstAt)
    let t = schedule.elapsed
    note("stop_app")
    await node.stopApp()
    const stopped = schedule.elapsed
    await sleep(downMs)
    note("start_app")
    await node.startApp()
    report.restarts.push({ kind: "stop_app/start_app", at: t, stopped, back: schedule.elapsed })
    note(`broker back after stop_app/start_app (${((schedule.elapsed - t)).toFixed(1)} s)`)
    await at(Math.max(seconds * secondAt, schedule.elapsed + 3))
    t = schedule.elapsed
    note("stop (whole node)")
    await node.stop()
    const down = schedule.elapsed
    note("start (whole node)")
    await node.start()
    report.restarts.push({ kind: "stop/start", at: t, stopped: down, back: schedule.elapsed })
    note(`broker back after stop/start (${(schedule.elapsed - t).toFixed(1)} s)`)
    await at(schedule.elapsed + 3)
  }
  await schedule.finish()
  report.publishedForSeconds = Number(schedule.elapsed.toFixed(1))
  note(`all ${schedule.created} events created in ${report.publishedForSeconds} s; waiting for every confirm`)
  await allConfirmed(publishers)
  note(`confirmed; waiting until every client has every confirmed event, or nothing arrives for ${quietMs} ms`)
  report.ending = await deliveredOrQuiet(clients, publishers, quietMs)

  const result = tally(clients, publishers, schedule.startedAt)
  Object.assign(report, result)
  report.publisher = publishers.map((p) => ({ name: p.name, created: p.seq, confirmed: p.confirmed.size, nacked: p.nacked, resent: p.resent, channelLosses: p.channelLosses }))
  report.hubs = []
  for (const [index, hub] of hubs.entries()) {
    report.hubs.push({ hub: index, instance: hub.instance, counters: await hub.counters(), logs: hub.logSummary() })
  }
  report.nodeTimings = node.timings
  console.log(JSON.stringify(report, null, 2))
  if (env.JSON_OUT) writeFileSync(env.JSON_OUT, JSON.stringify(report, null, 2))
  console.log(describeTally(result))
  for (const h of report.hubs) console.log(`hub ${h.hub}: ${JSON.stringify(h.counters)}; log lines ${JSON.stringify(h.logs)}`)
  console.log(`RATE=${rate} SECONDS=${seconds} (published for ${report.publishedForSeconds} s) CLIENTS=${clientCount}: published ${result.published}, confirmed ${result.confirmed} ` +
    `(resent ${result.resent}, nacked ${result.nacked}); lost ${result.totals.lost} in all (at most ${result.totals.maxLostPerClient} per client), ` +
    `duplicated ${result.totals.duplicated}, out of order ${result.totals.outOfOrder}, history_gap ${result.totals.historyGaps}; ` +
    `restarts: ${report.restarts.map((r) => `${r.kind} at ${r.at.toFixed(1)} s, back at ${r.back.toFixed(1)} s`).join("; ") || "none"}`)
  exitCode = result.totals.lost + result.totals.duplicated + result.totals.outOfOrder + result.unconfirmed > 0 ? 1 : 0
} catch (error) {
  console.error(error)
  exitCode = 2
} finally {
  await cleanup()
}
process.exit(exitCode)
