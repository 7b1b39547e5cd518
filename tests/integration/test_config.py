"""Configuration: a bad config file stops start-up with a message naming
the file, the line and the key; SIGTERM is a clean exit."""

import os
import signal
import subprocess

import pytest

import sgharness as h


def start_fails(d):
    with pytest.raises(h.DaemonDied) as ei:
        d.start()
    assert d.returncodes and d.returncodes[-1] not in (0, None), d.returncodes
    return str(ei.value)


def line_of(path, needle):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if needle in line:
                return i
    raise AssertionError("%s not in %s" % (needle, path))


def test_unknown_key(daemon_factory):
    d = daemon_factory(start=False, smtp__no_such_key="1")
    msg = start_fails(d)
    assert d.config_path in msg and "no_such_key" in msg, msg
    assert ":%d" % line_of(d.config_path, "no_such_key") in msg, "line number missing: " + msg


def test_bad_value(daemon_factory):
    d = daemon_factory(start=False, max_recipients="lots")
    msg = start_fails(d)
    assert d.config_path in msg and "max_recipients" in msg, msg
    assert ":%d" % line_of(d.config_path, "max_recipients") in msg, msg


def test_unreadable_certificate(daemon_factory, tmp_path):
    d = daemon_factory(start=False, tls_cert=str(tmp_path / "missing-cert.pem"))
    msg = start_fails(d)
    assert "missing-cert.pem" in msg, msg


def test_garbage_certificate(daemon_factory, tmp_path):
    p = tmp_path / "garbage.pem"
    p.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    d = daemon_factory(start=False, tls_cert=str(p))
    msg = start_fails(d)
    assert "garbage.pem" in msg, msg


def test_missing_config_file(build, tmp_path):
    r = subprocess.run([os.path.join(build, "sendgate"), "-c", str(tmp_path / "nope.conf")],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode != 0
    assert "nope.conf" in r.stderr


def test_database_url_from_environment(daemon_factory, pg):
    """SENDGATE_DATABASE_URL overrides [database] url."""
    d = daemon_factory(start=False, database__url="host=/nonexistent port=1 dbname=x",
                       )
    d.env = {"SENDGATE_DATABASE_URL": pg.url}
    d.start()
    assert d.alive()


def test_sigterm_exits_zero(daemon_factory, tenant):
    d = daemon_factory()
    c = h.SMTPClient.connect(d.smtps_port, tls=True)
    c.login(tenant)
    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(timeout=20 * h.SLOW)
    assert rc == 0, "exit code %r after SIGTERM" % rc
    d.returncodes.append(rc)
    d.proc = None
    c.close()
