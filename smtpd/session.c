/*
 * session: one SMTP submission connection. An explicit state, a command
 * table, and one transaction object per MAIL..end of data. While the
 * session waits on Postgres or the spool it stops consuming input
 * (pipelined bytes stay buffered) and resumes when the answer comes;
 * answers find the session by id, so a session that closed meanwhile is
 * simply not found.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "dkim/dkim.h"
#include "smtpd/server.h"
#include "smtpd/smtpd.h"

#define SASL_LINE_MAX 12288 /* RFC 4954 4: AUTH lines may be this long */
#define OUTPUT_HIGH 65536   /* stop reading commands while replies pile up */
#define INPUT_HIGH 262144

/*
 * A failed AUTH (535, or the 421 of the last allowed failure) is answered
 * no sooner than this after its credentials arrived. store_auth answers a
 * known or remembered-unknown username from memory but asks Postgres about
 * a name it has never seen, so without a floor the reply's latency would
 * tell which usernames exist; the floor, well above a Postgres round trip,
 * hides that and slows password guessing on one connection. A lookup
 * slower than the floor still shows, so keep it above the database's
 * usual latency. A success is answered at once: the 235 says it anyway.
 */
#define AUTH_FAIL_MIN_MSEC 250

enum state {
	ST_GREETING, /* greeting held back (tarpit) */
	ST_CONNECTED,
	ST_READY, /* after EHLO/HELO */
	ST_MAIL,  /* after MAIL */
	ST_RCPT,  /* after a RCPT */
	ST_DATA,  /* reading the message */
	ST_AUTH,  /* waiting for a SASL continuation line */
	ST_TLS,	  /* STARTTLS answered, handshake pending */
};

#define SB(st) (1u << (st))

enum auth_step { AUTH_NONE, AUTH_PLAIN_WAIT, AUTH_LOGIN_USER, AUTH_LOGIN_PASS };

struct txn {
	struct smtp_path from;
	struct smtp_mail_params params;
	char **rcpts;
	size_t nrcpts;
	struct spool_txn *sp;
	struct data_reader dr;
	struct buf hdr;
	struct buf body;
	struct buf final;
	struct dkim_body *bodyhash; /* NULL when signing is off */
	int spool_errno;
	int eod_step;
	char from_domain[256];
	char sender_domain[256];
	uint64_t t_eod;
	uint64_t sign_usec; /* signer queue wait + signing, 0 if not signed */
	char qid[QUEUE_ID_LEN + 1]; /* set once queued */
};

struct session {
	uint64_t id;
	struct server *srv;
	struct bufferevent *bev;
	evutil_socket_t fd;
	char addr[PEER_TEXT_MAX]; /* the client's address, for logs */
	char peer[PEER_TEXT_MAX]; /* its key in the per-address limits */
	enum state state;
	int implicit_tls;
	int bev_owns_fd; /* TLS bufferevents close the socket themselves */
	int tls;
	int esmtp;
	int authed;
	/* The last MAIL got a 4xx: the RCPT and DATA a pipelining client sent
	 * behind it get 503 but are not the client's errors (RFC 2920). */
	int mail_deferred;
	int waiting;
	int in_process;
	int close_now;
	int close_after_write;
	size_t unflushed; /* reply bytes added since the last flush_direct */
	int eof; /* the client sent FIN: finish what is buffered, then close */
	int discarding;
	enum auth_step auth_step;
	int auth_failures;
	int errors;
	int messages;
	uint64_t started;
	char helo[256];
	char user[SASL_MAX_FIELD + 1];
	char login_user[SASL_MAX_FIELD + 1];
	struct tenant_ref who;
	char tls_desc[96];
	struct txn *tx;
	struct event *ev_delay;
	uint64_t t_auth;        /* when the credentials being checked arrived */
	struct event *ev_auth;  /* holds back a failed AUTH's reply */
	const char *auth_reply; /* that reply, a string constant */
	int auth_reply_close;   /* ... and whether the session ends after it */
};

static struct server *srv_of_callbacks; /* one server per process */

static void process_input(struct session *s);
static void session_free(struct session *s);
static void setup_bev(struct session *s);

/* ---- replies ---------------------------------------------------------- */

static void reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply(struct session *s, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	n = smtp_reply_line(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n == 0)
		return;
	if (line[0] == '4' || line[0] == '5')
		s->srv->metrics.replies[line[0] - '4']++;
	/* flush_direct may have turned writing off after its last write. */
	if (!(bufferevent_get_enabled(s->bev) & EV_WRITE))
		bufferevent_enable(s->bev, EV_WRITE);
	bufferevent_write(s->bev, line, n);
	s->unflushed += n;
}

/*
 * Writes the replies of this pass over the input straight to the TLS
 * connection. Left to the bufferevent, each reply would turn the socket's
 * write interest on, wait a loop turn for EPOLLOUT, write, and turn it off:
 * two epoll_ctl calls and a loop turn per reply, a third of the loop
 * thread's system calls per message. Here the write happens now, and the
 * interest switched on and off within the same turn cancels out in the
 * event base's changelist (server.c), so no epoll_ctl is made at all.
 *
 * Only when the output holds nothing but this pass's replies (so no write
 * of the bufferevent is half done: OpenSSL wants a blocked write repeated
 * with the same bytes) and nothing waits on the write callback (closing,
 * STARTTLS). Whatever is not written here stays with the bufferevent,
 * which then writes it as before: this only ever saves work. For "this
 * pass's replies" to hold, every reply counted in s->unflushed is followed
 * by flush_direct (end of process_input) before control returns to the
 * loop, or the count is cleared (greet, reply_close). A direct write never
 * runs the write callback: anything that needs it must stay excluded.
 */
static void flush_direct(struct session *s)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	size_t len = evbuffer_get_length(out);
	int mine = len == s->unflushed;
	unsigned char *p;
	SSL *ssl;
	int n;

	s->unflushed = 0;
	if (len == 0 || !mine || !s->tls || s->close_after_write || s->close_now ||
	    len > OUTPUT_HIGH)
		return;
	ssl = bufferevent_openssl_get_ssl(s->bev);
	if (ssl == NULL || (p = evbuffer_pullup(out, -1)) == NULL)
		return;
	ERR_clear_error();
	n = SSL_write(ssl, p, (int)len);
	if (n <= 0) {
		/* Blocked or failed: the bufferevent repeats the write (the
		 * same bytes, as OpenSSL requires) and reports the failure;
		 * the reason is logged here, where OpenSSL gave it. */
		int e = SSL_get_error(ssl, n);
		if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
			log_debug("event=reply_write_blocked client=%s bytes=%zu", s->addr, len);
		else
			tls_log_error(s->addr, "write", 0, e);
		ERR_clear_error();
		return;
	}
	evbuffer_drain(out, (size_t)n);
	if ((size_t)n == len)
		bufferevent_disable(s->bev, EV_WRITE); /* reply() turns it on again */
}

/* Sends the reply, then closes once it is written. */
static void reply_close(struct session *s, const char *text)
{
	reply(s, "%s", text);
	s->close_after_write = 1;
	bufferevent_disable(s->bev, EV_READ);
	s->unflushed = 0; /* the bufferevent writes it, then on_write closes */
}

/* Counts a failed command; past max_errors the session ends. */
static int count_error(struct session *s)
{
	if (++s->errors >= s->srv->cfg->max_errors) {
		reply_close(s, "421 4.7.0 Too many errors in this session; closing connection");
		return -1;
	}
	return 0;
}

