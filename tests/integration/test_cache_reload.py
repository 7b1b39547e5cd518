"""The daemon's caches follow the database through LISTEN/NOTIFY, one table
at a time: a change reloads only the caches built from the changed table
(logged as event=cache_reload table=NAME rows=N ms=T), a NOTIFY with an
empty or unknown payload and a reconnection reload everything, and a
username Postgres did not know is remembered, so that asking again costs
no query (logged at debug level as event=auth_db_lookup).

Suppressions are not reloaded for small changes: a statement adding or
removing at most 100 rows sends each row on sendgate_suppression, applied
to the cache as it comes (logged at debug level as event=cache_delta
table=suppressions op=add|remove); larger statements, UPDATE and a payload
that does not parse reload the table.
"""

import hashlib
import re
import secrets
import time

import pytest

import sgharness as h

# The caches the submission daemon keeps (pools are the delivery process's).
ALL_TABLES = {"credentials", "suppressions", "tenant_limits", "dkim_keys", "domains"}
RELOAD_RX = re.compile(r"event=cache_reload table=(\w+) rows=(\d+) ms=(\d+)")


def mark(d):
    """The current end of d's log (pass to reloads/lines_since)."""
    return len(d.log_text())


def lines_since(d, offset):
    return d.log_text()[offset:]


def reloads(d, offset):
    """The tables reloaded since offset, in order."""
    return [m.group(1) for m in RELOAD_RX.finditer(lines_since(d, offset))]


def wait_reloaded(d, offset, tables, settle=0.3):
    """Waits until every table in tables reloaded after offset, then a
    little longer so that any other reload would show; returns the list."""
    h.eventually(lambda: set(tables) <= set(reloads(d, offset)), what="reload of %s" % tables)
    time.sleep(settle * h.SLOW)
    return reloads(d, offset)


def deltas(d, offset, op=r"\w+"):
    """The suppression deltas applied since offset, as (op, address)."""
    return re.findall(r"event=cache_delta table=suppressions op=(%s) tenant_id=\d+ "
                      r"address=\"?([^\"\s]+)\"?" % op, lines_since(d, offset))


def wait_delta(d, offset, op, addr):
    h.eventually(lambda: (op, addr) in deltas(d, offset), what="%s delta of %s" % (op, addr))


def refused(d, t, addr):
    """Waits until RCPT TO addr is refused; returns the reply."""
    return h.eventually(lambda: (lambda x: x if x.code == 550 else None)(rcpt_reply(d, t, addr)),
                        what="RCPT to %s refused" % addr)


def db_lookups(d, user, offset=0):
    return len(re.findall(r"event=auth_db_lookup user=\"?%s\"?(?:\s|$)" % re.escape(user),
                          lines_since(d, offset)))


def session(d, t):
    """An authenticated session of tenant t on d."""
    c = h.SMTPClient.connect(d.submission_port)
    c.login(t)
    return c


def rcpt_reply(d, t, addr):
    c = session(d, t)
    try:
        r = c.cmd("MAIL FROM:<%s>" % t.addr())
        assert r.code == 250, r
        return c.cmd("RCPT TO:<%s>" % addr)
    finally:
        c.quit()


def mail_reply(d, t, sender):
    c = session(d, t)
    try:
        return c.cmd("MAIL FROM:<%s>" % sender)
    finally:
        c.quit()


def auth_reply(d, user, secret):
    c = h.SMTPClient.connect(d.submission_port)
    try:
        c.ehlo()
        c.starttls()
        c.ehlo()
        return c.auth_plain(user, secret)
    finally:
        c.quit()


@pytest.fixture
def started(daemon_factory, ctl):
    """A tenant and a daemon that has loaded every cache once."""
    t = h.setup_tenant(ctl)
    d = daemon_factory(log_level="debug")
    h.eventually(lambda: ALL_TABLES <= set(reloads(d, 0)), what="first load of every cache")
    return t, d


