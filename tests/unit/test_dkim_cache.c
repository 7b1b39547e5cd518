/*
 * The per-thread RSA context cache of dkim_sign (dkim_sign_thread_cache):
 * RSASSA-PKCS1-v1_5 is deterministic, so with the cache on every signature
 * must be byte for byte the one made without it, whichever keys come and
 * go in between; and a context, once made, stays on its key for the
 * thread, however many keys it signs with.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dkim/dkim_private.h"

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

/* The context this thread keeps on k, or NULL (one index is in use). */
static EVP_PKEY_CTX *kept(const struct dkim_key *k)
{
	EVP_PKEY_CTX *c = NULL;
	int i;

	for (i = 0; i < DKIM_CTX_THREADS; i++)
		if (k->tctx[i] != NULL) {
			assert_null(c);
			c = k->tctx[i];
		}
	return c;
}

static void test_cached_signatures_match(void **state)
{
	struct dkim_key *keys[6];
	EVP_PKEY_CTX *ctx[6];
	struct buf a, b;
	int i;

	(void)state;
	buf_init(&a, 1 << 16);
	buf_init(&b, 1 << 16);
	for (i = 0; i < 6; i++)
		keys[i] = rsa_key();
	/* Without the cache nothing is kept on the key. */
	sign(keys[0], 0, &a);
	assert_null(kept(keys[0]));
	/* Many keys in turn: each keeps its context, and signs as without. */
	for (i = 0; i < 6; i++) {
		expect_same(keys[i], &a, &b);
		ctx[i] = kept(keys[i]);
		assert_non_null(ctx[i]);
	}
	/* Second round: the same contexts are used, none rebuilt or evicted. */
	for (i = 0; i < 6; i++) {
		expect_same(keys[i], &a, &b);
		assert_ptr_equal(kept(keys[i]), ctx[i]);
	}
	/* A key freed (its contexts with it) and another made, perhaps at the
	 * same address: it starts with nothing kept and signs as itself. */
	dkim_key_free(keys[0]);
	keys[0] = rsa_key();
	assert_null(kept(keys[0]));
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

struct other {
	struct dkim_key *k;
	struct buf out;
};

static void *other_thread(void *p)
{
	struct other *o = p;

	buf_init(&o->out, 1 << 16);
	sign(o->k, 1, &o->out);
	dkim_sign_thread_cache(0);
	return NULL;
}

/* Two threads signing with one key each keep their own context on it. */
static void test_threads_keep_their_own(void **state)
{
	struct dkim_key *k = rsa_key();
	struct other o = {k, {0}};
	struct buf mine;
	pthread_t t;
	int i, n = 0;

	(void)state;
	buf_init(&mine, 1 << 16);
	sign(k, 1, &mine);
	assert_int_equal(pthread_create(&t, NULL, other_thread, &o), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	for (i = 0; i < DKIM_CTX_THREADS; i++)
		n += k->tctx[i] != NULL;
	assert_int_equal(n, 2);
	assert_int_equal(o.out.len, mine.len);
	assert_memory_equal(o.out.data, mine.data, mine.len);
	dkim_sign_thread_cache(0);
	dkim_key_free(k);
	buf_free(&mine);
	buf_free(&o.out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_cached_signatures_match),
	    cmocka_unit_test(test_threads_keep_their_own),
	};

	log_init("test_dkim_cache", 0, SGLOG_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
