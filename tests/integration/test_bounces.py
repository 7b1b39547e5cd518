"""Reports that come back after delivery: a remote server that took a message
with 250 and bounces it later (RFC 3464), or a mailbox provider's complaint
(RFC 5965), mailed to the VERP envelope sender and read by the [bounce]
listener. Real daemon, real delivery to a sink, reports sent with smtplib."""

import contextlib
import hashlib
import hmac
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl

import pytest

import sgharness as h
from delivery_fixtures import denv, submit  # noqa: F401 (fixture)
from delivery_fixtures import verp as verp_of

BOUNCES = "bounces.sendgate.example"

FEEDBACK = "fbl@bounces.sendgate.example"


def start(denv):
    port = h.free_port()
    d = denv.start(bounce__listen="127.0.0.1:%d" % port, bounce__feedback_address=FEEDBACK)
    denv.wait_log(r"event=listening address=127\.0\.0\.1:%d mode=bounce" % port)
    return d, port


def delivered(denv, sink, tenant, d, rcpts):
    """Submits to rcpts, waits until the sink has it and the delivered events
    are written; returns (queue id, the VERP envelope sender it came with)."""
    n = len(sink.messages)
    qid = submit(d, tenant, rcpts)
    sink.wait_for(n + 1)
    denv.wait_events(qid, "message.delivered", len(rcpts))
    m = [m for m in sink.messages if m.rcpts == rcpts][-1]
    return qid, m.mail_from


def dsn(verp, blocks, reporting="mx.remote.test", boundary="b0undary=42", extra_headers=""):
    """A delivery status notification as a receiving MTA would send it to verp.
    blocks: (final recipient, action, status, diagnostic or None)."""
    per_rcpt = []
    for rcpt, action, status, diag in blocks:
        lines = ["Final-Recipient: rfc822; %s" % rcpt, "Action: %s" % action,
                 "Status: %s" % status, "Remote-MTA: dns; store.remote.test"]
        if diag:
            lines.append("Diagnostic-Code: smtp; %s" % diag)
        per_rcpt.append("\r\n".join(lines) + "\r\n")
    return ("From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
            "To: %s\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            "MIME-Version: 1.0\r\n"
            "%s"
            "Content-Type: multipart/report; report-type=delivery-status;\r\n"
            "\tboundary=\"%s\"\r\n"
            "\r\n"
            "This is a MIME-encapsulated message.\r\n"
            "\r\n"
            "--%s\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n"
            "Your message could not be delivered to one or more recipients.\r\n"
            "\r\n"
            "--%s\r\n"
            "Content-Type: message/delivery-status\r\n"
            "\r\n"
            "Reporting-MTA: dns; %s\r\n"
            "Arrival-Date: Mon, 23 Nov 2026 04:00:00 +0000\r\n"
            "\r\n"
            "%s"
            "\r\n"
            "--%s\r\n"
            "Content-Type: text/rfc822-headers\r\n"
            "\r\n"
            "Return-Path: <%s>\r\n"
            "Subject: delivery test\r\n"
            "\r\n"
            "--%s--\r\n"
            % (reporting, verp, extra_headers, boundary, boundary, boundary, reporting,
               "\r\n".join(per_rcpt), boundary, verp, boundary)).encode()


def arf(return_path, rcpt, feedback_type="abuse"):
    """A feedback-loop complaint (ARF) about the message sent to rcpt."""
    b = "arf-part-7"
    return ("From: Feedback Loop <fbl@provider.test>\r\n"
            "To: %s\r\n"
            "Subject: complaint about a message\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=feedback-report; boundary=%s\r\n"
            "\r\n"
            "--%s\r\n"
            "Content-Type: text/plain\r\n"
            "\r\n"
            "A user of ours marked this message as spam.\r\n"
            "--%s\r\n"
            "Content-Type: message/feedback-report\r\n"
            "\r\n"
            "Feedback-Type: %s\r\n"
            "User-Agent: ProviderFBL/2.1\r\n"
            "Version: 1\r\n"
            "Original-Rcpt-To: <%s>\r\n"
            "Reporting-MTA: dns; fbl.provider.test\r\n"
            "\r\n"
            "--%s\r\n"
            "Content-Type: message/rfc822\r\n"
            "\r\n"
            "Return-Path: <%s>\r\n"
            "From: sender@shop.example\r\n"
            "To: %s\r\n"
            "Subject: delivery test\r\n"
            "\r\n"
            "The original text.\r\n"
            "--%s--\r\n"
            % (FEEDBACK, b, b, b, feedback_type, rcpt, b, return_path, rcpt, b)).encode()


