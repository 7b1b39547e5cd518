/*
 * Private to smtpd/: the server object the sessions share, and the calls
 * between server.c, session.c and tls.c.
 */
#ifndef SENDGATE_SMTPD_SERVER_H
#define SENDGATE_SMTPD_SERVER_H

#include <stdint.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "common/common.h"
#include "smtpd/smtpd.h"
#include "queue/queue.h"
#include "tenants/tenants.h"

struct session;
struct evhttp;

/*
 * One key of the per-address limits (an IPv4 address or an IPv6 /64, see
 * peer.c): open connections and recent AUTH failures. An entry with no
 * connection is kept only while its failures count, on the idle list
 * (oldest first), from which the sweep and eviction take it.
 */
struct client_addr {
	struct peer_state st;
	struct client_addr *idle_prev, *idle_next;
	int idle; /* on the idle list */
	char key[PEER_TEXT_MAX];
};

/* Upper bounds (ms) of the end-of-data latency histogram of GET /metrics. */
#define METRICS_EOD_BUCKETS {5, 10, 25, 50, 100, 250, 500, 1000, 2500}
#define METRICS_NBUCKETS 9

/* What GET /metrics reports of the submission side (admin.c). */
struct server_metrics {
	uint64_t connections;   /* submission connections taken */
	uint64_t refused[3];    /* 421 at once: max_connections, _per_ip, stopping */
	uint64_t messages[3];   /* at end of data: queued, deferred (4xx), rejected (5xx) */
	uint64_t bytes_queued;  /* size of the queued ones */
	uint64_t replies[2];    /* every 4xx, 5xx reply */
	uint64_t auth_failures;
	uint64_t eod[METRICS_NBUCKETS]; /* queued messages by end of data to 250, per bucket */
	uint64_t eod_usec, sign_usec;   /* sums over the queued ones */
};

/* Counts one message's end of data (admin.c). */
void metrics_message(struct server_metrics *m, int code, size_t size, uint64_t eod_usec,
		     uint64_t sign_usec);

struct server {
	struct config *cfg;
	struct server_metrics metrics;
	struct event_base *base;
	SSL_CTX *tls;
	struct spool *spool;
	struct store *store;
	struct signer *signer; /* NULL: DKIM signing is off (no master key) */
	int hcanon, bcanon;    /* enum dkim_canon */

	struct evconnlistener *listeners[2 * CONFIG_MAX_LISTEN];
	int nlisteners;

	/* Sessions by slot; a session id is (generation << 24) | slot. */
	struct session **slots;
	uint32_t nslots;
	uint32_t *free_slots;
	uint32_t nfree;
	uint64_t generation;
	int nsessions;

	struct hmap *clients; /* peer key → struct client_addr */
	size_t clients_max;   /* entries the table may hold */
	struct client_addr *idle_head, *idle_tail;
	struct event *ev_client_sweep;

	struct tenantlim *tenantlim; /* per-tenant sessions and message buckets */

	struct evhttp *http; /* [admin] listen */
	struct inbound *inbound; /* [bounce] listen; NULL when off */

	int stopping;
	struct event *ev_ready;
	struct event *ev_sigterm;
	struct event *ev_sigint;
	struct event *ev_sighup;
	struct event *ev_stop_timer;
	struct event *ev_accept_resume;
	int ready_logged;

	/* the delivery process (child.c) */
	pid_t child_pid;
	time_t child_started;
	int child_backoff;
	struct event *ev_sigchld;
	struct event *ev_child_restart;
};

/* signer.c */
struct signer;
/* How a signed message fared (see signer_submit). */
struct signer_result {
	const char *sign_err; /* why it could not be signed; NULL: signed */
	int commit_err;       /* signed: 0 when queued as id, else the spool's errno */
	const char *id;
	uint64_t sign_usec; /* submit to the hand-off to the spool: queue wait + signing */
};
/* Called on the loop, once per job, when the outcome is known. */
typedef void (*signer_cb)(uint64_t cookie, const struct signer_result *r);
struct signer *signer_new(struct event_base *base, int nthreads);
/* Stops the threads once every waiting job is signed; before spool_close. */
void signer_free(struct signer *sg);
/*
 * Signs hdr (copied) with each key and commits the message: takes over the
 * key references and txn, whose envelope must be set
 * (queue_txn_set_envelope; without one the commit fails with EINVAL). The
 * thread that signs puts the DKIM-Signature fields on top of hdr and hands
 * txn to the spool itself, so a signed message goes to the commit threads
 * without a trip back through the loop.
 * If signing fails, txn is dropped. cb runs on the loop once the commit is
 * on disk, or as soon as signing or the commit's start failed. Jobs whose
 * keys are all Ed25519 are signed on the loop, and committed at the end of
 * the loop's pass (see signer.c). hcanon/bcanon are enum dkim_canon.
 * Waiting jobs are taken by tenant_id in turn.
 */
