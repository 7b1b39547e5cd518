/*
 * bench: sendgate-bench, an SMTP submission load generator. One libevent
 * loop per thread drives many small connection state machines; the message
 * body is built once and shared by reference. Private to bench/.
 */
#ifndef SENDGATE_BENCH_H
#define SENDGATE_BENCH_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <openssl/ssl.h>

struct event_base;
struct event;
struct bufferevent;

enum bench_security {
	BENCH_PLAIN,    /* no TLS at all */
	BENCH_STARTTLS, /* plaintext greeting, then STARTTLS */
	BENCH_TLS,      /* implicit TLS from the first byte */
};

/* Everything the command line sets. */
struct bench_opts {
	const char *host;
	int port;
	enum bench_security security;
	const char *user;
	const char *secret;
	int conns;
	long long total;
	size_t size;
	int rcpts;
	const char *from;
	const char *to;
	long long per_conn; /* 0 = unlimited */
	double rate;        /* messages per second over all, 0 = as fast as possible */
	int pipelining;
	int json;
	int threads;
	int timeout; /* seconds, per reply */
	int ramp;    /* most connections in setup at once */
	int idle;    /* idle mode: connections to open, 0 = off */
	int hold;    /* idle mode: seconds to hold them */
	pid_t pid;   /* idle mode: server pid for VmRSS, 0 = none */
	const char *helo;
	int quiet;
};

/* ---- msg.c: the message bytes, built once ----------------------------- */

struct bench_msg {
	char *body; /* MIME headers, blank line, text, ".\r\n"; shared */
	size_t body_len;
	char *from;      /* envelope and header From address */
	char *to_prefix; /* --to split at "%d" */
	char *to_suffix;
	int to_counted; /* --to has a %d */
	char date[64];
	char token[17]; /* random per run, keeps Message-IDs unique */
	const char *msgid_domain;
	size_t header_len_estimate;
};

/*
 * Builds the shared body so that headers plus body come to about size
 * bytes. Returns 0, or -1 with a reason in err (bad --to pattern).
 */
int msg_init(struct bench_msg *m, const char *from, const char *to, size_t size, char *err,
             size_t errlen);
/* Writes recipient number n's address into out; returns its length or -1. */
int msg_rcpt(const struct bench_msg *m, long long n, char *out, size_t outlen);
/*
 * Writes the per-message headers (From, To, Subject, Date, Message-ID) of
 * message id into out; returns their length, or -1 when out is too small.
 */
int msg_headers(const struct bench_msg *m, long long id, const char *rcpt, char *out,
                size_t outlen);
/* Frees what msg_init allocated. */
void msg_free(struct bench_msg *m);

/* ---- stats.c: latencies and errors of one thread ------------------------ */

/* Pseudo reply codes for failures that have no SMTP reply. */
enum { ERR_DISCONNECT = 0, ERR_TIMEOUT = 1, ERR_PROTOCOL = 2 };
#define STATS_MAX_TEXTS 32

struct stats_err {
	int code;
	long long count;
	char text[160]; /* first reply seen with this code */
};

struct stats {
	uint32_t *lat; /* microseconds, end of data to 250 */
	size_t n_lat, cap_lat;
	uint32_t *setup; /* microseconds, connect to ready */
	size_t n_setup, cap_setup;
	long long accepted;
	long long failed; /* messages not accepted */
	long long bytes;  /* message bytes accepted */
	struct stats_err errs[STATS_MAX_TEXTS];
	int n_errs;
	long long conn_opened; /* TCP connects that succeeded */
	long long conn_ready;  /* reached the state to send mail */
	long long conn_failed; /* closed by an error (any stage) */
};

/* Zeroes s; the sample arrays grow on first use. */
void stats_init(struct stats *s);
/* Records one end-of-data latency sample. */
void stats_latency(struct stats *s, uint64_t usec);
/* Records one connect-to-ready time. */
void stats_setup(struct stats *s, uint64_t usec);
/* Counts one failed message under code; text is the reply (may be NULL). */
void stats_error(struct stats *s, int code, const char *text);
/* Adds src into dst. */
void stats_merge(struct stats *dst, const struct stats *src);
/* Sorts the latency arrays; call once before stats_pct. */
void stats_finish(struct stats *s);
/* The p-th percentile (0..100) of sorted values, in microseconds; 0 if none. */
uint64_t stats_pct(const uint32_t *v, size_t n, double p);
/* Short label for an error code: "550", "disconnect", "timeout". */
const char *stats_code_name(int code, char *buf, size_t len);
/* Frees the sample arrays. */
void stats_free(struct stats *s);

/* ---- conn.c: one connection's state machine ----------------------------- */

struct conn;

/* State shared by all threads. */
struct bench_run {
	const struct bench_opts *o;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	SSL_CTX *ssl_ctx;
	struct bench_msg msg;
	uint64_t t0;     /* run start, now_usec() */
	char *auth_line; /* "AUTH PLAIN ...\r\n" or NULL */
	_Atomic long long next_msg;
	_Atomic long long next_rcpt;
	_Atomic long long done_ok;   /* messages accepted, all threads (progress) */
	_Atomic long long done_fail; /* messages failed, all threads (progress) */
	_Atomic int ever_ready;      /* some connection got through setup */
	_Atomic int aborting;
	char abort_msg[512];
	struct worker **workers;
	int n_workers;
};

/* One thread: its loop, its connections, its statistics. */
struct worker {
	struct bench_run *run;
	struct event_base *base;
	struct stats st;
	int to_open;  /* connections still to start */
	int in_setup; /* connecting, handshaking, before ready */
	int active;   /* open connections */
	int ready;    /* idle mode: connections sitting ready */
	int setup_fail_streak;
	int filling;        /* inside worker_fill */
	struct conn *conns; /* all open connections */
	int idle_mode;
	int holding; /* idle mode: hold phase started */
	long long closed_in_hold;
	int last_errno; /* last connect/socket errno seen */
	char last_setup_error[256];
};

/* Opens connections until to_open is used up or ramp is reached. */
void worker_fill(struct worker *w);
/* Closes every connection of w (idle mode end). */
void worker_close_all(struct worker *w);
/*
 * Stops the whole run with a message printed by main (first caller wins);
 * safe from any thread.
 */
void bench_abort(struct bench_run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- idle.c: --idle/--hold memory measurement ------------------------- */

/* Runs idle mode on run; returns the process exit status. */
int idle_run(struct bench_run *run);
/* sign.c: "sendgate-bench sign": DKIM signatures per second. */
int sign_bench(int argc, char **argv);
/* Called by conn.c when an idle-mode connection became ready or closed. */
void idle_progress(struct worker *w);

#endif
