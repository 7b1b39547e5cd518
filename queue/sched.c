/*
 * sched: the delivery scheduler. Every queued message is indexed in memory
 * with the state of each recipient; its pending recipients are grouped by
 * destination domain into work items, and items wait in queues keyed by
 * (tenant, destination domain), so a slow destination or one tenant's
 * backlog holds up only its own queue. Connections are started per queue
 * within the per-destination and per-source limits; outcomes come back per
 * recipient, become events, suppressions, retries with backoff, and
 * status records appended to the queue file by the writer thread.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "dns/dns.h"
#include "queue/deliver_int.h"
#include "queue/spool_int.h"
#include "tenants/tenants.h"

#define RESCAN_SECONDS 30
#define SCAN_SLICE 256 /* queue files read per loop turn while loading a scan */
#define POOL_MAX 64
#define PACE_WINDOW_MS 250 /* acceptance_first looks at the machine this often */

struct dq;

/* One queued message. */
struct dmsg {
	char id[QUEUE_ID_LEN + 1];
	int64_t tenant_id;
	char *sender;
	time_t received;
	int flags;
	size_t nrcpts;
	char **rcpts;
	struct queue_rcpt_status *st;
	unsigned char digest[32];
	size_t nfinal;
	int nitems;   /* items alive */
	int removing; /* every recipient final: unlink queued */
};

/* Some recipients of one message for one destination domain. */
struct ditem {
	struct dmsg *m;
	struct dq *q;
	size_t *idx;
	size_t n;
	time_t due;
	uint64_t ready_since; /* when it last joined a ready list (now_usec) */
	struct ditem *prev, *next;
	int where; /* 0: in a connection, 1: ready, 2: waiting */
};

/* Per destination domain: connections and the rate window. */
struct ddest {
	int nconn;
	time_t win_start;
	int win_count;
};

/* A queue: one tenant's items for one destination domain. */
struct dq {
	int64_t tenant_id;
	char *domain;
	struct ddest *dest;
	struct ditem *ready, *ready_tail;
	size_t nready;
	struct ditem *wait;
	size_t nwait;
	int nconn, nstarting;
	struct dq *next_all;
};

/* A connection (or its route lookup) owned by the scheduler. */
struct dcx {
	struct dsched *s;
	struct dq *q;
	struct dconn *c;
	char src4[64], src6[64], helo4[256], helo6[256];
	int took;         /* has asked for work */
	int in_new;       /* inside dconn_new */
	int closed_early; /* the connection closed before dconn_new returned */
	struct dcx *prev, *next;
};

struct dsched {
	struct event_base *base;
	struct config *cfg;
	struct store *st;
	struct dns_resolver *dns;
	struct dclient_env env;
	struct retry_policy retry;
	char *dir;
	int queuefd;
	struct hmap *msgs;  /* id -> dmsg */
	struct hmap *bad;   /* ids of unreadable files (logged once) */
	struct hmap *qmap;  /* "tenant domain" -> dq */
	struct hmap *dests; /* domain -> ddest */
	struct hmap *srcs;  /* source address -> connections (hmap_counter) */
	struct dq *all;
	struct dq *all_tail;
	struct dq *rr; /* the queue served last (round robin) */
	struct dcx *cxs;
	size_t ncx;
	struct status_writer *sw;
	struct event *ev_tick, *ev_kick, *ev_rescan, *ev_inotify, *ev_grace, *ev_load, *ev_pace;
	char (*scan)[QUEUE_ID_LEN + 1]; /* ids of the scan being loaded */
	size_t nscan, scan_pos, scan_cap;
	int infd;
	struct pace pace;  /* acceptance first: holding while acceptance is busy */
	unsigned arrivals; /* messages committed since the last pace window */
	uint64_t hold_start; /* when the current hold began (now_usec) */
	uint64_t holds;      /* holds begun */
	char metrics_last[QUEUE_METRICS_MAX]; /* the metrics file as last written */
	size_t metrics_len;
	time_t metrics_at;
	int metrics_failed; /* logged once until a write succeeds */
	int stopping;
	void (*stop_done)(void *);
	void *stop_arg;
	uint64_t delivered, bounced, deferred;
};

static void sched_kick(struct dsched *s);
static int dq_held(struct dsched *s, struct dq *q);
static const struct dclient_ops sched_ops;

static double rnd01(void)
{
	uint32_t r;

	random_bytes(&r, sizeof(r));
	return (double)r / 4294967296.0;
}

/* ---- lists ------------------------------------------------------------ */

static void item_unlink(struct ditem *it)
{
	struct dq *q = it->q;

	if (it->where == 1) {
		if (it->prev)
			it->prev->next = it->next;
		else
			q->ready = it->next;
		if (it->next)
			it->next->prev = it->prev;
		else
			q->ready_tail = it->prev;
		q->nready--;
	} else if (it->where == 2) {
		if (it->prev)
			it->prev->next = it->next;
		else
			q->wait = it->next;
		if (it->next)
			it->next->prev = it->prev;
		q->nwait--;
	}
	it->prev = it->next = NULL;
	it->where = 0;
}

/* Puts it in its queue: ready when due, else waiting. */
static void item_queue(struct dsched *s, struct ditem *it, time_t now)
{
	struct dq *q = it->q;

	if (it->due <= now) {
		it->where = 1;
		it->ready_since = now_usec();
		it->next = NULL;
		it->prev = q->ready_tail;
		if (q->ready_tail)
			q->ready_tail->next = it;
		else
			q->ready = it;
		q->ready_tail = it;
		q->nready++;
		sched_kick(s);
	} else {
		it->where = 2;
		it->prev = NULL;
		it->next = q->wait;
		if (q->wait)
			q->wait->prev = it;
		q->wait = it;
		q->nwait++;
	}
}

static struct dq *dq_get(struct dsched *s, int64_t tenant_id, const char *domain)
{
	char key[400];
	struct dq *q;

