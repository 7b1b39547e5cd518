/*
 * idle: --idle N --hold SEC. Opens N connections that finish EHLO (and
 * STARTTLS, and AUTH when credentials are given), lets them sit, and reports
 * how much the server's resident memory grew per connection (--pid).
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "bench/bench.h"
#include "common/common.h"

/* Time the server gets to settle after the last connection is ready. */
#define SETTLE_MSEC 1000

enum idle_phase { PH_OPENING, PH_SETTLING, PH_HOLDING, PH_DONE };

struct proc_sample {
	long long rss_kb; /* -1 when unknown */
	long long fds;    /* -1 when unknown */
};

static struct {
	struct bench_run *run;
	struct worker *w;
	enum idle_phase phase;
	struct event *timer;
	struct event *progress;
	uint64_t t_start, t_opened;
	long long ready_at_open;
	long long failed_at_open;
	struct proc_sample before, after, end;
	long long fd_limit;
} S;

/* Reads VmRSS of pid in kB; -1 when it cannot be read. */
static long long read_rss_kb(pid_t pid)
{
	char path[64], line[256];
	long long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "VmRSS:", 6) == 0) {
			char *end;

			kb = strtoll(line + 6, &end, 10);
			if (end == line + 6)
				kb = -1;
			break;
		}
	fclose(f);
	return kb;
}

/* Counts pid's open file descriptors; -1 when not allowed. */
static long long count_fds(pid_t pid)
{
	char path[64];
	struct dirent *d;
	long long n = 0;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	dir = opendir(path);
	if (dir == NULL)
		return -1;
	while ((d = readdir(dir)) != NULL)
		if (d->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

/* The soft "Max open files" limit of pid; -1 when unknown or unlimited. */
static long long read_fd_limit(pid_t pid)
{
	char path[64], line[256];
	long long lim = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "Max open files", 14) == 0) {
			char *p = line + 14, *end;

			while (*p == ' ')
				p++;
			lim = strtoll(p, &end, 10);
			if (end == p)
				lim = -1;
			break;
		}
	fclose(f);
	return lim;
}

static void sample(struct proc_sample *s)
{
	s->rss_kb = S.run->o->pid ? read_rss_kb(S.run->o->pid) : -1;
	s->fds = S.run->o->pid ? count_fds(S.run->o->pid) : -1;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg);

/* Arms the one-shot phase timer. */
static void arm(long msec)
{
	struct timeval tv = {msec / 1000, (msec % 1000) * 1000};

	evtimer_add(S.timer, &tv);
}

void idle_progress(struct worker *w)
{
	if (S.phase != PH_OPENING || w->to_open > 0 || w->in_setup > 0)
		return;
	/* Every connection attempt has ended: ready or failed. */
	S.phase = PH_SETTLING;
	S.t_opened = now_usec();
	S.ready_at_open = w->ready;
	S.failed_at_open = w->st.conn_failed;
	if (S.ready_at_open == 0) {
		bench_abort(S.run, "no idle connection could be set up; last error: %s",
		            w->last_setup_error);
		return;
	}
	arm(SETTLE_MSEC);
}

static void progress_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = S.w;

	if (S.phase != PH_OPENING || S.run->o->quiet)
		return;
	fprintf(stderr, "sendgate-bench: %d ready, %lld failed, %d in setup, %d to open\n",
	        w->ready, w->st.conn_failed, w->in_setup, w->to_open);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = S.w;

	switch (S.phase) {
	case PH_SETTLING:
		sample(&S.after);
		S.phase = PH_HOLDING;
		w->holding = 1;
		if (!S.run->o->quiet && !S.run->o->json)
			fprintf(stderr, "sendgate-bench: %d connections ready, holding %d s\n",
			        w->ready, S.run->o->hold);
		arm((long)S.run->o->hold * 1000);
		break;
	case PH_HOLDING:
		sample(&S.end);
		S.phase = PH_DONE;
		worker_close_all(w);
		/* loopexit, not break: the deferred frees of the buffers run first. */
		event_base_loopexit(w->base, NULL);
		break;
	default:
		break;
	}
}

static double per_conn_bytes(const struct proc_sample *a, const struct proc_sample *b, long long n)
{
	if (a->rss_kb < 0 || b->rss_kb < 0 || n <= 0)
		return 0;
	return (double)(b->rss_kb - a->rss_kb) * 1024.0 / (double)n;
}

static void report_text(const struct stats *st, long long alive)
{
	const struct bench_opts *o = S.run->o;
	const char *sec = o->security == BENCH_TLS        ? "tls"
	                  : o->security == BENCH_STARTTLS ? "starttls"
	                                                  : "plain";

	printf("sendgate-bench idle %s:%d %s%s: %d requested, %lld ready, %lld failed\n", o->host,
	       o->port, sec, S.run->auth_line ? "+auth" : "", o->idle, S.ready_at_open,
	       S.failed_at_open);
	printf("open time:   %.3f s; setup ms p50 %.3f  p99 %.3f  max %.3f\n",
	       (double)(S.t_opened - S.t_start) / 1e6, stats_pct(st->setup, st->n_setup, 50) / 1e3,
	       stats_pct(st->setup, st->n_setup, 99) / 1e3,
	       st->n_setup ? st->setup[st->n_setup - 1] / 1e3 : 0.0);
	if (S.failed_at_open)
		printf("last error:  %s\n", S.w->last_setup_error);
	printf("hold:        %d s, %lld still open at the end, %lld closed by the "
	       "server\n",
	       o->hold, alive, S.w->closed_in_hold);
	if (o->pid) {
		printf("server pid %d: VmRSS %lld kB before, %lld kB with connections, "
		       "%lld kB at "
		       "end of hold\n",
		       (int)o->pid, S.before.rss_kb, S.after.rss_kb, S.end.rss_kb);
		printf("server fds:  %lld before, %lld with connections (limit %lld)\n",
		       S.before.fds, S.after.fds, S.fd_limit);
		printf("memory per idle connection: %.0f bytes\n",
		       per_conn_bytes(&S.before, &S.after, S.ready_at_open));
	}
}

