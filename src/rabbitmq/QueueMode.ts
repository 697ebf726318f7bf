/**
 * Queue mode: this instance consumes its own durable queue, bound to the
 * exchange, exclusively. Lighter than stream mode, but while no instance
 * consumes the queue, events wait only in it, and a resume after a restart
 * cannot be placed (see docs/operations.md).
 */
import { Duration, Effect, Result, Option } from "effect"
import { eventSpan } from "../ops/Tracing.js"
import { settle, toEvent } from "./Message.js"
import { attempt, type ConsumeMode, type Delivery, type ModeContext, RabbitMqError } from "./Session.js"

export const queueMode = ({ config, hub, metrics, setHealth }: ModeContext): ConsumeMode => {
  const declare: ConsumeMode["declare"] = (channel) =>
    attempt("Topology", async () => {
      // Durable (RabbitMQ 4 deprecates transient non-exclusive queues), and deleted by the broker once no hub has
      // consumed it for RABBITMQ_QUEUE_EXPIRES: a stopped instance leaves nothing filling up behind it.
      await channel.assertQueue(config.queue, {
        durable: true,
        arguments: {
          "x-expires": Duration.toMillis(config.queueExpires),
          ...Option.match(config.deadLetterExchange, {
            onNone: () => ({}),
            onSome: (exchange) => ({ "x-dead-letter-exchange": exchange })
          })
        }
      })
      for (const key of config.bindingKeys) await channel.bindQueue(config.queue, config.exchange, key)
      await channel.prefetch(config.prefetch)
    })

  const deliver = ({ channel, message }: Delivery): Effect.Effect<void> => {
    const routingKey = message.fields.routingKey
    const event = toEvent(routingKey, message.content, config.eventTypeMap)
    if (Result.isFailure(event)) {
      settle(channel, message, false)
      metrics.count("rabbitmq", "events_rejected")
      return Effect.logWarning("rejected a message that is not an event").pipe(
        Effect.annotateLogs({ routing_key: routingKey, reason: event.failure, bytes: message.content.length })
      )
    }
    // A redelivery, or a publisher's retry, of an event the hub already broadcast is dropped by the hub (Dedup.ts).
    // `broadcastEvent`, which never waits: `deliver` must stay synchronous.
    return hub.broadcastEvent({ type: event.success.type, data: event.success.data, source: "rabbitmq" }).pipe(
      eventSpan("rabbitmq", event.success.type, message.properties.headers),
      Effect.andThen(Effect.sync(() => {
        metrics.count("rabbitmq", "events_consumed")
        // The hub has the event: acknowledge.
        settle(channel, message, true)
      }))
    )
  }

  return {
    queue: config.queue,
    declare,
    prepare: () => Effect.succeed((delivery) => Effect.suspend(() => deliver(delivery))),
    // Exclusive: a second instance with the same queue name is refused (403), and told what to do.
    consumeOptions: () => ({ noAck: false, exclusive: true }),
    consumeRefused: (cause) =>
      new RabbitMqError({
        reason: /exclusive use/i.test(String((cause as Error)?.message)) ? "QueueInUse" : "Topology",
        cause,
        queue: config.queue
      }),
    started: () => Effect.void,
    connected: Effect.andThen(
      setHealth("up"),
      Effect.logInfo("consuming from RabbitMQ").pipe(Effect.annotateLogs({ queue: config.queue }))
    ),
    describe: { mode: "queue", queue: config.queue }
  }
}
