#!/usr/bin/python3
"""An SMTP sink for delivery tests: a real server on a loopback address that
records every message with the address it came from, and can be told to
misbehave.

    sink = Sink("127.0.0.5", port=0, cert=(certfile, keyfile))
    sink.start()                          # background thread; sink.port
    sink.rcpt_rule("a@x.test", "tempfail", times=2)   # 451 twice, then normal
    sink.rcpt_rule("b@x.test", "permfail")            # 550 5.1.1 always
    sink.data_tempfail = 1                # 451 after the next message's dot
    sink.greeting = "421 4.3.2 busy"      # refuse at greeting
    sink.stall = True                     # accept TCP, then say nothing
    sink.drop = True                      # close right after the greeting
    sink.starttls = False                 # do not offer STARTTLS
    sink.greet_delay = 1.0                # wait before the greeting
    sink.no_ehlo = True                   # 502 to EHLO: HELO only
    sink.auth = ("user", "pw")            # offer and require AUTH PLAIN
    sink.size = 1000                      # SIZE limit (EHLO and MAIL SIZE=)
    sink.wait_for(3)                      # until 3 messages were received
    sink.messages                         # [Message(peer, helo, mail_from, rcpts, data, tls)]
    sink.stop()

As a process (benchmarks): python3 sink.py --host 127.0.0.1 --port 2525
prints "PORT n" and, every second, "COUNT n" once messages arrive.
Messages are then only counted (--keep to record them).
"""

import argparse
import asyncio
import base64
import binascii
import re
import ssl
import sys
import threading
import time


class Message:
    def __init__(self, peer, local, helo, mail_from, params, rcpts, data, tls, user=None):
        self.user = user  # the AUTH PLAIN user, if any
        self.peer, self.local, self.helo = peer, local, helo
        self.mail_from, self.params, self.rcpts = mail_from, params, rcpts
        self.data, self.tls = data, tls
        self.at = time.monotonic()  # when the sink took it (its 250 to DATA)

    @property
    def source(self):
        """The address the message came from."""
        return self.peer[0]

    def __repr__(self):
        return "Message(from %s helo=%s mail=%s rcpts=%s %d bytes%s)" % (
            self.peer[0], self.helo, self.mail_from, self.rcpts, len(self.data),
            " tls" if self.tls else "")


