"""Delivery: messages leave the spool for SMTP sinks found through a real
DNS server, from each tenant's pool, with retries, bounces, suppressions,
events, and a crash in the middle."""

import os
import re
import time

import pytest

import sgharness as h
from delivery_fixtures import denv, submit, verp  # noqa: F401 (fixture)


def test_tenants_leave_from_their_own_pools(denv, ctl):
    a = h.setup_tenant(ctl)
    b = h.setup_tenant(ctl)
    denv.pool(a, h.unique_name("pa"), ("127.0.0.2", "out-a.sendgate.test", 1))
    denv.pool(b, h.unique_name("pb"), ("127.0.0.3", "out-b.sendgate.test", 1))
    sink = denv.sink("127.0.0.10")
    denv.mx("dest.test", (10, "mx.dest.test", "127.0.0.10"))
    d = denv.start()

    ida = submit(d, a, ["alice@dest.test"])
    idb = submit(d, b, ["bob@dest.test", "carol@dest.test"])
    sink.wait_for(2)
    by_rcpt = {tuple(m.rcpts): m for m in sink.messages}
    ma = by_rcpt[("alice@dest.test",)]
    mb = by_rcpt[("bob@dest.test", "carol@dest.test")]
    assert ma.source == "127.0.0.2" and ma.helo == "out-a.sendgate.test"
    assert mb.source == "127.0.0.3" and mb.helo == "out-b.sendgate.test"
    # VERP on the platform's bounce domain (return paths are not verified):
    # with the recipient's index for one recipient, "m" and the first one's
    # for several, each with its tag.
    assert ma.mail_from == verp(ida, 0, "bounces.sendgate.example")
    assert mb.mail_from == verp(idb, 0, "bounces.sendgate.example", several=True)
    # Signed message as spooled, dot-stuffing undone by the sink.
    assert b"DKIM-Signature:" in ma.data
    assert b"\r\n.A line that starts with a dot.\r\n" in ma.data
    # Delivered messages leave the spool; events name the source address.
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")
    ev = denv.wait_events(idb, "message.delivered", 2)
    assert {e[2]["recipient"] for e in ev} == {"bob@dest.test", "carol@dest.test"}
    assert all(e[2]["source_address"] == "127.0.0.3" and e[2]["mx"] == "mx.dest.test"
               and e[2]["attempt"] == 1 and e[2]["reply"].startswith("250") for e in ev)


def test_mx_fallback_and_unresolvable_hosts(denv, tenant):
    # Preference 5 does not resolve, 10 refuses at greeting, 20 takes it.
    bad = denv.sink("127.0.0.11", greeting="421 4.3.2 too busy")
    good = denv.sink("127.0.0.12")
    denv.mx("fallback.test", (5, "nowhere.fallback.test", None),
            (10, "busy.fallback.test", "127.0.0.11"), (20, "ok.fallback.test", "127.0.0.12"))
    d = denv.start()
    qid = submit(d, tenant, ["x@fallback.test"])
    good.wait_for(1)
    assert bad.connections >= 1
    ev = denv.wait_events(qid, "message.delivered")
    assert ev[0][2]["mx"] == "ok.fallback.test"
    assert denv.events(qid, "message.deferred") == []


def test_implicit_mx(denv, tenant):
    sink = denv.sink("127.0.0.13")
    denv.dns.set("plain.test", "A", ["127.0.0.13"])
    d = denv.start()
    submit(d, tenant, ["x@plain.test"])
    sink.wait_for(1)


def test_null_mx_bounces_at_once_and_suppresses(denv, tenant):
    denv.dns.set("nomail.test", "MX", ["0 ."])
    d = denv.start()
    qid = submit(d, tenant, ["someone@nomail.test"])
    ev = denv.wait_events(qid, "message.bounced")
    assert "5.1.10" in ev[0][2]["reply"]
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")


def test_retry_with_backoff_then_delivered(denv, tenant):
    sink = denv.sink("127.0.0.14")
    sink.rcpt_rule("later@retry.test", "tempfail", times=2,
                   text="451 4.2.1 mailbox busy")
    denv.mx("retry.test", (10, "mx.retry.test", "127.0.0.14"))
    d = denv.start(delivery__retry_first="1s", delivery__retry_factor="2")
    t0 = time.monotonic()
    qid = submit(d, tenant, ["later@retry.test"])
    sink.wait_for(1, timeout=20)
    elapsed = time.monotonic() - t0
    deferred = denv.wait_events(qid, "message.deferred", 2)
    delivered = denv.wait_events(qid, "message.delivered")
    assert [e[2]["attempt"] for e in deferred] == [1, 2]
    assert delivered[0][2]["attempt"] == 3
    assert all("4.2.1" in e[2]["reply"] for e in deferred)
    # 1s then 2s (+-20%, whole seconds): not retried at once, not minutes later.
    assert 1.0 <= elapsed < 12, elapsed
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")