	snprintf(key, sizeof(key), "%lld %s", (long long)tenant_id, domain);
	q = hmap_get(s->qmap, key);
	if (q != NULL)
		return q;
	q = xcalloc(1, sizeof(*q));
	q->tenant_id = tenant_id;
	q->domain = xstrdup(domain);
	q->dest = hmap_get(s->dests, domain);
	if (q->dest == NULL) {
		q->dest = xcalloc(1, sizeof(*q->dest));
		hmap_put(s->dests, domain, q->dest);
	}
	hmap_put(s->qmap, key, q);
	if (s->all_tail)
		s->all_tail->next_all = q;
	else
		s->all = q;
	s->all_tail = q;
	return q;
}

static void msg_free(struct dmsg *m)
{
	size_t i;

	for (i = 0; i < m->nrcpts; i++)
		free(m->rcpts[i]);
	free(m->rcpts);
	free(m->st);
	free(m->sender);
	free(m);
}

static void item_free(struct ditem *it)
{
	it->m->nitems--;
	free(it->idx);
	free(it);
}

/* ---- loading the spool ------------------------------------------------ */

static void status_removed(void *arg, const char *id)
{
	struct dsched *s = arg;
	struct dmsg *m = hmap_get(s->msgs, id);

	if (m != NULL && m->removing && m->nitems == 0) {
		hmap_del(s->msgs, id);
		msg_free(m);
	}
}

/* Adds queue file id to the index (no-op when known). */
static void sched_load(struct dsched *s, const char *id)
{
	struct queue_msg qm;
	struct queue_rcpt_status *st;
	struct qfile_info info;
	size_t valid, flen, i, j;
	char err[256], q[300];
	struct dmsg *m;
	time_t now = time(NULL);
	char *done;
	int fd, rc;

	if (hmap_get(s->msgs, id) != NULL || hmap_get(s->bad, id) != NULL)
		return;
	/* Checked in bounded pieces: the body is hashed, never held. */
	fd = openat(s->queuefd, id, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1) {
		snprintf(err, sizeof(err), "open: %s", strerror(errno));
		rc = -1;
	} else {
		rc = dq_scan_file(fd, &qm, 0, &st, &info, err, sizeof(err));
		close(fd);
	}
	if (rc == -1) {
		if (strstr(err, "No such file") != NULL)
			return; /* gone meanwhile */
		log_warn("event=delivery_unreadable id=%s reason=%s", id,
		         log_quote(q, sizeof(q), err));
		hmap_put(s->bad, id, (void *)1);
		return;
	}
	valid = info.valid_len;
	flen = info.file_len;
	m = xcalloc(1, sizeof(*m));
	memcpy(m->digest, info.digest, sizeof(m->digest));
	snprintf(m->id, sizeof(m->id), "%s", id);
	m->tenant_id = qm.env.tenant_id;
	m->sender = qm.env.sender ? qm.env.sender : xstrdup("");
	qm.env.sender = NULL;
	m->received = qm.env.received;
	m->flags = qm.env.flags;
	m->nrcpts = qm.env.nrcpts;
	m->rcpts = qm.env.rcpts;
	qm.env.rcpts = NULL;
	qm.env.nrcpts = 0;
	m->st = st;
	queue_msg_free(&qm);
	hmap_put(s->msgs, id, m);
	if (valid < flen) {
		log_warn("event=delivery_status_torn id=%s intact=%zu size=%zu", id, valid, flen);
		status_writer_push(s->sw, id, NULL, 0, (long long)valid);
	}
	for (i = 0; i < m->nrcpts; i++)
		if (queue_rcpt_state_final(m->st[i].state))
			m->nfinal++;
	if (m->nfinal == m->nrcpts) {
		/* Every result was on disk but the file was not removed yet. */
		m->removing = 1;
		status_writer_push(s->sw, id, NULL, 1, -1);
		return;
	}
	/* Group the open recipients by domain, one item per domain. */
	done = xcalloc(m->nrcpts, 1);
	for (i = 0; i < m->nrcpts; i++) {
		struct ditem *it;
		char dom[256];

		if (done[i] || queue_rcpt_state_final(m->st[i].state))
			continue;
		snprintf(dom, sizeof(dom), "%s", addr_domain(m->rcpts[i]));
		str_lower(dom);
		it = xcalloc(1, sizeof(*it));
		it->m = m;
		it->idx = xcalloc(m->nrcpts, sizeof(size_t));
		it->due = 0;
		for (j = i; j < m->nrcpts; j++) {
			char d2[256];
			if (done[j] || queue_rcpt_state_final(m->st[j].state))
				continue;
			snprintf(d2, sizeof(d2), "%s", addr_domain(m->rcpts[j]));
			if (strcasecmp(d2, dom) != 0)
				continue;
			done[j] = 1;
			it->idx[it->n++] = j;
			if (m->st[j].state == QRCPT_DEFERRED &&
			    (it->due == 0 || m->st[j].next < it->due))
				it->due = m->st[j].next;
		}
		it->q = dq_get(s, m->tenant_id, dom);
		m->nitems++;
		item_queue(s, it, now);
	}
	free(done);
}

/* Collects the ids of a scan not loaded yet (the index is checked first). */
static void scan_path(void *arg, const char *path)
{
	struct dsched *s = arg;
	const char *slash = strrchr(path, '/');
	const char *id = slash ? slash + 1 : path;

	if (hmap_get(s->msgs, id) != NULL || hmap_get(s->bad, id) != NULL)
		return;
	if (s->nscan == s->scan_cap) {
		s->scan_cap = s->scan_cap ? s->scan_cap * 2 : 1024;
		s->scan = xrealloc(s->scan, s->scan_cap * sizeof(*s->scan));
	}
	snprintf(s->scan[s->nscan++], QUEUE_ID_LEN + 1, "%s", id);
}

