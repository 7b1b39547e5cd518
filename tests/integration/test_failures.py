"""Dependencies failing under the daemon: a full spool disk and a
PostgreSQL outage give clients 4xx answers (never a false 250, never a
535 for a good credential), leave nothing half-written, and the daemon
recovers when the dependency comes back."""

import os
import subprocess
import time

import pytest

import sgharness as h


@pytest.fixture
def small_spool(tmp_path):
    """A 2 MB tmpfs to hold the spool (skips where mounting is not allowed)."""
    mnt = tmp_path / "spool"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.strip())
    yield str(mnt)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


def test_disk_full_gives_4xx_and_leaves_nothing(daemon_factory, tenant, small_spool):
    d = daemon_factory(spool_dir=small_spool)
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(tenant)
    r = c.send_message(tenant.addr(), ["x@example.net"], h.make_message(tenant.addr()))
    first = h.queued_id(r)
    assert first, r
    big = h.make_message(tenant.addr(), body=(b"d" * 98 + b"\r\n") * 40000)  # 4 MB > 2 MB disk
    r = c.send_message(tenant.addr(), ["x@example.net"], big)
    assert 400 <= r.code < 500, "a message that did not fit on disk was answered %r" % r
    assert r.enhanced in ("4.3.0", "4.3.1"), r
    assert d.queue_ids() == [first], d.queue_ids()
    assert os.listdir(os.path.join(small_spool, "tmp")) == [], "temp file left behind"
    # Space is back: the session and the daemon go on.
    r = c.send_message(tenant.addr(), ["x@example.net"], h.make_message(tenant.addr()))
    assert h.queued_id(r), r
    c.quit()
    assert d.alive()


@pytest.fixture
def own_pg(build):
    """A PostgreSQL of its own, so the test may stop it."""
    p = h.Postgres()
    h.Ctl(build, p.url).migrate()
    yield p
    p.stop()


def test_postgres_outage(build, own_pg, daemon_factory):
    ctl = h.Ctl(build, own_pg.url)
    t = h.setup_tenant(ctl)
    d = daemon_factory(pg=own_pg)
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(t)
    c.quit()

    own_pg.halt()
    try:
        # Cached credential and domain: submission goes on without the database.
        c = h.SMTPClient.connect(d.smtps_port, tls=True)
        c.login(t)
        r = c.send_message(t.addr(), ["x@example.net"], h.make_message(t.addr()))
        qid = h.queued_id(r)
        assert qid, "cached tenant could not send during the outage: %r" % r
        h.spooled(d, qid)
        c.quit()
        # An unknown username: the loaded cache is complete (535), or the
        # answer is unknown (454 4.7.0); never a success, never a hang.
        c = h.SMTPClient.connect(d.smtps_port, tls=True, source="127.0.0.3")
        c.ehlo()
        t0 = time.monotonic()
        r = c.auth_plain("unknown-" + t.username, t.secret)
        took = time.monotonic() - t0
        assert (r.code, r.enhanced) in ((535, "5.7.8"), (454, "4.7.0")), \
            "AUTH of an unknown user with the database down: %r" % r
        # Either answer is held back like any failed AUTH (session.c
        # AUTH_FAIL_MIN_MSEC, 250 ms); only the lower bound is checked.
        assert took >= 0.250, "failed AUTH during the outage answered after %.3fs" % took
        # A domain not in the cache is refused, not accepted.
        c = h.SMTPClient.connect(d.smtps_port, tls=True, source="127.0.0.3")
        c.login(t)
        r = c.cmd("MAIL FROM:<x@never-added-%s>" % t.domain)
        assert r.code in (550, 451), r
        c.quit()
        c.quit()
        assert d.alive()
    finally:
        own_pg.start()

    # Back: the daemon reconnects by itself and sees new credentials.
    t2 = h.setup_tenant(ctl)

    def works():
        c2 = h.SMTPClient.connect(d.smtps_port, tls=True, source="127.0.0.4")
        c2.ehlo()
        r2 = c2.auth_plain(t2.username, t2.secret)
        c2.close()
        return r2.code == 235

    h.eventually(works, timeout=20, interval=0.5, what="AUTH after the database came back")
    # The message accepted during the outage still gets its event row.
    h.eventually(lambda: own_pg.scalar("SELECT count(*) FROM events WHERE type = 'message.accepted' "
                                       "AND message_id = '%s'" % qid) == "1",
                 timeout=20, interval=0.5, what="event of a message accepted during the outage")
