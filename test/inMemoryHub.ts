/**
 * The hub's services as one object, for the unit tests that drive the hub
 * with in-memory connections (the services come from one layer).
 */
import { Effect } from "effect"
import { HubHistory } from "../src/hub/History.js"
import { Hub, HubClients } from "../src/hub/Hub.js"

export const wholeHub = Effect.map(
  Effect.all({ hub: Hub, clients: HubClients, history: HubHistory }),
  ({ clients, history, hub }) => ({ ...hub, ...clients, history })
)
