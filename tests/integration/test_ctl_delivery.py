"""sendgatectl's delivery commands against a real database and spool: IP
pools (create, add-address, list, tenant set-pool), suppressions (list, add,
remove), events, and queue show/delete/retry; plus the effects a user
relies on: a tenant set to a pool leaves from its address with its HELO
name, a suppressed recipient is refused at RCPT TO, a deleted message is
gone and recorded."""

import json
import os
import re

import pytest

import sgharness as h
from delivery_fixtures import denv, submit  # noqa: F401 (fixture)


def fails(ctl, *args, rc=1):
    """Runs a command that must fail with exit code rc; returns stderr."""
    r = ctl.raw(*args)
    assert r.returncode == rc, "sendgatectl %s exited %d (expected %d): %s%s" % (
        " ".join(args), r.returncode, rc, r.stdout, r.stderr)
    assert r.stdout.strip() == "", "output on failure: %r" % r.stdout
    assert r.stderr.startswith("sendgatectl: "), r.stderr
    return r.stderr


def spool_ctl(build, pg, daemon):
    """A sendgatectl whose config names the daemon's spool."""
    path = os.path.join(daemon.dir, "ctl-%d.conf" % daemon.submission_port)
    with open(path, "w") as f:
        f.write("[database]\nurl = %s\n[spool]\ndir = %s\n[dkim]\nmaster_key_file = %s\n"
                % (pg.url, daemon.spool_dir, h.master_key_file()))
    return h.Ctl(build, pg.url, config=path)


# ------------------------------------------------------------------ pools

def test_pool_create_and_list(ctl, pg):
    name = h.unique_name("pool")
    out = ctl("pool", "create", name)
    assert out["name"] == name and out["default"] is False and out["addresses"] == []
    assert isinstance(out["id"], int) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$",
                                                   out["created_at"])
    a = ctl("pool", "add-address", name, "127.0.0.2", "--helo", "Out1.Sendgate.TEST")
    assert a == {"pool": name, "address": "127.0.0.2", "helo": "out1.sendgate.test",
                 "weight": 1}
    b = ctl("pool", "add-address", name, "2001:DB8:0:0:0::25", "--helo", "out6.sendgate.test",
            "--weight", "5")
    assert b["address"] == "2001:db8::25" and b["weight"] == 5
    pools = {p["name"]: p for p in ctl("pool", "list")}
    p = pools[name]
    assert p["tenants"] == 0 and p["default"] is False
    assert p["addresses"] == [
        {"address": "127.0.0.2", "helo": "out1.sendgate.test", "weight": 1},
        {"address": "2001:db8::25", "helo": "out6.sendgate.test", "weight": 5}]
    # What the delivery engine reads is what was said.
    rows = pg.sql("SELECT host(a.address), a.helo, a.weight FROM pool_addresses a "
                  "JOIN pools p ON p.id = a.pool_id WHERE p.name = '%s' ORDER BY a.id" % name)
    assert rows == [["127.0.0.2", "out1.sendgate.test", "1"],
                    ["2001:db8::25", "out6.sendgate.test", "5"]]
    # Text output names the pool and its addresses.
    r = ctl.raw("pool", "list", json_out=False)
    assert r.returncode == 0 and name in r.stdout and "2001:db8::25" in r.stdout


def test_pool_errors(ctl):
    name = h.unique_name("pool")
    ctl("pool", "create", name)
    assert "already exists" in fails(ctl, "pool", "create", name)
    assert "invalid pool name" in fails(ctl, "pool", "create", "Bad Name")
    assert "invalid pool name" in fails(ctl, "pool", "create", "_x")
    assert "invalid pool name" in fails(ctl, "pool", "create", "x" * 64)
    fails(ctl, "pool", "create", rc=2)
    fails(ctl, "pool", "create", name, "--bogus", rc=2)
    fails(ctl, "pool", "frobnicate", rc=2)
    for bad in ("256.1.1.1", "1.2.3", "10.0.0.1/24", "::ffff:192.0.2.1", "fe80::1%eth0",
                "[::1]", "example.com", "0.0.0.0", "::", "224.0.0.1", " 127.0.0.2", ""):
        err = fails(ctl, "pool", "add-address", name, bad, "--helo", "out.sendgate.test")
        assert "invalid source address" in err, (bad, err)
    assert "--helo" in fails(ctl, "pool", "add-address", name, "127.0.0.2", rc=2)
    assert "invalid HELO name" in fails(ctl, "pool", "add-address", name, "127.0.0.2",
                                        "--helo", "not a host")
    for w in ("0", "1001", "abc", "-1", "2x", ""):
        assert "invalid weight" in fails(ctl, "pool", "add-address", name, "127.0.0.2",
                                         "--helo", "out.sendgate.test", "--weight", w), w
    ctl("pool", "add-address", name, "127.0.0.2", "--helo", "out.sendgate.test")
    assert "already has the address 127.0.0.2" in fails(
        ctl, "pool", "add-address", name, "127.0.0.2", "--helo", "other.sendgate.test")
    assert "no pool named" in fails(ctl, "pool", "add-address", h.unique_name("nopool"),
                                    "127.0.0.3", "--helo", "out.sendgate.test")


