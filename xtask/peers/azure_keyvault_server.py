#!/usr/bin/env python3
"""An HTTPS Azure Key Vault test server, started on loopback by `cargo xtask test`.

It is a test server, not an emulator: it implements the Key Vault data-plane operations the
HeliosDB Azure provider and its tests use (api-version 2025-07-01 shapes), with real
cryptography from the `cryptography` package, plus an Entra ID token endpoint so that
`ClientSecretCredential` runs for real.

Listeners:
* TLS (``--port``): the Key Vault data plane, ``POST /<tenant>/oauth2/v2.0/token`` and
  ``GET /healthz``. The certificate is made at start by a throwaway CA written to
  ``<state-dir>/ca.pem``; it covers localhost, kv.localhost, *.kv.localhost, hsm.localhost,
  *.hsm.localhost and 127.0.0.1.
* plain HTTP on 127.0.0.1 (``--control-port``): ``GET /healthz`` and the test controls
  ``/_test/inject``, ``/_test/requests``, ``/_test/reset``, ``/_test/token``, ``/_test/vault``.

Vaults are namespaces chosen by the request's Host (port ignored): ``<label>.kv.localhost`` is
the standard vault ``<label>`` (challenge resource ``https://kv.localhost``),
``<label>.hsm.localhost`` the Managed HSM ``<label>`` (``https://hsm.localhost``, oct-HSM keys
allowed), ``127.0.0.1``/``localhost`` the shared standard vault ``default``
(``https://localhost``). Every test uses a fresh label, so it starts with an empty vault.

Control API (plain HTTP, JSON bodies, 200 on success, 400 with a JSON error otherwise):
* ``GET /healthz`` -> ``{"status": "ok"}``.
* ``POST /_test/inject {"vault", "op", "count", "status", "retry_after"?, "delay_ms"?, "body"?}``:
  the next ``count`` authenticated data-plane requests of vault ``vault`` whose operation is
  ``op`` (create, import, get, update, list, versions, rotate, delete, wrapkey, unwrapkey,
  encrypt, decrypt, or ``*``) wait ``delay_ms``, then get ``status`` (with ``Retry-After`` and
  ``body`` when given; a Key Vault JSON error by default). ``status`` 0 only delays. The vault
  ``_entra`` with op ``token`` applies to the token endpoint.
* ``GET /_test/requests?vault=<label>`` -> ``{"requests": [{"method", "path", "query",
  "status"}]}``: every data-plane request of that vault in order (401 challenges and injected
  answers included); ``_entra`` logs the token endpoint.
* ``POST /_test/reset {"vault"}``: forgets that vault (keys, settings, injections, log).
* ``POST /_test/token {"vault"?}`` -> ``{"access_token"}``: a bearer token valid for 1 hour, for
  every vault or only ``vault``.
* ``POST /_test/vault {"vault", "recovery_level"?, "page_size"?}`` (and ``GET
  /_test/vault?vault=``) -> ``{"vault", "recovery_level", "page_size"}``: the vault's
  ``recoveryLevel`` (default ``Recoverable+Purgeable``; ``Recoverable`` = purge protection on)
  and list page size (default 25).

Logs go to stderr: one line per request (method, path, status); never a token, secret or key.
"""

import argparse
import base64
import collections
import datetime
import hmac
import ipaddress
import json
import os
import secrets
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_RECOVERY_LEVEL = "Recoverable+Purgeable"
DEFAULT_PAGE_SIZE = 25
TOKEN_LIFETIME = 3600
# The control label of the Entra ID token endpoint (its request log and injections, op "token").
ENTRA = "_entra"
RSA_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
EC_OPS = ["sign", "verify"]
OCT_OPS = ["wrapKey", "unwrapKey", "encrypt", "decrypt"]
RSA_CREATE_SIZES = (2048, 3072, 4096)
OAEP = {
    "RSA-OAEP-256": lambda: padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    ),
    "RSA-OAEP": lambda: padding.OAEP(
        mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None
    ),
}
KW_BITS = {"A128KW": 128, "A192KW": 192, "A256KW": 256}
GCM_BITS = {"A128GCM": 128, "A192GCM": 192, "A256GCM": 256}
CURVES = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
    "P-256K": ec.SECP256K1,
}
DEFAULT_ERROR = {
    429: ("Throttled", "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached"),
    500: ("InternalServerError", "The server encountered an internal error (injected by the test)."),
    502: ("BadGateway", "Bad gateway (injected by the test)."),
    503: ("ServiceUnavailable", "The service is unavailable (injected by the test)."),
    504: ("GatewayTimeout", "Gateway timeout (injected by the test)."),
}


