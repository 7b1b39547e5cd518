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
#include "tenants/ctl_delivery_util.c"
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

/* ---- DKIM selectors and zone records ---------------------------------- */

static void test_dkim_selector_names(void **state)
{
	assert_string_equal(ctl_dkim_selector("rsa", 1), "sg1");
	assert_string_equal(ctl_dkim_selector("rsa", 2), "sg2");
	assert_string_equal(ctl_dkim_selector("ed25519", 1), "sg1e");
	assert_string_equal(ctl_dkim_selector("ed25519", 2), "sg2e");
	assert_null(ctl_dkim_selector("rsa", 0));
	assert_null(ctl_dkim_selector("rsa", 3));
	assert_null(ctl_dkim_selector("dsa", 1));

	assert_int_equal(ctl_dkim_selector_slot("rsa", "sg1"), 1);
	assert_int_equal(ctl_dkim_selector_slot("rsa", "sg2"), 2);
	assert_int_equal(ctl_dkim_selector_slot("ed25519", "sg2e"), 2);
	/* A selector belongs to one algorithm's pair only. */
	assert_int_equal(ctl_dkim_selector_slot("rsa", "sg1e"), 0);
	assert_int_equal(ctl_dkim_selector_slot("ed25519", "sg1"), 0);
	assert_int_equal(ctl_dkim_selector_slot("rsa", "google"), 0);

	assert_true(ctl_dkim_is_platform_selector("sg1"));
	assert_true(ctl_dkim_is_platform_selector("sg2e"));
	assert_false(ctl_dkim_is_platform_selector("sg3"));
	assert_false(ctl_dkim_is_platform_selector("google"));

	/* Every platform selector passes the schema's own check. */
	assert_null(ctl_dkim_selector_problem("sg1"));
	assert_null(ctl_dkim_selector_problem("sg2e"));

	assert_int_equal(ctl_dkim_algorithms("rsa"), CTL_ALG_RSA);
	assert_int_equal(ctl_dkim_algorithms("ed25519"), CTL_ALG_ED25519);
	assert_int_equal(ctl_dkim_algorithms("both"), CTL_ALG_RSA | CTL_ALG_ED25519);
	assert_int_equal(ctl_dkim_algorithms("RSA"), 0);
	assert_int_equal(ctl_dkim_algorithms(""), 0);
}

/* ctl_dkim_selector_problem must agree with the CHECK in 002_dkim.sql. */
static void test_dkim_selector_matches_schema_regex(void **state)
{
	static const char alphabet[] = "az09AZ._-/ \xc3";
	regex_t re;
	char s[80];
	int i, j, n, agree = 0;

	assert_int_equal(regcomp(&re, "^[a-z0-9][a-z0-9-]{0,62}$", REG_EXTENDED | REG_NOSUB), 0);
	srand(11);
	for (i = 0; i < 20000; i++) {
		n = rand() % 70;
		for (j = 0; j < n; j++)
			s[j] = alphabet[rand() % (int)(sizeof(alphabet) - 1)];
		s[n] = '\0';
		assert_int_equal(ctl_dkim_selector_problem(s) == NULL,
		                 regexec(&re, s, 0, NULL, 0) == 0);
		agree += ctl_dkim_selector_problem(s) == NULL;
	}
	regfree(&re);
	assert_true(agree > 100);
}

