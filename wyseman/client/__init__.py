"""The Python client: connections, a reconnecting session, key files and the client
commands. Apart from the server: imports only config, errors and db types."""
