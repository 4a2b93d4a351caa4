"""Credentials (pure): the §13.4 test vector, key locations, dates, query parsing,
channel lists, replays; and the client's key files and tickets."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from twisted.trial.unittest import SynchronousTestCase

from wyseman import keys
from wyseman.protocol import credentials as cred

# PROTOCOL.md §13.4: made by Node 20 WebCrypto.
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


class SignatureTests(SynchronousTestCase):
    def test_vector_message_bytes(self):
        message = cred.signed_message("::ffff:192.0.2.10", None,
                                      "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                                      "2025-05-01T12:00:00.000Z")
        self.assertEqual(message, VECTOR_MESSAGE)

    def test_vector_verifies(self):
        self.assertTrue(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, VECTOR_SIGN))

    def test_tampering_fails(self):
        self.assertFalse(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE + b" ", VECTOR_SIGN))
        flipped = ("B" if VECTOR_SIGN[0] != "B" else "C") + VECTOR_SIGN[1:]
        self.assertFalse(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, flipped))
        self.assertFalse(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, VECTOR_SIGN[:-4]))
        self.assertFalse(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, "***"))
        self.assertFalse(cred.verify_signature(dict(VECTOR_JWK, crv="P-256"), VECTOR_MESSAGE,
                                               VECTOR_SIGN))

    def test_standard_alphabet_and_padding_accepted(self):
        standard = VECTOR_SIGN.replace("-", "+").replace("_", "/") + "=" * (-len(VECTOR_SIGN) % 4)
        self.assertTrue(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, standard))

    def test_key_locations(self):
        for conn_pub in (VECTOR_JWK, {"default": VECTOR_JWK}, {"websocket": VECTOR_JWK},
                         dict(VECTOR_JWK, default={"kty": "EC"}),   # old bare key + new member
                         json.dumps({"default": VECTOR_JWK})):
            self.assertTrue(cred.verify_any(conn_pub, VECTOR_MESSAGE, VECTOR_SIGN), conn_pub)
        for conn_pub in (None, 5, "not json", {"other": VECTOR_JWK}, [VECTOR_JWK]):
            self.assertFalse(cred.verify_any(conn_pub, VECTOR_MESSAGE, VECTOR_SIGN), conn_pub)

    def test_our_signatures_verify(self):
        private = keys.generate_private_jwk()
        sign = keys.sign(private, b"hello")
        self.assertEqual(len(cred.b64decode_lenient(sign)), 132)
        self.assertTrue(cred.verify_signature(keys.public_jwk(private), b"hello", sign))
        self.assertFalse(cred.verify_signature(keys.public_jwk(private), b"hellO", sign))

    def test_signed_message_escapes_like_json_stringify(self):
        message = cred.signed_message('a"\\', "", "\b\f\n\r\t\x01\x7f\u2028😀/", "d")
        self.assertEqual(
            message,
            '{"ip":"a\\"\\\\","cookie":"","userAgent":"\\b\\f\\n\\r\\t\\u0001\x7f\u2028😀/",'
            '"date":"d"}'.encode())


class PublicKeyParamTests(SynchronousTestCase):
    def test_good_pub(self):
        text, jwk = cred.decode_public_jwk(keys.pub_param(VECTOR_JWK))
        self.assertEqual(json.loads(text), VECTOR_JWK)
        self.assertEqual(jwk["crv"], "P-521")

    def test_bad_pubs(self):
        point = dict(VECTOR_JWK, y=VECTOR_JWK["x"])            # not on the curve
        for value in (keys.pub_param(point), keys.pub_param({"kty": "RSA"}),
                      keys.pub_param(keys.generate_private_jwk()),  # private part
                      cred.b64url(b"[1]"), cred.b64url(b"\xff"), "%%%"):
            with self.assertRaises(cred.CredentialError):
                cred.decode_public_jwk(value)


class QueryTests(SynchronousTestCase):
    def test_node_decoding(self):
        self.assertEqual(cred.parse_query("user=a+b&date=2025-05-01T12:00:00.000Z&x"),
                         {"user": "a b", "date": "2025-05-01T12:00:00.000Z", "x": ""})
        self.assertEqual(cred.parse_query("user=%C3%A9"), {"user": "é"})

    def test_repeated_key_refused(self):
        with self.assertRaises(cred.CredentialError):
            cred.parse_query("user=a&user=b")

    def test_base64_leniency(self):
        self.assertEqual(cred.b64decode_lenient("-_8"), b"\xfb\xff")
        self.assertEqual(cred.b64decode_lenient("+/8="), b"\xfb\xff")
        for garbage in ("a b", "ab$c", "a", "====x"):
            with self.assertRaises(cred.CredentialError):
                cred.b64decode_lenient(garbage)

    def test_listen_lists(self):
        def enc(value):
            return cred.b64url(json.dumps(value).encode())
        self.assertEqual(cred.decode_listen(None), ())
        self.assertEqual(cred.decode_listen("WyJ3eXNlbWFuIiwid3lsaWIiXQ"), ("wyseman", "wylib"))
        self.assertEqual(cred.decode_listen(enc("one")), ("one",))
        for bad in ([None], [{}], [1], 5, {"a": 1}, [""], ["x" * 64], ["a"] * 65):
            with self.assertRaises(cred.CredentialError, msg=bad):
                cred.decode_listen(enc(bad))
        with self.assertRaises(cred.CredentialError):
            cred.decode_listen(cred.b64url(b"not json"))


class DateTests(SynchronousTestCase):
    def test_forms(self):
        self.assertEqual(cred.parse_client_date("2025-05-01T12:00:00.000Z"),
                         datetime(2025, 5, 1, 12, tzinfo=UTC))
        self.assertEqual(cred.parse_client_date("2025-05-01T14:00:00+02:00"),
                         datetime(2025, 5, 1, 12, tzinfo=UTC))
        for bad in ("2025-05-01T12:00:00", "May 1 2025", "NaN", "", "2025-13-01T00:00:00Z",
                    "2025-05-01 12:00:00Z"):
            with self.assertRaises(cred.CredentialError, msg=bad):
                cred.parse_client_date(bad)

    def test_window(self):
        now = datetime(2025, 5, 1, 12, tzinfo=UTC)
        self.assertTrue(cred.check_date_window(now - timedelta(seconds=60), now, 60))
        self.assertTrue(cred.check_date_window(now + timedelta(seconds=60), now, 60))
        self.assertFalse(cred.check_date_window(now - timedelta(seconds=60.001), now, 60))
        self.assertTrue(cred.check_date_window(now - timedelta(days=9), now, 0))

    def test_js_date(self):
        moment = datetime(2025, 5, 1, 12, 0, 0, 123999, tzinfo=UTC)
        self.assertEqual(cred.js_date(moment), "2025-05-01T12:00:00.123Z")


class ReplayTests(SynchronousTestCase):
    def test_replay_refused_until_expiry(self):
        cache = cred.ReplayCache(ttl=120)
        self.assertFalse(cache.seen_or_add("u", VECTOR_SIGN, 0))
        self.assertTrue(cache.seen_or_add("u", VECTOR_SIGN, 100))
        self.assertFalse(cache.seen_or_add("other", VECTOR_SIGN, 100))
        self.assertFalse(cache.seen_or_add("u", VECTOR_SIGN, 121))

    def test_other_spelling_is_the_same_signature(self):
        cache = cred.ReplayCache(ttl=120)
        cache.seen_or_add("u", VECTOR_SIGN, 0)
        standard = VECTOR_SIGN.replace("-", "+").replace("_", "/") + "=="
        self.assertTrue(cache.seen_or_add("u", standard, 1))

    def test_memory_bounded(self):
        cache = cred.ReplayCache(ttl=1000, max_entries=10)
        for n in range(100):
            cache.seen_or_add("u", f"sig{n}", n)
        self.assertEqual(len(cache), 10)


class KeyFileTests(SynchronousTestCase):
    def test_round_trip_plain_and_encrypted(self):
        site = keys.Site("erp.example.com", 4100, "alice", keys.generate_private_jwk())
        for passphrase in (None, "secret words"):
            path = self.mktemp()
            keys.save_key_file(path, [site], passphrase)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            self.assertEqual(keys.load_key_file(path, passphrase), [site])
        with self.assertRaises(keys.KeyFileError):
            keys.load_key_file(path, "wrong")
        with self.assertRaises(keys.KeyFileError):
            keys.load_key_file(path)

    def test_encryption_format(self):
        blob = keys.encrypt_json({"a": 1}, "pw")
        self.assertEqual(len(bytes.fromhex(blob["s"])), 8)
        self.assertEqual(len(bytes.fromhex(blob["i"])), 12)
        self.assertEqual(keys.decrypt_json(blob, "pw"), {"a": 1})

    def test_tickets(self):
        ticket = keys.parse_ticket(json.dumps({"ticket": {
            "token": "abc", "expires": "2025-05-01T12:30:00.000Z", "host": "h", "port": 4100,
            "user": "alice"}}))
        self.assertEqual((ticket.token, ticket.host, ticket.port, ticket.user),
                         ("abc", "h", 4100, "alice"))
        link = keys.parse_ticket("https://h:4000/wyatt.html?token=abc&user=alice&host=h&port=4100")
        self.assertEqual((link.token, link.user, link.port), ("abc", "alice", 4100))
        for bad in ("{}", "https://h/connect?user=x", "{nope"):
            with self.assertRaises(keys.KeyFileError):
                keys.parse_ticket(bad)
