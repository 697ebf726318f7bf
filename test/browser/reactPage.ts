// A dashboard under React StrictMode: the connection state and the count of events received, from the hooks.
import { createElement, StrictMode } from "react"
import { createRoot } from "react-dom/client"
import { HubProvider, useHubEvents, useHubState } from "../../src/client/react.js"

const Dashboard = () => {
  const state = useHubState()
  const events = useHubEvents("test.#", { limit: 1000 })
  return createElement("div", { id: "out" }, `${state} ${events.length} ${events.at(-1)?.id ?? "-"}`)
}

const url = new URLSearchParams(location.search).get("hub")!
createRoot(document.getElementById("root")!).render(
  createElement(StrictMode, null, createElement(HubProvider, { url, options: { eventTypes: ["test.#"] } }, createElement(Dashboard)))
)
