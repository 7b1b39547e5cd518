/*
 * client: the outbound SMTP client. One dconn is one connection to a
 * destination, tried host by host along its route: bound to a source
 * address of the tenant's pool, EHLO with that address's name (HELO when
 * EHLO is refused), opportunistic STARTTLS (no verification; a host whose
 * TLS fails is retried in clear and remembered), PIPELINING when offered,
 * then as many transactions as the scheduler hands it, dot-stuffed.
 * Everything runs on the loop through bufferevents.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "queue/deliver_int.h"

#define NOTLS_SECONDS 3600 /* how long a host whose TLS failed gets clear text */
#define REPLY_LINE_MAX 4096

/*
 * The message goes out as the connection's output drains: the header block
 * (kept in memory from the queue file's check) at once, then the body read
 * from the file QUEUE_BODY_CHUNK bytes at a time, dot-stuffed, whenever the
 * output buffer is at or below STREAM_LOW (the write callback, which
 * libevent runs when the output drains to the low watermark). So while DATA
 * is sent a connection holds, whatever the message's size:
 *   the file reader's buffer          QUEUE_BODY_CHUNK           (64 KB)
 *   the stuffed piece (scratch)       2 * QUEUE_BODY_CHUNK + 2   (128 KB)
 *   the output buffer                 STREAM_LOW + the above     (192 KB)
 *   with TLS, the socket's buffer     STREAM_HIGH + one record   (~144 KB)
 * (the TLS filter moves output to the socket only while that holds less
 * than STREAM_HIGH), about 530 KB, plus once at the start the header block
 * and its stuffed copy (the header block is at most [smtp] max_header_size,
 * 256 KB by default, so at most 3 * max_header_size + 2 for a moment).
 */
#define STREAM_LOW QUEUE_BODY_CHUNK
#define STREAM_HIGH (2 * QUEUE_BODY_CHUNK)

enum cstate {
	C_CONNECT,
	C_GREETING,
	C_EHLO,
	C_HELO,
	C_STARTTLS,
	C_TLS,
	C_AUTH,
	C_TXN,  /* MAIL/RCPT/DATA replies outstanding */
	C_BODY, /* message sent, waiting for the final reply */
	C_RSET,
	C_QUIT,
	C_DONE,
};

/* The commands of a transaction whose replies are awaited, in order. */
enum { CMD_MAIL, CMD_RCPT, CMD_DATA };

struct dconn {
	struct dclient_env *env;
	struct bufferevent *bev;
	struct droute *route;
	size_t hi; /* route->hosts[hi] is the current host */
	char src4[64], helo4[256], src6[64], helo6[256];
	const char *src, *helo;
	const struct dclient_ops *ops;
	void *arg, *tag;
	enum cstate state;
	unsigned ext;
	unsigned long long size_max;
	int tls;    /* TLS is up */
	int no_tls; /* this attempt goes in clear */
	char tls_version[32];
	int authed;
	int ntxn;          /* transactions finished on this connection */
	int stop;          /* quit after the current transaction */
	struct dreply cur; /* reply being read */
	struct dreply last_fail;
	/* the transaction in progress */
	struct dtxn *txn;
	size_t sent;     /* commands sent (MAIL, RCPTs, DATA) */
	size_t answered; /* replies read */
	size_t ncmds;    /* commands in this transaction: 2 + nrcpts */
	int mail_ok, accepted, data_ok;
	int cur_lines; /* lines of the reply being read */
	/* the message being streamed (C_BODY) */
	int streaming;      /* body bytes (or the final dot) still to queue */
	struct dotstuff ds; /* the stuffer's state across pieces */
	struct buf stuffed; /* scratch: one stuffed piece */
	int in_cb;          /* inside a callback of ours: free later */
	int dead;           /* closed; freed once in_cb is 0 */
};

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_connect_host(struct dconn *c);
static void conn_ready(struct dconn *c);
static void conn_tls_failed(struct dconn *c, const char *why);

