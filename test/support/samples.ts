/** The code samples of README.md and docs/*.md: fenced blocks, with where they are. */
import { readdirSync, readFileSync } from "node:fs"

export interface Sample {
  /** `README.md` or `docs/<name>.md`. */
  readonly file: string
  /** The line of the opening fence. */
  readonly line: number
  readonly lang: string
  readonly code: string
}

/** The documents that hold samples. */
export const documents = (): Array<string> => [
  "README.md",
  ...readdirSync("docs").filter((name) => name.endsWith(".md")).sort().map((name) => `docs/${name}`)
]

/** Every fenced block of `file` (indented ones, inside lists, too), its indentation removed. */
export const samplesOf = (file: string): Array<Sample> => {
  const lines = readFileSync(file, "utf8").split("\n")
  const samples: Array<Sample> = []
  for (let i = 0; i < lines.length; i++) {
    const open = /^( *)```(\w*)\s*$/.exec(lines[i]!)
    if (open === null) continue
    const indent = open[1]!.length
    const body: Array<string> = []
    let j = i + 1
    while (j < lines.length && !new RegExp(`^ {${indent}}\`\`\`\\s*$`).test(lines[j]!)) body.push(lines[j++]!.slice(indent))
    samples.push({ file, line: i + 1, lang: open[2]!, code: body.join("\n") })
    i = j
  }
  return samples
}

export const allSamples = (): Array<Sample> => documents().flatMap(samplesOf)