class Sink:
    def __init__(self, host="127.0.0.1", port=0, cert=None, name="sink.test", keep=True):
        self.host, self.port, self.name = host, port, name
        self.cert = cert
        self.keep = keep
        self.lock = threading.Lock()
        self.messages = []
        self.count = 0
        self.connections = 0
        self.peers = []
        self.commands = []  # every command line received (for checks)
        self.rules = {}  # lower-cased address -> [kind, remaining or None, text]
        self.data_tempfail = 0
        self.data_permfail = False
        self.tempfail_text = "451 4.3.0 try again later"
        self.greeting = None
        self.stall = False
        self.stall_data = False
        self.early_reply = None  # reply this after the first DATA bytes, then read no more
        self.drop = False
        self.starttls = cert is not None
        self.pipelining = True
        self.smtputf8 = True
        self.size = None
        self.tls_broken = False  # offer STARTTLS, then fail the handshake
        self.auth = None  # (user, password): offer AUTH PLAIN (after TLS) and require it
        self.greet_delay = 0  # seconds to wait before the greeting
        self.no_ehlo = False  # refuse EHLO (an old server: HELO only)
        self.active = 0  # connections open now
        self.max_active = 0  # most connections open at once
        self._loop = None
        self._thread = None
        self._server = None
        self._started = threading.Event()
        self._tasks = set()

    # ------------------------------------------------------------ control
    def rcpt_rule(self, addr, kind, times=None, text=None):
        """kind: 'tempfail' (451, times times then normal; None = always) or
        'permfail' (550 5.1.1)."""
        with self.lock:
            self.rules[addr.lower()] = [kind, times, text]

    def clear_rules(self):
        with self.lock:
            self.rules.clear()

    def received_for(self, rcpt):
        with self.lock:
            return [m for m in self.messages if rcpt.lower() in [r.lower() for r in m.rcpts]]

    def wait_for(self, n, timeout=10.0, what=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.count >= n:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError("sink %s:%d got %d messages, expected %d%s" % (
            self.host, self.port, self.count, n, (" (%s)" % what) if what else ""))

    # ------------------------------------------------------------ server
    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("sink did not start")
        return self

    def _run(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._started.set()
        self._loop.run_forever()
        for t in list(self._tasks):
            t.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _serve(self):
        self._server = await asyncio.start_server(self._client, self.host, self.port,
                                                  reuse_address=True, backlog=512,
                                                  limit=1 << 26)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self):
        if self._loop is None:
            return

        def _close():
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            self._loop.stop()
        self._loop.call_soon_threadsafe(_close)
        self._thread.join(10)
        self._loop = None

    def _ssl_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert[0], self.cert[1])
        return ctx

    async def _client(self, reader, writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            with self.lock:
                self.active -= 1
            self._tasks.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def _session(self, reader, writer):
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        with self.lock:
            self.connections += 1
            self.peers.append(peer)
        if self.stall:
            await asyncio.sleep(3600)
            return
        if self.greet_delay:
            await asyncio.sleep(self.greet_delay)
        if self.greeting:
            writer.write(self.greeting.encode() + b"\r\n")
            await writer.drain()
            return
        writer.write(b"220 %s ESMTP sink\r\n" % self.name.encode())
        await writer.drain()
        if self.drop:
            return
        tls = False
        user = None
        helo = None
        mail = None
        params = ""
        rcpts = []
        out = []

        def reply(line):
            out.append(line.encode() + b"\r\n")

        async def flush():
            if out:
                writer.write(b"".join(out))
                out.clear()
                await writer.drain()

        while True:
            # Answer everything pipelined before waiting for more.
            if not reader._buffer or b"\n" not in reader._buffer:
                await flush()
            line = await reader.readline()
            if not line:
                return
            if not line.endswith(b"\r\n"):
                reply("500 5.5.2 lines end with CRLF")
                continue
            cmd = line[:-2].decode("utf-8", "replace")
            if self.size and cmd.upper().startswith("MAIL"):
                m = re.search(r"SIZE=(\d+)", cmd, re.I)
                if m and int(m.group(1)) > self.size:
                    reply("552 5.3.4 message too big")
                    continue
            with self.lock:
                if self.keep:
                    self.commands.append(cmd)
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO" and self.no_ehlo:
                reply("502 5.5.1 EHLO not implemented")
            elif verb in ("EHLO", "HELO"):
                helo = cmd[5:].strip()
                mail, rcpts = None, []
                if verb == "HELO":
                    reply("250 %s" % self.name)
                    continue
                ext = [self.name]
                if self.pipelining:
                    ext.append("PIPELINING")
                if self.size:
                    ext.append("SIZE %d" % self.size)
                else:
                    ext.append("SIZE")
                ext.append("8BITMIME")
                if self.smtputf8:
                    ext.append("SMTPUTF8")
                if self.starttls and not tls:
                    ext.append("STARTTLS")
                if self.auth and (tls or not self.starttls):
                    ext.append("AUTH PLAIN")
                for i, e in enumerate(ext):
                    reply("250%s%s" % ("-" if i < len(ext) - 1 else " ", e))
            elif verb == "STARTTLS" and self.starttls and not tls:
                reply("220 2.0.0 go ahead")
                await flush()
                if self.tls_broken:
                    writer.write(b"this is not a TLS handshake\r\n" * 4)
                    await writer.drain()
                    return
                await writer.start_tls(self._ssl_context())
                tls = True
                helo, mail, rcpts = None, None, []
            elif verb == "AUTH" and self.auth:
                parts = cmd.split()
                ok = False
                if len(parts) == 3 and parts[1].upper() == "PLAIN":
                    try:
                        _, u, pw = base64.b64decode(parts[2], validate=True).split(b"\0")
                        ok = (u.decode(), pw.decode()) == tuple(self.auth)
                    except (ValueError, binascii.Error):
                        ok = False
                if ok:
                    user = self.auth[0]
                    reply("235 2.7.0 authenticated")
                else:
                    reply("535 5.7.8 authentication failed")
            elif verb == "MAIL":
                m = re.match(r"MAIL FROM:<([^>]*)>(.*)$", cmd, re.I)
                if not m or helo is None:
                    reply("503 5.5.1 bad sequence")
                    continue
                if self.auth and user is None:
                    reply("530 5.7.0 authentication required")
                    continue
                mail, params, rcpts = m.group(1), m.group(2).strip(), []
                reply("250 2.1.0 ok")
            elif verb == "RCPT":
                m = re.match(r"RCPT TO:<([^>]*)>", cmd, re.I)
                if not m or mail is None:
                    reply("503 5.5.1 bad sequence")
                    continue
                addr = m.group(1)
                with self.lock:
                    rule = self.rules.get(addr.lower())
                    kind = None
                    text = None
                    if rule:
                        kind, times, text = rule
                        if times is not None:
                            if times <= 0:
                                kind = None
                            else:
                                rule[1] = times - 1
                if kind == "tempfail":
                    reply(text or self.tempfail_text)
                elif kind == "permfail":
                    reply(text or "550 5.1.1 <%s>: no such user" % addr)
                else:
                    rcpts.append(addr)
                    reply("250 2.1.5 ok")
            elif verb == "DATA":
                if mail is None or not rcpts:
                    reply("554 5.5.1 no valid recipients")
                    continue
                reply("354 go ahead")
                await flush()
                if self.early_reply:
                    await reader.read(4096)
                    reply(self.early_reply)
                    await flush()
                    await asyncio.sleep(60)  # the client must hang up, not finish
                    return
                # The whole message at once (a line at a time is too slow for
                # benchmarks): up to CRLF "." CRLF, then undo dot-stuffing.
                first = await reader.readexactly(3)
                if first == b".\r\n":
                    data = b""
                else:
                    raw = first + await reader.readuntil(b"\n.\r\n")
                    if not raw.endswith(b"\r\n.\r\n"):
                        reply("500 5.5.2 bare LF before the final dot")
                        mail, rcpts = None, []
                        continue
                    data = raw[:-3]
                    if data.startswith(b"."):
                        data = data[1:]
                    data = data.replace(b"\r\n..", b"\r\n.")
                if self.stall_data:
                    await asyncio.sleep(3600)
                    return
                with self.lock:
                    tf = self.data_tempfail
                    if tf > 0:
                        self.data_tempfail = tf - 1
                if tf > 0:
                    reply(self.tempfail_text)
                elif self.data_permfail:
                    reply("554 5.7.1 message refused")
                else:
                    msg = Message(peer, local, helo, mail, params, list(rcpts), data, tls,
                                  user)
                    with self.lock:
                        self.count += 1
                        if self.keep:
                            self.messages.append(msg)
                    reply("250 2.0.0 ok: queued")
                mail, rcpts = None, []
            elif verb == "RSET":
                mail, rcpts = None, []
                reply("250 2.0.0 ok")
            elif verb == "NOOP":
                reply("250 2.0.0 ok")
            elif verb == "QUIT":
                reply("221 2.0.0 bye")
                await flush()
                return
            else:
                reply("502 5.5.2 command not recognized")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="record messages (memory grows)")
    args = ap.parse_args()
    s = Sink(args.host, args.port, keep=args.keep).start()
    print("PORT %d" % s.port, flush=True)
    last = -1
    try:
        while True:
            time.sleep(1)
            if s.count != last:
                last = s.count
                print("COUNT %d %.3f" % (s.count, time.time()), flush=True)
    except KeyboardInterrupt:
        pass
    s.stop()


if __name__ == "__main__":
    sys.exit(main())
