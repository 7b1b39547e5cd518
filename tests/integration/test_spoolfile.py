"""The independent queue-file reader itself: it must reject what the
format calls damaged, or the spool checks in the other tests mean nothing.
Pure Python, no daemon."""

import hashlib
import struct

import pytest

import spoolfile as sf


def rec(t, data):
    return struct.pack(">BI", t, len(data)) + data


def image(records, end=True, digest=None):
    body = b"".join(rec(t, d) for t, d in records)
    if end:
        body += rec(sf.END, digest if digest is not None else hashlib.sha256(body).digest())
    return body


GOOD = [
    (sf.MAGIC, b"SENDGATE-Q1"),
    (sf.BODY, b"part one\r\n"),
    (sf.BODY, b"part two\r\n"),
    (sf.HEADERS, b"From: <a@x.example>\r\n\r\n"),
    (sf.ID, b"0123456789ABCDEFGHIJ"),
    (sf.TENANT, b"7 acme"),
    (sf.AUTH, b"acme-0001"),
    (sf.SENDER, b"a@x.example"),
    (sf.RCPT, b"r1@example.net"),
    (sf.RCPT, b"r2@example.net"),
    (sf.RECEIVED, b"1795347450"),
    (sf.CLIENT, b"127.0.0.1"),
    (sf.FLAGS, b"8bitmime smtputf8"),
]


def test_good_file():
    m = sf.parse(image(GOOD))
    assert m.id == "0123456789ABCDEFGHIJ"
    assert (m.tenant_id, m.tenant, m.auth_user) == (7, "acme", "acme-0001")
    assert m.rcpts == ["r1@example.net", "r2@example.net"]
    assert m.message == b"From: <a@x.example>\r\n\r\npart one\r\npart two\r\n"
    assert m.flags == ["8bitmime", "smtputf8"] and m.received == 1795347450


@pytest.mark.parametrize("cut", [1, 5, 20, 37])
def test_truncated(cut):
    data = image(GOOD)
    with pytest.raises(sf.SpoolFormatError):
        sf.parse(data[:-cut])


def test_no_end():
    with pytest.raises(sf.SpoolFormatError, match="END"):
        sf.parse(image(GOOD, end=False))


def test_flipped_bit_anywhere_detected():
    data = image(GOOD)
    for i in range(0, len(data) - 37, 7):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(sf.SpoolFormatError):
            sf.parse(bytes(bad))


def test_bad_magic():
    with pytest.raises(sf.SpoolFormatError, match="MAGIC"):
        sf.parse(image([(sf.MAGIC, b"SENDGATE-Q2")] + GOOD[1:]))


def test_trailing_bytes_after_end():
    with pytest.raises(sf.SpoolFormatError):
        sf.parse(image(GOOD) + b"\x00")


@pytest.mark.parametrize("drop", [sf.HEADERS, sf.ID, sf.TENANT, sf.SENDER, sf.RCPT])
def test_missing_required_record(drop):
    with pytest.raises(sf.SpoolFormatError):
        sf.parse(image([r for r in GOOD if r[0] != drop]))


def test_body_after_headers_refused():
    recs = GOOD[:1] + GOOD[3:4] + GOOD[1:3] + GOOD[4:]
    with pytest.raises(sf.SpoolFormatError, match="BODY"):
        sf.parse(image(recs))


def test_envelope_before_headers_refused():
    recs = GOOD[:1] + [GOOD[4]] + GOOD[1:4] + GOOD[5:]
    with pytest.raises(sf.SpoolFormatError):
        sf.parse(image(recs))


def test_bad_tenant_record():
    recs = [r if r[0] != sf.TENANT else (sf.TENANT, b"acme") for r in GOOD]
    with pytest.raises(sf.SpoolFormatError, match="TENANT"):
        sf.parse(image(recs))
