CREATE UNIQUE INDEX notes_owner_body ON notes (owner, body);
