/*
 * dns: c-ares on the libevent loop (TXT, CNAME, MX, A, AAAA lookups with a
 * TTL cache), the SPF record parser, and the checks of a tenant domain's
 * records (SPF, DKIM, return path, DMARC) with the records to publish.
 *
 * Nothing here blocks the loop. Pure parts (spf_*, dns_records_*,
 * dns_org_domain, dns_dkim_label, dns_answer_parse) do no I/O.
 */
#ifndef SENDGATE_DNS_H
#define SENDGATE_DNS_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct buf;
struct json_t;

/* ==== resolver.c: lookups =============================================== */

enum dns_type {
	DNS_A = 1,
	DNS_CNAME = 5,
	DNS_MX = 15,
	DNS_TXT = 16,
	DNS_AAAA = 28,
};

enum dns_status {
	DNS_OK,       /* rr[] holds at least one answer of the type asked */
	DNS_NXDOMAIN, /* no such name */
	DNS_NODATA,   /* the name exists but has no record of that type */
	DNS_SERVFAIL, /* the server said SERVFAIL (reported as is, not retried elsewhere) */
	DNS_TIMEOUT,  /* no answer after every try (each round doubles timeout_ms) */
	DNS_ERROR,    /* anything else (refused, bad reply, cancelled): see detail */
};

/* One answer record. */
struct dns_rr {
	uint32_t ttl;
	/*
	 * TXT: the record's character strings joined, NUL-terminated (len
	 * excludes the NUL; a TXT may contain NUL bytes, so use len).
	 * CNAME and MX: the target host, lower case, no trailing dot ("" for
	 * the root, so a null MX "0 ." of RFC 7505 has an empty host).
	 * A and AAAA: the address as text ("192.0.2.1", "2001:db8::1").
	 */
	char *text;
	size_t len;
	int pref;               /* MX preference */
	unsigned char addr[16]; /* A: 4 bytes, AAAA: 16 bytes, network order */
};

/* The outcome of one lookup. */
struct dns_result {
	char *name; /* the name asked, lower case, no trailing dot */
	enum dns_type type;
	enum dns_status status;
	const char *detail; /* static text for people, never NULL */
	uint32_t ttl;       /* smallest TTL of the answer (negative: SOA minimum) */
	int from_cache;
	size_t n;
	struct dns_rr *rr; /* n answers, in the order the server sent them */
};

struct dns_config {
	/* "127.0.0.1:5353,[::1]:5353"; NULL or "" = the system's resolv.conf. */
	const char *servers;
	int timeout_ms;         /* first try's timeout; 0 = 2000 */
	int tries;              /* per server; 0 = 3 */
	size_t cache_max;       /* answers kept; 0 = 4096; (size_t)-1 = no cache */
	uint32_t cache_max_ttl; /* cap on positive TTLs in seconds; 0 = 3600 */
	uint32_t cache_neg_ttl; /* cap on NXDOMAIN/NODATA TTLs; 0 = 300 */
};

struct dns_resolver;

/*
 * Creates a resolver on base. With servers given, /etc/resolv.conf, search
 * domains and the hosts file are not used. Returns NULL with err filled on
 * a bad server list. The caller owns the resolver (dns_resolver_free).
 */
struct dns_resolver *dns_resolver_new(struct event_base *base, const struct dns_config *cfg,
                                      char *err, size_t errlen);
/*
 * Frees the resolver. Every lookup still pending gets its callback first,
 * with DNS_ERROR and detail "cancelled" (so callbacks must tolerate that).
 * Never call it from inside one of the resolver's callbacks.
 */
void dns_resolver_free(struct dns_resolver *r);

/*
 * A lookup's callback: res is owned by the resolver and valid only during
 * the call (dns_result_dup keeps a copy). arg must outlive the lookup (a
 * long-lived owner such as a table); cookie names the short-lived object
 * (a session or domain id) that may have gone away meanwhile.
 */
typedef void (*dns_cb)(const struct dns_result *res, void *arg, uint64_t cookie);

enum {
	DNS_Q_NOCACHE = 1, /* ask the server even if cached (answer is still stored) */
};

/*
 * Starts a lookup of name (absolute; a trailing dot is optional). cb is
 * called exactly once, never before dns_query returns (cache hits and
 * immediate failures are delivered from the loop too).
 */
