/*
 * test_queue: the spool as the daemon uses it. Commits go through real
 * commit threads and a real event loop into a temp directory, and are read
 * back with queue_read_file; damaged files are made by cutting and flipping
 * bytes of real committed files.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "queue/queue.h"
#include "queue/spool_int.h" /* to stand in for a busy commit thread */

/* ---- helpers ---------------------------------------------------------- */

struct fixture {
	char dir[64];
	struct event_base *base;
	struct spool *sp;
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void rm_tree(const char *dir)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char err[256];

	snprintf(f->dir, sizeof(f->dir), "/tmp/test_queue.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	f->base = event_base_new();
	assert_non_null(f->base);
	f->sp = spool_open(f->base, f->dir, 2, err, sizeof(err));
	if (f->sp == NULL)
		fail_msg("spool_open: %s", err);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	spool_close(f->sp);
	event_base_free(f->base);
	rm_tree(f->dir);
	free(f);
	return 0;
}

/* Number of entries in dir/sub (not . and ..). */
static int count_dir(const char *dir, const char *sub)
{
	char path[256];
	struct dirent *de;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	d = opendir(path);
	if (d == NULL)
		return -1;
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

/* Outcome of one commit, filled by the callback on the loop. */
struct outcome {
	int fired;
	int err;
	char id[QUEUE_ID_LEN + 1];
};

static struct outcome *outcomes;
static size_t outcomes_fired;

static void commit_cb(uint64_t cookie, const char *id, int err)
{
	struct outcome *o = &outcomes[cookie];

	assert_int_equal(o->fired, 0);
	o->fired = 1;
	o->err = err;
	snprintf(o->id, sizeof(o->id), "%s", id);
	outcomes_fired++;
}

static void run_until(struct event_base *base, size_t n)
{
	while (outcomes_fired < n)
		assert_int_not_equal(event_base_loop(base, EVLOOP_ONCE), -1);
}

static void expire(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until n outcomes, or for at most ms milliseconds. */
static void run_until_or(struct event_base *base, size_t n, int ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	struct event *ev = evtimer_new(base, expire, NULL);

	assert_non_null(ev);
	evtimer_add(ev, &tv);
	while (outcomes_fired < n && evtimer_pending(ev, NULL))
		assert_int_not_equal(event_base_loop(base, EVLOOP_ONCE), -1);
	event_free(ev);
}

static void reset_outcomes(size_t n)
{
	free(outcomes);
	outcomes = calloc(n, sizeof(*outcomes));
	outcomes_fired = 0;
}

static char *rcpts_two[] = {"bob@example.net", "carol@example.org"};

static void make_env(struct queue_envelope *env)
{
	memset(env, 0, sizeof(*env));
	env->tenant_id = 42;
	env->tenant = "acme corp";
	env->auth_user = "acme-app";
	env->sender = "bounce+x@mail.acme.example";
	env->rcpts = rcpts_two;
	env->nrcpts = 2;
	env->received = 1795000000;
	env->client = "192.0.2.7";
	env->flags = QFLAG_8BITMIME;
}

static const char test_hdr[] = "From: a@acme.example\r\nTo: bob@example.net\r\n"
                               "Subject: hello\r\n\r\n";

/* Deterministic body bytes of length n (CRLF lines). */
static unsigned char *make_body(size_t n)
{
	unsigned char *b = malloc(n ? n : 1);
	size_t i;

	for (i = 0; i < n; i++)
		b[i] = (i % 80 == 78)   ? '\r'
		       : (i % 80 == 79) ? '\n'
		                        : (unsigned char)('a' + i % 26);
	return b;
}

/* Commits one message of body_len bytes and waits for it; returns its id. */
static void commit_one(struct fixture *f, size_t body_len, size_t step, char id[QUEUE_ID_LEN + 1])
{
	struct queue_envelope env;
	struct spool_txn *t;
	unsigned char *body = make_body(body_len);
	size_t off;

	reset_outcomes(1);
	make_env(&env);
	t = queue_begin(f->sp);
	assert_non_null(t);
	for (off = 0; off < body_len; off += step) {
		size_t n = body_len - off < step ? body_len - off : step;
		assert_int_equal(queue_write_body(t, body + off, n), 0);
	}
	assert_int_equal(queue_commit(t, &env, test_hdr, strlen(test_hdr), commit_cb, 0), 0);
	run_until(f->base, 1);
	assert_int_equal(outcomes[0].err, 0);
	memcpy(id, outcomes[0].id, QUEUE_ID_LEN + 1);
	free(body);
}

static unsigned char *read_all(const char *path, size_t *n)
{
	struct stat st;
	unsigned char *p;
	int fd = open(path, O_RDONLY);

	assert_int_not_equal(fd, -1);
	assert_int_equal(fstat(fd, &st), 0);
	p = malloc((size_t)st.st_size + 1);
	assert_int_equal(read(fd, p, (size_t)st.st_size), st.st_size);
	close(fd);
	*n = (size_t)st.st_size;
	return p;
}

static void write_all(const char *path, const unsigned char *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_int_not_equal(fd, -1);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	close(fd);
}

/* ---- ids ---------------------------------------------------------------- */

static void test_ids(void **state)
{
	char prev[QUEUE_ID_LEN + 1], cur[QUEUE_ID_LEN + 1];
	int i;

	queue_id_new(prev);
	assert_true(queue_id_valid(prev));
	for (i = 0; i < 10000; i++) {
		queue_id_new(cur);
		assert_true(queue_id_valid(cur));
		/* The time part sorts strictly, so ids sort in creation order. */
		assert_true(memcmp(prev, cur, 11) < 0);
		memcpy(prev, cur, sizeof(cur));
	}
	assert_false(queue_id_valid("0123456789ABCDEFGHI"));   /* 19 */
	assert_false(queue_id_valid("0123456789ABCDEFGHIJK")); /* 21 */
	assert_false(queue_id_valid("0123456789abcdefghij"));
	assert_false(queue_id_valid("0123456789ABCDEFGH/."));
	assert_true(queue_id_valid("0123456789ABCDEFGHIJ"));
}

/* ---- the pure record format -------------------------------------------- */

/* Builds a complete image: MAGIC, extra (raw records), HEADERS, env, END. */
static void build_image(struct buf *img, const struct buf *extra, const char *trailer)
{
	struct queue_envelope env;
	unsigned char d[32];

	make_env(&env);
	memcpy(env.id, "0000000000000ABCDEFG", QUEUE_ID_LEN + 1);
	buf_init(img, 1 << 24);
	assert_int_equal(queue_magic_append(img), 0);
	if (extra)
		assert_int_equal(buf_append(img, extra->data, extra->len), 0);
	assert_int_equal(queue_rec_append(img, QREC_HEADERS, test_hdr, strlen(test_hdr)), 0);
	assert_int_equal(queue_env_encode(&env, img), 0);
	sha256(img->data, img->len, d);
	assert_int_equal(queue_rec_append(img, QREC_END, d, sizeof(d)), 0);
	if (trailer)
		buf_puts(img, trailer);
}

static void test_record_types(void **state)
{
	struct buf extra, img;
	struct queue_msg m;
	char err[256];

	/* A type >= 100 from a later version is skipped. */
	buf_init(&extra, 1 << 20);
	queue_rec_append(&extra, QREC_BODY, "abc", 3);
	queue_rec_append(&extra, 150, "future", 6);
	queue_rec_append(&extra, QREC_BODY, "def", 3);
	build_image(&img, &extra, NULL);
	assert_int_equal(
	    queue_msg_parse((unsigned char *)img.data, img.len, &m, QUEUE_PARSE_BODY, err, sizeof(err)), 0);
	assert_int_equal(m.header_len, strlen(test_hdr));
	assert_int_equal(m.message.len, strlen(test_hdr) + 6);
	assert_memory_equal(m.message.data + m.header_len, "abcdef", 6);
	assert_string_equal(m.env.id, "0000000000000ABCDEFG");
	assert_int_equal(m.env.tenant_id, 42);
	assert_string_equal(m.env.tenant, "acme corp");
	queue_msg_free(&m);
	buf_free(&img);

	/* An unknown type below 100 is damage. */
	buf_reset(&extra);
	queue_rec_append(&extra, 50, "x", 1);
	build_image(&img, &extra, NULL);
	assert_int_equal(
	    queue_rec_walk((unsigned char *)img.data, img.len, 0, NULL, NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "unknown record type 50"));
	buf_free(&img);

	/* After END: only what status appends leave (a STATUS record, maybe
	 * torn, or zeros); other bytes are damage. */
	build_image(&img, NULL, "x");
	assert_int_equal(
	    queue_rec_walk((unsigned char *)img.data, img.len, 0, NULL, NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "after END"));
	buf_free(&img);
	build_image(&img, NULL, NULL);
	queue_rec_append(&img, QREC_STATUS, "0 deferred 1 2 3", 16);
	assert_int_equal(
	    queue_msg_parse((unsigned char *)img.data, img.len - 4, &m, QUEUE_PARSE_BODY, err, sizeof(err)), 0);
	assert_string_equal(m.env.rcpts[0], "bob@example.net");
	queue_msg_free(&m);
	buf_free(&img);
	build_image(&img, NULL, NULL);
	buf_append(&img, "\0\0\0\0\0\0", 6);
	assert_int_equal(
	    queue_rec_walk((unsigned char *)img.data, img.len, 0, NULL, NULL, err, sizeof(err)), 0);
	buf_free(&img);

	/* Duplicate once-only records and missing required ones. */
	buf_reset(&extra);
	queue_rec_append(&extra, QREC_SENDER, "x@y", 3);
	build_image(&img, &extra, NULL);
	assert_int_equal(
	    queue_msg_parse((unsigned char *)img.data, img.len, &m, 0, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "duplicate SENDER"));
	buf_free(&img);
	buf_free(&extra);
}

/* Builds an image with only some envelope records; checks the parse error. */
static void check_missing(int skip_type, const char *want)
{
	struct buf img;
	struct queue_msg m;
	unsigned char d[32];
	char err[256];

	buf_init(&img, 1 << 20);
	queue_magic_append(&img);
	queue_rec_append(&img, QREC_HEADERS, "", 0);
	if (skip_type != QREC_ID)
		queue_rec_append(&img, QREC_ID, "0000000000000ABCDEFG", 20);
	if (skip_type != QREC_TENANT)
		queue_rec_append(&img, QREC_TENANT, "1 t", 3);
	if (skip_type != QREC_SENDER)
		queue_rec_append(&img, QREC_SENDER, "", 0);
	if (skip_type != QREC_RCPT)
		queue_rec_append(&img, QREC_RCPT, "r@x", 3);
	if (skip_type != QREC_RECEIVED)
		queue_rec_append(&img, QREC_RECEIVED, "1", 1);
	sha256(img.data, img.len, d);
	queue_rec_append(&img, QREC_END, d, 32);
	if (want == NULL) {
		assert_int_equal(
		    queue_msg_parse((unsigned char *)img.data, img.len, &m, QUEUE_PARSE_BODY, err, sizeof(err)),
		    0);
		assert_string_equal(m.env.sender, ""); /* the null reverse-path */
		assert_int_equal(m.message.len, 0);
		queue_msg_free(&m);
	} else {
		assert_int_equal(
		    queue_msg_parse((unsigned char *)img.data, img.len, &m, QUEUE_PARSE_BODY, err, sizeof(err)),
		    -1);
		assert_string_equal(err, want);
		/* Left empty after a failure. */
		assert_null(m.env.tenant);
		assert_int_equal(m.env.nrcpts, 0);
	}
	buf_free(&img);
}

/*
 * QUEUE_DIGEST_CHECKED: for a caller that checked the END digest over the
 * whole file and parses a part of it (the delivery side, without the BODY
 * records). The digest alone is then not checked; everything else is.
 */
static void test_digest_checked_by_caller(void **state)
{
	struct buf img, extra;
	struct queue_msg m;
	char err[256];

	(void)state;
	build_image(&img, NULL, NULL);
	img.data[img.len - 1] ^= 0x01; /* the END digest's last byte */
	assert_int_equal(
	    queue_msg_parse((unsigned char *)img.data, img.len, &m, 0, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "bad checksum"));
	assert_int_equal(queue_msg_parse((unsigned char *)img.data, img.len, &m,
					 QUEUE_DIGEST_CHECKED | QUEUE_PARSE_BODY, err, sizeof(err)),
			 0);
	assert_string_equal(m.env.rcpts[0], "bob@example.net");
	assert_int_equal(m.header_len, strlen(test_hdr));
	queue_msg_free(&m);
	buf_free(&img);

	/* Damage other than the digest is still found. */
	buf_init(&extra, 1024);
	queue_rec_append(&extra, 50, "x", 1);
	build_image(&img, &extra, NULL);
	img.data[img.len - 1] ^= 0x01;
	assert_int_equal(queue_msg_parse((unsigned char *)img.data, img.len, &m,
					 QUEUE_DIGEST_CHECKED, err, sizeof(err)),
			 -1);
	assert_non_null(strstr(err, "unknown record type 50"));
	buf_free(&img);
	buf_free(&extra);
}

static void test_required_records(void **state)
{
	check_missing(0, NULL);
	check_missing(QREC_ID, "missing ID record");
	check_missing(QREC_TENANT, "missing TENANT record");
	check_missing(QREC_SENDER, "missing SENDER record");
	check_missing(QREC_RCPT, "missing RCPT record");
	check_missing(QREC_RECEIVED, "missing RECEIVED record");
}

static void test_env_encode_refuses(void **state)
{
	struct queue_envelope env;
	struct buf out;
	char *bad_rcpt[] = {"ok@x", "evil\r\nRCPT TO:<x>"};

	buf_init(&out, 1 << 20);
	make_env(&env);
	memcpy(env.id, "0000000000000ABCDEFG", QUEUE_ID_LEN + 1);
	assert_int_equal(queue_env_encode(&env, &out), 0);
	env.rcpts = bad_rcpt;
	buf_reset(&out);
	assert_int_equal(queue_env_encode(&env, &out), -1);
	assert_int_equal(errno, EINVAL);
	make_env(&env);
	memcpy(env.id, "0000000000000ABCDEFG", QUEUE_ID_LEN + 1);
	env.nrcpts = 0;
	assert_int_equal(queue_env_encode(&env, &out), -1);
	make_env(&env);
	memcpy(env.id, "short", 6);
	assert_int_equal(queue_env_encode(&env, &out), -1);
	buf_free(&out);
}

/* ---- commits through the spool ------------------------------------------ */

static int body_records;

static int count_body(void *arg, int type, const unsigned char *data, size_t len)
{
	if (type == QREC_BODY) {
		assert_true(len <= QUEUE_BODY_CHUNK);
		body_records++;
	}
	return 0;
}

static void test_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct queue_msg m;
	char id[QUEUE_ID_LEN + 1], path[256], err[256];
	size_t body_len = 3 * QUEUE_BODY_CHUNK + 12345;
	unsigned char *body = make_body(body_len);
	struct queue_envelope want;

	/* Odd write sizes so chunks never line up with the writes. */
	commit_one(f, body_len, 1000, id);
	assert_true(queue_id_valid(id));
	snprintf(path, sizeof(path), "%s/queue/%s", f->dir, id);
	if (queue_read_file(path, &m, 1, err, sizeof(err)) == -1)
		fail_msg("queue_read_file: %s", err);

	make_env(&want);
	assert_string_equal(m.env.id, id);
	assert_int_equal(m.env.tenant_id, want.tenant_id);
	assert_string_equal(m.env.tenant, want.tenant);
	assert_string_equal(m.env.auth_user, want.auth_user);
	assert_string_equal(m.env.sender, want.sender);
	assert_int_equal(m.env.nrcpts, 2);
	assert_string_equal(m.env.rcpts[0], want.rcpts[0]);
	assert_string_equal(m.env.rcpts[1], want.rcpts[1]);
	assert_int_equal(m.env.received, want.received);
	assert_string_equal(m.env.client, want.client);
	assert_int_equal(m.env.flags, QFLAG_8BITMIME);
	assert_int_equal(m.header_len, strlen(test_hdr));
	assert_int_equal(m.message.len, strlen(test_hdr) + body_len);
	assert_memory_equal(m.message.data, test_hdr, strlen(test_hdr));
	assert_memory_equal(m.message.data + m.header_len, body, body_len);
	queue_msg_free(&m);

	/* The body went to disk in QUEUE_BODY_CHUNK pieces, not in one record. */
	{
		size_t n;
		unsigned char *img = read_all(path, &n);
		body_records = 0;
		assert_int_equal(queue_rec_walk(img, n, 0, count_body, NULL, err, sizeof(err)), 0);
		assert_int_equal(body_records, 4);
		free(img);
	}

	/* want_body = 0 still checks the file but skips the message. */
	assert_int_equal(queue_read_file(path, &m, 0, err, sizeof(err)), 0);
	assert_int_equal(m.message.len, 0);
	assert_int_equal(m.env.nrcpts, 2);
	queue_msg_free(&m);

	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	assert_int_equal(count_dir(f->dir, "queue"), 1);
	assert_int_equal(spool_count(f->sp), 1);
	assert_true(spool_writable(f->sp));
	free(body);
}

/*
 * A file in free/ (a delivered message kept for reuse) becomes the next
 * message's file: rewritten from the start and cut to the new length, so
 * nothing of the old, longer content survives after END.
 */
static void test_reuse_free_file(void **state)
{
	struct fixture *f = *state;
	char id[QUEUE_ID_LEN + 1], old[QUEUE_ID_LEN + 1], path[256], err[256];
	size_t n, old_len = 3 * QUEUE_BODY_CHUNK;
	unsigned char *img, *junk = malloc(old_len);
	struct queue_msg m;
	struct stat st;
	ino_t ino;
	int fd;

	queue_id_new(old);
	memset(junk, 'X', old_len);
	snprintf(path, sizeof(path), "%s/free/%s", f->dir, old);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_int_not_equal(fd, -1);
	assert_int_equal(write(fd, junk, old_len), (ssize_t)old_len);
	assert_int_equal(fstat(fd, &st), 0);
	ino = st.st_ino;
	close(fd);
	free(junk);

	/*
	 * Not yet: a name read from free/ is used only after a sync of
	 * queue/ that began after the read (the move out of queue/ must be
	 * durable first). The first commit reads it and makes that sync.
	 */
	commit_one(f, 10, 10, id);
	assert_int_equal(count_dir(f->dir, "free"), 1);
	commit_one(f, 1000, 333, id);
	assert_int_equal(count_dir(f->dir, "free"), 0);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	assert_int_equal(count_dir(f->dir, "queue"), 2);
	snprintf(path, sizeof(path), "%s/queue/%s", f->dir, id);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_ino, ino); /* the same file, written over */
	img = read_all(path, &n);
	assert_true(n < 1000 + 2048);
	/* A run of the old bytes, not one 'X' (the binary END digest may hold 0x58). */
	assert_null(memmem(img, n, "XXXXXXXXXXXXXXXX", 16));
	assert_int_equal(queue_rec_walk(img, n, 0, count_body, NULL, err, sizeof(err)), 0);
	free(img);
	if (queue_read_file(path, &m, 1, err, sizeof(err)) == -1)
		fail_msg("queue_read_file: %s", err);
	assert_string_equal(m.env.id, id);
	assert_int_equal(m.message.len, strlen(test_hdr) + 1000);
	queue_msg_free(&m);

	/* free/ is empty now: the next message gets a new file. */
	commit_one(f, 10, 10, id);
	assert_int_equal(count_dir(f->dir, "queue"), 3);
}

/* A FIFO or a file with a second name in free/ is never written over. */
static void test_reuse_refuses_odd_files(void **state)
{
	struct fixture *f = *state;
	char id[QUEUE_ID_LEN + 1], a[QUEUE_ID_LEN + 1], b[QUEUE_ID_LEN + 1];
	char path[256], other[256];
	struct stat st;
	int fd;

	queue_id_new(a);
	snprintf(path, sizeof(path), "%s/free/%s", f->dir, a);
	assert_int_equal(mkfifo(path, 0600), 0);
	queue_id_new(b);
	snprintf(path, sizeof(path), "%s/free/%s", f->dir, b);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_int_not_equal(fd, -1);
	assert_int_equal(write(fd, "keep me", 7), 7);
	close(fd);
	snprintf(other, sizeof(other), "%s/backup-link", f->dir);
	assert_int_equal(link(path, other), 0);

	commit_one(f, 10, 10, id);   /* reads free/ (see test_reuse_free_file) */
	commit_one(f, 100, 100, id); /* must not block on the FIFO */
	assert_int_equal(count_dir(f->dir, "free"), 0);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	assert_int_equal(count_dir(f->dir, "queue"), 2);
	assert_int_equal(stat(other, &st), 0);
	assert_int_equal(st.st_size, 7); /* the other name's content untouched */
	assert_int_equal(st.st_nlink, 1);
	unlink(other);
}

static void test_empty_body(void **state)
{
	struct fixture *f = *state;
	struct queue_msg m;
	char id[QUEUE_ID_LEN + 1], path[256], err[256];

	commit_one(f, 0, 1, id);
	snprintf(path, sizeof(path), "%s/queue/%s", f->dir, id);
	assert_int_equal(queue_read_file(path, &m, 1, err, sizeof(err)), 0);
	assert_int_equal(m.message.len, strlen(test_hdr));
	queue_msg_free(&m);
}

/* Commits t ("hello") in two halves, the signer's way, as the caller from. */
static void commit_in_halves(struct spool_txn *t, uint64_t cookie, enum queue_caller from)
{
	struct queue_envelope env;

	make_env(&env);
	assert_int_equal(queue_write_body(t, "hello\r\n", 7), 0);
	assert_int_equal(queue_txn_set_envelope(t, &env), 0);
	assert_int_equal(
	    queue_commit_prepared(t, NULL, 0, test_hdr, strlen(test_hdr), commit_cb, cookie, from),
	    0);
}

/*
 * A message committed in two halves (the signer's way), with nothing else
 * open: the calling thread syncs it itself, so it is in queue/ when the
 * call returns; its callback still runs on the loop.
 */
static void test_prepared_synced_by_caller(void **state)
{
	struct fixture *f = *state;
	struct queue_envelope env;
	struct queue_msg m;
	struct spool_txn *t = queue_begin(f->sp);
	static const char top[] = "DKIM-Signature: v=1; a=ed25519-sha256; b=x\r\n";
	char path[256], err[256];
	uint64_t by_caller;

	make_env(&env);
	reset_outcomes(1);
	assert_int_equal(queue_write_body(t, "hello\r\n", 7), 0);
	assert_int_equal(queue_txn_set_envelope(t, &env), 0);
	assert_int_equal(queue_commit_prepared(t, top, strlen(top), test_hdr, strlen(test_hdr),
	                                       commit_cb, 0, QUEUE_FROM_THREAD_MAY_SYNC),
	                 0);
	assert_int_equal(count_dir(f->dir, "queue"), 1);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	assert_int_equal(outcomes_fired, 0);
	run_until(f->base, 1);
	assert_int_equal(outcomes[0].err, 0);
	snprintf(path, sizeof(path), "%s/queue/%s", f->dir, outcomes[0].id);
	if (queue_read_file(path, &m, 1, err, sizeof(err)) == -1)
		fail_msg("%s: %s", path, err);
	assert_int_equal(m.message.len, strlen(top) + strlen(test_hdr) + 7);
	assert_memory_equal(m.message.data, top, strlen(top));
	queue_msg_free(&m);
	assert_int_equal(spool_count(f->sp), 1);
	spool_stats(f->sp, NULL, NULL, &by_caller);
	assert_int_equal(by_caller, 1);
}

/*
 * With another message still open, the caller hands the message to the
 * commit threads instead (it might share their batch), which must be woken
 * for it: it is committed all the same, and so is the other one.
 */
static void test_prepared_handed_over_while_others_open(void **state)
{
	struct fixture *f = *state;
	struct queue_envelope env;
	struct spool_txn *t = queue_begin(f->sp), *other = queue_begin(f->sp);
	uint64_t by_caller;

	make_env(&env);
	reset_outcomes(2);
	commit_in_halves(t, 0, QUEUE_FROM_THREAD_MAY_SYNC);
	assert_int_equal(queue_commit(other, &env, test_hdr, strlen(test_hdr), commit_cb, 1), 0);
	run_until(f->base, 2);
	assert_int_equal(outcomes[0].err, 0);
	assert_int_equal(outcomes[1].err, 0);
	assert_int_equal(count_dir(f->dir, "queue"), 2);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	spool_stats(f->sp, NULL, NULL, &by_caller);
	assert_int_equal(by_caller, 0);
}

/*
 * Stands in for a commit thread syncing a batch of n messages (busy), or
 * finishing it; a thread that finishes takes whatever waits, as the real
 * one does when it loops.
 */
static void fake_sync(struct spool *sp, int busy, size_t n)
{
	int i, parked = 0;

	/* Both threads waiting for work first: one still starting up would
	 * take what is pending without being woken. */
	for (i = 0; i < 1000 && parked < sp->nthreads; i++) {
		pthread_mutex_lock(&sp->lock);
		parked = sp->parked;
		pthread_mutex_unlock(&sp->lock);
		if (parked < sp->nthreads)
			usleep(10000);
	}
	assert_int_equal(parked, sp->nthreads);
	pthread_mutex_lock(&sp->lock);
	if (busy) {
		sp->busy++;
		sp->syncing_n += n;
	} else {
		sp->busy--;
		sp->syncing_n -= n;
		pthread_cond_signal(&sp->cond);
	}
	pthread_mutex_unlock(&sp->lock);
}

/*
 * Commits a message in two halves, from the given caller (a signer thread
 * that may sync, one that may not, the loop for Ed25519 mail), with one
 * other message open so that it is not alone and joins the next batch.
 */
static void commit_joining_as(struct fixture *f, uint64_t cookie, enum queue_caller from)
{
	struct spool_txn *t = queue_begin(f->sp), *other = queue_begin(f->sp);

	commit_in_halves(t, cookie, from);
	queue_abort(other);
}

static void commit_joining(struct fixture *f, uint64_t cookie)
{
	commit_joining_as(f, cookie, QUEUE_FROM_THREAD_MAY_SYNC);
}

/* Hands a message over (see commit_joining_as) and checks that no thread
 * takes it while the loop runs for 300 ms: it waits for the busy one. */
static void commit_left_waiting(struct fixture *f, uint64_t cookie, enum queue_caller from)
{
	commit_joining_as(f, cookie, from);
	run_until_or(f->base, cookie + 1, 300);
	assert_int_equal(outcomes_fired, cookie);
}

/*
 * Under light load a message joining the next batch does not wait for a
 * busy commit thread: the idle one is woken for it at once. (The busy
 * thread's batch and the message make exactly the light-load bound.)
 */
static void light_load_wakes_idle_thread(struct fixture *f, enum queue_caller from)
{
	reset_outcomes(1);
	fake_sync(f->sp, 1, SPOOL_JOIN_LIGHT_LOAD - 2); /* + the other open + this one */
	commit_joining_as(f, 0, from);
	run_until_or(f->base, 1, 10000);
	assert_int_equal(outcomes_fired, 1); /* not left waiting for the busy thread */
	assert_int_equal(outcomes[0].err, 0);
	assert_int_equal(count_dir(f->dir, "queue"), 1);
	fake_sync(f->sp, 0, SPOOL_JOIN_LIGHT_LOAD - 2);
}

static void test_prepared_light_load_wakes_idle_thread(void **state)
{
	light_load_wakes_idle_thread(*state, QUEUE_FROM_THREAD_MAY_SYNC);
}

/* The same for a signer thread that may not sync (no other one free). */
static void test_prepared_light_load_wakes_idle_thread_for_any_thread(void **state)
{
	light_load_wakes_idle_thread(*state, QUEUE_FROM_THREAD);
}

/*
 * A signer thread that may not sync (no other signer thread is free to
 * take the next job) hands even a lone message to a commit thread: the
 * message is committed, not by the caller.
 */
static void test_prepared_lone_message_not_synced_by_busy_signer(void **state)
{
	struct fixture *f = *state;
	uint64_t by_caller;

	reset_outcomes(1);
	commit_in_halves(queue_begin(f->sp), 0, QUEUE_FROM_THREAD);
	run_until_or(f->base, 1, 10000);
	assert_int_equal(outcomes_fired, 1);
	assert_int_equal(outcomes[0].err, 0);
	assert_int_equal(count_dir(f->dir, "queue"), 1);
	spool_stats(f->sp, NULL, NULL, &by_caller);
	assert_int_equal(by_caller, 0);
}

/*
 * Under load it waits for the busy thread's next batch (so that batches
 * form at 50 connections), and is committed when that thread is done.
 */
static void test_prepared_under_load_waits_for_busy_thread(void **state)
{
	struct fixture *f = *state;

	reset_outcomes(1);
	fake_sync(f->sp, 1, SPOOL_JOIN_LIGHT_LOAD);
	commit_left_waiting(f, 0, QUEUE_FROM_THREAD_MAY_SYNC);
	assert_int_equal(count_dir(f->dir, "tmp"), 1);
	fake_sync(f->sp, 0, SPOOL_JOIN_LIGHT_LOAD);
	run_until(f->base, 1);
	assert_int_equal(outcomes[0].err, 0);
	assert_int_equal(count_dir(f->dir, "queue"), 1);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
}

/* Messages still open (in DATA, being signed) count as load too. */
static void test_prepared_open_messages_count_as_load(void **state)
{
	struct fixture *f = *state;
	struct spool_txn *open[SPOOL_JOIN_LIGHT_LOAD - 2];
	size_t i;

	for (i = 0; i < SPOOL_JOIN_LIGHT_LOAD - 2; i++)
		open[i] = queue_begin(f->sp);
	reset_outcomes(1);
	fake_sync(f->sp, 1, 1); /* 6 + 1 open, 1 being synced, this one: 9 */
	commit_left_waiting(f, 0, QUEUE_FROM_THREAD_MAY_SYNC);
	for (i = 0; i < SPOOL_JOIN_LIGHT_LOAD - 2; i++)
		queue_abort(open[i]);
	fake_sync(f->sp, 0, 1);
	run_until(f->base, 1);
	assert_int_equal(outcomes[0].err, 0);
	assert_int_equal(count_dir(f->dir, "queue"), 1);
}

/*
 * A message that joined under load woke nobody; when the load has dropped,
 * the next one handed over still wakes the idle thread, which takes both.
 */
static void test_prepared_wakes_behind_one_that_joined(void **state)
{
	struct fixture *f = *state;

	reset_outcomes(2);
	fake_sync(f->sp, 1, SPOOL_JOIN_LIGHT_LOAD);
	commit_left_waiting(f, 0, QUEUE_FROM_THREAD_MAY_SYNC);
	/* The busy thread's batch is nearly done: light load again. */
	pthread_mutex_lock(&f->sp->lock);
	f->sp->syncing_n = 1;
	pthread_mutex_unlock(&f->sp->lock);
	commit_joining(f, 1);
	run_until_or(f->base, 2, 10000);
	assert_int_equal(outcomes_fired, 2); /* not left for the busy thread */
	assert_int_equal(outcomes[0].err, 0);
	assert_int_equal(outcomes[1].err, 0);
	assert_int_equal(count_dir(f->dir, "queue"), 2);
	fake_sync(f->sp, 0, 1);
}

/*
 * The loop's Ed25519 messages keep waiting for a busy thread even under
 * light load: woken for the first of a loop pass, the idle thread split
 * the pass's batch (more CPU per message at 1,000 msgs/s).
 */
static void test_prepared_from_loop_waits_for_busy_thread(void **state)
{
	struct fixture *f = *state;

	reset_outcomes(1);
	fake_sync(f->sp, 1, 1);
	commit_left_waiting(f, 0, QUEUE_FROM_LOOP);
	fake_sync(f->sp, 0, 1);
	run_until(f->base, 1);
	assert_int_equal(outcomes[0].err, 0);
	assert_int_equal(count_dir(f->dir, "queue"), 1);
}

static int list_seen;
static char list_last[256];

static void list_fn(void *arg, const char *path)
{
	/* In id order, i.e. oldest first. */
	assert_true(strcmp(list_last, path) < 0);
	snprintf(list_last, sizeof(list_last), "%s", path);
	list_seen++;
}

static void test_list(void **state)
{
	struct fixture *f = *state;
	char id[QUEUE_ID_LEN + 1], path[256];
	int i;

	for (i = 0; i < 3; i++)
		commit_one(f, 100, 100, id);
	/* Not a queue file: not listed. */
	snprintf(path, sizeof(path), "%s/queue/README", f->dir);
	write_all(path, (const unsigned char *)"x", 1);
	list_seen = 0;
	list_last[0] = '\0';
	assert_int_equal(queue_list_files(f->dir, list_fn, NULL), 3);
	assert_int_equal(list_seen, 3);
	snprintf(path, sizeof(path), "%s/queue/%s", f->dir, id);
	assert_string_equal(list_last, path); /* the last committed is last */
}

/* Files removed by someone else (the delivery process) leave the count. */
static void test_count_follows_removals(void **state)
{
	struct fixture *f = *state;
	char id[QUEUE_ID_LEN + 1], path[256];
	int i;

	for (i = 0; i < 3; i++)
		commit_one(f, 10, 10, id);
	assert_int_equal(spool_count(f->sp), 3);
	snprintf(path, sizeof(path), "%s/queue/%s", f->dir, id);
	assert_int_equal(unlink(path), 0);
	usleep(1100 * 1000); /* past the recount interval */
	assert_int_equal(spool_count(f->sp), 2);
	commit_one(f, 10, 10, id);
	assert_int_equal(spool_count(f->sp), 3);
}

static void test_abort(void **state)
{
	struct fixture *f = *state;
	struct spool_txn *t = queue_begin(f->sp);

	assert_non_null(t);
	assert_int_equal(queue_write_body(t, "hello\r\n", 7), 0);
	assert_int_equal(count_dir(f->dir, "tmp"), 1);
	queue_abort(t);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	assert_int_equal(count_dir(f->dir, "queue"), 0);
}

static void test_commit_refused(void **state)
{
	struct fixture *f = *state;
	struct queue_envelope env;
	struct spool_txn *t = queue_begin(f->sp);

	/* An envelope that could not be read back is refused before any I/O wait. */
	make_env(&env);
	env.sender = "a\nb";
	reset_outcomes(1);
	assert_int_equal(queue_write_body(t, "hello\r\n", 7), 0);
	assert_int_equal(queue_commit(t, &env, test_hdr, strlen(test_hdr), commit_cb, 0), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	assert_int_equal(count_dir(f->dir, "queue"), 0);
	assert_int_equal(outcomes_fired, 0);
}

/* A real write error (the file size limit) while DATA streams in. */
static void test_write_error(void **state)
{
	struct fixture *f = *state;
	struct queue_envelope env;
	struct spool_txn *t = queue_begin(f->sp);
	unsigned char *body = make_body(4096);
	struct rlimit old, lim;
	int i, rc = 0, e = 0;

	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 100000;
	signal(SIGXFSZ, SIG_IGN); /* write() then fails with EFBIG */
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	for (i = 0; i < 64 && rc == 0; i++) {
		rc = queue_write_body(t, body, 4096);
		e = errno;
	}
	assert_int_equal(rc, -1);
	assert_int_equal(e, EFBIG);
	/* Later writes keep failing; the commit reports the first error. */
	assert_int_equal(queue_write_body(t, body, 10), -1);
	make_env(&env);
	reset_outcomes(1);
	assert_int_equal(queue_commit(t, &env, test_hdr, strlen(test_hdr), commit_cb, 0), -1);
	assert_int_equal(errno, EFBIG);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);
	assert_int_equal(outcomes_fired, 0);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	assert_int_equal(count_dir(f->dir, "queue"), 0);
	free(body);
}

static void test_commit_failure(void **state)
{
	struct fixture *f = *state;
	struct queue_envelope env;
	struct spool_txn *t = queue_begin(f->sp);
	char path[256];
	uint64_t commits;

	/* queue/ is gone: the rename into it fails on the commit thread. */
	snprintf(path, sizeof(path), "%s/queue", f->dir);
	assert_int_equal(rmdir(path), 0);
	make_env(&env);
	reset_outcomes(1);
	assert_int_equal(queue_write_body(t, "hello\r\n", 7), 0);
	assert_int_equal(queue_commit(t, &env, test_hdr, strlen(test_hdr), commit_cb, 0), 0);
	run_until(f->base, 1);
	assert_int_not_equal(outcomes[0].err, 0);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	assert_int_equal(spool_count(f->sp), 0);
	spool_stats(f->sp, &commits, NULL, NULL);
	assert_int_equal(commits, 0);
	assert_int_equal(mkdir(path, 0700), 0);
}

#define MANY 500

static void many_concurrent(struct fixture *f)
{
	struct spool_txn *t[MANY];
	struct queue_envelope env;
	unsigned char *body = make_body(5000);
	char path[256], err[256];
	uint64_t commits, batches;
	size_t i;

	make_env(&env);
	reset_outcomes(MANY);
	for (i = 0; i < MANY; i++) {
		t[i] = queue_begin(f->sp);
		assert_non_null(t[i]);
	}
	for (i = 0; i < MANY; i++)
		assert_int_equal(queue_write_body(t[i], body, 5000), 0);
	for (i = 0; i < MANY; i++)
		assert_int_equal(queue_commit(t[i], &env, test_hdr, strlen(test_hdr), commit_cb, i),
		                 0);
	run_until(f->base, MANY);
	for (i = 0; i < MANY; i++) {
		struct queue_msg m;
		assert_int_equal(outcomes[i].err, 0);
		snprintf(path, sizeof(path), "%s/queue/%s", f->dir, outcomes[i].id);
		if (queue_read_file(path, &m, 1, err, sizeof(err)) == -1)
			fail_msg("%s: %s", path, err);
		assert_int_equal(m.message.len, strlen(test_hdr) + 5000);
		queue_msg_free(&m);
	}
	assert_int_equal(count_dir(f->dir, "queue"), MANY);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	assert_int_equal(spool_count(f->sp), MANY);
	spool_stats(f->sp, &commits, &batches, NULL);
	assert_int_equal(commits, MANY);
	/* Group commit: directory fsyncs were shared. */
	assert_true(batches >= 1);
	assert_true(batches < MANY);
	print_message("%d commits in %llu batches\n", MANY, (unsigned long long)batches);
	free(body);
}

/* Big batches are synced with one syncfs (on Linux >= 5.8). */
static void test_many_concurrent(void **state)
{
	many_concurrent(*state);
}

/* The same with an fdatasync per file, the path small batches always take. */
static void test_many_concurrent_fdatasync(void **state)
{
	struct fixture *f = *state;
	char err[256];

	spool_close(f->sp);
	setenv("SENDGATE_SPOOL_NO_SYNCFS", "1", 1);
	f->sp = spool_open(f->base, f->dir, 2, err, sizeof(err));
	unsetenv("SENDGATE_SPOOL_NO_SYNCFS");
	assert_non_null(f->sp);
	many_concurrent(f);
}

static struct spool *closing_sp;
static int closing_begin_refused;

static void closing_cb(uint64_t cookie, const char *id, int err)
{
	struct spool_txn *t = queue_begin(closing_sp);

	/* Too late for a new message: the commit threads are gone. */
	if (t == NULL && errno == ESHUTDOWN)
		closing_begin_refused++;
	else if (t != NULL)
		queue_abort(t);
	commit_cb(cookie, id, err);
}

/* spool_close finishes what was committed and tells every owner. */
static void test_close_runs_callbacks(void **state)
{
	struct fixture *f = *state;
	struct queue_envelope env;
	size_t i;

	make_env(&env);
	reset_outcomes(3);
	closing_sp = f->sp;
	closing_begin_refused = 0;
	for (i = 0; i < 3; i++) {
		struct spool_txn *t = queue_begin(f->sp);
		assert_non_null(t);
		assert_int_equal(queue_write_body(t, "hi\r\n", 4), 0);
		assert_int_equal(queue_commit(t, &env, test_hdr, strlen(test_hdr), closing_cb, i),
		                 0);
	}
	spool_close(f->sp); /* the loop never ran */
	f->sp = NULL;
	assert_int_equal(outcomes_fired, 3);
	assert_int_equal(closing_begin_refused, 3);
	for (i = 0; i < 3; i++) {
		assert_int_equal(outcomes[i].err, 0);
	}
	assert_int_equal(count_dir(f->dir, "queue"), 3);
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
}

/* ---- damage and recovery ------------------------------------------------ */

static int image_parses(const unsigned char *p, size_t n)
{
	struct queue_msg m;
	char err[256];
	int rc = queue_msg_parse(p, n, &m, QUEUE_PARSE_BODY, err, sizeof(err));

	if (rc == 0)
		queue_msg_free(&m);
	return rc == 0;
}

static void test_damage_every_byte(void **state)
{
	struct fixture *f = *state;
	char id[QUEUE_ID_LEN + 1], path[256];
	unsigned char *img;
	size_t n, i;

	commit_one(f, 300, 300, id);
	snprintf(path, sizeof(path), "%s/queue/%s", f->dir, id);
	img = read_all(path, &n);
	assert_true(image_parses(img, n));
	/* Every truncation, and every single-bit flip, is caught. */
	for (i = 0; i < n; i++)
		assert_false(image_parses(img, i));
	for (i = 0; i < n; i++) {
		img[i] ^= 0x01;
		assert_false(image_parses(img, n));
		img[i] ^= 0x01;
	}
	free(img);
}

/* Writes img[0..n) into queue/ under a fresh id; returns the name in name. */
static void plant(const char *dir, const unsigned char *img, size_t n, char name[QUEUE_ID_LEN + 1])
{
	char path[256];

	queue_id_new(name);
	snprintf(path, sizeof(path), "%s/queue/%s", dir, name);
	write_all(path, img, n);
}

static int exists(const char *dir, const char *sub, const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name);
	return access(path, F_OK) == 0;
}

