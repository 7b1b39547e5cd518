/*
 * records: what a customer publishes in DNS for a sending domain, and the
 * small pure helpers the checks share (the DKIM label scheme, the
 * organizational domain from the Public Suffix List, tag=value lists).
 */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libpsl.h>

#include "common/common.h"
#include "dns/dns.h"

int dns_domain_is_valid(const char *domain)
{
	size_t n, label = 0, labels = 0, i;
	int tld_alpha = 0;

	if (domain == NULL)
		return 0;
	n = strlen(domain);
	if (n == 0 || n > 253)
		return 0;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)domain[i];

		if (c == '.') {
			if (label == 0 || domain[i - 1] == '-')
				return 0;
			label = 0;
			tld_alpha = 0;
			continue;
		}
		if (!(isalnum(c) || c == '-'))
			return 0;
		if (label == 0) {
			if (c == '-')
				return 0;
			labels++;
		}
		if (++label > 63)
			return 0;
		if (isalpha(c) || c == '-')
			tld_alpha = 1;
	}
	/* No empty last label, no trailing '-', at least two labels, a TLD that is not a number. */
	if (label == 0 || domain[n - 1] == '-' || labels < 2 || !tld_alpha)
		return 0;
	return 1;
}

int dns_dkim_label(const char *domain, char *out, size_t outlen)
{
	size_t o = 0, n = strlen(domain);

	if (n > 0 && domain[n - 1] == '.')
		n--;
	for (size_t i = 0; i < n; i++) {
		char c = (char)tolower((unsigned char)domain[i]);

		if (o + 3 > outlen || o + 2 > 64)
			goto hashed;
		if (c == '-') {
			out[o++] = '-';
			out[o++] = '-';
		} else if (c == '.') {
			out[o++] = '-';
		} else {
			out[o++] = c;
		}
	}
	if (o > 63)
		goto hashed;
	out[o] = '\0';
	return 0;

hashed : {
	/* Too long for one label: a digest, which never holds a '-'. */
	unsigned char md[32];
	char hex[65];
	char *low = xstrndup(domain, n);

	str_lower(low);
	sha256(low, n, md);
	free(low);
	hex_encode(md, sizeof(md), hex);
	if (outlen < 42)
		return -1;
	out[0] = 'h';
	memcpy(out + 1, hex, 40);
	out[41] = '\0';
	return 0;
}
}

char *dns_dkim_cname_target(const char *selector, const char *domain, const char *dkim_zone)
{
	char label[64];
	struct buf b;
	size_t zn = strlen(dkim_zone);

	if (zn > 0 && dkim_zone[zn - 1] == '.')
		zn--;
	if (dns_dkim_label(domain, label, sizeof(label)) < 0)
		abort();
	buf_init(&b, 1024);
	if (buf_printf(&b, "%s.%s.%.*s", selector, label, (int)zn, dkim_zone) < 0)
		abort();
	str_lower(b.data);
	return b.data;
}

static pthread_once_t psl_once = PTHREAD_ONCE_INIT;
static psl_ctx_t *psl_ctx;

static void psl_load(void)
{
	/* The system's list when it is newer than the built-in one. */
	psl_ctx = psl_latest(NULL);
}

char *dns_org_domain(const char *domain)
{
	const psl_ctx_t *ctx;
	const char *reg = NULL;
	char *low, *res;
	size_t n = strlen(domain);

	if (n > 0 && domain[n - 1] == '.')
		n--;
	low = xstrndup(domain, n);
	str_lower(low);
	pthread_once(&psl_once, psl_load);
	ctx = psl_ctx ? psl_ctx : psl_builtin();
	if (ctx)
		reg = psl_registrable_domain(ctx, low);
	res = xstrdup(reg ? reg : low);
	free(low);
	return res;
}

char *dns_tag_value(const char *record, const char *tag)
{
	const char *p = record;
	size_t tl = strlen(tag);

	while (*p) {
		const char *semi = strchr(p, ';'), *end = semi ? semi : p + strlen(p);
		const char *k = p, *eq;

		while (k < end && isspace((unsigned char)*k))
			k++;
		eq = memchr(k, '=', (size_t)(end - k));
		if (eq) {
			const char *ke = eq;
			while (ke > k && isspace((unsigned char)ke[-1]))
				ke--;
			if ((size_t)(ke - k) == tl && strncasecmp(k, tag, tl) == 0) {
				const char *v = eq + 1, *ve = end;
				while (v < ve && isspace((unsigned char)*v))
					v++;
				while (ve > v && isspace((unsigned char)ve[-1]))
					ve--;
				return xstrndup(v, (size_t)(ve - v));
			}
		}
		if (!semi)
			break;
		p = semi + 1;
	}
	return NULL;
}

const char *dns_action_str(enum dns_action a)
{
	switch (a) {
	case DNS_ACTION_ADD:
		return "add";
	case DNS_ACTION_REPLACE:
		return "replace";
	case DNS_ACTION_NONE:
		break;
	}
	return "none";
}

/* name relative to zone: "@" for the apex, the part before ".zone", else name. */
static char *relative_name(const char *name, const char *zone)
{
	size_t n = strlen(name), z = strlen(zone);

	if (strcmp(name, zone) == 0)
		return xstrdup("@");
	if (n > z + 1 && name[n - z - 1] == '.' && strcmp(name + n - z, zone) == 0)
		return xstrndup(name, n - z - 1);
	return xstrdup(name);
}

static struct dns_publish *add_rec(struct dns_publish_set *s, const char *kind, const char *type,
                                   char *name, char *value)
{
	struct dns_publish *r;

	s->recs = xrealloc(s->recs, (s->n + 1) * sizeof(*s->recs));
	r = &s->recs[s->n++];
	memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->type = type;
	r->name = name;
	r->rel_name = relative_name(name, s->zone);
	r->value = value;
	r->action = DNS_ACTION_ADD;
	return r;
}

