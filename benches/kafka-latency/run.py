#!/usr/bin/env python3
"""Kafka-mode latency benchmark: append -> output committed, at steady input rates.

Starts (or reuses) the local broker (ops/kafka-broker.sh), generates the reference workload, publishes the
reference journey, starts one `caravan run`, and drives it with `kafka-latency` (benches/src/bin), which feeds
the input topic at each rate for a while and reads actions and changes with a read_committed consumer. Prints
p50/p99/max per rate and the highest rate whose p99 stays under 100 ms.

    python3 benches/kafka-latency/run.py [--rates 5000,10000,20000,40000] [--seconds 10] [--commit-interval 10ms]
    python3 benches/kafka-latency/run.py --moves 200 [--partitions 2]

`--moves N` measures a person's move instead: to an account on another input partition (a claim through the
person stage) against one on the same partition, one move at a time (see kafka_latency.rs).

On the bundled test broker (noida-db) every idle consumer spins (it answers empty fetches at once; see
ARCHITECTURE.md), and broker, engine and driver share the cores: its latencies are pessimistic.
"""
import argparse, os, random, re, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/cache/caravan/target")


def quantile(buckets, q):
    """The q-quantile of a Prometheus histogram's cumulative buckets [(le, count)], interpolated linearly."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank, prev_le, prev_n = q * total, 0.0, 0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1)
        prev_le, prev_n = le, n
    return prev_le


def engine_view(log):
    """The engine's own view over the whole run, from its /metrics: read-to-commit latency and commit time."""
    port = None
    for line in open(log, errors="replace"):
        m = re.search(r"admin endpoints on http://[^:]+:(\d+)", line)
        if m:
            port = int(m.group(1))
    if port is None:
        return "engine metrics: no admin address in the log"
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = []
    for name in ["caravan_end_to_end_latency_seconds", "caravan_commit_duration_seconds", "caravan_batch_duration_seconds"]:
        buckets = []
        for m in re.finditer(name + r'_bucket\{le="([^"]+)"\} (\S+)', text):
            buckets.append((float(m.group(1).replace("+Inf", "inf")), float(m.group(2))))
        if buckets:
            out.append(f"{name}: p50 {quantile(buckets, 0.5) * 1000:.1f} ms, p99 {quantile(buckets, 0.99) * 1000:.1f} ms")
    for phase in ["produce", "offsets", "deliver", "commit", "apply"]:
        buckets = [(float(m.group(1).replace("+Inf", "inf")), float(m.group(2))) for m in re.finditer(
            r'caravan_kafka_transaction_phase_seconds_bucket\{phase="' + phase + r'",le="([^"]+)"\} (\S+)', text)]
        if buckets:
            out.append(f"commit phase {phase}: p50 {quantile(buckets, 0.5) * 1000:.1f} ms, "
                       f"p99 {quantile(buckets, 0.99) * 1000:.1f} ms")
    return "engine (from its /metrics, whole run):\n  " + "\n  ".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="5000,10000,20000,40000")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--commit-interval", default="10ms")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--moves", type=int, default=0)
    ap.add_argument("--shared", default=os.environ.get("CARAVAN_SHARED", os.path.join(ROOT, "..", "shared")))
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "caravan-engine", "-p", "caravan-benches"], cwd=ROOT, check=True)
    boot = subprocess.run(["bash", os.path.join(ROOT, "ops/kafka-broker.sh"), "start"], check=True,
                          capture_output=True, text=True).stdout
    bootstrap = [l.split("=", 1)[1] for l in boot.splitlines() if l.startswith("BOOTSTRAP=")][0]
    rates = [int(r) for r in a.rates.split(",")]
    events = max(sum(rates) * a.seconds + rates[0] * 3 + 10_000, 200_000)
    work = tempfile.mkdtemp(prefix="caravan-latency-")
    data = os.path.join(work, "w.ndjson")
    if not a.moves:
        subprocess.run([sys.executable, os.path.join(a.shared, "bench/gen_workload.py"), "--accounts", "20000",
                        "--persons-per-account", "4", "--events", str(events), "--days", "30", "--seed", "3",
                        "--out", data], check=True, capture_output=True)
    prefix = "lat%08x" % random.getrandbits(32)
    cfg = os.path.join(work, "caravan.toml")
    with open(cfg, "w") as f:
        f.write(f"""[kafka]
brokers = "{bootstrap}"
group_id = "{prefix}"
instance_id = "{prefix}-0"
[topics]
input = "{prefix}.input"
partitions = {a.partitions}
definitions = "{prefix}.definitions"
actions = "{prefix}.actions"
changes = "{prefix}.changes"
rejected = "{prefix}.rejected"
[state]
dir = "{work}/state"
[admin]
listen = "127.0.0.1:0"
[commit]
interval = "{a.commit_interval}"
[log]
level = "warn"
""")
    caravan = os.path.join(TARGET, "release/caravan")
    subprocess.run([caravan, "publish", "--config", cfg, os.path.join(ROOT, "benches/b2b-journey-v1/journey.yaml")],
                   check=True, capture_output=True)
    run = subprocess.Popen([caravan, "run", "--config", cfg], stderr=open(os.path.join(work, "run.log"), "w"))
    time.sleep(5)  # join the group and restore (empty) partitions
    if a.moves:
        driver = ["--moves", str(a.moves), "--partitions", str(a.partitions)]
    else:
        driver = ["--input", data, "--rates", a.rates, "--seconds", str(a.seconds)]
    try:
        driven = subprocess.run([os.path.join(TARGET, "release/kafka-latency"), "--bootstrap", bootstrap,
                                 "--prefix", prefix] + driver, capture_output=True, text=True)
        engine = engine_view(os.path.join(work, "run.log"))
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
    if driven.returncode != 0:
        sys.exit(f"kafka-latency failed ({driven.returncode}): {driven.stderr.strip()}\nengine log: {work}/run.log")
    out = driven.stdout
    print(f"commit interval {a.commit_interval}, {a.partitions} partitions, one instance")
    print(out.strip())
    print(engine)
    if a.moves:
        return
    best = None
    for line in out.splitlines()[1:]:
        target, sent, samples, p50, p99, mx = line.split(",")
        if int(samples) > 0 and float(p99) < 100 and float(sent) >= 0.95 * float(target):
            best = target
    print(f"highest rate with p99 < 100 ms: {best or 'none of those tried'} events/s")


if __name__ == "__main__":
    main()
