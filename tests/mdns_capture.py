"""What a neighbour on another interface hears of mDNS, for tests/test_p2p_mdns.py.

    python -m tests.mdns_capture LISTEN_INTERFACE SEND_INTERFACE_ADDRESS

Run as root inside a private network namespace whose ``LISTEN_INTERFACE`` is the peer
end of a veth pair (both ends in the namespace, so nothing leaves it). Prints
``capturing`` once its packet socket is bound, then counts the mDNS messages (UDP to
port 5353, IPv4 or IPv6) that arrive on ``LISTEN_INTERFACE``. On a line ``stop`` on
stdin (or its end) it sends one marker mDNS response out of the other end (multicast
from ``SEND_INTERFACE_ADDRESS``), waits at most 10 s for it to arrive, and prints
``{"responses": N, "queries": N, "marker": true|false}``: the marker shows that a
response sent out of that interface is seen, so that ``responses`` 0 means none was.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
MDNS_PORT = 5353
MDNS_GROUP = "224.0.0.251"
#: the marker's DNS message id (mDNS responders send 0)
MARKER_ID = 0x7757


def mdns_message(frame: bytes) -> tuple[int, int] | None:
    """(DNS id, flags) of an Ethernet frame carrying UDP to port 5353, else None."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack("!H", frame[12:14])[0]
    packet = frame[14:]
    if ethertype == 0x0800 and len(packet) >= 20:
        proto, header = packet[9], (packet[0] & 0x0F) * 4
    elif ethertype == 0x86DD and len(packet) >= 40:
        proto, header = packet[6], 40
    else:
        return None
    udp = packet[header:]
    if proto != 17 or len(udp) < 8 + 12 or struct.unpack("!H", udp[2:4])[0] != MDNS_PORT:
        return None
    ident, flags = struct.unpack("!HH", udp[8:12])
    return ident, flags


def send_marker(address: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
        out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        # a response (QR, AA) with no records
        out.sendto(struct.pack("!HHHHHH", MARKER_ID, 0x8400, 0, 0, 0, 0),
                   (MDNS_GROUP, MDNS_PORT))


def main(listen: str, send_from: str) -> int:
    capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    capture.bind((listen, 0))
    print("capturing", flush=True)
    counts = {"responses": 0, "queries": 0, "marker": False}
    stdin = sys.stdin.fileno()
    deadline = None
    while deadline is None or time.monotonic() < deadline:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([capture] + ([stdin] if deadline is None else []), [],
                                    [], wait)
        if stdin in ready:
            line = os.read(stdin, 4096)
            if not line or b"stop" in line:
                send_marker(send_from)
                deadline = time.monotonic() + 10
        if capture in ready:
            frame, meta = capture.recvfrom(65535)
            if meta[2] == socket.PACKET_OUTGOING:
                continue
            message = mdns_message(frame)
            if message is None:
                continue
            ident, flags = message
            if ident == MARKER_ID:
                counts["marker"] = True
                break
            counts["responses" if flags & 0x8000 else "queries"] += 1
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
