/**
 * The dashboard's HTML: one page, its script inline, charts drawn by uPlot
 * (served by the hub under /dashboard/assets). It reads /dashboard/stream
 * (server-sent events: `stats` every second, `event` for the tail) and
 * reconnects on its own (EventSource).
 */

const style = `
body{font:14px system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{display:flex;gap:1rem;align-items:center;padding:.6rem 1rem;background:#1d2330;color:#fff}
header h1{font-size:1rem;margin:0;font-weight:600}
header .label{opacity:.75}
#feed,#health{padding:.1rem .5rem;border-radius:.3rem;background:#8a6d00}
#feed.live{background:#2b7a3d}
#feed.down{background:#a61e1e}
#health.ok{background:#2b7a3d}
#health.unavailable{background:#a61e1e}
#health.unknown{background:#5c6270}
main.stale .figure b,main.stale section>div,main.stale table{opacity:.35;filter:grayscale(1)}
#stale-note{display:none;grid-column:1/-1;margin:0;padding:.5rem .8rem;border-radius:.4rem;background:#fff3bf}
main.stale #stale-note{display:block}
.by{font-size:.8rem;opacity:.8}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1rem;padding:1rem}
section{background:#fff;border-radius:.4rem;padding:.8rem;box-shadow:0 1px 2px #0002}
h2{font-size:.9rem;margin:0 0 .5rem}
.figures{display:flex;flex-wrap:wrap;gap:1.2rem}
.figure b{display:block;font-size:1.5rem}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.15rem .4rem;border-bottom:1px solid #eee}
#tail{font:12px ui-monospace,monospace;max-height:22rem;overflow:auto;margin:0;padding:0;list-style:none}
#tail li{border-bottom:1px solid #eee;padding:.15rem 0;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
input,textarea,button{font:inherit}textarea{width:100%;height:4rem}
.wide{grid-column:1/-1}
`

