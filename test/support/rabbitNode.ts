/**
 * RabbitMQ nodes of the tests' own, for tests that restart or stop a broker: never the shared node on
 * 127.0.0.1:5672 (rabbit@localhost), which other tests and programs use.
 *
 * A node is Debian's `rabbitmq-server -detached` run as the `rabbitmq` user (its home holds the Erlang cookie
 * that every node and `rabbitmqctl` share) with an environment of its own: a unique node name
 * (`hubtest_<pid>_<random>@localhost`), free ports on 127.0.0.1 below the kernel's ephemeral range (AMQP and
 * Erlang distribution), its own data, log, config, enabled-plugins (`[].`: no management, no other listener), pid
 * and env files in a directory of its own. It is controlled with `rabbitmqctl -n <its name>` only, whose own
 * distribution ports are a free range of this process's (not the CLI's default 35672-35682).
 *
 * Every node started is stopped and its directory removed by `destroy()`; if a test forgets it, or fails, or the
 * process exits, an exit hook kills what is left (SIGKILL by pid: the directory goes anyway), and a watchdog
 * process does the same if this process is killed outright.
 *
 * Measured on this 2-core machine (RabbitMQ 3.10.8, Erlang 25), shared with other work (load average 7 to 10), ranges
 * over about ten runs (each node records its own in `timings`):
 * - `RabbitNode.start()` (fresh data): 7 to 16 s, usually 7 to 11 (the VM takes 3.5 to 5 s before it logs, then
 *   about 2.6 s before the first boot step; waiting for epmd then one `await_startup` adds about 0.2 s);
 * - `stopApp()` 0.7 to 8.5 s (usually 1.4 to 3.7), `startApp()` (with `await_startup` and a guest login) 2.6 to
 *   23 s (usually 3.5 to 9.6), `stop()` 2.3 to 9 s (usually 2.5 to 3), `start()` on the same data 6.8 to 14 s,
 *   `destroy()` about 2 s; each `rabbitmqctl` call costs 0.7 to 2 s by itself;
 * - `RabbitCluster.start(3)`: 24 to 35 s (three nodes started in parallel 14.5 to 20 s, the two joins one after the
 *   other 7 to 12.4 s, every node seeing all three running 2 to 2.8 s). Two joins at once were hardly faster (9.6
 *   to 10.7 s) and failed once in three tries.
 */
