/**
 * Every setting of the hub, read from environment variables through Effect's
 * `Config`, with its default in one place. The README's configuration table
 * mirrors this file.
 *
 * Embedding programs can skip the environment entirely and provide the
 * services with `Layer.succeed(HubConfig, {...})` (see `HubConfig.make`).
 */
import { Config, ConfigProvider, Context, Duration, Effect, Layer, type LogLevel, Option, Redacted, Result } from "effect"
import { readFileSync } from "node:fs"
import { availableParallelism, hostname } from "node:os"
import * as Topic from "../protocol/Topic.js"

/**
 * The environment as the settings read it: a variable set to the empty string is a value (`RABBITMQ_URL=""` turns
 * the source off, `ROOM_KEYS=""` the rooms), where Effect 4's default provider would take it as unset.
 */
export const layerEnv: Layer.Layer<never> = ConfigProvider.layer(ConfigProvider.fromEnv({ preserveEmptyStrings: true }))

// ---------------------------------------------------------------------------
// Parsing helpers
// ---------------------------------------------------------------------------

/** A refused value: the message names the variable, as every configuration error does. */
export const invalidSetting = (name: string, message: string): Config.ConfigError =>
  new Config.ConfigError(new ConfigProvider.SourceError({ message: `${name}: ${message}` }))

const unitMillis: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  "µs": 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000
}

/**
 * Parses a Go-style duration (`5s`, `250ms`, `1m30s`, `1.5h`, `0`) into
 * milliseconds. Returns `undefined` when the text is not a duration.
 */
export const parseGoDuration = (text: string): number | undefined => {
  const input = text.trim()
  if (input === "0") return 0
  const part = /(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|ms|s|m|h)/y
  let total = 0
  let index = 0
  while (index < input.length) {
    part.lastIndex = index
    const match = part.exec(input)
    if (match === null) return undefined
    total += Number(match[1]) * unitMillis[match[2]!]!
    index = part.lastIndex
  }
  return index === 0 ? undefined : total
}

/**
 * A duration setting in Go syntax, e.g. `goDuration("WS_PING_PERIOD", defaults.pingPeriod)`.
 * It must be at least 1 ms: a zero period or timeout is never what was meant.
 */
export const goDuration = (name: string, defaultValue: Duration.Duration): Config.Config<Duration.Duration> =>
  Config.String(name).pipe(
    Config.mapEffect((text) => {
      const millis = parseGoDuration(text)
      if (millis === undefined) {
        return Effect.fail(
          invalidSetting(name, `expected a duration such as 5s, 250ms or 1m30s, got ${JSON.stringify(text)}`)
        )
      }
      return millis < 1
        ? Effect.fail(invalidSetting(name, `must be at least 1ms, got ${JSON.stringify(text)}`))
        : Effect.succeed(Duration.millis(millis))
    }),
    Config.withDefault(defaultValue)
  )

const positiveInt = (name: string, defaultValue: number): Config.Config<number> =>
  Config.Int(name).pipe(
    Config.withDefault(defaultValue),
    Config.mapEffect((n) =>
      n > 0 ? Effect.succeed(n) : Effect.fail(invalidSetting(name, `expected a positive integer, got ${n}`))
    )
  )

/** An optional secret: unset or empty means "off". */
const optionalSecret = (name: string): Config.Config<Option.Option<Redacted.Redacted>> =>
  Config.option(Config.Redacted(name)).pipe(
    Config.map(Option.filter((value) => Redacted.value(value).length > 0))
  )

// ---------------------------------------------------------------------------
// Security: origins, authentication, limits
// ---------------------------------------------------------------------------

/** Where the hub's JWT verification keys come from; `none` turns authentication off. */
export type AuthKeySource =
  | { readonly _tag: "none" }
  /** HS256 with a shared secret (`AUTH_JWT_SECRET`). */
  | { readonly _tag: "secret"; readonly secret: Redacted.Redacted }
  /** RS256/ES256 keys fetched from a JWKS endpoint (`AUTH_JWKS_URL`), cached and refreshed. */
  | { readonly _tag: "jwks"; readonly url: URL; readonly cacheMaxAge: Duration.Duration }
  /** One RS256/ES256 public key, PEM (SPKI) or JWK (`AUTH_JWT_PUBLIC_KEY`). */
  | { readonly _tag: "publicKey"; readonly key: string }

