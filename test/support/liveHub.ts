/**
 * The built hub as users run it (`node dist/main.js`) on its own exchange, queue and stream, restartable on the
 * same port, behind a TCP proxy that a test can cut; and a publisher at a steady rate.
 */
import { Broker, brokerUrl, freePort, ServiceProcess, TcpProxy, uniqueNames } from "../support.js"

export class LiveHub {
  service: ServiceProcess | undefined
  private constructor(
    readonly mode: "stream" | "queue",
    readonly port: number,
    readonly proxy: TcpProxy,
    readonly names: { exchange: string; queue: string; stream: string },
    readonly publisher: Broker,
    readonly env: Record<string, string>
  ) {}

  static async start(mode: "stream" | "queue", env: Record<string, string> = {}): Promise<LiveHub> {
    const names = uniqueNames(`client_${mode}`)
    const port = await freePort()
    const hub = new LiveHub(mode, port, await TcpProxy.start(port), { ...names, stream: `${names.queue}.stream` },
      await Broker.open(), env)
    await hub.publisher.channel.assertExchange(names.exchange, "topic", { durable: true })
    await hub.run()
    return hub
  }

  /** The WebSocket endpoint through the proxy. */
  get url(): string {
    return `ws://127.0.0.1:${this.proxy.port}/api/v1/ws/events`
  }

  /** The same, straight to the hub. */
  get directUrl(): string {
    return `ws://127.0.0.1:${this.port}/api/v1/ws/events`
  }

  async run(): Promise<void> {
    this.service = ServiceProcess.start({
      PORT: String(this.port),
      HOST: "127.0.0.1",
      RABBITMQ_URL: brokerUrl,
      RABBITMQ_EXCHANGE: this.names.exchange,
      RABBITMQ_MODE: this.mode,
      RABBITMQ_QUEUE: this.names.queue,
      RABBITMQ_STREAM: this.names.stream,
      ...this.env
    })
    await this.service.waitForLog(
      this.mode === "stream" ? "history refilled from the stream; events are live" : "consuming from RabbitMQ",
      20_000
    )
  }

  /** SIGTERM (clients get 1001), wait for the exit, start again on the same port. */
  async restart(): Promise<void> {
    const service = this.service!
    service.child.kill("SIGTERM")
    await service.exited
    await this.run()
  }

  /** Cuts every connection through the proxy and refuses new ones for `ms`. */
  async cut(ms: number): Promise<void> {
    await this.proxy.cut()
    await new Promise((resolve) => setTimeout(resolve, ms))
    await this.proxy.restore()
  }

  /** Publishes `{ seq }` for seq in [from, to) at `perSecond`, through the broker. */
  async publish(from: number, to: number, perSecond: number, type = "test.tick"): Promise<void> {
    const started = Date.now()
    for (let seq = from; seq < to; seq++) {
      const due = started + ((seq - from) * 1000) / perSecond
      if (due > Date.now()) await new Promise((resolve) => setTimeout(resolve, due - Date.now()))
      await this.publisher.publish(this.names.exchange, type, { seq, event_id: `${this.names.queue}-${seq}` })
    }
  }

  async stop(): Promise<void> {
    this.service?.child.kill("SIGKILL")
    await this.service?.exited
    await this.proxy.cut()
    await this.publisher.cleanup({
      exchange: this.names.exchange,
      queues: [this.names.queue, this.names.stream]
    })
    await this.publisher.close()
  }
}

/** Resolves when `condition` holds, polling; rejects after `timeoutMs` with `what`. */
export const until = async (condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

export const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i)