void dns_query(struct dns_resolver *r, const char *name, enum dns_type type, int flags, dns_cb cb,
               void *arg, uint64_t cookie);

struct dns_stats {
	uint64_t queries;    /* dns_query calls */
	uint64_t cache_hits; /* answered from the cache */
	uint64_t sent;       /* lookups handed to c-ares */
	size_t cached;       /* entries now in the cache */
};
/* Copies the resolver's counters into st. */
void dns_resolver_stats(const struct dns_resolver *r, struct dns_stats *st);
/* Drops every cached answer. */
void dns_cache_clear(struct dns_resolver *r);

/* A deep copy of res; the caller owns it (dns_result_free). */
struct dns_result *dns_result_dup(const struct dns_result *res);
/* Frees a result from dns_result_dup (NULL is fine). */
void dns_result_free(struct dns_result *res);

/* "ok", "nxdomain", "nodata", "servfail", "timeout", "error". */
const char *dns_status_str(enum dns_status s);
/* "A", "CNAME", "MX", "TXT", "AAAA". */
const char *dns_type_str(enum dns_type t);

/* ==== wire.c: DNS answer parsing (pure) ================================= */

/*
 * Parses a DNS reply (abuf, alen) to a lookup of name/type into res
 * (emptied first; free with dns_result_clear): the rcode gives NXDOMAIN,
 * SERVFAIL or an error; answers are taken along the CNAME chain that starts
 * at the question's name; an empty answer is NODATA with the TTL of the SOA
 * in the authority section. Returns 0, or -1 for a malformed reply (then
 * res->status is DNS_ERROR).
 */
int dns_answer_parse(const unsigned char *abuf, size_t alen, enum dns_type type,
                     struct dns_result *res);
/* Frees what res holds (not res itself) and zeroes it. */
void dns_result_clear(struct dns_result *res);

/* ==== spf.c: SPF records, RFC 7208 (pure) =============================== */

enum spf_kind {
	SPF_ALL,
	SPF_INCLUDE,
	SPF_A,
	SPF_MX,
	SPF_PTR,
	SPF_IP4,
	SPF_IP6,
	SPF_EXISTS,
	SPF_REDIRECT, /* modifier */
	SPF_EXP,      /* modifier */
	SPF_OTHER_MOD /* unknown modifier: ignored, as RFC 7208 6 says */
};

struct spf_term {
	enum spf_kind kind;
	char qualifier; /* '+', '-', '~', '?' (mechanisms; '+' if none written) */
	char *text;     /* the term as written */
	/*
	 * include/exists/redirect/exp: the domain-spec; a/mx/ptr: the
	 * domain-spec or NULL for the record's own domain; ip4/ip6: the
	 * address; other modifiers: the name.
	 */
	char *arg;
	int has_macro; /* arg holds a %{..} macro (cannot be followed without a sender) */
	int cidr4;     /* -1 when not given */
	int cidr6;     /* -1 when not given */
};

struct spf_record {
	size_t n;
	struct spf_term *terms;
};

/* 1 when txt is an SPF record: "v=spf1" followed by a space or the end. */
int spf_is_record(const char *txt);
/*
 * Parses an SPF record into rec (caller frees with spf_record_free, also
 * on failure). Returns 0, or -1 with err saying which term is wrong
 * (a syntax error is a permerror for receivers).
 */
int spf_parse(const char *txt, struct spf_record *rec, char *err, size_t errlen);
void spf_record_free(struct spf_record *rec);
/*
 * The DNS-querying terms of this record alone (include, a, mx, ptr,
 * exists, redirect; redirect only when there is no "all", which makes it
 * inert), as counted toward the limit of 10 in RFC 7208 4.6.4.
 */
int spf_count_lookups(const struct spf_record *rec);
/* 1 when rec has include:domain with a '+' (or no) qualifier. */
int spf_has_include(const struct spf_record *rec, const char *domain);
/* "v=spf1 include:DOMAIN ~all"; the caller frees it. */
char *spf_new_record(const char *include_domain);
/*
 * Merges include:DOMAIN into an existing SPF record: inserted before the
 * "all" term, else before redirect=, else at the end (terms then separated
 * by single spaces). *out (caller frees) is the record to publish. Returns
 * 1 when changed, 0 when the include was already there (*out is a copy of
 * existing), -1 when existing is not an SPF record (*out NULL).
 */
