/*
 * sign: "sendgate-bench sign" measures DKIM signatures per second with the
 * same dkim/ code the daemon runs on its signer threads.
 *
 *   sendgate-bench sign [--alg rsa|ed25519] [--bits N] [-t THREADS] [-n COUNT] [-k KEYS]
 *
 * With -k the signatures go to KEYS keys in turn, as a signer thread's do
 * when many tenants send at once.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/common.h"
#include "dkim/dkim.h"

struct sign_arg {
	struct dkim_key *const *keys;
	int nkeys;
	const char *hdr;
	size_t hlen;
	unsigned char bh[32];
	long count;
	int failed;
};

static void *sign_worker(void *p)
{
	struct sign_arg *a = p;
	struct dkim_sign_params sp;
	struct buf out;
	char err[256];
	long i;

	memset(&sp, 0, sizeof(sp));
	sp.domain = "bench.example";
	sp.selector = "sg1";
	sp.header_canon = DKIM_CANON_RELAXED;
	sp.body_canon = DKIM_CANON_RELAXED;
	sp.timestamp = time(NULL);
	sp.oversign = 1;
	buf_init(&out, 1 << 16);
	dkim_sign_thread_cache(1); /* as the daemon's signer threads do */
	for (i = 0; i < a->count; i++) {
		buf_reset(&out);
		if (dkim_sign(a->keys[i % a->nkeys], &sp, a->hdr, a->hlen, a->bh, &out, err, sizeof(err)) == -1) {
			fprintf(stderr, "sendgate-bench: sign: %s\n", err);
			a->failed = 1;
			break;
		}
	}
	buf_free(&out);
	dkim_sign_thread_cache(0);
	return NULL;
}

int sign_bench(int argc, char **argv)
{
	static const char hdr[] =
	    "From: Bench <bench@bench.example>\r\nTo: someone@example.net\r\n"
	    "Subject: a benchmark message of about five kilobytes\r\n"
	    "Date: Sun, 22 Nov 2026 12:00:00 +0000\r\nMessage-ID: <bench@bench.example>\r\n"
	    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";
	enum dkim_alg alg = DKIM_ALG_RSA_SHA256;
	int bits = 2048, threads = 1, nkeys = 1, i;
	long count = 2000;
	struct dkim_body *b;
	struct dkim_key **keys;
	struct sign_arg *args;
	pthread_t *tids;
	char err[256], line[80];
	uint64_t t0, t1;
	double secs;

	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--alg") && i + 1 < argc) {
			i++;
			alg = !strcmp(argv[i], "ed25519") ? DKIM_ALG_ED25519_SHA256 : DKIM_ALG_RSA_SHA256;
		} else if (!strcmp(argv[i], "--bits") && i + 1 < argc) {
			bits = (int)strtol(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
			threads = (int)strtol(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
			count = strtol(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "-k") && i + 1 < argc) {
			nkeys = (int)strtol(argv[++i], NULL, 10);
		} else {
			fprintf(stderr, "usage: sendgate-bench sign [--alg rsa|ed25519] [--bits N] "
					"[-t THREADS] [-n COUNT] [-k KEYS]\n");
			return 2;
		}
	}
	if (threads < 1 || threads > 64 || count < 1 || nkeys < 1 || nkeys > 1000) {
		fprintf(stderr, "sendgate-bench: sign: -t takes 1..64, -k 1..1000 and -n a "
				"positive count\n");
		return 2;
	}
	keys = xcalloc((size_t)nkeys, sizeof(*keys));
	for (i = 0; i < nkeys; i++) {
		keys[i] = dkim_key_generate(alg, alg == DKIM_ALG_RSA_SHA256 ? bits : 0, err,
					    sizeof(err));
		if (keys[i] == NULL) {
			fprintf(stderr, "sendgate-bench: sign: %s\n", err);
			return 2;
		}
	}
	args = xcalloc((size_t)threads, sizeof(*args));
	tids = xcalloc((size_t)threads, sizeof(*tids));
	b = dkim_body_new(DKIM_CANON_RELAXED);
	memset(line, 'x', sizeof(line) - 2);
	line[sizeof(line) - 2] = '\r';
	line[sizeof(line) - 1] = '\n';
	for (i = 0; i < 64; i++)
		dkim_body_update(b, line, sizeof(line));
	dkim_body_final(b, args[0].bh);
	dkim_body_free(b);
	t0 = now_usec();
	for (i = 0; i < threads; i++) {
		args[i].keys = keys;
		args[i].nkeys = nkeys;
		args[i].hdr = hdr;
		args[i].hlen = sizeof(hdr) - 1;
		memcpy(args[i].bh, args[0].bh, 32);
		args[i].count = count / threads + (i < count % threads);
		pthread_create(&tids[i], NULL, sign_worker, &args[i]);
	}
	for (i = 0; i < threads; i++)
		pthread_join(tids[i], NULL);
	t1 = now_usec();
	secs = (double)(t1 - t0) / 1e6;
	printf("algorithm=%s bits=%d threads=%d keys=%d signatures=%ld seconds=%.3f "
	       "signatures_per_s=%.0f us_per_signature=%.1f\n",
	       alg == DKIM_ALG_RSA_SHA256 ? "rsa-sha256" : "ed25519-sha256",
	       alg == DKIM_ALG_RSA_SHA256 ? bits : 256, threads, nkeys, count, secs,
	       (double)count / secs,
	       secs * 1e6 * threads / (double)count);
	for (i = 0; i < threads; i++)
		if (args[i].failed)
			return 1;
	for (i = 0; i < nkeys; i++)
		dkim_key_free(keys[i]);
	free(keys);
	free(args);
	free(tids);
	return 0;
}
