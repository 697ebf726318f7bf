# The hub as a container, on the current Active LTS line of Node: built with the dev dependencies, run without them.
FROM node:26-alpine AS build
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# No install scripts: the only one is the `node` package's, the pinned Node of `npm start` and `npm test` outside
# Docker (a glibc binary); here the image's Node 26 builds and runs the hub.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# `effect` and `@effect/platform-node` are peer dependencies of the package (an embedding program brings its own) and
# development dependencies of this repository: the service runs on them, so they move to `dependencies` before the
# development dependencies are pruned.
RUN npm run build \
  && node -e 'const fs = require("fs"); const p = require("./package.json"); for (const name of Object.keys(p.peerDependencies ?? {})) if (p.devDependencies?.[name] && !p.peerDependenciesMeta?.[name]?.optional) { (p.dependencies ??= {})[name] = p.devDependencies[name]; delete p.devDependencies[name] } fs.writeFileSync("package.json", JSON.stringify(p, null, 2))' \
  && npm prune --omit=dev --no-audit --no-fund

FROM node:26-alpine
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
USER node
EXPOSE 8080
CMD ["node", "dist/main.js"]