static void test_recovery(void **state)
{
	struct fixture *f = *state;
	char good[QUEUE_ID_LEN + 1], path[256], err[256], bad[8][QUEUE_ID_LEN + 1];
	unsigned char *img;
	size_t n, end_off, body_hdr_off = 0;
	int i, nbad = 0;

	/* A good file with a multi-chunk body. */
	commit_one(f, QUEUE_BODY_CHUNK + 5000, 4096, good);
	snprintf(path, sizeof(path), "%s/queue/%s", f->dir, good);
	img = read_all(path, &n);
	end_off = n - QREC_HDR_LEN - 32;
	/* The first BODY record follows MAGIC ("SENDGATE-Q1", 11 bytes). */
	body_hdr_off = QREC_HDR_LEN + 11;
	assert_int_equal(img[body_hdr_off], QREC_BODY);

	plant(f->dir, img, body_hdr_off + 2, bad[nbad++]); /* inside a record header */
	plant(f->dir, img, body_hdr_off + QREC_HDR_LEN + 100, bad[nbad++]); /* inside data */
	plant(f->dir, img, end_off, bad[nbad++]);                           /* END missing */
	plant(f->dir, img, n - 1, bad[nbad++]);                             /* END cut short */
	plant(f->dir, img, 0, bad[nbad++]);                                 /* empty */
	img[n / 2] ^= 0x20;
	plant(f->dir, img, n, bad[nbad++]); /* one flipped byte */
	img[n / 2] ^= 0x20;
	plant(f->dir, img, n, bad[nbad++]); /* intact, but named after another id */
	for (i = 0; i < nbad; i++) {
		struct queue_msg m;
		snprintf(path, sizeof(path), "%s/queue/%s", f->dir, bad[i]);
		if (i < nbad - 1)
			assert_int_equal(queue_read_file(path, &m, 0, err, sizeof(err)), -1);
	}
	/* Junk of a previous run in tmp/. */
	snprintf(path, sizeof(path), "%s/tmp/0000000000000ZZZZZZZ", f->dir);
	write_all(path, img, 100);

	spool_close(f->sp);
	f->sp = spool_open(f->base, f->dir, 2, err, sizeof(err));
	if (f->sp == NULL)
		fail_msg("spool_open: %s", err);
	assert_int_equal(spool_count(f->sp), 1);
	assert_true(exists(f->dir, "queue", good));
	for (i = 0; i < nbad; i++) {
		assert_false(exists(f->dir, "queue", bad[i]));
		assert_true(exists(f->dir, "quarantine", bad[i]));
	}
	assert_int_equal(count_dir(f->dir, "tmp"), 0);
	assert_int_equal(count_dir(f->dir, "quarantine"), nbad);
	free(img);
}

