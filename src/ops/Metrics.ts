/**
 * The hub's counters, shown by `GET /metrics`. They are plain numbers bumped
 * on the hot path (one increment per event and per written batch), read as a
 * snapshot.
 */
import { Context, Effect, Layer } from "effect"
import { DisconnectReason } from "../protocol/Protocol.js"

/** Distinct event types counted one by one; further types are counted under `other`. */
const maxTrackedTypes = 500

export interface Counters {
  eventsBroadcast: number
  eventsDeduplicated: number
  messagesDelivered: number
  readonly eventsByType: Map<string, { broadcast: number; recipients: number }>
  readonly disconnects: Record<DisconnectReason, number>
  readonly sources: Map<string, Record<string, number>>
}

export interface MetricsSnapshot {
  readonly events_broadcast: number
  readonly events_deduplicated: number
  readonly messages_delivered: number
  readonly events_by_type: Record<string, { readonly broadcast: number; readonly recipients: number }>
  readonly clients_disconnected: Record<DisconnectReason, number>
}

export class HubMetrics extends Context.Tag("event-hub/HubMetrics")<HubMetrics, {
  /** An event of `type` was broadcast to `recipients` clients. */
  readonly eventBroadcast: (type: string, recipients: number) => void
  /** An event was dropped because its `event_id` entered the hub recently (a publisher's retry). */
  readonly deduplicated: () => void
  /** `count` messages were written to a client. */
  readonly delivered: (count: number) => void
  readonly disconnected: (reason: DisconnectReason) => void
  /** Adds `by` to the counter `name` of a named source (e.g. `rabbitmq`). */
  readonly count: (source: string, name: string, by?: number) => void
  /** Declares a source's counters, so that they show as 0 before their first event. */
  readonly declare: (source: string, names: ReadonlyArray<string>) => void
  readonly snapshot: Effect.Effect<MetricsSnapshot & { readonly sources: Record<string, Record<string, number>> }>
}>() {
  static readonly layer: Layer.Layer<HubMetrics> = Layer.sync(HubMetrics, () => make())
}

const make = (): HubMetrics["Type"] => {
  const counters: Counters = {
    eventsBroadcast: 0,
    eventsDeduplicated: 0,
    messagesDelivered: 0,
    eventsByType: new Map(),
    disconnects: Object.fromEntries(DisconnectReason.literals.map((reason) => [reason, 0])) as Record<
      DisconnectReason,
      number
    >,
    sources: new Map()
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
    eventBroadcast: (type, recipients) => {
      counters.eventsBroadcast++
      const entry = byType(type)
      entry.broadcast++
      entry.recipients += recipients
    },
    deduplicated: () => {
      counters.eventsDeduplicated++
    },
    delivered: (count) => {
      counters.messagesDelivered += count
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
