/* msg: the benchmark message, built once and shared by every connection. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "common/common.h"

/* Text lines are wrapped well under the RFC 5322 limit of 78 characters. */
#define LINE_WRAP 72

static const char *const words[] = {
    "the",      "order",    "shipment", "invoice", "account",  "your",     "we",       "have",
    "received", "payment",  "thank",    "you",     "for",      "choosing", "our",      "service",
    "please",   "find",     "attached", "details", "below",    "if",       "any",      "questions",
    "reply",    "to",       "this",     "message", "support",  "team",     "will",     "respond",
    "within",   "one",      "business", "day",     "tracking", "number",   "delivery", "estimated",
    "update",   "settings", "profile",  "secure",  "login",    "notice",   "weekly",   "summary",
};

/* A small deterministic generator: the same run always sends the same text. */
static uint32_t next_rand(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* Appends text lines to b until it holds about want bytes. */
static void fill_text(struct buf *b, size_t want)
{
	uint32_t seed = 0x5eed1234;
	size_t line = 0, words_in_par = 0;

	while (b->len < want) {
		const char *w = words[next_rand(&seed) % ARRAY_LEN(words)];
		size_t wl = strlen(w);

		if (line > 0 && line + 1 + wl > LINE_WRAP) {
			buf_puts(b, ".\r\n");
			line = 0;
			if (++words_in_par >= 6) {
				buf_puts(b, "\r\n");
				words_in_par = 0;
			}
			continue;
		}
		if (line > 0) {
			buf_puts(b, " ");
			line++;
		}
		buf_puts(b, w);
		line += wl;
	}
	if (line > 0)
		buf_puts(b, "\r\n");
}

int msg_init(struct bench_msg *m, const char *from, const char *to, size_t size, char *err,
             size_t errlen)
{
	const char *pct, *at;
	unsigned char rnd[8];
	char hdr[1024], rcpt[512];
	struct buf b;
	size_t want;
	int hl;

	memset(m, 0, sizeof(*m));
	pct = strstr(to, "%d");
	if (strchr(to, '%') != pct || (pct && strchr(pct + 2, '%'))) {
		snprintf(err, errlen, "--to: only one %%d may appear, and no other %%");
		return -1;
	}
	if (strlen(from) > 256 || strlen(to) > 256) {
		snprintf(err, errlen, "--from/--to: address too long");
		return -1;
	}
	if (pct) {
		m->to_prefix = xstrndup(to, (size_t)(pct - to));
		m->to_suffix = xstrdup(pct + 2);
		m->to_counted = 1;
	} else {
		m->to_prefix = xstrdup(to);
		m->to_suffix = xstrdup("");
	}
	m->from = xstrdup(from);
	at = strrchr(m->from, '@');
	m->msgid_domain = at && at[1] ? at + 1 : "bench.invalid";
	rfc5322_date(time(NULL), m->date, sizeof(m->date));
	random_bytes(rnd, sizeof(rnd));
	hex_encode(rnd, sizeof(rnd), m->token);

	/* Size the text so that a typical message's headers plus body match. */
	msg_rcpt(m, 1000000, rcpt, sizeof(rcpt));
	hl = msg_headers(m, 1000000, rcpt, hdr, sizeof(hdr));
	m->header_len_estimate = hl > 0 ? (size_t)hl : 0;

	buf_init(&b, size + 4096);
	buf_puts(&b, "MIME-Version: 1.0\r\n"
	             "Content-Type: text/plain; charset=us-ascii\r\n"
	             "Content-Transfer-Encoding: 7bit\r\n"
	             "\r\n");
	want = size > m->header_len_estimate + 3 ? size - m->header_len_estimate - 3 : 0;
	fill_text(&b, want);
	if (buf_puts(&b, ".\r\n") < 0)
		abort();
	m->body = b.data;
	m->body_len = b.len;
	return 0;
}

int msg_rcpt(const struct bench_msg *m, long long n, char *out, size_t outlen)
{
	int r;

	if (m->to_counted)
		r = snprintf(out, outlen, "%s%lld%s", m->to_prefix, n, m->to_suffix);
	else
		r = snprintf(out, outlen, "%s", m->to_prefix);
	return r < 0 || (size_t)r >= outlen ? -1 : r;
}

int msg_headers(const struct bench_msg *m, long long id, const char *rcpt, char *out, size_t outlen)
{
	int r = snprintf(out, outlen,
	                 "From: Bench Sender <%s>\r\n"
	                 "To: <%s>\r\n"
	                 "Subject: sendgate-bench message %lld\r\n"
	                 "Date: %s\r\n"
	                 "Message-ID: <%lld.%s@%s>\r\n",
	                 m->from, rcpt, id, m->date, id, m->token, m->msgid_domain);

	return r < 0 || (size_t)r >= outlen ? -1 : r;
}

void msg_free(struct bench_msg *m)
{
	free(m->body);
	free(m->from);
	free(m->to_prefix);
	free(m->to_suffix);
	memset(m, 0, sizeof(*m));
}