def send_report(port, rcpt, msg, sender="", tls=False):
    """Sends msg to rcpt on the bounce listener (over STARTTLS with tls);
    returns the reply to DATA (or to RCPT TO when that is refused)."""
    c = smtplib.SMTP("127.0.0.1", port, timeout=20)
    try:
        c.ehlo("mx.remote.test")
        if tls:
            code, text = c.starttls(context=h.client_tls_context())
            assert code == 220 and text.startswith(b"2.0.0"), (code, text)
            c.ehlo("mx.remote.test")
        code, text = c.mail(sender)
        assert code == 250, (code, text)
        code, text = c.rcpt(rcpt)
        if code != 250:
            return code, text
        return c.data(msg)
    finally:
        c.quit()


def events_of(pg, qid, type):
    return int(pg.scalar("SELECT count(*) FROM events WHERE type = '%s' AND message_id = '%s'"
                         % (type, qid)))


def suppression(pg, tenant, addr):
    rows = pg.sql("SELECT reason FROM suppressions s JOIN tenants t ON t.id = s.tenant_id "
                  "WHERE t.name = '%s' AND address = '%s'" % (tenant.name, addr))
    return rows[0][0] if rows else None


def rcpt_refused(d, tenant, addr):
    c = h.SMTPClient.connect(d.submission_port)
    try:
        c.login(tenant)
        c.cmd("MAIL FROM:<%s>" % tenant.addr())
        r = c.cmd("RCPT TO:<%s>" % addr)
        return r if r.code == 550 else None
    finally:
        c.close()


def test_bounce_after_delivery_is_recorded_and_suppresses(denv, ctl, pg):
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.40")
    denv.mx("later.test", (10, "mx.later.test", "127.0.0.40"))
    d, port = start(denv)
    qid, verp = delivered(denv, sink, t, d, ["gone@later.test"])
    assert verp == verp_of(qid, 0, BOUNCES)

    code, text = send_report(port, verp, dsn(verp, [
        ("gone@later.test", "failed", "5.1.1",
         "550 5.1.1 <gone@later.test>: mailbox does not exist")]))
    assert code == 250 and b"1 matched" in text, (code, text)

    ev = denv.wait_events(qid, "message.bounced")
    e = ev[0][2]
    assert e["recipient"] == "gone@later.test"
    assert e["async"] is True and e["enhanced_code"] == "5.1.1"
    assert "mailbox does not exist" in e["reply"]
    assert e["reporting_mta"] == "mx.remote.test" and e["remote_mta"] == "store.remote.test"
    # The delivery stays on record beside it.
    assert len(denv.events(qid, "message.delivered")) == 1
    reason = suppression(pg, t, "gone@later.test")
    assert reason and "mailbox does not exist" in reason, reason
    # The submission side hears of it: the address is refused from now on.
    r = h.eventually(lambda: rcpt_refused(d, t, "gone@later.test"), timeout=10,
                     what="RCPT of the bounced address refused")
    assert r.enhanced == "5.1.1"


def test_several_recipients_by_address_and_soft_or_delayed_ones(denv, ctl, pg):
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.41")
    denv.mx("multi.test", (10, "mx.multi.test", "127.0.0.41"))
    d, port = start(denv)
    rcpts = ["bob@multi.test", "carol@multi.test", "dave@multi.test"]
    qid, verp = delivered(denv, sink, t, d, rcpts)
    # One transaction, several recipients: the VERP address has no index.
    assert verp == verp_of(qid, 0, BOUNCES, several=True)

    code, text = send_report(port, verp, dsn(verp, [
        ("Bob@multi.test", "failed", "5.1.1", "550 5.1.1 no such user"),
        ("carol@multi.test", "delayed", "4.2.2", "452 4.2.2 mailbox full, still trying"),
        ("dave@multi.test", "failed", "5.2.2", "552 5.2.2 mailbox full")]))
    assert code == 250, (code, text)
    ev = denv.wait_events(qid, "message.bounced", 2)
    assert sorted(e[2]["recipient"] for e in ev) == ["bob@multi.test", "dave@multi.test"]
    # Only "the address is bad" (5.1.x) suppresses; a full mailbox does not,
    # and a delay notice records nothing.
    assert suppression(pg, t, "bob@multi.test") is not None
    assert suppression(pg, t, "dave@multi.test") is None
    assert suppression(pg, t, "carol@multi.test") is None


