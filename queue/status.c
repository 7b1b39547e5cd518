/*
 * status: per-recipient delivery results kept in the queue file itself, as
 * segments appended after END (format in queue.h), and the worker thread
 * that appends them (and removes finished files) off the event loop.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>

#include "queue/deliver_int.h"

static const char *const state_names[] = {"pending", "deferred", "delivered", "bounced", "expired"};

const char *queue_rcpt_state_str(int state)
{
	if (state < 0 || state >= (int)ARRAY_LEN(state_names))
		return "unknown";
	return state_names[state];
}

int queue_rcpt_state_final(int state)
{
	return state == QRCPT_DELIVERED || state == QRCPT_BOUNCED || state == QRCPT_EXPIRED;
}

/* SHA-256 of prev (32 bytes) followed by n bytes of p. */
static void chain_digest(const unsigned char prev[32], const unsigned char *p, size_t n,
                         unsigned char out[32])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int len = 32;

	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, prev, 32) != 1 || EVP_DigestUpdate(md, p, n) != 1 ||
	    EVP_DigestFinal_ex(md, out, &len) != 1)
		abort();
	EVP_MD_CTX_free(md);
}

/* Parses one STATUS record's text; 0 with *idx and *s filled, or -1. */
static int status_decode(const unsigned char *p, size_t n, size_t *idx, struct queue_rcpt_status *s)
{
	char text[128], *f[5], *save = NULL, *end;
	long long v[5];
	int i, state = -1;

	if (n == 0 || n >= sizeof(text))
		return -1;
	memcpy(text, p, n);
	text[n] = '\0';
	for (i = 0; i < 5; i++) {
		f[i] = strtok_r(i == 0 ? text : NULL, " ", &save);
		if (f[i] == NULL)
			return -1;
	}
	if (strtok_r(NULL, " ", &save) != NULL)
		return -1;
	for (i = 0; i < (int)ARRAY_LEN(state_names); i++)
		if (strcmp(f[1], state_names[i]) == 0)
			state = i;
	if (state < 0)
		return -1;
	for (i = 0; i < 5; i++) {
		if (i == 1)
			continue;
		errno = 0;
		v[i] = strtoll(f[i], &end, 10);
		if (errno != 0 || *end != '\0' || v[i] < 0)
			return -1;
	}
	*idx = (size_t)v[0];
	s->state = state;
	s->attempts = v[2] > 1000000 ? 1000000 : (int)v[2];
	s->last = (time_t)v[3];
	s->next = (time_t)v[4];
	return 0;
}

int queue_status_parse(const unsigned char *p, size_t n, struct queue_rcpt_status *st,
                       size_t nrcpts, size_t *valid_len, unsigned char digest[32])
{
	unsigned char d[32], want[32];
	size_t off = 0, seg = 0, pend_from;
	int segments = 0;

	if (st != NULL)
		memset(st, 0, nrcpts * sizeof(*st));
	/* Find END: the message part has been checked by queue_msg_parse. */
	for (;;) {
		uint32_t len;
		int type;

		if (n - off < QREC_HDR_LEN)
			return -1;
		type = p[off];
		len = queue_rec_len(p + off);
		if (len > n - off - QREC_HDR_LEN)
			return -1;
		off += QREC_HDR_LEN + len;
		if (type == QREC_END) {
			if (len != 32)
				return -1;
			memcpy(d, p + off - 32, 32);
			break;
		}
	}
	seg = off;
	pend_from = off;
	/* Segments: apply each one only once its SEGEND checks. */
	while (n - off >= QREC_HDR_LEN) {
		int type = p[off];
		uint32_t len = queue_rec_len(p + off);

		if (len > n - off - QREC_HDR_LEN)
			break;
		if (type == QREC_STATUS) {
			off += QREC_HDR_LEN + len;
			continue;
		}
		if (type != QREC_SEGEND || len != 32 || off == seg)
			break;
		chain_digest(d, p + seg, off - seg, want);
		if (!ct_equal(want, p + off + QREC_HDR_LEN, 32))
			break;
		/* Intact: apply its records in order. */
		for (size_t r = seg; r < off;) {
			uint32_t rl = queue_rec_len(p + r);
			struct queue_rcpt_status s;
			size_t idx;

			if (status_decode(p + r + QREC_HDR_LEN, rl, &idx, &s) == 0 && st != NULL &&
			    idx < nrcpts)
				st[idx] = s;
			r += QREC_HDR_LEN + rl;
		}
		memcpy(d, want, 32);
		off += QREC_HDR_LEN + 32;
		seg = off;
		pend_from = off;
		segments++;
	}
	if (valid_len != NULL)
		*valid_len = pend_from;
	if (digest != NULL)
		memcpy(digest, d, 32);
	return segments;
}

