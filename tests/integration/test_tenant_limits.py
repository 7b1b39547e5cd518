"""Per-tenant sending limits: authenticated connections at once ([smtp]
tenant_max_connections; AUTH past it gets 421 4.7.0 and the session ends)
and messages per minute ([smtp] tenant_messages_per_minute; a token per
accepted MAIL FROM, 451 4.7.1 when the bucket is empty, the session stays
open). A tenant's own limits (sendgatectl tenant set-limits) override the
configuration's and reach a running daemon without a restart; SIGHUP
applies changed defaults. The bucket's refill over time is tested in
tests/unit/test_smtpd_tenantlim.c (3 a minute refills one in 20 s)."""

import re
import signal

import pytest

import sgharness as h


def auth(d, t):
    """A new connection's AUTH reply for tenant t: (client, reply)."""
    c = h.SMTPClient.connect(d.submission_port)
    c.ehlo()
    c.starttls()
    c.ehlo()
    return c, c.auth_plain(t.username, t.secret)


def session(d, t):
    """An authenticated session of tenant t on d."""
    c = h.SMTPClient.connect(d.submission_port)
    c.login(t)
    return c


def assert_connection_refused(c, r, t, limit):
    assert (r.code, r.enhanced) == (421, "4.7.0"), r
    assert ("Tenant %s has %d connections open, its limit being %d" % (t.name, limit, limit)
            in r.text), r
    assert c.is_closed(), "still open after the 421"
    c.close()


def mail(c, t):
    """MAIL FROM of t on c; a transaction that started is reset."""
    r = c.cmd("MAIL FROM:<%s>" % t.addr())
    if r.code == 250:
        assert c.cmd("RSET").code == 250
    return r


def assert_over_messages(r, t, limit):
    assert (r.code, r.enhanced) == (451, "4.7.1"), r
    assert ("Tenant %s is over its limit of %d messages per minute" % (t.name, limit)
            in r.text), r


def mark(d):
    return len(d.log_text())


def wait_limits_reload(d, offset):
    """Waits for the daemon to reload the tenants' limits after offset."""
    h.eventually(lambda: "event=cache_reload table=tenant_limits " in d.log_text()[offset:],
                 what="reload of tenant_limits")


def test_connections_per_tenant(daemon_factory, ctl):
    a, b = h.setup_tenant(ctl), h.setup_tenant(ctl)
    d = daemon_factory(smtp__tenant_max_connections=2)
    held = [session(d, a), session(d, a)]
    # Not yet authenticated: not counted (nobody knows the tenant yet).
    idle = h.SMTPClient.connect(d.submission_port)
    idle.ehlo()
    c, r = auth(d, a)
    assert_connection_refused(c, r, a, 2)
    assert re.search(r"event=tenant_limit tenant=%s limit=connections value=2 client=127\.0\.0\.1"
                     % re.escape(a.name), d.log_text()), d.log_text()[-2000:]
    # Another tenant has a count of its own.
    others = [session(d, b), session(d, b)]
    # A session that ends frees its place: by QUIT ...
    held.pop(0).quit()

    def admitted():
        c, r = auth(d, a)
        if r.code == 235:
            return c
        c.close()
        return None
    held.append(h.eventually(admitted, what="a place freed by QUIT"))
    # ... and the refused one took none: the tenant is at 2 again.
    c, r = auth(d, a)
    assert_connection_refused(c, r, a, 2)
    # ... or by hanging up.
    held.pop(0).close()
    held.append(h.eventually(admitted, what="a place freed by a dropped connection"))
    for c in held + others + [idle]:
        c.quit()


