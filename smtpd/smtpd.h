/*
 * smtpd: listeners, TLS, the SMTP submission session, and the pure parsers
 * it relies on (command lines, RFC 5321 paths, the DATA reader, SASL, the
 * From/Sender header mailboxes). The parsers do no I/O and are what the
 * unit tests and fuzzers call.
 */
#ifndef SENDGATE_SMTPD_H
#define SENDGATE_SMTPD_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/common.h"

/* ---- proto.c: command lines ------------------------------------------- */

enum smtp_verb {
	SMTP_HELO,
	SMTP_EHLO,
	SMTP_MAIL,
	SMTP_RCPT,
	SMTP_DATA,
	SMTP_BDAT,
	SMTP_RSET,
	SMTP_NOOP,
	SMTP_QUIT,
	SMTP_VRFY,
	SMTP_EXPN,
	SMTP_HELP,
	SMTP_STARTTLS,
	SMTP_AUTH,
	SMTP_UNKNOWN,
};

struct smtp_cmd {
	enum smtp_verb verb;
	const char *arg; /* points into the line: text after the verb and one SP */
	size_t arglen;
};

/*
 * Splits a command line (CRLF already removed, len bytes, may contain any
 * byte) into verb and argument. MAIL and RCPT are recognised by the whole
 * "MAIL FROM:" / "RCPT TO:" prefix (case-insensitive); arg then starts
 * after the colon. Returns 0, or -1 for a syntactically unusable line
 * (empty, NUL byte, verb followed by something other than SP); an unknown
 * verb is not an error (verb = SMTP_UNKNOWN).
 */
int smtp_parse_command(const char *line, size_t len, struct smtp_cmd *cmd);
/*
 * Formats one reply line and its CRLF into line (size >= 3; text cut to
 * fit). Returns the length, 0 when nothing could be formatted.
 */
size_t smtp_reply_line(char *line, size_t size, const char *fmt, va_list ap);

/* ---- addr.c: RFC 5321 paths and parameters ----------------------------- */

/* A reply the caller sends as is: "code enh text". */
struct smtp_error {
	int code;	 /* 501, 553, 555, ... */
	const char *enh; /* "5.1.7" */
	char text[160];
};

#define SMTP_ADDR_MAX 320 /* 64 local + @ + 255 domain */

struct smtp_path {
	char addr[SMTP_ADDR_MAX + 1]; /* "local@domain", quoted local kept as sent */
	size_t local_len;	      /* bytes before the '@' */
	const char *domain;	      /* points into addr, after '@' */
	int is_null;		      /* "<>" */
	int utf8;		      /* contains non-ASCII (needs SMTPUTF8) */
};

struct smtp_mail_params {
	long long size; /* SIZE=, -1 if absent */
	int body;	/* 0 absent, 7 for 7BIT, 8 for 8BITMIME */
	int smtputf8;
};

/*
 * Parses the argument of MAIL FROM: ("<path> [params]"): the strict RFC
 * 5321 Mailbox grammar (dot-string or quoted-string local part, domain or
 * address literal), no source routes, no '%' or '!' in the local part, at
 * most max_path octets, SP-separated ESMTP parameters SIZE, BODY, SMTPUTF8
 * (others → 555 5.5.4). Non-ASCII is accepted only when SMTPUTF8 is given
 * (RFC 6531). The domain is lower-cased. 0, or -1 with err filled.
 */
int smtp_parse_mail_from(const char *arg, size_t len, size_t max_path, struct smtp_path *path,
			 struct smtp_mail_params *params, struct smtp_error *err);
/*
 * Parses the argument of RCPT TO: ("<path> [params]"); null path and
 * "<postmaster>" alone are refused for submission; no parameters accepted
 * (555 5.5.4). utf8_ok: the transaction declared SMTPUTF8. 0 or -1 + err.
 */
int smtp_parse_rcpt_to(const char *arg, size_t len, size_t max_path, int utf8_ok,
		       struct smtp_path *path, struct smtp_error *err);