int ehlo_keyword(const char *line, unsigned long long *size_max)
{
	char kw[32];
	size_t n = 0;

	while (line[n] != '\0' && line[n] != ' ' && n < sizeof(kw) - 1) {
		kw[n] = line[n];
		n++;
	}
	kw[n] = '\0';
	if (strcasecmp(kw, "PIPELINING") == 0)
		return EXT_PIPELINING;
	if (strcasecmp(kw, "STARTTLS") == 0)
		return EXT_STARTTLS;
	if (strcasecmp(kw, "SMTPUTF8") == 0)
		return EXT_SMTPUTF8;
	if (strcasecmp(kw, "8BITMIME") == 0)
		return EXT_8BITMIME;
	if (strcasecmp(kw, "SIZE") == 0) {
		char *end;
		unsigned long long v = 0;
		if (line[n] == ' ') {
			v = strtoull(line + n + 1, &end, 10);
			if (*end != '\0' && *end != ' ')
				v = 0;
		}
		if (size_max != NULL)
			*size_max = v;
		return EXT_SIZE;
	}
	if (strcasecmp(kw, "AUTH") == 0) {
		const char *p = line + n;
		while (*p == ' ') {
			size_t m;
			p++;
			for (m = 0; p[m] != '\0' && p[m] != ' '; m++)
				;
			if (m == 5 && strncasecmp(p, "PLAIN", 5) == 0)
				return EXT_AUTH_PLAIN;
			p += m;
		}
	}
	return 0;
}

void dconn_set_tag(struct dconn *c, void *tag)
{
	c->tag = tag;
}

void *dconn_tag(const struct dconn *c)
{
	return c->tag;
}

void dconn_info(const struct dconn *c, struct dconn_info *out)
{
	/* Past the end of the route (every host failed): the last one tried. */
	size_t i = c->hi < c->route->n ? c->hi : c->route->n - 1;
	const struct dhost *h = c->route->n > 0 ? &c->route->hosts[i] : NULL;

	out->mx = h ? h->name : "";
	out->addr = h ? h->addr : "";
	out->source = c->src ? c->src : "";
	out->tls = c->tls ? c->tls_version : "";
	out->mail_from = NULL;
}

static void set_reply(struct dreply *r, int code, const char *text, int stage)
{
	r->code = code;
	r->stage = stage;
	snprintf(r->text, sizeof(r->text), "%s", text);
	reply_enhanced(code, r->text, r->enh, sizeof(r->enh));
}

static void conn_destroy(struct dconn *c)
{
	buf_free(&c->stuffed);
	droute_free(c->route);
	free(c);
}

/*
 * Closes c and tells the owner; the memory goes when no callback of c is
 * running any more (a read callback may still be looping over replies).
 */
static void conn_free(struct dconn *c)
{
	if (c->dead)
		return;
	if (c->bev != NULL)
		bufferevent_free(c->bev);
	c->bev = NULL;
	c->state = C_DONE;
	c->dead = 1;
	if (c->ops->closed)
		c->ops->closed(c->arg, c);
	if (c->in_cb == 0)
		conn_destroy(c);
}

/* Gives the transaction in progress back with every missing reply set to why. */
static void txn_abort(struct dconn *c, int code, const char *why)
{
	struct dtxn *t = c->txn;
	size_t i;

	if (t == NULL)
		return;
	c->txn = NULL;
	for (i = 0; i < t->nrcpts; i++)
		if (t->rcpt_reply[i].code == 0)
			set_reply(&t->rcpt_reply[i], code, why, DSTAGE_CONNECT);
	if (t->data_reply.code == 0)
		set_reply(&t->data_reply, code, why, DSTAGE_CONNECT);
	c->ops->done(c->arg, c, t);
}

/*
 * The connection broke or timed out (why, with a code of 4xx). During a
 * transaction its recipients are deferred; before the first one, the next
 * host of the route is tried.
 */
