"""spoolfile: an independent reader of sendgate's queue file format.

Written from the format description in queue/queue.h, not from the C code,
so that the integration tests check the daemon's files against the
documented format rather than against itself:

    record = u8 type | u32 big-endian length | length bytes
    MAGIC ("SENDGATE-Q1"), BODY*, HEADERS, envelope records, END
    END's data is the SHA-256 of every byte before the END record.

    python3 tests/integration/spoolfile.py FILE...   prints what it finds
"""

import hashlib
import struct
import sys

MAGIC = 1
BODY = 2
HEADERS = 3
ID = 10
TENANT = 11
AUTH = 12
SENDER = 13
RCPT = 14
RECEIVED = 15
CLIENT = 16
FLAGS = 17
END = 255

MAGIC_TEXT = b"SENDGATE-Q1"
MAX_LEN = 64 << 20
ENVELOPE_TYPES = {ID, TENANT, AUTH, SENDER, RCPT, RECEIVED, CLIENT, FLAGS}
SINGLE = {ID, TENANT, AUTH, SENDER, RECEIVED, CLIENT, FLAGS}


class SpoolFormatError(ValueError):
    pass


class SpoolMessage:
    """A parsed queue file: envelope fields plus the message bytes."""

    def __init__(self):
        self.id = None
        self.tenant_id = None
        self.tenant = None
        self.auth_user = None
        self.sender = None
        self.rcpts = []
        self.received = None
        self.client = None
        self.flags = []
        self.headers = b""
        self.body = b""
        self.body_chunks = 0
        self.unknown = []  # (type, data) of record types this reader does not know

    @property
    def message(self):
        """The message as it will be sent: header block then body."""
        return self.headers + self.body

    def __repr__(self):
        return "SpoolMessage(id=%s tenant=%s sender=%s rcpts=%s size=%d)" % (
            self.id, self.tenant, self.sender, self.rcpts, len(self.message))


def records(data):
    """Splits a file image into (offset, type, bytes) records; checks framing."""
    out = []
    off = 0
    while off < len(data):
        if len(data) - off < 5:
            raise SpoolFormatError("truncated record header at offset %d" % off)
        typ, ln = struct.unpack(">BI", data[off:off + 5])
        if ln > MAX_LEN:
            raise SpoolFormatError("record of type %d at %d is %d bytes, over the maximum"
                                   % (typ, off, ln))
        if off + 5 + ln > len(data):
            raise SpoolFormatError("record of type %d at %d truncated (%d of %d bytes)"
                                   % (typ, off, len(data) - off - 5, ln))
        out.append((off, typ, data[off + 5:off + 5 + ln]))
        off += 5 + ln
    return out


def _text(b, what):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise SpoolFormatError("%s is not UTF-8: %r" % (what, b))


def parse(data):
    """Parses and verifies a whole queue file image. Returns SpoolMessage;
    raises SpoolFormatError naming the first problem."""
    recs = records(data)
    if not recs:
        raise SpoolFormatError("empty file")
    off0, t0, d0 = recs[0]
    if t0 != MAGIC or d0 != MAGIC_TEXT:
        raise SpoolFormatError("first record is not MAGIC %r (type %d, %r)" % (MAGIC_TEXT, t0, d0[:32]))
    offe, te, de = recs[-1]
    if te != END:
        raise SpoolFormatError("last record is type %d, not END (incomplete file)" % te)
    if len(de) != 32:
        raise SpoolFormatError("END holds %d bytes, not a SHA-256" % len(de))
    if hashlib.sha256(data[:offe]).digest() != de:
        raise SpoolFormatError("END checksum does not match the file")

    m = SpoolMessage()
    phase = "body"  # body -> envelope (after HEADERS)
    seen = set()
    body = []
    for off, typ, d in recs[1:-1]:
        if typ == MAGIC:
            raise SpoolFormatError("second MAGIC at %d" % off)
        if typ == END:
            raise SpoolFormatError("END record at %d is not the last one" % off)
        if typ == BODY:
            if phase != "body":
                raise SpoolFormatError("BODY record at %d after HEADERS" % off)
            body.append(d)
            continue
        if typ == HEADERS:
            if phase != "body":
                raise SpoolFormatError("second HEADERS record at %d" % off)
            m.headers = d
            phase = "envelope"
            continue
        if phase != "envelope":
            raise SpoolFormatError("record type %d at %d comes before HEADERS" % (typ, off))
        if typ in SINGLE and typ in seen:
            raise SpoolFormatError("record type %d repeated at %d" % (typ, off))
        seen.add(typ)
        if typ == ID:
            m.id = _text(d, "ID")
        elif typ == TENANT:
            t = _text(d, "TENANT")
            tid, sep, name = t.partition(" ")
            if not sep or not tid.isdigit() or not name:
                raise SpoolFormatError("TENANT is not '<id> <name>': %r" % t)
            m.tenant_id, m.tenant = int(tid), name
        elif typ == AUTH:
            m.auth_user = _text(d, "AUTH")
        elif typ == SENDER:
            m.sender = _text(d, "SENDER")
        elif typ == RCPT:
            m.rcpts.append(_text(d, "RCPT"))
        elif typ == RECEIVED:
            t = _text(d, "RECEIVED")
            if not t.isdigit():
                raise SpoolFormatError("RECEIVED is not decimal unix time: %r" % t)
            m.received = int(t)
        elif typ == CLIENT:
            m.client = _text(d, "CLIENT")
        elif typ == FLAGS:
            m.flags = _text(d, "FLAGS").split()
        else:
            m.unknown.append((typ, d))
    if phase != "envelope":
        raise SpoolFormatError("no HEADERS record")
    for typ, name in ((ID, "ID"), (TENANT, "TENANT"), (SENDER, "SENDER"), (RCPT, "RCPT")):
        if typ not in seen:
            raise SpoolFormatError("no %s record" % name)
    m.body = b"".join(body)
    m.body_chunks = len(body)
    return m


def read(path):
    """Reads and verifies the queue file at path (see parse)."""
    with open(path, "rb") as f:
        return parse(f.read())


def main(argv):
    rc = 0
    for p in argv[1:]:
        try:
            m = read(p)
        except (OSError, SpoolFormatError) as e:
            print("%s: DAMAGED: %s" % (p, e))
            rc = 1
            continue
        print("%s: %r auth=%s client=%s flags=%s received=%s" % (
            p, m, m.auth_user, m.client, m.flags, m.received))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
