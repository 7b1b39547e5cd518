/*
 * sendgatectl: the operator's command line for the control plane (tenants,
 * credentials, domains and their DKIM keys, schema migrations) and a read-only view of the
 * spool. main() parses the global options, loads the configuration and
 * hands the rest of the command line to one command in ctl_*.c.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tenants/ctl.h"
#include "tenants/tenants.h"

#define DEFAULT_CONFIG "/etc/sendgate/sendgate.conf"

static const char help_text[] =
    "usage: sendgatectl [-c FILE] [--json] COMMAND [ARGS...]\n"
    "\n"
    "options (--json may also follow the command):\n"
    "  -c FILE      configuration file (default: $SENDGATE_CONFIG, else\n"
    "               " DEFAULT_CONFIG " if it exists, else built-in defaults)\n"
    "  --json       print a JSON document on stdout instead of text\n"
    "\n"
    "commands:\n"
    "  migrate                               apply pending schema migrations\n"
    "  tenant create NAME                    add a tenant\n"
    "  tenant list                           list tenants\n"
    "  tenant show NAME                      one tenant, its credentials, domains, limits,\n"
    "                                        suspension\n"
    "  tenant stats [TENANT] [--window DURATION]\n"
    "                                        recipients, bounce and complaint rates against\n"
    "                                        the [reputation] limits (default window 24h)\n"
    "  credential create TENANT              make an SMTP credential (secret shown once)\n"
    "  credential list TENANT                list a tenant's credentials\n"
    "  credential revoke USERNAME            revoke a credential\n"
    "  domain add TENANT DOMAIN [--dkim-mode cname|txt] [--algorithm rsa|ed25519|both]\n"
    "             [--operator-verified [--note TEXT]]\n"
    "                                        add a sending domain to a tenant, with its\n"
    "                                        DKIM keys; prints the records to publish\n"
    "  domain list [TENANT]                  list domains\n"
    "  domain show DOMAIN                    one domain, the DNS records to publish with\n"
    "                                        their last status, and what to do next\n"
    "  domain verify DOMAIN                  check the domain's DNS records now and\n"
    "                                        store the outcome (state, per record)\n"
    "  dkim list DOMAIN                      a domain's DKIM keys and their states\n"
    "  dkim rotate DOMAIN [--algorithm rsa|ed25519|both] [--publish-delay DURATION]\n"
    "             [--overlap DURATION]\n"
    "                                        a new key on the idle selector, signing\n"
    "                                        after the publish delay\n"
    "  dkim zone                             TXT records of the platform's DKIM zone\n"
    "  dkim import DOMAIN SELECTOR PEMFILE [--replace] [--overlap DURATION]\n"
    "                                        sign with an existing private key\n"
    "  dkim reseal                           bind every sealed private key to its\n"
    "                                        domain and selector (v1 keys to v2)\n"
    "  queue list                            list the messages in the spool\n"
    "  queue show ID                         one message: envelope, headers, recipients\n"
    "  queue delete ID                       remove a message from the spool\n"
    "  queue retry ID                        ask delivery to try a message now\n"
    "  pool create NAME [--default]          add an IP pool (--default: for tenants\n"
    "                                        without a pool of their own)\n"
    "  pool add-address POOL IP --helo HOSTNAME [--weight N]\n"
    "                                        add a source address (IPv4 or IPv6)\n"
    "  pool list                             list pools and their addresses\n"
    "  tenant set-pool TENANT POOL           send a tenant's mail from POOL\n"
    "  tenant set-limits TENANT [--connections N|default]\n"
    "             [--messages-per-minute N|default]\n"
    "                                        a tenant's own sending limits (0: none;\n"
    "                                        default: the configuration's)\n"
    "  tenant suspend TENANT --reason TEXT   refuse the tenant's mail (550 5.7.1 quoting\n"
    "                                        TEXT) and hold its queue until resumed\n"
    "  tenant resume TENANT                  end a tenant's suspension\n"
    "  suppression list TENANT               a tenant's suppressed recipients\n"
    "  suppression add TENANT ADDRESS [--reason TEXT]\n"
    "                                        refuse RCPT TO ADDRESS for the tenant\n"
    "  suppression remove TENANT ADDRESS     accept ADDRESS again\n"
    "  events [--tenant T] [--message ID] [--type TYPE] [--limit N]\n"
    "                                        the latest events, newest last\n"
    "  help                                  this text\n"
    "  version                               print the version\n"
    "\n"
    "environment: SENDGATE_CONFIG, SENDGATE_DATABASE_URL (overrides [database] url)\n"
    "exit status: 0 success, 1 failure, 2 usage error\n";

void ctl_error(const char *fmt, ...)
{
	va_list ap;

	fputs("sendgatectl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int ctl_usage(const char *usage, const char *fmt, ...)
{
	va_list ap;

	fputs("sendgatectl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (usage)
		fprintf(stderr, "usage: sendgatectl %s\n", usage);
	return CTL_USAGE;
}

/* libpq messages end in a newline (sometimes several lines): keep the first line. */
static void first_line(const char *s, char *out, size_t outlen)
{
	size_t n = strcspn(s ? s : "", "\n");

	snprintf(out, outlen, "%.*s", (int)n, s ? s : "");
}

