/**
 * Test helpers: the real hub on a free port, and real `ws` clients that record
 * what they receive and let a test wait for a condition (never for a time).
 */
import { HttpServer as PlatformHttpServer } from "@effect/platform"
import { Duration, Effect, Layer, Logger, LogLevel, Option, Redacted, Schedule } from "effect"
import * as amqp from "amqplib"
import { type ChildProcess, spawn } from "node:child_process"
import { connect as connectTcp, createServer, type Server, type Socket } from "node:net"
import { WebSocket, type ClientOptions } from "ws"
import {
  defaultSecurity,
  HubConfig,
  type HubSettings,
  RabbitMqConfig,
  type RabbitMqSettings,
  type SecuritySettings
} from "../src/config/Config.js"
import { Health } from "../src/ops/Health.js"
import * as HttpServer from "../src/http/Server.js"
import * as WebSocketServer from "../src/http/WebSocketServer.js"
import * as Hub from "../src/hub/Hub.js"
import * as RabbitMqSource from "../src/rabbitmq/Source.js"

/**
 * Security settings for tests: the defaults with the limits lifted that every
 * test would otherwise hit (all clients come from 127.0.0.1, some tests send
 * bursts of requests). Tests of the limits set their own (`security(...)`).
 */
export const testSecurity: SecuritySettings = {
  ...defaultSecurity,
  maxConnectionsPerIp: 100_000,
  maxConnections: 100_000,
  messageRate: 100_000,
  messageBurst: 100_000,
  connectionRate: 100_000,
  connectionBurst: 100_000,
  resumeRate: 100_000,
  resumeRatePerIp: 100_000
}

/** Security settings for a test: `testSecurity` with `overrides`. */
export const security = (overrides: Partial<SecuritySettings>): SecuritySettings => ({ ...testSecurity, ...overrides })

/** The hub, its HTTP server on 127.0.0.1 with a free port, and every service, for `layer(...)`. */
export const hubLayer = (overrides: Partial<HubSettings> = {}) =>
  Layer.merge(HttpServer.layerServe, WebSocketServer.layer).pipe(
    Layer.provideMerge(HttpServer.layerListen),
    Layer.provideMerge(Hub.layerLive),
    Layer.provideMerge(HubConfig.layer({ host: "127.0.0.1", port: 0, security: testSecurity, ...overrides })),
    // TEST_LOG_LEVEL=Debug shows the hub's logs while debugging a test.
    Layer.provide(Logger.minimumLogLevel(
      LogLevel.allLevels.find((level) => level.label === process.env.TEST_LOG_LEVEL?.toUpperCase()) ?? LogLevel.Warning
    ))
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

  /** Without a broker unless `env` sets `RABBITMQ_URL` (with the test's own exchange and stream or queue). */
  static start(env: Record<string, string>): ServiceProcess {
    return new ServiceProcess(spawn(process.execPath, ["dist/main.js"], {
      env: { ...process.env, LOG_FORMAT: "json", RABBITMQ_URL: "", ...env },
      stdio: ["ignore", "pipe", "pipe"]
    }))
  }

  /** Waits until a JSON log line with `message` has been written. */
  waitForLog(message: string, timeoutMs = 10_000): Promise<void> {
    return this.waitForOutput(`"message":"${message}"`, timeoutMs)
  }

  /** Waits until the output contains `text`. */
  async waitForOutput(text: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!this.output.includes(text)) {
      if (Date.now() > deadline) throw new Error(`no ${JSON.stringify(text)} in the output:\n${this.output}`)
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

// ---------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------

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
    for (const queue of names.queues ?? []) await broker.channel.deleteQueue(queue).catch(() => undefined)
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

/**
 * A TCP proxy in front of the broker that a test can cut (every connection
 * dropped, new ones refused) and restore: a network failure on demand.
 */
export class TcpProxy {
  private readonly sockets = new Set<Socket>()
  private server: Server | undefined
  private constructor(readonly port: number, private readonly target: number) {}

  static async start(target = 5672): Promise<TcpProxy> {
    const proxy = new TcpProxy(await freePort(), target)
    await proxy.listen()
    return proxy
  }

  get url() {
    return `amqp://guest:guest@127.0.0.1:${this.port}/`
  }

  private listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const server = createServer((client) => {
        const upstream = connectTcp(this.target, "127.0.0.1")
        for (const socket of [client, upstream]) {
          this.sockets.add(socket)
          socket.on("error", () => undefined)
          socket.on("close", () => {
            this.sockets.delete(socket)
            client.destroy()
            upstream.destroy()
          })
        }
        client.pipe(upstream)
        upstream.pipe(client)
      })
      server.once("error", reject)
      server.listen(this.port, "127.0.0.1", () => resolve())
      this.server = server
    })
  }

  /** Drops every connection and refuses new ones until `restore`. */
  async cut(): Promise<void> {
    const server = this.server
    this.server = undefined
    for (const socket of this.sockets) socket.destroy()
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  restore(): Promise<void> {
    return this.listen()
  }
}

export const tcpProxy = Effect.acquireRelease(
  Effect.promise(() => TcpProxy.start()),
  (proxy) => Effect.promise(() => proxy.cut())
)

/** The hub with its RabbitMQ source on the test broker, with short reconnection delays. */
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
  RabbitMqSource.layer.pipe(Layer.provideMerge(hubLayer(hub)), Layer.provide(rabbitConfig(rabbit)))

/** The source is consuming (in stream mode: and has refilled its history). */
export const consuming = Effect.flatMap(Health, (health) =>
  eventually(health.report, (report) => report.checks.rabbitmq?.status === "up"))

export const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i)

/** The `seq` each event received carries in its data. */
export const seqs = (client: TestClient) => client.events.map((event) => event.data.seq as number)
