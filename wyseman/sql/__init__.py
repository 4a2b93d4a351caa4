"""Requests into SQL, pure: no I/O, no database driver. Imports only errors."""
