/*
 * Unit tests for tenants/verify_plan.c: how a DNS check moves a domain's
 * state, and when the domain is checked next.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tenants/tenants.h"

static const struct verify_tally all_ok = {2, 2, 0};
static const struct verify_tally none_ok = {2, 0, 0};
static const struct verify_tally half_ok = {2, 1, 0};
static const struct verify_tally dns_failed = {2, 1, 1}; /* one ok, one lookup failed */
static const struct verify_tally dns_failed_all = {2, 0, 2};
static const struct verify_tally half_ok_half_failed = {3, 1, 1}; /* one missing too */

static void expect_move(enum domain_state from, const struct verify_tally *t, enum domain_state to,
                        const char *event, int broken_since, int inconclusive)
{
	struct verify_move m;

	verify_transition(from, t, &m);
	assert_int_equal(m.state, to);
	if (event)
		assert_string_equal(m.event, event);
	else
		assert_null(m.event);
	assert_int_equal(m.broken_since, broken_since);
	assert_int_equal(m.inconclusive, inconclusive);
}

static void test_state_names(void **state)
{
	enum domain_state s;
	const char *names[] = {"pending", "partially_verified", "verified", "broken"};

	for (size_t i = 0; i < 4; i++) {
		assert_int_equal(domain_state_parse(names[i], &s), 0);
		assert_string_equal(domain_state_str(s), names[i]);
	}
	assert_int_equal(domain_state_parse("Verified", &s), -1);
	assert_int_equal(domain_state_parse("", &s), -1);
}

static void test_pending_moves(void **state)
{
	expect_move(DOMAIN_PENDING, &none_ok, DOMAIN_PENDING, NULL, 0, 0);
	expect_move(DOMAIN_PENDING, &half_ok, DOMAIN_PARTIAL, "domain.partially_verified", 0, 0);
	expect_move(DOMAIN_PENDING, &all_ok, DOMAIN_VERIFIED, "domain.verified", -1, 0);
	/* A pending domain is not sendable either way: failures just count as not ok. */
	expect_move(DOMAIN_PENDING, &dns_failed, DOMAIN_PARTIAL, "domain.partially_verified", 0, 0);
	expect_move(DOMAIN_PENDING, &dns_failed_all, DOMAIN_PENDING, NULL, 0, 0);
}

static void test_partial_moves(void **state)
{
	expect_move(DOMAIN_PARTIAL, &half_ok, DOMAIN_PARTIAL, NULL, 0, 0);
	expect_move(DOMAIN_PARTIAL, &all_ok, DOMAIN_VERIFIED, "domain.verified", -1, 0);
	/* Everything withdrawn again: back to pending, which has no event of its own. */
	expect_move(DOMAIN_PARTIAL, &none_ok, DOMAIN_PENDING, NULL, 0, 0);
}

static void test_verified_moves(void **state)
{
	expect_move(DOMAIN_VERIFIED, &all_ok, DOMAIN_VERIFIED, NULL, -1, 0);
	expect_move(DOMAIN_VERIFIED, &half_ok, DOMAIN_BROKEN, "domain.broken", 1, 0);
	expect_move(DOMAIN_VERIFIED, &none_ok, DOMAIN_BROKEN, "domain.broken", 1, 0);
	expect_move(DOMAIN_VERIFIED, &half_ok_half_failed, DOMAIN_BROKEN, "domain.broken", 1, 0);
	/* SERVFAIL or a timeout is not the customer's doing: no breakage. */
	expect_move(DOMAIN_VERIFIED, &dns_failed, DOMAIN_VERIFIED, NULL, 0, 1);
	expect_move(DOMAIN_VERIFIED, &dns_failed_all, DOMAIN_VERIFIED, NULL, 0, 1);
}

static void test_broken_moves(void **state)
{
	/* Still broken: broken_since is kept (the grace period runs from the first failure). */
	expect_move(DOMAIN_BROKEN, &half_ok, DOMAIN_BROKEN, NULL, 0, 0);
	expect_move(DOMAIN_BROKEN, &none_ok, DOMAIN_BROKEN, NULL, 0, 0);
	expect_move(DOMAIN_BROKEN, &all_ok, DOMAIN_VERIFIED, "domain.restored", -1, 0);
	expect_move(DOMAIN_BROKEN, &dns_failed, DOMAIN_BROKEN, NULL, 0, 1);
}

static void test_nothing_required(void **state)
{
	static const struct verify_tally empty = {0, 0, 0};

	expect_move(DOMAIN_PENDING, &empty, DOMAIN_VERIFIED, "domain.verified", -1, 0);
}

