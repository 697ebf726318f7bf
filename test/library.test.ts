/**
 * Embedding: another Effect program composes the hub's Layers from the
 * package entry and broadcasts its own events (the seed's hub.BroadcastEvent).
 */
import { HttpServer as PlatformHttpServer } from "@effect/platform"
import { expect, it } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Option, Schema } from "effect"
import { HttpServerLive, Hub, HubConfig, HubLive, Protocol, RabbitMqConfig, RabbitMqSourceLive } from "../src/index.js"
import { promise, TestClient } from "./support.js"

const Embedded = Layer.mergeAll(HttpServerLive, RabbitMqSourceLive).pipe(
  Layer.provideMerge(HubLive),
  Layer.provide(HubConfig.layer({ host: "127.0.0.1", port: 0 })),
  Layer.provide(RabbitMqConfig.layer({ url: Option.none() })),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

it.scopedLive("an embedding program broadcasts through the hub's layers", () =>
  Effect.gen(function*() {
    const hub = yield* Hub
    const server = yield* PlatformHttpServer.HttpServer
    const port = server.address._tag === "TcpAddress" ? server.address.port : 0
    const client = yield* Effect.acquireRelease(
      promise(() => TestClient.connect(`ws://127.0.0.1:${port}/api/v1/ws/events`)),
      (client) => Effect.sync(() => client.close())
    )
    expect(Schema.is(Protocol.EventType)("custom.event")).toBe(true)
    const recipients = yield* hub.broadcast("custom.event", { message: "Something happened", value: 42 })
    expect(recipients).toBe(1)
    yield* promise(() => client.until(() => client.events.length === 1))
    expect(client.events[0]).toMatchObject({ type: "custom.event", data: { message: "Something happened", value: 42 } })
  }).pipe(Effect.provide(Embedded)))
