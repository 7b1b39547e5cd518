/*
 * conn: one client connection as a state machine on its thread's loop.
 * Setup is connect, (TLS,) greeting, EHLO, (STARTTLS, TLS, EHLO,) AUTH; then
 * transactions until the shared message counter runs out, then QUIT. Every
 * claimed message ends in exactly one of accepted or failed (by reply code).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>

#include "bench/bench.h"
#include "common/common.h"

/* Consecutive setup failures on one thread before the run gives up. */
#define SETUP_FAIL_LIMIT 20
/* A reply line longer than this is a protocol error. */
#define MAX_REPLY_LINE 4096
/* Room for the per-message headers in front of a connection's body copy. */
#define HDR_ROOM 1024
/* Bodies up to this size get a per-connection copy (see send_body). */
#define PRIVATE_BODY_MAX (256 * 1024)

enum conn_state {
	CS_CONNECTING,
	CS_TLS, /* handshake in progress */
	CS_GREETING,
	CS_EHLO,
	CS_STARTTLS,
	CS_AUTH,
	CS_IDLE, /* idle mode: set up, holding */
	CS_WAIT, /* --rate: message claimed, waiting for its time */
	CS_MAIL,
	CS_RCPT,
	CS_DATA,
	CS_BODY, /* end of data sent, waiting for the final reply */
	CS_RSET,
	CS_QUIT,
};

static const char *const state_names[] = {
    [CS_CONNECTING] = "connect", [CS_TLS] = "TLS handshake",  [CS_GREETING] = "greeting",
    [CS_EHLO] = "EHLO",          [CS_STARTTLS] = "STARTTLS",  [CS_AUTH] = "AUTH",
    [CS_IDLE] = "idle",          [CS_WAIT] = "wait for rate", [CS_MAIL] = "MAIL FROM",
    [CS_RCPT] = "RCPT TO",       [CS_DATA] = "DATA",          [CS_BODY] = "end of data",
    [CS_RSET] = "RSET",          [CS_QUIT] = "QUIT",
};

struct conn {
	struct worker *w;
	struct conn *prev, *next;
	struct bufferevent *bev;
	int fd;
	int bev_owns_fd;
	int tls_done;
	int in_setup;
	int was_ready;
	enum conn_state st;
	uint64_t t_start;  /* connect started */
	uint64_t t_queued; /* end of data handed to the buffer */
	uint64_t t_dot;    /* end of data left the buffer */
	int dot_pending;
	long long sent;   /* transactions started on this connection */
	long long msg_id; /* claimed message, -1 when none */
	long long rcpt_base;
	int rcpt_left; /* RCPT replies still expected */
	int rcpt_next; /* non-pipelined: next RCPT to send */
	int tx_code;   /* first error of the transaction, 0 when none */
	char tx_text[160];
	int cap_starttls, cap_pipelining, cap_size, cap_auth;
	char last_reply[160];
	char *sendbuf;      /* HDR_ROOM bytes, then a copy of the body; or NULL */
	struct event *wait; /* --rate: fires when the claimed message is due */
};

static int conn_open(struct worker *w);
static void start_transaction(struct conn *c);
static void wait_cb(evutil_socket_t fd, short what, void *arg);
static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

void bench_abort(struct bench_run *run, const char *fmt, ...)
{
	va_list ap;

	if (atomic_exchange(&run->aborting, 1))
		return;
	va_start(ap, fmt);
	vsnprintf(run->abort_msg, sizeof(run->abort_msg), fmt, ap);
	va_end(ap);
	for (int i = 0; i < run->n_workers; i++)
		if (run->workers[i] && run->workers[i]->base)
			event_base_loopbreak(run->workers[i]->base);
}

/* Copies a reply for messages, without line end or control bytes. */
static void keep_text(char *dst, size_t len, const char *src)
{
	size_t i = 0;

	for (; src[i] && i + 1 < len; i++)
		dst[i] = (src[i] < 0x20 || src[i] == 0x7f) ? ' ' : src[i];
	dst[i] = '\0';
}

