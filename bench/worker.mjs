// A benchmark process driven by messages: `call(cmd, args)` sends `{ id, cmd, ...args }` and resolves with the
// child's `{ id, ok }` (rejects with its `{ id, error }`); the child first sends one message when it is ready.
// Used for the load generators and the scenarios' own client processes.
import { fork } from "node:child_process"

export const startWorker = async (modulePath, argv = []) => {
  const child = fork(modulePath, argv, { stdio: ["ignore", "inherit", "inherit", "ipc"] })
  await new Promise((resolve) => child.once("message", resolve))
  let id = 0
  const pending = new Map()
  // A worker that dies fails its pending calls instead of leaving the run waiting.
  child.once("exit", (code) => {
    for (const done of pending.values()) done.reject(new Error(`${modulePath} exited (${code})`))
    pending.clear()
  })
  child.on("message", (message) => {
    const done = pending.get(message.id)
    pending.delete(message.id)
    if (message.error) done.reject(new Error(message.error))
    else done.resolve(message.ok)
  })
  return {
    pid: child.pid,
    call: (cmd, args = {}) =>
      new Promise((resolve, reject) => {
        pending.set(++id, { resolve, reject })
        child.send({ id, cmd, ...args })
      }),
    /** Kills the worker and waits until it is gone (and its sockets closed), so a server stops at once. */
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve()
        child.once("exit", resolve)
        child.kill("SIGKILL")
      })
  }
}
