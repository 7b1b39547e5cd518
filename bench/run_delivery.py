#!/usr/bin/python3
"""Delivery benchmark: fills the spool with N committed messages of a given
size for one tenant, then starts sendgate with delivery on against a fast
local sink (bench/sink/fastsink.c, built on the fly, or the tests' Python
sink, as its own process, found through the test DNS server) and measures delivered msgs/s, from the first message
the sink receives to the last, with connection reuse
([delivery] messages_per_connection).

    bench/run_delivery.py [--messages 20000] [--size 5120] [--rcpts 1]
                          [--per-connection 100] [--connections 10]
    bench/run_delivery.py --with-submission [--messages 20000]
                          (acceptance with delivery off, then on)

Prints one line of results and a JSON document (--json). Uses a throwaway
PostgreSQL cluster like the integration tests.
"""

import argparse
import hashlib
import json
import os
import secrets
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import sgharness as h  # noqa: E402
from dnsserver import DNSServer  # noqa: E402
import settle  # noqa: E402
import cpustat  # noqa: E402

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUV"


def rec(t, data):
    return struct.pack(">BI", t, len(data)) + data


def queue_id(n):
    """20 characters of [0-9A-V], sorting in creation order."""
    s = ""
    v = int(time.time() * 1e6) * 1000 + n
    for _ in range(11):
        s = ALPHABET[v % 32] + s
        v //= 32
    return s + "".join(secrets.choice(ALPHABET) for _ in range(9))


