/**
 * The checks of what a client asks to receive, shared by the WebSocket
 * requests (`subscribe`, `join`) and the SSE endpoint (`?types=`, `?rooms=`):
 * the pattern limits, the token's `event_types` claim, and the shape of rooms.
 * Each returns the refusal (counted in `/metrics` under `security`), or
 * `undefined` when the request may go on.
 */
import { Result } from "effect"
import type { ErrorData } from "../protocol/Protocol.js"
import * as Topic from "../protocol/Topic.js"
import { allows, type Principal } from "./Auth.js"
import type { Limits } from "./Limits.js"

/** The pattern limits and the token's `event_types`: the reason to refuse a subscription, if any. */
export const checkPatterns = (
  limits: Limits["Service"],
  principal: Principal | undefined,
  patterns: ReadonlyArray<string>
): ErrorData | undefined => {
  for (const pattern of patterns) {
    const checked = Topic.check(pattern, limits.settings)
    if (Result.isFailure(checked)) {
      limits.refused("invalid_pattern")
      return { code: "invalid_pattern", message: checked.failure }
    }
  }
  const forbidden = patterns.filter((pattern) => !allows(principal, pattern))
  if (forbidden.length === 0) return undefined
  limits.refused("forbidden_event_types")
  return {
    code: "forbidden_event_types",
    message: `not allowed by your token: ${forbidden.map((p) => JSON.stringify(p)).join(", ")}; ` +
      `allowed: ${(principal?.eventTypes ?? []).map((p) => JSON.stringify(p)).join(", ")}`
  }
}

/** Rooms are `<key>:<value>` with a key of `ROOM_KEYS`: the reason to refuse them, if any. */
export const checkRooms = (roomKeys: ReadonlyArray<string>, rooms: ReadonlyArray<string>): ErrorData | undefined => {
  const bad = rooms.find((room) => {
    const colon = room.indexOf(":")
    return colon <= 0 || colon === room.length - 1 || !roomKeys.includes(room.slice(0, colon))
  })
  if (bad === undefined) return undefined
  return {
    code: "invalid_room",
    message: roomKeys.length === 0
      ? "rooms are not enabled on this hub (ROOM_KEYS)"
      : `${JSON.stringify(bad.slice(0, 64))} is not a room; rooms are <key>:<value> with a key among ` +
        roomKeys.join(", ")
  }
}
