/*
 * data: the DATA reader. It runs over every byte of every message, so runs
 * of plain bytes are found with a table scan and copied in one append; the
 * per-byte state machine only runs at line starts, CR, LF and NUL.
 *
 * SMTP smuggling defence: the one and only end of data is CR LF "." CR LF
 * with the dot at a line start, and a line start is only the start of the
 * data or the byte after CR LF. Bare CR, bare LF and NUL are recorded as
 * errors and never treated as line ends, so "\n.\r\n", "\r.\r\n", ".\n" and
 * friends stay content of the (rejected) message, and whatever a client
 * pipelined behind them is swallowed up to the real end.
 */
#include <stdint.h>
#include <string.h>

#include "smtpd/smtpd.h"

/* where in the line we are */
enum {
	ST_LINE_START, /* nothing of this line seen yet */
	ST_DOT,        /* a '.' at the line start: stuffing, or the end line */
	ST_DOT_CR,     /* ".\r" at the line start */
	ST_MID,        /* inside the line */
	ST_CR,         /* inside the line, a CR waits for its LF */
	ST_DONE,       /* the end-of-data line was read */
};

/* what the current line is, while the header block lasts */
enum {
	HC_START,  /* undecided, nothing seen */
	HC_NAME,   /* undecided, a field-name so far (held tentatively in hdr) */
	HC_HEADER, /* a header field or continuation line */
	HC_BODY,   /* body */
};

/* 1: CR, LF, NUL stop a run; 2: bytes >= 0x80 stop it until eight_bit is set */
static const unsigned char special[256] = {
    [0] = 1,
    ['\n'] = 1,
    ['\r'] = 1,
    [0x80 ... 0xff] = 2,
};

