"""The WebSocket wire: the Autobahn protocol and factory, the site that sniffs request
heads and bounds HTTP, frames, and writing notifications to many sockets. Imports the
gateway, auth, db and below; never the application."""
