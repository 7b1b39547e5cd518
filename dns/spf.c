/*
 * spf: the SPF record grammar of RFC 7208 (section 12), the lookup count of
 * section 4.6.4, and merging the platform's include into a customer's
 * record. Pure: text in, text or structures out.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/common.h"
#include "dns/dns.h"

#define SPF_MAX_TERMS 512

static int is_ws(char c)
{
	return c == ' ' || c == '\t';
}

int spf_is_record(const char *txt)
{
	if (txt == NULL || strncasecmp(txt, "v=spf1", 6) != 0)
		return 0;
	return txt[6] == '\0' || txt[6] == ' ';
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* toplabel = *alphanum ALPHA *alphanum / 1*alphanum "-" *(alphanum / "-") alphanum */
static int is_toplabel(const char *s, size_t n)
{
	int alpha = 0, dash = 0;

	if (n == 0 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (isalpha(c))
			alpha = 1;
		else if (c == '-')
			dash = 1;
		else if (!isdigit(c))
			return 0;
	}
	if (s[0] == '-' || s[n - 1] == '-')
		return 0;
	return alpha || dash;
}

/*
 * Checks a domain-spec (macro-string domain-end). Sets *macro when it holds
 * a macro-expand. Returns 1 when valid.
 */
static int domain_spec_ok(const char *s, size_t n, int *macro)
{
	size_t i, last_dot = (size_t)-1, end = n;

	*macro = 0;
	if (n == 0 || n > 253)
		return 0;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x21 || c > 0x7e)
			return 0;
		if (c != '%')
			continue;
		if (i + 1 >= n)
			return 0;
		c = (unsigned char)s[++i];
		if (c == '%' || c == '_' || c == '-')
			continue;
		if (c != '{' || i + 1 >= n)
			return 0;
		c = (unsigned char)tolower((unsigned char)s[++i]);
		if (strchr("slodiphcrtv", c) == NULL)
			return 0;
		i++;
		while (i < n && isdigit((unsigned char)s[i]))
			i++;
		if (i < n && (s[i] == 'r' || s[i] == 'R'))
			i++;
		while (i < n && strchr(".-+,/_=", s[i]) != NULL)
			i++;
		if (i >= n || s[i] != '}')
			return 0;
		*macro = 1;
	}
	if (*macro) {
		/* domain-end is a macro-expand or "." toplabel; the latter is checked loosely. */
		return 1;
	}
	if (s[end - 1] == '.')
		end--;
	if (end == 0)
		return 0;
	for (i = 0; i < end; i++) {
		if (s[i] == '.') {
			if (i == 0 || s[i - 1] == '.')
				return 0;
			last_dot = i;
		}
	}
	if (last_dot == (size_t)-1)
		return 0;
	return is_toplabel(s + last_dot + 1, end - last_dot - 1);
}

/* Parses "/N" digits (no leading zero) at s, up to max. Returns the number or -1. */
static int parse_cidr(const char *s, size_t n, int max)
{
	int v = 0;

	if (n == 0 || n > 3 || (s[0] == '0' && n > 1))
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v <= max ? v : -1;
}

/* dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ], after the first '/'. */
static int parse_dual_cidr(const char *s, size_t n, struct spf_term *t)
{
	const char *dd;
	size_t n4;

	/* s points at the first '/', n counts from there. */
	if (n >= 2 && s[1] == '/') {
		t->cidr6 = parse_cidr(s + 2, n - 2, 128);
		return t->cidr6 < 0 ? -1 : 0;
	}
	dd = memmem(s + 1, n - 1, "//", 2);
	n4 = dd ? (size_t)(dd - (s + 1)) : n - 1;
	t->cidr4 = parse_cidr(s + 1, n4, 32);
	if (t->cidr4 < 0)
		return -1;
	if (dd) {
		t->cidr6 = parse_cidr(dd + 2, n - 1 - n4 - 2, 128);
		if (t->cidr6 < 0)
			return -1;
	}
	return 0;
}

