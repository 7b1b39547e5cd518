/*
 * ctl_dkim: the domains' DKIM keys. `sendgatectl dkim list|rotate|zone|
 * import|reseal`, and the pieces `domain add` and `domain show` use: the master
 * key, sealed key generation, and the records a customer publishes.
 *
 * Selectors: RSA keys rotate between sg1 and sg2, Ed25519 keys between
 * sg1e and sg2e (ctl_util.c). In CNAME mode the customer delegates both
 * selectors of each algorithm to the platform's DKIM zone once, and a
 * rotation only changes what the zone serves. A key's life is kept in its
 * timestamps: pending (sign_from in the future: published, not used),
 * signing, retiring (sign_until passed, still published until
 * unpublish_at) and retired.
 *
 * Private keys exist here only between generation (or import) and sealing;
 * they are never printed, and the master key never leaves this process.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "dkim/dkim.h"
#include "dns/dns.h"
#include "tenants/ctl.h"

static const char usage[] = "dkim list DOMAIN | dkim rotate DOMAIN [--algorithm rsa|ed25519|both]"
                            " [--publish-delay DURATION] [--overlap DURATION] | dkim zone |"
                            " dkim import DOMAIN SELECTOR PEMFILE [--replace] [--overlap DURATION]"
                            " | dkim reseal";
static const char usage_rotate[] = "dkim rotate DOMAIN [--algorithm rsa|ed25519|both]"
                                   " [--publish-delay DURATION] [--overlap DURATION]";
static const char usage_import[] =
    "dkim import DOMAIN SELECTOR PEMFILE [--replace] [--overlap DURATION]";

/* TTL of the records in `dkim zone`: short, so a rotation shows quickly. */
#define ZONE_TTL 300
/* No PEM private key comes near this. */
#define PEM_FILE_MAX (64 * 1024)

static const char *const all_algs[] = {"rsa", "ed25519"};

/* ---- master key and new keys ----------------------------------------- */

/* Decodes the lower-case hex of encode(bytea, 'hex') into out; 0 or -1. */
static int hex_to_buf(const char *s, struct buf *out)
{
	size_t i, n = strlen(s);

	if (n % 2)
		return -1;
	for (i = 0; i < n; i += 2) {
		unsigned char b;
		if (hex_decode(s + i, 1, &b) == -1 || buf_append(out, &b, 1) == -1)
			return -1;
	}
	return 0;
}

/*
 * Opens the sealed key of domain's selector (hex as encode(bytea, 'hex')
 * gives it) under mkey and the row's aad. The PEM goes to pem when not
 * NULL (the caller wipes it), else it is wiped here. The blob's version
 * (1 or 2), or -1 when it does not open.
 */
static int ctl_dkim_unseal_row(const unsigned char mkey[32], const char *domain,
                               const char *selector, const char *hex, struct buf *pem)
{
	struct buf sealed, aad, plain;
	int version = -1;

	buf_init(&sealed, (size_t)-1);
	buf_init(&aad, (size_t)-1);
	buf_init(&plain, (size_t)-1);
	if (hex_to_buf(hex, &sealed) == 0 && dkim_key_aad(domain, selector, &aad) == 0)
		version = dkim_unseal(mkey, aad.data, aad.len, sealed.data, sealed.len,
		                      pem ? pem : &plain);
	if (plain.data)
		OPENSSL_cleanse(plain.data, plain.len);
	buf_free(&plain);
	buf_free(&aad);
	buf_free(&sealed);
	return version;
}

int ctl_dkim_master_key(struct ctl *c, unsigned char mkey[32])
{
	const char *path = c->cfg.dkim_master_key_file;
	char err[512];
	PGresult *r;
	int i, rc = -1;

	if (path == NULL || *path == '\0') {
		ctl_error("no DKIM master key: set [dkim] master_key_file in %s to a file "
		          "holding 64 hex digits (make one with 'openssl rand -hex 32'); "
		          "every domain's private key is sealed with it",
		          c->cfg.path ? c->cfg.path : "the configuration file");
		return -1;
	}
	if (dkim_master_key_load(path, mkey, err, sizeof(err)) == -1) {
		ctl_error("[dkim] master_key_file: %s", err);
		return -1;
	}
	/*
	 * A key that loads may still be the wrong one: new keys sealed under
	 * it would be keys the daemon cannot open. Try it on the newest stored
	 * keys: one that opens is enough (another may have been altered or
	 * moved to the wrong row, which is not the master key's fault).
	 */
	r = ctl_exec(c, "checking the DKIM master key",
	             "SELECT d.name, k.selector, encode(k.private_sealed, 'hex')"
	             " FROM dkim_keys k JOIN domains d ON d.id = k.domain_id"
	             " ORDER BY k.id DESC LIMIT 20",
	             0, NULL, NULL, NULL);
	if (r == NULL)
		goto out;
	if (PQntuples(r) == 0) {
		rc = 0;
		goto out;
	}
	for (i = 0; i < PQntuples(r) && rc == -1; i++) {
		if (ctl_dkim_unseal_row(mkey, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
		                        PQgetvalue(r, i, 2), NULL) != -1)
			rc = 0;
	}
	if (rc == -1)
		ctl_error("[dkim] master_key_file: %s does not open the DKIM keys already in the "
		          "database (they were sealed under another master key); refusing to "
		          "seal new keys under it",
		          path);
out:
	PQclear(r);
	if (rc == -1)
		OPENSSL_cleanse(mkey, 32);
	return rc;
}

/*
 * Appends pem sealed under mkey and bound to domain and selector, as a
 * bytea literal ("\\x" and hex), to out. 0, or -1.
 */
static int seal_hex(const unsigned char mkey[32], const char *domain, const char *selector,
                    const struct buf *pem, struct buf *out)
{
	struct buf aad, sealed;
	char *hex;
	int rc = -1;

	buf_init(&aad, (size_t)-1);
	buf_init(&sealed, (size_t)-1);
	if (dkim_key_aad(domain, selector, &aad) == 0 &&
	    dkim_seal(mkey, aad.data, aad.len, pem->data, pem->len, &sealed) == 0) {
		hex = xmalloc(sealed.len * 2 + 1);
		hex_encode((const unsigned char *)sealed.data, sealed.len, hex);
		buf_puts(out, "\\x");
		buf_puts(out, hex);
		free(hex);
		rc = 0;
	}
	buf_free(&aad);
	buf_free(&sealed);
	return rc;
}

/*
 * Seals k under mkey into nk (whose selector the caller sets), bound to
 * domain and nk->selector. 0 or -1 (printed).
 */
