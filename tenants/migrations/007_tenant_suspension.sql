-- A tenant the platform has suspended (abuse, a complaint spike, an unpaid
-- bill): the daemon refuses its new messages at MAIL FROM, naming the
-- reason, and holds its queued mail (no delivery attempt, no retry counted)
-- until it is resumed. suspended_at NULL: not suspended. The tenants
-- trigger of 001 tells the daemons when it changes.

ALTER TABLE tenants
    ADD COLUMN suspended_at timestamptz,
    ADD COLUMN suspended_reason text CHECK (length(suspended_reason) <= 200);
