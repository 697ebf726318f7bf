/** A TCP proxy that a test can cut and restore: a network failure on demand. */
import { Effect } from "effect"
import { connect as connectTcp, createServer, type Server, type Socket } from "node:net"
import { freePort } from "./process.js"

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

