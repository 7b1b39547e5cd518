/*
 * sendgate-bench: SMTP submission load generator. Parses options, prepares
 * the shared message and TLS context, runs one loop per thread and prints
 * throughput, errors by reply code and end-of-data latency percentiles.
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <jansson.h>
#include <openssl/err.h>

#include "bench/bench.h"
#include "common/common.h"

static const char usage_text[] =
    "usage: sendgate-bench [options]\n"
    "  -H HOST            server address (127.0.0.1)\n"
    "  -p PORT            server port (587, or 465 with --tls)\n"
    "  --starttls         plaintext greeting, then STARTTLS (default)\n"
    "  --tls              implicit TLS (SMTPS)\n"
    "  --no-tls           no TLS at all\n"
    "  -u USER -P SECRET  AUTH PLAIN credentials\n"
    "  -c N               concurrent connections (10)\n"
    "  -n M               total messages (1000)\n"
    "  -s SIZE            message size in bytes, k/M suffixes allowed (5000)\n"
    "  -r R               recipients per message (1)\n"
    "  --from ADDR        envelope and header sender (bench@example.com)\n"
    "  --to ADDR          recipient; %d becomes a counter "
    "(rcpt%d@example.net)\n"
    "  --per-conn K       messages per connection, then QUIT and reconnect "
    "(unlimited)\n"
    "  --pipelining       send MAIL, RCPT and DATA together (RFC 2920)\n"
    "  --rate R           start at most R messages a second in all (open loop)\n"
    "  -t THREADS         event loops, one per thread (1)\n"
    "  --timeout SEC      per-reply and connect timeout (30)\n"
    "  --ramp N           most connections in setup at once (256)\n"
    "  --helo NAME        EHLO name (bench.sendgate.invalid)\n"
    "  --json             machine-readable output on stdout\n"
    "  -q                 no progress lines on stderr\n"
    "idle mode (memory per idle connection):\n"
    "  --idle N           open N connections, complete EHLO (STARTTLS, AUTH "
    "when -u)\n"
    "  --hold SEC         keep them open this long (10)\n"
    "  --pid PID          server pid: report VmRSS growth per connection\n"
    "exit status: 0 all messages accepted, 1 some were not, 2 usage or setup "
    "error\n";

static void usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "sendgate-bench: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n%s", usage_text);
	exit(2);
}

/* Parses a whole decimal number in [min, max] or exits with usage. */
static long long parse_num(const char *s, const char *name, long long min, long long max)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end != '\0' || v < min || v > max)
		usage_error("bad value for %s", name);
	return v;
}

enum {
	OPT_TLS = 256,
	OPT_STARTTLS,
	OPT_NOTLS,
	OPT_FROM,
	OPT_TO,
	OPT_PERCONN,
	OPT_PIPE,
	OPT_JSON,
	OPT_IDLE,
	OPT_HOLD,
	OPT_PID,
	OPT_TIMEOUT,
	OPT_RAMP,
	OPT_HELO,
	OPT_HELP,
	OPT_RATE,
};

