/*
 * ctl_pool: `sendgatectl pool create|add-address|list` and `tenant
 * set-pool`: the IP pools that delivery sends from. A tenant sends from
 * its own pool, else from the default pool; delivery binds each connection
 * to one of the pool's addresses (weighted) and greets with its HELO name.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tenants/ctl.h"

static const char usage[] = "pool create NAME [--default]\n"
                            "       sendgatectl pool add-address POOL IP --helo HOSTNAME "
                            "[--weight N]\n"
                            "       sendgatectl pool list";
static const char usage_set_pool[] = "tenant set-pool TENANT POOL";

#define IP_TEXT_MAX 64
#define WEIGHT_MAX 1000

/* Looks up a pool's id (decimal text into id); 0, or -1 with the error printed. */
static int pool_id(struct ctl *c, const char *name, char id[24])
{
	const char *params[1] = {name};
	PGresult *r;

	if (ctl_pool_name_problem(name) != NULL) {
		ctl_error("no pool named \"%s\"", name);
		return -1;
	}
	r = ctl_exec(c, "looking up the pool", "SELECT id FROM pools WHERE name = $1", 1, params,
	             NULL, NULL);
	if (r == NULL)
		return -1;
	if (PQntuples(r) == 0) {
		ctl_error("no pool named \"%s\" (see 'sendgatectl pool list')", name);
		PQclear(r);
		return -1;
	}
	snprintf(id, 24, "%s", PQgetvalue(r, 0, 0));
	PQclear(r);
	return 0;
}

static int pool_create(struct ctl *c, int argc, char **argv)
{
	const char *name = NULL, *why, *params[2];
	int is_default = 0, i, rc = CTL_FAIL;
	char state[6];
	PGresult *r = NULL;

	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--default") == 0)
			is_default = 1;
		else if (argv[i][0] == '-')
			return ctl_usage(usage, "unknown option \"%s\"", argv[i]);
		else if (name == NULL)
			name = argv[i];
		else
			return ctl_usage(usage, "pool create takes one NAME");
	}
	if (name == NULL)
		return ctl_usage(usage, "pool create needs a NAME");
	if ((why = ctl_pool_name_problem(name)) != NULL) {
		ctl_error("invalid pool name \"%s\": %s", name, why);
		return CTL_FAIL;
	}
	if (ctl_run(c, "starting a transaction", "BEGIN") == -1)
		return CTL_FAIL;
	/* One default at a time (a unique index says so): the new one replaces it. */
	if (is_default && ctl_run(c, "clearing the previous default pool",
	                          "UPDATE pools SET is_default = false WHERE is_default") == -1)
		goto fail;
	params[0] = name;
	params[1] = is_default ? "true" : "false";
	r = ctl_exec(c, "creating the pool",
	             "INSERT INTO pools (name, is_default) VALUES ($1, $2::boolean) "
	             "RETURNING id, " CTL_SQL_TIME("created_at"),
	             2, params, "23505", state);
	if (r == NULL) {
		if (strcmp(state, "23505") == 0)
			ctl_error("a pool named \"%s\" already exists", name);
		goto fail;
	}
	if (ctl_run(c, "committing", "COMMIT") == -1)
		goto fail;
	if (c->json)
		ctl_json_print(json_pack(
		    "{s:o, s:s, s:b, s:s, s:[]}", "id", ctl_json_int(PQgetvalue(r, 0, 0)), "name",
		    name, "default", is_default, "created_at", PQgetvalue(r, 0, 1), "addresses"));
	else
		printf("created pool %s%s; add its source addresses with 'sendgatectl pool "
		       "add-address %s IP --helo HOSTNAME'\n",
		       name, is_default ? " (the default pool)" : "", name);
	rc = CTL_OK;
fail:
	if (rc != CTL_OK && c->db)
		ctl_run(c, "rolling back", "ROLLBACK");
	PQclear(r);
	return rc;
}

static int pool_add_address(struct ctl *c, int argc, char **argv)
{
	const char *pool = NULL, *ip = NULL, *helo = NULL, *weight_s = "1", *why, *params[4];
	char id[24], addr[IP_TEXT_MAX], helo_norm[256], state[6];
	long weight;
	PGresult *r;
	int i;

	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--helo") == 0 || strcmp(argv[i], "--weight") == 0) {
			if (i + 1 >= argc)
				return ctl_usage(usage, "%s needs a value", argv[i]);
			if (argv[i][2] == 'h')
				helo = argv[++i];
			else
				weight_s = argv[++i];
		} else if (argv[i][0] == '-' && argv[i][1] == '-') {
			return ctl_usage(usage, "unknown option \"%s\"", argv[i]);
		} else if (pool == NULL) {
			pool = argv[i];
		} else if (ip == NULL) {
			ip = argv[i];
		} else {
			return ctl_usage(usage, "pool add-address takes POOL and IP");
		}
	}
	if (pool == NULL || ip == NULL)
		return ctl_usage(usage, "pool add-address needs POOL and IP");
	if (helo == NULL)
		return ctl_usage(usage, "pool add-address needs --helo HOSTNAME (the name this "
		                        "address greets remote servers with)");
	if (ctl_ip_normalize(ip, addr, sizeof(addr), &why) == -1) {
		ctl_error("invalid source address \"%s\": %s", ip, why);
		return CTL_FAIL;
	}
	if (ctl_domain_normalize(helo, helo_norm, sizeof(helo_norm), &why) == -1) {
		ctl_error("invalid HELO name \"%s\": %s", helo, why);
		return CTL_FAIL;
	}
	if (ctl_parse_count(weight_s, 1, WEIGHT_MAX, &weight) == -1) {
		ctl_error("invalid weight \"%s\": a whole number from 1 to %d", weight_s,
		          WEIGHT_MAX);
		return CTL_FAIL;
	}
	if (pool_id(c, pool, id) == -1)
		return CTL_FAIL;
	params[0] = id;
	params[1] = addr;
	params[2] = helo_norm;
	params[3] = weight_s;
	r = ctl_exec(c, "adding the address",
	             "INSERT INTO pool_addresses (pool_id, address, helo, weight) "
	             "VALUES ($1, $2::inet, $3, $4::int) RETURNING host(address)",
	             4, params, "23505", state);
	if (r == NULL) {
		if (strcmp(state, "23505") == 0)
			ctl_error("pool %s already has the address %s", pool, addr);
		return CTL_FAIL;
	}
	if (c->json)
		ctl_json_print(json_pack("{s:s, s:o, s:s, s:I}", "pool", pool, "address",
		                         ctl_json_text(PQgetvalue(r, 0, 0)), "helo", helo_norm,
		                         "weight", (json_int_t)weight));
	else
		printf("pool %s: added %s (HELO %s, weight %ld); its reverse DNS (PTR) should "
		       "name %s\n",
		       pool, PQgetvalue(r, 0, 0), helo_norm, weight, helo_norm);
	PQclear(r);
	return CTL_OK;
}

