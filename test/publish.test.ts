/**
 * Client-to-server messaging: `{"action":"publish"}` puts a command on the
 * publishers' exchange (the real broker), for the types WS_PUBLISH_TYPES allows.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import type * as amqp from "amqplib"
import { RabbitMqConfig } from "../src/config/Config.js"
import { Publisher } from "../src/rabbitmq/Publisher.js"
import { broker, brokerUrl, connect, eventually, freePort, hubLayer, promise, type TestClient, uniqueNames } from "./support.js"

/** The hub with client publishing on for `command.#`, publishing to `exchange` at `url`. */
const hubPublishingTo = (exchange: string, url = brokerUrl) =>
  hubLayer(
    { clientPublishTypes: ["command.#"] },
    undefined,
    Publisher.layer.pipe(Layer.provide(RabbitMqConfig.layer({ url: Option.some(Redacted.make(url)), exchange })))
  )

/** A queue bound to `exchange` for `command.#` that records what arrives. */
const commandQueue = (exchange: string) =>
  Effect.gen(function*() {
    const { channel } = yield* broker
    const received: Array<amqp.ConsumeMessage> = []
    yield* Effect.promise(async () => {
      await channel.assertExchange(exchange, "topic", { durable: true })
      const { queue } = await channel.assertQueue("", { exclusive: true })
      await channel.bindQueue(queue, exchange, "command.#")
      await channel.consume(queue, (message) => message && received.push(message), { noAck: true })
    })
    yield* Effect.addFinalizer(() => Effect.promise(() => channel.deleteExchange(exchange).catch(() => undefined)))
    return received
  })

const request = (client: TestClient, body: unknown, type: string) => promise(() => client.request(body, type))

describe("client publish", () => {
  it.live("publishes an allowed command to the exchange, with its type as routing key, once confirmed", () =>
    Effect.gen(function*() {
      const { exchange } = uniqueNames("publish")
      const received = yield* commandQueue(exchange)
      yield* Effect.gen(function*() {
        const client = yield* connect()
        const reply = yield* request(
          client,
          { action: "publish", type: "command.optimization.cancel", data: { run_id: "789e0123" } },
          "hub.published"
        )
        expect(reply.data).toEqual({ type: "command.optimization.cancel" })
        // Polled: the broker's delivery to this queue is no frame of the client's, which `client.until` waits on.
        yield* eventually(Effect.sync(() => received.length), (count) => count === 1)
        expect(received[0]!.fields.routingKey).toBe("command.optimization.cancel")
        expect(JSON.parse(received[0]!.content.toString())).toEqual({ run_id: "789e0123" })
        expect(received[0]!.properties.contentType).toBe("application/json")
      }).pipe(Effect.provide(hubPublishingTo(exchange)))
    }))

  it.live("refuses types outside WS_PUBLISH_TYPES and malformed requests, and publishes nothing", () =>
    Effect.gen(function*() {
      const { exchange } = uniqueNames("publish")
      const received = yield* commandQueue(exchange)
      yield* Effect.gen(function*() {
        const client = yield* connect()
        const forbidden = yield* request(client, { action: "publish", type: "backtest.completed", data: {} }, "hub.error")
        expect(forbidden.data.code).toBe("publish_forbidden")
        expect(forbidden.data.message).toContain("command.#")
        const reserved = yield* request(client, { action: "publish", type: "hub.fake", data: {} }, "hub.error")
        expect(reserved.data.code).toBe("invalid_request")
        const notObject = yield* request(client, { action: "publish", type: "command.x", data: [1] }, "hub.error")
        expect(notObject.data).toMatchObject({ code: "invalid_request", message: expect.stringContaining("data") })
        // Then an allowed one: it is the only message that reached the broker.
        yield* request(client, { action: "publish", type: "command.x", data: { n: 1 } }, "hub.published")
        yield* eventually(Effect.sync(() => received.length), (count) => count === 1)
        expect(received.map((message) => message.fields.routingKey)).toEqual(["command.x"])
      }).pipe(Effect.provide(hubPublishingTo(exchange)))
    }))

  it.live("tells the client publish_failed when the broker is unreachable, and keeps serving it", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(() => freePort())
      yield* Effect.gen(function*() {
        const client = yield* connect()
        const failed = yield* request(client, { action: "publish", type: "command.x", data: {} }, "hub.error")
        expect(failed.data.code).toBe("publish_failed")
        expect(failed.data.message).toContain("unavailable")
        client.ws.send("ping")
        yield* promise(() => client.until(() => client.frames.includes("pong"), "pong"))
      }).pipe(Effect.provide(hubPublishingTo("unused", `amqp://guest:guest@127.0.0.1:${port}/`)))
    }))

  it.live("is off by default: publish_forbidden", () =>
    Effect.gen(function*() {
      const client = yield* connect()
      const refused = yield* request(client, { action: "publish", type: "command.x", data: {} }, "hub.error")
      expect(refused.data).toMatchObject({ code: "publish_forbidden", message: expect.stringContaining("not enabled") })
    }).pipe(Effect.provide(hubLayer())))
})