static void send_str(struct conn *c, const char *s)
{
	bufferevent_write(c->bev, s, strlen(s));
}

static void send_ehlo(struct conn *c)
{
	char line[300];

	snprintf(line, sizeof(line), "EHLO %s\r\n", c->w->run->o->helo);
	c->cap_starttls = c->cap_pipelining = c->cap_size = c->cap_auth = 0;
	send_str(c, line);
	c->st = CS_EHLO;
}

/* Ends the claimed message, if any, as accepted or failed under code. */
static void msg_done(struct conn *c, int ok, int code, const char *text)
{
	struct stats *s = &c->w->st;

	if (c->msg_id < 0)
		return;
	if (ok) {
		s->accepted++;
		atomic_fetch_add_explicit(&c->w->run->done_ok, 1, memory_order_relaxed);
		s->bytes +=
		    (long long)(c->w->run->msg.body_len + c->w->run->msg.header_len_estimate);
	} else {
		stats_error(s, code, text);
		atomic_fetch_add_explicit(&c->w->run->done_fail, 1, memory_order_relaxed);
	}
	c->msg_id = -1;
}

/* Starts connections until to_open is used up or ramp is reached. */
void worker_fill(struct worker *w)
{
	if (w->filling)
		return;
	w->filling = 1;
	while (w->to_open > 0 && w->in_setup < w->run->o->ramp && !w->run->aborting) {
		w->to_open--;
		conn_open(w);
	}
	w->filling = 0;
	if (!w->idle_mode && w->active == 0 && w->to_open == 0)
		event_base_loopexit(w->base, NULL);
}

/* Frees c and its socket; failed says the close came from an error. */
static void conn_close(struct conn *c, int failed, int code, const char *text)
{
	struct worker *w = c->w;
	struct bench_run *run = w->run;

	msg_done(c, 0, code, text);
	if (failed)
		w->st.conn_failed++;
	if (c->in_setup)
		w->in_setup--;
	if (c->bev && c->tls_done && !failed) {
		/* A clean TLS close (close_notify), so that the server does not
		 * log a truncated session; one non-blocking try is enough. */
		SSL *ssl = bufferevent_openssl_get_ssl(c->bev);

		if (ssl)
			SSL_shutdown(ssl);
	}
	if (c->bev)
		bufferevent_free(c->bev);
	if (!c->bev_owns_fd && c->fd >= 0)
		close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	w->active--;
	if (c->was_ready && w->idle_mode) {
		w->ready--;
		if (w->holding)
			w->closed_in_hold++;
	}
	free(c->sendbuf);
	if (c->wait)
		event_free(c->wait);
	free(c);
	if (!w->idle_mode && !run->aborting && run->next_msg < run->o->total)
		w->to_open++;
	if (w->idle_mode)
		idle_progress(w);
	worker_fill(w);
}

/* A failure before the connection was usable: gives up on the run when
 * nothing has ever worked (a configuration problem) or it keeps failing. */
