/*
 * check: verifying a domain's records against the platform's settings.
 *
 * One run issues its lookups in parallel (SPF TXT, each DKIM selector, the
 * return path, DMARC) and follows up where an answer calls for it (SPF
 * includes, DKIM TXT behind a missing CNAME, DMARC at the organizational
 * domain). The run owns itself until its last lookup has answered, so the
 * lookups may carry a pointer to it; the caller's object is named by the
 * cookie only.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/common.h"
#include "dns/dns.h"

enum query_kind {
	Q_SPF_ROOT,
	Q_SPF_FETCH,
	Q_SPF_ADDR,  /* A of an a mechanism's name */
	Q_SPF_ADDR6, /* then AAAA, when it has no A */
	Q_SPF_MX,    /* MX of an mx mechanism's name */
	Q_DKIM_CNAME,
	Q_DKIM_TXT,
	Q_RETURN_PATH,
	Q_DMARC,
	Q_DMARC_ORG,
};

struct selector {
	char *selector;
	char *cname; /* expected target, or NULL in TXT mode */
	char *txt_p; /* expected p=, or NULL */
};

/* An SPF record of an include/redirect target, as far as we know it. */
struct fetched {
	char *domain;
	enum spf_want want;
	enum spf_fetch kind;
	char *record;
	enum dns_status dns_status;
};

struct run {
	struct dns_resolver *r;
	int qflags;
	char *spf_include;
	char *rp_prefix;
	char *rp_domain;
	char *dmarc_rua;
	struct selector *sels;
	size_t n_sels;

	struct dns_check_report rep;
	int pending;
	int spf_root_done;
	char *spf_record;
	struct fetched *fetched;
	size_t n_fetched;

	dns_check_cb cb;
	void *arg;
	uint64_t cookie;
};

/* One lookup's context. */
struct sub {
	struct run *run;
	enum query_kind kind;
	size_t idx;  /* DKIM selector, or fetched entry */
	char *found; /* DKIM: the CNAME target found before the TXT lookup */
};

const char *dns_check_status_str(enum dns_check_status s)
{
	switch (s) {
	case DNS_CHECK_VERIFIED:
		return "verified";
	case DNS_CHECK_MISSING:
		return "missing";
	case DNS_CHECK_MISMATCH:
		return "mismatch";
	case DNS_CHECK_ERROR:
		return "error";
	case DNS_CHECK_MULTIPLE_RECORDS:
		return "multiple_records";
	case DNS_CHECK_TOO_MANY_LOOKUPS:
		return "too_many_lookups";
	case DNS_CHECK_INVALID:
		return "invalid";
	}
	return "error";
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));

static char *fmt(const char *f, ...)
{
	va_list ap;
	char *s = NULL;
	int n;

	va_start(ap, f);
	n = vasprintf(&s, f, ap);
	va_end(ap);
	if (n < 0)
		abort();
	return s;
}

static void set_detail(struct dns_record_check *c, char *detail)
{
	free(c->detail);
	c->detail = detail;
}

static void set_found(struct dns_record_check *c, const char *v)
{
	free(c->found);
	c->found = v ? xstrdup(v) : NULL;
}

static void add_value(struct dns_record_check *c, const char *v)
{
	c->values = xrealloc(c->values, (c->n_values + 1) * sizeof(*c->values));
	c->values[c->n_values++] = xstrdup(v);
}

/* Equal host names, ignoring case and a trailing dot. */
static int host_eq(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b);

	if (na > 0 && a[na - 1] == '.')
		na--;
	if (nb > 0 && b[nb - 1] == '.')
		nb--;
	return na == nb && strncasecmp(a, b, na) == 0;
}

/* The status of a record whose lookup failed; 1 when res was a failure. */
static int dns_failed(struct dns_record_check *c, const struct dns_result *res)
{
	if (res->status == DNS_OK || res->status == DNS_NXDOMAIN || res->status == DNS_NODATA)
		return 0;
	c->status = DNS_CHECK_ERROR;
	c->dns_status = res->status;
	set_detail(
	    c, fmt("looking up %s %s failed: %s", dns_type_str(res->type), res->name, res->detail));
	return 1;
}

static void on_answer(const struct dns_result *res, void *arg, uint64_t cookie);
static void spf_walk(struct run *run);

