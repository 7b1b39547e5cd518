/* Unit tests: SPF parsing, lookup counting (RFC 7208 4.6.4), merging. */
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

static void test_is_record(void **state)
{
	assert_true(spf_is_record("v=spf1"));
	assert_true(spf_is_record("v=spf1 -all"));
	assert_true(spf_is_record("V=SPF1 a"));
	assert_false(spf_is_record("v=spf10 -all"));
	assert_false(spf_is_record("v=spf1-all"));
	assert_false(spf_is_record(" v=spf1 -all"));
	assert_false(spf_is_record("v=DKIM1; p=abc"));
	assert_false(spf_is_record(""));
}

static void test_parse_terms(void **state)
{
	struct spf_record r;
	char err[256];

	assert_int_equal(spf_parse("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32  a "
	                           "-mx:mail.example.com/24//64 ~include:_spf.example.net "
	                           "?exists:%{i}._spf.%{d} ptr a//64 redirect=other.example "
	                           "exp=explain.example foo.bar=baz -all",
	                           &r, err, sizeof(err)),
	                 0);
	assert_int_equal(r.n, 12);
	assert_int_equal(r.terms[0].kind, SPF_IP4);
	assert_string_equal(r.terms[0].arg, "192.0.2.0");
	assert_int_equal(r.terms[0].cidr4, 24);
	assert_int_equal(r.terms[1].kind, SPF_IP6);
	assert_string_equal(r.terms[1].arg, "2001:db8::");
	assert_int_equal(r.terms[1].cidr6, 32);
	assert_int_equal(r.terms[2].kind, SPF_A);
	assert_null(r.terms[2].arg);
	assert_int_equal(r.terms[2].qualifier, '+');
	assert_int_equal(r.terms[3].kind, SPF_MX);
	assert_int_equal(r.terms[3].qualifier, '-');
	assert_string_equal(r.terms[3].arg, "mail.example.com");
	assert_int_equal(r.terms[3].cidr4, 24);
	assert_int_equal(r.terms[3].cidr6, 64);
	assert_int_equal(r.terms[4].kind, SPF_INCLUDE);
	assert_int_equal(r.terms[4].qualifier, '~');
	assert_int_equal(r.terms[5].kind, SPF_EXISTS);
	assert_true(r.terms[5].has_macro);
	assert_int_equal(r.terms[6].kind, SPF_PTR);
	assert_int_equal(r.terms[7].kind, SPF_A);
	assert_int_equal(r.terms[7].cidr4, -1);
	assert_int_equal(r.terms[7].cidr6, 64);
	assert_int_equal(r.terms[8].kind, SPF_REDIRECT);
	assert_string_equal(r.terms[8].arg, "other.example");
	assert_int_equal(r.terms[9].kind, SPF_EXP);
	assert_int_equal(r.terms[10].kind, SPF_OTHER_MOD);
	assert_int_equal(r.terms[11].kind, SPF_ALL);
	assert_int_equal(r.terms[11].qualifier, '-');
	spf_record_free(&r);
}

static void test_parse_errors(void **state)
{
	static const char *bad[] = {
	    "v=spf1 foo",
	    "v=spf1 include:",
	    "v=spf1 include",
	    "v=spf1 include:localhost",
	    "v=spf1 include:a..example",
	    "v=spf1 ip4:300.1.1.1",
	    "v=spf1 ip4:192.0.2.1/33",
	    "v=spf1 ip4:192.0.2.1/024",
	    "v=spf1 ip6:2001:db8::/129",
	    "v=spf1 ip4:2001:db8::1",
	    "v=spf1 redirect=a.example redirect=b.example",
	    "v=spf1 exp=a.example exp=b.example",
	    "v=spf1 all:foo",
	    "v=spf1 ptr/24",
	    "v=spf1 a:example.com/",
	    "v=spf1 exists:%{z}.example.com",
	    "v=spf1 exists:%x.example.com",
	    "v=spf1 include:example.123",
	    "v=spf1 !all",
	    "v=spf2 -all",
	};
	struct spf_record r;
	char err[256];

	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		err[0] = '\0';
		if (spf_parse(bad[i], &r, err, sizeof(err)) == 0)
			fail_msg("accepted: %s", bad[i]);
		assert_true(err[0] != '\0');
		spf_record_free(&r);
	}
	/* Case does not matter; unknown modifiers are ignored. */
	assert_int_equal(
	    spf_parse("v=spf1 INCLUDE:Example.COM. IP4:192.0.2.1 x-y=z ~ALL", &r, err, sizeof(err)),
	    0);
	assert_int_equal(r.n, 4);
	spf_record_free(&r);
	assert_int_equal(spf_parse("v=spf1", &r, err, sizeof(err)), 0);
	assert_int_equal(r.n, 0);
	spf_record_free(&r);
}

