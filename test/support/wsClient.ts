/** Real `ws` clients that record what they receive and let a test wait for a condition (never for a time). */
import { Effect } from "effect"
import { WebSocket, type ClientOptions } from "ws"
import { wsUrl } from "./hub.js"
import { Waitable } from "./waitable.js"

export interface Received {
  readonly type: string
  readonly data: any
  readonly timestamp: string
  readonly [key: string]: unknown
}

/** A real WebSocket client that records every frame it receives. */
export class TestClient extends Waitable {
  readonly frames: Array<string> = []
  readonly messages: Array<Received> = []
  pings = 0
  closed: Promise<{ code: number; reason: string }>

  private constructor(readonly ws: WebSocket) {
    super()
    this.closed = new Promise((resolve) => {
      ws.on("close", (code, reason) => {
        resolve({ code, reason: reason.toString() })
        this.notify()
      })
    })
    ws.on("error", () => {})
    ws.on("ping", () => {
      this.pings++
      this.notify()
    })
    ws.on("message", (data, isBinary) => {
      const text = isBinary ? "<binary>" : data.toString()
      this.frames.push(text)
      if (text.startsWith("{")) this.messages.push(JSON.parse(text))
      this.notify()
    })
  }

  static connect(url: string, options?: ClientOptions, protocols: Array<string> = []): Promise<TestClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, protocols, options)
      const client = new TestClient(ws)
      ws.once("open", () => resolve(client))
      ws.once("error", reject)
      ws.once("unexpected-response", (_request, response) => reject(new Error(`HTTP ${response.statusCode}`)))
    })
  }

  /** Events only: messages outside the hub's reserved `hub.` namespace. */
  get events(): Array<Received> {
    return this.messages.filter((message) => !message.type.startsWith("hub."))
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN
  }

  protected lastReceived(): string {
    return `last frames: ${JSON.stringify(this.frames.slice(-3).map((f) => f.slice(0, 200)))}`
  }

  /** Waits for a message of `type` and returns it. */
  async next(type: string, timeoutMs?: number): Promise<Received> {
    const seen = this.messages.length
    let found: Received | undefined
    await this.until(() => {
      found = this.messages.slice(seen).find((message) => message.type === type)
      return found !== undefined
    }, `a ${type} message`, timeoutMs)
    return found!
  }

  /** Sends a request and waits for the hub's reply of `replyType`. */
  async request(request: unknown, replyType: string): Promise<Received> {
    const reply = this.next(replyType)
    this.ws.send(typeof request === "string" || Buffer.isBuffer(request) ? request : JSON.stringify(request))
    return reply
  }

  close() {
    this.ws.terminate()
  }
}

/** Connects a client whose socket is closed when the test's scope ends. */
export const connect = (options?: ClientOptions) =>
  Effect.flatMap(wsUrl, (url) =>
    Effect.acquireRelease(
      Effect.promise(() => TestClient.connect(url, options)),
      (client) => Effect.sync(() => client.close())
    ))

