/*
 * fuzz_queue_dsn: libFuzzer harness for the bounce and complaint report
 * reader and the VERP address parser (pure code). Anyone can mail us a
 * report, so every input must parse without a read past its end, and
 * what comes out must hold what callers rely on: NUL-terminated fields
 * without control bytes, at most DSN_MAX_RCPTS recipients, a kind exactly
 * when 0 is returned.
 *
 *   make -C tests/fuzz run FUZZERS=fuzz_queue_dsn FUZZ_SECONDS=60
 * Seeds: tests/fuzz/corpus/fuzz_queue_dsn/.
 */
#include <stdlib.h>
#include <string.h>

#include "queue/queue.h"

static void check_text(const char *s, size_t size)
{
	size_t n = strnlen(s, size);

	if (n == size)
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			abort();
}

static void check_report(int rc, const struct dsn_report *r, const char *err)
{
	if (rc == 0 && r->kind != DSN_DELIVERY && r->kind != DSN_FEEDBACK)
		abort();
	if (rc != 0 && (rc != -1 || r->kind != DSN_UNKNOWN || r->nrcpts != 0 || err[0] == '\0'))
		abort();
	if (r->nrcpts > DSN_MAX_RCPTS)
		abort();
	check_text(r->reporting_mta, sizeof(r->reporting_mta));
	check_text(r->feedback_type, sizeof(r->feedback_type));
	check_text(r->user_agent, sizeof(r->user_agent));
	check_text(r->arf_original_rcpt_to, sizeof(r->arf_original_rcpt_to));
	check_text(r->arf_original_mail_from, sizeof(r->arf_original_mail_from));
	check_text(r->orig_return_path, sizeof(r->orig_return_path));
	check_text(r->orig_message_id, sizeof(r->orig_message_id));
	check_text(r->orig_to, sizeof(r->orig_to));
	for (size_t i = 0; i < r->nrcpts; i++) {
		const struct dsn_rcpt *rc_ = &r->rcpts[i];
		check_text(rc_->final_recipient, sizeof(rc_->final_recipient));
		check_text(rc_->original_recipient, sizeof(rc_->original_recipient));
		check_text(rc_->status, sizeof(rc_->status));
		check_text(rc_->diagnostic, sizeof(rc_->diagnostic));
		check_text(rc_->remote_mta, sizeof(rc_->remote_mta));
		if ((unsigned)rc_->action > DSN_ACTION_EXPANDED)
			abort();
		/* A kept status is a valid one: its class is 2, 4 or 5. */
		if (rc_->status[0] != '\0' && strchr("245", rc_->status[0]) == NULL)
			abort();
		(void)dsn_status_is_hard(rc_->status);
	}
}

/* verp_parse's promises: an id of the right alphabet, an index in range. */
static void check_verp(const char *addr)
{
	char qid[QUEUE_ID_LEN + 1], host[64];
	long idx;

	if (verp_parse(addr, qid, &idx, NULL, NULL, host, sizeof(host)) != 0) {
		if (qid[0] != '\0' || idx != -1 || host[0] != '\0')
			abort();
		return;
	}
	if (!queue_id_valid(qid) || idx < -1 || idx > 99999 || host[0] == '\0')
		abort();
	check_text(host, sizeof(host));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dsn_report *r = malloc(sizeof(*r));
	char err[128], *s;
	int rc;

	if (r == NULL)
		return 0;
	rc = dsn_parse((const char *)data, size, r, err, sizeof(err));
	check_report(rc, r, err);
	if (rc == 0) {
		check_verp(r->orig_return_path);
		check_verp(r->arf_original_mail_from);
	}
	free(r);

	/* The input itself as an address, up to its first NUL. */
	if ((s = malloc(size + 1)) == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	check_verp(s);
	free(s);
	return 0;
}
