/*
 * Fuzzes the SPF parser, the merge and the include walk (dns/spf.c), and
 * the tag and domain helpers (dns/records.c). The input is split at the
 * first newline: a record, and a second record every include resolves to
 * (so records that include themselves are covered: the walk must end).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "dns/dns.h"

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "check failed: %s (line %d)\n", #c, __LINE__);             \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static const char *second;
static int fetches;

static enum spf_fetch fetch(void *ctx, const char *domain, enum spf_want want, const char **record)
{
	fetches++;
	CHECK(fetches < 10000);
	if (want != SPF_WANT_SPF)
		return strlen(domain) % 3 ? SPF_FETCH_VOID : SPF_FETCH_RECORD;
	if (second == NULL || !spf_is_record(second))
		return strlen(domain) % 2 ? SPF_FETCH_VOID : SPF_FETCH_NOSPF;
	*record = second;
	return SPF_FETCH_RECORD;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	char *in = xmalloc(size + 1), *nl;
	struct spf_record rec;
	struct spf_eval ev;
	char err[256], *out = NULL, *again = NULL, *v;
	int rc;

	memcpy(in, data, size);
	in[size] = '\0';
	nl = strchr(in, '\n');
	second = NULL;
	if (nl) {
		*nl = '\0';
		second = nl + 1;
	}

	if (spf_parse(in, &rec, err, sizeof(err)) == 0) {
		CHECK(spf_is_record(in));
		CHECK(spf_count_lookups(&rec) <= (int)rec.n);
		for (size_t i = 0; i < rec.n; i++)
			CHECK(rec.terms[i].text != NULL && rec.terms[i].text[0] != '\0');
	} else {
		CHECK(err[0] != '\0');
	}
	spf_record_free(&rec);

	rc = spf_merge(in, "spf.platform.example", &out);
	CHECK(rc == -1 || rc == 0 || rc == 1);
	CHECK((rc == -1) == (out == NULL));
	if (out) {
		/* Merging twice changes nothing. */
		CHECK(spf_merge(out, "spf.platform.example", &again) == 0);
		CHECK(strcmp(out, again) == 0);
		free(again);
	}
	free(out);

	fetches = 0;
	if (spf_is_record(in)) {
		spf_evaluate("fuzz.example", in, "spf.platform.example", fetch, NULL, &ev);
		CHECK(ev.complete);
		CHECK(ev.lookups <= 11);
	}

	v = dns_tag_value(in, "p");
	free(v);
	if (dns_domain_is_valid(in)) {
		char label[64];
		CHECK(dns_dkim_label(in, label, sizeof(label)) == 0);
		CHECK(strlen(label) <= 63);
	}
	free(in);
	return 0;
}
