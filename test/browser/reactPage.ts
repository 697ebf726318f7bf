// A dashboard under React StrictMode: the connection state and the count of events received, from the hooks. Every
// state rendered is recorded in order (`window.__states`), the first render's included.
import { createElement, StrictMode } from "react"
import { createRoot } from "react-dom/client"
import { HubProvider, useHubEvents, useHubState } from "../../src/client/react.js"

const rendered: Array<string> = (window as unknown as { __states: Array<string> }).__states = []

const Dashboard = () => {
  const state = useHubState()
  if (rendered.at(-1) !== state) rendered.push(state)
  const events = useHubEvents("test.#", { limit: 1000 })
  return createElement("div", { id: "out" }, `${state} ${events.length} ${events.at(-1)?.id ?? "-"}`)
}

const url = new URLSearchParams(location.search).get("hub")!
createRoot(document.getElementById("root")!).render(
  createElement(StrictMode, null, createElement(HubProvider, { url, options: { eventTypes: ["test.#"] } }, createElement(Dashboard)))
)
