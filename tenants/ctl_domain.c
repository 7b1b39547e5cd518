/*
 * ctl_domain: `sendgatectl domain add|list|show|verify`. Adding a domain
 * is a short pipeline (check, insert the domain and its DKIM keys in one
 * transaction, print the records to publish); `domain show` builds one
 * JSON description of the domain that the text output is printed from:
 * the domain, its DKIM keys, every record to publish with the status the
 * last DNS check found, and what to do next. `domain verify` is in
 * ctl_verify.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "tenants/ctl.h"

static const char usage[] =
    "domain add TENANT DOMAIN [--dkim-mode cname|txt] [--algorithm rsa|ed25519|both]"
    " [--operator-verified [--note TEXT]] | domain list [TENANT] | domain show DOMAIN"
    " | domain verify DOMAIN";
static const char usage_add[] =
    "domain add TENANT DOMAIN [--dkim-mode cname|txt] [--algorithm rsa|ed25519|both]"
    " [--operator-verified [--note TEXT]]";

#define NOTE_MAX 1000

/* One `domain add`, from the command line to the printed answer. */
struct domain_add {
	const char *tenant;
	char name[254];
	int operator_verified;
	const char *note;      /* NULL when not given */
	const char *dkim_mode; /* "cname" or "txt" */
	int algs;              /* CTL_ALG_* mask */
	unsigned char mkey[32];
	/* filled by domain_add_insert */
	char tenant_id[24];
	char id[24];
	char state[32];
	char created_at[40];
};

