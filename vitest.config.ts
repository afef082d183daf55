import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    environment: "edge-runtime",
    // convex-test answers index lookups by scanning the table, so a test that writes a few
    // hundred documents takes seconds when the shared cores are busy: 5 s (the default) is a
    // timing assertion, not a hang guard.
    testTimeout: 30_000,
    server: { deps: { inline: ["convex-test"] } },
    include: [
      "convex/**/*.test.ts",
      "examples/**/*.test.ts",
      // The official client against the test server (a node-environment test that starts it).
      "tests/convex-server/**/*.test.ts",
    ],
  },
});
