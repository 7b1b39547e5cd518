"""ESMTP parameters: 8BITMIME, SMTPUTF8 and SIZE, and what the spool records."""

import socket

import pytest

import sgharness as h


def test_8bitmime_and_smtputf8_recorded(client, tenant, daemon):
    r = client.cmd("MAIL FROM:<%s> BODY=8BITMIME SMTPUTF8 SIZE=500" % tenant.addr())
    assert r.code == 250, r
    r = client.cmd("RCPT TO:<j\u00fcrgen@b\u00fccher.example>")
    assert r.code == 250, "UTF-8 recipient with SMTPUTF8: %r" % r
    assert client.cmd("DATA").code == 354
    body = "Gr\u00fc\u00dfe \u2014 \u00e9t\u00e9\r\n".encode()
    msg = h.make_message(tenant.addr(), to="j\u00fcrgen@b\u00fccher.example", body=body)
    client.send(msg + b".\r\n")
    qid = h.queued_id(client.reply())
    assert qid
    sm = h.spooled(daemon, qid)
    assert "8bitmime" in sm.flags and "smtputf8" in sm.flags, sm.flags
    assert sm.rcpts == ["j\u00fcrgen@b\u00fccher.example"]
    assert sm.body == body
    client.quit()


def test_utf8_address_without_smtputf8_refused(client, tenant):
    assert client.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
    r = client.cmd("RCPT TO:<j\u00fcrgen@example.net>")
    assert 500 <= r.code < 600, "UTF-8 address accepted without SMTPUTF8: %r" % r
    client.quit()


def test_plain_message_has_no_flags(client, tenant, daemon):
    r = client.send_message(tenant.addr(), ["x@example.net"], h.make_message(tenant.addr()))
    sm = h.spooled(daemon, h.queued_id(r))
    assert "smtputf8" not in sm.flags and "8bitmime" not in sm.flags, sm.flags
    client.quit()


@pytest.mark.parametrize("param", ["FOO=bar", "BODY=BINARYMIME", "SIZE=abc", "RET=FULL"])
def test_unknown_mail_parameter_refused(client, tenant, param):
    r = client.cmd("MAIL FROM:<%s> %s" % (tenant.addr(), param))
    assert r.code in (501, 555), "MAIL parameter %s: %r" % (param, r)
    client.quit()


def test_rset_clears_transaction(client, tenant, daemon):
    assert client.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
    assert client.cmd("RCPT TO:<gone@example.net>").code == 250
    assert client.cmd("RSET").code == 250
    assert client.cmd("RCPT TO:<x@example.net>").code == 503
    r = client.send_message(tenant.addr(), ["kept@example.net"], h.make_message(tenant.addr()))
    assert h.spooled(daemon, h.queued_id(r)).rcpts == ["kept@example.net"]
    client.quit()


def test_helo_accepted(daemon):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    r = c.cmd("HELO client.test")
    assert r.code == 250, r
    c.quit()


def test_vrfy_expn_not_helpful(client):
    for cmd in ("VRFY postmaster", "EXPN staff"):
        r = client.cmd(cmd)
        assert r.code in (252, 502, 550), (cmd, r)
    client.quit()


def test_half_closed_client_gets_every_reply(daemon):
    """A client that sends its commands and then closes its sending side
    (as `nc -N` does) still reads every reply before the server closes."""
    c = h.SMTPClient.connect(daemon.submission_port)
    c.send("EHLO half.example\r\n" + "NOOP\r\n" * 20 + "HELP\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    data = b""
    c.sock.settimeout(10 * h.SLOW)
    while True:
        chunk = c.sock.recv(65536)
        if not chunk:
            break
        data += chunk
    c.close()
    lines = (c.buf + data).split(b"\r\n")
    assert [ln for ln in lines if ln.startswith(b"250 2.0.0")] == [b"250 2.0.0 Ok"] * 20, lines
    assert any(ln.startswith(b"214 ") for ln in lines), lines


def test_half_closed_client_with_a_partial_line_is_let_go(daemon):
    """A command line cut off by the client's half-close can never be
    completed: the server answers what came before it and closes, instead
    of keeping the session (its reads off, so no timeout) for ever."""
    c = h.SMTPClient.connect(daemon.submission_port)
    c.send("NOOP\r\nNOO")
    c.sock.shutdown(socket.SHUT_WR)
    data = b""
    c.sock.settimeout(10 * h.SLOW)
    try:
        while True:
            chunk = c.sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise AssertionError("session kept open after the half-close: %r" % (c.buf + data))
    c.close()
    assert b"250 2.0.0" in c.buf + data, c.buf + data
