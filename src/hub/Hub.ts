/**
 * The hub: the set of connected clients and their subscriptions, held in one
 * `Ref`, and the broadcast that fans an event out to the clients whose
 * subscriptions match it.
 *
 * Only the hub touches the client set. A broadcast encodes the event once and
 * offers the same bytes to every recipient's bounded buffer; a client whose
 * buffer is full is told to leave instead of slowing the broadcast down.
 */
import { Clock, Context, Data, Duration, Effect, Either, HashMap, HashSet, Layer, Option, Ref, Schedule } from "effect"
import { HubConfig } from "../config/Config.js"
import { Health } from "../ops/Health.js"
import { eventIdOf, RecentIds } from "./Dedup.js"
import { History } from "./History.js"
import { HubMetrics } from "../ops/Metrics.js"
import { type DisconnectReason, type HistoryGapData, HubMessageType, Outbound } from "../protocol/Protocol.js"
import * as Topic from "../protocol/Topic.js"

export type ClientId = number

/** What the hub knows of a connected client (implemented in `Client.ts`). */
export interface Connection {
  readonly id: ClientId
  /** Queues a message for the client; `false` when its send buffer is full. Never blocks. */
  readonly offer: (message: Outbound) => boolean
  /** Asks the client to leave for `reason`. Never blocks; later calls are ignored. */
  readonly kick: (reason: DisconnectReason) => void
  /** Called on every tick: sends a ping when due, kicks the client if it went silent or a write is stuck. */
  readonly keepAlive: (now: number) => void
  /**
   * Calls `ready` once fewer than `size` messages wait in the send buffer (at
   * once if so): a replay is paced by it instead of overflowing the buffer.
   * Without it, a replay that finds the connection full drops it as a slow
   * consumer, as a broadcast does.
   */
  readonly whenBelow?: (size: number, ready: () => void) => void
  /** Messages waiting in the send buffer (with `whenBelow`). */
  readonly backlog?: () => number
}

/** The subscription every client starts with: everything. */
export const defaultSubscription: ReadonlyArray<string> = ["#"]

interface Registration {
  readonly connection: Connection
  readonly patterns: ReadonlyArray<string>
  /** False until the client's first `subscribe`, which replaces the default `#`. */
  readonly explicit: boolean
  /** What the client may receive at most (its token's `event_types`); `undefined`: no limit. */
  readonly allowed?: ReadonlyArray<string> | undefined
  /** True while the client resumes from the history: it receives no live events until it has caught up. */
  readonly catchingUp?: boolean
}

/** Does the registration's `allowed` limit let an event of `type` through? */
const isAllowed = (registration: Registration, type: string) =>
  registration.allowed === undefined || registration.allowed.some((pattern) => Topic.matches(pattern, type))

/** Whether the client receives events of `type`: subscribed to it, and allowed to (for replays; live uses the index). */
const wants = (registration: Registration, type: string) =>
  isAllowed(registration, type) && registration.patterns.some((pattern) => Topic.matches(pattern, type))

/** Most event types whose recipients are kept; past it they are computed again as events come. */
const maxMemoTypes = 1024

/** The clients that receive one event type, kept up to date as subscriptions change. */
interface TypeRecipients {
  /** How many of each client's patterns match the type (clients with none are absent). */
  readonly matching: Map<ClientId, number>
  /** The clients that receive it now: matched, allowed, and not catching up. */
  readonly receivers: Set<Connection>
}

const countMatching = (patterns: ReadonlyArray<string>, type: string) => {
  let count = 0
  for (const pattern of patterns) if (Topic.matches(pattern, type)) count++
  return count
}

const receivesWhenMatched = (registration: Registration, type: string) =>
  registration.catchingUp !== true && isAllowed(registration, type)

