/*
 * sign: builds and signs the DKIM-Signature header field (RFC 6376 3.5,
 * 3.7, 5.4; RFC 8463 for Ed25519). The field is folded under 78 columns;
 * the signed data is the selected header fields (bottom-up for repeats)
 * followed by the DKIM-Signature field itself with an empty b= value and
 * without its final CRLF, all canonicalized with the header algorithm.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "dkim/dkim_private.h"

#define LINE_MAX_COLS 78
#define DOMAIN_MAX 253

const char *const dkim_default_headers[] = {
	"From",
	"To",
	"Cc",
	"Subject",
	"Date",
	"Message-ID",
	"Reply-To",
	"Sender",
	"In-Reply-To",
	"References",
	"MIME-Version",
	"Content-Type",
	"Content-Transfer-Encoding",
	"List-Unsubscribe",
	"List-Unsubscribe-Post",
	NULL,
};

/* One header field of the message: its bytes, and its name as written. */
struct field {
	const char *p;
	size_t len;
	const char *name;
	size_t name_len; /* 0 when the field has no colon: never selected */
};

/* A name in h=, as a pointer into some text. */
struct hname {
	const char *p;
	size_t len;
};

static int is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

static int is_fws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static char lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static int name_eq(const char *a, size_t alen, const char *b, size_t blen)
{
	size_t i;

	if (alen != blen)
		return 0;
	for (i = 0; i < alen; i++)
		if (lower(a[i]) != lower(b[i]))
			return 0;
	return 1;
}

/*
 * Splits the header block into fields, stopping at the empty line (or the
 * end). A line starting with WSP continues the previous field. Returns the
 * number of fields; *out is the caller's to free.
 */
static size_t split_fields(const char *hdr, size_t hlen, struct field **out)
{
	struct field *f = NULL;
	size_t n = 0, cap = 0, pos = 0;

	while (pos < hlen) {
		size_t start = pos, end;
		const char *colon;

		if (hdr[pos] == '\r' || hdr[pos] == '\n')
			break; /* the blank line that ends the header block */
		/* The field runs until a line that does not start with WSP. */
		for (;;) {
			const char *lf = memchr(hdr + pos, '\n', hlen - pos);

			pos = lf ? (size_t)(lf - hdr) + 1 : hlen;
			if (pos >= hlen || !is_wsp(hdr[pos]))
				break;
		}
		end = pos;
		if (n == cap) {
			cap = cap ? cap * 2 : 32;
			f = xrealloc(f, cap * sizeof(*f));
		}
		f[n].p = hdr + start;
		f[n].len = end - start;
		f[n].name = hdr + start;
		f[n].name_len = 0;
		colon = memchr(hdr + start, ':', end - start);
		if (colon != NULL && start < end && !is_wsp(hdr[start])) {
			size_t nl = (size_t)(colon - (hdr + start));

			while (nl > 0 && is_wsp(hdr[start + nl - 1]))
				nl--;
			f[n].name_len = nl;
		}
		n++;
	}
	*out = f;
	return n;
}

/* Hashes one canonicalized field; strip_crlf drops its final CRLF. 0 or -1. */
static int hash_field(EVP_MD_CTX *md, enum dkim_canon hc, const char *p, size_t len,
		      int strip_crlf, struct buf *tmp)
{
	buf_reset(tmp);
	if (dkim_canon_header(hc, p, len, tmp) == -1)
		return -1;
	if (strip_crlf)
		tmp->len -= 2; /* dkim_canon_header always ends in CRLF */
	return EVP_DigestUpdate(md, tmp->data, tmp->len) == 1 ? 0 : -1;
}

/*
 * Computes the SHA-256 of the data to sign: for each name of h=, the next
 * unused field of that name counting from the bottom (none: nothing), then
 * sig (a DKIM-Signature field with its b= value already removed) without
 * its final CRLF. 0 or -1.
 */