static void conn_fail(struct dconn *c, int code, const char *why)
{
	if (c->bev != NULL) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	if (c->txn != NULL) {
		txn_abort(c, code, why);
		conn_free(c);
		return;
	}
	if (c->ntxn > 0 || c->state == C_QUIT || c->state == C_RSET || c->env->stopping) {
		conn_free(c);
		return;
	}
	set_reply(&c->last_fail, code, why, DSTAGE_CONNECT);
	if (c->route->n > 0) {
		char q[600];
		const struct dhost *h = &c->route->hosts[c->hi];
		log_info("event=delivery_host_failed mx=%s addr=%s port=%d reason=%s", h->name,
		         h->addr, h->port, log_quote(q, sizeof(q), why));
	}
	c->hi++;
	if (c->hi < c->route->n) {
		conn_connect_host(c);
		return;
	}
	c->ops->failed(c->arg, c, &c->last_fail);
	conn_free(c);
}

static void conn_send(struct dconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_send(struct dconn *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	evbuffer_add_vprintf(bufferevent_get_output(c->bev), fmt, ap);
	va_end(ap);
}

static void set_read_timeout(struct dconn *c, int secs)
{
	struct timeval rt = {secs, 0}, wt = {c->env->data_timeout, 0};

	bufferevent_set_timeouts(c->bev, &rt, &wt);
}

/* Connects to route->hosts[hi] (skipping hosts of a family we cannot use). */
static void conn_connect_host(struct dconn *c)
{
	struct sockaddr_storage ss, src;
	socklen_t sl = 0, srcl = 0;
	struct timeval ct = {c->env->connect_timeout, 0};
	const struct dhost *h;
	int fd, one = 1;

	for (; c->hi < c->route->n; c->hi++) {
		h = &c->route->hosts[c->hi];
		/* With a pool, a family the pool lacks cannot be used. */
		if ((c->src4[0] || c->src6[0]) && !(h->family == AF_INET ? c->src4[0] : c->src6[0]))
			continue;
		break;
	}
	if (c->hi >= c->route->n) {
		if (c->last_fail.code == 0)
			set_reply(&c->last_fail, 451,
			          "4.4.4 no mail server address of a family the pool can send from",
			          DSTAGE_CONNECT);
		c->ops->failed(c->arg, c, &c->last_fail);
		conn_free(c);
		return;
	}
	h = &c->route->hosts[c->hi];
	memset(&ss, 0, sizeof(ss));
	memset(&src, 0, sizeof(src));
	if (h->family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)h->port);
		inet_pton(AF_INET, h->addr, &sin->sin_addr);
		sl = sizeof(*sin);
		c->src = c->src4[0] ? c->src4 : NULL;
		c->helo = c->helo4[0] ? c->helo4 : c->env->hostname;
		if (c->src) {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&src;
			s4->sin_family = AF_INET;
			inet_pton(AF_INET, c->src, &s4->sin_addr);
			srcl = sizeof(*s4);
		}
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)h->port);
		inet_pton(AF_INET6, h->addr, &sin6->sin6_addr);
		sl = sizeof(*sin6);
		c->src = c->src6[0] ? c->src6 : NULL;
		c->helo = c->helo6[0] ? c->helo6 : c->env->hostname;
		if (c->src) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src;
			s6->sin6_family = AF_INET6;
			inet_pton(AF_INET6, c->src, &s6->sin6_addr);
			srcl = sizeof(*s6);
		}
	}
	c->state = C_CONNECT;
	c->ext = 0;
	c->tls = 0;
	c->authed = 0;
	{
		intptr_t until = (intptr_t)hmap_get(c->env->notls, h->addr);
		c->no_tls = until > (intptr_t)time(NULL);
	}
	fd = socket(h->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		conn_fail(c, 451, "4.4.1 cannot create a socket");
		return;
	}
	if (srcl > 0) {
#ifdef IP_BIND_ADDRESS_NO_PORT
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
#endif
		if (bind(fd, (struct sockaddr *)&src, srcl) == -1) {
			char why[200];
			snprintf(why, sizeof(why), "4.4.1 cannot bind the source address %s: %s",
			         c->src, strerror(errno));
			close(fd);
			conn_fail(c, 451, why);
			return;
		}
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->bev = bufferevent_socket_new(c->env->base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, STREAM_LOW, STREAM_HIGH);
	bufferevent_set_timeouts(c->bev, &ct, &ct);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&ss, (int)sl) == -1) {
		conn_fail(c, 451, "4.4.1 connection failed");
		return;
	}
}