/**
 * The clients and the subscription index (pattern -> clients), as immutable
 * maps, and the recipients of each event type seen so far (`memo`). The memo
 * is computed from the index the first time a type is broadcast, then kept up
 * to date by every change of a registration, at the cost of the patterns that
 * changed: a broadcast costs its recipients, and one client's subscriptions
 * never make the hub match every pattern again. The memo is shared by the
 * states of one hub (only the newest state is ever read).
 */
class HubState {
  private constructor(
    readonly clients: HashMap.HashMap<ClientId, Registration>,
    readonly index: HashMap.HashMap<string, HashSet.HashSet<ClientId>>,
    private readonly memo: Map<string, TypeRecipients>
  ) {}

  static empty(): HubState {
    return new HubState(HashMap.empty(), HashMap.empty(), new Map())
  }

  recipients(type: string): ReadonlySet<Connection> {
    let found = this.memo.get(type)
    if (found === undefined) {
      found = { matching: new Map(), receivers: new Set() }
      for (const [pattern, clients] of this.index) {
        if (!Topic.matches(pattern, type)) continue
        for (const id of clients) found.matching.set(id, (found.matching.get(id) ?? 0) + 1)
      }
      for (const id of found.matching.keys()) {
        const registration = HashMap.get(this.clients, id)
        if (Option.isSome(registration) && receivesWhenMatched(registration.value, type)) {
          found.receivers.add(registration.value.connection)
        }
      }
      if (this.memo.size >= maxMemoTypes) this.memo.clear()
      this.memo.set(type, found)
    }
    return found.receivers
  }

  /** The state with client `id` registered as `next` (or removed); only changed patterns are re-indexed. */
  withRegistration(id: ClientId, next: Registration | undefined): HubState {
    const previous = Option.getOrUndefined(HashMap.get(this.clients, id))
    const before = previous?.patterns ?? []
    const patterns = next?.patterns ?? []
    const removed = before.filter((pattern) => !patterns.includes(pattern))
    const added = patterns.filter((pattern) => !before.includes(pattern))
    for (const [type, { matching, receivers }] of this.memo) {
      if (previous !== undefined) receivers.delete(previous.connection)
      if (next === undefined) {
        matching.delete(id)
        continue
      }
      const count = (matching.get(id) ?? 0) + countMatching(added, type) - countMatching(removed, type)
      if (count > 0) matching.set(id, count)
      else matching.delete(id)
      if (count > 0 && receivesWhenMatched(next, type)) receivers.add(next.connection)
    }
    const index = reindex(unindex(this.index, id, removed), id, added)
    const clients = next === undefined ? HashMap.remove(this.clients, id) : HashMap.set(this.clients, id, next)
    return new HubState(clients, index, this.memo)
  }
}

const unindex = (
  index: HashMap.HashMap<string, HashSet.HashSet<ClientId>>,
  id: ClientId,
  patterns: ReadonlyArray<string>
) =>
  patterns.reduce((acc, pattern) =>
    HashMap.modifyAt(acc, pattern, (clients) =>
      Option.flatMap(clients, (set) => {
        const rest = HashSet.remove(set, id)
        return HashSet.size(rest) === 0 ? Option.none() : Option.some(rest)
      })), index)

const reindex = (
  index: HashMap.HashMap<string, HashSet.HashSet<ClientId>>,
  id: ClientId,
  patterns: ReadonlyArray<string>
) =>
  patterns.reduce((acc, pattern) =>
    HashMap.modifyAt(acc, pattern, (clients) =>
      Option.some(HashSet.add(Option.getOrElse(clients, () => HashSet.empty<ClientId>()), id))), index)

const union = (current: ReadonlyArray<string>, added: ReadonlyArray<string>) => [...new Set([...current, ...added])]

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

/** An event to broadcast, with what a source knows about it. */
export interface BroadcastEvent {
  readonly type: string
  readonly data: unknown
  /** Its id (stream mode: the stream offset); by default the hub gives it the next local id. */
  readonly id?: string | undefined
  /** From the stream: its id is a stream offset. */
  readonly fromStream?: boolean
  /** `false`: only recorded in the history, sent to no client (a restarted hub refilling its history). */
  readonly live?: boolean
}