static void test_dkim_rotation_slot(void **state)
{
	const int free2[2] = {CTL_SLOT_FREE, CTL_SLOT_FREE};
	const int first_used[2] = {CTL_SLOT_IN_USE, CTL_SLOT_FREE};
	const int first_used_second_retired[2] = {CTL_SLOT_IN_USE, CTL_SLOT_RETIRED};
	const int both_used[2] = {CTL_SLOT_IN_USE, CTL_SLOT_IN_USE};
	const int retired_used[2] = {CTL_SLOT_RETIRED, CTL_SLOT_IN_USE};
	const int both_retired[2] = {CTL_SLOT_RETIRED, CTL_SLOT_RETIRED};
	const int retired_free[2] = {CTL_SLOT_RETIRED, CTL_SLOT_FREE};

	/* The idle selector is the other one of the signing key's pair... */
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "sg1", first_used), 2);
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "sg1", first_used_second_retired), 2);
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "sg2", retired_used), 1);
	assert_int_equal(ctl_dkim_rotation_slot("ed25519", "sg2e", retired_used), 1);
	/* ...and never the signing one, even when the other is still published. */
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "sg1", both_used), -1);
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "sg2", both_used), -1);
	/* A signing key on a selector of the customer's own (an import): a free slot first. */
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "google", retired_free), 2);
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "google", first_used), 2);
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "google", both_retired), 1);
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "google", retired_used), 1);
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "google", both_used), -1);
	/* Nothing signing at all. */
	assert_int_equal(ctl_dkim_rotation_slot("rsa", NULL, free2), 1);
	assert_int_equal(ctl_dkim_rotation_slot("ed25519", NULL, first_used), 2);
	/* The Ed25519 pair's selectors mean nothing to an RSA rotation. */
	assert_int_equal(ctl_dkim_rotation_slot("rsa", "sg1e", retired_free), 2);
}

static void test_dkim_txt_value(void **state)
{
	struct buf b;

	buf_init(&b, (size_t)-1);
	ctl_dkim_txt_value("rsa", "MIIB", &b);
	assert_string_equal(b.data, "v=DKIM1; k=rsa; p=MIIB");
	buf_reset(&b);
	ctl_dkim_txt_value("ed25519", "11qY", &b);
	assert_string_equal(b.data, "v=DKIM1; k=ed25519; p=11qY");
	buf_free(&b);
}

/*
 * Reads back ctl_zone_txt_rdata's ("..." "...") the way a zone-file parser
 * does: strings[] gets each character-string unescaped. Returns the count,
 * or -1 when the syntax is wrong.
 */
static int parse_rdata(const char *s, char strings[][300], int max)
{
	int n = 0;
	size_t len;

	if (*s++ != '(')
		return -1;
	for (;;) {
		if (*s == ')')
			return s[1] == '\0' ? n : -1;
		if (n > 0 && *s++ != ' ')
			return -1;
		if (*s++ != '"' || n == max)
			return -1;
		len = 0;
		while (*s != '"') {
			int ch = (unsigned char)*s++;

			if (ch == '\0' || ch < 0x20 || ch > 0x7e || len >= 299)
				return -1;
			if (ch == '\\') {
				if (s[0] >= '0' && s[0] <= '9') {
					if (!(s[1] >= '0' && s[1] <= '9' && s[2] >= '0' &&
					      s[2] <= '9'))
						return -1;
					ch = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
					s += 3;
				} else {
					ch = (unsigned char)*s++;
				}
			}
			strings[n][len++] = (char)ch;
		}
		strings[n][len] = '\0';
		s++;
		n++;
	}
}

static void expect_rdata(const char *value, const char *want)
{
	struct buf b;

	buf_init(&b, (size_t)-1);
	ctl_zone_txt_rdata(value, &b);
	assert_string_equal(b.data, want);
	buf_free(&b);
}

static void test_zone_txt_rdata_examples(void **state)
{
	expect_rdata("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
	             "(\"v=DKIM1; k=ed25519; \" "
	             "\"p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\")");
	expect_rdata("", "(\"\")");
	expect_rdata("p=", "(\"p=\")");
	expect_rdata("no tags", "(\"no tags\")");
	expect_rdata("a\"b\\c\td\xff", "(\"a\\\"b\\\\c\\009d\\255\")");
}

