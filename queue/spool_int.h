/*
 * spool_int: what spool.c (opening, recovery) and commit.c (transactions,
 * commit threads) share. Private to queue/ (and its unit tests); other
 * folders use queue.h.
 */
#ifndef SENDGATE_QUEUE_SPOOL_INT_H
#define SENDGATE_QUEUE_SPOOL_INT_H

#include <pthread.h>

#include "queue/queue.h"

struct event;
typedef struct evp_md_ctx_st EVP_MD_CTX;

/*
 * A message a signer thread hands over to join the next batch wakes the
 * idle commit thread at once, as the loop's unsigned messages do, while at most
 * this many messages are on their way to the spool (open, waiting for a
 * thread, being synced); above it, it waits for the busy thread's next
 * batch. README, "Light load wakes the idle commit thread": 50 connections
 * keep far more than this on their way, 1,000 msgs/s rarely do.
 */
#define SPOOL_JOIN_LIGHT_LOAD 8

/* One message being received, then committed. */
struct spool_txn {
	struct spool *sp;
	struct spool_txn *next; /* in sp->pending or sp->done */
	int fd;                 /* tmp/ID, write-only */
	int recycled;           /* fd is a delivered file taken from free/: cut it at commit */
	uint64_t written;       /* bytes written to fd so far */
	int err;                /* first write error (sticky); the commit outcome later */
	char id[QUEUE_ID_LEN + 1];
	EVP_MD_CTX *md;  /* SHA-256 of every byte written so far */
	struct buf out;  /* encoded records not written yet */
	size_t body_rec; /* offset in out of the open BODY record, or SIZE_MAX */
	struct buf env;  /* the encoded envelope (empty until queue_txn_set_envelope) */
	queue_commit_cb cb;
	uint64_t cookie;
};

struct spool {
	struct event_base *base;
	char *dir;
	int dirfd, tmpfd, queuefd, quarfd, freefd;

	pthread_mutex_t lock; /* guards everything down to from_threads */
	pthread_cond_t cond;
	struct spool_txn *pending, **pending_tail; /* committed, waiting for a thread */
	struct spool_txn *done, **done_tail;       /* finished, waiting for the loop */
	int stopping;
	int busy;         /* commit threads syncing a batch */
	int parked;       /* commit threads waiting for work (for the tests) */
	int woken;        /* a thread was signalled for what is pending */
	size_t pending_n; /* messages in pending */
	size_t syncing_n; /* messages in the batches being synced by commit threads */
	uint64_t commits, batches;
	uint64_t caller_synced; /* batches of one synced by the caller (COMMIT_HERE) */
	uint64_t from_threads;  /* handed over from another thread (HERE or LIGHT) */
	uint64_t reused;        /* loop thread only, as is no_reuse */
	int no_reuse;           /* spool_set_reuse(sp, 0) */

	pthread_t *threads;
	int nthreads;
	int efd;        /* eventfd: the threads tell the loop that done is not empty */
	int use_syncfs; /* big batches: one syncfs instead of an fdatasync per file */
	struct event *ev;

	size_t count;        /* files in queue/ (loop thread only) */
	uint64_t counted_at; /* now_usec() of the last count of queue/ */
	size_t open_txns;    /* begun and not yet handed to commit or abort (atomic) */

	/* Names in free/ (delivered files kept for reuse, see spool_take_free). */
	char (*free_names)[QUEUE_ID_LEN + 1];
	size_t nfree;
	uint64_t free_scanned_at; /* now_usec() of the last empty scan of free/ */
	uint64_t free_listed_at;  /* now_usec() just before free_names was read */
	uint64_t dirsync_started; /* start of the last successful sync of queue/ (under lock) */
};

/* Starts nthreads commit threads and the completion event; 0 or -1 with err. */
int commit_start(struct spool *sp, int nthreads, char *err, size_t errlen);
/* Lets pending commits finish, joins the threads, runs the last callbacks. */
void commit_stop(struct spool *sp);

/* Moves a file from free/ to tmp/id and opens it for writing; -1 if none. */
int spool_take_free(struct spool *sp, const char *id);

/* queue_read_file relative to an open directory. */
int queue_read_fileat(int dirfd, const char *name, struct queue_msg *m, int want_body, char *err,
                      size_t errlen);

#endif
