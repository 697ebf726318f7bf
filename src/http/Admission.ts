/**
 * Who may open a connection, for both endpoints (WebSocket and SSE): the
 * origin check, the connection rate and limits (per client address and in total), the
 * token (header, subprotocol or `?token=`) and the resume point (`since`).
 * Refusals are plain HTTP answers with a JSON reason, counted in `/metrics`
 * (`security`) and logged (never the token: the URL is not logged).
 */
import { Effect, Result, Option } from "effect"
import type { IncomingMessage } from "node:http"
import type { HubSettings } from "../config/Config.js"
import { SinceParameter } from "../protocol/Protocol.js"
import type { Auth, Principal } from "../security/Auth.js"
import { clientAddress, isOriginAllowed, type Limits, type Refusal } from "../security/Limits.js"

/** Seconds a client refused for the connection limits is told to wait (`Retry-After`). */
const connectionRetryAfter = 5

/** A connection let in: its slot is held until `release` (idempotent), called when the connection ends. */
export interface Admitted {
  readonly address: string
  readonly release: () => void
}

/** A connection refused before it opens: the HTTP answer and the `security` counter. */
export interface Refused {
  readonly address: string
  readonly refusal: Refusal | undefined
  readonly status: number
  readonly error: string
  /** A machine-readable code (the `hub.error` code of the same refusal), where there is one. */
  readonly code?: string
  readonly headers?: Readonly<Record<string, string>>
}

/** The query parameters of a request URL. */
export const queryOf = (url: string | undefined): URLSearchParams => {
  const query = url?.indexOf("?") ?? -1
  return new URLSearchParams(query === -1 ? "" : url!.slice(query + 1))
}

/** The `since` query parameter (`/api/v1/ws/events?since=<id>`), if any. */
export const sinceOf = (url: string | undefined): string | undefined => queryOf(url).get(SinceParameter) ?? undefined

export class Admission {
  constructor(
    readonly config: HubSettings,
    readonly limits: Limits["Service"],
    readonly auth: Auth["Service"]
  ) {}

  /** The origin and the connection limits, checked at once (no fiber): the slot, or the refusal. */
  check(request: IncomingMessage): Result.Result<Admitted, Refused> {
    const security = this.config.security
    const address = clientAddress(request, security.trustProxy)
    const origin = request.headers.origin
    if (!isOriginAllowed(security, origin)) {
      return Result.fail({
        address,
        refusal: "origin_refused",
        status: 403,
        error: `origin ${JSON.stringify(origin)} is not allowed`
      })
    }
    // Before the slot: a reconnect storm from one address is refused at the cost of a token bucket.
    const wait = this.limits.takeConnection(address, Date.now())
    if (wait > 0) {
      return Result.fail({
        address,
        refusal: "connection_rate_limited",
        status: 429,
        error: `more than ${security.connectionRate} new connections per second from your address; retry later`,
        headers: { "retry-after": String(wait) }
      })
    }
    const slot = this.limits.acquireConnection(address)
    if (Result.isFailure(slot)) {
      return Result.fail({
        address,
        refusal: slot.failure,
        status: 503,
        error: slot.failure === "too_many_connections"
          ? "too many connections to this hub; retry later"
          : "too many connections from your address; retry later",
        headers: { "retry-after": String(connectionRetryAfter) }
      })
    }
    return Result.succeed({ address, release: slot.success })
  }

  /** The request's token: its principal (`undefined` with authentication off), or the 401/503 refusal. */
  authenticate(request: IncomingMessage, address: string): Effect.Effect<Principal | undefined, Refused> {
    if (!this.auth.enabled) return Effect.succeed(undefined)
    return this.auth.authenticate(request).pipe(
      Effect.map(Option.getOrUndefined),
      Effect.mapError((error): Refused => ({
        address,
        refusal: "unauthorized",
        status: error.status,
        error: error.message,
        headers: {
          "www-authenticate": error.reason === "missing"
            ? "Bearer"
            : `Bearer error="invalid_token", error_description="${error.message}"`
        }
      }))
    )
  }

  /** Counts the refusal at once (as the answer goes out), and returns its log line for the endpoint's runtime. */
  refused(refused: Refused): Effect.Effect<void> {
    if (refused.refusal !== undefined) this.limits.refused(refused.refusal)
    return Effect.logInfo("connection refused").pipe(
      Effect.annotateLogs({
        remote_address: refused.address,
        status: refused.status,
        reason: refused.refusal ?? refused.code ?? "bad_request",
        detail: refused.error
      })
    )
  }
}