int spf_merge(const char *existing, const char *include_domain, char **out);

/* What the caller knows about the SPF record of a domain (spf_evaluate). */
enum spf_fetch {
	SPF_FETCH_PENDING,  /* not known yet: the caller has asked DNS */
	SPF_FETCH_RECORD,   /* *record is the one SPF record there */
	SPF_FETCH_VOID,     /* NXDOMAIN or no TXT records: a void lookup */
	SPF_FETCH_NOSPF,    /* TXT records, none of them SPF */
	SPF_FETCH_MULTIPLE, /* more than one SPF record */
	SPF_FETCH_ERROR,    /* the lookup failed (SERVFAIL, timeout...) */
};
/* What spf_evaluate asks about a name. */
enum spf_want {
	SPF_WANT_SPF, /* its SPF record (include, redirect) */
	SPF_WANT_A,   /* whether it has an address, A or AAAA (a): RECORD or VOID */
	SPF_WANT_MX,  /* whether it has MX records (mx): RECORD or VOID */
};
/*
 * Tells what the caller knows about domain: for SPF_WANT_SPF, *record
 * (borrowed until spf_evaluate returns) when RECORD.
 */
typedef enum spf_fetch (*spf_fetch_fn)(void *ctx, const char *domain, enum spf_want want,
                                       const char **record);

/* The outcome of walking an SPF record through its includes and redirects. */
struct spf_eval {
	int lookups;      /* RFC 7208 4.6.4 count over the whole tree (stops past 10) */
	int void_lookups; /* a, mx, include, redirect names without answers */
	int has_include;  /* our include is in the tree (with a '+' qualifier) */
	int complete;     /* 0 while some fetch is SPF_FETCH_PENDING */
	int error;        /* a fetch failed: detail names it */
	int invalid;      /* a syntax error, or an include/redirect without one SPF record */
	char detail[512]; /* the first problem, in words; "" when none */
};

/*
 * Walks record (the SPF record of domain) in evaluation order, fetching
 * each include and redirect target through fetch (pure: fetch gives what
 * the caller knows; PENDING answers make the walk incomplete, and the
 * caller runs it again once they are in). Counting stops once the limit of
 * 10 is passed, so self-including records end. our_include may be NULL.
 */
void spf_evaluate(const char *domain, const char *record, const char *our_include,
                  spf_fetch_fn fetch, void *ctx, struct spf_eval *out);

/* ==== records.c: what a customer publishes (pure) ======================= */

/* Expected DKIM delegation of one selector. */
struct dns_dkim_selector {
	const char *selector;     /* "s1" */
	const char *cname_target; /* CNAME mode: expected target, or NULL */
	const char *txt_p;        /* TXT mode: expected p= (base64), or NULL */
	const char *txt_record;   /* TXT mode: the record to publish ("v=DKIM1; k=rsa; p=..."),
	                             NULL = "v=DKIM1; p=<txt_p>" */
};

/* The platform's settings ([platform] in the config), borrowed. */
struct dns_platform {
	const char *spf_include;        /* "spf.sendgate.example" ("include:" prefix allowed) */
	const char *dkim_zone;          /* "dkim.sendgate.example" */
	const char *return_path_prefix; /* "rp" */
	const char *return_path_domain; /* "rp.sendgate.example" */
	const char *dmarc_rua;          /* "dmarc@sendgate.example"; NULL or "" = no rua */
	const struct dns_dkim_selector *dkim;
	size_t n_dkim;
};

/*
 * The DKIM label of a domain in the platform's DKIM zone: the domain in
 * lower case with each '-' doubled and each '.' made '-', so that
 * "acme.example" -> "acme-example" and "a-b.example" -> "a--b-example"
 * (reversible: labels never start or end with '-'). When that exceeds the
 * 63 bytes of a DNS label, "h" and the first 40 hex digits of SHA-256 of
 * the domain (never a '-', so it cannot clash). Writes into out; returns 0,
 * -1 if out is too small (64 bytes is always enough).
 */
