/*
 * resolver: c-ares driven by the libevent loop, with a TTL cache.
 *
 * c-ares tells us which sockets it wants watched (the socket-state
 * callback) and when it next needs a timer (ares_timeout); we turn those
 * into events and call ares_process_fd, so nothing here ever blocks. c-ares
 * retries over TCP by itself when a UDP answer comes back truncated.
 */
#include <ares.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "dns/dns.h"

#define DEFAULT_TIMEOUT_MS 2000
#define DEFAULT_TRIES 3
#define DEFAULT_CACHE_MAX 4096
#define DEFAULT_MAX_TTL 3600
#define DEFAULT_NEG_TTL 300

struct fd_watch {
	ares_socket_t fd;
	struct event *ev;
	struct fd_watch *next;
};

struct cache_entry {
	char *key;
	struct dns_result res;
	uint64_t expires;                /* now_usec() clock */
	struct cache_entry *prev, *next; /* LRU list, most recent first */
};

/* A finished lookup waiting to be delivered from the loop. */
struct done {
	struct dns_result *res;
	dns_cb cb;
	void *arg;
	uint64_t cookie;
	struct done *next;
};

/* A lookup handed to c-ares. */
struct pending {
	struct dns_resolver *r;
	char *name;
	enum dns_type type;
	dns_cb cb;
	void *arg;
	uint64_t cookie;
};

struct dns_resolver {
	struct event_base *base;
	ares_channel channel;
	struct event *timer;
	struct event *done_ev;
	struct fd_watch *watches;
	struct done *done_head, *done_tail;
	int closing;
	int submitting; /* inside ares_query: results are delivered later, not now */

	struct hmap *cache;
	struct cache_entry *lru_head, *lru_tail;
	size_t cache_max;
	uint32_t max_ttl;
	uint32_t neg_ttl;
	int cache_off;

	struct dns_stats stats;
};

const char *dns_status_str(enum dns_status s)
{
	switch (s) {
	case DNS_OK:
		return "ok";
	case DNS_NXDOMAIN:
		return "nxdomain";
	case DNS_NODATA:
		return "nodata";
	case DNS_SERVFAIL:
		return "servfail";
	case DNS_TIMEOUT:
		return "timeout";
	case DNS_ERROR:
		break;
	}
	return "error";
}

const char *dns_type_str(enum dns_type t)
{
	switch (t) {
	case DNS_A:
		return "A";
	case DNS_CNAME:
		return "CNAME";
	case DNS_MX:
		return "MX";
	case DNS_TXT:
		return "TXT";
	case DNS_AAAA:
		return "AAAA";
	}
	return "?";
}

/* Deep-copies src into dst. */
static void result_copy(struct dns_result *dst, const struct dns_result *src)
{
	*dst = *src;
	dst->name = src->name ? xstrdup(src->name) : NULL;
	dst->rr = NULL;
	if (src->n > 0) {
		dst->rr = xcalloc(src->n, sizeof(*dst->rr));
		for (size_t i = 0; i < src->n; i++) {
			dst->rr[i] = src->rr[i];
			dst->rr[i].text = xmalloc(src->rr[i].len + 1);
			memcpy(dst->rr[i].text, src->rr[i].text, src->rr[i].len);
			dst->rr[i].text[src->rr[i].len] = '\0';
		}
	}
}

struct dns_result *dns_result_dup(const struct dns_result *res)
{
	struct dns_result *d = xcalloc(1, sizeof(*d));

	result_copy(d, res);
	return d;
}

void dns_result_free(struct dns_result *res)
{
	if (res == NULL)
		return;
	dns_result_clear(res);
	free(res);
}

/* ---- the cache --------------------------------------------------------- */

static void cache_key(char *out, size_t outlen, const char *name, enum dns_type type)
{
	snprintf(out, outlen, "%d:%s", (int)type, name);
}

static void lru_unlink(struct dns_resolver *r, struct cache_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		r->lru_head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		r->lru_tail = e->prev;
	e->prev = e->next = NULL;
}

static void lru_push_front(struct dns_resolver *r, struct cache_entry *e)
{
	e->prev = NULL;
	e->next = r->lru_head;
	if (r->lru_head)
		r->lru_head->prev = e;
	r->lru_head = e;
	if (r->lru_tail == NULL)
		r->lru_tail = e;
}

