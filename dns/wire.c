/*
 * wire: parsing a DNS reply into a dns_result. Pure; the reply comes from
 * the network, so every length is checked against the buffer before use.
 * Names are expanded here (compression pointers must point backwards, so a
 * loop cannot form) rather than with the per-type c-ares parsers, because
 * those do not return TTLs for TXT, MX and CNAME, and the cache needs them.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "dns/dns.h"

#define DNS_HDR_LEN 12
#define MAX_CHAIN 16
#define MAX_RRS 512

struct raw_rr {
	char owner[256];
	uint16_t type;
	uint16_t class;
	uint32_t ttl;
	size_t rdoff; /* rdata offset in the message */
	uint16_t rdlen;
};

static uint16_t get16(const unsigned char *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get32(const unsigned char *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/*
 * Expands the name at *off into out (lower case, dotted, no trailing dot,
 * "" for the root); bytes that cannot appear in a host name become '?'.
 * Advances *off past the name as written. Returns 0 or -1 if malformed.
 */
static int read_name(const unsigned char *m, size_t mlen, size_t *off, char *out, size_t outlen)
{
	size_t pos = *off, o = 0, end = 0;
	int jumped = 0, jumps = 0;

	for (;;) {
		unsigned c;

		if (pos >= mlen)
			return -1;
		c = m[pos];
		if (c == 0) {
			if (!jumped)
				end = pos + 1;
			break;
		}
		if ((c & 0xc0) == 0xc0) {
			size_t target;

			if (pos + 1 >= mlen)
				return -1;
			target = ((c & 0x3f) << 8) | m[pos + 1];
			if (target >= pos || ++jumps > 64)
				return -1;
			if (!jumped)
				end = pos + 2;
			jumped = 1;
			pos = target;
			continue;
		}
		if ((c & 0xc0) != 0 || pos + 1 + c > mlen)
			return -1;
		/* A name is at most 253 characters as text (255 bytes on the wire). */
		if (o + (o > 0) + c > 253 || o + (o > 0) + c + 1 > outlen)
			return -1;
		if (o > 0)
			out[o++] = '.';
		for (unsigned i = 0; i < c; i++) {
			unsigned char b = m[pos + 1 + i];
			if (b >= 'A' && b <= 'Z')
				b = (unsigned char)(b - 'A' + 'a');
			else if (b <= 0x20 || b >= 0x7f || b == '.')
				b = '?';
			out[o++] = (char)b;
		}
		pos += 1 + c;
	}
	out[o] = '\0';
	*off = end;
	return 0;
}

/* Reads one resource record at *off. Returns 0 or -1. */
static int read_rr(const unsigned char *m, size_t mlen, size_t *off, struct raw_rr *rr)
{
	if (read_name(m, mlen, off, rr->owner, sizeof(rr->owner)) < 0)
		return -1;
	if (*off + 10 > mlen)
		return -1;
	rr->type = get16(m + *off);
	rr->class = get16(m + *off + 2);
	rr->ttl = get32(m + *off + 4);
	if (rr->ttl > 0x7fffffffu) /* RFC 2181 8: treat as zero */
		rr->ttl = 0;
	rr->rdlen = get16(m + *off + 8);
	*off += 10;
	if (*off + rr->rdlen > mlen)
		return -1;
	rr->rdoff = *off;
	*off += rr->rdlen;
	return 0;
}

/* Decodes the rdata of rr (of the asked type) into out. Returns 0 or -1. */
static int decode_rdata(const unsigned char *m, size_t mlen, const struct raw_rr *rr,
                        struct dns_rr *out)
{
	char name[256];
	size_t off = rr->rdoff, end = rr->rdoff + rr->rdlen;

	memset(out, 0, sizeof(*out));
	out->ttl = rr->ttl;
	switch (rr->type) {
	case DNS_A:
	case DNS_AAAA: {
		char txt[INET6_ADDRSTRLEN];
		int af = rr->type == DNS_A ? AF_INET : AF_INET6;
		size_t n = rr->type == DNS_A ? 4 : 16;

		if (rr->rdlen != n)
			return -1;
		memcpy(out->addr, m + off, n);
		if (inet_ntop(af, out->addr, txt, sizeof(txt)) == NULL)
			return -1;
		out->text = xstrdup(txt);
		out->len = strlen(txt);
		return 0;
	}
	case DNS_CNAME:
		if (read_name(m, end, &off, name, sizeof(name)) < 0 || off != end)
			return -1;
		out->text = xstrdup(name);
		out->len = strlen(name);
		return 0;
	case DNS_MX:
		if (rr->rdlen < 3)
			return -1;
		out->pref = get16(m + off);
		off += 2;
		if (read_name(m, end, &off, name, sizeof(name)) < 0 || off != end)
			return -1;
		out->text = xstrdup(name);
		out->len = strlen(name);
		return 0;
	case DNS_TXT: {
		/* The strings of one record, joined (RFC 7208 3.3, RFC 6376 3.6.2.2). */
		char *t = xmalloc((size_t)rr->rdlen + 1);
		size_t tl = 0;

		while (off < end) {
			size_t n = m[off++];
			if (off + n > end) {
				free(t);
				return -1;
			}
			memcpy(t + tl, m + off, n);
			tl += n;
			off += n;
		}
		t[tl] = '\0';
		out->text = t;
		out->len = tl;
		return 0;
	}
	default:
		return -1;
	}
}

/* The negative-caching TTL from an SOA in the authority section (RFC 2308 5). */
static uint32_t soa_ttl(const unsigned char *m, size_t mlen, const struct raw_rr *rr)
{
	char name[256];
	size_t off = rr->rdoff, end = rr->rdoff + rr->rdlen;
	uint32_t minimum;

	if (read_name(m, end, &off, name, sizeof(name)) < 0 ||
	    read_name(m, end, &off, name, sizeof(name)) < 0 || off + 20 != end)
		return 0;
	minimum = get32(m + off + 16);
	if (minimum > 0x7fffffffu)
		minimum = 0;
	return rr->ttl < minimum ? rr->ttl : minimum;
}

void dns_result_clear(struct dns_result *res)
{
	for (size_t i = 0; i < res->n; i++)
		free(res->rr[i].text);
	free(res->rr);
	free(res->name);
	memset(res, 0, sizeof(*res));
}

/* Sets a failure status on res. */
static int fail_with(struct dns_result *res, enum dns_status st, const char *detail)
{
	for (size_t i = 0; i < res->n; i++)
		free(res->rr[i].text);
	free(res->rr);
	res->rr = NULL;
	res->n = 0;
	res->status = st;
	res->detail = detail;
	res->ttl = 0;
	return st == DNS_ERROR ? -1 : 0;
}

int dns_answer_parse(const unsigned char *m, size_t mlen, enum dns_type type,
                     struct dns_result *res)
{
	struct raw_rr *rrs = NULL;
	size_t nrr = 0, off = DNS_HDR_LEN;
	unsigned qd, an, ns, rcode;
	char cur[256];
	uint32_t ttl = UINT32_MAX;
	int ret;

	dns_result_clear(res);
	res->type = type;
	res->status = DNS_ERROR;
	res->detail = "malformed reply";
	if (mlen < DNS_HDR_LEN || !(m[2] & 0x80))
		return fail_with(res, DNS_ERROR, "malformed reply");
	rcode = m[3] & 0x0f;
	qd = get16(m + 4);
	an = get16(m + 6);
	ns = get16(m + 8);
	if (qd != 1)
		return fail_with(res, DNS_ERROR, "malformed reply");
	if (read_name(m, mlen, &off, cur, sizeof(cur)) < 0 || off + 4 > mlen)
		return fail_with(res, DNS_ERROR, "malformed reply");
	off += 4;
	res->name = xstrdup(cur);

	if (rcode == 2)
		return fail_with(res, DNS_SERVFAIL, "server failure (SERVFAIL)");
	if (rcode == 5)
		return fail_with(res, DNS_ERROR, "query refused (REFUSED)");
	if (rcode != 0 && rcode != 3)
		return fail_with(res, DNS_ERROR, "server error");

	if ((size_t)an + ns > MAX_RRS)
		return fail_with(res, DNS_ERROR, "reply too large");
	rrs = xcalloc((size_t)an + ns + 1, sizeof(*rrs));
	for (unsigned i = 0; i < an + ns; i++) {
		if (read_rr(m, mlen, &off, &rrs[nrr]) < 0) {
			free(rrs);
			return fail_with(res, DNS_ERROR, "malformed reply");
		}
		nrr++;
	}

	/* Follow the CNAME chain from the question's name. */
	for (int hop = 0; hop < MAX_CHAIN; hop++) {
		const char *next = NULL;
		size_t found = 0;

		for (size_t i = 0; i < an; i++) {
			if (rrs[i].class != 1 || strcmp(rrs[i].owner, cur) != 0)
				continue;
			if (rrs[i].type == type)
				found++;
		}
		if (found > 0) {
			res->rr = xcalloc(found, sizeof(*res->rr));
			for (size_t i = 0; i < an; i++) {
				if (rrs[i].class != 1 || rrs[i].type != type ||
				    strcmp(rrs[i].owner, cur) != 0)
					continue;
				if (decode_rdata(m, mlen, &rrs[i], &res->rr[res->n]) < 0) {
					free(rrs);
					return fail_with(res, DNS_ERROR,
					                 "malformed record in reply");
				}
				if (rrs[i].ttl < ttl)
					ttl = rrs[i].ttl;
				res->n++;
			}
			break;
		}
		if (type == DNS_CNAME)
			break;
		for (size_t i = 0; i < an; i++) {
			if (rrs[i].class == 1 && rrs[i].type == DNS_CNAME &&
			    strcmp(rrs[i].owner, cur) == 0) {
				struct dns_rr tmp;

				if (decode_rdata(m, mlen, &rrs[i], &tmp) < 0) {
					free(rrs);
					return fail_with(res, DNS_ERROR,
					                 "malformed record in reply");
				}
				if (rrs[i].ttl < ttl)
					ttl = rrs[i].ttl;
				snprintf(cur, sizeof(cur), "%s", tmp.text);
				free(tmp.text);
				next = cur;
				break;
			}
		}
		if (next == NULL)
			break;
	}

	if (res->n > 0) {
		res->status = DNS_OK;
		res->detail = "ok";
		res->ttl = ttl;
		ret = 0;
	} else {
		uint32_t neg = 0;

		for (size_t i = an; i < nrr; i++)
			if (rrs[i].type == 6) {
				neg = soa_ttl(m, mlen, &rrs[i]);
				break;
			}
		if (rcode == 3) {
			res->status = DNS_NXDOMAIN;
			res->detail = "no such name (NXDOMAIN)";
		} else {
			res->status = DNS_NODATA;
			res->detail = "no record of this type";
		}
		res->ttl = neg;
		ret = 0;
	}
	free(rrs);
	return ret;
}
