/*
 * qstream: reading queue files on the delivery side in bounded pieces, so a
 * message is never held whole in memory. A file is checked in one
 * sequential pass (framing and the END digest, hashing as it reads) that
 * keeps only what is small: the envelope, the header block and the status
 * segments. The body is then read again record by record while it is sent
 * (qbody_next), hashed again, and a file whose bytes changed since the
 * check is reported at its END, before the caller sends the final dot.
 *
 * A file that the check read in one piece (at most QUEUE_BODY_CHUNK bytes,
 * which is most mail) is not read twice: the check's buffer is kept
 * (DQ_SCAN_KEEP) and the body is sent from it, the very bytes whose digest
 * was just checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "queue/deliver_int.h"

/* A forward-only reader of one file with one QUEUE_BODY_CHUNK buffer. */
struct qcursor {
	int fd;
	unsigned char *buf;
	size_t pos, len; /* unread bytes are buf[pos..len) */
	size_t off;      /* file offset of buf[pos] */
	size_t rd;       /* file offset of buf[len]: where the next pread starts */
	size_t size;     /* the file's size when it was opened: no pread past it */
	unsigned fills;  /* preads that returned bytes: 1 means buf holds all read */
	EVP_MD_CTX *md;  /* hashes what is taken with hash set */
	char err[128];
};

static EVP_MD *sha256_md;

static void sha256_fetch(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static void cur_init(struct qcursor *c, int fd)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	/* Fetched once: EVP_sha256() would look the implementation up in
	 * OpenSSL's provider store (under a lock) at every file. */
	pthread_once(&once, sha256_fetch);
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->size = (size_t)-1;
	c->buf = xmalloc(QUEUE_BODY_CHUNK);
	c->md = EVP_MD_CTX_new();
	if (sha256_md == NULL || c->md == NULL || EVP_DigestInit_ex(c->md, sha256_md, NULL) != 1)
		abort();
}

static void cur_free(struct qcursor *c)
{
	free(c->buf);
	c->buf = NULL;
	EVP_MD_CTX_free(c->md);
	c->md = NULL;
}

/* Makes bytes available at the cursor: 1, 0 at the end of the file, -1 on a read error. */
static int cur_fill(struct qcursor *c)
{
	ssize_t r;

	if (c->pos < c->len)
		return 1;
	c->pos = c->len = 0;
	/* At the size known from fstat: the end, without a pread to see it
	 * (bytes appended since are not part of this reading). */
	if (c->rd >= c->size)
		return 0;
	do
		r = pread(c->fd, c->buf, QUEUE_BODY_CHUNK, (off_t)c->rd);
	while (r == -1 && errno == EINTR);
	if (r == -1) {
		snprintf(c->err, sizeof(c->err), "read: %s", strerror(errno));
		return -1;
	}
	c->len = (size_t)r;
	c->rd += (size_t)r;
	if (r > 0)
		c->fills++;
	return r > 0;
}

/*
 * Up to max bytes at the cursor, in place (valid until the next call),
 * hashed when hash: 1 with *p and *n set, 0 at the end of the file, -1.
 */
static int cur_take(struct qcursor *c, size_t max, const unsigned char **p, size_t *n, int hash)
{
	int r = cur_fill(c);

	if (r <= 0)
		return r;
	*p = c->buf + c->pos;
	*n = c->len - c->pos < max ? c->len - c->pos : max;
	if (hash && EVP_DigestUpdate(c->md, *p, *n) != 1)
		abort();
	c->pos += *n;
	c->off += *n;
	return 1;
}

/* Exactly n bytes into dst (NULL: dropped), hashed when hash: 0, or -1 (short or error). */
static int cur_copy(struct qcursor *c, void *dst, size_t n, int hash)
{
	while (n > 0) {
		const unsigned char *p;
		size_t got;
		int r = cur_take(c, n, &p, &got, hash);

		if (r <= 0) {
			if (r == 0)
				snprintf(c->err, sizeof(c->err), "truncated at offset %zu", c->off);
			return -1;
		}
		if (dst != NULL) {
			memcpy(dst, p, got);
			dst = (unsigned char *)dst + got;
		}
		n -= got;
	}
	return 0;
}

/*
 * The sequential check. Every record but BODY is copied into *small (its
 * header and data, in file order); BODY data is hashed and dropped. On
 * success *small ends with the END record as in the file, then every byte
 * after it (the status segments), and info's end_off, end_digest,
 * body_len and file_len are set. 0, or -1 with err.
 */
