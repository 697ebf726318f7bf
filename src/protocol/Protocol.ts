/**
 * The wire contract between the hub and its WebSocket clients, defined once:
 * client requests, server messages and close codes. Validation, types and the
 * README's protocol reference all come from here.
 */
import { Result, Schema, SchemaIssue } from "effect"

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/** Message types starting with this prefix are the hub's own; events may not use it. */
export const ReservedPrefix = "hub."

/** Longest event type or pattern accepted (RabbitMQ's routing key limit). */
export const MaxNameLength = 255

/** An event type: dot-separated words, no wildcards, not in the reserved namespace. */
export const EventType = Schema.String.check(
  Schema.isMinLength(1, { message: "event type must not be empty" }),
  Schema.isMaxLength(MaxNameLength, { message: `event type must be at most ${MaxNameLength} characters` }),
  Schema.makeFilter((type: string) =>
    type.startsWith(ReservedPrefix)
      ? `event type must not start with the reserved prefix "${ReservedPrefix}"`
      : type.split(".").some((word) => word === "*" || word === "#")
      ? "event type must not contain the wildcard words * or #"
      : true
  )
)

/**
 * A subscription pattern: an exact event type, or a RabbitMQ-style topic
 * pattern where `*` matches exactly one dot-separated word and `#` matches
 * zero or more.
 */
export const EventPattern = Schema.String.check(
  Schema.isMinLength(1, { message: "event type pattern must not be empty" }),
  Schema.isMaxLength(MaxNameLength, { message: `event type pattern must be at most ${MaxNameLength} characters` })
)

// ---------------------------------------------------------------------------
// Client to server
// ---------------------------------------------------------------------------

/** `{"action":"subscribe","event_types":[...]}`: add patterns to the client's subscription. */
const EventPatterns = Schema.Array(EventPattern).annotate({ message: "must be an array of strings" })

export const Subscribe = Schema.Struct({
  action: Schema.Literal("subscribe"),
  event_types: EventPatterns,
  /** Resume: also send the events after this id (the last one received) that match, then the live ones. */
  since: Schema.optional(Schema.String.annotate({ message: "must be the id (a string) of the last event received" }))
})
export type Subscribe = typeof Subscribe.Type

/** `{"action":"unsubscribe","event_types":[...]}`: remove patterns, exactly as written. */
export const Unsubscribe = Schema.Struct({
  action: Schema.Literal("unsubscribe"),
  event_types: EventPatterns
})
export type Unsubscribe = typeof Unsubscribe.Type

/**
 * `{"action":"auth","token":"<JWT>"}`: replaces the connection's token before it expires (answered with
 * `hub.authenticated`, or `hub.error` `invalid_token`). Only when authentication is enabled.
 */
export const Authenticate = Schema.Struct({
  action: Schema.Literal("auth"),
  token: Schema.String.check(Schema.isMinLength(1, { message: "token must not be empty" }))
})
export type Authenticate = typeof Authenticate.Type

/**
 * `{"action":"publish","type":"<event type>","data":{...}}`: a command (or any event) from the client to the
 * backend, published to the RabbitMQ exchange with `type` as its routing key and `data` as its JSON body.
 * Only types matched by `WS_PUBLISH_TYPES` are accepted; answered with `hub.published` once the broker has
 * confirmed it, or `hub.error` (`publish_forbidden`, `publish_failed`).
 */
export const Publish = Schema.Struct({
  action: Schema.Literal("publish"),
  type: EventType,
  data: Schema.Record(Schema.String, Schema.Unknown).annotate({ message: "must be a JSON object" })
})
export type Publish = typeof Publish.Type

/** A room: `<key>:<value>`, where `<key>` is one of `ROOM_KEYS` (a field of the events' data). */
const Rooms = Schema.Array(
  Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(MaxNameLength))
).annotate({ message: "must be an array of rooms such as \"run_id:789e0123\"" })

/**
 * `{"action":"join","rooms":["run_id:789e0123"]}`: from now on, receive only the events of these rooms (an event
 * is in room `run_id:X` when its data has `"run_id": "X"`), still filtered by the subscription. Answered with
 * `hub.rooms`.
 */
export const Join = Schema.Struct({ action: Schema.Literal("join"), rooms: Rooms })
/** `{"action":"leave","rooms":[...]}`: leaves rooms; a client in no room receives the events of every room. */
export const Leave = Schema.Struct({ action: Schema.Literal("leave"), rooms: Rooms })

