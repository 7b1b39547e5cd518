"""[events] retention: events older than the retention are deleted in
batches soon after start (then hourly); younger ones, and the rows other
tables point at, stay. A retention under 7 days (bounces that come back
later need the delivery events) is a configuration error."""

import time

import pytest

import sgharness as h


def start_fails(d):
    with pytest.raises(h.DaemonDied) as ei:
        d.start()
    return str(ei.value)


def test_retention_under_seven_days_is_refused(daemon_factory):
    d = daemon_factory(start=False, events__retention="2d")
    msg = start_fails(d)
    assert d.config_path in msg and "[events] retention" in msg and "7d" in msg, msg


def test_old_events_are_purged_in_batches(build, daemon_factory):
    pg = h.Postgres()
    try:
        ctl = h.Ctl(build, pg.url)
        ctl.migrate()
        t = h.setup_tenant(ctl)
        tid = pg.scalar("SELECT id FROM tenants WHERE name = '%s'" % t.name)
        # 25,000 events 40 days old (more than two batches), 3 from 10 days
        # ago, and what setup_tenant itself recorded.
        pg.sql("INSERT INTO events (created_at, type, tenant_id, message_id, data) "
               "SELECT now() - interval '40 days', 'message.delivered', %s, 'OLD' || g, "
               "'{}' FROM generate_series(1, 25000) g" % tid)
        pg.sql("INSERT INTO events (created_at, type, tenant_id, message_id) "
               "SELECT now() - interval '10 days', 'message.delivered', %s, 'KEEP' || g "
               "FROM generate_series(1, 3) g" % tid)
        before = int(pg.scalar("SELECT count(*) FROM events"))
        d = daemon_factory(pg=pg, events__retention="30d")
        d.wait_log(r"event=events_purged rows=25000 retention_s=2592000", timeout=30)
        assert int(pg.scalar("SELECT count(*) FROM events WHERE message_id LIKE 'OLD%'")) == 0
        assert int(pg.scalar("SELECT count(*) FROM events WHERE message_id LIKE 'KEEP%'")) == 3
        assert int(pg.scalar("SELECT count(*) FROM events")) >= before - 25000
        # The daemon keeps working: a message sent now is recorded.
        c = h.SMTPClient.connect(d.smtps_port, tls=True)
        c.login(t)
        r = c.send_message(t.addr(), ["x@example.net"], h.make_message(t.addr()))
        qid = h.queued_id(r)
        c.quit()
        assert qid, r
        h.eventually(lambda: pg.scalar("SELECT count(*) FROM events WHERE message_id = '%s'"
                                       % qid) == "1", what="the new message's event")
    finally:
        pg.stop()


def test_no_retention_keeps_everything(daemon_factory, pg, tenant):
    pg.sql("INSERT INTO events (created_at, type, message_id) "
           "VALUES (now() - interval '4000 days', 'message.delivered', 'ANCIENT')")
    try:
        d = daemon_factory()
        d.wait_log(r"event=ready")
        # Past the moment a purge would have run (2 s after start).
        time.sleep(4 * h.SLOW)
        assert pg.scalar("SELECT count(*) FROM events WHERE message_id = 'ANCIENT'") == "1"
        assert "events_purged" not in d.log_text()
    finally:
        pg.sql("DELETE FROM events WHERE message_id = 'ANCIENT'")
