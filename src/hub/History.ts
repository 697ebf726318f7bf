/**
 * The event history: the latest events broadcast, already encoded, so that a
 * client that comes back with the id of the last event it received (`since`)
 * gets exactly what it missed.
 *
 * Every event gets an id when it is broadcast. Ids are fixed-width strings
 * that sort, as plain strings, in broadcast order:
 *
 * - classic queue mode: `<run>-<sequence>`, where `<run>` (13 digits of the
 *   start time in milliseconds, then 4 random hex digits) names this run of
 *   this hub instance and `<sequence>` counts its events (16 digits). An id of
 *   another run or instance cannot be placed: history "does not reach back".
 * - stream mode: the RabbitMQ stream offset, 20 digits, the same on every hub
 *   instance. An event broadcast by this instance only (the library's
 *   `hub.broadcast`, `POST /api/v1/events`) gets `<last offset>.<sequence>`
 *   (10 digits), which sorts after that offset and before the next.
 *
 * The history is bounded by count and by age. It remembers the newest id it
 * has let go of (`floor`): a `since` below it cannot be served in full.
 * JavaScript runs one thing at a time, so appending (in `Hub.broadcast`,
 * together with the fan-out) and reading happen in single synchronous steps.
 */
import { Context, Duration, Effect, Layer, Option } from "effect"
import { HubConfig, RabbitMqConfig } from "../config/Config.js"
import type { GapReason, Outbound } from "../protocol/Protocol.js"

export interface HistoryEntry {
  readonly id: string
  readonly type: string
  /** The encoded message, id included: replayed as is. */
  readonly message: Outbound
  /** The rooms the event belongs to (see `Hub.join`). */
  readonly rooms: ReadonlyArray<string>
  /** When it was appended (`Date.now()`), for the age limit. */
  readonly at: number
}

export type IdMode = "queue" | "stream"

/** Longest `since` accepted; anything longer is malformed. */
export const maxIdLength = 64
/**
 * Every form of id a hub issues, in either mode (see above): anything else,
 * such as `undefined` from a client that had no id yet, is not an id.
 */
const idForms = /^\d{13}[0-9a-f]{4}-\d{16}$|^\d{20}(\.\d{10})?$|^\.\d{10}$/

/** Is `since` of a form the hub issues (else a resume from it is refused as malformed)? */
export const isEventId = (since: string): boolean => since.length <= maxIdLength && idForms.test(since)

const pad = (n: number, width: number) => String(n).padStart(width, "0")

/** A stream offset as an event id (20 digits, so ids compare as strings). */
export const streamId = (offset: number): string => pad(offset, 20)

/** How `since` relates to this history. */
export type Placement =
  /** Not an id at all. */
  | { readonly _tag: "Malformed" }
  /** Older than what it holds (`missed`), or an id it cannot place: another run, instance or mode (`unknown`). */
  | { readonly _tag: "Gap"; readonly reason: GapReason }
  /** The history holds everything after `since`. */
  | { readonly _tag: "Covered" }

export class History {
  #entries: Array<HistoryEntry> = []
  /** Index of the oldest live entry in `#entries` (evicted entries are removed in batches). */
  #start = 0
  #mode: IdMode = "queue"
  readonly #run: string
  #sequence = 0
  /** In stream mode: the id of the last stream event appended, the prefix of local ids. */
  #lastStreamId = ""
  #ready = true
  #readyWaiters: Array<() => void> = []
  #appendWaiters: Array<() => void> = []
  /** Ids up to this one are no longer (or were never) held; `undefined`: nothing is missing. */
  floor: string | undefined

  constructor(readonly maxEvents: number, readonly maxAgeMs: number, now: number = Date.now()) {
    this.#run = pad(now, 13) + Math.floor(Math.random() * 0x10000).toString(16).padStart(4, "0")
  }

  get mode(): IdMode {
    return this.#mode
  }

  /**
   * Switches to stream ids (`HubHistory.layer` does, for a source in stream
   * mode, before any client can connect). The history is not ready until the
   * source has refilled it from the stream (`markReady`); resumes wait for that.
   */
  useStreamIds(): void {
    this.#mode = "stream"
    this.#ready = false
  }

  get ready(): boolean {
    return this.#ready
  }