struct dconn *dconn_new(struct dclient_env *env, struct droute *route, const char *src4,
                        const char *helo4, const char *src6, const char *helo6,
                        const struct dclient_ops *ops, void *arg)
{
	struct dconn *c = xcalloc(1, sizeof(*c));

	c->env = env;
	c->route = route;
	c->ops = ops;
	c->arg = arg;
	snprintf(c->src4, sizeof(c->src4), "%s", src4 ? src4 : "");
	snprintf(c->helo4, sizeof(c->helo4), "%s", helo4 ? helo4 : "");
	snprintf(c->src6, sizeof(c->src6), "%s", src6 ? src6 : "");
	snprintf(c->helo6, sizeof(c->helo6), "%s", helo6 ? helo6 : "");
	conn_connect_host(c);
	return c;
}

void dconn_stop(struct dconn *c, int abort_now)
{
	c->stop = 1;
	if (abort_now) {
		txn_abort(c, 451, "4.3.2 delivery stopped before the transaction ended");
		conn_free(c);
		return;
	}
	/* Idle between transactions: never here, conn_ready quits at once. */
}

/* ---- transactions ----------------------------------------------------- */

static void conn_quit(struct dconn *c)
{
	c->state = C_QUIT;
	conn_send(c, "QUIT\r\n");
	set_read_timeout(c, 5);
}

/* Bounces the whole transaction locally (size, SMTPUTF8) with why. */
static void txn_refuse(struct dconn *c, struct dtxn *t, int code, const char *why)
{
	size_t i;

	for (i = 0; i < t->nrcpts; i++)
		set_reply(&t->rcpt_reply[i], code, why, DSTAGE_LOCAL);
	set_reply(&t->data_reply, code, why, DSTAGE_LOCAL);
	c->ops->done(c->arg, c, t);
}

static void txn_send_next(struct dconn *c)
{
	struct dtxn *t = c->txn;

	while (c->sent < c->ncmds) {
		if (c->sent == 0) {
			conn_send(c, "MAIL FROM:<%s>", t->mail_from);
			if (c->ext & EXT_SIZE)
				conn_send(c, " SIZE=%zu", t->size);
			if ((t->flags & QFLAG_8BITMIME) && (c->ext & EXT_8BITMIME))
				conn_send(c, " BODY=8BITMIME");
			if ((t->flags & QFLAG_SMTPUTF8) && (c->ext & EXT_SMTPUTF8))
				conn_send(c, " SMTPUTF8");
			conn_send(c, "\r\n");
		} else if (c->sent <= t->nrcpts) {
			conn_send(c, "RCPT TO:<%s>\r\n", t->rcpts[c->sent - 1]);
		} else {
			conn_send(c, "DATA\r\n");
		}
		c->sent++;
		/* Without PIPELINING, one command per reply. */
		if (!(c->ext & EXT_PIPELINING))
			break;
	}
}

static void txn_start(struct dconn *c, struct dtxn *t)
{
	size_t i;

	for (i = 0; i < t->nrcpts; i++)
		memset(&t->rcpt_reply[i], 0, sizeof(t->rcpt_reply[i]));
	memset(&t->data_reply, 0, sizeof(t->data_reply));
	c->txn = t;
	c->sent = c->answered = 0;
	c->ncmds = 2 + t->nrcpts;
	c->mail_ok = c->accepted = c->data_ok = 0;
	c->state = C_TXN;
	c->streaming = 0;
	set_read_timeout(c, c->env->command_timeout);
	txn_send_next(c);
}

