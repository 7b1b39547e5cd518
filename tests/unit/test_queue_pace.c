/*
 * test_queue_pace: acceptance first ([delivery] acceptance_first): reading
 * /proc/stat's first line, when acceptance counts as busy, and how holding
 * starts and ends.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "queue/deliver_int.h"

static int parse(const char *text, unsigned long long *idle, unsigned long long *total)
{
	return pace_parse_stat(text, strlen(text), idle, total);
}

static void test_parse_stat(void **state)
{
	unsigned long long idle = 0, total = 0;

	/* Linux >= 2.6.33: ten columns; guest time is already in user and nice. */
	assert_int_equal(parse("cpu  100 5 50 800 40 3 2 0 7 1\ncpu0 50 2 25 400 20 1 1 0 0 0\n",
	                       &idle, &total),
	                 0);
	assert_int_equal(idle, 800); /* iowait is not idle here */
	assert_int_equal(total, 1000);
	/* Older kernels stop after iowait (or earlier); four columns at least. */
	assert_int_equal(parse("cpu 1 2 3 4\n", &idle, &total), 0);
	assert_int_equal(idle, 4);
	assert_int_equal(total, 10);
	/* Trailing spaces before the newline are harmless. */
	assert_int_equal(parse("cpu  10 0 10 80 0 0 0 0 \n", &idle, &total), 0);
	assert_int_equal(idle, 80);
	assert_int_equal(total, 100);
}

static void test_parse_stat_refuses(void **state)
{
	unsigned long long idle = 7, total = 9;

	assert_int_equal(parse("", &idle, &total), -1);
	assert_int_equal(parse("cpu0 1 2 3 4\n", &idle, &total), -1); /* one CPU, not the sum */
	assert_int_equal(parse("intr 1 2 3 4\n", &idle, &total), -1);
	assert_int_equal(parse("cpu  1 2 3\n", &idle, &total), -1); /* no idle column */
	assert_int_equal(parse("cpu  1 2 x 4\n", &idle, &total), -1);
	assert_int_equal(parse("cpu  99999999999999999999 0 0 0\n", &idle, &total), -1);
	assert_int_equal(parse("cpu  1 2 3 4x 5\n", &idle, &total), -1); /* not a number */
	/* A line cut short (a read that stopped inside it) is not trusted. */
	assert_int_equal(parse("cpu  10 0 10 80 0 0 0 0", &idle, &total), -1);
	/* Nothing written on failure. */
	assert_int_equal(idle, 7);
	assert_int_equal(total, 9);
}

static void test_busy(void **state)
{
	/* Mail arriving and 19 % free, under the default 30 %: busy. */
	assert_int_equal(pace_busy(500, 19, 100, 30), 1);
	/* Exactly at the threshold is not under it. */
	assert_int_equal(pace_busy(500, 30, 100, 30), 0);
	assert_int_equal(pace_busy(500, 60, 100, 30), 0);
	/* A full machine with nothing, or a trickle, arriving is not
	 * acceptance's doing. */
	assert_int_equal(pace_busy(0, 0, 100, 30), 0);
	assert_int_equal(pace_busy(PACE_MIN_ARRIVALS - 1, 0, 100, 30), 0);
	assert_int_equal(pace_busy(PACE_MIN_ARRIVALS, 0, 100, 30), 1);
	/* No time passed: no verdict. */
	assert_int_equal(pace_busy(500, 0, 0, 30), 0);
	/* 100: enough arrivals while the machine is not completely idle. */
	assert_int_equal(pace_busy(PACE_MIN_ARRIVALS, 99, 100, 100), 1);
	/* Large deltas (a window of a huge machine) do not overflow. */
	assert_int_equal(pace_busy(500, 1ULL << 40, 1ULL << 42, 30), 1);
}

static void test_hold_and_release(void **state)
{
	struct pace p;

	memset(&p, 0, sizeof(p));
	assert_int_equal(pace_update(&p, 0), 0);
	/* The first busy window holds at once. */
	assert_int_equal(pace_update(&p, 1), 1);
	/* One quiet window is not enough (a pause between two bursts)... */
	assert_int_equal(pace_update(&p, 0), 1);
	/* ...and a busy one starts the count again. */
	assert_int_equal(pace_update(&p, 1), 1);
	assert_int_equal(pace_update(&p, 0), 1);
	assert_int_equal(pace_update(&p, 0), 1);
	assert_int_equal(pace_update(&p, 0), 1);
	/* Four quiet windows in a row release. */
	assert_int_equal(pace_update(&p, 0), 0);
	assert_int_equal(pace_update(&p, 0), 0);
	assert_int_equal(p.holding, 0);
}

static void test_sample_reads_this_machine(void **state)
{
	struct pace p;

	memset(&p, 0, sizeof(p));
	p.idle_min = 100;
	/* The first sample only records the counters: no verdict yet. */
	assert_int_equal(pace_sample(&p, 1000), 0);
	assert_int_equal(p.have_last, 1);
	assert_true(p.last_total > 0);
	assert_true(p.last_idle <= p.last_total);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_stat),
	    cmocka_unit_test(test_parse_stat_refuses),
	    cmocka_unit_test(test_busy),
	    cmocka_unit_test(test_hold_and_release),
	    cmocka_unit_test(test_sample_reads_this_machine),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