/* 1 when s is a syntactically valid domain name (LDH labels, ≤ 255). */
int smtp_domain_valid(const char *s, size_t len);

/* ---- data.c: the DATA reader -------------------------------------------- */

enum data_err {
	DATA_OK = 0,
	DATA_BARE_CR,	     /* CR not followed by LF */
	DATA_BARE_LF,	     /* LF not preceded by CR */
	DATA_NUL,	     /* NUL byte */
	DATA_LINE_TOO_LONG,  /* a line over max_line octets incl. CRLF */
	DATA_TOO_BIG,	     /* message over max_size */
	DATA_HEADER_TOO_BIG, /* header block over max_header */
};

/*
 * Reads the DATA stream. Only CR LF "." CR LF ends the message; every
 * other variant (bare LF or CR around a dot, NUL, ...) is content that
 * sets the first error and is discarded, so reading continues to the real
 * end and a smuggled second transaction is swallowed. Lines starting with
 * "." lose that dot (RFC 5321 4.5.2). Output is split: the header block
 * (up to and including the blank line that ends it) goes to hdr, the rest
 * to body; a first line that is not a header field starts the body
 * directly. After an error, output stops but size is still counted.
 */
struct data_reader {
	size_t max_line;
	size_t max_size;
	size_t max_header;
	/* state, private */
	int state;	     /* where in the line we are (data.c ST_*) */
	int in_header;	     /* still inside the header block */
	int first_line;	     /* the current line is the message's first */
	int hclass;	     /* what the current line is (data.c HC_*) */
	size_t line_len;     /* content octets of the current line, without CRLF */
	size_t line_len_out; /* octets of the current line held tentatively in hdr */
	size_t hdr_size;     /* octets written to hdr */
	/* results */
	size_t size;	    /* unstuffed message bytes seen so far */
	enum data_err error; /* first error, DATA_OK if none */
	int eight_bit;	    /* some byte >= 0x80 seen */
	int done;
};

void data_reader_init(struct data_reader *dr, size_t max_line, size_t max_size, size_t max_header);
/*
 * Consumes up to n bytes of in, appending output to hdr and body. Returns
 * the number of bytes consumed: all of n, or fewer when the end-of-data
 * line was reached (dr->done = 1; the rest of in is pipelined commands).
 * An output buffer that refuses bytes (its max) is recorded as
 * DATA_HEADER_TOO_BIG (hdr) or DATA_TOO_BIG (body) and reading goes on to
 * the real end; -1 only when hdr == body (a caller bug). A limit of 0 in
 * data_reader_init means none. When a header block is not ended by a
 * blank line, the reader adds that CRLF to hdr before the first body line.
 */
ssize_t data_reader_feed(struct data_reader *dr, const char *in, size_t n, struct buf *hdr,
			 struct buf *body);
/* A sentence for an error, e.g. "bare LF in message content". */
const char *data_err_text(enum data_err e);

/* ---- sasl.c: AUTH PLAIN and LOGIN -------------------------------------- */

#define SASL_MAX_FIELD 255

/*
 * Decodes an AUTH PLAIN initial response (base64 of authzid NUL authcid NUL
 * passwd). authzid must be empty or equal to authcid. 0, or -1 when the
 * encoding or layout is wrong.
 */
int sasl_plain_decode(const char *b64, size_t len, char user[SASL_MAX_FIELD + 1],
		      char pass[SASL_MAX_FIELD + 1]);
/* Decodes one base64 line of AUTH LOGIN into out. 0 or -1. */
int sasl_login_decode(const char *b64, size_t len, char out[SASL_MAX_FIELD + 1]);

/* ---- header.c: message header fields --------------------------------- */

/*
 * Calls fn for each header field of a header block (CRLF endings, folded
 * continuations included in the field), with name length. Stops at the
 * blank line. Returns 0, or -1 when a line is neither a field nor a
 * continuation.
 */
int header_walk(const char *hdr, size_t len,
		int (*fn)(void *arg, const char *field, size_t flen, size_t namelen), void *arg);
