/**
 * The hub's counters, shown by `GET /metrics`. They are plain numbers bumped
 * on the hot path (one increment per event and per written batch), read as a
 * snapshot; the Prometheus exposition (Prometheus.ts) reads the same numbers
 * when scraped, so the hot path never touches a labelled metric. Only the
 * delivery latency is a prom-client histogram, observed once per event.
 */
import { Context, Effect, Layer } from "effect"
import { Histogram, Registry } from "prom-client"
import { HubConfig } from "../config/Config.js"
import { DisconnectReason, type GapReason } from "../protocol/Protocol.js"

/** Where an event entered the hub. */
export type EventSource = "rabbitmq" | "http" | "library"

/** Buckets of the delivery latency, in seconds: from half a millisecond (a small fan-out) to seconds (a backlog). */
const latencyBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

export interface Counters {
  eventsBroadcast: number
  eventsDeduplicated: number
  messagesDelivered: number
  readonly eventsByType: Map<string, { broadcast: number; recipients: number }>
  readonly disconnects: Record<DisconnectReason, number>
  readonly sources: Map<string, Record<string, number>>
  readonly received: Record<EventSource, number>
  /** Connected clients and connections opened since start, by transport (`ws`, `sse`). */
  readonly connected: Map<string, number>
  readonly opened: Map<string, number>
  bytesWritten: number
  resumes: number
  readonly gaps: Record<GapReason, number>
}

export interface MetricsSnapshot {
  readonly events_broadcast: number
  readonly events_deduplicated: number
  readonly messages_delivered: number
  readonly events_by_type: Record<string, { readonly broadcast: number; readonly recipients: number }>
  readonly clients_disconnected: Record<DisconnectReason, number>
}

export class HubMetrics extends Context.Service<HubMetrics, {
  /** An event of `type` was broadcast to `recipients` clients. */
  readonly eventBroadcast: (type: string, recipients: number) => void
  /** An event was dropped because its `event_id` entered the hub recently (a publisher's retry). */
  readonly deduplicated: () => void
  /** `count` messages (`bytes` bytes, frames included) were written to a client. */
  readonly delivered: (count: number, bytes?: number) => void
  readonly disconnected: (reason: DisconnectReason) => void
  /** Adds `by` to the counter `name` of a named source (e.g. `rabbitmq`). */
  readonly count: (source: string, name: string, by?: number) => void
  /** Declares a source's counters, so that they show as 0 before their first event. */
  readonly declare: (source: string, names: ReadonlyArray<string>) => void
  readonly snapshot: Effect.Effect<MetricsSnapshot & { readonly sources: Record<string, Record<string, number>> }>
  /** An event entered from `source` (counted before deduplication). */
  readonly received: (source: EventSource) => void
  /** A client of `transport` joined the hub. */
  readonly clientJoined: (transport: string) => void
  readonly clientLeft: (transport: string) => void
  readonly resumed: () => void
  readonly gap: (reason: GapReason) => void
  /**
   * The flusher wrote everything pending at `end` (`performance.now()`): each of the first `count` `arrivals` (when
   * an event with recipients entered) gives one delivery latency.
   */
  readonly passEnded: (arrivals: Float64Array, count: number, end: number) => void
  /** The raw counters, read by the Prometheus exposition when scraped. */
  readonly counters: Readonly<Counters>
  /** The Prometheus registry of this hub (one per layer, never the global one). */
  readonly registry: Registry
}>()("event-hub/HubMetrics") {
  /** Labels at most `METRICS_MAX_EVENT_TYPES` event types (`HubConfig`). */
  static readonly layer: Layer.Layer<HubMetrics, never, HubConfig> = Layer.effect(
    HubMetrics,
    Effect.map(HubConfig, (config) => make(config.metricsMaxEventTypes))
  )
}

// One closure over the registry and the plain counters that the hot path bumps and the scrape reads; each
// metric is a short declaration inside, which makes it longer than our usual functions.
const make = (maxTrackedTypes: number): HubMetrics["Service"] => {
  const registry = new Registry()
  const latency = new Histogram({
    name: "hub_delivery_latency_seconds",
    help: "Time from an event's arrival at the hub to its write on the socket of its last recipient",
    buckets: latencyBuckets,
    registers: [registry]
  })
  const counters: Counters = {
    eventsBroadcast: 0,
    eventsDeduplicated: 0,
    messagesDelivered: 0,
    eventsByType: new Map(),
    disconnects: Object.fromEntries(DisconnectReason.literals.map((reason) => [reason, 0])) as Record<
      DisconnectReason,
      number
    >,
    sources: new Map(),
    received: { rabbitmq: 0, http: 0, library: 0 },
    connected: new Map([["ws", 0], ["sse", 0]]),
    opened: new Map([["ws", 0], ["sse", 0]]),
    bytesWritten: 0,
    resumes: 0,
    gaps: { missed: 0, unknown: 0 }
  }
  const byType = (type: string) => {
    let entry = counters.eventsByType.get(type)
    if (entry === undefined) {
      const key = counters.eventsByType.size < maxTrackedTypes ? type : "other"
      entry = counters.eventsByType.get(key) ?? { broadcast: 0, recipients: 0 }
      counters.eventsByType.set(key, entry)
    }
    return entry
  }
  return {
    counters,
    registry,
    received: (source) => {
      counters.received[source]++
    },
    clientJoined: (transport) => {
      counters.connected.set(transport, (counters.connected.get(transport) ?? 0) + 1)
      counters.opened.set(transport, (counters.opened.get(transport) ?? 0) + 1)
    },
    clientLeft: (transport) => {
      counters.connected.set(transport, (counters.connected.get(transport) ?? 1) - 1)
    },
    resumed: () => {
      counters.resumes++
    },
    gap: (reason) => {
      counters.gaps[reason]++
    },
    passEnded: (arrivals, count, end) => {
      for (let i = 0; i < count; i++) latency.observe((end - arrivals[i]!) / 1000)
    },
    eventBroadcast: (type, recipients) => {
      counters.eventsBroadcast++
      const entry = byType(type)
      entry.broadcast++
      entry.recipients += recipients
    },
    deduplicated: () => {
      counters.eventsDeduplicated++
    },
    delivered: (count, bytes = 0) => {
      counters.messagesDelivered += count
      counters.bytesWritten += bytes
    },
    disconnected: (reason) => {
      counters.disconnects[reason]++
    },
    declare: (source, names) => {
      let entry = counters.sources.get(source)
      if (entry === undefined) counters.sources.set(source, entry = {})
      for (const name of names) entry[name] ??= 0
    },
    count: (source, name, by = 1) => {
      let entry = counters.sources.get(source)
      if (entry === undefined) counters.sources.set(source, entry = {})
      entry[name] = (entry[name] ?? 0) + by
    },
    snapshot: Effect.sync(() => ({
      events_broadcast: counters.eventsBroadcast,
      events_deduplicated: counters.eventsDeduplicated,
      messages_delivered: counters.messagesDelivered,
      events_by_type: Object.fromEntries(
        [...counters.eventsByType].map(([type, entry]) => [type, { ...entry }])
      ),
      clients_disconnected: { ...counters.disconnects },
      sources: Object.fromEntries([...counters.sources].map(([name, entry]) => [name, { ...entry }]))
    }))
  }
}
