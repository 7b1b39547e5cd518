/*
 * key: DKIM private keys. Import from PEM or an Ed25519 seed, generation,
 * export as PKCS#8 PEM, and the public half as published in DNS.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "dkim/dkim_private.h"

/* Imported RSA keys: below 1024 is broken, above 8192 only costs CPU. */
#define RSA_IMPORT_MIN 1024
#define RSA_IMPORT_MAX 8192
/* No PEM private key is anywhere near this; refuse before parsing. */
#define PEM_MAX (64 * 1024)

void dkim_ssl_error(char *err, size_t errlen, const char *prefix)
{
	unsigned long e = ERR_peek_last_error();
	char detail[256];

	if (e != 0) {
		ERR_error_string_n(e, detail, sizeof(detail));
		snprintf(err, errlen, "%s (%s)", prefix, detail);
	} else {
		snprintf(err, errlen, "%s", prefix);
	}
	ERR_clear_error();
}

/* Wraps pkey (taking ownership) after checking it is a key DKIM can use. */
static struct dkim_key *key_wrap(EVP_PKEY *pkey, char *err, size_t errlen)
{
	struct dkim_key *k;
	enum dkim_alg alg;
	int bits;

	if (EVP_PKEY_is_a(pkey, "RSA")) {
		alg = DKIM_ALG_RSA_SHA256;
		bits = EVP_PKEY_get_bits(pkey);
		if (bits < RSA_IMPORT_MIN || bits > RSA_IMPORT_MAX) {
			snprintf(err, errlen, "RSA key of %d bits: DKIM needs %d to %d", bits,
				 RSA_IMPORT_MIN, RSA_IMPORT_MAX);
			goto fail;
		}
	} else if (EVP_PKEY_is_a(pkey, "ED25519")) {
		alg = DKIM_ALG_ED25519_SHA256;
		bits = 256;
	} else {
		snprintf(err, errlen, "key type %s is not usable for DKIM (RSA or Ed25519 only)",
			 EVP_PKEY_get0_type_name(pkey) ? EVP_PKEY_get0_type_name(pkey) : "?");
		goto fail;
	}
	k = xcalloc(1, sizeof(*k));
	k->pkey = pkey;
	k->alg = alg;
	k->bits = bits;
	return k;
fail:
	EVP_PKEY_free(pkey);
	return NULL;
}

/* Refuses encrypted PEM instead of prompting on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

/* Parses a PEM private key (PKCS#8 or traditional RSA); caller frees; NULL with err. */
struct dkim_key *dkim_key_from_pem(const char *pem, size_t len, char *err, size_t errlen)
{
	EVP_PKEY *pkey;
	BIO *bio;

	if (len == 0 || len > PEM_MAX) {
		snprintf(err, errlen, "PEM key of %zu bytes: expected 1 to %d", len, PEM_MAX);
		return NULL;
	}
	bio = BIO_new_mem_buf(pem, (int)len);
	if (bio == NULL)
		abort();
	pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
	BIO_free(bio);
	if (pkey == NULL) {
		dkim_ssl_error(err, errlen,
			       "not a PEM private key (PKCS#8 or RSA, without passphrase)");
		return NULL;
	}
	return key_wrap(pkey, err, errlen);
}

/* Builds an Ed25519 key from its RFC 8032 32-byte seed; caller frees; NULL with err. */
struct dkim_key *dkim_key_from_ed25519_seed(const unsigned char seed[32], char *err, size_t errlen)
{
	EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);

	if (pkey == NULL) {
		dkim_ssl_error(err, errlen, "cannot build Ed25519 key from seed");
		return NULL;
	}
	return key_wrap(pkey, err, errlen);
}

/*
 * Generates a new key: RSA of bits 2048 (also when bits is 0), 3072 or
 * 4096, or Ed25519 (bits ignored). Caller frees; NULL with err.
 */
struct dkim_key *dkim_key_generate(enum dkim_alg alg, int bits, char *err, size_t errlen)
{
	EVP_PKEY *pkey;

