/**
 * The service's logger: JSON lines (default) or pretty, at `LOG_LEVEL`.
 *
 * The layer installs exactly one logger, whatever was installed before (for
 * example the JSON logger `main.ts` uses until the settings are read), so
 * every line is written once.
 */
import { Effect, FiberRef, HashSet, Layer, Logger } from "effect"
import { logSettings } from "../config/Config.js"

export const layer = Layer.unwrapEffect(
  Effect.map(logSettings, ({ format, level }) =>
    Layer.merge(
      Layer.locallyScoped(
        FiberRef.currentLoggers,
        HashSet.make(format === "json" ? Logger.withConsoleLog(Logger.jsonLogger) : Logger.prettyLoggerDefault)
      ),
      Logger.minimumLogLevel(level)
    ))
)
