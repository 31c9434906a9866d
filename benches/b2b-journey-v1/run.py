#!/usr/bin/env python3
"""End-to-end benchmark of the reference workload b2b-journey-v1 (../shared/bench/WORKLOAD.md).

Generates the workload with the shared generator (cached by its parameters), replays it with the `caravan`
binary, checks every observable count against `gen_workload.py --expect`, and prints events/s (first byte
read to last output committed, as the binary reports it, and wall time around the process) and peak RSS.

    python3 benches/b2b-journey-v1/run.py                       # 100k accounts, 10M events (default)
    python3 benches/b2b-journey-v1/run.py --events 1000000 --accounts 10000
    python3 benches/b2b-journey-v1/run.py --buying-group        # plus a buying group template

Exit status 1 when a count differs.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=100000)
    ap.add_argument("--persons-per-account", type=int, default=8)
    ap.add_argument("--events", type=int, default=10000000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--buying-group", action="store_true",
                    help="add the buying group template of buying-group/ (measures what groups cost)")
    ap.add_argument("--work-dir", default="/var/cache/caravan/bench")
    ap.add_argument("--bin", default="/var/cache/caravan/target/release/caravan")
    ap.add_argument("--shared", default=os.environ.get("CARAVAN_SHARED", os.path.join(ROOT, "..", "shared")))
    args = ap.parse_args()

    os.makedirs(args.work_dir, exist_ok=True)
    name = "w-%d-%d-%d-%d-%d" % (args.accounts, args.persons_per_account, args.events, args.days, args.seed)
    data = os.path.join(args.work_dir, name + ".ndjson")
    expect_path = os.path.join(args.work_dir, name + ".expect.json")
    gen = [sys.executable, os.path.join(args.shared, "bench", "gen_workload.py"),
           "--accounts", str(args.accounts), "--persons-per-account", str(args.persons_per_account),
           "--events", str(args.events), "--days", str(args.days), "--seed", str(args.seed)]
    if not (os.path.exists(data) and os.path.exists(expect_path)):
        print("generating %s ..." % data, file=sys.stderr)
        out = subprocess.run(gen + ["--out", data + ".tmp", "--expect"], check=True, capture_output=True, text=True).stdout
        expect = json.loads(out[out.index("{"):out.rindex("}") + 1])
        os.replace(data + ".tmp", data)
        with open(expect_path, "w") as f:
            json.dump(expect, f)
    with open(expect_path) as f:
        expect = json.load(f)

    out_dir = os.path.join(args.work_dir, "out-" + name)
    defs = HERE
    if args.buying_group:
        import shutil
        import tempfile
        defs = tempfile.mkdtemp(prefix="caravan-bench-defs-")
        shutil.copy(os.path.join(HERE, "journey.yaml"), defs)
        shutil.copy(os.path.join(HERE, "buying-group", "bench-bg.yaml"), defs)
    cmd = [args.bin, "replay", "--definitions", defs, "--input", data, "--out", out_dir, "--no-progress"]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    size = os.path.getsize(data)
    print("replaying %d events (%.0f MB) ..." % (args.events, size / 1e6), file=sys.stderr)
    t = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t
    rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if run.returncode != 0:
        print(run.stdout, run.stderr, file=sys.stderr)
        sys.exit(2)
    print(run.stdout.strip())

    got = Counter()
    entered, nurtured = set(), set()
    with open(os.path.join(out_dir, "actions.ndjson")) as f:
        for line in f:
            a = json.loads(line)
            got[a["type"]] += 1
            if a["type"] == "send_email":
                (entered if a["node_id"] == "welcome" else nurtured).add(a["account_id"])
            elif a["type"] == "set_account_attribute":
                got["ent_engaged"] += 1
    with open(os.path.join(out_dir, "changes.ndjson")) as f:
        for line in f:
            # Change events start with {"tenant":...,"change_id":...,"entity":"<kind>"; a substring test is
            # exact here because the workload's ids and values never contain that text.
            got["account_changes" if '"entity":"account"' in line else "person_changes"] += 1
    got["entered"], got["smb_nurtured"] = len(entered), len(nurtured)
    ok = True
    for key in ["send_email", "send_alert", "account_changes", "person_changes", "entered", "ent_engaged", "smb_nurtured"]:
        mark = "ok" if got[key] == expect[key] else "MISMATCH"
        ok &= got[key] == expect[key]
        print("  %-16s %10d  expected %10d  %s" % (key, got[key], expect[key], mark))
    print("  (ent_timeout=%d is not visible in the outputs: a timeout exits without an action)" % expect["ent_timeout"])
    print("events/s (wall, process start to exit): %.0f" % (args.events / wall))
    print("peak RSS: %.0f MiB" % (rss_kb / 1024))
    print("counts: %s" % ("all equal to --expect" if ok else "DIFFER from --expect"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
