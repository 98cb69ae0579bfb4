#!/usr/bin/python3
"""ws-events.py - prints what a taskbus websocket receives, one JSON line
per event, for trying a deployment by hand (and for its test).

    TASKBUS_TOKEN=... python3 deploy/ws-events.py 'ws://127.0.0.1:8080/ws?events=my.*' &

The token goes in the Authorization header, never in the URL (URLs end up
in proxies' logs). It never reads its standard input, so it runs in the
background of an interactive shell without being stopped, and it says
"open" once connected and "closed CODE REASON" at the end. It stops after
--count events, after --seconds, or when the server closes; exit status 0
when the server closed with 1000 or 1001 or the count was reached.

Needs Debian's python3-websockets (10.x)."""

import argparse
import asyncio
import os
import sys

import websockets


def say(*parts):
    print(*parts, flush=True)


async def main(a):
    headers = {}
    token = os.environ.get("TASKBUS_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with websockets.connect(a.url, extra_headers=headers,
                                  open_timeout=10, ping_interval=None,
                                  close_timeout=5) as ws:
        say("open")
        n = 0
        try:
            while a.count == 0 or n < a.count:
                say(await ws.recv())
                n += 1
        except websockets.ConnectionClosed:
            pass
        if a.count and n >= a.count:
            await ws.close()
            say("closed", ws.close_code, ws.close_reason or "")
            return 0
    say("closed", ws.close_code, ws.close_reason or "")
    return 0 if ws.close_code in (1000, 1001) else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="ws://HOST:PORT/ws?events=PATTERN")
    p.add_argument("--count", type=int, default=0,
                   help="stop after this many messages (0: never)")
    p.add_argument("--seconds", type=float, default=0,
                   help="stop after this long (0: never)")
    a = p.parse_args()
    try:
        if a.seconds > 0:
            rc = asyncio.run(asyncio.wait_for(main(a), a.seconds))
        else:
            rc = asyncio.run(main(a))
    except asyncio.TimeoutError:
        say("timeout")
        rc = 0
    except (OSError, websockets.InvalidHandshake) as e:
        say("error", type(e).__name__, e)
        rc = 1
    except KeyboardInterrupt:
        rc = 0
    sys.exit(rc)
