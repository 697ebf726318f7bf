/**
 * The service's logger: JSON lines (default) or pretty, at `LOG_LEVEL`.
 *
 * The layer installs exactly one logger, whatever was installed before (for
 * example the JSON logger `main.ts` uses until the settings are read), so
 * every line is written once.
 */
import { Effect, Layer, Logger, References } from "effect"
import { logSettings } from "../config/Config.js"

export const layer = Layer.unwrap(
  Effect.map(logSettings, ({ format, level }) =>
    Layer.merge(
      Logger.layer([format === "json" ? Logger.consoleJson : Logger.consolePretty()]),
      Layer.succeed(References.MinimumLogLevel, level)
    ))
)
