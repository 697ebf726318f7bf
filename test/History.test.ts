/**
 * The history on its own: ids, bounds, and where a `since` stands.
 */
import { describe, expect, it } from "vitest"
import { History, streamId } from "../src/History.js"
import { Outbound } from "../src/Protocol.js"

const entry = (history: History, at: number, id = history.nextLocalId()) => ({
  id,
  type: "backtest.completed",
  message: Outbound.text(id),
  at
})

const fill = (history: History, count: number, at = 0) => {
  const ids: Array<string> = []
  for (let i = 0; i < count; i++) {
    const e = entry(history, at)
    history.append(e)
    ids.push(e.id)
  }
  return ids
}

/** Every entry after `cursor`, in order. */
const replay = (history: History, cursor: string | undefined) => {
  const ids: Array<string> = []
  for (let next = history.after(cursor); next !== undefined; next = history.after(next.id)) ids.push(next.id)
  return ids
}

describe("History", () => {
  it("gives fixed-width local ids that sort as strings in broadcast order, across 9 -> 10 and beyond", () => {
    const history = new History(100_000, 60_000, 1_764_201_234_567)
    const ids = fill(history, 12_000)
    expect(ids[0]).toMatch(/^1764201234567[0-9a-f]{4}-0000000000000001$/)
    expect(new Set(ids.map((id) => id.length)).size).toBe(1)
    expect([...ids].sort()).toEqual(ids)
  })

  it("replays exactly the entries after a cursor", () => {
    const history = new History(100, 60_000)
    const ids = fill(history, 50)
    expect(replay(history, ids[19])).toEqual(ids.slice(20))
    expect(replay(history, ids[49])).toEqual([])
    expect(history.place(ids[19]!)).toEqual({ _tag: "Covered" })
  })

  it("keeps at most HISTORY_MAX_EVENTS; a since before the oldest kept is a gap", () => {
    const history = new History(10, 60_000)
    const ids = fill(history, 25)
    expect(history.size).toBe(10)
    expect(history.oldest!.id).toBe(ids[15])
    // The newest evicted is still a position the history covers: everything after it is held.
    expect(history.place(ids[14]!)).toEqual({ _tag: "Covered" })
    expect(history.place(ids[13]!)).toEqual({ _tag: "Gap" })
    expect(replay(history, ids[14])).toEqual(ids.slice(15))
  })

  it("drops entries older than HISTORY_MAX_AGE", () => {
    const history = new History(100, 1000)
    const old = fill(history, 5, 0)
    const recent = fill(history, 5, 900)
    history.trim(1500)
    expect(history.size).toBe(5)
    expect(history.oldest!.id).toBe(recent[0])
    expect(history.place(old[0]!)).toEqual({ _tag: "Gap" })
    history.trim(10_000)
    expect(history.size).toBe(0)
    expect(history.place(recent[4]!)).toEqual({ _tag: "Covered" })
  })

  it("treats an id of another run (a restart, another instance) as a gap, and nonsense as malformed", () => {
    const history = new History(100, 60_000)
    fill(history, 3)
    const other = new History(100, 60_000)
    const foreign = fill(other, 1)[0]!
    expect(history.place(foreign)).toEqual({ _tag: "Gap" })
    expect(history.place("")).toEqual({ _tag: "Malformed" })
    expect(history.place("x".repeat(65))).toEqual({ _tag: "Malformed" })
    expect(history.place("1 OR 1=1")).toEqual({ _tag: "Malformed" })
  })

  it("in stream mode, uses offsets as ids; local events sort between two offsets", () => {
    const history = new History(100, 60_000)
    history.useStreamIds()
    expect(history.ready).toBe(false)
    history.startsAt(40)
    for (const offset of [40, 41]) {
      history.append(entry(history, 0, streamId(offset)), true)
    }
    const local = history.nextLocalId()
    history.append(entry(history, 0, local))
    history.append(entry(history, 0, streamId(42)), true)
    expect(local).toBe("00000000000000000041.0000000001")
    expect(replay(history, streamId(40))).toEqual([streamId(41), local, streamId(42)])
    // Offset 39 is the newest this instance does not hold: resuming from it misses nothing; from 38 it does.
    expect(history.place(streamId(39))).toEqual({ _tag: "Covered" })
    expect(history.place(streamId(38))).toEqual({ _tag: "Gap" })
    // An id from the classic mode cannot be placed in a stream.
    expect(history.place("1764201234567abcd-0000000000000001")).toEqual({ _tag: "Gap" })
  })

  it("after a hole in the stream, forgets what came before it", () => {
    const history = new History(100, 60_000)
    history.useStreamIds()
    history.startsAt(0)
    history.append(entry(history, 0, streamId(0)), true)
    history.startsAt(10)
    history.append(entry(history, 0, streamId(10)), true)
    expect(history.size).toBe(1)
    expect(history.place(streamId(0))).toEqual({ _tag: "Gap" })
    expect(history.place(streamId(9))).toEqual({ _tag: "Covered" })
  })

  it("wakes waiters when ready and after an append", () => {
    const history = new History(100, 60_000)
    history.useStreamIds()
    const calls: Array<string> = []
    history.whenReady(() => calls.push("ready"))
    history.whenAppended(() => calls.push("appended"))
    history.append(entry(history, 0, streamId(0)), true)
    expect(calls).toEqual(["appended"])
    history.markReady()
    expect(calls).toEqual(["appended", "ready"])
  })
})
