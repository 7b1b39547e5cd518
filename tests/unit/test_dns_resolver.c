/*
 * Resolver and record checks against a real DNS server on loopback
 * (tests/integration/dnsserver.py, started here with a prepared zone).
 * Run from the source tree (make unit does), or set SENDGATE_SRC.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <jansson.h>

#include "common/common.h"
#include "dns/dns.h"

static pid_t server_pid = -1;
static int server_port;
static char zone_dir[] = "/tmp/sendgate-dns-test-XXXXXX";
static char zone_path[256];
static const char *argv0;

/* ---- the zone ------------------------------------------------------------ */

static const char *zone_base =
    "\"spf.platform.example\": {\"TXT\": [\"v=spf1 ip4:192.0.2.0/24 -all\"]},\n"
    /* everything right */
    "\"good.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example ~all\"],"
    "  \"MX\": [\"20 mx2.good.example\", \"10 mx1.good.example\"]},\n"
    "\"s1._domainkey.good.example\": {\"CNAME\": [\"s1.good-example.dkim.platform.example\"]},\n"
    "\"s2._domainkey.good.example\": {\"CNAME\": [\"s2.good-example.dkim.platform.example\"]},\n"
    "\"rp.good.example\": {\"CNAME\": [\"rp.platform.example\"]},\n"
    "\"_dmarc.good.example\": {\"TXT\": [\"v=DMARC1; p=quarantine; rua=mailto:d@good.example\"]},\n"
    "\"mx1.good.example\": {\"A\": [\"127.0.0.2\"], \"AAAA\": [\"::1\"]},\n"
    "\"www.good.example\": {\"CNAME\": [\"mx1.good.example\"]},\n"
    "\"multi.good.example\": {\"TXT\": [[\"v=spf1 \", \"include:spf.platform.example\", \" "
    "-all\"]]},\n"
    /* SPF only */
    "\"spfonly.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example -all\"]},\n"
    /* DKIM only */
    "\"s1._domainkey.dkimonly.example\": {\"CNAME\": "
    "[\"s1.dkimonly-example.dkim.platform.example\"]},\n"
    "\"s2._domainkey.dkimonly.example\": {\"CNAME\": "
    "[\"s2.dkimonly-example.dkim.platform.example\"]},\n"
    /* CNAMEs with the wrong targets */
    "\"s1._domainkey.wrong.example\": {\"CNAME\": [\"s1.other.example\"]},\n"
    "\"s2._domainkey.wrong.example\": {\"TXT\": [\"v=DKIM1; k=rsa; p=MIIBold\"]},\n"
    "\"rp.wrong.example\": {\"CNAME\": [\"bounces.elsewhere.example\"]},\n"
    "\"wrong.example\": {\"A\": [\"192.0.2.7\"]},\n"
    /* an SPF record to merge with */
    "\"merge.example\": {\"TXT\": [\"google-site-verification=abc\", \"v=spf1 mx -all\"]},\n"
    /* two SPF records */
    "\"twospf.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example -all\", \"v=spf1 mx "
    "-all\"]},\n"
    /* an include chain: c1 -> c2 -> ... -> c8 -> c9 (a) */
    "\"c1.example\": {\"TXT\": [\"v=spf1 include:c2.example -all\"]},\n"
    "\"c2.example\": {\"TXT\": [\"v=spf1 include:c3.example -all\"]},\n"
    "\"c3.example\": {\"TXT\": [\"v=spf1 include:c4.example -all\"]},\n"
    "\"c4.example\": {\"TXT\": [\"v=spf1 include:c5.example -all\"]},\n"
    "\"c5.example\": {\"TXT\": [\"v=spf1 include:c6.example -all\"]},\n"
    "\"c6.example\": {\"TXT\": [\"v=spf1 include:c7.example -all\"]},\n"
    "\"c7.example\": {\"TXT\": [\"v=spf1 include:c8.example -all\"]},\n"
    "\"c8.example\": {\"TXT\": [\"v=spf1 include:c9.example -all\"]},\n"
    "\"c9.example\": {\"TXT\": [\"v=spf1 a -all\"]},\n"
    /* 1 (ours) + 1 (c1) + 8 (the includes in c1..c8) + 1 (c9's a) = 11 */
    "\"chain11.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example include:c1.example "
    "-all\"]},\n"
    /* 1 + 1 (c2) + 7 (c2..c8) + 1 = 10 */
    "\"chain10.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example include:c2.example "
    "-all\"]},\n"
    /* includes of names that do not exist */
    "\"voids.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example include:gone1.example "
    "include:gone2.example include:gone3.example -all\"]},\n"
    /* a/mx names that do not resolve: 3 void lookups */
    "\"amx.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example a:n1.amx.example "
    "mx:n2.amx.example a -all\"]},\n"
    /* failures */
    "\"sf.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example -all\"]},\n"
    "\"slow.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example -all\"]},\n"
    "\"tc.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example -all\"]},\n"
    "\"s1._domainkey.tc.example\": {\"CNAME\": [\"s1.tc-example.dkim.platform.example\"]},\n"
    /* DMARC at the organizational domain only */
    "\"acme.example\": {\"TXT\": [\"v=spf1 -all\"]},\n"
    "\"_dmarc.acme.example\": {\"TXT\": [\"v=DMARC1; p=reject; sp=quarantine; "
    "rua=mailto:d@acme.example\"]},\n"
    "\"mail.acme.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example -all\"]},\n"
    /* DKIM keys as TXT, split over several strings */
    "\"s1._domainkey.txtkey.example\": {\"TXT\": [[\"v=DKIM1; k=rsa; \", \"p=MIIBkey\", "
    "\"part2\"]]},\n"
    "\"s2._domainkey.txtkey.example\": {\"TXT\": [\"v=DKIM1; k=rsa; p=MIIBother\"]},\n"
    /* a TTL long enough to see the cache */
    "\"cached.example\": {\"TTL\": 60, \"TXT\": [\"first\"]},\n"
    /* larger than 512 bytes over UDP */
    "\"big.example\": {\"TXT\": [\"%s\", \"%s\", \"%s\"]}";

