/* Unit tests for MAIL FROM / RCPT TO arguments and domain names (smtpd/addr.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "smtpd/smtpd.h"

#define MAXP 256

/* Reply text must be printable ASCII, at most 150 characters. */
static void assert_clean_text(const struct smtp_error *err)
{
	size_t i, n = strlen(err->text);

	assert_true(n > 0 && n <= 150);
	for (i = 0; i < n; i++)
		assert_true(err->text[i] >= 0x20 && err->text[i] < 0x7f);
}

struct mail_ok {
	const char *arg;
	const char *addr; /* "" for the null path */
	const char *domain;
	long long size;
	int body, smtputf8, utf8;
};

static const struct mail_ok mail_ok[] = {
    {"<a@b.example>", "a@b.example", "b.example", -1, 0, 0, 0},
    {" <a@b.example>", "a@b.example", "b.example", -1, 0, 0, 0},
    {"<>", "", "", -1, 0, 0, 0},
    {"<> SIZE=100", "", "", 100, 0, 0, 0},
    {"<John.Doe@Example.COM>", "John.Doe@example.com", "example.com", -1, 0, 0, 0},
    {"<a+tag@b.example> SIZE=12345 BODY=8BITMIME", "a+tag@b.example", "b.example", 12345, 8, 0, 0},
    {"<a@b.example> body=7bit size=0", "a@b.example", "b.example", 0, 7, 0, 0},
    {"<a@b.example> SMTPUTF8", "a@b.example", "b.example", -1, 0, 1, 0},
    {"<a@b.example> SIZE=1  BODY=8BITMIME ", "a@b.example", "b.example", 1, 8, 0, 0},
    {"<a@b.example> AUTH=<>", "a@b.example", "b.example", -1, 0, 0, 0},
    {"<\"john doe\"@b.example>", "\"john doe\"@b.example", "b.example", -1, 0, 0, 0},
    {"<\"a\\\"b\"@b.example>", "\"a\\\"b\"@b.example", "b.example", -1, 0, 0, 0},
    {"<x@[192.0.2.1]>", "x@[192.0.2.1]", "[192.0.2.1]", -1, 0, 0, 0},
    {"<x@[IPv6:2001:db8::1]>", "x@[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]", -1, 0, 0, 0},
    {"<!#$&'*+-/=?^_`{|}~@b.example>", NULL, NULL, 0, 0, 0, 0}, /* '!' refused: below */
    {"<j\xc3\xb6rg@b\xc3\xbc.example> SMTPUTF8", "j\xc3\xb6rg@b\xc3\xbc.example",
     "b\xc3\xbc.example", -1, 0, 1, 1},
    {"<a@x-y.b2.example>", "a@x-y.b2.example", "x-y.b2.example", -1, 0, 0, 0},
    {"<a@1.2.3.4.example>", "a@1.2.3.4.example", "1.2.3.4.example", -1, 0, 0, 0},
};

static void test_mail_ok(void **state)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(mail_ok); i++) {
		const struct mail_ok *c = &mail_ok[i];
		struct smtp_path path;
		struct smtp_mail_params params;
		struct smtp_error err;

		if (c->addr == NULL)
			continue;
		print_message("MAIL FROM:%s\n", c->arg);
		assert_int_equal(
		    smtp_parse_mail_from(c->arg, strlen(c->arg), MAXP, &path, &params, &err), 0);
		assert_string_equal(path.addr, c->addr);
		assert_string_equal(path.domain, c->domain);
		assert_int_equal(path.is_null, c->addr[0] == '\0');
		if (!path.is_null)
			assert_int_equal(path.local_len, strrchr(c->addr, '@') - c->addr);
		assert_int_equal(params.size, c->size);
		assert_int_equal(params.body, c->body);
		assert_int_equal(params.smtputf8, c->smtputf8);
		assert_int_equal(path.utf8, c->utf8);
	}
}

struct refused {
	const char *arg;
	int code;
	const char *enh;
	const char *says; /* a piece of the text */
};

