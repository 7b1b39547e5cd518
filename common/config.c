/*
 * config: the INI file, read with libinih. Every accepted key is in one
 * table below with its type and default; anything else stops start-up with
 * the file, line and key.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "common/common.h"

enum key_type { K_STR, K_INT, K_SIZE, K_DURATION, K_BOOL, K_LISTEN_LIST, K_LISTEN, K_DOUBLE };

struct key_def {
	const char *section;
	const char *key;
	enum key_type type;
	size_t off;
	const char *def;
	long long min, max; /* for numbers; 0,0 = no bound */
	const char *choices; /* for strings: "a|b|c" or NULL */
};

#define O(f) offsetof(struct config, f)

static const struct key_def keys[] = {
	{"server", "hostname", K_STR, O(hostname), "localhost", 0, 0, NULL},
	{"server", "user", K_STR, O(user), "", 0, 0, NULL},
	{"server", "log", K_STR, O(log_target), "stderr", 0, 0, "stderr|syslog"},
	{"server", "log_level", K_STR, O(log_level), "info", 0, 0, "err|warn|info|debug"},

	{"smtp", "submission_listen", K_LISTEN_LIST, O(n_submission_listen), "127.0.0.1:2587", 0, 0, NULL},
	{"smtp", "smtps_listen", K_LISTEN_LIST, O(n_smtps_listen), "127.0.0.1:2465", 0, 0, NULL},
	{"smtp", "tls_cert", K_STR, O(tls_cert), "", 0, 0, NULL},
	{"smtp", "tls_key", K_STR, O(tls_key), "", 0, 0, NULL},
	{"smtp", "max_message_size", K_SIZE, O(max_message_size), "25M", 1024, 1LL << 32, NULL},
	{"smtp", "max_recipients", K_INT, O(max_recipients), "100", 1, 100000, NULL},
	{"smtp", "max_command_line", K_INT, O(max_command_line), "512", 512, 65536, NULL},
	{"smtp", "max_text_line", K_INT, O(max_text_line), "1000", 1000, 1000000, NULL},
	{"smtp", "max_path_length", K_INT, O(max_path_length), "256", 256, 4096, NULL},
	{"smtp", "max_header_size", K_SIZE, O(max_header_size), "256k", 4096, 64 << 20, NULL},
	{"smtp", "max_errors", K_INT, O(max_errors), "10", 1, 1000, NULL},
	{"smtp", "auth_max_failures", K_INT, O(auth_max_failures), "3", 1, 100, NULL},
	{"smtp", "auth_fail_delay", K_DURATION, O(auth_fail_delay), "5s", 0, 3600, NULL},
	{"smtp", "command_timeout", K_DURATION, O(command_timeout), "5m", 1, 86400, NULL},
	{"smtp", "data_timeout", K_DURATION, O(data_timeout), "3m", 1, 86400, NULL},
	{"smtp", "data_done_timeout", K_DURATION, O(data_done_timeout), "10m", 1, 86400, NULL},
	{"smtp", "max_connections", K_INT, O(max_connections), "10000", 1, 1000000, NULL},
	{"smtp", "max_connections_per_ip", K_INT, O(max_connections_per_ip), "100", 1, 1000000, NULL},
	{"smtp", "tenant_max_connections", K_INT, O(tenant_max_connections), "0", 0, 1000000, NULL},
	{"smtp", "tenant_messages_per_minute", K_INT, O(tenant_messages_per_minute), "0", 0, 10000000, NULL},

	{"database", "url", K_STR, O(database_url), "", 0, 0, NULL},

	{"spool", "dir", K_STR, O(spool_dir), "/var/spool/sendgate", 0, 0, NULL},
	{"spool", "commit_threads", K_INT, O(commit_threads), "2", 1, 64, NULL},
	{"spool", "reuse_max_age", K_DURATION, O(spool_reuse_max_age), "5m", 0, 86400, NULL},

	{"dkim", "master_key_file", K_STR, O(dkim_master_key_file), "", 0, 0, NULL},
	{"dkim", "default_algorithm", K_STR, O(dkim_default_algorithm), "rsa", 0, 0, "rsa|ed25519|both"},
	{"dkim", "rsa_bits", K_INT, O(dkim_rsa_bits), "2048", 2048, 4096, NULL},
	{"dkim", "rotation_publish_delay", K_DURATION, O(dkim_rotation_publish_delay), "2d", 0, 365 * 86400LL, NULL},
	{"dkim", "rotation_overlap", K_DURATION, O(dkim_rotation_overlap), "7d", 0, 365 * 86400LL, NULL},
	{"dkim", "sign_threads", K_INT, O(dkim_sign_threads), "2", 1, 64, NULL},
	{"dkim", "expiry", K_DURATION, O(dkim_expiry), "0", 0, 365 * 86400LL, NULL},
	{"dkim", "canonicalization", K_STR, O(dkim_canonicalization), "relaxed/relaxed", 0, 0,
	 "relaxed/relaxed|relaxed/simple|simple/relaxed|simple/simple"},

	{"platform", "dkim_zone", K_STR, O(platform_dkim_zone), "dkim.sendgate.example", 0, 0, NULL},
	{"platform", "spf_include", K_STR, O(platform_spf_include), "spf.sendgate.example", 0, 0, NULL},
	{"platform", "return_path_prefix", K_STR, O(platform_return_path_prefix), "rp", 0, 0, NULL},
	{"platform", "return_path_domain", K_STR, O(platform_return_path_domain), "rp.sendgate.example", 0, 0, NULL},
	{"platform", "bounce_domain", K_STR, O(platform_bounce_domain), "bounces.sendgate.example", 0, 0, NULL},
	{"platform", "dmarc_rua", K_STR, O(platform_dmarc_rua), "dmarc@sendgate.example", 0, 0, NULL},

	{"dns", "servers", K_STR, O(dns_servers), "", 0, 0, NULL},
	{"dns", "timeout_ms", K_INT, O(dns_timeout_ms), "2000", 10, 60000, NULL},
	{"dns", "tries", K_INT, O(dns_tries), "3", 1, 10, NULL},

	{"verify", "required", K_STR, O(verify_required), "spf,dkim", 0, 0, NULL},
	{"verify", "grace_period", K_DURATION, O(verify_grace_period), "72h", 0, 365 * 86400LL, NULL},
	{"verify", "new_interval", K_DURATION, O(verify_new_interval), "5m", 1, 86400, NULL},
	{"verify", "new_window", K_DURATION, O(verify_new_window), "1h", 0, 86400 * 30LL, NULL},
	{"verify", "pending_interval", K_DURATION, O(verify_pending_interval), "1h", 1, 86400 * 7LL, NULL},
	{"verify", "verified_interval", K_DURATION, O(verify_verified_interval), "6h", 1, 86400 * 7LL, NULL},
	{"verify", "broken_interval", K_DURATION, O(verify_broken_interval), "5m", 1, 86400, NULL},
	{"verify", "broken_window", K_DURATION, O(verify_broken_window), "1h", 0, 86400 * 30LL, NULL},

	{"delivery", "enabled", K_BOOL, O(delivery_enabled), "yes", 0, 0, NULL},
	{"delivery", "port", K_INT, O(delivery_port), "25", 1, 65535, NULL},
	{"delivery", "relay", K_STR, O(delivery_relay), "", 0, 0, NULL},
	{"delivery", "relay_starttls", K_BOOL, O(delivery_relay_starttls), "yes", 0, 0, NULL},
	{"delivery", "relay_username", K_STR, O(delivery_relay_username), "", 0, 0, NULL},
	{"delivery", "relay_password", K_STR, O(delivery_relay_password), "", 0, 0, NULL},
	{"delivery", "max_connections_per_destination", K_INT, O(delivery_max_connections_per_destination), "10", 1, 10000, NULL},
	{"delivery", "max_connections_per_source", K_INT, O(delivery_max_connections_per_source), "100", 1, 100000, NULL},
	{"delivery", "messages_per_connection", K_INT, O(delivery_messages_per_connection), "100", 1, 100000, NULL},
	{"delivery", "messages_per_minute", K_INT, O(delivery_messages_per_minute), "0", 0, 10000000, NULL},
	{"delivery", "retry_first", K_DURATION, O(delivery_retry_first), "5m", 1, 86400, NULL},
	{"delivery", "retry_factor", K_DOUBLE, O(delivery_retry_factor), "2", 1, 10, NULL},
	{"delivery", "retry_max", K_DURATION, O(delivery_retry_max), "4h", 1, 86400 * 7LL, NULL},
	{"delivery", "max_age", K_DURATION, O(delivery_max_age), "5d", 1, 86400 * 30LL, NULL},
	{"delivery", "connect_timeout", K_DURATION, O(delivery_connect_timeout), "30s", 1, 3600, NULL},
	{"delivery", "command_timeout", K_DURATION, O(delivery_command_timeout), "5m", 1, 3600, NULL},
	{"delivery", "data_timeout", K_DURATION, O(delivery_data_timeout), "10m", 1, 3600, NULL},
	{"delivery", "cpu_priority", K_STR, O(delivery_cpu_priority), "low", 0, 0,
	 "background|low|normal"},
	{"delivery", "acceptance_first", K_BOOL, O(delivery_acceptance_first), "yes", 0, 0, NULL},
	{"delivery", "acceptance_first_idle", K_INT, O(delivery_acceptance_first_idle), "30", 1, 100, NULL},
	{"delivery", "acceptance_first_max_hold", K_DURATION, O(delivery_acceptance_first_max_hold), "10s", 1, 3600, NULL},

	{"events", "retention", K_DURATION, O(events_retention), "0", 0, 3650 * 86400LL, NULL},

	{"reputation", "bounce_rate", K_DOUBLE, O(reputation_bounce_rate), "10", 0, 100, NULL},
	{"reputation", "complaint_rate", K_DOUBLE, O(reputation_complaint_rate), "0.5", 0, 100, NULL},
	{"reputation", "min_recipients", K_INT, O(reputation_min_recipients), "500", 1, 100000000, NULL},
	{"reputation", "window", K_DURATION, O(reputation_window), "24h", 60, 30 * 86400LL, NULL},
	{"reputation", "check_interval", K_DURATION, O(reputation_check_interval), "10m", 1, 86400, NULL},

	{"bounce", "listen", K_LISTEN_LIST, O(n_bounce_listen), "", 0, 0, NULL},
	{"bounce", "max_connections", K_INT, O(bounce_max_connections), "100", 1, 100000, NULL},
	{"bounce", "max_connections_per_ip", K_INT, O(bounce_max_connections_per_ip), "10", 1, 100000, NULL},
	{"bounce", "max_message_size", K_SIZE, O(bounce_max_message_size), "25M", 1024, 1LL << 32, NULL},
	{"bounce", "feedback_address", K_STR, O(bounce_feedback_address), "", 0, 0, NULL},

	{"admin", "listen", K_LISTEN, O(admin_listen), "", 0, 0, NULL},
};

