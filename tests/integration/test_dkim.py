"""DKIM end to end: mail submitted over SMTP leaves the spool signed, and
independent verifiers accept it with the keys that DNS publishes.

The public keys are served by a real DNS server on loopback (dnsserver.py)
exactly as a customer and the platform would publish them: in CNAME mode the
customer's `SEL._domainkey.D CNAME SEL.<label>.<dkim zone>` records from
`sendgatectl domain show` plus the platform zone's TXT records from
`sendgatectl dkim zone`; in TXT mode the customer's TXT records. Verifiers:
dkimpy (dnspython lookups), Perl Mail::DKIM (Net::DNS lookups) and
opendkim-testmsg (the C resolver, pointed at the DNS server through a
private /etc/resolv.conf in its own mount namespace: see dkim_verify.py).
Mail::DKIM on Debian 12 has no Ed25519 support (it needs CryptX), so
Ed25519 signatures are checked by dkimpy and opendkim only.
"""

import base64
import os
import random
import re
import smtplib
import subprocess
import tempfile
import time

import pytest

import dkim_verify as dv
import sgharness as h
from dnsserver import DNSServer

BIG = "64M"


# ------------------------------------------------------------------ DNS

def _dns_on_port_53():
    """A DNS server on 127.0.53.N:53 (opendkim's resolver cannot use another
    port), else one on 127.0.0.1:<free port> (opendkim tests then skip)."""
    hosts = ["127.0.53.%d" % n for n in random.sample(range(2, 255), 20)]
    for host in hosts:
        try:
            return DNSServer(port=53, host=host)
        except OSError:
            continue
    return DNSServer(port=0)


class Publisher:
    """Keeps the test DNS zone equal to what the customer and the platform
    publish right now."""

    def __init__(self, dns, ctl):
        self.dns, self.ctl = dns, ctl
        self.platform = set()
        self.customer = {}  # domain -> {(name, type)}

    def domain(self, domain):
        """Publishes the customer's records of domain as `domain show` lists
        them (removing records it no longer lists); returns the show JSON."""
        info = self.ctl("domain", "show", domain)
        now = set()
        for k in info["dkim"]:
            if k["record_type"] == "CNAME":
                self.dns.set(k["name"], "CNAME", [k["value"]])
                now.add((k["name"], "CNAME"))
            elif k["record_type"] == "TXT" and k.get("value"):
                self.dns.set(k["name"], "TXT", [k["value"]])
                now.add((k["name"], "TXT"))
        for name, rtype in self.customer.get(domain, set()) - now:
            self.dns.remove(name, rtype)
        self.customer[domain] = now
        return info

    def zone(self):
        """Publishes the platform zone from `dkim zone` (and withdraws names
        it no longer lists); returns its records."""
        recs = self.ctl("dkim", "zone")
        by_name = {}
        for r in recs:
            assert r["type"] == "TXT", r
            assert set(r) >= {"name", "type", "ttl", "value", "domain", "selector"}, r
            by_name.setdefault(r["name"], []).append(r["value"])
        for name in self.platform - set(by_name):
            self.dns.remove(name, "TXT")
        for name, values in by_name.items():
            self.dns.set(name, "TXT", values)
        self.platform = set(by_name)
        return recs


@pytest.fixture(scope="module")
def dns():
    srv = _dns_on_port_53()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def publish(dns, ctl):
    return Publisher(dns, ctl)


# ------------------------------------------------------------- tenants

class Domains:
    pass