def test_server_retry_hint_is_honoured(denv, tenant):
    sink = denv.sink("127.0.0.15")
    sink.rcpt_rule("hint@hint.test", "tempfail", times=1,
                   text="451 4.7.1 greylisted, try again in 5 seconds")
    denv.mx("hint.test", (10, "mx.hint.test", "127.0.0.15"))
    d = denv.start(delivery__retry_first="1s")
    t0 = time.monotonic()
    qid = submit(d, tenant, ["hint@hint.test"])
    ev = denv.wait_events(qid, "message.deferred")
    assert ev[0][2]["next_attempt"] - int(time.time()) >= 3
    sink.wait_for(1, timeout=15)
    # Our own backoff would have retried within about two seconds.
    assert time.monotonic() - t0 >= 4.0


def test_expiry_bounces_as_expired(denv, tenant):
    sink = denv.sink("127.0.0.16")
    sink.rcpt_rule("never@expire.test", "tempfail")
    denv.mx("expire.test", (10, "mx.expire.test", "127.0.0.16"))
    d = denv.start(delivery__max_age="3s", delivery__retry_first="1s")
    qid = submit(d, tenant, ["never@expire.test"])
    ev = denv.wait_events(qid, "message.expired", timeout=15)
    assert ev[0][2]["recipient"] == "never@expire.test"
    assert len(denv.events(qid, "message.deferred")) >= 1
    assert sink.count == 0
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")


def test_hard_bounce_suppresses_the_address(denv, ctl, pg):
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.17")
    sink.rcpt_rule("gone@bounce.test", "permfail")
    denv.mx("bounce.test", (10, "mx.bounce.test", "127.0.0.17"))
    d = denv.start()
    qid = submit(d, t, ["gone@bounce.test", "here@bounce.test"])
    sink.wait_for(1)
    assert sink.messages[0].rcpts == ["here@bounce.test"]
    ev = denv.wait_events(qid, "message.bounced")
    assert ev[0][2]["recipient"] == "gone@bounce.test" and "5.1.1" in ev[0][2]["reply"]
    h.eventually(lambda: pg.sql(
        "SELECT reason FROM suppressions s JOIN tenants t ON t.id = s.tenant_id "
        "WHERE t.name = '%s' AND address = 'gone@bounce.test'" % t.name), what="suppression")
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")

    def refused():
        c = h.SMTPClient.connect(d.submission_port)
        try:
            c.login(t)
            c.cmd("MAIL FROM:<%s>" % t.addr())
            r = c.cmd("RCPT TO:<gone@bounce.test>")
            return r if r.code == 550 else None
        finally:
            c.close()
    r = h.eventually(refused, timeout=10, what="RCPT of a suppressed address refused")
    assert r.enhanced == "5.1.1"


def test_one_stalled_destination_does_not_hold_others(denv, tenant):
    denv.sink("127.0.0.18", stall=True)
    fast = denv.sink("127.0.0.19")
    denv.mx("stalled.test", (10, "mx.stalled.test", "127.0.0.18"))
    denv.mx("fast.test", (10, "mx.fast.test", "127.0.0.19"))
    d = denv.start(delivery__connect_timeout="60s", delivery__command_timeout="60s")
    for i in range(3):
        submit(d, tenant, ["s%d@stalled.test" % i])
    time.sleep(0.5)
    for i in range(5):
        submit(d, tenant, ["f%d@fast.test" % i])
    fast.wait_for(5, timeout=10)
    # The sink counts a message at its DATA; the file goes a moment later.
    h.eventually(lambda: len(d.queue_ids()) == 3, what="only the stalled 3 queued")


