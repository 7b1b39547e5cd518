"""sendgatectl against the real database: migrations, tenants,
credentials, domains, and their effect on a running daemon."""

import hashlib
import json

import pytest

import sgharness as h


def test_migrate_idempotent(ctl, pg):
    tables = [r[0] for r in pg.sql("SELECT table_name FROM information_schema.tables "
                                   "WHERE table_schema = 'public' AND table_name LIKE '%migration%'")]
    assert len(tables) == 1, "expected one migrations table, found %r" % tables
    n = pg.scalar("SELECT count(*) FROM %s" % tables[0])
    assert int(n) >= 1
    out = ctl.migrate()
    assert out.get("applied") == [], "second migrate applied something: %r" % out
    assert pg.scalar("SELECT count(*) FROM %s" % tables[0]) == n
    for t in ("tenants", "credentials", "domains", "events"):
        assert pg.scalar("SELECT to_regclass('public.%s') IS NOT NULL" % t) == "t", t


def test_migrate_fresh_database(build, pg):
    pg.psql("DROP DATABASE IF EXISTS sgfresh", db="postgres")
    pg.psql("CREATE DATABASE sgfresh", db="postgres")
    url = pg.url.replace("dbname=sendgate", "dbname=sgfresh")
    c = h.Ctl(build, url)
    first = c.migrate()
    assert first.get("applied"), first
    assert c.migrate().get("applied") == []
    assert pg.psql("SELECT count(*) FROM tenants", db="sgfresh").strip() == "0"


def test_tenant_create_list_show(ctl):
    name = h.unique_name("tc")
    ctl.tenant_create(name)
    names = [t["name"] for t in ctl("tenant", "list")]
    assert name in names
    shown = ctl("tenant", "show", name)
    assert shown["name"] == name
    with pytest.raises(h.CtlError):
        ctl.tenant_create(name)


@pytest.mark.parametrize("bad", ["Upper", "-dash", "has space", "semi;colon", "x" * 70, ""])
def test_tenant_bad_names_refused(ctl, bad):
    r = ctl.raw("tenant", "create", bad)
    assert r.returncode != 0, "tenant name %r accepted" % bad


def test_credential_secret_only_hashed(ctl, pg):
    name = h.unique_name("cr")
    ctl.tenant_create(name)
    cred = ctl.credential_create(name)
    assert set(("username", "secret", "tenant")) <= set(cred), cred
    assert cred["tenant"] == name
    secret = cred["secret"]
    assert len(secret) >= 32, "secret too short for a platform-generated key: %r" % secret
    digest = hashlib.sha256(secret.encode()).hexdigest()
    n = pg.scalar("SELECT count(*) FROM credentials WHERE username = '%s' "
                  "AND secret_sha256 = decode('%s', 'hex')" % (cred["username"], digest))
    assert n == "1", "credential not stored as SHA-256 of the secret"
    assert secret not in pg.dump(), "the secret is stored in clear in the database"
    listed = ctl("credential", "list", name)
    assert cred["username"] in json.dumps(listed) and secret not in json.dumps(listed)
    # Two credentials never share a secret.
    assert ctl.credential_create(name)["secret"] != secret


def test_credential_for_unknown_tenant_fails(ctl):
    r = ctl.raw("credential", "create", "no-such-tenant-" + h.unique_name())
    assert r.returncode != 0


def test_domain_states(ctl):
    name = h.unique_name("dm")
    ctl.tenant_create(name)
    ctl.domain_add(name, "pending.%s.example" % name)
    ctl.domain_add(name, "vouched.%s.example" % name, operator_verified=True)
    doms = {d["name"]: d for d in ctl("domain", "list", name)}
    assert doms["pending.%s.example" % name]["state"] == "pending"
    assert doms["pending.%s.example" % name]["operator_verified"] is False
    assert doms["vouched.%s.example" % name]["operator_verified"] is True
    # A domain belongs to one tenant only.
    other = h.unique_name("dm")
    ctl.tenant_create(other)
    r = ctl.raw("domain", "add", other, "pending.%s.example" % name)
    assert r.returncode != 0, "a second tenant could claim the same domain"


def test_domain_name_normalised_or_refused(ctl, pg):
    name = h.unique_name("dn")
    ctl.tenant_create(name)
    r = ctl.raw("domain", "add", name, "MiXeD.%s.Example" % name)
    if r.returncode == 0:
        assert pg.scalar("SELECT count(*) FROM domains WHERE name = 'mixed.%s.example'" % name) == "1"
    for bad in ("no_underscore.example", "-bad.example", "a..b.example", "x" * 64 + ".example"):
        assert ctl.raw("domain", "add", name, bad).returncode != 0, bad


def test_revoke_then_auth_fails(ctl, daemon_factory):
    t = h.setup_tenant(ctl)
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(t)
    c.quit()
    out = ctl.credential_revoke(t.username)
    assert out and out.get("username") == t.username

    def refused():
        c2 = h.SMTPClient.connect(d.smtps_port, tls=True)
        c2.ehlo()
        r = c2.auth_plain(t.username, t.secret)
        c2.close()
        return r.code == 535

    h.eventually(refused, timeout=5, interval=0.3, what="535 after revoke")
    # A second credential of the same tenant is unaffected.
    cred2 = ctl.credential_create(t.name)
    c3 = h.SMTPClient.connect(d.smtps_port, tls=True)
    c3.ehlo()
    assert c3.auth_plain(cred2["username"], cred2["secret"]).code == 235
    c3.quit()


def test_queue_list_shows_queued(ctl, daemon_factory, build, pg):
    t = h.setup_tenant(ctl)
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(t)
    ids = []
    for i in range(3):
        r = c.send_message(t.addr(), ["l%d@example.net" % i], h.make_message(t.addr()))
        ids.append(h.queued_id(r))
    c.quit()
    assert all(ids)
    listing = h.Ctl(build, pg.url, config=d.config_path).queue_list()
    assert sorted(e["id"] for e in listing) == sorted(ids), listing
    for e in listing:
        for k in ("id", "tenant", "sender", "recipients", "size", "age"):
            assert k in e, "queue list entry lacks %s: %r" % (k, e)
        assert e["tenant"] == t.name and e["sender"] == t.addr()
