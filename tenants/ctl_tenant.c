/*
 * ctl_tenant: `sendgatectl tenant create|list|show|set-limits|suspend|resume`.
 * A suspended tenant (suspended_at set, migration 007) gets 550 5.7.1 at
 * MAIL FROM and its queued mail waits until it is resumed; the tenants
 * trigger tells the running daemons.
 */
#include <stdio.h>
#include <string.h>

#include "tenants/ctl.h"

static const char usage[] = "tenant create NAME | tenant list | tenant show NAME\n"
                            "       sendgatectl tenant set-limits TENANT [--connections "
                            "N|default] [--messages-per-minute N|default]\n"
                            "       sendgatectl tenant suspend TENANT --reason TEXT\n"
                            "       sendgatectl tenant resume TENANT\n"
                            "       sendgatectl tenant stats [TENANT] [--window DURATION]";
static const char usage_set_limits[] =
    "tenant set-limits TENANT [--connections N|default] [--messages-per-minute N|default]";
static const char usage_suspend[] = "tenant suspend TENANT --reason TEXT";
static const char usage_resume[] = "tenant resume TENANT";

/* The largest limits, as for [smtp] tenant_max_connections and tenant_messages_per_minute. */
#define LIMIT_CONNECTIONS_MAX 1000000
#define LIMIT_MESSAGES_MAX 10000000
/* The schema's CHECK on tenants.suspended_reason, in characters. */
#define SUSPEND_REASON_MAX 200

/*
 * Reports an undefined column (42703): a database the migrations of this
 * sendgatectl have not reached yet (suspension came with 007).
 */
static void schema_hint(const char *what, const char *state)
{
	if (strcmp(state, "42703") == 0)
		ctl_error("%s: the database schema is older than this sendgatectl; run "
		          "'sendgatectl migrate'",
		          what);
}

/*
 * Copies s into out (outlen bytes) with control bytes as '?': text from
 * the database that goes to a terminal as it is.
 */
static const char *printable(const char *s, char *out, size_t outlen)
{
	size_t i;

	snprintf(out, outlen, "%s", s);
	for (i = 0; out[i]; i++)
		if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
			out[i] = '?';
	return out;
}

static int tenant_create(struct ctl *c, const char *name)
{
	const char *params[1] = {name};
	const char *why = ctl_tenant_name_problem(name);
	char state[6];
	PGresult *r;

	if (why) {
		ctl_error("invalid tenant name \"%s\": %s", name, why);
		return CTL_FAIL;
	}
	r = ctl_exec(c, "creating the tenant",
	             "INSERT INTO tenants (name) VALUES ($1)"
	             " RETURNING id, name, " CTL_SQL_TIME("created_at"),
	             1, params, "23505", state);
	if (r == NULL) {
		if (strcmp(state, "23505") == 0)
			ctl_error("tenant \"%s\" already exists", name);
		return CTL_FAIL;
	}
	if (c->json)
		ctl_json_print(json_pack("{s:o, s:s, s:s}", "id", ctl_json_int(PQgetvalue(r, 0, 0)),
		                         "name", PQgetvalue(r, 0, 1), "created_at",
		                         PQgetvalue(r, 0, 2)));
	else
		printf("created tenant %s (id %s)\n", PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 0));
	PQclear(r);
	return CTL_OK;
}

/*
 * Active and revoked credential counts and the domain count, per tenant,
 * then when it was suspended and why (both NULL when it is not): columns
 * 0 to 7.
 */
#define TENANT_COLUMNS                                                                             \
	"t.id, t.name, " CTL_SQL_TIME(                                                             \
	    "t.created_at") ","                                                                    \
	                    " (SELECT count(*) FROM credentials k WHERE k.tenant_id = t.id AND "   \
	                    "k.revoked_at IS NULL),"                                               \
	                    " (SELECT count(*) FROM credentials k WHERE k.tenant_id = t.id"        \
	                    "  AND k.revoked_at IS NOT NULL),"                                     \
	                    " (SELECT count(*) FROM domains d WHERE d.tenant_id = "                \
	                    "t.id), " CTL_SQL_TIME("t.suspended_at") ", t.suspended_reason"
#define COL_SUSPENDED_AT 6
#define COL_SUSPENDED_REASON 7

