/*
 * test_queue_dsn: reading bounces (RFC 3464) and complaints (RFC 5965) as
 * real MTAs write them (Postfix, Exim, a feedback loop), cut, folded,
 * encoded and wrapped; and the VERP address back to a queue id.
 *
 * The messages are written with LF line ends and checked again with CRLF.
 * Each is parsed from an exactly sized heap copy, so a read past len shows
 * under valgrind and ASan.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/deliver_int.h"

#define VERP "bounce+0123456789ABCDEFGHIJ.0@rp.acme.example"

static const char postfix_dsn[] =
    "Return-Path: <>\n"
    "Received: by mx1.remote.example (Postfix)\n"
    "\tid 4SVh3N0bXyz; Tue, 14 Nov 2023 09:12:01 +0100 (CET)\n"
    "Date: Tue, 14 Nov 2023 09:12:01 +0100 (CET)\n"
    "From: MAILER-DAEMON@mx1.remote.example (Mail Delivery System)\n"
    "Subject: Undelivered Mail Returned to Sender\n"
    "To: " VERP "\n"
    "Auto-Submitted: auto-replied\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/report; report-type=delivery-status;\n"
    "\tboundary=\"4SVh3N0bXyz.1699949521/mx1.remote.example\"\n"
    "Content-Transfer-Encoding: 8bit\n"
    "Message-Id: <20231114081201.4SVh3N0bXyz@mx1.remote.example>\n"
    "\n"
    "This is a MIME-encapsulated message.\n"
    "\n"
    "--4SVh3N0bXyz.1699949521/mx1.remote.example\n"
    "Content-Description: Notification\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "This is the mail system at host mx1.remote.example.\n"
    "\n"
    "Your message could not be delivered to one or more recipients.\n"
    "\n"
    "<nobody@remote.example>: host mx2.remote.example[198.51.100.7] said: 550\n"
    "    5.1.1 <nobody@remote.example>: Recipient address rejected: User unknown\n"
    "\n"
    "--4SVh3N0bXyz.1699949521/mx1.remote.example\n"
    "Content-Description: Delivery report\n"
    "Content-Type: message/delivery-status\n"
    "\n"
    "Reporting-MTA: dns; mx1.remote.example\n"
    "X-Postfix-Queue-ID: 4SVh3N0bXyz\n"
    "X-Postfix-Sender: rfc822; " VERP "\n"
    "Arrival-Date: Tue, 14 Nov 2023 09:11:58 +0100 (CET)\n"
    "\n"
    "Final-Recipient: rfc822; nobody@remote.example\n"
    "Original-Recipient: rfc822;Nobody@Remote.example\n"
    "Action: failed\n"
    "Status: 5.1.1\n"
    "Remote-MTA: dns; mx2.remote.example\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <nobody@remote.example>: Recipient address\n"
    "    rejected: User unknown in local recipient table\n"
    "\n"
    "--4SVh3N0bXyz.1699949521/mx1.remote.example\n"
    "Content-Description: Undelivered Message Headers\n"
    "Content-Type: text/rfc822-headers\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "Return-Path: <" VERP ">\n"
    "Received: from out1.sendgate.example (out1.sendgate.example [192.0.2.25])\n"
    "\tby mx1.remote.example (Postfix) with ESMTPS id 4SVh3N0bXyz\n"
    "\tfor <nobody@remote.example>; Tue, 14 Nov 2023 09:11:58 +0100 (CET)\n"
    "From: Acme News <news@acme.example>\n"
    "To: \"Nobody, Really\" <nobody@remote.example>, other@remote.example\n"
    "Subject: Your November newsletter\n"
    "Message-ID: <nl-2023-11.7f3a@acme.example>\n"
    "Date: Tue, 14 Nov 2023 08:11:57 +0000\n"
    "\n"
    "--4SVh3N0bXyz.1699949521/mx1.remote.example--\n";

/* Exim relaying to a Gmail-like receiver: one hard failure, one full mailbox. */
static const char exim_dsn[] =
    "Return-path: <>\n"
    "From: Mail Delivery System <Mailer-Daemon@relay.example.net>\n"
    "To: bounce+0123456789ABCDEFGHIJ@rp.acme.example\n"
    "Subject: Mail delivery failed: returning message to sender\n"
    "Content-Type: multipart/report; report-type=delivery-status; "
    "boundary=1699949600-eximdsn-1804289383\n"
    "MIME-Version: 1.0\n"
    "\n"
    "--1699949600-eximdsn-1804289383\n"
    "Content-type: text/plain; charset=us-ascii\n"
    "\n"
    "This message was created automatically by mail delivery software.\n"
    "\n"
    "  ghost@gmail.example\n"
    "    host gmail-smtp-in.l.gmail.example [203.0.113.26]\n"
    "    SMTP error from remote mail server after RCPT TO:<ghost@gmail.example>:\n"
    "    550-5.1.1 The email account that you tried to reach does not exist.\n"
    "\n"
    "--1699949600-eximdsn-1804289383\n"
    "Content-type: message/delivery-status\n"
    "\n"
    "Reporting-MTA: dns; relay.example.net\n"
    "\n"
    "Action: failed\n"
    "Final-Recipient: rfc822;ghost@gmail.example\n"
    "Status: 5.1.1\n"
    "Remote-MTA: dns; gmail-smtp-in.l.gmail.example\n"
    "Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not "
    "exist.\n"
    "\n"
    "Action: delayed\n"
    "Final-Recipient: rfc822;<full@gmail.example>\n"
    "Status: 4.2.2\n"
    "Remote-MTA: dns; alt1.gmail-smtp-in.l.gmail.example\n"
    "Diagnostic-Code: smtp; 452-4.2.2 The recipient's inbox is out of storage space.\n"
    "Will-Retry-Until: Wed, 15 Nov 2023 09:13:20 +0000\n"
    "\n"
    "--1699949600-eximdsn-1804289383\n"
    "Content-type: message/rfc822\n"
    "\n"
    "Return-path: <bounce+0123456789ABCDEFGHIJ@rp.acme.example>\n"
    "From: news@acme.example\n"
    "To: ghost@gmail.example, full@gmail.example\n"
    "Message-Id: <two@acme.example>\n"
    "Subject: hello\n"
    "\n"
    "Body line.\n"
    "\n"
    "--1699949600-eximdsn-1804289383--\n";