export const ClientRequest = Schema.Union([Subscribe, Unsubscribe, Authenticate, Publish, Join, Leave])
export type ClientRequest = typeof ClientRequest.Type

export const clientActions: ReadonlyArray<ClientRequest["action"]> = [
  "subscribe",
  "unsubscribe",
  "auth",
  "publish",
  "join",
  "leave"
]

/** The text frame a browser sends to keep the connection alive; answered with `pong`. */
export const TextPing = "ping"
export const TextPong = "pong"

/** The query parameter of the WebSocket URL that resumes a client subscribed to everything: `?since=<id>`. */
export const SinceParameter = "since"

// ---------------------------------------------------------------------------
// Server to client
// ---------------------------------------------------------------------------

/** Every message the hub sends: one JSON object per text frame. */
export const ServerMessage = Schema.Struct({
  type: Schema.String,
  data: Schema.Unknown,
  /** RFC 3339, UTC: when the hub sent it. */
  timestamp: Schema.String,
  /**
   * Events only: the event's id, a fixed-width string; ids of one hub (or of
   * one stream) sort as strings in broadcast order. The id of the last event
   * received is what a client sends back as `since` to resume.
   */
  id: Schema.optional(Schema.String)
})
export type ServerMessage = typeof ServerMessage.Type

/** Codes carried by `hub.error` messages. */
export const ErrorCode = Schema.Literals([
  "invalid_json",
  "invalid_request",
  "unknown_action",
  "binary_not_supported",
  "too_many_subscriptions",
  /** A pattern longer than `WS_MAX_PATTERN_LENGTH`, with more than `WS_MAX_PATTERN_WORDS` words, or badly formed. */
  "invalid_pattern",
  /** The token's `event_types` claim does not cover the requested patterns. */
  "forbidden_event_types",
  /** More than `WS_RATE_LIMIT` messages per second (beyond the `WS_RATE_BURST` allowance): the message was dropped. */
  "rate_limited",
  /**
   * A resume (`since`) beyond `WS_RESUME_RATE_LIMIT` per minute on the connection or `WS_RESUME_RATE_LIMIT_PER_IP`
   * from its address: nothing is replayed (a `subscribe` is not applied; with `?since=` the client goes live).
   */
  "resume_rate_limited",
  /** An `auth` request whose token was refused; the connection keeps its current token. */
  "invalid_token",
  /** An `auth` request while authentication is not enabled. */
  "auth_disabled",
  /** A `publish` of a type that `WS_PUBLISH_TYPES` does not allow (or client publishing is off). */
  "publish_forbidden",
  /** A `publish` the broker did not confirm (unreachable, refused, or too slow): it may not have been delivered. */
  "publish_failed",
  /** A room of a `join` that is not `<key>:<value>` with a key of `ROOM_KEYS` (or rooms are off). */
  "invalid_room",
  /** A `join` that would put the client in more than `WS_MAX_SUBSCRIPTIONS` rooms. */
  "too_many_rooms"
])
export type ErrorCode = typeof ErrorCode.Type

/** The hub's own message types (replies and notices), all under `hub.`. */
export const HubMessageType = {
  /** Reply to `subscribe`: `data.event_types` is the client's whole subscription now. */
  subscribed: "hub.subscribed",
  /** Reply to `unsubscribe`: `data.event_types` is the client's whole subscription now. */
  unsubscribed: "hub.unsubscribed",
  /** A request was refused: `data.code` (see `ErrorCode`) and `data.message`. */
  error: "hub.error",
  /** Reply to `auth`: the new token is in effect; `data.expires_at` is its expiry (RFC 3339) or null. */
  authenticated: "hub.authenticated",
  /**
   * A resume: the history does not reach back to `data.since` (`data.reason` `missed`: events were missed), or
   * `data.since` cannot be placed (`unknown`: the hub cannot tell); sent before the events still available, from
   * `data.oldest_available`.
   */
  historyGap: "hub.history_gap",
  /** A resume has sent every missed event: from here on, events are live. `data.replayed` counts them. */
  live: "hub.live",
  /** Reply to `publish`: the broker has confirmed the message; `data.type` is its type (routing key). */
  published: "hub.published",
  /** Reply to `join` and `leave`: `data.rooms` are the rooms the client is in now (none: every room). */
  rooms: "hub.rooms"
} as const

