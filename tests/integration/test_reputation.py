"""Automatic suspension ([reputation]): a tenant whose recipients in the
window bounce or complain past a rate is suspended by the daemon itself
(tenant.suspended event marked automatic, a reason naming the rate and the
limit, 550 5.7.1 at MAIL FROM), other tenants are not, and a tenant an
operator resumed is judged on what it sends after that.

Each test has its own PostgreSQL cluster: the check looks at every tenant
of the database, and the low thresholds used here must not touch the
tenants of other tests."""

import json
import re
import signal
import time

import pytest

import sgharness as h
from delivery_fixtures import DeliveryEnv, submit

FAST = dict(reputation__check_interval="1s", reputation__window="1h",
            reputation__min_recipients="10")


@pytest.fixture
def own(build):
    """(pg, ctl) of a throwaway cluster for one test."""
    pg = h.Postgres()
    try:
        ctl = h.Ctl(build, pg.url)
        ctl.migrate()
        yield pg, ctl
    finally:
        pg.stop()


def suspended_events(pg, name):
    rows = pg.sql("SELECT e.data::text FROM events e JOIN tenants t ON t.id = e.tenant_id"
                  " WHERE t.name = '%s' AND e.type = 'tenant.suspended' ORDER BY e.id" % name)
    return [json.loads(r[0]) for r in rows]


def wait_suspended(d, t, reason):
    """Until the daemon logs that it suspended tenant t for reason."""
    d.wait_log(r"event=tenant_suspended_automatically tenant=%s reason=\"%s\""
               % (t.name, re.escape(reason)))


def wait_checks(d, n, pattern=r"event=reputation_checked"):
    """Until the daemon's log holds n checks (matching pattern)."""
    h.eventually(lambda: len(re.findall(pattern, d.log_text())) >= n, timeout=15,
                 what="%d x /%s/" % (n, pattern))


def mail_reply(d, t):
    c = h.SMTPClient.connect(d.submission_port)
    try:
        c.login(t)
        return c.cmd("MAIL FROM:<%s>" % t.addr())
    finally:
        c.close()


def test_bounces_past_the_rate_suspend_only_that_tenant(own, daemon_factory, cert):
    pg, ctl = own
    denv = DeliveryEnv(lambda **kw: daemon_factory(pg=pg, **kw), pg, ctl, cert)
    try:
        bad, good = h.setup_tenant(ctl), h.setup_tenant(ctl)
        sink = denv.sink("127.0.0.21")
        denv.mx("list.test", (10, "mx.list.test", "127.0.0.21"))
        for i in range(4):
            sink.rcpt_rule("gone%d@list.test" % i, "permfail")
        d = denv.start(reputation__bounce_rate="20", **FAST)
        # bad: 4 of 10 recipients refused (40 %); good: 10 of 10 delivered.
        for i in range(6):
            submit(d, bad, ["ok%d@list.test" % i])
        ids = [submit(d, bad, ["gone%d@list.test" % i]) for i in range(4)]
        for i in range(10):
            submit(d, good, ["ok%d@list.test" % i])
        for qid in ids:
            denv.wait_events(qid, "message.bounced")
        reason = ("automatic: 4 of 10 recipients (40.0%) bounced in the last 1h, "
                  "the limit is 20%")
        wait_suspended(d, bad, reason)

        def refused():
            r = mail_reply(d, bad)
            return r if r.code == 550 else None
        r = h.eventually(refused, timeout=10, what="MAIL FROM refused")
        assert r.enhanced == "5.7.1", r
        assert "Tenant %s is suspended: %s" % (bad.name, reason) in r.text, r
        ev = suspended_events(pg, bad.name)
        assert len(ev) == 1, ev
        assert ev[0] == {"reason": reason, "by": "sendgate", "automatic": True,
                         "recipients": 10, "bounced": 4, "complained": 0, "window_s": 3600}
        assert mail_reply(d, good).code == 250
        assert suspended_events(pg, good.name) == []
        # Resumed by an operator: judged afresh on what it sends from now on,
        # so the same bounces do not suspend it again.
        ctl("tenant", "resume", bad.name)
        h.eventually(lambda: mail_reply(d, bad).code == 250, timeout=10, what="resumed")
        n = d.log_text().count("event=tenant_suspended_automatically")
        checks = d.log_text().count("event=reputation_checked")
        wait_checks(d, checks + 2)  # two checks since
        assert d.log_text().count("event=tenant_suspended_automatically") == n
        assert mail_reply(d, bad).code == 250
        assert len(suspended_events(pg, bad.name)) == 1
    finally:
        denv.finish()


