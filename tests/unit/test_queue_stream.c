/*
 * test_queue_stream: the message as delivery streams it: the chunked
 * dot-stuffer (every split of the input gives the bytes of the one-piece
 * stuffing, never a bare CR or LF), and the queue file read in bounded
 * pieces (dq_scan_file, qbody_next), which must agree with the whole-image
 * readers and refuse a file that is damaged or changes under it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/deliver_int.h"

/* The input stuffed in the pieces cut at cuts[0..ncuts) (ascending). */
static void stuff_split(const char *in, size_t n, const size_t *cuts, size_t ncuts, struct buf *out)
{
	struct dotstuff ds;
	size_t from = 0, i;

	buf_init(out, 1 << 20);
	dotstuff_init(&ds);
	for (i = 0; i <= ncuts; i++) {
		size_t to = i < ncuts ? cuts[i] : n;
		dotstuff_chunk(&ds, out, in + from, to - from);
		from = to;
	}
	dotstuff_end(&ds, out);
}

/* Every CR is followed by LF and every LF preceded by CR; ends in CRLF.CRLF. */
static void assert_wire_clean(const struct buf *out)
{
	size_t i;

	for (i = 0; i < out->len; i++) {
		if (out->data[i] == '\r')
			assert_true(i + 1 < out->len && out->data[i + 1] == '\n');
		if (out->data[i] == '\n')
			assert_true(i > 0 && out->data[i - 1] == '\r');
	}
	assert_true(out->len >= 3);
	assert_memory_equal(out->data + out->len - 3, ".\r\n", 3);
	if (out->len > 3)
		assert_memory_equal(out->data + out->len - 5, "\r\n.\r\n", 5);
}

/* in stuffed whole, cut once at every position and twice at every pair: want. */
static void check_all_splits(const char *in, const char *want)
{
	size_t n = strlen(in), a, b;
	struct buf out;
	size_t cuts[2];

	stuff_split(in, n, NULL, 0, &out);
	assert_int_equal(out.len, strlen(want));
	assert_memory_equal(out.data, want, out.len);
	assert_wire_clean(&out);
	buf_free(&out);
	for (a = 0; a <= n; a++) {
		cuts[0] = a;
		stuff_split(in, n, cuts, 1, &out);
		if (out.len != strlen(want) || memcmp(out.data, want, out.len) != 0)
			fail_msg("input %zu bytes cut at %zu: got \"%s\"", n, a, out.data);
		buf_free(&out);
		for (b = a; b <= n; b++) {
			cuts[1] = b;
			stuff_split(in, n, cuts, 2, &out);
			if (out.len != strlen(want) || memcmp(out.data, want, out.len) != 0)
				fail_msg("cut at %zu and %zu: got \"%s\"", a, b, out.data);
			buf_free(&out);
		}
	}
	/* One byte at a time. */
	{
		size_t *one = malloc((n ? n : 1) * sizeof(*one));
		for (a = 0; a + 1 < n; a++)
			one[a] = a + 1;
		stuff_split(in, n, one, n ? n - 1 : 0, &out);
		assert_int_equal(out.len, strlen(want));
		assert_memory_equal(out.data, want, out.len);
		buf_free(&out);
		free(one);
	}
}

static void test_split_dot_after_crlf(void **state)
{
	/* "\r\n." split before the CR, between CR and LF, before the dot. */
	check_all_splits("a\r\n.b\r\n", "a\r\n..b\r\n.\r\n");
	check_all_splits("\r\n.\r\n", "\r\n..\r\n.\r\n");
	check_all_splits(".\r\n", "..\r\n.\r\n");
	check_all_splits("x\r\n.", "x\r\n..\r\n.\r\n");
}

static void test_split_two_dots(void **state)
{
	check_all_splits("a\r\n..b\r\n", "a\r\n...b\r\n.\r\n");
	check_all_splits("..\r\n..\r\n", "...\r\n...\r\n.\r\n");
	check_all_splits("a\r\n..\r\n.\r\n", "a\r\n...\r\n..\r\n.\r\n");
	/* Dots in the middle of a line stay single. */
	check_all_splits("a.b\r\nc..\r\n", "a.b\r\nc..\r\n.\r\n");
}

