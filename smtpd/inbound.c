/*
 * inbound: the listener for reports that come back after delivery. A
 * remote server may take a message with 250 and only later find that the
 * mailbox does not exist (or a recipient may mark it as spam): it then
 * mails a bounce (RFC 3464) or a complaint (RFC 5965) to the envelope
 * sender, which delivery made a VERP address, bounce+<queue id>.<index>@
 * the return-path host. The platform points that host's MX here ([bounce]
 * listen). This session takes reports only: RCPT TO must be such an
 * address, the feedback-loop address ([bounce] feedback_address) or a
 * postmaster; nothing is ever relayed or queued.
 *
 * At the end of data the report is parsed (queue/dsn.c) and each failed
 * recipient is recorded in one statement (tenants/store_report): an event
 * "message.bounced" or "message.complained" on the tenant's message and,
 * for a hard bounce or a complaint, a suppression. The reply waits for the
 * database: 250 once recorded, 451 when it could not be, so that the
 * reporting server tries again instead of the report being lost. A report
 * that matches no delivery (a forged or mangled address) is acknowledged
 * and logged, never retried.
 *
 * Only the first REPORT_KEEP octets are kept: the machine-readable part
 * comes before the returned message, which may be the whole original.
 *
 * Reports quote recipients' addresses and headers, so STARTTLS is offered
 * (the submission listeners' certificate, as reloaded on SIGHUP), never
 * required: many reporting servers cannot do TLS.
 */
#include <errno.h>
#include <stdarg.h>
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
#include <event2/listener.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "smtpd/server.h"

#define REPORT_KEEP (256 * 1024) /* octets of a report's body kept to parse */
#define INBOUND_MAX_RCPTS 20
#define INBOUND_LINE_MAX 1024 /* command line, CRLF included */
#define OUTPUT_HIGH 65536      /* stop reading commands while replies pile up */
#define INBOUND_MAX_FINDINGS 32 /* recipients recorded from one report */

/* IS_TLS: STARTTLS answered, its 220 being written or the handshake running. */
enum istate { IS_FRESH, IS_HELO, IS_MAIL, IS_DATA, IS_WAIT, IS_TLS };

/* Where a RCPT TO says the report is about. */
struct itarget {
	char qid[QUEUE_ID_LEN + 1]; /* "" for the feedback or postmaster address */
	long index;  /* the recipient's index, or the first's when several */
	int several; /* the transaction had several recipients */
	int tagged;  /* the address carried a (valid) tag */
	char addr[SMTP_ADDR_MAX + 1];
};

/* One recipient a report is about, while the database records it. */
struct ifinding {
	char qid[QUEUE_ID_LEN + 1];
	long index;
	char recipient[DSN_FIELD_MAX];
	const char *kind; /* "bounce" or "complaint" */
};

struct isess {
	struct inbound *in;
	struct isess *prev, *next;
	uint64_t id;
	struct bufferevent *bev;
	evutil_socket_t fd;
	int bev_owns_fd; /* the TLS bufferevent closes the socket itself */
	int tls;	 /* the handshake is done */
	char tls_desc[96];
	char addr[PEER_TEXT_MAX];
	char key[PEER_TEXT_MAX]; /* the address, or its /64: what the per-address limit counts */
	enum istate state;
	uint64_t started;
	int reports; /* reports answered 250 */
	int nerrors;
	int close_after_write;
	int eof;	/* the client half-closed: answer what it sent, then close */
	int discarding; /* inside an over-long command line */
	char from[SMTP_ADDR_MAX + 1];
	struct itarget rcpts[INBOUND_MAX_RCPTS];
	int nrcpts;
	struct data_reader dr;
	struct buf hdr, body;
	struct ifinding findings[INBOUND_MAX_FINDINGS];
	int nfindings;
	int pending;   /* store_report answers still to come */
	int db_failed; /* one of them could not be recorded */
	int recorded;  /* reports matched to a delivery */
};

struct inbound {
	struct server *srv;
	struct evconnlistener *listeners[CONFIG_MAX_LISTEN];
	int nlisteners;
	struct isess *head;
	int nsessions;
	struct hmap *per_peer; /* peer key -> open connections (hmap_counter) */
	uint64_t next_id;
};

static void isess_free(struct isess *s);
static void process(struct isess *s);
static void after_input(struct isess *s);
static void setup_bev(struct isess *s);

