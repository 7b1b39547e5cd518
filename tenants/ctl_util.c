/*
 * ctl_util: the pure parts of sendgatectl (name and domain checks, ages,
 * text tables). No database, no files: tests/unit/test_tenants.c calls them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tenants/ctl.h"

#define TENANT_NAME_MAX 63
#define DOMAIN_MAX 253
#define LABEL_MAX 63

static int is_lower_alnum(int ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
}

/* Mirrors the CHECK on tenants.name: ^[a-z0-9][a-z0-9._-]{0,62}$ */
const char *ctl_tenant_name_problem(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0)
		return "a tenant name must not be empty";
	if (n > TENANT_NAME_MAX)
		return "a tenant name is at most 63 characters";
	if (!is_lower_alnum((unsigned char)s[0]))
		return "a tenant name must start with a lower-case letter or a digit";
	for (i = 1; i < n; i++) {
		int ch = (unsigned char)s[i];

		if (!is_lower_alnum(ch) && ch != '.' && ch != '_' && ch != '-')
			return "a tenant name may contain only a-z, 0-9, '.', '_' and '-'";
	}
	return NULL;
}

int ctl_domain_normalize(const char *in, char *out, size_t outlen, const char **why)
{
	size_t n = strlen(in), i, label = 0, labels = 0, label_start = 0;
	int tld_digits = 1;

	if (n > 0 && in[n - 1] == '.')
		n--; /* the absolute form "example.com." names the same domain */
	if (n == 0) {
		*why = "a domain name must not be empty";
		return -1;
	}
	if (n > DOMAIN_MAX || n + 1 > outlen) {
		*why = "a domain name is at most 253 characters";
		return -1;
	}
	for (i = 0; i <= n; i++) {
		int ch = i < n ? (unsigned char)in[i] : '.';

		if (ch >= 'A' && ch <= 'Z')
			ch += 'a' - 'A';
		if (ch == '.') {
			if (label == 0) {
				*why = "a domain name must not have an empty label (\"..\" or a "
				       "leading dot)";
				return -1;
			}
			if (out[i - 1] == '-') {
				*why = "a domain label must not end with '-'";
				return -1;
			}
			labels++;
			label = 0;
			label_start = i + 1;
			if (i < n)
				out[i] = '.';
			continue;
		}
		if (!is_lower_alnum(ch) && ch != '-') {
			*why = "a domain name may contain only letters, digits, '-' and dots";
			return -1;
		}
		if (ch == '-' && i == label_start) {
			*why = "a domain label must not start with '-'";
			return -1;
		}
		if (++label > LABEL_MAX) {
			*why = "a domain label is at most 63 characters";
			return -1;
		}
		out[i] = (char)ch;
	}
	out[n] = '\0';
	if (labels < 2) {
		*why = "a sending domain needs at least two labels (like example.com)";
		return -1;
	}
	for (i = n; i > 0 && out[i - 1] != '.'; i--)
		if (out[i - 1] < '0' || out[i - 1] > '9')
			tld_digits = 0;
	if (tld_digits) {
		*why = "an IP address or an all-numeric top-level label is not a domain name";
		return -1;
	}
	return 0;
}

void ctl_format_age(long long secs, char *out, size_t outlen)
{
	if (secs < 0)
		secs = 0;
	if (secs < 60)
		snprintf(out, outlen, "%llds", secs);
	else if (secs < 3600)
		snprintf(out, outlen, "%lldm", secs / 60);
	else if (secs < 86400)
		snprintf(out, outlen, "%lldh", secs / 3600);
	else
		snprintf(out, outlen, "%lldd", secs / 86400);
}

