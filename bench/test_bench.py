#!/usr/bin/python3
"""Tests of sendgate-bench against a small SMTP sink that records what it got.

    /usr/bin/python3 -m pytest -q bench/test_bench.py
    SENDGATE_BUILD=build/asan ... to test a sanitizer build

The sink (in this file) speaks STARTTLS and implicit TLS, AUTH PLAIN and
PIPELINING, refuses recipients by local part (reject* 550, temp* 451,
bye* 421 and close) and remembers every message, connection and command
batch, so the tests check what the client actually sent, not only what it
printed.
"""

import asyncio
import base64
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUILD = os.environ.get("SENDGATE_BUILD") or os.path.join(REPO, "build")
EXE = os.path.join(BUILD, "sendgate-bench")
USER, SECRET = "tenant-1", "s3cret-Secret"


class Sink:
    """An asyncio SMTP server on a thread: plain/STARTTLS port and TLS port."""

    def __init__(self, certdir):
        self.cert = os.path.join(certdir, "cert.pem")
        self.key = os.path.join(certdir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "2", "-subj", "/CN=localhost", "-keyout", self.key, "-out",
                        self.cert], check=True, capture_output=True, timeout=60)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(self.cert, self.key)
        self.advertise_pipelining = True
        self.reset()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def reset(self):
        self.messages = []     # (envelope from, [rcpts], data bytes)
        self.connections = 0
        self.pipelined = 0     # MAIL commands that arrived with RCPT/DATA behind them
        self.auth_ok = 0

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.plain = self.loop.run_until_complete(
            asyncio.start_server(lambda r, w: self._session(r, w, False), "127.0.0.1", 0))
        self.tls = self.loop.run_until_complete(
            asyncio.start_server(lambda r, w: self._session(r, w, True), "127.0.0.1", 0,
                                 ssl=self.ctx))
        self.plain_port = self.plain.sockets[0].getsockname()[1]
        self.tls_port = self.tls.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _session(self, r, w, tls):
        self.connections += 1
        authed = False
        mail, rcpts = None, []
        w.write(b"220 sink ESMTP\r\n")
        try:
            while True:
                line = await r.readline()
                if not line:
                    return
                cmd = line.rstrip(b"\r\n").decode()
                verb = cmd[:4].upper()
                if verb in ("EHLO", "HELO"):
                    caps = ["sink", "SIZE 50000000", "AUTH PLAIN"]
                    if self.advertise_pipelining:
                        caps.append("PIPELINING")
                    if not tls:
                        caps.append("STARTTLS")
                    w.write("".join("250%s%s\r\n" % ("-" if i < len(caps) - 1 else " ", c)
                                    for i, c in enumerate(caps)).encode())
                elif cmd.upper() == "STARTTLS" and not tls:
                    w.write(b"220 2.0.0 go ahead\r\n")
                    await w.drain()
                    await w.start_tls(self.ctx)
                    tls = True
                elif cmd.upper().startswith("AUTH PLAIN "):
                    raw = base64.b64decode(cmd[11:])
                    if raw == b"\0" + USER.encode() + b"\0" + SECRET.encode():
                        authed = True
                        self.auth_ok += 1
                        w.write(b"235 2.7.0 ok\r\n")
                    else:
                        w.write(b"535 5.7.8 Authentication credentials invalid\r\n")
                elif verb == "MAIL":
                    if len(r._buffer) > 0 and b"DATA" in bytes(r._buffer):
                        self.pipelined += 1
                    if not authed:
                        w.write(b"530 5.7.0 Authentication required\r\n")
                        continue
                    mail, rcpts = re.search(r"<(.*?)>", cmd).group(1), []
                    w.write(b"250 2.1.0 ok\r\n")
                elif verb == "RCPT":
                    addr = re.search(r"<(.*?)>", cmd).group(1)
                    if mail is None:
                        w.write(b"503 5.5.1 MAIL first\r\n")
                    elif addr.startswith("reject"):
                        w.write(b"550 5.1.1 no such user " + addr.encode() + b"\r\n")
                    elif addr.startswith("temp"):
                        w.write(b"451 4.3.0 try later\r\n")
                    elif addr.startswith("bye"):
                        w.write(b"421 4.3.2 closing\r\n")
                        await w.drain()
                        w.close()
                        return
                    else:
                        rcpts.append(addr)
                        w.write(b"250 2.1.5 ok\r\n")
                elif verb == "DATA":
                    if not rcpts:
                        w.write(b"554 5.5.1 no valid recipients\r\n")
                        continue
                    w.write(b"354 go\r\n")
                    data = bytearray()
                    while True:
                        dl = await r.readline()
                        if not dl:
                            return
                        if dl == b".\r\n":
                            break
                        data += dl
                    self.messages.append((mail, rcpts, bytes(data)))
                    if rcpts[0].startswith("slow"):
                        await asyncio.sleep(0.08)
                    w.write(b"250 2.0.0 Ok: queued as Q%d\r\n" % len(self.messages))
                    mail, rcpts = None, []
                elif verb == "RSET":
                    mail, rcpts = None, []
                    w.write(b"250 2.0.0 ok\r\n")
                elif verb == "QUIT":
                    w.write(b"221 2.0.0 bye\r\n")
                    await w.drain()
                    w.close()
                    return
                else:
                    w.write(b"502 5.5.2 unknown\r\n")
                await w.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            return