	if (alg == DKIM_ALG_ED25519_SHA256) {
		pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	} else if (alg == DKIM_ALG_RSA_SHA256) {
		if (bits == 0)
			bits = 2048;
		if (bits != 2048 && bits != 3072 && bits != 4096) {
			snprintf(err, errlen,
				 "RSA key size %d refused: new keys are 2048, 3072 or 4096 bits",
				 bits);
			return NULL;
		}
		pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
	} else {
		snprintf(err, errlen, "unknown DKIM algorithm %d", (int)alg);
		return NULL;
	}
	if (pkey == NULL) {
		dkim_ssl_error(err, errlen, "key generation failed");
		return NULL;
	}
	return key_wrap(pkey, err, errlen);
}

enum dkim_alg dkim_key_alg(const struct dkim_key *k)
{
	return k->alg;
}

/* The RSA modulus size, or 256 for Ed25519. */
int dkim_key_bits(const struct dkim_key *k)
{
	return k->bits;
}

/* Appends what a memory BIO holds to out; frees the BIO. 0 or -1. */
static int bio_drain(BIO *bio, struct buf *out)
{
	char *p;
	long n = BIO_get_mem_data(bio, &p);
	int rc = (n >= 0 && buf_append(out, p, (size_t)n) == 0) ? 0 : -1;

	BIO_free(bio);
	return rc;
}

/* Appends the unencrypted PKCS#8 PEM of the private key to out. 0 or -1. */
int dkim_key_private_pem(const struct dkim_key *k, struct buf *out)
{
	BIO *bio = BIO_new(BIO_s_mem());

	if (bio == NULL)
		abort();
	if (PEM_write_bio_PrivateKey(bio, k->pkey, NULL, NULL, 0, NULL, NULL) != 1) {
		BIO_free(bio);
		ERR_clear_error();
		return -1;
	}
	return bio_drain(bio, out);
}

/* Appends base64 of n bytes to out. 0 or -1. */
static int append_b64(struct buf *out, const unsigned char *p, size_t n)
{
	char *text = xmalloc(4 * ((n + 2) / 3) + 1);
	size_t len = base64_encode(p, n, text);
	int rc = buf_append(out, text, len);

	free(text);
	return rc;
}

/*
 * Appends the p= value to out: base64 of the DER SubjectPublicKeyInfo for
 * RSA, of the raw 32-byte public key for Ed25519 (RFC 8463). 0 or -1.
 */
int dkim_key_public_b64(const struct dkim_key *k, struct buf *out)
{
	unsigned char raw[32], *der = NULL;
	size_t rawlen = sizeof(raw);
	int n, rc;

	if (k->alg == DKIM_ALG_ED25519_SHA256) {
		if (EVP_PKEY_get_raw_public_key(k->pkey, raw, &rawlen) != 1 || rawlen != 32) {
			ERR_clear_error();
			return -1;
		}
		return append_b64(out, raw, rawlen);
	}
	n = i2d_PUBKEY(k->pkey, &der);
	if (n <= 0) {
		ERR_clear_error();
		return -1;
	}
	rc = append_b64(out, der, (size_t)n);
	OPENSSL_free(der);
	return rc;
}

/* Appends the whole TXT value "v=DKIM1; k=rsa; p=..." (or k=ed25519). 0 or -1. */
int dkim_key_dns_record(const struct dkim_key *k, struct buf *out)
{
	const char *kind = k->alg == DKIM_ALG_ED25519_SHA256 ? "ed25519" : "rsa";

	if (buf_printf(out, "v=DKIM1; k=%s; p=", kind) == -1)
		return -1;
	return dkim_key_public_b64(k, out);
}

void dkim_key_free(struct dkim_key *k)
{
	int i;

	if (k == NULL)
		return;
	for (i = 0; i < DKIM_CTX_THREADS; i++)
		EVP_PKEY_CTX_free(k->tctx[i]);
	EVP_PKEY_free(k->pkey);
	free(k);
}
