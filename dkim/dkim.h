/*
 * dkim: RFC 6376 canonicalization and signing (RSA-SHA256, and
 * Ed25519-SHA256 from RFC 8463), key generation, import, and sealing of
 * private keys at rest. Pure code on OpenSSL 3 EVP: no I/O, no event loop.
 * Callers run dkim_sign for RSA keys on a worker thread.
 */
#ifndef SENDGATE_DKIM_H
#define SENDGATE_DKIM_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/common.h"

enum dkim_canon { DKIM_CANON_SIMPLE, DKIM_CANON_RELAXED };
enum dkim_alg { DKIM_ALG_RSA_SHA256, DKIM_ALG_ED25519_SHA256 };

/* ---- canon.c: canonicalization ---------------------------------------- */

/*
 * Streaming body hash. Feed the body (bytes after the blank line that ends
 * the header block, CRLF line endings, already dot-unstuffed) in chunks of
 * any size; the result is the SHA-256 of the canonical body.
 */
struct dkim_body;
struct dkim_body *dkim_body_new(enum dkim_canon canon);
void dkim_body_update(struct dkim_body *b, const void *p, size_t n);
/* Writes the 32-byte digest; later updates are ignored, a second final aborts. */
void dkim_body_final(struct dkim_body *b, unsigned char out[32]);
void dkim_body_free(struct dkim_body *b);

/*
 * Canonicalizes one header field (name, colon, value incl. folding, with
 * or without its final CRLF) into out, with the final CRLF. 0 or -1.
 */
int dkim_canon_header(enum dkim_canon canon, const char *field, size_t len, struct buf *out);

/* ---- key.c: keys ------------------------------------------------------ */

struct dkim_key;

/*
 * Parses a PEM private key (PKCS#8 or traditional RSA; no passphrase).
 * RSA of 1024 to 8192 bits or Ed25519; policy on imported sizes (e.g.
 * refusing 1024) is the caller's, with dkim_key_bits. Caller frees with
 * dkim_key_free; NULL with err.
 */
struct dkim_key *dkim_key_from_pem(const char *pem, size_t len, char *err, size_t errlen);
/*
 * Builds an Ed25519 key from its 32-byte seed (RFC 8032 private key), as
 * published in RFC 8463's test vectors.
 */
struct dkim_key *dkim_key_from_ed25519_seed(const unsigned char seed[32], char *err, size_t errlen);
/*
 * Generates a key: RSA of bits (2048, 3072, 4096; 0 means 2048; 1024 and
 * anything else is refused) or Ed25519 (bits ignored). NULL with err.
 */
struct dkim_key *dkim_key_generate(enum dkim_alg alg, int bits, char *err, size_t errlen);
enum dkim_alg dkim_key_alg(const struct dkim_key *k);
/* RSA modulus bits, or 256 for Ed25519. */
int dkim_key_bits(const struct dkim_key *k);
/* PKCS#8 PEM of the private key, appended to out. 0 or -1. */
int dkim_key_private_pem(const struct dkim_key *k, struct buf *out);
/*
 * The p= value of the key's DNS record, base64, appended to out: the DER
 * SubjectPublicKeyInfo for RSA, the raw 32-byte public key for Ed25519.
 */
int dkim_key_public_b64(const struct dkim_key *k, struct buf *out);
/* The whole TXT value: "v=DKIM1; k=rsa; p=..." (or k=ed25519). */
int dkim_key_dns_record(const struct dkim_key *k, struct buf *out);
void dkim_key_free(struct dkim_key *k);

/* ---- sign.c: signatures ----------------------------------------------- */

struct dkim_sign_params {
	const char *domain;   /* d= */
	const char *selector; /* s= */
	enum dkim_canon header_canon;
	enum dkim_canon body_canon;
	time_t timestamp;     /* t= */
	time_t expire;	      /* x=, 0 for none */
	/*
	 * Header names to sign, in order, NULL-terminated. Those present in
	 * the message are signed (bottom-up for repeats); each name listed
	 * once more than it occurs is the oversigning that blocks additions.
	 * NULL selects dkim_default_headers.
	 */
	const char *const *headers;
	int oversign; /* 1: add one extra of each listed name (default policy) */
};

/* The default signed header list (the list, From first). */
extern const char *const dkim_default_headers[];

/*
 * Signs: hdr is the message's complete header block as it will be sent
 * (CRLF line endings, the blank separator line may be included or not);
 * bh the body hash from dkim_body_final. Appends the complete
 * "DKIM-Signature: ..." field, folded under 78 columns and ending in CRLF,
 * to out. 0, or -1 with err. Thread-safe for distinct out buffers.
 */
int dkim_sign(const struct dkim_key *k, const struct dkim_sign_params *p, const char *hdr,
	      size_t hlen, const unsigned char bh[32], struct buf *out, char *err, size_t errlen);
/*
 * 1: this thread keeps an RSA signing context on each key it signs with,
 * for its next signatures with that key (at most 16 threads at a time;
 * more sign without); 0: it stops. Long-lived signing threads turn it on
 * at start and off before they exit. The contexts go with their key
 * (dkim_key_free).
 */
void dkim_sign_thread_cache(int on);

/*
 * Signs a DKIM-Signature field the caller wrote (any tags, any folding):
 * the b= value in sig, if present, is removed the way a verifier removes
 * it, and h=, c= (header part) and a= (must match the key) are read from
 * sig. Appends the unfolded base64 b= value to out. For reproducing
 * published signatures and for callers that need tags dkim_sign does not
 * write (i=, q=). 0, or -1 with err.
 */
int dkim_sign_field(const struct dkim_key *k, const char *hdr, size_t hlen, const char *sig,
		    size_t siglen, struct buf *out, char *err, size_t errlen);

/* ---- seal.c: private keys at rest (AES-256-GCM) ------------------------ */

/*
 * Encrypts plain under the 32-byte master key with a random 96-bit nonce,
 * authenticating aad (aadlen bytes; may be 0) with it. Appends the v2 blob
 * "SGK" 0x02 | nonce | ciphertext | 16-byte tag to out. 0 or -1.
 */
int dkim_seal(const unsigned char mkey[32], const void *aad, size_t aadlen, const void *plain,
	      size_t n, struct buf *out);
/*
 * Reverses dkim_seal (same aad); also opens v1 blobs (nonce | ciphertext |
 * tag, sealed without aad before keys were bound to their rows). Returns
 * the version opened (1 or 2), or -1 when the key or aad is wrong or the
 * data was altered.
 */
int dkim_unseal(const unsigned char mkey[32], const void *aad, size_t aadlen, const void *sealed,
		size_t n, struct buf *out);
/*
 * Appends the aad that binds a sealed private key to its dkim_keys row:
 * "sendgate-dkim-v2" NUL domain NUL selector (both as stored: lower case).
 * 0 or -1.
 */
int dkim_key_aad(const char *domain, const char *selector, struct buf *out);
/*
 * Reads a master key file: 64 hex digits or 44 base64 characters (32
 * bytes), optional trailing newline. 0, or -1 with err naming the problem.
 * (The only function here that reads a file; it runs at start-up.)
 */
int dkim_master_key_load(const char *path, unsigned char mkey[32], char *err, size_t errlen);

#endif
