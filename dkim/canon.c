/*
 * canon: RFC 6376 section 3.4 canonicalization. The body side is a
 * streaming state machine so that the session can hash DATA as it arrives
 * in chunks of any size; the header side canonicalizes one field at a time.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "dkim/dkim.h"

/* Canonical bytes are staged here and hashed in blocks, not byte by byte. */
#define STAGE_SIZE 4096

struct dkim_body {
	enum dkim_canon canon;
	EVP_MD_CTX *md;
	/*
	 * What is held back because later bytes decide its fate: line ends
	 * that may turn out to be trailing empty lines, a run of WSP that may
	 * end the line (relaxed), and a CR that may start a CRLF.
	 */
	size_t held_crlf;
	int held_wsp;
	int held_cr;
	int partial_line; /* the current line has canonical content */
	int any_content;  /* some line had content: the body is not empty */
	int finished;
	size_t staged;
	unsigned char stage[STAGE_SIZE];
};

static void stage_flush(struct dkim_body *b)
{
	if (b->staged > 0 && EVP_DigestUpdate(b->md, b->stage, b->staged) != 1)
		abort();
	b->staged = 0;
}

static void stage_byte(struct dkim_body *b, unsigned char c)
{
	if (b->staged == STAGE_SIZE)
		stage_flush(b);
	b->stage[b->staged++] = c;
}

/* Emits one content byte of the current line, releasing what it confirms. */
static void emit_content(struct dkim_body *b, unsigned char c)
{
	for (; b->held_crlf > 0; b->held_crlf--) {
		stage_byte(b, '\r');
		stage_byte(b, '\n');
	}
	if (b->held_wsp) {
		stage_byte(b, ' ');
		b->held_wsp = 0;
	}
	stage_byte(b, c);
	b->partial_line = 1;
	b->any_content = 1;
}

/* Ends the current line: it is held back until content follows it. */
static void end_line(struct dkim_body *b)
{
	b->held_wsp = 0; /* relaxed: WSP at the end of a line is ignored */
	b->held_crlf++;
	b->partial_line = 0;
}

/* Returns a new body hasher; free with dkim_body_free. Aborts on OOM. */
struct dkim_body *dkim_body_new(enum dkim_canon canon)
{
	struct dkim_body *b = xcalloc(1, sizeof(*b));

	b->canon = canon;
	b->md = EVP_MD_CTX_new();
	if (b->md == NULL || EVP_DigestInit_ex(b->md, EVP_sha256(), NULL) != 1)
		abort();
	return b;
}

/* Emits a run of content bytes that holds no CR (nor WSP when relaxed). */
static void emit_run(struct dkim_body *b, const unsigned char *p, size_t n)
{
	emit_content(b, p[0]);
	p++;
	n--;
	if (n > STAGE_SIZE - b->staged) {
		stage_flush(b);
		if (n >= STAGE_SIZE) {
			if (EVP_DigestUpdate(b->md, p, n) != 1)
				abort();
			return;
		}
	}
	memcpy(b->stage + b->staged, p, n);
	b->staged += n;
}

/* Length of the run at p that holds no CR, nor WSP when relaxed. */
static size_t run_length(const struct dkim_body *b, const unsigned char *p, size_t n)
{
	const unsigned char *cr;
	size_t i;

	if (b->canon == DKIM_CANON_SIMPLE) {
		cr = memchr(p, '\r', n);
		return cr ? (size_t)(cr - p) : n;
	}
	for (i = 0; i < n; i++)
		if (p[i] == '\r' || p[i] == ' ' || p[i] == '\t')
			break;
	return i;
}

