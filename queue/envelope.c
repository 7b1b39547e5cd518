/*
 * envelope: the envelope records and the assembled message, pure. Encodes a
 * queue_envelope into records and parses a whole file image back into a
 * queue_msg, refusing anything our own writer would not have produced.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/queue.h"

/* 1 when s (len bytes) is envelope text: no control bytes, no DEL. */
static int env_text_ok(const unsigned char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (s[i] < 0x20 || s[i] == 0x7f)
			return 0;
	return 1;
}

static int env_str_ok(const char *s, int may_be_empty)
{
	size_t len;

	if (s == NULL)
		return 0;
	len = strlen(s);
	if (len == 0 && !may_be_empty)
		return 0;
	return len <= QREC_MAX_LEN && env_text_ok((const unsigned char *)s, len);
}

static int env_put(struct buf *out, int type, const char *s)
{
	return queue_rec_append(out, type, s, strlen(s));
}

int queue_env_encode(const struct queue_envelope *env, struct buf *out)
{
	unsigned char h[QREC_HDR_LEN];
	char num[64], flags[32];
	size_t i, tlen;
	int n;

	if (!queue_id_valid(env->id) || env->tenant_id < 0 || !env_str_ok(env->tenant, 0) ||
	    !env_str_ok(env->sender, 1) || env->nrcpts == 0 || env->received < 0 ||
	    (env->auth_user != NULL && !env_str_ok(env->auth_user, 1)) ||
	    (env->client != NULL && !env_str_ok(env->client, 1)))
		goto invalid;
	for (i = 0; i < env->nrcpts; i++)
		if (!env_str_ok(env->rcpts[i], 0))
			goto invalid;

	if (env_put(out, QREC_ID, env->id) == -1)
		goto toolong;
	n = snprintf(num, sizeof(num), "%lld ", (long long)env->tenant_id);
	tlen = (size_t)n + strlen(env->tenant);
	if (tlen > QREC_MAX_LEN)
		goto toolong;
	queue_rec_header(h, QREC_TENANT, (uint32_t)tlen);
	if (buf_append(out, h, sizeof(h)) == -1 || buf_puts(out, num) == -1 ||
	    buf_puts(out, env->tenant) == -1)
		goto toolong;
	if (env->auth_user != NULL && env_put(out, QREC_AUTH, env->auth_user) == -1)
		goto toolong;
	if (env_put(out, QREC_SENDER, env->sender) == -1)
		goto toolong;
	for (i = 0; i < env->nrcpts; i++)
		if (env_put(out, QREC_RCPT, env->rcpts[i]) == -1)
			goto toolong;
	snprintf(num, sizeof(num), "%lld", (long long)env->received);
	if (env_put(out, QREC_RECEIVED, num) == -1)
		goto toolong;
	if (env->client != NULL && env_put(out, QREC_CLIENT, env->client) == -1)
		goto toolong;
	snprintf(flags, sizeof(flags), "%s%s", (env->flags & QFLAG_8BITMIME) ? " 8bitmime" : "",
	         (env->flags & QFLAG_SMTPUTF8) ? " smtputf8" : "");
	if (flags[0] != '\0' && env_put(out, QREC_FLAGS, flags + 1) == -1)
		goto toolong;
	return 0;
invalid:
	errno = EINVAL;
	return -1;
toolong:
	errno = EFBIG;
	return -1;
}

void queue_envelope_free(struct queue_envelope *env)
{
	size_t i;

	free(env->tenant);
	free(env->auth_user);
	free(env->sender);
	for (i = 0; i < env->nrcpts; i++)
		free(env->rcpts[i]);
	free(env->rcpts);
	free(env->client);
	memset(env, 0, sizeof(*env));
}

void queue_msg_free(struct queue_msg *m)
{
	queue_envelope_free(&m->env);
	buf_free(&m->message);
	m->header_len = 0;
}

/* What the parse callback has seen so far. */
struct msg_parse {
	struct queue_msg *m;
	int want_body;
	const unsigned char *hdr; /* into the image */
	size_t hlen;
	int seen_hdr, seen_id, seen_tenant, seen_auth, seen_sender, seen_received, seen_client,
	    seen_flags;
	const unsigned char **chunk; /* BODY data, into the image */
	size_t *chunk_len;
	size_t nchunks, chunk_cap;
	size_t body_len;
	size_t rcpt_cap;
	char why[96];
};

