#!/usr/bin/env node
// Gets the client library into empty folders the ways docs/clients.md documents ("Getting the library"), then uses
// it as an app would: a Node program with `ws` receives an event from the built hub, a browser page is bundled with
// esbuild, and TypeScript checks a sample under `strict` against the installed package's types.
//
//   node scripts/try-install.mjs                      both routes: a path, then a tarball (`npm pack`)
//   node scripts/try-install.mjs --route path --offline
//
// The tarball route installs the package's dependencies from the registry (or npm's cache); the path route installs
// none, and with --offline links `ws` and the type packages from this clone instead of asking the registry for them
// (test/install.test.ts runs it that way). Needs `npm run build` first. Exits 1 at the first thing that fails.
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..")
const argument = (name) => {
  const index = process.argv.indexOf(`--${name}`)
  return index === -1 ? undefined : process.argv[index + 1]
}
const offline = process.argv.includes("--offline")
const routes = (argument("route") ?? "all") === "all" ? ["path", "tarball"] : [argument("route")]
const { name, version } = JSON.parse(readFileSync(join(repo, "package.json"), "utf8"))

const say = (line) => process.stdout.write(`${line}\n`)
const fail = (message) => {
  process.stderr.write(`try-install: ${message}\n`)
  process.exit(1)
}
const run = (command, args, cwd) => {
  try {
    return execFileSync(command, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })
  } catch (error) {
    fail(`${command} ${args.join(" ")} (in ${cwd}) failed:\n${error.stdout ?? ""}${error.stderr ?? error.message}`)
  }
}
const npm = (args, cwd) => run("npm", [...args, "--no-audit", "--no-fund"], cwd)

const freePort = () =>
  new Promise((done) => {
    const server = createServer()
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address()
      server.close(() => done(port))
    })
  })

/** Waits until `read()` holds `text` (at most 20 s). */
const waitFor = async (read, text, what) => {
  const deadline = Date.now() + 20_000
  while (!read().includes(text)) {
    if (Date.now() > deadline) fail(`no ${what} within 20 s; output so far:\n${read()}`)
    await new Promise((done) => setTimeout(done, 20))
  }
}

