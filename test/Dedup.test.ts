/** The recent-`event_id` window (pure): what it drops, and how far back it remembers. */
import { describe, expect, it } from "@effect/vitest"
import { eventIdOf, RecentIds } from "../src/hub/Dedup.js"

describe("RecentIds", () => {
  it("drops an id seen before, lets new ones through", () => {
    const recent = new RecentIds(10, 60_000)
    expect(recent.seen("a", 0)).toBe(false)
    expect(recent.seen("b", 1)).toBe(false)
    expect(recent.seen("a", 2)).toBe(true)
    expect(recent.seen("b", 3)).toBe(true)
    expect(recent.size).toBe(2)
  })

  it("forgets the oldest id once more than maxSize are remembered", () => {
    const recent = new RecentIds(3, 60_000)
    for (const id of ["a", "b", "c", "d"]) expect(recent.seen(id, 0)).toBe(false)
    expect(recent.size).toBe(3)
    expect(recent.seen("a", 0)).toBe(false)
    expect(recent.seen("d", 0)).toBe(true)
  })

  it("forgets ids older than maxAgeMs, counted from the first time they were seen", () => {
    const recent = new RecentIds(100, 1000)
    recent.seen("a", 0)
    recent.seen("b", 600)
    // A duplicate does not make the id younger.
    expect(recent.seen("a", 900)).toBe(true)
    expect(recent.seen("a", 1001)).toBe(false)
    expect(recent.seen("b", 1500)).toBe(true)
    expect(recent.seen("b", 1601)).toBe(false)
  })

  it("is off with maxSize 0", () => {
    const recent = new RecentIds(0, 1000)
    expect(recent.seen("a", 0)).toBe(false)
    expect(recent.seen("a", 0)).toBe(false)
    expect(recent.size).toBe(0)
  })

  it("never holds more than maxSize ids, whatever arrives", () => {
    const recent = new RecentIds(50, 1_000_000)
    for (let i = 0; i < 10_000; i++) recent.seen(`id-${i % 700}`, i)
    expect(recent.size).toBeLessThanOrEqual(50)
  })
})

describe("eventIdOf", () => {
  it("is the event_id of the data when it is a non-empty string", () => {
    expect(eventIdOf({ event_id: "e-1", x: 1 })).toBe("e-1")
    expect(eventIdOf({ event_id: "" })).toBeUndefined()
    expect(eventIdOf({ event_id: 42 })).toBeUndefined()
    expect(eventIdOf({})).toBeUndefined()
    expect(eventIdOf(null)).toBeUndefined()
    expect(eventIdOf("e-1")).toBeUndefined()
  })
})
