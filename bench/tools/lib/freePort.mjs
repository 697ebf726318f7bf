// A port no one listens on now, chosen by the kernel, for a server a tool starts.
import { createServer } from "node:net"

export const freePort = () =>
  new Promise((resolve, reject) => {
    const server = createServer().once("error", reject).listen(0, "127.0.0.1", () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
