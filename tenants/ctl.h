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

/*
 * SQL for the state of the dkim_keys row aliased k at now(): 'pending'
 * (sign_from ahead: published, not used yet), 'signing' (in its window and
 * the newest such key of its algorithm, the one the daemon uses),
 * 'retiring' (no longer signing, still published until unpublish_at) or
 * 'retired'.
 */
#define CTL_SQL_DKIM_STATE                                                                         \
	"CASE WHEN k.sign_from > now() THEN 'pending'"                                             \
	" WHEN (k.sign_until IS NULL OR k.sign_until > now()) AND k.id = (SELECT s.id"             \
	" FROM dkim_keys s WHERE s.domain_id = k.domain_id AND s.algorithm = k.algorithm"          \
	" AND s.sign_from <= now() AND (s.sign_until IS NULL OR s.sign_until > now())"             \
	" ORDER BY s.sign_from DESC, s.id DESC LIMIT 1) THEN 'signing'"                            \
	" WHEN k.unpublish_at IS NULL OR k.unpublish_at > now() THEN 'retiring'"                   \
	" ELSE 'retired' END"

/* ---- ctl_dkim.c: DKIM keys -------------------------------------------- */

/* A new key, sealed and ready to insert. */
struct ctl_dkim_newkey {
	char alg[8];       /* "rsa" or "ed25519" */
	char selector[64]; /* set by the caller */
	int bits;
	struct buf sealed_hex; /* "\\x..." text of the sealed private key, for a bytea */
	struct buf public_b64; /* the p= value */
};

/*
 * Loads [dkim] master_key_file into mkey and checks that it opens one of
 * the newest keys already stored (a valid but different key file would
 * seal keys the daemon cannot use). 0, or -1 with the error printed. The
 * caller wipes mkey (OPENSSL_cleanse) when done.
 */
int ctl_dkim_master_key(struct ctl *c, unsigned char mkey[32]);
void ctl_dkim_newkey_init(struct ctl_dkim_newkey *nk);
void ctl_dkim_newkey_free(struct ctl_dkim_newkey *nk);
/*
 * Generates a key of alg ("rsa": [dkim] rsa_bits; "ed25519") and seals it
 * under mkey into nk (initialised, selector set by the caller), bound to
 * domain (its name as stored) and nk->selector: the row it goes into. The
 * private key is wiped from memory after sealing. 0, or -1 (printed).
 */
int ctl_dkim_newkey_generate(struct ctl *c, const char *alg, const char *domain,
                             const unsigned char mkey[32], struct ctl_dkim_newkey *nk);
/*
 * Inserts nk for the domain inside the caller's transaction, signing from
 * now() + delay seconds; sign_from (40 bytes, may be NULL) gets that time.
 * 0, or -1 with the error printed.
 */
int ctl_dkim_key_insert(struct ctl *c, const char *domain_id, const struct ctl_dkim_newkey *nk,
                        long long delay, int imported, char sign_from[40]);
/*
 * The DKIM records the customer publishes for the domain (mode "cname" or
 * "txt"), as a new JSON array of {selector, algorithm, bits, record_type,
 * name, value, signing, state}; NULL with the error printed.
 */
json_t *ctl_dkim_records(struct ctl *c, const char *domain_id, const char *domain,
                         const char *mode);
/* Prints ctl_dkim_records' array for people: a heading, then "  NAME TYPE VALUE" lines. */
void ctl_dkim_records_print(const json_t *recs, const char *domain, const char *mode, FILE *fp);

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

/*
 * DKIM selectors. Each algorithm has a pair that keys rotate between:
 * RSA sg1/sg2, Ed25519 sg1e/sg2e. The selector of slot 1 or 2 of alg
 * ("rsa", "ed25519"), or NULL for anything else.
 */
const char *ctl_dkim_selector(const char *alg, int slot);
/* 1 or 2 when selector is that slot of alg's pair, else 0. */
int ctl_dkim_selector_slot(const char *alg, const char *selector);
/* 1 when selector belongs to any of the platform's pairs. */
int ctl_dkim_is_platform_selector(const char *selector);
/* NULL when s is a valid selector (the schema's CHECK), else a sentence. */
const char *ctl_dkim_selector_problem(const char *s);

