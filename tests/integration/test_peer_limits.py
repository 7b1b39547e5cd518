"""Per-client-address limits: what counts as one client (an IPv4 address,
IPv4-mapped IPv6 as that IPv4 address, an IPv6 /64), and a per-address
table that forgets clients once nothing is left to remember and never
holds more entries than its cap, whatever number of addresses clients
come from. Real connections from several loopback addresses (127.0.0.x);
::1 is the only IPv6 loopback address, the /64 keying of other IPv6
addresses is in tests/unit/test_smtpd_peer.c."""

import re
import socket

import pytest

import sgharness as h


def greeting(port, source=None, host="127.0.0.1"):
    """Connects and returns (client, first reply or None when closed)."""
    if host == "127.0.0.1":
        c = h.SMTPClient.connect(port, read_greeting=False, source=source)
    else:
        s = socket.create_connection((host, port), timeout=10 * h.SLOW)
        c = h.SMTPClient(s)
    try:
        return c, c.reply()
    except h.Closed:
        return c, None


def require_bind(addr, why):
    """Skips the test unless an IPv6 socket can bind addr here."""
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind((addr, 0))
        s.close()
    except OSError:
        pytest.skip(why)


def assert_refused_per_address(r, who):
    assert r is not None, "refused without a reply"
    assert (r.code, r.enhanced) == (421, "4.7.0"), r
    assert who in r.text, "the refusal should name %s: %r" % (who, r)
    assert "at most 2" in r.text or "at most 1" in r.text, "the refusal should name the limit: %r" % r


def auth_failure(d, source, tenant):
    """One failed AUTH from source; waits until the server has closed."""
    c = h.SMTPClient.connect(d.smtps_port, tls=True, source=source)
    assert c.greeting.code == 220, c.greeting
    c.ehlo()
    r = c.auth_plain(tenant.username, "wrong-secret")
    assert (r.code, r.enhanced) == (421, "4.7.0"), r
    assert c.is_closed(), "still open after the last allowed AUTH failure"
    c.close()


def log_count(d, pattern):
    return len(re.findall(pattern, d.log_text()))


def test_limit_is_per_address(daemon_factory):
    d = daemon_factory(max_connections_per_ip=2)
    a = [greeting(d.submission_port, "127.0.0.2") for _ in range(2)]
    assert all(g and g.code == 220 for _, g in a), a
    c, g = greeting(d.submission_port, "127.0.0.2")
    assert_refused_per_address(g, "address 127.0.0.2")
    c.close()
    # Other addresses have limits of their own.
    b = [greeting(d.submission_port, "127.0.0.3") for _ in range(2)]
    assert all(g and g.code == 220 for _, g in b), b
    c, g = greeting(d.submission_port, "127.0.0.3")
    assert_refused_per_address(g, "address 127.0.0.3")
    c.close()
    assert re.search(r"event=refused client=127\.0\.0\.2 key=127\.0\.0\.2 "
                     r"reason=max_connections_per_ip limit=2", d.log_text())
    # A freed slot is the address's again.
    a[0][0].quit()

    def accepted():
        c, g = greeting(d.submission_port, "127.0.0.2")
        c.quit()
        return g is not None and g.code == 220
    h.eventually(accepted, timeout=5, interval=0.2, what="a slot freed after QUIT")
    for c, _ in a[1:] + b:
        c.quit()


def test_mapped_ipv4_counts_as_ipv4(daemon_factory):
    """On an IPv6 socket an IPv4 client is ::ffff:a.b.c.d: still one IPv4
    address, logged and limited as such."""
    require_bind("::ffff:127.0.0.1", "no IPv4-mapped IPv6 sockets here")
    port = h.free_port()
    d = daemon_factory(submission_port=port, max_connections_per_ip=1,
                       submission_listen="[::ffff:127.0.0.1]:%d" % port)
    c1, g = greeting(port, "127.0.0.2")
    assert g.code == 220, g
    c2, g = greeting(port, "127.0.0.2")
    assert_refused_per_address(g, "address 127.0.0.2")
    c2.close()
    c3, g = greeting(port, "127.0.0.3")
    assert g.code == 220, g
    log = d.log_text()
    assert "key=127.0.0.2 reason=max_connections_per_ip" in log, log[-2000:]
    assert "client=127.0.0.2 key=127.0.0.2 reason=max_connections_per_ip" in log, log[-2000:]
    assert not re.search(r"(client|key)=::ffff:", log), "a mapped address was logged as IPv6"
    c1.quit()
    c3.quit()


