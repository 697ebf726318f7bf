/**
 * One token bucket per client address (new connections, resumes), in bounded
 * memory: a bucket that has refilled completely is the same as no bucket, so
 * such buckets are dropped when the map grows, and past `maxAddresses` the
 * oldest bucket goes (its address starts again with a full bucket: an attacker
 * needs that many addresses to gain anything).
 */
import { TokenBucket } from "./TokenBucket.js"

/** Addresses tracked at most per kind of limit (about 150 bytes each). */
export const defaultMaxAddresses = 50_000

export class AddressBuckets {
  readonly #buckets = new Map<string, TokenBucket>()
  /** Size past which full buckets are swept (doubles when a sweep frees little, so sweeps stay rare). */
  #sweepAt: number

  constructor(
    readonly rate: number,
    readonly burst: number,
    readonly maxAddresses: number = defaultMaxAddresses
  ) {
    this.#sweepAt = Math.min(1024, maxAddresses)
  }

  get size(): number {
    return this.#buckets.size
  }

  /** Spends one of `address`'s tokens: `0` when allowed, otherwise the seconds until the next token. */
  take(address: string, now: number): number {
    let bucket = this.#buckets.get(address)
    if (bucket === undefined) {
      if (this.#buckets.size >= this.#sweepAt) this.#sweep(now)
      bucket = new TokenBucket(this.rate, this.burst, now)
      this.#buckets.set(address, bucket)
    }
    return bucket.take(now) ? 0 : Math.max(1, bucket.retryAfter(now))
  }

  /** Drops the full buckets; near `maxAddresses`, also the oldest ones, down to three quarters (sweeps stay rare). */
  #sweep(now: number): void {
    for (const [address, bucket] of this.#buckets) if (bucket.isFull(now)) this.#buckets.delete(address)
    const keep = Math.floor(this.maxAddresses * 3 / 4)
    for (const address of this.#buckets.keys()) {
      if (this.#buckets.size <= keep) break
      this.#buckets.delete(address)
    }
    this.#sweepAt = Math.min(this.maxAddresses, Math.max(1024, this.#buckets.size * 2))
  }
}