static void test_split_crlf(void **state)
{
	/* CRLF is one line end whatever the split; CR CR LF is two. */
	check_all_splits("ab\r\ncd\r\n", "ab\r\ncd\r\n.\r\n");
	check_all_splits("a\r\r\nb\r\n", "a\r\n\r\nb\r\n.\r\n");
	check_all_splits("\r\n\r\n", "\r\n\r\n.\r\n");
	/* A CR held at the end of a piece before a dot line. */
	check_all_splits("a\r.b\r\n", "a\r\n..b\r\n.\r\n");
}

static void test_split_bare_cr_lf(void **state)
{
	check_all_splits("a\nb\rc\r\n", "a\r\nb\r\nc\r\n.\r\n");
	check_all_splits("x\n.\n", "x\r\n..\r\n.\r\n");
	check_all_splits("\n\r", "\r\n\r\n.\r\n");
	check_all_splits("a\r", "a\r\n.\r\n");
}

static void test_no_final_crlf(void **state)
{
	/* The format allows any bytes in BODY: a missing CRLF is added. */
	check_all_splits("a\r\n.b", "a\r\n..b\r\n.\r\n");
	check_all_splits("abc", "abc\r\n.\r\n");
	check_all_splits(".", "..\r\n.\r\n");
	check_all_splits("", ".\r\n");
}

/* The one-piece result equals smtp_dotstuff's, on random bytes of the hard kind. */
static void test_random_splits(void **state)
{
	static const char alphabet[] = ".\r\nab";
	unsigned seed = 12345;
	int round;

	for (round = 0; round < 3000; round++) {
		char in[48];
		size_t n, i, cuts[4], nc;
		struct buf whole, split;

		seed = seed * 1103515245u + 12345u;
		n = (seed >> 16) % sizeof(in);
		for (i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			in[i] = alphabet[(seed >> 16) % 5];
		}
		buf_init(&whole, 1 << 20);
		smtp_dotstuff(&whole, in, n);
		assert_wire_clean(&whole);
		nc = 0;
		for (i = 0; i < 4; i++) {
			seed = seed * 1103515245u + 12345u;
			cuts[nc] = n ? (seed >> 16) % (n + 1) : 0;
			if (nc == 0 || cuts[nc] >= cuts[nc - 1])
				nc++;
		}
		stuff_split(in, n, cuts, nc, &split);
		assert_int_equal(split.len, whole.len);
		assert_memory_equal(split.data, whole.data, whole.len);
		/* Bounded as documented: 2n + 2 per piece, 5 at the end. */
		assert_true(whole.len <= 2 * n + 5);
		buf_free(&whole);
		buf_free(&split);
	}
}

/* ---- queue files read in pieces ---------------------------------------- */

/* A queue file image whose body is body (in BODY records of chunk bytes). */
static void make_file(struct buf *img, const char *body, size_t blen, size_t chunk)
{
	static const char *rcpts[] = {"a@one.test", "b@two.test"};
	const char hdr[] = "Subject: x\r\n\r\n";
	unsigned char d[32];
	size_t i;

	buf_init(img, 64 << 20);
	assert_int_equal(queue_magic_append(img), 0);
	for (i = 0; i < blen; i += chunk)
		assert_int_equal(
		    queue_rec_append(img, QREC_BODY, body + i, blen - i < chunk ? blen - i : chunk),
		    0);
	assert_int_equal(queue_rec_append(img, QREC_HEADERS, hdr, strlen(hdr)), 0);
	assert_int_equal(queue_rec_append(img, QREC_ID, "0123456789ABCDEFGHIJ", 20), 0);
	assert_int_equal(queue_rec_append(img, QREC_TENANT, "7 acme", 6), 0);
	assert_int_equal(queue_rec_append(img, QREC_SENDER, "s@acme.test", 11), 0);
	for (i = 0; i < 2; i++)
		assert_int_equal(queue_rec_append(img, QREC_RCPT, rcpts[i], strlen(rcpts[i])), 0);
	assert_int_equal(queue_rec_append(img, QREC_RECEIVED, "1700000000", 10), 0);
	sha256(img->data, img->len, d);
	assert_int_equal(queue_rec_append(img, QREC_END, d, 32), 0);
}