/*
 * Loads the next slice of a scan, then yields to the loop: a big spool is
 * read while the first messages already go out.
 */
static void load_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dsched *s = arg;
	size_t end = s->scan_pos + SCAN_SLICE;

	if (s->stopping)
		return;
	if (end > s->nscan)
		end = s->nscan;
	for (; s->scan_pos < end; s->scan_pos++)
		sched_load(s, s->scan[s->scan_pos]);
	if (s->scan_pos < s->nscan) {
		/* A zero timer, not event_active: I/O gets its turn first. */
		struct timeval zero = {0, 0};
		evtimer_add(s->ev_load, &zero);
		return;
	}
	if (s->nscan > 0)
		log_info("event=delivery_scan_loaded messages=%zu indexed=%zu", s->nscan,
		         hmap_count(s->msgs));
	s->nscan = s->scan_pos = 0;
}

static void rescan_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dsched *s = arg;

	if (s->stopping || s->scan_pos < s->nscan)
		return; /* a scan is still being loaded */
	s->nscan = s->scan_pos = 0;
	if (queue_list_files(s->dir, scan_path, s) == -1)
		log_warn("event=delivery_scan_failed dir=%s/queue error=\"%s\"", s->dir,
		         strerror(errno));
	if (s->nscan > 0) {
		struct timeval zero = {0, 0};
		evtimer_add(s->ev_load, &zero);
	}
}

static void inotify_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dsched *s = arg;
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));

	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf)), off = 0;
		if (n <= 0)
			break;
		while (off < n) {
			struct inotify_event *e = (struct inotify_event *)(buf + off);
			if (e->mask & IN_Q_OVERFLOW)
				rescan_cb(-1, 0, s);
			else if (e->len > 0 && queue_id_valid(e->name) && !s->stopping) {
				s->arrivals++;
				sched_load(s, e->name);
			}
			off += (ssize_t)sizeof(*e) + e->len;
		}
	}
}

/* ---- outcomes --------------------------------------------------------- */

/* Queues the status of the changed recipients of m (or its removal). */
static void msg_persist(struct dsched *s, struct dmsg *m, const size_t *idx, size_t n)
{
	struct buf seg;

	if (m->nfinal == m->nrcpts) {
		m->removing = 1;
		status_writer_push(s->sw, m->id, NULL, 1, -1);
		return;
	}
	if (n == 0)
		return;
	buf_init(&seg, QREC_MAX_LEN);
	queue_status_segment(&seg, m->digest, idx, n, m->st);
	status_writer_push(s->sw, m->id, &seg, 0, -1);
}

static void emit_event(struct dsched *s, const char *type, struct dmsg *m, size_t i,
                       const struct dreply *r, const struct dconn_info *info, time_t next)
{
	json_t *j;
	char reply[700];

	if (r->code > 0)
		snprintf(reply, sizeof(reply), "%d %s", r->code, r->text);
	else
		snprintf(reply, sizeof(reply), "%s", r->text);
	j = json_pack(
	    "{s:s, s:s, s:s, s:s, s:b, s:s, s:i}", "recipient", m->rcpts[i], "mx",
	    info && info->mx ? info->mx : "", "mx_address", info && info->addr ? info->addr : "",
	    "source_address", info && info->source ? info->source : "", "tls",
	    info && info->tls && info->tls[0], "reply", reply, "attempt", m->st[i].attempts);
	if (j == NULL)
		return;
	if (info && info->tls && info->tls[0])
		json_object_set_new(j, "tls_version", json_string(info->tls));
	if (r->enh[0])
		json_object_set_new(j, "enhanced_code", json_string(r->enh));
	/* The recipient's place in the message, as in a VERP sender: a
	 * bounce reported later is matched to this delivery by it. */
	json_object_set_new(j, "index", json_integer((json_int_t)i));
	/* With the VERP sender it came from, the delivery a report names is
	 * this one only when the report came back to that very address. */
	if (info && info->mail_from)
		json_object_set_new(j, "envelope_sender", json_string(info->mail_from));
	if (next > 0)
		json_object_set_new(j, "next_attempt", json_integer((json_int_t)next));
	if (s->st != NULL)
		store_event(s->st, type, m->tenant_id, m->id, j);
	else
		json_decref(j);
}

/* A hard bounce says the address itself is bad: suppress it. */
static int bounce_is_hard(const struct dreply *r)
{
	if (r->stage == DSTAGE_LOCAL)
		return strncmp(r->enh, "5.1.", 4) == 0;
	if (r->enh[0])
		return strncmp(r->enh, "5.1.", 4) == 0;
	return r->stage == DSTAGE_RCPT && (r->code == 550 || r->code == 551 || r->code == 553);
}

enum { OUT_DELIVERED, OUT_DEFERRED, OUT_BOUNCED };