static int scan_records(int fd, struct buf *small, struct qfile_info *info, int keep,
                        char *err, size_t errlen)
{
	struct qcursor c;
	struct stat sb;
	unsigned char h[QREC_HDR_LEN], digest[32];
	unsigned int dlen = sizeof(digest);
	int rc = -1;

	if (fstat(fd, &sb) == -1 || !S_ISREG(sb.st_mode)) {
		snprintf(err, errlen, "not a regular file");
		return -1;
	}
	if (sb.st_size > QUEUE_FILE_MAX) {
		snprintf(err, errlen, "file too large (%lld bytes)", (long long)sb.st_size);
		return -1;
	}
	cur_init(&c, fd);
	c.size = (size_t)sb.st_size;
	for (;;) {
		size_t rec_off = c.off;
		uint32_t len;
		int type;

		if (cur_copy(&c, h, sizeof(h), 0) == -1) {
			if (c.err[0] == 'r')
				snprintf(err, errlen, "%s", c.err);
			else if (c.off == rec_off)
				snprintf(err, errlen, "truncated: no END record after %zu bytes",
				         rec_off);
			else
				snprintf(err, errlen,
				         "truncated: partial record header at offset %zu", rec_off);
			goto out;
		}
		type = h[0];
		len = queue_rec_len(h);
		if (len > QREC_MAX_LEN) {
			snprintf(err, errlen,
			         "record type %d at offset %zu claims %u bytes (max %u)", type,
			         rec_off, len, QREC_MAX_LEN);
			goto out;
		}
		if (rec_off == 0 && type != QREC_MAGIC) {
			snprintf(err, errlen, "bad magic: not a sendgate queue file");
			goto out;
		}
		if (type == QREC_END) {
			unsigned char want[32];
			if (len != sizeof(want)) {
				snprintf(err, errlen,
				         "END record at offset %zu has length %u, not 32", rec_off,
				         len);
				goto out;
			}
			if (cur_copy(&c, want, sizeof(want), 0) == -1) {
				snprintf(err, errlen, "truncated: END record at offset %zu",
				         rec_off);
				goto out;
			}
			if (EVP_DigestFinal_ex(c.md, digest, &dlen) != 1)
				abort();
			if (!ct_equal(digest, want, sizeof(digest))) {
				snprintf(err, errlen, "bad checksum: END digest does not match");
				goto out;
			}
			info->end_off = rec_off;
			memcpy(info->end_digest, want, sizeof(want));
			if (buf_append(small, h, sizeof(h)) == -1 ||
			    buf_append(small, want, sizeof(want)) == -1)
				abort();
			break;
		}
		if (EVP_DigestUpdate(c.md, h, sizeof(h)) != 1)
			abort();
		if (type == QREC_BODY) {
			if (cur_copy(&c, NULL, len, 1) == -1)
				goto truncated;
			info->body_len += len;
			continue;
		}
		if (buf_append(small, h, sizeof(h)) == -1)
			abort();
		while (len > 0) {
			const unsigned char *p;
			size_t n;
			int r = cur_take(&c, len, &p, &n, 1);
			if (r <= 0)
				goto truncated;
			if (buf_append(small, p, n) == -1)
				abort();
			len -= (uint32_t)n;
		}
	}
	/* The status segments after END: small (a few records per attempt). */
	for (;;) {
		const unsigned char *p;
		size_t n;
		int r = cur_take(&c, QUEUE_BODY_CHUNK, &p, &n, 0);
		if (r == -1) {
			snprintf(err, errlen, "%s", c.err);
			goto out;
		}
		if (r == 0)
			break;
		if (buf_append(small, p, n) == -1)
			abort();
	}
	info->file_len = c.off;
	if (keep && c.fills == 1) {
		/* One pread read it all: buf[0..rd) is the file as checked. */
		info->image = c.buf;
		c.buf = NULL;
	}
	rc = 0;
	goto out;
truncated:
	if (c.err[0] == 'r')
		snprintf(err, errlen, "%s", c.err);
	else
		snprintf(err, errlen, "truncated: a record before offset %zu needs more bytes",
		         c.off);
out:
	cur_free(&c);
	return rc;
}

int dq_scan_file(int fd, struct queue_msg *m, int flags, struct queue_rcpt_status **st,
                 struct qfile_info *info, char *err, size_t errlen)
{
	struct buf small;
	size_t end_small, valid;
	int rc = -1;