/* Parses one mechanism or modifier (s, n) into t. Returns 0 or -1. */
static int parse_term(const char *s, size_t n, struct spf_term *t, char *err, size_t errlen)
{
	size_t i, nl;
	const char *name, *rest;
	size_t rn;

	t->text = xstrndup(s, n);
	t->cidr4 = t->cidr6 = -1;
	t->qualifier = '+';

	/* A modifier: name "=" macro-string, name = ALPHA *(ALPHA / DIGIT / "-" / "_" / ".") */
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '=')
			break;
		if (!(isalpha(c) || (i > 0 && (isdigit(c) || c == '-' || c == '_' || c == '.'))))
			break;
	}
	if (i > 0 && i < n && s[i] == '=') {
		const char *v = s + i + 1;
		size_t vn = n - i - 1;
		int macro = 0;

		if (i == 8 && strncasecmp(s, "redirect", 8) == 0)
			t->kind = SPF_REDIRECT;
		else if (i == 3 && strncasecmp(s, "exp", 3) == 0)
			t->kind = SPF_EXP;
		else
			t->kind = SPF_OTHER_MOD;
		t->qualifier = 0;
		if (t->kind == SPF_OTHER_MOD) {
			t->arg = xstrndup(s, i);
			return 0;
		}
		if (!domain_spec_ok(v, vn, &macro)) {
			set_err(err, errlen, "\"%s\": invalid domain", t->text);
			return -1;
		}
		t->arg = xstrndup(v, vn);
		t->has_macro = macro;
		return 0;
	}

	/* A mechanism: [qualifier] name [":" domain-spec | ":" address] [cidr]. */
	if (n > 0 && strchr("+-~?", s[0]) != NULL) {
		t->qualifier = s[0];
		s++;
		n--;
	}
	name = s;
	for (nl = 0; nl < n && s[nl] != ':' && s[nl] != '/'; nl++)
		;
	rest = s + nl;
	rn = n - nl;

#define IS(word) (nl == sizeof(word) - 1 && strncasecmp(name, word, nl) == 0)
	if (IS("all")) {
		t->kind = SPF_ALL;
		if (rn != 0)
			goto bad;
		return 0;
	}
	if (IS("include") || IS("exists")) {
		int macro;
		t->kind = IS("include") ? SPF_INCLUDE : SPF_EXISTS;
		if (rn < 2 || rest[0] != ':' || !domain_spec_ok(rest + 1, rn - 1, &macro))
			goto bad;
		t->arg = xstrndup(rest + 1, rn - 1);
		t->has_macro = macro;
		return 0;
	}
	if (IS("a") || IS("mx") || IS("ptr")) {
		const char *slash;
		size_t dn;
		int macro = 0;

		t->kind = IS("a") ? SPF_A : IS("mx") ? SPF_MX : SPF_PTR;
		slash = memchr(rest, '/', rn);
		dn = slash ? (size_t)(slash - rest) : rn;
		if (dn > 0) {
			if (rest[0] != ':' || !domain_spec_ok(rest + 1, dn - 1, &macro))
				goto bad;
			t->arg = xstrndup(rest + 1, dn - 1);
			t->has_macro = macro;
		}
		if (slash) {
			if (t->kind == SPF_PTR || parse_dual_cidr(slash, rn - dn, t) < 0)
				goto bad;
		}
		return 0;
	}
	if (IS("ip4") || IS("ip6")) {
		const char *slash;
		size_t an;
		char addr[64];
		unsigned char bin[16];
		int v6 = IS("ip6");

		t->kind = v6 ? SPF_IP6 : SPF_IP4;
		if (rn < 2 || rest[0] != ':')
			goto bad;
		slash = memchr(rest, '/', rn);
		an = (slash ? (size_t)(slash - rest) : rn) - 1;
		if (an == 0 || an >= sizeof(addr))
			goto bad;
		memcpy(addr, rest + 1, an);
		addr[an] = '\0';
		if (inet_pton(v6 ? AF_INET6 : AF_INET, addr, bin) != 1)
			goto bad;
		t->arg = xstrdup(addr);
		if (slash) {
			int c = parse_cidr(slash + 1, rn - 1 - an - 1, v6 ? 128 : 32);
			if (c < 0)
				goto bad;
			if (v6)
				t->cidr6 = c;
			else
				t->cidr4 = c;
		}
		return 0;
	}
#undef IS
	set_err(err, errlen, "\"%s\": unknown mechanism", t->text);
	return -1;
