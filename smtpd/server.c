/*
 * server: the daemon's listeners, connection limits, signals, and the
 * table that maps session ids to live sessions.
 */
#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "dkim/dkim.h"
#include "smtpd/server.h"
#include "smtpd/smtpd.h"

#define SLOT_BITS 24
#define FAILURE_MEMORY 900 /* seconds an AUTH failure counts against an address */
#define STOP_GRACE 30	    /* seconds in-flight transactions get at SIGTERM */
#define CLIENT_SWEEP_INTERVAL 60 /* seconds between sweeps of the per-address table */

struct listener_arg {
	struct server *srv;
	int implicit_tls;
};

static struct listener_arg largs[2];

struct session *server_session(struct server *srv, uint64_t id)
{
	uint32_t slot = (uint32_t)(id & ((1u << SLOT_BITS) - 1));
	struct session *s;

	if (slot >= srv->nslots)
		return NULL;
	s = srv->slots[slot];
	/* The first field of a session is its id (see session.c). */
	if (s == NULL || *(uint64_t *)s != id)
		return NULL;
	return s;
}

/* ---- the per-address table ---------------------------------------------
 *
 * One entry per peer key (peer.c) with a connection or with AUTH failures
 * that still count. An entry whose last connection ends is dropped at once
 * when it holds no failures; otherwise it goes on the idle list, which the
 * sweep timer walks to drop entries whose failures have expired. Clients
 * choose how many keys they come from, so the table is also capped, and
 * checked before an entry is allocated.
 */

/*
 * Seconds on the monotonic clock: a wall-clock step neither erases nor
 * stretches a penalty.
 */
static time_t mono_now(void)
{
	return (time_t)(now_usec() / 1000000u);
}

static void idle_push(struct server *srv, struct client_addr *ca)
{
	ca->idle_next = NULL;
	ca->idle_prev = srv->idle_tail;
	if (srv->idle_tail)
		srv->idle_tail->idle_next = ca;
	else
		srv->idle_head = ca;
	srv->idle_tail = ca;
	ca->idle = 1;
}

static void idle_unlink(struct server *srv, struct client_addr *ca)
{
	if (!ca->idle)
		return;
	if (ca->idle_prev)
		ca->idle_prev->idle_next = ca->idle_next;
	else
		srv->idle_head = ca->idle_next;
	if (ca->idle_next)
		ca->idle_next->idle_prev = ca->idle_prev;
	else
		srv->idle_tail = ca->idle_prev;
	ca->idle_prev = ca->idle_next = NULL;
	ca->idle = 0;
}

/* Drops an entry (with no connection) from the table and frees it. */
static void client_forget(struct server *srv, struct client_addr *ca, const char *why)
{
	idle_unlink(srv, ca);
	hmap_del(srv->clients, ca->key);
	log_debug("event=client_forgotten key=%s reason=%s entries=%zu", ca->key, why,
		  hmap_count(srv->clients));
	free(ca);
}

/*
 * The entry for key, made when missing; owned by the table. When the table
 * is full, the entry that has been idle longest goes to make room. The
 * other choice, refusing the new client, would let anyone who controls
 * enough addresses (a /48 holds 65536 /64 keys) fill the table with failed
 * AUTHs and lock every other client out: a brute-force defence turned into
 * a denial of service. Evicting only shortens how long the oldest failures
 * are remembered, and an attacker needs as many keys as the table holds to
 * make it happen, while one who has that many can spread its guesses over
 * them anyway.
 */
static struct client_addr *client_get(struct server *srv, const char *key)
{
	struct client_addr *ca = hmap_get(srv->clients, key);

	if (ca)
		return ca;
	if (hmap_count(srv->clients) >= srv->clients_max) {
		struct client_addr *old = srv->idle_head;
		/* Entries with a connection number fewer than max_connections
		 * here (checked before), and the cap is larger: some are idle. */
		if (old == NULL)
			fatal("event=bug error=\"client table full with no idle entry\" entries=%zu",
			      hmap_count(srv->clients));
		if (peer_forgettable(&old->st, mono_now(), FAILURE_MEMORY)) {
			client_forget(srv, old, "expired");
		} else {
			log_info("event=client_evicted key=%s failures=%d entries=%zu limit=%zu",
				 old->key, old->st.auth_failures, hmap_count(srv->clients),
				 srv->clients_max);
			client_forget(srv, old, "evicted");
		}
	}
	ca = xcalloc(1, sizeof(*ca));
	snprintf(ca->key, sizeof(ca->key), "%s", key);
	hmap_put(srv->clients, ca->key, ca);
	return ca;
}