/* Refuses notes that cannot be stored as text or shown as JSON. NULL or a sentence. */
static const char *note_problem(const char *note)
{
	const unsigned char *p;

	if (strlen(note) > NOTE_MAX)
		return "the note is longer than 1000 bytes";
	if (!ctl_utf8_valid(note))
		return "the note is not valid UTF-8";
	for (p = (const unsigned char *)note; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return "the note must not contain control characters";
	return NULL;
}

/*
 * Inserts the domain (and, for an operator-verified one, the event that
 * records who vouched for it and why) inside the caller's transaction.
 * CTL_OK, or CTL_FAIL with the error printed.
 */
static int domain_add_insert(struct ctl *c, struct domain_add *da)
{
	const char *owner_params[1] = {da->name};
	const char *ins_params[5] = {da->tenant_id, da->name, da->operator_verified ? "t" : "f",
	                             da->note, da->dkim_mode};
	const char *ev_params[2];
	char state[6], *data;
	json_t *doc;
	PGresult *r;

	if (ctl_tenant_id(c, da->tenant, da->tenant_id) == -1)
		return CTL_FAIL;
	r = ctl_exec(c, "adding the domain",
	             "INSERT INTO domains (tenant_id, name, operator_verified, operator_note,"
	             " dkim_mode) VALUES ($1, $2, $3::boolean, $4, $5)"
	             " RETURNING id, state, " CTL_SQL_TIME("created_at"),
	             5, ins_params, "23505", state);
	if (r == NULL && strcmp(state, "23505") == 0) {
		/* The transaction is aborted now; the caller rolls it back. */
		PQclear(PQexec(ctl_db(c), "ROLLBACK"));
		r = ctl_exec(c, "looking up the domain",
		             "SELECT t.name FROM domains d JOIN tenants t ON t.id = d.tenant_id"
		             " WHERE d.name = $1",
		             1, owner_params, NULL, NULL);
		if (r && PQntuples(r) > 0)
			ctl_error("domain %s already belongs to tenant %s", da->name,
			          PQgetvalue(r, 0, 0));
		else if (r)
			ctl_error("domain %s was added and removed concurrently; try again",
			          da->name);
		PQclear(r);
		return CTL_FAIL;
	}
	if (r == NULL)
		return CTL_FAIL;
	snprintf(da->id, sizeof(da->id), "%s", PQgetvalue(r, 0, 0));
	snprintf(da->state, sizeof(da->state), "%s", PQgetvalue(r, 0, 1));
	snprintf(da->created_at, sizeof(da->created_at), "%s", PQgetvalue(r, 0, 2));
	PQclear(r);

	if (!da->operator_verified)
		return CTL_OK;
	doc = json_pack("{s:s, s:s?}", "domain", da->name, "note", da->note);
	data = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(doc);
	if (data == NULL)
		abort();
	ev_params[0] = da->tenant_id;
	ev_params[1] = data;
	r = ctl_exec(c, "recording the operator verification",
	             "INSERT INTO events (type, tenant_id, data)"
	             " VALUES ('domain.operator_verified', $1, $2::jsonb)",
	             2, ev_params, NULL, NULL);
	free(data);
	if (r == NULL)
		return CTL_FAIL;
	PQclear(r);
	return CTL_OK;
}

/*
 * Generates the new domain's keys, one per algorithm on the first selector
 * of its pair, signing from now (the second selector waits for `dkim
 * rotate`), and stores them sealed inside the caller's transaction.
 * CTL_OK, or CTL_FAIL with the error printed.
 */
static int domain_add_keys(struct ctl *c, struct domain_add *da)
{
	static const struct {
		int bit;
		const char *alg;
	} algs[] = {{CTL_ALG_RSA, "rsa"}, {CTL_ALG_ED25519, "ed25519"}};
	struct ctl_dkim_newkey nk;
	size_t i;
	int rc = CTL_OK;

	for (i = 0; i < ARRAY_LEN(algs) && rc == CTL_OK; i++) {
		if (!(da->algs & algs[i].bit))
			continue;
		ctl_dkim_newkey_init(&nk);
		snprintf(nk.selector, sizeof(nk.selector), "%s", ctl_dkim_selector(algs[i].alg, 1));
		if (ctl_dkim_newkey_generate(c, algs[i].alg, da->name, da->mkey, &nk) == -1 ||
		    ctl_dkim_key_insert(c, da->id, &nk, 0, 0, NULL) == -1)
			rc = CTL_FAIL;
		ctl_dkim_newkey_free(&nk);
	}
	return rc;
}

/*
 * Prints what was added, the DKIM records and the other records to publish
 * (recs and dns are consumed).
 */
static void domain_add_print(struct ctl *c, const struct domain_add *da, json_t *recs, json_t *dns)
{
	if (c->json) {
		ctl_json_print(
		    json_pack("{s:o, s:s, s:s, s:s, s:b, s:s?, s:s, s:s, s:o, s:O, s:O, s:O}", "id",
		              ctl_json_int(da->id), "name", da->name, "tenant", da->tenant, "state",
		              da->state, "operator_verified", da->operator_verified,
		              "operator_note", da->note, "created_at", da->created_at, "dkim_mode",
		              da->dkim_mode, "dkim", recs, "zone", json_object_get(dns, "zone"),
		              "records", json_object_get(dns, "records"), "next_steps",
		              json_object_get(dns, "next_steps")));
		json_decref(dns);
		return;
	}
	printf("added domain %s to tenant %s (state %s%s)\n", da->name, da->tenant, da->state,
	       da->operator_verified ? ", operator-verified" : "");
	ctl_dkim_records_print(recs, da->name, da->dkim_mode, stdout);
	printf("SPF, return path and DMARC: publish these records in the %s zone:\n",
	       json_string_value(json_object_get(dns, "zone")));
	ctl_dns_records_print(dns, "spf,return_path,dmarc", stdout);
	printf("If %s already has an SPF record, add include:%s to it instead of publishing a "
	       "second one; after the first check 'sendgatectl domain show %s' proposes the "
	       "merged record.\n",
	       da->name, c->cfg.platform_spf_include, da->name);
	json_decref(recs);
	json_decref(dns);
}

static int domain_add(struct ctl *c, int argc, char **argv)
{
	struct domain_add da;
	const char *pos[2], *why, *algopt = NULL;
	json_t *recs = NULL, *dns = NULL;
	int npos = 0, i, rc;

	memset(&da, 0, sizeof(da));
	da.dkim_mode = "cname";
	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--dkim-mode") == 0) {
			if (i + 1 >= argc)
				return ctl_usage(usage_add, "--dkim-mode needs cname or txt");
			da.dkim_mode = argv[++i];
		} else if (strcmp(argv[i], "--algorithm") == 0) {
			if (i + 1 >= argc)
				return ctl_usage(usage_add,
				                 "--algorithm needs rsa, ed25519 or both");
			algopt = argv[++i];
		} else if (strcmp(argv[i], "--operator-verified") == 0) {
			da.operator_verified = 1;
		} else if (strcmp(argv[i], "--note") == 0) {
			if (i + 1 >= argc)
				return ctl_usage(usage_add, "--note needs a TEXT");
			da.note = argv[++i];
		} else if (strncmp(argv[i], "--note=", 7) == 0) {
			da.note = argv[i] + 7;
		} else if (argv[i][0] == '-') {
			return ctl_usage(usage_add, "unknown option \"%s\"", argv[i]);
		} else if (npos < 2) {
			pos[npos++] = argv[i];
		} else {
			return ctl_usage(usage_add, "too many arguments");
		}
	}
	if (npos != 2)
		return ctl_usage(usage_add, "domain add needs a TENANT and a DOMAIN");
	if (da.note && !da.operator_verified)
		return ctl_usage(usage_add, "--note is only for --operator-verified");
	if (strcmp(da.dkim_mode, "cname") != 0 && strcmp(da.dkim_mode, "txt") != 0)
		return ctl_usage(usage_add, "--dkim-mode must be cname or txt");
	if (algopt && ctl_dkim_algorithms(algopt) == 0)
		return ctl_usage(usage_add, "--algorithm must be rsa, ed25519 or both");
	if (strcmp(da.dkim_mode, "cname") == 0 &&
	    (c->cfg.platform_dkim_zone == NULL || c->cfg.platform_dkim_zone[0] == '\0')) {
		ctl_error("[platform] dkim_zone is not set: CNAME mode delegates to it (or use "
		          "--dkim-mode txt)");
		return CTL_FAIL;
	}
	da.algs = ctl_dkim_algorithms(algopt ? algopt : c->cfg.dkim_default_algorithm);
	if (da.algs == 0) {
		ctl_error("[dkim] default_algorithm must be rsa, ed25519 or both");
		return CTL_FAIL;
	}
	if (da.note && (why = note_problem(da.note)) != NULL) {
		ctl_error("invalid note: %s", why);
		return CTL_FAIL;
	}
	da.tenant = pos[0];
	if (ctl_domain_normalize(pos[1], da.name, sizeof(da.name), &why) == -1) {
		ctl_error("invalid domain \"%s\": %s", pos[1], why);
		return CTL_FAIL;
	}

	/* A platform must not take on a domain it cannot sign for. */
	if (ctl_dkim_master_key(c, da.mkey) == -1)
		return CTL_FAIL;
	if (ctl_run(c, "adding the domain", "BEGIN") == -1) {
		OPENSSL_cleanse(da.mkey, sizeof(da.mkey));
		return CTL_FAIL;
	}
	rc = domain_add_insert(c, &da);
	if (rc == CTL_OK)
		rc = domain_add_keys(c, &da);
	OPENSSL_cleanse(da.mkey, sizeof(da.mkey));
	if (rc == CTL_OK && (recs = ctl_dkim_records(c, da.id, da.name, da.dkim_mode)) == NULL)
		rc = CTL_FAIL;
	if (rc == CTL_OK && (dns = ctl_dns_records(c, da.id, da.name, da.dkim_mode, NULL)) == NULL)
		rc = CTL_FAIL;
	if (rc == CTL_OK && ctl_run(c, "adding the domain", "COMMIT") == -1)
		rc = CTL_FAIL;
	if (rc != CTL_OK) {
		if (c->db && PQtransactionStatus(c->db) != PQTRANS_IDLE)
			PQclear(PQexec(c->db, "ROLLBACK"));
		json_decref(recs);
		json_decref(dns);
		return rc;
	}
	domain_add_print(c, &da, recs, dns);
	return CTL_OK;
}

