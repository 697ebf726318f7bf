/**
 * No loss and no duplicates: a publisher's retries, events entering through
 * any instance, bursts. Real clients, the real broker (each test with its own
 * exchange, queue and stream, deleted afterwards).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { randomUUID } from "node:crypto"
import { HubMetrics } from "../src/ops/Metrics.js"
import { broker, type Broker, connect, consuming, hubWithSource, promise, range, seqs, uniqueNames } from "./support.js"

/** A test's own exchange, queue and stream, deleted when the test ends. */
const testNames = (publisher: Broker) => {
  const names = uniqueNames("noloss")
  const stream = `${names.queue}.stream`
  return Effect.as(
    Effect.addFinalizer(() =>
      Effect.promise(() => publisher.cleanup({ exchange: names.exchange, queues: [names.queue, stream] }))
    ),
    { ...names, stream }
  )
}

describe("a publisher's retry (the same event_id published twice)", () => {
  for (const mode of ["queue", "stream"] as const) {
    it.scopedLive(`reaches each client once (${mode} mode), whether or not the broker marked it redelivered`, () =>
      Effect.gen(function*() {
        const publisher = yield* broker
        const names = yield* testNames(publisher)
        yield* Effect.gen(function*() {
          yield* consuming
          const clients = yield* Effect.all([connect(), connect()])
          const ids = range(0, 20).map(() => randomUUID())
          // Every event twice, as a publisher resends after a lost confirm; some right away, some later.
          for (let seq = 0; seq < 20; seq++) {
            yield* promise(() => publisher.publish(names.exchange, "backtest.completed", { event_id: ids[seq], seq }))
            if (seq % 2 === 0) {
              yield* promise(() => publisher.publish(names.exchange, "backtest.completed", { event_id: ids[seq], seq }))
            }
          }
          for (let seq = 1; seq < 20; seq += 2) {
            yield* promise(() => publisher.publish(names.exchange, "backtest.completed", { event_id: ids[seq], seq }))
          }
          // A last, new event: anything sent twice would arrive before it.
          yield* promise(() => publisher.publish(names.exchange, "backtest.completed", { event_id: randomUUID(), seq: 20 }))
          for (const client of clients) {
            yield* promise(() => client.until(() => seqs(client).includes(20), "event 20"))
            expect(seqs(client)).toEqual(range(0, 21))
          }
          const metrics = yield* (yield* HubMetrics).snapshot
          expect(metrics.events_deduplicated).toBe(20)
        }).pipe(Effect.provide(hubWithSource({ ...names, mode })))
      }), { timeout: 30_000 })
  }
})