void queue_status_segment(struct buf *out, unsigned char digest[32], const size_t *idx, size_t n,
                          const struct queue_rcpt_status *st)
{
	size_t start = out->len, i;
	unsigned char d[32];
	char text[128];

	for (i = 0; i < n; i++) {
		const struct queue_rcpt_status *s = &st[idx[i]];
		int len = snprintf(text, sizeof(text), "%zu %s %d %lld %lld", idx[i],
		                   queue_rcpt_state_str(s->state), s->attempts, (long long)s->last,
		                   (long long)s->next);
		if (queue_rec_append(out, QREC_STATUS, text, (size_t)len) == -1)
			abort();
	}
	chain_digest(digest, (const unsigned char *)out->data + start, out->len - start, d);
	if (queue_rec_append(out, QREC_SEGEND, d, 32) == -1)
		abort();
	memcpy(digest, d, 32);
}

/* Reads a whole file into a malloc'd image; 0 or -1 with err. */
static int read_image(int dirfd, const char *name, unsigned char **img, size_t *n, char *err,
                      size_t errlen)
{
	struct stat sb;
	size_t got = 0;
	int fd;

	*img = NULL;
	fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1) {
		snprintf(err, errlen, "open: %s", strerror(errno));
		return -1;
	}
	if (fstat(fd, &sb) == -1 || !S_ISREG(sb.st_mode) || sb.st_size > ((off_t)1 << 30)) {
		snprintf(err, errlen, "not a readable queue file");
		close(fd);
		return -1;
	}
	*img = xmalloc((size_t)sb.st_size + 1);
	while (got < (size_t)sb.st_size) {
		ssize_t r = read(fd, *img + got, (size_t)sb.st_size - got);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	*n = got;
	return 0;
}

int dq_read_file(int dirfd, const char *name, struct queue_msg *m, int want_body,
                 struct queue_rcpt_status **st, size_t *valid_len, size_t *file_len,
                 unsigned char digest[32], char *err, size_t errlen)
{
	unsigned char *img;
	size_t n;

	*st = NULL;
	memset(m, 0, sizeof(*m));
	if (read_image(dirfd, name, &img, &n, err, errlen) == -1)
		return -1;
	if (queue_msg_parse(img, n, m, want_body ? QUEUE_PARSE_BODY : 0, err, errlen) == -1) {
		free(img);
		return -1;
	}
	*st = xcalloc(m->env.nrcpts ? m->env.nrcpts : 1, sizeof(**st));
	if (queue_status_parse(img, n, *st, m->env.nrcpts, valid_len, digest) == -1) {
		snprintf(err, errlen, "no END record");
		free(*st);
		*st = NULL;
		queue_msg_free(m);
		free(img);
		return -1;
	}
	if (file_len != NULL)
		*file_len = n;
	free(img);
	return 0;
}

int queue_read_status(const char *path, struct queue_msg *m, int want_body,
                      struct queue_rcpt_status **st, char *err, size_t errlen)
{
	return dq_read_file(AT_FDCWD, path, m, want_body, st, NULL, NULL, NULL, err, errlen);
}

/* ---- the writer thread ------------------------------------------------ */

struct sw_job {
	struct sw_job *next;
	char id[QUEUE_ID_LEN + 1];
	struct buf data; /* bytes to append (may be empty) */
	int remove;      /* unlink the file afterwards */
	off_t truncate;  /* >= 0: cut the file to this length first (torn tail) */
};

