/* sasl: decoding the AUTH PLAIN and AUTH LOGIN responses (RFC 4616, RFC 4954). */
#include <string.h>

#include "smtpd/smtpd.h"

/* Longest PLAIN message: three fields and two separators. */
#define PLAIN_MAX (3 * SASL_MAX_FIELD + 2)
/* Its base64 length, rounded up to whole quads. */
#define PLAIN_B64_MAX (((PLAIN_MAX + 2) / 3) * 4)
#define LOGIN_B64_MAX (((SASL_MAX_FIELD + 2) / 3) * 4)

/*
 * Decodes an AUTH PLAIN response into user and pass (NUL-terminated,
 * caller's arrays). authzid must be empty or equal to authcid; user and
 * password must be non-empty, at most SASL_MAX_FIELD octets, and the
 * message holds exactly two NULs. 0, or -1 (user/pass are then empty).
 */
int sasl_plain_decode(const char *b64, size_t len, char user[SASL_MAX_FIELD + 1],
                      char pass[SASL_MAX_FIELD + 1])
{
	unsigned char raw[PLAIN_B64_MAX / 4 * 3];
	const unsigned char *nul1, *nul2, *authz, *authc, *pw;
	size_t zlen, clen, plen;
	ssize_t n;
	int r = -1;

	user[0] = '\0';
	pass[0] = '\0';
	if (len == 0 || len > PLAIN_B64_MAX)
		return -1;
	n = base64_decode(b64, len, raw);
	if (n <= 0)
		goto out;
	nul1 = memchr(raw, '\0', (size_t)n);
	if (nul1 == NULL)
		goto out;
	nul2 = memchr(nul1 + 1, '\0', (size_t)(raw + n - (nul1 + 1)));
	if (nul2 == NULL)
		goto out;
	authz = raw;
	zlen = (size_t)(nul1 - raw);
	authc = nul1 + 1;
	clen = (size_t)(nul2 - authc);
	pw = nul2 + 1;
	plen = (size_t)(raw + n - pw);
	if (memchr(pw, '\0', plen) != NULL)
		goto out; /* a third NUL */
	if (clen == 0 || plen == 0 || clen > SASL_MAX_FIELD || plen > SASL_MAX_FIELD ||
	    zlen > SASL_MAX_FIELD)
		goto out;
	if (zlen != 0 && (zlen != clen || memcmp(authz, authc, clen) != 0))
		goto out; /* acting as someone else is not offered */
	memcpy(user, authc, clen);
	user[clen] = '\0';
	memcpy(pass, pw, plen);
	pass[plen] = '\0';
	r = 0;
out:
	explicit_bzero(raw, sizeof(raw));
	return r;
}

/*
 * Decodes one AUTH LOGIN line (user name or password) into out
 * (NUL-terminated, caller's array). 0, or -1 for bad base64, an empty
 * value, a NUL inside or more than SASL_MAX_FIELD octets.
 */
int sasl_login_decode(const char *b64, size_t len, char out[SASL_MAX_FIELD + 1])
{
	unsigned char raw[LOGIN_B64_MAX / 4 * 3];
	ssize_t n;
	int r = -1;

	out[0] = '\0';
	if (len == 0 || len > LOGIN_B64_MAX)
		return -1;
	n = base64_decode(b64, len, raw);
	if (n <= 0 || (size_t)n > SASL_MAX_FIELD || memchr(raw, '\0', (size_t)n) != NULL)
		goto out;
	memcpy(out, raw, (size_t)n);
	out[n] = '\0';
	r = 0;
out:
	explicit_bzero(raw, sizeof(raw));
	return r;
}
