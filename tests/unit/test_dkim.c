/*
 * test_dkim: canonicalization (RFC 6376 3.4 and its 3.4.5 example),
 * streaming body hash against a plain reference, the RFC 8463 Appendix A
 * vectors, signatures on random messages checked by a verifier written
 * here on OpenSSL, keys, and sealing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "dkim/dkim.h"

#define ERRLEN 256

/* ---- helpers ------------------------------------------------------------ */

static void body_hash_chunks(enum dkim_canon c, const char *s, size_t n, const size_t *cuts,
			     size_t ncuts, unsigned char out[32])
{
	struct dkim_body *b = dkim_body_new(c);
	size_t pos = 0, i;

	for (i = 0; i < ncuts; i++) {
		dkim_body_update(b, s + pos, cuts[i] - pos);
		pos = cuts[i];
	}
	dkim_body_update(b, s + pos, n - pos);
	dkim_body_final(b, out);
	dkim_body_free(b);
}

static void body_hash(enum dkim_canon c, const char *s, size_t n, unsigned char out[32])
{
	body_hash_chunks(c, s, n, NULL, 0, out);
}

static void b64(const unsigned char *p, size_t n, char *out)
{
	base64_encode(p, n, out);
}

/* Asserts that body in canonicalizes to want (by comparing hashes). */
static void expect_body(enum dkim_canon c, const char *in, const char *want)
{
	unsigned char got[32], exp[32];
	char g64[48], e64[48];

	body_hash(c, in, strlen(in), got);
	sha256(want, strlen(want), exp);
	b64(got, 32, g64);
	b64(exp, 32, e64);
	if (strcmp(g64, e64) != 0)
		fail_msg("body canon %s of \"%s\": hash %s, want %s (of \"%s\")",
			 c == DKIM_CANON_SIMPLE ? "simple" : "relaxed", in, g64, e64, want);
}

static void expect_header(enum dkim_canon c, const char *in, const char *want)
{
	struct buf out;

	buf_init(&out, 4096);
	assert_int_equal(dkim_canon_header(c, in, strlen(in), &out), 0);
	assert_string_equal(out.data, want);
	buf_free(&out);
}

