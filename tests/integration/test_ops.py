"""Operations: what an operator relies on outside the SMTP dialogue.

- docker/: the compose file validates and is wired as documented; the
  Dockerfile's runtime stage installs every shared library the binaries
  load (checked against dpkg, since no Docker engine runs here); its
  HEALTHCHECK command works against a real admin listener; the entrypoint
  waits for the database, migrates idempotently and execs the daemon.
- Configuration: every key the parser accepts is in etc/sendgate.conf and
  in the README's table (tools/check-config-doc.py); the example file itself
  passes --check-config; broken configs are refused naming file, line, key.
- Health endpoints (/healthz, /readyz) with the database up, down and back.
- Signals: SIGHUP with a new certificate, SIGHUP with runtime keys and with a
  broken file; SIGTERM while a client is in DATA.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

import sgharness as h

REPO = h.REPO
DOCKER = os.path.join(REPO, "docker")
DOCKERFILE = os.path.join(DOCKER, "Dockerfile")
COMPOSE = os.path.join(DOCKER, "compose.yaml")
ENTRYPOINT = os.path.join(DOCKER, "entrypoint.sh")
CHECK_DOC = os.path.join(REPO, "tools", "check-config-doc.py")
PY = "/usr/bin/python3"
SANITIZER_LIB = re.compile(r"lib(asan|ubsan|lsan|tsan)\.so")


# ------------------------------------------------------------ helpers

def config_keys(build):
    out = h.run([os.path.join(build, "sendgate"), "--list-config-keys"], timeout=15).stdout
    return set(tuple(re.fullmatch(r"\[(\w+)\] (\w+)", line).groups())
               for line in out.splitlines() if line.strip())


def dockerfile_instructions(path=None):
    """[(stage index, INSTRUCTION, arguments)] with continuations joined and
    comments dropped."""
    with open(path or DOCKERFILE) as f:
        lines = f.read().split("\n")
    logical, cur = [], ""
    for line in lines:
        if line.lstrip().startswith("#") and not cur:
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip():
            logical.append(cur.strip())
        cur = ""
    out, stage = [], -1
    for line in logical:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage += 1
        out.append((stage, word, rest.strip()))
    return out


def apt_installed_in(stage):
    """Packages named after 'apt-get install' in the RUN lines of a stage."""
    pkgs = []
    for st, word, rest in dockerfile_instructions():
        if st != stage or word != "RUN":
            continue
        for m in re.finditer(r"apt-get\s+install\s+(.*?)(?:&&|;|$)", rest):
            pkgs += [t for t in m.group(1).split() if not t.startswith("-")]
    return pkgs


def stage_index(name):
    for st, word, rest in dockerfile_instructions():
        if word == "FROM" and re.search(r"\bAS\s+%s\b" % re.escape(name), rest, re.I):
            return st
    raise AssertionError("Dockerfile has no stage named %s" % name)


def _path_spellings(path):
    """path and its symlink target, each as /lib/... and /usr/lib/... (merged /usr)."""
    out = []
    for p in (path, os.path.realpath(path)):
        out.append(p)
        if p.startswith("/usr/lib/"):
            out.append(p[len("/usr"):])
        elif p.startswith("/lib/") or p.startswith("/lib64/"):
            out.append("/usr" + p)
    return out


def dpkg_owners(paths):
    """{path: Debian package holding it (under any spelling), or None}, with
    one dpkg -S call."""
    spell = {p: _path_spellings(p) for p in paths}
    allp = sorted(set(x for v in spell.values() for x in v))
    r = subprocess.run(["dpkg", "-S"] + allp, capture_output=True, text=True, timeout=120)
    owner = {}
    for line in r.stdout.splitlines():
        pkgs, _, f = line.partition(": ")
        owner[f.strip()] = pkgs.split(",")[0].strip().split(":")[0]
    return {p: next((owner[x] for x in v if x in owner), None) for p, v in spell.items()}


def ldd_libs(exe):
    """{soname: path} of every shared library the dynamic loader maps for exe."""
    out = h.run(["ldd", exe], timeout=30).stdout
    libs = {}
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => (/\S+) \(", line)
        if m:
            libs[m.group(1)] = m.group(2)
            continue
        m = re.match(r"(/\S+) \(", line)
        if m:
            libs[os.path.basename(m.group(1))] = m.group(1)
        elif "not found" in line:
            raise AssertionError("ldd %s: %s" % (exe, line))
    return libs


def needed(exe):
    """The DT_NEEDED sonames of exe (its direct dependencies)."""
    out = h.run(["objdump", "-p", exe], timeout=30).stdout
    return re.findall(r"^\s*NEEDED\s+(\S+)", out, re.M)


class Dpkg:
    """The installed packages' Depends graph, read with one dpkg-query."""

    def __init__(self):
        fmt = "${Package}\t${Status}\t${Essential}\t${Priority}\t${Pre-Depends}, ${Depends}\t${Provides}\n"
        out = h.run(["dpkg-query", "-W", "-f=" + fmt], timeout=120).stdout
        self.deps, self.provides, self.base = {}, {}, set()
        for line in out.splitlines():
            pkg, status, ess, prio, deps, prov = line.split("\t")
            if "install ok installed" not in status:
                continue
            self.deps[pkg] = deps
            for v in prov.split(","):
                if v.strip():
                    self.provides.setdefault(v.strip().split()[0], pkg)
            # Essential and Priority: required make a minbase image
            # (debian:12-slim).
            if ess == "yes" or prio == "required":
                self.base.add(pkg)

    def resolve(self, name):
        name = name.split(":")[0]
        if name in self.deps:
            return name
        return self.provides.get(name)

    def closure(self, pkgs):
        """pkgs and everything they (pre-)depend on, through installed packages."""
        seen, todo = set(), list(pkgs)
        while todo:
            p = self.resolve(todo.pop())
            if p is None or p in seen:
                continue
            seen.add(p)
            for alt in self.deps[p].split(","):
                names = [a.strip().split()[0] for a in alt.split("|") if a.strip()]
                have = [n for n in names if self.resolve(n)]
                if have:
                    todo.append(have[0])
        return seen


