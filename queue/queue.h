/*
 * queue: the durable spool. The SMTP session hands it a finished message
 * through queue_begin / queue_write_body / queue_commit / queue_abort and
 * learns the outcome by callback on its event loop.
 *
 * Spool layout under [spool] dir:
 *   tmp/         messages being received (removed at start: never acknowledged)
 *   queue/       committed messages, one file per message, named by queue id
 *   quarantine/  queue files found damaged at start
 *   free/        delivered files kept for reuse as new messages' files (their
 *                old bytes are overwritten and cut to length before commit)
 *
 * Queue file format: a sequence of records, each
 *   u8 type | u32 big-endian length | length bytes of data
 * in this order: MAGIC, zero or more BODY chunks (as DATA streamed in),
 * HEADERS (the final header block, with the header/body separator),
 * ENVELOPE fields, and END whose data is the SHA-256 of every byte before
 * the END record. A file without a valid END is damaged.
 *
 * Readers accept records in any order after MAGIC, require exactly one
 * HEADERS, ID, TENANT, SENDER and RECEIVED and at least one RCPT, and skip
 * unknown types >= QREC_FIRST_OPTIONAL (added by later versions); unknown
 * types below it are damage. The message is HEADERS then the BODY chunks in
 * file order.
 *
 * Delivery appends per-recipient status after END as segments "STATUS
 * record(s) | SEGEND", each SEGEND holding the SHA-256 of the previous
 * END/SEGEND digest followed by the segment's bytes (see status.c below). A
 * torn append leaves an incomplete last segment, which a reader drops
 * without touching the intact message before it. So queue_rec_walk checks
 * the message up to END and, after END, accepts only what appends leave:
 * bytes that start with a STATUS record, or zeros; anything else is damage.
 */
#ifndef SENDGATE_QUEUE_H
#define SENDGATE_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/common.h"

struct event_base;

#define QUEUE_ID_LEN 20 /* characters, [0-9A-Z] */

/* free/ holds at most this many files, none larger than QUEUE_FREE_MAX_SIZE. */
#define QUEUE_FREE_MAX 4096
#define QUEUE_FREE_MAX_SIZE (64 * 1024)
/* free/ is swept of files older than [spool] reuse_max_age this often (s). */
#define QUEUE_FREE_SWEEP_SEC 60

/* ---- record.c: the record format, pure ------------------------------- */

enum queue_rec_type {
	QREC_MAGIC = 1,     /* "SENDGATE-Q1" */
	QREC_BODY = 2,      /* a chunk of body bytes */
	QREC_HEADERS = 3,   /* the header block incl. the blank separator line */
	QREC_ID = 10,       /* queue id */
	QREC_TENANT = 11,   /* "<tenant id> <tenant name>" */
	QREC_AUTH = 12,     /* authenticated SMTP username */
	QREC_SENDER = 13,   /* envelope sender (no angle brackets) */
	QREC_RCPT = 14,     /* one recipient (no angle brackets), in order */
	QREC_RECEIVED = 15, /* unix time, decimal text */
	QREC_CLIENT = 16,   /* client address text */
	QREC_FLAGS = 17,    /* "8bitmime", "smtputf8", space separated */
	QREC_END = 255,     /* SHA-256 of all preceding bytes */
};

#define QREC_HDR_LEN 5
#define QREC_MAX_LEN (64u << 20)
#define QREC_FIRST_OPTIONAL 100      /* unknown types from here on are skipped */
#define QUEUE_BODY_CHUNK (64u << 10) /* body bytes per BODY record */
/* Files past this are not ours: the biggest message is far smaller. */
#define QUEUE_FILE_MAX ((long long)1 << 30)

/* Writes a record header for (type, len) into out[5]. */
void queue_rec_header(unsigned char out[QREC_HDR_LEN], int type, uint32_t len);
/* The length a record header h[5] gives. */
uint32_t queue_rec_len(const unsigned char *h);

