/* credential: generation and hashing of SMTP credentials. */
#include <stdio.h>
#include <string.h>

#include "tenants/tenants.h"

void credential_generate(const char *tenant, char user[CRED_USER_MAX + 1],
			 char secret[CRED_SECRET_LEN + 1])
{
	static const char b64url[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	unsigned char rnd[32], tag[4];
	char hex[9];
	unsigned int acc = 0;
	int bits = 0;
	size_t i, o = 0;

	random_bytes(tag, sizeof(tag));
	hex_encode(tag, sizeof(tag), hex);
	snprintf(user, CRED_USER_MAX + 1, "%.*s-%s", CRED_USER_MAX - 9, tenant, hex);

	/* 256 bits of secret as unpadded base64url: 43 characters. */
	random_bytes(rnd, sizeof(rnd));
	for (i = 0; i < sizeof(rnd); i++) {
		acc = (acc << 8) | rnd[i];
		bits += 8;
		while (bits >= 6) {
			bits -= 6;
			secret[o++] = b64url[(acc >> bits) & 63];
		}
	}
	if (bits > 0)
		secret[o++] = b64url[(acc << (6 - bits)) & 63];
	secret[o] = '\0';
}

void credential_hash(const char *secret, size_t len, unsigned char out[32])
{
	sha256(secret, len, out);
}
