/**
 * `GET /metrics` in the Prometheus text format, scraped as Prometheus does
 * and parsed with a real Prometheus text parser.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Duration, Effect, Option, Redacted } from "effect"
import { Hub } from "../src/hub/Hub.js"
import {
  baseUrl,
  broker,
  connect,
  consuming,
  eventually,
  get,
  hubLayer,
  hubWithSource,
  post,
  promise,
  security,
  tcpProxy,
  TestClient,
  uniqueNames,
  wsUrl
} from "./support.js"
import { type Scrape, scrape, valueOf } from "./support/prometheus.js"

const token = "metrics-token"
const auth = { authorization: `Bearer ${token}` }
/** Prometheus's own Accept header (2.x and 3.x scrape with this or close to it). */
const prometheusAccept =
  "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

layer(hubLayer({ publishToken: Option.some(Redacted.make(token)), metricsMaxEventTypes: 3 }), {
  excludeTestServices: true
})("GET /metrics for Prometheus", (it) => {
  it.effect("keeps its JSON for browsers and curl, and answers the text format to Prometheus", () =>
    Effect.gen(function*() {
      const json = yield* get("/metrics")
      expect(json.body.websocket.connected_clients).toBeTypeOf("number")
      for (const accept of [prometheusAccept, "text/plain", "application/openmetrics-text"]) {
        const scraped = yield* scrape("/metrics", accept)
        expect(scraped.contentType).toContain("text/plain")
        expect(scraped.families.get("hub_clients_connected")?.type).toBe("GAUGE")
      }
      const other = yield* scrape("/metrics/prometheus", "*/*")
      expect(other.families.get("hub_deliveries_total")?.type).toBe("COUNTER")
    }))

  it.effect("counts clients by transport, events by source, deliveries, bytes, latency and disconnects", () =>
    Effect.gen(function*() {
      const before = yield* scrape()
      const a = yield* connect()
      const b = yield* connect()
      const hub = yield* Hub
      yield* hub.broadcast("lib.event", { n: 1 })
      yield* post("/api/v1/events", { type: "http.event", data: { n: 2 } }, auth)
      yield* promise(() => Promise.all([a, b].map((c) => c.until(() => c.events.length === 2))))
      const during = yield* scrape()
      const delta = (name: string, labels: Record<string, string> = {}) =>
        (valueOf(during, name, labels) ?? 0) - (valueOf(before, name, labels) ?? 0)
      expect(delta("hub_clients_connected", { transport: "ws" })).toBe(2)
      expect(delta("hub_connections_opened_total", { transport: "ws" })).toBe(2)
      expect(delta("hub_events_received_total", { source: "library" })).toBe(1)
      expect(delta("hub_events_received_total", { source: "http" })).toBe(1)
      expect(delta("hub_deliveries_total")).toBe(4)
      expect(delta("hub_written_bytes_total")).toBeGreaterThan(4 * 40)
      const latency = during.families.get("hub_delivery_latency_seconds")!
      expect(latency.type).toBe("HISTOGRAM")
      expect(Number(latency.metrics[0]!.count)).toBeGreaterThanOrEqual(2)
      expect(Number(latency.metrics[0]!.sum)).toBeGreaterThan(0)

      a.ws.close()
      yield* promise(() => a.closed)
      const after = yield* eventually(scrape(), (s) =>
        valueOf(s, "hub_clients_connected", { transport: "ws" }) ===
          valueOf(before, "hub_clients_connected", { transport: "ws" })! + 1)
      expect(
        (valueOf(after, "hub_disconnects_total", { reason: "client_closed" }) ?? 0) -
          (valueOf(before, "hub_disconnects_total", { reason: "client_closed" }) ?? 0)
      ).toBe(1)
    }))

  it.effect("counts an SSE client under transport sse", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      const before = valueOf(yield* scrape(), "hub_clients_connected", { transport: "sse" })
      expect(before).toBe(0)
      const controller = new AbortController()
      yield* Effect.addFinalizer(() => Effect.sync(() => controller.abort()))
      const response = yield* promise(() => fetch(`${base}/api/v1/sse/events`, { signal: controller.signal }))
      expect(response.status).toBe(200)
      yield* eventually(scrape(), (s) => valueOf(s, "hub_clients_connected", { transport: "sse" }) === 1)
      controller.abort()
      yield* eventually(scrape(), (s) => valueOf(s, "hub_clients_connected", { transport: "sse" }) === 0)
    }))

  it.effect("labels at most METRICS_MAX_EVENT_TYPES event types; the rest are counted as other", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      for (let i = 0; i < 10; i++) yield* hub.broadcast(`many.type${i}`, {})
      const scraped = yield* scrape()
      const types = scraped.families.get("hub_events_broadcast_total")!.metrics.map((m) => m.labels!.event_type)
      expect(types.length).toBeLessThanOrEqual(4)
      expect(types).toContain("other")
    }))

  it.effect("has the process metrics from prom-client's defaults", () =>
    Effect.gen(function*() {
      const scraped = yield* scrape()
      for (const name of ["process_cpu_seconds_total", "process_resident_memory_bytes", "nodejs_eventloop_lag_seconds"]) {
        expect(scraped.families.has(name), name).toBe(true)
      }
    }))
})

