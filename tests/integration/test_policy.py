"""Submission policy: a tenant sends only from its own sendable domains,
in the envelope and in the From/Sender headers."""

import pytest

import sgharness as h


@pytest.fixture(scope="module")
def others(ctl, tenant):
    """Domains the module's tenant must not use: its own pending domain,
    another tenant's verified domain, a subdomain-looking unknown one."""
    pending = "pending-" + tenant.domain
    ctl.domain_add(tenant.name, pending)
    other = h.setup_tenant(ctl)
    return {"pending": pending, "other": other.domain, "other_tenant": other,
            "unknown": "unknown-%s.example" % h.unique_name("u")}


@pytest.fixture(scope="module")
def daemon(module_daemon_factory, tenant, others):
    # The domains exist before start, so the first cache load has them.
    return module_daemon_factory()


def assert_refused_domain(r, domain, tenant=None):
    assert (r.code, r.enhanced) == (550, "5.7.1"), r
    assert domain in r.text, "the reply should name the domain %s: %r" % (domain, r)


@pytest.mark.parametrize("which", ["pending", "other", "unknown"])
def test_envelope_domain_refused(client, tenant, others, which):
    dom = others[which]
    r = client.cmd("MAIL FROM:<app@%s>" % dom)
    assert_refused_domain(r, dom)
    # A refused MAIL leaves no transaction behind.
    r = client.cmd("RCPT TO:<x@example.net>")
    assert r.code == 503, "RCPT after a refused MAIL: %r" % r
    client.quit()


def test_envelope_refusal_names_tenant(client, tenant, others):
    r = client.cmd("MAIL FROM:<app@%s>" % others["pending"])
    assert r.code == 550
    assert tenant.name in r.text, "the reply should name the tenant %s: %r" % (tenant.name, r)


def test_other_tenant_domain_refused_like_unknown(client, others):
    """Another tenant's domain is refused the same way (no hint it exists)."""
    r1 = client.cmd("MAIL FROM:<app@%s>" % others["other"])
    r2 = client.cmd("MAIL FROM:<app@%s>" % others["unknown"])
    assert (r1.code, r1.enhanced) == (r2.code, r2.enhanced) == (550, "5.7.1")
    assert r1.text.replace(others["other"], "D") == r2.text.replace(others["unknown"], "D"), (r1, r2)


def test_other_tenant_can_use_its_own_domain(daemon, others):
    o = others["other_tenant"]
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(o)
    r = c.send_message(o.addr(), ["x@example.net"], h.make_message(o.addr()))
    assert h.queued_id(r), r
    c.quit()


def test_domain_case_insensitive(client, tenant, daemon):
    r = client.cmd("MAIL FROM:<App@%s>" % tenant.domain.upper())
    assert r.code == 250, "domains are case-insensitive: %r" % r
    client.quit()


def test_null_sender_refused(client):
    r = client.cmd("MAIL FROM:<>")
    assert 500 <= r.code < 600, "null sender accepted for submission: %r" % r
    client.quit()


@pytest.mark.parametrize("path", [
    "<@relay.example:app@{d}>",  # source route
    "<app%other.example@{d}>",  # percent hack
    "<other.example!app@{d}>",  # bang path
    "app@{d}",  # no angle brackets
])
def test_bad_sender_syntax_refused(client, tenant, path):
    r = client.cmd("MAIL FROM:" + path.format(d=tenant.domain))
    assert 500 <= r.code < 600, "%s accepted: %r" % (path, r)
    client.quit()


@pytest.mark.parametrize("path", ["<@relay.example:x@example.net>", "<x%y@example.net>",
                                  "<y!x@example.net>", "<x@example.net", "<>"])
def test_bad_recipient_syntax_refused(client, tenant, path):
    assert client.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
    r = client.cmd("RCPT TO:" + path)
    assert 500 <= r.code < 600, "%s accepted: %r" % (path, r)
    client.quit()


# ---- headers, checked at the end of data ----------------------------------

def end_of_data(client, tenant, msg):
    return client.send_message(tenant.addr(), ["x@example.net"], msg)


def assert_header_refused(r, header, domain=None):
    assert (r.code, r.enhanced) == (550, "5.7.1"), r
    assert header.lower() in r.text.lower(), "reply should name the %s header: %r" % (header, r)
    if domain:
        assert domain in r.text, "reply should name %s: %r" % (domain, r)