def add_events(pg, t, kind, n):
    pg.sql("INSERT INTO events (type, tenant_id, message_id, data) SELECT '%s', id,"
           " 'M' || g, jsonb_build_object('recipient', 'r' || g || '@x.test') FROM tenants,"
           " generate_series(1, %d) g WHERE name = '%s'" % (kind, n, t.name))


def test_complaints_past_the_rate_and_the_minimum_volume(own, daemon_factory):
    pg, ctl = own
    loud, small, old = h.setup_tenant(ctl), h.setup_tenant(ctl), h.setup_tenant(ctl)
    # loud: 1 complaint for 20 recipients (5 %); small: 5 of 5, under the
    # 10 recipients looked at; old: 5 of 20, but outside the window.
    add_events(pg, loud, "message.delivered", 20)
    add_events(pg, loud, "message.complained", 1)
    add_events(pg, small, "message.delivered", 5)
    add_events(pg, small, "message.complained", 5)
    add_events(pg, old, "message.delivered", 20)
    add_events(pg, old, "message.complained", 5)
    pg.sql("UPDATE events SET created_at = now() - interval '2 hours' WHERE tenant_id ="
           " (SELECT id FROM tenants WHERE name = '%s')" % old.name)
    d = daemon_factory(pg=pg, reputation__complaint_rate="2", reputation__bounce_rate="0",
                       **FAST)
    reason = ("automatic: 1 of 20 recipients (5.00%) complained in the last 1h, "
              "the limit is 2%")
    wait_suspended(d, loud, reason)
    h.eventually(lambda: mail_reply(d, loud).code == 550, timeout=10, what="loud refused")
    checks = d.log_text().count("event=reputation_checked")
    wait_checks(d, checks + 2)  # the others stay active
    assert d.log_text().count("event=tenant_suspended_automatically") == 1
    for t in (small, old):
        assert mail_reply(d, t).code == 250
        assert suspended_events(pg, t.name) == []


def test_a_rate_of_zero_is_not_checked(own, daemon_factory):
    """bounce_rate = 0: bounces alone never suspend (the complaint check
    still runs); both 0: no check at all."""
    pg, ctl = own
    t = h.setup_tenant(ctl)
    add_events(pg, t, "message.delivered", 20)
    add_events(pg, t, "message.bounced", 20)
    d = daemon_factory(pg=pg, reputation__complaint_rate="5", reputation__bounce_rate="0",
                       **FAST)
    wait_checks(d, 2, r"event=reputation_checked suspended=0")
    assert "event=tenant_suspended_automatically" not in d.log_text()
    assert mail_reply(d, t).code == 250
    # A check that suspends nobody changes nothing: no NOTIFY, so no
    # daemon reloads its tenant caches because of it.
    reloads = d.log_text().count("event=cache_reload table=tenant_limits")
    checks = d.log_text().count("event=reputation_checked")
    wait_checks(d, checks + 2)
    assert d.log_text().count("event=cache_reload table=tenant_limits") == reloads
    d.stop()
    d = daemon_factory(pg=pg, reputation__complaint_rate="0", reputation__bounce_rate="0",
                       **FAST)
    d.wait_log(r"event=ready")
    time.sleep(3)  # what would be three checks
    assert "event=reputation_checked" not in d.log_text()


