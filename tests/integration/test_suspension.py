"""Tenant suspension: sendgatectl tenant suspend|resume (migration 007),
what a suspended tenant's sessions get (550 5.7.1 at MAIL FROM naming the
tenant and the reason, other tenants unaffected) and its queued mail (held
by the delivery process, no attempt made or counted, delivered once
resumed). The daemons learn of a change through the tenants NOTIFY
trigger, so every check of the daemon's side polls."""

import json
import re
import time

import pytest

import sgharness as h
from delivery_fixtures import denv, submit  # noqa: F401 (fixture)

REASON = "abuse report 4242: phishing"


def tenant_events(pg, name):
    """(type, data) of the tenant.* events of tenant name, oldest first."""
    rows = pg.sql("SELECT e.type, e.data::text FROM events e JOIN tenants t ON t.id = e.tenant_id"
                  " WHERE t.name = '%s' AND e.type LIKE 'tenant.%%' ORDER BY e.id" % name)
    return [(t, json.loads(d)) for t, d in rows]


def list_row(ctl, name):
    """The text `tenant list` header and the row of tenant name, split in columns."""
    r = ctl.raw("tenant", "list", json_out=False)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    rows = [line.split() for line in lines[1:] if line.split()[1:2] == [name]]
    assert len(rows) == 1, r.stdout
    return lines[0].split(), rows[0]


# ---------------------------------------------------------------- sendgatectl

def test_suspend_needs_a_reason(ctl):
    name = h.unique_name("su")
    ctl.tenant_create(name)
    for args in ([], ["--reason"]):
        r = ctl.raw("tenant", "suspend", name, *args, json_out=False)
        assert r.returncode == 2, r
        assert "--reason" in r.stderr and "usage: sendgatectl tenant suspend" in r.stderr, r
    r = ctl.raw("tenant", "suspend", "--reason", "x", json_out=False)
    assert r.returncode == 2 and "needs a TENANT" in r.stderr, r
    assert ctl("tenant", "show", name)["status"] == "active"


@pytest.mark.parametrize("reason,words", [
    ("x" * 201, "longer than 200 characters"),
    ("\u00e9" * 201, "longer than 200 characters"),
    ("", "empty"),
    ("   ", "empty"),
    ("first line\nsecond line", "control character"),
    ("tab\there", "control character"),
    ("c1 \u0085 control", "control character"),
])
def test_suspend_refuses_bad_reasons(ctl, pg, reason, words):
    name = h.unique_name("su")
    ctl.tenant_create(name)
    r = ctl.raw("tenant", "suspend", name, "--reason", reason, json_out=False)
    assert r.returncode == 1, r
    assert "invalid --reason" in r.stderr and words in r.stderr, r.stderr
    assert r.stdout == ""
    assert pg.sql("SELECT suspended_at IS NULL, suspended_reason IS NULL FROM tenants "
                  "WHERE name = '%s'" % name) == [["t", "t"]]
    assert tenant_events(pg, name) == []