static void ask(struct run *run, const char *name, enum dns_type type, enum query_kind kind,
                size_t idx, char *found)
{
	struct sub *s = xcalloc(1, sizeof(*s));

	s->run = run;
	s->kind = kind;
	s->idx = idx;
	s->found = found;
	run->pending++;
	dns_query(run->r, name, type, run->qflags, on_answer, s, 0);
}

/* ---- SPF ---------------------------------------------------------------- */

static enum spf_fetch fetch_spf(void *ctx, const char *domain, enum spf_want want,
                                const char **record)
{
	struct run *run = ctx;
	struct fetched *f;

	for (size_t i = 0; i < run->n_fetched; i++)
		if (run->fetched[i].want == want && strcmp(run->fetched[i].domain, domain) == 0) {
			*record = run->fetched[i].record;
			return run->fetched[i].kind;
		}
	run->fetched = xrealloc(run->fetched, (run->n_fetched + 1) * sizeof(*run->fetched));
	f = &run->fetched[run->n_fetched];
	memset(f, 0, sizeof(*f));
	f->domain = xstrdup(domain);
	f->want = want;
	f->kind = SPF_FETCH_PENDING;
	switch (want) {
	case SPF_WANT_SPF:
		ask(run, domain, DNS_TXT, Q_SPF_FETCH, run->n_fetched, NULL);
		break;
	case SPF_WANT_A:
		ask(run, domain, DNS_A, Q_SPF_ADDR, run->n_fetched, NULL);
		break;
	case SPF_WANT_MX:
		ask(run, domain, DNS_MX, Q_SPF_MX, run->n_fetched, NULL);
		break;
	}
	run->n_fetched++;
	return SPF_FETCH_PENDING;
}

/* The answer for an a or mx mechanism's name: does it exist, for void lookup counting. */
static void on_spf_exists(struct run *run, size_t idx, enum query_kind kind,
                          const struct dns_result *res)
{
	struct fetched *f = &run->fetched[idx];

	f->dns_status = res->status;
	if (kind == Q_SPF_ADDR && res->status == DNS_NODATA) {
		/* No A: an AAAA makes it a real answer still. */
		ask(run, f->domain, DNS_AAAA, Q_SPF_ADDR6, idx, NULL);
		return;
	}
	if (res->status == DNS_OK)
		f->kind = SPF_FETCH_RECORD;
	else if (res->status == DNS_NXDOMAIN || res->status == DNS_NODATA)
		f->kind = SPF_FETCH_VOID;
	else
		f->kind = SPF_FETCH_ERROR;
	spf_walk(run);
}

/* Re-walks the SPF tree with what is known; decides once nothing is pending. */
static void spf_walk(struct run *run)
{
	struct dns_record_check *c = &run->rep.spf;
	struct spf_eval ev;
	struct spf_record rec;
	char err[256];
	int root_ok;

	spf_evaluate(run->rep.domain, run->spf_record, run->spf_include, fetch_spf, run, &ev);
	if (!ev.complete)
		return;
	run->rep.spf_lookups = ev.lookups;
	run->rep.spf_void_lookups = ev.void_lookups;
	root_ok = spf_parse(run->spf_record, &rec, err, sizeof(err)) == 0;
	spf_record_free(&rec);
	set_found(c, run->spf_record);
	if (!root_ok) {
		c->status = DNS_CHECK_INVALID;
		set_detail(c, fmt("the SPF record has a syntax error: %s", err));
	} else if (!ev.has_include && ev.error) {
		c->status = DNS_CHECK_ERROR;
		for (size_t i = 0; i < run->n_fetched; i++)
			if (run->fetched[i].kind == SPF_FETCH_ERROR &&
			    run->fetched[i].want == SPF_WANT_SPF) {
				c->dns_status = run->fetched[i].dns_status;
				break;
			}
		set_detail(c, xstrdup(ev.detail));
	} else if (!ev.has_include) {
		c->status = DNS_CHECK_MISMATCH;
		set_detail(c, fmt("the SPF record does not include %s", run->spf_include));
	} else if (ev.lookups > 10) {
		c->status = DNS_CHECK_TOO_MANY_LOOKUPS;
		set_detail(c, fmt("the SPF record needs more than 10 DNS lookups (include, a, mx, "
		                  "ptr, exists, redirect, counted through includes); receivers "
		                  "treat it as an error (RFC 7208 4.6.4)"));
	} else if (ev.void_lookups > 2) {
		c->status = DNS_CHECK_TOO_MANY_LOOKUPS;
		set_detail(c, fmt("the SPF record has %d lookups of names that do not exist "
		                  "(more than 2)",
		                  ev.void_lookups));
	} else if (ev.invalid) {
		c->status = DNS_CHECK_INVALID;
		set_detail(c, xstrdup(ev.detail));
	} else if (ev.error) {
		c->status = DNS_CHECK_ERROR;
		for (size_t i = 0; i < run->n_fetched; i++)
			if (run->fetched[i].kind == SPF_FETCH_ERROR &&
			    run->fetched[i].want == SPF_WANT_SPF) {
				c->dns_status = run->fetched[i].dns_status;
				break;
			}
		set_detail(c, xstrdup(ev.detail));
	} else {
		c->status = DNS_CHECK_VERIFIED;
		set_detail(c, fmt("the SPF record includes %s (%d of 10 lookups)", run->spf_include,
		                  ev.lookups));
	}
}

