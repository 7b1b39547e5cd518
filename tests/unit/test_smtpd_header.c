/* Unit tests for header walking and the address-list parser (smtpd/header.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "smtpd/smtpd.h"

/* ---- header_mailboxes ------------------------------------------------- */

struct mb_case {
	const char *value;
	int count;            /* -1: must not parse */
	const char *addrs[4]; /* the first ones, in order */
};

static const struct mb_case mb_cases[] = {
    /* the shapes the brief names */
    {"\"Doe, John\" <j@x.com>", 1, {"j@x.com"}},
    {"j@x.com (comment)", 1, {"j@x.com"}},
    {"=?UTF-8?B?SsO2cmc=?= <a@b.c>", 1, {"a@b.c"}},
    {"=?utf-8?Q?J=2E_Q.?= <a@b.c>", 1, {"a@b.c"}},
    {"a@x.com, b@y.com", 2, {"a@x.com", "b@y.com"}},
    {"<a@x.com>", 1, {"a@x.com"}},
    {"\"a@evil.com\" <b@good.com>", 1, {"b@good.com"}},
    {"a@x.com <b@y.com>", -1, {NULL}},
    {"a@", -1, {NULL}},
    {"a", -1, {NULL}},
    {"<a>", -1, {NULL}},
    {"<a@>", -1, {NULL}},
    {"John Doe", -1, {NULL}},
    /* RFC 5322 appendix A */
    {"\"Joe Q. Public\" <john.q.public@example.com>", 1, {"john.q.public@example.com"}},
    {"Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>",
     3,
     {"mary@x.test", "jdoe@example.org", "one@y.test"}},
    {"<boss@nil.test>, \"Giant; \\\"Big\\\" Box\" <sysservices@example.net>",
     2,
     {"boss@nil.test", "sysservices@example.net"}},
    {"A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;",
     3,
     {"c@a.test", "joe@where.test", "jdoe@one.test"}},
    {"Undisclosed recipients:;", 0, {NULL}},
    {"Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>", 1, {"pete@silly.test"}},
    {"(Empty list)(start)Hidden recipients  :(nobody(that I know))  ;", 0, {NULL}},
    {"John Q. Public <jqp@example.com>", 1, {"jqp@example.com"}},
    /* groups mixed with mailboxes */
    {"friends: a@x.com, \"b c\"@y.com;, d@z.com", 3, {"a@x.com", "\"b c\"@y.com", "d@z.com"}},
    {"g1:;, g2: a@b.c;", 1, {"a@b.c"}},
    {"g: a@b.c", -1, {NULL}},      /* unterminated group */
    {"g: h: a@b.c;;", -1, {NULL}}, /* nested group */
    {"a@b.c;", -1, {NULL}},        /* ';' outside a group */
    /* domains are lower-cased, local parts kept */
    {"Big <John.Doe@EXAMPLE.COM>", 1, {"John.Doe@example.com"}},
    {"a@[192.0.2.1]", 1, {"a@[192.0.2.1]"}},
    {"\"quoted local\"@x.com", 1, {"\"quoted local\"@x.com"}},
    {"\"a@evil.com\"@good.com", 1, {"\"a@evil.com\"@good.com"}},
    /* comments nest, folding is white space */
    {"J (a (nested (comment)) here) <j@x.com> (trailing)", 1, {"j@x.com"}},
    {"\"Doe, John\"\r\n <j@x.com>\r\n", 1, {"j@x.com"}},
    {" j@x.com\r\n", 1, {"j@x.com"}},
    {"J\xc3\xb6rg <j@x.com>", 1, {"j@x.com"}},
    /* malformed */
    {"", -1, {NULL}},
    {"   ", -1, {NULL}},
    {"(only a comment)", -1, {NULL}},
    {"<a@x.com", -1, {NULL}},
    {"\"unterminated <a@x.com>", -1, {NULL}},
    {"(unterminated <a@x.com>", -1, {NULL}},
    {"Name <a@x.com> junk", -1, {NULL}},
    {"<@route.test:a@x.com>", -1, {NULL}},
    {"a@b@c.com", -1, {NULL}},
    {"a..b@x.com", -1, {NULL}},
    {".a@x.com", -1, {NULL}},
    {"a.@x.com", -1, {NULL}},
    {"a . b@x.com", -1, {NULL}},
    {"a@x..com", -1, {NULL}},
    {"a@x.com.", -1, {NULL}},
    {"a@.x.com", -1, {NULL}},
    {"\"x\" a@b.c", -1, {NULL}},
    {"x \"a\"@b.c", -1, {NULL}},
    {"<a@b.c> <d@e.f>", -1, {NULL}},
    {"a@b.c d@e.f", -1, {NULL}},
    {"<>", -1, {NULL}},
    {"Name <a@x.com>>", -1, {NULL}},
    {"a@x.com)", -1, {NULL}},
    {"a@[1.2.3.4", -1, {NULL}},
};

static void test_mailboxes_table(void **state)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(mb_cases); i++) {
		const struct mb_case *c = &mb_cases[i];
		char out[4][SMTP_ADDR_MAX + 1];
		int n, k;

		memset(out, 0, sizeof(out));
		print_message("value [%s]\n", c->value);
		n = header_mailboxes(c->value, strlen(c->value), out, 4);
		assert_int_equal(n, c->count);
		for (k = 0; k < n && k < 4; k++)
			assert_string_equal(out[k], c->addrs[k]);
	}
}