static int data_hash(enum dkim_canon hc, const struct field *f, size_t nf, const struct hname *h,
		     size_t nh, const char *sig, size_t siglen, unsigned char digest[32])
{
	struct cursor {
		struct hname name;
		size_t next; /* fields below this index are still unused */
	} *cur = xcalloc(nh ? nh : 1, sizeof(*cur));
	size_t ncur = 0, i, j, maxlen = siglen;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int dlen = 0;
	struct buf tmp;
	int rc = -1;

	for (i = 0; i < nf; i++)
		if (f[i].len > maxlen)
			maxlen = f[i].len;
	buf_init(&tmp, maxlen + 2);
	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
		abort();

	for (i = 0; i < nh; i++) {
		struct cursor *c = NULL;

		for (j = 0; j < ncur; j++)
			if (name_eq(cur[j].name.p, cur[j].name.len, h[i].p, h[i].len))
				c = &cur[j];
		if (c == NULL) {
			c = &cur[ncur++];
			c->name = h[i];
			c->next = nf;
		}
		while (c->next > 0) {
			const struct field *x = &f[--c->next];

			if (x->name_len > 0 && name_eq(x->name, x->name_len, h[i].p, h[i].len)) {
				if (hash_field(md, hc, x->p, x->len, 0, &tmp) == -1)
					goto fail;
				break;
			}
		}
	}
	if (hash_field(md, hc, sig, siglen, 1, &tmp) == -1)
		goto fail;
	if (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != 32)
		goto fail;
	rc = 0;
fail:
	EVP_MD_CTX_free(md);
	buf_free(&tmp);
	free(cur);
	return rc;
}

/*
 * Per-thread RSA signing contexts, for threads that sign all day (the
 * daemon's signers) and opt in with dkim_sign_thread_cache(1). A thread
 * takes an index in tl_used and keeps, on each key it signs with, a
 * context in that key's tctx[index] over its own copy of the key: OpenSSL's
 * RSA blinding state is then the thread's own instead of one shared,
 * locked one, and the context is set up once per key instead of per
 * signature (5-10 % more signatures per second on two threads). Kept on
 * the key, not in a per-thread table, so that any number of tenants' keys
 * stay warm: the first signature with a key costs a copy of it (about
 * twice a signature), every later one nothing. An index given back may be
 * taken by a later thread; the contexts it finds are still only its own.
 */
static unsigned tl_used; /* bit i: index i is held by a thread */
static __thread int tl_index = -1;

void dkim_sign_thread_cache(int on)
{
	if (on && tl_index < 0) {
		unsigned cur = __atomic_load_n(&tl_used, __ATOMIC_RELAXED);
		int i;
		for (i = 0; i < DKIM_CTX_THREADS; i++) {
			if (cur & (1u << i))
				continue;
			if (__atomic_compare_exchange_n(&tl_used, &cur, cur | (1u << i), 0,
							__ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
				tl_index = i;
				return;
			}
			i = -1; /* cur was reloaded: start over */
		}
	} else if (!on && tl_index >= 0) {
		__atomic_and_fetch(&tl_used, ~(1u << tl_index), __ATOMIC_ACQ_REL);
		tl_index = -1;
	}
}

/* A fresh RSA signing context (PKCS#1 v1.5, SHA-256) over pkey; NULL on error. */
static EVP_PKEY_CTX *rsa_sign_ctx(EVP_PKEY *pkey)
{
	EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);

	if (c == NULL || EVP_PKEY_sign_init(c) != 1 ||
	    EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) != 1 ||
	    EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) != 1) {
		EVP_PKEY_CTX_free(c);
		return NULL;
	}
	return c;
}

/* This thread's kept context on k (made on first use), or NULL. */
static EVP_PKEY_CTX *tl_ctx(const struct dkim_key *k)
{
	/* tctx[tl_index] is this thread's alone: writing it is no data race. */
	EVP_PKEY_CTX **slot = (EVP_PKEY_CTX **)&k->tctx[tl_index];
	EVP_PKEY *dup;

	if (*slot != NULL)
		return *slot;
	dup = EVP_PKEY_dup(k->pkey);
	if (dup == NULL)
		return NULL;
	*slot = rsa_sign_ctx(dup);
	EVP_PKEY_free(dup); /* the context holds its own reference */
	return *slot;
}

/*
 * Signs the 32-byte digest: RSASSA-PKCS1-v1_5 with SHA-256 for RSA, and
 * PureEdDSA over the digest itself for Ed25519 (RFC 8463 section 3).
 * Appends the base64 signature to out. 0, or -1 with err.
 */
