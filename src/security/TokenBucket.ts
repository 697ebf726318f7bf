/**
 * Token buckets: the arithmetic of every rate limit (new connections and
 * resumes per address in AddressBuckets.ts, publishes and a client's messages
 * in Limits.ts and the connections), with no service and no timer.
 */
import type { SecuritySettings } from "../config/Config.js"

/**
 * A token bucket: `burst` tokens, refilled at `rate` per second. Each `take`
 * spends one token; an empty bucket refuses. Time is passed in (milliseconds)
 * so the bucket needs no timer.
 */
export class TokenBucket {
  #tokens: number
  #updated: number
  constructor(readonly rate: number, readonly burst: number, now: number) {
    this.#tokens = burst
    this.#updated = now
  }

  #refill(now: number) {
    if (now > this.#updated) {
      this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#updated) * this.rate) / 1000)
      this.#updated = now
    }
  }

  /** Spends a token; `false` when none is left. */
  take(now: number): boolean {
    this.#refill(now)
    if (this.#tokens < 1) return false
    this.#tokens -= 1
    return true
  }

  /** True when the bucket has refilled completely (the client has been quiet for a while). */
  isFull(now: number): boolean {
    this.#refill(now)
    return this.#tokens >= this.burst
  }

  /** Seconds until the next token. */
  retryAfter(now: number): number {
    this.#refill(now)
    return this.#tokens >= 1 ? 0 : Math.ceil((1 - this.#tokens) / this.rate)
  }
}

/**
 * A client's message rate: tokens spent per message; the first message over
 * the limit is answered with `rate_limited`, the next ones are dropped
 * silently, and once `burst` messages have been dropped without the client
 * calming down (its bucket refilling completely) the connection is closed.
 */
export class MessageRate {
  readonly #bucket: TokenBucket
  #dropped = 0
  constructor(settings: Pick<SecuritySettings, "messageRate" | "messageBurst">, now: number) {
    this.#bucket = new TokenBucket(settings.messageRate, settings.messageBurst, now)
  }

  /** `accept`: handle the message; `warn`: drop it and tell the client; `drop`: drop it; `close`: disconnect. */
  check(now: number): "accept" | "warn" | "drop" | "close" {
    if (this.#dropped > 0 && this.#bucket.isFull(now)) this.#dropped = 0
    if (this.#bucket.take(now)) return "accept"
    this.#dropped++
    return this.#dropped === 1 ? "warn" : this.#dropped > this.#bucket.burst ? "close" : "drop"
  }
}
