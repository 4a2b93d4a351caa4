"""The key-login signature test vector (docs/protocol.md, 4.4 "Key login"), shared by
the credential, key-file, signature and JS interoperability tests."""

# Made by Node 20 WebCrypto (member order as Node exports it).
VECTOR_JWK = {
    "key_ops": ["verify"], "ext": True, "kty": "EC",
    "x": "AN1bf88rD65zYWaeD75DiwcigayWtJHAWlQo_UZBI9aMwKp8MRoOs4W87Lr2KbqYX9qkPO3L-qtZJ2Q32hGkMEQy",
    "y": "AeXofRLMAawtkKFcgrQZXH4ICLwqFs1308A-S_vRU5hlQK44ZWKdXoAJjbqc14rnnLqkQNQ3bG--S0APJxAAkJ_G",
    "crv": "P-521",
}
VECTOR_MESSAGE = (b'{"ip":"::ffff:192.0.2.10","userAgent":"Mozilla/5.0 (X11; Linux x86_64) '
                  b'Firefox/128.0","date":"2025-05-01T12:00:00.000Z"}')
VECTOR_SIGN = ("AbnpSc2c3iV1SmInZvXH_3g4SlALyjvSF9w04qOg62APA2KI8b8cpfvG2VrFm44HgYcOAse9xOVqlOl0"
               "EB1t-jpqAGbHwoijEwwpdl5A_4DxzgDifO_UGHA8wX4xB-K06ltKey5yqK0iE0cPGjRRjz82KyO5Xptj"
               "e6MwZku4iOCNh21v")
# The pub parameter (docs/protocol.md, 4.3 "Ticket login") of that key, as the JS
# client sent it.
VECTOR_PUB = (
    "eyJrZXlfb3BzIjpbInZlcmlmeSJdLCJleHQiOnRydWUsImt0eSI6IkVDIiwieCI6IkFOMWJmODhyRDY1ellXYW"
    "VENzVEaXdjaWdheVd0SkhBV2xRb19VWkJJOWFNd0twOE1Sb09zNFc4N0xyMkticVlYOXFrUE8zTC1xdFpKMlEz"
    "MmhHa01FUXkiLCJ5IjoiQWVYb2ZSTE1BYXd0a0tGY2dyUVpYSDRJQ0x3cUZzMTMwOEEtU192UlU1aGxRSzQ0Wl"
    "dLZFhvQUpqYnFjMTRybm5McWtRTlEzYkctLVMwQVBKeEFBa0pfRyIsImNydiI6IlAtNTIxIn0")
# The order of the P-521 group (for the malleable twin of a signature).
P521_N = int("1" + "F" * 64 + "FA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
             16)
