/**
 * The WebSocket transport: how an outbox's messages reach a WebSocket client
 * (`Transport`, see hub/Outbox.ts).
 *
 * Without compression, a message is framed once (a complete unmasked text
 * frame, by `ws`'s own encoder) and the same bytes are written to the TCP
 * socket of every client that receives it, several frames in one corked
 * write: a delivery then costs about what the write costs (see
 * docs/performance.md). Writing to the TCP socket bypasses `ws`'s sender, which
 * is safe as long as nothing else writes to that socket meanwhile: the outbox
 * is its only writer, and permessage-deflate is off for that client.
 *
 * `ws` does not document its encoder (`Sender.frame`): `frameEncoder` checks
 * once, at startup, that it is there and frames as RFC 6455 says. When it is
 * not, and for a client with permessage-deflate, each message goes through
 * `ws.send`, which frames (and compresses) it for that client alone.
 */
import { Duration, Effect } from "effect"
import type { Duplex } from "node:stream"
import * as ws from "ws"
import type { Transport } from "../hub/Outbox.js"
import { closeFor, CloseCode, type DisconnectReason, type Outbound } from "../protocol/Protocol.js"

const { WebSocket } = ws

/** Frames a text message: the complete unmasked frame. */
export type FrameEncoder = (payload: Buffer) => Buffer

const textFrame = { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false }

/**
 * `ws`'s frame encoder, if it is there and frames a text message as RFC 6455 says (checked on a probe); `undefined`
 * otherwise, and every client is then written through `ws.send`. Called once, when the WebSocket server starts.
 */
export const frameEncoder = (): FrameEncoder | undefined => {
  // Not in @types/ws: looked up, not assumed.
  const sender = (ws as unknown as { readonly Sender?: { readonly frame?: unknown } }).Sender
  const frame = sender?.frame
  if (typeof frame !== "function") return undefined
  const encode: FrameEncoder = (payload) => {
    const parts = frame.call(sender, payload, textFrame) as Array<Buffer>
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts)
  }
  try {
    // FIN and the text opcode, the length 2 unmasked, then the payload as is.
    return encode(Buffer.from("ok")).equals(Buffer.from([0x81, 0x02, 0x6f, 0x6b])) ? encode : undefined
  } catch {
    return undefined
  }
}

/** What every WebSocket transport of one server shares. */
export interface WebSocketSettings {
  /** `undefined`: `ws`'s encoder is missing, every message goes through `ws.send`. */
  readonly encodeFrame: FrameEncoder | undefined
  /** Longest wait for the peer's close frame before the socket is destroyed. */
  readonly closeHandshake: Duration.Duration
}

/** The close frame for `reason`: its code and its reason text (1011 when the hub failed). */
export const closeFrameFor = (reason: DisconnectReason) =>
  reason in closeFor
    ? closeFor[reason as keyof typeof closeFor]
    : { code: CloseCode.internalError, reason: "internal error" }

/** The transport of a client: pre-built frames on its TCP socket, or `ws.send` (compression, or no encoder). */
export const make = (client: ws.WebSocket, socket: Duplex, settings: WebSocketSettings): Transport =>
  settings.encodeFrame !== undefined && !client.extensions.includes("permessage-deflate")
    ? new FrameTransport(client, socket, settings)
    : new SendTransport(client, socket, settings)

/** The frame of `message`, built by the first client that writes it and shared by the others. */
const frameOf = (message: Outbound, encode: FrameEncoder): Buffer => message.wsFrame ??= encode(message.payload)

/** What both ways of writing share: the socket's state, its drain and the close. */
abstract class WebSocketTransport {
  bytesWritten = 0
  constructor(readonly ws: ws.WebSocket, readonly socket: Duplex, readonly settings: WebSocketSettings) {}

  /** A socket the peer dropped may not have told `ws` yet: the TCP socket is looked at too. */
  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN && !this.socket.destroyed
  }

  onDrain(drained: () => void): void {
    this.socket.once("drain", drained)
  }

  /** Sends the close frame (if the socket is open), waits for the peer's, and destroys the socket if it never comes. */
  close(reason: DisconnectReason): Effect.Effect<void> {
    const client = this.ws
    const timeout = this.settings.closeHandshake
    return Effect.gen(function*() {
      if (client.readyState === WebSocket.OPEN) {
        // A socket paused by its connection (too many requests unanswered) must be read again, or the peer's close
        // frame never arrives.
        if (client.isPaused) client.resume()
        const frame = closeFrameFor(reason)
        client.close(frame.code, frame.reason)
      }
      if (!(yield* waitClosed(client, timeout))) {
        client.terminate()
        yield* waitClosed(client, timeout)
      }
    })
  }
}

/** Pre-built frames, written to the TCP socket: several in one corked write. */
class FrameTransport extends WebSocketTransport implements Transport {
  write(message: Outbound): boolean {
    const frame = frameOf(message, this.settings.encodeFrame!)
    this.bytesWritten += frame.length
    return this.socket.write(frame)
  }

  writeMany(messages: ReadonlyArray<Outbound>): boolean {
    const socket = this.socket
    const encode = this.settings.encodeFrame!
    let accepted = true
    let bytes = 0
    socket.cork()
    try {
      for (const message of messages) {
        const frame = frameOf(message, encode)
        accepted = socket.write(frame)
        bytes += frame.length
      }
    } finally {
      socket.uncork()
      this.bytesWritten += bytes
    }
    return accepted
  }
}

/** The length of a text frame's header, unmasked, for the metrics (`ws.send` does not tell its frame's size). */
const headerLength = (payload: number) => (payload < 126 ? 2 : payload < 65536 ? 4 : 10)

/** `ws.send` for each message: `ws` frames it (and compresses it, with permessage-deflate) for this client alone. */
class SendTransport extends WebSocketTransport implements Transport {
  readonly #compressed = this.ws.extensions.includes("permessage-deflate")

  write(message: Outbound): boolean {
    this.#send(message)
    return this.socket.writableLength < this.socket.writableHighWaterMark
  }

  writeMany(messages: ReadonlyArray<Outbound>): boolean {
    for (const message of messages) this.#send(message)
    return this.socket.writableLength < this.socket.writableHighWaterMark
  }

  #send(message: Outbound): void {
    this.ws.send(message.payload, { binary: false })
    // Compressed: what the client receives once inflated; otherwise the frame, as the other transport counts it.
    const length = message.payload.length
    this.bytesWritten += this.#compressed ? length : length + headerLength(length)
  }
}

/**
 * Waits for the socket to close, at most `timeout`. It keeps its own timer
 * rather than relying on interruption: the end of a connection runs
 * uninterruptibly, and a shutdown may already be interrupting its fiber.
 */
const waitClosed = (client: ws.WebSocket, timeout: Duration.Duration) =>
  Effect.callback<boolean>((resume) => {
    if (client.readyState === WebSocket.CLOSED) return resume(Effect.succeed(true))
    const onClose = () => {
      clearTimeout(timer)
      resume(Effect.succeed(true))
    }
    const timer = setTimeout(() => {
      client.off("close", onClose)
      resume(Effect.succeed(false))
    }, Duration.toMillis(timeout))
    client.once("close", onClose)
  })
