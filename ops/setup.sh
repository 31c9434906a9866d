#!/usr/bin/env bash
# Installs what building and testing Caravan needs on a Debian machine (run as root). Idempotent.
set -euo pipefail
need=()
for pkg in libclang-dev g++ make pkg-config zlib1g-dev libssl-dev python3 python3-pip; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "ops/setup.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# promtool (checks and unit-tests ops/prometheus/alerts.yml) comes with Debian's prometheus package; its
# recommends (node exporter) are not needed. Nothing is started: the package's service needs systemd.
if ! command -v promtool >/dev/null 2>&1; then
  echo "ops/setup.sh: installing prometheus (for promtool)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "ops/setup.sh: cargo is missing: install Rust 1.88 or newer (https://rustup.rs), then rerun" >&2
  exit 1
fi
# The fixed target directory of .cargo/config.toml (kept between builds: RocksDB's C++ takes ~13 minutes).
mkdir -p /var/cache/caravan
