#!/usr/bin/python3
"""ws_protocol_suite.py - the websocket protocol itself (RFC 6455) on GET /ws:
the handshake as clients send it, ws_max_message at its edge (1009), text
that is not UTF-8 (1007), ping/pong, fragments and control frames between
them, our close and bad close frames, every bad frame header (1002 with a
reason), what the log says about them, the default client with
permessage-deflate, near-1 MB messages both ways, and an Upgrade header on a
request that is no handshake.

How it runs (servers, clients, timeouts, the SIGTERM check at the end of
each group) is tbharness.py's, shared by every ws_*_suite.py. CTest runs it
as integration_ws_protocol; by hand: TASKBUS_BIN=build/taskbus python3 tests/integration/ws_protocol_suite.py [WORD...].
"""

import asyncio
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (Client, ConnectionClosed, RawWS, T,  # noqa: E402
                       TaskbusServer, ahttp, check, check_envelope,
                       check_status, gone, main_server, post, websockets)


async def t_max_message(ctx):
    srv = ctx.srv
    limit = 4096

    def message(size):
        head, foot = '{"event":"size.edge","data":"', '"}'
        return head + "x" * (size - len(head) - len(foot)) + foot

    c = await ctx.connect("/ws?events=size.edge")
    await c.sync()
    m = message(limit)
    check(len(m.encode()) == limit, "test bug: message size")
    r = await c.request(m)
    check(r.get("ok") == "dispatch", f"a message of exactly {limit} bytes: "
                                     f"{r}")
    ev = await c.event()
    check(len(ev["data"]) == limit - 31, f"the event's data has "
                                         f"{len(ev['data'])} bytes")
    await c.ws.send(message(limit + 1))
    try:
        extra = await asyncio.wait_for(c.ws.recv(), T(5))
        raise AssertionError(f"a message of {limit + 1} bytes was answered:"
                             f" {extra[:100]}")
    except ConnectionClosed:
        pass
    check(c.ws.close_code == 1009,
          f"a message of {limit + 1} bytes: closed with {c.ws.close_code}, "
          f"want 1009")
    # The same in fragments: the limit is on the whole message.
    w = ctx.raw("/ws?events=size.edge")
    m = message(limit).encode()
    w.send_frame(0x1, m[:2048], fin=False)
    w.send_frame(0x0, m[2048:], fin=True)
    r = await asyncio.to_thread(w.recv_json, T(5))
    check(r.get("ok") == "dispatch", f"{limit} bytes in two fragments: {r}")
    m = message(limit + 1).encode()
    w.send_frame(0x1, m[:2048], fin=False)
    w.send_frame(0x0, m[2048:], fin=True)
    code, why, texts, _ = await asyncio.to_thread(w.close_code, T(5))
    check(code == 1009, f"{limit + 1} bytes in two fragments: close {code} "
                        f"{why!r}, want 1009")
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="GET /healthz after the closes")


async def t_bad_utf8(ctx):
    w = ctx.raw("/ws?events=utf.x")
    w.send_text('{"subscribe":[],"ref":"raw"}')
    r = await asyncio.to_thread(w.recv_json, T(5))
    check(r.get("ok") == "subscribe" and r.get("ref") == "raw",
          f"the raw client's first message: {r}")
    # "é" split between two fragments is valid UTF-8 as a message.
    m = '{"event":"utf.x","data":"\u00e9"}'.encode()
    cut = m.index(b"\xc3") + 1
    w.send_frame(0x1, m[:cut], fin=False)
    w.send_frame(0x0, m[cut:], fin=True)
    r = await asyncio.to_thread(w.recv_json, T(5))
    if "id" in r and "ok" not in r:  # the event may come first
        r = await asyncio.to_thread(w.recv_json, T(5))
    check(r.get("ok") == "dispatch", f"a character split between fragments:"
                                     f" {r}")
    w.send_frame(0x1, b"\xff\xfe")
    code, why, _, _ = await asyncio.to_thread(w.close_code, T(5))
    check(code == 1007, f"text b'\\xff\\xfe': close {code} {why!r}, want 1007")
    # Then the connection ends.
    try:
        fin, op, p = await asyncio.to_thread(w.recv_frame, T(5))
        raise AssertionError(f"a frame after the close: opcode {op}")
    except (EOFError, ConnectionResetError):
        pass