_dpkg = []


def dpkg():
    if not _dpkg:
        _dpkg.append(Dpkg())
    return _dpkg[0]


def http_get(port, path, timeout=5):
    """(status, parsed JSON or text) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            body = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        status = e.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def fingerprint(sock):
    return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()


def smtps_fingerprint(port):
    c = h.SMTPClient.connect(port, tls=True)
    try:
        return fingerprint(c.sock)
    finally:
        c.quit()


def starttls_fingerprint(port):
    c = h.SMTPClient.connect(port)
    try:
        c.ehlo()
        c.starttls()
        return fingerprint(c.sock)
    finally:
        c.quit()


def replace_cert(dst_cert, dst_key, src_dir):
    """Puts a new certificate and key at the daemon's paths (atomically each)."""
    cert, key = h.make_cert(src_dir, name="renewed.test")
    for src, dst in ((cert, dst_cert), (key, dst_key)):
        tmp = dst + ".new"
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)


def own_cert(tmp_path, name="tls"):
    d = str(tmp_path / name)
    cert, key = h.make_cert(d)
    h.open_path_for_daemon(d)
    return cert, key


def line_of(path, needle):
    """Number of the first line of path that starts with needle."""
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.startswith(needle):
                return i
    raise AssertionError("%s not in %s" % (needle, path))


def check_config(build, path, env=None, timeout=30):
    e = dict(os.environ)
    e.pop("SENDGATE_DATABASE_URL", None)
    e.update(env or {})
    return subprocess.run([os.path.join(build, "sendgate"), "--check-config", "-c", path],
                          capture_output=True, text=True, timeout=timeout, env=e)


# ------------------------------------------------------------- compose

def compose_config(path=COMPOSE, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(["docker-compose", "-f", path, "config"], capture_output=True,
                          text=True, timeout=60, env=e, cwd=REPO)


def test_compose_file_validates():
    import yaml

    r = compose_config()
    assert r.returncode == 0, "docker-compose config failed:\n%s" % r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert set(cfg["services"]) == {"postgres", "sendgate"}, cfg["services"].keys()


def test_compose_validator_rejects_a_broken_file(tmp_path):
    """The validation above means something: a wrong depends_on condition fails."""
    with open(COMPOSE) as f:
        text = f.read()
    assert "condition: service_healthy" in text
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace("condition: service_healthy", "condition: when_i_feel_like_it"))
    r = compose_config(str(broken))
    assert r.returncode != 0, "docker-compose accepted an invalid depends_on condition"


