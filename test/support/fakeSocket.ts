/**
 * A fake clock and a fake WebSocket for the client's state machine: the test plays the hub, frame by frame, and
 * moves time by hand.
 */
import type { Environment, WebSocketLike } from "../../src/client/client.js"

export class FakeClock implements Environment {
  time = 1_700_000_000_000
  private timers: Array<{ id: number; at: number; callback: () => void }> = []
  private nextId = 1
  random = () => 0.5
  readonly listeners = new Map<string, Set<() => void>>()
  readonly network = {
    addEventListener: (type: string, listener: () => void) => {
      if (!this.listeners.has(type)) this.listeners.set(type, new Set())
      this.listeners.get(type)!.add(listener)
    },
    removeEventListener: (type: string, listener: () => void) => void this.listeners.get(type)?.delete(listener)
  }

  readonly setTimeout = (callback: () => void, ms: number) => {
    const id = this.nextId++
    this.timers.push({ id, at: this.time + ms, callback })
    return id
  }
  readonly clearTimeout = (handle: unknown) => {
    this.timers = this.timers.filter((timer) => timer.id !== handle)
  }
  readonly now = () => this.time

  /** Moves time forward, running every timer that falls due, in order. */
  advance(ms: number): void {
    const end = this.time + ms
    for (;;) {
      const due = this.timers.filter((timer) => timer.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0]
      if (!due) break
      this.timers = this.timers.filter((timer) => timer !== due)
      this.time = Math.max(this.time, due.at)
      due.callback()
    }
    this.time = end
  }

  /** When the next timer is due, relative to now (undefined: none). */
  get nextDelay(): number | undefined {
    const at = Math.min(...this.timers.map((timer) => timer.at))
    return Number.isFinite(at) ? at - this.time : undefined
  }

  dispatch(type: "online" | "offline"): void {
    for (const listener of this.listeners.get(type) ?? []) listener()
  }
}

export class FakeSocket implements WebSocketLike {
  static instances: Array<FakeSocket> = []
  readyState = 0
  readonly sent: Array<string> = []
  onopen: ((event: unknown) => void) | null = null
  onmessage: ((event: { data: unknown }) => void) | null = null
  onclose: ((event: { code: number; reason: string }) => void) | null = null
  onerror: ((event: unknown) => void) | null = null

  constructor(readonly url: string, readonly protocols?: string | Array<string>) {
    FakeSocket.instances.push(this)
  }

  static get last(): FakeSocket {
    return FakeSocket.instances[FakeSocket.instances.length - 1]!
  }

  send(data: string): void {
    this.sent.push(data)
  }
  close(): void {
    this.readyState = 3
  }

  // The hub's side
  open(): void {
    this.readyState = 1
    this.onopen?.({})
  }
  message(message: object | string): void {
    this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) })
  }
  event(seq: number, type = "test.event"): void {
    this.message({ type, data: { seq }, timestamp: new Date(0).toISOString(), id: idOf(seq) })
  }
  reply(type: string, data: unknown = {}): void {
    this.message({ type, data, timestamp: new Date(0).toISOString() })
  }
  drop(code = 1006, reason = "", error?: string): void {
    if (error !== undefined) this.onerror?.({ message: error })
    this.readyState = 3
    this.onclose?.({ code, reason })
  }
  get requests(): Array<Record<string, unknown>> {
    return this.sent.filter((text) => text !== "ping").map((text) => JSON.parse(text))
  }
}

export const idOf = (seq: number) => String(seq).padStart(20, "0")

/** A JWT (unsigned: the client only reads its `exp`) expiring at `exp` seconds. */
export const jwt = (exp: number) =>
  `e30.${Buffer.from(JSON.stringify({ exp })).toString("base64url")}.sig`

/** Lets pending promise callbacks run (the token provider's). */
export const flush = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve()
}
