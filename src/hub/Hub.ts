/**
 * The hub: the set of connected clients, held in its subscription index, and
 * the broadcast that fans an event out to the clients whose subscriptions
 * match it.
 *
 * Two services come from one layer: `Hub`, what sources and embedding
 * programs use (broadcast), and `HubClients`, what a client connection uses
 * (register, subscribe, resume, ...). The layer creates and owns every piece:
 * the subscription index (the set of clients), the history (a service of its
 * own, see History.ts), each resuming client's `Replay`, the `Flusher` that
 * writes every outbox, and the tick that keeps connections alive.
 *
 * The fan-out is synchronous code: it reads the subscription index, offers
 * the event's pre-built frame to each recipient and appends the event to the
 * history in one step, so that a resume sees an event in the history or
 * receives it live, never both nor neither.
 */
import { Cause, Clock, Context, Data, Duration, Effect, Exit, Layer, References, Result, Schedule } from "effect"
import { HubConfig, RabbitMqConfig } from "../config/Config.js"
import { Health } from "../ops/Health.js"
import { type EventSource, HubMetrics } from "../ops/Metrics.js"
import { type HistoryGapData, HubMessageType, Outbound } from "../protocol/Protocol.js"
import { eventIdOf, RecentIds } from "./Dedup.js"
import { Flusher } from "./Flusher.js"
import { HubHistory } from "./History.js"
import { type ClientId, type Connection, Member } from "./Member.js"
import { Outbox, type OutboxOwner, type Transport } from "./Outbox.js"
import { Replay } from "./Replay.js"
import { inRooms, type Subscription, SubscriptionIndex } from "./SubscriptionIndex.js"

export type { ClientId, Connection, TransportKind } from "./Member.js"
export type { Transport } from "./Outbox.js"
export { defaultSubscription } from "./SubscriptionIndex.js"

/** A `subscribe` that would take a client over `WS_MAX_SUBSCRIPTIONS` patterns; nothing was changed. */
export class TooManySubscriptions extends Data.TaggedError("TooManySubscriptions")<{
  readonly limit: number
  readonly requested: number
}> {
  get message() {
    return `at most ${this.limit} patterns per client; this request would make ${this.requested}`
  }
}

/** A `since` that cannot be an event id; nothing was changed. */
export class InvalidSince extends Data.TaggedError("InvalidSince")<{
  readonly since: string
}> {
  get message() {
    return `since: must be the id of an event received from this hub, such as "1764201234567abcd-0000000000000001" or "00000000000000000042"`
  }
}

/** A `join` that would put a client in more than `WS_MAX_SUBSCRIPTIONS` rooms; nothing was changed. */
export class TooManyRooms extends Data.TaggedError("TooManyRooms")<{
  readonly limit: number
  readonly requested: number
}> {
  get message() {
    return `at most ${this.limit} rooms per client; this request would make ${this.requested}`
  }
}

/**
 * An event to broadcast, with what its source knows about it. A source that places its events (the RabbitMQ
 * stream) gives each its id and timestamp, the same on every instance; the hub's history then uses the source's
 * ids (`HubHistory.layer`), and events broadcast by this instance alone get ids that sort between them.
 */
export interface BroadcastEvent {
  readonly type: string
  readonly data: unknown
  /** Its id from the source (ids grow); by default the hub gives it the next local id. */
  readonly id?: string | undefined
  /** When it entered its source (milliseconds since the epoch): its `timestamp`; by default, now. */
  readonly timestamp?: number | undefined
  /** Where it came from, for the metrics (`library` when absent). */
  readonly source?: EventSource
}

/** A resume under way: its replay starts with `start`; `cancel` gives up on it (the client goes live at once). */
export interface Resume {
  readonly start: Effect.Effect<void>
  readonly cancel: Effect.Effect<void>
}

