"""A project's published signing keys, as Supabase Auth serves them: ES256 key pairs whose
public halves a local HTTP server publishes as JWKS, and user tokens signed with them.

Shared by the web API's tests and the direct transport's: both verify with the same
:class:`portraitkit.auth.TokenVerifier`, fed over HTTP as in production.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from portraitkit.auth import LocalUser

KID = "test-key-1"
PATH = "/auth/v1/.well-known/jwks.json"


class Jwks:
    """Key pairs by ``kid``, their public halves served at ``url``; ``requests`` counts the
    fetches. :meth:`rotate` publishes a new key, as a project rotating its keys does."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {KID: self.private}
        self.requests = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.requests += 1
                body = json.dumps(jwks.published()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{PATH}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def published(self) -> dict[str, Any]:
        """The JWKS document: public keys only."""
        return {
            "keys": [
                {
                    **json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())),
                    "kid": kid,
                    "alg": "ES256",
                    "use": "sig",
                }
                for kid, key in self.keys.items()
            ]
        }

    def rotate(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def token(
        self,
        user: LocalUser,
        *,
        kid: str = KID,
        key: ec.EllipticCurvePrivateKey | None = None,
        ttl: int = 3600,
        **claims: Any,
    ) -> str:
        """A user's access token with the claims Supabase Auth gives it, signed with
        ``key``, else the key ``kid`` names (else the first one) and naming ``kid``."""
        now = int(time.time())
        payload = {
            "sub": str(user.id),
            "aud": "authenticated",
            "role": "authenticated",
            "email": user.email,
            "iat": now,
            "exp": now + ttl,
            **claims,
        }
        signer = key or self.keys.get(kid, self.private)
        return jwt.encode(payload, signer, algorithm="ES256", headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
