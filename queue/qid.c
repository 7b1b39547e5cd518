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
	pthread_mutex_unlock(&qid_lock);

	for (i = QID_TIME_CHARS - 1; i >= 0; i--) {
		out[i] = qid_digits[usec & 31];
		usec >>= 5;
	}
	random_bytes(rnd, sizeof(rnd));
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
