/*
 * verify: the DNS verification runner. Loads domains (and what their DKIM
 * keys make the platform expect) from Postgres over a blocking connection,
 * checks their records with dns_check_start on a private event loop, and
 * stores each outcome in one transaction: the state move (verify_plan.c),
 * the per-record report, the next check time, a history row and the event.
 * sendgatectl runs it for `domain verify`; the daemon runs it on a thread of
 * its own (verify_thread_start), never on the SMTP loop.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "dns/dns.h"
#include "tenants/ctl.h" /* CTL_SQL_DKIM_STATE: the key states `dkim list` shows */
#include "tenants/tenants.h"

#define VERIFY_BATCH 16
/*
 * Checks per second at most, whatever falls due (a bulk import, a daemon
 * back after a day off): each check is some 5 to 20 lookups, and the
 * resolver serves the delivery side too.
 */
#define VERIFY_MAX_RATE 50

/* ---- what the platform expects of a domain ------------------------------- */

/*
 * The platform's selector pairs (as sendgatectl makes them, ctl_util.c):
 * keys of an algorithm rotate between the two, so both are delegated.
 */
static const struct {
	const char *alg;
	const char *sel[2];
} pairs[] = {
    {"rsa", {"sg1", "sg2"}},
    {"ed25519", {"sg1e", "sg2e"}},
};

struct verify_platform {
	struct dns_platform p;
	struct dns_dkim_selector *sels;
	size_t n, cap;
	char **strs; /* every string sels point to */
	size_t nstrs;
};

static const char *vp_keep(struct verify_platform *vp, char *s)
{
	vp->strs = xrealloc(vp->strs, (vp->nstrs + 1) * sizeof(char *));
	vp->strs[vp->nstrs++] = s;
	return s;
}

static struct dns_dkim_selector *vp_add(struct verify_platform *vp, const char *selector)
{
	struct dns_dkim_selector *s;

	for (size_t i = 0; i < vp->n; i++)
		if (strcmp(vp->sels[i].selector, selector) == 0)
			return NULL; /* already there */
	if (vp->n == vp->cap) {
		vp->cap = vp->cap ? vp->cap * 2 : 4;
		vp->sels = xrealloc(vp->sels, vp->cap * sizeof(*vp->sels));
	}
	s = &vp->sels[vp->n++];
	memset(s, 0, sizeof(*s));
	s->selector = vp_keep(vp, xstrdup(selector));
	return s;
}

static int is_platform_selector(const char *sel)
{
	for (size_t a = 0; a < ARRAY_LEN(pairs); a++)
		if (strcmp(sel, pairs[a].sel[0]) == 0 || strcmp(sel, pairs[a].sel[1]) == 0)
			return 1;
	return 0;
}

/* Adds a selector published as TXT (the key's own p=). */
static void vp_add_txt(struct verify_platform *vp, const char *sel, const char *alg,
                       const char *pub)
{
	struct dns_dkim_selector *s = vp_add(vp, sel);
	struct buf rec;

	if (s == NULL)
		return;
	buf_init(&rec, (size_t)-1);
	buf_printf(&rec, "v=DKIM1; k=%s; p=%s", alg, pub);
	s->txt_p = vp_keep(vp, xstrdup(pub));
	s->txt_record = vp_keep(vp, xstrdup(rec.data));
	buf_free(&rec);
}

