/*
 * tenants: the control plane in PostgreSQL. The daemon side (store.c) talks
 * to Postgres only through libpq's asynchronous API on the event loop and
 * keeps credentials and sendable domains cached in memory, refreshed by
 * LISTEN/NOTIFY; the admin CLI (ctl*.c, sendgatectl) uses plain libpq.
 */
#ifndef SENDGATE_TENANTS_H
#define SENDGATE_TENANTS_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

struct event_base;

/* ---- migrations (compiled in from tenants/migrations/NNN_name.sql) ---- */

struct migration {
	int version;
	const char *name;
	const char *sql;
};
extern const struct migration migrations[];
extern const int migrations_count;

/* ---- credential.c: pure helpers shared by the CLI and the daemon ------ */

#define CRED_USER_MAX 64
#define CRED_SECRET_LEN 43 /* base64url of 32 random bytes, no padding */

/* Makes a new username ("<tenant>-<8 hex>") and secret; NUL-terminated. */
void credential_generate(const char *tenant, char user[CRED_USER_MAX + 1],
			 char secret[CRED_SECRET_LEN + 1]);
/* SHA-256 of the secret text, as stored. */
void credential_hash(const char *secret, size_t len, unsigned char out[32]);

/* ---- store.c: the daemon's view of Postgres --------------------------- */

struct store;

struct tenant_ref {
	int64_t tenant_id;
	char tenant[64];
};

/*
 * What a process asks of the store. Delivery reads only pools and domains
 * (and writes events and suppressions): it does not cache credentials,
 * suppressions or DKIM keys, which on a large platform are most of the
 * memory and of the reload work.
 */
enum store_role {
	STORE_SUBMISSION,
	STORE_DELIVERY,
};

/*
 * Connects (asynchronously) to conninfo and starts loading the caches the
 * role needs; reconnects by itself with backoff when the connection drops.
 * Never NULL.
 */
struct store *store_open(struct event_base *base, const char *conninfo, enum store_role role);
void store_close(struct store *st);
/* How long a broken domain stays sendable after it broke (seconds). */
void store_set_broken_grace(struct store *st, int seconds);
/* 1 once the caches have been loaded at least once. */
int store_ready(const struct store *st);
/* 1 while the database connection is up. */
int store_connected(const struct store *st);

/*
 * Answers for an AUTH: ok = 1 and *who filled for a valid, unrevoked
 * credential; ok = 0 for any wrong username or secret (same answer), also
 * while the database is unreachable once the cache has loaded (it holds
 * every credential); ok = -1 when the answer is unknown (never loaded).
 */
typedef void (*store_auth_cb)(uint64_t cookie, int ok, const struct tenant_ref *who);
/*
 * Checks a credential. Answers from the cache when it can (the callback
 * then runs before this returns); a username not in the cache is looked up
 * in Postgres. The secret is compared as a SHA-256 in constant time.
 */
void store_auth(struct store *st, const char *user, const char *secret, store_auth_cb cb,
		uint64_t cookie);

/*
 * Whether domain may be used as a sender domain by tenant_id:
 * 1 sendable, 0 not (why: "not_found", "other_tenant", "pending",
 * "partially_verified", "broken"), -1 unknown (database unreachable).
 */
typedef void (*store_domain_cb)(uint64_t cookie, int ok, const char *why);
void store_domain_check(struct store *st, int64_t tenant_id, const char *domain,
			store_domain_cb cb, uint64_t cookie);

/* ---- DKIM keys (cached; reloaded with the rest) ------------------------ */

/*
 * A signing key as the daemon holds it. Reference counted so that a
 * worker thread can sign with it while a cache reload drops it.
 */
struct signing_key {
	int refs;
	int alg; /* enum dkim_alg */
	char domain[256];
	char selector[64];
	time_t sign_from;
	time_t sign_until; /* 0: no end */
	struct dkim_key *key;
};

/*
 * Sets the master key that unseals private keys and turns key loading on.
 * Without it no keys are loaded (signing is off).
 */
void store_set_master_key(struct store *st, const unsigned char mkey[32]);
/*
 * The keys that sign for domain at time now: the newest per algorithm.
 * Fills out (each with a reference the caller must release) and returns
 * how many (0 when the domain has none).
 */
