/*
 * fuzz_dkim_canon: random bytes through the body hash, fed in random
 * chunks, and through dkim_canon_header. The chunked hash must equal the
 * one-shot hash; header canonicalization must end in CRLF, and a relaxed
 * value must hold no HT, no SP run, and no SP around the colon or at the end.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. -D_GNU_SOURCE \
 *     tests/fuzz/fuzz_dkim_canon.c dkim/[a-z]*.c common/[a-z]*.c \
 *     $(pkg-config --cflags --libs openssl inih) -o build/fuzz_dkim_canon
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dkim/dkim.h"

static void hash(enum dkim_canon canon, const uint8_t *p, size_t n, unsigned seed,
		 unsigned char out[32])
{
	struct dkim_body *b = dkim_body_new(canon);
	size_t pos = 0;

	while (pos < n) {
		size_t take = n - pos;

		if (seed != 0) {
			seed = seed * 1103515245u + 12345u;
			take = (seed >> 16) % 9; /* 0..8, empty chunks included */
			if (take > n - pos)
				take = n - pos;
		}
		dkim_body_update(b, p + pos, take);
		pos += take;
	}
	dkim_body_final(b, out);
	dkim_body_free(b);
}

static void check_header(enum dkim_canon canon, const uint8_t *p, size_t n)
{
	struct buf out;
	size_t i;

	buf_init(&out, n + 16);
	if (dkim_canon_header(canon, (const char *)p, n, &out) == 0) {
		if (out.len < 3 || out.data[out.len - 2] != '\r' || out.data[out.len - 1] != '\n')
			abort();
		if (canon == DKIM_CANON_RELAXED) {
			const char *colon = memchr(out.data, ':', out.len);

			if (colon == NULL)
				abort();
			/* The value (after the name's colon) has single SPs, no HT. */
			for (i = (size_t)(colon - out.data) + 1; i < out.len - 2; i++)
				if (out.data[i] == '\t' ||
				    (out.data[i] == ' ' && out.data[i + 1] == ' '))
					abort();
			if (colon > out.data && colon[-1] == ' ')
				abort();
			if (colon[1] == ' ')
				abort();
			if (out.len >= 3 && out.data[out.len - 3] == ' ')
				abort();
		}
	}
	buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned char whole[32], chunked[32];
	enum dkim_canon canon;
	unsigned seed;

	if (size < 2)
		return 0;
	canon = data[0] & 1 ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
	seed = (unsigned)data[1] | 1u;
	data += 2;
	size -= 2;

	hash(canon, data, size, 0, whole);
	hash(canon, data, size, seed, chunked);
	if (memcmp(whole, chunked, 32) != 0)
		abort();
	check_header(DKIM_CANON_SIMPLE, data, size);
	check_header(DKIM_CANON_RELAXED, data, size);
	return 0;
}