/* "active", or "suspended" when the row's suspended_at is set. */
static const char *tenant_status(const PGresult *r, int row)
{
	return PQgetisnull(r, row, COL_SUSPENDED_AT) ? "active" : "suspended";
}

static int tenant_list(struct ctl *c)
{
	static const char *const head[] = {"ID",          "NAME",    "CREATED",
	                                   "CREDENTIALS", "DOMAINS", "STATUS"};
	struct table t;
	json_t *arr;
	PGresult *r;
	char state[6];
	int i;

	r = ctl_exec(c, "listing tenants",
	             "SELECT " TENANT_COLUMNS " FROM tenants t ORDER BY t.name", 0, NULL, "42703",
	             state);
	if (r == NULL) {
		schema_hint("listing tenants", state);
		return CTL_FAIL;
	}
	if (c->json) {
		arr = json_array();
		for (i = 0; i < PQntuples(r); i++)
			json_array_append_new(
			    arr, json_pack("{s:o, s:s, s:s, s:o, s:o, s:s, s:o, s:o}", "id",
			                   ctl_json_int(PQgetvalue(r, i, 0)), "name",
			                   PQgetvalue(r, i, 1), "created_at", PQgetvalue(r, i, 2),
			                   "credentials", ctl_json_int(PQgetvalue(r, i, 3)),
			                   "domains", ctl_json_int(PQgetvalue(r, i, 5)), "status",
			                   tenant_status(r, i), "suspended_at",
			                   ctl_json_str_or_null(r, i, COL_SUSPENDED_AT),
			                   "suspended_reason",
			                   ctl_json_str_or_null(r, i, COL_SUSPENDED_REASON)));
		ctl_json_print(arr);
	} else if (PQntuples(r) == 0) {
		printf("no tenants\n");
	} else {
		table_init(&t, ARRAY_LEN(head), head);
		for (i = 0; i < PQntuples(r); i++) {
			const char *row[] = {PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
			                     PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
			                     PQgetvalue(r, i, 5), tenant_status(r, i)};
			table_add(&t, row);
		}
		table_print(&t, stdout);
		table_free(&t);
	}
	PQclear(r);
	return CTL_OK;
}

/* A limit column as JSON: its number, or null for the configuration's default. */
static json_t *limit_json(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? json_null() : ctl_json_int(PQgetvalue(r, row, col));
}

/* A limit column as text: its number (0: "0 (no limit)"), or "default". */
static const char *limit_text(const PGresult *r, int row, int col, char *out, size_t outlen)
{
	if (PQgetisnull(r, row, col))
		return "default";
	snprintf(out, outlen, "%s%s", PQgetvalue(r, row, col),
	         strcmp(PQgetvalue(r, row, col), "0") == 0 ? " (no limit)" : "");
	return out;
}

