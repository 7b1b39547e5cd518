"""Limits: recipients, message size, line lengths, header size, errors,
timeouts and connections, each set small in the config."""

import os
import socket
import time

import pytest

import sgharness as h

DAEMON_CONFIG = {"max_recipients": 5, "max_message_size": 20000, "max_header_size": 4096}


def test_too_many_recipients(client, tenant, daemon):
    assert client.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
    for i in range(5):
        r = client.cmd("RCPT TO:<r%d@example.net>" % i)
        assert r.code == 250, (i, r)
    r = client.cmd("RCPT TO:<r5@example.net>")
    assert (r.code, r.enhanced) == (452, "4.5.3"), r
    assert client.cmd("DATA").code == 354
    client.send(h.make_message(tenant.addr()) + b".\r\n")
    r = client.reply()
    qid = h.queued_id(r)
    assert qid, r
    assert h.spooled(daemon, qid).rcpts == ["r%d@example.net" % i for i in range(5)]
    client.quit()


def test_size_parameter_over_limit(client, tenant):
    r = client.cmd("MAIL FROM:<%s> SIZE=20001" % tenant.addr())
    assert (r.code, r.enhanced) == (552, "5.3.4"), r
    r = client.cmd("MAIL FROM:<%s> SIZE=1000" % tenant.addr())
    assert r.code == 250, r
    client.quit()


def test_oversize_answered_after_real_end(client, tenant, daemon):
    before = set(daemon.queue_ids())
    assert client.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
    assert client.cmd("RCPT TO:<x@example.net>").code == 250
    assert client.cmd("DATA").code == 354
    line = b"x" * 70 + b"\r\n"
    client.send(h.make_message(tenant.addr()) + line * 400)  # ~29 KB > 20000
    # Nothing may be answered before the end of data.
    try:
        early = client.reply(timeout=1.0)
        pytest.fail("server replied before the end of data: %r" % early)
    except socket.timeout:
        pass
    client.send(line * 100 + b".\r\n")
    r = client.reply()
    assert (r.code, r.enhanced) == (552, "5.3.4"), r
    assert set(daemon.queue_ids()) == before, "an oversize message was queued"
    # The connection is still in sync and usable.
    assert client.cmd("NOOP").code == 250
    r = client.send_message(tenant.addr(), ["x@example.net"], h.make_message(tenant.addr()))
    assert h.queued_id(r), r
    client.quit()


def test_below_size_limit_accepted(client, tenant, daemon):
    msg = h.make_message(tenant.addr(), body=b"y" * 70 + b"\r\n" * 1 + (b"z" * 70 + b"\r\n") * 150)
    assert len(msg) < 15000
    r = client.send_message(tenant.addr(), ["x@example.net"], msg)
    assert h.queued_id(r), r
    client.quit()


def test_text_line_limit(client, tenant, daemon):
    ok = h.make_message(tenant.addr(), body=b"a" * 998 + b"\r\n")
    r = client.send_message(tenant.addr(), ["x@example.net"], ok)
    qid = h.queued_id(r)
    assert qid, "a 1000-octet line (with CRLF) must be accepted: %r" % r
    assert b"a" * 998 + b"\r\n" in h.spooled(daemon, qid).body

    before = set(daemon.queue_ids())
    bad = h.make_message(tenant.addr(), body=b"b" * 999 + b"\r\n")
    r = client.send_message(tenant.addr(), ["x@example.net"], bad)
    assert 500 <= r.code < 600, "a 1001-octet line was accepted: %r" % r
    assert set(daemon.queue_ids()) == before
    assert client.cmd("NOOP").code == 250
    client.quit()


def test_command_line_limit(client, tenant, daemon):
    r = client.cmd("NOOP " + "x" * 600)
    assert r.code == 500, "command line over 512 octets: %r" % r
    assert client.cmd("NOOP").code == 250, "session out of sync after a long line"
    client.quit()


def test_huge_line_without_crlf(daemon, tenant):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.ehlo()
    try:
        c.send(b"A" * (1 << 20))
        rs, closed = c.pending_replies(quiet=2)
    except (h.Closed, OSError):
        rs, closed = [], True
    assert all(r.code >= 500 or r.code == 421 for r in rs), rs
    c.close()
    assert daemon.alive(), "daemon died on a 1 MB line"
    c2 = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c2.login(tenant)
    c2.quit()