/* RFC 5322 ftext: printable US-ASCII except ':' */
static int is_ftext(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

/* Prepares dr for a new message; a limit of 0 means none. */
void data_reader_init(struct data_reader *dr, size_t max_line, size_t max_size, size_t max_header)
{
	memset(dr, 0, sizeof(*dr));
	dr->max_line = max_line;
	dr->max_size = max_size;
	dr->max_header = max_header;
	dr->state = ST_LINE_START;
	dr->in_header = 1;
	dr->first_line = 1;
	dr->hclass = HC_START;
	dr->error = DATA_OK;
}

static void set_error(struct data_reader *dr, enum data_err e)
{
	if (dr->error == DATA_OK)
		dr->error = e;
}

/*
 * Counts n content octets of the current line (not its CRLF) and returns
 * how many of them may still be output: all, or those before the first
 * limit they cross (that limit's error is then set), or none after an
 * earlier error. out says whether they are output at all (bare CR, bare
 * LF and NUL are not); output to hdr also has max_header to respect. The
 * limit crossed first, byte by byte, is the one reported, so cutting the
 * input differently never changes the result.
 */
static size_t count_content(struct data_reader *dr, size_t n, int out)
{
	size_t ok = dr->error == DATA_OK ? n : 0;
	size_t room = SIZE_MAX, r;
	enum data_err e = DATA_OK;

	/* in the order a single byte would be checked: line, size, header */
	if (dr->max_line) {
		r = dr->max_line >= dr->line_len + 2 ? dr->max_line - dr->line_len - 2 : 0;
		if (r < room) {
			room = r;
			e = DATA_LINE_TOO_LONG;
		}
	}
	if (dr->max_size) {
		r = dr->max_size >= dr->size ? dr->max_size - dr->size : 0;
		if (r < room) {
			room = r;
			e = DATA_TOO_BIG;
		}
	}
	if (out && dr->max_header && dr->hclass != HC_BODY) {
		r = dr->max_header >= dr->hdr_size ? dr->max_header - dr->hdr_size : 0;
		if (r < room) {
			room = r;
			e = DATA_HEADER_TOO_BIG;
		}
	}
	if (n > room) {
		set_error(dr, e);
		ok = ok < room ? ok : room;
	}
	dr->line_len += n;
	dr->size += n;
	return ok;
}

/*
 * Writes n bytes of the current line where its class says: body, or hdr
 * as far as max_header allows (a line not yet classified counts as header
 * there). An output buffer that refuses bytes is recorded as the size
 * error of what it holds, so reading always goes on to the real end.
 */
static void emit(struct data_reader *dr, const void *p, size_t n, struct buf *hdr, struct buf *body)
{
	size_t room = SIZE_MAX;

	if (n == 0)
		return;
	if (dr->hclass == HC_BODY) {
		if (buf_append(body, p, n) == -1)
			set_error(dr, DATA_TOO_BIG);
		return;
	}
	if (dr->max_header)
		room = dr->max_header >= dr->hdr_size ? dr->max_header - dr->hdr_size : 0;
	if (n > room) {
		set_error(dr, DATA_HEADER_TOO_BIG);
		n = room;
	}
	if (n == 0)
		return;
	if (buf_append(hdr, p, n) == -1) {
		set_error(dr, DATA_HEADER_TOO_BIG);
		return;
	}
	dr->hdr_size += n;
	if (dr->hclass != HC_HEADER)
		dr->line_len_out += n; /* undecided: held in hdr until the line shows what it is */
}

/* Writes a line's CRLF unless an error stopped output. */
static void emit_crlf(struct data_reader *dr, struct buf *hdr, struct buf *body)
{
	if (dr->error == DATA_OK)
		emit(dr, "\r\n", 2, hdr, body);
}

/* The current line is a header field (or continuation). */
static void decide_header(struct data_reader *dr)
{
	dr->hclass = HC_HEADER;
}

/*
 * The current line is not a header field: the body starts with it. What
 * was held in hdr moves to body, and when a header block came before, the
 * blank line that should have ended it is added to hdr so that hdr + body
 * is a well-formed message.
 */
static void decide_body(struct data_reader *dr, struct buf *hdr, struct buf *body)
{
	size_t k = dr->line_len_out;

	dr->in_header = 0;
	dr->hclass = HC_BODY;
	dr->line_len_out = 0;
	if (dr->error != DATA_OK)
		return;
	if (k > 0) {
		emit(dr, hdr->data + hdr->len - k, k, hdr, body);
		if (dr->error != DATA_OK)
			return;
		hdr->len -= k;
		hdr->data[hdr->len] = '\0';
		dr->hdr_size -= k;
	}
	if (!dr->first_line) {
		dr->hclass = HC_HEADER;
		emit(dr, "\r\n", 2, hdr, body);
		dr->hclass = HC_BODY;
	}
}

static void begin_line(struct data_reader *dr)
{
	dr->state = ST_MID;
	dr->line_len = 0;
	dr->line_len_out = 0;
	dr->hclass = dr->in_header ? HC_START : HC_BODY;
}

/* CR LF ended the current line. */
static void end_line(struct data_reader *dr, struct buf *hdr, struct buf *body)
{
	dr->size += 2;
	if (dr->max_line && dr->line_len + 2 > dr->max_line)
		set_error(dr, DATA_LINE_TOO_LONG);
	if (dr->max_size && dr->size > dr->max_size)
		set_error(dr, DATA_TOO_BIG);
	switch (dr->hclass) {
	case HC_START:
		/* an empty line: the end of the header block */
		dr->in_header = 0;
		if (dr->first_line)
			dr->hclass = HC_BODY; /* no header block at all */
		else
			dr->hclass = HC_HEADER;
		emit_crlf(dr, hdr, body);
		break;
	case HC_NAME:
		/* "word" CRLF: no colon, so not a field */
		decide_body(dr, hdr, body);
		emit_crlf(dr, hdr, body);
		break;
	default:
		emit_crlf(dr, hdr, body);
		break;
	}
	dr->first_line = 0;
	dr->state = ST_LINE_START;
}

/*
 * Classifies the current line from its first bytes while the header block
 * lasts. Advances *pp over the field-name bytes it held in hdr.
 */
static void classify(struct data_reader *dr, const unsigned char **pp, const unsigned char *end,
                     struct buf *hdr, struct buf *body)
{
	const unsigned char *p = *pp, *q;
	unsigned char c = *p;

	if (dr->hclass == HC_START) {
		if (c == '\r' || c == '\n' || c == '\0')
			return; /* a blank line, or an error: the caller sees */
		if (c == ' ' || c == '\t') {
			if (dr->first_line)
				decide_body(dr, hdr, body);
			else
				decide_header(dr); /* continuation of the previous field */
			return;
		}
		if (!is_ftext(c)) {
			decide_body(dr, hdr, body);
			return;
		}
		dr->hclass = HC_NAME;
	}
	q = p;
	while (q < end && is_ftext(*q))
		q++;
	if (q > p) {
		emit(dr, p, count_content(dr, (size_t)(q - p), 1), hdr, body);
		*pp = p = q;
	}
	if (p == end)
		return;
	c = *p;
	if (c == ':')
		decide_header(dr);
	else if (c != '\r' && c != '\n' && c != '\0')
		decide_body(dr, hdr, body);
	/* CR may end the line (then it is not a field); LF and NUL are errors */
}

/* A CR not followed by LF: content, and an error. */
static void bare_cr(struct data_reader *dr)
{
	count_content(dr, 1, 0);
	set_error(dr, DATA_BARE_CR);
	dr->state = ST_MID;
}

/*
 * Consumes up to n bytes of in, appending output to hdr and body (see
 * smtpd.h). Returns the bytes consumed, fewer than n when the end-of-data
 * line was reached. An output buffer that refuses bytes does not stop the
 * reader: it records DATA_HEADER_TOO_BIG (hdr) or DATA_TOO_BIG (body) and
 * goes on to the real end, so -1 is returned only for hdr == body.
 */
ssize_t data_reader_feed(struct data_reader *dr, const char *in, size_t n, struct buf *hdr,
                         struct buf *body)
{
	const unsigned char *p = (const unsigned char *)in, *end = p + n, *q;
	unsigned char mask;

	if (dr->state == ST_DONE)
		return 0;
	if (hdr == body)
		return -1; /* the header/body split needs two buffers */
	while (p < end) {
		switch (dr->state) {
		case ST_LINE_START:
			if (*p == '.') {
				dr->state = ST_DOT;
				p++;
			} else {
				begin_line(dr);
			}
			continue;
		case ST_DOT:
			if (*p == '\r') {
				dr->state = ST_DOT_CR;
				p++;
			} else {
				begin_line(dr); /* the stuffing dot is dropped */
			}
			continue;
		case ST_DOT_CR:
			if (*p == '\n') {
				p++;
				dr->state = ST_DONE;
				dr->done = 1;
				return (ssize_t)(p - (const unsigned char *)in);
			}
			begin_line(dr);
			bare_cr(dr);
			continue;
		case ST_CR:
			if (*p == '\n') {
				p++;
				end_line(dr, hdr, body);
			} else {
				bare_cr(dr);
			}
			continue;
		default:
			break;
		}

		/* ST_MID */
		if (dr->error == DATA_OK && (dr->hclass == HC_START || dr->hclass == HC_NAME)) {
			classify(dr, &p, end, hdr, body);
			if (p == end)
				break;
		}
		mask = dr->eight_bit ? 1 : 3;
		q = p;
		while (q < end && !(special[*q] & mask))
			q++;
		if (q > p) {
			emit(dr, p, count_content(dr, (size_t)(q - p), 1), hdr, body);
			p = q;
			if (p == end)
				break;
		}
		switch (*p) {
		case '\r':
			dr->state = ST_CR;
			p++;
			break;
		case '\n':
			count_content(dr, 1, 0);
			set_error(dr, DATA_BARE_LF);
			p++;
			break;
		case '\0':
			count_content(dr, 1, 0);
			set_error(dr, DATA_NUL);
			p++;
			break;
		default:
			dr->eight_bit = 1; /* a byte >= 0x80; the next scan takes it */
			break;
		}
	}
	return (ssize_t)n;
}

/* A sentence naming the error, for the reply at the final dot. */
const char *data_err_text(enum data_err e)
{
	switch (e) {
	case DATA_OK:
		return "no error";
	case DATA_BARE_CR:
		return "bare CR (a CR not followed by LF) in message content";
	case DATA_BARE_LF:
		return "bare LF (an LF not preceded by CR) in message content";
	case DATA_NUL:
		return "NUL byte in message content";
	case DATA_LINE_TOO_LONG:
		return "a line of the message is longer than the limit";
	case DATA_TOO_BIG:
		return "the message is larger than the size limit";
	case DATA_HEADER_TOO_BIG:
		return "the message header is larger than the limit";
	}
	return "unknown error";
}
