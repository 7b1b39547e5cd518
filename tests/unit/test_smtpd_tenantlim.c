/*
 * Unit tests for the per-tenant limits (smtpd/tenantlim.c): session
 * counting, the messages-per-minute bucket's refill arithmetic on an
 * injected clock, and entries freed once nothing is left to remember.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "smtpd/smtpd.h"

#define SEC 1000000ull /* the clock is in microseconds */
#define T0 (1000 * SEC)

/* Takes up to n messages at now; returns how many were allowed. */
static int take_n(struct tenantlim *tl, int64_t tenant, int per_minute, uint64_t now, int n)
{
	int i, ok = 0;

	for (i = 0; i < n; i++)
		ok += tenantlim_take(tl, tenant, per_minute, now);
	return ok;
}

static void test_sessions_counted_per_tenant(void **state)
{
	struct tenantlim *tl = tenantlim_new();

	assert_int_equal(tenantlim_open(tl, 7, 2, T0), 1);
	assert_int_equal(tenantlim_open(tl, 7, 2, T0), 1);
	/* The third is refused and not counted. */
	assert_int_equal(tenantlim_open(tl, 7, 2, T0), 0);
	assert_int_equal(tenantlim_sessions(tl, 7), 2);
	/* Another tenant has a count of its own. */
	assert_int_equal(tenantlim_open(tl, 8, 2, T0), 1);
	assert_int_equal(tenantlim_sessions(tl, 8), 1);
	/* One ends: there is room again. */
	tenantlim_close(tl, 7, T0);
	assert_int_equal(tenantlim_sessions(tl, 7), 1);
	assert_int_equal(tenantlim_open(tl, 7, 2, T0), 1);
	assert_int_equal(tenantlim_open(tl, 7, 2, T0), 0);
	/* A lowered limit refuses new sessions; open ones stay counted. */
	assert_int_equal(tenantlim_open(tl, 7, 1, T0), 0);
	assert_int_equal(tenantlim_sessions(tl, 7), 2);
	/* No limit (0) counts without refusing. */
	assert_int_equal(tenantlim_open(tl, 7, 0, T0), 1);
	assert_int_equal(tenantlim_sessions(tl, 7), 3);
	tenantlim_free(tl);
}

static void test_bucket_starts_full_and_empties(void **state)
{
	struct tenantlim *tl = tenantlim_new();

	assert_int_equal(tenantlim_open(tl, 1, 0, T0), 1);
	assert_int_equal(take_n(tl, 1, 3, T0, 3), 3);
	assert_int_equal(tenantlim_take(tl, 1, 3, T0), 0);
	assert_int_equal(tenantlim_take(tl, 1, 3, T0), 0);
	/* A refusal takes nothing: 20 s later there is exactly one token. */
	assert_int_equal(take_n(tl, 1, 3, T0 + 20 * SEC, 2), 1);
	tenantlim_free(tl);
}

static void test_refill_is_continuous(void **state)
{
	struct tenantlim *tl = tenantlim_new();
	uint64_t t;

	/* 3 per minute: one token per 20 s, counted to the microsecond. */
	assert_int_equal(take_n(tl, 1, 3, T0, 3), 3);
	assert_int_equal(tenantlim_take(tl, 1, 3, T0 + 20 * SEC - 1), 0);
	assert_int_equal(tenantlim_take(tl, 1, 3, T0 + 20 * SEC), 1);
	assert_int_equal(tenantlim_take(tl, 1, 3, T0 + 20 * SEC), 0);
	/* Refills in small steps add up, with nothing lost to rounding. */
	for (t = T0 + 20 * SEC + 7; t < T0 + 40 * SEC; t += 7 * SEC + 3)
		assert_int_equal(tenantlim_take(tl, 1, 3, t), 0);
	assert_int_equal(tenantlim_take(tl, 1, 3, T0 + 40 * SEC), 1);

	/* 60 per minute: one per second. */
	assert_int_equal(take_n(tl, 2, 60, T0, 100), 60);
	assert_int_equal(take_n(tl, 2, 60, T0 + SEC / 2, 5), 0);
	assert_int_equal(take_n(tl, 2, 60, T0 + SEC, 5), 1);
	assert_int_equal(take_n(tl, 2, 60, T0 + 11 * SEC, 20), 10);

	/* The largest rate, 10 million a minute: one every 6 µs. (Emptied
	 * by lowering the limit to 1 a minute for a moment.) */
	assert_int_equal(take_n(tl, 3, 10000000, T0, 10), 10);
	assert_int_equal(take_n(tl, 3, 1, T0, 10), 1);
	assert_int_equal(take_n(tl, 3, 10000000, T0 + 5, 10), 0);
	assert_int_equal(take_n(tl, 3, 10000000, T0 + 6, 10), 1);
	assert_int_equal(take_n(tl, 3, 10000000, T0 + 6 + 3600 * SEC, 1000), 1000);
	tenantlim_free(tl);
}