/* A domain with its tenant and its last check; the columns domain_describe reads. */
/* clang-format off */
static const char describe_sql[] =
    "SELECT d.id, d.name, t.name, d.state, d.operator_verified, d.operator_note, d.dkim_mode, "
    CTL_SQL_TIME("d.created_at") ", "
    CTL_SQL_TIME("d.state_changed_at") ", "
    CTL_SQL_TIME("d.broken_since") ", "
    "d.return_path_verified, d.failing_records, v.last_report::text, "
    CTL_SQL_TIME("v.last_checked_at") ", "
    CTL_SQL_TIME("v.next_check_at") ", "
    "v.checks"
    " FROM domains d JOIN tenants t ON t.id = d.tenant_id"
    " LEFT JOIN domain_verify v ON v.domain_id = d.id"
    " WHERE d.name = $1";
/* clang-format on */

#define HISTORY_MAX "10"

/*
 * The domain's last DNS checks that changed something (newest first), as
 * a new array of {checked_at, origin, previous_state, state, records}.
 * NULL with the error printed.
 */
static json_t *domain_history(struct ctl *c, const char *domain_id)
{
	const char *params[1] = {domain_id};
	json_t *arr;
	PGresult *r;
	int i;

	r = ctl_exec(c, "reading the check history",
	             "SELECT " CTL_SQL_TIME("checked_at") ", origin, previous_state, state, summary"
	                                                  " FROM domain_checks WHERE domain_id = $1"
	                                                  " ORDER BY id DESC LIMIT " HISTORY_MAX,
	             1, params, NULL, NULL);
	if (r == NULL)
		return NULL;
	arr = json_array();
	for (i = 0; i < PQntuples(r); i++)
		json_array_append_new(
		    arr,
		    json_pack("{s:s, s:s, s:s, s:s, s:s}", "checked_at", PQgetvalue(r, i, 0),
		              "origin", PQgetvalue(r, i, 1), "previous_state", PQgetvalue(r, i, 2),
		              "state", PQgetvalue(r, i, 3), "records", PQgetvalue(r, i, 4)));
	PQclear(r);
	return arr;
}

