/**
 * A Server-Sent Events client for tests, over Node's `http`: it parses the
 * stream by hand (`id:`, `data:`, `retry:`, comments) and records what it
 * receives, and lets a test wait for a condition (never for a time), stop
 * reading (a slow consumer) or see the stream end.
 */
import { Effect } from "effect"
import { type ClientRequest, type IncomingMessage, request as httpRequest } from "node:http"
import { baseUrl } from "./hub.js"
import type { Received } from "./wsClient.js"
import { Waitable } from "./waitable.js"

export interface SseMessage extends Received {
  /** The `id:` field of the SSE event, if it had one. */
  readonly sseId?: string | undefined
}

export class SseClient extends Waitable {
  readonly messages: Array<SseMessage> = []
  readonly comments: Array<string> = []
  retry: number | undefined
  /** The body of a refusal (non-200), parsed when JSON. */
  body: any
  ended = false
  private buffer = ""

  private constructor(readonly request: ClientRequest, readonly response: IncomingMessage) {
    super()
    response.setEncoding("utf8")
    response.on("data", (chunk: string) => {
      if (response.statusCode === 200) this.parse(chunk)
      else this.buffer += chunk
      this.notify()
    })
    const end = () => {
      if (this.ended) return
      this.ended = true
      if (response.statusCode !== 200) this.body = this.buffer.startsWith("{") ? JSON.parse(this.buffer) : this.buffer
      this.notify()
    }
    response.on("end", end)
    response.on("close", end)
    response.on("error", () => undefined)
  }

  /** Opens `url` (absolute) with `headers`; resolves once the response's head has arrived (any status). */
  static open(url: string, headers: Record<string, string> = {}): Promise<SseClient> {
    return new Promise((resolve, reject) => {
      const request = httpRequest(url, { headers: { accept: "text/event-stream", ...headers }, agent: false })
      request.once("response", (response) => resolve(new SseClient(request, response)))
      request.once("error", reject)
      request.end()
    })
  }

  get status(): number {
    return this.response.statusCode ?? 0
  }

  get headers(): IncomingMessage["headers"] {
    return this.response.headers
  }

  /** Events only: messages outside the hub's reserved `hub.` namespace. */
  get events(): Array<SseMessage> {
    return this.messages.filter((message) => !message.type.startsWith("hub."))
  }

  private parse(chunk: string) {
    this.buffer += chunk
    let end: number
    while ((end = this.buffer.indexOf("\n\n")) !== -1) {
      const block = this.buffer.slice(0, end)
      this.buffer = this.buffer.slice(end + 2)
      let id: string | undefined
      const data: Array<string> = []
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) this.comments.push(line.slice(1).trim())
        else if (line.startsWith("id: ")) id = line.slice(4)
        else if (line.startsWith("data: ")) data.push(line.slice(6))
        else if (line.startsWith("retry: ")) this.retry = Number(line.slice(7))
        else throw new Error(`unexpected SSE line ${JSON.stringify(line)}`)
      }
      if (data.length > 0) this.messages.push({ ...JSON.parse(data.join("\n")), sseId: id })
    }
  }

  protected lastReceived(): string {
    return `last messages: ${JSON.stringify(this.messages.slice(-3))}`
  }

  /** Stops reading the socket: its receive window fills, then the hub's send buffer. */
  pause() {
    this.response.socket.pause()
  }

  resume() {
    this.response.socket.resume()
  }

  close() {
    this.request.destroy()
  }
}

/** Opens a stream on the server under test (`query` appended to the SSE path), closed with the test's scope. */
export const openSse = (query = "", headers: Record<string, string> = {}) =>
  Effect.flatMap(baseUrl, (url) =>
    Effect.acquireRelease(
      Effect.promise(() => SseClient.open(`${url}/api/v1/sse/events${query}`, headers)),
      (client) => Effect.sync(() => client.close())
    ))