void server_auth_failed(struct server *srv, const char *key)
{
	struct client_addr *ca = hmap_get(srv->clients, key);

	srv->metrics.auth_failures++;
	/* The session's own connection keeps its entry in the table. */
	if (ca)
		peer_auth_failed(&ca->st, mono_now(), FAILURE_MEMORY);
}

/*
 * Timer, each minute: drops the per-address entries whose AUTH failures no
 * longer count, and the per-tenant ones with no session and a full bucket
 * (a bucket refills within a minute: an idle tenant's entry goes at most
 * two minutes after its last session).
 */
static void client_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	struct client_addr *ca, *next;
	time_t now = mono_now();
	int removed = 0;
	size_t tenants;

	for (ca = srv->idle_head; ca; ca = next) {
		next = ca->idle_next;
		if (peer_forgettable(&ca->st, now, FAILURE_MEMORY)) {
			client_forget(srv, ca, "expired");
			removed++;
		}
	}
	if (removed)
		log_info("event=client_sweep removed=%d entries=%zu limit=%zu", removed,
			 hmap_count(srv->clients), srv->clients_max);
	tenants = tenantlim_sweep(srv->tenantlim, now_usec());
	if (tenants)
		log_debug("event=tenant_sweep removed=%zu entries=%zu", tenants,
			  tenantlim_count(srv->tenantlim));
}

void server_session_gone(struct server *srv, struct session *s, uint64_t id, const char *key)
{
	uint32_t slot = (uint32_t)(id & ((1u << SLOT_BITS) - 1));
	struct client_addr *ca = hmap_get(srv->clients, key);

	srv->slots[slot] = NULL;
	srv->free_slots[srv->nfree++] = slot;
	srv->nsessions--;
	if (ca && --ca->st.conns <= 0) {
		ca->st.conns = 0;
		if (peer_forgettable(&ca->st, mono_now(), FAILURE_MEMORY))
			client_forget(srv, ca, "idle");
		else
			idle_push(srv, ca);
	}
	if (srv->stopping && srv->nsessions == 0 && !child_running(srv))
		event_base_loopexit(srv->base, NULL);
}

static void refuse(evutil_socket_t fd, const char *text)
{
	ssize_t r = write(fd, text, strlen(text));
	(void)r;
	evutil_closesocket(fd);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
		      void *arg)
{
	struct listener_arg *la = arg;
	struct server *srv = la->srv;
	const struct config *cfg = srv->cfg;
	char addr[PEER_TEXT_MAX], key[PEER_TEXT_MAX];
	struct client_addr *ca;
	uint32_t slot;
	uint64_t id;
	int delay = 0;

	peer_name(sa, (size_t)salen, addr, key);
	evutil_make_socket_nonblocking(fd);
	/* Replies and TLS records are written whole: without this, Nagle
	 * and the client's delayed ACK add 40 ms to a handshake. */
	{
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	if (srv->stopping) {
		srv->metrics.refused[2]++;
		refuse(fd, "421 4.3.2 Service shutting down; try again later\r\n");
		return;
	}
	if (srv->nsessions >= cfg->max_connections || srv->nfree == 0) {
		log_warn("event=refused client=%s reason=max_connections limit=%d", addr,
			 cfg->max_connections);
		srv->metrics.refused[0]++;
		refuse(fd, "421 4.7.0 Too many connections to this server; try again later\r\n");
		return;
	}
	ca = client_get(srv, key);
	if (ca->st.conns >= cfg->max_connections_per_ip) {
		char text[200];
		log_warn("event=refused client=%s key=%s reason=max_connections_per_ip limit=%d", addr,
			 key, cfg->max_connections_per_ip);
		srv->metrics.refused[1]++;
		snprintf(text, sizeof(text),
			 "421 4.7.0 Too many connections from your %s %s: at most %d at a time; try "
			 "again later\r\n",
			 strchr(key, '/') ? "network" : "address", key, cfg->max_connections_per_ip);
		refuse(fd, text);
		return;
	}
	if (peer_penalized(&ca->st, mono_now(), FAILURE_MEMORY, cfg->auth_max_failures))
		delay = cfg->auth_fail_delay;
	idle_unlink(srv, ca);
	ca->st.conns++;
	slot = srv->free_slots[--srv->nfree];
	id = (++srv->generation << SLOT_BITS) | slot;
	srv->nsessions++;
	srv->metrics.connections++;
	session_start(srv, fd, addr, key, la->implicit_tls, id, delay);
}

static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	int i;

	for (i = 0; i < srv->nlisteners; i++)
		evconnlistener_enable(srv->listeners[i]);
}