def test_compose_wiring(build):
    import yaml

    r = compose_config()
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    pg = cfg["services"]["postgres"]
    sg = cfg["services"]["sendgate"]
    assert pg["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(str(v).endswith(":/var/lib/postgresql/data:rw") or
               (isinstance(v, dict) and v.get("target") == "/var/lib/postgresql/data")
               for v in pg["volumes"]), pg["volumes"]
    assert sg["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert sg["build"]["dockerfile"] == "docker/Dockerfile"
    assert os.path.realpath(sg["build"]["context"]) == os.path.realpath(REPO)
    env = sg["environment"]
    assert env["SENDGATE_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:" in env["SENDGATE_DATABASE_URL"], "the URL must name the postgres service"
    published = {int(p["target"]) for p in sg["ports"]}
    assert published == {25, 587, 465}, sg["ports"]
    targets = {}
    for v in sg["volumes"]:
        if isinstance(v, dict):
            targets[v["target"]] = v
        else:
            src, tgt = v.split(":")[:2]
            targets[tgt] = {"source": src}
    assert "/var/spool/sendgate" in targets, "spool volume missing: %r" % sg["volumes"]
    conf = targets.get(env.get("SENDGATE_CONFIG", "/etc/sendgate/sendgate.conf"))
    assert conf and os.path.exists(conf["source"]), "config file not mounted: %r" % sg["volumes"]
    # Every secret is used by a path the environment names, and exists in
    # the top-level secrets.
    secrets = {s["source"] for s in sg["secrets"]}
    assert secrets <= set(cfg["secrets"])
    for s in ("tls_cert", "tls_key", "dkim_master_key"):
        assert s in secrets
        assert "/run/secrets/%s" % s in env.values(), "secret %s is not used" % s
    # Overrides name real keys (a typo would silently be an unknown key at start).
    keys = config_keys(build)
    for name in env:
        if name.startswith("SENDGATE__"):
            sec, key = name[len("SENDGATE__"):].split("__", 1)
            assert (sec, key) in keys, "%s names no config key" % name


# ---------------------------------------------------------- Dockerfile

def test_dockerfile_runtime_stage_has_every_library(build):
    """Every library ldd lists for both binaries belongs to a package the
    runtime stage installs, or to one they depend on, or to the base system;
    every direct dependency (DT_NEEDED) to a package installed by name."""
    runtime = stage_index("runtime")
    pkgs = apt_installed_in(runtime)
    assert pkgs, "runtime stage installs nothing?"
    for p in pkgs:
        assert not p.endswith("-dev"), "runtime stage installs a -dev package: %s" % p
    r = subprocess.run(["apt-cache", "show", "--no-all-versions"] + pkgs, capture_output=True,
                       text=True, timeout=120)
    known = set(re.findall(r"^Package: (\S+)$", r.stdout, re.M))
    assert not set(pkgs) - known, "no Debian package named %s" % sorted(set(pkgs) - known)
    db = dpkg()
    closure = db.closure(set(pkgs) | db.base)
    base = db.closure(db.base)
    problems = []
    for exe in ("sendgate", "sendgatectl"):
        path = os.path.join(build, exe)
        # The sanitizer runtimes of `make asan` builds are not part of the image.
        libs = {k: v for k, v in ldd_libs(path).items() if not SANITIZER_LIB.match(k)}
        owners = dpkg_owners(libs.values())
        for soname, lib in sorted(libs.items()):
            owner = owners[lib]
            if owner is None:
                problems.append("%s: %s (%s) belongs to no package" % (exe, soname, lib))
            elif owner not in closure:
                problems.append("%s: %s comes from %s, which the runtime stage does not install"
                                % (exe, soname, owner))
        for soname in needed(path):
            owner = owners.get(libs.get(soname))
            if owner and owner not in pkgs and owner not in base:
                problems.append("%s: directly needs %s from %s: install it by name"
                                % (exe, soname, owner))
    assert not problems, "\n".join(problems)


def test_dockerfile_build_stage_has_every_dev_package():
    """Every pkg-config module the Makefile asks for comes from a package the
    build stage installs."""
    with open(os.path.join(REPO, "Makefile")) as f:
        mk = f.read().replace("\\\n", " ")
    m = re.search(r"^PKGS\s*=\s*(.*)$", mk, re.M)
    assert m, "PKGS not found in the Makefile"
    mods = m.group(1).split()
    pkgs = apt_installed_in(stage_index("build"))
    db = dpkg()
    closure = db.closure(set(pkgs) | db.base)
    files = {}
    for tool in ("make", "gcc", "pkg-config"):
        files[tool] = shutil.which(tool)
    for mod in mods:
        pcdir = h.run(["pkg-config", "--variable=pcfiledir", mod], timeout=15).stdout.strip()
        files["pkg-config module " + mod] = os.path.join(pcdir, mod + ".pc")
    owners = dpkg_owners(files.values())
    missing = ["%s (%s)" % (what, owners[f]) for what, f in sorted(files.items())
               if owners[f] not in closure]
    assert not missing, "not installed in the build stage: %s" % ", ".join(missing)


def test_dockerfile_shape():
    ins = dockerfile_instructions()
    runtime = stage_index("runtime")
    froms = [rest for st, w, rest in ins if w == "FROM"]
    args = dict(re.match(r"(\w+)=(\S+)", rest).groups() for st, w, rest in ins
                if w == "ARG" and "=" in rest)
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), f.split()[0]) for f in froms]
    assert len(images) >= 2 and all(re.match(r"debian:(12|bookworm)\b", i) for i in images), images
    rt = [(w, rest) for st, w, rest in ins if st == runtime]
    words = [w for w, _ in rt]
    user = [rest for w, rest in rt if w == "USER"]
    assert user and user[-1] not in ("root", "0"), "runtime stage must end as a non-root user"
    expose = " ".join(rest for w, rest in rt if w == "EXPOSE").split()
    assert {"25", "587", "465"} <= set(expose), expose
    assert any("/var/spool/sendgate" in rest for w, rest in rt if w == "VOLUME")
    assert "HEALTHCHECK" in words
    # The files it copies from the context exist, and the entrypoint is one of them.
    copied = {}
    for w, rest in rt:
        if w == "COPY" and not rest.startswith("--from"):
            parts = rest.split()
            for src in parts[:-1]:
                assert os.path.exists(os.path.join(REPO, src)), "COPY source %s missing" % src
                copied[src] = parts[-1]
    ep = [rest for w, rest in rt if w == "ENTRYPOINT"][-1]
    assert json.loads(ep)[0] == copied.get("docker/entrypoint.sh"), (ep, copied)
    # Container defaults it sets are real keys.
    env_names = re.findall(r"(SENDGATE__\w+)=", " ".join(rest for w, rest in rt if w == "ENV"))
    assert env_names
    keys = config_keys(h.build_dir())
    for n in env_names:
        sec, key = n[len("SENDGATE__"):].split("__", 1)
        assert (sec, key) in keys, "%s names no config key" % n


def build_stage_copies():
    """[(source in the repository, destination under WORKDIR)] of the build stage."""
    out = []
    for st, w, rest in dockerfile_instructions():
        if st == stage_index("build") and w == "COPY" and not rest.startswith("--"):
            parts = rest.split()
            for src in parts[:-1]:
                out.append((src, parts[-1]))
    return out


