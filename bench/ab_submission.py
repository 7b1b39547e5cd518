#!/usr/bin/python3
"""Alternated comparison of daemon builds (or settings) on one scenario.

This VM shares its host: two identical runs minutes apart differ by more
than most changes do. So a comparison runs the variants in turn, pair after
pair, flipping their order every pair, and reports the pairwise differences
of each figure against the first variant, then their median.

    bench/ab_submission.py --scenario rate1000 --pairs 4 \\
        signed=build unsigned=build/bench-unsigned

A variant is NAME=BUILD_DIR, optionally followed by ,ENV=VALUE settings for
the daemon's environment (e.g. SENDGATE_SPOOL_NO_SYNCFS=1). Each run is one
bench/run-submission.sh --only SCENARIO; every run's spool is kept under
--spool-root until the end (removing 10,000 files right before the next run
slows its file creation on this machine's ext4, see bench/settle.py) and
removed at the end.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import settle  # noqa: E402

# (label, how to read it from one run's JSON)
FIGURES = [
    ("msgs/s", lambda r: r["msgs_per_s"]),
    ("p50 ms", lambda r: r["latency_ms"]["p50"]),
    ("p99 ms", lambda r: r["latency_ms"]["p99"]),
    ("server eod p99 ms", lambda r: r["server_timings"]["eod_p99"]),
    ("sign p99 ms", lambda r: r["server_timings"]["sign_p99"]),
    ("server CPU/msg us", lambda r: 1e6 * r["server_cpu_s"] / max(1, r["accepted"])),
]


def parse_variant(text):
    """NAME=DIR[,ENV=VALUE...] -> (name, build dir, {env})."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError("variant %r: expected NAME=BUILD_DIR[,ENV=VALUE...]"
                                         % text)
    parts = rest.split(",")
    env = {}
    for kv in parts[1:]:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise argparse.ArgumentTypeError("variant %r: %r is not ENV=VALUE" % (text, kv))
        env[k] = v
    return name, os.path.abspath(parts[0]), env


def figures(run):
    """{label: value} of one run's JSON, None where a figure is missing."""
    out = {}
    for label, get in FIGURES:
        try:
            out[label] = float(get(run))
        except (KeyError, TypeError, ValueError):
            out[label] = None
    return out


def summarize(names, pairs):
    """pairs: [{name: figures}] in run order. Returns the report lines: per
    figure, each variant's values, and each other variant's differences
    from the first one pair by pair, with their median."""
    lines = []
    base = names[0]
    for label, _ in FIGURES:
        lines.append(label)
        for n in names:
            vals = [p[n][label] for p in pairs if n in p and p[n][label] is not None]
            lines.append("  %-12s %s" % (n, ", ".join("%.2f" % v for v in vals)))
        for n in names[1:]:
            diffs = [p[n][label] - p[base][label] for p in pairs
                     if n in p and base in p and p[n][label] is not None
                     and p[base][label] is not None]
            if diffs:
                lines.append("  %-12s %s  (median %+.2f)"
                             % (n + "-" + base, ", ".join("%+.2f" % d for d in diffs),
                                statistics.median(diffs)))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", required=True, help="one run-submission.sh scenario")
    ap.add_argument("--pairs", type=int, default=3, help="rounds of every variant (3)")
    ap.add_argument("--algorithm", choices=["rsa", "ed25519", "both"], default=None,
                    help="the tenant's DKIM key (run-submission.sh's default: rsa)")
    ap.add_argument("--spool-root", default=None,
                    help="where the runs' spools go (default: temp folder in /var/tmp)")
    ap.add_argument("variants", nargs="+", type=parse_variant,
                    help="NAME=BUILD_DIR[,ENV=VALUE...]; the first is the reference")
    args = ap.parse_args()
    if len(args.variants) < 2:
        ap.error("give at least two variants")
    root = args.spool_root or tempfile.mkdtemp(prefix="sgab-", dir="/var/tmp")
    settle.wait_settled(root)
    names = [v[0] for v in args.variants]
    pairs = []
    n = 0
    try:
        for p in range(args.pairs):
            order = args.variants if p % 2 == 0 else list(reversed(args.variants))
            got = {}
            for name, build, extra in order:
                n += 1
                js = os.path.join(root, "run%d.json" % n)
                env = dict(os.environ, SENDGATE_BUILD=build, **extra)
                alg = ["--algorithm", args.algorithm] if args.algorithm else []
                subprocess.run([os.path.join(HERE, "run-submission.sh"), "--only", args.scenario,
                                "--no-settle", "--work-dir", root,
                                "--spool-dir", os.path.join(root, "spool%d" % n),
                                "--json", js] + alg, env=env, stdout=subprocess.DEVNULL,
                               check=False)
                try:
                    with open(js) as f:
                        got[name] = figures(json.load(f)[args.scenario])
                except (OSError, ValueError, KeyError) as e:
                    print("%s pair %d %s: no result (%s)" % (time.strftime("%H:%M:%S"), p, name, e))
                    continue
                print("%s pair %d %-10s %s" % (time.strftime("%H:%M:%S"), p, name, "  ".join(
                    "%s %.2f" % (k, v) for k, v in got[name].items() if v is not None)),
                    flush=True)
            pairs.append(got)
    finally:
        if not args.spool_root:
            settle.remove_tree(root)
    print("\n".join(summarize(names, pairs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
