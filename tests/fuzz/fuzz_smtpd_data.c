/*
 * Fuzzes the DATA reader. Checks, for every input: the end is found exactly
 * at the first CRLF "." CRLF (or "." CRLF at the very start), feeding the
 * input whole, byte by byte or cut in two gives the same result, and
 * nothing is output after the first error.
 *
 * Input layout: byte 0 picks the cut, byte 1 the limits, the rest is the
 * DATA stream.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtpd/smtpd.h"

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "check failed: %s (line %d)\n", #c, __LINE__);             \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct run {
	size_t consumed;
	int done, eight_bit;
	enum data_err error;
	size_t size;
	struct buf hdr, body;
};

static size_t bufmax = 1 << 20;

static void feed(const char *in, size_t n, size_t cut, int bytewise, const size_t lim[3],
                 struct run *r)
{
	struct data_reader dr;
	size_t pos = 0;

	memset(r, 0, sizeof(*r));
	buf_init(&r->hdr, bufmax);
	buf_init(&r->body, bufmax);
	data_reader_init(&dr, lim[0], lim[1], lim[2]);
	while (pos < n && !dr.done) {
		size_t chunk = bytewise ? 1 : (pos < cut ? cut - pos : n - pos);
		ssize_t got = data_reader_feed(&dr, in + pos, chunk, &r->hdr, &r->body);
		CHECK(got >= 0); /* a full buffer is an error, never -1 */
		CHECK((size_t)got == chunk || dr.done);
		pos += (size_t)got;
		if (dr.done)
			break;
	}
	r->consumed = pos;
	r->done = dr.done;
	r->error = dr.error;
	r->size = dr.size;
	r->eight_bit = dr.eight_bit;
}

static void same(const struct run *a, const struct run *b)
{
	CHECK(a->consumed == b->consumed);
	CHECK(a->done == b->done);
	CHECK(a->error == b->error);
	CHECK(a->size == b->size);
	CHECK(a->eight_bit == b->eight_bit);
	CHECK(a->hdr.len == b->hdr.len &&
	      (a->hdr.len == 0 || !memcmp(a->hdr.data, b->hdr.data, a->hdr.len)));
	CHECK(a->body.len == b->body.len &&
	      (a->body.len == 0 || !memcmp(a->body.data, b->body.data, a->body.len)));
}

static void done_run(struct run *r)
{
	buf_free(&r->hdr);
	buf_free(&r->body);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	static const size_t limits[4][3] = {
	    {0, 0, 0}, {1000, 1 << 20, 64 << 10}, {12, 200, 40}, {3, 30, 5}};
	const char *in;
	size_t n, cut, end, i;
	int found = 0;
	struct run whole, split, bytes;
	const size_t *lim;

	if (size < 2)
		return 0;
	in = (const char *)data + 2;
	n = size - 2;
	cut = n ? data[0] % (n + 1) : 0;
	lim = limits[data[1] % 4];

	/* where the end must be */
	end = n;
	if (n >= 3 && memcmp(in, ".\r\n", 3) == 0) {
		found = 1;
		end = 3;
	} else {
		for (i = 0; i + 5 <= n; i++)
			if (memcmp(in + i, "\r\n.\r\n", 5) == 0) {
				found = 1;
				end = i + 5;
				break;
			}
	}

	feed(in, n, cut, 0, lim, &split);
	feed(in, n, n, 0, lim, &whole);
	CHECK(whole.done == found);
	CHECK(whole.consumed == end);
	CHECK(whole.size <= end);
	if (whole.error == DATA_OK && whole.done && lim[1] == 0)
		CHECK(whole.hdr.len + whole.body.len >= whole.size); /* + an inserted blank line */
	if (whole.error == DATA_OK && whole.done)
		CHECK(whole.hdr.len + whole.body.len <= whole.size + 2);
	if (lim[2])
		CHECK(whole.hdr.len <= lim[2]);
	same(&whole, &split);
	if (n <= 4096) {
		feed(in, n, 0, 1, lim, &bytes);
		same(&whole, &bytes);
		done_run(&bytes);
	}
	/* output buffers that fill up: an error, but the end is still found */
	done_run(&split);
	bufmax = 7;
	feed(in, n, cut, 0, lim, &split);
	bufmax = 1 << 20;
	CHECK(split.consumed == whole.consumed && split.done == whole.done);
	CHECK(split.size == whole.size);
	if (whole.hdr.len > 7 || whole.body.len > 7)
		CHECK(split.error != DATA_OK);
	if (split.error == DATA_OK)
		same(&whole, &split);
	if (whole.error != DATA_OK)
		CHECK(split.error != DATA_OK);
	done_run(&whole);
	done_run(&split);
	return 0;
}
