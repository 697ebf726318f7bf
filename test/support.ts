/**
 * Test helpers, one file per kind under support/: the hub on a free port and HTTP requests (hub.ts), real `ws`
 * clients (wsClient.ts), the built service as a process (process.ts), the broker (broker.ts), a TCP proxy to cut
 * connections (proxy.ts). Tests import them from here.
 */
export * from "./support/broker.js"
export * from "./support/hub.js"
export * from "./support/process.js"
export * from "./support/proxy.js"
export * from "./support/wsClient.js"