static int pool_list(struct ctl *c, int argc, char **argv)
{
	static const char *const head[] = {"POOL",    "DEFAULT", "TENANTS",
	                                   "ADDRESS", "HELO",    "WEIGHT"};
	json_t *arr, *cur = NULL;
	struct table t;
	PGresult *r;
	int i;

	if (argc != 2)
		return ctl_usage(usage, "pool list takes no arguments");
	r = ctl_exec(
	    c, "listing pools",
	    "SELECT p.id, p.name, p.is_default, " CTL_SQL_TIME(
	        "p.created_at") ", "
	                        "(SELECT count(*) FROM tenants t WHERE t.pool_id = p.id), "
	                        "host(a.address), a.helo, a.weight "
	                        "FROM pools p LEFT JOIN pool_addresses a ON a.pool_id = p.id "
	                        "ORDER BY p.name, a.id",
	    0, NULL, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	if (c->json) {
		arr = json_array();
		for (i = 0; i < PQntuples(r); i++) {
			if (i == 0 || strcmp(PQgetvalue(r, i, 0), PQgetvalue(r, i - 1, 0)) != 0) {
				cur = json_pack("{s:o, s:o, s:b, s:s, s:o, s:[]}", "id",
				                ctl_json_int(PQgetvalue(r, i, 0)), "name",
				                ctl_json_text(PQgetvalue(r, i, 1)), "default",
				                ctl_pq_bool(r, i, 2), "created_at",
				                PQgetvalue(r, i, 3), "tenants",
				                ctl_json_int(PQgetvalue(r, i, 4)), "addresses");
				json_array_append_new(arr, cur);
			}
			if (!PQgetisnull(r, i, 5))
				json_array_append_new(
				    json_object_get(cur, "addresses"),
				    json_pack("{s:o, s:o, s:o}", "address",
				              ctl_json_text(PQgetvalue(r, i, 5)), "helo",
				              ctl_json_text(PQgetvalue(r, i, 6)), "weight",
				              ctl_json_int(PQgetvalue(r, i, 7))));
		}
		ctl_json_print(arr);
	} else if (PQntuples(r) == 0) {
		printf("no pools; create one with 'sendgatectl pool create NAME --default'\n");
	} else {
		table_init(&t, ARRAY_LEN(head), head);
		for (i = 0; i < PQntuples(r); i++) {
			const char *row[6];
			row[0] = PQgetvalue(r, i, 1);
			row[1] = ctl_pq_bool(r, i, 2) ? "yes" : "";
			row[2] = PQgetvalue(r, i, 4);
			row[3] = PQgetisnull(r, i, 5) ? "(no addresses)" : PQgetvalue(r, i, 5);
			row[4] = PQgetisnull(r, i, 6) ? "" : PQgetvalue(r, i, 6);
			row[5] = PQgetisnull(r, i, 7) ? "" : PQgetvalue(r, i, 7);
			table_add(&t, row);
		}
		table_print(&t, stdout);
		table_free(&t);
	}
	PQclear(r);
	return CTL_OK;
}

int ctl_cmd_pool(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage(usage, "pool needs a subcommand");
	if (strcmp(argv[1], "create") == 0)
		return pool_create(c, argc, argv);
	if (strcmp(argv[1], "add-address") == 0)
		return pool_add_address(c, argc, argv);
	if (strcmp(argv[1], "list") == 0)
		return pool_list(c, argc, argv);
	return ctl_usage(usage, "unknown pool subcommand \"%s\"", argv[1]);
}

int ctl_cmd_tenant_set_pool(struct ctl *c, int argc, char **argv)
{
	const char *params[2];
	char tid[24], pid[24];
	PGresult *r;

	if (argc != 4)
		return ctl_usage(usage_set_pool, "tenant set-pool needs TENANT and POOL");
	if (ctl_tenant_id(c, argv[2], tid) == -1 || pool_id(c, argv[3], pid) == -1)
		return CTL_FAIL;
	params[0] = tid;
	params[1] = pid;
	r = ctl_exec(c, "setting the pool", "UPDATE tenants SET pool_id = $2 WHERE id = $1", 2,
	             params, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	PQclear(r);
	if (c->json)
		ctl_json_print(json_pack("{s:s, s:s}", "tenant", argv[2], "pool", argv[3]));
	else
		printf("tenant %s now sends from pool %s\n", argv[2], argv[3]);
	return CTL_OK;
}
