-- Delivery: IP pools (tenant → pool → source addresses, each with its own
-- HELO name) and the per-tenant suppression list.

CREATE TABLE pools (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- At most one default pool: the one tenants without a pool send from.
CREATE UNIQUE INDEX pools_one_default ON pools(is_default) WHERE is_default;

CREATE TABLE pool_addresses (
    id          bigserial PRIMARY KEY,
    pool_id     bigint NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    address     inet NOT NULL,
    helo        text NOT NULL,
    weight      int NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (pool_id, address)
);

-- Set by DNS verification: envelope senders use the domain's own return
-- path only once its CNAME is verified.
ALTER TABLE domains ADD COLUMN return_path_verified boolean NOT NULL DEFAULT false;

ALTER TABLE tenants ADD COLUMN pool_id bigint REFERENCES pools(id) ON DELETE SET NULL;

CREATE TABLE suppressions (
    tenant_id   bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    address     text NOT NULL CHECK (address = lower(address)),
    reason      text NOT NULL,
    message_id  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, address)
);

CREATE TRIGGER pools_changed AFTER INSERT OR UPDATE OR DELETE ON pools
    FOR EACH STATEMENT EXECUTE FUNCTION sendgate_notify_change();
CREATE TRIGGER pool_addresses_changed AFTER INSERT OR UPDATE OR DELETE ON pool_addresses
    FOR EACH STATEMENT EXECUTE FUNCTION sendgate_notify_change();
CREATE TRIGGER suppressions_changed AFTER INSERT OR UPDATE OR DELETE ON suppressions
    FOR EACH STATEMENT EXECUTE FUNCTION sendgate_notify_change();