def test_messages_per_minute_override(daemon_factory, ctl):
    a, b = h.setup_tenant(ctl), h.setup_tenant(ctl)
    d = daemon_factory()  # no default limit
    off = mark(d)
    ctl("tenant", "set-limits", a.name, "--messages-per-minute", "3")
    wait_limits_reload(d, off)
    c = session(d, a)
    for i in range(3):
        assert mail(c, a).code == 250, i
    r = mail(c, a)
    assert_over_messages(r, a, 3)
    assert re.search(r"event=tenant_limit tenant=%s limit=messages_per_minute value=3 "
                     r"client=127\.0\.0\.1" % re.escape(a.name), d.log_text())
    # The transaction did not start, and the session stays usable.
    assert c.cmd("RCPT TO:<r@example.net>").code == 503
    assert c.cmd("NOOP").code == 250
    assert_over_messages(mail(c, a), a, 3)
    # Another tenant is not limited.
    cb = session(d, b)
    for i in range(6):
        assert mail(cb, b).code == 250, i
    cb.quit()
    # A new session of the same tenant shares its bucket.
    c2 = session(d, a)
    assert_over_messages(mail(c2, a), a, 3)
    # Back to the default (no limit), without a restart.
    off = mark(d)
    ctl("tenant", "set-limits", a.name, "--messages-per-minute", "default")
    wait_limits_reload(d, off)
    for i in range(5):
        assert mail(c, a).code == 250, i
    c.quit()
    c2.quit()


def test_default_limit_and_override_of_none(daemon_factory, ctl):
    a, b = h.setup_tenant(ctl), h.setup_tenant(ctl)
    ctl("tenant", "set-limits", b.name, "--messages-per-minute", "0")
    d = daemon_factory(smtp__tenant_messages_per_minute=2)
    c = session(d, a)
    assert [mail(c, a).code for _ in range(2)] == [250, 250]
    assert_over_messages(mail(c, a), a, 2)
    cb = session(d, b)  # 0: no limit for this tenant
    assert [mail(cb, b).code for _ in range(5)] == [250] * 5
    c.quit()
    cb.quit()


def test_default_connection_limit_follows_sighup(daemon_factory, ctl):
    a = h.setup_tenant(ctl)
    d = daemon_factory(smtp__tenant_max_connections=1)
    c1 = session(d, a)
    c, r = auth(d, a)
    assert_connection_refused(c, r, a, 1)
    d.config["smtp"]["tenant_max_connections"] = "2"
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log(r"event=reload result=ok", 10)
    c2 = session(d, a)
    c, r = auth(d, a)
    assert_connection_refused(c, r, a, 2)
    # A tenant's own limit wins over the default.
    off = mark(d)
    ctl("tenant", "set-limits", a.name, "--connections", "0")
    wait_limits_reload(d, off)
    c3 = session(d, a)
    for x in (c1, c2, c3):
        x.quit()


def test_bad_default_names_file_line_and_key(daemon_factory):
    d = daemon_factory(start=False, smtp__tenant_messages_per_minute="-1")
    with pytest.raises(h.DaemonDied) as ei:
        d.start()
    msg = str(ei.value)
    with open(d.config_path) as f:
        line = next(i for i, s in enumerate(f, 1) if s.startswith("tenant_messages_per_minute"))
    assert "%s:%d: [smtp] tenant_messages_per_minute" % (d.config_path, line) in msg, msg


def test_set_limits_and_show(ctl, pg):
    name = h.unique_name("tl")
    ctl.tenant_create(name)
    shown = ctl("tenant", "show", name)
    assert shown["max_connections"] is None and shown["max_messages_per_minute"] is None, shown
    text = ctl.raw("tenant", "show", name, json_out=False)
    assert "limits:       connections default, messages per minute default" in text.stdout, text

    out = ctl("tenant", "set-limits", name, "--connections", "5")
    assert out == {"tenant": name, "max_connections": 5, "max_messages_per_minute": None}, out
    # An option not given keeps its limit.
    out = ctl("tenant", "set-limits", name, "--messages-per-minute", "0")
    assert out == {"tenant": name, "max_connections": 5, "max_messages_per_minute": 0}, out
    shown = ctl("tenant", "show", name)
    assert (shown["max_connections"], shown["max_messages_per_minute"]) == (5, 0), shown
    text = ctl.raw("tenant", "show", name, json_out=False)
    assert "connections 5, messages per minute 0 (no limit)" in text.stdout, text
    assert pg.sql("SELECT max_connections, max_messages_per_minute FROM tenants "
                  "WHERE name = '%s'" % name) == [["5", "0"]]

    text = ctl.raw("tenant", "set-limits", name, "--connections", "default",
                   "--messages-per-minute", "120", json_out=False)
    assert text.returncode == 0, text
    assert text.stdout.strip() == "tenant %s: connections default, messages per minute 120" % name
    shown = ctl("tenant", "show", name)
    assert (shown["max_connections"], shown["max_messages_per_minute"]) == (None, 120), shown