static void test_refill_stops_at_capacity(void **state)
{
	struct tenantlim *tl = tenantlim_new();

	assert_int_equal(take_n(tl, 1, 3, T0, 3), 3);
	/* An hour, or years, later: full, never more than full. */
	assert_int_equal(take_n(tl, 1, 3, T0 + 3600 * SEC, 10), 3);
	assert_int_equal(take_n(tl, 1, 3, T0 + 3600 * SEC + 100ull * 365 * 86400 * SEC, 10), 3);
	tenantlim_free(tl);
}

static void test_clock_going_back_credits_nothing(void **state)
{
	struct tenantlim *tl = tenantlim_new();

	assert_int_equal(take_n(tl, 1, 3, T0 + 60 * SEC, 3), 3);
	assert_int_equal(tenantlim_take(tl, 1, 3, T0), 0);
	/* Nor does it shift the refill: still 20 s after the last take. */
	assert_int_equal(tenantlim_take(tl, 1, 3, T0 + 80 * SEC - 1), 0);
	assert_int_equal(tenantlim_take(tl, 1, 3, T0 + 80 * SEC), 1);
	tenantlim_free(tl);
}

static void test_limit_changes(void **state)
{
	struct tenantlim *tl = tenantlim_new();

	assert_int_equal(tenantlim_open(tl, 1, 0, T0), 1);
	/* No limit: every message goes, nothing is taken. */
	assert_int_equal(take_n(tl, 1, 0, T0, 1000), 1000);
	/* A limit appears: its bucket starts full. */
	assert_int_equal(take_n(tl, 1, 5, T0, 10), 5);
	/* Lowered while empty: still empty, refills at the new rate. */
	assert_int_equal(take_n(tl, 1, 2, T0 + 29 * SEC, 5), 0);
	assert_int_equal(take_n(tl, 1, 2, T0 + 30 * SEC, 5), 1);
	/* Raised: refills at the new rate up to the new capacity. */
	assert_int_equal(take_n(tl, 1, 120, T0 + 90 * SEC, 200), 120);
	/* Lowered while full: cut down to the new capacity. */
	assert_int_equal(take_n(tl, 1, 120, T0 + 200 * SEC, 1), 1);
	assert_int_equal(take_n(tl, 1, 4, T0 + 200 * SEC, 10), 4);
	/* Lifted, then back: the bucket counts as full again. */
	assert_int_equal(take_n(tl, 1, 0, T0 + 200 * SEC, 3), 3);
	assert_int_equal(take_n(tl, 1, 4, T0 + 200 * SEC, 10), 4);
	tenantlim_free(tl);
}

