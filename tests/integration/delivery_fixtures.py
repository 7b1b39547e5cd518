"""Fixtures for the delivery tests: a DNS server, SMTP sinks on 127.0.0.x
addresses (all on one port, [delivery] port), IP pools, and the daemon with
delivery on.

The delivery side normally runs as the daemon's child ("sendgate
--delivery-only"). SENDGATE_DELIVERY_EXE=/path/to/binary runs that binary
(which takes the config file as its only argument) as a separate process
instead, with delivery off in the daemon itself.
"""

import hashlib
import hmac
import os
import re
import signal
import socket
import subprocess
import time

import pytest

import sgharness as h
from dnsserver import DNSServer
import sink


class Sink(sink.Sink):
    """The SMTP sink, waiting as long as the harness's other waits do
    (longer under ASan and memcheck, see sgharness.SLOW)."""

    def wait_for(self, n, timeout=10.0, what=None):
        return super().wait_for(n, timeout * h.SLOW, what)


def free_port_all():
    """A port free on 127.0.0.1 that the sinks then bind on other 127.0.0.x."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DeliveryEnv:
    def __init__(self, daemon_factory, pg, ctl, cert):
        self.daemon_factory, self.pg, self.ctl, self.cert = daemon_factory, pg, ctl, cert
        self.dns = DNSServer(port=0)
        self.dns.start()
        self.port = free_port_all()
        self.sinks = []
        self.daemon = None
        self.proc = None
        self.logfile = None
        self.exe = os.environ.get("SENDGATE_DELIVERY_EXE")

    # ------------------------------------------------------------ network
    def sink(self, host, **attrs):
        """A sink on host:[delivery] port; attrs set its behaviour."""
        s = Sink(host, self.port, cert=self.cert if attrs.pop("tls", True) else None)
        for k, v in attrs.items():
            setattr(s, k, v)
        s.start()
        self.sinks.append(s)
        return s

    def mx(self, domain, *hosts):
        """MX records for domain: hosts are (pref, name, address or None)."""
        self.dns.set(domain, "MX", ["%d %s" % (p, n) for p, n, _ in hosts])
        for _, name, addr in hosts:
            if addr:
                self.dns.set(name, "A", [addr])

    # ------------------------------------------------------------ tenants
    def pool(self, tenant, name, *addrs):
        """Creates pool name with addrs ((address, helo, weight)...) for tenant."""
        self.pg.sql("INSERT INTO pools (name) VALUES ('%s')" % name)
        for a, helo, w in addrs:
            self.pg.sql("INSERT INTO pool_addresses (pool_id, address, helo, weight) "
                        "SELECT id, '%s', '%s', %d FROM pools WHERE name = '%s'"
                        % (a, helo, w, name))
        self.pg.sql("UPDATE tenants SET pool_id = (SELECT id FROM pools WHERE name = '%s') "
                    "WHERE name = '%s'" % (name, tenant.name))

    def events(self, message_id=None, type=None):
        q = "SELECT type, message_id, data::text FROM events WHERE type LIKE 'message.%'"
        if message_id:
            q += " AND message_id = '%s'" % message_id
        if type:
            q += " AND type = '%s'" % type
        import json
        return [(t, m, json.loads(d)) for t, m, d in self.pg.sql(q + " ORDER BY id")]

    def wait_events(self, message_id, type, n=1, timeout=10.0):
        return h.eventually(lambda: (lambda ev: ev if len(ev) >= n else None)(
            self.events(message_id, type)), timeout, what="%d %s event(s) for %s"
            % (n, type, message_id))

    # ------------------------------------------------------------ daemon
    def start(self, **overrides):
        cfg = dict(delivery__enabled="yes", delivery__port=self.port,
                   dns__servers="127.0.0.1:%d" % self.dns.port, dns__timeout_ms="500",
                   dns__tries="1", delivery__retry_first="1s", delivery__retry_factor="1",
                   delivery__connect_timeout="3s", delivery__command_timeout="30s",
                   # Holding delivery while mail arrives on a busy machine
                   # would make these tests' timing depend on the load of
                   # the machine running them: test_acceptance_first.py
                   # tests it on purpose.
                   delivery__acceptance_first="no")
        cfg.update(overrides)
        if self.exe:
            cfg["delivery__enabled"] = "no"
        self.daemon = self.daemon_factory(**cfg)
        if self.exe:
            self.daemon.config["delivery"]["enabled"] = "yes"
            self.dconfig = self.daemon.config_path + ".delivery"
            saved = self.daemon.config_path
            self.daemon.config_path = self.dconfig
            self.daemon.write_config()
            self.daemon.config_path = saved
            self.logfile = self.daemon.logfile + ".delivery"
            self.start_delivery()
        self.wait_log(r"event=delivery_ready")
        return self.daemon

    def start_delivery(self):
        """Separate mode: (re)starts the delivery process."""
        logf = open(self.logfile, "ab")
        self.proc = subprocess.Popen([self.exe, self.dconfig], stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()

    def log_text(self):
        text = self.daemon.log_text()
        if self.logfile and os.path.exists(self.logfile):
            with open(self.logfile, "rb") as f:
                text += f.read().decode("utf-8", "replace")
        return text

    def count_log(self, pattern):
        return len(re.findall(pattern, self.log_text()))

    def wait_log(self, pattern, n=1, timeout=15.0):
        return h.eventually(lambda: self.count_log(pattern) >= n, timeout,
                            what="%d x log /%s/" % (n, pattern))

    def delivery_pid(self):
        if self.exe:
            return self.proc.pid
        pids = re.findall(r"event=delivery_started pid=(\d+)", self.daemon.log_text())
        assert pids, "no delivery child started"
        return int(pids[-1])

    def kill_delivery(self):
        """SIGKILL the delivery process; in the daemon's case it restarts it."""
        pid = self.delivery_pid()
        os.kill(pid, signal.SIGKILL)
        if self.exe:
            self.proc.wait(10)
        return pid

    def stop_delivery(self, timeout=15):
        """SIGTERM to the delivery process; returns its exit status."""
        if self.exe:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout)
        return None

    def finish(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = "timeout"
            assert rc == 0, "delivery process exited %r after SIGTERM" % rc
        for s in self.sinks:
            s.stop()
        self.dns.stop()


@pytest.fixture
def denv(daemon_factory, pg, ctl, cert):
    env = DeliveryEnv(daemon_factory, pg, ctl, cert)
    yield env
    env.finish()


def verp(qid, index, host, several=False, master_file=None):
    """The VERP sender delivery uses for a transaction of message qid whose
    (first) recipient has that index, computed here independently: the tag
    is the first 40 bits, in base32, of an HMAC-SHA256 of "qid.index" (or
    "qid.mindex" for a transaction of several recipients) under a key that
    is the HMAC-SHA256 of a fixed label under the DKIM master key."""
    with open(master_file or h.master_key_file()) as f:
        master = bytes.fromhex(f.read().strip())
    key = hmac.new(master, b"sendgate VERP tag key v1", hashlib.sha256).digest()
    msg = "%s.%s%d" % (qid, "m" if several else "", index)
    v = int.from_bytes(hmac.new(key, msg.encode(), hashlib.sha256).digest()[:5], "big")
    tag = "".join("0123456789ABCDEFGHIJKLMNOPQRSTUV"[(v >> (35 - 5 * i)) & 31] for i in range(8))
    return "bounce+%s.%s@%s" % (msg, tag, host)


def submit(daemon, tenant, rcpts, body=None, sender=None, subject="delivery test"):
    """Submits one message; returns its queue id."""
    c = h.SMTPClient.connect(daemon.submission_port)
    try:
        c.login(tenant)
        sender = sender or tenant.addr()
        r = c.cmd("MAIL FROM:<%s>" % sender)
        assert r.code == 250, r
        for rc in rcpts:
            r = c.cmd("RCPT TO:<%s>" % rc)
            assert r.code == 250, r
        r = c.cmd("DATA")
        assert r.code == 354, r
        body = body or "A test message.\r\n..A line that starts with a dot.\r\n"  # dot-stuffed
        c.send(("From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\n%s.\r\n"
                % (sender, rcpts[0], subject, body)).encode())
        r = c.reply()
        assert r.code == 250, r
        m = re.search(r"queued as (\w+)", r.text)
        assert m, r
        return m.group(1)
    finally:
        c.close()