/* Between transactions: the next one, or QUIT. */
static void conn_ready(struct dconn *c)
{
	for (;;) {
		struct dtxn *t;

		if (c->stop || c->env->stopping || c->ntxn >= c->env->max_messages) {
			conn_quit(c);
			return;
		}
		t = c->ops->next(c->arg, c);
		if (t == NULL) {
			conn_quit(c);
			return;
		}
		if ((c->ext & EXT_SIZE) && c->size_max > 0 && t->size > c->size_max) {
			char why[512];
			snprintf(why, sizeof(why),
			         "5.3.4 message of %zu bytes is over the %llu bytes %s accepts",
			         t->size, c->size_max, c->route->hosts[c->hi].name);
			c->ntxn++;
			txn_refuse(c, t, 552, why);
			continue;
		}
		if ((t->flags & QFLAG_SMTPUTF8) && !(c->ext & EXT_SMTPUTF8)) {
			char why[512];
			snprintf(
			    why, sizeof(why),
			    "5.6.7 the message needs SMTPUTF8 (international addresses), which "
			    "%s does not support",
			    c->route->hosts[c->hi].name);
			c->ntxn++;
			txn_refuse(c, t, 553, why);
			continue;
		}
		txn_start(c, t);
		return;
	}
}

static void txn_finish(struct dconn *c)
{
	struct dtxn *t = c->txn;

	c->txn = NULL;
	c->ntxn++;
	c->ops->done(c->arg, c, t);
	if (c->state != C_DONE)
		conn_ready(c);
}

/*
 * Queues body pieces while the output holds at most STREAM_LOW bytes, and
 * the final dot after the last one (the bound is in the comment at the
 * top). A queue file that changed since its check, or cannot be read, ends
 * the connection without the dot, so the server drops the partial message.
 */
static void body_pump(struct dconn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	struct dtxn *t = c->txn;
	int progress = 0;

	while (c->streaming && evbuffer_get_length(out) <= STREAM_LOW) {
		const char *p;
		size_t n;
		char err[256], q[300];
		int r = t->body != NULL ? qbody_next(t->body, &p, &n, err, sizeof(err)) : 0;

		if (r == -1) {
			log_warn("event=delivery_read_failed reason=%s",
			         log_quote(q, sizeof(q), err));
			c->streaming = 0;
			buf_free(&c->stuffed);
			set_reply(&t->data_reply, 451,
			          "4.3.0 the queue file could not be read while sending",
			          DSTAGE_DATA);
			conn_fail(c, 451, "4.3.0 the queue file could not be read while sending");
			return;
		}
		if (c->stuffed.max == 0)
			buf_init(&c->stuffed, 2 * QUEUE_BODY_CHUNK + 8);
		buf_reset(&c->stuffed);
		if (r == 0) {
			dotstuff_end(&c->ds, &c->stuffed);
			c->streaming = 0;
		} else {
			dotstuff_chunk(&c->ds, &c->stuffed, p, n);
		}
		if (c->stuffed.len > 0)
			evbuffer_add(out, c->stuffed.data, c->stuffed.len);
		progress = 1;
	}
	if (!c->streaming)
		buf_free(&c->stuffed); /* nothing kept between messages */
	/* The reply wait counts from the last progress, not from DATA. */
	if (progress)
		set_read_timeout(c, c->env->data_timeout);
}

/* The output drained to STREAM_LOW: more of the message, if one is going out. */
static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct dconn *c = arg;

	if (c->dead || c->bev != bev || !c->streaming || c->txn == NULL)
		return;
	c->in_cb++;
	body_pump(c);
	if (--c->in_cb == 0 && c->dead)
		conn_destroy(c);
}

