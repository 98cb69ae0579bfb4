#!/usr/bin/python3
"""ws_auth_suite.py - who may open a websocket: the upgrade refused without an
Upgrade header (426) or on another path (404), the Origin list (403, and the
forms browsers send that must pass), and the API token (401 without it,
?token= and a Bearer header both work, /healthz needs none).

How it runs (servers, clients, timeouts, the SIGTERM check at the end of
each group) is tbharness.py's, shared by every ws_*_suite.py. CTest runs it
as integration_ws_auth; by hand: TASKBUS_BIN=build/taskbus python3 tests/integration/ws_auth_suite.py [WORD...].
"""

import asyncio
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (T, TaskbusServer, ahttp, check,  # noqa: E402
                       check_envelope, check_status, main_server, post,
                       upgrade_refused)


async def t_upgrade_refusals(ctx):
    srv = ctx.srv
    r = await ahttp(srv.port, "GET", "/ws?events=a.b")
    check_status(r, 426, "upgrade_required", "GET /ws without Upgrade")
    for path in ("/tasks", "/nope", "/events/a.b"):
        st = await ctx.refused(path)
        check(st == 404, f"an upgrade to {path}: {st}, want 404")
        r = await asyncio.to_thread(upgrade_refused, srv.port, path)
        check(r.status == 404, f"an upgrade to {path}: {r!r}")
    bad = ["http://evil.example", "http://ok.example:80",
           "http://ok.example.evil.example", "https://ok.example", "null"]
    for origin in bad:
        st = await ctx.refused("/ws?events=a", origin=origin)
        check(st == 403, f"Origin {origin}: {st}, want 403")
        r = await asyncio.to_thread(upgrade_refused, srv.port, "/ws?events=a",
                                    {"Origin": origin})
        check_status(r, 403, "origin_not_allowed", f"Origin {origin}")
    # Handshakes as browsers send them, and after a keep-alive request.
    for kw in ({"upgrade": "WebSocket"},
               {"connection": "keep-alive, Upgrade"},
               {"first": "/healthz"}):
        w = ctx.raw("/ws?events=o.k", **kw)
        w.send_text('{"subscribe":[],"ref":"hs"}')
        r = await asyncio.to_thread(w.recv_json, T(5))
        check(r.get("ref") == "hs", f"a handshake with {kw}: answered {r}")
        w.close()
    for origin in ("http://ok.example", "HTTPS://APP.example:8443", None):
        c = await ctx.connect("/ws?events=o.k", origin=origin)
        await c.sync()
        eid = await post(srv, "o.k", "hi")
        ev = await c.event()
        check(ev["id"] == eid, f"Origin {origin}: got {ev}")
        await c.close()


TOKEN = "tb-t0ken_Z9/+x"


async def t_token(ctx):
    srv = ctx.srv
    q = urllib.parse.quote(TOKEN, safe="")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path, hdrs, why in (
            ("/ws?events=auth.*", None, "no token"),
            ("/ws?events=auth.*&token=wrong", None, "a wrong ?token="),
            ("/ws?events=auth.*", {"Authorization": "Bearer wrong"},
             "a wrong bearer token"),
            ("/ws?events=auth.*&token=" + q[:-1], None, "a token cut short")):
        st = await ctx.refused(path, headers=hdrs)
        check(st == 401, f"{why}: {st}, want 401")
        r = await asyncio.to_thread(upgrade_refused, srv.port, path, hdrs)
        check_status(r, 401, "unauthorized", why)
    c1 = await ctx.connect(f"/ws?events=auth.*&token={q}", label="?token=")
    c2 = await ctx.connect("/ws?events=auth.*", headers=bearer,
                           label="bearer")
    await c1.sync()
    await c2.sync()
    r = await ahttp(srv.port, "POST", "/events/auth.x", "no")
    check_status(r, 401, "unauthorized", "POST /events without the token")
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="/healthz without the token")
    i = await post(srv, "auth.x", "yes", bearer)
    for c in (c1, c2):
        check_envelope(await c.event(), "auth.x", "yes", i)
    await c1.no_events(0.2)


GROUPS = [
    ("main", main_server, [
        ("GET /ws: 426 without Upgrade, 404 elsewhere, Origin list",
         t_upgrade_refusals, 30),
    ]),
    ("auth", lambda: {"auth": TaskbusServer("auth", "--token", TOKEN)}, [
        ("--token: 401 without it, ?token= and Bearer work", t_token, 30),
    ]),
]


if __name__ == "__main__":
    sys.exit(tbharness.run_groups("ws_auth_suite", "taskbus-wsauth.",
                                  GROUPS))