static void on_spf_root(struct run *run, const struct dns_result *res)
{
	struct dns_record_check *c = &run->rep.spf;
	size_t nspf = 0;
	const char *one = NULL;

	c->dns_status = res->status;
	for (size_t i = 0; i < res->n; i++) {
		add_value(c, res->rr[i].text);
		if (spf_is_record(res->rr[i].text)) {
			nspf++;
			one = res->rr[i].text;
		}
	}
	if (dns_failed(c, res))
		return;
	if (nspf == 0) {
		c->status = DNS_CHECK_MISSING;
		set_detail(c, fmt(res->status == DNS_NXDOMAIN ? "%s does not exist in DNS"
		                  : res->n > 0 ? "%s has TXT records but none is an SPF record"
		                               : "%s has no SPF record",
		                  run->rep.domain));
		return;
	}
	if (nspf > 1) {
		c->status = DNS_CHECK_MULTIPLE_RECORDS;
		set_found(c, one);
		set_detail(c, fmt("%s has %zu SPF records; receivers then fail SPF for every "
		                  "message: merge them into one",
		                  run->rep.domain, nspf));
		return;
	}
	run->spf_record = xstrdup(one);
	spf_walk(run);
}

static void on_spf_fetch(struct run *run, size_t idx, const struct dns_result *res)
{
	struct fetched *f = &run->fetched[idx];
	size_t nspf = 0;
	const char *one = NULL;

	f->dns_status = res->status;
	for (size_t i = 0; i < res->n; i++)
		if (spf_is_record(res->rr[i].text)) {
			nspf++;
			one = res->rr[i].text;
		}
	if (res->status == DNS_NXDOMAIN || res->status == DNS_NODATA)
		f->kind = SPF_FETCH_VOID;
	else if (res->status != DNS_OK)
		f->kind = SPF_FETCH_ERROR;
	else if (nspf == 0)
		f->kind = SPF_FETCH_NOSPF;
	else if (nspf > 1)
		f->kind = SPF_FETCH_MULTIPLE;
	else {
		f->kind = SPF_FETCH_RECORD;
		f->record = xstrdup(one);
	}
	spf_walk(run);
}

/* ---- DKIM ---------------------------------------------------------------- */

/* 1 when txt looks like a DKIM key record. */
static int is_dkim_key(const char *txt)
{
	char *p;

	if (strncasecmp(txt, "v=DKIM1", 7) == 0)
		return 1;
	p = dns_tag_value(txt, "p");
	free(p);
	return p != NULL;
}

/* p= without the whitespace a long key is often split with. */
static char *key_of(const char *txt)
{
	char *p = dns_tag_value(txt, "p"), *o;

	if (p == NULL)
		return NULL;
	o = p;
	for (char *i = p; *i; i++)
		if (*i != ' ' && *i != '\t' && *i != '\r' && *i != '\n')
			*o++ = *i;
	*o = '\0';
	return p;
}

