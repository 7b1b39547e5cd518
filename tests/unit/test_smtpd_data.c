/* Unit tests for the DATA reader (smtpd/data.c): end detection, smuggling, limits, split. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtpd/smtpd.h"

#define BUFMAX (16 * 1024 * 1024)

struct result {
	size_t consumed;
	int done;
	enum data_err error;
	size_t size;
	int eight_bit;
	struct buf hdr;
	struct buf body;
};

struct limits {
	size_t line, size, header;
};

static const struct limits nolimits = {0, 0, 0};
static const struct limits rfc = {1000, 10 * 1024 * 1024, 64 * 1024};

static void result_free(struct result *r)
{
	buf_free(&r->hdr);
	buf_free(&r->body);
}

/*
 * Feeds in[0..n) in chunks that end at cuts[0..ncuts) (increasing), then
 * the rest; stops feeding once the reader is done.
 */
static void feed_cuts(const char *in, size_t n, const size_t *cuts, int ncuts,
                      const struct limits *lim, struct result *r)
{
	struct data_reader dr;
	size_t start = 0;
	int i;

	memset(r, 0, sizeof(*r));
	buf_init(&r->hdr, BUFMAX);
	buf_init(&r->body, BUFMAX);
	data_reader_init(&dr, lim->line, lim->size, lim->header);
	for (i = 0; i <= ncuts && !dr.done; i++) {
		size_t stop = i < ncuts ? cuts[i] : n;
		ssize_t got = data_reader_feed(&dr, in + start, stop - start, &r->hdr, &r->body);
		assert_true(got >= 0);
		assert_true((size_t)got <= stop - start);
		if (!dr.done)
			assert_int_equal((size_t)got, stop - start);
		r->consumed += (size_t)got;
		start = stop;
	}
	/* once done, the reader takes nothing more */
	if (dr.done && r->consumed < n)
		assert_int_equal(
		    data_reader_feed(&dr, in + r->consumed, n - r->consumed, &r->hdr, &r->body), 0);
	r->done = dr.done;
	r->error = dr.error;
	r->size = dr.size;
	r->eight_bit = dr.eight_bit;
}

static void feed_whole(const char *in, size_t n, const struct limits *lim, struct result *r)
{
	feed_cuts(in, n, NULL, 0, lim, r);
}

static void feed_bytewise(const char *in, size_t n, const struct limits *lim, struct result *r)
{
	size_t *cuts = malloc(n * sizeof(*cuts) + 1);
	size_t i;

	for (i = 0; i < n; i++)
		cuts[i] = i;
	feed_cuts(in, n, cuts, (int)n, lim, r);
	free(cuts);
}

static void assert_same(const struct result *a, const struct result *b)
{
	assert_int_equal(a->consumed, b->consumed);
	assert_int_equal(a->done, b->done);
	assert_int_equal(a->error, b->error);
	assert_int_equal(a->size, b->size);
	assert_int_equal(a->eight_bit, b->eight_bit);
	assert_int_equal(a->hdr.len, b->hdr.len);
	assert_int_equal(a->body.len, b->body.len);
	if (a->hdr.len)
		assert_memory_equal(a->hdr.data, b->hdr.data, a->hdr.len);
	if (a->body.len)
		assert_memory_equal(a->body.data, b->body.data, a->body.len);
}

/*
 * Checks that every way of cutting in into two and three chunks (and
 * byte by byte) gives exactly the result of feeding it whole.
 */
static void assert_split_invariant(const char *in, size_t n, const struct limits *lim,
                                   const struct result *whole)
{
	struct result r;
	size_t cuts[2];

	feed_bytewise(in, n, lim, &r);
	assert_same(whole, &r);
	result_free(&r);
	for (cuts[0] = 0; cuts[0] <= n; cuts[0]++) {
		feed_cuts(in, n, cuts, 1, lim, &r);
		assert_same(whole, &r);
		result_free(&r);
		for (cuts[1] = cuts[0]; cuts[1] <= n; cuts[1]++) {
			feed_cuts(in, n, cuts, 2, lim, &r);
			assert_same(whole, &r);
			result_free(&r);
		}
	}
}