struct verify_platform *verify_platform_load(struct pg_conn *db, const struct config *cfg,
                                             int64_t domain_id, const char *domain,
                                             const char *dkim_mode, char *err, size_t errlen)
{
	char id[24];
	const char *params[1] = {id};
	struct verify_platform *vp;
	PGresult *r;
	int i, cname = strcmp(dkim_mode, "txt") != 0;

	snprintf(id, sizeof(id), "%lld", (long long)domain_id);
	r = PQexecParams(db,
	                 "SELECT k.selector, k.algorithm, k.public_b64, " CTL_SQL_DKIM_STATE
	                 " FROM dkim_keys k WHERE k.domain_id = $1 ORDER BY k.sign_from, k.id",
	                 1, NULL, params, NULL, NULL, 0);
	if (r == NULL)
		abort();
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		snprintf(err, errlen, "reading the DKIM keys of %s: %s", domain,
		         PQresultErrorMessage(r));
		err[strcspn(err, "\n")] = '\0';
		PQclear(r);
		return NULL;
	}
	vp = xcalloc(1, sizeof(*vp));
	vp->p.spf_include = cfg->platform_spf_include;
	vp->p.dkim_zone = cfg->platform_dkim_zone;
	vp->p.return_path_prefix = cfg->platform_return_path_prefix;
	vp->p.return_path_domain = cfg->platform_return_path_domain;
	vp->p.dmarc_rua = cfg->platform_dmarc_rua;
	if (cname) {
		/* Both selectors of every algorithm with a live key: CNAMEs. */
		for (size_t a = 0; a < ARRAY_LEN(pairs); a++) {
			int live = 0;

			for (i = 0; i < PQntuples(r); i++)
				if (strcmp(PQgetvalue(r, i, 3), "retired") != 0 &&
				    (strcmp(PQgetvalue(r, i, 1), pairs[a].alg) == 0 ||
				     strcmp(PQgetvalue(r, i, 0), pairs[a].sel[0]) == 0 ||
				     strcmp(PQgetvalue(r, i, 0), pairs[a].sel[1]) == 0))
					live = 1;
			for (int k = 0; live && k < 2; k++) {
				struct dns_dkim_selector *s = vp_add(vp, pairs[a].sel[k]);

				if (s)
					s->cname_target = vp_keep(
					    vp, dns_dkim_cname_target(pairs[a].sel[k], domain,
					                              cfg->platform_dkim_zone
					                                  ? cfg->platform_dkim_zone
					                                  : ""));
			}
		}
	}
	/* Imported keys on selectors of their own (CNAME mode), every key (TXT mode). */
	for (i = 0; i < PQntuples(r); i++)
		if (strcmp(PQgetvalue(r, i, 3), "retired") != 0 &&
		    (!cname || !is_platform_selector(PQgetvalue(r, i, 0))))
			vp_add_txt(vp, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
			           PQgetvalue(r, i, 2));
	PQclear(r);
	vp->p.dkim = vp->sels;
	vp->p.n_dkim = vp->n;
	return vp;
}

const struct dns_platform *verify_platform_dns(const struct verify_platform *vp)
{
	return &vp->p;
}

void verify_platform_free(struct verify_platform *vp)
{
	if (vp == NULL)
		return;
	for (size_t i = 0; i < vp->nstrs; i++)
		free(vp->strs[i]);
	free(vp->strs);
	free(vp->sels);
	free(vp);
}

/* ---- the runner ------------------------------------------------------------ */

struct verifier {
	const struct config *cfg;
	struct event_base *base;
	struct dns_resolver *res;
	unsigned required;
	struct verify_schedule sched;
	/* The daemon's thread: asked to stop, it drops the resolver it owns. */
	const _Atomic int *stop;
	int owns_res;
};

struct verifier *verifier_new(const struct config *cfg, struct event_base *base,
                              struct dns_resolver *res, char *err, size_t errlen)
{
	struct verifier *v = xcalloc(1, sizeof(*v));
	char why[256];

	if (dns_require_parse(cfg->verify_required ? cfg->verify_required : "spf,dkim",
	                      &v->required, why, sizeof(why)) == -1) {
		snprintf(err, errlen, "[verify] required: %s", why);
		free(v);
		return NULL;
	}
	v->cfg = cfg;
	v->base = base;
	v->res = res;
	verify_schedule_from_config(cfg, &v->sched);
	return v;
}

void verifier_free(struct verifier *v)
{
	free(v);
}

/* One domain of a batch, from its row to its stored outcome. */
struct job {
	char id[24], tenant_id[24];
	char name[254];
	char mode[8];
	enum domain_state from;
	time_t created_at, broken_since;
	int rp_verified;
	char *failing_old, *summary_old;
	struct verify_platform *vp;
	int done;
	/* from the report */
	json_t *report;
	struct verify_tally tally;
	char *failing; /* NULL when every required record verifies */
	char *summary;
	int rp_status; /* 1 verified, 0 not, -1 unknown (lookup failed) */
	/* decided */
	struct verify_move move;
	long next_in;
};

struct batch {
	struct verifier *v;
	struct job *jobs;
	size_t n;
	size_t pending;
};

