-- kith relay store, SQLite schema version 3.
--
-- The relay is blind: these tables hold only what the Store interface passes in (random ids,
-- public queue keys, padded ciphertext, coarse times). There is deliberately no column for an
-- address, a client, a connection or a log line.
--
-- No global arrival order either: every table that holds more than one row is WITHOUT ROWID
-- and keyed by random ids, so neither a column nor SQLite's implicit rowid counts rows across
-- queues in the order they arrived. (In v1, messages.rowid did: sorted by rowid, a seized file
-- showed which queues' messages alternate, the two queues of one conversation, and which
-- arrive in runs, the member queues of one circle.) Do not add AUTOINCREMENT, a rowid table
-- with one row per message or queue, or a fine-grained time.
--
-- Applied in one transaction by kith.relay.store.sqlite when the file is new. A v1 file is
-- brought here by sqlite_upgrade_v1_to_v2.sql then sqlite_upgrade_v2_to_v3.sql. A later
-- version ships as sqlite_upgrade_v3_to_v4.sql (and so on) and bumps schema_version in the
-- same transaction as its changes; this file never changes once released.

-- A single row: its rowid orders nothing.
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
INSERT INTO schema_version (version) VALUES (3);

-- One row per queue, stored in recipient_id order (random). The two ids are unrelated random
-- values; only this row links them. created_at is rounded down to the minute by the relay.
-- last_seq, msg_count and msg_bytes are kept by the triggers below, so quota checks read one
-- row instead of counting messages, and can never disagree with the messages table.
-- last_used (v3) is the start of the week, in Unix seconds, in which the queue was last
-- created, sent to, read by its subscriber or held by a subscription: never finer than a week
-- (kith.relay.store.base.USE_GRANULE). The sweep deletes queues whose last_used is older than
-- the queue TTL. The triggers below set it on creation and on every stored message.
CREATE TABLE queues (
    recipient_id  BLOB PRIMARY KEY,
    sender_id     BLOB NOT NULL UNIQUE,
    recipient_key BLOB NOT NULL,
    sender_key    BLOB,
    created_at    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    msg_count     INTEGER NOT NULL DEFAULT 0,
    msg_bytes     INTEGER NOT NULL DEFAULT 0,
    last_used     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- expire_queues() finds idle queues without a full scan. Entries are (last_used, recipient_id):
-- within one week they sort by random queue id, so the index orders no more finely than the
-- column itself.
CREATE INDEX queues_by_use ON queues (last_used);

CREATE TRIGGER queues_marked_at_creation AFTER INSERT ON queues
BEGIN
    UPDATE queues
       SET last_used = NEW.created_at - NEW.created_at % 604800
     WHERE recipient_id = NEW.recipient_id;
END;

-- Padded ciphertext waiting for its recipient, stored in (recipient_id, seq) order: by random
-- queue id, then by the queue's own counter. seq is contiguous per queue (1, 2, 3, ...): the
-- writer stores queues.last_seq + 1; it orders one queue's messages and nothing across
-- queues. Deleting the queue deletes its messages.
CREATE TABLE messages (
    recipient_id BLOB NOT NULL REFERENCES queues (recipient_id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    msg_id       BLOB NOT NULL,
    received_at  INTEGER NOT NULL,
    body         BLOB NOT NULL,
    PRIMARY KEY (recipient_id, seq),
    UNIQUE (recipient_id, msg_id)
) WITHOUT ROWID;

-- expire() walks messages oldest first without scanning ciphertext pages. Its entries are
-- (received_at, recipient_id, seq): within one minute (the relay's time granularity) they sort
-- by random queue id, so the index orders no more finely than the received_at column itself.
CREATE INDEX messages_by_age ON messages (received_at);

CREATE TRIGGER messages_counted_in AFTER INSERT ON messages
BEGIN
    UPDATE queues
       SET last_seq = NEW.seq,
           msg_count = msg_count + 1,
           msg_bytes = msg_bytes + length(NEW.body),
           last_used = max(last_used, NEW.received_at - NEW.received_at % 604800)
     WHERE recipient_id = NEW.recipient_id;
END;

CREATE TRIGGER messages_counted_out AFTER DELETE ON messages
BEGIN
    UPDATE queues
       SET msg_count = msg_count - 1,
           msg_bytes = msg_bytes - length(OLD.body)
     WHERE recipient_id = OLD.recipient_id;
END;
