/*
 * commit: one message's way into the spool. The loop thread writes records
 * to tmp/ID as DATA streams in; queue_commit appends the envelope and END and
 * queues the file for the commit threads, which make whole batches durable at
 * once (group commit) and hand the outcomes back to the loop via an eventfd.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>

#include "queue/spool_int.h"

#define NO_BODY_REC SIZE_MAX
/* Batches this large are synced with one syncfs (see commit_sync_files). */
#define SPOOL_SYNCFS_MIN_BATCH 4

/* Writes all n bytes; 0, or -1 with errno (a short write is retried). */
static int write_full(int fd, const unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * Hashes and writes out what t has encoded. With final, appends END (the
 * digest of every byte of the file before it) to the same write.
 */
static int txn_flush(struct spool_txn *t, int final)
{
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int dlen = 0;

	if (t->err)
		goto fail;
	if (EVP_DigestUpdate(t->md, t->out.data, t->out.len) != 1)
		abort();
	if (final) {
		if (EVP_DigestFinal_ex(t->md, digest, &dlen) != 1 || dlen != 32)
			abort();
		if (queue_rec_append(&t->out, QREC_END, digest, dlen) == -1)
			abort();
	}
	if (write_full(t->fd, (const unsigned char *)t->out.data, t->out.len) == -1) {
		t->err = errno;
		goto fail;
	}
	t->written += t->out.len;
	/* A reused file may be longer than this message: cut the old tail off. */
	if (final && t->recycled && ftruncate(t->fd, (off_t)t->written) == -1) {
		t->err = errno;
		goto fail;
	}
	buf_reset(&t->out);
	return 0;
fail:
	buf_reset(&t->out);
	errno = t->err;
	return -1;
}

/* Sets the length of the open BODY record (if any) now that it is complete. */
static void txn_close_body(struct spool_txn *t)
{
	size_t len;

	if (t->body_rec == NO_BODY_REC)
		return;
	len = t->out.len - t->body_rec - QREC_HDR_LEN;
	if (len == 0)
		t->out.len = t->body_rec; /* drop an empty record */
	else
		queue_rec_header((unsigned char *)t->out.data + t->body_rec, QREC_BODY,
		                 (uint32_t)len);
	t->body_rec = NO_BODY_REC;
}

/* Frees t and its resources; unlinks the temp file when unlink_tmp. */
static void txn_free(struct spool_txn *t, int unlink_tmp)
{
	if (t->fd != -1)
		close(t->fd);
	if (unlink_tmp)
		unlinkat(t->sp->tmpfd, t->id, 0);
	EVP_MD_CTX_free(t->md);
	buf_free(&t->out);
	buf_free(&t->env);
	free(t);
}

struct spool_txn *queue_begin(struct spool *sp)
{
	struct spool_txn *t;

	if (sp->stopping) { /* e.g. a callback run by spool_close */
		errno = ESHUTDOWN;
		return NULL;
	}
	t = xcalloc(1, sizeof(*t));
	t->sp = sp;
	t->body_rec = NO_BODY_REC;
	buf_init(&t->out, SIZE_MAX / 2);
	buf_init(&t->env, SIZE_MAX / 2);
	queue_id_new(t->id);
	t->fd = spool_take_free(sp, t->id);
	if (t->fd != -1) {
		t->recycled = 1;
		sp->reused++;
	} else {
		t->fd = openat(sp->tmpfd, t->id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (t->fd == -1 && errno == EEXIST) {
			/* tmp/ID: a file from free/ that was refused and could not be removed */
			queue_id_new(t->id);
			t->fd = openat(sp->tmpfd, t->id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
			               0600);
		}
	}
	if (t->fd == -1) {
		int e = errno;
		log_warn("event=spool_begin_failed id=%s error=\"%s\"", t->id, strerror(e));
		buf_free(&t->out);
		buf_free(&t->env);
		free(t);
		errno = e;
		return NULL;
	}
	t->md = EVP_MD_CTX_new();
	if (t->md == NULL || EVP_DigestInit_ex(t->md, EVP_sha256(), NULL) != 1)
		abort();
	if (queue_magic_append(&t->out) == -1)
		abort();
	__atomic_add_fetch(&sp->open_txns, 1, __ATOMIC_RELAXED);
	return t;
}

const char *queue_txn_id(const struct spool_txn *t)
{
	return t->id;
}

int queue_write_body(struct spool_txn *t, const void *p, size_t n)
{
	const unsigned char *c = p;

	if (t->err) {
		errno = t->err;
		return -1;
	}
	while (n > 0) {
		size_t have, take;

		if (t->body_rec == NO_BODY_REC) {
			unsigned char h[QREC_HDR_LEN] = {0};
			t->body_rec = t->out.len;
			if (buf_append(&t->out, h, sizeof(h)) == -1)
				abort();
		}
		have = t->out.len - t->body_rec - QREC_HDR_LEN;
		take = QUEUE_BODY_CHUNK - have < n ? QUEUE_BODY_CHUNK - have : n;
		if (buf_append(&t->out, c, take) == -1)
			abort();
		c += take;
		n -= take;
		if (have + take == QUEUE_BODY_CHUNK) {
			txn_close_body(t);
			if (txn_flush(t, 0) == -1)
				return -1;
		}
	}
	return 0;
}

void queue_abort(struct spool_txn *t)
{
	__atomic_sub_fetch(&t->sp->open_txns, 1, __ATOMIC_RELAXED);
	txn_free(t, 1);
}

/* Who makes a message durable once commit_prepared has written it. */
enum commit_how {
	COMMIT_WAKE,  /* a commit thread, an idle one woken at once */
	COMMIT_JOIN,  /* the next batch: a thread is woken only when none is syncing */
	COMMIT_LIGHT, /* as WAKE under light load (SPOOL_JOIN_LIGHT_LOAD), else JOIN */
	COMMIT_HERE,  /* the caller, when nothing waits and no other txn is open;
	               * else as LIGHT */
};

static int commit_prepared(struct spool_txn *t, const void *top, size_t toplen, const void *hdr,
                           size_t hlen, queue_commit_cb cb, uint64_t cookie, enum commit_how how);
static void commit_batch(struct spool *sp, struct spool_txn *batch, int sbfd);

int queue_txn_set_envelope(struct spool_txn *t, const struct queue_envelope *env)
{
	struct queue_envelope e = *env;

	/* The id in the file is the one the file is named after. */
	memcpy(e.id, t->id, sizeof(e.id));
	buf_reset(&t->env);
	if (queue_env_encode(&e, &t->env) == -1) {
		buf_reset(&t->env); /* never half an envelope */
		return -1;
	}
	return 0;
}

int queue_commit(struct spool_txn *t, const struct queue_envelope *env, const void *hdr,
                 size_t hlen, queue_commit_cb cb, uint64_t cookie)
{
	/* An envelope that cannot be encoded fails the commit below (EINVAL). */
	queue_txn_set_envelope(t, env);
	return commit_prepared(t, NULL, 0, hdr, hlen, cb, cookie, COMMIT_WAKE);
}

int queue_commit_prepared(struct spool_txn *t, const void *top, size_t toplen, const void *hdr,
                          size_t hlen, queue_commit_cb cb, uint64_t cookie, enum queue_caller from)
{
	enum commit_how how = from == QUEUE_FROM_THREAD_MAY_SYNC ? COMMIT_HERE
	                      : from == QUEUE_FROM_THREAD        ? COMMIT_LIGHT
	                                                         : COMMIT_JOIN;

	return commit_prepared(t, top, toplen, hdr, hlen, cb, cookie, how);
}

static int commit_prepared(struct spool_txn *t, const void *top, size_t toplen, const void *hdr,
                           size_t hlen, queue_commit_cb cb, uint64_t cookie, enum commit_how how)
{
	struct spool *sp = t->sp;
	unsigned char rh[QREC_HDR_LEN];
	int was_empty, e2;
	int from_thread = how == COMMIT_HERE || how == COMMIT_LIGHT;
	/* Other messages begun and not yet handed over (sessions in DATA,
	 * messages being signed): they could share this one's batch. */
	size_t others = __atomic_sub_fetch(&sp->open_txns, 1, __ATOMIC_RELAXED);

	if (t->err) {
		errno = t->err;
		goto fail;
	}
	if (t->env.len == 0) { /* no envelope, or one that could not be encoded */
		errno = EINVAL;
		goto fail;
	}
	txn_close_body(t);
	/* HEADERS is top then hdr, without joining them first. */
	if (toplen > QREC_MAX_LEN || hlen > QREC_MAX_LEN - toplen) {
		errno = EFBIG;
		goto fail;
	}
	queue_rec_header(rh, QREC_HEADERS, (uint32_t)(toplen + hlen));
	if (buf_append(&t->out, rh, sizeof(rh)) == -1 || buf_append(&t->out, top, toplen) == -1 ||
	    buf_append(&t->out, hdr, hlen) == -1 ||
	    buf_append(&t->out, t->env.data, t->env.len) == -1) {
		errno = EFBIG;
		goto fail;
	}
	buf_free(&t->env);
	if (txn_flush(t, 1) == -1)
		goto fail;
	/* Nothing more is written: drop the buffers before waiting for a thread. */
	buf_free(&t->out);
	EVP_MD_CTX_free(t->md);
	t->md = NULL;
	t->cb = cb;
	t->cookie = cookie;
	t->next = NULL;

	pthread_mutex_lock(&sp->lock);
	if (sp->stopping) { /* the threads are gone: nobody would finish it */
		pthread_mutex_unlock(&sp->lock);
		errno = ESHUTDOWN;
		goto fail;
	}
	if (from_thread)
		sp->from_threads++;
	was_empty = sp->pending == NULL;
	if (how == COMMIT_HERE && was_empty && others == 0) {
		/*
		 * A batch would hold this message alone: the caller syncs it
		 * rather than wake a commit thread or wait for a busy one's
		 * batch (one thread switch less on the message's way).
		 */
		sp->caller_synced++;
		pthread_mutex_unlock(&sp->lock);
		commit_batch(sp, t, -1);
		return 0;
	}
	*sp->pending_tail = t;
	sp->pending_tail = &t->next;
	sp->pending_n++;
	if (from_thread && others + sp->pending_n + sp->syncing_n <= SPOOL_JOIN_LIGHT_LOAD)
		how = COMMIT_WAKE;
	/* Once per batch: a message that joined while a thread was busy woke
	 * nobody, so one handed over later may still have to. */
	if (!sp->woken && (how == COMMIT_WAKE || sp->busy == 0)) {
		sp->woken = 1;
		pthread_cond_signal(&sp->cond);
	}
	pthread_mutex_unlock(&sp->lock);
	return 0;
fail:
	e2 = errno;
	log_warn("event=spool_commit_failed id=%s error=\"%s\"", t->id, strerror(e2));
	txn_free(t, 1);
	errno = e2;
	return -1;
}

/*
 * Makes the data of every file in a batch durable; sets t->err per file.
 *
 * Each fdatasync ends in its own disk cache flush even when the journal
 * commit it waits for was already done by another file's, so N files cost N
 * flushes; one syncfs costs one journal commit and one flush for the batch.
 * Measured on the ext4 dev VM (virtio disk, write-back cache), 50 sessions
 * committing 5 KB messages back to back through this code, 2 threads: syncfs
 * gave 2-5 times the rate of sync_file_range(WRITE) + fdatasync per file in
 * every paired run; a bare loop of 50-file batches ranked syncfs first, then
 * sync_file_range + fdatasync, fdatasync from 8-25 threads in parallel, and
 * plain sequential fdatasync last. syncfs also writes out unrelated dirty
 * data of the file system, so small batches, where the two cost about the
 * same, keep the per-file fdatasync.
 */
static void commit_sync_files(struct spool *sp, struct spool_txn *batch, int sbfd)
{
	struct spool_txn *t;
	size_t n = 0;

	for (t = batch; t != NULL; t = t->next)
		n++;
	if (sbfd != -1 && n >= SPOOL_SYNCFS_MIN_BATCH) {
		/*
		 * Reports a writeback error anywhere in the file system since
		 * this thread's last syncfs (Linux >= 5.8): then none of the
		 * batch is known to be safe.
		 */
		int e = syncfs(sbfd) == -1 ? errno : 0;
		for (t = batch; t != NULL; t = t->next)
			t->err = e;
		return;
	}
	for (t = batch; t != NULL; t = t->next)
		sync_file_range(t->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
	for (t = batch; t != NULL; t = t->next)
		t->err = fdatasync(t->fd) == -1 ? errno : 0;
}

/*
 * Makes a batch durable: the files' data (commit_sync_files), then each is
 * renamed into queue/, then one fsync of queue/ for the whole batch. A
 * failed sync is never retried: the file is removed and the error reported.
 * The outcomes go to the done list for the loop. Runs on a commit thread,
 * or on a signer thread for a message that is alone (COMMIT_HERE).
 */
static void commit_batch(struct spool *sp, struct spool_txn *batch, int sbfd)
{
	struct spool_txn *t;
	int renamed = 0, dir_synced = 0, dir_err = 0;
	uint64_t sync_start = 0, one = 1;

	commit_sync_files(sp, batch, sbfd);
	for (t = batch; t != NULL; t = t->next) {
		if (close(t->fd) == -1 && t->err == 0)
			t->err = errno;
		t->fd = -1;
		if (t->err == 0 &&
		    renameat2(sp->tmpfd, t->id, sp->queuefd, t->id, RENAME_NOREPLACE) == -1)
			t->err = errno;
		if (t->err != 0)
			unlinkat(sp->tmpfd, t->id, 0);
		else
			renamed++;
	}
	if (renamed > 0) {
		dir_synced = 1;
		sync_start = now_usec();
		if (fsync(sp->queuefd) == -1)
			dir_err = errno;
	}
	if (dir_err != 0) {
		int e = dir_err;
		/* Not known to be durable, so not acknowledged: take them back out. */
		for (t = batch; t != NULL; t = t->next) {
			if (t->err == 0) {
				unlinkat(sp->queuefd, t->id, 0);
				t->err = e;
			}
		}
		renamed = 0;
	}

	pthread_mutex_lock(&sp->lock);
	if (dir_synced && dir_err == 0 && sync_start > sp->dirsync_started)
		sp->dirsync_started = sync_start;
	sp->batches += (uint64_t)dir_synced;
	sp->commits += (uint64_t)renamed;
	*sp->done_tail = batch;
	for (t = batch; t->next != NULL; t = t->next)
		;
	sp->done_tail = &t->next;
	pthread_mutex_unlock(&sp->lock);
	/* A failed write can only be EAGAIN (counter full): already signalled. */
	if (write(sp->efd, &one, sizeof(one)) == -1 && errno != EAGAIN)
		log_err("event=spool_eventfd_failed error=\"%s\"", strerror(errno));
}

static void *commit_thread(void *arg)
{
	struct spool *sp = arg;
	struct spool_txn *batch;
	size_t n;
	int sbfd = -1;

	/*
	 * syncfs reports errors per open file description: with one of its own,
	 * this thread cannot consume an error that another thread's batch needs.
	 */
	if (sp->use_syncfs)
		sbfd = openat(sp->tmpfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	pthread_mutex_lock(&sp->lock);
	for (;;) {
		while (sp->pending == NULL && !sp->stopping) {
			sp->parked++;
			pthread_cond_wait(&sp->cond, &sp->lock);
			sp->parked--;
		}
		if (sp->pending == NULL)
			break;
		batch = sp->pending;
		n = sp->pending_n;
		sp->pending = NULL;
		sp->pending_tail = &sp->pending;
		sp->pending_n = 0;
		sp->woken = 0;
		sp->syncing_n += n;
		sp->busy++;
		pthread_mutex_unlock(&sp->lock);

		commit_batch(sp, batch, sbfd);

		pthread_mutex_lock(&sp->lock);
		sp->syncing_n -= n;
		sp->busy--;
	}
	pthread_mutex_unlock(&sp->lock);
	if (sbfd != -1)
		close(sbfd);
	return NULL;
}

/* Runs the callbacks of every finished commit (loop thread). */
static void commit_run_done(struct spool *sp)
{
	struct spool_txn *t, *next;

	pthread_mutex_lock(&sp->lock);
	t = sp->done;
	sp->done = NULL;
	sp->done_tail = &sp->done;
	pthread_mutex_unlock(&sp->lock);

	for (; t != NULL; t = next) {
		next = t->next;
		if (t->err == 0)
			sp->count++;
		else
			log_warn("event=spool_commit_failed id=%s error=\"%s\"", t->id,
			         strerror(t->err));
		if (t->cb != NULL)
			t->cb(t->cookie, t->id, t->err);
		txn_free(t, 0);
	}
}

static void commit_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct spool *sp = arg;
	uint64_t v;

	if (read(sp->efd, &v, sizeof(v)) == -1 && errno != EAGAIN)
		log_err("event=spool_eventfd_failed error=\"%s\"", strerror(errno));
	commit_run_done(sp);
}

/* 1 when the kernel's syncfs reports writeback errors (Linux 5.8 and later). */
static int syncfs_reports_errors(void)
{
	struct utsname u;
	int major = 0, minor = 0;

	if (uname(&u) == -1 || sscanf(u.release, "%d.%d", &major, &minor) != 2)
		return 0;
	return major > 5 || (major == 5 && minor >= 8);
}

int commit_start(struct spool *sp, int nthreads, char *err, size_t errlen)
{
	int i, rc;

	sp->use_syncfs = syncfs_reports_errors() && getenv("SENDGATE_SPOOL_NO_SYNCFS") == NULL;
	sp->pending = NULL;
	sp->pending_tail = &sp->pending;
	sp->done = NULL;
	sp->done_tail = &sp->done;
	sp->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (sp->efd == -1) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		return -1;
	}
	sp->ev = event_new(sp->base, sp->efd, EV_READ | EV_PERSIST, commit_done_cb, sp);
	if (sp->ev == NULL || event_add(sp->ev, NULL) == -1) {
		snprintf(err, errlen, "cannot watch the commit eventfd");
		goto fail;
	}
	sp->threads = xcalloc((size_t)nthreads, sizeof(*sp->threads));
	for (i = 0; i < nthreads; i++) {
		rc = pthread_create(&sp->threads[i], NULL, commit_thread, sp);
		if (rc == 0)
			pthread_setname_np(sp->threads[i], "sg-commit");
		if (rc != 0) {
			snprintf(err, errlen, "pthread_create: %s", strerror(rc));
			sp->nthreads = i;
			commit_stop(sp);
			return -1;
		}
	}
	sp->nthreads = nthreads;
	return 0;
fail:
	if (sp->ev != NULL)
		event_free(sp->ev);
	sp->ev = NULL;
	close(sp->efd);
	sp->efd = -1;
	return -1;
}

void commit_stop(struct spool *sp)
{
	int i;

	pthread_mutex_lock(&sp->lock);
	sp->stopping = 1;
	pthread_cond_broadcast(&sp->cond);
	pthread_mutex_unlock(&sp->lock);
	for (i = 0; i < sp->nthreads; i++)
		pthread_join(sp->threads[i], NULL);
	free(sp->threads);
	sp->threads = NULL;
	sp->nthreads = 0;
	/* Every commit handed over is finished now: tell their owners. */
	commit_run_done(sp);
	if (sp->ev != NULL)
		event_free(sp->ev);
	sp->ev = NULL;
	if (sp->efd != -1)
		close(sp->efd);
	sp->efd = -1;
}