/* Records the outcome of one attempt for recipient i of m; returns OUT_*. */
static int rcpt_outcome(struct dsched *s, struct dmsg *m, size_t i, const struct dreply *r,
                        const struct dconn_info *info, time_t now)
{
	struct queue_rcpt_status *st = &m->st[i];
	char q1[300], q2[700];
	int cls = r->code / 100;

	st->attempts++;
	st->last = now;
	if (cls == 2) {
		st->state = QRCPT_DELIVERED;
		m->nfinal++;
		s->delivered++;
		emit_event(s, "message.delivered", m, i, r, info, 0);
		return OUT_DELIVERED;
	}
	if (cls == 5) {
		st->state = QRCPT_BOUNCED;
		m->nfinal++;
		s->bounced++;
		emit_event(s, "message.bounced", m, i, r, info, 0);
		log_info("event=delivery_bounced id=%s rcpt=%s mx=%s reply=%s", m->id,
		         log_quote(q1, sizeof(q1), m->rcpts[i]), info && info->mx ? info->mx : "",
		         log_quote(q2, sizeof(q2), r->text));
		if (bounce_is_hard(r) && s->st != NULL) {
			char addr[400], reason[600];
			snprintf(addr, sizeof(addr), "%s", m->rcpts[i]);
			str_lower(addr);
			snprintf(reason, sizeof(reason), "%d %s", r->code, r->text);
			store_suppress(s->st, m->tenant_id, addr, reason, m->id);
		}
		return OUT_BOUNCED;
	}
	/* 4xx, timeouts, connection failures. */
	{
		time_t next = retry_next(&s->retry, m->received, now, st->attempts,
		                         reply_retry_hint(r->text), rnd01());
		if (next == 0) {
			st->state = QRCPT_EXPIRED;
			m->nfinal++;
			s->bounced++;
			emit_event(s, "message.expired", m, i, r, info, 0);
			log_info("event=delivery_expired id=%s rcpt=%s attempts=%d last_reply=%s",
			         m->id, log_quote(q1, sizeof(q1), m->rcpts[i]), st->attempts,
			         log_quote(q2, sizeof(q2), r->text));
			return OUT_BOUNCED;
		}
		st->state = QRCPT_DEFERRED;
		st->next = next;
		s->deferred++;
		emit_event(s, "message.deferred", m, i, r, info, next);
		return OUT_DEFERRED;
	}
}

/*
 * Applies replies (one per recipient of it, or one reply for all when
 * one_for_all) and re-queues what is deferred; frees it when nothing is.
 */
static void item_settle(struct dsched *s, struct ditem *it, const struct dreply *per_rcpt,
                        const struct dreply *one_for_all, const struct dconn_info *info)
{
	struct dmsg *m = it->m;
	time_t now = time(NULL), due = 0;
	size_t k, keep = 0;
	size_t *changed = xcalloc(it->n ? it->n : 1, sizeof(size_t));

	for (k = 0; k < it->n; k++) {
		size_t i = it->idx[k];
		const struct dreply *r = one_for_all ? one_for_all : &per_rcpt[k];

		changed[k] = i;
		if (rcpt_outcome(s, m, i, r, info, now) == OUT_DEFERRED) {
			if (due == 0 || m->st[i].next < due)
				due = m->st[i].next;
			it->idx[keep++] = i;
		}
	}
	msg_persist(s, m, changed, it->n);
	free(changed);
	it->n = keep;
	if (keep == 0) {
		item_free(it);
		if (m->removing && m->nitems == 0) {
			/* Freed when the writer has removed the file. */
		}
		return;
	}
	it->due = due;
	item_queue(s, it, now);
}

/* Applies one outcome to every ready item of q (a route or connection failure). */
static void dq_fail_ready(struct dsched *s, struct dq *q, const struct dreply *why,
                          const struct dconn_info *info)
{
	struct ditem *list = q->ready, *it;
	char qt[700];

	/* Held meanwhile (suspended while the connection was on its way):
	 * nothing was attempted, nothing is settled. */
	if (list == NULL || dq_held(s, q))
		return;
	log_info("event=delivery_destination_failed tenant_id=%lld domain=%s items=%zu reply=%s",
	         (long long)q->tenant_id, q->domain, q->nready,
	         log_quote(qt, sizeof(qt), why->text));
	q->ready = q->ready_tail = NULL;
	q->nready = 0;
	while ((it = list) != NULL) {
		list = it->next;
		it->prev = it->next = NULL;
		it->where = 0;
		item_settle(s, it, NULL, why, info);
	}
}

/* ---- connections ------------------------------------------------------ */

static void src_add(struct dsched *s, const char *src, int d)
{
	if (src[0] != '\0')
		hmap_counter_add(s->srcs, src, d);
}

static void cx_free(struct dcx *x)
{
	struct dsched *s = x->s;

	if (x->prev)
		x->prev->next = x->next;
	else
		s->cxs = x->next;
	if (x->next)
		x->next->prev = x->prev;
	s->ncx--;
	x->q->nconn--;
	x->q->dest->nconn--;
	if (!x->took)
		x->q->nstarting--;
	src_add(s, x->src4, -1);
	src_add(s, x->src6, -1);
	free(x);
	if (s->stopping && s->ncx == 0 && s->stop_done != NULL) {
		void (*done)(void *) = s->stop_done;
		s->stop_done = NULL;
		status_writer_free(s->sw);
		s->sw = NULL;
		done(s->stop_arg);
		return;
	}
	sched_kick(s);
}

static void route_cb(void *arg, uint64_t cookie, int status, const char *why, struct droute *route)
{
	struct dcx *x = arg;
	struct dsched *s = x->s;
	struct dconn *c;

	if (s->stopping) {
		droute_free(route);
		cx_free(x);
		return;
	}
	if (status != ROUTE_OK) {
		struct dreply r;
		struct dconn_info info = {x->q->domain, "", "", "", NULL};

		memset(&r, 0, sizeof(r));
		r.code = status == ROUTE_PERMFAIL ? 550 : 451;
		r.stage = DSTAGE_LOCAL;
		snprintf(r.text, sizeof(r.text), "%s", why);
		reply_enhanced(r.code, r.text, r.enh, sizeof(r.enh));
		droute_free(route);
		dq_fail_ready(s, x->q, &r, &info);
		cx_free(x);
		return;
	}
	/* dconn_new may fail at once (no usable address): closed runs inside. */
	x->in_new = 1;
	c = dconn_new(&s->env, route, x->src4, x->helo4, x->src6, x->helo6, &sched_ops, x);
	x->in_new = 0;
	if (x->closed_early) {
		cx_free(x);
		return;
	}
	x->c = c;
}

/*
 * Picks the source addresses (one per family) from the tenant's pool,
 * avoiding addresses at their connection limit. 0, or -1 when the pool's
 * addresses are all busy.
 */