static void job_free(struct job *j)
{
	free(j->failing_old);
	free(j->summary_old);
	verify_platform_free(j->vp);
	json_decref(j->report);
	free(j->failing);
	free(j->summary);
}

static char *dup_or_null(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NULL : xstrdup(PQgetvalue(r, row, col));
}

static int str_eq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static void summary_add(struct buf *b, const struct dns_record_check *c)
{
	if (b->len)
		buf_puts(b, " ");
	buf_printf(b, "%s%s%s=%s", c->kind, c->selector ? ":" : "", c->selector ? c->selector : "",
	           dns_check_status_str(c->status));
}

static void count_error(struct verify_tally *t, const struct dns_record_check *c)
{
	if (c->status == DNS_CHECK_ERROR)
		t->errors++;
}

/* The report arrives: keep what the transaction needs (rep dies after this call). */
static void on_report(const struct dns_check_report *rep, void *arg, uint64_t cookie)
{
	struct batch *b = arg;
	struct job *j = &b->jobs[cookie];
	unsigned req = b->v->required;
	struct buf s;

	j->report = dns_check_report_to_json(rep);
	dns_report_passes(rep, req, &j->tally.ok, &j->tally.total);
	if (req & DNS_REQUIRE_SPF)
		count_error(&j->tally, &rep->spf);
	if (req & DNS_REQUIRE_DKIM)
		for (size_t i = 0; i < rep->n_dkim; i++)
			count_error(&j->tally, &rep->dkim[i]);
	if (req & DNS_REQUIRE_RETURN_PATH)
		count_error(&j->tally, &rep->return_path);
	if (req & DNS_REQUIRE_DMARC)
		count_error(&j->tally, &rep->dmarc);

	buf_init(&s, (size_t)-1);
	dns_report_failing(rep, req, &s);
	j->failing = s.len ? xstrdup(s.data) : NULL;
	buf_reset(&s);
	summary_add(&s, &rep->spf);
	for (size_t i = 0; i < rep->n_dkim; i++)
		summary_add(&s, &rep->dkim[i]);
	summary_add(&s, &rep->return_path);
	summary_add(&s, &rep->dmarc);
	j->summary = xstrdup(s.data ? s.data : "");
	buf_free(&s);
	j->rp_status = rep->return_path.status == DNS_CHECK_VERIFIED ? 1
	               : rep->return_path.status == DNS_CHECK_ERROR  ? -1
	                                                             : 0;
	j->done = 1;
	b->pending--;
	if (b->pending == 0)
		event_base_loopbreak(b->v->base);
}

/* Wakes the loop now and then, so that a stop request is seen during a slow check. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
}

static PGresult *q(PGconn *db, const char *what, const char *sql, int n, const char *const *params,
                   char *err, size_t errlen)
{
	PGresult *r = PQexecParams(db, sql, n, NULL, params, NULL, NULL, 0);

	if (r == NULL)
		abort();
	if (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK)
		return r;
	snprintf(err, errlen, "%s: %s", what, PQresultErrorMessage(r));
	err[strcspn(err, "\n")] = '\0';
	if (PQstatus(db) != CONNECTION_OK)
		snprintf(err, errlen, "%s: the database connection is lost", what);
	PQclear(r);
	return NULL;
}

static int run_sql(PGconn *db, const char *what, const char *sql, char *err, size_t errlen)
{
	PGresult *r = q(db, what, sql, 0, NULL, err, errlen);

	PQclear(r);
	return r ? 0 : -1;
}

#define JOB_COLUMNS                                                                                \
	"SELECT d.id, d.tenant_id, d.name, d.state, extract(epoch FROM d.created_at)::bigint,"     \
	" COALESCE(extract(epoch FROM d.broken_since)::bigint, 0), d.return_path_verified,"        \
	" d.failing_records, d.dkim_mode, v.last_summary"                                          \
	" FROM domain_verify v JOIN domains d ON d.id = v.domain_id "

/* Fills jobs from the rows of a JOB_COLUMNS query. */
static struct job *jobs_from(const PGresult *r)
{
	int n = PQntuples(r);
	struct job *jobs = xcalloc(n ? (size_t)n : 1, sizeof(*jobs));