/* A feedback loop's complaint (RFC 5965): ours, not the RFC's sample. */
static const char arf_report[] =
    "Return-Path: <>\n"
    "From: Feedback Loop <fbl@mailbox.example>\n"
    "To: fbl-reports@acme.example\n"
    "Subject: Complaint about a message from 192.0.2.25\n"
    "Date: Wed, 15 Nov 2023 10:00:00 +0000\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/report; report-type=feedback-report;\n"
    "    boundary=\"----=_FBL_0042_part\"\n"
    "\n"
    "------=_FBL_0042_part\n"
    "Content-Type: text/plain; charset=\"us-ascii\"\n"
    "Content-Transfer-Encoding: 7bit\n"
    "\n"
    "A recipient at mailbox.example marked the attached message as spam.\n"
    "\n"
    "------=_FBL_0042_part\n"
    "Content-Type: message/feedback-report\n"
    "\n"
    "Feedback-Type: Abuse\n"
    "User-Agent: MailboxFBL/3.2\n"
    "Version: 1\n"
    "Original-Mail-From: <bounce+0123456789ABCDEFGHIJ.3@rp.acme.example>\n"
    "Original-Rcpt-To: <reader@mailbox.example>\n"
    "Arrival-Date: Wed, 15 Nov 2023 09:58:12 +0000\n"
    "Reporting-MTA: dns; fbl.mailbox.example\n"
    "Source-IP: 192.0.2.25\n"
    "Reported-Domain: acme.example\n"
    "\n"
    "------=_FBL_0042_part\n"
    "Content-Type: message/rfc822\n"
    "Content-Disposition: inline\n"
    "\n"
    "Return-Path: <bounce+0123456789ABCDEFGHIJ.3@rp.acme.example>\n"
    "Received: from out1.sendgate.example by mx.mailbox.example; Wed, 15 Nov 2023\n"
    "From: Acme Deals <deals@acme.example>\n"
    "To: Reader <reader@mailbox.example>\n"
    "Subject: Spring sale\n"
    "Message-ID: <deal-42@acme.example>\n"
    "\n"
    "Buy now.\n"
    "------=_FBL_0042_part--\n";

/* The same text with CRLF line ends, in b (freed by the caller). */
static void to_crlf(const char *lf, struct buf *b)
{
	buf_init(b, 1 << 22);
	for (; *lf != '\0'; lf++) {
		if (*lf == '\n')
			assert_int_equal(buf_append(b, "\r", 1), 0);
		assert_int_equal(buf_append(b, lf, 1), 0);
	}
}

/* dsn_parse over an exactly sized copy of (p, n): reads past n are caught. */
static int parse_n(const char *p, size_t n, struct dsn_report *r, char *err, size_t errlen)
{
	char *copy = malloc(n > 0 ? n : 1);
	int rc;

	assert_non_null(copy);
	memcpy(copy, p, n);
	rc = dsn_parse(copy, n, r, err, errlen);
	free(copy);
	return rc;
}

static int parse_str(const char *s, struct dsn_report *r, char *err, size_t errlen)
{
	return parse_n(s, strlen(s), r, err, errlen);
}

/* Every text field is NUL-terminated inside its array and free of control bytes. */
static void check_clean(const char *s, size_t size)
{
	size_t n = strnlen(s, size);

	assert_true(n < size);
	for (size_t i = 0; i < n; i++)
		assert_true((unsigned char)s[i] >= 0x20 && s[i] != 0x7f);
}

static void check_report_clean(const struct dsn_report *r)
{
	assert_true(r->nrcpts <= DSN_MAX_RCPTS);
	check_clean(r->reporting_mta, sizeof(r->reporting_mta));
	check_clean(r->feedback_type, sizeof(r->feedback_type));
	check_clean(r->user_agent, sizeof(r->user_agent));
	check_clean(r->arf_original_rcpt_to, sizeof(r->arf_original_rcpt_to));
	check_clean(r->arf_original_mail_from, sizeof(r->arf_original_mail_from));
	check_clean(r->orig_return_path, sizeof(r->orig_return_path));
	check_clean(r->orig_message_id, sizeof(r->orig_message_id));
	check_clean(r->orig_to, sizeof(r->orig_to));
	for (size_t i = 0; i < r->nrcpts; i++) {
		const struct dsn_rcpt *rc = &r->rcpts[i];
		check_clean(rc->final_recipient, sizeof(rc->final_recipient));
		check_clean(rc->original_recipient, sizeof(rc->original_recipient));
		check_clean(rc->status, sizeof(rc->status));
		check_clean(rc->diagnostic, sizeof(rc->diagnostic));
		check_clean(rc->remote_mta, sizeof(rc->remote_mta));
	}
}

static void check_postfix(const struct dsn_report *r)
{
	const struct dsn_rcpt *rc = &r->rcpts[0];

	assert_int_equal(r->kind, DSN_DELIVERY);
	assert_string_equal(r->reporting_mta, "mx1.remote.example");
	assert_int_equal(r->nrcpts, 1);
	assert_string_equal(rc->final_recipient, "nobody@remote.example");
	assert_string_equal(rc->original_recipient, "Nobody@Remote.example");
	assert_int_equal(rc->action, DSN_ACTION_FAILED);
	assert_string_equal(rc->status, "5.1.1");
	assert_true(dsn_status_is_hard(rc->status));
	assert_string_equal(rc->remote_mta, "mx2.remote.example");
	/* Folded over two lines: one space where the line break was. */
	assert_string_equal(rc->diagnostic, "550 5.1.1 <nobody@remote.example>: Recipient address "
	                                    "rejected: User unknown in local recipient table");
	assert_string_equal(r->orig_return_path, VERP);
	assert_string_equal(r->orig_message_id, "<nl-2023-11.7f3a@acme.example>");
	assert_string_equal(r->orig_to, "nobody@remote.example");
	assert_string_equal(r->feedback_type, "");
	assert_string_equal(r->user_agent, "");
	assert_string_equal(r->arf_original_rcpt_to, "");
	check_report_clean(r);
}

