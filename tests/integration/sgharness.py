"""sgharness: start the real pieces of a sendgate installation for tests.

Importable without pytest (the integration tests, the bench scripts and
tools/demo.py use it). Everything listens on loopback or on a unix socket;
every subprocess call has a timeout.

    pg = Postgres()                     # throwaway cluster, unix socket only
    ctl = Ctl(build, pg.url); ctl.migrate()
    t = setup_tenant(ctl)               # tenant + credential + sendable domain
    cert, key = make_cert(dir)
    d = Daemon(build, pg, dir, cert=(cert, key), max_recipients=5)
    c = SMTPClient.connect(d.submission_port); c.ehlo(); c.starttls(); ...
    d.stop()
"""

import atexit
import base64
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Scale every wait when the binaries run under a sanitizer.
# SENDGATE_VALGRIND, when set, is the valgrind command line every daemon
# runs under (make valgrind sets it; without -q, so that every process that
# ends under valgrind writes its ERROR SUMMARY): the daemon and the delivery
# child it starts log to valgrind/PID.log beside the daemon's log, which
# sanitizer_report reads like a sanitizer's output.
VALGRIND = os.environ.get("SENDGATE_VALGRIND", "").split()
SLOW = 4.0 if VALGRIND else 3.0 if "asan" in os.environ.get("SENDGATE_BUILD", "") else 1.0

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def build_dir():
    """The build folder holding sendgate and sendgatectl."""
    return os.environ.get("SENDGATE_BUILD") or os.path.join(REPO, "build")


def _port_pool():
    """Ports below the kernel's ephemeral range, walked from a pid-based start.

    Asking the kernel for port 0 and closing the socket hands back ephemeral
    ports: two calls may return the same one (a daemon's submission and smtps
    ports once did), and any outgoing connection may take it before the
    daemon binds it. Ports outside that range are never picked by the kernel,
    and each is handed out once per process."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    first, last = 10000, max(low - 1, 10999)
    span = last - first + 1
    start = (os.getpid() * 7919) % span
    for i in range(span):
        yield first + (start + i) % span


_ports = _port_pool()
_ports_lock = threading.Lock()


def free_port():
    """A TCP port free on 127.0.0.1, never handed out before by this process."""
    with _ports_lock:
        for port in _ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free TCP port left below the ephemeral range")


def eventually(fn, timeout=5.0, interval=0.1, what="condition"):
    """Calls fn until it returns a true value (returned) or timeout passes."""
    deadline = time.monotonic() + timeout * SLOW
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %r)"
                                 % (timeout * SLOW, what, last))
        time.sleep(interval)


def run(argv, timeout=60, check=True, **kw):
    """subprocess.run with a timeout and captured text output."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s exited %d\nstdout: %s\nstderr: %s"
                           % (" ".join(argv), r.returncode, r.stdout, r.stderr))
    return r


# ---------------------------------------------------------------- PostgreSQL

def pg_bindir():
    """Folder of initdb/pg_ctl: pg_config --bindir, else the newest Debian one."""
    try:
        d = run(["pg_config", "--bindir"], timeout=10).stdout.strip()
        if os.path.exists(os.path.join(d, "initdb")):
            return d
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        pass
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not cands:
        raise RuntimeError("PostgreSQL server binaries not found (initdb)")
    return os.path.dirname(cands[-1])


