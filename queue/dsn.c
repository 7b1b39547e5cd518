/*
 * dsn: reads what comes back for mail we sent: bounces (multipart/report;
 * report-type=delivery-status, RFC 3464) and complaints (report-type=
 * feedback-report, RFC 5965), and the VERP return path that ties them to a
 * queue id and a recipient. Pure: bytes in, a struct out, no I/O.
 *
 * Anyone can send us a report, and the honest ones come from every kind of
 * MTA, cut, folded, wrapped and mislabeled. So nothing here trusts a
 * length, a nesting or a byte it is given: every line is searched for
 * within [p, end), recursion stops at DSN_MAX_DEPTH, each nesting level
 * scans its bytes once (linear time), and what is copied out is cleaned
 * for logs and SQL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "queue/queue.h"

/* Multiparts around the report: the top level, a wrapper, one more. */
#define DSN_MAX_DEPTH 2
/* Unfolded header values are cut to this (the longest field we keep is 512). */
#define HDR_VAL_MAX 2048
/* RFC 2046 says 70; some slack for senders that do not count. */
#define BOUNDARY_MAX 200
/* Only the header block of a returned message is read: decode no more. */
#define RETURNED_DECODE_MAX (256 * 1024)

enum { CTE_IDENTITY, CTE_BASE64, CTE_QP };

struct ctype {
	char type[64]; /* "type/subtype", lower-cased; "" when absent */
	char boundary[BOUNDARY_MAX];
	size_t boundary_len;  /* 0: none (or longer than BOUNDARY_MAX) */
	char report_type[64]; /* lower-cased, cleaned */
};

/* One MIME entity: its Content-Type, its encoding and where its body is. */
struct part {
	struct ctype ct;
	int cte;
	const char *body, *end;
};

/* A header block being read field by field. */
struct hdr_iter {
	const char *p, *end;
	int ws_blank; /* a line of only spaces and tabs ends the block too */
};

/* The parts of a multipart body, in order. */
struct mp_iter {
	const char *p, *end;
	const char *b;
	size_t bl;
	int state; /* 0: in the preamble, 1: in the parts, 2: done */
};

static int is_wsp(int c)
{
	return c == ' ' || c == '\t';
}

static int is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static int is_alnum(int c)
{
	return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static void set_err(char *err, size_t errlen, const char *fmt, const char *arg)
{
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, fmt, arg);
}

