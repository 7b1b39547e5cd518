/*
 * record: the queue file framing, pure (no I/O). A queue file is a run of
 * records "u8 type | u32 big-endian length | data" that starts with MAGIC and
 * ends with END, whose data is the SHA-256 of every byte before END.
 */
#include <stdio.h>
#include <string.h>

#include "queue/queue.h"

static const char queue_magic[] = "SENDGATE-Q1";

void queue_rec_header(unsigned char out[QREC_HDR_LEN], int type, uint32_t len)
{
	out[0] = (unsigned char)type;
	out[1] = (unsigned char)(len >> 24);
	out[2] = (unsigned char)(len >> 16);
	out[3] = (unsigned char)(len >> 8);
	out[4] = (unsigned char)len;
}

uint32_t queue_rec_len(const unsigned char *h)
{
	return (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | (uint32_t)h[4];
}

int queue_rec_append(struct buf *out, int type, const void *data, size_t len)
{
	unsigned char h[QREC_HDR_LEN];

	if (len > QREC_MAX_LEN)
		return -1;
	queue_rec_header(h, type, (uint32_t)len);
	if (buf_append(out, h, sizeof(h)) == -1 || buf_append(out, data, len) == -1)
		return -1;
	return 0;
}

int queue_magic_append(struct buf *out)
{
	return queue_rec_append(out, QREC_MAGIC, queue_magic, sizeof(queue_magic) - 1);
}

/* 1 when type is one this version writes (END aside). */
static int rec_type_known(int type)
{
	switch (type) {
	case QREC_MAGIC:
	case QREC_BODY:
	case QREC_HEADERS:
	case QREC_ID:
	case QREC_TENANT:
	case QREC_AUTH:
	case QREC_SENDER:
	case QREC_RCPT:
	case QREC_RECEIVED:
	case QREC_CLIENT:
	case QREC_FLAGS:
		return 1;
	default:
		return 0;
	}
}

/*
 * Checks framing, magic, types and (unless flags has QUEUE_DIGEST_CHECKED)
 * the END digest without calling anyone; on success *end_off is the offset
 * of the END record.
 */
static int rec_check(const unsigned char *p, size_t n, int flags, size_t *end_off, char *err,
                     size_t errlen)
{
	unsigned char digest[32];
	size_t off = 0;

	for (;;) {
		int type;
		uint32_t len;

		if (n - off < QREC_HDR_LEN) {
			if (off == n)
				snprintf(err, errlen, "truncated: no END record after %zu bytes",
				         n);
			else
				snprintf(err, errlen,
				         "truncated: partial record header at offset %zu", off);
			return -1;
		}
		type = p[off];
		len = queue_rec_len(p + off);
		if (len > QREC_MAX_LEN) {
			snprintf(err, errlen,
			         "record type %d at offset %zu claims %u bytes (max %u)", type, off,
			         len, QREC_MAX_LEN);
			return -1;
		}
		if (len > n - off - QREC_HDR_LEN) {
			snprintf(err, errlen,
			         "truncated: record type %d at offset %zu needs %u bytes, %zu left",
			         type, off, len, n - off - QREC_HDR_LEN);
			return -1;
		}
		if (off == 0) {
			if (type != QREC_MAGIC || len != sizeof(queue_magic) - 1 ||
			    memcmp(p + QREC_HDR_LEN, queue_magic, len) != 0) {
				snprintf(err, errlen, "bad magic: not a sendgate queue file");
				return -1;
			}
		} else if (type == QREC_MAGIC) {
			snprintf(err, errlen, "second MAGIC record at offset %zu", off);
			return -1;
		}
		if (type == QREC_END) {
			if (len != sizeof(digest)) {
				snprintf(err, errlen,
				         "END record at offset %zu has length %u, not 32", off,
				         len);
				return -1;
			}
			if (!(flags & QUEUE_DIGEST_CHECKED)) {
				sha256(p, off, digest);
				if (!ct_equal(digest, p + off + QREC_HDR_LEN, sizeof(digest))) {
					snprintf(err, errlen,
					         "bad checksum: END digest does not match");
					return -1;
				}
			}
			/* After END only appended STATUS segments (queue.h), or the
			 * zeros a torn append may leave; status.c reads them. */
			if (n - off - QREC_HDR_LEN - len != 0 &&
			    p[off + QREC_HDR_LEN + len] != QREC_STATUS &&
			    p[off + QREC_HDR_LEN + len] != 0) {
				snprintf(err, errlen, "%zu unexpected bytes after END",
				         n - off - QREC_HDR_LEN - len);
				return -1;
			}
			*end_off = off;
			return 0;
		}
		if (type < QREC_FIRST_OPTIONAL && !rec_type_known(type)) {
			snprintf(err, errlen, "unknown record type %d at offset %zu", type, off);
			return -1;
		}
		off += QREC_HDR_LEN + len;
	}
}

int queue_rec_walk(const unsigned char *p, size_t n, int flags,
                   int (*fn)(void *arg, int type, const unsigned char *data, size_t len), void *arg,
                   char *err, size_t errlen)
{
	size_t off = 0, end_off;

	if (rec_check(p, n, flags, &end_off, err, errlen) == -1)
		return -1;
	/* The image is known to be well framed up to end_off from here on. */
	while (off < end_off) {
		int type = p[off];
		size_t len = queue_rec_len(p + off);

		if (fn != NULL && fn(arg, type, p + off + QREC_HDR_LEN, len) != 0) {
			snprintf(err, errlen, "record type %d at offset %zu rejected", type, off);
			return -1;
		}
		off += QREC_HDR_LEN + len;
	}
	return 0;
}
