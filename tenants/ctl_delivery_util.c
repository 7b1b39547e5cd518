/*
 * ctl_delivery_util: the pure parts of sendgatectl's delivery commands
 * (pool names, source addresses, suppressed recipient addresses, counts).
 * No database, no files: tests/unit/test_tenants.c calls them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tenants/ctl.h"

#define POOL_NAME_MAX 63
#define ADDRESS_MAX 254 /* RFC 5321 4.5.3.1.3: a path is 256 octets with its brackets */
#define LOCAL_PART_MAX 64

/* Mirrors the CHECK on pools.name: ^[a-z0-9][a-z0-9._-]{0,62}$ */
const char *ctl_pool_name_problem(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0)
		return "a pool name must not be empty";
	if (n > POOL_NAME_MAX)
		return "a pool name is at most 63 characters";
	if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
		return "a pool name must start with a lower-case letter or a digit";
	for (i = 1; i < n; i++) {
		int ch = (unsigned char)s[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' ||
		      ch == '_' || ch == '-'))
			return "a pool name may contain only a-z, 0-9, '.', '_' and '-'";
	}
	return NULL;
}

int ctl_ip_normalize(const char *in, char *out, size_t outlen, const char **why)
{
	unsigned char a[sizeof(struct in6_addr)];
	int family;

	if (strchr(in, ':') != NULL)
		family = AF_INET6;
	else
		family = AF_INET;
	/* inet_pton takes neither prefixes, zones nor brackets, nor "1.2.3" forms. */
	if (inet_pton(family, in, a) != 1) {
		*why = family == AF_INET6 ? "not an IPv6 address (like 2001:db8::25)"
		                          : "not an IPv4 address (like 192.0.2.25)";
		return -1;
	}
	if (family == AF_INET6 && IN6_IS_ADDR_V4MAPPED((struct in6_addr *)a)) {
		*why = "an IPv4-mapped IPv6 address: give the IPv4 address itself";
		return -1;
	}
	if ((family == AF_INET && a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0) ||
	    (family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED((struct in6_addr *)a))) {
		*why = "the unspecified address cannot be a source address";
		return -1;
	}
	if ((family == AF_INET && a[0] >= 224) ||
	    (family == AF_INET6 && IN6_IS_ADDR_MULTICAST((struct in6_addr *)a))) {
		*why = "a multicast or reserved address cannot be a source address";
		return -1;
	}
	if (inet_ntop(family, a, out, (socklen_t)outlen) == NULL) {
		*why = "the address does not fit";
		return -1;
	}
	return 0;
}

int ctl_address_normalize(const char *in, char *out, size_t outlen, const char **why)
{
	size_t n = strlen(in), i;
	const char *at = strrchr(in, '@');

	if (n == 0) {
		*why = "an address must not be empty";
		return -1;
	}
	if (n > ADDRESS_MAX || n + 1 > outlen) {
		*why = "an address is at most 254 characters";
		return -1;
	}
	if (in[0] == '<' || in[n - 1] == '>') {
		*why = "give the address without angle brackets";
		return -1;
	}
	if (at == NULL || at == in || at[1] == '\0') {
		*why = "an address needs a local part, '@' and a domain (like user@example.com)";
		return -1;
	}
	if ((size_t)(at - in) > LOCAL_PART_MAX) {
		*why = "the local part of an address is at most 64 characters";
		return -1;
	}
	for (i = 0; i < n; i++) {
		int ch = (unsigned char)in[i];

		if (ch <= 0x20 || ch == 0x7f) {
			*why = "an address must not contain spaces or control characters";
			return -1;
		}
	}
	if (!ctl_utf8_valid(in)) {
		*why = "an address must be UTF-8";
		return -1;
	}
	if (strchr(at + 1, '.') == NULL && at[1] != '[') {
		*why = "the domain of an address needs at least two labels";
		return -1;
	}
	/* ASCII only, as the daemon lower-cases RCPT TO before looking it up. */
	for (i = 0; i < n; i++) {
		char ch = in[i];

		out[i] = ch >= 'A' && ch <= 'Z' ? (char)(ch + ('a' - 'A')) : ch;
	}
	out[n] = '\0';
	return 0;
}

int ctl_parse_count(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	if (s[0] < '0' || s[0] > '9')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}
