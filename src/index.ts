/**
 * The library entry: the layers, the hub service and the wire protocol, for
 * Effect programs that embed the hub.
 */
export { allows, Auth, AuthError, type Principal, tokenOf } from "./security/Auth.js"
export * as Client from "./connection/Connection.js"
export {
  defaultEventTypeMap,
  defaultQueueName,
  goDuration,
  HubConfig,
  defaultSecurity,
  type HubSettings,
  logSettings,
  parseGoDuration,
  RabbitMqConfig,
  type RabbitMqSettings,
  type SecuritySettings
} from "./config/Config.js"
export { Health } from "./ops/Health.js"
export * as HttpServer from "./http/Server.js"
export { UpgradeRoutes } from "./http/UpgradeRoutes.js"
export * as WebSocketServer from "./http/WebSocketServer.js"
export { type ClientId, type Connection, defaultSubscription, Hub, HubClients, layerLive as HubLive } from "./hub/Hub.js"
export { Limits, TokenBucket } from "./security/Limits.js"
export { type BroadcastEvent, InvalidSince, type Resume } from "./hub/Hub.js"
export { History, type HistoryEntry, HubHistory, streamId } from "./hub/History.js"
export * as Logging from "./ops/Logging.js"
export { HubMetrics } from "./ops/Metrics.js"
export * as Protocol from "./protocol/Protocol.js"
export { Publisher, PublishError } from "./rabbitmq/Publisher.js"
export * as RabbitMqSource from "./rabbitmq/Source.js"
export * as Shutdown from "./ops/Shutdown.js"
export * as Topic from "./protocol/Topic.js"
