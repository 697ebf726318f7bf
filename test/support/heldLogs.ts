/**
 * The hub's own log lines in in-process tests (the layers of `hubLayer`): held while a test runs and printed only if
 * it fails, so that a passing `npm test` prints none, not even the warnings that fault tests cause on purpose (a
 * broker cut, poison messages). `TEST_LOG_LEVEL=debug` (or `info`, `warn`...) prints them as they come instead.
 * Registered for every test file by vitest.config.ts (`setupFiles`).
 */
import { Layer, Logger, LogLevel } from "effect"
import { afterEach, beforeEach } from "vitest"

const held: Array<string> = []

/** The level asked for with TEST_LOG_LEVEL, if any. */
const liveLevel = LogLevel.allLevels.find((level) => level.label === process.env.TEST_LOG_LEVEL?.toUpperCase())

/** The hub's logger in tests: live at TEST_LOG_LEVEL, or held from WARN up for a failing test to show. */
export const testLogging: Layer.Layer<never> = liveLevel !== undefined
  ? Logger.minimumLogLevel(liveLevel)
  : Layer.merge(
    Logger.replace(Logger.defaultLogger, Logger.map(Logger.logfmtLogger, (line) => void held.push(line))),
    Logger.minimumLogLevel(LogLevel.Warning)
  )

beforeEach(() => {
  held.length = 0
})

afterEach((context) => {
  if (context.task.result?.state === "fail" && held.length > 0) {
    process.stderr.write(`The hub's log while "${context.task.name}" ran (${held.length} lines from WARN up):\n`)
    process.stderr.write(`${held.join("\n")}\n`)
  }
  held.length = 0
})