/* ---- a process killed mid-stream -------------------------------------- */

static int crash_pipe = -1;
static struct spool *crash_sp;
static unsigned char *crash_body;

static void crash_start(uint64_t slot);

/* Child: reports each acknowledged id on the pipe, then starts another. */
static void crash_cb(uint64_t slot, const char *id, int err)
{
	if (err != 0 || write(crash_pipe, id, QUEUE_ID_LEN) != QUEUE_ID_LEN)
		_exit(3);
	crash_start(slot);
}

static void crash_start(uint64_t slot)
{
	struct queue_envelope env;
	struct spool_txn *t = queue_begin(crash_sp);

	make_env(&env);
	if (t == NULL || queue_write_body(t, crash_body, 3 * QUEUE_BODY_CHUNK / 2) == -1 ||
	    queue_commit(t, &env, test_hdr, strlen(test_hdr), crash_cb, slot) == -1)
		_exit(4);
}

#define KILL_MAX_IDS 20000

/* Reads whole ids from fd into ids; blocking until at least want are in. */
static size_t read_ids(int fd, char (*ids)[QUEUE_ID_LEN + 1], size_t nids, size_t want)
{
	char rd[QUEUE_ID_LEN];
	size_t got = 0;

	while (nids < KILL_MAX_IDS && (want == 0 || nids < want)) {
		ssize_t r = read(fd, rd + got, sizeof(rd) - got);
		if (r <= 0)
			break;
		got += (size_t)r;
		if (got == QUEUE_ID_LEN) {
			memcpy(ids[nids], rd, QUEUE_ID_LEN);
			ids[nids++][QUEUE_ID_LEN] = '\0';
			got = 0;
		}
	}
	return nids;
}

