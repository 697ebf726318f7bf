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
import { HubConfig } from "./Config.js"
import { Health } from "./Health.js"
import { HubMetrics } from "./Metrics.js"
import { type DisconnectReason, Outbound } from "./Protocol.js"
import * as Topic from "./Topic.js"

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
}

/** Does the registration's `allowed` limit let an event of `type` through? */
const isAllowed = (registration: Registration, type: string) =>
  registration.allowed === undefined || registration.allowed.some((pattern) => Topic.matches(pattern, type))

/**
 * An immutable snapshot of the clients and the subscription index
 * (pattern -> clients). Recipients per event type are derived lazily and
 * memoised on the snapshot, so repeated events of one type cost only their
 * recipients, not a scan of every client.
 */
class HubState {
  readonly #recipients = new Map<string, ReadonlyArray<Connection>>()

  constructor(
    readonly clients: HashMap.HashMap<ClientId, Registration>,
    readonly index: HashMap.HashMap<string, HashSet.HashSet<ClientId>>
  ) {}

  static readonly empty = new HubState(HashMap.empty(), HashMap.empty())

  recipients(type: string): ReadonlyArray<Connection> {
    let found = this.#recipients.get(type)
    if (found === undefined) {
      const ids = new Set<ClientId>()
      for (const [pattern, clients] of this.index) {
        if (Topic.matches(pattern, type)) for (const id of clients) ids.add(id)
      }
      found = []
      for (const id of ids) {
        const registration = HashMap.get(this.clients, id)
        if (Option.isSome(registration) && isAllowed(registration.value, type)) {
          ;(found as Array<Connection>).push(registration.value.connection)
        }
      }
      if (this.#recipients.size >= 1024) this.#recipients.clear()
      this.#recipients.set(type, found)
    }
    return found
  }

  /** The state with client `id` registered as `next` (or removed); only changed patterns are re-indexed. */
  withRegistration(id: ClientId, next: Registration | undefined): HubState {
    const previous = Option.getOrUndefined(HashMap.get(this.clients, id))?.patterns ?? []
    const patterns = next?.patterns ?? []
    const removed = previous.filter((pattern) => !patterns.includes(pattern))
    const added = patterns.filter((pattern) => !previous.includes(pattern))
    const index = reindex(unindex(this.index, id, removed), id, added)
    const clients = next === undefined ? HashMap.remove(this.clients, id) : HashMap.set(this.clients, id, next)
    return new HubState(clients, index)
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

export class Hub extends Context.Tag("event-hub/Hub")<Hub, {
  /**
   * Sends an event to every client subscribed to `type`: the seed's
   * `hub.BroadcastEvent(type, data)`. The event is serialised once. Returns
   * how many clients it was queued for. Callers validate `type` (see
   * `Protocol.EventType`); the hub does not.
   */
  readonly broadcast: (type: string, data: unknown) => Effect.Effect<number>
  /** A fresh client id. */
  readonly nextId: Effect.Effect<ClientId>
  /**
   * Adds a client with the default subscription (`#`), limited to `allowed`
   * (patterns) when given: it never receives an event outside them.
   */
  readonly register: (connection: Connection, allowed?: ReadonlyArray<string>) => Effect.Effect<void>
  /** Replaces a client's `allowed` limit (after a token refresh); `undefined` lifts it. */
  readonly authorize: (id: ClientId, allowed: ReadonlyArray<string> | undefined) => Effect.Effect<void>
  readonly unregister: (id: ClientId) => Effect.Effect<void>
  /** Adds patterns; the first call replaces the default `#`. Returns the subscription now in effect. */
  readonly subscribe: (
    id: ClientId,
    patterns: ReadonlyArray<string>
  ) => Effect.Effect<ReadonlyArray<string>, TooManySubscriptions>
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
      const state = yield* Ref.make(HubState.empty)
      let lastId = 0

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
        broadcast: (type, data) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) =>
            Effect.map(Ref.get(state), (current) => {
              const message = Outbound.message(type, data, new Date(now))
              const recipients = current.recipients(type)
              for (const connection of recipients) {
                if (!connection.offer(message)) connection.kick("slow_consumer")
              }
              metrics.eventBroadcast(type, recipients.length)
              return recipients.length
            })),
        nextId: Effect.sync(() => ++lastId),
        register: (connection, allowed) =>
          Ref.update(state, (current) =>
            current.withRegistration(connection.id, {
              connection,
              patterns: defaultSubscription,
              explicit: false,
              allowed
            })),
        authorize: (id, allowed) =>
          Effect.asVoid(updateSubscription(id, (registration) => Either.right({ ...registration, allowed }))),
        unregister: (id) => Ref.update(state, (current) => current.withRegistration(id, undefined)),
        subscribe: (id, patterns) =>
          Effect.flatMap(
            updateSubscription(id, (registration) => {
              const next = union(registration.explicit ? registration.patterns : [], patterns)
              return next.length > config.maxSubscriptions
                ? Either.left(new TooManySubscriptions({ limit: config.maxSubscriptions, requested: next.length }))
                : Either.right({ ...registration, patterns: next, explicit: true })
            }),
            (result) => result
          ),
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
