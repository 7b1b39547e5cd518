/*
 * seal: DKIM private keys at rest, encrypted with AES-256-GCM under the
 * operator's master key. Also loads the master key file at start-up.
 *
 * Two blob formats (dkim_keys.private_sealed):
 *   v1 (before row binding): nonce(12) | ciphertext | tag(16), no AAD.
 *   v2: "SGK" 0x02 | nonce(12) | ciphertext | tag(16), with the caller's
 *       additional authenticated data (for a key row: dkim_key_aad's
 *       "sendgate-dkim-v2" NUL domain NUL selector), so a blob copied to
 *       another row, or a v2 blob with its header altered, does not open.
 * dkim_seal always writes v2. A v1 nonce is random, so 1 in 2^32 v1 blobs
 * starts with the v2 header by chance: a blob with the header that does
 * not open as v2 is tried as v1. That gives nothing away: the v1 attempt
 * authenticates the whole blob, header included, with no AAD, which a v2
 * blob never matches (its tag covers the AAD).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "dkim/dkim_private.h"

#define NONCE_LEN 12
#define TAG_LEN 16
#define V2_HEADER "SGK\x02"
#define V2_HEADER_LEN 4
#define AAD_CONTEXT "sendgate-dkim-v2"

/* Appends "sendgate-dkim-v2" NUL domain NUL selector to out. 0 or -1. */
int dkim_key_aad(const char *domain, const char *selector, struct buf *out)
{
	static const char nul = '\0';

	if (buf_append(out, AAD_CONTEXT, sizeof(AAD_CONTEXT) - 1) == -1 ||
	    buf_append(out, &nul, 1) == -1 || buf_append(out, domain, strlen(domain)) == -1 ||
	    buf_append(out, &nul, 1) == -1 || buf_append(out, selector, strlen(selector)) == -1)
		return -1;
	return 0;
}

/* Encrypts plain under mkey and aad; appends a v2 blob to out. 0 or -1. */
int dkim_seal(const unsigned char mkey[32], const void *aad, size_t aadlen, const void *plain,
	      size_t n, struct buf *out)
{
	unsigned char nonce[NONCE_LEN], tag[TAG_LEN], *ct = NULL;
	EVP_CIPHER_CTX *ctx = NULL;
	int len = 0, fin = 0, alen = 0, rc = -1;

	if (n > INT_MAX - 64 || aadlen > INT_MAX)
		return -1;
	random_bytes(nonce, sizeof(nonce));
	ct = xmalloc(n + 16);
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL)
		abort();
	if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, mkey, nonce) != 1 ||
	    (aadlen > 0 && EVP_EncryptUpdate(ctx, NULL, &alen, aad, (int)aadlen) != 1) ||
	    EVP_EncryptUpdate(ctx, ct, &len, plain, (int)n) != 1 ||
	    EVP_EncryptFinal_ex(ctx, ct + len, &fin) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1)
		goto fail;
	if (buf_append(out, V2_HEADER, V2_HEADER_LEN) == -1 ||
	    buf_append(out, nonce, sizeof(nonce)) == -1 ||
	    buf_append(out, ct, (size_t)(len + fin)) == -1 || buf_append(out, tag, TAG_LEN) == -1)
		goto fail;
	rc = 0;
fail:
	EVP_CIPHER_CTX_free(ctx);
	free(ct);
	return rc;
}

/*
 * Opens nonce | ciphertext | tag (n bytes at s) with aad (none when aadlen
 * is 0); appends the plaintext to out. 0, or -1 with nothing appended.
 */
static int gcm_open(const unsigned char mkey[32], const void *aad, size_t aadlen,
		    const unsigned char *s, size_t n, struct buf *out)
{
	unsigned char *pt = NULL, tag[TAG_LEN];
	EVP_CIPHER_CTX *ctx = NULL;
	size_t ctlen;
	int len = 0, fin = 0, alen = 0, rc = -1;

	if (n < NONCE_LEN + TAG_LEN || n > INT_MAX - 64 || aadlen > INT_MAX)
		return -1;
	ctlen = n - NONCE_LEN - TAG_LEN;
	memcpy(tag, s + n - TAG_LEN, TAG_LEN);
	pt = xmalloc(ctlen + 16);
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL)
		abort();
	if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, mkey, s) != 1 ||
	    (aadlen > 0 && EVP_DecryptUpdate(ctx, NULL, &alen, aad, (int)aadlen) != 1) ||
	    EVP_DecryptUpdate(ctx, pt, &len, s + NONCE_LEN, (int)ctlen) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1 ||
	    EVP_DecryptFinal_ex(ctx, pt + len, &fin) != 1)
		goto fail;
	if (buf_append(out, pt, (size_t)(len + fin)) == -1)
		goto fail;
	rc = 0;