static int cx_pick_sources(struct dsched *s, struct dcx *x)
{
	struct pool_address pool[POOL_MAX];
	char name[128];
	int n = s->st
	            ? store_tenant_pool(s->st, x->q->tenant_id, pool, POOL_MAX, name, sizeof(name))
	            : 0;
	int fam, try, have = 0, any = 0;

	if (n == 0)
		return 0; /* no pool: the system's address */
	for (fam = 0; fam < 2; fam++) {
		int family = fam == 0 ? AF_INET : AF_INET6;
		for (try = 0; try < 8; try++) {
			uint32_t r;
			int k;

			random_bytes(&r, sizeof(r));
			k = pool_pick(pool, n, family, r);
			if (k < 0)
				break;
			any = 1;
			if (hmap_counter(s->srcs, pool[k].address) >=
			    s->cfg->delivery_max_connections_per_source)
				continue;
			if (family == AF_INET) {
				snprintf(x->src4, sizeof(x->src4), "%s", pool[k].address);
				snprintf(x->helo4, sizeof(x->helo4), "%s", pool[k].helo);
			} else {
				snprintf(x->src6, sizeof(x->src6), "%s", pool[k].address);
				snprintf(x->helo6, sizeof(x->helo6), "%s", pool[k].helo);
			}
			have = 1;
			break;
		}
	}
	return have || !any ? 0 : -1;
}

static int cx_start(struct dsched *s, struct dq *q)
{
	struct dcx *x = xcalloc(1, sizeof(*x));

	x->s = s;
	x->q = q;
	if (cx_pick_sources(s, x) == -1) {
		free(x);
		return -1;
	}
	src_add(s, x->src4, 1);
	src_add(s, x->src6, 1);
	q->nconn++;
	q->nstarting++;
	q->dest->nconn++;
	x->next = s->cxs;
	if (s->cxs)
		s->cxs->prev = x;
	s->cxs = x;
	s->ncx++;
	if (s->cfg->delivery_relay && s->cfg->delivery_relay[0])
		mx_resolve_relay(s->dns, s->cfg->delivery_relay, route_cb, x, 0);
	else
		mx_resolve(s->dns, q->domain, s->cfg->delivery_port, route_cb, x, 0);
	return 0;
}

static int dest_rate_ok(struct dsched *s, struct ddest *d, time_t now)
{
	int mpm = s->cfg->delivery_messages_per_minute;

	if (mpm <= 0)
		return 1;
	if (now - d->win_start >= 60) {
		d->win_start = now;
		d->win_count = 0;
	}
	return d->win_count < mpm;
}

/*
 * 1 while q's tenant is suspended (sendgatectl tenant suspend): its mail
 * waits, ready, with no attempt made or counted, until it is resumed.
 */
static int dq_held(struct dsched *s, struct dq *q)
{
	const struct tenant_limits *lim = s->st ? store_tenant_limits(s->st, q->tenant_id) : NULL;

	return lim != NULL && lim->suspended;
}

/*
 * 1 while q's next item waits for acceptance to calm down ([delivery]
 * acceptance_first), which it does for at most acceptance_first_max_hold.
 */
static int dq_yields(struct dsched *s, struct dq *q)
{
	return s->pace.holding && q->ready != NULL &&
	       now_usec() - q->ready->ready_since <
	           (uint64_t)s->cfg->delivery_acceptance_first_max_hold * 1000000u;
}

/* 1 when q has work no connection is on its way for, within the limits. */
static int dq_wants_conn(struct dsched *s, struct dq *q, time_t now)
{
	return q->nready > (size_t)q->nstarting && !dq_held(s, q) && !dq_yields(s, q) &&
	       q->dest->nconn < s->cfg->delivery_max_connections_per_destination &&
	       dest_rate_ok(s, q->dest, now);
}

/*
 * Starts connections where work waits: rounds of at most one new
 * connection per queue, round robin from the queue after the last one
 * served, so tenants sending to one destination share its connection
 * limit instead of the biggest backlog taking every slot.
 */
static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dsched *s = arg;
	time_t now = time(NULL);
	int progress = 1;

	if (s->stopping || s->all == NULL)
		return;
	while (progress) {
		/* Start after the last queue served (queues join at the tail). */
		struct dq *start = s->rr && s->rr->next_all ? s->rr->next_all : s->all;
		struct dq *q = start;

		progress = 0;
		do {
			if (dq_wants_conn(s, q, now) && cx_start(s, q) == 0) {
				progress = 1;
				s->rr = q;
			}
			q = q->next_all ? q->next_all : s->all;
		} while (q != start);
	}
}

static void sched_kick(struct dsched *s)
{
	if (!s->stopping && s->ev_kick != NULL)
		event_active(s->ev_kick, EV_TIMEOUT, 0);
}

/* Makes every waiting item of message id due now ("sendgatectl queue retry"). */
static void sched_retry_now(struct dsched *s, const char *id)
{
	struct dmsg *m;
	struct dq *q;
	int n = 0;

	sched_load(s, id);
	m = hmap_get(s->msgs, id);
	if (m == NULL)
		return;
	for (q = s->all; q != NULL; q = q->next_all) {
		struct ditem *it, *nx;
		for (it = q->wait; it != NULL; it = nx) {
			nx = it->next;
			if (it->m != m)
				continue;
			item_unlink(it);
			it->due = 0;
			item_queue(s, it, time(NULL));
			n++;
		}
	}
	log_info("event=delivery_retry_requested id=%s items=%d", id, n);
}

/*
 * Acts on SPOOL/retry/ID files (made by sendgatectl queue retry) and
 * removes them. The folder is small and usually absent: a look each tick.
 */
static void retry_requests(struct dsched *s)
{
	char path[4096];
	struct dirent *de;
	DIR *d;

	snprintf(path, sizeof(path), "%s/retry", s->dir);
	d = opendir(path);
	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (!queue_id_valid(de->d_name))
			continue;
		sched_retry_now(s, de->d_name);
		if (unlinkat(dirfd(d), de->d_name, 0) == -1 && errno != ENOENT)
			log_warn("event=delivery_retry_unlink_failed id=%s error=\"%s\"",
			         de->d_name, strerror(errno));
	}
	closedir(d);
}

