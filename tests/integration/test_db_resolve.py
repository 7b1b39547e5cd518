"""The database host given by name: libpq would resolve it with a blocking
getaddrinfo on the event loop, so the store resolves it on a thread and
hands libpq the address (hostaddr) while keeping the name (host).

The session's PostgreSQL listens only on a unix socket; a small TCP relay
on 127.0.0.1 in front of it lets the daemon reach it as "localhost". Only
names in /etc/hosts may be used here: the machine's resolver points off
the machine, and no lookup may leave it.
"""

import os
import re
import shutil
import signal
import socket
import threading
import time

import pytest

import sgharness as h


class TcpRelay:
    """127.0.0.1:port relayed to a unix socket; counts the connections."""

    def __init__(self, unix_path):
        self.unix_path = unix_path
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.connections = 0
        self.socks = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                u.connect(self.unix_path)
            except OSError:
                c.close()
                u.close()
                continue
            with self.lock:
                if self.closed:
                    c.close()
                    u.close()
                    return
                self.connections += 1
                self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        with self.lock:
            self.closed = True
            socks, self.socks = self.socks, []
        self.lsock.close()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


# getaddrinfo("localhost") made slow (SLOW_GAI_MS) in every thread but the
# verifier's, which may block: a lookup on the event loop would then stall
# SMTP, and a lookup on a thread is still running when the daemon is told to
# stop. Numeric lookups (AI_NUMERICHOST) never wait.
SLOW_GAI_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
		struct addrinfo **res)
{
	int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **) =
		(int (*)(const char *, const char *, const struct addrinfo *,
			 struct addrinfo **))dlsym(RTLD_NEXT, "getaddrinfo");
	char name[16] = "";
	const char *ms = getenv("SLOW_GAI_MS");

	pthread_getname_np(pthread_self(), name, sizeof(name));
	if (node && strcmp(node, "localhost") == 0 && strcmp(name, "sg-verify") != 0 &&
	    !(hints && (hints->ai_flags & AI_NUMERICHOST)) && ms) {
		long n = strtol(ms, NULL, 10);
		struct timespec ts = {n / 1000, (n % 1000) * 1000000L};
		/* The daemon's setuid signals every thread (glibc's setxid). */
		while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
			;
	}
	return real(node, service, hints, res);
}
"""


@pytest.fixture
def slow_gai(tmp_path):
    """Path of a preload library that slows getaddrinfo("localhost")."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the getaddrinfo shim")
    src = tmp_path / "slow_gai.c"
    src.write_text(SLOW_GAI_C)
    lib = str(tmp_path / "slow_gai.so")
    h.run([cc, "-shared", "-fPIC", "-o", lib, str(src), "-ldl", "-lpthread"], timeout=60)
    return lib


@pytest.fixture
def relay(pg):
    r = TcpRelay(os.path.join(pg.dir, ".s.PGSQL.%d" % pg.port))
    yield r
    r.close()


def test_host_name_resolved_off_the_loop(relay, daemon_factory, pg, tenant):
    # relay first: set up before the daemon, it is torn down after it.
    # A URI, so that the conninfo goes through PQconninfoParse's URI form.
    url = "postgresql://postgres@localhost:%d/%s" % (relay.port, pg.dbname)
    d = daemon_factory(database__url=url)  # waits for event=ready: caches loaded
    log = d.log_text()
    assert "event=db_resolved host=localhost addr=127.0.0.1" in log, log[-3000:]
    assert "event=db_resolve_on_loop" not in log, log[-3000:]
    assert "event=db_connected" in log, log[-3000:]
    # The only way to the database is the relay: it was used.
    assert relay.connections >= 1
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(tenant)
    r = c.send_message(tenant.addr(), ["x@example.net"], h.make_message(tenant.addr()))
    assert h.queued_id(r), r
    c.quit()


