/*
 * admin: the health endpoint on [admin] listen. GET /healthz answers 200
 * while the process runs; GET /readyz answers 200 only when the database
 * is reachable and the spool is writable, else 503 with the reason.
 */
#include <stdio.h>
#include <string.h>

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
			 spool_count(srv->spool));
		if (db && spool && !srv->stopping)
			send_text(req, 200, "OK", body);
		else
			send_text(req, 503, "Service Unavailable", body);
		return;
	}
	send_text(req, 404, "Not Found", "{\"error\":\"try /healthz or /readyz\"}");
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
