/* log: one key=value line per event, on stderr or to syslog. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <unistd.h>

#include "common/common.h"

static const char *log_ident = "sendgate";
static int log_syslog;
static int log_level = SGLOG_INFO;

static const char *level_names[] = {"err", "warn", "info", "debug"};

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

static void log_vmsg(int level, const char *fmt, va_list ap)
{
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	char line[4096], ts[40];
	struct timeval tv;
	struct tm tm;

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
	fprintf(stderr, "ts=%s.%03dZ prog=%s level=%s %s\n", ts, (int)(tv.tv_usec / 1000),
		log_ident, level_names[level], line);
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

	va_start(ap, fmt);
	log_vmsg(SGLOG_ERR, fmt, ap);
	va_end(ap);
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
