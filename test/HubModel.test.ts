/**
 * A model-based test of the hub's bookkeeping: random sequences of register,
 * subscribe, unsubscribe, authorize, resume, cancel, join, leave and broadcasts
 * (including floods of new types, past the 1,024 types whose recipients are
 * kept), checked event by event against a naive model: a client receives an
 * event when it is registered, subscribed to the type, allowed it, not
 * catching up, and in one of its rooms if it joined any. In-memory
 * connections: the same rules are tested over real sockets elsewhere.
 */
import { it } from "vitest"
import * as fc from "fast-check"
import { Effect, Layer } from "effect"
import { HubConfig } from "../src/config/Config.js"
import { type Connection, layerLocal } from "../src/hub/Hub.js"
import { wholeHub } from "./inMemoryHub.js"
import * as Topic from "../src/protocol/Topic.js"

const PATTERNS = ["#", "a.*", "a.#", "*.b", "a.b", "#.b", "*.*", "c", "#.#", "a.*.c", "*", "a.b.c", "c.#"]
const TYPES = ["a.b", "a.c", "c", "a.b.c", "x.b", "c.d", "a"]
const ROOMS = ["run_id:1", "run_id:2", "job_id:x"]
const DATAS = [{}, { run_id: 1 }, { run_id: "2" }, { job_id: "x" }, { run_id: 1, job_id: "x" }, { strategy_id: 5 }]
const roomsOfData = (d: any) => ["run_id", "strategy_id", "job_id"].filter((k) => d[k] !== undefined).map((k) => `${k}:${d[k]}`)

const id = fc.integer({ min: 1, max: 4 })
const pats = fc.array(fc.constantFrom(...PATTERNS), { minLength: 0, maxLength: 3 })
const op = fc.oneof(
  fc.record({ k: fc.constant("register" as const), id, allowed: fc.option(pats, { nil: undefined }), resuming: fc.boolean() }),
  fc.record({ k: fc.constant("unregister" as const), id }),
  fc.record({ k: fc.constant("subscribe" as const), id, p: pats }),
  fc.record({ k: fc.constant("unsubscribe" as const), id, p: pats }),
  fc.record({ k: fc.constant("authorize" as const), id, allowed: fc.option(pats, { nil: undefined }) }),
  fc.record({ k: fc.constant("resume" as const), id, start: fc.boolean() }),
  fc.record({ k: fc.constant("cancel" as const), id }),
  fc.record({ k: fc.constant("resumeOld" as const), id, back: fc.integer({ min: 0, max: 6 }) }),
  fc.record({ k: fc.constant("resumeFuture" as const), id }),
  fc.record({ k: fc.constant("badresume" as const), id }),
  fc.record({ k: fc.constant("join" as const), id, r: fc.array(fc.constantFrom(...ROOMS), { maxLength: 2 }) }),
  fc.record({ k: fc.constant("leave" as const), id, r: fc.array(fc.constantFrom(...ROOMS), { maxLength: 2 }) }),
  fc.record({ k: fc.constant("broadcast" as const), t: fc.constantFrom(...TYPES), d: fc.constantFrom(...DATAS) }),
  fc.record({ k: fc.constant("broadcast" as const), t: fc.constantFrom(...TYPES), d: fc.constantFrom(...DATAS) }),
  fc.record({ k: fc.constant("flood" as const), n: fc.constantFrom(10, 10, 10, 1030) })
)

interface M { pendingFuture?: number; patterns: string[]; explicit: boolean; allowed?: string[] | undefined; catchingUp: boolean; rooms?: Set<string>; resumeToken?: number }