static void table_push(struct table *t, const char *const *cells)
{
	size_t i;

	if (t->nrows == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 16;
		t->cells = xrealloc(t->cells, t->cap * t->ncols * sizeof(char *));
	}
	for (i = 0; i < t->ncols; i++) {
		char *s = xstrdup(cells[i] ? cells[i] : "-");
		char *p;

		/* Text from the spool or the database must not drive the terminal. */
		for (p = s; *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				*p = '?';
		t->cells[t->nrows * t->ncols + i] = s;
	}
	t->nrows++;
}

void table_init(struct table *t, size_t ncols, const char *const *headers)
{
	memset(t, 0, sizeof(*t));
	t->ncols = ncols;
	table_push(t, headers);
}

void table_add(struct table *t, const char *const *cells)
{
	table_push(t, cells);
}

/* Display width: UTF-8 continuation bytes take no column. */
static size_t text_width(const char *s)
{
	size_t w = 0;

	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			w++;
	return w;
}

void table_print(const struct table *t, FILE *fp)
{
	size_t *width = xcalloc(t->ncols, sizeof(size_t));
	struct buf line;
	size_t r, i;

	for (r = 0; r < t->nrows; r++)
		for (i = 0; i < t->ncols; i++) {
			size_t w = text_width(t->cells[r * t->ncols + i]);

			if (w > width[i])
				width[i] = w;
		}
	buf_init(&line, (size_t)-1);
	for (r = 0; r < t->nrows; r++) {
		buf_reset(&line);
		for (i = 0; i < t->ncols; i++) {
			const char *cell = t->cells[r * t->ncols + i];
			size_t pad = width[i] - text_width(cell);

			buf_puts(&line, cell);
			if (i + 1 < t->ncols)
				buf_printf(&line, "%*s", (int)(pad + 2), "");
		}
		while (line.len > 0 && line.data[line.len - 1] == ' ')
			line.len--;
		fprintf(fp, "%.*s\n", (int)line.len, line.data);
	}
	buf_free(&line);
	free(width);
}

void table_free(struct table *t)
{
	size_t i;

	for (i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	memset(t, 0, sizeof(*t));
}

/* Length of the valid UTF-8 sequence at p, or 0 when it is not one. */
static size_t utf8_seq_len(const unsigned char *p)
{
	unsigned int cp;
	size_t n, i;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2, cp = p[0] & 0x1f;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3, cp = p[0] & 0x0f;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4, cp = p[0] & 0x07;
	else
		return 0;
	for (i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0; /* also stops at the terminating NUL */
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

int ctl_utf8_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n;

	while (*p) {
		if ((n = utf8_seq_len(p)) == 0)
			return 0;
		p += n;
	}
	return 1;
}

json_t *ctl_json_text(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	struct buf b;
	json_t *j;
	size_t n;

	if (ctl_utf8_valid(s))
		j = json_string(s);
	else {
		buf_init(&b, (size_t)-1);
		while (*p) {
			if ((n = utf8_seq_len(p)) == 0) {
				buf_append(&b, "?", 1);
				p++;
			} else {
				buf_append(&b, p, n);
				p += n;
			}
		}
		j = json_string(b.data ? b.data : "");
		buf_free(&b);
	}
	if (j == NULL)
		abort();
	return j;
}

/* ---- DKIM selectors and DNS record text ------------------------------ */

/*
 * The platform's selector pairs: RSA keys rotate between sg1 and sg2,
 * Ed25519 keys between sg1e and sg2e, so a domain signing with both
 * algorithms never has two keys competing for one selector.
 */
static const struct {
	const char *alg;
	const char *sel[2];
} selector_pairs[] = {
    {"rsa", {"sg1", "sg2"}},
    {"ed25519", {"sg1e", "sg2e"}},
};

const char *ctl_dkim_selector(const char *alg, int slot)
{
	size_t i;

	if (slot != 1 && slot != 2)
		return NULL;
	for (i = 0; i < ARRAY_LEN(selector_pairs); i++)
		if (strcmp(selector_pairs[i].alg, alg) == 0)
			return selector_pairs[i].sel[slot - 1];
	return NULL;
}

int ctl_dkim_selector_slot(const char *alg, const char *selector)
{
	int slot;

	for (slot = 1; slot <= 2; slot++) {
		const char *s = ctl_dkim_selector(alg, slot);

		if (s && strcmp(s, selector) == 0)
			return slot;
	}
	return 0;
}

int ctl_dkim_is_platform_selector(const char *selector)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(selector_pairs); i++)
		if (ctl_dkim_selector_slot(selector_pairs[i].alg, selector))
			return 1;
	return 0;
}

/* Mirrors the CHECK on dkim_keys.selector: ^[a-z0-9][a-z0-9-]{0,62}$ */
const char *ctl_dkim_selector_problem(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0)
		return "a selector must not be empty";
	if (n > LABEL_MAX)
		return "a selector is at most 63 characters";
	if (!is_lower_alnum((unsigned char)s[0]))
		return "a selector must start with a lower-case letter or a digit";
	for (i = 1; i < n; i++)
		if (!is_lower_alnum((unsigned char)s[i]) && s[i] != '-')
			return "a selector may contain only a-z, 0-9 and '-'";
	return NULL;
}

int ctl_dkim_rotation_slot(const char *alg, const char *signing, const int use[2])
{
	int cur = signing ? ctl_dkim_selector_slot(alg, signing) : 0;
	int slot;

	if (cur) {
		/* The idle selector is the other one of the pair, and only it. */
		slot = 3 - cur;
		return use[slot - 1] == CTL_SLOT_IN_USE ? -1 : slot;
	}
	for (slot = 1; slot <= 2; slot++)
		if (use[slot - 1] == CTL_SLOT_FREE)
			return slot;
	for (slot = 1; slot <= 2; slot++)
		if (use[slot - 1] == CTL_SLOT_RETIRED)
			return slot;
	return -1;
}

void ctl_dkim_txt_value(const char *alg, const char *p_b64, struct buf *out)
{
	buf_printf(out, "v=DKIM1; k=%s; p=%s", alg, p_b64);
}

/* Appends one zone-file character-string: quoted, '"' and '\' escaped, others as \DDD. */
static void zone_string(const char *p, size_t n, struct buf *out)
{
	size_t i;

	buf_append(out, "\"", 1);
	for (i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)p[i];

		if (ch == '"' || ch == '\\')
			buf_printf(out, "\\%c", ch);
		else if (ch < 0x20 || ch > 0x7e)
			buf_printf(out, "\\%03u", ch);
		else
			buf_append(out, &ch, 1);
	}
	buf_append(out, "\"", 1);
}

void ctl_zone_txt_rdata(const char *value, struct buf *out)
{
	size_t n = strlen(value), off = 0, head = 0, chunk;
	const char *p = strstr(value, "p=");

	/* The tags before p= read better as a string of their own. */
	if (p && p > value && (size_t)(p - value) <= CTL_TXT_STRING_MAX)
		head = (size_t)(p - value);
	buf_append(out, "(", 1);
	if (head) {
		zone_string(value, head, out);
		off = head;
	}
	while (off < n || (off == 0 && n == 0)) {
		if (off > 0)
			buf_append(out, " ", 1);
		chunk = n - off < CTL_TXT_STRING_MAX ? n - off : CTL_TXT_STRING_MAX;
		zone_string(value + off, chunk, out);
		off += chunk;
		if (n == 0)
			break;
	}
	buf_append(out, ")", 1);
}

int ctl_dkim_algorithms(const char *s)
{
	if (strcmp(s, "rsa") == 0)
		return CTL_ALG_RSA;
	if (strcmp(s, "ed25519") == 0)
		return CTL_ALG_ED25519;
	if (strcmp(s, "both") == 0)
		return CTL_ALG_RSA | CTL_ALG_ED25519;
	return 0;
}
