/*
 * test_queue_backoff: retry arithmetic and what a server's reply says
 * (enhanced codes, "try again in N minutes").
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "queue/deliver_int.h"

static const struct retry_policy defaults = {300, 2.0, 4 * 3600, 5 * 86400};

static void test_delay_grows_and_caps(void **state)
{
	/* Middle of the jitter range (r = 0.5) is the plain value. */
	assert_int_equal(retry_delay(&defaults, 1, 0.5), 300);
	assert_int_equal(retry_delay(&defaults, 2, 0.5), 600);
	assert_int_equal(retry_delay(&defaults, 3, 0.5), 1200);
	assert_int_equal(retry_delay(&defaults, 6, 0.5), 9600);
	/* Capped at retry_max, even with the highest jitter and huge counts. */
	assert_int_equal(retry_delay(&defaults, 7, 0.5), 4 * 3600);
	assert_int_equal(retry_delay(&defaults, 7, 0.99), 4 * 3600);
	assert_int_equal(retry_delay(&defaults, 100000, 0.99), 4 * 3600);
	/* attempts < 1 is treated as the first. */
	assert_int_equal(retry_delay(&defaults, 0, 0.5), 300);
}

static void test_delay_jitter_bounds(void **state)
{
	double r;

	for (r = 0; r < 1; r += 0.01) {
		long d = retry_delay(&defaults, 2, r);
		assert_true(d >= 480 && d <= 720);
	}
	/* Jitter never below one second. */
	{
		struct retry_policy p = {1, 1.0, 60, 3600};
		assert_int_equal(retry_delay(&p, 1, 0.0), 1);
		assert_int_equal(retry_delay(&p, 50, 0.99), 1);
	}
	/* Out-of-range draws are clamped. */
	assert_int_equal(retry_delay(&defaults, 1, -5), 240);
	assert_int_equal(retry_delay(&defaults, 1, 7), 359);
}

static void test_next_attempt_and_expiry(void **state)
{
	time_t recv = 1000000;

	/* A server hint longer than our delay wins. */
	assert_int_equal(retry_next(&defaults, recv, recv + 10, 1, 3600, 0.5), recv + 10 + 3600);
	/* A shorter hint does not shorten our backoff. */
	assert_int_equal(retry_next(&defaults, recv, recv + 10, 1, 5, 0.5), recv + 10 + 300);
	/* Never scheduled past the expiry time... */
	assert_int_equal(retry_next(&defaults, recv, recv + 5 * 86400 - 100, 1, -1, 0.5),
	                 recv + 5 * 86400);
	/* ...and at or after it the message expires (0). */
	assert_int_equal(retry_next(&defaults, recv, recv + 5 * 86400, 1, -1, 0.5), 0);
	assert_int_equal(retry_next(&defaults, recv, recv + 6 * 86400, 3, -1, 0.5), 0);
}

static void test_retry_hint(void **state)
{
	assert_int_equal(reply_retry_hint("4.7.1 Greylisted, try again in 5 minutes"), 300);
	assert_int_equal(reply_retry_hint("4.7.1 please TRY AGAIN IN 30 SECONDS"), 30);
	assert_int_equal(reply_retry_hint("4.2.0 retry in 2 hours"), 7200);
	assert_int_equal(reply_retry_hint("4.2.0 try again after 90s"), 90);
	assert_int_equal(reply_retry_hint("4.2.0 try again in 10 min."), 600);
	/* Capped at a day. */
	assert_int_equal(reply_retry_hint("try again in 1000 hours"), 86400);
	/* No number, no unit, or an unknown unit: no hint. */
	assert_int_equal(reply_retry_hint("4.3.0 try again later"), -1);
	assert_int_equal(reply_retry_hint("4.3.0 try again in 5"), -1);
	assert_int_equal(reply_retry_hint("4.3.0 try again in 5 fortnights"), -1);
	assert_int_equal(reply_retry_hint("4.3.0 try again in 5minutesx"), -1);
	assert_int_equal(reply_retry_hint(""), -1);
	/* Absurdly long numbers are not read as a hint. */
	assert_int_equal(reply_retry_hint("try again in 99999999999999 seconds"), -1);
}

static void test_enhanced_codes(void **state)
{
	char enh[16];

	assert_int_equal(reply_enhanced(550, "5.1.1 <x@y>: no such user", enh, sizeof(enh)), 1);
	assert_string_equal(enh, "5.1.1");
	assert_int_equal(reply_enhanced(451, "4.7.1", enh, sizeof(enh)), 1);
	assert_string_equal(enh, "4.7.1");
	assert_int_equal(reply_enhanced(250, "2.0.0 Ok: queued", enh, sizeof(enh)), 1);
	assert_string_equal(enh, "2.0.0");
	assert_int_equal(reply_enhanced(550, "5.7.123 policy", enh, sizeof(enh)), 1);
	assert_string_equal(enh, "5.7.123");
	/* Class must match the reply code; malformed codes are not codes. */
	assert_int_equal(reply_enhanced(550, "4.1.1 odd", enh, sizeof(enh)), 0);
	assert_string_equal(enh, "");
	assert_int_equal(reply_enhanced(550, "5.1 short", enh, sizeof(enh)), 0);
	assert_int_equal(reply_enhanced(550, "5.1.1234 long", enh, sizeof(enh)), 0);
	assert_int_equal(reply_enhanced(550, "5.1.1x", enh, sizeof(enh)), 0);
	assert_int_equal(reply_enhanced(550, "No such user", enh, sizeof(enh)), 0);
	assert_int_equal(reply_enhanced(550, "", enh, sizeof(enh)), 0);
	/* Too small an output buffer: no code rather than a cut one. */
	assert_int_equal(reply_enhanced(550, "5.1.1 x", enh, 4), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_delay_grows_and_caps),
	    cmocka_unit_test(test_delay_jitter_bounds),
	    cmocka_unit_test(test_next_attempt_and_expiry),
	    cmocka_unit_test(test_retry_hint),
	    cmocka_unit_test(test_enhanced_codes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