def test_crash_with_half_delivered_message(denv, tenant):
    fast = denv.sink("127.0.0.20")
    slow = denv.sink("127.0.0.21", stall_data=True)
    denv.mx("one.test", (10, "mx.one.test", "127.0.0.20"))
    denv.mx("two.test", (10, "mx.two.test", "127.0.0.21"))
    d = denv.start(delivery__command_timeout="120s", delivery__data_timeout="120s")
    qid = submit(d, tenant, ["a@one.test", "b@one.test", "c@two.test"])
    fast.wait_for(1)
    h.eventually(lambda: slow.connections >= 1, what="slow destination connected")
    time.sleep(1.0)  # the status of a@ and b@ reaches the disk meanwhile
    denv.kill_delivery()
    assert d.queue_ids() == [qid]  # c@two.test is not done
    slow.stall_data = False
    if denv.exe:
        denv.start_delivery()
    denv.wait_log(r"event=delivery_ready", n=2, timeout=20)
    slow.wait_for(1, timeout=20)
    assert slow.messages[0].rcpts == ["c@two.test"]
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")
    # Every recipient delivered; the ones done before the crash not again.
    got = [r for m in fast.messages + slow.messages for r in m.rcpts]
    assert sorted(got) == ["a@one.test", "b@one.test", "c@two.test"]


def test_tls_used_when_offered_and_clear_after_a_failed_handshake(denv, tenant):
    good = denv.sink("127.0.0.22")
    broken = denv.sink("127.0.0.23", tls_broken=True)
    denv.mx("tls.test", (10, "mx.tls.test", "127.0.0.22"))
    denv.mx("badtls.test", (10, "mx.badtls.test", "127.0.0.23"))
    d = denv.start()
    q1 = submit(d, tenant, ["x@tls.test"])
    q2 = submit(d, tenant, ["y@badtls.test"])
    good.wait_for(1)
    broken.wait_for(1)
    assert good.messages[0].tls and not broken.messages[0].tls
    e1 = denv.wait_events(q1, "message.delivered")[0][2]
    e2 = denv.wait_events(q2, "message.delivered")[0][2]
    assert e1["tls"] is True and e2["tls"] is False


def test_sigterm_keeps_undelivered_mail(denv, tenant):
    denv.sink("127.0.0.24", stall_data=True)
    denv.mx("hold.test", (10, "mx.hold.test", "127.0.0.24"))
    d = denv.start(delivery__command_timeout="120s", delivery__data_timeout="120s")
    qid = submit(d, tenant, ["x@hold.test"])
    time.sleep(1.0)
    t0 = time.monotonic()
    if denv.exe:
        assert denv.stop_delivery() == 0
    else:
        assert d.stop() == 0
    assert time.monotonic() - t0 < 12
    assert os.path.exists(d.queue_file(qid))


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_daemon_killed_then_restarted_resumes(denv, tenant):
    if denv.exe:
        pytest.skip("needs the daemon's own delivery child")
    slow = denv.sink("127.0.0.25", stall_data=True)
    denv.mx("resume.test", (10, "mx.resume.test", "127.0.0.25"))
    d = denv.start(delivery__command_timeout="120s", delivery__data_timeout="120s")
    qid = submit(d, tenant, ["x@resume.test"])
    h.eventually(lambda: slow.connections >= 1, what="delivery under way")
    child = denv.delivery_pid()
    d.kill()
    # The delivery child does not outlive the daemon (nor deliver twice
    # beside the next one): it stops when its parent dies.
    h.eventually(lambda: not _alive(child), timeout=20, what="delivery child gone")
    assert d.queue_ids() == [qid]
    slow.stall_data = False
    d.start()
    slow.wait_for(1, timeout=20)
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")
    assert len(slow.messages) == 1


def test_second_delivery_process_on_one_spool_refuses(denv, tenant):
    if denv.exe:
        pytest.skip("needs the daemon's own delivery child")
    d = denv.start()
    r = h.run([d.exe, "--delivery-only", "-c", d.config_path], check=False, timeout=30)
    assert r.returncode != 0
    assert "another delivery process" in r.stdout + r.stderr


def test_queue_retry_tries_a_deferred_message_now(denv, tenant, build, pg):
    sink = denv.sink("127.0.0.26")
    sink.rcpt_rule("r@later.test", "tempfail", times=1)
    denv.mx("later.test", (10, "mx.later.test", "127.0.0.26"))
    d = denv.start(delivery__retry_first="1h")
    qid = submit(d, tenant, ["r@later.test"])
    denv.wait_events(qid, "message.deferred")
    time.sleep(1.5)
    assert sink.count == 0
    ctl = h.Ctl(build, pg.url, config=d.config_path)
    ctl("queue", "retry", qid)
    sink.wait_for(1, timeout=10)
    ev = denv.wait_events(qid, "message.delivered")
    assert ev[0][2]["attempt"] == 2
    h.eventually(lambda: not os.listdir(os.path.join(d.spool_dir, "retry")),
                 what="retry request consumed")


