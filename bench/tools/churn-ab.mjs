// A churn-only A/B harness: server CPU per connect+subscribe+close cycle, no steady clients, no events (the hub's
// cycle ends at its hub.subscribed reply, the bare server's right after the open). For comparing two builds back to
// back (copy dist/ aside before a change); `PROF=<dir>` adds --cpu-prof to the server; `RATE=<n>` runs n cycles per
// second instead of loops at saturation (a steadier figure: the servers' cost per cycle depends on how loaded they are).
//   node bench/tools/churn-ab.mjs <path to a build's main.js | baseline> [seconds] [loops]
import { fork, spawn } from "node:child_process"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import WebSocket from "ws"
import { cpuMicros } from "../proc.mjs"

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
const [target, seconds = "5", loopsArg = "50"] = process.argv.slice(2)
const port = 30000 + Math.floor(Math.random() * 2000)
const env = { ...process.env, PORT: String(port), HOST: "127.0.0.1", RABBITMQ_URL: "", LOG_LEVEL: "warn",
  WS_MAX_CONNECTIONS: "1000000", WS_MAX_CONNECTIONS_PER_IP: "1000000", WS_CONNECTION_RATE_LIMIT: "1000000", WS_CONNECTION_RATE_BURST: "1000000", MODE: "send" }
const bare = target === "baseline"
const child = bare ? fork(join(root, "bench", "servers", "baseline.mjs"), [], { env, stdio: "inherit", execArgv: process.env.PROF ? ["--cpu-prof", "--cpu-prof-dir=" + process.env.PROF] : [] })
  : spawn(process.execPath, [...(process.env.PROF ? ["--cpu-prof", "--cpu-prof-dir=" + process.env.PROF] : []), target], { env, stdio: "inherit" })
const cpu = () => cpuMicros(child.pid)
for (;;) { try { if ((await fetch(`http://127.0.0.1:${port}/metrics`)).ok) break } catch {} await new Promise((r) => setTimeout(r, 50)) }
let cycles = 0, running = true, addr = 0
const cycle = () => new Promise((resolve) => {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/api/v1/ws/events`, { perMessageDeflate: false, localAddress: `127.0.0.${2 + (addr++ % 253)}` })
  ws.on("error", () => resolve())
  ws.on("open", () => { ws.send("{\"action\":\"subscribe\",\"event_types\":[\"#\"]}"); if (bare) setImmediate(() => ws.close(1000)) })
  ws.on("message", () => ws.close(1000))
  ws.on("close", () => { cycles++; resolve() })
})
const loop = async () => { while (running) await cycle() }
const loops = []
// RATE=<cycles/s>: cycles started at a fixed rate (open loop) instead of `loops` closed loops at saturation.
const rate = Number(process.env.RATE ?? 0)
if (rate > 0) {
  const start = performance.now()
  let started = 0
  loops.push((async () => {
    while (running) {
      const due = Math.floor(((performance.now() - start) / 1000) * rate)
      for (; started < due; started++) loops.push(cycle())
      await new Promise((r) => setTimeout(r, 1))
    }
  })())
} else for (let i = 0; i < Number(loopsArg); i++) loops.push(loop())
await new Promise((r) => setTimeout(r, 1500)) // warm-up
const c0 = cycles, cpu0 = cpu(), t0 = Date.now()
await new Promise((r) => setTimeout(r, Number(seconds) * 1000))
const n = cycles - c0, used = cpu() - cpu0, s = (Date.now() - t0) / 1000
running = false
await Promise.all(loops)
console.log(`${target}: ${(used / n).toFixed(0)} us/cycle, ${(n / s).toFixed(0)} cycles/s, server ${(used / 1e6 / s).toFixed(2)} core`)
child.kill("SIGTERM")
