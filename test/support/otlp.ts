/**
 * A local OTLP/HTTP receiver (JSON protocol, `POST /v1/traces`) on a free
 * port: it keeps every span it is sent, so that a test can wait for one.
 */
import { createServer, type Server } from "node:http"

export interface ReceivedSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId: string
  readonly name: string
  readonly kind: number
  readonly attributes: Record<string, string | number | boolean>
  /** The attributes of the resource it came with (`service.name`, ...). */
  readonly resource: Record<string, string | number | boolean>
}

type AnyValue = { stringValue?: string; intValue?: number | string; boolValue?: boolean; doubleValue?: number }
type KeyValue = { key: string; value: AnyValue }

const attributesOf = (list: ReadonlyArray<KeyValue> | undefined) =>
  Object.fromEntries((list ?? []).map(({ key, value }) => [
    key,
    value.stringValue ?? (value.intValue !== undefined ? Number(value.intValue) : undefined) ?? value.boolValue ??
      value.doubleValue ?? ""
  ]))

export class OtlpReceiver {
  readonly spans: Array<ReceivedSpan> = []
  readonly contentTypes = new Set<string>()
  private listeners = new Set<() => void>()
  private constructor(private readonly server: Server, readonly port: number) {}

  static start(): Promise<OtlpReceiver> {
    return new Promise((resolve) => {
      const server = createServer((request, response) => {
        let body = ""
        request.on("data", (chunk) => (body += chunk))
        request.on("end", () => {
          receiver.contentTypes.add(request.headers["content-type"] ?? "")
          if (request.url === "/v1/traces") receiver.receive(JSON.parse(body))
          response.writeHead(200, { "content-type": "application/json" }).end("{}")
        })
      })
      let receiver: OtlpReceiver
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        receiver = new OtlpReceiver(server, typeof address === "object" && address !== null ? address.port : 0)
        resolve(receiver)
      })
    })
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`
  }

  private receive(request: any) {
    for (const resourceSpans of request.resourceSpans ?? []) {
      const resource = attributesOf(resourceSpans.resource?.attributes)
      for (const scopeSpans of resourceSpans.scopeSpans ?? []) {
        for (const span of scopeSpans.spans ?? []) {
          this.spans.push({
            traceId: span.traceId,
            spanId: span.spanId,
            parentSpanId: span.parentSpanId ?? "",
            name: span.name,
            kind: span.kind,
            attributes: attributesOf(span.attributes),
            resource
          })
        }
      }
    }
    for (const listener of this.listeners) listener()
  }

  /** Resolves with the first span that satisfies `predicate` (received so far or later); rejects after 10 s. */
  waitFor(predicate: (span: ReceivedSpan) => boolean, what = "a span"): Promise<ReceivedSpan> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.spans.find(predicate)
        if (found === undefined) return
        this.listeners.delete(check)
        clearTimeout(timer)
        resolve(found)
      }
      const timer = setTimeout(() => {
        this.listeners.delete(check)
        reject(new Error(`no ${what} among ${this.spans.length} spans: ${this.spans.map((s) => s.name).join(", ")}`))
      }, 10_000)
      this.listeners.add(check)
      check()
    })
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()))
  }
}
