/*
 * spool: opening the spool directory and recovering it after a stop or a
 * crash. Temp files were never acknowledged and are deleted; queue files
 * that fail their checks are moved to quarantine/ for a person to look at.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/spool_int.h"

#define SPOOL_DEFAULT_THREADS 2
#define SPOOL_MAX_THREADS 64
#define SPOOL_RECOUNT_USEC 1000000 /* spool_count rescans queue/ at most this often */

/* mkdir -p with mode 0700 for what it creates; 0 or -1 with errno. */
static int mkdir_p(const char *dir)
{
	char *p, *s;
	int rc = 0;

	if (dir[0] == '\0') {
		errno = ENOENT;
		return -1;
	}
	p = xstrdup(dir);
	for (s = p + 1; rc == 0; s++) {
		if (*s != '/' && *s != '\0')
			continue;
		char c = *s;
		*s = '\0';
		if (mkdir(p, 0700) == -1 && errno != EEXIST)
			rc = -1;
		*s = c;
		if (c == '\0')
			break;
	}
	free(p);
	return rc;
}

/* Creates (if needed) and opens the subdirectory name of the spool. */
static int spool_subdir(struct spool *sp, const char *name, int *created, char *err, size_t errlen)
{
	int fd;

	if (mkdirat(sp->dirfd, name, 0700) == 0)
		*created = 1;
	else if (errno != EEXIST) {
		snprintf(err, errlen, "%s/%s: mkdir: %s", sp->dir, name, strerror(errno));
		return -1;
	}
	fd = openat(sp->dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1)
		snprintf(err, errlen, "%s/%s: %s", sp->dir, name, strerror(errno));
	return fd;
}

/*
 * Deletes everything in the subdirectory name (open as dfd): in tmp/,
 * messages whose commit never completed; in free/, delivered mail kept for
 * reuse by an earlier run, which should not outlive it.
 */
static int spool_clear(struct spool *sp, const char *name, int dfd, char *err, size_t errlen)
{
	struct dirent *de;
	int fd = openat(sp->dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC), removed = 0;
	DIR *d;

	/* A descriptor of its own: a dup would share (and move) dfd's offset. */
	d = fd == -1 ? NULL : fdopendir(fd);
	if (d == NULL) {
		snprintf(err, errlen, "%s/%s: %s", sp->dir, name, strerror(errno));
		if (fd != -1)
			close(fd);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (unlinkat(dfd, de->d_name, 0) == 0)
			removed++;
		else
			log_warn("event=spool_clear_unlink_failed dir=%s/%s file=%s error=\"%s\"",
			         sp->dir, name, de->d_name, strerror(errno));
	}
	closedir(d);
	if (removed > 0)
		log_info("event=spool_cleared dir=%s/%s removed=%d", sp->dir, name, removed);
	return 0;
}

/* Moves queue/name to quarantine/ (name, else name.N); 0 or -1. */
static int spool_quarantine(struct spool *sp, const char *name, const char *why)
{
	char dst[300], q[512];
	int i;

	for (i = 0; i < 1000; i++) {
		if (i == 0)
			snprintf(dst, sizeof(dst), "%s", name);
		else
			snprintf(dst, sizeof(dst), "%s.%d", name, i);
		if (renameat2(sp->queuefd, name, sp->quarfd, dst, RENAME_NOREPLACE) == 0) {
			log_warn("event=spool_quarantine file=%s/queue/%s to=%s/quarantine/%s "
			         "reason=%s",
			         sp->dir, name, sp->dir, dst, log_quote(q, sizeof(q), why));
			return 0;
		}
		if (errno != EEXIST)
			break;
	}
	log_err("event=spool_quarantine_failed file=%s/queue/%s reason=%s error=\"%s\"", sp->dir,
	        name, log_quote(q, sizeof(q), why), strerror(errno));
	return -1;
}