/*
 * SPOOL/delivery.metrics (QUEUE_METRICS_FILE), in the Prometheus text
 * format, for the daemon's GET /metrics (smtpd/admin.c): written whole and
 * renamed over the last one, never synced, when it changed (at most each
 * tick) or a minute passed; the daemon checks the pid on its first line.
 * A failure is logged once, until a write succeeds again.
 */
static void write_metrics(struct dsched *s)
{
	char text[QUEUE_METRICS_MAX], tmp[4096], path[4096];
	size_t ready = 0;
	struct dq *q;
	time_t now = time(NULL);
	int fd, n, ok;

	for (q = s->all; q != NULL; q = q->next_all)
		ready += q->nready;
	n = snprintf(
	    text, sizeof(text),
	    "# pid %d\n"
	    "# HELP sendgate_delivery_attempts_total Outcomes of delivery attempts, per recipient "
	    "(bounced includes expired), since the delivery process started.\n"
	    "# TYPE sendgate_delivery_attempts_total counter\n"
	    "sendgate_delivery_attempts_total{outcome=\"delivered\"} %llu\n"
	    "sendgate_delivery_attempts_total{outcome=\"bounced\"} %llu\n"
	    "sendgate_delivery_attempts_total{outcome=\"deferred\"} %llu\n"
	    "# HELP sendgate_delivery_messages Messages the delivery process has in hand.\n"
	    "# TYPE sendgate_delivery_messages gauge\n"
	    "sendgate_delivery_messages %zu\n"
	    "# HELP sendgate_delivery_ready Deliveries (recipients of one message for one "
	    "destination) due now and waiting for a connection.\n"
	    "# TYPE sendgate_delivery_ready gauge\n"
	    "sendgate_delivery_ready %zu\n"
	    "# HELP sendgate_delivery_connections Outgoing connections, and their route lookups.\n"
	    "# TYPE sendgate_delivery_connections gauge\n"
	    "sendgate_delivery_connections %zu\n"
	    "# HELP sendgate_delivery_holding 1 while delivery holds for acceptance "
	    "([delivery] acceptance_first).\n"
	    "# TYPE sendgate_delivery_holding gauge\n"
	    "sendgate_delivery_holding %d\n"
	    "# HELP sendgate_delivery_holds_total Holds for acceptance begun.\n"
	    "# TYPE sendgate_delivery_holds_total counter\n"
	    "sendgate_delivery_holds_total %llu\n",
	    (int)getpid(), (unsigned long long)s->delivered, (unsigned long long)s->bounced,
	    (unsigned long long)s->deferred, hmap_count(s->msgs), ready, s->ncx, s->pace.holding,
	    (unsigned long long)s->holds);
	if (n <= 0 || (size_t)n >= sizeof(text))
		return;
	if (s->metrics_len == (size_t)n && memcmp(s->metrics_last, text, (size_t)n) == 0 &&
	    now - s->metrics_at < QUEUE_METRICS_HEARTBEAT)
		return;
	snprintf(tmp, sizeof(tmp), "%s/" QUEUE_METRICS_FILE ".tmp", s->dir);
	snprintf(path, sizeof(path), "%s/" QUEUE_METRICS_FILE, s->dir);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640);
	ok = fd != -1 && write(fd, text, (size_t)n) == n;
	if (fd != -1 && close(fd) == -1)
		ok = 0;
	if (ok && rename(tmp, path) == -1)
		ok = 0;
	if (!ok) {
		if (!s->metrics_failed)
			log_warn("event=delivery_metrics_failed path=%s error=\"%s\"", path,
			         strerror(errno));
		s->metrics_failed = 1;
		if (fd != -1)
			unlink(tmp);
		return;
	}
	s->metrics_failed = 0;
	memcpy(s->metrics_last, text, (size_t)n);
	s->metrics_len = (size_t)n;
	s->metrics_at = now;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dsched *s = arg;
	time_t now = time(NULL);
	struct dq *q;

	retry_requests(s);
	write_metrics(s);

	for (q = s->all; q != NULL; q = q->next_all) {
		struct ditem *it = q->wait, *nx;
		for (; it != NULL; it = nx) {
			nx = it->next;
			if (it->due <= now) {
				item_unlink(it);
				item_queue(s, it, now);
			}
		}
	}
	sched_kick(s);
}

/*
 * A pace window ([delivery] acceptance_first): whether mail arrived and the
 * CPUs were nearly full decides if delivery holds for the next one.
 */
static void pace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dsched *s = arg;
	int was = s->pace.holding;
	unsigned arrivals = s->arrivals;

	s->arrivals = 0;
	if (pace_sample(&s->pace, arrivals) == was)
		return;
	if (!was) {
		s->hold_start = now_usec();
		s->holds++;
		log_info("event=delivery_yields_to_acceptance arrivals_per_s=%u idle_pct=%d "
		         "in_flight=%zu",
		         arrivals * (1000 / PACE_WINDOW_MS), s->pace.last_free_pct, s->ncx);
		return;
	}
	log_info("event=delivery_resumed held_ms=%llu idle_pct=%d",
	         (unsigned long long)((now_usec() - s->hold_start) / 1000), s->pace.last_free_pct);
	sched_kick(s);
}

/* ---- the client's callbacks ------------------------------------------ */

static struct dtxn *ops_next(void *arg, struct dconn *c)
{
	struct dcx *x = arg;
	struct dsched *s = x->s;
	struct dq *q = x->q;
	time_t now = time(NULL);