static void setup_fail(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void setup_fail(struct conn *c, const char *fmt, ...)
{
	struct worker *w = c->w;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(w->last_setup_error, sizeof(w->last_setup_error), fmt, ap);
	va_end(ap);
	w->setup_fail_streak++;
	if (!w->idle_mode && (!w->run->ever_ready || w->setup_fail_streak > SETUP_FAIL_LIMIT))
		bench_abort(w->run, "%s", w->last_setup_error);
	conn_close(c, 1, ERR_DISCONNECT, w->last_setup_error);
}

/* Queues the next transaction, or QUIT when this connection is done. */
static void next_message(struct conn *c)
{
	struct bench_run *run = c->w->run;
	const struct bench_opts *o = run->o;
	long long id;

	if (run->aborting) {
		conn_close(c, 0, ERR_DISCONNECT, NULL);
		return;
	}
	if (o->per_conn > 0 && c->sent >= o->per_conn)
		goto quit;
	id = atomic_fetch_add(&run->next_msg, 1);
	if (id >= o->total)
		goto quit;
	c->msg_id = id;
	c->sent++;
	if (o->rate > 0) {
		/* Message id is due at t0 + id / rate; wait for it if early. */
		uint64_t due = run->t0 + (uint64_t)((double)id * 1e6 / o->rate);
		uint64_t now = now_usec();

		if (due > now + 100) {
			struct timeval tv = {(time_t)((due - now) / 1000000),
			                     (suseconds_t)((due - now) % 1000000)};

			if (c->wait == NULL) {
				c->wait = evtimer_new(c->w->base, wait_cb, c);
				if (c->wait == NULL)
					abort();
			}
			/* No reply is due while waiting: no read timeout either. */
			bufferevent_set_timeouts(c->bev, NULL, NULL);
			evtimer_add(c->wait, &tv);
			c->st = CS_WAIT;
			return;
		}
	}
	start_transaction(c);
	return;
quit:
	send_str(c, "QUIT\r\n");
	c->st = CS_QUIT;
}

static void wait_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	struct timeval tv = {c->w->run->o->timeout, 0};

	bufferevent_set_timeouts(c->bev, &tv, &tv);
	start_transaction(c);
}

/* Sends MAIL (and with pipelining RCPT and DATA) for the claimed message. */
static void start_transaction(struct conn *c)
{
	struct bench_run *run = c->w->run;
	const struct bench_opts *o = run->o;
	char cmd[1024], addr[300];
	int n;

	c->tx_code = 0;
	c->tx_text[0] = '\0';
	c->t_dot = 0;
	c->rcpt_base = atomic_fetch_add(&run->next_rcpt, o->rcpts) + 1;
	if (c->cap_size)
		n = snprintf(cmd, sizeof(cmd), "MAIL FROM:<%s> SIZE=%zu\r\n", run->msg.from,
		             run->msg.body_len + run->msg.header_len_estimate);
	else
		n = snprintf(cmd, sizeof(cmd), "MAIL FROM:<%s>\r\n", run->msg.from);
	bufferevent_write(c->bev, cmd, (size_t)n);
	c->st = CS_MAIL;
	c->rcpt_left = o->rcpts;
	c->rcpt_next = 0;
	if (o->pipelining) {
		struct evbuffer *out = bufferevent_get_output(c->bev);

		for (int i = 0; i < o->rcpts; i++) {
			msg_rcpt(&run->msg, c->rcpt_base + i, addr, sizeof(addr));
			evbuffer_add_printf(out, "RCPT TO:<%s>\r\n", addr);
		}
		evbuffer_add(out, "DATA\r\n", 6);
	}
}

/* The connection is ready for mail (or, in idle mode, to sit). */
static void conn_ready(struct conn *c)
{
	struct worker *w = c->w;

	c->in_setup = 0;
	w->in_setup--;
	c->was_ready = 1;
	w->setup_fail_streak = 0;
	w->st.conn_ready++;
	stats_setup(&w->st, now_usec() - c->t_start);
	w->run->ever_ready = 1;
	if (w->idle_mode) {
		/* Idle connections wait for the hold to end, not for a reply. */
		bufferevent_set_timeouts(c->bev, NULL, NULL);
		c->st = CS_IDLE;
		w->ready++;
		idle_progress(w);
	} else {
		next_message(c);
	}
	worker_fill(w);
}

