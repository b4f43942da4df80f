-- kith relay store, SQLite upgrade from schema version 1 to 2.
--
-- v1 stored messages in an ordinary rowid table, whose rowid counted messages across all
-- queues in arrival order. v2 stores them WITHOUT ROWID, in (recipient_id, seq) order (see
-- sqlite_schema_v2.sql). SQLite cannot change a table's kind in place, so this copies the
-- messages into a new table, drops the old one and gives the new one its name.
--
-- Run by kith.relay.store.sqlite inside one BEGIN IMMEDIATE transaction, with foreign_keys
-- and secure_delete on: the pages of the dropped table are zeroed in the database file, and
-- dropping a child table checks no constraint and fires no trigger, so the queues' counters
-- stay as they are (the copied rows are the same rows). Triggers are created only after the
-- copy, for the same reason.

CREATE TABLE messages_v2 (
    recipient_id BLOB NOT NULL REFERENCES queues (recipient_id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    msg_id       BLOB NOT NULL,
    received_at  INTEGER NOT NULL,
    body         BLOB NOT NULL,
    PRIMARY KEY (recipient_id, seq),
    UNIQUE (recipient_id, msg_id)
) WITHOUT ROWID;

INSERT INTO messages_v2 (recipient_id, seq, msg_id, received_at, body)
    SELECT recipient_id, seq, msg_id, received_at, body
      FROM messages
     ORDER BY recipient_id, seq;

DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;

CREATE INDEX messages_by_age ON messages (received_at);

CREATE TRIGGER messages_counted_in AFTER INSERT ON messages
BEGIN
    UPDATE queues
       SET last_seq = NEW.seq,
           msg_count = msg_count + 1,
           msg_bytes = msg_bytes + length(NEW.body)
     WHERE recipient_id = NEW.recipient_id;
END;

CREATE TRIGGER messages_counted_out AFTER DELETE ON messages
BEGIN
    UPDATE queues
       SET msg_count = msg_count - 1,
           msg_bytes = msg_bytes - length(OLD.body)
     WHERE recipient_id = OLD.recipient_id;
END;

UPDATE schema_version SET version = 2;
