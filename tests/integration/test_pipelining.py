"""RFC 2920 pipelining over TLS: many commands in one write, one reply
each, in order, and the right outcome for every transaction."""

import asyncio
import socket

import pytest

import sgharness as h

# Debug logging shows when a reply could not be written at once.
DAEMON_CONFIG = {"server__log_level": "debug"}


@pytest.fixture
def tls_client(daemon, tenant):
    c = h.SMTPClient.connect(daemon.smtps_port, tls=True)
    c.login(tenant)
    yield c
    c.close()


def codes(replies):
    return [r.code for r in replies]


def test_pipelined_envelope_with_bad_recipient(tls_client, tenant, daemon):
    c = tls_client
    c.send("MAIL FROM:<%s>\r\nRCPT TO:<x@example.net>\r\nRCPT TO:<bad address>\r\n"
           "RCPT TO:<y@example.net>\r\nDATA\r\n" % tenant.addr())
    rs = c.replies(5)
    assert codes(rs)[:2] == [250, 250] and codes(rs)[3:] == [250, 354], rs
    assert rs[2].code in (501, 553), "bad recipient syntax: %r" % rs[2]
    msg1 = h.make_message(tenant.addr(), subject="first")
    msg2 = h.make_message(tenant.addr(), subject="second")
    # End of data and the next transaction's envelope in one write.
    c.send(msg1 + b".\r\nMAIL FROM:<%s>\r\nRCPT TO:<z@example.net>\r\nDATA\r\n" % tenant.addr().encode())
    rs = c.replies(4)
    assert codes(rs) == [250, 250, 250, 354], rs
    q1 = h.queued_id(rs[0])
    assert q1, rs[0]
    c.send(msg2 + b".\r\n")
    r = c.reply()
    q2 = h.queued_id(r)
    assert q2 and q2 != q1, r
    s1, s2 = h.spooled(daemon, q1), h.spooled(daemon, q2)
    assert s1.rcpts == ["x@example.net", "y@example.net"]
    assert s2.rcpts == ["z@example.net"]
    assert b"Subject: first\r\n" in s1.headers and b"Subject: second\r\n" in s2.headers


def test_whole_transactions_in_one_write(tls_client, tenant, daemon):
    """Clients may send the message right after DATA without waiting for
    354; the server must keep the bytes and handle them in order."""
    c = tls_client
    blob = b""
    for i in range(3):
        blob += b"MAIL FROM:<%s>\r\nRCPT TO:<r%d@example.net>\r\nDATA\r\n" % (tenant.addr().encode(), i)
        blob += h.make_message(tenant.addr(), subject="blob %d" % i) + b".\r\n"
    blob += b"NOOP\r\n"
    c.send(blob)
    rs = c.replies(13)
    assert codes(rs) == [250, 250, 354, 250] * 3 + [250], rs
    ids = [h.queued_id(rs[i]) for i in (3, 7, 11)]
    assert all(ids) and len(set(ids)) == 3, rs
    for i, qid in enumerate(ids):
        sm = h.spooled(daemon, qid)
        assert sm.rcpts == ["r%d@example.net" % i]
        assert b"Subject: blob %d\r\n" % i in sm.headers


def test_pipelined_failed_mail_poisons_rest(tls_client, tenant, daemon):
    """A refused MAIL makes the following RCPT and DATA fail, and the
    session stays in sync for the next command."""
    c = tls_client
    before = set(daemon.queue_ids())
    c.send("RSET\r\nMAIL FROM:<x@unverified-%s>\r\nRCPT TO:<z@example.net>\r\nDATA\r\nNOOP\r\n"
           % tenant.domain)
    rs = c.replies(5)
    assert rs[0].code == 250, rs
    assert (rs[1].code, rs[1].enhanced) == (550, "5.7.1"), rs
    assert rs[2].code == 503, rs
    assert rs[3].code in (503, 554), rs
    assert rs[4].code == 250, rs
    assert set(daemon.queue_ids()) == before


def test_pipelined_all_recipients_refused(tls_client, tenant, daemon):
    c = tls_client
    c.send("MAIL FROM:<%s>\r\nRCPT TO:<bad>\r\nDATA\r\nNOOP\r\n" % tenant.addr())
    rs = c.replies(4)
    assert rs[0].code == 250 and rs[1].code in (501, 553), rs
    assert rs[2].code in (503, 554), "DATA with no valid recipient: %r" % rs[2]
    assert rs[3].code == 250, rs


def test_pipelined_over_starttls(daemon, tenant):
    c = h.SMTPClient.connect(daemon.submission_port)
    c.login(tenant)
    c.send(b"MAIL FROM:<%s>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n" % tenant.addr().encode())
    assert codes(c.replies(3)) == [250, 250, 354]
    c.send(h.make_message(tenant.addr()) + b".\r\nQUIT\r\n")
    r = c.reply()
    assert h.queued_id(r), r
    assert c.reply().code == 221
    assert c.is_closed()


def test_replies_survive_a_client_that_stops_reading(daemon):
    """Over TLS the server writes a pass's replies itself and hands them to
    the bufferevent only when the socket is full. A client that keeps
    pipelining commands without reading fills its side; the server's write
    must block (logged), and every reply must still arrive exactly once and
    in order."""
    # More replies than the kernel can buffer: the server's send buffer
    # grows up to tcp_wmem's maximum, the client's receive side is small.
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        wmem_max = int(f.read().split()[2])
    per_batch = 50
    batches = max(8000, (wmem_max + (2 << 20)) // (14 * per_batch) + 1)
    total = batches * per_batch
    log_from = len(daemon.log_text())

    def blocked():
        return "event=reply_write_blocked" in daemon.log_text()[log_from:]

    async def run():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", daemon.smtps_port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=h.client_tls_context(), server_hostname="localhost",
            limit=1 << 16)

        async def line():
            ln = await asyncio.wait_for(reader.readline(), 20 * h.SLOW)
            assert ln, "connection closed"
            return ln

        assert (await line()).startswith(b"220 ")
        writer.write(b"EHLO stalled.example\r\n")
        while not (await line()).startswith(b"250 "):
            pass
        # Many small writes, and no reading. Each batch ends in HELP, so
        # the replies show their order.
        for _ in range(batches):
            writer.write(b"NOOP\r\n" * (per_batch - 1) + b"HELP\r\n")
            await asyncio.sleep(0)
        writer.write(b"QUIT\r\n")
        await asyncio.to_thread(h.eventually, blocked, 20, 0.1,
                                "event=reply_write_blocked in the log")
        data, n = bytearray(), 0
        while n < total + 1:
            chunk = await asyncio.wait_for(reader.read(1 << 16), 20 * h.SLOW)
            assert chunk, "connection closed after %d replies" % n
            data += chunk
            n += chunk.count(b"\n")
        writer.close()
        return bytes(data).split(b"\r\n")

    lines = asyncio.run(run())
    want = ([b"250 2.0.0 Ok"] * (per_batch - 1) + [b"214"]) * batches
    got = [ln[:3] if ln.startswith(b"214 ") else ln for ln in lines[:total]]
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, "reply %d: %r" % (bad[0], lines[bad[0]])
    assert lines[total].startswith(b"221 "), lines[total]
