"""The database at run time, asynchronous: the txpostgres adapter (the only module that
imports txpostgres), pools, read batches, the LISTEN connection, error translation.
Imports sql, errors and config; nothing above."""
