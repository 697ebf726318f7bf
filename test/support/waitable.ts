/** What a test client shares: a test waits for a condition on what it received, checked whenever something arrives. */
export abstract class Waitable {
  private readonly listeners = new Set<() => void>()

  /** What the client received last, for the timeout's message. */
  protected abstract lastReceived(): string

  /** Re-checks the conditions waited for: call on everything that arrives. */
  protected notify() {
    for (const listener of this.listeners) listener()
  }

  /** Resolves once `condition` holds (checked on everything that arrives); rejects after `timeoutMs`. */
  until(condition: () => boolean, what = "condition", timeoutMs = 10_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!condition()) return
        this.listeners.delete(check)
        clearTimeout(timer)
        resolve()
      }
      const timer = setTimeout(() => {
        this.listeners.delete(check)
        reject(new Error(`timed out waiting for ${what}; ${this.lastReceived()}`))
      }, timeoutMs)
      this.listeners.add(check)
      check()
    })
  }
}
