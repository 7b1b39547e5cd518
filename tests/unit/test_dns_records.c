/* Unit tests: the records a customer publishes, DKIM labels, org domains, tags, wire parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"
#include "dns/dns.h"

static const struct dns_dkim_selector sels[] = {
    {"s1", NULL, NULL, NULL},
    {"s2", NULL, NULL, NULL},
};

static const struct dns_platform platform = {
    .spf_include = "spf.platform.example",
    .dkim_zone = "dkim.platform.example",
    .return_path_prefix = "rp",
    .return_path_domain = "rp.platform.example",
    .dmarc_rua = "dmarc@platform.example",
    .dkim = sels,
    .n_dkim = 2,
};

static const struct dns_publish *find(const struct dns_publish_set *s, const char *kind,
                                      const char *sel)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->recs[i].kind, kind) == 0 &&
		    (sel == NULL || strcmp(s->recs[i].selector, sel) == 0))
			return &s->recs[i];
	fail_msg("no %s record", kind);
	return NULL;
}

static void test_label(void **state)
{
	char out[64];
	char longname[300];
	char *t;

	assert_int_equal(dns_dkim_label("acme.example", out, sizeof(out)), 0);
	assert_string_equal(out, "acme-example");
	assert_int_equal(dns_dkim_label("Mail.A-B.example.", out, sizeof(out)), 0);
	assert_string_equal(out, "mail-a--b-example");
	/* The scheme keeps different domains apart. */
	{
		char a[64], b[64];
		dns_dkim_label("a-b.example", a, sizeof(a));
		dns_dkim_label("a.b-example", b, sizeof(b));
		assert_string_not_equal(a, b);
	}
	/* Too long for a label: a digest, stable and without '-'. */
	memset(longname, 'x', 70);
	memcpy(longname + 70, ".example", 9);
	assert_int_equal(dns_dkim_label(longname, out, sizeof(out)), 0);
	assert_int_equal(strlen(out), 41);
	assert_int_equal(out[0], 'h');
	assert_null(strchr(out, '-'));
	{
		char again[64];
		longname[0] = 'X'; /* case does not matter */
		dns_dkim_label(longname, again, sizeof(again));
		assert_string_equal(out, again);
	}
	t = dns_dkim_cname_target("s1", "Acme.Example", "dkim.platform.example.");
	assert_string_equal(t, "s1.acme-example.dkim.platform.example");
	free(t);
}

static void test_org_domain(void **state)
{
	char *o;

	o = dns_org_domain("mail.acme.example");
	assert_string_equal(o, "acme.example");
	free(o);
	o = dns_org_domain("acme.example");
	assert_string_equal(o, "acme.example");
	free(o);
	o = dns_org_domain("News.Shop.Example.CO.UK.");
	assert_string_equal(o, "example.co.uk");
	free(o);
	o = dns_org_domain("a.b.acme.com");
	assert_string_equal(o, "acme.com");
	free(o);
}

static void test_tags(void **state)
{
	char *v;

	v = dns_tag_value("v=DMARC1; p=reject; rua=mailto:d@x.example", "p");
	assert_string_equal(v, "reject");
	free(v);
	v = dns_tag_value("v=DMARC1;p=none ; sp = quarantine;", "sp");
	assert_string_equal(v, "quarantine");
	free(v);
	v = dns_tag_value("v=DMARC1; p=none", "rua");
	assert_null(v);
	/* "p" is not a prefix match of "pct". */
	v = dns_tag_value("v=DMARC1; pct=50", "p");
	assert_null(v);
	v = dns_tag_value("v=DKIM1; k=rsa; p=", "p");
	assert_string_equal(v, "");
	free(v);
}

static void test_valid(void **state)
{
	assert_true(dns_domain_is_valid("acme.example"));
	assert_true(dns_domain_is_valid("mail.a-b.example"));
	assert_true(dns_domain_is_valid("xn--bcher-kva.example"));
	assert_false(dns_domain_is_valid("example"));
	assert_false(dns_domain_is_valid("-a.example"));
	assert_false(dns_domain_is_valid("a-.example"));
	assert_false(dns_domain_is_valid("a..example"));
	assert_false(dns_domain_is_valid("a.example."));
	assert_false(dns_domain_is_valid("a_b.example"));
	assert_false(dns_domain_is_valid("192.0.2.1"));
	assert_false(dns_domain_is_valid("a b.example"));
	assert_false(dns_domain_is_valid(""));
}