/* Reads a whole file under the test data directory; caller frees. */
static char *read_testdata(const char *name, size_t *len)
{
	const char *dir = getenv("SENDGATE_TESTDATA");
	char path[1024];
	FILE *f;
	char *data;
	long n;

	snprintf(path, sizeof(path), "%s/%s", dir ? dir : "../shared/testdata", name);
	f = fopen(path, "rb");
	if (f == NULL)
		fail_msg("cannot open %s (set SENDGATE_TESTDATA)", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	data = xmalloc((size_t)n + 1);
	assert_int_equal(fread(data, 1, (size_t)n, f), (size_t)n);
	data[n] = '\0';
	fclose(f);
	if (len)
		*len = (size_t)n;
	return data;
}

/*
 * The reference body canonicalization, written the plain way (whole body
 * in memory, one rule after another, as RFC 6376 3.4.3/3.4.4 read and as
 * dkimpy does it), to check the streaming state machine against.
 */
static void ref_body(enum dkim_canon c, const char *in, size_t n, struct buf *out)
{
	struct buf a;
	size_t i, j, k;

	buf_init(&a, n * 2 + 16);
	if (c == DKIM_CANON_RELAXED) {
		/* Drop WSP runs that end a line, squeeze the others to one SP. */
		for (i = 0; i < n;) {
			if (in[i] == ' ' || in[i] == '\t') {
				for (j = i; j < n && (in[j] == ' ' || in[j] == '\t'); j++)
					;
				if (!(j + 1 < n && in[j] == '\r' && in[j + 1] == '\n'))
					buf_append(&a, " ", 1);
				i = j;
			} else {
				buf_append(&a, in + i, 1);
				i++;
			}
		}
	} else {
		buf_append(&a, in, n);
	}
	/* Trailing CRLFs become exactly one; no CRLF at the end gets one. */
	k = a.len;
	while (k >= 2 && a.data[k - 2] == '\r' && a.data[k - 1] == '\n')
		k -= 2;
	buf_reset(out);
	buf_append(out, a.data, k);
	buf_append(out, "\r\n", 2);
	/* Relaxed: an empty body stays empty. */
	if (c == DKIM_CANON_RELAXED && out->len == 2)
		buf_reset(out);
	buf_free(&a);
}

/* ---- body canonicalization ---------------------------------------------- */

static void test_body_simple(void **state)
{
	expect_body(DKIM_CANON_SIMPLE, "", "\r\n");
	expect_body(DKIM_CANON_SIMPLE, "\r\n", "\r\n");
	expect_body(DKIM_CANON_SIMPLE, "\r\n\r\n\r\n", "\r\n");
	expect_body(DKIM_CANON_SIMPLE, "abc\r\n", "abc\r\n");
	expect_body(DKIM_CANON_SIMPLE, "abc\r\n\r\n\r\n", "abc\r\n");
	expect_body(DKIM_CANON_SIMPLE, "abc", "abc\r\n");
	expect_body(DKIM_CANON_SIMPLE, "a  b \t\r\n", "a  b \t\r\n");
	expect_body(DKIM_CANON_SIMPLE, "abc\r\n \r\n\r\n", "abc\r\n \r\n");
	expect_body(DKIM_CANON_SIMPLE, "\r\n\r\nabc\r\n", "\r\n\r\nabc\r\n");
}

static void test_body_relaxed(void **state)
{
	expect_body(DKIM_CANON_RELAXED, "", "");
	expect_body(DKIM_CANON_RELAXED, "\r\n", "");
	expect_body(DKIM_CANON_RELAXED, "\r\n\r\n", "");
	expect_body(DKIM_CANON_RELAXED, " \t \r\n\r\n", "");
	expect_body(DKIM_CANON_RELAXED, "abc\r\n", "abc\r\n");
	expect_body(DKIM_CANON_RELAXED, "abc", "abc\r\n");
	expect_body(DKIM_CANON_RELAXED, "a  b \t\r\n", "a b\r\n");
	expect_body(DKIM_CANON_RELAXED, "\t a\t\tb  c \r\n", " a b c\r\n");
	expect_body(DKIM_CANON_RELAXED, "abc\r\n\r\n\r\n", "abc\r\n");
	expect_body(DKIM_CANON_RELAXED, "abc\r\n  \r\n\t\r\n", "abc\r\n");
	expect_body(DKIM_CANON_RELAXED, "abc\r\n\r\n \r\nx\r\n", "abc\r\n\r\n\r\nx\r\n");
	/* Bare CR and LF are ordinary bytes, not line ends. */
	expect_body(DKIM_CANON_RELAXED, "a \rb\r\n", "a \rb\r\n");
	expect_body(DKIM_CANON_RELAXED, "a \nb\r\n", "a \nb\r\n");
}

/* The well-known empty-body hashes every DKIM implementation agrees on. */
static void test_body_empty_known_hashes(void **state)
{
	unsigned char h[32];
	char t[48];

	body_hash(DKIM_CANON_SIMPLE, "", 0, h);
	b64(h, 32, t);
	assert_string_equal(t, "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
	body_hash(DKIM_CANON_RELAXED, "", 0, h);
	b64(h, 32, t);
	assert_string_equal(t, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
}

/* RFC 6376 section 3.4.5: the worked example, headers and body. */
static const char rfc_example_hdr_a[] = "A: X\r\n";
static const char rfc_example_hdr_b[] = "B : Y\t\r\n\tZ  \r\n";
static const char rfc_example_body[] = " C \r\nD \t E\r\n\r\n\r\n";

static void test_rfc6376_example(void **state)
{
	expect_header(DKIM_CANON_RELAXED, rfc_example_hdr_a, "a:X\r\n");
	expect_header(DKIM_CANON_RELAXED, rfc_example_hdr_b, "b:Y Z\r\n");
	expect_body(DKIM_CANON_RELAXED, rfc_example_body, " C\r\nD E\r\n");
	expect_header(DKIM_CANON_SIMPLE, rfc_example_hdr_a, "A: X\r\n");
	expect_header(DKIM_CANON_SIMPLE, rfc_example_hdr_b, "B : Y\t\r\n\tZ  \r\n");
	expect_body(DKIM_CANON_SIMPLE, rfc_example_body, " C \r\nD \t E\r\n");
}

static void test_header_canon(void **state)
{
	struct buf out;

	expect_header(DKIM_CANON_RELAXED, "SuBjEcT :  Hello \r\n  World\t \r\n",
		      "subject:Hello World\r\n");
	expect_header(DKIM_CANON_RELAXED, "Subject:\tHello\r\n", "subject:Hello\r\n");
	/* Without its CRLF, the field still comes out with one. */
	expect_header(DKIM_CANON_RELAXED, "X-A:b", "x-a:b\r\n");
	expect_header(DKIM_CANON_RELAXED, "X-Empty:   \r\n", "x-empty:\r\n");
	expect_header(DKIM_CANON_RELAXED, "To: a@b,\r\n\tc@d,\r\n  e@f\r\n", "to:a@b, c@d, e@f\r\n");
	/* Simple keeps case, spaces and folding; adds a missing CRLF. */
	expect_header(DKIM_CANON_SIMPLE, "SuBjEcT :  Hello \r\n  World\t \r\n",
		      "SuBjEcT :  Hello \r\n  World\t \r\n");
	expect_header(DKIM_CANON_SIMPLE, "X-A:b", "X-A:b\r\n");

	buf_init(&out, 100);
	assert_int_equal(dkim_canon_header(DKIM_CANON_RELAXED, "no colon\r\n", 10, &out), -1);
	assert_int_equal(dkim_canon_header(DKIM_CANON_SIMPLE, "no colon\r\n", 10, &out), -1);
	buf_free(&out);
	/* A full output buffer is an error, not a truncation. */
	buf_init(&out, 4);
	assert_int_equal(dkim_canon_header(DKIM_CANON_RELAXED, "Subject: long\r\n", 15, &out), -1);
	buf_free(&out);
}

/* Bodies whose canonical form depends on bytes split across chunks. */
static const char *const tricky_bodies[] = {
	"",
	"\r\n",
	"abc",
	"abc\r\n",
	"a  b \t\r\n\r\n \r\n\t\r\nx  \r\n\r\n\r\n",
	"\r\n\r\n\r\nline\r\n\r\n",
	" \t \r\n \t",
	"a\r\rb\r\n\r",
	"a\n\nb\r\n \n\r\n",
	"last line  ",
	"x\r\n\r\n  \t\r\n",
	"x \r\n\r\n y\r\n",
	" C \r\nD \t E\r\n\r\n\r\n",
};

/* Every split point, and byte-at-a-time, give the one-shot hash. */
static void test_body_chunking(void **state)
{
	size_t t, i, c;

	for (t = 0; t < ARRAY_LEN(tricky_bodies); t++) {
		const char *s = tricky_bodies[t];
		size_t n = strlen(s);

		for (c = 0; c < 2; c++) {
			enum dkim_canon canon = c ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
			unsigned char whole[32], part[32], ref[32];
			size_t *cuts = xcalloc(n + 1, sizeof(*cuts));
			struct buf r;

			body_hash(canon, s, n, whole);
			buf_init(&r, 1 << 20);
			ref_body(canon, s, n, &r);
			sha256(r.data ? r.data : "", r.len, ref);
			buf_free(&r);
			if (memcmp(whole, ref, 32) != 0)
				fail_msg("body %zu canon %zu differs from the reference", t, c);
			for (i = 0; i <= n; i++) {
				cuts[0] = i;
				body_hash_chunks(canon, s, n, cuts, 1, part);
				if (memcmp(whole, part, 32) != 0)
					fail_msg("body %zu canon %zu split at %zu differs", t, c, i);
			}
			for (i = 0; i < n; i++)
				cuts[i] = i + 1;
			body_hash_chunks(canon, s, n, cuts, n > 0 ? n - 1 : 0, part);
			assert_memory_equal(whole, part, 32);
			free(cuts);
		}
	}
}

/*
 * Random bodies over the bytes that matter (WSP, CR, LF, text), fed in
 * random chunks (including empty ones): the streaming hash must equal
 * the hash of the reference canonicalization.
 */
static void test_body_random_vs_reference(void **state)
{
	static const char alphabet[] = "ab \t\r\n\r\n";
	unsigned int seed = 12345;
	int iter;

	for (iter = 0; iter < 20000; iter++) {
		char body[96];
		size_t n = (size_t)(rand_r(&seed) % (int)sizeof(body)), i, ncuts = 0;
		size_t cuts[16];
		unsigned char got[32], want[32];
		enum dkim_canon canon = iter & 1 ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
		struct buf r;

		for (i = 0; i < n; i++)
			body[i] = alphabet[rand_r(&seed) % (int)(sizeof(alphabet) - 1)];
		for (i = 0; i < ARRAY_LEN(cuts) && n > 0; i++) {
			size_t prev = ncuts ? cuts[ncuts - 1] : 0;

			cuts[ncuts++] = prev + (size_t)rand_r(&seed) % (n - prev + 1);
		}
		body_hash_chunks(canon, body, n, cuts, ncuts, got);
		buf_init(&r, 1 << 20);
		ref_body(canon, body, n, &r);
		sha256(r.data ? r.data : "", r.len, want);
		buf_free(&r);
		if (memcmp(got, want, 32) != 0)
			fail_msg("iteration %d: streaming hash differs from reference", iter);
	}
}

/*
 * Long runs of plain text (hashed in bulk, past the internal staging
 * size) mixed with line ends and WSP, split at many points.
 */
static void test_body_long_runs(void **state)
{
	size_t n = 0, i, c, cut;
	char *s = xmalloc(40000);
	struct buf r;

	for (i = 0; i < 9000; i++)
		s[n++] = (char)('a' + i % 26);
	memcpy(s + n, "  \r\n\r\n", 6);
	n += 6;
	for (i = 0; i < 5000; i++)
		s[n++] = i % 1000 == 999 ? '\t' : 'z';
	memcpy(s + n, "\r\n \r\nq", 7);
	n += 7;
	for (i = 0; i < 20000; i++)
		s[n++] = (char)('0' + i % 10);
	memcpy(s + n, "\r\n\r\n", 4);
	n += 4;
	buf_init(&r, 1 << 20);
	for (c = 0; c < 2; c++) {
		enum dkim_canon canon = c ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
		unsigned char want[32], got[32];
		size_t cuts[3];

		ref_body(canon, s, n, &r);
		sha256(r.data, r.len, want);
		for (cut = 1; cut < n; cut += 997) {
			cuts[0] = cut / 3;
			cuts[1] = cut;
			cuts[2] = cut + (n - cut) / 2;
			body_hash_chunks(canon, s, n, cuts, 3, got);
			if (memcmp(got, want, 32) != 0)
				fail_msg("canon %zu, cuts %zu/%zu/%zu: differs from reference", c,
					 cuts[0], cuts[1], cuts[2]);
		}
	}
	buf_free(&r);
	free(s);
}

/* A body larger than the internal staging buffer, fed in odd chunks. */
static void test_body_large(void **state)
{
	size_t n = 300000, i, pos;
	char *s = xmalloc(n);
	unsigned char a[32], b[32];
	struct dkim_body *h;
	struct buf r;

	for (i = 0; i < n; i++)
		s[i] = "The quick  brown\tfox \r\n"[i % 23];
	body_hash(DKIM_CANON_RELAXED, s, n, a);
	h = dkim_body_new(DKIM_CANON_RELAXED);
	for (pos = 0; pos < n; pos += 4093)
		dkim_body_update(h, s + pos, n - pos < 4093 ? n - pos : 4093);
	dkim_body_final(h, b);
	dkim_body_free(h);
	assert_memory_equal(a, b, 32);
	buf_init(&r, n * 2);
	ref_body(DKIM_CANON_RELAXED, s, n, &r);
	sha256(r.data, r.len, b);
	assert_memory_equal(a, b, 32);
	buf_free(&r);
	free(s);
}

/* ---- a verifier written here, on OpenSSL ---------------------------------- */

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The value of tag name in a DKIM-Signature field with all FWS removed; caller frees. */
static char *tag_value(const char *field, const char *name)
{
	const char *p = strchr(field, ':'), *q;
	size_t nl = strlen(name), k;

	if (p == NULL)
		return NULL;
	for (p++; *p;) {
		const char *end = strchr(p, ';'), *eq, *a = p, *b;

		if (end == NULL)
			end = p + strlen(p);
		eq = memchr(p, '=', (size_t)(end - p));
		if (eq != NULL) {
			b = eq;
			while (a < b && is_space(*a))
				a++;
			while (b > a && is_space(b[-1]))
				b--;
			if ((size_t)(b - a) == nl && memcmp(a, name, nl) == 0) {
				char *v = xmalloc((size_t)(end - eq));

				for (k = 0, q = eq + 1; q < end; q++)
					if (!is_space(*q))
						v[k++] = *q;
				v[k] = '\0';
				return v;
			}
		}
		if (*end == '\0')
			break;
		p = end + 1;
	}
	return NULL;
}

/* The tag names of a DKIM-Signature field in order, comma-separated, into out. */
static void tag_names(const char *field, char *out, size_t outlen)
{
	const char *p = strchr(field, ':') + 1;
	size_t o = 0;

	out[0] = '\0';
	while (*p) {
		const char *end = strchr(p, ';'), *eq;

		if (end == NULL)
			end = p + strlen(p);
		eq = memchr(p, '=', (size_t)(end - p));
		if (eq != NULL) {
			const char *a = p;

			while (a < eq && is_space(*a))
				a++;
			o += (size_t)snprintf(out + o, outlen - o, "%s%.*s", o ? "," : "",
					      (int)(eq - a), a);
		}
		if (*end == '\0')
			break;
		p = end + 1;
	}
}

static int name_is(const char *field, size_t flen, const char *name, size_t nlen)
{
	const char *colon = memchr(field, ':', flen);
	size_t n;

	if (colon == NULL)
		return 0;
	n = (size_t)(colon - field);
	while (n > 0 && (field[n - 1] == ' ' || field[n - 1] == '\t'))
		n--;
	return n == nlen && strncasecmp(field, name, n) == 0;
}

static int is_space_or_semi(char c)
{
	return is_space(c) || c == ';';
}

struct hfield {
	const char *p;
	size_t len;
};

/* Splits a header block into fields (continuation lines start with WSP). */
static size_t fields_of(const char *hdr, struct hfield *f, size_t max)
{
	size_t n = 0;
	const char *p = hdr;

	while (*p && !(p[0] == '\r' && p[1] == '\n') && n < max) {
		const char *start = p;

		do {
			p = strstr(p, "\r\n");
			p = p ? p + 2 : start + strlen(start);
		} while (*p == ' ' || *p == '\t');
		f[n].p = start;
		f[n].len = (size_t)(p - start);
		n++;
	}
	return n;
}

static EVP_PKEY *pubkey_from_p(enum dkim_alg alg, const char *p64)
{
	unsigned char der[1024];
	const unsigned char *d = der;
	ssize_t n = base64_decode(p64, strlen(p64), der);

	if (n <= 0)
		return NULL;
	if (alg == DKIM_ALG_ED25519_SHA256)
		return n == 32 ? EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, der, 32)
			       : NULL;
	return d2i_PUBKEY(NULL, &d, (long)n);
}

/*
 * Verifies sig (a DKIM-Signature field whose b= is its last tag) over the
 * header block hdr with pub, the way RFC 6376 section 6.1.3 reads. 1 or 0.
 */
static int verify(const char *hdr, const char *sig, EVP_PKEY *pub)
{
	char *h = tag_value(sig, "h"), *b = tag_value(sig, "b"), *a = tag_value(sig, "a");
	char *c = tag_value(sig, "c");
	struct hfield f[200];
	size_t nf = fields_of(hdr, f, ARRAY_LEN(f)), i;
	enum dkim_canon hc = c && strncmp(c, "relaxed", 7) == 0 ? DKIM_CANON_RELAXED
								 : DKIM_CANON_SIMPLE;
	unsigned char sigbin[1024], digest[32];
	ssize_t siglen;
	struct buf data;
	const char *bpos, *name;
	char *names, *save = NULL;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int ok = 0;

	buf_init(&data, 1 << 20);
	if (h == NULL || b == NULL || a == NULL)
		goto done;
	siglen = base64_decode(b, strlen(b), sigbin);
	if (siglen <= 0)
		goto done;
	/* Selected fields: the k-th use of a name takes the k-th from the bottom. */
	names = h;
	for (name = strtok_r(names, ":", &save); name; name = strtok_r(NULL, ":", &save)) {
		size_t nlen = strlen(name), used = 0, k;
		char *prev;

		/* Count earlier uses of this name in h= (h was split in place). */
		for (prev = h; prev < name; prev += strlen(prev) + 1)
			if (strcasecmp(prev, name) == 0)
				used++;
		for (k = 0, i = nf; i > 0; i--) {
			if (name_is(f[i - 1].p, f[i - 1].len, name, nlen) && k++ == used) {
				assert_int_equal(
				    dkim_canon_header(hc, f[i - 1].p, f[i - 1].len, &data), 0);
				break;
			}
		}
	}
	/* The signature field itself, b= emptied, without its final CRLF. */
	bpos = NULL;
	for (i = 1; sig[i]; i++)
		if (sig[i] == 'b' && sig[i + 1] == '=' && is_space_or_semi(sig[i - 1]))
			bpos = sig + i;
	if (bpos == NULL)
		goto done;
	{
		size_t cut = (size_t)(bpos + 2 - sig), before = data.len;

		assert_int_equal(dkim_canon_header(hc, sig, cut, &data), 0);
		assert_true(data.len >= before + 2);
		data.len -= 2;
	}
	if (strcmp(a, "rsa-sha256") == 0) {
		ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub) == 1 &&
		     EVP_DigestVerify(ctx, sigbin, (size_t)siglen, (unsigned char *)data.data,
				      data.len) == 1;
	} else if (strcmp(a, "ed25519-sha256") == 0) {
		sha256(data.data, data.len, digest);
		ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pub) == 1 &&
		     EVP_DigestVerify(ctx, sigbin, (size_t)siglen, digest, 32) == 1;
	}
done:
	EVP_MD_CTX_free(ctx);
	buf_free(&data);
	free(h);
	free(b);
	free(a);
	free(c);
	return ok;
}