def test_startup_loads_every_cache(started):
    t, d = started
    rows = dict((m.group(1), int(m.group(2))) for m in RELOAD_RX.finditer(d.log_text()))
    assert rows["credentials"] >= 1 and rows["domains"] >= 1, rows


def test_suppression_add_and_remove_apply_deltas_not_reloads(started, ctl):
    t, d = started
    addr = "gone-%s@example.net" % secrets.token_hex(3)
    assert rcpt_reply(d, t, addr).code == 250
    off = mark(d)
    ctl("suppression", "add", t.name, addr, "--reason", "mailbox closed")
    r = refused(d, t, addr)
    assert r.enhanced == "5.1.1" and "mailbox closed" in r.text, r
    wait_delta(d, off, "add", addr)
    ctl("suppression", "remove", t.name, addr)
    h.eventually(lambda: rcpt_reply(d, t, addr).code == 250,
                 what="RCPT accepted after suppression remove")
    wait_delta(d, off, "remove", addr)
    time.sleep(0.3 * h.SLOW)
    assert reloads(d, off) == []
    assert reloads(d, 0).count("suppressions") == 1, "only the load at start-up"


def test_bulk_suppression_change_reloads_once(started, pg):
    """More than 100 rows in one statement: one reload, no deltas; 100: deltas."""
    t, d = started
    tag = secrets.token_hex(3)
    off = mark(d)
    pg.sql("INSERT INTO suppressions (tenant_id, address, reason) "
           "SELECT id, 'bulk-%s-' || g || '@example.net', 'bulk ' || g FROM tenants, "
           "generate_series(1, 150) g WHERE name = '%s'" % (tag, t.name))
    assert wait_reloaded(d, off, ["suppressions"]) == ["suppressions"]
    assert deltas(d, off) == []
    for g in (1, 150):
        r = rcpt_reply(d, t, "bulk-%s-%d@example.net" % (tag, g))
        assert r.code == 550 and r.enhanced == "5.1.1" and "bulk %d" % g in r.text, r
    # At the threshold: one delta per row, no reload.
    off = mark(d)
    pg.sql("DELETE FROM suppressions WHERE address ~ '^bulk-%s-([1-9][0-9]?|100)@'" % tag)
    h.eventually(lambda: len(deltas(d, off, "remove")) == 100, what="100 remove deltas")
    assert rcpt_reply(d, t, "bulk-%s-1@example.net" % tag).code == 250
    assert rcpt_reply(d, t, "bulk-%s-101@example.net" % tag).code == 550
    # UPDATE reloads (rare, and a delta would have to carry the old key).
    off = mark(d)
    pg.sql("UPDATE suppressions SET reason = 'updated' WHERE address = 'bulk-%s-150@example.net'"
           % tag)
    assert wait_reloaded(d, off, ["suppressions"]) == ["suppressions"]
    assert "updated" in rcpt_reply(d, t, "bulk-%s-150@example.net" % tag).text
    off = mark(d)
    pg.sql("DELETE FROM suppressions WHERE address LIKE 'bulk-%s-%%'" % tag)
    h.eventually(lambda: len(deltas(d, off, "remove")) == 50, what="50 remove deltas")
    assert rcpt_reply(d, t, "bulk-%s-150@example.net" % tag).code == 250
    time.sleep(0.3 * h.SLOW)
    assert reloads(d, off) == []


def test_add_remove_add_in_one_transaction(started, pg):
    """Identical NOTIFYs of one transaction are merged by Postgres: the
    second add must still arrive after the remove."""
    t, d = started
    addr = "again-%s@example.net" % secrets.token_hex(3)
    ins = ("INSERT INTO suppressions (tenant_id, address, reason) SELECT id, '%s', 'again' "
           "FROM tenants WHERE name = '%s';" % (addr, t.name))
    off = mark(d)
    pg.sql("BEGIN;" + ins + "DELETE FROM suppressions WHERE address = '%s';" % addr + ins
           + "COMMIT;")
    h.eventually(lambda: deltas(d, off) == [("add", addr), ("remove", addr), ("add", addr)],
                 what="add, remove, add")
    assert rcpt_reply(d, t, addr).code == 550
    assert reloads(d, off) == []


