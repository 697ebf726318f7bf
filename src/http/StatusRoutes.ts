/**
 * What operators and orchestrators read: `/health` (components), `/health/live`
 * (the process answers HTTP), `/health/ready` (it accepts clients and consumes
 * RabbitMQ where configured), and `/metrics` in JSON or in Prometheus's format.
 */
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import { Effect } from "effect"
import { Hub } from "../hub/Hub.js"
import { Health } from "../ops/Health.js"
import { HubMetrics } from "../ops/Metrics.js"
import * as Prometheus from "./Prometheus.js"

export const healthRoutes = Effect.map(Health, (health) => {
  const healthRoute = Effect.map(health.report, (report) =>
    HttpServerResponse.jsonUnsafe(report, { status: report.status === "unavailable" ? 503 : 200 }))
  const liveRoute = Effect.succeed(HttpServerResponse.jsonUnsafe({ status: "ok" }))
  const readyRoute = Effect.map(health.report, (report) => {
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
  const prometheusRoute = Effect.map(prometheus.render, (text) =>
    HttpServerResponse.text(text, { contentType: prometheus.contentType }))

  const metricsRoute = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    if (Prometheus.wantsPrometheus(request.headers["accept"])) return yield* prometheusRoute
    const { sources, ...websocketCounters } = yield* metrics.snapshot
    const memory = process.memoryUsage()
    return HttpServerResponse.jsonUnsafe({
      websocket: {
        connected_clients: yield* hub.clientCount,
        connected_clients_by_transport: yield* hub.clientCountByTransport,
        ...websocketCounters
      },
      ...sources,
      process: { rss_bytes: memory.rss, heap_used_bytes: memory.heapUsed, uptime_seconds: process.uptime() }
    })
  })
  return [
    HttpRouter.route("GET", "/metrics", metricsRoute),
    HttpRouter.route("GET", "/metrics/prometheus", prometheusRoute)
  ]
})