/* Server NOTICEs ("relation already exists, skipping") are not for the operator. */
static void ignore_notice(void *arg, const char *message)
{
}

PGconn *ctl_db(struct ctl *c)
{
	const char *keys[] = {"dbname", "application_name", NULL};
	const char *vals[] = {c->cfg.database_url ? c->cfg.database_url : "", "sendgatectl", NULL};
	char msg[512];

	if (c->db)
		return c->db;
	/* expand_dbname: the url may be a URI or "key=value" conninfo text. */
	c->db = PQconnectdbParams(keys, vals, 1);
	if (c->db == NULL)
		abort();
	if (PQstatus(c->db) != CONNECTION_OK) {
		first_line(PQerrorMessage(c->db), msg, sizeof(msg));
		ctl_error("cannot connect to the database: %s", msg);
		PQfinish(c->db);
		c->db = NULL;
		return NULL;
	}
	PQsetNoticeProcessor(c->db, ignore_notice, NULL);
	return c->db;
}

PGresult *ctl_exec(struct ctl *c, const char *what, const char *sql, int nparams,
                   const char *const *params, const char *quiet_state, char state[6])
{
	PGconn *db = ctl_db(c);
	PGresult *r;
	const char *st;
	char msg[512];

	if (state)
		state[0] = '\0';
	if (db == NULL)
		return NULL;
	r = PQexecParams(db, sql, nparams, NULL, params, NULL, NULL, 0);
	if (r == NULL)
		abort(); /* libpq returns NULL only when out of memory */
	if (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK)
		return r;
	st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	if (state)
		snprintf(state, 6, "%s", st ? st : "");
	if (!(quiet_state && st && strcmp(st, quiet_state) == 0)) {
		if (st && strcmp(st, "42P01") == 0) {
			ctl_error(
			    "%s: the database has no sendgate schema; run 'sendgatectl migrate'",
			    what);
		} else {
			first_line(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY), msg,
			           sizeof(msg));
			if (msg[0] == '\0')
				first_line(PQerrorMessage(db), msg, sizeof(msg));
			ctl_error("%s: %s", what, msg);
		}
	}
	PQclear(r);
	return NULL;
}

int ctl_run(struct ctl *c, const char *what, const char *sql)
{
	PGresult *r = ctl_exec(c, what, sql, 0, NULL, NULL, NULL);

	if (r == NULL)
		return -1;
	PQclear(r);
	return 0;
}

int ctl_json_print(json_t *doc)
{
	if (doc == NULL)
		abort();
	json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	fputc('\n', stdout);
	json_decref(doc);
	return 0;
}

json_t *ctl_json_int(const char *s)
{
	return json_integer(strtoll(s, NULL, 10));
}

json_t *ctl_json_str_or_null(const PGresult *r, int row, int col)
{
	if (PQgetisnull(r, row, col))
		return json_null();
	return ctl_json_text(PQgetvalue(r, row, col));
}

int ctl_pq_bool(const PGresult *r, int row, int col)
{
	return !PQgetisnull(r, row, col) && PQgetvalue(r, row, col)[0] == 't';
}

int ctl_tenant_id(struct ctl *c, const char *name, char id[24])
{
	const char *params[1] = {name};
	PGresult *r;

	if (ctl_tenant_name_problem(name) != NULL) {
		/* Cannot exist (the schema has the same CHECK); spare the query. */
		ctl_error("no tenant named \"%s\"", name);
		return -1;
	}
	r = ctl_exec(c, "looking up the tenant", "SELECT id FROM tenants WHERE name = $1", 1,
	             params, NULL, NULL);
	if (r == NULL)
		return -1;
	if (PQntuples(r) == 0) {
		ctl_error("no tenant named \"%s\"", name);
		PQclear(r);
		return -1;
	}
	snprintf(id, 24, "%s", PQgetvalue(r, 0, 0));
	PQclear(r);
	return 0;
}

static int cmd_help(struct ctl *c, int argc, char **argv)
{
	fputs(help_text, stdout);
	return CTL_OK;
}