/* The length of the UTF-8 character at s (n > 0 bytes left), 0 if not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t k, i;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		k = 2;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		k = 3;
		/* No overlong forms, no UTF-16 surrogates. */
		if (s[0] == 0xe0)
			lo = 0xa0;
		if (s[0] == 0xed)
			hi = 0x9f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		k = 4;
		if (s[0] == 0xf0)
			lo = 0x90;
		if (s[0] == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	if (n < k || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < k; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return k;
}

/*
 * Copies [s, s+n) into out (outlen > 0), NUL-terminated and cut on a
 * character boundary, so that callers can log it on one line and store it
 * in a UTF-8 text column: tabs become spaces, other control bytes and
 * bytes that are not UTF-8 become '?'.
 */
static void copy_clean(char *out, size_t outlen, const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, o = 0, k;

	while (i < n) {
		k = utf8_len(u + i, n - i);
		if (o + (k > 1 ? k : 1) >= outlen)
			break;
		if (k > 1) {
			memcpy(out + o, u + i, k);
			o += k;
			i += k;
			continue;
		}
		if (u[i] == '\t')
			out[o++] = ' ';
		else if (k == 0 || u[i] < 0x20 || u[i] == 0x7f)
			out[o++] = '?';
		else
			out[o++] = (char)u[i];
		i++;
	}
	out[o] = '\0';
}

/* Trims spaces and tabs off both ends of [*p, *p + *n). */
static void trim(const char **p, size_t *n)
{
	while (*n > 0 && is_wsp((*p)[0])) {
		(*p)++;
		(*n)--;
	}
	while (*n > 0 && is_wsp((*p)[*n - 1]))
		(*n)--;
}

/* 1 when [p, p+n) is lit, ASCII case aside. */
static int span_ieq(const char *p, size_t n, const char *lit)
{
	return strlen(lit) == n && strncasecmp(p, lit, n) == 0;
}

/* The first word of [p, p+n) (up to a space, tab, '(' or ';'), trimmed. */
static size_t first_word(const char **p, size_t n)
{
	size_t i = 0;

	trim(p, &n);
	while (i < n && !is_wsp((*p)[i]) && (*p)[i] != '(' && (*p)[i] != ';')
		i++;
	return i;
}

/* The end of the line at p (before its LF or CRLF); *next where the next one starts. */
static const char *line_end(const char *p, const char *end, const char **next)
{
	const char *lf = memchr(p, '\n', (size_t)(end - p));
	const char *e = lf != NULL ? lf : end;

	*next = lf != NULL ? lf + 1 : end;
	if (e > p && e[-1] == '\r')
		e--;
	return e;
}

static int line_is_blank(const char *p, const char *e, int ws_blank)
{
	if (ws_blank)
		while (p < e && is_wsp(*p))
			p++;
	return p == e;
}

/*
 * The next field of the block at it->p: *name and *namelen point into the
 * input, the value is unfolded into val (each line break and the spaces
 * around it become one space, both ends trimmed; cut at vallen bytes, not
 * NUL-terminated) with *vlen its length. Returns 0 at the blank line that
 * ends the block (it->p is then past it) or at the end of the input.
 * Lines that are not fields (no name, a stray continuation, an mbox
 * "From " line) are skipped.
 */
static int hdr_next(struct hdr_iter *it, const char **name, size_t *namelen, char *val,
                    size_t vallen, size_t *vlen)
{
	while (it->p < it->end) {
		const char *next, *e = line_end(it->p, it->end, &next);
		const char *colon, *q;
		size_t i, o = 0, n;

		if (line_is_blank(it->p, e, it->ws_blank)) {
			it->p = next;
			return 0;
		}
		colon = memchr(it->p, ':', (size_t)(e - it->p));
		*name = it->p;
		*namelen = colon != NULL ? (size_t)(colon - it->p) : 0;
		while (*namelen > 0 && is_wsp((*name)[*namelen - 1]))
			(*namelen)--;
		for (i = 0; i < *namelen; i++)
			if ((unsigned char)(*name)[i] <= 0x20 || (unsigned char)(*name)[i] >= 0x7f)
				break;
		if (*namelen == 0 || i < *namelen) {
			it->p = next;
			continue;
		}
		q = colon + 1;
		for (;;) {
			while (q < e && is_wsp(*q))
				q++;
			if (q < e && o > 0 && o < vallen)
				val[o++] = ' ';
			n = (size_t)(e - q);
			if (n > vallen - o)
				n = vallen - o;
			memcpy(val + o, q, n);
			o += n;
			while (o > 0 && is_wsp(val[o - 1]))
				o--;
			if (next >= it->end || !is_wsp(*next))
				break;
			q = next;
			e = line_end(q, it->end, &next);
			if (line_is_blank(q, e, it->ws_blank)) {
				/* Not a continuation: the end of the block. */
				next = q;
				break;
			}
		}
		it->p = next;
		*vlen = o;
		return 1;
	}
	return 0;
}

/* Skips spaces, tabs and RFC 822 (nested (comments)); returns where they end. */
static const char *skip_cfws(const char *p, const char *e)
{
	size_t depth = 0;

	while (p < e) {
		if (*p == '(') {
			depth++;
		} else if (depth > 0 && *p == ')') {
			depth--;
		} else if (depth > 0 && *p == '\\' && p + 1 < e) {
			p++;
		} else if (depth == 0 && !is_wsp(*p)) {
			break;
		}
		p++;
	}
	return p;
}

/*
 * Reads a parameter value at p, a quoted-string or a token (lenient: up to
 * a space, ';' or '('), into out (at most outlen bytes); *olen gets its
 * full length. Returns where it ends.
 */
static const char *read_value(const char *p, const char *e, char *out, size_t outlen, size_t *olen)
{
	size_t o = 0;

	if (p < e && *p == '"') {
		for (p++; p < e && *p != '"'; p++) {
			if (*p == '\\' && p + 1 < e)
				p++;
			if (o < outlen)
				out[o] = *p;
			o++;
		}
		if (p < e)
			p++;
	} else {
		for (; p < e && !is_wsp(*p) && *p != ';' && *p != '('; p++) {
			if (o < outlen)
				out[o] = *p;
			o++;
		}
	}
	*olen = o;
	return p;
}

/* Reads a Content-Type value: the type and the parameters we use. */
static void ctype_parse(const char *v, size_t n, struct ctype *ct)
{
	const char *p = v, *e = v + n;
	char name[32], val[HDR_VAL_MAX];
	size_t nl, vl, i;

	/* Cleared field by field: a message of many empty parts stays cheap. */
	ct->type[0] = '\0';
	ct->boundary_len = 0;
	ct->report_type[0] = '\0';
	p = skip_cfws(p, e);
	for (i = 0; p < e && !is_wsp(*p) && *p != ';' && *p != '('; p++)
		if (i < sizeof(ct->type) - 1)
			ct->type[i++] = *p;
	ct->type[i] = '\0';
	str_lower(ct->type);
	while (p < e) {
		/* Whatever is left of a parameter we could not read goes. */
		p = skip_cfws(p, e);
		while (p < e && *p != ';')
			p++;
		if (p >= e)
			break;
		p = skip_cfws(p + 1, e);
		for (nl = 0; p < e && !is_wsp(*p) && *p != '=' && *p != ';' && *p != '('; p++)
			if (nl < sizeof(name) - 1)
				name[nl++] = *p;
		name[nl] = '\0';
		p = skip_cfws(p, e);
		if (p >= e || *p != '=')
			continue;
		p = read_value(skip_cfws(p + 1, e), e, val, sizeof(val), &vl);
		if (strcasecmp(name, "boundary") == 0 && ct->boundary_len == 0) {
			/* A boundary we cut would not match its lines: none. */
			if (vl > 0 && vl <= sizeof(ct->boundary)) {
				memcpy(ct->boundary, val, vl);
				ct->boundary_len = vl;
			}
		} else if (strcasecmp(name, "report-type") == 0 && ct->report_type[0] == '\0') {
			copy_clean(ct->report_type, sizeof(ct->report_type), val,
			           vl < sizeof(val) ? vl : sizeof(val));
			str_lower(ct->report_type);
		}
	}
}

/* Reads the header block of the entity at [p, end): its type, encoding and body. */
static void part_read(const char *p, const char *end, struct part *pt)
{
	struct hdr_iter it = {p, end, 0};
	const char *name, *w;
	char val[HDR_VAL_MAX];
	size_t nl, vl, wl;
	int have_ct = 0;

	pt->ct.type[0] = '\0';
	pt->ct.boundary_len = 0;
	pt->ct.report_type[0] = '\0';
	pt->cte = CTE_IDENTITY;
	while (hdr_next(&it, &name, &nl, val, sizeof(val), &vl)) {
		if (span_ieq(name, nl, "content-type") && !have_ct) {
			ctype_parse(val, vl, &pt->ct);
			have_ct = 1;
		} else if (span_ieq(name, nl, "content-transfer-encoding")) {
			w = val;
			wl = first_word(&w, vl);
			if (span_ieq(w, wl, "base64"))
				pt->cte = CTE_BASE64;
			else if (span_ieq(w, wl, "quoted-printable"))
				pt->cte = CTE_QP;
			else
				pt->cte = CTE_IDENTITY;
		}
	}
	pt->body = it.p;
	pt->end = end;
}

/* What the line [p, e) is to it: 1 a delimiter, 2 the closing one, 0 neither. */
static int mp_delim(const struct mp_iter *it, const char *p, const char *e)
{
	if ((size_t)(e - p) < it->bl + 2 || p[0] != '-' || p[1] != '-' ||
	    memcmp(p + 2, it->b, it->bl) != 0)
		return 0;
	p += 2 + it->bl;
	if (e - p >= 2 && p[0] == '-' && p[1] == '-')
		return 2;
	/*
	 * Only transport padding may follow: a longer line is another
	 * boundary (nested parts often extend the outer one).
	 */
	while (p < e && is_wsp(*p))
		p++;
	return p == e;
}

static void mp_init(struct mp_iter *it, const struct part *pt)
{
	it->p = pt->body;
	it->end = pt->end;
	it->b = pt->ct.boundary;
	it->bl = pt->ct.boundary_len;
	it->state = it->bl > 0 ? 0 : 2;
}

/*
 * The next part [*ps, *pe) of a multipart body: 1, or 0 when there is no
 * more. The preamble is skipped; a body without its closing delimiter (a
 * cut report) ends its last part at the end of the input.
 */
static int mp_next(struct mp_iter *it, const char **ps, const char **pe)
{
	const char *line, *next, *e;
	int d;

	while (it->state == 0) {
		if (it->p >= it->end) {
			it->state = 2;
			break;
		}
		e = line_end(it->p, it->end, &next);
		d = mp_delim(it, it->p, e);
		it->p = next;
		if (d != 0)
			it->state = d;
	}
	if (it->state != 1)
		return 0;
	*ps = it->p;
	while (it->p < it->end) {
		line = it->p;
		e = line_end(line, it->end, &next);
		it->p = next;
		d = mp_delim(it, line, e);
		if (d != 0) {
			*pe = line;
			if (d == 2)
				it->state = 2;
			return 1;
		}
	}
	*pe = it->end;
	it->state = 2;
	return 1;
}

/* Lenient base64: skips line breaks and junk, stops at '='. At most max bytes out. */
static size_t b64_decode(const char *p, const char *e, char *out, size_t max)
{
	unsigned v = 0;
	size_t o = 0;
	int bits = 0, c;

	for (; p < e && o < max && *p != '='; p++) {
		c = base64_value((unsigned char)*p);
		if (c < 0)
			continue;
		v = ((v << 6) | (unsigned)c) & 0xffffff;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (char)((v >> bits) & 0xff);
		}
	}
	return o;
}

