"""AUTH, TLS and session order: who may submit, over which transport."""

import base64
import re
import smtplib
import socket
import ssl
import struct
import threading
import time

import pytest

import sgharness as h

DAEMON_CONFIG = {"max_message_size": "1048576"}


def smtplib_starttls(daemon):
    s = smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=15 * h.SLOW)
    s.ehlo("client.test")
    s.starttls(context=h.client_tls_context())
    s.ehlo("client.test")
    return s


def smtplib_submit(s, tenant, subject):
    msg = h.make_message(tenant.addr("app"), subject=subject)
    code, resp = s.mail(tenant.addr("app"))
    assert code == 250, resp
    code, resp = s.rcpt("someone@example.net")
    assert code == 250, resp
    code, resp = s.data(msg)
    return code, resp.decode(), msg


@pytest.mark.parametrize("initial_response", [True, False])
def test_auth_plain_starttls_smtplib(daemon, tenant, initial_response):
    s = smtplib_starttls(daemon)
    s.user, s.password = tenant.username, tenant.secret
    code, resp = s.auth("PLAIN", s.auth_plain, initial_response_ok=initial_response)
    assert code == 235, resp
    assert resp.decode().startswith("2.7.0"), resp
    code, resp, msg = smtplib_submit(s, tenant, "plain")
    assert code == 250 and h.QUEUED_RX.match(resp), resp
    qid = h.QUEUED_RX.match(resp).group(1)
    sm = h.spooled(daemon, qid)
    assert sm.id == qid
    assert sm.tenant == tenant.name
    assert sm.auth_user == tenant.username
    s.quit()


@pytest.mark.parametrize("initial_response", [True, False])
def test_auth_login_starttls_smtplib(daemon, tenant, initial_response):
    s = smtplib_starttls(daemon)
    s.user, s.password = tenant.username, tenant.secret
    code, resp = s.auth("LOGIN", s.auth_login, initial_response_ok=initial_response)
    assert code == 235, resp
    code, resp, msg = smtplib_submit(s, tenant, "login")
    assert code == 250 and h.QUEUED_RX.match(resp), resp
    s.quit()


def test_auth_plain_implicit_tls_smtplib(daemon, tenant):
    s = smtplib.SMTP_SSL("127.0.0.1", daemon.smtps_port, timeout=15 * h.SLOW,
                         context=h.client_tls_context())
    s.ehlo("client.test")
    assert "starttls" not in s.esmtp_features, "STARTTLS offered inside implicit TLS"
    assert "PLAIN" in s.esmtp_features.get("auth", "").split()
    s.login(tenant.username, tenant.secret)
    code, resp, msg = smtplib_submit(s, tenant, "smtps")
    assert code == 250 and h.QUEUED_RX.match(resp), resp
    sm = h.spooled(daemon, h.QUEUED_RX.match(resp).group(1))
    assert sm.tenant == tenant.name and sm.rcpts == ["someone@example.net"]
    s.quit()


# ---- EHLO keywords ------------------------------------------------------

def test_ehlo_keywords_before_and_after_starttls(daemon, tenant):
    c = h.SMTPClient.connect(daemon.submission_port)
    assert c.greeting.code == 220, c.greeting
    c.ehlo()
    kw = c.keywords()
    assert "STARTTLS" in kw, kw
    assert "AUTH" not in kw, "AUTH offered before TLS: %r" % kw
    for k in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"):
        assert k in kw, "%s missing before TLS: %r" % (k, kw)
    assert kw.get("SIZE") == ["1048576"], "SIZE should advertise max_message_size: %r" % kw
    assert "CHUNKING" not in kw and "BINARYMIME" not in kw, kw

    c.starttls()
    c.ehlo()
    kw = c.keywords()
    assert "STARTTLS" not in kw, "STARTTLS offered again after TLS: %r" % kw
    assert "AUTH" in kw, kw
    assert {m.upper() for m in kw["AUTH"]} == {"PLAIN", "LOGIN"}, kw["AUTH"]
    for k in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"):
        assert k in kw, "%s missing after TLS: %r" % (k, kw)
    assert kw.get("SIZE") == ["1048576"], kw
    assert "CHUNKING" not in kw, kw
    c.quit()


