import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The hub's logs: held, and printed for a failing test only (TEST_LOG_LEVEL=debug: as they come).
    setupFiles: ["test/support/heldLogs.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // The RabbitMQ tests share one broker; files run one at a time to keep fault tests isolated.
    fileParallelism: false
  }
})