static void test_compute_domain(void **state)
{
	struct dns_publish_set s;
	const struct dns_publish *r;

	assert_int_equal(dns_records_compute("Acme.Example", &platform, NULL, &s), 0);
	assert_string_equal(s.domain, "acme.example");
	assert_string_equal(s.zone, "acme.example");
	assert_int_equal(s.n, 5);

	r = find(&s, "spf", NULL);
	assert_string_equal(r->type, "TXT");
	assert_string_equal(r->name, "acme.example");
	assert_string_equal(r->rel_name, "@");
	assert_string_equal(r->value, "v=spf1 include:spf.platform.example ~all");
	assert_int_equal(r->action, DNS_ACTION_ADD);

	r = find(&s, "dkim", "s1");
	assert_string_equal(r->type, "CNAME");
	assert_string_equal(r->name, "s1._domainkey.acme.example");
	assert_string_equal(r->rel_name, "s1._domainkey");
	assert_string_equal(r->value, "s1.acme-example.dkim.platform.example");
	r = find(&s, "dkim", "s2");
	assert_string_equal(r->value, "s2.acme-example.dkim.platform.example");

	r = find(&s, "return_path", NULL);
	assert_string_equal(r->type, "CNAME");
	assert_string_equal(r->name, "rp.acme.example");
	assert_string_equal(r->rel_name, "rp");
	assert_string_equal(r->value, "rp.platform.example");

	r = find(&s, "dmarc", NULL);
	assert_string_equal(r->name, "_dmarc.acme.example");
	assert_string_equal(r->rel_name, "_dmarc");
	assert_string_equal(r->value, "v=DMARC1; p=none; rua=mailto:dmarc@platform.example");
	assert_string_equal(dns_action_str(r->action), "add");
	dns_publish_set_free(&s);

	assert_int_equal(dns_records_compute("localhost", &platform, NULL, &s), -1);
}

static void test_compute_subdomain(void **state)
{
	struct dns_publish_set s;
	const struct dns_publish *r;

	assert_int_equal(dns_records_compute("mail.acme.example", &platform, NULL, &s), 0);
	assert_string_equal(s.zone, "acme.example");
	r = find(&s, "spf", NULL);
	assert_string_equal(r->name, "mail.acme.example");
	assert_string_equal(r->rel_name, "mail");
	r = find(&s, "dkim", "s1");
	assert_string_equal(r->name, "s1._domainkey.mail.acme.example");
	assert_string_equal(r->rel_name, "s1._domainkey.mail");
	assert_string_equal(r->value, "s1.mail-acme-example.dkim.platform.example");
	r = find(&s, "return_path", NULL);
	assert_string_equal(r->rel_name, "rp.mail");
	r = find(&s, "dmarc", NULL);
	assert_string_equal(r->rel_name, "_dmarc.mail");
	dns_publish_set_free(&s);
}

