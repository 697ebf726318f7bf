/**
 * Bounded abuse (issue 14): handshake deadlines with raw sockets that stall or
 * trickle their headers, the new-connection rate per address, the replay
 * budget and the resume rate. Real sockets against the real server.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { connect as connectTcp, type Socket } from "node:net"
import { Hub } from "../src/hub/Hub.js"
import { AddressBuckets } from "../src/security/AddressBuckets.js"
import { baseUrl, get, hubLayer, promise, range, security, TestClient, wsUrl } from "./support.js"

const securityCounters = Effect.map(get("/metrics"), (response) => response.body.security as Record<string, number>)

/** A raw TCP socket to the server under test, destroyed with the test's scope; collects what it receives. */
const rawSocket = Effect.flatMap(baseUrl, (url) =>
  Effect.acquireRelease(
    promise(() =>
      new Promise<{ socket: Socket; received: () => string; closed: Promise<void> }>((resolve, reject) => {
        const socket = connectTcp(Number(new URL(url).port), "127.0.0.1")
        let text = ""
        socket.on("data", (chunk) => {
          text += chunk.toString()
        })
        const closed = new Promise<void>((done) => socket.on("close", () => done()))
        socket.once("connect", () => resolve({ socket, received: () => text, closed }))
        socket.once("error", reject)
      })
    ),
    ({ socket }) => Effect.sync(() => socket.destroy())
  ))

const upgradeHead = "GET /api/v1/ws/events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
  "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"

describe("handshake deadline (WS_HANDSHAKE_TIMEOUT)", () => {
  layer(hubLayer({ security: security({ handshakeTimeout: Duration.millis(400) }) }), { excludeTestServices: true })(
    "400 ms",
    (it) => {
      it.effect("an upgrade that stalls in its headers is answered 408 and closed, and counted", () =>
        Effect.gen(function*() {
          const before = (yield* securityCounters).handshake_timeout ?? 0
          const raw = yield* rawSocket
          raw.socket.write(upgradeHead) // no blank line: the headers never end
          yield* promise(() => raw.closed)
          expect(raw.received()).toMatch(/^HTTP\/1\.1 408 /)
          expect(raw.received()).toContain("request headers not complete within")
          expect((yield* securityCounters).handshake_timeout).toBe(before + 1)
        }))

      it.effect("an upgrade that trickles its headers (a byte every 20 ms, never stalling) is cut too", () =>
        Effect.gen(function*() {
          const raw = yield* rawSocket
          const text = upgradeHead + "X-Padding: " + "a".repeat(200)
          let sent = 0
          const timer = setInterval(() => {
            if (sent < text.length && !raw.socket.destroyed) raw.socket.write(text[sent++]!)
          }, 20)
          yield* promise(() => raw.closed).pipe(Effect.ensuring(Effect.sync(() => clearInterval(timer))))
          // Cut long before the headers could have been complete (about 5 s of trickling).
          expect(sent).toBeLessThan(text.length)
          expect(raw.received()).toMatch(/^HTTP\/1\.1 408 /)
        }))

      it.effect("a socket that sends nothing at all is closed as well", () =>
        Effect.gen(function*() {
          const raw = yield* rawSocket
          yield* promise(() => raw.closed)
          expect(raw.received()).toMatch(/^HTTP\/1\.1 408 /)
        }))

      it.effect("a complete handshake is not affected: the connection outlives the deadline", () =>
        Effect.gen(function*() {
          const url = yield* wsUrl
          const client = yield* Effect.acquireRelease(promise(() => TestClient.connect(url)), (c) => Effect.sync(() => c.close()))
          const hub = yield* Hub
          // Three deadlines later (pings at the default period never come: wait for a broadcast instead).
          yield* promise(() => new Promise((resolve) => setTimeout(resolve, 1200)))
          yield* hub.broadcast("backtest.completed", { seq: 1 })
          yield* promise(() => client.until(() => client.events.length === 1, "the event"))
          expect(client.isOpen).toBe(true)
        }))
    }
  )
})

layer(
  hubLayer({ security: security({ connectionRate: 1, connectionBurst: 3 }) }),
  { excludeTestServices: true }
)("new connections per address (WS_CONNECTION_RATE_LIMIT, WS_CONNECTION_RATE_BURST)", (it) => {
  it.effect("past the burst, a new connection is answered 429 with Retry-After, and counted", () =>
    Effect.gen(function*() {
      const url = yield* wsUrl
      const before = (yield* securityCounters).connection_rate_limited ?? 0
      for (let i = 0; i < 3; i++) {
        const client = yield* promise(() => TestClient.connect(url))
        client.close()
      }
      const raw = yield* rawSocket
      raw.socket.write(upgradeHead + "\r\n")
      yield* promise(() => raw.closed)
      const [head, body] = raw.received().split("\r\n\r\n") as [string, string]
      const response = {
        status: Number(head.split(" ")[1]),
        retryAfter: /retry-after: (\d+)/i.exec(head)?.[1],
        body: JSON.parse(body)
      }
      expect(response.status).toBe(429)
      expect(Number(response.retryAfter)).toBeGreaterThanOrEqual(1)
      expect(response.body.error).toContain("new connections per second from your address")
      expect((yield* securityCounters).connection_rate_limited).toBe(before + 1)
    }))
})