/*
 * The END digest was checked over the whole file by the caller (which
 * keeps only part of it, e.g. without the BODY records): the walk and the
 * parse check everything else and skip the digest.
 */
#define QUEUE_DIGEST_CHECKED 0x2
/* For queue_msg_parse: assemble the message bytes (not needed to list). */
#define QUEUE_PARSE_BODY 0x1

/*
 * Walks a whole queue file image. Calls fn for each record before END and
 * checks the END digest (unless flags has QUEUE_DIGEST_CHECKED). Returns 0
 * when the file is complete and intact, -1 with err naming the problem
 * (truncated, bad checksum, bad magic, ...).
 */
int queue_rec_walk(const unsigned char *p, size_t n, int flags,
                   int (*fn)(void *arg, int type, const unsigned char *data, size_t len), void *arg,
                   char *err, size_t errlen);

/* Appends one record (header and data) to out; 0, or -1 if too long. */
int queue_rec_append(struct buf *out, int type, const void *data, size_t len);
/* Appends the MAGIC record that starts every queue file; 0 or -1. */
int queue_magic_append(struct buf *out);

/* ---- qid.c: queue ids ------------------------------------------------- */

/*
 * Writes a new queue id into out: 11 base32 characters of the wall clock in
 * microseconds (strictly increasing within the process) and 9 of randomness,
 * so ids sort by time and stay unique across restarts and processes.
 */
void queue_id_new(char out[QUEUE_ID_LEN + 1]);
/* 1 when s is QUEUE_ID_LEN characters of [0-9A-Z] (safe as a file name). */
int queue_id_valid(const char *s);

/* ---- the envelope ----------------------------------------------------- */

struct queue_envelope {
	char id[QUEUE_ID_LEN + 1];
	int64_t tenant_id;
	char *tenant;    /* tenant name */
	char *auth_user; /* SMTP username */
	char *sender;
	char **rcpts;
	size_t nrcpts;
	time_t received;
	char *client;
	int flags; /* QFLAG_* */
};

#define QFLAG_8BITMIME 1
#define QFLAG_SMTPUTF8 2

/* Frees the strings env owns and zeroes it (env itself is the caller's). */
void queue_envelope_free(struct queue_envelope *env);
/*
 * Appends env as ID, TENANT, AUTH, SENDER, RCPT..., RECEIVED, CLIENT, FLAGS
 * records to out (AUTH, CLIENT, FLAGS only when set). -1 with errno EINVAL
 * when a field could not be read back (bad id, no recipient, control
 * characters, ...), so nothing unreadable is ever committed.
 */
int queue_env_encode(const struct queue_envelope *env, struct buf *out);

/* A parsed queue file: the envelope and the message as it will be sent. */
struct queue_msg {
	struct queue_envelope env;
	struct buf message; /* headers + body, CRLF line endings */
	size_t header_len;  /* bytes of message that are the header block */
};

/*
 * Reads and checks one queue file. On success fills m (free with
 * queue_msg_free) and returns 0; -1 with err on a damaged or unreadable file
 * (m is then left empty).
 * want_body = 0 skips assembling the message bytes (listing).
 */
int queue_read_file(const char *path, struct queue_msg *m, int want_body, char *err, size_t errlen);
/*
 * The pure half of queue_read_file: checks a whole file image (p, n) and
 * fills m (free with queue_msg_free). 0, or -1 with err and m left empty.
 * flags: QUEUE_PARSE_BODY assembles the message bytes; QUEUE_DIGEST_CHECKED
 * (above) skips the END digest.
 */
int queue_msg_parse(const unsigned char *p, size_t n, struct queue_msg *m, int flags, char *err,
                    size_t errlen);
void queue_msg_free(struct queue_msg *m);

/* ---- spool.c: the spool as the daemon uses it ------------------------ */

struct spool;
struct spool_txn;

/*
 * Called on the event loop once a commit is on stable storage (err == 0,
 * id is the queue id) or failed (err is an errno; nothing is left behind).
 */