const origin = "https://app.example.com"

layer(
  hubLayer({ sendBuffer: 8, writeTimeout: Duration.seconds(30), security: security({ allowedOrigins: [origin] }) }),
  { excludeTestServices: true }
)("GET /metrics for Prometheus: refusals and kicks", (it) => {
  it.effect("counts refused connections by reason and slow-consumer kicks", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const url = yield* wsUrl
      const before = yield* scrape()
      const delta = (after: Scrape, name: string, labels: Record<string, string> = {}) =>
        (valueOf(after, name, labels) ?? 0) - (valueOf(before, name, labels) ?? 0)
      // A connection refused (a foreign origin), and a request refused (a malformed pattern) on an open one.
      const refused = yield* promise(() =>
        TestClient.connect(url, { headers: { origin: "https://evil.example.com" } }).then(
          () => "open",
          (error: Error) => error.message
        )
      )
      expect(refused).toBe("HTTP 403")
      const fast = yield* connect()
      const error = yield* promise(() => fast.request({ action: "subscribe", event_types: ["a..b"] }, "hub.error"))
      expect(error.data.code).toBe("invalid_pattern")
      // A client that stops reading, while events of 64 KB come: dropped once its send buffer (8) is full.
      const slow = yield* connect()
      ;(slow.ws as any)._socket.pause()
      const payload = "x".repeat(64 * 1024)
      const count = 200
      for (let seq = 0; seq < count; seq++) {
        yield* hub.broadcast("backtest.completed", { seq, payload })
        yield* promise(() => fast.until(() => fast.events.length === seq + 1, `event ${seq}`))
      }
      const after = yield* eventually(scrape(), (s) => delta(s, "hub_slow_consumer_kicks_total") > 0)
      expect(delta(after, "hub_slow_consumer_kicks_total")).toBe(1)
      expect(delta(after, "hub_disconnects_total", { reason: "slow_consumer" })).toBe(1)
      expect(delta(after, "hub_connections_refused_total", { reason: "origin_refused" })).toBe(1)
      expect(delta(after, "hub_requests_refused_total", { reason: "invalid_pattern" })).toBe(1)
      expect(delta(after, "hub_history_events")).toBe(count)
      ;(slow.ws as any)._socket.resume()
    }))
})

