/*
 * store: the daemon's connection to PostgreSQL. One libpq connection in
 * non-blocking mode driven by the event loop; requests wait in a FIFO and
 * run one at a time. Credentials and domains are cached in memory, so the
 * SMTP hot path never waits on a round trip; the triggers of migration 001
 * NOTIFY sendgate_cache with the changed table's name as payload, and only
 * the caches built from that table are reloaded (an empty or unknown
 * payload reloads them all, as does a reconnection). Usernames that
 * Postgres did not know are remembered too, so that a repeated unknown
 * username is answered from memory like a known one. Events are written in
 * batches.
 *
 * The suppression list is the exception: it grows by one row per hard
 * bounce and may hold millions, so small changes are not reloaded. The
 * triggers of migration 005 NOTIFY sendgate_suppression once per row added
 * or removed (a JSON object), and those rows are applied to the cache as
 * they arrive; statements touching more rows send the 'suppressions'
 * payload on sendgate_cache and the table is reloaded.
 *
 * libpq resolves a host name inside PQconnectStart, with a blocking
 * getaddrinfo. A conninfo naming one host by name has it resolved on a
 * short-lived thread instead, and libpq is handed the numeric addresses as
 * hostaddr (host stays, for TLS verification, .pgpass and messages).
 */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "dkim/dkim.h"
#include "tenants/tenants.h"

#define EVENT_BATCH_MAX 1000
#define EVENT_QUEUE_MAX 200000
/* Unknown usernames remembered (cleared whenever credentials reload). */
#define UNKNOWN_USERS_MAX 4096
/* Longer names are not remembered (SASL fields are at most 255 bytes). */
#define UNKNOWN_USER_LEN_MAX 255
/* The channel of per-row suppression changes (migration 005). */
#define SUPPR_CHANNEL "sendgate_suppression"
/* Seconds before a cache that readiness needs and whose load failed (the
 * query, not the connection: a reconnect reloads everything) is loaded
 * again, doubling up to RELOAD_RETRY_MAX_SEC while it keeps failing. */
#define RELOAD_RETRY_SEC 2
#define RELOAD_RETRY_MAX_SEC 60
/* Addresses whose changes are kept to replay over a load, at most (see
 * supp_apply): each address's newest change only, so this bounds the
 * distinct addresses changed while one load runs, not the changes. */
#define SUPPR_LOG_MAX 100000

enum req_kind {
	REQ_LISTEN,
	REQ_LOAD_CREDS,
	REQ_LOAD_DOMAINS,
	REQ_LOAD_KEYS,
	REQ_LOAD_SUPPR,
	REQ_LOAD_POOLS,
	REQ_LOAD_TENANT_POOLS,
	REQ_LOAD_TENANT_LIMITS,
	REQ_SUPPRESS,
	REQ_REPORT,
	REQ_SCHEMA,
	REQ_AUTH,
	REQ_DOMAIN,
	REQ_EVENTS,
	REQ_PURGE,
	REQ_REPUTATION,
	REQ_SUSPEND,
};

/* The caches, as bits of a reload mask. */
enum cache_bit {
	C_CREDS = 1 << 0,
	C_SUPPR = 1 << 1,
	C_POOLS = 1 << 2,
	C_TENANT_POOLS = 1 << 3,
	C_KEYS = 1 << 4,
	C_DOMAINS = 1 << 5,
	C_TENANT_LIMITS = 1 << 6,
	C_ALL = (1 << 7) - 1,
};

/*
 * Each cache, in the order a reload runs its loads: the domains load goes
 * last because store_ready waits for it.
 */
static const struct cache_def {
	int bit;
	enum req_kind kind;
	const char *name; /* as logged: event=cache_reload table=NAME */
} caches[] = {
    {C_CREDS, REQ_LOAD_CREDS, "credentials"},
    {C_SUPPR, REQ_LOAD_SUPPR, "suppressions"},
    {C_POOLS, REQ_LOAD_POOLS, "pools"},
    {C_TENANT_POOLS, REQ_LOAD_TENANT_POOLS, "tenant_pools"},
    {C_TENANT_LIMITS, REQ_LOAD_TENANT_LIMITS, "tenant_limits"},
    {C_KEYS, REQ_LOAD_KEYS, "dkim_keys"},
    {C_DOMAINS, REQ_LOAD_DOMAINS, "domains"},
};
#define NCACHES (int)ARRAY_LEN(caches)

/*
 * What a change to each table (the NOTIFY payload) makes stale. Credentials
 * carry their tenant's name and tenants their pool and sending limits;
 * deleting a pool or a domain changes tenants or dkim_keys through the
 * foreign keys, whose own triggers report it.
 */
static const struct {
	const char *table;
	int caches;
} notify_tables[] = {
    {"credentials", C_CREDS},
    {"tenants", C_CREDS | C_TENANT_POOLS | C_TENANT_LIMITS},
    {"domains", C_DOMAINS},
    {"dkim_keys", C_KEYS},
    {"suppressions", C_SUPPR},
    {"pools", C_POOLS | C_TENANT_POOLS},
    {"pool_addresses", C_POOLS},
};

#define KEYS_PER_DOMAIN 8

struct key_list {
	int n;
	struct signing_key *k[KEYS_PER_DOMAIN];
};

struct req {
	struct req *next;
	enum req_kind kind;
	uint64_t cookie;
	void *cb;
	char *arg;     /* username / domain / events JSON */
	int64_t tenant_id;
	unsigned char hash[32]; /* REQ_AUTH: SHA-256 of the offered secret */
	unsigned cred_gen;	/* REQ_AUTH: st->cred_gen when asked */
	uint64_t sent_usec;	/* cache loads: when the query went out (now_usec) */
	int nevents;	/* REQ_EVENTS: rows in this batch */
	char *p[9];	/* REQ_SUPPRESS, REQ_REPORT parameters */
};

struct supp {
	char reason[200];
	time_t since;
};

/* The newest change to one suppression, kept while a load is under way. */
struct supp_change {
	int add;	 /* else remove */
	struct supp val; /* add: the entry */
};

#define POOL_MAX_ADDRS 32

struct pool {
	char name[64];
	int is_default;
	int n;
	struct pool_address a[POOL_MAX_ADDRS];
};

struct cred {
	unsigned char hash[32];
	struct tenant_ref who;
};

enum dstate { D_PENDING, D_PARTIAL, D_VERIFIED, D_BROKEN };

struct dom {
	char failing[200]; /* required records failing, in words (broken domains) */
	int return_path_verified;
	int64_t tenant_id;
	enum dstate state;
	int operator_verified;
	time_t broken_since;
};

struct pending_event {
	struct pending_event *next;
	char *json; /* one array element */
};

struct resolve_job;

struct store {
	struct event_base *base;
	char *conninfo;
	/* Set when the conninfo names one host by name: the parsed conninfo
	 * and that name, resolved off the loop before each connection. */
	PQconninfoOption *opts;
	char *db_host;
	int resolve_timeout; /* seconds: connect_timeout, else RESOLVE_TIMEOUT_SEC */
	struct resolve_job *resolving; /* the running resolution, if any */
	struct event *ev_resolved;
	PGconn *conn;
	int connecting;
	int connected;
	struct event *ev_read;
	struct event *ev_write;
	struct event *ev_connect;
	struct event *ev_retry;
	struct event *ev_reload;
	struct event *ev_flush;
	struct event *ev_purge;	  /* [events] retention; NULL when events are kept */
	int retention;		  /* seconds */
	long long purged;	  /* rows of the purge under way */
	int purging;		  /* a purge's batches are queued or running */
	struct event *ev_reputation; /* [reputation]; NULL when not checked */
	struct store_reputation rep;
	char rep_window[32];	  /* the window as written in a reason: "24h" */
	int rep_running;	  /* a check is queued or running */
	uint64_t rep_started;	  /* when it was queued (now_usec) */
	int retry_delay;

	struct req *head, *tail; /* waiting */
	struct req *inflight;
	PGresult *result;

	struct hmap *creds;   /* username → struct cred */
	struct hmap *unknown_users; /* username → &unknown_user: not in Postgres */
	unsigned cred_gen;    /* bumped by every NOTIFY that touches credentials */
	struct hmap *domains; /* name → struct dom */
	struct hmap *keys;    /* domain → struct key_list */
	struct hmap *supp;    /* "tenant:address" → struct supp */
	/*
	 * While a suppressions load is queued or in flight (supp_loading),
	 * every change applied to the cache is also logged here, to be applied
	 * again over the loaded rows (see supp_apply): "tenant:address" →
	 * struct supp_change, the newest per key (NULL when empty).
	 * supp_log_lost: the log overflowed, so the load's rows cannot be
	 * trusted.
	 */
	int supp_loading;
	struct hmap *supp_log;
	int supp_log_lost;
	struct hmap *pools;   /* pool id text → struct pool */
	struct hmap *tenant_pool; /* tenant id text → pool id text (as value) */
	struct hmap *tenant_limits; /* tenant id text → struct tenant_limits */
	char default_pool[24];
	int loaded; /* caches (cache_bit) loaded at least once */
	int schema_version; /* the database's, as read at the last connect */
	int have_master;
	int caches; /* the caches this process keeps (enum store_role) */
	unsigned char master[32];
	int key_errors;
	int key_good;
	/*
	 * Reloads run one batch at a time. A NOTIFY adds to reload_want; the
	 * next batch takes it once the running one (reload_left loads still
	 * queued or in flight) is over. reload_batch holds the caches of the
	 * running batch and reload_sent those whose query has gone out: a
	 * NOTIFY for a cache not yet sent needs no second load.
	 */
	int reload_want;
	int reload_batch;
	int reload_sent;
	int reload_left;
	int reload_retry;   /* a needed load failed: the next batch waits */
	int reload_backoff; /* seconds it waits (0: none failed lately) */
	int grace;

	struct pending_event *ev_head, *ev_tail;
	size_t nevents;
	size_t dropped_events;
	int events_inflight;
};

static void store_connect(struct store *st);
static void store_kick(struct store *st);

/* ---- request queue ---------------------------------------------------- */

static struct req *req_new(enum req_kind kind)
{
	struct req *r = xcalloc(1, sizeof(*r));
	r->kind = kind;
	return r;
}

static void req_free(struct req *r)
{
	int i;

	for (i = 0; i < (int)ARRAY_LEN(r->p); i++)
		free(r->p[i]);
	free(r->arg);
	free(r);
}

static void req_push(struct store *st, struct req *r)
{
	r->next = NULL;
	if (st->tail)
		st->tail->next = r;
	else
		st->head = r;
	st->tail = r;
	store_kick(st);
}

/* Pushes to the front: used for the cache loads that must precede lookups. */
static void req_push_front(struct store *st, struct req *r)
{
	r->next = st->head;
	st->head = r;
	if (st->tail == NULL)
		st->tail = r;
}

/* ---- caches ----------------------------------------------------------- */

static enum dstate dstate_parse(const char *s)
{
	if (strcmp(s, "verified") == 0)
		return D_VERIFIED;
	if (strcmp(s, "partially_verified") == 0)
		return D_PARTIAL;
	if (strcmp(s, "broken") == 0)
		return D_BROKEN;
	return D_PENDING;
}