/* The defaults: 5m for an hour, then 1h; verified 6h; broken 5m for an hour, then 1h. */
static const struct verify_schedule defaults = {300, 3600, 3600, 6 * 3600, 300, 3600};

#define T0 1800000000L

static void test_schedule_new_domain(void **state)
{
	/* rnd = 0: no jitter. */
	assert_int_equal(verify_next_check(&defaults, DOMAIN_PENDING, 0, T0, T0, 0, 0), 300);
	assert_int_equal(verify_next_check(&defaults, DOMAIN_PARTIAL, 0, T0 + 3599, T0, 0, 0), 300);
	assert_int_equal(verify_next_check(&defaults, DOMAIN_PENDING, 0, T0 + 3600, T0, 0, 0),
	                 3600);
	assert_int_equal(verify_next_check(&defaults, DOMAIN_PARTIAL, 0, T0 + 86400, T0, 0, 0),
	                 3600);
}

static void test_schedule_verified_and_broken(void **state)
{
	time_t created = T0 - 30 * 86400L;

	assert_int_equal(verify_next_check(&defaults, DOMAIN_VERIFIED, 0, T0, created, 0, 0),
	                 6 * 3600);
	/* An outage hid the records: look again soon. */
	assert_int_equal(verify_next_check(&defaults, DOMAIN_VERIFIED, 1, T0, created, 0, 0), 300);
	assert_int_equal(verify_next_check(&defaults, DOMAIN_BROKEN, 0, T0, created, T0, 0), 300);
	assert_int_equal(verify_next_check(&defaults, DOMAIN_BROKEN, 0, T0 + 3599, created, T0, 0),
	                 300);
	assert_int_equal(verify_next_check(&defaults, DOMAIN_BROKEN, 0, T0 + 3600, created, T0, 0),
	                 VERIFY_BROKEN_LATE_INTERVAL);
}

static void test_schedule_jitter(void **state)
{
	long min = 1L << 30, max = 0;
	int distinct = 0;
	long seen[64];

	for (uint32_t rnd = 0; rnd < 100000; rnd += 97) {
		long n =
		    verify_next_check(&defaults, DOMAIN_VERIFIED, 0, T0, T0, 0, rnd * 2654435761u);
		int found = 0;

		/* Never later than the interval promises, never earlier than 90% of it. */
		assert_true(n <= 6 * 3600);
		assert_true(n >= 6 * 3600 - 6 * 360);
		min = n < min ? n : min;
		max = n > max ? n : max;
		for (int k = 0; k < distinct; k++)
			found |= seen[k] == n;
		if (!found && distinct < 64)
			seen[distinct++] = n;
	}
	/* Spread over most of the tenth, not bunched at one instant. */
	assert_true(max - min > 6 * 360 / 2);
	assert_true(distinct >= 32);
}

static void test_schedule_tiny_intervals(void **state)
{
	/* Tests shrink every interval to a second: never 0 (a busy loop). */
	static const struct verify_schedule tiny = {1, 60, 1, 1, 1, 60};

	for (uint32_t rnd = 0; rnd < 50; rnd++) {
		assert_int_equal(verify_next_check(&tiny, DOMAIN_PENDING, 0, T0, T0, 0, rnd), 1);
		assert_int_equal(verify_next_check(&tiny, DOMAIN_BROKEN, 0, T0, T0, T0, rnd), 1);
	}
}

static void test_schedule_from_config(void **state)
{
	struct config cfg;
	struct verify_schedule s;

	config_defaults(&cfg);
	verify_schedule_from_config(&cfg, &s);
	assert_int_equal(s.new_interval, 300);
	assert_int_equal(s.new_window, 3600);
	assert_int_equal(s.pending_interval, 3600);
	assert_int_equal(s.verified_interval, 6 * 3600);
	assert_int_equal(s.broken_interval, 300);
	assert_int_equal(s.broken_window, 3600);
	config_free(&cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_state_names),
	    cmocka_unit_test(test_pending_moves),
	    cmocka_unit_test(test_partial_moves),
	    cmocka_unit_test(test_verified_moves),
	    cmocka_unit_test(test_broken_moves),
	    cmocka_unit_test(test_nothing_required),
	    cmocka_unit_test(test_schedule_new_domain),
	    cmocka_unit_test(test_schedule_verified_and_broken),
	    cmocka_unit_test(test_schedule_jitter),
	    cmocka_unit_test(test_schedule_tiny_intervals),
	    cmocka_unit_test(test_schedule_from_config),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
