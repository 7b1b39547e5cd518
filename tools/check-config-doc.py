#!/usr/bin/python3
"""Checks that the configuration documentation matches the parser.

    tools/check-config-doc.py [--sendgate build/sendgate] [--readme README.md]
                              [--example etc/sendgate.conf] [--config-c common/config.c]

The keys are what `sendgate --list-config-keys` prints (the parser's own
table). Every one of them must be
  - set exactly once, in its section, in the example file (etc/sendgate.conf),
    which must hold no other key;
  - a row of the README's configuration table, `| `section` | `key` |
    `default` | meaning |`, exactly once, whose default is the one in the
    parser's table (common/config.c; an empty default is written `(empty)`),
    with a non-empty meaning; no row may name a key the parser does not know.
Prints one line per problem and exits 1 when there is any, else 0.
"""

import argparse
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parser_keys(sendgate):
    """[(section, key)] in the order sendgate --list-config-keys prints them."""
    out = subprocess.run([sendgate, "--list-config-keys"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    keys = []
    for line in out.splitlines():
        m = re.fullmatch(r"\[(\w+)\] (\w+)", line.strip())
        if not m:
            raise SystemExit("unexpected --list-config-keys line: %r" % line)
        keys.append((m.group(1), m.group(2)))
    return keys


def parser_defaults(config_c):
    """{(section, key): default text} from the key table in common/config.c."""
    with open(config_c) as f:
        text = f.read()
    return {(s, k): d for s, k, d in
            re.findall(r'\{\s*"(\w+)",\s*"(\w+)",\s*K_\w+,\s*O\(\w+\),\s*"([^"]*)"', text)}


def example_keys(path):
    """[(section, key, line number)] of the key = value lines of an INI file."""
    out = []
    section = None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            s = line.strip()
            if not s or s[0] in ";#":
                continue
            m = re.fullmatch(r"\[(\w+)\]", s)
            if m:
                section = m.group(1)
                continue
            m = re.match(r"(\w+)\s*=", s)
            if m:
                out.append((section, m.group(1), n))
    return out


def readme_rows(path):
    """[(section, key, default, meaning, line number)] of the README's
    configuration table rows."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.startswith("|"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 4:
                continue
            m1 = re.fullmatch(r"`(\w+)`", cells[0])
            m2 = re.fullmatch(r"`(\w+)`", cells[1])
            if not (m1 and m2):
                continue
            default = cells[2]
            if default == "(empty)":
                default = ""
            else:
                m = re.fullmatch(r"`([^`]*)`", default)
                default = m.group(1) if m else default
            rows.append((m1.group(1), m2.group(1), default, "|".join(cells[3:]).strip(), n))
    return rows


def check(sendgate, readme, example, config_c):
    """Returns the list of problems (strings)."""
    problems = []
    keys = parser_keys(sendgate)
    known = set(keys)
    defaults = parser_defaults(config_c)

    seen = {}
    for sec, key, n in example_keys(example):
        if sec is None:
            problems.append("%s:%d: %s is outside any [section]" % (example, n, key))
        elif (sec, key) not in known:
            problems.append("%s:%d: [%s] %s is not a key the parser accepts" % (example, n, sec, key))
        elif (sec, key) in seen:
            problems.append("%s:%d: [%s] %s is set again (first on line %d)"
                            % (example, n, sec, key, seen[(sec, key)]))
        seen.setdefault((sec, key), n)
    for sec, key in keys:
        if (sec, key) not in seen:
            problems.append("%s: [%s] %s is missing" % (example, sec, key))

    rows = {}
    for sec, key, default, meaning, n in readme_rows(readme):
        if (sec, key) not in known:
            problems.append("%s:%d: row for [%s] %s, which the parser does not accept"
                            % (readme, n, sec, key))
            continue
        if (sec, key) in rows:
            problems.append("%s:%d: [%s] %s documented twice" % (readme, n, sec, key))
        rows[(sec, key)] = n
        want = defaults.get((sec, key))
        if want is None:
            problems.append("%s: no default found for [%s] %s" % (config_c, sec, key))
        elif default != want:
            problems.append("%s:%d: [%s] %s default is %r in the README but %r in the parser"
                            % (readme, n, sec, key, default, want))
        if not meaning:
            problems.append("%s:%d: [%s] %s has no meaning" % (readme, n, sec, key))
    for sec, key in keys:
        if (sec, key) not in rows:
            problems.append("%s: [%s] %s is not in the configuration table" % (readme, sec, key))
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sendgate", default=os.path.join(
        os.environ.get("SENDGATE_BUILD") or os.path.join(REPO, "build"), "sendgate"))
    ap.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    ap.add_argument("--example", default=os.path.join(REPO, "etc", "sendgate.conf"))
    ap.add_argument("--config-c", default=os.path.join(REPO, "common", "config.c"))
    a = ap.parse_args()
    problems = check(a.sendgate, a.readme, a.example, a.config_c)
    for p in problems:
        print(p)
    if problems:
        print("check-config-doc: %d problem(s)" % len(problems), file=sys.stderr)
        return 1
    print("check-config-doc: %d keys documented in %s and %s"
          % (len(parser_keys(a.sendgate)), os.path.relpath(a.readme), os.path.relpath(a.example)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