class Postgres:
    """A PostgreSQL cluster listening only on a unix socket in its own folder.

    dir: where the cluster lives; None makes a temp folder under /tmp that
    stop() removes. A folder that already holds a cluster is reused
    (tools/demo.py keeps one under ./var). fsync=False for throwaway test
    clusters (the spool's durability is what is under test, not Postgres').
    """

    def __init__(self, dir=None, port=None, fsync=False, dbname="sendgate"):
        self.bindir = pg_bindir()
        self.temp = dir is None
        self.dir = os.path.abspath(dir) if dir else tempfile.mkdtemp(prefix="sgpg-", dir="/tmp")
        os.makedirs(self.dir, exist_ok=True)
        self.data = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.port = port or (5432 if not self.temp else free_port())
        self.dbname = dbname
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        # The socket lives here: the daemon, which drops root after start,
        # must still reach it to reconnect (the data folder stays 0700).
        os.chmod(self.dir, 0o755)
        self.started_here = False
        self.fsync = fsync
        if self.temp:
            atexit.register(self.stop)  # a throwaway cluster never outlives its user
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            self._pg(["initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                      "-E", "UTF8", "--locale=C"] + ([] if fsync else ["--no-sync"]), timeout=120)
        self.start()

    @property
    def url(self):
        """libpq conninfo of the sendgate database."""
        return "host=%s port=%d user=postgres dbname=%s" % (self.dir, self.port, self.dbname)

    def _pg(self, argv, timeout=60):
        argv = [os.path.join(self.bindir, argv[0])] + argv[1:]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        return run(argv, timeout=timeout, cwd="/")

    def _running(self):
        if not os.path.exists(os.path.join(self.data, "postmaster.pid")):
            return False
        argv = [os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "status"]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        return run(argv, timeout=30, check=False, cwd="/").returncode == 0

    def psql(self, query, db=None, timeout=30):
        """Runs query with psql; returns its unaligned, tab-separated output."""
        argv = [os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t", "-F", "\t",
                "-v", "ON_ERROR_STOP=1", "-h", self.dir, "-p", str(self.port), "-U",
                "postgres", "-d", db or self.dbname, "-c", query]
        return run(argv, timeout=timeout).stdout

    def sql(self, query):
        """Runs query; returns the rows as lists of strings ('' for NULL)."""
        out = self.psql(query)
        return [line.split("\t") for line in out.splitlines() if line != ""]

    def scalar(self, query):
        rows = self.sql(query)
        return rows[0][0] if rows else None

    def dump(self):
        """pg_dump of the data, as text (to look for things never stored)."""
        argv = [os.path.join(self.bindir, "pg_dump"), "--data-only", "-h", self.dir,
                "-p", str(self.port), "-U", "postgres", self.dbname]
        return run(argv, timeout=60).stdout

    def start(self):
        """Starts the server unless it runs already; creates the database."""
        if not self._running():
            opts = "-c listen_addresses='' -k %s -p %d" % (self.dir, self.port)
            if not self.fsync:
                opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            self._pg(["pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", "60",
                      "-o", opts, "start"], timeout=90)
            self.started_here = True
        r = self.psql("SELECT 1 FROM pg_database WHERE datname = '%s'" % self.dbname, db="postgres")
        if not r.strip():
            self._pg(["createdb", "-h", self.dir, "-p", str(self.port), "-U", "postgres",
                      self.dbname])

    def halt(self):
        """Stops the server but keeps the cluster (start() brings it back)."""
        self._pg(["pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop"], timeout=90)

    def stop(self):
        """Stops the cluster if this object started it; removes a temp cluster."""
        if self.started_here and self._running():
            try:
                self.halt()
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        self.started_here = False
        if self.temp:
            shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------- TLS

def make_cert(dir, name="localhost"):
    """Self-signed certificate and key for name (and 127.0.0.1). Returns paths."""
    os.makedirs(dir, exist_ok=True)
    cert = os.path.join(dir, "cert.pem")
    key = os.path.join(dir, "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
         "-days", "3650", "-subj", "/CN=" + name, "-keyout", key, "-out", cert,
         "-addext", "subjectAltName=DNS:%s,IP:127.0.0.1" % name], timeout=60)
    # Test material only: readable by the unprivileged daemon user, which
    # rereads it on SIGHUP after dropping root.
    os.chmod(key, 0o644)
    return cert, key


def client_tls_context():
    """A client context that accepts the self-signed test certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---------------------------------------------------------------- sendgatectl

_MASTER_KEY = None


def new_master_key_file(name="master.key"):
    """A fresh random DKIM master key in a file of its own, readable by the
    daemon's unprivileged user."""
    d = tempfile.mkdtemp(prefix="sgmk-", dir="/tmp")
    os.chmod(d, 0o755)
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(path, 0o644)
    return path


def master_key_file():
    """One DKIM master key file per test process, shared by sendgatectl
    (which seals domain keys with it) and the daemon (which unseals them)."""
    global _MASTER_KEY
    if _MASTER_KEY is None:
        _MASTER_KEY = new_master_key_file()
    return _MASTER_KEY


class CtlError(RuntimeError):
    def __init__(self, argv, rc, stdout, stderr):
        super().__init__("sendgatectl %s exited %d: %s%s" % (" ".join(argv), rc, stderr, stdout))
        self.rc, self.stdout, self.stderr = rc, stdout, stderr


class Ctl:
    """Runs build/sendgatectl --json against a database (and optionally a config)."""

    def __init__(self, build, pg_url, config=None):
        self.exe = os.path.join(build, "sendgatectl")
        self.pg_url = pg_url
        self.config = config
        if self.config is None:
            fd, self.config = tempfile.mkstemp(prefix="sgctl-", suffix=".conf")
            with os.fdopen(fd, "w") as f:
                f.write("[database]\nurl = %s\n" % pg_url)
                f.write("[dkim]\nmaster_key_file = %s\n" % master_key_file())

    def raw(self, *args, json_out=True, timeout=60):
        argv = [self.exe, "-c", self.config] + (["--json"] if json_out else []) + list(args)
        env = dict(os.environ, SENDGATE_DATABASE_URL=self.pg_url)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)

    def __call__(self, *args, timeout=60):
        """Runs a command; returns its parsed JSON (None for empty output)."""
        r = self.raw(*args, timeout=timeout)
        if r.returncode != 0:
            raise CtlError(list(args), r.returncode, r.stdout, r.stderr)
        out = r.stdout.strip()
        if not out:
            return None
        try:
            return json.loads(out)
        except ValueError as e:
            raise AssertionError("sendgatectl --json %s printed non-JSON: %r (%s)"
                                 % (" ".join(args), out, e))

    def migrate(self):
        return self("migrate")

    def tenant_create(self, name):
        return self("tenant", "create", name)

    def credential_create(self, tenant):
        return self("credential", "create", tenant)

    def credential_revoke(self, username):
        return self("credential", "revoke", username)

    def domain_add(self, tenant, domain, operator_verified=False, algorithm=None):
        args = ["domain", "add", tenant, domain]
        if operator_verified:
            args.append("--operator-verified")
        if algorithm:
            args += ["--algorithm", algorithm]
        return self(*args)

    def queue_list(self):
        return self("queue", "list")


