-- kith relay store, SQLite schema version 1.
--
-- The relay is blind: these tables hold only what the Store interface passes in (random ids,
-- public queue keys, padded ciphertext, coarse times). There is deliberately no column for an
-- address, a client, a connection or a log line.
--
-- Applied in one transaction by kith.relay.store.sqlite when the file is new. A later version
-- ships as sqlite_upgrade_v1_to_v2.sql (and so on) and bumps schema_version in the same
-- transaction as its changes; this file never changes once released.

CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
INSERT INTO schema_version (version) VALUES (1);

-- One row per queue. The two ids are unrelated random values; only this row links them.
-- last_seq, msg_count and msg_bytes are kept by the triggers below, so quota checks read one
-- row instead of counting messages, and can never disagree with the messages table.
CREATE TABLE queues (
    recipient_id  BLOB PRIMARY KEY,
    sender_id     BLOB NOT NULL UNIQUE,
    recipient_key BLOB NOT NULL,
    sender_key    BLOB,
    created_at    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    msg_count     INTEGER NOT NULL DEFAULT 0,
    msg_bytes     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Padded ciphertext waiting for its recipient. seq is contiguous per queue (1, 2, 3, ...):
-- the writer stores queues.last_seq + 1. Deleting the queue deletes its messages.
CREATE TABLE messages (
    recipient_id BLOB NOT NULL REFERENCES queues (recipient_id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    msg_id       BLOB NOT NULL,
    received_at  INTEGER NOT NULL,
    body         BLOB NOT NULL,
    PRIMARY KEY (recipient_id, seq),
    UNIQUE (recipient_id, msg_id)
);

-- expire() walks messages oldest first without scanning ciphertext pages.
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