static int write_tmp(const struct buf *img, char *path)
{
	int fd;

	strcpy(path, "/tmp/sg_qstream_XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, img->data, img->len), (ssize_t)img->len);
	return fd;
}

/* Everything qbody yields, concatenated; the last qbody_next result. */
static int read_body(struct qbody *b, struct buf *out)
{
	char err[256];
	const char *p;
	size_t n;
	int r;

	buf_init(out, 64 << 20);
	while ((r = qbody_next(b, &p, &n, err, sizeof(err))) == 1) {
		assert_true(n <= QUEUE_BODY_CHUNK);
		assert_int_equal(buf_append(out, p, n), 0);
	}
	return r;
}

/* The body b yields is exactly body[0..blen); closes b. */
static void assert_body_is(struct qbody *b, const char *body, size_t blen)
{
	struct buf got;

	assert_int_equal(read_body(b, &got), 0);
	assert_int_equal(got.len, blen);
	assert_memory_equal(got.data, body, blen);
	buf_free(&got);
	qbody_close(b);
}

static void test_scan_and_body(void **state)
{
	size_t blen = 3 * QUEUE_BODY_CHUNK + 1234, i;
	char *body = malloc(blen), path[64], err[256];
	struct buf img, got, seg;
	struct queue_msg m, whole;
	struct queue_rcpt_status *st, sts[2];
	struct qfile_info info;
	size_t idx = 1, valid;
	unsigned char dg[32];
	int fd;

	for (i = 0; i < blen; i++)
		body[i] = i % 77 == 76 ? '\n' : (char)('a' + i % 26);
	make_file(&img, body, blen, QUEUE_BODY_CHUNK);
	/* A status segment after END, as delivery appends them. */
	queue_status_parse((unsigned char *)img.data, img.len, sts, 2, NULL, dg);
	sts[1].state = QRCPT_DELIVERED;
	sts[1].attempts = 1;
	buf_init(&seg, 1 << 20);
	queue_status_segment(&seg, dg, &idx, 1, sts);
	assert_int_equal(buf_append(&img, seg.data, seg.len), 0);
	fd = write_tmp(&img, path);

	assert_int_equal(dq_scan_file(fd, &m, 1, &st, &info, err, sizeof(err)), 0);
	assert_int_equal(info.body_len, blen);
	assert_int_equal(info.file_len, img.len);
	assert_int_equal(info.valid_len, img.len);
	assert_memory_equal(info.digest, dg, 32);
	assert_string_equal(m.message.data, "Subject: x\r\n\r\n");
	assert_int_equal(m.header_len, m.message.len);
	assert_int_equal(m.env.nrcpts, 2);
	assert_string_equal(m.env.rcpts[1], "b@two.test");
	assert_int_equal(st[0].state, QRCPT_PENDING);
	assert_int_equal(st[1].state, QRCPT_DELIVERED);
	/* The same as the whole-image reader. */
	assert_int_equal(
	    queue_msg_parse((unsigned char *)img.data, img.len, &whole, QUEUE_PARSE_BODY, err, sizeof(err)), 0);
	assert_int_equal(whole.message.len, m.message.len + blen);
	assert_int_equal(queue_status_parse((unsigned char *)img.data, img.len, sts, 2, &valid, dg),
	                 1);
	assert_int_equal(valid, img.len);
	queue_msg_free(&whole);
	queue_msg_free(&m);
	free(st);

	assert_body_is(qbody_open(dup(fd), &info), body, blen);
	/* The file changes after the check: the end is refused. */
	{
		struct qbody *b = qbody_open(dup(fd), &info);
		char x = 'Z';
		assert_int_equal(pwrite(fd, &x, 1, 100), 1);
		assert_int_equal(read_body(b, &got), -1);
		buf_free(&got);
		qbody_close(b);
	}
	/* And the check itself refuses it. */
	assert_int_equal(dq_scan_file(fd, &m, 1, &st, &info, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "bad checksum"));
	assert_null(st);
	close(fd);
	unlink(path);
	buf_free(&img);
	buf_free(&seg);
	free(body);
}

static void test_scan_damaged(void **state)
{
	const char body[] = "line\r\n.dot\r\n";
	char path[64], err[256];
	struct queue_msg m;
	struct queue_rcpt_status *st;
	struct qfile_info info;
	struct buf img;
	size_t cut;
	int fd;

	make_file(&img, body, strlen(body), 5);
	/* Every truncation is refused, as the whole-image reader does. */
	for (cut = 0; cut < img.len; cut++) {
		struct queue_msg w;
		char werr[256];
		fd = write_tmp(&img, path);
		assert_int_equal(ftruncate(fd, (off_t)cut), 0);
		assert_int_equal(dq_scan_file(fd, &m, 1, &st, &info, err, sizeof(err)), -1);
		assert_int_equal(
		    queue_msg_parse((unsigned char *)img.data, cut, &w, 0, werr, sizeof(werr)), -1);
		close(fd);
		unlink(path);
	}
	/* Not a queue file. */
	img.data[0] = QREC_BODY;
	fd = write_tmp(&img, path);
	assert_int_equal(dq_scan_file(fd, &m, 1, &st, &info, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "bad magic"));
	close(fd);
	unlink(path);
	buf_free(&img);
}

/*
 * A file read in one piece (DQ_SCAN_KEEP): the body goes out from the
 * checked bytes, so it is the same as read from the file, no pread follows,
 * and a change to the file after the check changes nothing that is sent.
 */
static void test_scan_keep_small(void **state)
{
	const char body[] = "first line\r\n.dot line\r\nlast\r\n";
	char path[64], err[256];
	struct queue_msg m;
	struct queue_rcpt_status *st;
	struct qfile_info info;
	struct buf img;
	int fd;

	make_file(&img, body, strlen(body), 7); /* several BODY records */
	fd = write_tmp(&img, path);
	assert_int_equal(
	    dq_scan_file(fd, &m, DQ_SCAN_HEADERS | DQ_SCAN_KEEP, &st, &info, err, sizeof(err)), 0);
	assert_non_null(info.image);
	assert_memory_equal(info.image, img.data, info.end_off + QREC_HDR_LEN + 32);
	queue_msg_free(&m);
	free(st);
	{
		struct qbody *b = qbody_open(dup(fd), &info);
		char x = 'Z';
		assert_null(info.image); /* taken over */
		/* Scribbled over after the check: what goes out is what was checked. */
		assert_int_equal(pwrite(fd, &x, 1, 10), 1);
		assert_body_is(b, body, strlen(body));
	}
	/* Checked again, the change is seen, and a failed check keeps nothing. */
	assert_int_equal(dq_scan_file(fd, &m, DQ_SCAN_KEEP, &st, &info, err, sizeof(err)), -1);
	assert_null(info.image);
	close(fd);
	unlink(path);
	buf_free(&img);
}

/* A file larger than one read is streamed from the file, never kept. */
static void test_scan_keep_large(void **state)
{
	size_t blen = QUEUE_BODY_CHUNK + 100, i;
	char *body = malloc(blen), path[64], err[256];
	struct queue_msg m;
	struct queue_rcpt_status *st;
	struct qfile_info info;
	struct buf img;
	int fd;

	for (i = 0; i < blen; i++)
		body[i] = i % 70 == 69 ? '\n' : 'k';
	make_file(&img, body, blen, QUEUE_BODY_CHUNK);
	fd = write_tmp(&img, path);
	assert_int_equal(
	    dq_scan_file(fd, &m, DQ_SCAN_HEADERS | DQ_SCAN_KEEP, &st, &info, err, sizeof(err)), 0);
	assert_null(info.image);
	queue_msg_free(&m);
	free(st);
	assert_body_is(qbody_open(dup(fd), &info), body, blen);
	close(fd);
	unlink(path);
	buf_free(&img);
	free(body);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_split_dot_after_crlf), cmocka_unit_test(test_split_two_dots),
	    cmocka_unit_test(test_split_crlf),           cmocka_unit_test(test_split_bare_cr_lf),
	    cmocka_unit_test(test_no_final_crlf),        cmocka_unit_test(test_random_splits),
	    cmocka_unit_test(test_scan_and_body),        cmocka_unit_test(test_scan_damaged),
	    cmocka_unit_test(test_scan_keep_small),      cmocka_unit_test(test_scan_keep_large),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
