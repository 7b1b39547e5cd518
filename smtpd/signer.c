/*
 * signer: DKIM signatures off the event loop. Sessions hand a job (the
 * final header block, the body hash, the keys, and the message's spool
 * txn) to a small pool of worker threads. The thread that signs a job also
 * hands the message to the spool's commit threads, with the DKIM-Signature
 * fields on top of the header block: going back through the loop first
 * cost a thread wake-up and a wait for the loop's pass, the tail of the
 * signing stage at 1,000 msgs/s (bench/README.md). A message that would
 * be alone in its batch (nothing else on its way to the spool) the thread
 * syncs itself: one thread switch less, and no wait behind a batch being
 * synced, which lengthened the signed tail at moderate load (README, "A
 * message alone is synced by its signer"). It does so only while another
 * signer thread is free: a thread that syncs cannot sign, and the next job
 * would wait for the disk (with sign_threads = 1, every time). The outcome
 * reaches the session on the loop, through the spool's completion when the
 * commit was started, else (signing or the commit's start failed) through
 * an eventfd; the callback finds its session by id.
 *
 * Jobs that only need Ed25519 signatures (about 40 us each) are signed on
 * the loop instead: handing one to a thread and back (a futex wake, an
 * eventfd write and read, a thread switch, each a costly trap on a virtual
 * machine) costs the machine more than the signature itself. They are
 * signed and committed at the end of the loop's pass, not at once: the
 * pass's messages then reach the spool's commit thread together and share
 * its syncs (committed at once, each went alone: fewer messages per second
 * in alternated runs). So they wait for a busy commit thread even under
 * light load, where a signer thread's message wakes the idle one (queue.h):
 * woken for the first of a pass, it split the pass's batch (40-120 us more
 * CPU per message at 1,000 msgs/s, README).
 *
 * The threads take jobs by tenant in turn (fairq), not first come first
 * served: a tenant flooding with fifty connections keeps up to fifty jobs
 * waiting, and a quiet tenant's message would wait behind all of them.
 */
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "dkim/dkim.h"
#include "smtpd/server.h"

struct sign_job {
	struct fairq_item q;   /* waiting for a thread (first member) */
	struct sign_job *next; /* done, or signed on the loop */
	uint64_t cookie;
	signer_cb cb;
	struct signing_key *keys[2];
	int nkeys;
	struct buf hdr;
	unsigned char bh[32];
	time_t now;
	time_t expire;
	enum dkim_canon hcanon, bcanon;
	struct buf out; /* the DKIM-Signature fields */
	char err[256];
	int failed;
	struct spool_txn *txn; /* the message, until handed to the spool */
	int commit_err;        /* errno when the commit could not start */
	uint64_t t_submit, sign_usec;
};

struct signer {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct fairq *todo;
	struct sign_job *done_head, *done_tail;
	pthread_t *threads;
	int nthreads;
	int active; /* threads signing or committing a job */
	int stop;
	int efd;
	struct event *ev;
	/* Signed on the loop, callbacks not yet run (loop only). */
	struct sign_job *inline_head, *inline_tail;
	struct event *ev_inline;
};

/* fairq hands back the struct fairq_item: the job is where it starts. */
_Static_assert(offsetof(struct sign_job, q) == 0, "sign_job must start with its fairq_item");

static void job_free(struct sign_job *j)
{
	int i;

	for (i = 0; i < j->nkeys; i++)
		signing_key_release(j->keys[i]);
	if (j->txn)
		queue_abort(j->txn);
	buf_free(&j->hdr);
	buf_free(&j->out);
	free(j);
}

static void run_job(struct sign_job *j)
{
	int i;

	for (i = 0; i < j->nkeys; i++) {
		struct dkim_sign_params p;
		memset(&p, 0, sizeof(p));
		p.domain = j->keys[i]->domain;
		p.selector = j->keys[i]->selector;
		p.header_canon = j->hcanon;
		p.body_canon = j->bcanon;
		p.timestamp = j->now;
		p.expire = j->expire;
		p.headers = NULL;
		p.oversign = 1;
		if (dkim_sign(j->keys[i]->key, &p, j->hdr.data, j->hdr.len, j->bh, &j->out, j->err,
			      sizeof(j->err)) == -1) {
			j->failed = 1;
			return;
		}
	}
}