static void test_compute_with_found(void **state)
{
	struct dns_publish_set s;
	struct dns_check_report rep;
	struct dns_record_check dk[2];
	char *spf_values[] = {"google-site-verification=xyz", "v=spf1 mx -all"};
	const struct dns_publish *r;
	static const struct dns_dkim_selector txt_sel[] = {
	    {"s1", NULL, "MIIBIjAN", "v=DKIM1; k=rsa; p=MIIBIjAN"},
	};
	struct dns_platform p2 = platform;

	memset(&rep, 0, sizeof(rep));
	memset(dk, 0, sizeof(dk));
	rep.spf.status = DNS_CHECK_MISMATCH;
	rep.spf.values = spf_values;
	rep.spf.n_values = 2;
	rep.spf.found = spf_values[1];
	dk[0].status = DNS_CHECK_VERIFIED;
	dk[1].status = DNS_CHECK_MISMATCH;
	dk[1].found = "s2.elsewhere.example";
	rep.dkim = dk;
	rep.n_dkim = 2;
	rep.return_path.status = DNS_CHECK_MISSING;
	rep.dmarc.status = DNS_CHECK_VERIFIED;
	rep.dmarc.found = "v=DMARC1; p=reject";

	assert_int_equal(dns_records_compute("acme.example", &platform, &rep, &s), 0);
	r = find(&s, "spf", NULL);
	assert_string_equal(r->value, "v=spf1 mx include:spf.platform.example -all");
	assert_string_equal(r->current, "v=spf1 mx -all");
	assert_int_equal(r->action, DNS_ACTION_REPLACE);
	assert_int_equal(find(&s, "dkim", "s1")->action, DNS_ACTION_NONE);
	r = find(&s, "dkim", "s2");
	assert_int_equal(r->action, DNS_ACTION_REPLACE);
	assert_string_equal(r->current, "s2.elsewhere.example");
	assert_int_equal(find(&s, "return_path", NULL)->action, DNS_ACTION_ADD);
	r = find(&s, "dmarc", NULL);
	assert_int_equal(r->action, DNS_ACTION_NONE);
	assert_string_equal(r->current, "v=DMARC1; p=reject");
	dns_publish_set_free(&s);

	/* Our include already there: nothing to change in SPF. */
	spf_values[1] = "v=spf1 include:spf.platform.example -all";
	rep.spf.status = DNS_CHECK_VERIFIED;
	assert_int_equal(dns_records_compute("acme.example", &platform, &rep, &s), 0);
	r = find(&s, "spf", NULL);
	assert_int_equal(r->action, DNS_ACTION_NONE);
	assert_string_equal(r->value, "v=spf1 include:spf.platform.example -all");
	dns_publish_set_free(&s);

	/* TXT mode DKIM. */
	p2.dkim = txt_sel;
	p2.n_dkim = 1;
	assert_int_equal(dns_records_compute("acme.example", &p2, NULL, &s), 0);
	r = find(&s, "dkim", "s1");
	assert_string_equal(r->type, "TXT");
	assert_string_equal(r->value, "v=DKIM1; k=rsa; p=MIIBIjAN");
	dns_publish_set_free(&s);
}

/* Builds a reply by hand: header, question, answers. */
static size_t put_name(unsigned char *p, const char *name)
{
	size_t o = 0;
	const char *s = name;

	while (*s) {
		const char *dot = strchr(s, '.');
		size_t n = dot ? (size_t)(dot - s) : strlen(s);
		p[o++] = (unsigned char)n;
		memcpy(p + o, s, n);
		o += n;
		s += n;
		if (*s == '.')
			s++;
	}
	p[o++] = 0;
	return o;
}

static void test_wire(void **state)
{
	unsigned char m[512];
	size_t o = 0;
	struct dns_result res;

	memset(&res, 0, sizeof(res));
	memset(m, 0, sizeof(m));
	m[2] = 0x84; /* QR, AA */
	m[5] = 1;    /* qdcount */
	m[7] = 2;    /* ancount: CNAME then TXT */
	o = 12;
	o += put_name(m + o, "www.acme.example");
	m[o + 1] = 16;
	m[o + 3] = 1;
	o += 4;
	/* www.acme.example CNAME acme.example (compressed owner pointer to the question) */
	m[o++] = 0xc0;
	m[o++] = 12;
	m[o + 1] = 5;
	m[o + 3] = 1;
	m[o + 7] = 60; /* ttl 60 */
	o += 8;
	{
		unsigned char rd[64];
		size_t n = put_name(rd, "acme.example");
		m[o++] = 0;
		m[o++] = (unsigned char)n;
		memcpy(m + o, rd, n);
		o += n;
	}
	/* acme.example TXT "v=spf1 " "-all" ttl 30, owner pointer to the question's suffix */
	m[o++] = 0xc0;
	m[o++] = 12 + 4;
	m[o + 1] = 16;
	m[o + 3] = 1;
	m[o + 7] = 30;
	o += 8;
	m[o++] = 0;
	m[o++] = 13;
	m[o++] = 7;
	memcpy(m + o, "v=spf1 ", 7);
	o += 7;
	m[o++] = 4;
	memcpy(m + o, "-all", 4);
	o += 4;

	assert_int_equal(dns_answer_parse(m, o, DNS_TXT, &res), 0);
	assert_int_equal(res.status, DNS_OK);
	assert_int_equal(res.n, 1);
	assert_string_equal(res.rr[0].text, "v=spf1 -all");
	assert_int_equal(res.ttl, 30);
	assert_string_equal(res.name, "www.acme.example");

	/* Truncated anywhere: an error, never a crash. */
	for (size_t cut = 0; cut < o; cut++) {
		dns_answer_parse(m, cut, DNS_TXT, &res);
		assert_int_not_equal(res.status, DNS_OK);
	}
	/* A pointer loop. */
	m[12 + 4 + 1 + 4 + 4 + 4] = 0; /* irrelevant byte */
	{
		unsigned char loop[64] = {0};
		loop[2] = 0x80;
		loop[5] = 1;
		loop[12] = 0xc0;
		loop[13] = 12;
		assert_int_equal(dns_answer_parse(loop, 18, DNS_TXT, &res), -1);
	}
	/* NXDOMAIN */
	m[3] = 3;
	m[7] = 0;
	assert_int_equal(dns_answer_parse(m, 12 + 18 + 4, DNS_TXT, &res), 0);
	assert_int_equal(res.status, DNS_NXDOMAIN);
	/* SERVFAIL */
	m[3] = 2;
	assert_int_equal(dns_answer_parse(m, 12 + 18 + 4, DNS_TXT, &res), 0);
	assert_int_equal(res.status, DNS_SERVFAIL);
	dns_result_clear(&res);
	assert_string_equal(dns_status_str(DNS_NODATA), "nodata");
	assert_string_equal(dns_check_status_str(DNS_CHECK_TOO_MANY_LOOKUPS), "too_many_lookups");
	assert_string_equal(dns_check_status_str(DNS_CHECK_MULTIPLE_RECORDS), "multiple_records");
}

