/*
 * common: byte buffers, logging, configuration and the few helpers every
 * part of sendgate shares. Nothing here knows SMTP, SQL or the spool.
 */
#ifndef SENDGATE_COMMON_H
#define SENDGATE_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define SENDGATE_VERSION "0.1.0"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- buf.c: growable byte buffer with a hard maximum ------------------ */

/*
 * A buffer never grows past max: buf_append returns -1 instead, so sizes a
 * client controls are refused before anything is allocated. data is always
 * followed by a NUL (not counted in len) so it can be read as a C string.
 */
struct buf {
	char *data;
	size_t len;
	size_t cap;
	size_t max;
};

void buf_init(struct buf *b, size_t max);
/* Appends n bytes; 0, or -1 when len would pass max (nothing appended). */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_puts(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Removes the first n bytes. */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
void buf_free(struct buf *b);

/* ---- log.c: key=value lines on stderr, or syslog ---------------------- */

enum { SGLOG_ERR, SGLOG_WARN, SGLOG_INFO, SGLOG_DEBUG };

void log_init(const char *ident, int use_syslog, int level);
void log_set_level(int level);
/* fmt yields "key=value key=value"; time and level are prepended. */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_err(...) log_msg(SGLOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(SGLOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(SGLOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(SGLOG_DEBUG, __VA_ARGS__)
/* Fatal: logs and exits 1. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/*
 * Quotes s for a key=value line into out (always NUL-terminated): bare when
 * it is a simple token, else in double quotes with \" \\ and control bytes
 * escaped. Returns out.
 */
const char *log_quote(char *out, size_t outlen, const char *s);

/* ---- util.c ----------------------------------------------------------- */

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Fills p with n cryptographically random bytes (aborts on failure). */
void random_bytes(void *p, size_t n);
/* Lower-case hex of n bytes into out (2n+1 bytes). */
void hex_encode(const unsigned char *p, size_t n, char *out);
/* Standard base64 with padding; out needs 4*((n+2)/3)+1 bytes. Returns length. */
size_t base64_encode(const unsigned char *p, size_t n, char *out);
/*
 * Strict base64 decode (padding required, no whitespace); out needs n/4*3
 * bytes. Returns decoded length or -1.
 */
ssize_t base64_decode(const char *in, size_t n, unsigned char *out);
/* The value 0..63 of one base64 digit, -1 for any other byte. */
int base64_value(int c);
/* The value 0..15 of one hex digit (either case), -1 for any other byte. */
int hex_value(int c);
/* Decodes 2n hex digits into n bytes: 0, or -1 (out then undefined). */
int hex_decode(const char *in, size_t n, unsigned char *out);
/* SHA-256 of n bytes. */
void sha256(const void *p, size_t n, unsigned char out[32]);
/* Constant-time equality of two n-byte strings; 1 when equal. */
int ct_equal(const void *a, const void *b, size_t n);
/* ASCII lower-casing in place; returns s. */
char *str_lower(char *s);
/* Monotonic clock in microseconds. */
uint64_t now_usec(void);
/* RFC 5322 date of t in local time into out (at least 40 bytes). */
void rfc5322_date(time_t t, char *out, size_t outlen);

/* Parses "host:port", "[v6]:port" or ":port"; host gets the address text. */
int parse_hostport(const char *s, char *host, size_t hostlen, int *port);

/* ---- hmap.c: string-keyed hash map ----------------------------------- */

/*
 * Chained hash map from NUL-terminated string keys (copied) to pointers.
 * Seeded at random so keys a client chooses cannot force collisions.
 */
struct hmap;
struct hmap *hmap_new(void);
/* Frees the map; free_value (may be NULL) is called on each value. */
void hmap_free(struct hmap *m, void (*free_value)(void *));
/* Sets key to value; returns the value it replaced, or NULL. */
void *hmap_put(struct hmap *m, const char *key, void *value);
void *hmap_get(const struct hmap *m, const char *key);
/* Removes key; returns its value or NULL. */
void *hmap_del(struct hmap *m, const char *key);
size_t hmap_count(const struct hmap *m);
/*
 * Maps used as counters (values are integers, absent = 0): the count of
 * key, and adding delta to it (a count that reaches 0 is removed, so the
 * map holds only keys in use). hmap_counter_add returns the new count.
 */
intptr_t hmap_counter(const struct hmap *m, const char *key);
intptr_t hmap_counter_add(struct hmap *m, const char *key, intptr_t delta);
/* Calls fn for each entry (the map must not change meanwhile). */
void hmap_each(const struct hmap *m, void (*fn)(void *arg, const char *key, void *value), void *arg);

/* ---- fairq.c: a queue that takes turns between owners --------------- */

/*
 * Items of many owners (tenants): each owner's in the order pushed, the
 * owners in turn, one item each, so a backlog of one owner delays another's
 * next item by at most one item per owner waiting. Items embed a struct
 * fairq_item. Not thread-safe: the caller holds its own lock.
 */
struct fairq_item {
	struct fairq_item *next;
};
struct fairq;
struct fairq *fairq_new(void);
/* Frees the queue; items still in it are the caller's. */
void fairq_free(struct fairq *q);
void fairq_push(struct fairq *q, int64_t owner, struct fairq_item *it);
/* The next item in turn, or NULL when empty. */
struct fairq_item *fairq_pop(struct fairq *q);
size_t fairq_len(const struct fairq *q);

/* ---- config.c: the INI file ------------------------------------------- */

#define CONFIG_MAX_LISTEN 8
/* [events] retention: 0, or at least this (reports after delivery need the events). */
#define EVENTS_RETENTION_MIN (7 * 86400)
#define CONFIG_MAX_KEYS 128

struct listen_addr {
	char host[64];
	int port;
};

struct config {
	char *path;
	int key_lines[CONFIG_MAX_KEYS]; /* line of each key in the file, 0 = default */

	/* [server] */
	char *hostname;
	char *user;
	char *log_target; /* "stderr" or "syslog" */
	char *log_level;  /* err, warn, info, debug */

	/* [smtp] */
	struct listen_addr submission_listen[CONFIG_MAX_LISTEN];
	int n_submission_listen;
	struct listen_addr smtps_listen[CONFIG_MAX_LISTEN];
	int n_smtps_listen;
	char *tls_cert;
	char *tls_key;
	size_t max_message_size;
	int max_recipients;
	int max_command_line;
	int max_text_line;
	int max_path_length;
	size_t max_header_size;
	int max_errors;
	int auth_max_failures;
	int auth_fail_delay; /* seconds, per failing client address */
	int command_timeout;
	int data_timeout;
	int data_done_timeout;
	int max_connections;
	int max_connections_per_ip;
	int tenant_max_connections;	/* authenticated sessions per tenant; 0 = no limit */
	int tenant_messages_per_minute; /* per tenant; 0 = no limit */

	/* [database] */
	char *database_url;

	/* [spool] */
	char *spool_dir;
	int commit_threads;

	/* [dkim] */
	char *dkim_master_key_file;
	char *dkim_default_algorithm; /* rsa, ed25519, both */
	int dkim_rsa_bits;
	int dkim_rotation_publish_delay; /* seconds */
	int dkim_rotation_overlap;       /* seconds */
	int dkim_sign_threads;
	int dkim_expiry; /* seconds; 0 = no x= tag */
	char *dkim_canonicalization; /* header/body: relaxed/relaxed, ... */

	/* [platform] */
	char *platform_dkim_zone;
	char *platform_spf_include;
	char *platform_return_path_prefix;
	char *platform_return_path_domain;
	char *platform_bounce_domain;
	char *platform_dmarc_rua;

	/* [dns] */
	char *dns_servers; /* comma-separated host:port; empty = system */
	int dns_timeout_ms;
	int dns_tries;

	/* [verify] */
	char *verify_required; /* comma list: spf,dkim,return_path */
	int verify_grace_period;
	int verify_new_interval;
	int verify_new_window;
	int verify_pending_interval;
	int verify_verified_interval;
	int verify_broken_interval;
	int verify_broken_window;

	/* [delivery] */
	int delivery_enabled;
	int delivery_port;
	char *delivery_relay;
	int delivery_relay_starttls; /* 1 = required */
	char *delivery_relay_username;
	char *delivery_relay_password;
	int delivery_max_connections_per_destination;
	int delivery_max_connections_per_source;
	int delivery_messages_per_connection;
	int delivery_messages_per_minute;
	int delivery_retry_first;
	double delivery_retry_factor;
	int delivery_retry_max;
	int delivery_max_age;
	int delivery_connect_timeout;
	int delivery_command_timeout;
	int delivery_data_timeout;
	char *delivery_cpu_priority; /* background | low | normal */
	int delivery_acceptance_first;           /* hold delivery while acceptance is busy */
	int delivery_acceptance_first_idle;      /* percent of idle CPU time under which... */
	int delivery_acceptance_first_max_hold;  /* ...but never longer than this (seconds) */
	double reputation_bounce_rate;    /* percent; 0: not checked */
	double reputation_complaint_rate; /* percent; 0: not checked */
	int reputation_min_recipients;
	int reputation_window;            /* seconds */
	int reputation_check_interval;    /* seconds */
	int spool_reuse_max_age;     /* seconds; 0: delivered files are deleted */

	/* [events] */
	int events_retention; /* seconds; 0 = keep every event */

	/* [bounce]: reports that come back to the VERP senders */
	struct listen_addr bounce_listen[CONFIG_MAX_LISTEN];
	int n_bounce_listen; /* 0: no listener */
	int bounce_max_connections;
	int bounce_max_connections_per_ip; /* per address or IPv6 /64 */
	size_t bounce_max_message_size;
	char *bounce_feedback_address; /* "" = none */

	/* [admin] */
	struct listen_addr admin_listen;
	int has_admin_listen;

	/* Not from the file: derived from [dkim] master_key_file at start. */
	unsigned char verp_key[32]; /* tags VERP senders (queue.h verp_tag) */
};

/* Fills cfg with the defaults (no file). */
void config_defaults(struct config *cfg);
/*
 * Loads path over the defaults. On error returns -1 and err holds
 * "FILE:LINE: [section] key: what is wrong". Applies SENDGATE_DATABASE_URL.
 */
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);
void config_free(struct config *cfg);
/*
 * "FILE:LINE: [section] key" (or "FILE: [section] key (default)") for
 * errors found after loading, e.g. a certificate that does not open.
 */
const char *config_where(const struct config *cfg, const char *section, const char *key, char *out,
			 size_t outlen);

/* One documented key, for listing and tests (--list-config-keys). */
struct config_key_info {
	const char *section;
	const char *key;
};
/* Returns the table of every accepted key; *n gets its length. */
const struct config_key_info *config_keys(size_t *n);

/* Parses "10s", "5m", "2h", "3d" or a bare number of seconds. */
int parse_duration(const char *s, long long *out);
/* The other way, exactly: 86400 -> "1d", 5400 -> "90m", 45 -> "45s". */
void format_duration(long long secs, char *out, size_t outlen);
/* Parses "1024", "10k", "25M", "1G" (powers of 1024). */
int parse_size(const char *s, long long *out);

#endif
