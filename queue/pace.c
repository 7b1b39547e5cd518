/*
 * pace: acceptance first ([delivery] acceptance_first). While mail keeps
 * arriving in the spool and the machine's CPUs are nearly full, delivery
 * starts no new transaction, so that clients waiting for their 250 get the
 * CPU; a message never waits for that reason longer than max_hold. The
 * reading of /proc/stat and the decision are pure; pace_sample does the
 * one read.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/deliver_int.h"

/*
 * Windows in a row that must look quiet before delivery goes on (a second
 * at the scheduler's 250 ms): a client's pause between two messages, or
 * one slow fsync, does not end a burst.
 */
#define PACE_RELEASE_WINDOWS 4

int pace_parse_stat(const char *text, size_t len, unsigned long long *idle,
                    unsigned long long *total)
{
	const char *p = text, *end = text + len;
	unsigned long long v[10] = {0};
	int n = 0;

	/* The first line is the sum over all CPUs: "cpu  user nice system idle
	 * iowait irq softirq steal guest guest_nice". */
	if (len < 4 || memcmp(p, "cpu ", 4) != 0)
		return -1;
	p += 4;
	while (n < 10 && p < end && *p != '\n') {
		unsigned long long x = 0;
		int digits = 0;

		while (p < end && *p == ' ')
			p++;
		while (p < end && *p >= '0' && *p <= '9') {
			if (x > (~0ULL - 9) / 10)
				return -1;
			x = x * 10 + (unsigned long long)(*p - '0');
			p++;
			digits++;
		}
		if (digits == 0)
			break;
		v[n++] = x;
	}
	if (n < 4)
		return -1;
	/* guest and guest_nice are already counted in user and nice. */
	*idle = v[3] + v[4];
	*total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
	return 0;
}

int pace_busy(unsigned arrivals, unsigned long long idle_delta, unsigned long long total_delta,
              int idle_min_percent)
{
	if (arrivals == 0 || total_delta == 0)
		return 0;
	return idle_delta * 100 < total_delta * (unsigned long long)idle_min_percent;
}

int pace_update(struct pace *p, int busy)
{
	if (busy) {
		p->quiet = 0;
		p->holding = 1;
	} else if (p->holding && ++p->quiet >= PACE_RELEASE_WINDOWS) {
		p->holding = 0;
		p->quiet = 0;
	}
	return p->holding;
}

int pace_sample(struct pace *p, unsigned arrivals)
{
	char buf[512];
	unsigned long long idle, total;
	ssize_t n;
	int fd, busy;

	fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		return pace_update(p, 0);
	n = read(fd, buf, sizeof(buf));
	close(fd);
	if (n <= 0 || pace_parse_stat(buf, (size_t)n, &idle, &total) == -1)
		return pace_update(p, 0);
	busy = p->have_last && total > p->last_total && idle >= p->last_idle &&
	       pace_busy(arrivals, idle - p->last_idle, total - p->last_total, p->idle_min);
	p->last_idle = idle;
	p->last_total = total;
	p->have_last = 1;
	return pace_update(p, busy);
}
