/**
 * Test helpers: the real hub on a free port, and real `ws` clients that record
 * what they receive and let a test wait for a condition (never for a time).
 */
import { HttpServer as PlatformHttpServer } from "@effect/platform"
import { Effect, Layer, Logger, LogLevel, Schedule } from "effect"
import { spawn, type ChildProcess } from "node:child_process"
import { createServer } from "node:net"
import { WebSocket, type ClientOptions } from "ws"
import { HubConfig, type HubSettings } from "../src/Config.js"
import * as HttpServer from "../src/http/Server.js"
import { WebSocketServer } from "../src/http/WebSocketServer.js"
import * as Hub from "../src/Hub.js"

/** The hub, its HTTP server on 127.0.0.1 with a free port, and every service, for `layer(...)`. */
export const hubLayer = (overrides: Partial<HubSettings> = {}) =>
  HttpServer.layerServe.pipe(
    Layer.provide(WebSocketServer.layer),
    Layer.provideMerge(HttpServer.layerListen),
    Layer.provideMerge(Hub.layerLive),
    Layer.provideMerge(HubConfig.layer({ host: "127.0.0.1", port: 0, ...overrides })),
    Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
  )

/** `http://127.0.0.1:PORT` of the server under test. */
export const baseUrl = Effect.map(PlatformHttpServer.HttpServer, (server) => {
  const address = server.address
  if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
  return `http://127.0.0.1:${address.port}`
})

export const wsUrl = Effect.map(baseUrl, (url) => `${url.replace("http", "ws")}/api/v1/ws/events`)

export interface Received {
  readonly type: string
  readonly data: any
  readonly timestamp: string
  readonly [key: string]: unknown
}

/** A real WebSocket client that records every frame it receives. */
export class TestClient {
  readonly frames: Array<string> = []
  readonly messages: Array<Received> = []
  pings = 0
  closed: Promise<{ code: number; reason: string }>
  private readonly listeners = new Set<() => void>()

  private constructor(readonly ws: WebSocket) {
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

  static connect(url: string, options?: ClientOptions): Promise<TestClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, options)
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

  private notify() {
    for (const listener of this.listeners) listener()
  }

  /** Resolves once `condition` holds (checked on every frame, ping and close); rejects after `timeoutMs`. */
  until(condition: () => boolean, what = "condition", timeoutMs = 10_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!condition()) return
        this.listeners.delete(check)
        clearTimeout(timer)
        resolve()
      }
      const timer = setTimeout(() => {
        this.listeners.delete(check)
        reject(new Error(`timed out waiting for ${what}; last frames: ${JSON.stringify(this.frames.slice(-3).map((f) => f.slice(0, 200)))}`))
      }, timeoutMs)
      this.listeners.add(check)
      check()
    })
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

/** Polls `effect` every 10 ms until `condition` holds on its result (at most 10 s). */
export const eventually = <A, E, R>(effect: Effect.Effect<A, E, R>, condition: (a: A) => boolean) =>
  Effect.filterOrFail(effect, condition, () => "not yet" as const).pipe(
    Effect.retry({ schedule: Schedule.spaced("10 millis"), while: (error) => error === "not yet" }),
    Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error("condition not met within 10 s") })
  )

export const promise = <A>(thunk: () => Promise<A>) => Effect.promise(thunk)

/** POSTs JSON (or a raw string) and returns status and parsed body. */
export const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  Effect.flatMap(baseUrl, (url) =>
    Effect.promise(async () => {
      const response = await fetch(`${url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: typeof body === "string" ? body : JSON.stringify(body)
      })
      return { status: response.status, body: await response.json() as any }
    }))

export const get = (path: string) =>
  Effect.flatMap(baseUrl, (url) =>
    Effect.promise(async () => {
      const response = await fetch(`${url}${path}`)
      const text = await response.text()
      return { status: response.status, body: text.startsWith("{") ? JSON.parse(text) : text }
    }))

/** A free TCP port on 127.0.0.1. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
    })
  })

/** Spawns the built service (`node dist/main.js`) and records its output. */
export class ServiceProcess {
  output = ""
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  private constructor(readonly child: ChildProcess) {
    child.stdout!.on("data", (chunk) => (this.output += chunk))
    child.stderr!.on("data", (chunk) => (this.output += chunk))
    this.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })))
  }

  static start(env: Record<string, string>): ServiceProcess {
    return new ServiceProcess(spawn(process.execPath, ["dist/main.js"], {
      env: { ...process.env, LOG_FORMAT: "json", ...env },
      stdio: ["ignore", "pipe", "pipe"]
    }))
  }

  /** Waits until a JSON log line with `message` has been written. */
  async waitForLog(message: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!this.output.includes(`"message":"${message}"`)) {
      if (Date.now() > deadline) throw new Error(`no "${message}" log line; output:\n${this.output}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, deadline - Date.now() + 1)
        this.child.stdout!.once("data", () => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }
}
