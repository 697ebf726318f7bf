import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Layer, Option, Redacted } from "effect"
import { availableParallelism } from "node:os"
import {
  brokerUrls,
  defaultEventTypeMap,
  HubConfig,
  parseGoDuration,
  RabbitMqConfig,
  workerSettings
} from "../src/config/Config.js"

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

const readRabbitConfig = (env: Record<string, string>) =>
  Effect.flatMap(RabbitMqConfig, Effect.succeed).pipe(
    Effect.provide(RabbitMqConfig.fromEnv.pipe(
      Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env, preserveEmptyStrings: true })))
    ))
  )

const readConfig = (env: Record<string, string>) =>
  Effect.flatMap(HubConfig, Effect.succeed).pipe(
    Effect.provide(HubConfig.fromEnv.pipe(
      Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env, preserveEmptyStrings: true })))
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
      expect(config.compressionThreshold._tag).toBe("None")
      expect(config.roomKeys).toEqual(["run_id", "strategy_id", "job_id"])
      expect((yield* readConfig({ ROOM_KEYS: "" })).roomKeys).toEqual([])
    }))

  it.effect("WS_COMPRESSION_THRESHOLD turns compression on", () =>
    Effect.gen(function*() {
      const config = yield* readConfig({ WS_COMPRESSION_THRESHOLD: "2048" })
      expect(config.compressionThreshold).toEqual(Option.some(2048))
      const empty = yield* readConfig({ WS_COMPRESSION_THRESHOLD: "" })
      expect(empty.compressionThreshold).toEqual(Option.none())
    }))

  it.effect("reads Go-style durations", () =>
    Effect.gen(function*() {
      const config = yield* readConfig({ WS_PING_PERIOD: "1m30s", WS_PONG_TIMEOUT: "2m", WS_WRITE_TIMEOUT: "250ms" })
      expect(Duration.toMillis(config.pingPeriod)).toBe(90_000)
      expect(Duration.toMillis(config.writeTimeout)).toBe(250)
    }))

  it.effect("reads the limits against abuse (issue 14), on by default", () =>
    Effect.gen(function*() {
      const defaults = yield* readConfig({})
      expect(Duration.toMillis(defaults.security.handshakeTimeout)).toBe(5000)
      expect([defaults.security.connectionRate, defaults.security.connectionBurst]).toEqual([10, 100])
      expect([defaults.security.resumeRate, defaults.security.resumeRatePerIp, defaults.historyReplayMax]).toEqual([6, 120, 1000])
      const config = yield* readConfig({
        WS_HANDSHAKE_TIMEOUT: "2s",
        WS_CONNECTION_RATE_LIMIT: "3",
        WS_CONNECTION_RATE_BURST: "7",
        WS_RESUME_RATE_LIMIT: "2",
        WS_RESUME_RATE_LIMIT_PER_IP: "30",
        HISTORY_REPLAY_MAX: "50"
      })
      expect(Duration.toMillis(config.security.handshakeTimeout)).toBe(2000)
      expect([config.security.connectionRate, config.security.connectionBurst]).toEqual([3, 7])
      expect([config.security.resumeRate, config.security.resumeRatePerIp, config.historyReplayMax]).toEqual([2, 30, 50])
    }))

  it.effect.each([
    ["WS_HANDSHAKE_TIMEOUT", "soon"],
    ["WS_CONNECTION_RATE_LIMIT", "0"],
    ["WS_CONNECTION_RATE_BURST", "many"],
    ["WS_RESUME_RATE_LIMIT", "-1"],
    ["WS_RESUME_RATE_LIMIT_PER_IP", "0"],
    ["HISTORY_REPLAY_MAX", "0"],
    ["WS_PING_PERIOD", "soon"],
    ["WS_PONG_TIMEOUT", "0"],
    ["WS_PING_PERIOD", "0s"],
    ["WS_MAX_SUBSCRIPTIONS", "0"],
    ["WS_SEND_BUFFER", "-3"],
    ["PORT", "http"],
    ["WS_MAX_MESSAGE_SIZE", "big"],
    ["WS_COMPRESSION_THRESHOLD", "yes"],
    ["WS_COMPRESSION_THRESHOLD", "0"],
    ["WS_PUBLISH_TYPES", "command.#,back*"],
    ["WS_PUBLISH_TYPES", "a..b"],
    ["ROOM_KEYS", "run id"]
  ])("a bad %s names the variable", ([name, value]) =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(readConfig({ [name]: value }))
      expect(String(error)).toContain(name)
    }))
})

describe("HubConfig.fromEnv, settings that depend on each other", () => {
  it.effect("WS_PING_PERIOD must be shorter than WS_PONG_TIMEOUT", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(readConfig({ WS_PING_PERIOD: "3s", WS_PONG_TIMEOUT: "1s" }))
      expect(String(error)).toContain("WS_PING_PERIOD")
      expect(String(error)).toContain("WS_PONG_TIMEOUT")
    }))
})

