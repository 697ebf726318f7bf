/**
 * The Prometheus exposition of the hub's metrics (`GET /metrics` with
 * `Accept: text/plain` or OpenMetrics, and `GET /metrics/prometheus`),
 * written by prom-client. Its collectors read the hub's plain counters
 * (Metrics.ts) when scraped, so the fan-out never updates a labelled metric.
 * Process metrics (CPU, memory, event-loop lag, GC) are prom-client's
 * defaults, registered on the first scrape (each registration starts
 * observers for the life of the process).
 */
import { Effect } from "effect"
import { collectDefaultMetrics, Counter, Gauge, type Registry } from "prom-client"
import { HubHistory } from "../hub/History.js"
import { connectionRefusals, requestRefusals } from "../security/Limits.js"
import { Health, type HealthReport } from "../ops/Health.js"
import { HubMetrics } from "../ops/Metrics.js"

const refusedOf = (kinds: ReadonlyArray<string>, security: Record<string, number>) =>
  Object.entries(security).filter(([name]) => kinds.includes(name))

type Labels = Record<string, string>
type Samples = Iterable<readonly [Labels, number]>

/** Reads the samples into the metric when it is scraped (the collectors are synchronous). */
const collectFrom = <M extends Counter | Gauge>(read: () => Samples, put: (metric: M, labels: Labels, value: number) => void) =>
  function(this: M) {
    this.reset()
    for (const [labels, value] of read()) put(this, labels, value)
  }

const counter = (registry: Registry, name: string, help: string, labelNames: Array<string>, read: () => Samples) =>
  new Counter({
    name,
    help,
    labelNames,
    registers: [registry],
    collect: collectFrom<Counter>(read, (metric, labels, value) => metric.inc(labels, value))
  })

const gauge = (registry: Registry, name: string, help: string, labelNames: Array<string>, read: () => Samples) =>
  new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    collect: collectFrom<Gauge>(read, (metric, labels, value) => metric.set(labels, value))
  })

const one = (value: number): Samples => [[{}, value]]
const by = (label: string, entries: Iterable<readonly [string, number]>): Samples =>
  Array.from(entries, ([key, value]) => [{ [label]: key }, value] as const)

/** Prometheus's own scrapes ask for OpenMetrics or `text/plain`; browsers and `curl` (`*\/*`) keep the JSON. */
export const wantsPrometheus = (accept: string | undefined): boolean => {
  if (accept === undefined) return false
  const text = accept.toLowerCase()
  const prometheus = Math.min(
    ...["application/openmetrics-text", "text/plain"].map((type) => text.indexOf(type)).filter((i) => i >= 0),
    Infinity
  )
  const json = text.indexOf("application/json")
  return prometheus !== Infinity && (json === -1 || prometheus < json)
}

