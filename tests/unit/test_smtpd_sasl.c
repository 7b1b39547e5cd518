/* Unit tests for AUTH PLAIN / LOGIN decoding (smtpd/sasl.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "smtpd/smtpd.h"

/* base64 of n raw bytes into a static buffer */
static const char *b64(const void *raw, size_t n)
{
	static char out[4096];
	base64_encode(raw, n, out);
	return out;
}
#define B64(lit) b64((lit), sizeof(lit) - 1)

static void test_plain_ok(void **state)
{
	char user[SASL_MAX_FIELD + 1], pass[SASL_MAX_FIELD + 1];
	const char *e;

	e = B64("\0tenant-1\0s3cret");
	assert_int_equal(sasl_plain_decode(e, strlen(e), user, pass), 0);
	assert_string_equal(user, "tenant-1");
	assert_string_equal(pass, "s3cret");

	/* authzid equal to authcid is the same identity */
	e = B64("tenant-1\0tenant-1\0pw");
	assert_int_equal(sasl_plain_decode(e, strlen(e), user, pass), 0);
	assert_string_equal(user, "tenant-1");
	assert_string_equal(pass, "pw");

	/* RFC 4616 example shape; the password may hold any non-NUL byte */
	e = B64("\0tim\0tanstaaf \xc3\xa9:");
	assert_int_equal(sasl_plain_decode(e, strlen(e), user, pass), 0);
	assert_string_equal(user, "tim");
	assert_string_equal(pass, "tanstaaf \xc3\xa9:");
}

static void test_plain_refused(void **state)
{
	static const struct {
		const char *name;
		const char *raw;
		size_t len;
	} bad[] = {
#define R(name, lit) {name, lit, sizeof(lit) - 1}
	    R("other authzid", "admin\0tenant-1\0pw"),
	    R("authzid prefix of authcid", "tenant\0tenant-1\0pw"),
	    R("empty user", "\0\0pw"),
	    R("empty password", "\0user\0"),
	    R("one NUL only", "\0userpw"),
	    R("no NUL", "userpw"),
	    R("third NUL", "\0user\0pw\0"),
	    R("NUL inside password", "\0user\0p\0w"),
	    R("empty", ""),
#undef R
	};
	char user[SASL_MAX_FIELD + 1], pass[SASL_MAX_FIELD + 1];
	size_t i;

	for (i = 0; i < ARRAY_LEN(bad); i++) {
		const char *e = b64(bad[i].raw, bad[i].len);
		print_message("case %s\n", bad[i].name);
		assert_int_equal(sasl_plain_decode(e, strlen(e), user, pass), -1);
		assert_string_equal(user, "");
		assert_string_equal(pass, "");
	}
}

static void test_plain_bad_base64(void **state)
{
	char user[SASL_MAX_FIELD + 1], pass[SASL_MAX_FIELD + 1];
	static const char *bad[] = {
	    "AHVzZXIAcHc",    /* missing padding */
	    "AHVzZXIAcHc= ",  /* trailing space */
	    "AHVz ZXIAcHc=",  /* inner space */
	    "AHVzZXIAcHc=\r", /* CR */
	    "*",              /* the cancel token is the session's business */
	    "=",              /* empty response */
	    "AHVzZX=AcHc=",   /* padding in the middle */
	};
	size_t i;

	/* the good one, for reference */
	assert_int_equal(sasl_plain_decode("AHVzZXIAcHc=", 12, user, pass), 0);
	assert_string_equal(user, "user");
	for (i = 0; i < ARRAY_LEN(bad); i++)
		assert_int_equal(sasl_plain_decode(bad[i], strlen(bad[i]), user, pass), -1);
}

static void test_plain_field_limits(void **state)
{
	char raw[1024], user[SASL_MAX_FIELD + 1], pass[SASL_MAX_FIELD + 1];
	const char *e;
	size_t n;

	/* 255-octet user and password: the longest allowed, with the same authzid */
	memset(raw, 'u', 255);
	raw[255] = '\0';
	memset(raw + 256, 'u', 255);
	raw[511] = '\0';
	memset(raw + 512, 'p', 255);
	n = 767;
	e = b64(raw, n);
	assert_int_equal(sasl_plain_decode(e, strlen(e), user, pass), 0);
	assert_int_equal(strlen(user), 255);
	assert_int_equal(strlen(pass), 255);

	/* 256-octet password */
	raw[0] = '\0';
	memset(raw + 1, 'u', 10);
	raw[11] = '\0';
	memset(raw + 12, 'p', 256);
	e = b64(raw, 12 + 256);
	assert_int_equal(sasl_plain_decode(e, strlen(e), user, pass), -1);

	/* 256-octet user */
	raw[0] = '\0';
	memset(raw + 1, 'u', 256);
	raw[257] = '\0';
	raw[258] = 'p';
	e = b64(raw, 259);
	assert_int_equal(sasl_plain_decode(e, strlen(e), user, pass), -1);

	/* far too long input is refused before decoding */
	memset(raw, 'A', sizeof(raw));
	assert_int_equal(sasl_plain_decode(raw, sizeof(raw), user, pass), -1);
}

static void test_login(void **state)
{
	char out[SASL_MAX_FIELD + 1], raw[300];
	const char *e;

	e = B64("tenant-1");
	assert_int_equal(sasl_login_decode(e, strlen(e), out), 0);
	assert_string_equal(out, "tenant-1");
	assert_int_equal(sasl_login_decode("dGVuYW50LTE", 11, out), -1); /* no padding */
	assert_int_equal(sasl_login_decode("", 0, out), -1);
	assert_int_equal(sasl_login_decode("=", 1, out), -1);
	e = B64("a\0b");
	assert_int_equal(sasl_login_decode(e, strlen(e), out), -1);
	memset(raw, 'x', sizeof(raw));
	e = b64(raw, 255);
	assert_int_equal(sasl_login_decode(e, strlen(e), out), 0);
	assert_int_equal(strlen(out), 255);
	e = b64(raw, 256);
	assert_int_equal(sasl_login_decode(e, strlen(e), out), -1);
	assert_string_equal(out, "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plain_ok),
	    cmocka_unit_test(test_plain_refused),
	    cmocka_unit_test(test_plain_bad_base64),
	    cmocka_unit_test(test_plain_field_limits),
	    cmocka_unit_test(test_login),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
