/**
 * Traces from the publisher to the socket: the built service with the
 * standard OpenTelemetry variables exports spans over OTLP/HTTP to a receiver
 * started by the test; a W3C `traceparent` on an AMQP message or on
 * `POST /api/v1/events` makes the hub's span a child of the publisher's.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { broker, brokerUrl, freePort, promise, ServiceProcess, TestClient, uniqueNames } from "./support.js"
import { OtlpReceiver } from "./support/otlp.js"

const hex = (bytes: number) => randomBytes(bytes).toString("hex")

describe("traces (node dist/main.js with OTEL_EXPORTER_OTLP_ENDPOINT)", () => {
  it.live("the hub's spans are children of the publisher's, name the event and count its recipients", () =>
    Effect.gen(function*() {
      const publisher = yield* broker
      const receiver = yield* Effect.acquireRelease(promise(() => OtlpReceiver.start()), (r) => promise(() => r.close()))
      const { exchange, queue } = uniqueNames("tracing")
      const port = yield* promise(() => freePort())
      const service = ServiceProcess.start({
        PORT: String(port),
        HOST: "127.0.0.1",
        RABBITMQ_URL: brokerUrl,
        RABBITMQ_MODE: "queue",
        RABBITMQ_EXCHANGE: exchange,
        RABBITMQ_QUEUE: queue,
        PUBLISH_TOKEN: "trace-token",
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
        OTEL_SERVICE_NAME: "hub-under-test",
        OTEL_BSP_SCHEDULE_DELAY: "50"
      })
      yield* Effect.addFinalizer(() =>
        promise(async () => {
          service.child.kill("SIGKILL")
          await publisher.cleanup({ exchange, queues: [queue] })
        })
      )
      yield* promise(() => service.waitForLog("consuming from RabbitMQ"))
      expect(service.output).toContain("\"message\":\"exporting traces\"")
      const client = yield* promise(() => TestClient.connect(`ws://127.0.0.1:${port}/api/v1/ws/events`))
      yield* promise(() => client.request({ action: "subscribe", event_types: ["traced.#"] }, "hub.subscribed"))

      // An AMQP message with the publisher's traceparent.
      const [traceId, parentId] = [hex(16), hex(8)]
      publisher.channel.publish(exchange, "traced.amqp", Buffer.from(JSON.stringify({ event_id: "ev-1" })), {
        headers: { traceparent: `00-${traceId}-${parentId}-01` }
      })
      yield* promise(() => client.until(() => client.events.length === 1, "the AMQP event"))
      const consumed = yield* promise(() =>
        receiver.waitFor((span) => span.name === "hub.event" && span.traceId === traceId, "hub.event span of the AMQP message")
      )
      expect(consumed.parentSpanId).toBe(parentId)
      expect(consumed.attributes).toMatchObject({
        "hub.event.type": "traced.amqp",
        "hub.event.event_id": "ev-1",
        "hub.event.source": "rabbitmq",
        "hub.recipients": 1
      })
      expect(String(consumed.attributes["hub.event.id"])).toBe(client.events[0]!.id)
      expect(consumed.resource["service.name"]).toBe("hub-under-test")

      // POST /api/v1/events with a traceparent: the request's span is its child; the event, published to the
      // exchange with the request's trace context, is consumed in the same trace.
      const [postTrace, postParent] = [hex(16), hex(8)]
      const response = yield* promise(() =>
        fetch(`http://127.0.0.1:${port}/api/v1/events`, {
          method: "POST",
          headers: {
            authorization: "Bearer trace-token",
            "content-type": "application/json",
            traceparent: `00-${postTrace}-${postParent}-01`
          },
          body: JSON.stringify({ type: "traced.http", data: { n: 2 } })
        })
      )
      expect(response.status).toBe(202)
      yield* promise(() => client.until(() => client.events.length === 2, "the POSTed event"))
      const request = yield* promise(() =>
        receiver.waitFor((span) => span.traceId === postTrace && span.parentSpanId === postParent, "the POST's span")
      )
      const viaBroker = yield* promise(() =>
        receiver.waitFor((span) => span.name === "hub.event" && span.traceId === postTrace, "the POSTed event's span")
      )
      expect(viaBroker.attributes).toMatchObject({ "hub.event.type": "traced.http", "hub.recipients": 1 })
      expect(viaBroker.parentSpanId).not.toBe("")
      expect(viaBroker.parentSpanId).not.toBe(postParent)
      void request

      // A client's requests have spans too.
      yield* promise(() => receiver.waitFor((span) => span.name === "hub.request.subscribe", "a subscribe span"))
      const since = client.events[0]!.id as string
      yield* promise(() => client.request({ action: "subscribe", event_types: ["traced.#"], since }, "hub.subscribed"))
      yield* promise(() => receiver.waitFor((span) => span.name === "hub.request.resume", "a resume span"))
      for (const type of receiver.contentTypes) expect(type).toContain("application/json")
      client.close()
      service.child.kill("SIGTERM")
      expect(yield* promise(() => service.exited)).toEqual({ code: 0, signal: null })
    }), { timeout: 30_000 })
})