import * as amqp from "amqplib"
import { execFileSync, spawn } from "node:child_process"
import { chownSync, closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { connect as tcpConnect, createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"

const binDir = "/usr/lib/rabbitmq/bin"
/** The rabbitmq user's home: its Erlang cookie is the one every node and CLI call must share. */
const rabbitHome = "/var/lib/rabbitmq"
/** Node names carry this prefix, and each beam process carries `-hubtest_node <name>` on its command line. */
const namePrefix = "hubtest"

// ---------------------------------------------------------------------------
// Running things as the rabbitmq user
// ---------------------------------------------------------------------------

const rabbitUser = (() => {
  let ids: { uid: number; gid: number } | undefined
  return () => {
    if (ids) return ids
    const uid = Number(execFileSync("id", ["-u", "rabbitmq"]).toString().trim())
    const gid = Number(execFileSync("id", ["-g", "rabbitmq"]).toString().trim())
    ids = { uid, gid }
    return ids
  }
})()

/** spawn options that run as the rabbitmq user: setuid from root, nothing when already that user. */
const asRabbit = (): { uid?: number; gid?: number } => {
  const { gid, uid } = rabbitUser()
  const me = process.getuid?.()
  if (me === uid) return {}
  if (me !== 0) throw new Error("RabbitNode needs to run as root or as the rabbitmq user (it starts rabbitmq-server)")
  return { uid, gid }
}

/**
 * The whole environment of a RabbitMQ script: nothing inherited but PATH, so that a `RABBITMQ_*` variable of the
 * caller (or the system's /etc/rabbitmq/rabbitmq-env.conf, replaced by `envFile`) cannot change the node.
 */
const baseEnv = (envFile: string): Record<string, string> => ({
  PATH: process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  LANG: "C.UTF-8",
  LC_ALL: "C.UTF-8",
  HOME: rabbitHome,
  RABBITMQ_CONF_ENV_FILE: envFile,
  ERL_EPMD_ADDRESS: "127.0.0.1",
  // Distribution (node to node, CLI to node) on the loopback interface only, as the system's node does.
  ERL_FLAGS: "-kernel inet_dist_use_interface {127,0,0,1}"
})

export interface CommandResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs a file as the rabbitmq user; never rejects (the caller looks at `code`), but kills it after `timeoutMs`. */
const run = (file: string, args: ReadonlyArray<string>, env: Record<string, string>, cwd: string, timeoutMs: number) =>
  new Promise<CommandResult>((resolve) => {
    const child = spawn(file, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"], ...asRabbit() })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk) => (stdout += chunk))
    child.stderr.on("data", (chunk) => (stderr += chunk))
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs)
    child.on("error", (error) => {
      clearTimeout(timer)
      resolve({ code: -1, stdout, stderr: `${stderr}${String(error)}` })
    })
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })

// ---------------------------------------------------------------------------
// Ports and directories
// ---------------------------------------------------------------------------

/** Below the kernel's ephemeral range (32768-60999 here), so that no outgoing connection takes a port of a stopped node. */
const portRange = (() => {
  try {
    const [low] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number)
    if (low !== undefined && low > 21_000) return { from: 20_000, to: low - 1 }
  } catch {
    // not Linux: any high range
  }
  return { from: 20_000, to: 32_000 }
})()

const handedOut = new Set<number>()

const bindTest = (port: number) =>
  new Promise<boolean>((resolve) => {
    const server = createServer()
    server.once("error", () => resolve(false))
    server.listen({ port, host: "127.0.0.1", exclusive: true }, () => server.close(() => resolve(true)))
  })

/** `count` consecutive ports, free on 127.0.0.1 now (bind-tested), none handed out before by this process. */
export const freePortBlock = async (count = 1): Promise<number> => {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = portRange.from + Math.floor(Math.random() * (portRange.to - portRange.from - count))
    const ports = Array.from({ length: count }, (_, i) => base + i)
    if (ports.some((port) => handedOut.has(port))) continue
    if ((await Promise.all(ports.map(bindTest))).every(Boolean)) {
      ports.forEach((port) => handedOut.add(port))
      return base
    }
  }
  throw new Error(`no ${count} free consecutive ports in ${portRange.from}-${portRange.to}`)
}

/** This process's directory for its nodes, and its env file for the CLI (empty: the system's is not read). */
let processRoot: string | undefined
const processState = (() => {
  let state: Promise<{ root: string; cliEnv: Record<string, string> }> | undefined
  return () => {
    state ??= (async () => {
      const root = join(tmpdir(), `${namePrefix}-rabbit-${process.pid}`)
      mkdirSync(root, { recursive: true })
      processRoot = root
      const envFile = join(root, "cli-env.conf")
      writeFileSync(envFile, "")
      chownTree([root, envFile])
      // The CLI's own distribution ports (an Erlang node per call): a free block of ours, 16 calls at once at most.
      const cliPorts = await freePortBlock(16)
      return {
        root,
        cliEnv: {
          ...baseEnv(envFile),
          RABBITMQ_CTL_DIST_PORT_MIN: String(cliPorts),
          RABBITMQ_CTL_DIST_PORT_MAX: String(cliPorts + 15)
        }
      }
    })()
    return state
  }
})()

const chownTree = (paths: ReadonlyArray<string>) => {
  const { gid, uid } = rabbitUser()
  if (process.getuid?.() !== 0) return
  for (const path of paths) chownSync(path, uid, gid)
}

