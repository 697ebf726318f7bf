/**
 * Where HTTP upgrade requests go. The Node server's `upgrade` events for a
 * registered path are handed to its handler instead of the platform's
 * request handling; other paths (and a path whose handler is gone, during
 * shutdown) go on as usual.
 */
import { Context, Effect, type Scope } from "effect"
import type { IncomingMessage, Server } from "node:http"
import type { Duplex } from "node:stream"

export type UpgradeHandler = (request: IncomingMessage, socket: Duplex, head: Buffer) => void

export class UpgradeRoutes extends Context.Tag("event-hub/UpgradeRoutes")<UpgradeRoutes, {
  /** Sends upgrade requests for `path` to `handler` for the lifetime of the scope. */
  readonly register: (path: string, handler: UpgradeHandler) => Effect.Effect<void, never, Scope.Scope>
}>() {
  /**
   * Installs the routing on `server` (before anything listens to it) and
   * returns the service.
   */
  static install(server: Server): UpgradeRoutes["Type"] {
    const handlers = new Map<string, UpgradeHandler>()
    const emit = server.emit
    server.emit = function(this: Server, event: string | symbol, ...args: Array<any>) {
      if (event === "upgrade") {
        const [request, socket, head] = args as [IncomingMessage, Duplex, Buffer]
        const handler = handlers.get(pathOf(request.url))
        if (handler !== undefined) {
          handler(request, socket, head)
          return true
        }
      }
      return (emit as (this: Server, event: string | symbol, ...args: Array<any>) => boolean).call(this, event, ...args)
    } as Server["emit"]
    return {
      register: (path, handler) =>
        Effect.acquireRelease(
          Effect.sync(() => handlers.set(path, handler)),
          () => Effect.sync(() => handlers.delete(path))
        )
    }
  }
}

const pathOf = (url: string | undefined) => {
  const query = (url ?? "/").indexOf("?")
  return query === -1 ? url ?? "/" : url!.slice(0, query)
}
