/*
 * seal: DKIM private keys at rest, encrypted with AES-256-GCM under the
 * operator's master key. Layout: 12-byte random nonce | ciphertext |
 * 16-byte tag. Also loads the master key file at start-up.
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

/* Encrypts plain under mkey; appends nonce | ciphertext | tag to out. 0 or -1. */
int dkim_seal(const unsigned char mkey[32], const void *plain, size_t n, struct buf *out)
{
	unsigned char nonce[NONCE_LEN], tag[TAG_LEN], *ct = NULL;
	EVP_CIPHER_CTX *ctx = NULL;
	int len = 0, fin = 0, rc = -1;

	if (n > INT_MAX - 64)
		return -1;
	random_bytes(nonce, sizeof(nonce));
	ct = xmalloc(n + 16);
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL)
		abort();
	if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, mkey, nonce) != 1 ||
	    EVP_EncryptUpdate(ctx, ct, &len, plain, (int)n) != 1 ||
	    EVP_EncryptFinal_ex(ctx, ct + len, &fin) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1)
		goto fail;
	if (buf_append(out, nonce, sizeof(nonce)) == -1 ||
	    buf_append(out, ct, (size_t)(len + fin)) == -1 || buf_append(out, tag, TAG_LEN) == -1)
		goto fail;
	rc = 0;
fail:
	EVP_CIPHER_CTX_free(ctx);
	free(ct);
	return rc;
}

/*
 * Decrypts what dkim_seal made; appends the plaintext to out. -1 when the
 * key is wrong or any byte was altered (nothing is appended then).
 */
int dkim_unseal(const unsigned char mkey[32], const void *sealed, size_t n, struct buf *out)
{
	const unsigned char *s = sealed;
	unsigned char *pt = NULL, tag[TAG_LEN];
	EVP_CIPHER_CTX *ctx = NULL;
	size_t ctlen;
	int len = 0, fin = 0, rc = -1;

	if (n < NONCE_LEN + TAG_LEN || n > INT_MAX - 64)
		return -1;
	ctlen = n - NONCE_LEN - TAG_LEN;
	memcpy(tag, s + n - TAG_LEN, TAG_LEN);
	pt = xmalloc(ctlen + 16);
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL)
		abort();
	if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, mkey, s) != 1 ||
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

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
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
			if (hex_value(s[i]) < 0) {
				describe_char(s[i], what, sizeof(what));
				snprintf(err, errlen,
					 "%s: %s at position %zu is not a hex digit (the key is 64 "
					 "hex digits)",
					 path, what, i + 1);
				return -1;
			}
		}
		for (i = 0; i < 32; i++)
			mkey[i] = (unsigned char)(hex_value(s[2 * i]) << 4 | hex_value(s[2 * i + 1]));
		return 0;
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
