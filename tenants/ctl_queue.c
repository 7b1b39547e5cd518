/*
 * ctl_queue: `sendgatectl queue list|show|delete|retry`. list and show
 * read the spool's committed messages (list reads envelopes only); a file
 * the daemon would quarantine is listed as damaged, not fatal. delete
 * removes a message and records a message.deleted event; retry asks the
 * delivery process to try a message now by creating the empty file
 * SPOOL/retry/ID, which delivery removes once it has acted on it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "queue/queue.h"
#include "tenants/ctl.h"

static const char usage[] = "queue list\n"
                            "       sendgatectl queue show ID\n"
                            "       sendgatectl queue delete ID\n"
                            "       sendgatectl queue retry ID";

/* One listed queue file. */
struct qentry {
	char *id;
	struct queue_msg msg; /* valid when error is NULL */
	char *error;          /* why the file is damaged, or NULL */
	long long size;       /* bytes of the file */
	time_t since;         /* received time, or the file's mtime when damaged */
};

struct qlist {
	char **paths;
	size_t n, cap;
};

static void collect_path(void *arg, const char *path)
{
	struct qlist *l = arg;

	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->paths = xrealloc(l->paths, l->cap * sizeof(char *));
	}
	l->paths[l->n++] = xstrdup(path);
}

/* Oldest first, then by id: the order delivery would roughly take. */
static int qentry_cmp(const void *a, const void *b)
{
	const struct qentry *x = a, *y = b;

	if (x->since != y->since)
		return x->since < y->since ? -1 : 1;
	return strcmp(x->id, y->id);
}

/*
 * Reads one queue file into e. 1 when e was filled (intact or damaged), 0
 * when the file has gone meanwhile (delivered, or bounced).
 */
static int qentry_read(const char *path, struct qentry *e)
{
	const char *slash = strrchr(path, '/');
	char err[256];
	struct stat st;

	memset(e, 0, sizeof(*e));
	if (stat(path, &st) == -1)
		return 0;
	e->id = xstrdup(slash ? slash + 1 : path);
	e->size = (long long)st.st_size;
	e->since = st.st_mtime;
	if (queue_read_file(path, &e->msg, 0, err, sizeof(err)) == -1) {
		if (stat(path, &st) == -1) {
			free(e->id);
			return 0;
		}
		e->error = xstrdup(err[0] ? err : "unreadable");
		return 1;
	}
	if (e->msg.env.id[0]) {
		free(e->id);
		e->id = xstrdup(e->msg.env.id);
	}
	if (e->msg.env.received > 0)
		e->since = e->msg.env.received;
	return 1;
}

static json_t *qentry_json(const struct qentry *e, time_t now)
{
	const struct queue_envelope *env = &e->msg.env;
	json_t *rcpts = json_array(), *o;
	size_t i;

	o = json_pack("{s:o}", "id", ctl_json_text(e->id));
	if (e->error) {
		json_object_set_new(o, "tenant", json_null());
		json_object_set_new(o, "sender", json_null());
	} else {
		json_object_set_new(o, "tenant", ctl_json_text(env->tenant ? env->tenant : ""));
		json_object_set_new(o, "sender", ctl_json_text(env->sender ? env->sender : ""));
		for (i = 0; i < env->nrcpts; i++)
			json_array_append_new(rcpts, ctl_json_text(env->rcpts[i]));
	}
	json_object_set_new(o, "recipients", rcpts);
	json_object_set_new(o, "size", json_integer(e->size));
	json_object_set_new(o, "age",
	                    json_integer(now > e->since ? (json_int_t)(now - e->since) : 0));
	json_object_set_new(o, "damaged", json_boolean(e->error != NULL));
	if (e->error)
		json_object_set_new(o, "error", ctl_json_text(e->error));
	return o;
}

static void qentry_row(struct table *t, const struct qentry *e, time_t now)
{
	const struct queue_envelope *env = &e->msg.env;
	char nrcpts[24], size[24], age[24], note[300];
	const char *row[7];

	snprintf(size, sizeof(size), "%lld", e->size);
	ctl_format_age((long long)(now - e->since), age, sizeof(age));
	if (e->error) {
		snprintf(note, sizeof(note), "damaged: %s", e->error);
		row[1] = row[2] = row[3] = "-";
		row[6] = note;
	} else {
		snprintf(nrcpts, sizeof(nrcpts), "%zu", env->nrcpts);
		row[1] = env->tenant ? env->tenant : "-";
		row[2] = env->sender && env->sender[0] ? env->sender : "<>";
		row[3] = nrcpts;
		row[6] = "";
	}
	row[0] = e->id;
	row[4] = size;
	row[5] = age;
	table_add(t, row);
}

