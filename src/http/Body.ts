/**
 * Reading a request's body with a size limit that always ends in an answer.
 *
 * The platform's own limit (`withMaxBodySize`) destroys the request stream
 * once a body without `Content-Length` (`Transfer-Encoding: chunked`) passes
 * it, and Node then drops the connection: the client gets no answer at all
 * (curl: "Empty reply from server"), after a `100 Continue`. Here the body is
 * read from Node's request directly: past the limit the rest is read and
 * discarded (at most `discardMax` more bytes; past that the connection is
 * dropped, as nothing else stops an endless body), so the route can answer
 * 413 on a connection that still works; the answer then closes it
 * (`connection: close`, see `closeAfter`).
 */
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import { ByteSize, Effect, Result } from "effect"
import { IncomingMessage } from "node:http"

/** Why no body: over the limit, or the request ended badly (the client went away). */
export type BodyError = "too_large" | "unreadable"

/** Bytes of an oversize body read and dropped after the limit, to answer on a working connection. */
export const discardMax = 16 * 1024 * 1024

/** The header of an answer sent before the body was read to its end: the connection is not reused. */
export const closeAfter = { connection: "close" } as const

const fromNode = (message: IncomingMessage, max: number) =>
  Effect.callback<string, BodyError>((resume) => {
    // Read by someone else already: nothing more will come.
    if (message.readableEnded) return resume(Effect.fail("unreadable"))
    const chunks: Array<Buffer> = []
    let size = 0
    let over = false
    const finish = (result: Result.Result<string, BodyError>) => {
      message.off("end", onEnd)
      message.off("error", onError)
      message.off("aborted", onError)
      resume(Result.match(result, { onFailure: Effect.fail, onSuccess: Effect.succeed }))
    }
    const onData = (chunk: Buffer) => {
      size += chunk.length
      if (over) {
        // Answered already; an endless body is cut here.
        if (size > max + discardMax) {
          message.off("data", onData)
          message.socket?.destroy()
        }
        return
      }
      if (size > max) {
        over = true
        chunks.length = 0
        // Still flowing (this listener stays): the rest is read and dropped while the 413 goes out.
        return finish(Result.fail("too_large"))
      }
      chunks.push(chunk)
    }
    const onEnd = () => finish(Result.succeed(Buffer.concat(chunks).toString("utf8")))
    const onError = () => finish(Result.fail("unreadable"))
    message.on("data", onData)
    message.once("end", onEnd)
    message.once("error", onError)
    message.once("aborted", onError)
  })

/**
 * The body as UTF-8 text, at most `max` bytes. A declared `Content-Length`
 * over the limit is refused before anything is read.
 */
export const readText = (
  request: HttpServerRequest.HttpServerRequest,
  max: number
): Effect.Effect<string, BodyError> => {
  if (Number(request.headers["content-length"] ?? 0) > max) return Effect.fail("too_large")
  const source = request.source
  if (source instanceof IncomingMessage) return fromNode(source, max)
  // Another platform's request: its own limit.
  return request.text.pipe(
    Effect.provideService(HttpServerRequest.MaxBodySize, ByteSize.bytes(max)),
    Effect.mapError((): BodyError => "too_large")
  )
}
