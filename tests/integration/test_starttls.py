"""STARTTLS: plaintext sent with the command is an injection attack
(CVE-2011-0411 class) and closes the connection; state resets after it."""

import re
import socket
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


class RecordClient:
    """TLS through memory BIOs on a raw socket, so that the test decides how
    TLS records are grouped into TCP writes."""

    def __init__(self, sock):
        self.sock = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = h.client_tls_context().wrap_bio(self.inc, self.out)
        self.text = b""

    def handshake(self):
        """Runs the handshake; returns the client's last flight unsent."""
        while True:
            try:
                self.tls.do_handshake()
                return self.out.read()
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
                data = self.sock.recv(65536)
                assert data, "closed during the handshake"
                self.inc.write(data)

    def records(self, *lines):
        """One TLS record per line, as bytes to send."""
        for line in lines:
            self.tls.write(line)
        return self.out.read()

    def replies(self, n, timeout=5.0):
        """The next n complete replies (last lines "ddd "), or fails."""
        self.sock.settimeout(timeout * h.SLOW)
        got = []
        while len(got) < n:
            while b"\r\n" in self.text and len(got) < n:
                line, self.text = self.text.split(b"\r\n", 1)
                if len(line) >= 4 and line[3:4] == b" ":
                    got.append(line)
            if len(got) == n:
                break
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError("%d of %d replies, then silence" % (len(got), n))
            assert data, "closed after %d of %d replies" % (len(got), n)
            self.inc.write(data)
            try:
                while True:
                    self.text += self.tls.read(65536)
            except ssl.SSLWantReadError:
                pass
        return got


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_records_that_arrive_together_are_all_answered(daemon, mode):
    """The server reads TLS ahead (several records per read): commands in
    records that came in one TCP write, and one that came with the end of
    the handshake, are all answered without waiting for more input."""
    if mode == "starttls":
        sock = socket.create_connection(("127.0.0.1", daemon.submission_port),
                                        timeout=10 * h.SLOW)
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        sock.sendall(b"EHLO plain\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        sock.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
    else:
        sock = socket.create_connection(("127.0.0.1", daemon.smtps_port), timeout=10 * h.SLOW)
    c = RecordClient(sock)
    last = c.handshake()
    sock.sendall(last + c.records(b"EHLO together\r\n"))
    want = 2 if mode == "implicit" else 1  # the greeting comes over TLS too
    rs = c.replies(want)
    assert rs[-1].startswith(b"250 "), rs
    sock.sendall(c.records(b"NOOP\r\n", b"RSET\r\n", b"NOOP\r\n", b"RSET\r\n", b"NOOP\r\n"))
    rs = c.replies(5)
    assert all(r.startswith(b"250 ") for r in rs), rs
    sock.sendall(c.records(b"QUIT\r\n"))
    assert c.replies(1)[0].startswith(b"221"), "no 221"
    sock.close()


def test_failed_handshake_is_logged_as_such(daemon):
    """A client that speaks plain SMTP to the implicit-TLS port fails the
    handshake: the operator's log says so (op=handshake, OpenSSL's reason),
    not a read error of an established session."""
    port = daemon.smtps_port
    off = len(daemon.log_text())  # this test's line, not an earlier test's
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"EHLO plain.example\r\n")
        try:
            s.recv(100)  # the server closes (maybe after a TLS alert)
        except OSError:
            pass
    rx = re.compile(r"event=tls_error client=127\.0\.0\.1 op=(\w+) ssl_error=\d+ error=(.*)")
    m = h.eventually(lambda: rx.search(daemon.log_text()[off:]), what="the tls_error line")
    assert m.group(1) == "handshake", m.group(0)
    assert "wrong version number" in m.group(2), m.group(0)  # OpenSSL's reason
