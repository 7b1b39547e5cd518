"""GET /metrics on [admin] listen: the Prometheus text format (read here by
the prometheus_client parser, Debian's python3-prometheus-client; the
histogram's shape is checked by hand), with the submission side's counters
and the delivery process's, which it writes to SPOOL/delivery.metrics."""

import os
import socket
import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

import sgharness as h
from delivery_fixtures import denv, submit  # noqa: F401 (fixture)


def scrape(port):
    """(content type, {(name, frozenset(labels)): value}) of one scrape."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        ctype = r.headers["Content-Type"]
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return ctype, out


def v(m, name, **labels):
    return m.get((name, frozenset(labels.items())))


def test_submission_and_delivery_counters(denv, ctl):
    t = h.setup_tenant(ctl)
    sink = denv.sink("127.0.0.22")
    denv.mx("metrics.test", (10, "mx.metrics.test", "127.0.0.22"))
    admin = h.free_port()
    d = denv.start(admin__listen="127.0.0.1:%d" % admin)

    ctype, m = scrape(admin)
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    assert v(m, "sendgate_messages_total", result="queued") == 0
    assert v(m, "sendgate_database_up") == 1

    submit(d, t, ["a@metrics.test"])
    submit(d, t, ["b@metrics.test", "c@metrics.test"])
    c = h.SMTPClient.connect(d.submission_port)
    c.login(t)
    # Two From headers: refused at end of data with 550 5.7.1.
    r = c.send_message(t.addr(), ["d@metrics.test"],
                       ("From: %s\r\nFrom: %s\r\nSubject: x\r\n\r\nbody\r\n"
                        % (t.addr(), t.addr())).encode())
    assert r.code == 550, r
    c.quit()
    bad = h.SMTPClient.connect(d.submission_port)
    bad.ehlo()
    bad.starttls()
    bad.ehlo()
    assert bad.auth_plain(t.username, "wrong").code == 535
    bad.quit()

    sink.wait_for(2)

    def delivered():
        m = scrape(admin)[1]
        return m if v(m, "sendgate_delivery_attempts_total", outcome="delivered") == 3 else None
    m = h.eventually(delivered, timeout=10, what="3 recipients delivered in /metrics")
    assert v(m, "sendgate_delivery_up") == 1
    assert v(m, "sendgate_delivery_attempts_total", outcome="bounced") == 0
    assert v(m, "sendgate_messages_total", result="queued") == 2
    assert v(m, "sendgate_messages_total", result="rejected") == 1
    assert v(m, "sendgate_messages_total", result="deferred") == 0
    assert v(m, "sendgate_auth_failures_total") == 1
    assert v(m, "sendgate_smtp_error_replies_total", **{"class": "5xx"}) >= 2  # 550 and 535
    assert v(m, "sendgate_connections_total") >= 4
    assert v(m, "sendgate_queued_bytes_total") > 100
    # The histogram: cumulative buckets, +Inf equal to the count of queued.
    assert v(m, "sendgate_end_of_data_seconds_count") == 2
    assert v(m, "sendgate_end_of_data_seconds_bucket", le="+Inf") == 2
    buckets = sorted((float(dict(k[1])["le"]), val) for k, val in m.items()
                     if k[0] == "sendgate_end_of_data_seconds_bucket")
    assert [b[1] for b in buckets] == sorted(b[1] for b in buckets)
    assert v(m, "sendgate_end_of_data_seconds_sum") > 0
    assert v(m, "sendgate_delivery_holding") == 0


def test_without_delivery_it_says_so_and_refusals_count(daemon_factory, tenant):
    admin = h.free_port()
    d = daemon_factory(admin__listen="127.0.0.1:%d" % admin, smtp__max_connections_per_ip="2")
    d.wait_log(r"event=ready")
    _, m = scrape(admin)
    assert v(m, "sendgate_delivery_up") == 0
    assert v(m, "sendgate_delivery_attempts_total", outcome="delivered") is None
    assert v(m, "sendgate_sessions") == 0
    assert v(m, "sendgate_spool_messages") == 0
    # Nothing leaves this spool: what is queued stays counted.
    submit(d, tenant, ["a@metrics.test"])
    submit(d, tenant, ["b@metrics.test"])
    _, m = scrape(admin)
    assert v(m, "sendgate_spool_messages") == 2
    assert v(m, "sendgate_connections_total") == 2
    held = [h.SMTPClient.connect(d.submission_port) for _ in range(2)]
    over = socket.create_connection(("127.0.0.1", d.submission_port), timeout=10)
    assert over.makefile("rb").readline().startswith(b"421 4.7.0"), "third connection"
    over.close()
    _, m = scrape(admin)
    assert v(m, "sendgate_sessions") == 2
    assert v(m, "sendgate_connections_total") == 4
    assert v(m, "sendgate_connections_refused_total", reason="max_connections_per_ip") == 1
    assert v(m, "sendgate_connections_refused_total", reason="max_connections") == 0
    for c in held:
        c.close()


def test_delivery_part_only_while_its_writer_runs(daemon_factory):
    """The daemon adds SPOOL/delivery.metrics to a scrape only while the
    process named on its first line runs (a dead delivery process's last
    figures are not served as current)."""
    admin = h.free_port()
    d = daemon_factory(admin__listen="127.0.0.1:%d" % admin)
    d.wait_log(r"event=ready")
    path = os.path.join(d.spool_dir, "delivery.metrics")
    body = ("# TYPE sendgate_delivery_messages gauge\n"
            "sendgate_delivery_messages 7\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid, up in ((dead.pid, 0), (os.getpid(), 1)):
        with open(path, "w") as f:
            f.write("# pid %d\n%s" % (pid, body))
        os.chmod(path, 0o644)
        _, m = scrape(admin)
        assert v(m, "sendgate_delivery_up") == up, pid
        assert v(m, "sendgate_delivery_messages") == (7 if up else None)
    # A file over two heartbeats old is stale even if its writer runs.
    old = time.time() - 600
    os.utime(path, (old, old))
    assert v(scrape(admin)[1], "sendgate_delivery_up") == 0
