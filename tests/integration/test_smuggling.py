"""SMTP smuggling and line endings: only CRLF.CRLF ends DATA, and a bare
CR, bare LF or NUL never ends anything or gets "fixed up"."""

import pytest

import sgharness as h

VARIANTS = [
    b"\n.\r\n",
    b"\n.\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r.\n",
    b"\n.\r",
    b"\r\n.\r\r\n",
    b"\r\n\r.\r\n",
]


def data_started(c, tenant, rcpt="first@example.net"):
    c.send(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (tenant.addr().encode(), rcpt.encode()))
    rs = c.replies(3)
    assert [r.code for r in rs] == [250, 250, 354], rs


@pytest.mark.parametrize("eod", VARIANTS, ids=[repr(v)[2:-1] for v in VARIANTS])
@pytest.mark.parametrize("port", ["smtps", "submission"])
def test_smuggled_second_message(daemon, tenant, eod, port):
    if port == "smtps":
        c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    else:
        c = h.SMTPClient.connect(daemon.submission_port)
    c.login(tenant)
    before = set(daemon.queue_ids())
    data_started(c, tenant)
    payload = (b"From: <" + tenant.addr().encode() + b">\r\nSubject: first\r\n\r\nfirst body"
               + eod
               + b"MAIL FROM:<" + tenant.addr("smuggler").encode() + b">\r\n"
               + b"RCPT TO:<smuggled@example.net>\r\nDATA\r\n"
               + b"From: <" + tenant.addr("smuggler").encode() + b">\r\nSubject: smuggled\r\n\r\n"
               + b"smuggled body\r\n.\r\n")
    c.send(payload)
    rs, closed = c.pending_replies(quiet=2)
    assert rs, "no reply at all after the real end of data (closed=%s)" % closed
    new = sorted(set(daemon.queue_ids()) - before)
    msgs = [h.spooled(daemon, q) for q in new]
    for m in msgs:
        assert "smuggled@example.net" not in m.rcpts, "smuggled envelope queued: %r" % m
        assert m.sender != tenant.addr("smuggler"), "smuggled envelope queued: %r" % m
        assert b"smuggled" not in m.headers, "smuggled message queued: %r" % m
    assert len(msgs) <= 1, "more than one message from one DATA: %r" % msgs
    # The first reply covers the whole DATA: a bare CR/LF/NUL is refused, not fixed up.
    assert 500 <= rs[0].code < 600, \
        "DATA containing %r answered %r (expected a 5xx for bare CR/LF/NUL)" % (eod, rs[0])
    assert len(rs) == 1, "more replies than the one DATA: %r" % rs
    assert not msgs, "message with a bare CR/LF/NUL queued: %r" % msgs
    if not closed:
        assert c.cmd("NOOP").code == 250, "session out of sync after the smuggling attempt"
    c.close()


@pytest.mark.parametrize("content,what", [
    (b"line one\nline two\r\n", "bare LF"),
    (b"line one\rline two\r\n", "bare CR"),
    (b"line\x00one\r\n", "NUL"),
])
def test_bad_bytes_in_data_refused(client, tenant, daemon, content, what):
    before = set(daemon.queue_ids())
    msg = h.make_message(tenant.addr(), body=content)
    r = client.send_message(tenant.addr(), ["x@example.net"], msg)
    assert 500 <= r.code < 600, "%s in DATA accepted: %r" % (what, r)
    assert set(daemon.queue_ids()) == before
    assert client.cmd("NOOP").code == 250
    client.quit()


def test_bare_lf_in_header_refused(client, tenant, daemon):
    msg = b"From: <" + tenant.addr().encode() + b">\nSubject: x\r\n\r\nbody\r\n"
    r = client.send_message(tenant.addr(), ["x@example.net"], msg)
    assert 500 <= r.code < 600, r
    client.quit()


@pytest.mark.parametrize("line", [b"NOOP\n", b"NO\rOP\r\n", b"NOOP\r", b"NO\x00OP\r\n",
                                  b"NOOP\n\r\n"])
def test_bad_bytes_in_commands(daemon, tenant, line):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.ehlo()
    c.send(line + b"NOOP\r\n")
    rs, closed = c.pending_replies(quiet=1.5)
    assert rs, "no reply to %r (closed=%s)" % (line, closed)
    assert 500 <= rs[0].code < 600 or rs[0].code == 421, \
        "command with bare CR/LF/NUL %r answered %r" % (line, rs[0])
    c.close()


def test_bare_lf_mail_command_not_executed(daemon, tenant):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(tenant)
    c.send(b"MAIL FROM:<" + tenant.addr().encode() + b">\nRCPT TO:<x@example.net>\r\n")
    rs, closed = c.pending_replies(quiet=1.5)
    assert rs and rs[0].code >= 500, rs
    assert not any(r.code == 250 for r in rs), "a bare-LF MAIL was executed: %r" % rs
    c.close()


def test_dot_unstuffing(client, tenant, daemon):
    body = b".leading dot\r\n..two dots\r\n.\r\nnot the end above\r\n"
    msg = h.make_message(tenant.addr(), body=body)
    r = client.send_message(tenant.addr(), ["x@example.net"], h.dot_stuff(msg))
    qid = h.queued_id(r)
    assert qid, r
    sm = h.spooled(daemon, qid)
    assert sm.body == body, "dot-unstuffing wrong: %r" % sm.body
    client.quit()