@pytest.fixture(scope="module")
def sink():
    if not os.access(EXE, os.X_OK):
        pytest.fail("%s is not built (make build/sendgate-bench)" % EXE)
    with tempfile.TemporaryDirectory() as d:
        s = Sink(d)
        yield s
        s.loop.call_soon_threadsafe(s.loop.stop)


def bench(*args, timeout=60):
    """Runs sendgate-bench; returns (exit status, JSON or None, stderr)."""
    r = subprocess.run([EXE, "-q"] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout)
    for marker in ("Sanitizer", "runtime error:"):
        assert marker not in r.stderr, r.stderr
    data = None
    if "--json" in args and r.stdout.strip():
        data = json.loads(r.stdout)
    return r.returncode, data, r.stderr


def auth():
    return ["-u", USER, "-P", SECRET]


def test_starttls_messages_arrive_well_formed(sink):
    sink.reset()
    rc, d, err = bench("-p", sink.plain_port, *auth(), "-c", 4, "-n", 40, "-s", 3000,
                       "--from", "me@sender.example", "--json")
    assert rc == 0, err
    assert d["accepted"] == 40 and d["failed"] == 0 and d["errors"] == {}
    assert d["latency_ms"]["count"] == 40
    assert 0 < d["latency_ms"]["p50"] <= d["latency_ms"]["p99"] <= d["latency_ms"]["max"]
    assert len(sink.messages) == 40
    assert sink.auth_ok == 4
    ids = set()
    for mail, rcpts, data in sink.messages:
        assert mail == "me@sender.example"
        head, _, body = data.partition(b"\r\n\r\n")
        for name in (b"From", b"To", b"Subject", b"Date", b"Message-ID"):
            assert re.search(rb"^" + name + rb": ", head, re.M), (name, head)
        ids.add(re.search(rb"^Message-ID: (.*)$", head, re.M).group(1))
        assert b"me@sender.example" in re.search(rb"^From: (.*)$", head, re.M).group(1)
        lines = data.split(b"\r\n")
        assert max(len(x) for x in lines) <= 78
        assert not any(x.startswith(b".") for x in lines)
        assert b"\n" not in data.replace(b"\r\n", b"")
        # Headers plus body (without the final dot line) near the asked size.
        assert 2700 <= len(data) + 2 <= 3300, len(data)
    assert len(ids) == 40, "Message-IDs repeat"


def test_latency_is_end_of_data_to_reply(sink):
    # The sink waits 80 ms before answering the final dot for slow* recipients;
    # the MAIL/RCPT/DATA round trips before it are not part of the figure.
    rc, fast, err = bench("-p", sink.plain_port, *auth(), "-c", 1, "-n", 10, "--json")
    assert rc == 0, err
    rc, slow, err = bench("-p", sink.plain_port, *auth(), "-c", 1, "-n", 10, "--to",
                          "slow%d@x.example", "--json")
    assert rc == 0, err
    assert fast["latency_ms"]["p50"] < 40
    assert 80 <= slow["latency_ms"]["p50"] <= slow["latency_ms"]["max"] < 400
    assert slow["latency_ms"]["count"] == 10