let floodSeq = 0
const run = (ops: ReadonlyArray<any>) => Effect.gen(function*() {
  const hub = yield* wholeHub
  const conns = new Map<number, { conn: Connection; got: string[] }>()
  const model = new Map<number, M>()
  const expected = new Map<number, string[]>()
  const resumes = new Map<number, { cancel: Effect.Effect<void>; token: number }>()
  let tokenSeq = 0
  const log: string[] = []
  let recent: Array<{ id: string; t: string; rooms: string[] }> = []
  for (const o of ops) {
    log.push(JSON.stringify(o))
    switch (o.k) {
      case "register": {
        if (model.has(o.id)) break
        const got: string[] = []
        const conn: Connection = { id: o.id, offer: (m) => { got.push(JSON.parse(m.payload.toString()).type + "|" + JSON.parse(m.payload.toString()).id); return true }, kick: () => {}, keepAlive: () => {} }
        conns.set(o.id, { conn, got }); expected.set(o.id, [])
        model.set(o.id, { patterns: ["#"], explicit: false, allowed: o.allowed, catchingUp: o.resuming })
        yield* hub.register(conn, { allowed: o.allowed, resuming: o.resuming })
        break
      }
      case "unregister": {
        if (!model.has(o.id)) break
        model.delete(o.id); resumes.delete(o.id)
        yield* hub.unregister(o.id)
        break
      }
      case "subscribe": {
        const m = model.get(o.id); if (!m) break
        m.patterns = [...new Set([...(m.explicit ? m.patterns : []), ...o.p])]; m.explicit = true
        yield* hub.subscribe(o.id, o.p)
        break
      }
      case "unsubscribe": {
        const m = model.get(o.id); if (!m) break
        m.patterns = m.patterns.filter((p) => !o.p.includes(p))
        yield* hub.unsubscribe(o.id, o.p)
        break
      }
      case "authorize": {
        const m = model.get(o.id); if (!m) break
        m.allowed = o.allowed
        yield* hub.authorize(o.id, o.allowed)
        break
      }
      case "resume": {
        const m = model.get(o.id); if (!m) break
        const head = hub.history.newest?.id
        if (head === undefined) break
        const r = yield* hub.resume(o.id, head)
        const token = ++tokenSeq
        resumes.set(o.id, { cancel: r.cancel, token })
        m.catchingUp = true; m.resumeToken = token
        if (o.start) {
          const before = conns.get(o.id)!.got.length
          yield* r.start
          // replay from head: nothing replayed, goes live
          const after = conns.get(o.id)!.got.slice(before)
          for (const x of after) if (!x.startsWith("hub.")) throw new Error("unexpected replay " + x)
          m.catchingUp = false; m.resumeToken = undefined
          resumes.delete(o.id)
        }
        break
      }
      case "resumeOld": {
        const m = model.get(o.id); if (!m) break
        if (recent.length === 0) break
        const idx = Math.max(0, recent.length - 1 - o.back)
        const since = recent[idx]!.id
        const r = yield* hub.resume(o.id, since)
        yield* r.start
        for (const e of recent.slice(idx + 1)) {
          const ok = m.patterns.some((p) => Topic.matches(p, e.t)) &&
            (m.allowed === undefined || m.allowed.some((p) => Topic.matches(p, e.t))) &&
            (m.rooms === undefined || e.rooms.some((r) => m.rooms!.has(r)))
          if (ok) expected.get(o.id)!.push(e.t)
        }
        m.catchingUp = false; m.resumeToken = undefined; resumes.delete(o.id)
        break
      }
      case "resumeFuture": {
        // since = the next id the hub will issue: waits for the append, then goes live (that event is not after since)
        const m = model.get(o.id); if (!m) break
        const head = hub.history.newest?.id
        if (head === undefined) break
        const [run, seq] = head.split("-")
        const since = `${run}-${String(Number(seq) + 1).padStart(16, "0")}`
        const r = yield* hub.resume(o.id, since)
        const token = ++tokenSeq
        resumes.set(o.id, { cancel: r.cancel, token })
        m.catchingUp = true; m.resumeToken = token
        yield* r.start
        m.pendingFuture = token
        break
      }
      case "cancel": {
        const m = model.get(o.id); if (!m) break
        const r = resumes.get(o.id); if (!r) break
        yield* r.cancel
        resumes.delete(o.id)
        if (m.resumeToken === r.token) { m.catchingUp = false; m.resumeToken = undefined }
        break
      }
      case "badresume": {
        const m = model.get(o.id); if (!m) break
        yield* Effect.result(hub.resume(o.id, "undefined"))
        if (m.resumeToken === undefined) m.catchingUp = false
        break
      }
      case "join": {
        const m = model.get(o.id); if (!m) break
        m.rooms = new Set([...(m.rooms ?? []), ...o.r])
        if (m.rooms.size === 0) m.rooms = undefined
        yield* Effect.result(hub.join(o.id, o.r))
        break
      }
      case "leave": {
        const m = model.get(o.id); if (!m || !m.rooms) break
        m.rooms = new Set([...m.rooms].filter((r) => !o.r.includes(r)))
        if (m.rooms.size === 0) m.rooms = undefined
        yield* hub.leave(o.id, o.r)
        break
      }
      case "broadcast":
      case "flood": {
        if (o.k === "flood") recent = []
        const evs = o.k === "broadcast" ? [[o.t, o.d]] : Array.from({ length: o.n }, () => [`f.${++floodSeq}`, {}])
        for (const [t, d] of evs as any) {
          const rooms = roomsOfData(d)
          let n = 0
          for (const [cid, m] of model) {
            const ok = m.patterns.some((p) => Topic.matches(p, t)) &&
              (m.allowed === undefined || m.allowed.some((p) => Topic.matches(p, t))) &&
              !m.catchingUp && (m.rooms === undefined || rooms.some((r) => m.rooms!.has(r)))
            if (ok) { expected.get(cid)!.push(t); n++ }
          }
          const count = yield* hub.broadcast(t, d); recent.push({ id: hub.history.newest!.id, t, rooms }); if (recent.length > 8) recent.shift()
          for (const m of model.values()) if (m.pendingFuture !== undefined) { if (m.pendingFuture === m.resumeToken) { m.catchingUp = false; m.resumeToken = undefined } m.pendingFuture = undefined }
          if (count !== n) throw new Error(`count ${count} != model ${n} for ${t}\n` + log.join("\n"))
        }
        break
      }
    }
  }
  for (const [cid, c] of conns) {
    const got = c.got.filter((x) => !x.startsWith("hub.")).map((x) => x.split("|")[0])
    if (JSON.stringify(got) !== JSON.stringify(expected.get(cid))) {
      throw new Error(`client ${cid}: got ${JSON.stringify(got.slice(-20))} expected ${JSON.stringify(expected.get(cid)!.slice(-20))}\n` + log.join("\n"))
    }
  }
})

it("hub deliveries match a naive model over random sequences of operations", async () => {
  await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 20, maxLength: 80, size: "max" }), async (ops) => {
    await Effect.runPromise(Effect.scoped(run(ops)).pipe(Effect.provide(layerLocal.pipe(Layer.provide(HubConfig.layer())))))
  }), { numRuns: Number(process.env.MODEL_RUNS ?? 200) })
}, 120_000)