static int tenant_show(struct ctl *c, const char *name)
{
	const char *params[1] = {name};
	PGresult *r, *d;
	json_t *obj, *doms;
	char state[6];
	int i;

	if (ctl_tenant_name_problem(name) != NULL) {
		ctl_error("no tenant named \"%s\"", name);
		return CTL_FAIL;
	}
	r = ctl_exec(c, "reading the tenant",
	             "SELECT " TENANT_COLUMNS ", t.max_connections, t.max_messages_per_minute"
	             " FROM tenants t WHERE t.name = $1",
	             1, params, "42703", state);
	if (r == NULL) {
		schema_hint("reading the tenant", state);
		return CTL_FAIL;
	}
	if (PQntuples(r) == 0) {
		ctl_error("no tenant named \"%s\"", name);
		PQclear(r);
		return CTL_FAIL;
	}
	d = ctl_exec(c, "reading the tenant's domains",
	             "SELECT name, state, operator_verified, " CTL_SQL_TIME(
	                 "created_at") " FROM domains WHERE tenant_id = $1 ORDER BY name",
	             1, (const char *const[]){PQgetvalue(r, 0, 0)}, NULL, NULL);
	if (d == NULL) {
		PQclear(r);
		return CTL_FAIL;
	}
	if (c->json) {
		doms = json_array();
		for (i = 0; i < PQntuples(d); i++)
			json_array_append_new(
			    doms,
			    json_pack("{s:s, s:s, s:b, s:s}", "name", PQgetvalue(d, i, 0), "state",
			              PQgetvalue(d, i, 1), "operator_verified",
			              ctl_pq_bool(d, i, 2), "created_at", PQgetvalue(d, i, 3)));
		obj = json_pack(
		    "{s:o, s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "id",
		    ctl_json_int(PQgetvalue(r, 0, 0)), "name", PQgetvalue(r, 0, 1), "created_at",
		    PQgetvalue(r, 0, 2), "status", tenant_status(r, 0), "suspended_at",
		    ctl_json_str_or_null(r, 0, COL_SUSPENDED_AT), "suspended_reason",
		    ctl_json_str_or_null(r, 0, COL_SUSPENDED_REASON), "credentials",
		    ctl_json_int(PQgetvalue(r, 0, 3)), "credentials_revoked",
		    ctl_json_int(PQgetvalue(r, 0, 4)), "max_connections", limit_json(r, 0, 8),
		    "max_messages_per_minute", limit_json(r, 0, 9), "domains", doms);
		ctl_json_print(obj);
	} else {
		printf("id:           %s\n", PQgetvalue(r, 0, 0));
		printf("name:         %s\n", PQgetvalue(r, 0, 1));
		printf("created:      %s\n", PQgetvalue(r, 0, 2));
		if (!PQgetisnull(r, 0, COL_SUSPENDED_AT)) {
			char why[SUSPEND_REASON_MAX * 4 + 1];
			printf("suspended:    since %s: %s\n", PQgetvalue(r, 0, COL_SUSPENDED_AT),
			       printable(PQgetvalue(r, 0, COL_SUSPENDED_REASON), why, sizeof(why)));
		}
		printf("credentials:  %s active, %s revoked\n", PQgetvalue(r, 0, 3),
		       PQgetvalue(r, 0, 4));
		{
			char conns[40], msgs[40];
			printf("limits:       connections %s, messages per minute %s\n",
			       limit_text(r, 0, 8, conns, sizeof(conns)),
			       limit_text(r, 0, 9, msgs, sizeof(msgs)));
		}
		printf("domains:      %d\n", PQntuples(d));
		if (PQntuples(d) > 0) {
			static const char *const head[] = {"  DOMAIN", "STATE", "OPERATOR_VERIFIED",
			                                   "CREATED"};
			struct table t;
			char indented[300];

			table_init(&t, ARRAY_LEN(head), head);
			for (i = 0; i < PQntuples(d); i++) {
				const char *row[] = {indented, PQgetvalue(d, i, 1),
				                     ctl_pq_bool(d, i, 2) ? "yes" : "no",
				                     PQgetvalue(d, i, 3)};

				snprintf(indented, sizeof(indented), "  %s", PQgetvalue(d, i, 0));
				table_add(&t, row);
			}
			table_print(&t, stdout);
			table_free(&t);
		}
	}
	PQclear(d);
	PQclear(r);
	return CTL_OK;
}

/*
 * Reads the value of --connections or --messages-per-minute: "default"
 * (*set = 1, value NULL: the column goes back to NULL) or a count from 0 to
 * max (0: no limit). 0, or -1 with the error printed.
 */
static int limit_arg(const char *opt, const char *v, long max, int *set, const char **value)
{
	long n;

	*set = 1;
	if (strcmp(v, "default") == 0) {
		*value = NULL;
		return 0;
	}
	if (ctl_parse_count(v, 0, max, &n) == -1) {
		ctl_error("invalid %s \"%s\": a whole number from 0 (no limit) to %ld, or default",
		          opt, v, max);
		return -1;
	}
	*value = v;
	return 0;
}

/*
 * `tenant set-limits TENANT [--connections N|default] [--messages-per-minute
 * N|default]`: the tenant's own limits, over the configuration's defaults.
 * An option not given leaves that limit as it is.
 */