/* Long values: every string at most 255 bytes, and together exactly the value. */
static void test_zone_txt_rdata_split(void **state)
{
	static const size_t lens[] = {0, 1, 254, 255, 256, 392, 509, 510, 511, 765, 766, 1200};
	char strings[8][300], value[1300], joined[1300];
	struct buf b;
	size_t i, k, head = strlen("v=DKIM1; k=rsa; ");
	int n, j;

	buf_init(&b, (size_t)-1);
	for (i = 0; i < ARRAY_LEN(lens); i++) {
		/* The tag header, then a p= of lens[i] base64-ish bytes. */
		snprintf(value, sizeof(value), "v=DKIM1; k=rsa; p=");
		for (k = 0; k < lens[i]; k++)
			value[head + 2 + k] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ+/="[k % 29];
		value[head + 2 + lens[i]] = '\0';
		buf_reset(&b);
		ctl_zone_txt_rdata(value, &b);
		n = parse_rdata(b.data, strings, 8);
		assert_true(n >= 2);
		/* The header stands alone; then full 255-byte strings, the last one shorter. */
		assert_string_equal(strings[0], "v=DKIM1; k=rsa; ");
		joined[0] = '\0';
		for (j = 0; j < n; j++) {
			assert_true(strlen(strings[j]) <= CTL_TXT_STRING_MAX);
			if (j > 0 && j < n - 1)
				assert_int_equal(strlen(strings[j]), CTL_TXT_STRING_MAX);
			strcat(joined, strings[j]);
		}
		assert_string_equal(joined, value);
		assert_int_equal(
		    n, 1 + (int)((lens[i] + 2 + CTL_TXT_STRING_MAX - 1) / CTL_TXT_STRING_MAX));
	}
	/* A value without "p=" is cut at 255 bytes from its start. */
	memset(value, 'x', 600);
	value[600] = '\0';
	buf_reset(&b);
	ctl_zone_txt_rdata(value, &b);
	n = parse_rdata(b.data, strings, 8);
	assert_int_equal(n, 3);
	assert_int_equal(strlen(strings[0]), 255);
	assert_int_equal(strlen(strings[1]), 255);
	assert_int_equal(strlen(strings[2]), 90);
	buf_free(&b);
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

/* ---- delivery commands (ctl_delivery_util.c) -------------------------- */

static void test_pool_name(void **state)
{
	assert_null(ctl_pool_name_problem("main"));
	assert_null(ctl_pool_name_problem("eu-west_2.bulk"));
	assert_non_null(ctl_pool_name_problem(""));
	assert_non_null(ctl_pool_name_problem("Main"));
	assert_non_null(ctl_pool_name_problem("-main"));
	assert_non_null(ctl_pool_name_problem("a b"));
	assert_non_null(ctl_pool_name_problem(
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")); /* 64 */
}

static void test_ip_normalize(void **state)
{
	static const struct {
		const char *in, *out;
	} good[] = {
	    {"192.0.2.25", "192.0.2.25"},     {"127.0.0.2", "127.0.0.2"},
	    {"2001:DB8:0:0::25", "2001:db8::25"}, {"::1", "::1"},
	    {"2001:db8:0:0:0:0:0:1", "2001:db8::1"},
	};
	static const char *const bad[] = {
	    "", "256.1.1.1", "1.2.3", "1.2.3.4.5", "01.2.3.4x", "10.0.0.1/24", " 10.0.0.1",
	    "::ffff:192.0.2.1", "fe80::1%eth0", "[::1]", "example.com", "0.0.0.0", "::",
	    "224.0.0.1", "255.255.255.255", "ff02::1", "2001:db8::1::2",
	};
	char out[64];
	const char *why;
	size_t i;

	for (i = 0; i < ARRAY_LEN(good); i++) {
		why = NULL;
		assert_int_equal(ctl_ip_normalize(good[i].in, out, sizeof(out), &why), 0);
		assert_string_equal(out, good[i].out);
	}
	for (i = 0; i < ARRAY_LEN(bad); i++) {
		why = NULL;
		assert_int_equal(ctl_ip_normalize(bad[i], out, sizeof(out), &why), -1);
		assert_non_null(why);
	}
	/* Too small an output buffer is an error, never a truncated address. */
	assert_int_equal(ctl_ip_normalize("2001:db8::25", out, 5, &why), -1);
}

static void test_address_normalize(void **state)
{
	char out[256], local65[80], long_domain[300];
	const char *why;

	assert_int_equal(ctl_address_normalize("Bob.Smith@Example.NET", out, sizeof(out), &why), 0);
	assert_string_equal(out, "bob.smith@example.net");
	/* Non-ASCII letters are kept as they are (the daemon lower-cases ASCII only). */
	assert_int_equal(ctl_address_normalize("J\xc3\x9crgen@Example.de", out, sizeof(out), &why),
	                 0);
	assert_string_equal(out, "j\xc3\x9crgen@example.de");
	assert_int_equal(ctl_address_normalize("a@[192.0.2.1]", out, sizeof(out), &why), 0);

	memset(local65, 'a', 65);
	snprintf(local65 + 65, sizeof(local65) - 65, "@example.net");
	memset(long_domain, 'b', 260);
	memcpy(long_domain, "a@", 2);
	snprintf(long_domain + 260, sizeof(long_domain) - 260, ".net");
	{
		const char *const bad[] = {"",          "nobody",         "@example.net",
		                           "user@",     "<a@example.net>", "a b@example.net",
		                           "a\t@x.net", "a@localhost",    "a@ex\x7f.net",
		                           "\xff@example.net", local65,   long_domain};
		size_t i;

		for (i = 0; i < ARRAY_LEN(bad); i++) {
			why = NULL;
			assert_int_equal(ctl_address_normalize(bad[i], out, sizeof(out), &why), -1);
			assert_non_null(why);
		}
	}
	/* The output buffer is checked before writing. */
	assert_int_equal(ctl_address_normalize("a@example.net", out, 5, &why), -1);
}

static void test_parse_count(void **state)
{
	long v = -7;

	assert_int_equal(ctl_parse_count("1", 1, 1000, &v), 0);
	assert_int_equal(v, 1);
	assert_int_equal(ctl_parse_count("1000", 1, 1000, &v), 0);
	assert_int_equal(v, 1000);
	assert_int_equal(ctl_parse_count("1001", 1, 1000, &v), -1);
	assert_int_equal(ctl_parse_count("0", 1, 1000, &v), -1);
	assert_int_equal(ctl_parse_count("", 1, 1000, &v), -1);
	assert_int_equal(ctl_parse_count("-1", -5, 1000, &v), -1);
	assert_int_equal(ctl_parse_count("+5", 1, 1000, &v), -1);
	assert_int_equal(ctl_parse_count(" 5", 1, 1000, &v), -1);
	assert_int_equal(ctl_parse_count("5 ", 1, 1000, &v), -1);
	assert_int_equal(ctl_parse_count("12abc", 1, 1000, &v), -1);
	assert_int_equal(ctl_parse_count("99999999999999999999999", 1, 1000, &v), -1);
	assert_int_equal(v, 1000); /* untouched by failures */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pool_name),
	    cmocka_unit_test(test_ip_normalize),
	    cmocka_unit_test(test_address_normalize),
	    cmocka_unit_test(test_parse_count),
	    cmocka_unit_test(test_tenant_name_examples),
	    cmocka_unit_test(test_tenant_name_matches_schema_regex),
	    cmocka_unit_test(test_domain_normalize),
	    cmocka_unit_test(test_domain_output_too_small),
	    cmocka_unit_test(test_format_age),
	    cmocka_unit_test(test_utf8),
	    cmocka_unit_test(test_table),
	    cmocka_unit_test(test_dkim_selector_names),
	    cmocka_unit_test(test_dkim_selector_matches_schema_regex),
	    cmocka_unit_test(test_dkim_rotation_slot),
	    cmocka_unit_test(test_dkim_txt_value),
	    cmocka_unit_test(test_zone_txt_rdata_examples),
	    cmocka_unit_test(test_zone_txt_rdata_split),
	    cmocka_unit_test(test_credential_format),
	    cmocka_unit_test(test_credential_long_tenant),
	    cmocka_unit_test(test_credential_unique),
	    cmocka_unit_test(test_credential_hash_is_sha256),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
