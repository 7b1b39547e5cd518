-- [events] retention deletes the events older than a duration, in batches:
-- a BRIN index finds them without reading the whole table. Events are
-- appended in time order, which is what BRIN needs, and it stays tiny.

CREATE INDEX events_created_at ON events USING brin (created_at);
