/*
 * report: what the checks found, as JSON (for --json, and for keeping the
 * per-record statuses in Postgres) and as sentences for people, and which
 * of the records the platform requires are in place. Pure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/common.h"
#include "dns/dns.h"

static const char *const check_statuses[] = {
    "verified", "missing", "mismatch", "error", "multiple_records", "too_many_lookups", "invalid",
};
static const char *const dns_statuses[] = {"ok",       "nxdomain", "nodata",
                                           "servfail", "timeout",  "error"};

/* ---- freeing --------------------------------------------------------------- */

static void check_clear(struct dns_record_check *c)
{
	free(c->selector);
	free(c->name);
	free(c->expected);
	free(c->found);
	for (size_t j = 0; j < c->n_values; j++)
		free(c->values[j]);
	free(c->values);
	free(c->detail);
	memset(c, 0, sizeof(*c));
}

void dns_check_report_clear(struct dns_check_report *rep)
{
	if (rep == NULL)
		return;
	check_clear(&rep->spf);
	check_clear(&rep->return_path);
	check_clear(&rep->dmarc);
	for (size_t i = 0; i < rep->n_dkim; i++)
		check_clear(&rep->dkim[i]);
	free(rep->dkim);
	free(rep->domain);
	free(rep->org_domain);
	free(rep->dmarc_policy);
	free(rep->dmarc_rua);
	free(rep->dmarc_found_at);
	memset(rep, 0, sizeof(*rep));
}

/* ---- required records -------------------------------------------------- */

int dns_require_parse(const char *list, unsigned *mask, char *err, size_t errlen)
{
	const char *p = list;

	*mask = 0;
	while (p && *p) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);

		while (n > 0 && (*p == ' ' || *p == '\t')) {
			p++;
			n--;
		}
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n == 3 && strncmp(p, "spf", 3) == 0)
			*mask |= DNS_REQUIRE_SPF;
		else if (n == 4 && strncmp(p, "dkim", 4) == 0)
			*mask |= DNS_REQUIRE_DKIM;
		else if (n == 11 && strncmp(p, "return_path", 11) == 0)
			*mask |= DNS_REQUIRE_RETURN_PATH;
		else if (n == 5 && strncmp(p, "dmarc", 5) == 0)
			*mask |= DNS_REQUIRE_DMARC;
		else if (n > 0) {
			snprintf(err, errlen,
			         "unknown record \"%.*s\" (spf, dkim, return_path, dmarc)", (int)n,
			         p);
			return -1;
		}
		p = end ? end + 1 : NULL;
	}
	return 0;
}

/* Calls fn for each required record check, in the guide's order. */
static void each_required(const struct dns_check_report *rep, unsigned required,
                          void (*fn)(void *arg, const struct dns_record_check *c), void *arg)
{
	if (required & DNS_REQUIRE_SPF)
		fn(arg, &rep->spf);
	if (required & DNS_REQUIRE_DKIM)
		for (size_t i = 0; i < rep->n_dkim; i++)
			fn(arg, &rep->dkim[i]);
	if (required & DNS_REQUIRE_RETURN_PATH)
		fn(arg, &rep->return_path);
	if (required & DNS_REQUIRE_DMARC)
		fn(arg, &rep->dmarc);
}

struct tally {
	int ok;
	int total;
	struct buf *out;
};

static void tally_one(void *arg, const struct dns_record_check *c)
{
	struct tally *t = arg;

	t->total++;
	if (c->status == DNS_CHECK_VERIFIED) {
		t->ok++;
		return;
	}
	if (t->out == NULL)
		return;
	if (t->out->len > 0)
		buf_puts(t->out, ", ");
	if (c->selector)
		buf_printf(t->out, "%s %s %s (%s)", c->kind, c->selector, c->name ? c->name : "",
		           dns_check_status_str(c->status));
	else
		buf_printf(t->out, "%s %s (%s)", c->kind, c->name ? c->name : "",
		           dns_check_status_str(c->status));
}

int dns_report_passes(const struct dns_check_report *rep, unsigned required, int *ok, int *total)
{
	struct tally t = {0, 0, NULL};

	each_required(rep, required, tally_one, &t);
	if (ok)
		*ok = t.ok;
	if (total)
		*total = t.total;
	return t.ok == t.total;
}

void dns_report_failing(const struct dns_check_report *rep, unsigned required, struct buf *out)
{
	struct tally t = {0, 0, out};

	each_required(rep, required, tally_one, &t);
}

/* ---- JSON --------------------------------------------------------------- */

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *check_to_json(const struct dns_record_check *c)
{
	json_t *o = json_object(), *vals = json_array();

	json_object_set_new(o, "kind", json_string(c->kind ? c->kind : ""));
	json_object_set_new(o, "type", json_string(c->type ? c->type : ""));
	if (c->selector)
		json_object_set_new(o, "selector", json_string(c->selector));
	json_object_set_new(o, "status", json_string(dns_check_status_str(c->status)));
	json_object_set_new(o, "name", str_or_null(c->name));
	json_object_set_new(o, "expected", str_or_null(c->expected));
	json_object_set_new(o, "found", str_or_null(c->found));
	for (size_t i = 0; i < c->n_values; i++)
		json_array_append_new(vals, json_string(c->values[i]));
	json_object_set_new(o, "values", vals);
	json_object_set_new(o, "detail", str_or_null(c->detail));
	json_object_set_new(o, "dns", json_string(dns_status_str(c->dns_status)));
	return o;
}