static void parse_args(int argc, char **argv, struct bench_opts *o)
{
	static const struct option longopts[] = {
	    {"tls", no_argument, NULL, OPT_TLS},
	    {"starttls", no_argument, NULL, OPT_STARTTLS},
	    {"no-tls", no_argument, NULL, OPT_NOTLS},
	    {"from", required_argument, NULL, OPT_FROM},
	    {"to", required_argument, NULL, OPT_TO},
	    {"per-conn", required_argument, NULL, OPT_PERCONN},
	    {"pipelining", no_argument, NULL, OPT_PIPE},
	    {"json", no_argument, NULL, OPT_JSON},
	    {"idle", required_argument, NULL, OPT_IDLE},
	    {"hold", required_argument, NULL, OPT_HOLD},
	    {"pid", required_argument, NULL, OPT_PID},
	    {"timeout", required_argument, NULL, OPT_TIMEOUT},
	    {"ramp", required_argument, NULL, OPT_RAMP},
	    {"helo", required_argument, NULL, OPT_HELO},
	    {"help", no_argument, NULL, OPT_HELP},
	    {"rate", required_argument, NULL, OPT_RATE},
	    {NULL, 0, NULL, 0},
	};
	long long size;
	int ch;

	memset(o, 0, sizeof(*o));
	o->host = "127.0.0.1";
	o->security = BENCH_STARTTLS;
	o->conns = 10;
	o->total = 1000;
	o->size = 5000;
	o->rcpts = 1;
	o->from = "bench@example.com";
	o->to = "rcpt%d@example.net";
	o->threads = 1;
	o->timeout = 30;
	o->ramp = 256;
	o->hold = 10;
	o->helo = "bench.sendgate.invalid";
	while ((ch = getopt_long(argc, argv, "H:p:u:P:c:n:s:r:t:qh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H':
			o->host = optarg;
			break;
		case 'p':
			o->port = (int)parse_num(optarg, "-p", 1, 65535);
			break;
		case 'u':
			o->user = optarg;
			break;
		case 'P':
			o->secret = optarg;
			break;
		case 'c':
			o->conns = (int)parse_num(optarg, "-c", 1, 1000000);
			break;
		case 'n':
			o->total = parse_num(optarg, "-n", 1, 1000000000LL);
			break;
		case 's':
			if (parse_size(optarg, &size) < 0 || size < 1 ||
			    size > 1024LL * 1024 * 1024)
				usage_error("bad value for %s", "-s");
			o->size = (size_t)size;
			break;
		case 'r':
			o->rcpts = (int)parse_num(optarg, "-r", 1, 100000);
			break;
		case 't':
			o->threads = (int)parse_num(optarg, "-t", 1, 256);
			break;
		case 'q':
			o->quiet = 1;
			break;
		case OPT_TLS:
			o->security = BENCH_TLS;
			break;
		case OPT_STARTTLS:
			o->security = BENCH_STARTTLS;
			break;
		case OPT_NOTLS:
			o->security = BENCH_PLAIN;
			break;
		case OPT_FROM:
			o->from = optarg;
			break;
		case OPT_TO:
			o->to = optarg;
			break;
		case OPT_PERCONN:
			o->per_conn = parse_num(optarg, "--per-conn", 0, 1000000000LL);
			break;
		case OPT_PIPE:
			o->pipelining = 1;
			break;
		case OPT_JSON:
			o->json = 1;
			break;
		case OPT_IDLE:
			o->idle = (int)parse_num(optarg, "--idle", 1, 10000000);
			break;
		case OPT_HOLD:
			o->hold = (int)parse_num(optarg, "--hold", 0, 86400 * 7);
			break;
		case OPT_PID:
			o->pid = (pid_t)parse_num(optarg, "--pid", 1, 1 << 30);
			break;
		case OPT_TIMEOUT:
			o->timeout = (int)parse_num(optarg, "--timeout", 1, 86400);
			break;
		case OPT_RAMP:
			o->ramp = (int)parse_num(optarg, "--ramp", 1, 1000000);
			break;
		case OPT_RATE: {
			char *end;

			errno = 0;
			o->rate = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(o->rate > 0 && o->rate <= 1e7))
				usage_error("bad value for %s", "--rate");
			break;
		}
		case OPT_HELO:
			o->helo = optarg;
			break;
		case 'h':
		case OPT_HELP:
			fputs(usage_text, stdout);
			exit(0);
		default:
			usage_error("%s", "unknown option");
		}
	}
	if (optind < argc)
		usage_error("unexpected argument %s", argv[optind]);
	if (o->port == 0)
		o->port = o->security == BENCH_TLS ? 465 : 587;
	if ((o->user == NULL) != (o->secret == NULL))
		usage_error("%s", "-u and -P go together");
	if (strlen(o->helo) > 255 || strpbrk(o->helo, " \r\n"))
		usage_error("%s", "bad --helo name");
	if (strpbrk(o->from, "<> \r\n") || strpbrk(o->to, "<> \r\n"))
		usage_error("%s", "--from/--to: give a bare address, no <>, spaces or line ends");
	if (o->idle)
		o->threads = 1;
	if (o->threads > o->conns && !o->idle)
		o->threads = o->conns;
}