/** The built hub, without a broker, publishing allowed: `node dist/main.js`. */
const startHub = async () => {
  const port = await freePort()
  const child = spawn(process.execPath, ["dist/main.js"], {
    cwd: repo,
    env: { ...process.env, PORT: String(port), HOST: "127.0.0.1", RABBITMQ_URL: "", PUBLISH_TOKEN: "try", LOG_LEVEL: "warn" },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let output = ""
  child.stdout.on("data", (chunk) => (output += chunk))
  child.stderr.on("data", (chunk) => (output += chunk))
  for (const deadline = Date.now() + 20_000; ;) {
    const live = await fetch(`http://127.0.0.1:${port}/health/live`).catch(() => undefined)
    if (live?.ok) break
    if (Date.now() > deadline || child.exitCode !== null) fail(`the hub did not start:\n${output}`)
    await new Promise((done) => setTimeout(done, 50))
  }
  return { port, stop: () => child.kill("SIGTERM") }
}

const nodeApp = `import WebSocket from "ws"
import { connect } from "effect-event-hub/client"

const hub = connect(process.argv[2], { WebSocket })
hub.onState((state) => console.log("state", state))
hub.on("#", (event) => {
  console.log("event", event.type, JSON.stringify(event.data))
  hub.close()
})
`

const typedApp = `import WebSocket from "ws"
import { connect, type HubEvent } from "effect-event-hub/client"

type Events = { "try.install": { n: number } }
const hub = connect<Events>("ws://localhost:8080/api/v1/ws/events", { WebSocket, eventTypes: ["try.#"] })
hub.on("try.install", (event: HubEvent<"try.install", { n: number }>) => console.log(event.data.n + 1))
hub.onGap((gap) => console.log(gap.reason))
const browser = connect("ws://localhost:8080/api/v1/ws/events", { WebSocket: globalThis.WebSocket })
browser.close()
`

const tsconfig = {
  compilerOptions: {
    target: "ES2022",
    module: "NodeNext",
    moduleResolution: "NodeNext",
    lib: ["ES2022", "DOM"],
    strict: true,
    types: ["node"],
    noEmit: true
  },
  files: ["typed.ts"]
}

/** A Node program in `app` receives an event the hub broadcasts. */
const tryNode = async (app) => {
  const hub = await startHub()
  try {
    const child = spawn(process.execPath, ["node-app.mjs", `ws://127.0.0.1:${hub.port}/api/v1/ws/events`], {
      cwd: app,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    child.stdout.on("data", (chunk) => (output += chunk))
    child.stderr.on("data", (chunk) => (output += chunk))
    await waitFor(() => output, "state connected", "connection")
    const posted = await fetch(`http://127.0.0.1:${hub.port}/api/v1/events`, {
      method: "POST",
      headers: { authorization: "Bearer try", "content-type": "application/json" },
      body: JSON.stringify({ type: "try.install", data: { n: 1 } })
    })
    if (posted.status !== 202) fail(`POST answered ${posted.status}`)
    await waitFor(() => output, `event try.install {"n":1}`, "event")
    child.kill()
  } finally {
    hub.stop()
  }
}

/** A page of `app` bundled for the browser: the client and the React binding, nothing of the server side. */
const tryBundle = async (app) => {
  const { build } = await import(pathToFileURL(join(repo, "node_modules/esbuild/lib/main.js")).href)
  writeFileSync(join(app, "page.js"), `import { connect } from "effect-event-hub/client"
import { HubProvider } from "effect-event-hub/react"
window.hub = connect("ws://localhost:8080/api/v1/ws/events")
window.HubProvider = HubProvider
`)
  const result = await build({
    entryPoints: ["page.js"],
    absWorkingDir: app,
    bundle: true,
    minify: true,
    format: "iife",
    platform: "browser",
    target: "es2022",
    // The app's own React, not the library's business here.
    external: ["react"],
    write: false,
    logLevel: "silent"
  }).catch((error) => fail(`esbuild: ${error.message}`))
  const bytes = result.outputFiles[0].contents.length
  if (bytes > 20_000) fail(`the browser bundle is ${bytes} bytes: something of the server side came in`)
  return bytes
}

for (const route of routes) {
  const app = mkdtempSync(join(tmpdir(), `${name}-${route}-`))
  try {
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }, null, 2))
    if (route === "path") {
      npm(["install", ...(offline ? ["--offline"] : []), repo], app)
    } else if (route === "tarball") {
      // In the app's folder, as a copied tarball would be.
      npm(["pack", "--pack-destination", app], repo)
      npm(["install", ...(offline ? ["--offline"] : ["--prefer-offline"]), `./${name}-${version}.tgz`], app)
    } else {
      fail(`unknown route ${route} (path or tarball)`)
    }
    // What the app adds itself: `ws` for Node, the type packages for TypeScript. Offline, this clone's copies.
    const own = ["ws", "@types/ws", "@types/node"]
    npm(["install", ...(offline ? ["--offline", ...own.map((dep) => join(repo, "node_modules", dep))] : own)], app)
    say(`${route}: installed into ${app}`)

    writeFileSync(join(app, "node-app.mjs"), nodeApp)
    await tryNode(app)
    say(`${route}: a Node program with ws received an event from the hub`)

    say(`${route}: a browser page bundled with esbuild: ${await tryBundle(app)} bytes (minified)`)

    writeFileSync(join(app, "typed.ts"), typedApp)
    writeFileSync(join(app, "tsconfig.json"), JSON.stringify(tsconfig, null, 2))
    run(process.execPath, [join(repo, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json", "--pretty", "false"], app)
    say(`${route}: TypeScript (strict) accepts a sample using the installed types, ws's WebSocket without a cast`)
  } finally {
    rmSync(app, { recursive: true, force: true })
  }
}
say("try-install: ok")