struct json_t *dns_check_report_to_json(const struct dns_check_report *rep)
{
	json_t *o = json_object(), *dkim = json_array(), *dmarc;

	json_object_set_new(o, "domain", str_or_null(rep->domain));
	json_object_set_new(o, "org_domain", str_or_null(rep->org_domain));
	json_object_set_new(o, "spf", check_to_json(&rep->spf));
	json_object_set_new(json_object_get(o, "spf"), "lookups", json_integer(rep->spf_lookups));
	json_object_set_new(json_object_get(o, "spf"), "void_lookups",
	                    json_integer(rep->spf_void_lookups));
	for (size_t i = 0; i < rep->n_dkim; i++)
		json_array_append_new(dkim, check_to_json(&rep->dkim[i]));
	json_object_set_new(o, "dkim", dkim);
	json_object_set_new(o, "return_path", check_to_json(&rep->return_path));
	dmarc = check_to_json(&rep->dmarc);
	json_object_set_new(dmarc, "policy", str_or_null(rep->dmarc_policy));
	json_object_set_new(dmarc, "rua", str_or_null(rep->dmarc_rua));
	json_object_set_new(dmarc, "found_at", str_or_null(rep->dmarc_found_at));
	json_object_set_new(o, "dmarc", dmarc);
	return o;
}

static char *get_str(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	return json_is_string(v) ? xstrdup(json_string_value(v)) : NULL;
}

/* The index of s in names[n], or -1. */
static int lookup_name(const char *const *names, size_t n, const char *s)
{
	for (size_t i = 0; s && i < n; i++)
		if (strcmp(names[i], s) == 0)
			return (int)i;
	return -1;
}

static const char *static_kind(const char *s)
{
	static const char *const kinds[] = {"spf", "dkim", "return_path", "dmarc"};
	int i = lookup_name(kinds, ARRAY_LEN(kinds), s);

	return i < 0 ? NULL : kinds[i];
}

static const char *static_type(const char *s)
{
	static const char *const types[] = {"TXT", "CNAME"};
	int i = lookup_name(types, ARRAY_LEN(types), s);

	return i < 0 ? NULL : types[i];
}

static int check_from_json(const json_t *o, struct dns_record_check *c)
{
	const json_t *vals;
	int st, ds;

	if (!json_is_object(o))
		return -1;
	c->kind = static_kind(json_string_value(json_object_get(o, "kind")));
	c->type = static_type(json_string_value(json_object_get(o, "type")));
	st = lookup_name(check_statuses, ARRAY_LEN(check_statuses),
	                 json_string_value(json_object_get(o, "status")));
	ds = lookup_name(dns_statuses, ARRAY_LEN(dns_statuses),
	                 json_string_value(json_object_get(o, "dns")));
	if (c->kind == NULL || st < 0)
		return -1;
	c->status = (enum dns_check_status)st;
	c->dns_status = ds < 0 ? DNS_ERROR : (enum dns_status)ds;
	c->selector = get_str(o, "selector");
	c->name = get_str(o, "name");
	c->expected = get_str(o, "expected");
	c->found = get_str(o, "found");
	c->detail = get_str(o, "detail");
	vals = json_object_get(o, "values");
	if (json_is_array(vals) && json_array_size(vals) > 0) {
		c->values = xcalloc(json_array_size(vals), sizeof(*c->values));
		for (size_t i = 0; i < json_array_size(vals); i++) {
			const char *v = json_string_value(json_array_get(vals, i));
			if (v)
				c->values[c->n_values++] = xstrdup(v);
		}
	}
	return 0;
}

int dns_check_report_from_json(const struct json_t *j, struct dns_check_report *rep)
{
	const json_t *dkim, *spf, *dmarc;

	memset(rep, 0, sizeof(*rep));
	if (!json_is_object(j))
		return -1;
	rep->domain = get_str(j, "domain");
	rep->org_domain = get_str(j, "org_domain");
	spf = json_object_get(j, "spf");
	dmarc = json_object_get(j, "dmarc");
	dkim = json_object_get(j, "dkim");
	if (rep->domain == NULL || check_from_json(spf, &rep->spf) < 0 ||
	    check_from_json(json_object_get(j, "return_path"), &rep->return_path) < 0 ||
	    check_from_json(dmarc, &rep->dmarc) < 0 || !json_is_array(dkim))
		goto fail;
	rep->spf_lookups = (int)json_integer_value(json_object_get(spf, "lookups"));
	rep->spf_void_lookups = (int)json_integer_value(json_object_get(spf, "void_lookups"));
	rep->dmarc_policy = get_str(dmarc, "policy");
	rep->dmarc_rua = get_str(dmarc, "rua");
	rep->dmarc_found_at = get_str(dmarc, "found_at");
	rep->dkim = xcalloc(json_array_size(dkim) + 1, sizeof(*rep->dkim));
	for (size_t i = 0; i < json_array_size(dkim); i++) {
		if (check_from_json(json_array_get(dkim, i), &rep->dkim[i]) < 0) {
			rep->n_dkim = i + 1;
			goto fail;
		}
		rep->n_dkim = i + 1;
	}
	return 0;
fail:
	dns_check_report_clear(rep);
	return -1;
}