/* Quoted-printable: "=XX", soft line breaks; a stray '=' is kept. At most max bytes out. */
static size_t qp_decode(const char *p, const char *e, char *out, size_t max)
{
	const char *q;
	size_t o = 0;

	while (p < e && o < max) {
		if (*p != '=') {
			out[o++] = *p++;
			continue;
		}
		if (e - p >= 3 && hex_value((unsigned char)p[1]) >= 0 &&
		    hex_value((unsigned char)p[2]) >= 0) {
			out[o++] = (char)(hex_value((unsigned char)p[1]) << 4 |
			                  hex_value((unsigned char)p[2]));
			p += 3;
			continue;
		}
		for (q = p + 1; q < e && is_wsp(*q); q++)
			;
		if (q < e && *q == '\r')
			q++;
		if (q == e || *q == '\n') {
			p = q < e ? q + 1 : q;
			continue;
		}
		out[o++] = *p++;
	}
	return o;
}

/*
 * The body of pt, decoded, at most max bytes: [*bp, *be). *owned gets the
 * buffer the caller frees (NULL when the body is read in place).
 */
static void part_body(const struct part *pt, size_t max, const char **bp, const char **be,
                      char **owned)
{
	size_t n = (size_t)(pt->end - pt->body), cap = n < max ? n : max;

	*owned = NULL;
	*bp = pt->body;
	*be = pt->body + cap;
	if (pt->cte == CTE_IDENTITY)
		return;
	/* Neither decoding grows its input. */
	*owned = xmalloc(cap + 1);
	if (pt->cte == CTE_BASE64)
		n = b64_decode(pt->body, pt->end, *owned, cap);
	else
		n = qp_decode(pt->body, pt->end, *owned, cap);
	*bp = *owned;
	*be = *owned + n;
}

