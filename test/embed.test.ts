/**
 * Embedding, as docs/library.md says, in a program of its own: the package is packed (`npm pack`, which builds
 * dist/ first) and installed into a fresh folder together with the program's own `effect` and
 * `@effect/platform-node` (this clone's locked versions, from npm's cache when it has them). The package brings
 * neither (they are its peers: one copy of each, the program's); TypeScript accepts the program and the document's
 * sample with the document's tsconfig.json; the program composes the layers with its own `effect` and a WebSocket
 * client receives what it broadcasts; and the document's sample runs as written, against the broker (the test's
 * port, exchange and stream given through the environment it reads), until a client has received both of its events.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { Broker, brokerUrl, freePort, TestClient, uniqueNames } from "./support.js"
import { samplesOf } from "./support/samples.js"

const { devDependencies, name, version } = JSON.parse(readFileSync("package.json", "utf8")) as {
  name: string
  version: string
  devDependencies: Record<string, string>
}
const lock = JSON.parse(readFileSync("package-lock.json", "utf8")) as {
  packages: Record<string, { version: string }>
}
/** The version of `dependency` this clone is built and tested with. */
const locked = (dependency: string) => `${dependency}@${lock.packages[`node_modules/${dependency}`]!.version}`

/** What the program installs beside the tarball: its own Effect, and the type packages its TypeScript reads. */
const programOwn = ["effect", "@effect/platform-node", "@types/node", "@types/ws"].map(locked)

/**
 * npm as in a fresh program's folder: npx and `npm run` pass this clone's .npmrc on in the environment, and
 * `legacy-peer-deps` would keep npm from resolving (and checking) the peers as it does for any program.
 */
const npmEnv = Object.fromEntries(
  Object.entries(process.env).filter(([key]) => key.toLowerCase() !== "npm_config_legacy_peer_deps")
)
const npm = (args: ReadonlyArray<string>, cwd: string) =>
  new Promise<string>((resolve, reject) =>
    execFile("npm", [...args, "--no-audit", "--no-fund"], { cwd, env: npmEnv, maxBuffer: 16 * 1024 * 1024 }, (
      error,
      stdout,
      stderr
    ) => error ? reject(new Error(`npm ${args.join(" ")} (in ${cwd}): ${error.message}\n${stdout}${stderr}`)) : resolve(stdout))
  )

/** The program under test, with what it wrote; stopped (killed) after each test if a test left it running. */
class Program {
  output = ""
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  private readonly waiters = new Set<() => void>()
  constructor(readonly child: ChildProcess) {
    const record = (chunk: Buffer) => {
      this.output += chunk
      for (const waiter of this.waiters) waiter()
    }
    child.stdout!.on("data", record)
    child.stderr!.on("data", record)
    this.exited = new Promise((resolve) =>
      child.on("exit", (code, signal) => {
        resolve({ code, signal })
        for (const waiter of this.waiters) waiter()
      })
    )
  }

  /** Waits until the output matches `pattern` (checked whenever the program writes), and returns the match. */
  waitFor(pattern: RegExp, timeoutMs = 20_000): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const match = this.output.match(pattern)
        if (match === null && this.child.exitCode === null && this.child.signalCode === null) return
        this.waiters.delete(check)
        clearTimeout(timer)
        match === null ? reject(new Error(`the program exited before ${pattern}:\n${this.output}`)) : resolve(match)
      }
      const timer = setTimeout(() => {
        this.waiters.delete(check)
        reject(new Error(`no ${pattern} within ${timeoutMs} ms:\n${this.output}`))
      }, timeoutMs)
      this.waiters.add(check)
      check()
    })
  }
}

const programs: Array<Program> = []
const clients: Array<TestClient> = []
afterEach(() => {
  for (const client of clients.splice(0)) client.close()
  for (const program of programs.splice(0)) if (program.child.exitCode === null) program.child.kill("SIGKILL")
})

/** The program's folder: fresh, under the system's temporary folder, removed at the end. */
let app = ""
/** Runs `node <args>` in the program's folder, with this repository's Node (the one the tests run on). */
const run = (args: ReadonlyArray<string>, env: Record<string, string> = {}) => {
  const program = new Program(spawn(process.execPath, args, {
    cwd: app,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  }))
  programs.push(program)
  return program
}