static void assert_buf(const struct buf *b, const char *want, size_t wantlen)
{
	assert_int_equal(b->len, wantlen);
	if (wantlen)
		assert_memory_equal(b->data, want, wantlen);
}
#define ASSERT_BUF(b, lit) assert_buf((b), (lit), sizeof(lit) - 1)

/* ---- smuggling ---------------------------------------------------------- */

struct smuggle {
	const char *name;
	const char *seq;
	size_t len;
	enum data_err want;
};
#define SM(name, lit, err)                                                                         \
	{                                                                                          \
		name, lit, sizeof(lit) - 1, err                                                    \
	}

static const struct smuggle smuggles[] = {
    SM("LF.CRLF", "\n.\r\n", DATA_BARE_LF),
    SM("LF.LF", "\n.\n", DATA_BARE_LF),
    SM("CRLF.LF", "\r\n.\n", DATA_BARE_LF),
    SM("CR.CRLF", "\r.\r\n", DATA_BARE_CR),
    SM("CRLF.CR", "\r\n.\r", DATA_BARE_CR),
    SM("CRLF NUL.CRLF", "\r\n\x00.\r\n", DATA_NUL),
    SM("CR.LF", "\r.\n", DATA_BARE_CR),
    SM("LF.CR", "\n.\r", DATA_BARE_LF),
    SM("CR.CR", "\r.\r", DATA_BARE_CR),
    SM("CRLF.CRCRLF", "\r\n.\r\r\n", DATA_BARE_CR),
    SM("CRCR.CRLF", "\r\r.\r\n", DATA_BARE_CR),
    SM("LFLF.CRLF", "\n\n.\r\n", DATA_BARE_LF),
    SM("CRLF NUL CRLF.LF", "\r\n\x00\r\n.\n", DATA_NUL),
    SM("CRLF.NUL CRLF", "\r\n.\x00\r\n", DATA_NUL),
    SM("LFLF.LF", "\n\n.\n", DATA_BARE_LF),
    SM("CRLF.LFCRLF", "\r\n.\n\r\n", DATA_BARE_LF),
    SM("LFCR.CRLF", "\n\r.\r\n", DATA_BARE_LF),
};

static const char smuggle_head[] = "From: a@example.com\r\nSubject: t\r\n\r\nhello";
static const char smuggle_tail[] = "MAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\nDATA\r\n"
                                   "From: x@y\r\n\r\nevil\r\n.\r\n";
static const char after_end[] = "QUIT\r\n";

static void test_smuggling_variants(void **state)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(smuggles); i++) {
		const struct smuggle *sm = &smuggles[i];
		char in[512];
		size_t n = 0, msglen;
		struct result whole;

		memcpy(in + n, smuggle_head, sizeof(smuggle_head) - 1);
		n += sizeof(smuggle_head) - 1;
		memcpy(in + n, sm->seq, sm->len);
		n += sm->len;
		memcpy(in + n, smuggle_tail, sizeof(smuggle_tail) - 1);
		n += sizeof(smuggle_tail) - 1;
		msglen = n;
		memcpy(in + n, after_end, sizeof(after_end) - 1);
		n += sizeof(after_end) - 1;

		print_message("variant %s\n", sm->name);
		feed_whole(in, n, &rfc, &whole);
		assert_true(whole.done);
		/* it ends only at the true CRLF.CRLF; what follows stays unconsumed */
		assert_int_equal(whole.consumed, msglen);
		assert_int_equal(whole.error, sm->want);
		/* the size covers the swallowed transaction too (all but ".\r\n") */
		assert_true(whole.size >= msglen - 3 - 2);
		assert_split_invariant(in, n, &rfc, &whole);
		result_free(&whole);
	}
}

/* Content that only looks like an end is content, not an error. */
static void test_lookalikes_are_content(void **state)
{
	static const char in[] = "Subject: t\r\n\r\na\r\n .\r\n..\r\nx.\r\n.. \r\nb\r\n.\r\nNEXT";
	struct result r;

	feed_whole(in, sizeof(in) - 1, &rfc, &r);
	assert_true(r.done);
	assert_int_equal(r.error, DATA_OK);
	assert_int_equal(r.consumed, sizeof(in) - 1 - 4);
	ASSERT_BUF(&r.hdr, "Subject: t\r\n\r\n");
	ASSERT_BUF(&r.body, "a\r\n .\r\n.\r\nx.\r\n. \r\nb\r\n");
	assert_split_invariant(in, sizeof(in) - 1, &rfc, &r);
	result_free(&r);
}