/* Switches c to TLS on its socket; returns 1 (stop reading the old buffer). */
static int start_tls(struct conn *c)
{
	struct worker *w = c->w;
	SSL *ssl = SSL_new(w->run->ssl_ctx);
	struct timeval tv = {w->run->o->timeout, 0};

	if (ssl == NULL)
		abort();
	if (inet_pton(AF_INET, w->run->o->host, &(struct in_addr){0}) != 1 &&
	    inet_pton(AF_INET6, w->run->o->host, &(struct in6_addr){{{0}}}) != 1)
		SSL_set_tlsext_host_name(ssl, w->run->o->host);
	if (c->bev)
		bufferevent_free(c->bev);
	c->bev = bufferevent_openssl_socket_new(w->base, c->fd, ssl, BUFFEREVENT_SSL_CONNECTING,
	                                        BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL)
		abort();
	c->bev_owns_fd = 1;
	bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_set_timeouts(c->bev, &tv, &tv);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	c->st = CS_TLS;
	return 1;
}

/* Notes the EHLO keywords we care about from one reply line's text. */
static void ehlo_keyword(struct conn *c, const char *kw)
{
	struct {
		const char *name;
		int *flag;
	} caps[] = {
	    {"STARTTLS", &c->cap_starttls},
	    {"PIPELINING", &c->cap_pipelining},
	    {"SIZE", &c->cap_size},
	    {"AUTH", &c->cap_auth},
	};

	for (size_t i = 0; i < ARRAY_LEN(caps); i++) {
		size_t n = strlen(caps[i].name);

		if (strncasecmp(kw, caps[i].name, n) == 0 &&
		    (kw[n] == '\0' || kw[n] == ' ' || kw[n] == '='))
			*caps[i].flag = 1;
	}
}

/* After the last EHLO: AUTH, or ready. */
static void after_ehlo(struct conn *c)
{
	struct bench_run *run = c->w->run;

	if (run->o->pipelining && !c->cap_pipelining && !c->w->idle_mode) {
		bench_abort(run, "server does not advertise PIPELINING; drop --pipelining");
		conn_close(c, 1, ERR_PROTOCOL, NULL);
		return;
	}
	if (run->auth_line) {
		send_str(c, run->auth_line);
		c->st = CS_AUTH;
		return;
	}
	conn_ready(c);
}

/* The transaction failed part-way: remembers the first error. */
static void tx_error(struct conn *c, int code, const char *text)
{
	if (c->tx_code == 0) {
		c->tx_code = code;
		keep_text(c->tx_text, sizeof(c->tx_text), text);
	}
}

/* Ends a failed transaction that still needs RSET. */
static void tx_abort(struct conn *c)
{
	msg_done(c, 0, c->tx_code, c->tx_text);
	send_str(c, "RSET\r\n");
	c->st = CS_RSET;
}

/* Sends RCPT number rcpt_next (non-pipelined). */
static void send_rcpt(struct conn *c)
{
	char addr[300], cmd[320];
	int n;

	msg_rcpt(&c->w->run->msg, c->rcpt_base + c->rcpt_next, addr, sizeof(addr));
	n = snprintf(cmd, sizeof(cmd), "RCPT TO:<%s>\r\n", addr);
	bufferevent_write(c->bev, cmd, (size_t)n);
	c->rcpt_next++;
}

/*
 * Sends the headers and the body, ending with ".". Headers and body go out
 * as one buffer chunk, so over TLS they make one record and one write()
 * instead of two: the headers are placed right in front of a private copy
 * of the body. The chunk is a reference, valid until the final reply, and
 * the next message is only built after that reply.
 */
static void send_body(struct conn *c)
{
	struct bench_msg *m = &c->w->run->msg;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	char hdr[HDR_ROOM], rcpt[300];
	int n;

	msg_rcpt(m, c->rcpt_base, rcpt, sizeof(rcpt));
	n = msg_headers(m, c->msg_id, rcpt, hdr, sizeof(hdr));
	if (n < 0)
		n = 0;
	if (c->sendbuf == NULL && m->body_len <= PRIVATE_BODY_MAX) {
		c->sendbuf = xmalloc(HDR_ROOM + m->body_len);
		memcpy(c->sendbuf + HDR_ROOM, m->body, m->body_len);
	}
	if (c->sendbuf) {
		memcpy(c->sendbuf + HDR_ROOM - n, hdr, (size_t)n);
		evbuffer_add_reference(out, c->sendbuf + HDR_ROOM - n, (size_t)n + m->body_len,
		                       NULL, NULL);
	} else {
		evbuffer_add(out, hdr, (size_t)n);
		evbuffer_add_reference(out, m->body, m->body_len, NULL, NULL);
	}
	c->t_queued = now_usec();
	c->t_dot = 0;
	c->dot_pending = 1;
	c->st = CS_BODY;
}

