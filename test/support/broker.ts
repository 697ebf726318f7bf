/** The real broker: each test's own names, a publisher, and the hub with its RabbitMQ source. */
import { Duration, Effect, Layer, Option, Redacted } from "effect"
import * as amqp from "amqplib"
import { type HubSettings, ingestQueueName, RabbitMqConfig, type RabbitMqSettings } from "../../src/config/Config.js"
import * as Hub from "../../src/hub/Hub.js"
import { Health } from "../../src/ops/Health.js"
import * as RabbitMqSource from "../../src/rabbitmq/Source.js"
import { eventually, hubLayer } from "./hub.js"
import type { TestClient } from "./wsClient.js"

export const brokerUrl = "amqp://guest:guest@127.0.0.1:5672/"

/** Names no other test uses. */
export const uniqueNames = (prefix = "test") => {
  const id = `${prefix}_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
  return { exchange: `${id}.events`, queue: `${id}.queue` }
}

/** A publisher with its own connection; `cleanup` deletes what the test declared. */
export class Broker {
  private constructor(readonly connection: amqp.ChannelModel, readonly channel: amqp.Channel) {}

  static async open(): Promise<Broker> {
    const connection = await amqp.connect(brokerUrl)
    connection.on("error", () => undefined)
    const channel = await connection.createChannel()
    channel.on("error", () => undefined)
    return new Broker(connection, channel)
  }

  private readonly declared = new Set<string>()

  async publish(exchange: string, routingKey: string, body: unknown): Promise<void> {
    if (!this.declared.has(exchange)) {
      await this.channel.assertExchange(exchange, "topic", { durable: true })
      this.declared.add(exchange)
    }
    const content = Buffer.isBuffer(body) ? body : Buffer.from(typeof body === "string" ? body : JSON.stringify(body))
    this.channel.publish(exchange, routingKey, content)
  }

  async consumerCount(queue: string): Promise<number> {
    return (await this.channel.checkQueue(queue)).consumerCount
  }

  /** Deletes what a test declared, over a connection of its own (a test may have killed the others). */
  async cleanup(names: { exchange?: string; queues?: ReadonlyArray<string> }): Promise<void> {
    const broker = await Broker.open()
    // A stream's ingest queue (stream mode) goes with it.
    for (const queue of names.queues ?? []) {
      for (const name of [queue, ingestQueueName(queue)]) await broker.channel.deleteQueue(name).catch(() => undefined)
    }
    if (names.exchange) await broker.channel.deleteExchange(names.exchange).catch(() => undefined)
    await broker.close()
  }

  async close(): Promise<void> {
    await this.connection.close().catch(() => undefined)
  }
}

/** A publisher closed with the test's scope. */
export const broker = Effect.acquireRelease(
  Effect.promise(() => Broker.open()),
  (broker) => Effect.promise(() => broker.close())
)

/** The source's settings for tests: the local broker, reconnecting within half a second. */
export const rabbitConfig = (rabbit: Partial<RabbitMqSettings>) =>
  RabbitMqConfig.layer({
    url: Option.some(Redacted.make(brokerUrl)),
    // The tests written for queue mode; stream-mode tests say so, with a stream of their own (never the default one).
    mode: "queue",
    reconnectDelay: Duration.millis(100),
    maxReconnectWait: Duration.millis(500),
    ...rabbit
  })

export const hubWithSource = (rabbit: Partial<RabbitMqSettings>, hub: Partial<HubSettings> = {}) =>
  // The hub's history reads the RabbitMQ settings too (stream ids in stream mode).
  RabbitMqSource.layer.pipe(Layer.provideMerge(hubLayer(hub, Hub.layerLive)), Layer.provide(rabbitConfig(rabbit)))

/** The source is consuming (in stream mode: and has refilled its history). */
export const consuming = Effect.flatMap(Health, (health) =>
  eventually(health.report, (report) => report.checks.rabbitmq?.status === "up"))

/** The source has lost the broker (a cut, a refusal): its health report, once `rabbitmq` is down. */
export const sourceDown = Effect.flatMap(Health, (health) =>
  eventually(health.report, (report) => report.checks.rabbitmq?.status === "down"))

export const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i)

/** The `seq` each event received carries in its data. */
export const seqs = (client: TestClient) => client.events.map((event) => event.data.seq as number)
