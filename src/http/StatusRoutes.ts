/**
 * What operators and orchestrators read: `/health` (components), `/health/live`
 * (the process answers HTTP), `/health/ready` (it accepts clients and consumes
 * RabbitMQ where configured), and `/metrics` in JSON or in Prometheus's format.
 */
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import { Effect, Option } from "effect"
import { AggregatorRegistry } from "prom-client"
import * as Aggregate from "../host/Aggregate.js"
import { HostView } from "../host/HostView.js"
import { Hub } from "../hub/Hub.js"
import { Health, type HealthReport } from "../ops/Health.js"
import { HubMetrics } from "../ops/Metrics.js"
import * as Prometheus from "./Prometheus.js"

/** The host's view when this process is one worker of several (`HUB_WORKERS`); none when it is the whole hub. */
const hostOfWorkers = Effect.map(
  Effect.serviceOption(HostView),
  Option.filter((host) => host.workers > 1)
)

export const healthRoutes = Effect.gen(function*() {
  const health = yield* Health
  const host = yield* hostOfWorkers
  // With workers, every worker's report, each check at its worst.
  const report: Effect.Effect<HealthReport & { workers?: unknown }> = Option.match(host, {
    onNone: () => health.report,
    onSome: (host) => Effect.map(host.gather("health"), Aggregate.health)
  })
  if (Option.isSome(host)) yield* host.value.answer("health", health.report)
  const healthRoute = Effect.map(report, (report) =>
    HttpServerResponse.jsonUnsafe(report, { status: report.status === "unavailable" ? 503 : 200 }))
  const liveRoute = Effect.succeed(HttpServerResponse.jsonUnsafe({ status: "ok" }))
  const readyRoute = Effect.map(report, (report) => {
    const notReady = Object.entries(report.checks).filter(([, check]) =>
      check.status !== "up" && check.status !== "disabled"
    )
    return HttpServerResponse.jsonUnsafe(
      notReady.length === 0 ? { status: "ready" } : { status: "not_ready", checks: Object.fromEntries(notReady) },
      { status: notReady.length === 0 ? 200 : 503 }
    )
  })
  return [
    HttpRouter.route("GET", "/health", healthRoute),
    HttpRouter.route("GET", "/health/live", liveRoute),
    HttpRouter.route("GET", "/health/ready", readyRoute)
  ]
})

export const metricsRoutes = Effect.gen(function*() {
  const hub = yield* Hub
  const metrics = yield* HubMetrics
  const prometheus = yield* Prometheus.make
  const host = yield* hostOfWorkers

  const local = Effect.gen(function*() {
    const { sources, ...websocketCounters } = yield* metrics.snapshot
    const memory = process.memoryUsage()
    return {
      websocket: {
        connected_clients: yield* hub.clientCount,
        connected_clients_by_transport: yield* hub.clientCountByTransport,
        ...websocketCounters
      },
      ...sources,
      process: { rss_bytes: memory.rss, heap_used_bytes: memory.heapUsed, uptime_seconds: process.uptime() }
    }
  })

  const { json, prometheusText } = yield* Option.match(host, {
    onNone: () => Effect.succeed({ json: local, prometheusText: prometheus.render }),
    onSome: (host) =>
      Effect.gen(function*() {
        yield* host.answer("metrics", local)
        yield* host.answer("prometheus", prometheus.json)
        return {
          // The workers' counters summed; their processes side by side.
          json: Effect.map(host.gather("metrics"), (reports) => ({
            ...(Aggregate.sum(reports.map(({ report }) => report)) as object),
            process: undefined,
            host: {
              workers: host.workers,
              reporting: reports.length,
              pids: reports.map(({ pid }) => pid),
              rss_bytes: Aggregate.sum(reports.map(({ report }) => (report as { process: { rss_bytes: number } }).process.rss_bytes))
            },
            workers: reports.map(({ pid, report, worker }) => {
              const one = report as { websocket: { connected_clients: number }; process: unknown }
              return { worker, pid, connected_clients: one.websocket.connected_clients, process: one.process }
            })
          })),
          // prom-client's own aggregation of its registries (counters and gauges summed, per metric's aggregator).
          prometheusText: Effect.flatMap(host.gather("prometheus"), (reports) =>
            Effect.promise(() =>
              AggregatorRegistry.aggregate(reports.map(({ report }) => report as object)).metrics()
            ))
        }
      })
  })
  const prometheusRoute = Effect.map(prometheusText, (text) =>
    HttpServerResponse.text(text, { contentType: prometheus.contentType }))

  const metricsRoute = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    if (Prometheus.wantsPrometheus(request.headers["accept"])) return yield* prometheusRoute
    return HttpServerResponse.jsonUnsafe(yield* json)
  })
  return [
    HttpRouter.route("GET", "/metrics", metricsRoute),
    HttpRouter.route("GET", "/metrics/prometheus", prometheusRoute)
  ]
})