static int sign_digest(const struct dkim_key *k, const unsigned char digest[32], struct buf *out,
		       char *err, size_t errlen)
{
	EVP_PKEY_CTX *pctx = NULL;
	EVP_MD_CTX *mctx = NULL;
	unsigned char *sig = NULL;
	char *text = NULL;
	size_t siglen = 0, tlen;
	int rc = -1;

	if (k->alg == DKIM_ALG_RSA_SHA256) {
		EVP_PKEY_CTX *c = tl_index >= 0 ? tl_ctx(k) : NULL;
		if (c == NULL)
			c = pctx = rsa_sign_ctx(k->pkey); /* freed below */
		if (c == NULL || EVP_PKEY_sign(c, NULL, &siglen, digest, 32) != 1)
			goto ssl_fail;
		sig = xmalloc(siglen);
		if (EVP_PKEY_sign(c, sig, &siglen, digest, 32) != 1)
			goto ssl_fail;
	} else {
		mctx = EVP_MD_CTX_new();
		if (mctx == NULL ||
		    EVP_DigestSignInit_ex(mctx, NULL, NULL, NULL, NULL, k->pkey, NULL) != 1 ||
		    EVP_DigestSign(mctx, NULL, &siglen, digest, 32) != 1)
			goto ssl_fail;
		sig = xmalloc(siglen);
		if (EVP_DigestSign(mctx, sig, &siglen, digest, 32) != 1)
			goto ssl_fail;
	}
	text = xmalloc(4 * ((siglen + 2) / 3) + 1);
	tlen = base64_encode(sig, siglen, text);
	if (buf_append(out, text, tlen) == -1) {
		snprintf(err, errlen, "DKIM signature does not fit the output buffer");
		goto fail;
	}
	rc = 0;
	goto fail;
ssl_fail:
	dkim_ssl_error(err, errlen, "signing failed");
fail:
	EVP_PKEY_CTX_free(pctx);
	EVP_MD_CTX_free(mctx);
	free(sig);
	free(text);
	return rc;
}

/* ---- the folded DKIM-Signature field ----------------------------------- */

/* Writes tokens into out, folding with CRLF SP before one would pass 78. */
struct folder {
	struct buf *out;
	size_t col;
	int full;
};

/* Appends tok, preceded by SP when space is set, or by a fold when too long. */
static void fold_put(struct folder *w, const char *tok, size_t len, int space)
{
	size_t need = len + (space ? 1 : 0);

	if (w->col + need > LINE_MAX_COLS && w->col > 1) {
		if (buf_append(w->out, "\r\n ", 3) == -1)
			w->full = 1;
		w->col = 1;
	} else if (space) {
		if (buf_append(w->out, " ", 1) == -1)
			w->full = 1;
		w->col++;
	}
	if (buf_append(w->out, tok, len) == -1)
		w->full = 1;
	w->col += len;
}

static void fold_printf(struct folder *w, int space, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void fold_printf(struct folder *w, int space, const char *fmt, ...)
{
	char tok[DOMAIN_MAX + 64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tok, sizeof(tok), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tok)) {
		w->full = 1;
		return;
	}
	fold_put(w, tok, (size_t)n, space);
}

/* 1 when s is a non-empty domain or selector DKIM can carry in d=/s=. */
static int is_dns_name(const char *s)
{
	size_t i, n = s ? strlen(s) : 0;

	if (n == 0 || n > DOMAIN_MAX)
		return 0;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_'))
			return 0;
	}
	return 1;
}

/* 1 when s is a valid header field name (RFC 5322 ftext). */
static int is_field_name(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > 200)
		return 0;
	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] < 33 || (unsigned char)s[i] > 126 || s[i] == ':')
			return 0;
	return 1;
}

/*
 * The h= list for the message: each wanted name (From added when missing,
 * duplicates dropped) as many times as it occurs, plus once when
 * oversigning; From at least once. Returns the count; *out caller frees.
 */