/* A NUL-terminated copy of envelope text (owned by the caller); NULL if not text. */
static char *env_text_dup(const unsigned char *d, size_t len)
{
	if (!env_text_ok(d, len))
		return NULL;
	return xstrndup((const char *)d, len);
}

/* Parses 1..18 decimal digits into *out; 0 or -1. */
static int env_parse_num(const unsigned char *d, size_t len, long long *out)
{
	long long v = 0;
	size_t i;

	if (len == 0 || len > 18)
		return -1;
	for (i = 0; i < len; i++) {
		if (d[i] < '0' || d[i] > '9')
			return -1;
		v = v * 10 + (d[i] - '0');
	}
	*out = v;
	return 0;
}

static int env_parse_tenant(struct msg_parse *mp, const unsigned char *d, size_t len)
{
	const unsigned char *sp = memchr(d, ' ', len);
	long long id;

	if (sp == NULL || env_parse_num(d, (size_t)(sp - d), &id) == -1 ||
	    (size_t)(sp - d) + 1 == len) {
		snprintf(mp->why, sizeof(mp->why), "TENANT is not \"<id> <name>\"");
		return -1;
	}
	mp->m->env.tenant = env_text_dup(sp + 1, len - (size_t)(sp - d) - 1);
	if (mp->m->env.tenant == NULL) {
		snprintf(mp->why, sizeof(mp->why), "TENANT name has control characters");
		return -1;
	}
	mp->m->env.tenant_id = id;
	return 0;
}

/* FLAGS: space separated words; words from later versions are ignored. */
static void env_parse_flags(struct queue_envelope *env, const unsigned char *d, size_t len)
{
	size_t i = 0;

	while (i < len) {
		size_t j = i;
		while (j < len && d[j] != ' ')
			j++;
		if (j - i == 8 && memcmp(d + i, "8bitmime", 8) == 0)
			env->flags |= QFLAG_8BITMIME;
		else if (j - i == 8 && memcmp(d + i, "smtputf8", 8) == 0)
			env->flags |= QFLAG_SMTPUTF8;
		i = j + 1;
	}
}

/* Marks a once-only record as seen; -1 when it was already there. */
static int env_once(struct msg_parse *mp, int *seen, const char *name)
{
	if (*seen) {
		snprintf(mp->why, sizeof(mp->why), "duplicate %s record", name);
		return -1;
	}
	*seen = 1;
	return 0;
}

/* Stores a text record into *dst; -1 with a reason when it is not text. */
static int env_set_text(struct msg_parse *mp, char **dst, const unsigned char *d, size_t len,
                        const char *name, int may_be_empty)
{
	if (len == 0 && !may_be_empty) {
		snprintf(mp->why, sizeof(mp->why), "empty %s record", name);
		return -1;
	}
	*dst = env_text_dup(d, len);
	if (*dst == NULL) {
		snprintf(mp->why, sizeof(mp->why), "%s record has control characters", name);
		return -1;
	}
	return 0;
}

