/* Unit tests for the keys and failure arithmetic of the per-address limits (smtpd/peer.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cmocka.h>

#include "smtpd/smtpd.h"

#define MEMORY 900

/* Names addr (IPv4 or IPv6 text) through a sockaddr, as accept() gives it. */
static int name_of(const char *addr, char *text, char *key)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(addr, ':')) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(587);
		assert_int_equal(inet_pton(AF_INET6, addr, &sin6->sin6_addr), 1);
		return peer_name((struct sockaddr *)sin6, sizeof(*sin6), text, key);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons(587);
		assert_int_equal(inet_pton(AF_INET, addr, &sin->sin_addr), 1);
		return peer_name((struct sockaddr *)sin, sizeof(*sin), text, key);
	}
}

struct key_case {
	const char *addr;
	const char *text;
	const char *key;
};

static const struct key_case key_cases[] = {
    /* IPv4: one address, one key. */
    {"192.0.2.1", "192.0.2.1", "192.0.2.1"},
    {"192.0.2.2", "192.0.2.2", "192.0.2.2"},
    {"127.0.0.1", "127.0.0.1", "127.0.0.1"},
    {"0.0.0.0", "0.0.0.0", "0.0.0.0"},
    {"255.255.255.255", "255.255.255.255", "255.255.255.255"},
    /* IPv4-mapped IPv6 is the IPv4 client (dual-stack listener). */
    {"::ffff:192.0.2.1", "192.0.2.1", "192.0.2.1"},
    {"::ffff:c000:0202", "192.0.2.2", "192.0.2.2"},
    {"::ffff:127.0.0.1", "127.0.0.1", "127.0.0.1"},
    /* IPv6: the /64, whatever the interface identifier. */
    {"2001:db8:1:2::1", "2001:db8:1:2::1", "2001:db8:1:2::/64"},
    {"2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"},
    {"2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"},
    {"2001:db8:1:3::1", "2001:db8:1:3::1", "2001:db8:1:3::/64"},
    {"2001:0db8:abcd:ef01:2345:6789:abcd:ef01", "2001:db8:abcd:ef01:2345:6789:abcd:ef01",
     "2001:db8:abcd:ef01::/64"},
    {"::1", "::1", "::/64"},
    {"fe80::1:2:3:4", "fe80::1:2:3:4", "fe80::/64"},
    /* Near the mapped prefix but not in it: plain IPv6. */
    {"::fffe:192.0.2.1", "::fffe:c000:201", "::/64"},
    {"64:ff9b::192.0.2.1", "64:ff9b::c000:201", "64:ff9b::/64"},
    /* Text that is as long as it gets. */
    {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
     "ffff:ffff:ffff:ffff::/64"},
};

static void test_keys(void **state)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(key_cases); i++) {
		const struct key_case *c = &key_cases[i];
		char text[PEER_TEXT_MAX], key[PEER_TEXT_MAX];

		memset(text, 'x', sizeof(text));
		memset(key, 'x', sizeof(key));
		assert_int_equal(name_of(c->addr, text, key), 0);
		if (strcmp(text, c->text) || strcmp(key, c->key))
			fail_msg("%s: text %s key %s, expected %s and %s", c->addr, text, key, c->text,
				 c->key);
	}
}

/* Two addresses of one /64 share a key; neighbouring /64s do not. */
static void test_same_slash64(void **state)
{
	char t1[PEER_TEXT_MAX], k1[PEER_TEXT_MAX], t2[PEER_TEXT_MAX], k2[PEER_TEXT_MAX];

	assert_int_equal(name_of("2001:db8:0:1:1::1", t1, k1), 0);
	assert_int_equal(name_of("2001:db8:0:1:9:8:7:6", t2, k2), 0);
	assert_string_equal(k1, k2);
	assert_string_not_equal(t1, t2);
	assert_int_equal(name_of("2001:db8:0:2:1::1", t2, k2), 0);
	assert_string_not_equal(k1, k2);
	assert_int_equal(name_of("2001:db8:1:1:1::1", t2, k2), 0);
	assert_string_not_equal(k1, k2);
	/* IPv4 keeps one key per address. */
	assert_int_equal(name_of("198.51.100.1", t1, k1), 0);
	assert_int_equal(name_of("198.51.100.2", t2, k2), 0);
	assert_string_not_equal(k1, k2);
	/* And the mapped form of an address is the same client. */
	assert_int_equal(name_of("::ffff:198.51.100.1", t2, k2), 0);
	assert_string_equal(k1, k2);
	assert_string_equal(t1, t2);
}

