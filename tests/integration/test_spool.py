"""What lands on disk: the queue file (read with the independent reader in
spoolfile.py), the headers the server adds, the event row and the log line;
spool recovery at start."""

import email.utils
import os
import re
import time

import pytest

import sgharness as h
import spoolfile


def submit(c, tenant, msg, rcpts=("x@example.net",), sender=None):
    r = c.send_message(sender or tenant.addr(), list(rcpts), h.dot_stuff(msg))
    qid = h.queued_id(r)
    assert qid, r
    return qid


def test_spooled_bytes_and_envelope(daemon, tenant):
    c = h.SMTPClient.connect(daemon.submission_port)
    c.login(tenant)
    body = b"Line one\r\n.dotted line\r\n\r\n\ttabbed \xc3\xa9\r\n" + b"z" * 900 + b"\r\n" * 3
    msg = h.make_message(tenant.addr("app"), body=body, subject="spool check")
    t0 = int(time.time())
    qid = submit(c, tenant, msg, rcpts=["a@example.net", "b@example.org", "c@example.net"],
                 sender=tenant.addr("bounce"))
    assert re.fullmatch(r"[0-9A-Z]{20}", qid), "queue id %r is not 20 chars of [0-9A-Z]" % qid
    sm = h.spooled(daemon, qid)
    assert sm.id == qid
    assert sm.tenant == tenant.name
    assert sm.auth_user == tenant.username
    assert sm.sender == tenant.addr("bounce")
    assert sm.rcpts == ["a@example.net", "b@example.org", "c@example.net"]
    assert sm.received is not None and t0 - 5 <= sm.received <= time.time() + 5, sm.received
    assert sm.client is not None and "127.0.0.1" in sm.client, sm.client
    added = h.added_fields(msg, sm.message)
    names = [n for n, _ in added]
    assert names.count("received") == 1, added
    assert set(names) <= {"received", "dkim-signature"}, \
        "headers added although Message-ID and Date were present: %r" % added
    top = [f for f in h.split_message(sm.message)[0] if not f.lower().startswith(b"dkim-signature:")]
    assert top[0].lower().startswith(b"received:"), \
        "Received must be prepended (first field, below any DKIM-Signature)"
    # The pg-side tenant id matches the envelope.
    tid = daemon.pg.scalar("SELECT id FROM tenants WHERE name = '%s'" % tenant.name)
    assert sm.tenant_id == int(tid)
    c.quit()


def test_received_header_names_tls_and_tenant_not_secret(daemon, tenant):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(tenant)
    version = c.sock.version()
    cipher = c.sock.cipher()[0]
    msg = h.make_message(tenant.addr())
    qid = submit(c, tenant, msg)
    sm = h.spooled(daemon, qid)
    rec = [v for n, v in h.added_fields(msg, sm.message) if n == "received"]
    assert len(rec) == 1
    rec = rec[0]
    assert version in rec, "Received lacks the TLS version %s: %s" % (version, rec)
    assert cipher in rec, "Received lacks the cipher %s: %s" % (cipher, rec)
    assert tenant.name in rec, "Received lacks the tenant %s: %s" % (tenant.name, rec)
    assert "mx.sendgate.test" in rec, "Received lacks the server hostname: %s" % rec
    with open(daemon.queue_file(qid), "rb") as f:
        raw = f.read()
    assert tenant.secret.encode() not in raw, "the secret is in the queue file"
    assert tenant.secret not in daemon.log_text(), "the secret is in the log"
    c.quit()


def test_message_id_and_date_added_when_missing(daemon, tenant):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(tenant)
    msg = h.make_message(tenant.addr(), message_id=False, date=False)
    qid = submit(c, tenant, msg)
    added = dict((n, v) for n, v in h.added_fields(msg, h.spooled(daemon, qid).message))
    assert "message-id" in added, "no Message-ID added: %r" % added
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", added["message-id"]), added["message-id"]
    assert "date" in added, "no Date added: %r" % added
    dt = email.utils.parsedate_to_datetime(added["date"])
    assert abs(dt.timestamp() - time.time()) < 120, added["date"]
    # Two messages never share a Message-ID.
    qid2 = submit(c, tenant, msg)
    added2 = dict(h.added_fields(msg, h.spooled(daemon, qid2).message))
    assert added2["message-id"] != added["message-id"]
    c.quit()