def test_suspend_show_list_resume(ctl, pg):
    name = h.unique_name("su")
    ctl.tenant_create(name)
    # Active: no suspended line, STATUS active, nulls in JSON.
    shown = ctl("tenant", "show", name)
    assert (shown["status"], shown["suspended_at"], shown["suspended_reason"]) == (
        "active", None, None), shown
    text = ctl.raw("tenant", "show", name, json_out=False)
    assert text.returncode == 0 and "suspended:" not in text.stdout, text
    head, row = list_row(ctl, name)
    assert head[-1] == "STATUS" and row[-1] == "active", (head, row)

    r = ctl.raw("tenant", "suspend", name, "--reason", REASON, json_out=False)
    assert r.returncode == 0, r
    assert r.stdout == "tenant %s suspended: %s\n" % (name, REASON), r.stdout
    since = pg.scalar("SELECT to_char(suspended_at AT TIME ZONE 'UTC', "
                      "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM tenants WHERE name = '%s'" % name)
    assert since, "suspended_at not set"

    shown = ctl("tenant", "show", name)
    assert (shown["status"], shown["suspended_at"], shown["suspended_reason"]) == (
        "suspended", since, REASON), shown
    text = ctl.raw("tenant", "show", name, json_out=False)
    assert "\nsuspended:    since %s: %s\n" % (since, REASON) in text.stdout, text.stdout
    listed = [t for t in ctl("tenant", "list") if t["name"] == name]
    assert len(listed) == 1, listed
    assert (listed[0]["status"], listed[0]["suspended_at"], listed[0]["suspended_reason"]) == (
        "suspended", since, REASON), listed
    head, row = list_row(ctl, name)
    assert row[head.index("STATUS")] == "suspended", (head, row)

    # Suspending again replaces the reason and keeps when it began.
    first_at = pg.scalar("SELECT suspended_at FROM tenants WHERE name = '%s'" % name)
    out = ctl("tenant", "suspend", name, "--reason", "unpaid invoice 17")
    assert out == {"tenant": name, "status": "suspended", "suspended_at": since,
                   "suspended_reason": "unpaid invoice 17", "already_suspended": True}, out
    assert pg.sql("SELECT suspended_at, suspended_reason FROM tenants WHERE name = '%s'"
                  % name) == [[first_at, "unpaid invoice 17"]]

    r = ctl.raw("tenant", "resume", name, json_out=False)
    assert r.returncode == 0, r
    assert r.stdout == "tenant %s resumed (was suspended since %s: unpaid invoice 17)\n" % (
        name, since), r.stdout
    assert pg.sql("SELECT suspended_at IS NULL, suspended_reason IS NULL FROM tenants "
                  "WHERE name = '%s'" % name) == [["t", "t"]]
    shown = ctl("tenant", "show", name)
    assert (shown["status"], shown["suspended_at"], shown["suspended_reason"]) == (
        "active", None, None), shown
    head, row = list_row(ctl, name)
    assert row[head.index("STATUS")] == "active", (head, row)

    # Resuming an active tenant is an error and records nothing.
    r = ctl.raw("tenant", "resume", name, json_out=False)
    assert r.returncode == 1, r
    assert r.stderr == "sendgatectl: tenant %s is not suspended\n" % name, r.stderr

    # The events, in the order of the commands, with the reasons.
    assert tenant_events(pg, name) == [
        ("tenant.suspended", {"reason": REASON, "by": "sendgatectl"}),
        ("tenant.suspended", {"reason": "unpaid invoice 17", "previous_reason": REASON,
                              "by": "sendgatectl"}),
        ("tenant.resumed", {"reason": "unpaid invoice 17", "suspended_at": since,
                            "by": "sendgatectl"}),
    ]
    ev = ctl("events", "--tenant", name, "--type", "tenant.*")
    assert [e["type"] for e in ev] == ["tenant.suspended", "tenant.suspended", "tenant.resumed"]


def test_suspend_resume_json_and_reason_length_limit(ctl, pg):
    name = h.unique_name("su")
    ctl.tenant_create(name)
    reason = "\u00e9" * 200  # 200 characters (400 bytes): the most the schema takes
    out = ctl("tenant", "suspend", name, "--reason", reason)
    assert (out["tenant"], out["status"], out["suspended_reason"], out["already_suspended"]) == (
        name, "suspended", reason, False), out
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", out["suspended_at"]), out
    out2 = ctl("tenant", "resume", name)
    assert out2["tenant"] == name and out2["status"] == "active", out2
    assert (out2["suspended_at"], out2["suspended_reason"]) == (out["suspended_at"], reason)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", out2["resumed_at"]), out2
    r = ctl.raw("tenant", "resume", name)
    assert r.returncode == 1 and "is not suspended" in r.stderr and r.stdout == "", r