/* Port and scope do not change the key. */
static void test_port_and_scope_ignored(void **state)
{
	struct sockaddr_in6 a, b;
	char t1[PEER_TEXT_MAX], k1[PEER_TEXT_MAX], t2[PEER_TEXT_MAX], k2[PEER_TEXT_MAX];

	memset(&a, 0, sizeof(a));
	a.sin6_family = AF_INET6;
	a.sin6_port = htons(1);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::5", &a.sin6_addr), 1);
	b = a;
	b.sin6_port = htons(65535);
	b.sin6_scope_id = 7;
	assert_int_equal(peer_name((struct sockaddr *)&a, sizeof(a), t1, k1), 0);
	assert_int_equal(peer_name((struct sockaddr *)&b, sizeof(b), t2, k2), 0);
	assert_string_equal(k1, k2);
	assert_string_equal(k1, "2001:db8::/64");
}

/* Anything but IPv4/IPv6, or a short address, is "unknown". */
static void test_unknown(void **state)
{
	struct sockaddr_un un;
	struct sockaddr_in6 sin6;
	char text[PEER_TEXT_MAX], key[PEER_TEXT_MAX];

	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	assert_int_equal(peer_name((struct sockaddr *)&un, sizeof(un), text, key), -1);
	assert_string_equal(text, "unknown");
	assert_string_equal(key, "unknown");

	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	assert_int_equal(peer_name((struct sockaddr *)&sin6, sizeof(struct sockaddr_in), text, key),
			 -1);
	assert_string_equal(key, "unknown");

	assert_int_equal(peer_name(NULL, 0, text, key), -1);
	assert_string_equal(key, "unknown");
}

static void test_failures_add_up_to_penalty(void **state)
{
	struct peer_state p;

	memset(&p, 0, sizeof(p));
	p.conns = 1;
	assert_false(peer_penalized(&p, 1000, MEMORY, 3));
	peer_auth_failed(&p, 1000, MEMORY);
	peer_auth_failed(&p, 1010, MEMORY);
	assert_false(peer_penalized(&p, 1010, MEMORY, 3));
	peer_auth_failed(&p, 1020, MEMORY);
	assert_int_equal(p.auth_failures, 3);
	assert_true(peer_penalized(&p, 1020, MEMORY, 3));
	/* Still within memory seconds of the last failure. */
	assert_true(peer_penalized(&p, 1020 + MEMORY, MEMORY, 3));
	/* Past it: forgotten. */
	assert_false(peer_penalized(&p, 1021 + MEMORY, MEMORY, 3));
	assert_int_equal(p.auth_failures, 0);
}

/* Failures far apart never add up to a lockout. */
static void test_stale_failures_forgotten(void **state)
{
	struct peer_state p;
	int i;

	memset(&p, 0, sizeof(p));
	for (i = 0; i < 10; i++)
		peer_auth_failed(&p, 5000 + (time_t)i * (MEMORY + 1), MEMORY);
	assert_int_equal(p.auth_failures, 1);
	assert_false(peer_penalized(&p, 5000 + 9 * (MEMORY + 1), MEMORY, 3));
	assert_true(peer_penalized(&p, 5000 + 9 * (MEMORY + 1), MEMORY, 1));
}

static void test_forgettable(void **state)
{
	struct peer_state p;

	memset(&p, 0, sizeof(p));
	/* No connection, no failure: nothing to keep. */
	assert_true(peer_forgettable(&p, 0, MEMORY));
	assert_true(peer_forgettable(&p, 100000, MEMORY));
	/* A connection keeps the entry, failures or not. */
	p.conns = 1;
	assert_false(peer_forgettable(&p, 100000, MEMORY));
	peer_auth_failed(&p, 100000, MEMORY);
	p.conns = 0;
	/* One failure is kept for memory seconds, then dropped. */
	assert_false(peer_forgettable(&p, 100000, MEMORY));
	assert_false(peer_forgettable(&p, 100000 + MEMORY, MEMORY));
	assert_true(peer_forgettable(&p, 100001 + MEMORY, MEMORY));
	/* A clock that has not moved (or a failure at time 0) keeps it. */
	memset(&p, 0, sizeof(p));
	peer_auth_failed(&p, 0, MEMORY);
	assert_false(peer_forgettable(&p, 0, MEMORY));
	assert_true(peer_forgettable(&p, MEMORY + 1, MEMORY));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_keys),
	    cmocka_unit_test(test_same_slash64),
	    cmocka_unit_test(test_port_and_scope_ignored),
	    cmocka_unit_test(test_unknown),
	    cmocka_unit_test(test_failures_add_up_to_penalty),
	    cmocka_unit_test(test_stale_failures_forgotten),
	    cmocka_unit_test(test_forgettable),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
