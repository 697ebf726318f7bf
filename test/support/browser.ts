/**
 * Real headless Chromium (Debian's, driven by playwright-core) loading the client bundled by esbuild from a tiny
 * local HTTP server on a free port.
 */
import { build } from "esbuild"
import { createServer, type Server } from "node:http"
import type { Browser, Page } from "playwright-core"
import { launchChromium } from "./chromium.js"
import { freePort } from "../support.js"

export { chromiumPath } from "./chromium.js"

const bundle = async (entry: string): Promise<string> => {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    format: "iife",
    target: "es2022",
    platform: "browser",
    write: false,
    // React's development build: the one that double-mounts under StrictMode.
    define: { "process.env.NODE_ENV": "\"development\"" }
  })
  return result.outputFiles[0]!.text
}

export class BrowserHarness {
  private constructor(readonly browser: Browser, readonly server: Server, readonly origin: string) {}

  static async start(): Promise<BrowserHarness> {
    const files: Record<string, string> = {
      "/client.js": await bundle("test/browser/clientPage.ts"),
      "/react.js": await bundle("test/browser/reactPage.ts"),
      "/": "<!doctype html><html><body><div id=\"root\"></div><script src=\"/client.js\"></script></body></html>",
      "/react.html": "<!doctype html><html><body><div id=\"root\"></div><script src=\"/react.js\"></script></body></html>"
    }
    const server = createServer((request, response) => {
      const path = (request.url ?? "/").split("?")[0]!
      const body = files[path]
      response.writeHead(body === undefined ? 404 : 200, {
        "content-type": path.endsWith(".js") ? "text/javascript" : "text/html"
      })
      response.end(body ?? "not found")
    })
    const port = await freePort()
    await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve))
    const browser = await launchChromium()
    return new BrowserHarness(browser, server, `http://127.0.0.1:${port}`)
  }

  /** A fresh page that counts the WebSockets it opens (`window.__sockets`). */
  async page(path = "/"): Promise<Page> {
    const page = await this.browser.newPage()
    await page.addInitScript(() => {
      const Native = window.WebSocket
      ;(window as unknown as { __sockets: number }).__sockets = 0
      window.WebSocket = class extends Native {
        constructor(url: string | URL, protocols?: string | Array<string>) {
          super(url, protocols)
          ;(window as unknown as { __sockets: number }).__sockets++
        }
      }
    })
    await page.goto(`${this.origin}${path}`)
    return page
  }

  async close(): Promise<void> {
    await this.browser.close()
    await new Promise((resolve) => this.server.close(resolve))
  }
}