/* The reader stops right after the end line: pipelined commands are left. */
static void test_pipelined_after_end(void **state)
{
	static const char in[] = "Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@b>\r\n";
	struct result r;

	feed_whole(in, sizeof(in) - 1, &rfc, &r);
	assert_true(r.done);
	assert_int_equal(r.error, DATA_OK);
	assert_memory_equal(in + r.consumed, "MAIL FROM:<a@b>\r\n", 17);
	assert_split_invariant(in, sizeof(in) - 1, &rfc, &r);
	result_free(&r);
}

/* An input that never reaches CRLF.CRLF is all consumed and not done. */
static void test_not_done_without_end(void **state)
{
	static const char in[] = "Subject: x\r\n\r\nbody\r\n.\n\r\n.\r";
	struct result r;

	feed_whole(in, sizeof(in) - 1, &rfc, &r);
	assert_false(r.done);
	assert_int_equal(r.consumed, sizeof(in) - 1);
	assert_int_equal(r.error, DATA_BARE_LF);
	result_free(&r);
}

/*
 * An error does not hide the real end: a bare CR right before CRLF.CRLF
 * is an error, and the message still ends at that CRLF.CRLF.
 */
static void test_true_end_after_error(void **state)
{
	static const char in[] = "Subject: x\r\n\r\nhello\r\r\n.\r\nMAIL FROM:<a@b>\r\n";
	struct result r;

	feed_whole(in, sizeof(in) - 1, &rfc, &r);
	assert_true(r.done);
	assert_int_equal(r.error, DATA_BARE_CR);
	assert_string_equal(in + r.consumed, "MAIL FROM:<a@b>\r\n");
	assert_split_invariant(in, sizeof(in) - 1, &rfc, &r);
	result_free(&r);
}

/* ---- dot-stuffing --------------------------------------------------------- */

static void test_dot_unstuffing(void **state)
{
	static const struct {
		const char *in, *body;
	} cases[] = {
	    {"..\r\n.\r\n", ".\r\n"},
	    {"...x\r\n.\r\n", "..x\r\n"},
	    {".x\r\n.\r\n", "x\r\n"},
	    {"a\r\n.b\r\n..\r\n.\r\n", "a\r\nb\r\n.\r\n"},
	    {"a.\r\n .\r\n.\r\n", "a.\r\n .\r\n"},
	};
	size_t i;

	for (i = 0; i < ARRAY_LEN(cases); i++) {
		struct result r;
		size_t n = strlen(cases[i].in);
		feed_whole(cases[i].in, n, &rfc, &r);
		assert_true(r.done);
		assert_int_equal(r.consumed, n);
		assert_int_equal(r.error, DATA_OK);
		assert_int_equal(r.hdr.len, 0);
		assert_buf(&r.body, cases[i].body, strlen(cases[i].body));
		assert_int_equal(r.size, strlen(cases[i].body));
		assert_split_invariant(cases[i].in, n, &rfc, &r);
		result_free(&r);
	}
}

/* ---- limits ----------------------------------------------------------- */

static char *make_line_message(size_t content, char first)
{
	char *m = malloc(content + 16);
	memset(m, 'a', content);
	m[0] = first;
	memcpy(m + content, "\r\n.\r\n", 6);
	return m;
}

