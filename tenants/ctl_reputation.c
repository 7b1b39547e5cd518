/*
 * ctl_reputation: `sendgatectl tenant stats [TENANT] [--window DURATION]`:
 * each tenant's recipients in the window by outcome, its bounce and
 * complaint rates as the daemon's [reputation] check counts them (only
 * what happened since the tenant's last resume), and how they stand
 * against the configured limits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tenants/ctl.h"
#include "tenants/tenants.h"

static const char usage[] = "tenant stats [TENANT] [--window DURATION]";

/*
 * Per tenant: name, suspended, delivered, refused at once, bounced later,
 * complained (as the daemon's check counts them), deferred, expired
 * (columns 0 to 7), over the window's events since the tenant's last
 * resume.
 */
static const char SQL_STATS[] =
    "WITH " SQL_LAST_RESUMES("$1")
    " SELECT t.name, t.suspended_at IS NOT NULL,"
    SQL_REPUTATION_COUNTS("greatest(now() - make_interval(secs => $1::int), r.at)") ","
    " count(e.id) FILTER (WHERE e.type = 'message.deferred'),"
    " count(e.id) FILTER (WHERE e.type = 'message.expired')"
    " FROM tenants t LEFT JOIN r ON r.tenant_id = t.id"
    " LEFT JOIN events e ON e.tenant_id = t.id"
    " AND e.created_at > now() - make_interval(secs => $1::int)"
    " AND (r.at IS NULL OR e.created_at > r.at)"
    " AND e.type IN ('message.delivered', 'message.bounced', 'message.complained',"
    " 'message.deferred', 'message.expired')"
    " WHERE $2::text IS NULL OR t.name = $2"
    " GROUP BY t.id, t.name, t.suspended_at ORDER BY t.name";

/* A tenant's standing: "over" a limit, "near" one (at half of it), or "ok". */
static const char *standing(const struct config *cfg, long long sent, double bounce_pct,
                            double complaint_pct)
{
	double b = cfg->reputation_bounce_rate, c = cfg->reputation_complaint_rate;

	if (sent == 0)
		return "-";
	if ((b > 0 && bounce_pct >= b) || (c > 0 && complaint_pct >= c))
		return sent >= cfg->reputation_min_recipients ? "over" : "over (few recipients)";
	if ((b > 0 && bounce_pct >= b / 2) || (c > 0 && complaint_pct >= c / 2))
		return "near";
	return "ok";
}

int ctl_tenant_stats(struct ctl *c, int argc, char **argv)
{
	static const char *const head[] = {"TENANT",     "STATUS",   "RECIPIENTS", "DELIVERED",
	                                   "BOUNCED",    "BOUNCE%",  "COMPLAINED", "COMPLAINT%",
	                                   "DEFERRED",   "EXPIRED",  "STANDING"};
	const char *tenant = NULL, *params[2];
	long long window = c->cfg.reputation_window;
	char wtext[24];
	json_t *arr = NULL;
	struct table t;
	PGresult *r;
	int i;

	for (i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--window") == 0) {
			if (i + 1 >= argc)
				return ctl_usage(usage, "--window needs a DURATION");
			if (parse_duration(argv[++i], &window) == -1 || window < 60 ||
			    window > 3650 * 86400LL)
				return ctl_usage(usage, "--window \"%s\": a duration from 1m to 3650d "
				                        "(15m, 24h, 7d)",
				                 argv[i]);
		} else if (argv[i][0] == '-') {
			return ctl_usage(usage, "unknown option \"%s\"", argv[i]);
		} else if (tenant != NULL) {
			return ctl_usage(usage, "tenant stats takes at most one TENANT");
		} else {
			tenant = argv[i];
		}
	}
	snprintf(wtext, sizeof(wtext), "%lld", window);
	params[0] = wtext;
	params[1] = tenant;
	r = ctl_exec(c, "reading the tenants' events", SQL_STATS, 2, params, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	if (tenant != NULL && PQntuples(r) == 0) {
		PQclear(r);
		ctl_error("no tenant named \"%s\"", tenant);
		return CTL_FAIL;
	}
	if (c->json)
		arr = json_array();
	else
		table_init(&t, ARRAY_LEN(head), head);
	for (i = 0; i < PQntuples(r); i++) {
		long long n[6];
		char cells[8][32];
		double bpct, cpct;
		long long sent, bounced;
		int k;

		for (k = 0; k < 6; k++)
			n[k] = strtoll(PQgetvalue(r, i, 2 + k), NULL, 10);
		/* As the daemon counts: delivered or refused at once are the
		 * recipients; refused at once or later, the bounces. */
		sent = n[0] + n[1];
		bounced = n[1] + n[2];
		bpct = sent ? 100.0 * (double)bounced / (double)sent : 0;
		cpct = sent ? 100.0 * (double)n[3] / (double)sent : 0;
		if (c->json) {
			json_array_append_new(
			    arr, json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:s}",
			                   "tenant", PQgetvalue(r, i, 0), "status",
			                   ctl_pq_bool(r, i, 1) ? "suspended" : "active", "recipients",
			                   (json_int_t)sent, "delivered", (json_int_t)n[0], "bounced",
			                   (json_int_t)bounced, "complained", (json_int_t)n[3],
			                   "deferred", (json_int_t)n[4], "expired", (json_int_t)n[5],
			                   "bounce_rate", bpct, "complaint_rate", cpct, "standing",
			                   standing(&c->cfg, sent, bpct, cpct)));
			continue;
		}
		snprintf(cells[0], sizeof(cells[0]), "%lld", sent);
		snprintf(cells[1], sizeof(cells[1]), "%lld", n[0]);
		snprintf(cells[2], sizeof(cells[2]), "%lld", bounced);
		snprintf(cells[3], sizeof(cells[3]), "%.1f", bpct);
		snprintf(cells[4], sizeof(cells[4]), "%lld", n[3]);
		snprintf(cells[5], sizeof(cells[5]), "%.2f", cpct);
		snprintf(cells[6], sizeof(cells[6]), "%lld", n[4]);
		snprintf(cells[7], sizeof(cells[7]), "%lld", n[5]);
		{
			const char *row[] = {PQgetvalue(r, i, 0),
			                     ctl_pq_bool(r, i, 1) ? "suspended" : "active",
			                     cells[0], cells[1], cells[2], cells[3], cells[4], cells[5],
			                     cells[6], cells[7], standing(&c->cfg, sent, bpct, cpct)};
			table_add(&t, row);
		}
	}
	PQclear(r);
	if (c->json)
		return ctl_json_print(json_pack("{s:I, s:f, s:f, s:i, s:o}", "window_s",
		                                (json_int_t)window, "bounce_limit",
		                                c->cfg.reputation_bounce_rate, "complaint_limit",
		                                c->cfg.reputation_complaint_rate, "min_recipients",
		                                c->cfg.reputation_min_recipients, "tenants", arr));
	table_print(&t, stdout);
	table_free(&t);
	format_duration(window, wtext, sizeof(wtext));
	printf("window: the last %s (since a tenant's last resume if later); limits "
	       "([reputation]): bounces %g %%, complaints %g %%, from %d recipients\n",
	       wtext, c->cfg.reputation_bounce_rate, c->cfg.reputation_complaint_rate,
	       c->cfg.reputation_min_recipients);
	return CTL_OK;
}
