/*
 * admin: the health endpoint on [admin] listen. GET /healthz answers 200
 * while the process runs; GET /readyz answers 200 only when the database
 * is reachable and the spool is writable, else 503 with the reason;
 * GET /metrics answers the Prometheus text format: the submission side's
 * counters, and the delivery process's, which it writes to
 * SPOOL/delivery.metrics every second.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "smtpd/server.h"

static void send_text(struct evhttp_request *req, int code, const char *reason, const char *body)
{
	struct evbuffer *b = evbuffer_new();

	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	evbuffer_add_printf(b, "%s\n", body);
	evhttp_send_reply(req, code, reason, b);
	evbuffer_free(b);
}

/*
 * How old the spool count of /metrics and /readyz may be (microseconds):
 * a recount reads queue/ whole, and both are asked on a schedule.
 */
#define SPOOL_COUNT_MAX_AGE 30000000u

/* Upper bounds (ms) of the end-of-data histogram's buckets. */
static const unsigned eod_bounds[METRICS_NBUCKETS] = METRICS_EOD_BUCKETS;

void metrics_message(struct server_metrics *m, int code, size_t size, uint64_t eod_usec,
		     uint64_t sign_usec)
{
	int i;

	m->messages[code < 300 ? 0 : code < 500 ? 1 : 2]++;
	if (code >= 300)
		return;
	m->bytes_queued += size;
	m->eod_usec += eod_usec;
	m->sign_usec += sign_usec;
	for (i = 0; i < METRICS_NBUCKETS; i++)
		if (eod_usec <= (uint64_t)eod_bounds[i] * 1000u) {
			m->eod[i]++;
			break;
		}
}

static void metric_head(struct evbuffer *b, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One unlabelled counter or gauge. */
static void metric(struct evbuffer *b, const char *name, const char *type, const char *help,
		   unsigned long long value)
{
	metric_head(b, name, type, help);
	evbuffer_add_printf(b, "%s %llu\n", name, value);
}

/* A counter with one label, one sample per value of it. */
static void counter_by(struct evbuffer *b, const char *name, const char *help, const char *label,
		       const char *const *values, const uint64_t *counts, int n)
{
	int i;

	metric_head(b, name, "counter", help);
	for (i = 0; i < n; i++)
		evbuffer_add_printf(b, "%s{%s=\"%s\"} %llu\n", name, label, values[i],
				    (unsigned long long)counts[i]);
}

/*
 * Appends the delivery process's metrics (queue.h, QUEUE_METRICS_FILE)
 * while the process that wrote them runs and the file is not older than
 * two of its heartbeats.
 */
static void delivery_metrics(struct server *srv, struct evbuffer *b)
{
	char path[4096], buf[QUEUE_METRICS_MAX + 1];
	const char *body = NULL;
	struct stat st;
	ssize_t n = -1;
	int fd, pid;

	snprintf(path, sizeof(path), "%s/" QUEUE_METRICS_FILE, srv->cfg->spool_dir);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd != -1) {
		if (fstat(fd, &st) == 0 && labs((long)(time(NULL) - st.st_mtime)) <=
					       2 * QUEUE_METRICS_HEARTBEAT)
			n = read(fd, buf, sizeof(buf));
		close(fd);
	}
	/* Whole (not cut by the buffer), and its writer alive. */
	if (n > 0 && (size_t)n < sizeof(buf)) {
		buf[n] = '\0';
		if (sscanf(buf, "# pid %d\n", &pid) == 1 && pid > 0 &&
		    (kill(pid, 0) == 0 || errno == EPERM))
			body = strchr(buf, '\n');
	}
	metric(b, "sendgate_delivery_up", "gauge",
	       "1 while the delivery process reports (its metrics follow), else 0.",
	       body != NULL);
	if (body != NULL)
		evbuffer_add(b, body + 1, (size_t)(buf + n - (body + 1)));
}