def test_header_block_limit(client, tenant, daemon):
    before = set(daemon.queue_ids())
    extra = ["X-Filler-%d: %s" % (i, "f" * 500) for i in range(12)]  # ~6 KB of header
    msg = h.make_message(tenant.addr(), extra_headers=extra)
    r = client.send_message(tenant.addr(), ["x@example.net"], msg)
    assert 500 <= r.code < 600, "header block over max_header_size accepted: %r" % r
    assert set(daemon.queue_ids()) == before
    assert client.cmd("NOOP").code == 250
    client.quit()


def test_too_many_errors(daemon_factory, tenant):
    d = daemon_factory(max_errors=3)
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.ehlo()
    got = []
    closed = False
    for i in range(6):
        try:
            r = c.cmd("FOO%d" % i)
        except (h.Closed, OSError):
            closed = True
            break
        got.append(r.code)
        if r.code == 421:
            closed = c.is_closed()
            break
    assert 421 in got, "no 421 after repeated errors: %r" % got
    assert got.index(421) <= 3, "421 came after more than max_errors errors: %r" % got
    assert closed, "connection not closed after 421"


def test_idle_timeout(daemon_factory):
    d = daemon_factory(command_timeout="2s")
    c = h.SMTPClient.connect(d.submission_port)
    c.ehlo()
    t0 = time.monotonic()
    rs, closed = c.pending_replies(quiet=8)
    assert closed, "connection still open 8 s after a 2 s command timeout"
    assert time.monotonic() - t0 >= 1.5, "closed before the timeout"
    assert all(r.code == 421 for r in rs), rs


def test_connections_per_address(daemon_factory):
    d = daemon_factory(max_connections_per_ip=3)
    conns = [h.SMTPClient.connect(d.submission_port) for _ in range(3)]
    assert all(c.greeting.code == 220 for c in conns)
    try:
        extra = h.SMTPClient.connect(d.submission_port, read_greeting=False)
        try:
            g = extra.reply()
            assert g.code == 421, "4th connection from one address greeted: %r" % g
        except h.Closed:
            pass
        extra.close()
    except OSError:
        pass
    conns[0].quit()

    def accepted():
        c = h.SMTPClient.connect(d.submission_port, read_greeting=False)
        try:
            g = c.reply()
        except h.Closed:
            return False
        c.quit()
        return g.code == 220

    h.eventually(accepted, timeout=3, interval=0.2, what="a slot freed after QUIT")
    for c in conns[1:]:
        c.quit()


def test_connections_total(daemon_factory):
    d = daemon_factory(max_connections=2)
    conns = [h.SMTPClient.connect(d.submission_port, source="127.0.0.%d" % (10 + i)) for i in range(2)]
    assert all(c.greeting.code == 220 for c in conns)
    extra = h.SMTPClient.connect(d.submission_port, read_greeting=False, source="127.0.0.12")
    try:
        g = extra.reply()
        assert g.code == 421, "connection over max_connections greeted: %r" % g
    except h.Closed:
        pass
    extra.close()
    for c in conns:
        c.quit()


def test_data_timeout(daemon_factory, tenant):
    d = daemon_factory(data_timeout="2s")
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(tenant)
    assert c.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
    assert c.cmd("RCPT TO:<x@example.net>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(h.make_message(tenant.addr()))  # and then nothing
    rs, closed = c.pending_replies(quiet=8)
    assert closed, "connection open 8 s after a 2 s data timeout"
    assert all(r.code == 421 for r in rs), rs
    assert d.queue_ids() == [], "a timed-out DATA was queued"
    h.eventually(lambda: os.listdir(os.path.join(d.spool_dir, "tmp")) == [], timeout=3,
                 what="temp file removed after the timeout")


@pytest.mark.parametrize("path", [
    "<%s@{d}>" % ("l" * 65),  # local part over 64
    "<a@%s.{d}>" % ".".join(["x" * 63] * 4),  # domain over 255
    "<a@%s.{d}>" % ("x" * 64),  # label over 63
])
def test_path_limits(client, tenant, path):
    r = client.cmd("MAIL FROM:" + path.format(d=tenant.domain))
    assert 500 <= r.code < 600, "%s... accepted: %r" % (path[:40], r)
    r = client.cmd("NOOP")
    assert r.code == 250
    client.quit()