static void test_line_length_limit(void **state)
{
	struct result r;
	char *m;

	/* 998 octets + CRLF = 1000: fine */
	m = make_line_message(998, 'a');
	feed_whole(m, strlen(m), &rfc, &r);
	assert_true(r.done);
	assert_int_equal(r.error, DATA_OK);
	assert_int_equal(r.body.len, 1000);
	result_free(&r);
	feed_bytewise(m, strlen(m), &rfc, &r);
	assert_int_equal(r.error, DATA_OK);
	result_free(&r);
	free(m);

	/* 999 + CRLF = 1001: too long, but reading goes on to the end */
	m = make_line_message(999, 'a');
	feed_whole(m, strlen(m), &rfc, &r);
	assert_true(r.done);
	assert_int_equal(r.consumed, strlen(m));
	assert_int_equal(r.error, DATA_LINE_TOO_LONG);
	assert_int_equal(r.size, 1001);
	result_free(&r);
	feed_bytewise(m, strlen(m), &rfc, &r);
	assert_int_equal(r.error, DATA_LINE_TOO_LONG);
	result_free(&r);
	free(m);

	/* the stuffing dot is not part of the line: "." + 998 octets is fine */
	m = make_line_message(999, '.');
	m[1] = '.';
	feed_whole(m, strlen(m), &rfc, &r);
	assert_int_equal(r.error, DATA_OK);
	assert_int_equal(r.body.len, 1000);
	result_free(&r);
	free(m);

	/* a long line in the header block counts the same */
	{
		static const struct limits small = {20, 0, 0};
		static const char in[] = "Subject: 0123456789\r\n\r\n.\r\n"; /* 21 with CRLF */
		feed_whole(in, sizeof(in) - 1, &small, &r);
		assert_int_equal(r.error, DATA_LINE_TOO_LONG);
		assert_true(r.done);
		result_free(&r);
	}
}

static void test_size_limit_counts_to_end(void **state)
{
	static const struct limits lim = {1000, 100, 0};
	char in[2000];
	size_t n = 0, i;
	struct result r;

	n += (size_t)snprintf(in, sizeof(in), "Subject: big\r\n\r\n");
	for (i = 0; i < 30; i++)
		n += (size_t)snprintf(in + n, sizeof(in) - n, "line %02zu of text\r\n", i);
	memcpy(in + n, ".\r\nRSET\r\n", 9);
	n += 9;

	feed_whole(in, n, &lim, &r);
	assert_true(r.done);
	assert_int_equal(r.error, DATA_TOO_BIG);
	assert_int_equal(r.consumed, n - 6);
	assert_int_equal(r.size, n - 9); /* everything but ".\r\n" and RSET */
	/* output stopped at the limit */
	assert_true(r.hdr.len + r.body.len <= 100);
	assert_split_invariant(in, n, &lim, &r);
	result_free(&r);

	/* exactly at the limit is fine */
	{
		static const char in2[] = "Subject: x\r\n\r\nbody\r\n.\r\n";
		struct limits l2 = {1000, sizeof(in2) - 1 - 3, 0};
		feed_whole(in2, sizeof(in2) - 1, &l2, &r);
		assert_int_equal(r.error, DATA_OK);
		result_free(&r);
		l2.size--;
		feed_whole(in2, sizeof(in2) - 1, &l2, &r);
		assert_int_equal(r.error, DATA_TOO_BIG);
		result_free(&r);
	}
}

static void test_nul(void **state)
{
	static const char in[] = "Subject: x\r\n\r\nab\0cd\r\nmore\r\n.\r\n";
	struct result r;

	feed_whole(in, sizeof(in) - 1, &rfc, &r);
	assert_true(r.done);
	assert_int_equal(r.consumed, sizeof(in) - 1);
	assert_int_equal(r.error, DATA_NUL);
	/* nothing after the error is output */
	ASSERT_BUF(&r.body, "ab");
	assert_int_equal(r.size, sizeof(in) - 1 - 3);
	assert_split_invariant(in, sizeof(in) - 1, &rfc, &r);
	result_free(&r);
}

static void test_bare_cr_lf_in_header(void **state)
{
	static const char lf[] = "Subject: x\nBcc: y\r\n\r\nb\r\n.\r\n";
	static const char cr[] = "Subject: x\rBcc: y\r\n\r\nb\r\n.\r\n";
	struct result r;

	feed_whole(lf, sizeof(lf) - 1, &rfc, &r);
	assert_int_equal(r.error, DATA_BARE_LF);
	assert_int_equal(r.consumed, sizeof(lf) - 1);
	result_free(&r);
	feed_whole(cr, sizeof(cr) - 1, &rfc, &r);
	assert_int_equal(r.error, DATA_BARE_CR);
	assert_int_equal(r.consumed, sizeof(cr) - 1);
	assert_split_invariant(cr, sizeof(cr) - 1, &rfc, &r);
	result_free(&r);
}

