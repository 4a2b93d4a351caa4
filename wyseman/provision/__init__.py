"""Setting a database up, blocking and outside the reactor: the bootstrap schema and its
SQL, users and tickets, the embedded PostgreSQL cluster. Imports db and below."""