static int newkey_fill(struct ctl_dkim_newkey *nk, struct dkim_key *k, const char *domain,
                       const unsigned char mkey[32])
{
	struct buf pem;
	int rc = -1;

	buf_init(&pem, (size_t)-1);
	nk->bits = dkim_key_bits(k);
	snprintf(nk->alg, sizeof(nk->alg), "%s",
	         dkim_key_alg(k) == DKIM_ALG_ED25519_SHA256 ? "ed25519" : "rsa");
	if (dkim_key_private_pem(k, &pem) == -1 ||
	    seal_hex(mkey, domain, nk->selector, &pem, &nk->sealed_hex) == -1 ||
	    dkim_key_public_b64(k, &nk->public_b64) == -1)
		ctl_error("cannot seal the new DKIM key");
	else
		rc = 0;
	if (pem.data)
		OPENSSL_cleanse(pem.data, pem.len);
	buf_free(&pem);
	return rc;
}

void ctl_dkim_newkey_init(struct ctl_dkim_newkey *nk)
{
	memset(nk, 0, sizeof(*nk));
	buf_init(&nk->sealed_hex, (size_t)-1);
	buf_init(&nk->public_b64, (size_t)-1);
}

void ctl_dkim_newkey_free(struct ctl_dkim_newkey *nk)
{
	buf_free(&nk->sealed_hex);
	buf_free(&nk->public_b64);
}

int ctl_dkim_newkey_generate(struct ctl *c, const char *alg, const char *domain,
                             const unsigned char mkey[32], struct ctl_dkim_newkey *nk)
{
	enum dkim_alg a =
	    strcmp(alg, "ed25519") == 0 ? DKIM_ALG_ED25519_SHA256 : DKIM_ALG_RSA_SHA256;
	struct dkim_key *k;
	char err[256];
	int rc;

	k = dkim_key_generate(a, c->cfg.dkim_rsa_bits, err, sizeof(err));
	if (k == NULL) {
		ctl_error("cannot generate a DKIM key: %s", err);
		return -1;
	}
	rc = newkey_fill(nk, k, domain, mkey);
	dkim_key_free(k);
	return rc;
}

int ctl_dkim_key_insert(struct ctl *c, const char *domain_id, const struct ctl_dkim_newkey *nk,
                        long long delay, int imported, char sign_from[40])
{
	char bits[16], delay_s[24];
	const char *params[8] = {domain_id, nk->selector,        nk->alg,
	                         bits,      nk->sealed_hex.data, nk->public_b64.data,
	                         delay_s,   imported ? "t" : "f"};
	PGresult *r;

	snprintf(bits, sizeof(bits), "%d", nk->bits);
	snprintf(delay_s, sizeof(delay_s), "%lld", delay);
	r = ctl_exec(c, "storing the DKIM key",
	             "INSERT INTO dkim_keys (domain_id, selector, algorithm, bits, private_sealed,"
	             " public_b64, sign_from, imported)"
	             " VALUES ($1, $2, $3, $4::int, $5::bytea, $6,"
	             " now() + $7::bigint * interval '1 second', $8::boolean)"
	             " RETURNING " CTL_SQL_TIME("sign_from"),
	             8, params, NULL, NULL);
	if (r == NULL)
		return -1;
	if (sign_from)
		snprintf(sign_from, 40, "%s", PQgetvalue(r, 0, 0));
	PQclear(r);
	return 0;
}

/* ---- records to publish ----------------------------------------------- */

/* One key row as the record builder and the commands read it. */
#define KEY_COLUMNS                                                                                \
	"k.id, k.selector, k.algorithm, k.bits, k.public_b64, " CTL_SQL_DKIM_STATE                 \
	", " CTL_SQL_TIME("k.created_at") ", " CTL_SQL_TIME("k.sign_from") ", " CTL_SQL_TIME(      \
	    "k.sign_until") ", " CTL_SQL_TIME("k.unpublish_at") ", k.imported"
enum {
	K_ID,
	K_SELECTOR,
	K_ALG,
	K_BITS,
	K_PUB,
	K_STATE,
	K_CREATED,
	K_SIGN_FROM,
	K_SIGN_UNTIL,
	K_UNPUBLISH,
	K_IMPORTED
};
/* rsa first, then ed25519; by selector within each. */
#define KEY_ORDER " ORDER BY k.algorithm = 'ed25519', k.selector"

/* The key rows of one domain (caller PQclears), or NULL with the error printed. */
static PGresult *domain_keys(struct ctl *c, const char *domain_id)
{
	const char *params[1] = {domain_id};

	return ctl_exec(c, "reading the DKIM keys",
	                "SELECT " KEY_COLUMNS " FROM dkim_keys k WHERE k.domain_id = $1" KEY_ORDER,
	                1, params, NULL, NULL);
}

/* The row of r on selector, or -1. */
static int row_of_selector(const PGresult *r, const char *selector)
{
	int i;

	for (i = 0; i < PQntuples(r); i++)
		if (strcmp(PQgetvalue(r, i, K_SELECTOR), selector) == 0)
			return i;
	return -1;
}

static int row_retired(const PGresult *r, int i)
{
	return strcmp(PQgetvalue(r, i, K_STATE), "retired") == 0;
}

/* The record entry for one selector; row is its key (or -1 for a CNAME without a key yet). */
static json_t *record_entry(const PGresult *r, int row, const char *selector, const char *alg,
                            const char *type, const char *name, const char *value)
{
	return json_pack("{s:s, s:s, s:o, s:s, s:s, s:s, s:b, s:o}", "selector", selector,
	                 "algorithm", row >= 0 ? PQgetvalue(r, row, K_ALG) : alg, "bits",
	                 row >= 0 && !PQgetisnull(r, row, K_BITS)
	                     ? ctl_json_int(PQgetvalue(r, row, K_BITS))
	                     : json_null(),
	                 "record_type", type, "name", name, "value", value, "signing",
	                 row >= 0 && strcmp(PQgetvalue(r, row, K_STATE), "signing") == 0, "state",
	                 row >= 0 ? json_string(PQgetvalue(r, row, K_STATE)) : json_null());
}

static json_t *txt_entry(const PGresult *r, int row, const char *domain)
{
	struct buf name, value;
	json_t *e;

	buf_init(&name, (size_t)-1);
	buf_init(&value, (size_t)-1);
	buf_printf(&name, "%s._domainkey.%s", PQgetvalue(r, row, K_SELECTOR), domain);
	ctl_dkim_txt_value(PQgetvalue(r, row, K_ALG), PQgetvalue(r, row, K_PUB), &value);
	e = record_entry(r, row, PQgetvalue(r, row, K_SELECTOR), NULL, "TXT", name.data,
	                 value.data);
	buf_free(&name);
	buf_free(&value);
	return e;
}

