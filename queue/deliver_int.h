/*
 * deliver_int: what the delivery side's files share (deliver.c, sched.c,
 * client.c, mx.c, status.c, and the pure backoff.c and route.c). Private
 * to queue/; other folders use queue.h.
 */
#ifndef SENDGATE_QUEUE_DELIVER_INT_H
#define SENDGATE_QUEUE_DELIVER_INT_H

#include <stdint.h>
#include <sys/socket.h>

#include "queue/queue.h"

struct event_base;
struct hmap;
struct dns_resolver;
struct pool_address;
typedef struct ssl_ctx_st SSL_CTX;

/* ---- backoff.c: retry arithmetic and reply reading (pure) ------------- */

struct retry_policy {
	long first;    /* seconds before the first retry */
	double factor; /* growth per attempt */
	long max;      /* cap on one wait */
	long max_age;  /* a message older than this expires */
};

/*
 * Seconds to wait after the attempts-th failed attempt (attempts >= 1):
 * first * factor^(attempts-1), capped at max, scaled by a jitter of
 * +-20% from r in [0, 1), and never below 1 second nor above max.
 */
long retry_delay(const struct retry_policy *p, int attempts, double r);
/*
 * When the next attempt of a message received at `received` should be,
 * after a failure at now: now + max(delay, hint) (hint < 0: none), but
 * never past the expiry time received + max_age. Returns 0 when the
 * message has reached max_age and must expire instead.
 */
time_t retry_next(const struct retry_policy *p, time_t received, time_t now, int attempts,
                  long hint, double r);
/*
 * A server's "try again in N minutes" (also seconds, hours; "retry in",
 * "try again after") in a reply text: the seconds, capped at a day, or -1.
 */
long reply_retry_hint(const char *text);
/*
 * The RFC 3463 enhanced code at the start of a reply text ("5.1.1 No such
 * user" -> "5.1.1") whose class matches the reply code's first digit;
 * 1 with out filled (at least 12 bytes), else 0 and out = "".
 */
int reply_enhanced(int code, const char *text, char *out, size_t outlen);

/* ---- pace.c: acceptance first ([delivery] acceptance_first) ---------- */

/* Fewer arrivals in a window (250 ms) are not a load: 20 messages a second. */
#define PACE_MIN_ARRIVALS 5

struct pace {
	int idle_min;      /* percent: below it, with mail arriving, delivery holds */
	int holding;       /* delivery starts no new transaction */
	int quiet;         /* windows in a row that did not look busy */
	int have_last;     /* the last_ fields are a sample */
	int unavailable;   /* /proc/stat could not be read (logged once) */
	int last_free_pct; /* the machine's idle share in the last window */
	unsigned long long last_idle, last_total, last_own;
};

/*
 * The machine's idle time (not iowait) and total time, in ticks, from
 * the first line of /proc/stat (whole, with its newline). 0, or -1 when
 * it is not such a line.
 */
int pace_parse_stat(const char *text, size_t len, unsigned long long *idle,
                    unsigned long long *total);
/*
 * 1 when acceptance needs the CPUs: at least PACE_MIN_ARRIVALS messages
 * arrived in the window, and the CPU time free in it (idle, and what
 * delivery itself used) was under idle_min_percent of the total.
 */
int pace_busy(unsigned arrivals, unsigned long long free_delta, unsigned long long total_delta,
              int idle_min_percent);
/* Holding starts with the first busy window and ends after four quiet ones. */
int pace_update(struct pace *p, int busy);
/* Takes one window's sample (/proc/stat, own CPU time); 1 while delivery holds. */
int pace_sample(struct pace *p, unsigned arrivals);

/* ---- route.c: MX order, VERP, source choice, dot-stuffing (pure) ------ */

struct mx_entry {
	char host[256];
	int pref;
};

/* Sorts by preference and shuffles each run of equal preferences (RFC 5321 5.1). */
void mx_sort(struct mx_entry *e, size_t n);
/* 1 when the MX set is a null MX (RFC 7505): one record whose host is "" or ".". */
int mx_is_null(const struct mx_entry *e, size_t n);
/* The domain of an address (after the last '@'), or "" when there is none. */
const char *addr_domain(const char *addr);
/*
 * The return-path host of a sender: "<prefix>.<sender domain>" when
 * rp_ok, else bounce_domain. Writes into out; returns out.
 */
