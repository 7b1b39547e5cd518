/* qid: queue ids, time-ordered and unique, safe as file names. */
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "queue/queue.h"

/* Base32 digits in ASCII order, so ids compare like the numbers they encode. */
static const char qid_digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUV";

#define QID_TIME_CHARS 11 /* 55 bits of microseconds: good until year 3111 */

static pthread_mutex_t qid_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t qid_last_usec;
/*
 * Random bytes for the ids' random part, taken from the kernel 4 KB at a
 * time instead of one getrandom() per message (a system call is what a
 * message costs most on a VM). Still the kernel's CSPRNG output, never
 * reused: the process that forks the delivery child calls exec at once.
 */
static unsigned char qid_pool[4096];
static size_t qid_pool_left;

void queue_id_new(char out[QUEUE_ID_LEN + 1])
{
	unsigned char rnd[QUEUE_ID_LEN - QID_TIME_CHARS];
	struct timespec ts;
	uint64_t usec;
	int i;

	clock_gettime(CLOCK_REALTIME, &ts);
	usec = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	/* Strictly increasing here even if the clock steps back or repeats. */
	pthread_mutex_lock(&qid_lock);
	if (usec <= qid_last_usec)
		usec = qid_last_usec + 1;
	qid_last_usec = usec;
	if (qid_pool_left < sizeof(rnd)) {
		random_bytes(qid_pool, sizeof(qid_pool));
		qid_pool_left = sizeof(qid_pool);
	}
	qid_pool_left -= sizeof(rnd);
	memcpy(rnd, qid_pool + qid_pool_left, sizeof(rnd));
	memset(qid_pool + qid_pool_left, 0, sizeof(rnd));
	pthread_mutex_unlock(&qid_lock);

	for (i = QID_TIME_CHARS - 1; i >= 0; i--) {
		out[i] = qid_digits[usec & 31];
		usec >>= 5;
	}
	for (i = 0; i < QUEUE_ID_LEN - QID_TIME_CHARS; i++)
		out[QID_TIME_CHARS + i] = qid_digits[rnd[i] & 31];
	out[QUEUE_ID_LEN] = '\0';
}

int queue_id_valid(const char *s)
{
	size_t i;

	for (i = 0; i < QUEUE_ID_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'Z')))
			return 0;
	return s[QUEUE_ID_LEN] == '\0';
}
