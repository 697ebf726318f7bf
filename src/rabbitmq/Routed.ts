/**
 * Publishing that tells a message the broker kept from one it dropped.
 *
 * A confirm alone does not say that a queue took the message: RabbitMQ
 * confirms a message no queue took (unroutable), and right after a restart a
 * stream is unroutable for up to a second or two (docs/operations.md). So
 * every message goes out `mandatory`: an unroutable one comes back as
 * `basic.return`, before its confirm, and is reported as `returned`.
 * Returns are told apart by a header that names the message.
 */
import type * as amqp from "amqplib"

export type Outcome = "kept" | "returned" | Error

export class RoutedChannel {
  readonly #returned = new Set<string>()

  /** `idHeader`: the header whose value names each message published through this channel. */
  constructor(readonly channel: amqp.ConfirmChannel, private readonly idHeader: string) {
    channel.on("return", (message: amqp.Message) => {
      const id = message.properties.headers?.[idHeader]
      if (id !== undefined) this.#returned.add(String(id))
    })
  }

  /** Publishes with `mandatory`; `done` is called once, with what became of the message. */
  publish(
    exchange: string,
    routingKey: string,
    content: Buffer,
    options: amqp.Options.Publish & { readonly headers: Record<string, unknown> },
    done: (outcome: Outcome) => void
  ): boolean {
    const id = String(options.headers[this.idHeader])
    return this.channel.publish(exchange, routingKey, content, { ...options, mandatory: true }, (error) => {
      if (error) return done(error instanceof Error ? error : new Error(`nacked by the broker: ${String(error)}`))
      done(this.#returned.delete(id) ? "returned" : "kept")
    })
  }

  /** `publish` as a promise. */
  publishAsync(
    exchange: string,
    routingKey: string,
    content: Buffer,
    options: amqp.Options.Publish & { readonly headers: Record<string, unknown> }
  ): Promise<"kept" | "returned"> {
    return new Promise((resolve, reject) => {
      this.publish(exchange, routingKey, content, options, (outcome) =>
        outcome instanceof Error ? reject(outcome) : resolve(outcome))
    })
  }
}
