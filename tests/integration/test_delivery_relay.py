"""Delivery through a smarthost, bounces the client decides itself (SIZE,
SMTPUTF8), and the connection limits."""

import re

import sgharness as h
from delivery_fixtures import denv, submit  # noqa: F401 (fixture)


def test_relay_with_starttls_and_auth(denv, tenant):
    relay = denv.sink("127.0.0.30", auth=("relayuser", "s3cret pass"))
    d = denv.start(delivery__relay="127.0.0.30:%d" % denv.port, delivery__relay_starttls="yes",
                   delivery__relay_username="relayuser",
                   delivery__relay_password="s3cret pass")
    # No DNS at all for these domains: everything goes to the relay.
    qid = submit(d, tenant, ["x@anywhere.test", "y@elsewhere.test"])
    msgs = relay.wait_for(2)
    assert all(m.tls and m.user == "relayuser" for m in msgs)
    assert sorted(r for m in msgs for r in m.rcpts) == ["x@anywhere.test", "y@elsewhere.test"]
    ev = denv.wait_events(qid, "message.delivered", 2)
    assert all(e[2]["tls"] for e in ev)


def test_relay_without_required_starttls_defers(denv, tenant):
    relay = denv.sink("127.0.0.31", tls=False)
    d = denv.start(delivery__relay="127.0.0.31:%d" % denv.port, delivery__relay_starttls="yes")
    qid = submit(d, tenant, ["x@anywhere.test"])
    ev = denv.wait_events(qid, "message.deferred")
    assert "STARTTLS" in ev[0][2]["reply"]
    assert relay.count == 0 and d.queue_ids() == [qid]


def test_relay_auth_refused_defers(denv, tenant):
    relay = denv.sink("127.0.0.32", auth=("relayuser", "right"))
    d = denv.start(delivery__relay="127.0.0.32:%d" % denv.port,
                   delivery__relay_username="relayuser", delivery__relay_password="wrong")
    qid = submit(d, tenant, ["x@anywhere.test"])
    ev = denv.wait_events(qid, "message.deferred")
    assert "AUTH" in ev[0][2]["reply"]
    assert relay.count == 0


def test_size_over_the_servers_limit_bounces_without_suppression(denv, tenant, pg):
    sink = denv.sink("127.0.0.33", size=1000)
    denv.mx("small.test", (10, "mx.small.test", "127.0.0.33"))
    d = denv.start()
    qid = submit(d, tenant, ["big@small.test"], body=("x" * 70 + "\r\n") * 40)
    ev = denv.wait_events(qid, "message.bounced")
    assert "5.3.4" in ev[0][2]["reply"] and "mx.small.test" in ev[0][2]["reply"]
    # The client checked SIZE itself: no MAIL was sent.
    assert not [c for c in sink.commands if c.upper().startswith("MAIL")]
    assert pg.scalar("SELECT count(*) FROM suppressions WHERE address = 'big@small.test'") == "0"


def test_smtputf8_message_to_a_server_without_it_bounces(denv, tenant):
    sink = denv.sink("127.0.0.34", smtputf8=False)
    denv.mx("ascii.test", (10, "mx.ascii.test", "127.0.0.34"))
    d = denv.start()
    c = h.SMTPClient.connect(d.submission_port)
    c.login(tenant)
    r = c.cmd("MAIL FROM:<%s> SMTPUTF8" % tenant.addr())
    assert r.code == 250, r
    r = c.cmd("RCPT TO:<j\u00f6ran@ascii.test>")
    assert r.code == 250, r
    assert c.cmd("DATA").code == 354
    c.send(("From: %s\r\nSubject: utf8\r\n\r\nhej\r\n.\r\n" % tenant.addr()).encode())
    r = c.reply()
    assert r.code == 250, r
    qid = re.search(r"queued as (\w+)", r.text).group(1)
    c.close()
    ev = denv.wait_events(qid, "message.bounced")
    assert "SMTPUTF8" in ev[0][2]["reply"] and "5.6.7" in ev[0][2]["reply"]
    assert sink.count == 0


def test_connection_reuse_and_destination_limit(denv, tenant):
    # The greeting waits a second, so the messages queue up meanwhile.
    sink = denv.sink("127.0.0.35", greet_delay=1.0)
    denv.mx("reuse.test", (10, "mx.reuse.test", "127.0.0.35"))
    d = denv.start(delivery__messages_per_connection="3",
                   delivery__max_connections_per_destination="1")
    for i in range(7):
        submit(d, tenant, ["r%d@reuse.test" % i])
    sink.wait_for(7, timeout=20)
    # One connection at a time, up to three messages on each.
    assert sink.max_active == 1
    peers = {}
    for m in sink.messages:
        peers.setdefault(m.peer, []).append(m)
    assert sorted(len(v) for v in peers.values()) == [1, 3, 3]
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")


def test_relay_tls_failure_never_falls_back_to_clear_text(denv, tenant):
    relay = denv.sink("127.0.0.37", tls_broken=True)
    d = denv.start(delivery__relay="127.0.0.37:%d" % denv.port, delivery__relay_starttls="yes",
                   delivery__retry_first="1s")
    qid = submit(d, tenant, ["x@anywhere.test"])
    ev = denv.wait_events(qid, "message.deferred", 2)
    assert all("4.7.10" in e[2]["reply"] for e in ev)
    assert relay.count == 0 and d.queue_ids() == [qid]


def test_opportunistic_tls_without_relay_requirement(denv, tenant):
    # relay_starttls = no: STARTTLS is still used when offered...
    relay = denv.sink("127.0.0.38")
    d = denv.start(delivery__relay="127.0.0.38:%d" % denv.port, delivery__relay_starttls="no")
    submit(d, tenant, ["x@anywhere.test"])
    assert relay.wait_for(1)[0].tls
