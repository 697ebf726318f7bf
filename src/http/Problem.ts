import * as HttpServerResponse from "@effect/platform/HttpServerResponse"

/** An HTTP refusal: the status and `{"error": "<reason>"}`, the shape every endpoint answers with. */
export const problem = (status: number, error: string, headers: Record<string, string> = {}) =>
  HttpServerResponse.unsafeJson({ error }, { status, headers })
