/**
 * The hub's own log lines in in-process tests (the layers of `hubLayer`): held while a test runs and printed only if
 * it fails, so that a passing `npm test` prints none, not even the warnings that fault tests cause on purpose (a
 * broker cut, poison messages). `TEST_LOG_LEVEL=debug` (or `info`, `warn`...) prints them as they come instead.
 * Registered for every test file by vitest.config.ts (`setupFiles`).
 */
import { Effect, Layer, Logger, LogLevel, References } from "effect"
import { afterEach, beforeEach } from "vitest"

const held: Array<string> = []

/** The level asked for with TEST_LOG_LEVEL, if any. */
const liveLevel = LogLevel.values.find((level) => level.toUpperCase() === process.env.TEST_LOG_LEVEL?.toUpperCase())

/**
 * Replaces Effect's default (console) logger with `logger`, keeping any other logger installed around it (as
 * Effect 3's `Logger.replace` did): a test's own logger and the held lines both see every line.
 */
export const replaceDefaultLogger = (logger: Logger.Logger<unknown, unknown>): Layer.Layer<never> =>
  Layer.unwrap(Effect.map(Effect.service(Logger.CurrentLoggers), (current: ReadonlySet<Logger.Logger<unknown, any>>) =>
    Layer.succeed(Logger.CurrentLoggers, new Set([...current].filter((one) => one !== Logger.defaultLogger).concat(logger)))))

/** The hub's logger in tests: live at TEST_LOG_LEVEL, or held from WARN up for a failing test to show. */
export const testLogging: Layer.Layer<never> = liveLevel !== undefined
  ? Layer.succeed(References.MinimumLogLevel, liveLevel)
  : Layer.merge(
    replaceDefaultLogger(Logger.map(Logger.formatLogFmt, (line) => void held.push(line))),
    Layer.succeed(References.MinimumLogLevel, "Warn")
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