/** Registers the collectors on the hub's registry; `render` answers a scrape. */
export const make = Effect.gen(function*() {
  const metrics = yield* HubMetrics
  const health = yield* Health
  const history = yield* HubHistory
  const { counters, registry } = metrics
  /** Read before each scrape: the collectors are synchronous. */
  let healthReport: HealthReport = yield* health.report
  const sources = (name: string) => counters.sources.get(name) ?? {}

  gauge(registry, "hub_clients_connected", "Clients connected now, by transport", ["transport"], () =>
    by("transport", counters.connected))
  counter(registry, "hub_connections_opened_total", "Client connections accepted, by transport", ["transport"], () =>
    by("transport", counters.opened))
  counter(registry, "hub_connections_refused_total", "Connections refused before they opened, by reason", ["reason"], () =>
    by("reason", refusedOf(connectionRefusals, sources("security"))))
  counter(registry, "hub_requests_refused_total", "Client requests and HTTP publishes refused, by reason", ["reason"], () =>
    by("reason", refusedOf(requestRefusals, sources("security"))))
  counter(registry, "hub_disconnects_total", "Clients disconnected, by reason", ["reason"], () =>
    by("reason", Object.entries(counters.disconnects)))
  counter(registry, "hub_slow_consumer_kicks_total", "Clients dropped because their send buffer was full", [], () =>
    one(counters.disconnects.slow_consumer))
  counter(registry, "hub_events_received_total", "Events that entered the hub, by source", ["source"], () =>
    by("source", Object.entries(counters.received)))
  counter(registry, "hub_events_deduplicated_total", "Events dropped as a repeat of a recent event_id", [], () =>
    one(counters.eventsDeduplicated))
  counter(registry, "hub_events_broadcast_total", "Events fanned out, by event type (bounded; the rest: other)", [
    "event_type"
  ], () => by("event_type", Array.from(counters.eventsByType, ([type, entry]) => [type, entry.broadcast] as const)))
  counter(registry, "hub_event_recipients_total", "Recipients of the events fanned out, by event type", [
    "event_type"
  ], () => by("event_type", Array.from(counters.eventsByType, ([type, entry]) => [type, entry.recipients] as const)))
  counter(registry, "hub_deliveries_total", "Messages written to client sockets", [], () =>
    one(counters.messagesDelivered))
  counter(registry, "hub_written_bytes_total", "Bytes of messages written to client sockets", [], () =>
    one(counters.bytesWritten))
  gauge(registry, "hub_history_events", "Events held in the history for resumes", [], () =>
    one(history.size))
  counter(registry, "hub_resumes_total", "Resumes requested (?since= or subscribe with since)", [], () =>
    one(counters.resumes))
  counter(registry, "hub_history_gaps_total", "Resumes the history could not serve in full, by reason", ["reason"], () =>
    by("reason", Object.entries(counters.gaps)))
  gauge(registry, "hub_rabbitmq_up", "1 while the RabbitMQ consumer consumes; 0 otherwise (absent: no broker)", [], () =>
    healthReport.checks.rabbitmq === undefined || healthReport.checks.rabbitmq.status === "disabled"
      ? []
      : one(healthReport.checks.rabbitmq.status === "up" ? 1 : 0))
  const rabbit = (name: string, key: string, help: string) =>
    counter(registry, name, help, [], () => (key in sources("rabbitmq") ? one(sources("rabbitmq")[key]!) : []))
  rabbit("hub_rabbitmq_connections_total", "connections", "RabbitMQ sessions established")
  rabbit("hub_rabbitmq_reconnects_total", "reconnects", "RabbitMQ reconnection attempts")
  rabbit("hub_rabbitmq_messages_consumed_total", "events_consumed", "RabbitMQ events taken live (not refilled, not read again)")
  rabbit("hub_rabbitmq_messages_rejected_total", "events_rejected", "RabbitMQ messages that were not events")
  rabbit("hub_rabbitmq_events_refilled_total", "events_refilled", "stream events read back into the history at start (not sent)")
  rabbit("hub_rabbitmq_messages_reread_total", "duplicates_dropped", "stream messages read again after a reconnect, skipped")
  rabbit("hub_rabbitmq_events_moved_total", "events_moved", "events this instance moved from the ingest queue into the stream")
  rabbit("hub_rabbitmq_moves_repeated_total", "moves_repeated", "stream messages skipped: moved a second time")
  rabbit("hub_rabbitmq_moves_after_hole_total", "moves_after_hole", "stream messages skipped: after a refused move (moved again)")
  rabbit("hub_rabbitmq_stream_holes_total", "stream_holes", "times retention removed stream events before this hub read them")

  let defaults = false
  const collect = Effect.gen(function*() {
    if (!defaults) {
      defaults = true
      collectDefaultMetrics({ register: registry })
    }
    healthReport = yield* health.report
  })
  return {
    contentType: registry.contentType,
    render: Effect.andThen(collect, Effect.promise(() => registry.metrics())),
    /** The same as prom-client's JSON, which its `AggregatorRegistry` sums over a host's workers. */
    json: Effect.andThen(collect, Effect.promise(() => registry.getMetricsAsJSON()))
  }
})
