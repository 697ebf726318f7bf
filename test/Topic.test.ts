import { describe, expect, it } from "@effect/vitest"
import { isWildcard, matches } from "../src/protocol/Topic.js"

// [pattern, event type, matches?] — RabbitMQ topic-binding rules.
const table: ReadonlyArray<readonly [string, string, boolean]> = [
  ["backtest.completed", "backtest.completed", true],
  ["backtest.completed", "backtest.failed", false],
  ["backtest.completed", "backtest.completed.extra", false],
  ["backtest.*", "backtest.completed", true],
  ["backtest.*", "backtest", false],
  ["backtest.*", "backtest.completed.extra", false],
  ["*.completed", "backtest.completed", true],
  ["*.completed", "optimization.iteration.completed", false],
  ["*.*.completed", "optimization.iteration.completed", true],
  ["optimization.#", "optimization", true],
  ["optimization.#", "optimization.new_best", true],
  ["optimization.#", "optimization.iteration.completed", true],
  ["optimization.#", "backtest.completed", false],
  ["optimization.#", "optimizations.completed", false],
  ["#", "anything.at.all", true],
  ["#", "x", true],
  ["#.completed", "completed", true],
  ["#.completed", "backtest.completed", true],
  ["#.completed", "optimization.iteration.completed", true],
  ["#.completed", "optimization.iteration.completed.not", false],
  ["optimization.#.completed", "optimization.completed", true],
  ["optimization.#.completed", "optimization.iteration.completed", true],
  ["optimization.#.completed", "optimization.a.b.c.completed", true],
  ["optimization.#.completed", "optimization.iteration.failed", false],
  ["*.#", "a", true],
  ["*.#", "a.b.c", true],
  ["#.*", "a", true],
  ["*.*", "a", false],
  ["#.#", "a.b", true],
  ["a.#.#.b", "a.b", true],
  ["a.#.#.b", "a.x.y.b", true],
  ["strategy.*", "strategy.ready_for_backtest", true],
  ["agent.status.*", "agent.status.changed", true],
  ["agent.*", "agent.status.changed", false],
  ["a*", "ab", false],
  ["a*", "a*", true],
  ["*", "a", true],
  ["*", "a.b", false]
]

describe("Topic.matches", () => {
  it.each(table)("%s vs %s -> %s", (pattern, type, expected) => {
    expect(matches(pattern, type)).toBe(expected)
  })

  it("stays linear on hostile patterns", () => {
    const pattern = Array.from({ length: 60 }, () => "#").join(".a.") + ".z"
    const type = Array.from({ length: 200 }, () => "a").join(".")
    expect(matches(pattern, type)).toBe(false)
  })

  it("tells wildcard patterns from exact types", () => {
    expect(isWildcard("backtest.*")).toBe(true)
    expect(isWildcard("optimization.#")).toBe(true)
    expect(isWildcard("backtest.completed")).toBe(false)
    expect(isWildcard("a*b")).toBe(false)
  })
})