static int tenant_set_limits(struct ctl *c, int argc, char **argv)
{
	const char *name = NULL, *conns = NULL, *msgs = NULL, *params[5];
	int set_conns = 0, set_msgs = 0, i;
	char tid[24], conns_buf[40], msgs_buf[40];
	PGresult *r;

	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--connections") == 0 ||
		    strcmp(argv[i], "--messages-per-minute") == 0) {
			int is_conns = argv[i][2] == 'c';
			if (i + 1 >= argc)
				return ctl_usage(usage_set_limits, "%s needs N or default", argv[i]);
			if ((is_conns ? set_conns : set_msgs))
				return ctl_usage(usage_set_limits, "%s given twice", argv[i]);
			if (limit_arg(argv[i], argv[i + 1],
			              is_conns ? LIMIT_CONNECTIONS_MAX : LIMIT_MESSAGES_MAX,
			              is_conns ? &set_conns : &set_msgs, is_conns ? &conns : &msgs) == -1)
				return CTL_FAIL;
			i++;
		} else if (argv[i][0] == '-' && argv[i][1] == '-') {
			return ctl_usage(usage_set_limits, "unknown option \"%s\"", argv[i]);
		} else if (name == NULL) {
			name = argv[i];
		} else {
			return ctl_usage(usage_set_limits, "tenant set-limits takes one TENANT");
		}
	}
	if (name == NULL)
		return ctl_usage(usage_set_limits, "tenant set-limits needs a TENANT");
	if (!set_conns && !set_msgs)
		return ctl_usage(usage_set_limits,
		                 "tenant set-limits needs --connections or --messages-per-minute");
	if (ctl_tenant_id(c, name, tid) == -1)
		return CTL_FAIL;
	params[0] = tid;
	params[1] = set_conns ? "true" : "false";
	params[2] = conns;
	params[3] = set_msgs ? "true" : "false";
	params[4] = msgs;
	/* The tenants trigger tells running daemons, which reload their cache. */
	r = ctl_exec(c, "setting the limits",
	             "UPDATE tenants SET"
	             " max_connections = CASE WHEN $2::boolean THEN $3::int ELSE max_connections END,"
	             " max_messages_per_minute = CASE WHEN $4::boolean THEN $5::int"
	             " ELSE max_messages_per_minute END"
	             " WHERE id = $1 RETURNING max_connections, max_messages_per_minute",
	             5, params, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	if (PQntuples(r) == 0) { /* removed since its id was looked up */
		PQclear(r);
		ctl_error("no tenant named \"%s\"", name);
		return CTL_FAIL;
	}
	if (c->json)
		ctl_json_print(json_pack("{s:s, s:o, s:o}", "tenant", name, "max_connections",
		                         limit_json(r, 0, 0), "max_messages_per_minute",
		                         limit_json(r, 0, 1)));
	else
		printf("tenant %s: connections %s, messages per minute %s\n", name,
		       limit_text(r, 0, 0, conns_buf, sizeof(conns_buf)),
		       limit_text(r, 0, 1, msgs_buf, sizeof(msgs_buf)));
	PQclear(r);
	return CTL_OK;
}

/*
 * NULL when s can be a suspension reason, else what is wrong with it: one
 * line of 1 to 200 characters of UTF-8 (the schema's CHECK counts
 * characters), not blank, without control characters (C0, DEL, C1): it is
 * quoted in the 550 reply to MAIL FROM and in the daemon's log.
 */