def queue_file(qid, tenant_id, tenant, sender, rcpts, size):
    hdr = ("From: %s\r\nTo: %s\r\nSubject: bench %s\r\nMessage-ID: <%s@bench>\r\n\r\n"
           % (sender, rcpts[0], qid, qid)).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again. 0123456789\r\n"
    body = (line * (size // len(line) + 1))[:max(0, size - len(hdr))]
    body = body[:len(body) - len(body) % len(line)] or line
    out = rec(1, b"SENDGATE-Q1") + rec(2, body) + rec(3, hdr)
    out += rec(10, qid.encode()) + rec(11, ("%d %s" % (tenant_id, tenant)).encode())
    out += rec(13, sender.encode())
    for r in rcpts:
        out += rec(14, r.encode())
    out += rec(15, str(int(time.time())).encode())
    return out + rec(255, hashlib.sha256(out).digest())


def pause_delivery(d):
    """Stops the daemon's delivery child (SIGSTOP) once it is ready; its pids."""
    h.eventually(lambda: children(d.proc.pid), timeout=30, what="delivery process")
    time.sleep(1)  # past its start-up scan
    pids = children(d.proc.pid)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def combined(args, build):
    """Submission (sendgate-bench, 50 connections) with delivery off and
    with delivery on to the fast sink, alternated over --rounds (off, on,
    on, off, ...) so that drift of a shared machine hits both alike: does
    delivery slow acceptance?"""
    exe = os.path.join(build, "sendgate-bench")
    settle.wait_settled("/var/tmp")
    work = tempfile.mkdtemp(prefix="sgbench-both-", dir="/var/tmp")
    pg = h.Postgres()
    dns = DNSServer(port=0)
    dns.start()
    sink = None
    runs = {"off": [], "on": []}
    try:
        ctl = h.Ctl(build, pg.url)
        ctl.migrate()
        t = h.setup_tenant(ctl, algorithm=args.algorithm)
        sink_port = h.free_port()
        sexe = os.path.join(work, "fastsink")
        h.run(["cc", "-O2", "-o", sexe, os.path.join(HERE, "sink", "fastsink.c")])
        # The sink stands in for receiving servers on other machines: as
        # SCHED_IDLE it only takes CPU time nothing else here wants, so its
        # work does not count against acceptance (the drain time shows
        # whether it kept up).
        sink = subprocess.Popen([sexe, str(sink_port)], stdout=subprocess.PIPE, text=True,
                                preexec_fn=lambda: os.sched_setscheduler(
                                    0, os.SCHED_IDLE, os.sched_param(0)))
        assert sink.stdout.readline().startswith("PORT")
        dns.set("example.net", "MX", ["10 mx.example.net"])
        dns.set("mx.example.net", "A", ["127.0.0.1"])
        cert = h.make_cert(os.path.join(work, "tls"))
        order = []
        for r in range(args.rounds):
            order += ["off", "on"] if r % 2 == 0 else ["on", "off"]
        for n, mode in enumerate(order):
            extra = {}
            if args.cpu_priority:
                extra["delivery__cpu_priority"] = args.cpu_priority
            if args.reuse_max_age:
                extra["spool__reuse_max_age"] = args.reuse_max_age
            if args.acceptance_first:
                extra["delivery__acceptance_first"] = args.acceptance_first
            d = h.Daemon(build, pg, os.path.join(work, "%d-%s" % (n, mode)), cert=cert,
                         delivery__enabled="yes" if mode == "on" else "no",
                         delivery__port=sink_port, dns__servers="127.0.0.1:%d" % dns.port,
                         env=({"SENDGATE_SPOOL_NO_SYNCFS": "1"} if args.no_syncfs else None),
                         **extra)
            drain = None
            stopped = []
            try:
                if mode == "on" and args.pause_delivery:
                    stopped = pause_delivery(d)
                cpu0 = cpustat.snapshot()
                r = subprocess.run([exe, "--json", "-q", "-H", "127.0.0.1", "-p",
                                    str(d.submission_port), "-u", t.username, "-P", t.secret,
                                    "--from", t.addr("bench"), "--to", "rcpt%d@example.net",
                                    "-c", "50", "-n", str(args.messages)]
                                   + (["--pipelining"] if args.pipelining else []),
                                   capture_output=True, text=True, timeout=1800)
                cpu1 = cpustat.snapshot()
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
                stopped = []
                res = json.loads(r.stdout)
                # Delivered while acceptance ran: accepted minus still queued.
                during = res["accepted"] - len(d.queue_ids()) if mode == "on" else None
                if mode == "on":
                    t0 = time.monotonic()
                    h.eventually(lambda: not d.queue_ids(), timeout=300, interval=0.1,
                                 what="spool empty")
                    drain = time.monotonic() - t0
                left = len(d.queue_ids())
            finally:
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
                # Each round's spool stays until the end: removing 20,000
                # files would slow the next round's file creation (see
                # bench/settle.py) and trim their blocks meanwhile.
                d.stop()
                os.sync()
            runs[mode].append({"accepted_msgs_per_s": res["msgs_per_s"],
                               "p99_ms": res["latency_ms"]["p99"], "left_in_spool": left,
                               "drained_after_s": drain, "delivered_during": during})
            print("submission c50%s %s %6d msgs, delivery %-3s: %7.1f msgs/s accepted, "
                  "p99 %5.1f ms%s"
                  % (" pipelined" if args.pipelining else "", args.algorithm, args.messages,
                     "on, stopped while loaded" if mode == "on" and args.pause_delivery
                     else mode, res["msgs_per_s"], res["latency_ms"]["p99"],
                     ", %d delivered meanwhile, spool empty %.1f s after the last 250"
                     % (during, drain) if drain is not None
                     else ", %d left in the spool" % left), flush=True)
            if args.cpu_report:
                print(cpustat.report(cpu0, cpu1, res["accepted"]), flush=True)
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        dns.stop()
        pg.stop()
        settle.remove_tree(work)
    med = {m: statistics.median(x["accepted_msgs_per_s"] for x in runs[m]) for m in runs}
    print("median of %d: delivery off %.1f msgs/s, on %.1f msgs/s accepted (%+.1f %%), "
          "cpu_priority=%s reuse_max_age=%s acceptance_first=%s"
          % (args.rounds, med["off"], med["on"], 100.0 * (med["on"] - med["off"]) / med["off"],
             args.cpu_priority or "default", args.reuse_max_age or "default",
             args.acceptance_first or "default"))
    if args.json:
        print(json.dumps({"runs": runs, "median": med}))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--rcpts", type=int, default=1, help="recipients per message")
    ap.add_argument("--per-connection", type=int, default=100)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--sink", choices=("c", "python"), default="c",
                    help="c: bench/sink/fastsink.c (built here); python: the tests' sink")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--no-syncfs", action="store_true",
                    help="--with-submission: SENDGATE_SPOOL_NO_SYNCFS=1 (fdatasync per file)")
    ap.add_argument("--with-submission", action="store_true",
                    help="instead: the submission benchmark with delivery off and on")
    ap.add_argument("--rounds", type=int, default=3,
                    help="--with-submission: off/on pairs, alternated (3)")
    ap.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa",
                    help="--with-submission: DKIM key of the tenant's domain (rsa)")
    ap.add_argument("--pipelining", action="store_true",
                    help="--with-submission: the client pipelines (RFC 2920)")
    ap.add_argument("--reuse-max-age", metavar="DURATION",
                    help="--with-submission: [spool] reuse_max_age (0: delete delivered files)")
    ap.add_argument("--cpu-priority", choices=("background", "low", "normal"),
                    help="--with-submission: [delivery] cpu_priority (the daemon's default)")
    ap.add_argument("--acceptance-first", choices=("yes", "no"),
                    help="--with-submission: [delivery] acceptance_first (the daemon's default)")
    ap.add_argument("--pause-delivery", action="store_true",
                    help="--with-submission: in the 'on' rounds, stop the delivery process "
                         "(SIGSTOP) while the load runs, then let it drain: what delivery "
                         "costs acceptance apart from its own work")
    ap.add_argument("--cpu-report", action="store_true",
                    help="--with-submission: CPU per accepted message by process and "
                         "thread, and the machine's split, for each round")
    args = ap.parse_args()

    build = h.build_dir()
    if args.with_submission:
        return combined(args, build)
    settle.wait_settled("/var/tmp")
    work = tempfile.mkdtemp(prefix="sgbench-delivery-", dir="/var/tmp")
    pg = h.Postgres()
    dns = sink = d = dproc = None
    try:
        ctl = h.Ctl(build, pg.url)
        ctl.migrate()
        t = h.setup_tenant(ctl)
        tenant_id = int(pg.scalar("SELECT id FROM tenants WHERE name = '%s'" % t.name))

        # The spool, filled as the submission side would have left it.
        spool = os.path.join(work, "spool")
        for sub in ("tmp", "queue", "quarantine"):
            os.makedirs(os.path.join(spool, sub), exist_ok=True)
        t0 = time.monotonic()
        for i in range(args.messages):
            qid = queue_id(i)
            rcpts = ["r%d-%d@bench.test" % (i, k) for k in range(args.rcpts)]
            with open(os.path.join(spool, "queue", qid), "wb") as f:
                f.write(queue_file(qid, tenant_id, t.name, t.addr(), rcpts, args.size))
        fill = time.monotonic() - t0
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "nobody:nogroup", spool], check=True)

        sink_port = h.free_port()
        if args.sink == "c":
            exe = os.path.join(work, "fastsink")
            h.run(["cc", "-O2", "-o", exe, os.path.join(HERE, "sink", "fastsink.c")])
            argv = [exe, str(sink_port)]
        else:
            argv = [sys.executable, os.path.join(REPO, "tests", "integration", "sink.py"),
                    "--host", "127.0.0.1", "--port", str(sink_port)]
        sink = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().startswith("PORT")
        dns = DNSServer(port=0)
        dns.start()
        dns.set("bench.test", "MX", ["10 mx.bench.test"])
        dns.set("mx.bench.test", "A", ["127.0.0.1"])

        d = h.Daemon(build, pg, os.path.join(work, "daemon"), spool_dir=spool, start=False,
                     delivery__enabled="yes", delivery__port=sink_port,
                     dns__servers="127.0.0.1:%d" % dns.port,
                     delivery__messages_per_connection=args.per_connection,
                     delivery__max_connections_per_destination=args.connections)
        exe = os.environ.get("SENDGATE_DELIVERY_EXE")
        start = time.monotonic()
        if exe:
            # A separate delivery binary taking the config file (development).
            d.config_path += ".delivery"
            d.write_config()
            dproc = subprocess.Popen([exe, d.config_path], stderr=subprocess.DEVNULL)
        else:
            d.start()
        first = last = None
        total = args.messages
        count = 0
        deadline = time.monotonic() + args.timeout
        while count < total and time.monotonic() < deadline:
            line = sink.stdout.readline()
            if not line:
                break
            parts = line.split()
            if parts[0] == "COUNT":
                count = int(parts[1])
                ts = float(parts[2])
                if first is None:
                    first = (ts, count)
                last = (ts, count)
        # Wait for the spool to empty (every result recorded).
        h.eventually(lambda: not os.listdir(os.path.join(spool, "queue")), timeout=60,
                     what="empty spool")
        emptied = time.monotonic() - start
        # The sink reports once a second: rate between its first and last report.
        if first and last and last[0] > first[0]:
            rate = (last[1] - first[1]) / (last[0] - first[0])
        else:
            rate = float("nan")
        res = {
            "messages": total, "delivered": count, "size": args.size, "rcpts": args.rcpts,
            "messages_per_connection": args.per_connection,
            "connections": args.connections, "fill_seconds": round(fill, 2),
            "seconds_to_empty_spool": round(emptied, 2),
            "msgs_per_s": round(rate, 1),
            "msgs_per_s_overall": round(total / emptied, 1),
        }
        if args.json:
            print(json.dumps(res))
        print("delivery: %d msgs x %d B, %d rcpt(s), %d per connection, %d connections: "
              "%.0f msgs/s steady (%.0f msgs/s incl. start-up, spool empty after %.1fs)"
              % (total, args.size, args.rcpts, args.per_connection, args.connections, rate,
                 total / emptied, emptied))
        return 0 if count >= total else 1
    finally:
        if d is not None and not os.environ.get("SENDGATE_DELIVERY_EXE"):
            d.stop()
        if dproc is not None:
            dproc.terminate()
            dproc.wait(20)
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        if dns is not None:
            dns.stop()
        pg.stop()
        settle.remove_tree(work)


if __name__ == "__main__":
    sys.exit(main())