def test_bad_delta_payload_reloads_suppressions(started, pg):
    t, d = started
    off = mark(d)
    pg.sql("SELECT pg_notify('sendgate_suppression', 'not json')")
    assert wait_reloaded(d, off, ["suppressions"]) == ["suppressions"]
    assert "event=suppression_notify_invalid" in lines_since(d, off)
    # A hand-made delta is applied like the triggers' own.
    addr = "hand-%s@example.net" % secrets.token_hex(3)
    off = mark(d)
    pg.sql("SELECT pg_notify('sendgate_suppression', json_build_object('op', 'add', "
           "'tenant_id', id, 'address', '%s', 'reason', 'by hand', 'since', 0)::text) "
           "FROM tenants WHERE name = '%s'" % (addr, t.name))
    assert "by hand" in refused(d, t, addr).text
    assert reloads(d, off) == []


def test_long_reason_is_cut_at_a_character_boundary(started, ctl):
    t, d = started
    addr = "long-%s@example.net" % secrets.token_hex(3)
    reason = "é" * 250  # 500 bytes: the cache keeps at most 199
    ctl("suppression", "add", t.name, addr, "--reason", reason)
    r = refused(d, t, addr)
    assert "(" + "é" * 99 + ")" in r.text, r


def test_credential_created_after_start_works_at_once(started, ctl):
    t, d = started
    cred = ctl.credential_create(t.name)
    # No waiting: a username the cache lacks is looked up in Postgres.
    r = auth_reply(d, cred["username"], cred["secret"])
    assert r.code == 235, r
    off = mark(d)
    ctl.credential_revoke(cred["username"])
    h.eventually(lambda: auth_reply(d, cred["username"], cred["secret"]).code == 535,
                 what="revoked credential refused")
    assert set(wait_reloaded(d, off, ["credentials"])) == {"credentials"}


def test_new_tenant_reloads_the_caches_built_from_tenants(started, ctl):
    t, d = started
    off = mark(d)
    ctl.tenant_create(h.unique_name())
    tables = {"credentials", "tenant_limits"}
    assert set(wait_reloaded(d, off, tables)) == tables


def test_domain_change_is_picked_up(started, ctl, pg):
    t, d = started
    dom = "%s.example" % h.unique_name("d")
    ctl.domain_add(t.name, dom)
    sender = "a@" + dom
    r = h.eventually(lambda: (lambda x: x if x.code == 550 else None)(mail_reply(d, t, sender)),
                     what="pending domain refused")
    assert "not verified yet" in r.text and dom in r.text, r
    off = mark(d)
    # What the verification runner does when the records check out.
    pg.sql("UPDATE domains SET state = 'verified', state_changed_at = now() "
           "WHERE name = '%s'" % dom)
    h.eventually(lambda: mail_reply(d, t, sender).code == 250, what="verified domain accepted")
    assert set(wait_reloaded(d, off, ["domains"])) == {"domains"}


def test_repeated_unknown_username_needs_no_query(started):
    t, d = started
    user = "nobody-%s" % secrets.token_hex(4)
    for i in (1, 2, 3):
        r = auth_reply(d, user, "x" * 43)
        assert r.code == 535 and r.enhanced == "5.7.8", r
    h.eventually(lambda: "user=%s result=failed" % user in d.log_text(), what="failure logged")
    assert db_lookups(d, user) == 1, "only the first AUTH asks Postgres"
    # A known username never asks.
    assert auth_reply(d, t.username, t.secret).code == 235
    assert auth_reply(d, t.username, "wrong" * 8).code == 535
    assert db_lookups(d, t.username) == 0


