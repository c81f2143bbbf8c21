// Bundle the web client into dist/ (packaged as `vatlas.webapp`). Deterministic: no timestamps, no source maps,
// so a rebuild of unchanged sources is byte-identical (tests/test_browser_build.py checks dist/ is current).
// Usage: node build.mjs [outdir]
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const outdir = process.argv[2] ?? "dist";
rmSync(outdir, { recursive: true, force: true });
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: true,
  legalComments: "none",
  charset: "utf8",
  outfile: join(outdir, "app.js"),
  logLevel: "warning",
});
for (const name of ["index.html", "style.css", "favicon.svg"]) copyFileSync(join("static", name), join(outdir, name));
// dist/ is an importable package (vatlas.webapp) so the wheel carries it as package data.
writeFileSync(join(outdir, "__init__.py"), '"""The built vatlas web client (static files served by `vatlas serve`)."""\n');
