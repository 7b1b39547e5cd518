/* main: the sendgate daemon's command line. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/ssl.h>

#include "common/common.h"
#include "dkim/dkim.h"
#include "queue/queue.h"
#include "smtpd/server.h"
#include "smtpd/smtpd.h"

static void usage(FILE *fp)
{
	fprintf(fp, "usage: sendgate [-c FILE] [--check-config] [--list-config-keys] [-V]\n"
		    "  -c FILE             configuration file (default /etc/sendgate/sendgate.conf)\n"
		    "  --check-config      validate the configuration and exit\n"
		    "  --list-config-keys  print every accepted [section] key and exit\n"
		    "  -V, --version       print the version and exit\n");
}

/*
 * --check-config: everything start-up would trip over, without starting:
 * the certificate and key, the master key, the database and its schema.
 */
static int check_config(const struct config *cfg, const char *path)
{
	char err[1024];
	SSL_CTX *ctx;
	PGconn *conn;
	int bad = 0;

	ctx = tls_server_ctx(cfg->tls_cert, cfg->tls_key, err, sizeof(err));
	if (ctx == NULL) {
		char where[600];
		fprintf(stderr, "sendgate: %s: %s\n",
			config_where(cfg, "smtp", strstr(err, "private key") ? "tls_key" : "tls_cert",
				     where, sizeof(where)),
			err);
		bad = 1;
	}
	SSL_CTX_free(ctx);
	if (cfg->dkim_master_key_file[0]) {
		unsigned char mkey[32];
		if (dkim_master_key_load(cfg->dkim_master_key_file, mkey, err, sizeof(err)) == -1) {
			char where[600];
			fprintf(stderr, "sendgate: %s: %s\n",
				config_where(cfg, "dkim", "master_key_file", where, sizeof(where)), err);
			bad = 1;
		}
		explicit_bzero(mkey, sizeof(mkey));
	}
	conn = PQconnectdb(cfg->database_url);
	if (PQstatus(conn) != CONNECTION_OK) {
		fprintf(stderr, "sendgate: %s: [database] url: cannot connect: %s", path,
			PQerrorMessage(conn));
		bad = 1;
	} else {
		PGresult *r = PQexec(conn, "SELECT max(version) FROM schema_migrations");
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			fprintf(stderr, "sendgate: %s: [database] url: no sendgate schema; run "
					"'sendgatectl migrate'\n",
				path);
			bad = 1;
		}
		PQclear(r);
	}
	PQfinish(conn);
	if (bad)
		return 1;
	printf("sendgate: %s: configuration ok\n", path);
	return 0;
}

static int level_of(const char *s)
{
	if (strcmp(s, "err") == 0)
		return SGLOG_ERR;
	if (strcmp(s, "warn") == 0)
		return SGLOG_WARN;
	if (strcmp(s, "debug") == 0)
		return SGLOG_DEBUG;
	return SGLOG_INFO;
}

/*
 * Takes the VERP key the daemon put in the environment of its delivery
 * child (child.c) and removes it from there: 0, or -1 when there is none.
 */
static int verp_key_from_env(unsigned char key[32])
{
	char *v = getenv(VERP_KEY_ENV);
	int ok = v != NULL && strlen(v) == 64 && hex_decode(v, 32, key) == 0;

	if (v != NULL) {
		explicit_bzero(v, strlen(v));
		unsetenv(VERP_KEY_ENV);
	}
	if (!ok)
		explicit_bzero(key, 32);
	return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"check-config", no_argument, NULL, 'k'},
	    {"list-config-keys", no_argument, NULL, 'l'},
	    {"delivery-only", no_argument, NULL, 'd'},
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *path = getenv("SENDGATE_CONFIG");
	struct config cfg;
	char err[1024];
	int c, check = 0, delivery_only = 0, rc;

	if (path == NULL || *path == '\0')
		path = "/etc/sendgate/sendgate.conf";
	while ((c = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			path = optarg;
			break;
		case 'k':
			check = 1;
			break;
		case 'd':
			delivery_only = 1;
			break;
		case 'l': {
			size_t n, i;
			const struct config_key_info *k = config_keys(&n);
			for (i = 0; i < n; i++)
				printf("[%s] %s\n", k[i].section, k[i].key);
			return 0;
		}
		case 'V':
			printf("sendgate %s\n", SENDGATE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	log_init("sendgate", 0, SGLOG_INFO);
	if (config_load(&cfg, path, err, sizeof(err)) == -1) {
		char q[1100];
		log_err("event=config_error error=%s", log_quote(q, sizeof(q), err));
		fprintf(stderr, "sendgate: %s\n", err);
		config_free(&cfg);
		return 1;
	}
	if (strcmp(cfg.log_target, "syslog") == 0)
		log_init("sendgate", 1, level_of(cfg.log_level));
	else
		log_set_level(level_of(cfg.log_level));
	if (cfg.database_url[0] == '\0') {
		fprintf(stderr, "sendgate: %s: [database] url: not set (or set SENDGATE_DATABASE_URL)\n",
			path);
		config_free(&cfg);
		return 1;
	}
	if (cfg.tls_cert[0] == '\0' || cfg.tls_key[0] == '\0') {
		fprintf(stderr, "sendgate: %s: [smtp] %s: not set\n", path,
			cfg.tls_cert[0] == '\0' ? "tls_cert" : "tls_key");
		config_free(&cfg);
		return 1;
	}
	if (check) {
		rc = check_config(&cfg, path);
		config_free(&cfg);
		return rc;
	}
	if (delivery_only) {
		log_init("sendgate-delivery", strcmp(cfg.log_target, "syslog") == 0,
			 level_of(cfg.log_level));
		/* The VERP key from the daemon that started this process,
		 * or, run on its own, from the master key: only to derive
		 * it (the delivery side holds no private key). */
		if (verp_key_from_env(cfg.verp_key) == 0) {
			/* handed over by the daemon */
		} else {
			unsigned char mkey[32];
			if (!cfg.dkim_master_key_file[0] ||
			    dkim_master_key_load(cfg.dkim_master_key_file, mkey, err, sizeof(err)) == -1) {
				char q[1200];
				fatal("event=start_failed error=%s",
				      log_quote(q, sizeof(q),
						cfg.dkim_master_key_file[0]
						    ? err
						    : "[dkim] master_key_file: not set (delivery derives the "
						      "VERP tag key from it)"));
			}
			verp_key_derive(mkey, cfg.verp_key);
			explicit_bzero(mkey, sizeof(mkey));
		}
		smtpd_drop_privileges(&cfg);
		rc = delivery_run(&cfg);
		config_free(&cfg);
		return rc;
	}
	log_info("event=starting version=%s config=%s", SENDGATE_VERSION, path);
	rc = smtpd_run(&cfg, path);
	config_free(&cfg);
	return rc;
}
