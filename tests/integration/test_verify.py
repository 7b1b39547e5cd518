"""DNS verification of sending domains, against a real DNS server on loopback
whose zone the tests change while sendgate runs.

`sendgatectl domain add/show/verify` (the records to publish, SPF merged
with one already there, per-record statuses, what to do next) and the
scheduled checks that move a domain pending -> partially_verified ->
verified -> broken -> verified again, which the running daemon learns
without a restart (MAIL FROM accepted the moment a domain verifies, refused
with 550 5.7.1 once a broken domain's grace period is over).

The scheduled checks run on a thread of the daemon (verify_thread_start).
When the daemon under test does not start it (log line
event=verify_started), the same thread runs in a small helper process
(verify_thread.c, built here against the build's libraries) on the
daemon's own config file.
"""

import os
import signal
import subprocess
import time

import pytest

import sgharness as h
from dnsserver import DNSServer

PLATFORM_SPF = "spf.sendgate.example"  # [platform] spf_include (default)
RP_DOMAIN = "rp.sendgate.example"  # [platform] return_path_domain (default)
DKIM_ZONE = "dkim.sendgate.example"  # [platform] dkim_zone (default)
RUA = "dmarc@sendgate.example"  # [platform] dmarc_rua (default)
HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def dns():
    srv = DNSServer(port=0).start()
    # The platform's own SPF record: every customer record includes it.
    srv.set(PLATFORM_SPF, "TXT", ["v=spf1 ip4:127.0.0.0/8 -all"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def vctl(build, pg, ctl, dns, tmp_path_factory):
    """sendgatectl with [dns] pointed at the test's DNS server."""
    path = str(tmp_path_factory.mktemp("vctl") / "sendgatectl.conf")
    with open(path, "w") as f:
        f.write("[database]\nurl = %s\n" % pg.url)
        f.write("[dkim]\nmaster_key_file = %s\n" % h.master_key_file())
        f.write("[dns]\nservers = 127.0.0.1:%d\ntimeout_ms = 300\ntries = 1\n" % dns.port)
    return h.Ctl(build, pg.url, config=path)


def new_domain(vctl, prefix="v", sub=""):
    """A new tenant with one new (pending) domain; (tenant, domain, add JSON)."""
    name = h.unique_name(prefix)
    vctl.tenant_create(name)
    dom = "%s%s.example" % (sub, name)
    return name, dom, vctl("domain", "add", name, dom)


def records(doc, kind):
    return [r for r in doc["records"] if r["kind"] == kind]


def publish(dns, doc, kinds=("spf", "dkim", "return_path", "dmarc")):
    """Publishes the records doc (domain add/show/verify JSON) lists, as the customer would."""
    for r in doc["records"]:
        if r["kind"] in kinds:
            dns.set(r["name"], r["type"], [r["value"]])


def unpublish(dns, doc, kinds):
    for r in doc["records"]:
        if r["kind"] in kinds:
            dns.remove(r["name"], r["type"])


def check(doc, kind, selector=None):
    """One record's verdict in a `domain verify` report."""
    rep = doc["report"]
    if kind != "dkim":
        return rep[kind]
    for c in rep["dkim"]:
        if c["selector"] == selector:
            return c
    raise AssertionError("no DKIM selector %s in %r" % (selector, rep["dkim"]))


def events(pg, dom):
    return [r[0] for r in pg.sql("SELECT type FROM events WHERE data->>'domain' = '%s'"
                                 " AND type LIKE 'domain.%%' ORDER BY id" % dom)]


def db_state(pg, dom):
    return pg.scalar("SELECT state FROM domains WHERE name = '%s'" % dom)


def step_index(steps, word):
    for i, s in enumerate(steps):
        if s.split(". ", 1)[1].startswith(word):
            return i
    return None


# ------------------------------------------------------- records to publish

def test_add_lists_every_record(vctl):
    _, dom, added = new_domain(vctl)
    assert added["zone"] == dom
    spf, = records(added, "spf")
    assert (spf["type"], spf["name"], spf["relative_name"]) == ("TXT", dom, "@")
    assert spf["value"] == "v=spf1 include:%s ~all" % PLATFORM_SPF
    rp, = records(added, "return_path")
    assert (rp["type"], rp["name"], rp["value"]) == ("CNAME", "rp." + dom, RP_DOMAIN)
    dmarc, = records(added, "dmarc")
    assert (dmarc["type"], dmarc["name"]) == ("TXT", "_dmarc." + dom)
    assert dmarc["value"] == "v=DMARC1; p=none; rua=mailto:%s" % RUA
    dkim = records(added, "dkim")
    assert sorted(r["selector"] for r in dkim) == ["sg1", "sg2"]
    for r in dkim:
        assert r["type"] == "CNAME"
        assert r["name"] == "%s._domainkey.%s" % (r["selector"], dom)
        assert r["value"].startswith(r["selector"] + ".") and r["value"].endswith("." + DKIM_ZONE)
    # The guide's order: SPF, DKIM, return path, DMARC.
    steps = added["next_steps"]
    order = [step_index(steps, w) for w in ("SPF", "DKIM", "Return path", "DMARC")]
    assert None not in order and order == sorted(order), steps

    # People get the same records in the text output.
    _, dom2, _ = new_domain(vctl)
    name = dom2.split(".")[0]
    vctl("domain", "show", dom2)  # exists
    r = vctl.raw("domain", "add", name, "second." + dom2, json_out=False)
    assert r.returncode == 0, r.stderr
    for text in ("v=spf1 include:%s ~all" % PLATFORM_SPF, "rp.second.%s" % dom2, RP_DOMAIN,
                 "_dmarc.second.%s" % dom2, "sg1._domainkey.second.%s" % dom2):
        assert text in r.stdout, (text, r.stdout)


def test_subdomain_dmarc_falls_back_to_org_domain(vctl, dns):
    name, dom, added = new_domain(vctl, sub="mail.")
    assert added["zone"] == dom[len("mail."):]
    dns.set("_dmarc." + added["zone"], "TXT", ["v=DMARC1; p=reject; rua=mailto:x@%s" % added["zone"]])
    v = vctl("domain", "verify", dom)
    assert check(v, "dmarc")["status"] == "verified", v["report"]["dmarc"]
    assert v["report"]["dmarc"]["policy"] == "reject"
    dmarc, = records(v, "dmarc")
    assert dmarc["action"] == "none"  # an existing policy is reported, not replaced


# --------------------------------------------------------- domain verify

def test_nothing_published_stays_pending(vctl, pg):
    _, dom, _ = new_domain(vctl)
    xmin = pg.scalar("SELECT xmin FROM domains WHERE name = '%s'" % dom)
    v = vctl("domain", "verify", dom)
    assert (v["previous_state"], v["state"]) == ("pending", "pending")
    # No change the daemons cache: the domains row is not rewritten.
    assert pg.scalar("SELECT xmin FROM domains WHERE name = '%s'" % dom) == xmin
    assert check(v, "spf")["status"] == "missing"
    assert check(v, "dkim", "sg1")["status"] == "missing"
    assert (v["required_ok"], v["required_total"]) == (0, 3)
    assert events(pg, dom) == []
    # Stored: the report, and a history row for the operator's check.
    assert pg.scalar("SELECT last_report->'spf'->>'status' FROM domain_verify v"
                     " JOIN domains d ON d.id = v.domain_id WHERE d.name = '%s'" % dom) == "missing"
    assert pg.scalar("SELECT count(*) FROM domain_checks c JOIN domains d ON d.id = c.domain_id"
                     " WHERE d.name = '%s' AND c.origin = 'operator'" % dom) == "1"


def test_spf_only(vctl, dns, pg):
    _, dom, added = new_domain(vctl)
    publish(dns, added, ["spf"])
    v = vctl("domain", "verify", dom)
    assert check(v, "spf")["status"] == "verified"
    assert check(v, "dkim", "sg1")["status"] == "missing"
    assert v["state"] == "partially_verified"
    assert v["event"] == "domain.partially_verified"
    assert events(pg, dom) == ["domain.partially_verified"]
    show = vctl("domain", "show", dom)
    assert records(show, "spf")[0]["status"] == "verified"
    assert records(show, "dkim")[0]["status"] == "missing"
    steps = show["next_steps"]
    assert step_index(steps, "SPF") is None, steps  # nothing left to do for SPF
    assert step_index(steps, "DKIM") == 0, steps
    assert step_index(steps, "DMARC") == len(steps) - 1, steps
    # The text form says the same.
    r = vctl.raw("domain", "show", dom, json_out=False)
    assert "What to do next" in r.stdout and "DKIM selector sg1" in r.stdout, r.stdout


def test_dkim_only(vctl, dns, pg):
    _, dom, added = new_domain(vctl)
    publish(dns, added, ["dkim"])
    v = vctl("domain", "verify", dom)
    assert check(v, "dkim", "sg1")["status"] == "verified"
    assert check(v, "dkim", "sg2")["status"] == "verified"
    assert check(v, "spf")["status"] == "missing"
    assert v["state"] == "partially_verified"
    assert step_index(v["next_steps"], "SPF") == 0, v["next_steps"]
    assert step_index(v["next_steps"], "DKIM") is None, v["next_steps"]


def test_verified_and_return_path(vctl, dns, pg):
    _, dom, added = new_domain(vctl)
    publish(dns, added, ["spf", "dkim"])
    v = vctl("domain", "verify", dom)
    assert v["state"] == "verified" and v["event"] == "domain.verified"
    assert events(pg, dom) == ["domain.verified"]
    assert check(v, "return_path")["status"] == "missing"
    assert pg.scalar("SELECT return_path_verified FROM domains WHERE name = '%s'" % dom) == "f"
    publish(dns, added, ["return_path"])
    v = vctl("domain", "verify", dom)
    assert check(v, "return_path")["status"] == "verified"
    assert v["state"] == "verified" and v["event"] is None
    assert pg.scalar("SELECT return_path_verified FROM domains WHERE name = '%s'" % dom) == "t"
    # Nothing changed: the domains row is left alone (each UPDATE of it makes
    # every daemon reload its domain cache).
    xmin = pg.scalar("SELECT xmin FROM domains WHERE name = '%s'" % dom)
    assert vctl("domain", "verify", dom)["state"] == "verified"
    assert pg.scalar("SELECT xmin FROM domains WHERE name = '%s'" % dom) == xmin
    # The text form of verify: one line per record.
    r = vctl.raw("domain", "verify", dom, json_out=False)
    assert r.returncode == 0 and "%s: verified (unchanged)" % dom in r.stdout, r.stdout
    assert "return_path" in r.stdout and "rp.%s" % dom in r.stdout


def test_cname_with_wrong_target(vctl, dns):
    _, dom, added = new_domain(vctl)
    publish(dns, added)
    wrong = "sg1.someone-else.dkim.other.example"
    dns.set("sg1._domainkey." + dom, "CNAME", [wrong])
    v = vctl("domain", "verify", dom)
    c = check(v, "dkim", "sg1")
    assert c["status"] == "mismatch" and c["found"] == wrong, c
    assert wrong in c["detail"]
    assert check(v, "dkim", "sg2")["status"] == "verified"
    assert v["state"] == "partially_verified"
    right = [r for r in records(v, "dkim") if r["selector"] == "sg1"][0]["value"]
    steps = [s for s in v["next_steps"] if "DKIM selector sg1" in s]
    assert len(steps) == 1 and right in steps[0] and wrong in steps[0], v["next_steps"]


def test_txt_mode_keys(vctl, dns):
    name = h.unique_name("vt")
    vctl.tenant_create(name)
    dom = "%s.example" % name
    added = vctl("domain", "add", name, dom, "--dkim-mode", "txt")
    dkim, = records(added, "dkim")  # one key: its selector, as TXT
    assert dkim["type"] == "TXT" and dkim["value"].startswith("v=DKIM1; k=rsa; p="), dkim
    assert dkim["name"] == "%s._domainkey.%s" % (dkim["selector"], dom)
    publish(dns, added, ["spf", "dkim"])
    v = vctl("domain", "verify", dom)
    assert check(v, "dkim", dkim["selector"])["status"] == "verified"
    assert v["state"] == "verified"
    # Another key published there (say, an old one pasted back): mismatch, and broken.
    dns.set(dkim["name"], "TXT", ["v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"])
    v = vctl("domain", "verify", dom)
    assert check(v, "dkim", dkim["selector"])["status"] == "mismatch"
    assert (v["state"], v["event"]) == ("broken", "domain.broken")


def _dkim_names(doc):
    return sorted((r["name"], r["type"], r["value"]) for r in records(doc, "dkim"))


def _dkim_keys(doc):
    return sorted((k["name"], k["record_type"], k["value"]) for k in doc["dkim"])


def test_dkim_records_agree_with_the_keys(vctl, dns, tmp_path):
    """The DKIM records checked and listed with the other records are the
    ones the keys need (the "dkim" list of domain show), in every mode,
    after rotations and imports; verify requires each of them."""
    name = h.unique_name("vk")
    vctl.tenant_create(name)
    both, txt = "both.%s.example" % name, "txt.%s.example" % name
    vctl("domain", "add", name, both, "--algorithm", "both")
    vctl("domain", "add", name, txt, "--dkim-mode", "txt")
    vctl("dkim", "rotate", txt)  # a second key, published ahead of signing
    pem = str(tmp_path / "own.pem")
    h.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", pem])
    vctl("dkim", "import", both, "own2024", pem)
    for dom, n in ((both, 5), (txt, 2)):
        show = vctl("domain", "show", dom)
        assert _dkim_names(show) == _dkim_keys(show), show
        assert len(records(show, "dkim")) == n, _dkim_names(show)
    show = vctl("domain", "show", both)
    assert sorted(r["selector"] for r in records(show, "dkim")) == [
        "own2024", "sg1", "sg1e", "sg2", "sg2e"]
    # All but one published: not verified, and the missing one is named.
    publish(dns, show, ["spf", "dkim"])
    dns.remove("sg2e._domainkey." + both, "CNAME")
    v = vctl("domain", "verify", both)
    assert v["state"] == "partially_verified"
    assert [c["selector"] for c in v["report"]["dkim"] if c["status"] != "verified"] == ["sg2e"]
    publish(dns, show, ["dkim"])
    assert vctl("domain", "verify", both)["state"] == "verified"


def test_existing_spf_merged(vctl, dns):
    _, dom, added = new_domain(vctl)
    publish(dns, added, ["dkim"])
    theirs = "v=spf1 ip4:192.0.2.10 include:_spf.mailer-%s ~all" % dom
    dns.set("_spf.mailer-" + dom, "TXT", ["v=spf1 ip4:198.51.100.0/24 ~all"])
    dns.set(dom, "TXT", [theirs, "google-site-verification=abc"])
    v = vctl("domain", "verify", dom)
    assert check(v, "spf")["status"] in ("mismatch", "missing"), check(v, "spf")
    assert check(v, "spf")["found"] == theirs
    show = vctl("domain", "show", dom)
    spf, = records(show, "spf")
    merged = "v=spf1 ip4:192.0.2.10 include:_spf.mailer-%s include:%s ~all" % (dom, PLATFORM_SPF)
    assert spf["action"] == "replace" and spf["value"] == merged and spf["current"] == theirs, spf
    assert merged in show["next_steps"][0], show["next_steps"]
    # The customer publishes the merged record in place of theirs: verified.
    dns.set(dom, "TXT", [merged, "google-site-verification=abc"])
    v = vctl("domain", "verify", dom)
    assert check(v, "spf")["status"] == "verified"
    assert v["state"] == "verified"


def test_two_spf_records(vctl, dns):
    _, dom, added = new_domain(vctl)
    publish(dns, added, ["dkim"])
    ours = "v=spf1 include:%s ~all" % PLATFORM_SPF
    dns.set(dom, "TXT", [ours, "v=spf1 ip4:192.0.2.1 -all"])
    v = vctl("domain", "verify", dom)
    assert check(v, "spf")["status"] == "multiple_records", check(v, "spf")
    assert v["state"] == "partially_verified"
    show = vctl("domain", "show", dom)
    spf, = records(show, "spf")
    assert spf["action"] == "replace" and spf["value"].startswith("v=spf1 "), spf
    assert "exactly one SPF record" in show["next_steps"][0], show["next_steps"]


def _chain(dns, dom, links):
    """An SPF record for dom with our include and a chain of `links` nested includes."""
    names = ["c%d.chain-%s" % (i, dom) for i in range(links)]
    for i, n in enumerate(names):
        nxt = "include:%s " % names[i + 1] if i + 1 < links else "ip4:192.0.2.1 "
        dns.set(n, "TXT", ["v=spf1 %s~all" % nxt])
    dns.set(dom, "TXT", ["v=spf1 include:%s include:%s ~all" % (PLATFORM_SPF, names[0])])


def test_spf_lookup_limit(vctl, dns):
    # 1 (our include) + 9 = 10 lookups: allowed (RFC 7208 4.6.4).
    _, dom, added = new_domain(vctl)
    publish(dns, added, ["dkim"])
    _chain(dns, dom, 9)
    v = vctl("domain", "verify", dom)
    assert check(v, "spf")["status"] == "verified", check(v, "spf")
    assert v["report"]["spf"]["lookups"] == 10
    # 1 + 10 = 11: too many, and the domain is not verified.
    _, dom, added = new_domain(vctl)
    publish(dns, added, ["dkim"])
    _chain(dns, dom, 10)
    v = vctl("domain", "verify", dom)
    assert check(v, "spf")["status"] == "too_many_lookups", check(v, "spf")
    assert v["report"]["spf"]["lookups"] > 10
    assert v["state"] == "partially_verified"


def test_servfail_and_timeout(vctl, dns, pg):
    # A pending domain behind a failing server: the failure is named.
    _, dom, added = new_domain(vctl)
    dns.servfail(dom)
    try:
        v = vctl("domain", "verify", dom)
    finally:
        dns.clear_behaviour(dom)
    c = check(v, "spf")
    assert c["status"] == "error" and c["dns"] == "servfail", c
    assert v["state"] == "pending"

    # A verified domain: DNS failures do not break it (they are not the customer's doing).
    publish(dns, added, ["spf", "dkim"])
    assert vctl("domain", "verify", dom)["state"] == "verified"
    dns.servfail(dom)
    try:
        v = vctl("domain", "verify", dom)
    finally:
        dns.clear_behaviour(dom)
    assert check(v, "spf")["status"] == "error"
    assert v["state"] == "verified" and v["inconclusive"], v
    sel = "sg1._domainkey." + dom
    dns.timeout(sel)
    try:
        t0 = time.monotonic()
        v = vctl("domain", "verify", dom)
        took = time.monotonic() - t0
    finally:
        dns.clear_behaviour(sel)
    c = check(v, "dkim", "sg1")
    assert c["status"] == "error" and c["dns"] == "timeout", c
    assert v["state"] == "verified"
    assert took < 10 * h.SLOW, "a timeout took %.1fs with timeout_ms=300 tries=1" % took
    assert events(pg, dom) == ["domain.verified"]


def test_broken_and_restored_by_operator_check(vctl, dns, pg):
    _, dom, added = new_domain(vctl)
    publish(dns, added)
    assert vctl("domain", "verify", dom)["state"] == "verified"
    unpublish(dns, added, ["spf"])
    v = vctl("domain", "verify", dom)
    assert (v["previous_state"], v["state"], v["event"]) == ("verified", "broken", "domain.broken")
    row = pg.sql("SELECT broken_since IS NOT NULL, failing_records FROM domains"
                 " WHERE name = '%s'" % dom)[0]
    assert row[0] == "t" and "spf %s (missing)" % dom in row[1], row
    show = vctl("domain", "show", dom)
    assert show["state"] == "broken" and show["broken_since"]
    assert step_index(show["next_steps"], "SPF") == 0
    # Still broken on the next check: broken_since stays where it was.
    since = pg.scalar("SELECT broken_since FROM domains WHERE name = '%s'" % dom)
    assert vctl("domain", "verify", dom)["state"] == "broken"
    assert pg.scalar("SELECT broken_since FROM domains WHERE name = '%s'" % dom) == since
    publish(dns, added, ["spf"])
    v = vctl("domain", "verify", dom)
    assert (v["state"], v["event"]) == ("verified", "domain.restored")
    assert pg.sql("SELECT broken_since IS NULL, failing_records FROM domains"
                  " WHERE name = '%s'" % dom)[0] == ["t", ""]
    assert events(pg, dom) == ["domain.verified", "domain.broken", "domain.restored"]
    # Each state change is in the history with its per-record statuses.
    hist = pg.sql("SELECT c.previous_state, c.state, c.report->'spf'->>'status' FROM domain_checks c"
                  " JOIN domains d ON d.id = c.domain_id WHERE d.name = '%s'"
                  " AND c.previous_state <> c.state ORDER BY c.id" % dom)
    assert hist == [["pending", "verified", "verified"], ["verified", "broken", "missing"],
                    ["broken", "verified", "verified"]], hist
    # domain show lists them, newest first.
    shown = [(e["previous_state"], e["state"]) for e in vctl("domain", "show", dom)["history"]
             if e["previous_state"] != e["state"]]
    assert shown == [("broken", "verified"), ("verified", "broken"), ("pending", "verified")]
    r = vctl.raw("domain", "show", dom, json_out=False)
    assert "verified -> broken" in r.stdout and "spf=missing" in r.stdout, r.stdout


def test_verify_unknown_domain(vctl):
    r = vctl.raw("domain", "verify", "no-such-domain.example")
    assert r.returncode == 1 and "no domain named" in r.stderr, (r.returncode, r.stderr)
    r = vctl.raw("domain", "verify")
    assert r.returncode == 2


# ------------------------------------------------------ scheduled checks

_HELPER = {}


def verify_thread_exe(build, tmpdir):
    """verify_thread.c built against the build's libraries (once per build)."""
    if build not in _HELPER:
        exe = os.path.join(tmpdir, "verify_thread")
        libs = sorted(os.path.join(build, f) for f in os.listdir(build)
                      if f.startswith("lib") and f.endswith(".a"))
        pkgs = ["libevent_core", "libevent_extra", "libevent_openssl", "libevent_pthreads",
                "libcares", "libpq", "openssl", "jansson", "inih", "libpsl"]
        cflags = h.run(["pkg-config", "--cflags"] + pkgs).stdout.split()
        ldlibs = h.run(["pkg-config", "--libs"] + pkgs).stdout.split()
        san = ["-fsanitize=address,undefined"] if "asan" in build else []
        h.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-I", h.REPO] + cflags + san +
              ["-o", exe, os.path.join(HERE, "verify_thread.c"), "-Wl,--start-group"] + libs +
              ["-Wl,--end-group"] + ldlibs + ["-lpthread", "-lm"], timeout=120)
        _HELPER[build] = exe
    return _HELPER[build]


class Scheduler:
    """Makes sure the scheduled checks run for daemon d: the daemon's own
    thread, else verify_thread.c in a process of its own on d's config."""

    def __init__(self, d, build, tmpdir):
        self.proc = None
        time.sleep(0.3)
        if "event=verify_started" in d.log_text():
            return
        exe = verify_thread_exe(build, tmpdir)
        self.log = open(os.path.join(tmpdir, "verify_thread-%d.log" % d.submission_port), "w")
        self.proc = subprocess.Popen([exe, d.config_path], stdout=self.log, stderr=self.log)

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=15)
        self.log.close()
        assert rc == 0, "verify_thread exited %r" % rc