static int queue_list(struct ctl *c)
{
	/* The last column is empty except for damaged files. */
	static const char *const head[] = {"ID", "TENANT", "SENDER", "RCPTS", "SIZE", "AGE", ""};
	struct qlist l = {NULL, 0, 0};
	struct qentry *ents;
	struct table t;
	json_t *arr;
	size_t i, n = 0;
	time_t now;

	if (queue_list_files(c->cfg.spool_dir, collect_path, &l) == -1) {
		ctl_error("cannot list the spool in %s: %s", c->cfg.spool_dir, strerror(errno));
		for (i = 0; i < l.n; i++)
			free(l.paths[i]);
		free(l.paths);
		return CTL_FAIL;
	}
	ents = xcalloc(l.n ? l.n : 1, sizeof(*ents));
	for (i = 0; i < l.n; i++) {
		if (qentry_read(l.paths[i], &ents[n]))
			n++;
		free(l.paths[i]);
	}
	free(l.paths);
	qsort(ents, n, sizeof(*ents), qentry_cmp);
	now = time(NULL);

	if (c->json) {
		arr = json_array();
		for (i = 0; i < n; i++)
			json_array_append_new(arr, qentry_json(&ents[i], now));
		ctl_json_print(arr);
	} else if (n == 0) {
		printf("queue is empty\n");
	} else {
		table_init(&t, ARRAY_LEN(head), head);
		for (i = 0; i < n; i++)
			qentry_row(&t, &ents[i], now);
		table_print(&t, stdout);
		table_free(&t);
	}
	for (i = 0; i < n; i++) {
		if (ents[i].error == NULL)
			queue_msg_free(&ents[i].msg);
		free(ents[i].error);
		free(ents[i].id);
	}
	free(ents);
	return CTL_OK;
}

/* ---- one message: show, delete, retry ---------------------------------- */

/*
 * The path of queue id's file into path; 0, or -1 with the error printed
 * (an invalid id, or no such message in the spool).
 */
