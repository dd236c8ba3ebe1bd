-- Calls: per-account call settings (do-not-disturb) and call history.
-- Times are milliseconds since the Unix epoch.

CREATE TABLE call_settings (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    dnd        INTEGER NOT NULL DEFAULT 0,
    -- Who still rings while dnd is on: nobody, contacts, favorites.
    allow      TEXT    NOT NULL DEFAULT 'nobody'
);

-- One entry per account and call (two if the account was invited again).
CREATE TABLE call_history (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id        INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    call_id           INTEGER NOT NULL,
    direction         TEXT    NOT NULL,
    video             INTEGER NOT NULL,
    -- JSON list of {account_id, username, display_name}: the other people.
    participants      TEXT    NOT NULL,
    started_at        INTEGER NOT NULL,
    answered_at       INTEGER,
    ended_at          INTEGER NOT NULL,
    outcome           TEXT    NOT NULL,
    device_id         INTEGER,
    -- JSON list of device ids the call was handed over to.
    handed_over_to    TEXT    NOT NULL DEFAULT '[]',
    seen              INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX call_history_by_account ON call_history(account_id, id);
CREATE INDEX call_history_unseen ON call_history(account_id, seen);