def test_sighup_applies_reputation_settings(own, daemon_factory):
    """Turned on by a SIGHUP: the checks start and suspend at once, without
    a restart."""
    pg, ctl = own
    t = h.setup_tenant(ctl)
    add_events(pg, t, "message.delivered", 20)
    add_events(pg, t, "message.complained", 4)
    d = daemon_factory(pg=pg, reputation__complaint_rate="0", reputation__bounce_rate="0",
                       **FAST)
    d.wait_log(r"event=ready")
    assert "event=reputation_checked" not in d.log_text()
    d.config["reputation"]["complaint_rate"] = "10"
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log(r"event=reload result=ok")
    wait_suspended(d, t, "automatic: 4 of 20 recipients (20.00%) complained in the last 1h, "
                         "the limit is 10%")


def add_reports(pg, t, kind, numbers, data='{"async": true}'):
    """kind events (bounces reported later, complaints) on the deliveries
    M<n> to r<n>@x.test of add_events."""
    pg.sql("INSERT INTO events (type, tenant_id, message_id, data) SELECT '%s', id,"
           " 'M' || g, '%s'::jsonb || jsonb_build_object('recipient', 'r' || g || '@x.test')"
           " FROM tenants, unnest(ARRAY[%s]) g WHERE name = '%s'"
           % (kind, data, ",".join(str(n) for n in numbers), t.name))


def test_later_reports_count_only_for_the_deliveries_judged(own, daemon_factory):
    pg, ctl = own
    late, stale, resumed = h.setup_tenant(ctl), h.setup_tenant(ctl), h.setup_tenant(ctl)
    # late: 20 delivered, 4 of them bounced later (20 %).
    add_events(pg, late, "message.delivered", 20)
    add_reports(pg, late, "message.bounced", [1, 2, 3, 4])
    # stale: 20 delivered now, and 8 bounces reported now on mail
    # delivered 3 hours ago, outside the window: 0 %.
    pg.sql("INSERT INTO events (created_at, type, tenant_id, message_id, data) SELECT"
           " now() - interval '3 hours', 'message.delivered', id, 'OLD' || g,"
           " jsonb_build_object('recipient', 'r' || g || '@x.test')"
           " FROM tenants, generate_series(1, 8) g WHERE name = '%s'" % stale.name)
    add_events(pg, stale, "message.delivered", 20)
    pg.sql("INSERT INTO events (type, tenant_id, message_id, data) SELECT 'message.bounced',"
           " id, 'OLD' || g, jsonb_build_object('async', true, 'recipient', 'r' || g ||"
           " '@x.test') FROM tenants, generate_series(1, 8) g WHERE name = '%s'" % stale.name)
    # resumed: complaints on 5 of 20 deliveries made before its resume,
    # then 20 new deliveries: judged on those only.
    add_events(pg, resumed, "message.delivered", 20)
    pg.sql("UPDATE events SET created_at = now() - interval '10 minutes' WHERE tenant_id ="
           " (SELECT id FROM tenants WHERE name = '%s')" % resumed.name)
    pg.sql("INSERT INTO events (created_at, type, tenant_id, data) SELECT now() - interval"
           " '5 minutes', 'tenant.resumed', id, '{}' FROM tenants WHERE name = '%s'"
           % resumed.name)
    add_reports(pg, resumed, "message.complained", [1, 2, 3, 4, 5], data="{}")
    pg.sql("INSERT INTO events (type, tenant_id, message_id, data) SELECT 'message.delivered',"
           " id, 'NEW' || g, jsonb_build_object('recipient', 'n' || g || '@x.test')"
           " FROM tenants, generate_series(1, 20) g WHERE name = '%s'" % resumed.name)
    d = daemon_factory(pg=pg, reputation__bounce_rate="15", reputation__complaint_rate="10",
                       **FAST)
    reason = ("automatic: 4 of 20 recipients (20.0%) bounced in the last 1h, "
              "the limit is 15%")
    wait_suspended(d, late, reason)
    checks = d.log_text().count("event=reputation_checked")
    wait_checks(d, checks + 2)
    assert d.log_text().count("event=tenant_suspended_automatically") == 1
    for t in (stale, resumed):
        assert suspended_events(pg, t.name) == []
    stats = {r["tenant"]: r for r in ctl("tenant", "stats", "--window", "1h")["tenants"]}
    assert (stats[stale.name]["recipients"], stats[stale.name]["bounced"]) == (20, 0)
    assert (stats[resumed.name]["recipients"], stats[resumed.name]["complained"]) == (20, 0)


