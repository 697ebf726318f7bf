/**
 * Traces over OTLP/HTTP, configured by the standard OpenTelemetry variables:
 * with `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
 * set, spans are batched and exported (JSON over HTTP, `http/json`) with
 * `OTEL_SERVICE_NAME` (default `effect-event-hub`) as the service. Unset (or
 * `OTEL_SDK_DISABLED=true`), Effect's tracer is turned off: `withSpan` then
 * costs next to nothing (no span objects at all).
 *
 * A W3C `traceparent` on an AMQP message or on `POST /api/v1/events` makes
 * the hub's span a child of the publisher's span (`parentFrom`); published
 * messages carry the current span's (`headersFor`).
 */
import * as Headers from "effect/http/Headers"
import * as HttpTraceContext from "effect/http/HttpTraceContext"
import { Config, Duration, Effect, Layer, Option, References, Schema, type Tracer } from "effect"
import * as FetchHttpClient from "effect/http/FetchHttpClient"
import * as OtlpSerialization from "effect/observability/OtlpSerialization"
import * as OtlpTracer from "effect/observability/OtlpTracer"

export interface TracingSettings {
  /** Where spans are POSTed (the full URL, ending in `/v1/traces`). */
  readonly url: string
  readonly serviceName: string
  /** Longest wait before a batch of spans is sent (`OTEL_BSP_SCHEDULE_DELAY`, default 5 s). */
  readonly exportDelayMillis?: number
  /** Most spans in one export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 1000). */
  readonly maxBatchSize?: number
  /** Sent with every export (`OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`: `k=v,k2=v2`). */
  readonly headers?: Record<string, string>
  /** Longest wait for the last spans to be exported when the layer is released (default `shutdownFlushMillis`). */
  readonly shutdownFlushMillis?: number
}

/**
 * How long a shutdown waits for the last spans to reach the collector. A collector that answers takes a few
 * milliseconds; one that cannot be reached would hold the shutdown through the exporter's retries (up to the SDK's
 * 3 s), and only after requests or events, which make spans: issue 23's slow stops after a POST, with nothing logged.
 * Past this the last spans are dropped.
 */
export const shutdownFlushMillis = 300

/** `k=v,k2=v2`, URL-encoded values, as the OpenTelemetry SDKs read `OTEL_EXPORTER_OTLP_HEADERS`. */
const headersConfig = (name: string) => Config.option(Config.Record(Schema.String, Schema.StringFromUriComponent, name))

/**
 * The exporter's settings from the standard variables: the traces endpoint as is, or the base endpoint +
 * `/v1/traces`; the batch delay and size; the headers.
 */
export const settingsFromEnv: Config.Config<Option.Option<TracingSettings>> = Config.all({
  traces: Config.option(Config.String("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
  base: Config.option(Config.String("OTEL_EXPORTER_OTLP_ENDPOINT")),
  serviceName: Config.String("OTEL_SERVICE_NAME").pipe(Config.withDefault("effect-event-hub")),
  disabled: Config.Boolean("OTEL_SDK_DISABLED").pipe(Config.withDefault(false)),
  delay: Config.option(Config.Int("OTEL_BSP_SCHEDULE_DELAY")),
  batch: Config.option(Config.Int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")),
  tracesHeaders: headersConfig("OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
  baseHeaders: headersConfig("OTEL_EXPORTER_OTLP_HEADERS")
}).pipe(Config.map(({ base, baseHeaders, batch, delay, disabled, serviceName, traces, tracesHeaders }) => {
  const nonEmpty = (value: Option.Option<string>) => Option.filter(value, (text) => text.trim() !== "")
  const url = Option.orElse(
    nonEmpty(traces),
    () => Option.map(nonEmpty(base), (endpoint) => `${endpoint.replace(/\/+$/, "")}/v1/traces`)
  )
  const headers = Option.getOrUndefined(Option.orElse(tracesHeaders, () => baseHeaders))
  return disabled ? Option.none() : Option.map(url, (url): TracingSettings => ({
    url,
    serviceName,
    ...(Option.isSome(delay) ? { exportDelayMillis: delay.value } : {}),
    ...(Option.isSome(batch) ? { maxBatchSize: batch.value } : {}),
    ...(headers === undefined ? {} : { headers })
  }))
}))

/**
 * Exports spans to `settings.url` with Effect's own OTLP exporter (JSON over `fetch`); the batch is flushed when the
 * layer is released, for a bounded time.
 */
export const layerOtlp = (settings: TracingSettings) =>
  OtlpTracer.layer({
    url: settings.url,
    resource: { serviceName: settings.serviceName },
    shutdownTimeout: Duration.millis(settings.shutdownFlushMillis ?? shutdownFlushMillis),
    headers: settings.headers,
    maxBatchSize: settings.maxBatchSize,
    ...(settings.exportDelayMillis === undefined ? {} : { exportInterval: Duration.millis(settings.exportDelayMillis) })
  }).pipe(Layer.provide([OtlpSerialization.layerJson, FetchHttpClient.layer]))

/** From the environment: OTLP export when an endpoint is set, no tracing at all otherwise. */
export const layer: Layer.Layer<never, never> = Layer.unwrap(
  Effect.map(Effect.orDie(settingsFromEnv), (settings) =>
    Option.match(settings, {
      onNone: () => Layer.succeed(References.TracerEnabled, false),
      onSome: (settings) =>
        Layer.merge(
          layerOtlp(settings),
          Layer.effectDiscard(Effect.logInfo("exporting traces").pipe(Effect.annotateLogs({
            endpoint: settings.url,
            service_name: settings.serviceName
          })))
        )
    }))
)

/** AMQP header values as text (amqplib gives strings, or Buffers for byte arrays). */
const textHeaders = (headers: Record<string, unknown> | undefined): Record<string, string> => {
  const text: Record<string, string> = {}
  if (headers === undefined) return text
  for (const name of ["traceparent", "tracestate", "b3"]) {
    const value = headers[name]
    if (typeof value === "string") text[name] = value
    else if (Buffer.isBuffer(value)) text[name] = value.toString("utf8")
  }
  return text
}

/** The publisher's span named by a W3C `traceparent` (or `b3`) header, if any. */
export const parentFrom = (headers: Record<string, unknown> | undefined): Tracer.ExternalSpan | undefined =>
  Option.getOrUndefined(HttpTraceContext.fromHeaders(Headers.fromInput(textHeaders(headers))))

/** The headers that make the receiver's span a child of the current one (none without a span). */
export const headersFor: Effect.Effect<Record<string, string>> = Effect.map(
  Effect.option(Effect.currentSpan),
  (span) => Option.match(span, { onNone: () => ({}), onSome: (span) => ({ ...HttpTraceContext.toHeaders(span) }) })
)

/**
 * The span of one event entering the hub: a child of its publisher's span when its headers name one, with the
 * event's type; the hub adds its id and recipients (Hub.ts).
 */
export const eventSpan = (
  source: string,
  type: string,
  headers?: Record<string, unknown>
) =>
<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  whenTracing(effect, () =>
    Effect.withSpan(effect, "hub.event", {
      kind: source === "rabbitmq" ? "consumer" : "internal",
      parent: parentFrom(headers),
      attributes: { "hub.event.type": type, "hub.event.source": source },
      captureStackTrace: false
    }))

/**
 * `traced()` while tracing is on, `effect` as it is otherwise: even a no-op span costs (`withSpan` captures a stack
 * trace unless told not to, and allocates), which the fan-out benchmark measured on every event.
 */
export const whenTracing = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  traced: () => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) => fiber.getRef(References.TracerEnabled) ? traced() : effect)