/* ---- RFC 8463 Appendix A ---------------------------------------------------- */

/* The quoted TXT value of the record whose name starts with prefix; caller frees. */
static char *dns_record(const char *prefix)
{
	char *recs = read_testdata("rfc8463/dns-records.txt", NULL), *line, *save = NULL;
	char *out = NULL;

	for (line = strtok_r(recs, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *q1 = strchr(line, '"'), *q2 = strrchr(line, '"');

		if (strncmp(line, prefix, strlen(prefix)) == 0 && q1 && q2 > q1)
			out = xstrndup(q1 + 1, (size_t)(q2 - q1 - 1));
	}
	free(recs);
	if (out == NULL)
		fail_msg("no DNS record %s in dns-records.txt", prefix);
	return out;
}

static struct dkim_key *rfc_ed25519_key(void)
{
	char *text = read_testdata("rfc8463/ed25519-brisbane.seed.b64", NULL), err[ERRLEN];
	unsigned char seed[33];
	struct dkim_key *k;
	size_t n = strlen(text);

	while (n > 0 && is_space(text[n - 1]))
		n--;
	assert_int_equal(base64_decode(text, n, seed), 32);
	free(text);
	k = dkim_key_from_ed25519_seed(seed, err, sizeof(err));
	if (k == NULL)
		fail_msg("%s", err);
	return k;
}

static struct dkim_key *rfc_rsa_key(void)
{
	size_t len;
	char *pem = read_testdata("rfc8463/rsa-test.key", &len), err[ERRLEN];
	struct dkim_key *k = dkim_key_from_pem(pem, len, err, sizeof(err));

	if (k == NULL)
		fail_msg("%s", err);
	free(pem);
	return k;
}

static void test_rfc8463_body_hash(void **state)
{
	size_t len;
	char *eml = read_testdata("rfc8463/signed-message.eml", &len), bh64[48];
	char *body = strstr(eml, "\r\n\r\n");
	unsigned char bh[32];

	assert_non_null(body);
	body += 4;
	body_hash(DKIM_CANON_RELAXED, body, len - (size_t)(body - eml), bh);
	b64(bh, 32, bh64);
	assert_string_equal(bh64, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
	free(eml);
}

static void test_rfc8463_keys_match_dns(void **state)
{
	struct dkim_key *ed = rfc_ed25519_key(), *rsa = rfc_rsa_key();
	char *ed_txt = dns_record("brisbane."), *rsa_txt = dns_record("test.");
	struct buf out;

	assert_int_equal(dkim_key_alg(ed), DKIM_ALG_ED25519_SHA256);
	assert_int_equal(dkim_key_alg(rsa), DKIM_ALG_RSA_SHA256);
	assert_int_equal(dkim_key_bits(rsa), 1024);
	buf_init(&out, 4096);
	assert_int_equal(dkim_key_dns_record(ed, &out), 0);
	assert_string_equal(out.data, ed_txt);
	buf_reset(&out);
	assert_int_equal(dkim_key_dns_record(rsa, &out), 0);
	assert_string_equal(out.data, rsa_txt);
	buf_free(&out);
	free(ed_txt);
	free(rsa_txt);
	dkim_key_free(ed);
	dkim_key_free(rsa);
}

/*
 * The published signatures: signing each published DKIM-Signature field
 * (its own tags, folding and h=) must give exactly the published b=, and
 * the verifier above must accept them with the published public keys.
 */
static void test_rfc8463_reproduce_signatures(void **state)
{
	size_t len, nf, i;
	char *eml = read_testdata("rfc8463/signed-message.eml", &len), err[ERRLEN];
	struct dkim_key *keys[2] = {rfc_ed25519_key(), rfc_rsa_key()};
	const char *recs[2] = {"brisbane.", "test."};
	struct hfield f[20];
	struct buf out;

	nf = fields_of(eml, f, ARRAY_LEN(f));
	assert_int_equal(nf, 7);
	buf_init(&out, 4096);
	for (i = 0; i < 2; i++) {
		char *field = xstrndup(f[i].p, f[i].len), *published = tag_value(field, "b");
		char *txt = dns_record(recs[i]), *p = strstr(txt, "p=") + 2;
		EVP_PKEY *pub = pubkey_from_p(i == 0 ? DKIM_ALG_ED25519_SHA256 : DKIM_ALG_RSA_SHA256, p);

		assert_true(name_is(f[i].p, f[i].len, "DKIM-Signature", 14));
		buf_reset(&out);
		if (dkim_sign_field(keys[i], eml, len, field, strlen(field), &out, err,
				    sizeof(err)) == -1)
			fail_msg("%s", err);
		assert_string_equal(out.data, published);
		assert_non_null(pub);
		assert_int_equal(verify(eml, field, pub), 1);
		/* The verifier is not a yes-machine: a changed Subject fails. */
		{
			char *bad = xstrdup(eml), *subj = strstr(bad, "Subject: Is dinner");

			subj[9] = 'X';
			assert_int_equal(verify(bad, field, pub), 0);
			free(bad);
		}
		EVP_PKEY_free(pub);
		free(txt);
		free(field);
		free(published);
	}
	/* A key of the other algorithm is refused, not silently used. */
	{
		char *field = xstrndup(f[0].p, f[0].len);

		assert_int_equal(dkim_sign_field(keys[1], eml, len, field, strlen(field), &out, err,
						 sizeof(err)),
				 -1);
		free(field);
	}
	buf_free(&out);
	dkim_key_free(keys[0]);
	dkim_key_free(keys[1]);
	free(eml);
}

/* ---- dkim_sign ----------------------------------------------------------------- */

/* Checks a produced field: starts right, CRLF lines under 79 columns, folded with WSP. */
static void check_folding(const char *s, size_t n)
{
	size_t i, col = 0, lines = 0;

	assert_true(n > 16 && strncmp(s, "DKIM-Signature: ", 16) == 0);
	assert_true(n >= 2 && s[n - 2] == '\r' && s[n - 1] == '\n');
	for (i = 0; i < n; i++) {
		if (s[i] == '\r') {
			assert_true(i + 1 < n && s[i + 1] == '\n');
			if (col > 78)
				fail_msg("line %zu has %zu columns: %s", lines, col, s);
			col = 0;
			lines++;
			i++;
			if (i + 1 < n)
				assert_true(s[i + 1] == ' ' || s[i + 1] == '\t');
			continue;
		}
		assert_true(s[i] != '\n');
		col++;
	}
}

/* Signs hdr/body, checks form and tags, and verifies with pub. Returns the field. */
static char *sign_and_check(const struct dkim_key *k, EVP_PKEY *pub,
			    const struct dkim_sign_params *p, const char *hdr, const char *body)
{
	unsigned char bh[32];
	char bh64[48], err[ERRLEN], names[256], *got_bh, *field;
	struct buf out;

	body_hash(p->body_canon, body, strlen(body), bh);
	buf_init(&out, 64 * 1024);
	if (dkim_sign(k, p, hdr, strlen(hdr), bh, &out, err, sizeof(err)) == -1)
		fail_msg("dkim_sign: %s", err);
	check_folding(out.data, out.len);
	tag_names(out.data, names, sizeof(names));
	assert_string_equal(names, p->expire ? "v,a,c,d,s,t,x,h,bh,b" : "v,a,c,d,s,t,h,bh,b");
	got_bh = tag_value(out.data, "bh");
	b64(bh, 32, bh64);
	assert_string_equal(got_bh, bh64);
	free(got_bh);
	if (verify(hdr, out.data, pub) != 1)
		fail_msg("signature does not verify:\n%s%s", out.data, hdr);
	field = xstrdup(out.data);
	buf_free(&out);
	return field;
}

static EVP_PKEY *pub_of(const struct dkim_key *k)
{
	struct buf p;
	EVP_PKEY *pub;

	buf_init(&p, 4096);
	assert_int_equal(dkim_key_public_b64(k, &p), 0);
	pub = pubkey_from_p(dkim_key_alg(k), p.data);
	assert_non_null(pub);
	buf_free(&p);
	return pub;
}

struct keys {
	struct dkim_key *rsa, *ed;
	EVP_PKEY *rsa_pub, *ed_pub;
};

static int keys_setup(void **state)
{
	struct keys *ks = xcalloc(1, sizeof(*ks));
	char err[ERRLEN];

	ks->rsa = dkim_key_generate(DKIM_ALG_RSA_SHA256, 2048, err, sizeof(err));
	ks->ed = dkim_key_generate(DKIM_ALG_ED25519_SHA256, 0, err, sizeof(err));
	if (ks->rsa == NULL || ks->ed == NULL)
		return -1;
	ks->rsa_pub = pub_of(ks->rsa);
	ks->ed_pub = pub_of(ks->ed);
	*state = ks;
	return 0;
}

static int keys_teardown(void **state)
{
	struct keys *ks = *state;

	dkim_key_free(ks->rsa);
	dkim_key_free(ks->ed);
	EVP_PKEY_free(ks->rsa_pub);
	EVP_PKEY_free(ks->ed_pub);
	free(ks);
	return 0;
}

static const char msg_hdr[] = "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
			      "From: Alice <alice@example.com>\r\n"
			      "To: bob@example.net,\r\n\tcarol@example.org\r\n"
			      "To: dave@example.net\r\n"
			      "Subject: Hello  there\r\n"
			      "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
			      "Message-ID: <1@example.com>\r\n"
			      "X-Mailer: test\r\n"
			      "\r\n";
static const char msg_body[] = "Hi Bob,\r\n\r\nlunch?  \r\n\r\n";

static struct dkim_sign_params default_params(void)
{
	struct dkim_sign_params p = {
	    .domain = "example.com",
	    .selector = "sg1",
	    .header_canon = DKIM_CANON_RELAXED,
	    .body_canon = DKIM_CANON_RELAXED,
	    .timestamp = 1700000000,
	    .expire = 0,
	    .headers = NULL,
	    .oversign = 1,
	};
	return p;
}

static void test_sign_h_list(void **state)
{
	struct keys *ks = *state;
	struct dkim_sign_params p = default_params();
	static const char *const few[] = {"Subject", "To", "subject", NULL};
	char *field, *h;

	/* Oversign: each default name once more than it occurs. */
	field = sign_and_check(ks->ed, ks->ed_pub, &p, msg_hdr, msg_body);
	h = tag_value(field, "h");
	assert_string_equal(h, "from:from:to:to:to:cc:subject:subject:date:date:message-id:"
			       "message-id:reply-to:sender:in-reply-to:references:mime-version:"
			       "content-type:content-transfer-encoding:list-unsubscribe:"
			       "list-unsubscribe-post");
	free(h);
	free(field);

	/* No oversign: only the names present, as often as they occur. */
	p.oversign = 0;
	field = sign_and_check(ks->ed, ks->ed_pub, &p, msg_hdr, msg_body);
	h = tag_value(field, "h");
	assert_string_equal(h, "from:to:to:subject:date:message-id");
	free(h);
	free(field);

	/* From is always signed, even when the caller's list and the message lack it. */
	p.headers = few;
	field = sign_and_check(ks->ed, ks->ed_pub, &p, "Subject: x\r\nTo: y\r\n", msg_body);
	h = tag_value(field, "h");
	assert_string_equal(h, "from:subject:to");
	free(h);
	free(field);
}

static void test_sign_x_tag_and_errors(void **state)
{
	struct keys *ks = *state;
	struct dkim_sign_params p = default_params();
	unsigned char bh[32] = {0};
	char err[ERRLEN] = "", *field, *x;
	struct buf out;
	static const char *const bad_names[] = {"Sub ject", NULL};

	p.expire = p.timestamp + 86400;
	field = sign_and_check(ks->rsa, ks->rsa_pub, &p, msg_hdr, msg_body);
	x = tag_value(field, "x");
	assert_string_equal(x, "1700086400");
	assert_null(strstr(field, " l="));
	free(x);
	free(field);

	buf_init(&out, 64 * 1024);
	p.expire = p.timestamp;
	assert_int_equal(dkim_sign(ks->ed, &p, msg_hdr, strlen(msg_hdr), bh, &out, err, sizeof(err)),
			 -1);
	assert_true(strlen(err) > 0);
	p = default_params();
	p.domain = "exa mple.com";
	assert_int_equal(dkim_sign(ks->ed, &p, msg_hdr, strlen(msg_hdr), bh, &out, err, sizeof(err)),
			 -1);
	p = default_params();
	p.selector = "a;b=c";
	assert_int_equal(dkim_sign(ks->ed, &p, msg_hdr, strlen(msg_hdr), bh, &out, err, sizeof(err)),
			 -1);
	p = default_params();
	p.headers = bad_names;
	assert_int_equal(dkim_sign(ks->ed, &p, msg_hdr, strlen(msg_hdr), bh, &out, err, sizeof(err)),
			 -1);
	assert_int_equal(out.len, 0);
	/* An output buffer too small fails and keeps what it held. */
	buf_free(&out);
	buf_init(&out, 100);
	buf_puts(&out, "keep");
	p = default_params();
	assert_int_equal(dkim_sign(ks->rsa, &p, msg_hdr, strlen(msg_hdr), bh, &out, err, sizeof(err)),
			 -1);
	assert_string_equal(out.data, "keep");
	buf_free(&out);
}

/* What changes break the signature, per canonicalization and oversigning. */
static void test_sign_tampering(void **state)
{
	struct keys *ks = *state;
	struct dkim_sign_params p = default_params();
	char *field, *m;
	size_t n = strlen(msg_hdr) + 200;

	m = xmalloc(n);
	/* Relaxed: whitespace and case in signed fields may change. */
	field = sign_and_check(ks->rsa, ks->rsa_pub, &p, msg_hdr, msg_body);
	snprintf(m, n, "%s", msg_hdr);
	memcpy(strstr(m, "Subject: Hello  there"), "SUBJECT:  Hello there", 21);
	assert_int_equal(verify(m, field, ks->rsa_pub), 1);
	/* An unsigned field may be added. */
	snprintf(m, n, "X-Added: yes\r\n%s", msg_hdr);
	assert_int_equal(verify(m, field, ks->rsa_pub), 1);
	/* A second From (oversigned) or an added Reply-To breaks it. */
	snprintf(m, n, "From: Mallory <m@evil.example>\r\n%s", msg_hdr);
	assert_int_equal(verify(m, field, ks->rsa_pub), 0);
	snprintf(m, n, "Reply-To: m@evil.example\r\n%s", msg_hdr);
	assert_int_equal(verify(m, field, ks->rsa_pub), 0);
	/* A changed signed value breaks it. */
	snprintf(m, n, "%s", msg_hdr);
	strstr(m, "dave")[0] = 'D';
	assert_int_equal(verify(m, field, ks->rsa_pub), 0);
	free(field);

	/* Without oversigning, an added From on top goes unnoticed (why we oversign). */
	p.oversign = 0;
	field = sign_and_check(ks->rsa, ks->rsa_pub, &p, msg_hdr, msg_body);
	snprintf(m, n, "From: Mallory <m@evil.example>\r\n%s", msg_hdr);
	assert_int_equal(verify(m, field, ks->rsa_pub), 1);
	free(field);

	/* Simple: any change in a signed field's spacing breaks it. */
	p.header_canon = DKIM_CANON_SIMPLE;
	field = sign_and_check(ks->ed, ks->ed_pub, &p, msg_hdr, msg_body);
	snprintf(m, n, "%s", msg_hdr);
	memcpy(strstr(m, "Subject: Hello  there"), "Subject: Hello there ", 21);
	assert_int_equal(verify(m, field, ks->ed_pub), 0);
	free(field);
	free(m);
}

/*
 * A random header block: default and other names, odd case, folding,
 * repeats, and (when obs is set) the obsolete WSP before the colon that
 * some parsers refuse.
 */
static void random_message(unsigned int *seed, struct buf *hdr, struct buf *body, int obs)
{
	static const char *const names[] = {"From",	    "To",	"Cc",	      "Subject",
					    "Date",	    "Message-ID", "Reply-To",    "X-Mailer",
					    "Received",	    "References", "Content-Type", "MIME-Version",
					    "List-Unsubscribe"};
	static const char *const words[] = {"alpha", "b@c.example", "<id@x>", "=?utf-8?q?x?=",
					    ",",     "\"Q\"",	    "semi;colon", "a=b"};
	int nfields = 1 + rand_r(seed) % 14, i, j, nlines;

	buf_reset(hdr);
	buf_reset(body);
	if (rand_r(seed) % 10 != 0)
		buf_puts(hdr, "From: someone@example.com\r\n");
	for (i = 0; i < nfields; i++) {
		const char *name = names[rand_r(seed) % (int)ARRAY_LEN(names)];
		int nwords = rand_r(seed) % 12;

		for (j = 0; name[j]; j++) {
			char ch = name[j];

			if (rand_r(seed) % 4 == 0)
				ch = (char)(ch ^ 0x20 * ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z'));
			buf_append(hdr, &ch, 1);
		}
		buf_puts(hdr, obs && rand_r(seed) % 3 == 0 ? " :" : ":");
		for (j = 0; j < nwords; j++) {
			buf_puts(hdr, rand_r(seed) % 5 == 0 ? "\r\n\t" : (rand_r(seed) % 3 ? " " : "  "));
			buf_puts(hdr, words[rand_r(seed) % (int)ARRAY_LEN(words)]);
		}
		buf_puts(hdr, "\r\n");
	}
	buf_puts(hdr, "\r\n");
	nlines = rand_r(seed) % 8;
	for (i = 0; i < nlines; i++) {
		int len = rand_r(seed) % 60;

		for (j = 0; j < len; j++)
			buf_append(body, &"ab cd\t"[rand_r(seed) % 6], 1);
		buf_puts(body, "\r\n");
	}
}

static void test_sign_random_messages(void **state)
{
	struct keys *ks = *state;
	unsigned int seed = 4242;
	struct buf hdr, body;
	int iter;

	buf_init(&hdr, 1 << 20);
	buf_init(&body, 1 << 20);
	for (iter = 0; iter < 400; iter++) {
		struct dkim_sign_params p = default_params();
		int rsa = iter % 4 == 0; /* RSA is slow; a quarter is enough */
		char *field;

		random_message(&seed, &hdr, &body, 1);
		p.header_canon = rand_r(&seed) % 2 ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
		p.body_canon = rand_r(&seed) % 2 ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
		p.oversign = rand_r(&seed) % 2;
		p.expire = rand_r(&seed) % 2 ? p.timestamp + 3600 : 0;
		if (rand_r(&seed) % 3 == 0)
			p.domain = "a-rather-long-subdomain-name.of-a-tenant-with-a-long-name.example";
		field = sign_and_check(rsa ? ks->rsa : ks->ed, rsa ? ks->rsa_pub : ks->ed_pub, &p,
				       hdr.data, body.data ? body.data : "");
		free(field);
	}
	buf_free(&hdr);
	buf_free(&body);
}

/* Deterministic algorithms: the same input signs to the same field. */
static void test_sign_deterministic(void **state)
{
	struct keys *ks = *state;
	struct dkim_sign_params p = default_params();
	char *a = sign_and_check(ks->ed, ks->ed_pub, &p, msg_hdr, msg_body);
	char *b = sign_and_check(ks->ed, ks->ed_pub, &p, msg_hdr, msg_body);
	char *c;

	assert_string_equal(a, b);
	p.timestamp++;
	c = sign_and_check(ks->ed, ks->ed_pub, &p, msg_hdr, msg_body);
	assert_string_not_equal(a, c);
	free(a);
	free(b);
	free(c);
}

struct thread_arg {
	struct keys *ks;
	int failures;
	int n;
};

static void *sign_thread(void *v)
{
	struct thread_arg *t = v;
	struct dkim_sign_params p = default_params();
	unsigned char bh[32];
	char err[ERRLEN];
	int i;

	body_hash(DKIM_CANON_RELAXED, msg_body, strlen(msg_body), bh);
	for (i = 0; i < t->n; i++) {
		int rsa = i % 5 == 0;
		struct buf out;

		buf_init(&out, 64 * 1024);
		p.timestamp = 1700000000 + i;
		if (dkim_sign(rsa ? t->ks->rsa : t->ks->ed, &p, msg_hdr, strlen(msg_hdr), bh, &out,
			      err, sizeof(err)) == -1 ||
		    verify(msg_hdr, out.data, rsa ? t->ks->rsa_pub : t->ks->ed_pub) != 1)
			t->failures++;
		buf_free(&out);
	}
	return NULL;
}

/* Worker threads share one key: every signature still verifies. */
static void test_sign_threads(void **state)
{
	struct thread_arg args[4];
	pthread_t th[4];
	int i;

	for (i = 0; i < 4; i++) {
		args[i].ks = *state;
		args[i].failures = 0;
		args[i].n = 100;
		assert_int_equal(pthread_create(&th[i], NULL, sign_thread, &args[i]), 0);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(args[i].failures, 0);
	}
}

/* The RFC 8463 keys and message through dkim_sign, verified with the published keys. */
static void test_sign_rfc8463_message(void **state)
{
	size_t len;
	char *eml = read_testdata("rfc8463/signed-message.eml", &len);
	struct dkim_key *keys[2] = {rfc_ed25519_key(), rfc_rsa_key()};
	const char *recs[2] = {"brisbane.", "test."};
	struct hfield f[20];
	size_t nf = fields_of(eml, f, ARRAY_LEN(f)), i;
	const char *hdr = f[2].p, *body = strstr(eml, "\r\n\r\n") + 4;

	assert_int_equal(nf, 7);
	for (i = 0; i < 2; i++) {
		struct dkim_sign_params p = default_params();
		char *txt = dns_record(recs[i]);
		EVP_PKEY *pub =
		    pubkey_from_p(i == 0 ? DKIM_ALG_ED25519_SHA256 : DKIM_ALG_RSA_SHA256,
				  strstr(txt, "p=") + 2);
		char *field, *bh;

		p.domain = "football.example.com";
		p.selector = i == 0 ? "brisbane" : "test";
		p.timestamp = 1528637909;
		field = sign_and_check(keys[i], pub, &p, hdr, body);
		bh = tag_value(field, "bh");
		assert_string_equal(bh, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
		free(bh);
		free(field);
		free(txt);
		EVP_PKEY_free(pub);
	}
	dkim_key_free(keys[0]);
	dkim_key_free(keys[1]);
	free(eml);
}


/* Appends a signature of hdr+body by k (selector sel) to out. */
static void sign_into(const struct dkim_key *k, const char *sel, const struct dkim_sign_params *p0,
		      const char *hdr, const char *body, struct buf *out)
{
	struct dkim_sign_params p = *p0;
	unsigned char bh[32];
	char err[ERRLEN];

	p.selector = sel;
	body_hash(p.body_canon, body, strlen(body), bh);
	if (dkim_sign(k, &p, hdr, strlen(hdr), bh, out, err, sizeof(err)) == -1)
		fail_msg("dkim_sign: %s", err);
}

static void write_sample(const char *dir, int n, const struct buf *sigs, const char *hdr,
			 const char *body)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%03d.eml", dir, n);
	f = fopen(path, "wb");
	assert_non_null(f);
	fwrite(sigs->data, 1, sigs->len, f);
	fputs(hdr, f);
	fputs(body, f);
	fclose(f);
}

/*
 * Independent verifiers (dkimpy, and Mail::DKIM when installed) must accept
 * our signatures: both algorithms, all four canonicalization pairs, with
 * and without oversigning, on fixed and random messages, and a message
 * signed with both keys. Skipped when dkimpy or the script is missing.
 */
static void test_external_verifiers(void **state)
{
	struct keys *ks = *state;
	char dir[64], cmd[256], path[256];
	struct buf txt, sigs, hdr, body;
	unsigned int seed = 99;
	int n = 0, i, rc;
	FILE *f;

	if (access("/usr/bin/python3", X_OK) != 0 || access("tests/unit/dkim_verify.py", R_OK) != 0)
		skip();
	snprintf(dir, sizeof(dir), "/tmp/test_dkim_ext.XXXXXX");
	assert_non_null(mkdtemp(dir));
	buf_init(&txt, 4096);
	buf_init(&sigs, 64 * 1024);
	buf_init(&hdr, 1 << 20);
	buf_init(&body, 1 << 20);

	snprintf(path, sizeof(path), "%s/dns.txt", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(dkim_key_dns_record(ks->rsa, &txt), 0);
	fprintf(f, "rsa._domainkey.example.com TXT %s\n", txt.data);
	buf_reset(&txt);
	assert_int_equal(dkim_key_dns_record(ks->ed, &txt), 0);
	fprintf(f, "ed._domainkey.example.com TXT %s\n", txt.data);
	fclose(f);

	for (i = 0; i < 16; i++) {
		struct dkim_sign_params p = default_params();
		int ed = i & 1;

		p.header_canon = i & 2 ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
		p.body_canon = i & 4 ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
		p.oversign = (i & 8) != 0;
		p.timestamp = time(NULL);
		p.expire = i & 8 ? p.timestamp + 3600 : 0;
		buf_reset(&sigs);
		sign_into(ed ? ks->ed : ks->rsa, ed ? "ed" : "rsa", &p, msg_hdr, msg_body, &sigs);
		write_sample(dir, n++, &sigs, msg_hdr, msg_body);
		/* A random message with the same settings. */
		random_message(&seed, &hdr, &body, 0);
		buf_reset(&sigs);
		sign_into(ed ? ks->ed : ks->rsa, ed ? "ed" : "rsa", &p, hdr.data,
			  body.data ? body.data : "", &sigs);
		write_sample(dir, n++, &sigs, hdr.data, body.data ? body.data : "");
	}
	/* One message, two signatures: Ed25519 and RSA. */
	{
		struct dkim_sign_params p = default_params();

		p.timestamp = time(NULL);
		buf_reset(&sigs);
		sign_into(ks->ed, "ed", &p, msg_hdr, msg_body, &sigs);
		sign_into(ks->rsa, "rsa", &p, msg_hdr, msg_body, &sigs);
		write_sample(dir, n++, &sigs, msg_hdr, msg_body);
	}

	snprintf(cmd, sizeof(cmd), "/usr/bin/python3 tests/unit/dkim_verify.py %s", dir);
	rc = system(cmd);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		print_error("could not remove %s\n", dir);
	buf_free(&txt);
	buf_free(&sigs);
	buf_free(&hdr);
	buf_free(&body);
	if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77)
		skip();
	assert_true(WIFEXITED(rc));
	assert_int_equal(WEXITSTATUS(rc), 0);
}

/* ---- keys ----------------------------------------------------------------------- */

static char *pem_of(EVP_PKEY *pk, const EVP_CIPHER *enc, const char *pass, int traditional)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *p, *out;
	long n;

	if (traditional)
		assert_int_equal(PEM_write_bio_PrivateKey_traditional(bio, pk, NULL, NULL, 0, NULL,
								      NULL),
				 1);
	else
		assert_int_equal(PEM_write_bio_PrivateKey(bio, pk, enc, NULL, 0, NULL, (void *)pass),
				 1);
	n = BIO_get_mem_data(bio, &p);
	out = xstrndup(p, (size_t)n);
	BIO_free(bio);
	return out;
}

static void test_key_generate_rules(void **state)
{
	char err[ERRLEN] = "";
	struct dkim_key *k;

	k = dkim_key_generate(DKIM_ALG_RSA_SHA256, 1024, err, sizeof(err));
	assert_null(k);
	assert_non_null(strstr(err, "1024"));
	assert_null(dkim_key_generate(DKIM_ALG_RSA_SHA256, 2047, err, sizeof(err)));
	assert_null(dkim_key_generate(DKIM_ALG_RSA_SHA256, 8192, err, sizeof(err)));
	k = dkim_key_generate(DKIM_ALG_RSA_SHA256, 0, err, sizeof(err));
	assert_non_null(k);
	assert_int_equal(dkim_key_bits(k), 2048);
	dkim_key_free(k);
	k = dkim_key_generate(DKIM_ALG_RSA_SHA256, 3072, err, sizeof(err));
	assert_non_null(k);
	assert_int_equal(dkim_key_bits(k), 3072);
	dkim_key_free(k);
}

/* Export and re-import: the same key comes back (same public half). */
static void test_key_pem_round_trip(void **state)
{
	struct keys *ks = *state;
	struct dkim_key *ks_keys[2] = {ks->rsa, ks->ed};
	char err[ERRLEN];
	int i;

	for (i = 0; i < 2; i++) {
		struct buf pem, p1, p2, txt;
		struct dkim_key *back;

		buf_init(&pem, 1 << 16);
		buf_init(&p1, 4096);
		buf_init(&p2, 4096);
		buf_init(&txt, 4096);
		assert_int_equal(dkim_key_private_pem(ks_keys[i], &pem), 0);
		assert_non_null(strstr(pem.data, "-----BEGIN PRIVATE KEY-----"));
		back = dkim_key_from_pem(pem.data, pem.len, err, sizeof(err));
		assert_non_null(back);
		assert_int_equal(dkim_key_alg(back), dkim_key_alg(ks_keys[i]));
		assert_int_equal(dkim_key_bits(back), dkim_key_bits(ks_keys[i]));
		assert_int_equal(dkim_key_public_b64(ks_keys[i], &p1), 0);
		assert_int_equal(dkim_key_public_b64(back, &p2), 0);
		assert_string_equal(p1.data, p2.data);
		assert_int_equal(dkim_key_dns_record(back, &txt), 0);
		assert_true(strncmp(txt.data, i == 0 ? "v=DKIM1; k=rsa; p=" : "v=DKIM1; k=ed25519; p=",
				    i == 0 ? 18 : 22) == 0);
		if (i == 1)
			assert_int_equal(strlen(p1.data), 44); /* raw 32 bytes */
		dkim_key_free(back);
		buf_free(&pem);
		buf_free(&p1);
		buf_free(&p2);
		buf_free(&txt);
	}
}

static void test_key_import_refusals(void **state)
{
	struct keys *ks = *state;
	char err[ERRLEN], *pem;
	struct dkim_key *k;
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

	/* Traditional "BEGIN RSA PRIVATE KEY" is accepted. */
	{
		struct buf p;
		EVP_PKEY *pk = NULL;
		BIO *bio;

		buf_init(&p, 1 << 16);
		assert_int_equal(dkim_key_private_pem(ks->rsa, &p), 0);
		bio = BIO_new_mem_buf(p.data, (int)p.len);
		pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
		BIO_free(bio);
		pem = pem_of(pk, NULL, NULL, 1);
		assert_non_null(strstr(pem, "BEGIN RSA PRIVATE KEY"));
		k = dkim_key_from_pem(pem, strlen(pem), err, sizeof(err));
		assert_non_null(k);
		dkim_key_free(k);
		free(pem);
		/* An encrypted PEM is refused (no prompt on a terminal). */
		pem = pem_of(pk, EVP_aes_128_cbc(), "secret", 0);
		assert_null(dkim_key_from_pem(pem, strlen(pem), err, sizeof(err)));
		free(pem);
		EVP_PKEY_free(pk);
		buf_free(&p);
	}
	/* Other key types are refused with their name. */
	assert_non_null(ec);
	pem = pem_of(ec, NULL, NULL, 0);
	assert_null(dkim_key_from_pem(pem, strlen(pem), err, sizeof(err)));
	assert_non_null(strstr(err, "EC"));
	free(pem);
	EVP_PKEY_free(ec);
	/* Garbage and nothing. */
	assert_null(dkim_key_from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
				      58, err, sizeof(err)));
	assert_null(dkim_key_from_pem("", 0, err, sizeof(err)));
}

/* ---- seal ------------------------------------------------------------------------ */

static void test_seal(void **state)
{
	unsigned char key[32], other[32];
	const char plain[] = "-----BEGIN PRIVATE KEY-----\nnot really\n";
	struct buf s1, s2, out, aad;
	size_t i;

	random_bytes(key, sizeof(key));
	memcpy(other, key, sizeof(key));
	other[31] ^= 1;
	buf_init(&s1, 4096);
	buf_init(&s2, 4096);
	buf_init(&out, 4096);
	buf_init(&aad, 4096);
	assert_int_equal(dkim_key_aad("example.com", "sg1", &aad), 0);
	assert_int_equal(aad.len, sizeof("sendgate-dkim-v2\0example.com\0sg1") - 1);
	assert_memory_equal(aad.data, "sendgate-dkim-v2\0example.com\0sg1", aad.len);
	assert_int_equal(dkim_seal(key, aad.data, aad.len, plain, sizeof(plain), &s1), 0);
	/* v2: "SGK" 0x02 | nonce | ciphertext | tag */
	assert_int_equal(s1.len, 4 + 12 + sizeof(plain) + 16);
	assert_memory_equal(s1.data, "SGK\x02", 4);
	assert_null(memmem(s1.data, s1.len, "BEGIN", 5));
	assert_int_equal(dkim_unseal(key, aad.data, aad.len, s1.data, s1.len, &out), 2);
	assert_int_equal(out.len, sizeof(plain));
	assert_memory_equal(out.data, plain, sizeof(plain));
	/* A fresh nonce each time. */
	assert_int_equal(dkim_seal(key, aad.data, aad.len, plain, sizeof(plain), &s2), 0);
	assert_memory_not_equal(s1.data, s2.data, s1.len);
	/* Wrong key, each altered byte, truncation: all refused, nothing appended. */
	buf_reset(&out);
	assert_int_equal(dkim_unseal(other, aad.data, aad.len, s1.data, s1.len, &out), -1);
	for (i = 0; i < s1.len; i++) {
		s1.data[i] ^= 0x40;
		assert_int_equal(dkim_unseal(key, aad.data, aad.len, s1.data, s1.len, &out), -1);
		s1.data[i] ^= 0x40;
	}
	assert_int_equal(dkim_unseal(key, aad.data, aad.len, s1.data, s1.len - 1, &out), -1);
	assert_int_equal(dkim_unseal(key, aad.data, aad.len, s1.data, 31, &out), -1);
	assert_int_equal(dkim_unseal(key, aad.data, aad.len, s1.data, 0, &out), -1);
	assert_int_equal(out.len, 0);
	/* Empty plaintext works too. */
	buf_reset(&s2);
	assert_int_equal(dkim_seal(key, aad.data, aad.len, "", 0, &s2), 0);
	assert_int_equal(dkim_unseal(key, aad.data, aad.len, s2.data, s2.len, &out), 2);
	assert_int_equal(out.len, 0);
	/* No aad at all is a valid v2 seal, and opens only without aad. */
	buf_reset(&s2);
	assert_int_equal(dkim_seal(key, NULL, 0, plain, sizeof(plain), &s2), 0);
	assert_int_equal(dkim_unseal(key, NULL, 0, s2.data, s2.len, &out), 2);
	assert_int_equal(dkim_unseal(key, aad.data, aad.len, s2.data, s2.len, &out), -1);
	assert_int_equal(out.len, sizeof(plain));
	buf_free(&s1);
	buf_free(&s2);
	buf_free(&out);
	buf_free(&aad);
}

/* The v2 blob of domain/selector under key, in s (reset first). */
static void seal_for(const unsigned char key[32], const char *domain, const char *selector,
		     const char *plain, size_t n, struct buf *s)
{
	struct buf aad;

	buf_init(&aad, 4096);
	assert_int_equal(dkim_key_aad(domain, selector, &aad), 0);
	buf_reset(s);
	assert_int_equal(dkim_seal(key, aad.data, aad.len, plain, n, s), 0);
	buf_free(&aad);
}

/* 0 when the blob opens as domain/selector's key, else -1. */
static int unseal_for(const unsigned char key[32], const char *domain, const char *selector,
		      const struct buf *s, struct buf *out)
{
	struct buf aad;
	int v;

	buf_init(&aad, 4096);
	assert_int_equal(dkim_key_aad(domain, selector, &aad), 0);
	v = dkim_unseal(key, aad.data, aad.len, s->data, s->len, out);
	buf_free(&aad);
	return v;
}

static void test_seal_aad_binding(void **state)
{
	unsigned char key[32];
	const char plain[] = "private key of example.com sg1";
	struct buf s, out;

	random_bytes(key, sizeof(key));
	buf_init(&s, 4096);
	buf_init(&out, 4096);
	seal_for(key, "example.com", "sg1", plain, sizeof(plain), &s);
	assert_int_equal(unseal_for(key, "example.com", "sg1", &s, &out), 2);
	buf_reset(&out);
	/* Another selector, another domain, or the fields shifted: refused. */
	assert_int_equal(unseal_for(key, "example.com", "sg2", &s, &out), -1);
	assert_int_equal(unseal_for(key, "example.org", "sg1", &s, &out), -1);
	assert_int_equal(unseal_for(key, "example.co", "msg1", &s, &out), -1);
	assert_int_equal(unseal_for(key, "example.comsg1", "", &s, &out), -1);
	assert_int_equal(unseal_for(key, "", "", &s, &out), -1);
	assert_int_equal(dkim_unseal(key, NULL, 0, s.data, s.len, &out), -1);
	/* Stripping the header leaves a blob that does not open as v1 either. */
	{
		struct buf stripped;

		buf_init(&stripped, 4096);
		assert_int_equal(buf_append(&stripped, s.data + 4, s.len - 4), 0);
		assert_int_equal(unseal_for(key, "example.com", "sg1", &stripped, &out), -1);
		assert_int_equal(dkim_unseal(key, NULL, 0, stripped.data, stripped.len, &out), -1);
		buf_free(&stripped);
	}
	assert_int_equal(out.len, 0);
	buf_free(&s);
	buf_free(&out);
}

/* A v1 blob as sealed before keys were bound: nonce | ciphertext | tag, no aad. */
static void seal_v1(const unsigned char key[32], const unsigned char nonce[12], const char *plain,
		    size_t n, struct buf *s)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	unsigned char ct[256], tag[16];
	int len = 0, fin = 0;

	assert_non_null(ctx);
	assert_true(n <= sizeof(ct));
	assert_int_equal(EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce), 1);
	assert_int_equal(EVP_EncryptUpdate(ctx, ct, &len, (const unsigned char *)plain, (int)n), 1);
	assert_int_equal(EVP_EncryptFinal_ex(ctx, ct + len, &fin), 1);
	assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag), 1);
	EVP_CIPHER_CTX_free(ctx);
	buf_reset(s);
	assert_int_equal(buf_append(s, nonce, 12), 0);
	assert_int_equal(buf_append(s, ct, (size_t)(len + fin)), 0);
	assert_int_equal(buf_append(s, tag, 16), 0);
}