bad:
	set_err(err, errlen, "\"%s\": invalid syntax", t->text);
	return -1;
}

void spf_record_free(struct spf_record *rec)
{
	if (rec == NULL)
		return;
	for (size_t i = 0; i < rec->n; i++) {
		free(rec->terms[i].text);
		free(rec->terms[i].arg);
	}
	free(rec->terms);
	rec->terms = NULL;
	rec->n = 0;
}

int spf_parse(const char *txt, struct spf_record *rec, char *err, size_t errlen)
{
	const char *p;
	size_t cap = 0;
	int seen_redirect = 0, seen_exp = 0;

	memset(rec, 0, sizeof(*rec));
	if (!spf_is_record(txt)) {
		set_err(err, errlen, "not an SPF record (must start with \"v=spf1\")");
		return -1;
	}
	p = txt + 6;
	for (;;) {
		const char *start;
		struct spf_term *t;

		while (is_ws(*p))
			p++;
		if (*p == '\0')
			break;
		start = p;
		while (*p != '\0' && !is_ws(*p))
			p++;
		if (rec->n >= SPF_MAX_TERMS) {
			set_err(err, errlen, "too many terms");
			return -1;
		}
		if (rec->n == cap) {
			cap = cap ? cap * 2 : 8;
			rec->terms = xrealloc(rec->terms, cap * sizeof(*rec->terms));
		}
		t = &rec->terms[rec->n++];
		memset(t, 0, sizeof(*t));
		if (parse_term(start, (size_t)(p - start), t, err, errlen) < 0)
			return -1;
		if ((t->kind == SPF_REDIRECT && seen_redirect++) ||
		    (t->kind == SPF_EXP && seen_exp++)) {
			set_err(err, errlen, "\"%s\": modifier given twice", t->text);
			return -1;
		}
	}
	return 0;
}

int spf_count_lookups(const struct spf_record *rec)
{
	int n = 0, has_all = 0;

	for (size_t i = 0; i < rec->n; i++)
		if (rec->terms[i].kind == SPF_ALL)
			has_all = 1;
	for (size_t i = 0; i < rec->n; i++) {
		switch (rec->terms[i].kind) {
		case SPF_INCLUDE:
		case SPF_A:
		case SPF_MX:
		case SPF_PTR:
		case SPF_EXISTS:
			n++;
			break;
		case SPF_REDIRECT:
			/* RFC 7208 6.1: with an "all" mechanism, redirect is never used. */
			if (!has_all)
				n++;
			break;
		default:
			break;
		}
	}
	return n;
}

/* Case-insensitive equality of two domains, ignoring one trailing dot on each. */
static int domain_eq(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b);

	if (na > 0 && a[na - 1] == '.')
		na--;
	if (nb > 0 && b[nb - 1] == '.')
		nb--;
	return na == nb && strncasecmp(a, b, na) == 0;
}

/* The include's domain without an "include:" prefix the config may carry. */
static const char *bare_include(const char *d)
{
	if (strncasecmp(d, "include:", 8) == 0)
		return d + 8;
	return d;
}

int spf_has_include(const struct spf_record *rec, const char *domain)
{
	domain = bare_include(domain);
	for (size_t i = 0; i < rec->n; i++) {
		const struct spf_term *t = &rec->terms[i];
		if (t->kind == SPF_INCLUDE && t->qualifier == '+' && domain_eq(t->arg, domain))
			return 1;
	}
	return 0;
}

char *spf_new_record(const char *include_domain)
{
	struct buf b;

	buf_init(&b, 4096);
	if (buf_printf(&b, "v=spf1 include:%s ~all", bare_include(include_domain)) < 0)
		abort();
	return b.data;
}

/* 1 when the token (s, n) is include:domain with '+' or no qualifier. */
static int token_is_include(const char *s, size_t n, const char *domain)
{
	char tmp[300];

	if (n > 0 && s[0] == '+') {
		s++;
		n--;
	}
	if (n < 9 || n >= sizeof(tmp) || strncasecmp(s, "include:", 8) != 0)
		return 0;
	memcpy(tmp, s + 8, n - 8);
	tmp[n - 8] = '\0';
	return domain_eq(tmp, domain);
}

