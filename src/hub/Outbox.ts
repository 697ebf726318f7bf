/**
 * A client's bounded send buffer, written by its hub's `Flusher` (see
 * Flusher.ts): a broadcast appends the event's message to each recipient's
 * outbox and marks it; the flusher hands everything an outbox holds to its
 * transport in one batch. The order of a socket's messages is the order they
 * were queued in.
 *
 * Backpressure is explicit: while the socket's own buffer is above its
 * high-water mark the outbox stops writing and keeps queueing, up to its
 * capacity (`WS_SEND_BUFFER`); `offer` then returns `false` and the hub
 * drops the client. Only then: a burst that fills the outbox of a client
 * whose socket takes data is the hub's backlog, never blamed on the client. A write stuck for `WS_WRITE_TIMEOUT` is detected on the
 * hub's tick through `blockedSince`.
 *
 * The outbox knows no transport: each one (WebSocket, Server-Sent Events)
 * encodes and writes behind `Transport`.
 */
import type { Effect } from "effect"
import type { DisconnectReason, Outbound } from "../protocol/Protocol.js"
import type { Flushable, Flusher } from "./Flusher.js"

/** Queued messages past which the hub is behind, for the default `WS_SEND_BUFFER` (256); at most half of a smaller one. */
const behindAtMost = 32

/**
 * A client whose socket takes data holds at most this many times its capacity (a burst written by the next flush);
 * producers of bursts wait for the flush long before (`Hub.broadcast` once an outbox is full, see `Flusher.congest`).
 */
const overflowFactor = 16

/**
 * How messages reach one client: a WebSocket (connection/WebSocketTransport.ts) or a Server-Sent Events stream
 * (connection/SseTransport.ts), each encoding them its own way (built once per message, shared by every client).
 * Writes never block: as a stream's `write`, they return `false` once the socket's buffer is past its high-water
 * mark, and `onDrain` tells when it has emptied.
 */
export interface Transport {
  /** The socket takes writes: not closing, not closed. */
  readonly open: boolean
  /** Writes one message; `false` when the socket's buffer is now full. */
  write(message: Outbound): boolean
  /** Writes messages in one batch (one corked write, one chunk); `false` as for `write`. */
  writeMany(messages: ReadonlyArray<Outbound>): boolean
  /** Bytes handed to the socket so far, encodings included (for the metrics). */
  readonly bytesWritten: number
  /** Calls `drained` once, when the socket's buffer has emptied after a write that returned `false`. */
  onDrain(drained: () => void): void
  /**
   * Ends the client's connection for `reason` (a close frame, the end of the response); what is queued is written
   * first by the caller. Completes once the connection is closed, or given up on.
   */
  close(reason: DisconnectReason): Effect.Effect<void>
}

/** Who an outbox writes for: told when a write to its transport throws (see `Flushable.failed`). */
export interface OutboxOwner {
  writeFailed(error: unknown): void
}

/** Shared by every outbox that has no waiter (nearly all of them): never written to. */
const noWaiters: Array<() => void> = []

export class Outbox implements Flushable {
  #pending: Array<Outbound> = []
  #marked = false
  #waiters: Array<() => void> = noWaiters
  readonly #behindAt: number
  /** Since when the socket has refused more data (`Date.now()`), or `undefined`. */
  blockedSince: number | undefined

  constructor(
    readonly flusher: Flusher,
    readonly transport: Transport,
    readonly capacity: number,
    /** Called with the number of messages handed to the socket, and their bytes. */
    readonly onWritten: (count: number, bytes: number) => void,
    /** Told if a write throws: its connection ends. */
    readonly owner: OutboxOwner
  ) {
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
    if (queued >= this.#behindAt && this.blockedSince === undefined) {
      if (queued >= this.capacity) this.flusher.congest()
      else this.flusher.fallBehind()
    }
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
    this.flusher.mark(this)
  }

  /** Writes everything queued, in one batch, unless the socket is blocked or closing. */
  flush(): void {
    this.#marked = false
    const messages = this.#pending
    const transport = this.transport
    if (messages.length === 0 || this.blockedSince !== undefined || !transport.open) return
    const before = transport.bytesWritten
    // One message is written alone: a batch of one only costs (a corked write goes through `writev`).
    const accepted = messages.length === 1 ? transport.write(messages[0]) : transport.writeMany(messages)
    const written = messages.length
    // Nothing above can queue a message (writes report errors and drains asynchronously): the array is reused.
    messages.length = 0
    this.onWritten(written, transport.bytesWritten - before)
    if (!accepted) {
      this.blockedSince = Date.now()
      transport.onDrain(() => {
        this.blockedSince = undefined
        if (this.#pending.length > 0) this.#schedule()
      })
    }
    if (this.#waiters === noWaiters) return
    const waiters = this.#waiters
    this.#waiters = noWaiters
    for (const ready of waiters) ready()
  }

  /** A write threw (see Flusher.ts): what is queued, and whoever waits for room, is dropped; the owner is told. */
  failed(error: unknown): void {
    this.#pending.length = 0
    this.#waiters = noWaiters
    this.owner.writeFailed(error)
  }
}
