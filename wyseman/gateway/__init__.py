"""The per-process core that no transport owns: sessions by user and channel, request
dispatch, custom actions, key changes, user slots, health and metrics. Imports auth,
db, sql and below; never ws or the application."""