_Static_assert(ARRAY_LEN(keys) <= CONFIG_MAX_KEYS, "raise CONFIG_MAX_KEYS");

static struct config_key_info key_infos[ARRAY_LEN(keys)];

const char *config_where(const struct config *cfg, const char *section, const char *key, char *out,
			 size_t outlen)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(keys); i++)
		if (!strcmp(keys[i].section, section) && !strcmp(keys[i].key, key) &&
		    cfg->key_lines[i] > 0) {
			snprintf(out, outlen, "%s:%d: [%s] %s", cfg->path ? cfg->path : "(defaults)",
				 cfg->key_lines[i], section, key);
			return out;
		}
	snprintf(out, outlen, "%s: [%s] %s (default)", cfg->path ? cfg->path : "(defaults)",
		 section, key);
	return out;
}

const struct config_key_info *config_keys(size_t *n)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(keys); i++) {
		key_infos[i].section = keys[i].section;
		key_infos[i].key = keys[i].key;
	}
	*n = ARRAY_LEN(keys);
	return key_infos;
}

struct unit {
	char suffix;
	long long mul;
};

/* A non-negative number with at most one unit suffix from units. */
static int parse_scaled(const char *s, const struct unit *units, long long *out)
{
	char *end;
	long long v, mul = 1;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || v < 0)
		return -1;
	if (*end) {
		const struct unit *u;
		for (u = units; u->suffix && u->suffix != *end; u++)
			;
		if (u->suffix == '\0' || end[1])
			return -1;
		mul = u->mul;
	}
	if (v > (1LL << 40) / mul)
		return -1;
	*out = v * mul;
	return 0;
}