static void test_header_limit(void **state)
{
	static const char in[] = "From: a@b.example\r\nSubject: hello\r\n\r\nbody\r\n.\r\n";
	size_t hdrlen = strlen("From: a@b.example\r\nSubject: hello\r\n\r\n");
	struct limits lim = {1000, 0, hdrlen};
	struct result r;

	feed_whole(in, sizeof(in) - 1, &lim, &r);
	assert_int_equal(r.error, DATA_OK);
	assert_int_equal(r.hdr.len, hdrlen);
	result_free(&r);

	lim.header = hdrlen - 1;
	feed_whole(in, sizeof(in) - 1, &lim, &r);
	assert_int_equal(r.error, DATA_HEADER_TOO_BIG);
	assert_true(r.done);
	assert_int_equal(r.consumed, sizeof(in) - 1);
	assert_true(r.hdr.len <= hdrlen - 1);
	assert_split_invariant(in, sizeof(in) - 1, &lim, &r);
	result_free(&r);

	/* a big body does not count against the header limit */
	{
		static const char in2[] =
		    "From: a@b\r\n\r\n0123456789012345678901234567890\r\n.\r\n";
		struct limits l2 = {1000, 0, 20};
		feed_whole(in2, sizeof(in2) - 1, &l2, &r);
		assert_int_equal(r.error, DATA_OK);
		result_free(&r);
	}
}

/*
 * With limits hit, how much is output before the error must not depend on
 * how the input was cut (found by the fuzzer).
 */
static void test_limits_split_invariant(void **state)
{
	static const struct limits lims[] = {{12, 200, 40}, {3, 30, 5}, {20, 45, 25}, {0, 0, 18}};
#define IN(lit)                                                                                    \
	{                                                                                          \
		lit, sizeof(lit) - 1                                                               \
	}
	static const struct {
		const char *s;
		size_t n;
	} inputs[] = {
	    IN(": \x01mosa@b\r\nSubject: "
	       "\xff\xff_`\x00\x00\xe1\x82x\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT"),
	    IN("From: a@b.example\r\nSubject: a longer subject\r\n folded\r\n\r\nbody "
	       "line\r\n.\r\n"),
	    IN("Subject: caf\xc3\xa9 "
	       "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\r\n\r\n\xc3\xa9\xc3\xa9\xc3\xa9\r\n.\r\n"),
	    IN("X-Long-Field-Name-That-Goes-On: v\r\n\r\n.\r\n"),
	    /* the header limit falls inside a line, before its line limit (fuzzer) */
	    IN("From: a@b\r\nS: x:.\r\n x\r\n a@:yyyy\r\n?====oo==oooo/oo/.do1\r\n\r\n.\r\n"),
	};
#undef IN
	size_t i, j;

	for (i = 0; i < ARRAY_LEN(inputs); i++)
		for (j = 0; j < ARRAY_LEN(lims); j++) {
			struct result r;
			feed_whole(inputs[i].s, inputs[i].n, &lims[j], &r);
			assert_true(r.done);
			assert_split_invariant(inputs[i].s, inputs[i].n, &lims[j], &r);
			result_free(&r);
		}
}

/* ---- structure ---------------------------------------------------------- */

static void test_empty_message(void **state)
{
	static const char in[] = ".\r\nQUIT\r\n";
	struct result r;

	feed_whole(in, sizeof(in) - 1, &rfc, &r);
	assert_true(r.done);
	assert_int_equal(r.consumed, 3);
	assert_int_equal(r.error, DATA_OK);
	assert_int_equal(r.size, 0);
	assert_int_equal(r.hdr.len, 0);
	assert_int_equal(r.body.len, 0);
	assert_split_invariant(in, sizeof(in) - 1, &rfc, &r);
	result_free(&r);
}

