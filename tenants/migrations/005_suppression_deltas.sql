-- Suppression changes as row deltas. Every hard bounce inserts one
-- suppression; with the statement trigger of 003 each made every daemon
-- and delivery process reload the whole table. Now a statement that adds
-- or removes at most 100 rows sends one NOTIFY per row on the channel
-- sendgate_suppression, a JSON object the store applies to its cache:
--
--   {"op": "add" | "remove", "tenant_id": 7, "address": "a@example.net",
--    "reason": "550 ...", "since": 1700000000, "seq": 3}
--
-- reason is cut to 199 characters (the cache keeps fewer bytes and cuts
-- it further at a character boundary), since is created_at in whole epoch
-- seconds, and seq numbers the trigger runs of the transaction: Postgres
-- drops a NOTIFY identical to an earlier one of the same transaction,
-- and an add, remove, add of the same row must not arrive as add, remove.
-- Larger statements, UPDATE, TRUNCATE, and rows whose payload would come
-- near the 8000-byte NOTIFY limit send the old 'suppressions' notice on
-- sendgate_cache instead, which reloads the whole table.

-- Replacing the trigger locks the table: on a live platform, give up
-- (and let the operator run migrate again) rather than hold every bounce's
-- INSERT behind a long reload query.
SET LOCAL lock_timeout = '5s';

DROP TRIGGER suppressions_changed ON suppressions;

CREATE FUNCTION sendgate_notify_suppressions() RETURNS trigger AS $$
DECLARE
    nrows bigint;
    seq int;
    payloads text[];
BEGIN
    -- changed_rows is the transition table each trigger below declares.
    SELECT count(*) INTO nrows FROM changed_rows;
    IF nrows = 0 THEN
        RETURN NULL;
    END IF;
    IF nrows > 100 THEN
        PERFORM pg_notify('sendgate_cache', 'suppressions');
        RETURN NULL;
    END IF;
    seq := coalesce(nullif(current_setting('sendgate.suppression_seq', true), ''), '0')::int + 1;
    PERFORM set_config('sendgate.suppression_seq', seq::text, true);
    SELECT array_agg(json_build_object(
               'op', CASE TG_OP WHEN 'INSERT' THEN 'add' ELSE 'remove' END,
               'tenant_id', tenant_id,
               'address', address,
               'reason', left(reason, 199),
               'since', extract(epoch FROM created_at)::bigint,
               'seq', seq)::text)
        INTO payloads FROM changed_rows;
    IF (SELECT max(octet_length(p)) FROM unnest(payloads) p) > 7000 THEN
        PERFORM pg_notify('sendgate_cache', 'suppressions');
        RETURN NULL;
    END IF;
    FOR i IN 1 .. array_length(payloads, 1) LOOP
        PERFORM pg_notify('sendgate_suppression', payloads[i]);
    END LOOP;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- Transition tables allow one event per trigger: one each for INSERT and
-- DELETE, naming their rows alike for the one function.
CREATE TRIGGER suppressions_inserted AFTER INSERT ON suppressions
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sendgate_notify_suppressions();
CREATE TRIGGER suppressions_deleted AFTER DELETE ON suppressions
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sendgate_notify_suppressions();
CREATE TRIGGER suppressions_updated AFTER UPDATE OR TRUNCATE ON suppressions
    FOR EACH STATEMENT EXECUTE FUNCTION sendgate_notify_change();
