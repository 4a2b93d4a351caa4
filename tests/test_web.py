"""A browser app served on the gateway's ports ([web], wyseman.ws.webroot) and the CORS
answers of /clientinfo (wyseman.ws.cors): real servers, real sockets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.harness import add_user, exchange, fetch, make_config, start_gateway, ticket_login
from tests.pgtest import fresh_database
from tests.tlsutil import TestCA
from wyseman import config as cfg
from wyseman.application.preflight import check_startable
from wyseman.ws.webroot import WebRoot, check_web

INDEX = b"<!doctype html><title>app</title><script src=app.js></script>\n"
SECRET = b"the secret outside the web root\n"


def make_tree(base: Path) -> dict[str, Path]:
    """A web root, a mount and a directory outside both (with a secret in it)."""
    site, mount, outside = base / "site", base / "mount", base / "outside"
    for directory in (site / "sub", site / "empty", mount, outside):
        directory.mkdir(parents=True)
    (site / "index.html").write_bytes(INDEX)
    (site / "app.js").write_bytes(b"console.log('app')\n")
    (site / "style.css").write_bytes(b"body { color: red }\n")
    (site / "data.json").write_bytes(b'{"a": 1}\n')
    (site / "blob.nosuchtype").write_bytes(b"<script>alert(1)</script>")
    (site / "sub" / "index.html").write_bytes(b"sub index\n")
    (site / "empty" / "listed.txt").write_bytes(b"must not be listed\n")
    (site / ".env").write_bytes(SECRET)
    (site / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (outside / "secret.txt").write_bytes(SECRET)
    (site / "out.txt").symlink_to(outside / "secret.txt")
    (site / "outdir").symlink_to(outside, target_is_directory=True)
    (site / "inside.txt").symlink_to(site / "app.js")     # a link within the root: fine
    (mount / "index.html").write_bytes(b"mounted index\n")
    (mount / "m.txt").write_bytes(b"mounted file\n")
    return {"site": site, "mount": mount, "outside": outside}


class _Logged:
    """The log lines emitted while a test runs (an observer, removed at cleanup)."""

    def __init__(self, testcase: TestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def reasons(self) -> list[str]:
        return [e.get("reason", "") for e in self.events if "reason" in e]


class WebServerTests(TestCase):
    """A gateway with a [web] root and a mount, on plain TCP."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.tree = make_tree(Path(self.mktemp()).resolve())
        self.db = fresh_database(self)
        self.logged = _Logged(self)
        self.server = yield start_gateway(
            self, self.db,
            server={"clientinfo_listen": ["tcp:0:interface=127.0.0.1"]},
            web={"root": str(self.tree["site"]),
                 "mounts": {"/wysegi": str(self.tree["mount"])},
                 "spa_fallback": "index.html"})
        self.port = self.server.port

    def get(self, path: str, method: str = "GET", **kwargs: Any) -> defer.Deferred:
        return fetch(self.port, path, method, **kwargs)

    @defer.inlineCallbacks
    def test_the_index_is_served_at_the_root(self):
        reply = yield self.get("/")
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.body, INDEX)
        self.assertEqual(reply.header("content-type"), "text/html; charset=utf-8")
        self.assertEqual(reply.header("content-length"), str(len(INDEX)))
        self.assertEqual(reply.header("x-content-type-options"), "nosniff")
        self.assertEqual(reply.header("cache-control"), "no-cache")
        self.assertEqual(reply.header("server"), "wyseman")
        self.assertTrue(reply.header("etag"))
        self.assertTrue(reply.header("last-modified"))
        # the same on the /clientinfo port (the JS client's default: WebSocket port − 1)
        other = yield fetch(self.server.ports[1].getHost().port, "/")
        self.assertEqual((other.status, other.body), (200, INDEX))

    @defer.inlineCallbacks
    def test_files_have_their_content_types(self):
        for path, wanted in [("/app.js", "text/javascript; charset=utf-8"),
                             ("/style.css", "text/css; charset=utf-8"),
                             ("/data.json", "application/json"),
                             ("/index.html", "text/html; charset=utf-8"),
                             ("/blob.nosuchtype", "application/octet-stream"),   # never HTML
                             ("/inside.txt", "text/plain; charset=utf-8")]:
            reply = yield self.get(path)
            self.assertEqual(reply.status, 200, path)
            self.assertEqual(reply.header("content-type"), wanted, path)
            name = "app.js" if path == "/inside.txt" else path[1:]
            self.assertEqual(reply.body, (self.tree["site"] / name).read_bytes(), path)

    @defer.inlineCallbacks
    def test_head_gives_the_headers_only(self):
        reply = yield self.get("/app.js", "HEAD")
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.body, b"")
        self.assertEqual(reply.header("content-length"),
                         str((self.tree["site"] / "app.js").stat().st_size))
        self.assertEqual(reply.header("content-type"), "text/javascript; charset=utf-8")

    @defer.inlineCallbacks
    def test_conditional_gets_are_answered_304(self):
        first = yield self.get("/app.js")
        etag, modified = first.header("etag"), first.header("last-modified")
        again = yield self.get("/app.js", headers={"If-None-Match": etag})
        self.assertEqual((again.status, again.body), (304, b""))
        self.assertEqual(again.header("etag"), etag)
        since = yield self.get("/app.js", headers={"If-Modified-Since": modified})
        self.assertEqual((since.status, since.body), (304, b""))
        other = yield self.get("/app.js", headers={"If-None-Match": '"0-0"'})
        self.assertEqual(other.status, 200)
        # a changed file has another ETag (size and modification time)
        path = self.tree["site"] / "app.js"
        path.write_bytes(b"console.log('changed')\n")
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        changed = yield self.get("/app.js", headers={"If-None-Match": etag})
        self.assertEqual((changed.status, changed.body), (200, path.read_bytes()))
        self.assertNotEqual(changed.header("etag"), etag)

    @defer.inlineCallbacks
    def test_a_range_is_answered_206(self):
        reply = yield self.get("/big.bin", headers={"Range": "bytes=100-199"})
        data = (self.tree["site"] / "big.bin").read_bytes()
        self.assertEqual(reply.status, 206)
        self.assertEqual(reply.body, data[100:200])
        self.assertEqual(reply.header("content-range"), f"bytes 100-199/{len(data)}")
        self.assertEqual(reply.header("accept-ranges"), "bytes")

    @defer.inlineCallbacks
    def test_a_large_file_is_served_whole(self):
        reply = yield self.get("/big.bin")
        data = (self.tree["site"] / "big.bin").read_bytes()
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.header("content-length"), str(len(data)))
        self.assertEqual(len(reply.body), len(data))
        self.assertEqual(reply.body, data)

    @defer.inlineCallbacks
    def test_a_mount_serves_its_directory(self):
        reply = yield self.get("/wysegi/m.txt")
        self.assertEqual((reply.status, reply.body), (200, b"mounted file\n"))
        index = yield self.get("/wysegi/")
        self.assertEqual((index.status, index.body), (200, b"mounted index\n"))
        # a directory without its slash is sent to it (the index's relative links),
        # with the query kept
        bare = yield self.get("/wysegi?x=1")
        self.assertEqual(bare.status, 301)
        self.assertEqual(bare.header("location"), "/wysegi/?x=1")
        sub = yield self.get("/sub")
        self.assertEqual((sub.status, sub.header("location")), (301, "/sub/"))
        # a mount has no fallback: an unknown path under it is 404
        missing = yield self.get("/wysegi/route")
        self.assertEqual(missing.status, 404)

    @defer.inlineCallbacks
    def test_unknown_paths_without_extension_get_the_spa_fallback(self):
        for path in ("/orders/42", "/settings", "/a/b/"):
            reply = yield self.get(path)
            self.assertEqual((reply.status, reply.body), (200, INDEX), path)
        for path in ("/missing.js", "/orders/42.png"):
            reply = yield self.get(path)
            self.assertEqual(reply.status, 404, path)
            self.assertNotIn(INDEX, reply.body)

    @defer.inlineCallbacks
    def test_paths_out_of_the_root_are_refused(self):
        for path in ["/../outside/secret.txt", "/sub/../../outside/secret.txt",
                     "/%2e%2e/outside/secret.txt", "/%2E%2E/outside/secret.txt",
                     "/sub/%2e%2e/%2e%2e/outside/secret.txt",
                     "/sub%2f..%2f..%2foutside%2fsecret.txt",     # an encoded slash
                     "/..%5c..%5coutside%5csecret.txt",           # an encoded backslash
                     "/out.txt", "/outdir/secret.txt", "/outdir/",  # links out of the root
                     "/.env", "/sub/%2eenv", "/app.js%00.html",
                     "/wysegi/../outside/secret.txt", "/wysegi/%2e%2e/../outside/secret.txt"]:
            reply = yield self.get(path)
            self.assertIn(reply.status, (403, 404), path)
            self.assertNotIn(SECRET, reply.body, path)
            self.assertNotIn(INDEX, reply.body, path)     # not the fallback either
        reasons = self.logged.reasons()
        self.assertIn("a '..' segment", reasons)
        self.assertIn("an encoded '/', '\\' or NUL in a segment", reasons)
        self.assertIn("a symbolic link that leads out of its directory", reasons)

    @defer.inlineCallbacks
    def test_directories_are_never_listed(self):
        for path in ("/empty/", "/empty"):
            reply = yield self.get(path)
            self.assertEqual(reply.status, 404, path)
            self.assertNotIn(b"listed.txt", reply.body)
        self.assertIn("a directory without an index file (never listed)",
                      self.logged.reasons())
        listed = yield self.get("/empty/listed.txt")
        self.assertEqual(listed.status, 200)

    @defer.inlineCallbacks
    def test_other_methods_are_405_and_bodies_stay_bounded(self):
        reply = yield self.get("/index.html", "DELETE")
        self.assertEqual(reply.status, 405)
        self.assertEqual(reply.header("allow"), "GET, HEAD")
        # a request announcing a large body is cut off at once (BoundedRequest)
        answer = yield exchange(
            self.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        self.assertEqual(answer, b"")

    @defer.inlineCallbacks
    def test_a_kept_alive_connection_serves_several_files_and_is_released(self):
        site = self.server.ports[0].factory
        requests = b"".join(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % name
                            for name in (b"app.js", b"style.css"))
        data = yield exchange(self.port, requests + b"GET /data.json HTTP/1.1\r\nHost: x\r\n"
                                                   b"Connection: close\r\n\r\n")
        self.assertEqual(data.count(b"HTTP/1.1 200 OK"), 3)
        for name in ("app.js", "style.css", "data.json"):
            self.assertIn((self.tree["site"] / name).read_bytes(), data)
        self.assertEqual(site.pending, 0)      # the connection no longer counts

    @defer.inlineCallbacks
    def test_websocket_logins_are_unchanged(self):
        user = add_user(self.db)
        conn = yield ticket_login(self, self.server, self.db, user)
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])
        clientinfo = yield self.get("/clientinfo")
        self.assertEqual(clientinfo.status, 200)
        self.assertEqual(clientinfo.header("content-type"), "application/json")


class WebOffTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_without_web_a_plain_get_is_426_or_404_as_before(self):
        db = fresh_database(self)
        server = yield start_gateway(
            self, db, server={"clientinfo_listen": ["tcp:0:interface=127.0.0.1"]})
        reply = yield fetch(server.port, "/")
        self.assertEqual(reply.status, 426)
        self.assertNotIn(b"<", reply.body)
        reply = yield fetch(server.port, "/index.html")
        self.assertEqual(reply.status, 426)
        other = yield fetch(server.ports[1].getHost().port, "/")
        self.assertEqual(other.status, 404)


class CorsTests(TestCase):
    """/clientinfo's CORS answers, on the sniffer's fast path (a plain HTTP/1.1 GET) and
    through twisted.web (HTTP/1.0, HEAD, kept alive, OPTIONS)."""

    timeout = 60
    ALLOWED = "https://app.example.com"

    @defer.inlineCallbacks
    def setUp(self):
        self.db = fresh_database(self)
        self.logged = _Logged(self)
        self.server = yield start_gateway(self, self.db,
                                          server={"allowed_origins": [self.ALLOWED]})

    def paths(self, origin: str | None):
        """(fast path?, request) pairs for GET /clientinfo with ``origin``."""
        headers = {"Origin": origin} if origin else {}
        port = self.server.port
        return [("fast", fetch(port, "/clientinfo", headers=headers)),
                ("twisted.web", fetch(port, "/clientinfo", headers=headers,
                                      version="HTTP/1.0")),
                ("twisted.web, HEAD", fetch(port, "/clientinfo", "HEAD", headers=headers))]

    @defer.inlineCallbacks
    def test_an_allowed_origin_is_echoed_with_credentials(self):
        for which, pending in self.paths(self.ALLOWED):
            reply = yield pending
            self.assertEqual(reply.status, 200, which)
            self.assertEqual(reply.header("access-control-allow-origin"), self.ALLOWED, which)
            self.assertEqual(reply.header("access-control-allow-credentials"), "true", which)
            self.assertEqual(reply.header("vary"), "Origin", which)
        # the fast path closes the connection; HTTP/1.0 is twisted.web's
        fast = yield fetch(self.server.port, "/clientinfo", headers={"Origin": self.ALLOWED},
                           close=False)
        self.assertEqual(fast.header("connection"), "close")

    @defer.inlineCallbacks
    def test_another_origin_gets_no_cors_headers(self):
        for origin in ("https://evil.example", "null", "https://app.example.com.evil",
                       "https://app.example.com/path"):
            for which, pending in self.paths(origin):
                reply = yield pending
                self.assertEqual(reply.status, 200, which)
                self.assertIsNone(reply.header("access-control-allow-origin"), (which, origin))
                self.assertIsNone(reply.header("access-control-allow-credentials"))
                self.assertEqual(reply.header("vary"), "Origin")
        self.assertTrue(any("not allowed" in r for r in self.logged.reasons()))
        # without Origin (not a browser's cross-origin fetch): no CORS headers needed
        for which, pending in self.paths(None):
            reply = yield pending
            self.assertIsNone(reply.header("access-control-allow-origin"), which)
            self.assertIn(b'"date"', reply.body) if "HEAD" not in which else None

    @defer.inlineCallbacks
    def test_the_preflight(self):
        port = self.server.port
        allowed = yield fetch(port, "/clientinfo", "OPTIONS", headers={
            "Origin": self.ALLOWED, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Content-Type, pragma"})
        self.assertEqual(allowed.status, 204)
        self.assertEqual(allowed.header("access-control-allow-origin"), self.ALLOWED)
        self.assertEqual(allowed.header("access-control-allow-credentials"), "true")
        self.assertEqual(allowed.header("access-control-allow-methods"), "GET, HEAD")
        self.assertIn("content-type", allowed.header("access-control-allow-headers"))
        self.assertEqual(allowed.header("access-control-max-age"), "600")
        self.assertEqual(allowed.body, b"")
        for headers, reason in [
            ({"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
             "origin 'https://evil.example' not allowed"),
            ({"Origin": self.ALLOWED, "Access-Control-Request-Method": "POST"},
             "method 'POST' not allowed (GET, HEAD)"),
            ({"Origin": self.ALLOWED, "Access-Control-Request-Method": "GET",
              "Access-Control-Request-Headers": "x-real-ip"},
             "request header 'x-real-ip' not allowed"),
        ]:
            refused = yield fetch(port, "/clientinfo", "OPTIONS", headers=headers)
            self.assertEqual(refused.status, 403, headers)
            self.assertIsNone(refused.header("access-control-allow-origin"))
            self.assertIn(reason.encode(), refused.body)
            self.assertIn(reason, self.logged.reasons())

    @defer.inlineCallbacks
    def test_by_default_an_origin_on_the_requests_own_host_may_read(self):
        db = fresh_database(self)
        server = yield start_gateway(self, db)
        same = "http://127.0.0.1:8080"      # another port of the same host
        for version in ("HTTP/1.1", "HTTP/1.0"):
            reply = yield fetch(server.port, "/clientinfo", headers={"Origin": same},
                                version=version)
            self.assertEqual(reply.header("access-control-allow-origin"), same, version)
            other = yield fetch(server.port, "/clientinfo",
                                headers={"Origin": "http://other.example"}, version=version)
            self.assertIsNone(other.header("access-control-allow-origin"), version)


class TLSWebTests(TestCase):
    """The same site on a tls: endpoint: pages, conditional GETs and CORS over https."""

    timeout = 60

    @defer.inlineCallbacks
    def test_pages_and_cors_over_https(self):
        base = Path(self.mktemp()).resolve()
        tree = make_tree(base)
        ca = TestCA.create()
        cert, key, _ = ca.issue(base, "server")
        db = fresh_database(self)
        origin = "https://localhost:9443"
        server = yield start_gateway(
            self, db, server={"listen": "tls:0:interface=127.0.0.1",
                              "allowed_origins": [origin]},
            tls={"cert": str(cert), "key": str(key)}, web={"root": str(tree["site"])})
        tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(ca.pem))
        page = yield fetch(server.port, "/", tls=tls)
        self.assertEqual((page.status, page.body), (200, INDEX))
        cached = yield fetch(server.port, "/", tls=tls,
                             headers={"If-None-Match": page.header("etag")})
        self.assertEqual(cached.status, 304)
        big = yield fetch(server.port, "/big.bin", tls=tls)
        self.assertEqual(big.body, (tree["site"] / "big.bin").read_bytes())
        refused = yield fetch(server.port, "/%2e%2e/outside/secret.txt", tls=tls)
        self.assertEqual(refused.status, 403)
        for version in ("HTTP/1.1", "HTTP/1.0"):     # the fast path and twisted.web
            info = yield fetch(server.port, "/clientinfo", tls=tls, version=version,
                               headers={"Origin": origin})
            self.assertEqual(info.status, 200)
            self.assertEqual(info.header("access-control-allow-origin"), origin, version)
        user = add_user(db)
        from wyseman.client import keys
        from wyseman.client.connection import connect
        from wyseman.provision import admin
        conn = yield connect(f"wss://localhost:{server.port}", user,
                             token=admin.issue_ticket(db.dsn, user).token,
                             new_key=keys.generate_private_jwk(), tls_options=tls)
        self.addCleanup(conn.close)
        row = yield conn.request({"action": "tuple", "view": "base.curr_eid()"})
        self.assertTrue(row["curr_eid"])


class WebConfigTests(TestCase):
    """[web] in the config file, `wyseman config check`, and the start."""

    def setUp(self):
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir(parents=True)

    def load(self, text: str) -> cfg.Config:
        path = self.base / "wyseman.toml"
        path.write_text('[database]\ndsn = "dbname=x"\n' + text)
        return cfg.load(path)

    def test_paths_are_relative_to_the_config_file(self):
        (self.base / "app").mkdir()
        (self.base / "app" / "index.html").write_bytes(INDEX)
        config = self.load('[web]\nroot = "app"\nspa_fallback = "index.html"\n'
                           '[web.mounts]\n"/tools/" = "app"\n')
        self.assertEqual(config.web.mounts, {"/tools": "app"})
        self.assertEqual(check_web(config), [])
        web = WebRoot.from_config(config)
        self.assertEqual(web.locate(b"/").path, str(self.base / "app" / "index.html"))
        self.assertEqual(web.locate(b"/tools/index.html").path,
                         str(self.base / "app" / "index.html"))
        self.assertIsNone(WebRoot.from_config(self.load("")))

    def test_bad_values_are_refused_with_their_key(self):
        for text, wanted in [
            ('[web.mounts]\n"tools" = "x"\n', "[web] mounts.'tools': expected a URL path"),
            ('[web.mounts]\n"/clientinfo" = "x"\n', "/clientinfo is the server's own path"),
            ('[web.mounts]\n"/clientinfo/x" = "x"\n', "/clientinfo is the server's own path"),
            ('[web.mounts]\n"/" = "x"\n', "[web] mounts.'/'"),
            ('[web.mounts]\n"/a/../b" = "x"\n', "expected a URL path prefix"),
            ('[web.mounts]\n"/a%2f" = "x"\n', "expected a URL path prefix"),
            ('[web.mounts]\n"/a" = 3\n', "expected a directory path"),
            ('[web]\nindex = ["a/b.html"]\n', "[web] index: item 1: expected a file name"),
            ('[web]\nroot = "x"\nspa_fallback = "../x.html"\n', "[web] spa_fallback"),
            ('[web]\nspa_fallback = "index.html"\n', "needs [web] root"),
            ('[web]\ncache_max_age = -1\n', "[web] cache_max_age"),
            ('[web]\nlisting = true\n', "[web] listing: unknown key"),
        ]:
            with self.assertRaises(cfg.ConfigError) as caught:
                self.load(text)
            self.assertIn(wanted, str(caught.exception), text)

    def test_config_check_reports_a_missing_root(self):
        (self.base / "a-file").write_text("x")
        (self.base / "app").mkdir()
        for text, wanted in [
            ('[web]\nroot = "missing"\n', "[web] root: '%s' does not exist"
             % (self.base / "missing")),
            ('[web]\nroot = "a-file"\n', "is not a directory"),
            ('[web.mounts]\n"/m" = "missing"\n', "[web] mounts.'/m': "),
            ('[web]\nroot = "app"\nspa_fallback = "index.html"\n',
             "[web] spa_fallback: 'index.html' is not a file under [web] root"),
        ]:
            with self.assertRaises(cfg.ConfigError) as caught:
                check_startable(self.load(text))
            self.assertIn(wanted, str(caught.exception), text)

    @defer.inlineCallbacks
    def test_a_start_with_a_missing_root_fails(self):
        from twisted.logger import capturedLogs, formatEvent

        from wyseman.application.service import GatewayService
        db = fresh_database(self)
        config = make_config(db, web={"root": str(self.base / "missing")})
        service = GatewayService(config, lambda: defer.succeed(db.dsn), reactor)
        service.stop_reactor_on_failure = False
        with capturedLogs() as events:
            yield service.startService()
        failure = yield self.assertFailure(service.ready, cfg.ConfigError)
        self.assertIn("[web] root: ", str(failure))
        self.assertEqual(service.ports, [])
        said = [formatEvent(e) for e in events if e.get("log_level").name == "error"]
        self.assertEqual(len(said), 1)
        self.assertIn("does not exist", said[0])
