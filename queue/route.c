/*
 * route: the pure half of routing a message: MX ordering (RFC 5321 5.1,
 * RFC 7505), the VERP envelope sender, the weighted choice of a source
 * address from the tenant's pool, and dot-stuffing for DATA.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/deliver_int.h"
#include "tenants/tenants.h"

void droute_free(struct droute *rt)
{
	if (rt == NULL)
		return;
	free(rt->hosts);
	free(rt);
}

static int mx_cmp(const void *a, const void *b)
{
	const struct mx_entry *x = a, *y = b;

	return x->pref - y->pref;
}

void mx_sort(struct mx_entry *e, size_t n)
{
	size_t i = 0;

	qsort(e, n, sizeof(*e), mx_cmp);
	/* Fisher-Yates within each run of one preference. */
	while (i < n) {
		size_t j = i;
		while (j < n && e[j].pref == e[i].pref)
			j++;
		for (size_t k = j - 1; k > i; k--) {
			uint32_t r;
			size_t pick;
			struct mx_entry t;

			random_bytes(&r, sizeof(r));
			pick = i + r % (k - i + 1);
			t = e[k];
			e[k] = e[pick];
			e[pick] = t;
		}
		i = j;
	}
}

int mx_is_null(const struct mx_entry *e, size_t n)
{
	return n == 1 && (e[0].host[0] == '\0' || strcmp(e[0].host, ".") == 0);
}

const char *addr_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at ? at + 1 : "";
}

const char *verp_host(const char *sender, const char *prefix, const char *bounce_domain, int rp_ok,
                      char *out, size_t outlen)
{
	const char *dom = addr_domain(sender);

	if (rp_ok && dom[0] != '\0' && prefix != NULL && prefix[0] != '\0')
		snprintf(out, outlen, "%s.%s", prefix, dom);
	else
		snprintf(out, outlen, "%s", bounce_domain);
	return out;
}

int verp_address(char *out, size_t outlen, const char *qid, long index, int several,
                 const char *host, const unsigned char key[32])
{
	char tag[VERP_TAG_LEN + 1];
	int n;

	verp_tag(key, qid, index, several, tag);
	n = snprintf(out, outlen, "bounce+%s.%s%ld.%s@%s", qid, several ? "m" : "", index, tag,
	             host);
	return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int addr_family(const char *addr)
{
	unsigned char tmp[16];

	if (inet_pton(AF_INET, addr, tmp) == 1)
		return AF_INET;
	if (inet_pton(AF_INET6, addr, tmp) == 1)
		return AF_INET6;
	return AF_UNSPEC;
}

int pool_pick(const struct pool_address *a, int n, int family, uint32_t r)
{
	unsigned long total = 0, at;
	int i;

	for (i = 0; i < n; i++)
		if (addr_family(a[i].address) == family)
			total += (unsigned long)(a[i].weight > 0 ? a[i].weight : 1);
	if (total == 0)
		return -1;
	at = r % total;
	for (i = 0; i < n; i++) {
		unsigned long w;
		if (addr_family(a[i].address) != family)
			continue;
		w = (unsigned long)(a[i].weight > 0 ? a[i].weight : 1);
		if (at < w)
			return i;
		at -= w;
	}
	return -1;
}

void dotstuff_init(struct dotstuff *ds)
{
	ds->bol = 1;
	ds->cr = 0;
}

static void put(struct buf *out, const char *p, size_t n)
{
	if (buf_append(out, p, n) == -1)
		abort();
}

void dotstuff_chunk(struct dotstuff *ds, struct buf *out, const char *p, size_t n)
{
	size_t i = 0, run;

	while (i < n) {
		if (ds->cr) {
			/* CRLF, or a bare CR: either way one CRLF. */
			ds->cr = 0;
			put(out, "\r\n", 2);
			ds->bol = 1;
			if (p[i] == '\n') {
				i++;
				continue;
			}
		}
		if (p[i] == '\r') {
			ds->cr = 1;
			i++;
			continue;
		}
		if (p[i] == '\n') {
			put(out, "\r\n", 2);
			ds->bol = 1;
			i++;
			continue;
		}
		if (ds->bol && p[i] == '.')
			put(out, ".", 1);
		/* Copy up to the next CR or LF in one piece. */
		for (run = i; run < n && p[run] != '\r' && p[run] != '\n'; run++)
			;
		put(out, p + i, run - i);
		ds->bol = 0;
		i = run;
	}
}

void dotstuff_end(struct dotstuff *ds, struct buf *out)
{
	if (ds->cr) {
		put(out, "\r\n", 2);
		ds->cr = 0;
		ds->bol = 1;
	}
	if (!ds->bol)
		put(out, "\r\n", 2);
	put(out, ".\r\n", 3);
	ds->bol = 1;
}

size_t smtp_dotstuff(struct buf *out, const char *p, size_t n)
{
	struct dotstuff ds;
	size_t start = out->len;

	dotstuff_init(&ds);
	dotstuff_chunk(&ds, out, p, n);
	dotstuff_end(&ds, out);
	return out->len - start;
}
