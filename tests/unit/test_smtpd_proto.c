/* Unit tests for command line splitting (smtpd/proto.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "smtpd/smtpd.h"

struct cmd_case {
	const char *line;
	size_t len; /* 0: strlen */
	int rc;
	enum smtp_verb verb;
	const char *arg;
};

static const struct cmd_case cases[] = {
    {"EHLO client.example", 0, 0, SMTP_EHLO, "client.example"},
    {"ehlo client.example", 0, 0, SMTP_EHLO, "client.example"},
    {"HeLo x", 0, 0, SMTP_HELO, "x"},
    {"EHLO", 0, 0, SMTP_EHLO, ""},
    {"EHLO  two spaces", 0, 0, SMTP_EHLO, " two spaces"},
    {"QUIT", 0, 0, SMTP_QUIT, ""},
    {"DATA", 0, 0, SMTP_DATA, ""},
    {"DATA ", 0, 0, SMTP_DATA, ""},
    {"RSET", 0, 0, SMTP_RSET, ""},
    {"NOOP hello", 0, 0, SMTP_NOOP, "hello"},
    {"VRFY user", 0, 0, SMTP_VRFY, "user"},
    {"EXPN list", 0, 0, SMTP_EXPN, "list"},
    {"HELP", 0, 0, SMTP_HELP, ""},
    {"STARTTLS", 0, 0, SMTP_STARTTLS, ""},
    {"starttls", 0, 0, SMTP_STARTTLS, ""},
    {"AUTH PLAIN AHVzZXIAcHc=", 0, 0, SMTP_AUTH, "PLAIN AHVzZXIAcHc="},
    {"BDAT 100 LAST", 0, 0, SMTP_BDAT, "100 LAST"},
    {"MAIL FROM:<a@b.example>", 0, 0, SMTP_MAIL, "<a@b.example>"},
    {"mail from:<a@b.example> SIZE=10", 0, 0, SMTP_MAIL, "<a@b.example> SIZE=10"},
    {"MAIL FROM: <a@b.example>", 0, 0, SMTP_MAIL, " <a@b.example>"},
    {"MAIL FROM:", 0, 0, SMTP_MAIL, ""},
    {"RCPT TO:<x@y.example>", 0, 0, SMTP_RCPT, "<x@y.example>"},
    {"Rcpt To:<x@y.example>", 0, 0, SMTP_RCPT, "<x@y.example>"},
    /* unknown verbs are not syntax errors */
    {"FOO bar", 0, 0, SMTP_UNKNOWN, "bar"},
    {"GET / HTTP/1.1", 0, 0, SMTP_UNKNOWN, "/ HTTP/1.1"},
    {"NOOPX", 0, 0, SMTP_UNKNOWN, ""},
    {"EHL0 x", 0, 0, SMTP_UNKNOWN, "x"},
    /* unusable lines */
    {"", 0, -1, SMTP_UNKNOWN, NULL},
    {" EHLO x", 0, -1, SMTP_UNKNOWN, NULL},
    {"QUIT\tnow", 0, -1, SMTP_UNKNOWN, NULL},
    {"QUIT\r", 0, -1, SMTP_UNKNOWN, NULL},
    {"DATA\0", 5, -1, SMTP_UNKNOWN, NULL},
    {"NO\0OP", 5, -1, SMTP_UNKNOWN, NULL},
    {"EHLO a\0b", 8, -1, SMTP_UNKNOWN, NULL},
    {"\x16\x03\x01\x02\x00", 5, -1, SMTP_UNKNOWN, NULL},
    {"MAIL", 0, -1, SMTP_UNKNOWN, NULL},
    {"MAIL <a@b>", 0, -1, SMTP_UNKNOWN, NULL},
    {"MAIL FROM <a@b>", 0, -1, SMTP_UNKNOWN, NULL},
    {"MAIL FROM :<a@b>", 0, -1, SMTP_UNKNOWN, NULL},
    {"MAIL  FROM:<a@b>", 0, -1, SMTP_UNKNOWN, NULL},
    {"MAIL TO:<a@b>", 0, -1, SMTP_UNKNOWN, NULL},
    {"RCPT FROM:<a@b>", 0, -1, SMTP_UNKNOWN, NULL},
    {"RCPT TO", 0, -1, SMTP_UNKNOWN, NULL},
};

static void test_commands(void **state)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(cases); i++) {
		const struct cmd_case *c = &cases[i];
		size_t len = c->len ? c->len : strlen(c->line);
		struct smtp_cmd cmd;
		int rc;

		print_message("line [%s]\n", c->line);
		rc = smtp_parse_command(c->line, len, &cmd);
		assert_int_equal(rc, c->rc);
		if (rc == -1)
			continue;
		assert_int_equal(cmd.verb, c->verb);
		assert_int_equal(cmd.arglen, strlen(c->arg));
		assert_memory_equal(cmd.arg, c->arg, cmd.arglen);
		/* arg points into the line */
		assert_true(cmd.arg >= c->line && cmd.arg + cmd.arglen <= c->line + len);
	}
}

/* A line that is not NUL-terminated is read only up to len. */
static void test_len_respected(void **state)
{
	static const char line[] = "QUIT now please";
	struct smtp_cmd cmd;

	assert_int_equal(smtp_parse_command(line, 4, &cmd), 0);
	assert_int_equal(cmd.verb, SMTP_QUIT);
	assert_int_equal(cmd.arglen, 0);
	assert_int_equal(smtp_parse_command(line, 8, &cmd), 0);
	assert_int_equal(cmd.arglen, 3);
	assert_memory_equal(cmd.arg, "now", 3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_commands),
	    cmocka_unit_test(test_len_respected),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