def test_suspend_resume_unknown_tenant(ctl):
    for args in (["suspend", "no-such-tenant-s", "--reason", "x"],
                 ["resume", "no-such-tenant-s"], ["resume", "Not A Name"]):
        r = ctl.raw("tenant", *args)
        assert r.returncode == 1, r
        assert 'no tenant named "' in r.stderr, r.stderr
    r = ctl.raw("tenant", "resume")
    assert r.returncode == 2 and "usage: sendgatectl tenant resume TENANT" in r.stderr, r


# ---------------------------------------------------------------- submission

def session(d, t):
    """An authenticated session of tenant t on d."""
    c = h.SMTPClient.connect(d.submission_port)
    c.login(t)
    return c


def mail(c, t):
    """MAIL FROM of t on c; a transaction that started is reset."""
    r = c.cmd("MAIL FROM:<%s>" % t.addr())
    if r.code == 250:
        assert c.cmd("RSET").code == 250
    return r


def new_session_mail(d, t):
    """The reply to MAIL FROM in a new authenticated session of t."""
    c = session(d, t)
    try:
        return mail(c, t)
    finally:
        c.close()


def assert_suspended_reply(r, t, reason):
    assert (r.code, r.enhanced) == (550, "5.7.1"), r
    assert "Tenant %s is suspended: %s" % (t.name, reason) in r.text, r


def test_suspended_tenant_refused_at_mail_from(daemon_factory, ctl):
    a, b = h.setup_tenant(ctl), h.setup_tenant(ctl)
    d = daemon_factory()
    assert new_session_mail(d, a).code == 250
    open_a = session(d, a)  # authenticated before the suspension
    ctl("tenant", "suspend", a.name, "--reason", REASON)

    r = h.eventually(lambda: (lambda r: r if r.code != 250 else None)(new_session_mail(d, a)),
                     timeout=5, what="MAIL FROM of the suspended tenant refused")
    assert_suspended_reply(r, a, REASON)
    # A session that authenticated earlier is refused as well, and no
    # transaction started.
    assert_suspended_reply(mail(open_a, a), a, REASON)
    assert open_a.cmd("RCPT TO:<someone@example.net>").code == 503
    # Another tenant of the same daemon still sends, a whole message.
    cb = session(d, b)
    r = cb.send_message(b.addr(), ["someone@example.net"], h.make_message(b.addr()))
    assert h.queued_id(r), r
    cb.quit()

    ctl("tenant", "resume", a.name)
    h.eventually(lambda: new_session_mail(d, a).code == 250, timeout=5,
                 what="MAIL FROM accepted again after the resumption")
    assert mail(open_a, a).code == 250
    r = open_a.send_message(a.addr(), ["someone@example.net"], h.make_message(a.addr()))
    assert h.queued_id(r), r
    open_a.quit()


# ---------------------------------------------------------------- delivery

