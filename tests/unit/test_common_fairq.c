/* Unit tests for the queue that takes turns between tenants (common/fairq.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"

struct job {
	struct fairq_item q; /* first member: a popped item is the job */
	int64_t owner;
	int seq; /* order pushed, per owner */
};

static struct job *push(struct fairq *q, struct job *j, int64_t owner, int seq)
{
	j->owner = owner;
	j->seq = seq;
	fairq_push(q, owner, &j->q);
	return j;
}

static struct job *pop(struct fairq *q)
{
	return (struct job *)fairq_pop(q);
}

static void test_empty(void **state)
{
	struct fairq *q = fairq_new();

	(void)state;
	assert_null(fairq_pop(q));
	assert_int_equal(fairq_len(q), 0);
	fairq_free(q);
}

/* One owner alone: first in, first out. */
static void test_one_owner_is_fifo(void **state)
{
	struct fairq *q = fairq_new();
	struct job jobs[5];
	int i;

	(void)state;
	for (i = 0; i < 5; i++)
		push(q, &jobs[i], 7, i);
	assert_int_equal(fairq_len(q), 5);
	for (i = 0; i < 5; i++) {
		struct job *j = pop(q);
		assert_non_null(j);
		assert_int_equal(j->seq, i);
	}
	assert_null(fairq_pop(q));
	fairq_free(q);
}

/*
 * The case the queue exists for: a tenant with a backlog of 50 jobs, then a
 * quiet tenant's one. First come first served would give the quiet job
 * 51st; taking turns gives it 2nd.
 */
static void test_backlog_does_not_delay_another_owner(void **state)
{
	struct fairq *q = fairq_new();
	struct job flood[50], quiet;
	int i;

	(void)state;
	for (i = 0; i < 50; i++)
		push(q, &flood[i], 1, i);
	push(q, &quiet, 2, 0);
	assert_ptr_equal(pop(q), &flood[0]);
	assert_ptr_equal(pop(q), &quiet);
	for (i = 1; i < 50; i++)
		assert_ptr_equal(pop(q), &flood[i]);
	assert_null(fairq_pop(q));
	fairq_free(q);
}

/* Three owners with backlogs of different lengths: one each in turn, each
 * owner's own jobs in order, the turn order kept as owners run out. */
static void test_round_robin_order(void **state)
{
	struct fairq *q = fairq_new();
	struct job a[3], b[1], c[2];
	const struct job *want[] = {&a[0], &b[0], &c[0], &a[1], &c[1], &a[2]};
	size_t i;

	(void)state;
	push(q, &a[0], 10, 0);
	push(q, &a[1], 10, 1);
	push(q, &b[0], 20, 0);
	push(q, &c[0], -3, 0); /* any int64, negative included */
	push(q, &a[2], 10, 2);
	push(q, &c[1], -3, 1);
	for (i = 0; i < ARRAY_LEN(want); i++) {
		assert_ptr_equal(pop(q), want[i]);
		assert_int_equal(fairq_len(q), ARRAY_LEN(want) - i - 1);
	}
	assert_null(fairq_pop(q));
	fairq_free(q);
}

/* An owner that ran out and comes back joins the end of the turn. */
static void test_owner_returns_at_the_back(void **state)
{
	struct fairq *q = fairq_new();
	struct job a0, a1, b0, b1;

	(void)state;
	push(q, &a0, 1, 0);
	push(q, &b0, 2, 0);
	assert_ptr_equal(pop(q), &a0); /* owner 1 now has nothing */
	push(q, &a1, 1, 1);            /* back, behind owner 2 */
	push(q, &b1, 2, 1);
	assert_ptr_equal(pop(q), &b0);
	assert_ptr_equal(pop(q), &a1);
	assert_ptr_equal(pop(q), &b1);
	assert_null(fairq_pop(q));
	fairq_free(q);
}

/* Pops one job and checks it: each owner's jobs in order, and no owner
 * served twice in a row while another has jobs waiting. */
static void pop_checked(struct fairq *q, struct job *jobs, int *seen, int *next_seq,
			int *waiting, int owners, int64_t *last)
{
	struct job *j = pop(q);
	int i;

	assert_non_null(j);
	assert_int_equal(j->seq, next_seq[j->owner]++);
	waiting[j->owner]--;
	if (j->owner == *last)
		for (i = 0; i < owners; i++)
			if (i != j->owner)
				assert_int_equal(waiting[i], 0);
	*last = j->owner;
	seen[j - jobs]++;
}

/* Many owners pushing uneven bursts (1 to 3 jobs back to back, as a tenant
 * with several connections does) interleaved with pops: every job comes
 * out exactly once, each owner's in order, and no owner gets two turns in
 * a row while another still has jobs waiting (first come first served
 * would serve a burst back to back). */
static void test_many_owners_all_served_once(void **state)
{
	enum { OWNERS = 200, PER = 20 };
	static struct job jobs[OWNERS * PER];
	static int seen[OWNERS * PER];
	struct fairq *q = fairq_new();
	int next_seq[OWNERS], waiting[OWNERS], pushed[OWNERS];
	size_t n = 0, out = 0;
	int64_t last = -1;
	int i, b, added;

	(void)state;
	memset(seen, 0, sizeof(seen));
	memset(next_seq, 0, sizeof(next_seq));
	memset(waiting, 0, sizeof(waiting));
	memset(pushed, 0, sizeof(pushed));
	while (n < OWNERS * PER) {
		added = 0;
		for (i = 0; i < OWNERS; i++)
			for (b = 0; b < 1 + i % 3 && pushed[i] < PER; b++) {
				push(q, &jobs[n++], i, pushed[i]++);
				waiting[i]++;
				added++;
			}
		/* Take half of what was added, to mix pushes and pops. */
		for (i = 0; i < added / 2; i++, out++)
			pop_checked(q, jobs, seen, next_seq, waiting, OWNERS, &last);
	}
	for (; fairq_len(q) > 0; out++)
		pop_checked(q, jobs, seen, next_seq, waiting, OWNERS, &last);
	assert_int_equal(out, OWNERS * PER);
	for (i = 0; i < OWNERS * PER; i++)
		assert_int_equal(seen[i], 1);
	assert_null(fairq_pop(q));
	fairq_free(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_empty),
	    cmocka_unit_test(test_one_owner_is_fifo),
	    cmocka_unit_test(test_backlog_does_not_delay_another_owner),
	    cmocka_unit_test(test_round_robin_order),
	    cmocka_unit_test(test_owner_returns_at_the_back),
	    cmocka_unit_test(test_many_owners_all_served_once),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