_counter = [0]


def unique_name(prefix="t"):
    """A fresh tenant-name-safe token: lower-case letters, digits, hyphens."""
    _counter[0] += 1
    return "%s%d-%s" % (prefix, _counter[0], secrets.token_hex(3))


class Tenant:
    """A tenant with one credential and one sendable domain."""

    def __init__(self, name, username, secret, domain, cred_json):
        self.name, self.username, self.secret, self.domain = name, username, secret, domain
        self.cred_json = cred_json

    def addr(self, local="sender"):
        return "%s@%s" % (local, self.domain)

    def __repr__(self):
        return "Tenant(%s, %s, %s)" % (self.name, self.username, self.domain)


def setup_tenant(ctl, name=None, domain=None, verified=True, algorithm=None):
    """Creates a tenant, a credential and a domain (operator-verified unless
    verified=False; DKIM keys of the daemon's default algorithm unless
    algorithm names one). Returns a Tenant."""
    name = name or unique_name()
    domain = domain or ("%s.example" % name)
    ctl.tenant_create(name)
    cred = ctl.credential_create(name)
    if not isinstance(cred, dict) or "username" not in cred or "secret" not in cred:
        raise AssertionError("credential create --json gave %r, expected username and secret"
                             % (cred,))
    ctl.domain_add(name, domain, operator_verified=verified, algorithm=algorithm)
    return Tenant(name, cred["username"], cred["secret"], domain, cred)


# -------------------------------------------------------------------- daemon

def _config_sections():
    """Maps each config key to its section(s), read from common/config.c."""
    out = {}
    try:
        with open(os.path.join(REPO, "common", "config.c")) as f:
            for sec, key in re.findall(r'\{\s*"(\w+)",\s*"(\w+)",\s*K_', f.read()):
                out.setdefault(key, []).append(sec)
    except OSError:
        pass
    return out


CONFIG_SECTIONS = _config_sections()


def _section_of(key):
    """Section of a bare key ('smtp' wins when the name exists in several)."""
    secs = CONFIG_SECTIONS.get(key, [])
    if "smtp" in secs or not secs:
        return "smtp"
    return secs[0]