void format_duration(long long secs, char *out, size_t outlen)
{
	if (secs != 0 && secs % 86400 == 0)
		snprintf(out, outlen, "%lldd", secs / 86400);
	else if (secs != 0 && secs % 3600 == 0)
		snprintf(out, outlen, "%lldh", secs / 3600);
	else if (secs != 0 && secs % 60 == 0)
		snprintf(out, outlen, "%lldm", secs / 60);
	else
		snprintf(out, outlen, "%llds", secs);
}

int parse_duration(const char *s, long long *out)
{
	static const struct unit units[] = {
	    {'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}, {'\0', 0}};

	return parse_scaled(s, units, out);
}

int parse_size(const char *s, long long *out)
{
	static const struct unit units[] = {{'k', 1024},	       {'K', 1024},
					    {'m', 1024 * 1024},	       {'M', 1024 * 1024},
					    {'g', 1024LL * 1024 * 1024}, {'G', 1024LL * 1024 * 1024},
					    {'\0', 0}};

	return parse_scaled(s, units, out);
}

static int parse_listen_list(const char *v, struct listen_addr *out, int max, int *n, const char **why)
{
	char tmp[1024], *tok, *save = NULL;

	*n = 0;
	if (strlen(v) >= sizeof(tmp)) {
		*why = "value too long";
		return -1;
	}
	snprintf(tmp, sizeof(tmp), "%s", v);
	for (tok = strtok_r(tmp, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
		if (*n == max) {
			*why = "too many addresses (at most 8)";
			return -1;
		}
		if (parse_hostport(tok, out[*n].host, sizeof(out[*n].host), &out[*n].port) == -1) {
			*why = "expected HOST:PORT or [IPV6]:PORT";
			return -1;
		}
		(*n)++;
	}
	return 0;
}

/* Sets one key from its text; -1 with *why on a bad value. */
static int set_key(struct config *cfg, const struct key_def *k, const char *v, const char **why)
{
	char *base = (char *)cfg;
	long long n;

	switch (k->type) {
	case K_STR:
		if (k->choices) {
			const char *c = k->choices;
			size_t vl = strlen(v);
			int ok = 0;
			while (*c) {
				size_t cl = strcspn(c, "|");
				if (cl == vl && strncmp(c, v, cl) == 0)
					ok = 1;
				c += cl;
				if (*c == '|')
					c++;
			}
			if (!ok) {
				*why = "not one of the allowed values";
				return -1;
			}
		}
		free(*(char **)(base + k->off));
		*(char **)(base + k->off) = xstrdup(v);
		return 0;
	case K_INT:
	case K_SIZE:
	case K_DURATION: {
		int r;
		if (k->type == K_INT) {
			char *end;
			errno = 0;
			n = strtoll(v, &end, 10);
			r = (errno || end == v || *end) ? -1 : 0;
		} else if (k->type == K_SIZE) {
			r = parse_size(v, &n);
		} else {
			r = parse_duration(v, &n);
		}
		if (r == -1) {
			*why = k->type == K_INT	     ? "expected a whole number"
			       : k->type == K_SIZE   ? "expected a size such as 1024, 64k or 25M"
						     : "expected a duration such as 30s, 5m, 2h or 3d";
			return -1;
		}
		if ((k->min || k->max) && (n < k->min || n > k->max)) {
			*why = "out of range";
			return -1;
		}
		if (k->off == O(events_retention) && n != 0 && n < EVENTS_RETENTION_MIN) {
			*why = "0 (keep every event) or at least 7d: bounces that come back later "
			       "are matched to the delivery events";
			return -1;
		}
		if (k->type == K_SIZE)
			*(size_t *)(base + k->off) = (size_t)n;
		else
			*(int *)(base + k->off) = (int)n;
		return 0;
	}
	case K_DOUBLE: {
		char *end;
		double d;
		errno = 0;
		d = strtod(v, &end);
		if (errno || end == v || *end || d < (double)k->min || d > (double)k->max) {
			*why = "expected a number in range";
			return -1;
		}
		*(double *)(base + k->off) = d;
		return 0;
	}
	case K_BOOL:
		if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "on") || !strcmp(v, "1"))
			*(int *)(base + k->off) = 1;
		else if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "off") || !strcmp(v, "0"))
			*(int *)(base + k->off) = 0;
		else {
			*why = "expected yes or no";
			return -1;
		}
		return 0;
	case K_LISTEN_LIST:
		if (k->off == O(n_submission_listen))
			return parse_listen_list(v, cfg->submission_listen, CONFIG_MAX_LISTEN,
						 &cfg->n_submission_listen, why);
		if (k->off == O(n_bounce_listen))
			return parse_listen_list(v, cfg->bounce_listen, CONFIG_MAX_LISTEN,
						 &cfg->n_bounce_listen, why);
		return parse_listen_list(v, cfg->smtps_listen, CONFIG_MAX_LISTEN, &cfg->n_smtps_listen, why);
	case K_LISTEN:
		if (*v == '\0') {
			cfg->has_admin_listen = 0;
			return 0;
		}
		if (parse_hostport(v, cfg->admin_listen.host, sizeof(cfg->admin_listen.host),
				   &cfg->admin_listen.port) == -1) {
			*why = "expected HOST:PORT or [IPV6]:PORT";
			return -1;
		}
		cfg->has_admin_listen = 1;
		return 0;
	}
	return -1;
}

