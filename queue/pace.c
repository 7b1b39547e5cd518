/*
 * pace: acceptance first ([delivery] acceptance_first). While mail keeps
 * arriving in the spool and the machine's CPUs are nearly full, delivery
 * starts no new transaction, so that clients waiting for their 250 get the
 * CPU; a message never waits for that reason longer than max_hold. The
 * reading of /proc/stat and the decision are pure; pace_sample does the
 * reads.
 */
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"
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
	const char *nl = memchr(text, '\n', len);
	unsigned long long v[10] = {0};
	int n = 0;

	/* The first line is the sum over all CPUs: "cpu  user nice system idle
	 * iowait irq softirq steal guest guest_nice". Only a whole line. */
	if (len < 4 || memcmp(p, "cpu ", 4) != 0 || nl == NULL)
		return -1;
	end = nl;
	p += 4;
	while (n < 10 && p < end) {
		unsigned long long x = 0;
		int digits = 0;

		while (p < end && *p == ' ')
			p++;
		if (p == end)
			break;
		while (p < end && *p >= '0' && *p <= '9') {
			if (x > (~0ULL - 9) / 10)
				return -1;
			x = x * 10 + (unsigned long long)(*p - '0');
			p++;
			digits++;
		}
		if (digits == 0 || (p < end && *p != ' '))
			return -1;
		v[n++] = x;
	}
	if (n < 4)
		return -1;
	/*
	 * iowait is not counted as free: under a submission load it is the
	 * commit thread waiting for its fsyncs, the disk that delivery's own
	 * writes would compete for. guest and guest_nice are already counted
	 * in user and nice.
	 */
	*idle = v[3];
	*total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
	return 0;
}

int pace_busy(unsigned arrivals, unsigned long long free_delta, unsigned long long total_delta,
              int idle_min_percent)
{
	if (arrivals < PACE_MIN_ARRIVALS || total_delta == 0)
		return 0;
	return free_delta * 100 < total_delta * (unsigned long long)idle_min_percent;
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

/* This process's CPU time, in the ticks /proc/stat counts in. */
static unsigned long long own_ticks(void)
{
	struct timespec ts;
	long hz = sysconf(_SC_CLK_TCK);

	if (hz <= 0 || clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == -1)
		return 0;
	return (unsigned long long)ts.tv_sec * (unsigned long long)hz +
	       (unsigned long long)ts.tv_nsec * (unsigned long long)hz / 1000000000ULL;
}

int pace_sample(struct pace *p, unsigned arrivals)
{
	char buf[512];
	unsigned long long idle, total, own = own_ticks();
	ssize_t n = -1;
	int fd, busy;

	fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
	if (fd != -1) {
		n = read(fd, buf, sizeof(buf));
		close(fd);
	}
	if (n <= 0 || pace_parse_stat(buf, (size_t)n, &idle, &total) == -1) {
		if (!p->unavailable)
			log_warn("event=acceptance_first_unavailable reason=\"/proc/stat unreadable\"");
		p->unavailable = 1;
		return pace_update(p, 0);
	}
	/*
	 * What delivery itself used counts as free: it is what holding gives
	 * back, and a backlog must not make delivery hold for its own load.
	 */
	busy = p->have_last && total > p->last_total && idle >= p->last_idle &&
	       own >= p->last_own &&
	       pace_busy(arrivals, idle - p->last_idle + (own - p->last_own),
	                 total - p->last_total, p->idle_min);
	if (p->have_last && total > p->last_total && idle >= p->last_idle)
		p->last_free_pct = (int)(100 * (idle - p->last_idle) / (total - p->last_total));
	p->last_idle = idle;
	p->last_total = total;
	p->last_own = own;
	p->have_last = 1;
	return pace_update(p, busy);
}