static int build_hlist(const struct dkim_sign_params *p, const struct field *f, size_t nf,
		       struct hname **out, char *err, size_t errlen)
{
	const char *const *names = p->headers ? p->headers : dkim_default_headers;
	const char *const from[] = {"From"};
	struct hname *h = NULL;
	size_t nh = 0, cap = 0, i, j, k;
	int has_from = 0;

	for (i = 0; names[i] != NULL; i++) {
		if (!is_field_name(names[i])) {
			snprintf(err, errlen, "cannot sign header name \"%.64s\"", names[i]);
			free(h);
			return -1;
		}
		if (name_eq(names[i], strlen(names[i]), "from", 4))
			has_from = 1;
	}
	for (k = has_from ? 1 : 0; k < 2; k++) {
		const char *const *list = k == 0 ? from : names;
		size_t nlist = k == 0 ? 1 : i;

		for (j = 0; j < nlist; j++) {
			const char *name = list[j];
			size_t len = strlen(name), count = 0, seen = 0, m, x;

			for (m = 0; m < nh; m++)
				if (name_eq(h[m].p, h[m].len, name, len))
					seen = 1;
			if (seen)
				continue;
			for (m = 0; m < nf; m++)
				if (name_eq(f[m].name, f[m].name_len, name, len))
					count++;
			if (p->oversign || (count == 0 && name_eq(name, len, "from", 4)))
				count++;
			for (x = 0; x < count; x++) {
				if (nh == cap) {
					cap = cap ? cap * 2 : 32;
					h = xrealloc(h, cap * sizeof(*h));
				}
				h[nh].p = name;
				h[nh].len = len;
				nh++;
			}
		}
	}
	*out = h;
	return (int)nh;
}

/* Writes "DKIM-Signature: v=1; ... b=" (folded, b= empty) into out. 0 or -1. */
static int build_unsigned(const struct dkim_key *k, const struct dkim_sign_params *p,
			  const struct hname *h, size_t nh, const unsigned char bh[32],
			  struct buf *out)
{
	static const char *const canon_name[] = {"simple", "relaxed"};
	struct folder w = {out, 0, 0};
	char bh64[48], name[256];
	size_t i, j;

