"""Where the CPU went during a benchmark run, from /proc (Linux).

snapshot() reads every thread's user and system time and the machine's
totals (/proc/stat); report(before, after, per) prints the difference per
process and thread as microseconds per message, so that runs of different
lengths compare. Threads are grouped by process name (its command line's
first word, or the daemon's role) and thread name; processes that were
started and ended between the two snapshots are not counted (the
benchmark's own daemons live through the whole run).
"""
import os
import resource

TICK = os.sysconf("SC_CLK_TCK")
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _proc_name(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    if not argv or not argv[0]:
        return None
    name = os.path.basename(argv[0].decode(errors="replace"))
    if name == "sendgate" and b"--delivery-only" in argv:
        name = "sendgate-delivery"
    elif name.startswith("python"):
        script = next((a for a in argv[1:] if a.endswith(b".py")), None)
        if script:
            name = "python:" + os.path.basename(script.decode(errors="replace"))
    elif name.startswith("postgres: "):
        # "postgres: USER DB HOST(PORT) STATE" for a backend, else the role
        words = name.split()
        name = "postgres-backend" if len(words) >= 4 and (
            "(" in words[3] or words[3] == "[local]") else "postgres-" + words[1]
    return name


def _threads(pid):
    out = {}
    try:
        tids = os.listdir("/proc/%s/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%s/task/%s/stat" % (pid, tid)) as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        rest = s[s.rindex(")") + 2:].split()
        try:  # nanoseconds on a CPU, then waiting runnable for one
            with open("/proc/%s/task/%s/schedstat" % (pid, tid)) as f:
                wait = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            wait = 0
        out[tid] = (comm, int(rest[11]), int(rest[12]), wait)  # utime, stime
    return out


def snapshot():
    """{"threads": {(pid, tid): (group, user, sys, wait_ns)}, "stat": {field: ticks},
    "children": (user_s, sys_s) of this process's waited-for children}"""
    threads = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        name = _proc_name(pid)
        if name is None:
            continue
        for tid, (comm, ut, st, wait) in _threads(pid).items():
            threads[(pid, tid)] = ("%s/%s" % (name, comm), ut, st, wait)
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:1 + len(STAT_FIELDS)]
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"threads": threads, "stat": dict(zip(STAT_FIELDS, map(int, cpu))),
            "children": (ru.ru_utime, ru.ru_stime)}


def diff(before, after):
    """{group: [user_s, sys_s, runnable_wait_s]} and the machine's {field: ticks}.
    The children that ended between the two (the load generator run with
    subprocess.run) count as one group, "children", without a wait."""
    groups = {}
    for key, (group, ut, st, wait) in after["threads"].items():
        b = before["threads"].get(key)
        if b is None:
            continue
        du, ds, dw = (ut - b[1]) / TICK, (st - b[2]) / TICK, (wait - b[3]) / 1e9
        if du or ds:
            g = groups.setdefault(group, [0, 0, 0])
            g[0] += du
            g[1] += ds
            g[2] += dw
    cu = after["children"][0] - before["children"][0]
    cs = after["children"][1] - before["children"][1]
    if cu or cs:
        groups["children (load generator)"] = [cu, cs, 0]
    machine = {k: after["stat"][k] - before["stat"][k] for k in STAT_FIELDS}
    return groups, machine


def report(before, after, per, label="msg", top=14):
    """Lines: the busiest groups in µs (user+sys) per unit and the time they
    spent runnable but waiting for a CPU, then the machine's split."""
    groups, machine = diff(before, after)
    us = 1e6 / max(per, 1)
    lines = []
    for g, (u, s, w) in sorted(groups.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:top]:
        lines.append("    %-40s %6.0f us/%s (%3.0f %% sys), waited for a CPU %6.0f us/%s"
                     % (g, (u + s) * us, label, 100.0 * s / max(u + s, 1e-9), w * us, label))
    total = sum(machine.values()) or 1
    lines.append("    machine: " + ", ".join("%s %.0f %%" % (k, 100.0 * v / total)
                                            for k, v in machine.items() if v))
    return "\n".join(lines)