static void on_dkim_cname(struct run *run, size_t idx, const struct dns_result *res)
{
	struct dns_record_check *c = &run->rep.dkim[idx];
	const struct selector *s = &run->sels[idx];

	c->dns_status = res->status;
	if (dns_failed(c, res))
		return;
	if (res->status == DNS_NXDOMAIN) {
		c->status = DNS_CHECK_MISSING;
		set_detail(c, fmt("%s does not exist", c->name));
		return;
	}
	if (res->status == DNS_NODATA) {
		/* No CNAME; perhaps a TXT key is published there instead. */
		ask(run, c->name, DNS_TXT, Q_DKIM_TXT, idx, NULL);
		return;
	}
	add_value(c, res->rr[0].text);
	set_found(c, res->rr[0].text);
	if (host_eq(res->rr[0].text, s->cname)) {
		c->status = DNS_CHECK_VERIFIED;
		set_detail(c, fmt("%s is a CNAME to %s", c->name, s->cname));
		return;
	}
	if (s->txt_p) {
		/* A CNAME elsewhere may still lead to our key (the server follows it). */
		ask(run, c->name, DNS_TXT, Q_DKIM_TXT, idx, xstrdup(res->rr[0].text));
		return;
	}
	c->status = DNS_CHECK_MISMATCH;
	set_detail(c, fmt("%s is a CNAME to %s instead of %s", c->name, res->rr[0].text, s->cname));
}

static void on_dkim_txt(struct run *run, size_t idx, const char *cname_found,
                        const struct dns_result *res)
{
	struct dns_record_check *c = &run->rep.dkim[idx];
	const struct selector *s = &run->sels[idx];
	const char *key = NULL;
	size_t nkeys = 0;

	c->dns_status = res->status;
	if (dns_failed(c, res))
		return;
	for (size_t i = 0; i < res->n; i++)
		if (is_dkim_key(res->rr[i].text)) {
			if (cname_found == NULL)
				add_value(c, res->rr[i].text);
			key = res->rr[i].text;
			nkeys++;
		}
	if (nkeys == 0) {
		if (cname_found) {
			c->status = DNS_CHECK_MISMATCH;
			set_detail(c, fmt("%s is a CNAME to %s, where no DKIM key is published",
			                  c->name, cname_found));
		} else {
			c->status = DNS_CHECK_MISSING;
			set_detail(c, fmt("%s has no DKIM record", c->name));
		}
		return;
	}
	if (nkeys > 1) {
		c->status = DNS_CHECK_MULTIPLE_RECORDS;
		set_found(c, key);
		set_detail(c,
		           fmt("%s has %zu DKIM key records; publish exactly one", c->name, nkeys));
		return;
	}
	if (cname_found == NULL)
		set_found(c, key);
	if (s->txt_p) {
		char *p = key_of(key);
		int same = p && strcmp(p, s->txt_p) == 0;

		free(p);
		if (same) {
			c->status = DNS_CHECK_VERIFIED;
			set_detail(c, fmt("%s publishes the expected DKIM key", c->name));
		} else {
			c->status = DNS_CHECK_MISMATCH;
			set_detail(c, fmt("%s publishes a different DKIM key (p=) than this "
			                  "domain's",
			                  c->name));
		}
		return;
	}
	c->status = DNS_CHECK_MISMATCH;
	set_detail(c, fmt("%s holds a TXT key where a CNAME to %s is expected (with a TXT copy "
	                  "the key cannot be rotated)",
	                  c->name, s->cname));
}

/* ---- return path ---------------------------------------------------------- */

static void on_return_path(struct run *run, const struct dns_result *res)
{
	struct dns_record_check *c = &run->rep.return_path;

	c->dns_status = res->status;
	if (dns_failed(c, res))
		return;
	if (res->status != DNS_OK) {
		c->status = DNS_CHECK_MISSING;
		set_detail(c, fmt(res->status == DNS_NXDOMAIN ? "%s does not exist"
		                                              : "%s exists but has no CNAME record",
		                  c->name));
		return;
	}
	add_value(c, res->rr[0].text);
	set_found(c, res->rr[0].text);
	if (host_eq(res->rr[0].text, run->rp_domain)) {
		c->status = DNS_CHECK_VERIFIED;
		set_detail(c, fmt("%s is a CNAME to %s", c->name, run->rp_domain));
	} else {
		c->status = DNS_CHECK_MISMATCH;
		set_detail(c, fmt("%s is a CNAME to %s instead of %s", c->name, res->rr[0].text,
		                  run->rp_domain));
	}
}

/* ---- DMARC -------------------------------------------------------------- */

