"""Sealed DKIM private keys are bound to their row (domain, selector).

dkim_keys.private_sealed formats (dkim/seal.c):
  v1: nonce(12) | AES-256-GCM ciphertext | tag(16), no AAD
  v2: b"SGK\\x02" | nonce(12) | ciphertext | tag(16),
      AAD = b"sendgate-dkim-v2\\0" + domain + b"\\0" + selector

Someone who can write to the database but does not hold the master key
must not be able to make the daemon sign one domain's mail with another
domain's key: swapping two v2 blobs makes both keys unusable (451 4.3.0,
nothing queued, the log names domain and selector). Blobs sealed before
the binding (v1) still sign, the daemon warns about each at load, and
`sendgatectl dkim reseal` rewrites them as v2. The blobs are made and
checked here with the cryptography module, independently of seal.c.
"""

import os
import re
import shutil

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import dkim_verify as dv
import sgharness as h
from dnsserver import DNSServer
from test_dkim import Publisher, Refused, msg, submit

V2_HEADER = b"SGK\x02"
SELECTOR = "sg1e"  # first Ed25519 selector: what `domain add --algorithm ed25519` uses


def master_key():
    with open(h.master_key_file()) as f:
        return bytes.fromhex(f.read().strip())


def aad(domain, selector):
    return b"sendgate-dkim-v2\0" + domain.encode() + b"\0" + selector.encode()


def seal_v1(pem):
    nonce = os.urandom(12)
    while nonce.startswith(V2_HEADER):
        nonce = os.urandom(12)
    return nonce + AESGCM(master_key()).encrypt(nonce, pem, None)


def open_v2(blob, domain, selector):
    assert blob[:4] == V2_HEADER, "not a v2 blob: %r" % blob[:8]
    return AESGCM(master_key()).decrypt(blob[4:16], blob[16:], aad(domain, selector))


def key_row(pg, domain, selector=SELECTOR):
    """(id, sealed bytes) of domain's key on selector."""
    rows = pg.sql("SELECT k.id, encode(k.private_sealed, 'hex') FROM dkim_keys k"
                  " JOIN domains d ON d.id = k.domain_id"
                  " WHERE d.name = '%s' AND k.selector = '%s'" % (domain, selector))
    assert len(rows) == 1, rows
    return rows[0][0], bytes.fromhex(rows[0][1])


def set_blob(pg, key_id, blob):
    pg.sql("UPDATE dkim_keys SET private_sealed = '\\x%s'::bytea WHERE id = %s"
           % (blob.hex(), key_id))


def swap_blobs(pg, id_a, id_b):
    """Exchanges two rows' sealed keys in one statement (one reload)."""
    pg.sql("UPDATE dkim_keys k SET private_sealed = o.private_sealed FROM dkim_keys o"
           " WHERE (k.id = %s AND o.id = %s) OR (k.id = %s AND o.id = %s)"
           % (id_a, id_b, id_b, id_a))


def log_since(daemon, offset):
    return daemon.log_text()[offset:]


def wait_log_after(daemon, offset, pattern, timeout=10.0):
    """Waits for pattern in the log written after offset (None: this run's log)."""
    rx = re.compile(pattern)
    text = (lambda: daemon.log_text(since_start=True)) if offset is None \
        else (lambda: log_since(daemon, offset))
    return h.eventually(lambda: rx.search(text()), timeout * h.SLOW, what="log /%s/" % pattern)


def key_line(event, domain):
    return r"event=%s domain=%s selector=%s " % (event, re.escape(domain), SELECTOR)


def signs_and_verifies(daemon, tenant, domain, dns):
    stored = submit(daemon, tenant, msg("sender@" + domain), "sender@" + domain)
    sigs = dv.dkimpy(stored, dns.host, dns.port)
    assert [(s.domain, s.selector, s.algorithm) for s in sigs] == \
        [(domain, SELECTOR, "ed25519-sha256")], sigs
    assert all(s.ok for s in sigs), sigs
    return stored


