/**
 * What a loss measurement across broker restarts is made of, shared by the tests (brokerRestart.test.ts,
 * brokerCluster.test.ts) and the bench tool (bench/tools/loss-broker-restart.mjs), so that both count the same way:
 *
 * - `HubProcess`: the built hub (`node dist/main.js`, or another build) on a free port, with its own exchange and
 *   stream, readiness from `/health` (`checks.rabbitmq.status === "up"`), its counters and its log lines;
 * - `ResumingClient`: a WebSocket client subscribed to everything that follows docs/protocol.md's resume rule
 *   (on every (re)connect `subscribe` with `since` = the id of the last event received; nothing handled before the
 *   `hub.subscribed` reply) and, when it loses its hub, tries the other hubs in turn;
 * - `CarefulPublisher`: one connection with publisher confirms and no `mandatory`; each event carries a unique
 *   `event_id` (UUID), the publisher's name and its own `seq`; what was not confirmed (nacked, or its channel or
 *   connection died first) is sent again, with the same event_id, once a broker (the next URL of its list) takes
 *   a connection again;
 * - `EventSchedule`: creates events at a steady rate over the publishers, whether or not a broker is up (what
 *   cannot be sent waits in the publisher's outbox, as an application's outbox does);
 * - `tally`: per client, received, lost (confirmed, never received), duplicated (the same publisher+seq twice),
 *   out of order (per publisher, a seq below one already received, after dropping duplicates, among the events
 *   sent once: one sent again after a nack or a lost channel was published after later ones by its publisher),
 *   history gaps; and the lost events as ranges, with when they were created and confirmed.
 */
import * as amqp from "amqplib"
import { randomUUID } from "node:crypto"
import { WebSocket } from "ws"
import { freePort, ServiceProcess } from "./process.js"

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------
// Hubs
// ---------------------------------------------------------------------------

export interface HubProcessOptions {
  /** RABBITMQ_URL (comma-separated URLs for a cluster, once the hub accepts them). */
  readonly rabbitmqUrl: string
  readonly exchange: string
  readonly stream: string
  readonly instance: string
  /** The hub's entry point (default dist/main.js). */
  readonly script?: string
  /** More environment variables. */
  readonly env?: Record<string, string>
}

export class HubProcess {
  private constructor(readonly port: number, readonly instance: string, readonly service: ServiceProcess) {}

  static async start(options: HubProcessOptions): Promise<HubProcess> {
    const port = await freePort()
    const service = ServiceProcess.start({
      PORT: String(port),
      HOST: "127.0.0.1",
      RABBITMQ_URL: options.rabbitmqUrl,
      RABBITMQ_EXCHANGE: options.exchange,
      RABBITMQ_STREAM: options.stream,
      HUB_INSTANCE_ID: options.instance,
      LOG_LEVEL: "warn",
      LOG_FORMAT: "json",
      RABBITMQ_RECONNECT_DELAY: "100ms",
      RABBITMQ_MAX_RECONNECT_WAIT: "1s",
      ...options.env
    }, options.script)
    return new HubProcess(port, options.instance, service)
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/api/v1/ws/events`
  }

  async getJson(path: string): Promise<any> {
    const response = await fetch(`http://127.0.0.1:${this.port}${path}`)
    return response.json()
  }

  /** Resolves once `/health` says RabbitMQ is up (in stream mode: consuming, history refilled). */
  async ready(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    let last: unknown = "no answer"
    for (;;) {
      const exited = this.service.child.exitCode !== null
      try {
        const health = await this.getJson("/health")
        last = health.checks?.rabbitmq
        if (health.checks?.rabbitmq?.status === "up") return
      } catch (error) {
        last = String(error)
      }
      if (exited || Date.now() > deadline) {
        throw new Error(`hub ${this.instance} not ready within ${timeoutMs} ms${exited ? " (it exited)" : ""}; ` +
          `last /health rabbitmq check: ${JSON.stringify(last)}; log:\n${this.service.output.split("\n").slice(-15).join("\n")}`)
      }
      await sleep(50)
    }
  }

