/*
 * Unit tests for the pure parts of tenants/: credential generation and
 * hashing (credential.c, in libtenants) and sendgatectl's checks and
 * formatting (ctl_util.c, which is linked into sendgatectl rather than
 * libtenants, so it is compiled into this test directly).
 */
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tenants/ctl_util.c"
#include "tenants/tenants.h"

/* ---- tenant names --------------------------------------------------- */

static void test_tenant_name_examples(void **state)
{
	char longest[64], too_long[65];

	memset(longest, 'a', 63);
	longest[63] = '\0';
	memset(too_long, 'a', 64);
	too_long[64] = '\0';

	assert_null(ctl_tenant_name_problem("acme"));
	assert_null(ctl_tenant_name_problem("a"));
	assert_null(ctl_tenant_name_problem("0"));
	assert_null(ctl_tenant_name_problem("shop-42.eu_west"));
	assert_null(ctl_tenant_name_problem(longest));

	assert_non_null(ctl_tenant_name_problem(""));
	assert_non_null(ctl_tenant_name_problem(too_long));
	assert_non_null(ctl_tenant_name_problem("Acme"));
	assert_non_null(ctl_tenant_name_problem("acMe"));
	assert_non_null(ctl_tenant_name_problem("-acme"));
	assert_non_null(ctl_tenant_name_problem(".acme"));
	assert_non_null(ctl_tenant_name_problem("_acme"));
	assert_non_null(ctl_tenant_name_problem("ac me"));
	assert_non_null(ctl_tenant_name_problem("ac/me"));
	assert_non_null(ctl_tenant_name_problem("acme\n"));
	assert_non_null(ctl_tenant_name_problem("caf\xc3\xa9"));
}

/*
 * The CLI's check must agree with the CHECK constraint in 001_init.sql,
 * which is this regular expression: compare on many random strings drawn
 * from an alphabet around the edges of the allowed set.
 */
static void test_tenant_name_matches_schema_regex(void **state)
{
	static const char alphabet[] = "az09AZ._-/ @\xc3";
	regex_t re;
	char s[80];
	int i, j, n, agree = 0;

	assert_int_equal(regcomp(&re, "^[a-z0-9][a-z0-9._-]{0,62}$", REG_EXTENDED | REG_NOSUB), 0);
	srand(7);
	for (i = 0; i < 20000; i++) {
		n = rand() % 70;
		for (j = 0; j < n; j++)
			s[j] = alphabet[rand() % (int)(sizeof(alphabet) - 1)];
		s[n] = '\0';
		assert_int_equal(ctl_tenant_name_problem(s) == NULL,
		                 regexec(&re, s, 0, NULL, 0) == 0);
		agree += ctl_tenant_name_problem(s) == NULL;
	}
	regfree(&re);
	/* The sample must contain valid names too, or the comparison proves little. */
	assert_true(agree > 100);
}

/* ---- domains ---------------------------------------------------------- */

static void expect_domain(const char *in, const char *want)
{
	char out[254];
	const char *why = NULL;

	if (ctl_domain_normalize(in, out, sizeof(out), &why) != 0)
		fail_msg("\"%s\" refused: %s", in, why);
	assert_string_equal(out, want);
}

static void expect_bad_domain(const char *in)
{
	char out[254];
	const char *why = NULL;

	if (ctl_domain_normalize(in, out, sizeof(out), &why) == 0)
		fail_msg("\"%s\" accepted as \"%s\"", in, out);
	assert_non_null(why);
}

