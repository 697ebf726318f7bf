/**
 * Topic patterns with RabbitMQ's rules: words are separated by dots, `*`
 * matches exactly one word and `#` matches zero or more. A pattern without
 * wildcards matches only the identical event type.
 */

import { Result } from "effect"

/** How long a pattern may be: `WS_MAX_PATTERN_LENGTH` and `WS_MAX_PATTERN_WORDS`. */
export interface PatternLimits {
  readonly maxPatternLength: number
  readonly maxPatternWords: number
}

/**
 * The one rule for patterns, wherever they come from (subscriptions, the
 * token's `event_types` claim, `WS_PUBLISH_TYPES`): at most `maxPatternLength`
 * characters and `maxPatternWords` words, no empty word (`a..b`, `.a`), no
 * whitespace or control characters, and `*`/`#` only as whole words. Left:
 * why not, naming the pattern.
 */
export const check = (pattern: string, limits: PatternLimits): Result.Result<string, string> => {
  const shown = JSON.stringify(pattern.length > 64 ? `${pattern.slice(0, 64)}...` : pattern)
  if (pattern.length > limits.maxPatternLength) {
    return Result.fail(`pattern ${shown} is longer than ${limits.maxPatternLength} characters`)
  }
  const words = pattern.split(".")
  if (words.length > limits.maxPatternWords) {
    return Result.fail(`pattern ${shown} has more than ${limits.maxPatternWords} words`)
  }
  if (words.some((word) => word.length === 0)) return Result.fail(`pattern ${shown} has an empty word`)
  // eslint-disable-next-line no-control-regex
  if (/[\s\u0000-\u001f\u007f]/.test(pattern)) {
    return Result.fail(`pattern ${shown} contains whitespace or control characters`)
  }
  if (words.some((word) => word !== "*" && word !== "#" && /[*#]/.test(word))) {
    return Result.fail(`pattern ${shown}: * and # must be whole words`)
  }
  return Result.succeed(pattern)
}

/** True when `pattern` contains a `*` or `#` word. */
export const isWildcard = (pattern: string): boolean => pattern.split(".").some((word) => word === "*" || word === "#")

/**
 * Does `pattern` match `type`? Runs in O(words(pattern) x words(type)) whatever
 * the pattern, so hostile patterns such as `#.#.#.#.x` cannot blow up.
 */
export const matches = (pattern: string, type: string): boolean => {
  if (pattern === type) return true
  if (pattern === "#") return true
  if (!pattern.includes("*") && !pattern.includes("#")) return false
  return matchWords(compile(pattern), type.split("."))
}

/** The pattern's words; consecutive `#` words are equivalent to one. */
const compile = (pattern: string): ReadonlyArray<string> =>
  pattern.split(".").filter((word, i, all) => !(word === "#" && all[i - 1] === "#"))

/**
 * Dynamic programming over (pattern position, target position): can `pattern`
 * consume all of `target`? `#` consumes any run of words; any other pattern
 * word consumes one target word that `fits` it.
 */
const consumes = (
  pattern: ReadonlyArray<string>,
  target: ReadonlyArray<string>,
  fits: (word: string, candidate: string) => boolean
): boolean => {
  // reachable[j]: the pattern prefix processed so far can consume exactly j words of the target.
  let reachable = new Array<boolean>(target.length + 1).fill(false)
  reachable[0] = true
  for (const word of pattern) {
    const next = new Array<boolean>(target.length + 1).fill(false)
    if (word === "#") {
      let any = false
      for (let j = 0; j <= target.length; j++) {
        any = any || reachable[j]!
        next[j] = any
      }
    } else {
      for (let j = 0; j < target.length; j++) {
        if (reachable[j] && fits(word, target[j]!)) next[j + 1] = true
      }
    }
    reachable = next
  }
  return reachable[target.length]!
}

const matchWords = (pattern: ReadonlyArray<string>, type: ReadonlyArray<string>): boolean =>
  consumes(pattern, type, (word, candidate) => word === "*" || word === candidate)

/**
 * Is every event type matched by `pattern` also matched by `allowed`? Decided
 * word by word: `#` in `allowed` covers any run of words of `pattern` (its
 * wildcards included), `*` covers one word or `*`, a literal covers only
 * itself. Sound (never says yes wrongly); it may refuse an unusual spelling
 * of an allowed pattern, such as `*.#` under `#.*`.
 */
export const covers = (allowed: string, pattern: string): boolean =>
  allowed === "#" || allowed === pattern ||
  consumes(compile(allowed), pattern.split("."), (word, candidate) =>
    word === "*" ? candidate !== "#" : candidate === word)