typedef void (*queue_commit_cb)(uint64_t cookie, const char *id, int err);

/*
 * Opens the spool under dir: creates the folders, deletes temp files,
 * quarantines damaged queue files (one log line each) and starts nthreads
 * commit threads (<= 0: 2) whose completions run on base. Takes an exclusive
 * flock on dir itself: a second process opening the same spool fails (it would
 * delete the first one's temp files). NULL with err on failure.
 * Batches of commits are made durable with one syncfs() on Linux >= 5.8
 * (SENDGATE_SPOOL_NO_SYNCFS in the environment: fdatasync per file instead).
 */
struct spool *spool_open(struct event_base *base, const char *dir, int nthreads, char *err,
                         size_t errlen);
/* Waits for in-flight commits, stops the threads, frees the spool. */
void spool_close(struct spool *sp);
/*
 * 0: new messages never take files from free/ ([spool] reuse_max_age = 0,
 * where the delivery side deletes delivered files), so free/ is not even
 * listed. On by default.
 */
void spool_set_reuse(struct spool *sp, int on);
/*
 * Number of messages in queue/: counted at open, kept up to date by
 * commits, and recounted at most once a second (the delivery process
 * removes files). Loop thread only.
 */
/*
 * The delivery process's metrics for the daemon's GET /metrics: a file in
 * the spool's top folder, "# pid N" then the Prometheus text, at most
 * QUEUE_METRICS_MAX bytes; rewritten when it changes, and once a minute.
 */
#define QUEUE_METRICS_FILE "delivery.metrics"
#define QUEUE_METRICS_MAX 4096
#define QUEUE_METRICS_HEARTBEAT 60 /* seconds */
size_t spool_count(struct spool *sp);
/* The same, recounted only when the last count is older than max_age_usec. */
size_t spool_count_within(struct spool *sp, uint64_t max_age_usec);
/* 1 when a file can be created and removed in tmp/ (readiness check). */
int spool_writable(struct spool *sp);
/*
 * Group-commit counters since open: messages committed (successfully),
 * batches, i.e. directory fsyncs of queue/, and of those the batches of one
 * synced by the caller of queue_commit_prepared. Any pointer may be NULL.
 */
void spool_stats(struct spool *sp, uint64_t *commits, uint64_t *batches, uint64_t *caller_synced);

/*
 * Starts a message: a temp file in tmp/ (one open descriptor per message
 * until its commit completes). The txn is the caller's until it is handed
 * to queue_commit or queue_abort. NULL with errno on failure.
 */
struct spool_txn *queue_begin(struct spool *sp);
/* The queue id chosen for this message (valid until commit completes). */
const char *queue_txn_id(const struct spool_txn *t);
/*
 * Appends body bytes (buffered, written as BODY records of up to
 * QUEUE_BODY_CHUNK bytes). 0, or -1 with errno after a write error, which
 * then also fails queue_commit (so a caller may check only there).
 */
int queue_write_body(struct spool_txn *t, const void *p, size_t n);
/*
 * Finishes the message: writes HEADERS (hdr, hlen bytes: the complete final
 * header block including the blank separator line, if any), the envelope and
 * END, then hands the file to a commit thread, which fsyncs it, renames it
 * into queue/ and fsyncs the directory; commits in flight together share
 * the directory fsync. cb runs on the loop afterwards. The txn is owned by
 * the spool from here on, whatever the outcome. Returns -1 with errno (and
 * calls no callback) if the commit could not even be started: an earlier
 * write error (ENOSPC, EIO...), an envelope that could not be read back
 * (EINVAL), a record over QREC_MAX_LEN (EFBIG); the txn and its temp file
 * are then gone. env->id is ignored: the file gets the txn's id.
 */
int queue_commit(struct spool_txn *t, const struct queue_envelope *env, const void *hdr,
                 size_t hlen, queue_commit_cb cb, uint64_t cookie);
