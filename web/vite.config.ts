import { defineConfig } from "vite";

// ternd serves the build at /ui/ (scripts/build-web.sh; crates/tern-daemon/src/web.rs).
export default defineConfig({
  base: "/ui/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    chunkSizeWarningLimit: 800,
  },
});
