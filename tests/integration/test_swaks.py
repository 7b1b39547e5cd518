"""swaks, a real-world SMTP client, against both submission ports."""

import re
import shutil
import subprocess

import pytest

import sgharness as h

pytestmark = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")


def swaks(*args, timeout=60):
    return subprocess.run(["swaks", "--timeout", "20"] + list(args), capture_output=True,
                          text=True, timeout=timeout * h.SLOW)


def queued(out):
    m = re.search(r"<~\s+250 2\.0\.0 Ok: queued as ([0-9A-Z]+)", out)
    return m.group(1) if m else None


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_starttls(daemon, tenant, mech):
    r = swaks("--server", "127.0.0.1:%d" % daemon.submission_port, "-tls", "--auth", mech,
              "--auth-user", tenant.username, "--auth-password", tenant.secret,
              "--from", tenant.addr("hello"), "--to", "b@example.net",
              "--header", "Subject: swaks %s" % mech)
    assert r.returncode == 0, r.stdout + r.stderr
    qid = queued(r.stdout)
    assert qid, "no '250 2.0.0 Ok: queued as' in swaks output:\n" + r.stdout
    sm = h.spooled(daemon, qid)
    assert sm.sender == tenant.addr("hello")
    assert sm.rcpts == ["b@example.net"]
    assert sm.tenant == tenant.name
    assert sm.auth_user == tenant.username
    assert b"Subject: swaks %s\r\n" % mech.encode() in sm.headers


def test_swaks_implicit_tls(daemon, tenant):
    r = swaks("--server", "127.0.0.1:%d" % daemon.smtps_port, "--tlsc", "--auth", "PLAIN",
              "--auth-user", tenant.username, "--auth-password", tenant.secret,
              "--from", tenant.addr("hello"), "--to", "b@example.net")
    assert r.returncode == 0, r.stdout + r.stderr
    qid = queued(r.stdout)
    assert qid, r.stdout
    sm = h.spooled(daemon, qid)
    assert sm.sender == tenant.addr("hello") and sm.rcpts == ["b@example.net"]


def test_swaks_without_tls_cannot_auth(daemon, tenant):
    r = swaks("--server", "127.0.0.1:%d" % daemon.submission_port, "--auth", "PLAIN",
              "--auth-user", tenant.username, "--auth-password", tenant.secret,
              "--from", tenant.addr("hello"), "--to", "b@example.net")
    assert r.returncode != 0
    assert "queued as" not in r.stdout