async def t_protocol(ctx):
    """Framing as RFC 6455 has it, with a hand-written client."""

    def run():
        w = ctx.raw("/ws?events=proto.x")
        w.send_frame(0x9, b"hello-ping")
        fin, op, p = w.recv_frame(T(5))
        check(op == 0xA and p == b"hello-ping",
              f"a ping with a payload: answered opcode {op} {p!r}, want a "
              f"pong with the same payload")
        # One frame, a byte per TCP segment.
        w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in w.frame(0x1, b'{"subscribe":["proto.y"],"ref":"bytes"}'):
            w.sock.sendall(bytes([b]))
            time.sleep(0.001)
        r = w.recv_json(T(5))
        check(r.get("ok") == "subscribe" and r.get("ref") == "bytes",
              f"a frame sent a byte at a time: {r}")
        # A control frame between the fragments of a message.
        m = b'{"subscribe":[],"ref":"frag"}'
        w.send_frame(0x1, m[:10], fin=False)
        w.send_frame(0x9, b"mid")
        w.send_frame(0x0, m[10:20], fin=False)
        w.send_frame(0x0, m[20:], fin=True)
        fin, op, p = w.recv_frame(T(5))
        check(op == 0xA and p == b"mid", f"a ping between fragments: "
                                         f"opcode {op} {p!r}")
        r = w.recv_json(T(5))
        check(r.get("ref") == "frag", f"a message in 3 fragments: {r}")
        # Our close: answered with a close, then the connection ends.
        w.send_frame(0x8, struct.pack("!H", 4001) + b"bye")
        fin, op, p = w.recv_frame(T(5))
        check(op == 0x8, f"our close answered with opcode {op} {p!r}")
        echoed = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else None
        try:
            extra = w.recv_frame(T(5))
            raise AssertionError(f"a frame after the close: {extra}")
        except (EOFError, ConnectionResetError):
            pass
        # Bad close frames: close 1002 (the frame headers: t_frame_errors).
        bad = [
            ("a 1-byte close payload", RawWS.frame(0x8, b"x")),
            ("close code 1005 (reserved)",
             RawWS.frame(0x8, struct.pack("!H", 1005))),
            ("close code 999", RawWS.frame(0x8, struct.pack("!H", 999))),
        ]
        wrong = []
        for why, data in bad:
            w = ctx.raw("/ws?events=proto.x")
            w.sock.sendall(data)
            try:
                code, reason, _, _ = w.close_code(T(3))
            except socket.timeout:
                wrong.append(f"{why}: still open after {T(3)} s")
                continue
            if code != 1002:
                wrong.append(f"{why}: closed with {code} {reason!r}, want "
                             f"1002")
        # A close reason that is not UTF-8: 1007 (or 1002).
        w = ctx.raw("/ws?events=proto.x")
        w.send_frame(0x8, struct.pack("!H", 1000) + b"\xff\xfe")
        try:
            code, reason, _, _ = w.close_code(T(3))
            if code not in (1007, 1002, None):
                wrong.append(f"a close reason that is not UTF-8: closed with "
                             f"{code} {reason!r}, want 1007")
        except socket.timeout:
            wrong.append("a close reason that is not UTF-8: still open")
        check(not wrong, "; ".join(wrong))
        return echoed

    echoed = await asyncio.to_thread(run)
    r = await ahttp(ctx.srv.port, "GET", "/healthz")
    check_status(r, 200, what="GET /healthz")
    return f"our close 4001 answered with {echoed}"