const char *verp_host(const char *sender, const char *prefix, const char *bounce_domain, int rp_ok,
                      char *out, size_t outlen);
/*
 * The VERP envelope sender "bounce+<id>.<index>.<tag>@<host>", or for a
 * transaction of several recipients (several = 1, index that of the
 * first) "bounce+<id>.m<index>.<tag>@<host>", tagged under key (queue.h
 * verp_tag). 0, or -1 when out is too small.
 */
int verp_address(char *out, size_t outlen, const char *qid, long index, int several,
                 const char *host, const unsigned char key[32]);
/*
 * Weighted choice among the addresses of a pool with address family
 * family (AF_INET/AF_INET6), from r (any 32-bit random value). The index,
 * or -1 when no address has that family.
 */
int pool_pick(const struct pool_address *a, int n, int family, uint32_t r);
/* AF_INET or AF_INET6 for an address literal, else AF_UNSPEC. */
int addr_family(const char *addr);
/*
 * Dot-stuffing for DATA, for a message that arrives in pieces split
 * anywhere: a leading '.' of each line doubled, CRLF, a bare CR and a bare
 * LF all sent as CRLF (a CR at the end of a piece waits for the next one),
 * CRLF added at the end when missing, then ".\r\n". The state is two flags.
 */
struct dotstuff {
	int bol; /* the next byte starts a line */
	int cr;  /* a CR was seen and not yet written */
};

void dotstuff_init(struct dotstuff *ds);
/* Appends the stuffed form of p (n bytes) to out: at most 2 * n + 2 bytes. */
void dotstuff_chunk(struct dotstuff *ds, struct buf *out, const char *p, size_t n);
/* Ends the message: a held CR or the missing final CRLF, then ".\r\n" (<= 5 bytes). */
void dotstuff_end(struct dotstuff *ds, struct buf *out);
/* The whole message (n bytes) stuffed onto out in one go; the bytes appended. */
size_t smtp_dotstuff(struct buf *out, const char *p, size_t n);

/* ---- status.c: the durable per-recipient results --------------------- */

/*
 * Reads queue file name in dirfd: the message (want_body), the status of
 * each recipient (*st, malloc'd, m->env.nrcpts entries), the intact length
 * (*valid_len), the file's length (*file_len) and the chain digest. Both
 * out pointers are the caller's (queue_msg_free, free). 0 or -1 with err.
 */
int dq_read_file(int dirfd, const char *name, struct queue_msg *m, int want_body,
                 struct queue_rcpt_status **st, size_t *valid_len, size_t *file_len,
                 unsigned char digest[32], char *err, size_t errlen);

/* ---- qstream.c: queue files read in bounded pieces -------------------- */

/* What a sequential check of a queue file learnt besides the envelope. */
struct qfile_info {
	size_t body_len;              /* bytes in BODY records */
	size_t end_off;               /* offset of the END record */
	unsigned char end_digest[32]; /* its digest (of the whole message) */
	size_t valid_len;             /* the intact length, status segments included */
	size_t file_len;              /* bytes read */
	unsigned char digest[32];     /* the last END/SEGEND digest, to chain from */
	unsigned char *image;         /* DQ_SCAN_KEEP: the file through END, when it
	                                 was read in one piece (dq_info_release) */
};

#define DQ_SCAN_HEADERS 0x1 /* m->message gets the header block */
#define DQ_SCAN_KEEP 0x2    /* info->image: the checked bytes, for qbody_open */

/*
 * Checks the queue file open on fd (framing, END digest, envelope, status
 * segments) in one pass through a QUEUE_BODY_CHUNK buffer, keeping only
 * the envelope, the header block and the segments: the body is hashed and
 * dropped. m gets the envelope and, with DQ_SCAN_HEADERS, the header block
 * as m->message; *st the recipients' status (malloc'd). Both are the
 * caller's (queue_msg_free, free); fd stays open and is the caller's. With
 * DQ_SCAN_KEEP a file read in one piece is kept as info->image, which
 * qbody_open takes over (else dq_info_release). 0, or -1 with err (m, *st
 * and info->image then empty).
 */