const script = `
const $ = (id) => document.getElementById(id)
const windowSize = 300
const times = [], clientsSeries = [], deliveriesSeries = [], typeSeries = new Map()
let previous, paused = false, held = [], topTypes = []
const chart = (el, title, series) => new uPlot({
  width: el.clientWidth || 400, height: 180, title,
  series: [{}, ...series.map((label, i) => ({ label, stroke: ["#2f6fdf","#d9480f","#2b8a3e","#ae3ec9","#e67700","#495057"][i % 6] }))],
  axes: [{}, { size: 50 }]
}, [[], ...series.map(() => [])], el)
const clientsChart = chart($("clients-chart"), "Connected clients", ["clients"])
const deliveriesChart = chart($("deliveries-chart"), "Deliveries per second", ["deliveries/s"])
let typesChart
const rebuildTypes = () => {
  if (typesChart) typesChart.destroy()
  $("types-chart").innerHTML = ""
  typesChart = chart($("types-chart"), "Events per second by type", topTypes.length ? topTypes : ["(none yet)"])
}
rebuildTypes()
const push = (array, value) => { array.push(value); if (array.length > windowSize) array.shift() }
// What the page knows, and since when. The feed is this page's own stream; the health is the hub's. When the feed
// is down or silent, nothing shown is current: the figures are greyed and the health becomes unknown.
const staleAfter = 3000
let lastStats = 0, feed = "connecting"
// Why the hub ended the feed, until a new snapshot comes (EventSource reconnects on its own).
let endedBecause
const setFeed = (state, text) => { feed = state; $("feed").textContent = text; $("feed").className = state }
const setHealth = (status, detail) => {
  $("health").textContent = status + (detail ? " (" + detail + ")" : "")
  $("health").className = status
}
const markStale = (why) => {
  $("main").classList.add("stale")
  $("stale-note").textContent = why + (lastStats ? "; the figures below are from " + new Date(lastStats).toLocaleTimeString() : "")
  setHealth("unknown")
  $("rabbitmq").textContent = "unknown"
}
setInterval(() => {
  if (feed === "live" && Date.now() - lastStats > staleAfter) { setFeed("down", "silent"); markStale("No news from the hub for " + staleAfter / 1000 + " s") }
}, 500)
// A snapshot sent at once on a health change can follow the previous one closely: it updates the figures, not the
// per-second rates and charts, which need a second between two snapshots.
const onStats = (s) => {
  lastStats = Date.now()
  endedBecause = undefined
  if (feed !== "live") setFeed("live", "live")
  $("main").classList.remove("stale")
  $("clients").textContent = s.clients
  $("clients-by").textContent = Object.entries(s.clients_by_transport).map(([t, n]) => t + " " + n).join(", ")
  $("history").textContent = s.history
  $("rabbitmq").textContent = s.rabbitmq.status + (s.rabbitmq.detail ? " (" + s.rabbitmq.detail + ")" : "")
  $("reconnects").textContent = s.rabbitmq.reconnects ?? 0
  const notUp = Object.entries(s.checks).filter(([, c]) => c.status !== "up" && c.status !== "disabled")
  setHealth(s.status, notUp.map(([name, c]) => name + ": " + (c.detail ?? c.status)).join(", "))
  $("disconnects").innerHTML = Object.entries(s.disconnects).filter(([, n]) => n > 0)
    .map(([reason, n]) => "<tr><td>" + reason + "</td><td>" + n + "</td></tr>").join("") || "<tr><td>none yet</td></tr>"
  const seconds = s.at / 1000
  if (previous && seconds - previous.at / 1000 < 0.5) return
  const dt = previous ? seconds - previous.at / 1000 : 1
  push(times, seconds)
  push(clientsSeries, s.clients)
  push(deliveriesSeries, previous ? (s.deliveries - previous.deliveries) / dt : 0)
  for (const type of new Set([...Object.keys(s.events_by_type), ...typeSeries.keys()])) {
    if (!typeSeries.has(type)) typeSeries.set(type, times.slice(0, -1).map(() => 0))
    const before = previous?.events_by_type[type] ?? 0
    push(typeSeries.get(type), previous ? ((s.events_by_type[type] ?? 0) - before) / dt : 0)
  }
  const top = [...Object.entries(s.events_by_type)].sort((a, b) => b[1] - a[1]).slice(0, 6).map(([t]) => t).sort()
  if (top.join() !== topTypes.join()) { topTypes = top; rebuildTypes() }
  clientsChart.setData([times, clientsSeries])
  deliveriesChart.setData([times, deliveriesSeries])
  typesChart.setData([times, ...(topTypes.length ? topTypes.map((t) => typeSeries.get(t)) : [times.map(() => 0)])])
  $("events-rate").textContent = previous ? Math.round((s.events_broadcast - previous.events_broadcast) / dt) : 0
  $("deliveries-rate").textContent = Math.round(deliveriesSeries.at(-1))
  previous = s
}
const words = (text) => text === "" ? [] : text.split(".")
const matches = (pattern, type) => {
  const p = words(pattern), t = words(type)
  const go = (i, j) => {
    if (i === p.length) return j === t.length
    if (p[i] === "#") { for (let k = j; k <= t.length; k++) if (go(i + 1, k)) return true; return false }
    return j < t.length && (p[i] === "*" || p[i] === t[j]) && go(i + 1, j + 1)
  }
  return go(0, 0)
}
const visible = (e) => {
  const pattern = $("filter-pattern").value.trim(), room = $("filter-room").value.trim()
  if (pattern !== "" && !matches(pattern, e.type)) return false
  if (room !== "") { const [k, ...v] = room.split(":"); if (String(e.data?.[k]) !== v.join(":")) return false }
  return true
}
const show = (e) => {
  if (!visible(e)) return
  const li = document.createElement("li")
  li.textContent = e.timestamp.slice(11, 23) + "  " + e.type + "  " + JSON.stringify(e.data)
  li.dataset.type = e.type
  $("tail").prepend(li)
  while ($("tail").children.length > 200) $("tail").lastChild.remove()
}
const onEvent = (e) => paused ? held.push(e) : show(e)
$("pause").onclick = () => {
  paused = !paused
  $("pause").textContent = paused ? "Resume" : "Pause"
  if (!paused) { held.forEach(show); held = [] }
}
const publish = $("publish")
if (publish) publish.onsubmit = async (ev) => {
  ev.preventDefault()
  let data
  try { data = JSON.parse($("publish-data").value || "{}") } catch { $("publish-result").textContent = "data is not JSON"; return }
  const response = await fetch("/dashboard/publish", { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ type: $("publish-type").value, data }) })
  $("publish-result").textContent = response.status + " " + JSON.stringify(await response.json())
}
const source = new EventSource("/dashboard/stream")
// Live only once a snapshot came: an open stream that says nothing yet shows nothing current.
source.addEventListener("open", () => { if (feed !== "live") setFeed("connecting", "connecting") })
source.addEventListener("error", () => {
  setFeed("down", "reconnecting")
  markStale(endedBecause ? "The hub ended this page's feed: " + endedBecause : "This page lost its connection to the hub")
})
source.addEventListener("end", (m) => {
  endedBecause = JSON.parse(m.data).reason
  setFeed("down", "ended")
  markStale("The hub ended this page's feed: " + endedBecause)
})
source.addEventListener("stats", (m) => onStats(JSON.parse(m.data)))
source.addEventListener("event", (m) => onEvent(JSON.parse(m.data)))
`