static int count(const char *txt)
{
	struct spf_record r;
	char err[256];
	int n;

	if (spf_parse(txt, &r, err, sizeof(err)) < 0)
		fail_msg("parse %s: %s", txt, err);
	n = spf_count_lookups(&r);
	spf_record_free(&r);
	return n;
}

static void test_count_terms(void **state)
{
	assert_int_equal(count("v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 -all"), 0);
	assert_int_equal(count("v=spf1 a mx ptr exists:x.example include:y.example "
	                       "redirect=z.example"),
	                 6);
	/* With "all", redirect is never evaluated. */
	assert_int_equal(count("v=spf1 include:y.example redirect=z.example -all"), 1);
	assert_int_equal(count("v=spf1 exp=e.example -all"), 0);
}

/* A static DNS for spf_evaluate: name -> record, or a fetch outcome. */
struct fake {
	const char *name;
	enum spf_fetch kind;
	const char *record;
};

struct fake_zone {
	const struct fake *f;
	size_t n;
	int fetched;
};

static enum spf_fetch fake_fetch(void *ctx, const char *domain, enum spf_want want,
                                 const char **record)
{
	struct fake_zone *z = ctx;

	z->fetched++;
	if (want != SPF_WANT_SPF)
		return strncmp(domain, "gone", 4) == 0 ? SPF_FETCH_VOID : SPF_FETCH_RECORD;
	for (size_t i = 0; i < z->n; i++)
		if (strcmp(z->f[i].name, domain) == 0) {
			*record = z->f[i].record;
			return z->f[i].kind;
		}
	return SPF_FETCH_VOID;
}

#define EVAL(zone, rec, ours, out)                                                                 \
	do {                                                                                       \
		struct fake_zone fz_ = {zone, ARRAY_LEN(zone), 0};                                 \
		spf_evaluate("acme.example", rec, ours, fake_fetch, &fz_, out);                    \
	} while (0)

static const struct fake chain[] = {
    {"spf.platform.example", SPF_FETCH_RECORD, "v=spf1 ip4:192.0.2.0/24 -all"},
    {"i1.example", SPF_FETCH_RECORD, "v=spf1 include:i2.example -all"},
    {"i2.example", SPF_FETCH_RECORD, "v=spf1 include:i3.example -all"},
    {"i3.example", SPF_FETCH_RECORD, "v=spf1 include:i4.example -all"},
    {"i4.example", SPF_FETCH_RECORD, "v=spf1 include:i5.example -all"},
    {"i5.example", SPF_FETCH_RECORD, "v=spf1 include:i6.example -all"},
    {"i6.example", SPF_FETCH_RECORD, "v=spf1 include:i7.example -all"},
    {"i7.example", SPF_FETCH_RECORD, "v=spf1 include:i8.example -all"},
    {"i8.example", SPF_FETCH_RECORD, "v=spf1 include:i9.example -all"},
    {"i9.example", SPF_FETCH_RECORD, "v=spf1 include:i10.example -all"},
    {"i10.example", SPF_FETCH_RECORD, "v=spf1 a -all"},
    {"mxs.example", SPF_FETCH_RECORD, "v=spf1 mx a ip4:192.0.2.9 -all"},
    {"red.example", SPF_FETCH_RECORD, "v=spf1 a mx redirect=mxs.example"},
    {"self.example", SPF_FETCH_RECORD, "v=spf1 include:self.example -all"},
    {"bad.example", SPF_FETCH_RECORD, "v=spf1 includ:x.example -all"},
    {"two.example", SPF_FETCH_MULTIPLE, NULL},
    {"nospf.example", SPF_FETCH_NOSPF, NULL},
    {"fail.example", SPF_FETCH_ERROR, NULL},
    {"wait.example", SPF_FETCH_PENDING, NULL},
    {"ten.example", SPF_FETCH_RECORD, "v=spf1 a a a a a a a a a a -all"},
};