struct json_t *dns_publish_set_to_json(const struct dns_publish_set *s)
{
	json_t *o = json_object(), *recs = json_array();

	json_object_set_new(o, "domain", str_or_null(s->domain));
	json_object_set_new(o, "zone", str_or_null(s->zone));
	for (size_t i = 0; i < s->n; i++) {
		const struct dns_publish *r = &s->recs[i];
		json_t *x = json_object();

		json_object_set_new(x, "kind", json_string(r->kind));
		json_object_set_new(x, "type", json_string(r->type));
		if (r->selector)
			json_object_set_new(x, "selector", json_string(r->selector));
		json_object_set_new(x, "name", json_string(r->name));
		json_object_set_new(x, "relative_name", json_string(r->rel_name));
		json_object_set_new(x, "value", json_string(r->value));
		json_object_set_new(x, "current", str_or_null(r->current));
		json_object_set_new(x, "action", json_string(dns_action_str(r->action)));
		json_array_append_new(recs, x);
	}
	json_object_set_new(o, "records", recs);
	return o;
}

/* ---- words ------------------------------------------------------------- */

/* The check that goes with a record to publish, if any. */
static const struct dns_record_check *check_for(const struct dns_check_report *rep,
                                                const struct dns_publish *r)
{
	if (rep == NULL)
		return NULL;
	if (strcmp(r->kind, "spf") == 0)
		return &rep->spf;
	if (strcmp(r->kind, "return_path") == 0)
		return &rep->return_path;
	if (strcmp(r->kind, "dmarc") == 0)
		return &rep->dmarc;
	for (size_t i = 0; i < rep->n_dkim; i++)
		if (r->selector && rep->dkim[i].selector &&
		    strcmp(rep->dkim[i].selector, r->selector) == 0)
			return &rep->dkim[i];
	return NULL;
}

static int explain_one(const struct dns_publish *r, const struct dns_record_check *c,
                       const char *zone, int step, struct buf *out)
{
	const char *what = strcmp(r->kind, "spf") == 0     ? "SPF"
	                   : strcmp(r->kind, "dkim") == 0  ? "DKIM"
	                   : strcmp(r->kind, "dmarc") == 0 ? "DMARC"
	                                                   : "Return path";

	if (c && c->status == DNS_CHECK_VERIFIED && r->action == DNS_ACTION_NONE)
		return 0;
	if (r->action == DNS_ACTION_NONE && (c == NULL || strcmp(r->kind, "dmarc") == 0))
		return 0;
	buf_printf(out, "%d. %s%s%s: ", step, what, r->selector ? " selector " : "",
	           r->selector ? r->selector : "");
	if (c && c->detail && c->status != DNS_CHECK_VERIFIED)
		buf_printf(out, "%s. ", c->detail);
	switch (r->action) {
	case DNS_ACTION_ADD:
		buf_printf(out,
		           "Add a %s record named %s (\"%s\" in the %s zone) with the value "
		           "%s%s%s.\n",
		           r->type, r->name, r->rel_name, zone,
		           strcmp(r->type, "TXT") == 0 ? "\"" : "", r->value,
		           strcmp(r->type, "TXT") == 0 ? "\"" : "");
		break;
	case DNS_ACTION_REPLACE:
		buf_printf(out, "Replace the %s record of %s (now \"%s\") with \"%s\"%s.\n",
		           r->type, r->name, r->current ? r->current : "", r->value,
		           strcmp(r->kind, "spf") == 0 ? "; keep exactly one SPF record" : "");
		break;
	case DNS_ACTION_NONE:
		buf_printf(out, "The record is in place; fix what is described above.\n");
		break;
	}
	return 1;
}

int dns_publish_explain(const struct dns_publish_set *s, const struct dns_check_report *rep,
                        struct buf *out)
{
	static const char *const order[] = {"spf", "dkim", "return_path", "dmarc"};
	int step = 0;

	for (size_t k = 0; k < ARRAY_LEN(order); k++)
		for (size_t i = 0; i < s->n; i++) {
			const struct dns_publish *r = &s->recs[i];

			if (strcmp(r->kind, order[k]) != 0)
				continue;
			if (explain_one(r, check_for(rep, r), s->zone, step + 1, out))
				step++;
		}
	return step;
}
