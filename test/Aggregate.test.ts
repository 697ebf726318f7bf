/** The host's answers made of its workers' (src/host/Aggregate.ts): pure functions, no processes. */
import { describe, expect, it } from "vitest"
import * as Aggregate from "../src/host/Aggregate.js"

describe("the host's answers from its workers'", () => {
  it("sums counters key by key, counting a key a worker lacks as 0, and keeps the first worker's text", () => {
    expect(Aggregate.sum([
      { websocket: { connected_clients: 3, by_type: { a: 1 } }, mode: "stream" },
      { websocket: { connected_clients: 4, by_type: { b: 2 } }, mode: "stream" }
    ])).toEqual({ websocket: { connected_clients: 7, by_type: { a: 1, b: 2 } }, mode: "stream" })
  })

  it("gives each check at its worst, with the worker named, and the host's status at its worst", () => {
    const host = Aggregate.health([
      { worker: 0, pid: 10, report: { status: "ok", checks: { hub: { status: "up" }, rabbitmq: { status: "up" } } } },
      {
        worker: 1,
        pid: 11,
        report: { status: "degraded", checks: { hub: { status: "up" }, rabbitmq: { status: "down", detail: "connection lost" } } }
      }
    ])
    expect(host).toEqual({
      status: "degraded",
      checks: { hub: { status: "up" }, rabbitmq: { status: "down", detail: "worker 1: connection lost" } },
      workers: [{ worker: 0, pid: 10, status: "ok" }, { worker: 1, pid: 11, status: "degraded" }]
    })
  })
})
