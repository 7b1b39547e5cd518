-- DKIM keys: each domain has two selectors per algorithm so a new key can
-- be published ahead of use. Private keys are sealed (AES-256-GCM) under
-- the master key named in [dkim] master_key_file; the database never sees
-- the master key.

ALTER TABLE domains ADD COLUMN dkim_mode text NOT NULL DEFAULT 'cname'
    CHECK (dkim_mode IN ('cname', 'txt'));

CREATE TABLE dkim_keys (
    id               bigserial PRIMARY KEY,
    domain_id        bigint NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    selector         text NOT NULL CHECK (selector ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    algorithm        text NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
    bits             int,
    private_sealed   bytea NOT NULL,
    public_b64       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Signs from sign_from until sign_until (NULL: no end).
    sign_from        timestamptz NOT NULL DEFAULT now(),
    sign_until       timestamptz,
    -- Stays in the platform's DKIM zone until unpublish_at (NULL: no end).
    unpublish_at     timestamptz,
    imported         boolean NOT NULL DEFAULT false,
    UNIQUE (domain_id, selector)
);
CREATE INDEX dkim_keys_domain ON dkim_keys(domain_id);

CREATE TRIGGER dkim_keys_changed AFTER INSERT OR UPDATE OR DELETE ON dkim_keys
    FOR EACH STATEMENT EXECUTE FUNCTION sendgate_notify_change();
