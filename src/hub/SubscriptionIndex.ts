/**
 * Who receives what: each client's subscription (patterns, the token's limit,
 * rooms), an index from pattern to clients, and the recipients of each event
 * type seen so far.
 *
 * This is synchronous, mutable code on purpose: the fan-out of every event
 * reads it, and resumes read it from callbacks. The hub's layer creates one
 * and is its only writer. Recipients are computed from the index the first
 * time a type is broadcast, then kept up to date by every change of a
 * subscription at the cost of the patterns that changed: a broadcast costs
 * its recipients, and one client's subscriptions never make the hub match
 * every pattern again.
 */
import { Result } from "effect"
import * as Topic from "../protocol/Topic.js"
import type { Member } from "./Member.js"

/** A client's subscription. Replaced, never changed, when it changes (the recipients sets hold them). */
export interface Subscription {
  readonly member: Member
  readonly patterns: ReadonlyArray<string>
  /** False until the client's first `subscribe`, which replaces the default `#`. */
  readonly explicit: boolean
  /** What the client may receive at most (its token's `event_types`); `undefined`: no limit. */
  readonly allowed?: ReadonlyArray<string> | undefined
  /** The rooms the client joined; `undefined`: no room filter (the events of every room). */
  readonly rooms?: ReadonlySet<string> | undefined
}

/** The subscription every client starts with: everything. */
export const defaultSubscription: ReadonlyArray<string> = ["#"]

/** Does the subscription's `allowed` limit let an event of `type` through? */
const isAllowed = (subscription: Subscription, type: string) =>
  subscription.allowed === undefined || subscription.allowed.some((pattern) => Topic.matches(pattern, type))

/** Does an event of `rooms` reach a client in `joined` (none: every room)? */
export const inRooms = (joined: ReadonlySet<string> | undefined, rooms: ReadonlyArray<string>) =>
  joined === undefined || rooms.some((room) => joined.has(room))

/** Whether the client receives an event of `type` in `rooms` (for replays; live events use the recipients). */
export const wants = (subscription: Subscription, type: string, rooms: ReadonlyArray<string>) =>
  isAllowed(subscription, type) && inRooms(subscription.rooms, rooms) &&
  subscription.patterns.some((pattern) => Topic.matches(pattern, type))

/** Most event types whose recipients are kept; past it they are computed again as events come. */
const maxMemoTypes = 1024

/** The clients that receive one event type. */
interface TypeRecipients {
  /** How many of each client's patterns match the type (clients with none are absent). */
  readonly matching: Map<number, number>
  /** The subscriptions that receive it: matched and allowed (rooms are checked per event). */
  readonly receivers: Set<Subscription>
}

const countMatching = (patterns: ReadonlyArray<string>, type: string) => {
  let count = 0
  for (const pattern of patterns) if (Topic.matches(pattern, type)) count++
  return count
}

export class SubscriptionIndex {
  readonly #subscriptions = new Map<number, Subscription>()
  readonly #byPattern = new Map<string, Set<number>>()
  readonly #memo = new Map<string, TypeRecipients>()

  get(id: number): Subscription | undefined {
    return this.#subscriptions.get(id)
  }

  /** How many clients are indexed: every connected client is. */
  get size(): number {
    return this.#subscriptions.size
  }

  /** Every indexed client. */
  *members(): IterableIterator<Member> {
    for (const subscription of this.#subscriptions.values()) yield subscription.member
  }

  /** The subscriptions that receive events of `type` (rooms not yet checked). */
  recipients(type: string): ReadonlySet<Subscription> {
    let found = this.#memo.get(type)
    if (found === undefined) {
      found = { matching: new Map(), receivers: new Set() }
      for (const [pattern, ids] of this.#byPattern) {
        if (!Topic.matches(pattern, type)) continue
        for (const id of ids) found.matching.set(id, (found.matching.get(id) ?? 0) + 1)
      }
      for (const id of found.matching.keys()) {
        const subscription = this.#subscriptions.get(id)!
        if (isAllowed(subscription, type)) found.receivers.add(subscription)
      }
      if (this.#memo.size >= maxMemoTypes) this.#memo.clear()
      this.#memo.set(type, found)
    }
    return found.receivers
  }

  /** Adds a client with the default subscription (`#`), limited by `allowed`. */
  add(member: Member, allowed: ReadonlyArray<string> | undefined): void {
    this.#set(member.id, { member, patterns: defaultSubscription, explicit: false, allowed })
  }

  remove(id: number): void {
    this.#set(id, undefined)
  }

  /**
   * Applies `change` to a client's subscription; a refusal changes nothing. An unknown client (gone already) is
   * `Right(undefined)`.
   */
  update<E>(
    id: number,
    change: (subscription: Subscription) => Result.Result<Subscription, E>
  ): Result.Result<Subscription | undefined, E> {
    const current = this.#subscriptions.get(id)
    if (current === undefined) return Result.succeed(undefined)
    const next = change(current)
    if (Result.isSuccess(next)) this.#set(id, next.success)
    return next
  }

  /** Sets client `id`'s subscription to `next` (or removes it); only changed patterns are re-indexed. */
  #set(id: number, next: Subscription | undefined): void {
    const previous = this.#subscriptions.get(id)
    const before = previous?.patterns ?? []
    const patterns = next?.patterns ?? []
    const removed = before.filter((pattern) => !patterns.includes(pattern))
    const added = patterns.filter((pattern) => !before.includes(pattern))
    for (const [type, { matching, receivers }] of this.#memo) {
      if (previous !== undefined) receivers.delete(previous)
      if (next === undefined) {
        matching.delete(id)
        continue
      }
      const count = (matching.get(id) ?? 0) + countMatching(added, type) - countMatching(removed, type)
      if (count > 0) matching.set(id, count)
      else matching.delete(id)
      if (count > 0 && isAllowed(next, type)) receivers.add(next)
    }
    for (const pattern of removed) {
      const ids = this.#byPattern.get(pattern)!
      ids.delete(id)
      if (ids.size === 0) this.#byPattern.delete(pattern)
    }
    for (const pattern of added) {
      const ids = this.#byPattern.get(pattern)
      if (ids === undefined) this.#byPattern.set(pattern, new Set([id]))
      else ids.add(id)
    }
    if (next === undefined) this.#subscriptions.delete(id)
    else this.#subscriptions.set(id, next)
  }
}