def test_complaint_to_the_feedback_address_suppresses(denv, ctl, pg):
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.42")
    denv.mx("fbl.test", (10, "mx.fbl.test", "127.0.0.42"))
    d, port = start(denv)
    qid, verp = delivered(denv, sink, t, d, ["annoyed@fbl.test"])

    # Sent to the address registered with the provider's feedback loop: the
    # returned message's Return-Path says which message it was.
    code, text = send_report(port, FEEDBACK, arf(verp, "annoyed@fbl.test"))
    assert code == 250 and b"1 matched" in text, (code, text)
    ev = denv.wait_events(qid, "message.complained")
    e = ev[0][2]
    assert e["recipient"] == "annoyed@fbl.test" and e["feedback_type"] == "abuse"
    assert e["user_agent"] == "ProviderFBL/2.1"
    reason = suppression(pg, t, "annoyed@fbl.test")
    assert reason and reason.startswith("complaint (abuse)"), reason

    # "not spam" reports record nothing.
    qid2, verp2 = delivered(denv, sink, t, d, ["happy@fbl.test"])
    code, _ = send_report(port, FEEDBACK, arf(verp2, "happy@fbl.test", "not-spam"))
    assert code == 250
    denv.wait_log(r"event=bounce_report client=\S+ kind=not_spam")
    assert denv.events(qid2, "message.complained") == []
    assert suppression(pg, t, "happy@fbl.test") is None


def test_same_report_twice_is_recorded_once(denv, ctl, pg):
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.43")
    denv.mx("twice.test", (10, "mx.twice.test", "127.0.0.43"))
    d, port = start(denv)
    qid, verp = delivered(denv, sink, t, d, ["x@twice.test"])
    report = dsn(verp, [("x@twice.test", "failed", "5.1.1", "550 5.1.1 unknown")])
    assert send_report(port, verp, report)[0] == 250
    code, text = send_report(port, verp, report)
    assert code == 250 and b"1 matched" in text, (code, text)
    denv.wait_log(r"event=bounce_report_recorded client=\S+ kind=bounce id=%s .*new=0" % qid)
    assert len(denv.events(qid, "message.bounced")) == 1
    assert pg.scalar("SELECT count(*) FROM suppressions WHERE address = 'x@twice.test'") == "1"


def test_reports_that_match_nothing_are_taken_and_logged(denv, ctl, pg):
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.44")
    denv.mx("none.test", (10, "mx.none.test", "127.0.0.44"))
    d, port = start(denv)
    qid, verp = delivered(denv, sink, t, d, ["y@none.test"])

    # A well-formed, correctly tagged address for a message that does not
    # exist (mangled, or its events purged): acknowledged so that nobody
    # retries it, nothing recorded.
    fake_id = "".join(random.choice("0123456789ABCDEFGHIJKLMNOPQRSTUV") for _ in range(20))
    fake = verp_of(fake_id, 0, BOUNCES)
    code, text = send_report(port, fake, dsn(fake, [("y@none.test", "failed", "5.1.1", None)]))
    assert code == 250 and b"0 matched" in text, (code, text)
    denv.wait_log(r"event=bounce_report_unmatched client=\S+ kind=bounce id=%s" % fake_id)
    # The right message, a recipient index it never had (tag right).
    other = verp_of(qid, 7, BOUNCES)
    code, text = send_report(port, other, dsn(other, [("y@none.test", "failed", "5.1.1", None)]))
    assert code == 250 and b"0 matched" in text, (code, text)
    # A bounce in prose (no multipart/report): taken, logged, nothing else.
    code, _ = send_report(port, verp, b"Subject: your mail\r\n\r\nIt did not arrive.\r\n")
    assert code == 250
    denv.wait_log(r"event=bounce_report client=\S+ kind=unparsed")
    assert denv.events(qid, "message.bounced") == []
    assert suppression(pg, t, "y@none.test") is None