static int is_dmarc(const char *txt)
{
	while (*txt == ' ' || *txt == '\t')
		txt++;
	if (strncmp(txt, "v", 1) != 0)
		return 0;
	txt++;
	while (*txt == ' ' || *txt == '\t')
		txt++;
	if (*txt++ != '=')
		return 0;
	while (*txt == ' ' || *txt == '\t')
		txt++;
	return strncmp(txt, "DMARC1", 6) == 0 &&
	       (txt[6] == '\0' || txt[6] == ';' || txt[6] == ' ' || txt[6] == '\t');
}

/* Handles _dmarc at the domain (org = 0) or the organizational domain (org = 1). */
static void on_dmarc(struct run *run, int org, const struct dns_result *res)
{
	struct dns_record_check *c = &run->rep.dmarc;
	const char *one = NULL;
	size_t n = 0;

	c->dns_status = res->status;
	if (dns_failed(c, res))
		return;
	for (size_t i = 0; i < res->n; i++)
		if (is_dmarc(res->rr[i].text)) {
			add_value(c, res->rr[i].text);
			one = res->rr[i].text;
			n++;
		}
	if (n == 0) {
		if (!org && strcmp(run->rep.org_domain, run->rep.domain) != 0) {
			char *name = fmt("_dmarc.%s", run->rep.org_domain);
			ask(run, name, DNS_TXT, Q_DMARC_ORG, 0, NULL);
			free(name);
			return;
		}
		c->status = DNS_CHECK_MISSING;
		set_detail(c, fmt("no DMARC policy applies to %s: publish %s TXT \"%s\"",
		                  run->rep.domain, c->name, c->expected));
		return;
	}
	free(run->rep.dmarc_found_at);
	run->rep.dmarc_found_at = xstrdup(res->name);
	if (n > 1) {
		c->status = DNS_CHECK_MULTIPLE_RECORDS;
		set_found(c, one);
		set_detail(c, fmt("%s has %zu DMARC records, so receivers apply none of them",
		                  res->name, n));
		return;
	}
	set_found(c, one);
	run->rep.dmarc_policy = org ? dns_tag_value(one, "sp") : NULL;
	if (run->rep.dmarc_policy == NULL)
		run->rep.dmarc_policy = dns_tag_value(one, "p");
	run->rep.dmarc_rua = dns_tag_value(one, "rua");
	c->status = DNS_CHECK_VERIFIED;
	set_detail(c, fmt("DMARC policy %s published at %s%s",
	                  run->rep.dmarc_policy ? run->rep.dmarc_policy : "(none given)", res->name,
	                  org ? " (the organizational domain)" : ""));
}

/* ---- the run ------------------------------------------------------------ */

static void run_free(struct run *run)
{
	dns_check_report_clear(&run->rep);
	for (size_t i = 0; i < run->n_sels; i++) {
		free(run->sels[i].selector);
		free(run->sels[i].cname);
		free(run->sels[i].txt_p);
	}
	free(run->sels);
	for (size_t i = 0; i < run->n_fetched; i++) {
		free(run->fetched[i].domain);
		free(run->fetched[i].record);
	}
	free(run->fetched);
	free(run->spf_record);
	free(run->spf_include);
	free(run->rp_prefix);
	free(run->rp_domain);
	free(run->dmarc_rua);
	free(run);
}

static void on_answer(const struct dns_result *res, void *arg, uint64_t cookie)
{
	struct sub *s = arg;
	struct run *run = s->run;

	switch (s->kind) {
	case Q_SPF_ROOT:
		on_spf_root(run, res);
		break;
	case Q_SPF_FETCH:
		on_spf_fetch(run, s->idx, res);
		break;
	case Q_SPF_ADDR:
	case Q_SPF_ADDR6:
	case Q_SPF_MX:
		on_spf_exists(run, s->idx, s->kind, res);
		break;
	case Q_DKIM_CNAME:
		on_dkim_cname(run, s->idx, res);
		break;
	case Q_DKIM_TXT:
		on_dkim_txt(run, s->idx, s->found, res);
		break;
	case Q_RETURN_PATH:
		on_return_path(run, res);
		break;
	case Q_DMARC:
		on_dmarc(run, 0, res);
		break;
	case Q_DMARC_ORG:
		on_dmarc(run, 1, res);
		break;
	}
	free(s->found);
	free(s);
	if (--run->pending == 0) {
		run->cb(&run->rep, run->arg, run->cookie);
		run_free(run);
	}
}