static int msg_parse_rec(void *arg, int type, const unsigned char *d, size_t len)
{
	struct msg_parse *mp = arg;
	struct queue_envelope *env = &mp->m->env;
	long long num;
	char *rcpt;

	switch (type) {
	case QREC_MAGIC:
		return 0; /* checked by the walk */
	case QREC_BODY:
		if (mp->want_body) {
			if (mp->nchunks == mp->chunk_cap) {
				mp->chunk_cap = mp->chunk_cap ? 2 * mp->chunk_cap : 16;
				mp->chunk = xrealloc(mp->chunk, mp->chunk_cap * sizeof(*mp->chunk));
				mp->chunk_len =
				    xrealloc(mp->chunk_len, mp->chunk_cap * sizeof(*mp->chunk_len));
			}
			mp->chunk[mp->nchunks] = d;
			mp->chunk_len[mp->nchunks++] = len;
		}
		mp->body_len += len;
		return 0;
	case QREC_HEADERS:
		if (env_once(mp, &mp->seen_hdr, "HEADERS") == -1)
			return -1;
		mp->hdr = d;
		mp->hlen = len;
		return 0;
	case QREC_ID:
		if (env_once(mp, &mp->seen_id, "ID") == -1)
			return -1;
		if (len != QUEUE_ID_LEN) {
			snprintf(mp->why, sizeof(mp->why), "bad ID record");
			return -1;
		}
		memcpy(env->id, d, len);
		env->id[len] = '\0';
		if (!queue_id_valid(env->id)) {
			snprintf(mp->why, sizeof(mp->why), "bad ID record");
			return -1;
		}
		return 0;
	case QREC_TENANT:
		if (env_once(mp, &mp->seen_tenant, "TENANT") == -1)
			return -1;
		return env_parse_tenant(mp, d, len);
	case QREC_AUTH:
		if (env_once(mp, &mp->seen_auth, "AUTH") == -1)
			return -1;
		return env_set_text(mp, &env->auth_user, d, len, "AUTH", 1);
	case QREC_SENDER:
		if (env_once(mp, &mp->seen_sender, "SENDER") == -1)
			return -1;
		return env_set_text(mp, &env->sender, d, len, "SENDER", 1);
	case QREC_RCPT:
		if (env_set_text(mp, &rcpt, d, len, "RCPT", 0) == -1)
			return -1;
		if (env->nrcpts == mp->rcpt_cap) {
			mp->rcpt_cap = mp->rcpt_cap ? 2 * mp->rcpt_cap : 4;
			env->rcpts = xrealloc(env->rcpts, mp->rcpt_cap * sizeof(*env->rcpts));
		}
		env->rcpts[env->nrcpts++] = rcpt;
		return 0;
	case QREC_RECEIVED:
		if (env_once(mp, &mp->seen_received, "RECEIVED") == -1)
			return -1;
		if (env_parse_num(d, len, &num) == -1) {
			snprintf(mp->why, sizeof(mp->why), "bad RECEIVED record");
			return -1;
		}
		env->received = (time_t)num;
		return 0;
	case QREC_CLIENT:
		if (env_once(mp, &mp->seen_client, "CLIENT") == -1)
			return -1;
		return env_set_text(mp, &env->client, d, len, "CLIENT", 1);
	case QREC_FLAGS:
		if (env_once(mp, &mp->seen_flags, "FLAGS") == -1)
			return -1;
		env_parse_flags(env, d, len);
		return 0;
	default:
		return 0; /* an optional type from a later version (the walk checked) */
	}
}

int queue_msg_parse(const unsigned char *p, size_t n, struct queue_msg *m, int flags, char *err,
                    size_t errlen)
{
	struct msg_parse mp;
	const char *missing = NULL;
	size_t i;
	int rc = -1;

	memset(m, 0, sizeof(*m));
	buf_init(&m->message, n);
	memset(&mp, 0, sizeof(mp));
	mp.m = m;
	mp.want_body = flags & QUEUE_PARSE_BODY;
	if (queue_rec_walk(p, n, flags & QUEUE_DIGEST_CHECKED, msg_parse_rec, &mp, err, errlen) ==
	    -1) {
		if (mp.why[0] != '\0')
			snprintf(err, errlen, "%s", mp.why);
		goto out;
	}
	if (!mp.seen_hdr)
		missing = "HEADERS";
	else if (!mp.seen_id)
		missing = "ID";
	else if (!mp.seen_tenant)
		missing = "TENANT";
	else if (!mp.seen_sender)
		missing = "SENDER";
	else if (m->env.nrcpts == 0)
		missing = "RCPT";
	else if (!mp.seen_received)
		missing = "RECEIVED";
	if (missing != NULL) {
		snprintf(err, errlen, "missing %s record", missing);
		goto out;
	}
	m->header_len = mp.hlen;
	if (mp.want_body) {
		/* Both fit: the image holds them, and message.max is its size. */
		if (buf_append(&m->message, mp.hdr, mp.hlen) == -1)
			abort();
		for (i = 0; i < mp.nchunks; i++)
			if (buf_append(&m->message, mp.chunk[i], mp.chunk_len[i]) == -1)
				abort();
	}
	rc = 0;
out:
	free(mp.chunk);
	free(mp.chunk_len);
	if (rc == -1)
		queue_msg_free(m);
	return rc;
}