def test_listener_refuses_other_addresses_and_commands(denv):
    d, port = start(denv)
    c = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        code, text = c.ehlo("mx.remote.test")
        assert code == 250 and b"SIZE" in text
        # AUTH is not offered: this listener takes no submissions.
        assert not c.has_extn("auth")
        code, text = c.docmd("RCPT TO:<x@bounces.sendgate.example>")
        assert code == 503, (code, text)
        assert c.mail("")[0] == 250
        code, text = c.rcpt("someone@bounces.sendgate.example")
        assert code == 550 and b"5.1.1" in text and b"someone@bounces.sendgate.example" in text
        code, text = c.rcpt("bounce+notanid@bounces.sendgate.example")
        assert code == 550, (code, text)
        # postmaster must always be accepted (RFC 5321 4.5.1).
        assert c.rcpt("postmaster")[0] == 250
        code, text = c.docmd("AUTH PLAIN AGFAYg==")
        assert code == 502 and b"5.5.1" in text, (code, text)
        code, text = c.docmd("MAIL FROM:<> SIZE=999999999999")
        assert code == 503  # a transaction is open
        c.rset()
        code, text = c.docmd("MAIL FROM:<> SIZE=999999999999")
        assert code == 552 and b"5.3.4" in text, (code, text)
    finally:
        c.close()


def test_report_kept_in_part_and_size_limit(denv, ctl, pg):
    """A report that returns a large original is read from its first part;
    one over [bounce] max_message_size is refused with the limit named."""
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.45")
    denv.mx("big.test", (10, "mx.big.test", "127.0.0.45"))
    port = h.free_port()
    d = denv.start(bounce__listen="127.0.0.1:%d" % port, bounce__max_message_size="2M")
    denv.wait_log(r"mode=bounce")
    qid, verp = delivered(denv, sink, t, d, ["big@big.test"])
    report = dsn(verp, [("big@big.test", "failed", "5.1.1", "550 5.1.1 unknown")])
    # The returned message's body (after its headers), ~1.5 MB of long lines.
    filler = (b"x" * 1500 + b"\r\n") * 1000
    big = report.replace(b"\r\n--b0undary=42--", b"\r\n" + filler + b"--b0undary=42--")
    code, text = send_report(port, verp, big)
    assert code == 250 and b"1 matched" in text, (code, text)
    denv.wait_events(qid, "message.bounced")

    too_big = report.replace(b"\r\n--b0undary=42--", b"\r\n" + filler * 2 + b"--b0undary=42--")
    code, text = send_report(port, verp, too_big)
    assert code == 552 and b"5.3.4" in text and b"2097152" in text, (code, text)


def test_database_outage_gets_451_and_the_retry_is_recorded(build, daemon_factory):
    """A report the database cannot take is refused with 451, so that the
    reporting server keeps it and tries again; nothing is half-recorded."""
    pg = h.Postgres()
    try:
        ctl = h.Ctl(build, pg.url)
        ctl.migrate()
        t = h.setup_tenant(ctl)
        port = h.free_port()
        daemon_factory(pg=pg, bounce__listen="127.0.0.1:%d" % port)
        # A delivery on record as the delivery process wrote it before VERP
        # tags (no envelope_sender): an untagged address reaches it by
        # the recipient it names.
        qid = "1J0T6L0U3H9BDOQ4VFRV"
        pg.sql("INSERT INTO events (type, tenant_id, message_id, data) SELECT "
               "'message.delivered', id, '%s', '{\"recipient\": \"z@out.test\", \"index\": 0}' "
               "FROM tenants WHERE name = '%s'" % (qid, t.name))
        verp = "bounce+%s.0@bounces.sendgate.example" % qid
        report = dsn(verp, [("z@out.test", "failed", "5.1.1", "550 5.1.1 unknown user")])

        pg.halt()
        try:
            code, text = send_report(port, verp, report)
            assert code == 451 and b"4.3.0" in text, (code, text)
        finally:
            pg.start()
        assert events_of(pg, qid, "message.bounced") == 0

        def retried():
            code, text = send_report(port, verp, report)
            return (code, text) if code == 250 else None
        code, text = h.eventually(retried, timeout=30, interval=0.5,
                                  what="the report taken once the database is back")
        assert b"1 matched" in text, text
        assert pg.scalar("SELECT count(*) FROM events WHERE type = 'message.bounced' "
                         "AND message_id = '%s'" % qid) == "1"
        assert pg.scalar("SELECT count(*) FROM suppressions WHERE address = 'z@out.test'") == "1"
    finally:
        pg.stop()


