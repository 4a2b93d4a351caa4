"""The libp2p transport (``/wyseman/1.0.0``, docs/protocol.md section 15), served beside
the WebSocket on the same gateway. Only :mod:`wyseman.p2p.node` imports py-libp2p and
trio (the ``wyseman[p2p]`` extra); the framing (:mod:`wyseman.p2p.wire`) and the
protocol (:mod:`wyseman.p2p.server`) are plain Twisted code."""
