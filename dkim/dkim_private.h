/*
 * dkim_private: what the files of dkim/ share with each other and nobody
 * else. Other folders include only dkim/dkim.h.
 */
#ifndef SENDGATE_DKIM_PRIVATE_H
#define SENDGATE_DKIM_PRIVATE_H

#include <stdint.h>

#include <openssl/evp.h>

#include "dkim/dkim.h"

/* Signing threads that can keep RSA contexts on a key (sign.c). */
#define DKIM_CTX_THREADS 16

/*
 * A parsed key. The EVP_PKEY is read-only after construction, so worker
 * threads sign with it concurrently, each with its own EVP_PKEY_CTX:
 * made per signature, or kept in tctx[] at the index the signing thread
 * holds (dkim_sign_thread_cache), which only that thread touches.
 */
struct dkim_key {
	EVP_PKEY *pkey;
	enum dkim_alg alg;
	int bits;
	EVP_PKEY_CTX *tctx[DKIM_CTX_THREADS];
};

/* Writes "OpenSSL says X" style detail after prefix into err; clears the queue. */
void dkim_ssl_error(char *err, size_t errlen, const char *prefix);

#endif