static void test_split_cases(void **state)
{
	static const struct {
		const char *name, *in, *hdr, *body;
	} cases[] = {
	    {"headers and body", "From: a@b\r\nSubject: s\r\n\r\nhi\r\n.\r\n",
	     "From: a@b\r\nSubject: s\r\n\r\n", "hi\r\n"},
	    {"no body, blank line", "From: a@b\r\n\r\n.\r\n", "From: a@b\r\n\r\n", ""},
	    {"no body, no blank line", "From: a@b\r\nSubject: s\r\n.\r\n",
	     "From: a@b\r\nSubject: s\r\n", ""},
	    {"body without headers", "hello world\r\nsecond: line\r\n.\r\n", "",
	     "hello world\r\nsecond: line\r\n"},
	    {"first line blank", "\r\nFrom: a@b\r\n.\r\n", "", "\r\nFrom: a@b\r\n"},
	    {"first line starts with space", " From: a@b\r\n\r\nx\r\n.\r\n", "",
	     " From: a@b\r\n\r\nx\r\n"},
	    {"first line colon first", ":x\r\n.\r\n", "", ":x\r\n"},
	    {"space before colon is not a field", "From : a@b\r\n.\r\n", "", "From : a@b\r\n"},
	    {"folded fields", "Subject: a\r\n b\r\n\tc\r\nTo: d\r\n\r\nbody\r\n.\r\n",
	     "Subject: a\r\n b\r\n\tc\r\nTo: d\r\n\r\n", "body\r\n"},
	    {"missing blank line is added", "From: a@b\r\nnot a header\r\nx: y\r\n.\r\n",
	     "From: a@b\r\n\r\n", "not a header\r\nx: y\r\n"},
	    {"missing blank line, word only", "From: a@b\r\nword\r\n.\r\n", "From: a@b\r\n\r\n",
	     "word\r\n"},
	    {"stuffed dot in a field name", "..x: y\r\n\r\n.\r\n", ".x: y\r\n\r\n", ""},
	    {"empty field name", "From: a\r\n: y\r\n.\r\n", "From: a\r\n\r\n", ": y\r\n"},
	    {"blank lines in body", "A: b\r\n\r\n\r\n\r\nz\r\n.\r\n", "A: b\r\n\r\n",
	     "\r\n\r\nz\r\n"},
	};
	size_t i;

	for (i = 0; i < ARRAY_LEN(cases); i++) {
		struct result r;
		size_t n = strlen(cases[i].in);
		print_message("case %s\n", cases[i].name);
		feed_whole(cases[i].in, n, &rfc, &r);
		assert_true(r.done);
		assert_int_equal(r.consumed, n);
		assert_int_equal(r.error, DATA_OK);
		assert_buf(&r.hdr, cases[i].hdr, strlen(cases[i].hdr));
		assert_buf(&r.body, cases[i].body, strlen(cases[i].body));
		assert_split_invariant(cases[i].in, n, &rfc, &r);
		result_free(&r);
	}
}

static void test_eight_bit(void **state)
{
	static const char ascii[] = "Subject: x\r\n\r\nplain\r\n.\r\n";
	static const char hi_body[] = "Subject: x\r\n\r\ncaf\xc3\xa9\r\n.\r\n";
	static const char hi_hdr[] = "Subject: caf\xc3\xa9\r\n\r\nx\r\n.\r\n";
	static const char hi_name[] = "Subj\xc3\xa9: x\r\n.\r\n";
	struct result r;

	feed_whole(ascii, sizeof(ascii) - 1, &rfc, &r);
	assert_false(r.eight_bit);
	result_free(&r);
	feed_whole(hi_body, sizeof(hi_body) - 1, &rfc, &r);
	assert_true(r.eight_bit);
	assert_int_equal(r.error, DATA_OK);
	ASSERT_BUF(&r.body, "caf\xc3\xa9\r\n");
	assert_split_invariant(hi_body, sizeof(hi_body) - 1, &rfc, &r);
	result_free(&r);
	feed_whole(hi_hdr, sizeof(hi_hdr) - 1, &rfc, &r);
	assert_true(r.eight_bit);
	ASSERT_BUF(&r.hdr, "Subject: caf\xc3\xa9\r\n\r\n");
	result_free(&r);
	/* a non-ASCII field name is not a field name */
	feed_whole(hi_name, sizeof(hi_name) - 1, &rfc, &r);
	assert_true(r.eight_bit);
	assert_int_equal(r.hdr.len, 0);
	ASSERT_BUF(&r.body, "Subj\xc3\xa9: x\r\n");
	result_free(&r);
}

