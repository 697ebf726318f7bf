/**
 * The library entry: what an Effect program needs to embed the hub. Each
 * export is part of the package's API; internal modules are not exported, so
 * they can change without breaking embedding programs. See docs/library.md.
 */
import { layerEnv } from "./config/Config.js"
import * as HttpServer from "./http/Server.js"
import * as Hub from "./hub/Hub.js"
import * as Logging from "./ops/Logging.js"
import * as Shutdown from "./ops/Shutdown.js"
import { Publisher } from "./rabbitmq/Publisher.js"
import * as RabbitMqSource from "./rabbitmq/Source.js"

// --- Layers -----------------------------------------------------------------

/** The hub with its history, metrics and health services; needs `HubConfig` (and `RabbitMqConfig` in stream mode). */
export const HubLive = Hub.layerLive
/**
 * The HTTP server on `HOST:PORT`: the WebSocket and SSE endpoints, `/health` (and `/live`, `/ready`), `/metrics`,
 * `POST /api/v1/events`, `/dashboard`. Needs a `Publisher` (`PublisherLive`; without `RABBITMQ_URL` it publishes
 * nothing, and clients' `publish` is refused).
 */
export const HttpServerLive = HttpServer.layer
/** The RabbitMQ source: consumes the exchange and broadcasts through the hub (nothing when `RABBITMQ_URL` is empty). */
export const RabbitMqSourceLive = RabbitMqSource.layer
/** The logger configured by `LOG_LEVEL` and `LOG_FORMAT`. */
export const LoggingLive = Logging.layer
/**
 * The first step of a graceful shutdown, for any program behind a load balancer: readiness turns 503, and clients
 * are served for `SHUTDOWN_DRAIN_DELAY` before anything stops. Provide it last (released first). See docs/library.md.
 */
export const DrainLive = Shutdown.layerDrain
/**
 * Only for a program run by `NodeRuntime.runMain`: a second SIGTERM/SIGINT is logged instead of killing the
 * process mid-shutdown, and the process exits (status 1) if the shutdown outlasts `SHUTDOWN_TIMEOUT`. Provide it
 * first (released last); its signal listeners are removed when its scope closes. See docs/library.md.
 */
export const SignalsLive = Shutdown.layer
/** Publishing to the exchange with confirms: `Publisher.publishEvent`, clients' `publish`, `POST /api/v1/events`. */
export const PublisherLive = Publisher.layer
/**
 * The environment as the service reads it: a variable set to the empty string is a value (`RABBITMQ_URL=""` turns
 * the source off), where Effect 4's default `ConfigProvider` takes it as unset. Provide it below `HubConfig.fromEnv`
 * and `RabbitMqConfig.fromEnv`.
 */
export const EnvConfigLive = layerEnv

// --- Services ---------------------------------------------------------------

/** `Hub`: broadcast an event to the subscribed clients; `HubClients`: what a custom transport registers with. */
export { type BroadcastEvent, type ClientId, type Connection, Hub, HubClients, InvalidSince, type RegisterOptions } from "./hub/Hub.js"
/** The events kept for resumes (read-only use: `size`, `oldest`, `newest`). */
export { type History, type HistoryEntry, HubHistory } from "./hub/History.js"
/** Publishes to the exchange with publisher confirms (clients' `publish`). */
export { Publisher, PublishError } from "./rabbitmq/Publisher.js"
/** The hub's counters (`GET /metrics`) and component health (`GET /health`). */
export { HubMetrics } from "./ops/Metrics.js"
export { Health, type HealthReport } from "./ops/Health.js"

// --- Configuration ----------------------------------------------------------

/** Settings services, their defaults and environment parsing (`HubConfig.fromEnv`, `HubConfig.layer({...})`). */
export {
  defaultEventTypeMap,
  defaultHubSettings,
  defaultLogSettings,
  defaultRabbitMqSettings,
  defaultSecurity,
  HubConfig,
  type HubSettings,
  RabbitMqConfig,
  type RabbitMqSettings,
  type SecuritySettings
} from "./config/Config.js"

// --- The wire protocol ------------------------------------------------------

/** The schemas and types of the messages between the hub and its clients (see docs/protocol.md). */
export * as Protocol from "./protocol/public.js"

// --- The client library -----------------------------------------------------

/**
 * The hub's own client, for Effect programs that consume another hub: its events as a `Stream`, reconnection by
 * `Schedule`, exactly once across reconnects (also `effect-event-hub/client/effect`). Browsers and plain Node use
 * `effect-event-hub/client` (no Effect inside, see docs/clients.md) and React `effect-event-hub/react`.
 */
export {
  defaultSchedule as clientReconnectSchedule,
  type EffectClientOptions,
  HubConnection,
  type HubConnectionService,
  HubRequestError
} from "./client/effect.js"