export const SubscriptionData = Schema.Struct({
  /** The patterns now in effect; `["#"]` while the client receives everything by default. */
  event_types: Schema.Array(Schema.String)
})

export const ErrorData = Schema.Struct({
  code: ErrorCode,
  message: Schema.String
})
export type ErrorData = typeof ErrorData.Type

/**
 * Why a resume has a gap:
 * - `missed`: events after `since` were broadcast and are no longer held (the history moved past them): the client
 *   missed some, for certain;
 * - `unknown`: `since` is an id this hub cannot place (another run of a hub in queue mode, after a restart or on
 *   another instance; an id of the other mode): the hub cannot tell whether anything was missed.
 * Either way the events the hub holds follow, then `hub.live`.
 */
export const GapReason = Schema.Literals(["missed", "unknown"])
export type GapReason = typeof GapReason.Type

export const HistoryGapData = Schema.Struct({
  /** The id the client resumed from (or the position a slow replay had reached when history moved past it). */
  since: Schema.String,
  /**
   * The oldest id replayed from here, sent next if it matches the subscription: the oldest the hub holds, or the
   * oldest of its newest `HISTORY_REPLAY_MAX`; `null` when it holds none.
   */
  oldest_available: Schema.NullOr(Schema.String),
  /** `missed`: events were lost for certain; `unknown`: the hub cannot tell (see `GapReason`). */
  reason: GapReason
})
export type HistoryGapData = typeof HistoryGapData.Type

export const LiveData = Schema.Struct({
  /** Events replayed by this resume. */
  replayed: Schema.Number,
  /** The newest id the hub had when the client became live: the position of the resume. */
  last_id: Schema.NullOr(Schema.String)
})
export type LiveData = typeof LiveData.Type

// ---------------------------------------------------------------------------
// Close codes
// ---------------------------------------------------------------------------

/**
 * Every close code the hub sends, with the reason text it attaches. Clients
 * should reconnect (with backoff) after any of them except `messageTooBig`
 * and `invalidPayload`, which mean the client itself is at fault.
 */
export const CloseCode = {
  /** The client closed, or the connection ended normally. */
  normal: 1000,
  /** The hub is shutting down; reconnect (to another instance). */
  goingAway: 1001,
  /** The client broke the WebSocket protocol (for example an unmasked frame); sent by `ws`. */
  protocolError: 1002,
  /** A text frame was not valid UTF-8 (RFC 6455 requires closing). */
  invalidPayload: 1007,
  /** A client frame was larger than `WS_MAX_MESSAGE_SIZE`. */
  messageTooBig: 1009,
  /** The hub failed unexpectedly while serving this client. */
  internalError: 1011,
  /** The client's send buffer (`WS_SEND_BUFFER`) was full: it read too slowly. */
  slowConsumer: 4000,
  /** The client sent nothing, not even a pong, within `WS_PONG_TIMEOUT`. */
  pongTimeout: 4001,
  /** A write to the client did not complete within `WS_WRITE_TIMEOUT`. */
  writeTimeout: 4002,
  /** The client kept sending faster than `WS_RATE_LIMIT` after being told (`rate_limited`). */
  policyViolation: 1008,
  /** The connection's token expired and was not replaced in time by an `auth` request. */
  tokenExpired: 4003,
  /** The client sent nothing within `WS_FIRST_MESSAGE_TIMEOUT` of opening the connection. */
  firstMessageTimeout: 4004
} as const
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode]

/** Why a client left, as counted in `/metrics` under `clients_disconnected`. */
export const DisconnectReason = Schema.Literals([
  "client_closed",
  "shutdown",
  "slow_consumer",
  "pong_timeout",
  "write_timeout",
  "message_too_big",
  "invalid_payload",
  "protocol_error",
  "error",
  "rate_limited",
  "token_expired",
  "first_message_timeout"
])
export type DisconnectReason = typeof DisconnectReason.Type

