"""The composition root: the twistd plugin, ``makeService``, the service tree, listening
endpoints, TLS contexts, SIGHUP, start-up checks, the demo and the command line.
May import every layer below; nothing imports it but the plugin and the entry points."""
