#!/usr/bin/python3
"""`make run`: a local sendgate to try by hand.

Without a database URL (SENDGATE_DATABASE_URL unset) it starts a PostgreSQL
cluster of its own under ./var/pg (kept between runs, unix socket only),
applies the migrations, makes sure a demo tenant with an operator-verified
domain exists, issues a fresh credential, starts the daemon on
127.0.0.1:2587 (STARTTLS) and 127.0.0.1:2465 (implicit TLS) with a
self-signed certificate under ./var/tls, prints a swaks command that sends
a message, and runs until Ctrl-C, then stops everything it started.

    SENDGATE_BUILD   folder with sendgate and sendgatectl (default ./build)
    SENDGATE_DATABASE_URL   use this database instead of ./var/pg
    DEMO_TENANT, DEMO_DOMAIN   (default demo, demo.example)
    DEMO_SUBMISSION_PORT, DEMO_SMTPS_PORT   (default 2587, 2465)
"""

import os
import signal
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import sgharness as h  # noqa: E402

VAR = os.path.join(REPO, "var")
SUBMISSION_PORT = int(os.environ.get("DEMO_SUBMISSION_PORT", "2587"))
SMTPS_PORT = int(os.environ.get("DEMO_SMTPS_PORT", "2465"))
BOUNCE_PORT = int(os.environ.get("DEMO_BOUNCE_PORT", "2525"))


def start_dns(var, domain):
    """A DNS server on loopback for everything the demo looks up: no lookup
    leaves the machine. example.net and example.com get an MX pointing at the
    demo's mail sink; the demo domain gets the records a customer would add."""
    import dnsserver
    dns = dnsserver.DNSServer(port=0, host="127.0.0.1")
    dns.start()
    for dest in ("example.net", "example.com"):
        dns.set(dest, "MX", ["10 mx.sink.demo"])
    dns.set("mx.sink.demo", "A", ["127.0.0.1"])
    dns.set("spf.sendgate.example", "TXT", ["v=spf1 ip4:127.0.0.0/8 -all"])
    dns.set(domain, "TXT", ["v=spf1 include:spf.sendgate.example ~all"])
    return dns, {"dns__servers": "127.0.0.1:%d" % dns.port}


def start_sink(var):
    """A local SMTP sink that receives what delivery sends; each message it
    gets is printed."""
    import sink as sinkmod
    sk = sinkmod.Sink("127.0.0.1", port=0, name="sink.demo")
    sk.start()
    return sk, {"delivery__enabled": "yes", "delivery__port": str(sk.port),
                "delivery__retry_first": "10s"}


def watch_sink(sk):
    """Prints each message the sink receives (runs in a thread)."""
    import threading

    def loop():
        seen = 0
        while True:
            with sk.lock:
                new = sk.messages[seen:]
                seen = len(sk.messages)
            for m in new:
                print("demo: the sink received a message from %s for %s (%d bytes, from %s)"
                      % (m.mail_from, ", ".join(m.rcpts), len(m.data), m.peer), flush=True)
            time.sleep(0.5)
    threading.Thread(target=loop, daemon=True).start()


def ensure_tenant(ctl, tenant, domain):
    names = [t["name"] for t in ctl("tenant", "list")]
    if tenant not in names:
        ctl.tenant_create(tenant)
    doms = {d["name"]: d for d in ctl("domain", "list", tenant)}
    if domain not in doms:
        ctl.domain_add(tenant, domain, operator_verified=True)
    elif not doms[domain].get("operator_verified") and doms[domain].get("state") != "verified":
        raise SystemExit("demo domain %s exists but is not sendable; remove ./var to start over"
                         % domain)
    # A domain from a run before DKIM keys existed (or sealed with another
    # master key) gets a fresh signing key.
    keys = ctl("dkim", "list", domain) or []
    if not any(k.get("state") == "signing" for k in keys):
        ctl("dkim", "rotate", domain, "--publish-delay", "0")
    return ctl.credential_create(tenant)