static void test_evaluate_limits(void **state)
{
	struct spf_eval e;

	/* include + our include (1+1) + 10 nested: i1 (1) ... i9 -> i10 (9 more), a (1). */
	EVAL(chain, "v=spf1 include:spf.platform.example -all", "spf.platform.example", &e);
	assert_int_equal(e.lookups, 1);
	assert_true(e.has_include);
	assert_true(e.complete);
	assert_false(e.invalid || e.error);

	/* i1 chain: include:i1 .. include:i10 is 10 includes, plus i10's "a" = 11. */
	EVAL(chain, "v=spf1 include:i1.example -all", NULL, &e);
	assert_int_equal(e.lookups, 11);
	assert_string_not_equal(e.detail, "");

	/* Starting at i2: 9 includes + "a" = 10: exactly at the limit, allowed. */
	EVAL(chain, "v=spf1 include:i2.example -all", NULL, &e);
	assert_int_equal(e.lookups, 10);
	assert_string_equal(e.detail, "");

	/* 10 terms in one record is fine; one more mechanism is not. */
	EVAL(chain, "v=spf1 a a a a a a a a a a -all", NULL, &e);
	assert_int_equal(e.lookups, 10);
	EVAL(chain, "v=spf1 a a a a a a a a a a mx -all", NULL, &e);
	assert_int_equal(e.lookups, 11);
	/* ip4/ip6/all never count. */
	EVAL(chain, "v=spf1 ip4:192.0.2.1 ip4:192.0.2.2 ip6:2001:db8::1 include:ten.example -all",
	     NULL, &e);
	assert_int_equal(e.lookups, 11);
	/* redirect counts, and so does what the redirected record holds. */
	EVAL(chain, "v=spf1 include:red.example -all", NULL, &e);
	/* include(1) + red: a, mx (2) + redirect (1) + mxs: mx, a (2) = 6 */
	assert_int_equal(e.lookups, 6);
	assert_true(e.complete);
	/* A record including itself stops past the limit. */
	EVAL(chain, "v=spf1 include:self.example -all", NULL, &e);
	assert_int_equal(e.lookups, 11);
}

static void test_evaluate_problems(void **state)
{
	struct spf_eval e;

	EVAL(chain, "v=spf1 include:bad.example -all", NULL, &e);
	assert_true(e.invalid);
	assert_non_null(strstr(e.detail, "bad.example"));
	EVAL(chain, "v=spf1 include:two.example -all", NULL, &e);
	assert_true(e.invalid);
	EVAL(chain, "v=spf1 include:nospf.example -all", NULL, &e);
	assert_true(e.invalid);
	assert_int_equal(e.void_lookups, 0);
	EVAL(chain, "v=spf1 include:gone1.example include:gone2.example include:gone3.example -all",
	     NULL, &e);
	assert_int_equal(e.void_lookups, 3);
	assert_true(e.invalid);
	/* a and mx names without answers are void lookups too; two are allowed. */
	EVAL(chain, "v=spf1 a:gone1.example mx:gone2.example -all", NULL, &e);
	assert_int_equal(e.void_lookups, 2);
	assert_string_equal(e.detail, "");
	EVAL(chain, "v=spf1 a:gone1.example mx:gone2.example a:gone3.example/24 -all", NULL, &e);
	assert_int_equal(e.void_lookups, 3);
	assert_non_null(strstr(e.detail, "void"));
	assert_false(e.invalid);
	/* A macro cannot be looked up without a sender: not counted as void. */
	EVAL(chain, "v=spf1 a:gone%{d}.example a:gone1.example mx:gone2.example -all", NULL, &e);
	assert_int_equal(e.void_lookups, 2);
	EVAL(chain, "v=spf1 include:fail.example -all", NULL, &e);
	assert_true(e.error);
	assert_false(e.invalid);
	EVAL(chain, "v=spf1 include:wait.example include:spf.platform.example -all",
	     "include:spf.platform.example", &e);
	assert_false(e.complete);
	assert_true(e.has_include);
	assert_int_equal(e.lookups, 2);
	/* A syntax error in the record itself. */
	EVAL(chain, "v=spf1 ip4:1.2.3 -all", NULL, &e);
	assert_true(e.invalid);
	/* Our include with a fail qualifier is not "ours". */
	EVAL(chain, "v=spf1 -include:spf.platform.example ~all", "spf.platform.example", &e);
	assert_false(e.has_include);
	/* Our include reached through another include counts as present. */
	{
		static const struct fake nested[] = {
		    {"corp.example", SPF_FETCH_RECORD, "v=spf1 include:spf.platform.example -all"},
		    {"spf.platform.example", SPF_FETCH_RECORD, "v=spf1 ip4:192.0.2.0/24 -all"},
		};
		EVAL(nested, "v=spf1 include:corp.example -all", "spf.platform.example", &e);
		assert_true(e.has_include);
		assert_int_equal(e.lookups, 2);
	}
}