static void test_domain_normalize(void **state)
{
	char label63[80], label64[80], long_name[300];
	int i;

	expect_domain("example.com", "example.com");
	expect_domain("Example.COM", "example.com");
	expect_domain("mail.Example.com.", "mail.example.com");
	expect_domain("xn--bcher-kva.example", "xn--bcher-kva.example");
	expect_domain("123.example", "123.example");
	expect_domain("a-b.c-d.example", "a-b.c-d.example");

	snprintf(label63, sizeof(label63), "%063d.com", 0);
	expect_domain(label63, label63);
	snprintf(label64, sizeof(label64), "%064d.com", 0);
	expect_bad_domain(label64);

	/* 253 octets is the longest name; 254 is refused. */
	long_name[0] = '\0';
	for (i = 0; i < 4; i++)
		strcat(long_name,
		       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.");
	strcat(long_name, "example");
	assert_int_equal(strlen(long_name), 259);
	expect_bad_domain(long_name);
	long_name[253] = '\0';
	long_name[252] = 'x';
	expect_domain(long_name, long_name);
	strcat(long_name, "y"); /* 254 */
	expect_bad_domain(long_name);

	expect_bad_domain("");
	expect_bad_domain(".");
	expect_bad_domain("localhost");
	expect_bad_domain("com.");
	expect_bad_domain(".example.com");
	expect_bad_domain("example..com");
	expect_bad_domain("example.com..");
	expect_bad_domain("-example.com");
	expect_bad_domain("example-.com");
	expect_bad_domain("example.com-");
	expect_bad_domain("ex_ample.com");
	expect_bad_domain("ex ample.com");
	expect_bad_domain("example.com/x");
	expect_bad_domain("user@example.com");
	expect_bad_domain("1.2.3.4");
	expect_bad_domain("[1.2.3.4]");
	expect_bad_domain("b\xc3\xbc"
	                  "cher.example");
}

static void test_domain_output_too_small(void **state)
{
	char out[8];
	const char *why = NULL;

	/* Must refuse rather than write past out. */
	assert_int_equal(ctl_domain_normalize("example.com", out, sizeof(out), &why), -1);
	assert_non_null(why);
}

/* ---- ages, UTF-8, tables -------------------------------------------- */

static void expect_age(long long secs, const char *want)
{
	char out[24];

	ctl_format_age(secs, out, sizeof(out));
	assert_string_equal(out, want);
}

static void test_format_age(void **state)
{
	expect_age(0, "0s");
	expect_age(5, "5s");
	expect_age(59, "59s");
	expect_age(60, "1m");
	expect_age(185, "3m");
	expect_age(3599, "59m");
	expect_age(3600, "1h");
	expect_age(7300, "2h");
	expect_age(86399, "23h");
	expect_age(86400, "1d");
	expect_age(10 * 86400 + 5, "10d");
	expect_age(-30, "0s"); /* a clock that stepped back */
}

static void test_utf8(void **state)
{
	json_t *j;

	assert_true(ctl_utf8_valid(""));
	assert_true(ctl_utf8_valid("plain"));
	assert_true(ctl_utf8_valid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7"));
	assert_false(ctl_utf8_valid("\xc3"));             /* truncated */
	assert_false(ctl_utf8_valid("\xc0\xaf"));         /* overlong '/' */
	assert_false(ctl_utf8_valid("\xe0\x80\xaf"));     /* overlong '/' */
	assert_false(ctl_utf8_valid("\xed\xa0\x80"));     /* surrogate */
	assert_false(ctl_utf8_valid("\xf4\x90\x80\x80")); /* past U+10FFFF */
	assert_false(ctl_utf8_valid("\xff"));

	j = ctl_json_text("a\xff"
	                  "b\xc3\xa9");
	assert_string_equal(json_string_value(j), "a?b\xc3\xa9");
	json_decref(j);
}

static char *print_table(const struct table *t)
{
	char *out = NULL;
	size_t len = 0;
	FILE *fp = open_memstream(&out, &len);

	assert_non_null(fp);
	table_print(t, fp);
	fclose(fp);
	return out;
}

static void test_table(void **state)
{
	static const char *const head[] = {"ID", "NAME", "NOTE"};
	const char *r1[] = {"1", "acme", ""};
	const char *r2[] = {"12345", NULL, "bad\x1b[31m"};
	const char *r3[] = {"7", "\xc3\xa9t\xc3\xa9", "x"};
	struct table t;
	char *out;

	table_init(&t, 3, head);
	table_add(&t, r1);
	table_add(&t, r2);
	table_add(&t, r3);
	out = print_table(&t);
	/* Padded to the widest cell, two spaces apart, no trailing blanks,
	 * NULL shown as "-", escape bytes defused, UTF-8 counted by characters. */
	assert_string_equal(out, "ID     NAME  NOTE\n"
	                         "1      acme\n"
	                         "12345  -     bad?[31m\n"
	                         "7      \xc3\xa9t\xc3\xa9   x\n");
	free(out);
	table_free(&t);
}

/* ---- credentials ---------------------------------------------------- */

static int is_b64url(char ch)
{
	return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
	       ch == '-' || ch == '_';
}

static void test_credential_format(void **state)
{
	char user[CRED_USER_MAX + 1], secret[CRED_SECRET_LEN + 1];
	size_t i;

	credential_generate("acme", user, secret);
	assert_int_equal(strlen(user), strlen("acme-") + 8);
	assert_memory_equal(user, "acme-", 5);
	for (i = 5; i < strlen(user); i++)
		assert_true((user[i] >= '0' && user[i] <= '9') ||
		            (user[i] >= 'a' && user[i] <= 'f'));

	assert_int_equal(strlen(secret), CRED_SECRET_LEN);
	assert_int_equal(CRED_SECRET_LEN, 43);
	for (i = 0; i < CRED_SECRET_LEN; i++)
		assert_true(is_b64url(secret[i]));
}

static void test_credential_long_tenant(void **state)
{
	char tenant[64], user[CRED_USER_MAX + 1], secret[CRED_SECRET_LEN + 1];

	memset(tenant, 'x', 63);
	tenant[63] = '\0';
	credential_generate(tenant, user, secret);
	/* Still fits the username limit and keeps a random tag after a '-'. */
	assert_true(strlen(user) <= CRED_USER_MAX);
	assert_memory_equal(user, tenant, 20);
	assert_int_equal(user[strlen(user) - 9], '-');
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_credential_unique(void **state)
{
	enum { N = 5000, NUSER = 500 };
	char **secrets = calloc(N, sizeof(char *)), **users = calloc(N, sizeof(char *));
	char user[CRED_USER_MAX + 1], secret[CRED_SECRET_LEN + 1];
	int i, bits[256] = {0};

	assert_non_null(secrets);
	assert_non_null(users);
	for (i = 0; i < N; i++) {
		credential_generate("acme", user, secret);
		secrets[i] = strdup(secret);
		users[i] = strdup(user);
		bits[(unsigned char)secret[0]]++;
	}
	qsort(secrets, N, sizeof(char *), cmp_str);
	for (i = 1; i < N; i++)
		assert_string_not_equal(secrets[i - 1], secrets[i]);
	/* 32-bit username tags: 500 of them collide with probability ~3e-5. */
	qsort(users, NUSER, sizeof(char *), cmp_str);
	for (i = 1; i < NUSER; i++)
		assert_string_not_equal(users[i - 1], users[i]);
	/* The first character spreads over the alphabet (not a constant). */
	for (i = 0; i < 256; i++)
		assert_true(bits[i] < N / 16);
	for (i = 0; i < N; i++) {
		free(secrets[i]);
		free(users[i]);
	}
	free(secrets);
	free(users);
}

static void test_credential_hash_is_sha256(void **state)
{
	/* FIPS 180-2 test vectors. */
	static const unsigned char abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
	                                      0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
	                                      0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
	                                      0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
	static const unsigned char empty[32] = {0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14,
	                                        0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
	                                        0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c,
	                                        0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
	unsigned char out[32];

	credential_hash("abc", 3, out);
	assert_memory_equal(out, abc, 32);
	credential_hash("", 0, out);
	assert_memory_equal(out, empty, 32);
	/* Only len bytes count. */
	credential_hash("abcdef", 3, out);
	assert_memory_equal(out, abc, 32);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tenant_name_examples),
	    cmocka_unit_test(test_tenant_name_matches_schema_regex),
	    cmocka_unit_test(test_domain_normalize),
	    cmocka_unit_test(test_domain_output_too_small),
	    cmocka_unit_test(test_format_age),
	    cmocka_unit_test(test_utf8),
	    cmocka_unit_test(test_table),
	    cmocka_unit_test(test_credential_format),
	    cmocka_unit_test(test_credential_long_tenant),
	    cmocka_unit_test(test_credential_unique),
	    cmocka_unit_test(test_credential_hash_is_sha256),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
