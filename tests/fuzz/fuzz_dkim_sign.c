/*
 * fuzz_dkim_sign: random bytes as the header block of a message, signed
 * with an Ed25519 key (fast; RSA takes the same path). Signing must not
 * crash, and its field must be folded: CRLF lines of at most 78 columns,
 * each continuation starting with WSP. The same bytes also go through
 * dkim_sign_field as a caller-written DKIM-Signature field.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. -D_GNU_SOURCE \
 *     tests/fuzz/fuzz_dkim_sign.c dkim/[a-z]*.c common/[a-z]*.c \
 *     $(pkg-config --cflags --libs openssl inih) -o build/fuzz_dkim_sign
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dkim/dkim.h"

static struct dkim_key *key;

static void check_folded(const struct buf *b)
{
	size_t i, col = 0;

	if (b->len < 2 || b->data[b->len - 2] != '\r' || b->data[b->len - 1] != '\n')
		abort();
	for (i = 0; i < b->len; i++) {
		if (b->data[i] == '\r') {
			if (b->data[i + 1] != '\n' || col > 78)
				abort();
			col = 0;
			i++;
			if (i + 1 < b->len && b->data[i + 1] != ' ' && b->data[i + 1] != '\t')
				abort();
			continue;
		}
		if (b->data[i] == '\n')
			abort();
		col++;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned char seed[32] = {1, 2, 3};
	unsigned char bh[32] = {0};
	char err[256];
	struct dkim_sign_params p = {
	    .domain = "example.com",
	    .selector = "sel",
	    .header_canon = DKIM_CANON_RELAXED,
	    .body_canon = DKIM_CANON_RELAXED,
	    .timestamp = 1700000000,
	    .expire = 0,
	    .headers = NULL,
	    .oversign = 1,
	};
	struct buf out;

	if (key == NULL && (key = dkim_key_from_ed25519_seed(seed, err, sizeof(err))) == NULL)
		abort();
	if (size < 1)
		return 0;
	p.header_canon = data[0] & 1 ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
	p.oversign = (data[0] >> 1) & 1;
	p.expire = data[0] & 4 ? p.timestamp + 60 : 0;
	data++;
	size--;

	buf_init(&out, 1 << 20);
	if (dkim_sign(key, &p, (const char *)data, size, bh, &out, err, sizeof(err)) != 0)
		abort(); /* a well-formed request signs whatever the header holds */
	check_folded(&out);
	buf_reset(&out);
	(void)dkim_sign_field(key, "From: a\r\n", 9, (const char *)data, size, &out, err,
			      sizeof(err));
	buf_free(&out);
	return 0;
}
