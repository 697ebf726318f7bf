/**
 * The Server-Sent Events transport: how an outbox's messages reach an SSE
 * stream (`Transport`, see hub/Outbox.ts). A message is encoded once (`id:`
 * for events, then one `data:` line) and shared by every stream that
 * receives it; what an outbox holds goes out as one chunk of the HTTP
 * response.
 */
import { Effect } from "effect"
import type { ServerResponse } from "node:http"
import type { Transport } from "../hub/Outbox.js"
import type { DisconnectReason, Outbound } from "../protocol/Protocol.js"

/** Longest wait for an ended response to be flushed before its connection is destroyed. */
const maxEndMillis = 2000

/** The comment an idle stream gets every `SSE_KEEPALIVE` (proxies close connections that stay silent). */
const keepAliveComment = Buffer.from(": keepalive\n\n")

const eventEnd = Buffer.from("\n\n")

/**
 * An unnamed SSE event (`EventSource.onmessage` gets it), built by the first stream that writes it. The JSON holds
 * no raw line break and ids only `[A-Za-z0-9._-]`, so one `data:` line carries it.
 */
const eventOf = (message: Outbound): Buffer =>
  message.sseEvent ??= Buffer.concat([
    Buffer.from(message.id === undefined ? "data: " : `id: ${message.id}\ndata: `),
    message.payload,
    eventEnd
  ])

/** The events of `messages`, in one buffer. */
const joined = (messages: ReadonlyArray<Outbound>): Buffer => {
  let length = 0
  for (const message of messages) length += eventOf(message).length
  const chunk = Buffer.allocUnsafe(length)
  let offset = 0
  for (const message of messages) offset += eventOf(message).copy(chunk, offset)
  return chunk
}

export class SseTransport implements Transport {
  bytesWritten = 0
  constructor(readonly response: ServerResponse) {}

  get open(): boolean {
    return !this.response.destroyed && !this.response.writableEnded
  }

  write(message: Outbound): boolean {
    const event = eventOf(message)
    this.bytesWritten += event.length
    return this.response.write(event)
  }

  /** One HTTP chunk: each write to a response costs a chunk of its own, and more than the copy. */
  writeMany(messages: ReadonlyArray<Outbound>): boolean {
    const chunk = joined(messages)
    this.bytesWritten += chunk.length
    return this.response.write(chunk)
  }

  onDrain(drained: () => void): void {
    this.response.once("drain", drained)
  }

  /** A comment, on a stream with nothing queued: whole messages only are ever written, so it cannot split one. */
  keepAlive(): void {
    this.response.write(keepAliveComment)
  }

  /**
   * Ends the response with a comment that says why (ignored by `EventSource`, for whoever reads the stream by hand);
   * a client that does not read (slow consumer, stuck write) can receive nothing more: its connection is destroyed.
   */
  close(reason: DisconnectReason): Effect.Effect<void> {
    return Effect.sync(() => {
      const response = this.response
      if (!this.open) return
      if (reason === "slow_consumer" || reason === "write_timeout") return void response.destroy()
      response.end(`: closing: ${reason}\n\n`)
      const timer = setTimeout(() => response.destroy(), maxEndMillis)
      response.once("close", () => clearTimeout(timer))
    })
  }
}