	if (!x->took) {
		x->took = 1;
		q->nstarting--;
	}
	while (!s->stopping && q->ready != NULL && dest_rate_ok(s, q->dest, now) && !dq_held(s, q) &&
	       !dq_yields(s, q)) {
		struct ditem *it = q->ready;
		struct dmsg *m = it->m;
		struct queue_msg qm;
		struct queue_rcpt_status *st = NULL;
		struct qfile_info info;
		struct dtxn *t;
		char err[256], host[300], qe[300];
		size_t k;
		int fd, rc = -1;

		item_unlink(it);
		/*
		 * The whole file is checked now (a damaged one is never half
		 * sent), keeping the header block; the body is read again while
		 * DATA goes (qbody_next), so memory does not grow with its size,
		 * unless the check read the file in one piece: then it goes out
		 * from that piece.
		 */
		fd = openat(s->queuefd, m->id, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd == -1)
			snprintf(err, sizeof(err), "open: %s", strerror(errno));
		else
			rc = dq_scan_file(fd, &qm, DQ_SCAN_HEADERS | DQ_SCAN_KEEP, &st, &info, err,
			                  sizeof(err));
		free(st);
		if (rc == -1) {
			if (fd != -1)
				close(fd);
			/* Deleted by an operator (or damaged): forget the item. */
			log_warn("event=delivery_message_gone id=%s reason=%s", m->id,
			         log_quote(qe, sizeof(qe), err));
			item_free(it);
			if (m->nitems == 0 && !m->removing) {
				hmap_del(s->msgs, m->id);
				msg_free(m);
			}
			continue;
		}
		t = xcalloc(1, sizeof(*t));
		t->owner = it;
		t->hdr = qm.message;
		buf_init(&qm.message, 0);
		queue_msg_free(&qm);
		t->body = qbody_open(fd, &info);
		t->size = t->hdr.len + info.body_len;
		t->flags = m->flags;
		t->nrcpts = it->n;
		t->rcpts = xcalloc(it->n, sizeof(char *));
		t->rcpt_reply = xcalloc(it->n, sizeof(struct dreply));
		for (k = 0; k < it->n; k++)
			t->rcpts[k] = m->rcpts[it->idx[k]];
		if (m->sender[0] == '\0') {
			t->mail_from = xstrdup("");
		} else {
			char vh[300], addr[400];
			char sdom[256];
			snprintf(sdom, sizeof(sdom), "%s", addr_domain(m->sender));
			str_lower(sdom);
			verp_host(m->sender, s->cfg->platform_return_path_prefix,
			          s->cfg->platform_bounce_domain,
			          s->st ? store_return_path_ok(s->st, sdom) : 0, vh, sizeof(vh));
			snprintf(host, sizeof(host), "%s", vh);
			if (verp_address(addr, sizeof(addr), m->id, (long)it->idx[0], it->n > 1,
			                 host, s->cfg->verp_key) == -1)
				snprintf(addr, sizeof(addr), "%s", m->sender);
			t->mail_from = xstrdup(addr);
		}
		q->dest->win_count++;
		return t;
	}
	return NULL;
}

static void txn_free(struct dtxn *t)
{
	buf_free(&t->hdr);
	qbody_close(t->body);
	free(t->rcpts);
	free(t->rcpt_reply);
	free(t->mail_from);
	free(t);
}

static void ops_done(void *arg, struct dconn *c, struct dtxn *t)
{
	struct dcx *x = arg;
	struct dsched *s = x->s;
	struct ditem *it = t->owner;
	struct dconn_info info;
	struct dreply *per = xcalloc(t->nrcpts ? t->nrcpts : 1, sizeof(*per));
	size_t k;

	dconn_info(c, &info);
	info.mail_from = t->mail_from;
	if (s->stopping && t->data_reply.stage == DSTAGE_CONNECT && t->data_reply.code == 451 &&
	    strstr(t->data_reply.text, "delivery stopped") != NULL) {
		/* Cut at shutdown: not an attempt; the item waits for the restart. */
		it->due = 0;
		item_queue(s, it, time(NULL));
		txn_free(t);
		free(per);
		return;
	}
	for (k = 0; k < t->nrcpts; k++) {
		per[k] = t->rcpt_reply[k];
		/* An accepted recipient's fate is the reply after the message. */
		if (per[k].code / 100 == 2)
			per[k] = t->data_reply;
		if (per[k].code == 0) {
			per[k].code = 451;
			snprintf(per[k].text, sizeof(per[k].text), "4.4.2 no reply");
		}
	}
	{
		char q1[600];
		log_info(
		    "event=delivery_attempt id=%s tenant_id=%lld domain=%s rcpts=%zu mx=%s "
		    "source=%s tls=%s reply=%s",
		    it->m->id, (long long)it->m->tenant_id, it->q->domain, t->nrcpts, info.mx,
		    info.source[0] ? info.source : "-", info.tls[0] ? info.tls : "no",
		    log_quote(q1, sizeof(q1),
		              t->data_reply.code ? t->data_reply.text : t->rcpt_reply[0].text));
	}
	item_settle(s, it, per, NULL, &info);
	free(per);
	txn_free(t);
}

static void ops_failed(void *arg, struct dconn *c, const struct dreply *why)
{
	struct dcx *x = arg;
	struct dconn_info info;

	if (x->s->stopping)
		return;
	dconn_info(c, &info);
	dq_fail_ready(x->s, x->q, why, &info);
}

static void ops_closed(void *arg, struct dconn *c)
{
	struct dcx *x = arg;

	x->c = NULL;
	if (x->in_new) {
		x->closed_early = 1; /* route_cb frees x once dconn_new returns */
		return;
	}
	cx_free(x);
}

static const struct dclient_ops sched_ops = {ops_next, ops_done, ops_failed, ops_closed};

/* ---- life cycle -------------------------------------------------------- */

struct dsched *sched_new(struct event_base *base, struct config *cfg, struct store *st,
                         struct dns_resolver *dns, SSL_CTX *ssl, char *err, size_t errlen)
{
	struct dsched *s = xcalloc(1, sizeof(*s));
	char path[4096];

