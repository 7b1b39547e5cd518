/*
 * deliver: the delivery process ("sendgate --delivery-only"). It owns its
 * event loop, a database connection (pools, return-path state, events,
 * suppressions), a DNS resolver and the scheduler, and runs until SIGTERM
 * or SIGINT, after which in-flight transactions get a few seconds to end
 * and everything not delivered stays in the spool for the next start.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "dns/dns.h"
#include "queue/deliver_int.h"
#include "tenants/tenants.h"

#define STOP_GRACE 5  /* seconds in-flight transactions get at shutdown */
#define READY_WAIT 30 /* seconds between complaints while the database is away */

struct delivery {
	struct event_base *base;
	struct config *cfg;
	struct store *st;
	struct dsched *sched;
	struct event *ev_term, *ev_int, *ev_ready, *ev_exit;
	int started, stopping, waited;
};

static void exit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct delivery *d = arg;

	event_base_loopexit(d->base, NULL);
}

/* Everything in flight is over: give the event batch a moment, then leave. */
static void stopped(void *arg)
{
	struct delivery *d = arg;
	struct timeval tv = {0, 500000};

	d->ev_exit = evtimer_new(d->base, exit_cb, d);
	evtimer_add(d->ev_exit, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct delivery *d = arg;

	if (d->stopping)
		return;
	d->stopping = 1;
	log_info("event=delivery_signal signal=%d", (int)sig);
	if (d->ev_ready)
		event_del(d->ev_ready);
	if (d->started)
		sched_stop(d->sched, STOP_GRACE, stopped, d);
	else
		stopped(d);
}

/* Starts the scheduler once the database caches (pools) are loaded. */
static void ready_cb(evutil_socket_t fd, short what, void *arg)
{
	struct delivery *d = arg;

	if (d->started || d->stopping)
		return;
	/*
	 * Without the pools a tenant's mail would leave from the wrong
	 * addresses: nothing goes out until the database has answered once.
	 */
	if (!store_ready(d->st)) {
		if (++d->waited % (READY_WAIT * 10) == 0)
			log_warn("event=delivery_waiting_for_database seconds=%d", d->waited / 10);
		return;
	}
	event_del(d->ev_ready);
	d->started = 1;
	sched_start(d->sched);
	log_info("event=delivery_ready spool=%s port=%d relay=%s", d->cfg->spool_dir,
	         d->cfg->delivery_port,
	         d->cfg->delivery_relay && d->cfg->delivery_relay[0] ? d->cfg->delivery_relay
	                                                             : "-");
}

/* A client context for opportunistic TLS: no verification (RFC 7435). */
static SSL_CTX *client_tls(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL)
		return NULL;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	return ctx;
}

/*
 * One delivery process per spool: two would deliver the same messages.
 * Holds DIR/delivery.lock (flock) for the life of the process; the fd, or
 * -1 when another process has it (or it cannot be opened).
 */
static int delivery_lock(const char *dir)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/delivery.lock", dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd == -1) {
		log_err("event=delivery_failed error=\"%s: %s\"", path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
		log_err("event=delivery_failed error=\"another delivery process holds %s\"", path);
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Acceptance first ([delivery] cpu_priority). low (the default): nice 10,
 * so a client waiting for its 250 comes first but delivery always gets a
 * share; background: SCHED_IDLE, only CPU time nothing else wants (delivery
 * nearly stops under a load that keeps every core busy, and the loop's own
 * listing of queue/ could then hold that directory's lock while starved);
 * normal: as the daemon. Set on the loop thread once the status writer
 * thread exists: that thread keeps the normal priority, because it renames
 * and deletes in the spool's directories and, preempted while holding a
 * directory's lock, would make the daemon's commits wait.
 */
static void delivery_priority(const struct config *cfg)
{
	const char *p = cfg->delivery_cpu_priority;
	int rc = 0;

	if (strcmp(p, "background") == 0) {
		struct sched_param sp = {0};
		rc = sched_setscheduler(0, SCHED_IDLE, &sp);
	} else if (strcmp(p, "low") == 0) {
		rc = setpriority(PRIO_PROCESS, (id_t)gettid(), 10);
	}
	if (rc == -1)
		log_warn("event=delivery_priority_failed cpu_priority=%s error=\"%s\"", p,
		         strerror(errno));
	else
		log_info("event=delivery_priority cpu_priority=%s", p);
}

int delivery_run(struct config *cfg)
{
	struct delivery d;
	struct dns_config dc;
	struct dns_resolver *dns;
	struct timeval tenth = {0, 100000};
	char err[512];
	SSL_CTX *ssl;
	int rc = 1, lockfd;

	memset(&d, 0, sizeof(d));
	d.cfg = cfg;
	signal(SIGPIPE, SIG_IGN);
	/* The daemon's child: end with it, even when it is killed outright. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	lockfd = delivery_lock(cfg->spool_dir);
	if (lockfd == -1)
		return 1;
	d.base = event_base_new();
	if (d.base == NULL) {
		log_err("event=delivery_failed error=\"event_base_new\"");
		close(lockfd);
		return 1;
	}
	memset(&dc, 0, sizeof(dc));
	dc.servers = cfg->dns_servers;
	dc.timeout_ms = cfg->dns_timeout_ms;
	dc.tries = cfg->dns_tries;
	dns = dns_resolver_new(d.base, &dc, err, sizeof(err));
	if (dns == NULL) {
		log_err("event=delivery_failed error=\"dns: %s\"", err);
		event_base_free(d.base);
		close(lockfd);
		return 1;
	}
	ssl = client_tls();
	if (ssl == NULL)
		log_warn("event=delivery_tls_unavailable");
	d.st = store_open(d.base, cfg->database_url ? cfg->database_url : "", STORE_DELIVERY);
	d.sched = sched_new(d.base, cfg, d.st, dns, ssl, err, sizeof(err));
	if (d.sched == NULL) {
		log_err("event=delivery_failed error=\"%s\"", err);
		goto out;
	}
	delivery_priority(cfg);
	d.ev_term = evsignal_new(d.base, SIGTERM, on_signal, &d);
	d.ev_int = evsignal_new(d.base, SIGINT, on_signal, &d);
	event_add(d.ev_term, NULL);
	event_add(d.ev_int, NULL);
	d.ev_ready = event_new(d.base, -1, EV_PERSIST, ready_cb, &d);
	event_add(d.ev_ready, &tenth);
	event_base_dispatch(d.base);
	log_info("event=delivery_exit");
	rc = 0;
out:
	sched_free(d.sched);
	if (d.ev_ready)
		event_free(d.ev_ready);
	if (d.ev_exit)
		event_free(d.ev_exit);
	if (d.ev_term)
		event_free(d.ev_term);
	if (d.ev_int)
		event_free(d.ev_int);
	store_close(d.st);
	dns_resolver_free(dns);
	if (ssl)
		SSL_CTX_free(ssl);
	event_base_free(d.base);
	close(lockfd);
	return rc;
}