int store_signing_keys(struct store *st, const char *domain, time_t now, struct signing_key **out,
		       int max);
/* Drops a reference (any thread). */
void signing_key_release(struct signing_key *k);
/*
 * Keys that failed to unseal or parse at the last load (wrong master key?);
 * *good gets the number that loaded.
 */
int store_key_errors(const struct store *st, int *good);

/* ---- suppression list and pools ---------------------------------------- */

/*
 * 1 when addr (lower-cased by the caller) is on tenant_id's suppression
 * list; reason and since (unix time) are filled. Answers from the cache.
 */
int store_suppressed(struct store *st, int64_t tenant_id, const char *addr, char *reason,
		     size_t reasonlen, time_t *since);
/* Adds addr to the tenant's suppression list (async, idempotent). */
void store_suppress(struct store *st, int64_t tenant_id, const char *addr, const char *reason,
		    const char *message_id);

struct pool_address {
	char address[64]; /* IPv4 or IPv6 text */
	char helo[256];
	int weight;
};

/*
 * The source addresses of tenant_id's pool (or the default pool when the
 * tenant has none): fills up to max and returns how many; 0 when there is
 * no pool at all (deliver from the system's default address).
 */
int store_tenant_pool(struct store *st, int64_t tenant_id, struct pool_address *out, int max,
		      char *pool_name, size_t namelen);
/*
 * A tenant's own sending limits (tenants.max_connections and
 * max_messages_per_minute): -1 where the tenant has none (the
 * configuration's default applies), 0 for no limit.
 */
struct tenant_limits {
	int max_connections;	     /* authenticated sessions at once */
	int max_messages_per_minute; /* MAIL FROMs accepted per minute */
	int suspended;		     /* sendgatectl tenant suspend (migration 007) */
	char suspended_reason[801]; /* 200 characters of UTF-8 at most */
};

/*
 * tenant_id's own limits and suspension from the cache (reloaded when the
 * tenants table changes; both roles), or NULL when it has neither (limits
 * -1 mean "the configuration's"). Valid until the loop runs again.
 */
const struct tenant_limits *store_tenant_limits(struct store *st, int64_t tenant_id);
/* The failing required records of a broken domain, in words, or NULL. */
const char *store_domain_failing(struct store *st, const char *domain);
/* 1 when domain's return-path CNAME is verified (use it for VERP). */
int store_return_path_ok(struct store *st, const char *domain);

/*
 * A bounce or complaint that arrived after the message was delivered
 * (smtpd/inbound.c reads it, queue/dsn.c parses it), matched to the
 * delivery it reports on by the VERP address it came to: with a valid
 * tag, the delivery sent from that very address, by recipient index (or
 * by recipient when the address has none); untagged, only a delivery
 * from before tags, by recipient.
 */
struct store_report {
	const char *verp; /* the VERP address */
	int tagged;	  /* its tag was checked */
	const char *qid;
	long index;
	const char *recipient; /* the address the report names ("" if none) */
	const char *type;      /* event type: "message.bounced", "message.complained" */
	const char *data_json; /* event data, a JSON object; "recipient" is added */
	int suppress;	       /* also add the recipient to the tenant's suppressions */
	const char *reason;    /* the suppression's reason */
};
struct store_report_result {
	int found;	       /* 1 matched a delivery, 0 none, -1 not recorded (database) */
	const char *tenant;    /* found: the tenant's name */
	const char *recipient; /* found: the recipient as delivered */
	int recorded;	       /* found: the event was new (0: the same report came before) */
	int suppressed;	       /* found: a suppression was added (0: none, or one existed) */
};
typedef void (*store_report_cb)(uint64_t cookie, const struct store_report_result *res);
/*
 * Records rep in one statement (event and suppression together). The
 * callback runs once, on the loop, when the database answered (found
 * -1 at once when it is unreachable; never after store_close).
 */
void store_report(struct store *st, const struct store_report *rep, store_report_cb cb,
		  uint64_t cookie);

/*
 * Deletes events older than seconds (0: none), in batches, soon after this
 * call and then every hour; logs event=events_purged. One process of a
 * daemon does it (the submission side).
 */
void store_set_events_retention(struct store *st, int seconds);