export interface SecuritySettings {
  /** Origins allowed to open a WebSocket and to read HTTP answers (CORS); `["*"]` allows every origin. */
  readonly allowedOrigins: ReadonlyArray<string>
  /** Take the client's address from the last `X-Forwarded-For` entry (set it behind a reverse proxy only). */
  readonly trustProxy: boolean
  /** JWT verification keys; authentication is required whenever this is not `none`. */
  readonly authKeys: AuthKeySource
  /** Required `iss` claim, if set. */
  readonly authIssuer: Option.Option<string>
  /** Required `aud` claim (one of them), if set. */
  readonly authAudience: Option.Option<string>
  /** Most WebSocket connections in total. */
  readonly maxConnections: number
  /** Most WebSocket connections from one client address. */
  readonly maxConnectionsPerIp: number
  /** Client-to-server messages per second (token bucket refill rate). */
  readonly messageRate: number
  /** Client-to-server messages allowed in a burst (token bucket size). */
  readonly messageBurst: number
  /** Longest subscription pattern, in characters (at most 255). */
  readonly maxPatternLength: number
  /** Most dot-separated words in a subscription pattern. */
  readonly maxPatternWords: number
  /** Close a connection that sends no message within this time after opening; `None`: never. */
  readonly firstMessageTimeout: Option.Option<Duration.Duration>
  /** `POST /api/v1/events` requests per second, all callers together (token bucket refill rate). */
  readonly publishRate: number
  /** `POST /api/v1/events` requests allowed in a burst. */
  readonly publishBurst: number
  /** An upgrade request whose headers are not complete within this time is answered 408 and closed. */
  readonly handshakeTimeout: Duration.Duration
  /** New WebSocket connections per second from one client address (token bucket refill rate). */
  readonly connectionRate: number
  /** New WebSocket connections from one client address allowed in a burst. */
  readonly connectionBurst: number
  /** Resumes (`since`) per minute on one connection. */
  readonly resumeRate: number
  /** Resumes (`since`, `?since=` included) per minute from one client address. */
  readonly resumeRatePerIp: number
}

export const defaultSecurity: SecuritySettings = {
  allowedOrigins: ["*"],
  trustProxy: false,
  authKeys: { _tag: "none" },
  authIssuer: Option.none(),
  authAudience: Option.none(),
  maxConnections: 10_000,
  maxConnectionsPerIp: 100,
  messageRate: 10,
  messageBurst: 50,
  maxPatternLength: 255,
  maxPatternWords: 16,
  firstMessageTimeout: Option.none(),
  publishRate: 1000,
  publishBurst: 1000,
  handshakeTimeout: Duration.seconds(5),
  connectionRate: 10,
  connectionBurst: 100,
  resumeRate: 6,
  resumeRatePerIp: 120
}

/** How long fetched JWKS keys are used before they are fetched again. */
const defaultJwksCacheMaxAge = Duration.minutes(10)

const optionalString = (name: string): Config.Config<Option.Option<string>> =>
  Config.String(name).pipe(Config.option, Config.map(Option.filter((value) => value.trim().length > 0)))

/** A duration setting that may be left unset (or set to `0` / `off`) to disable what it limits. */
const optionalDuration = (name: string): Config.Config<Option.Option<Duration.Duration>> =>
  Config.String(name).pipe(
    Config.withDefault(""),
    Config.mapEffect((text) => {
      const trimmed = text.trim()
      if (trimmed === "" || trimmed === "0" || trimmed.toLowerCase() === "off") return Effect.succeed(Option.none())
      const millis = parseGoDuration(trimmed)
      return millis === undefined || millis < 1
        ? Effect.fail(invalidSetting(name, `expected a duration such as 30s, or off; got ${JSON.stringify(text)}`))
        : Effect.succeed(Option.some(Duration.millis(millis)))
    })
  )

const allowedOriginsConfig = Config.String("ALLOWED_ORIGINS").pipe(
  Config.withDefault("*"),
  Config.mapEffect((text) => {
    const list = text.split(",").map((origin) => origin.trim().replace(/\/+$/, "")).filter((origin) => origin.length > 0)
    if (list.length === 0) {
      return Effect.fail(invalidSetting("ALLOWED_ORIGINS", "expected * or a comma-separated list of origins"))
    }
    if (list.includes("*")) return Effect.succeed(["*"])
    const bad = list.find((origin) => !/^https?:\/\/[^/\s]+$/i.test(origin))
    return bad === undefined
      ? Effect.succeed(list.map((origin) => origin.toLowerCase()))
      : Effect.fail(
        invalidSetting("ALLOWED_ORIGINS", `expected origins such as https://app.example.com, got ${JSON.stringify(bad)}`)
      )
  })
)