const publishForm = `
<section><h2>Publish a test event</h2>
<form id="publish"><input id="publish-type" value="dashboard.test" aria-label="type" required>
<textarea id="publish-data" aria-label="data">{"message": "hello"}</textarea>
<button>Publish</button> <span id="publish-result"></span></form></section>`

/** The dashboard itself, with the publish form when publishing is enabled. */
export const dashboardPage = ({ publishing }: { readonly publishing: boolean }) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Event hub dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/dashboard/assets/uPlot.min.css"><style>${style}</style></head>
<body><header><h1>Event hub</h1>
<span class="label">hub health</span><b id="health" class="unknown">unknown</b>
<span class="label">this page's feed</span><span id="feed" class="connecting">connecting</span></header>
<main id="main" class="stale">
<p id="stale-note">Waiting for the first figures from the hub</p>
<section class="wide"><div class="figures">
<div class="figure">Connected clients<b id="clients">-</b><span class="by" id="clients-by"></span></div>
<div class="figure">Events broadcast/s<b id="events-rate">-</b></div>
<div class="figure">Deliveries/s<b id="deliveries-rate">-</b></div>
<div class="figure">History depth<b id="history">-</b></div>
<div class="figure">RabbitMQ<b id="rabbitmq">-</b></div>
<div class="figure">Reconnects<b id="reconnects">-</b></div>
</div></section>
<section><div id="clients-chart"></div></section>
<section><div id="types-chart"></div></section>
<section><div id="deliveries-chart"></div></section>
<section><h2>Disconnects by reason</h2><table id="disconnects"></table></section>
<section class="wide"><h2>Live tail</h2>
<input id="filter-pattern" placeholder="pattern, e.g. backtest.#" aria-label="pattern">
<input id="filter-room" placeholder="room, e.g. run_id:42" aria-label="room">
<button id="pause">Pause</button>
<ul id="tail"></ul></section>
${publishing ? publishForm : ""}
</main>
<script src="/dashboard/assets/uPlot.iife.min.js"></script>
<script>${script}</script>
</body></html>`

/** The sign-in form (the token is posted, never put in the address). */
export const loginPage = (error: string | undefined) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Event hub dashboard: sign in</title><style>${style}</style></head>
<body><header><h1>Event hub</h1></header><main><section>
<h2>Dashboard token</h2>
${error === undefined ? "" : `<p role="alert">${error}</p>`}
<form method="post" action="/dashboard/login">
<input type="password" name="token" aria-label="token" autocomplete="current-password" required>
<button>Open the dashboard</button></form>
</section></main></body></html>`
