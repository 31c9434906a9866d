#!/usr/bin/env bash
# The whole test suite, set-up included: Debian packages, formatting, lints, unit, property, RocksDB and
# end-to-end tests. Everything builds in the release profile, so RocksDB's C++ is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# Dependencies point one way: operators and state never import each other. (The trees are captured first so
# that a failing `cargo tree` stops the script instead of passing the check.)
operators_deps=$(cargo tree -p caravan-operators -e normal --prefix none)
state_deps=$(cargo tree -p caravan-state -e normal --prefix none)
if grep -q '^caravan-state' <<<"$operators_deps"; then
  echo "operators depends on state" >&2; exit 1
fi
if grep -q '^caravan-operators' <<<"$state_deps"; then
  echo "state depends on operators" >&2; exit 1
fi
grep -q '^caravan-schemas' <<<"$operators_deps" || { echo "cargo tree listed no dependencies of operators" >&2; exit 1; }
# The two drivers stand on the partition core (engine/src/core), never on each other.
if grep -rqE '(crate|super)::replay' engine/src/service || grep -rqE '(crate|super)::service' engine/src/replay; then
  echo "the replay and Kafka drivers import each other: what both need belongs in engine/src/core" >&2; exit 1
fi
# The alert rules parse, and fire (or stay quiet) as their unit tests say.
promtool check rules ops/prometheus/alerts.yml
(cd ops/prometheus && promtool test rules alerts.test.yml)
# The Kafka tests need a broker: the one named by KAFKA_BOOTSTRAP (a real cluster works), else a local one.
if [[ -z "${KAFKA_BOOTSTRAP:-}" ]]; then
  KAFKA_BOOTSTRAP=$(bash ops/kafka-broker.sh start --fresh | sed -n 's/^BOOTSTRAP=//p')
  export KAFKA_BOOTSTRAP
  trap 'bash ops/kafka-broker.sh stop >/dev/null' EXIT
fi
cargo test --release --workspace