def test_tenants_share_a_busy_destination(denv, ctl):
    # One connection at a time to the destination, one message each: a
    # tenant's backlog must not make another tenant's mail wait behind it.
    a = h.setup_tenant(ctl)
    b = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.27", greet_delay=0.3)
    denv.mx("shared.test", (10, "mx.shared.test", "127.0.0.27"))
    d = denv.start(delivery__max_connections_per_destination="1",
                   delivery__messages_per_connection="1")
    submit(d, b, ["b0@shared.test"])  # b's queue exists before a's
    sink.wait_for(1)
    for i in range(15):
        submit(d, a, ["a%d@shared.test" % i])
    before = sink.count
    submit(d, b, ["b1@shared.test"])
    sink.wait_for(17, timeout=30)
    order = [m.rcpts[0] for m in sink.messages]
    assert order.index("b1@shared.test") <= before + 2, (before, order)


def test_ipv6_and_ipv4_sources_match_the_destination(denv, ctl):
    t = h.setup_tenant(ctl)
    denv.pool(t, h.unique_name("p46"), ("127.0.0.2", "v4.sendgate.test", 1),
              ("::1", "v6.sendgate.test", 1))
    s6 = denv.sink("::1")
    s4 = denv.sink("127.0.0.28")
    denv.dns.set("six.test", "MX", ["10 mx.six.test"])
    denv.dns.set("mx.six.test", "AAAA", ["::1"])
    denv.mx("four.test", (10, "mx.four.test", "127.0.0.28"))
    d = denv.start()
    submit(d, t, ["x@six.test"])
    submit(d, t, ["y@four.test"])
    m6 = s6.wait_for(1)[0]
    m4 = s4.wait_for(1)[0]
    assert m6.source == "::1" and m6.helo == "v6.sendgate.test"
    assert m4.source == "127.0.0.2" and m4.helo == "v4.sendgate.test"


def test_pool_without_the_destinations_family_defers(denv, ctl):
    t = h.setup_tenant(ctl)
    denv.pool(t, h.unique_name("p6"), ("::1", "v6.sendgate.test", 1))
    sink = denv.sink("127.0.0.29")
    denv.mx("v4only.test", (10, "mx.v4only.test", "127.0.0.29"))
    d = denv.start()
    qid = submit(d, t, ["x@v4only.test"])
    ev = denv.wait_events(qid, "message.deferred")
    assert "family" in ev[0][2]["reply"]
    assert sink.connections == 0


def test_messages_per_minute_per_destination(denv, tenant):
    sink = denv.sink("127.0.0.36")
    denv.mx("rate.test", (10, "mx.rate.test", "127.0.0.36"))
    d = denv.start(delivery__messages_per_minute="2")
    ids = [submit(d, tenant, ["r%d@rate.test" % i]) for i in range(4)]
    sink.wait_for(2)
    time.sleep(3)
    # Two this minute; the others wait in the queue, not bounced or deferred.
    assert sink.count == 2
    assert len(d.queue_ids()) == 2 and set(d.queue_ids()) <= set(ids)
    assert all(denv.events(i, "message.deferred") == [] for i in ids)


def test_dropped_connection_and_data_tempfail_are_retried(denv, tenant):
    sink = denv.sink("127.0.0.39", drop=True)
    denv.mx("flaky.test", (10, "mx.flaky.test", "127.0.0.39"))
    d = denv.start(delivery__retry_first="1s")
    qid = submit(d, tenant, ["x@flaky.test"])
    ev = denv.wait_events(qid, "message.deferred")
    # The sink drops the connection: the client sees a FIN ("closed") or, when
    # the sink still had unread bytes from us, a RST ("reset"). Both say it.
    assert "closed" in ev[0][2]["reply"] or "reset" in ev[0][2]["reply"], ev[0][2]["reply"]
    assert ev[0][2]["mx"] == "mx.flaky.test" and ev[0][2]["mx_address"] == "127.0.0.39"
    sink.drop = False
    sink.data_tempfail = 1
    denv.wait_events(qid, "message.deferred", 2)
    sink.wait_for(1, timeout=15)
    ev = denv.wait_events(qid, "message.delivered")
    assert ev[0][2]["attempt"] >= 3
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")