# ------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def dns():
    srv = DNSServer(port=0)
    srv.start()
    yield srv
    srv.stop()


class Doms:
    pass


@pytest.fixture(scope="module")
def doms(ctl, dns):
    name = h.unique_name("seal")
    d = Doms()
    d.tenant = h.setup_tenant(ctl, name=name, domain="base.%s.example" % name)
    d.a = "a.%s.example" % name
    d.b = "b.%s.example" % name
    d.old = "old.%s.example" % name
    d.other = "other.%s.example" % name
    publish = Publisher(dns, ctl)
    for dom in (d.a, d.b, d.old, d.other):
        ctl("domain", "add", name, dom, "--algorithm", "ed25519", "--dkim-mode", "txt",
            "--operator-verified")
        publish.domain(dom)
    return d


@pytest.fixture(scope="module")
def sg(module_daemon_factory, doms):
    return module_daemon_factory()


# ------------------------------------------------------------- tests

def test_new_keys_are_sealed_v2_and_bound(pg, doms):
    """What sendgatectl stores opens with the documented AAD and no other."""
    _, blob = key_row(pg, doms.a)
    pem = open_v2(blob, doms.a, SELECTOR)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----"), pem[:40]
    for dom, sel in ((doms.b, SELECTOR), (doms.a, "sg2e"), (doms.a, "sg1")):
        with pytest.raises(Exception):
            open_v2(blob, dom, sel)


def test_swapped_blobs_are_refused(sg, pg, doms, dns):
    signs_and_verifies(sg, doms.tenant, doms.a, dns)
    id_a, blob_a = key_row(pg, doms.a)
    id_b, blob_b = key_row(pg, doms.b)
    off = len(sg.log_text())
    swap_blobs(pg, id_a, id_b)
    try:
        for dom in (doms.a, doms.b):
            wait_log_after(sg, off, r"level=err " + key_line("dkim_key_error", dom))
        for restart in (False, True):
            if restart:
                # The same at start-up (other keys open, so the daemon runs).
                sg.restart()
                off = None
                for dom in (doms.a, doms.b):
                    wait_log_after(sg, off, r"level=err " + key_line("dkim_key_error", dom))
            for dom in (doms.a, doms.b):
                queued = sg.queue_ids()
                with pytest.raises(Refused) as e:
                    submit(sg, doms.tenant, msg("sender@" + dom), "sender@" + dom)
                assert e.value.code == 451, e.value
                assert b"4.3.0" in e.value.resp, e.value.resp
                assert sg.queue_ids() == queued, "a refused message was queued"
                wait_log_after(sg, off, r"event=dkim_no_key domain=%s " % re.escape(dom))
        # Unrelated domains still sign.
        signs_and_verifies(sg, doms.tenant, doms.other, dns)
    finally:
        off = len(sg.log_text())
        set_blob(pg, id_a, blob_a)
        set_blob(pg, id_b, blob_b)
        wait_log_after(sg, off, r"event=cache_reload table=dkim_keys .*key_errors=0")
    signs_and_verifies(sg, doms.tenant, doms.a, dns)
    signs_and_verifies(sg, doms.tenant, doms.b, dns)