/*
 * queue_commit in two halves, for a message finished on another thread
 * (the DKIM signer). queue_txn_set_envelope, on the loop, encodes env into
 * the txn (env->id ignored; -1 with errno EINVAL when a field could not be
 * read back, the txn still the caller's). queue_commit_prepared may then run
 * on any one thread at a time: HEADERS is top (toplen bytes, e.g. the
 * DKIM-Signature fields; may be NULL) followed by hdr, and the rest is as
 * in queue_commit (cb still runs on the loop), except that under load it
 * wakes a commit thread only when none is syncing: a busy one takes the
 * message with everything else waiting when its batch is done. (Woken for
 * each message, the second thread synced batches of one: 6-9 % less c50
 * throughput with signer threads committing.) From another thread than the
 * loop (QUEUE_FROM_THREAD or _MAY_SYNC), under light load (at most 8
 * messages on their way to the spool) the idle thread is woken at once, as
 * for queue_commit.
 * With QUEUE_FROM_THREAD_MAY_SYNC (the call may then block for a sync) a
 * message that would be alone in its batch (nothing waiting, no other txn
 * open) is also made durable by the calling thread before the call
 * returns; cb still runs on the loop. The spool must not be closed while a
 * call is in progress.
 */
enum queue_caller {
	QUEUE_FROM_LOOP,            /* never syncs, never wakes a thread early */
	QUEUE_FROM_THREAD,          /* light load wakes the idle commit thread */
	QUEUE_FROM_THREAD_MAY_SYNC, /* that, and a lone message is synced here */
};
int queue_txn_set_envelope(struct spool_txn *t, const struct queue_envelope *env);
int queue_commit_prepared(struct spool_txn *t, const void *top, size_t toplen, const void *hdr,
                          size_t hlen, queue_commit_cb cb, uint64_t cookie, enum queue_caller from);
/* Drops an uncommitted message and its temp file (any thread, once the
 * txn has left the loop). */
void queue_abort(struct spool_txn *t);

/*
 * Calls fn with the path of each committed queue file under the spool dir
 * (dir/queue/ID, in id order, i.e. oldest first); returns the count or -1.
 */
int queue_list_files(const char *dir, void (*fn)(void *arg, const char *path), void *arg);

/* ---- delivery (deliver*.c, sched.c, client.c, mx.c) ---------------------- */

struct config;

/*
 * Runs the delivery side until SIGTERM/SIGINT: its own event loop, its own
 * database connection and DNS resolver, reading the spool the submission
 * side fills. Started by the daemon as "sendgate --delivery-only".
 * Returns the process exit code.
 */
int delivery_run(struct config *cfg);

/*
 * Per-recipient results appended after END (status.c). A segment is one or
 * more STATUS records followed by SEGEND, whose data is the SHA-256 of the
 * previous END/SEGEND digest followed by the segment's bytes (its STATUS
 * records). A reader applies intact segments in order and drops the first
 * broken one and everything after it (a torn append). STATUS data is text:
 * "<rcpt index> <state> <attempts> <last attempt> <next attempt>", times
 * in unix seconds, state one of the words of queue_rcpt_state_str.
 */
#define QREC_STATUS 20
#define QREC_SEGEND 21

enum queue_rcpt_state {
	QRCPT_PENDING = 0, /* never tried */
	QRCPT_DEFERRED,    /* tried, to be tried again at next */
	QRCPT_DELIVERED,   /* final: a 2xx after DATA */
	QRCPT_BOUNCED,     /* final: a 5xx, or undeliverable */
	QRCPT_EXPIRED,     /* final: still deferred at [delivery] max_age */
};

struct queue_rcpt_status {
	int state; /* enum queue_rcpt_state */
	int attempts;
	time_t last; /* time of the last attempt, 0 if none */
	time_t next; /* deferred: earliest next attempt */
};