/* The stored report of the last check (a new reference), or NULL when there is none. */
static json_t *last_report(const PGresult *r, int col)
{
	if (PQgetisnull(r, 0, col))
		return NULL;
	return json_loads(PQgetvalue(r, 0, col), 0, NULL);
}

/*
 * Describes one domain as a new JSON object: name, tenant, state,
 * operator_verified, operator_note, dkim_mode, created_at,
 * state_changed_at, broken_since, return_path_verified, failing_records,
 * "dkim" (the DKIM keys' records), "verification" (last_checked_at,
 * next_check_at, checks, report: the last check's per-record statuses),
 * and the records to publish with their last status (zone, records,
 * next_steps: see ctl_dns_records). NULL with the error printed.
 */
static json_t *domain_describe(struct ctl *c, const char *arg)
{
	char name[254];
	const char *params[1] = {name};
	const char *why;
	json_t *obj, *recs, *report, *dns, *hist;
	PGresult *r;

	if (ctl_domain_normalize(arg, name, sizeof(name), &why) == -1) {
		ctl_error("no domain named \"%s\"", arg);
		return NULL;
	}
	r = ctl_exec(c, "reading the domain", describe_sql, 1, params, NULL, NULL);
	if (r == NULL)
		return NULL;
	if (PQntuples(r) == 0) {
		ctl_error("no domain named \"%s\"", name);
		PQclear(r);
		return NULL;
	}
	recs = ctl_dkim_records(c, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 6));
	if (recs == NULL) {
		PQclear(r);
		return NULL;
	}
	report = last_report(r, 12);
	dns = ctl_dns_records(c, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 6),
	                      report);
	if (dns == NULL) {
		json_decref(recs);
		json_decref(report);
		PQclear(r);
		return NULL;
	}
	obj = json_pack(
	    "{s:o, s:s, s:s, s:s, s:b, s:o, s:s, s:s, s:s, s:o, s:b, s:o, s:o, s:{s:o, s:o, s:o, "
	    "s:o}, s:O, s:O, s:O}",
	    "id", ctl_json_int(PQgetvalue(r, 0, 0)), "name", PQgetvalue(r, 0, 1), "tenant",
	    PQgetvalue(r, 0, 2), "state", PQgetvalue(r, 0, 3), "operator_verified",
	    ctl_pq_bool(r, 0, 4), "operator_note", ctl_json_str_or_null(r, 0, 5), "dkim_mode",
	    PQgetvalue(r, 0, 6), "created_at", PQgetvalue(r, 0, 7), "state_changed_at",
	    PQgetvalue(r, 0, 8), "broken_since", ctl_json_str_or_null(r, 0, 9),
	    "return_path_verified", ctl_pq_bool(r, 0, 10), "failing_records",
	    ctl_json_str_or_null(r, 0, 11), "dkim", recs, "verification", "last_checked_at",
	    ctl_json_str_or_null(r, 0, 13), "next_check_at", ctl_json_str_or_null(r, 0, 14),
	    "checks", PQgetisnull(r, 0, 15) ? json_integer(0) : ctl_json_int(PQgetvalue(r, 0, 15)),
	    "report", report ? report : json_null(), "zone", json_object_get(dns, "zone"),
	    "records", json_object_get(dns, "records"), "next_steps",
	    json_object_get(dns, "next_steps"));
	json_decref(dns);
	if (obj == NULL)
		abort();
	hist = domain_history(c, PQgetvalue(r, 0, 0));
	PQclear(r);
	if (hist == NULL) {
		json_decref(obj);
		return NULL;
	}
	json_object_set_new(obj, "history", hist);
	return obj;
}