const authKeysConfig: Config.Config<AuthKeySource> = Config.all({
  secret: optionalSecret("AUTH_JWT_SECRET"),
  jwksUrl: optionalString("AUTH_JWKS_URL"),
  publicKey: optionalString("AUTH_JWT_PUBLIC_KEY"),
  cacheMaxAge: goDuration("AUTH_JWKS_CACHE_MAX_AGE", defaultJwksCacheMaxAge)
}).pipe(
  Config.mapEffect(({ cacheMaxAge, jwksUrl, publicKey, secret }): Effect.Effect<AuthKeySource, Config.ConfigError> => {
    const set = [Option.isSome(secret), Option.isSome(jwksUrl), Option.isSome(publicKey)].filter(Boolean).length
    if (set > 1) {
      return Effect.fail(invalidSetting(
        "AUTH_JWT_SECRET",
        "set only one of AUTH_JWT_SECRET, AUTH_JWKS_URL and AUTH_JWT_PUBLIC_KEY (mixing symmetric and asymmetric keys invites algorithm confusion)"
      ))
    }
    if (Option.isSome(secret)) {
      return Redacted.value(secret.value).length < 32
        ? Effect.fail(invalidSetting("AUTH_JWT_SECRET", "must be at least 32 characters (256 bits for HS256)"))
        : Effect.succeed({ _tag: "secret", secret: secret.value })
    }
    if (Option.isSome(jwksUrl)) {
      let url: URL
      try {
        url = new URL(jwksUrl.value.trim())
      } catch {
        return Effect.fail(invalidSetting("AUTH_JWKS_URL", "expected an http(s) URL"))
      }
      return url.protocol === "https:" || url.protocol === "http:"
        ? Effect.succeed({ _tag: "jwks", url, cacheMaxAge })
        : Effect.fail(invalidSetting("AUTH_JWKS_URL", "expected an http(s) URL"))
    }
    if (Option.isSome(publicKey)) {
      const text = publicKey.value.trim()
      let key = text
      if (!text.startsWith("-----BEGIN") && !text.startsWith("{")) {
        try {
          key = readFileSync(text, "utf8").trim()
        } catch (error) {
          return Effect.fail(invalidSetting("AUTH_JWT_PUBLIC_KEY", `cannot read the file ${text}: ${String(error)}`))
        }
      }
      return Effect.succeed({ _tag: "publicKey", key })
    }
    return Effect.succeed({ _tag: "none" })
  })
)

const securitySettings: Config.Config<SecuritySettings> = Config.all({
  allowedOrigins: allowedOriginsConfig,
  trustProxy: Config.Boolean("TRUST_PROXY").pipe(Config.withDefault(defaultSecurity.trustProxy)),
  authKeys: authKeysConfig,
  authIssuer: optionalString("AUTH_JWT_ISSUER"),
  authAudience: optionalString("AUTH_JWT_AUDIENCE"),
  maxConnections: positiveInt("WS_MAX_CONNECTIONS", defaultSecurity.maxConnections),
  maxConnectionsPerIp: positiveInt("WS_MAX_CONNECTIONS_PER_IP", defaultSecurity.maxConnectionsPerIp),
  messageRate: positiveInt("WS_RATE_LIMIT", defaultSecurity.messageRate),
  messageBurst: positiveInt("WS_RATE_BURST", defaultSecurity.messageBurst),
  maxPatternLength: positiveInt("WS_MAX_PATTERN_LENGTH", defaultSecurity.maxPatternLength).pipe(
    Config.mapEffect((n) =>
      n <= 255 ? Effect.succeed(n) : Effect.fail(invalidSetting("WS_MAX_PATTERN_LENGTH", `at most 255, got ${n}`))
    )
  ),
  maxPatternWords: positiveInt("WS_MAX_PATTERN_WORDS", defaultSecurity.maxPatternWords),
  firstMessageTimeout: optionalDuration("WS_FIRST_MESSAGE_TIMEOUT"),
  publishRate: positiveInt("PUBLISH_RATE_LIMIT", defaultSecurity.publishRate),
  publishBurst: positiveInt("PUBLISH_RATE_BURST", defaultSecurity.publishBurst),
  handshakeTimeout: goDuration("WS_HANDSHAKE_TIMEOUT", defaultSecurity.handshakeTimeout),
  connectionRate: positiveInt("WS_CONNECTION_RATE_LIMIT", defaultSecurity.connectionRate),
  connectionBurst: positiveInt("WS_CONNECTION_RATE_BURST", defaultSecurity.connectionBurst),
  resumeRate: positiveInt("WS_RESUME_RATE_LIMIT", defaultSecurity.resumeRate),
  resumeRatePerIp: positiveInt("WS_RESUME_RATE_LIMIT_PER_IP", defaultSecurity.resumeRatePerIp)
})

// ---------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------

export interface WorkerSettings {
  /** Hub processes on this host sharing the port (`HUB_WORKERS`); 1: this process is the hub. */
  readonly count: number
  /** Who spreads the connections over the workers: the kernel (`reusePort`) or the primary (node:cluster). */
  readonly balance: "kernel" | "primary"
  /** This process's number among the workers (`HUB_WORKER`, set by the primary), when it is one. */
  readonly index: Option.Option<number>
}

export const workerSettings: Config.Config<WorkerSettings> = Config.all({
  count: Config.String("HUB_WORKERS").pipe(
    Config.withDefault("1"),
    Config.mapEffect((text) => {
      const value = text.trim().toLowerCase()
      if (value === "auto") return Effect.succeed(availableParallelism())
      const count = Number(value)
      return Number.isInteger(count) && count >= 1 && count <= 1024
        ? Effect.succeed(count)
        : Effect.fail(invalidSetting("HUB_WORKERS", `expected a number of processes (1 to 1024) or auto (one per core); got ${JSON.stringify(text)}`))
    })
  ),
  balance: Config.Literals(["kernel", "primary"], "HUB_WORKERS_BALANCE").pipe(Config.withDefault("kernel" as const)),
  index: Config.Int("HUB_WORKER").pipe(Config.option)
})