/* Decides whether a domain row lets tenant_id send; why says why not. */
static int dom_sendable(const struct dom *d, int64_t tenant_id, int grace, const char **why)
{
	if (d->tenant_id != tenant_id) {
		*why = "other_tenant";
		return 0;
	}
	if (d->operator_verified || d->state == D_VERIFIED)
		return 1;
	if (d->state == D_BROKEN) {
		if (d->broken_since && time(NULL) - d->broken_since < grace)
			return 1;
		*why = "broken";
		return 0;
	}
	*why = d->state == D_PARTIAL ? "partially_verified" : "pending";
	return 0;
}

static struct dom *dom_from_row(PGresult *res, int i)
{
	struct dom *d = xcalloc(1, sizeof(*d));

	d->tenant_id = strtoll(PQgetvalue(res, i, 1), NULL, 10);
	d->state = dstate_parse(PQgetvalue(res, i, 2));
	d->operator_verified = PQgetvalue(res, i, 3)[0] == 't';
	d->broken_since = PQgetisnull(res, i, 4) ? 0 : (time_t)strtoll(PQgetvalue(res, i, 4), NULL, 10);
	d->return_path_verified = PQgetvalue(res, i, 5)[0] == 't';
	snprintf(d->failing, sizeof(d->failing), "%s", PQgetvalue(res, i, 6));
	return d;
}