/* Prints the check history: one line per change, newest first. */
static void domain_history_print(const json_t *hist, FILE *fp)
{
	static const char *const head[] = {"CHECKED", "BY", "STATE", "RECORDS"};
	const json_t *e;
	struct table t;
	size_t i;

	if (json_array_size(hist) == 0)
		return;
	fprintf(fp, "Recent DNS checks that changed something:\n");
	table_init(&t, ARRAY_LEN(head), head);
	json_array_foreach(hist, i, e)
	{
		char state[64];
		const char *from = json_string_value(json_object_get(e, "previous_state"));
		const char *to = json_string_value(json_object_get(e, "state"));

		if (strcmp(from, to) == 0)
			snprintf(state, sizeof(state), "%s", to);
		else
			snprintf(state, sizeof(state), "%s -> %s", from, to);
		{
			const char *row[] = {json_string_value(json_object_get(e, "checked_at")),
			                     json_string_value(json_object_get(e, "origin")), state,
			                     json_string_value(json_object_get(e, "records"))};
			table_add(&t, row);
		}
	}
	table_print(&t, fp);
	table_free(&t);
}

/* Prints a domain_describe object for people. */
static void domain_show_text(const json_t *obj, FILE *fp)
{
	const json_t *note = json_object_get(obj, "operator_note");
	const json_t *ver = json_object_get(obj, "verification");
	const json_t *v;
	const char *name = json_string_value(json_object_get(obj, "name"));

	fprintf(fp, "domain:             %s\n", name);
	fprintf(fp, "tenant:             %s\n", json_string_value(json_object_get(obj, "tenant")));
	fprintf(fp, "state:              %s\n", json_string_value(json_object_get(obj, "state")));
	if (json_is_string(v = json_object_get(obj, "broken_since")))
		fprintf(fp, "broken since:       %s\n", json_string_value(v));
	if (json_is_string(v = json_object_get(obj, "failing_records")))
		fprintf(fp, "failing records:    %s\n", json_string_value(v));
	fprintf(fp, "operator verified:  %s\n",
	        json_is_true(json_object_get(obj, "operator_verified")) ? "yes" : "no");
	if (json_is_string(note))
		fprintf(fp, "operator note:      %s\n", json_string_value(note));
	fprintf(fp, "dkim mode:          %s\n",
	        json_string_value(json_object_get(obj, "dkim_mode")));
	fprintf(fp, "return path:        %s\n",
	        json_is_true(json_object_get(obj, "return_path_verified")) ? "verified"
	                                                                   : "not verified");
	fprintf(fp, "created:            %s\n",
	        json_string_value(json_object_get(obj, "created_at")));
	fprintf(fp, "state changed:      %s\n",
	        json_string_value(json_object_get(obj, "state_changed_at")));
	if (json_is_string(v = json_object_get(ver, "last_checked_at")))
		fprintf(fp, "last DNS check:     %s\n", json_string_value(v));
	else
		fprintf(fp, "last DNS check:     never\n");
	if (json_is_string(v = json_object_get(ver, "next_check_at")))
		fprintf(fp, "next DNS check:     %s\n", json_string_value(v));
	ctl_dkim_records_print(json_object_get(obj, "dkim"), name,
	                       json_string_value(json_object_get(obj, "dkim_mode")), fp);
	fprintf(fp, "DNS records to publish in the %s zone%s:\n",
	        json_string_value(json_object_get(obj, "zone")),
	        json_is_object(json_object_get(ver, "report")) ? ", with what the last check found"
	                                                       : "");
	ctl_dns_records_print(obj, NULL, fp);
	domain_history_print(json_object_get(obj, "history"), fp);
}