// ---------------------------------------------------------------------------
// The hub: WebSocket and HTTP settings
// ---------------------------------------------------------------------------

export interface HubSettings {
  /** Interface the HTTP server listens on. */
  readonly host: string
  /** Port of the HTTP server (0 picks a free one). */
  readonly port: number
  /** Path of the WebSocket endpoint. */
  readonly wsPath: `/${string}`
  /** Largest client-to-server frame in bytes; larger ones close the client with 1009. */
  readonly maxMessageSize: number
  /** Messages buffered per client before it is disconnected as a slow consumer. */
  readonly sendBuffer: number
  /**
   * permessage-deflate: messages of at least this many bytes are compressed
   * for clients that ask for compression; `None` turns compression off.
   */
  readonly compressionThreshold: Option.Option<number>
  /** Most patterns one client may subscribe to. */
  readonly maxSubscriptions: number
  /** Interval of protocol-level pings. */
  readonly pingPeriod: Duration.Duration
  /** A client that sends nothing (not even a pong) for this long is closed. */
  readonly pongTimeout: Duration.Duration
  /** A write that does not complete within this time closes the client. */
  readonly writeTimeout: Duration.Duration
  /** Time allowed for the whole shutdown before the process exits anyway. */
  readonly shutdownTimeout: Duration.Duration
  /** Enables `POST /api/v1/events` when set. */
  readonly publishToken: Option.Option<Redacted.Redacted>
  /** Largest body accepted by `POST /api/v1/events`, in bytes. */
  readonly publishMaxBody: number
  /** Security settings (see `SecuritySettings`). */
  readonly security: SecuritySettings
  /** Event types (patterns) clients may publish to the exchange with `publish`; empty: client publishing is off. */
  readonly clientPublishTypes: ReadonlyArray<string>
  /** Fields of an event's data that name its rooms (`run_id` -> room `run_id:<value>`); empty: rooms are off. */
  readonly roomKeys: ReadonlyArray<string>
  /** Most events kept for clients that resume (`since`). */
  readonly historyMaxEvents: number
  /** Events older than this are dropped from the history. */
  readonly historyMaxAge: Duration.Duration
  /** Most events a resume that cannot be served in full (a gap) replays: the newest ones. */
  readonly historyReplayMax: number
  /** Most recent `event_id`s remembered to drop repeated events (publisher retries); 0: off. */
  readonly dedupMaxEvents: number
  /** An `event_id` is remembered for this long after it was first seen. */
  readonly dedupMaxAge: Duration.Duration
  /** Path of the Server-Sent Events endpoint. */
  readonly ssePath: `/${string}`
  /** Interval of the `: keepalive` comment on an idle SSE stream (proxies close silent connections). */
  readonly sseKeepAlive: Duration.Duration
  /** The `retry:` an SSE stream starts with: how long `EventSource` waits before it reconnects. */
  readonly sseRetry: Duration.Duration
  /** Distinct event types labelled one by one in the metrics; the rest are counted as `other`. */
  readonly metricsMaxEventTypes: number
  /** On shutdown, readiness turns 503 this long before clients are told to reconnect (load balancers catch up). */
  readonly shutdownDrainDelay: Duration.Duration
  /** Enables the dashboard (`GET /dashboard`) when set, and protects it. */
  readonly dashboardToken: Option.Option<Redacted.Redacted>
  /**
   * Listens with `SO_REUSEPORT` on a socket of its own: set for the workers of `HUB_WORKERS` with
   * `HUB_WORKERS_BALANCE=kernel`, so that the kernel spreads the connections over them.
   */
  readonly reusePort: boolean
}

/** The FreqSearch events' identifiers, each a room a dashboard can follow (one run, one strategy, one job). */
export const defaultRoomKeys: ReadonlyArray<string> = ["run_id", "strategy_id", "job_id"]

/** Every hub setting's default: `HubConfig.make` and the environment's parsing both start from it. */
export const defaultHubSettings: HubSettings = {
  host: "0.0.0.0",
  port: 8080,
  wsPath: "/api/v1/ws/events",
  maxMessageSize: 512,
  sendBuffer: 256,
  compressionThreshold: Option.none(),
  maxSubscriptions: 256,
  pingPeriod: Duration.seconds(54),
  pongTimeout: Duration.seconds(60),
  writeTimeout: Duration.seconds(10),
  shutdownTimeout: Duration.seconds(10),
  publishToken: Option.none(),
  publishMaxBody: 1024 * 1024,
  security: defaultSecurity,
  clientPublishTypes: [],
  roomKeys: defaultRoomKeys,
  historyMaxEvents: 10_000,
  historyMaxAge: Duration.minutes(10),
  historyReplayMax: 1000,
  dedupMaxEvents: 10_000,
  dedupMaxAge: Duration.minutes(10),
  ssePath: "/api/v1/sse/events",
  sseKeepAlive: Duration.seconds(15),
  sseRetry: Duration.seconds(2),
  metricsMaxEventTypes: 100,
  shutdownDrainDelay: Duration.millis(500),
  dashboardToken: Option.none(),
  reusePort: false
}