describe("RabbitMqConfig.fromEnv", () => {
  it.effect("has the seed's defaults", () =>
    Effect.gen(function*() {
      const config = yield* readRabbitConfig({})
      expect(config.exchange).toBe("freqsearch_events")
      expect(config.bindingKeys).toEqual(["#"])
      expect(config.queue).toMatch(/^websocket_events_queue\./)
      expect(Duration.toMillis(config.reconnectDelay)).toBe(5000)
      expect(Duration.toMillis(config.maxReconnectWait)).toBe(30_000)
      expect(config.eventTypeMap).toEqual(defaultEventTypeMap)
    }))

  it.effect("an empty RABBITMQ_URL disables the source", () =>
    Effect.gen(function*() {
      expect((yield* readRabbitConfig({ RABBITMQ_URL: "" })).url._tag).toBe("None")
    }))

  it.effect("RABBITMQ_URL takes the nodes of a cluster, separated by commas; stream mode moves through an ingest queue", () =>
    Effect.gen(function*() {
      const config = yield* readRabbitConfig({
        RABBITMQ_URL: "amqp://a:pw@node-1:5672/, amqp://a:pw@node-2:5672/,amqp://a:pw@node-3:5672/"
      })
      expect(Option.map(config.url, (url) => brokerUrls(url).map(Redacted.value))).toEqual(Option.some([
        "amqp://a:pw@node-1:5672/",
        "amqp://a:pw@node-2:5672/",
        "amqp://a:pw@node-3:5672/"
      ]))
      expect(config.ingest).toBe("quorum")
      expect((yield* readRabbitConfig({ RABBITMQ_INGEST: "none" })).ingest).toBe("none")
    }))

  it.effect("reads binding keys and an EVENT_TYPE_MAP given as JSON", () =>
    Effect.gen(function*() {
      const config = yield* readRabbitConfig({
        RABBITMQ_BINDING_KEYS: "task.*, optimization.#",
        EVENT_TYPE_MAP: "{\"task.completed\":\"job.done\"}"
      })
      expect(config.bindingKeys).toEqual(["task.*", "optimization.#"])
      expect(config.eventTypeMap).toEqual({ "task.completed": "job.done" })
    }))

  it.effect.each([
    ["RABBITMQ_PREFETCH", "70000"],
    ["RABBITMQ_EXCHANGE", " "],
    ["RABBITMQ_URL", "not a url"],
    ["RABBITMQ_URL", "amqp://node-1:5672/,node-2:5672"],
    ["RABBITMQ_INGEST", "classic"],
    ["RABBITMQ_INGEST_MAX_BYTES", "0"],
    ["RABBITMQ_QUEUE_EXPIRES", "0"],
    ["RABBITMQ_RECONNECT_DELAY", "0s"],
    ["EVENT_TYPE_MAP", "[1,2]"],
    ["EVENT_TYPE_MAP", "/nonexistent/map.json"],
    ["RABBITMQ_BINDING_KEYS", " , "]
  ])("a bad %s names the variable", ([name, value]) =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(readRabbitConfig({ [name]: value }))
      expect(String(error)).toContain(name)
    }))

  it.effect("never puts the URL (and its password) in the error", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(readRabbitConfig({ RABBITMQ_URL: "http://user:hunter2@host" }))
      expect(String(error)).not.toContain("hunter2")
    }))
})

const readWorkers = (env: Record<string, string>) =>
  Effect.provide(
    Effect.gen(function*() {
      return yield* workerSettings
    }),
    ConfigProvider.layer(ConfigProvider.fromEnv({ env, preserveEmptyStrings: true }))
  )

describe("HUB_WORKERS", () => {
  it.effect("is one process by default; auto is one per core; the kernel balances unless told otherwise", () =>
    Effect.gen(function*() {
      expect(yield* readWorkers({})).toEqual({ count: 1, balance: "kernel", index: Option.none() })
      expect((yield* readWorkers({ HUB_WORKERS: "auto" })).count).toBe(availableParallelism())
      expect(yield* readWorkers({ HUB_WORKERS: "4", HUB_WORKERS_BALANCE: "primary" })).toMatchObject({ count: 4, balance: "primary" })
    }))

  it.effect("refuses anything but a number of processes or auto, naming the setting", () =>
    Effect.gen(function*() {
      for (const value of ["0", "-1", "two", "1.5", ""]) {
        const error = yield* Effect.flip(readWorkers({ HUB_WORKERS: value }))
        expect(String(error)).toContain("HUB_WORKERS")
      }
      expect(String(yield* Effect.flip(readWorkers({ HUB_WORKERS_BALANCE: "random" })))).toContain("HUB_WORKERS_BALANCE")
    }))

  it.effect("a worker listens on a socket of its own (kernel balance) and, in queue mode, has a queue of its own", () =>
    Effect.gen(function*() {
      expect((yield* readConfig({})).reusePort).toBe(false)
      expect((yield* readConfig({ HUB_WORKER: "1" })).reusePort).toBe(true)
      expect((yield* readConfig({ HUB_WORKER: "1", HUB_WORKERS_BALANCE: "primary" })).reusePort).toBe(false)
      expect((yield* readRabbitConfig({ HUB_WORKER: "1", HUB_INSTANCE_ID: "a" })).queue).toBe("websocket_events_queue.a.w1")
      expect((yield* readRabbitConfig({ HUB_WORKER: "0", RABBITMQ_QUEUE: "q" })).queue).toBe("q.w0")
    }))
})