/* 1 when the token is an "all" mechanism with any qualifier. */
static int token_is_all(const char *s, size_t n)
{
	if (n > 0 && strchr("+-~?", s[0]) != NULL) {
		s++;
		n--;
	}
	return n == 3 && strncasecmp(s, "all", 3) == 0;
}

int spf_merge(const char *existing, const char *include_domain, char **out)
{
	const char *p, *toks[SPF_MAX_TERMS + 1];
	size_t lens[SPF_MAX_TERMS + 1], nt = 0, at;
	struct buf b;

	*out = NULL;
	if (!spf_is_record(existing))
		return -1;
	include_domain = bare_include(include_domain);
	/* Already there, however long the record: nothing to change. */
	for (p = existing;;) {
		const char *start;

		while (is_ws(*p))
			p++;
		if (*p == '\0')
			break;
		start = p;
		while (*p != '\0' && !is_ws(*p))
			p++;
		if (start != existing &&
		    token_is_include(start, (size_t)(p - start), include_domain)) {
			*out = xstrdup(existing);
			return 0;
		}
	}
	for (p = existing;;) {
		const char *start;

		while (is_ws(*p))
			p++;
		if (*p == '\0')
			break;
		start = p;
		while (*p != '\0' && !is_ws(*p))
			p++;
		if (nt == ARRAY_LEN(toks) - 1)
			return -1; /* more terms than a valid record holds */
		toks[nt] = start;
		lens[nt] = (size_t)(p - start);
		nt++;
	}
	at = nt;
	for (size_t i = 1; i < nt; i++)
		if (token_is_all(toks[i], lens[i])) {
			at = i;
			break;
		}
	if (at == nt)
		for (size_t i = 1; i < nt; i++)
			if (lens[i] >= 9 && strncasecmp(toks[i], "redirect=", 9) == 0) {
				at = i;
				break;
			}
	buf_init(&b, 65536);
	for (size_t i = 0; i <= nt; i++) {
		if (i == at && buf_printf(&b, " include:%s", include_domain) < 0)
			goto fail;
		if (i == nt)
			break;
		if ((i > 0 && buf_puts(&b, " ") < 0) || buf_append(&b, toks[i], lens[i]) < 0)
			goto fail;
	}
	*out = b.data;
	return 1;
fail:
	buf_free(&b);
	return -1;
}

/* ---- walking the include tree ------------------------------------------ */

#define SPF_LOOKUP_LIMIT 10
#define SPF_MAX_DEPTH 32

struct walk {
	const char *our_include;
	spf_fetch_fn fetch;
	void *ctx;
	struct spf_eval *e;
};