/*
 * The counts of the [reputation] check (store.c) and of `sendgatectl
 * tenant stats`, over events e: delivered, refused (5xx at once),
 * bounced_later and complained. A later bounce or a complaint counts only
 * when the delivery it reports on (same message and recipient) happened
 * after FROM, an SQL timestamptz expression: the start of what is judged.
 */
/* CTE r: each tenant's last resume within the window (WINDOW: seconds, a parameter). */
#define SQL_LAST_RESUMES(window)                                                                   \
	"r AS (SELECT tenant_id, max(created_at) AS at FROM events"                                 \
	" WHERE type = 'tenant.resumed' AND created_at > now() - make_interval(secs => " window     \
	"::int) GROUP BY tenant_id)"
#define SQL_REPORTED_DELIVERY(from)                                                                \
	" EXISTS (SELECT 1 FROM events d WHERE d.message_id = e.message_id"                         \
	" AND d.tenant_id = e.tenant_id AND d.type = 'message.delivered' AND d.data->>'recipient' = e.data->>'recipient'"         \
	" AND d.created_at > " from ")"
#define SQL_REPUTATION_COUNTS(from)                                                                \
	" count(*) FILTER (WHERE e.type = 'message.delivered') AS delivered,"                       \
	" count(*) FILTER (WHERE e.type = 'message.bounced' AND NOT e.data ? 'async') AS refused," \
	" count(*) FILTER (WHERE e.type = 'message.bounced' AND e.data ? 'async' AND"              \
	SQL_REPORTED_DELIVERY(from) ") AS bounced_later,"                                           \
	" count(*) FILTER (WHERE e.type = 'message.complained' AND" SQL_REPORTED_DELIVERY(from)     \
	") AS complained"

/* [reputation]: when a tenant is suspended for its bounces or complaints. */
struct store_reputation {
	int window;            /* seconds of events looked at */
	int min_recipients;    /* fewer in the window: never suspended */
	double bounce_rate;    /* percent of those recipients; 0: not checked */
	double complaint_rate; /* percent; 0: not checked */
	int interval;          /* seconds between checks */
};

/*
 * Checks every `interval` (the first soon after this call) which active
 * tenants went past a rate, and suspends them (tenant.suspended event,
 * "automatic" reason; logs event=tenant_suspended_automatically). Events
 * before a tenant's last resume do not count. Nothing when both rates are
 * 0. One process of a daemon does it (the submission side).
 */
void store_set_reputation(struct store *st, const struct store_reputation *rep);

/*
 * Queues an event row (type, tenant, message id, data: a JSON object whose
 * reference is taken over, or NULL for {}) for the next batched insert.
 * Never blocks; the batch is written within ~100 ms.
 */
struct json_t;
void store_event(struct store *st, const char *type, int64_t tenant_id, const char *message_id,
		 struct json_t *data);

/* ==== DNS verification of domains (verify_plan.c: pure; verify.c: runner) ====
 * Owned by the DNS-verification work; the rest of this header is the lead's.
 * The runner is shared by `sendgatectl domain verify` and the daemon's
 * background thread: it checks a domain's records (dns_check_start on a
 * private event loop, never the SMTP loop), moves the domain's state, and
 * stores the per-record statuses, the next check time and the events in one
 * transaction.
 */

struct pg_conn;
struct dns_platform;
struct dns_resolver;

enum domain_state { DOMAIN_PENDING, DOMAIN_PARTIAL, DOMAIN_VERIFIED, DOMAIN_BROKEN };

/* "pending", "partially_verified", "verified", "broken". */
const char *domain_state_str(enum domain_state s);
/* Parses a domains.state value; 0, or -1 for anything else. */
int domain_state_parse(const char *s, enum domain_state *out);

/* What one check found of the records required to send ([verify] required). */
struct verify_tally {
	int total;  /* required records */
	int ok;     /* of them verified */
	int errors; /* of them unknown: the lookup failed (SERVFAIL, timeout...) */
};

/* The outcome of a check for the domain's state. */
struct verify_move {
	enum domain_state state; /* the new state (may equal the old one) */
	const char *event;       /* "domain.verified" etc. when the state changed; else NULL */
	int inconclusive;        /* only DNS failures stood in the way: state kept */
	int broken_since;        /* 1: set to now, -1: clear, 0: keep */
};

