// `npm test`: bundle each test/*.test.ts with esbuild (for node) into a temporary folder and run node's test
// runner on them. No browser, no DOM: the modules under test are DOM-free.
import { build } from "esbuild";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const tests = readdirSync("test").filter((name) => name.endsWith(".test.ts"));
const out = mkdtempSync(join(tmpdir(), "vatlas-web-tests-"));
try {
  await build({ entryPoints: tests.map((name) => join("test", name)), bundle: true, platform: "node", format: "esm",
                target: ["node20"], outdir: out, outExtension: { ".js": ".mjs" }, logLevel: "warning" });
  const run = spawnSync(process.execPath, ["--test", ...readdirSync(out).map((name) => join(out, name))],
                        { stdio: "inherit" });
  process.exitCode = run.status ?? 1;
} finally {
  rmSync(out, { recursive: true, force: true });
}