# ------------------------------------------------------------ tenant stats

def add_old_events(pg, t, kind, n, hours):
    add_events(pg, t, kind, n)
    pg.sql("UPDATE events SET created_at = now() - interval '%d hours' WHERE id IN"
           " (SELECT e.id FROM events e JOIN tenants t ON t.id = e.tenant_id"
           " WHERE t.name = '%s' AND e.type = '%s' ORDER BY e.id DESC LIMIT %d)"
           % (hours, t.name, kind, n))


def test_tenant_stats_count_as_the_check_does(own):
    pg, ctl = own
    a, b, quiet = h.setup_tenant(ctl), h.setup_tenant(ctl), h.setup_tenant(ctl)
    # a: 20 delivered, 3 refused at once, 1 bounced later, 1 complaint,
    # 2 deferred, 1 expired: 23 recipients, 4 bounces (17.4 %), 1 complaint
    # (4.35 %); past both default limits, but under 500 recipients.
    add_events(pg, a, "message.delivered", 20)
    add_events(pg, a, "message.bounced", 3)
    add_reports(pg, a, "message.bounced", [5])
    add_events(pg, a, "message.complained", 1)
    add_events(pg, a, "message.deferred", 2)
    add_events(pg, a, "message.expired", 1)
    # b: 100 delivered and 6 refused (5.7 %: past half the 10 % limit); 10
    # more refused 5 hours ago, inside the default 24h window only.
    add_events(pg, b, "message.delivered", 100)
    add_events(pg, b, "message.bounced", 6)
    add_old_events(pg, b, "message.bounced", 10, 5)

    doc = ctl("tenant", "stats")
    assert (doc["window_s"], doc["bounce_limit"], doc["complaint_limit"],
            doc["min_recipients"]) == (86400, 10.0, 0.5, 500)
    rows = {r["tenant"]: r for r in doc["tenants"]}
    ra = rows[a.name]
    assert (ra["recipients"], ra["delivered"], ra["bounced"], ra["complained"], ra["deferred"],
            ra["expired"]) == (23, 20, 4, 1, 2, 1)
    assert abs(ra["bounce_rate"] - 400 / 23) < 0.01 and abs(ra["complaint_rate"] - 100 / 23) < 0.01
    assert ra["standing"] == "over (few recipients)" and ra["status"] == "active"
    rb = rows[b.name]
    assert (rb["recipients"], rb["bounced"], rb["standing"]) == (116, 16, "over (few recipients)")
    assert rows[quiet.name]["recipients"] == 0 and rows[quiet.name]["standing"] == "-"

    one = ctl("tenant", "stats", b.name, "--window", "1h")
    assert [r["tenant"] for r in one["tenants"]] == [b.name]
    assert (one["window_s"], one["tenants"][0]["recipients"], one["tenants"][0]["bounced"],
            one["tenants"][0]["standing"]) == (3600, 106, 6, "near")

    r = ctl.raw("tenant", "stats", a.name, json_out=False)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["TENANT", "STATUS", "RECIPIENTS"], r.stdout
    assert lines[1].split()[:6] == [a.name, "active", "23", "20", "4", "17.4"], r.stdout
    assert "bounces 10 %, complaints 0.5 %, from 500 recipients" in r.stdout

    r = ctl.raw("tenant", "stats", "nobody-here", json_out=False)
    assert r.returncode == 1 and 'no tenant named "nobody-here"' in r.stderr, r
    r = ctl.raw("tenant", "stats", "--window", "5s", json_out=False)
    assert r.returncode == 2 and "--window" in r.stderr, r
