/*
 * ctl_verify: `sendgatectl domain verify DOMAIN`, and the DNS part of
 * `domain show` and `domain add`: the records a customer publishes (SPF
 * merged with one already there, DKIM, return path, DMARC), each with what
 * the last check found, and what to do next in the guide's order. The
 * check itself is the runner the daemon uses (tenants/verify.c), on a
 * private event loop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "dns/dns.h"
#include "tenants/ctl.h"
#include "tenants/tenants.h"

static const char usage_verify[] = "domain verify DOMAIN";

/* The check in report (a dns_check_report_to_json object) that goes with a record to publish. */
static const json_t *check_of(const json_t *report, const json_t *rec)
{
	const char *kind = json_string_value(json_object_get(rec, "kind"));
	const char *sel = json_string_value(json_object_get(rec, "selector"));
	const json_t *e;
	size_t i;

	if (report == NULL || kind == NULL)
		return NULL;
	if (strcmp(kind, "dkim") != 0)
		return json_object_get(report, kind);
	json_array_foreach(json_object_get(report, "dkim"), i, e)
	{
		const char *s = json_string_value(json_object_get(e, "selector"));

		if (sel && s && strcmp(s, sel) == 0)
			return e;
	}
	return NULL;
}

/* 1 when line (of len n) starts a numbered step: "12. ". */
static int starts_step(const char *line, size_t n)
{
	size_t i = 0;

	while (i < n && line[i] >= '0' && line[i] <= '9')
		i++;
	return i > 0 && i + 1 < n && line[i] == '.' && line[i + 1] == ' ';
}

/*
 * Splits dns_publish_explain's text into one string per numbered step (a
 * step may span lines: "now" may quote several records found).
 */
static json_t *steps_array(const char *text)
{
	json_t *arr = json_array(), *last = NULL;
	const char *p = text, *nl;
	struct buf b;

	buf_init(&b, (size_t)-1);
	while (p && *p) {
		size_t n;

		nl = strchr(p, '\n');
		if (nl == NULL)
			nl = p + strlen(p);
		n = (size_t)(nl - p);
		if (starts_step(p, n) || last == NULL) {
			last = json_stringn(p, n);
			json_array_append_new(arr, last);
		} else if (n > 0) {
			buf_reset(&b);
			buf_puts(&b, json_string_value(last));
			buf_puts(&b, "\n");
			buf_append(&b, p, n);
			json_string_setn(last, b.data, b.len);
		}
		p = *nl ? nl + 1 : nl;
	}
	buf_free(&b);
	return arr;
}

json_t *ctl_dns_records(struct ctl *c, const char *domain_id, const char *domain, const char *mode,
                        const json_t *report)
{
	struct dns_check_report rep, *found = NULL;
	struct dns_publish_set set;
	struct verify_platform *vp;
	struct buf steps;
	json_t *doc, *recs, *rec;
	char err[512];
	size_t i;
	PGconn *db = ctl_db(c);

	if (db == NULL)
		return NULL;
	vp = verify_platform_load(db, &c->cfg, strtoll(domain_id, NULL, 10), domain, mode, err,
	                          sizeof(err));
	if (vp == NULL) {
		ctl_error("%s", err);
		return NULL;
	}
	if (report && !json_is_null(report)) {
		if (dns_check_report_from_json(report, &rep) == 0)
			found = &rep;
	}
	if (dns_records_compute(domain, verify_platform_dns(vp), found, &set) == -1) {
		ctl_error("%s is not a domain name records can be computed for", domain);
		if (found)
			dns_check_report_clear(found);
		verify_platform_free(vp);
		return NULL;
	}
	doc = dns_publish_set_to_json(&set);
	recs = json_object_get(doc, "records");
	json_array_foreach(recs, i, rec)
	{
		const json_t *chk = found ? check_of(report, rec) : NULL;

		json_object_set_new(
		    rec, "status", chk ? json_incref(json_object_get(chk, "status")) : json_null());
		json_object_set_new(rec, "found",
		                    chk ? json_incref(json_object_get(chk, "found")) : json_null());
		json_object_set_new(
		    rec, "detail", chk ? json_incref(json_object_get(chk, "detail")) : json_null());
	}
	buf_init(&steps, (size_t)-1);
	dns_publish_explain(&set, found, &steps);
	json_object_set_new(doc, "next_steps", steps_array(steps.data));
	buf_free(&steps);
	dns_publish_set_free(&set);
	if (found)
		dns_check_report_clear(found);
	verify_platform_free(vp);
	return doc;
}