async def t_frame_errors(ctx):
    """A frame whose header breaks RFC 6455 (5.2, 5.4, 5.5) fails the
    connection with a close frame, 1002 and a reason (7.1.7, 7.4.1), not a
    dropped connection; the server goes on serving."""
    texts = [(op, f"opcode {op:#x}") for op in (0x1, 0x2)]
    unknown = list(range(0x3, 0x8)) + list(range(0xB, 0x10))
    top_bit = (struct.pack("!BBQ", 0x81, 0xFF, 1 << 63 | 5) + b"mask" +
               b"hello")
    bad = [
        ("a fragmented ping", [RawWS.frame(0x9, b"p", fin=False)]),
        ("a fragmented pong", [RawWS.frame(0xA, b"p", fin=False)]),
        ("a fragmented close", [RawWS.frame(0x8, struct.pack("!H", 1000),
                                            fin=False)]),
        ("an empty fragmented ping", [RawWS.frame(0x9, b"", fin=False)]),
        ("5 bytes in the 16-bit length form",
         [RawWS.frame(0x1, b"hello", form=126)]),
        ("125 bytes in the 16-bit length form",
         [RawWS.frame(0x1, b"x" * 125, form=126)]),
        ("5 bytes in the 64-bit length form",
         [RawWS.frame(0x1, b"hello", form=127)]),
        ("200 bytes in the 64-bit length form",
         [RawWS.frame(0x2, b"x" * 200, form=127)]),
        ("a 64-bit length with its top bit set", [top_bit]),
        ("a continuation in the 16-bit form",
         [RawWS.frame(0x1, b"{", fin=False),
          RawWS.frame(0x0, b"}", form=126)]),
        ("a ping in the 16-bit length form",
         [RawWS.frame(0x9, b"p", form=126)]),
        ("a 126-byte ping", [RawWS.frame(0x9, b"p" * 126)]),
        ("a 126-byte close", [RawWS.frame(0x8, struct.pack("!H", 1000) +
                                          b"r" * 124)]),
        ("an unmasked frame", [RawWS.frame(0x1, b"{}", masked=False)]),
        ("an unmasked ping", [RawWS.frame(0x9, b"", masked=False)]),
        ("a continuation with no message", [RawWS.frame(0x0, b"{}")]),
        ("a continuation after a whole message",
         [RawWS.frame(0x1, b'{"subscribe":[]}'), RawWS.frame(0x0, b"{}")]),
    ]
    bad += [(f"RSV bits {rsv:03b}", [RawWS.frame(0x1, b"{}", rsv=rsv)])
            for rsv in (4, 2, 1, 7)]
    bad += [(f"RSV bits {rsv:03b} on a ping", [RawWS.frame(0x9, b"", rsv=rsv)])
            for rsv in (4, 1)]
    bad += [(f"unknown opcode {op:#x}", [RawWS.frame(op, b"x")])
            for op in unknown]
    bad += [(f"unknown opcode {op:#x} inside a message",
             [RawWS.frame(0x1, b"{", fin=False), RawWS.frame(op, b"x")])
            for op in (0x3, 0xB)]
    bad += [(f"{what} inside a fragmented message",
             [RawWS.frame(0x1, b"{", fin=False), RawWS.frame(op, b"{}")])
            for op, what in texts]

    def run():
        wrong = []
        for why, frames in bad:
            w = ctx.raw("/ws?events=proto.x")
            try:
                w.sock.sendall(b"".join(frames))
                code, reason, _, _ = w.close_code(T(3))
            except socket.timeout:
                wrong.append(f"{why}: still open after {T(3)} s")
                continue
            finally:
                w.close()
            if code is None:
                wrong.append(f"{why}: the connection dropped without a "
                             f"close frame")
            elif code != 1002 or not reason:
                wrong.append(f"{why}: closed with {code} {reason!r}, want "
                             f"1002 and a reason")
        return wrong

    wrong = await asyncio.to_thread(run)
    r = await ahttp(ctx.srv.port, "GET", "/healthz")
    check_status(r, 200, what="GET /healthz after the bad frames")
    check(not wrong, f"{len(wrong)} of {len(bad)}: " + "; ".join(wrong))
    return f"{len(bad)} bad frame headers, each closed with 1002"