def test_queued_mail_is_held_while_suspended(denv, ctl, pg):
    a, b = h.setup_tenant(ctl), h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.60")
    held_rcpt = "held@hold.test"
    sink.rcpt_rule(held_rcpt, "tempfail", times=1, text="451 4.2.1 mailbox busy")
    denv.mx("hold.test", (10, "mx.hold.test", "127.0.0.60"))
    # 3 s +-20% between attempts: time for the suspension to reach the
    # delivery process before A's second attempt is due.
    d = denv.start(delivery__retry_first="3s", delivery__retry_factor="1")

    def rcpt_tries():
        with sink.lock:
            return sum(1 for c in sink.commands
                       if c.upper().startswith("RCPT") and held_rcpt in c.lower())

    qa = submit(d, a, [held_rcpt])
    denv.wait_events(qa, "message.deferred", timeout=10)
    off = len(d.log_text())
    ctl("tenant", "suspend", a.name, "--reason", REASON)
    h.eventually(lambda: re.search(r"prog=sendgate-delivery level=\w+ event=cache_reload "
                                   r"table=tenant_limits", d.log_text()[off:]),
                 timeout=5, what="the delivery process's reload after the suspension")
    assert rcpt_tries() == 1, "A's retry came before the suspension reached delivery"
    held_since = time.monotonic()

    # B's mail to the same destination leaves meanwhile.
    qb = submit(d, b, ["bee@hold.test"])
    h.eventually(lambda: sink.received_for("bee@hold.test"), timeout=10,
                 what="B's message delivered while A is suspended")
    denv.wait_events(qb, "message.delivered")

    # Two retry periods and more: A's message is neither tried nor counted.
    time.sleep(max(0.0, 7.0 * h.SLOW - (time.monotonic() - held_since)))
    assert rcpt_tries() == 1, sink.commands
    assert sink.received_for(held_rcpt) == []
    assert len(denv.events(qa, "message.deferred")) == 1, denv.events(qa)
    assert denv.events(qa, "message.delivered") == []
    assert denv.events(qa, "message.bounced") == []
    assert denv.events(qa, "message.expired") == []
    assert qa in d.queue_ids(), "A's message left the spool while suspended"

    ctl("tenant", "resume", a.name)
    h.eventually(lambda: sink.received_for(held_rcpt), timeout=20,
                 what="A's held message delivered after the resumption")
    ev = denv.wait_events(qa, "message.delivered")
    # The second attempt: the suspension counted none.
    assert ev[0][2]["attempt"] == 2, ev
    assert len(denv.events(qa, "message.deferred")) == 1, denv.events(qa)
    h.eventually(lambda: qa not in d.queue_ids(), what="A's message gone from the spool")
    assert [t for t, _ in tenant_events(pg, a.name)] == ["tenant.suspended", "tenant.resumed"]


def test_database_before_migration_7_keeps_the_limits(build, daemon_factory):
    """A daemon upgraded before `sendgatectl migrate` ran: no tenant can be
    suspended yet, and the tenants' own limits still apply."""
    own = h.Postgres()
    try:
        ctl = h.Ctl(build, own.url)
        ctl.migrate()
        a = h.setup_tenant(ctl)
        ctl("tenant", "set-limits", a.name, "--messages-per-minute", "2")
        # As the schema was at migration 6.
        own.sql("ALTER TABLE tenants DROP COLUMN suspended_at, DROP COLUMN suspended_reason")
        own.sql("DELETE FROM schema_migrations WHERE version >= 7")
        d = daemon_factory(pg=own)
        d.wait_log(r"event=cache_reload table=tenant_limits rows=1")
        c = session(d, a)
        assert mail(c, a).code == 250
        assert mail(c, a).code == 250
        r = mail(c, a)
        assert (r.code, r.enhanced) == (451, "4.7.1"), r
        c.quit()
    finally:
        own.stop()


def test_reason_from_the_database_cannot_forge_replies(daemon_factory, ctl, pg):
    """The reply quotes the reason, which is data from the database: a CR LF
    in it (written by some other tool than sendgatectl) must not become a
    second reply line, nor non-ASCII leave as 8-bit reply text."""
    a = h.setup_tenant(ctl)
    d = daemon_factory()
    pg.sql("UPDATE tenants SET suspended_at = now(), suspended_reason = "
           "E'x\\r\\n250 2.1.0 Sender ok \\u00e9t\\u00e9' WHERE name = '%s'" % a.name)
    c = session(d, a)
    try:
        r = h.eventually(lambda: (lambda r: r if r.code != 250 else None)(mail(c, a)),
                         timeout=5, what="MAIL FROM refused")
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
        assert "suspended: x??250 2.1.0 Sender ok ??t??;" in r.text, r
        # The next reply is NOOP's own, not a forged one left in the stream.
        n = c.cmd("NOOP")
        assert n.code == 250 and "2.0.0" in n.text, n
    finally:
        c.close()