/*
 * An output buffer that is full is recorded as an error, and the reader
 * still goes on to the real end, so the session never loses its place.
 */
static void test_buffer_full(void **state)
{
	static const char in[] = "Subject: x\r\n\r\n0123456789\r\n.\r\nQUIT\r\n";
	struct data_reader dr;
	struct buf hdr, body;

	buf_init(&hdr, 1024);
	buf_init(&body, 4);
	data_reader_init(&dr, 0, 0, 0);
	assert_int_equal(data_reader_feed(&dr, in, sizeof(in) - 1, &hdr, &body),
	                 sizeof(in) - 1 - 6);
	assert_true(dr.done);
	assert_int_equal(dr.error, DATA_TOO_BIG);
	buf_free(&hdr);
	buf_free(&body);

	buf_init(&hdr, 5);
	buf_init(&body, 1024);
	data_reader_init(&dr, 0, 0, 0);
	assert_int_equal(data_reader_feed(&dr, in, sizeof(in) - 1, &hdr, &body),
	                 sizeof(in) - 1 - 6);
	assert_true(dr.done);
	assert_int_equal(dr.error, DATA_HEADER_TOO_BIG);
	buf_free(&hdr);
	buf_free(&body);

	/* one buffer for both cannot hold the split */
	data_reader_init(&dr, 0, 0, 0);
	assert_int_equal(data_reader_feed(&dr, in, sizeof(in) - 1, &body, &body), -1);

	assert_string_equal(data_err_text(DATA_BARE_LF),
	                    "bare LF (an LF not preceded by CR) in message content");
}

/* ---- randomized, against a slow reference model ------------------------ */

struct ref {
	int done;
	size_t consumed;
	size_t size;
	enum data_err error;
	int eight_bit;
	struct buf hdr, body;
};