fail:
	EVP_CIPHER_CTX_free(ctx);
	OPENSSL_cleanse(pt, ctlen + 16);
	free(pt);
	return rc;
}

/*
 * Decrypts what dkim_seal made (v2, with the same aad) or a v1 blob (aad
 * not used); appends the plaintext to out. Returns the format version it
 * opened (1 or 2), or -1 when the key or aad is wrong or any byte was
 * altered (nothing is appended then).
 */
int dkim_unseal(const unsigned char mkey[32], const void *aad, size_t aadlen, const void *sealed,
		size_t n, struct buf *out)
{
	const unsigned char *s = sealed;

	if (n >= V2_HEADER_LEN && memcmp(s, V2_HEADER, V2_HEADER_LEN) == 0 &&
	    gcm_open(mkey, aad, aadlen, s + V2_HEADER_LEN, n - V2_HEADER_LEN, out) == 0)
		return 2;
	if (gcm_open(mkey, NULL, 0, s, n, out) == 0)
		return 1;
	return -1;
}

static int is_b64_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/' || c == '=';
}

/* Describes byte c for an error message without echoing key material raw. */
static void describe_char(char c, char *out, size_t outlen)
{
	if (c > 32 && c < 127)
		snprintf(out, outlen, "'%c'", c);
	else
		snprintf(out, outlen, "byte 0x%02x", (unsigned char)c);
}

/* Decodes the key text (newline already trimmed) into mkey. 0, or -1 with err. */
static int parse_master_key(const char *path, const char *s, size_t n, unsigned char mkey[32],
			    char *err, size_t errlen)
{
	char what[16];
	size_t i;

	if (n == 64) {
		for (i = 0; i < 64; i++) {
			if (hex_value((unsigned char)s[i]) < 0) {
				describe_char(s[i], what, sizeof(what));
				snprintf(err, errlen,
					 "%s: %s at position %zu is not a hex digit (the key is 64 "
					 "hex digits)",
					 path, what, i + 1);
				return -1;
			}
		}
		return hex_decode(s, 32, mkey);
	}
	if (n == 44) {
		unsigned char tmp[33];

		for (i = 0; i < 44; i++) {
			if (!is_b64_char(s[i])) {
				describe_char(s[i], what, sizeof(what));
				snprintf(err, errlen,
					 "%s: %s at position %zu is not a base64 character (the key "
					 "is 44 base64 characters)",
					 path, what, i + 1);
				return -1;
			}
		}
		if (base64_decode(s, 44, tmp) != 32) {
			snprintf(err, errlen,
				 "%s: 44 characters but not valid base64 of 32 bytes (it must end "
				 "in one '=')",
				 path);
			OPENSSL_cleanse(tmp, sizeof(tmp));
			return -1;
		}
		memcpy(mkey, tmp, 32);
		OPENSSL_cleanse(tmp, sizeof(tmp));
		return 0;
	}
	snprintf(err, errlen,
		 "%s: the master key must be 32 bytes written as 64 hex digits or 44 base64 "
		 "characters; the file holds %zu characters",
		 path, n);
	return -1;
}

/*
 * Reads the master key file: 64 hex digits or 44 base64 characters, with
 * an optional trailing newline. 0, or -1 with err naming file and problem.
 */
int dkim_master_key_load(const char *path, unsigned char mkey[32], char *err, size_t errlen)
{
	char text[256];
	size_t n = 0;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1) {
		snprintf(err, errlen, "%s: cannot open the DKIM master key file: %s", path,
			 strerror(errno));
		return -1;
	}
	/* Read at most sizeof(text): a longer file is wrong anyway. */
	while (n < sizeof(text)) {
		ssize_t r = read(fd, text + n, sizeof(text) - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(err, errlen, "%s: cannot read the DKIM master key file: %s", path,
				 strerror(errno));
			close(fd);
			OPENSSL_cleanse(text, sizeof(text));
			return -1;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	if (n == sizeof(text)) {
		snprintf(err, errlen,
			 "%s: file too large for a DKIM master key (expected 64 hex digits or 44 "
			 "base64 characters)",
			 path);
		OPENSSL_cleanse(text, sizeof(text));
		return -1;
	}
	if (n > 0 && text[n - 1] == '\n')
		n--;
	if (n > 0 && text[n - 1] == '\r')
		n--;
	rc = parse_master_key(path, text, n, mkey, err, errlen);
	OPENSSL_cleanse(text, sizeof(text));
	return rc;
}
