// The client library as a page script gets it: `window.EventHubClient.connect(...)` (bundled by the test).
import * as client from "../../src/client/client.js"

;(globalThis as unknown as { EventHubClient: typeof client }).EventHubClient = client
