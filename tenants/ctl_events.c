/*
 * ctl_events: `sendgatectl events`, the newest events of the platform
 * (message.delivered, message.deferred, message.bounced, message.expired,
 * message.deleted...) filtered by tenant, message and type, printed oldest
 * first so the last line is the latest thing that happened.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tenants/ctl.h"

static const char usage[] = "events [--tenant TENANT] [--message ID] [--type TYPE] [--limit N]";

#define DEFAULT_LIMIT "100"
#define LIMIT_MAX 100000

/* The event's data: the stored JSON document (an object), or its text. */
static json_t *data_json(const char *text)
{
	json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);

	return j ? j : ctl_json_text(text);
}

int ctl_cmd_events(struct ctl *c, int argc, char **argv)
{
	static const char *const head[] = {"ID", "TIME", "TYPE", "TENANT", "MESSAGE", "DATA"};
	const char *tenant = NULL, *message = NULL, *type = NULL, *limit_s = DEFAULT_LIMIT;
	const char *params[4];
	char tid[24];
	long limit;
	struct table t;
	PGresult *r;
	json_t *arr;
	int i;

	for (i = 1; i < argc; i++) {
		const char **slot = NULL;

		if (strcmp(argv[i], "--tenant") == 0)
			slot = &tenant;
		else if (strcmp(argv[i], "--message") == 0)
			slot = &message;
		else if (strcmp(argv[i], "--type") == 0)
			slot = &type;
		else if (strcmp(argv[i], "--limit") == 0)
			slot = &limit_s;
		else if (argv[i][0] == '-')
			return ctl_usage(usage, "unknown option \"%s\"", argv[i]);
		else
			return ctl_usage(usage, "events takes options only, not \"%s\"", argv[i]);
		if (i + 1 >= argc)
			return ctl_usage(usage, "%s needs a value", argv[i]);
		*slot = argv[++i];
	}
	if (ctl_parse_count(limit_s, 1, LIMIT_MAX, &limit) == -1) {
		ctl_error("invalid --limit \"%s\": a whole number from 1 to %d", limit_s,
		          LIMIT_MAX);
		return CTL_FAIL;
	}
	if (message && !ctl_utf8_valid(message)) {
		ctl_error("invalid --message: not UTF-8");
		return CTL_FAIL;
	}
	if (type && (!ctl_utf8_valid(type) || type[0] == '\0')) {
		ctl_error("invalid --type: a type like message.bounced, or message.* for all "
		          "message events");
		return CTL_FAIL;
	}
	if (tenant && ctl_tenant_id(c, tenant, tid) == -1)
		return CTL_FAIL;
	params[0] = tenant ? tid : NULL;
	params[1] = message;
	params[2] = type;
	params[3] = limit_s;
	/* The newest N, then turned around: oldest first, newest last. */
	r = ctl_exec(
	    c, "reading events",
	    "SELECT id, created_at, type, tenant, message_id, data FROM ("
	    "SELECT e.id, " CTL_SQL_TIME(
	        "e.created_at") " AS created_at, e.type, "
	                        "t.name AS tenant, e.message_id, e.data::text AS data "
	                        "FROM events e LEFT JOIN tenants t ON t.id = e.tenant_id "
	                        "WHERE ($1::bigint IS NULL OR e.tenant_id = $1::bigint) "
	                        "AND ($2::text IS NULL OR e.message_id = $2) "
	                        "AND ($3::text IS NULL OR e.type = $3 OR (right($3, 2) = '.*' "
	                        "AND left(e.type, length($3) - 1) = left($3, -1))) "
	                        "ORDER BY e.id DESC LIMIT $4::int) x ORDER BY id",
	    4, params, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	if (c->json) {
		arr = json_array();
		for (i = 0; i < PQntuples(r); i++)
			json_array_append_new(
			    arr, json_pack("{s:o, s:o, s:o, s:o, s:o, s:o}", "id",
			                   ctl_json_int(PQgetvalue(r, i, 0)), "created_at",
			                   ctl_json_text(PQgetvalue(r, i, 1)), "type",
			                   ctl_json_text(PQgetvalue(r, i, 2)), "tenant",
			                   ctl_json_str_or_null(r, i, 3), "message_id",
			                   ctl_json_str_or_null(r, i, 4), "data",
			                   data_json(PQgetvalue(r, i, 5))));
		ctl_json_print(arr);
	} else if (PQntuples(r) == 0) {
		printf("no events\n");
	} else {
		table_init(&t, ARRAY_LEN(head), head);
		for (i = 0; i < PQntuples(r); i++) {
			const char *row[6];
			int k;
			for (k = 0; k < 6; k++)
				row[k] = PQgetisnull(r, i, k) ? NULL : PQgetvalue(r, i, k);
			table_add(&t, row);
		}
		table_print(&t, stdout);
		table_free(&t);
	}
	PQclear(r);
	return CTL_OK;
}
