"""STARTTLS: plaintext sent with the command is an injection attack
(CVE-2011-0411 class) and closes the connection; state resets after it."""

import ssl

import pytest

import sgharness as h


@pytest.mark.parametrize("injected", [b"EHLO evil\r\n", b"AUTH PLAIN AGFiYwBkZWY=\r\n",
                                      b"NOOP\r\nNOOP\r\n", b"\r\n"])
def test_plaintext_after_starttls_closes(daemon, injected):
    c = h.SMTPClient.connect(daemon.submission_port)
    c.ehlo()
    c.send(b"STARTTLS\r\n" + injected)
    try:
        r = c.reply()
    except h.Closed:
        r = None  # closing without even the 220 is acceptable too
    if r is not None:
        assert r.code == 220, r
        assert not c.buf, "server answered the injected command: %r" % c.buf
        assert c.is_closed(timeout=5), "connection left open with injected plaintext buffered"
    c.close()


def test_injected_command_not_answered_inside_tls(daemon):
    """Even a client that goes on with the handshake never gets an answer
    to the injected command."""
    c = h.SMTPClient.connect(daemon.submission_port)
    c.ehlo()
    c.send(b"STARTTLS\r\nEHLO evil\r\n")
    try:
        r = c.reply()
        assert r.code == 220
        c.sock = h.client_tls_context().wrap_socket(c.sock)
    except (h.Closed, ssl.SSLError, OSError):
        return  # refused: good
    # If the handshake somehow completed, no 250 for "EHLO evil" may follow.
    rs, closed = c.pending_replies(quiet=1.5)
    assert not rs, "injected plaintext answered inside TLS: %r" % rs
    c.close()


def test_starttls_twice_refused(daemon):
    c = h.SMTPClient.connect(daemon.submission_port)
    c.ehlo()
    c.starttls()
    c.ehlo()
    r = c.cmd("STARTTLS")
    assert 500 <= r.code < 600, "second STARTTLS: %r" % r
    c.quit()


def test_starttls_on_implicit_tls_port_refused(daemon):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.ehlo()
    r = c.cmd("STARTTLS")
    assert 500 <= r.code < 600, r
    c.quit()


def test_starttls_with_argument_refused(daemon):
    c = h.SMTPClient.connect(daemon.submission_port)
    c.ehlo()
    r = c.cmd("STARTTLS now")
    assert r.code == 501, r
    c.quit()


def test_rcpt_without_mail_refused(daemon, tenant):
    c = h.SMTPClient.connect(daemon.submission_port)
    c.ehlo()
    c.starttls()
    c.ehlo()
    r = c.auth_plain(tenant.username, tenant.secret)
    assert r.code == 235
    r = c.cmd("RCPT TO:<x@example.net>")
    assert r.code == 503, "RCPT without MAIL: %r" % r
    c.quit()