def test_ehlo_keywords_implicit_tls(daemon):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    assert c.greeting.code == 220, c.greeting
    c.ehlo()
    kw = c.keywords()
    assert "STARTTLS" not in kw, kw
    assert {m.upper() for m in kw.get("AUTH", [])} == {"PLAIN", "LOGIN"}, kw
    assert "CHUNKING" not in kw, kw
    c.quit()


def old_tls_client_context():
    ctx = h.client_tls_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def client_can_speak_tls11(cert):
    """Control: this client really offers TLS 1.1 (to a local server that allows it)."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(*cert)
    sctx.minimum_version = ssl.TLSVersion.TLSv1
    sctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    result = []

    def serve():
        conn, _ = ls.accept()
        try:
            sctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    s = socket.create_connection(ls.getsockname(), timeout=10)
    try:
        result.append(old_tls_client_context().wrap_socket(s).version())
    except (ssl.SSLError, OSError):
        pass
    t.join(10)
    ls.close()
    return result == ["TLSv1.1"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_version_at_least_1_2(daemon, cert):
    if not client_can_speak_tls11(cert):
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all")
    for port in (daemon.smtps_port,):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            old_tls_client_context().wrap_socket(s)
            pytest.fail("a TLS 1.1 handshake succeeded")
        s.close()
    c = h.SMTPClient.connect(daemon.submission_port)
    c.ehlo()
    assert c.cmd("STARTTLS").code == 220
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        old_tls_client_context().wrap_socket(c.sock)
        pytest.fail("a TLS 1.1 handshake succeeded after STARTTLS")
    c.close()


def test_bdat_not_supported(client, tenant):
    r = client.cmd("MAIL FROM:<%s>" % tenant.addr())
    assert r.code == 250, r
    r = client.cmd("RCPT TO:<x@example.net>")
    assert r.code == 250, r
    r = client.cmd("BDAT 5 LAST")
    assert r.code == 502, r
    r = client.cmd("NOOP")
    assert r.code == 250, "session unusable after BDAT: %r" % r
    client.quit()


def test_ehlo_state_reset_after_starttls(daemon, tenant):
    """RFC 3207: after the handshake the server forgets the EHLO; AUTH needs a new one."""
    c = h.SMTPClient.connect(daemon.submission_port)
    c.ehlo()
    c.starttls()
    r = c.auth_plain(tenant.username, tenant.secret)
    assert r.code == 503, "AUTH without EHLO after STARTTLS: %r" % r
    c.ehlo()
    r = c.auth_plain(tenant.username, tenant.secret)
    assert r.code == 235, r
    c.quit()


# ---- refusals -------------------------------------------------------------

def test_auth_before_tls_refused(daemon, tenant):
    c = h.SMTPClient.connect(daemon.submission_port)
    c.ehlo()
    r = c.auth_plain(tenant.username, tenant.secret)
    assert (r.code, r.enhanced) == (538, "5.7.11"), r
    r = c.cmd("AUTH LOGIN")
    assert (r.code, r.enhanced) == (538, "5.7.11"), r
    c.quit()


def test_mail_before_auth_refused(daemon, tenant):
    c = h.SMTPClient.connect(daemon.submission_port)
    c.ehlo()
    r = c.cmd("MAIL FROM:<%s>" % tenant.addr())
    assert r.code == 530, "MAIL before TLS and AUTH: %r" % r
    c.starttls()
    c.ehlo()
    r = c.cmd("MAIL FROM:<%s>" % tenant.addr())
    assert (r.code, r.enhanced) == (530, "5.7.0"), r
    c.quit()


def test_mail_before_auth_refused_implicit_tls(daemon, tenant):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.ehlo()
    r = c.cmd("MAIL FROM:<%s>" % tenant.addr())
    assert (r.code, r.enhanced) == (530, "5.7.0"), r
    c.quit()


def test_wrong_secret_and_unknown_user_same_answer(daemon_factory, tenant):
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.ehlo()
    wrong = c.auth_plain(tenant.username, tenant.secret[:-1] + ("A" if tenant.secret[-1] != "A" else "B"))
    assert (wrong.code, wrong.enhanced) == (535, "5.7.8"), wrong
    c.quit()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.ehlo()
    unknown = c.auth_plain("nosuchuser-" + tenant.username, tenant.secret)
    assert (unknown.code, unknown.enhanced) == (535, "5.7.8"), unknown
    assert unknown.lines == wrong.lines, "unknown user and wrong secret answered differently"
    # The secret of a revoked/other user must not work either, and a
    # failure must not leave the session authenticated.
    r = c.cmd("MAIL FROM:<%s>" % tenant.addr())
    assert r.code == 530, r
    c.quit()
    assert tenant.secret not in d.log_text(), "the secret appears in the daemon log"


def test_auth_login_wrong_secret(daemon_factory, tenant):
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.ehlo()
    r = c.cmd("AUTH LOGIN")
    assert r.code == 334, r
    r = c.cmd(base64.b64encode(tenant.username.encode()).decode())
    assert r.code == 334, r
    r = c.cmd(base64.b64encode(b"not-the-secret").decode())
    assert (r.code, r.enhanced) == (535, "5.7.8"), r
    c.quit()


def test_auth_cancel_and_garbage(daemon_factory, tenant):
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.ehlo()
    r = c.cmd("AUTH PLAIN")
    assert r.code == 334, r
    r = c.cmd("*")
    assert r.code == 501, "AUTH cancelled with '*': %r" % r
    r = c.cmd("AUTH PLAIN !!!notbase64!!!")
    assert r.code == 501 or r.code == 535, r
    r = c.cmd("AUTH CRAM-MD5")
    assert r.code == 504, "unsupported mechanism: %r" % r
    c.quit()


def test_three_failures_disconnect(daemon_factory, tenant):
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.ehlo()
    codes = []
    closed = False
    for i in range(4):
        try:
            r = c.auth_plain(tenant.username, "wrong-%d" % i)
        except (h.Closed, OSError):
            closed = True
            break
        codes.append(r.code)
        assert r.code in (535, 421), r
        if r.code == 421:
            closed = c.is_closed()
            break
    else:
        closed = c.is_closed()
    assert codes.count(535) <= 3, "more than 3 failed AUTH answered: %r" % codes
    assert 235 not in codes
    assert closed or c.is_closed(), "still connected after 3 AUTH failures (%r)" % codes
    c.close()


def test_second_auth_refused(client, tenant):
    r = client.auth_plain(tenant.username, tenant.secret)
    assert r.code == 503, "AUTH after a successful AUTH: %r" % r
    client.quit()


def test_credential_created_after_start_works(daemon, ctl):
    t = h.setup_tenant(ctl)

    def try_auth():
        c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
        c.ehlo()
        r = c.auth_plain(t.username, t.secret)
        c.quit()
        return r.code == 235

    h.eventually(try_auth, timeout=5, interval=0.3, what="AUTH with a new credential")


def test_revoked_credential_refused(daemon_factory, ctl):
    t = h.setup_tenant(ctl)
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(t)
    c.quit()
    ctl.credential_revoke(t.username)

    def refused():
        c2 = h.SMTPClient.connect(d.smtps_port, tls=True)
        c2.ehlo()
        r = c2.auth_plain(t.username, t.secret)
        c2.close()
        assert r.code in (235, 535), r
        return r.code == 535

    h.eventually(refused, timeout=5, interval=0.3, what="AUTH refused after revoke")


def test_failing_address_is_slowed_down(daemon_factory, tenant):
    """After 3 failures an address's next connections are delayed; another
    address is not, and the right secret still works afterwards."""
    import time

    d = daemon_factory(auth_fail_delay="4s")
    for i in range(3):  # one failure per connection: counted per address
        c = h.SMTPClient.connect(d.smtps_port, tls=True)
        c.ehlo()
        assert c.auth_plain(tenant.username, "wrong-%d" % i).code in (535, 421)
        c.close()
    t0 = time.monotonic()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.ehlo()
    r = c.auth_plain(tenant.username, tenant.secret)
    slow = time.monotonic() - t0
    assert slow >= 3.5, "no 4 s slow-down after 3 failures (%.2fs)" % slow
    assert r.code == 235, r
    c.quit()
    t0 = time.monotonic()
    c = h.SMTPClient.connect(d.smtps_port, tls=True, source="127.0.0.2")
    c.ehlo()
    assert c.auth_plain(tenant.username, tenant.secret).code == 235
    assert time.monotonic() - t0 < 3.0, "another client address was slowed down too"
    c.quit()


HOSTILE_USERS = ["x' OR '1'='1", "x\\", "%s%n", "a" * 300, "\u00fcser", "x\";--"]


@pytest.mark.parametrize("n", range(len(HOSTILE_USERS)))
def test_hostile_usernames(daemon, tenant, n):
    user = HOSTILE_USERS[n]
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True, source="127.0.1.%d" % (n + 1))
    c.ehlo()
    r = c.auth_plain(user, tenant.secret)
    assert r.code in (535, 501), "AUTH as %r: %r" % (user, r)
    c.quit()
    assert daemon.alive()


# ---- the floor under a failed AUTH's reply (timing oracle) ---------------

# smtpd/session.c AUTH_FAIL_MIN_MSEC: a failed AUTH is answered no sooner
# than this after its credentials arrived. Only the lower bound is asserted:
# a slow machine can make a reply later, never earlier.
AUTH_FAIL_MIN = 0.250


def bad_secret(tenant):
    return tenant.secret[:-1] + ("A" if tenant.secret[-1] != "A" else "B")


def timed_auth_plain(c, user, secret):
    t0 = time.monotonic()
    r = c.auth_plain(user, secret)
    return r, time.monotonic() - t0


def test_failed_auth_waits_for_the_floor(daemon_factory, tenant):
    """A username never seen (one Postgres round trip) and a known one with
    a wrong secret (answered from memory) both take at least the floor, over
    PLAIN and LOGIN; so does the second try of the never-seen name (now
    remembered as unknown)."""
    d = daemon_factory()
    unknown = "never-seen-" + h.unique_name()
    cases = [("unknown", unknown, tenant.secret), ("wrong secret", tenant.username, bad_secret(tenant)),
             ("unknown again", unknown, tenant.secret)]
    for n, (what, user, secret) in enumerate(cases):
        # One failure per address and connection: no per-address lockout.
        c = h.SMTPClient.connect(d.smtps_port, tls=True, source="127.0.2.%d" % (n + 1))
        c.ehlo()
        r, took = timed_auth_plain(c, user, secret)
        assert (r.code, r.enhanced) == (535, "5.7.8"), (what, r)
        assert took >= AUTH_FAIL_MIN, "AUTH PLAIN (%s) answered after %.3fs" % (what, took)
        c.quit()
    c = h.SMTPClient.connect(d.smtps_port, tls=True, source="127.0.2.9")
    c.ehlo()
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd(base64.b64encode(("login-" + unknown).encode()).decode()).code == 334
    t0 = time.monotonic()
    r = c.cmd(base64.b64encode(b"not-the-secret").decode())
    took = time.monotonic() - t0
    assert (r.code, r.enhanced) == (535, "5.7.8"), r
    assert took >= AUTH_FAIL_MIN, "AUTH LOGIN failure answered after %.3fs" % took
    c.quit()


def test_successful_auth_is_not_held_back(daemon, tenant):
    """A success is answered at once. The median of several exchanges is
    compared, so one slow exchange on a busy machine does not fail it."""
    times = []
    for _ in range(7):
        c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
        c.ehlo()
        r, took = timed_auth_plain(c, tenant.username, tenant.secret)
        assert r.code == 235, r
        times.append(took)
        c.quit()
    times.sort()
    assert times[len(times) // 2] < AUTH_FAIL_MIN, "successful AUTHs held back: %r" % times


def test_failed_auth_third_failure_421_waits_too(daemon_factory, tenant):
    """The 421 of the last allowed failure is a failed AUTH's reply too."""
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True, source="127.0.2.20")
    c.ehlo()
    codes = []
    for i in range(3):
        r, took = timed_auth_plain(c, tenant.username, "wrong-%d" % i)
        codes.append(r.code)
        assert took >= AUTH_FAIL_MIN, "failure %d (%r) answered after %.3fs" % (i + 1, r, took)
    assert codes == [535, 535, 421], codes
    assert c.is_closed(), "still connected after the 421"
    c.close()