async def t_protocol_log(ctx):
    """The log says what was wrong with a connection it closed: protocol
    errors are not logged as messages over ws_max_message (1009)."""
    srv = ctx.srv
    start = len(srv.log_text())
    cases = {
        "wstest-proto-unmasked": RawWS.frame(0x1, b'{"subscribe":[]}',
                                             masked=False),
        "wstest-proto-op3": RawWS.frame(0x3, b"x"),
        "wstest-proto-close999": RawWS.frame(0x8, struct.pack("!H", 999)),
    }
    codes = {}
    for rid, data in cases.items():
        w = ctx.raw("/ws?events=proto.x", headers={"X-Request-ID": rid})
        w.sock.sendall(data)
        codes[rid] = (await asyncio.to_thread(w.close_code, T(3)))[0]
    for rid in cases:
        await gone(srv, rid, T(2))
    lines = [l for l in srv.log_text()[start:].splitlines()
             if any(rid in l for rid in cases)]
    wrong = [l for l in lines if "ws_max_message" in l or "1009" in l]
    check(not wrong, f"closed with {codes}, but logged: {wrong}")
    return f"closed with {codes}"


async def t_default_client(ctx):
    """The websockets client as a user runs it: it offers permessage-deflate
    and pings every 20 s."""
    srv = ctx.srv
    ws = await websockets.connect(srv.ws_url("/ws?events=dflt.*"),
                                  open_timeout=T(10))
    c = Client(ws, "default client")
    ctx._clients.append(c)
    ext = ws.response_headers.get("Sec-WebSocket-Extensions")
    await c.sync()
    i = await post(srv, "dflt.one", {"k": "v" * 200})
    check_envelope(await c.event(), "dflt.one", {"k": "v" * 200}, i)
    r = await c.request({"event": "dflt.two", "data": "z" * 500})
    check(r.get("ok") == "dispatch", f"dispatch: {r}")
    check_envelope(await c.event(), "dflt.two", "z" * 500, r["id"])
    return f"extensions negotiated: {ext}"


async def t_large(ctx):
    """Near-1 MB messages both ways (the defaults: 1 MiB limits)."""
    srv = ctx.srv
    c = await ctx.connect("/ws?events=big.*", max_size=None)
    await c.sync()
    body = "".join(chr(0x61 + k % 26) for k in range(900 * 1024))
    i = await post(srv, "big.http", body)
    check_envelope(await c.event(T(20)), "big.http", body, i)
    data = {"blob": body[:400 * 1024], "list": list(range(20000))}
    r = await c.request({"event": "big.ws", "data": data}, T(20))
    check(r.get("ok") == "dispatch", f"a 500 KB dispatch: {r}")
    check_envelope(await c.event(T(20)), "big.ws", data, r["id"])
    return "900 KB out, 500 KB in"


async def t_upgrade_header_alone(ctx):
    """An Upgrade header on a request that is no websocket handshake
    (not GET, or no Connection: upgrade or key) is an ordinary request."""
    srv = ctx.srv
    r = await ahttp(srv.port, "GET", "/healthz",
                    headers={"Upgrade": "websocket"})
    check_status(r, 200, what="GET /healthz with Upgrade: websocket")
    r = await ahttp(srv.port, "POST", "/events/up.x", b"x",
                    headers={"Upgrade": "websocket",
                             "Connection": "Upgrade"})
    check_status(r, 202, what="POST /events with Upgrade: websocket")


GROUPS = [
    ("main", main_server, [
        ("ws_max_message: exactly the limit passes, one more closes 1009",
         t_max_message, 20),
        ("text that is not UTF-8 closes with 1007", t_bad_utf8, 20),
        ("framing: ping/pong, fragments, close, protocol errors 1002",
         t_protocol, 60),
        ("bad frame headers close with 1002 and a reason", t_frame_errors,
         60),
        ("protocol errors are logged as what they are", t_protocol_log,
         30),
        ("the default websockets client (deflate offered)", t_default_client,
         20),
    ]),
    # The defaults: 1 MiB messages.
    ("defaults", lambda: {"defaults": TaskbusServer("defaults")}, [
        ("near-1 MB messages both ways", t_large, 60),
        ("an Upgrade header alone does not make a websocket request",
         t_upgrade_header_alone, 20),
    ]),
]


if __name__ == "__main__":
    sys.exit(tbharness.run_groups("ws_protocol_suite", "taskbus-wsproto.",
                                  GROUPS))