static void check_merge(const char *in, const char *inc, int want_rc, const char *want)
{
	char *out = NULL;
	int rc = spf_merge(in, inc, &out);

	assert_int_equal(rc, want_rc);
	if (want == NULL) {
		assert_null(out);
	} else {
		assert_non_null(out);
		assert_string_equal(out, want);
	}
	free(out);
}

static void test_merge(void **state)
{
	const char *inc = "spf.platform.example";

	check_merge("v=spf1 mx -all", inc, 1, "v=spf1 mx include:spf.platform.example -all");
	check_merge("v=spf1 include:_spf.google.com ~all", inc, 1,
	            "v=spf1 include:_spf.google.com include:spf.platform.example ~all");
	check_merge("v=spf1 a   ?all", "include:spf.platform.example", 1,
	            "v=spf1 a include:spf.platform.example ?all");
	check_merge("v=spf1 a redirect=corp.example", inc, 1,
	            "v=spf1 a include:spf.platform.example redirect=corp.example");
	check_merge("v=spf1 a", inc, 1, "v=spf1 a include:spf.platform.example");
	check_merge("v=spf1", inc, 1, "v=spf1 include:spf.platform.example");
	check_merge("v=spf1 a -all exp=x.example", inc, 1,
	            "v=spf1 a include:spf.platform.example -all exp=x.example");
	/* Already there (any case, trailing dot, explicit '+'): unchanged. */
	check_merge("v=spf1 include:SPF.Platform.Example. ~all", inc, 0,
	            "v=spf1 include:SPF.Platform.Example. ~all");
	check_merge("v=spf1  +include:spf.platform.example  -all", inc, 0,
	            "v=spf1  +include:spf.platform.example  -all");
	/* A look-alike is not ours. */
	check_merge("v=spf1 include:spf.platform.example.evil -all", inc, 1,
	            "v=spf1 include:spf.platform.example.evil include:spf.platform.example -all");
	check_merge("google-site-verification=abc", inc, -1, NULL);

	{
		char *r = spf_new_record("include:spf.platform.example");
		assert_string_equal(r, "v=spf1 include:spf.platform.example ~all");
		free(r);
	}
}

static void test_has_include(void **state)
{
	struct spf_record r;
	char err[128];

	assert_int_equal(
	    spf_parse("v=spf1 include:spf.platform.example -all", &r, err, sizeof(err)), 0);
	assert_true(spf_has_include(&r, "spf.platform.example"));
	assert_true(spf_has_include(&r, "include:SPF.platform.example."));
	assert_false(spf_has_include(&r, "platform.example"));
	spf_record_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_is_record),       cmocka_unit_test(test_parse_terms),
	    cmocka_unit_test(test_parse_errors),    cmocka_unit_test(test_count_terms),
	    cmocka_unit_test(test_evaluate_limits), cmocka_unit_test(test_evaluate_problems),
	    cmocka_unit_test(test_merge),           cmocka_unit_test(test_has_include),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
