/*
 * ctl_migrate: `sendgatectl migrate`. Applies the SQL migrations compiled
 * into libtenants, each in its own transaction together with its
 * schema_migrations row, so a failed migration leaves no trace and a
 * finished one is never applied twice. Concurrent migrators (several
 * containers starting at once) wait for each other on an advisory lock.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tenants/ctl.h"
#include "tenants/tenants.h"

/* pg_advisory_lock key: "sendgate" read as a big-endian 64-bit number. */
#define MIGRATE_LOCK_KEY "8315173664519713893"

static const char usage[] = "migrate";

/*
 * Applies one migration and records it, in one transaction. Migration
 * files therefore must not contain BEGIN/COMMIT themselves. 0 or -1 (printed).
 */
static int apply_one(struct ctl *c, const struct migration *m)
{
	PGconn *db = ctl_db(c);
	PGresult *r;
	char version[16], what[160], msg[512];
	const char *params[2] = {version, m->name};
	const char *emsg;

	snprintf(what, sizeof(what), "migration %s", m->name);
	if (ctl_run(c, what, "BEGIN") == -1)
		return -1;
	/* Our own SQL text with several statements: the simple query protocol. */
	r = PQexec(db, m->sql);
	if (r == NULL)
		abort();
	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
		emsg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
		snprintf(msg, sizeof(msg), "%s", emsg ? emsg : PQerrorMessage(db));
		msg[strcspn(msg, "\n")] = '\0';
		ctl_error("migration %s failed: %s", m->name, msg);
		PQclear(r);
		goto fail;
	}
	PQclear(r);
	snprintf(version, sizeof(version), "%d", m->version);
	r = ctl_exec(c, what, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2,
	             params, NULL, NULL);
	if (r == NULL)
		goto fail;
	PQclear(r);
	if (ctl_run(c, what, "COMMIT") == -1)
		goto fail;
	return 0;
fail:
	PQclear(PQexec(db, "ROLLBACK"));
	return -1;
}

/* 1 when version is in the first column of r. */
static int is_applied(const PGresult *r, int version)
{
	int i;

	for (i = 0; i < PQntuples(r); i++)
		if (strtol(PQgetvalue(r, i, 0), NULL, 10) == version)
			return 1;
	return 0;
}

int ctl_cmd_migrate(struct ctl *c, int argc, char **argv)
{
	const char *lock_params[1] = {MIGRATE_LOCK_KEY};
	PGresult *done = NULL, *r;
	json_t *applied = json_array();
	long highest = 0, db_highest = 0;
	int i, rc = CTL_FAIL;

	if (argc != 1)
		return ctl_usage(usage, "migrate takes no arguments");
	if (ctl_db(c) == NULL)
		goto out;
	r = ctl_exec(c, "taking the migration lock", "SELECT pg_advisory_lock($1::bigint)", 1,
	             lock_params, NULL, NULL);
	if (r == NULL)
		goto out;
	PQclear(r);
	if (ctl_run(c, "creating schema_migrations",
	            "CREATE TABLE IF NOT EXISTS schema_migrations ("
	            " version int PRIMARY KEY,"
	            " name text,"
	            " applied_at timestamptz DEFAULT now())") == -1)
		goto out;
	done =
	    ctl_exec(c, "reading schema_migrations",
	             "SELECT version FROM schema_migrations ORDER BY version", 0, NULL, NULL, NULL);
	if (done == NULL)
		goto out;
	if (PQntuples(done) > 0)
		db_highest = strtol(PQgetvalue(done, PQntuples(done) - 1, 0), NULL, 10);

	for (i = 0; i < migrations_count; i++) {
		const struct migration *m = &migrations[i];

		if (m->version > highest)
			highest = m->version;
		if (is_applied(done, m->version))
			continue;
		if (apply_one(c, m) == -1)
			goto out;
		json_array_append_new(
		    applied, json_pack("{s:i, s:s}", "version", m->version, "name", m->name));
		if (!c->json) {
			printf("applied %s\n", m->name);
			fflush(stdout);
		}
	}
	if (db_highest > highest) {
		/* An older sendgatectl against a newer schema: nothing to do, but say so. */
		fprintf(stderr,
		        "sendgatectl: warning: the database is at schema version %ld, newer than "
		        "this sendgatectl knows (%ld)\n",
		        db_highest, highest);
		highest = db_highest;
	}
	if (c->json) {
		ctl_json_print(
		    json_pack("{s:O, s:I}", "applied", applied, "version", (json_int_t)highest));
	} else if (json_array_size(applied) == 0) {
		printf("schema is up to date (version %ld)\n", highest);
	} else {
		printf("schema is now at version %ld\n", highest);
	}
	rc = CTL_OK;
out:
	/* Closing the session would release the lock too; say it explicitly. */
	if (c->db && PQstatus(c->db) == CONNECTION_OK)
		PQclear(PQexecParams(c->db, "SELECT pg_advisory_unlock($1::bigint)", 1, NULL,
		                     lock_params, NULL, NULL, 0));
	PQclear(done);
	json_decref(applied);
	return rc;
}