/** The rules that tie settings together. */
const checkHubSettings = (settings: HubSettings): Effect.Effect<HubSettings, Config.ConfigError> => {
  if (!Duration.isLessThan(settings.pingPeriod, settings.pongTimeout)) {
    return Effect.fail(invalidSetting(
      "WS_PING_PERIOD",
      `must be shorter than WS_PONG_TIMEOUT (${Duration.format(settings.pongTimeout)}), or every client that ` +
        `only listens is closed before it is pinged; got ${Duration.format(settings.pingPeriod)}`
    ))
  }
  if (!Duration.isLessThan(settings.shutdownDrainDelay, settings.shutdownTimeout)) {
    return Effect.fail(invalidSetting(
      "SHUTDOWN_DRAIN_DELAY",
      `must be shorter than SHUTDOWN_TIMEOUT (${Duration.format(settings.shutdownTimeout)}), or the process exits ` +
        `before clients are closed; got ${Duration.format(settings.shutdownDrainDelay)}`
    ))
  }
  for (const pattern of settings.clientPublishTypes) {
    const checked = Topic.check(pattern, settings.security)
    if (Result.isFailure(checked)) return Effect.fail(invalidSetting("WS_PUBLISH_TYPES", checked.failure))
  }
  return Effect.succeed(settings)
}

export class HubConfig extends Context.Service<HubConfig, HubSettings>()("event-hub/HubConfig") {
  /** Settings with every default, overridden by `overrides`: handy for embedding and tests. */
  static make(overrides: Partial<HubSettings> = {}): HubSettings {
    return { ...defaultHubSettings, ...overrides }
  }
  /** A layer with fixed settings (no environment). */
  static layer(overrides: Partial<HubSettings> = {}): Layer.Layer<HubConfig> {
    return Layer.succeed(HubConfig, HubConfig.make(overrides))
  }
  /** The settings read from the environment (see the README's table). */
  static readonly fromEnv: Layer.Layer<HubConfig, Config.ConfigError> = Layer.effect(
    HubConfig,
    Config.all({
      host: Config.String("HOST").pipe(Config.withDefault(defaultHubSettings.host)),
      port: Config.Port("PORT").pipe(Config.withDefault(defaultHubSettings.port)),
      wsPath: Config.succeed(defaultHubSettings.wsPath),
      maxMessageSize: positiveInt("WS_MAX_MESSAGE_SIZE", defaultHubSettings.maxMessageSize),
      sendBuffer: positiveInt("WS_SEND_BUFFER", defaultHubSettings.sendBuffer),
      compressionThreshold: optionalString("WS_COMPRESSION_THRESHOLD").pipe(
        Config.mapEffect((text) => {
          if (Option.isNone(text)) return Effect.succeed(Option.none())
          const threshold = Number(text.value)
          return Number.isInteger(threshold) && threshold > 0
            ? Effect.succeed(Option.some(threshold))
            : Effect.fail(invalidSetting(
              "WS_COMPRESSION_THRESHOLD",
              `expected a positive number of bytes, or empty for no compression; got ${JSON.stringify(text.value)}`
            ))
        })
      ),
      maxSubscriptions: positiveInt("WS_MAX_SUBSCRIPTIONS", defaultHubSettings.maxSubscriptions),
      pingPeriod: goDuration("WS_PING_PERIOD", defaultHubSettings.pingPeriod),
      pongTimeout: goDuration("WS_PONG_TIMEOUT", defaultHubSettings.pongTimeout),
      writeTimeout: goDuration("WS_WRITE_TIMEOUT", defaultHubSettings.writeTimeout),
      shutdownTimeout: goDuration("SHUTDOWN_TIMEOUT", defaultHubSettings.shutdownTimeout),
      publishToken: optionalSecret("PUBLISH_TOKEN"),
      publishMaxBody: positiveInt("PUBLISH_MAX_BODY", defaultHubSettings.publishMaxBody),
      security: securitySettings,
      clientPublishTypes: Config.String("WS_PUBLISH_TYPES").pipe(
        Config.withDefault(defaultHubSettings.clientPublishTypes.join(",")),
        Config.map((patterns) => patterns.split(",").map((pattern) => pattern.trim()).filter((pattern) => pattern !== ""))
      ),
      roomKeys: Config.String("ROOM_KEYS").pipe(
        Config.withDefault(defaultHubSettings.roomKeys.join(",")),
        Config.map((keys) => keys.split(",").map((key) => key.trim()).filter((key) => key !== "")),
        Config.mapEffect((keys) => {
          const bad = keys.find((key) => !/^[A-Za-z0-9_.-]{1,64}$/.test(key))
          return bad === undefined
            ? Effect.succeed(keys)
            : Effect.fail(invalidSetting(
              "ROOM_KEYS",
              `${JSON.stringify(bad)} is not a field name (letters, digits, _ . -, at most 64)`
            ))
        })
      ),
      historyMaxEvents: positiveInt("HISTORY_MAX_EVENTS", defaultHubSettings.historyMaxEvents),
      historyMaxAge: goDuration("HISTORY_MAX_AGE", defaultHubSettings.historyMaxAge),
      historyReplayMax: positiveInt("HISTORY_REPLAY_MAX", defaultHubSettings.historyReplayMax),
      dedupMaxEvents: Config.Int("DEDUP_MAX_EVENTS").pipe(
        Config.withDefault(defaultHubSettings.dedupMaxEvents),
        Config.mapEffect((n) =>
          n >= 0
            ? Effect.succeed(n)
            : Effect.fail(invalidSetting("DEDUP_MAX_EVENTS", `expected 0 (off) or a positive integer, got ${n}`))
        )
      ),
      dedupMaxAge: goDuration("DEDUP_MAX_AGE", defaultHubSettings.dedupMaxAge),
      ssePath: Config.succeed(defaultHubSettings.ssePath),
      sseKeepAlive: goDuration("SSE_KEEPALIVE", defaultHubSettings.sseKeepAlive),
      sseRetry: goDuration("SSE_RETRY", defaultHubSettings.sseRetry),
      metricsMaxEventTypes: positiveInt("METRICS_MAX_EVENT_TYPES", defaultHubSettings.metricsMaxEventTypes),
      shutdownDrainDelay: goDuration("SHUTDOWN_DRAIN_DELAY", defaultHubSettings.shutdownDrainDelay),
      dashboardToken: optionalSecret("DASHBOARD_TOKEN"),
      reusePort: Config.map(workerSettings, (workers) => Option.isSome(workers.index) && workers.balance === "kernel")
    }).pipe(Config.mapEffect(checkHubSettings))
  )
}


