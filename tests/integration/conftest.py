"""Fixtures shared by the integration tests.

Session: one throwaway PostgreSQL cluster (migrated with sendgatectl), one
self-signed certificate. Module: a tenant with a credential and an
operator-verified domain, and a daemon configured from the module's
DAEMON_CONFIG dict. Tests that need their own daemon use daemon_factory.
Every daemon is stopped at teardown; a non-zero exit after SIGTERM or a
sanitizer report in its log fails the test.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sgharness as h  # noqa: E402


@pytest.fixture(scope="session")
def build():
    b = h.build_dir()
    for exe in ("sendgate", "sendgatectl"):
        if not os.access(os.path.join(b, exe), os.X_OK):
            pytest.fail("%s/%s is not built (run make, or set SENDGATE_BUILD)" % (b, exe))
    return b


@pytest.fixture(scope="session")
def pg():
    p = h.Postgres()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def ctl(build, pg):
    c = h.Ctl(build, pg.url)
    c.migrate()
    return c


@pytest.fixture(scope="session")
def cert(tmp_path_factory):
    return h.make_cert(str(tmp_path_factory.mktemp("tls")))


class DaemonSet:
    """Starts daemons and checks each one at teardown."""

    def __init__(self, build, pg, cert, base):
        self.build, self.pg, self.cert, self.base = build, pg, cert, base
        self.daemons = []

    def __call__(self, start=True, pg=None, **overrides):
        d = h.Daemon(self.build, pg or self.pg, self.base(), cert=self.cert, start=False,
                     **overrides)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def finish(self):
        problems = []
        for d in self.daemons:
            was_running = d.alive()
            try:
                rc = d.stop()
            except AssertionError as e:
                problems.append(str(e))
                rc = None
            if was_running and rc not in (0, None):
                problems.append("sendgate exited %r after SIGTERM (expected 0); log tail:\n%s"
                                % (rc, d.log_text()[-3000:]))
            report = d.sanitizer_report()
            if report:
                problems.append("sanitizer report in %s:\n%s" % (d.logfile, report))
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def daemon_factory(build, pg, ctl, cert, tmp_path_factory):
    ds = DaemonSet(build, pg, cert, lambda: str(tmp_path_factory.mktemp("sg")))
    yield ds
    ds.finish()


@pytest.fixture(scope="module")
def module_daemon_factory(build, pg, ctl, cert, tmp_path_factory):
    ds = DaemonSet(build, pg, cert, lambda: str(tmp_path_factory.mktemp("sg")))
    yield ds
    ds.finish()


@pytest.fixture(scope="module")
def tenant(ctl):
    """A tenant with a credential and an operator-verified domain."""
    return h.setup_tenant(ctl)


@pytest.fixture(scope="module")
def daemon(request, module_daemon_factory, tenant):
    """One daemon per module, configured by the module's DAEMON_CONFIG."""
    return module_daemon_factory(**getattr(request.module, "DAEMON_CONFIG", {}))


@pytest.fixture
def client(daemon, tenant):
    """An authenticated client over STARTTLS on the module's daemon."""
    c = h.SMTPClient.connect(daemon.submission_port)
    c.login(tenant)
    yield c
    c.close()

