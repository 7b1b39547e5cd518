-- DNS verification: when each domain is checked next, what the last check
-- found, and the history of what changed.
--
-- The schedule lives in its own table, not in domains: every UPDATE of
-- domains makes each daemon reload its domain cache (the NOTIFY trigger),
-- and checks run all the time. domains itself changes only when what the
-- daemon caches changes (state, broken_since, return_path_verified,
-- failing_records).

-- The required records that fail, in words, while the domain is broken
-- ("spf acme.example (missing)"); the daemon names them in its 550 reply.
ALTER TABLE domains ADD COLUMN failing_records text;

CREATE TABLE domain_verify (
    domain_id        bigint PRIMARY KEY REFERENCES domains(id) ON DELETE CASCADE,
    next_check_at    timestamptz NOT NULL DEFAULT now(),
    last_checked_at  timestamptz,
    -- dns_check_report_to_json of the last check, and a one-line summary
    -- of its per-record statuses (a history row is written when it changes).
    last_report      jsonb,
    last_summary     text,
    checks           bigint NOT NULL DEFAULT 0
);
CREATE INDEX domain_verify_due ON domain_verify(next_check_at);

INSERT INTO domain_verify (domain_id) SELECT id FROM domains;

-- A new domain is due for its first check at once.
CREATE FUNCTION sendgate_domain_verify_row() RETURNS trigger AS $$
BEGIN
    INSERT INTO domain_verify (domain_id) VALUES (NEW.id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER domains_verify_row AFTER INSERT ON domains
    FOR EACH ROW EXECUTE FUNCTION sendgate_domain_verify_row();

-- One row per check that changed the state or any record's status, and per
-- check an operator asked for.
CREATE TABLE domain_checks (
    id              bigserial PRIMARY KEY,
    domain_id       bigint NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    checked_at      timestamptz NOT NULL DEFAULT now(),
    origin          text NOT NULL CHECK (origin IN ('schedule', 'operator')),
    previous_state  text NOT NULL,
    state           text NOT NULL,
    summary         text NOT NULL,
    report          jsonb NOT NULL
);
CREATE INDEX domain_checks_domain ON domain_checks(domain_id, id);