static const struct refused mail_bad[] = {
    /* paths */
    {"a@b.example", 501, "5.1.7", "Angle brackets"},
    {"<a@b.example", 501, "5.1.7", "closing angle"},
    {"  <a@b.example>", 501, "5.1.7", "Angle brackets"},
    {"<@a.example,@b.example:x@y.example>", 553, "5.1.7", "Source routes"},
    {"<@a.example:x@y.example>", 553, "5.1.7", "<@a.example:x@y.example>"},
    {"<x%y.example@relay.example>", 553, "5.1.7", "Relay"},
    {"<y.example!x@relay.example>", 553, "5.1.7", "Relay"},
    {"<\"x%y\"@relay.example>", 553, "5.1.7", "Relay"},
    {"<a>", 553, "5.1.7", "domain is required"},
    {"<a@>", 501, "5.1.7", "Missing domain"},
    {"<@>", 553, "5.1.7", "Source routes"},
    {"<a..b@x.example>", 501, "5.1.7", "dot"},
    {"<.a@x.example>", 501, "5.1.7", "dot"},
    {"<a.@x.example>", 501, "5.1.7", "dot"},
    {"<a b@x.example>", 501, "5.1.7", "local part"},
    {"<a@x..example>", 501, "5.1.7", "domain"},
    {"<a@-x.example>", 501, "5.1.7", "domain"},
    {"<a@x-.example>", 501, "5.1.7", "domain"},
    {"<a@x.example.>", 501, "5.1.7", "domain"},
    {"<a@x_y.example>", 501, "5.1.7", "domain"},
    {"<a@[300.1.1.1]>", 501, "5.1.7", "literal"},
    {"<a@[IPv6:zz::1]>", 501, "5.1.7", "literal"},
    {"<a@[tag:stuff]>", 501, "5.1.7", "literal"},
    {"<a@b.example> <c@d.example>", 501, "5.5.4", "Malformed parameter"},
    {"<a@b.example>SIZE=1", 501, "5.5.4", "space"},
    {"<\"unterminated@b.example>", 501, "5.1.7", "quoted"},
    {"<a\x01@b.example>", 501, "5.1.7", "local part"},
    /* non-ASCII needs SMTPUTF8, and must be UTF-8 */
    {"<j\xc3\xb6rg@b.example>", 553, "5.6.7", "SMTPUTF8"},
    {"<a@b\xc3\xbc.example>", 553, "5.6.7", "SMTPUTF8"},
    {"<j\xc3rg@b.example> SMTPUTF8", 501, "5.1.7", "UTF-8"},
    {"<j\xed\xa0\x80@b.example> SMTPUTF8", 501, "5.1.7", "UTF-8"}, /* surrogate */
    {"<j\xc0\xaf@b.example> SMTPUTF8", 501, "5.1.7", "UTF-8"},     /* overlong */
    /* parameters */
    {"<a@b.example> SIZE=12x", 501, "5.5.4", "SIZE"},
    {"<a@b.example> SIZE=", 501, "5.5.4", "Malformed"},
    {"<a@b.example> SIZE", 501, "5.5.4", "SIZE"},
    {"<a@b.example> SIZE=-1", 501, "5.5.4", "SIZE"},
    {"<a@b.example> SIZE=99999999999999999999999", 501, "5.5.4", "range"},
    {"<a@b.example> BODY=BINARYMIME", 501, "5.5.4", "BODY"},
    {"<a@b.example> SMTPUTF8=yes", 501, "5.5.4", "SMTPUTF8"},
    {"<a@b.example> SIZE=1 SIZE=2", 501, "5.5.4", "twice"},
    {"<a@b.example> BODY=7BIT body=8BITMIME", 501, "5.5.4", "twice"},
    {"<a@b.example> RET=FULL", 555, "5.5.4", "RET"},
    {"<a@b.example> X-FOO", 555, "5.5.4", "X-FOO"},
    {"<a@b.example> =x", 501, "5.5.4", "Malformed"},
    {"<a@b.example> FOO=a=b", 501, "5.5.4", "Malformed"},
};

static void test_mail_refused(void **state)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(mail_bad); i++) {
		const struct refused *c = &mail_bad[i];
		struct smtp_path path;
		struct smtp_mail_params params;
		struct smtp_error err;

		print_message("MAIL FROM:%s\n", c->arg);
		memset(&err, 0, sizeof(err));
		assert_int_equal(
		    smtp_parse_mail_from(c->arg, strlen(c->arg), MAXP, &path, &params, &err), -1);
		print_message("  -> %d %s %s\n", err.code, err.enh, err.text);
		assert_int_equal(err.code, c->code);
		assert_string_equal(err.enh, c->enh);
		assert_non_null(strstr(err.text, c->says));
		assert_clean_text(&err);
	}
}