def fast_daemon(daemon_factory, dns, grace):
    return daemon_factory(dns__servers="127.0.0.1:%d" % dns.port, dns__timeout_ms="300",
                          dns__tries="1", verify__new_interval="1s", verify__pending_interval="1s",
                          verify__verified_interval="1s", verify__broken_interval="1s",
                          verify__grace_period=grace)


@pytest.fixture
def sched_daemons(daemon_factory, dns, build, tmp_path):
    """Two daemons on the shared database, grace periods of 1 hour and 2 s,
    each with its scheduler: two schedulers share the due domains."""
    long_grace = fast_daemon(daemon_factory, dns, "1h")
    short_grace = fast_daemon(daemon_factory, dns, "2s")
    scheds = [Scheduler(d, build, str(tmp_path)) for d in (long_grace, short_grace)]
    yield long_grace, short_grace
    for s in scheds:
        s.stop()


def mail_from(d, tenant, dom):
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(tenant)
    r = c.cmd("MAIL FROM:<app@%s>" % dom)
    c.quit()
    return r


def test_scheduled_checks_follow_the_zone(sched_daemons, vctl, dns, pg):
    long_grace, short_grace = sched_daemons
    t = h.setup_tenant(vctl, verified=False)
    dom = t.domain
    pid = long_grace.proc.pid
    r = mail_from(long_grace, t, dom)
    assert (r.code, r.enhanced) == (550, "5.7.1"), r

    # Checked on schedule while nothing is published: still pending.
    h.eventually(lambda: int(pg.scalar(
        "SELECT checks FROM domain_verify v JOIN domains d ON d.id = v.domain_id"
        " WHERE d.name = '%s'" % dom)) >= 2, timeout=10, what="scheduled checks")
    assert db_state(pg, dom) == "pending"

    # Records added late: the next scheduled check verifies, the daemon learns it.
    doc = vctl("domain", "show", dom)
    publish(dns, doc, ["spf", "dkim"])
    h.eventually(lambda: db_state(pg, dom) == "verified", timeout=10, what="verified")
    h.eventually(lambda: mail_from(long_grace, t, dom).code == 250, timeout=5,
                 what="MAIL FROM accepted once verified")
    assert long_grace.proc.pid == pid and long_grace.alive()

    # Records removed: broken; sending goes on during the grace period...
    unpublish(dns, doc, ["dkim"])
    h.eventually(lambda: db_state(pg, dom) == "broken", timeout=10, what="broken")
    assert events(pg, dom)[-1] == "domain.broken"
    assert mail_from(long_grace, t, dom).code == 250
    # ...and is refused once it is over (2 s on the second daemon), naming the domain.
    def refused():
        r = mail_from(short_grace, t, dom)
        return r if r.code == 550 else None
    r = h.eventually(refused, timeout=10, interval=0.5, what="550 after the grace period")
    assert r.enhanced == "5.7.1" and dom in r.text, r
    assert "sg1._domainkey.%s (missing)" % dom in r.text, r  # the broken records, named
    assert mail_from(long_grace, t, dom).code == 250

    # Restored: verified again, event recorded, accepted everywhere.
    publish(dns, doc, ["dkim"])
    h.eventually(lambda: db_state(pg, dom) == "verified", timeout=10, what="restored")
    assert events(pg, dom) == ["domain.verified", "domain.broken", "domain.restored"]
    h.eventually(lambda: mail_from(short_grace, t, dom).code == 250, timeout=5,
                 what="MAIL FROM accepted once restored")


