// Imports a TypeScript module of the repository (test/support/...) from a plain Node script: esbuild (already a
// dev dependency) bundles it with its relative imports, leaves packages external, and writes it under
// node_modules/.cache so that those packages resolve from the repository.
import { build } from "esbuild"
import { mkdirSync, rmSync } from "node:fs"
import { basename, dirname, join, resolve } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..")

export const importTs = async (path) => {
  const outdir = join(root, "node_modules", ".cache", "bench-ts")
  mkdirSync(outdir, { recursive: true })
  const outfile = join(outdir, `${basename(path, ".ts")}.${process.pid}.mjs`)
  await build({
    entryPoints: [resolve(root, path)],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    packages: "external",
    outfile,
    logLevel: "error"
  })
  try {
    return await import(pathToFileURL(outfile).href)
  } finally {
    rmSync(outfile, { force: true })
  }
}
