"""The login decision: credentials, signatures, dates, replays, channel policy and the
refusal of every kind. Imports db and sql and below; never the gateway, ws or the
application."""