static void write_zone(const char *extra_records)
{
	char tmp[300], big[201];
	FILE *f;

	memset(big, 'b', 200);
	big[200] = '\0';
	snprintf(tmp, sizeof(tmp), "%s.tmp", zone_path);
	f = fopen(tmp, "w");
	assert_non_null(f);
	fprintf(f, "{\"ttl\": 1, \"records\": {\n");
	fprintf(f, zone_base, big, big, big);
	fprintf(f,
	        "%s\n}, \"servfail\": [\"sf.example\"], \"timeout\": [\"slow.example\"], "
	        "\"truncate\": [\"tc.example\", \"s1._domainkey.tc.example\"]}\n",
	        extra_records);
	fclose(f);
	assert_int_equal(rename(tmp, zone_path), 0);
}

static int start_server(void **state)
{
	int fds[2];
	const char *src = getenv("SENDGATE_SRC");
	char script[512], line[64];
	FILE *out;

	if (mkdtemp(zone_dir) == NULL)
		return -1;
	snprintf(zone_path, sizeof(zone_path), "%s/zone.json", zone_dir);
	write_zone("");
	snprintf(script, sizeof(script), "%s/tests/integration/dnsserver.py", src ? src : ".");
	/* Not run from the source tree: look beside the binary (build[/asan]/tests/). */
	for (int up = 2; up <= 3 && access(script, R_OK) != 0 && src == NULL && argv0; up++) {
		const char *slash = strrchr(argv0, '/');
		int dn = slash ? (int)(slash - argv0) : 1;

		snprintf(script, sizeof(script), "%.*s/%s/tests/integration/dnsserver.py", dn,
		         slash ? argv0 : ".", up == 2 ? "../.." : "../../..");
	}
	if (access(script, R_OK) != 0) {
		fprintf(stderr, "cannot find %s (run from the source tree or set SENDGATE_SRC)\n",
		        script);
		return -1;
	}
	if (pipe(fds) < 0)
		return -1;
	server_pid = fork();
	if (server_pid < 0)
		return -1;
	if (server_pid == 0) {
		/* The server goes when this test does, however it ends. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl("/usr/bin/python3", "python3", script, "--port", "0", "--zone", zone_path,
		      (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	out = fdopen(fds[0], "r");
	if (out == NULL || fgets(line, sizeof(line), out) == NULL ||
	    sscanf(line, "PORT %d", &server_port) != 1) {
		fprintf(stderr, "the DNS server did not start\n");
		return -1;
	}
	fclose(out);
	return 0;
}

static int stop_server(void **state)
{
	char cmd[400];

	if (server_pid > 0) {
		kill(server_pid, SIGTERM);
		waitpid(server_pid, NULL, 0);
	}
	snprintf(cmd, sizeof(cmd), "%s.tmp", zone_path);
	unlink(cmd);
	unlink(zone_path);
	rmdir(zone_dir);
	return 0;
}

/* ---- running lookups on a real loop -------------------------------------- */

struct fixture {
	struct event_base *base;
	struct dns_resolver *r;
	struct event *guard;
};

static void guard_cb(evutil_socket_t fd, short what, void *arg)
{
	fail_msg("the loop did not finish in time");
}

static struct fixture *fixture_new(int timeout_ms, int tries)
{
	struct fixture *fx = xcalloc(1, sizeof(*fx));
	struct dns_config cfg;
	char servers[64], err[256];
	struct timeval tv = {15, 0};

	memset(&cfg, 0, sizeof(cfg));
	snprintf(servers, sizeof(servers), "127.0.0.1:%d", server_port);
	cfg.servers = servers;
	cfg.timeout_ms = timeout_ms;
	cfg.tries = tries;
	fx->base = event_base_new();
	assert_non_null(fx->base);
	fx->r = dns_resolver_new(fx->base, &cfg, err, sizeof(err));
	if (fx->r == NULL)
		fail_msg("resolver: %s", err);
	fx->guard = evtimer_new(fx->base, guard_cb, NULL);
	evtimer_add(fx->guard, &tv);
	return fx;
}

static void fixture_free(struct fixture *fx)
{
	dns_resolver_free(fx->r);
	event_free(fx->guard);
	event_base_free(fx->base);
	free(fx);
}

/* What a test keeps of a lookup's result. */
struct got {
	struct fixture *fx;
	int calls;
	uint64_t cookie;
	struct dns_result *res;
	int outstanding;
};

static void on_result(const struct dns_result *res, void *arg, uint64_t cookie)
{
	struct got *g = arg;

	g->calls++;
	g->cookie = cookie;
	dns_result_free(g->res);
	g->res = dns_result_dup(res);
	if (--g->outstanding == 0)
		event_base_loopbreak(g->fx->base);
}

static const struct dns_result *lookup(struct fixture *fx, struct got *g, const char *name,
                                       enum dns_type type, int flags)
{
	g->fx = fx;
	g->outstanding = 1;
	dns_query(fx->r, name, type, flags, on_result, g, 42);
	/* Never called back from inside dns_query. */
	assert_int_equal(g->calls, 0);
	event_base_dispatch(fx->base);
	assert_int_equal(g->calls, 1);
	assert_int_equal(g->cookie, 42);
	g->calls = 0;
	return g->res;
}

static void test_lookups(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct got g = {0};
	const struct dns_result *res;

	res = lookup(fx, &g, "good.example", DNS_MX, 0);
	assert_int_equal(res->status, DNS_OK);
	assert_int_equal(res->n, 2);
	assert_int_equal(res->rr[0].pref, 20);
	assert_string_equal(res->rr[0].text, "mx2.good.example");
	assert_int_equal(res->rr[1].pref, 10);
	assert_string_equal(res->rr[1].text, "mx1.good.example");

	res = lookup(fx, &g, "MX1.good.example.", DNS_A, 0);
	assert_int_equal(res->status, DNS_OK);
	assert_string_equal(res->name, "mx1.good.example");
	assert_string_equal(res->rr[0].text, "127.0.0.2");
	assert_memory_equal(res->rr[0].addr, "\x7f\x00\x00\x02", 4);

	res = lookup(fx, &g, "mx1.good.example", DNS_AAAA, 0);
	assert_int_equal(res->status, DNS_OK);
	assert_string_equal(res->rr[0].text, "::1");

	/* An A lookup through a CNAME lands on the target's address. */
	res = lookup(fx, &g, "www.good.example", DNS_A, 0);
	assert_int_equal(res->status, DNS_OK);
	assert_string_equal(res->rr[0].text, "127.0.0.2");
	res = lookup(fx, &g, "www.good.example", DNS_CNAME, 0);
	assert_int_equal(res->status, DNS_OK);
	assert_string_equal(res->rr[0].text, "mx1.good.example");

	/* Several strings in one TXT record are joined. */
	res = lookup(fx, &g, "multi.good.example", DNS_TXT, 0);
	assert_int_equal(res->status, DNS_OK);
	assert_int_equal(res->n, 1);
	assert_string_equal(res->rr[0].text, "v=spf1 include:spf.platform.example -all");

	/* No such name vs. no data. */
	res = lookup(fx, &g, "nothere.good.example", DNS_TXT, 0);
	assert_int_equal(res->status, DNS_NXDOMAIN);
	res = lookup(fx, &g, "mx1.good.example", DNS_TXT, 0);
	assert_int_equal(res->status, DNS_NODATA);
	/* An empty non-terminal exists. */
	res = lookup(fx, &g, "_domainkey.good.example", DNS_TXT, 0);
	assert_int_equal(res->status, DNS_NODATA);

	/* Over 512 bytes: c-ares retries over TCP and gets all three records. */
	res = lookup(fx, &g, "big.example", DNS_TXT, 0);
	assert_int_equal(res->status, DNS_OK);
	assert_int_equal(res->n, 3);
	assert_int_equal(res->rr[2].len, 200);

	/* Forced TC over UDP: the answer can only have come over TCP. */
	res = lookup(fx, &g, "tc.example", DNS_TXT, 0);
	assert_int_equal(res->status, DNS_OK);
	assert_string_equal(res->rr[0].text, "v=spf1 include:spf.platform.example -all");

	res = lookup(fx, &g, "sf.example", DNS_TXT, 0);
	assert_int_equal(res->status, DNS_SERVFAIL);
	assert_string_equal(dns_status_str(res->status), "servfail");

	res = lookup(fx, &g, "bad name.example", DNS_TXT, 0);
	assert_int_equal(res->status, DNS_ERROR);

	dns_result_free(g.res);
	fixture_free(fx);
}

static void test_timeout(void **state)
{
	struct fixture *fx = fixture_new(150, 2);
	struct got g = {0};
	const struct dns_result *res;
	uint64_t t0 = now_usec();

	res = lookup(fx, &g, "slow.example", DNS_TXT, 0);
	assert_int_equal(res->status, DNS_TIMEOUT);
	assert_string_equal(dns_status_str(res->status), "timeout");
	/* Two tries (150 ms, then doubled): well under the guard, and not instant. */
	assert_true(now_usec() - t0 >= 150000);
	assert_true(now_usec() - t0 < 5000000);
	dns_result_free(g.res);
	fixture_free(fx);
}

static void test_cache(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct got g = {0};
	const struct dns_result *res;
	struct dns_stats st;

	res = lookup(fx, &g, "cached.example", DNS_TXT, 0);
	assert_string_equal(res->rr[0].text, "first");
	assert_false(res->from_cache);
	assert_true(res->ttl <= 60 && res->ttl > 50);

	write_zone(",\"cached.example\": {\"TTL\": 60, \"TXT\": [\"second\"]}");
	/* Within the TTL the cached answer is used... */
	res = lookup(fx, &g, "cached.example", DNS_TXT, 0);
	assert_string_equal(res->rr[0].text, "first");
	assert_true(res->from_cache);
	dns_resolver_stats(fx->r, &st);
	assert_int_equal(st.cache_hits, 1);
	assert_int_equal(st.sent, 1);
	/* ...unless the caller asks for a fresh answer. */
	res = lookup(fx, &g, "cached.example", DNS_TXT, DNS_Q_NOCACHE);
	assert_string_equal(res->rr[0].text, "second");
	assert_false(res->from_cache);
	/* Failures are not cached. */
	lookup(fx, &g, "sf.example", DNS_TXT, 0);
	res = lookup(fx, &g, "sf.example", DNS_TXT, 0);
	assert_false(res->from_cache);
	dns_cache_clear(fx->r);
	dns_resolver_stats(fx->r, &st);
	assert_int_equal(st.cached, 0);
	write_zone("");
	dns_result_free(g.res);
	fixture_free(fx);
}

static void test_free_pending(void **state)
{
	struct fixture *fx = fixture_new(2000, 3);
	struct got g = {0};

	g.fx = fx;
	g.outstanding = 2;
	dns_query(fx->r, "slow.example", DNS_TXT, 0, on_result, &g, 7);
	dns_query(fx->r, "slow.example", DNS_MX, 0, on_result, &g, 7);
	event_base_loop(fx->base, EVLOOP_NONBLOCK);
	assert_int_equal(g.calls, 0);
	dns_resolver_free(fx->r);
	fx->r = NULL;
	assert_int_equal(g.calls, 2);
	assert_int_equal(g.res->status, DNS_ERROR);
	assert_string_equal(g.res->detail, "cancelled");
	dns_result_free(g.res);
	event_free(fx->guard);
	event_base_free(fx->base);
	free(fx);
}

static void test_config(void **state)
{
	struct event_base *base = event_base_new();
	struct dns_config cfg;
	struct dns_resolver *r;
	char err[256];

	memset(&cfg, 0, sizeof(cfg));
	cfg.servers = "127.0.0.1:5353,[::1]:5353";
	r = dns_resolver_new(base, &cfg, err, sizeof(err));
	assert_non_null(r);
	dns_resolver_free(r);
	err[0] = '\0';
	cfg.servers = "dns.example.com:53";
	assert_null(dns_resolver_new(base, &cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "dns.example.com"));
	event_base_free(base);
}

/* ---- record checks -------------------------------------------------------- */

static const struct dns_dkim_selector sels[] = {
    {"s1", NULL, NULL, NULL},
    {"s2", NULL, NULL, NULL},
};

static const struct dns_platform platform = {
    .spf_include = "spf.platform.example",
    .dkim_zone = "dkim.platform.example",
    .return_path_prefix = "rp",
    .return_path_domain = "rp.platform.example",
    .dmarc_rua = "dmarc@platform.example",
    .dkim = sels,
    .n_dkim = 2,
};

/* A copy of what the tests look at in a report. */
struct verdict {
	char status[32];
	char found[1024];
	char detail[1024];
	enum dns_status dns_status;
};

struct checked {
	struct fixture *fx;
	int calls;
	uint64_t cookie;
	struct verdict spf, dkim[2], rp, dmarc;
	int lookups, voids;
	char policy[32], rua[128], found_at[128], org[128];
	char spf_publish[512], spf_action[16];
	int passes, ok, total, steps;
	char failing[1024], explain[4096];
	const struct dns_platform *p;
};

/* The report survives JSON and back unchanged (it is stored that way). */
static void json_roundtrip(const struct dns_check_report *rep)
{
	json_t *j = dns_check_report_to_json(rep), *back, *again;
	char *txt = json_dumps(j, JSON_COMPACT);
	struct dns_check_report r2;

	assert_non_null(txt);
	back = json_loads(txt, 0, NULL);
	assert_non_null(back);
	assert_int_equal(dns_check_report_from_json(back, &r2), 0);
	assert_int_equal(r2.spf.status, rep->spf.status);
	assert_int_equal(r2.n_dkim, rep->n_dkim);
	again = dns_check_report_to_json(&r2);
	assert_true(json_equal(j, again));
	dns_check_report_clear(&r2);
	json_decref(again);
	json_decref(back);
	json_decref(j);
	free(txt);
}

static void keep(struct verdict *v, const struct dns_record_check *c)
{
	snprintf(v->status, sizeof(v->status), "%s", dns_check_status_str(c->status));
	snprintf(v->found, sizeof(v->found), "%s", c->found ? c->found : "");
	snprintf(v->detail, sizeof(v->detail), "%s", c->detail ? c->detail : "");
	v->dns_status = c->dns_status;
}

static void on_report(const struct dns_check_report *rep, void *arg, uint64_t cookie)
{
	struct checked *c = arg;
	struct dns_publish_set set;

	c->calls++;
	c->cookie = cookie;
	keep(&c->spf, &rep->spf);
	for (size_t i = 0; i < rep->n_dkim && i < 2; i++)
		keep(&c->dkim[i], &rep->dkim[i]);
	keep(&c->rp, &rep->return_path);
	keep(&c->dmarc, &rep->dmarc);
	c->lookups = rep->spf_lookups;
	c->voids = rep->spf_void_lookups;
	snprintf(c->policy, sizeof(c->policy), "%s", rep->dmarc_policy ? rep->dmarc_policy : "");
	snprintf(c->rua, sizeof(c->rua), "%s", rep->dmarc_rua ? rep->dmarc_rua : "");
	snprintf(c->found_at, sizeof(c->found_at), "%s",
	         rep->dmarc_found_at ? rep->dmarc_found_at : "");
	snprintf(c->org, sizeof(c->org), "%s", rep->org_domain);
	/* What the customer must publish, given what was found. */
	assert_int_equal(dns_records_compute(rep->domain, c->p, rep, &set), 0);
	snprintf(c->spf_publish, sizeof(c->spf_publish), "%s", set.recs[0].value);
	snprintf(c->spf_action, sizeof(c->spf_action), "%s", dns_action_str(set.recs[0].action));
	{
		struct buf b;

		buf_init(&b, 65536);
		c->steps = dns_publish_explain(&set, rep, &b);
		snprintf(c->explain, sizeof(c->explain), "%s", b.data ? b.data : "");
		buf_free(&b);
		buf_init(&b, 65536);
		c->passes =
		    dns_report_passes(rep, DNS_REQUIRE_SPF | DNS_REQUIRE_DKIM, &c->ok, &c->total);
		dns_report_failing(rep, DNS_REQUIRE_SPF | DNS_REQUIRE_DKIM, &b);
		snprintf(c->failing, sizeof(c->failing), "%s", b.data ? b.data : "");
		buf_free(&b);
	}
	dns_publish_set_free(&set);
	json_roundtrip(rep);
	event_base_loopbreak(c->fx->base);
}

static void check_with(struct fixture *fx, const struct dns_platform *p, const char *domain,
                       int flags, struct checked *c)
{
	memset(c, 0, sizeof(*c));
	c->fx = fx;
	c->p = p;
	assert_int_equal(dns_check_start(fx->r, domain, p, flags, on_report, c, 99), 0);
	assert_int_equal(c->calls, 0);
	event_base_dispatch(fx->base);
	assert_int_equal(c->calls, 1);
	assert_int_equal(c->cookie, 99);
}

static void check(struct fixture *fx, const char *domain, struct checked *c)
{
	check_with(fx, &platform, domain, DNS_CHECK_FRESH, c);
}

static void test_check_good(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct checked c;

	check(fx, "good.example", &c);
	assert_string_equal(c.spf.status, "verified");
	assert_int_equal(c.lookups, 1);
	assert_string_equal(c.dkim[0].status, "verified");
	assert_string_equal(c.dkim[1].status, "verified");
	assert_string_equal(c.rp.status, "verified");
	assert_string_equal(c.dmarc.status, "verified");
	assert_string_equal(c.policy, "quarantine");
	assert_string_equal(c.rua, "mailto:d@good.example");
	assert_string_equal(c.found_at, "_dmarc.good.example");
	assert_string_equal(c.spf_action, "none");
	assert_true(c.passes);
	assert_int_equal(c.ok, 3);
	assert_int_equal(c.steps, 0);
	assert_string_equal(c.failing, "");
	assert_int_equal(dns_check_start(fx->r, "not a domain", &platform, 0, on_report, &c, 1),
	                 -1);
	fixture_free(fx);
}

static void test_check_spf_only(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct checked c;

	check(fx, "spfonly.example", &c);
	assert_string_equal(c.spf.status, "verified");
	assert_string_equal(c.dkim[0].status, "missing");
	assert_string_equal(c.dkim[1].status, "missing");
	assert_string_equal(c.rp.status, "missing");
	assert_string_equal(c.dmarc.status, "missing");
	assert_non_null(
	    strstr(c.dmarc.detail, "v=DMARC1; p=none; rua=mailto:dmarc@platform.example"));
	/* Partially verified: SPF yes, the DKIM selectors no. */
	assert_false(c.passes);
	assert_int_equal(c.ok, 1);
	assert_int_equal(c.total, 3);
	assert_non_null(strstr(c.failing, "s1._domainkey.spfonly.example (missing)"));
	assert_null(strstr(c.failing, "spf "));
	/* Next steps: two DKIM CNAMEs, the return path, DMARC; in that order. */
	assert_int_equal(c.steps, 4);
	assert_non_null(strstr(c.explain, "1. DKIM selector s1"));
	assert_non_null(strstr(c.explain, "s1.spfonly-example.dkim.platform.example"));
	assert_true(strstr(c.explain, "Return path") < strstr(c.explain, "DMARC"));
	fixture_free(fx);
}

static void test_check_dkim_only(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct checked c;

	check(fx, "dkimonly.example", &c);
	assert_string_equal(c.spf.status, "missing");
	/* Names exist below it, so the domain itself exists, without TXT. */
	assert_int_equal(c.spf.dns_status, DNS_NODATA);
	assert_string_equal(c.dkim[0].status, "verified");
	assert_string_equal(c.dkim[1].status, "verified");
	assert_string_equal(c.spf_publish, "v=spf1 include:spf.platform.example ~all");
	assert_string_equal(c.spf_action, "add");
	fixture_free(fx);
}

static void test_check_wrong_cname(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct checked c;

	check(fx, "wrong.example", &c);
	assert_string_equal(c.dkim[0].status, "mismatch");
	assert_string_equal(c.dkim[0].found, "s1.other.example");
	assert_non_null(strstr(c.dkim[0].detail, "s1.wrong-example.dkim.platform.example"));
	/* A TXT key where the CNAME belongs. */
	assert_string_equal(c.dkim[1].status, "mismatch");
	assert_string_equal(c.dkim[1].found, "v=DKIM1; k=rsa; p=MIIBold");
	assert_string_equal(c.rp.status, "mismatch");
	assert_string_equal(c.rp.found, "bounces.elsewhere.example");
	/* The name exists (A record) but has no TXT: SPF missing, no data. */
	assert_string_equal(c.spf.status, "missing");
	assert_int_equal(c.spf.dns_status, DNS_NODATA);
	fixture_free(fx);
}

static void test_check_merge(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct checked c;

	check(fx, "merge.example", &c);
	assert_string_equal(c.spf.status, "mismatch");
	assert_string_equal(c.spf.found, "v=spf1 mx -all");
	assert_string_equal(c.spf_publish, "v=spf1 mx include:spf.platform.example -all");
	assert_string_equal(c.spf_action, "replace");
	assert_non_null(strstr(c.explain, "1. SPF: "));
	assert_non_null(strstr(c.explain, "with \"v=spf1 mx include:spf.platform.example -all\""));
	fixture_free(fx);
}

static void test_check_two_spf(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct checked c;

	check(fx, "twospf.example", &c);
	assert_string_equal(c.spf.status, "multiple_records");
	assert_string_equal(c.spf_action, "replace");
	/* One record to publish, merged from the first one found. */
	assert_true(spf_is_record(c.spf_publish));
	fixture_free(fx);
}

static void test_check_lookup_limit(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct checked c;

	check(fx, "chain11.example", &c);
	assert_string_equal(c.spf.status, "too_many_lookups");
	assert_int_equal(c.lookups, 11);
	check(fx, "chain10.example", &c);
	assert_string_equal(c.spf.status, "verified");
	assert_int_equal(c.lookups, 10);
	check(fx, "voids.example", &c);
	assert_string_equal(c.spf.status, "too_many_lookups");
	assert_int_equal(c.voids, 3);
	/* n1 and n2 do not exist; amx.example itself has TXT only, no A/AAAA. */
	check(fx, "amx.example", &c);
	assert_string_equal(c.spf.status, "too_many_lookups");
	assert_int_equal(c.voids, 3);
	assert_int_equal(c.lookups, 4);
	check(fx, "chain10.example", &c);
	assert_int_equal(c.voids, 1); /* c9's "a": c9.example has no address */
	fixture_free(fx);
}

static void test_check_failures(void **state)
{
	struct fixture *fx = fixture_new(150, 2);
	struct checked c;

	check(fx, "sf.example", &c);
	assert_string_equal(c.spf.status, "error");
	assert_int_equal(c.spf.dns_status, DNS_SERVFAIL);
	assert_non_null(strstr(c.spf.detail, "SERVFAIL"));
	check(fx, "slow.example", &c);
	assert_string_equal(c.spf.status, "error");
	assert_int_equal(c.spf.dns_status, DNS_TIMEOUT);
	/* Truncated over UDP, answered over TCP. */
	check(fx, "tc.example", &c);
	assert_string_equal(c.spf.status, "verified");
	assert_string_equal(c.dkim[0].status, "verified");
	fixture_free(fx);
}

static void test_check_subdomain(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct checked c;

	check(fx, "mail.acme.example", &c);
	assert_string_equal(c.org, "acme.example");
	assert_string_equal(c.spf.status, "verified");
	assert_string_equal(c.dmarc.status, "verified");
	assert_string_equal(c.found_at, "_dmarc.acme.example");
	/* At the organizational domain, sp= is the policy for subdomains. */
	assert_string_equal(c.policy, "quarantine");
	check(fx, "acme.example", &c);
	assert_string_equal(c.policy, "reject");
	fixture_free(fx);
}

static void test_check_txt_keys(void **state)
{
	static const struct dns_dkim_selector txt_sels[] = {
	    {"s1", NULL, "MIIBkeypart2", NULL},
	    {"s2", NULL, "MIIBkey", NULL},
	};
	struct dns_platform p = platform;
	struct fixture *fx = fixture_new(1000, 2);
	struct checked c;

	p.dkim = txt_sels;
	check_with(fx, &p, "txtkey.example", DNS_CHECK_FRESH, &c);
	assert_string_equal(c.dkim[0].status, "verified");
	assert_string_equal(c.dkim[1].status, "mismatch");
	assert_string_equal(c.dkim[1].found, "v=DKIM1; k=rsa; p=MIIBother");
	fixture_free(fx);
}

static void test_check_late_records(void **state)
{
	struct fixture *fx = fixture_new(1000, 2);
	struct checked c;

	check(fx, "late.example", &c);
	assert_string_equal(c.spf.status, "missing");
	assert_string_equal(c.dkim[0].status, "missing");
	write_zone(",\"late.example\": {\"TXT\": [\"v=spf1 include:spf.platform.example -all\"]},"
	           "\"s1._domainkey.late.example\": {\"CNAME\": "
	           "[\"s1.late-example.dkim.platform.example\"]}");
	check(fx, "late.example", &c);
	assert_string_equal(c.spf.status, "verified");
	assert_string_equal(c.dkim[0].status, "verified");
	assert_string_equal(c.dkim[1].status, "missing");
	/* Removed again: back to missing on the next fresh check. */
	write_zone("");
	check(fx, "late.example", &c);
	assert_string_equal(c.spf.status, "missing");
	fixture_free(fx);
}

/* Freeing the resolver mid-check: the check still reports, once, with errors. */
static void test_check_cancelled(void **state)
{
	struct fixture *fx = fixture_new(2000, 3);
	struct checked c;

	memset(&c, 0, sizeof(c));
	c.fx = fx;
	c.p = &platform;
	assert_int_equal(dns_check_start(fx->r, "slow.example", &platform, 0, on_report, &c, 5), 0);
	event_base_loop(fx->base, EVLOOP_NONBLOCK);
	assert_int_equal(c.calls, 0);
	dns_resolver_free(fx->r);
	fx->r = NULL;
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.cookie, 5);
	assert_string_equal(c.spf.status, "error");
	assert_non_null(strstr(c.spf.detail, "cancelled"));
	event_free(fx->guard);
	event_base_free(fx->base);
	free(fx);
}

int main(int argc, char **argv)
{
	argv0 = argc > 0 ? argv[0] : NULL;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lookups),
	    cmocka_unit_test(test_timeout),
	    cmocka_unit_test(test_cache),
	    cmocka_unit_test(test_free_pending),
	    cmocka_unit_test(test_config),
	    cmocka_unit_test(test_check_good),
	    cmocka_unit_test(test_check_spf_only),
	    cmocka_unit_test(test_check_dkim_only),
	    cmocka_unit_test(test_check_wrong_cname),
	    cmocka_unit_test(test_check_merge),
	    cmocka_unit_test(test_check_two_spf),
	    cmocka_unit_test(test_check_lookup_limit),
	    cmocka_unit_test(test_check_failures),
	    cmocka_unit_test(test_check_subdomain),
	    cmocka_unit_test(test_check_txt_keys),
	    cmocka_unit_test(test_check_late_records),
	    cmocka_unit_test(test_check_cancelled),
	};
	return cmocka_run_group_tests(tests, start_server, stop_server);
}
