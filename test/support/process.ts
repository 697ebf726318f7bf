/** Free ports, and the built service as a child process. */
import { type ChildProcess, spawn } from "node:child_process"
import { createServer } from "node:net"

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

  /**
   * Without a broker unless `env` sets `RABBITMQ_URL` (with the test's own exchange and stream or queue). `script`:
   * another build's entry point (the bench tools measure any build).
   */
  static start(env: Record<string, string>, script = "dist/main.js"): ServiceProcess {
    return new ServiceProcess(spawn(process.execPath, [script], {
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

