/**
 * Authentication of WebSocket clients with JWTs, verified by `jose`: HS256
 * with a shared secret, or RS256/ES256 with keys from a JWKS endpoint (cached
 * and refreshed by `jose`) or one configured public key. Off unless one of
 * `AUTH_JWT_SECRET`, `AUTH_JWKS_URL`, `AUTH_JWT_PUBLIC_KEY` is set.
 *
 * Only the algorithms of the configured key are accepted, so `alg: none` and
 * algorithm confusion (an HS256 token "signed" with a public key) are
 * refused. Errors never carry the token, only why it was refused.
 */
import { type Config, Context, Data, Duration, Effect, Layer, Option, Redacted } from "effect"
import * as jose from "jose"
import type { IncomingMessage } from "node:http"
import { createPublicKey } from "node:crypto"
import { type AuthKeySource, HubConfig, invalidSetting } from "../config/Config.js"
import * as Topic from "../protocol/Topic.js"

/** The subprotocol that carries a token: `Sec-WebSocket-Protocol: bearer, <token>`. */
export const BearerProtocol = "bearer"

/** The claim that limits the event types a client may receive (patterns, as in subscriptions). */
export const EventTypesClaim = "event_types"

/** Allowed clock difference between the token's issuer and the hub, for `exp` and `nbf`. */
const clockTolerance = Duration.seconds(5)

/** Who is connected, as the token says. */
export interface Principal {
  readonly subject: string | undefined
  /** Patterns the client may receive; `undefined`: no limit (the token has no `event_types` claim). */
  readonly eventTypes: ReadonlyArray<string> | undefined
  /** When the token expires (epoch milliseconds). */
  readonly expiresAt: number
}

/** A token was refused. `message` is safe to show and to log: it never contains the token. */
export class AuthError extends Data.TaggedError("AuthError")<{
  readonly reason: "missing" | "malformed" | "invalid_signature" | "expired" | "invalid_claims" | "keys_unavailable"
  readonly message: string
}> {
  /** 401 for a bad or missing token; 503 when the keys cannot be fetched (not the client's fault). */
  get status(): number {
    return this.reason === "keys_unavailable" ? 503 : 401
  }
}

/** Is `pattern` within what `principal` may receive? */
export const allows = (principal: Principal | undefined, pattern: string): boolean =>
  principal?.eventTypes === undefined || principal.eventTypes.some((allowed) => Topic.covers(allowed, pattern))

/**
 * The token of an upgrade request: `Authorization: Bearer <token>`, the pair
 * `bearer, <token>` in `Sec-WebSocket-Protocol`, or the `token` query parameter.
 */
export const tokenOf = (request: IncomingMessage): string | undefined => {
  const bearer = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? "")?.[1]
  if (bearer !== undefined) return bearer
  const protocols = (request.headers["sec-websocket-protocol"] ?? "").split(",").map((p) => p.trim())
  const index = protocols.indexOf(BearerProtocol)
  if (index !== -1 && protocols[index + 1]) return protocols[index + 1]
  const query = (request.url ?? "").indexOf("?")
  if (query === -1) return undefined
  return new URLSearchParams(request.url!.slice(query + 1)).get("token") ?? undefined
}

type Verifier = (token: string, options: jose.JWTVerifyOptions) => Promise<jose.JWTVerifyResult>

/** Builds the verifier of a key source; fails at startup on a key that cannot be used. */
const makeVerifier = (source: Exclude<AuthKeySource, { _tag: "none" }>) =>
  Effect.gen(function*() {
    switch (source._tag) {
      case "secret": {
        const key = new TextEncoder().encode(Redacted.value(source.secret))
        return { algorithms: ["HS256"], verify: ((token, options) => jose.jwtVerify(token, key, options)) as Verifier }
      }
      case "jwks": {
        const keys = jose.createRemoteJWKSet(source.url, { cacheMaxAge: Duration.toMillis(source.cacheMaxAge) })
        return {
          algorithms: ["RS256", "ES256"],
          verify: ((token, options) => jose.jwtVerify(token, keys, options)) as Verifier
        }
      }
      case "publicKey": {
        const key = yield* Effect.tryPromise({
          try: async () => {
            if (source.key.startsWith("{")) {
              const jwk = JSON.parse(source.key) as jose.JWK
              const alg = jwk.alg ?? (jwk.kty === "RSA" ? "RS256" : "ES256")
              return { alg, key: await jose.importJWK(jwk, alg) }
            }
            const type = createPublicKey(source.key).asymmetricKeyType
            const alg = type === "rsa" ? "RS256" : type === "ec" ? "ES256" : undefined
            if (alg === undefined) throw new Error(`unsupported key type ${type}; expected RSA or EC P-256`)
            return { alg, key: await jose.importSPKI(source.key, alg) }
          },
          catch: (error) =>
            invalidSetting(
              "AUTH_JWT_PUBLIC_KEY",
              `expected an RSA or EC P-256 public key, PEM (SPKI) or JWK: ${error instanceof Error ? error.message : String(error)}`
            )
        })
        if (key.alg !== "RS256" && key.alg !== "ES256") {
          return yield* Effect.fail(
            invalidSetting("AUTH_JWT_PUBLIC_KEY", `unsupported algorithm ${key.alg}; expected RS256 or ES256`)
          )
        }
        return {
          algorithms: [key.alg],
          verify: ((token, options) => jose.jwtVerify(token, key.key, options)) as Verifier
        }
      }
    }
  })

