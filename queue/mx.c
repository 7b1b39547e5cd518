/*
 * mx: where the mail of a domain goes (RFC 5321 5.1): the MX records by
 * preference (equal ones shuffled), each host's A and AAAA addresses,
 * hosts that do not resolve skipped; no MX at all means the domain itself
 * (implicit MX); a null MX (RFC 7505) means the domain takes no mail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns/dns.h"
#include "queue/deliver_int.h"

#define MX_MAX_HOSTS 16

struct mx_query {
	struct dns_resolver *r;
	char domain[256];
	int port;
	int relay;
	mx_cb cb;
	void *arg;
	uint64_t cookie;
	struct mx_entry mx[MX_MAX_HOSTS];
	size_t nmx;
	/* per host: answers of A and AAAA */
	struct dns_result *a[MX_MAX_HOSTS], *aaaa[MX_MAX_HOSTS];
	int pending;
	int temp; /* some host lookup failed temporarily */
};

static void mx_finish(struct mx_query *q, int status, const char *why, struct droute *rt)
{
	size_t i;

	q->cb(q->arg, q->cookie, status, why, rt);
	for (i = 0; i < q->nmx; i++) {
		dns_result_free(q->a[i]);
		dns_result_free(q->aaaa[i]);
	}
	free(q);
}

/* Every host's addresses are in: the route, in MX order. */
static void mx_addresses_done(struct mx_query *q)
{
	struct droute *rt = xcalloc(1, sizeof(*rt));
	size_t i, j, k, cap = 0;

	rt->relay = q->relay;
	for (i = 0; i < q->nmx; i++) {
		struct dns_result *res[2] = {q->a[i], q->aaaa[i]};
		for (k = 0; k < 2; k++) {
			if (res[k] == NULL || res[k]->status != DNS_OK)
				continue;
			for (j = 0; j < res[k]->n; j++) {
				struct dhost *h;
				if (rt->n == cap) {
					cap = cap ? cap * 2 : 8;
					rt->hosts = xrealloc(rt->hosts, cap * sizeof(*rt->hosts));
				}
				h = &rt->hosts[rt->n++];
				memset(h, 0, sizeof(*h));
				snprintf(h->name, sizeof(h->name), "%s", q->mx[i].host);
				snprintf(h->addr, sizeof(h->addr), "%s", res[k]->rr[j].text);
				h->family = k == 0 ? AF_INET : AF_INET6;
				h->port = q->port;
			}
		}
	}
	if (rt->n == 0) {
		droute_free(rt);
		mx_finish(q, ROUTE_TEMPFAIL,
		          q->temp ? "4.4.3 the mail servers' addresses could not be looked up"
		                  : "4.4.4 no mail server of the domain has an address",
		          NULL);
		return;
	}
	mx_finish(q, ROUTE_OK, "", rt);
}

static void mx_addr_cb(const struct dns_result *res, void *arg, uint64_t cookie)
{
	struct mx_query *q = arg;
	size_t i = (size_t)(cookie >> 1);

	if (res->status == DNS_SERVFAIL || res->status == DNS_TIMEOUT || res->status == DNS_ERROR)
		q->temp = 1;
	if (cookie & 1)
		q->aaaa[i] = dns_result_dup(res);
	else
		q->a[i] = dns_result_dup(res);
	if (--q->pending == 0)
		mx_addresses_done(q);
}

static void mx_lookup_hosts(struct mx_query *q)
{
	size_t i;

	q->pending = (int)q->nmx * 2;
	for (i = 0; i < q->nmx; i++) {
		dns_query(q->r, q->mx[i].host, DNS_A, 0, mx_addr_cb, q, (uint64_t)i << 1);
		dns_query(q->r, q->mx[i].host, DNS_AAAA, 0, mx_addr_cb, q, (uint64_t)i << 1 | 1);
	}
}