static json_t *cname_entry(struct ctl *c, const PGresult *r, const char *selector, const char *alg,
                           const char *domain)
{
	char *target = dns_dkim_cname_target(selector, domain, c->cfg.platform_dkim_zone);
	struct buf name;
	int row = row_of_selector(r, selector);
	json_t *e;

	if (row >= 0 && row_retired(r, row))
		row = -1;
	buf_init(&name, (size_t)-1);
	buf_printf(&name, "%s._domainkey.%s", selector, domain);
	e = record_entry(r, row, selector, alg, "CNAME", name.data, target);
	buf_free(&name);
	free(target);
	return e;
}

/*
 * The records for the keys in r (domain_keys rows). CNAME mode: both
 * selectors of every algorithm the domain has a live key of, as CNAMEs
 * into the platform's zone (the idle one too: it is what lets keys rotate
 * without DNS changes), plus a TXT for a live key on a selector of the
 * customer's own (an import). TXT mode: a TXT per live key, pending and
 * retiring ones included (they must be in DNS while they may be used).
 */
static json_t *records_from_keys(struct ctl *c, const PGresult *r, const char *domain,
                                 const char *mode)
{
	json_t *arr = json_array();
	size_t a;
	int i, slot;

	if (strcmp(mode, "cname") == 0) {
		for (a = 0; a < ARRAY_LEN(all_algs); a++) {
			int live = 0;

			for (i = 0; i < PQntuples(r); i++)
				if (!row_retired(r, i) &&
				    (strcmp(PQgetvalue(r, i, K_ALG), all_algs[a]) == 0 ||
				     ctl_dkim_selector_slot(all_algs[a],
				                            PQgetvalue(r, i, K_SELECTOR))))
					live = 1;
			if (!live)
				continue;
			for (slot = 1; slot <= 2; slot++)
				json_array_append_new(
				    arr, cname_entry(c, r, ctl_dkim_selector(all_algs[a], slot),
				                     all_algs[a], domain));
		}
		for (i = 0; i < PQntuples(r); i++)
			if (!row_retired(r, i) &&
			    !ctl_dkim_is_platform_selector(PQgetvalue(r, i, K_SELECTOR)))
				json_array_append_new(arr, txt_entry(r, i, domain));
		return arr;
	}
	for (i = 0; i < PQntuples(r); i++)
		if (!row_retired(r, i))
			json_array_append_new(arr, txt_entry(r, i, domain));
	return arr;
}

json_t *ctl_dkim_records(struct ctl *c, const char *domain_id, const char *domain, const char *mode)
{
	PGresult *r = domain_keys(c, domain_id);
	json_t *arr;

	if (r == NULL)
		return NULL;
	arr = records_from_keys(c, r, domain, mode);
	PQclear(r);
	return arr;
}

/* Prints records (a ctl_dkim_records array) as "  NAME TYPE VALUE" lines. */
static void records_print_lines(const json_t *recs, FILE *fp)
{
	size_t i;
	json_t *e;

	json_array_foreach(recs, i, e)
	    fprintf(fp, "  %s %s %s\n", json_string_value(json_object_get(e, "name")),
	            json_string_value(json_object_get(e, "record_type")),
	            json_string_value(json_object_get(e, "value")));
}

void ctl_dkim_records_print(const json_t *recs, const char *domain, const char *mode, FILE *fp)
{
	if (json_array_size(recs) == 0) {
		fprintf(fp, "DKIM: no keys; create one with 'sendgatectl dkim rotate %s'\n",
		        domain);
		return;
	}
	if (strcmp(mode, "cname") == 0)
		fprintf(fp, "DKIM (cname mode): publish these records once; keys rotate behind "
		            "them without DNS changes:\n");
	else
		fprintf(fp, "DKIM (txt mode): publish these records; every new key from 'dkim "
		            "rotate' needs its record published before it signs:\n");
	records_print_lines(recs, fp);
}

/* ---- domain lookups --------------------------------------------------- */

/* A domain as the dkim commands need it. */
struct dom {
	char name[254];
	char id[24];
	char mode[8];
};

/*
 * Finds the domain (FOR UPDATE when lock: the caller is in a transaction
 * that changes its keys). 0, or -1 with the error printed.
 */
static int dom_lookup(struct ctl *c, const char *arg, int lock, struct dom *d)
{
	const char *params[1] = {d->name};
	const char *why;
	PGresult *r;

	if (ctl_domain_normalize(arg, d->name, sizeof(d->name), &why) == -1) {
		ctl_error("no domain named \"%s\"", arg);
		return -1;
	}
	r = ctl_exec(c, "looking up the domain",
	             lock ? "SELECT id, dkim_mode FROM domains WHERE name = $1 FOR UPDATE"
	                  : "SELECT id, dkim_mode FROM domains WHERE name = $1",
	             1, params, NULL, NULL);
	if (r == NULL)
		return -1;
	if (PQntuples(r) == 0) {
		ctl_error("no domain named \"%s\"", d->name);
		PQclear(r);
		return -1;
	}
	snprintf(d->id, sizeof(d->id), "%s", PQgetvalue(r, 0, 0));
	snprintf(d->mode, sizeof(d->mode), "%s", PQgetvalue(r, 0, 1));
	PQclear(r);
	return 0;
}

/* Parses a DURATION option value; 0, or -1 with a usage error printed (*rc set). */
static int duration_opt(const char *opt, const char *v, const char *use, long long *out, int *rc)
{
	if (parse_duration(v, out) == -1 || *out > 3650LL * 86400) {
		*rc = ctl_usage(use, "%s needs a duration such as 0s, 30m, 2h or 7d (got \"%s\")",
		                opt, v);
		return -1;
	}
	return 0;
}

/* Rolls back whatever transaction is open. */
static void rollback(struct ctl *c)
{
	if (c->db && PQtransactionStatus(c->db) != PQTRANS_IDLE)
		PQclear(PQexec(c->db, "ROLLBACK"));
}

/* ---- dkim list -------------------------------------------------------- */