int dq_scan_file(int fd, struct queue_msg *m, int flags, struct queue_rcpt_status **st,
                 struct qfile_info *info, char *err, size_t errlen);
void dq_info_release(struct qfile_info *info);

struct qbody;
/*
 * Reads the body of the file on fd (taken over), checked by dq_scan_file
 * into info, again from the start, for sending; or, when info->image is
 * set, from that (taken over; fd is closed at once). Freed by qbody_close.
 */
struct qbody *qbody_open(int fd, struct qfile_info *info);
/*
 * The next piece of body (at most QUEUE_BODY_CHUNK bytes, in the reader's
 * buffer until the next call): 1 with *p and *n set; 0 at the end, once
 * the file's bytes up to END have hashed again to the checked digest; -1
 * with err when the file changed or could not be read meanwhile (the
 * message must then not be ended).
 */
int qbody_next(struct qbody *b, const char **p, size_t *n, char *err, size_t errlen);
void qbody_close(struct qbody *b);

struct status_writer;
/* Called on the loop once queue/id has been removed by the writer. */
typedef void (*status_removed_cb)(void *arg, const char *id);
/*
 * Starts the writer thread for the queue directory queuefd (borrowed).
 * Finished files go to ../free for reuse and are deleted from there after
 * reuse_max_age seconds ([spool] reuse_max_age; 0: deleted at once).
 */
struct status_writer *status_writer_new(struct event_base *base, int queuefd, int reuse_max_age,
                                        status_removed_cb removed, void *arg);
/*
 * Queues work on queue/id, done in order: cut the file to truncate_to
 * bytes when >= 0 (a torn tail), append data (taken over, *data left
 * empty; NULL: nothing) and fdatasync, then unlink when remove. The
 * writer thread gets a loop turn's pushes together, after that turn.
 */
void status_writer_push(struct status_writer *w, const char *id, struct buf *data, int remove,
                        long long truncate_to);
/* Finishes every queued job, stops the thread, frees the writer. */
void status_writer_free(struct status_writer *w);

/* ---- mx.c: where mail for a domain goes ------------------------------ */

struct dhost {
	char name[256]; /* MX host name (or the relay) */
	char addr[64];  /* address text */
	int family;     /* AF_INET / AF_INET6 */
	int port;
};

struct droute {
	struct dhost *hosts; /* in the order to try */
	size_t n;
	int relay;
};

enum { ROUTE_OK = 0, ROUTE_TEMPFAIL = 4, ROUTE_PERMFAIL = 5 };

/*
 * The answer of mx_resolve: status ROUTE_*; why (static or owned by the
 * query: copy it) names the problem with an enhanced code first ("5.1.10
 * ..."); route is the callee's to keep (free with droute_free).
 */
typedef void (*mx_cb)(void *arg, uint64_t cookie, int status, const char *why,
                      struct droute *route);
/*
 * Resolves domain per RFC 5321 5.1 (MX by preference, equal preferences
 * shuffled, hosts that do not resolve skipped, implicit MX, null MX) into
 * a list of addresses on port. cb runs once, from the loop.
 */
void mx_resolve(struct dns_resolver *r, const char *domain, int port, mx_cb cb, void *arg,
                uint64_t cookie);
/* Resolves the relay "host:port" the same way (A/AAAA when it is a name). */
void mx_resolve_relay(struct dns_resolver *r, const char *relay, mx_cb cb, void *arg,
                      uint64_t cookie);
void droute_free(struct droute *rt);

/* ---- client.c: the outbound SMTP client ------------------------------- */

struct dreply {
	int code;     /* 0: no reply (connection failed, timed out) */
	char enh[16]; /* "5.1.1" or "" */
	char text[512];
	int stage; /* DSTAGE_*: the command the reply answers */
};

enum { DSTAGE_CONNECT, DSTAGE_MAIL, DSTAGE_RCPT, DSTAGE_DATA, DSTAGE_LOCAL };