static void cache_drop(struct dns_resolver *r, struct cache_entry *e)
{
	lru_unlink(r, e);
	hmap_del(r->cache, e->key);
	free(e->key);
	dns_result_clear(&e->res);
	free(e);
}

/* The cached answer for key, or NULL (expired entries are dropped). */
static struct cache_entry *cache_find(struct dns_resolver *r, const char *key)
{
	struct cache_entry *e = hmap_get(r->cache, key);

	if (e == NULL)
		return NULL;
	if (now_usec() >= e->expires) {
		cache_drop(r, e);
		return NULL;
	}
	lru_unlink(r, e);
	lru_push_front(r, e);
	return e;
}

/* Stores a copy of res when it is an answer worth keeping. */
static void cache_store(struct dns_resolver *r, const struct dns_result *res)
{
	char key[300];
	struct cache_entry *e;
	uint32_t ttl = res->ttl;

	if (r->cache_off || res->name == NULL)
		return;
	if (res->status == DNS_OK) {
		if (ttl > r->max_ttl)
			ttl = r->max_ttl;
	} else if (res->status == DNS_NXDOMAIN || res->status == DNS_NODATA) {
		if (ttl > r->neg_ttl)
			ttl = r->neg_ttl;
	} else {
		return; /* failures are never cached */
	}
	if (ttl == 0)
		return;
	cache_key(key, sizeof(key), res->name, res->type);
	e = hmap_get(r->cache, key);
	if (e)
		cache_drop(r, e);
	while (hmap_count(r->cache) >= r->cache_max && r->lru_tail)
		cache_drop(r, r->lru_tail);
	e = xcalloc(1, sizeof(*e));
	e->key = xstrdup(key);
	result_copy(&e->res, res);
	e->res.from_cache = 1;
	e->expires = now_usec() + (uint64_t)ttl * 1000000u;
	hmap_put(r->cache, key, e);
	lru_push_front(r, e);
}

void dns_cache_clear(struct dns_resolver *r)
{
	while (r->lru_head)
		cache_drop(r, r->lru_head);
}

/* ---- delivering results from the loop ---------------------------------- */

static void enqueue_done(struct dns_resolver *r, struct dns_result *res, dns_cb cb, void *arg,
                         uint64_t cookie)
{
	struct done *d = xcalloc(1, sizeof(*d));

	d->res = res;
	d->cb = cb;
	d->arg = arg;
	d->cookie = cookie;
	if (r->done_tail)
		r->done_tail->next = d;
	else
		r->done_head = d;
	r->done_tail = d;
	if (!r->closing)
		event_active(r->done_ev, EV_TIMEOUT, 1);
}

/* Delivers every queued result; those queued meanwhile wait for the next round. */
static void deliver_done(struct dns_resolver *r)
{
	struct done *d = r->done_head;

	r->done_head = r->done_tail = NULL;
	while (d) {
		struct done *next = d->next;

		d->cb(d->res, d->arg, d->cookie);
		dns_result_free(d->res);
		free(d);
		d = next;
	}
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
	deliver_done(arg);
}

/* Queues a failure result for delivery from the loop. */
static void enqueue_failure(struct dns_resolver *r, const char *name, enum dns_type type,
                            enum dns_status st, const char *detail, dns_cb cb, void *arg,
                            uint64_t cookie)
{
	struct dns_result *res = xcalloc(1, sizeof(*res));

	res->name = xstrdup(name);
	res->type = type;
	res->status = st;
	res->detail = detail;
	enqueue_done(r, res, cb, arg, cookie);
}

/* ---- c-ares on libevent ------------------------------------------------ */

static void rearm_timer(struct dns_resolver *r)
{
	struct timeval tv, *tvp;

	if (r->closing)
		return;
	tvp = ares_timeout(r->channel, NULL, &tv);
	if (tvp)
		evtimer_add(r->timer, tvp);
	else
		evtimer_del(r->timer);
}

