/**
 * The one resume path, for its three entry points: a `subscribe` with `since`
 * (Requests.ts), `?since=` on the WebSocket URL (WebSocketConnection.ts) and
 * an SSE stream's `Last-Event-ID` or `?since=` (SseConnection.ts). Each
 * outcome is told to the client one way, whichever way it asked:
 *
 * - refused: a `hub.error` with the reason, counted in `/metrics` where it is
 *   a limit: `resume_rate_limited` (the connection's or its address's resumes
 *   are spent, see `takeAllowance`), `invalid_request` (`since` is no event id
 *   of this hub's), `too_many_subscriptions` (the `subscribe` it came with).
 *   Nothing is replayed, and a resume under way goes on; a client registered
 *   to resume (`?since=`) is served live instead.
 * - served: (after `hub.subscribed`, for a `subscribe`) the events after
 *   `since` that match the subscription, then `hub.live`.
 * - a gap: the history no longer reaches back to `since` (`missed`) or cannot
 *   place it (`unknown`): `hub.history_gap` with that reason first, then the
 *   newest events held, then `hub.live` (told by the replay, hub/Replay.ts).
 */
import { Effect } from "effect"
import type { ClientId, HubClients, InvalidSince, TooManySubscriptions } from "../hub/Hub.js"
import { type ErrorData, HubMessageType } from "../protocol/Protocol.js"
import type { Limits } from "../security/Limits.js"
import type { TokenBucket } from "../security/TokenBucket.js"

/** What the path needs of a connection (see Connection.ts). */
export interface Resuming {
  readonly id: ClientId
  readonly remoteAddress: string
  readonly services: { readonly hub: HubClients["Service"]; readonly limits: Limits["Service"] }
  reply(type: string, data: unknown): Effect.Effect<void>
  refuse(error: ErrorData): Effect.Effect<void>
}

/**
 * Spends a resume of the connection's allowance (`WS_RESUME_RATE_LIMIT`, its own bucket) and then of its address's
 * (`WS_RESUME_RATE_LIMIT_PER_IP`): the refusal when either is spent. Before anything changes, so that a refused
 * resume leaves the subscription, and a resume under way, as they were.
 */
export const takeAllowance = (connection: Resuming, own: TokenBucket): ErrorData | undefined => {
  const limits = connection.services.limits
  const { resumeRate, resumeRatePerIp } = limits.settings
  const now = Date.now()
  // The connection's own allowance first: a connection over it spends nothing of its address's.
  let limit = `${resumeRate} per minute on one connection`
  let seconds = own.take(now) ? 0 : own.retryAfter(now)
  if (seconds === 0) {
    limit = `${resumeRatePerIp} per minute from one address`
    seconds = limits.takeResume(connection.remoteAddress, now)
  }
  if (seconds === 0) return undefined
  limits.refused("resume_rate_limited")
  return { code: "resume_rate_limited", message: `more than ${limit}: nothing replayed; retry in ${seconds} s` }
}

/** A `since` that is no event id of this hub's. */
const invalidSince = (error: InvalidSince): ErrorData => ({ code: "invalid_request", message: error.message })

/** A subscription beyond `WS_MAX_SUBSCRIPTIONS` patterns (with or without `since`): counted, and refused. */
export const tooManySubscriptions = (connection: Resuming, error: TooManySubscriptions): Effect.Effect<void> => {
  connection.services.limits.refused("too_many_subscriptions")
  return connection.refuse({ code: "too_many_subscriptions", message: error.message })
}

/**
 * Resumes `connection` from `since`, its allowance taken already (`takeAllowance`). With `patterns` (a `subscribe`
 * with `since`) its subscription changes too, checked before the resume replaces one under way, and replied to
 * before the replay starts. The replay then runs on its own, paced by the send buffer, while the connection goes
 * on with the next frames.
 */
export const resume = (connection: Resuming, since: string, patterns?: ReadonlyArray<string>): Effect.Effect<void> => {
  const { hub } = connection.services
  const id = connection.id
  const replay = hub.resume(id, since).pipe(
    Effect.matchEffect({
      onFailure: (error) => connection.refuse(invalidSince(error)),
      onSuccess: (resume) =>
        patterns === undefined ? resume.start : hub.subscribe(id, patterns).pipe(
          Effect.matchEffect({
            onFailure: (error) => Effect.andThen(resume.cancel, tooManySubscriptions(connection, error)),
            onSuccess: (now) => Effect.andThen(connection.reply(HubMessageType.subscribed, { event_types: now }), resume.start)
          })
        )
    })
  )
  if (patterns === undefined) return replay
  // Refused before the resume replaces one under way: a refusal must leave that one going.
  return Effect.matchEffect(hub.checkSubscribe(id, patterns), {
    onFailure: (error) => tooManySubscriptions(connection, error),
    onSuccess: () => replay
  })
}