static int dkim_list(struct ctl *c, const char *arg)
{
	static const char *const head[] = {"SELECTOR",   "ALGORITHM",    "BITS",
	                                   "STATE",      "CREATED",      "SIGN_FROM",
	                                   "SIGN_UNTIL", "UNPUBLISH_AT", "IMPORTED"};
	struct dom d;
	struct table t;
	json_t *arr;
	PGresult *r;
	int i;

	if (dom_lookup(c, arg, 0, &d) == -1)
		return CTL_FAIL;
	r = domain_keys(c, d.id);
	if (r == NULL)
		return CTL_FAIL;
	if (c->json) {
		arr = json_array();
		for (i = 0; i < PQntuples(r); i++)
			json_array_append_new(
			    arr, json_pack("{s:s, s:s, s:o, s:s, s:b, s:s, s:s, s:o, s:o}",
			                   "selector", PQgetvalue(r, i, K_SELECTOR), "algorithm",
			                   PQgetvalue(r, i, K_ALG), "bits",
			                   PQgetisnull(r, i, K_BITS)
			                       ? json_null()
			                       : ctl_json_int(PQgetvalue(r, i, K_BITS)),
			                   "state", PQgetvalue(r, i, K_STATE), "imported",
			                   ctl_pq_bool(r, i, K_IMPORTED), "created_at",
			                   PQgetvalue(r, i, K_CREATED), "sign_from",
			                   PQgetvalue(r, i, K_SIGN_FROM), "sign_until",
			                   ctl_json_str_or_null(r, i, K_SIGN_UNTIL), "unpublish_at",
			                   ctl_json_str_or_null(r, i, K_UNPUBLISH)));
		ctl_json_print(arr);
	} else if (PQntuples(r) == 0) {
		printf("no DKIM keys for %s\n", d.name);
	} else {
		table_init(&t, ARRAY_LEN(head), head);
		for (i = 0; i < PQntuples(r); i++) {
			const char *row[] = {
			    PQgetvalue(r, i, K_SELECTOR),
			    PQgetvalue(r, i, K_ALG),
			    PQgetisnull(r, i, K_BITS) ? NULL : PQgetvalue(r, i, K_BITS),
			    PQgetvalue(r, i, K_STATE),
			    PQgetvalue(r, i, K_CREATED),
			    PQgetvalue(r, i, K_SIGN_FROM),
			    PQgetisnull(r, i, K_SIGN_UNTIL) ? NULL : PQgetvalue(r, i, K_SIGN_UNTIL),
			    PQgetisnull(r, i, K_UNPUBLISH) ? NULL : PQgetvalue(r, i, K_UNPUBLISH),
			    ctl_pq_bool(r, i, K_IMPORTED) ? "yes" : "no"};
			table_add(&t, row);
		}
		table_print(&t, stdout);
		table_free(&t);
	}
	PQclear(r);
	return CTL_OK;
}

/* ---- dkim rotate ------------------------------------------------------ */

/* What one algorithm's rotation did, for the output. */
struct rotation {
	const char *alg;
	struct ctl_dkim_newkey nk;
	char sign_from[40];
	char prev_selector[64]; /* "" when nothing was signing */
	char prev_sign_until[40];
	char prev_unpublish_at[40];
};

/*
 * Rotates alg's key of d inside the caller's transaction (d's row is
 * locked). keys are the domain's key rows read in that transaction.
 * CTL_OK, or CTL_FAIL with the error printed.
 */
static int rotate_one(struct ctl *c, const struct dom *d, const PGresult *keys,
                      const unsigned char mkey[32], long long delay, long long overlap,
                      struct rotation *rot)
{
	const char *signing = NULL;
	char delay_s[24], overlap_s[24];
	int use[2], i, slot, row, signing_row = -1;
	PGresult *r;

	for (i = 0; i < PQntuples(keys); i++) {
		if (strcmp(PQgetvalue(keys, i, K_ALG), rot->alg) != 0)
			continue;
		if (strcmp(PQgetvalue(keys, i, K_STATE), "pending") == 0) {
			ctl_error("a rotation of the %s key of %s is already pending: selector %s "
			          "signs from %s; rotate again after that",
			          rot->alg, d->name, PQgetvalue(keys, i, K_SELECTOR),
			          PQgetvalue(keys, i, K_SIGN_FROM));
			return CTL_FAIL;
		}
		if (strcmp(PQgetvalue(keys, i, K_STATE), "signing") == 0) {
			signing = PQgetvalue(keys, i, K_SELECTOR);
			signing_row = i;
		}
	}
	for (slot = 1; slot <= 2; slot++) {
		row = row_of_selector(keys, ctl_dkim_selector(rot->alg, slot));
		use[slot - 1] = row < 0                  ? CTL_SLOT_FREE
		                : row_retired(keys, row) ? CTL_SLOT_RETIRED
		                                         : CTL_SLOT_IN_USE;
	}
	slot = ctl_dkim_rotation_slot(rot->alg, signing, use);
	if (slot == -1) {
		const char *sel =
		    signing && ctl_dkim_selector_slot(rot->alg, signing)
		        ? ctl_dkim_selector(rot->alg, 3 - ctl_dkim_selector_slot(rot->alg, signing))
		        : NULL;

		row = sel ? row_of_selector(keys, sel) : -1;
		if (row >= 0 && !PQgetisnull(keys, row, K_UNPUBLISH))
			ctl_error("selector %s of %s still holds the previous %s key, published "
			          "until %s; rotate again after that",
			          sel, d->name, rot->alg, PQgetvalue(keys, row, K_UNPUBLISH));
		else if (row >= 0)
			ctl_error(
			    "selector %s of %s still holds a %s key (%s); rotate again once it "
			    "is retired",
			    sel, d->name, PQgetvalue(keys, row, K_ALG),
			    PQgetvalue(keys, row, K_STATE));
		else
			ctl_error("both %s selectors of %s (%s, %s) hold keys still in use",
			          rot->alg, d->name, ctl_dkim_selector(rot->alg, 1),
			          ctl_dkim_selector(rot->alg, 2));
		return CTL_FAIL;
	}
	snprintf(rot->nk.selector, sizeof(rot->nk.selector), "%s",
	         ctl_dkim_selector(rot->alg, slot));
	if (use[slot - 1] == CTL_SLOT_RETIRED) {
		const char *params[2] = {d->id, rot->nk.selector};

		r = ctl_exec(c, "removing the retired DKIM key",
		             "DELETE FROM dkim_keys WHERE domain_id = $1 AND selector = $2", 2,
		             params, NULL, NULL);
		if (r == NULL)
			return CTL_FAIL;
		PQclear(r);
	}
	if (ctl_dkim_newkey_generate(c, rot->alg, d->name, mkey, &rot->nk) == -1 ||
	    ctl_dkim_key_insert(c, d->id, &rot->nk, delay, 0, rot->sign_from) == -1)
		return CTL_FAIL;
	if (signing_row >= 0) {
		const char *params[3] = {PQgetvalue(keys, signing_row, K_ID), delay_s, overlap_s};

		snprintf(delay_s, sizeof(delay_s), "%lld", delay);
		snprintf(overlap_s, sizeof(overlap_s), "%lld", overlap);
		r = ctl_exec(
		    c, "retiring the old DKIM key",
		    "UPDATE dkim_keys SET"
		    " sign_until = now() + $2::bigint * interval '1 second',"
		    " unpublish_at = now() + ($2::bigint + $3::bigint) * interval '1 second'"
		    " WHERE id = $1"
		    " RETURNING selector, " CTL_SQL_TIME("sign_until") ", " CTL_SQL_TIME(
		        "unpublish_at"),
		    3, params, NULL, NULL);
		if (r == NULL)
			return CTL_FAIL;
		snprintf(rot->prev_selector, sizeof(rot->prev_selector), "%s", PQgetvalue(r, 0, 0));
		snprintf(rot->prev_sign_until, sizeof(rot->prev_sign_until), "%s",
		         PQgetvalue(r, 0, 1));
		snprintf(rot->prev_unpublish_at, sizeof(rot->prev_unpublish_at), "%s",
		         PQgetvalue(r, 0, 2));
		PQclear(r);
	}
	return CTL_OK;
}