/* "pending", "deferred", "delivered", "bounced", "expired". */
const char *queue_rcpt_state_str(int state);
/* 1 when state is final (delivered, bounced, expired). */
int queue_rcpt_state_final(int state);
/*
 * Reads the status segments after END of a queue file image (p, n): st
 * (nrcpts entries) is zeroed, then every intact segment's records are
 * applied in order. *valid_len (may be NULL) gets the length of the intact
 * part (shorter than n after a torn append); digest (may be NULL) the last
 * END/SEGEND digest, which the next segment chains from. Returns the number
 * of intact segments, or -1 when the image has no END record.
 */
int queue_status_parse(const unsigned char *p, size_t n, struct queue_rcpt_status *st,
                       size_t nrcpts, size_t *valid_len, unsigned char digest[32]);
/*
 * Appends to out one segment holding the status of the recipients idx[0..n)
 * (st is indexed by recipient), chained from digest, which is updated to
 * the new SEGEND digest.
 */
void queue_status_segment(struct buf *out, unsigned char digest[32], const size_t *idx, size_t n,
                          const struct queue_rcpt_status *st);
/*
 * Reads the queue file at path with its recipients' status: m as
 * queue_read_file fills it (want_body as there) and *st a malloc'd array of
 * m->env.nrcpts entries (the caller frees both). 0, or -1 with err.
 */
int queue_read_status(const char *path, struct queue_msg *m, int want_body,
                      struct queue_rcpt_status **st, char *err, size_t errlen);

/* ---- dsn.c: bounce and complaint reports, VERP addresses (pure) ------- */

#define DSN_MAX_RCPTS 32  /* per-recipient blocks kept from one report */
#define DSN_FIELD_MAX 256 /* every text field is cut to this, NUL included */

enum dsn_kind {
	DSN_UNKNOWN = 0, /* not a report we understand (no multipart/report) */
	DSN_DELIVERY,    /* report-type=delivery-status (RFC 3464) */
	DSN_FEEDBACK,    /* report-type=feedback-report (RFC 5965, ARF) */
};

enum dsn_action {
	DSN_ACTION_OTHER = 0, /* missing or unknown */
	DSN_ACTION_FAILED,
	DSN_ACTION_DELAYED,
	DSN_ACTION_DELIVERED,
	DSN_ACTION_RELAYED,
	DSN_ACTION_EXPANDED,
};

/*
 * Every text field below is NUL-terminated, cut on a character boundary
 * and safe to log or store: tabs become spaces, and other control bytes
 * and bytes that are not UTF-8 become '?'. Addresses lose their angle
 * brackets and comments.
 */
struct dsn_rcpt {
	/* Address of an "rfc822;" Final-Recipient, else "". */
	char final_recipient[DSN_FIELD_MAX];
	/* Address of an "rfc822;" Original-Recipient, else "". */
	char original_recipient[DSN_FIELD_MAX];
	enum dsn_action action;
	/* "5.1.1" (validated: class 2/4/5 . 1-3 digits . 1-3 digits), else "". */
	char status[16];
	/* Diagnostic-Code text after its type and ';', unfolded, trimmed. */
	char diagnostic[DSN_FIELD_MAX * 2];
	char remote_mta[DSN_FIELD_MAX]; /* Remote-MTA value after "dns;", else "" */
};

struct dsn_report {
	enum dsn_kind kind;
	/* DSN: Reporting-MTA after "dns;"; ARF: Reporting-MTA too, else "". */
	char reporting_mta[DSN_FIELD_MAX];
	size_t nrcpts; /* DSN: per-recipient blocks kept (<= DSN_MAX_RCPTS) */
	struct dsn_rcpt rcpts[DSN_MAX_RCPTS];
	/* ARF (kind == DSN_FEEDBACK) */
	/* "abuse", "fraud", "virus", "other", "not-spam", ... lower-cased */
	char feedback_type[32];
	char user_agent[DSN_FIELD_MAX];           /* User-Agent of the feedback report */
	char arf_original_rcpt_to[DSN_FIELD_MAX]; /* Original-Rcpt-To address, else "" */
	/* Original-Mail-From address (our VERP sender), else "". */
	char arf_original_mail_from[DSN_FIELD_MAX];
	/* From the returned message (message/rfc822, text/rfc822-headers or
	 * message/rfc822-headers part), both kinds: */
	char orig_return_path[DSN_FIELD_MAX]; /* address in its Return-Path: <...> field, else "" */
	char orig_message_id[DSN_FIELD_MAX];  /* its Message-ID field value, else "" */
	char orig_to[DSN_FIELD_MAX];          /* its first To: address, else "" */
};