static void reply(struct isess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply(struct isess *s, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	n = smtp_reply_line(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0)
		bufferevent_write(s->bev, line, n);
}

/* A 4xx/5xx for a command; too many of them end the session. */
static void reply_err(struct isess *s, const char *text)
{
	reply(s, "%s", text);
	if (++s->nerrors >= s->in->srv->cfg->max_errors) {
		reply(s, "421 4.7.0 Too many errors in this session; closing connection");
		s->close_after_write = 1;
	}
}

static void txn_reset(struct isess *s)
{
	s->from[0] = '\0';
	s->nrcpts = 0;
	buf_free(&s->hdr);
	buf_free(&s->body);
	if (s->state > IS_HELO)
		s->state = IS_HELO;
}

/* ---- recording ------------------------------------------------------- */

static struct isess *isess_find(struct inbound *in, uint64_t id)
{
	struct isess *s;

	for (s = in->head; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

/* The store's answers find their session through this (one per process). */
static struct inbound *inbound_of_callbacks;

/* Every finding of the report is recorded (or could not be): answer. */
static void report_reply(struct isess *s)
{
	if (s->db_failed) {
		reply(s, "451 4.3.0 The report could not be recorded; try again later");
	} else {
		reply(s, "250 2.0.0 Report received (%d matched to a delivery)", s->recorded);
		s->reports++;
	}
	txn_reset(s);
}

/* A finding's cookie: the session's id and the finding's place. */
#define COOKIE(s, k) ((s)->id * INBOUND_MAX_FINDINGS + (uint64_t)(k))

static void on_recorded(uint64_t cookie, const struct store_report_result *res)
{
	struct isess *s = inbound_of_callbacks
			      ? isess_find(inbound_of_callbacks, cookie / INBOUND_MAX_FINDINGS)
			      : NULL;
	const struct ifinding *f;
	char q1[300], q2[300];

	if (s == NULL)
		return; /* the reporting server left; what was recorded stays */
	f = &s->findings[cookie % INBOUND_MAX_FINDINGS];
	if (res->found < 0) {
		s->db_failed = 1;
		log_warn("event=bounce_report_failed client=%s kind=%s id=%s reason=db_unavailable",
			 s->addr, f->kind, f->qid);
	} else if (res->found == 0) {
		log_info("event=bounce_report_unmatched client=%s kind=%s id=%s index=%ld "
			 "recipient=%s note=\"no delivery of that message to that recipient on "
			 "record\"",
			 s->addr, f->kind, f->qid, f->index, log_quote(q1, sizeof(q1), f->recipient));
	} else {
		s->recorded++;
		log_info("event=bounce_report_recorded client=%s kind=%s id=%s tenant=%s recipient=%s "
			 "new=%d suppressed=%d",
			 s->addr, f->kind, f->qid, res->tenant, log_quote(q2, sizeof(q2), res->recipient),
			 res->recorded, res->suppressed);
	}
	if (--s->pending == 0) {
		if (s->close_after_write) {
			txn_reset(s); /* a timeout said 421 meanwhile: nothing more */
			return;
		}
		report_reply(s);
		process(s); /* commands pipelined after the data */
		after_input(s);
	}
}

/* Cuts s before a UTF-8 sequence that a byte-counted cut left incomplete. */
static void utf8_trim(char *s)
{
	size_t n = strlen(s), i = n, need;
	unsigned char c;

	while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80 && n - i < 3)
		i--;
	if (i == 0)
		return;
	c = (unsigned char)s[i - 1];
	need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
	if (n - (i - 1) < need)
		s[i - 1] = '\0';
}

/* A short reason for the suppression list (cut to fit its 200 octets). */
static void suppression_reason(const struct dsn_report *rep, const struct dsn_rcpt *r, char *out,
			       size_t outlen)
{
	if (rep->kind == DSN_FEEDBACK)
		snprintf(out, outlen, "complaint (%.31s) reported by %.120s",
			 rep->feedback_type[0] ? rep->feedback_type : "abuse",
			 rep->reporting_mta[0] ? rep->reporting_mta
			 : rep->user_agent[0] ? rep->user_agent
					      : "the mailbox provider");
	else if (r->diagnostic[0])
		snprintf(out, outlen, "bounced after delivery: %.170s", r->diagnostic);
	else
		snprintf(out, outlen, "bounced after delivery: status %.15s reported by %.120s",
			 r->status, rep->reporting_mta[0] ? rep->reporting_mta : "the receiving server");
	utf8_trim(out); /* the database takes only whole characters */
}

/*
 * Sends one finding to the database: the delivery t names was bounced
 * (r != NULL) or complained about (r == NULL).
 */
static void record(struct isess *s, const struct dsn_report *rep, const struct dsn_rcpt *r,
		   const struct itarget *t, const char *recipient)
{
	struct store_report sr;
	char reason[200], q1[300], q2[600];
	struct ifinding *f;
	json_t *j;
	char *data;

	if (s->nfindings == INBOUND_MAX_FINDINGS) {
		log_warn("event=bounce_report_truncated client=%s id=%s limit=%d", s->addr, t->qid,
			 INBOUND_MAX_FINDINGS);
		return;
	}
	f = &s->findings[s->nfindings];
	snprintf(f->qid, sizeof(f->qid), "%s", t->qid);
	f->index = t->index;
	snprintf(f->recipient, sizeof(f->recipient), "%s", recipient);
	f->kind = rep->kind == DSN_FEEDBACK ? "complaint" : "bounce";
	if (rep->kind == DSN_FEEDBACK) {
		j = json_pack("{s:s, s:s, s:s, s:s}", "source", "feedback-report", "feedback_type",
			      rep->feedback_type, "reporting_mta", rep->reporting_mta, "user_agent",
			      rep->user_agent);
	} else {
		j = json_pack("{s:s, s:b, s:s, s:s, s:s, s:s, s:s}", "source", "delivery-status", "async",
			      1, "reply", r->diagnostic, "enhanced_code", r->status, "reporting_mta",
			      rep->reporting_mta, "remote_mta", r->remote_mta, "reported_recipient",
			      r->final_recipient);
	}
	data = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	suppression_reason(rep, r, reason, sizeof(reason));
	memset(&sr, 0, sizeof(sr));
	sr.verp = t->addr;
	sr.tagged = t->tagged;
	sr.qid = t->qid;
	/* Several recipients: the one the report names, among that
	 * transaction's (its sender is its own). */
	sr.index = t->several ? -1 : t->index;
	sr.recipient = recipient;
	sr.type = rep->kind == DSN_FEEDBACK ? "message.complained" : "message.bounced";
	sr.data_json = data ? data : "{}";
	sr.suppress = rep->kind == DSN_FEEDBACK || dsn_status_is_hard(r->status);
	sr.reason = reason;
	log_info("event=bounce_report client=%s kind=%s id=%s index=%ld tagged=%d recipient=%s "
		 "status=%s detail=%s",
		 s->addr, f->kind, t->qid, t->index, t->tagged, log_quote(q1, sizeof(q1), recipient),
		 r ? (r->status[0] ? r->status : "-") : "-",
		 log_quote(q2, sizeof(q2), r ? r->diagnostic : rep->feedback_type));
	s->pending++;
	store_report(s->in->srv->store, &sr, on_recorded, COOKIE(s, s->nfindings++));
	free(data);
}

/* What a report says about the delivery t names. */
static void record_target(struct isess *s, const struct dsn_report *rep, const struct itarget *t)
{
	size_t i;

	if (rep->kind == DSN_FEEDBACK) {
		record(s, rep, NULL, t,
		       rep->arf_original_rcpt_to[0] ? rep->arf_original_rcpt_to : rep->orig_to);
		return;
	}
	for (i = 0; i < rep->nrcpts; i++) {
		const struct dsn_rcpt *r = &rep->rcpts[i];
		char q[300];
		if (r->action != DSN_ACTION_FAILED) {
			if (r->action == DSN_ACTION_DELAYED)
				log_info("event=bounce_report client=%s kind=delay id=%s recipient=%s "
					 "status=%s note=\"a delay notice: nothing recorded\"",
					 s->addr, t->qid, log_quote(q, sizeof(q), r->final_recipient),
					 r->status[0] ? r->status : "-");
			continue;
		}
		record(s, rep, r, t, r->final_recipient[0] ? r->final_recipient : r->original_recipient);
		/* A VERP index names one recipient: one finding is all. */
		if (!t->several)
			break;
	}
}

/*
 * Reads a VERP address into t: 0 when it is one and its tag, if it has
 * one, is right (t->tagged then says whether it had one), -1 otherwise.
 */
static int target_parse(const struct isess *s, const char *addr, struct itarget *t)
{
	char tag[VERP_TAG_LEN + 1];

	memset(t, 0, sizeof(*t));
	if (verp_parse(addr, t->qid, &t->index, &t->several, tag, NULL, 0) == -1)
		return -1;
	if (tag[0] && !verp_tag_ok(s->in->srv->cfg->verp_key, t->qid, t->index, t->several, tag))
		return -1;
	t->tagged = tag[0] != '\0';
	snprintf(t->addr, sizeof(t->addr), "%s", addr);
	return 0;
}

static void end_of_report(struct isess *s)
{
	struct dsn_report *rep = xcalloc(1, sizeof(*rep));
	struct buf msg;
	char err[200], q[300];
	int i, any_target = 0;

	buf_init(&msg, s->hdr.len + s->body.len + 1);
	buf_append(&msg, s->hdr.data, s->hdr.len);
	buf_append(&msg, s->body.data, s->body.len);
	s->state = IS_WAIT;
	s->pending = 1; /* held until every finding is sent */
	s->nfindings = 0;
	s->db_failed = 0;
	s->recorded = 0;
	if (dsn_parse(msg.data, msg.len, rep, err, sizeof(err)) == -1) {
		/* Not a report (a vacation reply, a bounce in prose): nothing
		 * to match; taken so that the sender does not retry it. */
		log_info("event=bounce_report client=%s kind=unparsed from=%s rcpt=%s reason=%s",
			 s->addr, s->from[0] ? s->from : "<>", s->rcpts[0].addr,
			 log_quote(q, sizeof(q), err));
	} else if (rep->kind == DSN_FEEDBACK && strcmp(rep->feedback_type, "not-spam") == 0) {
		log_info("event=bounce_report client=%s kind=not_spam note=\"nothing recorded\"",
			 s->addr);
	} else {
		for (i = 0; i < s->nrcpts; i++) {
			if (s->rcpts[i].qid[0] == '\0')
				continue;
			any_target = 1;
			record_target(s, rep, &s->rcpts[i]);
		}
		if (!any_target) {
			/* To the feedback or postmaster address: the returned
			 * message's envelope sender (its Return-Path, or ARF's
			 * Original-Mail-From) says which message. */
			struct itarget t;
			if (target_parse(s, rep->orig_return_path, &t) == 0 ||
			    target_parse(s, rep->arf_original_mail_from, &t) == 0)
				record_target(s, rep, &t);
			else
				log_info("event=bounce_report_unmatched client=%s kind=%s "
					 "note=\"no VERP address with a valid tag in the returned "
					 "message\"",
					 s->addr, rep->kind == DSN_FEEDBACK ? "complaint" : "bounce");
		}
	}
	buf_free(&msg);
	free(rep);
	/* Answered here when nothing went to the database (or the answers
	 * came at once); process() then reads on. */
	if (--s->pending == 0)
		report_reply(s);
}

/* ---- commands -------------------------------------------------------- */

static void cmd_helo(struct isess *s, const char *arg, size_t len, int esmtp)
{
	const struct config *cfg = s->in->srv->cfg;

	if (len == 0) {
		reply_err(s, "501 5.5.4 HELO and EHLO need a host name");
		return;
	}
	txn_reset(s);
	s->state = IS_HELO;
	if (!esmtp) {
		reply(s, "250 %s", cfg->hostname);
		return;
	}
	reply(s, "250-%s", cfg->hostname);
	reply(s, "250-PIPELINING");
	reply(s, "250-8BITMIME");
	reply(s, "250-ENHANCEDSTATUSCODES");
	if (!s->tls)
		reply(s, "250-STARTTLS");
	reply(s, "250 SIZE %zu", cfg->bounce_max_message_size);
}

/* Offered, never required: a reporting server without TLS sends in clear. */
static void cmd_starttls(struct isess *s, size_t len)
{
	const char *refusal = tls_starttls_refusal(s->tls, len);

	if (s->state == IS_FRESH) {
		reply_err(s, "503 5.5.1 Send EHLO first");
		return;
	}
	if (refusal) {
		reply_err(s, refusal);
		return;
	}
	reply(s, "220 2.0.0 Ready to start TLS");
	bufferevent_disable(s->bev, EV_READ);
	if (tls_starttls_injected(s->bev, s->addr)) {
		s->close_after_write = 1; /* after the 220; the rest is never read */
		return;
	}
	/* The upgrade happens once the 220 is written (on_write). */
	txn_reset(s);
	s->state = IS_TLS;
}

/* Swaps the plain bufferevent for a TLS one on the same socket. May free s. */
static void start_tls(struct isess *s)
{
	if (tls_upgrade(s->in->srv, s->fd, &s->bev) == -1) {
		isess_free(s);
		return;
	}
	s->bev_owns_fd = 1;
	/* The context reads ahead for the submission sessions, which take
	 * the records OpenSSL then holds themselves (session.c, tls_pull);
	 * here libevent's own reads must see every record. */
	SSL_set_read_ahead(bufferevent_openssl_get_ssl(s->bev), 0);
	setup_bev(s);
}

static void cmd_mail(struct isess *s, const char *arg, size_t len)
{
	const struct config *cfg = s->in->srv->cfg;
	struct smtp_mail_params mp;
	struct smtp_error e;
	struct smtp_path path;

	if (s->state == IS_FRESH) {
		reply_err(s, "503 5.5.1 Say EHLO or HELO first");
		return;
	}
	if (s->state != IS_HELO) {
		reply_err(s, "503 5.5.1 A transaction is already open; send RSET first");
		return;
	}
	if (smtp_parse_mail_from(arg, len, (size_t)cfg->max_path_length, &path, &mp, &e) == -1) {
		char t[300];
		snprintf(t, sizeof(t), "%d %s %s", e.code, e.enh, e.text);
		reply_err(s, t);
		return;
	}
	if (mp.size > 0 && (unsigned long long)mp.size > cfg->bounce_max_message_size) {
		char t[200];
		snprintf(t, sizeof(t),
			 "552 5.3.4 Message size %lld exceeds this server's limit of %zu octets",
			 mp.size, cfg->bounce_max_message_size);
		reply_err(s, t);
		return;
	}
	snprintf(s->from, sizeof(s->from), "%s", path.is_null ? "" : path.addr);
	s->state = IS_MAIL;
	reply(s, "250 2.1.0 Sender ok");
}

/* 1 when addr (local@domain) has the local part "postmaster" or "abuse". */
static int is_role_address(const char *addr)
{
	const char *at = strrchr(addr, '@');
	size_t n = at ? (size_t)(at - addr) : strlen(addr);

	return (n == 10 && strncasecmp(addr, "postmaster", 10) == 0) ||
	       (n == 5 && strncasecmp(addr, "abuse", 5) == 0);
}

static void cmd_rcpt(struct isess *s, const char *arg, size_t len)
{
	const struct config *cfg = s->in->srv->cfg;
	struct smtp_path path;
	struct smtp_error e;
	struct itarget *t;

	if (s->state != IS_MAIL) {
		reply_err(s, "503 5.5.1 Need MAIL FROM before RCPT TO");
		return;
	}
	if (s->nrcpts == INBOUND_MAX_RCPTS) {
		char text[120];
		snprintf(text, sizeof(text), "452 4.5.3 Too many recipients: at most %d per report",
			 INBOUND_MAX_RCPTS);
		reply(s, "%s", text);
		return;
	}
	t = &s->rcpts[s->nrcpts];
	memset(t, 0, sizeof(*t));
	t->index = -1;
	while (len > 0 && *arg == ' ') {
		arg++;
		len--;
	}
	if (len == 12 && strncasecmp(arg, "<postmaster>", 12) == 0) {
		snprintf(t->addr, sizeof(t->addr), "postmaster");
	} else if (smtp_parse_rcpt_to(arg, len, (size_t)cfg->max_path_length, 0, &path, &e) == -1) {
		char text[300];
		snprintf(text, sizeof(text), "%d %s %s", e.code, e.enh, e.text);
		reply_err(s, text);
		return;
	} else if (target_parse(s, path.addr, t) == 0) {
		/* a VERP address: its tag, if any, checked */
	} else if ((cfg->bounce_feedback_address[0] &&
		    strcasecmp(path.addr, cfg->bounce_feedback_address) == 0) ||
		   is_role_address(path.addr)) {
		snprintf(t->addr, sizeof(t->addr), "%s", path.addr);
		t->qid[0] = '\0';
	} else {
		char text[600];
		/* A VERP address that failed target_parse has a wrong tag. */
		int verp = verp_parse(path.addr, t->qid, NULL, NULL, NULL, NULL, 0) == 0;
		snprintf(text, sizeof(text), "550 5.1.1 <%s>: %s", path.addr,
			 verp ? "no such bounce address (its tag does not match its message)"
			      : "no such mailbox; this server takes only bounces and feedback "
				"reports for the platform's bounce+ addresses");
		reply_err(s, text);
		return;
	}
	s->nrcpts++;
	reply(s, "250 2.1.5 Recipient ok");
}

static void cmd_data(struct isess *s)
{
	const struct config *cfg = s->in->srv->cfg;

	if (s->state != IS_MAIL || s->nrcpts == 0) {
		reply_err(s, "503 5.5.1 Need RCPT TO before DATA");
		return;
	}
	/* No line limit: reports are kept only in part, and a returned
	 * message with a long line must not cost the report. */
	data_reader_init(&s->dr, 0, cfg->bounce_max_message_size, cfg->max_header_size);
	buf_init(&s->hdr, cfg->max_header_size);
	buf_init(&s->body, REPORT_KEEP);
	s->state = IS_DATA;
	bufferevent_set_timeouts(s->bev, &(struct timeval){cfg->data_timeout, 0},
				 &(struct timeval){cfg->data_timeout, 0});
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void data_ended(struct isess *s)
{
	const struct config *cfg = s->in->srv->cfg;

	bufferevent_set_timeouts(s->bev, &(struct timeval){cfg->command_timeout, 0},
				 &(struct timeval){cfg->command_timeout, 0});
	if (s->dr.size > cfg->bounce_max_message_size) {
		char text[200];
		snprintf(text, sizeof(text),
			 "552 5.3.4 Message too big: this server takes reports of at most %zu octets",
			 cfg->bounce_max_message_size);
		txn_reset(s);
		reply_err(s, text);
		return;
	}
	/* Other content errors (a bare LF in the returned message, a cut
	 * past REPORT_KEEP) stop only what is kept: the report part comes
	 * first and is parsed from what there is. */
	end_of_report(s);
}

static void handle_line(struct isess *s, char *line, size_t len)
{
	struct smtp_cmd cmd;

	if (smtp_parse_command(line, len, &cmd) == -1) {
		reply_err(s, "500 5.5.2 Syntax error in command line");
		return;
	}
	switch (cmd.verb) {
	case SMTP_EHLO:
	case SMTP_HELO:
		cmd_helo(s, cmd.arg ? cmd.arg : "", cmd.arg ? cmd.arglen : 0, cmd.verb == SMTP_EHLO);
		break;
	case SMTP_MAIL:
		cmd_mail(s, cmd.arg, cmd.arglen);
		break;
	case SMTP_RCPT:
		cmd_rcpt(s, cmd.arg, cmd.arglen);
		break;
	case SMTP_DATA:
		cmd_data(s);
		break;
	case SMTP_STARTTLS:
		cmd_starttls(s, cmd.arg ? cmd.arglen : 0);
		break;
	case SMTP_RSET:
		txn_reset(s);
		reply(s, "250 2.0.0 Reset");
		break;
	case SMTP_NOOP:
		reply(s, "250 2.0.0 Ok");
		break;
	case SMTP_QUIT:
		reply(s, "221 2.0.0 Bye");
		s->close_after_write = 1;
		break;
	case SMTP_VRFY:
		reply(s, "252 2.5.0 Cannot verify; send the report and it will be read");
		break;
	case SMTP_HELP:
		reply(s, "214 2.0.0 This server takes bounces and feedback reports; see RFC 3464 "
			 "and RFC 5965");
		break;
	default:
		reply_err(s, "502 5.5.1 Command not implemented on the bounce listener");
		break;
	}
}

/* ---- I/O ------------------------------------------------------------- */

static void feed(struct isess *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);

	while (evbuffer_get_length(in) > 0 && !s->dr.done)
		server_feed_data(in, &s->dr, &s->hdr, &s->body);
}

static void process(struct isess *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);

	while (!s->close_after_write && s->state != IS_WAIT && s->state != IS_TLS) {
		/* A client that sends without reading its replies waits for
		 * them to drain (on_write resumes). */
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) > OUTPUT_HIGH)
			break;
		if (s->state == IS_DATA) {
			feed(s);
			if (!s->dr.done)
				break;
			data_ended(s);
			continue;
		}
		{
			struct evbuffer_ptr p = evbuffer_search(in, "\n", 1, NULL);
			char line[INBOUND_LINE_MAX + 1];
			size_t len;

			if (p.pos < 0) {
				size_t avail = evbuffer_get_length(in);
				if (avail > INBOUND_LINE_MAX) {
					evbuffer_drain(in, avail);
					s->discarding = 1;
				}
				break;
			}
			len = (size_t)p.pos + 1;
			if (s->discarding || len > INBOUND_LINE_MAX) {
				evbuffer_drain(in, len);
				s->discarding = 0;
				reply_err(s, "500 5.5.2 Line too long");
				continue;
			}
			evbuffer_remove(in, line, len);
			line[len] = '\0';
			if (len < 2 || line[len - 2] != '\r' || memchr(line, '\r', len - 2)) {
				reply_err(s, "500 5.5.2 Command lines must end in CRLF, with no bare CR "
					     "or LF");
				continue;
			}
			handle_line(s, line, len - 2);
		}
	}
}