static void test_postfix(void **state)
{
	struct dsn_report r;
	struct buf crlf;
	char err[128];

	assert_int_equal(parse_str(postfix_dsn, &r, err, sizeof(err)), 0);
	check_postfix(&r);
	assert_string_equal(err, "");

	to_crlf(postfix_dsn, &crlf);
	assert_int_equal(parse_n(crlf.data, crlf.len, &r, err, sizeof(err)), 0);
	check_postfix(&r);
	buf_free(&crlf);

	/* err may be left out. */
	assert_int_equal(dsn_parse(postfix_dsn, strlen(postfix_dsn), &r, NULL, 0), 0);
	check_postfix(&r);
}

static void check_exim(const struct dsn_report *r)
{
	assert_int_equal(r->kind, DSN_DELIVERY);
	assert_string_equal(r->reporting_mta, "relay.example.net");
	assert_int_equal(r->nrcpts, 2);

	assert_string_equal(r->rcpts[0].final_recipient, "ghost@gmail.example");
	assert_string_equal(r->rcpts[0].original_recipient, "");
	assert_int_equal(r->rcpts[0].action, DSN_ACTION_FAILED);
	assert_string_equal(r->rcpts[0].status, "5.1.1");
	assert_string_equal(r->rcpts[0].remote_mta, "gmail-smtp-in.l.gmail.example");
	assert_string_equal(r->rcpts[0].diagnostic,
	                    "550-5.1.1 The email account that you tried to reach does not exist.");

	assert_string_equal(r->rcpts[1].final_recipient, "full@gmail.example");
	assert_int_equal(r->rcpts[1].action, DSN_ACTION_DELAYED);
	assert_string_equal(r->rcpts[1].status, "4.2.2");
	assert_false(dsn_status_is_hard(r->rcpts[1].status));
	assert_string_equal(r->rcpts[1].remote_mta, "alt1.gmail-smtp-in.l.gmail.example");
	assert_string_equal(r->rcpts[1].diagnostic,
	                    "452-4.2.2 The recipient's inbox is out of storage space.");

	assert_string_equal(r->orig_return_path, "bounce+0123456789ABCDEFGHIJ@rp.acme.example");
	assert_string_equal(r->orig_message_id, "<two@acme.example>");
	assert_string_equal(r->orig_to, "ghost@gmail.example");
	check_report_clean(r);
}

static void test_exim_two_recipients(void **state)
{
	struct dsn_report r;
	struct buf crlf;
	char err[128];

	/* The boundary is an unquoted token here. */
	assert_int_equal(parse_str(exim_dsn, &r, err, sizeof(err)), 0);
	check_exim(&r);

	to_crlf(exim_dsn, &crlf);
	assert_int_equal(parse_n(crlf.data, crlf.len, &r, err, sizeof(err)), 0);
	check_exim(&r);
	buf_free(&crlf);
}

