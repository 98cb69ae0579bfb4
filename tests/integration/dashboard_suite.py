#!/usr/bin/python3
"""dashboard_suite.py - the web dashboard (issue 15), as its users meet it.

Over HTTP: GET /, /ui/ and /ui/<file> answer the files built into the
binary (the same bytes as service/ui/ and clients/js/src/index.js), with
their Content-Type, Cache-Control, an ETag that a matching If-None-Match
turns into 304, a Content-Security-Policy of this origin only and
nosniff; HEAD has no body, other methods 405, unknown files 404 JSON.
With an API token the page and its files stay open but nothing else under
/ui/ does (401, as any unknown path). --no-dashboard (and
TASKBUS_NO_DASHBOARD=1) serves none of it and leaves the API as it was.

In a real browser: Debian's chromium driven by playwright-core
(tests/integration/browser/, installed by .ci/dev.sh with npm ci from its
lockfile) against two instances on one redis-server and one with a
token: browser/dashboard.mjs says what it checks (both instances shown, a
task spawned with the API appears and its cancel button turns it
cancelled, an event dispatched with curl appears and its envelope shows,
pause and the pattern filter, the spawn form generated from GET /kinds,
the filters, the token prompt, no script or CSP errors, a 390x844 phone
viewport without horizontal overflow). It saves a screenshot of the
populated dashboard as dashboard.png in the build directory and, with
TASKBUS_UPDATE_SCREENSHOT=1, as docs/dashboard.png. Without node (or with
a node older than browser/package.json's "engines", Node 18), or without
playwright-core or chromium that case is skipped, and fails under
CI=true.

Usage: dashboard_suite.py [WORD...]  runs only the cases whose group or
name contains one of the words (all when none are given).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (H, Redis, T, Taskbus, case_servers,  # noqa: E402
                       check, http_req, instances_of, wait_for)

HERE = os.path.dirname(os.path.abspath(__file__))
# Absolute: the browser test runs in another directory.
SOURCE = os.path.abspath(os.environ.get("TASKBUS_SOURCE_DIR") or
                         os.path.join(HERE, "..", ".."))
BUILD = os.path.abspath(os.environ.get("TASKBUS_BUILD_DIR") or os.getcwd())
BROWSER_DIR = os.path.join(HERE, "browser")
CHROMIUM = "/usr/bin/chromium"
TOKEN = "dashboard-suite-token-0123456789"

# Each file served, and where its bytes come from.
ASSETS = {
    "/ui/index.html": ("service/ui/index.html", "text/html"),
    "/ui/style.css": ("service/ui/style.css", "text/css"),
    "/ui/app.js": ("service/ui/app.js", "text/javascript"),
    "/ui/api.js": ("service/ui/api.js", "text/javascript"),
    "/ui/dom.js": ("service/ui/dom.js", "text/javascript"),
    "/ui/chart.js": ("service/ui/chart.js", "text/javascript"),
    "/ui/tasks.js": ("service/ui/tasks.js", "text/javascript"),
    "/ui/events.js": ("service/ui/events.js", "text/javascript"),
    "/ui/favicon.svg": ("service/ui/favicon.svg", "image/svg+xml"),
    "/ui/taskbus.js": ("clients/js/src/index.js", "text/javascript"),
}


def source_bytes(rel):
    with open(os.path.join(SOURCE, rel), "rb") as f:
        return f.read()


def want_json_error(r, status, code, what):
    check(r.status == status, f"{what}: {r.status}, want {status}: {r.body!r}")
    check(r.headers.get("content-type") == "application/json",
          f"{what}: Content-Type {r.headers.get('content-type')}")
    check(json.loads(r.body).get("error") == code, f"{what}: {r.body!r}")


# ------------------------------------------------------------------ HTTP

def t_assets():
    s = Taskbus("assets").start()
    index = source_bytes("service/ui/index.html")
    for path in ("/", "/ui/", "/ui/index.html"):
        r = http_req(s.port, "GET", path)
        check(r.status == 200 and r.body == index,
              f"GET {path}: {r.status}, {len(r.body)} bytes")
    for path, (rel, ctype) in ASSETS.items():
        r = http_req(s.port, "GET", path)
        check(r.status == 200, f"GET {path}: {r!r}")
        check(r.body == source_bytes(rel), f"GET {path}: not the bytes of {rel}")
        got = r.headers.get("content-type", "")
        check(got.split(";")[0] == ctype, f"{path}: Content-Type {got}")
        check(ctype == "image/svg+xml" or got.endswith("charset=utf-8"),
              f"{path}: no charset: {got}")
        check(r.headers.get("x-content-type-options") == "nosniff",
              f"{path}: no nosniff")
        check(r.headers.get("cache-control") == "no-cache",
              f"{path}: Cache-Control {r.headers.get('cache-control')}")
        csp = r.headers.get("content-security-policy", "")
        for part in ("default-src 'none'", "script-src 'self'",
                     "connect-src 'self'", "frame-ancestors 'none'"):
            check(part in csp, f"{path}: CSP without {part}: {csp}")
        check("unsafe" not in csp and "http" not in csp, f"CSP {csp}")
        etag = r.headers.get("etag", "")
        check(len(etag) == 18 and etag[0] == etag[-1] == '"',
              f"{path}: ETag {etag!r}")
        for inm in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
            r2 = http_req(s.port, "GET", path, headers={"If-None-Match": inm})
            check(r2.status == 304 and r2.body == b"" and
                  r2.headers.get("etag") == etag,
                  f"{path} If-None-Match {inm}: {r2.status}")
        r2 = http_req(s.port, "GET", path,
                      headers={"If-None-Match": '"0000000000000000"'})
        check(r2.status == 200 and r2.body == r.body,
              f"{path} with another ETag: {r2.status}")
        h = http_req(s.port, "HEAD", path)
        check(h.status == 200 and h.body == b"" and
              h.headers.get("etag") == etag and
              h.headers.get("content-length") == str(len(r.body)),
              f"HEAD {path}: {h.status} {h.headers}")
    # Different files, different tags.
    tags = {http_req(s.port, "GET", p).headers["etag"] for p in ASSETS}
    check(len(tags) == len(ASSETS), "two files share an ETag")
    for path in ("/ui/nope.js", "/ui/../api.js", "/ui/app.js/x", "/ui//",
                 "/ui/index.html%00"):
        r = http_req(s.port, "GET", path)
        check(r.status in (400, 404) and
              r.headers.get("content-type") == "application/json",
              f"GET {path}: {r.status} {r.body!r}")
    want_json_error(http_req(s.port, "GET", "/ui/nope.js"), 404, "not_found",
                    "GET /ui/nope.js")
    for method in ("POST", "PUT", "DELETE"):
        r = http_req(s.port, method, "/ui/app.js", body=b"")
        want_json_error(r, 405, "method_not_allowed", f"{method} /ui/app.js")
        check(r.headers.get("allow") == "GET, HEAD", f"Allow {r.headers}")
    s.stop_ok()
    return f"{len(ASSETS)} files, /, /ui/"


def t_token():
    """With an API token the page and its files stay open (they hold no
    data), the API and every other path do not."""
    s = Taskbus("token", "--token", TOKEN).start()
    for path in ["/", "/ui/"] + list(ASSETS):
        r = http_req(s.port, "GET", path)
        check(r.status == 200, f"GET {path} without the token: {r.status}")
    for method, path in (("GET", "/ui/nope.js"), ("GET", "/ui"),
                         ("GET", "/instances"), ("GET", "/kinds"),
                         ("GET", "/tasks"), ("POST", "/"),
                         ("DELETE", "/ui/app.js")):
        r = http_req(s.port, method, path)
        want_json_error(r, 401, "unauthorized", f"{method} {path}")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    want_json_error(http_req(s.port, "GET", "/ui/nope.js", headers=auth), 404,
                    "not_found", "GET /ui/nope.js with the token")
    check(http_req(s.port, "GET", "/instances", headers=auth).status == 200,
          "GET /instances with the token")
    s.stop_ok()
    return ""


def t_off():
    """--no-dashboard, or TASKBUS_NO_DASHBOARD=1: no page; the API as
    before."""
    for how, args, env in (("flag", ["--no-dashboard"], None),
                           ("env", [], {"TASKBUS_NO_DASHBOARD": "1"})):
        s = Taskbus(f"off-{how}", *args, env=env).start()
        for path in ("/", "/ui/", "/ui/app.js", "/ui/taskbus.js"):
            want_json_error(http_req(s.port, "GET", path), 404, "not_found",
                            f"{how}: GET {path}")
        check(http_req(s.port, "GET", "/healthz").status == 200,
              f"{how}: /healthz")
        check(http_req(s.port, "GET", "/tasks").status == 200,
              f"{how}: /tasks")
        s.stop_ok()
    s = Taskbus("on-env", env={"TASKBUS_NO_DASHBOARD": "0"}).start()
    check(http_req(s.port, "GET", "/").status == 200,
          "TASKBUS_NO_DASHBOARD=0: no page")
    s.stop_ok()
    return ""


# ------------------------------------------------------------------ browser

def browser_missing():
    """Why the browser case cannot run here, or None."""
    why = tbharness.node_missing(BROWSER_DIR, "playwright-core")
    if not os.access(CHROMIUM, os.X_OK):
        why.append(f"no {CHROMIUM} (apt-get install chromium)")
    if not why:
        return None
    msg = "; ".join(why) + ": run bash .ci/dev.sh test"
    check(os.environ.get("CI") != "true", msg)
    return msg


def t_browser():
    why = browser_missing()
    if why:
        return "SKIPPED: " + why
    redis = Redis("dash").start()
    case_servers().append(redis)
    # A short heartbeat, so that both instances list each other soon.
    fast = ["--redis-url", redis.url(), "--instance-heartbeat", "0.2",
            "--instance-ttl", "2"]
    a = Taskbus("a", *fast).start()
    b = Taskbus("b", *fast).start()
    locked = Taskbus("locked", "--token", TOKEN).start()  # its own bus
    check(wait_for(lambda: all(len(instances_of(s)) == 2 for s in (a, b)),
                   T(10)), "the two instances do not list each other")
    ids = [next(i["id"] for i in instances_of(s) if i.get("self"))
           for s in (a, b)]
    shots = [os.path.join(BUILD, "dashboard.png")]
    if os.environ.get("TASKBUS_UPDATE_SCREENSHOT") == "1":
        shots.append(os.path.join(SOURCE, "docs", "dashboard.png"))
    cfg = {"a": a.url(), "b": b.url(), "ids": ids, "locked": locked.url(),
           "token": TOKEN, "chromium": CHROMIUM, "shots": shots,
           "phone_shot": os.path.join(BUILD, "dashboard-phone.png"),
           "timeout_ms": int(T(15) * 1000)}
    n = tbharness.run_browser_test(BROWSER_DIR, "dashboard.mjs", cfg, T(150),
                                   dict(os.environ, HOME=H.root))
    return f"{n} browser checks; screenshot {shots[-1]}"


def t_node_keepalive():
    """Node's fetch on a busy event loop, across the server's keep-alive
    timeout (browser/keepalive.mjs): every request succeeds, through the
    front and through civetweb (the Keep-Alive header makes undici drop
    the idle connection before the server closes it)."""
    why = tbharness.node_missing(BROWSER_DIR)  # fetch is Node's own
    if why:
        msg = "; ".join(why) + ": run bash .ci/dev.sh test"
        check(os.environ.get("CI") != "true", msg)
        return "SKIPPED: " + msg
    s = Taskbus("ka", "--http-keepalive-timeout", "2000").start()
    cfg = {"base": s.url(), "keepalive_ms": 2000, "rounds": 2}
    n = tbharness.run_browser_test(BROWSER_DIR, "keepalive.mjs", cfg, T(60),
                                   dict(os.environ, HOME=H.root))
    s.stop_ok()
    return f"{n} checks"


CASES = [
    ("http", "the files: bytes, types, ETag and 304, CSP, nosniff, HEAD, "
     "405, 404", t_assets),
    ("http", "with a token: the page open, the API and unknown /ui/ paths "
     "401", t_token),
    ("http", "--no-dashboard and TASKBUS_NO_DASHBOARD: no page, the API "
     "unchanged", t_off),
    ("http", "node fetch on a busy loop across the keep-alive timeout",
     t_node_keepalive),
    ("browser", "chromium: two instances on Redis, tasks, cancel, events, "
     "spawn form, token, phone", t_browser),
]


def main():
    runner = tbharness.CaseRunner(sys.argv[1:])
    tbharness.HARD_CAP_S = min(540, int(240 * H.scale))
    return tbharness.run_suite("dashboard_suite", "taskbus-dashboard.",
                               runner, lambda: runner.run_cases(CASES))


if __name__ == "__main__":
    sys.exit(main())
