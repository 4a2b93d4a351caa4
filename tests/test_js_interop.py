"""Interoperability with the real JS code (npm ``wyseman`` 1.1.13, pinned in tests/js):
WebCrypto signatures both ways, the signed message bytes, the URL parameters, key files
encrypted by wyseman's own lib/encrypt.js both ways, and the JS client class logging in.
Skipped only when node is not installed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.jsinterop import run_node, run_script
from wyseman.auth import credentials as cred
from wyseman.client import keys

TRICKY = ["", "plain", 'q"uote', "back\\slash", "ctl\b\f\n\r\t\x00\x01\x1f", "del\x7f",
          "emoji 😀", "sep\u2028\u2029", "/slash", "é", "Ã©", "\ud800", "x\udfffy", "{}[],:",
          "\\u0041", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "a=1; b=\"2\""]


def vectors(requests: object) -> object:
    """Run crypto_vectors.js: one request or a list → its answer(s)."""
    out, code = run_script("crypto_vectors.js", requests)
    if code != 0:
        raise AssertionError(f"crypto_vectors.js failed: {out}")
    return out


class SignatureInteropTests(SynchronousTestCase):
    def test_node_signatures_verify_here(self):
        messages = ["hello wyseman", "", "é 😀 \u2028", cred.signed_message(
            "::ffff:127.0.0.1", None, "UA", "2025-05-01T12:00:00.000Z").decode()]
        answers = vectors([{"op": "sign", "message": m} for m in messages])
        for message, out in zip(messages, answers, strict=True):
            data = message.encode()
            self.assertEqual(out["messageBytesHex"], data.hex())
            self.assertEqual(len(out["sign"]), 176)
            self.assertTrue(cred.verify_signature(out["publicJwk"], data, out["sign"]))
            self.assertTrue(cred.verify_any({"default": out["publicJwk"]}, data, out["sign"]))
            self.assertFalse(cred.verify_signature(out["publicJwk"], data + b"!", out["sign"]))

    def test_node_keys_have_our_shape(self):
        out = vectors({"op": "sign", "message": "x"})
        # our exports are Node's, member order included (so pub parameters match)
        key = keys.import_private_jwk(out["privateJwk"])
        self.assertEqual(json.dumps(keys.export_private_jwk(key)), json.dumps(out["privateJwk"]))
        self.assertEqual(json.dumps(keys.public_jwk(out["privateJwk"])),
                         json.dumps(out["publicJwk"]))
        cred.decode_public_jwk(keys.pub_param(out["publicJwk"]))
        # a Node private key signs with our code
        ours = keys.sign(out["privateJwk"], b"from python")
        self.assertTrue(cred.verify_signature(out["publicJwk"], b"from python", ours))

    def test_our_signatures_verify_in_node(self):
        private, public = keys.generate_key_pair()
        message = "from python é 😀".encode()
        sign = keys.sign(private, message)
        answers = vectors([
            {"op": "verify", "jwk": public, "messageHex": message.hex(), "sign": sign},
            {"op": "verify", "jwk": public, "messageHex": (message + b"!").hex(), "sign": sign},
            # Node imports our private JWK (as client_ws.js keyCheck does) and signs
            {"op": "signWith", "privateJwk": private, "messageHex": message.hex()},
        ])
        self.assertEqual(answers[0], {"valid": True})
        self.assertEqual(answers[1], {"valid": False})
        self.assertTrue(cred.verify_signature(public, message, answers[2]["sign"]))

    def test_spec_vector_verifies_in_node(self):
        from tests.vectors import VECTOR_JWK, VECTOR_MESSAGE, VECTOR_SIGN
        out = vectors({"op": "verify", "jwk": VECTOR_JWK, "messageHex": VECTOR_MESSAGE.hex(),
                       "sign": VECTOR_SIGN})
        self.assertEqual(out, {"valid": True})


class MessageInteropTests(SynchronousTestCase):
    def test_signed_message_bytes_match_json_stringify(self):
        cases = []
        for text in TRICKY:
            for cookie in (None, "", text):       # None: /clientinfo had no Cookie header
                cases.append((f"::ffff:1.2.3.4{text[:1]}", cookie, text,
                              "2025-05-01T12:00:00.000Z"))
        cases.append(("::1", None, None, "2025-05-01T12:00:00.000Z"))
        requests = []
        for ip, cookie, agent, date in cases:
            request = {"op": "message", "ip": ip, "date": date}
            if cookie is not None:
                request["cookie"] = cookie
            if agent is not None:
                request["userAgent"] = agent
            requests.append(request)
        for case, out in zip(cases, vectors(requests), strict=True):
            self.assertEqual(cred.signed_message(*case).hex(), out["hex"], repr(case))

    def test_url_parameters_match_client_ws(self):
        private, public = keys.generate_key_pair()
        channels = ["wyseman", "wylib", "é 😀", 'q"']
        out = vectors({"op": "params", "listen": channels, "jwk": public})
        self.assertEqual(keys.listen_param(channels), out["db"])
        self.assertEqual(keys.pub_param(public), out["pub"])
        self.assertEqual(cred.decode_listen(out["db"]), tuple(channels))
        self.assertEqual(cred.decode_public_jwk(out["pub"])[1], public)


class KeyFileInteropTests(SynchronousTestCase):
    SITE = {"login": {"host": "erp.example.com", "port": 4100, "user": "alice",
                      "key": {"kty": "EC", "note": "é 😀"}}}

    def test_node_encrypted_decrypts_here(self):
        out = vectors({"op": "encrypt", "password": "pw é 😀", "plain": json.dumps(self.SITE)})
        blob = json.loads(out["blob"])
        self.assertEqual(list(blob), ["s", "i", "d"])
        self.assertEqual(keys.decrypt_json(blob, "pw é 😀"), self.SITE)
        self.assertEqual(keys.decrypt_json(out["blob"], "pw é 😀"), self.SITE)
        with self.assertRaises(keys.KeyFileError):
            keys.decrypt_json(blob, "pw e 😀")

    def test_ours_decrypts_in_node(self):
        blob = keys.encrypt_json(self.SITE, "pw é 😀")
        answers = vectors([
            {"op": "decrypt", "password": "pw é 😀", "blob": json.dumps(blob)},
            {"op": "decrypt", "password": "wrong", "blob": json.dumps(blob)},
        ])
        self.assertEqual(json.loads(answers[0]["plain"]), self.SITE)
        self.assertIn("error", answers[1])

    def test_saved_key_file_decrypts_in_node(self):
        path = Path(self.mktemp())
        site = keys.Site("h", 1, "u", keys.generate_private_jwk())
        keys.save_key_file(path, [site], "file pass")
        out = vectors({"op": "decrypt", "password": "file pass", "blob": path.read_text()})
        self.assertEqual(keys.parse_key_file(json.loads(out["plain"])), [site])


class ClientLoginSelfTest(SynchronousTestCase):
    def test_client_login_script_selftest(self):
        # the real ClientWs against a throwaway Node server on 127.0.0.1 (no PostgreSQL)
        out, code = run_script("client_login.js", args=["--selftest"])
        self.assertEqual((code, out.get("selftest")), (0, "passed"), out)


class ClientInteropTests(TestCase):
    """The JS ClientWs builds the URLs; `ws` opens the sockets, as an app would; against
    our gateway and a real PostgreSQL."""

    timeout = 90

    def setUp(self):
        from tests.pgtest import fresh_database
        self.fresh_database = fresh_database

    @defer.inlineCallbacks
    def test_ticket_login_then_key_login_over_wss(self):
        from tests.harness import add_user, start_gateway
        from tests.tlsutil import TestCA
        from wyseman.provision import admin
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        ca = TestCA.create()
        cert, key, _ = ca.issue(directory, "server")
        (directory / "ca.pem").write_bytes(ca.pem)
        db = self.fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db, server={"listen": "tls:0:interface=127.0.0.1"},
                                     tls={"cert": str(cert), "key": str(key)})
        env = {"NODE_EXTRA_CA_CERTS": str(directory / "ca.pem")}
        base = {"proto": "wss", "host": "localhost", "port": server.port, "user": user,
                "httpPort": server.port, "userAgent": "Mozilla/5.0 interop"}
        token = admin.issue_ticket(db.dsn, user).token
        request = {"id": 1, "action": "tuple", "view": "base.curr_eid()"}
        # ticket → saved key → signed key login → request, in one run
        out, code = yield run_node("client_login.js", {**base, "token": token,
                                                       "request": request}, env=env)
        self.assertEqual(code, 0, out)
        saved = out["savedKey"]
        self.assertEqual((saved["kty"], saved["crv"]), ("EC", "P-521"))
        self.assertIn("&token=", out["urls"]["ticket"])
        self.assertIn("&sign=", out["urls"]["key"])
        stored = db.run("select conn_pub from base.ent where username = %s", (user,))[0][0]
        self.assertEqual(stored["default"]["x"], saved["x"])
        expected = db.run("select id from base.ent where username = %s", (user,))[0][0]
        self.assertEqual(out["reply"]["data"], {"curr_eid": expected})
        self.assertEqual(out["reply"]["id"], 1)

        # later: the stored key alone, as an app reconnects
        out, code = yield run_node("client_login.js",
                                   {**base, "key": saved, "request": request}, env=env)
        self.assertEqual(code, 0, out)
        self.assertEqual(out["reply"]["data"], {"curr_eid": expected})

    @defer.inlineCallbacks
    def test_login_passed_to_another_worker(self):
        """[server] route_by_user: the socket moves to the user's worker mid-handshake;
        the JS client sees an ordinary login."""
        from tests.harness import routed_worker, users_by_owner
        from wyseman.provision import admin
        db = self.fresh_database(self)
        directory = self.mktemp()
        os.makedirs(directory, mode=0o700)
        a = yield routed_worker(self, db, directory, 0)
        b = yield routed_worker(self, db, directory, 1)
        user = users_by_owner(db)[1]
        token = admin.issue_ticket(db.dsn, user).token
        request = {"id": 7, "action": "tuple", "view": "base.curr_eid()"}
        out, code = yield run_node("client_login.js", {
            "proto": "ws", "host": "127.0.0.1", "port": a.port, "user": user,
            "steps": ["ticket"], "token": token, "request": request})
        self.assertEqual(code, 0, out)
        expected = db.run("select id from base.ent where username = %s", (user,))[0][0]
        self.assertEqual(out["reply"]["data"], {"curr_eid": expected})
        self.assertEqual((a.router.passed, b.router.taken), (1, 1))

    @defer.inlineCallbacks
    def test_ticket_login_over_ws_and_refusals(self):
        from tests.harness import add_user, start_gateway
        from wyseman.provision import admin
        db = self.fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db)
        base = {"proto": "ws", "host": "127.0.0.1", "port": server.port, "user": user,
                "steps": ["ticket"]}
        token = admin.issue_ticket(db.dsn, user).token
        out, code = yield run_node("client_login.js", {**base, "token": token,
                                                       "listen": ["not_allowed"]})
        self.assertEqual((code, out.get("status")), (1, 403))
        out, code = yield run_node("client_login.js", {**base, "token": token,
                                                       "listen": ["wylib"]})
        self.assertEqual(code, 0, out)
        # the same token again: one-time
        out, code = yield run_node("client_login.js", {**base, "token": token})
        self.assertEqual((code, out.get("status")), (1, 403))
        # plain ws key login: the JS client does not sign there (it relies on the Node
        # server's insecure mode), so our server refuses it by default
        out, code = yield run_node("client_login.js", {**base, "steps": ["key"],
                                                       "key": keys.generate_private_jwk(),
                                                       "httpPort": server.port})
        self.assertEqual((code, out.get("status")), (1, 401))