export const closeFor: Record<Exclude<DisconnectReason, "client_closed" | "error" | "protocol_error">, {
  readonly code: CloseCode
  readonly reason: string
}> = {
  shutdown: { code: CloseCode.goingAway, reason: "server shutting down" },
  slow_consumer: { code: CloseCode.slowConsumer, reason: "send buffer full" },
  pong_timeout: { code: CloseCode.pongTimeout, reason: "pong timeout" },
  write_timeout: { code: CloseCode.writeTimeout, reason: "write timeout" },
  message_too_big: { code: CloseCode.messageTooBig, reason: "message too big" },
  invalid_payload: { code: CloseCode.invalidPayload, reason: "invalid UTF-8" },
  rate_limited: { code: CloseCode.policyViolation, reason: "rate limit exceeded" },
  token_expired: { code: CloseCode.tokenExpired, reason: "token expired" },
  first_message_timeout: { code: CloseCode.firstMessageTimeout, reason: "no message received" }
}

// ---------------------------------------------------------------------------
// A message is serialised once, however many clients receive it
// ---------------------------------------------------------------------------

/**
 * One server message, serialised: `payload` is the JSON text, `id` the event's id (events only). Each transport
 * encodes it on first use (a WebSocket frame, a Server-Sent Events message: connection/WebSocketTransport.ts,
 * connection/SseTransport.ts) and keeps its encoding here, so that every client that receives the message is
 * written the same bytes.
 */
export class Outbound {
  /** The WebSocket transport's encoding, once built. */
  wsFrame: Buffer | undefined = undefined
  /** The SSE transport's encoding, once built. */
  sseEvent: Buffer | undefined = undefined
  constructor(readonly payload: Buffer, readonly id?: string) {}

  static text(text: string, id?: string): Outbound {
    return new Outbound(Buffer.from(text, "utf8"), id)
  }

  /**
   * `{"type","data","timestamp"}`, plus `"id"` for events. JSON.stringify
   * escapes newlines, so a frame never holds a raw one.
   */
  static message(type: string, data: unknown, timestamp: Date, id?: string): Outbound {
    return Outbound.text(JSON.stringify({ type, data, timestamp: timestamp.toISOString(), id }), id)
  }
}

export const pongMessage = Outbound.text(TextPong)

// ---------------------------------------------------------------------------
// Decoding client requests
// ---------------------------------------------------------------------------

const decoders: Record<ClientRequest["action"], (input: unknown) => Result.Result<ClientRequest, Schema.SchemaError>> = {
  subscribe: Schema.decodeUnknownResult(Subscribe),
  unsubscribe: Schema.decodeUnknownResult(Unsubscribe),
  auth: Schema.decodeUnknownResult(Authenticate),
  publish: Schema.decodeUnknownResult(Publish),
  join: Schema.decodeUnknownResult(Join),
  leave: Schema.decodeUnknownResult(Leave)
}

// A missing field reads as it always has ("data: is missing"); every other message is Effect's.
const standardIssues = SchemaIssue.makeFormatterStandardSchemaV1({
  leafHook: (issue) => issue._tag === "MissingKey" ? "is missing" : SchemaIssue.defaultLeafHook(issue)
})

/** One line per problem, each naming the field: `event_types[2]: event type pattern must not be empty`. */
export const formatParseError = (error: Schema.SchemaError): string =>
  standardIssues(error.issue).issues
    .map(({ message, path = [] }) => path.length === 0 ? message : `${formatPath(path)}: ${message}`)
    .join("; ")

const formatPath = (path: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }>) =>
  path.map((segment) => typeof segment === "object" ? segment.key : segment).map((key, i) => typeof key === "number" ? `[${key}]` : i === 0 ? String(key) : `.${String(key)}`).join("")

/** Parses one text frame into a request, or the error to send back. */
export const parseRequest = (text: string): Result.Result<ClientRequest, ErrorData> => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    return Result.fail({
      code: "invalid_json",
      message: `expected a JSON object such as {"action":"subscribe","event_types":["backtest.completed"]}, or the text "ping"`
    })
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    return Result.fail({ code: "invalid_request", message: "expected a JSON object with an \"action\" field" })
  }
  const action = (json as { action?: unknown }).action
  if (typeof action !== "string") {
    return Result.fail({ code: "invalid_request", message: "\"action\" must be a string" })
  }
  if (!(clientActions as ReadonlyArray<string>).includes(action)) {
    return Result.fail({
      code: "unknown_action",
      message: `unknown action ${JSON.stringify(action.slice(0, 64))}; expected one of ${clientActions.join(", ")}`
    })
  }
  return Result.mapError(
    decoders[action as ClientRequest["action"]](json),
    (error): ErrorData => ({ code: "invalid_request", message: formatParseError(error) })
  )
}