static void test_status_from_diagnostic(void **state)
{
	static const char msg[] =
	    "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n"
	    "\n"
	    "--b\n"
	    "Content-Type: message/delivery-status\n"
	    "\n"
	    "Reporting-MTA: dns;gw.example.org\n"
	    "\n"
	    "Final-Recipient: RFC822; a@example.org\n"
	    "Action: Failed\n"
	    "Diagnostic-Code: smtp;\n"
	    "\t550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found\n"
	    "\n"
	    "Final-Recipient: rfc822; b@example.org\n"
	    "Action: failed\n"
	    "Status: 5.0\n"
	    "Diagnostic-Code: smtp; 552 mailbox full, see 5.2.2.\n"
	    "\n"
	    "Final-Recipient: rfc822; c@example.org\n"
	    "Action: failed\n"
	    "Status: 5.7.1 (delivery not authorized)\n"
	    "\n"
	    "Final-Recipient: rfc822; d@example.org\n"
	    "Action: failed\n"
	    "Diagnostic-Code: X-Unix; 192.168.5.1.1 refused, no code\n"
	    "\n"
	    "--b--\n";
	struct dsn_report r;
	char err[128];

	assert_int_equal(parse_str(msg, &r, err, sizeof(err)), 0);
	assert_string_equal(r.reporting_mta, "gw.example.org");
	assert_int_equal(r.nrcpts, 4);
	/* Status missing: taken from the reply text (folded, its type case aside). */
	assert_string_equal(r.rcpts[0].final_recipient, "a@example.org");
	assert_int_equal(r.rcpts[0].action, DSN_ACTION_FAILED);
	assert_string_equal(r.rcpts[0].diagnostic,
	                    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found");
	assert_string_equal(r.rcpts[0].status, "5.1.10");
	assert_true(dsn_status_is_hard(r.rcpts[0].status));
	/* A malformed Status is dropped, then the text has one at a sentence's end. */
	assert_string_equal(r.rcpts[1].status, "5.2.2");
	/* A comment after the status is not part of it. */
	assert_string_equal(r.rcpts[2].status, "5.7.1");
	/* Numbers that only look like codes are not codes. */
	assert_string_equal(r.rcpts[3].status, "");
	assert_string_equal(r.rcpts[3].diagnostic, "192.168.5.1.1 refused, no code");
}

static void test_content_type_syntax(void **state)
{
	/* Comments, spaces around '=', a quoted report-type, upper case. */
	static const char msg[] =
	    "content-type: Multipart/Report (bounce) ; Report-Type = \"Delivery-Status\" (x);\n"
	    "  charset=us-ascii; boundary = simple-boundary (the one)\n"
	    "\n"
	    "preamble line\n"
	    "--simple-boundary-not\n"
	    "--simple-boundary \n"
	    "Content-Type: message/delivery-status (machine part)\n"
	    "\n"
	    "Reporting-MTA: dns; m.example\n"
	    "\n"
	    "Final-Recipient: rfc822; x@example.com\n"
	    "Action: expanded\n"
	    "Status: 2.0.0\n"
	    "--simple-boundary--   \n"
	    "epilogue\n";
	struct dsn_report r;
	char err[128];

	assert_int_equal(parse_str(msg, &r, err, sizeof(err)), 0);
	assert_int_equal(r.kind, DSN_DELIVERY);
	assert_string_equal(r.reporting_mta, "m.example");
	assert_int_equal(r.nrcpts, 1);
	assert_int_equal(r.rcpts[0].action, DSN_ACTION_EXPANDED);
	assert_string_equal(r.rcpts[0].status, "2.0.0");
}

static void test_nested_in_mixed(void **state)
{
	/* The inner boundary extends the outer one: not a delimiter of it. */
	static const char msg[] = "From: postmaster@gw.example.org\n"
	                          "Content-Type: multipart/mixed; boundary=\"==MIX\"\n"
	                          "\n"
	                          "--==MIX\n"
	                          "Content-Type: text/plain\n"
	                          "\n"
	                          "Your message bounced; details below.\n"
	                          "--==MIX\n"
	                          "Content-Type: multipart/report; report-type=delivery-status;\n"
	                          "  boundary=\"==MIX.r\"\n"
	                          "\n"
	                          "--==MIX.r\n"
	                          "Content-Type: message/delivery-status\n"
	                          "\n"
	                          "Reporting-MTA: dns; gw.example.org\n"
	                          "\n"
	                          "Final-Recipient: rfc822; lost@example.org\n"
	                          "Action: relayed\n"
	                          "Status: 2.0.0\n"
	                          "\n"
	                          "--==MIX.r\n"
	                          "Content-Type: message/rfc822-headers\n"
	                          "\n"
	                          "Return-Path: <" VERP ">\n"
	                          "To: lost@example.org\n"
	                          "--==MIX.r--\n"
	                          "--==MIX--\n";
	struct dsn_report r;
	struct buf crlf;
	char err[128];

	assert_int_equal(parse_str(msg, &r, err, sizeof(err)), 0);
	assert_int_equal(r.kind, DSN_DELIVERY);
	assert_int_equal(r.nrcpts, 1);
	assert_string_equal(r.rcpts[0].final_recipient, "lost@example.org");
	assert_int_equal(r.rcpts[0].action, DSN_ACTION_RELAYED);
	assert_string_equal(r.orig_return_path, VERP);
	assert_string_equal(r.orig_to, "lost@example.org");

	to_crlf(msg, &crlf);
	assert_int_equal(parse_n(crlf.data, crlf.len, &r, err, sizeof(err)), 0);
	assert_string_equal(r.rcpts[0].final_recipient, "lost@example.org");
	assert_string_equal(r.orig_return_path, VERP);
	buf_free(&crlf);
}

/* A report wrapped in `levels` multipart/mixed, into b. */
static void wrapped(struct buf *b, int levels)
{
	int i;

	buf_init(b, 1 << 20);
	for (i = 0; i < levels; i++)
		assert_int_equal(buf_printf(b,
		                            "Content-Type: multipart/mixed; boundary=w%d\n\n"
		                            "--w%d\n",
		                            i, i),
		                 0);
	assert_int_equal(buf_puts(b, "Content-Type: multipart/report; report-type=delivery-status;"
	                             " boundary=r\n\n--r\n"
	                             "Content-Type: message/delivery-status\n\n"
	                             "Reporting-MTA: dns; deep.example\n\n"
	                             "Final-Recipient: rfc822; x@deep.example\nAction: failed\n"
	                             "Status: 5.1.1\n--r--\n"),
	                 0);
	for (i = levels - 1; i >= 0; i--)
		assert_int_equal(buf_printf(b, "--w%d--\n", i), 0);
}

static void test_nesting_limit(void **state)
{
	struct dsn_report r;
	struct buf b;
	char err[128];

	for (int levels = 0; levels <= 3; levels++) {
		wrapped(&b, levels);
		if (levels <= 2) {
			assert_int_equal(parse_n(b.data, b.len, &r, err, sizeof(err)), 0);
			assert_string_equal(r.rcpts[0].final_recipient, "x@deep.example");
		} else {
			/* Deeper than any MTA wraps a report: not looked for. */
			assert_int_equal(parse_n(b.data, b.len, &r, err, sizeof(err)), -1);
			assert_int_equal(r.kind, DSN_UNKNOWN);
		}
		buf_free(&b);
	}
}

static void test_base64_part(void **state)
{
	static const char fields[] = "Reporting-MTA: dns; b64.example\r\n"
	                             "\r\n"
	                             "Final-Recipient: rfc822; enc@example.com\r\n"
	                             "Action: failed\r\n"
	                             "Status: 5.1.1\r\n"
	                             "Diagnostic-Code: smtp; 550 no such user\r\n";
	char enc[512];
	size_t n = base64_encode((const unsigned char *)fields, strlen(fields), enc), i;
	struct dsn_report r;
	struct buf b;
	char err[128];

	buf_init(&b, 1 << 20);
	assert_int_equal(buf_puts(&b, "MIME-Version: 1.0\r\n"
	                              "Content-Type: multipart/report; boundary=\"x\";\r\n"
	                              "  report-type=delivery-status\r\n\r\n"
	                              "--x\r\n"
	                              "Content-Type: message/delivery-status\r\n"
	                              "Content-Transfer-Encoding: BASE64\r\n\r\n"),
	                 0);
	/* In lines of 76, as MIME wants. */
	for (i = 0; i < n; i += 76) {
		assert_int_equal(buf_append(&b, enc + i, n - i < 76 ? n - i : 76), 0);
		assert_int_equal(buf_puts(&b, "\r\n"), 0);
	}
	assert_int_equal(buf_puts(&b, "--x--\r\n"), 0);

	assert_int_equal(parse_n(b.data, b.len, &r, err, sizeof(err)), 0);
	assert_string_equal(r.reporting_mta, "b64.example");
	assert_int_equal(r.nrcpts, 1);
	assert_string_equal(r.rcpts[0].final_recipient, "enc@example.com");
	assert_string_equal(r.rcpts[0].status, "5.1.1");
	assert_string_equal(r.rcpts[0].diagnostic, "550 no such user");
	buf_free(&b);
}

static void test_quoted_printable_part(void **state)
{
	static const char msg[] =
	    "Content-Type: multipart/report; report-type=delivery-status; boundary=q\n"
	    "\n"
	    "--q\n"
	    "Content-Type: message/delivery-status\n"
	    "Content-Transfer-Encoding: quoted-printable\n"
	    "\n"
	    "Reporting-MTA: dns; qp.example\n"
	    "\n"
	    "Final-Recipient: rfc822; jos=C3=A9@example.com\n"
	    "Action: failed\n"
	    "Status: 5.1.1\n"
	    "Diagnostic-Code: smtp; 550 5.1.1 unknown user, this line is long enough to be =\n"
	    "wrapped\n"
	    "--q--\n";
	struct dsn_report r;
	char err[128];

	assert_int_equal(parse_str(msg, &r, err, sizeof(err)), 0);
	assert_string_equal(r.rcpts[0].final_recipient, "jos\xc3\xa9@example.com");
	assert_string_equal(r.rcpts[0].diagnostic,
	                    "550 5.1.1 unknown user, this line is long enough to be wrapped");
}

static void test_cut_report(void **state)
{
	const char *at = strstr(postfix_dsn, "Status: 5.1.1");
	size_t cut = (size_t)(at - postfix_dsn) + strlen("Status: 5."), n = strlen(postfix_dsn);
	struct dsn_report r;
	char err[128];

	/* Cut inside the per-recipient block: what is there is read. */
	assert_int_equal(parse_n(postfix_dsn, cut, &r, err, sizeof(err)), 0);
	assert_int_equal(r.kind, DSN_DELIVERY);
	assert_string_equal(r.reporting_mta, "mx1.remote.example");
	assert_int_equal(r.nrcpts, 1);
	assert_string_equal(r.rcpts[0].final_recipient, "nobody@remote.example");
	assert_int_equal(r.rcpts[0].action, DSN_ACTION_FAILED);
	assert_string_equal(r.rcpts[0].status, ""); /* "5." is not a status */
	assert_string_equal(r.orig_return_path, "");

	/* Cut in the middle of the folded Diagnostic-Code. */
	at = strstr(postfix_dsn, "rejected: User unknown in local");
	cut = (size_t)(at - postfix_dsn) + strlen("rejected: User");
	assert_int_equal(parse_n(postfix_dsn, cut, &r, err, sizeof(err)), 0);
	assert_string_equal(r.rcpts[0].diagnostic,
	                    "550 5.1.1 <nobody@remote.example>: Recipient address rejected: User");
	assert_string_equal(r.rcpts[0].remote_mta, "mx2.remote.example");

	/* Cut anywhere: never a crash, never a read past the cut. */
	for (size_t i = 0; i <= n; i++) {
		int rc = parse_n(postfix_dsn, i, &r, err, sizeof(err));
		if (rc == 0) {
			assert_int_equal(r.kind, DSN_DELIVERY);
			assert_true(r.nrcpts <= 1);
			check_report_clean(&r);
		} else {
			assert_int_equal(r.kind, DSN_UNKNOWN);
			assert_true(strlen(err) > 0);
		}
	}
}

static void check_arf(const struct dsn_report *r)
{
	assert_int_equal(r->kind, DSN_FEEDBACK);
	assert_string_equal(r->feedback_type, "abuse");
	assert_string_equal(r->user_agent, "MailboxFBL/3.2");
	assert_string_equal(r->arf_original_rcpt_to, "reader@mailbox.example");
	assert_string_equal(r->arf_original_mail_from,
	                    "bounce+0123456789ABCDEFGHIJ.3@rp.acme.example");
	assert_string_equal(r->reporting_mta, "fbl.mailbox.example");
	assert_int_equal(r->nrcpts, 0);
	assert_string_equal(r->orig_return_path, "bounce+0123456789ABCDEFGHIJ.3@rp.acme.example");
	assert_string_equal(r->orig_message_id, "<deal-42@acme.example>");
	assert_string_equal(r->orig_to, "reader@mailbox.example");
	check_report_clean(r);
}

static void test_arf_abuse(void **state)
{
	struct dsn_report r;
	struct buf crlf;
	char err[128], qid[QUEUE_ID_LEN + 1];
	long idx;

	assert_int_equal(parse_str(arf_report, &r, err, sizeof(err)), 0);
	check_arf(&r);
	/* What a caller does next: the complaint's queue id and recipient. */
	assert_int_equal(verp_parse(r.orig_return_path, qid, &idx, NULL, NULL, NULL, 0), 0);
	assert_string_equal(qid, "0123456789ABCDEFGHIJ");
	assert_int_equal(idx, 3);

	to_crlf(arf_report, &crlf);
	assert_int_equal(parse_n(crlf.data, crlf.len, &r, err, sizeof(err)), 0);
	check_arf(&r);
	buf_free(&crlf);
}

static void test_missing_report_type(void **state)
{
	/* Some MTAs leave report-type out: the machine part says. */
	static const char msg[] = "Content-Type: multipart/report; boundary=m\n\n"
	                          "--m\nContent-Type: text/plain\n\nhello\n"
	                          "--m\nContent-Type: message/feedback-report\n\n"
	                          "Feedback-Type: fraud\nUser-Agent: x/1\n"
	                          "--m--\n";
	static const char none[] = "Content-Type: multipart/report; boundary=m\n\n"
	                           "--m\nContent-Type: text/plain\n\nhello\n--m--\n";
	struct dsn_report r;
	char err[128];

	assert_int_equal(parse_str(msg, &r, err, sizeof(err)), 0);
	assert_int_equal(r.kind, DSN_FEEDBACK);
	assert_string_equal(r.feedback_type, "fraud");

	assert_int_equal(parse_str(none, &r, err, sizeof(err)), -1);
	assert_int_equal(r.kind, DSN_UNKNOWN);
	assert_non_null(strstr(err, "report-type"));
}

static void test_not_reports(void **state)
{
	static const char plain[] =
	    "From: MAILER-DAEMON@old.example\n"
	    "Subject: failure notice\n"
	    "Content-Type: text/plain\n"
	    "\n"
	    "Hi. This is the qmail-send program at old.example.\n"
	    "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
	    "\n"
	    "<gone@old.example>:\n"
	    "Sorry, no mailbox here by that name. (#5.1.1)\n";
	static const char unknown[] =
	    "Content-Type: multipart/report; report-type=x-unknown; boundary=u\n\n"
	    "--u\nContent-Type: message/delivery-status\n\n"
	    "Final-Recipient: rfc822; a@b.example\nAction: failed\n--u--\n";
	static const char no_boundary[] =
	    "Content-Type: multipart/report; report-type=delivery-status\n\nbody\n";
	static const char garbage[] = "\x00\xff\x01:::\n\n--\n--\r\r\n\t\t:\n"
	                              "Content-Type: multipart/report; boundary=\n\n--\n";
	struct dsn_report r;
	char err[128], small[8];

	assert_int_equal(parse_str(plain, &r, err, sizeof(err)), -1);
	assert_int_equal(r.kind, DSN_UNKNOWN);
	assert_string_equal(err, "no multipart/report part");

	assert_int_equal(parse_str(unknown, &r, err, sizeof(err)), -1);
	assert_int_equal(r.kind, DSN_UNKNOWN);
	assert_int_equal(r.nrcpts, 0);
	assert_string_equal(err, "report-type x-unknown not understood");

	assert_int_equal(parse_str(no_boundary, &r, err, sizeof(err)), -1);
	assert_int_equal(r.kind, DSN_UNKNOWN);

	assert_int_equal(parse_n(garbage, sizeof(garbage) - 1, &r, err, sizeof(err)), -1);
	assert_int_equal(r.kind, DSN_UNKNOWN);

	/* Empty, and a NULL message of length 0. */
	assert_int_equal(parse_n("", 0, &r, err, sizeof(err)), -1);
	assert_int_equal(r.kind, DSN_UNKNOWN);
	assert_int_equal(dsn_parse(NULL, 0, &r, err, sizeof(err)), -1);

	/* A small err is cut, not overrun. */
	assert_int_equal(parse_str(plain, &r, small, sizeof(small)), -1);
	assert_string_equal(small, "no mult");

	/* Bytes that are no message at all. */
	{
		unsigned char junk[4096];
		unsigned x = 12345;
		for (size_t i = 0; i < sizeof(junk); i++) {
			x = x * 1103515245 + 12345;
			junk[i] = (unsigned char)(x >> 16);
		}
		assert_int_equal(parse_n((const char *)junk, sizeof(junk), &r, err, sizeof(err)),
		                 -1);
	}
}

static void test_long_and_dirty_fields(void **state)
{
	struct dsn_report r;
	struct buf b;
	char err[128], expect[DSN_FIELD_MAX];
	size_t i;

	buf_init(&b, 1 << 20);
	assert_int_equal(buf_puts(&b,
	                          "Content-Type: multipart/report; report-type=delivery-status;"
	                          " boundary=L\n\n--L\nContent-Type: message/delivery-status\n\n"
	                          "Reporting-MTA: dns; "),
	                 0);
	for (i = 0; i < 1000; i++)
		assert_int_equal(buf_puts(&b, "m"), 0);
	assert_int_equal(buf_puts(&b, "\n\nFinal-Recipient: rfc822; "), 0);
	for (i = 0; i < 600; i++)
		assert_int_equal(buf_puts(&b, "a"), 0);
	assert_int_equal(buf_puts(&b, "@example.com\nDiagnostic-Code: smtp; 550 5.1.1 "), 0);
	/* Folded over many lines, far past 512 and the unfolding buffer. */
	for (i = 0; i < 400; i++)
		assert_int_equal(buf_puts(&b, "word\n word "), 0);
	assert_int_equal(buf_puts(&b, "\nRemote-MTA: dns; bad\x01host\x7f\tname\xff\n"), 0);
	/* 254 bytes, then a two-byte character that does not fit whole. */
	assert_int_equal(buf_puts(&b, "Original-Recipient: rfc822; "), 0);
	for (i = 0; i < 254; i++)
		assert_int_equal(buf_puts(&b, "o"), 0);
	assert_int_equal(buf_puts(&b, "\xc3\xa9\n--L--\n"), 0);

	assert_int_equal(parse_n(b.data, b.len, &r, err, sizeof(err)), 0);
	check_report_clean(&r);
	assert_int_equal(strlen(r.reporting_mta), DSN_FIELD_MAX - 1);
	assert_int_equal(strlen(r.rcpts[0].final_recipient), DSN_FIELD_MAX - 1);
	memset(expect, 'a', DSN_FIELD_MAX - 1);
	expect[DSN_FIELD_MAX - 1] = '\0';
	assert_string_equal(r.rcpts[0].final_recipient, expect);
	assert_int_equal(strlen(r.rcpts[0].diagnostic), DSN_FIELD_MAX * 2 - 1);
	assert_memory_equal(r.rcpts[0].diagnostic, "550 5.1.1 word word word", 24);
	assert_string_equal(r.rcpts[0].status, "5.1.1");
	/* Control bytes and a byte that is not UTF-8 become '?', a tab a space. */
	assert_string_equal(r.rcpts[0].remote_mta, "bad?host? name?");
	/* Cut before the character, not inside it. */
	assert_int_equal(strlen(r.rcpts[0].original_recipient), 254);
	buf_free(&b);
}

static void test_many_recipients(void **state)
{
	struct dsn_report r;
	struct buf b;
	char err[128], want[64];
	int i;

	buf_init(&b, 1 << 20);
	assert_int_equal(buf_puts(&b,
	                          "Content-Type: multipart/report; report-type=delivery-status;"
	                          " boundary=M\n\n--M\nContent-Type: message/delivery-status\n\n"
	                          "Reporting-MTA: dns; many.example\n\n"),
	                 0);
	for (i = 0; i < 40; i++) {
		/* A block without Final-Recipient is no recipient. */
		if (i == 3)
			assert_int_equal(buf_puts(&b, "Action: failed\nStatus: 5.1.1\n\n"), 0);
		assert_int_equal(buf_printf(&b,
		                            "Final-Recipient: rfc822; r%d@many.example\n"
		                            "Action: failed\nStatus: 5.1.1\n\n",
		                            i),
		                 0);
	}
	assert_int_equal(buf_puts(&b, "--M--\n"), 0);

	assert_int_equal(parse_n(b.data, b.len, &r, err, sizeof(err)), 0);
	assert_int_equal(r.nrcpts, DSN_MAX_RCPTS);
	for (i = 0; i < DSN_MAX_RCPTS; i++) {
		snprintf(want, sizeof(want), "r%d@many.example", i);
		assert_string_equal(r.rcpts[i].final_recipient, want);
	}
	buf_free(&b);
}

static const unsigned char vkey[32] = {9, 8, 7};

static void test_verp_tags(void **state)
{
	const char *id = "0123456789ABCDEFGHIJ";
	unsigned char other[32] = {9, 8, 7, 1}, derived[32], derived2[32], master[32] = {5};
	char addr[256], addr2[256], qid[QUEUE_ID_LEN + 1], tag[VERP_TAG_LEN + 1];
	long idx;
	int several;

	/* Tagged senders parse back to the tag, which checks only for its
	 * own id, index, kind and key. */
	assert_int_equal(verp_address(addr, sizeof(addr), id, 7, 0, "rp.acme.example", vkey), 0);
	assert_int_equal(verp_parse(addr, qid, &idx, &several, tag, NULL, 0), 0);
	assert_int_equal(idx, 7);
	assert_int_equal(several, 0);
	assert_int_equal((int)strlen(tag), VERP_TAG_LEN);
	assert_true(verp_tag_ok(vkey, qid, 7, 0, tag));
	assert_false(verp_tag_ok(vkey, qid, 6, 0, tag));
	assert_false(verp_tag_ok(vkey, qid, 7, 1, tag));
	assert_false(verp_tag_ok(vkey, qid, -1, 0, tag));
	assert_false(verp_tag_ok(other, qid, 7, 0, tag));
	assert_false(verp_tag_ok(vkey, "0123456789ABCDEFGHIK", 7, 0, tag));
	assert_false(verp_tag_ok(vkey, qid, 7, 0, ""));
	assert_false(verp_tag_ok(vkey, qid, 7, 0, NULL));

	/* Several recipients: "m" and the first one's index, so that two
	 * transactions of one message never share a sender. */
	assert_int_equal(verp_address(addr, sizeof(addr), id, 0, 1, "b.example", vkey), 0);
	assert_int_equal(verp_address(addr2, sizeof(addr2), id, 2, 1, "b.example", vkey), 0);
	assert_string_not_equal(addr, addr2);
	assert_non_null(strstr(addr, ".m0."));
	assert_int_equal(verp_parse(addr, qid, &idx, &several, tag, NULL, 0), 0);
	assert_int_equal(idx, 0);
	assert_int_equal(several, 1);
	assert_true(verp_tag_ok(vkey, qid, 0, 1, tag));
	assert_false(verp_tag_ok(vkey, qid, 0, 0, tag));
	assert_false(verp_tag_ok(vkey, qid, 2, 1, tag));

	/* Case folded on the way back: still the same tag. */
	assert_int_equal(verp_address(addr, sizeof(addr), id, 7, 0, "h.example", vkey), 0);
	for (char *p = addr; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	assert_int_equal(verp_parse(addr, qid, &idx, &several, tag, NULL, 0), 0);
	assert_string_equal(qid, id);
	assert_true(verp_tag_ok(vkey, qid, 7, 0, tag));

	/* Untagged senders (before tags) parse with an empty tag. */
	assert_int_equal(verp_parse("bounce+0123456789ABCDEFGHIJ.7@h.example", qid, &idx,
	                            &several, tag, NULL, 0),
	                 0);
	assert_int_equal(idx, 7);
	assert_int_equal(several, 0);
	assert_string_equal(tag, "");
	assert_int_equal(verp_parse("bounce+0123456789ABCDEFGHIJ@h.example", qid, &idx, &several,
	                            tag, NULL, 0),
	                 0);
	assert_int_equal(idx, -1);
	assert_int_equal(several, 1);
	/* A tag has exactly VERP_TAG_LEN characters of base32; "m" needs a tag. */
	static const char *const bad[] = {
	    "bounce+0123456789ABCDEFGHIJ.7.ABCDEFG@h.example",
	    "bounce+0123456789ABCDEFGHIJ.7.ABCDEFGHI@h.example",
	    "bounce+0123456789ABCDEFGHIJ.7.ABCDEFGW@h.example",
	    "bounce+0123456789ABCDEFGHIJ.ABCDEFGH@h.example",
	    "bounce+0123456789ABCDEFGHIJ.7.ABCDEFGH.1@h.example",
	    "bounce+0123456789ABCDEFGHIJ.m7@h.example",
	    "bounce+0123456789ABCDEFGHIJ.m.ABCDEFGH@h.example",
	    "bounce+0123456789ABCDEFGHIJ.mm7.ABCDEFGH@h.example",
	};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++)
		if (verp_parse(bad[i], qid, &idx, &several, tag, NULL, 0) != -1)
			fail_msg("accepted %s", bad[i]);

	/* The key: the same master gives the same key (every host of a
	 * platform), another master another one. */
	verp_key_derive(master, derived);
	verp_key_derive(master, derived2);
	assert_memory_equal(derived, derived2, 32);
	master[0] = 6;
	verp_key_derive(master, derived2);
	assert_memory_not_equal(derived, derived2, 32);
}

static void test_verp_round_trip(void **state)
{
	const char *id = "0123456789ABCDEFGHIJ";
	char addr[256], qid[QUEUE_ID_LEN + 1], host[64];
	long idx;

	assert_int_equal(verp_address(addr, sizeof(addr), id, 7, 0, "rp.acme.example", vkey), 0);
	assert_int_equal(verp_parse(addr, qid, &idx, NULL, NULL, host, sizeof(host)), 0);
	assert_string_equal(qid, id);
	assert_int_equal(idx, 7);
	assert_string_equal(host, "rp.acme.example");

	assert_int_equal(verp_address(addr, sizeof(addr), id, 3, 1, "bounces.p.example", vkey), 0);
	assert_int_equal(verp_parse(addr, qid, &idx, NULL, NULL, host, sizeof(host)), 0);
	assert_string_equal(qid, id);
	assert_int_equal(idx, 3);
	assert_string_equal(host, "bounces.p.example");

	assert_int_equal(verp_address(addr, sizeof(addr), id, 99999, 0, "h.example", vkey), 0);
	assert_int_equal(verp_parse(addr, qid, &idx, NULL, NULL, NULL, 0), 0);
	assert_int_equal(idx, 99999);
	assert_int_equal(verp_parse(VERP, qid, &idx, NULL, NULL, host, sizeof(host)), 0);
	assert_int_equal(idx, 0);

	/* Folded case: the id goes back to upper case, the host to lower. */
	assert_int_equal(verp_parse("BOUNCE+0123456789abcdefghij.12@RP.Acme.Example", qid, &idx,
	                            NULL, NULL, host, sizeof(host)),
	                 0);
	assert_string_equal(qid, id);
	assert_int_equal(idx, 12);
	assert_string_equal(host, "rp.acme.example");

	/* The host is cut to fit; index may be NULL. */
	assert_int_equal(verp_parse(VERP, qid, NULL, NULL, NULL, host, 6), 0);
	assert_string_equal(host, "rp.ac");
}

static void test_verp_rejects(void **state)
{
	static const char *const bad[] = {
	    "bounces+0123456789ABCDEFGHIJ.1@h.example",     /* wrong prefix */
	    "bounce-0123456789ABCDEFGHIJ.1@h.example",      /* wrong prefix */
	    "xbounce+0123456789ABCDEFGHIJ@h.example",       /* wrong prefix */
	    "bounce+0123456789ABCDEFGHI.1@h.example",       /* 19 characters */
	    "bounce+0123456789ABCDEFGHI@h.example",         /* 19 characters */
	    "bounce+0123456789ABCDEFGHIJK.1@h.example",     /* 21 characters */
	    "bounce+0123456789ABCDEFGHIJK@h.example",       /* 21 characters */
	    "bounce+0123456789ABCDEFGH-J.1@h.example",      /* bad character */
	    "bounce+0123456789ABCDEFGH J@h.example",        /* bad character */
	    "bounce+0123456789ABCDEFGHIJ.1a@h.example",     /* index not decimal */
	    "bounce+0123456789ABCDEFGHIJ.-1@h.example",     /* index not decimal */
	    "bounce+0123456789ABCDEFGHIJ.@h.example",       /* empty index */
	    "bounce+0123456789ABCDEFGHIJ.100000@h.example", /* index too large */
	    "bounce+0123456789ABCDEFGHIJ.1",                /* no '@' */
	    "bounce+0123456789ABCDEFGHIJ",                  /* no '@' */
	    "bounce+0123456789ABCDEFGHIJ@",                 /* no host */
	    "bounce+0123456789ABCDEFGHIJ@a@b.example",      /* two '@' */
	    "bounce+0123456789ABCDEFGHIJ@h.example\r\n",    /* control bytes */
	    "bounce+",
	    "",
	};
	char qid[QUEUE_ID_LEN + 1], host[64];
	long idx;

	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		memcpy(qid, "junk", 5);
		idx = 5;
		snprintf(host, sizeof(host), "junk");
		if (verp_parse(bad[i], qid, &idx, NULL, NULL, host, sizeof(host)) != -1)
			fail_msg("accepted %s", bad[i]);
		assert_string_equal(qid, "");
		assert_int_equal(idx, -1);
		assert_string_equal(host, "");
	}
	assert_int_equal(verp_parse(NULL, qid, &idx, NULL, NULL, host, sizeof(host)), -1);
}

