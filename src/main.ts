/**
 * The standalone service: every layer, configured from the environment,
 * launched until SIGTERM/SIGINT.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Layer } from "effect"
import { HubConfig, RabbitMqConfig } from "./Config.js"
import * as HttpServer from "./http/Server.js"
import * as Hub from "./Hub.js"
import * as Logging from "./Logging.js"
import * as RabbitMqSource from "./rabbitmq/Source.js"
import * as Shutdown from "./Shutdown.js"

const MainLive = Layer.mergeAll(HttpServer.layer, RabbitMqSource.layer, Shutdown.layer).pipe(
  Layer.provide(Hub.layerLive),
  Layer.provide(Layer.merge(HubConfig.fromEnv, RabbitMqConfig.fromEnv)),
  Layer.provide(Logging.layer)
)

NodeRuntime.runMain(Layer.launch(MainLive), { disablePrettyLogger: true })
