/** The real hub on a free port, for `layer(...)`, and HTTP requests to it. */
import * as PlatformHttpServer from "effect/http/HttpServer"
import { Effect, Layer, Option, References, Schedule } from "effect"
import { request as httpRequest } from "node:http"
import {
  defaultSecurity,
  HubConfig,
  type HubSettings,
  RabbitMqConfig,
  type SecuritySettings
} from "../../src/config/Config.js"
import * as HttpServer from "../../src/http/Server.js"
import * as SseServer from "../../src/http/SseServer.js"
import * as WebSocketServer from "../../src/http/WebSocketServer.js"
import type { HubHistory } from "../../src/hub/History.js"
import * as Hub from "../../src/hub/Hub.js"
import type { Health } from "../../src/ops/Health.js"
import type { HubMetrics } from "../../src/ops/Metrics.js"
import { Publisher } from "../../src/rabbitmq/Publisher.js"
import { testLogging } from "./heldLogs.js"

/**
 * Security settings for tests: the defaults with the limits lifted that every
 * test would otherwise hit (all clients come from 127.0.0.1, some tests send
 * bursts of requests). Tests of the limits set their own (`security(...)`).
 */
export const testSecurity: SecuritySettings = {
  ...defaultSecurity,
  maxConnectionsPerIp: 100_000,
  maxConnections: 100_000,
  messageRate: 100_000,
  messageBurst: 100_000,
  connectionRate: 100_000,
  connectionBurst: 100_000,
  resumeRate: 100_000,
  resumeRatePerIp: 100_000
}

/** Security settings for a test: `testSecurity` with `overrides`. */
export const security = (overrides: Partial<SecuritySettings>): SecuritySettings => ({ ...testSecurity, ...overrides })

/** The publisher of a hub without a broker: clients' `publish` fails (`publish_failed`), POSTs are broadcast. */
export const noBroker = Publisher.layer.pipe(Layer.provide(RabbitMqConfig.layer({ url: Option.none() })))

/**
 * The hub, its HTTP server on 127.0.0.1 with a free port, and every service, for `layer(...)`. Without a RabbitMQ
 * source unless `hub` is `Hub.layerLive` (which reads `RabbitMqConfig`: see `hubWithSource`); `publisher` is where
 * clients' `publish` and POSTs go (no broker by default).
 */
export const hubLayer = <R = never, P = never>(
  overrides: Partial<HubSettings> = {},
  hub: Layer.Layer<Hub.Hub | Hub.HubClients | HubHistory | HubMetrics | Health, never, HubConfig | R> = Hub.layerLocal,
  publisher: Layer.Layer<Publisher, never, P> = noBroker as Layer.Layer<Publisher, never, never>
) =>
  Layer.mergeAll(HttpServer.layerServe, WebSocketServer.layer, SseServer.layer).pipe(
    Layer.provideMerge(HttpServer.layerListen),
    Layer.provideMerge(hub),
    Layer.provideMerge(publisher),
    Layer.provideMerge(HubConfig.layer({ host: "127.0.0.1", port: 0, security: testSecurity, ...overrides })),
    // As the service runs without OTEL_EXPORTER_OTLP_ENDPOINT (Tracing.ts): requests take the path without spans.
    Layer.provide(Layer.succeed(References.TracerEnabled, false)),
    // Held, and shown for a failing test; TEST_LOG_LEVEL=debug shows them as they come (heldLogs.ts).
    Layer.provide(testLogging)
  )

/** `http://127.0.0.1:PORT` of the server under test. */
export const baseUrl = Effect.map(PlatformHttpServer.HttpServer, (server) => {
  const address = server.address
  if (address._tag === "UnixPathAddress") throw new Error("expected a TCP address")
  return `http://127.0.0.1:${address.port}`
})

export const wsUrl = Effect.map(baseUrl, (url) => `${url.replace("http", "ws")}/api/v1/ws/events`)

/** Polls `effect` every 10 ms until `condition` holds on its result (at most 10 s). */
export const eventually = <A, E, R>(effect: Effect.Effect<A, E, R>, condition: (a: A) => boolean) =>
  Effect.filterOrFail(effect, condition, () => "not yet" as const).pipe(
    Effect.retry({ schedule: Schedule.spaced("10 millis"), while: (error) => error === "not yet" }),
    Effect.timeoutOrElse({ duration: "10 seconds", orElse: () => Effect.fail(new Error("condition not met within 10 s")) })
  )

export const promise = <A>(thunk: () => Promise<A>) => Effect.promise(thunk)

/** POSTs JSON (or a raw string) and returns status and parsed body. */
export const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  Effect.flatMap(baseUrl, (url) =>
    Effect.promise(async () => {
      const response = await fetch(`${url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: typeof body === "string" ? body : JSON.stringify(body)
      })
      return { status: response.status, body: await response.json() as any }
    }))

export const get = (path: string) =>
  Effect.flatMap(baseUrl, (url) =>
    Effect.promise(async () => {
      const response = await fetch(`${url}${path}`)
      const text = await response.text()
      return { status: response.status, body: text.startsWith("{") ? JSON.parse(text) : text }
    }))


/**
 * POSTs a body without `Content-Length` (`Transfer-Encoding: chunked`): the given chunks, or chunks from `next`
 * until the answer arrives (an endless body). Resolves with the answer's status and text.
 */
export const postChunked = (
  url: string,
  headers: Record<string, string>,
  chunks: ReadonlyArray<string> | (() => string)
): Promise<{ status: number; body: string }> =>
  new Promise((resolve, reject) => {
    let answered = false
    const req = httpRequest(url, { method: "POST", headers: { "content-type": "application/json", ...headers } }, (res) => {
      answered = true
      let body = ""
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => (body += chunk))
      res.on("end", () => {
        req.destroy()
        resolve({ status: res.statusCode ?? 0, body })
      })
    })
    // The hub may close the connection once it has answered, before the body's end.
    req.on("error", (error) => answered || reject(error))
    if (typeof chunks !== "function") {
      for (const chunk of chunks) req.write(chunk)
      req.end()
      return
    }
    const pump = () => {
      while (!answered && !req.destroyed && req.write(chunks())) {}
      if (!answered && !req.destroyed) req.once("drain", pump)
    }
    pump()
  })
