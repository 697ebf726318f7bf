/**
 * The built client in real headless Chromium against the built hub and the real broker: restarts and network cuts
 * while events flow at 100/s, a queue-mode restart's gap, the React binding under StrictMode, and Server-Sent
 * Events.
 */
import type { Page } from "playwright-core"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { BrowserHarness } from "./support/browser.js"
import { LiveHub, range, until } from "./support/liveHub.js"

let browser: BrowserHarness
let hub: LiveHub | undefined
let page: Page | undefined

beforeAll(async () => {
  browser = await BrowserHarness.start()
}, 60_000)
afterAll(async () => {
  await browser?.close()
})
afterEach(async () => {
  await page?.close()
  page = undefined
  await hub?.stop()
  hub = undefined
})

interface PageState {
  seqs: Array<number>
  gaps: Array<{ reason: string }>
  state: string
}

/** A page that connects with the client and records what it delivers (`window.received`). */
const openClient = async (url: string, options: Record<string, unknown> = {}): Promise<Page> => {
  const opened = await browser.page()
  await opened.evaluate(([url, options]) => {
    const w = window as any
    const received: PageState = w.received = { seqs: [], gaps: [], state: "" }
    const hub = w.hub = w.EventHubClient.connect(url, { minDelay: 100, maxDelay: 1000, ...options })
    hub.on("test.#", (event: any) => received.seqs.push(event.data.seq))
    hub.onGap((gap: any) => received.gaps.push(gap))
    hub.onState((state: string) => (received.state = state))
  }, [url, options] as const)
  return opened
}

const received = (p: Page) => p.evaluate(() => (window as any).received as PageState)

describe("the client in Chromium", () => {
  it("stream mode: two hub restarts and two network cuts at 100 events/s: nothing lost, nothing twice", async () => {
    hub = await LiveHub.start("stream")
    page = await openClient(hub.url, { eventTypes: ["test.#"] })
    await until(async () => (await received(page!)).state === "connected", "connected")
    const publishing = hub.publish(0, 1200, 100)
    const atLeast = (n: number) => until(async () => (await received(page!)).seqs.length >= n, `${n} events`, 30_000)
    await atLeast(100)
    await hub.restart()
    await atLeast(300)
    await hub.cut(1000)
    await atLeast(500)
    await hub.restart()
    await atLeast(700)
    await hub.cut(500)
    await publishing
    await atLeast(1200)
    const result = await received(page)
    expect(result.seqs).toEqual(range(0, 1200))
    expect(result.gaps).toEqual([])
  }, 90_000)

  it("queue mode: a restart gives the page's gap handler a gap event", async () => {
    hub = await LiveHub.start("queue")
    page = await openClient(hub.url)
    await until(async () => (await received(page!)).state === "connected", "connected")
    await hub.publish(0, 10, 100)
    await until(async () => (await received(page!)).seqs.length === 10, "10 events")
    await hub.restart()
    await until(async () => (await received(page!)).gaps.length === 1, "the gap")
    await hub.publish(10, 20, 100)
    await until(async () => (await received(page!)).seqs.length === 20, "20 events")
    const result = await received(page)
    expect(result.gaps[0]).toMatchObject({ reason: "unknown" })
    expect(result.seqs).toEqual(range(0, 20))
  }, 60_000)

  it("React under StrictMode: the provider opens one socket, and the hooks show the state (from connecting) and the events", async () => {
    hub = await LiveHub.start("stream")
    page = await browser.page(`/react.html?hub=${encodeURIComponent(hub.directUrl)}`)
    await page.waitForFunction(() => document.getElementById("out")?.textContent?.startsWith("connected 0"))
    await hub.publish(0, 5, 100)
    await page.waitForFunction(() => document.getElementById("out")?.textContent?.startsWith("connected 5"))
    expect(await page.evaluate(() => (window as any).__sockets)).toBe(1)
    // The first state rendered is the client's first state (`connecting`), never the closed client's `disconnected`.
    expect(await page.evaluate(() => (window as any).__states)).toEqual(["connecting", "connected"])
    const metrics = await (await fetch(`http://127.0.0.1:${hub.port}/metrics`)).json() as any
    expect(metrics.websocket.connected_clients).toBe(1)
  }, 60_000)

  it("SSE: the client's SSE transport and a bare EventSource with Last-Event-ID lose nothing across a cut", async () => {
    hub = await LiveHub.start("stream")
    const sse = `http://127.0.0.1:${hub.proxy.port}/api/v1/sse/events`
    page = await openClient(hub.url, { transport: "sse", eventTypes: ["test.#"] })
    await page.evaluate((url) => {
      const w = window as any
      w.bare = []
      const source = new EventSource(`${url}?types=test.%23`)
      source.onmessage = (event) => {
        const message = JSON.parse(event.data)
        if (!message.type.startsWith("hub.")) w.bare.push(message.data.seq)
      }
    }, sse)
    await until(async () => (await received(page!)).state === "connected", "connected")
    const publishing = hub.publish(0, 400, 100)
    await until(async () => (await received(page!)).seqs.length >= 100, "100 events")
    await hub.cut(500)
    await publishing
    await until(async () => (await received(page!)).seqs.length >= 400, "400 events", 30_000)
    await until(async () => (await page!.evaluate(() => (window as any).bare.length)) >= 400, "400 bare", 30_000)
    expect((await received(page)).seqs).toEqual(range(0, 400))
    expect(await page.evaluate(() => (window as any).bare)).toEqual(range(0, 400))
  }, 60_000)
})