/** What sources and embedding programs use. */
export class Hub extends Context.Service<Hub, {
  /**
   * Sends an event to every client subscribed to `type`: the seed's
   * `hub.BroadcastEvent(type, data)`. The event is serialised once. Returns
   * how many clients it was queued for. Callers validate `type` (see
   * `Protocol.EventType`); the hub does not. When a burst has filled the
   * buffer of a client that reads, it first waits for the writes: a loop of
   * broadcasts is written as it goes.
   */
  readonly broadcast: (type: string, data: unknown, source?: EventSource) => Effect.Effect<number>
  /**
   * `broadcast` with a source's id, or into the history only (`live: false`). Synchronous, never waits: for
   * sources that run in callbacks (the RabbitMQ source, whose backlog is bounded by its prefetch).
   */
  readonly broadcastEvent: (event: BroadcastEvent) => Effect.Effect<number>
  /**
   * Records an event in the history without sending it to anyone: a source refilling the history of a hub that
   * starts with what it broadcast before (with the source's id and timestamp).
   */
  readonly remember: (event: BroadcastEvent) => Effect.Effect<void>
  /**
   * The source lost the events after id `after` and before id `next` (a stream's retention removed them before
   * this hub read them): every live client gets a `hub.history_gap` (`missed`), never a silent hole.
   */
  readonly lost: (after: string, next: string) => Effect.Effect<void>
  readonly clientCount: Effect.Effect<number>
  /** Connected clients by transport (WebSocket, Server-Sent Events; open dashboards only while there are some). */
  readonly clientCountByTransport: Effect.Effect<Record<"ws" | "sse", number> & { dashboard?: number }>
}>()("event-hub/Hub") {}

/** How a client starts (see `HubClients.register`). */
export interface RegisterOptions {
  readonly allowed?: ReadonlyArray<string> | undefined
  readonly resuming?: boolean
  readonly patterns?: ReadonlyArray<string> | undefined
  readonly rooms?: ReadonlyArray<string> | undefined
}