def test_ipv6_counts_by_network(daemon_factory):
    """::1 is in ::/64, and an IPv6 client is limited by its /64."""
    require_bind("::1", "no IPv6 loopback")
    port = h.free_port()
    d = daemon_factory(submission_port=port, max_connections_per_ip=1,
                       submission_listen="[::1]:%d" % port)
    c1, g = greeting(port, host="::1")
    assert g.code == 220, g
    c2, g = greeting(port, host="::1")
    assert_refused_per_address(g, "network ::/64")
    c2.close()
    assert "client=::1 key=::/64 reason=max_connections_per_ip" in d.log_text()
    c1.quit()


def test_closed_clients_are_forgotten(daemon_factory, tenant):
    """Every address whose last connection ended, with no AUTH failure to
    remember, leaves the table at once; one with a failure stays (and is
    still slowed down) until its failure expires."""
    d = daemon_factory(log_level="debug", auth_max_failures=1, auth_fail_delay="120s")
    addrs = ["127.0.0.%d" % n for n in range(40, 60)]
    conns = [greeting(d.submission_port, a) for a in addrs]
    assert all(g and g.code == 220 for _, g in conns)
    auth_failure(d, "127.0.0.60", tenant)
    for c, _ in conns:
        c.quit()
    h.eventually(lambda: log_count(d, r"event=client_forgotten key=127\.0\.0\.\d+ reason=idle")
                 >= len(addrs), timeout=5, what="every closed address forgotten")
    log = d.log_text()
    for a in addrs:
        assert "event=client_forgotten key=%s reason=idle" % a in log, a
    assert "client_forgotten key=127.0.0.60 " not in log, "the failing address was forgotten"
    # Only the failing address is left.
    last = re.findall(r"event=client_forgotten .* entries=(\d+)", log)[-1]
    assert last == "1", last
    # Its penalty is still there: the greeting is held back.
    c, = [h.SMTPClient.connect(d.submission_port, read_greeting=False, source="127.0.0.60")]
    rs, closed = c.pending_replies(quiet=1)
    assert rs == [] and not closed, "greeted at once after an AUTH lockout: %r" % rs
    c.close()


def test_table_is_capped(daemon_factory, tenant):
    """With max_connections 3 the table holds at most 6 entries. Failed AUTHs
    from more addresses than that push out the address idle the longest:
    its penalty is forgotten, and nobody is refused for the table's sake."""
    d = daemon_factory(log_level="debug", max_connections=3, auth_max_failures=1,
                       auth_fail_delay="120s")
    auth_failure(d, "127.0.0.20", tenant)
    # Locked out: the greeting is held back.
    c = h.SMTPClient.connect(d.submission_port, read_greeting=False, source="127.0.0.20")
    rs, closed = c.pending_replies(quiet=1)
    assert rs == [] and not closed, "greeted at once after an AUTH lockout: %r" % rs
    c.close()
    h.eventually(lambda: log_count(d, r"event=session_end client=127\.0\.0\.20 ") == 2,
                 timeout=5, what="the held-back session to end")

    # Five more failing addresses fill the table (6 entries)...
    for n in range(21, 26):
        auth_failure(d, "127.0.0.%d" % n, tenant)
    assert "client_evicted" not in d.log_text()
    # ...and the next one evicts the address idle the longest.
    auth_failure(d, "127.0.0.26", tenant)
    d.wait_log(r"event=client_evicted key=127\.0\.0\.20 failures=1 entries=6 limit=6")
    # Its penalty went with it: greeted at once.
    c, g = greeting(d.submission_port, "127.0.0.20")
    assert g is not None and g.code == 220, g
    c.quit()
    d.wait_log(r"event=client_evicted key=127\.0\.0\.21 ")
    # An address still in the table is still slowed down.
    c = h.SMTPClient.connect(d.submission_port, read_greeting=False, source="127.0.0.25")
    rs, closed = c.pending_replies(quiet=1)
    assert rs == [] and not closed, "a remembered failing address was greeted at once: %r" % rs
    c.close()
    sizes = [int(n) for n in re.findall(r"event=client_\w+ .*entries=(\d+)", d.log_text())]
    assert sizes and max(sizes) <= 6, sizes