def test_implicit_tls_counts_recipients(sink):
    sink.reset()
    rc, d, err = bench("-p", sink.tls_port, "--tls", *auth(), "-c", 3, "-n", 12, "-r", 3,
                       "--to", "user%d@rcpt.example", "--json")
    assert rc == 0, err
    assert d["accepted"] == 12
    rcpts = [a for _, rs, _ in sink.messages for a in rs]
    assert len(rcpts) == 36 and len(set(rcpts)) == 36
    assert all(re.fullmatch(r"user\d+@rcpt\.example", a) for a in rcpts)
    # The To header names the message's first recipient.
    for _, rs, data in sink.messages:
        assert ("To: <%s>" % rs[0]).encode() in data


def test_pipelining_sends_the_envelope_in_one_batch(sink):
    sink.reset()
    rc, d, err = bench("-p", sink.plain_port, *auth(), "-c", 2, "-n", 20, "-r", 2,
                       "--pipelining", "--json")
    assert rc == 0, err
    assert d["accepted"] == 20
    assert sink.pipelined == 20
    sink.reset()
    rc, d, err = bench("-p", sink.plain_port, *auth(), "-c", 2, "-n", 20, "--json")
    assert rc == 0 and sink.pipelined == 0


def test_pipelining_refused_when_not_advertised(sink):
    sink.advertise_pipelining = False
    try:
        rc, _, err = bench("-p", sink.plain_port, *auth(), "-n", 5, "--pipelining")
    finally:
        sink.advertise_pipelining = True
    assert rc == 2
    assert "PIPELINING" in err


@pytest.mark.parametrize("pipelining", [False, True])
def test_rejections_counted_by_code(sink, pipelining):
    sink.reset()
    extra = ["--pipelining"] if pipelining else []
    rc, d, err = bench("-p", sink.plain_port, *auth(), "-c", 2, "-n", 10, "--to",
                       "reject%d@x.example", "--json", *extra)
    assert rc == 1
    assert d["accepted"] == 0
    assert d["errors"]["550"]["count"] == 10
    assert d["errors"]["550"]["text"].startswith("550 5.1.1 no such user reject")
    assert sink.messages == []
    sink.reset()
    rc, d, err = bench("-p", sink.plain_port, *auth(), "-c", 2, "-n", 6, "--to",
                       "temp%d@x.example", "--json", *extra)
    assert rc == 1 and d["errors"]["451"]["count"] == 6


def test_421_closes_and_reconnects(sink):
    sink.reset()
    rc, d, err = bench("-p", sink.plain_port, *auth(), "-c", 2, "-n", 6, "--to",
                       "bye%d@x.example", "--json")
    assert rc == 1
    assert d["errors"]["421"]["count"] == 6
    # Every 421 costs its connection; the client opened new ones.
    assert sink.connections >= 6