/** The test's own program: the layers without a broker, composed with the program's `effect`. */
const embedProgram = `import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Effect, Layer, Option, References, Schedule } from "effect"
import * as HttpServer from "effect/http/HttpServer"
import { HttpServerLive, Hub, HubConfig, HubLive, Publisher, PublisherLive, RabbitMqConfig } from "effect-event-hub"

const program = Effect.gen(function* () {
  // The package's server, found under the program's own HttpServer service.
  const { address } = yield* HttpServer.HttpServer
  console.log(\`listening on port \${"port" in address ? address.port : "none"}\`)
  const refused = yield* Effect.flip((yield* Publisher).publishEvent("embed.published", { n: 0 }))
  console.log(\`publishing without a broker: \${refused._tag} \${refused.reason}\`)
  const hub = yield* Hub
  // Broadcast until a client is there to receive it (the number of clients it was queued for).
  let n = 0
  const recipients = yield* Effect.suspend(() => hub.broadcast("embed.hello", { from: "the program", n: ++n })).pipe(
    Effect.repeat({ until: (count) => count > 0, schedule: Schedule.spaced("20 millis") })
  )
  console.log(\`embed.hello \${n} queued for \${recipients} client(s)\`)
  return yield* Effect.never
})

const Embedded = HttpServerLive.pipe(
  Layer.provideMerge(HubLive),
  Layer.provideMerge(PublisherLive),
  Layer.provide(HubConfig.layer({ host: "127.0.0.1", port: 0 })),
  Layer.provide(RabbitMqConfig.layer({ url: Option.none() })),
  Layer.provide(Layer.succeed(References.TracerEnabled, false))
)

NodeRuntime.runMain(program.pipe(Effect.provide(Embedded)))
`

/** The one sample of docs/library.md that satisfies `test`. */
const librarySample = (what: string, test: (sample: { lang: string; code: string }) => boolean) => {
  const found = samplesOf("docs/library.md").filter(test)
  expect(found, `one ${what} in docs/library.md`).toHaveLength(1)
  return found[0]!.code
}

