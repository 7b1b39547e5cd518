/*
 * ctl_credential: `sendgatectl credential create|list|revoke`. The secret
 * exists in clear only in this process and on the operator's screen; the
 * database keeps its SHA-256.
 */
#include <stdio.h>
#include <string.h>

#include "tenants/ctl.h"
#include "tenants/tenants.h"

static const char usage[] =
    "credential create TENANT | credential list TENANT | credential revoke USERNAME";

/* A fresh username colliding with an existing one is a 1 in 2^32 event: retry a few times. */
#define CREATE_TRIES 5

static int credential_create(struct ctl *c, const char *tenant)
{
	char id[24], user[CRED_USER_MAX + 1], secret[CRED_SECRET_LEN + 1];
	char hash_text[2 + 64 + 1], state[6];
	unsigned char hash[32];
	const char *params[3] = {id, user, hash_text};
	PGresult *r = NULL;
	int tries, rc = CTL_FAIL;

	if (ctl_tenant_id(c, tenant, id) == -1)
		return CTL_FAIL;
	for (tries = 0; tries < CREATE_TRIES; tries++) {
		credential_generate(tenant, user, secret);
		credential_hash(secret, strlen(secret), hash);
		/* bytea accepts "\x<hex>" as text input. */
		hash_text[0] = '\\';
		hash_text[1] = 'x';
		hex_encode(hash, sizeof(hash), hash_text + 2);
		r = ctl_exec(c, "storing the credential",
		             "INSERT INTO credentials (tenant_id, username, secret_sha256)"
		             " VALUES ($1, $2, $3::bytea)",
		             3, params, "23505", state);
		if (r != NULL || strcmp(state, "23505") != 0)
			break;
	}
	if (r == NULL) {
		if (strcmp(state, "23505") == 0)
			ctl_error("could not find a free username for tenant \"%s\"", tenant);
		goto out;
	}
	if (c->json) {
		ctl_json_print(json_pack("{s:s, s:s, s:s}", "username", user, "secret", secret,
		                         "tenant", tenant));
	} else {
		printf("tenant:   %s\n", tenant);
		printf("username: %s\n", user);
		printf("secret:   %s\n", secret);
		printf("Store the secret now: it cannot be shown again.\n");
	}
	rc = CTL_OK;
out:
	PQclear(r);
	explicit_bzero(secret, sizeof(secret));
	return rc;
}

static int credential_list(struct ctl *c, const char *tenant)
{
	static const char *const head[] = {"USERNAME", "CREATED", "REVOKED"};
	char id[24];
	const char *params[1] = {id};
	struct table t;
	json_t *arr;
	PGresult *r;
	int i;

	if (ctl_tenant_id(c, tenant, id) == -1)
		return CTL_FAIL;
	/* Never the hash: there is nothing an operator can do with it. */
	r = ctl_exec(
	    c, "listing credentials",
	    "SELECT username, " CTL_SQL_TIME("created_at") ", " CTL_SQL_TIME(
	        "revoked_at") " FROM credentials WHERE tenant_id = $1 ORDER BY created_at, id",
	    1, params, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	if (c->json) {
		arr = json_array();
		for (i = 0; i < PQntuples(r); i++)
			json_array_append_new(arr, json_pack("{s:s, s:s, s:o}", "username",
			                                     PQgetvalue(r, i, 0), "created_at",
			                                     PQgetvalue(r, i, 1), "revoked_at",
			                                     ctl_json_str_or_null(r, i, 2)));
		ctl_json_print(arr);
	} else if (PQntuples(r) == 0) {
		printf("no credentials for tenant %s\n", tenant);
	} else {
		table_init(&t, ARRAY_LEN(head), head);
		for (i = 0; i < PQntuples(r); i++) {
			const char *row[] = {PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
			                     PQgetisnull(r, i, 2) ? "-" : PQgetvalue(r, i, 2)};
			table_add(&t, row);
		}
		table_print(&t, stdout);
		table_free(&t);
	}
	PQclear(r);
	return CTL_OK;
}

static int credential_revoke(struct ctl *c, const char *username)
{
	const char *params[1] = {username};
	PGresult *r;

	r = ctl_exec(c, "revoking the credential",
	             "UPDATE credentials k SET revoked_at = now() FROM tenants t"
	             " WHERE k.username = $1 AND k.revoked_at IS NULL AND t.id = k.tenant_id"
	             " RETURNING k.username, t.name, " CTL_SQL_TIME("k.revoked_at"),
	             1, params, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	if (PQntuples(r) == 0) {
		/* Say which of the two it was. */
		PQclear(r);
		r = ctl_exec(
		    c, "looking up the credential",
		    "SELECT " CTL_SQL_TIME("revoked_at") " FROM credentials WHERE username = $1", 1,
		    params, NULL, NULL);
		if (r == NULL)
			return CTL_FAIL;
		if (PQntuples(r) == 0)
			ctl_error("no credential named \"%s\"", username);
		else
			ctl_error("credential \"%s\" is already revoked (since %s)", username,
			          PQgetvalue(r, 0, 0));
		PQclear(r);
		return CTL_FAIL;
	}
	if (c->json)
		ctl_json_print(json_pack("{s:s, s:s, s:s}", "username", PQgetvalue(r, 0, 0),
		                         "tenant", PQgetvalue(r, 0, 1), "revoked_at",
		                         PQgetvalue(r, 0, 2)));
	else
		printf("revoked credential %s of tenant %s\n", PQgetvalue(r, 0, 0),
		       PQgetvalue(r, 0, 1));
	PQclear(r);
	return CTL_OK;
}

int ctl_cmd_credential(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage(usage, "credential needs a subcommand");
	if (strcmp(argv[1], "create") == 0) {
		if (argc != 3)
			return ctl_usage("credential create TENANT",
			                 "credential create takes one TENANT");
		return credential_create(c, argv[2]);
	}
	if (strcmp(argv[1], "list") == 0) {
		if (argc != 3)
			return ctl_usage("credential list TENANT",
			                 "credential list takes one TENANT");
		return credential_list(c, argv[2]);
	}
	if (strcmp(argv[1], "revoke") == 0) {
		if (argc != 3)
			return ctl_usage("credential revoke USERNAME",
			                 "credential revoke takes one USERNAME");
		return credential_revoke(c, argv[2]);
	}
	return ctl_usage(usage, "unknown credential subcommand \"%s\"", argv[1]);
}