/** What a client connection uses: its membership, subscription, rooms and resumes. */
export class HubClients extends Context.Service<HubClients, {
  /** A fresh client id. */
  readonly nextId: Effect.Effect<ClientId>
  /**
   * `nextId`, `register` and `unregister` as plain calls, for a connection's socket callbacks: a WebSocket
   * connection that only listens then never needs a fiber (docs/design.md).
   */
  readonly unsafeNextId: () => ClientId
  readonly unsafeRegister: (connection: Connection, options?: RegisterOptions) => void
  readonly unsafeUnregister: (id: ClientId) => void
  /**
   * `subscribe`, `unsubscribe`, `join` and `leave` as plain calls, for the same reason: a connection answers these
   * requests in its socket's callback, without starting a fiber.
   */
  readonly unsafeSubscribe: (
    id: ClientId,
    patterns: ReadonlyArray<string>
  ) => Result.Result<ReadonlyArray<string>, TooManySubscriptions>
  readonly unsafeUnsubscribe: (id: ClientId, patterns: ReadonlyArray<string>) => ReadonlyArray<string>
  readonly unsafeJoin: (id: ClientId, rooms: ReadonlyArray<string>) => Result.Result<ReadonlyArray<string>, TooManyRooms>
  readonly unsafeLeave: (id: ClientId, rooms: ReadonlyArray<string>) => ReadonlyArray<string>
  /**
   * A client's send buffer (`WS_SEND_BUFFER` messages), written to `transport` by the hub's flusher (see Outbox.ts,
   * Flusher.ts): what a connection queues its client's messages in. `owner` is told if a write throws.
   */
  readonly outbox: (transport: Transport, owner: OutboxOwner) => Outbox
  /**
   * Adds a client with the default subscription (`#`). `allowed` (patterns)
   * limits it: it never receives an event outside them. `resuming`: it will
   * resume (`?since=`), so it receives no live events until `resume`. `patterns` and `rooms` (an SSE stream's,
   * from its URL, checked by the caller) are its subscription from the start, as a `subscribe` and a `join` would
   * make it, so that no event reaches it under the default.
   */
  readonly register: (connection: Connection, options?: RegisterOptions) => Effect.Effect<void>
  readonly unregister: (id: ClientId) => Effect.Effect<void>
  /** Replaces a client's `allowed` limit (after a token refresh); `undefined` lifts it. */
  readonly authorize: (id: ClientId, allowed: ReadonlyArray<string> | undefined) => Effect.Effect<void>
  /** Adds patterns; the first call replaces the default `#`. Returns the subscription now in effect. */
  readonly subscribe: (
    id: ClientId,
    patterns: ReadonlyArray<string>
  ) => Effect.Effect<ReadonlyArray<string>, TooManySubscriptions>
  /** Fails as `subscribe` would, changing nothing (a resume checks before it stops live events). */
  readonly checkSubscribe: (id: ClientId, patterns: ReadonlyArray<string>) => Effect.Effect<void, TooManySubscriptions>
  /** Removes patterns exactly as written. Returns the subscription now in effect. */
  readonly unsubscribe: (id: ClientId, patterns: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<string>>
  /**
   * Puts the client in `rooms` (added to those it is in): from then on it receives only the events of its
   * rooms (still filtered by its subscription). Returns the rooms it is in now.
   */
  readonly join: (id: ClientId, rooms: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<string>, TooManyRooms>
  /** Takes the client out of `rooms`; in no room, it receives the events of every room again. */
  readonly leave: (id: ClientId, rooms: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<string>>
  /**
   * Resumes client `id` from `since`: from now on it receives no live
   * events; `start` replays the events after `since` that match its
   * subscription (after a `hub.history_gap` notice if history does not
   * reach back), then switches it to live, with a `hub.live` marker (see
   * Replay.ts). A new resume replaces one under way.
   */
  readonly resume: (id: ClientId, since: string) => Effect.Effect<Resume, InvalidSince>
}>()("event-hub/HubClients") {}

const noRooms: ReadonlyArray<string> = []

/** The rooms of an event: `<key>:<value>` for each of `keys` its data has as a string or a number. */
const roomsOf = (keys: ReadonlyArray<string>, data: unknown): ReadonlyArray<string> => {
  if (keys.length === 0 || typeof data !== "object" || data === null) return noRooms
  let rooms: Array<string> | undefined
  for (const key of keys) {
    const value = (data as Record<string, unknown>)[key]
    if (typeof value === "string" || typeof value === "number") (rooms ??= []).push(`${key}:${value}`)
  }
  return rooms ?? noRooms
}

/** The subscription after a `subscribe` of `patterns`, or the refusal. */
const subscribed = (limit: number, subscription: Subscription, patterns: ReadonlyArray<string>) => {
  const next = [...new Set([...(subscription.explicit ? subscription.patterns : []), ...patterns])]
  return next.length > limit
    ? Result.fail(new TooManySubscriptions({ limit, requested: next.length }))
    : Result.succeed<Subscription>({ ...subscription, patterns: next, explicit: true })
}

/** The patterns in effect after an update (none for a client that is gone). */
const patternsOf = <E>(result: Result.Result<Subscription | undefined, E>) =>
  Result.map(result, (subscription) => subscription?.patterns ?? [])

/** The rooms in effect after an update. */
const roomsIn = (subscription: Subscription | undefined): ReadonlyArray<string> => [...(subscription?.rooms ?? [])]

/** One tick for the whole hub instead of timers per client: pings, pongs, SSE keep-alives and write deadlines. */
const tickOf = (config: HubConfig["Service"]) =>
  Duration.millis(Math.max(
    10,
    Math.min(
      1000,
      Duration.toMillis(config.pingPeriod) / 4,
      Duration.toMillis(config.pongTimeout) / 4,
      Duration.toMillis(config.writeTimeout) / 4,
      Duration.toMillis(config.sseKeepAlive) / 4
    )
  ))

/** What the hub's services share; the layer creates each piece once. */
interface HubState {
  readonly config: HubConfig["Service"]
  readonly metrics: HubMetrics["Service"]
  readonly history: HubHistory["Service"]
  /** Every connected client, with its subscription: what the fan-out, the tick and the counts read. */
  readonly index: SubscriptionIndex
  readonly flusher: Flusher
  /** The `event_id`s that entered recently: a repeated one (a publisher's retry) is dropped (see Dedup.ts). */
  readonly recentIds: RecentIds
}

/**
 * Offers the event to its recipients and appends it to the history, in one
 * synchronous step. Returns the number of recipients.
 */
const fanOut = (
  { config, flusher, history, index, metrics }: HubState,
  event: BroadcastEvent,
  now: number,
  arrival: number,
  live: boolean
): number => {
  const id = event.id ?? history.nextLocalId()
  const message = Outbound.message(event.type, event.data, new Date(event.timestamp ?? now), id)
  const rooms = roomsOf(config.roomKeys, event.data)
  let count = 0
  // The fan-out comes before the append: appending can complete a resume that waited for this event (it replays
  // it, then goes live), and that client must not receive it a second time as a live recipient.
  if (live) {
    for (const { member, rooms: joined } of index.recipients(event.type)) {
      if (member.catchingUp || (joined !== undefined && !inRooms(joined, rooms))) continue
      if (!member.connection.offer(message)) member.connection.kick("slow_consumer")
      count++
    }
    metrics.eventBroadcast(event.type, count)
    if (count > 0) flusher.arrived(arrival)
  }
  // The history's age limit runs on the wall clock, as its trimming in replays (callbacks) does.
  history.append({ id, type: event.type, message, rooms, at: Date.now() }, event.id !== undefined)
  return count
}

/**
 * Every event enters here: one whose `event_id` entered recently is dropped, the others are fanned out (`live`)
 * or only recorded in the history (a refill).
 */
const admit = (state: HubState, event: BroadcastEvent, now: number, live = true): number => {
  const arrival = performance.now()
  if (live) state.metrics.received(event.source ?? "library")
  const eventId = eventIdOf(event.data)
  if (eventId !== undefined && state.recentIds.seen(eventId, now)) {
    if (live) state.metrics.deduplicated()
    return 0
  }
  return fanOut(state, event, now, arrival, live)
}

/** Tells every live client that events after `after` are lost (see `Hub.lost`). */
const lost = ({ index }: HubState, after: string, next: string) => {
  const message = Outbound.message(
    HubMessageType.historyGap,
    { since: after, oldest_available: next, reason: "missed" } satisfies HistoryGapData,
    new Date()
  )
  for (const member of index.members()) {
    if (!member.catchingUp && !member.connection.offer(message)) member.connection.kick("slow_consumer")
  }
}

const makeHub = (state: HubState): Hub["Service"] => {
  const broadcastEvent = (event: BroadcastEvent) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.withFiber<number>((fiber) => {
        // Without tracing (Tracing.ts), no span to annotate: the fan-out alone.
        if (!fiber.getRef(References.TracerEnabled)) return Effect.succeed(admit(state, event, now))
        const before = state.history.newest
        const count = admit(state, event, now)
        const entry = state.history.newest
        return Effect.as(
          Effect.annotateCurrentSpan({
            "hub.event.id": entry !== before && entry !== undefined ? entry.id : "",
            "hub.event.event_id": eventIdOf(event.data) ?? "",
            "hub.event.duplicate": entry === before,
            "hub.recipients": count
          }),
          count
        )
      }))
  /** Back-pressure on a producer in a loop: the pass that writes its burst so far ends first. */
  const written = Effect.callback<void>((resume) => state.flusher.whenIdle(() => resume(Effect.void)))
  return Hub.of({
    broadcast: (type, data, source) =>
      Effect.suspend(() =>
        state.flusher.congested
          ? Effect.andThen(written, broadcastEvent({ type, data, source }))
          : broadcastEvent({ type, data, source })
      ),
    broadcastEvent,
    remember: (event) => Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => void admit(state, event, now, false))),
    lost: (after, next) => Effect.sync(() => lost(state, after, next)),
    clientCount: Effect.sync(() => state.index.size),
    clientCountByTransport: Effect.sync(() => {
      const counts: Record<"ws" | "sse", number> & { dashboard?: number } = { ws: 0, sse: 0 }
      for (const member of state.index.members()) {
        const transport = member.connection.transport ?? "ws"
        counts[transport] = (counts[transport] ?? 0) + 1
      }
      return counts
    })
  })
}

