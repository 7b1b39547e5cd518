/*
 * dkim_private: what the files of dkim/ share with each other and nobody
 * else. Other folders include only dkim/dkim.h.
 */
#ifndef SENDGATE_DKIM_PRIVATE_H
#define SENDGATE_DKIM_PRIVATE_H

#include <stdint.h>

#include <openssl/evp.h>

#include "dkim/dkim.h"

/*
 * A parsed key. The EVP_PKEY is read-only after construction, so worker
 * threads sign with it concurrently, each with its own EVP_PKEY_CTX.
 */
struct dkim_key {
	EVP_PKEY *pkey;
	enum dkim_alg alg;
	int bits;
	uint64_t serial; /* unique per key made in this process (sign.c's thread cache) */
};

/* Writes "OpenSSL says X" style detail after prefix into err; clears the queue. */
void dkim_ssl_error(char *err, size_t errlen, const char *prefix);

#endif