/** Why `jose` refused a token, in words fit for a 401 body and a log line. */
const describe = (error: unknown): AuthError => {
  const code = error instanceof jose.errors.JOSEError ? error.code : undefined
  switch (code) {
    case "ERR_JWT_EXPIRED":
      return new AuthError({ reason: "expired", message: "token expired" })
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
      return new AuthError({ reason: "invalid_signature", message: "token signature is invalid" })
    case "ERR_JOSE_ALG_NOT_ALLOWED":
      return new AuthError({ reason: "invalid_signature", message: "token algorithm not allowed" })
    case "ERR_JWKS_NO_MATCHING_KEY":
      return new AuthError({ reason: "invalid_signature", message: "no key matches the token" })
    case "ERR_JWT_CLAIM_VALIDATION_FAILED":
      return new AuthError({
        reason: "invalid_claims",
        message: `token claim ${(error as jose.errors.JWTClaimValidationFailed).claim} is invalid`
      })
    case "ERR_JWKS_TIMEOUT":
    case "ERR_JWKS_INVALID":
      return new AuthError({ reason: "keys_unavailable", message: "signing keys are unavailable" })
    case "ERR_JWS_INVALID":
    case "ERR_JWT_INVALID":
    case "ERR_JOSE_NOT_SUPPORTED":
      return new AuthError({ reason: "malformed", message: "token is malformed" })
    default:
      // Not a jose error: the JWKS endpoint could not be reached (fetch failed).
      return code === undefined
        ? new AuthError({ reason: "keys_unavailable", message: "signing keys are unavailable" })
        : new AuthError({ reason: "malformed", message: "token is malformed" })
  }
}

/** The `event_types` claim: absent (no limit), or an array of valid patterns. */
const eventTypesOf = (
  payload: jose.JWTPayload,
  limits: Topic.PatternLimits
): ReadonlyArray<string> | undefined | AuthError => {
  const claim = payload[EventTypesClaim]
  if (claim === undefined) return undefined
  const invalid = new AuthError({
    reason: "invalid_claims",
    message: `token claim ${EventTypesClaim} must be an array of event type patterns`
  })
  if (!Array.isArray(claim) || claim.length > 1024) return invalid
  for (const pattern of claim) {
    if (typeof pattern !== "string" || Topic.check(pattern, limits)._tag === "Failure") {
      return invalid
    }
  }
  return claim as ReadonlyArray<string>
}

export class Auth extends Context.Service<Auth, {
  /** True when clients must present a token. */
  readonly enabled: boolean
  /** Verifies a token: signature, algorithm, `exp` (required), `nbf`, and `iss`/`aud` when configured. */
  readonly verify: (token: string) => Effect.Effect<Principal, AuthError>
  /**
   * Authenticates an upgrade request: `None` when authentication is off, the
   * principal when its token is good, an `AuthError` otherwise.
   */
  readonly authenticate: (request: IncomingMessage) => Effect.Effect<Option.Option<Principal>, AuthError>
}>()("event-hub/Auth") {
  static readonly layer: Layer.Layer<Auth, Config.ConfigError, HubConfig> = Layer.effect(
    Auth,
    Effect.gen(function*() {
      const { security } = yield* HubConfig
      const source = security.authKeys
      if (source._tag === "none") {
        return Auth.of({
          enabled: false,
          verify: () => Effect.fail(new AuthError({ reason: "missing", message: "authentication is not enabled" })),
          authenticate: () => Effect.succeed(Option.none())
        })
      }
      const verifier = yield* makeVerifier(source)
      const options: jose.JWTVerifyOptions = {
        algorithms: verifier.algorithms,
        requiredClaims: ["exp"],
        clockTolerance: Duration.toSeconds(clockTolerance),
        ...Option.match(security.authIssuer, { onNone: () => ({}), onSome: (issuer) => ({ issuer }) }),
        ...Option.match(security.authAudience, { onNone: () => ({}), onSome: (audience) => ({ audience }) })
      }
      const verify = (token: string) =>
        Effect.tryPromise({ try: () => verifier.verify(token, options), catch: describe }).pipe(
          Effect.flatMap(({ payload }) => {
            const eventTypes = eventTypesOf(payload, security)
            return eventTypes instanceof AuthError
              ? Effect.fail(eventTypes)
              : Effect.succeed<Principal>({ subject: payload.sub, eventTypes, expiresAt: payload.exp! * 1000 })
          })
        )
      return Auth.of({
        enabled: true,
        verify,
        authenticate: (request) => {
          const token = tokenOf(request)
          return token === undefined
            ? Effect.fail(
              new AuthError({
                reason: "missing",
                message: "missing token (Authorization: Bearer, Sec-WebSocket-Protocol: bearer, <token>, or ?token=)"
              })
            )
            : Effect.map(verify(token), Option.some)
        }
      })
    })
  )
}