/* Checks every queue file; counts the good ones, quarantines the rest. */
static int spool_check_queue(struct spool *sp, char *err, size_t errlen)
{
	struct dirent *de;
	int fd = openat(sp->dirfd, "queue", O_RDONLY | O_DIRECTORY | O_CLOEXEC), moved = 0, rc = -1;
	char why[256], **names = NULL;
	size_t n = 0, cap = 0, i;
	struct stat st;
	DIR *d;

	d = fd == -1 ? NULL : fdopendir(fd);
	if (d == NULL) {
		snprintf(err, errlen, "%s/queue: %s", sp->dir, strerror(errno));
		if (fd != -1)
			close(fd);
		return -1;
	}
	/* Names first: quarantining renames entries out of the directory being read. */
	while ((errno = 0, de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 256;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = xstrdup(de->d_name);
	}
	if (errno != 0) {
		snprintf(err, errlen, "%s/queue: readdir: %s", sp->dir, strerror(errno));
		closedir(d);
		goto out;
	}
	closedir(d);
	sp->count = 0;
	for (i = 0; i < n; i++) {
		struct queue_msg m;
		const char *name = names[i];

		if (!queue_id_valid(name)) {
			snprintf(why, sizeof(why), "file name is not a queue id");
		} else if (queue_read_fileat(sp->queuefd, name, &m, 0, why, sizeof(why)) == 0) {
			int same = strcmp(m.env.id, name) == 0;
			if (!same)
				snprintf(why, sizeof(why),
				         "ID record %s does not match the file name", m.env.id);
			queue_msg_free(&m);
			if (same) {
				sp->count++;
				continue;
			}
		}
		/* Delivered and removed by the delivery side meanwhile: fine. */
		if (fstatat(sp->queuefd, name, &st, AT_SYMLINK_NOFOLLOW) == -1 && errno == ENOENT)
			continue;
		if (spool_quarantine(sp, name, why) == 0)
			moved++;
	}
	if (moved > 0 && (fsync(sp->quarfd) == -1 || fsync(sp->queuefd) == -1)) {
		snprintf(err, errlen, "%s: fsync after quarantine: %s", sp->dir, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc;
}

struct spool *spool_open(struct event_base *base, const char *dir, int nthreads, char *err,
                         size_t errlen)
{
	struct spool *sp = xcalloc(1, sizeof(*sp));
	int created = 0;

	sp->base = base;
	sp->dir = xstrdup(dir);
	sp->dirfd = sp->tmpfd = sp->queuefd = sp->quarfd = sp->freefd = sp->efd = -1;
	pthread_mutex_init(&sp->lock, NULL);
	pthread_cond_init(&sp->cond, NULL);
	if (nthreads <= 0)
		nthreads = SPOOL_DEFAULT_THREADS;
	if (nthreads > SPOOL_MAX_THREADS)
		nthreads = SPOOL_MAX_THREADS;

	if (mkdir_p(dir) == -1) {
		snprintf(err, errlen, "%s: mkdir: %s", dir, strerror(errno));
		goto fail;
	}
	sp->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->dirfd == -1) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		goto fail;
	}
	/*
	 * Recovery deletes temp files: only one process may own the spool. The
	 * lock is on the directory itself, so no lock file needs the right owner
	 * when the daemon drops privileges after opening the spool.
	 */
	if (flock(sp->dirfd, LOCK_EX | LOCK_NB) == -1) {
		snprintf(err, errlen, "%s: spool is in use by another process (directory locked)",
		         dir);
		goto fail;
	}
	if ((sp->tmpfd = spool_subdir(sp, "tmp", &created, err, errlen)) == -1 ||
	    (sp->queuefd = spool_subdir(sp, "queue", &created, err, errlen)) == -1 ||
	    (sp->quarfd = spool_subdir(sp, "quarantine", &created, err, errlen)) == -1 ||
	    (sp->freefd = spool_subdir(sp, "free", &created, err, errlen)) == -1)
		goto fail;
	if (created && fsync(sp->dirfd) == -1) {
		snprintf(err, errlen, "%s: fsync: %s", dir, strerror(errno));
		goto fail;
	}
	if (spool_clear(sp, "tmp", sp->tmpfd, err, errlen) == -1 ||
	    spool_clear(sp, "free", sp->freefd, err, errlen) == -1 ||
	    spool_check_queue(sp, err, errlen) == -1)
		goto fail;
	sp->counted_at = now_usec();
	if (commit_start(sp, nthreads, err, errlen) == -1)
		goto fail;
	log_info("event=spool_open dir=%s queued=%zu commit_threads=%d", dir, sp->count, nthreads);
	return sp;
fail:
	if (sp->freefd != -1)
		close(sp->freefd);
	if (sp->quarfd != -1)
		close(sp->quarfd);
	if (sp->queuefd != -1)
		close(sp->queuefd);
	if (sp->tmpfd != -1)
		close(sp->tmpfd);
	if (sp->dirfd != -1)
		close(sp->dirfd);
	pthread_mutex_destroy(&sp->lock);
	pthread_cond_destroy(&sp->cond);
	free(sp->dir);
	free(sp);
	return NULL;
}

void spool_close(struct spool *sp)
{
	size_t open;

	if (sp == NULL)
		return;
	commit_stop(sp);
	open = __atomic_load_n(&sp->open_txns, __ATOMIC_RELAXED);
	if (open > 0)
		log_warn("event=spool_close_open_txns dir=%s open=%zu", sp->dir, open);
	log_info("event=spool_close dir=%s commits=%llu batches=%llu synced_by_caller=%llu "
	         "from_threads=%llu reused_files=%llu",
	         sp->dir, (unsigned long long)sp->commits, (unsigned long long)sp->batches,
	         (unsigned long long)sp->caller_synced, (unsigned long long)sp->from_threads,
	         (unsigned long long)sp->reused);
	close(sp->freefd);
	close(sp->quarfd);
	close(sp->queuefd);
	close(sp->tmpfd);
	close(sp->dirfd); /* releases the flock */
	free(sp->free_names);
	pthread_mutex_destroy(&sp->lock);
	pthread_cond_destroy(&sp->cond);
	free(sp->dir);
	free(sp);
}

/* Counts the queue files in queue/ now; -1 if the directory cannot be read. */
static long spool_scan_count(struct spool *sp)
{
	int fd = openat(sp->dirfd, "queue", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	long n = 0;
	DIR *d;

	d = fd == -1 ? NULL : fdopendir(fd);
	if (d == NULL) {
		if (fd != -1)
			close(fd);
		return -1;
	}
	while ((de = readdir(d)) != NULL)
		if (queue_id_valid(de->d_name))
			n++;
	closedir(d);
	return n;
}

size_t spool_count(struct spool *sp)
{
	return spool_count_within(sp, SPOOL_RECOUNT_USEC);
}

size_t spool_count_within(struct spool *sp, uint64_t max_age_usec)
{
	uint64_t now = now_usec();

	/*
	 * The delivery process removes files behind our back: recount, but at
	 * most once per interval (a readdir of a big queue is not free).
	 */
	if (now - sp->counted_at >= max_age_usec) {
		long n = spool_scan_count(sp);
		if (n >= 0)
			sp->count = (size_t)n;
		sp->counted_at = now;
	}
	return sp->count;
}

int spool_writable(struct spool *sp)
{
	char name[64];
	int fd;

	snprintf(name, sizeof(name), ".probe-%d", (int)getpid());
	fd = openat(sp->tmpfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd == -1)
		return 0;
	close(fd);
	return unlinkat(sp->tmpfd, name, 0) == 0;
}

void spool_stats(struct spool *sp, uint64_t *commits, uint64_t *batches,
                 uint64_t *caller_synced)
{
	pthread_mutex_lock(&sp->lock);
	if (commits != NULL)
		*commits = sp->commits;
	if (batches != NULL)
		*batches = sp->batches;
	if (caller_synced != NULL)
		*caller_synced = sp->caller_synced;
	pthread_mutex_unlock(&sp->lock);
}

/* How many names one scan of free/ takes, and how long an empty one lasts. */
#define FREE_SCAN_MAX 256
#define FREE_RESCAN_USEC 200000

/* Reads up to FREE_SCAN_MAX names of free/ into sp->free_names. */
static void spool_scan_free(struct spool *sp)
{
	int fd = openat(sp->freefd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	DIR *d;

	sp->nfree = 0;
	sp->free_listed_at = now_usec();
	if (fd == -1 || (d = fdopendir(fd)) == NULL) {
		if (fd != -1)
			close(fd);
		return;
	}
	if (sp->free_names == NULL)
		sp->free_names = xcalloc(FREE_SCAN_MAX, sizeof(*sp->free_names));
	while (sp->nfree < FREE_SCAN_MAX && (de = readdir(d)) != NULL)
		if (queue_id_valid(de->d_name))
			memcpy(sp->free_names[sp->nfree++], de->d_name, QUEUE_ID_LEN + 1);
	closedir(d);
}

/*
 * Delivered files are moved to free/ by the delivery process instead of
 * being deleted (queue.h, QUEUE_FREE_*). Reusing one costs two directory
 * entries, where a new file costs an inode and its blocks, and a deleted
 * one their release (and, on a disk mounted with discard, a trim in the
 * journal commit every fsync of the spool waits for). A new message
 * shorter than the old file still frees the tail blocks at commit.
 *
 * The delivery process does not sync its move queue/ID -> free/ID. Were it
 * lost in a power cut after this file was written over, queue/ID would come
 * back holding pieces of another message. So names read from free/ are used
 * only once a sync of queue/ that began after the read has completed (the
 * commit threads sync queue/ after every batch): the journal commits in
 * order, so that sync made every earlier move out of queue/ durable. Until
 * then new files are created, which only costs speed.
 */
void spool_set_reuse(struct spool *sp, int on)
{
	sp->no_reuse = !on;
}

int spool_take_free(struct spool *sp, const char *id)
{
	struct stat st;
	int synced;

	if (sp->no_reuse)
		return -1;
	while (sp->nfree > 0 || now_usec() - sp->free_scanned_at >= FREE_RESCAN_USEC) {
		const char *name;
		int fd;

		if (sp->nfree == 0) {
			spool_scan_free(sp);
			if (sp->nfree == 0) {
				sp->free_scanned_at = now_usec();
				return -1;
			}
		}
		pthread_mutex_lock(&sp->lock);
		synced = sp->dirsync_started > sp->free_listed_at;
		pthread_mutex_unlock(&sp->lock);
		if (!synced)
			return -1;
		name = sp->free_names[--sp->nfree];
		if (renameat2(sp->freefd, name, sp->tmpfd, id, RENAME_NOREPLACE) == -1) {
			if (errno != EEXIST)
				continue; /* gone (swept meanwhile): try the next */
			/* tmp/ID is taken (a refused file that could not be
			 * removed, below): the name stays listed for the next
			 * message, which brings another ID, and queue_begin
			 * picks a fresh ID for this one. Dropping it, as every
			 * later name would fail the same way, lost the scan. */
			sp->nfree++;
			return -1;
		}
		/* Only a plain file of ours with no other name is written over. */
		fd = openat(sp->tmpfd, id, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
		if (fd != -1 && (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
		                 st.st_uid != geteuid())) {
			close(fd);
			fd = -1;
			errno = EPERM;
		}
		if (fd == -1) {
			log_warn("event=spool_reuse_refused file=free/%s error=\"%s\"", name,
			         strerror(errno));
			unlinkat(sp->tmpfd, id, 0);
			continue;
		}
		if (fcntl(fd, F_SETFL, 0) == -1) { /* back to blocking writes */
			close(fd);
			unlinkat(sp->tmpfd, id, 0);
			continue;
		}
		return fd;
	}
	return -1;
}