static void test_kill_9(void **state)
{
	char dir[64] = "/tmp/test_queue.XXXXXX", err[256], path[256];
	char(*ids)[QUEUE_ID_LEN + 1] = calloc(KILL_MAX_IDS, sizeof(*ids));
	size_t nids, i;
	int fds[2], status;
	struct event_base *base;
	struct spool *sp;
	pid_t pid;

	assert_non_null(mkdtemp(dir));
	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		crash_pipe = fds[1];
		crash_body = make_body(3 * QUEUE_BODY_CHUNK / 2);
		base = event_base_new();
		crash_sp = base ? spool_open(base, dir, 2, err, sizeof(err)) : NULL;
		if (crash_sp == NULL)
			_exit(2);
		for (i = 0; i < 20; i++)
			crash_start((uint64_t)i);
		event_base_dispatch(base);
		_exit(5);
	}
	close(fds[1]);
	/* Let it commit a while, then kill it without warning. */
	nids = read_ids(fds[0], ids, 0, 200);
	assert_int_equal(nids, 200);
	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	/* Acknowledgements already in the pipe count too. */
	nids = read_ids(fds[0], ids, nids, 0);
	close(fds[0]);

	print_message("%zu acknowledged, %d in tmp/ at the kill\n", nids, count_dir(dir, "tmp"));

	/* The next start: every acknowledged message is there and intact. */
	base = event_base_new();
	sp = spool_open(base, dir, 2, err, sizeof(err));
	if (sp == NULL)
		fail_msg("spool_open: %s", err);
	for (i = 0; i < nids; i++) {
		struct queue_msg m;
		snprintf(path, sizeof(path), "%s/queue/%.20s", dir, ids[i]);
		if (queue_read_file(path, &m, 1, err, sizeof(err)) == -1)
			fail_msg("acknowledged %s: %s", ids[i], err);
		assert_int_equal(m.message.len, strlen(test_hdr) + 3 * QUEUE_BODY_CHUNK / 2);
		queue_msg_free(&m);
	}
	assert_true(spool_count(sp) >= nids);
	/* In flight at the kill: gone from tmp/, never half in queue/. */
	assert_int_equal(count_dir(dir, "tmp"), 0);
	assert_int_equal(count_dir(dir, "quarantine"), 0);
	spool_close(sp);
	event_base_free(base);
	rm_tree(dir);
	free(ids);
}