/** A resume under way: its replay starts with `start`; `cancel` gives up on it (the client goes live at once). */
export interface Resume {
  readonly start: Effect.Effect<void>
  readonly cancel: Effect.Effect<void>
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

const noRooms: ReadonlyArray<string> = []

/** Does an event of `rooms` reach a client in `joined` (none: every room)? */
const inRooms = (joined: ReadonlySet<string> | undefined, rooms: ReadonlyArray<string>) =>
  joined === undefined || rooms.some((room) => joined.has(room))

export class Hub extends Context.Tag("event-hub/Hub")<Hub, {
  /**
   * Sends an event to every client subscribed to `type`: the seed's
   * `hub.BroadcastEvent(type, data)`. The event is serialised once. Returns
   * how many clients it was queued for. Callers validate `type` (see
   * `Protocol.EventType`); the hub does not.
   */
  readonly broadcast: (type: string, data: unknown) => Effect.Effect<number>
  /** `broadcast` with a source's id, or into the history only (`live: false`). */
  readonly broadcastEvent: (event: BroadcastEvent) => Effect.Effect<number>
  /** The history of the events broadcast (read by resumes; the stream source refills it). */
  readonly history: History
  /**
   * Resumes client `id` from `since`: from now on it receives no live
   * events; `start` replays the events after `since` that match its
   * subscription (after a `hub.history_gap` notice if history does not
   * reach back), then switches it to live, with a `hub.live` marker, in the
   * same synchronous step as reading the last entry. The replay is paced by
   * the client's send buffer and never kicks it. A new resume replaces one
   * under way.
   */
  readonly resume: (id: ClientId, since: string) => Effect.Effect<Resume, InvalidSince>
  /** A fresh client id. */
  readonly nextId: Effect.Effect<ClientId>
  /**
   * Adds a client with the default subscription (`#`). `allowed` (patterns)
   * limits it: it never receives an event outside them. `resuming`: it will
   * resume (`?since=`), so it receives no live events until `resume`.
   */
  readonly register: (
    connection: Connection,
    options?: { readonly allowed?: ReadonlyArray<string> | undefined; readonly resuming?: boolean }
  ) => Effect.Effect<void>
  /** Replaces a client's `allowed` limit (after a token refresh); `undefined` lifts it. */
  readonly authorize: (id: ClientId, allowed: ReadonlyArray<string> | undefined) => Effect.Effect<void>
  readonly unregister: (id: ClientId) => Effect.Effect<void>
  /** Adds patterns; the first call replaces the default `#`. Returns the subscription now in effect. */
  readonly subscribe: (
    id: ClientId,
    patterns: ReadonlyArray<string>
  ) => Effect.Effect<ReadonlyArray<string>, TooManySubscriptions>
  /**
   * Puts the client in `rooms` (added to those it is in): from then on it receives only the events of its
   * rooms (still filtered by its subscription). Returns the rooms it is in now.
   */
  readonly join: (id: ClientId, rooms: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<string>, TooManyRooms>
  /** Takes the client out of `rooms`; in no room, it receives the events of every room again. */
  readonly leave: (id: ClientId, rooms: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<string>>
  /** Fails as `subscribe` would, changing nothing (a resume checks before it stops live events). */
  readonly checkSubscribe: (id: ClientId, patterns: ReadonlyArray<string>) => Effect.Effect<void, TooManySubscriptions>
  /** Removes patterns exactly as written. Returns the subscription now in effect. */
  readonly unsubscribe: (id: ClientId, patterns: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<string>>
  readonly clientCount: Effect.Effect<number>
}>() {
  static readonly layer: Layer.Layer<Hub, never, HubConfig | HubMetrics | Health> = Layer.scoped(
    Hub,
    Effect.gen(function*() {
      const config = yield* HubConfig
      const metrics = yield* HubMetrics
      const health = yield* Health
      const state = yield* Ref.make(HubState.empty())
      let lastId = 0
      const history = new History(config.historyMaxEvents, Duration.toMillis(config.historyMaxAge))
      const recentIds = new RecentIds(config.dedupMaxEvents, Duration.toMillis(config.dedupMaxAge))
      /** Every event enters here: one whose `event_id` entered recently (a publisher's retry) is dropped. */
      const admit = (event: BroadcastEvent, now: number) => {
        const eventId = eventIdOf(event.data)
        if (eventId !== undefined && recentIds.seen(eventId, now)) {
          metrics.deduplicated()
          return Effect.succeed(0)
        }
        return fanOut(event, now)
      }
      /** The resume under way for each client, if any: a newer one replaces it. */
      const resumes = new Map<ClientId, symbol>()
      /** The rooms of the clients that joined some (the others receive the events of every room). */
      const roomsJoined = new Map<Connection, ReadonlySet<string>>()
      /** The rooms of an event: `<key>:<value>` for each of `ROOM_KEYS` its data has as a string or a number. */
      const roomsOf = (data: unknown): ReadonlyArray<string> => {
        if (config.roomKeys.length === 0 || typeof data !== "object" || data === null) return noRooms
        let rooms: Array<string> | undefined
        for (const key of config.roomKeys) {
          const value = (data as Record<string, unknown>)[key]
          if (typeof value === "string" || typeof value === "number") (rooms ??= []).push(`${key}:${value}`)
        }
        return rooms ?? noRooms
      }
      /** A replay waits for the send buffer to be this empty before the client goes live. */
      const liveBelow = Math.max(1, Math.floor(config.sendBuffer / 2))

      // Resumes run in callbacks (send buffer room, appends): these read and change the state synchronously.
      const registrationOf = (id: ClientId) => Option.getOrUndefined(HashMap.get(Effect.runSync(Ref.get(state)).clients, id))
      const setCatchingUp = (id: ClientId, catchingUp: boolean) =>
        Effect.runSync(Ref.update(state, (current) => {
          const registration = HashMap.get(current.clients, id)
          return Option.isNone(registration) || (registration.value.catchingUp === true) === catchingUp
            ? current
            : current.withRegistration(id, { ...registration.value, catchingUp })
        }))

      const fanOut = (event: BroadcastEvent, now: number) =>
        Ref.modify(state, (current): readonly [number, HubState] => {
          // Fanning out and appending in one synchronous step: a resume sees the event in the history or
          // receives it live, never both or neither. The fan-out comes first: appending can complete a
          // resume that waited for this event (it replays it, then goes live), and that client must not
          // receive it a second time as a live recipient.
          const id = event.id ?? history.nextLocalId()
          const message = Outbound.message(event.type, event.data, new Date(now), id)
          const rooms = roomsOf(event.data)
          let count = 0
          if (event.live !== false) {
            const recipients = current.recipients(event.type)
            // Clients in rooms are few, or none: the others cost no look-up.
            const filtered = roomsJoined.size > 0
            for (const connection of recipients) {
              if (filtered && !inRooms(roomsJoined.get(connection), rooms)) continue
              if (!connection.offer(message)) connection.kick("slow_consumer")
              count++
            }
            metrics.eventBroadcast(event.type, count)
          }
          // The history's age limit runs on the wall clock, as its trimming in replays (callbacks) does.
          history.append({ id, type: event.type, message, rooms, at: Date.now() }, event.fromStream === true)
          return [count, current]
        })

      const replay = (id: ClientId, since: string, token: symbol) => {
        const current = () => resumes.get(id) === token && registrationOf(id) !== undefined
        let cursor: string | undefined = since
        let replayed = 0
        let gap: HistoryGapData | undefined
        const notice = (type: string, data: unknown) => Outbound.message(type, data, new Date())
        const step = (): void => {
          if (!current()) return
          const registration = registrationOf(id)!
          const connection = registration.connection
          // A connection that cannot say when it has room again (`whenBelow`) and is full is a slow consumer.
          const waitForRoom = () =>
            connection.whenBelow === undefined
              ? connection.kick("slow_consumer")
              : connection.whenBelow(config.sendBuffer, step)
          history.trim(Date.now())
          for (;;) {
            if (cursor !== undefined && !history.covers(cursor)) {
              // History moved past the cursor (the resume came too late, or the replay is too slow).
              gap = { since: cursor, oldest_available: history.oldest?.id ?? null, reason: "missed" }
              cursor = undefined
            }
            if (gap !== undefined) {
              if (!connection.offer(notice(HubMessageType.historyGap, gap))) return waitForRoom()
              gap = undefined
            }
            const next = history.after(cursor)
            if (next === undefined) {
              const head = history.newest?.id ?? history.floor
              // `since` is newer than anything this instance has (another instance is ahead): wait for it.
              if (cursor !== undefined && (head === undefined || cursor > head)) return history.whenAppended(step)
              // Not with a full buffer, or the first live event would drop the client as a slow consumer.
              if (connection.whenBelow !== undefined && connection.backlog !== undefined) {
                if (connection.backlog() >= liveBelow) return connection.whenBelow(liveBelow, step)
              }
              // At the head, with room: go live now, in this same step.
              connection.offer(notice(HubMessageType.live, { replayed, last_id: cursor ?? head ?? null }))
              resumes.delete(id)
              setCatchingUp(id, false)
              return
            }
            if (wants(registration, next.type) && inRooms(roomsJoined.get(connection), next.rooms)) {
              // Paced by the send buffer: a replay never fills it beyond its capacity.
              if (connection.backlog !== undefined && connection.backlog() >= config.sendBuffer) return waitForRoom()
              if (!connection.offer(next.message)) return waitForRoom()
              replayed++
            }
            cursor = next.id
          }
        }
        history.whenReady(() => {
          if (!current()) return
          const placed = history.place(since)
          if (placed._tag === "Gap") {
            gap = { since, oldest_available: history.oldest?.id ?? null, reason: placed.reason }
            cursor = undefined
          }
          step()
        })
      }

      /** The registration after a `subscribe` of `patterns`, or the refusal. */
      const subscribed = (registration: Registration, patterns: ReadonlyArray<string>) => {
        const next = union(registration.explicit ? registration.patterns : [], patterns)
        return next.length > config.maxSubscriptions
          ? Either.left(new TooManySubscriptions({ limit: config.maxSubscriptions, requested: next.length }))
          : Either.right<Registration>({ ...registration, patterns: next, explicit: true })
      }

      /** Applies `change` to a client's registration atomically; a refusal leaves the state as it was. */
      const updateSubscription = <E>(
        id: ClientId,
        change: (registration: Registration) => Either.Either<Registration, E>
      ) =>
        Ref.modify(state, (current): readonly [Either.Either<ReadonlyArray<string>, E>, HubState] => {
          const registration = HashMap.get(current.clients, id)
          if (Option.isNone(registration)) return [Either.right([]), current]
          const next = change(registration.value)
          return Either.isLeft(next)
            ? [Either.left(next.left), current]
            : [Either.right(next.right.patterns), current.withRegistration(id, next.right)]
        })

      // One tick for the whole hub instead of timers per client: pings, pong and write deadlines.
      const tick = Duration.millis(Math.max(
        10,
        Math.min(
          1000,
          Duration.toMillis(config.pingPeriod) / 4,
          Duration.toMillis(config.pongTimeout) / 4,
          Duration.toMillis(config.writeTimeout) / 4
        )
      ))
      yield* Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const { clients } = yield* Ref.get(state)
        for (const registration of HashMap.values(clients)) registration.connection.keepAlive(now)
      }).pipe(Effect.repeat(Schedule.spaced(tick)), Effect.forkScoped)

      yield* health.set("hub", { status: "up", critical: true })
      yield* Effect.addFinalizer(() => health.set("hub", { status: "down", critical: true, detail: "shutting down" }))

      return Hub.of({
        broadcast: (type, data) => Effect.flatMap(Clock.currentTimeMillis, (now) => admit({ type, data }, now)),
        broadcastEvent: (event) => Effect.flatMap(Clock.currentTimeMillis, (now) => admit(event, now)),
        history,
        resume: (id, since) =>
          Effect.suspend(() => {
            if (history.place(since)._tag === "Malformed") {
              // A client registered to resume (`?since=`) goes live instead; one already resuming goes on.
              if (!resumes.has(id)) setCatchingUp(id, false)
              return Effect.fail(new InvalidSince({ since }))
            }
            const token = Symbol("resume")
            resumes.set(id, token)
            setCatchingUp(id, true)
            return Effect.succeed<Resume>({
              start: Effect.sync(() => replay(id, since, token)),
              cancel: Effect.sync(() => {
                if (resumes.get(id) !== token) return
                resumes.delete(id)
                setCatchingUp(id, false)
              })
            })
          }),
        nextId: Effect.sync(() => ++lastId),
        register: (connection, options) =>
          Ref.update(state, (current) =>
            current.withRegistration(connection.id, {
              connection,
              patterns: defaultSubscription,
              explicit: false,
              allowed: options?.allowed,
              catchingUp: options?.resuming === true
            })),
        authorize: (id, allowed) =>
          Effect.asVoid(updateSubscription(id, (registration) => Either.right({ ...registration, allowed }))),
        join: (id, rooms) =>
          Effect.sync(() => {
            const connection = registrationOf(id)?.connection
            if (connection === undefined) return Either.right([])
            const next = new Set([...(roomsJoined.get(connection) ?? []), ...rooms])
            if (next.size > config.maxSubscriptions) {
              return Either.left(new TooManyRooms({ limit: config.maxSubscriptions, requested: next.size }))
            }
            // In no room (an empty `join`), the client has no room filter: it receives the events of every room.
            if (next.size > 0) roomsJoined.set(connection, next)
            return Either.right([...next])
          }).pipe(Effect.flatMap((result) => result)),
        leave: (id, rooms) =>
          Effect.sync(() => {
            const connection = registrationOf(id)?.connection
            const joined = connection === undefined ? undefined : roomsJoined.get(connection)
            if (connection === undefined || joined === undefined) return []
            const next = new Set([...joined].filter((room) => !rooms.includes(room)))
            if (next.size === 0) roomsJoined.delete(connection)
            else roomsJoined.set(connection, next)
            return [...next]
          }),
        unregister: (id) =>
          Ref.update(state, (current) => {
            resumes.delete(id)
            const registration = HashMap.get(current.clients, id)
            if (Option.isSome(registration)) roomsJoined.delete(registration.value.connection)
            return current.withRegistration(id, undefined)
          }),
        subscribe: (id, patterns) =>
          Effect.flatMap(updateSubscription(id, (registration) => subscribed(registration, patterns)), (result) => result),
        checkSubscribe: (id, patterns) =>
          Effect.flatMap(Ref.get(state), (current) => {
            const registration = HashMap.get(current.clients, id)
            if (Option.isNone(registration)) return Effect.void
            const next = subscribed(registration.value, patterns)
            return Either.isLeft(next) ? Effect.fail(next.left) : Effect.void
          }),
        unsubscribe: (id, patterns) =>
          Effect.flatMap(
            updateSubscription(id, (registration) =>
              Either.right({
                ...registration,
                patterns: registration.patterns.filter((pattern) => !patterns.includes(pattern))
              })),
            (result) => result
          ),
        clientCount: Effect.map(Ref.get(state), (current) => HashMap.size(current.clients))
      })
    })
  )
}

/** The hub together with the metrics and health services it reports to. */
export const layerLive: Layer.Layer<Hub | HubMetrics | Health, never, HubConfig> = Hub.layer.pipe(
  Layer.provideMerge(Layer.merge(HubMetrics.layer, Health.layer))
)