DAEMON_USER = "nobody"


def open_path_for_daemon(path):
    """Lets the unprivileged daemon user traverse every folder above path."""
    path = os.path.abspath(path)
    while path not in ("/", ""):
        st = os.stat(path)
        if not st.st_mode & 0o001:
            os.chmod(path, (st.st_mode & 0o7777) | 0o001)
        path = os.path.dirname(path)


class DaemonDied(RuntimeError):
    pass


class Daemon:
    """build/sendgate with a generated config, started and waited on.

    Overrides: bare keys (max_recipients=5: section found from config.c,
    smtp preferred) or section__key (delivery__enabled="no"). A value of
    None drops the key. start=False only writes the config.
    """

    def __init__(self, build, pg, tmpdir, cert=None, spool_dir=None, start=True,
                 ready_timeout=15.0, submission_port=None, smtps_port=None, env=None,
                 **overrides):
        self.build = build
        self.exe = os.path.join(build, "sendgate")
        self.pg = pg
        self.dir = os.path.abspath(str(tmpdir))
        os.makedirs(self.dir, exist_ok=True)
        if cert is None:
            cert = make_cert(os.path.join(self.dir, "tls"))
        self.cert, self.key = cert
        self.spool_dir = spool_dir or os.path.join(self.dir, "spool")
        self.submission_port = submission_port or free_port()
        self.smtps_port = smtps_port or free_port()
        self.ready_timeout = ready_timeout
        self.env = env
        self.config_path = os.path.join(self.dir, "sendgate-%d.conf" % self.submission_port)
        self.logfile = os.path.join(self.dir, "sendgate-%d.log" % self.submission_port)
        self.proc = None
        self.pids = []  # of every run, for the valgrind logs
        self.killed = set()  # pids this harness killed with SIGKILL
        self.returncodes = []
        server = {"hostname": "mx.sendgate.test"}
        if os.geteuid() == 0:
            # sendgate refuses to run as root: it drops to this user after
            # binding, so the paths it uses must be reachable by it.
            server["user"] = DAEMON_USER
            open_path_for_daemon(self.dir)
            open_path_for_daemon(os.path.dirname(os.path.abspath(self.cert)))
        self.config = {
            "server": server,
            "smtp": {
                "submission_listen": "127.0.0.1:%d" % self.submission_port,
                "smtps_listen": "127.0.0.1:%d" % self.smtps_port,
                "tls_cert": self.cert,
                "tls_key": self.key,
                "auth_fail_delay": "0",
            },
            "database": {"url": pg.url if pg is not None else ""},
            "spool": {"dir": self.spool_dir},
            "dkim": {"master_key_file": master_key_file()},
            # No lookup may leave the machine: tests that need DNS point
            # this at their loopback DNS server; by default nothing answers.
            "dns": {"servers": "127.0.0.1:9", "timeout_ms": "200", "tries": "1"},
            # Until delivery is under test, nothing may leave the queue.
            "delivery": {"enabled": "no"},
        }
        for k, v in overrides.items():
            sec, key = k.split("__", 1) if "__" in k else (_section_of(k), k)
            if v is None:
                self.config.get(sec, {}).pop(key, None)
            else:
                self.config.setdefault(sec, {})[key] = str(v)
        self.write_config()
        if start:
            self.start()

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write("# written by tests/integration/sgharness.py\n")
            for sec, kv in self.config.items():
                f.write("\n[%s]\n" % sec)
                for k, v in kv.items():
                    f.write("%s = %s\n" % (k, v))

    def spawn(self):
        """Starts the process without waiting for readiness; returns Popen."""
        env = dict(os.environ)
        env.pop("SENDGATE_DATABASE_URL", None)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        if self.env:
            env.update(self.env)
        self._log_offset = os.path.getsize(self.logfile) if os.path.exists(self.logfile) else 0
        logf = open(self.logfile, "ab")
        try:
            argv = [self.exe, "-c", self.config_path]
            if VALGRIND:
                # The delivery child, exec'd after privileges are dropped,
                # writes its own log there too.
                vdir = os.path.join(self.dir, "valgrind")
                os.makedirs(vdir, exist_ok=True)
                os.chmod(vdir, 0o1777)
                argv = VALGRIND + ["--trace-children=yes",
                                   "--log-file=" + os.path.join(vdir, "%p.log")] + argv
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.dir, start_new_session=True)
        finally:
            logf.close()
        self.pids.append(self.proc.pid)
        return self.proc

    def start(self):
        """Starts sendgate and waits for event=ready; raises DaemonDied on exit."""
        self.spawn()
        deadline = time.monotonic() + self.ready_timeout * SLOW
        while True:
            text = self.log_text(since_start=True)
            if "event=ready" in text:
                return self
            rc = self.proc.poll()
            if rc is not None:
                self.returncodes.append(rc)
                raise DaemonDied("sendgate exited %d before event=ready; log:\n%s"
                                 % (rc, text[-4000:]))
            if time.monotonic() > deadline:
                self.kill()
                raise DaemonDied("sendgate not ready after %.0fs; log:\n%s"
                                 % (self.ready_timeout * SLOW, text[-4000:]))
            time.sleep(0.05)

    def log_text(self, since_start=False):
        """The daemon's log (every run of this Daemon, or the current one)."""
        try:
            with open(self.logfile, "rb") as f:
                if since_start:
                    f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=5.0):
        """Waits until the log matches the regex; returns the match."""
        rx = re.compile(pattern)
        return eventually(lambda: rx.search(self.log_text()), timeout, what="log /%s/" % pattern)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=20.0):
        """SIGTERM, wait; returns the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self.returncodes.append("timeout")
                self.proc = None
                raise AssertionError("sendgate did not exit within %.0fs of SIGTERM" % timeout)
        rc = self.proc.returncode
        self.returncodes.append(rc)
        self.proc = None
        return rc

    def kill(self):
        """SIGKILL and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.returncodes.append("killed")
        self.killed.add(self.proc.pid)
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def sanitizer_report(self):
        """The sanitizer errors in the log, or '' when it is clean."""
        text = self.log_text()
        for m in SANITIZER_MARKERS:
            i = text.find(m)
            if i >= 0:
                return text[max(0, i - 200):i + 3000]
        return self.valgrind_report(text) if VALGRIND else ""

    def valgrind_report(self, text):
        """What valgrind found in this daemon's processes, or ''. Each one
        must have a log that ends in a summary of no errors (definite
        leaks count as errors), unless it was killed on purpose: by this
        harness, or by a test (the daemon logs the delivery child's death
        by a signal). A process without a log, or whose log has no summary,
        escaped valgrind; one killed at the stop timeout had no leak check."""
        vdir = os.path.join(self.dir, "valgrind")
        children = {int(p) for p in re.findall(r"event=delivery_started pid=(\d+)", text)}
        signalled = {int(p) for p in re.findall(r"event=delivery_exited pid=(\d+) signal=", text)}
        missing = sorted(p for p in set(self.pids) | children
                         if not os.path.exists(os.path.join(vdir, "%d.log" % p)))
        if missing:
            return "no valgrind/PID.log for pids %s: not run under valgrind" % missing
        for ev in ("event=delivery_killed", "event=stop_timeout"):
            if ev in text:
                return "%s in the log: a process was killed before valgrind's leak check" % ev
        for name in sorted(os.listdir(vdir)) if os.path.isdir(vdir) else []:
            with open(os.path.join(vdir, name), errors="replace") as f:
                vg = f.read()
            m = re.search(r"ERROR SUMMARY: (\d+) errors", vg)
            if m and m.group(1) == "0":
                continue
            pid = int(name.split(".")[0])
            if not m and (pid in self.killed or pid in signalled):
                continue
            why = "errors" if m else "no ERROR SUMMARY: the process left valgrind"
            return "valgrind/%s (%s):\n%s" % (name, why, vg[-8000:])
        return ""

    # spool helpers
    def queue_dir(self):
        return os.path.join(self.spool_dir, "queue")

    def queue_ids(self):
        try:
            return sorted(n for n in os.listdir(self.queue_dir()) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def queue_file(self, qid):
        return os.path.join(self.queue_dir(), qid)


# -------------------------------------------------------------- SMTP client

class SMTPReply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines  # text after "NNN-" / "NNN "

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def enhanced(self):
        """The RFC 3463 code of the first line ("5.7.1"), or None."""
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", self.lines[0] if self.lines else "")
        return m.group(1) if m else None

    def __repr__(self):
        return "<%d %s>" % (self.code, " | ".join(self.lines))


class Closed(Exception):
    """The server closed the connection."""


class SMTPClient:
    """A byte-exact SMTP client on a raw (optionally TLS) socket.

    Sends exactly the bytes it is given (for pipelining and smuggling
    tests) and parses replies strictly.
    """

    def __init__(self, sock, timeout=10.0):
        self.sock = sock
        self.timeout = timeout * SLOW
        self.sock.settimeout(self.timeout)
        self.buf = b""
        self.greeting = None

    @classmethod
    def connect(cls, port, tls=False, timeout=10.0, read_greeting=True, source=None):
        """source: a local address to connect from (127.0.0.2 is another
        client address on Linux loopback)."""
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW,
                                     source_address=(source, 0) if source else None)
        if tls:
            s = client_tls_context().wrap_socket(s)
        c = cls(s, timeout)
        if read_greeting:
            c.greeting = c.reply()
        return c

    @property
    def tls(self):
        return isinstance(self.sock, ssl.SSLSocket)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, timeout=None):
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            chunk = b""
        except ssl.SSLError as e:
            raise Closed("TLS error: %s" % e)
        if not chunk:
            raise Closed("connection closed by server")
        self.buf += chunk

    def readline(self, timeout=None):
        while b"\r\n" not in self.buf:
            self._fill(timeout)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, timeout=None):
        """Reads one (possibly multi-line) reply; raises Closed on EOF."""
        lines = []
        code = None
        while True:
            raw = self.readline(timeout)
            m = re.match(rb"^(\d{3})([ -])(.*)$", raw, re.S)
            if not m:
                if raw[:3].isdigit() and len(raw) == 3:
                    m = re.match(rb"^(\d{3})()()$", raw)
                else:
                    raise AssertionError("malformed reply line %r" % raw)
            c = int(m.group(1))
            if code is not None and c != code:
                raise AssertionError("reply code changed inside a multi-line reply: %r" % raw)
            code = c
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) != b"-":
                return SMTPReply(code, lines)

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line):
        """Sends one command line (CRLF added) and returns its reply."""
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply()

    def pending_replies(self, quiet=2.0):
        """Every reply that arrives until quiet seconds pass without one.
        Returns (replies, closed)."""
        out = []
        while True:
            try:
                out.append(self.reply(timeout=quiet * SLOW))
            except socket.timeout:
                return out, False
            except Closed:
                return out, True

    def is_closed(self, timeout=5.0):
        """True when the server closes (EOF/reset) within timeout and sends
        nothing else; raises AssertionError if it sends bytes instead."""
        if self.buf:
            raise AssertionError("server sent %r where a close was expected" % self.buf)
        try:
            self._fill(timeout * SLOW)
        except Closed:
            return True
        except socket.timeout:
            return False
        raise AssertionError("server sent %r where a close was expected" % self.buf)

    def ehlo(self, name="client.test"):
        r = self.cmd("EHLO " + name)
        assert r.code == 250, "EHLO: %r" % r
        self.ehlo_reply = r
        return r

    def keywords(self):
        """EHLO keywords (upper-cased) mapped to their parameters."""
        out = {}
        for line in self.ehlo_reply.lines[1:]:
            parts = line.split()
            if parts:
                out[parts[0].upper()] = parts[1:]
        return out

    def starttls(self):
        r = self.cmd("STARTTLS")
        assert r.code == 220, "STARTTLS: %r" % r
        assert not self.buf, "bytes after the STARTTLS reply: %r" % self.buf
        self.sock = client_tls_context().wrap_socket(self.sock)
        self.sock.settimeout(self.timeout)
        return r

    def auth_plain(self, user, secret):
        tok = base64.b64encode(b"\0" + user.encode() + b"\0" + secret.encode()).decode()
        return self.cmd("AUTH PLAIN " + tok)

    def login(self, tenant):
        """EHLO (+ STARTTLS + EHLO on a plain connection) and AUTH PLAIN; asserts 235."""
        if not self.tls:
            self.ehlo()
            self.starttls()
        self.ehlo()
        r = self.auth_plain(tenant.username, tenant.secret)
        assert r.code == 235, "AUTH PLAIN: %r" % r
        return r

    def quit(self):
        try:
            self.cmd("QUIT")
        except (Closed, OSError, AssertionError):
            pass
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send_message(self, sender, rcpts, data):
        """One transaction, command by command. data: bytes already
        dot-stuffed and ending in CRLF (the final ".\\r\\n" is added).
        Returns the final reply; asserts the intermediate ones."""
        r = self.cmd("MAIL FROM:<%s>" % sender)
        if r.code != 250:
            return r
        for a in rcpts:
            r = self.cmd("RCPT TO:<%s>" % a)
            if r.code != 250:
                return r
        r = self.cmd("DATA")
        if r.code != 354:
            return r
        self.send(data + b".\r\n")
        return self.reply()