/* Out of descriptors: stop accepting for a second instead of spinning. */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
	struct server *srv = ((struct listener_arg *)arg)->srv;
	int err = EVUTIL_SOCKET_ERROR(), i;

	if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM)
		return;
	log_err("event=accept_paused error=\"%s\" sessions=%d", strerror(err), srv->nsessions);
	for (i = 0; i < srv->nlisteners; i++)
		evconnlistener_disable(srv->listeners[i]);
	if (srv->ev_accept_resume == NULL)
		srv->ev_accept_resume = evtimer_new(srv->base, resume_accepting, srv);
	{
		struct timeval tv = {1, 0};
		evtimer_add(srv->ev_accept_resume, &tv);
	}
}

/*
 * Each session holds a socket and, while a message is open, a spool file:
 * make sure the descriptor limit fits max_connections.
 */
static void raise_fd_limit(const struct config *cfg)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)cfg->max_connections * 2 + 256;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < want)
		log_warn("event=fd_limit limit=%llu wanted=%llu note=\"max_connections may not be "
			 "reachable; raise the hard limit (ulimit -Hn)\"",
			 (unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

void server_feed_data(struct evbuffer *in, struct data_reader *dr, struct buf *hdr,
		      struct buf *body)
{
	struct evbuffer_iovec v[8];
	int n = evbuffer_peek(in, -1, NULL, v, 8), i;
	size_t used = 0;

	for (i = 0; i < n && !dr->done; i++) {
		ssize_t r = data_reader_feed(dr, v[i].iov_base, v[i].iov_len, hdr, body);
		if (r < 0)
			abort(); /* only when hdr and body are one buffer */
		used += (size_t)r;
		if ((size_t)r < v[i].iov_len && !dr->done)
			break;
	}
	evbuffer_drain(in, used);
}

struct evconnlistener *server_listen(struct event_base *base, const struct listen_addr *la,
				     int backlog, evconnlistener_cb cb, void *arg, const char *mode,
				     char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);
	char spec[96];
	struct evconnlistener *l;

	if (strchr(la->host, ':'))
		snprintf(spec, sizeof(spec), "[%s]:%d", la->host, la->port);
	else
		snprintf(spec, sizeof(spec), "%s:%d", la->host[0] ? la->host : "0.0.0.0", la->port);
	memset(&ss, 0, sizeof(ss));
	if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sslen) == -1) {
		snprintf(err, errlen, "cannot parse listen address %s", spec);
		return NULL;
	}
	l = evconnlistener_new_bind(base, cb, arg,
				    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
				    backlog, (struct sockaddr *)&ss, sslen);
	if (l == NULL) {
		snprintf(err, errlen, "cannot listen on %s: %s", spec, strerror(errno));
		return NULL;
	}
	log_info("event=listening address=%s mode=%s", spec, mode);
	return l;
}

static int listen_on(struct server *srv, const struct listen_addr *la, int implicit_tls, char *err,
		     size_t errlen)
{
	struct evconnlistener *l;

	largs[implicit_tls].srv = srv;
	largs[implicit_tls].implicit_tls = implicit_tls;
	l = server_listen(srv->base, la, 1024, on_accept, &largs[implicit_tls],
			  implicit_tls ? "smtps" : "submission", err, errlen);
	if (l == NULL)
		return -1;
	evconnlistener_set_error_cb(l, on_accept_error);
	srv->listeners[srv->nlisteners++] = l;
	return 0;
}

static void stop_listening(struct server *srv)
{
	int i;

	for (i = 0; i < srv->nlisteners; i++)
		evconnlistener_free(srv->listeners[i]);
	srv->nlisteners = 0;
}

