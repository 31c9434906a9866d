#!/usr/bin/env bash
# A local Kafka-protocol broker for tests, CI and trying Caravan out: noida-db, a single binary shipped in a PyPI
# wheel (no Java, no Docker), with only its Kafka service on, bound to 127.0.0.1. It passes the exactly-once path
# Caravan uses (transactions, offsets in transactions, read_committed, fencing); see ARCHITECTURE.md for its
# limits. Any real Kafka cluster works instead: Caravan and its tests only need a bootstrap address.
#
#   bash ops/kafka-broker.sh start [--port 19092] [--dir /var/cache/caravan/broker] [--fresh]
#   bash ops/kafka-broker.sh stop|status [--dir DIR]
#
# `start` is idempotent, prints BOOTSTRAP=127.0.0.1:PORT, and waits until the broker answers a Kafka request.
# --fresh starts from an empty data folder.
set -euo pipefail

VERSION=0.2.3
WHEEL_SHA256=40a2fb15567e3d344e7483df62bb439e7d64ac6fb232f4f223554aed58204f82 # manylinux x86_64 wheel

cmd=start
case "${1:-}" in start | stop | status) cmd=$1; shift ;; esac
port=${BROKER_PORT:-19092}
dir=${BROKER_DIR:-/var/cache/caravan/broker}
fresh=0
while (($#)); do
  case $1 in
    --port) port=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --fresh) fresh=1; shift ;;
    *) echo "kafka-broker.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=$dir/bin/noida-db
pidfile=$dir/broker.pid
log=$dir/broker.log

# True when something answers a Kafka ApiVersions request on the port.
answers() {
  python3 - "$port" <<'PY'
import socket, struct, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    client = b"caravan"
    req = struct.pack(">hhih", 18, 0, 42, len(client)) + client  # ApiVersions v0, correlation id 42
    s.sendall(struct.pack(">i", len(req)) + req)
    size = struct.unpack(">i", s.recv(4))[0]
    body = b""
    while len(body) < size:
        part = s.recv(size - len(body))
        if not part:
            break
        body += part
    correlation, error = struct.unpack(">ih", body[:6])
    sys.exit(0 if correlation == 42 and error == 0 else 1)
except Exception:
    sys.exit(1)
PY
}

alive() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

install() {
  if [[ -x $bin ]] && "$bin" version 2>/dev/null | grep -q "noida-db $VERSION"; then return; fi
  mkdir -p "$dir/bin" "$dir/wheel"
  echo "kafka-broker.sh: fetching noida-db $VERSION from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dir/wheel" "noida-db==$VERSION" >&2
  local wheel
  wheel=$(ls "$dir"/wheel/noida_db-"$VERSION"-*.whl | head -n1)
  if [[ $(uname -m) == x86_64 ]]; then
    echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet - >&2
  fi
  python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("noida_db/noida-db"))' \
    "$wheel" >"$bin.part"
  chmod +x "$bin.part"
  mv "$bin.part" "$bin"
}

case $cmd in
  status)
    if alive && answers; then echo "running: BOOTSTRAP=127.0.0.1:$port pid $(cat "$pidfile")"; else echo "not running"; exit 1; fi
    ;;
  stop)
    if alive; then
      pid=$(cat "$pidfile")
      kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; sleep 0.5; fi
      rm -f "$pidfile"
      echo "stopped"
    else
      echo "not running"
    fi
    ;;
  start)
    if alive && answers; then echo "BOOTSTRAP=127.0.0.1:$port"; exit 0; fi
    # A broker that is still shutting down may answer for a moment.
    for _ in $(seq 50); do answers || break; sleep 0.2; done
    if answers; then echo "kafka-broker.sh: something else answers on 127.0.0.1:$port" >&2; exit 1; fi
    install
    ((fresh)) && rm -rf "$dir/data"
    mkdir -p "$dir/data"
    # setsid: the broker outlives the shell that started it (CI stops it with `stop`).
    setsid "$bin" start --data-dir "$dir/data" --host 127.0.0.1 --only kafka --kafka-port "$port" >"$log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 100); do
      if answers; then echo "BOOTSTRAP=127.0.0.1:$port"; exit 0; fi
      if ! alive; then echo "kafka-broker.sh: the broker exited; its log:" >&2; cat "$log" >&2; exit 1; fi
      sleep 0.1
    done
    echo "kafka-broker.sh: no answer on 127.0.0.1:$port after 10 s; see $log" >&2
    exit 1
    ;;
esac