  markReady(): void {
    if (this.#ready) return
    this.#ready = true
    const waiters = this.#readyWaiters
    this.#readyWaiters = []
    for (const waiter of waiters) waiter()
  }

  /** Calls `ready` once the history is ready (at once if it is). */
  whenReady(ready: () => void): void {
    if (this.#ready) ready()
    else this.#readyWaiters.push(ready)
  }

  /** Calls `appended` after the next append. */
  whenAppended(appended: () => void): void {
    this.#appendWaiters.push(appended)
  }

  /** The id of the next event broadcast by this instance (not from the stream). */
  nextLocalId(): string {
    this.#sequence++
    return this.#mode === "queue"
      ? `${this.#run}-${pad(this.#sequence, 16)}`
      : `${this.#lastStreamId}.${pad(this.#sequence, 10)}`
  }

  get size(): number {
    return this.#entries.length - this.#start
  }

  get oldest(): HistoryEntry | undefined {
    return this.#entries[this.#start]
  }

  get newest(): HistoryEntry | undefined {
    return this.size === 0 ? undefined : this.#entries[this.#entries.length - 1]
  }

  /** Appends an event (ids must grow). `fromSource`: its id is the source's, the prefix of later local ids. */
  append(entry: HistoryEntry, fromSource = false): void {
    if (fromSource) this.#lastStreamId = entry.id
    this.#entries.push(entry)
    if (this.size > this.maxEvents) this.#evict(1)
    this.trim(entry.at)
    const waiters = this.#appendWaiters
    if (waiters.length > 0) {
      this.#appendWaiters = []
      for (const waiter of waiters) waiter()
    }
  }

  /**
   * Stream mode: the source read `offset` first (on start), or read `offset`
   * after a hole (retention removed what it had not read yet). Nothing before
   * `offset` is held any more.
   */
  startsAt(offset: number): void {
    if (this.size > 0) this.#evict(this.size)
    if (offset > 0) this.floor = streamId(offset - 1)
  }

  /** Drops the entries older than the age limit. */
  trim(now: number): void {
    const limit = now - this.maxAgeMs
    let count = 0
    while (this.#start + count < this.#entries.length && this.#entries[this.#start + count]!.at < limit) count++
    if (count > 0) this.#evict(count)
  }

  #evict(count: number) {
    this.floor = this.#entries[this.#start + count - 1]!.id
    this.#start += count
    // Compact now and then, not on every eviction.
    if (this.#start >= 1024 && this.#start * 2 >= this.#entries.length) {
      this.#entries = this.#entries.slice(this.#start)
      this.#start = 0
    }
  }

  /** Where a replay of the newest `count` entries starts: the id before them, `undefined` when all are held. */
  beforeNewest(count: number): string | undefined {
    return this.size > count ? this.#entries[this.#entries.length - count - 1]!.id : undefined
  }

  /** Where `since` stands: malformed, not reachable (gap), or covered. */
  place(since: string): Placement {
    if (!isEventId(since)) return { _tag: "Malformed" }
    if (this.#mode === "queue" && !since.startsWith(`${this.#run}-`)) return { _tag: "Gap", reason: "unknown" }
    if (this.#mode === "stream" && !/^\d{20}(\.\d{10})?$|^\.\d{10}$/.test(since)) return { _tag: "Gap", reason: "unknown" }
    return this.covers(since) ? { _tag: "Covered" } : { _tag: "Gap", reason: "missed" }
  }

  /** True when every event after `cursor` that this instance broadcast is still held. */
  covers(cursor: string): boolean {
    return this.floor === undefined || cursor >= this.floor
  }

  /** The oldest entry after `cursor`, or `undefined` when `cursor` is at (or past) the newest. */
  after(cursor: string | undefined): HistoryEntry | undefined {
    if (cursor === undefined) return this.oldest
    // Binary search: ids grow with the index.
    let low = this.#start
    let high = this.#entries.length
    while (low < high) {
      const middle = (low + high) >>> 1
      if (this.#entries[middle]!.id <= cursor) low = middle + 1
      else high = middle
    }
    return this.#entries[low]
  }
}

const make = Effect.map(
  HubConfig,
  (config) => new History(config.historyMaxEvents, Duration.toMillis(config.historyMaxAge))
)

/**
 * The hub's history as a service: the hub appends to it, resumes read it, and
 * the RabbitMQ source refills it in stream mode.
 */
export class HubHistory extends Context.Service<HubHistory, History>()("event-hub/History") {
  /**
   * With the RabbitMQ source's settings: in stream mode (with a broker) the history uses stream ids from the
   * start, so no client can resume against local ids first, and is ready once the source has refilled it.
   */
  static readonly layer: Layer.Layer<HubHistory, never, HubConfig | RabbitMqConfig> = Layer.effect(
    HubHistory,
    Effect.gen(function*() {
      const history = yield* make
      const rabbitmq = yield* RabbitMqConfig
      if (rabbitmq.mode === "stream" && Option.isSome(rabbitmq.url)) history.useStreamIds()
      return history
    })
  )

  /** Without a source that places events: local ids only (a hub without RabbitMQ, or fed by the library). */
  static readonly layerLocal: Layer.Layer<HubHistory, never, HubConfig> = Layer.effect(HubHistory, make)
}
