/**
 * One client's resume: replays the history after `since` that matches its
 * subscription, then switches it to live in the same synchronous step as
 * reading the history's last entry, so that it gets every event once.
 *
 * It advances in callbacks (the client's send buffer has room again, the
 * history got a new event), so it is synchronous code with its progress as
 * fields. The replay is paced by the client's send buffer and never drops it.
 * A resume the history cannot serve in full gets the newest events only (see `#skipTo`).
 */
import { type GapReason, type HistoryGapData, HubMessageType, Outbound } from "../protocol/Protocol.js"
import type { History } from "./History.js"
import type { Member } from "./Member.js"
import { type SubscriptionIndex, wants } from "./SubscriptionIndex.js"

const notice = (type: string, data: unknown) => Outbound.message(type, data, new Date())

export class Replay {
  /** The id of the last event replayed or skipped; `undefined`: from the oldest event held. */
  #cursor: string | undefined
  #replayed = 0
  /** A gap notice still to send. */
  #gap: HistoryGapData | undefined

  constructor(
    readonly member: Member,
    readonly since: string,
    private readonly index: SubscriptionIndex,
    private readonly history: History,
    /** The client's send buffer (`WS_SEND_BUFFER`): a replay waits for room below it. */
    private readonly sendBuffer: number,
    /** Most events replayed after a gap (`HISTORY_REPLAY_MAX`). */
    private readonly replayMax: number,
    /** Told of each gap notice (for the metrics). */
    private readonly onGap?: (reason: GapReason) => void
  ) {
    this.#cursor = since
  }

  /** Starts once the history is ready (stream mode: refilled). */
  start(): void {
    this.history.whenReady(() => {
      if (!this.#current) return
      const placed = this.history.place(this.since)
      if (placed._tag === "Gap") this.#skipTo(this.since, placed.reason)
      this.#step()
    })
  }

  /** Still the client's resume, and the client still connected. */
  get #current(): boolean {
    return this.member.replay === this && this.index.get(this.member.id) !== undefined
  }

  /**
   * History does not reach back to `since` (or cannot place it): a gap notice, then the newest `replayMax` events
   * held (`HISTORY_REPLAY_MAX`): such a client must reload anyway, and a whole history per resume is what made
   * unplaceable resumes the hub's biggest cost.
   */
  #skipTo(since: string, reason: GapReason) {
    this.#cursor = this.history.beforeNewest(this.replayMax)
    this.#gap = { since, oldest_available: this.history.after(this.#cursor)?.id ?? null, reason }
    this.onGap?.(reason)
  }

  readonly #step = (): void => {
    if (!this.#current) return
    const connection = this.member.connection
    // A connection that cannot say when it has room again (`whenBelow`) and is full is a slow consumer.
    const waitForRoom = () =>
      connection.whenBelow === undefined
        ? connection.kick("slow_consumer")
        : connection.whenBelow(this.sendBuffer, this.#step)
    this.history.trim(Date.now())
    for (;;) {
      // History moved past the cursor (the resume came too late, or the replay is too slow).
      if (this.#cursor !== undefined && !this.history.covers(this.#cursor)) this.#skipTo(this.#cursor, "missed")
      if (this.#gap !== undefined) {
        if (!connection.offer(notice(HubMessageType.historyGap, this.#gap))) return waitForRoom()
        this.#gap = undefined
      }
      const next = this.history.after(this.#cursor)
      if (next === undefined) return this.#atHead()
      const subscription = this.index.get(this.member.id)!
      if (wants(subscription, next.type, next.rooms)) {
        // Paced by the send buffer: a replay never fills it beyond its capacity (a live burst may, see Outbox.ts).
        if (connection.backlog !== undefined && connection.backlog() >= this.sendBuffer) return waitForRoom()
        if (!connection.offer(next.message)) return waitForRoom()
        this.#replayed++
      }
      this.#cursor = next.id
    }
  }

  /** Nothing more to replay: go live now, unless this instance is behind `since` or the buffer is still full. */
  #atHead(): void {
    const connection = this.member.connection
    const head = this.history.newest?.id ?? this.history.floor
    // `since` is newer than anything this instance has (another instance is ahead): wait for it.
    if (this.#cursor !== undefined && (head === undefined || this.#cursor > head)) {
      return this.history.whenAppended(this.#step)
    }
    // Not with a full buffer, or the first live event would drop the client as a slow consumer.
    const liveBelow = Math.max(1, Math.floor(this.sendBuffer / 2))
    if (connection.whenBelow !== undefined && connection.backlog !== undefined && connection.backlog() >= liveBelow) {
      return connection.whenBelow(liveBelow, this.#step)
    }
    connection.offer(notice(HubMessageType.live, { replayed: this.#replayed, last_id: this.#cursor ?? head ?? null }))
    this.member.goLive()
  }
}