static void fd_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dns_resolver *r = arg;

	ares_process_fd(r->channel, (what & EV_READ) ? fd : ARES_SOCKET_BAD,
	                (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
	rearm_timer(r);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dns_resolver *r = arg;

	ares_process_fd(r->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	rearm_timer(r);
}

/* c-ares says which sockets to watch, for what. */
static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
	struct dns_resolver *r = data;
	struct fd_watch **pp = &r->watches, *w;

	while (*pp && (*pp)->fd != fd)
		pp = &(*pp)->next;
	w = *pp;
	if (!readable && !writable) {
		if (w) {
			*pp = w->next;
			event_free(w->ev);
			free(w);
		}
		return;
	}
	if (w == NULL) {
		w = xcalloc(1, sizeof(*w));
		w->fd = fd;
		w->next = r->watches;
		r->watches = w;
	} else {
		event_free(w->ev);
	}
	w->ev =
	    event_new(r->base, fd,
	              (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0) | EV_PERSIST, fd_cb, r);
	if (w->ev == NULL || event_add(w->ev, NULL) < 0)
		abort();
}

/* Maps a c-ares failure without a reply to our statuses. */
static void status_from_ares(int status, struct dns_result *res)
{
	switch (status) {
	case ARES_ESERVFAIL:
		res->status = DNS_SERVFAIL;
		res->detail = "server failure (SERVFAIL)";
		break;
	case ARES_ETIMEOUT:
		res->status = DNS_TIMEOUT;
		res->detail = "no answer from the DNS server (timeout)";
		break;
	case ARES_ENOTFOUND:
		res->status = DNS_NXDOMAIN;
		res->detail = "no such name (NXDOMAIN)";
		break;
	case ARES_ENODATA:
		res->status = DNS_NODATA;
		res->detail = "no record of this type";
		break;
	case ARES_EREFUSED:
		res->status = DNS_ERROR;
		res->detail = "query refused (REFUSED)";
		break;
	case ARES_ECONNREFUSED:
		res->status = DNS_ERROR;
		res->detail = "connection to the DNS server refused";
		break;
	case ARES_EDESTRUCTION:
	case ARES_ECANCELLED:
		res->status = DNS_ERROR;
		res->detail = "cancelled";
		break;
	case ARES_EBADNAME:
		res->status = DNS_ERROR;
		res->detail = "invalid name";
		break;
	default:
		res->status = DNS_ERROR;
		res->detail = "DNS error";
		break;
	}
}

static void on_ares(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct pending *p = arg;
	struct dns_resolver *r = p->r;
	struct dns_result res;

	memset(&res, 0, sizeof(res));
	if (abuf != NULL && alen > 0 && status != ARES_EDESTRUCTION && status != ARES_ECANCELLED)
		dns_answer_parse(abuf, (size_t)alen, p->type, &res);
	else
		status_from_ares(status, &res);
	res.type = p->type;
	if (res.name == NULL || strcmp(res.name, p->name) != 0) {
		free(res.name);
		res.name = xstrdup(p->name);
	}
	if (!r->closing)
		cache_store(r, &res);
	if (r->submitting)
		enqueue_done(r, dns_result_dup(&res), p->cb, p->arg, p->cookie);
	else
		p->cb(&res, p->arg, p->cookie);
	dns_result_clear(&res);
	free(p->name);
	free(p);
}

/*
 * Lower-cases name into out without a trailing dot. Returns 0, or -1 when
 * it is not a name we can ask for.
 */
static int normalize_name(const char *name, char *out, size_t outlen)
{
	size_t n = strlen(name), label = 0;

	if (n > 0 && name[n - 1] == '.')
		n--;
	if (n == 0 || n > 253 || n + 1 > outlen)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c <= 0x20 || c >= 0x7f || c == '\\')
			return -1;
		if (c == '.') {
			if (label == 0)
				return -1;
			label = 0;
		} else if (++label > 63) {
			return -1;
		}
		out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : (char)c;
	}
	out[n] = '\0';
	return 0;
}

void dns_query(struct dns_resolver *r, const char *name, enum dns_type type, int flags, dns_cb cb,
               void *arg, uint64_t cookie)
{
	char norm[256], key[300];
	struct pending *p;

	r->stats.queries++;
	if (normalize_name(name, norm, sizeof(norm)) < 0) {
		enqueue_failure(r, name, type, DNS_ERROR, "invalid name", cb, arg, cookie);
		return;
	}
	if (r->closing) {
		enqueue_failure(r, norm, type, DNS_ERROR, "cancelled", cb, arg, cookie);
		return;
	}
	if (!(flags & DNS_Q_NOCACHE) && !r->cache_off) {
		struct cache_entry *e;

		cache_key(key, sizeof(key), norm, type);
		e = cache_find(r, key);
		if (e) {
			struct dns_result *res = dns_result_dup(&e->res);
			uint64_t left = (e->expires - now_usec()) / 1000000u;

			res->ttl = (uint32_t)left;
			r->stats.cache_hits++;
			enqueue_done(r, res, cb, arg, cookie);
			return;
		}
	}
	p = xcalloc(1, sizeof(*p));
	p->r = r;
	p->name = xstrdup(norm);
	p->type = type;
	p->cb = cb;
	p->arg = arg;
	p->cookie = cookie;
	r->stats.sent++;
	/* c-ares may call on_ares before returning (a bad name, no memory):
	 * the result is then queued, so cb never runs inside dns_query. */
	r->submitting++;
	ares_query(r->channel, norm, 1 /* IN */, (int)type, on_ares, p);
	r->submitting--;
	rearm_timer(r);
}

