import * as HttpServerResponse from "effect/http/HttpServerResponse"

/**
 * Longest reason an error answer carries, in characters. Reasons may quote the request (a field's value, a path, a
 * pattern); past this they are cut, so an answer never echoes more than a short excerpt of what was sent.
 */
export const maxReasonLength = 500

/** `reason`, cut to `maxReasonLength` characters with a note of how much was left out. */
export const boundedReason = (reason: string): string => {
  if (reason.length <= maxReasonLength) return reason
  const note = ` ... (${reason.length - maxReasonLength} more characters)`
  return reason.slice(0, maxReasonLength - note.length) + note
}

/** An HTTP refusal: the status and `{"error": "<reason>"}`, the shape every endpoint answers with. */
export const problem = (status: number, error: string, headers: Record<string, string> = {}) =>
  HttpServerResponse.jsonUnsafe({ error: boundedReason(error) }, { status, headers })
