/*
 * Fuzzes the header walker and the address-list parser. Checks that every
 * mailbox returned is a NUL-terminated local@domain with a lower-case
 * domain, that the count is stable whatever max is, and that walked
 * fields lie inside the block and start with their name and ':'.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtpd/smtpd.h"

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "check failed: %s (line %d)\n", #c, __LINE__);             \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct walk {
	const char *hdr;
	size_t len;
	int fields;
};

static int on_field(void *arg, const char *field, size_t flen, size_t namelen)
{
	struct walk *w = arg;

	CHECK(field >= w->hdr && field + flen <= w->hdr + w->len);
	CHECK(namelen > 0 && namelen < flen && field[namelen] == ':');
	w->fields++;
	return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	const char *s = (const char *)data;
	char out[4][SMTP_ADDR_MAX + 1];
	char one[1][SMTP_ADDR_MAX + 1];
	struct walk w = {s, size, 0};
	int n, m, i;

	n = header_mailboxes(s, size, out, 4);
	m = header_mailboxes(s, size, one, 1);
	CHECK(n == m);
	CHECK(n >= -1);
	for (i = 0; i < n && i < 4; i++) {
		const char *at = strrchr(out[i], '@');
		size_t len = strnlen(out[i], SMTP_ADDR_MAX + 1);
		CHECK(len <= SMTP_ADDR_MAX);
		CHECK(at != NULL && at != out[i] && at[1] != '\0');
		for (at++; *at; at++)
			CHECK(!(*at >= 'A' && *at <= 'Z'));
	}
	if (n > 0)
		CHECK(strcmp(out[0], one[0]) == 0);
	header_walk(s, size, on_field, &w);
	header_has(s, size, "From");
	return 0;
}
