/**
 * The dashboard of the built service (`node dist/main.js`) in Chromium, while the hub stops answering: a hub that
 * says nothing (stopped with SIGSTOP), then a shutdown. The page must never show a state it no longer knows.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Browser, Page } from "playwright-core"
import { freePort, ServiceProcess } from "./support.js"
import { launchChromium } from "./support/chromium.js"

const token = "dashboard-feed-token"
let chromium: Browser

beforeAll(async () => {
  chromium = await launchChromium()
}, 60_000)
afterAll(async () => {
  await chromium?.close()
})

const text = (page: Page, id: string) => page.locator(`#${id}`).textContent()
const greyed = (page: Page) => page.evaluate(() => document.getElementById("main")!.classList.contains("stale"))

describe("the dashboard's feed (node dist/main.js)", () => {
  it("greys out and says so when the hub goes silent or shuts down; shows the drain's 503 while the feed lasts", async () => {
    const port = await freePort()
    const service = ServiceProcess.start({
      PORT: String(port),
      HOST: "127.0.0.1",
      DASHBOARD_TOKEN: token,
      SHUTDOWN_DRAIN_DELAY: "1s"
    })
    const page = await chromium.newPage()
    try {
      await service.waitForLog("listening")
      // Every health text the page shows, in order.
      await page.addInitScript(() => {
        const seen: Array<string> = (window as any).__health = []
        new MutationObserver(() => {
          const health = document.getElementById("health")?.textContent
          if (health && seen.at(-1) !== health) seen.push(health)
        }).observe(document, { subtree: true, childList: true, characterData: true })
      })
      await page.goto(`http://127.0.0.1:${port}/dashboard?token=${token}`)
      await page.locator("#feed.live").waitFor()
      expect(await text(page, "health")).toBe("ok")
      expect(await greyed(page)).toBe(false)

      // A hub that answers nothing (its process stopped): after a few seconds without news, nothing is current.
      service.child.kill("SIGSTOP")
      await page.waitForFunction(() => document.getElementById("feed")!.textContent === "silent")
      expect(await text(page, "health")).toBe("unknown")
      expect(await greyed(page)).toBe(true)
      expect(await text(page, "stale-note")).toContain("No news from the hub")
      service.child.kill("SIGCONT")
      await page.locator("#feed.live").waitFor()
      expect(await text(page, "health")).toBe("ok")
      expect(await greyed(page)).toBe(false)

      // A shutdown: the drain's 503 first (the feed still lasts), then the feed ends, and nothing is shown as current.
      service.child.kill("SIGTERM")
      expect(await service.exited).toEqual({ code: 0, signal: null })
      await page.waitForFunction(() => document.getElementById("main")!.classList.contains("stale"))
      const seen: Array<string> = await page.evaluate(() => (window as any).__health)
      expect(seen.slice(seen.lastIndexOf("ok") + 1)).toEqual(["unavailable (hub: shutting down)", "unknown"])
      expect(await text(page, "feed")).not.toBe("live")
      expect(await text(page, "stale-note")).toMatch(/The hub ended this page's feed: the hub is shutting down|lost its connection/)
      expect(await text(page, "rabbitmq")).toBe("unknown")
    } finally {
      await page.close()
      if (service.child.exitCode === null) {
        service.child.kill("SIGCONT")
        service.child.kill("SIGKILL")
      }
    }
  }, 60_000)
})