static const char *reason_problem(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t chars = 0;
	int blank = 1;

	if (!ctl_utf8_valid(s))
		return "it is not valid UTF-8";
	for (; *p; p++) {
		if (*p < 0x20 || *p == 0x7f || (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
			return "it contains a control character (a line break, a tab...)";
		if ((*p & 0xc0) != 0x80)
			chars++;
		if (*p != ' ')
			blank = 0;
	}
	if (blank)
		return "it is empty or only spaces";
	if (chars > SUSPEND_REASON_MAX)
		return "it is longer than 200 characters";
	return NULL;
}

/*
 * Starts a transaction and locks tenant name's row; *r gets (id,
 * suspended_at as text or NULL, suspended_reason). CTL_OK, or CTL_FAIL
 * with the error printed and no transaction left open.
 */
static int tenant_lock(struct ctl *c, const char *name, PGresult **r)
{
	const char *params[1] = {name};
	char state[6];

	*r = NULL;
	if (ctl_tenant_name_problem(name) != NULL) {
		ctl_error("no tenant named \"%s\"", name);
		return CTL_FAIL;
	}
	if (ctl_run(c, "starting a transaction", "BEGIN") == -1)
		return CTL_FAIL;
	*r = ctl_exec(c, "reading the tenant",
	              "SELECT id, " CTL_SQL_TIME("suspended_at") ", suspended_reason FROM tenants"
	                                                         " WHERE name = $1 FOR UPDATE",
	              1, params, "42703", state);
	if (*r == NULL)
		schema_hint("reading the tenant", state);
	else if (PQntuples(*r) == 0)
		ctl_error("no tenant named \"%s\"", name);
	else
		return CTL_OK;
	PQclear(*r);
	*r = NULL;
	ctl_run(c, "ending the transaction", "ROLLBACK");
	return CTL_FAIL;
}

/*
 * Runs the change sql (3 parameters, one row back) in the transaction
 * tenant_lock began, and commits: its result, or NULL with the error
 * printed and the transaction rolled back.
 */
static PGresult *tenant_commit(struct ctl *c, const char *name, const char *what,
                               const char *sql, const char *const params[3])
{
	PGresult *r = ctl_exec(c, what, sql, 3, params, NULL, NULL);

	if (r != NULL && PQntuples(r) != 1) { /* cannot happen while the row is locked */
		ctl_error("no tenant named \"%s\"", name);
		PQclear(r);
		r = NULL;
	}
	if (r != NULL && ctl_run(c, "committing", "COMMIT") == -1) {
		PQclear(r);
		r = NULL;
	}
	if (r == NULL)
		ctl_run(c, "ending the transaction", "ROLLBACK");
	return r;
}

/*
 * `tenant suspend TENANT --reason TEXT`: the daemons refuse the tenant's
 * MAIL FROM with 550 5.7.1 quoting TEXT and hold its queued mail. Suspending
 * a suspended tenant replaces the reason and keeps the first suspended_at
 * (the suspension goes on; its start is what an operator asks about). Each
 * call records a tenant.suspended event in the same transaction.
 */
static int tenant_suspend(struct ctl *c, int argc, char **argv)
{
	const char *name = NULL, *reason = NULL, *why, *params[3];
	char was[SUSPEND_REASON_MAX * 4 + 1];
	PGresult *t, *r;
	int again, i;

	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--reason") == 0) {
			if (i + 1 >= argc)
				return ctl_usage(usage_suspend, "--reason needs a TEXT");
			if (reason != NULL)
				return ctl_usage(usage_suspend, "--reason given twice");
			reason = argv[++i];
		} else if (argv[i][0] == '-' && argv[i][1] == '-') {
			return ctl_usage(usage_suspend, "unknown option \"%s\"", argv[i]);
		} else if (name == NULL) {
			name = argv[i];
		} else {
			return ctl_usage(usage_suspend, "tenant suspend takes one TENANT");
		}
	}
	if (name == NULL)
		return ctl_usage(usage_suspend, "tenant suspend needs a TENANT");
	if (reason == NULL)
		return ctl_usage(usage_suspend, "tenant suspend needs --reason TEXT (it is quoted "
		                                "in the 550 reply to the tenant's MAIL FROM)");
	if ((why = reason_problem(reason)) != NULL) {
		ctl_error("invalid --reason: %s; give one line of 1 to %d characters (it is quoted "
		          "in the 550 reply to the tenant's MAIL FROM)",
		          why, SUSPEND_REASON_MAX);
		return CTL_FAIL;
	}
	if (tenant_lock(c, name, &t) == CTL_FAIL)
		return CTL_FAIL;
	again = !PQgetisnull(t, 0, 1);
	params[0] = PQgetvalue(t, 0, 0);
	params[1] = reason;
	params[2] = again ? PQgetvalue(t, 0, 2) : NULL;
	/* The tenants trigger tells the running daemons once this commits. */
	r = tenant_commit(c, name, "suspending the tenant",
	             "WITH s AS (UPDATE tenants SET suspended_at = coalesce(suspended_at, now()),"
	             " suspended_reason = $2 WHERE id = $1 RETURNING id, suspended_at),"
	             " ev AS (INSERT INTO events (type, tenant_id, data)"
	             " SELECT 'tenant.suspended', id, jsonb_strip_nulls(jsonb_build_object("
	             "'reason', $2::text, 'previous_reason', $3::text, 'by', 'sendgatectl'))"
	             " FROM s)"
	             " SELECT " CTL_SQL_TIME("suspended_at") " FROM s",
	             params);
	if (r == NULL) {
		PQclear(t);
		return CTL_FAIL;
	}
	if (c->json)
		ctl_json_print(json_pack("{s:s, s:s, s:s, s:o, s:b}", "tenant", name, "status",
		                         "suspended", "suspended_at", PQgetvalue(r, 0, 0),
		                         "suspended_reason", ctl_json_text(reason),
		                         "already_suspended", again));
	else if (again)
		printf("tenant %s suspended: %s (already suspended since %s; the reason was: %s)\n",
		       name, reason, PQgetvalue(r, 0, 0),
		       printable(PQgetvalue(t, 0, 2), was, sizeof(was)));
	else
		printf("tenant %s suspended: %s\n", name, reason);
	PQclear(r);
	PQclear(t);
	return CTL_OK;
}