def test_text_report(sink):
    rc, _, err = bench("-p", sink.plain_port, *auth(), "-n", 5)
    assert rc == 0, err
    r = subprocess.run([EXE, "-p", str(sink.plain_port), *auth(), "-n", "5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Sanitizer" not in r.stderr, r.stderr
    out = r.stdout
    assert "accepted:    5 / 5" in out
    assert re.search(r"throughput:\s+[\d.]+ msgs/s", out)
    assert re.search(r"p50 [\d.]+\s+p90 [\d.]+\s+p99 [\d.]+\s+max [\d.]+", out)


def test_per_conn_reconnects(sink):
    sink.reset()
    rc, d, err = bench("-p", sink.plain_port, *auth(), "-c", 1, "-n", 10, "--per-conn", 2,
                       "--json")
    assert rc == 0, err
    assert sink.connections == 5
    assert d["conn"]["ready"] == 5


def test_rate_paces_the_messages(sink):
    sink.reset()
    rc, d, err = bench("-p", sink.plain_port, *auth(), "-c", 4, "-n", 30, "--rate", 20,
                       "--json")
    assert rc == 0, err
    assert d["accepted"] == 30 and d["rate"] == 20
    # 30 messages due at 0, 50 ms, ..., 1.45 s after the start.
    assert 1.4 <= d["wall_s"] < 3.0
    assert d["msgs_per_s"] < 22


def test_threads_share_the_count(sink):
    sink.reset()
    rc, d, err = bench("-p", sink.plain_port, *auth(), "-c", 4, "-t", 2, "-n", 50, "--json")
    assert rc == 0, err
    assert d["accepted"] == 50 and len(sink.messages) == 50


def test_interrupt_prints_partial_results(sink):
    import signal
    import time
    p = subprocess.Popen([EXE, "-q", "-p", str(sink.plain_port), *auth(), "-c", "2", "-n",
                          "1000000", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert "interrupted" in err and "Sanitizer" not in err, err
    d = json.loads(out)
    assert d["error"] == "interrupted"
    assert 0 < d["accepted"] < 1000000
    assert d["not_sent"] > 0


def test_connection_refused_is_one_clear_error(sink):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rc, _, err = bench("-p", port, "-n", 5)
    assert rc == 2
    assert "connect to 127.0.0.1:%d: Connection refused" % port in err
    assert err.count("\n") == 1


def test_tls_mismatch_is_explained(sink):
    rc, _, err = bench("-p", sink.plain_port, "--tls", "-n", 5)
    assert rc == 2
    assert "TLS handshake" in err and "try --starttls" in err
    rc, _, err = bench("-p", sink.tls_port, "--starttls", "-n", 5, "--timeout", 1)
    assert rc == 2
    assert "no greeting" in err and "try --tls" in err


def test_auth_failure_stops_the_run(sink):
    rc, _, err = bench("-p", sink.plain_port, "-u", USER, "-P", "wrong", "-c", 3, "-n", 50)
    assert rc == 2
    assert "AUTH PLAIN as %s rejected: 535 5.7.8" % USER in err


def test_no_auth_counts_530(sink):
    rc, d, _ = bench("-p", sink.plain_port, "-n", 3, "--json")
    assert rc == 1 and d["errors"]["530"]["count"] == 3


def test_bad_arguments(sink):
    assert bench("--to", "a%s%d@x")[0] == 2
    assert bench("-c", "0")[0] == 2
    assert bench("-u", "only-user")[0] == 2
    assert bench("--from", "<a@b>")[0] == 2


def test_idle_mode_reports_per_connection_memory(sink):
    sink.reset()
    rc, d, err = bench("-p", sink.plain_port, "--idle", 40, "--hold", 1, "--pid", os.getpid(),
                       "--json", timeout=60)
    assert rc == 0, err
    assert d["ready"] == 40 and d["failed"] == 0 and d["alive_at_end"] == 40
    assert sink.connections == 40
    srv = d["server"]
    assert srv["pid"] == os.getpid()
    assert srv["rss_kb_before"] > 0 and srv["rss_kb_after"] >= srv["rss_kb_before"] - 1024
    # This process holds the sink, so its descriptors grew by the 40 sessions.
    assert srv["fds_after"] - srv["fds_before"] >= 40
    assert "bytes_per_conn" in srv


def test_idle_mode_tls_and_auth(sink):
    sink.reset()
    rc, d, err = bench("-p", sink.tls_port, "--tls", *auth(), "--idle", 10, "--hold", 0,
                       "--json")
    assert rc == 0, err
    assert d["ready"] == 10 and sink.auth_ok == 10


if __name__ == "__main__":
    sys.exit(pytest.main(["-q", __file__]))


def test_sign_cycles_over_keys():
    """sendgate-bench sign -k N signs with N keys in turn, each signature made."""
    r = subprocess.run([EXE, "sign", "--alg", "ed25519", "-t", "2", "-n", "30", "-k", "3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    fields = dict(kv.split("=", 1) for kv in r.stdout.split())
    assert fields["keys"] == "3" and fields["signatures"] == "30" and fields["threads"] == "2"
    bad = subprocess.run([EXE, "sign", "-k", "0"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "-k 1..1000" in bad.stderr


def test_settle_waits_after_a_removal_only_where_it_matters(monkeypatch, tmp_path):
    """bench/settle.py: remove_tree removes and stamps; wait_settled sleeps
    out the rest of the window only on ext4 without a journal."""
    sys.path.insert(0, HERE)
    import settle
    monkeypatch.setattr(settle, "STAMP", str(tmp_path / "stamp"))
    monkeypatch.setattr(settle, "SETTLE_S", 1.0)
    victim = tmp_path / "spool"
    (victim / "queue").mkdir(parents=True)
    (victim / "queue" / "f").write_text("x")
    assert settle.wait_settled(str(tmp_path), quiet=True) == 0.0  # nothing removed yet
    settle.remove_tree(str(victim))
    assert not victim.exists() and os.path.exists(settle.STAMP)
    slept = settle.wait_settled(str(tmp_path), quiet=True)
    if settle.journal_less_ext4(str(tmp_path)):
        assert 0.0 < slept <= 1.0
    else:
        assert slept == 0.0
    assert settle.wait_settled(str(tmp_path), quiet=True) == 0.0  # the window is over
    # A folder that does not exist yet is judged by the nearest one that does.
    assert settle.journal_less_ext4(str(tmp_path / "not" / "yet")) == \
        settle.journal_less_ext4(str(tmp_path))


SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < %s:\n    pass\n"


def test_cpustat_puts_cpu_where_it_was_spent():
    """bench/cpustat.py (run_delivery.py --cpu-report): a process that
    spins while the snapshots are taken is counted under its own name, one
    that ran and was waited for between them under the children, and the
    report turns seconds into microseconds per unit."""
    sys.path.insert(0, HERE)
    import cpustat
    live = subprocess.Popen([sys.executable, "-c", SPIN % "30"])
    try:
        # Counted only once it is python and spinning: a process caught
        # mid-exec has no command line yet and is left out of a snapshot.
        def started():
            with open("/proc/%d/cmdline" % live.pid, "rb") as f:
                if b"process_time" not in f.read():
                    return False
            with open("/proc/%d/stat" % live.pid) as f:
                rest = f.read().rsplit(")", 1)[1].split()
            return int(rest[11]) + int(rest[12]) > 0
        deadline = time.monotonic() + 30
        while not started():
            assert time.monotonic() < deadline, "the spinner never started"
            time.sleep(0.05)
        before = cpustat.snapshot()
        subprocess.run([sys.executable, "-c", SPIN % "0.3"], check=True, timeout=60)
        after = cpustat.snapshot()
    finally:
        live.kill()
        live.wait()
    groups, machine = cpustat.diff(before, after)
    child_user, child_sys, _ = groups["children (load generator)"]
    assert child_user + child_sys >= 0.25, groups
    spinner = [g for (pid, _tid), (g, *_r) in after["threads"].items() if pid == str(live.pid)]
    assert spinner and spinner[0].startswith("python"), spinner
    spun = sum(groups[g][0] + groups[g][1] for g in set(spinner) if g in groups)
    assert spun >= 0.1, groups  # it ran beside the child for at least 0.3 s
    assert sum(machine.values()) > 0
    text = cpustat.report(before, after, 1000)
    child_line = next(ln for ln in text.splitlines() if "children (load generator)" in ln)
    assert int(child_line.split()[3]) >= 250, child_line  # >= 0.25 s over 1,000 units
    assert "machine:" in text


def test_ab_summary_pairs_each_variant_with_the_reference():
    """bench/ab_submission.py: differences are taken within a pair, and a
    figure missing from one run drops that pair only."""
    sys.path.insert(0, HERE)
    import ab_submission as ab

    def run(rate, p99, sign99):
        return {"msgs_per_s": rate, "accepted": 100, "server_cpu_s": 0.05,
                "latency_ms": {"p50": 1.0, "p99": p99},
                "server_timings": {"eod_p99": p99 - 0.5, "sign_p99": sign99}}

    pairs = [
        {"a": ab.figures(run(1000, 5.0, 0.0)), "b": ab.figures(run(1000, 8.0, 2.0))},
        {"b": ab.figures(run(999, 9.0, 2.5)), "a": ab.figures(run(1000, 4.0, 0.0))},
        {"a": ab.figures(run(1000, 6.0, 0.0)), "b": ab.figures({"msgs_per_s": 1000})},
    ]
    text = "\n".join(ab.summarize(["a", "b"], pairs))
    assert "b-a          +3.00, +5.00  (median +4.00)" in text
    assert "  b            8.00, 9.00\n" in text
    assert ab.figures({"msgs_per_s": 7})["p99 ms"] is None

    assert ab.parse_variant("x=build,SENDGATE_SPOOL_NO_SYNCFS=1")[2] == {
        "SENDGATE_SPOOL_NO_SYNCFS": "1"}
    with pytest.raises(Exception, match="NAME=BUILD_DIR"):
        ab.parse_variant("build")
    with pytest.raises(Exception, match="is not ENV=VALUE"):
        ab.parse_variant("x=build,junk")