/*
 * Acts on one complete reply. Returns 0 to keep reading, 1 when c's buffer
 * was replaced (STARTTLS) and -1 when c is gone.
 */
static int on_reply(struct conn *c, int code, const char *text)
{
	struct bench_run *run = c->w->run;
	int ok = code / 100 == 2;

	keep_text(c->last_reply, sizeof(c->last_reply), text);
	switch (c->st) {
	case CS_GREETING:
		if (code != 220) {
			setup_fail(c, "greeting from %s:%d: %s", run->o->host, run->o->port, text);
			return -1;
		}
		send_ehlo(c);
		return 0;
	case CS_EHLO:
		if (code != 250) {
			setup_fail(c, "EHLO rejected: %s", text);
			return -1;
		}
		if (run->o->security == BENCH_STARTTLS && !c->tls_done) {
			if (!c->cap_starttls) {
				bench_abort(run, "server does not offer STARTTLS (plain port? try "
				                 "--no-tls; implicit TLS port? try --tls)");
				conn_close(c, 1, ERR_PROTOCOL, NULL);
				return -1;
			}
			send_str(c, "STARTTLS\r\n");
			c->st = CS_STARTTLS;
			return 0;
		}
		after_ehlo(c);
		return run->aborting ? -1 : 0;
	case CS_STARTTLS:
		if (code != 220) {
			setup_fail(c, "STARTTLS rejected: %s", text);
			return -1;
		}
		if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
			setup_fail(c, "server sent data after its STARTTLS reply");
			return -1;
		}
		return start_tls(c);
	case CS_AUTH:
		if (code != 235) {
			if (code / 100 == 5)
				bench_abort(run, "AUTH PLAIN as %s rejected: %s", run->o->user,
				            text);
			setup_fail(c, "AUTH PLAIN as %s rejected: %s", run->o->user, text);
			return -1;
		}
		conn_ready(c);
		return run->aborting ? -1 : 0;
	case CS_MAIL:
		if (!ok)
			tx_error(c, code, text);
		if (run->o->pipelining) {
			c->st = CS_RCPT;
		} else if (!ok) {
			tx_abort(c);
		} else {
			c->st = CS_RCPT;
			send_rcpt(c);
		}
		break;
	case CS_RCPT:
		if (!ok)
			tx_error(c, code, text);
		c->rcpt_left--;
		if (run->o->pipelining) {
			if (c->rcpt_left == 0)
				c->st = CS_DATA;
		} else if (!ok) {
			tx_abort(c);
		} else if (c->rcpt_left > 0) {
			send_rcpt(c);
		} else {
			send_str(c, "DATA\r\n");
			c->st = CS_DATA;
		}
		break;
	case CS_DATA:
		if (code == 354) {
			send_body(c);
			return 0;
		}
		tx_error(c, code, text);
		tx_abort(c);
		break;
	case CS_BODY: {
		uint64_t now = now_usec();

		stats_latency(&c->w->st, now - (c->t_dot ? c->t_dot : c->t_queued));
		c->dot_pending = 0;
		if (ok && c->tx_code == 0)
			msg_done(c, 1, 0, NULL);
		else if (c->tx_code)
			msg_done(c, 0, c->tx_code, c->tx_text);
		else
			msg_done(c, 0, code, text);
		if (code == 421)
			break;
		next_message(c);
		return run->aborting ? -1 : 0;
	}
	case CS_RSET:
		if (code == 421)
			break;
		next_message(c);
		return run->aborting ? -1 : 0;
	case CS_QUIT:
		conn_close(c, 0, ERR_DISCONNECT, NULL);
		return -1;
	case CS_IDLE:
	case CS_WAIT:
	case CS_CONNECTING:
	case CS_TLS:
		/* Unsolicited (e.g. 421 idle timeout): the server is closing. */
		conn_close(c, 1, code, text);
		return -1;
	}
	if (code == 421) {
		/* Service closing: the server hangs up next. */
		tx_error(c, code, text);
		conn_close(c, 1, c->tx_code, c->tx_text);
		return -1;
	}
	return 0;
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	for (;;) {
		char line[512];
		size_t eol_len = 0, n, copy;
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
		int code, r;

		if (p.pos < 0) {
			if (evbuffer_get_length(in) > MAX_REPLY_LINE) {
				if (c->in_setup)
					setup_fail(c, "reply line too long in %s",
					           state_names[c->st]);
				else
					conn_close(c, 1, ERR_PROTOCOL, "reply line too long");
			}
			return;
		}
		n = (size_t)p.pos;
		copy = n < sizeof(line) - 1 ? n : sizeof(line) - 1;
		evbuffer_copyout(in, line, copy);
		line[copy] = '\0';
		evbuffer_drain(in, n + eol_len);
		if (n < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
		    line[2] < '0' || line[2] > '9' || (n > 3 && line[3] != ' ' && line[3] != '-')) {
			if (c->in_setup) {
				setup_fail(c, "not an SMTP reply in %s: \"%.80s\"%s",
				           state_names[c->st], line,
				           c->st == CS_GREETING ? " (TLS port? try --tls)" : "");
			} else {
				conn_close(c, 1, ERR_PROTOCOL, line);
			}
			return;
		}
		code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		if (c->st == CS_EHLO && n > 4)
			ehlo_keyword(c, line + 4);
		if (n > 3 && line[3] == '-')
			continue;
		r = on_reply(c, code, line);
		if (r != 0)
			return;
	}
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (c->dot_pending) {
		c->t_dot = now_usec();
		c->dot_pending = 0;
	}
}