@pytest.fixture(scope="module")
def doms(ctl, publish):
    """One tenant with a domain per publishing mode / algorithm, all
    published in DNS."""
    name = h.unique_name("dk")
    t = h.setup_tenant(ctl, name=name, domain="cname.%s.example" % name)
    d = Domains()
    d.tenant = t
    d.cname = t.domain
    d.txt = "txt.%s.example" % name
    d.both = "both.%s.example" % name
    d.ed = "ed.%s.example" % name
    d.rot = "rot.%s.example" % name
    d.imp = "imp.%s.example" % name
    d.rot2 = "rot2.%s.example" % name
    d.swap = "swap.%s.example" % name
    ctl("domain", "add", name, d.txt, "--dkim-mode", "txt", "--operator-verified")
    ctl("domain", "add", name, d.both, "--algorithm", "both", "--operator-verified")
    ctl("domain", "add", name, d.ed, "--algorithm", "ed25519", "--operator-verified")
    ctl("domain", "add", name, d.rot, "--algorithm", "both", "--operator-verified")
    ctl("domain", "add", name, d.imp, "--dkim-mode", "txt", "--operator-verified")
    ctl("domain", "add", name, d.rot2, "--operator-verified")
    # Ed25519: its key is made in no time, so the rotation commits right
    # at the instant it names as the switch.
    ctl("domain", "add", name, d.swap, "--algorithm", "ed25519", "--operator-verified")
    for dom in (d.cname, d.txt, d.both, d.ed, d.rot, d.imp, d.rot2):
        publish.domain(dom)
    publish.zone()
    return d


@pytest.fixture(scope="module")
def relaxed(module_daemon_factory, doms):
    """The default canonicalization (relaxed/relaxed)."""
    return module_daemon_factory(max_message_size=BIG)


@pytest.fixture(scope="module")
def simple(module_daemon_factory, doms):
    return module_daemon_factory(max_message_size=BIG, dkim__canonicalization="simple/simple")


@pytest.fixture(scope="module", params=["relaxed", "simple"])
def canon_daemon(request):
    """Each daemon in turn, with the canonicalization it is set to."""
    return request.getfixturevalue(request.param), "%s/%s" % (request.param, request.param)


# ------------------------------------------------------------- helpers

class Refused(AssertionError):
    def __init__(self, code, resp):
        super().__init__("end of data: %d %r" % (code, resp))
        self.code, self.resp = code, resp


def submit_during_switch(daemon, tenant, m, sender):
    """submit(), retrying the 451 4.3.0 that test_no_refusal_during_key_switch
    is about, so that the rotation tests check what they are about."""
    for _ in range(20):
        try:
            return submit(daemon, tenant, m, sender)
        except Refused as e:
            if e.code != 451:
                raise
            time.sleep(0.1)
    return submit(daemon, tenant, m, sender)


def submit(daemon, tenant, msg, sender, rcpts=("rcpt@example.net",), options=()):
    """Sends msg over STARTTLS + AUTH with smtplib; returns the queued bytes
    read back from the spool."""
    s = smtplib.SMTP("127.0.0.1", daemon.submission_port, local_hostname="client.test",
                     timeout=120 * h.SLOW)
    try:
        s.starttls(context=h.client_tls_context())
        s.ehlo("client.test")
        s.login(tenant.username, tenant.secret)
        code, resp = s.mail(sender, list(options))
        assert code == 250, "MAIL FROM: %d %r" % (code, resp)
        for r in rcpts:
            code, resp = s.rcpt(r)
            assert code == 250, "RCPT TO %s: %d %r" % (r, code, resp)
        code, resp = s.data(msg)
        if code != 250:
            raise Refused(code, resp)
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass
    m = re.search(r"queued as ([0-9A-Z]+)", resp.decode())
    assert m, "no queue id in %r" % resp
    stored = h.spooled(daemon, m.group(1)).message
    return stored


def msg(frm, subject="dkim test", body=b"hello\r\n", headers=(), to="rcpt@example.net"):
    return h.make_message(frm, to=to, subject=subject, body=body, extra_headers=headers)


def check_tags(stored, domain, canon, expect):
    """Checks the DKIM-Signature headers' tags; expect: [(selector, a=)]."""
    tags = dv.signature_tags(stored)
    got = sorted((t.get("s"), t.get("a")) for t in tags)
    assert got == sorted(expect), "signatures %r, expected %r" % (got, expect)
    for t in tags:
        assert t.get("v") == "1", t
        assert t.get("d") == domain, "d=%s but the From domain is %s" % (t.get("d"), domain)
        assert t.get("c") == canon, "c=%s, configured %s" % (t.get("c"), canon)
        assert "l" not in t, "l= must never be used: %r" % t
        assert t.get("bh") and t.get("b"), t
        assert abs(int(t["t"]) - time.time()) < 600, "t=%s is not now" % t.get("t")
        hdrs = [x.lower() for x in t["h"].split(":")]
        assert hdrs.count("from") >= 2, "From is not oversigned: h=%s" % t["h"]
    head = stored.split(b"\r\n\r\n", 1)[0]
    for raw in re.findall(rb"(?im)^dkim-signature:.*\r\n(?:[ \t].*(?:\r\n|$))*", head + b"\r\n"):
        for line in raw.replace(b"\r", b"").split(b"\n"):
            # RFC 5322 2.1.1: no more than 78 characters, CRLF excluded.
            assert len(line) <= 78, "DKIM-Signature line of %d columns: %r" % (len(line), line)
    return tags