struct dns_resolver *dns_resolver_new(struct event_base *base, const struct dns_config *cfg,
                                      char *err, size_t errlen)
{
	struct dns_resolver *r;
	struct ares_options opt;
	int mask, rc;
	int have_servers = cfg->servers != NULL && cfg->servers[0] != '\0';
	char lookups[] = "b";
	char devnull[] = "/dev/null";

	rc = ares_library_init(ARES_LIB_INIT_ALL);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
		return NULL;
	}
	r = xcalloc(1, sizeof(*r));
	r->base = base;
	r->cache = hmap_new();
	r->cache_max = cfg->cache_max ? cfg->cache_max : DEFAULT_CACHE_MAX;
	r->cache_off = cfg->cache_max == (size_t)-1;
	r->max_ttl = cfg->cache_max_ttl ? cfg->cache_max_ttl : DEFAULT_MAX_TTL;
	r->neg_ttl = cfg->cache_neg_ttl ? cfg->cache_neg_ttl : DEFAULT_NEG_TTL;

	memset(&opt, 0, sizeof(opt));
	mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS |
	       ARES_OPT_LOOKUPS;
	opt.sock_state_cb = sock_state_cb;
	opt.sock_state_cb_data = r;
	opt.timeout = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
	opt.tries = cfg->tries > 0 ? cfg->tries : DEFAULT_TRIES;
	/*
	 * Absolute names only; no search list, no HOSTALIASES. NOCHECKRESP:
	 * c-ares 1.18 otherwise swallows a SERVFAIL or REFUSED reply, tries the
	 * next server, and ends with "connection refused"; we need to tell the
	 * customer it was SERVFAIL (the price: no failover on SERVFAIL).
	 */
	opt.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES | ARES_FLAG_NOCHECKRESP;
	/* DNS only, never the hosts file. */
	opt.lookups = lookups;
	if (have_servers) {
		/* Servers come from the config: do not read the system's resolv.conf. */
		mask |= ARES_OPT_DOMAINS | ARES_OPT_RESOLVCONF;
		opt.domains = NULL;
		opt.ndomains = 0;
		opt.resolvconf_path = devnull;
	}
	rc = ares_init_options(&r->channel, &opt, mask);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
		goto fail;
	}
	if (have_servers) {
		rc = ares_set_servers_ports_csv(r->channel, cfg->servers);
		if (rc != ARES_SUCCESS) {
			snprintf(err, errlen, "dns servers \"%s\": %s", cfg->servers,
			         ares_strerror(rc));
			goto fail;
		}
	}
	r->timer = evtimer_new(base, timer_cb, r);
	r->done_ev = event_new(base, -1, 0, done_cb, r);
	if (r->timer == NULL || r->done_ev == NULL)
		abort();
	return r;

fail:
	if (r->channel)
		ares_destroy(r->channel);
	hmap_free(r->cache, NULL);
	free(r);
	ares_library_cleanup();
	return NULL;
}

void dns_resolver_free(struct dns_resolver *r)
{
	if (r == NULL)
		return;
	r->closing = 1;
	/* Pending lookups get their callbacks here, with "cancelled". */
	ares_destroy(r->channel);
	while (r->done_head)
		deliver_done(r);
	while (r->watches) {
		struct fd_watch *w = r->watches;

		r->watches = w->next;
		event_free(w->ev);
		free(w);
	}
	event_free(r->timer);
	event_free(r->done_ev);
	dns_cache_clear(r);
	hmap_free(r->cache, NULL);
	free(r);
	ares_library_cleanup();
}

void dns_resolver_stats(const struct dns_resolver *r, struct dns_stats *st)
{
	*st = r->stats;
	st->cached = hmap_count(r->cache);
}