	for (int i = 0; i < n; i++) {
		struct job *j = &jobs[i];

		snprintf(j->id, sizeof(j->id), "%s", PQgetvalue(r, i, 0));
		snprintf(j->tenant_id, sizeof(j->tenant_id), "%s", PQgetvalue(r, i, 1));
		snprintf(j->name, sizeof(j->name), "%s", PQgetvalue(r, i, 2));
		if (domain_state_parse(PQgetvalue(r, i, 3), &j->from) == -1)
			j->from = DOMAIN_PENDING;
		j->created_at = (time_t)strtoll(PQgetvalue(r, i, 4), NULL, 10);
		j->broken_since = (time_t)strtoll(PQgetvalue(r, i, 5), NULL, 10);
		j->rp_verified = PQgetvalue(r, i, 6)[0] == 't';
		j->failing_old = dup_or_null(r, i, 7);
		snprintf(j->mode, sizeof(j->mode), "%s", PQgetvalue(r, i, 8));
		j->summary_old = dup_or_null(r, i, 9);
	}
	return jobs;
}

/*
 * Runs the checks of every job at once on the private loop and waits for
 * all of them (bounded by the resolver's timeouts). 0, or -1 with err.
 */
static int run_checks(struct verifier *v, PGconn *db, struct batch *b, int flags, char *err,
                      size_t errlen)
{
	struct timeval tv = {0, 100000};
	struct event *tick;
	size_t i;

	for (i = 0; i < b->n; i++) {
		struct job *j = &b->jobs[i];

		j->vp = verify_platform_load(db, v->cfg, strtoll(j->id, NULL, 10), j->name, j->mode,
		                             err, errlen);
		if (j->vp == NULL)
			return -1;
	}
	for (i = 0; i < b->n; i++) {
		if (dns_check_start(v->res, b->jobs[i].name, verify_platform_dns(b->jobs[i].vp),
		                    flags, on_report, b, i) == -1)
			continue; /* not a valid name: stays not done, stored as nothing */
		b->pending++;
	}
	/*
	 * Every check ends within the resolver's timeouts. The callbacks point
	 * into b, so nothing may leave before they all ran: a stopping thread
	 * frees its resolver, which calls every pending one ("cancelled").
	 */
	tick = event_new(v->base, -1, EV_PERSIST, on_tick, NULL);
	if (tick == NULL)
		abort();
	event_add(tick, &tv);
	while (b->pending > 0) {
		if (v->stop && atomic_load(v->stop) && v->owns_res) {
			dns_resolver_free(v->res);
			v->res = NULL;
			break;
		}
		event_base_loop(v->base, EVLOOP_ONCE);
	}
	event_free(tick);
	if (v->res == NULL) {
		snprintf(err, errlen, "stopped during a check");
		return -1;
	}
	return 0;
}

/* Decides a finished job's move and next check time. */
static void job_decide(struct verifier *v, struct job *j, time_t now)
{
	time_t broken_since;
	uint32_t rnd;

	random_bytes(&rnd, sizeof(rnd));
	verify_transition(j->from, &j->tally, &j->move);
	broken_since = j->move.broken_since == 1    ? now
	               : j->move.broken_since == -1 ? 0
	                                            : j->broken_since;
	j->next_in = verify_next_check(&v->sched, j->move.state, j->move.inconclusive, now,
	                               j->created_at, broken_since, rnd);
}

/*
 * Stores one finished job inside the caller's transaction: domains (only
 * when something the daemon caches changed: each UPDATE of domains makes
 * every daemon reload), domain_verify, a history row when the state or a
 * record's status changed (or an operator asked), the event. 0 or -1.
 */