/* One transaction: a message to some recipients of one destination. */
struct dtxn {
	char *mail_from;
	char **rcpts; /* borrowed from the message */
	size_t nrcpts;
	struct buf hdr;     /* the header block, CRLF (the client frees it once queued) */
	struct qbody *body; /* the body, read as DATA goes (the owner closes it) */
	size_t size;        /* header block + body bytes */
	int flags;          /* QFLAG_* */
	/* results, filled by the client */
	struct dreply *rcpt_reply; /* nrcpts: the RCPT reply of each */
	struct dreply data_reply;  /* after the final dot (or why it never came) */
	void *owner;
};

/* What a connection knows about itself, for events. */
struct dconn_info {
	const char *mx;     /* host name */
	const char *addr;   /* remote address */
	const char *source; /* local address bound, "" for the system's */
	const char *tls;    /* "TLSv1.3" or "" */
	const char *mail_from; /* the transaction's envelope sender, NULL if none was sent */
};

struct dconn;

struct dclient_ops {
	/* The next transaction for c, or NULL (c then quits). */
	struct dtxn *(*next)(void *arg, struct dconn *c);
	/* t's replies are filled; the owner takes t back. */
	void (*done)(void *arg, struct dconn *c, struct dtxn *t);
	/* No host of the route could be used; why says the last problem. */
	void (*failed)(void *arg, struct dconn *c, const struct dreply *why);
	/* c is about to be freed. */
	void (*closed)(void *arg, struct dconn *c);
};

/* What every connection shares. */
struct dclient_env {
	struct event_base *base;
	SSL_CTX *ssl;
	struct hmap *notls;   /* address -> (intptr) until when TLS is skipped */
	const char *hostname; /* HELO when the pool has none */
	int connect_timeout, command_timeout, data_timeout;
	int max_messages;
	int relay_tls_required;
	const char *relay_user, *relay_pass;
	int stopping;
};

/*
 * Starts a connection along route (taken over). src4/src6 (may be NULL)
 * are the addresses to bind for IPv4/IPv6 destinations with their HELO
 * names; a family without a source address is skipped when the other one
 * has one. ops run on the loop; the connection frees itself after closed.
 */
struct dconn *dconn_new(struct dclient_env *env, struct droute *route, const char *src4,
                        const char *helo4, const char *src6, const char *helo6,
                        const struct dclient_ops *ops, void *arg);
void dconn_info(const struct dconn *c, struct dconn_info *out);
/* Asks the connection to finish its transaction and quit (or close now when abort). */
void dconn_stop(struct dconn *c, int abort_now);
/* The caller's tag (opaque). */
void dconn_set_tag(struct dconn *c, void *tag);
void *dconn_tag(const struct dconn *c);

/* Parses one EHLO keyword line into the flags below; pure. */
enum {
	EXT_PIPELINING = 1,
	EXT_STARTTLS = 2,
	EXT_SIZE = 4,
	EXT_SMTPUTF8 = 8,
	EXT_8BITMIME = 16,
	EXT_AUTH_PLAIN = 32,
};
int ehlo_keyword(const char *line, unsigned long long *size_max);

/* ---- sched.c: the scheduler ------------------------------------------ */

struct config;
struct store;
struct dsched;

/*
 * The scheduler of the delivery process: an index of the spool's messages
 * with each recipient's state, queues per (tenant, destination domain),
 * connections started within the limits. Borrows everything it is given.
 * NULL with err when the spool cannot be opened.
 */
struct dsched *sched_new(struct event_base *base, struct config *cfg, struct store *st,
                         struct dns_resolver *dns, SSL_CTX *ssl, char *err, size_t errlen);
/* Loads the spool and starts watching it (inotify, periodic rescans); 0 or -1. */
int sched_start(struct dsched *s);
/*
 * Stops taking new work; transactions in flight may finish for grace
 * seconds, then are cut. done(arg) runs once nothing is in flight and
 * every result is on disk.
 */
void sched_stop(struct dsched *s, int grace, void (*done)(void *arg), void *arg);
void sched_free(struct dsched *s);

#endif