int dns_dkim_label(const char *domain, char *out, size_t outlen);
/*
 * The CNAME target for SELECTOR of DOMAIN: "SELECTOR.LABEL.DKIMZONE".
 * The caller frees it.
 */
char *dns_dkim_cname_target(const char *selector, const char *domain, const char *dkim_zone);
/*
 * The organizational domain (RFC 7489 3.2) of domain, from the Public
 * Suffix List (libpsl, the system's list or the built-in one): the
 * registrable domain, or domain itself when it has none. Lower case, no
 * trailing dot; the caller frees it.
 */
char *dns_org_domain(const char *domain);

/* "v=DMARC1; p=none; rua=mailto:RUA" (no rua= when rua is NULL or ""); caller frees. */
char *dns_dmarc_recommended(const char *rua);

/* A tag=value list (DKIM, DMARC): the value of tag, or NULL; caller frees. */
char *dns_tag_value(const char *record, const char *tag);

enum dns_action {
	DNS_ACTION_ADD,     /* publish this record */
	DNS_ACTION_REPLACE, /* replace the record now published with this one */
	DNS_ACTION_NONE,    /* already right (or, for DMARC, a policy exists: kept) */
};

/* One record the customer must publish. */
struct dns_publish {
	const char *kind; /* "spf", "dkim", "return_path", "dmarc" (static) */
	const char *type; /* "TXT" or "CNAME" (static) */
	char *selector;   /* DKIM only */
	char *name;       /* absolute, no trailing dot: "s1._domainkey.acme.example" */
	char *rel_name;   /* relative to the zone: "s1._domainkey", "@" for the apex */
	char *value;      /* the record's value (TXT unquoted) */
	char *current;    /* the value found in DNS, if known and different */
	enum dns_action action;
};

struct dns_publish_set {
	char *domain;
	char *zone; /* the registrable domain (the customer's DNS zone) */
	size_t n;
	struct dns_publish *recs; /* SPF, DKIM selectors, return path, DMARC */
};

struct dns_check_report;

/*
 * Computes what the customer must publish for domain. found (may be NULL)
 * is the last check's report: an SPF record found is merged rather than
 * doubled, records already right get DNS_ACTION_NONE, an existing DMARC
 * policy is kept. DKIM selectors with txt_p set and no cname_target are
 * given as TXT (txt_record); others as CNAME to their cname_target, or to
 * dns_dkim_cname_target when that is NULL.
 * Returns 0, or -1 for an invalid domain. The caller frees out.
 */
int dns_records_compute(const char *domain, const struct dns_platform *p,
                        const struct dns_check_report *found, struct dns_publish_set *out);
void dns_publish_set_free(struct dns_publish_set *s);
/* "add", "replace", "none". */
const char *dns_action_str(enum dns_action a);

/* ==== check.c: verifying a domain's records (async) ===================== */

enum dns_check_status {
	DNS_CHECK_VERIFIED,
	DNS_CHECK_MISSING,
	DNS_CHECK_MISMATCH, /* found, but not what we expect: see found */
	DNS_CHECK_ERROR,    /* DNS failed: see dns_status */
	DNS_CHECK_MULTIPLE_RECORDS,
	DNS_CHECK_TOO_MANY_LOOKUPS, /* SPF over 10 lookups (or over 2 void lookups) */
	DNS_CHECK_INVALID,          /* syntax error, or an include without SPF record */
};

/* One record's verdict. Strings are owned by the report. */
struct dns_record_check {
	const char *kind; /* "spf", "dkim", "return_path", "dmarc" (static) */
	const char *type; /* "TXT" or "CNAME" (static) */
	char *selector;   /* DKIM only */
	enum dns_check_status status;
	char *name;     /* the name looked up */
	char *expected; /* what we look for (a CNAME target, our include, p=) */
	char *found;    /* the relevant value found, or NULL */
	char **values;  /* every value found at name (TXT records, CNAME target) */
	size_t n_values;
	char *detail;               /* one sentence for people: what is wrong, or what is there */
	enum dns_status dns_status; /* the lookup's outcome (which failure for ERROR) */
};

