// What N connections hold: the difference between two heap snapshots (before and after connecting), per
// connection, by object type and constructor, and by the source location of closures.
//   node --max-old-space-size=4000 bench/tools/heap-diff.mjs before.heapsnapshot after.heapsnapshot <connections>
// Take the snapshots with `node --heapsnapshot-signal=SIGUSR2 dist/main.js` and `kill -USR2 <pid>` (a snapshot
// forces a full GC first, so only live objects count).
import { readFileSync } from "node:fs"

const summarise = (file) => {
  const snapshot = JSON.parse(readFileSync(file, "utf8"))
  const meta = snapshot.snapshot.meta
  const fields = meta.node_fields
  const width = fields.length
  const types = meta.node_types[0]
  const { nodes, strings } = snapshot
  const [type, name, size] = ["type", "name", "self_size"].map((field) => fields.indexOf(field))
  const objects = new Map()
  for (let i = 0; i < nodes.length; i += width) {
    const kind = types[nodes[i + type]]
    const label = kind.includes("string") ? "(string)" : kind === "code" || kind === "number" ? "" : strings[nodes[i + name]]
    const key = `${kind}: ${label}`.slice(0, 90)
    const entry = objects.get(key) ?? { count: 0, bytes: 0 }
    entry.count++
    entry.bytes += nodes[i + size]
    objects.set(key, entry)
  }
  const closures = new Map()
  const locationFields = meta.location_fields
  for (let k = 0; k < snapshot.locations.length; k += locationFields.length) {
    const at = (field) => snapshot.locations[k + locationFields.indexOf(field)]
    const index = at("object_index")
    if (types[nodes[index + type]] !== "closure") continue
    const key = `${strings[nodes[index + name]] || "(anonymous)"} script ${at("script_id")} line ${at("line") + 1}:${at("column")}`
    closures.set(key, (closures.get(key) ?? 0) + 1)
  }
  return { objects, closures }
}

const [beforeFile, afterFile, connections] = [process.argv[2], process.argv[3], Number(process.argv[4])]
const before = summarise(beforeFile)
const after = summarise(afterFile)
const rows = [...after.objects].map(([key, { count, bytes }]) => {
  const old = before.objects.get(key) ?? { count: 0, bytes: 0 }
  return [key, (count - old.count) / connections, (bytes - old.bytes) / connections]
}).filter(([, , bytes]) => bytes > 0).sort((a, b) => b[2] - a[2])
console.log(`live heap per connection: ${rows.reduce((sum, [, , bytes]) => sum + bytes, 0).toFixed(0)} bytes`)
for (const [key, count, bytes] of rows.slice(0, 40)) console.log(`${bytes.toFixed(0).padStart(7)} B ${count.toFixed(2).padStart(7)}  ${key}`)
console.log("--- closures per connection, by source location (script ids: see the snapshot in DevTools)")
for (const [key, count] of after.closures) {
  const per = (count - (before.closures.get(key) ?? 0)) / connections
  if (per >= 0.9) console.log(`${per.toFixed(2).padStart(7)}  ${key}`)
}
