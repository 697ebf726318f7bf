import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Layer } from "effect"
import { HubConfig, parseGoDuration } from "../src/Config.js"

describe("parseGoDuration", () => {
  it.each([
    ["5s", 5000],
    ["250ms", 250],
    ["1m30s", 90_000],
    ["1h", 3_600_000],
    ["1.5s", 1500],
    ["0", 0],
    ["2h45m", 9_900_000],
    ["1500us", 1.5],
    [" 10s ", 10_000]
  ])("%s = %d ms", (text, millis) => {
    expect(parseGoDuration(text)).toBe(millis)
  })

  it.each(["", "5", "s", "5 s", "5sec", "-1s", "1m30", "abc"])("rejects %j", (text) => {
    expect(parseGoDuration(text)).toBeUndefined()
  })
})

const readConfig = (env: Record<string, string>) =>
  Effect.flatMap(HubConfig, Effect.succeed).pipe(
    Effect.provide(HubConfig.fromEnv.pipe(
      Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))))
    ))
  )

describe("HubConfig.fromEnv", () => {
  it.effect("has the seed's defaults", () =>
    Effect.gen(function*() {
      const config = yield* readConfig({})
      expect(config.port).toBe(8080)
      expect(config.maxMessageSize).toBe(512)
      expect(config.sendBuffer).toBe(256)
      expect(Duration.toMillis(config.pingPeriod)).toBe(54_000)
      expect(Duration.toMillis(config.pongTimeout)).toBe(60_000)
      expect(Duration.toMillis(config.writeTimeout)).toBe(10_000)
      expect(Duration.toMillis(config.shutdownTimeout)).toBe(10_000)
      expect(config.publishToken._tag).toBe("None")
    }))

  it.effect("reads Go-style durations", () =>
    Effect.gen(function*() {
      const config = yield* readConfig({ WS_PING_PERIOD: "1m30s", WS_WRITE_TIMEOUT: "250ms" })
      expect(Duration.toMillis(config.pingPeriod)).toBe(90_000)
      expect(Duration.toMillis(config.writeTimeout)).toBe(250)
    }))

  it.effect.each([
    ["WS_PING_PERIOD", "soon"],
    ["WS_SEND_BUFFER", "-3"],
    ["PORT", "http"],
    ["WS_MAX_MESSAGE_SIZE", "big"]
  ])("a bad %s names the variable", ([name, value]) =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(readConfig({ [name]: value }))
      expect(String(error)).toContain(name)
    }))
})