/* Feeds n more body bytes; chunk boundaries do not affect the result. */
void dkim_body_update(struct dkim_body *b, const void *p, size_t n)
{
	const unsigned char *s = p;
	size_t i = 0, run;

	if (b->finished)
		return;
	while (i < n) {
		unsigned char c = s[i];

		if (b->held_cr) {
			b->held_cr = 0;
			if (c == '\n') {
				end_line(b);
				i++;
				continue;
			}
			/* A bare CR is ordinary content, as for any verifier. */
			emit_content(b, '\r');
		}
		if (c == '\r') {
			b->held_cr = 1;
			i++;
		} else if (b->canon == DKIM_CANON_RELAXED && (c == ' ' || c == '\t')) {
			b->held_wsp = 1;
			i++;
		} else {
			/* The common case: hash a whole run of text at once. */
			run = run_length(b, s + i, n - i);
			emit_run(b, s + i, run);
			i += run;
		}
	}
}

/*
 * Writes the SHA-256 of the canonical body to out. Simple: trailing empty
 * lines collapse to one CRLF, and an empty body is one CRLF. Relaxed:
 * trailing empty lines vanish, and an empty body hashes as empty. A last
 * line without CRLF gets one in both.
 */
void dkim_body_final(struct dkim_body *b, unsigned char out[32])
{
	unsigned int len = 0;

	if (b->finished)
		abort();
	b->finished = 1;
	if (b->held_cr) {
		b->held_cr = 0;
		emit_content(b, '\r');
	}
	/*
	 * WSP on a last line without CRLF stays one SP, as in dkimpy. SMTP
	 * cannot produce such a body; this only keeps verifiers agreeing.
	 */
	if (b->held_wsp) {
		b->held_wsp = 0;
		emit_content(b, ' ');
	}
	/*
	 * What is still held are empty lines at the end: they all go but for
	 * the CRLF that ends the last line with content (or is added to it).
	 * Simple also turns an empty body into one CRLF.
	 */
	if (b->canon == DKIM_CANON_SIMPLE || b->any_content) {
		stage_byte(b, '\r');
		stage_byte(b, '\n');
	}
	stage_flush(b);
	if (EVP_DigestFinal_ex(b->md, out, &len) != 1 || len != 32)
		abort();
}

void dkim_body_free(struct dkim_body *b)
{
	if (b == NULL)
		return;
	EVP_MD_CTX_free(b->md);
	free(b);
}

static int is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/*
 * Canonicalizes one header field into out (appended, ending in CRLF).
 * Simple keeps the bytes as they are; relaxed lower-cases the name, unfolds,
 * squeezes WSP runs to one SP and drops WSP around the colon and at the end.
 * Returns 0, or -1 when there is no colon or out is full.
 */
int dkim_canon_header(enum dkim_canon canon, const char *field, size_t len, struct buf *out)
{
	const char *colon;
	size_t name_len, i;
	int wsp = 0, started = 0;

	if (len >= 2 && field[len - 2] == '\r' && field[len - 1] == '\n')
		len -= 2;
	colon = memchr(field, ':', len);
	if (colon == NULL)
		return -1;
	if (canon == DKIM_CANON_SIMPLE) {
		if (buf_append(out, field, len) == -1 || buf_append(out, "\r\n", 2) == -1)
			return -1;
		return 0;
	}

	name_len = (size_t)(colon - field);
	while (name_len > 0 && is_wsp(field[name_len - 1]))
		name_len--;
	for (i = 0; i < name_len; i++) {
		char c = field[i];

		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (buf_append(out, &c, 1) == -1)
			return -1;
	}
	if (buf_append(out, ":", 1) == -1)
		return -1;

	for (i = (size_t)(colon - field) + 1; i < len; i++) {
		char c = field[i];

		/* Unfolding removes the CRLF of each continuation line. */
		if (c == '\r' && i + 1 < len && field[i + 1] == '\n') {
			i++;
			continue;
		}
		if (is_wsp(c)) {
			wsp = 1;
			continue;
		}
		/* WSP before the first value byte follows the colon: dropped. */
		if (wsp && started && buf_append(out, " ", 1) == -1)
			return -1;
		wsp = 0;
		started = 1;
		if (buf_append(out, &c, 1) == -1)
			return -1;
	}
	if (buf_append(out, "\r\n", 2) == -1)
		return -1;
	return 0;
}