@pytest.mark.slow
def test_dockerfile_build_stage_builds(tmp_path):
    """What the build stage copies is enough for its make command: the same
    copy, built here the same way, yields working binaries."""
    src = tmp_path / "src"
    src.mkdir()
    copies = build_stage_copies()
    with open(os.path.join(REPO, "Makefile")) as f:
        mk = f.read()
    folders = re.search(r"^FOLDERS\s*=\s*(.*)$", mk, re.M).group(1).split()
    copied = {s.rstrip("/") for s, _ in copies}
    assert not set(folders) - copied, "build stage does not copy %s" % (set(folders) - copied)
    for s_, dst in copies:
        target = src / dst.lstrip("./") if dst not in ("./", ".") else src
        if os.path.isdir(os.path.join(REPO, s_)):
            shutil.copytree(os.path.join(REPO, s_), str(src / s_.rstrip("/")))
        else:
            os.makedirs(str(target) if dst.endswith("/") else str(target.parent), exist_ok=True)
            shutil.copy(os.path.join(REPO, s_), str(target if not dst.endswith("/") else target / os.path.basename(s_)))
    out = tmp_path / "out"
    r = subprocess.run(["make", "BUILD=%s" % out, "-j2", "%s/sendgate" % out, "%s/sendgatectl" % out],
                       cwd=str(src), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, "build from the build stage's files failed:\n%s" % r.stderr[-3000:]
    h.run([str(out / "sendgate"), "-V"], timeout=15)
    h.run([str(out / "sendgatectl"), "version"], timeout=15)


def healthcheck_argv():
    for st, w, rest in dockerfile_instructions():
        if w == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(\[.*\])\s*$", rest)
            assert m, "HEALTHCHECK is not in exec form: %s" % rest
            return json.loads(m.group(1))
    raise AssertionError("no HEALTHCHECK")


def test_dockerfile_healthcheck_command(daemon_factory):
    """The HEALTHCHECK command, run as Docker would run it in the image,
    succeeds against a live admin listener and fails once it is gone."""
    argv = healthcheck_argv()
    assert shutil.which(argv[0]), argv
    port = h.free_port()
    d = daemon_factory(admin__listen="127.0.0.1:%d" % port)
    env = dict(os.environ, SENDGATE__admin__listen="0.0.0.0:%d" % port)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=15, env=env)
    assert r.returncode == 0, "healthcheck failed against a live daemon: %s%s" % (r.stdout, r.stderr)
    assert d.stop() == 0
    r = subprocess.run(argv, capture_output=True, text=True, timeout=15, env=env)
    assert r.returncode != 0, "healthcheck passed with no daemon running"


# ------------------------------------------------------------ entrypoint

def test_entrypoint_is_posix_sh():
    with open(ENTRYPOINT) as f:
        assert f.readline().strip() == "#!/bin/sh"
    assert os.access(ENTRYPOINT, os.X_OK), "docker/entrypoint.sh is not executable"
    h.run(["dash", "-n", ENTRYPOINT], timeout=10)
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "-s", "sh", ENTRYPOINT], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout


class Entrypoint:
    """docker/entrypoint.sh run outside Docker, with the built binaries."""

    def __init__(self, build, config, logfile, **env):
        self.logfile = logfile
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("SENDGATE"):
                del self.env[k]
        self.env.update(SENDGATE_BIN=os.path.join(build, "sendgate"),
                        SENDGATECTL_BIN=os.path.join(build, "sendgatectl"),
                        SENDGATE_CONFIG=config,
                        SENDGATE_RUN_DIR=os.path.join(os.path.dirname(logfile), "run"))
        self.env.update({k: str(v) for k, v in env.items()})
        self.proc = None
        self.offset = 0

    run_as = None  # (uid, gid) to run as instead of the test's user

    def start(self, *args):
        self.offset = os.path.getsize(self.logfile) if os.path.exists(self.logfile) else 0
        kw = {}
        if self.run_as:
            kw = dict(user=self.run_as[0], group=self.run_as[1], extra_groups=[])
        with open(self.logfile, "ab") as logf:
            self.proc = subprocess.Popen([ENTRYPOINT] + list(args), **kw,
                                         stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        return self.proc

    def run(self, *args, timeout=60):
        self.start(*args)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode

    def log(self):
        with open(self.logfile, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")

    def wait_ready(self, timeout=60):
        def ready():
            if "event=ready" in self.log():
                return True
            if self.proc.poll() is not None:
                raise AssertionError("entrypoint exited %d before the daemon was ready:\n%s"
                                     % (self.proc.returncode, self.log()[-4000:]))
            return False
        h.eventually(ready, timeout, what="event=ready from the entrypoint's daemon")

    def stop(self):
        """SIGTERM to the process (the daemon after exec); its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=40)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def entry_config(build, tmp_path, url, cert, **overrides):
    """A daemon config (written by the harness, so it suits running as root)."""
    d = h.Daemon(build, None, str(tmp_path / "sg"), cert=cert, start=False,
                 database__url=url, **overrides)
    return d


def test_entrypoint_waits_for_the_database_then_migrates_and_execs(build, tmp_path):
    pgdir = tempfile.mkdtemp(prefix="sgpg-ep-", dir="/tmp")
    port = h.free_port()
    url = "host=%s port=%d user=postgres dbname=sendgate" % (pgdir, port)
    d = entry_config(build, tmp_path, url, own_cert(tmp_path))
    ep = Entrypoint(build, d.config_path, str(tmp_path / "entrypoint.log"), SENDGATE_DB_WAIT=90)
    pg = None
    try:
        ep.start()
        h.eventually(lambda: "event=waiting_for_database" in ep.log(), 20,
                     what="the entrypoint to report that it waits")
        assert ep.proc.poll() is None, ep.log()
        time.sleep(1)
        pg = h.Postgres(dir=pgdir, port=port)
        h.open_path_for_daemon(pgdir)
        ep.wait_ready(60)
        log = ep.log()
        assert "event=migrated" in log, log
        # exec: the process we started is now sendgate itself.
        exe = os.path.realpath("/proc/%d/exe" % ep.proc.pid)
        assert exe == os.path.realpath(os.path.join(build, "sendgate")), exe
        versions = pg.sql("SELECT version FROM schema_migrations ORDER BY version")
        assert versions, "no migration recorded"
        assert ep.stop() == 0, ep.log()[-3000:]

        # A second start finds nothing to migrate and starts again.
        ep.start()
        ep.wait_ready(60)
        assert "up to date" in ep.log(), ep.log()
        assert "event=waiting_for_database" not in ep.log()
        assert pg.sql("SELECT version FROM schema_migrations ORDER BY version") == versions
        assert ep.stop() == 0, ep.log()[-3000:]
    finally:
        ep.kill()
        if pg is not None:
            pg.stop()
        shutil.rmtree(pgdir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_entrypoint_as_an_unprivileged_user(build, tmp_path):
    """The container's case: entrypoint and daemon run as a non-root user
    from the start, with no [server] user, and the environment overrides."""
    import pwd

    user = h.DAEMON_USER
    pw = pwd.getpwnam(user)
    pgdir = tempfile.mkdtemp(prefix="sgpg-ep-", dir="/tmp")
    port = h.free_port()
    pg = h.Postgres(dir=pgdir, port=port)
    h.open_path_for_daemon(pgdir)
    ep = None
    try:
        d = entry_config(build, tmp_path, "host=/nonexistent port=1 dbname=x", own_cert(tmp_path))
        d.config["server"].pop("user", None)
        d.write_config()
        for path in (d.spool_dir, str(tmp_path / "run")):
            os.makedirs(path, exist_ok=True)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        h.open_path_for_daemon(d.config_path)
        h.open_path_for_daemon(build)
        ep = Entrypoint(build, d.config_path, str(tmp_path / "ep.log"),
                        SENDGATE_DATABASE_URL=pg.url,
                        SENDGATE__spool__dir=d.spool_dir,
                        SENDGATE__server__hostname="container.sendgate.test")
        ep.run_as = (pw.pw_uid, pw.pw_gid)
        ep.start()
        ep.wait_ready(60)
        # exec: the process started is the daemon, as that user.
        exe = os.path.realpath("/proc/%d/exe" % ep.proc.pid)
        assert exe == os.path.realpath(os.path.join(build, "sendgate")), exe
        with open("/proc/%d/status" % ep.proc.pid) as f:
            uid = [line.split()[1] for line in f if line.startswith("Uid:")][0]
        assert int(uid) == pw.pw_uid, uid
        c = h.SMTPClient.connect(d.submission_port)
        assert "container.sendgate.test" in c.greeting.text, c.greeting
        c.quit()
        assert ep.stop() == 0, ep.log()[-3000:]
    finally:
        if ep is not None:
            ep.kill()
        pg.stop()
        shutil.rmtree(pgdir, ignore_errors=True)


def test_entrypoint_gives_up_on_an_unreachable_database(build, tmp_path):
    url = "host=%s port=%d user=postgres dbname=sendgate" % (tmp_path / "nopg", h.free_port())
    d = entry_config(build, tmp_path, url, own_cert(tmp_path))
    ep = Entrypoint(build, d.config_path, str(tmp_path / "ep.log"), SENDGATE_DB_WAIT=3)
    t0 = time.monotonic()
    rc = ep.run(timeout=60)
    took = time.monotonic() - t0
    log = ep.log()
    assert rc != 0, log
    assert 3 <= took < 30, "gave up after %.1fs with SENDGATE_DB_WAIT=3" % took
    assert "event=database_unreachable" in log and "SENDGATE_DATABASE_URL" in log, log
    assert "event=ready" not in log


def test_entrypoint_fails_fast_on_a_bad_config(build, tmp_path):
    """Waiting would not fix a config error: it is reported at once."""
    d = entry_config(build, tmp_path, "host=/nonexistent port=1 dbname=x", own_cert(tmp_path),
                     smtp__no_such_key="1")
    ep = Entrypoint(build, d.config_path, str(tmp_path / "ep.log"), SENDGATE_DB_WAIT=60)
    t0 = time.monotonic()
    rc = ep.run(timeout=60)
    assert rc != 0
    assert time.monotonic() - t0 < 15, "a config error should not wait for the database"
    log = ep.log()
    assert "no_such_key" in log and "%s:%d" % (d.config_path, line_of(d.config_path, "no_such_key")) in log, log


def test_entrypoint_environment_overrides_and_ctl(build, pg, ctl, tenant, tmp_path):
    """SENDGATE__section__key overrides a key of the mounted file; the
    'sendgatectl' command runs the CLI with the same config."""
    d = entry_config(build, tmp_path, pg.url, own_cert(tmp_path), max_recipients=10)
    ep = Entrypoint(build, d.config_path, str(tmp_path / "ep.log"),
                    SENDGATE__smtp__max_recipients=2)
    try:
        ep.start()
        ep.wait_ready(30)
        c = h.SMTPClient.connect(d.submission_port)
        c.login(tenant)
        assert c.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
        assert c.cmd("RCPT TO:<a@example.net>").code == 250
        assert c.cmd("RCPT TO:<b@example.net>").code == 250
        r = c.cmd("RCPT TO:<c@example.net>")
        assert r.code == 452, "override max_recipients=2 not applied: %r" % r
        c.quit()
        assert ep.stop() == 0, ep.log()[-3000:]
    finally:
        ep.kill()
    out = subprocess.run([ENTRYPOINT, "sendgatectl", "--json", "tenant", "list"],
                         capture_output=True, text=True, timeout=60, env=ep.env)
    assert out.returncode == 0, out.stderr
    assert tenant.name in [t["name"] for t in json.loads(out.stdout)]
    # A malformed override name is refused before anything starts.
    bad = Entrypoint(build, d.config_path, str(tmp_path / "bad.log"), SENDGATE__smtp="1")
    assert bad.run(timeout=30) != 0
    assert "SENDGATE__smtp" in bad.log()


def test_entrypoint_reload_applies_an_edited_file(build, pg, ctl, tenant, tmp_path):
    """'entrypoint.sh reload' rewrites the effective config from the edited
    file and SIGHUPs the daemon, which applies a runtime key."""
    d = entry_config(build, tmp_path, pg.url, own_cert(tmp_path), max_recipients=3)
    ep = Entrypoint(build, d.config_path, str(tmp_path / "ep.log"),
                    SENDGATE__server__hostname="override.sendgate.test")
    try:
        ep.start()
        ep.wait_ready(30)
        d.config["smtp"]["max_recipients"] = "1"
        d.write_config()
        env = dict(ep.env, SENDGATE_RELOAD_PID=str(ep.proc.pid))
        r = subprocess.run([ENTRYPOINT, "reload"], capture_output=True, text=True, timeout=30,
                           env=env)
        assert r.returncode == 0, r.stderr
        h.eventually(lambda: "event=reload result=ok" in ep.log(), 10, what="reload ok")
        c = h.SMTPClient.connect(d.submission_port)
        assert "override.sendgate.test" in c.greeting.text, c.greeting
        c.login(tenant)
        assert c.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
        assert c.cmd("RCPT TO:<a@example.net>").code == 250
        assert c.cmd("RCPT TO:<b@example.net>").code == 452
        c.quit()
        assert ep.stop() == 0
    finally:
        ep.kill()


# ------------------------------------------------- configuration docs

def test_every_config_key_is_documented(build):
    r = subprocess.run([PY, CHECK_DOC, "--sendgate", os.path.join(build, "sendgate")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "tools/check-config-doc.py:\n%s%s" % (r.stdout, r.stderr)


def test_config_doc_check_catches_drift(build, tmp_path):
    """The checker fails when a key is missing from the README, documented
    with a wrong default, or unknown."""
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    rows = [l for l in readme.splitlines() if l.startswith("| `smtp` | `max_recipients` |")]
    assert len(rows) == 1
    cases = {
        "missing": readme.replace(rows[0] + "\n", ""),
        "default": readme.replace(rows[0], rows[0].replace("`100`", "`99`")),
        "unknown": readme.replace(rows[0], rows[0] + "\n| `smtp` | `no_such_key` | `1` | x |"),
    }
    for what, text in cases.items():
        p = tmp_path / ("README-%s.md" % what)
        p.write_text(text)
        r = subprocess.run([PY, CHECK_DOC, "--sendgate", os.path.join(build, "sendgate"),
                            "--readme", str(p)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, "%s: checker passed:\n%s" % (what, r.stdout)
        assert "max_recipients" in r.stdout or "no_such_key" in r.stdout, r.stdout


def test_example_config_passes_check_config(build, pg, ctl, tmp_path):
    """etc/sendgate.conf as shipped, with only its (example) paths pointed at
    real files, passes --check-config (it parses, the certificate loads, the
    master key reads, the database answers with our schema)."""
    cert, key = h.make_cert(str(tmp_path / "tls"))
    with open(os.path.join(REPO, "etc", "sendgate.conf")) as f:
        text = f.read()
    subs = {
        ("smtp", "tls_cert"): cert,
        ("smtp", "tls_key"): key,
        ("database", "url"): pg.url,
        ("spool", "dir"): str(tmp_path / "spool"),
        ("dkim", "master_key_file"): h.master_key_file(),
    }
    out, section, done = [], None, set()
    for line in text.splitlines():
        m = re.fullmatch(r"\[(\w+)\]", line.strip())
        if m:
            section = m.group(1)
        m = re.match(r"(\w+)\s*=", line)
        if m and (section, m.group(1)) in subs:
            line = "%s = %s" % (m.group(1), subs[(section, m.group(1))])
            done.add((section, m.group(1)))
        out.append(line)
    assert done == set(subs), "example config lacks %s" % (set(subs) - done)
    p = tmp_path / "sendgate.conf"
    p.write_text("\n".join(out) + "\n")
    r = check_config(build, str(p))
    assert r.returncode == 0, "example config refused:\n%s%s" % (r.stdout, r.stderr)
    assert "configuration ok" in r.stdout


# -------------------------------------------------------- --check-config

def test_check_config_good(build, daemon_factory):
    d = daemon_factory(start=False)
    r = check_config(build, d.config_path)
    assert r.returncode == 0, r.stderr
    assert d.config_path in r.stdout and "ok" in r.stdout


@pytest.mark.parametrize("override,needle", [
    ({"smtp__no_such_key": "1"}, "no_such_key"),
    ({"max_recipients": "lots"}, "max_recipients"),
    ({"dns__timeout_ms": "0"}, "timeout_ms"),
    ({"admin__listen": "nowhere"}, "listen"),
])
def test_check_config_refuses_bad_keys(build, daemon_factory, override, needle):
    d = daemon_factory(start=False, **override)
    r = check_config(build, d.config_path)
    assert r.returncode != 0, "accepted: %s" % override
    msg = r.stderr
    assert "%s:%d" % (d.config_path, line_of(d.config_path, needle + " =")) in msg, msg
    assert needle in msg, msg


def test_check_config_missing_certificate(build, daemon_factory, tmp_path):
    missing = str(tmp_path / "missing-cert.pem")
    d = daemon_factory(start=False, tls_cert=missing)
    r = check_config(build, d.config_path)
    assert r.returncode != 0
    msg = r.stderr
    assert "missing-cert.pem" in msg and "tls_cert" in msg, msg
    assert "%s:%d" % (d.config_path, line_of(d.config_path, "tls_cert =")) in msg, \
        "no file:line for the certificate: " + msg


def test_check_config_missing_master_key(build, daemon_factory, tmp_path):
    d = daemon_factory(start=False, dkim__master_key_file=str(tmp_path / "no-master.key"))
    r = check_config(build, d.config_path)
    assert r.returncode != 0
    assert "master_key_file" in r.stderr and "no-master.key" in r.stderr, r.stderr


def test_check_config_database(build, daemon_factory, pg):
    """Unreachable database, and a reachable one without the schema."""
    d = daemon_factory(start=False, database__url="host=/nonexistent port=1 dbname=x")
    r = check_config(build, d.config_path)
    assert r.returncode != 0
    assert "[database] url" in r.stderr, r.stderr
    name = "sg_empty_%d" % os.getpid()
    pg.psql("DROP DATABASE IF EXISTS %s" % name, db="postgres")
    pg.psql("CREATE DATABASE %s" % name, db="postgres")
    try:
        url = "host=%s port=%d user=postgres dbname=%s" % (pg.dir, pg.port, name)
        d2 = daemon_factory(start=False, database__url=url)
        r = check_config(build, d2.config_path)
        assert r.returncode != 0
        assert "sendgatectl migrate" in r.stderr, r.stderr
    finally:
        pg.psql("DROP DATABASE IF EXISTS %s" % name, db="postgres")


# ------------------------------------------------------------- health

def test_health_endpoints_follow_the_database(build, tmp_path):
    """/healthz answers while the process runs; /readyz only while the
    database is reachable (its own PostgreSQL here, stopped mid-test)."""
    pgdir = tempfile.mkdtemp(prefix="sgpg-health-", dir="/tmp")
    port = h.free_port()
    pg = h.Postgres(dir=pgdir, port=port)
    h.open_path_for_daemon(pgdir)
    d = None
    try:
        h.Ctl(build, pg.url).migrate()
        admin = h.free_port()
        d = h.Daemon(build, pg, str(tmp_path / "sg"), cert=own_cert(tmp_path),
                     admin__listen="127.0.0.1:%d" % admin)
        st, body = http_get(admin, "/healthz")
        assert st == 200, body
        h.eventually(lambda: http_get(admin, "/readyz")[0] == 200, 10, what="/readyz 200")
        st, body = http_get(admin, "/readyz")
        assert body["database"] is True and body["spool_writable"] is True, body
        assert http_get(admin, "/nope")[0] == 404

        pg.stop()
        h.eventually(lambda: http_get(admin, "/readyz")[0] == 503, 20,
                     what="/readyz 503 after PostgreSQL stopped")
        st, body = http_get(admin, "/readyz")
        assert body["database"] is False, body
        assert http_get(admin, "/healthz")[0] == 200, "/healthz must not depend on the database"

        pg = h.Postgres(dir=pgdir, port=port)
        h.open_path_for_daemon(pgdir)  # the daemon reconnects as its own user
        h.eventually(lambda: http_get(admin, "/readyz")[0] == 200, 40,
                     what="/readyz 200 after PostgreSQL came back")
        assert d.stop() == 0
    finally:
        if d is not None and d.alive():
            d.kill()
        pg.stop()
        shutil.rmtree(pgdir, ignore_errors=True)


# ------------------------------------------------------------ signals

def test_sighup_new_certificate(daemon_factory, tenant, tmp_path):
    cert, key = own_cert(tmp_path, "live")
    d = daemon_factory(tls_cert=cert, tls_key=key)
    old = smtps_fingerprint(d.smtps_port)
    assert starttls_fingerprint(d.submission_port) == old

    held = h.SMTPClient.connect(d.smtps_port, tls=True)
    held.login(tenant)
    assert fingerprint(held.sock) == old

    replace_cert(cert, key, str(tmp_path / "renewed"))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log(r"event=reload result=ok", 10)
    new = smtps_fingerprint(d.smtps_port)
    assert new != old, "new connections still get the old certificate after SIGHUP"
    assert starttls_fingerprint(d.submission_port) == new

    # The connection opened before the reload is still served.
    msg = h.make_message(tenant.addr(), subject="held across SIGHUP")
    r = held.send_message(tenant.addr(), ["rcpt@example.net"], h.dot_stuff(msg))
    assert h.queued_id(r), r
    held.quit()

    # A broken certificate is refused and the current one stays.
    with open(cert, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log(r"event=reload result=failed", 10)
    assert d.alive()
    assert smtps_fingerprint(d.smtps_port) == new


def test_sighup_runtime_keys_and_bad_file(daemon_factory, tenant):
    d = daemon_factory(max_recipients=3)

    def rcpts_accepted():
        c = h.SMTPClient.connect(d.submission_port)
        c.login(tenant)
        assert c.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
        n = 0
        for i in range(5):
            if c.cmd("RCPT TO:<r%d@example.net>" % i).code != 250:
                break
            n += 1
        c.quit()
        return n

    assert rcpts_accepted() == 3
    d.config["smtp"]["max_recipients"] = "2"
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log(r"event=reload result=ok", 10)
    assert rcpts_accepted() == 2

    # A broken file: the old config stays, and the log says why.
    with open(d.config_path, "a") as f:
        f.write("\n[smtp]\nmax_recipients = lots\n")
    d.proc.send_signal(signal.SIGHUP)
    m = d.wait_log(r"event=reload result=failed[^\n]*", 10)
    assert "max_recipients" in m.group(0) and d.config_path in m.group(0), m.group(0)
    assert d.alive()
    assert rcpts_accepted() == 2


@pytest.mark.parametrize("finish", ["complete", "abandon"])
def test_sigterm_during_data(daemon_factory, tenant, finish):
    """SIGTERM while a client is in DATA: listeners close, the transaction
    is allowed to finish; the reply to the final dot is 250 with the whole
    message queued, or 4xx with nothing queued; then the daemon exits 0.
    'abandon': the client disconnects mid-DATA; nothing is queued."""
    d = daemon_factory()
    marker = "sigterm-%s-%s" % (finish, os.urandom(4).hex())
    body = (marker + "\r\n").encode() + b"x" * 70 + b"\r\n"
    msg = h.make_message(tenant.addr(), subject=marker, body=body * 200)
    c = h.SMTPClient.connect(d.submission_port)
    c.login(tenant)
    idle = h.SMTPClient.connect(d.submission_port)
    idle.login(tenant)
    assert c.cmd("MAIL FROM:<%s>" % tenant.addr()).code == 250
    assert c.cmd("RCPT TO:<rcpt@example.net>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(msg[:len(msg) // 2])
    time.sleep(0.3)
    qid = None

    d.proc.send_signal(signal.SIGTERM)
    d.wait_log(r"event=stopping", 10)
    # An idle session is told to go away; the one in DATA is not.
    r = idle.reply(timeout=10)
    assert r.code == 421, r
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.submission_port), timeout=2).close()
    time.sleep(0.5)
    assert d.alive(), "sendgate exited while a client was in DATA"

    if finish == "complete":
        c.send(msg[len(msg) // 2:] + b".\r\n")
        r = c.reply(timeout=30)
        qid = h.queued_id(r)
        if qid:
            h.added_fields(msg, h.spooled(d, qid).message)
        else:
            assert 400 <= r.code < 500, "final reply during shutdown: %r" % r
        # The transaction is over: the session is told to go and closed.
        r = c.reply(timeout=10)
        assert r.code == 421, r
        assert c.is_closed(10)
    else:
        c.close()
    try:
        rc = d.proc.wait(timeout=15 * h.SLOW)
    except subprocess.TimeoutExpired:
        pytest.fail("sendgate still running 15 s after the only transaction ended (%s); "
                    "log tail:\n%s" % (finish, d.log_text()[-2000:]), pytrace=False)
    d.returncodes.append(rc)
    d.proc = None
    assert rc == 0, "exit code %r after SIGTERM; log:\n%s" % (rc, d.log_text()[-3000:])
    c.close()
    idle.close()

    found = []
    for q in d.queue_ids():
        with open(d.queue_file(q), "rb") as f:
            if marker.encode() in f.read():
                found.append(q)
    if finish == "complete" and qid:
        assert found == [qid], found
    else:
        assert found == [], "unacknowledged message queued: %s" % found
    tmpdir = os.path.join(d.spool_dir, "tmp")
    assert not os.path.isdir(tmpdir) or not os.listdir(tmpdir), os.listdir(tmpdir)


# ----------------------------------------------------------- man page

def test_man_page_formats_and_covers_the_options(build):
    page = os.path.join(REPO, "man", "sendgate.8")
    r = subprocess.run(["groff", "-ww", "-man", "-Tutf8", page], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), "groff warnings:\n" + r.stderr
    text = re.sub(r".\x08", "", r.stdout).replace("\u2010", "-")
    usage = h.run([os.path.join(build, "sendgate"), "--help"], timeout=15).stdout
    opts = set(re.findall(r"(--[a-z][a-z-]+)", usage))
    assert opts, usage
    missing = [o for o in sorted(opts) if o not in text]
    assert not missing, "options in sendgate --help but not in sendgate(8): %s" % missing
    for sig in ("SIGTERM", "SIGHUP", "EXIT STATUS", "/healthz", "/readyz"):
        assert sig in text, sig


# ------------------------------------------------- privileges and logs

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_without_user_is_refused(daemon_factory):
    d = daemon_factory(start=False, server__user=None)
    d.config["server"].pop("user", None)
    d.write_config()
    with pytest.raises(h.DaemonDied) as ei:
        d.start()
    assert "[server] user" in str(ei.value), str(ei.value)[-2000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_privileges_dropped_after_binding(daemon_factory):
    import pwd

    d = daemon_factory()
    assert d.config["server"].get("user"), "the harness runs the daemon with a user when root"
    want = pwd.getpwnam(d.config["server"]["user"]).pw_uid
    with open("/proc/%d/status" % d.proc.pid) as f:
        uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
    assert all(int(u) == want for u in uids), "real/effective/saved/fs uid %s, want %d" % (uids, want)


LOG_LINE = re.compile(r'ts=\S+Z prog=[\w-]+ level=(err|warn|info|debug) event=\w+'
                      r'( [\w.]+=("([^"\\]|\\.)*"|[^\s"]*))*')


def test_log_lines_are_key_value(build, tenant, ctl, pg, tmp_path):
    """Every line the daemon writes to stderr is one key=value event, also
    when the database goes away (its errors span lines in libpq)."""
    pgdir = tempfile.mkdtemp(prefix="sgpg-log-", dir="/tmp")
    port = h.free_port()
    own = h.Postgres(dir=pgdir, port=port)
    h.open_path_for_daemon(pgdir)
    d = None
    try:
        c2 = h.Ctl(build, own.url)
        c2.migrate()
        t = h.setup_tenant(c2)
        d = h.Daemon(build, own, str(tmp_path / "sg"), cert=own_cert(tmp_path))
        c = h.SMTPClient.connect(d.submission_port)
        c.login(t)
        r = c.send_message(t.addr(), ["a@example.net"], h.make_message(t.addr(), subject='q "x"'))
        assert h.queued_id(r), r
        c.cmd("RCPT TO:<no spaces allowed@example.net>")
        c.quit()
        own.stop()
        d.wait_log(r"event=db_disconnected", 15)
        time.sleep(1.5)
        assert d.stop() == 0
        bad = [line for line in d.log_text().splitlines() if not LOG_LINE.fullmatch(line)]
        assert not bad, "log lines that are not one key=value event:\n" + "\n".join(bad[:10])
    finally:
        if d is not None and d.alive():
            d.kill()
        own.stop()
        shutil.rmtree(pgdir, ignore_errors=True)