// ---------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------

export interface LogSettings {
  readonly level: LogLevel.LogLevel
  readonly format: "json" | "pretty"
}

const logLevels: Record<string, LogLevel.LogLevel> = {
  trace: "Trace",
  debug: "Debug",
  info: "Info",
  warn: "Warn",
  warning: "Warn",
  error: "Error",
  fatal: "Fatal",
  none: "None",
  off: "None"
}

export const defaultLogSettings: LogSettings = { level: "Info", format: "json" }

export const logSettings: Config.Config<LogSettings> = Config.all({
  level: Config.String("LOG_LEVEL").pipe(
    Config.mapEffect((name) => {
      const level = logLevels[name.trim().toLowerCase()]
      return level === undefined
        ? Effect.fail(invalidSetting("LOG_LEVEL", `expected one of trace, debug, info, warn, error, fatal, none; got ${JSON.stringify(name)}`))
        : Effect.succeed(level)
    }),
    Config.withDefault(defaultLogSettings.level)
  ),
  format: Config.Literals(["json", "pretty"], "LOG_FORMAT").pipe(Config.withDefault(defaultLogSettings.format))
})

// ---------------------------------------------------------------------------
// The RabbitMQ source
// ---------------------------------------------------------------------------

/**
 * The renaming the FreqSearch Go backend applied before broadcasting: routing
 * key -> WebSocket `type`. Any key not listed is used as the type unchanged.
 */
export const defaultEventTypeMap: Readonly<Record<string, string>> = {
  "task.running": "backtest.submitted",
  "task.completed": "backtest.completed",
  "task.failed": "backtest.failed",
  "optimization.iteration": "optimization.iteration.completed"
}

export interface RabbitMqSettings {
  /**
   * Broker URL, or several separated by commas (the nodes of a cluster, tried in turn: see `brokerUrls`); `None`
   * disables the source (`RABBITMQ_URL=""`).
   */
  readonly url: Option.Option<Redacted.Redacted>
  /** Topic exchange the publishers use, declared durable as they declare it. */
  readonly exchange: string
  /** Queue mode: this instance's queue, one per hub instance (so every instance receives every event). */
  readonly queue: string
  /** Binding keys of the queue on the exchange. */
  readonly bindingKeys: ReadonlyArray<string>
  /** Unacknowledged deliveries the broker may send ahead. */
  readonly prefetch: number
  /** An unused queue (no hub consuming) is deleted by the broker after this long. */
  readonly queueExpires: Duration.Duration
  /** Where rejected (poison) messages go, if anywhere. */
  readonly deadLetterExchange: Option.Option<string>
  /** First delay before reconnecting; doubles on each failure. */
  readonly reconnectDelay: Duration.Duration
  /** Longest delay between reconnection attempts. */
  readonly maxReconnectWait: Duration.Duration
  /** Routing key -> event type renaming. */
  readonly eventTypeMap: Readonly<Record<string, string>>
  /**
   * `stream` (the default): a stream queue shared by every instance, read from any position, so nothing is lost
   * across restarts and instances; `queue`: this instance's own queue (lighter; resumes only on the same run).
   */
  readonly mode: "queue" | "stream"
  /** Stream mode: the stream queue every instance reads. */
  readonly stream: string
  /** Stream mode: the broker drops stream segments older than this (`x-max-age`). */
  readonly streamMaxAge: Duration.Duration
  /** Stream mode: the broker keeps the stream under this size (`x-max-length-bytes`). */
  readonly streamMaxBytes: number
  /**
   * Stream mode: the size of the stream's segments (`x-stream-max-segment-size-bytes`), the unit in which
   * retention drops events; `None`: the broker's default (500 MB), and the argument is not declared.
   */
  readonly streamMaxSegmentBytes: Option.Option<number>
  /**
   * Stream mode: how events enter the stream. `quorum` (the default): through an ingest quorum queue bound to the
   * exchange, moved into the stream by one hub at a time with confirms (nothing lost when the broker restarts);
   * `none`: the stream is bound to the exchange directly (lighter, but loses what is published in the moments after
   * a broker restart: see docs/operations.md).
   */
  readonly ingest: "quorum" | "none"
  /** Stream mode with ingest: what the ingest queue holds at most while no hub moves it (`x-max-length-bytes`). */
  readonly ingestMaxBytes: number
}

