/*
 * header: walking a message's header block and reading the mailboxes of
 * an address-list field (RFC 5322 3.4). The From check of the session
 * rests on the mailbox parser, so it never takes a display name for an
 * address: anything that is not clearly one of the RFC forms is refused
 * rather than guessed at.
 */
#include <string.h>
#include <strings.h>

#include "smtpd/smtpd.h"

#define COMMENT_DEPTH_MAX 32

static int is_ftext(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

/* Calls fn for the field [f, f+flen); <0 → -1, >0 → stop (1), 0 → go on (0). */
static int walk_emit(int (*fn)(void *, const char *, size_t, size_t), void *arg, const char *f,
                     size_t flen, size_t namelen)
{
	int r = fn(arg, f, flen, namelen);
	if (r < 0)
		return -1;
	return r > 0 ? 1 : 0;
}

/*
 * Calls fn(arg, field, flen, namelen) for each field of the header block
 * (field includes its folded continuation lines and its final CRLF;
 * namelen is the length of the name before the ':'). Stops at the blank
 * line. fn returns 0 to go on, >0 to stop early (header_walk returns 0),
 * <0 to fail (header_walk returns -1). -1 also when a line is neither a
 * field nor a continuation, or ends in a bare LF.
 */
int header_walk(const char *hdr, size_t len,
                int (*fn)(void *arg, const char *field, size_t flen, size_t namelen), void *arg)
{
	size_t pos = 0, fstart = 0, namelen = 0;
	int have = 0, r;

	while (pos < len) {
		const char *lf = memchr(hdr + pos, '\n', len - pos);
		size_t next = lf ? (size_t)(lf - hdr) + 1 : len;
		size_t k;

		if (lf && (lf == hdr + pos || lf[-1] != '\r'))
			return -1;
		if (lf && next - pos == 2)
			break; /* the blank line */
		if (hdr[pos] == ' ' || hdr[pos] == '\t') {
			if (!have)
				return -1;
			pos = next;
			continue;
		}
		if (have) {
			r = walk_emit(fn, arg, hdr + fstart, pos - fstart, namelen);
			if (r != 0)
				return r < 0 ? -1 : 0;
		}
		for (k = pos; k < next && is_ftext((unsigned char)hdr[k]); k++)
			;
		if (k == pos || k >= next || hdr[k] != ':')
			return -1;
		fstart = pos;
		namelen = k - pos;
		have = 1;
		pos = next;
	}
	if (have) {
		r = walk_emit(fn, arg, hdr + fstart, pos - fstart, namelen);
		if (r < 0)
			return -1;
	}
	return 0;
}

struct has_ctx {
	const char *name;
	size_t len;
	int found;
};

static int has_cb(void *arg, const char *field, size_t flen, size_t namelen)
{
	struct has_ctx *c = arg;

	if (namelen == c->len && strncasecmp(field, c->name, namelen) == 0) {
		c->found = 1;
		return 1;
	}
	return 0;
}

/* 1 when header block hdr has a field called name (case-insensitive), else 0. */
int header_has(const char *hdr, size_t len, const char *name)
{
	struct has_ctx c = {name, strlen(name), 0};

	header_walk(hdr, len, has_cb, &c);
	return c.found;
}

/* ---- the address-list parser ------------------------------------------- */

enum tok_type { T_END, T_ATOM, T_QSTR, T_DLIT, T_SPECIAL, T_ERR };

struct token {
	enum tok_type type;
	unsigned char ch;       /* T_SPECIAL: one of <>@,;:. */
	const unsigned char *p; /* the token's raw bytes (quotes/brackets included) */
	size_t n;
	int space_before; /* CFWS came right before it */
};

struct lexer {
	const unsigned char *s;
	size_t len, pos;
};

static int is_atext(unsigned char c)
{
	if (c >= 0x80)
		return 1; /* RFC 6532 UTF-8 */
	if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
		return 1;
	return c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static int is_fws(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Skips folding white space and (nested) comments. 1 skipped some, 0 none, -1 bad comment. */
static int skip_cfws(struct lexer *lx)
{
	size_t start = lx->pos;

	while (lx->pos < lx->len) {
		unsigned char c = lx->s[lx->pos];
		if (is_fws(c)) {
			lx->pos++;
			continue;
		}
		if (c != '(')
			break;
		{
			int depth = 0;
			do {
				if (lx->pos >= lx->len)
					return -1; /* unterminated comment */
				c = lx->s[lx->pos];
				if (c == '\\') {
					if (lx->pos + 1 >= lx->len || lx->s[lx->pos + 1] == 0)
						return -1;
					lx->pos += 2;
					continue;
				}
				if (c == 0)
					return -1;
				if (c == '(' && ++depth > COMMENT_DEPTH_MAX)
					return -1;
				if (c == ')')
					depth--;
				lx->pos++;
			} while (depth > 0);
		}
	}
	return lx->pos > start;
}

/* Reads the next token. */
static void next_token(struct lexer *lx, struct token *t)
{
	int ws = skip_cfws(lx);
	const unsigned char *s = lx->s;
	size_t i, start;
	unsigned char c;

	memset(t, 0, sizeof(*t));
	t->space_before = ws > 0;
	if (ws < 0) {
		t->type = T_ERR;
		return;
	}
	if (lx->pos >= lx->len) {
		t->type = T_END;
		return;
	}
	start = i = lx->pos;
	c = s[i];
	t->p = s + start;
	if (is_atext(c)) {
		while (i < lx->len && is_atext(s[i]))
			i++;
		t->type = T_ATOM;
	} else if (c == '"') {
		i++;
		for (;;) {
			if (i >= lx->len) {
				t->type = T_ERR;
				return;
			}
			c = s[i];
			if (c == '"')
				break;
			if (c == '\\') {
				if (i + 1 >= lx->len || s[i + 1] == 0 || s[i + 1] == '\r' ||
				    s[i + 1] == '\n') {
					t->type = T_ERR;
					return;
				}
				i += 2;
				continue;
			}
			if (c < 32 && !is_fws(c)) {
				t->type = T_ERR;
				return;
			}
			if (c == 127) {
				t->type = T_ERR;
				return;
			}
			i++;
		}
		i++;
		t->type = T_QSTR;
	} else if (c == '[') {
		i++;
		while (i < lx->len && s[i] != ']') {
			if (s[i] == '[' || s[i] == '\\' || s[i] < 32 || s[i] == 127 ||
			    s[i] >= 0x80) {
				t->type = T_ERR;
				return;
			}
			i++;
		}
		if (i >= lx->len) {
			t->type = T_ERR;
			return;
		}
		i++;
		t->type = T_DLIT;
	} else if (strchr("<>@,;:.", c) != NULL && c != 0) {
		i++;
		t->type = T_SPECIAL;
		t->ch = c;
	} else {
		t->type = T_ERR;
		return;
	}
	t->n = i - start;
	lx->pos = i;
}

static void peek_token(const struct lexer *lx, struct token *t)
{
	struct lexer copy = *lx;
	next_token(&copy, t);
}

static int is_special(const struct token *t, unsigned char ch)
{
	return t->type == T_SPECIAL && t->ch == ch;
}

struct mbox_out {
	char (*out)[SMTP_ADDR_MAX + 1];
	int max;
	int count;
};

/*
 * Stores local@domain (domain lower-cased, folding inside a quoted local
 * part dropped) as the next mailbox. -1 when it is too long to be an
 * address.
 */
static int store(struct mbox_out *o, const unsigned char *local, size_t llen,
                 const unsigned char *dom, size_t dlen)
{
	char tmp[SMTP_ADDR_MAX + 1];
	size_t n = 0, i;

	for (i = 0; i < llen; i++) {
		if (local[i] == '\r' || local[i] == '\n')
			continue;
		if (n >= SMTP_ADDR_MAX)
			return -1;
		tmp[n++] = (char)local[i];
	}
	if (n + 1 + dlen > SMTP_ADDR_MAX)
		return -1;
	tmp[n++] = '@';
	for (i = 0; i < dlen; i++) {
		unsigned char c = dom[i];
		tmp[n++] = (char)((c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c);
	}
	tmp[n] = '\0';
	if (o->count < o->max)
		memcpy(o->out[o->count], tmp, n + 1);
	o->count++;
	return 0;
}

/*
 * Parses "@" domain after a local part [lp, lp+llen) and stores the
 * mailbox. The domain is a dot-atom without inner CFWS, or a literal.
 */
static int parse_domain_and_store(struct lexer *lx, struct mbox_out *o, const unsigned char *lp,
                                  size_t llen)
{
	struct token t;
	const unsigned char *d;
	size_t dlen;

	next_token(lx, &t);
	if (!is_special(&t, '@'))
		return -1;
	next_token(lx, &t);
	if (t.type == T_DLIT) {
		d = t.p;
		dlen = t.n;
	} else if (t.type == T_ATOM) {
		d = t.p;
		dlen = t.n;
		for (;;) {
			struct token dot, atom;
			struct lexer save = *lx;
			next_token(lx, &dot);
			if (!is_special(&dot, '.') || dot.space_before) {
				*lx = save;
				break;
			}
			next_token(lx, &atom);
			if (atom.type != T_ATOM || atom.space_before)
				return -1;
			dlen = (size_t)(atom.p + atom.n - d);
		}
	} else {
		return -1; /* missing domain */
	}
	return store(o, lp, llen, d, dlen);
}

/* Parses an addr-spec (inside angle brackets) and stores it. */
static int parse_addr_spec(struct lexer *lx, struct mbox_out *o)
{
	struct token t;
	const unsigned char *lp;
	size_t llen;

	next_token(lx, &t);
	if (t.type == T_QSTR) {
		lp = t.p;
		llen = t.n;
	} else if (t.type == T_ATOM) {
		lp = t.p;
		llen = t.n;
		for (;;) {
			struct token dot, atom;
			struct lexer save = *lx;
			next_token(lx, &dot);
			if (!is_special(&dot, '.') || dot.space_before) {
				*lx = save;
				break;
			}
			next_token(lx, &atom);
			if (atom.type != T_ATOM || atom.space_before)
				return -1;
			llen = (size_t)(atom.p + atom.n - lp);
		}
	} else {
		return -1; /* includes obs-route "<@a,@b:x@y>" */
	}
	return parse_domain_and_store(lx, o, lp, llen);
}

/*
 * Parses one mailbox, or (when allow_group) a group, and stores what it
 * holds. -1 when it does not parse.
 */
static int parse_address(struct lexer *lx, struct mbox_out *o, int allow_group)
{
	struct token t;
	int nwords = 0, local_ok = 1, prev_dot = 0;
	const unsigned char *lp = NULL;
	size_t llen = 0;

	/* a run of words and dots: a display name, or the local part of an addr-spec */
	for (;;) {
		peek_token(lx, &t);
		if (t.type == T_ATOM || t.type == T_QSTR) {
			if (nwords == 0) {
				lp = t.p;
				if (t.type == T_QSTR)
					local_ok = 2; /* a quoted local part stands alone */
			} else if (t.space_before || !prev_dot || local_ok == 2 ||
			           t.type == T_QSTR) {
				local_ok = 0;
			}
			llen = (size_t)(t.p + t.n - lp);
			nwords++;
			prev_dot = 0;
		} else if (is_special(&t, '.')) {
			if (nwords == 0)
				return -1;
			if (t.space_before || prev_dot || local_ok == 2)
				local_ok = 0;
			prev_dot = 1;
		} else {
			break;
		}
		next_token(lx, &t);
	}
	if (t.type == T_ERR)
		return -1;
	if (is_special(&t, '<')) {
		next_token(lx, &t);
		if (parse_addr_spec(lx, o) == -1)
			return -1;
		next_token(lx, &t);
		return is_special(&t, '>') ? 0 : -1;
	}
	if (is_special(&t, '@')) {
		if (nwords == 0 || !local_ok || prev_dot)
			return -1;
		return parse_domain_and_store(lx, o, lp, llen);
	}
	if (is_special(&t, ':') && allow_group && nwords > 0) {
		/* group: display-name ":" [mailbox-list] ";" */
		next_token(lx, &t);
		for (;;) {
			peek_token(lx, &t);
			if (is_special(&t, ';')) {
				next_token(lx, &t);
				return 0;
			}
			if (is_special(&t, ',')) { /* obs-mbox-list empty member */
				next_token(lx, &t);
				continue;
			}
			if (parse_address(lx, o, 0) == -1)
				return -1;
			peek_token(lx, &t);
			if (is_special(&t, ',')) {
				next_token(lx, &t);
				continue;
			}
			if (!is_special(&t, ';'))
				return -1;
		}
	}
	return -1;
}

/*
 * Extracts the mailboxes of an address-list value into out (up to max,
 * "local@domain" with the domain lower-cased). Returns how many the value
 * holds (may exceed max), or -1 when it does not parse. Folding (CRLF
 * followed by white space) and a trailing CRLF are accepted.
 */
int header_mailboxes(const char *value, size_t len, char out[][SMTP_ADDR_MAX + 1], int max)
{
	struct lexer lx = {(const unsigned char *)value, len, 0};
	struct mbox_out o = {out, max < 0 ? 0 : max, 0};
	struct token t;
	int addresses = 0;

	if (memchr(value, '\0', len) != NULL)
		return -1;
	for (;;) {
		peek_token(&lx, &t);
		if (t.type == T_ERR)
			return -1;
		if (t.type == T_END)
			break;
		if (is_special(&t, ',')) { /* obs-addr-list empty member */
			next_token(&lx, &t);
			continue;
		}
		if (parse_address(&lx, &o, 1) == -1)
			return -1;
		addresses++;
		next_token(&lx, &t);
		if (t.type == T_END)
			break;
		if (!is_special(&t, ','))
			return -1;
	}
	return addresses > 0 ? o.count : -1;
}
