/**
 * The library entry: the layers, the hub service and the wire protocol, for
 * Effect programs that embed the hub.
 */
export { allows, Auth, AuthError, type Principal, tokenOf } from "./Auth.js"
export * as Client from "./Client.js"
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
} from "./Config.js"
export { Health } from "./Health.js"
export * as HttpServer from "./http/Server.js"
export { UpgradeRoutes } from "./http/UpgradeRoutes.js"
export * as WebSocketServer from "./http/WebSocketServer.js"
export { type ClientId, type Connection, defaultSubscription, Hub, layerLive as HubLive } from "./Hub.js"
export { Limits, TokenBucket } from "./Limits.js"
export { type BroadcastEvent, InvalidSince, type Resume } from "./Hub.js"
export { History, type HistoryEntry, streamId } from "./History.js"
export * as Logging from "./Logging.js"
export { HubMetrics } from "./Metrics.js"
export * as Protocol from "./Protocol.js"
export { Publisher, PublishError } from "./rabbitmq/Publisher.js"
export * as RabbitMqSource from "./rabbitmq/Source.js"
export * as Shutdown from "./Shutdown.js"
export * as Topic from "./Topic.js"