def test_default_pool_moves(ctl, pg):
    a, b = h.unique_name("defa"), h.unique_name("defb")
    assert ctl("pool", "create", a, "--default")["default"] is True
    assert ctl("pool", "create", b, "--default")["default"] is True
    pools = {p["name"]: p for p in ctl("pool", "list")}
    assert pools[a]["default"] is False and pools[b]["default"] is True
    assert sum(1 for p in pools.values() if p["default"]) == 1


def test_tenant_set_pool(ctl, pg):
    t = h.setup_tenant(ctl)
    name = h.unique_name("tp")
    ctl("pool", "create", name)
    assert ctl("tenant", "set-pool", t.name, name) == {"tenant": t.name, "pool": name}
    assert pg.scalar("SELECT p.name FROM tenants t JOIN pools p ON p.id = t.pool_id "
                     "WHERE t.name = '%s'" % t.name) == name
    assert {p["name"]: p for p in ctl("pool", "list")}[name]["tenants"] == 1
    assert "no tenant named" in fails(ctl, "tenant", "set-pool", h.unique_name("nobody"), name)
    assert "no pool named" in fails(ctl, "tenant", "set-pool", t.name, h.unique_name("nopool"))
    fails(ctl, "tenant", "set-pool", t.name, rc=2)
    # The rest of the tenant commands still work.
    assert ctl("tenant", "show", t.name)["name"] == t.name


def test_pool_set_with_ctl_is_used_by_delivery(denv, ctl):
    """End to end: a pool made with sendgatectl decides the source address
    and HELO name of the tenant's deliveries."""
    t = h.setup_tenant(ctl)
    name = h.unique_name("e2e")
    ctl("pool", "create", name)
    ctl("pool", "add-address", name, "127.0.0.4", "--helo", "out4.sendgate.test")
    ctl("tenant", "set-pool", t.name, name)
    sink = denv.sink("127.0.0.20")
    denv.mx("pooled.test", (10, "mx.pooled.test", "127.0.0.20"))
    d = denv.start()
    submit(d, t, ["someone@pooled.test"])
    sink.wait_for(1)
    m = sink.messages[0]
    assert (m.source, m.helo) == ("127.0.0.4", "out4.sendgate.test")


# ------------------------------------------------------------ suppressions

def test_suppression_add_list_remove(ctl, pg):
    t = h.setup_tenant(ctl)
    out = ctl("suppression", "add", t.name, "Bob.Smith@Example.NET", "--reason",
              "asked by phone")
    assert out["address"] == "bob.smith@example.net" and out["reason"] == "asked by phone"
    assert out["message_id"] is None
    ctl("suppression", "add", t.name, "carol@example.net")
    lst = ctl("suppression", "list", t.name)
    assert [s["address"] for s in lst] == ["bob.smith@example.net", "carol@example.net"]
    assert lst[1]["reason"]  # a default reason, never empty
    assert "already suppressed" in fails(ctl, "suppression", "add", t.name, "BOB.smith@example.net")
    # Another tenant's list is its own.
    other = h.setup_tenant(ctl)
    assert ctl("suppression", "list", other.name) == []
    assert "not suppressed" in fails(ctl, "suppression", "remove", other.name,
                                     "carol@example.net")
    rm = ctl("suppression", "remove", t.name, "CAROL@example.net")
    assert rm["address"] == "carol@example.net"
    assert [s["address"] for s in ctl("suppression", "list", t.name)] == ["bob.smith@example.net"]
    assert "not suppressed" in fails(ctl, "suppression", "remove", t.name, "carol@example.net")


def test_suppression_errors(ctl):
    t = h.setup_tenant(ctl)
    for bad in ("nobody", "@example.net", "user@", "<a@example.net>", "a b@example.net",
                "a@localhost", "x" * 65 + "@example.net", "a@" + "b" * 250 + ".net"):
        assert "invalid address" in fails(ctl, "suppression", "add", t.name, bad), bad
    assert "invalid reason" in fails(ctl, "suppression", "add", t.name, "a@example.net",
                                     "--reason", "")
    assert "invalid reason" in fails(ctl, "suppression", "add", t.name, "a@example.net",
                                     "--reason", "two\nlines")
    assert "no tenant named" in fails(ctl, "suppression", "list", h.unique_name("nobody"))
    fails(ctl, "suppression", "add", t.name, rc=2)
    fails(ctl, "suppression", "wipe", t.name, rc=2)