def test_rejection_after_data_bounces_every_recipient_without_suppression(denv, tenant, pg):
    sink = denv.sink("127.0.0.40", data_permfail=True)
    denv.mx("strict.test", (10, "mx.strict.test", "127.0.0.40"))
    d = denv.start()
    qid = submit(d, tenant, ["p@strict.test", "q@strict.test"])
    ev = denv.wait_events(qid, "message.bounced", 2)
    assert {e[2]["recipient"] for e in ev} == {"p@strict.test", "q@strict.test"}
    assert all(e[2]["reply"].startswith("554 5.7.1") for e in ev)
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")
    # A content refusal says nothing about the addresses: no suppression.
    assert pg.scalar("SELECT count(*) FROM suppressions "
                     "WHERE address IN ('p@strict.test', 'q@strict.test')") == "0"


def test_helo_when_ehlo_is_refused(denv, tenant):
    sink = denv.sink("127.0.0.41", no_ehlo=True)
    denv.mx("old.test", (10, "mx.old.test", "127.0.0.41"))
    d = denv.start()
    submit(d, tenant, ["x@old.test", "y@old.test"])
    m = sink.wait_for(1)[0]
    assert m.helo == "mx.sendgate.test" and not m.tls
    # No ESMTP parameters to a server that did not say it knows them.
    assert m.params == ""
    assert sorted(m.rcpts) == ["x@old.test", "y@old.test"]
    assert [c.split()[0].upper() for c in sink.commands][:2] == ["EHLO", "HELO"]


def test_connections_per_source_address(denv, ctl):
    t = h.setup_tenant(ctl)
    denv.pool(t, h.unique_name("p1"), ("127.0.0.2", "one.sendgate.test", 1))
    # Two destination domains on one sink: only the source limit keeps it at one.
    sink = denv.sink("127.0.0.42", greet_delay=0.3)
    denv.mx("d1.test", (10, "mx.d1.test", "127.0.0.42"))
    denv.mx("d2.test", (10, "mx.d2.test", "127.0.0.42"))
    d = denv.start(delivery__max_connections_per_source="1",
                   delivery__messages_per_connection="1")
    for i in range(3):
        submit(d, t, ["x%d@d1.test" % i])
        submit(d, t, ["y%d@d2.test" % i])
    sink.wait_for(6, timeout=30)
    assert sink.max_active == 1
    assert {m.source for m in sink.messages} == {"127.0.0.2"}


def _rec(t, data):
    import struct
    return struct.pack(">BI", t, len(data)) + data


def test_status_written_by_the_format_is_resumed_and_a_torn_tail_dropped(denv, tenant, pg):
    """A queue file written here from the format in queue/queue.h: one
    recipient already delivered (an intact STATUS segment), then a torn
    segment that would have bounced the other. Delivery skips the first,
    ignores the torn tail and delivers the second."""
    import hashlib
    sink = denv.sink("127.0.0.43")
    denv.mx("torn.test", (10, "mx.torn.test", "127.0.0.43"))
    tid = int(pg.scalar("SELECT id FROM tenants WHERE name = '%s'" % tenant.name))
    qid = "0" * 11 + "TORNTAIL1"
    hdr = ("From: %s\r\nSubject: torn\r\n\r\n" % tenant.addr()).encode()
    img = _rec(1, b"SENDGATE-Q1") + _rec(2, b"body\r\n") + _rec(3, hdr) + _rec(10, qid.encode())
    img += _rec(11, ("%d %s" % (tid, tenant.name)).encode()) + _rec(13, tenant.addr().encode())
    img += _rec(14, b"a@torn.test") + _rec(14, b"b@torn.test")
    img += _rec(15, str(int(time.time())).encode())
    end = hashlib.sha256(img).digest()
    img += _rec(255, end)
    seg = _rec(20, b"0 delivered 1 1700000000 0")
    img += seg + _rec(21, hashlib.sha256(end + seg).digest())
    img += _rec(20, b"1 bounced 1 1700000000 0")[:12]  # torn mid-record
    d = denv.daemon_factory(start=False)  # only to get a spool folder path
    qdir = os.path.join(d.spool_dir, "queue")
    os.makedirs(qdir, exist_ok=True)
    with open(os.path.join(qdir, qid), "wb") as f:
        f.write(img)
    h.run(["chown", "-R", "%s:" % h.DAEMON_USER, d.spool_dir], check=False)
    d = denv.start(spool_dir=d.spool_dir)
    m = sink.wait_for(1)[0]
    assert m.rcpts == ["b@torn.test"]
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")
    assert denv.count_log(r"event=delivery_status_torn id=%s" % qid) == 1


