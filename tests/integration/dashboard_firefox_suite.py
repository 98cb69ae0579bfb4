#!/usr/bin/python3
"""dashboard_firefox_suite.py - the web dashboard (issue 15) in Firefox.

Debian's firefox-esr, driven over WebDriver BiDi by puppeteer-core
(tests/integration/browser_firefox/, installed by .ci/dev.sh with npm ci
from its lockfile; it never downloads a browser), against one instance on
a real redis-server and one with an API token: browser_firefox/firefox.mjs
says what it checks (the instance in the instances table, an event
dispatched with curl in the live stream, a task spawned with the API whose
Cancel button turns it cancelled, the spawn form, the token prompt, no
script or CSP errors, a 390x844 phone viewport without horizontal
overflow). It saves a screenshot as dashboard-firefox.png in the
build directory. dashboard_suite.py does the same and more in chromium.
Without node (or with a node older than browser_firefox/package.json's
"engines", Node 18), puppeteer-core or firefox-esr the case is skipped,
and fails under CI=true.

Usage: dashboard_firefox_suite.py [WORD...]  runs only the cases whose
group or name contains one of the words (all when none are given).
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (H, Redis, T, Taskbus, case_servers,  # noqa: E402
                       check, instances_of, wait_for)

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.abspath(os.environ.get("TASKBUS_BUILD_DIR") or os.getcwd())
FIREFOX_DIR = os.path.join(HERE, "browser_firefox")
FIREFOX = "/usr/bin/firefox-esr"
TOKEN = "dashboard-firefox-suite-token-0123"


def firefox_missing():
    """Why the Firefox case cannot run here, or None."""
    why = tbharness.node_missing(FIREFOX_DIR, "puppeteer-core")
    if not os.access(FIREFOX, os.X_OK):
        why.append(f"no {FIREFOX} (apt-get install firefox-esr)")
    return "; ".join(why) + ": run bash .ci/dev.sh test" if why else None


def t_firefox():
    redis = Redis("dash-ff").start()
    case_servers().append(redis)
    s = Taskbus("ff", "--redis-url", redis.url(), "--instance-heartbeat",
                "0.2").start()
    check(wait_for(lambda: len(instances_of(s)) == 1, T(10)),
          "the instance does not list itself")
    me = next(i["id"] for i in instances_of(s) if i.get("self"))
    locked = Taskbus("ff-locked", "--token", TOKEN).start()  # its own bus
    # Firefox as root in CI: its profile and HOME in this run's directory,
    # never the user's.
    home = tempfile.mkdtemp(prefix="firefox-home.", dir=H.root)
    profile = tempfile.mkdtemp(prefix="firefox-profile.", dir=H.root)
    cfg = {"url": s.url(), "id": me, "locked": locked.url(), "token": TOKEN,
           "firefox": FIREFOX, "profile": profile,
           "shot": os.path.join(BUILD, "dashboard-firefox.png"),
           "timeout_ms": int(T(15) * 1000)}
    env = dict(os.environ, HOME=home, TMPDIR=home,
               MOZ_CRASHREPORTER_DISABLE="1")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    n = tbharness.run_browser_test(FIREFOX_DIR, "firefox.mjs", cfg, T(120),
                                   env)
    return f"{n} Firefox checks; screenshot {cfg['shot']}"


CASES = [
    ("browser", "firefox: an instance on Redis, events, tasks, cancel, "
     "spawn form, token, phone", t_firefox),
]


def main():
    runner = tbharness.CaseRunner(sys.argv[1:])
    tbharness.HARD_CAP_S = min(540, int(180 * H.scale))

    def run():
        why = firefox_missing()
        if not why:
            return runner.run_cases(CASES)
        # A skip, but in CI (CI=true) a failure: there it must run.
        for group, name, _ in CASES:
            if not runner.wanted(group, name):
                continue
            if os.environ.get("CI") == "true":
                runner.report(False, f"{group}: {name}", why)
            else:
                runner.skip(f"{group}: {name}", why)

    return tbharness.run_suite("dashboard_firefox_suite",
                               "taskbus-dashboard-firefox.", runner, run)


if __name__ == "__main__":
    sys.exit(main())
