/**
 * The writer of every outbox of one hub: one pass writes each marked outbox's
 * pending frames in one corked write, in slices of about a millisecond
 * (`setImmediate` between two slices).
 *
 * A writer fiber per client would be woken once per event per client, which
 * costs far more than the write itself (see docs/performance.md), so the hub
 * departs here from "one writer fiber per client": each socket still has
 * exactly one writer, this pass. Between two slices the event loop takes in
 * new events: an outbox not yet written in this pass writes them together
 * with the older ones, so an event waits at most one pass over the clients.
 * When the hub falls behind (`behind`), a pass runs to its end before new
 * events come in, so that a burst is never blamed on a client that reads.
 *
 * One instance per hub, created by the hub's layer: two hubs in one process
 * flush independently.
 *
 * A write that throws ends that outbox's connection (`Flushable.failed`), and
 * the pass goes on with the others; a callback of the flusher's own that throws
 * (the end of a pass, a producer waiting for it) is reported (`onError`) and
 * the next pass runs as usual. Nothing thrown leaves the `setImmediate`.
 */

/** What the flusher writes: an outbox with something pending. */
export interface Flushable {
  flush(): void
  /** `flush` threw `error`: what it held is dropped, and the connection it writes for ends. Never throws. */
  failed(error: unknown): void
}

/** How long one slice of a flush may write before the event loop runs again. */
const sliceMillis = 1

/** Events of one pass whose delivery latency is measured; a burst beyond it is timed by its first events only. */
const maxTimedPerPass = 4096

export class Flusher {
  /** Outboxes with something to write, in the order they were marked; those before `#next` are written. */
  #dirty: Array<Flushable> = []
  #next = 0
  #scheduled = false
  /**
   * Set when a message is queued for a client whose socket takes data but whose outbox already holds many: the hub
   * itself is behind (events come faster than it writes them, or in bursts), not that client. The pass then runs to
   * its end before the event loop takes in more events, as a flush without slices would: a fast client is never
   * disconnected for the hub's own slowness (new events wait in RabbitMQ or in the publisher's request).
   */
  #behind = false
  /**
   * Set when a client whose socket takes data has a full outbox (`WS_SEND_BUFFER`): a producer in a loop should wait
   * for the pass (`whenIdle`) before it adds more, rather than fill the outbox past its capacity.
   */
  #congested = false
  /** Called once the pass under way has written everything (producers waiting for it, see `whenIdle`). */
  #idleWaiters: Array<() => void> = []
  /**
   * When each event queued for this pass entered the hub (`performance.now()`), for the delivery latency: a fixed
   * buffer, reused (no allocation per event or per pass); events past its size in one pass are not timed.
   */
  readonly #arrivals = new Float64Array(maxTimedPerPass)
  #timed = 0
  readonly #onPassEnd: ((arrivals: Float64Array, count: number, end: number) => void) | undefined
  readonly #onError: (what: string, error: unknown) => void

  constructor(
    /** Called at the end of each pass with the arrivals of the events it wrote (see `arrived`). */
    onPassEnd?: (arrivals: Float64Array, count: number, end: number) => void,
    /** Told when `onPassEnd` or a producer waiting for a pass throws (`what` failed). */
    onError: (what: string, error: unknown) => void = () => undefined
  ) {
    this.#onPassEnd = onPassEnd
    this.#onError = onError
  }

  /** An event that entered at `at` was queued for the pass under way: its latency ends with the pass. */
  arrived(at: number): void {
    // Nothing scheduled: every offer failed (slow consumers were dropped), nothing will be written.
    if (this.#scheduled && this.#timed < maxTimedPerPass) this.#arrivals[this.#timed++] = at
  }

  get congested(): boolean {
    return this.#congested
  }

  /** An outbox of a client that reads is full: the pass under way (or the next) runs to its end; producers wait. */
  congest(): void {
    this.#behind = true
    this.#congested = true
  }

  /** Calls `ready` once the pass under way (if any) has written everything. */
  whenIdle(ready: () => void): void {
    if (!this.#scheduled) ready()
    else this.#idleWaiters.push(ready)
  }

  /** Queues `outbox` for the next pass (the caller marks it, so that it is queued once). */
  mark(outbox: Flushable): void {
    this.#dirty.push(outbox)
    if (!this.#scheduled) {
      this.#scheduled = true
      setImmediate(this.#slice)
    }
  }

  /** The hub is behind: the pass under way (or the next) runs to its end. */
  fallBehind(): void {
    this.#behind = true
  }

  readonly #slice = () => {
    const deadline = performance.now() + sliceMillis
    while (this.#next < this.#dirty.length) {
      const outbox = this.#dirty[this.#next++]
      try {
        outbox.flush()
      } catch (error) {
        // One connection's write (or a waiter it calls) failed: that connection ends, the others are written.
        outbox.failed(error)
      }
      // Reading the clock costs far less than a write; every 16 writes is often enough.
      if ((this.#next & 15) === 0 && !this.#behind && performance.now() >= deadline) break
    }
    this.#afterSlice()
  }

  #afterSlice() {
    if (this.#next < this.#dirty.length) {
      // Forget the written part once it is most of the array, so that a flush that never ends does not grow it.
      if (this.#next >= 1024 && this.#next * 2 >= this.#dirty.length) {
        this.#dirty = this.#dirty.slice(this.#next)
        this.#next = 0
      }
      setImmediate(this.#slice)
      return
    }
    this.#dirty.length = 0
    this.#next = 0
    this.#scheduled = false
    this.#behind = false
    this.#congested = false
    if (this.#timed > 0) {
      const timed = this.#timed
      this.#timed = 0
      try {
        this.#onPassEnd?.(this.#arrivals, timed, performance.now())
      } catch (error) {
        this.#onError("the delivery latency of a pass", error)
      }
    }
    if (this.#idleWaiters.length === 0) return
    const waiters = this.#idleWaiters
    this.#idleWaiters = []
    for (const ready of waiters) {
      try {
        ready()
      } catch (error) {
        this.#onError("a producer waiting for a pass", error)
      }
    }
  }
}