static int cmd_version(struct ctl *c, int argc, char **argv)
{
	if (argc != 1)
		return ctl_usage("version", "version takes no arguments");
	if (c->json)
		return ctl_json_print(json_pack(
		    "{s:s, s:s, s:i}", "name", "sendgatectl", "version", SENDGATE_VERSION, "schema",
		    migrations_count > 0 ? migrations[migrations_count - 1].version : 0));
	printf("sendgatectl %s\n", SENDGATE_VERSION);
	return CTL_OK;
}

static const struct {
	const char *name;
	ctl_cmd_fn fn;
	int needs_config;
} commands[] = {
    {"migrate", ctl_cmd_migrate, 1},
    {"tenant", ctl_cmd_tenant, 1},
    {"credential", ctl_cmd_credential, 1},
    {"domain", ctl_cmd_domain, 1},
    {"queue", ctl_cmd_queue, 1},
    {"pool", ctl_cmd_pool, 1},
    {"suppression", ctl_cmd_suppression, 1},
    {"events", ctl_cmd_events, 1},
    {"dkim", ctl_cmd_dkim, 1},
    {"help", cmd_help, 0},
    {"version", cmd_version, 0},
};

/*
 * -c, else $SENDGATE_CONFIG, else the default path when it exists, else
 * the built-in defaults with SENDGATE_DATABASE_URL applied here (config_load
 * applies it when there is a file). 0, or -1 with the error printed.
 */
static int load_config(struct ctl *c, const char *path)
{
	char err[512];
	const char *env;

	if (path == NULL) {
		env = getenv("SENDGATE_CONFIG");
		if (env && *env)
			path = env;
		else if (access(DEFAULT_CONFIG, F_OK) == 0)
			path = DEFAULT_CONFIG;
	}
	if (path == NULL) {
		config_defaults(&c->cfg);
		env = getenv("SENDGATE_DATABASE_URL");
		if (env && *env) {
			free(c->cfg.database_url);
			c->cfg.database_url = xstrdup(env);
		}
		return 0;
	}
	if (config_load(&c->cfg, path, err, sizeof(err)) == -1) {
		ctl_error("%s", err);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct ctl c;
	const char *config_path = NULL;
	char **args = xcalloc((size_t)argc + 1, sizeof(char *));
	int nargs = 0, i, rc;
	size_t k;

	memset(&c, 0, sizeof(c));
	/* Global options come before the command... */
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--json") == 0) {
			c.json = 1;
		} else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
			if (i + 1 >= argc) {
				rc = ctl_usage(NULL, "%s needs a file name", a);
				goto out;
			}
			config_path = argv[++i];
		} else if (strncmp(a, "--config=", 9) == 0) {
			config_path = a + 9;
		} else if (strncmp(a, "-c", 2) == 0) {
			config_path = a + 2;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			args[nargs++] = "help";
		} else if (strcmp(a, "--version") == 0) {
			args[nargs++] = "version";
		} else if (strcmp(a, "--") == 0) {
			i++;
			break;
		} else if (a[0] == '-') {
			rc = ctl_usage(NULL, "unknown option \"%s\" (try 'sendgatectl help')", a);
			goto out;
		} else {
			break;
		}
		if (nargs > 0) {
			i++;
			break;
		}
	}
	/* ...except --json, which may follow it anywhere (but not as --note's text). */
	for (; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0 &&
		    !(nargs > 0 && strcmp(args[nargs - 1], "--note") == 0)) {
			c.json = 1;
			continue;
		}
		args[nargs++] = argv[i];
	}
	if (nargs == 0) {
		fputs(help_text, stderr);
		rc = CTL_USAGE;
		goto out;
	}
	for (k = 0; k < ARRAY_LEN(commands); k++)
		if (strcmp(args[0], commands[k].name) == 0)
			break;
	if (k == ARRAY_LEN(commands)) {
		rc = ctl_usage(NULL, "unknown command \"%s\" (try 'sendgatectl help')", args[0]);
		goto out;
	}
	if (commands[k].needs_config && load_config(&c, config_path) == -1) {
		rc = CTL_FAIL;
		goto out;
	}
	/* tenant set-pool lives with the pool commands (ctl_pool.c). */
	if (commands[k].fn == ctl_cmd_tenant && nargs > 1 && strcmp(args[1], "set-pool") == 0)
		rc = ctl_cmd_tenant_set_pool(&c, nargs, args);
	else
		rc = commands[k].fn(&c, nargs, args);
out:
	if (c.db)
		PQfinish(c.db);
	config_free(&c.cfg);
	free(args);
	if (fflush(stdout) != 0 && rc == CTL_OK) {
		ctl_error("cannot write the output");
		rc = CTL_FAIL;
	}
	return rc;
}
