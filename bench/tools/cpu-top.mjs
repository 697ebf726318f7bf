// Summarises a .cpuprofile (from `npm run bench -- --profile`): self time by function and by file.
//   node bench/tools/cpu-top.mjs bench/results/profiles/hub/<file>.cpuprofile [rows]
import { readFileSync } from "node:fs"

const profile = JSON.parse(readFileSync(process.argv[2], "utf8"))
const rows = Number(process.argv[3] ?? 30)
const nodes = new Map(profile.nodes.map((node) => [node.id, node]))
const self = new Map()
profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)))

const short = (url) => url.replace(/.*node_modules\//, "").replace(/^file:\/\/.*?\/(dist|bench)\//, "$1/")
const byFunction = new Map()
const byFile = new Map()
let total = 0
for (const [id, micros] of self) {
  const { functionName, url, lineNumber } = nodes.get(id).callFrame
  const fn = `${functionName || "(anonymous)"} ${short(url)}:${lineNumber + 1}`
  const file = url ? short(url).split("/").slice(0, 3).join("/") : functionName
  byFunction.set(fn, (byFunction.get(fn) ?? 0) + micros)
  byFile.set(file, (byFile.get(file) ?? 0) + micros)
  total += micros
}
const print = (map, count) => {
  for (const [name, micros] of [...map].sort((a, b) => b[1] - a[1]).slice(0, count)) {
    console.log(`${(micros / 1000).toFixed(1).padStart(9)} ms ${((100 * micros) / total).toFixed(1).padStart(5)}%  ${name}`)
  }
}
console.log(`total ${(total / 1000).toFixed(0)} ms`)
print(byFunction, rows)
console.log("--- by file")
print(byFile, 15)