def main():
    build = h.build_dir()
    for exe in ("sendgate", "sendgatectl"):
        if not os.access(os.path.join(build, exe), os.X_OK):
            raise SystemExit("%s/%s not built: run make" % (build, exe))
    os.makedirs(VAR, exist_ok=True)
    tenant = os.environ.get("DEMO_TENANT", "demo")
    domain = os.environ.get("DEMO_DOMAIN", "demo.example")

    # The DKIM master key seals domain keys in the database: keep it with
    # the database under ./var so that later runs can still sign.
    mk = os.path.join(VAR, "dkim-master.key")
    if not os.path.exists(mk):
        fd = os.open(mk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
    h._MASTER_KEY = mk

    stoppers = []
    pg = None
    url = os.environ.get("SENDGATE_DATABASE_URL")
    try:
        if not url:
            print("demo: starting PostgreSQL under %s/pg" % VAR, flush=True)
            pg = h.Postgres(dir=os.path.join(VAR, "pg"), fsync=True)
            stoppers.append(pg.stop)
            url = pg.url
        ctl = h.Ctl(build, url)
        ctl.migrate()
        cred = ensure_tenant(ctl, tenant, domain)

        dns, dns_conf = start_dns(VAR, domain)
        stoppers.append(dns.stop)
        sink, sink_conf = start_sink(VAR)
        stoppers.append(sink.stop)
        watch_sink(sink)

        cert = h.make_cert(os.path.join(VAR, "tls"))
        overrides = dict(dns_conf)
        overrides.update(sink_conf)
        overrides["bounce__listen"] = "127.0.0.1:%d" % BOUNCE_PORT
        d = h.Daemon(build, None, os.path.join(VAR, "run"), cert=cert,
                     spool_dir=os.path.join(VAR, "spool"), submission_port=SUBMISSION_PORT,
                     smtps_port=SMTPS_PORT, start=False, database__url=url,
                     auth_fail_delay=None, **overrides)
        print("demo: starting %s/sendgate -c %s (log: %s)" % (build, d.config_path, d.logfile),
              flush=True)
        tail = h.LogTail(d.logfile, sys.stdout)
        try:
            d.start()
        except h.DaemonDied as e:
            raise SystemExit("demo: sendgate did not start:\n%s" % e)
        stoppers.insert(0, d.stop)
        tail.start()
        stoppers.insert(0, tail.stop)

        print("""
sendgate is running: submission 127.0.0.1:%d (STARTTLS), 127.0.0.1:%d (implicit TLS)
tenant %s, sendable domain %s, credential %s (secret shown once)

Send a message:

  swaks --server 127.0.0.1:%d -tls --auth PLAIN --auth-user %s --auth-password '%s' --from hello@%s --to someone@example.net

It is DKIM-signed, queued, and delivered to the demo's mail sink (the MX of
example.net on this machine's own DNS server, 127.0.0.1:%d); the sink prints
each message it receives below.

The queue: %s/sendgatectl -c %s queue list
What happened: %s/sendgatectl -c %s events --tenant %s
Bounces and complaints that come back after delivery (mailed to the VERP
envelope sender the sink shows) are taken on 127.0.0.1:%d ([bounce] listen).
Ctrl-C stops everything.
""" % (SUBMISSION_PORT, SMTPS_PORT, tenant, domain, cred["username"], SUBMISSION_PORT,
            cred["username"], cred["secret"], domain, dns.port, build, d.config_path, build,
            d.config_path, tenant, BOUNCE_PORT), flush=True)

        signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        while d.alive():
            time.sleep(0.5)
        print("demo: sendgate exited on its own (%r)" % d.proc.returncode if d.proc else "")
    except KeyboardInterrupt:
        print("\ndemo: stopping", flush=True)
    finally:
        for stop in stoppers:
            try:
                r = stop()
                if r not in (None, 0):
                    print("demo: stop returned %r" % (r,))
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                print("demo: while stopping: %s" % e)


if __name__ == "__main__":
    main()