static void test_status_is_hard(void **state)
{
	assert_true(dsn_status_is_hard("5.1.1"));
	assert_true(dsn_status_is_hard("5.1.10"));
	assert_true(dsn_status_is_hard("5.1.0"));
	assert_false(dsn_status_is_hard("5.2.2"));
	assert_false(dsn_status_is_hard("4.1.1"));
	assert_false(dsn_status_is_hard("2.1.5"));
	assert_false(dsn_status_is_hard("5.1."));
	assert_false(dsn_status_is_hard("5.1.1234"));
	assert_false(dsn_status_is_hard("5.11.1"));
	assert_false(dsn_status_is_hard(""));
	assert_false(dsn_status_is_hard(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_postfix),
	    cmocka_unit_test(test_exim_two_recipients),
	    cmocka_unit_test(test_status_from_diagnostic),
	    cmocka_unit_test(test_content_type_syntax),
	    cmocka_unit_test(test_nested_in_mixed),
	    cmocka_unit_test(test_nesting_limit),
	    cmocka_unit_test(test_base64_part),
	    cmocka_unit_test(test_quoted_printable_part),
	    cmocka_unit_test(test_cut_report),
	    cmocka_unit_test(test_arf_abuse),
	    cmocka_unit_test(test_missing_report_type),
	    cmocka_unit_test(test_not_reports),
	    cmocka_unit_test(test_long_and_dirty_fields),
	    cmocka_unit_test(test_many_recipients),
	    cmocka_unit_test(test_verp_tags),
	    cmocka_unit_test(test_verp_round_trip),
	    cmocka_unit_test(test_verp_rejects),
	    cmocka_unit_test(test_status_is_hard),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