/* How a slot of a selector pair is occupied, for ctl_dkim_rotation_slot. */
enum { CTL_SLOT_FREE, CTL_SLOT_RETIRED, CTL_SLOT_IN_USE };
/*
 * The slot (1 or 2) of alg's pair that a rotation puts its new key on:
 * the other one than the signing selector's when that is in the pair,
 * else a free slot, else a retired one; -1 when that slot is still in use
 * (its key is pending, signing or still published).
 */
int ctl_dkim_rotation_slot(const char *alg, const char *signing, const int use[2]);
/* Bits of ctl_dkim_algorithms' mask. */
enum { CTL_ALG_RSA = 1, CTL_ALG_ED25519 = 2 };
/* "rsa", "ed25519" or "both" as a mask of CTL_ALG_*; 0 for anything else. */
int ctl_dkim_algorithms(const char *s);
/* Appends the DKIM TXT value "v=DKIM1; k=ALG; p=P" to out. */
void ctl_dkim_txt_value(const char *alg, const char *p_b64, struct buf *out);

/* Longest character-string in a TXT record (RFC 1035 3.3). */
#define CTL_TXT_STRING_MAX 255
/*
 * Appends value as the RDATA of a zone-file TXT record: ("..." "...") of
 * character-strings of at most 255 bytes each, the tags before "p=" in a
 * string of their own; '"' and '\' escaped, other unprintables as \DDD.
 */
void ctl_zone_txt_rdata(const char *value, struct buf *out);

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

/* ---- ctl_verify.c: DNS records and checks of a domain ------------------- */

/*
 * The records the customer of domain publishes (dns_records_compute; SPF
 * merged with what report found), as a new JSON object {domain, zone,
 * records: [{kind, type, selector?, name, relative_name, value, current,
 * action, status, found, detail}], next_steps: ["1. SPF: ..."]}. report
 * (a stored dns_check_report_to_json object, may be NULL) gives each
 * record's last status. NULL with the error printed.
 */
json_t *ctl_dns_records(struct ctl *c, const char *domain_id, const char *domain, const char *mode,
                        const json_t *report);
/*
 * Prints ctl_dns_records' object as a table and the next steps; only_kinds
 * (e.g. "spf,return_path,dmarc", may be NULL) limits the table's rows.
 */
void ctl_dns_records_print(const json_t *dns, const char *only_kinds, FILE *fp);
/* `domain verify DOMAIN`: checks now, stores the outcome, prints it. */
int ctl_domain_verify(struct ctl *c, int argc, char **argv);

/* ---- ctl_delivery_util.c: pure helpers of the delivery commands ------- */

/* NULL when s is a valid pool name (the schema's CHECK), else a sentence. */
const char *ctl_pool_name_problem(const char *s);
/*
 * Checks that in is one IPv4 or IPv6 address usable as a source address
 * (no prefix, zone, brackets, IPv4-mapped, unspecified or multicast form)
 * and writes its canonical text into out. 0, or -1 with *why a sentence.
 */
int ctl_ip_normalize(const char *in, char *out, size_t outlen, const char **why);
/*
 * Checks a recipient address (local@domain, no brackets, spaces or control
 * characters, UTF-8, at most 254 octets) and writes it into out with ASCII
 * letters lower-cased, as the daemon compares them. 0, or -1 with *why.
 */
int ctl_address_normalize(const char *in, char *out, size_t outlen, const char **why);
/* Parses a decimal count in [min, max] (digits only); 0, or -1. */
int ctl_parse_count(const char *s, long min, long max, long *out);

/* ---- the commands ----------------------------------------------------- */

int ctl_cmd_migrate(struct ctl *c, int argc, char **argv);
int ctl_cmd_tenant(struct ctl *c, int argc, char **argv);
/* ctl_reputation.c: `tenant stats [TENANT] [--window DURATION]` (argv after "stats"). */
int ctl_tenant_stats(struct ctl *c, int argc, char **argv);
int ctl_cmd_credential(struct ctl *c, int argc, char **argv);
int ctl_cmd_domain(struct ctl *c, int argc, char **argv);
int ctl_cmd_queue(struct ctl *c, int argc, char **argv);
int ctl_cmd_dkim(struct ctl *c, int argc, char **argv);
int ctl_cmd_pool(struct ctl *c, int argc, char **argv);
int ctl_cmd_tenant_set_pool(struct ctl *c, int argc, char **argv);
int ctl_cmd_suppression(struct ctl *c, int argc, char **argv);
int ctl_cmd_events(struct ctl *c, int argc, char **argv);

#endif
