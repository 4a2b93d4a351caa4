"""wyseman.auth.credentials (pure): the Node client's test vector (docs/protocol.md,
4.4 "Key login"), signatures and where keys are stored, the pub and db parameters (D11,
D23), query parsing (docs/protocol.md, 2 "Transport and URL"), dates (D5) and the
window, /clientinfo, and the replay cache (D2)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

from twisted.trial.unittest import SynchronousTestCase

from tests.vectors import P521_N, VECTOR_JWK, VECTOR_MESSAGE, VECTOR_PUB, VECTOR_SIGN
from wyseman.auth import credentials as cred
from wyseman.client import keys


def raw_sign(sign: str) -> bytes:
    return cred.b64decode_lenient(sign)


def enc(value: object) -> str:
    return cred.b64url(json.dumps(value).encode())


class SignatureTests(SynchronousTestCase):
    def test_vector_message_bytes(self):
        message = cred.signed_message("::ffff:192.0.2.10", None,
                                      "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                                      "2025-05-01T12:00:00.000Z")
        self.assertEqual(message, VECTOR_MESSAGE)
        self.assertEqual(len(message), 120)

    def test_vector_verifies(self):
        self.assertEqual(len(VECTOR_SIGN), 176)
        self.assertEqual(len(raw_sign(VECTOR_SIGN)), 132)
        self.assertTrue(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, VECTOR_SIGN))
        self.assertTrue(cred.verify_signature(VECTOR_JWK, bytearray(VECTOR_MESSAGE), VECTOR_SIGN))

    def test_vector_pub_parameter(self):
        text, jwk = cred.decode_public_jwk(VECTOR_PUB)
        self.assertEqual(jwk, VECTOR_JWK)
        self.assertEqual(text, json.dumps(VECTOR_JWK, separators=(",", ":")))
        self.assertEqual(keys.pub_param(VECTOR_JWK), VECTOR_PUB)

    def test_any_changed_message_byte_fails(self):
        for index in (0, 1, 30, 60, 119):
            changed = bytearray(VECTOR_MESSAGE)
            changed[index] ^= 0x01
            self.assertFalse(cred.verify_signature(VECTOR_JWK, bytes(changed), VECTOR_SIGN))
        self.assertFalse(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE + b" ", VECTOR_SIGN))
        self.assertFalse(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE[:-1], VECTOR_SIGN))

    def test_tampered_signatures_fail(self):
        raw = raw_sign(VECTOR_SIGN)
        for index in (0, 65, 66, 131):
            changed = bytearray(raw)
            changed[index] ^= 0x80
            self.assertFalse(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE,
                                                   cred.b64url(bytes(changed))), index)
        for bad in (cred.b64url(raw[:131]),           # short
                    cred.b64url(raw + b"\x00"),       # long
                    cred.b64url(raw[66:] + raw[:66]),  # s‖r
                    cred.b64url(bytes(132)),          # r = s = 0
                    cred.b64url(b"\xff" * 132),       # r, s ≥ n
                    "", "***", "a b", VECTOR_SIGN + "$", VECTOR_SIGN[:-4], VECTOR_SIGN[:-1]):
            self.assertFalse(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, bad), bad)

    def test_der_signature_is_not_accepted(self):
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
        raw = raw_sign(VECTOR_SIGN)
        der = encode_dss_signature(int.from_bytes(raw[:66], "big"), int.from_bytes(raw[66:], "big"))
        self.assertFalse(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, cred.b64url(der)))

    def test_malformed_input_is_false_not_an_exception(self):
        for jwk in (None, [], "text", 5, {}, {"kty": "EC"}, dict(VECTOR_JWK, crv="P-256"),
                    dict(VECTOR_JWK, crv="P-384"), dict(VECTOR_JWK, kty="RSA"),
                    dict(VECTOR_JWK, x=None), dict(VECTOR_JWK, x=5), {"kty": "EC", "crv": "P-521"},
                    dict(VECTOR_JWK, x=VECTOR_JWK["x"][:-2]),       # 65 bytes
                    dict(VECTOR_JWK, x="A" + VECTOR_JWK["x"]),       # not 66 bytes
                    dict(VECTOR_JWK, x=VECTOR_JWK["x"][:-1] + "$"),
                    dict(VECTOR_JWK, y=VECTOR_JWK["x"])):            # not on the curve
            self.assertFalse(cred.verify_signature(jwk, VECTOR_MESSAGE, VECTOR_SIGN), jwk)
        for sign in (None, 5, b"bytes", ["x"]):
            self.assertFalse(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, sign))
        for message in (None, VECTOR_MESSAGE.decode(), 5):
            self.assertFalse(cred.verify_signature(VECTOR_JWK, message, VECTOR_SIGN))

    def test_other_members_ignored(self):
        for jwk in (dict(VECTOR_JWK, key_ops=["sign"]), dict(VECTOR_JWK, alg="ES512"),
                    {k: v for k, v in VECTOR_JWK.items() if k in ("kty", "crv", "x", "y")}):
            self.assertTrue(cred.verify_signature(jwk, VECTOR_MESSAGE, VECTOR_SIGN))

    def test_standard_alphabet_and_padding_accepted(self):
        standard = base64.b64encode(raw_sign(VECTOR_SIGN)).decode()
        self.assertTrue(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, standard))
        spelled = dict(VECTOR_JWK, x=base64.b64encode(cred.b64decode_lenient(VECTOR_JWK["x"]))
                       .decode() + "==")     # extra padding is only padding
        self.assertTrue(cred.verify_signature(spelled, VECTOR_MESSAGE, VECTOR_SIGN))

    def test_malleable_twin_verifies(self):
        # (r, n − s) verifies too: why the replay cache keys on r alone
        raw = raw_sign(VECTOR_SIGN)
        twin = raw[:66] + (P521_N - int.from_bytes(raw[66:], "big")).to_bytes(66, "big")
        self.assertTrue(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, cred.b64url(twin)))

    def test_public_keys_cached(self):
        cred._public_key.cache_clear()
        for _ in range(3):
            self.assertTrue(cred.verify_signature(VECTOR_JWK, VECTOR_MESSAGE, VECTOR_SIGN))
        info = cred._public_key.cache_info()
        self.assertEqual((info.misses, info.hits, info.maxsize),
                         (1, 2, cred.PUBLIC_KEY_CACHE_SIZE))

    def test_our_signatures_verify(self):
        private = keys.generate_private_jwk()
        sign = keys.sign(private, b"hello")
        self.assertEqual(len(raw_sign(sign)), 132)
        self.assertTrue(cred.verify_signature(keys.public_jwk(private), b"hello", sign))
        self.assertTrue(cred.verify_signature(private, b"hello", sign))  # d is ignored
        self.assertFalse(cred.verify_signature(keys.public_jwk(private), b"hellO", sign))
        self.assertFalse(cred.verify_signature(VECTOR_JWK, b"hello", sign))


class CandidateKeyTests(SynchronousTestCase):
    def setUp(self):
        self.other = keys.public_jwk(keys.generate_private_jwk())

    def test_locations_in_order(self):
        bare = VECTOR_JWK
        self.assertEqual(cred.candidate_keys(bare), [bare])
        self.assertEqual(cred.candidate_keys({"default": bare}), [bare])      # wyselib 1.1.0
        self.assertEqual(cred.candidate_keys({"websocket": bare}), [bare])    # its docs
        both = {"default": self.other, "websocket": bare}
        self.assertEqual(cred.candidate_keys(both), [bare, self.other])
        upgraded = dict(bare, default=self.other)     # old bare key + jsonb_set'd default
        self.assertEqual(cred.candidate_keys(upgraded), [self.other, upgraded])

    def test_json_text(self):
        self.assertEqual(cred.candidate_keys(json.dumps({"default": VECTOR_JWK})), [VECTOR_JWK])
        self.assertEqual(cred.candidate_keys(json.dumps(VECTOR_JWK).encode()), [VECTOR_JWK])

    def test_nothing_usable(self):
        for conn_pub in (None, 5, True, "", "not json", "[1]", [VECTOR_JWK],
                         {"other": VECTOR_JWK}, {"default": "text"}, {"websocket": [VECTOR_JWK]},
                         {"default": None}):
            self.assertEqual(cred.candidate_keys(conn_pub), [], conn_pub)
            self.assertFalse(cred.verify_any(conn_pub, VECTOR_MESSAGE, VECTOR_SIGN))

    def test_each_location_verifies(self):
        for conn_pub in (VECTOR_JWK, {"default": VECTOR_JWK}, {"websocket": VECTOR_JWK},
                         {"websocket": self.other, "default": VECTOR_JWK},
                         {"websocket": VECTOR_JWK, "default": self.other},
                         dict(VECTOR_JWK, default=self.other),    # only the bare key fits
                         dict(self.other, default=VECTOR_JWK),    # only default fits
                         dict(VECTOR_JWK, default={"kty": "EC"}),  # broken default: skipped
                         json.dumps({"default": VECTOR_JWK})):
            self.assertTrue(cred.verify_any(conn_pub, VECTOR_MESSAGE, VECTOR_SIGN), conn_pub)
            self.assertEqual(cred.verifying_key(conn_pub, VECTOR_MESSAGE, VECTOR_SIGN)["x"],
                             VECTOR_JWK["x"])
        self.assertFalse(cred.verify_any({"default": self.other}, VECTOR_MESSAGE, VECTOR_SIGN))
        self.assertIsNone(cred.verifying_key(self.other, VECTOR_MESSAGE, VECTOR_SIGN))


class PublicKeyParamTests(SynchronousTestCase):
    def test_good_pubs(self):
        public = keys.public_jwk(keys.generate_private_jwk())
        text, jwk = cred.decode_public_jwk(keys.pub_param(public))
        self.assertEqual(jwk, public)
        self.assertEqual(text, json.dumps(public, separators=(",", ":")))
        # standard alphabet with padding, as another client might send it
        standard = base64.b64encode(json.dumps(public).encode()).decode()
        self.assertEqual(cred.decode_public_jwk(standard)[0], json.dumps(public))
        # text exactly as sent, whitespace and non-ASCII included
        spaced = ('{ "kty": "EC", "crv": "P-521", "x": "' + public["x"] + '", "y": "'
                  + public["y"] + '", "note": "é" }')
        self.assertEqual(cred.decode_public_jwk(cred.b64url(spaced.encode()))[0], spaced)

    def test_bad_pubs(self):
        for value in (
                keys.pub_param(dict(VECTOR_JWK, y=VECTOR_JWK["x"])),   # not on the curve
                keys.pub_param({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
                keys.pub_param(dict(VECTOR_JWK, crv="P-256")),
                keys.pub_param(keys.generate_private_jwk()),           # private part
                keys.pub_param(dict(VECTOR_JWK, x=VECTOR_JWK["x"][:-2])),
                keys.pub_param({k: v for k, v in VECTOR_JWK.items() if k != "y"}),
                cred.b64url(b"[1]"), cred.b64url(b'"text"'), cred.b64url(b"null"),
                cred.b64url(b"\xff\xfe"), cred.b64url(b"{nope"), cred.b64url(b'{"kty":NaN}'),
                "%%%", "", VECTOR_PUB + "!", VECTOR_PUB[:-1]):
            with self.assertRaises(cred.CredentialError, msg=value):
                cred.decode_public_jwk(value)

    def test_reason_is_short_text(self):
        with self.assertRaises(cred.CredentialError) as caught:
            cred.decode_public_jwk(keys.pub_param(keys.generate_private_jwk()))
        self.assertEqual(caught.exception.reason, "pub: contains a private key")
        self.assertIsInstance(caught.exception, ValueError)


class QueryTests(SynchronousTestCase):
    def test_node_decoding(self):
        self.assertEqual(cred.parse_query("user=a+b&date=2025-05-01T12:00:00.000Z&x"),
                         {"user": "a b", "date": "2025-05-01T12:00:00.000Z", "x": ""})
        self.assertEqual(cred.parse_query("user=%C3%A9&a%20b=c%2Bd"), {"user": "é", "a b": "c+d"})
        self.assertEqual(cred.parse_query("a=&=v&&b=1=2"), {"a": "", "": "v", "b": "1=2"})
        self.assertEqual(cred.parse_query("a=%zz%4"), {"a": "%zz%4"})     # left as it is
        self.assertEqual(cred.parse_query("a=1;b=2"), {"a": "1;b=2"})     # only & separates
        self.assertEqual(cred.parse_query(""), {})

    def test_spec_urls(self):
        sign = "A" * 176
        query = (f"user=alice&db=WyJ3eXNlbWFuIiwid3lsaWIiXQ&sign={sign}"
                 "&date=2025-05-01T12:00:00.000Z")
        self.assertEqual(cred.parse_query(query), {
            "user": "alice", "db": "WyJ3eXNlbWFuIiwid3lsaWIiXQ", "sign": sign,
            "date": "2025-05-01T12:00:00.000Z"})
        ticket = cred.parse_query(
            f"user=alice&token=6f1dc2e0a9b34d7e8c5f0b1a2d3e4f56&pub={VECTOR_PUB}")
        self.assertEqual(ticket["pub"], VECTOR_PUB)

    def test_refused(self):
        for query in ("user=a&user=b", "user=a&user=a", "x&x", "user=a&token=t&user=a",
                      "user=%ff",                                   # not UTF-8
                      "&".join(f"k{n}=v" for n in range(cred.MAX_QUERY_FIELDS + 1)),
                      "user=" + "a" * cred.MAX_QUERY_BYTES):
            with self.assertRaises(cred.CredentialError, msg=query[:40]):
                cred.parse_query(query)

    def test_repeated_key_reason(self):
        with self.assertRaises(cred.CredentialError) as caught:
            cred.parse_query("user=a&user=b")
        self.assertIn("repeated", caught.exception.reason)


class Base64Tests(SynchronousTestCase):
    def test_alphabets_and_padding(self):
        for text in ("-_8", "+/8", "+_8", "-/8=", "-_8="):
            self.assertEqual(cred.b64decode_lenient(text), b"\xfb\xff", text)
        self.assertEqual(cred.b64decode_lenient(""), b"")
        self.assertEqual(cred.b64decode_lenient("YQ"), b"a")
        self.assertEqual(cred.b64decode_lenient("YQ=="), b"a")
        self.assertEqual(cred.b64decode_lenient("YQ="), b"a")   # padding optional, any amount

    def test_garbage_refused(self):
        for garbage in ("a b", "ab$c", "YQ\n", " YQ", "Y.Q", "Y%Q", "Y=Q", "YQ===", "a",
                        "abcde", "é", "YQ\x00"):
            with self.assertRaises(cred.CredentialError, msg=repr(garbage)):
                cred.b64decode_lenient(garbage)
        for value in (None, 5, b"YQ"):
            with self.assertRaises(cred.CredentialError):
                cred.b64decode_lenient(value)

    def test_b64url(self):
        self.assertEqual(cred.b64url(b"\xfb\xff"), "-_8")
        self.assertEqual(cred.b64url(b"a"), "YQ")


class ListenTests(SynchronousTestCase):
    def test_good(self):
        self.assertEqual(cred.decode_listen(None), ())
        self.assertEqual(cred.decode_listen(""), ())
        self.assertEqual(cred.decode_listen("WyJ3eXNlbWFuIiwid3lsaWIiXQ"), ("wyseman", "wylib"))
        self.assertEqual(cred.decode_listen(enc("one")), ("one",))           # a bare string
        self.assertEqual(cred.decode_listen(enc([])), ())
        self.assertEqual(cred.decode_listen(enc(["a", "b", "a"])), ("a", "b"))
        self.assertEqual(cred.decode_listen(enc(["Mixed Case", "é" * 31])),
                         ("Mixed Case", "é" * 31))
        self.assertEqual(cred.decode_listen(enc(["x" * 63])), ("x" * 63,))
        self.assertEqual(len(cred.decode_listen(enc([f"c{n}" for n in range(64)]))), 64)
        padded = base64.b64encode(b'["wyseman","wylib"]').decode()
        self.assertEqual(cred.decode_listen(padded), ("wyseman", "wylib"))

    def test_refused_before_accepting(self):  # D11
        for bad in ([None], [{}], [1], [True], [["a"]], ["a", None], 5, 1.5, True, None,
                    {"a": 1}, [""], ["x" * 64], ["é" * 32], ["a\x00b"],
                    [f"c{n}" for n in range(65)]):
            with self.assertRaises(cred.CredentialError, msg=bad):
                cred.decode_listen(enc(bad))
        for raw in (b"not json", b"\xff\xfe", b"[NaN]", b'["a",]', b'["\\ud800"]', b"[" * 5000):
            with self.assertRaises(cred.CredentialError, msg=raw[:20]):
                cred.decode_listen(cred.b64url(raw))
        for text in ("W$", "WyJhIl0 ", "a"):
            with self.assertRaises(cred.CredentialError, msg=text):
                cred.decode_listen(text)


class DateTests(SynchronousTestCase):
    NOON = datetime(2025, 5, 1, 12, tzinfo=UTC)

    def test_good_forms(self):
        for text, expected in (
                ("2025-05-01T12:00:00.000Z", self.NOON),                  # Date#toJSON
                ("2025-05-01T12:00:00Z", self.NOON),
                ("2025-05-01T12:00:00.5Z", self.NOON + timedelta(milliseconds=500)),
                ("2025-05-01T12:00:00.123456Z", self.NOON + timedelta(microseconds=123456)),
                ("2025-05-01T14:00:00+02:00", self.NOON),
                ("2025-05-01T06:30:00.000-05:30", self.NOON),
                ("2025-05-01T12:00:00+00:00", self.NOON),
                ("2024-02-29T12:00:00Z", datetime(2024, 2, 29, 12, tzinfo=UTC))):
            parsed = cred.parse_client_date(text)
            self.assertEqual(parsed, expected, text)
            self.assertEqual(parsed.utcoffset(), timedelta(0))

    def test_refused_forms(self):  # D5: JS reads these as NaN or as local time
        for bad in ("2025-05-01T12:00:00", "2025-05-01T12:00:00.000", "2025-05-01",
                    "2025-05-01T12:00Z", "2025-05-01 12:00:00Z", "2025-05-01t12:00:00z",
                    "2025-05-01T12:00:00.000z", "2025-05-01T12:00:00+0200",
                    "2025-05-01T12:00:00+02", "2025-05-01T12:00:00.1234567Z",
                    "2025-05-01T12:00:00.Z", "+002025-05-01T12:00:00Z", "May 1 2025",
                    "Thu, 01 May 2025 12:00:00 GMT", "1746100800000", "NaN", "", " ",
                    "2025-13-01T00:00:00Z", "2025-02-30T00:00:00Z", "2025-05-01T24:00:00Z",
                    "2025-05-01T12:60:00Z", "2025-05-01T12:00:00+25:00",
                    "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59",   # out of range
                    "٢٠٢٥-05-01T12:00:00Z",                                # non-ASCII digits
                    "2025-05-01T12:00:00.000Z\n", " 2025-05-01T12:00:00.000Z"):
            with self.assertRaises(cred.CredentialError, msg=repr(bad)):
                cred.parse_client_date(bad)
        for value in (None, 1746100800, b"2025-05-01T12:00:00Z"):
            with self.assertRaises(cred.CredentialError):
                cred.parse_client_date(value)

    def test_window_edges(self):
        now = self.NOON
        self.assertTrue(cred.check_date_window(now, now, 60))
        self.assertTrue(cred.check_date_window(now - timedelta(seconds=60), now, 60))  # == max
        self.assertTrue(cred.check_date_window(now + timedelta(seconds=60), now, 60))  # future
        self.assertFalse(cred.check_date_window(now - timedelta(seconds=60.001), now, 60))
        self.assertFalse(cred.check_date_window(now + timedelta(seconds=60.001), now, 60))
        self.assertTrue(cred.check_date_window(now - timedelta(seconds=2), now, 2.0))  # wyclif
        self.assertFalse(cred.check_date_window(now - timedelta(milliseconds=2001), now, 2.0))

    def test_window_disabled_and_negative(self):
        self.assertTrue(cred.check_date_window(self.NOON - timedelta(days=9000), self.NOON, 0))
        self.assertFalse(cred.check_date_window(self.NOON, self.NOON, -1))

    def test_window_across_zones(self):
        other = self.NOON.astimezone(timezone(timedelta(hours=-7)))
        self.assertTrue(cred.check_date_window(other, self.NOON, 0.001))
        parsed = cred.parse_client_date("2025-05-01T13:00:59.000+01:00")
        self.assertTrue(cred.check_date_window(parsed, self.NOON, 60))
        self.assertFalse(cred.check_date_window(parsed, self.NOON, 58))

    def test_js_date(self):
        moment = datetime(2025, 5, 1, 12, 0, 0, 123999, tzinfo=UTC)
        self.assertEqual(cred.js_date(moment), "2025-05-01T12:00:00.123Z")  # truncated
        east = datetime(2025, 5, 1, 14, 0, 0, 7000, tzinfo=timezone(timedelta(hours=2)))
        self.assertEqual(cred.js_date(east), "2025-05-01T12:00:00.007Z")
        self.assertEqual(cred.parse_client_date(cred.js_date(moment)),
                         moment.replace(microsecond=123000))


class ClientInfoTests(SynchronousTestCase):
    NOW = datetime(2025, 5, 1, 12, 0, 0, 987654, tzinfo=UTC)

    def test_members_in_order(self):
        body = cred.clientinfo_body("::ffff:192.0.2.10", "203.0.113.5", "a=1; b=2", "UA/1",
                                    self.NOW)
        self.assertEqual(body, b'{"ip":"::ffff:192.0.2.10","real":"203.0.113.5",'
                               b'"cookie":"a=1; b=2","userAgent":"UA/1",'
                               b'"date":"2025-05-01T12:00:00.987Z"}')
        self.assertEqual(list(json.loads(body)), ["ip", "real", "cookie", "userAgent", "date"])

    def test_absent_omitted_empty_kept(self):
        body = cred.clientinfo_body("::1", None, "", None, self.NOW)
        self.assertEqual(body, b'{"ip":"::1","cookie":"","date":"2025-05-01T12:00:00.987Z"}')

    def test_signed_message_from_clientinfo(self):
        # what the client signs is /clientinfo without `real`, in the same order
        info = json.loads(cred.clientinfo_body("::ffff:10.0.0.1", "x", None, "UA", self.NOW))
        self.assertEqual(
            cred.signed_message(info["ip"], info.get("cookie"), info["userAgent"], info["date"]),
            json.dumps({k: info[k] for k in ("ip", "userAgent", "date")},
                       separators=(",", ":")).encode())

    def test_latin1_header_bytes(self):
        # Node decodes header bytes as Latin-1: é arrives as "Ã©" and is written as UTF-8
        agent = "é".encode().decode("latin-1")
        body = cred.clientinfo_body("::1", None, None, agent, self.NOW)
        self.assertIn('"userAgent":"Ã©"'.encode(), body)

    def test_render_peer_ip(self):
        self.assertEqual(cred.render_peer_ip("192.0.2.10", False), "::ffff:192.0.2.10")
        self.assertEqual(cred.render_peer_ip("192.0.2.10", False, "node"), "::ffff:192.0.2.10")
        self.assertEqual(cred.render_peer_ip("::ffff:192.0.2.10", True), "::ffff:192.0.2.10")
        self.assertEqual(cred.render_peer_ip("2001:db8::1", True), "2001:db8::1")
        self.assertEqual(cred.render_peer_ip("::1", True), "::1")
        self.assertEqual(cred.render_peer_ip("192.0.2.10", False, "plain"), "192.0.2.10")
        self.assertEqual(cred.render_peer_ip("::ffff:192.0.2.10", True, "plain"), "192.0.2.10")
        self.assertEqual(cred.render_peer_ip("::FFFF:192.0.2.10", True, "plain"), "192.0.2.10")
        self.assertEqual(cred.render_peer_ip("2001:db8::1", True, "plain"), "2001:db8::1")
        with self.assertRaises(ValueError):
            cred.render_peer_ip("192.0.2.10", False, "other")


class SignedMessageTests(SynchronousTestCase):
    def test_absent_omitted_empty_kept(self):
        self.assertEqual(cred.signed_message("ip", None, None, "d"), b'{"ip":"ip","date":"d"}')
        self.assertEqual(cred.signed_message("ip", "", "", "d"),
                         b'{"ip":"ip","cookie":"","userAgent":"","date":"d"}')

    def test_escapes_like_json_stringify(self):
        message = cred.signed_message('a"\\', "", "\b\f\n\r\t\x01\x1f\x7f\u2028\u2029😀/é", "d")
        self.assertEqual(
            message,
            '{"ip":"a\\"\\\\","cookie":"","userAgent":"\\b\\f\\n\\r\\t\\u0001\\u001f'
            '\x7f\u2028\u2029😀/é","date":"d"}'.encode())

    def test_lone_surrogates_escaped_as_js_does(self):
        self.assertEqual(cred.signed_message("ip", "\ud800", "x\udfffy", "d"),
                         b'{"ip":"ip","cookie":"\\ud800","userAgent":"x\\udfffy","date":"d"}')


class ReplayTests(SynchronousTestCase):
    def test_replay_refused_until_expiry(self):
        cache = cred.ReplayCache(ttl=120)
        self.assertFalse(cache.seen_or_add("u", VECTOR_SIGN, 0))
        self.assertTrue(cache.seen_or_add("u", VECTOR_SIGN, 100))
        self.assertFalse(cache.seen_or_add("other", VECTOR_SIGN, 100))
        self.assertTrue(cache.seen_or_add("u", VECTOR_SIGN, 120))   # exactly ttl: still known
        self.assertFalse(cache.seen_or_add("u", VECTOR_SIGN, 120.001))

    def test_for_window(self):
        self.assertEqual(cred.ReplayCache.for_window(60).ttl, 120)
        self.assertEqual(cred.ReplayCache.for_window(2.0).ttl, 4.0)
        self.assertEqual(cred.ReplayCache.for_window(0).ttl, 3600)
        self.assertEqual(cred.ReplayCache.for_window(0, unbounded_ttl=10).ttl, 10)

    def test_covers_the_whole_window(self):
        # signed at d, accepted at d − W (earliest), still inside the window at d + W
        window = 60
        cache = cred.ReplayCache.for_window(window)
        self.assertFalse(cache.seen_or_add("u", VECTOR_SIGN, 1000 - window))
        self.assertTrue(cache.seen_or_add("u", VECTOR_SIGN, 1000 + window))

    def test_other_spellings_are_the_same_signature(self):
        cache = cred.ReplayCache(ttl=120)
        cache.seen_or_add("u", VECTOR_SIGN, 0)
        raw = raw_sign(VECTOR_SIGN)
        self.assertTrue(cache.seen_or_add("u", base64.b64encode(raw).decode(), 1))
        twin = raw[:66] + (P521_N - int.from_bytes(raw[66:], "big")).to_bytes(66, "big")
        self.assertTrue(cache.seen_or_add("u", cred.b64url(twin), 1))
        self.assertEqual(len(cache), 1)

    def test_garbage_signatures_still_keyed(self):
        cache = cred.ReplayCache(ttl=10)
        self.assertFalse(cache.seen_or_add("u", "not base64!", 0))
        self.assertTrue(cache.seen_or_add("u", "not base64!", 1))

    def test_full_cache_refuses_rather_than_forgets(self):
        cache = cred.ReplayCache(ttl=100, max_entries=3)
        for n in range(3):
            self.assertFalse(cache.seen_or_add("u", f"sig{n}", n))
        self.assertTrue(cache.full)
        self.assertTrue(cache.seen_or_add("u", "sig3", 5))     # refused: full
        self.assertEqual(cache.full_refusals, 1)
        self.assertTrue(cache.seen_or_add("u", "sig0", 5))     # old ones still remembered
        self.assertEqual(len(cache), 3)
        # once the oldest have expired there is room again, expired entries go first
        self.assertFalse(cache.seen_or_add("u", "sig3", 101.5))   # sig0, sig1 expired
        self.assertFalse(cache.seen_or_add("u", "sig0", 101.5))
        self.assertTrue(cache.seen_or_add("u", "sig2", 101.5))    # still remembered
        self.assertTrue(cache.seen_or_add("u", "sig4", 101.5))    # full again
        self.assertEqual(len(cache), 3)

    def test_memory_bounded(self):
        cache = cred.ReplayCache(ttl=1000, max_entries=10)
        for n in range(100):
            cache.seen_or_add("u", f"sig{n}", n)
        self.assertEqual(len(cache), 10)
        self.assertEqual(cache.full_refusals, 90)
        cache.expire(5000)
        self.assertEqual(len(cache), 0)

    def test_bad_parameters(self):
        for ttl, size in ((0, 10), (-1, 10), (10, 0)):
            with self.assertRaises(ValueError):
                cred.ReplayCache(ttl, size)
