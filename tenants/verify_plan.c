/*
 * verify_plan: the pure half of DNS verification. How a check moves a
 * domain's state, and when the domain is checked next. No I/O, no DNS:
 * tests/unit/test_tenants_verify.c calls these directly.
 */
#include <string.h>

#include "tenants/tenants.h"

static const char *const state_names[] = {
    [DOMAIN_PENDING] = "pending",
    [DOMAIN_PARTIAL] = "partially_verified",
    [DOMAIN_VERIFIED] = "verified",
    [DOMAIN_BROKEN] = "broken",
};

const char *domain_state_str(enum domain_state s)
{
	if ((size_t)s >= ARRAY_LEN(state_names))
		return "pending";
	return state_names[s];
}

int domain_state_parse(const char *s, enum domain_state *out)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(state_names); i++)
		if (strcmp(s, state_names[i]) == 0) {
			*out = (enum domain_state)i;
			return 0;
		}
	return -1;
}

void verify_transition(enum domain_state from, const struct verify_tally *t,
                       struct verify_move *out)
{
	int failed = t->total - t->ok - t->errors; /* records conclusively wrong */

	memset(out, 0, sizeof(*out));
	out->state = from;
	if (t->ok >= t->total) {
		out->state = DOMAIN_VERIFIED;
		out->broken_since = -1;
		if (from == DOMAIN_BROKEN)
			out->event = "domain.restored";
		else if (from != DOMAIN_VERIFIED)
			out->event = "domain.verified";
		return;
	}
	switch (from) {
	case DOMAIN_VERIFIED:
	case DOMAIN_BROKEN:
		if (failed <= 0) {
			/*
			 * A resolver outage says nothing about the customer's
			 * records: breaking the domain (and, after the grace
			 * period, refusing its mail) on it would punish the
			 * customer for our DNS. Keep the state, retry soon.
			 */
			out->inconclusive = 1;
			return;
		}
		out->state = DOMAIN_BROKEN;
		if (from == DOMAIN_VERIFIED) {
			out->event = "domain.broken";
			out->broken_since = 1;
		}
		return;
	case DOMAIN_PENDING:
	case DOMAIN_PARTIAL:
		out->state = t->ok > 0 ? DOMAIN_PARTIAL : DOMAIN_PENDING;
		if (out->state == DOMAIN_PARTIAL && from != DOMAIN_PARTIAL)
			out->event = "domain.partially_verified";
		return;
	}
}

void verify_schedule_from_config(const struct config *cfg, struct verify_schedule *s)
{
	s->new_interval = cfg->verify_new_interval;
	s->new_window = cfg->verify_new_window;
	s->pending_interval = cfg->verify_pending_interval;
	s->verified_interval = cfg->verify_verified_interval;
	s->broken_interval = cfg->verify_broken_interval;
	s->broken_window = cfg->verify_broken_window;
}

static long at_least_one(long v)
{
	return v < 1 ? 1 : v;
}

long verify_next_check(const struct verify_schedule *s, enum domain_state state, int inconclusive,
                       time_t now, time_t created_at, time_t broken_since, uint32_t rnd)
{
	long interval;

	switch (state) {
	case DOMAIN_VERIFIED:
		interval = s->verified_interval;
		if (inconclusive && s->broken_interval < interval)
			interval = s->broken_interval;
		break;
	case DOMAIN_BROKEN:
		if (broken_since == 0 || now - broken_since < s->broken_window)
			interval = s->broken_interval;
		else
			interval = s->broken_interval > VERIFY_BROKEN_LATE_INTERVAL
			               ? s->broken_interval
			               : VERIFY_BROKEN_LATE_INTERVAL;
		break;
	case DOMAIN_PENDING:
	case DOMAIN_PARTIAL:
	default:
		if (now - created_at < s->new_window)
			interval = s->new_interval;
		else
			interval = s->pending_interval;
		break;
	}
	interval = at_least_one(interval);
	/*
	 * Jitter only shortens: "every 5 minutes" stays true, and domains
	 * added in one bulk import spread over the tenth of an interval
	 * after their first checks instead of all falling due together.
	 */
	return at_least_one(interval - (long)(rnd % ((uint32_t)(interval / 10) + 1)));
}