QUEUED_RX = re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-Z]+)$")


def queued_id(reply):
    """The queue id of a '250 2.0.0 Ok: queued as ID' reply, else None."""
    if reply.code != 250 or len(reply.lines) != 1:
        return None
    m = QUEUED_RX.match(reply.lines[0])
    return m.group(1) if m else None


def dot_stuff(data):
    """RFC 5321 4.5.2 transparency for CRLF text."""
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def make_message(frm, to="rcpt@example.net", subject="test", body=b"hello\r\n",
                 extra_headers=(), message_id=True, date=True):
    """A CRLF message (bytes): headers + blank line + body."""
    h = ["From: <%s>" % frm if "<" not in frm and " " not in frm else "From: " + frm,
         "To: <%s>" % to, "Subject: %s" % subject]
    if date:
        h.append("Date: Sun, 22 Nov 2026 10:00:00 +0000")
    if message_id:
        h.append("Message-ID: <%s@client.test>" % secrets.token_hex(8))
    h.extend(extra_headers)
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


# ------------------------------------------------------------------- misc

class LogTail(threading.Thread):
    """Copies new lines of a file to a stream until stopped (for the demo)."""

    def __init__(self, path, out):
        super().__init__(daemon=True)
        self.path, self.out = path, out
        self.stop_event = threading.Event()

    def run(self):
        pos = 0
        while not self.stop_event.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
                    pos = f.tell()
                if data:
                    self.out.write(data.decode("utf-8", "replace"))
                    self.out.flush()
            except OSError:
                pass
            self.stop_event.wait(0.2)

    def stop(self):
        self.stop_event.set()