/*
 * The first address of an address list or of a single mailbox into out:
 * "Name <a@b>, c@d" -> "a@b", "a@b (Name)" -> "a@b", "<>" -> "", a group
 * loses its name, and an empty list or group gives "".
 */
static void first_address(const char *v, size_t n, char *out, size_t outlen)
{
	char tmp[HDR_VAL_MAX];
	const char *p = v, *e = v + n, *a, *ae, *t;
	size_t tl = 0, depth = 0;
	int quoted = 0;

	for (; p < e; p++) {
		if (quoted) {
			if (*p == '\\' && p + 1 < e) {
				if (tl < sizeof(tmp))
					tmp[tl++] = *p;
				p++;
			} else if (*p == '"') {
				quoted = 0;
			}
		} else if (depth > 0) {
			if (*p == '\\' && p + 1 < e)
				p++;
			else if (*p == '(')
				depth++;
			else if (*p == ')')
				depth--;
			continue;
		} else if (*p == '(') {
			depth = 1;
			continue;
		} else if (*p == '"') {
			quoted = 1;
		} else if (*p == '<') {
			/* The angle address is the address; drop a source route. */
			a = p + 1;
			for (ae = a; ae < e && *ae != '>'; ae++)
				;
			if (a < ae && *a == '@' && (t = memchr(a, ':', (size_t)(ae - a))) != NULL)
				a = t + 1;
			n = (size_t)(ae - a);
			trim(&a, &n);
			copy_clean(out, outlen, a, n);
			return;
		} else if (*p == ',' || *p == ';') {
			break;
		} else if (*p == ':') {
			tl = 0; /* a group's name */
			continue;
		}
		if (tl < sizeof(tmp))
			tmp[tl++] = *p;
	}
	a = tmp;
	trim(&a, &tl);
	copy_clean(out, outlen, a, tl);
}

/*
 * A typed field "type; text" ("dns; mx.example", "smtp; 550 ..."): 1 with
 * the text trimmed in [*tp, *tp + *tn) when its type is want, else 0.
 * want NULL takes any type, and then a value without a type whole.
 */
static int typed_value(const char *v, size_t n, const char *want, const char **tp, size_t *tn)
{
	const char *semi = memchr(v, ';', n);
	const char *ty = v;
	size_t tyn;

	if (semi == NULL) {
		if (want != NULL)
			return 0;
		*tp = v;
		*tn = n;
		trim(tp, tn);
		return 1;
	}
	tyn = (size_t)(semi - v);
	trim(&ty, &tyn);
	if (want != NULL && !span_ieq(ty, tyn, want))
		return 0;
	*tp = semi + 1;
	*tn = n - (size_t)(semi + 1 - v);
	trim(tp, tn);
	return 1;
}

/*
 * A recipient field's address: "rfc822; <a@b>" -> "a@b"; another address
 * type gives "". A value without any type that looks like an address is
 * taken too (some MTAs leave it out).
 */
