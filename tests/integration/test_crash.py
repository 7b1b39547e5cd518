"""Crash test: SIGKILL while clients stream messages. After restart every
acknowledged queue id is in the queue, intact and with its own content;
the only other messages allowed are ones whose final dot was sent but
whose reply never came (at most one per connection); tmp/ is empty."""

import os
import re
import threading
import time

import pytest

import sgharness as h

pytestmark = pytest.mark.slow

CONNECTIONS = 4


class Streamer(threading.Thread):
    def __init__(self, daemon, tenant, n, tls):
        super().__init__(daemon=True)
        self.d, self.t, self.n, self.tls = daemon, tenant, n, tls
        self.acked = {}  # qid -> marker
        self.inflight = None  # marker whose final dot was sent, reply not read
        self.refused = []
        self.error = None
        self.logged_in = threading.Event()

    def run(self):
        try:
            port = self.d.smtps_port if self.tls else self.d.submission_port
            c = h.SMTPClient.connect(port, tls=self.tls)
            c.login(self.t)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
            return
        self.logged_in.set()
        seq = 0
        try:
            while True:
                seq += 1
                marker = "crash-%d-%d" % (self.n, seq)
                size = [200, 5000, 60000][seq % 3]
                body = (marker.encode() + b"\r\n") + (b"p" * 76 + b"\r\n") * (size // 78)
                msg = h.make_message(self.t.addr(), to="%s@example.net" % marker, subject=marker,
                                     body=body)
                c.send(b"MAIL FROM:<%s>\r\nRCPT TO:<%s@example.net>\r\nDATA\r\n"
                       % (self.t.addr().encode(), marker.encode()))
                rs = c.replies(3)
                if [r.code for r in rs] != [250, 250, 354]:
                    self.refused.append((marker, rs))
                    return
                c.send(msg[:len(msg) // 2])
                self.inflight = marker
                c.send(msg[len(msg) // 2:] + b".\r\n")
                r = c.reply()
                qid = h.queued_id(r)
                if not qid:
                    self.refused.append((marker, r))
                    return
                self.acked[qid] = marker
                self.inflight = None
        except (h.Closed, OSError):
            return


def crash_round(d, tenant, run_for):
    streamers = [Streamer(d, tenant, i, tls=(i % 2 == 0)) for i in range(CONNECTIONS)]
    for s in streamers:
        s.start()
    for s in streamers:
        assert s.logged_in.wait(15 * h.SLOW), "streamer could not log in: %r" % s.error
    time.sleep(run_for)
    d.kill()
    for s in streamers:
        s.join(30)
        assert not s.is_alive()
        assert not s.refused, "a message was refused before the crash: %r" % s.refused
    return streamers


def check_after_restart(d, streamers, seen_before):
    tmp = os.path.join(d.spool_dir, "tmp")
    assert os.listdir(tmp) == [], "tmp/ not empty after restart: %r" % os.listdir(tmp)
    qdir = os.path.join(d.spool_dir, "quarantine")
    if os.path.isdir(qdir):
        assert os.listdir(qdir) == [], "files quarantined after a kill: %r" % os.listdir(qdir)
    present = set(d.queue_ids())
    acked = {}
    for s in streamers:
        acked.update(s.acked)
    missing = sorted(set(acked) - present)
    assert not missing, "%d acknowledged messages lost: %r" % (len(missing), missing[:10])
    for qid, marker in acked.items():
        sm = h.spooled(d, qid)
        assert sm.rcpts == ["%s@example.net" % marker], (qid, sm.rcpts, marker)
        assert b"Subject: %s\r\n" % marker.encode() in sm.headers, (qid, marker)
        assert sm.body.startswith(marker.encode() + b"\r\n"), (qid, marker)
    inflight = {s.inflight for s in streamers if s.inflight}
    extra = present - set(acked) - seen_before
    extra_markers = []
    for qid in extra:
        sm = h.spooled(d, qid)
        m = re.match(r"(crash-\d+-\d+)@example\.net$", sm.rcpts[0] if sm.rcpts else "")
        marker = m.group(1) if m else None
        assert marker in inflight, \
            "queue has %s (%s) that was never acknowledged nor in flight (in flight: %r)" % (
                qid, marker, inflight)
        extra_markers.append(marker)
    assert len(extra_markers) == len(set(extra_markers)), "a message queued twice: %r" % extra_markers
    return len(acked), len(extra)


def test_sigkill_loses_no_acknowledged_message(daemon_factory, tenant):
    d = daemon_factory()
    total = 0
    seen = set()
    for round_ in range(3):
        streamers = crash_round(d, tenant, run_for=1.5 + round_)
        d.start()
        n, extra = check_after_restart(d, streamers, seen)
        print("crash round %d: %d acknowledged, %d in flight and committed" % (round_, n, extra))
        total += n
        seen = set(d.queue_ids())
    assert total >= 10, "too few messages acknowledged to mean anything (%d)" % total


def test_sigkill_during_large_data(daemon_factory, tenant):
    """Killed while a big message is still streaming: nothing of it is queued."""
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(tenant)
    r = c.send_message(tenant.addr(), ["x@example.net"], h.make_message(tenant.addr()))
    keep = h.queued_id(r)
    assert keep
    assert c.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
    assert c.cmd("RCPT TO:<y@example.net>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(h.make_message(tenant.addr()) + (b"b" * 76 + b"\r\n") * 20000)
    tmp = os.path.join(d.spool_dir, "tmp")
    h.eventually(lambda: os.listdir(tmp), timeout=5, what="a temp file in tmp/")
    d.kill()
    c.close()
    d.start()
    assert os.listdir(tmp) == []
    assert d.queue_ids() == [keep]
    h.spooled(d, keep)
