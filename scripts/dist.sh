#!/usr/bin/env bash
# Assembles dist/: a self-contained static site (page, engine, bundled models and images)
# for any static host. Run after scripts/build-wasm.sh release (`make dist` does both).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

for f in quant_playground_bg.wasm quant_playground_relaxed_bg.wasm; do
  [ -f "www/pkg/$f" ] || { echo "[dist] www/pkg/$f is not built: run make dist" >&2; exit 1; }
done
rm -rf dist
mkdir -p dist/pkg dist/models/images
cp www/*.html www/*.js www/*.css dist/
cp www/pkg/quant_playground.js www/pkg/quant_playground_bg.wasm www/pkg/quant_playground_relaxed_bg.wasm dist/pkg/
cp models/*.onnx models/imagenet_classes.txt models/LICENSES.md models/README.md dist/models/
cp models/images/* dist/models/images/
# The page's npm modules (scripts/serve.mjs VENDOR: /vendor/NAME/ <- a package folder).
node --input-type=module -e '
  import { VENDOR } from "./scripts/serve.mjs";
  for (const [name, dir] of Object.entries(VENDOR)) console.log(name, dir);
' | while read -r name dir; do
  [ -d "$dir" ] || { echo "[dist] $dir is missing: run make setup (npm ci)" >&2; exit 1; }
  mkdir -p "dist/vendor/$name"
  cp -r "$dir"/. "dist/vendor/$name/"
  # The package's licence travels with it (it sits next to dist/ in the package).
  for f in "$dir"/../LICENSE*; do if [ -f "$f" ]; then cp "$f" "dist/vendor/$name/"; fi; done
done

# The headers the page needs, in the _headers format that several static hosts read
# (elsewhere configure the same headers by hand: see README.md, "Deploy").
node --input-type=module -e '
  import { SECURITY_HEADERS } from "./scripts/serve.mjs";
  const lines = ["/*", ...Object.entries(SECURITY_HEADERS).map(([k, v]) => `  ${k}: ${v}`)];
  process.stdout.write(lines.join("\n") + "\n");
' >dist/_headers

files=$(find dist -type f | wc -l)
size=$(du -sh dist | cut -f1)
echo "[dist] dist/: $files files, $size. Serve it with any static host that sends the headers in dist/_headers;"
echo "[dist] to try it locally: node scripts/serve.mjs --root dist"
