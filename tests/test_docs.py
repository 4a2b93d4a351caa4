"""Every relative link in README.md and docs/ resolves: the file exists and, for a link
into a Markdown page, the anchor is one of its headings (GitHub's slugs) or an explicit
``<a id>``."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text()
    found = {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}
    return found | set(re.findall(r'<a id="([^"]+)"', text))


class LinkTests(SynchronousTestCase):
    def test_every_relative_link_resolves(self) -> None:
        broken = []
        for page in PAGES:
            for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
                if re.match(r"[a-z]+:", link):
                    continue
                path, _, fragment = link.partition("#")
                target = (page.parent / path).resolve() if path else page
                if not target.exists():
                    broken.append(f"{page.name}: {link} (no such file)")
                elif fragment and target.suffix == ".md" and fragment not in anchors(target):
                    broken.append(f"{page.name}: {link} (no such heading)")
        self.assertEqual(broken, [])

    def test_the_slugs_are_githubs(self) -> None:
        self.assertEqual(slug("ws:// or wss://"), "ws-or-wss")
        self.assertEqual(slug("6.1 Framing"), "61-framing")


class SpecVectorTests(SynchronousTestCase):
    def test_the_test_vector_in_the_spec_verifies(self) -> None:
        """docs/protocol.md, 4.8: the values an implementer copies verify with the
        server's own check, and are the suite's vector."""
        import json

        from tests.vectors import VECTOR_JWK, VECTOR_MESSAGE, VECTOR_PUB, VECTOR_SIGN
        from wyseman.auth import credentials
        text = (ROOT / "docs" / "protocol.md").read_text()
        section = text.split("### 4.8 Test vector", 1)[1].split("\n## ", 1)[0]
        jwk_text, message, sign, pub = re.findall(r"```\w*\n(.*?)\n\s*```", section, re.S)
        jwk = json.loads(jwk_text)
        message_bytes = message.strip().encode("utf-8")
        self.assertTrue(credentials.verify_signature(jwk, message_bytes, sign.strip()))
        self.assertFalse(credentials.verify_signature(jwk, message_bytes + b" ",
                                                      sign.strip()))
        self.assertEqual((jwk, message_bytes, sign.strip(), pub.strip()),
                         (VECTOR_JWK, VECTOR_MESSAGE, VECTOR_SIGN, VECTOR_PUB))
        pub_json, decoded = credentials.decode_public_jwk(pub.strip())
        self.assertEqual(decoded["x"], jwk["x"])