static void note(struct spf_eval *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Keeps the first problem found: the one a receiver would stop at. */
static void note(struct spf_eval *e, const char *fmt, ...)
{
	va_list ap;

	if (e->detail[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(e->detail, sizeof(e->detail), fmt, ap);
	va_end(ap);
}

static void walk_record(struct walk *w, const char *domain, const struct spf_record *rec,
                        int depth);

/* Fetches the record of target (reached through "how") and walks it. */
static void follow(struct walk *w, const char *how, const struct spf_term *t, int depth)
{
	struct spf_eval *e = w->e;
	const char *txt = NULL;
	struct spf_record sub;
	char err[256];
	char target[256];
	size_t n;

	if (t->has_macro || e->lookups > SPF_LOOKUP_LIMIT || depth >= SPF_MAX_DEPTH)
		return;
	n = strlen(t->arg);
	if (n > 0 && t->arg[n - 1] == '.')
		n--;
	if (n == 0 || n >= sizeof(target))
		return;
	memcpy(target, t->arg, n);
	target[n] = '\0';
	str_lower(target);
	switch (w->fetch(w->ctx, target, SPF_WANT_SPF, &txt)) {
	case SPF_FETCH_PENDING:
		e->complete = 0;
		return;
	case SPF_FETCH_RECORD:
		if (spf_parse(txt, &sub, err, sizeof(err)) < 0) {
			e->invalid = 1;
			note(e, "the SPF record of %s (reached by %s:%s) has an error: %s", target,
			     how, t->arg, err);
		} else {
			walk_record(w, target, &sub, depth + 1);
		}
		spf_record_free(&sub);
		return;
	case SPF_FETCH_VOID:
		e->void_lookups++;
		e->invalid = 1;
		note(e, "%s:%s names a domain that does not exist or has no TXT record", how,
		     t->arg);
		return;
	case SPF_FETCH_NOSPF:
		e->invalid = 1;
		note(e, "%s:%s names a domain without an SPF record", how, t->arg);
		return;
	case SPF_FETCH_MULTIPLE:
		e->invalid = 1;
		note(e, "%s:%s names a domain with more than one SPF record", how, t->arg);
		return;
	case SPF_FETCH_ERROR:
		e->error = 1;
		note(e, "the SPF record of %s (reached by %s:%s) could not be looked up", target,
		     how, t->arg);
		return;
	}
}

/*
 * An a or mx mechanism whose name has no address (or no MX) is a void
 * lookup (RFC 7208 4.6.4); receivers give up after two. Failed lookups are
 * not counted: they are the receiver's temporary trouble, not the record's.
 */
static void count_void(struct walk *w, const struct spf_term *t, const char *domain)
{
	const char *unused = NULL;
	const char *d = t->arg ? t->arg : domain;
	char target[256];
	size_t n;

	if (t->has_macro || d == NULL)
		return;
	n = strlen(d);
	if (n > 0 && d[n - 1] == '.')
		n--;
	if (n == 0 || n >= sizeof(target))
		return;
	memcpy(target, d, n);
	target[n] = '\0';
	str_lower(target);
	switch (w->fetch(w->ctx, target, t->kind == SPF_A ? SPF_WANT_A : SPF_WANT_MX, &unused)) {
	case SPF_FETCH_PENDING:
		w->e->complete = 0;
		break;
	case SPF_FETCH_VOID:
		w->e->void_lookups++;
		break;
	default:
		break;
	}
}

static void walk_record(struct walk *w, const char *domain, const struct spf_record *rec, int depth)
{
	struct spf_eval *e = w->e;
	const struct spf_term *redirect = NULL;
	int has_all = 0;

	for (size_t i = 0; i < rec->n; i++)
		if (rec->terms[i].kind == SPF_ALL)
			has_all = 1;
	for (size_t i = 0; i < rec->n; i++) {
		const struct spf_term *t = &rec->terms[i];

		if (e->lookups > SPF_LOOKUP_LIMIT)
			return;
		switch (t->kind) {
		case SPF_A:
		case SPF_MX:
			e->lookups++;
			count_void(w, t, domain);
			break;
		case SPF_PTR:
		case SPF_EXISTS:
			e->lookups++;
			break;
		case SPF_INCLUDE:
			e->lookups++;
			if (w->our_include && t->qualifier == '+' &&
			    domain_eq(t->arg, w->our_include))
				e->has_include = 1;
			follow(w, "include", t, depth);
			break;
		case SPF_REDIRECT:
			if (!has_all)
				redirect = t;
			break;
		default:
			break;
		}
	}
	/* redirect= applies after every mechanism failed to match (RFC 7208 6.1). */
	if (redirect && e->lookups <= SPF_LOOKUP_LIMIT) {
		e->lookups++;
		follow(w, "redirect", redirect, depth);
	}
}

void spf_evaluate(const char *domain, const char *record, const char *our_include,
                  spf_fetch_fn fetch, void *ctx, struct spf_eval *out)
{
	struct spf_record rec;
	struct walk w;
	char err[256];

	memset(out, 0, sizeof(*out));
	out->complete = 1;
	w.our_include = our_include ? bare_include(our_include) : NULL;
	w.fetch = fetch;
	w.ctx = ctx;
	w.e = out;
	if (spf_parse(record, &rec, err, sizeof(err)) < 0) {
		out->invalid = 1;
		note(out, "the SPF record of %s has an error: %s", domain, err);
	} else {
		walk_record(&w, domain, &rec, 0);
	}
	spf_record_free(&rec);
	if (out->lookups > SPF_LOOKUP_LIMIT)
		note(out, "more than %d DNS lookups (include, a, mx, ptr, exists, redirect)",
		     SPF_LOOKUP_LIMIT);
	else if (out->void_lookups > 2)
		note(out, "%d void lookups (more than 2)", out->void_lookups);
}