/* "dkim sg1" for a DKIM record, else the kind. */
static void record_label(const json_t *rec, char *out, size_t outlen)
{
	const char *sel = json_string_value(json_object_get(rec, "selector"));

	snprintf(out, outlen, "%s%s%s", json_string_value(json_object_get(rec, "kind")),
	         sel ? " " : "", sel ? sel : "");
}

static const char *str_or_dash(const json_t *v)
{
	return json_is_string(v) ? json_string_value(v) : "-";
}

/* Prints the next steps, continuation lines indented under their step. */
static void steps_print(const json_t *steps, FILE *fp)
{
	const json_t *step;
	size_t i;

	fprintf(fp, "What to do next:\n");
	json_array_foreach(steps, i, step)
	{
		const char *p = json_string_value(step), *nl;

		fputs("  ", fp);
		while ((nl = strchr(p, '\n')) != NULL) {
			fprintf(fp, "%.*s\n       ", (int)(nl - p), p);
			p = nl + 1;
		}
		fprintf(fp, "%s\n", p);
	}
}

void ctl_dns_records_print(const json_t *dns, const char *only_kinds, FILE *fp)
{
	static const char *const head[] = {"RECORD", "TYPE", "NAME", "VALUE", "STATUS"};
	const json_t *rec;
	struct table t;
	size_t i;

	table_init(&t, ARRAY_LEN(head), head);
	json_array_foreach(json_object_get(dns, "records"), i, rec)
	{
		const char *kind = json_string_value(json_object_get(rec, "kind"));
		char label[96];

		if (only_kinds && strstr(only_kinds, kind) == NULL)
			continue;
		record_label(rec, label, sizeof(label));
		{
			const char *row[] = {label, json_string_value(json_object_get(rec, "type")),
			                     json_string_value(json_object_get(rec, "name")),
			                     json_string_value(json_object_get(rec, "value")),
			                     str_or_dash(json_object_get(rec, "status"))};
			table_add(&t, row);
		}
	}
	table_print(&t, fp);
	table_free(&t);
	if (json_array_size(json_object_get(dns, "next_steps")) == 0)
		return;
	steps_print(json_object_get(dns, "next_steps"), fp);
}

/* Prints the outcome of one `domain verify` for people. */
static void verify_print(const struct verify_result *vr, const json_t *dns, const char *required,
                         FILE *fp)
{
	static const char *const head[] = {"RECORD", "NAME", "STATUS", "DETAIL"};
	const json_t *rep = vr->report, *e;
	const char *parts[] = {"spf", "dkim", "return_path", "dmarc"};
	char next[16];
	struct table t;
	size_t i, k;

	if (strcmp(vr->previous_state, vr->state) != 0)
		fprintf(fp, "%s: %s (was %s)\n", vr->domain, vr->state, vr->previous_state);
	else
		fprintf(fp, "%s: %s (unchanged)\n", vr->domain, vr->state);
	table_init(&t, ARRAY_LEN(head), head);
	for (k = 0; k < ARRAY_LEN(parts); k++) {
		const json_t *v = json_object_get(rep, parts[k]);
		size_t n = json_is_array(v) ? json_array_size(v) : 1;

		for (i = 0; i < n; i++) {
			char label[96];

			e = json_is_array(v) ? json_array_get(v, i) : v;
			record_label(e, label, sizeof(label));
			{
				const char *row[] = {label, str_or_dash(json_object_get(e, "name")),
				                     str_or_dash(json_object_get(e, "status")),
				                     str_or_dash(json_object_get(e, "detail"))};
				table_add(&t, row);
			}
		}
	}
	table_print(&t, fp);
	table_free(&t);
	fprintf(fp, "required (%s): %d of %d verified%s\n", required, vr->ok, vr->total,
	        vr->inconclusive ? "; DNS failures hid the rest, state kept" : "");
	if (vr->failing)
		fprintf(fp, "failing: %s\n", vr->failing);
	ctl_format_age(vr->next_check_in, next, sizeof(next));
	fprintf(fp, "next scheduled check in %s\n", next);
	if (dns && json_array_size(json_object_get(dns, "next_steps")) > 0)
		steps_print(json_object_get(dns, "next_steps"), fp);
}