def spooled(daemon, qid):
    """Reads and verifies the queue file of qid; AssertionError if it is
    missing or damaged."""
    import spoolfile

    path = daemon.queue_file(qid)
    assert os.path.exists(path), "queue id %s acknowledged but %s does not exist" % (qid, path)
    try:
        return spoolfile.read(path)
    except spoolfile.SpoolFormatError as e:
        raise AssertionError("queue file %s is damaged: %s" % (path, e))


# ------------------------------------------------------ message comparison

def split_message(msg):
    """(list of raw header fields incl. their CRLFs, body) of a CRLF message."""
    i = msg.find(b"\r\n\r\n")
    if i < 0:
        head, body = msg, b""
    else:
        head, body = msg[:i + 2], msg[i + 4:]
    fields = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        line += b"\r\n"
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, body


def field_name(raw):
    return raw.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def field_value(raw):
    v = raw.split(b":", 1)[1] if b":" in raw else b""
    return re.sub(rb"\r\n[ \t]", b" ", v).strip().decode("utf-8", "replace")


def added_fields(sent, stored):
    """Checks that stored is sent plus header fields only (original fields
    byte-identical and in order, body identical); returns the added fields
    as [(lower-case name, unfolded value)] in stored order."""
    sf, sbody = split_message(sent)
    pf, pbody = split_message(stored)
    assert pbody == sbody, "body changed in the spool:\nsent   %r\nstored %r" % (sbody[:300], pbody[:300])
    added = []
    j = 0
    for raw in pf:
        if j < len(sf) and raw == sf[j]:
            j += 1
        else:
            added.append((field_name(raw), field_value(raw)))
    assert j == len(sf), "sent header field %r missing or altered in the spool; stored header:\n%s" % (
        sf[j] if j < len(sf) else None, b"".join(pf).decode("utf-8", "replace"))
    return added
