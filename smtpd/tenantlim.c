/*
 * tenantlim: the per-tenant limits of the submission daemon. Per tenant it
 * counts the authenticated sessions open and keeps a token bucket of
 * messages per minute (capacity N, refilled continuously at N tokens per
 * 60 s). Pure: no I/O and no clock (the caller passes microseconds of the
 * monotonic clock), and the limits come with each call, since they come
 * from the configuration and the store's cache and change at run time. The
 * unit tests drive it directly.
 *
 * A bucket is kept in units of 1/USEC_PER_MIN token: refilling at N per
 * minute then adds exactly N units per microsecond, with no rounding.
 */
#include <stdio.h>
#include <stdlib.h>

#include "smtpd/smtpd.h"

#define USEC_PER_MIN 60000000ull

/*
 * One tenant with a session open or a bucket not yet full again. An entry
 * with no session is freed once its bucket has refilled: at once when that
 * is already so (settle), else by tenantlim_sweep.
 */
struct tl_entry {
	int conns;      /* authenticated sessions open */
	int rate;       /* messages per minute at the last take; 0: bucket unused (full) */
	uint64_t level; /* tokens in the bucket, in 1/USEC_PER_MIN units */
	uint64_t at;    /* when level was last brought up to date */
	char key[24];   /* the tenant id in decimal, the hmap key */
};

struct tenantlim {
	struct hmap *entries; /* tenant id text → struct tl_entry */
};

struct tenantlim *tenantlim_new(void)
{
	struct tenantlim *tl = xcalloc(1, sizeof(*tl));

	tl->entries = hmap_new();
	return tl;
}

void tenantlim_free(struct tenantlim *tl)
{
	if (tl == NULL)
		return;
	hmap_free(tl->entries, free);
	free(tl);
}

static void key_of(int64_t tenant_id, char key[24])
{
	snprintf(key, 24, "%lld", (long long)tenant_id);
}

static struct tl_entry *entry_find(const struct tenantlim *tl, int64_t tenant_id)
{
	char key[24];

	key_of(tenant_id, key);
	return hmap_get(tl->entries, key);
}

/* The entry of tenant_id, made when missing; owned by the table. */
static struct tl_entry *entry_get(struct tenantlim *tl, int64_t tenant_id)
{
	struct tl_entry *e = entry_find(tl, tenant_id);

	if (e)
		return e;
	e = xcalloc(1, sizeof(*e));
	key_of(tenant_id, e->key);
	hmap_put(tl->entries, e->key, e);
	return e;
}

/*
 * Brings e's bucket up to now at per_minute (> 0): an unused bucket starts
 * full; otherwise the time since the last update is credited at the rate
 * that applies now (a limit changed meanwhile counts from its change
 * being seen), and never more than the capacity, which a lowered limit
 * also cuts the bucket down to. A clock that seems to go back credits
 * nothing.
 */
static void refill(struct tl_entry *e, int per_minute, uint64_t now)
{
	uint64_t cap = (uint64_t)per_minute * USEC_PER_MIN;
	uint64_t elapsed = now > e->at ? now - e->at : 0;

	if (e->rate == 0) {
		e->level = cap;
	} else {
		/* A whole minute refills any bucket: no overflow past it. */
		if (elapsed > USEC_PER_MIN)
			elapsed = USEC_PER_MIN;
		e->level += elapsed * (uint64_t)per_minute;
		if (e->level > cap)
			e->level = cap;
	}
	e->rate = per_minute;
	if (now > e->at)
		e->at = now;
}

/* 1 when e's bucket is full at now (or unused). */
static int bucket_full(struct tl_entry *e, uint64_t now)
{
	if (e->rate == 0)
		return 1;
	refill(e, e->rate, now);
	return e->level >= (uint64_t)e->rate * USEC_PER_MIN;
}

/* 1 when e has nothing left to remember: no session, a full bucket. */
static int forgettable(struct tl_entry *e, uint64_t now)
{
	return e->conns == 0 && bucket_full(e, now);
}

/* After a change to e: frees it when there is nothing left to remember. */
static void settle(struct tenantlim *tl, struct tl_entry *e, uint64_t now)
{
	if (forgettable(e, now)) {
		hmap_del(tl->entries, e->key);
		free(e);
	}
}

int tenantlim_open(struct tenantlim *tl, int64_t tenant_id, int max, uint64_t now)
{
	struct tl_entry *e = entry_get(tl, tenant_id);

	/* Refused, the entry has sessions (max > 0): nothing to settle. */
	if (max > 0 && e->conns >= max)
		return 0;
	e->conns++;
	settle(tl, e, now);
	return 1;
}

void tenantlim_close(struct tenantlim *tl, int64_t tenant_id, uint64_t now)
{
	struct tl_entry *e = entry_find(tl, tenant_id);

	if (e == NULL)
		return;
	if (e->conns > 0)
		e->conns--;
	settle(tl, e, now);
}

int tenantlim_take(struct tenantlim *tl, int64_t tenant_id, int per_minute, uint64_t now)
{
	struct tl_entry *e;
	int ok;

	if (per_minute <= 0) {
		/* No limit: the bucket counts as full should one come back. */
		e = entry_find(tl, tenant_id);
		if (e)
			e->rate = 0;
		return 1;
	}
	e = entry_get(tl, tenant_id);
	refill(e, per_minute, now);
	ok = e->level >= USEC_PER_MIN;
	if (ok)
		e->level -= USEC_PER_MIN;
	settle(tl, e, now);
	return ok;
}

int tenantlim_sessions(const struct tenantlim *tl, int64_t tenant_id)
{
	const struct tl_entry *e = entry_find(tl, tenant_id);

	return e ? e->conns : 0;
}

size_t tenantlim_count(const struct tenantlim *tl)
{
	return hmap_count(tl->entries);
}

struct sweep {
	uint64_t now;
	struct tl_entry **gone;
	size_t n;
};

static void sweep_entry(void *arg, const char *key, void *value)
{
	struct sweep *sw = arg;

	if (forgettable(value, sw->now))
		sw->gone[sw->n++] = value;
}

size_t tenantlim_sweep(struct tenantlim *tl, uint64_t now)
{
	struct sweep sw = {now, NULL, 0};
	size_t i;

	/* Entries are few (tenants active in the last minute or so); the map
	 * cannot change while it is walked, so they go afterwards. */
	sw.gone = xcalloc(hmap_count(tl->entries) + 1, sizeof(*sw.gone));
	hmap_each(tl->entries, sweep_entry, &sw);
	for (i = 0; i < sw.n; i++) {
		hmap_del(tl->entries, sw.gone[i]->key);
		free(sw.gone[i]);
	}
	free(sw.gone);
	return sw.n;
}