struct status_writer {
	struct event_base *base;
	int queuefd;
	int freefd;            /* ../free, or -1: delivered files are deleted */
	int max_age;           /* seconds a file may wait in free/; 0: no reuse */
	size_t nfree;          /* files in free/ as of the last count, plus moves since */
	uint64_t free_counted; /* now_usec() of that count */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct sw_job *todo, **todo_tail;
	struct sw_job *done, **done_tail;
	/* Jobs pushed during this loop turn, handed over together (loop only). */
	struct sw_job *staged, **staged_tail;
	struct event *ev_handoff;
	int stopping;
	int busy;
	int efd;
	struct event *ev;
	status_removed_cb removed;
	void *arg;
};

/* Appends data to queue/id and makes it durable (fdatasync). */
static void sw_append(struct status_writer *w, struct sw_job *j, int *fds, size_t *nfds)
{
	int fd = openat(w->queuefd, j->id, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
	size_t off = 0;

	if (fd == -1) {
		if (errno != ENOENT)
			log_err("event=status_append_failed id=%s error=\"open: %s\"", j->id,
			        strerror(errno));
		return;
	}
	if (j->truncate >= 0 && ftruncate(fd, j->truncate) == -1)
		log_err("event=status_truncate_failed id=%s error=\"%s\"", j->id, strerror(errno));
	while (off < j->data.len) {
		ssize_t r = write(fd, j->data.data + off, j->data.len - off);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			log_err("event=status_append_failed id=%s error=\"write: %s\"", j->id,
			        strerror(errno));
			break;
		}
		off += (size_t)r;
	}
	fds[(*nfds)++] = fd;
}

/* 1 for the names "." and "..". */
static int dot_or_dotdot(const char *n)
{
	return n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0'));
}

/*
 * Moves a finished file to free/ for the daemon to reuse for a new message
 * (spool_take_free) instead of deleting it, while free/ holds fewer than
 * QUEUE_FREE_MAX files and the file is small enough to be worth keeping.
 * The move need not be synced here: the daemon writes over a file only
 * once one of its own syncs of queue/ has made the move durable (see
 * spool_take_free). 0 when moved; -1 when the caller should delete it.
 */
static void sweep_free(struct status_writer *w);

static int sw_recycle(struct status_writer *w, const char *id)
{
	struct stat st;

	if (w->freefd == -1 || w->max_age == 0)
		return -1;
	if (w->nfree >= QUEUE_FREE_MAX && now_usec() - w->free_counted >= 1000000) {
		/* Full as last counted: count again (the daemon takes files),
		 * deleting what is past max_age while at it. */
		w->free_counted = now_usec();
		sweep_free(w);
	}
	if (w->nfree >= QUEUE_FREE_MAX)
		return -1;
	if (fstatat(w->queuefd, id, &st, AT_SYMLINK_NOFOLLOW) == -1 || !S_ISREG(st.st_mode) ||
	    st.st_nlink != 1 || st.st_size > QUEUE_FREE_MAX_SIZE)
		return -1;
	if (renameat2(w->queuefd, id, w->freefd, id, RENAME_NOREPLACE) == -1) {
		log_warn("event=spool_recycle_failed id=%s error=\"%s\"", id, strerror(errno));
		return -1;
	}
	w->nfree++;
	return 0;
}

/*
 * Deletes what has sat in free/ longer than max_age (everything when reuse
 * is off): it still holds delivered mail, which should not outlive its
 * delivery by more than that while no new message comes to overwrite it.
 */