	s->base = base;
	s->cfg = cfg;
	s->st = st;
	s->dns = dns;
	s->infd = -1;
	s->dir = xstrdup(cfg->spool_dir);
	snprintf(path, sizeof(path), "%s/queue", cfg->spool_dir);
	s->queuefd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->queuefd == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		free(s->dir);
		free(s);
		return NULL;
	}
	s->retry.first = cfg->delivery_retry_first;
	s->retry.factor = cfg->delivery_retry_factor;
	s->retry.max = cfg->delivery_retry_max;
	s->retry.max_age = cfg->delivery_max_age;
	s->env.base = base;
	s->env.ssl = ssl;
	s->env.notls = hmap_new();
	s->env.hostname = cfg->hostname;
	s->env.connect_timeout = cfg->delivery_connect_timeout;
	s->env.command_timeout = cfg->delivery_command_timeout;
	s->env.data_timeout = cfg->delivery_data_timeout;
	s->env.max_messages = cfg->delivery_messages_per_connection;
	s->env.relay_tls_required = cfg->delivery_relay_starttls;
	s->env.relay_user = cfg->delivery_relay_username;
	s->env.relay_pass = cfg->delivery_relay_password;
	s->msgs = hmap_new();
	s->bad = hmap_new();
	s->qmap = hmap_new();
	s->dests = hmap_new();
	s->srcs = hmap_new();
	s->sw = status_writer_new(base, s->queuefd, cfg->spool_reuse_max_age, status_removed, s);
	s->ev_kick = event_new(base, -1, 0, kick_cb, s);
	s->ev_tick = event_new(base, -1, EV_PERSIST, tick_cb, s);
	s->ev_rescan = event_new(base, -1, EV_PERSIST, rescan_cb, s);
	s->ev_load = event_new(base, -1, 0, load_cb, s);
	s->pace.idle_min = cfg->delivery_acceptance_first_idle;
	if (cfg->delivery_acceptance_first)
		s->ev_pace = event_new(base, -1, EV_PERSIST, pace_cb, s);
	return s;
}

int sched_start(struct dsched *s)
{
	struct timeval one = {1, 0}, rescan = {RESCAN_SECONDS, 0};
	char path[4096];

	snprintf(path, sizeof(path), "%s/queue", s->dir);
	s->infd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (s->infd == -1 || inotify_add_watch(s->infd, path, IN_MOVED_TO | IN_CREATE) == -1) {
		log_warn("event=delivery_inotify_failed dir=%s error=\"%s\" fallback=rescan", path,
		         strerror(errno));
		if (s->infd != -1)
			close(s->infd);
		s->infd = -1;
		rescan.tv_sec = 2;
	} else {
		s->ev_inotify = event_new(s->base, s->infd, EV_READ | EV_PERSIST, inotify_cb, s);
		event_add(s->ev_inotify, NULL);
	}
	rescan_cb(-1, 0, s);
	event_add(s->ev_tick, &one);
	event_add(s->ev_rescan, &rescan);
	if (s->ev_pace != NULL) {
		struct timeval window = {0, PACE_WINDOW_MS * 1000};
		event_add(s->ev_pace, &window);
	}
	sched_kick(s);
	return 0;
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dsched *s = arg;
	struct dcx *x, *nx;

	/* Cut what is still in flight; results so far are kept. */
	for (x = s->cxs; x != NULL; x = nx) {
		nx = x->next;
		if (x->c != NULL)
			dconn_stop(x->c, 1);
	}
}

void sched_stop(struct dsched *s, int grace, void (*done)(void *arg), void *arg)
{
	struct timeval tv = {grace, 0};

	if (s->stopping)
		return;
	s->stopping = 1;
	s->env.stopping = 1;
	s->stop_done = done;
	s->stop_arg = arg;
	event_del(s->ev_tick);
	event_del(s->ev_rescan);
	if (s->ev_pace)
		event_del(s->ev_pace);
	if (s->ev_inotify)
		event_del(s->ev_inotify);
	log_info("event=delivery_stopping in_flight=%zu delivered=%llu bounced=%llu deferred=%llu",
	         s->ncx, (unsigned long long)s->delivered, (unsigned long long)s->bounced,
	         (unsigned long long)s->deferred);
	if (s->ncx == 0) {
		status_writer_free(s->sw);
		s->sw = NULL;
		s->stop_done = NULL;
		done(arg);
		return;
	}
	s->ev_grace = evtimer_new(s->base, grace_cb, s);
	evtimer_add(s->ev_grace, &tv);
}

static void free_dq(void *v)
{
	struct dq *q = v;
	struct ditem *it;

	while ((it = q->ready) != NULL) {
		item_unlink(it);
		item_free(it);
	}
	while ((it = q->wait) != NULL) {
		item_unlink(it);
		item_free(it);
	}
	free(q->domain);
	free(q);
}

static void free_msg(void *v)
{
	msg_free(v);
}

void sched_free(struct dsched *s)
{
	if (s == NULL)
		return;
	if (s->sw)
		status_writer_free(s->sw);
	if (s->ev_inotify)
		event_free(s->ev_inotify);
	if (s->infd != -1)
		close(s->infd);
	if (s->ev_grace)
		event_free(s->ev_grace);
	if (s->ev_pace)
		event_free(s->ev_pace);
	event_free(s->ev_kick);
	event_free(s->ev_tick);
	event_free(s->ev_rescan);
	event_free(s->ev_load);
	free(s->scan);
	hmap_free(s->qmap, free_dq);
	hmap_free(s->msgs, free_msg);
	hmap_free(s->bad, NULL);
	hmap_free(s->dests, free);
	hmap_free(s->srcs, NULL);
	hmap_free(s->env.notls, NULL);
	close(s->queuefd);
	free(s->dir);
	free(s);
}