/** Stream mode: the stream queue every hub instance reads. */
export const defaultStreamName = "websocket_events_stream"
/** Stream mode: 1 GiB of retained events (the broker drops whole segments, 500 MB by default). */
export const defaultStreamMaxBytes = 1024 ** 3

/** Stream mode: the ingest quorum queue of a stream (see `RabbitMqSettings.ingest`). */
export const ingestQueueName = (stream: string): string => `${stream}.ingest`

const brokerUrlForm = /^amqps?:\/\/[^/]/

/** The broker URLs of `RABBITMQ_URL`: one, or the nodes of a cluster separated by commas, tried in turn. */
export const brokerUrls = (url: Redacted.Redacted): ReadonlyArray<Redacted.Redacted> =>
  Redacted.value(url).split(",").map((part) => part.trim()).filter((part) => part !== "").map((part) =>
    Redacted.make(part)
  )

/**
 * This instance's name when `HUB_INSTANCE_ID` is unset: `<hostname>.<port>`. Stable across restarts (a container
 * keeps its hostname when the orchestrator gives it one: compose's `hostname:`, a StatefulSet's pod name), and
 * unique per instance (two processes on one host cannot listen on the same port).
 */
export const defaultInstanceId = (port: number = 8080): string => `${hostname()}.${port}`

/** Queue mode: `websocket_events_queue.<instance id>`, this instance's own queue, the same after a restart. */
export const defaultQueueName = (instanceId: string = defaultInstanceId()): string =>
  `websocket_events_queue.${instanceId}`

const eventTypeMapConfig = (name: string): Config.Config<Readonly<Record<string, string>>> =>
  Config.String(name).pipe(
    Config.option,
    Config.mapEffect((value) => {
      if (Option.isNone(value) || value.value.trim() === "") return Effect.succeed(defaultEventTypeMap)
      const text = value.value.trim()
      let source = text
      if (!text.startsWith("{")) {
        try {
          source = readFileSync(text, "utf8")
        } catch (error) {
          return Effect.fail(invalidSetting(name, `cannot read the file ${text}: ${String(error)}`))
        }
      }
      let parsed: unknown
      try {
        parsed = JSON.parse(source)
      } catch {
        return Effect.fail(invalidSetting(name, "expected a JSON object (or a path to a JSON file)"))
      }
      if (
        typeof parsed !== "object" || parsed === null || Array.isArray(parsed) ||
        Object.values(parsed).some((v) => typeof v !== "string" || v.length === 0)
      ) {
        return Effect.fail(
          invalidSetting(name, "expected a JSON object mapping routing keys to event types (strings)")
        )
      }
      return Effect.succeed(parsed as Record<string, string>)
    })
  )

/** Every RabbitMQ setting's default (the queue name is this instance's): `make` and the parsing start from it. */
export const defaultRabbitMqSettings = (): RabbitMqSettings => ({
  url: Option.some(Redacted.make("amqp://guest:guest@localhost:5672/")),
  exchange: "freqsearch_events",
  queue: defaultQueueName(),
  bindingKeys: ["#"],
  prefetch: 100,
  queueExpires: Duration.minutes(10),
  deadLetterExchange: Option.none(),
  reconnectDelay: Duration.seconds(5),
  maxReconnectWait: Duration.seconds(30),
  eventTypeMap: defaultEventTypeMap,
  mode: "stream",
  stream: defaultStreamName,
  streamMaxAge: Duration.hours(24),
  streamMaxBytes: defaultStreamMaxBytes,
  streamMaxSegmentBytes: Option.none(),
  ingest: "quorum",
  ingestMaxBytes: defaultStreamMaxBytes
})

export class RabbitMqConfig extends Context.Service<RabbitMqConfig, RabbitMqSettings>()("event-hub/RabbitMqConfig") {
  static make(overrides: Partial<RabbitMqSettings> = {}): RabbitMqSettings {
    return { ...defaultRabbitMqSettings(), ...overrides }
  }
  static layer(overrides: Partial<RabbitMqSettings> = {}): Layer.Layer<RabbitMqConfig> {
    return Layer.succeed(RabbitMqConfig, RabbitMqConfig.make(overrides))
  }
  static readonly fromEnv: Layer.Layer<RabbitMqConfig, Config.ConfigError> = Layer.effect(
    RabbitMqConfig,
    Effect.suspend(() => rabbitMqSettings(defaultRabbitMqSettings()))
  )
}