def verify(stored, dns, expect, opendkim=True):
    """Every signature must verify with every verifier that supports it."""
    domain = dv.signature_tags(stored)[0]["d"] if dv.signature_tags(stored) else None
    py = dv.dkimpy(stored, dns.host, dns.port)
    assert len(py) == len(expect), py
    for s in py:
        assert s.ok, "dkimpy rejects the %s signature s=%s d=%s: %s" % (
            s.algorithm, s.selector, s.domain, s.detail)
    rsa = [e for e in expect if e[1] == "rsa-sha256"]
    if rsa:
        pl = dv.mail_dkim(stored, dns.host, dns.port)
        assert len(pl) == len(expect), "Mail::DKIM saw %r" % (pl,)
        for s in pl:
            if s.algorithm == "rsa-sha256":
                assert s.ok, "Mail::DKIM rejects s=%s d=%s: %s" % (s.selector, s.domain, s.detail)
    if opendkim and dns.port == 53 and dv.opendkim_available():
        ok, detail = dv.opendkim(stored, dns.host)
        assert ok, "opendkim-testmsg rejects the message (d=%s): %s; message kept in %s" % (
            domain, detail, keep(stored))
    return py


def keep(stored):
    """Saves a message a verifier rejected, for the failure report."""
    fd, path = tempfile.mkstemp(prefix="sgdkim-rejected-", suffix=".eml", dir="/tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(stored)
    return path


def fails_everywhere(stored, dns, what):
    py = dv.dkimpy(stored, dns.host, dns.port)
    assert py and not any(s.ok for s in py), "dkimpy accepts %s: %r" % (what, py)
    pl = dv.mail_dkim(stored, dns.host, dns.port)
    assert pl and not any(s.ok for s in pl), "Mail::DKIM accepts %s: %r" % (what, pl)
    if dns.port == 53 and dv.opendkim_available():
        ok, detail = dv.opendkim(stored, dns.host)
        assert not ok, "opendkim-testmsg accepts %s" % what


RSA = "rsa-sha256"
ED = "ed25519-sha256"


def corpus(domain):
    """(name, message bytes, MAIL options, recipients)."""
    frm = "sender@" + domain
    out = []
    out.append(("plain", msg(frm), (), None))
    latin1 = ("Caf\xe9 cr\xe8me br\xfbl\xe9e \xe0 la fran\xe7aise\r\n" * 20).encode("latin-1")
    out.append(("8bit", msg(frm, body=latin1, headers=("MIME-Version: 1.0",
                "Content-Type: text/plain; charset=iso-8859-1",
                "Content-Transfer-Encoding: 8bit")), ("BODY=8BITMIME",), None))
    utf8 = ("Grüße aus Köln — 東京 🚀\r\n" * 30).encode()
    m = ("From: Jürgen Müller <%s>\r\nTo: Zoë <rcpt@example.net>\r\n"
         "Subject: Grüße — テスト 🚀\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
         "Message-ID: <utf8.%d@client.test>\r\nMIME-Version: 1.0\r\n"
         "Content-Type: text/plain; charset=utf-8\r\n"
         "Content-Transfer-Encoding: 8bit\r\n\r\n" % (frm, random.randrange(1 << 30))).encode() + utf8
    out.append(("utf8", m, ("SMTPUTF8", "BODY=8BITMIME"), ("zoë@例え.example",)))
    long_subject = "\r\n ".join(" ".join("word%03d" % (i * 10 + j) for j in range(10))
                                 for i in range(18))
    folded = ("X-Long: " + "\r\n\t".join("segment-%02d-%s" % (i, "x" * 60) for i in range(30)))
    m = msg(frm, subject=long_subject, headers=(
        folded, "Subject-Extra:   spaced    value   ",
        "cC: <a@example.net>,\r\n    <b@example.net>,\r\n\t<c@example.net>",
        "rEPLY-tO:   <reply@%s>   " % domain,
        "References: " + "\r\n ".join("<ref%d@x.example>" % i for i in range(40))),
        body=b"body line with trailing space   \r\n\ttabbed  \r\n\r\n\r\n\r\n")
    out.append(("long-folded", m, (), None))
    rcpts = tuple("r%03d@example.net" % i for i in range(100))
    to = ",\r\n ".join("<%s>" % r for r in rcpts[:50])
    m = ("From: <%s>\r\nTo: %s\r\nCc: %s\r\nSubject: many\r\n"
         "Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <many@client.test>\r\n\r\nhi all\r\n"
         % (frm, to, ",\r\n ".join("<%s>" % r for r in rcpts[50:]))).encode()
    out.append(("many-rcpts", m, (), rcpts))
    m = ("From: <%s>\r\nTo: <rcpt@example.net>\r\nSubject: empty\r\n"
         "Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n" % frm).encode()
    out.append(("empty-body", m, (), None))
    m = ("From: <%s>\r\nTo: <rcpt@example.net>\r\nSubject: no separator\r\n"
         "Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n" % frm).encode()
    out.append(("headers-only", m, (), None))
    m = ("Received: from a by b; Sun, 22 Nov 2026 09:00:00 +0000\r\n"
         "Received: from c by d; Sun, 22 Nov 2026 09:01:00 +0000\r\n"
         "From: <%s>\r\nTo: <one@example.net>\r\nSubject: repeats\r\n"
         "Comments: 1\r\nComments: 2\r\nKeywords: a\r\nkeywords: b\r\n"
         "Resent-To: <r1@example.net>\r\nResent-To: <r2@example.net>\r\n"
         "X-Tag: one\r\nX-Tag: two\r\nX-Tag: three\r\n"
         "Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n"
         ".leading dot line\r\n..two dots\r\n.\r\nend\r\n" % frm).encode()
    out.append(("repeated-headers", m, (), None))
    # RFC 5322 allows To and Subject once; submitted mail is not always so
    # tidy and its signature must still hold (both copies are signed).
    m = ("From: <%s>\r\nTo: <one@example.net>\r\nTo: <two@example.net>\r\n"
         "Subject: first\r\nSubject: second\r\nCc: <c1@example.net>\r\nCc: <c2@example.net>\r\n"
         "Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\n" % frm).encode()
    out.append(("repeated-singletons", m, (), None))
    return out


CORPUS_NAMES = [c[0] for c in corpus("x.example")]


# --------------------------------------------------------------- tests

@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_verifies(canon_daemon, doms, dns, name):
    """Every kind of message, in CNAME (RSA) and TXT mode, both
    canonicalizations: the spool holds the sent bytes plus a signature that
    all three verifiers accept."""
    daemon, canon = canon_daemon
    for domain in (doms.cname, doms.txt):
        item = [c for c in corpus(domain) if c[0] == name][0]
        _, m, opts, rcpts = item
        stored = submit(daemon, doms.tenant, m, "sender@" + domain,
                        rcpts=rcpts or ("rcpt@example.net",), options=opts)
        added = h.added_fields(m, stored)
        assert [n for n, _ in added].count("dkim-signature") == 1, added
        check_tags(stored, domain, canon, [("sg1", RSA)])
        verify(stored, dns, [("sg1", RSA)], opendkim=opendkim_can_check(name, canon))


def opendkim_can_check(name, canon):
    """opendkim-testmsg refuses two cases whatever the signer (reproduced
    with messages signed by dkimpy, which dkimpy and Mail::DKIM accept):
    - a header field RFC 5322 allows once (To, Subject, Cc) appearing twice:
      "dkim_chunk(): Syntax error", before any signature is looked at;
    - a message with no header/body separator under simple header
      canonicalization: "dkim_eom(): Bad signature" (relaxed is fine).
    The other two verifiers still check those messages."""
    if name == "repeated-singletons":
        return False
    if name == "headers-only" and canon.startswith("simple/"):
        return False
    return True


def test_20mb_message(canon_daemon, doms, dns):
    """A 20 MB message is signed (body hash computed while streaming) and
    verifies."""
    daemon, canon = canon_daemon
    line = b"".join(b"%07d " % i + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"\r\n"
                    for i in range(1000))
    body = line * (20 * 1024 * 1024 // len(line) + 1)
    m = msg("sender@" + doms.cname, subject="big", body=body)
    assert len(m) > 20 * 1024 * 1024
    stored = submit(daemon, doms.tenant, m, "sender@" + doms.cname)
    assert len(stored) > len(m)
    check_tags(stored, doms.cname, canon, [("sg1", RSA)])
    verify(stored, dns, [("sg1", RSA)])


def test_both_algorithms(canon_daemon, doms, dns):
    """--algorithm both: an RSA and an Ed25519 signature, each verifying."""
    daemon, canon = canon_daemon
    for name, m, opts, rcpts in corpus(doms.both):
        if name not in ("plain", "utf8", "long-folded"):
            continue
        stored = submit(daemon, doms.tenant, m, "sender@" + doms.both,
                        rcpts=rcpts or ("rcpt@example.net",), options=opts)
        check_tags(stored, doms.both, canon, [("sg1", RSA), ("sg1e", ED)])
        py = verify(stored, dns, [("sg1", RSA), ("sg1e", ED)],
                    opendkim=opendkim_can_check(name, canon))
        assert sorted(s.algorithm for s in py if s.ok) == [ED, RSA]


def test_ed25519_only(canon_daemon, doms, dns):
    """An Ed25519-only domain (RFC 8463), checked by dkimpy and opendkim."""
    daemon, canon = canon_daemon
    stored = submit(daemon, doms.tenant, msg("sender@" + doms.ed), "sender@" + doms.ed)
    check_tags(stored, doms.ed, canon, [("sg1e", ED)])
    verify(stored, dns, [("sg1e", ED)])


def test_lookup_goes_over_dns(relaxed, doms, dns):
    """The verifiers really ask the DNS server, following the customer's
    CNAME into the platform zone."""
    stored = submit(relaxed, doms.tenant, msg("sender@" + doms.cname), "sender@" + doms.cname)
    before = len(dns.queries)
    py = dv.dkimpy(stored, dns.host, dns.port)
    assert [s.ok for s in py] == [True]
    asked = [(n, t) for n, t, _ in dns.queries[before:]]
    assert ("sg1._domainkey.%s" % doms.cname, "TXT") in asked, asked
    # Withdraw the customer's CNAME: the same bytes no longer verify.
    name = "sg1._domainkey." + doms.cname
    target = [v for n, t, v in _zone_values(dns, name)]
    assert target and target[0][0].startswith("sg1."), target
    dns.remove(name, "CNAME")
    try:
        py = dv.dkimpy(stored, dns.host, dns.port)
        assert [s.ok for s in py] == [False], py
    finally:
        dns.set(name, "CNAME", target[0])
    assert [s.ok for s in dv.dkimpy(stored, dns.host, dns.port)] == [True]


def _zone_values(dns, name):
    with dns.zone.lock:
        return [(name, t, list(v)) for t, v in dns.zone.records.get(name.lower(), {}).items()]


def test_opendkim_asks_the_test_dns(relaxed, doms, dns):
    """opendkim-testmsg's lookups reach the test's DNS server (through the
    private resolv.conf), so its verdicts are about the published keys."""
    if dns.port != 53 or not dv.opendkim_available():
        pytest.skip("opendkim-testmsg needs a DNS server on port 53 (root) and unshare")
    stored = submit(relaxed, doms.tenant, msg("sender@" + doms.txt), "sender@" + doms.txt)
    before = len(dns.queries)
    ok, detail = dv.opendkim(stored, dns.host)
    assert ok, detail
    asked = [n for n, t, _ in dns.queries[before:]]
    assert "sg1._domainkey." + doms.txt in asked, asked
    name = "sg1._domainkey." + doms.txt
    saved = _zone_values(dns, name)[0][2]
    dns.remove(name, "TXT")
    try:
        ok, detail = dv.opendkim(stored, dns.host)
        assert not ok and "key" in detail.lower(), detail
    finally:
        dns.set(name, "TXT", saved)


def _tamper_header(stored, name, new):
    return re.sub(rb"(?im)^(" + name + rb":)[^\r\n]*", lambda m: m.group(1) + new, stored, count=1)


@pytest.mark.parametrize("how", ["body", "subject", "added-from", "body-appended"])
def test_tampered_message_fails(relaxed, doms, dns, how):
    """Changing a signed byte (or adding a second From) breaks every
    verifier's result: the verifiers do check."""
    m = msg("sender@" + doms.cname, subject="original subject", body=b"pay 10 EUR\r\n")
    stored = submit(relaxed, doms.tenant, m, "sender@" + doms.cname)
    verify(stored, dns, [("sg1", RSA)])
    if how == "body":
        bad = stored.replace(b"pay 10 EUR", b"pay 99 EUR")
    elif how == "subject":
        bad = _tamper_header(stored, b"Subject", b" changed subject")
    elif how == "added-from":
        bad = b"From: <ceo@%s>\r\n" % doms.cname.encode() + stored
    else:
        bad = stored + b"PS: send it to another account\r\n"
    assert bad != stored
    fails_everywhere(bad, dns, "a message with a tampered %s" % how)


def test_unpublished_key_fails(relaxed, doms, dns, publish):
    """TXT mode: without the customer's record the signature cannot verify."""
    stored = submit(relaxed, doms.tenant, msg("sender@" + doms.txt), "sender@" + doms.txt)
    name = "sg1._domainkey." + doms.txt
    saved = [k["value"] for k in publish.ctl("domain", "show", doms.txt)["dkim"]
             if k["name"] == name][0]
    dns.remove(name, "TXT")
    try:
        py = dv.dkimpy(stored, dns.host, dns.port)
        assert [s.ok for s in py] == [False], py
    finally:
        dns.set(name, "TXT", [saved])
    verify(stored, dns, [("sg1", RSA)])


def _selectors(stored):
    return sorted(t["s"] for t in dv.signature_tags(stored))


def test_rotation(relaxed, doms, dns, publish, ctl):
    """Mail signed before and after `dkim rotate` verifies against what DNS
    publishes at each moment; the daemon switches selectors without a
    restart; the old key stays published for the overlap."""
    d = doms.rot
    before = submit(relaxed, doms.tenant, msg("sender@" + d, subject="before"), "sender@" + d)
    assert _selectors(before) == ["sg1", "sg1e"]
    verify(before, dns, [("sg1", RSA), ("sg1e", ED)])

    out = ctl("dkim", "rotate", d, "--publish-delay", "0s", "--overlap", "1h")
    assert sorted(r["selector"] for r in out["rotated"]) == ["sg2", "sg2e"], out
    publish.domain(d)
    zone = publish.zone()
    sels = sorted(r["selector"] for r in zone if r["domain"] == d)
    assert sels == ["sg1", "sg1e", "sg2", "sg2e"], "zone during the overlap: %r" % sels

    # The daemon reloads keys on NOTIFY: poll until the new selectors sign.
    # Everything signed meanwhile must verify too.
    deadline = time.monotonic() + 15 * h.SLOW
    while True:
        after = submit_during_switch(relaxed, doms.tenant, msg("sender@" + d, subject="after"),
                                     "sender@" + d)
        sel = _selectors(after)
        assert sel in (["sg1", "sg1e"], ["sg2", "sg2e"]), sel
        verify(after, dns, [(s, RSA if not s.endswith("e") else ED) for s in sel])
        if sel == ["sg2", "sg2e"]:
            break
        assert time.monotonic() < deadline, "still signing with %r 15s after rotate" % sel
        time.sleep(0.3)
    # The old mail still verifies: its key is published for the overlap.
    verify(before, dns, [("sg1", RSA), ("sg1e", ED)])
    verify(after, dns, [("sg2", RSA), ("sg2e", ED)])


def test_rotation_key_withdrawn_after_overlap(relaxed, doms, dns, publish, ctl):
    """With no overlap the old key leaves the zone: mail signed with it no
    longer verifies, mail signed with the new key does."""
    d = doms.rot2
    old = submit(relaxed, doms.tenant, msg("sender@" + d), "sender@" + d)
    old_sel = _selectors(old)
    ctl("dkim", "rotate", d, "--publish-delay", "0s", "--overlap", "0s")
    publish.domain(d)
    zone = publish.zone()
    now_sel = [r["selector"] for r in zone if r["domain"] == d]
    assert len(now_sel) == 1 and now_sel != old_sel, (old_sel, now_sel)

    def new_sig():
        m = submit_during_switch(relaxed, doms.tenant, msg("sender@" + d), "sender@" + d)
        return m if _selectors(m) == now_sel else None
    new = h.eventually(new_sig, timeout=15, interval=0.3, what="the new selector %s" % now_sel)
    verify(new, dns, [(now_sel[0], RSA)])
    py = dv.dkimpy(old, dns.host, dns.port)
    assert [s.ok for s in py] == [False], "a withdrawn key still verifies: %r" % py


def test_imported_key(relaxed, doms, dns, publish, ctl, tmp_path):
    """dkim import: mail signs with the customer's own key on its own
    selector and verifies against the public key derived from that PEM."""
    pem = str(tmp_path / "customer.pem")
    h.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
           "-out", pem])
    os.chmod(pem, 0o644)
    pub = subprocess.run(["openssl", "pkey", "-in", pem, "-pubout", "-outform", "DER"],
                         capture_output=True, check=True, timeout=30).stdout
    p = base64.b64encode(pub).decode()
    out = ctl("dkim", "import", doms.imp, "cust2024", pem)
    assert out["selector"] == "cust2024" and out["imported"] is True, out
    # Publish what we derived ourselves, not what sendgatectl prints.
    dns.set("cust2024._domainkey." + doms.imp, "TXT", ["v=DKIM1; k=rsa; p=" + p])

    def signed_with_import():
        m = submit_during_switch(relaxed, doms.tenant, msg("sender@" + doms.imp),
                                 "sender@" + doms.imp)
        return m if _selectors(m) == ["cust2024"] else None
    stored = h.eventually(signed_with_import, timeout=15, interval=0.3,
                          what="a signature with the imported key")
    verify(stored, dns, [("cust2024", RSA)])


