"""Many sessions at once: every acknowledged message is on disk with its
own envelope and content (group commit must not mix messages up)."""

import os
import re
import socket
import struct
import threading

import sgharness as h

CLIENTS = 30
PER_CLIENT = 5


def test_concurrent_sessions(daemon, tenant):
    results = {}
    errors = []
    start = threading.Barrier(CLIENTS)

    def worker(n):
        try:
            c = h.SMTPClient.connect(daemon.smtps_port if n % 2 else daemon.submission_port,
                                     tls=bool(n % 2), timeout=30)
            c.login(tenant)
            start.wait(30)
            for i in range(PER_CLIENT):
                marker = "conc-%d-%d" % (n, i)
                body = (marker.encode() + b"\r\n") * (1 + (n * 37 + i * 11) % 300)
                r = c.send_message(tenant.addr(), ["%s@example.net" % marker],
                                   h.make_message(tenant.addr(), subject=marker, body=body))
                qid = h.queued_id(r)
                if not qid:
                    errors.append((marker, r))
                    return
                results[qid] = (marker, body)
            c.quit()
        except Exception as e:  # noqa: BLE001 - collected and reported
            errors.append((n, repr(e)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120 * h.SLOW)
    assert not errors, errors[:5]
    assert len(results) == CLIENTS * PER_CLIENT, "duplicate queue ids or lost replies"
    for qid, (marker, body) in results.items():
        sm = h.spooled(daemon, qid)
        assert sm.rcpts == ["%s@example.net" % marker], (qid, sm.rcpts, marker)
        assert sm.body == body, "body of %s is not %s's" % (qid, marker)
        assert b"Subject: %s\r\n" % marker.encode() in sm.headers


def test_clients_leaving_while_signed(daemon, tenant):
    """Clients that close or reset the connection right after the final
    dot, while their message waits for a signer thread (RSA). The signer
    thread commits it all the same (logged with note=client_gone), or it is
    dropped if it was not signed yet; never left half-way: queue/ holds
    exactly the messages logged as queued, each a whole signed file, tmp/
    is left empty, and the daemon goes on."""
    before = set(daemon.queue_ids())
    off = len(daemon.log_text())
    n = 20
    for i in range(n):
        c = h.SMTPClient.connect(daemon.submission_port)
        c.login(tenant)
        marker = "leaver-%d" % i
        assert c.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
        assert c.cmd("RCPT TO:<%s@example.net>" % marker).code == 250
        assert c.cmd("DATA").code == 354
        if i % 2:  # half of them reset the connection instead of closing it
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.send(h.make_message(tenant.addr(), subject=marker) + b".\r\n")
        c.close()

    def logged():
        text = daemon.log_text()[off:]
        ids = set(re.findall(r"event=message id=([0-9A-Z]+) .*?result=queued", text))
        gone = set(re.findall(r"event=message id=([0-9A-Z]+) result=queued note=client_gone",
                              text))
        return ids | gone

    # Each message ends as queued (logged) or dropped, never half-way.
    h.eventually(lambda: set(daemon.queue_ids()) - before == logged(), timeout=10 * h.SLOW,
                 what="queue files matching the messages logged as queued")
    for qid in set(daemon.queue_ids()) - before:
        sm = h.spooled(daemon, qid)
        assert sm.headers.startswith(b"DKIM-Signature:"), (qid, sm.headers[:80])
        assert sm.rcpts[0].startswith("leaver-"), sm.rcpts
    spool = os.path.dirname(daemon.queue_dir())
    h.eventually(lambda: os.listdir(os.path.join(spool, "tmp")) == [], what="tmp/ empty")
    c = h.SMTPClient.connect(daemon.submission_port)
    c.login(tenant)
    assert h.queued_id(c.send_message(tenant.addr(), ["after@example.net"],
                                      h.make_message(tenant.addr())))
    c.quit()
    assert daemon.alive()