  /** Its counters from /metrics: events broadcast and deduplicated, and the RabbitMQ source's. */
  async counters(): Promise<Record<string, unknown>> {
    try {
      const metrics = await this.getJson("/metrics")
      return {
        events_broadcast: metrics.websocket?.events_broadcast,
        events_deduplicated: metrics.websocket?.events_deduplicated,
        rabbitmq: metrics.rabbitmq
      }
    } catch (error) {
      return { error: String(error) }
    }
  }

  /** Its log lines (warnings and errors at LOG_LEVEL=warn), counted by level, message and error. */
  logSummary(): Record<string, number> {
    const counts: Record<string, number> = {}
    for (const line of this.service.output.split("\n")) {
      if (line.trim() === "") continue
      let key = line.slice(0, 160)
      try {
        const entry = JSON.parse(line)
        const error = entry.annotations?.error ?? entry.error
        key = `${entry.logLevel ?? entry.level ?? "?"}: ${entry.message}${error ? ` (${String(error).slice(0, 300)})` : ""}`
      } catch {
        // not JSON
      }
      counts[key] = (counts[key] ?? 0) + 1
    }
    return counts
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    const child = this.service.child
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill("SIGTERM")
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs)
    await this.service.exited
    clearTimeout(timer)
  }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

export interface ReceivedEvent {
  readonly publisher: string
  readonly seq: number
  readonly eventId: string
  /** When it arrived (ms since the epoch). */
  readonly at: number
  /** When its publisher created it (ms since the epoch). */
  readonly createdAt: number
}

/** A client subscribed to everything that resumes with `since` after every reconnect, on whichever hub answers. */
export class ResumingClient {
  readonly received: Array<ReceivedEvent> = []
  readonly gaps: Array<unknown> = []
  connects = 0
  lastId: string | undefined
  lastArrival = 0
  private ws: WebSocket | undefined
  private stopped = false
  private listeners = new Set<() => void>()

  constructor(readonly index: number, private readonly hubUrls: ReadonlyArray<string>, private hub = index % hubUrls.length) {}

  get hubIndex(): number {
    return this.hub
  }

  /** Connects; resolves once subscribed. */
  connect(): Promise<void> {
    const ws = new WebSocket(this.hubUrls[this.hub]!)
    this.ws = ws
    let subscribed = false
    let opened = false
    return new Promise((resolve) => {
      ws.on("open", () => {
        opened = true
        this.connects++
        ws.send(JSON.stringify({ action: "subscribe", event_types: ["#"], ...(this.lastId ? { since: this.lastId } : {}) }))
      })
      ws.on("message", (raw) => {
        const text = String(raw)
        if (!text.startsWith("{")) return
        const message = JSON.parse(text)
        if (message.type === "hub.subscribed") {
          subscribed = true
          resolve()
        } else if (message.type === "hub.history_gap") this.gaps.push(message.data)
        else if (!String(message.type).startsWith("hub.") && subscribed) {
          this.lastId = message.id
          const data = message.data ?? {}
          this.lastArrival = Date.now()
          this.received.push({
            publisher: data.publisher,
            seq: data.seq,
            eventId: data.event_id,
            at: this.lastArrival,
            createdAt: Date.parse(data.created_at)
          })
          for (const listener of this.listeners) listener()
        }
      })
      ws.on("error", () => undefined)
      ws.on("close", () => {
        if (this.stopped || this.ws !== ws) return
        // Lost its hub: that one again if the connection had opened (a hub restarting), else the next one.
        if (!opened) this.hub = (this.hub + 1) % this.hubUrls.length
        setTimeout(() => {
          if (!this.stopped) this.connect().then(resolve)
        }, 200)
      })
    })
  }

  /** The distinct events received from `publisher`. */
  seqsOf(publisher: string): Set<number> {
    const seqs = new Set<number>()
    for (const event of this.received) if (event.publisher === publisher) seqs.add(event.seq)
    return seqs
  }

  close(): void {
    this.stopped = true
    this.ws?.terminate()
  }
}

// ---------------------------------------------------------------------------
// A careful publisher
// ---------------------------------------------------------------------------