static void stop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	log_warn("event=stop_timeout sessions=%d", srv->nsessions);
	event_base_loopexit(srv->base, NULL);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;
	uint32_t i;

	if (srv->stopping)
		return;
	srv->stopping = 1;
	log_info("event=stopping signal=%d sessions=%d", (int)sig, srv->nsessions);
	stop_listening(srv);
	inbound_stop(srv->inbound);
	child_signal(srv, SIGTERM);
	for (i = 0; i < srv->nslots; i++)
		if (srv->slots[i])
			session_shutdown(srv->slots[i]);
	if (srv->nsessions == 0 && !child_running(srv)) {
		event_base_loopexit(srv->base, NULL);
		return;
	}
	srv->ev_stop_timer = evtimer_new(srv->base, stop_timer_cb, srv);
	{
		struct timeval tv = {STOP_GRACE, 0};
		evtimer_add(srv->ev_stop_timer, &tv);
	}
}

/* Copies the keys that may change at run time from nc into cfg. */
static void apply_runtime_keys(struct config *cfg, struct config *nc)
{
	char *tmp;

#define SWAP_STR(f) (tmp = cfg->f, cfg->f = nc->f, nc->f = tmp)
	SWAP_STR(hostname);
	SWAP_STR(tls_cert);
	SWAP_STR(tls_key);
	SWAP_STR(log_level);
	/* What the DNS verification thread uses (restarted below). */
	SWAP_STR(dns_servers);
	SWAP_STR(verify_required);
	SWAP_STR(platform_dkim_zone);
	SWAP_STR(platform_spf_include);
	SWAP_STR(platform_return_path_prefix);
	SWAP_STR(platform_return_path_domain);
	SWAP_STR(platform_bounce_domain);
	SWAP_STR(platform_dmarc_rua);
#undef SWAP_STR
	cfg->dns_timeout_ms = nc->dns_timeout_ms;
	cfg->dns_tries = nc->dns_tries;
	cfg->reputation_bounce_rate = nc->reputation_bounce_rate;
	cfg->reputation_complaint_rate = nc->reputation_complaint_rate;
	cfg->reputation_min_recipients = nc->reputation_min_recipients;
	cfg->reputation_window = nc->reputation_window;
	cfg->reputation_check_interval = nc->reputation_check_interval;
	cfg->verify_new_interval = nc->verify_new_interval;
	cfg->verify_new_window = nc->verify_new_window;
	cfg->verify_pending_interval = nc->verify_pending_interval;
	cfg->verify_verified_interval = nc->verify_verified_interval;
	cfg->verify_broken_interval = nc->verify_broken_interval;
	cfg->verify_broken_window = nc->verify_broken_window;
	cfg->max_message_size = nc->max_message_size;
	cfg->max_recipients = nc->max_recipients;
	cfg->max_command_line = nc->max_command_line;
	cfg->max_text_line = nc->max_text_line;
	cfg->max_path_length = nc->max_path_length;
	cfg->max_header_size = nc->max_header_size;
	cfg->max_errors = nc->max_errors;
	cfg->auth_max_failures = nc->auth_max_failures;
	cfg->auth_fail_delay = nc->auth_fail_delay;
	cfg->command_timeout = nc->command_timeout;
	cfg->data_timeout = nc->data_timeout;
	cfg->data_done_timeout = nc->data_done_timeout;
	cfg->max_connections_per_ip = nc->max_connections_per_ip;
	cfg->tenant_max_connections = nc->tenant_max_connections;
	cfg->tenant_messages_per_minute = nc->tenant_messages_per_minute;
	cfg->verify_grace_period = nc->verify_grace_period;
}

/* Names the first key that changed but needs a restart, or NULL. */
static const char *restart_key(const struct config *a, const struct config *b)
{
	if (strcmp(a->database_url, b->database_url))
		return "[database] url";
	if (strcmp(a->spool_dir, b->spool_dir))
		return "[spool] dir";
	if (a->n_submission_listen != b->n_submission_listen ||
	    memcmp(a->submission_listen, b->submission_listen, sizeof(a->submission_listen)))
		return "[smtp] submission_listen";
	if (a->n_smtps_listen != b->n_smtps_listen ||
	    memcmp(a->smtps_listen, b->smtps_listen, sizeof(a->smtps_listen)))
		return "[smtp] smtps_listen";
	if (a->n_bounce_listen != b->n_bounce_listen ||
	    memcmp(a->bounce_listen, b->bounce_listen, sizeof(a->bounce_listen)))
		return "[bounce] listen";
	if (a->bounce_max_connections != b->bounce_max_connections)
		return "[bounce] max_connections";
	if (a->bounce_max_connections_per_ip != b->bounce_max_connections_per_ip)
		return "[bounce] max_connections_per_ip";
	if (a->bounce_max_message_size != b->bounce_max_message_size)
		return "[bounce] max_message_size";
	if (strcmp(a->bounce_feedback_address, b->bounce_feedback_address))
		return "[bounce] feedback_address";
	if (strcmp(a->user, b->user))
		return "[server] user";
	if (strcmp(a->dkim_master_key_file, b->dkim_master_key_file))
		return "[dkim] master_key_file";
	if (a->max_connections != b->max_connections)
		return "[smtp] max_connections";
	return NULL;
}

