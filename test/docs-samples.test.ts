/**
 * The code samples of README.md and docs/ cannot go stale: every TypeScript, TSX and JavaScript block type-checks
 * under `strict` against the built package (`effect-event-hub` resolves to this package's own `exports`, so to
 * dist/ and its .d.ts), every JSON block parses, and the samples that run are run: the Node and Effect clients of
 * docs/clients.md against the built hub, and the README's "see an event arrive" recipe, twice.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { mkdirSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { transform } from "esbuild"
import { afterEach, describe, expect, it } from "vitest"
import { Broker, brokerUrl, freePort, ServiceProcess, uniqueNames } from "./support.js"
import { allSamples, type Sample, samplesOf } from "./support/samples.js"

// Inside the package, so that `effect-event-hub/...` resolves to its own exports; git-ignored.
const workDir = "test-results/samples"

/**
 * What the samples call but the application defines: its own functions and components. Anything else they use must
 * come from their imports.
 */
const application = `
declare function reloadFromApi(): void
declare function showBest(sharpeRatio: number): void
declare function setBadge(state: string): void
declare function refetch(): void
declare function refetchRun(runId: string): void
declare function toast(message: unknown): void
declare function showGap(gap: unknown): void
declare function handle(event: unknown): void
declare const ws: WebSocket
declare const Chart: (props: { points: ReadonlyArray<number> }) => import("react").ReactElement
`

const checked = (sample: Sample) => ["ts", "tsx", "js"].includes(sample.lang)
const fileOf = (sample: Sample) =>
  `${sample.file.replace(/[/.]/g, "_")}_${sample.line}.${sample.lang === "js" ? "js" : sample.lang}`

const children: Array<ChildProcess> = []
afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill("SIGKILL")
})

/** Runs `command` with `sh -c` (in the repository, as a reader would), recording its output. */
const shell = (command: string) => {
  const child = spawn("sh", ["-c", command], { stdio: ["ignore", "pipe", "pipe"] })
  children.push(child)
  const run = { child, output: "" }
  child.stdout.on("data", (chunk) => (run.output += chunk))
  child.stderr.on("data", (chunk) => (run.output += chunk))
  return run
}