@pytest.mark.parametrize("how", ["fin", "reset", "fin_after_pipelining"])
def test_disconnect_during_auth_delay(daemon_factory, tenant, how):
    """A client gone before the held-back 535: the session ends (its timer
    with it), the failure still counts, the daemon serves the next client."""
    # One failure locks the address out: that shows the failure counted.
    d = daemon_factory(auth_max_failures=1, auth_fail_delay="120s")
    c = h.SMTPClient.connect(d.smtps_port, tls=True, source="127.0.2.30")
    c.ehlo()
    tok = base64.b64encode(b"\0" + tenant.username.encode() + b"\0" + b"wrong").decode()
    extra = "NOOP\r\nMAIL FROM:<%s>\r\n" % tenant.addr() if how == "fin_after_pipelining" else ""
    c.send("AUTH PLAIN %s\r\n%s" % (tok, extra))
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    h.eventually(lambda: re.search(r"event=session_end client=127\.0\.2\.30\b", d.log_text()),
                 timeout=5 * h.SLOW, what="the abandoned session to end")
    assert re.search(r"event=auth client=127\.0\.2\.30\S* user=\S+ result=failed failures=1",
                     d.log_text()), "the failure was not counted"
    # Counted for the address, not only logged: its next connection waits.
    c = h.SMTPClient.connect(d.submission_port, read_greeting=False, source="127.0.2.30")
    rs, closed = c.pending_replies(quiet=1)
    assert rs == [] and not closed, "greeted at once after a failed AUTH: %r" % rs
    c.close()
    assert d.alive()
    c = h.SMTPClient.connect(d.smtps_port, tls=True, source="127.0.2.31")
    c.login(tenant)
    assert c.cmd("NOOP").code == 250
    c.quit()
    assert d.alive()


def test_pipelined_commands_after_failed_auth(daemon_factory, tenant):
    """Commands pipelined behind a failing AUTH wait for its 535 and are
    then answered in order; a good AUTH among them still works."""
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True, source="127.0.2.40")
    c.ehlo()

    def plain(user, secret):
        return base64.b64encode(b"\0" + user.encode() + b"\0" + secret.encode()).decode()

    t0 = time.monotonic()
    c.send("AUTH PLAIN %s\r\nNOOP\r\nMAIL FROM:<%s>\r\nRSET\r\nAUTH PLAIN %s\r\nMAIL FROM:<%s>\r\n"
           % (plain("nobody-" + h.unique_name(), "x"), tenant.addr(),
              plain(tenant.username, tenant.secret), tenant.addr()))
    first = c.reply()
    took = time.monotonic() - t0
    rest = c.replies(5)
    assert (first.code, first.enhanced) == (535, "5.7.8"), first
    assert took >= AUTH_FAIL_MIN, "535 after %.3fs" % took
    assert [r.code for r in rest] == [250, 530, 250, 235, 250], rest
    rs, closed = c.pending_replies(quiet=0.5)
    assert rs == [] and not closed, rs
    c.quit()