static int job_store(PGconn *db, struct job *j, const char *origin, char *err, size_t errlen)
{
	const char *state = domain_state_str(j->move.state);
	const char *from = domain_state_str(j->from);
	int rp = j->rp_status == -1 ? j->rp_verified : j->rp_status;
	/*
	 * Only a broken domain's failing records are kept on domains (for the
	 * 550 past its grace period): the row stays untouched while a domain
	 * is pending, however its records come and go.
	 */
	const char *failing = j->move.inconclusive             ? j->failing_old
	                      : j->move.state == DOMAIN_BROKEN ? j->failing
	                                                       : NULL;
	char next[32], *report = NULL, *data = NULL;
	PGresult *r;
	int rc = -1;

	report = json_dumps(j->report, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (report == NULL)
		abort();
	if (j->move.state != j->from || j->move.broken_since == 1 ||
	    (j->move.broken_since == -1 && j->broken_since != 0) || rp != j->rp_verified ||
	    !str_eq(failing, j->failing_old)) {
		const char *p[5] = {j->id, state,
		                    j->move.broken_since == 1    ? "set"
		                    : j->move.broken_since == -1 ? "clear"
		                                                 : "keep",
		                    rp ? "t" : "f", failing};

		r = q(
		    db, "updating the domain",
		    "UPDATE domains SET state = $2,"
		    " state_changed_at = CASE WHEN state = $2 THEN state_changed_at ELSE now() END,"
		    " broken_since = CASE $3 WHEN 'set' THEN now() WHEN 'clear' THEN NULL"
		    " ELSE broken_since END,"
		    " return_path_verified = $4::boolean, failing_records = $5 WHERE id = $1",
		    5, p, err, errlen);
		if (r == NULL)
			goto out;
		PQclear(r);
	}
	snprintf(next, sizeof(next), "%ld", j->next_in);
	{
		const char *p[4] = {j->id, next, report, j->summary};

		r = q(db, "storing the check",
		      "UPDATE domain_verify SET next_check_at = now() + $2::bigint * interval '1 "
		      "second',"
		      " last_checked_at = now(), last_report = $3::jsonb, last_summary = $4,"
		      " checks = checks + 1 WHERE domain_id = $1",
		      4, p, err, errlen);
		if (r == NULL)
			goto out;
		PQclear(r);
	}
	if (strcmp(origin, "operator") == 0 || j->move.state != j->from ||
	    !str_eq(j->summary, j->summary_old)) {
		const char *p[6] = {j->id, origin, from, state, j->summary, report};

		r = q(
		    db, "recording the check history",
		    "INSERT INTO domain_checks (domain_id, origin, previous_state, state, summary,"
		    " report) VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
		    6, p, err, errlen);
		if (r == NULL)
			goto out;
		PQclear(r);
	}
	if (j->move.event) {
		json_t *d = json_pack("{s:s, s:s, s:s, s:s?, s:s, s:s}", "domain", j->name,
		                      "previous_state", from, "state", state, "failing", failing,
		                      "records", j->summary, "origin", origin);
		const char *p[3] = {j->move.event, j->tenant_id, NULL};

		if (d == NULL)
			abort();
		data = json_dumps(d, JSON_COMPACT | JSON_PRESERVE_ORDER);
		json_decref(d);
		if (data == NULL)
			abort();
		p[2] = data;
		r = q(db, "recording the event",
		      "INSERT INTO events (type, tenant_id, data) VALUES ($1, $2, $3::jsonb)", 3, p,
		      err, errlen);
		if (r == NULL)
			goto out;
		PQclear(r);
	}
	rc = 0;
out:
	free(report);
	free(data);
	return rc;
}

/*
 * Puts a domain that could not be checked at all back by pending_interval,
 * so that it never keeps the front of the queue. 0 or -1.
 */
static int job_postpone(struct verifier *v, PGconn *db, const struct job *j, char *err,
                        size_t errlen)
{
	char next[32];
	const char *p[2] = {j->id, next};
	PGresult *r;

	log_warn("event=verify_skipped domain=%s error=\"not a domain name that can be checked\"",
	         j->name);
	snprintf(next, sizeof(next), "%d", v->sched.pending_interval);
	r = q(db, "postponing the check",
	      "UPDATE domain_verify SET next_check_at = now() + $2::bigint * interval '1 second',"
	      " last_checked_at = now() WHERE domain_id = $1",
	      2, p, err, errlen);
	PQclear(r);
	return r ? 0 : -1;
}

static void log_move(const struct job *j, const char *origin)
{
	char qd[300], qf[600];

	if (j->move.state == j->from)
		return;
	log_info("event=domain_state domain=%s from=%s to=%s origin=%s failing=%s",
	         log_quote(qd, sizeof(qd), j->name), domain_state_str(j->from),
	         domain_state_str(j->move.state), origin,
	         log_quote(qf, sizeof(qf), j->failing ? j->failing : ""));
}

/*
 * Checks the locked rows of r and stores them, inside the caller's open
 * transaction (committed here on success, rolled back on failure). Returns
 * the number stored, or -1 with err. *first (may be NULL) gets a copy of
 * the first job for the caller's report.
 */
static int run_batch(struct verifier *v, PGconn *db, const PGresult *r, int flags,
                     const char *origin, struct verify_result *first, char *err, size_t errlen)
{
	struct batch b = {v, jobs_from(r), (size_t)PQntuples(r), 0};
	time_t now;
	size_t i;
	int stored = 0, rc = -1;

	if (run_checks(v, db, &b, flags, err, errlen) == -1)
		goto out;
	now = time(NULL);
	for (i = 0; i < b.n; i++) {
		struct job *j = &b.jobs[i];

		if (!j->done) {
			/* Cannot be checked (a name DNS cannot take): not due again at once. */
			if (job_postpone(v, db, j, err, errlen) == -1)
				goto out;
			continue;
		}
		job_decide(v, j, now);
		if (b.n > 1 && run_sql(db, "checking domains", "SAVEPOINT job", err, errlen) == -1)
			goto out;
		if (job_store(db, j, origin, err, errlen) == -1) {
			/* One domain's failure must not wedge the others forever. */
			char qe[600];
			log_warn("event=verify_store_failed domain=%s error=%s", j->name,
				 log_quote(qe, sizeof(qe), err));
			if (b.n == 1 || run_sql(db, "checking domains", "ROLLBACK TO SAVEPOINT job",
			                        err, errlen) == -1)
				goto out;
			continue;
		}
		stored++;
	}
	if (run_sql(db, "checking domains", "COMMIT", err, errlen) == -1)
		goto out;
	for (i = 0; i < b.n; i++)
		if (b.jobs[i].done)
			log_move(&b.jobs[i], origin);
	if (first && b.n > 0) {
		struct job *j = &b.jobs[0];

		if (!j->done) {
			snprintf(err, errlen, "%s is not a valid domain name to check", j->name);
			goto out;
		}
		first->domain_id = strtoll(j->id, NULL, 10);
		snprintf(first->domain, sizeof(first->domain), "%s", j->name);
		snprintf(first->previous_state, sizeof(first->previous_state), "%s",
		         domain_state_str(j->from));
		snprintf(first->state, sizeof(first->state), "%s", domain_state_str(j->move.state));
		first->event = j->move.event;
		first->inconclusive = j->move.inconclusive;
		first->ok = j->tally.ok;
		first->total = j->tally.total;
		first->next_check_in = j->next_in;
		first->report = json_incref(j->report);
		first->failing = j->failing ? xstrdup(j->failing) : NULL;
	}
	rc = stored;
out:
	if (rc == -1 && PQtransactionStatus(db) != PQTRANS_IDLE)
		PQclear(PQexec(db, "ROLLBACK"));
	for (i = 0; i < b.n; i++)
		job_free(&b.jobs[i]);
	free(b.jobs);
	return rc;
}

void verify_result_clear(struct verify_result *r)
{
	json_decref(r->report);
	free(r->failing);
	memset(r, 0, sizeof(*r));
}

int verify_domain(struct verifier *v, struct pg_conn *db, const char *domain,
                  struct verify_result *out, char *err, size_t errlen)
{
	const char *params[1] = {domain};
	PGresult *r;
	int rc;

	memset(out, 0, sizeof(*out));
	if (run_sql(db, "checking the domain", "BEGIN", err, errlen) == -1)
		return -1;
	/* A scheduled check of the same domain holds the lock: wait for it. */
	r = q(db, "checking the domain", JOB_COLUMNS "WHERE d.name = $1 FOR UPDATE OF v", 1, params,
	      err, errlen);
	if (r == NULL)
		goto fail;
	if (PQntuples(r) == 0) {
		PQclear(r);
		snprintf(err, errlen, "no domain named \"%s\"", domain);
		goto fail;
	}
	rc = run_batch(v, db, r, DNS_CHECK_FRESH, "operator", out, err, errlen);
	PQclear(r);
	if (rc < 1) {
		if (rc == 0 && err[0] == '\0')
			snprintf(err, errlen, "the check of %s could not be stored", domain);
		verify_result_clear(out);
		return -1;
	}
	return 0;
fail:
	PQclear(PQexec(db, "ROLLBACK"));
	return -1;
}

int verify_due(struct verifier *v, struct pg_conn *db, int max, char *err, size_t errlen)
{
	char lim[16];
	const char *params[1] = {lim};
	PGresult *r;
	int rc;

	snprintf(lim, sizeof(lim), "%d", max);
	if (run_sql(db, "picking due domains", "BEGIN", err, errlen) == -1)
		return -1;
	r = q(db, "picking due domains",
	      JOB_COLUMNS "WHERE v.next_check_at <= now() ORDER BY v.next_check_at LIMIT $1"
	                  " FOR UPDATE OF v SKIP LOCKED",
	      1, params, err, errlen);
	if (r == NULL) {
		PQclear(PQexec(db, "ROLLBACK"));
		return -1;
	}
	if (PQntuples(r) == 0) {
		PQclear(r);
		return run_sql(db, "picking due domains", "COMMIT", err, errlen) == -1 ? -1 : 0;
	}
	rc = run_batch(v, db, r, 0, "schedule", NULL, err, errlen);
	PQclear(r);
	return rc;
}

/* ---- the daemon's thread ----------------------------------------------------- */

static struct {
	pthread_t tid;
	int started;
	_Atomic int stop;
	struct config cfg; /* only what verification reads, copied */
} vt;

static char *dup0(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

/* Sleeps up to ms, waking early when asked to stop. */
static void nap(int ms)
{
	for (; ms > 0 && !atomic_load(&vt.stop); ms -= 100) {
		struct timespec ts = {0, (ms < 100 ? ms : 100) * 1000000L};

		nanosleep(&ts, NULL);
	}
}

/* Server messages outside a query ("terminating connection...") as log lines. */
static void on_notice(void *arg, const char *message)
{
	char m[600], qm[700];

	snprintf(m, sizeof(m), "%s", message);
	m[strcspn(m, "\n")] = '\0';
	log_info("event=verify_db_notice message=%s", log_quote(qm, sizeof(qm), m));
}

static PGconn *thread_connect(const char *url)
{
	const char *keys[] = {"dbname", "application_name", NULL};
	const char *vals[] = {url ? url : "", "sendgate-verify", NULL};
	PGconn *db = PQconnectdbParams(keys, vals, 1);
	char msg[300], qm[400];

	if (db == NULL)
		abort();
	if (PQstatus(db) == CONNECTION_OK) {
		PQsetNoticeProcessor(db, on_notice, NULL);
		return db;
	}
	snprintf(msg, sizeof(msg), "%s", PQerrorMessage(db));
	msg[strcspn(msg, "\n")] = '\0';
	log_warn("event=verify_db_unavailable error=%s", log_quote(qm, sizeof(qm), msg));
	PQfinish(db);
	return NULL;
}

static void *verify_thread_main(void *arg)
{
	struct dns_config dc;
	struct event_base *base;
	struct dns_resolver *res;
	struct verifier *v;
	PGconn *db = NULL;
	char err[512], qe[600];
	int backoff = 1000, fail_nap = 1000, n;
	uint64_t started;

	memset(&dc, 0, sizeof(dc));
	dc.servers = vt.cfg.dns_servers;
	dc.timeout_ms = vt.cfg.dns_timeout_ms;
	dc.tries = vt.cfg.dns_tries;
	base = event_base_new();
	if (base == NULL)
		abort();
	res = dns_resolver_new(base, &dc, err, sizeof(err));
	if (res == NULL) {
		char what[600];
		snprintf(what, sizeof(what), "[dns] servers: %s", err);
		log_err("event=verify_disabled error=%s", log_quote(qe, sizeof(qe), what));
		event_base_free(base);
		return NULL;
	}
	v = verifier_new(&vt.cfg, base, res, err, sizeof(err));
	if (v == NULL) {
		log_err("event=verify_disabled error=%s", log_quote(qe, sizeof(qe), err));
		dns_resolver_free(res);
		event_base_free(base);
		return NULL;
	}
	v->stop = &vt.stop;
	v->owns_res = 1;
	log_info("event=verify_started");
	while (!atomic_load(&vt.stop)) {
		if (db == NULL && (db = thread_connect(vt.cfg.database_url)) == NULL) {
			nap(backoff);
			backoff = backoff * 2 > 30000 ? 30000 : backoff * 2;
			continue;
		}
		backoff = 1000;
		err[0] = '\0';
		started = now_usec();
		n = verify_due(v, db, VERIFY_BATCH, err, sizeof(err));
		if (n == -1) {
			if (!atomic_load(&vt.stop))
				log_warn("event=verify_failed error=%s retry_in=%ds",
					 log_quote(qe, sizeof(qe), err), fail_nap / 1000);
			if (PQstatus(db) != CONNECTION_OK) {
				PQfinish(db);
				db = NULL;
			}
			/* A lasting failure (schema not migrated yet) must not flood the log. */
			nap(fail_nap);
			fail_nap = fail_nap * 2 > 60000 ? 60000 : fail_nap * 2;
			continue;
		}
		fail_nap = 1000;
		if (n < VERIFY_BATCH) {
			nap(1000);
		} else {
			long spent = (long)((now_usec() - started) / 1000);
			long least = VERIFY_BATCH * 1000L / VERIFY_MAX_RATE;

			if (spent < least)
				nap((int)(least - spent));
		}
	}
	if (db)
		PQfinish(db);
	if (v->res) /* else run_checks freed it to stop at once */
		dns_resolver_free(res);
	verifier_free(v);
	event_base_free(base);
	return NULL;
}

/* Frees the thread's copy of the configuration (the thread has ended). */
static void thread_cfg_free(void)
{
	struct config *c = &vt.cfg;

	free(c->database_url);
	free(c->platform_dkim_zone);
	free(c->platform_spf_include);
	free(c->platform_return_path_prefix);
	free(c->platform_return_path_domain);
	free(c->platform_dmarc_rua);
	free(c->dns_servers);
	free(c->verify_required);
	memset(c, 0, sizeof(*c));
}

int verify_thread_start(const struct config *cfg)
{
	struct config *c = &vt.cfg;
	int e;

	if (vt.started && !atomic_load(&vt.stop))
		return 0;
	if (vt.started) {
		/* A stop that timed out: the thread is on its way out; wait for it. */
		pthread_join(vt.tid, NULL);
		vt.started = 0;
		thread_cfg_free();
	}
	memset(c, 0, sizeof(*c));
	c->database_url = dup0(cfg->database_url);
	c->platform_dkim_zone = dup0(cfg->platform_dkim_zone);
	c->platform_spf_include = dup0(cfg->platform_spf_include);
	c->platform_return_path_prefix = dup0(cfg->platform_return_path_prefix);
	c->platform_return_path_domain = dup0(cfg->platform_return_path_domain);
	c->platform_dmarc_rua = dup0(cfg->platform_dmarc_rua);
	c->dns_servers = dup0(cfg->dns_servers);
	c->dns_timeout_ms = cfg->dns_timeout_ms;
	c->dns_tries = cfg->dns_tries;
	c->verify_required = dup0(cfg->verify_required);
	c->verify_grace_period = cfg->verify_grace_period;
	c->verify_new_interval = cfg->verify_new_interval;
	c->verify_new_window = cfg->verify_new_window;
	c->verify_pending_interval = cfg->verify_pending_interval;
	c->verify_verified_interval = cfg->verify_verified_interval;
	c->verify_broken_interval = cfg->verify_broken_interval;
	c->verify_broken_window = cfg->verify_broken_window;
	atomic_store(&vt.stop, 0);
	e = pthread_create(&vt.tid, NULL, verify_thread_main, NULL);
	if (e != 0) {
		log_err("event=verify_disabled error=\"cannot start the thread: %s\"", strerror(e));
		thread_cfg_free();
		return -1;
	}
	pthread_setname_np(vt.tid, "sg-verify");
	vt.started = 1;
	return 0;
}

void verify_thread_stop(void)
{
	struct timespec deadline;

	if (!vt.started)
		return;
	atomic_store(&vt.stop, 1);
	/* A check in flight ends within the DNS timeouts; do not hold up an exit longer. */
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 5;
	if (pthread_timedjoin_np(vt.tid, NULL, &deadline) != 0) {
		log_warn("event=verify_stop_slow");
		return;
	}
	vt.started = 0;
	thread_cfg_free();
}