interface Pending {
  readonly body: Buffer
  readonly eventId: string
  inFlight: boolean
  sends: number
}

export class CarefulPublisher {
  seq = 0
  /** seq -> an event not confirmed yet (in flight or waiting to be sent). */
  readonly pending = new Map<number, Pending>()
  /** seqs to send (again), in order. */
  private outbox: Array<number> = []
  readonly confirmed = new Set<number>()
  /** seq -> when it was created / confirmed (ms since the epoch). */
  readonly createdAt: Array<number> = []
  readonly confirmedAt: Array<number> = []
  nacked = 0
  resent = 0
  /** Events sent more than once: their place among the others is the publisher's doing, not the broker's. */
  readonly resentSeqs = new Set<number>()
  channelLosses = 0
  private channel: amqp.ConfirmChannel | undefined
  private connection: amqp.ChannelModel | undefined
  private connecting = false
  private stopped = false
  private urlIndex: number

  constructor(
    readonly name: string,
    private readonly urls: ReadonlyArray<string>,
    private readonly exchange: string,
    private readonly routingKey = "loss.tick",
    /** Which URL to try first (spreads publishers over a cluster's nodes). */
    firstUrl = 0
  ) {
    this.urlIndex = firstUrl % urls.length
  }

  /** Creates the next event; sent now if connected, else once a broker takes a connection again. */
  create(): void {
    const seq = this.seq++
    const eventId = randomUUID()
    const createdAt = Date.now()
    this.createdAt[seq] = createdAt
    const body = Buffer.from(JSON.stringify({
      event_id: eventId,
      publisher: this.name,
      seq,
      created_at: new Date(createdAt).toISOString()
    }))
    this.pending.set(seq, { body, eventId, inFlight: false, sends: 0 })
    this.outbox.push(seq)
    this.flush()
  }

  /** Connects (to the first URL that answers); resolves once connected. */
  async connect(): Promise<void> {
    await this.ensureConnected()
  }

  private flush(): void {
    if (this.stopped) return
    const channel = this.channel
    if (channel === undefined) return void this.ensureConnected()
    while (this.outbox.length > 0 && this.channel === channel) {
      const seq = this.outbox.shift()!
      const entry = this.pending.get(seq)
      if (entry === undefined || entry.inFlight) continue
      entry.inFlight = true
      if (entry.sends++ > 0) {
        this.resent++
        this.resentSeqs.add(seq)
      }
      try {
        channel.publish(this.exchange, this.routingKey, entry.body, {
          persistent: true,
          contentType: "application/json",
          messageId: entry.eventId
        }, (error) => {
          entry.inFlight = false
          if (error) {
            // Nacked, or the channel closed before its confirm: send it again, with the same event_id.
            if (error.message === "message nacked") this.nacked++
            this.outbox.push(seq)
            if (this.channel !== undefined) queueMicrotask(() => this.flush())
          } else {
            this.pending.delete(seq)
            this.confirmed.add(seq)
            this.confirmedAt[seq] = Date.now()
          }
        })
      } catch {
        // The channel has closed: its close handler reconnects, and this one is sent then.
        entry.inFlight = false
        entry.sends--
        this.outbox.unshift(seq)
        break
      }
    }
  }

  private async ensureConnected(): Promise<void> {
    if (this.connecting || this.channel !== undefined || this.stopped) return
    this.connecting = true
    while (!this.stopped) {
      const url = this.urls[this.urlIndex]!
      try {
        const connection = await amqp.connect(url, {
          noDelay: true,
          timeout: 2000,
          clientProperties: { connection_name: `careful publisher ${this.name}` }
        })
        connection.on("error", () => undefined)
        const channel = await connection.createConfirmChannel()
        channel.on("error", () => undefined)
        const lost = () => {
          if (this.channel !== channel) return
          this.channel = undefined
          this.channelLosses++
          connection.close().catch(() => undefined)
          // The confirm callbacks of what was in flight have run (with an error): it is in the outbox again.
          setTimeout(() => void this.ensureConnected(), 100)
        }
        channel.on("close", lost)
        connection.on("close", lost)
        this.connection = connection
        this.channel = channel
        break
      } catch {
        // That broker is down: the next URL after a short pause.
        this.urlIndex = (this.urlIndex + 1) % this.urls.length
        await sleep(200)
      }
    }
    this.connecting = false
    if (this.channel !== undefined) {
      this.outbox.sort((a, b) => a - b)
      this.flush()
    }
  }

