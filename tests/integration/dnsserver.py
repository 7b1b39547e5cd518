#!/usr/bin/python3
"""A small authoritative DNS server for sendgate's tests (UDP and TCP).

It answers real DNS packets from a zone held in memory that the test may
change while the server runs. Two ways to use it:

In-process (pytest), in a background thread:

    srv = DNSServer(port=0)          # 0 picks a free port; srv.port has it
    srv.start()
    srv.set("acme.example", "TXT", ["v=spf1 include:spf.platform.example ~all"])
    srv.set("s1._domainkey.acme.example", "CNAME", ["s1.acme-example.dkim.platform.example"])
    srv.remove("acme.example", "TXT")
    srv.servfail("broken.example")   # answer SERVFAIL for every type
    srv.timeout("slow.example")      # never answer
    srv.truncate("big.example")      # TC over UDP, full answer over TCP
    srv.clear_behaviour("slow.example")
    srv.stop()

As a process (the demo, C unit tests):

    python3 tests/integration/dnsserver.py --port 5353 --zone zone.json

prints "PORT <n>" on stdout once it listens (useful with --port 0) and
re-reads the zone file whenever it changes (write a new file and rename it
over the old one to change the zone atomically). The zone file is JSON:

    {
      "ttl": 1,
      "records": {
        "acme.example": {
          "TXT": ["v=spf1 ~all", ["first string ", "second string"]],
          "MX": ["10 mx1.acme.example", "20 mx2.acme.example"],
          "A": ["127.0.0.2"], "AAAA": ["::1"]
        },
        "www.acme.example": {"CNAME": ["acme.example"]},
        "slow.example": {"TTL": 60, "TXT": ["cached for a minute"]}
      },
      "servfail": ["broken.example"],
      "timeout": ["slow.example"],
      "truncate": ["big.example"]
    }

A TXT value given as a list is one record of several character strings.
"TTL" inside a name's entry overrides the default TTL for that name.

Semantics follow an authoritative server: NXDOMAIN when the name does not
exist (no records at it or below it), NOERROR with an empty answer (and an
SOA in the authority section, for negative caching) when the name exists
but has no record of the type asked for, and CNAMEs chased within the zone.
"""

import argparse
import json
import os
import socket
import socketserver
import struct
import sys
import threading

from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, SOA, TXT, A, DNSLabel, DNSRecord

TYPES = ("A", "AAAA", "CNAME", "MX", "TXT", "NS", "PTR")


def _norm(name):
    name = str(name).strip().lower()
    if name.endswith("."):
        name = name[:-1]
    return name


def _split_txt(value):
    """A TXT value: a str (one string, split at 255 bytes) or a list of str."""
    if isinstance(value, (list, tuple)):
        parts = [p.encode() if isinstance(p, str) else bytes(p) for p in value]
    else:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        parts = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    return parts


class Zone:
    """The zone: records by (name, type), behaviours by name. Thread-safe."""

    def __init__(self, default_ttl=1):
        self.lock = threading.Lock()
        self.default_ttl = default_ttl
        self.records = {}  # name -> {TYPE: [values]}
        self.ttls = {}  # name -> ttl
        self.behaviour = {}  # name -> "servfail" | "timeout" | "truncate"
        self.queries = []  # (name, type, proto) in arrival order

    def load_dict(self, data):
        records = {}
        ttls = {}
        for name, types in (data.get("records") or {}).items():
            n = _norm(name)
            entry = {}
            for t, values in types.items():
                if t.upper() == "TTL":
                    ttls[n] = int(values)
                    continue
                entry[t.upper()] = list(values)
            records[n] = entry
        behaviour = {}
        for kind in ("servfail", "timeout", "truncate"):
            for name in data.get(kind) or []:
                behaviour[_norm(name)] = kind
        with self.lock:
            self.default_ttl = int(data.get("ttl", self.default_ttl))
            self.records = records
            self.ttls = ttls
            self.behaviour = behaviour

    def set(self, name, rtype, values, ttl=None):
        n = _norm(name)
        with self.lock:
            self.records.setdefault(n, {})[rtype.upper()] = list(values)
            if ttl is not None:
                self.ttls[n] = int(ttl)

    def remove(self, name, rtype=None):
        n = _norm(name)
        with self.lock:
            if n not in self.records:
                return
            if rtype is None:
                del self.records[n]
            else:
                self.records[n].pop(rtype.upper(), None)
                if not self.records[n]:
                    del self.records[n]

    def set_behaviour(self, name, kind):
        with self.lock:
            if kind is None:
                self.behaviour.pop(_norm(name), None)
            else:
                self.behaviour[_norm(name)] = kind

    def _exists(self, n):
        if n in self.records and self.records[n]:
            return True
        suffix = "." + n
        return any(k.endswith(suffix) and v for k, v in self.records.items())

    def _rr(self, owner, rtype, value, ttl):
        if rtype == "A":
            rdata = A(value)
        elif rtype == "AAAA":
            rdata = AAAA(value)
        elif rtype == "CNAME":
            rdata = CNAME(value)
        elif rtype == "MX":
            pref, host = str(value).split(None, 1)
            rdata = MX(host, int(pref))
        elif rtype == "TXT":
            rdata = TXT(_split_txt(value))
        else:
            raise ValueError("unsupported type " + rtype)
        return RR(owner, getattr(QTYPE, rtype), rdata=rdata, ttl=ttl)

    def answer(self, request, proto):
        """Returns the reply packet (bytes), or None to stay silent."""
        q = request.q
        qname = _norm(q.qname)
        qtype = QTYPE.get(q.qtype)
        with self.lock:
            self.queries.append((qname, qtype, proto))
            kind = self.behaviour.get(qname)
            reply = request.reply()
            reply.header.aa = 1
            if kind == "timeout":
                return None
            if kind == "servfail":
                reply.header.rcode = RCODE.SERVFAIL
                return reply.pack()
            if kind == "truncate" and proto == "udp":
                reply.header.tc = 1
                return reply.pack()
            name = qname
            owner = q.qname
            for _ in range(8):
                entry = self.records.get(name, {})
                ttl = self.ttls.get(name, self.default_ttl)
                if qtype in entry or qtype == "ANY":
                    for t in (TYPES if qtype == "ANY" else (qtype,)):
                        for v in entry.get(t, []):
                            reply.add_answer(self._rr(owner, t, v, ttl))
                    break
                if "CNAME" in entry and entry["CNAME"]:
                    target = entry["CNAME"][0]
                    reply.add_answer(self._rr(owner, "CNAME", target, ttl))
                    name = _norm(target)
                    owner = DNSLabel(target)
                    continue
                if not self._exists(name):
                    reply.header.rcode = RCODE.NXDOMAIN
                break
            if not reply.rr:
                soa = SOA("ns.test.", "hostmaster.test.",
                          (1, 3600, 600, 86400, self.default_ttl))
                reply.add_auth(RR(".", QTYPE.SOA, rdata=soa, ttl=self.default_ttl))
            return reply.pack()


