/**
 * The pure parts of the security settings and limits: configuration parsing,
 * token buckets, pattern checks, pattern coverage for `event_types`.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Result, Layer, Option, Redacted } from "effect"
import type { IncomingMessage } from "node:http"
import { defaultSecurity, HubConfig } from "../src/config/Config.js"
import * as Topic from "../src/protocol/Topic.js"
import { clientAddress, isOriginAllowed } from "../src/security/Limits.js"
import { MessageRate, TokenBucket } from "../src/security/TokenBucket.js"
import { covers } from "../src/protocol/Topic.js"

const readSecurity = (env: Record<string, string>) =>
  Effect.map(HubConfig, (config) => config.security).pipe(
    Effect.provide(HubConfig.fromEnv.pipe(
      Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env, preserveEmptyStrings: true })))
    ))
  )

describe("security settings", () => {
  it.effect("default: every origin, no authentication, the documented limits", () =>
    Effect.gen(function*() {
      expect(yield* readSecurity({})).toEqual(defaultSecurity)
    }))

  it.effect("reads origins, a secret, issuer, audience and limits", () =>
    Effect.gen(function*() {
      const settings = yield* readSecurity({
        ALLOWED_ORIGINS: "https://App.example.com/, http://localhost:3000",
        AUTH_JWT_SECRET: "x".repeat(32),
        AUTH_JWT_ISSUER: "issuer",
        AUTH_JWT_AUDIENCE: "hub",
        WS_MAX_CONNECTIONS_PER_IP: "7",
        WS_FIRST_MESSAGE_TIMEOUT: "45s",
        TRUST_PROXY: "true"
      })
      expect(settings.allowedOrigins).toEqual(["https://app.example.com", "http://localhost:3000"])
      expect(settings.authKeys._tag).toBe("secret")
      expect(settings.authIssuer).toEqual(Option.some("issuer"))
      expect(settings.maxConnectionsPerIp).toBe(7)
      expect(settings.firstMessageTimeout.pipe(Option.map(Duration.toMillis))).toEqual(Option.some(45_000))
      expect(settings.trustProxy).toBe(true)
    }))

  it.effect.each([
    [{ AUTH_JWT_SECRET: "short" }, "AUTH_JWT_SECRET"],
    [{ AUTH_JWT_SECRET: "x".repeat(32), AUTH_JWKS_URL: "https://idp/jwks" }, "only one"],
    [{ AUTH_JWKS_URL: "ftp://idp/jwks" }, "AUTH_JWKS_URL"],
    [{ AUTH_JWT_PUBLIC_KEY: "/no/such/file.pem" }, "AUTH_JWT_PUBLIC_KEY"],
    [{ ALLOWED_ORIGINS: "app.example.com" }, "ALLOWED_ORIGINS"],
    [{ WS_RATE_LIMIT: "0" }, "WS_RATE_LIMIT"],
    [{ WS_MAX_PATTERN_LENGTH: "300" }, "WS_MAX_PATTERN_LENGTH"],
    [{ WS_FIRST_MESSAGE_TIMEOUT: "soon" }, "WS_FIRST_MESSAGE_TIMEOUT"]
  ] as ReadonlyArray<readonly [Record<string, string>, string]>)("refuses %j", ([env, expected]) =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(readSecurity(env))
      expect(String(error)).toContain(expected)
    }))

  it.effect("never shows the secret in an error", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(readSecurity({ AUTH_JWT_SECRET: "tiny-secret" }))
      expect(String(error)).not.toContain("tiny-secret")
      expect(String(Redacted.make("tiny-secret"))).not.toContain("tiny-secret")
    }))
})

describe("TokenBucket and MessageRate", () => {
  it("allows a burst, then the rate", () => {
    const bucket = new TokenBucket(2, 3, 0)
    expect([bucket.take(0), bucket.take(0), bucket.take(0), bucket.take(0)]).toEqual([true, true, true, false])
    expect(bucket.retryAfter(0)).toBe(1)
    expect(bucket.take(500)).toBe(true)
    expect(bucket.take(500)).toBe(false)
  })

  it("warns once, drops, then closes after a burst of dropped messages; forgives a client that calmed down", () => {
    const rate = new MessageRate({ messageRate: 1, messageBurst: 2 }, 0)
    expect([rate.check(0), rate.check(0), rate.check(0), rate.check(0), rate.check(0)]).toEqual([
      "accept",
      "accept",
      "warn",
      "drop",
      "close"
    ])
    const calm = new MessageRate({ messageRate: 1, messageBurst: 2 }, 0)
    expect([calm.check(0), calm.check(0), calm.check(0)]).toEqual(["accept", "accept", "warn"])
    // Two seconds later the bucket is full again: the episode is over.
    expect([calm.check(2000), calm.check(2000), calm.check(2000)]).toEqual(["accept", "accept", "warn"])
  })
})

describe("Topic.check", () => {
  const limits = { maxPatternLength: 30, maxPatternWords: 4 }
  it.each(["backtest.completed", "backtest.*", "optimization.#", "#", "*.*.x", "a-b.c_d"])("accepts %j", (pattern) => {
    expect(Result.isSuccess(Topic.check(pattern, limits))).toBe(true)
  })
  it.each(["a..b", ".a", "a.", "a b", "a\tb", "ab*", "#x.y", "a.b.c.d.e", "x".repeat(31)])("refuses %j", (pattern) => {
    expect(Result.isFailure(Topic.check(pattern, limits))).toBe(true)
  })
})

describe("covers (event_types claim against a subscription)", () => {
  it.each([
    ["#", "anything.#", true],
    ["backtest.*", "backtest.completed", true],
    ["backtest.*", "backtest.*", true],
    ["backtest.#", "backtest.*", true],
    ["backtest.#", "backtest.#", true],
    ["backtest.#", "backtest", true],
    ["backtest.*", "backtest.#", false],
    ["backtest.*", "#", false],
    ["backtest.*", "*.completed", false],
    ["*.completed", "backtest.completed", true],
    ["*.completed", "#.completed", false],
    ["a.#.z", "a.b.c.z", true],
    ["a.#.z", "a.*.z", true],
    ["a.#.z", "a.#.y", false],
    ["backtest.completed", "backtest.failed", false]
  ] as const)("%s covers %s: %s", (allowed, pattern, expected) => {
    expect(covers(allowed, pattern)).toBe(expected)
  })
})

describe("client address and origin", () => {
  const request = (remoteAddress: string, forwarded?: string) =>
    ({ socket: { remoteAddress }, headers: forwarded === undefined ? {} : { "x-forwarded-for": forwarded } }) as unknown as IncomingMessage

  it("uses the peer address unless TRUST_PROXY; then the last X-Forwarded-For entry", () => {
    expect(clientAddress(request("10.0.0.1", "1.2.3.4"), false)).toBe("10.0.0.1")
    expect(clientAddress(request("10.0.0.1", "6.6.6.6, 1.2.3.4"), true)).toBe("1.2.3.4")
    expect(clientAddress(request("10.0.0.1"), true)).toBe("10.0.0.1")
  })

  it("allows listed origins (case and trailing slash aside), requests without Origin, and everything with *", () => {
    const settings = { allowedOrigins: ["https://app.example.com"] }
    expect(isOriginAllowed(settings, "https://APP.example.com/")).toBe(true)
    expect(isOriginAllowed(settings, undefined)).toBe(true)
    expect(isOriginAllowed(settings, "https://app.example.com.evil.io")).toBe(false)
    expect(isOriginAllowed({ allowedOrigins: ["*"] }, "https://evil.io")).toBe(true)
  })
})