static void rotate_print(struct ctl *c, const struct dom *d, struct rotation *rots, size_t n,
                         long long delay, json_t *recs)
{
	json_t *arr, *e;
	size_t i, j;

	if (c->json) {
		arr = json_array();
		for (i = 0; i < n; i++) {
			e = json_pack("{s:s, s:s, s:i, s:s, s:o}", "algorithm", rots[i].alg,
			              "selector", rots[i].nk.selector, "bits", rots[i].nk.bits,
			              "sign_from", rots[i].sign_from, "previous",
			              rots[i].prev_selector[0]
			                  ? json_pack("{s:s, s:s, s:s}", "selector",
			                              rots[i].prev_selector, "sign_until",
			                              rots[i].prev_sign_until, "unpublish_at",
			                              rots[i].prev_unpublish_at)
			                  : json_null());
			json_array_append_new(arr, e);
		}
		ctl_json_print(json_pack("{s:s, s:s, s:o, s:o}", "domain", d->name, "dkim_mode",
		                         d->mode, "rotated", arr, "dkim", recs));
		return;
	}
	for (i = 0; i < n; i++) {
		if (rots[i].prev_selector[0])
			printf("rotated the %s key of %s", rots[i].alg, d->name);
		else
			printf("added a first %s key to %s", rots[i].alg, d->name);
		printf(": new key on selector %s (%d bits) signs from %s\n", rots[i].nk.selector,
		       rots[i].nk.bits, rots[i].sign_from);
		if (rots[i].prev_selector[0])
			printf("  selector %s signs until %s and stays published until %s\n",
			       rots[i].prev_selector, rots[i].prev_sign_until,
			       rots[i].prev_unpublish_at);
	}
	if (strcmp(d->mode, "cname") == 0) {
		if (delay > 0)
			printf("the new key is in the platform's DKIM zone now: load 'sendgatectl "
			       "dkim zone' into its DNS server before it signs\n");
		else
			printf("the new key signs now: load 'sendgatectl dkim zone' into the DKIM "
			       "zone's DNS server at once (until then its signatures fail)\n");
		/* A first key of an algorithm needs its pair delegated, once. */
		for (i = 0; i < n; i++) {
			json_t *one;

			if (rots[i].prev_selector[0])
				continue;
			one = json_array();
			json_array_foreach(recs, j, e) if (ctl_dkim_selector_slot(
			                                       rots[i].alg,
			                                       json_string_value(
			                                           json_object_get(e, "selector"))))
			    json_array_append(one, e);
			printf("first %s key of %s: the customer publishes these records once:\n",
			       rots[i].alg, d->name);
			records_print_lines(one, stdout);
			json_decref(one);
		}
		json_decref(recs);
		return;
	}
	if (delay > 0)
		printf("txt mode: the customer must publish the new record before it signs:\n");
	else
		printf("txt mode: the new key signs now; its signatures fail until the customer "
		       "publishes:\n");
	for (i = 0; i < n; i++) {
		json_t *one = json_array();

		json_array_foreach(
		    recs, j, e) if (strcmp(json_string_value(json_object_get(e, "selector")),
		                           rots[i].nk.selector) == 0) json_array_append(one, e);
		records_print_lines(one, stdout);
		json_decref(one);
	}
	json_decref(recs);
}

static int dkim_rotate(struct ctl *c, int argc, char **argv)
{
	const char *domain = NULL, *algopt = NULL;
	long long delay = c->cfg.dkim_rotation_publish_delay;
	long long overlap = c->cfg.dkim_rotation_overlap;
	struct rotation rots[2];
	unsigned char mkey[32];
	size_t nrot = 0, i, a;
	PGresult *keys = NULL;
	json_t *recs = NULL;
	struct dom d;
	int rc = CTL_USAGE, j;

	memset(rots, 0, sizeof(rots));
	for (j = 2; j < argc; j++) {
		if (strcmp(argv[j], "--algorithm") == 0 && j + 1 < argc) {
			algopt = argv[++j];
		} else if (strcmp(argv[j], "--publish-delay") == 0 && j + 1 < argc) {
			if (duration_opt(argv[j], argv[j + 1], usage_rotate, &delay, &rc) == -1)
				return rc;
			j++;
		} else if (strcmp(argv[j], "--overlap") == 0 && j + 1 < argc) {
			if (duration_opt(argv[j], argv[j + 1], usage_rotate, &overlap, &rc) == -1)
				return rc;
			j++;
		} else if (argv[j][0] == '-') {
			return ctl_usage(usage_rotate,
			                 "unknown option \"%s\" (or its value is missing)",
			                 argv[j]);
		} else if (domain == NULL) {
			domain = argv[j];
		} else {
			return ctl_usage(usage_rotate, "too many arguments");
		}
	}
	if (domain == NULL)
		return ctl_usage(usage_rotate, "dkim rotate needs a DOMAIN");
	if (algopt && ctl_dkim_algorithms(algopt) == 0)
		return ctl_usage(usage_rotate, "--algorithm must be rsa, ed25519 or both");
	if (ctl_dkim_master_key(c, mkey) == -1)
		return CTL_FAIL;

	rc = CTL_FAIL;
	if (ctl_run(c, "rotating the DKIM key", "BEGIN") == -1)
		goto out;
	if (dom_lookup(c, domain, 1, &d) == -1 || (keys = domain_keys(c, d.id)) == NULL)
		goto out;
	/* Without --algorithm: every algorithm the domain has a live key of. */
	for (a = 0; a < ARRAY_LEN(all_algs); a++) {
		int want = 0;

		if (algopt) {
			want = ctl_dkim_algorithms(algopt) & (1 << a);
		} else {
			for (j = 0; j < PQntuples(keys); j++)
				if (strcmp(PQgetvalue(keys, j, K_ALG), all_algs[a]) == 0 &&
				    !row_retired(keys, j))
					want = 1;
		}
		if (want) {
			rots[nrot].alg = all_algs[a];
			ctl_dkim_newkey_init(&rots[nrot].nk);
			nrot++;
		}
	}
	if (nrot == 0) {
		/* Nothing live (a domain from before DKIM): start with the default. */
		for (a = 0; a < ARRAY_LEN(all_algs); a++)
			if (ctl_dkim_algorithms(c->cfg.dkim_default_algorithm) & (1 << a)) {
				rots[nrot].alg = all_algs[a];
				ctl_dkim_newkey_init(&rots[nrot].nk);
				nrot++;
			}
	}
	for (i = 0; i < nrot; i++)
		if (rotate_one(c, &d, keys, mkey, delay, overlap, &rots[i]) != CTL_OK)
			goto out;
	if ((recs = ctl_dkim_records(c, d.id, d.name, d.mode)) == NULL)
		goto out;
	if (ctl_run(c, "rotating the DKIM key", "COMMIT") == -1)
		goto out;
	rotate_print(c, &d, rots, nrot, delay, recs);
	recs = NULL;
	rc = CTL_OK;
out:
	rollback(c);
	json_decref(recs);
	PQclear(keys);
	for (i = 0; i < nrot; i++)
		ctl_dkim_newkey_free(&rots[i].nk);
	OPENSSL_cleanse(mkey, sizeof(mkey));
	return rc;
}