	fold_put(&w, "DKIM-Signature:", 15, 0);
	fold_put(&w, "v=1;", 4, 1);
	fold_printf(&w, 1, "a=%s;",
		    k->alg == DKIM_ALG_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256");
	fold_printf(&w, 1, "c=%s/%s;", canon_name[p->header_canon == DKIM_CANON_RELAXED],
		    canon_name[p->body_canon == DKIM_CANON_RELAXED]);
	fold_printf(&w, 1, "d=%s;", p->domain);
	fold_printf(&w, 1, "s=%s;", p->selector);
	fold_printf(&w, 1, "t=%lld;", (long long)p->timestamp);
	if (p->expire != 0)
		fold_printf(&w, 1, "x=%lld;", (long long)p->expire);
	/* h= may fold after any colon: FWS is allowed around them. */
	for (i = 0; i < nh; i++) {
		size_t n = 0;

		if (i == 0) {
			name[n++] = 'h';
			name[n++] = '=';
		}
		for (j = 0; j < h[i].len && n < sizeof(name) - 2; j++)
			name[n++] = lower(h[i].p[j]);
		name[n++] = i + 1 < nh ? ':' : ';';
		fold_put(&w, name, n, i == 0);
	}
	base64_encode(bh, 32, bh64);
	fold_printf(&w, 1, "bh=%s;", bh64);
	/* Keep some of the b= value on the line that holds "b=". */
	if (w.col + 1 + 2 + 8 > LINE_MAX_COLS) {
		if (buf_append(out, "\r\n b=", 5) == -1)
			w.full = 1;
		w.col = 3;
	} else {
		fold_put(&w, "b=", 2, 1);
	}
	return w.full ? -1 : 0;
}

/* Appends the base64 value b64, folded to fit after column col, then CRLF. */
static int append_folded_b(struct buf *out, size_t col, const char *b64, size_t n)
{
	size_t room = col < LINE_MAX_COLS ? LINE_MAX_COLS - col : 0;

	while (n > 0) {
		size_t take;

		if (room == 0) {
			if (buf_append(out, "\r\n ", 3) == -1)
				return -1;
			room = LINE_MAX_COLS - 1;
		}
		take = n < room ? n : room;
		if (buf_append(out, b64, take) == -1)
			return -1;
		b64 += take;
		n -= take;
		room -= take;
	}
	return buf_append(out, "\r\n", 2);
}

/* Column at the end of the text in out, counting from its last LF. */
static size_t last_col(const struct buf *b)
{
	size_t i = b->len;

	while (i > 0 && b->data[i - 1] != '\n')
		i--;
	return b->len - i;
}

/*
 * Signs a message: appends the complete folded "DKIM-Signature: ..." field
 * ending in CRLF to out. hdr is the header block (CRLF lines, blank line
 * optional), bh the body hash. 0, or -1 with err (out left unchanged).
 * Thread-safe: the key is only read.
 */
int dkim_sign(const struct dkim_key *k, const struct dkim_sign_params *p, const char *hdr,
	      size_t hlen, const unsigned char bh[32], struct buf *out, char *err, size_t errlen)
{
	struct field *f = NULL;
	struct hname *h = NULL;
	struct buf field, b64;
	unsigned char digest[32];
	size_t nf, old_len = out->len;
	int nh, rc = -1;

	buf_init(&field, 64 * 1024 + hlen);
	buf_init(&b64, 2048);
	if (!is_dns_name(p->domain) || !is_dns_name(p->selector)) {
		snprintf(err, errlen, "invalid DKIM domain or selector (d=\"%.64s\" s=\"%.64s\")",
			 p->domain ? p->domain : "", p->selector ? p->selector : "");
		goto fail;
	}
	if (p->timestamp < 0 || (p->expire != 0 && p->expire <= p->timestamp)) {
		snprintf(err, errlen, "DKIM x=%lld must come after t=%lld", (long long)p->expire,
			 (long long)p->timestamp);
		goto fail;
	}
	nf = split_fields(hdr, hlen, &f);
	nh = build_hlist(p, f, nf, &h, err, errlen);
	if (nh < 0)
		goto fail;
	if (build_unsigned(k, p, h, (size_t)nh, bh, &field) == -1) {
		snprintf(err, errlen, "DKIM-Signature field too large");
		goto fail;
	}
	if (data_hash(p->header_canon, f, nf, h, (size_t)nh, field.data, field.len, digest) ==
	    -1) {
		snprintf(err, errlen, "cannot canonicalize the header fields");
		goto fail;
	}
	if (sign_digest(k, digest, &b64, err, errlen) == -1)
		goto fail;
	if (buf_append(out, field.data, field.len) == -1 ||
	    append_folded_b(out, last_col(&field), b64.data, b64.len) == -1) {
		snprintf(err, errlen, "DKIM-Signature does not fit the output buffer");
		out->len = old_len;
		if (out->data)
			out->data[old_len] = '\0';
		goto fail;
	}
	rc = 0;
fail:
	buf_free(&field);
	buf_free(&b64);
	free(f);
	free(h);
	return rc;
}

/* ---- signing a field the caller wrote ---------------------------------- */

/* One tag of a tag-list: name and value with surrounding FWS trimmed. */
struct tag {
	const char *name, *value;
	size_t name_len, value_len;
	size_t value_start; /* offset just after '=' */
};

/*
 * Finds tag want in the tag-list text v[0..n); 1 and fills t when found.
 */
static int find_tag(const char *v, size_t n, const char *want, struct tag *t)
{
	size_t pos = 0, wl = strlen(want);

	while (pos < n) {
		const char *semi = memchr(v + pos, ';', n - pos);
		size_t end = semi ? (size_t)(semi - v) : n, a = pos, b;
		const char *eq = memchr(v + pos, '=', end - pos);

		if (eq != NULL) {
			b = (size_t)(eq - v);
			while (a < b && is_fws(v[a]))
				a++;
			while (b > a && is_fws(v[b - 1]))
				b--;
			if (b - a == wl && memcmp(v + a, want, wl) == 0) {
				size_t vs = (size_t)(eq - v) + 1, ve = end;

				t->name = v + a;
				t->name_len = wl;
				t->value_start = vs;
				while (vs < ve && is_fws(v[vs]))
					vs++;
				while (ve > vs && is_fws(v[ve - 1]))
					ve--;
				t->value = v + vs;
				t->value_len = ve - vs;
				return 1;
			}
		}
		pos = end + 1;
	}
	return 0;
}

static int is_b64_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/' || c == '=';
}

