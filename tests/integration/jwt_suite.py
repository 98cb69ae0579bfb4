#!/usr/bin/python3
"""jwt_suite.py - client tokens (JWT) on the event routes: tokens minted here
(HS256 with hmac; RS256 and ES256 with keys the openssl command makes and
signs with) open GET /ws and GET/POST /events/{...} within their claims, and
nothing else; expired, unsigned, wrongly signed, confused (HS256 signed with
the public key), oversized and garbage tokens are 401 with a code; asking
for more than the claims is 403 forbidden naming the pattern; "sub" is
logged; a websocket is closed (1008) when its token expires; the API token
keeps full power; and the service still answers after the garbage.

How it runs is tbharness.py's. CTest runs it as integration_jwt; by hand:
TASKBUS_BIN=build/taskbus python3 tests/integration/jwt_suite.py [WORD...].
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (H, T, TaskbusServer, ahttp, check,  # noqa: E402
                       check_envelope, check_status, free_port, poll_until,
                       post, upgrade_refused)

ADMIN = "admin-t0ken_for-the-jwt-suite"
SECRET = "jwt-suite-secret-0123456789abcdef"  # 33 bytes
ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}
MAX_SIZE = 1024


# ------------------------------------------------------------------ minting

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def der_to_raw(der):
    """An ECDSA signature from openssl (DER SEQUENCE of r and s) as JOSE
    wants it: r and s, 32 bytes each."""
    check(der[0] == 0x30, "not a DER signature")
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        check(der[i] == 2, "not a DER integer")
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(32, b"\0")
        i += 2 + n
    return out


def mint(claims, alg="HS256", key=SECRET, header=None):
    """A token: key is the HMAC secret (str or bytes) for HS256, the private
    key file for RS256 and ES256."""
    h = header if header is not None else {"alg": alg, "typ": "JWT"}
    si = (b64(json.dumps(h).encode()) + "." +
          b64(json.dumps(claims).encode()))
    if alg == "HS256":
        k = key.encode() if isinstance(key, str) else key
        sig = hmac.new(k, si.encode(), hashlib.sha256).digest()
    elif alg == "none":
        sig = b""
    else:
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key],
                             input=si.encode(), capture_output=True,
                             check=True, timeout=T(10)).stdout
        if alg == "ES256":
            sig = der_to_raw(sig)
    return si + "." + b64(sig)


def claims(sub="alice", ttl=300, **more):
    c = {"sub": sub, "exp": int(time.time()) + ttl}
    c.update(more)
    return c


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def q(token):
    return urllib.parse.quote(token, safe="")


def keys():
    """Key pairs in H.root, made once: {name: path}."""
    d = os.path.join(H.root, "keys")
    if os.path.isdir(d):
        return {n[:-4]: os.path.join(d, n) for n in os.listdir(d)}
    os.makedirs(d)

    def run(*argv):
        subprocess.run(argv, check=True, capture_output=True, timeout=T(60))

    p = {n: os.path.join(d, n + ".pem") for n in
         ("rsa", "rsa_pub", "ec", "ec_pub")}
    run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
        "rsa_keygen_bits:2048", "-out", p["rsa"])
    run("openssl", "pkey", "-in", p["rsa"], "-pubout", "-out", p["rsa_pub"])
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
        "ec_paramgen_curve:P-256", "-out", p["ec"])
    run("openssl", "pkey", "-in", p["ec"], "-pubout", "-out", p["ec_pub"])
    return p


# ------------------------------------------------------------------ checks

async def refused_401(srv, path, code, what, headers=None):
    """An upgrade and a long poll on path with these credentials: both
    401 with code."""
    r = await asyncio.to_thread(upgrade_refused, srv.port, path, headers)
    check_status(r, 401, code, f"upgrade, {what}")
    check("invalid_token" in r.headers.get("www-authenticate", "")
          or code == "unauthorized",
          f"upgrade, {what}: WWW-Authenticate {r.headers!r}")
    lp = "/events/order.x?timeout=0" + path[len("/ws?events=order.*"):]
    r = await ahttp(srv.port, "GET", lp, headers=headers)
    check_status(r, 401, code, f"long poll, {what}")


async def forbidden(r, pattern, what):
    check_status(r, 403, "forbidden", what)
    check(r.json.get("pattern") == pattern,
          f"{what}: pattern {r.json.get('pattern')!r}, want {pattern!r}")


# ------------------------------------------------------------------ cases

SUBS = ["order.*", "chat.<room>.msg"]
DISPATCH = ["chat.lobby.msg"]


async def t_within_claims(ctx):
    """A client token subscribes and dispatches within its claims, over a
    websocket (?token= and Bearer) and over HTTP; more is forbidden, with
    the pattern named, and the connection stays usable."""
    srv = ctx.srv
    tok = mint(claims("alice", subscribe=SUBS, dispatch=DISPATCH))
    c = await ctx.connect(f"/ws?events=order.*&token={q(tok)}", label="q")
    b = await ctx.connect("/ws?events=chat.%3Croom%3E.msg", headers=bearer(tok),
                          label="bearer")
    await c.sync()
    await b.sync()
    i = await post(srv, "order.created", "o1", ADMIN_H)
    check_envelope(await c.event(), "order.created", "o1", i)
    # Within: narrower patterns and names. Beyond: each named.
    r = await c.request({"subscribe": ["order.<id>", "chat.a.msg"]})
    check(r.get("ok") == "subscribe", f"subscribe within: {r}")
    for pat in ("*.created", "order.*.x", "chat.*.typing", "order"):
        r = await c.request({"subscribe": ["order.created", pat], "ref": 1})
        check(r.get("error") == "forbidden" and r.get("pattern") == pat
              and r.get("ref") == 1, f"subscribe {pat}: {r}")
    r = await c.request({"subscribe": []})
    check(sorted(r["patterns"]) == ["chat.a.msg", "order.*", "order.<id>"],
          f"a refused subscribe added nothing: {r}")
    r = await c.request({"event": "chat.lobby.msg", "data": {"t": "hi"}})
    check(r.get("ok") == "dispatch", f"dispatch within: {r}")
    check_envelope(await b.event(), "chat.lobby.msg", {"t": "hi"}, r["id"])
    for name in ("chat.other.msg", "order.created"):
        r = await c.request({"event": name, "data": 1})
        check(r.get("error") == "forbidden" and r.get("pattern") == name,
              f"dispatch {name}: {r}")
    r = await c.request({"event": "bad..name"})
    check(r.get("error") == "bad_name", f"a bad name stays bad_name: {r}")
    await b.no_events(0.2)

    # Over HTTP: the long poll and POST /events.
    lp = asyncio.ensure_future(ahttp(srv.port, "GET",
                                     "/events/order.%3Cid%3E?timeout=20",
                                     headers=bearer(tok)))

    async def waiting():
        r = await ahttp(srv.port, "GET", "/tasks?state=running",
                        headers=ADMIN_H)
        return any(t.get("kind") == "http.wait" for t in r.json["tasks"])

    check(await poll_until(waiting, T(10)), "the long poll never waited")
    i = await post(srv, "order.7", "x", ADMIN_H)
    r = await lp
    check(r.status == 200 and r.json.get("id") == i, f"long poll: {r!r}")
    r = await ahttp(srv.port, "GET", "/events/*.created?timeout=0",
                    headers=bearer(tok))
    await forbidden(r, "*.created", "long poll beyond the claims")
    r = await ahttp(srv.port, "POST", "/events/chat.lobby.msg", "p",
                    bearer(tok))
    check_status(r, 202, what="POST /events within dispatch")
    r = await ahttp(srv.port, "POST", "/events/order.created", "p",
                    bearer(tok))
    await forbidden(r, "order.created", "POST /events beyond dispatch")
    # The upgrade itself: ?events= beyond the claims.
    r = await asyncio.to_thread(upgrade_refused, srv.port,
                                f"/ws?events=order.*,*.created&token={q(tok)}")
    await forbidden(r, "*.created", "?events= beyond the claims")
    # The history, read within the claims and beyond.
    r = await ahttp(srv.port, "GET", "/history?events=order.*",
                    headers=bearer(tok))
    check_status(r, 200, what="GET /history within the claims")
    check(i in [e["id"] for e in r.json["events"]],
          f"GET /history within the claims: {r.json}")
    r = await ahttp(srv.port, "GET", "/history?events=order.*,*.created",
                    headers=bearer(tok))
    await forbidden(r, "*.created", "GET /history beyond the claims")
    # sub is logged with the connection.
    check('client token of sub "alice"' in srv.log_text(),
          "the connection's sub is not logged")
    await c.close()
    await b.close()


async def t_tail_claims(ctx):
    """A claim "jo.>" lets the client subscribe to anything under jo., at
    any depth, and to "jo.>" itself, over ?events=, subscribe messages and
    the long poll; not to ">" nor to "jo" (beyond the claim)."""
    srv = ctx.srv
    tok = mint(claims("tail", subscribe=["jo.>"], dispatch=["jo.>"]))
    c = await ctx.connect(f"/ws?events=jo.%3E&token={q(tok)}", label="jo")
    await c.sync()
    r = await c.request({"subscribe": ["jo.a.b", "jo.*", "jo.<id>.>"]})
    check(r.get("ok") == "subscribe", f"subscribe within jo.>: {r}")
    for pat in (">", "jo", "*.>", "j.>"):
        r = await c.request({"subscribe": [pat], "ref": pat})
        check(r.get("error") == "forbidden" and r.get("pattern") == pat,
              f"subscribe {pat} with jo.>: {r}")
    r = await c.request({"event": "jo.x.y.z", "data": {"d": 1}})
    check(r.get("ok") == "dispatch", f"dispatch jo.x.y.z: {r}")
    check_envelope(await c.event(), "jo.x.y.z", {"d": 1}, r["id"])
    r = await asyncio.to_thread(upgrade_refused, srv.port,
                                f"/ws?events=%3E&token={q(tok)}")
    await forbidden(r, ">", "?events=> with jo.>")
    r = await ahttp(srv.port, "GET", "/events/%3E?timeout=0",
                    headers=bearer(tok))
    await forbidden(r, ">", "long poll > with jo.>")
    r = await ahttp(srv.port, "GET", "/events/jo.a.%3E?timeout=0",
                    headers=bearer(tok))
    check(r.status == 204, f"long poll jo.a.> with jo.>: {r!r}")
    await c.close()


async def t_claims_limit(ctx):
    """A token with no claims may connect and do nothing; claims that are
    not lists of patterns, or hold more than ws.max_patterns, are 401."""
    srv = ctx.srv
    bare = mint(claims("nobody"))
    c = await ctx.connect("/ws", headers=bearer(bare))
    r = await c.request({"subscribe": ["a"]})
    check(r.get("error") == "forbidden", f"no claims: {r}")
    r = await c.request({"event": "a", "data": 1})
    check(r.get("error") == "forbidden", f"no claims: {r}")
    four = mint(claims(subscribe=["a", "b", "c", "d.*"]))
    c4 = await ctx.connect("/ws?events=d.x", headers=bearer(four))
    await c4.sync()
    for what, cl in (("5 patterns", {"subscribe": ["a", "b", "c", "d", "e"]}),
                     ("a string", {"subscribe": "order.*"}),
                     ("a bad pattern", {"dispatch": ["a..b"]}),
                     ("sub a number", {"sub": 7}),
                     ("no exp", {"exp": None})):
        c2 = claims(**cl)
        if c2.get("exp") is None:
            del c2["exp"]
        await refused_401(srv, f"/ws?events=order.*&token={q(mint(c2))}",
                          "invalid_token", what)


async def t_refusals(ctx):
    """Expired, not yet valid, unsigned, wrongly signed, oversized and
    garbage tokens: 401 with a code, before anything is served."""
    srv = ctx.srv
    now = int(time.time())
    cases = [
        ("expired", mint({"sub": "x", "exp": now - 10}), "token_expired"),
        ("not yet valid", mint(claims(nbf=now + 3600)), "invalid_token"),
        ("a wrong secret", mint(claims(), key="another-secret-0123456789abcd"),
         "invalid_token"),
        ("alg none", mint(claims(), alg="none"), "invalid_token"),
        ("alg none, signed", mint(claims(), header={"alg": "none"}),
         "invalid_token"),
        ("alg HS512", mint(claims(), header={"alg": "HS512"}),
         "invalid_token"),
        ("a signature cut", mint(claims())[:-2], "invalid_token"),
        ("the payload swapped",
         ".".join([mint(claims())[:mint(claims()).index(".")],
                   b64(json.dumps(claims(subscribe=["*"])).encode()),
                   mint(claims()).rsplit(".", 1)[1]]), "invalid_token"),
        ("an aud", mint(claims(aud="other")), "invalid_token"),
    ]
    for what, tok, code in cases:
        await refused_401(srv, f"/ws?events=order.*&token={q(tok)}", code,
                          what)
        await refused_401(srv, "/ws?events=order.*", code, what + " (Bearer)",
                          bearer(tok))


def sized(n):
    """A valid token of exactly n bytes (padding its claims and header)."""
    for kid in range(0, 8):
        for pad in range(0, n):
            t = mint(claims(subscribe=["order.*"], pad="p" * pad),
                     header={"alg": "HS256", "kid": "k" * kid})
            if len(t) == n:
                return t
            if len(t) > n:
                break
    raise AssertionError(f"no token of {n} bytes")


async def t_size(ctx):
    """http.jwt_max_size (1024 here): a token of that size is served, one
    byte more is 401 token_too_large, in a header or the query."""
    srv = ctx.srv
    at = sized(MAX_SIZE)
    over = sized(MAX_SIZE + 1)
    c = await ctx.connect("/ws?events=order.*", headers=bearer(at))
    await c.sync()
    c2 = await ctx.connect(f"/ws?events=order.*&token={q(at)}")
    await c2.sync()
    await refused_401(srv, f"/ws?events=order.*&token={q(over)}",
                      "token_too_large", "one byte over (query)")
    await refused_401(srv, "/ws?events=order.*", "token_too_large",
                      "one byte over (Bearer)", bearer(over))
    await refused_401(srv, "/ws?events=order.*", "token_too_large",
                      "6 KiB", bearer(over + "A" * 5000))


async def t_garbage(ctx):
    """Garbage in every part of a token: each a 401, the service answers
    all along, and a good token still works after."""
    srv = ctx.srv
    good = mint(claims(subscribe=["g.*"]))
    h, p, s = good.split(".")
    deep = b64(("[" * 250 + "]" * 250).encode())
    junk = [
        "x.y.z", "...", "a.b", h + "." + p, h + "." + p + "." + s + ".x",
        b64(b"\xff\xfe") + "." + p + "." + s,            # not UTF-8
        b64(b"{\"alg\":\"HS256\"") + "." + p + "." + s,  # cut JSON
        deep + "." + p + "." + s,                        # deep header
        h + "." + deep + "." + s,                        # deep payload
        b64(b'{"alg":"HS256","alg":"HS256"}') + "." + p + "." + s,
        b64(json.dumps({"alg": "HS256", "crit": ["x"]}).encode()) + "." + p +
        "." + s,
        h + "." + b64(b"[1,2]") + "." + s,
        h + "." + p + "." + "*" * 40,
        "%00.%00.%00",
    ]
    for i, tok in enumerate(junk):
        r = await ahttp(srv.port, "GET", f"/events/g.x?timeout=0&token={tok}")
        check(r.status in (400, 401) and r.code() in (
            "invalid_token", "unauthorized", "token_too_large", "bad_query",
            "bad_request"), f"junk {i}: {r!r}")
        r = await asyncio.to_thread(upgrade_refused, srv.port, "/ws",
                                    bearer(tok))
        check(r.status in (400, 401), f"junk {i} (Bearer): {r!r}")
        r = await ahttp(srv.port, "GET", "/healthz")
        check_status(r, 200, what=f"/healthz after junk {i}")
    c = await ctx.connect("/ws?events=g.*", headers=bearer(good))
    await c.sync()
    i = await post(srv, "g.1", "still", ADMIN_H)
    check_envelope(await c.event(), "g.1", "still", i)


async def t_admin_routes(ctx):
    """A client token opens the event routes only: the task routes,
    /metrics, unknown paths and wrong methods are 403 (no map of the API);
    the API token still opens everything."""
    srv = ctx.srv
    tok = bearer(mint(claims(subscribe=["*"], dispatch=["*"])))
    for method, path in (("GET", "/tasks"), ("GET", "/tasks/x"),
                         ("DELETE", "/tasks/x"), ("POST", "/tasks"),
                         ("POST", "/tasks/purge"), ("GET", "/metrics"),
                         ("GET", "/instances"), ("GET", "/kinds"),
                         ("GET", "/stats"),
                         ("GET", "/nope"),
                         ("PUT", "/events/a"), ("POST", "/healthz")):
        r = await ahttp(srv.port, method, path, b"{}", tok)
        check_status(r, 403, "forbidden", f"{method} {path} with a JWT")
    r = await asyncio.to_thread(upgrade_refused, srv.port, "/tasks", tok)
    check_status(r, 403, "forbidden", "an upgrade to /tasks with a JWT")
    for method, path in (("GET", "/tasks"), ("GET", "/metrics"),
                         ("POST", "/tasks/purge"), ("GET", "/kinds"),
                         ("GET", "/stats")):
        r = await ahttp(srv.port, method, path, b"", ADMIN_H)
        check(r.status == 200, f"{method} {path} with the API token: {r!r}")
    r = await ahttp(srv.port, "GET", "/nope", headers=ADMIN_H)
    check_status(r, 404, "not_found", "/nope with the API token")
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="/healthz with nothing")
    r = await ahttp(srv.port, "GET", "/readyz")
    check_status(r, 200, what="/readyz with nothing")
    r = await ahttp(srv.port, "GET", "/tasks", headers=bearer("nodots"))
    check_status(r, 401, "unauthorized", "a wrong API token")


async def t_expiry(ctx):
    """A websocket opened with a token that expires is closed with 1008
    when it does; a long poll ends (204) when its token expires."""
    srv = ctx.srv
    tok = mint(claims("brief", ttl=2, subscribe=["e.*"]))
    c = await ctx.connect("/ws?events=e.*", headers=bearer(tok))
    await c.sync()
    try:
        await asyncio.wait_for(c.ws.wait_closed(), T(15))
    except asyncio.TimeoutError:
        raise AssertionError("not closed after its token expired")
    check(c.ws.close_code == 1008 and c.ws.close_reason == "token expired",
          f"closed with {c.ws.close_code} {c.ws.close_reason!r}")
    check('sub "brief"): the client token expired' in srv.log_text(),
          "the expiry is not logged")
    tok = mint(claims("brief2", ttl=2, subscribe=["e.*"]))
    r = await ahttp(srv.port, "GET", "/events/e.x?timeout=60",
                    headers=bearer(tok), timeout=T(20))
    check(r.status == 204, f"a long poll past its token's expiry: {r!r}")


async def t_config_errors(ctx):
    """Keys the service refuses at start, with the reason."""
    k = keys()
    cases = [
        (["--jwt-secret", SECRET], "need http.api_token"),
        (["--token", ADMIN, "--jwt-secret", "short"], "at least 32 bytes"),
        (["--token", ADMIN, "--jwt-public-key", k["rsa"]], "private key"),
        (["--token", ADMIN, "--jwt-public-key", k["rsa"] + ".missing"],
         "cannot open"),
    ]
    for args, why in cases:
        p = subprocess.run([H.bin, "--listen", f"127.0.0.1:{free_port()}",
                            *args], capture_output=True, text=True,
                           timeout=T(20), env=tbharness.child_env())
        check(p.returncode != 0 and why in p.stderr,
              f"{args}: exit {p.returncode}, stderr {p.stderr[-400:]!r}")


async def t_public_keys(ctx):
    """RS256 and ES256 with their public keys; HS256 signed with the public
    key's text (algorithm confusion), "none" and the other algorithm are
    401."""
    k = keys()
    rs, es = ctx.s["rs"], ctx.s["es"]
    pem = open(k["rsa_pub"], "rb").read()
    good = mint(claims("r", subscribe=["k.*"]), alg="RS256", key=k["rsa"])
    c = await ctx.connect("/ws?events=k.*", srv=rs, headers=bearer(good))
    await c.sync()
    i = await post(rs, "k.1", "rs", ADMIN_H)
    check_envelope(await c.event(), "k.1", "rs", i)
    for what, tok in (
            ("HS256 with the PEM as secret",
             mint(claims(subscribe=["k.*"]), key=pem)),
            ("HS256", mint(claims(subscribe=["k.*"]))),
            ("alg none", mint(claims(), alg="none")),
            ("ES256 signed with the EC key",
             mint(claims(), alg="ES256", key=k["ec"])),
            ("RS256 signed with another key",
             mint(claims(), alg="RS256", key=k["ec"])),
    ):
        await refused_401(rs, f"/ws?events=order.*&token={q(tok)}",
                          "invalid_token", f"rs: {what}")
    good = mint(claims("e", subscribe=["k.*"]), alg="ES256", key=k["ec"])
    c = await ctx.connect("/ws?events=k.*", srv=es, headers=bearer(good))
    await c.sync()
    i = await post(es, "k.2", "es", ADMIN_H)
    check_envelope(await c.event(), "k.2", "es", i)
    epem = open(k["ec_pub"], "rb").read()
    for what, tok in (
            ("HS256 with the PEM as secret", mint(claims(), key=epem)),
            ("RS256", mint(claims(), alg="RS256", key=k["rsa"]))):
        await refused_401(es, f"/ws?events=order.*&token={q(tok)}",
                          "invalid_token", f"es: {what}")


def hs_server():
    return {"hs": TaskbusServer("hs", "--token", ADMIN, "--jwt-secret", SECRET,
                                "--jwt-leeway", "0", "--jwt-max-size",
                                str(MAX_SIZE), "--ws-max-patterns", "4")}


def key_servers():
    k = keys()
    return {"rs": TaskbusServer("rs", "--token", ADMIN, "--jwt-public-key",
                                k["rsa_pub"]),
            "es": TaskbusServer("es", "--token", ADMIN, "--jwt-public-key",
                                k["ec_pub"])}


GROUPS = [
    ("hs", hs_server, [
        ("HS256: within the claims over /ws and HTTP, forbidden beyond",
         t_within_claims, 60),
        ("a claim \"jo.>\": under jo. at any depth, not \">\"",
         t_tail_claims, 30),
        ("claims: none, at ws.max_patterns, malformed", t_claims_limit, 30),
        ("expired, unsigned, wrongly signed: 401 with a code", t_refusals,
         60),
        ("http.jwt_max_size at its edge", t_size, 30),
        ("garbage tokens: 401, the service answers", t_garbage, 60),
        ("a client token opens the event routes only", t_admin_routes, 30),
        ("expiry: 1008 on a websocket, 204 on a long poll", t_expiry, 60),
        ("keys refused at start", t_config_errors, 120),
    ]),
    ("keys", key_servers, [
        ("RS256 and ES256 public keys; algorithm confusion refused",
         t_public_keys, 120),
    ]),
]


if __name__ == "__main__":
    sys.exit(tbharness.run_groups("jwt_suite", "taskbus-jwt.", GROUPS))