def test_suppressed_recipient_refused_by_daemon(daemon_factory, ctl):
    """suppression add takes effect on a running daemon (NOTIFY), remove too."""
    t = h.setup_tenant(ctl)
    d = daemon_factory()

    def rcpt_reply(addr):
        c = h.SMTPClient.connect(d.submission_port)
        try:
            c.login(t)
            assert c.cmd("MAIL FROM:<%s>" % t.addr()).code == 250
            return c.cmd("RCPT TO:<%s>" % addr)
        finally:
            c.close()

    assert rcpt_reply("Gone@Example.net").code == 250
    ctl("suppression", "add", t.name, "GONE@example.net", "--reason", "mailbox closed")
    r = h.eventually(lambda: (lambda x: x if x.code == 550 else None)(
        rcpt_reply("Gone@Example.net")), what="RCPT refused after suppression add")
    assert r.enhanced == "5.1.1" and "mailbox closed" in r.text, r
    ctl("suppression", "remove", t.name, "gone@example.net")
    h.eventually(lambda: rcpt_reply("gone@example.net").code == 250,
                 what="RCPT accepted after suppression remove")


# ------------------------------------------------------------------ events

def test_events_filters_and_order(ctl, pg):
    t1, t2 = h.setup_tenant(ctl), h.setup_tenant(ctl)
    mid = h.unique_name("MSG").upper()
    ids = {}
    for i, (tenant, typ, msg) in enumerate([
            (t1, "message.deferred", mid), (t2, "message.delivered", None),
            (t1, "message.delivered", mid), (t1, "domain.verified", None),
            (t1, "message.bounced", "OTHER" + mid)]):
        tid = "(SELECT id FROM tenants WHERE name = '%s')" % tenant.name
        ids[i] = int(pg.scalar(
            "INSERT INTO events (type, tenant_id, message_id, data) VALUES "
            "('%s', %s, %s, '{\"n\": %d, \"recipient\": \"r%d@x.test\"}') RETURNING id"
            % (typ, tid, "'%s'" % msg if msg else "NULL", i, i)))
    ev = ctl("events", "--tenant", t1.name)
    assert [e["id"] for e in ev] == sorted(e["id"] for e in ev), "newest last"
    assert all(e["tenant"] == t1.name for e in ev)
    ev = [e for e in ev if e["id"] in ids.values()]
    assert [e["id"] for e in ev] == [ids[0], ids[2], ids[3], ids[4]]
    e0 = ev[0]
    assert set(e0) == {"id", "created_at", "type", "tenant", "message_id", "data"}
    assert e0["type"] == "message.deferred" and e0["tenant"] == t1.name
    assert e0["message_id"] == mid and e0["data"] == {"n": 0, "recipient": "r0@x.test"}
    assert ev[2]["message_id"] is None
    assert [e["id"] for e in ctl("events", "--message", mid)] == [ids[0], ids[2]]
    assert [e["id"] for e in ctl("events", "--tenant", t1.name, "--type", "message.delivered")
            ] == [ids[2]]
    assert [e["id"] for e in ctl("events", "--tenant", t1.name, "--type", "message.*")
            ] == [ids[0], ids[2], ids[4]]
    # --limit keeps the newest N, still oldest first.
    assert [e["id"] for e in ctl("events", "--tenant", t1.name, "--limit", "2")
            ] == [ids[3], ids[4]]
    everything = ctl("events", "--limit", "3")
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    assert everything[-1]["id"] >= ids[4]
    assert ctl("events", "--message", "NO" + mid) == []
    assert "no tenant named" in fails(ctl, "events", "--tenant", h.unique_name("nobody"))
    for bad in ("0", "abc", "-5", "100001"):
        assert "invalid --limit" in fails(ctl, "events", "--limit", bad), bad
    fails(ctl, "events", "--tenant", rc=2)
    fails(ctl, "events", "stray", rc=2)
    r = ctl.raw("events", "--message", mid, json_out=False)
    assert r.returncode == 0 and "message.deferred" in r.stdout and mid in r.stdout


# ------------------------------------------------------------------- queue

@pytest.fixture
def spooled_msg(daemon_factory, build, pg, ctl):
    """A daemon (delivery off), a tenant and one queued message."""
    t = h.setup_tenant(ctl)
    d = daemon_factory()
    c = h.SMTPClient.connect(d.submission_port)
    try:
        c.login(t)
        msg = h.make_message(t.addr(), to="first@example.net", subject="Queue show test")
        r = c.send_message(t.addr(), ["first@example.net", "Second@Example.net"],
                           h.dot_stuff(msg))
    finally:
        c.close()
    qid = h.queued_id(r)
    assert qid, r
    return d, t, qid, spool_ctl(build, pg, d)