def test_only_missing_one_added(daemon, tenant):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(tenant)
    msg = h.make_message(tenant.addr(), message_id=True, date=False)
    names = [n for n, _ in h.added_fields(msg, h.spooled(daemon, submit(c, tenant, msg)).message)]
    assert "date" in names and "message-id" not in names, names
    msg = h.make_message(tenant.addr(), message_id=False, date=True)
    names = [n for n, _ in h.added_fields(msg, h.spooled(daemon, submit(c, tenant, msg)).message)]
    assert "message-id" in names and "date" not in names, names
    c.quit()


def test_large_message_streams_in_several_chunks(daemon, tenant):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(tenant)
    body = b"".join(b"%06d " % i + b"q" * 70 + b"\r\n" for i in range(30000))  # ~2.3 MB
    msg = h.make_message(tenant.addr(), body=body)
    sm = h.spooled(daemon, submit(c, tenant, msg))
    assert sm.body == body
    h.added_fields(msg, sm.message)
    c.quit()


def test_accepted_event_row(daemon, tenant, pg):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(tenant)
    qid = submit(c, tenant, h.make_message(tenant.addr()), rcpts=["e1@example.net", "e2@example.net"])
    c.quit()
    tid = pg.scalar("SELECT id FROM tenants WHERE name = '%s'" % tenant.name)

    def row():
        return pg.sql("SELECT type, tenant_id, message_id, data::text FROM events "
                      "WHERE type = 'message.accepted' AND (message_id = '%s' OR data::text LIKE '%%%s%%')"
                      % (qid, qid))

    rows = h.eventually(row, timeout=5, interval=0.2, what="message.accepted event for %s" % qid)
    assert len(rows) == 1, rows
    typ, t, mid, data = rows[0]
    assert t == tid, "event tenant_id %s, expected %s" % (t, tid)


def test_one_log_line_per_message(daemon, tenant):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(tenant)
    qid = submit(c, tenant, h.make_message(tenant.addr()), rcpts=["l1@example.net", "l2@example.net"])
    c.quit()
    daemon.wait_log(qid)
    # The per-message summary: queue id, tenant, sender, recipient count,
    # size, result (other parts may log the id too, e.g. the queue).
    lines = [ln for ln in daemon.log_text().splitlines() if qid in ln and tenant.addr() in ln]
    assert len(lines) == 1, "expected one summary line for %s, got:\n%s" % (qid, "\n".join(lines))
    ln = lines[0]
    assert "tenant=" + tenant.name in ln, ln
    assert re.search(r"\brcpts?=2\b|\brecipients=2\b", ln), "recipient count missing: " + ln
    assert re.search(r"\bsize=\d+", ln), "size missing: " + ln
    assert "result=" in ln, ln


def test_queue_list(daemon, tenant, build, pg):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(tenant)
    msg = h.make_message(tenant.addr())
    qid = submit(c, tenant, msg, rcpts=["q1@example.net", "q2@example.net"])
    c.quit()
    ctl = h.Ctl(build, pg.url, config=daemon.config_path)
    listing = ctl.queue_list()
    assert isinstance(listing, list), listing
    ent = [e for e in listing if e.get("id") == qid]
    assert len(ent) == 1, "queue list lacks %s: %r" % (qid, listing)
    e = ent[0]
    assert e["tenant"] == tenant.name, e
    assert e["sender"] == tenant.addr()
    rc = e["recipients"]
    assert rc == ["q1@example.net", "q2@example.net"] or rc == 2, rc
    assert int(e["size"]) >= len(msg), e
    assert float(e["age"]) >= 0
    assert len(listing) == len(daemon.queue_ids())


# ---- recovery at start -----------------------------------------------------