static int queue_path(struct ctl *c, const char *id, char *path, size_t pathlen)
{
	struct stat st;

	if (!queue_id_valid(id)) {
		ctl_error("invalid queue id \"%s\": %d characters of 0-9 and A-Z", id,
		          QUEUE_ID_LEN);
		return -1;
	}
	if ((size_t)snprintf(path, pathlen, "%s/queue/%s", c->cfg.spool_dir, id) >= pathlen) {
		ctl_error("the spool path %s is too long", c->cfg.spool_dir);
		return -1;
	}
	if (stat(path, &st) == -1) {
		if (errno == ENOENT)
			ctl_error("no message %s in the spool %s (delivered, bounced or deleted "
			          "already?)",
			          id, c->cfg.spool_dir);
		else
			ctl_error("cannot read %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* "2026-01-02T03:04:05Z" for a unix time, or JSON null for 0. */
static json_t *time_json(time_t t)
{
	char out[32];
	struct tm tm;

	if (t <= 0 || gmtime_r(&t, &tm) == NULL)
		return json_null();
	strftime(out, sizeof(out), "%Y-%m-%dT%H:%M:%SZ", &tm);
	return json_string(out);
}

static void time_text(time_t t, char *out, size_t outlen)
{
	struct tm tm;

	if (t <= 0 || gmtime_r(&t, &tm) == NULL)
		snprintf(out, outlen, "-");
	else
		strftime(out, outlen, "%Y-%m-%d %H:%M:%SZ", &tm);
}

/* The header block as text: bytes as they are, NULs and invalid UTF-8 made safe. */
static char *header_text(const struct queue_msg *m)
{
	size_t n = m->header_len <= m->message.len ? m->header_len : m->message.len;
	char *s = xmalloc(n + 1);
	size_t i;

	for (i = 0; i < n; i++)
		s[i] = m->message.data[i] ? (char)m->message.data[i] : '?';
	s[n] = '\0';
	return s;
}

static int queue_show(struct ctl *c, int argc, char **argv)
{
	static const char *const head[] = {"RECIPIENT", "STATE", "ATTEMPTS", "LAST", "NEXT"};
	struct queue_rcpt_status *st = NULL;
	const struct queue_envelope *env;
	struct queue_msg m;
	char path[4096], err[256], when[40], last[40], next[40], attempts[16];
	struct stat sb;
	struct table t;
	json_t *o, *rcpts, *flags;
	char *hdr;
	size_t i;

	if (argc != 3)
		return ctl_usage(usage, "queue show needs a queue ID");
	if (queue_path(c, argv[2], path, sizeof(path)) == -1)
		return CTL_FAIL;
	memset(&m, 0, sizeof(m));
	if (queue_read_status(path, &m, 1, &st, err, sizeof(err)) == -1) {
		if (stat(path, &sb) == -1 && errno == ENOENT)
			ctl_error("message %s left the spool meanwhile", argv[2]);
		else
			ctl_error("queue file %s is damaged: %s", path, err);
		return CTL_FAIL;
	}
	if (stat(path, &sb) == -1)
		sb.st_size = 0;
	env = &m.env;
	hdr = header_text(&m);
	if (c->json) {
		rcpts = json_array();
		for (i = 0; i < env->nrcpts; i++)
			json_array_append_new(
			    rcpts,
			    json_pack("{s:o, s:s, s:i, s:o, s:o}", "address",
			              ctl_json_text(env->rcpts[i]), "state",
			              queue_rcpt_state_str(st[i].state), "attempts", st[i].attempts,
			              "last_attempt", time_json(st[i].last), "next_attempt",
			              st[i].state == QRCPT_DEFERRED ? time_json(st[i].next)
			                                            : json_null()));
		flags = json_array();
		if (env->flags & QFLAG_8BITMIME)
			json_array_append_new(flags, json_string("8bitmime"));
		if (env->flags & QFLAG_SMTPUTF8)
			json_array_append_new(flags, json_string("smtputf8"));
		o = json_pack("{s:o, s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:o}", "id",
		              ctl_json_text(env->id), "tenant_id", (json_int_t)env->tenant_id,
		              "tenant", ctl_json_text(env->tenant ? env->tenant : ""), "auth_user",
		              env->auth_user ? ctl_json_text(env->auth_user) : json_null(),
		              "sender", ctl_json_text(env->sender ? env->sender : ""), "received",
		              time_json(env->received), "client",
		              env->client ? ctl_json_text(env->client) : json_null(), "flags",
		              flags, "size", (json_int_t)sb.st_size, "message_size",
		              (json_int_t)m.message.len, "recipients", rcpts, "headers",
		              ctl_json_text(hdr));
		ctl_json_print(o);
	} else {
		time_text(env->received, when, sizeof(when));
		printf("id:        %s\n", env->id);
		printf("tenant:    %s\n", env->tenant ? env->tenant : "-");
		printf("auth user: %s\n", env->auth_user ? env->auth_user : "-");
		printf("sender:    <%s>\n", env->sender ? env->sender : "");
		printf("received:  %s from %s\n", when, env->client ? env->client : "-");
		printf("size:      %zu bytes%s%s\n\n", m.message.len,
		       env->flags & QFLAG_8BITMIME ? ", 8BITMIME" : "",
		       env->flags & QFLAG_SMTPUTF8 ? ", SMTPUTF8" : "");
		table_init(&t, ARRAY_LEN(head), head);
		for (i = 0; i < env->nrcpts; i++) {
			const char *row[5];
			snprintf(attempts, sizeof(attempts), "%d", st[i].attempts);
			time_text(st[i].last, last, sizeof(last));
			time_text(st[i].state == QRCPT_DEFERRED ? st[i].next : 0, next,
			          sizeof(next));
			row[0] = env->rcpts[i];
			row[1] = queue_rcpt_state_str(st[i].state);
			row[2] = attempts;
			row[3] = last;
			row[4] = next;
			table_add(&t, row);
		}
		table_print(&t, stdout);
		table_free(&t);
		/* Header text as stored; control bytes other than CR LF TAB shown as '?'. */
		printf("\n");
		for (i = 0; hdr[i]; i++) {
			unsigned char ch = (unsigned char)hdr[i];
			if (ch == '\r')
				continue;
			putchar((ch < 0x20 && ch != '\n' && ch != '\t') || ch == 0x7f ? '?' : ch);
		}
	}
	free(hdr);
	free(st);
	queue_msg_free(&m);
	return CTL_OK;
}

/* Makes a file or folder created by root belong to the spool's owner (the daemon user). */
static void give_to_spool_owner(const struct stat *owner, const char *path)
{
	if (geteuid() == 0 && chown(path, owner->st_uid, owner->st_gid) == -1)
		ctl_error("warning: cannot chown %s: %s", path, strerror(errno));
}

static int queue_retry(struct ctl *c, int argc, char **argv)
{
	char path[4096], dir[4096], file[4096 + QUEUE_ID_LEN + 2];
	struct stat owner;
	int fd;

	if (argc != 3)
		return ctl_usage(usage, "queue retry needs a queue ID");
	if (queue_path(c, argv[2], path, sizeof(path)) == -1)
		return CTL_FAIL;
	snprintf(dir, sizeof(dir), "%s/queue", c->cfg.spool_dir);
	if (stat(dir, &owner) == -1) {
		ctl_error("cannot read %s: %s", dir, strerror(errno));
		return CTL_FAIL;
	}
	snprintf(dir, sizeof(dir), "%s/retry", c->cfg.spool_dir);
	if (mkdir(dir, 0755) == 0)
		give_to_spool_owner(&owner, dir);
	else if (errno != EEXIST) {
		ctl_error("cannot create %s: %s", dir, strerror(errno));
		return CTL_FAIL;
	}
	snprintf(file, sizeof(file), "%s/%s", dir, argv[2]);
	fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd == -1) {
		ctl_error("cannot create %s: %s", file, strerror(errno));
		return CTL_FAIL;
	}
	close(fd);
	give_to_spool_owner(&owner, file);
	if (c->json)
		ctl_json_print(
		    json_pack("{s:s, s:o}", "id", argv[2], "retry_file", ctl_json_text(file)));
	else
		printf("asked delivery to try %s now (%s)\n", argv[2], file);
	return CTL_OK;
}

/* fsyncs a folder so that a removal in it is durable; 0 or -1. */
static int sync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;

	if (fd == -1)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

static int queue_delete(struct ctl *c, int argc, char **argv)
{
	struct queue_msg m;
	char path[4096], dir[4096], err[256], tid[24];
	const char *params[3];
	json_t *data, *rcpts;
	char *data_text;
	PGresult *r;
	int damaged, rc = CTL_FAIL;
	size_t i;

	if (argc != 3)
		return ctl_usage(usage, "queue delete needs a queue ID");
	if (queue_path(c, argv[2], path, sizeof(path)) == -1)
		return CTL_FAIL;
	memset(&m, 0, sizeof(m));
	damaged = queue_read_file(path, &m, 0, err, sizeof(err)) == -1;
	data = json_object();
	if (damaged) {
		json_object_set_new(data, "damaged", json_true());
		json_object_set_new(data, "error", ctl_json_text(err));
	} else {
		rcpts = json_array();
		for (i = 0; i < m.env.nrcpts; i++)
			json_array_append_new(rcpts, ctl_json_text(m.env.rcpts[i]));
		json_object_set_new(data, "sender",
		                    ctl_json_text(m.env.sender ? m.env.sender : ""));
		json_object_set_new(data, "recipients", rcpts);
	}
	json_object_set_new(data, "by", json_string("sendgatectl"));
	data_text = json_dumps(data, JSON_COMPACT);
	if (data_text == NULL)
		abort();
	snprintf(tid, sizeof(tid), "%lld", (long long)m.env.tenant_id);
	params[0] = damaged || m.env.tenant_id <= 0 ? NULL : tid;
	params[1] = argv[2];
	params[2] = data_text;
	/* The event commits only once the file is gone: no event for a message still queued. */
	if (ctl_run(c, "starting a transaction", "BEGIN") == -1)
		goto out;
	r = ctl_exec(c, "recording the event",
	             "INSERT INTO events (type, tenant_id, message_id, data) "
	             "SELECT 'message.deleted', t.id, $2, $3::jsonb FROM (SELECT "
	             "(SELECT id FROM tenants WHERE id = $1::bigint) AS id) t",
	             3, params, NULL, NULL);
	if (r == NULL)
		goto out;
	PQclear(r);
	if (unlink(path) == -1) {
		if (errno == ENOENT)
			ctl_error("message %s left the spool meanwhile", argv[2]);
		else
			ctl_error("cannot remove %s: %s", path, strerror(errno));
		goto out;
	}
	snprintf(dir, sizeof(dir), "%s/queue", c->cfg.spool_dir);
	if (sync_dir(dir) == -1)
		ctl_error("warning: cannot fsync %s: %s", dir, strerror(errno));
	if (ctl_run(c, "committing the event", "COMMIT") == -1) {
		ctl_error("message %s was deleted but its message.deleted event was not recorded",
		          argv[2]);
		goto out;
	}
	if (c->json)
		ctl_json_print(json_pack("{s:s, s:b, s:o}", "id", argv[2], "deleted", 1, "message",
		                         json_incref(data)));
	else
		printf("deleted %s from the spool\n", argv[2]);
	rc = CTL_OK;
out:
	if (rc != CTL_OK && c->db && PQtransactionStatus(c->db) != PQTRANS_IDLE)
		ctl_run(c, "rolling back", "ROLLBACK");
	free(data_text);
	json_decref(data);
	if (!damaged)
		queue_msg_free(&m);
	return rc;
}

int ctl_cmd_queue(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage(usage, "queue needs a subcommand");
	if (strcmp(argv[1], "list") == 0) {
		if (argc != 2)
			return ctl_usage(usage, "queue list takes no arguments");
		return queue_list(c);
	}
	if (strcmp(argv[1], "show") == 0)
		return queue_show(c, argc, argv);
	if (strcmp(argv[1], "delete") == 0)
		return queue_delete(c, argc, argv);
	if (strcmp(argv[1], "retry") == 0)
		return queue_retry(c, argc, argv);
	return ctl_usage(usage, "unknown queue subcommand \"%s\"", argv[1]);
}
