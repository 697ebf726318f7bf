/**
 * The standalone service's layers: every part, configured from the
 * environment. `main.ts` launches them (in each worker, with `HUB_WORKERS`).
 *
 * Layers are released in the reverse order of their construction, so on
 * shutdown readiness turns 503 first and clients are left alone for
 * `SHUTDOWN_DRAIN_DELAY` (Shutdown.ts), then the RabbitMQ consumer stops
 * (deliveries not yet acknowledged go back to the queue), then the HTTP server
 * stops accepting connections and closes every client with 1001, then the hub
 * itself.
 */
import { Layer } from "effect"
import { HubConfig, layerEnv, RabbitMqConfig } from "./config/Config.js"
import { HostView } from "./host/HostView.js"
import * as HttpServer from "./http/Server.js"
import * as Hub from "./hub/Hub.js"
import * as Logging from "./ops/Logging.js"
import * as Shutdown from "./ops/Shutdown.js"
import * as Tracing from "./ops/Tracing.js"
import { Publisher } from "./rabbitmq/Publisher.js"
import * as RabbitMqSource from "./rabbitmq/Source.js"

export const MainLive = Shutdown.layerDrain.pipe(
  // Built last, so released first: the drain comes before anything stops.
  Layer.provideMerge(RabbitMqSource.layer.pipe(Layer.provideMerge(HttpServer.layer))),
  Layer.provide(Hub.layerLive),
  // With HUB_WORKERS, /metrics, /health and the dashboard answer for every worker of the host.
  Layer.provide(HostView.layer),
  // Clients' `publish` requests and POST /api/v1/events go through the exchange; closed after the HTTP server.
  Layer.provide(Publisher.layer),
  // Built before the rest, so released after it: a second signal is logged, not fatal, until the shutdown is over.
  Layer.provide(Shutdown.layer),
  // RabbitMqConfig reaches the hub too: in stream mode its history uses stream ids from the start.
  Layer.provide(Layer.merge(HubConfig.fromEnv, RabbitMqConfig.fromEnv)),
  Layer.provide(Logging.layer),
  // Set but empty is a value (RABBITMQ_URL="" turns the source off), for every setting read above and below.
  Layer.provide(layerEnv),
  // OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set; otherwise Effect's tracer is off. Flushed last.
  Layer.provide(Tracing.layer)
)