def test_start_removes_temp_files_and_quarantines_damaged(daemon_factory, tenant):
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(tenant)
    good = submit(c, tenant, h.make_message(tenant.addr(), subject="good"))
    bad = submit(c, tenant, h.make_message(tenant.addr(), subject="to be damaged"))
    c.quit()
    assert d.stop() == 0
    path = d.queue_file(bad)
    with open(path, "r+b") as f:
        size = os.path.getsize(path)
        f.truncate(size - 7)
    with pytest.raises(spoolfile.SpoolFormatError):
        spoolfile.read(path)
    os.makedirs(os.path.join(d.spool_dir, "tmp"), exist_ok=True)
    stray = os.path.join(d.spool_dir, "tmp", "leftover-from-crash")
    with open(stray, "wb") as f:
        f.write(b"\x01\x00\x00\x00\x0bSENDGATE-Q1partial")
    # A delivered file kept for reuse (free/ holds delivered mail, which
    # must not outlive a restart: nothing knows how old it is).
    os.makedirs(os.path.join(d.spool_dir, "free"), exist_ok=True)
    kept = os.path.join(d.spool_dir, "free", "1J0S5KJANQLURGB6LRI1")
    with open(kept, "wb") as f:
        f.write(b"\x01\x00\x00\x00\x0bSENDGATE-Q1delivered")
    d.start()
    assert not os.path.exists(stray), "temp file survived start"
    assert os.listdir(os.path.join(d.spool_dir, "tmp")) == []
    assert os.listdir(os.path.join(d.spool_dir, "free")) == [], "free/ not emptied at start"
    assert d.queue_ids() == [good], d.queue_ids()
    qdir = os.path.join(d.spool_dir, "quarantine")
    assert os.path.isdir(qdir) and any(bad in n for n in os.listdir(qdir)), \
        "damaged file not in quarantine/: %r" % (os.listdir(qdir) if os.path.isdir(qdir) else None)
    assert bad in d.log_text(since_start=True), "no log line names the quarantined file"
    h.spooled(d, good)


def test_flipped_byte_quarantined(daemon_factory, tenant):
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(tenant)
    qid = submit(c, tenant, h.make_message(tenant.addr(), body=b"checksummed\r\n"))
    c.quit()
    assert d.stop() == 0
    path = d.queue_file(qid)
    data = bytearray(open(path, "rb").read())
    i = data.find(b"checksummed")
    data[i] ^= 0x20
    open(path, "wb").write(bytes(data))
    d.start()
    assert qid not in d.queue_ids()
    assert any(qid in n for n in os.listdir(os.path.join(d.spool_dir, "quarantine")))


def test_spool_survives_restart(daemon_factory, tenant):
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(tenant)
    ids = [submit(c, tenant, h.make_message(tenant.addr(), subject="keep %d" % i)) for i in range(5)]
    c.quit()
    before = {q: open(d.queue_file(q), "rb").read() for q in ids}
    d.restart()
    for q in ids:
        assert open(d.queue_file(q), "rb").read() == before[q]


@pytest.mark.parametrize("threads", [2, 1])
def test_lone_message_synced_by_its_signer_only_with_a_thread_to_spare(daemon_factory, tenant,
                                                                       threads):
    """A signed message with nothing else on its way to the spool is synced
    by the thread that signed it, not handed to a commit thread; but only
    while another signer thread is free, since a thread waiting for the
    disk cannot sign the next message: with one signer thread every message
    goes to the commit threads. spool_close logs how many were synced by
    their signer, and how many were handed over by another thread than the
    loop: every one, whether or not its signer could sync it (the early
    wake of the idle commit thread under light load depends on it)."""
    d = daemon_factory(dkim__sign_threads=str(threads))
    c = h.SMTPClient.connect(d.submission_port)
    c.login(tenant)
    ids = [submit(c, tenant, h.make_message(tenant.addr(), subject="alone %d" % i))
           for i in range(3)]
    c.quit()
    assert d.stop() == 0
    m = re.search(r"event=spool_close .*\bcommits=(\d+) batches=\d+ synced_by_caller=(\d+) "
                  r"from_threads=(\d+)", d.log_text(since_start=True))
    assert m, "no spool_close line in the log"
    assert int(m.group(1)) == len(ids)
    assert int(m.group(2)) == (len(ids) if threads > 1 else 0), m.group(0)
    assert int(m.group(3)) == len(ids), m.group(0)
    for q in ids:
        h.spooled(d, q)


def test_one_log_line_per_session(daemon, tenant):
    src = "127.0.0.%d" % (100 + os.getpid() % 100)
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True, source=src)
    c.login(tenant)
    for i in range(2):
        submit(c, tenant, h.make_message(tenant.addr()))
    c.quit()

    def session_lines():
        return [ln for ln in daemon.log_text().splitlines()
                if "client=%s " % src in ln + " " and "session" in ln]

    lines = h.eventually(session_lines, timeout=3, what="a session log line")
    time.sleep(0.3)
    lines = session_lines()
    assert len(lines) == 1, "expected one session line for %s:\n%s" % (src, "\n".join(lines))
    assert "tenant=" + tenant.name in lines[0], lines[0]
