/**
 * Health for orchestrators, on the built service (`node dist/main.js`):
 * liveness, readiness, and the order of a graceful shutdown (readiness turns
 * 503, clients stay served for SHUTDOWN_DRAIN_DELAY, then they are closed).
 */
import { describe, expect, it } from "@effect/vitest"
import { freePort, ServiceProcess, TestClient } from "./support.js"

const start = async (env: Record<string, string>) => {
  const port = await freePort()
  const service = ServiceProcess.start({ PORT: String(port), HOST: "127.0.0.1", ...env })
  await service.waitForLog("listening")
  return { service, url: `ws://127.0.0.1:${port}/api/v1/ws/events`, http: `http://127.0.0.1:${port}` }
}

/** Polls `url` until it answers `status` (at most 10 s). */
const waitForStatus = async (url: string, status: number) => {
  const deadline = Date.now() + 10_000
  for (;;) {
    const response = await fetch(url).catch(() => undefined)
    if (response?.status === status) return response
    if (Date.now() > deadline) throw new Error(`${url} never answered ${status}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

describe("health for orchestrators (node dist/main.js)", () => {
  it("live and ready answer 200 while it serves", async () => {
    const { service, http } = await start({})
    const live = await fetch(`${http}/health/live`)
    expect(live.status).toBe(200)
    const ready = await fetch(`${http}/health/ready`)
    expect(ready.status).toBe(200)
    expect(await ready.json()).toEqual({ status: "ready" })
    service.child.kill("SIGTERM")
    expect(await service.exited).toEqual({ code: 0, signal: null })
  })

  it("on SIGTERM, readiness turns 503 first; clients are served through the drain delay, then closed with 1001", async () => {
    const { service, url, http } = await start({ SHUTDOWN_TIMEOUT: "5s", SHUTDOWN_DRAIN_DELAY: "1s" })
    const client = await TestClient.connect(url)
    service.child.kill("SIGTERM")
    const notReady = await waitForStatus(`${http}/health/ready`, 503)
    expect((await notReady.json()).status).toBe("not_ready")
    // Readiness is 503, and the client is still served: it answers a ping and stays open.
    expect(client.isOpen).toBe(true)
    const seen = client.frames.length
    client.ws.send("ping")
    await client.until(() => client.frames.length > seen || !client.isOpen, "a pong or the close")
    expect(client.frames.slice(seen)).toEqual(["pong"])
    expect((await fetch(`${http}/health/live`)).status).toBe(200)
    expect(await client.closed).toEqual({ code: 1001, reason: "server shutting down" })
    expect(await service.exited).toEqual({ code: 0, signal: null })
    const lines = service.output.split("\n")
    const draining = lines.findIndex((line) => line.includes("\"message\":\"draining"))
    expect(draining).toBeGreaterThanOrEqual(0)
  })

  it("refuses a drain delay that does not fit in SHUTDOWN_TIMEOUT", async () => {
    const port = await freePort()
    const service = ServiceProcess.start({ PORT: String(port), SHUTDOWN_TIMEOUT: "1s", SHUTDOWN_DRAIN_DELAY: "2s" })
    expect((await service.exited).code).toBe(1)
    expect(service.output).toContain("SHUTDOWN_DRAIN_DELAY")
  })
})
