#!/usr/bin/env bash
# Builds Caravan and runs the bundled example journeys over the bundled example events: no broker needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
cargo build --release -p caravan-engine
bin=/var/cache/caravan/target/release/caravan
out=${1:-out/demo}
rm -rf "$out"
"$bin" validate ops/examples/journeys/*
"$bin" replay --definitions ops/examples/journeys --input ops/examples/events.ndjson --out "$out"
echo
echo "== first actions ($out/actions.ndjson)"
head -n 5 "$out/actions.ndjson"
echo "== rejected ($out/rejected.ndjson)"
cat "$out/rejected.ndjson"