def log(msg):
    sys.stderr.write(f"azure-kv-test-server: {msg}\n")
    sys.stderr.flush()


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64u(s):
    if not isinstance(s, str):
        raise ValueError("not a base64url string")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def int_b64u(i):
    return b64u(i.to_bytes((i.bit_length() + 7) // 8 or 1, "big"))


def b64u_int(s):
    return int.from_bytes(unb64u(s), "big")


class ApiError(Exception):
    """An error answer: `{"error": {"code", "message", "innererror"?}}`."""

    def __init__(self, status, code, message, inner=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner

    def body(self):
        err = {"code": self.code, "message": self.message}
        if self.inner:
            err["innererror"] = {"code": self.inner}
        return {"error": err}


def bad(message):
    return ApiError(400, "BadParameter", message)


# ------------------------------------------------------------------------------------------
# State (one lock)

LOCK = threading.Lock()


class Version:
    def __init__(self, kty, size, ops, material, tags, enabled=True, exp=None, nbf=None,
                 exportable=None, crv=None):
        self.id = secrets.token_hex(16)
        self.kty = kty
        self.size = size
        self.crv = crv
        self.ops = list(ops)
        self.material = material  # RSA/EC private key object, or bytes for oct
        self.tags = dict(tags or {})
        self.enabled = enabled
        self.exp = exp
        self.nbf = nbf
        self.exportable = exportable
        now = int(time.time())
        self.created = now
        self.updated = now


class Key:
    def __init__(self, name):
        self.name = name
        self.versions = []
        self.deleted = False


class Vault:
    def __init__(self, label):
        self.label = label
        self.recovery_level = DEFAULT_RECOVERY_LEVEL
        self.page_size = DEFAULT_PAGE_SIZE
        self.keys = {}
        self.inject = collections.deque()
        self.log = []
        # Answer with `Connection: close` (one TCP connection per request, as moto does), so
        # a TCP fault proxy's cut_after_requests counts requests.
        self.close_connections = False


VAULTS = {}
TOKENS = {}  # token -> (expiry, vault label or None for every vault)


def vault(label):
    """The vault named `label` (created empty on first use). Call with LOCK held."""
    v = VAULTS.get(label)
    if v is None:
        v = VAULTS[label] = Vault(label)
    return v


def new_token(label=None):
    tok = secrets.token_hex(32)
    with LOCK:
        TOKENS[tok] = (time.time() + TOKEN_LIFETIME, label)
    return tok


def token_ok(header, label):
    if not header or not header.startswith("Bearer "):
        return False
    tok = header[len("Bearer "):].strip()
    with LOCK:
        entry = TOKENS.get(tok)
    if entry is None:
        return False
    expiry, scope = entry
    return time.time() < expiry and (scope is None or scope == label)


# ------------------------------------------------------------------------------------------
# Certificates


def make_certs(state_dir):
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HeliosDB Key Vault test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.DNSName("kv.localhost"),
            x509.DNSName("*.kv.localhost"),
            x509.DNSName("hsm.localhost"),
            x509.DNSName("*.hsm.localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = os.path.join(state_dir, "ca.pem")
    tmp = ca_path + f".{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    os.chmod(tmp, 0o644)
    os.replace(tmp, ca_path)
    # The leaf key lives in a 0600 file only while the TLS context loads it.
    key_path = os.path.join(state_dir, f"azure-kv-{os.getpid()}-leaf.pem")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(key_path)
        ctx.set_alpn_protocols(["http/1.1"])
    finally:
        os.unlink(key_path)
    return ctx, ca_path


# ------------------------------------------------------------------------------------------
# Key bundles


def public_jwk(ver, kid):
    jwk = {"kid": kid, "kty": ver.kty, "key_ops": list(ver.ops)}
    if ver.kty.startswith("RSA"):
        nums = ver.material.public_key().public_numbers()
        jwk["n"] = int_b64u(nums.n)
        jwk["e"] = int_b64u(nums.e)
    elif ver.kty.startswith("EC"):
        nums = ver.material.public_key().public_numbers()
        size = (ver.material.curve.key_size + 7) // 8
        jwk["crv"] = ver.crv
        jwk["x"] = b64u(nums.x.to_bytes(size, "big"))
        jwk["y"] = b64u(nums.y.to_bytes(size, "big"))
    # oct keys: the key material is never returned.
    return jwk


def attributes(ver, v):
    a = {
        "enabled": ver.enabled,
        "created": ver.created,
        "updated": ver.updated,
        "recoveryLevel": v.recovery_level,
        "recoverableDays": 90,
    }
    if ver.exp is not None:
        a["exp"] = ver.exp
    if ver.nbf is not None:
        a["nbf"] = ver.nbf
    if ver.exportable is not None:
        a["exportable"] = ver.exportable
    return a


def bundle(host, key, ver, v):
    out = {
        "key": public_jwk(ver, f"https://{host}/keys/{key.name}/{ver.id}"),
        "attributes": attributes(ver, v),
    }
    if ver.tags:
        out["tags"] = dict(ver.tags)
    return out


def item(kid, ver, v):
    out = {"kid": kid, "attributes": attributes(ver, v)}
    if ver.tags:
        out["tags"] = dict(ver.tags)
    return out


# ------------------------------------------------------------------------------------------
# Request parsing helpers


def check_attrs(body):
    attrs = body.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise bad("attributes must be an object")
    return attrs


def check_tags(tags):
    if tags is None:
        return None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(val, str) for k, val in tags.items()
    ):
        raise bad("tags must be an object of strings")
    return tags


def check_ops(kty, ops):
    allowed = RSA_OPS if kty.startswith("RSA") else EC_OPS if kty.startswith("EC") else OCT_OPS
    if ops is None:
        return list(allowed) if not kty.startswith("oct") else list(OCT_OPS)
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise bad("key_ops must be a list of strings")
    wrong = [o for o in ops if o not in allowed]
    if wrong:
        raise bad(
            "Unsupported key operation(s): "
            + ", ".join(f'"{o}"' for o in wrong)
            + ". Supported values are "
            + ", ".join(f'"{o}"' for o in allowed)
            + "."
        )
    return list(ops)


def check_name(name):
    if not name or len(name) > 127 or not all(c.isalnum() and c.isascii() or c == "-" for c in name):
        raise bad(f"The request URI contains an invalid name: {name}")


def generate(kty, body, hsm):
    """(kty, size, crv, material) for a create request."""
    if kty in ("RSA", "RSA-HSM"):
        size = body.get("key_size") or 2048
        if size not in RSA_CREATE_SIZES:
            raise bad(f"Invalid key size {size}; supported sizes are 2048, 3072 and 4096.")
        return kty, size, None, rsa.generate_private_key(65537, size)
    if kty in ("EC", "EC-HSM"):
        crv = body.get("crv") or "P-256"
        if crv not in CURVES:
            raise bad(f"Unsupported curve {crv}.")
        key = ec.generate_private_key(CURVES[crv]())
        return kty, key.curve.key_size, crv, key
    if kty in ("oct", "oct-HSM"):
        if not hsm:
            raise bad(f"Key type {kty} is not supported by a standard vault; use a Managed HSM.")
        size = body.get("key_size") or 256
        if size not in (128, 192, 256):
            raise bad(f"Invalid key size {size} for {kty}; supported sizes are 128, 192 and 256.")
        return kty, size, None, os.urandom(size // 8)
    raise bad(f"Unsupported key type {kty!r}.")


def from_jwk(jwk, hsm_flag, hsm):
    """(kty, size, crv, material) for an import request."""
    if not isinstance(jwk, dict):
        raise bad("key must be a JSON Web Key object")
    kty = jwk.get("kty")
    try:
        if kty in ("RSA", "RSA-HSM"):
            if "d" not in jwk:
                raise bad("The RSA key to import has no private part (d).")
            pub = rsa.RSAPublicNumbers(b64u_int(jwk["e"]), b64u_int(jwk["n"]))
            priv = rsa.RSAPrivateNumbers(
                p=b64u_int(jwk["p"]), q=b64u_int(jwk["q"]), d=b64u_int(jwk["d"]),
                dmp1=b64u_int(jwk["dp"]), dmq1=b64u_int(jwk["dq"]), iqmp=b64u_int(jwk["qi"]),
                public_numbers=pub,
            ).private_key()
            out = "RSA-HSM" if (hsm_flag or kty == "RSA-HSM") else "RSA"
            return out, priv.key_size, None, priv
        if kty in ("EC", "EC-HSM"):
            crv = jwk.get("crv")
            if crv not in CURVES:
                raise bad(f"Unsupported curve {crv}.")
            pub = ec.EllipticCurvePublicNumbers(b64u_int(jwk["x"]), b64u_int(jwk["y"]), CURVES[crv]())
            priv = ec.EllipticCurvePrivateNumbers(b64u_int(jwk["d"]), pub).private_key()
            out = "EC-HSM" if (hsm_flag or kty == "EC-HSM") else "EC"
            return out, priv.curve.key_size, crv, priv
        if kty in ("oct", "oct-HSM"):
            if not hsm:
                raise bad(f"Key type {kty} is not supported by a standard vault; use a Managed HSM.")
            k = unb64u(jwk["k"])
            if len(k) * 8 not in (128, 192, 256):
                raise bad(f"Invalid key size {len(k) * 8} for {kty}.")
            return "oct-HSM", len(k) * 8, None, k
    except ApiError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise bad(f"The key to import is not a valid {kty} JSON Web Key: {e}")
    raise bad(f"Unsupported key type {kty!r}.")


# ------------------------------------------------------------------------------------------
# Cryptographic operations (outside the lock)


def crypto(op, ver, body):
    """Runs wrapkey/unwrapkey/encrypt/decrypt on one version; returns the result fields."""
    alg = body.get("alg")
    if not isinstance(alg, str):
        raise bad("alg is required")
    try:
        value = unb64u(body.get("value", ""))
    except (ValueError, TypeError):
        raise bad("value is not base64url")
    rsa_key = ver.kty.startswith("RSA")
    oct_key = ver.kty.startswith("oct")
    if alg == "RSA1_5":
        raise bad("Algorithm RSA1_5 is not allowed by this test server (refused, as for new keys).")
    if alg in OAEP:
        if not rsa_key:
            raise bad(f"Algorithm {alg} is not supported for key type {ver.kty}.")
        if op in ("wrapkey", "encrypt"):
            return {"value": b64u(ver.material.public_key().encrypt(value, OAEP[alg]()))}
        try:
            return {"value": b64u(ver.material.decrypt(value, OAEP[alg]()))}
        except ValueError:
            raise bad("Decryption failed: the ciphertext is not valid for this key.")
    if alg in KW_BITS and op in ("wrapkey", "unwrapkey"):
        if not oct_key or ver.size != KW_BITS[alg]:
            raise bad(f"Algorithm {alg} is not supported for key type {ver.kty} of size {ver.size}.")
        if op == "wrapkey":
            try:
                return {"value": b64u(aes_key_wrap(ver.material, value))}
            except ValueError as e:
                raise bad(f"Key wrap failed: {e}")
        try:
            return {"value": b64u(aes_key_unwrap(ver.material, value))}
        except (InvalidUnwrap, ValueError):
            raise bad("Key unwrap failed: integrity check failed.")
    if alg in GCM_BITS and op in ("encrypt", "decrypt"):
        if not oct_key or ver.size != GCM_BITS[alg]:
            raise bad(f"Algorithm {alg} is not supported for key type {ver.kty} of size {ver.size}.")
        try:
            aad = unb64u(body["aad"]) if body.get("aad") else None
        except (ValueError, TypeError):
            raise bad("aad is not base64url")
        gcm = AESGCM(ver.material)
        if op == "encrypt":
            if body.get("iv"):
                raise bad("The iv is generated by the service; do not send one for encrypt.")
            iv = os.urandom(12)
            out = gcm.encrypt(iv, value, aad)
            return {"alg": alg, "value": b64u(out[:-16]), "iv": b64u(iv), "tag": b64u(out[-16:])}
        try:
            iv = unb64u(body.get("iv") or "")
            tag = unb64u(body.get("tag") or "")
        except (ValueError, TypeError):
            raise bad("iv or tag is not base64url")
        if not iv or len(tag) != 16:
            raise bad("decrypt with A256GCM needs the iv and the 16-byte tag")
        try:
            return {"alg": alg, "value": b64u(gcm.decrypt(iv, value + tag, aad))}
        except InvalidTag:
            raise bad("Decryption failed: the authentication tag does not match.")
    raise bad(f"Algorithm {alg} is not supported for {op} with key type {ver.kty}.")


# ------------------------------------------------------------------------------------------
# The data plane


def classify(host):
    """(label, is_hsm, challenge resource) for a Host header."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    name = name.lower().rstrip(".")
    for suffix, hsm in ((".kv.localhost", False), (".hsm.localhost", True)):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], hsm, "https://" + suffix[1:]
    return "default", False, "https://localhost"


def route(method, parts):
    """(op, name, version, sub) for a data-plane path split on '/', or None."""
    if not parts or parts[0] != "keys":
        return None
    n = len(parts)
    if n == 1 or (n == 2 and parts[1] == ""):
        return ("list", None, None, None) if method == "GET" else None
    name = parts[1]
    if n == 2:
        return {"GET": ("get", name, "", None), "PATCH": ("update", name, "", None),
                "PUT": ("import", name, None, None), "DELETE": ("delete", name, None, None)}.get(method)
    third = parts[2]
    if n == 3:
        if method == "POST" and third in ("create", "rotate"):
            return (third, name, None, None)
        if method == "POST" and third in ("wrapkey", "unwrapkey", "encrypt", "decrypt"):
            return (third, name, "", None)
        if method == "GET" and third == "versions":
            return ("versions", name, None, None)
        if method == "GET":
            return ("get", name, third, None)
        if method == "PATCH":
            return ("update", name, third, None)
        return None
    if n == 4 and method == "POST" and parts[3] in ("wrapkey", "unwrapkey", "encrypt", "decrypt"):
        return (parts[3], name, third, None)
    if n == 4 and parts[3] == "" and method in ("GET", "PATCH"):
        return ("get" if method == "GET" else "update", name, third, None)
    return None


def not_found(name, v):
    return ApiError(
        404, "KeyNotFound",
        f"A key with (name/id) {name} was not found in this key vault. If you recently deleted "
        f"this key you may be able to recover it using the correct recovery command.",
    )


def find(v, name, version):
    """(key, version) for a request, or ApiError 404. Call with LOCK held."""
    key = v.keys.get(name.lower())
    if key is None or key.deleted or not key.versions:
        raise not_found(name, v)
    if version == "" or version is None:
        return key, key.versions[-1]
    for ver in key.versions:
        if ver.id == version.lower():
            return key, ver
    raise not_found(f"{name}/{version}", v)


def usable(ver, op):
    """Refuses a disabled, expired or not-yet-valid version (403)."""
    if not ver.enabled:
        raise ApiError(403, "Forbidden", f"Operation {op} is not allowed on a disabled key.", "KeyDisabled")
    now = time.time()
    if ver.exp is not None and now > ver.exp:
        raise ApiError(403, "Forbidden", f"Operation {op} is not allowed on an expired key.", "KeyExpired")
    if ver.nbf is not None and now < ver.nbf:
        raise ApiError(403, "Forbidden", f"Operation {op} is not allowed on a key before its activation time.", "KeyNotYetValid")


OP_NAMES = {"wrapkey": "wrapKey", "unwrapkey": "unwrapKey", "encrypt": "encrypt", "decrypt": "decrypt"}


def data_plane(op, name, version, body, host, label, hsm, query):
    """Runs one authenticated data-plane operation; returns the JSON answer (status 200)."""
    if name is not None and op not in ("list",):
        check_name(name)
    if op in ("wrapkey", "unwrapkey", "encrypt", "decrypt"):
        with LOCK:
            v = vault(label)
            key, ver = find(v, name, version)
            usable(ver, OP_NAMES[op])
            if OP_NAMES[op] not in ver.ops:
                raise ApiError(403, "Forbidden", f"Operation {OP_NAMES[op]} is not permitted on this key.",
                               "KeyOperationForbidden")
            kid = f"https://{host}/keys/{key.name}/{ver.id}"
        out = crypto(op, ver, body)
        out["kid"] = kid
        return out
    if op == "create" or op == "import":
        attrs = check_attrs(body)
        tags = check_tags(body.get("tags"))
        if op == "create":
            kty = body.get("kty")
            if not isinstance(kty, str):
                raise bad("kty is required")
            kty, size, crv, material = generate(kty, body, hsm)
            ops = check_ops(kty, body.get("key_ops"))
        else:
            kty, size, crv, material = from_jwk(body.get("key"), bool(body.get("Hsm")), hsm)
            ops = check_ops(kty, (body.get("key") or {}).get("key_ops"))
        ver = Version(
            kty, size, ops, material, tags,
            enabled=attrs.get("enabled", True) is not False,
            exp=attrs.get("exp"), nbf=attrs.get("nbf"),
            exportable=bool(attrs.get("exportable", False)) if hsm else attrs.get("exportable"),
            crv=crv,
        )
        with LOCK:
            v = vault(label)
            key = v.keys.get(name.lower())
            if key is None or key.deleted:
                key = v.keys[name.lower()] = Key(name)
            key.versions.append(ver)
            return bundle(host, key, ver, v)
    if op == "rotate":
        with LOCK:
            v = vault(label)
            key, last = find(v, name, "")
            kty, size, crv, ops = last.kty, last.size, last.crv, list(last.ops)
        if kty.startswith("RSA"):
            material = rsa.generate_private_key(65537, size)
        elif kty.startswith("EC"):
            material = ec.generate_private_key(CURVES[crv]())
        else:
            material = os.urandom(size // 8)
        # A rotated version carries no tags (like a version made by a rotation policy).
        ver = Version(kty, size, ops, material, {}, exportable=last.exportable, crv=crv)
        with LOCK:
            v = vault(label)
            key, _ = find(v, name, "")
            key.versions.append(ver)
            return bundle(host, key, ver, v)
    if op == "get":
        with LOCK:
            v = vault(label)
            key, ver = find(v, name, version)
            usable(ver, "get")
            return bundle(host, key, ver, v)
    if op == "update":
        attrs = check_attrs(body)
        tags = check_tags(body.get("tags"))
        with LOCK:
            v = vault(label)
            key, ver = find(v, name, version)
            if body.get("key_ops") is not None:
                ver.ops = check_ops(ver.kty, body.get("key_ops"))
            if "enabled" in attrs:
                ver.enabled = bool(attrs["enabled"])
            if "exp" in attrs:
                ver.exp = attrs["exp"]
            if "nbf" in attrs:
                ver.nbf = attrs["nbf"]
            if tags is not None:
                ver.tags = dict(tags)
            ver.updated = int(time.time())
            return bundle(host, key, ver, v)
    if op == "delete":
        with LOCK:
            v = vault(label)
            key, ver = find(v, name, "")
            out = bundle(host, key, ver, v)
            key.deleted = True
            out["recoveryId"] = f"https://{host}/deletedkeys/{key.name}"
            out["deletedDate"] = int(time.time())
            return out
    if op in ("list", "versions"):
        try:
            skip = int((query.get("$skiptoken") or ["0"])[0])
            maxresults = int((query.get("maxresults") or ["25"])[0])
        except ValueError:
            raise bad("$skiptoken and maxresults must be integers")
        with LOCK:
            v = vault(label)
            if op == "list":
                rows = [
                    item(f"https://{host}/keys/{k.name}", k.versions[-1], v)
                    for k in v.keys.values()
                    if not k.deleted and k.versions
                ]
                base = "/keys"
            else:
                key, _ = find(v, name, "")
                rows = [item(f"https://{host}/keys/{key.name}/{ver.id}", ver, v) for ver in key.versions]
                base = f"/keys/{key.name}/versions"
            size = max(1, min(v.page_size, maxresults, 25))
        page = rows[skip: skip + size]
        nxt = None
        if skip + size < len(rows):
            nxt = (
                f"https://{host}{base}?api-version={(query.get('api-version') or ['2025-07-01'])[0]}"
                f"&$skiptoken={skip + size}&maxresults={size}"
            )
        return {"value": page, "nextLink": nxt}
    raise bad(f"unsupported operation {op}")


class Handler(BaseHTTPRequestHandler):
    """Shared request plumbing: JSON answers with Content-Length, HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    timeout = 300
    server_version = "HeliosDBKeyVaultTest/1"

    def log_message(self, fmt, *args):  # the request log is written by `answer`
        pass

    def read_body(self):
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = 0
        return self.rfile.read(n) if n > 0 else b""

    def record(self, status):
        """Writes the pending request-log entry (set by the data plane and the token endpoint)
        with its status, once. Called before the answer is sent, so a client never sees an
        answer whose log entry is not there yet."""
        target = getattr(self, "log_target", None)
        if target is None:
            return
        self.log_target = None
        label, entry = target
        with LOCK:
            vault(label).log.append(dict(entry, status=status))

    def answer(self, status, obj, headers=None, raw=None):
        self.record(status)
        data = raw if raw is not None else (b"" if obj is None else json.dumps(obj).encode())
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if getattr(self, "close_after", False):
            self.send_header("Connection", "close")
        for k, val in (headers or {}).items():
            self.send_header(k, val)
        self.end_headers()
        self.wfile.write(data)
        log(f"{self.command} {urllib.parse.urlsplit(self.path).path} -> {status}")

    def json_body(self, raw):
        if not raw:
            return {}
        try:
            out = json.loads(raw)
        except ValueError:
            raise bad("The request body is not valid JSON.")
        if not isinstance(out, dict):
            raise bad("The request body must be a JSON object.")
        return out


class DataHandler(Handler):
    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_PATCH(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        raw = self.read_body()
        parts = url.path.lstrip("/").split("/")
        if url.path == "/healthz":
            return self.answer(200, {"status": "ok"})
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"] and self.command == "POST":
            return self.token(parts[0], raw)
        host = self.headers.get("Host") or ""
        label, hsm, resource = classify(host)
        with LOCK:
            self.close_after = vault(label).close_connections
        self.log_target = (label, {"method": self.command, "path": url.path, "query": url.query})
        status = 500
        try:
            if not token_ok(self.headers.get("Authorization"), label):
                status = 401
                challenge = (
                    f'Bearer authorization="https://{host}/{self.server.tenant}", '
                    f'resource="{resource}"'
                )
                body = None if hsm else {"error": {"code": "Unauthorized",
                                                   "message": "Request is missing a Bearer or PoP token."}}
                return self.answer(401, body, {"WWW-Authenticate": challenge})
            r = route(self.command, parts)
            op = r[0] if r else "unknown"
            injected = self.injected(label, op)
            if injected:
                status = injected
                return
            if r is None:
                status = 400
                raise bad(f"The test server does not implement {self.command} {url.path}.")
            name, version = r[1], r[2]
            out = data_plane(op, name, version, self.json_body(raw), host, label, hsm,
                             urllib.parse.parse_qs(url.query))
            status = 200
            return self.answer(200, out)
        except ApiError as e:
            status = e.status
            return self.answer(e.status, e.body())
        except Exception as e:  # a server bug: say so, as a JSON error
            status = 500
            log(f"internal error: {type(e).__name__}: {e}")
            return self.answer(500, {"error": {"code": "InternalServerError",
                                               "message": f"test server bug: {type(e).__name__}"}})
        finally:
            # Answered already (the entry was written before the answer), or not at all.
            self.record(status)

    def injected(self, label, op):
        """Applies the next injection rule queued for (label, op): sleeps its delay, and answers
        with its status when it has one. Returns the status answered, or 0."""
        rule = None
        with LOCK:
            v = vault(label)
            for rl in v.inject:
                if rl["op"] in ("*", op) and rl["count"] > 0:
                    rl["count"] -= 1
                    rule = dict(rl)
                    break
            while v.inject and v.inject[0]["count"] <= 0:
                v.inject.popleft()
        if not rule:
            return 0
        if rule.get("delay_ms"):
            time.sleep(rule["delay_ms"] / 1000.0)
        status = rule.get("status")
        if not status:
            return 0
        headers = {}
        if rule.get("retry_after") is not None:
            headers["Retry-After"] = str(rule["retry_after"])
        body = rule.get("body")
        if body is None:
            code, msg = DEFAULT_ERROR.get(status, ("Injected", f"Injected status {status}."))
            body = {"error": {"code": code, "message": msg}}
            if label == ENTRA:
                body = {"error": "temporarily_unavailable", "error_description": msg,
                        "error_codes": [status]}
        self.answer(status, body, headers)
        return status

    def token(self, tenant, raw):
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"))
        one = lambda k: (form.get(k) or [""])[0]
        srv = self.server
        status = 200
        self.log_target = (ENTRA, {"method": "POST", "path": f"/{tenant}/oauth2/v2.0/token", "query": ""})
        try:
            injected = self.injected(ENTRA, "token")
            if injected:
                status = injected
                return
            if tenant != srv.tenant:
                status = 400
                return self.answer(400, {
                    "error": "invalid_request",
                    "error_description": f"AADSTS90002: Tenant '{tenant}' not found.",
                    "error_codes": [90002]})
            if one("grant_type") != "client_credentials":
                status = 400
                return self.answer(400, {
                    "error": "unsupported_grant_type",
                    "error_description": "AADSTS70003: The app requested an unsupported grant type.",
                    "error_codes": [70003]})
            if one("client_id") != srv.client_id:
                status = 400
                return self.answer(400, {
                    "error": "unauthorized_client",
                    "error_description": f"AADSTS700016: Application with identifier '{one('client_id')}' "
                                         f"was not found in the directory '{tenant}'.",
                    "error_codes": [700016]})
            if not hmac.compare_digest(one("client_secret").encode(), srv.client_secret.encode()):
                status = 401
                return self.answer(401, {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret "
                                         "being sent in the request is the client secret value, not the "
                                         "client secret ID.",
                    "error_codes": [7000215]})
            return self.answer(200, {
                "token_type": "Bearer", "expires_in": TOKEN_LIFETIME,
                "ext_expires_in": TOKEN_LIFETIME, "access_token": new_token()})
        finally:
            self.record(status)


class ControlHandler(Handler):
    timeout = 30

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        self.read_body()
        q = urllib.parse.parse_qs(url.query)
        if url.path == "/healthz":
            return self.answer(200, {"status": "ok"})
        if url.path == "/_test/requests":
            label = (q.get("vault") or [""])[0]
            with LOCK:
                rows = list(vault(label).log)
            return self.answer(200, {"requests": rows})
        if url.path == "/_test/vault":
            label = (q.get("vault") or [""])[0]
            with LOCK:
                v = vault(label)
                out = {"vault": label, "recovery_level": v.recovery_level, "page_size": v.page_size}
            return self.answer(200, out)
        return self.answer(404, {"error": {"code": "NotFound", "message": f"no control route {url.path}"}})

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        try:
            body = self.json_body(self.read_body())
            label = body.get("vault")
            if url.path == "/_test/token":
                return self.answer(200, {"access_token": new_token(label or None)})
            if not isinstance(label, str) or not label:
                raise bad("vault (a vault label) is required")
            if url.path == "/_test/inject":
                rule = {
                    "op": str(body.get("op") or "*").lower(),
                    "count": int(body.get("count", 1)),
                    "status": int(body.get("status") or 0),
                    "retry_after": body.get("retry_after"),
                    "delay_ms": int(body.get("delay_ms") or 0),
                    "body": body.get("body"),
                }
                with LOCK:
                    vault(label).inject.append(rule)
                return self.answer(200, {"vault": label, "queued": rule["count"]})
            if url.path == "/_test/reset":
                with LOCK:
                    VAULTS.pop(label, None)
                return self.answer(200, {"vault": label})
            if url.path == "/_test/vault":
                with LOCK:
                    v = vault(label)
                    if body.get("recovery_level") is not None:
                        v.recovery_level = str(body["recovery_level"])
                    if body.get("close_connections") is not None:
                        v.close_connections = bool(body["close_connections"])
                    if body.get("page_size") is not None:
                        ps = int(body["page_size"])
                        if ps < 1:
                            raise bad("page_size must be at least 1")
                        v.page_size = ps
                    out = {"vault": label, "recovery_level": v.recovery_level, "page_size": v.page_size}
                return self.answer(200, out)
            return self.answer(404, {"error": {"code": "NotFound", "message": f"no control route {url.path}"}})
        except ApiError as e:
            return self.answer(e.status, e.body())
        except (TypeError, ValueError) as e:
            return self.answer(400, {"error": {"code": "BadParameter", "message": str(e)}})


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def finish_request(self, request, client_address):
        # The handshake runs here, in the connection's own thread: a client that never
        # completes it cannot block the accept loop.
        request.settimeout(30)
        # An answer is two writes (head, then body): without TCP_NODELAY the body waits for
        # the client's delayed ACK of the head (about 40 ms per request on Linux).
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log(f"TLS handshake with {client_address[0]}:{client_address[1]} failed: {e}")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class ControlServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--state-dir", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--tenant", default=None)
    p.add_argument("--client-id", default=None)
    p.add_argument("--client-secret-file", default=None)
    a = p.parse_args()
    os.makedirs(a.state_dir, exist_ok=True)
    tenant = a.tenant or secrets.token_hex(16)
    client_id = a.client_id or secrets.token_hex(16)
    if a.client_secret_file:
        with open(a.client_secret_file, encoding="utf-8") as f:
            client_secret = f.read().strip()
        if not client_secret:
            sys.exit(f"{a.client_secret_file} is empty")
    else:
        client_secret = secrets.token_hex(16)

    ctx, ca_path = make_certs(a.state_dir)
    data = TLSServer(("127.0.0.1", a.port), DataHandler)
    data.ctx = ctx
    data.tenant = tenant
    data.client_id = client_id
    data.client_secret = client_secret
    control = ControlServer(("127.0.0.1", a.control_port), ControlHandler)
    port, cport = data.server_address[1], control.server_address[1]
    if a.port == 0 or a.control_port == 0:
        ports = os.path.join(a.state_dir, f"azure-kv-{os.getpid()}.ports.json")
        with open(ports, "w", encoding="utf-8") as f:
            json.dump({"port": port, "control_port": cport}, f)
    threading.Thread(target=data.serve_forever, name="tls", daemon=True).start()
    log(f"listening on https://127.0.0.1:{port} (control http://127.0.0.1:{cport}); CA {ca_path}; "
        f"tenant {tenant}, client id {client_id}")
    try:
        control.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    main()
