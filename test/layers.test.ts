/**
 * The layout is the architecture (docs/design.md): the folders of `src/`
 * stand on floors, and a file imports from its own folder or from a lower
 * floor, never back up; and no file imports itself back through others (no
 * cycle). Read from the sources' own import and export declarations and
 * `import()` calls, as TypeScript reads them, `import type` included.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs"
import { dirname, join, relative, resolve } from "node:path"
import ts from "typescript"
import { describe, expect, it } from "vitest"

const src = resolve(import.meta.dirname, "../src")

/**
 * Lowest first. Folders on one floor do not import each other; `.` is `main.ts`, `service.ts` and `index.ts`, which
 * compose and export the rest.
 */
const floors: ReadonlyArray<ReadonlyArray<string>> = [
  ["protocol"],
  ["config", "client"],
  ["ops"],
  ["security", "hub", "host"],
  ["rabbitmq"],
  ["connection"],
  ["http"],
  ["."]
]

const floorOf = (folder: string) => floors.findIndex((floor) => floor.includes(folder))

const sources = (dir: string): Array<string> =>
  readdirSync(dir).flatMap((name) => {
    const path = join(dir, name)
    return statSync(path).isDirectory() ? sources(path) : path.endsWith(".ts") ? [path] : []
  })

/** `src/`-relative path of a file; its folder is its first segment (`.` at the top). */
const nameOf = (path: string) => relative(src, path)
const folderOf = (name: string) => (name.includes("/") ? name.slice(0, name.indexOf("/")) : ".")

/** The files of `src/` that `file` imports or re-exports from. */
const importsOf = (file: string): Array<string> =>
  ts.preProcessFile(readFileSync(file, "utf8"), true, true).importedFiles
    .map((imported) => imported.fileName)
    .filter((specifier) => specifier.startsWith("."))
    .map((specifier) => resolve(dirname(file), specifier.replace(/\.js$/, ".ts")))
    .filter((path) => existsSync(path))

const graph = new Map(sources(src).map((file) => [nameOf(file), importsOf(file).map(nameOf)]))

/** The strongly connected components of more than one file (or a file importing itself): Tarjan's algorithm. */
const cycles = (): Array<Array<string>> => {
  let next = 0
  const index = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: Array<string> = []
  const found: Array<Array<string>> = []
  const visit = (file: string) => {
    index.set(file, next)
    low.set(file, next++)
    stack.push(file)
    for (const target of graph.get(file) ?? []) {
      if (!index.has(target)) {
        visit(target)
        low.set(file, Math.min(low.get(file)!, low.get(target)!))
      } else if (stack.includes(target)) low.set(file, Math.min(low.get(file)!, index.get(target)!))
    }
    if (low.get(file) !== index.get(file)) return
    const component: Array<string> = []
    let member: string
    do {
      member = stack.pop()!
      component.push(member)
    } while (member !== file)
    if (component.length > 1 || (graph.get(file) ?? []).includes(file)) found.push(component.sort())
  }
  for (const file of graph.keys()) if (!index.has(file)) visit(file)
  return found
}

describe("the import graph of src/", () => {
  it("reads every file", () => {
    expect(graph.size).toBeGreaterThan(50)
    expect(graph.get("service.ts")).toContain("http/Server.ts")
    // Dynamic imports count too: main.ts loads the service's layers only where they run.
    expect(graph.get("main.ts")).toContain("service.ts")
  })

  it("puts every folder on a floor", () => {
    const folders = [...new Set([...graph.keys()].map(folderOf))]
    expect(folders.filter((folder) => floorOf(folder) === -1)).toEqual([])
  })

  it("has no import that runs back up a floor, nor across one", () => {
    const wrong = [...graph].flatMap(([file, imports]) =>
      imports
        .filter((target) => {
          const [from, to] = [folderOf(file), folderOf(target)]
          return from !== to && floorOf(to) >= floorOf(from)
        })
        .map((target) => `${file} -> ${target}`)
    )
    expect(wrong).toEqual([])
  })

  it("has no cycle", () => {
    expect(cycles()).toEqual([])
  })
})