/** Waits until `read()` holds `condition` (at most 20 s). */
const until = async (condition: () => boolean, what: string, read: () => string = () => "") => {
  const deadline = Date.now() + 20_000
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within 20 s\n${read()}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** The clients the hub at `http` counts. */
const clientCount = async (http: string) =>
  ((await (await fetch(`${http}/metrics`)).json()) as { websocket: { connected_clients: number } }).websocket.connected_clients

/** The built hub without a broker, publishing allowed. */
const startHub = async () => {
  const port = await freePort()
  const service = ServiceProcess.start({ PORT: String(port), HOST: "127.0.0.1", PUBLISH_TOKEN: "samples" })
  children.push(service.child)
  await service.waitForLog("listening")
  const http = `http://127.0.0.1:${port}`
  const publish = async (type: string, data: unknown) => {
    const response = await fetch(`${http}/api/v1/events`, {
      method: "POST",
      headers: { authorization: "Bearer samples", "content-type": "application/json" },
      body: JSON.stringify({ type, data })
    })
    expect(response.status).toBe(202)
  }
  return { port, http, publish }
}

/** The one sample of `file` whose code contains `marker`. */
const sampleWith = (file: string, marker: string) => {
  const found = samplesOf(file).filter((sample) => sample.code.includes(marker))
  expect(found, `one sample of ${file} with ${marker}`).toHaveLength(1)
  return found[0]!
}

/** A TypeScript sample made runnable (types stripped), in the package, with `localhost:8080` replaced by `port`. */
const runnable = async (sample: Sample, port: number) => {
  const { code } = await transform(sample.code.replaceAll("localhost:8080", `127.0.0.1:${port}`), {
    loader: "ts",
    format: "esm"
  })
  mkdirSync(workDir, { recursive: true })
  const path = join(workDir, fileOf(sample).replace(/\.tsx?$/, ".mjs"))
  writeFileSync(path, code)
  const child = spawn(process.execPath, [path], { stdio: ["ignore", "pipe", "pipe"] })
  children.push(child)
  const run = { child, output: "" }
  child.stdout.on("data", (chunk) => (run.output += chunk))
  child.stderr.on("data", (chunk) => (run.output += chunk))
  return run
}

describe("the code samples of README.md and docs/", () => {
  it("every ts, tsx and js sample type-checks under strict against the built package", async () => {
    const samples = allSamples().filter(checked)
    // README (2), clients (4), library (1), protocol (2) at the time of writing: a broken extraction finds fewer.
    expect(samples.length).toBeGreaterThanOrEqual(9)
    rmSync(workDir, { recursive: true, force: true })
    mkdirSync(workDir, { recursive: true })
    for (const sample of samples) {
      // Each sample a module of its own (a sample without imports would share one global scope with the others).
      writeFileSync(join(workDir, fileOf(sample)), `${sample.code}\nexport {}\n`)
    }
    writeFileSync(join(workDir, "application.d.ts"), application)
    // The settings docs/library.md gives an embedding program, with JSX for the React samples. JavaScript samples are
    // checked too, under strict but for implicit `any` (plain JavaScript has no annotations to give).
    const compilerOptions = {
      target: "ES2022",
      module: "NodeNext",
      moduleResolution: "NodeNext",
      lib: ["ES2022", "DOM", "DOM.Iterable"],
      strict: true,
      types: ["node"],
      jsx: "react-jsx",
      noEmit: true,
      // The package's own declarations are checked whole by test/install.test.ts; here, the samples.
      skipLibCheck: true
    }
    writeFileSync(join(workDir, "tsconfig.json"), JSON.stringify({ compilerOptions, include: ["*.ts", "*.tsx"] }))
    writeFileSync(join(workDir, "tsconfig.js.json"), JSON.stringify({
      compilerOptions: { ...compilerOptions, allowJs: true, checkJs: true, noImplicitAny: false },
      include: ["*.js", "application.d.ts"]
    }))
    const tsc = (project: string) =>
      new Promise<{ code: number; output: string }>((resolve) =>
        execFile(
          process.execPath,
          ["node_modules/typescript/bin/tsc", "-p", join(workDir, project), "--pretty", "false"],
          (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, output: stdout + stderr })
        )
      )
    const results = [await tsc("tsconfig.json"), await tsc("tsconfig.js.json")]
    // Each error named by its document and line: test-results/samples/docs_clients_md_52.ts(3,1) -> docs/clients.md:55.
    const located = results.map((result) => result.output).join("").replace(
      /\S*?([A-Za-z]+)_md_(\d+)\.(?:tsx?|js)\((\d+),(\d+)\)/g,
      (_, doc, fence, line) => `${doc === "README" ? "README" : `docs/${doc}`}.md:${Number(fence) + Number(line)}`
    )
    expect(located).toBe("")
    expect(results.map((result) => result.code)).toEqual([0, 0])
  }, 180_000)

  it("every json sample parses", () => {
    const samples = allSamples().filter((sample) => sample.lang === "json")
    expect(samples.length).toBeGreaterThanOrEqual(3)
    for (const sample of samples) expect(() => JSON.parse(sample.code), `${sample.file}:${sample.line}`).not.toThrow()
  })

  it("the Node client sample (docs/clients.md) prints the events the hub sends", async () => {
    const hub = await startHub()
    const run = await runnable(sampleWith("docs/clients.md", "connect(\"ws://localhost:8080/api/v1/ws/events\", { WebSocket })"), hub.port)
    await waitForClient(hub.http)
    // Counted once connected, the client subscribes a moment later: events published before that pass it by.
    await publishUntil(() => run.output.includes(`samples.node {"n":1}`), () => hub.publish("samples.node", { n: 1 }), run)
  }, 60_000)

  it("the Effect client sample (docs/clients.md) logs the events it streams", async () => {
    const hub = await startHub()
    const run = await runnable(sampleWith("docs/clients.md", "HubConnection.layer("), hub.port)
    await waitForClient(hub.http)
    // The sample's stream starts once its layer is built (connected): until it runs, events pass it by.
    let n = 0
    await publishUntil(
      () => run.output.includes("backtest.completed") && run.output.includes("42"),
      () => hub.publish("backtest.completed", { job_id: "42", n: n++ }),
      run
    )
  }, 60_000)

  it("the README's recipe prints the event each time it is run", async () => {
    const recipe = sampleWith("README.md", "require(\"amqplib\")")
    const [subscriber, publisher] = recipe.code.split("\n").filter((line) => line.startsWith("node -e"))
    expect(subscriber).toContain("require(\"ws\")")
    const { exchange, queue } = uniqueNames("readme")
    const stream = `${queue}.stream`
    const port = await freePort()
    // The recipe's own exchange and port are the test's; everything else is run as written.
    const adapt = (command: string) =>
      command.replaceAll("freqsearch_events", exchange).replaceAll("localhost:8080", `127.0.0.1:${port}`)
    const service = ServiceProcess.start({
      PORT: String(port),
      HOST: "127.0.0.1",
      RABBITMQ_URL: brokerUrl,
      RABBITMQ_EXCHANGE: exchange,
      RABBITMQ_STREAM: stream
    })
    children.push(service.child)
    try {
      await service.waitForLog("history refilled from the stream; events are live", 20_000)
      const client = shell(adapt(subscriber!))
      await waitForClient(`http://127.0.0.1:${port}`)
      const printed = () => client.output.split("\n").filter((line) => line.startsWith("{"))
      for (const run of [1, 2]) {
        const publishing = shell(adapt(publisher!))
        await new Promise((resolve) => publishing.child.on("exit", resolve))
        expect(publishing.child.exitCode, publishing.output).toBe(0)
        await until(() => printed().length === run, `event ${run} printed`, () => client.output)
      }
      const [first, second] = printed().map((line) => JSON.parse(line))
      for (const event of [first, second]) {
        expect(event).toMatchObject({ type: "backtest.completed", data: { job_id: "42" } })
      }
      expect(first.data.event_id).not.toBe(second.data.event_id)
    } finally {
      service.child.kill("SIGTERM")
      await service.exited
      const broker = await Broker.open()
      await broker.cleanup({ exchange, queues: [stream] })
      await broker.close()
    }
  }, 60_000)
})

/** Publishes again until `seen` (polling for 200 ms after each), at most 100 times. */
const publishUntil = async (seen: () => boolean, publish: () => Promise<void>, run: { readonly output: string }) => {
  for (let attempt = 0; !seen(); attempt++) {
    if (attempt === 100) throw new Error(`never seen after 100 publishes:\n${run.output}`)
    await publish()
    for (let poll = 0; poll < 10 && !seen(); poll++) await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** Until the hub at `http` has a client (the sample's). */
const waitForClient = async (http: string) => {
  const deadline = Date.now() + 20_000
  while ((await clientCount(http)) < 1) {
    if (Date.now() > deadline) throw new Error("the sample never connected")
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