/*
 * The state a domain in state from moves to after a check that found t:
 * all required verified -> verified (domain.verified, or domain.restored
 * from broken); a verified domain with a required record failing -> broken
 * (domain.broken); pending/partially_verified -> partially_verified when
 * some required record verifies, else pending. DNS failures alone never
 * break a verified domain (nor mend a broken one): the state is kept.
 */
void verify_transition(enum domain_state from, const struct verify_tally *t,
		       struct verify_move *out);

/* The check intervals ([verify] *_interval, *_window), in seconds. */
struct verify_schedule {
	int new_interval, new_window, pending_interval, verified_interval;
	int broken_interval, broken_window;
};
/* How often a broken domain is checked once broken_window has passed. */
#define VERIFY_BROKEN_LATE_INTERVAL 3600

void verify_schedule_from_config(const struct config *cfg, struct verify_schedule *s);
/*
 * Seconds from now until the next check of a domain now in state (after
 * a check at now): new_interval during new_window after created_at, then
 * pending_interval until verified; verified_interval once verified;
 * broken_interval during broken_window after broken_since, then hourly; an
 * inconclusive check of a verified domain is retried at broken_interval.
 * Up to a tenth of the interval is taken off at random (rnd) so that
 * domains added together drift apart. At least 1.
 */
long verify_next_check(const struct verify_schedule *s, enum domain_state state, int inconclusive,
		       time_t now, time_t created_at, time_t broken_since, uint32_t rnd);

/*
 * What the platform expects of one domain (struct dns_platform with its
 * DKIM selectors from dkim_keys): CNAME mode, both selectors of each
 * algorithm's pair as CNAMEs into [platform] dkim_zone (plus a TXT for an
 * imported key on a selector of its own); TXT mode, each published key's
 * p=. Caller frees with verify_platform_free.
 */
struct verify_platform;
struct verify_platform *verify_platform_load(struct pg_conn *db, const struct config *cfg,
					     int64_t domain_id, const char *domain,
					     const char *dkim_mode, char *err, size_t errlen);
const struct dns_platform *verify_platform_dns(const struct verify_platform *vp);
void verify_platform_free(struct verify_platform *vp);

/*
 * The runner. base (private to the caller's thread, never the SMTP loop),
 * res (a resolver on base) and cfg are borrowed and must outlive it; it
 * holds no database connection. NULL with err filled (bad [verify]
 * required). Caller frees.
 */
struct verifier;
struct verifier *verifier_new(const struct config *cfg, struct event_base *base,
			      struct dns_resolver *res, char *err, size_t errlen);
void verifier_free(struct verifier *v);

/* One check's outcome, as verify_domain reports it. */
struct verify_result {
	int64_t domain_id;
	char domain[254];
	char previous_state[24];
	char state[24];
	const char *event; /* static, or NULL when the state did not change */
	int inconclusive;
	int ok, total;         /* required records verified, of */
	long next_check_in;    /* seconds */
	struct json_t *report; /* dns_check_report_to_json (owned) */
	char *failing;         /* the required records that fail, in words, or NULL */
};
void verify_result_clear(struct verify_result *r);

/*
 * Checks domain now (bypassing the DNS cache), on the blocking connection
 * db (no transaction open), waiting for a scheduled check of it to finish
 * first, and stores the outcome (origin "operator"). 0 with out filled
 * (verify_result_clear), or -1 with err ("no domain named ..." too).
 */
int verify_domain(struct verifier *v, struct pg_conn *db, const char *domain,
		  struct verify_result *out, char *err, size_t errlen);
/*
 * Checks up to max domains that are due (FOR UPDATE SKIP LOCKED, so that
 * daemons sharing a database never check one domain twice) and stores the
 * outcomes. Returns how many were checked, or -1 with err.
 */
int verify_due(struct verifier *v, struct pg_conn *db, int max, char *err, size_t errlen);

/*
 * Starts the daemon's verification thread: its own blocking connection to
 * [database] url (reconnecting with backoff), event base and resolver; it
 * checks due domains in small batches and polls every second. cfg is
 * copied ([database], [dns], [platform], [verify]): to apply a reloaded
 * configuration, stop the thread and start it again. 0, or -1 (logged).
 * Never touches the caller's event loop. Call from one thread only.
 */
int verify_thread_start(const struct config *cfg);
/* Asks the thread to stop and waits for it (at most a few seconds). */
void verify_thread_stop(void);

#endif
