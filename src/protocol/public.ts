/**
 * The wire contract as the package exports it: the schemas and types a
 * program (or a client) needs to speak to the hub. Encoding helpers stay
 * internal.
 */
export {
  Authenticate,
  ClientRequest,
  CloseCode,
  DisconnectReason,
  ErrorCode,
  ErrorData,
  GapReason,
  EventPattern,
  EventType,
  HistoryGapData,
  HubMessageType,
  Join,
  Leave,
  LiveData,
  Publish,
  ReservedPrefix,
  ServerMessage,
  SinceParameter,
  Subscribe,
  SubscriptionData,
  TextPing,
  TextPong,
  Unsubscribe
} from "./Protocol.js"
export { check as checkPattern, matches as patternMatches, type PatternLimits } from "./Topic.js"