static void test_entries_freed(void **state)
{
	struct tenantlim *tl = tenantlim_new();

	assert_int_equal(tenantlim_count(tl), 0);
	/* Sessions only, no messages: freed when the last one ends. */
	assert_int_equal(tenantlim_open(tl, 1, 0, T0), 1);
	assert_int_equal(tenantlim_open(tl, 1, 0, T0), 1);
	assert_int_equal(tenantlim_count(tl), 1);
	tenantlim_close(tl, 1, T0);
	assert_int_equal(tenantlim_count(tl), 1);
	tenantlim_close(tl, 1, T0);
	assert_int_equal(tenantlim_count(tl), 0);
	assert_int_equal(tenantlim_sessions(tl, 1), 0);

	/* No limit on messages: nothing to remember either. */
	assert_int_equal(tenantlim_open(tl, 2, 0, T0), 1);
	assert_int_equal(take_n(tl, 2, 0, T0, 5), 5);
	tenantlim_close(tl, 2, T0);
	assert_int_equal(tenantlim_count(tl), 0);

	/* A bucket not yet full keeps the entry after the session ... */
	assert_int_equal(tenantlim_open(tl, 3, 0, T0), 1);
	assert_int_equal(take_n(tl, 3, 3, T0, 3), 3);
	tenantlim_close(tl, 3, T0 + SEC);
	assert_int_equal(tenantlim_count(tl), 1);
	/* ... so that reconnecting does not refill it. */
	assert_int_equal(tenantlim_open(tl, 3, 0, T0 + 2 * SEC), 1);
	assert_int_equal(tenantlim_take(tl, 3, 3, T0 + 2 * SEC), 0);
	tenantlim_close(tl, 3, T0 + 2 * SEC);
	/* A sweep before it has refilled keeps it ... */
	assert_int_equal(tenantlim_sweep(tl, T0 + 59 * SEC), 0);
	assert_int_equal(tenantlim_count(tl), 1);
	/* ... and frees it once full (three tokens take 60 s). */
	assert_int_equal(tenantlim_sweep(tl, T0 + 60 * SEC), 1);
	assert_int_equal(tenantlim_count(tl), 0);

	/* A session still open keeps its entry whatever the bucket. */
	assert_int_equal(tenantlim_open(tl, 4, 0, T0), 1);
	assert_int_equal(tenantlim_sweep(tl, T0 + 3600 * SEC), 0);
	assert_int_equal(tenantlim_count(tl), 1);
	assert_int_equal(tenantlim_sessions(tl, 4), 1);
	/* A refused session leaves the count as it was. */
	assert_int_equal(tenantlim_open(tl, 4, 1, T0), 0);
	tenantlim_close(tl, 4, T0);
	assert_int_equal(tenantlim_count(tl), 0);
	/* Closing what is not counted is harmless. */
	tenantlim_close(tl, 4, T0);
	tenantlim_close(tl, 99, T0);
	assert_int_equal(tenantlim_count(tl), 0);

	/* Many tenants with buckets still refilling: the sweep frees each
	 * once its sessions ended and its bucket is full, not before. */
	{
		int64_t t;
		for (t = 100; t < 200; t++) {
			assert_int_equal(tenantlim_open(tl, t, 0, T0), 1);
			assert_int_equal(tenantlim_take(tl, t, 6, T0), 1);
		}
		for (t = 100; t < 150; t++)
			tenantlim_close(tl, t, T0);
		assert_int_equal(tenantlim_count(tl), 100);
		assert_int_equal(tenantlim_sweep(tl, T0 + 9 * SEC), 0);
		assert_int_equal(tenantlim_sweep(tl, T0 + 10 * SEC), 50);
		assert_int_equal(tenantlim_count(tl), 50);
		for (t = 150; t < 200; t++)
			tenantlim_close(tl, t, T0 + 10 * SEC);
		assert_int_equal(tenantlim_count(tl), 0);
	}
	tenantlim_free(tl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sessions_counted_per_tenant),
	    cmocka_unit_test(test_bucket_starts_full_and_empties),
	    cmocka_unit_test(test_refill_is_continuous),
	    cmocka_unit_test(test_refill_stops_at_capacity),
	    cmocka_unit_test(test_clock_going_back_credits_nothing),
	    cmocka_unit_test(test_limit_changes),
	    cmocka_unit_test(test_entries_freed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
