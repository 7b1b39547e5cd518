/*
 * sendgatectl, the admin CLI: private declarations shared by tenants/ctl*.c.
 * The CLI talks to PostgreSQL with plain blocking libpq; every statement
 * that carries user input goes through PQexecParams.
 */
#ifndef SENDGATE_CTL_H
#define SENDGATE_CTL_H

#include <stdio.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "common/common.h"

/* Exit codes: success, an operation failed, the command line was wrong. */
enum { CTL_OK = 0, CTL_FAIL = 1, CTL_USAGE = 2 };

struct ctl {
	struct config cfg;
	int json;   /* --json: a JSON document on stdout */
	PGconn *db; /* opened by ctl_db on first use */
};

/* A subcommand: argv[0] is the command word itself. Returns an exit code. */
typedef int (*ctl_cmd_fn)(struct ctl *c, int argc, char **argv);

/* ---- ctl.c: shared plumbing ------------------------------------------ */

/* Prints "sendgatectl: <message>" on stderr. */
void ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints the error and the usage line of one command; returns CTL_USAGE. */
int ctl_usage(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The open database connection, connecting on first use; NULL after an error was printed. */
PGconn *ctl_db(struct ctl *c);
/*
 * Runs one parameterised statement (text parameters; NULL entries are SQL
 * NULL). Returns the result when its status is COMMAND_OK or TUPLES_OK
 * (caller PQclears it); otherwise prints "sendgatectl: <what>: <server
 * message>" unless quiet_state names the SQLSTATE the caller handles
 * itself, and returns NULL. *state gets the SQLSTATE ("" when none) if
 * state is not NULL.
 */
PGresult *ctl_exec(struct ctl *c, const char *what, const char *sql, int nparams,
                   const char *const *params, const char *quiet_state, char state[6]);
/* Runs a statement without parameters or result (BEGIN, COMMIT...); 0 or -1 (printed). */
int ctl_run(struct ctl *c, const char *what, const char *sql);
/* Prints doc as the command's JSON answer on stdout and drops the reference; 0. */
int ctl_json_print(json_t *doc);
/* A JSON integer from a decimal column value. */
json_t *ctl_json_int(const char *s);
/* A JSON string, or null for an SQL NULL column. */
json_t *ctl_json_str_or_null(const PGresult *r, int row, int col);
/* 1 for a boolean column that is true ("t"). */
int ctl_pq_bool(const PGresult *r, int row, int col);
/* Looks up a tenant's id (decimal text into id); 0, or -1 with the error printed. */
int ctl_tenant_id(struct ctl *c, const char *name, char id[24]);

/* SQL for a timestamptz column as ISO 8601 UTC text ("2026-01-02T03:04:05Z"). */
#define CTL_SQL_TIME(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* ---- ctl_util.c: pure helpers (unit-tested) --------------------------- */

/* NULL when s is a valid tenant name, else a sentence saying what is wrong. */
const char *ctl_tenant_name_problem(const char *s);
/*
 * Lower-cases in into out (outlen bytes), dropping one trailing dot, and
 * checks it is a domain a tenant can send from: LDH labels of 1..63
 * octets not starting or ending with '-', at least two labels, at most
 * 253 octets, a top-level label that is not all digits. 0, or -1 with
 * *why set to a sentence.
 */
int ctl_domain_normalize(const char *in, char *out, size_t outlen, const char **why);
/* 1 when s is well-formed UTF-8 (no overlongs, surrogates or values past U+10FFFF). */
int ctl_utf8_valid(const char *s);
/* A JSON string of s; bytes that are not valid UTF-8 become '?'. Never NULL. */
json_t *ctl_json_text(const char *s);
/* Seconds as a short age: "5s", "3m", "2h", "4d" (negative counts as 0). */
void ctl_format_age(long long secs, char *out, size_t outlen);

/* A text table: columns padded to the widest cell, two spaces apart. */
struct table {
	size_t ncols;
	size_t nrows; /* including the header row */
	size_t cap;
	char **cells; /* nrows * ncols, each owned */
};

/* Starts a table with ncols columns and its header row. */
void table_init(struct table *t, size_t ncols, const char *const *headers);
/* Adds a row of ncols cells (NULL prints as "-"); control bytes become '?'. */
void table_add(struct table *t, const char *const *cells);
/* Writes the table; trailing blanks of each line are dropped. */
void table_print(const struct table *t, FILE *fp);
void table_free(struct table *t);

/* ---- the commands ----------------------------------------------------- */

int ctl_cmd_migrate(struct ctl *c, int argc, char **argv);
int ctl_cmd_tenant(struct ctl *c, int argc, char **argv);
int ctl_cmd_credential(struct ctl *c, int argc, char **argv);
int ctl_cmd_domain(struct ctl *c, int argc, char **argv);
int ctl_cmd_queue(struct ctl *c, int argc, char **argv);

#endif
