/** Debian's Chromium, headless, driven by playwright-core, as an Effect resource: closed with the test's scope. */
import { Effect } from "effect"
import { chromium, type Browser } from "playwright-core"

export const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium"

/** Launches it headless, with nothing running in the background (the flags this machine's Chromium needs). */
export const launchChromium = (): Promise<Browser> =>
  chromium.launch({
    executablePath: chromiumPath,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync"
    ]
  })

export const browser = Effect.acquireRelease(
  Effect.promise(launchChromium),
  (browser) => Effect.promise(() => browser.close())
)