  async close(): Promise<void> {
    this.stopped = true
    await this.connection?.close().catch(() => undefined)
  }
}

// ---------------------------------------------------------------------------
// A steady rate
// ---------------------------------------------------------------------------

/**
 * Creates `rate` events per second in all, taking turns over the publishers, for at least `minSeconds` and until
 * `finish()` (at once if `finish` is never called: after `minSeconds`).
 */
export class EventSchedule {
  created = 0
  readonly startedAt = Date.now()
  /** Resolves once the last event has been created. */
  readonly done: Promise<void>
  private timer: NodeJS.Timeout | undefined
  private endAt: number | undefined
  private resolveDone!: () => void

  constructor(publishers: ReadonlyArray<CarefulPublisher>, readonly rate: number, readonly minSeconds = 0, open = false) {
    this.done = new Promise((resolve) => (this.resolveDone = resolve))
    if (!open) this.endAt = this.startedAt + minSeconds * 1000
    this.timer = setInterval(() => {
      const now = this.endAt === undefined ? Date.now() : Math.min(Date.now(), this.endAt)
      const due = Math.floor(((now - this.startedAt) / 1000) * rate)
      for (; this.created < due; this.created++) publishers[this.created % publishers.length]!.create()
      if (this.endAt !== undefined && Date.now() >= this.endAt) {
        clearInterval(this.timer)
        this.resolveDone()
      }
    }, 5)
  }

  /** Stops creating events now, or once `minSeconds` have passed. */
  finish(): Promise<void> {
    this.endAt = Math.max(Date.now(), this.startedAt + this.minSeconds * 1000)
    return this.done
  }

  /** Seconds since the schedule started. */
  get elapsed(): number {
    return (Date.now() - this.startedAt) / 1000
  }

  /** Waits until the schedule has run `seconds` (a scenario's timetable). */
  async at(seconds: number): Promise<void> {
    while (this.elapsed < seconds) await sleep(20)
  }

  stop(): void {
    clearInterval(this.timer)
    this.resolveDone()
  }
}

// ---------------------------------------------------------------------------
// Waiting and counting
// ---------------------------------------------------------------------------

/** Resolves once no publisher has anything unconfirmed (false after `timeoutMs`). */
export const allConfirmed = async (publishers: ReadonlyArray<CarefulPublisher>, timeoutMs = 120_000): Promise<boolean> => {
  const deadline = Date.now() + timeoutMs
  while (publishers.some((publisher) => publisher.pending.size > 0)) {
    if (Date.now() > deadline) return false
    await sleep(50)
  }
  return true
}

/**
 * Resolves once every client holds every confirmed event, or nothing has arrived at any client for `quietMs`
 * (what is missing then is not coming), or after `timeoutMs`.
 */
export const deliveredOrQuiet = async (
  clients: ReadonlyArray<ResumingClient>,
  publishers: ReadonlyArray<CarefulPublisher>,
  quietMs = 10_000,
  timeoutMs = 120_000
): Promise<"delivered" | "quiet" | "timeout"> => {
  const deadline = Date.now() + timeoutMs
  let lastArrival = Date.now()
  let lastCount = -1
  for (;;) {
    const count = clients.reduce((n, client) => n + client.received.length, 0)
    if (count !== lastCount) {
      lastCount = count
      lastArrival = Date.now()
    }
    const complete = clients.every((client) =>
      publishers.every((publisher) => {
        const seqs = client.seqsOf(publisher.name)
        for (const seq of publisher.confirmed) if (!seqs.has(seq)) return false
        return true
      }))
    if (complete) return "delivered"
    if (Date.now() - lastArrival > quietMs) return "quiet"
    if (Date.now() > deadline) return "timeout"
    await sleep(200)
  }
}