def test_a_recipient_cannot_report_on_another(denv, ctl, pg):
    """A recipient sees its own VERP address (tag included) and may see the
    others' addresses in To/Cc: nothing it sends suppresses anyone else."""
    t = h.setup_tenant(ctl)
    sa = denv.sink("127.0.0.46")
    sb = denv.sink("127.0.0.47")
    denv.mx("a.test", (10, "mx.a.test", "127.0.0.46"))
    denv.mx("b.test", (10, "mx.b.test", "127.0.0.47"))
    d, port = start(denv)
    # Two destinations: two transactions, each with its recipient's index.
    qid = submit(d, t, ["mallory@a.test", "victim@b.test"])
    sa.wait_for(1)
    sb.wait_for(1)
    denv.wait_events(qid, "message.delivered", 2)
    own = sa.messages[0].mail_from
    assert own == verp_of(qid, 0, BOUNCES)

    def bounce_of(rcpt):
        return dsn(own, [(rcpt, "failed", "5.1.1", "550 5.1.1 no such user")])

    # Its own address, naming the victim: the index says whose delivery it
    # is, so only mallory's own delivery can be reported on.
    code, text = send_report(port, own, bounce_of("victim@b.test"))
    assert code == 250, (code, text)
    # The victim's index with mallory's tag, or with none (the form from
    # before tags): refused, or matching no tagged delivery.
    forged = own.replace(".0.", ".1.")
    code, text = send_report(port, forged, bounce_of("victim@b.test"))
    assert code == 550 and b"5.1.1" in text and b"tag" in text, (code, text)
    legacy = "bounce+%s.1@%s" % (qid, BOUNCES)
    code, text = send_report(port, legacy, bounce_of("victim@b.test"))
    assert code == 250 and b"0 matched" in text, (code, text)
    legacy = "bounce+%s@%s" % (qid, BOUNCES)
    code, text = send_report(port, legacy, bounce_of("victim@b.test"))
    assert code == 250 and b"0 matched" in text, (code, text)
    # A sender for several recipients that mallory's transaction did not have.
    code, text = send_report(port, own.replace(".0.", ".m0."), bounce_of("victim@b.test"))
    assert code == 550 and b"tag" in text, (code, text)
    # A complaint to the feedback address with a forged Return-Path.
    code, text = send_report(port, FEEDBACK, arf(forged, "victim@b.test"))
    assert code == 250 and b"0 matched" in text, (code, text)

    assert suppression(pg, t, "victim@b.test") is None
    ev = denv.wait_events(qid, "message.bounced")
    assert [e[2]["recipient"] for e in ev] == ["mallory@a.test"]


