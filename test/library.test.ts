/**
 * Embedding: another Effect program composes the hub's Layers from the
 * package entry and broadcasts its own events (the seed's hub.BroadcastEvent).
 */
import * as PlatformHttpServer from "effect/http/HttpServer"
import { expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Option, Schema, Scope, Stream } from "effect"
import { WebSocket } from "ws"
import {
  HttpServerLive,
  Hub,
  HubConfig,
  HubConnection,
  HubLive,
  Protocol,
  PublisherLive,
  RabbitMqConfig,
  RabbitMqSourceLive,
  SignalsLive
} from "../src/index.js"
import { promise, TestClient } from "./support.js"
import { testLogging } from "./support/heldLogs.js"

const Embedded = Layer.mergeAll(HttpServerLive, RabbitMqSourceLive).pipe(
  Layer.provideMerge(HubLive),
  Layer.provide(PublisherLive),
  Layer.provide(HubConfig.layer({ host: "127.0.0.1", port: 0 })),
  Layer.provide(RabbitMqConfig.layer({ url: Option.none() })),
  Layer.provide(testLogging)
)

it.live("an embedding program broadcasts through the hub's layers", () =>
  Effect.gen(function*() {
    const hub = yield* Hub
    const server = yield* PlatformHttpServer.HttpServer
    const port = server.address._tag !== "UnixPathAddress" ? server.address.port : 0
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

it.live("another Effect service consumes the hub through the client's Layer (HubConnection)", () =>
  Effect.gen(function*() {
    const hub = yield* Hub
    const server = yield* PlatformHttpServer.HttpServer
    const port = server.address._tag !== "UnixPathAddress" ? server.address.port : 0
    const url = `ws://127.0.0.1:${port}/api/v1/ws/events`
    const received = yield* Effect.gen(function*() {
      const connection = yield* HubConnection
      const events = yield* Stream.runCollect(Stream.take(connection.events("custom.#"), 2)).pipe(Effect.forkChild)
      yield* Stream.runDrain(Stream.takeUntil(connection.states, (state) => state === "connected"))
      yield* hub.broadcast("other.event", { n: 0 })
      yield* hub.broadcast("custom.one", { n: 1 })
      yield* hub.broadcast("custom.two", { n: 2 })
      return yield* Fiber.join(events)
    }).pipe(Effect.provide(HubConnection.layer(url, { eventTypes: ["custom.#"], WebSocket })))
    expect(received.map((event) => [event.type, event.data])).toEqual([
      ["custom.one", { n: 1 }],
      ["custom.two", { n: 2 }]
    ])
  }).pipe(Effect.provide(Embedded)))

it.effect("SignalsLive listens to SIGTERM and SIGINT while its scope is open, and no longer once it is closed", () =>
  Effect.gen(function*() {
    const listeners = () => [process.listenerCount("SIGTERM"), process.listenerCount("SIGINT")]
    const before = listeners()
    const scope = yield* Scope.make()
    yield* Layer.buildWithScope(SignalsLive.pipe(Layer.provide(HubConfig.layer())), scope)
    expect(listeners()).toEqual(before.map((count) => count + 1))
    yield* Scope.close(scope, Exit.void)
    expect(listeners()).toEqual(before)
  }))