/* ---- dkim zone -------------------------------------------------------- */

static int dkim_zone(struct ctl *c, int argc, char **argv)
{
	json_t *arr = NULL;
	struct buf value, rdata;
	const char *zone = c->cfg.platform_dkim_zone;
	size_t zn;
	PGresult *r;
	int i;

	if (argc != 2)
		return ctl_usage("dkim zone", "dkim zone takes no arguments");
	if (zone == NULL || *zone == '\0') {
		ctl_error("[platform] dkim_zone is not set: there is no platform DKIM zone");
		return CTL_FAIL;
	}
	zn = strlen(zone);
	if (zone[zn - 1] == '.')
		zn--;
	/*
	 * Keys not signing yet are published ahead of use (that is what the
	 * publish delay is for); retiring ones until their unpublish_at.
	 */
	r = ctl_exec(c, "reading the DKIM keys",
	             "SELECT d.name, k.selector, k.algorithm, k.public_b64, " CTL_SQL_TIME(
	                 "now()") " FROM dkim_keys k JOIN domains d ON d.id = k.domain_id"
	                          " WHERE d.dkim_mode = 'cname' AND k.created_at <= now()"
	                          " AND (k.unpublish_at IS NULL OR k.unpublish_at > now())"
	                          " ORDER BY d.name, k.selector",
	             0, NULL, NULL, NULL);
	if (r == NULL)
		return CTL_FAIL;
	buf_init(&value, (size_t)-1);
	buf_init(&rdata, (size_t)-1);
	if (c->json) {
		arr = json_array();
	} else {
		/* now() of an empty result: ask again rather than guess the clock. */
		PGresult *t = PQntuples(r)
		                  ? NULL
		                  : ctl_exec(c, "reading the time", "SELECT " CTL_SQL_TIME("now()"),
		                             0, NULL, NULL, NULL);

		printf("; DKIM keys in the sendgate platform zone %.*s\n", (int)zn, zone);
		printf("; generated %s by sendgatectl %s: %d record%s\n",
		       PQntuples(r) ? PQgetvalue(r, 0, 4)
		       : t          ? PQgetvalue(t, 0, 0)
		                    : "?",
		       SENDGATE_VERSION, PQntuples(r), PQntuples(r) == 1 ? "" : "s");
		PQclear(t);
	}
	for (i = 0; i < PQntuples(r); i++) {
		char *name = dns_dkim_cname_target(PQgetvalue(r, i, 1), PQgetvalue(r, i, 0), zone);

		buf_reset(&value);
		ctl_dkim_txt_value(PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), &value);
		if (arr) {
			json_array_append_new(
			    arr, json_pack("{s:s, s:s, s:i, s:s, s:s, s:s}", "name", name, "type",
			                   "TXT", "ttl", ZONE_TTL, "value", value.data, "domain",
			                   PQgetvalue(r, i, 0), "selector", PQgetvalue(r, i, 1)));
		} else {
			buf_reset(&rdata);
			ctl_zone_txt_rdata(value.data, &rdata);
			printf("%s. %d IN TXT %s\n", name, ZONE_TTL, rdata.data);
		}
		free(name);
	}
	if (arr)
		ctl_json_print(arr);
	buf_free(&value);
	buf_free(&rdata);
	PQclear(r);
	return CTL_OK;
}

/* ---- dkim import ------------------------------------------------------ */

/* Reads a PEM file of at most PEM_FILE_MAX bytes into out; 0, or -1 (printed). */
static int read_pem_file(const char *path, struct buf *out)
{
	char chunk[4096];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd == -1) {
		ctl_error("%s: %s", path, strerror(errno));
		return -1;
	}
	buf_init(out, PEM_FILE_MAX);
	for (;;) {
		n = read(fd, chunk, sizeof(chunk));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ctl_error("%s: %s", path, strerror(errno));
			break;
		}
		if (n == 0) {
			close(fd);
			OPENSSL_cleanse(chunk, sizeof(chunk));
			return 0;
		}
		if (buf_append(out, chunk, (size_t)n) == -1) {
			ctl_error("%s: too large for a PEM private key (over %d bytes)", path,
			          PEM_FILE_MAX);
			break;
		}
	}
	close(fd);
	OPENSSL_cleanse(chunk, sizeof(chunk));
	if (out->data)
		OPENSSL_cleanse(out->data, out->len);
	buf_free(out);
	return -1;
}

/* Parses and checks the key in path; NULL with the error printed. */
static struct dkim_key *import_read_key(const char *path)
{
	struct dkim_key *k;
	struct buf pem;
	char err[256];

	if (read_pem_file(path, &pem) == -1)
		return NULL;
	k = dkim_key_from_pem(pem.data ? pem.data : "", pem.len, err, sizeof(err));
	if (pem.data)
		OPENSSL_cleanse(pem.data, pem.len);
	buf_free(&pem);
	if (k == NULL) {
		ctl_error("%s: %s", path, err);
		return NULL;
	}
	if (dkim_key_alg(k) == DKIM_ALG_RSA_SHA256 && dkim_key_bits(k) < 2048) {
		ctl_error("%s: a %d-bit RSA key is refused: DKIM RSA keys must have at least 2048 "
		          "bits (receivers distrust shorter ones); import a 2048-bit or longer "
		          "key, or an Ed25519 key",
		          path, dkim_key_bits(k));
		dkim_key_free(k);
		return NULL;
	}
	return k;
}

/*
 * In the caller's transaction: makes room for the imported key on
 * nk->selector of d and ends the key of its algorithm now signing.
 * CTL_OK, or CTL_FAIL with the error printed.
 */