static int domain_show(struct ctl *c, const char *name)
{
	json_t *obj = domain_describe(c, name);

	if (obj == NULL)
		return CTL_FAIL;
	if (c->json)
		return ctl_json_print(obj);
	domain_show_text(obj, stdout);
	json_decref(obj);
	return CTL_OK;
}

static int domain_list(struct ctl *c, const char *tenant)
{
	static const char *const head[] = {"NAME", "TENANT", "STATE", "OPERATOR_VERIFIED",
	                                   "CREATED"};
	char id[24];
	const char *params[1] = {id};
	struct table t;
	json_t *arr;
	PGresult *r;
	int i;

	if (tenant && ctl_tenant_id(c, tenant, id) == -1)
		return CTL_FAIL;
	r = ctl_exec(c, "listing domains",
	             "SELECT d.name, t.name, d.state, d.operator_verified, " CTL_SQL_TIME(
	                 "d.created_at") ", d.dkim_mode"
	                                 " FROM domains d JOIN tenants t ON t.id = d.tenant_id"
	                                 " WHERE $1::bigint IS NULL OR d.tenant_id = $1::bigint"
	                                 " ORDER BY d.name",
	             1, tenant ? params : (const char *const[]){NULL}, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	if (c->json) {
		arr = json_array();
		for (i = 0; i < PQntuples(r); i++)
			json_array_append_new(
			    arr,
			    json_pack("{s:s, s:s, s:s, s:b, s:s, s:s}", "name", PQgetvalue(r, i, 0),
			              "tenant", PQgetvalue(r, i, 1), "state", PQgetvalue(r, i, 2),
			              "operator_verified", ctl_pq_bool(r, i, 3), "created_at",
			              PQgetvalue(r, i, 4), "dkim_mode", PQgetvalue(r, i, 5)));
		ctl_json_print(arr);
	} else if (PQntuples(r) == 0) {
		printf("no domains\n");
	} else {
		table_init(&t, ARRAY_LEN(head), head);
		for (i = 0; i < PQntuples(r); i++) {
			const char *row[] = {
			    PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
			    ctl_pq_bool(r, i, 3) ? "yes" : "no", PQgetvalue(r, i, 4)};
			table_add(&t, row);
		}
		table_print(&t, stdout);
		table_free(&t);
	}
	PQclear(r);
	return CTL_OK;
}

int ctl_cmd_domain(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage(usage, "domain needs a subcommand");
	if (strcmp(argv[1], "add") == 0)
		return domain_add(c, argc, argv);
	if (strcmp(argv[1], "list") == 0) {
		if (argc > 3)
			return ctl_usage("domain list [TENANT]",
			                 "domain list takes at most a TENANT");
		return domain_list(c, argc == 3 ? argv[2] : NULL);
	}
	if (strcmp(argv[1], "show") == 0) {
		if (argc != 3)
			return ctl_usage("domain show DOMAIN", "domain show takes one DOMAIN");
		return domain_show(c, argv[2]);
	}
	if (strcmp(argv[1], "verify") == 0)
		return ctl_domain_verify(c, argc, argv);
	return ctl_usage(usage, "unknown domain subcommand \"%s\"", argv[1]);
}
