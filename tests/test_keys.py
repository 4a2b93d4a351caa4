"""wyseman.client.keys: WebCrypto-shaped key pairs and signatures, URL parameters, key-file
encryption (wyseman lib/encrypt.js), key files (wylib export) and tickets
(docs/protocol.md, 4.3 "Ticket login")."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from unittest import mock

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SynchronousTestCase

from wyseman.auth import credentials as cred
from wyseman.client import keys

# Made by Node 20 WebCrypto (tests/js/crypto_vectors.js, op sign) for these tests.
NODE_PRIVATE = {
    "key_ops": ["sign"], "ext": True, "kty": "EC",
    "x": "ABRRSJ-b15s25OMzj8kiqo0ouqQZ4ott5KS-b25xqRuggrRDjV_flBhD8uVEoSL_NUrtOne52B9jg78TN3DrZ-0G",
    "y": "AAU7zoBxSrVjygKq8zu3tVWRms-1Jk-sB8bOc_XaczssK_VPj2wFQgH_wCSMt5WzPZtjsdy1Ta5JbEijzoW0BNJy",
    "crv": "P-521",
    "d": "ACgUvVugKC5XmVeCYss_yMcTKc3zUYkgqTYR0dG3JyTjC6NAN-9yQr_1AaIvGYSAsAnXcODR8NaFOr_L1HB0_PFf",
}
NODE_PUBLIC = {"key_ops": ["verify"], "ext": True, "kty": "EC", "x": NODE_PRIVATE["x"],
               "y": NODE_PRIVATE["y"], "crv": "P-521"}
NODE_MESSAGE = b"wyseman key vector"
NODE_SIGN = ("AaLzclKiKr1IHxO89B7emEFloG0kms_i92tYQeUbGtnOpcWE30xGLWe1kYk5RlPauYvjG9PLg3UZyy_m"
             "d2whlGPbAYqbTIp0labqW69rPSwFGUXZoY-cQiLg5pNGpEq9IuckBkTZPXW2-pJXTqywZGRfSEFwpPUc"
             "WHui5JcerAT7k5Cm")
# Made by wyseman 1.1.13 lib/encrypt.js in Node 20 (crypto_vectors.js, op encrypt).
NODE_PASSWORD = "pass wörd"
NODE_PLAIN = {"login": {"host": "erp.example.com", "port": 4100, "user": "alice",
                        "key": {"kty": "EC"}}}
NODE_BLOB = {"s": "da9b787acd290290", "i": "988852a3147aec7c0664b43d",
             "d": "ZYxAru6ZC115UmfpYX9H51sarFN9yzVFnWwf9JrxRnXPR4tvnHS20SXBrKmG7ctoYuE9PKyZmQA2VF"
                  "IPufEAxCBXKx3E39eG27HHvgYH7d0uqi6w915utnXfrnJL5RiTi8Y="}


class KeyPairTests(SynchronousTestCase):
    def test_private_jwk_as_webcrypto_exports_it(self):
        private = keys.generate_private_jwk()
        self.assertEqual(list(private), list(NODE_PRIVATE))        # Node's member order
        self.assertEqual((private["kty"], private["crv"], private["key_ops"], private["ext"]),
                         ("EC", "P-521", ["sign"], True))
        for member in ("x", "y", "d"):
            self.assertEqual(len(private[member]), 88)
            self.assertNotIn("=", private[member])
            self.assertEqual(len(cred.b64decode_lenient(private[member])), 66)
            self.assertEqual(set(private[member]) - set(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), set())

    def test_public_jwk(self):
        private, public = keys.generate_key_pair()
        self.assertEqual(list(public), list(NODE_PUBLIC))
        self.assertEqual(public, keys.public_jwk(private))
        self.assertEqual(keys.public_jwk(NODE_PRIVATE), NODE_PUBLIC)
        self.assertEqual(keys.public_jwk(NODE_PUBLIC), NODE_PUBLIC)
        key = keys.import_private_jwk(private)
        self.assertEqual(keys.public_jwk(key), public)
        self.assertEqual(keys.export_public_jwk(key.public_key()), public)
        self.assertNotIn("d", public)
        with self.assertRaises(keys.KeyFileError):
            keys.public_jwk({"kty": "RSA"})

    def test_node_key_imports_and_exports_identically(self):
        key = keys.import_private_jwk(NODE_PRIVATE)
        self.assertEqual(json.dumps(keys.export_private_jwk(key)), json.dumps(NODE_PRIVATE))
        self.assertEqual(json.dumps(keys.export_public_jwk(key)), json.dumps(NODE_PUBLIC))
        self.assertIsInstance(keys.import_public_jwk(NODE_PUBLIC), ec.EllipticCurvePublicKey)
        self.assertIs(keys.private_key, keys.import_private_jwk)

    def test_node_signature_verifies(self):
        self.assertTrue(cred.verify_signature(NODE_PUBLIC, NODE_MESSAGE, NODE_SIGN))
        self.assertFalse(cred.verify_signature(NODE_PUBLIC, NODE_MESSAGE + b".", NODE_SIGN))

    def test_sign(self):
        for signer in (NODE_PRIVATE, keys.import_private_jwk(NODE_PRIVATE)):
            sign = keys.sign(signer, NODE_MESSAGE)
            self.assertEqual(len(sign), 176)
            self.assertNotIn("=", sign)
            self.assertEqual(len(cred.b64decode_lenient(sign)), 132)
            self.assertTrue(cred.verify_signature(NODE_PUBLIC, NODE_MESSAGE, sign))
        # ECDSA is randomised: two signatures differ, both verify
        self.assertNotEqual(keys.sign(NODE_PRIVATE, b"m"), keys.sign(NODE_PRIVATE, b"m"))
        with self.assertRaises(keys.KeyFileError):
            keys.sign(ec.generate_private_key(ec.SECP256R1()), b"m")
        with self.assertRaises(keys.KeyFileError):
            keys.sign(NODE_PUBLIC, b"m")

    def test_bad_private_jwks(self):
        other = keys.generate_private_jwk()
        for jwk in (None, "text", {}, NODE_PUBLIC, dict(NODE_PRIVATE, crv="P-256"),
                    dict(NODE_PRIVATE, kty="OKP"), dict(NODE_PRIVATE, d=None),
                    dict(NODE_PRIVATE, d="***"), dict(NODE_PRIVATE, d=NODE_PRIVATE["d"][:-2]),
                    dict(NODE_PRIVATE, d=cred.b64url(bytes(66))),          # d = 0
                    dict(NODE_PRIVATE, d=cred.b64url(b"\xff" * 66)),       # d ≥ n
                    dict(NODE_PRIVATE, x=other["x"]),                       # x/y of another d
                    dict(NODE_PRIVATE, d=other["d"]),
                    {k: v for k, v in NODE_PRIVATE.items() if k != "y"}):
            with self.assertRaises(keys.KeyFileError, msg=jwk):
                keys.import_private_jwk(jwk)

    def test_rsa_key_message(self):
        with self.assertRaises(keys.KeyFileError) as caught:
            keys.import_private_jwk({"kty": "RSA", "n": "x", "e": "AQAB", "d": "x"})
        self.assertIn("RSA", str(caught.exception))

    def test_other_base64_spellings_of_coordinates(self):
        standard = {k: (base64.b64encode(cred.b64decode_lenient(v)).decode()
                        if k in ("x", "y", "d") else v) for k, v in NODE_PRIVATE.items()}
        key = keys.import_private_jwk(standard)
        self.assertEqual(keys.export_private_jwk(key), NODE_PRIVATE)


class ParamTests(SynchronousTestCase):
    def test_pub_param(self):
        # the pub parameter (docs/protocol.md, 4.3 "Ticket login") of the test vector's key
        # (4.4 "Key login"), byte for byte
        from tests.vectors import VECTOR_JWK, VECTOR_PUB
        self.assertEqual(keys.pub_param(VECTOR_JWK), VECTOR_PUB)
        private, public = keys.generate_key_pair()
        text, jwk = cred.decode_public_jwk(keys.pub_param(public))
        self.assertEqual((jwk, text), (public, json.dumps(public, separators=(",", ":"))))

    def test_listen_param(self):
        self.assertEqual(keys.listen_param(["wyseman", "wylib"]), "WyJ3eXNlbWFuIiwid3lsaWIiXQ")
        self.assertEqual(keys.listen_param(iter(["a"])), cred.b64url(b'["a"]'))
        for channels in (["é", "chan nel", 'q"uote'], []):
            self.assertEqual(cred.decode_listen(keys.listen_param(channels)) or (),
                             tuple(channels))

    def test_signed_message_reexported(self):
        self.assertIs(keys.signed_message, cred.signed_message)


class EncryptionTests(SynchronousTestCase):
    def test_node_blob_decrypts(self):
        self.assertEqual(keys.decrypt_json(NODE_BLOB, NODE_PASSWORD), NODE_PLAIN)
        self.assertEqual(keys.decrypt_json(json.dumps(NODE_BLOB), NODE_PASSWORD), NODE_PLAIN)

    def test_format(self):
        value = {"a": 1, "é": ["x"]}
        blob = keys.encrypt_json(value, "pw")
        self.assertEqual(list(blob), ["s", "i", "d"])
        self.assertEqual(len(bytes.fromhex(blob["s"])), 8)
        self.assertEqual(len(bytes.fromhex(blob["i"])), 12)
        self.assertEqual(blob["s"], blob["s"].lower())
        data = base64.b64decode(blob["d"], validate=True)       # standard alphabet, padded
        plain = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        self.assertEqual(len(data), len(plain) + 16)           # GCM tag appended
        self.assertEqual(keys.decrypt_json(blob, "pw"), value)
        again = keys.encrypt_json(value, "pw")
        self.assertNotEqual((again["s"], again["i"]), (blob["s"], blob["i"]))

    def test_known_answer(self):
        # PBKDF2-HMAC-SHA-256 (10000) → AES-256-GCM, computed here independently
        import hashlib

        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        key = hashlib.pbkdf2_hmac("sha256", NODE_PASSWORD.encode(), bytes.fromhex(NODE_BLOB["s"]),
                                  10000, 32)
        plain = AESGCM(key).decrypt(bytes.fromhex(NODE_BLOB["i"]),
                                    base64.b64decode(NODE_BLOB["d"]), None)
        self.assertEqual(json.loads(plain), NODE_PLAIN)

    def test_wrong_passphrase(self):
        with self.assertRaises(keys.KeyFileError) as caught:
            keys.decrypt_json(NODE_BLOB, "pass word")
        self.assertIn("wrong passphrase", str(caught.exception))

    def test_damaged_blobs(self):
        data = base64.b64decode(NODE_BLOB["d"])
        for blob in ({}, {"s": "00", "i": "00"}, dict(NODE_BLOB, s="zz"), dict(NODE_BLOB, s=None),
                     dict(NODE_BLOB, i="0011"), dict(NODE_BLOB, d="not base64!"),
                     dict(NODE_BLOB, d=base64.b64encode(data[:-1]).decode()),
                     dict(NODE_BLOB, d=base64.b64encode(data[:10]).decode()),
                     dict(NODE_BLOB, s="00" * 8), "not json", "[1]", 5):
            with self.assertRaises(keys.KeyFileError, msg=blob):
                keys.decrypt_json(blob, NODE_PASSWORD)

    def test_plaintext_not_json(self):
        import hashlib

        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        salt, iv = b"\x01" * 8, b"\x02" * 12
        key = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 10000, 32)
        blob = {"s": salt.hex(), "i": iv.hex(),
                "d": base64.b64encode(AESGCM(key).encrypt(iv, b"not json", None)).decode()}
        with self.assertRaises(keys.KeyFileError):
            keys.decrypt_json(blob, "pw")

    def test_is_encrypted(self):
        self.assertTrue(keys.is_encrypted(NODE_BLOB))
        self.assertTrue(keys.is_encrypted(dict(NODE_BLOB, extra=1)))
        for value in ({"s": 1, "i": 2}, NODE_PLAIN, [NODE_BLOB], None, "sid"):
            self.assertFalse(keys.is_encrypted(value))


class KeyFileTests(SynchronousTestCase):
    def setUp(self):
        self.site = keys.Site("erp.example.com", 4100, "alice", keys.generate_private_jwk())
        self.other = keys.Site("other.example.com", 54320, "bob", keys.generate_private_jwk())
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def test_round_trip_plain_and_encrypted(self):
        for passphrase in (None, "secret wörds"):
            path = self.dir / f"keys-{bool(passphrase)}.json"
            keys.save_key_file(path, [self.site], passphrase)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            self.assertEqual(keys.load_key_file(path, passphrase), [self.site])
            self.assertEqual(keys.load_key_file(str(path), passphrase), [self.site])

    def test_wylib_export_format(self):
        path = self.dir / "one.json"
        keys.save_key_file(path, [self.site])
        self.assertEqual(json.loads(path.read_text()), {"login": {
            "host": "erp.example.com", "port": 4100, "user": "alice", "key": self.site.key}})
        keys.save_key_file(path, [self.site, self.other])
        content = json.loads(path.read_text())
        self.assertEqual([entry["login"]["user"] for entry in content], ["alice", "bob"])
        self.assertEqual(keys.load_key_file(path), [self.site, self.other])

    def test_encrypted_file_is_compact_encrypt_js_json(self):
        path = self.dir / "enc.json"
        keys.save_key_file(path, [self.site], "pw")
        text = path.read_text()
        blob = json.loads(text)
        self.assertEqual(list(blob), ["s", "i", "d"])
        self.assertEqual(text, json.dumps(blob, separators=(",", ":")))
        self.assertEqual(keys.decrypt_json(blob, "pw"), self.site.as_export())

    def test_sites_as_mappings(self):
        path = self.dir / "map.json"
        keys.save_key_file(path, [{"host": "h", "port": 1, "user": "u", "key": {"kty": "EC"}}])
        self.assertEqual(keys.load_key_file(path), [keys.Site("h", 1, "u", {"kty": "EC"})])

    def test_mode_0600_whatever_the_umask_and_old_file(self):
        path = self.dir / "keys.json"
        path.write_text("old")
        os.chmod(path, 0o644)
        old_umask = os.umask(0)
        try:
            keys.save_key_file(path, [self.site])
        finally:
            os.umask(old_umask)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_atomic_replace(self):
        path = self.dir / "keys.json"
        keys.save_key_file(path, [self.site])
        before = path.read_bytes()
        with mock.patch("wyseman.client.keys.os.replace", side_effect=OSError("disk gone")):
            with self.assertRaises(OSError):
                keys.save_key_file(path, [self.other])
        self.assertEqual(path.read_bytes(), before)           # the old file is untouched
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["keys.json"])  # no temp

    def test_nothing_to_save(self):
        with self.assertRaises(keys.KeyFileError):
            keys.save_key_file(self.dir / "none.json", [])
        self.assertEqual(list(self.dir.iterdir()), [])

    def test_node_encrypted_key_file(self):
        path = self.dir / "node.json"
        path.write_text(json.dumps(NODE_BLOB))
        self.assertEqual(keys.load_key_file(path, NODE_PASSWORD),
                         [keys.Site("erp.example.com", 4100, "alice", {"kty": "EC"})])

    def test_load_errors(self):
        missing = self.dir / "missing.json"
        cases = {
            "not json": "{nope",
            "no login": json.dumps({"other": 1}),
            "tickets only": json.dumps([{"ticket": {"token": "t"}}]),
            "bad port": json.dumps({"login": {"host": "h", "port": "x", "user": "u",
                                              "key": {}}}),
            "port out of range": json.dumps({"login": {"host": "h", "port": 70000, "user": "u",
                                                       "key": {}}}),
            "no key": json.dumps({"login": {"host": "h", "port": 1, "user": "u"}}),
            "no user": json.dumps({"login": {"host": "h", "port": 1, "key": {}}}),
            "empty list": "[]",
        }
        for name, text in cases.items():
            path = self.dir / f"{name}.json"
            path.write_text(text)
            with self.assertRaises(keys.KeyFileError, msg=name):
                keys.load_key_file(path)
        (self.dir / "binary.json").write_bytes(b"\xff\xfe")
        for path in (missing, self.dir / "binary.json", self.dir):
            with self.assertRaises(keys.KeyFileError):
                keys.load_key_file(path)

    def test_encrypted_needs_the_right_passphrase(self):
        path = self.dir / "enc.json"
        keys.save_key_file(path, [self.site], "right")
        with self.assertRaises(keys.KeyFileError) as caught:
            keys.load_key_file(path)
        self.assertIn("encrypted", str(caught.exception))
        with self.assertRaises(keys.KeyFileError) as caught:
            keys.load_key_file(path, "wrong")
        self.assertIn("wrong passphrase", str(caught.exception))

    def test_tickets_beside_logins_are_skipped(self):
        content = [{"ticket": {"token": "t"}}, self.site.as_export()]
        self.assertEqual(keys.parse_key_file(content), [self.site])


class TicketTests(SynchronousTestCase):
    def test_json_form(self):
        ticket = keys.parse_ticket(json.dumps({"ticket": {
            "token": "6f1dc2e0a9b34d7e8c5f0b1a2d3e4f56", "expires": "2025-05-01T12:30:00.000Z",
            "host": "erp.example.com", "port": 4100, "user": "alice"}}))
        self.assertEqual(ticket, keys.Ticket("6f1dc2e0a9b34d7e8c5f0b1a2d3e4f56",
                                             "erp.example.com", 4100, "alice",
                                             "2025-05-01T12:30:00.000Z"))

    def test_json_form_without_user_and_with_string_port(self):
        ticket = keys.parse_ticket('\n {"ticket":{"token":"t","host":"h","port":"54320"}}\n')
        self.assertEqual((ticket.token, ticket.host, ticket.port, ticket.user),
                         ("t", "h", 54320, None))

    def test_json_p2p_form(self):
        ticket = keys.parse_ticket(json.dumps({"ticket": {
            "token": "t", "expires": "e", "addr": "/ip4/1.2.3.4/tcp/1", "boot": '["a"]'}}))
        self.assertEqual((ticket.host, ticket.port, ticket.addr, ticket.boot),
                         (None, None, "/ip4/1.2.3.4/tcp/1", '["a"]'))

    def test_link_form(self):
        ticket = keys.parse_ticket("https://erp.example.com/connect?token=abc&user=alice"
                                   "&host=erp.example.com&port=4100")
        self.assertEqual(ticket, keys.Ticket("abc", "erp.example.com", 4100, "alice"))

    def test_web_form(self):
        ticket = keys.parse_ticket(
            "https://erp.example.com:4000/wyatt.html?token=6f1dc2e0a9b34d7e8c5f0b1a2d3e4f56"
            "&user=alice&host=erp.example.com&port=4100")
        self.assertEqual((ticket.token, ticket.host, ticket.port, ticket.user),
                         ("6f1dc2e0a9b34d7e8c5f0b1a2d3e4f56", "erp.example.com", 4100, "alice"))

    def test_url_decoding_as_wylib(self):
        ticket = keys.parse_ticket("https://h:4000/wyatt.html?token=t&user=a%20b+c&port=1")
        self.assertEqual(ticket.user, "a b+c")           # decodeURIComponent: + stays
        self.assertEqual(ticket.host, "h")               # no host= → the page's host
        p2p = keys.parse_ticket("https://h/connect?token=t&user=u&addr=%2Fip4%2F1.2.3.4"
                                "&boot=%2Fa%2Cb,%2Fc")
        self.assertEqual((p2p.addr, p2p.boot, p2p.port), ("/ip4/1.2.3.4", ["/a,b", "/c"], None))

    def test_refused(self):
        for bad in ("", "{}", '{"ticket":{}}', '{"ticket":{"token":""}}', '{"ticket":"t"}',
                    "{nope", "[1]", "hello", "https://h/connect?user=x",
                    "https://h/connect?token=t&port=abc", "https://h/connect?token=t&port=0",
                    '{"ticket":{"token":"t","port":"x"}}', '{"ticket":{"token":["t"]}}',
                    "https://h/connect?token=%ff"):
            with self.assertRaises(keys.KeyFileError, msg=bad):
                keys.parse_ticket(bad)