static char *joinf(const char *fmt, const char *a, const char *b)
{
	struct buf x;

	buf_init(&x, 4096);
	if (buf_printf(&x, fmt, a, b) < 0)
		abort();
	return x.data;
}

/* Sets action/current of rec from a check verdict. */
static void apply_check(struct dns_publish *rec, const struct dns_record_check *c)
{
	if (c == NULL)
		return;
	if (c->status == DNS_CHECK_VERIFIED) {
		rec->action = DNS_ACTION_NONE;
	} else if (c->found != NULL &&
	           (c->status == DNS_CHECK_MISMATCH || c->status == DNS_CHECK_MULTIPLE_RECORDS)) {
		rec->action = DNS_ACTION_REPLACE;
		rec->current = xstrdup(c->found);
	}
}

/* The DMARC record we recommend: monitoring only, reports to the platform. */
char *dns_dmarc_recommended(const char *rua)
{
	if (rua && rua[0])
		return joinf("v=DMARC1; p=none; rua=mailto:%s%s", rua, "");
	return xstrdup("v=DMARC1; p=none");
}

int dns_records_compute(const char *domain, const struct dns_platform *p,
                        const struct dns_check_report *found, struct dns_publish_set *out)
{
	char *dom;
	size_t n = strlen(domain);
	struct dns_publish *rec;
	const char *inc = p->spf_include ? p->spf_include : "";

	memset(out, 0, sizeof(*out));
	if (n > 0 && domain[n - 1] == '.')
		n--;
	dom = xstrndup(domain, n);
	str_lower(dom);
	if (!dns_domain_is_valid(dom)) {
		free(dom);
		return -1;
	}
	if (strncasecmp(inc, "include:", 8) == 0)
		inc += 8;
	out->domain = dom;
	out->zone = dns_org_domain(dom);

	/* SPF: one record per domain, so an existing one is merged, never doubled. */
	{
		const struct dns_record_check *c = found ? &found->spf : NULL;
		const char *existing = NULL;
		char *merged = NULL;

		if (c) {
			for (size_t i = 0; i < c->n_values; i++)
				if (spf_is_record(c->values[i])) {
					existing = c->values[i];
					break;
				}
		}
		if (existing && spf_merge(existing, inc, &merged) >= 0) {
			rec = add_rec(out, "spf", "TXT", xstrdup(dom), merged);
			rec->action = DNS_ACTION_REPLACE;
			rec->current = xstrdup(existing);
			if (c->status == DNS_CHECK_VERIFIED)
				rec->action = DNS_ACTION_NONE;
			else if (c->status == DNS_CHECK_MULTIPLE_RECORDS) {
				/* Every SPF record found is replaced by this one. */
				struct buf all;
				buf_init(&all, 65536);
				for (size_t i = 0; i < c->n_values; i++)
					if (spf_is_record(c->values[i]) &&
					    buf_printf(&all, "%s%s", all.len ? "\n" : "",
					               c->values[i]) < 0)
						abort();
				free(rec->current);
				rec->current = all.data;
			} else if (strcmp(merged, existing) == 0) {
				/* Our include is there; the problem is elsewhere (lookups, syntax).
				 */
				rec->action = DNS_ACTION_NONE;
			}
		} else {
			add_rec(out, "spf", "TXT", xstrdup(dom), spf_new_record(inc));
		}
	}

	/* DKIM: each selector, as CNAME delegation (default) or the TXT key. */
	for (size_t i = 0; i < p->n_dkim; i++) {
		const struct dns_dkim_selector *s = &p->dkim[i];
		char *name = joinf("%s._domainkey.%s", s->selector, dom);

		if (s->cname_target == NULL && s->txt_p != NULL) {
			char *v = s->txt_record ? xstrdup(s->txt_record)
			                        : joinf("v=DKIM1; p=%s%s", s->txt_p, "");
			rec = add_rec(out, "dkim", "TXT", name, v);
		} else {
			char *v = s->cname_target
			              ? xstrdup(s->cname_target)
			              : dns_dkim_cname_target(s->selector, dom,
			                                      p->dkim_zone ? p->dkim_zone : "");
			rec = add_rec(out, "dkim", "CNAME", name, v);
		}
		rec->selector = xstrdup(s->selector);
		if (found && i < found->n_dkim)
			apply_check(rec, &found->dkim[i]);
	}

	/* Return path: the envelope sender's domain, delegated to the bounce handler. */
	if (p->return_path_prefix && p->return_path_prefix[0] && p->return_path_domain) {
		rec =
		    add_rec(out, "return_path", "CNAME", joinf("%s.%s", p->return_path_prefix, dom),
		            xstrdup(p->return_path_domain));
		if (found)
			apply_check(rec, &found->return_path);
	}

	/* DMARC: recommended when none applies; an existing policy is kept. */
	rec = add_rec(out, "dmarc", "TXT", joinf("_dmarc.%s%s", dom, ""),
	              dns_dmarc_recommended(p->dmarc_rua));
	if (found && found->dmarc.status == DNS_CHECK_VERIFIED) {
		rec->action = DNS_ACTION_NONE;
		if (found->dmarc.found)
			rec->current = xstrdup(found->dmarc.found);
	}
	return 0;
}

void dns_publish_set_free(struct dns_publish_set *s)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < s->n; i++) {
		free(s->recs[i].selector);
		free(s->recs[i].name);
		free(s->recs[i].rel_name);
		free(s->recs[i].value);
		free(s->recs[i].current);
	}
	free(s->recs);
	free(s->domain);
	free(s->zone);
	memset(s, 0, sizeof(*s));
}
