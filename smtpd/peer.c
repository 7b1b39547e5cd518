/*
 * peer: a connecting client as the per-address limits see it. Which key a
 * socket address counts under (an IPv4 address, an IPv6 /64), and the
 * arithmetic of AUTH failures kept per key. Pure: no I/O, no clock (the
 * caller passes the time), so the unit tests drive it directly.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "smtpd/smtpd.h"

static void set_unknown(char *text, char *key)
{
	snprintf(text, PEER_TEXT_MAX, "unknown");
	snprintf(key, PEER_TEXT_MAX, "unknown");
}

/*
 * Names a client socket address. IPv4-mapped IPv6 (a dual-stack listener's
 * view of an IPv4 client) is an IPv4 client: one text and key for a host
 * whichever listener it reached. For other IPv6 the key is the /64: a
 * single site or host is routinely given a whole /64 (RFC 6177) and may
 * use any address in it, so counting by address would hand it 2^64 fresh
 * quotas. Fills text and key (PEER_TEXT_MAX bytes each); 0, or -1 with both
 * "unknown" for a family or length that is not IPv4/IPv6.
 */
int peer_name(const struct sockaddr *sa, size_t salen, char *text, char *key)
{
	if (sa == NULL) {
		set_unknown(text, key);
		return -1;
	}
	if (sa->sa_family == AF_INET && salen >= sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		if (inet_ntop(AF_INET, &sin->sin_addr, text, PEER_TEXT_MAX) == NULL) {
			set_unknown(text, key);
			return -1;
		}
		snprintf(key, PEER_TEXT_MAX, "%s", text);
		return 0;
	}
	if (sa->sa_family == AF_INET6 && salen >= sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		struct in6_addr prefix;
		char ptext[INET6_ADDRSTRLEN];

		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
			struct in_addr v4;
			memcpy(&v4, &sin6->sin6_addr.s6_addr[12], sizeof(v4));
			if (inet_ntop(AF_INET, &v4, text, PEER_TEXT_MAX) == NULL) {
				set_unknown(text, key);
				return -1;
			}
			snprintf(key, PEER_TEXT_MAX, "%s", text);
			return 0;
		}
		prefix = sin6->sin6_addr;
		memset(&prefix.s6_addr[8], 0, 8);
		if (inet_ntop(AF_INET6, &sin6->sin6_addr, text, PEER_TEXT_MAX) == NULL ||
		    inet_ntop(AF_INET6, &prefix, ptext, sizeof(ptext)) == NULL) {
			set_unknown(text, key);
			return -1;
		}
		snprintf(key, PEER_TEXT_MAX, "%s/64", ptext);
		return 0;
	}
	set_unknown(text, key);
	return -1;
}

/* 1 when the failures p remembers are older than memory seconds at now. */
static int failures_expired(const struct peer_state *p, time_t now, int memory)
{
	return now - p->last_failure > (time_t)memory;
}

/*
 * Counts one failed AUTH at now. Failures older than memory seconds are
 * forgotten first, so a key that fails once an hour never adds up to a
 * lockout.
 */
void peer_auth_failed(struct peer_state *p, time_t now, int memory)
{
	if (p->auth_failures > 0 && failures_expired(p, now, memory))
		p->auth_failures = 0;
	p->auth_failures++;
	p->last_failure = now;
}

/*
 * 1 when a new connection of this key is slowed down: max_failures or more
 * failures within the last memory seconds. Stale failures are forgotten
 * here as well (p is updated), 0 then.
 */
int peer_penalized(struct peer_state *p, time_t now, int memory, int max_failures)
{
	if (p->auth_failures > 0 && failures_expired(p, now, memory))
		p->auth_failures = 0;
	return p->auth_failures >= max_failures;
}

/*
 * 1 when nothing would be lost by dropping the key's entry: no open
 * connection and no AUTH failure within the last memory seconds.
 */
int peer_forgettable(const struct peer_state *p, time_t now, int memory)
{
	return p->conns <= 0 && (p->auth_failures == 0 || failures_expired(p, now, memory));
}
