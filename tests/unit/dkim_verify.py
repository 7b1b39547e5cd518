#!/usr/bin/python3
"""Checks sendgate's DKIM signatures with independent verifiers.

Usage: dkim_verify.py DIR

DIR holds *.eml messages (each with one or more DKIM-Signature fields) and
dns.txt, one "NAME TXT VALUE" line per key record. Every signature of every
message must verify with dkimpy, and with Perl's Mail::DKIM when it is
installed. Exit status: 0 all verified, 1 some failed, 77 dkimpy missing
(the unit test then skips). test_dkim writes such a directory; so can a
person, by hand.
"""
import os
import subprocess
import sys

try:
    import dkim
except ImportError:
    print("dkimpy not installed", file=sys.stderr)
    sys.exit(77)

# Mail::DKIM with its DNS lookups answered from dns.txt.
PERL_VERIFY = r'''
use strict;
use warnings;
use Mail::DKIM::Verifier;
my ($dnsfile, @files) = @ARGV;
my %txt;
open(my $d, "<", $dnsfile) or die "$dnsfile: $!";
while (<$d>) { chomp; my ($n, $t, $v) = split(/ /, $_, 3); $txt{lc $n} = $v; }
package FakeResolver {
    sub new { bless {}, shift }
    sub query { my ($s, $name, $type) = @_; return FakeAnswer->new($txt{lc $name}) if exists $txt{lc $name}; return undef; }
    sub search { my $s = shift; return $s->query(@_); }
    sub send { my $s = shift; return $s->query(@_); }
    sub errorstring { "NXDOMAIN" }
}
package FakeAnswer {
    sub new { my ($c, $v) = @_; bless { v => $v }, $c }
    sub answer { my $s = shift; return FakeRR->new($s->{v}); }
    sub header { return FakeHeader->new(); }
}
package FakeHeader { sub new { bless {}, shift } sub rcode { "NOERROR" } }
package FakeRR {
    sub new { my ($c, $v) = @_; bless { v => $v }, $c }
    sub type { "TXT" }
    sub char_str_list { my $s = shift; return ($s->{v}); }
    sub txtdata { my $s = shift; return $s->{v}; }
}
package main;
Mail::DKIM::DNS::resolver(FakeResolver->new());
my ($bad, $pass, $unsupported) = (0, 0, 0);
for my $f (@files) {
    open(my $fh, "<", $f) or die "$f: $!";
    binmode $fh;
    my $v = Mail::DKIM::Verifier->new();
    while (<$fh>) { $v->PRINT($_); }
    $v->CLOSE();
    my @sigs = $v->signatures;
    my $n = scalar @sigs;
    for my $s (@sigs) {
        my $r = $s->result;
        my $detail = $s->result_detail // "";
        if ($r eq "pass") { $pass++; next; }
        # Mail::DKIM before 1.20230630 (Debian 12) has no Ed25519.
        if ($s->algorithm eq "ed25519-sha256" && $detail =~ /unsupported algorithm/) { $unsupported++; next; }
        print "Mail::DKIM FAIL $f: $r ($detail)\n";
        $bad = 1;
    }
    if ($n == 0) { print "Mail::DKIM FAIL $f: no signatures\n"; $bad = 1; }
}
print "Mail::DKIM: $pass signatures pass, $unsupported Ed25519 not supported by this version\n";
exit $bad;
'''


def load_dns(path):
    records = {}
    with open(path) as f:
        for line in f:
            name, _, value = line.rstrip("\n").split(" ", 2)
            records[name.lower().rstrip(".") + "."] = value.encode()
    return records


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = sys.argv[1]
    records = load_dns(os.path.join(d, "dns.txt"))

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name.lower().rstrip(".") + ".")

    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".eml"))
    failed = 0
    checked = 0
    for path in files:
        with open(path, "rb") as f:
            msg = f.read()
        n = msg.split(b"\r\n\r\n", 1)[0].lower().count(b"\ndkim-signature:") + \
            (1 if msg.lower().startswith(b"dkim-signature:") else 0)
        for idx in range(n):
            try:
                ok = dkim.DKIM(msg).verify(idx=idx, dnsfunc=dnsfunc)
            except dkim.DKIMException as e:
                print("dkimpy error %s: %s" % (path, e))
                ok = False
            checked += 1
            if not ok:
                failed += 1
                print("dkimpy FAIL %s signature %d" % (path, idx))
    print("dkimpy: %d signatures in %d messages, %d failed" % (checked, len(files), failed))

    perl_rc = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-e", "1"],
                             capture_output=True).returncode
    if perl_rc == 0:
        r = subprocess.run(["perl", "-e", PERL_VERIFY, os.path.join(d, "dns.txt")] + files)
        if r.returncode != 0:
            print("Mail::DKIM: FAILURES")
            failed += 1
    else:
        print("Mail::DKIM: not installed, skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