int signer_submit(struct signer *sg, struct signing_key **keys, int nkeys, const char *hdr,
		  size_t hlen, const unsigned char bh[32], int hcanon, int bcanon, time_t expire,
		  int64_t tenant_id, struct spool_txn *txn, signer_cb cb, uint64_t cookie);

/* child.c */
/* The environment variable that hands the VERP key to the delivery child. */
#define VERP_KEY_ENV "SENDGATE_VERP_KEY"
/* Starts the delivery process and restarts it whenever it dies. */
void child_start(struct server *srv);
void child_signal(struct server *srv, int sig);
int child_running(const struct server *srv);
/* At exit: SIGTERM, wait up to timeout seconds, then SIGKILL. */
void child_finish(struct server *srv, int timeout);

/* admin.c */
/* Serves /healthz and /readyz on [admin] listen. 0, or -1 with err. */
int admin_start(struct server *srv, char *err, size_t errlen);
void admin_stop(struct server *srv);

/* inbound.c */
/* Listens on [bounce] listen: NULL when none is set, or on error (err set). */
struct inbound *inbound_start(struct server *srv, char *err, size_t errlen);
/* Stops listening and ends idle sessions (shutdown). */
void inbound_stop(struct inbound *in);
void inbound_free(struct inbound *in);

/* tls.c */
/* Builds the server TLS context from cert/key files; NULL with err. */
SSL_CTX *tls_server_ctx(const char *cert, const char *key, char *err, size_t errlen);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" for a connection, into out. */
void tls_describe(SSL *ssl, char *out, size_t outlen);
/*
 * Logs a failed TLS read, write or handshake (op) of client as
 * event=tls_error with OpenSSL's reason: err, or else the last error
 * OpenSSL queued on this thread; failing both, for SSL_ERROR_SYSCALL
 * (ssl_error, 0 when unknown) the system's reason, or that the peer just
 * went away.
 */
void tls_log_error(const char *client, const char *op, unsigned long err, int ssl_error);
/*
 * The refusal STARTTLS gets on a connection already encrypted (tls_active)
 * or with an argument (arglen octets), a string constant; NULL when it may
 * go ahead.
 */
const char *tls_starttls_refusal(int tls_active, size_t arglen);
struct bufferevent;
/*
 * An error event (what) of bev: logs OpenSSL's reason, when it gave one, as
 * a failed handshake while handshaking, else as a failed read or write.
 */
void tls_log_event_error(struct bufferevent *bev, short what, int handshaking, const char *client);
/*
 * After the STARTTLS 220: 1 when plaintext is already buffered on bev (an
 * injection attack: the caller closes), logged as event=starttls_injection.
 */
int tls_starttls_injected(struct bufferevent *bev, const char *client);
/*
 * STARTTLS, once its 220 is written: frees *bev, a plain bufferevent on fd
 * that does not own it, and puts in its place one that runs the server
 * side of a handshake on fd with srv->tls as it is now (reloaded on SIGHUP)
 * and closes fd when freed. 0; -1 when it could not: *bev is then the
 * plain one or NULL, and fd is still the caller's to close.
 */
int tls_upgrade(struct server *srv, evutil_socket_t fd, struct bufferevent **bev);

/* server.c */
/*
 * Feeds DATA from in to dr (the chunks one peek gives), draining what it
 * took; dr->done at the end of data. Shared by both listeners' sessions.
 */
struct evbuffer;
void server_feed_data(struct evbuffer *in, struct data_reader *dr, struct buf *hdr,
		      struct buf *body);
/*
 * Binds a listener on la (an empty host: every IPv4 address) for cb(arg)
 * and logs event=listening mode=MODE; NULL with err naming the address.
 */
struct evconnlistener *server_listen(struct event_base *base, const struct listen_addr *la,
				     int backlog, evconnlistener_cb cb, void *arg, const char *mode,
				     char *err, size_t errlen);
/* Finds a live session by id; NULL when it has closed meanwhile. */
struct session *server_session(struct server *srv, uint64_t id);
/* Counts a failed AUTH against a connected session's peer key. */
void server_auth_failed(struct server *srv, const char *key);
/* Called by a session as it frees itself; key is its peer key. */
void server_session_gone(struct server *srv, struct session *s, uint64_t id, const char *key);

/* session.c */
/*
 * Starts a session on an accepted socket; implicit = TLS from the start.
 * addr is the client's address as logged, key its peer key (both copied).
 */
void session_start(struct server *srv, evutil_socket_t fd, const char *addr, const char *key,
		   int implicit_tls, uint64_t id, int greeting_delay);
/* Asks the session to finish at the next command boundary (shutdown). */
void session_shutdown(struct session *s);
/* Frees a session at exit, without callbacks or replies. */
void session_abort(struct session *s);

#endif