/* Runs on the loop when the spool has the outcome of a job's commit. */
static void on_committed(uint64_t cookie, const char *id, int err)
{
	struct sign_job *j = (struct sign_job *)(uintptr_t)cookie;
	struct signer_result r = {NULL, err, id, j->sign_usec};

	j->cb(j->cookie, &r);
	job_free(j);
}

/*
 * Signs j and, if that worked, hands its message to the spool: 1 when the
 * spool has taken it (j now belongs to the commit, which may complete and
 * free j at any moment: the caller must not touch j again), 0 when the
 * outcome is to be reported through the done list (signing failed, or the
 * commit could not start). from: the loop, or a signer thread that may
 * sync the message itself or not (see worker for when).
 */
static int sign_and_commit(struct sign_job *j, enum queue_caller from)
{
	struct spool_txn *txn = j->txn;

	run_job(j);
	j->sign_usec = now_usec() - j->t_submit;
	if (j->failed)
		return 0; /* job_free drops the txn */
	j->txn = NULL; /* the spool's from here, whatever the outcome */
	if (queue_commit_prepared(txn, j->out.data, j->out.len, j->hdr.data, j->hdr.len,
	                          on_committed, (uint64_t)(uintptr_t)j, from) == -1) {
		j->commit_err = errno ? errno : EIO;
		return 0;
	}
	return 1;
}