/*
 * Parses a report message (header block and body, CRLF or LF line ends,
 * any bytes; may be only the first part of a longer message: a report
 * cut anywhere must parse as far as it goes, never read past len). Fills
 * out (zeroed first). Returns 0 when a multipart/report was found (kind
 * DSN_DELIVERY or DSN_FEEDBACK), -1 otherwise with err set to a short
 * sentence ("no multipart/report part", "report-type x-foo not
 * understood", ...) and out left zeroed.
 * The report may be the message itself or a part of a multipart down to
 * two levels (some MTAs wrap it); only the first multipart/report is
 * read, and in it the first delivery-status or feedback-report part
 * (base64 and quoted-printable decoded; it sets kind when report-type is
 * missing) and the first returned message or headers. Blocks without a
 * Final-Recipient are skipped; one whose type is not rfc822 is kept with
 * final_recipient "". A missing Status is taken from the Diagnostic-Code
 * text ("550 5.1.1 ..."). No I/O; allocates at most a decoded copy of
 * two parts, freed before it returns.
 */
int dsn_parse(const char *msg, size_t len, struct dsn_report *out, char *err, size_t errlen);

/* 1 for a status that says the address itself is bad ("5.1.x"). */
int dsn_status_is_hard(const char *status);

/*
 * VERP senders. Delivery sends as "bounce+<qid>.<index>.<tag>@host" (a
 * transaction of one recipient, its index in the message) or
 * "bounce+<qid>.m<index>.<tag>@host" (several: the index of the first), so
 * each transaction has a sender of its own. The tag, VERP_TAG_LEN base32
 * digits of an HMAC-SHA256 of "<qid>.<index>" or "<qid>.m<index>" under a
 * key derived from the DKIM master key, proves that a report came to an
 * address sendgate sent from: a recipient sees its own address, and
 * indexes are small numbers. Senders from before tags have none:
 * "bounce+<qid>.<index>@host", "bounce+<qid>@host" (several).
 */
#define VERP_TAG_LEN 8

/*
 * Parses a VERP address: local part "bounce+" (case-insensitive), a queue
 * id (QUEUE_ID_LEN characters of [0-9A-Z]; lower case accepted and
 * upper-cased, since some MTAs fold case), then either nothing (untagged,
 * several), ".<index>" (untagged), ".<index>.<tag>" or ".m<index>.<tag>",
 * the index decimal 0..99999. Returns 0 with qid filled, *index (-1 when
 * absent), *several (1 for "m" or the bare id) and tag (upper-cased, ""
 * when absent) set; -1 otherwise. index, several and tag may be NULL.
 * host, when not NULL, gets the part after '@' (lower-cased, cut to
 * hostlen); a host that is empty or holds '@', spaces or control bytes is
 * refused.
 */
int verp_parse(const char *addr, char qid[QUEUE_ID_LEN + 1], long *index, int *several,
               char tag[VERP_TAG_LEN + 1], char *host, size_t hostlen);
/* The VERP key, from the DKIM master key (every host of a platform shares it). */
void verp_key_derive(const unsigned char master[32], unsigned char key[32]);
/* The tag of (qid, index, several). */
void verp_tag(const unsigned char key[32], const char *qid, long index, int several,
              char out[VERP_TAG_LEN + 1]);
/* 1 when tag is the tag of (qid, index, several), compared in constant time. */
int verp_tag_ok(const unsigned char key[32], const char *qid, long index, int several,
                const char *tag);

#endif