static int import_prepare(struct ctl *c, const struct dom *d, const struct ctl_dkim_newkey *nk,
                          int replace, long long overlap)
{
	char overlap_s[24];
	PGresult *keys, *r;
	int i, row, rc = CTL_FAIL;

	if ((keys = domain_keys(c, d->id)) == NULL)
		return CTL_FAIL;
	row = row_of_selector(keys, nk->selector);
	if (row >= 0 && !replace) {
		ctl_error("selector %s of %s already holds a key (%s, %s); add --replace to "
		          "replace it",
		          nk->selector, d->name, PQgetvalue(keys, row, K_ALG),
		          PQgetvalue(keys, row, K_STATE));
		goto out;
	}
	for (i = 0; i < PQntuples(keys); i++)
		if (i != row && strcmp(PQgetvalue(keys, i, K_ALG), nk->alg) == 0 &&
		    strcmp(PQgetvalue(keys, i, K_STATE), "pending") == 0) {
			ctl_error(
			    "a rotation of the %s key of %s is pending (selector %s signs from "
			    "%s); import after it",
			    nk->alg, d->name, PQgetvalue(keys, i, K_SELECTOR),
			    PQgetvalue(keys, i, K_SIGN_FROM));
			goto out;
		}
	if (row >= 0) {
		const char *params[1] = {PQgetvalue(keys, row, K_ID)};

		r = ctl_exec(c, "replacing the DKIM key", "DELETE FROM dkim_keys WHERE id = $1", 1,
		             params, NULL, NULL);
		if (r == NULL)
			goto out;
		PQclear(r);
	}
	snprintf(overlap_s, sizeof(overlap_s), "%lld", overlap);
	for (i = 0; i < PQntuples(keys); i++)
		if (i != row && strcmp(PQgetvalue(keys, i, K_ALG), nk->alg) == 0 &&
		    strcmp(PQgetvalue(keys, i, K_STATE), "signing") == 0) {
			const char *params[2] = {PQgetvalue(keys, i, K_ID), overlap_s};

			r = ctl_exec(c, "retiring the old DKIM key",
			             "UPDATE dkim_keys SET sign_until = now(),"
			             " unpublish_at = now() + $2::bigint * interval '1 second'"
			             " WHERE id = $1",
			             2, params, NULL, NULL);
			if (r == NULL)
				goto out;
			PQclear(r);
		}
	rc = CTL_OK;
out:
	PQclear(keys);
	return rc;
}

static void import_print(struct ctl *c, const struct dom *d, const struct ctl_dkim_newkey *nk,
                         const char *sign_from, json_t *recs)
{
	json_t *rec = NULL, *e;
	size_t i;

	json_array_foreach(recs, i, e) if (strcmp(json_string_value(json_object_get(e, "selector")),
	                                          nk->selector) == 0) rec = e;
	if (c->json) {
		ctl_json_print(json_pack("{s:s, s:s, s:s, s:i, s:b, s:s, s:O?, s:o}", "domain",
		                         d->name, "selector", nk->selector, "algorithm", nk->alg,
		                         "bits", nk->bits, "imported", 1, "sign_from", sign_from,
		                         "record", rec, "dkim", recs));
		return;
	}
	printf("imported the %s key (%d bits) of %s on selector %s; it signs from %s\n", nk->alg,
	       nk->bits, d->name, nk->selector, sign_from);
	if (rec && strcmp(json_string_value(json_object_get(rec, "record_type")), "CNAME") == 0) {
		printf("selector %s is delegated to the platform's DKIM zone: load 'sendgatectl "
		       "dkim zone' into its DNS server\n",
		       nk->selector);
	} else if (rec) {
		json_t *one = json_array();

		json_array_append(one, rec);
		printf("the customer publishes this record:\n");
		records_print_lines(one, stdout);
		json_decref(one);
	}
	json_decref(recs);
}

static int dkim_import(struct ctl *c, int argc, char **argv)
{
	const char *pos[3], *why = NULL;
	char selector[64];
	long long overlap = c->cfg.dkim_rotation_overlap;
	struct ctl_dkim_newkey nk;
	struct dkim_key *k = NULL;
	unsigned char mkey[32];
	char sign_from[40];
	int npos = 0, replace = 0, j, rc = CTL_USAGE;
	json_t *recs = NULL;
	struct dom d;

	for (j = 2; j < argc; j++) {
		if (strcmp(argv[j], "--replace") == 0) {
			replace = 1;
		} else if (strcmp(argv[j], "--overlap") == 0 && j + 1 < argc) {
			if (duration_opt(argv[j], argv[j + 1], usage_import, &overlap, &rc) == -1)
				return rc;
			j++;
		} else if (argv[j][0] == '-' && argv[j][1] != '\0') {
			return ctl_usage(usage_import,
			                 "unknown option \"%s\" (or its value is missing)",
			                 argv[j]);
		} else if (npos < 3) {
			pos[npos++] = argv[j];
		} else {
			return ctl_usage(usage_import, "too many arguments");
		}
	}
	if (npos != 3)
		return ctl_usage(usage_import,
		                 "dkim import needs a DOMAIN, a SELECTOR and a PEMFILE");
	/* Selectors are DNS labels: case does not matter, so store them in lower case. */
	snprintf(selector, sizeof(selector), "%s", pos[1]);
	str_lower(selector);
	if (strlen(pos[1]) >= sizeof(selector) ||
	    (why = ctl_dkim_selector_problem(selector)) != NULL) {
		ctl_error("invalid selector \"%s\": %s", pos[1],
		          why ? why : "a selector is at most 63 characters");
		return CTL_FAIL;
	}
	ctl_dkim_newkey_init(&nk);
	rc = CTL_FAIL;
	if ((k = import_read_key(pos[2])) == NULL)
		goto out;
	if (ctl_dkim_master_key(c, mkey) == -1)
		goto out;
	snprintf(nk.selector, sizeof(nk.selector), "%s", selector);
	if (ctl_run(c, "importing the DKIM key", "BEGIN") == -1)
		goto out;
	/* Sealed once the domain's stored name is known: the seal binds to it. */
	if (dom_lookup(c, pos[0], 1, &d) == -1 || newkey_fill(&nk, k, d.name, mkey) == -1 ||
	    import_prepare(c, &d, &nk, replace, overlap) != CTL_OK ||
	    ctl_dkim_key_insert(c, d.id, &nk, 0, 1, sign_from) == -1 ||
	    (recs = ctl_dkim_records(c, d.id, d.name, d.mode)) == NULL ||
	    ctl_run(c, "importing the DKIM key", "COMMIT") == -1)
		goto out;
	import_print(c, &d, &nk, sign_from, recs);
	recs = NULL;
	rc = CTL_OK;
out:
	OPENSSL_cleanse(mkey, sizeof(mkey));
	rollback(c);
	json_decref(recs);
	if (k)
		dkim_key_free(k);
	ctl_dkim_newkey_free(&nk);
	return rc;
}

/* ---- dkim reseal ------------------------------------------------------ */