def test_v1_blob_signs_warns_and_reseals(sg, pg, ctl, doms, dns):
    key_id, v2 = key_row(pg, doms.old)
    pem = open_v2(v2, doms.old, SELECTOR)
    v1 = seal_v1(pem)
    off = len(sg.log_text())
    set_blob(pg, key_id, v1)
    warn = r"level=warn " + key_line("dkim_key_unbound", doms.old)
    wait_log_after(sg, off, warn)
    assert "sendgatectl dkim reseal" in log_since(sg, off)
    signs_and_verifies(sg, doms.tenant, doms.old, dns)
    # At start-up too.
    sg.restart()
    wait_log_after(sg, None, warn)
    signs_and_verifies(sg, doms.tenant, doms.old, dns)

    total = int(pg.scalar("SELECT count(*) FROM dkim_keys"))
    off = len(sg.log_text())
    out = ctl("dkim", "reseal")
    assert out["resealed"] == 1, out
    assert out["keys"] == [{"domain": doms.old, "selector": SELECTOR}], out
    assert out["already_v2"] == total - 1 and out["failed"] == 0 and out["errors"] == [], out
    _, blob = key_row(pg, doms.old)
    assert open_v2(blob, doms.old, SELECTOR) == pem
    wait_log_after(sg, off, r"event=cache_reload table=dkim_keys .*key_errors=0")
    assert "dkim_key_unbound" not in log_since(sg, off)
    signs_and_verifies(sg, doms.tenant, doms.old, dns)

    # Idempotent: nothing left to change, nothing rewritten.
    again = ctl("dkim", "reseal")
    assert again["resealed"] == 0 and again["keys"] == [], again
    assert again["already_v2"] == total and again["failed"] == 0, again
    assert key_row(pg, doms.old)[1] == blob
    r = ctl.raw("dkim", "reseal", json_out=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("resealed 0 DKIM keys"), r.stdout

    sg.restart()
    assert "dkim_key_unbound" not in sg.log_text(since_start=True)
    signs_and_verifies(sg, doms.tenant, doms.old, dns)


def test_reseal_refuses_a_moved_v1_blob(pg, ctl, doms):
    """A v1 blob is bound to nothing: reseal checks it is the key its row
    publishes before binding it there."""
    _, pem_blob = key_row(pg, doms.old)
    pem_old = open_v2(pem_blob, doms.old, SELECTOR)
    other_id, other_blob = key_row(pg, doms.other)
    set_blob(pg, other_id, seal_v1(pem_old))
    try:
        r = ctl.raw("dkim", "reseal")
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert not any(m in r.stderr for m in h.SANITIZER_MARKERS), r.stderr
        assert "%s selector %s" % (doms.other, SELECTOR) in r.stderr, r.stderr
        assert "not the key this selector publishes" in r.stderr, r.stderr
        assert key_row(pg, doms.other)[1][:4] != V2_HEADER, "the moved blob was bound"
        # A v2 blob in the wrong row: reported, left alone.
        set_blob(pg, other_id, pem_blob)
        r = ctl.raw("dkim", "reseal")
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert not any(m in r.stderr for m in h.SANITIZER_MARKERS), r.stderr
        assert "does not open" in r.stderr, r.stderr
        assert key_row(pg, doms.other)[1] == pem_blob
    finally:
        set_blob(pg, other_id, other_blob)
    assert ctl("dkim", "reseal")["failed"] == 0


def test_reseal_usage(ctl):
    r = ctl.raw("dkim", "reseal", "extra")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "dkim reseal" in r.stderr


def test_wrong_master_key_stops_start_and_sealing(build, pg, daemon_factory, doms):
    """With a master key that opens none of the stored DKIM keys the daemon
    refuses to start (naming the file), and sendgatectl refuses to seal new
    keys under it (they would not match the ones already stored)."""
    wrong = h.new_master_key_file("wrong.key")  # not the key the rows are sealed with
    try:
        d = daemon_factory(start=False, dkim__master_key_file=wrong)
        with pytest.raises(h.DaemonDied) as ei:
            d.start()
        text = str(ei.value)
        assert "wrong master key" in text and wrong in text, text[-2000:]

        cfg = os.path.join(os.path.dirname(wrong), "ctl.conf")
        with open(cfg, "w") as f:
            f.write("[database]\nurl = %s\n[dkim]\nmaster_key_file = %s\n" % (pg.url, wrong))
        other = h.Ctl(build, pg.url, config=cfg)
        r = other.raw("domain", "add", doms.tenant.name, "new.%s" % doms.a, json_out=False)
        assert r.returncode != 0, r.stdout
        assert "does not open the DKIM keys already in the database" in r.stderr, r.stderr
        assert wrong in r.stderr, r.stderr
    finally:
        shutil.rmtree(os.path.dirname(wrong), ignore_errors=True)
