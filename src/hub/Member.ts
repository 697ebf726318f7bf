/**
 * What the hub knows of one connected client: its id, the connection it
 * writes to, and whether it is catching up from the history (then it gets no
 * live events: its replay sends them).
 */
import type { DisconnectReason, Outbound } from "../protocol/Protocol.js"

export type ClientId = number

/** How a client is connected: for per-transport counts (metrics); `dashboard`: an open dashboard's tail (http/Dashboard.ts). */
export type TransportKind = "ws" | "sse" | "dashboard"

/** The hub's side of a client connection (a WebSocket, an SSE stream, or a test's fake). */
export interface Connection {
  readonly id: ClientId
  /** How the client is connected, for the metrics; `ws` when absent. */
  readonly transport?: TransportKind
  /** Queues a message for the client; `false` when its send buffer is full. Never blocks. */
  readonly offer: (message: Outbound) => boolean
  /** Asks the client to leave for `reason`. Never blocks; later calls are ignored. */
  readonly kick: (reason: DisconnectReason) => void
  /** Called on every tick: sends a ping when due, kicks the client if it went silent or a write is stuck. */
  readonly keepAlive: (now: number) => void
  /**
   * Calls `ready` once fewer than `size` messages wait in the send buffer (at
   * once if so): a replay is paced by it instead of overflowing the buffer.
   * Without it, a replay that finds the connection full drops it as a slow
   * consumer, as a broadcast does.
   */
  readonly whenBelow?: (size: number, ready: () => void) => void
  /** Messages waiting in the send buffer (with `whenBelow`). */
  readonly backlog?: () => number
}

/**
 * A resume under way (a `Replay`, see Replay.ts): the member only holds it, so that a newer resume replaces it and
 * an old one sees that it is no longer current.
 */
export interface ResumeUnderWay {
  readonly since: string
}

export class Member {
  /** The resume under way, if any; a newer one replaces it. */
  replay: ResumeUnderWay | undefined = undefined

  constructor(
    readonly connection: Connection,
    /** True while the client catches up (registered to resume, or replaying): it receives no live events. */
    public catchingUp: boolean
  ) {}

  get id(): ClientId {
    return this.connection.id
  }

  /** The replay is over (or given up): the client is live from now on. */
  goLive(): void {
    this.replay = undefined
    this.catchingUp = false
  }
}