def test_queue_show(spooled_msg):
    d, t, qid, sctl = spooled_msg
    out = sctl("queue", "show", qid)
    assert out["id"] == qid and out["tenant"] == t.name and out["sender"] == t.addr()
    assert out["auth_user"] == t.username
    stored = h.spooled(d, qid)
    assert [r["address"] for r in out["recipients"]] == stored.rcpts
    assert [r.lower() for r in stored.rcpts] == ["first@example.net", "second@example.net"]
    assert all(r["state"] == "pending" and r["attempts"] == 0 and r["last_attempt"] is None
               for r in out["recipients"])
    assert "Subject: Queue show test\r\n" in out["headers"]
    assert "DKIM-Signature:" in out["headers"]
    assert "hello" not in out["headers"], "the body is not part of headers"
    assert out["message_size"] == len(stored.message)
    assert out["size"] == os.path.getsize(d.queue_file(qid))
    r = sctl.raw("queue", "show", qid, json_out=False)
    assert r.returncode == 0 and stored.rcpts[1] in r.stdout and "pending" in r.stdout
    assert "Subject: Queue show test" in r.stdout
    assert "invalid queue id" in fails(sctl, "queue", "show", "../../etc/passwd")
    assert "no message" in fails(sctl, "queue", "show", "0" * 20)
    fails(sctl, "queue", "show", rc=2)


def test_queue_retry_creates_the_request_file(spooled_msg):
    d, t, qid, sctl = spooled_msg
    out = sctl("queue", "retry", qid)
    path = os.path.join(d.spool_dir, "retry", qid)
    assert out == {"id": qid, "retry_file": path}
    st = os.stat(path)
    assert st.st_size == 0
    # The delivery process (the spool's owner) must be able to remove it.
    qst = os.stat(d.queue_dir())
    assert (st.st_uid, os.stat(os.path.dirname(path)).st_uid) == (qst.st_uid, qst.st_uid)
    sctl("queue", "retry", qid)  # asking twice is fine
    assert "no message" in fails(sctl, "queue", "retry", "1" * 20)
    assert not os.path.exists(os.path.join(d.spool_dir, "retry", "1" * 20))


def test_queue_delete(spooled_msg, pg):
    d, t, qid, sctl = spooled_msg
    assert qid in [m["id"] for m in sctl("queue", "list")]
    rcpts = h.spooled(d, qid).rcpts
    out = sctl("queue", "delete", qid)
    assert out["id"] == qid and out["deleted"] is True
    assert not os.path.exists(d.queue_file(qid))
    assert qid not in [m["id"] for m in sctl("queue", "list")]
    ev = sctl("events", "--message", qid, "--type", "message.deleted")
    assert len(ev) == 1
    assert ev[0]["tenant"] == t.name and ev[0]["message_id"] == qid
    assert ev[0]["data"]["recipients"] == rcpts
    assert ev[0]["data"]["sender"] == t.addr()
    # (No order against message.accepted: events are written in batches, so
    # the accepted row may land after the delete's.)
    assert "no message" in fails(sctl, "queue", "delete", qid)
    assert len(sctl("events", "--message", qid, "--type", "message.deleted")) == 1, \
        "a failed delete records nothing"
    # The daemon keeps running and accepting mail.
    c = h.SMTPClient.connect(d.submission_port)
    try:
        c.login(t)
        r = c.send_message(t.addr(), ["x@example.net"], h.make_message(t.addr()))
        assert h.queued_id(r), r
    finally:
        c.close()


def test_queue_show_reports_delivery_status(denv, ctl, build, pg):
    """Per-recipient status written by the delivery engine shows up: one
    recipient delivered, one deferred with its next attempt."""
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.21")
    sink.rcpt_rule("later@status.test", "tempfail")
    denv.mx("status.test", (10, "mx.status.test", "127.0.0.21"))
    d = denv.start(delivery__retry_first="1h")
    qid = submit(d, t, ["now@status.test", "later@status.test"])
    denv.wait_events(qid, "message.deferred")
    sctl = spool_ctl(build, pg, d)

    def status():
        out = sctl("queue", "show", qid)
        st = {r["address"]: r for r in out["recipients"]}
        return st if st["later@status.test"]["state"] == "deferred" else None
    st = h.eventually(status, what="deferred status in the spool")
    assert st["now@status.test"]["state"] == "delivered"
    later = st["later@status.test"]
    assert later["attempts"] == 1 and later["last_attempt"] and later["next_attempt"]
    assert later["next_attempt"] > later["last_attempt"]