static int unhex32(const char *s, unsigned char out[32])
{
	int i;

	/* bytea in hex output format: \x followed by 64 hex digits */
	if (s[0] != '\\' || s[1] != 'x' || strlen(s) != 66)
		return -1;
	for (i = 0; i < 32; i++) {
		unsigned int v;
		if (sscanf(s + 2 + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (unsigned char)v;
	}
	return 0;
}

static struct cred *cred_from_row(PGresult *res, int i, int col_hash)
{
	struct cred *c = xcalloc(1, sizeof(*c));

	if (unhex32(PQgetvalue(res, i, col_hash), c->hash) == -1) {
		free(c);
		return NULL;
	}
	c->who.tenant_id = strtoll(PQgetvalue(res, i, col_hash + 1), NULL, 10);
	snprintf(c->who.tenant, sizeof(c->who.tenant), "%s", PQgetvalue(res, i, col_hash + 2));
	return c;
}

static const char SQL_LOAD_CREDS[] =
    "SELECT c.username, c.secret_sha256, c.tenant_id, t.name FROM credentials c "
    "JOIN tenants t ON t.id = c.tenant_id WHERE c.revoked_at IS NULL";
static const char SQL_LOAD_DOMAINS[] =
    "SELECT name, tenant_id, state, operator_verified, "
    "extract(epoch FROM broken_since)::bigint, return_path_verified, failing_records "
    "FROM domains";
static const char SQL_AUTH[] =
    "SELECT c.username, c.secret_sha256, c.tenant_id, t.name FROM credentials c "
    "JOIN tenants t ON t.id = c.tenant_id WHERE c.username = $1 AND c.revoked_at IS NULL";
static const char SQL_DOMAIN[] =
    "SELECT name, tenant_id, state, operator_verified, "
    "extract(epoch FROM broken_since)::bigint, return_path_verified, failing_records "
    "FROM domains WHERE name = $1";
static const char SQL_LOAD_SUPPR[] =
    "SELECT tenant_id, address, reason, extract(epoch FROM created_at)::bigint "
    "FROM suppressions";
static const char SQL_LOAD_POOLS[] =
    "SELECT p.id, p.name, p.is_default, host(a.address), a.helo, a.weight "
    "FROM pools p LEFT JOIN pool_addresses a ON a.pool_id = p.id ORDER BY p.id, a.id";
static const char SQL_LOAD_TENANT_POOLS[] =
    "SELECT id, pool_id FROM tenants WHERE pool_id IS NOT NULL";
/*
 * Only tenants with a limit of their own or suspended: the rest use the
 * configuration's limits. A database not yet migrated loads what its
 * schema has (the query follows the version REQ_SCHEMA read, which is
 * answered before any load is sent) instead of failing: the daemon waits
 * for this cache (store_ready).
 */
static const char SQL_LOAD_TENANT_LIMITS[] =
    "SELECT id, coalesce(max_connections, -1), coalesce(max_messages_per_minute, -1), "
    "suspended_at IS NOT NULL, coalesce(suspended_reason, '') FROM tenants "
    "WHERE max_connections IS NOT NULL OR max_messages_per_minute IS NOT NULL "
    "OR suspended_at IS NOT NULL";
/* Before migration 7 (no suspensions), and before 6 (no limits either). */
static const char SQL_LOAD_TENANT_LIMITS_6[] =
    "SELECT id, coalesce(max_connections, -1), coalesce(max_messages_per_minute, -1), "
    "false, '' FROM tenants "
    "WHERE max_connections IS NOT NULL OR max_messages_per_minute IS NOT NULL";
static const char SQL_LOAD_TENANT_LIMITS_5[] = "SELECT 0, -1, -1, false, '' WHERE false";
static const char SQL_SUPPRESS[] =
    "INSERT INTO suppressions (tenant_id, address, reason, message_id) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
/*
 * How long after delivery an untagged report (to a sender from before VERP
 * tags) is still taken: anyone who got the message can forge one, so only
 * while genuine bounces of that old mail may still come.
 */
#define REPORT_UNTAGGED_DAYS "7"

/*
 * A bounce or complaint reported after delivery (store_report), in one
 * statement: the newest delivery it names, its event unless the same
 * report was recorded already, and its suppression. A report that came
 * to a tagged VERP address ($8) names the delivery whose envelope sender
 * was that address ($9), by the recipient's index ($2) or, for a
 * transaction of several recipients, by address ($3); an untagged one
 * can name only a delivery from before tags (no envelope_sender), by
 * address, within REPORT_UNTAGGED_DAYS. Data-modifying
 * WITH parts run whether or not the final SELECT reads them.
 */
static const char SQL_REPORT[] =
    "WITH m AS ("
    " SELECT e.tenant_id, e.data->>'recipient' AS rcpt, e.data->'index' AS idx FROM events e"
    " WHERE e.message_id = $1 AND e.type = 'message.delivered' AND e.tenant_id IS NOT NULL"
    " AND CASE WHEN $8::boolean"
    " THEN lower(e.data->>'envelope_sender') = lower($9)"
    " AND CASE WHEN $2::int >= 0 THEN e.data->'index' = to_jsonb($2::int)"
    " ELSE lower(e.data->>'recipient') = lower($3) END"
    " ELSE NOT e.data ? 'envelope_sender' AND lower(e.data->>'recipient') = lower($3)"
    " AND e.created_at > now() - interval '" REPORT_UNTAGGED_DAYS " days' END"
    " ORDER BY e.id DESC LIMIT 1),"
    " ev AS (INSERT INTO events (type, tenant_id, message_id, data)"
    " SELECT $4, m.tenant_id, $1, $5::jsonb || jsonb_build_object('recipient', m.rcpt,"
    " 'index', m.idx) FROM m"
    " WHERE NOT EXISTS (SELECT 1 FROM events b WHERE b.message_id = $1 AND b.type = $4"
    " AND b.data->>'recipient' = m.rcpt) RETURNING 1),"
    " sp AS (INSERT INTO suppressions (tenant_id, address, reason, message_id)"
    " SELECT m.tenant_id, lower(m.rcpt), $6, $1 FROM m WHERE $7::boolean"
    " ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT t.name, m.rcpt, (SELECT count(*) FROM ev), (SELECT count(*) FROM sp)"
    " FROM m JOIN tenants t ON t.id = m.tenant_id";
/*
 * One batch of the events past [events] retention: short transactions, so
 * that a first purge of a large table never holds locks for long. The
 * BRIN index of migration 008 finds them.
 */
#define PURGE_BATCH 10000
static const char SQL_PURGE[] =
    "WITH d AS (DELETE FROM events WHERE id IN (SELECT id FROM events"
    " WHERE created_at < now() - make_interval(secs => $1::int) ORDER BY id LIMIT 10000)"
    " RETURNING 1) SELECT count(*) FROM d";
_Static_assert(PURGE_BATCH == 10000, "PURGE_BATCH is written in SQL_PURGE");
/* A purge every hour, the first soon after start. */
#define PURGE_INTERVAL 3600
#define PURGE_FIRST 2

/*
 * [reputation], in two steps. SQL_REPUTATION finds (reads only) every
 * active tenant whose recipients in the window ($1 seconds, and since its
 * last resume) number at least $2 and of whom at least $3 % bounced or $4
 * % complained (0: that rate is not checked), with its figures and the
 * reason ($5: the window as text). Recipients: delivered or refused at
 * once; a bounce reported later or a complaint counts only when the
 * delivery it reports on is one of those (tenants.h). Only when it finds
 * some does SQL_SUSPEND update tenants: an UPDATE that changes no row
 * still fires the tenants trigger, whose NOTIFY would make every daemon
 * reload its tenant caches at each check.
 */
static const char SQL_REPUTATION[] =
    "WITH " SQL_LAST_RESUMES("$1") ","
    " c AS (SELECT e.tenant_id,"
    SQL_REPUTATION_COUNTS("greatest(now() - make_interval(secs => $1::int), r.at)")
    " FROM events e JOIN tenants t ON t.id = e.tenant_id AND t.suspended_at IS NULL"
    " LEFT JOIN r ON r.tenant_id = e.tenant_id"
    " WHERE e.created_at > now() - make_interval(secs => $1::int)"
    " AND (r.at IS NULL OR e.created_at > r.at)"
    " AND e.type IN ('message.delivered', 'message.bounced', 'message.complained')"
    " GROUP BY e.tenant_id),"
    " v AS (SELECT tenant_id, delivered + refused AS sent, refused + bounced_later AS bounced,"
    " complained FROM c WHERE delivered + refused >= $2::int)"
    " SELECT jsonb_agg(jsonb_build_object('id', tenant_id, 'sent', sent, 'bounced', bounced,"
    " 'complained', complained, 'reason', left(CASE"
    " WHEN $3::float8 > 0 AND bounced * 100.0 >= $3::float8 * sent"
    " THEN format('automatic: %s of %s recipients (%s%%) bounced in the last %s, the limit is %s%%',"
    " bounced, sent, round(bounced * 100.0 / sent, 1), $5::text, $3::float8)"
    " ELSE format('automatic: %s of %s recipients (%s%%) complained in the last %s, the limit is %s%%',"
    " complained, sent, round(complained * 100.0 / sent, 2), $5::text, $4::float8) END, 200)))"
    " FROM v WHERE ($3::float8 > 0 AND bounced * 100.0 >= $3::float8 * sent)"
    " OR ($4::float8 > 0 AND complained * 100.0 >= $4::float8 * sent)";
/*
 * Suspends the tenants SQL_REPUTATION found ($1: its JSON array; $2: the
 * window in seconds) that are still active, with a tenant.suspended event
 * each; the tenants trigger tells every daemon. Concurrent daemons: the
 * UPDATE rechecks suspended_at, so one of them wins.
 */
static const char SQL_SUSPEND[] =
    "WITH j AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id bigint, sent bigint,"
    " bounced bigint, complained bigint, reason text)),"
    " u AS (UPDATE tenants t SET suspended_at = now(), suspended_reason = j.reason FROM j"
    " WHERE t.id = j.id AND t.suspended_at IS NULL"
    " RETURNING t.id, t.name, t.suspended_reason, j.sent, j.bounced, j.complained),"
    " ev AS (INSERT INTO events (type, tenant_id, data) SELECT 'tenant.suspended', u.id,"
    " jsonb_build_object('reason', u.suspended_reason, 'by', 'sendgate', 'automatic', true,"
    " 'recipients', u.sent, 'bounced', u.bounced, 'complained', u.complained,"
    " 'window_s', $2::int) FROM u)"
    " SELECT name, suspended_reason FROM u";

static const char SQL_EVENTS[] =
    "INSERT INTO events (type, tenant_id, message_id, data) "
    "SELECT e->>'type', (e->>'tenant_id')::bigint, e->>'message_id', e->'data' "
    "FROM jsonb_array_elements($1::jsonb) AS e";

static void unknown_users_clear(struct store *st);

static void load_creds(struct store *st, PGresult *res)
{
	struct hmap *m = hmap_new();
	int i;

	for (i = 0; i < PQntuples(res); i++) {
		struct cred *c = cred_from_row(res, i, 1);
		if (c)
			free(hmap_put(m, PQgetvalue(res, i, 0), c));
	}
	hmap_free(st->creds, free);
	st->creds = m;
	unknown_users_clear(st); /* whoever was unknown may exist now */
}

static void load_domains(struct store *st, PGresult *res)
{
	struct hmap *m = hmap_new();
	int i;

	for (i = 0; i < PQntuples(res); i++)
		free(hmap_put(m, PQgetvalue(res, i, 0), dom_from_row(res, i)));
	hmap_free(st->domains, free);
	st->domains = m;
}

static const char SQL_LOAD_KEYS[] =
    "SELECT d.name, k.selector, k.algorithm, k.private_sealed, "
    /* Whole seconds that never leave a gap at a switch: a key starts at
     * the second it starts in and ends at the second after it ends. */
    "floor(extract(epoch FROM k.sign_from))::bigint, "
    "coalesce(ceil(extract(epoch FROM k.sign_until))::bigint, 0) "
    "FROM dkim_keys k JOIN domains d ON d.id = k.domain_id "
    "WHERE k.sign_until IS NULL OR k.sign_until > now()";

void signing_key_release(struct signing_key *k)
{
	if (k && __atomic_sub_fetch(&k->refs, 1, __ATOMIC_ACQ_REL) == 0) {
		dkim_key_free(k->key);
		free(k);
	}
}

static void key_list_free(void *p)
{
	struct key_list *kl = p;
	int i;

	for (i = 0; i < kl->n; i++)
		signing_key_release(kl->k[i]);
	free(kl);
}

/* Decodes a bytea in hex output format ("\x...") into out. */
static int unhex_bytea(const char *s, struct buf *out)
{
	size_t n = strlen(s), i;

	if (n < 2 || s[0] != '\\' || s[1] != 'x' || n % 2)
		return -1;
	for (i = 2; i < n; i += 2) {
		unsigned char c;
		if (hex_decode(s + i, 1, &c) == -1 || buf_append(out, &c, 1) == -1)
			return -1;
	}
	return 0;
}

/* Unseals and parses one row's key; NULL (logged) when it cannot. */
static struct signing_key *key_from_row(struct store *st, PGresult *res, int i)
{
	const char *domain = PQgetvalue(res, i, 0), *selector = PQgetvalue(res, i, 1);
	struct signing_key *k;
	struct buf sealed, pem, aad;
	char err[256];
	int version = -1;

	buf_init(&sealed, 1 << 20);
	buf_init(&pem, 1 << 20);
	buf_init(&aad, 1024);
	if (unhex_bytea(PQgetvalue(res, i, 3), &sealed) == -1 ||
	    dkim_key_aad(domain, selector, &aad) == -1 ||
	    (version = dkim_unseal(st->master, aad.data, aad.len, sealed.data, sealed.len, &pem)) ==
		-1) {
		log_err("event=dkim_key_error domain=%s selector=%s error=\"cannot decrypt the private "
			"key: either [dkim] master_key_file is not the key that sealed it, or the "
			"sealed key was altered or belongs to another domain or selector; the key "
			"is not used\"",
			domain, selector);
		st->key_errors++;
		k = NULL;
		goto done;
	}
	if (version == 1)
		log_warn("event=dkim_key_unbound domain=%s selector=%s error=\"the private key is "
			 "sealed in the old v1 format, not bound to its domain and selector; run "
			 "'sendgatectl dkim reseal'\"",
			 domain, selector);
	k = xcalloc(1, sizeof(*k));
	k->key = dkim_key_from_pem(pem.data, pem.len, err, sizeof(err));
	if (k->key == NULL) {
		char q[600];
		log_err("event=dkim_key_error domain=%s selector=%s error=%s", PQgetvalue(res, i, 0),
			PQgetvalue(res, i, 1), log_quote(q, sizeof(q), err));
		st->key_errors++;
		free(k);
		k = NULL;
		goto done;
	}
	k->refs = 1;
	k->alg = dkim_key_alg(k->key);
	snprintf(k->domain, sizeof(k->domain), "%s", PQgetvalue(res, i, 0));
	snprintf(k->selector, sizeof(k->selector), "%s", PQgetvalue(res, i, 1));
	k->sign_from = (time_t)strtoll(PQgetvalue(res, i, 4), NULL, 10);
	k->sign_until = (time_t)strtoll(PQgetvalue(res, i, 5), NULL, 10);
done:
	if (pem.data)
		explicit_bzero(pem.data, pem.len);
	buf_free(&pem);
	buf_free(&sealed);
	buf_free(&aad);
	return k;
}

static void load_keys(struct store *st, PGresult *res)
{
	struct hmap *m = hmap_new();
	int i;

	st->key_errors = 0;
	st->key_good = 0;
	for (i = 0; i < PQntuples(res); i++) {
		struct key_list *kl = hmap_get(m, PQgetvalue(res, i, 0));
		struct signing_key *k;
		if (kl == NULL) {
			kl = xcalloc(1, sizeof(*kl));
			hmap_put(m, PQgetvalue(res, i, 0), kl);
		}
		if (kl->n == KEYS_PER_DOMAIN)
			continue;
		k = key_from_row(st, res, i);
		if (k) {
			kl->k[kl->n++] = k;
			st->key_good++;
		}
	}
	hmap_free(st->keys, key_list_free);
	st->keys = m;
}

void store_set_master_key(struct store *st, const unsigned char mkey[32])
{
	memcpy(st->master, mkey, 32);
	st->have_master = 1;
}

int store_key_errors(const struct store *st, int *good)
{
	*good = st->key_good;
	return st->key_errors;
}

int store_signing_keys(struct store *st, const char *domain, time_t now, struct signing_key **out,
		       int max)
{
	struct key_list *kl = hmap_get(st->keys, domain);
	struct signing_key *best[2] = {NULL, NULL};
	int i, n = 0;

	if (kl == NULL)
		return 0;
	for (i = 0; i < kl->n; i++) {
		struct signing_key *k = kl->k[i];
		int a = k->alg == DKIM_ALG_ED25519_SHA256;
		if (k->sign_from > now || (k->sign_until && now >= k->sign_until))
			continue;
		if (best[a] == NULL || k->sign_from > best[a]->sign_from)
			best[a] = k;
	}
	for (i = 0; i < 2; i++)
		if (best[i] && n < max) {
			__atomic_add_fetch(&best[i]->refs, 1, __ATOMIC_ACQ_REL);
			out[n++] = best[i];
		}
	return n;
}

/* Copies reason into sp, cut to fit at a UTF-8 character boundary. */
static void supp_set_reason(struct supp *sp, const char *reason)
{
	size_t n = strlen(reason);

	if (n >= sizeof(sp->reason)) {
		n = sizeof(sp->reason) - 1;
		/* reason[n] is the first byte left out: not the middle of a character */
		while (n > 0 && ((unsigned char)reason[n] & 0xC0) == 0x80)
			n--;
	}
	memcpy(sp->reason, reason, n);
	sp->reason[n] = '\0';
}

/* Sets key in m to a copy of val (add), or removes it. */
static void supp_set(struct hmap *m, const char *key, int add, const struct supp *val)
{
	struct supp *sp;

	if (!add) {
		free(hmap_del(m, key));
		return;
	}
	sp = xmalloc(sizeof(*sp));
	*sp = *val;
	free(hmap_put(m, key, sp));
}

/* Empties the log of changes made during a load. */
static void supp_log_clear(struct store *st)
{
	hmap_free(st->supp_log, free);
	st->supp_log = NULL;
	st->supp_log_lost = 0;
}

/* hmap_each: applies one logged change to the cache (arg). */
static void supp_replay(void *arg, const char *key, void *value)
{
	const struct supp_change *c = value;

	supp_set(arg, key, c->add, &c->val);
}

/*
 * Applies one change to the suppression cache at once: adds key with val,
 * or removes key. Deltas (sendgate_suppression) come here; a full load
 * replaces the whole map (supp_load_done).
 *
 * Why that stays consistent: NOTIFYs reach this connection in commit order
 * (one notifying transaction commits at a time), on the connection the
 * loads run on too. A delta that arrived before a load was sent had
 * committed before the load's snapshot, which therefore holds it. One
 * that arrives after the load was sent may or may not be in the snapshot:
 * the server sends the NOTIFYs of commits made during the query after its
 * rows, and libpq then hands them to handle_notifies even before the
 * result is taken. So while a load is queued or in flight each change is
 * also logged, and the log is applied again over the loaded rows. It
 * holds, for every key changed since before the load was sent, the
 * newest change (each sets one key to its value at that commit, so only
 * the newest matters, and keys are independent); keys it does not touch
 * have not changed since the snapshot, so the result is the table as of
 * the last delta received.
 */
static void supp_apply(struct store *st, int add, const char *key, const struct supp *val)
{
	struct supp_change *c;

	supp_set(st->supp, key, add, val);
	if (!st->supp_loading || st->supp_log_lost)
		return;
	if (st->supp_log == NULL)
		st->supp_log = hmap_new();
	c = hmap_get(st->supp_log, key);
	if (c == NULL) {
		if (hmap_count(st->supp_log) == SUPPR_LOG_MAX) {
			/* The loaded rows will be stale: supp_load_done loads again. */
			supp_log_clear(st);
			st->supp_log_lost = 1;
			return;
		}
		c = xcalloc(1, sizeof(*c));
		hmap_put(st->supp_log, key, c);
	}
	c->add = add;
	if (add)
		c->val = *val;
}

static void load_suppr(struct store *st, PGresult *res)
{
	struct hmap *m = hmap_new();
	char key[400];
	int i;

	for (i = 0; i < PQntuples(res); i++) {
		struct supp *sp = xcalloc(1, sizeof(*sp));
		snprintf(key, sizeof(key), "%s:%s", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
		supp_set_reason(sp, PQgetvalue(res, i, 2));
		sp->since = (time_t)strtoll(PQgetvalue(res, i, 3), NULL, 10);
		free(hmap_put(m, key, sp));
	}
	hmap_free(st->supp, free);
	st->supp = m;
}

static void load_pools(struct store *st, PGresult *res)
{
	struct hmap *m = hmap_new();
	int i;

	st->default_pool[0] = '\0';
	for (i = 0; i < PQntuples(res); i++) {
		const char *id = PQgetvalue(res, i, 0);
		struct pool *p = hmap_get(m, id);
		if (p == NULL) {
			p = xcalloc(1, sizeof(*p));
			snprintf(p->name, sizeof(p->name), "%s", PQgetvalue(res, i, 1));
			p->is_default = PQgetvalue(res, i, 2)[0] == 't';
			if (p->is_default)
				snprintf(st->default_pool, sizeof(st->default_pool), "%s", id);
			hmap_put(m, id, p);
		}
		if (PQgetisnull(res, i, 3) || p->n == POOL_MAX_ADDRS)
			continue;
		snprintf(p->a[p->n].address, sizeof(p->a[p->n].address), "%s", PQgetvalue(res, i, 3));
		snprintf(p->a[p->n].helo, sizeof(p->a[p->n].helo), "%s", PQgetvalue(res, i, 4));
		p->a[p->n].weight = (int)strtol(PQgetvalue(res, i, 5), NULL, 10) > 0
				   ? (int)strtol(PQgetvalue(res, i, 5), NULL, 10)
				   : 1;
		p->n++;
	}
	hmap_free(st->pools, free);
	st->pools = m;
}

static void load_tenant_pools(struct store *st, PGresult *res)
{
	struct hmap *m = hmap_new();
	int i;

	for (i = 0; i < PQntuples(res); i++)
		free(hmap_put(m, PQgetvalue(res, i, 0), xstrdup(PQgetvalue(res, i, 1))));
	hmap_free(st->tenant_pool, free);
	st->tenant_pool = m;
}

static void load_tenant_limits(struct store *st, PGresult *res)
{
	struct hmap *m = hmap_new();
	int i;

	for (i = 0; i < PQntuples(res); i++) {
		struct tenant_limits *l = xcalloc(1, sizeof(*l));
		l->max_connections = (int)strtol(PQgetvalue(res, i, 1), NULL, 10);
		l->max_messages_per_minute = (int)strtol(PQgetvalue(res, i, 2), NULL, 10);
		l->suspended = PQgetvalue(res, i, 3)[0] == 't';
		snprintf(l->suspended_reason, sizeof(l->suspended_reason), "%s",
			 PQgetvalue(res, i, 4));
		free(hmap_put(m, PQgetvalue(res, i, 0), l));
	}
	hmap_free(st->tenant_limits, free);
	st->tenant_limits = m;
}

const struct tenant_limits *store_tenant_limits(struct store *st, int64_t tenant_id)
{
	char id[32];

	snprintf(id, sizeof(id), "%lld", (long long)tenant_id);
	return hmap_get(st->tenant_limits, id);
}

int store_suppressed(struct store *st, int64_t tenant_id, const char *addr, char *reason,
		     size_t reasonlen, time_t *since)
{
	char key[400];
	struct supp *sp;

	snprintf(key, sizeof(key), "%lld:%s", (long long)tenant_id, addr);
	sp = hmap_get(st->supp, key);
	if (sp == NULL)
		return 0;
	snprintf(reason, reasonlen, "%s", sp->reason);
	*since = sp->since;
	return 1;
}

void store_suppress(struct store *st, int64_t tenant_id, const char *addr, const char *reason,
		    const char *message_id)
{
	struct req *r = req_new(REQ_SUPPRESS);
	char id[32];

	snprintf(id, sizeof(id), "%lld", (long long)tenant_id);
	r->p[0] = xstrdup(id);
	r->p[1] = xstrdup(addr);
	r->p[2] = xstrdup(reason);
	r->p[3] = message_id ? xstrdup(message_id) : NULL;
	/* Only written: the INSERT's delta (migration 005) reaches every
	 * process that keeps suppressions, this one included. */
	if (!st->connected) {
		log_warn("event=suppression_not_saved tenant_id=%s address=%s reason=db_unavailable", id,
			 addr);
		req_free(r);
		return;
	}
	req_push(st, r);
}

void store_report(struct store *st, const struct store_report *rep, store_report_cb cb,
		  uint64_t cookie)
{
	struct req *r;
	char index[32];

	if (!st->connected) {
		struct store_report_result rr = {.found = -1};
		cb(cookie, &rr);
		return;
	}
	r = req_new(REQ_REPORT);
	snprintf(index, sizeof(index), "%ld", rep->index);
	r->p[0] = xstrdup(rep->qid);
	r->p[1] = xstrdup(index);
	r->p[2] = xstrdup(rep->recipient ? rep->recipient : "");
	r->p[3] = xstrdup(rep->type);
	r->p[4] = xstrdup(rep->data_json ? rep->data_json : "{}");
	r->p[5] = xstrdup(rep->reason ? rep->reason : "");
	r->p[6] = xstrdup(rep->suppress ? "true" : "false");
	r->p[7] = xstrdup(rep->tagged ? "true" : "false");
	r->p[8] = xstrdup(rep->verp ? rep->verp : "");
	r->cb = (void *)cb;
	r->cookie = cookie;
	req_push(st, r);
}

int store_tenant_pool(struct store *st, int64_t tenant_id, struct pool_address *out, int max,
		      char *pool_name, size_t namelen)
{
	char id[32];
	const char *pid;
	struct pool *p;
	int i;

	snprintf(id, sizeof(id), "%lld", (long long)tenant_id);
	pid = hmap_get(st->tenant_pool, id);
	if (pid == NULL)
		pid = st->default_pool[0] ? st->default_pool : NULL;
	p = pid ? hmap_get(st->pools, pid) : NULL;
	if (p == NULL) {
		snprintf(pool_name, namelen, "%s", "none");
		return 0;
	}
	snprintf(pool_name, namelen, "%s", p->name);
	for (i = 0; i < p->n && i < max; i++)
		out[i] = p->a[i];
	return i;
}

const char *store_domain_failing(struct store *st, const char *domain)
{
	struct dom *d = hmap_get(st->domains, domain);

	return d && d->failing[0] ? d->failing : NULL;
}

int store_return_path_ok(struct store *st, const char *domain)
{
	struct dom *d = hmap_get(st->domains, domain);

	return d && d->return_path_verified;
}

/* The cache a load request fills, or NULL for other requests. */
static const struct cache_def *cache_of(enum req_kind kind)
{
	int i;

	for (i = 0; i < NCACHES; i++)
		if (caches[i].kind == kind)
			return &caches[i];
	return NULL;
}

/*
 * The caches a NOTIFY payload makes stale: table names separated by commas
 * or spaces (the triggers send one). Empty, or any name not known here,
 * means everything, so that older or hand-made senders keep working.
 */
static int notify_caches(const char *payload)
{
	const char *p = payload;
	int mask = 0;

	for (;;) {
		size_t n, i;
		p += strspn(p, ", \t");
		if (*p == '\0')
			break;
		n = strcspn(p, ", \t");
		for (i = 0; i < ARRAY_LEN(notify_tables); i++)
			if (strlen(notify_tables[i].table) == n &&
			    memcmp(notify_tables[i].table, p, n) == 0)
				break;
		if (i == ARRAY_LEN(notify_tables))
			return C_ALL;
		mask |= notify_tables[i].caches;
		p += n;
	}
	return mask ? mask : C_ALL;
}

/*
 * Queues the loads of the caches in reload_want as the next batch, ahead
 * of every lookup waiting so that those see fresh data. Does not send.
 */
static void reload_push(struct store *st)
{
	int i, mask = st->reload_want & st->caches;

	if (!st->have_master)
		mask &= ~C_KEYS; /* without the master key no key is loaded */
	st->reload_want = 0;
	st->reload_batch = mask;
	if (mask & C_SUPPR)
		st->supp_loading = 1; /* changes are logged until it is over */
	st->reload_sent = 0;
	st->reload_left = 0;
	for (i = NCACHES - 1; i >= 0; i--)
		if (mask & caches[i].bit) {
			req_push_front(st, req_new(caches[i].kind));
			st->reload_left++;
		}
}

/* Starts the next batch when none is running and something is stale. */
static void reload_start(struct store *st)
{
	if (!st->connected || st->reload_left || !st->reload_want)
		return;
	reload_push(st);
	store_kick(st);
}

/* Schedules a reload of mask; bursts of changes coalesce into one batch. */
static void reload_schedule(struct store *st, int mask)
{
	struct timeval tv = {0, 5000};

	/* A load still waiting to be sent will see the change anyway. */
	if (st->reload_left)
		mask &= ~(st->reload_batch & ~st->reload_sent);
	if (mask == 0)
		return;
	st->reload_want |= mask;
	if (st->reload_left == 0)
		evtimer_add(st->ev_reload, &tv);
	/* else the end of the running batch starts the next one */
}

static void reload_cb(evutil_socket_t fd, short what, void *arg)
{
	reload_start(arg);
}

/*
 * The caches store_ready waits for: those this process keeps and cannot do
 * without. See store_ready.
 */
static int ready_need(const struct store *st)
{
	return st->caches & (C_CREDS | C_SUPPR | C_POOLS | C_TENANT_POOLS | C_DOMAINS |
			     C_TENANT_LIMITS);
}

/* A load of the running batch is over (loaded, failed or dropped). */
static void reload_step(struct store *st, struct req *r, PGresult *res, int ok)
{
	const struct cache_def *c = cache_of(r->kind);

	if (ok) {
		long ms = (long)((now_usec() - r->sent_usec) / 1000);
		st->loaded |= c->bit;
		if (c->bit == C_KEYS)
			log_info("event=cache_reload table=%s rows=%d ms=%ld key_errors=%d", c->name,
				 PQntuples(res), ms, st->key_errors);
		else
			log_info("event=cache_reload table=%s rows=%d ms=%ld", c->name,
				 PQntuples(res), ms);
	}
	/* A failed load keeps the cache as it was (the error is logged). One
	 * that readiness waits for is tried again later, with backoff. */
	if (!ok && res != NULL && st->connected && (c->bit & ready_need(st))) {
		st->reload_want |= c->bit;
		st->reload_retry = 1;
	}
	if (st->reload_left > 0 && --st->reload_left == 0) {
		struct timeval tv = {0, 5000};
		if (st->reload_retry) {
			st->reload_backoff = st->reload_backoff ? 2 * st->reload_backoff
							     : RELOAD_RETRY_SEC;
			if (st->reload_backoff > RELOAD_RETRY_MAX_SEC)
				st->reload_backoff = RELOAD_RETRY_MAX_SEC;
			tv = (struct timeval){st->reload_backoff, 0};
		} else {
			st->reload_backoff = 0;
		}
		st->reload_retry = 0;
		if (st->reload_want)
			evtimer_add(st->ev_reload, &tv);
	}
}

/* Empties the set of unknown usernames. */
static void unknown_users_reset(struct store *st)
{
	if (hmap_count(st->unknown_users) == 0)
		return;
	hmap_free(st->unknown_users, NULL);
	st->unknown_users = hmap_new();
}

/* Forgets every unknown username: one of them may exist now. */
static void unknown_users_clear(struct store *st)
{
	st->cred_gen++;
	unknown_users_reset(st);
}

static const char unknown_user = 1; /* the value of every unknown_users entry */

/*
 * Remembers that Postgres has no credential named user. The bound holds
 * before anything is allocated: at the limit the set starts over, so that
 * names a client invents keep costing at most UNKNOWN_USERS_MAX entries.
 */
static void unknown_users_add(struct store *st, const char *user)
{
	if (strlen(user) > UNKNOWN_USER_LEN_MAX)
		return;
	if (hmap_count(st->unknown_users) >= UNKNOWN_USERS_MAX) {
		log_info("event=auth_unknown_users_full count=%d action=cleared", UNKNOWN_USERS_MAX);
		unknown_users_reset(st);
	}
	hmap_put(st->unknown_users, user, (void *)&unknown_user);
}

/* ---- answering requests ----------------------------------------------- */

static void auth_answer(struct req *r, int ok, const struct tenant_ref *who)
{
	((store_auth_cb)r->cb)(r->cookie, ok, who);
}

static void domain_answer(struct store *st, struct req *r, const struct dom *d)
{
	const char *why = "not_found";
	int ok = d ? dom_sendable(d, r->tenant_id, st->grace, &why) : 0;

	((store_domain_cb)r->cb)(r->cookie, ok, ok ? NULL : why);
}

/*
 * The suppressions load is over, with its rows (ok) or without: the
 * changes logged meanwhile are applied over the rows (see supp_apply).
 * A failed load leaves the cache as it
 * was, changes applied. Returns 1 when the loaded rows can be trusted (a
 * log that overflowed makes them stale: another load follows).
 */
static int supp_load_done(struct store *st, PGresult *res, int ok)
{
	int lost = st->supp_log_lost;

	if (ok) {
		load_suppr(st, res);
		if (st->supp_log)
			hmap_each(st->supp_log, supp_replay, st->supp);
	}
	st->supp_loading = 0;
	supp_log_clear(st);
	if (ok && lost) {
		log_warn("event=suppression_changes_lost reason=\"more than %d addresses changed "
			 "during a load\" action=reload",
			 SUPPR_LOG_MAX);
		reload_schedule(st, C_SUPPR);
	}
	return ok && !lost;
}

/* Completes r with res (NULL when the request failed). Frees r. */
static void req_done(struct store *st, struct req *r, PGresult *res)
{
	int ok = res && (PQresultStatus(res) == PGRES_TUPLES_OK ||
			 PQresultStatus(res) == PGRES_COMMAND_OK);

	if (res && !ok) {
		char q[600];
		const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
		log_warn("event=db_error request=%d error=%s", r->kind,
			 log_quote(q, sizeof(q), m ? m : "unknown"));
	}
	switch (r->kind) {
	case REQ_LISTEN:
		break;
	case REQ_LOAD_CREDS:
		if (ok)
			load_creds(st, res);
		reload_step(st, r, res, ok);
		break;
	case REQ_LOAD_DOMAINS:
		if (ok)
			load_domains(st, res);
		reload_step(st, r, res, ok);
		break;
	case REQ_LOAD_KEYS:
		if (ok)
			load_keys(st, res);
		reload_step(st, r, res, ok);
		break;
	case REQ_LOAD_SUPPR:
		if (!supp_load_done(st, res, ok) && ok) {
			reload_step(st, r, NULL, 0); /* not loaded yet: the next one counts */
			break;
		}
		reload_step(st, r, res, ok);
		break;
	case REQ_LOAD_POOLS:
		if (ok)
			load_pools(st, res);
		reload_step(st, r, res, ok);
		break;
	case REQ_LOAD_TENANT_POOLS:
		if (ok)
			load_tenant_pools(st, res);
		reload_step(st, r, res, ok);
		break;
	case REQ_LOAD_TENANT_LIMITS:
		if (ok)
			load_tenant_limits(st, res);
		reload_step(st, r, res, ok);
		break;
	case REQ_SUPPRESS:
		break;
	case REQ_REPORT: {
		struct store_report_result rr;
		memset(&rr, 0, sizeof(rr));
		if (!ok) {
			rr.found = -1;
		} else if (PQntuples(res) == 1) {
			rr.found = 1;
			rr.tenant = PQgetvalue(res, 0, 0);
			rr.recipient = PQgetvalue(res, 0, 1);
			rr.recorded = PQgetvalue(res, 0, 2)[0] != '0';
			rr.suppressed = PQgetvalue(res, 0, 3)[0] != '0';
		}
		((store_report_cb)r->cb)(r->cookie, &rr);
		break;
	}
	case REQ_SCHEMA: {
		int want = migrations[migrations_count - 1].version;
		int have = ok && PQntuples(res) == 1 ? (int)strtol(PQgetvalue(res, 0, 0), NULL, 10) : 0;
		st->schema_version = have;
		if (have < want)
			log_err("event=schema_outdated database_version=%d binary_version=%d "
				"hint=\"run sendgatectl migrate\"",
				have, want);
		else if (have > want)
			log_warn("event=schema_newer database_version=%d binary_version=%d "
				 "hint=\"the database was migrated by a newer sendgate: restart "
				 "with that version (an older one may miss cache changes)\"",
				 have, want);
		break;
	}
	case REQ_AUTH: {
		struct cred *c = ok && PQntuples(res) == 1 ? cred_from_row(res, 0, 1) : NULL;
		/* A credentials NOTIFY since the question makes the answer
		 * too old to remember (it is still the right answer to give). */
		int fresh = r->cred_gen == st->cred_gen;
		if (!ok) {
			auth_answer(r, -1, NULL);
		} else if (c == NULL) {
			if (fresh && PQntuples(res) == 0)
				unknown_users_add(st, r->arg);
			auth_answer(r, 0, NULL);
		} else {
			int match = ct_equal(c->hash, r->hash, 32);
			struct tenant_ref who = c->who;
			if (fresh)
				free(hmap_put(st->creds, r->arg, c));
			else
				free(c);
			auth_answer(r, match, match ? &who : NULL);
		}
		break;
	}
	case REQ_DOMAIN:
		if (!ok) {
			((store_domain_cb)r->cb)(r->cookie, -1, "database_unavailable");
		} else if (PQntuples(res) == 0) {
			domain_answer(st, r, NULL);
		} else {
			struct dom *d = dom_from_row(res, 0);
			domain_answer(st, r, d);
			free(hmap_put(st->domains, r->arg, d));
		}
		break;
	case REQ_PURGE: {
		long long n = ok && PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
		st->purged += n;
		if (ok && n == PURGE_BATCH) {
			req_push(st, req_new(REQ_PURGE)); /* more: the next batch */
		} else {
			if (ok && st->purged > 0)
				log_info("event=events_purged rows=%lld retention_s=%d", st->purged,
					 st->retention);
			else if (!ok)
				log_warn("event=events_purge_failed rows=%lld", st->purged);
			st->purged = 0;
			st->purging = 0;
		}
		break;
	}
	case REQ_REPUTATION:
		/* One row: the JSON array of the tenants past a rate, or NULL. */
		if (ok && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
			struct req *s = req_new(REQ_SUSPEND);
			s->arg = xstrdup(PQgetvalue(res, 0, 0));
			req_push(st, s);
			break;
		}
		st->rep_running = 0;
		if (!ok)
			log_warn("event=reputation_check_failed");
		else
			log_info("event=reputation_checked suspended=0 duration_ms=%llu",
				 (unsigned long long)((now_usec() - st->rep_started) / 1000));
		break;
	case REQ_SUSPEND: {
		int i;
		char qn[300], qr[600];

		st->rep_running = 0;
		if (!ok) {
			/* A drop after the server committed may hide a suspension
			 * made: its tenant.suspended event is there regardless. */
			log_warn("event=reputation_check_failed step=suspend");
			break;
		}
		for (i = 0; i < PQntuples(res); i++)
			log_warn("event=tenant_suspended_automatically tenant=%s reason=%s",
				 log_quote(qn, sizeof(qn), PQgetvalue(res, i, 0)),
				 log_quote(qr, sizeof(qr), PQgetvalue(res, i, 1)));
		log_info("event=reputation_checked suspended=%d duration_ms=%llu", PQntuples(res),
			 (unsigned long long)((now_usec() - st->rep_started) / 1000));
		break;
	}
	case REQ_EVENTS:
		st->events_inflight = 0;
		if (!ok)
			log_warn("event=events_lost count=%d reason=insert_failed", r->nevents);
		break;
	}
	req_free(r);
}

/* Fails everything waiting: the connection is gone. Cache loads are dropped. */
static void fail_all(struct store *st)
{
	struct req *r;

	if (st->inflight) {
		r = st->inflight;
		st->inflight = NULL;
		req_done(st, r, NULL);
	}
	while ((r = st->head)) {
		st->head = r->next;
		if (st->head == NULL)
			st->tail = NULL;
		req_done(st, r, NULL);
	}
	/* The next connection reloads everything. */
	st->reload_left = 0;
	st->reload_batch = st->reload_sent = 0;
}

/* ---- the connection --------------------------------------------------- */

/*
 * Ends the connection or the attempt at one (why says what went wrong) and
 * arms the retry timer. An attempt that failed before libpq had a
 * connection (an unresolvable host name) is logged the same way. With a
 * host resolved here libpq's messages name only the address (hostaddr),
 * so the name is logged beside them.
 */
static void conn_drop(struct store *st, const char *why)
{
	char q[600], qh[300];

	if (st->db_host)
		log_warn("event=db_disconnected host=%s reason=%s",
			 log_quote(qh, sizeof(qh), st->db_host), log_quote(q, sizeof(q), why));
	else
		log_warn("event=db_disconnected reason=%s", log_quote(q, sizeof(q), why));
	if (st->conn) {
		PQfinish(st->conn);
		st->conn = NULL;
	}
	if (st->ev_read)
		event_free(st->ev_read);
	if (st->ev_write)
		event_free(st->ev_write);
	if (st->ev_connect)
		event_free(st->ev_connect);
	st->ev_read = st->ev_write = st->ev_connect = NULL;
	st->connected = st->connecting = 0;
	if (st->result) {
		PQclear(st->result);
		st->result = NULL;
	}
	fail_all(st);
	{
		struct timeval tv = {st->retry_delay, 0};
		evtimer_add(st->ev_retry, &tv);
	}
	if (st->retry_delay < 30)
		st->retry_delay *= 2;
}

static void send_next(struct store *st)
{
	struct req *r;
	const char *params[5];
	char arg[24], arg2[24], arg3[32], arg4[32];
	const char *sql;
	int nparams = 0, simple = 0, sent;

	if (!st->connected || st->inflight || st->head == NULL)
		return;
	r = st->head;
	st->head = r->next;
	if (st->head == NULL)
		st->tail = NULL;
	if (cache_of(r->kind)) {
		st->reload_sent |= cache_of(r->kind)->bit;
		r->sent_usec = now_usec();
	}
	switch (r->kind) {
	case REQ_LISTEN:
		/* Two statements: the simple query protocol (PQsendQuery). */
		sql = st->caches & C_SUPPR ? "LISTEN sendgate_cache; LISTEN " SUPPR_CHANNEL
					   : "LISTEN sendgate_cache";
		simple = 1;
		break;
	case REQ_LOAD_CREDS:
		sql = SQL_LOAD_CREDS;
		break;
	case REQ_LOAD_DOMAINS:
		sql = SQL_LOAD_DOMAINS;
		break;
	case REQ_LOAD_KEYS:
		sql = SQL_LOAD_KEYS;
		break;
	case REQ_LOAD_SUPPR:
		sql = SQL_LOAD_SUPPR;
		break;
	case REQ_LOAD_POOLS:
		sql = SQL_LOAD_POOLS;
		break;
	case REQ_LOAD_TENANT_POOLS:
		sql = SQL_LOAD_TENANT_POOLS;
		break;
	case REQ_LOAD_TENANT_LIMITS:
		sql = st->schema_version >= 7   ? SQL_LOAD_TENANT_LIMITS
		      : st->schema_version == 6 ? SQL_LOAD_TENANT_LIMITS_6
						: SQL_LOAD_TENANT_LIMITS_5;
		break;
	case REQ_SCHEMA:
		sql = "SELECT coalesce(max(version), 0) FROM schema_migrations";
		break;
	case REQ_SUPPRESS:
	case REQ_REPORT:
		if (!PQsendQueryParams(st->conn, r->kind == REQ_SUPPRESS ? SQL_SUPPRESS : SQL_REPORT,
				       r->kind == REQ_SUPPRESS ? 4 : 9, NULL, (const char *const *)r->p,
				       NULL, NULL, 0)) {
			req_push_front(st, r);
			conn_drop(st, PQerrorMessage(st->conn));
			return;
		}
		st->inflight = r;
		if (PQflush(st->conn) == 1)
			event_add(st->ev_write, NULL);
		return;
	case REQ_AUTH:
		sql = SQL_AUTH;
		params[0] = r->arg;
		nparams = 1;
		break;
	case REQ_DOMAIN:
		sql = SQL_DOMAIN;
		params[0] = r->arg;
		nparams = 1;
		break;
	case REQ_PURGE:
		snprintf(arg, sizeof(arg), "%d", st->retention);
		sql = SQL_PURGE;
		params[0] = arg;
		nparams = 1;
		break;
	case REQ_REPUTATION:
		snprintf(arg, sizeof(arg), "%d", st->rep.window);
		snprintf(arg2, sizeof(arg2), "%d", st->rep.min_recipients);
		snprintf(arg3, sizeof(arg3), "%g", st->rep.bounce_rate);
		snprintf(arg4, sizeof(arg4), "%g", st->rep.complaint_rate);
		sql = SQL_REPUTATION;
		params[0] = arg;
		params[1] = arg2;
		params[2] = arg3;
		params[3] = arg4;
		params[4] = st->rep_window;
		nparams = 5;
		break;
	case REQ_SUSPEND:
		snprintf(arg, sizeof(arg), "%d", st->rep.window);
		sql = SQL_SUSPEND;
		params[0] = r->arg;
		params[1] = arg;
		nparams = 2;
		break;
	case REQ_EVENTS:
	default:
		sql = SQL_EVENTS;
		params[0] = r->arg;
		nparams = 1;
		break;
	}
	if (simple)
		sent = PQsendQuery(st->conn, sql);
	else
		sent = PQsendQueryParams(st->conn, sql, nparams, NULL, params, NULL, NULL, 0);
	if (!sent) {
		req_push_front(st, r);
		conn_drop(st, PQerrorMessage(st->conn));
		return;
	}
	st->inflight = r;
	if (PQflush(st->conn) == 1)
		event_add(st->ev_write, NULL);
}

static void store_kick(struct store *st)
{
	send_next(st);
}

/*
 * Applies one sendgate_suppression payload (see migration 005) to the
 * cache. One that does not parse is logged, and the whole table reloaded
 * instead: returns C_SUPPR then, else 0.
 */
static int supp_notify(struct store *st, const char *payload)
{
	json_t *j = json_loads(payload, 0, NULL);
	json_t *jt = json_object_get(j, "tenant_id"), *js = json_object_get(j, "since");
	const char *op = json_string_value(json_object_get(j, "op"));
	const char *addr = json_string_value(json_object_get(j, "address"));
	const char *reason = json_string_value(json_object_get(j, "reason"));
	int add = op && strcmp(op, "add") == 0;
	char key[400], q[600];
	struct supp val;

	if (op == NULL || (!add && strcmp(op, "remove") != 0) || !json_is_integer(jt) ||
	    addr == NULL || (add && (reason == NULL || !json_is_integer(js)))) {
		log_warn("event=suppression_notify_invalid payload=%s action=reload",
			 log_quote(q, sizeof(q), payload));
		json_decref(j);
		return C_SUPPR;
	}
	snprintf(key, sizeof(key), "%lld:%s", (long long)json_integer_value(jt), addr);
	memset(&val, 0, sizeof(val));
	if (add) {
		supp_set_reason(&val, reason);
		val.since = (time_t)json_integer_value(js);
	}
	supp_apply(st, add, key, &val);
	log_debug("event=cache_delta table=suppressions op=%s tenant_id=%lld address=%s", op,
		  (long long)json_integer_value(jt), log_quote(q, sizeof(q), addr));
	json_decref(j);
	return 0;
}

/*
 * Reloads the caches the pending NOTIFYs name, and applies suppression
 * deltas at once. Runs before the results read with them are handled: a
 * lookup answered before a change committed must not be remembered after
 * its NOTIFY (see cred_gen); for deltas see supp_apply.
 */
static void handle_notifies(struct store *st)
{
	PGnotify *n;
	int mask = 0;

	while ((n = PQnotifies(st->conn))) {
		/* Only a process that keeps suppressions LISTENs there. */
		if (strcmp(n->relname, SUPPR_CHANNEL) == 0)
			mask |= supp_notify(st, n->extra ? n->extra : "");
		else
			mask |= notify_caches(n->extra ? n->extra : "");
		PQfreemem(n);
	}
	mask &= st->caches;
	if (mask & C_CREDS)
		unknown_users_clear(st);
	if (mask)
		reload_schedule(st, mask);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct store *st = arg;

	if (!PQconsumeInput(st->conn)) {
		conn_drop(st, PQerrorMessage(st->conn));
		return;
	}
	handle_notifies(st);
	while (st->inflight && !PQisBusy(st->conn)) {
		PGresult *res = PQgetResult(st->conn);
		if (res) {
			if (st->result)
				PQclear(st->result);
			st->result = res;
			continue;
		}
		res = st->result;
		st->result = NULL;
		{
			struct req *r = st->inflight;
			st->inflight = NULL;
			req_done(st, r, res);
		}
		if (res)
			PQclear(res);
		if (st->conn == NULL)
			return;
		send_next(st);
	}
	/*
	 * PQisBusy and PQgetResult parse whatever input is buffered, NOTIFYs
	 * included: one that arrived behind a result is queued in libpq now,
	 * and the socket may stay quiet for a long time. Take it here.
	 */
	if (st->conn)
		handle_notifies(st);
	if (st->conn && PQstatus(st->conn) == CONNECTION_BAD)
		conn_drop(st, PQerrorMessage(st->conn));
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
	struct store *st = arg;
	int r = PQflush(st->conn);

	if (r == -1)
		conn_drop(st, PQerrorMessage(st->conn));
	else if (r == 1)
		event_add(st->ev_write, NULL);
}

static void connected(struct store *st)
{
	int fd = PQsocket(st->conn);

	st->connecting = 0;
	st->connected = 1;
	st->retry_delay = 1;
	PQsetnonblocking(st->conn, 1);
	st->ev_read = event_new(st->base, fd, EV_READ | EV_PERSIST, on_readable, st);
	st->ev_write = event_new(st->base, fd, EV_WRITE, on_writable, st);
	event_add(st->ev_read, NULL);
	log_info("event=db_connected");
	/* LISTEN before loading, so no change can fall between the two:
	 * connected is set only once everything is queued in order. Every
	 * cache reloads, since NOTIFYs may have been missed meanwhile. */
	st->connected = 0;
	evtimer_del(st->ev_reload);
	st->reload_want = C_ALL;
	reload_push(st);
	req_push_front(st, req_new(REQ_LISTEN));
	req_push_front(st, req_new(REQ_SCHEMA));
	st->connected = 1;
	store_kick(st);
}

static void connect_poll(evutil_socket_t fd, short what, void *arg)
{
	struct store *st = arg;
	PostgresPollingStatusType s = PQconnectPoll(st->conn);
	short want;

	if (st->ev_connect) {
		event_free(st->ev_connect);
		st->ev_connect = NULL;
	}
	switch (s) {
	case PGRES_POLLING_OK:
		connected(st);
		return;
	case PGRES_POLLING_FAILED:
		conn_drop(st, PQerrorMessage(st->conn));
		return;
	case PGRES_POLLING_READING:
		want = EV_READ;
		break;
	default:
		want = EV_WRITE;
		break;
	}
	st->ev_connect = event_new(st->base, PQsocket(st->conn), want, connect_poll, st);
	event_add(st->ev_connect, NULL);
}

/* Server notices go to our log as key=value lines, not raw to stderr. */
static void on_notice(void *arg, const char *message)
{
	char q[600], line[512];
	size_t n;

	snprintf(line, sizeof(line), "%s", message);
	n = strlen(line);
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	log_warn("event=db_notice message=%s", log_quote(q, sizeof(q), line));
}

/* ---- resolving the host name off the loop ----------------------------- */

/* Addresses handed to libpq at most; getaddrinfo rarely gives more. */
#define RESOLVE_ADDRS_MAX 8
/*
 * A lookup with no answer within the conninfo's connect_timeout, else this
 * long, fails the attempt (the retry timer then tries again with a new
 * thread), so a resolver that never answers cannot stop reconnecting. Threads still stuck in getaddrinfo are
 * counted: past RESOLVE_STUCK_MAX no new one starts until one returns.
 * (c-ares, which dns/ uses for mail lookups, would need no thread, but it
 * asks [dns] servers: the database name is the system's to resolve, with
 * /etc/hosts and nsswitch, as libpq would.)
 */
#define RESOLVE_TIMEOUT_SEC 10
#define RESOLVE_STUCK_MAX 4

static atomic_int resolvers_running;

/*
 * One getaddrinfo on its own detached thread. The thread and the store
 * each hold a reference: the store drops its own once it has read the
 * answer, or at store_close while the thread still waits on a slow
 * resolver, so that closing never waits for DNS; the last one out frees.
 * The answer reaches the loop through the eventfd, as the signer's do.
 */
struct resolve_job {
	pthread_mutex_t lock;
	int refs;
	int efd;
	char *host;
	/* Written by the thread under lock, read by the loop after efd. */
	int gai;       /* getaddrinfo's result */
	int sys_errno; /* for EAI_SYSTEM */
	int naddrs;
	char addrs[RESOLVE_ADDRS_MAX][NI_MAXHOST];
};

static void resolve_unref(struct resolve_job *j)
{
	int last;

	pthread_mutex_lock(&j->lock);
	last = --j->refs == 0;
	pthread_mutex_unlock(&j->lock);
	if (!last)
		return;
	close(j->efd);
	pthread_mutex_destroy(&j->lock);
	free(j->host);
	free(j);
}

static void *resolve_thread(void *arg)
{
	struct resolve_job *j = arg;
	struct addrinfo hints, *res = NULL, *ai;
	uint64_t one = 1;
	int gai, err, n = 0;

	/* Named here: once detached, its id is not ours to use. */
	pthread_setname_np(pthread_self(), "sg-resolve");
	/* The hints libpq itself uses for a host name. */
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	gai = getaddrinfo(j->host, NULL, &hints, &res);
	err = errno;
	pthread_mutex_lock(&j->lock);
	j->gai = gai;
	j->sys_errno = err;
	for (ai = gai == 0 ? res : NULL; ai && n < RESOLVE_ADDRS_MAX; ai = ai->ai_next)
		if (getnameinfo(ai->ai_addr, ai->ai_addrlen, j->addrs[n], sizeof(j->addrs[n]), NULL,
				0, NI_NUMERICHOST) == 0)
			n++;
	j->naddrs = n;
	pthread_mutex_unlock(&j->lock);
	if (res)
		freeaddrinfo(res);
	/* A closed store no longer listens; the write is harmless then. */
	if (write(j->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		abort();
	resolve_unref(j);
	atomic_fetch_sub(&resolvers_running, 1);
	return NULL;
}

/* 1 when host is an address or a socket: libpq then resolves nothing. */
static int host_needs_no_lookup(const char *host)
{
	struct addrinfo hints, *res = NULL;

	if (host[0] == '\0' || host[0] == '/' || host[0] == '@')
		return 1;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_flags = AI_NUMERICHOST; /* never asks a resolver */
	if (getaddrinfo(host, NULL, &hints, &res) != 0)
		return 0;
	freeaddrinfo(res);
	return 1;
}

/* 1 when some host of a comma-separated list is a name to look up. */
static int hosts_need_lookup(const char *list)
{
	char *copy = xstrdup(list), *h, *save = NULL;
	int need = 0;

	for (h = strtok_r(copy, ",", &save); h && !need; h = strtok_r(NULL, ",", &save))
		need = !host_needs_no_lookup(h);
	free(copy);
	return need;
}

/*
 * Decides, once at open, whether connections resolve a host name off the
 * loop: only when the conninfo (or PGHOST, which libpq would use) names
 * exactly one host by name and no hostaddr. Other cases that would
 * resolve a name (several hosts, a service file) keep libpq's own lookup,
 * with a warning, since that one blocks the loop.
 */
static void resolve_plan(struct store *st)
{
	PQconninfoOption *opts = PQconninfoParse(st->conninfo, NULL), *o;
	const char *host = NULL, *port = NULL, *service = getenv("PGSERVICE");
	const char *why = NULL;
	int hostaddr = getenv("PGHOSTADDR") != NULL;
	char q[600];

	st->resolve_timeout = RESOLVE_TIMEOUT_SEC;
	if (getenv("PGCONNECT_TIMEOUT") && atoi(getenv("PGCONNECT_TIMEOUT")) > 0)
		st->resolve_timeout = atoi(getenv("PGCONNECT_TIMEOUT")); /* as libpq reads it */
	if (opts == NULL)
		return; /* PQconnectStart reports the syntax error */
	for (o = opts; o->keyword; o++) {
		if (o->val == NULL)
			continue;
		if (strcmp(o->keyword, "host") == 0)
			host = o->val;
		else if (strcmp(o->keyword, "port") == 0)
			port = o->val;
		else if (strcmp(o->keyword, "hostaddr") == 0 && o->val[0])
			hostaddr = 1;
		else if (strcmp(o->keyword, "service") == 0 && o->val[0])
			service = o->val;
		else if (strcmp(o->keyword, "connect_timeout") == 0 && atoi(o->val) > 0)
			st->resolve_timeout = atoi(o->val);
	}
	if (host == NULL && service && service[0]) {
		/* The service file may name a host: libpq reads it itself. */
		host = "(from service file)";
		why = "service";
	} else if (host == NULL) {
		host = getenv("PGHOST");
	}
	/* Several ports for one host: libpq refuses it before any lookup. */
	if (hostaddr || host == NULL || (why == NULL && !hosts_need_lookup(host)) ||
	    (port && strchr(port, ',') && !strchr(host, ','))) {
		PQconninfoFree(opts);
		return;
	}
	if (why == NULL && strchr(host, ','))
		why = "several_hosts";
	if (why) {
		log_warn("event=db_resolve_on_loop host=%s reason=%s hint=\"libpq will resolve a "
			 "host name on the event loop, blocking it; give hostaddr= (a numeric "
			 "address) or a unix socket\"",
			 log_quote(q, sizeof(q), host), why);
		PQconninfoFree(opts);
		return;
	}
	st->db_host = xstrdup(host);
	st->opts = opts;
}

static void connect_begin(struct store *st, PGconn *conn);

/*
 * Starts libpq on the resolved addresses (addrs, comma-separated, n of
 * them) as hostaddr, with the conninfo's other keywords. libpq tries them
 * in getaddrinfo's order, as it would have; host is repeated once per
 * address since its list must be as long as hostaddr's. expand_dbname is
 * off: PQconninfoParse has expanded the conninfo already.
 */
static PGconn *connect_resolved(struct store *st, const char *addrs, int n)
{
	const char **kw, **val;
	struct buf hosts;
	PQconninfoOption *o;
	PGconn *conn;
	size_t k = 0, max = 2;
	int i;

	for (o = st->opts; o->keyword; o++)
		max++;
	kw = xcalloc(max + 1, sizeof(*kw));
	val = xcalloc(max + 1, sizeof(*val));
	for (o = st->opts; o->keyword; o++) {
		if (o->val == NULL || strcmp(o->keyword, "host") == 0 ||
		    strcmp(o->keyword, "hostaddr") == 0)
			continue;
		kw[k] = o->keyword;
		val[k++] = o->val;
	}
	buf_init(&hosts, 1 << 20);
	for (i = 0; i < n; i++) {
		if (i)
			buf_puts(&hosts, ",");
		buf_puts(&hosts, st->db_host);
	}
	kw[k] = "host";
	val[k++] = hosts.data;
	kw[k] = "hostaddr";
	val[k++] = addrs;
	conn = PQconnectStartParams(kw, val, 0);
	buf_free(&hosts);
	free(kw);
	free(val);
	return conn;
}

static void resolve_abandon(struct store *st);

/* The resolver thread has answered, or not in time (loop): connect, or
 * fail and retry. */
static void on_resolved(evutil_socket_t fd, short what, void *arg)
{
	struct store *st = arg;
	struct resolve_job *j = st->resolving;
	char msg[1500], q[600], qa[600];
	struct buf addrs;
	uint64_t n;
	int i;

	if (what & EV_TIMEOUT) {
		snprintf(msg, sizeof(msg),
			 "could not translate host name \"%s\" to address: no answer within %d s",
			 st->db_host, st->resolve_timeout);
		resolve_abandon(st); /* the thread frees the job when it returns */
		conn_drop(st, msg);
		return;
	}
	/* EV_READ on the eventfd: the thread has written. (A wake-up with
	 * nothing to read would only wait again.) */
	if (read(fd, &n, sizeof(n)) != (ssize_t)sizeof(n)) {
		event_add(st->ev_resolved, &(struct timeval){st->resolve_timeout, 0});
		return;
	}
	event_free(st->ev_resolved);
	st->ev_resolved = NULL;
	st->resolving = NULL;
	/* Taking the lock the thread wrote its answer under makes all of it
	 * visible here; the thread touches none of it any more. */
	pthread_mutex_lock(&j->lock);
	pthread_mutex_unlock(&j->lock);
	if (j->gai != 0 || j->naddrs == 0) {
		const char *why = "no usable address";
		if (j->gai == EAI_SYSTEM)
			why = strerror(j->sys_errno);
		else if (j->gai != 0)
			why = gai_strerror(j->gai);
		snprintf(msg, sizeof(msg), "could not translate host name \"%s\" to address: %s",
			 st->db_host, why);
		resolve_unref(j);
		conn_drop(st, msg);
		return;
	}
	buf_init(&addrs, 1 << 20);
	for (i = 0; i < j->naddrs; i++) {
		if (i)
			buf_puts(&addrs, ",");
		buf_puts(&addrs, j->addrs[i]);
	}
	log_info("event=db_resolved host=%s addr=%s", log_quote(q, sizeof(q), st->db_host),
		 log_quote(qa, sizeof(qa), addrs.data));
	connect_begin(st, connect_resolved(st, addrs.data, j->naddrs));
	buf_free(&addrs);
	resolve_unref(j);
}

/* Starts resolving st->db_host on a thread; -1 (with msg) if it cannot. */
static int resolve_start(struct store *st, char *msg, size_t msglen)
{
	struct resolve_job *j = xcalloc(1, sizeof(*j));
	pthread_attr_t attr;
	pthread_t tid;
	sigset_t all, old;
	int rc;

	if (atomic_load(&resolvers_running) >= RESOLVE_STUCK_MAX) {
		snprintf(msg, msglen,
			 "could not translate host name \"%s\" to address: %d earlier lookups "
			 "still have no answer",
			 st->db_host, RESOLVE_STUCK_MAX);
		free(j);
		return -1;
	}
	j->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (j->efd == -1) {
		snprintf(msg, msglen, "cannot resolve \"%s\": eventfd: %s", st->db_host,
			 strerror(errno));
		free(j);
		return -1;
	}
	pthread_mutex_init(&j->lock, NULL);
	j->host = xstrdup(st->db_host);
	j->refs = 2; /* the thread's and the store's */
	st->resolving = j;
	st->ev_resolved = event_new(st->base, j->efd, EV_READ, on_resolved, st);
	event_add(st->ev_resolved, &(struct timeval){st->resolve_timeout, 0});
	/* Signals stay with the loop's thread. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	atomic_fetch_add(&resolvers_running, 1);
	rc = pthread_create(&tid, &attr, resolve_thread, j);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		atomic_fetch_sub(&resolvers_running, 1);
		snprintf(msg, msglen, "cannot resolve \"%s\": no thread: %s", st->db_host,
			 strerror(rc));
		event_free(st->ev_resolved);
		st->ev_resolved = NULL;
		st->resolving = NULL;
		j->refs = 1;
		resolve_unref(j);
		return -1;
	}
	return 0;
}

/* Forgets a running resolution (store_close): the thread frees the job. */
static void resolve_abandon(struct store *st)
{
	if (st->resolving == NULL)
		return;
	event_free(st->ev_resolved);
	st->ev_resolved = NULL;
	resolve_unref(st->resolving);
	st->resolving = NULL;
}

/* ---- connecting ------------------------------------------------------- */

/* Drives a connection that libpq has started (conn, or NULL: no memory). */
static void connect_begin(struct store *st, PGconn *conn)
{
	st->conn = conn;
	if (st->conn == NULL || PQstatus(st->conn) == CONNECTION_BAD) {
		conn_drop(st, st->conn ? PQerrorMessage(st->conn) : "out of memory");
		return;
	}
	PQsetNoticeProcessor(st->conn, on_notice, st);
	st->connecting = 1;
	/* The first poll is due as if the socket were writable. */
	st->ev_connect = event_new(st->base, PQsocket(st->conn), EV_WRITE, connect_poll, st);
	event_add(st->ev_connect, NULL);
}

/* Starts a connection attempt, by way of the resolver thread for a name. */
static void store_connect(struct store *st)
{
	char msg[1200];

	if (st->resolving)
		return; /* its answer connects */
	if (st->db_host == NULL) {
		connect_begin(st, PQconnectStart(st->conninfo));
		return;
	}
	/* Each attempt resolves again: the name may point elsewhere now. */
	st->connecting = 1;
	if (resolve_start(st, msg, sizeof(msg)) == -1)
		conn_drop(st, msg);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	store_connect(arg);
}

/* ---- events ----------------------------------------------------------- */

static void flush_events(struct store *st)
{
	struct buf b;
	struct req *r;
	int n = 0;

	if (!st->connected || st->events_inflight || st->ev_head == NULL)
		return;
	buf_init(&b, (size_t)1 << 30);
	buf_puts(&b, "[");
	while (st->ev_head && n < EVENT_BATCH_MAX) {
		struct pending_event *e = st->ev_head;
		st->ev_head = e->next;
		if (n++)
			buf_puts(&b, ",");
		buf_puts(&b, e->json);
		free(e->json);
		free(e);
		st->nevents--;
	}
	if (st->ev_head == NULL)
		st->ev_tail = NULL;
	buf_puts(&b, "]");
	r = req_new(REQ_EVENTS);
	r->arg = b.data; /* handed over */
	r->nevents = n;
	st->events_inflight = 1;
	req_push(st, r);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct store *st = arg;

	flush_events(st);
	if (st->dropped_events) {
		log_warn("event=events_dropped count=%zu reason=queue_full", st->dropped_events);
		st->dropped_events = 0;
	}
}

void store_event(struct store *st, const char *type, int64_t tenant_id, const char *message_id,
		 json_t *data)
{
	struct pending_event *e;
	json_t *obj;

	if (st->nevents >= EVENT_QUEUE_MAX) {
		st->dropped_events++;
		json_decref(data);
		return;
	}
	if (data == NULL)
		data = json_object();
	obj = json_pack("{s:s, s:I, s:s?, s:o}", "type", type, "tenant_id", (json_int_t)tenant_id,
			"message_id", message_id, "data", data);
	e = xcalloc(1, sizeof(*e));
	e->json = json_dumps(obj, JSON_COMPACT);
	json_decref(obj);
	if (e->json == NULL)
		abort();
	if (st->ev_tail)
		st->ev_tail->next = e;
	else
		st->ev_head = e;
	st->ev_tail = e;
	st->nevents++;
}

/* ---- public ----------------------------------------------------------- */

struct store *store_open(struct event_base *base, const char *conninfo, enum store_role role)
{
	struct store *st = xcalloc(1, sizeof(*st));
	struct timeval tv = {0, 100000};

	st->base = base;
	/* What each process reads (smtpd/ and queue/ call the lookups). */
	st->caches = role == STORE_DELIVERY ? C_POOLS | C_TENANT_POOLS | C_DOMAINS | C_TENANT_LIMITS
					    : C_ALL & ~(C_POOLS | C_TENANT_POOLS);
	st->conninfo = xstrdup(conninfo);
	st->creds = hmap_new();
	st->unknown_users = hmap_new();
	st->domains = hmap_new();
	st->keys = hmap_new();
	st->supp = hmap_new();
	st->pools = hmap_new();
	st->tenant_pool = hmap_new();
	st->tenant_limits = hmap_new();
	st->retry_delay = 1;
	st->grace = 72 * 3600;
	st->ev_retry = evtimer_new(base, retry_cb, st);
	st->ev_reload = evtimer_new(base, reload_cb, st);
	st->ev_flush = event_new(base, -1, EV_PERSIST, flush_cb, st);
	event_add(st->ev_flush, &tv);
	resolve_plan(st);
	store_connect(st);
	return st;
}

void store_set_broken_grace(struct store *st, int seconds)
{
	st->grace = seconds;
}

static void purge_cb(evutil_socket_t fd, short what, void *arg)
{
	struct store *st = arg;
	/* Not queued while disconnected: tried again soon instead. */
	struct timeval tv = {st->connected ? PURGE_INTERVAL : PURGE_FIRST, 0};

	if (st->connected && !st->purging) { /* not while one is under way */
		st->purging = 1;
		req_push(st, req_new(REQ_PURGE));
	}
	evtimer_add(st->ev_purge, &tv);
}

void store_set_events_retention(struct store *st, int seconds)
{
	struct timeval tv = {PURGE_FIRST, 0};

	st->retention = seconds;
	if (seconds <= 0 || st->ev_purge != NULL)
		return;
	st->ev_purge = evtimer_new(st->base, purge_cb, st);
	evtimer_add(st->ev_purge, &tv);
}

static void reputation_cb(evutil_socket_t fd, short what, void *arg)
{
	struct store *st = arg;
	/* Soon again while not connected or the schema not read yet; a
	 * schema before migration 007 (no suspension columns) waits a turn. */
	struct timeval tv = {st->connected && st->schema_version > 0 ? st->rep.interval
								      : PURGE_FIRST, 0};

	if (st->connected && !st->rep_running && st->schema_version >= 7) {
		st->rep_running = 1;
		st->rep_started = now_usec();
		req_push(st, req_new(REQ_REPUTATION));
	}
	evtimer_add(st->ev_reputation, &tv);
}

void store_set_reputation(struct store *st, const struct store_reputation *rep)
{
	struct timeval tv = {PURGE_FIRST, 0};
	int was = st->ev_reputation != NULL && evtimer_pending(st->ev_reputation, NULL);

	if (was && rep->interval != st->rep.interval) {
		evtimer_del(st->ev_reputation); /* the new interval from now on */
		was = 0;
	}
	st->rep = *rep;
	format_duration(rep->window, st->rep_window, sizeof(st->rep_window));
	if (rep->bounce_rate <= 0 && rep->complaint_rate <= 0) {
		if (was)
			evtimer_del(st->ev_reputation);
		return;
	}
	if (st->ev_reputation == NULL)
		st->ev_reputation = evtimer_new(st->base, reputation_cb, st);
	if (!was)
		evtimer_add(st->ev_reputation, &tv);
}

void store_close(struct store *st)
{
	struct pending_event *e;

	if (st == NULL)
		return;
	if (st->nevents)
		log_warn("event=events_lost count=%zu reason=shutdown", st->nevents);
	resolve_abandon(st);
	if (st->conn) {
		PQfinish(st->conn);
		st->conn = NULL;
	}
	st->connected = 0;
	if (st->ev_read)
		event_free(st->ev_read);
	if (st->ev_write)
		event_free(st->ev_write);
	if (st->ev_connect)
		event_free(st->ev_connect);
	st->ev_read = st->ev_write = st->ev_connect = NULL;
	/* At exit nobody waits for answers any more: drop, don't call back. */
	{
		struct req *r, *next;
		if (st->inflight)
			req_free(st->inflight);
		st->inflight = NULL;
		for (r = st->head; r; r = next) {
			next = r->next;
			req_free(r);
		}
		st->head = st->tail = NULL;
	}
	while ((e = st->ev_head)) {
		st->ev_head = e->next;
		free(e->json);
		free(e);
	}
	if (st->result)
		PQclear(st->result);
	event_free(st->ev_retry);
	event_free(st->ev_reload);
	event_free(st->ev_flush);
	if (st->ev_purge)
		event_free(st->ev_purge);
	if (st->ev_reputation)
		event_free(st->ev_reputation);
	hmap_free(st->creds, free);
	hmap_free(st->unknown_users, NULL);
	hmap_free(st->domains, free);
	hmap_free(st->keys, key_list_free);
	hmap_free(st->supp, free);
	supp_log_clear(st);
	hmap_free(st->pools, free);
	hmap_free(st->tenant_pool, free);
	hmap_free(st->tenant_limits, free);
	explicit_bzero(st->master, sizeof(st->master));
	if (st->opts)
		PQconninfoFree(st->opts);
	free(st->db_host);
	free(st->conninfo);
	free(st);
}

/*
 * Ready once every cache this process keeps and cannot do without has
 * loaded: credentials, suppressions, pools, domains and the tenants'
 * limits and suspensions. The delivery process must not send before it
 * knows the pools (its mail would leave from the wrong address) nor a
 * suspended tenant's mail before it knows the suspension. DKIM keys
 * (signing answers 451 without one) do not hold everything else up.
 */
int store_ready(const struct store *st)
{
	int need = ready_need(st);

	return (st->loaded & need) == need;
}

int store_connected(const struct store *st)
{
	return st->connected;
}

void store_auth(struct store *st, const char *user, const char *secret, store_auth_cb cb,
		uint64_t cookie)
{
	unsigned char h[32];
	struct cred *c;
	struct req *r;

	credential_hash(secret, strlen(secret), h);
	c = hmap_get(st->creds, user);
	if (c) {
		int match = ct_equal(c->hash, h, 32);
		cb(cookie, match, match ? &c->who : NULL);
		return;
	}
	if (hmap_get(st->unknown_users, user)) {
		/* Postgres said no lately (the 250 ms floor on failed AUTH in
		 * session.c hides how fast that answer is). */
		cb(cookie, 0, NULL);
		return;
	}
	if (!st->connected) {
		/* Unknown here and no way to ask: a loaded cache is complete. */
		cb(cookie, st->loaded & C_CREDS ? 0 : -1, NULL);
		return;
	}
	r = req_new(REQ_AUTH);
	r->arg = xstrdup(user);
	r->cred_gen = st->cred_gen;
	memcpy(r->hash, h, 32);
	{
		char q[600];
		log_debug("event=auth_db_lookup user=%s", log_quote(q, sizeof(q), user));
	}
	r->cb = (void *)cb;
	r->cookie = cookie;
	req_push(st, r);
}

void store_domain_check(struct store *st, int64_t tenant_id, const char *domain,
			store_domain_cb cb, uint64_t cookie)
{
	struct dom *d = hmap_get(st->domains, domain);
	struct req *r;
	const char *why = NULL;

	if (d) {
		int ok = dom_sendable(d, tenant_id, st->grace, &why);
		cb(cookie, ok, ok ? NULL : why);
		return;
	}
	if (!st->connected) {
		if (st->loaded & C_DOMAINS)
			cb(cookie, 0, "not_found");
		else
			cb(cookie, -1, "database_unavailable");
		return;
	}
	r = req_new(REQ_DOMAIN);
	r->arg = xstrdup(domain);
	r->tenant_id = tenant_id;
	r->cb = (void *)cb;
	r->cookie = cookie;
	req_push(st, r);
}
