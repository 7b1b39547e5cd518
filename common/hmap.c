/* hmap: a small chained hash map with string keys and a random seed. */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

struct hentry {
	struct hentry *next;
	uint64_t hash;
	void *value;
	char key[];
};

struct hmap {
	struct hentry **slots;
	size_t nslots;
	size_t count;
	uint64_t seed;
};

/* FNV-1a over a random seed, then a final mix: cheap and unpredictable. */
static uint64_t hmap_hash(const struct hmap *m, const char *key)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ m->seed;
	const unsigned char *p;

	for (p = (const unsigned char *)key; *p; p++) {
		h ^= *p;
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

struct hmap *hmap_new(void)
{
	struct hmap *m = xcalloc(1, sizeof(*m));

	m->nslots = 16;
	m->slots = xcalloc(m->nslots, sizeof(*m->slots));
	random_bytes(&m->seed, sizeof(m->seed));
	return m;
}

void hmap_free(struct hmap *m, void (*free_value)(void *))
{
	size_t i;

	if (m == NULL)
		return;
	for (i = 0; i < m->nslots; i++) {
		struct hentry *e = m->slots[i], *next;
		for (; e; e = next) {
			next = e->next;
			if (free_value)
				free_value(e->value);
			free(e);
		}
	}
	free(m->slots);
	free(m);
}

static void hmap_grow(struct hmap *m)
{
	size_t n = m->nslots * 2, i;
	struct hentry **slots = xcalloc(n, sizeof(*slots));

	for (i = 0; i < m->nslots; i++) {
		struct hentry *e = m->slots[i], *next;
		for (; e; e = next) {
			next = e->next;
			e->next = slots[e->hash & (n - 1)];
			slots[e->hash & (n - 1)] = e;
		}
	}
	free(m->slots);
	m->slots = slots;
	m->nslots = n;
}

void *hmap_put(struct hmap *m, const char *key, void *value)
{
	uint64_t h = hmap_hash(m, key);
	struct hentry *e;
	size_t klen;

	for (e = m->slots[h & (m->nslots - 1)]; e; e = e->next)
		if (e->hash == h && strcmp(e->key, key) == 0) {
			void *old = e->value;
			e->value = value;
			return old;
		}
	if (m->count + 1 > m->nslots)
		hmap_grow(m);
	klen = strlen(key);
	e = xmalloc(sizeof(*e) + klen + 1);
	memcpy(e->key, key, klen + 1);
	e->hash = h;
	e->value = value;
	e->next = m->slots[h & (m->nslots - 1)];
	m->slots[h & (m->nslots - 1)] = e;
	m->count++;
	return NULL;
}

void *hmap_get(const struct hmap *m, const char *key)
{
	uint64_t h = hmap_hash(m, key);
	struct hentry *e;

	for (e = m->slots[h & (m->nslots - 1)]; e; e = e->next)
		if (e->hash == h && strcmp(e->key, key) == 0)
			return e->value;
	return NULL;
}

void *hmap_del(struct hmap *m, const char *key)
{
	uint64_t h = hmap_hash(m, key);
	struct hentry **pp, *e;

	for (pp = &m->slots[h & (m->nslots - 1)]; (e = *pp); pp = &e->next)
		if (e->hash == h && strcmp(e->key, key) == 0) {
			void *v = e->value;
			*pp = e->next;
			free(e);
			m->count--;
			return v;
		}
	return NULL;
}

size_t hmap_count(const struct hmap *m)
{
	return m->count;
}

intptr_t hmap_counter(const struct hmap *m, const char *key)
{
	return (intptr_t)hmap_get(m, key);
}

intptr_t hmap_counter_add(struct hmap *m, const char *key, intptr_t delta)
{
	intptr_t n = hmap_counter(m, key) + delta;

	if (n != 0)
		hmap_put(m, key, (void *)n);
	else
		hmap_del(m, key);
	return n;
}

void hmap_each(const struct hmap *m, void (*fn)(void *arg, const char *key, void *value), void *arg)
{
	size_t i;
	struct hentry *e;

	for (i = 0; i < m->nslots; i++)
		for (e = m->slots[i]; e; e = e->next)
			fn(arg, e->key, e->value);
}