/** The package names a declaration file imports from. */
const importedPackages = (declarations: string) =>
  [...declarations.matchAll(/(?:from |import\()"([^".][^"]*)"/g)].map(([, specifier]) =>
    specifier!.startsWith("@") ? specifier!.split("/").slice(0, 2).join("/") : specifier!.split("/")[0]!
  )

/** Every file under `dir`. */
const filesUnder = (dir: string): Array<string> =>
  readdirSync(dir).flatMap((entry) => {
    const path = join(dir, entry)
    return statSync(path).isDirectory() ? filesUnder(path) : [path]
  })

describe("embedding the packed package in a program with its own effect (docs/library.md)", () => {
  beforeAll(async () => {
    app = mkdtempSync(join(tmpdir(), `${name}-embed-`))
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "program", private: true, type: "module" }, null, 2))
    // As docs/library.md says: pack this clone (prepack builds dist/), install the tarball beside the program's own
    // Effect. npm's cache serves what it holds; the registry the rest.
    await npm(["pack", "--pack-destination", app], ".")
    await npm(["install", "--prefer-offline", `./${name}-${version}.tgz`, ...programOwn], app)
  }, 300_000)
  afterAll(() => {
    if (app !== "") rmSync(app, { recursive: true, force: true })
  })

  it("effect and @effect/platform-node are the package's peers: one copy of each, the program's", async () => {
    const installed = join(app, "node_modules", name)
    const manifest = JSON.parse(readFileSync(join(installed, "package.json"), "utf8"))
    // Every Effect package the declarations name (HttpServerLive's type carries the platform's NodeServices) is a
    // peer, with the range this clone is developed against; none is a dependency.
    const named = new Set(
      filesUnder(join(installed, "dist")).filter((file) => file.endsWith(".d.ts")).flatMap((file) =>
        importedPackages(readFileSync(file, "utf8"))
      ).filter((dependency) => dependency === "effect" || dependency.startsWith("@effect/"))
    )
    expect([...named].sort()).toEqual(["@effect/platform-node", "effect"])
    for (const dependency of named) {
      expect(manifest.peerDependencies[dependency], dependency).toBe(devDependencies[dependency])
      expect(manifest.dependencies?.[dependency], dependency).toBeUndefined()
    }
    // npm finds one copy of each, at the top of the program's node_modules (the package's own copy would be nested
    // under it); `npm ls` also fails on a missing or unmet peer.
    const copies = (await npm(["ls", "--all", "--parseable", "effect", "@effect/platform-node"], app)).trim().split("\n")
    expect(copies.sort()).toEqual([join(app, "node_modules/@effect/platform-node"), join(app, "node_modules/effect")])
    expect(existsSync(join(installed, "node_modules"))).toBe(false)
    for (const dependency of named) {
      const found = JSON.parse(readFileSync(join(app, "node_modules", dependency, "package.json"), "utf8"))
      expect(`${dependency}@${found.version}`).toBe(locked(dependency))
    }
  })

  it("TypeScript accepts the program and the document's sample with the document's tsconfig.json", async () => {
    writeFileSync(join(app, "embed.ts"), embedProgram)
    writeFileSync(join(app, "main.ts"), librarySample("sample with runMain", (sample) => sample.code.includes("runMain(")))
    const tsconfig = JSON.parse(librarySample("tsconfig.json", (sample) => sample.code.includes("\"compilerOptions\"")))
    writeFileSync(join(app, "tsconfig.json"), JSON.stringify({ ...tsconfig, files: ["main.ts", "embed.ts"] }, null, 2))
    // This clone's TypeScript: the program's folder decides what it resolves (the installed package, its effect).
    const tsc = run([join(process.cwd(), "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json", "--pretty", "false"])
    const { code } = await tsc.exited
    expect(tsc.output).toBe("")
    expect(code).toBe(0)
  }, 120_000)

  it("the program composes the layers with its own effect, and a WebSocket client receives what it broadcasts", async () => {
    writeFileSync(join(app, "embed.ts"), embedProgram)
    // Node runs the TypeScript as it is, its types removed.
    const program = run(["embed.ts"])
    const [, port] = await program.waitFor(/listening on port (\d+)/)
    await program.waitFor(/publishing without a broker: PublishError Disabled/)
    const client = await TestClient.connect(`ws://127.0.0.1:${port}/api/v1/ws/events`)
    clients.push(client)
    await client.until(() => client.events.length > 0, "the program's event")
    expect(client.events[0]).toMatchObject({ type: "embed.hello", data: { from: "the program" } })
    await program.waitFor(new RegExp(`embed.hello ${client.events[0]!.data.n} queued for 1 client\\(s\\)`))
    // SIGTERM interrupts runMain's program: the layers are released (the server closes its clients with 1001), and
    // Effect 4's runMain exits with 130 for an interruption.
    program.child.kill("SIGTERM")
    expect(await client.closed).toMatchObject({ code: 1001 })
    expect(await program.exited).toEqual({ code: 130, signal: null })
  }, 60_000)

  it("the document's sample runs as written: its client receives the published event and the local one", async () => {
    writeFileSync(join(app, "main.ts"), librarySample("sample with runMain", (sample) => sample.code.includes("runMain(")))
    // The sample reads its settings from the environment: the test's port, and the test's own exchange and stream
    // on the local broker (the defaults would be the shared ones of the README's quick start).
    const { exchange, queue } = uniqueNames("embed")
    const stream = `${queue}.stream`
    const port = await freePort()
    const sample = run(["main.ts"], {
      PORT: String(port),
      HOST: "127.0.0.1",
      RABBITMQ_URL: brokerUrl,
      RABBITMQ_EXCHANGE: exchange,
      RABBITMQ_STREAM: stream,
      LOG_FORMAT: "json",
      LOG_LEVEL: "info"
    })
    try {
      await sample.waitFor(/"message":"history refilled from the stream; events are live"/)
      const client = await TestClient.connect(`ws://127.0.0.1:${port}/api/v1/ws/events`)
      clients.push(client)
      // Its next round (every 5 seconds) publishes custom.event through the exchange and the stream, and broadcasts
      // custom.local to this instance's clients.
      const received = (type: string) => client.events.find((event) => event.type === type)
      await client.until(() => received("custom.event") !== undefined && received("custom.local") !== undefined, "both events", 20_000)
      expect(received("custom.event")!.data).toMatchObject({ message: "Something happened", value: 42 })
      expect(received("custom.local")!.data).toMatchObject({ value: 43 })
      await sample.waitFor(/"message":"sent to 1 local clients"/)
      sample.child.kill("SIGTERM")
      expect(await client.closed).toMatchObject({ code: 1001 })
      expect((await sample.exited).code).toBe(130)
    } finally {
      if (sample.child.exitCode === null) sample.child.kill("SIGKILL")
      await sample.exited
      const broker = await Broker.open()
      await broker.cleanup({ exchange, queues: [stream] })
      await broker.close()
    }
  }, 60_000)
})