def test_scheduled_checks_are_spread_and_never_doubled(sched_daemons, vctl, dns, pg):
    """Every due domain is checked once per interval even with two schedulers
    (the harness and/or both daemons' threads) on one database."""
    name = h.unique_name("sp")
    vctl.tenant_create(name)
    doms = ["d%d.%s.example" % (i, name) for i in range(6)]
    # A name DNS cannot take (written by hand into the table): skipped
    # and put back, never in the way of the others.
    bad = "bad_label.%s.example" % name
    pg.sql("INSERT INTO domains (tenant_id, name) SELECT id, '%s' FROM tenants"
           " WHERE name = '%s'" % (bad, name))
    t0 = time.monotonic()  # each domain is due from its creation on
    for d in doms:
        # Each check then lasts a DNS timeout (300 ms): long enough for the
        # two schedulers' batches to overlap, which is when a domain could
        # be taken by both.
        dns.timeout("_dmarc." + d)
        vctl("domain", "add", name, d)
    time.sleep(4 * h.SLOW)
    rows = pg.sql("SELECT v.checks, extract(epoch FROM v.next_check_at - now()), d.name"
                  " FROM domain_verify v JOIN domains d ON d.id = v.domain_id"
                  " WHERE d.name LIKE '%%.%s.example'" % name)
    elapsed = time.monotonic() - t0
    assert len(rows) == len(doms) + 1
    assert pg.sql("SELECT checks, last_checked_at IS NOT NULL FROM domain_verify v"
                  " JOIN domains d ON d.id = v.domain_id WHERE d.name = '%s'" % bad) == [["0", "t"]]
    rows = [r for r in rows if r[2] != bad]
    for checks, due_in, _ in rows:
        # Interval 1 s: about one check a second each, whichever scheduler
        # takes it; two schedulers checking one domain would double that.
        assert 2 <= int(checks) <= elapsed + 2, (elapsed, rows)
        assert float(due_in) <= 1.5, rows
    # Only state changes and changed statuses make history rows (here: none
    # after the first check), so checking often does not grow the table.
    # Counted before the DNS behaviour changes: once _dmarc answers, the next
    # check of each domain rightly records a changed status.
    history = int(pg.scalar("SELECT count(*) FROM domain_checks c JOIN domains d"
                            " ON d.id = c.domain_id WHERE d.name LIKE 'd_.%s.example'"
                            % name))
    for d in doms:
        dns.clear_behaviour("_dmarc." + d)
    assert history == len(doms)


