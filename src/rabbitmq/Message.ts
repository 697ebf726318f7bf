/** What a broker message means to the hub: the event it carries, and how it is settled. */
import type * as amqp from "amqplib"
import { Result, Schema } from "effect"
import { EventType } from "../protocol/Protocol.js"

export interface MappedEvent {
  readonly type: string
  readonly data: Record<string, unknown>
}

const isEventType = Schema.is(EventType)

/**
 * The WebSocket event for a delivery: `type` is the routing key renamed by
 * `eventTypeMap`, `data` the body parsed as JSON. Fails with the reason when
 * the delivery cannot be an event.
 */
export const toEvent = (
  routingKey: string,
  body: Buffer,
  eventTypeMap: Readonly<Record<string, string>>
): Result.Result<MappedEvent, string> => {
  const type = Object.hasOwn(eventTypeMap, routingKey) ? eventTypeMap[routingKey]! : routingKey
  if (!isEventType(type)) return Result.fail(`routing key ${JSON.stringify(routingKey)} is not a valid event type`)
  let data: unknown
  try {
    data = JSON.parse(body.toString("utf8"))
  } catch {
    return Result.fail("body is not valid JSON")
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    return Result.fail("body is not a JSON object")
  }
  return Result.succeed({ type, data: data as Record<string, unknown> })
}

/**
 * Acknowledges or rejects (without requeue: dead-lettered if so configured) a
 * delivery. amqplib throws if the channel closed meanwhile; the broker then
 * redelivers the message to the next session.
 */
export const settle = (channel: amqp.Channel, message: amqp.ConsumeMessage, accept: boolean): void => {
  try {
    if (accept) channel.ack(message)
    else channel.nack(message, false, false)
  } catch {
    // channel closed: the session is ending and will be retried
  }
}

/** Acknowledges `message` and every earlier delivery of its channel not yet settled. */
export const settleAll = (channel: amqp.Channel, message: amqp.ConsumeMessage): void => {
  try {
    channel.ack(message, true)
  } catch {
    // channel closed: the session is ending and will be retried
  }
}