export interface ClientTally {
  readonly client: number
  readonly hub: number
  readonly received: number
  readonly lost: number
  readonly duplicated: number
  readonly outOfOrder: number
  readonly historyGaps: number
  readonly connects: number
  /** Delivery latency (arrival - creation), ms. */
  readonly latency: { readonly p50: number; readonly p99: number; readonly max: number }
}

export interface LostRange {
  readonly publisher: string
  readonly seqs: string
  readonly count: number
  /** When those events were created / confirmed, seconds since `since`. */
  readonly created: readonly [number, number]
  readonly confirmed: readonly [number, number]
}

export interface Tally {
  readonly published: number
  readonly confirmed: number
  readonly unconfirmed: number
  readonly resent: number
  readonly nacked: number
  readonly perClient: ReadonlyArray<ClientTally>
  readonly lostEvents: ReadonlyArray<LostRange>
  readonly totals: {
    readonly lost: number
    readonly duplicated: number
    readonly outOfOrder: number
    readonly historyGaps: number
    readonly maxLostPerClient: number
  }
}

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

/** Counts what each client received against what the publishers had confirmed; times relative to `since`. */
export const tally = (
  clients: ReadonlyArray<ResumingClient>,
  publishers: ReadonlyArray<CarefulPublisher>,
  since: number
): Tally => {
  const resent = new Map(publishers.map((publisher) => [publisher.name, publisher.resentSeqs]))
  const perClient = clients.map((client): ClientTally => {
    const seen = new Map(publishers.map((publisher) => [publisher.name, new Set<number>()]))
    const highest = new Map<string, number>()
    let duplicated = 0
    let outOfOrder = 0
    const latencies: Array<number> = []
    for (const event of client.received) {
      const set = seen.get(event.publisher)
      if (set === undefined) continue
      if (set.has(event.seq)) {
        duplicated++
        continue
      }
      set.add(event.seq)
      latencies.push(event.at - event.createdAt)
      // An event its publisher sent again (nacked, or its channel lost before the confirm) was published again
      // after later ones: its order is the publisher's, not kept or broken by the path.
      if (resent.get(event.publisher)!.has(event.seq)) continue
      const top = highest.get(event.publisher) ?? -1
      if (event.seq < top) outOfOrder++
      else highest.set(event.publisher, event.seq)
    }
    let lost = 0
    for (const publisher of publishers) {
      const set = seen.get(publisher.name)!
      for (const seq of publisher.confirmed) if (!set.has(seq)) lost++
    }
    latencies.sort((a, b) => a - b)
    return {
      client: client.index,
      hub: client.hubIndex,
      received: client.received.length,
      lost,
      duplicated,
      outOfOrder,
      historyGaps: client.gaps.length,
      connects: client.connects,
      latency: { p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies.at(-1) ?? 0 }
    }
  })
  const lostEvents: Array<LostRange> = []
  for (const publisher of publishers) {
    const lostSomewhere = new Set<number>()
    for (const client of clients) {
      const seqs = client.seqsOf(publisher.name)
      for (const seq of publisher.confirmed) if (!seqs.has(seq)) lostSomewhere.add(seq)
    }
    const sorted = [...lostSomewhere].sort((a, b) => a - b)
    for (let i = 0; i < sorted.length;) {
      let j = i
      while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++
      const seqs = sorted.slice(i, j + 1)
      const times = (list: ReadonlyArray<number>) => seqs.map((seq) => (list[seq]! - since) / 1000)
      lostEvents.push({
        publisher: publisher.name,
        seqs: i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`,
        count: seqs.length,
        created: [Math.min(...times(publisher.createdAt)), Math.max(...times(publisher.createdAt))],
        confirmed: [Math.min(...times(publisher.confirmedAt)), Math.max(...times(publisher.confirmedAt))]
      })
      i = j + 1
    }
  }
  const sum = (key: "lost" | "duplicated" | "outOfOrder" | "historyGaps") =>
    perClient.reduce((n, client) => n + client[key], 0)
  return {
    published: publishers.reduce((n, publisher) => n + publisher.seq, 0),
    confirmed: publishers.reduce((n, publisher) => n + publisher.confirmed.size, 0),
    unconfirmed: publishers.reduce((n, publisher) => n + publisher.pending.size, 0),
    resent: publishers.reduce((n, publisher) => n + publisher.resent, 0),
    nacked: publishers.reduce((n, publisher) => n + publisher.nacked, 0),
    perClient,
    lostEvents,
    totals: {
      lost: sum("lost"),
      duplicated: sum("duplicated"),
      outOfOrder: sum("outOfOrder"),
      historyGaps: sum("historyGaps"),
      maxLostPerClient: Math.max(0, ...perClient.map((client) => client.lost))
    }
  }
}

/** One line per client and the totals, for a test's failure output or the bench's report. */
export const describeTally = (result: Tally): string =>
  [
    ...result.perClient.map((c) =>
      `client ${c.client} (hub ${c.hub}): received ${c.received}, lost ${c.lost}, duplicated ${c.duplicated}, ` +
      `out of order ${c.outOfOrder}, history_gap ${c.historyGaps}, connects ${c.connects}, ` +
      `latency p50 ${c.latency.p50} ms p99 ${c.latency.p99} ms max ${c.latency.max} ms`),
    ...result.lostEvents.map((l) =>
      `lost ${l.publisher} seq ${l.seqs} (${l.count}): created at ${l.created.join("-")} s, confirmed at ${l.confirmed.join("-")} s`),
    `published ${result.published}, confirmed ${result.confirmed}, unconfirmed ${result.unconfirmed} (resent ${result.resent}, ` +
    `nacked ${result.nacked}); lost ${result.totals.lost} in all (at most ${result.totals.maxLostPerClient} per client), ` +
    `duplicated ${result.totals.duplicated}, out of order ${result.totals.outOfOrder}, history_gap ${result.totals.historyGaps}`
  ].join("\n")

/** What a loss run starts, stopped at its end (`afterAll`) whatever happened: schedule, clients, publishers, hubs. */
export class LossRun {
  readonly hubs: Array<HubProcess> = []
  readonly clients: Array<ResumingClient> = []
  readonly publishers: Array<CarefulPublisher> = []
  schedule: EventSchedule | undefined
  readonly #started = Date.now()
  readonly #steps: Array<string> = []

  /** Records a step of the scenario with its time since the run began (printed with the verdict). */
  step(what: string): void {
    this.#steps.push(`${what} at ${((Date.now() - this.#started) / 1000).toFixed(1)} s`)
  }

  /** `extra` lines, then the timeline so far. */
  report(extra: ReadonlyArray<string> = []): string {
    return [...extra, `timeline: ${this.#steps.join(", ")}`].join("\n")
  }

  /** `count` resuming clients, spread over the hubs, connected. */
  async connectClients(count: number): Promise<void> {
    const urls = this.hubs.map((hub) => hub.wsUrl)
    for (let index = 0; index < count; index++) this.clients.push(new ResumingClient(index, urls))
    await Promise.all(this.clients.map((client) => client.connect()))
  }

  /** Every client has received an event: events flow end to end. */
  async everyClientReceiving(): Promise<void> {
    await Promise.all(this.clients.map(async (client) => {
      while (client.received.length === 0) await sleep(20)
    }))
  }

  /** Once every publisher is done: every client's tally, with the hubs' counters and logs and the timeline. */
  async verdict(extra: ReadonlyArray<string> = []): Promise<{ readonly result: Tally; readonly text: string }> {
    const ending = await deliveredOrQuiet(this.clients, this.publishers)
    this.step(`clients ${ending}`)
    const result = tally(this.clients, this.publishers, this.schedule!.startedAt)
    const hubLines = await Promise.all(this.hubs.map(async (hub, index) =>
      `hub ${index}: ${JSON.stringify(await hub.counters())}; log ${JSON.stringify(hub.logSummary())}`))
    return { result, text: this.report([describeTally(result), ...hubLines, ...extra]) }
  }

  async stop(): Promise<void> {
    this.schedule?.stop()
    for (const client of this.clients) client.close()
    await Promise.all(this.publishers.map((publisher) => publisher.close()))
    await Promise.all(this.hubs.map((hub) => hub.stop()))
  }
}
