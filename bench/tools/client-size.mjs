// The client library's size as a browser gets it: src/client/client.ts bundled by esbuild (minified, ES2022: every current browser),
// then gzip -9. `npm run size`; the figure is quoted in the README's Clients section and docs/clients.md.
import { build } from "esbuild"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { gzipSync } from "node:zlib"

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
const sizes = {}
for (const [name, entry, external] of [
  ["client", "src/client/client.ts", []],
  ["react (without React)", "src/client/react.ts", ["react"]]
]) {
  const result = await build({
    entryPoints: [join(root, entry)], bundle: true, minify: true, format: "esm", target: "es2022",
    platform: "browser", write: false, external
  })
  const code = result.outputFiles[0].contents
  sizes[name] = { minified: code.length, gzip: gzipSync(code, { level: 9 }).length }
}
for (const [name, { minified, gzip }] of Object.entries(sizes)) {
  console.log(`${name.padEnd(24)} ${String(minified).padStart(6)} B minified  ${String(gzip).padStart(5)} B min+gzip`)
}