const rabbitMqSettings = (defaults: RabbitMqSettings): Config.Config<RabbitMqSettings> =>
  Config.all({
    url: Config.Redacted("RABBITMQ_URL").pipe(
      Config.withDefault(Option.getOrElse(defaults.url, () => Redacted.make(""))),
      Config.mapEffect((url) => {
        const text = Redacted.value(url).trim()
        if (text === "") return Effect.succeed(Option.none())
        return brokerUrls(url).every((one) => brokerUrlForm.test(Redacted.value(one)))
          ? Effect.succeed(Option.some(url))
          : Effect.fail(invalidSetting("RABBITMQ_URL", "expected amqp://user:password@host:port/vhost (or amqps://), several separated by commas, or empty to disable"))
      })
    ),
    exchange: Config.String("RABBITMQ_EXCHANGE").pipe(
      Config.withDefault(defaults.exchange),
      Config.mapEffect((name) =>
        name.trim() === ""
          ? Effect.fail(invalidSetting("RABBITMQ_EXCHANGE", "must not be empty (the publishers' topic exchange)"))
          : Effect.succeed(name.trim())
      )
    ),
    queue: Config.all({
      queue: Config.String("RABBITMQ_QUEUE").pipe(Config.withDefault("")),
      instance: Config.String("HUB_INSTANCE_ID").pipe(Config.withDefault("")),
      port: Config.Int("PORT").pipe(Config.withDefault(defaultHubSettings.port)),
      worker: Config.map(workerSettings, (workers) => workers.index)
    }).pipe(Config.map(({ instance, port, queue, worker }) => {
      const name = queue.trim() !== "" ? queue.trim() : defaultQueueName(instance.trim() || defaultInstanceId(port))
      // Every worker of HUB_WORKERS is an instance of its own.
      return Option.match(worker, { onNone: () => name, onSome: (index) => `${name}.w${index}` })
    })),
    bindingKeys: Config.String("RABBITMQ_BINDING_KEYS").pipe(
      Config.withDefault(defaults.bindingKeys.join(",")),
      Config.mapEffect((keys) => {
        const list = keys.split(",").map((key) => key.trim()).filter((key) => key.length > 0)
        return list.length === 0
          ? Effect.fail(invalidSetting("RABBITMQ_BINDING_KEYS", "expected at least one binding key"))
          : Effect.succeed(list)
      })
    ),
    prefetch: positiveInt("RABBITMQ_PREFETCH", defaults.prefetch).pipe(
      Config.mapEffect((n) =>
        n <= 65535
          ? Effect.succeed(n)
          : Effect.fail(invalidSetting("RABBITMQ_PREFETCH", `at most 65535 (AMQP's limit), got ${n}`))
      )
    ),
    queueExpires: goDuration("RABBITMQ_QUEUE_EXPIRES", defaults.queueExpires),
    deadLetterExchange: Config.String("RABBITMQ_DEAD_LETTER_EXCHANGE").pipe(
      Config.option,
      Config.map(Option.filter((name) => name.trim().length > 0))
    ),
    reconnectDelay: goDuration("RABBITMQ_RECONNECT_DELAY", defaults.reconnectDelay),
    maxReconnectWait: goDuration("RABBITMQ_MAX_RECONNECT_WAIT", defaults.maxReconnectWait),
    eventTypeMap: eventTypeMapConfig("EVENT_TYPE_MAP"),
    mode: Config.Literals(["queue", "stream"], "RABBITMQ_MODE").pipe(Config.withDefault(defaults.mode)),
    stream: Config.String("RABBITMQ_STREAM").pipe(
      Config.withDefault(defaults.stream),
      Config.map((name) => name.trim() === "" ? defaults.stream : name.trim())
    ),
    streamMaxAge: goDuration("RABBITMQ_STREAM_MAX_AGE", defaults.streamMaxAge),
    streamMaxBytes: positiveInt("RABBITMQ_STREAM_MAX_BYTES", defaults.streamMaxBytes),
    streamMaxSegmentBytes: Config.Int("RABBITMQ_STREAM_MAX_SEGMENT_BYTES").pipe(
      Config.option,
      Config.mapEffect((value) =>
        Option.isSome(value) && value.value <= 0
          ? Effect.fail(invalidSetting("RABBITMQ_STREAM_MAX_SEGMENT_BYTES", "expected a positive number of bytes"))
          : Effect.succeed(value)
      )
    ),
    ingest: Config.Literals(["quorum", "none"], "RABBITMQ_INGEST").pipe(Config.withDefault(defaults.ingest)),
    ingestMaxBytes: positiveInt("RABBITMQ_INGEST_MAX_BYTES", defaults.ingestMaxBytes)
  })