static void test_single_owner(void **state)
{
	struct fixture *f = *state;
	struct spool *other;
	char err[256];

	other = spool_open(f->base, f->dir, 1, err, sizeof(err));
	assert_null(other);
	assert_non_null(strstr(err, "in use"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ids),
	    cmocka_unit_test(test_record_types),
	    cmocka_unit_test(test_digest_checked_by_caller),
	    cmocka_unit_test(test_required_records),
	    cmocka_unit_test(test_env_encode_refuses),
	    cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_empty_body, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reuse_free_file, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reuse_refuses_odd_files, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_prepared_synced_by_caller, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_prepared_light_load_wakes_idle_thread, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(
	        test_prepared_light_load_wakes_idle_thread_for_any_thread, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_prepared_lone_message_not_synced_by_busy_signer,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_prepared_under_load_waits_for_busy_thread, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_prepared_open_messages_count_as_load, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_prepared_wakes_behind_one_that_joined, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_prepared_from_loop_waits_for_busy_thread, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_prepared_handed_over_while_others_open, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_list, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_count_follows_removals, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_abort, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_commit_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_write_error, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_commit_failure, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_runs_callbacks, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_many_concurrent, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_many_concurrent_fdatasync, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_damage_every_byte, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_recovery, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_single_owner, setup, teardown),
	    cmocka_unit_test(test_kill_9),
	};

	log_init("test_queue", 0, SGLOG_WARN);
	alarm(120); /* a lost completion must fail the run, not hang it */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
