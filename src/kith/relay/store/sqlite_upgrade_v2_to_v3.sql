-- kith relay store, SQLite upgrade from schema version 2 to 3.
--
-- v3 adds queues.last_used, the week in which a queue was last used, so that the relay can
-- delete queues nobody has used for longer than the queue TTL (see sqlite_schema_v3.sql). v2
-- recorded no use at all, so every existing queue is given the week of the upgrade: each gets
-- a full queue TTL from now, and an active one is marked again the next time it is used.
-- Taking created_at instead would delete, at the first sweep, every old queue whose owner
-- happens to be offline that day.
--
-- Run by kith.relay.store.sqlite inside one BEGIN IMMEDIATE transaction. The
-- messages_counted_in trigger is replaced because it now also marks the queue used.

ALTER TABLE queues ADD COLUMN last_used INTEGER NOT NULL DEFAULT 0;

UPDATE queues
   SET last_used = CAST(strftime('%s', 'now') AS INTEGER)
                   - CAST(strftime('%s', 'now') AS INTEGER) % 604800;

CREATE INDEX queues_by_use ON queues (last_used);

CREATE TRIGGER queues_marked_at_creation AFTER INSERT ON queues
BEGIN
    UPDATE queues
       SET last_used = NEW.created_at - NEW.created_at % 604800
     WHERE recipient_id = NEW.recipient_id;
END;

DROP TRIGGER messages_counted_in;

CREATE TRIGGER messages_counted_in AFTER INSERT ON messages
BEGIN
    UPDATE queues
       SET last_seq = NEW.seq,
           msg_count = msg_count + 1,
           msg_bytes = msg_bytes + length(NEW.body),
           last_used = max(last_used, NEW.received_at - NEW.received_at % 604800)
     WHERE recipient_id = NEW.recipient_id;
END;

UPDATE schema_version SET version = 3;