/** Starts a resume (see `HubClients.resume`). */
const resume = ({ config, history, index, metrics }: HubState, id: ClientId, since: string) =>
  Effect.suspend((): Effect.Effect<Resume, InvalidSince> => {
    const member = index.get(id)?.member
    if (history.place(since)._tag === "Malformed") {
      // A client registered to resume (`?since=`) goes live instead; one already resuming goes on.
      if (member !== undefined && member.replay === undefined) member.goLive()
      return Effect.fail(new InvalidSince({ since }))
    }
    if (member === undefined) return Effect.succeed({ start: Effect.void, cancel: Effect.void })
    metrics.resumed()
    const replay = new Replay(member, since, index, history, config.sendBuffer, config.historyReplayMax, metrics.gap)
    member.replay = replay
    member.catchingUp = true
    return Effect.succeed<Resume>({
      start: Effect.sync(() => replay.start()),
      cancel: Effect.sync(() => {
        if (member.replay === replay) member.goLive()
      })
    })
  })

// The service object: one short method per request a connection makes, over the state the layer created.
const makeHubClients = (state: HubState): HubClients["Service"] => {
  const { config, index } = state
  let lastId = 0
  const unsafeNextId = () => ++lastId
  const unsafeRegister = (connection: Connection, options?: RegisterOptions) => {
    const member = new Member(connection, options?.resuming === true)
    index.add(member, options?.allowed)
    state.metrics.clientJoined(connection.transport ?? "ws")
    const patterns = options?.patterns
    const rooms = options?.rooms
    if (patterns === undefined && (rooms === undefined || rooms.length === 0)) return
    // In the same synchronous step as `add`: no fan-out sees the client with the default subscription.
    index.update(connection.id, (subscription) =>
      Result.succeed<Subscription>({
        ...subscription,
        ...(patterns !== undefined && { patterns: [...new Set(patterns)], explicit: true }),
        ...(rooms !== undefined && rooms.length > 0 && { rooms: new Set(rooms) })
      }))
  }
  const unsafeUnregister = (id: ClientId) => {
    const member = index.get(id)?.member
    if (member === undefined) return
    state.metrics.clientLeft(member.connection.transport ?? "ws")
    index.remove(id)
  }
  const unsafeSubscribe = (id: ClientId, patterns: ReadonlyArray<string>) =>
    patternsOf(index.update(id, (subscription) => subscribed(config.maxSubscriptions, subscription, patterns)))
  const unsafeUnsubscribe = (id: ClientId, patterns: ReadonlyArray<string>) =>
    Result.getOrElse(
      patternsOf(index.update(id, (subscription) =>
        Result.succeed({ ...subscription, patterns: subscription.patterns.filter((p) => !patterns.includes(p)) }))),
      () => []
    )
  const unsafeJoin = (id: ClientId, rooms: ReadonlyArray<string>) =>
    Result.map(
      index.update(id, (subscription) => {
        const next = new Set([...(subscription.rooms ?? []), ...rooms])
        if (next.size > config.maxSubscriptions) {
          return Result.fail(new TooManyRooms({ limit: config.maxSubscriptions, requested: next.size }))
        }
        // In no room (an empty `join`), the client has no room filter: it receives the events of every room.
        return Result.succeed({ ...subscription, rooms: next.size > 0 ? next : undefined })
      }),
      roomsIn
    )
  const unsafeLeave = (id: ClientId, rooms: ReadonlyArray<string>) =>
    Result.match(
      index.update(id, (subscription) => {
        const next = new Set([...(subscription.rooms ?? [])].filter((room) => !rooms.includes(room)))
        return Result.succeed({ ...subscription, rooms: next.size > 0 ? next : undefined })
      }),
      { onFailure: () => [], onSuccess: roomsIn }
    )
  return HubClients.of({
    nextId: Effect.sync(unsafeNextId),
    unsafeNextId,
    unsafeRegister,
    unsafeUnregister,
    unsafeSubscribe,
    unsafeUnsubscribe,
    unsafeJoin,
    unsafeLeave,
    outbox: (transport, owner) => new Outbox(state.flusher, transport, config.sendBuffer, state.metrics.delivered, owner),
    register: (connection, options) => Effect.sync(() => unsafeRegister(connection, options)),
    unregister: (id) => Effect.sync(() => unsafeUnregister(id)),
    authorize: (id, allowed) =>
      Effect.sync(() => void index.update(id, (subscription) => Result.succeed({ ...subscription, allowed }))),
    subscribe: (id, patterns) => Effect.suspend(() => Effect.fromResult(unsafeSubscribe(id, patterns))),
    checkSubscribe: (id, patterns) =>
      Effect.suspend(() => {
        const subscription = index.get(id)
        if (subscription === undefined) return Effect.void
        return Result.match(subscribed(config.maxSubscriptions, subscription, patterns), {
          onFailure: Effect.fail,
          onSuccess: () => Effect.void
        })
      }),
    unsubscribe: (id, patterns) => Effect.sync(() => unsafeUnsubscribe(id, patterns)),
    join: (id, rooms) => Effect.suspend(() => Effect.fromResult(unsafeJoin(id, rooms))),
    leave: (id, rooms) => Effect.sync(() => unsafeLeave(id, rooms)),
    resume: (id, since) => resume(state, id, since)
  })
}

