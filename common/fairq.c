/*
 * fairq: a queue that takes turns between owners. Each owner (a tenant)
 * has its own FIFO; the owners with items waiting form a ring, and every
 * pop takes one item from the owner at the front and sends that owner to
 * the back. An owner with a thousand items waiting therefore delays
 * another owner's next item by one item, not a thousand.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

struct fairq_owner {
	struct fairq_owner *next; /* in the ring of owners with items */
	struct fairq_item *head, *tail;
	char key[24];
};

struct fairq {
	struct hmap *owners; /* key -> struct fairq_owner, only owners with items */
	struct fairq_owner *ring_head, *ring_tail;
	size_t len;
};

struct fairq *fairq_new(void)
{
	struct fairq *q = xcalloc(1, sizeof(*q));

	q->owners = hmap_new();
	return q;
}

void fairq_free(struct fairq *q)
{
	if (q == NULL)
		return;
	hmap_free(q->owners, free);
	free(q);
}

static void ring_append(struct fairq *q, struct fairq_owner *o)
{
	o->next = NULL;
	if (q->ring_tail)
		q->ring_tail->next = o;
	else
		q->ring_head = o;
	q->ring_tail = o;
}

void fairq_push(struct fairq *q, int64_t owner, struct fairq_item *it)
{
	char key[24];
	struct fairq_owner *o;

	snprintf(key, sizeof(key), "%" PRId64, owner);
	o = hmap_get(q->owners, key);
	if (o == NULL) {
		o = xcalloc(1, sizeof(*o));
		memcpy(o->key, key, sizeof(key));
		hmap_put(q->owners, o->key, o);
		ring_append(q, o);
	}
	it->next = NULL;
	if (o->tail)
		o->tail->next = it;
	else
		o->head = it;
	o->tail = it;
	q->len++;
}

struct fairq_item *fairq_pop(struct fairq *q)
{
	struct fairq_owner *o = q->ring_head;
	struct fairq_item *it;

	if (o == NULL)
		return NULL;
	it = o->head;
	o->head = it->next;
	if (o->head == NULL)
		o->tail = NULL;
	it->next = NULL;
	q->len--;
	q->ring_head = o->next;
	if (q->ring_head == NULL)
		q->ring_tail = NULL;
	if (o->head) {
		ring_append(q, o); /* its next item waits for the others' turns */
	} else {
		hmap_del(q->owners, o->key);
		free(o);
	}
	return it;
}

size_t fairq_len(const struct fairq *q)
{
	return q->len;
}