/* Describes the TLS errors queued on bev into out. */
static void tls_errors(struct bufferevent *bev, char *out, size_t len)
{
	unsigned long e;
	size_t used = 0;

	out[0] = '\0';
	while ((e = bufferevent_get_openssl_error(bev)) != 0) {
		char one[256];

		/* libevent also queues plain errno values here; they carry no library. */
		if (ERR_GET_LIB(e) == 0)
			continue;
		ERR_error_string_n(e, one, sizeof(one));
		if (used < len)
			used +=
			    (size_t)snprintf(out + used, len - used, "%s%s", used ? "; " : "", one);
	}
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	struct worker *w = c->w;
	const struct bench_opts *o = w->run->o;
	int err = EVUTIL_SOCKET_ERROR();
	char detail[512];

	if (what & BEV_EVENT_CONNECTED) {
		if (c->st == CS_CONNECTING) {
			w->st.conn_opened++;
			if (o->security == BENCH_TLS)
				start_tls(c);
			else
				c->st = CS_GREETING;
		} else if (c->st == CS_TLS) {
			c->tls_done = 1;
			if (o->security == BENCH_TLS)
				c->st = CS_GREETING;
			else
				send_ehlo(c);
		}
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		if (c->st == CS_CONNECTING)
			setup_fail(c, "connect to %s:%d: timed out after %ds", o->host, o->port,
			           o->timeout);
		else if (c->st == CS_GREETING && o->security != BENCH_TLS)
			setup_fail(c,
			           "no greeting within %ds (implicit-TLS port? try --tls; or the "
			           "server is out of file descriptors or connection slots)",
			           o->timeout);
		else if (c->in_setup)
			setup_fail(c, "timeout (%ds) in %s", o->timeout, state_names[c->st]);
		else
			conn_close(c, 1, ERR_TIMEOUT, NULL);
		return;
	}
	if (c->st == CS_CONNECTING) {
		w->last_errno = err;
		setup_fail(c, "connect to %s:%d: %s%s", o->host, o->port, strerror(err),
		           err == EADDRNOTAVAIL ? " (out of local ports?)" : "");
		return;
	}
	if (c->st == CS_TLS) {
		tls_errors(bev, detail, sizeof(detail));
		if (detail[0] == '\0')
			snprintf(detail, sizeof(detail), "%s",
			         (what & BEV_EVENT_EOF) || err == 0 ? "connection closed by server"
			                                            : strerror(err));
		setup_fail(c, "TLS handshake with %s:%d failed: %s%s", o->host, o->port, detail,
		           strstr(detail, "wrong version number") && o->security == BENCH_TLS
		               ? " (plain/STARTTLS port? try --starttls)"
		               : "");
		return;
	}
	if (c->st == CS_QUIT) {
		conn_close(c, 0, ERR_DISCONNECT, NULL);
		return;
	}
	if (what & BEV_EVENT_EOF)
		snprintf(detail, sizeof(detail), "connection closed by server in %s%s%s",
		         state_names[c->st], c->last_reply[0] ? " after: " : "", c->last_reply);
	else
		snprintf(detail, sizeof(detail), "connection error in %s: %s", state_names[c->st],
		         c->tls_done ? "TLS error" : strerror(err));
	if (c->tls_done && !(what & BEV_EVENT_EOF)) {
		char tls[256];

		tls_errors(bev, tls, sizeof(tls));
		if (tls[0]) {
			size_t l = strlen(detail);
			snprintf(detail + l, sizeof(detail) - l, " (%s)", tls);
		}
	}
	if (c->in_setup)
		setup_fail(c, "%s", detail);
	else
		conn_close(c, 1, c->tx_code ? c->tx_code : ERR_DISCONNECT,
		           c->tx_code ? c->tx_text : detail);
}

