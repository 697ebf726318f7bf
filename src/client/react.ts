/**
 * React binding: one connection per provider, state and events read with `useSyncExternalStore`. Safe under
 * StrictMode: the provider's double mount keeps one socket (the close of the first unmount is deferred and
 * cancelled by the remount).
 */
import {
  createContext,
  createElement,
  type ReactNode,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore
} from "react"
import { HubClient } from "./client.js"
import type { ClientOptions, ConnectionState, EventMap, EventOf, Gap, HubEvent } from "./types.js"

export type * from "./types.js"

const HubContext = createContext<HubClient<EventMap> | null>(null)

export interface HubProviderProps {
  /** The WebSocket endpoint, such as `wss://hub.example.com/api/v1/ws/events` (ignored with `client`). */
  readonly url?: string
  /** The client's options (read once, when the provider mounts). */
  readonly options?: ClientOptions
  /** A client made elsewhere, instead of `url`: the provider then neither opens nor closes it. */
  readonly client?: HubClient<any>
  readonly children?: ReactNode
}

/**
 * The providers' own clients that are not opened yet. A provider creates its client closed (`lazy`) and opens it
 * after mounting; until then the hooks show `connecting`, the first state of a client that opens at once, rather
 * than the closed client's `disconnected`.
 */
const opening = new WeakSet<HubClient<any>>()

/** Holds one connection for the components below it. */
export const HubProvider = ({ url, options, client, children }: HubProviderProps) => {
  const [own] = useState(() => {
    if (client) return undefined
    const created = new HubClient(url ?? "", { ...options, lazy: true })
    opening.add(created)
    return created
  })
  const closing = useRef<ReturnType<typeof setTimeout> | undefined>(undefined)
  useEffect(() => {
    if (!own) return
    clearTimeout(closing.current)
    opening.delete(own)
    own.open()
    // Deferred: StrictMode unmounts and remounts at once, and the remount cancels this.
    return () => void (closing.current = setTimeout(() => own.close(), 0))
  }, [own])
  return createElement(HubContext.Provider, { value: client ?? own! }, children)
}

/** The provider's client (for `publish`, `lastId`, ...). */
export const useHub = <M extends EventMap = EventMap>(): HubClient<M> => {
  const client = useContext(HubContext)
  if (!client) throw new Error("useHub: no <HubProvider> above this component")
  return client as unknown as HubClient<M>
}

/** The connection state, re-rendering on every change. */
export const useHubState = (): ConnectionState => {
  const client = useHub()
  const state = () => opening.has(client) ? "connecting" : client.state
  // On a server the provider's client is never opened: its page says `connecting`, as the first render in a browser.
  return useSyncExternalStore((notify) => client.onState(notify), state, state)
}

/** Is the event in every one of `rooms` (`run_id:789e0123`: its data's `run_id` is `789e0123`)? */
export const inRooms = (event: HubEvent, rooms: ReadonlyArray<string>): boolean =>
  rooms.every((room) => {
    const colon = room.indexOf(":")
    const value = (event.data as Record<string, unknown> | null)?.[room.slice(0, colon)]
    return value !== undefined && String(value) === room.slice(colon + 1)
  })

export interface EventsOptions {
  /** Keep the latest this many events (default 100). */
  readonly limit?: number
  /** Only events in these rooms (the provider's connection must receive them: join them in its options, or none). */
  readonly rooms?: ReadonlyArray<string>
}

const noRooms: ReadonlyArray<string> = []

/** The latest events matching `pattern` (oldest first), received since the component mounted. */
export const useHubEvents = <M extends EventMap = EventMap, P extends string = string>(
  pattern: P,
  options: EventsOptions = {}
): ReadonlyArray<EventOf<M, P>> => {
  const client = useHub<M>()
  const limit = options.limit ?? 100
  const rooms = options.rooms ?? noRooms
  const key = rooms.join(",")
  const store = useMemo(() => {
    let events: ReadonlyArray<EventOf<M, P>> = []
    return {
      subscribe: (notify: () => void) =>
        client.on(pattern, (event) => {
          if (rooms.length > 0 && !inRooms(event as HubEvent, rooms)) return
          events = events.length < limit ? [...events, event] : [...events.slice(events.length - limit + 1), event]
          notify()
        }),
      snapshot: () => events
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, pattern, limit, key])
  return useSyncExternalStore(store.subscribe, store.snapshot, store.snapshot)
}

/** Calls `handler` (its latest version) for every event matching `pattern`. */
export const useHubEvent = <M extends EventMap = EventMap, P extends string = string>(
  pattern: P,
  handler: (event: EventOf<M, P>) => void
): void => {
  const client = useHub<M>()
  const latest = useRef(handler)
  latest.current = handler
  useEffect(() => client.on(pattern, (event) => latest.current(event)), [client, pattern])
}

/** Calls `handler` (its latest version) for every `hub.history_gap`: reload what the page shows. */
export const useHubGap = (handler: (gap: Gap) => void): void => {
  const client = useHub()
  const latest = useRef(handler)
  latest.current = handler
  useEffect(() => client.onGap((gap) => latest.current(gap)), [client])
}
