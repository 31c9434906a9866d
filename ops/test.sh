#!/usr/bin/env bash
# The whole test suite, set-up included: Debian packages, formatting, lints, unit, property, RocksDB and
# end-to-end tests. Everything builds in the release profile, so RocksDB's C++ is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# Dependencies point one way: operators and state never import each other.
if cargo tree --release -p caravan-operators -e normal --prefix none | grep -q '^caravan-state'; then
  echo "operators depends on state" >&2; exit 1
fi
if cargo tree --release -p caravan-state -e normal --prefix none | grep -q '^caravan-operators'; then
  echo "state depends on operators" >&2; exit 1
fi
cargo test --release --workspace