// ---------------------------------------------------------------------------
// epmd: is a node name registered (its VM up)?
// ---------------------------------------------------------------------------

/** The names registered with epmd on 127.0.0.1:4369 (NAMES_REQ). */
export const epmdNames = (): Promise<Array<string>> =>
  new Promise((resolve, reject) => {
    const socket = tcpConnect(4369, "127.0.0.1")
    const chunks: Array<Buffer> = []
    socket.on("connect", () => socket.write(Buffer.from([0, 1, 110])))
    socket.on("data", (chunk) => chunks.push(chunk))
    socket.on("error", reject)
    socket.on("close", () => {
      const text = Buffer.concat(chunks).subarray(4).toString("latin1")
      resolve([...text.matchAll(/^name (\S+) at port \d+$/gm)].map((match) => match[1]!))
    })
  })

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `condition` every `everyMs` until it holds; rejects with `what` after `timeoutMs`. */
export const pollUntil = async (
  condition: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs: number,
  everyMs = 50
): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await condition()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(everyMs)
  }
}

/**
 * The pids of the live (not zombie) processes whose command line has `-hubtest_node <name>`: the node's beam
 * process (found by its unique name, then signalled by pid), whether or not it wrote its pid file yet.
 */
export const beamPids = (name: string): Array<number> => {
  const pids: Array<number> = []
  let entries: Array<string>
  try {
    entries = readdirSync("/proc").filter((entry) => /^\d+$/.test(entry))
  } catch {
    return pids
  }
  for (const entry of entries) {
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0")
      const at = args.indexOf("-hubtest_node")
      if (at === -1 || args[at + 1] !== name) continue
      if (/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${entry}/stat`, "utf8"))) continue
      pids.push(Number(entry))
    } catch {
      // gone meanwhile
    }
  }
  return pids
}

// ---------------------------------------------------------------------------
// Cleanup when the process ends without destroy()
// ---------------------------------------------------------------------------

const live = new Set<RabbitNode>()
let hooksInstalled = false

const installHooks = () => {
  if (hooksInstalled) return
  hooksInstalled = true
  const cleanup = () => {
    for (const node of live) node.killSync()
    if (processRoot !== undefined) rmSync(processRoot, { recursive: true, force: true })
  }
  process.on("exit", cleanup)
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(signal, () => {
      cleanup()
      // The default action (or whoever else listens) now.
      process.kill(process.pid, signal)
    })
  }
}

// ---------------------------------------------------------------------------
// A node
// ---------------------------------------------------------------------------

export interface RabbitNodeOptions {
  /** The node's short name (default `hubtest_<pid>_<random>`); `@localhost` is added. */
  readonly name?: string
  /** Lines added to its rabbitmq.conf. */
  readonly extraConfig?: ReadonlyArray<string>
  /** Longest wait for a start (default 60 s). */
  readonly startTimeoutMs?: number
}

export interface Timing {
  readonly op: string
  readonly ms: number
}

export class RabbitNode {
  /** How long each operation took, in order. */
  readonly timings: Array<Timing> = []
  /** The beam process's pid while it runs. */
  pid: number | undefined
  private watchdog: number | undefined
  private constructor(
    /** `hubtest_..@localhost`: give it to `rabbitmqctl -n`. */
    readonly name: string,
    readonly amqpPort: number,
    readonly distPort: number,
    /** Its directory: data (mnesia/), logs (log/), config. */
    readonly dir: string,
    private readonly cliEnv: Record<string, string>,
    private readonly startTimeoutMs: number
  ) {}

  /** Creates a node (fresh data, free ports) and starts it; resolves once it is running and guest can log in. */
  static async start(options: RabbitNodeOptions = {}): Promise<RabbitNode> {
    const { cliEnv, root } = await processState()
    const short = options.name ?? `${namePrefix}_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
    const amqpPort = await freePortBlock()
    const distPort = await freePortBlock()
    const dir = join(root, short)
    rmSync(dir, { recursive: true, force: true })
    for (const sub of ["", "mnesia", "log"]) mkdirSync(join(dir, sub), { recursive: true })
    writeFileSync(join(dir, "rabbitmq.conf"), [
      `listeners.tcp.local = 127.0.0.1:${amqpPort}`,
      // guest is allowed from loopback connections only (the default), which 127.0.0.1 is.
      "loopback_users.guest = true",
      ...(options.extraConfig ?? [])
    ].join("\n") + "\n")
    writeFileSync(join(dir, "enabled_plugins"), "[].\n")
    writeFileSync(join(dir, "rabbitmq-env.conf"), "")
    chownTree(["", "mnesia", "log", "rabbitmq.conf", "enabled_plugins", "rabbitmq-env.conf"].map((sub) => join(dir, sub)))
    const node = new RabbitNode(`${short}@localhost`, amqpPort, distPort, dir, cliEnv, options.startTimeoutMs ?? 60_000)
    installHooks()
    live.add(node)
    try {
      await node.start()
    } catch (error) {
      await node.destroy().catch(() => undefined)
      throw error
    }
    return node
  }

  /** `amqp://guest:guest@127.0.0.1:<port>/` */
  get url(): string {
    return `amqp://guest:guest@127.0.0.1:${this.amqpPort}/`
  }

  get pidFile(): string {
    return join(this.dir, "rabbitmq.pid")
  }

  get logFile(): string {
    return join(this.dir, "log", `${this.name}.log`)
  }

  private serverEnv(): Record<string, string> {
    return {
      ...baseEnv(join(this.dir, "rabbitmq-env.conf")),
      RABBITMQ_NODENAME: this.name,
      RABBITMQ_NODE_IP_ADDRESS: "127.0.0.1",
      RABBITMQ_NODE_PORT: String(this.amqpPort),
      RABBITMQ_DIST_PORT: String(this.distPort),
      RABBITMQ_MNESIA_BASE: join(this.dir, "mnesia"),
      RABBITMQ_LOG_BASE: join(this.dir, "log"),
      RABBITMQ_CONFIG_FILE: join(this.dir, "rabbitmq.conf"),
      // Neither /etc/rabbitmq/advanced.config nor /etc/rabbitmq/conf.d/*.conf.
      RABBITMQ_ADVANCED_CONFIG_FILE: join(this.dir, "advanced.config"),
      RABBITMQ_CONFIG_FILES: join(this.dir, "conf.d"),
      RABBITMQ_ENABLED_PLUGINS_FILE: join(this.dir, "enabled_plugins"),
      RABBITMQ_PID_FILE: this.pidFile,
      ERL_CRASH_DUMP: join(this.dir, "erl_crash.dump"),
      // Harmless to erl (a user flag); lets `pgrep -f <name>` and the cleanup find this node's beam process.
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: `-hubtest_node ${this.name}`
    }
  }

  private async timed<A>(op: string, body: () => Promise<A>): Promise<A> {
    const started = Date.now()
    const result = await body()
    this.timings.push({ op, ms: Date.now() - started })
    return result
  }

  /** `rabbitmqctl -n <this node> ...args`; rejects unless it exits 0. */
  ctl(args: ReadonlyArray<string>, timeoutMs = 60_000): Promise<string> {
    return this.tool("rabbitmqctl", args, timeoutMs)
  }

  /** Any CLI tool of /usr/lib/rabbitmq/bin (rabbitmq-diagnostics, rabbitmq-queues, rabbitmq-streams) with `-n`. */
  async tool(tool: string, args: ReadonlyArray<string>, timeoutMs = 60_000): Promise<string> {
    const result = await this.toolResult(tool, args, timeoutMs)
    if (result.code !== 0) {
      throw new Error(`${tool} -n ${this.name} ${args.join(" ")} exited ${result.code}: ${result.stderr.trim() || result.stdout.trim()}`)
    }
    return result.stdout
  }

  /** The same, resolving with the exit code and output. */
  toolResult(tool: string, args: ReadonlyArray<string>, timeoutMs = 60_000): Promise<CommandResult> {
    return run(join(binDir, tool), ["-n", this.name, ...args], this.cliEnv, rabbitHome, timeoutMs)
  }

  /** Opens and closes an AMQP connection as guest: resolves true if the broker accepted it. */
  async accepts(): Promise<boolean> {
    try {
      const connection = await amqp.connect(this.url, { timeout: 2000 })
      connection.on("error", () => undefined)
      await connection.close()
      return true
    } catch {
      return false
    }
  }

  /** Whether the node's VM is registered with epmd. */
  async registered(): Promise<boolean> {
    const short = this.name.split("@")[0]!
    return (await epmdNames()).includes(short)
  }

  /** Whether the node's beam process runs (the broker application may be stopped). */
  get running(): boolean {
    return beamPids(this.name).length > 0
  }

  /** Starts the node again (after `stop()`) on the same data and ports; resolves once it runs and accepts guest. */
  start(): Promise<void> {
    return this.timed("start", async () => {
      if (this.running) throw new Error(`${this.name} is running already`)
      live.add(this)
      this.startWatchdog()
      const out = openSync(join(this.dir, "log", "startup.log"), "a")
      const started = await new Promise<CommandResult>((resolve) => {
        const child = spawn(join(binDir, "rabbitmq-server"), ["-detached"], {
          cwd: this.dir,
          env: this.serverEnv(),
          stdio: ["ignore", out, out],
          ...asRabbit()
        })
        child.on("error", (error) => resolve({ code: -1, stdout: "", stderr: String(error) }))
        // `exit`, not `close`: the detached VM may hold the output file.
        child.on("exit", (code) => resolve({ code, stdout: "", stderr: "" }))
      })
      closeSync(out)
      if (started.code !== 0) throw new Error(`rabbitmq-server -detached exited ${started.code} ${started.stderr}${this.logTail()}`)
      const deadline = Date.now() + this.startTimeoutMs
      // The VM registers its name with epmd within a few seconds; `await_startup` before that fails at once.
      await pollUntil(async () => {
        if (existsSync(join(this.dir, "erl_crash.dump"))) throw new Error(`${this.name} crashed while starting${this.logTail()}`)
        return this.registered()
      }, `${this.name} to register with epmd`, this.startTimeoutMs)
      await this.ctl(["await_startup", "--timeout", String(Math.max(1, Math.ceil((deadline - Date.now()) / 1000)))])
        .catch((error) => {
          throw new Error(`${String(error)}${this.logTail()}`)
        })
      this.pid = beamPids(this.name)[0]
      await pollUntil(() => this.accepts(), `${this.name} to accept guest on ${this.url}`, 10_000)
    })
  }

  /** `rabbitmqctl -n <this node> stop_app`: the node stays up, the broker application (and every listener) stops. */
  stopApp(): Promise<void> {
    return this.timed("stop_app", async () => void (await this.ctl(["stop_app"])))
  }

  /** `rabbitmqctl -n <this node> start_app`, then `await_startup`: resolves once the broker runs again and accepts guest. */
  startApp(): Promise<void> {
    return this.timed("start_app", async () => {
      await this.ctl(["start_app"])
      await this.ctl(["await_startup"])
      await pollUntil(() => this.accepts(), `${this.name} to accept guest`, 10_000)
    })
  }

  /** `rabbitmqctl -n <this node> stop` (the whole node, data kept); resolves once its process has exited and left epmd. */
  stop(): Promise<void> {
    return this.timed("stop", async () => {
      await this.ctl(["stop"])
      await this.waitGone(30_000)
    })
  }

  /** Kills the node's VM (SIGKILL by pid, as a crash or a power cut); resolves once it has left epmd. */
  kill(): Promise<void> {
    return this.timed("kill", async () => {
      this.signal("SIGKILL")
      await this.waitGone(30_000)
    })
  }

  private signal(signal: NodeJS.Signals) {
    for (const pid of beamPids(this.name)) {
      try {
        process.kill(pid, signal)
      } catch {
        // gone already
      }
    }
  }

  private async waitGone(timeoutMs: number) {
    await pollUntil(async () => !this.running && !(await this.registered()), `${this.name} to exit`, timeoutMs)
    this.pid = undefined
  }

  /** Stops the node if it runs (killing it if the stop fails) and removes its directory. */
  async destroy(): Promise<void> {
    await this.timed("destroy", async () => {
      if (this.running) {
        await this.ctl(["stop"], 20_000).then(() => this.waitGone(20_000)).catch(() => undefined)
      }
      this.killSync()
    })
  }

  /** Synchronous last resort (exit hooks): SIGKILL the VM by pid, remove the directory, end the watchdog. */
  killSync(): void {
    this.signal("SIGKILL")
    this.pid = undefined
    this.stopWatchdog()
    rmSync(this.dir, { recursive: true, force: true })
    live.delete(this)
  }

  /**
   * A detached shell that outlives this process if it is killed outright (SIGKILL, a test runner's timeout): once
   * this process is gone, it kills the node's beam process (found by `-hubtest_node <name>`, signalled by pid) and
   * removes its directory. Ended by destroy().
   */
  private startWatchdog() {
    if (this.watchdog !== undefined) return
    // The name and directory travel in its environment, not on its command line: `pgrep -f <name>` finds the node only.
    const script = [
      `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done`,
      "for d in /proc/[0-9]*; do",
      `  if tr '\\0' '\\n' < "$d/cmdline" 2>/dev/null | grep -qxF -- "$NODE"; then kill -9 "\${d#/proc/}" 2>/dev/null; fi`,
      "done",
      `rm -rf "$DIR"`,
      // This process's directory too, once its last node is gone (it holds only the CLI's empty env file then).
      `rm -f "$ROOT/cli-env.conf"; rmdir "$ROOT" 2>/dev/null || true`
    ].join("\n")
    const child = spawn("/bin/sh", ["-c", script], {
      detached: true,
      stdio: "ignore",
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", NODE: this.name, DIR: this.dir, ROOT: join(this.dir, "..") }
    })
    child.unref()
    this.watchdog = child.pid
  }

  private stopWatchdog() {
    if (this.watchdog === undefined) return
    try {
      process.kill(this.watchdog, "SIGKILL")
    } catch {
      // gone already
    }
    this.watchdog = undefined
  }

  private logTail(): string {
    const read = (file: string) => {
      try {
        return readFileSync(file, "utf8").split("\n").slice(-15).join("\n")
      } catch {
        return ""
      }
    }
    return `\n--- ${this.logFile} (end) ---\n${read(this.logFile)}\n--- startup.log ---\n${read(join(this.dir, "log", "startup.log"))}`
  }

  /** The names of the cluster's nodes that run the broker application, as this node sees them. */
  async runningNodes(): Promise<Array<string>> {
    const status = JSON.parse(await this.ctl(["cluster_status", "--formatter", "json"]))
    return status.running_nodes as Array<string>
  }
}

// ---------------------------------------------------------------------------
// A cluster
// ---------------------------------------------------------------------------

interface QueueRow {
  readonly name: string
  readonly type: string
  readonly leader: string
  readonly members: ReadonlyArray<string>
}

export class RabbitCluster {
  /** How long each step took, in order. */
  readonly timings: Array<Timing> = []
  private constructor(readonly nodes: ReadonlyArray<RabbitNode>) {}

  /**
   * Starts `size` nodes in parallel, then joins the others to the first (`stop_app`, `join_cluster`, `start_app`),
   * and resolves once every node sees all of them running.
   */
  static async start(size = 3, options: Omit<RabbitNodeOptions, "name"> = {}): Promise<RabbitCluster> {
    const started = Date.now()
    const settled = await Promise.allSettled(Array.from({ length: size }, () => RabbitNode.start(options)))
    const nodes = settled.flatMap((result) => result.status === "fulfilled" ? [result.value] : [])
    const cluster = new RabbitCluster(nodes)
    try {
      const failed = settled.find((result) => result.status === "rejected")
      if (failed) throw (failed as PromiseRejectedResult).reason
      cluster.timings.push({ op: `start ${size} nodes in parallel`, ms: Date.now() - started })
      const [first, ...others] = nodes
      const joining = Date.now()
      // One at a time: two joins at once race on the first node's schema.
      for (const node of others) {
        await node.ctl(["stop_app"])
        await node.ctl(["join_cluster", first!.name])
        await node.ctl(["start_app"])
      }
      cluster.timings.push({ op: "join", ms: Date.now() - joining })
      const waiting = Date.now()
      await cluster.awaitRunning()
      cluster.timings.push({ op: "all running members", ms: Date.now() - waiting })
      cluster.timings.push({ op: "cluster formation (total)", ms: Date.now() - started })
      return cluster
    } catch (error) {
      await cluster.destroy()
      throw error
    }
  }

  get urls(): Array<string> {
    return this.nodes.map((node) => node.url)
  }

  /** The node of this name (`hubtest_...@localhost`). */
  node(name: string): RabbitNode {
    const node = this.nodes.find((node) => node.name === name)
    if (!node) throw new Error(`${name} is not a node of this cluster (${this.nodes.map((n) => n.name).join(", ")})`)
    return node
  }

  /** Resolves once every node in `among` (default: all) sees all of `among` running. */
  async awaitRunning(among: ReadonlyArray<RabbitNode> = this.nodes, timeoutMs = 60_000): Promise<void> {
    const names = among.map((node) => node.name).sort()
    await pollUntil(async () => {
      const views = await Promise.all(among.map((node) => node.runningNodes().catch((): Array<string> => [])))
      return views.every((view) => names.every((name) => view.includes(name)))
    }, `${names.join(", ")} to run as one cluster`, timeoutMs, 200)
  }

  /** A node whose broker runs (it accepts an AMQP connection), other than `except`. */
  async runningNode(except: ReadonlyArray<RabbitNode> = []): Promise<RabbitNode> {
    for (const node of this.nodes) {
      if (!except.includes(node) && node.running && (await node.accepts())) return node
    }
    throw new Error("no node of the cluster runs")
  }

  /** `list_queues name type leader members` as a running node sees them. */
  async queues(): Promise<Array<QueueRow>> {
    const node = await this.runningNode()
    return JSON.parse(await node.ctl(["list_queues", "-q", "name", "type", "leader", "members", "--formatter", "json"]))
  }

  /** The node that leads the queue `queue` (quorum queue or stream) as `list_queues` says; undefined: none now. */
  async queueLeader(queue: string): Promise<RabbitNode | undefined> {
    const row = (await this.queues()).find((row) => row.name === queue)
    return row?.leader ? this.nodes.find((node) => node.name === row.leader) : undefined
  }

  /** The node that leads the quorum queue `queue` (undefined: no such queue, or no leader now). */
  quorumLeader(queue: string): Promise<RabbitNode | undefined> {
    return this.queueLeader(queue)
  }

  /** The node that holds the writer of the stream `stream` (`rabbitmq-streams stream_status`; undefined: none). */
  async streamWriter(stream: string): Promise<RabbitNode | undefined> {
    const node = await this.runningNode()
    const rows: Array<{ role: string; node: string }> = JSON.parse(
      await node.tool("rabbitmq-streams", ["stream_status", stream, "--formatter", "json"])
    )
    const writer = rows.find((row) => row.role === "writer")
    return writer ? this.nodes.find((node) => node.name === writer.node) : undefined
  }

  /** Stops every node and removes their directories. */
  async destroy(): Promise<void> {
    await Promise.all(this.nodes.map((node) => node.destroy().catch(() => node.killSync())))
  }
}