def test_scheduled_checks_never_burst(sched_daemons, vctl, pg):
    """Many domains due at once (a bulk import) are checked at a bounded
    rate: 50 checks a second per scheduler at most."""
    name = h.unique_name("bulk")
    vctl.tenant_create(name)
    n = 200
    t0 = time.monotonic()
    pg.sql("INSERT INTO domains (tenant_id, name) SELECT t.id, 'b' || i || '.%s.example'"
           " FROM tenants t, generate_series(1, %d) i WHERE t.name = '%s'" % (name, n, name))
    count = ("SELECT count(*) FILTER (WHERE v.checks > 0), coalesce(sum(v.checks), 0)"
             " FROM domain_verify v JOIN domains d ON d.id = v.domain_id"
             " WHERE d.name LIKE '%%.%s.example'" % name)
    h.eventually(lambda: int(pg.sql(count)[0][0]) == n, timeout=30, interval=0.2,
                 what="every bulk domain checked once")
    checked, total = (int(x) for x in pg.sql(count)[0])
    elapsed = time.monotonic() - t0
    # Two schedulers (one per daemon), each a batch of 16 ahead of its rate.
    assert total <= 2 * 50 * elapsed + 2 * 16, (total, elapsed)
    assert elapsed >= n / (2 * 50) - 0.5, "%d domains checked in %.2fs" % (n, elapsed)
