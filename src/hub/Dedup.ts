/**
 * The `event_id`s of the events that entered the hub recently: an event whose
 * `event_id` is here already reached the clients (a publisher that resent it
 * after a lost confirm, a broker redelivery, a POST retried), so it is dropped.
 * Events without an `event_id` always pass.
 *
 * Bounded by count and by age: an id is remembered from the first time it is
 * seen until it is older than `maxAgeMs` or `maxSize` newer ids have come.
 * Memory: about 100 bytes per id of 36 characters (the `Map` entry with its
 * timestamp, and the string), so about 1 MB at the default 10,000.
 */
export class RecentIds {
  /** id -> when it was first seen; a `Map` iterates in insertion order, so the first entry is the oldest. */
  readonly #seen = new Map<string, number>()

  /** `maxSize` 0 turns the window off: nothing is remembered, nothing is dropped. */
  constructor(readonly maxSize: number, readonly maxAgeMs: number) {}

  get size(): number {
    return this.#seen.size
  }

  /** True when `id` was seen within the window (a duplicate); otherwise remembers it and returns false. */
  seen(id: string, now: number): boolean {
    if (this.maxSize <= 0) return false
    this.#expire(now)
    if (this.#seen.has(id)) return true
    this.#seen.set(id, now)
    if (this.#seen.size > this.maxSize) this.#seen.delete(this.#seen.keys().next().value!)
    return false
  }

  #expire(now: number) {
    const limit = now - this.maxAgeMs
    for (const [id, at] of this.#seen) {
      if (at >= limit) return
      this.#seen.delete(id)
    }
  }
}

/** The `event_id` of an event's data, when it has a non-empty string one. */
export const eventIdOf = (data: unknown): string | undefined => {
  if (typeof data !== "object" || data === null) return undefined
  const id = (data as { readonly event_id?: unknown }).event_id
  return typeof id === "string" && id.length > 0 ? id : undefined
}
