"""dkim_verify: independent DKIM verifiers for sendgate's integration tests.

Each verifier looks the public keys up over real DNS from the test's DNS
server (tests/integration/dnsserver.py) and reports one result per
DKIM-Signature header, so a test can say exactly which signature failed:

    dkimpy(msg, host, port)      python3-dkim; lookups by dnspython
    mail_dkim(msg, host, port)   Perl Mail::DKIM; lookups by Net::DNS
    opendkim(msg, host)          opendkim-testmsg; lookups by the C library's
                                 resolver, which reads /etc/resolv.conf only
                                 (no port, no option to point it elsewhere):
                                 it runs in a private mount namespace where
                                 /etc/resolv.conf is a bind mount naming host
                                 (the DNS server must then listen on port 53).
                                 The real /etc/resolv.conf is never touched.

A result is a Sig(domain, selector, algorithm, ok, detail) namedtuple.
"""

import collections
import os
import re
import shutil
import subprocess
import tempfile

import dkim
import dns.exception
import dns.resolver

Sig = collections.namedtuple("Sig", "domain selector algorithm ok detail")


def signature_tags(msg):
    """The tag maps of every DKIM-Signature header of msg (bytes), in order,
    values with folding whitespace removed."""
    head = msg.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    fields = re.findall(rb"(?im)^dkim-signature:((?:.*\r\n)(?:[ \t].*\r\n)*)", head)
    out = []
    for raw in fields:
        v = re.sub(rb"\s+", b"", raw).decode("ascii", "replace")
        tags = {}
        for part in v.split(";"):
            if "=" in part:
                k, val = part.split("=", 1)
                tags[k] = val
        out.append(tags)
    return out


class DnsLookups:
    """A dkimpy dnsfunc that asks the test's DNS server over UDP/TCP."""

    def __init__(self, host, port):
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers = [host]
        self.resolver.port = port
        self.resolver.lifetime = 5
        self.resolver.timeout = 5
        self.names = []

    def __call__(self, name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        self.names.append(name)
        try:
            ans = self.resolver.resolve(name, "TXT", raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
            return None
        except dns.exception.Timeout as e:
            raise dkim.DnsTimeoutError(str(e))
        for rrset in ans.response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(list(rrset.items)[0].strings)
        return None


def dkimpy(msg, host, port):
    """Verifies every DKIM-Signature of msg with dkimpy. Returns [Sig]."""
    lookups = DnsLookups(host, port)
    out = []
    tags = signature_tags(msg)
    for i, t in enumerate(tags):
        d = dkim.DKIM(msg, minkey=1024)
        try:
            ok = d.verify(idx=i, dnsfunc=lookups)
            detail = "" if ok else "verify returned False"
        except dkim.DKIMException as e:
            ok, detail = False, "%s: %s" % (type(e).__name__, e)
        out.append(Sig(t.get("d"), t.get("s"), t.get("a"), bool(ok), detail))
    return out


PERL_VERIFIER = r"""
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;
my ($host, $port) = @ARGV;
my $res = Net::DNS::Resolver->new(nameservers => [$host], port => $port,
    recurse => 1, udp_timeout => 5, tcp_timeout => 5, retry => 2);
Mail::DKIM::DNS::resolver($res);
my $v = Mail::DKIM::Verifier->new();
binmode STDIN;
local $/ = \65536;
while (my $chunk = <STDIN>) { $v->PRINT($chunk); }
$v->CLOSE;
foreach my $sig ($v->signatures) {
    my $detail = $sig->result_detail // '';
    $detail =~ s/[\t\r\n]+/ /g;
    print join("\t", "SIG", $sig->domain // '', $sig->selector // '',
               $sig->algorithm // '', $sig->result // '', $detail), "\n";
}
print "RESULT\t", $v->result, "\n";
"""


def mail_dkim(msg, host, port, timeout=300):
    """Verifies msg with Perl Mail::DKIM (Net::DNS to host:port). Returns
    [Sig] in the order Mail::DKIM reports them (header order)."""
    r = subprocess.run(["perl", "-e", PERL_VERIFIER, host, str(port)], input=msg,
                       capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError("perl Mail::DKIM verifier exited %d: %s"
                             % (r.returncode, r.stderr.decode("utf-8", "replace")))
    out = []
    for line in r.stdout.decode("utf-8", "replace").splitlines():
        f = line.split("\t")
        if f[0] == "SIG":
            out.append(Sig(f[1], f[2], f[3], f[4] == "pass", "%s %s" % (f[4], f[5])))
    return out


def opendkim_available():
    return shutil.which("opendkim-testmsg") is not None and shutil.which("unshare") is not None


def opendkim(msg, host, timeout=300):
    """Verifies msg with opendkim-testmsg, its resolver pointed at host:53
    through a private /etc/resolv.conf. Returns (ok, detail): testmsg says
    nothing on success and exits non-zero naming the failure otherwise."""
    d = tempfile.mkdtemp(prefix="sgodkim-")
    try:
        conf = os.path.join(d, "resolv.conf")
        with open(conf, "w") as f:
            f.write("nameserver %s\noptions timeout:3 attempts:2\n" % host)
        script = 'mount --bind "$1" /etc/resolv.conf && exec opendkim-testmsg -t "$2"'
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                            "sh", conf, d], input=msg, capture_output=True, timeout=timeout)
        detail = (r.stdout + r.stderr).decode("utf-8", "replace").strip()
        return r.returncode == 0 and detail == "", detail or "exit %d" % r.returncode
    finally:
        shutil.rmtree(d, ignore_errors=True)
