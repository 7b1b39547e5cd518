/* proto: splitting an SMTP command line into verb and argument. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "smtpd/smtpd.h"

struct verb_name {
	const char *name;
	size_t len;
	enum smtp_verb verb;
};

#define VERB(s, v)                                                                                 \
	{                                                                                          \
		s, sizeof(s) - 1, v                                                                \
	}
static const struct verb_name verbs[] = {
    VERB("HELO", SMTP_HELO), VERB("EHLO", SMTP_EHLO),         VERB("MAIL", SMTP_MAIL),
    VERB("RCPT", SMTP_RCPT), VERB("DATA", SMTP_DATA),         VERB("BDAT", SMTP_BDAT),
    VERB("RSET", SMTP_RSET), VERB("NOOP", SMTP_NOOP),         VERB("QUIT", SMTP_QUIT),
    VERB("VRFY", SMTP_VRFY), VERB("EXPN", SMTP_EXPN),         VERB("HELP", SMTP_HELP),
    VERB("AUTH", SMTP_AUTH), VERB("STARTTLS", SMTP_STARTTLS),
};
#undef VERB

static int is_verb_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_';
}

/*
 * Splits line into verb and argument (cmd->arg points into line). Returns 0,
 * or -1 for an empty line, a NUL byte, a verb followed by anything but SP or
 * the end, or MAIL/RCPT without their "FROM:"/"TO:" keyword.
 */
int smtp_parse_command(const char *line, size_t len, struct smtp_cmd *cmd)
{
	size_t vlen = 0, i, rest;
	const char *kw = NULL;
	size_t kwlen = 0;

	cmd->verb = SMTP_UNKNOWN;
	cmd->arg = line + len;
	cmd->arglen = 0;
	if (len == 0 || memchr(line, '\0', len) != NULL)
		return -1;
	while (vlen < len && is_verb_char((unsigned char)line[vlen]))
		vlen++;
	if (vlen == 0 || (vlen < len && line[vlen] != ' '))
		return -1;
	for (i = 0; i < ARRAY_LEN(verbs); i++) {
		if (verbs[i].len == vlen && strncasecmp(line, verbs[i].name, vlen) == 0) {
			cmd->verb = verbs[i].verb;
			break;
		}
	}
	if (cmd->verb == SMTP_MAIL) {
		kw = "FROM:";
		kwlen = 5;
	} else if (cmd->verb == SMTP_RCPT) {
		kw = "TO:";
		kwlen = 3;
	}
	if (kw != NULL) {
		/* exactly one SP, then the keyword and its colon (RFC 5321 4.1.1.2) */
		rest = len - vlen;
		if (rest < 1 + kwlen || strncasecmp(line + vlen + 1, kw, kwlen) != 0)
			return -1;
		cmd->arg = line + vlen + 1 + kwlen;
		cmd->arglen = len - vlen - 1 - kwlen;
		return 0;
	}
	if (vlen < len) {
		cmd->arg = line + vlen + 1;
		cmd->arglen = len - vlen - 1;
	}
	return 0;
}

size_t smtp_reply_line(char *line, size_t size, const char *fmt, va_list ap)
{
	int n = vsnprintf(line, size - 2, fmt, ap);

	if (n < 0)
		return 0;
	if ((size_t)n > size - 3)
		n = (int)(size - 3);
	line[n++] = '\r';
	line[n++] = '\n';
	return (size_t)n;
}
