/* log: one key=value line per event, on stderr or to syslog. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/common.h"

static const char *log_ident = "sendgate";
static int log_syslog;
static int log_level = SGLOG_INFO;

static const char *level_names[] = {"err", "warn", "info", "debug"};

#define BATCH_MAX 16384

/* Lines kept by a thread that batches (log_batch), for one write. */
struct log_batch {
	void (*arm)(void *);
	void *arg;
	size_t len;
	char buf[BATCH_MAX];
};
static __thread struct log_batch *batch;

static void write_all(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(STDERR_FILENO, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return; /* nowhere to report it */
		p += w;
		n -= (size_t)w;
	}
}

/*
 * Writes the kept lines in pieces of whole lines of at most PIPE_BUF bytes:
 * on a pipe (stderr under a supervisor, shared with the delivery process)
 * such a write is never interleaved with another process's.
 */
void log_flush(void)
{
	size_t off = 0;

	if (batch == NULL || batch->len == 0)
		return;
	while (off < batch->len) {
		size_t n = batch->len - off;
		if (n > PIPE_BUF) {
			const char *nl = memrchr(batch->buf + off, '\n', PIPE_BUF);
			n = nl != NULL ? (size_t)(nl - (batch->buf + off)) + 1 : PIPE_BUF;
		}
		write_all(batch->buf + off, n);
		off += n;
	}
	batch->len = 0;
}

void log_batch(void (*arm)(void *), void *arg)
{
	if (arm == NULL) {
		log_flush();
		free(batch);
		batch = NULL;
		return;
	}
	if (batch == NULL)
		batch = xcalloc(1, sizeof(*batch));
	batch->arm = arm;
	batch->arg = arg;
}

void log_init(const char *ident, int use_syslog, int level)
{
	log_ident = ident;
	log_syslog = use_syslog;
	log_level = level;
	if (use_syslog)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_set_level(int level)
{
	log_level = level;
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	log_flush();
}

static void arm_flush(void *ev)
{
	event_active(ev, EV_TIMEOUT, 1);
}

struct event *log_batch_loop(struct event_base *base)
{
	struct event *ev = event_new(base, -1, 0, flush_cb, NULL);

	if (ev != NULL)
		log_batch(arm_flush, ev);
	return ev;
}

void log_batch_loop_end(struct event *ev)
{
	log_batch(NULL, NULL);
	if (ev != NULL)
		event_free(ev);
}

static void log_vmsg(int level, const char *fmt, va_list ap)
{
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	char line[4096], ts[40], out[4096 + 128];
	struct timeval tv;
	struct tm tm;
	int n;

	if (level > log_level)
		return;
	vsnprintf(line, sizeof(line), fmt, ap);
	if (log_syslog) {
		syslog(prio[level], "level=%s %s", level_names[level], line);
		return;
	}
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	n = snprintf(out, sizeof(out), "ts=%s.%03dZ prog=%s level=%s %s\n", ts,
		     (int)(tv.tv_usec / 1000), log_ident, level_names[level], line);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(out)) {
		n = (int)sizeof(out) - 1; /* cut: still one line */
		out[n - 1] = '\n';
	}
	if (batch == NULL) {
		write_all(out, (size_t)n);
		return;
	}
	if (batch->len + (size_t)n > sizeof(batch->buf))
		log_flush();
	memcpy(batch->buf + batch->len, out, (size_t)n);
	if (batch->len == 0)
		batch->arm(batch->arg);
	batch->len += (size_t)n;
	/* An error may come just before the process dies (abort()): out now. */
	if (level == SGLOG_ERR)
		log_flush();
}

void log_msg(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}

void fatal(const char *fmt, ...)
{
	va_list ap;

	log_flush();
	va_start(ap, fmt);
	log_vmsg(SGLOG_ERR, fmt, ap);
	va_end(ap);
	log_flush();
	exit(1);
}

const char *log_quote(char *out, size_t outlen, const char *s)
{
	size_t o = 0;
	int plain = *s != '\0';
	const char *p;

	if (outlen == 0)
		return out;
	for (p = s; *p; p++)
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || (unsigned char)*p >= 0x7f)
			plain = 0;
	if (plain) {
		snprintf(out, outlen, "%s", s);
		return out;
	}
	if (o + 1 < outlen)
		out[o++] = '"';
	for (p = s; *p && o + 5 < outlen; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c < ' ' || c == 0x7f) {
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
		} else {
			out[o++] = (char)c;
		}
	}
	if (o + 1 < outlen)
		out[o++] = '"';
	out[o] = '\0';
	return out;
}