def test_unknown_username_forgotten_when_it_is_created(started, ctl, pg):
    """A username remembered as unknown works as soon as it exists."""
    t, d = started
    user = "%s-%s" % (t.name, secrets.token_hex(4))
    secret = secrets.token_urlsafe(32)
    assert auth_reply(d, user, secret).code == 535
    assert auth_reply(d, user, secret).code == 535
    assert db_lookups(d, user) == 1
    digest = hashlib.sha256(secret.encode()).hexdigest()
    pg.sql("INSERT INTO credentials (tenant_id, username, secret_sha256) "
           "SELECT id, '%s', decode('%s', 'hex') FROM tenants WHERE name = '%s'"
           % (user, digest, t.name))
    h.eventually(lambda: auth_reply(d, user, secret).code == 235, what="new credential accepted")


def test_unknown_or_empty_payload_reloads_everything(started, pg):
    t, d = started
    for q in ("NOTIFY sendgate_cache", "SELECT pg_notify('sendgate_cache', 'no_such_table')",
              "SELECT pg_notify('sendgate_cache', 'suppressions,no_such_table')"):
        off = mark(d)
        pg.sql(q)
        got = wait_reloaded(d, off, ALL_TABLES, settle=0.1)
        assert sorted(got) == sorted(ALL_TABLES), (q, got)
    off = mark(d)
    pg.sql("SELECT pg_notify('sendgate_cache', 'credentials, dkim_keys')")
    assert set(wait_reloaded(d, off, ["credentials", "dkim_keys"])) == {
        "credentials", "dkim_keys"}


def test_reconnect_reloads_everything_and_listens_again(started, ctl, pg):
    t, d = started
    off = mark(d)
    n = int(pg.scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                      "AND backend_type = 'client backend'"))
    assert n >= 1
    d.wait_log(r"event=db_disconnected", timeout=10)
    h.eventually(lambda: "event=db_connected" in lines_since(d, off), timeout=15,
                 what="reconnected")
    h.eventually(lambda: ALL_TABLES <= set(reloads(d, off)), what="full reload after reconnect")
    # LISTEN was issued again, on both channels: changes made now arrive.
    addr = "after-%s@example.net" % secrets.token_hex(3)
    off = mark(d)
    ctl("suppression", "add", t.name, addr, "--reason", "after reconnect")
    h.eventually(lambda: rcpt_reply(d, t, addr).code == 550,
                 what="suppression added after reconnect refused")
    wait_delta(d, off, "add", addr)
    ctl.credential_create(t.name)
    assert set(wait_reloaded(d, off, ["credentials"])) == {"credentials"}


def test_change_during_a_long_reload_is_not_lost(started, ctl, pg):
    """A NOTIFY that arrives while its cache is loading loads it again."""
    t, d = started
    off = mark(d)
    bulk = h.setup_tenant(ctl)
    wait_reloaded(d, off, ["credentials", "domains", "dkim_keys"])
    addr = "late-%s@example.net" % secrets.token_hex(3)
    try:
        off = mark(d)
        pg.sql("INSERT INTO suppressions (tenant_id, address, reason) "
               "SELECT id, 'bulk' || g || '@example.net', 'bulk' FROM tenants, "
               "generate_series(1, 60000) g WHERE name = '%s'" % bulk.name)
        # Most likely while the 60000 rows above are being loaded: its
        # delta then arrives before the load's result is handled, and must
        # outlive the loaded rows (which may not hold it).
        ctl("suppression", "add", t.name, addr, "--reason", "late")
        h.eventually(lambda: rcpt_reply(d, t, addr).code == 550, timeout=10,
                     what="suppression added during a reload refused")
        wait_reloaded(d, off, ["suppressions"])
        assert rcpt_reply(d, t, addr).code == 550
        got = reloads(d, off)
        assert got == ["suppressions"], got
    finally:
        pg.sql("DELETE FROM suppressions WHERE tenant_id = "
               "(SELECT id FROM tenants WHERE name = '%s')" % bulk.name)
