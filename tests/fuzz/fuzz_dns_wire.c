/*
 * Fuzzes the DNS reply parser (dns/wire.c) with every record type: it must
 * never read outside the reply, and what it accepts must be well-formed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns/dns.h"

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "check failed: %s (line %d)\n", #c, __LINE__);             \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	static const enum dns_type types[] = {DNS_A, DNS_AAAA, DNS_CNAME, DNS_MX, DNS_TXT};
	struct dns_result res;

	memset(&res, 0, sizeof(res));
	for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
		int rc = dns_answer_parse(data, size, types[t], &res);

		CHECK(res.detail != NULL);
		CHECK(rc == 0 || res.status == DNS_ERROR);
		CHECK((res.status == DNS_OK) == (res.n > 0));
		if (res.name)
			CHECK(strlen(res.name) <= 253);
		for (size_t i = 0; i < res.n; i++) {
			CHECK(res.rr[i].text != NULL);
			CHECK(res.rr[i].text[res.rr[i].len] == '\0');
			if (types[t] != DNS_TXT)
				CHECK(strlen(res.rr[i].text) == res.rr[i].len);
			if (types[t] == DNS_MX)
				CHECK(res.rr[i].pref >= 0 && res.rr[i].pref <= 65535);
		}
		dns_result_clear(&res);
	}
	return 0;
}