static void test_require(void **state)
{
	unsigned mask;
	char err[128];
	struct dns_check_report rep;
	struct dns_record_check dk[2];
	struct buf b;
	int ok, total;

	assert_int_equal(dns_require_parse("spf,dkim", &mask, err, sizeof(err)), 0);
	assert_int_equal(mask, DNS_REQUIRE_SPF | DNS_REQUIRE_DKIM);
	assert_int_equal(dns_require_parse(" spf , return_path,dmarc ", &mask, err, sizeof(err)),
	                 0);
	assert_int_equal(mask, DNS_REQUIRE_SPF | DNS_REQUIRE_RETURN_PATH | DNS_REQUIRE_DMARC);
	assert_int_equal(dns_require_parse("", &mask, err, sizeof(err)), 0);
	assert_int_equal(mask, 0);
	assert_int_equal(dns_require_parse("spf,dkimm", &mask, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "dkimm"));

	memset(&rep, 0, sizeof(rep));
	memset(dk, 0, sizeof(dk));
	rep.spf.kind = "spf";
	rep.spf.name = "acme.example";
	rep.spf.status = DNS_CHECK_VERIFIED;
	dk[0].kind = dk[1].kind = "dkim";
	dk[0].selector = "s1";
	dk[1].selector = "s2";
	dk[0].name = "s1._domainkey.acme.example";
	dk[1].name = "s2._domainkey.acme.example";
	dk[0].status = DNS_CHECK_VERIFIED;
	dk[1].status = DNS_CHECK_MISMATCH;
	rep.dkim = dk;
	rep.n_dkim = 2;
	rep.return_path.status = DNS_CHECK_MISSING;
	rep.dmarc.status = DNS_CHECK_MISSING;
	/* One DKIM selector off: partially verified. */
	assert_false(dns_report_passes(&rep, DNS_REQUIRE_SPF | DNS_REQUIRE_DKIM, &ok, &total));
	assert_int_equal(ok, 2);
	assert_int_equal(total, 3);
	buf_init(&b, 4096);
	dns_report_failing(&rep, DNS_REQUIRE_SPF | DNS_REQUIRE_DKIM, &b);
	assert_string_equal(b.data, "dkim s2 s2._domainkey.acme.example (mismatch)");
	buf_free(&b);
	dk[1].status = DNS_CHECK_VERIFIED;
	assert_true(dns_report_passes(&rep, DNS_REQUIRE_SPF | DNS_REQUIRE_DKIM, NULL, NULL));
	/* The return path is not required by default; when it is, it counts. */
	assert_false(
	    dns_report_passes(&rep, DNS_REQUIRE_SPF | DNS_REQUIRE_RETURN_PATH, NULL, NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_label),
	    cmocka_unit_test(test_org_domain),
	    cmocka_unit_test(test_tags),
	    cmocka_unit_test(test_valid),
	    cmocka_unit_test(test_compute_domain),
	    cmocka_unit_test(test_compute_subdomain),
	    cmocka_unit_test(test_compute_with_found),
	    cmocka_unit_test(test_wire),
	    cmocka_unit_test(test_require),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
