/**
 * The outbox's write scheduling, with sockets that only record what they are
 * given (the real sockets are in websocket.test.ts): each socket receives its
 * messages in order, in batches, and a flush that takes long lets new
 * messages join the outboxes it has not reached yet.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration } from "effect"
import type { Duplex } from "node:stream"
import { WebSocket } from "ws"
import * as WebSocketTransport from "../src/connection/WebSocketTransport.js"
import { Flusher } from "../src/hub/Flusher.js"
import { Outbox } from "../src/hub/Outbox.js"
import { Outbound } from "../src/protocol/Protocol.js"

/** Pre-built frames, as a hub writes them. */
const settings = { encodeFrame: WebSocketTransport.frameEncoder(), closeHandshake: Duration.seconds(1) }

/** The connection an outbox writes for, in the tests that need none. */
const ignoreFailures = { writeFailed: () => undefined }

/** A socket that records each write it is given as a batch of frames; each write takes `writeMicros`. */
const recordingSocket = (writeMicros: number) => {
  const batches: Array<Array<string>> = []
  let corked: Array<string> | undefined
  const busy = () => {
    const done = performance.now() + writeMicros / 1000
    while (performance.now() < done) {
      // a slow write
    }
  }
  const socket = {
    cork: () => {
      corked = []
    },
    uncork: () => {
      busy()
      batches.push(corked!)
      corked = undefined
    },
    write: (frame: Buffer) => {
      const text = frame.subarray(2).toString()
      if (corked !== undefined) corked.push(text)
      else {
        busy()
        batches.push([text])
      }
      return true
    },
    once: () => socket
  }
  const ws = { extensions: "", readyState: WebSocket.OPEN }
  const transport = WebSocketTransport.make(ws as unknown as WebSocket, socket as unknown as Duplex, settings)
  return { batches, socket, transport }
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

const until = async (condition: () => boolean) => {
  while (!condition()) await nextTurn()
}

describe("Outbox", () => {
  it("writes each outbox's queued messages in one batch, in order, on the next turn of the event loop", async () => {
    const { batches, transport } = recordingSocket(0)
    let written = 0
    const outbox = new Outbox(new Flusher(), transport, 10, (count) => (written += count), ignoreFailures)
    for (const text of ["a", "b", "c"]) expect(outbox.offer(Outbound.text(text))).toBe(true)
    expect(batches).toEqual([])
    await until(() => written === 3)
    expect(batches).toEqual([["a", "b", "c"]])
    expect(outbox.size).toBe(0)
  })

  it("refuses a message once its capacity is queued while the socket refuses data (the client does not read)", async () => {
    const { socket, transport } = recordingSocket(0)
    // The socket takes the first write, then refuses more (its buffer is full) and never drains.
    ;(socket as unknown as { write: () => boolean }).write = () => false
    let written = 0
    const outbox = new Outbox(new Flusher(), transport, 2, (count) => (written += count), ignoreFailures)
    expect(outbox.offer(Outbound.text("first"))).toBe(true)
    await until(() => written === 1)
    expect(outbox.blockedSince).toBeDefined()
    expect([outbox.offer(Outbound.text("a")), outbox.offer(Outbound.text("b")), outbox.offer(Outbound.text("c"))])
      .toEqual([true, true, false])
  })

  it("takes a burst beyond its capacity while the socket takes data (the hub's backlog, not the client's), up to 16 times", async () => {
    const { batches, transport } = recordingSocket(0)
    let written = 0
    const outbox = new Outbox(new Flusher(), transport, 2, (count) => (written += count), ignoreFailures)
    const offered = Array.from({ length: 33 }, (_, i) => outbox.offer(Outbound.text(`${i}`)))
    expect(offered.filter((accepted) => accepted)).toHaveLength(32)
    expect(offered[32]).toBe(false)
    await until(() => written === 32)
    expect(batches.flat()).toEqual(Array.from({ length: 32 }, (_, i) => `${i}`))
  })

  it("a message queued during a long flush joins the outboxes not yet written; every socket keeps its order", async () => {
    // 300 sockets whose writes take 50 us: one pass takes at least 15 ms, far more than one slice (1 ms).
    const sockets = Array.from({ length: 300 }, () => recordingSocket(50))
    let written = 0
    const flusher = new Flusher()
    const outboxes = sockets.map(({ transport }) => new Outbox(flusher, transport, 10, (count) => (written += count), ignoreFailures))
    for (const outbox of outboxes) outbox.offer(Outbound.text("first"))
    // The first slice has run (its setImmediate was scheduled before this one) and the pass is not over.
    await nextTurn()
    expect(sockets[0]!.batches).toEqual([["first"]])
    expect(sockets[299]!.batches).toEqual([])
    for (const outbox of outboxes) outbox.offer(Outbound.text("second"))
    await until(() => written === 600)

    for (const { batches } of sockets) expect(batches.flat()).toEqual(["first", "second"])
    // Those reached before "second" was queued wrote twice; the others wrote both messages at once.
    expect(sockets[0]!.batches).toEqual([["first"], ["second"]])
    expect(sockets[299]!.batches).toEqual([["first", "second"]])
  })

  it("once a client that reads has many messages waiting (the hub is behind), the flush ends its pass before new events come in", async () => {
    const sockets = Array.from({ length: 300 }, () => recordingSocket(50))
    let written = 0
    const flusher = new Flusher()
    const outboxes = sockets.map(({ transport }) => new Outbox(flusher, transport, 256, (count) => (written += count), ignoreFailures))
    // A burst of 40 events: more than the 32 at which an outbox that reads counts as behind.
    for (let i = 0; i < 40; i++) for (const outbox of outboxes) outbox.offer(Outbound.text(`${i}`))
    await nextTurn()
    expect(written).toBe(300 * 40)
    for (const { batches } of sockets) expect(batches).toEqual([Array.from({ length: 40 }, (_, i) => `${i}`)])
  })

  it("says when a reading client's outbox is full, and calls a producer waiting for it once the pass has written everything", async () => {
    const { transport } = recordingSocket(0)
    let written = 0
    const flusher = new Flusher()
    let idle = 0
    flusher.whenIdle(() => idle++)
    expect(idle).toBe(1)
    const outbox = new Outbox(flusher, transport, 256, (count) => (written += count), ignoreFailures)
    for (let i = 0; i < 256; i++) outbox.offer(Outbound.text(`${i}`))
    expect(flusher.congested).toBe(false)
    outbox.offer(Outbound.text("256"))
    expect(flusher.congested).toBe(true)
    flusher.whenIdle(() => idle++)
    expect(idle).toBe(1)
    await until(() => idle === 2)
    expect(written).toBe(257)
    expect(flusher.congested).toBe(false)
  })

  it("a write that throws ends only that outbox's connection: the other outboxes of the pass are written, and the next passes", async () => {
    const sockets = Array.from({ length: 3 }, () => recordingSocket(0))
    const error = new Error("a socket that throws")
    ;(sockets[1]!.socket as unknown as { write: () => boolean }).write = () => {
      throw error
    }
    const failures: Array<unknown> = []
    let written = 0
    const flusher = new Flusher()
    const outboxes = sockets.map(({ transport }, i) =>
      new Outbox(flusher, transport, 10, (count) => (written += count), {
        writeFailed: (cause) => failures.push([i, cause])
      })
    )
    for (const outbox of outboxes) outbox.offer(Outbound.text("first"))
    await until(() => written === 2)
    expect(failures).toEqual([[1, error]])
    expect(outboxes[1]!.size).toBe(0)
    for (const outbox of [outboxes[0]!, outboxes[2]!]) outbox.offer(Outbound.text("second"))
    await until(() => written === 4)
    expect([sockets[0]!.batches.flat(), sockets[2]!.batches.flat()]).toEqual([["first", "second"], ["first", "second"]])
  })

  it("two flushers (two hubs in one process) are independent: one's long pass does not delay the other's writes", async () => {
    // Hub A: 300 sockets whose writes take 50 us, so its pass takes at least 15 ms, in slices of 1 ms.
    const slow = Array.from({ length: 300 }, () => recordingSocket(50))
    const flusherA = new Flusher()
    let writtenA = 0
    const outboxesA = slow.map(({ transport }) => new Outbox(flusherA, transport, 10, (count) => (writtenA += count), ignoreFailures))
    for (const outbox of outboxesA) outbox.offer(Outbound.text("a"))
    await nextTurn()
    // Hub B: one socket, queued while A's pass is under way.
    const fast = recordingSocket(0)
    let writtenB = 0
    const outboxB = new Outbox(new Flusher(), fast.transport, 10, (count) => (writtenB += count), ignoreFailures)
    outboxB.offer(Outbound.text("b"))
    await until(() => writtenB === 1)
    // B was written in its own pass, not after the 300 outboxes A had queued before it.
    expect(slow[299]!.batches).toEqual([])
    await until(() => writtenA === 300)
  })
})
