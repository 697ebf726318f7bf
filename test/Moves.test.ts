/** What a stream reader makes of the moves from the ingest queue (pure logic; the broker's side: brokerRestart.test.ts). */
import { describe, expect, it } from "@effect/vitest"
import { type Move, moveHeaders, moveOf, Moves } from "../src/rabbitmq/Moves.js"

const move = (mover: string, seq: number, body: string, extra: Partial<Move> = {}): Move => ({
  mover,
  seq,
  acked: 0,
  redelivered: false,
  routingKey: "backtest.completed",
  body: Buffer.from(body),
  ...extra
})

/** Judges moves in order, keeping the bodies taken. */
const read = (moves: Moves, list: ReadonlyArray<Move>) =>
  list.filter((m) => moves.judge(m) === "take" && m.seq > 0).map((m) => m.body.toString())

describe("Moves", () => {
  it("takes a session's moves in order, and its marker", () => {
    const moves = new Moves()
    expect(moves.judge(move("a", 0, "{}"))).toBe("take")
    expect(read(moves, [move("a", 1, "1"), move("a", 2, "2"), move("a", 3, "3")])).toEqual(["1", "2", "3"])
  })

  it("skips the rest of a session after a hole: the next session moves those again, in order", () => {
    const moves = new Moves()
    // Move 2 was returned; 3 and 4 reached the stream all the same. Session b gets 2, 3, 4 again.
    const taken = read(moves, [
      move("a", 0, "{}"),
      move("a", 1, "1"),
      move("a", 3, "3"),
      move("a", 4, "4"),
      move("b", 0, "{}"),
      move("b", 1, "2", { redelivered: true }),
      move("b", 2, "3", { redelivered: true }),
      move("b", 3, "4", { redelivered: true }),
      move("b", 4, "5")
    ])
    expect(taken).toEqual(["1", "2", "3", "4", "5"])
    expect(moves.judge(move("a", 5, "6"))).toBe("after_hole")
  })

  it("skips a move made again by the next session when the first one kept it but did not acknowledge it", () => {
    const moves = new Moves()
    // a moved 1..4 and acknowledged up to 2 (as the header of move 4 says), then died: 3 and 4 come again.
    const taken = read(moves, [
      move("a", 0, "{}"),
      move("a", 1, "1"),
      move("a", 2, "2"),
      move("a", 3, "3", { acked: 1 }),
      move("a", 4, "4", { acked: 2 }),
      move("b", 0, "{}"),
      move("b", 1, "3", { redelivered: true }),
      move("b", 2, "4", { redelivered: true }),
      move("b", 3, "5", { redelivered: true }),
      move("b", 4, "6")
    ])
    expect(taken).toEqual(["1", "2", "3", "4", "5", "6"])
  })

  it("takes a redelivered move that was never taken, even when an earlier one has the same body", () => {
    const moves = new Moves()
    // "x" was moved and acknowledged (acked: 1 on the next move); another "x" is redelivered to b, never moved by a.
    const taken = read(moves, [
      move("a", 0, "{}"),
      move("a", 1, "x"),
      move("a", 2, "y", { acked: 1 }),
      move("b", 0, "{}", { acked: 0 }),
      move("b", 1, "x", { redelivered: true })
    ])
    expect(taken).toEqual(["x", "y", "x"])
  })

  it("a reader that starts in the middle of a session takes it from there; one message read again is skipped", () => {
    const moves = new Moves()
    expect(read(moves, [move("a", 7, "7"), move("a", 8, "8")])).toEqual(["7", "8"])
    expect(moves.judge(move("a", 8, "8"))).toBe("read_again")
  })

  it("reads a move from the headers a mover writes, and nothing from other messages", () => {
    const body = Buffer.from("{}")
    expect(moveOf({}, "k", body)).toBeUndefined()
    expect(moveOf({ [moveHeaders.mover]: "a", [moveHeaders.seq]: 3, [moveHeaders.acked]: 2, [moveHeaders.redelivered]: true }, "k", body))
      .toEqual({ mover: "a", seq: 3, acked: 2, redelivered: true, routingKey: "k", body })
  })
})
