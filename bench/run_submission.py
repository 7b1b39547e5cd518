#!/usr/bin/python3
"""Submission benchmark: a throwaway PostgreSQL, the real daemon, one tenant,
then build/sendgate-bench in a series of scenarios. Prints one line per
scenario (and --json FILE writes every raw result).

    bench/run-submission.sh                  # the default set
    bench/run-submission.sh --quick          # small counts, for a smoke run
    bench/run-submission.sh --only pipelining,idle-tls
    bench/run-submission.sh --keep           # leave the daemon up, print how to reach it

The spool lives under --spool-dir (default: a temp folder on /var/tmp, which
is a real disk on Debian, unlike a tmpfs /tmp): "250 queued" means fsync, so
the disk under the spool decides the numbers.
"""

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import sgharness as h  # noqa: E402
import settle  # noqa: E402

# name: (sendgate-bench arguments, messages in a full run, in a --quick run)
SCENARIOS = [
    ("single", ["-c", "1"], 1000, 100),
    ("c10", ["-c", "10"], 10000, 500),
    ("c50", ["-c", "50"], 20000, 1000),
    ("pipelining", ["-c", "50", "--pipelining"], 20000, 1000),
    ("tls", ["--tls", "-c", "50"], 20000, 1000),
    ("rcpt10", ["-c", "20", "-r", "10"], 5000, 300),
    ("100k", ["-c", "20", "-s", "100k"], 3000, 200),
    ("reconnect", ["-c", "20", "--per-conn", "1"], 2000, 200),
    ("threads2", ["-c", "50", "-t", "2"], 20000, 1000),
    # Latency at a steady load well under saturation (open loop).
    ("rate200", ["-c", "20", "--rate", "200"], 6000, 400),
    # The DKIM signing share of latency at a steady, heavy load (open loop).
    ("rate500", ["-c", "50", "--rate", "500"], 7500, 500),
    ("rate750", ["-c", "50", "--rate", "750"], 11250, 750),
    ("rate1000", ["-c", "50", "--rate", "1000"], 15000, 1000),
    ("rate2000", ["-c", "50", "--rate", "2000"], 20000, 1000),
]
# name: (security flag, connections in a full run, in a --quick run)
IDLE = [
    ("idle-plain", "--no-tls", 5000, 300),
    ("idle-starttls", "--starttls", 5000, 300),
    ("idle-tls", "--tls", 5000, 300),
]


def bench_exe(build):
    exe = os.path.join(build, "sendgate-bench")
    if not os.access(exe, os.X_OK):
        sys.exit("%s is not built (make build/sendgate-bench)" % exe)
    return exe