static void report_json(const struct stats *st, long long alive)
{
	const struct bench_opts *o = S.run->o;
	json_t *root =
	    json_pack("{s:s, s:i, s:s, s:b, s:i, s:I, s:I, s:f, s:i, s:I, s:I}", "host", o->host,
	              "port", o->port, "security",
	              o->security == BENCH_TLS        ? "tls"
	              : o->security == BENCH_STARTTLS ? "starttls"
	                                              : "plain",
	              "auth", S.run->auth_line != NULL, "requested", o->idle, "ready",
	              (json_int_t)S.ready_at_open, "failed", (json_int_t)S.failed_at_open, "open_s",
	              (double)(S.t_opened - S.t_start) / 1e6, "hold_s", o->hold, "alive_at_end",
	              (json_int_t)alive, "closed_in_hold", (json_int_t)S.w->closed_in_hold);

	if (root == NULL)
		abort();
	if (S.failed_at_open)
		json_object_set_new(root, "last_error", json_string(S.w->last_setup_error));
	if (o->pid) {
		json_object_set_new(
		    root, "server",
		    json_pack("{s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "pid", (int)o->pid,
		              "rss_kb_before", (json_int_t)S.before.rss_kb, "rss_kb_after",
		              (json_int_t)S.after.rss_kb, "rss_kb_end", (json_int_t)S.end.rss_kb,
		              "fds_before", (json_int_t)S.before.fds, "fds_after",
		              (json_int_t)S.after.fds, "fd_limit", (json_int_t)S.fd_limit,
		              "bytes_per_conn",
		              per_conn_bytes(&S.before, &S.after, S.ready_at_open)));
	}
	json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
	fputc('\n', stdout);
	json_decref(root);
}

int idle_run(struct bench_run *run)
{
	const struct bench_opts *o = run->o;
	struct worker *w = run->workers[0];
	struct timeval one_sec = {1, 0};
	long long alive;
	int status;

	memset(&S, 0, sizeof(S));
	S.run = run;
	S.w = w;
	S.fd_limit = -1;
	if (o->pid) {
		sample(&S.before);
		if (S.before.rss_kb < 0) {
			fprintf(stderr, "sendgate-bench: cannot read /proc/%d/status: %s\n",
			        (int)o->pid, strerror(errno));
			return 2;
		}
		S.fd_limit = read_fd_limit(o->pid);
		if (S.fd_limit > 0 && S.before.fds >= 0 && S.before.fds + o->idle > S.fd_limit)
			fprintf(stderr,
			        "sendgate-bench: warning: server pid %d may open only %lld files "
			        "and has %lld open; %d more connections will hit EMFILE there. "
			        "Start it with a higher limit (ulimit -n %lld, or LimitNOFILE= in "
			        "its systemd unit); prlimit --pid %d --nofile=%lld needs "
			        "CAP_SYS_RESOURCE once it runs as another user\n",
			        (int)o->pid, S.fd_limit, S.before.fds, o->idle,
			        S.before.fds + o->idle + 64, (int)o->pid,
			        S.before.fds + o->idle + 64);
	}
	S.timer = evtimer_new(w->base, timer_cb, NULL);
	S.progress = event_new(w->base, -1, EV_PERSIST, progress_cb, NULL);
	if (S.timer == NULL || S.progress == NULL)
		abort();
	evtimer_add(S.progress, &one_sec);
	S.t_start = now_usec();
	S.phase = PH_OPENING;
	worker_fill(w);
	if (!run->aborting)
		event_base_dispatch(w->base);
	event_free(S.progress);
	event_free(S.timer);

	if (run->aborting) {
		worker_close_all(w);
		event_base_loop(w->base, EVLOOP_NONBLOCK);
		fprintf(stderr, "sendgate-bench: %s\n", run->abort_msg);
		if (w->last_errno == EMFILE || w->last_errno == ENFILE)
			fprintf(stderr, "sendgate-bench: hint: file descriptor limit reached\n");
		return 2;
	}
	alive = S.ready_at_open - w->closed_in_hold;
	stats_finish(&w->st);
	if (o->json)
		report_json(&w->st, alive);
	else
		report_text(&w->st, alive);
	if (S.failed_at_open && strstr(w->last_setup_error, "greeting"))
		fprintf(stderr, "sendgate-bench: hint: connections that never got a greeting "
		                "usually mean the server is at its max_connections or out of file "
		                "descriptors (see /proc/PID/limits)\n");
	status =
	    S.failed_at_open == 0 && w->closed_in_hold == 0 && S.ready_at_open == o->idle ? 0 : 1;
	return status;
}