	*st = NULL;
	memset(m, 0, sizeof(*m));
	memset(info, 0, sizeof(*info));
	buf_init(&small, (size_t)-1);
	if (scan_records(fd, &small, info, flags & DQ_SCAN_KEEP, err, errlen) == -1)
		goto out;
	/*
	 * small is the file without its BODY records, whose END digest
	 * scan_records has just checked over the whole file: the readers in
	 * envelope.c and status.c check and parse the rest (record types,
	 * envelope, segments) exactly as in a whole image.
	 */
	{
		/* Find END in small: its records are well framed up to END. */
		size_t off = 0;
		while ((unsigned char)small.data[off] != QREC_END)
			off += QREC_HDR_LEN + queue_rec_len((unsigned char *)small.data + off);
		end_small = off;
	}
	if (queue_msg_parse((unsigned char *)small.data, small.len, m,
	                    QUEUE_DIGEST_CHECKED | (flags & DQ_SCAN_HEADERS ? QUEUE_PARSE_BODY : 0),
	                    err, errlen) == -1)
		goto out;
	*st = xcalloc(m->env.nrcpts ? m->env.nrcpts : 1, sizeof(**st));
	if (queue_status_parse((unsigned char *)small.data, small.len, *st, m->env.nrcpts, &valid,
	                       info->digest) == -1) {
		snprintf(err, errlen, "no END record");
		goto out;
	}
	/* Offsets in small are the file's minus the BODY records before END. */
	info->valid_len = valid + (info->end_off - end_small);
	rc = 0;
out:
	if (rc == -1) {
		free(*st);
		*st = NULL;
		queue_msg_free(m);
		dq_info_release(info);
	}
	buf_free(&small);
	return rc;
}

void dq_info_release(struct qfile_info *info)
{
	free(info->image);
	info->image = NULL;
}

/* ---- the body, while it is sent ---------------------------------------- */

struct qbody {
	struct qcursor c;
	unsigned char *image;     /* the checked file up to END, or NULL: read fd */
	size_t ipos;              /* in image: the next record */
	size_t end_off;           /* where END was when the file was checked */
	unsigned char digest[32]; /* and its digest */
	int type;                 /* of the record being read */
	size_t rem;               /* its bytes still unread */
	int done;
};

struct qbody *qbody_open(int fd, struct qfile_info *info)
{
	struct qbody *b = xcalloc(1, sizeof(*b));

	if (info->image != NULL) {
		b->image = info->image;
		b->end_off = info->end_off;
		info->image = NULL;
		close(fd);
		b->c.fd = -1;
		return b;
	}
	cur_init(&b->c, fd);
	b->end_off = info->end_off;
	memcpy(b->digest, info->end_digest, sizeof(b->digest));
	return b;
}

/* The body from the kept image, framed and checked by dq_scan_file. */
static int image_next(struct qbody *b, const char **p, size_t *n)
{
	while (b->ipos < b->end_off) {
		const unsigned char *h = b->image + b->ipos;
		size_t len = queue_rec_len(h);

		b->ipos += QREC_HDR_LEN + len;
		if (h[0] == QREC_BODY && len > 0) {
			*p = (const char *)h + QREC_HDR_LEN;
			*n = len;
			return 1;
		}
	}
	return 0;
}

int qbody_next(struct qbody *b, const char **p, size_t *n, char *err, size_t errlen)
{
	unsigned char h[QREC_HDR_LEN];

	if (b->image != NULL)
		return image_next(b, p, n);
	for (;;) {
		if (b->rem > 0) {
			const unsigned char *d;
			size_t got;
			int r = cur_take(&b->c, b->rem, &d, &got, 1);
			if (r <= 0)
				goto changed;
			b->rem -= got;
			if (b->type != QREC_BODY)
				continue;
			*p = (const char *)d;
			*n = got;
			return 1;
		}
		if (b->done)
			return 0;
		if (b->c.off > b->end_off || cur_copy(&b->c, h, sizeof(h), 0) == -1)
			goto changed;
		if (b->c.off - QREC_HDR_LEN == b->end_off) {
			unsigned char want[32], sum[32];
			unsigned int dlen = sizeof(sum);
			if (h[0] != QREC_END || queue_rec_len(h) != 32 ||
			    cur_copy(&b->c, want, sizeof(want), 0) == -1)
				goto changed;
			if (EVP_DigestFinal_ex(b->c.md, sum, &dlen) != 1)
				abort();
			if (!ct_equal(sum, b->digest, sizeof(sum)) ||
			    !ct_equal(want, b->digest, sizeof(want)))
				goto changed;
			b->done = 1;
			return 0;
		}
		if (EVP_DigestUpdate(b->c.md, h, sizeof(h)) != 1)
			abort();
		b->type = h[0];
		b->rem = queue_rec_len(h);
	}
changed:
	snprintf(err, errlen, "queue file changed or unreadable since it was checked%s%s",
	         b->c.err[0] ? ": " : "", b->c.err);
	return -1;
}

void qbody_close(struct qbody *b)
{
	if (b == NULL)
		return;
	if (b->c.fd != -1)
		close(b->c.fd);
	cur_free(&b->c);
	free(b->image);
	free(b);
}
