/*
 * ctl_suppression: `sendgatectl suppression list|add|remove`, a tenant's
 * list of recipients that RCPT TO refuses (550 5.1.1 naming the reason).
 * Hard bounces add to it automatically; operators add and remove by hand.
 * Addresses are stored lower-cased (ASCII), as the daemon looks them up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tenants/ctl.h"

static const char usage[] = "suppression list TENANT\n"
                            "       sendgatectl suppression add TENANT ADDRESS [--reason TEXT]\n"
                            "       sendgatectl suppression remove TENANT ADDRESS";

#define ADDR_TEXT_MAX 256
#define REASON_MAX 500
#define DEFAULT_REASON "added by the operator"

static json_t *row_json(const PGresult *r, int i)
{
	return json_pack("{s:o, s:o, s:o, s:o}", "address", ctl_json_text(PQgetvalue(r, i, 0)),
	                 "reason", ctl_json_text(PQgetvalue(r, i, 1)), "message_id",
	                 ctl_json_str_or_null(r, i, 2), "created_at",
	                 ctl_json_text(PQgetvalue(r, i, 3)));
}

static int supp_list(struct ctl *c, int argc, char **argv)
{
	static const char *const head[] = {"ADDRESS", "SINCE", "MESSAGE", "REASON"};
	const char *params[1];
	char tid[24];
	struct table t;
	PGresult *r;
	json_t *arr;
	int i;

	if (argc != 3)
		return ctl_usage(usage, "suppression list needs a TENANT");
	if (ctl_tenant_id(c, argv[2], tid) == -1)
		return CTL_FAIL;
	params[0] = tid;
	r = ctl_exec(c, "listing suppressions",
	             "SELECT address, reason, message_id, " CTL_SQL_TIME(
	                 "created_at") " "
	                               "FROM suppressions WHERE tenant_id = $1 ORDER BY address",
	             1, params, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	if (c->json) {
		arr = json_array();
		for (i = 0; i < PQntuples(r); i++)
			json_array_append_new(arr, row_json(r, i));
		ctl_json_print(arr);
	} else if (PQntuples(r) == 0) {
		printf("no suppressed addresses for tenant %s\n", argv[2]);
	} else {
		table_init(&t, ARRAY_LEN(head), head);
		for (i = 0; i < PQntuples(r); i++) {
			const char *row[4] = {PQgetvalue(r, i, 0), PQgetvalue(r, i, 3),
			                      PQgetisnull(r, i, 2) ? NULL : PQgetvalue(r, i, 2),
			                      PQgetvalue(r, i, 1)};
			table_add(&t, row);
		}
		table_print(&t, stdout);
		table_free(&t);
	}
	PQclear(r);
	return CTL_OK;
}

static int supp_add(struct ctl *c, int argc, char **argv)
{
	const char *tenant = NULL, *addr_in = NULL, *reason = DEFAULT_REASON, *why, *params[3];
	char tid[24], addr[ADDR_TEXT_MAX], state[6];
	PGresult *r;
	int i;

	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--reason") == 0) {
			if (i + 1 >= argc)
				return ctl_usage(usage, "--reason needs a text");
			reason = argv[++i];
		} else if (argv[i][0] == '-' && argv[i][1] == '-') {
			return ctl_usage(usage, "unknown option \"%s\"", argv[i]);
		} else if (tenant == NULL) {
			tenant = argv[i];
		} else if (addr_in == NULL) {
			addr_in = argv[i];
		} else {
			return ctl_usage(usage, "suppression add takes TENANT and ADDRESS");
		}
	}
	if (tenant == NULL || addr_in == NULL)
		return ctl_usage(usage, "suppression add needs TENANT and ADDRESS");
	if (ctl_address_normalize(addr_in, addr, sizeof(addr), &why) == -1) {
		ctl_error("invalid address \"%s\": %s", addr_in, why);
		return CTL_FAIL;
	}
	if (reason[0] == '\0' || strlen(reason) > REASON_MAX || !ctl_utf8_valid(reason) ||
	    strpbrk(reason, "\r\n") != NULL) {
		ctl_error("invalid reason: one line of UTF-8 text, 1 to %d bytes (it is quoted "
		          "in the 550 reply to RCPT TO)",
		          REASON_MAX);
		return CTL_FAIL;
	}
	if (ctl_tenant_id(c, tenant, tid) == -1)
		return CTL_FAIL;
	params[0] = tid;
	params[1] = addr;
	params[2] = reason;
	r = ctl_exec(c, "adding the suppression",
	             "INSERT INTO suppressions (tenant_id, address, reason) VALUES ($1, $2, $3) "
	             "RETURNING address, reason, message_id, " CTL_SQL_TIME("created_at"),
	             3, params, "23505", state);
	if (r == NULL) {
		if (strcmp(state, "23505") == 0)
			ctl_error("%s is already suppressed for tenant %s (see 'sendgatectl "
			          "suppression list %s')",
			          addr, tenant, tenant);
		return CTL_FAIL;
	}
	if (c->json)
		ctl_json_print(row_json(r, 0));
	else
		printf("suppressed %s for tenant %s: RCPT TO now gets 550 5.1.1\n", addr, tenant);
	PQclear(r);
	return CTL_OK;
}

static int supp_remove(struct ctl *c, int argc, char **argv)
{
	const char *why, *params[2];
	char tid[24], addr[ADDR_TEXT_MAX];
	PGresult *r;

	if (argc != 4)
		return ctl_usage(usage, "suppression remove needs TENANT and ADDRESS");
	if (ctl_address_normalize(argv[3], addr, sizeof(addr), &why) == -1) {
		ctl_error("invalid address \"%s\": %s", argv[3], why);
		return CTL_FAIL;
	}
	if (ctl_tenant_id(c, argv[2], tid) == -1)
		return CTL_FAIL;
	params[0] = tid;
	params[1] = addr;
	r = ctl_exec(c, "removing the suppression",
	             "DELETE FROM suppressions WHERE tenant_id = $1 AND address = $2 "
	             "RETURNING address, reason, message_id, " CTL_SQL_TIME("created_at"),
	             2, params, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	if (PQntuples(r) == 0) {
		ctl_error("%s is not suppressed for tenant %s", addr, argv[2]);
		PQclear(r);
		return CTL_FAIL;
	}
	if (c->json)
		ctl_json_print(row_json(r, 0));
	else
		printf("removed %s from the suppression list of tenant %s\n", addr, argv[2]);
	PQclear(r);
	return CTL_OK;
}

int ctl_cmd_suppression(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage(usage, "suppression needs a subcommand");
	if (strcmp(argv[1], "list") == 0)
		return supp_list(c, argc, argv);
	if (strcmp(argv[1], "add") == 0)
		return supp_add(c, argc, argv);
	if (strcmp(argv[1], "remove") == 0)
		return supp_remove(c, argc, argv);
	return ctl_usage(usage, "unknown suppression subcommand \"%s\"", argv[1]);
}
