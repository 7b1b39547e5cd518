/*
 * backoff: when to try a deferred recipient again, and what a remote
 * server's reply says about it (enhanced code, "try again in N minutes").
 * Pure: no I/O, no clock (callers pass now and the random draw).
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "queue/deliver_int.h"

long retry_delay(const struct retry_policy *p, int attempts, double r)
{
	double d = (double)p->first, max = (double)p->max;

	if (attempts < 1)
		attempts = 1;
	/* Stop multiplying once past the cap: no overflow for large attempts. */
	for (int i = 1; i < attempts && d < max; i++)
		d *= p->factor;
	if (d > max)
		d = max;
	if (r < 0)
		r = 0;
	if (r >= 1)
		r = 0.999999;
	d *= 0.8 + 0.4 * r;
	if (d > max)
		d = max;
	if (d < 1)
		d = 1;
	return (long)d;
}

time_t retry_next(const struct retry_policy *p, time_t received, time_t now, int attempts,
                  long hint, double r)
{
	time_t expires = received + (time_t)p->max_age;
	long d = retry_delay(p, attempts, r);

	if (now >= expires)
		return 0;
	if (hint > d)
		d = hint;
	if (now + d > expires)
		return expires;
	return now + d;
}

/* The seconds of a unit word at s ("min", "minutes", "s", "hours"...), or 0. */
static long unit_seconds(const char *s)
{
	static const struct {
		const char *word;
		long secs;
	} units[] = {
	    {"seconds", 1},  {"second", 1},  {"secs", 1},   {"sec", 1},   {"s", 1},
	    {"minutes", 60}, {"minute", 60}, {"mins", 60},  {"min", 60},  {"m", 60},
	    {"hours", 3600}, {"hour", 3600}, {"hrs", 3600}, {"hr", 3600}, {"h", 3600},
	};

	for (size_t i = 0; i < ARRAY_LEN(units); i++) {
		size_t n = strlen(units[i].word);
		if (strncasecmp(s, units[i].word, n) == 0 && !isalpha((unsigned char)s[n]))
			return units[i].secs;
	}
	return 0;
}

long reply_retry_hint(const char *text)
{
	static const char *const lead[] = {"try again in ", "try again after ", "retry in ",
	                                   "retry after ", "try later in "};

	for (size_t i = 0; i < ARRAY_LEN(lead); i++) {
		const char *p = strcasestr(text, lead[i]);
		long n = 0, unit;
		int digits = 0;

		if (p == NULL)
			continue;
		p += strlen(lead[i]);
		while (isdigit((unsigned char)*p) && digits < 7) {
			n = n * 10 + (*p++ - '0');
			digits++;
		}
		if (digits == 0 || isdigit((unsigned char)*p))
			continue;
		while (*p == ' ')
			p++;
		unit = unit_seconds(p);
		if (unit == 0)
			continue;
		n *= unit;
		return n > 86400 ? 86400 : n;
	}
	return -1;
}

int reply_enhanced(int code, const char *text, char *out, size_t outlen)
{
	const char *p = text;
	int parts = 0, digits;

	out[0] = '\0';
	if (code < 200 || code > 599 || p[0] != '0' + code / 100 || p[1] != '.')
		return 0;
	p += 2;
	for (parts = 0; parts < 2; parts++) {
		for (digits = 0; isdigit((unsigned char)p[digits]); digits++)
			;
		if (digits < 1 || digits > 3)
			return 0;
		p += digits;
		if (parts == 0) {
			if (*p != '.')
				return 0;
			p++;
		}
	}
	if (*p != '\0' && *p != ' ' && *p != '\t')
		return 0;
	if ((size_t)(p - text) >= outlen)
		return 0;
	memcpy(out, text, (size_t)(p - text));
	out[p - text] = '\0';
	return 1;
}
