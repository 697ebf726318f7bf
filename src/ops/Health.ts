/**
 * What `GET /health` reports: each component (the hub, the RabbitMQ source)
 * sets its own state here. The hub is critical (503 while it cannot serve
 * clients); a source being down only degrades the service.
 */
import { Context, Effect, Layer, Stream, SubscriptionRef } from "effect"

export type ComponentStatus = "up" | "starting" | "down" | "disabled"

export interface ComponentState {
  readonly status: ComponentStatus
  /** A critical component that is not up makes the whole service unavailable (503). */
  readonly critical: boolean
  readonly detail?: string | undefined
}

export type OverallStatus = "ok" | "degraded" | "unavailable"

export interface HealthReport {
  readonly status: OverallStatus
  readonly checks: Record<string, { readonly status: ComponentStatus; readonly detail?: string | undefined }>
}

export class Health extends Context.Service<Health, {
  readonly set: (component: string, state: ComponentState) => Effect.Effect<void>
  readonly report: Effect.Effect<HealthReport>
  /** The report now, then each time it changes (the dashboard shows a change at once, not at its next tick). */
  readonly changes: Stream.Stream<HealthReport>
}>()("event-hub/Health") {
  static readonly layer: Layer.Layer<Health> = Layer.effect(
    Health,
    Effect.map(SubscriptionRef.make(new Map<string, ComponentState>()), (components) => ({
      set: (component, state) => SubscriptionRef.update(components, (all) => new Map(all).set(component, state)),
      report: Effect.map(SubscriptionRef.get(components), summarize),
      changes: SubscriptionRef.changes(components).pipe(
        Stream.map(summarize),
        Stream.changesWith((a, b) => JSON.stringify(a) === JSON.stringify(b))
      )
    }))
  )
}

const summarize = (components: ReadonlyMap<string, ComponentState>): HealthReport => {
  let status: OverallStatus = "ok"
  const checks: HealthReport["checks"] = {}
  for (const [name, state] of components) {
    checks[name] = state.detail === undefined ? { status: state.status } : { status: state.status, detail: state.detail }
    if (state.status === "up" || state.status === "disabled") continue
    if (state.critical) status = "unavailable"
    else if (status === "ok") status = "degraded"
  }
  return { status, checks }
}