@pytest.mark.parametrize("which", ["pending", "other", "unknown"])
def test_header_from_refused(client, tenant, others, daemon, which):
    before = set(daemon.queue_ids())
    dom = others[which]
    r = end_of_data(client, tenant, h.make_message("boss@" + dom))
    assert_header_refused(r, "From", dom)
    assert set(daemon.queue_ids()) == before, "a refused message was queued"
    # The session goes on.
    r = end_of_data(client, tenant, h.make_message(tenant.addr()))
    assert h.queued_id(r), r
    client.quit()


def test_header_sender_refused(client, tenant, others):
    msg = h.make_message(tenant.addr(), extra_headers=["Sender: <x@%s>" % others["other"]])
    r = end_of_data(client, tenant, msg)
    assert_header_refused(r, "Sender", others["other"])
    client.quit()


def test_header_from_display_name_accepted(client, tenant, daemon):
    msg = h.make_message('"Alice, from Sales" <alice@%s>' % tenant.domain)
    r = end_of_data(client, tenant, msg)
    assert h.queued_id(r), r
    client.quit()


def test_header_from_folded_accepted(client, tenant):
    msg = h.make_message("Alice\r\n <alice@%s>" % tenant.domain)
    r = end_of_data(client, tenant, msg)
    assert h.queued_id(r), r
    client.quit()


def test_header_from_other_domain_with_sender_ok_refused(client, tenant, others):
    """A good Sender does not make a foreign From acceptable."""
    msg = h.make_message("<x@%s>" % others["other"], extra_headers=["Sender: <%s>" % tenant.addr()])
    r = end_of_data(client, tenant, msg)
    assert_header_refused(r, "From", others["other"])
    client.quit()


def test_header_from_multiple_mailboxes_refused(client, tenant):
    msg = h.make_message("<a@%s>, <b@%s>" % (tenant.domain, tenant.domain))
    r = end_of_data(client, tenant, msg)
    assert (r.code, r.enhanced) == (550, "5.7.1"), r
    assert "from" in r.text.lower(), r
    client.quit()


def test_two_from_headers_refused(client, tenant):
    msg = h.make_message(tenant.addr(), extra_headers=["From: <%s>" % tenant.addr("two")])
    r = end_of_data(client, tenant, msg)
    assert (r.code, r.enhanced) == (550, "5.7.1"), r
    client.quit()


def test_missing_from_refused(client, tenant):
    msg = b"To: <x@example.net>\r\nSubject: no from\r\n\r\nbody\r\n"
    r = end_of_data(client, tenant, msg)
    assert (r.code, r.enhanced) == (550, "5.7.1"), r
    assert "from" in r.text.lower(), r
    client.quit()


def test_no_header_block_refused(client, tenant):
    r = end_of_data(client, tenant, b"just a body line\r\n")
    assert 500 <= r.code < 600, r
    client.quit()


def test_domain_added_after_start_becomes_sendable(daemon, ctl, tenant):
    dom = "late-" + tenant.domain
    ctl.domain_add(tenant.name, dom, operator_verified=True)

    def ok():
        c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
        c.login(tenant)
        r = c.cmd("MAIL FROM:<app@%s>" % dom)
        c.quit()
        return r.code == 250

    h.eventually(ok, timeout=5, interval=0.3, what="a newly verified domain to be sendable")


def test_domain_verified_later(daemon, ctl, tenant, pg):
    """A pending domain becomes sendable once verified (cache invalidation)."""
    dom = "flip-" + tenant.domain
    ctl.domain_add(tenant.name, dom)
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(tenant)
    assert c.cmd("MAIL FROM:<app@%s>" % dom).code == 550
    c.quit()
    pg.sql("UPDATE domains SET state = 'verified' WHERE name = '%s'" % dom)

    def ok():
        c2 = h.SMTPClient.connect(daemon.smtps_port, tls=True)
        c2.login(tenant)
        r = c2.cmd("MAIL FROM:<app@%s>" % dom)
        c2.quit()
        return r.code == 250

    h.eventually(ok, timeout=5, interval=0.3, what="domain sendable after state=verified")
