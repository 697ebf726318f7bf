/**
 * The hub's limits against abuse: connection counts (in total and per client
 * address), token buckets for message and request rates (TokenBucket.ts), the shape of
 * subscription patterns, and the counting of every refusal in `/metrics`
 * (under `security`).
 */
import { Context, Effect, Result, Layer } from "effect"
import type { IncomingMessage } from "node:http"
import { HubConfig, type SecuritySettings } from "../config/Config.js"
import { HubMetrics } from "../ops/Metrics.js"
import { AddressBuckets } from "./AddressBuckets.js"
import { TokenBucket } from "./TokenBucket.js"

/** Refusals of a connection before it opens (a WebSocket handshake, an SSE stream): `hub_connections_refused_total`. */
export const connectionRefusals = [
  "origin_refused",
  "unauthorized",
  "too_many_connections",
  "too_many_connections_per_ip",
  "connection_rate_limited",
  "handshake_timeout"
] as const

/** Refusals of a request, on an open connection or over HTTP: `hub_requests_refused_total`. */
export const requestRefusals = [
  "resume_rate_limited",
  "token_refresh_refused",
  "rate_limited",
  "too_many_subscriptions",
  "invalid_pattern",
  "forbidden_event_types",
  "publish_forbidden",
  "publish_unauthorized",
  "publish_rate_limited",
  "publish_too_large"
] as const

/**
 * Refusals that close an open connection, counted with every other end in `hub_disconnects_total`, not as refused
 * connections or requests.
 */
export const closingRefusals = ["first_message_timeout", "token_expired", "rate_limit_closed"] as const

/** Names of the `security` counters in `/metrics`: one per kind of refusal, each in one of the three kinds above. */
export const refusals = [...connectionRefusals, ...requestRefusals, ...closingRefusals] as const
export type Refusal = (typeof refusals)[number]

export type ConnectionRefusal = "too_many_connections" | "too_many_connections_per_ip"

/**
 * The client's address: the socket's peer, or, with `TRUST_PROXY`, the last
 * entry of `X-Forwarded-For` (the one the trusted proxy appended; earlier
 * entries come from the client and prove nothing).
 */
export const clientAddress = (request: IncomingMessage, trustProxy: boolean): string => {
  const peer = request.socket.remoteAddress ?? "unknown"
  if (!trustProxy) return peer
  const header = request.headers["x-forwarded-for"]
  const value = Array.isArray(header) ? header.at(-1) : header
  const last = value?.split(",").at(-1)?.trim()
  return last === undefined || last === "" ? peer : last
}

export class Limits extends Context.Service<Limits, {
  readonly settings: SecuritySettings
  /**
   * Reserves a connection slot for `address`; returns its release (to call
   * once, when the connection ends), or why it was refused.
   */
  readonly acquireConnection: (address: string) => Result.Result<() => void, ConnectionRefusal>
  /** Spends a token of `address`'s new-connection bucket: `0`, or the seconds to wait (`Retry-After`). */
  readonly takeConnection: (address: string, now: number) => number
  /** Spends a token of `address`'s resume bucket: `0`, or the seconds to wait. */
  readonly takeResume: (address: string, now: number) => number
  /** Spends a token of the publish endpoint's bucket; the seconds to wait when there is none. */
  readonly takePublish: (now: number) => Result.Result<void, number>
  /** Counts a refusal in `/metrics` (`security.<name>`). */
  readonly refused: (name: Refusal) => void
}>()("event-hub/Limits") {
  static readonly layer: Layer.Layer<Limits, never, HubConfig | HubMetrics> = Layer.effect(
    Limits,
    Effect.gen(function*() {
      const { security: settings } = yield* HubConfig
      const metrics = yield* HubMetrics
      metrics.declare("security", refusals)
      let total = 0
      const perAddress = new Map<string, number>()
      const publish = new TokenBucket(settings.publishRate, settings.publishBurst, Date.now())
      const connectionRate = new AddressBuckets(settings.connectionRate, settings.connectionBurst)
      const resumeRate = new AddressBuckets(settings.resumeRatePerIp / 60, settings.resumeRatePerIp)
      return Limits.of({
        settings,
        acquireConnection: (address) => {
          if (total >= settings.maxConnections) return Result.fail("too_many_connections")
          const current = perAddress.get(address) ?? 0
          if (current >= settings.maxConnectionsPerIp) return Result.fail("too_many_connections_per_ip")
          total++
          perAddress.set(address, current + 1)
          let released = false
          return Result.succeed(() => {
            if (released) return
            released = true
            total--
            const left = (perAddress.get(address) ?? 1) - 1
            if (left <= 0) perAddress.delete(address)
            else perAddress.set(address, left)
          })
        },
        takeConnection: (address, now) => connectionRate.take(address, now),
        takeResume: (address, now) => resumeRate.take(address, now),
        takePublish: (now) => publish.take(now) ? Result.succeed(undefined) : Result.fail(publish.retryAfter(now)),
        refused: (name) => metrics.count("security", name)
      })
    })
  )
}

/**
 * May a request with this `Origin` header open a WebSocket (or read an HTTP
 * answer)? Requests without one come from programs, not browsers: the origin
 * check is a browser protection, and they are left to authentication.
 */
export const isOriginAllowed = (settings: Pick<SecuritySettings, "allowedOrigins">, origin: string | undefined): boolean =>
  origin === undefined || settings.allowedOrigins[0] === "*" ||
  settings.allowedOrigins.includes(origin.trim().replace(/\/+$/, "").toLowerCase())
