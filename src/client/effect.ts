/**
 * The client for Effect programs: the same `HubClient`, opened in a scope and closed with it, its reconnection
 * delays taken from a `Schedule`, its events a `Stream`.
 *
 *   const program = Effect.gen(function*() {
 *     const hub = yield* HubConnection
 *     yield* hub.events("backtest.#").pipe(Stream.runForEach((event) => Effect.log(event.type)))
 *   }).pipe(Effect.provide(HubConnection.layer("ws://localhost:8080/api/v1/ws/events", { WebSocket })))
 */
import { Context, Data, Duration, Effect, Exit, Layer, Option, Queue, Schedule, type Scope, Stream } from "effect"
import { HubClient } from "./client.js"
import type { ClientError, ClientOptions, ConnectionState, EventMap, EventOf, Gap, LiveData } from "./types.js"

export type * from "./types.js"

/** A request the hub refused or could not answer (the connection was lost, or `hub.error`). */
export class HubRequestError extends Data.TaggedError("HubRequestError")<{ readonly message: string }> {}

/** The default: about 0.5 s doubling with jitter, never more than 20 s apart. */
export const defaultSchedule: Schedule.Schedule<unknown, ClientError> = Schedule.min([
  Schedule.jittered(Schedule.exponential("500 millis")),
  Schedule.spaced("20 seconds")
])

export interface EffectClientOptions extends Omit<ClientOptions, "retryDelay" | "lazy"> {
  /** When to reconnect; the schedule restarts after every connection that worked. Ending it gives up. */
  readonly schedule?: Schedule.Schedule<unknown, ClientError>
}

export interface HubConnectionService<M extends EventMap = EventMap> {
  /** The underlying client (state, lastId, listeners). */
  readonly client: HubClient<M>
  /** Every event matching `pattern` from now on, exactly once and in order across reconnects. */
  readonly events: <P extends string>(pattern: P) => Stream.Stream<EventOf<M, P>>
  /** Every `hub.history_gap`. */
  readonly gaps: Stream.Stream<Gap>
  /** Every caught-up resume (`hub.live`). */
  readonly lives: Stream.Stream<LiveData>
  /** The state now, then every change. */
  readonly states: Stream.Stream<ConnectionState>
  readonly lastId: Effect.Effect<Option.Option<string>>
  /** Publishes a command (see `WS_PUBLISH_TYPES`); succeeds once the broker confirmed it. */
  readonly publish: (type: string, data: Record<string, unknown>) => Effect.Effect<void, HubRequestError>
}

/** A listener of the client as an unbounded stream (the client never waits for its consumers). */
const fromListener = <A>(add: (emit: (a: A) => void) => () => void): Stream.Stream<A> =>
  Stream.callback<A>((queue) => {
    const remove = add((a) => void Queue.offerUnsafe(queue, a))
    return Effect.addFinalizer(() => Effect.sync(remove))
  })

/** Steps a pure schedule by hand: the client asks for each delay synchronously. */
const delays = (schedule: Schedule.Schedule<unknown, ClientError>) => {
  const start = () => Effect.runSync(Schedule.toStep(schedule))
  let step = start()
  return (attempt: number, error: ClientError): number | undefined => {
    if (attempt === 0) step = start()
    // A step that fails has ended the schedule: the client gives up.
    const exit = Effect.runSyncExit(step(Date.now(), error))
    return Exit.isSuccess(exit) ? Math.max(0, Duration.toMillis(exit.value[1])) : undefined
  }
}

/** Opens a client for the scope: closed (and its listeners removed) when the scope closes. */
export const make = <M extends EventMap = EventMap>(
  url: string,
  options: EffectClientOptions = {}
): Effect.Effect<HubConnectionService<M>, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() => new HubClient<M>(url, { ...options, retryDelay: delays(options.schedule ?? defaultSchedule) })),
      (client) => Effect.sync(() => client.close())
    ),
    (client): HubConnectionService<M> => ({
      client,
      events: (pattern) => fromListener((emit) => client.on(pattern, emit)),
      gaps: fromListener((emit) => client.onGap(emit)),
      lives: fromListener((emit) => client.onLive(emit)),
      states: Stream.concat(Stream.sync(() => client.state), fromListener((emit) => client.onState(emit))),
      lastId: Effect.sync(() => Option.fromNullishOr(client.lastId)),
      publish: (type, data) =>
        Effect.tryPromise({
          try: () => client.publish(type, data),
          catch: (error) => new HubRequestError({ message: String((error as Error)?.message ?? error) })
        })
    })
  )

/** The hub connection as a service. */
export class HubConnection extends Context.Service<
  HubConnection,
  HubConnectionService
>()("effect-event-hub/client/HubConnection") {
  static layer = (url: string, options: EffectClientOptions = {}): Layer.Layer<HubConnection> =>
    Layer.effect(HubConnection, make(url, options))
}

