"""Interoperability with the real JS client code (npm `wyseman`, pinned in tests/js)."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.harness import add_user, start_gateway
from tests.jsinterop import run_node
from tests.pgtest import fresh_database
from tests.tlsutil import TestCA
from wyseman import keys
from wyseman.db import admin
from wyseman.protocol import credentials as cred

TRICKY = ['', 'plain', 'q"uote', 'back\\slash', 'ctl\b\f\n\r\t\x01\x1f', 'emoji 😀',
          'sep\u2028\u2029', 'del\x7f', '/slash', 'é']


class CryptoInteropTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_node_signatures_verify_here_and_ours_there(self):
        out, code = yield run_node("crypto.js", {"op": "sign", "message": "hello wyseman"})
        self.assertEqual(code, 0, out)
        self.assertTrue(cred.verify_signature(out["publicJwk"], b"hello wyseman", out["sign"]))
        self.assertFalse(cred.verify_signature(out["publicJwk"], b"hello wyseman!", out["sign"]))
        private = keys.generate_private_jwk()
        sign = keys.sign(private, b"from python")
        out, code = yield run_node("crypto.js", {"op": "verify", "jwk": keys.public_jwk(private),
                                                 "message": "from python", "sign": sign})
        self.assertEqual(out, {"valid": True})
        # a private JWK exported by Node signs with our code, too
        out, _ = yield run_node("crypto.js", {"op": "sign", "message": "x"})
        ours = keys.sign(out["privateJwk"], b"x")
        self.assertTrue(cred.verify_signature(out["publicJwk"], b"x", ours))

    @defer.inlineCallbacks
    def test_signed_message_bytes_match_json_stringify(self):
        for text in TRICKY:
            for cookie in (None, text):
                payload = {"op": "stringify", "ip": "::ffff:1.2.3.4", "userAgent": text,
                           "date": "2025-05-01T12:00:00.000Z"}
                if cookie is not None:  # absent, as when /clientinfo had no Cookie header
                    payload["cookie"] = cookie
                out, _ = yield run_node("crypto.js", payload)
                ours = cred.signed_message("::ffff:1.2.3.4", cookie, text,
                                           "2025-05-01T12:00:00.000Z")
                self.assertEqual(ours.hex(), out["hex"], repr(text))

    @defer.inlineCallbacks
    def test_key_files_encrypted_either_side(self):
        site = {"login": {"host": "h", "port": 1, "user": "u", "key": {"kty": "EC"}}}
        out, _ = yield run_node("crypto.js", {"op": "encrypt", "password": "pw é",
                                              "plain": json.dumps(site)})
        self.assertEqual(keys.decrypt_json(json.loads(out["blob"]), "pw é"), site)
        blob = keys.encrypt_json(site, "pw é")
        out, _ = yield run_node("crypto.js", {"op": "decrypt", "password": "pw é",
                                              "blob": json.dumps(blob)})
        self.assertEqual(json.loads(out["plain"]), site)


class ClientInteropTests(TestCase):
    """The JS ClientWs builds the URLs; `ws` opens the sockets, as an app would."""

    timeout = 90

    @defer.inlineCallbacks
    def test_ticket_login_then_key_login_over_wss(self):
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        ca = TestCA.create()
        cert, key, _ = ca.issue(directory, "server")
        (directory / "ca.pem").write_bytes(ca.pem)
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db, server={"listen": "tls:0:interface=127.0.0.1"},
                                     tls={"cert": str(cert), "key": str(key)})
        env = {"NODE_EXTRA_CA_CERTS": str(directory / "ca.pem")}
        base = {"proto": "wss", "host": "localhost", "port": server.port, "user": user,
                "httpPort": server.port, "userAgent": "Mozilla/5.0 interop"}
        token = admin.issue_ticket(db.dsn, user).token
        out, code = yield run_node("client_login.js", {**base, "token": token}, env=env)
        self.assertEqual(code, 0, out)
        saved = out["savedKey"]
        self.assertEqual((saved["kty"], saved["crv"]), ("EC", "P-521"))
        stored = db.run("select conn_pub from base.ent where username = %s", (user,))[0][0]
        self.assertEqual(stored["default"]["x"], saved["x"])

        request = {"id": 1, "action": "tuple", "view": "base.curr_eid()"}
        out, code = yield run_node("client_login.js",
                                   {**base, "key": saved, "request": request}, env=env)
        self.assertEqual(code, 0, out)
        self.assertIn("&sign=", out["url"])
        expected = db.run("select id from base.ent where username = %s", (user,))[0][0]
        self.assertEqual(out["reply"]["data"], {"curr_eid": expected})
        self.assertEqual(out["reply"]["id"], 1)

    @defer.inlineCallbacks
    def test_ticket_login_over_ws_and_refusals(self):
        db = fresh_database(self)
        user = add_user(db)
        server = yield start_gateway(self, db)
        base = {"proto": "ws", "host": "127.0.0.1", "port": server.port, "user": user}
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
        out, code = yield run_node("client_login.js", {**base, "key": keys.generate_private_jwk(),
                                                       "httpPort": server.port})
        self.assertEqual((code, out.get("status")), (1, 401))
