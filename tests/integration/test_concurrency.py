"""Many sessions at once: every acknowledged message is on disk with its
own envelope and content (group commit must not mix messages up)."""

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