def test_refused_connection_names_host_and_smtp_goes_on(daemon_factory, pg):
    # Nothing listens there: h.free_port() hands out a port bound by no one.
    port = h.free_port()
    url = "host=localhost port=%d user=postgres dbname=%s" % (port, pg.dbname)
    d = daemon_factory(start=False, database__url=url)
    d.spawn()
    # Every attempt resolves again, then fails naming the host; the retry
    # timer (1 s, then 2 s) makes a second attempt.
    h.eventually(lambda: d.log_text().count("event=db_resolved host=localhost") >= 2,
                 timeout=10 * h.SLOW, what="two resolutions")
    fails = [line for line in d.log_text().splitlines() if "event=db_disconnected" in line]
    assert fails, d.log_text()[-3000:]
    assert all("host=localhost " in line and str(port) in line for line in fails), fails
    # The loop stayed free: SMTP answers at once.
    c = h.SMTPClient.connect(d.submission_port, timeout=5.0)
    assert c.greeting.code == 220, c.greeting
    c.ehlo()
    c.quit()
    assert d.alive()


def connect_or_none(port):
    """A client with its greeting read, or None while nothing listens."""
    try:
        return h.SMTPClient.connect(port, timeout=1.0)
    except ConnectionRefusedError:
        return None


def test_slow_lookup_blocks_nothing_and_shutdown_leaves_it(relay, daemon_factory, pg, slow_gai):
    delay = 4.0 * h.SLOW
    url = "host=localhost port=%d user=postgres dbname=%s" % (relay.port, pg.dbname)
    env = {"LD_PRELOAD": slow_gai, "SLOW_GAI_MS": str(int(delay * 1000)),
           # The shim comes before the ASan runtime in an ASan build.
           "ASAN_OPTIONS": "detect_leaks=1:verify_asan_link_order=0"}
    d = daemon_factory(start=False, database__url=url, env=env)
    d.spawn()
    t0 = time.monotonic()
    # While the lookup runs, SMTP answers at once (a lookup on the loop
    # would keep the listeners closed, or the greeting unanswered).
    c = h.eventually(lambda: connect_or_none(d.submission_port), timeout=delay / 2 / h.SLOW,
                     interval=0.05, what="the greeting")
    assert c.greeting.code == 220, c.greeting
    c.ehlo()
    c.quit()
    assert "event=db_resolved" not in d.log_text(), "the lookup was not slowed"
    assert time.monotonic() - t0 < delay * 0.75, "too slow to catch the lookup running"
    # Stopped mid-lookup: a clean exit that does not wait for the resolver
    # (the teardown checks the log for sanitizer reports).
    t1 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(timeout=10 * h.SLOW)
    d.proc = None
    assert rc == 0, d.log_text()[-3000:]
    assert "event=db_resolved" not in d.log_text(), "the lookup ended before the stop"
    assert time.monotonic() - t1 < delay / 2, "shutdown waited for the lookup"


def test_lookup_without_answer_fails_in_time_and_is_tried_again(relay, daemon_factory, pg,
                                                                 slow_gai):
    """A resolver that does not answer within connect_timeout fails that
    attempt with a clear line, and the store tries again (a stuck lookup
    must not stop reconnecting for good)."""
    delay = 30.0  # far past the timeout: the lookups never come back in this test
    url = "host=localhost port=%d user=postgres dbname=%s connect_timeout=1" % (relay.port,
                                                                                 pg.dbname)
    env = {"LD_PRELOAD": slow_gai, "SLOW_GAI_MS": str(int(delay * 1000)),
           "ASAN_OPTIONS": "detect_leaks=1:verify_asan_link_order=0"}
    d = daemon_factory(start=False, database__url=url, env=env)
    d.spawn()
    rx = re.compile(r"event=db_disconnected host=localhost reason=\"could not translate host "
                    r"name \\\"localhost\\\" to address: no answer within 1 s\"")
    h.eventually(lambda: len(rx.findall(d.log_text())) >= 2, timeout=15 * h.SLOW,
                 what="two timed-out lookups")
    assert "event=db_resolved" not in d.log_text()
    c = h.SMTPClient.connect(d.submission_port, timeout=5.0)
    assert c.greeting.code == 220, c.greeting
    c.quit()
    # Stopping does not wait for the lookups still running.
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(timeout=10 * h.SLOW)
    d.proc = None
    assert rc == 0, d.log_text()[-3000:]
    assert time.monotonic() - t0 < 10 * h.SLOW