@pytest.mark.parametrize("args,rc,words", [
    ([], 2, "needs --connections or --messages-per-minute"),
    (["--connections"], 2, "needs N or default"),
    (["--connections", "1", "--connections", "2"], 2, "given twice"),
    (["--burst", "3"], 2, "unknown option"),
    (["--connections", "-1"], 1, "from 0 (no limit) to 1000000, or default"),
    (["--connections", "lots"], 1, "invalid --connections"),
    (["--messages-per-minute", "10000001"], 1, "to 10000000"),
])
def test_set_limits_refuses(ctl, args, rc, words):
    name = h.unique_name("tl")
    ctl.tenant_create(name)
    r = ctl.raw("tenant", "set-limits", name, *args)
    assert r.returncode == rc, r
    assert words in r.stderr, r.stderr
    assert ctl("tenant", "show", name)["max_connections"] is None


def test_set_limits_unknown_tenant(ctl):
    r = ctl.raw("tenant", "set-limits", "no-such-tenant-x", "--connections", "1")
    assert r.returncode == 1 and 'no tenant named "no-such-tenant-x"' in r.stderr, r


def test_schema_refuses_negative_limits(ctl, pg):
    name = h.unique_name("tl")
    ctl.tenant_create(name)
    with pytest.raises(RuntimeError) as ei:
        pg.sql("UPDATE tenants SET max_messages_per_minute = -1 WHERE name = '%s'" % name)
    assert "check constraint" in str(ei.value), ei.value


def test_pipelined_transactions_over_the_limit_keep_the_session(daemon_factory, ctl):
    """A pipelining client sends RCPT and DATA right behind its MAIL
    (RFC 2920): when the MAIL is deferred by the limit, the 503s those get
    are not counted as the client's errors, so the session is not closed
    for "too many errors" while the tenant waits out its limit."""
    t = h.setup_tenant(ctl)
    d = daemon_factory(smtp__tenant_messages_per_minute=1, smtp__max_errors=3)
    c = session(d, t)
    assert mail(c, t).code == 250  # the one message of this minute
    group = ("MAIL FROM:<%s>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n" % t.addr()).encode()
    for i in range(6):
        c.send(group)
        r_mail, r_rcpt, r_data = c.reply(), c.reply(), c.reply()
        assert_over_messages(r_mail, t, 1)
        assert (r_rcpt.code, r_data.code) == (503, 503), (i, r_rcpt, r_data)
    assert c.cmd("NOOP").code == 250, "the session was closed"
    # Real protocol errors still count (once a RSET ended the deferred
    # group).
    assert c.cmd("RSET").code == 250
    for _ in range(2):
        assert c.cmd("RCPT TO:<r@example.net>").code == 503
    assert c.cmd("RCPT TO:<r@example.net>").code == 503
    r = c.reply()
    assert (r.code, r.enhanced) == (421, "4.7.0"), "max_errors no longer applies: %r" % r
    assert c.is_closed()
    c.close()


def test_refused_mail_takes_no_token(daemon_factory, ctl):
    """Only a MAIL FROM that starts a transaction uses the tenant's
    allowance: one refused for its sender domain does not."""
    t = h.setup_tenant(ctl)
    d = daemon_factory(smtp__tenant_messages_per_minute=1)
    c = session(d, t)
    for _ in range(3):
        r = c.cmd("MAIL FROM:<someone@not-%s>" % t.domain)
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
    assert mail(c, t).code == 250, "a refused MAIL used the token"
    assert_over_messages(mail(c, t), t, 1)
    c.quit()