/*
 * `tenant resume TENANT`: ends the tenant's suspension (the daemons accept
 * its mail and deliver what was held) and records a tenant.resumed event
 * naming the suspension that ended. A tenant that is not suspended is an
 * error.
 */
static int tenant_resume(struct ctl *c, const char *name)
{
	const char *params[3];
	char why[SUSPEND_REASON_MAX * 4 + 1];
	PGresult *t, *r;

	if (tenant_lock(c, name, &t) == CTL_FAIL)
		return CTL_FAIL;
	if (PQgetisnull(t, 0, 1)) {
		ctl_error("tenant %s is not suspended", name);
		ctl_run(c, "ending the transaction", "ROLLBACK");
		PQclear(t);
		return CTL_FAIL;
	}
	params[0] = PQgetvalue(t, 0, 0);
	params[1] = PQgetvalue(t, 0, 1);
	params[2] = PQgetisnull(t, 0, 2) ? NULL : PQgetvalue(t, 0, 2);
	r = tenant_commit(c, name, "resuming the tenant",
	             "WITH s AS (UPDATE tenants SET suspended_at = NULL, suspended_reason = NULL"
	             " WHERE id = $1 RETURNING id)"
	             " INSERT INTO events (type, tenant_id, data)"
	             " SELECT 'tenant.resumed', id, jsonb_build_object('reason', $3::text,"
	             " 'suspended_at', $2::text, 'by', 'sendgatectl') FROM s"
	             " RETURNING " CTL_SQL_TIME("created_at"),
	             params);
	if (r == NULL) {
		PQclear(t);
		return CTL_FAIL;
	}
	if (c->json)
		ctl_json_print(json_pack("{s:s, s:s, s:s, s:s, s:o}", "tenant", name, "status",
		                         "active", "resumed_at", PQgetvalue(r, 0, 0),
		                         "suspended_at", PQgetvalue(t, 0, 1), "suspended_reason",
		                         ctl_json_str_or_null(t, 0, 2)));
	else
		printf("tenant %s resumed (was suspended since %s: %s)\n", name,
		       PQgetvalue(t, 0, 1), printable(PQgetvalue(t, 0, 2), why, sizeof(why)));
	PQclear(r);
	PQclear(t);
	return CTL_OK;
}

int ctl_cmd_tenant(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage(usage, "tenant needs a subcommand");
	if (strcmp(argv[1], "create") == 0) {
		if (argc != 3)
			return ctl_usage("tenant create NAME", "tenant create takes one NAME");
		return tenant_create(c, argv[2]);
	}
	if (strcmp(argv[1], "list") == 0) {
		if (argc != 2)
			return ctl_usage("tenant list", "tenant list takes no arguments");
		return tenant_list(c);
	}
	if (strcmp(argv[1], "show") == 0) {
		if (argc != 3)
			return ctl_usage("tenant show NAME", "tenant show takes one NAME");
		return tenant_show(c, argv[2]);
	}
	if (strcmp(argv[1], "set-limits") == 0)
		return tenant_set_limits(c, argc, argv);
	if (strcmp(argv[1], "stats") == 0)
		return ctl_tenant_stats(c, argc - 2, argv + 2);
	if (strcmp(argv[1], "suspend") == 0)
		return tenant_suspend(c, argc, argv);
	if (strcmp(argv[1], "resume") == 0) {
		if (argc != 3)
			return ctl_usage(usage_resume, "tenant resume takes one TENANT");
		return tenant_resume(c, argv[2]);
	}
	return ctl_usage(usage, "unknown tenant subcommand \"%s\"", argv[1]);
}
