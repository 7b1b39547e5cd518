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
 * Connects (asynchronously) to conninfo and starts loading the caches;
 * reconnects by itself with backoff when the connection drops. Never NULL.
 */
struct store *store_open(struct event_base *base, const char *conninfo);
void store_close(struct store *st);
/* How long a broken domain stays sendable after it broke (seconds). */
void store_set_broken_grace(struct store *st, int seconds);
/* 1 once the caches have been loaded at least once. */
int store_ready(const struct store *st);
/* 1 while the database connection is up. */
int store_connected(const struct store *st);

/*
 * Answers for an AUTH: ok = 1 and *who filled for a valid, unrevoked
 * credential; ok = 0 for any wrong username or secret (same answer);
 * ok = -1 when the answer is unknown (database unreachable and not cached).
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
/* 1 when domain's return-path CNAME is verified (use it for VERP). */
int store_return_path_ok(struct store *st, const char *domain);

/*
 * Queues an event row (type, tenant, message id, JSON object text) for the
 * next batched insert. Never blocks; the batch is written within ~100 ms.
 */
void store_event(struct store *st, const char *type, int64_t tenant_id, const char *message_id,
		 const char *json);

#endif
