/*
 * The per-thread RSA context cache of dkim_sign (dkim_sign_thread_cache):
 * RSASSA-PKCS1-v1_5 is deterministic, so with the cache on every signature
 * must be byte for byte the one made without it, whichever keys come and
 * go in between.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dkim/dkim.h"

static const char hdr[] = "From: a@example.org\r\nTo: b@example.net\r\nSubject: cache\r\n\r\n";

static void sign(struct dkim_key *k, int cached, struct buf *out)
{
	struct dkim_sign_params p;
	unsigned char bh[32];
	char err[256];

	memset(bh, 0x5a, sizeof(bh));
	memset(&p, 0, sizeof(p));
	p.domain = "example.org";
	p.selector = "sg1";
	p.header_canon = DKIM_CANON_RELAXED;
	p.body_canon = DKIM_CANON_RELAXED;
	p.timestamp = 1790000000;
	p.oversign = 1;
	buf_reset(out);
	dkim_sign_thread_cache(cached);
	if (dkim_sign(k, &p, hdr, strlen(hdr), bh, out, err, sizeof(err)) == -1)
		fail_msg("dkim_sign: %s", err);
}

static struct dkim_key *rsa_key(void)
{
	char err[256];
	struct dkim_key *k = dkim_key_generate(DKIM_ALG_RSA_SHA256, 2048, err, sizeof(err));

	if (k == NULL)
		fail_msg("dkim_key_generate: %s", err);
	return k;
}

static void expect_same(struct dkim_key *k, struct buf *plain, struct buf *cached)
{
	sign(k, 0, plain);
	sign(k, 1, cached);
	assert_int_equal(plain->len, cached->len);
	assert_memory_equal(plain->data, cached->data, plain->len);
}

static void test_cached_signatures_match(void **state)
{
	struct dkim_key *keys[6];
	struct buf a, b;
	int i, round;

	(void)state;
	buf_init(&a, 1 << 16);
	buf_init(&b, 1 << 16);
	for (i = 0; i < 6; i++)
		keys[i] = rsa_key();
	/* More keys than the cache has slots, in turn, twice: hits and evictions. */
	for (round = 0; round < 2; round++)
		for (i = 0; i < 6; i++)
			expect_same(keys[i], &a, &b);
	/* A key freed and another made (perhaps at the same address). */
	dkim_key_free(keys[0]);
	keys[0] = rsa_key();
	expect_same(keys[0], &a, &b);
	sign(keys[1], 1, &a);
	sign(keys[0], 1, &b);
	assert_true(a.len != b.len || memcmp(a.data, b.data, a.len) != 0);
	dkim_sign_thread_cache(0);
	for (i = 0; i < 6; i++)
		dkim_key_free(keys[i]);
	buf_free(&a);
	buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_cached_signatures_match),
	};

	log_init("test_dkim_cache", 0, SGLOG_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
