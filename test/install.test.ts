/**
 * Getting the client library as docs/clients.md says, from an empty folder: `scripts/try-install.mjs` installs the
 * built package by path (offline: npm links it and fetches nothing), then runs a Node program with `ws` against the
 * built hub, bundles a browser page with esbuild and type-checks a sample under `strict` with the installed types.
 * (`npm run try-install` also tries the tarball, which needs the registry or a warm npm cache for the dependencies.)
 */
import { spawn } from "node:child_process"
import { describe, expect, it } from "vitest"

describe("getting the client library (scripts/try-install.mjs)", () => {
  it("by path, into an empty folder: a Node app receives an event, a page bundles, the types check", async () => {
    const child = spawn(process.execPath, ["scripts/try-install.mjs", "--route", "path", "--offline"], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    child.stdout.on("data", (chunk) => (output += chunk))
    child.stderr.on("data", (chunk) => (output += chunk))
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve))
    expect(output).toContain("path: a Node program with ws received an event from the hub")
    expect(output).toContain("path: a browser page bundled with esbuild")
    expect(output).toContain("path: TypeScript (strict) accepts a sample")
    expect(code, output).toBe(0)
  }, 180_000)
})