static void mx_cb_mx(const struct dns_result *res, void *arg, uint64_t cookie)
{
	struct mx_query *q = arg;
	size_t i;

	switch (res->status) {
	case DNS_OK:
		for (i = 0; i < res->n && q->nmx < MX_MAX_HOSTS; i++) {
			snprintf(q->mx[q->nmx].host, sizeof(q->mx[0].host), "%s", res->rr[i].text);
			q->mx[q->nmx].pref = res->rr[i].pref;
			q->nmx++;
		}
		if (mx_is_null(q->mx, q->nmx)) {
			q->nmx = 0;
			mx_finish(q, ROUTE_PERMFAIL,
			          "5.1.10 the recipient's domain accepts no mail (null MX)", NULL);
			return;
		}
		/* A null MX mixed with others is broken; skip the "." entries. */
		for (i = 0; i < q->nmx;) {
			if (q->mx[i].host[0] == '\0' || strcmp(q->mx[i].host, ".") == 0)
				q->mx[i] = q->mx[--q->nmx];
			else
				i++;
		}
		mx_sort(q->mx, q->nmx);
		break;
	case DNS_NODATA:
		/* No MX: the domain itself is the implicit MX (RFC 5321 5.1). */
		snprintf(q->mx[0].host, sizeof(q->mx[0].host), "%s", q->domain);
		q->mx[0].pref = 0;
		q->nmx = 1;
		break;
	case DNS_NXDOMAIN:
		mx_finish(q, ROUTE_PERMFAIL, "5.1.2 the recipient's domain does not exist", NULL);
		return;
	default:
		mx_finish(q, ROUTE_TEMPFAIL, "4.4.3 the MX lookup of the recipient's domain failed",
		          NULL);
		return;
	}
	if (q->nmx == 0) {
		mx_finish(q, ROUTE_TEMPFAIL, "4.4.4 the domain's MX records name no usable host",
		          NULL);
		return;
	}
	mx_lookup_hosts(q);
}

void mx_resolve(struct dns_resolver *r, const char *domain, int port, mx_cb cb, void *arg,
                uint64_t cookie)
{
	struct mx_query *q = xcalloc(1, sizeof(*q));

	q->r = r;
	snprintf(q->domain, sizeof(q->domain), "%s", domain);
	q->port = port;
	q->cb = cb;
	q->arg = arg;
	q->cookie = cookie;
	dns_query(r, domain, DNS_MX, 0, mx_cb_mx, q, 0);
}

void mx_resolve_relay(struct dns_resolver *r, const char *relay, mx_cb cb, void *arg,
                      uint64_t cookie)
{
	struct mx_query *q = xcalloc(1, sizeof(*q));
	char host[256];
	int port = 25, fam;

	q->r = r;
	q->relay = 1;
	q->cb = cb;
	q->arg = arg;
	q->cookie = cookie;
	if (parse_hostport(relay, host, sizeof(host), &port) == -1) {
		/* A bare host name: port 25. */
		snprintf(host, sizeof(host), "%s", relay);
		port = 25;
	}
	q->port = port;
	snprintf(q->domain, sizeof(q->domain), "%s", host);
	fam = addr_family(host);
	if (fam != AF_UNSPEC) {
		struct droute *rt = xcalloc(1, sizeof(*rt));
		rt->relay = 1;
		rt->hosts = xcalloc(1, sizeof(*rt->hosts));
		rt->n = 1;
		snprintf(rt->hosts[0].name, sizeof(rt->hosts[0].name), "%s", host);
		snprintf(rt->hosts[0].addr, sizeof(rt->hosts[0].addr), "%.63s", host);
		rt->hosts[0].family = fam;
		rt->hosts[0].port = port;
		/* Answer from the loop like every other route. */
		q->nmx = 0;
		mx_finish(q, ROUTE_OK, "", rt);
		return;
	}
	snprintf(q->mx[0].host, sizeof(q->mx[0].host), "%s", host);
	q->nmx = 1;
	mx_lookup_hosts(q);
}