/* The whole test table of atext specials minus the relay characters is fine. */
static void test_atext_local(void **state)
{
	static const char arg[] = "<#$&'*+-/=?^_`{|}~@b.example>";
	struct smtp_path path;
	struct smtp_mail_params params;
	struct smtp_error err;

	assert_int_equal(smtp_parse_mail_from(arg, sizeof(arg) - 1, MAXP, &path, &params, &err), 0);
	assert_string_equal(path.addr, "#$&'*+-/=?^_`{|}~@b.example");
	/* with '!' it is a relay form */
	assert_int_equal(smtp_parse_mail_from(mail_ok[14].arg, strlen(mail_ok[14].arg), MAXP, &path,
	                                      &params, &err),
	                 -1);
	assert_int_equal(err.code, 553);
}

/* Lengths: local part 64, path max_path, labels 63, domain 255. */
static void test_lengths(void **state)
{
	char arg[600];
	struct smtp_path path;
	struct smtp_mail_params params;
	struct smtp_error err;
	size_t n;

	/* 64-octet local part is fine, 65 is not */
	arg[0] = '<';
	memset(arg + 1, 'l', 64);
	n = 65 + (size_t)sprintf(arg + 65, "@b.example>");
	assert_int_equal(smtp_parse_mail_from(arg, n, MAXP, &path, &params, &err), 0);
	assert_int_equal(path.local_len, 64);
	memset(arg + 1, 'l', 65);
	n = 66 + (size_t)sprintf(arg + 66, "@b.example>");
	assert_int_equal(smtp_parse_mail_from(arg, n, MAXP, &path, &params, &err), -1);
	assert_non_null(strstr(err.text, "64"));
	assert_clean_text(&err);

	/* the path limit counts the brackets */
	n = (size_t)sprintf(arg, "<abc@d.example>");
	assert_int_equal(smtp_parse_mail_from(arg, n, n, &path, &params, &err), 0);
	assert_int_equal(smtp_parse_mail_from(arg, n, n - 1, &path, &params, &err), -1);
	assert_int_equal(err.code, 501);
	assert_clean_text(&err);

	/* label of 63 fine, 64 not */
	n = (size_t)sprintf(arg, "<a@");
	memset(arg + n, 'x', 63);
	n += 63;
	n += (size_t)sprintf(arg + n, ".example>");
	assert_int_equal(smtp_parse_mail_from(arg, n, 1000, &path, &params, &err), 0);
	n = (size_t)sprintf(arg, "<a@");
	memset(arg + n, 'x', 64);
	n += 64;
	n += (size_t)sprintf(arg + n, ".example>");
	assert_int_equal(smtp_parse_mail_from(arg, n, 1000, &path, &params, &err), -1);

	/* a 255-octet domain, and 257: the buffer never overflows */
	{
		char dom[300];
		size_t d = 0;
		while (d < 255) {
			size_t k = 255 - d >= 50 ? 49 : 255 - d;
			memset(dom + d, 'd', k);
			d += k;
			if (d < 255)
				dom[d++] = '.';
		}
		dom[d] = '\0';
		assert_int_equal(strlen(dom), 255);
		assert_int_equal(smtp_domain_valid(dom, 255), 1);
		n = (size_t)sprintf(
		    arg, "<%.64s@%s>",
		    "llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll", dom);
		assert_int_equal(smtp_parse_mail_from(arg, n, 1000, &path, &params, &err), 0);
		assert_int_equal(strlen(path.addr), 320);
		dom[d++] = '.';
		dom[d++] = 'x';
		dom[d] = '\0';
		assert_int_equal(smtp_domain_valid(dom, d), 0);
		n = (size_t)sprintf(arg, "<a@%s>", dom);
		assert_int_equal(smtp_parse_mail_from(arg, n, 1000, &path, &params, &err), -1);
	}
}

/* Error texts never carry raw control or 8-bit bytes, and stay short. */
static void test_error_text_sanitized(void **state)
{
	char arg[400];
	struct smtp_path path;
	struct smtp_mail_params params;
	struct smtp_error err;
	size_t n;

	n = (size_t)sprintf(arg, "<@evil\r\n\x1b[31m\xff");
	memset(arg + n, 'z', 200);
	n += 200;
	arg[n++] = '>';
	assert_int_equal(smtp_parse_mail_from(arg, n, MAXP, &path, &params, &err), -1);
	assert_clean_text(&err);
	assert_null(strchr(err.text, '\r'));

	n = (size_t)sprintf(arg, "<a@b.example> X-\x01\x02=\xff");
	assert_int_equal(smtp_parse_mail_from(arg, n, MAXP, &path, &params, &err), -1);
	assert_clean_text(&err);

	/* a NUL byte in the argument */
	assert_int_equal(smtp_parse_mail_from("<a@b\0c>", 7, MAXP, &path, &params, &err), -1);
	assert_clean_text(&err);
}