int ctl_domain_verify(struct ctl *c, int argc, char **argv)
{
	char name[254], err[512], id[24];
	const char *why;
	struct dns_config dc;
	struct event_base *base = NULL;
	struct dns_resolver *res = NULL;
	struct verifier *v = NULL;
	struct verify_result vr;
	json_t *dns = NULL, *doc;
	PGresult *r;
	const char *params[1] = {name};
	int rc = CTL_FAIL;

	memset(&vr, 0, sizeof(vr));
	if (argc != 3)
		return ctl_usage(usage_verify, "domain verify takes one DOMAIN");
	if (ctl_domain_normalize(argv[2], name, sizeof(name), &why) == -1 ||
	    !dns_domain_is_valid(name)) {
		ctl_error("no domain named \"%s\"", argv[2]);
		return CTL_FAIL;
	}
	if (ctl_db(c) == NULL)
		return CTL_FAIL;
	memset(&dc, 0, sizeof(dc));
	dc.servers = c->cfg.dns_servers;
	dc.timeout_ms = c->cfg.dns_timeout_ms;
	dc.tries = c->cfg.dns_tries;
	base = event_base_new();
	if (base == NULL)
		abort();
	res = dns_resolver_new(base, &dc, err, sizeof(err));
	if (res == NULL) {
		ctl_error("[dns] servers: %s", err);
		goto out;
	}
	v = verifier_new(&c->cfg, base, res, err, sizeof(err));
	if (v == NULL) {
		ctl_error("%s", err);
		goto out;
	}
	if (verify_domain(v, ctl_db(c), name, &vr, err, sizeof(err)) == -1) {
		ctl_error("%s", err);
		goto out;
	}
	r = ctl_exec(c, "reading the domain", "SELECT id, dkim_mode FROM domains WHERE name = $1",
	             1, params, NULL, NULL);
	if (r == NULL)
		goto out;
	if (PQntuples(r) == 1) {
		snprintf(id, sizeof(id), "%s", PQgetvalue(r, 0, 0));
		dns = ctl_dns_records(c, id, name, PQgetvalue(r, 0, 1), vr.report);
	}
	PQclear(r);
	if (dns == NULL)
		goto out;
	if (c->json) {
		doc = json_pack(
		    "{s:s, s:s, s:s, s:b, s:s?, s:b, s:s, s:i, s:i, s:s?, s:I, s:O, s:O, "
		    "s:O, s:O}",
		    "domain", vr.domain, "previous_state", vr.previous_state, "state", vr.state,
		    "changed", strcmp(vr.previous_state, vr.state) != 0, "event", vr.event,
		    "inconclusive", vr.inconclusive, "required", c->cfg.verify_required,
		    "required_ok", vr.ok, "required_total", vr.total, "failing", vr.failing,
		    "next_check_in", (json_int_t)vr.next_check_in, "report", vr.report, "zone",
		    json_object_get(dns, "zone"), "records", json_object_get(dns, "records"),
		    "next_steps", json_object_get(dns, "next_steps"));
		if (doc == NULL)
			abort();
		ctl_json_print(doc);
	} else {
		verify_print(&vr, dns, c->cfg.verify_required, stdout);
	}
	rc = CTL_OK;
out:
	json_decref(dns);
	verify_result_clear(&vr);
	verifier_free(v);
	if (res)
		dns_resolver_free(res);
	if (base)
		event_base_free(base);
	return rc;
}