def test_no_refusal_during_key_switch(relaxed, doms, ctl):
    """A rotation that signs at once (--publish-delay 0s) must not leave the
    domain without a signing key even briefly: mail submitted meanwhile is
    signed with the old or the new key, never refused with 451. Several
    rotations, because a gap would depend on the sub-second instant of the
    switch."""
    d = doms.swap
    refused = []
    for _ in range(8):
        ctl("dkim", "rotate", d, "--publish-delay", "0s", "--overlap", "0s")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                stored = submit(relaxed, doms.tenant, msg("sender@" + d), "sender@" + d)
                assert len(dv.signature_tags(stored)) == 1
            except Refused as e:
                refused.append(e.resp.decode("utf-8", "replace"))
    assert not refused, "%d submissions refused right after a rotation, e.g. %s" % (
        len(refused), refused[0])


def test_expiry_tag(module_daemon_factory, doms, dns):
    """[dkim] expiry adds x= = t= + expiry, and the signature verifies."""
    d = module_daemon_factory(dkim__expiry="2d")
    stored = submit(d, doms.tenant, msg("sender@" + doms.cname), "sender@" + doms.cname)
    t = dv.signature_tags(stored)[0]
    assert int(t["x"]) - int(t["t"]) == 2 * 86400, t
    verify(stored, dns, [(t["s"], RSA)])


def test_d_is_the_from_domain_whatever_its_case(relaxed, doms, dns):
    """d= is the From header's domain (DMARC alignment), also when the
    client writes it in upper case behind a display name and a comment."""
    upper = doms.txt.upper()
    m = ('From: "Sales, Team" (the shop) <Sales@%s>\r\nTo: <rcpt@example.net>\r\n'
         "Subject: case\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nhi\r\n" % upper).encode()
    stored = submit(relaxed, doms.tenant, m, "sales@" + doms.txt)
    t = dv.signature_tags(stored)
    assert len(t) == 1 and t[0]["d"].lower() == doms.txt, t
    verify(stored, dns, [("sg1", RSA)])
