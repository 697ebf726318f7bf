/**
 * The built service as users run it: `node dist/main.js`, configured by
 * environment variables, stopped by a signal. (`npm test` builds first.)
 */
import { describe, expect, it } from "@effect/vitest"
import { freePort, ServiceProcess, TestClient } from "./support.js"

const start = async (env: Record<string, string> = {}) => {
  const port = await freePort()
  const service = ServiceProcess.start({ PORT: String(port), HOST: "127.0.0.1", ...env })
  await service.waitForLog("listening")
  return { service, url: `ws://127.0.0.1:${port}/api/v1/ws/events`, http: `http://127.0.0.1:${port}` }
}

describe("node dist/main.js", () => {
  it("exits 0 on SIGTERM after closing every client with 1001", async () => {
    const { service, url, http } = await start({ SHUTDOWN_TIMEOUT: "5s" })
    const clients = await Promise.all([1, 2, 3].map(() => TestClient.connect(url)))
    const health = await fetch(`${http}/health`)
    expect(health.status).toBe(200)
    service.child.kill("SIGTERM")
    const closes = await Promise.all(clients.map((client) => client.closed))
    for (const close of closes) expect(close).toEqual({ code: 1001, reason: "server shutting down" })
    expect(await service.exited).toEqual({ code: 0, signal: null })
    expect(service.output).toContain("\"message\":\"shutting down\"")
  })

  it("a second signal during shutdown does not crash it", async () => {
    const { service, url } = await start({ SHUTDOWN_TIMEOUT: "5s", WS_WRITE_TIMEOUT: "1s" })
    // A client that stops reading keeps the shutdown waiting for its close handshake.
    const stuck = await TestClient.connect(url)
    ;(stuck.ws as any)._socket.pause()
    service.child.kill("SIGTERM")
    await service.waitForLog("shutting down")
    service.child.kill("SIGINT")
    await service.waitForLog("shutdown already in progress")
    expect(await service.exited).toEqual({ code: 0, signal: null })
  })

  it("LOG_FORMAT=pretty writes each line once, in the pretty format only", async () => {
    const port = await freePort()
    const service = ServiceProcess.start({ PORT: String(port), HOST: "127.0.0.1", LOG_FORMAT: "pretty", RABBITMQ_URL: "" })
    await service.waitForOutput("INFO")
    await service.waitForOutput("listening")
    service.child.kill("SIGTERM")
    expect(await service.exited).toEqual({ code: 0, signal: null })
    const lines = service.output.split("\n")
    expect(lines.filter((line) => line.includes("listening"))).toHaveLength(1)
    expect(lines.filter((line) => line.trimStart().startsWith("{"))).toEqual([])
  })

  it("refuses to start on a bad setting, naming the variable", async () => {
    const port = await freePort()
    const service = ServiceProcess.start({ PORT: String(port), WS_PING_PERIOD: "soon" })
    const exit = await service.exited
    expect(exit.code).toBe(1)
    expect(service.output).toContain("WS_PING_PERIOD")
    expect(service.output).toContain("expected a duration")
  })
})