/* A reply to MAIL, RCPT or DATA in a transaction. */
static void txn_reply(struct dconn *c)
{
	struct dtxn *t = c->txn;
	size_t k = c->answered++;

	if (k == 0) {
		c->mail_ok = c->cur.code / 100 == 2;
		if (!c->mail_ok) {
			/* Every recipient gets the MAIL reply. */
			for (size_t i = 0; i < t->nrcpts; i++) {
				t->rcpt_reply[i] = c->cur;
				t->rcpt_reply[i].stage = DSTAGE_MAIL;
			}
		}
	} else if (k <= t->nrcpts) {
		if (c->mail_ok) {
			t->rcpt_reply[k - 1] = c->cur;
			t->rcpt_reply[k - 1].stage = DSTAGE_RCPT;
			if (c->cur.code / 100 == 2)
				c->accepted++;
		}
	} else {
		c->data_ok = c->cur.code == 354;
		t->data_reply = c->cur;
		t->data_reply.stage = DSTAGE_DATA;
	}
	/* Without pipelining, stop early when nothing can succeed. */
	if (!(c->ext & EXT_PIPELINING) && c->answered == c->sent) {
		if ((k == 0 && !c->mail_ok) || (k == t->nrcpts && c->accepted == 0)) {
			c->state = C_RSET;
			conn_send(c, "RSET\r\n");
			return;
		}
		if (c->sent < c->ncmds) {
			txn_send_next(c);
			return;
		}
	}
	if (c->answered < c->ncmds)
		return;
	/* Every reply is in. */
	if (c->data_ok) {
		struct buf out;
		if (c->accepted == 0 || !c->mail_ok) {
			/* RFC 2920 3.1: a 354 with no valid recipient still needs the dot. */
			conn_send(c, ".\r\n");
			c->state = C_RSET; /* the reply to the empty message is ignored */
			return;
		}
		/* The header block goes at once (and its plain copy now), the
		 * body as the output drains: body_pump. */
		dotstuff_init(&c->ds);
		buf_init(&out, (size_t)-1);
		dotstuff_chunk(&c->ds, &out, t->hdr.data, t->hdr.len);
		buf_free(&t->hdr);
		evbuffer_add(bufferevent_get_output(c->bev), out.data, out.len);
		buf_free(&out);
		c->state = C_BODY;
		c->streaming = 1;
		set_read_timeout(c, c->env->data_timeout);
		body_pump(c);
		return;
	}
	if (c->mail_ok && c->accepted > 0 && t->data_reply.code == 0)
		set_reply(&t->data_reply, 451, "4.5.0 no reply to DATA", DSTAGE_DATA);
	/* DATA refused, or nothing to send: RSET before the next transaction. */
	c->state = C_RSET;
	conn_send(c, "RSET\r\n");
}

/* ---- the session ------------------------------------------------------ */

static void conn_after_ehlo(struct dconn *c)
{
	int relay = c->route->relay;

	if (!c->tls && !c->no_tls && (c->ext & EXT_STARTTLS) && c->env->ssl != NULL) {
		c->state = C_STARTTLS;
		conn_send(c, "STARTTLS\r\n");
		return;
	}
	if (relay && c->env->relay_tls_required && !c->tls) {
		conn_fail(c, 451, "4.7.10 the relay does not offer STARTTLS, which is required");
		return;
	}
	if (relay && c->env->relay_user && c->env->relay_user[0] && !c->authed) {
		size_t ul = strlen(c->env->relay_user), pl = strlen(c->env->relay_pass);
		unsigned char *raw = xmalloc(ul + pl + 2);
		char *b64 = xmalloc(4 * ((ul + pl + 4) / 3) + 4);

		raw[0] = '\0';
		memcpy(raw + 1, c->env->relay_user, ul);
		raw[1 + ul] = '\0';
		memcpy(raw + 2 + ul, c->env->relay_pass, pl);
		base64_encode(raw, ul + pl + 2, b64);
		c->state = C_AUTH;
		conn_send(c, "AUTH PLAIN %s\r\n", b64);
		OPENSSL_cleanse(raw, ul + pl + 2);
		free(raw);
		free(b64);
		return;
	}
	conn_ready(c);
}

static void conn_start_tls(struct dconn *c)
{
	SSL *ssl = SSL_new(c->env->ssl);
	struct bufferevent *tb;
	const struct dhost *h = &c->route->hosts[c->hi];

	if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
		/* Bytes after the 220 before the handshake: an injection, or a
		 * server that cannot do TLS. Never read them; this host's TLS
		 * has failed. */
		if (ssl)
			SSL_free(ssl);
		conn_tls_failed(c, "data after the STARTTLS reply");
		return;
	}
	if (ssl == NULL) {
		conn_fail(c, 451, "4.7.0 TLS setup failed");
		return;
	}
	if (addr_family(h->name) == AF_UNSPEC)
		SSL_set_tlsext_host_name(ssl, h->name);
	tb = bufferevent_openssl_filter_new(c->env->base, c->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
	                                    BEV_OPT_CLOSE_ON_FREE);
	if (tb == NULL) {
		SSL_free(ssl);
		conn_fail(c, 451, "4.7.0 TLS setup failed");
		return;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(tb, 1);
	c->bev = tb;
	c->state = C_TLS;
	bufferevent_setcb(tb, conn_read_cb, conn_write_cb, conn_event_cb, c);
	/* The filter hands ciphertext to the socket only below STREAM_HIGH. */
	bufferevent_setwatermark(tb, EV_WRITE, STREAM_LOW, STREAM_HIGH);
	set_read_timeout(c, c->env->command_timeout);
	bufferevent_enable(tb, EV_READ | EV_WRITE);
}