layer(hubLayer({ security: security({ connectionRate: 1, connectionBurst: 1 }) }), { excludeTestServices: true })(
  "refusals in the Prometheus metrics",
  (it) => {
    it.effect("a handshake refused is a refused connection; a refused subscribe, a refused request", () =>
      Effect.gen(function*() {
        const client = yield* connect()
        // The burst of one is spent: the next handshake from this address is refused (429).
        const url = yield* wsUrl
        const refused = yield* promise(() => TestClient.connect(url).then(() => "opened", (error: Error) => error.message))
        expect(refused).toBe("HTTP 429")
        const reply = yield* promise(() =>
          client.request({ action: "subscribe", event_types: ["bad*pattern"] }, "hub.error")
        )
        expect(reply.data.code).toBe("invalid_pattern")
        const scraped = yield* scrape()
        expect(valueOf(scraped, "hub_connections_refused_total", { reason: "connection_rate_limited" })).toBe(1)
        expect(valueOf(scraped, "hub_requests_refused_total", { reason: "invalid_pattern" })).toBe(1)
        const requests = scraped.families.get("hub_requests_refused_total")!.metrics.map((m) => m.labels!.reason)
        expect(requests).not.toContain("connection_rate_limited")
        const connections = scraped.families.get("hub_connections_refused_total")!.metrics.map((m) => m.labels!.reason)
        expect(connections).not.toContain("invalid_pattern")
      }))
  }
)

describe("RabbitMQ metrics", () => {
  it.live("shows the consumer up, and counts consumed and rejected messages", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const names = uniqueNames("prometheus")
      yield* Effect.addFinalizer(() =>
        Effect.promise(() => publisher.cleanup({ exchange: names.exchange, queues: [names.queue] }))
      )
      yield* Effect.gen(function*() {
        yield* consuming
        yield* promise(() => publisher.publish(names.exchange, "rabbit.event", { n: 1 }))
        yield* promise(() => publisher.publish(names.exchange, "rabbit.bad", "not json"))
        const scraped = yield* eventually(
          scrape(),
          (s) =>
            (valueOf(s, "hub_rabbitmq_messages_rejected_total") ?? 0) >= 1 &&
            (valueOf(s, "hub_rabbitmq_messages_consumed_total") ?? 0) >= 1
        )
        expect(valueOf(scraped, "hub_rabbitmq_up")).toBe(1)
        expect(valueOf(scraped, "hub_events_received_total", { source: "rabbitmq" })).toBe(1)
        expect(valueOf(scraped, "hub_rabbitmq_connections_total")).toBe(1)
        expect(valueOf(scraped, "hub_rabbitmq_reconnects_total")).toBe(0)
      }).pipe(Effect.provide(hubWithSource({ exchange: names.exchange, queue: names.queue })))
    }))

  it.live("while the consumer is not consuming: /health/ready is 503 and hub_rabbitmq_up is 0", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const proxy = yield* tcpProxy
      const names = uniqueNames("ready")
      yield* Effect.addFinalizer(() =>
        Effect.promise(() => publisher.cleanup({ exchange: names.exchange, queues: [names.queue] }))
      )
      yield* Effect.gen(function*() {
        yield* consuming
        expect((yield* get("/health/ready")).status).toBe(200)
        yield* promise(() => proxy.cut())
        const notReady = yield* eventually(get("/health/ready"), (response) => response.status === 503)
        expect(notReady.body.checks.rabbitmq.status).toBe("down")
        expect(valueOf(yield* scrape(), "hub_rabbitmq_up")).toBe(0)
        expect((yield* get("/health/live")).status).toBe(200)
        yield* promise(() => proxy.restore())
        yield* eventually(get("/health/ready"), (response) => response.status === 200)
        const scraped = yield* eventually(scrape(), (s) => valueOf(s, "hub_rabbitmq_up") === 1)
        expect(valueOf(scraped, "hub_rabbitmq_reconnects_total")).toBeGreaterThanOrEqual(1)
      }).pipe(Effect.provide(hubWithSource({ ...names, url: Option.some(Redacted.make(proxy.url)) })))
    }))
})