static void typed_address(const char *v, size_t n, char *out, size_t outlen)
{
	const char *t;
	size_t tn;

	if (typed_value(v, n, "rfc822", &t, &tn) ||
	    (memchr(v, ';', n) == NULL && memchr(v, '@', n) != NULL &&
	     typed_value(v, n, NULL, &t, &tn)))
		first_address(t, tn, out, outlen);
	else
		out[0] = '\0';
}

/* 1 when [s, s+n) is an RFC 3463 status: class 2, 4 or 5, then two dot-numbers of 1-3 digits. */
static int status_valid(const char *s, size_t n)
{
	size_t i = 2, d;
	int part;

	if (n < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return 0;
	for (part = 0; part < 2; part++) {
		for (d = 0; i < n && is_digit(s[i]) && d < 4; d++)
			i++;
		if (d < 1 || d > 3)
			return 0;
		if (part == 0) {
			if (i >= n || s[i] != '.')
				return 0;
			i++;
		}
	}
	return i == n;
}

/* The first enhanced status code in a reply text ("550-5.1.1 No such user") into out. */
static void status_from_text(const char *s, char *out, size_t outlen)
{
	size_t i = 0, j, k, n = strlen(s);

	while (i < n) {
		if (i > 0 && (is_alnum(s[i - 1]) || s[i - 1] == '.')) {
			i++;
			continue;
		}
		for (j = i; j < n && (is_digit(s[j]) || s[j] == '.'); j++)
			;
		/* A sentence may end right after it. */
		k = j > i && s[j - 1] == '.' ? j - 1 : j;
		if (k > i && status_valid(s + i, k - i) && !is_alnum(s[j]) && k - i < outlen) {
			memcpy(out, s + i, k - i);
			out[k - i] = '\0';
			return;
		}
		i = j > i ? j : i + 1;
	}
}

static enum dsn_action action_parse(const char *v, size_t n)
{
	static const struct {
		const char *word;
		enum dsn_action action;
	} actions[] = {
	    {"failed", DSN_ACTION_FAILED},       {"delayed", DSN_ACTION_DELAYED},
	    {"delivered", DSN_ACTION_DELIVERED}, {"relayed", DSN_ACTION_RELAYED},
	    {"expanded", DSN_ACTION_EXPANDED},
	};
	size_t i, wl = first_word(&v, n);

	for (i = 0; i < ARRAY_LEN(actions); i++)
		if (span_ieq(v, wl, actions[i].word))
			return actions[i].action;
	return DSN_ACTION_OTHER;
}

/* Empties r in constant time: its fields are read only up to their NUL. */
static void rcpt_clear(struct dsn_rcpt *r)
{
	r->final_recipient[0] = '\0';
	r->original_recipient[0] = '\0';
	r->action = DSN_ACTION_OTHER;
	r->status[0] = '\0';
	r->diagnostic[0] = '\0';
	r->remote_mta[0] = '\0';
}

/* Copies r's fields into dst, which is zeroed: what follows each NUL stays zero. */
static void rcpt_keep(struct dsn_rcpt *dst, const struct dsn_rcpt *r)
{
	memcpy(dst->final_recipient, r->final_recipient, strlen(r->final_recipient));
	memcpy(dst->original_recipient, r->original_recipient, strlen(r->original_recipient));
	dst->action = r->action;
	memcpy(dst->status, r->status, strlen(r->status));
	memcpy(dst->diagnostic, r->diagnostic, strlen(r->diagnostic));
	memcpy(dst->remote_mta, r->remote_mta, strlen(r->remote_mta));
}

/*
 * A message/delivery-status body: the per-message block, then one block
 * per recipient, separated by blank lines. Any block may carry the
 * per-message fields, and only blocks with a Final-Recipient are
 * recipients, so a report without its per-message block still reads.
 */
static void read_delivery_status(const char *p, const char *end, struct dsn_report *out)
{
	struct hdr_iter it = {p, end, 1};
	struct dsn_rcpt r;
	const char *name, *t;
	char val[HDR_VAL_MAX];
	size_t nl, vl, tn;
	int has_final;

	while (it.p < end && out->nrcpts < DSN_MAX_RCPTS) {
		/*
		 * A block costs constant time to start, however many empty
		 * ones there are: only kept blocks are copied out whole.
		 */
		rcpt_clear(&r);
		has_final = 0;
		while (hdr_next(&it, &name, &nl, val, sizeof(val), &vl)) {
			if (span_ieq(name, nl, "reporting-mta")) {
				if (out->reporting_mta[0] == '\0' &&
				    typed_value(val, vl, "dns", &t, &tn))
					copy_clean(out->reporting_mta, sizeof(out->reporting_mta),
					           t, tn);
			} else if (span_ieq(name, nl, "final-recipient")) {
				if (!has_final)
					typed_address(val, vl, r.final_recipient,
					              sizeof(r.final_recipient));
				has_final = 1;
			} else if (span_ieq(name, nl, "original-recipient")) {
				if (r.original_recipient[0] == '\0')
					typed_address(val, vl, r.original_recipient,
					              sizeof(r.original_recipient));
			} else if (span_ieq(name, nl, "action")) {
				r.action = action_parse(val, vl);
			} else if (span_ieq(name, nl, "status")) {
				t = val;
				tn = first_word(&t, vl);
				if (status_valid(t, tn))
					copy_clean(r.status, sizeof(r.status), t, tn);
			} else if (span_ieq(name, nl, "diagnostic-code")) {
				if (typed_value(val, vl, NULL, &t, &tn))
					copy_clean(r.diagnostic, sizeof(r.diagnostic), t, tn);
			} else if (span_ieq(name, nl, "remote-mta")) {
				if (typed_value(val, vl, "dns", &t, &tn))
					copy_clean(r.remote_mta, sizeof(r.remote_mta), t, tn);
			}
		}
		if (!has_final)
			continue;
		if (r.status[0] == '\0')
			status_from_text(r.diagnostic, r.status, sizeof(r.status));
		rcpt_keep(&out->rcpts[out->nrcpts++], &r);
	}
}

/* A message/feedback-report body: one block of fields (more are read alike). */
static void read_feedback(const char *p, const char *end, struct dsn_report *out)
{
	struct hdr_iter it = {p, end, 1};
	const char *name, *t;
	char val[HDR_VAL_MAX];
	size_t nl, vl, tn;

	while (it.p < end) {
		while (hdr_next(&it, &name, &nl, val, sizeof(val), &vl)) {
			if (span_ieq(name, nl, "feedback-type") && out->feedback_type[0] == '\0') {
				t = val;
				tn = first_word(&t, vl);
				copy_clean(out->feedback_type, sizeof(out->feedback_type), t, tn);
				str_lower(out->feedback_type);
			} else if (span_ieq(name, nl, "user-agent") && out->user_agent[0] == '\0') {
				copy_clean(out->user_agent, sizeof(out->user_agent), val, vl);
			} else if (span_ieq(name, nl, "original-rcpt-to") &&
			           out->arf_original_rcpt_to[0] == '\0') {
				first_address(val, vl, out->arf_original_rcpt_to,
				              sizeof(out->arf_original_rcpt_to));
			} else if (span_ieq(name, nl, "original-mail-from") &&
			           out->arf_original_mail_from[0] == '\0') {
				first_address(val, vl, out->arf_original_mail_from,
				              sizeof(out->arf_original_mail_from));
			} else if (span_ieq(name, nl, "reporting-mta") &&
			           out->reporting_mta[0] == '\0') {
				if (typed_value(val, vl, "dns", &t, &tn))
					copy_clean(out->reporting_mta, sizeof(out->reporting_mta),
					           t, tn);
			}
		}
	}
}

/*
 * The header block of the returned message. The first Return-Path is the
 * one the last MTA added, i.e. the envelope sender it was given: ours.
 */
static void read_returned(const char *p, const char *end, struct dsn_report *out)
{
	struct hdr_iter it = {p, end, 0};
	const char *name, *next, *e, *t;
	char val[HDR_VAL_MAX];
	size_t nl, vl, tn;
	int have_rp = 0, have_mid = 0, have_to = 0;

	/* Some MTAs put a blank line before the headers they return. */
	while (it.p < end) {
		e = line_end(it.p, end, &next);
		if (!line_is_blank(it.p, e, 1))
			break;
		it.p = next;
	}
	while (hdr_next(&it, &name, &nl, val, sizeof(val), &vl)) {
		if (span_ieq(name, nl, "return-path") && !have_rp) {
			first_address(val, vl, out->orig_return_path,
			              sizeof(out->orig_return_path));
			have_rp = 1;
		} else if (span_ieq(name, nl, "message-id") && !have_mid) {
			t = val;
			tn = vl;
			trim(&t, &tn);
			copy_clean(out->orig_message_id, sizeof(out->orig_message_id), t, tn);
			have_mid = 1;
		} else if (span_ieq(name, nl, "to") && !have_to) {
			first_address(val, vl, out->orig_to, sizeof(out->orig_to));
			have_to = 1;
		}
	}
}

/* The report kind a machine-readable part's type says, or DSN_UNKNOWN. */
static enum dsn_kind machine_kind(const char *type)
{
	if (strcmp(type, "message/delivery-status") == 0 ||
	    strcmp(type, "message/global-delivery-status") == 0)
		return DSN_DELIVERY;
	if (strcmp(type, "message/feedback-report") == 0)
		return DSN_FEEDBACK;
	return DSN_UNKNOWN;
}

static int is_returned_type(const char *type)
{
	return strcmp(type, "message/rfc822") == 0 || strcmp(type, "text/rfc822-headers") == 0 ||
	       strcmp(type, "message/rfc822-headers") == 0 || strcmp(type, "message/global") == 0 ||
	       strcmp(type, "message/global-headers") == 0;
}

/*
 * Reads the parts of a multipart/report: the first machine-readable part
 * of out->kind (any kind when still DSN_UNKNOWN: it then sets it) and the
 * first returned message.
 */
static void read_report_parts(const struct part *rep, struct dsn_report *out)
{
	struct mp_iter mp;
	struct part pt;
	const char *ps, *pe, *bp, *be;
	char *owned;
	enum dsn_kind k;
	int have_machine = 0, have_returned = 0;

	mp_init(&mp, rep);
	while ((!have_machine || !have_returned) && mp_next(&mp, &ps, &pe)) {
		part_read(ps, pe, &pt);
		k = machine_kind(pt.ct.type);
		if (!have_machine && k != DSN_UNKNOWN &&
		    (out->kind == DSN_UNKNOWN || out->kind == k)) {
			out->kind = k;
			part_body(&pt, (size_t)(pt.end - pt.body), &bp, &be, &owned);
			if (k == DSN_DELIVERY)
				read_delivery_status(bp, be, out);
			else
				read_feedback(bp, be, out);
			free(owned);
			have_machine = 1;
		} else if (!have_returned && is_returned_type(pt.ct.type)) {
			part_body(&pt, RETURNED_DECODE_MAX, &bp, &be, &owned);
			read_returned(bp, be, out);
			free(owned);
			have_returned = 1;
		}
	}
}

/* A multipart/report entity: 0 when read, -1 (err set) when not one we understand. */
static int read_report(const struct part *rep, struct dsn_report *out, char *err, size_t errlen)
{
	const char *rt = rep->ct.report_type;

	if (rep->ct.boundary_len == 0) {
		set_err(err, errlen, "%s", "multipart/report without a usable boundary");
		return -1;
	}
	if (strcmp(rt, "delivery-status") == 0 || strcmp(rt, "global-delivery-status") == 0) {
		out->kind = DSN_DELIVERY;
	} else if (strcmp(rt, "feedback-report") == 0) {
		out->kind = DSN_FEEDBACK;
	} else if (rt[0] != '\0') {
		set_err(err, errlen, "report-type %s not understood", rt);
		return -1;
	}
	/* Without a report-type, its first machine-readable part says. */
	read_report_parts(rep, out);
	if (out->kind == DSN_UNKNOWN) {
		set_err(err, errlen, "%s", "multipart/report without report-type or status part");
		return -1;
	}
	return 0;
}

/*
 * Looks for the first multipart/report in the entity [p, end) and in its
 * parts down to DSN_MAX_DEPTH: 0 when one was read, -1 (err set) when the
 * first one found is not one we understand, 1 when there is none.
 */
static int find_report(const char *p, const char *end, int depth, struct dsn_report *out, char *err,
                       size_t errlen)
{
	struct mp_iter mp;
	struct part pt;
	const char *ps, *pe;
	int r;

	part_read(p, end, &pt);
	if (strcmp(pt.ct.type, "multipart/report") == 0)
		return read_report(&pt, out, err, errlen);
	if (depth >= DSN_MAX_DEPTH || strncmp(pt.ct.type, "multipart/", 10) != 0)
		return 1;
	mp_init(&mp, &pt);
	while (mp_next(&mp, &ps, &pe))
		if ((r = find_report(ps, pe, depth + 1, out, err, errlen)) != 1)
			return r;
	return 1;
}

int dsn_parse(const char *msg, size_t len, struct dsn_report *out, char *err, size_t errlen)
{
	int r = 1;

	memset(out, 0, sizeof(*out));
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (msg != NULL && len > 0)
		r = find_report(msg, msg + len, 0, out, err, errlen);
	if (r == 0)
		return 0;
	if (r == 1)
		set_err(err, errlen, "%s", "no multipart/report part");
	memset(out, 0, sizeof(*out));
	return -1;
}

int dsn_status_is_hard(const char *status)
{
	return status != NULL && status_valid(status, strlen(status)) &&
	       strncmp(status, "5.1.", 4) == 0;
}

/* 1 for a character of a tag (base32 digits, either case); upper-cases *c. */
static int tag_char(int *c)
{
	if (*c >= 'a' && *c <= 'v')
		*c = *c - 'a' + 'A';
	return is_digit(*c) || (*c >= 'A' && *c <= 'V');
}

int verp_parse(const char *addr, char qid[QUEUE_ID_LEN + 1], long *index, int *several,
               char tag[VERP_TAG_LEN + 1], char *host, size_t hostlen)
{
	static const char prefix[] = "bounce+";
	char id[QUEUE_ID_LEN + 1], t[VERP_TAG_LEN + 1] = "";
	const char *p, *at, *h, *dot;
	long idx = -1;
	int many = 1, c;
	size_t i, n;

	qid[0] = '\0';
	if (index != NULL)
		*index = -1;
	if (several != NULL)
		*several = 0;
	if (tag != NULL)
		tag[0] = '\0';
	if (host != NULL && hostlen > 0)
		host[0] = '\0';
	if (addr == NULL || strncasecmp(addr, prefix, sizeof(prefix) - 1) != 0)
		return -1;
	p = addr + sizeof(prefix) - 1;
	if ((at = strchr(p, '@')) == NULL || at - p < QUEUE_ID_LEN)
		return -1;
	for (i = 0; i < QUEUE_ID_LEN; i++) {
		c = (unsigned char)p[i];
		if (c >= 'a' && c <= 'z')
			c = c - 'a' + 'A';
		if (!is_digit(c) && !(c >= 'A' && c <= 'Z'))
			return -1;
		id[i] = (char)c;
	}
	id[QUEUE_ID_LEN] = '\0';
	p += QUEUE_ID_LEN;
	if (p < at) {
		/* ".<index>.<tag>", ".m<first index>.<tag>", or the untagged
		 * ".<index>" of senders from before tags. */
		if (*p++ != '.')
			return -1;
		many = 0;
		if (p < at && (*p == 'm' || *p == 'M')) {
			many = 1;
			p++;
		}
		dot = memchr(p, '.', (size_t)(at - p));
		n = (size_t)((dot ? dot : at) - p);
		if (n < 1 || n > 5)
			return -1;
		for (idx = 0, i = 0; i < n; i++) {
			if (!is_digit(p[i]))
				return -1;
			idx = idx * 10 + (p[i] - '0');
		}
		if (dot != NULL) {
			p = dot + 1;
			if (at - p != VERP_TAG_LEN)
				return -1;
			for (i = 0; i < VERP_TAG_LEN; i++) {
				c = (unsigned char)p[i];
				if (!tag_char(&c))
					return -1;
				t[i] = (char)c;
			}
			t[VERP_TAG_LEN] = '\0';
		} else if (many) {
			return -1; /* "m" came with tags */
		}
	}
	if (at[1] == '\0')
		return -1;
	for (h = at + 1; *h != '\0'; h++)
		if ((unsigned char)*h <= 0x20 || *h == 0x7f || *h == '@')
			return -1;
	memcpy(qid, id, sizeof(id));
	if (index != NULL)
		*index = idx;
	if (several != NULL)
		*several = many;
	if (tag != NULL)
		memcpy(tag, t, sizeof(t));
	if (host != NULL && hostlen > 0) {
		copy_clean(host, hostlen, at + 1, strlen(at + 1));
		str_lower(host);
	}
	return 0;
}

void verp_key_derive(const unsigned char master[32], unsigned char key[32])
{
	static const char label[] = "sendgate VERP tag key v1";
	unsigned int len = 32;

	HMAC(EVP_sha256(), master, 32, (const unsigned char *)label, sizeof(label) - 1, key, &len);
}

void verp_tag(const unsigned char key[32], const char *qid, long index, int several,
              char out[VERP_TAG_LEN + 1])
{
	static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUV";
	unsigned char mac[32];
	unsigned int len = sizeof(mac);
	char msg[QUEUE_ID_LEN + 16];
	uint64_t v = 0;
	int i, n;

	n = snprintf(msg, sizeof(msg), "%s.%s%ld", qid, several ? "m" : "", index);
	if (n < 0 || (size_t)n >= sizeof(msg))
		n = (int)sizeof(msg) - 1;
	HMAC(EVP_sha256(), key, 32, (const unsigned char *)msg, (size_t)n, mac, &len);
	/* 40 bits: 8 base32 digits. */
	for (i = 0; i < 5; i++)
		v = v << 8 | mac[i];
	for (i = VERP_TAG_LEN - 1; i >= 0; i--) {
		out[i] = digits[v & 31];
		v >>= 5;
	}
	out[VERP_TAG_LEN] = '\0';
}

int verp_tag_ok(const unsigned char key[32], const char *qid, long index, int several,
                const char *tag)
{
	char want[VERP_TAG_LEN + 1];

	if (tag == NULL || strlen(tag) != VERP_TAG_LEN || index < 0)
		return 0;
	verp_tag(key, qid, index, several, want);
	return CRYPTO_memcmp(want, tag, VERP_TAG_LEN) == 0;
}
