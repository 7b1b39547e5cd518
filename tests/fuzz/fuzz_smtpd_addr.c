/*
 * Fuzzes the command line splitter, the MAIL/RCPT argument parsers, the
 * domain check and SASL decoding. Checks that replies are short printable
 * ASCII and that accepted paths are well-formed.
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

static void check_error(const struct smtp_error *err)
{
	size_t i, n = strnlen(err->text, sizeof(err->text));

	CHECK(n > 0 && n <= 150);
	for (i = 0; i < n; i++)
		CHECK(err->text[i] >= 0x20 && err->text[i] < 0x7f);
	CHECK(err->code >= 500 && err->code <= 555);
	CHECK(err->enh != NULL && err->enh[0] == '5');
}

static void check_path(const struct smtp_path *p, int utf8_allowed)
{
	size_t n = strnlen(p->addr, sizeof(p->addr));
	size_t i;

	CHECK(n <= SMTP_ADDR_MAX);
	if (p->is_null) {
		CHECK(n == 0);
		return;
	}
	CHECK(p->local_len > 0 && p->local_len <= 64);
	CHECK(p->addr[p->local_len] == '@');
	CHECK(p->domain == p->addr + p->local_len + 1);
	CHECK(!p->utf8 || utf8_allowed);
	for (i = 0; i < n; i++)
		CHECK((unsigned char)p->addr[i] >= 0x20 && p->addr[i] != 0x7f);
	if (p->domain[0] != '[') {
		for (i = 0; p->domain[i]; i++)
			CHECK(!(p->domain[i] >= 'A' && p->domain[i] <= 'Z'));
		if (!p->utf8)
			CHECK(smtp_domain_valid(p->domain, strlen(p->domain)));
	}
	/* the local part has no relay forms */
	CHECK(memchr(p->addr, '%', p->local_len) == NULL);
	CHECK(memchr(p->addr, '!', p->local_len) == NULL);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	const char *s = (const char *)data;
	struct smtp_cmd cmd;
	struct smtp_path path;
	struct smtp_mail_params params;
	struct smtp_error err;
	char user[SASL_MAX_FIELD + 1], pass[SASL_MAX_FIELD + 1];

	if (smtp_parse_command(s, size, &cmd) == 0) {
		CHECK(cmd.arg >= s && cmd.arg + cmd.arglen <= s + size);
		CHECK(memchr(s, 0, size) == NULL);
	}
	memset(&err, 0, sizeof(err));
	if (smtp_parse_mail_from(s, size, 256, &path, &params, &err) == 0) {
		check_path(&path, params.smtputf8);
		CHECK(params.size >= -1);
		CHECK(params.body == 0 || params.body == 7 || params.body == 8);
	} else {
		check_error(&err);
	}
	memset(&err, 0, sizeof(err));
	if (smtp_parse_rcpt_to(s, size, 256, size & 1, &path, &err) == 0) {
		check_path(&path, size & 1);
		CHECK(!path.is_null);
	} else {
		check_error(&err);
	}
	smtp_domain_valid(s, size);
	if (sasl_plain_decode(s, size, user, pass) == 0) {
		CHECK(user[0] && pass[0]);
		CHECK(strlen(user) <= SASL_MAX_FIELD && strlen(pass) <= SASL_MAX_FIELD);
	}
	if (sasl_login_decode(s, size, user) == 0)
		CHECK(user[0] && strlen(user) <= SASL_MAX_FIELD);
	return 0;
}
