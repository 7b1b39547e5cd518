/* stats: per-thread latency samples and error counts, merged at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "common/common.h"

void stats_init(struct stats *s)
{
	memset(s, 0, sizeof(*s));
}

/* Appends v to a growable array of samples. */
static void push(uint32_t **v, size_t *n, size_t *cap, uint64_t usec)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 4096;
		*v = xrealloc(*v, *cap * sizeof(**v));
	}
	(*v)[(*n)++] = usec > UINT32_MAX ? UINT32_MAX : (uint32_t)usec;
}

void stats_latency(struct stats *s, uint64_t usec)
{
	push(&s->lat, &s->n_lat, &s->cap_lat, usec);
}

void stats_setup(struct stats *s, uint64_t usec)
{
	push(&s->setup, &s->n_setup, &s->cap_setup, usec);
}

/* Finds or adds the slot for code; NULL when the table is full. */
static struct stats_err *err_slot(struct stats *s, int code)
{
	for (int i = 0; i < s->n_errs; i++)
		if (s->errs[i].code == code)
			return &s->errs[i];
	if (s->n_errs == STATS_MAX_TEXTS)
		return NULL;
	s->errs[s->n_errs].code = code;
	return &s->errs[s->n_errs++];
}

/* Copies text without its line end and control bytes. */
static void copy_text(char *dst, size_t len, const char *text)
{
	size_t i = 0;

	for (; text && text[i] && i + 1 < len; i++)
		dst[i] = (text[i] < 0x20 || text[i] == 0x7f) ? ' ' : text[i];
	dst[i] = '\0';
	while (i > 0 && dst[i - 1] == ' ')
		dst[--i] = '\0';
}

void stats_error(struct stats *s, int code, const char *text)
{
	struct stats_err *e = err_slot(s, code);

	s->failed++;
	if (e == NULL)
		e = err_slot(s, ERR_PROTOCOL);
	if (e == NULL)
		return;
	if (e->count++ == 0)
		copy_text(e->text, sizeof(e->text), text);
}

/* Appends n samples of src to dst's array. */
static void append_all(uint32_t **v, size_t *n, size_t *cap, const uint32_t *src, size_t sn)
{
	if (*n + sn > *cap) {
		*cap = *n + sn;
		*v = xrealloc(*v, *cap * sizeof(**v));
	}
	if (sn)
		memcpy(*v + *n, src, sn * sizeof(*src));
	*n += sn;
}

void stats_merge(struct stats *dst, const struct stats *src)
{
	append_all(&dst->lat, &dst->n_lat, &dst->cap_lat, src->lat, src->n_lat);
	append_all(&dst->setup, &dst->n_setup, &dst->cap_setup, src->setup, src->n_setup);
	dst->accepted += src->accepted;
	dst->failed += src->failed;
	dst->bytes += src->bytes;
	dst->conn_opened += src->conn_opened;
	dst->conn_ready += src->conn_ready;
	dst->conn_failed += src->conn_failed;
	for (int i = 0; i < src->n_errs; i++) {
		struct stats_err *e = err_slot(dst, src->errs[i].code);

		if (e == NULL)
			continue;
		if (e->count == 0)
			memcpy(e->text, src->errs[i].text, sizeof(e->text));
		e->count += src->errs[i].count;
	}
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int cmp_err(const void *a, const void *b)
{
	const struct stats_err *x = a, *y = b;

	return x->code - y->code;
}

void stats_finish(struct stats *s)
{
	if (s->n_lat)
		qsort(s->lat, s->n_lat, sizeof(*s->lat), cmp_u32);
	if (s->n_setup)
		qsort(s->setup, s->n_setup, sizeof(*s->setup), cmp_u32);
	if (s->n_errs)
		qsort(s->errs, (size_t)s->n_errs, sizeof(*s->errs), cmp_err);
}

uint64_t stats_pct(const uint32_t *v, size_t n, double p)
{
	size_t i;

	if (n == 0)
		return 0;
	/* Nearest rank: the smallest sample with at least p% at or below it. */
	i = (size_t)((p / 100.0) * (double)n + 0.999999);
	if (i == 0)
		i = 1;
	if (i > n)
		i = n;
	return v[i - 1];
}

const char *stats_code_name(int code, char *buf, size_t len)
{
	switch (code) {
	case ERR_DISCONNECT:
		return "disconnect";
	case ERR_TIMEOUT:
		return "timeout";
	case ERR_PROTOCOL:
		return "protocol";
	default:
		snprintf(buf, len, "%d", code);
		return buf;
	}
}

void stats_free(struct stats *s)
{
	free(s->lat);
	free(s->setup);
	memset(s, 0, sizeof(*s));
}