void config_defaults(struct config *cfg)
{
	size_t i;
	const char *why;

	memset(cfg, 0, sizeof(*cfg));
	for (i = 0; i < ARRAY_LEN(keys); i++)
		if (set_key(cfg, &keys[i], keys[i].def, &why) == -1)
			abort(); /* a default that does not parse is a bug */
}

struct load_ctx {
	FILE *fp;
	int line;
	unsigned char seen[ARRAY_LEN(keys)];
	struct config *cfg;
	char *err;
	size_t errlen;
	int failed;
};

/*
 * inih calls the reader once per line: counting here gives handler's line.
 * It also refuses what inih would silently misread: a line longer than its
 * buffer (split in two) and an indented line (taken as a continuation of
 * the previous value).
 */
static char *counting_reader(char *str, int num, void *stream)
{
	struct load_ctx *lc = stream;
	char *r = fgets(str, num, lc->fp);
	size_t len, i;

	if (r == NULL || lc->failed)
		return NULL;
	lc->line++;
	len = strlen(str);
	if (len == (size_t)num - 1 && str[len - 1] != '\n' && !feof(lc->fp)) {
		snprintf(lc->err, lc->errlen, "%s:%d: line longer than %d bytes", lc->cfg->path,
			 lc->line, num - 2);
		lc->failed = 1;
		return NULL;
	}
	if (str[0] == ' ' || str[0] == '\t') {
		for (i = 0; str[i] == ' ' || str[i] == '\t'; i++)
			;
		if (str[i] != '\0' && str[i] != '\n' && str[i] != '\r' && str[i] != ';' &&
		    str[i] != '#') {
			snprintf(lc->err, lc->errlen,
				 "%s:%d: indented line (values cannot continue on the next line)",
				 lc->cfg->path, lc->line);
			lc->failed = 1;
			return NULL;
		}
	}
	return r;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
	struct load_ctx *lc = user;
	const char *why = NULL;
	size_t i;

	if (lc->failed)
		return 0;
	for (i = 0; i < ARRAY_LEN(keys); i++) {
		if (strcmp(keys[i].section, section) || strcmp(keys[i].key, name))
			continue;
		if (lc->seen[i]) {
			snprintf(lc->err, lc->errlen, "%s:%d: [%s] %s: set twice", lc->cfg->path,
				 lc->line, section, name);
			lc->failed = 1;
			return 0;
		}
		lc->seen[i] = 1;
		lc->cfg->key_lines[i] = lc->line;
		if (set_key(lc->cfg, &keys[i], value, &why) == -1) {
			snprintf(lc->err, lc->errlen, "%s:%d: [%s] %s: %s (\"%s\")", lc->cfg->path,
				 lc->line, section, name, why, value);
			lc->failed = 1;
			return 0;
		}
		return 1;
	}
	if (section[0] == '\0')
		snprintf(lc->err, lc->errlen, "%s:%d: %s: key outside any [section]", lc->cfg->path,
			 lc->line, name);
	else
		snprintf(lc->err, lc->errlen, "%s:%d: [%s] %s: unknown key", lc->cfg->path, lc->line,
			 section, name);
	lc->failed = 1;
	return 0;
}

int config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
	struct load_ctx lc;
	const char *env;
	int r;

	config_defaults(cfg);
	cfg->path = xstrdup(path);
	memset(&lc, 0, sizeof(lc));
	lc.cfg = cfg;
	lc.err = err;
	lc.errlen = errlen;
	lc.fp = fopen(path, "r");
	if (lc.fp == NULL) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	r = ini_parse_stream(counting_reader, &lc, handler, &lc);
	fclose(lc.fp);
	if (lc.failed)
		return -1;
	if (r != 0) {
		snprintf(err, errlen, "%s:%d: syntax error (expected [section] or key = value)", path,
			 r > 0 ? r : lc.line);
		return -1;
	}
	env = getenv("SENDGATE_DATABASE_URL");
	if (env && *env) {
		free(cfg->database_url);
		cfg->database_url = xstrdup(env);
	}
	return 0;
}

void config_free(struct config *cfg)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(keys); i++)
		if (keys[i].type == K_STR) {
			free(*(char **)((char *)cfg + keys[i].off));
			*(char **)((char *)cfg + keys[i].off) = NULL;
		}
	free(cfg->path);
	cfg->path = NULL;
}