def proc_cpu(pid):
    """User plus system CPU seconds of pid (all its threads) so far."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_bench(exe, argv, timeout, server_pid=None):
    """Runs sendgate-bench --json; returns (exit status, parsed JSON or None, stderr).
    The JSON gets client_cpu_s and server_cpu_s: CPU used during the run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    srv0 = proc_cpu(server_pid) if server_pid else 0.0
    r = subprocess.run([exe, "--json", "-q"] + argv, capture_output=True, text=True,
                       timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    srv1 = proc_cpu(server_pid) if server_pid else 0.0
    try:
        data = json.loads(r.stdout) if r.stdout.strip() else None
    except ValueError:
        data = None
    if data is not None and server_pid:
        data["client_cpu_s"] = round((after.ru_utime - before.ru_utime)
                                     + (after.ru_stime - before.ru_stime), 3)
        data["server_cpu_s"] = round(srv1 - srv0, 3)
    return r.returncode, data, r.stderr.strip()


def fmt_load(name, rc, d, err):
    if d is None:
        return "%-11s FAILED (exit %d): %s" % (name, rc, err)
    lat = d["latency_ms"]
    errs = ", ".join("%s:%d" % (k, v["count"]) for k, v in d["errors"].items())
    n = max(d["accepted"], 1)
    cpu = ""
    if "server_cpu_s" in d:
        cpu = "  cpu/msg client %4.0f us server %5.0f us" % (d["client_cpu_s"] / n * 1e6,
                                                            d["server_cpu_s"] / n * 1e6)
    return ("%-11s %7.1f msg/s  p50 %6.2f  p90 %6.2f  p99 %7.2f  max %7.2f ms  "
            "%d/%d ok%s%s  (%.1f s)"
            % (name, d["msgs_per_s"], lat["p50"], lat["p90"], lat["p99"], lat["max"],
               d["accepted"], d["messages"], ("  errors " + errs) if errs else "", cpu,
               d["wall_s"]))


def neighbour(exe, ctl, daemon, quick):
    """A quiet tenant sending 20 msg/s, alone and then while a second tenant
    floods with 50 connections: how much does the neighbour cost it? Under
    each quiet line, the daemon's own timings of the quiet tenant's
    messages show how much of that is the server's."""
    quiet, loud = h.setup_tenant(ctl), h.setup_tenant(ctl)
    n = 100 if quick else 400

    def argv(t, extra):
        return ["-H", "127.0.0.1", "-p", str(daemon.submission_port), "-u", t.username,
                "-P", t.secret, "--from", t.addr("bench")] + extra

    quiet_args = argv(quiet, ["-c", "2", "--rate", "20", "-n", str(n)])
    off = log_size(daemon)
    rc, alone, err = run_bench(exe, quiet_args, timeout=600, server_pid=daemon.proc.pid)
    print(fmt_load("quiet-alone", rc, alone, err), flush=True)
    if alone is not None:
        alone["server_timings"] = server_timings(daemon, off, tenant=quiet.name)
        print(fmt_timings(alone["server_timings"]), flush=True)
    flood = subprocess.Popen([exe, "--json", "-q"] + argv(loud, ["-c", "50", "-n", "100000000"]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # the flood is at full speed before the quiet tenant starts
        off = log_size(daemon)
        rc, shared, err = run_bench(exe, quiet_args, timeout=600)
    finally:
        flood.send_signal(signal.SIGINT)
        fout, ferr = flood.communicate(timeout=120)
    print(fmt_load("quiet-flood", rc, shared, err), flush=True)
    if shared is not None:
        shared["server_timings"] = server_timings(daemon, off, tenant=quiet.name)
        print(fmt_timings(shared["server_timings"]), flush=True)
    try:
        loud_d = json.loads(fout)
    except ValueError:
        loud_d = None
    if loud_d is not None:
        print(fmt_load("the-flood", 0, loud_d, ferr.strip()) + "  (stopped by ^C)", flush=True)
    return [("quiet-alone", alone), ("quiet-flood", shared), ("the-flood", loud_d)]


def log_size(daemon):
    try:
        return os.path.getsize(daemon.logfile)
    except OSError:
        return 0


def server_timings(daemon, offset, tenant=None):
    """Percentiles of the daemon's own per-message timings (its event=message
    log lines since offset, only tenant's if given): eod_ms, end of data to
    the reply, and sign_ms, the part of it spent queued for and running DKIM
    signing."""
    eod, sign = [], []
    with open(daemon.logfile, "rb") as f:
        f.seek(offset)
        for line in f.read().decode("utf-8", "replace").splitlines():
            if "event=message " not in line or "result=queued" not in line:
                continue
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if tenant is not None and fields.get("tenant") != tenant:
                continue
            try:
                eod.append(float(fields["eod_ms"]))
                sign.append(float(fields["sign_ms"]))
            except (KeyError, ValueError):
                continue
    if not eod:
        return None

    def pct(v, p):
        v = sorted(v)
        return v[min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))]

    return {"messages": len(eod), "eod_p50": pct(eod, 50), "eod_p99": pct(eod, 99),
            "sign_p50": pct(sign, 50), "sign_p99": pct(sign, 99)}


def fmt_timings(t):
    if t is None:
        return "            (no event=message lines in the daemon log)"
    return ("            server side: end of data to reply p50 %.2f p99 %.2f ms; "
            "of which DKIM signing (queue + sign) p50 %.2f p99 %.2f ms"
            % (t["eod_p50"], t["eod_p99"], t["sign_p50"], t["sign_p99"]))


def fmt_idle(name, rc, d, err):
    if d is None or "server" not in d:
        return "%-11s FAILED (exit %d): %s" % (name, rc, err)
    s = d["server"]
    return ("%-11s %6d ready of %d, %6.0f bytes/conn server RSS (%d -> %d kB), "
            "%d closed during hold%s"
            % (name, d["ready"], d["requested"], s["bytes_per_conn"], s["rss_kb_before"],
               s["rss_kb_after"], d["closed_in_hold"],
               ("  last error: " + d["last_error"]) if "last_error" in d else ""))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main():
    # Started in the background, SIGINT arrives ignored: take it and SIGTERM
    # as ^C so that the daemon and PostgreSQL are always stopped.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=h.build_dir())
    ap.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    ap.add_argument("--only", default="", help="comma list of scenario names")
    ap.add_argument("--algorithm", default="rsa", choices=["rsa", "ed25519", "both"],
                    help="DKIM key(s) of the benchmark tenant's domain (default rsa)")
    ap.add_argument("--spool-dir", help="spool folder (default: temp folder in /var/tmp)")
    ap.add_argument("--hold", type=int, default=5, help="idle scenarios: seconds to hold")
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    ap.add_argument("--keep", action="store_true",
                    help="start everything, print the bench command line, wait for ^C")
    ap.add_argument("--log-level", default="info", help="daemon log level (info)")
    ap.add_argument("--work-dir", default="/var/tmp",
                    help="folder for the run's temp folder (PostgreSQL, logs, spool); "
                    "kept after the run when --spool-dir is given")
    ap.add_argument("--no-settle", action="store_true",
                    help="do not wait out the minute after an earlier run's clean-up "
                    "(see bench/settle.py)")
    args = ap.parse_args()

    args.build = os.path.abspath(args.build)
    exe = bench_exe(args.build)
    only = set(filter(None, args.only.split(",")))
    known = {s[0] for s in SCENARIOS} | {s[0] for s in IDLE} | {"neighbour"}
    if only - known:
        sys.exit("unknown scenario(s): %s (known: %s)" % (", ".join(sorted(only - known)),
                                                           ", ".join(sorted(known))))
    work = tempfile.mkdtemp(prefix="sgbench-", dir=args.work_dir)
    spool = args.spool_dir or os.path.join(work, "spool")
    if not (args.quick or args.no_settle or args.keep):
        settle.wait_settled(os.path.dirname(os.path.abspath(spool)))
    pg = daemon = None
    keep_work = False
    results = {}
    try:
        pg = h.Postgres()
        ctl = h.Ctl(args.build, pg.url)
        ctl.migrate()
        tenant = h.setup_tenant(ctl, algorithm=args.algorithm)
        cert = h.make_cert(os.path.join(work, "tls"))
        most = max([s[2] for s in IDLE]) + 200
        daemon = h.Daemon(args.build, pg, work, cert=cert, spool_dir=spool,
                          max_connections=most + 100, max_connections_per_ip=most,
                          server__log_level=args.log_level)
        common = ["-H", "127.0.0.1", "-u", tenant.username, "-P", tenant.secret,
                  "--from", tenant.addr("bench"), "--to", "rcpt%d@example.net"]
        print("sendgate pid %d: submission 127.0.0.1:%d, smtps 127.0.0.1:%d, spool %s"
              % (daemon.proc.pid, daemon.submission_port, daemon.smtps_port, spool))
        if args.keep:
            print("run for example:\n  %s -p %d %s -c 10 -n 1000"
                  % (exe, daemon.submission_port, " ".join(common)))
            print("idle memory:\n  %s -p %d --idle 1000 --hold 10 --pid %d"
                  % (exe, daemon.submission_port, daemon.proc.pid))
            print("^C stops everything")
            try:
                while daemon.alive():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            return 0
        for name, extra, n_full, n_quick in SCENARIOS:
            if only and name not in only:
                continue
            n = n_quick if args.quick else n_full
            port = daemon.smtps_port if "--tls" in extra else daemon.submission_port
            off = log_size(daemon)
            # Write out what setting up left dirty (the PostgreSQL cluster,
            # keys, certificates, the previous scenario's spool): the
            # daemon's first syncfs would otherwise pay for it, which once
            # put 40-50 messages of a run at 60-70 ms, a third of the p99.
            os.sync()
            rc, d, err = run_bench(exe, common + ["-p", str(port), "-n", str(n)] + extra,
                                   timeout=1800, server_pid=daemon.proc.pid)
            results[name] = d if d is not None else {"exit": rc, "stderr": err}
            print(fmt_load(name, rc, d, err), flush=True)
            if d is not None:
                d["server_timings"] = server_timings(daemon, off)
                print(fmt_timings(d["server_timings"]), flush=True)
        if not only or "neighbour" in only:
            for name, d in neighbour(exe, ctl, daemon, args.quick):
                results[name] = d
        for name, sec, n_full, n_quick in IDLE:
            if only and name not in only:
                continue
            n = n_quick if args.quick else n_full
            port = daemon.smtps_port if sec == "--tls" else daemon.submission_port
            # A fresh daemon: memory that earlier runs left in malloc's free
            # lists would otherwise hide the growth.
            daemon.restart()
            time.sleep(1)
            rc, d, err = run_bench(exe, ["-p", str(port), sec, "--idle", str(n), "--hold",
                                         str(args.hold), "--pid", str(daemon.proc.pid)],
                                   timeout=600)
            results[name] = d if d is not None else {"exit": rc, "stderr": err}
            print(fmt_idle(name, rc, d, err), flush=True)
        if not daemon.alive():
            print("sendgate died during the run; log tail:\n" + daemon.log_text()[-3000:])
            return 1
        print("daemon RSS at the end: %s kB" % idle_rss(daemon.proc.pid))
    finally:
        if daemon is not None:
            try:
                rc = daemon.stop()
                if rc not in (0, None):
                    print("sendgate exited %r after SIGTERM" % rc)
            except AssertionError as e:
                print(e)
            report = daemon.sanitizer_report()
            if report:
                keep_work = True
                print("sanitizer report in the daemon's log (%s):\n%s" % (daemon.logfile, report))
        if pg is not None:
            pg.stop()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        if not args.spool_dir and not keep_work:
            settle.remove_tree(work)
    return 0


def idle_rss(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return line.split()[1]
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
