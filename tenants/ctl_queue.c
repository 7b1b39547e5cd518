/*
 * ctl_queue: `sendgatectl queue list`, a read-only look at the spool's
 * committed messages (envelopes only; bodies are never read). A file the
 * daemon would quarantine is listed as damaged, not fatal.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "queue/queue.h"
#include "tenants/ctl.h"

static const char usage[] = "queue list";

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

int ctl_cmd_queue(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage(usage, "queue needs a subcommand");
	if (strcmp(argv[1], "list") == 0) {
		if (argc != 2)
			return ctl_usage(usage, "queue list takes no arguments");
		return queue_list(c);
	}
	return ctl_usage(usage, "unknown queue subcommand \"%s\"", argv[1]);
}
