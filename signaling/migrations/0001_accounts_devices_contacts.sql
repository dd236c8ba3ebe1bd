-- Accounts, devices, refresh tokens, the address book and contact links.
-- Times are milliseconds since the Unix epoch. Written in the SQL that both
-- SQLite and PostgreSQL accept where possible (see src/store/mod.rs).

CREATE TABLE accounts (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    username          TEXT    NOT NULL UNIQUE,
    display_name      TEXT    NOT NULL,
    password_hash     TEXT    NOT NULL,
    roles             TEXT    NOT NULL DEFAULT 'user',
    disabled          INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    -- Bumped by every change to the account's address book.
    contacts_revision INTEGER NOT NULL DEFAULT 0,
    status_text       TEXT    NOT NULL DEFAULT '',
    last_seen_at      INTEGER
);

CREATE TABLE devices (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind           TEXT    NOT NULL,
    label          TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL,
    -- Set when the device logged out or was revoked; its tokens stop working.
    revoked_at     INTEGER
);
CREATE INDEX devices_by_account ON devices(account_id);

-- Refresh tokens, stored as SHA-256 of the opaque token. A used token keeps
-- its row with rotated_at set, so presenting it again is detected as reuse.
CREATE TABLE refresh_tokens (
    token_hash BLOB    PRIMARY KEY,
    device_id  INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,
    rotated_at INTEGER
);
CREATE INDEX refresh_tokens_by_device ON refresh_tokens(device_id);

-- The address book. A deleted entry stays as a tombstone (deleted = 1, its
-- fields cleared) so that incremental sync can report the deletion.
CREATE TABLE contacts (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id        INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    version           INTEGER NOT NULL,
    revision          INTEGER NOT NULL,
    deleted           INTEGER NOT NULL DEFAULT 0,
    display_name      TEXT    NOT NULL,
    phones            TEXT    NOT NULL DEFAULT '[]',
    emails            TEXT    NOT NULL DEFAULT '[]',
    groups_json       TEXT    NOT NULL DEFAULT '[]',
    linked_account_id INTEGER REFERENCES accounts(id) ON DELETE SET NULL,
    favorite          INTEGER NOT NULL DEFAULT 0,
    notes             TEXT    NOT NULL DEFAULT '',
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE UNIQUE INDEX contacts_by_revision ON contacts(account_id, revision);

-- A request from one account to another to become mutual contacts.
CREATE TABLE contact_requests (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    from_account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    to_account_id   INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    message         TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    UNIQUE (from_account_id, to_account_id)
);
CREATE INDEX contact_requests_to ON contact_requests(to_account_id);

-- Accepted requests: the two accounts see each other's presence.
CREATE TABLE mutual_contacts (
    account_a  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    account_b  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_a, account_b),
    CHECK (account_a < account_b)
);
CREATE INDEX mutual_contacts_by_b ON mutual_contacts(account_b);
