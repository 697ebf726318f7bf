/**
 * A client's bounded send buffer, and the writing of it.
 *
 * Waking one fiber per client for every event costs far more than the write
 * itself (measured: tens of microseconds per wake-up, against about one for a
 * corked write), so writes do not happen in per-client fibers. A broadcast
 * appends the event's pre-built frame to each recipient's outbox and marks
 * it; the marked outboxes are written in order, each with all it holds in one
 * write, by a flush that runs in slices of about a millisecond
 * (`setImmediate` between two slices). Between two slices the event loop
 * takes in new events: an outbox not yet written in this pass writes the new
 * frames together with the older ones, so an event waits at most for one pass
 * over the clients, never for a whole pass to end first. When the hub falls
 * behind (see `behind`), a pass runs to its end before new events come in.
 * Each socket still has exactly one writer, and the order of its messages is
 * the order they were queued in.
 *
 * Backpressure is explicit: while the socket's own buffer is above its
 * high-water mark the outbox stops writing and keeps queueing, up to its
 * capacity (`WS_SEND_BUFFER`); `offer` then returns `false` and the hub
 * drops the client. Only then: a burst that fills the outbox of a client
 * whose socket takes data is the hub's backlog, never blamed on the client. A write stuck for `WS_WRITE_TIMEOUT` is detected on the
 * hub's tick through `blockedSince`.
 */
import type { Duplex } from "node:stream"
import { WebSocket } from "ws"
import type { Outbound } from "../protocol/Protocol.js"

/** Outboxes with something to write, in the order they were marked; those before `next` are written. */
let dirty: Array<Outbox> = []
let next = 0
let flushScheduled = false
/**
 * Set when a message is queued for a client whose socket takes data but whose outbox already holds many
 * (`behindAt`): the hub itself is behind (events come faster than it writes them, or in bursts), not that
 * client. The flush then finishes its pass before the event loop takes in more events, as a flush without
 * slices would: a fast client is never disconnected for the hub's own slowness (new events wait in RabbitMQ or
 * in the publisher's request), and a burst is written in few large writes.
 */
let behind = false
/** `behindAt` for the default `WS_SEND_BUFFER` (256); at most half of a smaller one. */
const behindAtMost = 32

/**
 * A client whose socket takes data holds at most this many times its capacity (a burst written by the next flush);
 * producers of bursts yield to the flush long before (the array POST every 64 events).
 */
const overflowFactor = 16

/** How long one slice of a flush may write before the event loop runs again. */
const sliceMillis = 1

/** Shared by every outbox that has no waiter (nearly all of them): never written to. */
const noWaiters: Array<() => void> = []

const flushSlice = () => {
  const deadline = performance.now() + sliceMillis
  try {
    while (next < dirty.length) {
      dirty[next++].flush()
      // Reading the clock costs far less than a write; every 16 writes is often enough.
      if ((next & 15) === 0 && !behind && performance.now() >= deadline) break
    }
  } finally {
    // Even if a flush threw (a waiter's bug): the other outboxes must still be written.
    afterSlice()
  }
}

const afterSlice = () => {
  if (next < dirty.length) {
    // Forget the written part once it is most of the array, so that a flush that never ends does not grow it.
    if (next >= 1024 && next * 2 >= dirty.length) {
      dirty = dirty.slice(next)
      next = 0
    }
    setImmediate(flushSlice)
    return
  }
  dirty.length = 0
  next = 0
  flushScheduled = false
  behind = false
}

export class Outbox {
  #pending: Array<Outbound> = []
  #marked = false
  #waiters: Array<() => void> = noWaiters
  /**
   * Without compression, frames are pre-built and shared; with it, `ws` must frame (and compress) each one.
   * Extensions are settled by the handshake, before the outbox exists (`ws.extensions` builds a string per call).
   */
  readonly #compressed: boolean
  readonly #behindAt: number
  /** Since when the socket has refused more data (`Date.now()`), or `undefined`. */
  blockedSince: number | undefined

  constructor(
    readonly ws: WebSocket,
    readonly socket: Duplex,
    readonly capacity: number,
    /** Called with the number of messages handed to the socket. */
    readonly onWritten: (count: number) => void
  ) {
    this.#compressed = ws.extensions.includes("permessage-deflate")
    this.#behindAt = Math.max(1, Math.min(behindAtMost, Math.floor(capacity / 2)))
  }

  get size(): number {
    return this.#pending.length
  }

  /**
   * Queues a message; `false` (and nothing queued) when the buffer is full while the socket refuses data: the
   * client is not reading. While the socket takes data, the messages waiting are the hub's own backlog (a burst
   * fanned out before the next flush), not the client's fault: they are queued up to `overflowFactor` times the
   * capacity, and written by the next flush. Never blocks.
   */
  offer(message: Outbound): boolean {
    const queued = this.#pending.length
    if (queued >= this.capacity && (this.blockedSince !== undefined || queued >= this.capacity * overflowFactor)) {
      return false
    }
    if (queued >= this.#behindAt && this.blockedSince === undefined) behind = true
    this.#pending.push(message)
    this.#schedule()
    return true
  }

  /** Calls `ready` once there is room for another message (at once if there is). */
  whenRoom(ready: () => void): void {
    this.whenBelow(this.capacity, ready)
  }

  /** Calls `ready` once fewer than `size` messages are queued (at once if so). */
  whenBelow(size: number, ready: () => void): void {
    if (this.#pending.length < size) ready()
    else if (this.#waiters === noWaiters) this.#waiters = [ready]
    else this.#waiters.push(ready)
  }

  #schedule() {
    if (this.#marked) return
    this.#marked = true
    dirty.push(this)
    if (!flushScheduled) {
      flushScheduled = true
      setImmediate(flushSlice)
    }
  }

  /** Writes everything queued, in one corked batch, unless the socket is blocked or closing. */
  flush(): void {
    this.#marked = false
    const messages = this.#pending
    if (messages.length === 0 || this.blockedSince !== undefined || this.ws.readyState !== WebSocket.OPEN) return
    let accepted = true
    if (!this.#compressed) {
      if (messages.length === 1) {
        // Corking one write only costs: it goes through `writev`.
        accepted = this.socket.write(messages[0].frame)
      } else {
        this.socket.cork()
        for (const message of messages) accepted = this.socket.write(message.frame)
        this.socket.uncork()
      }
    } else {
      for (const message of messages) this.ws.send(message.payload, { binary: false })
      accepted = this.socket.writableLength < this.socket.writableHighWaterMark
    }
    const written = messages.length
    // Nothing above can queue a message (writes report errors and drains asynchronously): the array is reused.
    messages.length = 0
    this.onWritten(written)
    if (!accepted) {
      this.blockedSince = Date.now()
      this.socket.once("drain", () => {
        this.blockedSince = undefined
        if (this.#pending.length > 0) this.#schedule()
      })
    }
    if (this.#waiters === noWaiters) return
    const waiters = this.#waiters
    this.#waiters = noWaiters
    for (const ready of waiters) ready()
  }
}
