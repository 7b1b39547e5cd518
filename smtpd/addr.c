/*
 * addr: the arguments of MAIL FROM and RCPT TO. A strict RFC 5321 path
 * parser (RFC 6531 for non-ASCII) that refuses source routes and the
 * '%' / '!' relay forms, and the ESMTP parameters this server supports.
 * Every refusal comes with a reply that names what was wrong.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "smtpd/smtpd.h"

#define LOCAL_MAX 64
#define DOMAIN_MAX 255
#define LABEL_MAX 63
#define ECHO_MAX 60

/* Copies s into out as printable ASCII ('?' for anything else), cut at ECHO_MAX. */
static void echo_sanitize(char *out, size_t outlen, const unsigned char *s, size_t len)
{
	size_t i, o = 0, lim = len > ECHO_MAX ? ECHO_MAX : len;

	for (i = 0; i < lim && o + 1 < outlen; i++)
		out[o++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
	if (lim < len) {
		for (i = 0; i < 3 && o + 1 < outlen; i++)
			out[o++] = '.';
	}
	out[o] = '\0';
}

static int set_err(struct smtp_error *err, int code, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int set_err(struct smtp_error *err, int code, const char *enh, const char *fmt, ...)
{
	va_list ap;

	err->code = code;
	err->enh = enh;
	va_start(ap, fmt);
	vsnprintf(err->text, 151, fmt, ap);
	va_end(ap);
	return -1;
}

static int is_alpha(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* RFC 5322 atext (RFC 5321 Atom characters). */
static int is_atext(unsigned char c)
{
	return is_alpha(c) || is_digit(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/*
 * Length of the well-formed UTF-8 sequence (RFC 3629: no overlongs, no
 * surrogates, at most U+10FFFF) that starts with a non-ASCII byte at s,
 * or 0.
 */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
	unsigned char c = s[0];
	size_t n, i;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if (len < n)
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/*
 * Checks a domain: LDH labels (plus well-formed UTF-8 when allow_utf8),
 * no leading or trailing hyphen, labels of 1..63 octets, at most 255 in
 * all. Sets *utf8 when non-ASCII was seen. 1 when valid.
 */
static int domain_check(const unsigned char *s, size_t len, int allow_utf8, int *utf8)
{
	size_t i = 0, label = 0, k;

	if (len == 0 || len > DOMAIN_MAX)
		return 0;
	while (i < len) {
		unsigned char c = s[i];
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return 0;
			label = 0;
			i++;
			continue;
		}
		if (c == '-') {
			if (label == 0)
				return 0;
			k = 1;
		} else if (is_alpha(c) || is_digit(c)) {
			k = 1;
		} else if (c >= 0x80) {
			if (!allow_utf8 || (k = utf8_seq(s + i, len - i)) == 0)
				return 0;
			if (utf8)
				*utf8 = 1;
		} else
			return 0;
		label += k;
		if (label > LABEL_MAX)
			return 0;
		i += k;
	}
	return label > 0 && s[len - 1] != '-';
}

/* 1 when s is a syntactically valid ASCII domain name (LDH labels, ≤ 255). */
int smtp_domain_valid(const char *s, size_t len)
{
	return domain_check((const unsigned char *)s, len, 0, NULL);
}

/* 1 when [s, s+len) is a valid RFC 5321 address literal including brackets. */
static int address_literal_valid(const unsigned char *s, size_t len)
{
	char tmp[64];
	unsigned char bin[16];
	size_t inner;

	if (len < 2 || s[0] != '[' || s[len - 1] != ']')
		return 0;
	inner = len - 2;
	if (inner == 0 || inner >= sizeof(tmp))
		return 0;
	if (inner > 5 && strncasecmp((const char *)s + 1, "IPv6:", 5) == 0) {
		memcpy(tmp, s + 6, inner - 5);
		tmp[inner - 5] = '\0';
		return inet_pton(AF_INET6, tmp, bin) == 1;
	}
	memcpy(tmp, s + 1, inner);
	tmp[inner] = '\0';
	return inet_pton(AF_INET, tmp, bin) == 1;
}

struct path_ctx {
	const unsigned char *s;
	size_t len;
	int is_mail;
	const char *enh; /* 5.1.7 for the sender, 5.1.3 for a recipient */
};

/*
 * Parses "<...>" at the start of c->s into path. *end gets the offset
 * just past '>'. 0 or -1 + err.
 */
static int parse_path(const struct path_ctx *c, size_t max_path, struct smtp_path *path,
                      size_t *end, struct smtp_error *err)
{
	const unsigned char *s = c->s;
	size_t len = c->len, i, lstart, lend, dstart, dend, plen, k;
	const unsigned char *gt;
	char echo[80];
	int utf8 = 0, relay = 0;

	memset(path, 0, sizeof(*path));
	path->domain = path->addr;
	/* what we name in errors: up to the first '>' (or all of it) */
	gt = memchr(s, '>', len);
	echo_sanitize(echo, sizeof(echo), s, gt ? (size_t)(gt - s) + 1 : len);

	if (len == 0 || s[0] != '<')
		return set_err(err, 501, c->enh,
		               "Angle brackets are required around the address: %s:<address>",
		               c->is_mail ? "MAIL FROM" : "RCPT TO");
	i = 1;
	if (i < len && s[i] == '>') {
		if (!c->is_mail)
			return set_err(err, 501, c->enh,
			               "The null path <> is not a valid recipient");
		path->is_null = 1;
		*end = 2;
		return 0;
	}
	if (i < len && s[i] == '@')
		return set_err(err, 553, c->enh, "Source routes are not accepted in %s", echo);

	/* Local-part = Dot-string / Quoted-string */
	lstart = i;
	if (i < len && s[i] == '"') {
		i++;
		for (;;) {
			if (i >= len)
				return set_err(err, 501, c->enh,
				               "Unterminated quoted local part in %s", echo);
			if (s[i] == '"')
				break;
			if (s[i] == '\\') {
				if (i + 1 >= len || s[i + 1] < 32 || s[i + 1] > 126)
					return set_err(err, 501, c->enh,
					               "Invalid backslash escape in %s", echo);
				if (s[i + 1] == '%' || s[i + 1] == '!')
					relay = 1;
				i += 2;
				continue;
			}
			if (s[i] >= 0x80) {
				if ((k = utf8_seq(s + i, len - i)) == 0)
					return set_err(err, 501, c->enh,
					               "Malformed UTF-8 in the address %s", echo);
				utf8 = 1;
				i += k;
				continue;
			}
			if (s[i] < 32 || s[i] > 126)
				return set_err(err, 501, c->enh,
				               "Control character in the address %s", echo);
			if (s[i] == '%' || s[i] == '!')
				relay = 1;
			i++;
		}
		i++; /* closing quote */
	} else {
		int need_atom = 1;
		while (i < len) {
			unsigned char ch = s[i];
			if (ch == '.') {
				if (need_atom)
					return set_err(err, 501, c->enh,
					               "Misplaced dot in the local part of %s",
					               echo);
				need_atom = 1;
				i++;
				continue;
			}
			if (ch >= 0x80) {
				if ((k = utf8_seq(s + i, len - i)) == 0)
					return set_err(err, 501, c->enh,
					               "Malformed UTF-8 in the address %s", echo);
				utf8 = 1;
				i += k;
				need_atom = 0;
				continue;
			}
			if (!is_atext(ch))
				break;
			if (ch == '%' || ch == '!')
				relay = 1;
			need_atom = 0;
			i++;
		}
		if (i == lstart)
			return set_err(err, 501, c->enh, "Empty local part in %s", echo);
		if (need_atom)
			return set_err(err, 501, c->enh, "Misplaced dot in the local part of %s",
			               echo);
	}
	lend = i;
	if (i >= len)
		return set_err(err, 501, c->enh, "Missing closing angle bracket in %s", echo);
	if (s[i] == '>')
		return set_err(err, 553, c->enh, "A domain is required in %s", echo);
	if (s[i] == ':' || s[i] == ',')
		return set_err(err, 553, c->enh, "Source routes are not accepted in %s", echo);
	if (s[i] != '@')
		return set_err(err, 501, c->enh, "Invalid character in the local part of %s", echo);
	if (relay)
		return set_err(err, 553, c->enh,
		               "Relay forms with '%%' or '!' are not accepted in %s", echo);
	if (lend - lstart > LOCAL_MAX)
		return set_err(err, 501, c->enh, "The local part of %s is longer than %d octets",
		               echo, LOCAL_MAX);

	/* Domain or address literal */
	i++;
	dstart = i;
	if (i < len && s[i] == '[') {
		while (i < len && s[i] != ']' && s[i] != '>')
			i++;
		if (i >= len || s[i] != ']')
			return set_err(err, 501, c->enh, "Malformed address literal in %s", echo);
		i++;
		dend = i;
		if (!address_literal_valid(s + dstart, dend - dstart))
			return set_err(err, 501, c->enh, "Invalid address literal in %s", echo);
	} else {
		while (i < len && s[i] != '>' && s[i] != ' ')
			i++;
		dend = i;
		if (dend == dstart)
			return set_err(err, 501, c->enh, "Missing domain in %s", echo);
		if (!domain_check(s + dstart, dend - dstart, 1, &utf8))
			return set_err(err, 501, c->enh, "Invalid domain name in %s", echo);
	}
	if (i >= len || s[i] != '>')
		return set_err(err, 501, c->enh, "Missing closing angle bracket in %s", echo);
	i++;
	plen = i; /* "<" mailbox ">" */
	if (plen > max_path || plen - 2 > SMTP_ADDR_MAX)
		return set_err(err, 501, c->enh, "The address %s is longer than %zu octets", echo,
		               max_path);
	memcpy(path->addr, s + lstart, lend - lstart);
	path->addr[lend - lstart] = '@';
	memcpy(path->addr + (lend - lstart) + 1, s + dstart, dend - dstart);
	path->addr[plen - 2] = '\0';
	path->local_len = lend - lstart;
	path->domain = path->addr + path->local_len + 1;
	for (k = path->local_len + 1; k < plen - 2 && s[dstart] != '['; k++)
		if (path->addr[k] >= 'A' && path->addr[k] <= 'Z')
			path->addr[k] = (char)(path->addr[k] - 'A' + 'a');
	path->utf8 = utf8;
	*end = i;
	return 0;
}

/* Skips the one SP that common clients put after the colon. */
static void skip_one_space(const char **arg, size_t *len)
{
	if (*len > 0 && (*arg)[0] == ' ') {
		(*arg)++;
		(*len)--;
	}
}

static int is_keyword_char(unsigned char c)
{
	return is_alpha(c) || is_digit(c) || c == '-';
}

static int is_value_char(unsigned char c)
{
	return c >= 33 && c <= 126 && c != '=';
}

struct param {
	const unsigned char *kw;
	size_t kwlen;
	const unsigned char *val; /* NULL when no '=' */
	size_t vallen;
};

/*
 * Splits the next SP-separated "keyword[=value]" off s at *pos. 1 when one
 * was found, 0 at the end, -1 + err when it is malformed.
 */
static int next_param(const unsigned char *s, size_t len, size_t *pos, struct param *p,
                      struct smtp_error *err)
{
	size_t i = *pos, start;
	char echo[80];

	if (i < len && s[i] != ' ')
		goto malformed;
	while (i < len && s[i] == ' ')
		i++;
	if (i >= len) {
		*pos = i;
		return 0;
	}
	start = i;
	while (i < len && s[i] != ' ')
		i++;
	*pos = i;
	p->kw = s + start;
	p->kwlen = 0;
	while (p->kwlen < i - start && is_keyword_char(s[start + p->kwlen]))
		p->kwlen++;
	if (p->kwlen == 0 || s[start] == '-')
		goto malformed_at;
	p->val = NULL;
	p->vallen = 0;
	if (start + p->kwlen < i) {
		size_t k;
		if (s[start + p->kwlen] != '=')
			goto malformed_at;
		p->val = s + start + p->kwlen + 1;
		p->vallen = i - (start + p->kwlen + 1);
		if (p->vallen == 0)
			goto malformed_at;
		for (k = 0; k < p->vallen; k++)
			if (!is_value_char(p->val[k]) && p->val[k] < 0x80)
				goto malformed_at;
	}
	return 1;
malformed_at:
	echo_sanitize(echo, sizeof(echo), s + start, i - start);
	return set_err(err, 501, "5.5.4", "Malformed parameter %s", echo);
malformed:
	return set_err(err, 501, "5.5.4", "A space is required between the address and %s",
	               "the parameters");
}

static int kw_is(const struct param *p, const char *name)
{
	size_t n = strlen(name);
	return p->kwlen == n && strncasecmp((const char *)p->kw, name, n) == 0;
}

static int val_is(const struct param *p, const char *v)
{
	size_t n = strlen(v);
	return p->val != NULL && p->vallen == n && strncasecmp((const char *)p->val, v, n) == 0;
}

/*
 * Parses the argument of MAIL FROM: into path and params (see smtpd.h).
 * 0, or -1 with err filled.
 */
int smtp_parse_mail_from(const char *arg, size_t len, size_t max_path, struct smtp_path *path,
                         struct smtp_mail_params *params, struct smtp_error *err)
{
	struct path_ctx c;
	struct param p;
	size_t pos, path_end;
	unsigned seen = 0;
	char echo[80];
	int r;

	params->size = -1;
	params->body = 0;
	params->smtputf8 = 0;
	skip_one_space(&arg, &len);
	c.s = (const unsigned char *)arg;
	c.len = len;
	c.is_mail = 1;
	c.enh = "5.1.7";
	if (memchr(arg, '\0', len) != NULL)
		return set_err(err, 501, "5.5.2", "NUL byte in the command");
	if (parse_path(&c, max_path, path, &pos, err) == -1)
		return -1;
	path_end = pos;
	while ((r = next_param(c.s, len, &pos, &p, err)) == 1) {
		unsigned bit;
		echo_sanitize(echo, sizeof(echo), p.kw, p.kwlen);
		if (kw_is(&p, "SIZE"))
			bit = 1;
		else if (kw_is(&p, "BODY"))
			bit = 2;
		else if (kw_is(&p, "SMTPUTF8"))
			bit = 4;
		else if (kw_is(&p, "AUTH"))
			bit = 8; /* RFC 4954 5: accepted, and ignored */
		else
			return set_err(err, 555, "5.5.4",
			               "The MAIL FROM parameter %s is not supported", echo);
		if (seen & bit)
			return set_err(err, 501, "5.5.4", "The parameter %s was given twice", echo);
		seen |= bit;
		if (bit == 1) {
			long long v = 0;
			size_t k;
			if (p.val == NULL)
				return set_err(err, 501, "5.5.4",
				               "SIZE needs a value: SIZE=<octets>");
			for (k = 0; k < p.vallen; k++) {
				if (!is_digit(p.val[k]))
					return set_err(err, 501, "5.5.4",
					               "SIZE must be a number of octets");
				if (v > (9223372036854775807LL - 9) / 10)
					return set_err(err, 501, "5.5.4",
					               "The SIZE value is out of range");
				v = v * 10 + (p.val[k] - '0');
			}
			params->size = v;
		} else if (bit == 2) {
			if (val_is(&p, "7BIT"))
				params->body = 7;
			else if (val_is(&p, "8BITMIME"))
				params->body = 8;
			else
				return set_err(err, 501, "5.5.4", "BODY must be 7BIT or 8BITMIME");
		} else if (bit == 4) {
			if (p.val != NULL)
				return set_err(err, 501, "5.5.4", "SMTPUTF8 takes no value");
			params->smtputf8 = 1;
		} else if (p.val == NULL) {
			return set_err(err, 501, "5.5.4", "AUTH needs a value: AUTH=<mailbox>");
		}
	}
	if (r == -1)
		return -1;
	if (path->utf8 && !params->smtputf8) {
		echo_sanitize(echo, sizeof(echo), c.s, path_end);
		return set_err(err, 553, "5.6.7",
		               "The address %s has non-ASCII characters, which requires SMTPUTF8",
		               echo);
	}
	return 0;
}

/*
 * Parses the argument of RCPT TO: into path (see smtpd.h). 0, or -1 with
 * err filled.
 */
int smtp_parse_rcpt_to(const char *arg, size_t len, size_t max_path, int utf8_ok,
                       struct smtp_path *path, struct smtp_error *err)
{
	struct path_ctx c;
	struct param p;
	size_t pos, path_end;
	char echo[80];
	int r;

	skip_one_space(&arg, &len);
	c.s = (const unsigned char *)arg;
	c.len = len;
	c.is_mail = 0;
	c.enh = "5.1.3";
	if (memchr(arg, '\0', len) != NULL)
		return set_err(err, 501, "5.5.2", "NUL byte in the command");
	if (parse_path(&c, max_path, path, &pos, err) == -1)
		return -1;
	path_end = pos;
	r = next_param(c.s, len, &pos, &p, err);
	if (r == -1)
		return -1;
	if (r == 1) {
		echo_sanitize(echo, sizeof(echo), p.kw, p.kwlen);
		return set_err(err, 555, "5.5.4", "The RCPT TO parameter %s is not supported",
		               echo);
	}
	if (path->utf8 && !utf8_ok) {
		echo_sanitize(echo, sizeof(echo), c.s, path_end);
		return set_err(err, 553, "5.6.7",
		               "The address %s has non-ASCII characters, which requires SMTPUTF8",
		               echo);
	}
	return 0;
}