class _UDPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return
        self.server.owner._reload()
        out = self.server.owner.zone.answer(request, "udp")
        if out is None:
            return
        if len(out) > 512:
            # Too big for plain UDP: send the header with TC, as a real server does.
            r = DNSRecord.parse(out)
            r.rr = []
            r.auth = []
            r.ar = []
            r.header.tc = 1
            out = r.pack()
        sock.sendto(out, self.client_address)


class _TCPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(10)
        try:
            while True:
                hdr = _recv_exact(sock, 2)
                if hdr is None:
                    return
                (n,) = struct.unpack("!H", hdr)
                data = _recv_exact(sock, n)
                if data is None:
                    return
                try:
                    request = DNSRecord.parse(data)
                except Exception:
                    return
                self.server.owner._reload()
                out = self.server.owner.zone.answer(request, "tcp")
                if out is None:
                    continue
                sock.sendall(struct.pack("!H", len(out)) + out)
        except (OSError, socket.timeout):
            return


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class _UDPServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True
    allow_reuse_address = True


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class DNSServer:
    """UDP+TCP DNS server on 127.0.0.1:port (0 = a free port, same for both)."""

    def __init__(self, port=0, host="127.0.0.1", zone_file=None, default_ttl=1):
        self.host = host
        self.zone = Zone(default_ttl)
        self.zone_file = zone_file
        self._zone_stamp = None
        self._reload_lock = threading.Lock()
        self.udp, self.tcp = self._bind(host, port)
        self.udp.owner = self
        self.tcp.owner = self
        self.port = self.udp.server_address[1]
        self._threads = []
        self._reload()

    @staticmethod
    def _bind(host, port):
        for _ in range(50):
            udp = _UDPServer((host, port), _UDPHandler)
            p = udp.server_address[1]
            try:
                tcp = _TCPServer((host, p), _TCPHandler)
            except OSError:
                udp.server_close()
                if port:
                    raise
                continue
            return udp, tcp
        raise OSError("no free port for UDP and TCP")

    def _reload(self):
        if not self.zone_file:
            return
        with self._reload_lock:
            try:
                st = os.stat(self.zone_file)
            except OSError:
                return
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._zone_stamp:
                return
            try:
                with open(self.zone_file) as f:
                    data = json.load(f)
            except (OSError, ValueError) as e:
                # A half-written file: keep serving the previous zone.
                print("dnsserver: cannot read %s: %s" % (self.zone_file, e), file=sys.stderr)
                return
            self.zone.load_dict(data)
            self._zone_stamp = stamp

    def start(self):
        for srv in (self.udp, self.tcp):
            t = threading.Thread(target=srv.serve_forever, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        for srv in (self.udp, self.tcp):
            srv.shutdown()
            srv.server_close()

    # The control API.
    def set(self, name, rtype, values, ttl=None):
        self.zone.set(name, rtype, values, ttl)

    def remove(self, name, rtype=None):
        self.zone.remove(name, rtype)

    def load(self, data):
        self.zone.load_dict(data)

    def servfail(self, name):
        self.zone.set_behaviour(name, "servfail")

    def timeout(self, name):
        self.zone.set_behaviour(name, "timeout")

    def truncate(self, name):
        self.zone.set_behaviour(name, "truncate")

    def clear_behaviour(self, name):
        self.zone.set_behaviour(name, None)

    @property
    def queries(self):
        with self.zone.lock:
            return list(self.zone.queries)


def main():
    ap = argparse.ArgumentParser(description="sendgate test DNS server")
    ap.add_argument("--port", type=int, default=5353)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--zone", help="JSON zone file, re-read when it changes")
    ap.add_argument("--ttl", type=int, default=1, help="default TTL")
    args = ap.parse_args()
    srv = DNSServer(args.port, args.host, args.zone, args.ttl)
    srv.start()
    print("PORT %d" % srv.port, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    srv.stop()


if __name__ == "__main__":
    sys.exit(main())
