/**
 * The moves from the ingest queue into the stream, as a stream reader sees
 * them (the mover is `Ingest.ts`).
 *
 * A mover session moves the ingest queue's deliveries into the stream in
 * order, numbering them, and acknowledges each one (cumulatively) once the
 * stream has it. When the broker does not take one (returned or nacked), the
 * session ends without acknowledging it or anything after it: the ingest
 * queue gives all of them to the next session, which moves them again, in
 * order. So a reader takes a session's moves while they are numbered without
 * a hole, and skips the rest of a session after a hole (they come again).
 *
 * A session that ends after the stream took a move but before it acknowledged
 * it leaves that move in the stream and in the ingest queue: the next session
 * moves it again, marked redelivered. A reader recognises such a move by its
 * routing key and body among the moves of other sessions that were not yet
 * known to be acknowledged, and skips it.
 *
 * Every hub reads the same stream and decides the same way, so an event has
 * the same id (offset) on every instance.
 */

/** The headers a mover writes on each message it moves. */
export const moveHeaders = {
  /** The publisher's routing key (the stream is published to through the default exchange). */
  routingKey: "x-event-hub-routing-key",
  /** When the event entered the stream, in milliseconds since the epoch: its `timestamp` everywhere. */
  time: "x-event-hub-time",
  /** The mover session. */
  mover: "x-event-hub-mover",
  /** The move's number in its session; 0 is the session's first message, a marker that carries no event. */
  seq: "x-event-hub-seq",
  /** The highest number the session had acknowledged on the ingest queue when it made this move. */
  acked: "x-event-hub-acked",
  /** Present when the ingest queue delivered the message again (an earlier session may have moved it). */
  redelivered: "x-event-hub-redelivered"
} as const

export interface Move {
  readonly mover: string
  readonly seq: number
  readonly acked: number
  readonly redelivered: boolean
  readonly routingKey: string
  readonly body: Buffer
}

/** Reads a move from a stream message's headers, or `undefined` if the message was not moved by a mover. */
export const moveOf = (
  headers: Readonly<Record<string, unknown>>,
  routingKey: string,
  body: Buffer
): Move | undefined => {
  const mover = headers[moveHeaders.mover]
  const seq = headers[moveHeaders.seq]
  if (typeof mover !== "string" || typeof seq !== "number") return undefined
  const acked = headers[moveHeaders.acked]
  return {
    mover,
    seq,
    acked: typeof acked === "number" ? acked : 0,
    redelivered: headers[moveHeaders.redelivered] === true,
    routingKey,
    body
  }
}

/**
 * What to do with a move:
 * - `take`: a new event (or the session's marker);
 * - `after_hole`: the session has a hole before it: the next session moves it again;
 * - `moved_again`: another session's move of the same message, taken before;
 * - `read_again`: this session's move, already taken.
 */
export type Verdict = "take" | "after_hole" | "moved_again" | "read_again"

interface Taken {
  readonly seq: number
  readonly routingKey: string
  readonly body: Buffer
}

interface Session {
  /** The number expected next. */
  next: number
  /** A move was missing: the rest of the session is moved again by another. */
  holed: boolean
  /** Taken moves not yet known to be acknowledged: what a later session may move again. */
  unacked: Array<Taken>
}

export class Moves {
  readonly #sessions = new Map<string, Session>()

  /** Bounded: the sessions remembered, and each one's moves not yet known to be acknowledged. */
  constructor(readonly maxSessions = 64, readonly maxUnacked = 100_000) {}

  judge(move: Move): Verdict {
    let session = this.#sessions.get(move.mover)
    if (session === undefined) {
      // A session read from its first move, or from wherever this reader started.
      session = { next: move.seq, holed: false, unacked: [] }
      this.#sessions.set(move.mover, session)
      if (this.#sessions.size > this.maxSessions) this.#sessions.delete(this.#sessions.keys().next().value!)
    }
    if (session.holed) return "after_hole"
    if (move.seq < session.next) return "read_again"
    if (move.seq > session.next) {
      session.holed = true
      return "after_hole"
    }
    session.next = move.seq + 1
    this.#acknowledged(session, move.acked)
    if (move.seq === 0) return "take"
    if (move.redelivered && this.#takenElsewhere(move)) return "moved_again"
    session.unacked.push({ seq: move.seq, routingKey: move.routingKey, body: move.body })
    if (session.unacked.length > this.maxUnacked) session.unacked.shift()
    return "take"
  }

  #acknowledged(session: Session, acked: number) {
    let count = 0
    while (count < session.unacked.length && session.unacked[count]!.seq <= acked) count++
    if (count > 0) session.unacked.splice(0, count)
  }

  /**
   * A redelivered message that another session moved and this reader took. The moves a session made and did not
   * acknowledge come back first and in order, so everything that session made before the match was acknowledged.
   */
  #takenElsewhere(move: Move): boolean {
    for (const [mover, session] of this.#sessions) {
      if (mover === move.mover) continue
      const index = session.unacked.findIndex((taken) =>
        taken.routingKey === move.routingKey && taken.body.equals(move.body)
      )
      if (index >= 0) {
        session.unacked.splice(0, index + 1)
        return true
      }
    }
    return false
  }
}
