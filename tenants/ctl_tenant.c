/* ctl_tenant: `sendgatectl tenant create|list|show`. */
#include <stdio.h>
#include <string.h>

#include "tenants/ctl.h"

static const char usage[] = "tenant create NAME | tenant list | tenant show NAME";

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

/* Active and revoked credential counts and the domain count, per tenant. */
#define TENANT_COLUMNS                                                                             \
	"t.id, t.name, " CTL_SQL_TIME(                                                             \
	    "t.created_at") ","                                                                    \
	                    " (SELECT count(*) FROM credentials k WHERE k.tenant_id = t.id AND "   \
	                    "k.revoked_at IS NULL),"                                               \
	                    " (SELECT count(*) FROM credentials k WHERE k.tenant_id = t.id"        \
	                    "  AND k.revoked_at IS NOT NULL),"                                     \
	                    " (SELECT count(*) FROM domains d WHERE d.tenant_id = t.id)"

static int tenant_list(struct ctl *c)
{
	static const char *const head[] = {"ID", "NAME", "CREATED", "CREDENTIALS", "DOMAINS"};
	struct table t;
	json_t *arr;
	PGresult *r;
	int i;

	r = ctl_exec(c, "listing tenants",
	             "SELECT " TENANT_COLUMNS " FROM tenants t ORDER BY t.name", 0, NULL, NULL,
	             NULL);
	if (r == NULL)
		return CTL_FAIL;
	if (c->json) {
		arr = json_array();
		for (i = 0; i < PQntuples(r); i++)
			json_array_append_new(
			    arr, json_pack("{s:o, s:s, s:s, s:o, s:o}", "id",
			                   ctl_json_int(PQgetvalue(r, i, 0)), "name",
			                   PQgetvalue(r, i, 1), "created_at", PQgetvalue(r, i, 2),
			                   "credentials", ctl_json_int(PQgetvalue(r, i, 3)),
			                   "domains", ctl_json_int(PQgetvalue(r, i, 5))));
		ctl_json_print(arr);
	} else if (PQntuples(r) == 0) {
		printf("no tenants\n");
	} else {
		table_init(&t, ARRAY_LEN(head), head);
		for (i = 0; i < PQntuples(r); i++) {
			const char *row[] = {PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
			                     PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
			                     PQgetvalue(r, i, 5)};
			table_add(&t, row);
		}
		table_print(&t, stdout);
		table_free(&t);
	}
	PQclear(r);
	return CTL_OK;
}

static int tenant_show(struct ctl *c, const char *name)
{
	const char *params[1] = {name};
	PGresult *r, *d;
	json_t *obj, *doms;
	int i;

	if (ctl_tenant_name_problem(name) != NULL) {
		ctl_error("no tenant named \"%s\"", name);
		return CTL_FAIL;
	}
	r = ctl_exec(c, "reading the tenant",
	             "SELECT " TENANT_COLUMNS " FROM tenants t WHERE t.name = $1", 1, params, NULL,
	             NULL);
	if (r == NULL)
		return CTL_FAIL;
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
		obj = json_pack("{s:o, s:s, s:s, s:o, s:o, s:o}", "id",
		                ctl_json_int(PQgetvalue(r, 0, 0)), "name", PQgetvalue(r, 0, 1),
		                "created_at", PQgetvalue(r, 0, 2), "credentials",
		                ctl_json_int(PQgetvalue(r, 0, 3)), "credentials_revoked",
		                ctl_json_int(PQgetvalue(r, 0, 4)), "domains", doms);
		ctl_json_print(obj);
	} else {
		printf("id:           %s\n", PQgetvalue(r, 0, 0));
		printf("name:         %s\n", PQgetvalue(r, 0, 1));
		printf("created:      %s\n", PQgetvalue(r, 0, 2));
		printf("credentials:  %s active, %s revoked\n", PQgetvalue(r, 0, 3),
		       PQgetvalue(r, 0, 4));
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
	return ctl_usage(usage, "unknown tenant subcommand \"%s\"", argv[1]);
}