static void test_seal_v1_compat(void **state)
{
	unsigned char key[32], nonce[12];
	const char plain[] = "-----BEGIN PRIVATE KEY-----\nold\n";
	struct buf s, out;
	size_t i;

	random_bytes(key, sizeof(key));
	random_bytes(nonce, sizeof(nonce));
	nonce[0] = 0x00; /* not "SGK" */
	buf_init(&s, 4096);
	buf_init(&out, 4096);
	seal_v1(key, nonce, plain, sizeof(plain), &s);
	/* v1 opens whatever the aad (it has none): reported as version 1. */
	assert_int_equal(unseal_for(key, "example.com", "sg1", &s, &out), 1);
	assert_int_equal(out.len, sizeof(plain));
	assert_memory_equal(out.data, plain, sizeof(plain));
	buf_reset(&out);
	assert_int_equal(dkim_unseal(key, NULL, 0, s.data, s.len, &out), 1);
	buf_reset(&out);
	for (i = 0; i < s.len; i++) {
		s.data[i] ^= 0x01;
		assert_int_equal(unseal_for(key, "example.com", "sg1", &s, &out), -1);
		s.data[i] ^= 0x01;
	}
	assert_int_equal(out.len, 0);
	/* A v1 nonce that happens to start with the v2 header still opens as v1. */
	memcpy(nonce, "SGK\x02", 4);
	seal_v1(key, nonce, plain, sizeof(plain), &s);
	assert_int_equal(unseal_for(key, "example.com", "sg1", &s, &out), 1);
	assert_memory_equal(out.data, plain, sizeof(plain));
	buf_free(&s);
	buf_free(&out);
}

