/**
 * The service's logger: JSON lines (default) or pretty, at `LOG_LEVEL`.
 */
import { Effect, Layer, Logger } from "effect"
import { logSettings } from "./Config.js"

export const layer = Layer.unwrapEffect(
  Effect.map(logSettings, ({ format, level }) =>
    Layer.merge(
      format === "json" ? Logger.json : Logger.pretty,
      Logger.minimumLogLevel(level)
    ))
)