static void reply_err(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply_err(struct session *s, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	reply(s, "%s", line);
	count_error(s);
}

/* Copies printable ASCII of p into out, replacing anything else by '?'. */
static void sanitize(const char *p, size_t n, char *out, size_t outlen)
{
	size_t i, o = 0;

	for (i = 0; i < n && o + 1 < outlen; i++) {
		unsigned char c = (unsigned char)p[i];
		out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	out[o] = '\0';
}

/* ---- transactions ----------------------------------------------------- */

static void txn_free(struct txn *tx)
{
	size_t i;

	if (tx == NULL)
		return;
	if (tx->sp)
		queue_abort(tx->sp);
	for (i = 0; i < tx->nrcpts; i++)
		free(tx->rcpts[i]);
	free(tx->rcpts);
	buf_free(&tx->hdr);
	buf_free(&tx->body);
	buf_free(&tx->final);
	if (tx->bodyhash)
		dkim_body_free(tx->bodyhash);
	free(tx);
}

/* Ends the transaction as a unit (RSET, new EHLO, STARTTLS, after DATA). */
static void txn_reset(struct session *s)
{
	txn_free(s->tx);
	s->tx = NULL;
	s->mail_deferred = 0;
	if (s->state == ST_MAIL || s->state == ST_RCPT || s->state == ST_DATA)
		s->state = ST_READY;
}

/* All state changes go through here, so the log can tell the story. */
static void set_state(struct session *s, enum state st)
{
	s->state = st;
}

/* ---- async plumbing --------------------------------------------------- */

static void wait_begin(struct session *s)
{
	s->waiting = 1;
}

/* An answer arrived: continue with buffered input. */
static void wait_end(struct session *s)
{
	s->waiting = 0;
	process_input(s);
}

/* ---- commands --------------------------------------------------------- */

static void cmd_helo(struct session *s, const char *arg, size_t len, int esmtp)
{
	const struct config *cfg = s->srv->cfg;
	size_t i;

	if (len == 0) {
		reply_err(s, "501 5.5.4 %s requires a domain name or address literal",
			  esmtp ? "EHLO" : "HELO");
		return;
	}
	for (i = 0; i < len; i++)
		if ((unsigned char)arg[i] <= ' ' || (unsigned char)arg[i] >= 0x7f) {
			reply_err(s, "501 5.5.4 %s argument must be one domain name or address literal",
				  esmtp ? "EHLO" : "HELO");
			return;
		}
	txn_reset(s);
	sanitize(arg, len, s->helo, sizeof(s->helo));
	s->esmtp = esmtp;
	set_state(s, ST_READY);
	if (!esmtp) {
		reply(s, "250 %s", cfg->hostname);
		return;
	}
	reply(s, "250-%s", cfg->hostname);
	reply(s, "250-PIPELINING");
	reply(s, "250-SIZE %zu", cfg->max_message_size);
	reply(s, "250-8BITMIME");
	reply(s, "250-ENHANCEDSTATUSCODES");
	if (!s->tls)
		reply(s, "250-STARTTLS");
	else if (!s->authed)
		reply(s, "250-AUTH PLAIN LOGIN");
	reply(s, "250 SMTPUTF8");
}

static void cmd_starttls(struct session *s, const char *arg, size_t len)
{
	const char *refusal = tls_starttls_refusal(s->tls, len);

	if (refusal) {
		reply_err(s, "%s", refusal);
		return;
	}
	reply(s, "220 2.0.0 Ready to start TLS");
	if (tls_starttls_injected(s->bev, s->addr)) {
		s->close_now = 1;
		return;
	}
	/* The upgrade happens once the 220 is written (write callback). */
	bufferevent_disable(s->bev, EV_READ);
	set_state(s, ST_TLS);
}

/* Swaps the plain bufferevent for a TLS one on the same socket. */
static void start_tls(struct session *s)
{
	if (tls_upgrade(s->srv, s->fd, &s->bev) == -1) {
		s->close_now = 1;
		return;
	}
	s->bev_owns_fd = 1;
	/* RFC 3207 4.2: forget everything learnt before the handshake. */
	txn_reset(s);
	s->helo[0] = '\0';
	s->esmtp = 0;
	set_state(s, ST_CONNECTED);
	setup_bev(s);
}

/* Sends the held-back reply of a failed AUTH and resumes reading input. */
static void auth_reply_send(struct session *s)
{
	/* A read timeout's 421 may have ended the session meanwhile. */
	if (!s->close_after_write) {
		if (s->auth_reply_close)
			reply_close(s, s->auth_reply);
		else
			reply(s, "%s", s->auth_reply);
	}
	s->auth_reply = NULL;
	wait_end(s);
}

static void auth_reply_due(evutil_socket_t fd, short what, void *arg);

/* Arms the timer for what is left until the failed AUTH may be answered;
 * returns 0, or -1 when that time has come. */
static int auth_reply_arm(struct session *s)
{
	uint64_t due = s->t_auth + (uint64_t)AUTH_FAIL_MIN_MSEC * 1000u;
	uint64_t now = now_usec();
	struct timeval tv;

	if (now >= due)
		return -1;
	if (s->ev_auth == NULL)
		s->ev_auth = evtimer_new(s->srv->base, auth_reply_due, s);
	if (s->ev_auth == NULL)
		abort();
	tv.tv_sec = (time_t)((due - now) / 1000000u);
	tv.tv_usec = (suseconds_t)((due - now) % 1000000u);
	evtimer_add(s->ev_auth, &tv);
	return 0;
}

static void auth_reply_due(evutil_socket_t fd, short what, void *arg)
{
	/* libevent counts from the time cached at the top of the loop pass,
	 * so the timer may fire a little early: never answer early. */
	if (auth_reply_arm(arg) == -1)
		auth_reply_send(arg);
}

/*
 * Answers a failed AUTH with text (a string constant) once
 * AUTH_FAIL_MIN_MSEC have passed since its credentials arrived, from a
 * timer so the loop never blocks. The session stays waiting until then:
 * pipelined commands stay buffered and are handled after the reply; if
 * the client goes away first, session_free cancels the timer. The timer
 * belongs to the session and dies with it, so it may carry the pointer.
 */
static void auth_reply_later(struct session *s, const char *text, int then_close)
{
	s->auth_reply = text;
	s->auth_reply_close = then_close;
	if (auth_reply_arm(s) == -1)
		auth_reply_send(s);
}

/*
 * The limits that apply to tenant_id now: its own (store cache), else the
 * configuration's defaults; 0 is no limit.
 */
/* A tenant's own limit (>= 0; -1: none of its own), else the configuration's. */
static int limit_or(int own, int dflt)
{
	return own >= 0 ? own : dflt;
}

/*
 * Counts a session that just authenticated against its tenant's limit of
 * sessions: 0 with s->who set (session_free uncounts it), or -1 after the
 * 421 that ends it (the tenant has that many open). Only authenticated
 * sessions count: before AUTH nobody knows the tenant, and the per-address
 * limits cover those.
 */
static int tenant_admit(struct session *s, const struct tenant_ref *who)
{
	const struct tenant_limits *lim = store_tenant_limits(s->srv->store, who->tenant_id);
	char text[200], q[600];
	int max = limit_or(lim ? lim->max_connections : -1, s->srv->cfg->tenant_max_connections);

	if (tenantlim_open(s->srv->tenantlim, who->tenant_id, max, now_usec())) {
		s->who = *who; /* authed from here: counted until session_free */
		return 0;
	}
	log_warn("event=tenant_limit tenant=%s limit=connections value=%d client=%s user=%s",
		 who->tenant, max, s->addr, log_quote(q, sizeof(q), s->user));
	snprintf(text, sizeof(text),
		 "421 4.7.0 Tenant %s has %d connections open, its limit being %d; try again "
		 "later",
		 who->tenant, tenantlim_sessions(s->srv->tenantlim, who->tenant_id), max);
	reply_close(s, text);
	return -1;
}

static void auth_result(uint64_t cookie, int ok, const struct tenant_ref *who)
{
	struct session *s = server_session(srv_of_callbacks, cookie);

	if (s == NULL)
		return;
	if (ok == 1 && tenant_admit(s, who) == -1) {
		s->user[0] = '\0';
		wait_end(s);
	} else if (ok == 1) {
		s->authed = 1;
		char q[600];
		log_info("event=auth client=%s user=%s tenant=%s result=ok", s->addr,
			 log_quote(q, sizeof(q), s->user), who->tenant);
		reply(s, "235 2.7.0 Authentication successful");
		wait_end(s);
	} else if (ok == 0) {
		/* Counted now, not when the reply goes: hanging up during the
		 * delay must not spare a guesser the per-address lockout. */
		s->auth_failures++;
		server_auth_failed(s->srv, s->peer);
		char q[600];
		log_warn("event=auth client=%s user=%s result=failed failures=%d", s->addr,
			 log_quote(q, sizeof(q), s->user), s->auth_failures);
		s->user[0] = '\0';
		if (s->auth_failures >= s->srv->cfg->auth_max_failures)
			auth_reply_later(
			    s, "421 4.7.0 Too many authentication failures; closing connection", 1);
		else
			auth_reply_later(s, "535 5.7.8 Authentication credentials invalid", 0);
	} else {
		/*
		 * Postgres could not be asked. This gets the same floor: the
		 * 454 only ever comes for a username not in memory, which the
		 * delay cannot hide, but no failure is then quicker than
		 * another, and a client retrying in a loop through an outage
		 * (or probing names during one) is slowed down like a guesser.
		 * A real client loses 250 ms on a path that failed anyway.
		 */
		s->user[0] = '\0';
		auth_reply_later(s, "454 4.7.0 Temporary authentication failure; try again later", 0);
	}
}

/* Checks user/secret; the secret is wiped once hashed. */
static void auth_check(struct session *s, const char *user, char *pass)
{
	snprintf(s->user, sizeof(s->user), "%s", user);
	s->t_auth = now_usec();
	wait_begin(s);
	store_auth(s->srv->store, user, pass, auth_result, s->id);
	explicit_bzero(pass, strlen(pass));
}

static void auth_plain(struct session *s, const char *b64, size_t len)
{
	char user[SASL_MAX_FIELD + 1], pass[SASL_MAX_FIELD + 1];

	if (sasl_plain_decode(b64, len, user, pass) == -1) {
		reply_err(s, "501 5.5.2 Cannot decode the AUTH PLAIN response");
		return;
	}
	auth_check(s, user, pass);
	explicit_bzero(pass, sizeof(pass));
}

static void cmd_auth(struct session *s, const char *arg, size_t len)
{
	const char *sp = memchr(arg, ' ', len);
	size_t mlen = sp ? (size_t)(sp - arg) : len;
	const char *ir = sp ? sp + 1 : NULL;
	size_t irlen = sp ? len - mlen - 1 : 0;

	if (!s->tls) {
		reply_err(s, "538 5.7.11 Encryption required: use STARTTLS before AUTH");
		return;
	}
	if (s->authed) {
		reply_err(s, "503 5.5.1 Already authenticated");
		return;
	}
	if (!s->esmtp) {
		reply_err(s, "503 5.5.1 AUTH needs EHLO, not HELO");
		return;
	}
	if (mlen == 5 && strncasecmp(arg, "PLAIN", 5) == 0) {
		if (ir == NULL) {
			s->auth_step = AUTH_PLAIN_WAIT;
			set_state(s, ST_AUTH);
			reply(s, "334 ");
			return;
		}
		if (irlen == 1 && ir[0] == '=') {
			reply_err(s, "501 5.5.2 Empty AUTH PLAIN response");
			return;
		}
		auth_plain(s, ir, irlen);
		return;
	}
	if (mlen == 5 && strncasecmp(arg, "LOGIN", 5) == 0) {
		set_state(s, ST_AUTH);
		if (ir == NULL) {
			s->auth_step = AUTH_LOGIN_USER;
			reply(s, "334 VXNlcm5hbWU6"); /* "Username:" */
			return;
		}
		if (sasl_login_decode(ir, irlen, s->login_user) == -1) {
			set_state(s, ST_READY);
			reply_err(s, "501 5.5.2 Cannot decode the AUTH LOGIN response");
			return;
		}
		s->auth_step = AUTH_LOGIN_PASS;
		reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
		return;
	}
	reply_err(s, "504 5.5.4 Unrecognized authentication mechanism; use PLAIN or LOGIN");
}

/* A line typed in answer to a 334 challenge. */
static void auth_continue(struct session *s, const char *line, size_t len)
{
	char pass[SASL_MAX_FIELD + 1];
	enum auth_step step = s->auth_step;

	s->auth_step = AUTH_NONE;
	set_state(s, s->esmtp || s->helo[0] ? ST_READY : ST_CONNECTED);
	if (len == 1 && line[0] == '*') {
		reply_err(s, "501 5.0.0 Authentication cancelled");
		return;
	}
	switch (step) {
	case AUTH_PLAIN_WAIT:
		auth_plain(s, line, len);
		return;
	case AUTH_LOGIN_USER:
		if (sasl_login_decode(line, len, s->login_user) == -1) {
			reply_err(s, "501 5.5.2 Cannot decode the AUTH LOGIN response");
			return;
		}
		s->auth_step = AUTH_LOGIN_PASS;
		set_state(s, ST_AUTH);
		reply(s, "334 UGFzc3dvcmQ6");
		return;
	case AUTH_LOGIN_PASS:
		if (sasl_login_decode(line, len, pass) == -1) {
			reply_err(s, "501 5.5.2 Cannot decode the AUTH LOGIN response");
			return;
		}
		auth_check(s, s->login_user, pass);
		explicit_bzero(pass, sizeof(pass));
		return;
	default:
		return;
	}
}

/*
 * The reply to a sender domain that did not pass store_domain_check, for
 * MAIL FROM and for the From/Sender header fields alike: ok and why are
 * the check's answer (0 refused, -1 not known), where names where the
 * domain was found ("Envelope sender", "From header", "Sender header").
 * Writes the text after the code ("5.7.1 ...") into text and returns the
 * code. Another tenant's domain gets the same sentence as an unknown one,
 * so a reply never tells that a domain exists elsewhere.
 */
static int domain_refusal(struct session *s, int ok, const char *where, const char *domain,
			  const char *why, char *text, size_t textlen)
{
	const char *failing;

	if (why == NULL)
		why = "unknown";
	if (ok < 0) {
		snprintf(text, textlen, "4.3.0 %s domain %s cannot be checked right now; try again later",
			 where, domain);
		return 451;
	}
	if (strcmp(why, "other_tenant") == 0 || strcmp(why, "not_found") == 0) {
		snprintf(text, textlen, "5.7.1 %s domain %s is not a sending domain of tenant %s", where,
			 domain, s->who.tenant);
	} else if (strcmp(why, "broken") == 0) {
		failing = store_domain_failing(s->srv->store, domain);
		snprintf(text, textlen,
			 "5.7.1 %s domain %s of tenant %s has broken DNS records (%s) and its grace "
			 "period is over",
			 where, domain, s->who.tenant, failing ? failing : "see sendgatectl domain show");
	} else {
		snprintf(text, textlen, "5.7.1 %s domain %s of tenant %s is not verified yet (state %s)",
			 where, domain, s->who.tenant, why);
	}
	return 550;
}

/*
 * Takes a message from the tenant's bucket as its MAIL FROM is accepted:
 * 1, 0 after the 451 when the tenant is over its messages per minute, or
 * -1 after the 550 when it is suspended.
 */
static int tenant_message_allowed(struct session *s)
{
	const struct tenant_limits *lim = store_tenant_limits(s->srv->store, s->who.tenant_id);
	int per_minute;

	if (lim != NULL && lim->suspended) {
		char q[300], why[200];
		log_warn("event=tenant_suspended_refused tenant=%s client=%s reason=%s", s->who.tenant,
			 s->addr, log_quote(q, sizeof(q), lim->suspended_reason));
		/* The reason comes from the database: printable ASCII only in
		 * a reply line (no CR LF to forge replies), and short. */
		sanitize(lim->suspended_reason, strlen(lim->suspended_reason), why, sizeof(why));
		/* Permanent: the application should not queue and retry it. */
		reply(s, "550 5.7.1 Tenant %s is suspended: %s; the platform must lift the "
			 "suspension before it can send",
		      s->who.tenant, why[0] ? why : "no reason given");
		return -1;
	}
	per_minute = limit_or(lim ? lim->max_messages_per_minute : -1,
			      s->srv->cfg->tenant_messages_per_minute);
	if (tenantlim_take(s->srv->tenantlim, s->who.tenant_id, per_minute, now_usec()))
		return 1;
	log_warn("event=tenant_limit tenant=%s limit=messages_per_minute value=%d client=%s",
		 s->who.tenant, per_minute, s->addr);
	/* Not the client's error (not counted), and no reason to hang up:
	 * the same session may send again in a moment. */
	reply(s, "451 4.7.1 Tenant %s is over its limit of %d messages per minute; try again later",
	      s->who.tenant, per_minute);
	return 0;
}

/* RCPT or DATA without a transaction. */
static void mail_first(struct session *s)
{
	if (s->mail_deferred)
		reply(s, "503 5.5.1 MAIL first (the sender was deferred: see the 4xx above)");
	else
		reply_err(s, "503 5.5.1 MAIL first");
}

static void mail_domain_result(uint64_t cookie, int ok, const char *why)
{
	struct session *s = server_session(srv_of_callbacks, cookie);
	int allowed;

	if (s == NULL)
		return;
	if (ok == 1 && (allowed = tenant_message_allowed(s)) != 1) {
		txn_free(s->tx);
		s->tx = NULL;
		s->mail_deferred = allowed == 0; /* a 4xx, not a refusal */
	} else if (ok == 1) {
		set_state(s, ST_MAIL);
		reply(s, "250 2.1.0 Sender <%s> ok", s->tx->from.addr);
	} else {
		char text[512];
		int code = domain_refusal(s, ok, "Envelope sender", s->tx->from.domain, why, text,
					  sizeof(text));
		txn_free(s->tx);
		s->tx = NULL;
		/* A database that cannot answer is not the client's error. */
		if (code >= 500) {
			reply_err(s, "%d %s", code, text);
		} else {
			reply(s, "%d %s", code, text);
			s->mail_deferred = 1;
		}
	}
	wait_end(s);
}

static void cmd_mail(struct session *s, const char *arg, size_t len)
{
	const struct config *cfg = s->srv->cfg;
	struct smtp_error err;
	struct txn *tx;

	if (!s->authed) {
		reply_err(s, "530 5.7.0 Authentication required: AUTH before MAIL");
		return;
	}
	if (s->tx) {
		reply_err(s, "503 5.5.1 Nested MAIL command: RSET first");
		return;
	}
	s->mail_deferred = 0;
	tx = xcalloc(1, sizeof(*tx));
	if (smtp_parse_mail_from(arg, len, (size_t)cfg->max_path_length, &tx->from, &tx->params,
				 &err) == -1) {
		free(tx);
		reply_err(s, "%d %s %s", err.code, err.enh, err.text);
		return;
	}
	if (tx->from.is_null) {
		free(tx);
		reply_err(s, "550 5.7.1 The null sender <> is not accepted for submission");
		return;
	}
	if (tx->params.size > 0 && (size_t)tx->params.size > cfg->max_message_size) {
		long long size = tx->params.size;
		free(tx);
		reply_err(s, "552 5.3.4 Declared size %lld exceeds the limit of %zu bytes", size,
			  cfg->max_message_size);
		return;
	}
	s->tx = tx;
	wait_begin(s);
	store_domain_check(s->srv->store, s->who.tenant_id, tx->from.domain, mail_domain_result,
			   s->id);
}

static void cmd_rcpt(struct session *s, const char *arg, size_t len)
{
	const struct config *cfg = s->srv->cfg;
	struct smtp_path path;
	struct smtp_error err;

	if (s->tx == NULL || (s->state != ST_MAIL && s->state != ST_RCPT)) {
		mail_first(s);
		return;
	}
	if (smtp_parse_rcpt_to(arg, len, (size_t)cfg->max_path_length, s->tx->params.smtputf8, &path,
			       &err) == -1) {
		reply_err(s, "%d %s %s", err.code, err.enh, err.text);
		return;
	}
	if (s->tx->nrcpts >= (size_t)cfg->max_recipients) {
		reply(s, "452 4.5.3 Too many recipients: at most %d per message", cfg->max_recipients);
		return;
	}
	{
		char lower[SMTP_ADDR_MAX + 1], reason[200], when[32];
		time_t since;
		struct tm tm;
		snprintf(lower, sizeof(lower), "%s", path.addr);
		str_lower(lower);
		if (store_suppressed(s->srv->store, s->who.tenant_id, lower, reason, sizeof(reason),
				     &since)) {
			gmtime_r(&since, &tm);
			strftime(when, sizeof(when), "%Y-%m-%d", &tm);
			/* An ordinary refusal, not a protocol error: not counted. */
			reply(s,
			      "550 5.1.1 Recipient <%s> is on the suppression list of tenant %s "
			      "since %s (%s)",
			      path.addr, s->who.tenant, when, reason);
			return;
		}
	}
	s->tx->rcpts = xrealloc(s->tx->rcpts, (s->tx->nrcpts + 1) * sizeof(char *));
	s->tx->rcpts[s->tx->nrcpts++] = xstrdup(path.addr);
	set_state(s, ST_RCPT);
	reply(s, "250 2.1.5 Recipient <%s> ok", path.addr);
}

static void cmd_data(struct session *s, const char *arg, size_t len)
{
	const struct config *cfg = s->srv->cfg;
	struct txn *tx = s->tx;

	if (len) {
		reply_err(s, "501 5.5.4 DATA takes no argument");
		return;
	}
	if (tx == NULL) {
		mail_first(s);
		return;
	}
	if (tx->nrcpts == 0) {
		reply_err(s, "554 5.5.1 No valid recipients");
		return;
	}
	tx->sp = queue_begin(s->srv->spool);
	if (tx->sp == NULL) {
		log_err("event=spool_error client=%s op=begin error=\"%s\"", s->addr, strerror(errno));
		reply(s, "451 4.3.0 Cannot store messages right now; try again later");
		return;
	}
	data_reader_init(&tx->dr, (size_t)cfg->max_text_line, cfg->max_message_size,
			 cfg->max_header_size);
	buf_init(&tx->hdr, cfg->max_header_size + 2);
	buf_init(&tx->body, (size_t)1 << 30);
	buf_init(&tx->final, cfg->max_header_size + 8192);
	if (s->srv->signer)
		tx->bodyhash = dkim_body_new((enum dkim_canon)s->srv->bcanon);
	set_state(s, ST_DATA);
	bufferevent_set_timeouts(s->bev,
				 &(struct timeval){cfg->data_timeout, 0},
				 &(struct timeval){cfg->command_timeout, 0});
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void cmd_rset(struct session *s, const char *arg, size_t len)
{
	txn_reset(s);
	reply(s, "250 2.0.0 Ok");
}

static void cmd_noop(struct session *s, const char *arg, size_t len)
{
	reply(s, "250 2.0.0 Ok");
}

static void cmd_quit(struct session *s, const char *arg, size_t len)
{
	reply_close(s, "221 2.0.0 Bye");
}

static void cmd_vrfy(struct session *s, const char *arg, size_t len)
{
	reply(s, "252 2.5.0 Cannot verify addresses; send the message and it will be tried");
}

static void cmd_expn(struct session *s, const char *arg, size_t len)
{
	reply_err(s, "502 5.5.1 EXPN is not supported");
}

static void cmd_help(struct session *s, const char *arg, size_t len)
{
	reply(s, "214 2.0.0 Commands: EHLO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT");
}

static void cmd_bdat(struct session *s, const char *arg, size_t len)
{
	reply_err(s, "502 5.5.1 BDAT (CHUNKING) is not supported; use DATA");
}

static void cmd_unknown(struct session *s, const char *arg, size_t len)
{
	reply_err(s, "500 5.5.1 Command not recognized");
}

static void cmd_ehlo(struct session *s, const char *arg, size_t len)
{
	cmd_helo(s, arg, len, 1);
}

static void cmd_helo_plain(struct session *s, const char *arg, size_t len)
{
	cmd_helo(s, arg, len, 0);
}

struct cmd_def {
	enum smtp_verb verb;
	unsigned states; /* where it may run; elsewhere 503 */
	const char *bad_sequence;
	void (*run)(struct session *s, const char *arg, size_t len);
};

#define AFTER_HELO (SB(ST_READY) | SB(ST_MAIL) | SB(ST_RCPT))
#define ANY (SB(ST_CONNECTED) | AFTER_HELO)

static const struct cmd_def commands[] = {
    {SMTP_EHLO, ANY, NULL, cmd_ehlo},
    {SMTP_HELO, ANY, NULL, cmd_helo_plain},
    {SMTP_STARTTLS, AFTER_HELO, "503 5.5.1 Send EHLO first", cmd_starttls},
    {SMTP_AUTH, SB(ST_READY), "503 5.5.1 AUTH is only allowed after EHLO and outside a mail "
			      "transaction", cmd_auth},
    {SMTP_MAIL, AFTER_HELO, "503 5.5.1 Send EHLO first", cmd_mail},
    {SMTP_RCPT, AFTER_HELO, "503 5.5.1 Send EHLO first", cmd_rcpt},
    {SMTP_DATA, AFTER_HELO, "503 5.5.1 Send EHLO first", cmd_data},
    {SMTP_BDAT, ANY, NULL, cmd_bdat},
    {SMTP_RSET, ANY, NULL, cmd_rset},
    {SMTP_NOOP, ANY, NULL, cmd_noop},
    {SMTP_QUIT, ANY, NULL, cmd_quit},
    {SMTP_VRFY, ANY, NULL, cmd_vrfy},
    {SMTP_EXPN, ANY, NULL, cmd_expn},
    {SMTP_HELP, ANY, NULL, cmd_help},
    {SMTP_UNKNOWN, ANY, NULL, cmd_unknown},
};

/* ---- end of data ------------------------------------------------------ */

struct hdr_scan {
	int nfrom, nsender, has_msgid, has_date;
	const char *from;
	size_t fromlen;
	const char *sender;
	size_t senderlen;
};

static int scan_field(void *arg, const char *field, size_t flen, size_t namelen)
{
	struct hdr_scan *hs = arg;
	const char *v = field + namelen + 1;
	size_t vlen = flen - namelen - 1;

	if (namelen == 4 && strncasecmp(field, "From", 4) == 0) {
		hs->nfrom++;
		hs->from = v;
		hs->fromlen = vlen;
	} else if (namelen == 6 && strncasecmp(field, "Sender", 6) == 0) {
		hs->nsender++;
		hs->sender = v;
		hs->senderlen = vlen;
	} else if (namelen == 10 && strncasecmp(field, "Message-ID", 10) == 0) {
		hs->has_msgid = 1;
	} else if (namelen == 4 && strncasecmp(field, "Date", 4) == 0) {
		hs->has_date = 1;
	}
	return 0;
}

static void message_done(struct session *s, int code, const char *text_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Replies at the end of data, logs the message, and ends the transaction. */
static void message_done(struct session *s, int code, const char *fmt, ...)
{
	struct txn *tx = s->tx;
	char text[512], q[600], qs[700];
	uint64_t eod_usec = tx->t_eod ? now_usec() - tx->t_eod : 0;
	double eod_ms = (double)eod_usec / 1000.0;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	reply(s, "%d %s", code, text);
	/* eod_ms: end of data to this reply; sign_ms: the part spent waiting
	 * for and running DKIM signing, up to the hand-off to the spool
	 * (bench/ reads both). */
	log_info("event=message id=%s client=%s tenant=%s sender=%s rcpts=%zu size=%zu result=%s "
		 "eod_ms=%.2f sign_ms=%.2f reply=%s",
		 tx->qid[0] ? tx->qid : "-", s->addr, s->who.tenant, log_quote(qs, sizeof(qs), tx->from.addr), tx->nrcpts,
		 tx->dr.size,
		 code < 300 ? "queued" : code < 500 ? "deferred" : "rejected", eod_ms,
		 (double)tx->sign_usec / 1000.0, log_quote(q, sizeof(q), text));
	metrics_message(&s->srv->metrics, code, tx->dr.size, eod_usec, tx->sign_usec);
	if (code >= 400)
		count_error(s);
	txn_reset(s);
	bufferevent_set_timeouts(s->bev, &(struct timeval){s->srv->cfg->command_timeout, 0},
				 &(struct timeval){s->srv->cfg->command_timeout, 0});
}

/* The spool's answer for s's message (s NULL: the client left). */
static void committed(struct session *s, const char *id, int err)
{
	json_t *data;

	if (s == NULL) {
		/* The client left before hearing the answer: the message is
		 * queued all the same when err == 0 (as with a lost reply). */
		if (err == 0)
			log_info("event=message id=%s result=queued note=client_gone", id);
		return;
	}
	if (err) {
		log_err("event=spool_error client=%s op=commit error=\"%s\"", s->addr, strerror(err));
		message_done(s, 451, "4.3.0 Could not commit the message to disk; try again later");
	} else {
		s->messages++;
		data = json_pack("{s:s, s:I, s:I, s:s}", "sender", s->tx->from.addr, "recipients",
				 (json_int_t)s->tx->nrcpts, "size", (json_int_t)s->tx->dr.size, "auth_user",
				 s->user);
		store_event(s->srv->store, "message.accepted", s->who.tenant_id, id, data);
		snprintf(s->tx->qid, sizeof(s->tx->qid), "%s", id);
		message_done(s, 250, "2.0.0 Ok: queued as %s", id);
	}
	wait_end(s);
}

static void commit_result(uint64_t cookie, const char *id, int err)
{
	committed(server_session(srv_of_callbacks, cookie), id, err);
}

/* Builds the final header block: Received, the client's fields, and a
 * Message-ID and Date when they are missing. */
static int build_headers(struct session *s, const struct hdr_scan *hs)
{
	struct txn *tx = s->tx;
	const char *h = tx->hdr.data;
	size_t hlen = tx->hdr.len;
	int has_sep = 0;
	char date[64];
	const char *id = queue_txn_id(tx->sp);
	int r = 0;

	if (hlen >= 2 && h[hlen - 2] == '\r' && h[hlen - 1] == '\n' &&
	    (hlen == 2 || (hlen >= 4 && h[hlen - 4] == '\r' && h[hlen - 3] == '\n'))) {
		has_sep = 1;
		hlen -= 2;
	}
	rfc5322_date(time(NULL), date, sizeof(date));
	r |= buf_printf(&tx->final,
			"Received: from %s ([%s])\r\n\tby %s (sendgate) with %s id %s\r\n"
			"\t(%s; authenticated tenant %s);\r\n\t%s\r\n",
			s->helo[0] ? s->helo : "unknown", s->addr, s->srv->cfg->hostname,
			s->esmtp ? "ESMTPSA" : "SMTPSA", id, s->tls_desc, s->who.tenant, date);
	r |= buf_append(&tx->final, h, hlen);
	if (!hs->has_msgid)
		r |= buf_printf(&tx->final, "Message-ID: <%s@%s>\r\n", id, s->srv->cfg->hostname);
	if (!hs->has_date)
		r |= buf_printf(&tx->final, "Date: %s\r\n", date);
	if (has_sep)
		r |= buf_append(&tx->final, "\r\n", 2);
	return r ? -1 : 0;
}

static void eod_continue(struct session *s);

/* The message's envelope (pointing into s). */
static void fill_envelope(struct session *s, struct queue_envelope *env)
{
	struct txn *tx = s->tx;

	memset(env, 0, sizeof(*env));
	env->tenant_id = s->who.tenant_id;
	env->tenant = s->who.tenant;
	env->auth_user = s->user;
	env->sender = tx->from.addr;
	env->rcpts = tx->rcpts;
	env->nrcpts = tx->nrcpts;
	env->received = time(NULL);
	env->client = s->addr;
	env->flags = (tx->params.body == 8 || tx->dr.eight_bit ? QFLAG_8BITMIME : 0) |
		     (tx->params.smtputf8 ? QFLAG_SMTPUTF8 : 0);
}

/* Hands the finished, unsigned message to the spool. */
static void commit_message(struct session *s)
{
	struct txn *tx = s->tx;
	struct queue_envelope env;
	struct spool_txn *sp = tx->sp;

	fill_envelope(s, &env);
	/* From here the spool owns the txn, whatever happens to us. */
	tx->sp = NULL;
	if (queue_commit(sp, &env, tx->final.data, tx->final.len, commit_result, s->id) == -1) {
		message_done(s, 451, "4.3.0 Could not commit the message to disk; try again later");
		wait_end(s);
	}
}

/* The signer's outcome: signed and committed (or not) by its thread. */
static void sign_done(uint64_t cookie, const struct signer_result *r)
{
	struct session *s = server_session(srv_of_callbacks, cookie);
	char q[300];

	if (s != NULL)
		s->tx->sign_usec = r->sign_usec;
	if (r->sign_err == NULL) {
		committed(s, r->id, r->commit_err);
		return;
	}
	if (s == NULL)
		return;
	log_err("event=dkim_sign_failed domain=%s tenant=%s error=%s", s->tx->from_domain,
		s->who.tenant, log_quote(q, sizeof(q), r->sign_err));
	message_done(s, 451,
		     "4.3.0 Could not DKIM-sign the message for domain %s; it was not queued, "
		     "try again later",
		     s->tx->from_domain);
	wait_end(s);
}

/*
 * Hands the finished message to the signer with its n keys (taken over),
 * which signs it and commits it to the spool; sign_done has the outcome.
 */
static void sign_message(struct session *s, struct signing_key **keys, int n)
{
	struct txn *tx = s->tx;
	struct queue_envelope env;
	struct spool_txn *sp = tx->sp;
	unsigned char bh[32];

	/* An envelope that cannot be encoded fails the commit's start
	 * (EINVAL), which the signer reports like any commit error. */
	fill_envelope(s, &env);
	queue_txn_set_envelope(sp, &env);
	dkim_body_final(tx->bodyhash, bh);
	dkim_body_free(tx->bodyhash);
	tx->bodyhash = NULL;
	/* From here the signer owns the txn, whatever happens to us. */
	tx->sp = NULL;
	signer_submit(s->srv->signer, keys, n, tx->final.data, tx->final.len, bh, s->srv->hcanon,
		      s->srv->bcanon, s->srv->cfg->dkim_expiry, s->who.tenant_id, sp, sign_done,
		      s->id);
}

static void eod_domain_result(uint64_t cookie, int ok, const char *why)
{
	struct session *s = server_session(srv_of_callbacks, cookie);

	if (s == NULL)
		return;
	if (ok == 1) {
		s->tx->eod_step++;
		eod_continue(s);
		return;
	}
	{
		const char *where = s->tx->eod_step == 0 ? "From header" : "Sender header";
		const char *d = s->tx->eod_step == 0 ? s->tx->from_domain : s->tx->sender_domain;
		char text[512];
		int code = domain_refusal(s, ok, where, d, why, text, sizeof(text));
		message_done(s, code, "%s", text);
	}
	wait_end(s);
}

/* Runs the end-of-data steps: From domain, Sender domain, then commit. */
static void eod_continue(struct session *s)
{
	struct txn *tx = s->tx;
	struct hdr_scan hs;

	if (tx->eod_step == 0 && tx->from_domain[0]) {
		store_domain_check(s->srv->store, s->who.tenant_id, tx->from_domain, eod_domain_result,
				   s->id);
		return;
	}
	if (tx->eod_step == 0)
		tx->eod_step = 1;
	if (tx->eod_step == 1 && tx->sender_domain[0]) {
		store_domain_check(s->srv->store, s->who.tenant_id, tx->sender_domain,
				   eod_domain_result, s->id);
		return;
	}
	memset(&hs, 0, sizeof(hs));
	header_walk(tx->hdr.data, tx->hdr.len, scan_field, &hs);
	if (build_headers(s, &hs) == -1) {
		message_done(s, 552, "5.3.4 Header block exceeds the limit of %zu bytes",
			     s->srv->cfg->max_header_size);
		wait_end(s);
		return;
	}
	if (s->srv->signer) {
		struct signing_key *keys[2];
		int n = store_signing_keys(s->srv->store, tx->from_domain, time(NULL), keys, 2);
		if (n == 0) {
			log_err("event=dkim_no_key domain=%s tenant=%s", tx->from_domain, s->who.tenant);
			message_done(s, 451,
				     "4.3.0 No DKIM key is active for domain %s; the message was not "
				     "queued, try again later",
				     tx->from_domain);
			wait_end(s);
			return;
		}
		sign_message(s, keys, n);
		return;
	}
	commit_message(s);
}

/* Pulls the domain out of one From/Sender value; 0 or -1 with a reply. */
static int header_domain(struct session *s, const char *name, const char *v, size_t vlen,
			 char *domain, size_t dlen)
{
	char boxes[2][SMTP_ADDR_MAX + 1];
	int n = header_mailboxes(v, vlen, boxes, 2);
	const char *at;

	if (n < 0) {
		message_done(s, 550, "5.7.1 The %s header could not be parsed as a mailbox", name);
		return -1;
	}
	if (n != 1) {
		message_done(s, 550, "5.7.1 The %s header must hold exactly one mailbox (it holds %d)",
			     name, n);
		return -1;
	}
	at = strrchr(boxes[0], '@');
	if (at == NULL) {
		message_done(s, 550, "5.7.1 The %s header mailbox has no domain", name);
		return -1;
	}
	snprintf(domain, dlen, "%s", at + 1);
	str_lower(domain);
	return 0;
}

static void end_of_data(struct session *s)
{
	const struct config *cfg = s->srv->cfg;
	struct txn *tx = s->tx;
	struct hdr_scan hs;

	tx->t_eod = now_usec();
	if (tx->spool_errno) {
		message_done(s, 451, "4.3.0 Could not write the message to disk; try again later");
		return;
	}
	switch (tx->dr.error) {
	case DATA_OK:
		break;
	case DATA_TOO_BIG:
		message_done(s, 552, "5.3.4 Message size exceeds the limit of %zu bytes",
			     cfg->max_message_size);
		return;
	case DATA_LINE_TOO_LONG:
		message_done(s, 552, "5.3.4 A line of the message is longer than %d octets", cfg->max_text_line);
		return;
	case DATA_HEADER_TOO_BIG:
		message_done(s, 552, "5.3.4 Header block exceeds the limit of %zu bytes",
			     cfg->max_header_size);
		return;
	default:
		message_done(s, 550, "5.6.0 Message refused: %s (lines must end in CRLF)",
			     data_err_text(tx->dr.error));
		return;
	}
	memset(&hs, 0, sizeof(hs));
	if (header_walk(tx->hdr.data, tx->hdr.len, scan_field, &hs) == -1) {
		message_done(s, 550, "5.6.0 Message refused: malformed header block");
		return;
	}
	if (hs.nfrom != 1) {
		message_done(s, 550, "5.7.1 The message must have exactly one From header (it has %d)",
			     hs.nfrom);
		return;
	}
	if (header_domain(s, "From", hs.from, hs.fromlen, tx->from_domain, sizeof(tx->from_domain)))
		return;
	if (hs.nsender > 1) {
		message_done(s, 550, "5.7.1 The message has %d Sender headers; at most one is allowed",
			     hs.nsender);
		return;
	}
	if (hs.nsender == 1 && header_domain(s, "Sender", hs.sender, hs.senderlen, tx->sender_domain,
					     sizeof(tx->sender_domain)))
		return;
	wait_begin(s);
	bufferevent_set_timeouts(s->bev, &(struct timeval){cfg->data_done_timeout, 0},
				 &(struct timeval){cfg->data_done_timeout, 0});
	tx->eod_step = 0;
	eod_continue(s);
}

/* ---- input ------------------------------------------------------------ */

/* Feeds DATA bytes to the reader; 1 when the end of data was reached. */
static int feed_data(struct session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	struct txn *tx = s->tx;

	while (evbuffer_get_length(in) > 0 && !tx->dr.done) {
		server_feed_data(in, &tx->dr, &tx->hdr, &tx->body);
		if (tx->body.len) {
			if (!tx->spool_errno && tx->dr.error == DATA_OK &&
			    queue_write_body(tx->sp, tx->body.data, tx->body.len) == -1)
				tx->spool_errno = errno ? errno : EIO;
			if (tx->bodyhash)
				dkim_body_update(tx->bodyhash, tx->body.data, tx->body.len);
			buf_reset(&tx->body);
		}
	}
	return tx->dr.done;
}

/* Takes one command line; 1 when a line was handled, 0 when more input is needed. */
static int handle_line(struct session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	struct evbuffer_ptr p = evbuffer_search(in, "\n", 1, NULL);
	size_t avail = evbuffer_get_length(in), len;
	char line[SASL_LINE_MAX + 2];
	struct smtp_cmd cmd;
	size_t i;

	if (p.pos < 0) {
		if (avail > SASL_LINE_MAX) {
			evbuffer_drain(in, avail);
			s->discarding = 1;
		}
		return 0;
	}
	len = (size_t)p.pos + 1;
	if (s->discarding || len > SASL_LINE_MAX) {
		evbuffer_drain(in, len);
		s->discarding = 0;
		reply_err(s, "500 5.5.2 Line too long");
		return 1;
	}
	evbuffer_remove(in, line, len);
	line[len] = '\0';
	if (len < 2 || line[len - 2] != '\r') {
		reply_err(s, "500 5.5.2 Bare LF received: command lines must end in CRLF");
		return 1;
	}
	len -= 2;
	if (memchr(line, '\r', len)) {
		reply_err(s, "500 5.5.2 Bare CR received in command line");
		return 1;
	}
	if (s->state == ST_AUTH) {
		auth_continue(s, line, len);
		return 1;
	}
	if (len + 2 > (size_t)s->srv->cfg->max_command_line &&
	    !(len > 5 && strncasecmp(line, "AUTH ", 5) == 0)) {
		reply_err(s, "500 5.5.2 Command line too long (limit %d octets)",
			  s->srv->cfg->max_command_line);
		return 1;
	}
	if (smtp_parse_command(line, len, &cmd) == -1) {
		reply_err(s, "500 5.5.2 Syntax error in command line");
		return 1;
	}
	for (i = 0; i < ARRAY_LEN(commands); i++) {
		const struct cmd_def *c = &commands[i];
		if (c->verb != cmd.verb)
			continue;
		if (!(c->states & SB(s->state))) {
			reply_err(s, "%s", c->bad_sequence ? c->bad_sequence : "503 5.5.1 Bad sequence of commands");
			return 1;
		}
		c->run(s, cmd.arg ? cmd.arg : "", cmd.arg ? cmd.arglen : 0);
		return 1;
	}
	return 1;
}

/* Bytes tls_pull takes in one process_input call, at most. */
#define TLS_PULL_MAX (256 * 1024)

/*
 * Moves what OpenSSL already holds into the input: 1 when bytes came, 0
 * when there is nothing to take. The server context reads ahead (one
 * read() for all the records that arrived instead of two per record), so
 * OpenSSL can hold whole records after the socket stopped being readable,
 * and libevent 2.1 reads on only while SSL_pending() counts decrypted
 * bytes: without this a client's last command could sit there unanswered.
 * Holding part of a record, SSL_read reads the socket itself; *budget
 * bounds what one call of process_input takes that way, so that a fast
 * sender cannot keep the loop to itself: past it, the read callback is
 * run again after the loop's other work. The end of the stream and TLS
 * errors end the session as libevent's own reads would.
 */
static int tls_pull(struct session *s, size_t *budget)
{
	SSL *ssl = s->tls ? bufferevent_openssl_get_ssl(s->bev) : NULL;
	struct evbuffer *in = bufferevent_get_input(s->bev);
	struct evbuffer_iovec v;
	int n, e;

	if (ssl == NULL || s->eof || !SSL_has_pending(ssl) ||
	    !(bufferevent_get_enabled(s->bev) & EV_READ))
		return 0;
	if (*budget == 0) {
		bufferevent_trigger(s->bev, EV_READ,
				    BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
		return 0;
	}
	if (evbuffer_reserve_space(in, 16384, &v, 1) < 1)
		return 0;
	ERR_clear_error();
	n = SSL_read(ssl, v.iov_base, (int)v.iov_len);
	if (n > 0) {
		v.iov_len = (size_t)n;
		evbuffer_commit_space(in, &v, 1);
		*budget = *budget > (size_t)n ? *budget - (size_t)n : 0;
		return 1;
	}
	e = SSL_get_error(ssl, n);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return 0;
	if (e == SSL_ERROR_ZERO_RETURN) {
		s->eof = 1; /* close_notify: as a half-close (on_event) */
		bufferevent_disable(s->bev, EV_READ);
		return 0;
	}
	tls_log_error(s->addr, "read", 0, e);
	s->close_now = 1; /* the pass's replies are not written (flush_direct) */
	return 0;
}

/* Handles everything buffered until the session must wait or input runs out. */
static void process_input(struct session *s)
{
	size_t budget = TLS_PULL_MAX;
	int starved = 0; /* stopped for want of input */
	int in_data;

	if (s->in_process)
		return;
	s->in_process = 1;
	while (!s->waiting && !s->close_now && !s->close_after_write && s->state != ST_TLS &&
	       s->state != ST_GREETING) {
		if (s->srv->stopping && s->state != ST_DATA && s->state != ST_AUTH) {
			/* Shutting down: a transaction in progress has ended. */
			reply_close(s, "421 4.3.2 Service shutting down; try again later");
			break;
		}
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) > OUTPUT_HIGH)
			break; /* resumed from the write callback */
		in_data = s->state == ST_DATA;
		if (in_data ? feed_data(s) : handle_line(s)) {
			if (in_data)
				end_of_data(s);
			continue;
		}
		/* Out of input: what OpenSSL already holds, or wait for more. */
		if (tls_pull(s, &budget))
			continue;
		starved = 1;
		break;
	}
	s->in_process = 0;
	flush_direct(s);
	if (s->eof && !s->waiting && !s->close_after_write && !s->close_now) {
		/* Half-closed and nothing left that could finish (a partial
		 * command line never will): done. */
		if (s->state == ST_DATA || starved ||
		    evbuffer_get_length(bufferevent_get_input(s->bev)) == 0 || s->state == ST_TLS ||
		    s->state == ST_AUTH)
			s->close_now = 1;
	}
	if (s->close_now)
		session_free(s);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	process_input(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;

	if (s->close_after_write) {
		session_free(s);
		return;
	}
	if (s->state == ST_TLS) {
		start_tls(s);
		if (s->close_now)
			session_free(s);
		return;
	}
	process_input(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;

	if (what & BEV_EVENT_CONNECTED) {
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		s->tls = 1;
		if (ssl)
			tls_describe(ssl, s->tls_desc, sizeof(s->tls_desc));
		/* A command that came with the end of the handshake may be held
		 * by OpenSSL (read-ahead) with nothing more on the socket. */
		if (!s->in_process)
			process_input(s);
		return;
	}
	/* During a TLS handshake no 421 can be written: just close. */
	if ((what & BEV_EVENT_TIMEOUT) && !s->close_after_write && !(what & BEV_EVENT_WRITING) &&
	    !(s->bev_owns_fd && !s->tls)) {
		char text[300];
		log_info("event=timeout client=%s state=%d", s->addr, s->state);
		snprintf(text, sizeof(text), "421 4.4.2 %s Timeout: closing connection",
			 s->srv->cfg->hostname);
		/* The write timeout ends it if the client reads nothing either. */
		reply_close(s, text);
		return;
	}
	if (what & BEV_EVENT_ERROR)
		tls_log_event_error(bev, what, !s->tls, s->addr);
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && !s->close_after_write) {
		/* A client that half-closed after pipelining still gets its
		 * buffered commands handled; the session ends once idle. */
		s->eof = 1;
		bufferevent_disable(bev, EV_READ);
		if (!s->in_process)
			process_input(s);
		return;
	}
	if (s->in_process) {
		s->close_now = 1;
		return;
	}
	session_free(s);
}

static void setup_bev(struct session *s)
{
	const struct config *cfg = s->srv->cfg;

	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, INPUT_HIGH);
	bufferevent_set_timeouts(s->bev, &(struct timeval){cfg->command_timeout, 0},
				 &(struct timeval){cfg->command_timeout, 0});
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

static void greet(struct session *s)
{
	set_state(s, ST_CONNECTED);
	reply(s, "220 %s ESMTP ready", s->srv->cfg->hostname);
	/* The bufferevent writes the greeting (on implicit TLS, once the
	 * handshake is done): flush_direct must never count it as its own. */
	s->unflushed = 0;
}

static void greet_later(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;

	greet(s);
	process_input(s);
}

void session_start(struct server *srv, evutil_socket_t fd, const char *addr, const char *key,
		   int implicit_tls, uint64_t id, int greeting_delay)
{
	struct session *s = xcalloc(1, sizeof(*s));

	srv_of_callbacks = srv;
	s->id = id;
	s->srv = srv;
	s->fd = fd;
	s->started = now_usec();
	s->implicit_tls = implicit_tls;
	snprintf(s->addr, sizeof(s->addr), "%s", addr);
	snprintf(s->peer, sizeof(s->peer), "%s", key);
	srv->slots[id & 0xffffff] = s;
	if (implicit_tls) {
		SSL *ssl = SSL_new(srv->tls);
		s->bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
							BEV_OPT_CLOSE_ON_FREE);
		s->bev_owns_fd = 1;
	} else {
		s->bev = bufferevent_socket_new(srv->base, fd, 0);
	}
	setup_bev(s);
	if (greeting_delay > 0) {
		set_state(s, ST_GREETING);
		s->ev_delay = evtimer_new(srv->base, greet_later, s);
		{
		struct timeval tv = {greeting_delay, 0};
		evtimer_add(s->ev_delay, &tv);
	}
		return;
	}
	greet(s);
}

void session_shutdown(struct session *s)
{
	if (s->state == ST_DATA || s->waiting || s->state == ST_AUTH)
		return; /* finishes first; process_input closes it after */
	if (s->state == ST_TLS || (s->bev_owns_fd && !s->tls)) {
		/* Mid-handshake: nothing can be said in clear any more. */
		if (s->in_process)
			s->close_now = 1;
		else
			session_free(s);
		return;
	}
	if (s->ev_delay)
		event_del(s->ev_delay);
	reply_close(s, "421 4.3.2 Service shutting down; try again later");
}

/* Frees a session that is still open when the daemon exits. */
void session_abort(struct session *s)
{
	session_free(s);
}

static void session_free(struct session *s)
{
	char helo[300];

	log_info("event=session_end client=%s helo=%s tenant=%s tls=%s messages=%d errors=%d "
		 "duration_ms=%llu",
		 s->addr, log_quote(helo, sizeof(helo), s->helo[0] ? s->helo : "-"),
		 s->authed ? s->who.tenant : "-", s->tls ? "yes" : "no", s->messages, s->errors,
		 (unsigned long long)((now_usec() - s->started) / 1000));
	txn_free(s->tx);
	if (s->ev_delay)
		event_free(s->ev_delay);
	if (s->ev_auth)
		event_free(s->ev_auth);
	if (s->bev) {
		/* Unregister before the socket goes (with the changelist the
		 * epoll entry goes when the socket closes). */
		bufferevent_disable(s->bev, EV_READ | EV_WRITE);
		bufferevent_free(s->bev);
	}
	if (!s->bev_owns_fd || s->bev == NULL)
		evutil_closesocket(s->fd);
	if (s->authed) /* counted by tenant_admit */
		tenantlim_close(s->srv->tenantlim, s->who.tenant_id, now_usec());
	server_session_gone(s->srv, s, s->id, s->peer);
	explicit_bzero(s, sizeof(*s));
	free(s);
}