static void sweep_free(struct status_writer *w)
{
	int fd;
	struct dirent *de;
	struct stat st;
	time_t now = time(NULL);
	size_t left = 0;
	DIR *d;

	if (w->freefd == -1)
		return;
	fd = openat(w->freefd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1 || (d = fdopendir(fd)) == NULL) {
		log_warn("event=spool_free_unreadable error=\"%s\"", strerror(errno));
		if (fd != -1)
			close(fd);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		if (dot_or_dotdot(de->d_name))
			continue;
		/* ctime is when the file was moved here (a rename sets it). */
		if (fstatat(w->freefd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    now - st.st_ctime >= w->max_age) {
			if (unlinkat(w->freefd, de->d_name, 0) == 0)
				continue;
			if (errno != ENOENT) /* ENOENT: the daemon took it meanwhile */
				log_warn("event=spool_free_unlink_failed file=%s error=\"%s\"",
				         de->d_name, strerror(errno));
		}
		left++;
	}
	closedir(d);
	w->nfree = left;
	w->free_counted = now_usec();
}

/* Seconds between sweeps of free/: often enough to honour max_age. */
static int sweep_interval(const struct status_writer *w)
{
	return w->max_age / 2 < QUEUE_FREE_SWEEP_SEC ? w->max_age / 2 + 1 : QUEUE_FREE_SWEEP_SEC;
}

static void *sw_main(void *arg)
{
	struct status_writer *w = arg;
	enum { BATCH = 256 };
	int fds[BATCH];
	uint64_t last_sweep;

	/* What an earlier run left in free/ (or all of it, reuse being off). */
	sweep_free(w);
	last_sweep = now_usec();
	pthread_mutex_lock(&w->lock);
	for (;;) {
		struct sw_job *batch, *j, **tail;
		size_t nfds = 0, i, taken = 0;

		while (w->todo == NULL && !w->stopping) {
			struct timespec until;
			if (w->max_age == 0 || w->freefd == -1) { /* swept once at start */
				pthread_cond_wait(&w->cond, &w->lock);
				continue;
			}
			clock_gettime(CLOCK_MONOTONIC, &until); /* the cond's clock */
			until.tv_sec += sweep_interval(w);
			if (pthread_cond_timedwait(&w->cond, &w->lock, &until) == ETIMEDOUT)
				break; /* sweep below, then wait again */
		}
		if (w->todo == NULL && w->stopping)
			break;
		/* On schedule, busy or not: a steady stream of jobs must not hold it off. */
		if (w->max_age > 0 && w->freefd != -1 &&
		    now_usec() - last_sweep >= (uint64_t)sweep_interval(w) * 1000000u) {
			pthread_mutex_unlock(&w->lock);
			sweep_free(w);
			last_sweep = now_usec();
			pthread_mutex_lock(&w->lock);
		}
		if (w->todo == NULL)
			continue;
		/* Take up to BATCH jobs; FIFO keeps a file's append before its removal. */
		batch = w->todo;
		tail = &w->todo;
		for (j = w->todo; j != NULL && taken < BATCH; j = j->next, taken++)
			tail = &j->next;
		w->todo = *tail;
		*tail = NULL;
		if (w->todo == NULL)
			w->todo_tail = &w->todo;
		w->busy = 1;
		pthread_mutex_unlock(&w->lock);

		for (j = batch; j != NULL; j = j->next)
			if (j->data.len > 0 || j->truncate >= 0)
				sw_append(w, j, fds, &nfds);
		for (i = 0; i < nfds; i++) {
			if (fdatasync(fds[i]) == -1)
				log_err("event=status_sync_failed error=\"%s\"", strerror(errno));
			close(fds[i]);
		}
		for (j = batch; j != NULL; j = j->next) {
			if (!j->remove)
				continue;
			if (sw_recycle(w, j->id) == 0)
				continue;
			if (unlinkat(w->queuefd, j->id, 0) == -1 && errno != ENOENT)
				log_err("event=queue_unlink_failed id=%s error=\"%s\"", j->id,
				        strerror(errno));
		}
		/*
		 * Neither deleting nor moving need be durable here: a message may
		 * go out twice, never zero times, and a directory sync after
		 * deletions waits for the freed blocks to be trimmed (online
		 * discard), which put removal far behind delivery.
		 */

		pthread_mutex_lock(&w->lock);
		w->busy = 0;
		*w->done_tail = batch;
		while (*w->done_tail != NULL)
			w->done_tail = &(*w->done_tail)->next;
		{
			uint64_t one = 1;
			if (write(w->efd, &one, sizeof(one)) == -1) {
				/* the counter cannot overflow in practice */
			}
		}
		pthread_cond_broadcast(&w->cond);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

/*
 * Runs on the loop once per turn in which jobs were pushed: hands them all
 * to the writer under one lock and one wakeup, instead of one per message
 * (each a futex call and, often, a switch to the writer thread).
 */
static void sw_handoff(evutil_socket_t fd, short what, void *arg)
{
	struct status_writer *w = arg;

	if (w->staged == NULL)
		return;
	pthread_mutex_lock(&w->lock);
	*w->todo_tail = w->staged;
	w->todo_tail = w->staged_tail;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
	w->staged = NULL;
	w->staged_tail = &w->staged;
}

/* Runs on the loop: tells the owner which files are gone, frees jobs. */
static void sw_done(evutil_socket_t fd, short what, void *arg)
{
	struct status_writer *w = arg;
	struct sw_job *list, *j;
	uint64_t v;

	if (read(w->efd, &v, sizeof(v)) == -1) {
		/* nothing to read: another wakeup took it */
	}
	pthread_mutex_lock(&w->lock);
	list = w->done;
	w->done = NULL;
	w->done_tail = &w->done;
	pthread_mutex_unlock(&w->lock);
	while ((j = list) != NULL) {
		list = j->next;
		if (j->remove && w->removed)
			w->removed(w->arg, j->id);
		buf_free(&j->data);
		free(j);
	}
}

struct status_writer *status_writer_new(struct event_base *base, int queuefd, int reuse_max_age,
                                        status_removed_cb removed, void *arg)
{
	struct status_writer *w = xcalloc(1, sizeof(*w));

	w->base = base;
	w->queuefd = queuefd;
	w->max_age = reuse_max_age;
	/* nfree is counted by the first sweep, before any job runs (sw_main). */
	w->freefd = openat(queuefd, "../free", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	w->removed = removed;
	w->arg = arg;
	w->todo_tail = &w->todo;
	w->done_tail = &w->done;
	w->staged_tail = &w->staged;
	w->ev_handoff = event_new(base, -1, 0, sw_handoff, w);
	pthread_mutex_init(&w->lock, NULL);
	{
		/* Timed waits on the monotonic clock, as now_usec() that decides
		 * whether a sweep is due: a wall-clock step delays neither. */
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&w->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->efd == -1)
		fatal("event=status_writer_failed error=\"eventfd: %s\"", strerror(errno));
	w->ev = event_new(base, w->efd, EV_READ | EV_PERSIST, sw_done, w);
	event_add(w->ev, NULL);
	if (pthread_create(&w->thread, NULL, sw_main, w) != 0)
		fatal("event=status_writer_failed error=\"pthread_create\"");
	pthread_setname_np(w->thread, "sg-status");
	return w;
}

void status_writer_push(struct status_writer *w, const char *id, struct buf *data, int remove,
                        long long truncate_to)
{
	struct sw_job *j = xcalloc(1, sizeof(*j));

	snprintf(j->id, sizeof(j->id), "%s", id);
	if (data != NULL) {
		j->data = *data;
		buf_init(data, data->max);
	} else {
		buf_init(&j->data, QREC_MAX_LEN);
	}
	j->remove = remove;
	j->truncate = truncate_to;
	/* FIFO as before: a file's append still precedes its removal. */
	if (w->staged == NULL)
		event_active(w->ev_handoff, EV_TIMEOUT, 1);
	*w->staged_tail = j;
	w->staged_tail = &j->next;
}

void status_writer_free(struct status_writer *w)
{
	if (w == NULL)
		return;
	sw_handoff(-1, 0, w); /* what this turn pushed is written before the end */
	event_free(w->ev_handoff);
	pthread_mutex_lock(&w->lock);
	w->stopping = 1;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
	sw_done(w->efd, EV_READ, w);
	event_free(w->ev);
	close(w->efd);
	if (w->freefd != -1)
		close(w->freefd);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
	free(w);
}