/* Starts one connection; returns 0, or -1 when it could not even begin. */
static int conn_open(struct worker *w)
{
	struct bench_run *run = w->run;
	struct timeval tv = {run->o->timeout, 0};
	struct conn *c;
	int fd, one = 1;

	fd = socket(run->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int err = errno;
		struct rlimit rl = {0, 0};

		getrlimit(RLIMIT_NOFILE, &rl);
		w->last_errno = err;
		if (err == EMFILE || err == ENFILE)
			bench_abort(run,
			            "socket: %s: sendgate-bench may open only %llu files "
			            "(RLIMIT_NOFILE); raise the hard limit (ulimit -Hn, "
			            "/etc/security/limits.conf) or lower -c/--idle",
			            strerror(err), (unsigned long long)rl.rlim_cur);
		else
			bench_abort(run, "socket: %s", strerror(err));
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c = xcalloc(1, sizeof(*c));
	c->w = w;
	c->fd = fd;
	c->msg_id = -1;
	c->st = CS_CONNECTING;
	c->in_setup = 1;
	c->t_start = now_usec();
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
	w->active++;
	w->in_setup++;
	c->bev = bufferevent_socket_new(w->base, fd, 0);
	if (c->bev == NULL)
		abort();
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_set_timeouts(c->bev, &tv, &tv);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&run->addr, (int)run->addrlen) <
	    0) {
		int err = errno;

		w->last_errno = err;
		setup_fail(c, "connect to %s:%d: %s%s", run->o->host, run->o->port, strerror(err),
		           err == EADDRNOTAVAIL ? " (out of local ports?)" : "");
		return -1;
	}
	return 0;
}

void worker_close_all(struct worker *w)
{
	w->holding = 0;
	while (w->conns) {
		/* A message in flight when the run stops has no outcome: it is
		 * reported as not sent, not as failed. */
		w->conns->msg_id = -1;
		conn_close(w->conns, 0, ERR_DISCONNECT, NULL);
	}
}