static void test_rcpt(void **state)
{
	struct smtp_path path;
	struct smtp_error err;
	static const struct refused bad[] = {
	    {"<>", 501, "5.1.3", "null path"},
	    {"<postmaster>", 553, "5.1.3", "domain is required"},
	    {"<Postmaster>", 553, "5.1.3", "domain is required"},
	    {"<a@b.example> NOTIFY=NEVER", 555, "5.5.4", "NOTIFY"},
	    {"<a@b.example> ORCPT=rfc822;a@b", 555, "5.5.4", "ORCPT"},
	    {"<@x.example:a@b.example>", 553, "5.1.3", "Source routes"},
	    {"<a%b@c.example>", 553, "5.1.3", "Relay"},
	    {"<a!b@c.example>", 553, "5.1.3", "Relay"},
	    {"<j\xc3\xb6rg@b.example>", 553, "5.6.7", "SMTPUTF8"},
	    {"a@b.example", 501, "5.1.3", "Angle"},
	    {"<a@b.example> SMTPUTF8", 555, "5.5.4", "SMTPUTF8"},
	};
	size_t i;

	assert_int_equal(smtp_parse_rcpt_to("<Z@W.Example>", 13, MAXP, 0, &path, &err), 0);
	assert_string_equal(path.addr, "Z@w.example");
	assert_string_equal(path.domain, "w.example");
	assert_int_equal(path.local_len, 1);
	assert_int_equal(path.is_null, 0);
	assert_int_equal(smtp_parse_rcpt_to(" <z@w.example> ", 15, MAXP, 0, &path, &err), 0);
	assert_int_equal(smtp_parse_rcpt_to("<j\xc3\xb6rg@b.example>", 17, MAXP, 1, &path, &err),
	                 0);
	assert_int_equal(path.utf8, 1);
	for (i = 0; i < ARRAY_LEN(bad); i++) {
		print_message("RCPT TO:%s\n", bad[i].arg);
		memset(&err, 0, sizeof(err));
		assert_int_equal(
		    smtp_parse_rcpt_to(bad[i].arg, strlen(bad[i].arg), MAXP, 0, &path, &err), -1);
		print_message("  -> %d %s %s\n", err.code, err.enh, err.text);
		assert_int_equal(err.code, bad[i].code);
		assert_string_equal(err.enh, bad[i].enh);
		assert_non_null(strstr(err.text, bad[i].says));
		assert_clean_text(&err);
	}
}

static void test_domain_valid(void **state)
{
	static const struct {
		const char *d;
		int ok;
	} cases[] = {
	    {"example.com", 1},
	    {"a", 1},
	    {"x-y.example", 1},
	    {"1.2.3.4", 1},
	    {"xn--bcher-kva.example", 1},
	    {"a.b.c.d.e", 1},
	    {"", 0},
	    {".", 0},
	    {"a.", 0},
	    {".a", 0},
	    {"a..b", 0},
	    {"-a.example", 0},
	    {"a-.example", 0},
	    {"a_b.example", 0},
	    {"a b.example", 0},
	    {"b\xc3\xbc.example", 0},
	    {"[1.2.3.4]", 0},
	};
	size_t i;
	char label[70];

	for (i = 0; i < ARRAY_LEN(cases); i++) {
		print_message("domain [%s]\n", cases[i].d);
		assert_int_equal(smtp_domain_valid(cases[i].d, strlen(cases[i].d)), cases[i].ok);
	}
	memset(label, 'a', 64);
	assert_int_equal(smtp_domain_valid(label, 63), 1);
	assert_int_equal(smtp_domain_valid(label, 64), 0);
	/* length is respected: no reading past len */
	assert_int_equal(smtp_domain_valid("example.com!!!", 11), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mail_ok),
	    cmocka_unit_test(test_mail_refused),
	    cmocka_unit_test(test_atext_local),
	    cmocka_unit_test(test_lengths),
	    cmocka_unit_test(test_error_text_sanitized),
	    cmocka_unit_test(test_rcpt),
	    cmocka_unit_test(test_domain_valid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
