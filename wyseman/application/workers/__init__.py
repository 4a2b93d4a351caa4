"""Several processes on one port: the supervisor, its workers, and routing a user's
sockets to one worker. Part of the application layer; imports the layers below it."""
