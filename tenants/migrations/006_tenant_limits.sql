-- Per-tenant sending limits, overriding the configuration's defaults
-- ([smtp] tenant_max_connections and tenant_messages_per_minute): NULL
-- uses the default, 0 means no limit for this tenant. The daemon caches
-- them; the tenants trigger of 001 already tells it when they change.

ALTER TABLE tenants
    ADD COLUMN max_connections int CHECK (max_connections >= 0),
    ADD COLUMN max_messages_per_minute int CHECK (max_messages_per_minute >= 0);