describe("AddressBuckets", () => {
  it("refuses an address past its burst, tells when to retry, refills at the rate", () => {
    const buckets = new AddressBuckets(2, 3)
    expect([0, 0, 0].map(() => buckets.take("a", 0))).toEqual([0, 0, 0])
    expect(buckets.take("a", 0)).toBe(1)
    expect(buckets.take("b", 0)).toBe(0) // another address has its own bucket
    expect(buckets.take("a", 500)).toBe(0) // one token back after 0.5 s at 2/s
    expect(buckets.take("a", 500)).toBe(1)
  })

  it("holds at most maxAddresses buckets, however many addresses come", () => {
    const buckets = new AddressBuckets(1, 5, 2000)
    let most = 0
    for (let i = 0; i < 100_000; i++) {
      buckets.take(`10.0.${i >> 8}.${i & 255}`, 0) // all at once: none has refilled
      most = Math.max(most, buckets.size)
    }
    expect(most).toBeLessThanOrEqual(2000)
  })

  it("drops the buckets of addresses that have been quiet long enough to refill", () => {
    const buckets = new AddressBuckets(10, 5, 100_000)
    for (let i = 0; i < 1024; i++) buckets.take(`a${i}`, 0)
    buckets.take("late", 10_000) // everyone refilled by now: swept
    expect(buckets.size).toBe(1)
  })
})

/** Broadcasts `seq` from..to-1. */
const broadcastRange = (from: number, to: number) =>
  Effect.flatMap(Hub, (hub) =>
    Effect.forEach(range(from, to), (seq) => hub.broadcast("backtest.completed", { seq }), { discard: true }))

const connectTo = (query = "") =>
  Effect.flatMap(wsUrl, (url) =>
    Effect.acquireRelease(promise(() => TestClient.connect(url + query)), (c) => Effect.sync(() => c.close())))

const seqs = (client: TestClient) => client.events.map((event) => event.data.seq as number)

layer(hubLayer({ historyReplayMax: 5 }), { excludeTestServices: true })("replay budget (HISTORY_REPLAY_MAX)", (it) => {
  it.effect("a resume that cannot be placed gets the gap notice and the newest 5 events only, then live", () =>
    Effect.gen(function*() {
      yield* broadcastRange(0, 20)
      // Well-formed, of another run: the hub cannot place it.
      const client = yield* connectTo("?since=" + "1700000000000abcd-0000000000000042")
      yield* promise(() => client.until(() => client.messages.some((m) => m.type === "hub.live"), "hub.live"))
      const gap = client.messages[0]!
      expect(gap.type).toBe("hub.history_gap")
      expect(gap.data.reason).toBe("unknown")
      expect(seqs(client)).toEqual([15, 16, 17, 18, 19])
      expect(gap.data.oldest_available).toBe(client.events[0]!.id)
      expect(client.messages.find((m) => m.type === "hub.live")!.data.replayed).toBe(5)
      yield* broadcastRange(20, 21)
      yield* promise(() => client.until(() => seqs(client).at(-1) === 20, "the live event"))
    }))

  it.effect("a resume the history covers still gets every missed event, beyond the budget", () =>
    Effect.gen(function*() {
      const first = yield* connectTo()
      yield* broadcastRange(100, 101)
      yield* promise(() => first.until(() => seqs(first).at(-1) === 100, "event 100"))
      const since = first.events.at(-1)!.id as string
      yield* broadcastRange(101, 121)
      const client = yield* connectTo("?since=" + since)
      yield* promise(() => client.until(() => client.messages.some((m) => m.type === "hub.live"), "hub.live"))
      expect(seqs(client)).toEqual(range(101, 121))
      expect(client.messages.some((m) => m.type === "hub.history_gap")).toBe(false)
    }))
})

layer(
  hubLayer({ security: security({ resumeRate: 2, resumeRatePerIp: 4 }) }),
  { excludeTestServices: true }
)("resume rate (WS_RESUME_RATE_LIMIT, WS_RESUME_RATE_LIMIT_PER_IP)", (it) => {
  it.effect("a connection that resumes again and again is refused with hub.error resume_rate_limited; an address too", () =>
    Effect.gen(function*() {
      yield* broadcastRange(0, 3)
      const client = yield* connectTo()
      const since = "1700000000000abcd-0000000000000042"
      const before = (yield* securityCounters).resume_rate_limited ?? 0
      for (let i = 0; i < 2; i++) {
        yield* promise(() => client.request({ action: "subscribe", event_types: ["#"], since }, "hub.live"))
      }
      const refused = yield* promise(() =>
        client.request({ action: "subscribe", event_types: ["backtest.#"], since }, "hub.error")
      )
      expect(refused.data.code).toBe("resume_rate_limited")
      expect(refused.data.message).toContain("2 per minute on one connection")
      // Nothing replayed, nothing changed: the subscription is still "#" and the client is live.
      yield* broadcastRange(50, 51)
      yield* promise(() => client.until(() => seqs(client).at(-1) === 50, "a live event"))
      expect(client.messages.filter((m) => m.type === "hub.live")).toHaveLength(2)

      // Two more resumes from the address (?since= on connect), then the address is over its 4 per minute.
      for (let i = 0; i < 2; i++) {
        const other = yield* connectTo("?since=" + since)
        yield* promise(() => other.until(() => other.messages.some((m) => m.type === "hub.live"), "hub.live"))
      }
      const late = yield* connectTo("?since=" + since)
      yield* promise(() => late.until(() => late.messages.some((m) => m.type === "hub.error"), "hub.error"))
      const error = late.messages.find((m) => m.type === "hub.error")!
      expect(error.data.code).toBe("resume_rate_limited")
      expect(error.data.message).toContain("4 per minute from one address")
      // Refused, it goes live rather than waiting for a replay that never comes.
      yield* broadcastRange(60, 61)
      yield* promise(() => late.until(() => seqs(late).at(-1) === 60, "a live event"))
      expect(late.events.map((e) => e.data.seq)).toEqual([60])
      expect((yield* securityCounters).resume_rate_limited).toBe(before + 2)
    }))
})