/* Raises our own open-file limit to the hard limit. */
static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Resolves the server address once; exits with a message on failure. */
static void resolve(struct bench_run *run)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
	char port[16];
	int r;

	snprintf(port, sizeof(port), "%d", run->o->port);
	r = getaddrinfo(run->o->host, port, &hints, &res);
	if (r != 0 || res == NULL) {
		fprintf(stderr, "sendgate-bench: cannot resolve %s: %s\n", run->o->host,
		        gai_strerror(r));
		exit(2);
	}
	memcpy(&run->addr, res->ai_addr, res->ai_addrlen);
	run->addrlen = res->ai_addrlen;
	freeaddrinfo(res);
}

/* A client context that accepts any certificate (dev servers use self-signed
 * ones). */
static SSL_CTX *make_ssl_ctx(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL)
		abort();
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	/*
	 * No SSL_CTX_set_read_ahead: it would halve the read() calls, but
	 * libevent 2.1 only drains SSL_pending(), which does not count records
	 * read ahead and not yet decrypted, so replies that arrive as separate
	 * records in one segment would sit unseen until the timeout.
	 */
	return ctx;
}

/* Builds "AUTH PLAIN <base64(\0user\0secret)>\r\n". */
static char *make_auth_line(const char *user, const char *secret)
{
	size_t ul = strlen(user), sl = strlen(secret), n = ul + sl + 2;
	unsigned char *raw;
	char *line;
	size_t len;

	if (ul > 1024 || sl > 1024) {
		fprintf(stderr, "sendgate-bench: -u/-P too long\n");
		exit(2);
	}
	raw = xmalloc(n);
	raw[0] = '\0';
	memcpy(raw + 1, user, ul);
	raw[1 + ul] = '\0';
	memcpy(raw + 2 + ul, secret, sl);
	line = xmalloc(4 * ((n + 2) / 3) + 32);
	memcpy(line, "AUTH PLAIN ", 11);
	len = 11 + base64_encode(raw, n, line + 11);
	memcpy(line + len, "\r\n", 3);
	free(raw);
	return line;
}

static const char *security_name(enum bench_security s)
{
	return s == BENCH_TLS ? "tls" : s == BENCH_STARTTLS ? "starttls" : "plain";
}

/* A loop whose epoll changes are batched per iteration: a connection
 * toggles write interest on every command, which would otherwise cost an
 * epoll_ctl each time. */
static struct event_base *new_base(void)
{
	struct event_config *cfg = event_config_new();
	struct event_base *base;

	if (cfg == NULL)
		abort();
	event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	if (base == NULL)
		fatal("event_base_new failed");
	return base;
}

/* Progress and ^C, on the first thread's loop. */
struct progress {
	struct bench_run *run;
	long long last_ok;
	uint64_t start;
};

static void progress_cb(evutil_socket_t fd, short what, void *arg)
{
	struct progress *p = arg;
	long long ok = p->run->done_ok, fail = p->run->done_fail;

	fprintf(stderr, "sendgate-bench: %.0fs %lld accepted, %lld failed, %lld msgs/s\n",
	        (double)(now_usec() - p->start) / 1e6, ok, fail, ok - p->last_ok);
	p->last_ok = ok;
}

static void interrupt_cb(evutil_socket_t sig, short what, void *arg)
{
	bench_abort(arg, "interrupted");
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	worker_fill(w);
	/* A loopbreak before the loop starts would be forgotten. */
	if (!w->run->aborting)
		event_base_dispatch(w->base);
	/* After an abort some connections are still open; one more pass of
	 * the loop runs the deferred frees of their buffers. */
	worker_close_all(w);
	event_base_loop(w->base, EVLOOP_NONBLOCK);
	return NULL;
}

static json_t *pct_json(const uint32_t *v, size_t n)
{
	double sum = 0;

	for (size_t i = 0; i < n; i++)
		sum += v[i];
	return json_pack("{s:f, s:f, s:f, s:f, s:f, s:I}", "p50", stats_pct(v, n, 50) / 1e3, "p90",
	                 stats_pct(v, n, 90) / 1e3, "p99", stats_pct(v, n, 99) / 1e3, "max",
	                 n ? v[n - 1] / 1e3 : 0.0, "mean", n ? sum / (double)n / 1e3 : 0.0, "count",
	                 (json_int_t)n);
}