def test_delivered_files_are_reused_then_swept(denv, tenant):
    """A delivered file moves to free/ and the next message is written over
    it (same inode, old bytes gone); what nobody reuses is deleted after
    [spool] reuse_max_age."""
    sink = denv.sink("127.0.0.44")
    denv.mx("reuse.test", (10, "mx.reuse.test", "127.0.0.44"))
    # Long enough that q1 is still in free/ when q3 comes, also under ASan.
    d = denv.start(spool__reuse_max_age="%ds" % int(6 * h.SLOW))
    free = os.path.join(d.spool_dir, "free")
    long_line = "x" * 70 + "\r\n"
    q1 = submit(d, tenant, ["a@reuse.test"], body=long_line * 200, subject="first")
    sink.wait_for(1)
    h.eventually(lambda: os.listdir(free) == [q1], what="delivered file in free/")
    inode = os.stat(os.path.join(free, q1)).st_ino
    time.sleep(0.5)  # the daemon looks at an empty free/ again only after 200 ms
    # The next message reads free/ but gets a new file: a name read there is
    # used only after a sync of queue/ begun later (its own commit's).
    q2 = submit(d, tenant, ["b@reuse.test"], subject="second")
    q3 = submit(d, tenant, ["c@reuse.test"], subject="third")
    sink.wait_for(3)
    h.eventually(lambda: {q2, q3} <= set(os.listdir(free)), what="delivered files in free/")
    assert q1 not in os.listdir(free)
    assert os.stat(os.path.join(free, q3)).st_ino == inode
    assert os.stat(os.path.join(free, q2)).st_ino != inode
    third = [m for m in sink.messages if m.rcpts == ["c@reuse.test"]][0]
    assert b"Subject: third" in third.data and long_line.encode() not in third.data
    assert b"DKIM-Signature:" in third.data
    h.eventually(lambda: os.listdir(free) == [], timeout=20, what="free/ swept")


def test_reuse_off_deletes_delivered_files(denv, tenant):
    sink = denv.sink("127.0.0.45")
    denv.mx("noreuse.test", (10, "mx.noreuse.test", "127.0.0.45"))
    d = denv.start(spool__reuse_max_age="0")
    submit(d, tenant, ["a@noreuse.test"])
    sink.wait_for(1)
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")
    assert os.listdir(os.path.join(d.spool_dir, "free")) == []


def test_reuse_off_never_takes_from_free(denv, tenant):
    """With reuse off the daemon does not even look in free/: a file there,
    which it would take for the second message were reuse on, stays."""
    sink = denv.sink("127.0.0.46")
    denv.mx("noreuse2.test", (10, "mx.noreuse2.test", "127.0.0.46"))
    d = denv.start(spool__reuse_max_age="0")
    planted = os.path.join(d.spool_dir, "free", "1J0S5KJANQLURGB6LRI1")
    with open(planted, "wb") as f:
        f.write(b"x" * 100)
    h.run(["chown", "%s:" % h.DAEMON_USER, planted], check=False)
    ino = os.stat(planted).st_ino
    submit(d, tenant, ["a@noreuse2.test"], subject="first")
    submit(d, tenant, ["b@noreuse2.test"], subject="second")
    sink.wait_for(2)
    h.eventually(lambda: d.queue_ids() == [], what="empty queue")
    assert os.listdir(os.path.join(d.spool_dir, "free")) == [os.path.basename(planted)]
    assert os.stat(planted).st_ino == ino