static void test_seal_version_byte(void **state)
{
	unsigned char key[32];
	const char plain[] = "private key";
	struct buf s, out;
	int b;

	random_bytes(key, sizeof(key));
	buf_init(&s, 4096);
	buf_init(&out, 4096);
	seal_for(key, "example.com", "sg1", plain, sizeof(plain), &s);
	/* Every other version byte (1 included: no downgrade) and header byte: refused. */
	for (b = 0; b < 256; b++) {
		if (b == 2)
			continue;
		s.data[3] = (char)b;
		assert_int_equal(unseal_for(key, "example.com", "sg1", &s, &out), -1);
	}
	s.data[3] = 2;
	s.data[0] = 'T';
	assert_int_equal(unseal_for(key, "example.com", "sg1", &s, &out), -1);
	s.data[0] = 'S';
	assert_int_equal(out.len, 0);
	assert_int_equal(unseal_for(key, "example.com", "sg1", &s, &out), 2);
	buf_free(&s);
	buf_free(&out);
}

static char tmpdir[64];

static void write_file(const char *name, const char *text, char *path, size_t pathlen)
{
	FILE *f;

	snprintf(path, pathlen, "%s/%s", tmpdir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void expect_load_error(const char *name, const char *text, const char *want)
{
	char path[128], err[ERRLEN] = "";
	unsigned char k[32];

	write_file(name, text, path, sizeof(path));
	assert_int_equal(dkim_master_key_load(path, k, err, sizeof(err)), -1);
	if (strstr(err, path) == NULL || strstr(err, want) == NULL)
		fail_msg("error \"%s\" should name %s and say \"%s\"", err, path, want);
	unlink(path);
}

static void test_master_key_load(void **state)
{
	const char hex[] = "000102030405060708090a0b0c0d0e0f101112131415161718191A1B1C1D1E1F";
	unsigned char k1[32], k2[32], want[32];
	char path[128], err[ERRLEN], b64key[48], line[64];
	int i;

	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_dkim.XXXXXX");
	assert_non_null(mkdtemp(tmpdir));
	for (i = 0; i < 32; i++)
		want[i] = (unsigned char)i;

	write_file("hex", hex, path, sizeof(path));
	assert_int_equal(dkim_master_key_load(path, k1, err, sizeof(err)), 0);
	assert_memory_equal(k1, want, 32);
	unlink(path);

	base64_encode(want, 32, b64key);
	assert_int_equal(strlen(b64key), 44);
	snprintf(line, sizeof(line), "%s\n", b64key);
	write_file("b64", line, path, sizeof(path));
	assert_int_equal(dkim_master_key_load(path, k2, err, sizeof(err)), 0);
	assert_memory_equal(k2, want, 32);
	unlink(path);

	/* CRLF-terminated (edited on Windows) is fine too. */
	write_file("crlf", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\r\n",
		   path, sizeof(path));
	assert_int_equal(dkim_master_key_load(path, k1, err, sizeof(err)), 0);
	unlink(path);

	snprintf(path, sizeof(path), "%s/missing", tmpdir);
	assert_int_equal(dkim_master_key_load(path, k1, err, sizeof(err)), -1);
	assert_non_null(strstr(err, path));
	assert_non_null(strstr(err, "No such file"));

	expect_load_error("short", "0011223344\n", "10 characters");
	expect_load_error("empty", "", "0 characters");
	expect_load_error("twolines", "0001020304050607080910111213141516171819202122232425262728293031\n\n",
			  "65 characters");
	expect_load_error("badhex",
			  "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1g\n",
			  "'g' at position 64");
	expect_load_error("badb64", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8*\n",
			  "'*' at position 44");
	expect_load_error("nopad", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8A\n",
			  "not valid base64");
	rmdir(tmpdir);
}

int main(void)
{
	const struct CMUnitTest pure[] = {
	    cmocka_unit_test(test_body_simple),
	    cmocka_unit_test(test_body_relaxed),
	    cmocka_unit_test(test_body_empty_known_hashes),
	    cmocka_unit_test(test_rfc6376_example),
	    cmocka_unit_test(test_header_canon),
	    cmocka_unit_test(test_body_chunking),
	    cmocka_unit_test(test_body_random_vs_reference),
	    cmocka_unit_test(test_body_large),
	    cmocka_unit_test(test_body_long_runs),
	    cmocka_unit_test(test_rfc8463_body_hash),
	    cmocka_unit_test(test_rfc8463_keys_match_dns),
	    cmocka_unit_test(test_rfc8463_reproduce_signatures),
	    cmocka_unit_test(test_sign_rfc8463_message),
	    cmocka_unit_test(test_key_generate_rules),
	    cmocka_unit_test(test_seal),
	    cmocka_unit_test(test_seal_aad_binding),
	    cmocka_unit_test(test_seal_v1_compat),
	    cmocka_unit_test(test_seal_version_byte),
	    cmocka_unit_test(test_master_key_load),
	};
	const struct CMUnitTest with_keys[] = {
	    cmocka_unit_test(test_sign_h_list),
	    cmocka_unit_test(test_sign_x_tag_and_errors),
	    cmocka_unit_test(test_sign_tampering),
	    cmocka_unit_test(test_sign_random_messages),
	    cmocka_unit_test(test_sign_deterministic),
	    cmocka_unit_test(test_sign_threads),
	    cmocka_unit_test(test_external_verifiers),
	    cmocka_unit_test(test_key_pem_round_trip),
	    cmocka_unit_test(test_key_import_refusals),
	};
	int failed = cmocka_run_group_tests_name("dkim", pure, NULL, NULL);

	failed += cmocka_run_group_tests_name("dkim signing", with_keys, keys_setup, keys_teardown);
	return failed ? 1 : 0;
}