static void *worker(void *arg)
{
	struct signer *sg = arg;
	uint64_t one = 1;

	dkim_sign_thread_cache(1);
	pthread_mutex_lock(&sg->lock);
	for (;;) {
		struct sign_job *j;
		enum queue_caller from;
		int taken;
		while (!sg->stop && fairq_len(sg->todo) == 0)
			pthread_cond_wait(&sg->cond, &sg->lock);
		j = (struct sign_job *)fairq_pop(sg->todo);
		if (j == NULL)
			break;
		/* Another thread stays free for the next job while this one syncs. */
		from = ++sg->active < sg->nthreads ? QUEUE_FROM_THREAD_MAY_SYNC : QUEUE_FROM_THREAD;
		pthread_mutex_unlock(&sg->lock);

		taken = sign_and_commit(j, from);

		pthread_mutex_lock(&sg->lock);
		sg->active--;
		if (taken)
			continue;
		j->next = NULL;
		/* A list that was not empty has its wake-up pending already:
		 * on_done takes the whole list after reading the eventfd. */
		if (sg->done_tail) {
			sg->done_tail->next = j;
		} else {
			sg->done_head = j;
			if (write(sg->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
				abort();
		}
		sg->done_tail = j;
	}
	pthread_mutex_unlock(&sg->lock);
	dkim_sign_thread_cache(0);
	return NULL;
}

/* Reports the jobs of a list that failed to be signed or committed (loop). */
static void run_callbacks(struct sign_job *j)
{
	struct sign_job *next;

	for (; j; j = next) {
		struct signer_result r = {j->failed ? j->err : NULL, j->commit_err, NULL,
					  j->sign_usec};
		next = j->next;
		j->cb(j->cookie, &r);
		job_free(j);
	}
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
	struct signer *sg = arg;
	struct sign_job *j;
	uint64_t n;

	if (read(sg->efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&sg->lock);
	j = sg->done_head;
	sg->done_head = sg->done_tail = NULL;
	pthread_mutex_unlock(&sg->lock);
	run_callbacks(j);
}

/*
 * Jobs to sign on the loop, at the end of the pass: their messages then
 * reach the commit threads together and share their syncs.
 */
static void on_inline(evutil_socket_t fd, short what, void *arg)
{
	struct signer *sg = arg;
	struct sign_job *j = sg->inline_head, *next;

	sg->inline_head = sg->inline_tail = NULL;
	for (; j; j = next) {
		next = j->next;
		j->next = NULL;
		if (!sign_and_commit(j, QUEUE_FROM_LOOP))
			run_callbacks(j);
	}
}

/* 1 when every key of j is Ed25519: cheap enough to sign on the loop. */
static int job_is_light(const struct sign_job *j)
{
	int i;

	for (i = 0; i < j->nkeys; i++)
		if (j->keys[i]->alg != DKIM_ALG_ED25519_SHA256)
			return 0;
	return j->nkeys > 0;
}

struct signer *signer_new(struct event_base *base, int nthreads)
{
	struct signer *sg = xcalloc(1, sizeof(*sg));
	int i;

	pthread_mutex_init(&sg->lock, NULL);
	pthread_cond_init(&sg->cond, NULL);
	sg->todo = fairq_new();
	sg->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (sg->efd == -1)
		fatal("event=start_failed error=\"eventfd: %s\"", strerror(errno));
	sg->ev = event_new(base, sg->efd, EV_READ | EV_PERSIST, on_done, sg);
	event_add(sg->ev, NULL);
	sg->ev_inline = event_new(base, -1, 0, on_inline, sg);
	sg->nthreads = nthreads;
	sg->threads = xcalloc((size_t)nthreads, sizeof(*sg->threads));
	for (i = 0; i < nthreads; i++) {
		if (pthread_create(&sg->threads[i], NULL, worker, sg) != 0)
			fatal("event=start_failed error=\"cannot start signing threads\"");
		pthread_setname_np(sg->threads[i], "sg-signer");
	}
	return sg;
}

void signer_free(struct signer *sg)
{
	int i;

	if (sg == NULL)
		return;
	pthread_mutex_lock(&sg->lock);
	sg->stop = 1;
	pthread_cond_broadcast(&sg->cond);
	pthread_mutex_unlock(&sg->lock);
	for (i = 0; i < sg->nthreads; i++)
		pthread_join(sg->threads[i], NULL);
	/* Answers nobody will collect any more. */
	on_done(sg->efd, EV_READ, sg);
	on_inline(-1, 0, sg);
	event_free(sg->ev_inline);
	event_free(sg->ev);
	close(sg->efd);
	fairq_free(sg->todo); /* empty: the threads ran every job before stopping */
	pthread_mutex_destroy(&sg->lock);
	pthread_cond_destroy(&sg->cond);
	free(sg->threads);
	free(sg);
}

int signer_submit(struct signer *sg, struct signing_key **keys, int nkeys, const char *hdr,
		  size_t hlen, const unsigned char bh[32], int hcanon, int bcanon, time_t expire,
		  int64_t tenant_id, struct spool_txn *txn, signer_cb cb, uint64_t cookie)
{
	struct sign_job *j = xcalloc(1, sizeof(*j));
	int i;

	for (i = 0; i < nkeys && i < 2; i++)
		j->keys[j->nkeys++] = keys[i];
	buf_init(&j->hdr, hlen + 1);
	buf_append(&j->hdr, hdr, hlen);
	buf_init(&j->out, 64 * 1024);
	memcpy(j->bh, bh, 32);
	j->now = time(NULL);
	j->expire = expire ? j->now + expire : 0;
	j->hcanon = (enum dkim_canon)hcanon;
	j->bcanon = (enum dkim_canon)bcanon;
	j->cb = cb;
	j->cookie = cookie;
	j->txn = txn;
	j->t_submit = now_usec();
	if (job_is_light(j)) {
		if (sg->inline_tail)
			sg->inline_tail->next = j;
		else
			sg->inline_head = j;
		sg->inline_tail = j;
		event_active(sg->ev_inline, EV_TIMEOUT, 1);
		return 0;
	}
	pthread_mutex_lock(&sg->lock);
	fairq_push(sg->todo, tenant_id, &j->q);
	pthread_cond_signal(&sg->cond);
	pthread_mutex_unlock(&sg->lock);
	return 0;
}