/*
 * After input was handled (at the end of each callback): a half-closed
 * client that has nothing more to be answered is done; a session to be
 * closed goes once its replies are written. May free s.
 */
static void after_input(struct isess *s)
{
	size_t out = evbuffer_get_length(bufferevent_get_output(s->bev));

	if (s->eof && !s->close_after_write && s->state != IS_WAIT && out <= OUTPUT_HIGH)
		s->close_after_write = 1; /* what is left of its input is no command */
	if (s->close_after_write && out == 0)
		isess_free(s);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	process(arg);
	after_input(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct isess *s = arg;

	if (s->close_after_write) {
		isess_free(s);
		return;
	}
	if (s->state == IS_TLS) {
		if (!s->bev_owns_fd)
			start_tls(s); /* the 220 is written */
		return;
	}
	process(s);
	after_input(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct isess *s = arg;

	if (what & BEV_EVENT_CONNECTED) {
		s->tls = 1;
		tls_describe(bufferevent_openssl_get_ssl(bev), s->tls_desc, sizeof(s->tls_desc));
		/* RFC 3207 4.2: nothing learnt before the handshake counts. */
		s->state = IS_FRESH;
		process(s);
		after_input(s);
		return;
	}
	/* During STARTTLS nothing can be said in clear any more: just close. */
	if ((what & BEV_EVENT_TIMEOUT) && !s->close_after_write && !(what & BEV_EVENT_WRITING) &&
	    !s->eof && s->state != IS_TLS) {
		log_info("event=timeout client=%s listener=bounce state=%d", s->addr, (int)s->state);
		reply(s, "421 4.4.2 %s Timeout: closing connection", s->in->srv->cfg->hostname);
		s->close_after_write = 1;
		return;
	}
	/* A write that timed out (the client reads nothing), or a half-closed
	 * client that went quiet: nothing more can be said. */
	if (what & BEV_EVENT_TIMEOUT) {
		isess_free(s);
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && s->close_after_write) {
		/* Its last replies are still being written: on_write ends it. */
		s->eof = 1;
		bufferevent_disable(bev, EV_READ);
		after_input(s);
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
		/* Half-closed after pipelining: its commands still get
		 * their replies (a report being recorded, its 250). */
		s->eof = 1;
		bufferevent_disable(bev, EV_READ);
		process(s);
		after_input(s);
		return;
	}
	if (what & BEV_EVENT_ERROR)
		tls_log_event_error(bev, what, s->state == IS_TLS, s->addr);
	isess_free(s);
}

static void isess_free(struct isess *s)
{
	struct inbound *in = s->in;
	char tls[120];

	log_info("event=session_end listener=bounce client=%s tls=%s reports=%d errors=%d "
		 "duration_ms=%llu",
		 s->addr, s->tls ? log_quote(tls, sizeof(tls), s->tls_desc) : "no", s->reports,
		 s->nerrors, (unsigned long long)((now_usec() - s->started) / 1000));
	if (s->prev)
		s->prev->next = s->next;
	else
		in->head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	in->nsessions--;
	hmap_counter_add(in->per_peer, s->key, -1);
	if (s->bev) {
		bufferevent_disable(s->bev, EV_READ | EV_WRITE);
		bufferevent_free(s->bev);
	}
	if (!s->bev_owns_fd || s->bev == NULL)
		evutil_closesocket(s->fd);
	buf_free(&s->hdr);
	buf_free(&s->body);
	free(s);
}

static void setup_bev(struct isess *s)
{
	const struct config *cfg = s->in->srv->cfg;

	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, REPORT_KEEP);
	bufferevent_set_timeouts(s->bev, &(struct timeval){cfg->command_timeout, 0},
				 &(struct timeval){cfg->command_timeout, 0});
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
		      void *arg)
{
	struct inbound *in = arg;
	const struct config *cfg = in->srv->cfg;
	char addr[PEER_TEXT_MAX], key[PEER_TEXT_MAX];
	struct isess *s;

	peer_name(sa, (size_t)salen, addr, key);
	evutil_make_socket_nonblocking(fd);
	{
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	if (in->nsessions >= cfg->bounce_max_connections) {
		static const char busy[] =
		    "421 4.7.0 Too many connections to the bounce listener; try again later\r\n";
		ssize_t r = write(fd, busy, sizeof(busy) - 1);
		(void)r;
		log_warn("event=refused client=%s listener=bounce reason=max_connections limit=%d",
			 addr, cfg->bounce_max_connections);
		evutil_closesocket(fd);
		return;
	}
	if (hmap_counter(in->per_peer, key) >= cfg->bounce_max_connections_per_ip) {
		char text[300];
		int n = snprintf(text, sizeof(text),
				 "421 4.7.0 Too many connections from your %s %s to the bounce "
				 "listener: at most %d at a time; try again later\r\n",
				 strchr(key, '/') ? "network" : "address", key,
				 cfg->bounce_max_connections_per_ip);
		ssize_t r = write(fd, text, (size_t)n);
		(void)r;
		log_warn("event=refused client=%s key=%s listener=bounce "
			 "reason=max_connections_per_ip limit=%d",
			 addr, key, cfg->bounce_max_connections_per_ip);
		evutil_closesocket(fd);
		return;
	}
	s = xcalloc(1, sizeof(*s));
	s->in = in;
	s->id = ++in->next_id;
	s->started = now_usec();
	snprintf(s->addr, sizeof(s->addr), "%s", addr);
	snprintf(s->key, sizeof(s->key), "%s", key);
	hmap_counter_add(in->per_peer, key, 1);
	/* Not owning the socket: STARTTLS puts a TLS bufferevent on it. */
	s->fd = fd;
	s->bev = bufferevent_socket_new(in->srv->base, fd, 0);
	s->next = in->head;
	if (in->head)
		in->head->prev = s;
	in->head = s;
	in->nsessions++;
	setup_bev(s);
	reply(s, "220 %s ESMTP bounce and feedback reports only", cfg->hostname);
}

struct inbound *inbound_start(struct server *srv, char *err, size_t errlen)
{
	const struct config *cfg = srv->cfg;
	struct inbound *in;
	int i;

	if (cfg->n_bounce_listen == 0)
		return NULL;
	in = xcalloc(1, sizeof(*in));
	in->srv = srv;
	in->per_peer = hmap_new();
	inbound_of_callbacks = in;
	for (i = 0; i < cfg->n_bounce_listen; i++) {
		char why[300];
		struct evconnlistener *l = server_listen(srv->base, &cfg->bounce_listen[i], 128,
							 on_accept, in, "bounce", why, sizeof(why));
		if (l == NULL) {
			snprintf(err, errlen, "[bounce] listen: %s", why);
			inbound_free(in);
			return NULL;
		}
		in->listeners[in->nlisteners++] = l;
	}
	return in;
}

void inbound_stop(struct inbound *in)
{
	struct isess *s, *next;
	int i;

	if (in == NULL)
		return;
	for (i = 0; i < in->nlisteners; i++)
		evconnlistener_free(in->listeners[i]);
	in->nlisteners = 0;
	/* Reports are retried by their senders: a session cut here loses
	 * nothing that was acknowledged. One waiting for the database is
	 * answered if the answer comes before the daemon exits, else cut
	 * at exit (its report, unacknowledged, comes again; if it was
	 * recorded meanwhile, the second copy is recognised). */
	for (s = in->head; s; s = next) {
		next = s->next;
		if (s->state == IS_WAIT)
			continue;
		if (s->state == IS_TLS) {
			isess_free(s); /* nothing can be said in clear any more */
			continue;
		}
		reply(s, "421 4.3.2 Service shutting down; try again later");
		s->close_after_write = 1;
	}
}

void inbound_free(struct inbound *in)
{
	int i;

	if (in == NULL)
		return;
	for (i = 0; i < in->nlisteners; i++)
		evconnlistener_free(in->listeners[i]);
	while (in->head)
		isess_free(in->head);
	hmap_free(in->per_peer, NULL);
	if (inbound_of_callbacks == in)
		inbound_of_callbacks = NULL;
	free(in);
}