struct dns_check_report {
	char *domain;
	char *org_domain;
	struct dns_record_check spf;
	int spf_lookups;      /* RFC 7208 4.6.4 count, through includes and redirects */
	int spf_void_lookups; /* a/mx/include/redirect names answering NXDOMAIN or no data */
	size_t n_dkim;
	struct dns_record_check *dkim; /* one per platform selector, same order */
	struct dns_record_check return_path;
	/* DMARC: VERIFIED when a policy applies (here or at the org domain). */
	struct dns_record_check dmarc;
	char *dmarc_policy;   /* the policy that applies (sp= at the org domain), or NULL */
	char *dmarc_rua;      /* rua= of that record, or NULL */
	char *dmarc_found_at; /* "_dmarc.acme.example", or NULL */
};

/*
 * The callback of dns_check_start: report is owned by the check and valid
 * only during the call. arg must outlive the check; cookie names the
 * caller's object (a domain id).
 */
typedef void (*dns_check_cb)(const struct dns_check_report *report, void *arg, uint64_t cookie);

enum {
	DNS_CHECK_FRESH = 1, /* bypass the resolver's cache (an operator's "verify") */
};

/*
 * Checks every record of domain against the platform's settings (copied;
 * p may go away after the call). cb is called once, when every lookup has
 * finished (bounded by the resolver's timeouts), never before this returns.
 * Returns 0, or -1 for an invalid domain name (no callback then).
 */
int dns_check_start(struct dns_resolver *r, const char *domain, const struct dns_platform *p,
                    int flags, dns_check_cb cb, void *arg, uint64_t cookie);

/* "verified", "missing", "mismatch", "error", "multiple_records",
 * "too_many_lookups", "invalid". */
const char *dns_check_status_str(enum dns_check_status s);
/* 1 when the domain name is syntactically acceptable (LDH labels, length). */
int dns_domain_is_valid(const char *domain);

/* ==== report.c: verdicts as JSON and in words (pure) ==================== */

/* The records a domain needs verified to send ([verify] required). */
enum {
	DNS_REQUIRE_SPF = 1,
	DNS_REQUIRE_DKIM = 2, /* every selector */
	DNS_REQUIRE_RETURN_PATH = 4,
	DNS_REQUIRE_DMARC = 8,
};
/* Parses "spf,dkim,return_path,dmarc" into *mask. Returns 0, or -1 with err. */
int dns_require_parse(const char *list, unsigned *mask, char *err, size_t errlen);
/*
 * Counts the required records that verify: *ok of *total (either may be
 * NULL). Returns 1 when all of them verify (the domain may send), else 0;
 * ok > 0 with a 0 return is "partially verified".
 */
int dns_report_passes(const struct dns_check_report *rep, unsigned required, int *ok, int *total);
/*
 * Appends the required records that do not verify to out, for people:
 * "spf acme.example (missing), dkim s1 s1._domainkey.acme.example (mismatch)".
 */
void dns_report_failing(const struct dns_check_report *rep, unsigned required, struct buf *out);
/* Frees what rep holds (a report from dns_check_report_from_json) and zeroes it. */
void dns_check_report_clear(struct dns_check_report *rep);
/*
 * The report as a JSON object (jansson; the caller owns the reference):
 * {"domain", "org_domain", "spf": {kind, type, status, name, expected,
 * found, values[], detail, dns, lookups, void_lookups}, "dkim": [{...,
 * selector}], "return_path": {...}, "dmarc": {..., policy, rua, found_at}}.
 */
struct json_t *dns_check_report_to_json(const struct dns_check_report *rep);
/* Reads back a report stored as JSON into rep (dns_check_report_clear). Returns 0 or -1. */
int dns_check_report_from_json(const struct json_t *j, struct dns_check_report *rep);
/* The records to publish as JSON: {"domain", "zone", "records": [{kind, type,
 * selector?, name, relative_name, value, current, action}]}. Caller owns it. */
struct json_t *dns_publish_set_to_json(const struct dns_publish_set *s);
/*
 * Appends to out what the customer should do next, one numbered line per
 * record that is not in place, in the order of the guide: SPF, DKIM,
 * return path, DMARC. rep (may be NULL) adds what was found. Returns the
 * number of steps written (0: nothing to do).
 */
int dns_publish_explain(const struct dns_publish_set *s, const struct dns_check_report *rep,
                        struct buf *out);

#endif
