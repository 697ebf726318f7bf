/**
 * A client's bounded send buffer, written by its hub's `Flusher` (see
 * Flusher.ts): a broadcast appends the event's pre-built frame to each
 * recipient's outbox and marks it; the flusher writes everything an outbox
 * holds in one corked write. The order of a socket's messages is the order
 * they were queued in.
 *
 * Backpressure is explicit: while the socket's own buffer is above its
 * high-water mark the outbox stops writing and keeps queueing, up to its
 * capacity (`WS_SEND_BUFFER`); `offer` then returns `false` and the hub
 * drops the client. Only then: a burst that fills the outbox of a client
 * whose socket takes data is the hub's backlog, never blamed on the client. A write stuck for `WS_WRITE_TIMEOUT` is detected on the
 * hub's tick through `blockedSince`.
 *
 * The same outbox serves an SSE stream (no `ws`): it then writes its messages'
 * SSE encodings (`Outbound.sse`, built once and shared), joined, in one write
 * to the HTTP response per flush.
 */
import { WebSocket } from "ws"
import type { Outbound } from "../protocol/Protocol.js"
import type { Flushable, Flusher } from "./Flusher.js"

/** Queued messages past which the hub is behind, for the default `WS_SEND_BUFFER` (256); at most half of a smaller one. */
const behindAtMost = 32

/**
 * A client whose socket takes data holds at most this many times its capacity (a burst written by the next flush);
 * producers of bursts wait for the flush long before (`Hub.broadcast` once an outbox is full, see `Flusher.congest`).
 */
const overflowFactor = 16

/** What an outbox writes to: a WebSocket's TCP socket (raw frames) or an SSE stream's HTTP response. */
export interface Sink {
  cork(): void
  uncork(): void
  write(chunk: Buffer): boolean
  once(event: "drain", listener: () => void): unknown
  readonly writableLength: number
  readonly writableHighWaterMark: number
  readonly destroyed: boolean
  readonly writableEnded: boolean
}

/** Shared by every outbox that has no waiter (nearly all of them): never written to. */
const noWaiters: Array<() => void> = []

/** The SSE encodings of `messages`, in one buffer. */
const joinSse = (messages: ReadonlyArray<Outbound>): Buffer => {
  let length = 0
  for (const message of messages) length += message.sse.length
  const joined = Buffer.allocUnsafe(length)
  let offset = 0
  for (const message of messages) offset += message.sse.copy(joined, offset)
  return joined
}

export class Outbox implements Flushable {
  #pending: Array<Outbound> = []
  #marked = false
  #waiters: Array<() => void> = noWaiters
  /**
   * Without compression, frames are pre-built and shared; with it, `ws` must frame (and compress) each one.
   * Extensions are settled by the handshake, before the outbox exists (`ws.extensions` builds a string per call).
   */
  readonly #compressed: boolean
  /** No WebSocket: an SSE stream, written with each message's SSE encoding. */
  readonly #sse: boolean
  readonly #behindAt: number
  /** Since when the socket has refused more data (`Date.now()`), or `undefined`. */
  blockedSince: number | undefined

  constructor(
    readonly flusher: Flusher,
    /** `undefined`: `socket` is an SSE stream's HTTP response. */
    readonly ws: WebSocket | undefined,
    readonly socket: Sink,
    readonly capacity: number,
    /** Called with the number of messages handed to the socket, and their bytes. */
    readonly onWritten: (count: number, bytes: number) => void
  ) {
    this.#compressed = ws !== undefined && ws.extensions.includes("permessage-deflate")
    this.#sse = ws === undefined
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

  #open(): boolean {
    return this.ws !== undefined
      ? this.ws.readyState === WebSocket.OPEN
      : !this.socket.writableEnded && !this.socket.destroyed
  }

  /** Writes everything queued, in one corked batch, unless the socket is blocked or closing. */
  flush(): void {
    this.#marked = false
    const messages = this.#pending
    if (messages.length === 0 || this.blockedSince !== undefined || !this.#open()) return
    let accepted = true
    let bytes = 0
    if (this.#sse) {
      // One HTTP chunk per flush: each write to a response costs a chunk of its own, and more than the copy.
      const chunk = messages.length === 1 ? messages[0].sse : joinSse(messages)
      accepted = this.socket.write(chunk)
      bytes = chunk.length
    } else if (!this.#compressed) {
      if (messages.length === 1) {
        // Corking one write only costs: it goes through `writev`.
        accepted = this.socket.write(messages[0].frame)
        bytes = messages[0].frame.length
      } else {
        this.socket.cork()
        for (const message of messages) {
          const frame = message.frame
          accepted = this.socket.write(frame)
          bytes += frame.length
        }
        this.socket.uncork()
      }
    } else {
      // Before compression: what the client receives once inflated.
      for (const message of messages) {
        this.ws!.send(message.payload, { binary: false })
        bytes += message.payload.length
      }
      accepted = this.socket.writableLength < this.socket.writableHighWaterMark
    }
    const written = messages.length
    // Nothing above can queue a message (writes report errors and drains asynchronously): the array is reused.
    messages.length = 0
    this.onWritten(written, bytes)
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
