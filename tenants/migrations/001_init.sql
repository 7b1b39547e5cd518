-- sendgate control plane: tenants, their SMTP credentials, their sending
-- domains, and the event log. Applied by `sendgatectl migrate`.

CREATE TABLE tenants (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE
                CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Platform-generated secrets: only the SHA-256 of the secret is kept.
CREATE TABLE credentials (
    id             bigserial PRIMARY KEY,
    tenant_id      bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    username       text NOT NULL UNIQUE,
    secret_sha256  bytea NOT NULL CHECK (length(secret_sha256) = 32),
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);
CREATE INDEX credentials_tenant ON credentials(tenant_id);

-- A domain belongs to one tenant. It is sendable when DNS verified it
-- (state verified, or broken within the grace period) or an operator
-- vouched for it by hand.
CREATE TABLE domains (
    id                 bigserial PRIMARY KEY,
    tenant_id          bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name               text NOT NULL UNIQUE CHECK (name = lower(name)),
    state              text NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'partially_verified', 'verified', 'broken')),
    operator_verified  boolean NOT NULL DEFAULT false,
    operator_note      text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    state_changed_at   timestamptz NOT NULL DEFAULT now(),
    broken_since       timestamptz
);
CREATE INDEX domains_tenant ON domains(tenant_id);

CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    type        text NOT NULL,
    tenant_id   bigint REFERENCES tenants(id) ON DELETE SET NULL,
    message_id  text,
    data        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_tenant ON events(tenant_id, id);
CREATE INDEX events_message ON events(message_id) WHERE message_id IS NOT NULL;

-- The daemon caches credentials and domains; any change tells it so.
CREATE FUNCTION sendgate_notify_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('sendgate_cache', TG_TABLE_NAME);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER credentials_changed AFTER INSERT OR UPDATE OR DELETE ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION sendgate_notify_change();
CREATE TRIGGER domains_changed AFTER INSERT OR UPDATE OR DELETE ON domains
    FOR EACH STATEMENT EXECUTE FUNCTION sendgate_notify_change();
CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION sendgate_notify_change();
