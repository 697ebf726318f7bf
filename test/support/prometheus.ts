/**
 * Scrapes the hub's Prometheus exposition and parses it with a real
 * Prometheus text parser (`parse-prometheus-text-format`).
 */
import { Effect } from "effect"
import parsePrometheusTextFormat from "parse-prometheus-text-format"
import { baseUrl } from "../support.js"

export interface Sample {
  readonly value?: string
  readonly labels?: Record<string, string>
  readonly buckets?: Record<string, string>
  readonly count?: string
  readonly sum?: string
}

export interface Family {
  readonly name: string
  readonly help: string
  readonly type: "COUNTER" | "GAUGE" | "HISTOGRAM" | "SUMMARY" | "UNTYPED"
  readonly metrics: ReadonlyArray<Sample>
}

export interface Scrape {
  readonly contentType: string
  readonly families: ReadonlyMap<string, Family>
}

/** GETs `path` with `accept` and parses the body. */
export const scrape = (path = "/metrics", accept = "text/plain;version=0.0.4") =>
  Effect.flatMap(baseUrl, (url) =>
    Effect.promise(async (): Promise<Scrape> => {
      const response = await fetch(`${url}${path}`, { headers: { accept } })
      if (response.status !== 200) throw new Error(`GET ${path}: ${response.status}`)
      const families = parsePrometheusTextFormat(await response.text()) as Array<Family>
      return {
        contentType: response.headers.get("content-type") ?? "",
        families: new Map(families.map((family) => [family.name, family]))
      }
    }))

/** The value of the sample of `name` whose labels include `labels` (undefined if absent). */
export const valueOf = (scraped: Scrape, name: string, labels: Record<string, string> = {}): number | undefined => {
  const sample = scraped.families.get(name)?.metrics.find((metric) =>
    Object.entries(labels).every(([key, value]) => metric.labels?.[key] === value)
  )
  return sample?.value === undefined ? undefined : Number(sample.value)
}