static void send_metrics(struct server *srv, struct evhttp_request *req)
{
	static const char *const results[] = {"queued", "deferred", "rejected"};
	static const char *const classes[] = {"4xx", "5xx"};
	static const char *const refusals[] = {"max_connections", "max_connections_per_ip",
					       "stopping"};
	const struct server_metrics *m = &srv->metrics;
	struct evbuffer *b = evbuffer_new();
	uint64_t cum = 0;
	int i;

	metric(b, "sendgate_sessions", "gauge", "Submission sessions open now.",
	       (unsigned long long)srv->nsessions);
	metric(b, "sendgate_connections_total", "counter",
	       "Submission connections taken (not those refused, below).", m->connections);
	counter_by(b, "sendgate_connections_refused_total",
		   "Submission connections refused at once with a 421: over max_connections, "
		   "over max_connections_per_ip, or while shutting down.",
		   "reason", refusals, m->refused, 3);
	counter_by(b, "sendgate_messages_total",
		   "Messages at end of data, by result: queued (250), deferred (4xx), rejected (5xx).",
		   "result", results, m->messages, 3);
	metric(b, "sendgate_queued_bytes_total", "counter", "Size of the queued messages.",
	       m->bytes_queued);
	counter_by(b, "sendgate_smtp_error_replies_total",
		   "Submission error replies by class (any command).", "class", classes,
		   m->replies, 2);
	metric(b, "sendgate_auth_failures_total", "counter", "Failed AUTH attempts.",
	       m->auth_failures);
	metric_head(b, "sendgate_end_of_data_seconds", "histogram",
		    "Queued messages: end of data to the 250 (signing and the durable commit).");
	for (i = 0; i < METRICS_NBUCKETS; i++) {
		cum += m->eod[i];
		evbuffer_add_printf(b, "sendgate_end_of_data_seconds_bucket{le=\"%g\"} %llu\n",
				    eod_bounds[i] / 1000.0, (unsigned long long)cum);
	}
	evbuffer_add_printf(b,
			    "sendgate_end_of_data_seconds_bucket{le=\"+Inf\"} %llu\n"
			    "sendgate_end_of_data_seconds_sum %.6f\n"
			    "sendgate_end_of_data_seconds_count %llu\n",
			    (unsigned long long)m->messages[0], m->eod_usec / 1e6,
			    (unsigned long long)m->messages[0]);
	metric_head(b, "sendgate_signing_seconds_total", "counter",
		    "Time queued messages spent waiting for and in DKIM signing.");
	evbuffer_add_printf(b, "sendgate_signing_seconds_total %.6f\n", m->sign_usec / 1e6);
	metric(b, "sendgate_spool_messages", "gauge",
	       "Messages in the spool's queue (counted at most every 30 s).",
	       spool_count_within(srv->spool, SPOOL_COUNT_MAX_AGE));
	metric(b, "sendgate_database_up", "gauge",
	       "1 while the control-plane database is connected and loaded.",
	       store_connected(srv->store) && store_ready(srv->store));
	delivery_metrics(srv, b);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct server *srv = arg;
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	char body[256];

	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		send_text(req, 405, "Method Not Allowed", "{\"error\":\"only GET is served\"}");
		return;
	}
	if (path && strcmp(path, "/healthz") == 0) {
		snprintf(body, sizeof(body), "{\"status\":\"ok\",\"sessions\":%d}", srv->nsessions);
		send_text(req, 200, "OK", body);
		return;
	}
	if (path && strcmp(path, "/readyz") == 0) {
		int db = store_connected(srv->store) && store_ready(srv->store);
		int spool = spool_writable(srv->spool);
		snprintf(body, sizeof(body),
			 "{\"status\":\"%s\",\"database\":%s,\"spool_writable\":%s,\"stopping\":%s,"
			 "\"queued\":%zu}",
			 db && spool && !srv->stopping ? "ready" : "not_ready", db ? "true" : "false",
			 spool ? "true" : "false", srv->stopping ? "true" : "false",
			 spool_count_within(srv->spool, SPOOL_COUNT_MAX_AGE));
		if (db && spool && !srv->stopping)
			send_text(req, 200, "OK", body);
		else
			send_text(req, 503, "Service Unavailable", body);
		return;
	}
	if (path && strcmp(path, "/metrics") == 0) {
		send_metrics(srv, req);
		return;
	}
	send_text(req, 404, "Not Found", "{\"error\":\"try /healthz, /readyz or /metrics\"}");
}

int admin_start(struct server *srv, char *err, size_t errlen)
{
	const struct listen_addr *la = &srv->cfg->admin_listen;

	srv->http = evhttp_new(srv->base);
	if (srv->http == NULL || evhttp_bind_socket(srv->http, la->host, (ev_uint16_t)la->port) != 0) {
		snprintf(err, errlen, "[admin] listen: cannot listen on %s:%d", la->host, la->port);
		return -1;
	}
	evhttp_set_allowed_methods(srv->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
	evhttp_set_gencb(srv->http, on_request, srv);
	evhttp_set_timeout(srv->http, 10);
	log_info("event=listening address=%s:%d mode=admin", la->host, la->port);
	return 0;
}

void admin_stop(struct server *srv)
{
	if (srv->http)
		evhttp_free(srv->http);
	srv->http = NULL;
}