/* The count goes on past max; only max are filled. */
static void test_mailboxes_max(void **state)
{
	static const char v[] = "a@x.com, b@y.com, c@z.com";
	char out[2][SMTP_ADDR_MAX + 1];
	char big[3][SMTP_ADDR_MAX + 1];

	memset(out, 0, sizeof(out));
	assert_int_equal(header_mailboxes(v, sizeof(v) - 1, out, 1), 3);
	assert_string_equal(out[0], "a@x.com");
	assert_string_equal(out[1], ""); /* untouched */
	assert_int_equal(header_mailboxes(v, sizeof(v) - 1, big, 0), 3);
	assert_int_equal(header_mailboxes(v, sizeof(v) - 1, big, 3), 3);
	assert_string_equal(big[2], "c@z.com");
}

/* A NUL byte anywhere, or an address too long for the buffer, fails. */
static void test_mailboxes_hostile(void **state)
{
	static const char nul[] = "a@x.com\0, b@y.com";
	char out[1][SMTP_ADDR_MAX + 1];
	char v[1024];
	size_t n;

	assert_int_equal(header_mailboxes(nul, sizeof(nul) - 1, out, 1), -1);
	memset(v, 'a', 400);
	memcpy(v + 400, "@x.com", 6);
	assert_int_equal(header_mailboxes(v, 406, out, 1), -1);
	/* deeply nested comments are refused, not recursed into */
	n = 0;
	while (n < 200)
		v[n++] = '(';
	while (n < 400)
		v[n++] = ')';
	memcpy(v + n, "a@x.com", 7);
	assert_int_equal(header_mailboxes(v, n + 7, out, 1), -1);
	/* a modest nesting is fine */
	assert_int_equal(header_mailboxes("((((x)))) a@x.com", 17, out, 1), 1);
}

/* ---- header_walk / header_has ------------------------------------------ */

struct seen {
	int n;
	char names[8][32];
	char fields[8][128];
	int stop_at;
};

static int collect(void *arg, const char *field, size_t flen, size_t namelen)
{
	struct seen *s = arg;

	snprintf(s->names[s->n], sizeof(s->names[0]), "%.*s", (int)namelen, field);
	snprintf(s->fields[s->n], sizeof(s->fields[0]), "%.*s", (int)flen, field);
	s->n++;
	return s->n == s->stop_at ? 1 : 0;
}

static void test_walk(void **state)
{
	static const char hdr[] = "From: \"Doe, John\"\r\n <j@x.com>\r\nSubject: hi\r\n"
	                          "X-Empty:\r\n\r\nBody: not a header\r\n";
	struct seen s;

	memset(&s, 0, sizeof(s));
	assert_int_equal(header_walk(hdr, sizeof(hdr) - 1, collect, &s), 0);
	assert_int_equal(s.n, 3);
	assert_string_equal(s.names[0], "From");
	assert_string_equal(s.fields[0], "From: \"Doe, John\"\r\n <j@x.com>\r\n");
	assert_string_equal(s.names[1], "Subject");
	assert_string_equal(s.fields[1], "Subject: hi\r\n");
	assert_string_equal(s.names[2], "X-Empty");

	/* stopping early */
	memset(&s, 0, sizeof(s));
	s.stop_at = 1;
	assert_int_equal(header_walk(hdr, sizeof(hdr) - 1, collect, &s), 0);
	assert_int_equal(s.n, 1);

	/* the header block may end without the blank line */
	memset(&s, 0, sizeof(s));
	assert_int_equal(header_walk("A: 1\r\nB: 2\r\n", 12, collect, &s), 0);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.fields[1], "B: 2\r\n");
}

static int fail_cb(void *arg, const char *field, size_t flen, size_t namelen)
{
	return -1;
}

static void test_walk_errors(void **state)
{
	struct seen s;
	static const char *bad[] = {
	    " continuation first\r\n", "NoColon\r\n",    "Sp ace: x\r\n", "Name : x\r\n",
	    ": empty name\r\n",        "A: 1\nB: 2\r\n", "A: 1\r\n\n",
	};
	size_t i;

	for (i = 0; i < ARRAY_LEN(bad); i++) {
		memset(&s, 0, sizeof(s));
		assert_int_equal(header_walk(bad[i], strlen(bad[i]), collect, &s), -1);
	}
	assert_int_equal(header_walk("A: 1\r\n", 6, fail_cb, NULL), -1);
	assert_int_equal(header_walk("", 0, fail_cb, NULL), 0);
}

static void test_has(void **state)
{
	static const char hdr[] = "from: a@b\r\nSubject: x\r\n y\r\n\r\nSender: not in header\r\n";

	assert_int_equal(header_has(hdr, sizeof(hdr) - 1, "From"), 1);
	assert_int_equal(header_has(hdr, sizeof(hdr) - 1, "SUBJECT"), 1);
	assert_int_equal(header_has(hdr, sizeof(hdr) - 1, "Sender"), 0);
	assert_int_equal(header_has(hdr, sizeof(hdr) - 1, "Fro"), 0);
	assert_int_equal(header_has(hdr, sizeof(hdr) - 1, "y"), 0);
	assert_int_equal(header_has("", 0, "From"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mailboxes_table),   cmocka_unit_test(test_mailboxes_max),
	    cmocka_unit_test(test_mailboxes_hostile), cmocka_unit_test(test_walk),
	    cmocka_unit_test(test_walk_errors),       cmocka_unit_test(test_has),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
