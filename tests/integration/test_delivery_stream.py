"""Delivery streams the message: a 20 MB message (and one made of lines that
start with dots) reaches the sink byte for byte, its DKIM signature still
verifies, and the delivery process's peak memory grows by far less than the
message's size (the body is read from the queue file in 64 KB pieces as the
connection drains, never held whole)."""

import re
import time

import dkim_verify as dv
import sgharness as h
from delivery_fixtures import denv  # noqa: F401 (fixture)

MB = 1 << 20


def vm_hwm_kb(pid):
    """Peak resident set size of pid (VmHWM), in KB."""
    with open("/proc/%d/status" % pid) as f:
        m = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
    assert m, "no VmHWM for %d" % pid
    return int(m.group(1))


def publish_dkim(ctl, dns, domain):
    """Puts the domain's DKIM records and the platform zone into dns."""
    info = ctl("domain", "show", domain)
    for k in info["dkim"]:
        if k["record_type"] in ("CNAME", "TXT") and k.get("value"):
            dns.set(k["name"], k["record_type"], [k["value"]])
    by_name = {}
    for r in ctl("dkim", "zone"):
        by_name.setdefault(r["name"], []).append(r["value"])
    for name, values in by_name.items():
        dns.set(name, "TXT", values)


def body_lines(total, seed):
    """About total bytes of CRLF lines, a third of them starting with '.'
    and some with '..', the rest with text; lengths vary (up to 900)."""
    out, n, x = [], 0, seed
    while n < total:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        kind = x % 6
        length = (x >> 8) % 900
        text = (b"%08x-" % x) * (length // 9 + 1)
        text = text[:length]
        line = (b"." + text if kind < 2 else b".." + text if kind == 2 else
                b"." if kind == 3 and length % 7 == 0 else text)
        out.append(line + b"\r\n")
        n += len(line) + 2
    return b"".join(out)


def submit_raw(daemon, tenant, rcpt, body, subject):
    """Submits headers + body (CRLF lines, not yet dot-stuffed); returns the
    queue id and the header block sent."""
    c = h.SMTPClient.connect(daemon.submission_port, timeout=120)
    try:
        c.login(tenant)
        r = c.cmd("MAIL FROM:<%s>" % tenant.addr())
        assert r.code == 250, r
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        assert r.code == 250, r
        r = c.cmd("DATA")
        assert r.code == 354, r
        head = ("From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\n"
                % (tenant.addr(), rcpt, subject)).encode()
        stuffed = re.sub(rb"(?m)^\.", b"..", head + body)
        c.send(stuffed + b".\r\n")
        r = c.reply(timeout=120)
        assert r.code == 250, r
        m = re.search(r"queued as (\w+)", r.text)
        assert m, r
        return m.group(1), head
    finally:
        c.close()


def test_reply_before_the_end_defers(denv, tenant):
    """A server that answers while the message is still going out (here a
    nonsensical 250 after the first bytes, then it stops reading): the
    client stops sending, hangs up without the final dot, and the
    recipient is deferred, never counted as delivered."""
    sink = denv.sink("127.0.0.42", early_reply="250 2.0.0 ok already")
    denv.mx("early.test", (10, "mx.early.test", "127.0.0.42"))
    d = denv.start(max_message_size="64M", delivery__retry_first="1h")
    body = body_lines(16 * MB, 3)  # far more than the socket buffers hold
    qid, _ = submit_raw(d, tenant, "a@early.test", body, "early")
    ev = denv.wait_events(qid, "message.deferred", timeout=60)
    assert "before the end of the message" in ev[0][2]["reply"], ev
    assert denv.events(qid, "message.delivered") == []
    assert sink.count == 0
    assert d.queue_ids() == [qid]


def check_delivered(msg, head, body, dns):
    """msg.data is the signed message: our header lines among the added
    ones, then the body byte for byte; every DKIM signature verifies."""
    data = msg.data
    assert data.endswith(body), "body differs (got %d bytes, sent %d)" % (len(data), len(body))
    top = data[:len(data) - len(body)]
    # Our header lines all there (the server adds Message-ID, Date and the
    # signatures), then the blank line.
    for line in head.split(b"\r\n")[:-2]:
        assert b"\r\n" + line + b"\r\n" in top, (line, top[-500:])
    assert top.endswith(b"\r\n\r\n")
    assert b"DKIM-Signature:" in top
    sigs = dv.dkimpy(data, dns.host, dns.port)
    assert sigs, "no DKIM signature"
    for s in sigs:
        assert s.ok, "dkimpy rejects s=%s d=%s: %s" % (s.selector, s.domain, s.detail)


def test_twenty_mb_message_streams_in_bounded_memory(denv, ctl, tenant, monkeypatch):
    # Under ASan, freed memory sits in its quarantine (256 MB by default) and
    # would count as the program's: keep it small so RSS measures the program.
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=1:quarantine_size_mb=1:"
                       "thread_local_quarantine_size_kb=64")
    publish_dkim(ctl, denv.dns, tenant.domain)
    # STARTTLS: the TLS filter's watermarks too; SIZE with a limit.
    sink = denv.sink("127.0.0.40", size=64 * MB)
    denv.mx("big.test", (10, "mx.big.test", "127.0.0.40"))
    d = denv.start(max_message_size="64M", delivery__data_timeout="120s")
    pid = denv.delivery_pid()
    # Warm up (a small message over the same path) so libraries, TLS and the
    # allocator have settled before the baseline is read.
    submit_raw(d, tenant, "warm@big.test", b"warm up\r\n", "warm")
    sink.wait_for(1, timeout=30)
    before = vm_hwm_kb(pid)

    body = body_lines(20 * MB, 7)
    qid, head = submit_raw(d, tenant, "big@big.test", body, "twenty megabytes")
    sink.wait_for(2, timeout=180 * h.SLOW)
    denv.wait_events(qid, "message.delivered", timeout=30)
    after = vm_hwm_kb(pid)
    assert pid == denv.delivery_pid(), "the delivery process restarted"
    msg = [m for m in sink.messages if m.rcpts == ["big@big.test"]][0]
    assert msg.tls, "expected the message over TLS"
    check_delivered(msg, head, body, denv.dns)
    # SIZE= announced the spooled size (the signed message, undotted).
    size = re.search(r"SIZE=(\d+)", msg.params)
    assert size and int(size.group(1)) == len(msg.data), msg.params
    growth = (after - before) * 1024
    assert growth < 10 * MB, "delivery peak RSS grew by %.1f MB for a %d MB message" % (
        growth / MB, len(body) // MB)


def test_dot_lines_stream_byte_exact(denv, ctl, tenant):
    publish_dkim(ctl, denv.dns, tenant.domain)
    sink = denv.sink("127.0.0.41", tls=False, pipelining=False)
    denv.mx("dots.test", (10, "mx.dots.test", "127.0.0.41"))
    d = denv.start()
    # Lines of dots only, of every length, around the 64 KB piece size: a
    # line start split across pieces lands on every offset sooner or later.
    lines, n, k = [], 0, 0
    while n < 600 * 1024:
        line = b"." * (k % 70 + 1) + (b"x" if k % 3 == 0 else b"")
        lines.append(line + b"\r\n")
        n += len(line) + 2
        k += 1
    body = b"".join(lines)
    qid, head = submit_raw(d, tenant, "dots@dots.test", body, "dots")
    sink.wait_for(1, timeout=60)
    denv.wait_events(qid, "message.delivered")
    check_delivered(sink.messages[0], head, body, denv.dns)
    # Several messages on one connection still work after a streamed one.
    ids = [submit_raw(d, tenant, "more%d@dots.test" % i, body_lines(200 * 1024, i),
                      "more %d" % i)[0] for i in range(3)]
    sink.wait_for(4, timeout=60)
    for i in ids:
        denv.wait_events(i, "message.delivered")
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")


def test_damaged_file_is_never_sent(denv, ctl, tenant):
    """A queue file damaged on disk is refused before DATA: nothing of it
    reaches the server."""
    sink = denv.sink("127.0.0.42", tls=False, greeting="421 4.3.2 not now")
    denv.mx("bad.test", (10, "mx.bad.test", "127.0.0.42"))
    d = denv.start()
    body = body_lines(300 * 1024, 3)
    qid, _ = submit_raw(d, tenant, "x@bad.test", body, "damaged")
    denv.wait_events(qid, "message.deferred")
    path = d.queue_file(qid)
    with open(path, "r+b") as f:  # a body byte (BODY records come first)
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0x20]))
    sink.greeting = None
    denv.wait_log(r"event=delivery_message_gone id=%s reason=\"?bad checksum" % qid,
                  timeout=30)
    time.sleep(0.5)
    assert sink.count == 0
    assert not any(c.startswith("DATA") for c in sink.commands)