static int is_ftext_ref(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

/* Obviously-correct, whole-input version of the reader (no limits). */
static void reference(const unsigned char *in, size_t n, struct ref *r)
{
	unsigned char *msg = malloc(n + 1);
	size_t mlen = 0, i, end = 0, line;
	int found = 0, in_header = 1, first = 1;

	memset(r, 0, sizeof(*r));
	buf_init(&r->hdr, BUFMAX);
	buf_init(&r->body, BUFMAX);
	/* the end: ".\r\n" at the start, or the first "\r\n.\r\n" */
	if (n >= 3 && memcmp(in, ".\r\n", 3) == 0) {
		found = 1;
		end = 0;
	} else {
		for (i = 0; i + 5 <= n; i++)
			if (memcmp(in + i, "\r\n.\r\n", 5) == 0) {
				found = 1;
				end = i + 2;
				break;
			}
	}
	r->done = found;
	r->consumed = found ? end + 3 : n;
	if (!found)
		end = n;
	/* unstuff: a '.' right after the start or after CRLF is dropped */
	for (i = 0; i < end; i++) {
		if (in[i] == '.' && (i == 0 || (i >= 2 && in[i - 1] == '\n' && in[i - 2] == '\r')))
			continue;
		msg[mlen++] = in[i];
	}
	r->size = mlen;
	for (i = 0; i < mlen; i++) {
		if (msg[i] >= 0x80)
			r->eight_bit = 1;
		if (r->error != DATA_OK)
			continue;
		if (msg[i] == 0)
			r->error = DATA_NUL;
		else if (msg[i] == '\n' && (i == 0 || msg[i - 1] != '\r'))
			r->error = DATA_BARE_LF;
		else if (msg[i] == '\r' && i + 1 < mlen && msg[i + 1] != '\n')
			r->error = DATA_BARE_CR;
		else if (msg[i] == '\r' && i + 1 == mlen && found)
			r->error = DATA_BARE_CR; /* cannot happen: the end is CRLF */
	}
	/* incomplete input: the eight-bit flag saw every byte */
	if (!found)
		for (i = 0; i < n; i++)
			if (in[i] >= 0x80)
				r->eight_bit = 1;
	/* split into CRLF lines and classify (only meaningful without errors) */
	if (r->error == DATA_OK && found) {
		for (line = 0; line < mlen;) {
			size_t e = line, k;
			int is_field = 0;
			while (!(msg[e] == '\r' && msg[e + 1] == '\n'))
				e++;
			e += 2;
			if (in_header) {
				if (e - line == 2) {
					buf_append(first ? &r->body : &r->hdr, msg + line, 2);
					in_header = 0;
					first = 0;
					line = e;
					continue;
				}
				if (!first && (msg[line] == ' ' || msg[line] == '\t'))
					is_field = 1;
				for (k = line; k < e && is_ftext_ref(msg[k]); k++)
					;
				if (k > line && msg[k] == ':')
					is_field = 1;
				if (!is_field) {
					if (!first)
						buf_append(&r->hdr, "\r\n", 2);
					in_header = 0;
				}
			}
			buf_append(in_header ? &r->hdr : &r->body, msg + line, e - line);
			first = 0;
			line = e;
		}
	}
	free(msg);
}

static void test_random_against_reference(void **state)
{
	static const unsigned char alphabet[] = {'\r', '\n', '.',  'a', ':',  ' ', '\r', '\n',
	                                         '.',  0,    0x80, 'B', '\t', '.', '\r', '\n'};
	unsigned char in[64];
	unsigned seed = 12345;
	int iter;

	for (iter = 0; iter < 200000; iter++) {
		size_t n, i, cut;
		struct ref ref;
		struct result r;
		int mode;

		seed = seed * 1103515245u + 12345u;
		n = (seed >> 16) % sizeof(in);
		for (i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			in[i] = alphabet[(seed >> 16) % sizeof(alphabet)];
		}
		/* most inputs should be error-free, to exercise the split */
		mode = iter % 3;
		if (mode == 0)
			for (i = 0; i < n; i++)
				if (in[i] == 0 || in[i] == 0x80 ||
				    (in[i] == '\n' && (i == 0 || in[i - 1] != '\r')))
					in[i] = 'a';
		if (mode == 0) {
			for (i = 0; i < n; i++)
				if (in[i] == '\r') {
					if (i + 1 < n)
						in[i + 1] = '\n';
					else
						in[i] = 'a';
				}
		}
		reference(in, n, &ref);
		seed = seed * 1103515245u + 12345u;
		cut = n ? (seed >> 16) % (n + 1) : 0;
		if (iter % 5 == 0)
			feed_bytewise((const char *)in, n, &nolimits, &r);
		else
			feed_cuts((const char *)in, n, &cut, 1, &nolimits, &r);
		assert_int_equal(r.done, ref.done);
		assert_int_equal(r.consumed, ref.consumed);
		if (r.done) {
			assert_int_equal(r.size, ref.size);
			assert_int_equal(r.error, ref.error);
		}
		assert_int_equal(r.eight_bit, ref.eight_bit);
		if (r.done && r.error == DATA_OK) {
			assert_int_equal(r.hdr.len, ref.hdr.len);
			assert_int_equal(r.body.len, ref.body.len);
			if (r.hdr.len)
				assert_memory_equal(r.hdr.data, ref.hdr.data, r.hdr.len);
			if (r.body.len)
				assert_memory_equal(r.body.data, ref.body.data, r.body.len);
		}
		result_free(&r);
		buf_free(&ref.hdr);
		buf_free(&ref.body);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_smuggling_variants),
	    cmocka_unit_test(test_lookalikes_are_content),
	    cmocka_unit_test(test_pipelined_after_end),
	    cmocka_unit_test(test_not_done_without_end),
	    cmocka_unit_test(test_true_end_after_error),
	    cmocka_unit_test(test_dot_unstuffing),
	    cmocka_unit_test(test_line_length_limit),
	    cmocka_unit_test(test_size_limit_counts_to_end),
	    cmocka_unit_test(test_nul),
	    cmocka_unit_test(test_bare_cr_lf_in_header),
	    cmocka_unit_test(test_header_limit),
	    cmocka_unit_test(test_limits_split_invariant),
	    cmocka_unit_test(test_empty_message),
	    cmocka_unit_test(test_split_cases),
	    cmocka_unit_test(test_eight_bit),
	    cmocka_unit_test(test_buffer_full),
	    cmocka_unit_test(test_random_against_reference),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