/*
 * 1 when pem is a private key whose public half is public_b64 (the row's
 * p= value), else 0: a v1 blob is bound to nothing, so before binding it
 * to its row, check that it is the key the row publishes.
 */
static int pem_matches_public(const struct buf *pem, const char *public_b64)
{
	struct dkim_key *k;
	struct buf pub;
	char err[256];
	int ok;

	k = dkim_key_from_pem(pem->data ? pem->data : "", pem->len, err, sizeof(err));
	if (k == NULL)
		return 0;
	buf_init(&pub, (size_t)-1);
	ok = dkim_key_public_b64(k, &pub) == 0 && pub.len == strlen(public_b64) &&
	     memcmp(pub.data, public_b64, pub.len) == 0;
	buf_free(&pub);
	dkim_key_free(k);
	return ok;
}

/* Seals pem for domain/selector and stores it in row id. 0, or -1 (printed). */
static int reseal_row(struct ctl *c, const unsigned char mkey[32], const char *id,
                      const char *domain, const char *selector, const struct buf *pem)
{
	struct buf hex;
	const char *params[2];
	PGresult *r = NULL;

	buf_init(&hex, (size_t)-1);
	if (seal_hex(mkey, domain, selector, pem, &hex) == -1) {
		ctl_error("cannot seal the DKIM key of %s selector %s", domain, selector);
	} else {
		params[0] = id;
		params[1] = hex.data;
		r = ctl_exec(c, "storing the resealed DKIM key",
		             "UPDATE dkim_keys SET private_sealed = $2::bytea WHERE id = $1", 2,
		             params, NULL, NULL);
	}
	buf_free(&hex);
	if (r == NULL)
		return -1;
	PQclear(r);
	return 0;
}

/*
 * `dkim reseal`: rewrites every key still sealed in the v1 format (no
 * binding) as v2, bound to its domain and selector. Keys already v2 are
 * left alone, so running it again changes nothing. A key that does not
 * open, or a v1 key that is not the key its row publishes, is reported
 * and left as it is (the exit status is then CTL_FAIL); the others are
 * resealed all the same.
 */
static int dkim_reseal(struct ctl *c, int argc, char **argv)
{
	enum { R_ID, R_DOMAIN, R_SELECTOR, R_SEALED, R_PUBLIC };
	json_t *done = NULL, *failed = NULL;
	unsigned char mkey[32];
	int i, n_v2 = 0, rc = CTL_FAIL;
	PGresult *r = NULL;
	struct buf pem;

	(void)argv;
	if (argc != 2)
		return ctl_usage("dkim reseal", "dkim reseal takes no arguments");
	if (ctl_dkim_master_key(c, mkey) == -1)
		return CTL_FAIL;
	buf_init(&pem, (size_t)-1);
	done = json_array();
	failed = json_array();
	if (ctl_run(c, "resealing the DKIM keys", "BEGIN") == -1)
		goto out;
	r = ctl_exec(
	    c, "reading the DKIM keys",
	    "SELECT k.id, d.name, k.selector, encode(k.private_sealed, 'hex'), k.public_b64"
	    " FROM dkim_keys k JOIN domains d ON d.id = k.domain_id"
	    " ORDER BY d.name, k.selector FOR UPDATE OF k",
	    0, NULL, NULL, NULL);
	if (r == NULL)
		goto out;
	for (i = 0; i < PQntuples(r); i++) {
		const char *domain = PQgetvalue(r, i, R_DOMAIN);
		const char *selector = PQgetvalue(r, i, R_SELECTOR);
		const char *why = NULL;
		int version;

		if (pem.data)
			OPENSSL_cleanse(pem.data, pem.len);
		buf_reset(&pem);
		version =
		    ctl_dkim_unseal_row(mkey, domain, selector, PQgetvalue(r, i, R_SEALED), &pem);
		if (version == 2) {
			n_v2++;
			continue;
		}
		if (version == -1)
			why = "the sealed key does not open under the master key: it was altered, "
			      "or moved here from another domain or selector";
		else if (!pem_matches_public(&pem, PQgetvalue(r, i, R_PUBLIC)))
			why = "the v1 sealed key is not the key this selector publishes (moved "
			      "here from another row?)";
		if (why) {
			ctl_error("%s selector %s: %s; left as it is", domain, selector, why);
			json_array_append_new(failed,
			                      json_pack("{s:s, s:s, s:s}", "domain", domain,
			                                "selector", selector, "error", why));
			continue;
		}
		if (reseal_row(c, mkey, PQgetvalue(r, i, R_ID), domain, selector, &pem) == -1)
			goto out;
		json_array_append_new(
		    done, json_pack("{s:s, s:s}", "domain", domain, "selector", selector));
	}
	if (ctl_run(c, "resealing the DKIM keys", "COMMIT") == -1)
		goto out;
	if (c->json) {
		ctl_json_print(json_pack("{s:i, s:i, s:i, s:O, s:O}", "resealed",
		                         (int)json_array_size(done), "already_v2", n_v2, "failed",
		                         (int)json_array_size(failed), "keys", done, "errors",
		                         failed));
	} else {
		size_t j;
		json_t *e;

		printf("resealed %zu DKIM key%s in the v2 format (bound to domain and selector); "
		       "%d already v2",
		       json_array_size(done), json_array_size(done) == 1 ? "" : "s", n_v2);
		if (json_array_size(failed))
			printf("; %zu left as they are (see above)", json_array_size(failed));
		printf("\n");
		json_array_foreach(done, j, e)
		    printf("  %s selector %s\n", json_string_value(json_object_get(e, "domain")),
		           json_string_value(json_object_get(e, "selector")));
	}
	rc = json_array_size(failed) ? CTL_FAIL : CTL_OK;
out:
	rollback(c);
	OPENSSL_cleanse(mkey, sizeof(mkey));
	if (pem.data)
		OPENSSL_cleanse(pem.data, pem.len);
	buf_free(&pem);
	PQclear(r);
	json_decref(done);
	json_decref(failed);
	return rc;
}

int ctl_cmd_dkim(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage(usage, "dkim needs a subcommand");
	if (strcmp(argv[1], "list") == 0) {
		if (argc != 3)
			return ctl_usage("dkim list DOMAIN", "dkim list takes one DOMAIN");
		return dkim_list(c, argv[2]);
	}
	if (strcmp(argv[1], "rotate") == 0)
		return dkim_rotate(c, argc, argv);
	if (strcmp(argv[1], "zone") == 0)
		return dkim_zone(c, argc, argv);
	if (strcmp(argv[1], "import") == 0)
		return dkim_import(c, argc, argv);
	if (strcmp(argv[1], "reseal") == 0)
		return dkim_reseal(c, argc, argv);
	return ctl_usage(usage, "unknown dkim subcommand \"%s\"", argv[1]);
}