def _threads_sched(pid):
    """{tid: (policy, nice)} of every thread of pid, from /proc."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        # after "pid (comm) ": state is field 3, nice 19, policy 41
        out[int(tid)] = (int(fields[38]), int(fields[16]))
    return out


@pytest.mark.parametrize("priority,loop,writer", [
    ("background", (5, 0), (0, 0)),  # SCHED_IDLE
    ("low", (0, 10), (0, 0)),
    ("normal", (0, 0), (0, 0)),
])
def test_cpu_priority_of_the_delivery_process(denv, priority, loop, writer):
    """[delivery] cpu_priority applies to the delivery loop; the status
    writer thread, which renames in the spool's directories, keeps the
    normal priority so that it never holds a directory lock the daemon's
    commits wait for while it is starved."""
    denv.start(delivery__cpu_priority=priority)
    denv.wait_log(r"event=delivery_priority cpu_priority=%s" % priority)
    pid = denv.delivery_pid()
    th = _threads_sched(pid)
    assert th[pid] == loop, th
    others = [v for t, v in th.items() if t != pid]
    assert others and all(v == writer for v in others), th


def test_free_files_are_swept_while_delivery_is_busy(denv, tenant):
    """The sweep of free/ runs on schedule even when the status writer
    never sits idle (here: a recipient deferred again every second)."""
    good = denv.sink("127.0.0.46")
    busy = denv.sink("127.0.0.47")
    busy.rcpt_rule("again@busy.test", "tempfail")
    denv.mx("swept.test", (10, "mx.swept.test", "127.0.0.46"))
    denv.mx("busy.test", (10, "mx.busy.test", "127.0.0.47"))
    d = denv.start(spool__reuse_max_age="3s", delivery__retry_first="1s",
                   delivery__retry_factor="1")
    free = os.path.join(d.spool_dir, "free")
    deferred = submit(d, tenant, ["again@busy.test"])
    denv.wait_events(deferred, "message.deferred", 2, timeout=20)
    q = submit(d, tenant, ["x@swept.test"])
    good.wait_for(1)
    h.eventually(lambda: q in os.listdir(free), what="delivered file in free/")
    h.eventually(lambda: q not in os.listdir(free), timeout=20, what="free/ swept")
    # ... while the other message kept being retried all along.
    n = len(denv.events(deferred, "message.deferred"))
    denv.wait_events(deferred, "message.deferred", n + 1, timeout=20)
    assert d.queue_ids() == [deferred]


def test_delivery_process_caches_only_what_it_reads(denv, tenant, pg):
    """The delivery process reads pools, domains and the tenants' limits
    (for suspensions); credentials, suppressions and DKIM keys stay with the
    submission side (on a large
    platform they are most of the memory and of the reload work). A
    suppression change reaches the submission side and not delivery."""
    d = denv.start()

    def loaded(prog):
        return set(re.findall(r"prog=%s level=\w+ event=cache_reload table=(\w+)" % prog,
                              d.log_text()))

    h.eventually(lambda: "domains" in loaded("sendgate-delivery"), timeout=10 * h.SLOW,
                 what="the delivery process's caches")
    assert loaded("sendgate-delivery") == {"pools", "tenant_pools", "domains", "tenant_limits"}
    assert {"credentials", "suppressions", "dkim_keys"} <= loaded("sendgate")
    off = len(d.log_text())
    pg.sql("INSERT INTO suppressions (tenant_id, address, reason) SELECT id, "
           "'gone@example.net', 'test' FROM tenants WHERE name = '%s'" % tenant.name)
    h.eventually(lambda: _refused(d, tenant), what="RCPT refused for the new suppression")
    assert "prog=sendgate-delivery level=info event=cache_reload" not in d.log_text()[off:]


def _refused(d, tenant):
    c = h.SMTPClient.connect(d.submission_port)
    try:
        c.login(tenant)
        assert c.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
        return c.cmd("RCPT TO:<gone@example.net>").code == 550
    finally:
        c.close()


def test_delivery_waits_until_it_knows_the_pools(denv, pg):
    """Mail must not leave before the pools are known (it would leave from
    the wrong address): a failed pools load holds delivery back even though
    the domains loaded; the load is tried again by itself, and once it
    succeeds delivery starts."""
    pg.sql("ALTER TABLE pool_addresses RENAME COLUMN helo TO helo_hidden")
    try:
        d = denv.daemon_factory(delivery__enabled="yes", delivery__port=denv.port,
                                dns__servers="127.0.0.1:%d" % denv.dns.port)
        h.eventually(lambda: re.search(r"prog=sendgate-delivery level=info event=cache_reload "
                                       r"table=domains", d.log_text()),
                     timeout=10 * h.SLOW, what="the delivery process's domains load")
        time.sleep(0.5 * h.SLOW)
        assert "event=delivery_ready" not in d.log_text(), "delivery started without its pools"
    finally:
        pg.sql("ALTER TABLE pool_addresses RENAME COLUMN helo_hidden TO helo")
    d.wait_log(r"event=delivery_ready", timeout=15)