def test_pipelined_commands_and_half_close_after_a_report(denv, ctl, pg):
    """QUIT pipelined after the final dot, then the client stops sending:
    it still gets the report's 250 (sent once the database answered),
    then 221, in that order."""
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.48")
    denv.mx("pipe.test", (10, "mx.pipe.test", "127.0.0.48"))
    d, port = start(denv)
    qid, verp = delivered(denv, sink, t, d, ["p@pipe.test"])
    report = dsn(verp, [("p@pipe.test", "failed", "5.1.1", "550 5.1.1 gone")])
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        s.sendall(b"EHLO mx.remote.test\r\nMAIL FROM:<>\r\nRCPT TO:<%s>\r\nDATA\r\n"
                  % verp.encode())
        s.sendall(report + b".\r\nQUIT\r\n")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    finally:
        s.close()
    codes = [line[:3] for line in got.split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"], got
    assert b"1 matched" in got, got
    assert events_of(pg, qid, "message.bounced") == 1


def test_non_ascii_diagnostic_is_recorded(denv, ctl, pg):
    """A diagnostic in UTF-8 longer than the suppression reason keeps: the
    reason is cut between characters, never inside one."""
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.49")
    denv.mx("utf.test", (10, "mx.utf.test", "127.0.0.49"))
    d, port = start(denv)
    qid, verp = delivered(denv, sink, t, d, ["u@utf.test"])
    # 38 octets before the run of 2-octet characters: the 170-octet cut of
    # the reason falls inside one unless it is cut between characters.
    diag = "550 5.1.1 bo\u00eete aux lettres inconnue  " + "\u00e9" * 150
    report = dsn(verp, [("u@utf.test", "failed", "5.1.1", diag)])  # UTF-8, 8 bit
    code, text = send_report(port, verp, report)
    assert code == 250 and b"1 matched" in text, (code, text)
    ev = denv.wait_events(qid, "message.bounced")
    assert ev[0][2]["reply"].startswith("550 5.1.1 bo\u00eete aux lettres")
    reason = suppression(pg, t, "u@utf.test")
    assert reason.startswith("bounced after delivery: 550 5.1.1 bo\u00eete") and \
        reason.endswith("\u00e9"), reason


def test_delivery_tags_senders_when_only_root_can_read_the_master_key(denv, ctl, tmp_path):
    """The usual deployment: the master key file is readable by root only;
    the daemon reads it before dropping privileges and hands the derived
    VERP key to its delivery child, which could not read the file."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start the daemon with a privilege drop")
    private = tmp_path / "master.key"
    with open(h.master_key_file()) as f:
        private.write_text(f.read())
    os.chmod(private, 0o600)
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.50")
    denv.mx("rootkey.test", (10, "mx.rootkey.test", "127.0.0.50"))
    d = denv.start(dkim__master_key_file=str(private))
    qid, verp = delivered(denv, sink, t, d, ["r@rootkey.test"])
    assert verp == verp_of(qid, 0, BOUNCES)
    # The child took the key out of its environment: /proc/PID/environ
    # still shows the block it started with, now without the key's digits.
    if h.VALGRIND:
        return  # /proc/PID/environ shows valgrind's copy, not the one wiped
    with open(h.master_key_file()) as f:
        master = bytes.fromhex(f.read().strip())
    key = hmac.new(master, b"sendgate VERP tag key v1", hashlib.sha256).hexdigest()
    with open("/proc/%d/environ" % denv.delivery_pid(), "rb") as f:
        env = f.read()
    assert b"SENDGATE_VERP_KEY=" in env and key.encode() not in env


def test_transactions_of_several_recipients_have_senders_of_their_own(denv, ctl, pg):
    """Two destinations with two recipients each: two transactions, each
    sent from its own address. A recipient of one can report on its own
    transaction's recipients (they share the address), never on the
    other's."""
    t = h.setup_tenant(ctl)
    sa = denv.sink("127.0.0.51")
    sb = denv.sink("127.0.0.52")
    denv.mx("c.test", (10, "mx.c.test", "127.0.0.51"))
    denv.mx("d.test", (10, "mx.d.test", "127.0.0.52"))
    d, port = start(denv)
    qid = submit(d, t, ["mallory@c.test", "m2@c.test", "victim@d.test", "v2@d.test"])
    sa.wait_for(1)
    sb.wait_for(1)
    denv.wait_events(qid, "message.delivered", 4)
    own, theirs = sa.messages[0].mail_from, sb.messages[0].mail_from
    assert own == verp_of(qid, 0, BOUNCES, several=True)
    assert theirs == verp_of(qid, 2, BOUNCES, several=True)
    for report_to, msg in ((own, dsn(own, [("victim@d.test", "failed", "5.1.1", "550 5.1.1 x")])),
                           (FEEDBACK, arf(own, "v2@d.test"))):
        code, text = send_report(port, report_to, msg)
        assert code == 250 and b"0 matched" in text, (code, text)
    assert suppression(pg, t, "victim@d.test") is None
    assert suppression(pg, t, "v2@d.test") is None
    # Its own transaction's: matched.
    code, text = send_report(port, own, dsn(own, [("m2@c.test", "failed", "5.1.1", "550 5.1.1 x")]))
    assert code == 250 and b"1 matched" in text, (code, text)
    assert suppression(pg, t, "m2@c.test") is not None


# ------------------------------------------------------------ STARTTLS

def test_report_over_starttls_is_recorded_like_one_in_clear(denv, ctl, pg):
    """STARTTLS is offered (never required): a report sent over it, here
    one that returns a large original (many TLS records arriving at once),
    is recorded exactly as the same report sent in clear."""
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.46")
    denv.mx("tls.test", (10, "mx.tls.test", "127.0.0.46"))
    d, port = start(denv)
    recorded = {}
    for local, tls in (("clear", False), ("secret", True)):
        rcpt = "%s@tls.test" % local
        qid, verp = delivered(denv, sink, t, d, [rcpt])
        report = dsn(verp, [(rcpt, "failed", "5.1.1", "550 5.1.1 mailbox does not exist")])
        filler = (b"y" * 998 + b"\r\n") * 300
        report = report.replace(b"\r\n--b0undary=42--", b"\r\n" + filler + b"--b0undary=42--")
        code, text = send_report(port, verp, report, tls=tls)
        assert code == 250 and b"1 matched" in text, (local, code, text)
        e = denv.wait_events(qid, "message.bounced")[0][2]
        assert e["recipient"] == rcpt, e
        recorded[local] = ({k: v for k, v in e.items() if rcpt not in str(v)},
                           suppression(pg, t, rcpt))
    assert recorded["secret"] == recorded["clear"]
    assert recorded["secret"][1] and "mailbox does not exist" in recorded["secret"][1]
    # One line per connection says whether it was encrypted, and how.
    denv.wait_log(r"event=session_end listener=bounce client=\S+ tls=\"TLSv1\.[23] \S+\" "
                  r"reports=1")
    denv.wait_log(r"event=session_end listener=bounce client=\S+ tls=no reports=1")


@contextlib.contextmanager
def bounce_session(denv, ehlo=True):
    """A byte-exact client on a new daemon's bounce listener (after EHLO)."""
    d, port = start(denv)
    c = h.SMTPClient.connect(port)
    try:
        if ehlo:
            c.ehlo("mx.remote.test")
        yield c
    finally:
        c.quit()


def test_ehlo_offers_starttls_until_tls_and_state_resets(denv):
    with bounce_session(denv) as c:
        assert "STARTTLS" in c.keywords(), c.ehlo_reply
        # A transaction opened in clear does not survive the handshake.
        assert c.cmd("MAIL FROM:<>").code == 250
        c.starttls()
        assert c.tls
        # RFC 3207 4.2: the client must say EHLO again.
        r = c.cmd("MAIL FROM:<>")
        assert r.code == 503 and r.enhanced == "5.5.1", r
        c.ehlo("mx.remote.test")
        assert "STARTTLS" not in c.keywords(), c.ehlo_reply
        r = c.cmd("RCPT TO:<postmaster>")
        assert r.code == 503 and r.enhanced == "5.5.1", r
        assert c.cmd("MAIL FROM:<>").code == 250
        assert c.cmd("RCPT TO:<postmaster>").code == 250


def test_starttls_injection_closes_after_the_220(denv):
    with bounce_session(denv) as c:
        c.send(b"STARTTLS\r\nNOOP\r\n")
        r = c.reply()
        assert r.code == 220 and r.enhanced == "2.0.0", r
        assert not c.buf, "the injected NOOP was answered: %r" % c.buf
        assert c.is_closed(timeout=5), "connection left open with injected plaintext"
    denv.wait_log(r"event=starttls_injection client=\S+ bytes=6\b")


def test_starttls_refused_twice_with_argument_or_before_ehlo(denv):
    with bounce_session(denv, ehlo=False) as c:
        r = c.cmd("STARTTLS")
        assert r.code == 503 and r.enhanced == "5.5.1", r
        c.ehlo("mx.remote.test")
        r = c.cmd("STARTTLS now")
        assert r.code == 501 and r.enhanced == "5.5.4", r
        c.starttls()
        c.ehlo("mx.remote.test")
        r = c.cmd("STARTTLS")
        assert r.code == 503 and r.enhanced == "5.5.1", r
        # Still a working session.
        assert c.cmd("NOOP").code == 250


def test_failed_handshake_is_logged(denv):
    with bounce_session(denv) as c:
        assert c.cmd("STARTTLS").code == 220
        # Plaintext where the ClientHello belongs (sent after the 220).
        c.send(b"EHLO in.clear.test\r\n")
        assert c.is_closed(timeout=5)
    denv.wait_log(r"event=tls_error client=\S+ op=handshake ssl_error=0 error=")
    denv.wait_log(r"event=session_end listener=bounce client=\S+ tls=no")


def peer_cert(port):
    c = h.SMTPClient.connect(port)
    try:
        c.ehlo("mx.remote.test")
        c.starttls()
        return c.sock.getpeercert(binary_form=True)
    finally:
        c.quit()


def test_starttls_uses_the_certificate_reloaded_on_sighup(daemon_factory, tmp_path):
    tls_dir = str(tmp_path / "tls")
    cert, key = h.make_cert(tls_dir, name="before.test")
    h.open_path_for_daemon(tls_dir)
    port = h.free_port()
    d = daemon_factory(start=False, bounce__listen="127.0.0.1:%d" % port)
    d.config["smtp"]["tls_cert"], d.config["smtp"]["tls_key"] = cert, key
    d.write_config()
    d.start()
    d.wait_log(r"event=listening address=127\.0\.0\.1:%d mode=bounce" % port)

    def der(path):
        with open(path) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    assert peer_cert(port) == der(cert)
    new_cert, new_key = h.make_cert(str(tmp_path / "new"), name="after.test")
    shutil.copy(new_key, key)
    shutil.copy(new_cert, cert)
    n = len(re.findall(r"event=reload result=ok", d.log_text()))
    d.proc.send_signal(signal.SIGHUP)
    h.eventually(lambda: len(re.findall(r"event=reload result=ok", d.log_text())) > n,
                 timeout=10, what="event=reload result=ok")
    assert peer_cert(port) == der(new_cert)


def test_records_that_arrive_together_are_all_answered(denv):
    """The shared TLS context reads ahead (for the submission sessions):
    commands in records that come in one TCP write, and one that comes with
    the end of the handshake, are all answered here too."""
    from test_starttls import RecordClient
    with bounce_session(denv) as c:
        assert c.cmd("STARTTLS").code == 220
        rc = RecordClient(c.sock)
        c.sock.sendall(rc.handshake() + rc.records(b"EHLO together\r\n"))
        assert rc.replies(1)[0].startswith(b"250 "), "no answer to EHLO"
        c.sock.sendall(rc.records(b"NOOP\r\n", b"RSET\r\n", b"NOOP\r\n", b"RSET\r\n", b"NOOP\r\n"))
        rs = rc.replies(5)
        assert all(r.startswith(b"250 ") for r in rs), rs
        c.sock.sendall(rc.records(b"QUIT\r\n"))
        assert rc.replies(1)[0].startswith(b"221"), "no 221"


def test_connections_per_address_are_limited(denv):
    """One sender cannot take every slot of the listener: past
    [bounce] max_connections_per_ip, 421 naming the address and the limit;
    a slot freed is taken again, and other addresses are not counted."""
    port = h.free_port()
    denv.start(bounce__listen="127.0.0.1:%d" % port, bounce__max_connections_per_ip="2")
    denv.wait_log(r"event=listening address=127\.0\.0\.1:%d mode=bounce" % port)

    def greeting(source="127.0.0.1"):
        s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                     source_address=(source, 0))
        f = s.makefile("rb")
        return s, f.readline().decode()

    first = [greeting() for _ in range(2)]
    assert all(g.startswith("220 ") for _, g in first), first
    s, g = greeting()
    assert g.startswith("421 4.7.0 Too many connections from your address 127.0.0.1 to the "
                       "bounce listener: at most 2 at a time"), g
    s.close()
    denv.wait_log(r"event=refused client=127\.0\.0\.1 key=127\.0\.0\.1 listener=bounce "
                  r"reason=max_connections_per_ip limit=2")
    other, g = greeting("127.0.0.9")
    assert g.startswith("220 "), g
    first[0][0].close()
    h.eventually(lambda: greeting()[1].startswith("220 "), timeout=10,
                 what="a freed slot taken again")
    for s, _ in first[1:] + [(other, None)]:
        s.close()