static void print_json(const struct bench_run *run, const struct stats *s, double wall)
{
	const struct bench_opts *o = run->o;
	json_t *errs = json_object(), *root;
	char name[16];

	for (int i = 0; i < s->n_errs; i++)
		json_object_set_new(errs, stats_code_name(s->errs[i].code, name, sizeof(name)),
		                    json_pack("{s:I, s:s}", "count", (json_int_t)s->errs[i].count,
		                              "text", s->errs[i].text));
	root = json_pack(
	    "{s:s, s:i, s:s, s:i, s:i, s:I, s:I, s:i, s:b, s:I, s:I, s:I, s:I, s:o, "
	    "s:f, s:f, s:f, s:o, s:o, s:{s:I, s:I, s:I}}",
	    "host", o->host, "port", o->port, "security", security_name(o->security), "threads",
	    o->threads, "connections", o->conns, "messages", (json_int_t)o->total, "size",
	    (json_int_t)(run->msg.body_len + run->msg.header_len_estimate), "rcpts", o->rcpts,
	    "pipelining", o->pipelining, "per_conn", (json_int_t)o->per_conn, "accepted",
	    (json_int_t)s->accepted, "failed", (json_int_t)s->failed, "not_sent",
	    (json_int_t)(o->total - s->accepted - s->failed), "errors", errs, "wall_s", wall,
	    "msgs_per_s", wall > 0 ? s->accepted / wall : 0.0, "bytes_per_s",
	    wall > 0 ? s->bytes / wall : 0.0, "latency_ms", pct_json(s->lat, s->n_lat), "setup_ms",
	    pct_json(s->setup, s->n_setup), "conn", "opened", (json_int_t)s->conn_opened, "ready",
	    (json_int_t)s->conn_ready, "failed", (json_int_t)s->conn_failed);
	if (root == NULL)
		abort();
	json_object_set_new(root, "rate", json_real(o->rate));
	if (run->aborting)
		json_object_set_new(root, "error", json_string(run->abort_msg));
	json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
	fputc('\n', stdout);
	json_decref(root);
}

static void print_text(const struct bench_run *run, const struct stats *s, double wall)
{
	const struct bench_opts *o = run->o;
	char name[16];

	printf("sendgate-bench %s:%d %s, %d thread%s, %d connection%s, %lld messages "
	       "of %zu "
	       "bytes, %d rcpt%s, %s",
	       o->host, o->port, security_name(o->security), o->threads, o->threads == 1 ? "" : "s",
	       o->conns, o->conns == 1 ? "" : "s", o->total,
	       run->msg.body_len + run->msg.header_len_estimate, o->rcpts, o->rcpts == 1 ? "" : "s",
	       o->pipelining ? "pipelining" : "no pipelining");
	if (o->per_conn)
		printf(", %lld per connection", o->per_conn);
	if (o->rate > 0)
		printf(", rate %.1f/s", o->rate);
	printf("\n");
	printf("accepted:    %lld / %lld\n", s->accepted, o->total);
	printf("errors:      %lld\n", s->failed);
	for (int i = 0; i < s->n_errs; i++)
		printf("  %-10s %lld  %s\n", stats_code_name(s->errs[i].code, name, sizeof(name)),
		       s->errs[i].count, s->errs[i].text);
	if (o->total - s->accepted > s->failed)
		printf("not sent:    %lld\n", o->total - s->accepted - s->failed);
	printf("wall time:   %.3f s\n", wall);
	printf("throughput:  %.1f msgs/s (%.2f MB/s)\n", wall > 0 ? s->accepted / wall : 0.0,
	       wall > 0 ? s->bytes / wall / 1e6 : 0.0);
	printf("latency ms (end of data -> reply): p50 %.3f  p90 %.3f  p99 %.3f  max "
	       "%.3f\n",
	       stats_pct(s->lat, s->n_lat, 50) / 1e3, stats_pct(s->lat, s->n_lat, 90) / 1e3,
	       stats_pct(s->lat, s->n_lat, 99) / 1e3, s->n_lat ? s->lat[s->n_lat - 1] / 1e3 : 0.0);
	printf("setup ms (connect -> ready):       p50 %.3f  p90 %.3f  p99 %.3f  max "
	       "%.3f\n",
	       stats_pct(s->setup, s->n_setup, 50) / 1e3, stats_pct(s->setup, s->n_setup, 90) / 1e3,
	       stats_pct(s->setup, s->n_setup, 99) / 1e3,
	       s->n_setup ? s->setup[s->n_setup - 1] / 1e3 : 0.0);
	printf("connections: %lld opened, %lld ready, %lld failed\n", s->conn_opened, s->conn_ready,
	       s->conn_failed);
}