static char *xstrdup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

static void init_check(struct dns_record_check *c, const char *kind, const char *type, char *name,
                       char *expected)
{
	c->kind = kind;
	c->type = type;
	c->name = name;
	c->expected = expected;
	c->status = DNS_CHECK_ERROR;
	c->dns_status = DNS_ERROR;
	c->detail = xstrdup("not checked");
}

int dns_check_start(struct dns_resolver *r, const char *domain, const struct dns_platform *p,
                    int flags, dns_check_cb cb, void *arg, uint64_t cookie)
{
	struct run *run;
	char *dom;
	size_t n = strlen(domain);
	const char *inc = p->spf_include ? p->spf_include : "";

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

	run = xcalloc(1, sizeof(*run));
	run->r = r;
	run->qflags = (flags & DNS_CHECK_FRESH) ? DNS_Q_NOCACHE : 0;
	run->cb = cb;
	run->arg = arg;
	run->cookie = cookie;
	run->spf_include = xstrdup(inc);
	run->rp_prefix = xstrdup_or_null(p->return_path_prefix);
	run->rp_domain = xstrdup_or_null(p->return_path_domain);
	run->dmarc_rua = xstrdup_or_null(p->dmarc_rua);
	run->rep.domain = dom;
	run->rep.org_domain = dns_org_domain(dom);

	init_check(&run->rep.spf, "spf", "TXT", xstrdup(dom), fmt("include:%s", inc));
	run->n_sels = p->n_dkim;
	run->sels = xcalloc(p->n_dkim ? p->n_dkim : 1, sizeof(*run->sels));
	run->rep.n_dkim = p->n_dkim;
	run->rep.dkim = xcalloc(p->n_dkim ? p->n_dkim : 1, sizeof(*run->rep.dkim));
	for (size_t i = 0; i < p->n_dkim; i++) {
		struct selector *s = &run->sels[i];
		const struct dns_dkim_selector *ps = &p->dkim[i];
		int txt_mode = ps->cname_target == NULL && ps->txt_p != NULL;

		s->selector = xstrdup(ps->selector);
		s->txt_p = xstrdup_or_null(ps->txt_p);
		if (!txt_mode)
			s->cname = ps->cname_target
			               ? xstrdup(ps->cname_target)
			               : dns_dkim_cname_target(ps->selector, dom,
			                                       p->dkim_zone ? p->dkim_zone : "");
		init_check(&run->rep.dkim[i], "dkim", txt_mode ? "TXT" : "CNAME",
		           fmt("%s._domainkey.%s", ps->selector, dom),
		           xstrdup(txt_mode ? s->txt_p : s->cname));
		run->rep.dkim[i].selector = xstrdup(ps->selector);
	}
	if (run->rp_prefix && run->rp_prefix[0] && run->rp_domain)
		init_check(&run->rep.return_path, "return_path", "CNAME",
		           fmt("%s.%s", run->rp_prefix, dom), xstrdup(run->rp_domain));
	else
		init_check(&run->rep.return_path, "return_path", "CNAME", NULL, NULL);
	init_check(&run->rep.dmarc, "dmarc", "TXT", fmt("_dmarc.%s", dom),
	           dns_dmarc_recommended(run->dmarc_rua));

	/* Every lookup is queued before any can answer (answers come from the loop). */
	ask(run, dom, DNS_TXT, Q_SPF_ROOT, 0, NULL);
	for (size_t i = 0; i < run->n_sels; i++)
		ask(run, run->rep.dkim[i].name, run->sels[i].cname ? DNS_CNAME : DNS_TXT,
		    run->sels[i].cname ? Q_DKIM_CNAME : Q_DKIM_TXT, i, NULL);
	if (run->rep.return_path.name)
		ask(run, run->rep.return_path.name, DNS_CNAME, Q_RETURN_PATH, 0, NULL);
	else {
		run->rep.return_path.status = DNS_CHECK_MISSING;
		set_detail(&run->rep.return_path, xstrdup("no return path is configured"));
	}
	ask(run, run->rep.dmarc.name, DNS_TXT, Q_DMARC, 0, NULL);
	return 0;
}