/* Splits an h= value on colons, trimming FWS. Returns the count; *out caller frees. */
static size_t split_hlist(const char *v, size_t n, struct hname **out)
{
	struct hname *h = xcalloc(n / 2 + 1, sizeof(*h));
	size_t nh = 0, pos = 0;

	while (pos <= n) {
		const char *colon = memchr(v + pos, ':', n - pos);
		size_t end = colon ? (size_t)(colon - v) : n, a = pos, b = end;

		while (a < b && is_fws(v[a]))
			a++;
		while (b > a && is_fws(v[b - 1]))
			b--;
		if (b > a) {
			h[nh].p = v + a;
			h[nh].len = b - a;
			nh++;
		}
		pos = end + 1;
	}
	*out = h;
	return nh;
}

/*
 * Computes b= for a DKIM-Signature field the caller wrote (any tags, any
 * folding): the b= value in sig, if any, is removed as a verifier removes
 * it; h=, c= and a= are read from sig. Appends the unfolded base64 value to
 * out. 0, or -1 with err.
 */
int dkim_sign_field(const struct dkim_key *k, const char *hdr, size_t hlen, const char *sig,
		    size_t siglen, struct buf *out, char *err, size_t errlen)
{
	const char *colon = memchr(sig, ':', siglen);
	struct field *f = NULL;
	struct hname *h = NULL;
	struct buf stripped;
	struct tag t;
	enum dkim_canon hc = DKIM_CANON_SIMPLE;
	unsigned char digest[32];
	const char *vals;
	size_t nf, nh, vlen, cut, j;
	int rc = -1;

	buf_init(&stripped, siglen + 1);
	if (colon == NULL || !name_eq(sig, (size_t)(colon - sig), "DKIM-Signature", 14)) {
		snprintf(err, errlen, "not a DKIM-Signature field");
		goto fail;
	}
	vals = colon + 1;
	vlen = siglen - (size_t)(vals - sig);
	if (!find_tag(vals, vlen, "b", &t) || !find_tag(vals, vlen, "h", &t) ||
	    !find_tag(vals, vlen, "a", &t)) {
		snprintf(err, errlen, "DKIM-Signature lacks a=, h= or b=");
		goto fail;
	}
	if (!name_eq(t.value, t.value_len,
		     k->alg == DKIM_ALG_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256",
		     k->alg == DKIM_ALG_ED25519_SHA256 ? 14 : 10)) {
		snprintf(err, errlen, "a=%.*s does not match the key", (int)t.value_len, t.value);
		goto fail;
	}
	if (find_tag(vals, vlen, "c", &t) && t.value_len >= 7 &&
	    name_eq(t.value, 7, "relaxed", 7) && (t.value_len == 7 || t.value[7] == '/'))
		hc = DKIM_CANON_RELAXED;

	/* Remove the b= value: base64 characters and the FWS between them. */
	find_tag(vals, vlen, "b", &t);
	cut = j = (size_t)(vals - sig) + t.value_start;
	for (;;) {
		size_t x = j;

		while (x < siglen && is_fws(sig[x]))
			x++;
		if (x >= siglen || !is_b64_char(sig[x]))
			break;
		j = x + 1;
	}
	if (buf_append(&stripped, sig, cut) == -1 ||
	    buf_append(&stripped, sig + j, siglen - j) == -1)
		abort();

	find_tag(vals, vlen, "h", &t);
	nh = split_hlist(t.value, t.value_len, &h);
	nf = split_fields(hdr, hlen, &f);
	if (data_hash(hc, f, nf, h, nh, stripped.data, stripped.len, digest) == -1) {
		snprintf(err, errlen, "cannot canonicalize the header fields");
		goto fail;
	}
	rc = sign_digest(k, digest, out, err, errlen);
fail:
	buf_free(&stripped);
	free(f);
	free(h);
	return rc;
}