/* The load run: returns the exit status. */
static int load_run(struct bench_run *run)
{
	const struct bench_opts *o = run->o;
	struct stats total;
	pthread_t *tids = xcalloc((size_t)o->threads, sizeof(*tids));
	struct timeval one_sec = {1, 0};
	struct progress prog = {0};
	struct event *tick, *sigint, *sigterm;
	uint64_t start, end;
	double wall;
	int status;

	start = now_usec();
	run->t0 = start;
	prog.run = run;
	prog.start = start;
	tick = event_new(run->workers[0]->base, -1, EV_PERSIST, progress_cb, &prog);
	sigint = evsignal_new(run->workers[0]->base, SIGINT, interrupt_cb, run);
	sigterm = evsignal_new(run->workers[0]->base, SIGTERM, interrupt_cb, run);
	if (tick == NULL || sigint == NULL || sigterm == NULL)
		abort();
	if (!o->quiet && !o->json)
		evtimer_add(tick, &one_sec);
	evsignal_add(sigint, NULL);
	evsignal_add(sigterm, NULL);
	if (o->threads == 1) {
		worker_main(run->workers[0]);
	} else {
		for (int i = 0; i < o->threads; i++)
			if (pthread_create(&tids[i], NULL, worker_main, run->workers[i]) != 0)
				fatal("pthread_create failed");
		for (int i = 0; i < o->threads; i++)
			pthread_join(tids[i], NULL);
	}
	end = now_usec();
	free(tids);
	event_free(tick);
	event_free(sigint);
	event_free(sigterm);
	wall = (double)(end - start) / 1e6;

	stats_init(&total);
	for (int i = 0; i < run->n_workers; i++)
		stats_merge(&total, &run->workers[i]->st);
	stats_finish(&total);
	if (run->aborting)
		fprintf(stderr, "sendgate-bench: %s\n", run->abort_msg);
	if (o->json)
		print_json(run, &total, wall);
	else if (!run->aborting || total.accepted + total.failed > 0)
		print_text(run, &total, wall);
	status = run->aborting ? 2 : total.accepted == o->total ? 0 : 1;
	stats_free(&total);
	return status;
}

int main(int argc, char **argv)
{
	struct bench_opts o;
	struct bench_run run;
	char err[256];
	int status;

	if (argc > 1 && strcmp(argv[1], "sign") == 0)
		return sign_bench(argc, argv);
	parse_args(argc, argv, &o);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	memset(&run, 0, sizeof(run));
	run.o = &o;
	resolve(&run);
	if (msg_init(&run.msg, o.from, o.to, o.size, err, sizeof(err)) < 0) {
		fprintf(stderr, "sendgate-bench: %s\n", err);
		return 2;
	}
	if (o.security != BENCH_PLAIN)
		run.ssl_ctx = make_ssl_ctx();
	if (o.user)
		run.auth_line = make_auth_line(o.user, o.secret);
	if (o.threads > 1 && evthread_use_pthreads() < 0)
		fatal("evthread_use_pthreads failed");

	run.n_workers = o.threads;
	run.workers = xcalloc((size_t)o.threads, sizeof(*run.workers));
	for (int i = 0; i < o.threads; i++) {
		struct worker *w = xcalloc(1, sizeof(*w));

		w->run = &run;
		w->base = new_base();
		stats_init(&w->st);
		w->idle_mode = o.idle > 0;
		w->to_open = o.idle ? o.idle : o.conns / o.threads + (i < o.conns % o.threads);
		run.workers[i] = w;
	}

	status = o.idle ? idle_run(&run) : load_run(&run);

	for (int i = 0; i < run.n_workers; i++) {
		stats_free(&run.workers[i]->st);
		event_base_free(run.workers[i]->base);
		free(run.workers[i]);
	}
	free(run.workers);
	free(run.auth_line);
	msg_free(&run.msg);
	if (run.ssl_ctx)
		SSL_CTX_free(run.ssl_ctx);
	return status;
}