/* TLS failed with this host: remember, and try it again in clear. */
static void conn_tls_failed(struct dconn *c, const char *why)
{
	const struct dhost *h = &c->route->hosts[c->hi];
	char q[300];

	if (c->route->relay && c->env->relay_tls_required) {
		/* TLS is required: no clear-text fallback to remember. */
		log_info("event=delivery_tls_failed mx=%s addr=%s reason=%s action=defer", h->name,
		         h->addr, log_quote(q, sizeof(q), why));
		conn_fail(c, 451, "4.7.10 TLS with the relay failed");
		return;
	}
	hmap_put(c->env->notls, h->addr, (void *)(intptr_t)(time(NULL) + NOTLS_SECONDS));
	log_info("event=delivery_tls_failed mx=%s addr=%s reason=%s action=retry_in_clear", h->name,
	         h->addr, log_quote(q, sizeof(q), why));
	bufferevent_free(c->bev);
	c->bev = NULL;
	conn_connect_host(c);
}

static void conn_reply(struct dconn *c)
{
	struct dreply *r = &c->cur;
	int ok = r->code / 100 == 2;

	switch (c->state) {
	case C_GREETING:
		if (!ok) {
			char why[600];
			snprintf(why, sizeof(why), "%d %s", r->code, r->text);
			/* 4xx or 5xx greeting: the next host (RFC 5321 5.1). */
			conn_fail(c, r->code / 100 == 5 ? 451 : r->code, why);
			return;
		}
		c->state = C_EHLO;
		conn_send(c, "EHLO %s\r\n", c->helo);
		return;
	case C_EHLO:
		if (!ok) {
			c->state = C_HELO;
			conn_send(c, "HELO %s\r\n", c->helo);
			return;
		}
		conn_after_ehlo(c);
		return;
	case C_HELO:
		if (!ok) {
			char why[600];
			snprintf(why, sizeof(why), "HELO refused: %d %s", r->code, r->text);
			conn_fail(c, 451, why);
			return;
		}
		c->ext = 0;
		conn_after_ehlo(c);
		return;
	case C_STARTTLS:
		if (r->code != 220) {
			/* Refused: go on in clear (opportunistic). */
			c->no_tls = 1;
			conn_after_ehlo(c);
			return;
		}
		conn_start_tls(c);
		return;
	case C_AUTH:
		if (r->code != 235) {
			char why[600];
			snprintf(why, sizeof(why), "4.7.0 the relay refused our AUTH: %d %s",
			         r->code, r->text);
			conn_fail(c, 451, why);
			return;
		}
		c->authed = 1;
		conn_ready(c);
		return;
	case C_TXN:
		txn_reply(c);
		return;
	case C_BODY:
		c->txn->data_reply = *r;
		c->txn->data_reply.stage = DSTAGE_DATA;
		if (c->streaming) {
			/* A reply before the end of the message: the server gave up on
			 * it (a success there would be nonsense). The rest cannot be
			 * sent, so this connection ends here. */
			if (r->code / 100 == 2)
				set_reply(&c->txn->data_reply, 451,
				          "4.5.0 the server replied before the end of the message",
				          DSTAGE_DATA);
			c->streaming = 0;
			/* Every reply is set: conn_fail only hands the transaction back. */
			conn_fail(c, 451, "4.5.0 the server replied before the end of the message");
			return;
		}
		set_read_timeout(c, c->env->command_timeout);
		txn_finish(c);
		return;
	case C_RSET:
		if (c->txn != NULL)
			txn_finish(c);
		else
			conn_ready(c);
		return;
	case C_QUIT:
		conn_free(c);
		return;
	default:
		return;
	}
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct dconn *c = arg;

	c->in_cb++;
	while (!c->dead && c->bev == bev) {
		struct evbuffer *in = bufferevent_get_input(bev);
		size_t len;
		char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
		int code, last;

		if (line == NULL) {
			if (evbuffer_get_length(in) > REPLY_LINE_MAX)
				conn_fail(c, 451, "4.5.0 reply line too long");
			break;
		}
		if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
		    line[2] < '0' || line[2] > '9' ||
		    (len > 3 && line[3] != ' ' && line[3] != '-')) {
			free(line);
			conn_fail(c, 451, "4.5.0 malformed reply from the server");
			break;
		}
		code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		last = len == 3 || line[3] == ' ';
		if (c->cur_lines > 0 && code != c->cur.code) {
			free(line);
			conn_fail(c, 451, "4.5.0 reply code changed inside a multi-line reply");
			break;
		}
		if (c->cur_lines == 0) {
			c->cur.code = code;
			snprintf(c->cur.text, sizeof(c->cur.text), "%s", len > 4 ? line + 4 : "");
			reply_enhanced(code, c->cur.text, c->cur.enh, sizeof(c->cur.enh));
		} else if (c->state == C_EHLO) {
			/* EHLO: the lines after the first are keywords. */
			if (len > 4)
				c->ext |= (unsigned)ehlo_keyword(line + 4, &c->size_max);
		} else if (len > 4) {
			/* Later lines of a reply, joined for people. */
			size_t tl = strlen(c->cur.text);
			if (tl + 2 < sizeof(c->cur.text))
				snprintf(c->cur.text + tl, sizeof(c->cur.text) - tl, " %s",
				         line + 4);
		}
		c->cur_lines++;
		free(line);
		if (!last)
			continue;
		c->cur_lines = 0;
		conn_reply(c);
		memset(&c->cur, 0, sizeof(c->cur));
	}
	if (--c->in_cb == 0 && c->dead)
		conn_destroy(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct dconn *c = arg;
	char why[300];

	if (c->dead)
		return;

	if (what & BEV_EVENT_CONNECTED) {
		if (c->state == C_CONNECT) {
			struct timeval rt = {c->env->command_timeout, 0},
			               wt = {c->env->data_timeout, 0};
			bufferevent_set_timeouts(c->bev, &rt, &wt);
			c->state = C_GREETING;
			return;
		}
		if (c->state == C_TLS) {
			SSL *ssl = bufferevent_openssl_get_ssl(bev);
			c->tls = 1;
			snprintf(c->tls_version, sizeof(c->tls_version), "%s",
			         ssl ? SSL_get_version(ssl) : "TLS");
			c->ext = 0;
			c->state = C_EHLO;
			conn_send(c, "EHLO %s\r\n", c->helo);
			return;
		}
		return;
	}
	if (c->state == C_TLS && (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF))) {
		unsigned long e = bufferevent_get_openssl_error(bev);
		const char *es = e ? ERR_reason_error_string(e) : NULL;
		snprintf(why, sizeof(why), "TLS handshake failed: %s",
		         es  ? es
		         : e ? "error"
		             : "connection closed");
		conn_tls_failed(c, why);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		snprintf(why, sizeof(why), "4.4.2 timeout %s",
		         c->state == C_CONNECT ? "connecting"
		         : c->state == C_BODY  ? "waiting for the reply to the message"
		                               : "waiting for a reply");
		conn_fail(c, 451, why);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		conn_fail(c, 451, "4.4.2 connection closed by the server");
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		int e = EVUTIL_SOCKET_ERROR();
		snprintf(why, sizeof(why), "4.4.1 %s: %s",
		         c->state == C_CONNECT ? "connection failed" : "connection error",
		         e ? evutil_socket_error_to_string(e) : "error");
		conn_fail(c, 451, why);
		return;
	}
}