static int level_from(const char *s)
{
	return !strcmp(s, "err") ? SGLOG_ERR : !strcmp(s, "warn") ? SGLOG_WARN
			       : !strcmp(s, "debug")  ? SGLOG_DEBUG
						      : SGLOG_INFO;
}

/* [reputation], at start and on SIGHUP. */
static void set_reputation(struct server *srv)
{
	const struct config *cfg = srv->cfg;
	struct store_reputation rep = {cfg->reputation_window, cfg->reputation_min_recipients,
				       cfg->reputation_bounce_rate, cfg->reputation_complaint_rate,
				       cfg->reputation_check_interval};

	store_set_reputation(srv->store, &rep);
}

/* SIGHUP: reread the file; a bad new config keeps the old one. */
static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;
	struct config nc;
	char err[1024];
	const char *rk;
	SSL_CTX *ctx;

	if (config_load(&nc, srv->cfg->path, err, sizeof(err)) == -1) {
		char q[2000];
		log_err("event=reload result=failed error=%s note=keeping_old_config",
			log_quote(q, sizeof(q), err));
		config_free(&nc);
		return;
	}
	ctx = tls_server_ctx(nc.tls_cert, nc.tls_key, err, sizeof(err));
	if (ctx == NULL) {
		char q[1100];
		log_err("event=reload result=failed error=%s note=keeping_old_config",
			log_quote(q, sizeof(q), err));
		config_free(&nc);
		return;
	}
	rk = restart_key(srv->cfg, &nc);
	if (rk)
		log_warn("event=reload note=\"%s changed: takes effect at the next restart\"", rk);
	apply_runtime_keys(srv->cfg, &nc);
	log_set_level(level_from(srv->cfg->log_level));
	store_set_broken_grace(srv->store, srv->cfg->verify_grace_period);
	set_reputation(srv);
	/* Sessions keep a reference to the context their SSL came from. */
	SSL_CTX_free(srv->tls);
	srv->tls = ctx;
	config_free(&nc);
	verify_thread_stop();
	if (verify_thread_start(srv->cfg) == -1)
		log_err("event=reload what=verify_thread result=failed");
	/* The delivery process reads [delivery] at its start: it is not
	 * signalled (its settings change when it is restarted). */
	log_info("event=reload result=ok");
}

/*
 * Gives up root once every privileged port is bound: to [server] user,
 * after handing it the spool. Running as root without a user is refused.
 */
void smtpd_drop_privileges(const struct config *cfg)
{
	static const char *const sub[] = {"", "/tmp", "/queue", "/quarantine", "/free"};
	struct passwd *pw;
	size_t i;

	if (geteuid() != 0)
		return;
	if (cfg->user[0] == '\0')
		fatal("event=start_failed config=%s error=\"[server] user: not set; sendgate refuses to "
		      "run as root\"",
		      cfg->path);
	pw = getpwnam(cfg->user);
	if (pw == NULL)
		fatal("event=start_failed config=%s error=\"[server] user: no such user %s\"", cfg->path,
		      cfg->user);
	if (pw->pw_uid == 0)
		fatal("event=start_failed config=%s error=\"[server] user: %s is root\"", cfg->path,
		      cfg->user);
	for (i = 0; i < ARRAY_LEN(sub); i++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s%s", cfg->spool_dir, sub[i]);
		if (chown(path, pw->pw_uid, pw->pw_gid) == -1)
			fatal("event=start_failed error=\"cannot give %s to %s: %s\"", path, cfg->user,
			      strerror(errno));
	}
	if (setgroups(1, &pw->pw_gid) == -1 || setgid(pw->pw_gid) == -1 || setuid(pw->pw_uid) == -1)
		fatal("event=start_failed error=\"cannot switch to user %s: %s\"", cfg->user,
		      strerror(errno));
	if (setuid(0) != -1)
		fatal("event=start_failed error=\"root privileges could be regained\"");
	log_info("event=privileges user=%s uid=%d", cfg->user, (int)pw->pw_uid);
}

