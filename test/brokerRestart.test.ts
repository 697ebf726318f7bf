/**
 * A broker restart under the hub loses no confirmed event (stream mode, the default). On a RabbitMQ node of the
 * test's own (test/support/rabbitNode.ts; the shared one on 5672 is never touched): two hub processes (the built
 * dist/main.js), clients on both that resume with `since` as docs/protocol.md says, and careful publishers
 * (confirms, no `mandatory`, what was not confirmed sent again with the same event_id) at a steady rate while the
 * node is restarted twice: `stop_app`, 4 s down, `start_app`; then a whole `stop` and `start`. Every client must
 * receive every confirmed event once, in each publisher's order.
 *
 * On the code of 2026-12-06 this fails: right after a restart RabbitMQ opens its AMQP listener before the stream
 * is routable again, and a publisher's messages routed to it in that window are confirmed and dropped.
 *
 * Events are published from 3 s before the first restart until 3 s after the second, however long the restarts take
 * (about 20 s of publishing on a quiet machine; each `rabbitmqctl` call takes longer on a busy one).
 * BROKER_RESTART_RATE (events/s, default 800: the highest rate this 2-core machine kept steady with two hubs and the
 * node, and other work, running) changes the load.
 */
import { afterAll, describe, expect, it } from "vitest"
import { allConfirmed, CarefulPublisher, EventSchedule, HubProcess, LossRun } from "./support/lossRun.js"
import { RabbitNode } from "./support/rabbitNode.js"

const rate = Number(process.env.BROKER_RESTART_RATE ?? 800)
const clientCount = 6
/** How long the broker application stays stopped. */
const downMs = 4000
/** Publishing before, between and after the restarts, seconds. */
const settle = 3

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

let node: RabbitNode | undefined
const run = new LossRun()
const { hubs, publishers } = run

afterAll(async () => {
  await run.stop()
  await node?.destroy()
}, 60_000)

describe("a restart of the broker under two hubs (stream mode)", () => {
  it(`loses, duplicates and reorders no confirmed event (${rate}/s; stop_app/start_app, then stop/start)`, async () => {
    node = await RabbitNode.start()
    run.step("node started")
    const id = `restart_${process.pid}_${Math.random().toString(36).slice(2, 6)}`
    const names = { exchange: `${id}.events`, stream: `${id}.stream` }
    for (let index = 0; index < 2; index++) {
      hubs.push(await HubProcess.start({ rabbitmqUrl: node.url, ...names, instance: `${id}-hub${index}` }))
    }
    await Promise.all(hubs.map((hub) => hub.ready()))
    run.step("hubs ready")
    await run.connectClients(clientCount)
    for (let index = 0; index < 2; index++) publishers.push(new CarefulPublisher(`p${index}`, [node.url], names.exchange))
    await Promise.all(publishers.map((publisher) => publisher.connect()))

    // The scenario's timetable (how long to publish between steps), not a synchronisation: every step waits for
    // its own condition (the broker running, the hubs consuming).
    const schedule = run.schedule = new EventSchedule(publishers, rate, 0, true)
    run.step("publishing")
    await schedule.at(settle)
    // Events flow to every client before the first restart.
    await run.everyClientReceiving()
    await node.stopApp()
    run.step("app stopped")
    await sleep(downMs)
    await node.startApp()
    run.step("app started")
    await Promise.all(hubs.map((hub) => hub.ready()))
    run.step("hubs consuming again")
    await schedule.at(schedule.elapsed + settle)
    await node.stop()
    run.step("node stopped")
    await node.start()
    run.step("node started again")
    await Promise.all(hubs.map((hub) => hub.ready()))
    run.step("hubs consuming again")
    await schedule.at(schedule.elapsed + settle)
    await schedule.finish()
    run.step(`${schedule.created} events created in ${schedule.elapsed.toFixed(1)} s`)
    expect(await allConfirmed(publishers), "every event confirmed within 120 s").toBe(true)
    run.step("all confirmed")

    const { result, text: report } = await run.verdict([
      `node timings (ms): ${node.timings.map(({ ms, op }) => `${op} ${ms}`).join(", ")}`
    ])
    console.log(report)
    expect(result.unconfirmed, report).toBe(0)
    expect(result.totals, report).toMatchObject({ lost: 0, duplicated: 0, outOfOrder: 0 })
  }, 240_000)
})