/* 1 when header block hdr has a field called name (case-insensitive). */
int header_has(const char *hdr, size_t len, const char *name);
/*
 * Extracts the mailboxes of an address-list header value (RFC 5322 3.4:
 * display names, quoted strings, comments, angle addresses, groups).
 * Fills up to max addr-specs "local@domain" (domain lower-cased) and
 * returns how many the value holds, or -1 when it does not parse.
 */
int header_mailboxes(const char *value, size_t len, char out[][SMTP_ADDR_MAX + 1], int max);

/* ---- peer.c: client addresses for the per-address limits -------------- */

struct sockaddr;

#define PEER_TEXT_MAX 64 /* an IPv6 address text, a "/64" key, "unknown" */

/*
 * Names a client socket address: text is the address as logged, key what
 * the per-address limits count by: the IPv4 address, or the IPv6 /64
 * ("2001:db8:1:2::/64"); IPv4-mapped IPv6 (::ffff:a.b.c.d) is IPv4. Fills
 * both (PEER_TEXT_MAX bytes each); 0, or -1 with both "unknown" when sa is
 * neither IPv4 nor IPv6.
 */
int peer_name(const struct sockaddr *sa, size_t salen, char *text, char *key);

/* What the limits remember about one key. Times are in seconds of one clock. */
struct peer_state {
	int conns;	     /* open connections */
	int auth_failures;   /* failed AUTHs within the memory window */
	time_t last_failure; /* when the last one happened */
};

/* Counts a failed AUTH at now; failures older than memory s are forgotten. */
void peer_auth_failed(struct peer_state *p, time_t now, int memory);
/* 1 when the key has max_failures recent failures (its greeting is delayed). */
int peer_penalized(struct peer_state *p, time_t now, int memory, int max_failures);
/* 1 when the key has no connection and no failure within memory s. */
int peer_forgettable(const struct peer_state *p, time_t now, int memory);

/* ---- tenantlim.c: per-tenant sessions and messages per minute -------- */

/*
 * The per-tenant limits' counters: authenticated sessions open and a token
 * bucket of messages per minute, per tenant. Times are microseconds of the
 * monotonic clock, passed by the caller; limits are passed with each call
 * (0: no limit). Entries are freed once a tenant has no session and a
 * full bucket.
 */
struct tenantlim;
struct tenantlim *tenantlim_new(void);
void tenantlim_free(struct tenantlim *tl);
/*
 * Counts a newly authenticated session of tenant_id: 1, or 0 (not counted)
 * when the tenant already has max sessions open.
 */
int tenantlim_open(struct tenantlim *tl, int64_t tenant_id, int max, uint64_t now);
/* A session counted by tenantlim_open has ended. */
void tenantlim_close(struct tenantlim *tl, int64_t tenant_id, uint64_t now);
/*
 * Takes one message from tenant_id's bucket (capacity per_minute, refilled
 * at per_minute per 60 s; a new bucket starts full): 1, or 0 when it holds
 * less than one token (nothing taken).
 */
int tenantlim_take(struct tenantlim *tl, int64_t tenant_id, int per_minute, uint64_t now);
/* Authenticated sessions of tenant_id counted now. */
int tenantlim_sessions(const struct tenantlim *tl, int64_t tenant_id);
/* Tenants the table holds. */
size_t tenantlim_count(const struct tenantlim *tl);
/* Frees the entries with no session whose bucket is full at now; how many. */
size_t tenantlim_sweep(struct tenantlim *tl, uint64_t now);

/* ---- server.c: the daemon ---------------------------------------------- */

struct event_base;
struct config;

/*
 * Runs the daemon with a loaded config until SIGTERM/SIGINT. Returns the
 * process exit code.
 */
int smtpd_run(struct config *cfg, const char *config_path);
/*
 * Gives up root for [server] user (handing it the spool first); refuses
 * (exits) when running as root without one. No-op when not root.
 */
void smtpd_drop_privileges(const struct config *cfg);

#endif