/**
 * One tick: every client's keep-alive. A client whose keep-alive throws is dropped (`error`) and the failure logged;
 * the others are served, and the next tick runs as usual.
 */
const tick = (index: SubscriptionIndex) =>
  Effect.flatMap(Clock.currentTimeMillis, (now) => {
    let failed: Array<{ readonly id: ClientId; readonly cause: Cause.Cause<never> }> | undefined
    for (const member of index.members()) {
      try {
        member.connection.keepAlive(now)
      } catch (error) {
        let cause = Cause.die(error)
        try {
          member.connection.kick("error")
        } catch (kickError) {
          cause = Cause.combine(cause, Cause.die(kickError))
        }
        ;(failed ??= []).push({ id: member.id, cause })
      }
    }
    if (failed === undefined) return Effect.void
    return Effect.forEach(failed, ({ cause, id }) =>
      Effect.logError("a client's keep-alive failed: the client is disconnected, the others are served", cause).pipe(
        Effect.annotateLogs({ client_id: id })
      ), { discard: true })
  })

const make = Effect.gen(function*() {
  const health = yield* Health
  const config = yield* HubConfig
  const metrics = yield* HubMetrics
  const context = yield* Effect.context<never>()
  const state: HubState = {
    config,
    metrics,
    history: yield* HubHistory,
    index: new SubscriptionIndex(),
    flusher: new Flusher(metrics.passEnded, (what, error) =>
      Effect.runForkWith(context)(
        Effect.logError(`the flusher's call of ${what} failed; the next pass runs as usual`, Cause.die(error))
      )),
    recentIds: new RecentIds(config.dedupMaxEvents, Duration.toMillis(config.dedupMaxAge))
  }
  // Pings, pong and write timeouts, token expiries: were this loop to stop, no client would be checked any more.
  yield* tick(state.index).pipe(
    Effect.catchCause((cause) => Effect.logError("the keep-alive tick failed; it runs again at the next tick", cause)),
    Effect.repeat(Schedule.spaced(tickOf(state.config))),
    Effect.onExit((exit) =>
      Exit.hasInterrupts(exit) ? Effect.void : Effect.andThen(
        Effect.logError(
          "the keep-alive loop stopped: no client is pinged or timed out any more",
          Exit.isFailure(exit) ? exit.cause : Cause.empty
        ),
        health.set("hub", { status: "down", critical: true, detail: "keep-alive stopped" })
      )
    ),
    Effect.forkScoped
  )

  yield* health.set("hub", { status: "up", critical: true })
  yield* Effect.addFinalizer(() => health.set("hub", { status: "down", critical: true, detail: "shutting down" }))
  return Context.make(Hub, makeHub(state)).pipe(Context.add(HubClients, makeHubClients(state)))
})

/** The hub's two services, from one layer (they share its state). */
export const layer: Layer.Layer<Hub | HubClients, never, HubConfig | HubMetrics | Health | HubHistory> = Layer
  .effectContext(make)

/**
 * The hub together with the history, metrics and health services it uses. Its history follows the RabbitMQ
 * source's settings (stream ids in stream mode).
 */
export const layerLive: Layer.Layer<Hub | HubClients | HubHistory | HubMetrics | Health, never, HubConfig | RabbitMqConfig> =
  layer.pipe(Layer.provideMerge(Layer.mergeAll(HubHistory.layer, HubMetrics.layer, Health.layer)))

/** `layerLive` for a hub without the RabbitMQ source in stream mode: its history gives local ids. */
export const layerLocal: Layer.Layer<Hub | HubClients | HubHistory | HubMetrics | Health, never, HubConfig> = layer
  .pipe(Layer.provideMerge(Layer.mergeAll(HubHistory.layerLocal, HubMetrics.layer, Health.layer)))