static void ready_check(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	int good, bad;

	if (srv->ready_logged || !store_ready(srv->store))
		return;
	bad = store_key_errors(srv->store, &good);
	if (bad > 0 && good == 0)
		fatal("event=start_failed error=\"[dkim] master_key_file %s cannot decrypt any of the %d "
		      "DKIM keys in the database: wrong master key\"",
		      srv->cfg->dkim_master_key_file, bad);
	srv->ready_logged = 1;
	log_info("event=ready sessions=%d queued=%zu", srv->nsessions, spool_count(srv->spool));
}

/*
 * The event loop, with epoll's changelist: interest changes are applied once
 * per loop turn, so a write interest switched on and off within one turn
 * (session.c, flush_direct) costs no system call. Its caveat is a socket
 * still open elsewhere when its removal is applied after our close: only a
 * delivery child being forked holds copies of open sockets, until it closes
 * them at once, and that can cost a spurious wake-up, nothing more.
 */
static struct event_base *loop_new(void)
{
	struct event_config *ec = event_config_new();
	struct event_base *base;

	if (ec == NULL)
		return NULL;
	event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	base = event_base_new_with_config(ec);
	event_config_free(ec);
	return base;
}

int smtpd_run(struct config *cfg, const char *config_path)
{
	struct server srv;
	char err[1024];
	char q[2000];
	uint32_t i;
	int n, code = 0;

	memset(&srv, 0, sizeof(srv));
	srv.cfg = cfg;
	signal(SIGPIPE, SIG_IGN);
	srv.base = loop_new();
	if (srv.base == NULL)
		fatal("event=start_failed error=\"cannot create event loop\"");
	srv.tls = tls_server_ctx(cfg->tls_cert, cfg->tls_key, err, sizeof(err));
	if (srv.tls == NULL) {
		char where[600], msg[1700];
		snprintf(msg, sizeof(msg), "%s: %s",
			 config_where(cfg, "smtp", strstr(err, "private key") ? "tls_key" : "tls_cert",
				      where, sizeof(where)),
			 err);
		fatal("event=start_failed error=%s", log_quote(q, sizeof(q), msg));
	}
	raise_fd_limit(cfg);
	srv.spool = spool_open(srv.base, cfg->spool_dir, cfg->commit_threads, err, sizeof(err));
	if (srv.spool == NULL)
		fatal("event=start_failed error=\"spool %s: %s\"", cfg->spool_dir, err);
	spool_set_reuse(srv.spool, cfg->spool_reuse_max_age > 0);
	srv.nslots = (uint32_t)cfg->max_connections + 1;
	if (srv.nslots > (1u << SLOT_BITS))
		srv.nslots = 1u << SLOT_BITS;
	srv.slots = xcalloc(srv.nslots, sizeof(*srv.slots));
	srv.free_slots = xcalloc(srv.nslots, sizeof(*srv.free_slots));
	for (i = 0; i < srv.nslots; i++)
		srv.free_slots[srv.nfree++] = srv.nslots - 1 - i;
	srv.clients = hmap_new();
	/* Entries with a connection number at most max_connections; as many
	 * again may be kept for their AUTH failures alone. */
	srv.clients_max = 2 * (size_t)cfg->max_connections;
	srv.tenantlim = tenantlim_new(); /* swept by client_sweep too */
	srv.ev_client_sweep = event_new(srv.base, -1, EV_PERSIST, client_sweep, &srv);
	{
		struct timeval tv = {CLIENT_SWEEP_INTERVAL, 0};
		event_add(srv.ev_client_sweep, &tv);
	}
	srv.store = store_open(srv.base, cfg->database_url, STORE_SUBMISSION);
	store_set_broken_grace(srv.store, cfg->verify_grace_period);
	store_set_events_retention(srv.store, cfg->events_retention);
	set_reputation(&srv);
	if (cfg->dkim_master_key_file[0]) {
		unsigned char mkey[32];
		if (dkim_master_key_load(cfg->dkim_master_key_file, mkey, err, sizeof(err)) == -1) {
			char where[600], msg[1700];
			snprintf(msg, sizeof(msg), "%s: %s",
				 config_where(cfg, "dkim", "master_key_file", where, sizeof(where)), err);
			fatal("event=start_failed error=%s", log_quote(q, sizeof(q), msg));
		}
		store_set_master_key(srv.store, mkey);
		verp_key_derive(mkey, cfg->verp_key);
		explicit_bzero(mkey, sizeof(mkey));
#ifndef SENDGATE_BENCH_UNSIGNED
		srv.signer = signer_new(srv.base, cfg->dkim_sign_threads);
#else
		/* `make bench-unsigned`: the benchmark's baseline, to measure
		 * what signing adds to latency. Never installed. */
		log_warn("event=unsigned_baseline note=\"benchmark build: messages are queued "
			 "unsigned\"");
#endif
		srv.hcanon = strncmp(cfg->dkim_canonicalization, "simple/", 7) == 0
				 ? DKIM_CANON_SIMPLE
				 : DKIM_CANON_RELAXED;
		srv.bcanon = strstr(cfg->dkim_canonicalization, "/simple") ? DKIM_CANON_SIMPLE
									    : DKIM_CANON_RELAXED;
	} else {
		fatal("event=start_failed config=%s error=\"[dkim] master_key_file: not set; sendgate "
		      "never queues unsigned mail (make one with 'openssl rand -hex 32')\"",
		      config_path);
	}
	for (n = 0; n < cfg->n_submission_listen; n++)
		if (listen_on(&srv, &cfg->submission_listen[n], 0, err, sizeof(err)) == -1)
			fatal("event=start_failed error=%s", log_quote(q, sizeof(q), err));
	for (n = 0; n < cfg->n_smtps_listen; n++)
		if (listen_on(&srv, &cfg->smtps_listen[n], 1, err, sizeof(err)) == -1)
			fatal("event=start_failed error=%s", log_quote(q, sizeof(q), err));
	if (cfg->has_admin_listen && admin_start(&srv, err, sizeof(err)) == -1)
		fatal("event=start_failed error=%s", log_quote(q, sizeof(q), err));
	err[0] = '\0';
	srv.inbound = inbound_start(&srv, err, sizeof(err));
	if (srv.inbound == NULL && err[0])
		fatal("event=start_failed error=%s", log_quote(q, sizeof(q), err));
	smtpd_drop_privileges(cfg);
	if (cfg->delivery_enabled)
		child_start(&srv);
	/* DNS checks of every domain, on a thread of their own. */
	if (verify_thread_start(cfg) == -1)
		fatal("event=start_failed error=\"cannot start the DNS verification thread\"");
	srv.ev_sigterm = evsignal_new(srv.base, SIGTERM, on_stop_signal, &srv);
	srv.ev_sigint = evsignal_new(srv.base, SIGINT, on_stop_signal, &srv);
	srv.ev_sighup = evsignal_new(srv.base, SIGHUP, on_hup, &srv);
	event_add(srv.ev_sigterm, NULL);
	event_add(srv.ev_sigint, NULL);
	event_add(srv.ev_sighup, NULL);
	srv.ev_ready = event_new(srv.base, -1, EV_PERSIST, ready_check, &srv);
	{
		struct timeval tv = {0, 20000};
		event_add(srv.ev_ready, &tv);
	}

	event_base_dispatch(srv.base);

	log_info("event=stopped sessions=%d", srv.nsessions);
	/* Sessions still open at the deadline go first, so no callback of
	 * the signer, spool or store can reach them afterwards. */
	for (i = 0; i < srv.nslots; i++)
		if (srv.slots[i])
			session_abort(srv.slots[i]);
	stop_listening(&srv);
	inbound_free(srv.inbound);
	verify_thread_stop();
	child_finish(&srv, STOP_GRACE);
	admin_stop(&srv);
	signer_free(srv.signer);
	spool_close(srv.spool);
	store_close(srv.store);
	event_free(srv.ev_ready);
	event_free(srv.ev_client_sweep);
	event_free(srv.ev_sigterm);
	event_free(srv.ev_sigint);
	event_free(srv.ev_sighup);
	if (srv.ev_stop_timer)
		event_free(srv.ev_stop_timer);
	if (srv.ev_accept_resume)
		event_free(srv.ev_accept_resume);
	hmap_free(srv.clients, free);
	tenantlim_free(srv.tenantlim);
	free(srv.slots);
	free(srv.free_slots);
	SSL_CTX_free(srv.tls);
	event_base_free(srv.base);
	return code;
}
