/* fuzz_ws_frames.c - the websocket frame reader (adapters/ws_wslay.c) on a
 * socket pair, alone: this file is the core's side of it (messages, the
 * close and the end, logging), built with ws_wslay.c and no library. The
 * first byte sets ws_max_message; the rest is a script of steps:
 *   0-2 n bytes   the client writes them as they are
 *   3   h n bytes the client writes one masked frame: FIN and opcode
 *                 from h, n bytes of payload
 *   4   n bytes   the server sends a text message
 *   5             the core's receive queue fills or drains (pause)
 *   6             the server starts a close (1000)
 *   7             the client reads what the server wrote
 * with the worker's loop run after each. Messages handed to the core are
 * within ws_max_message, none comes once the connection closes, and it ends
 * exactly once. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "adapters.h"
#include "fuzz.h"

struct tb_ws {
    size_t max_message;
    int closing;
    int ended;
    int full; /* what tb__ws_on_message answers */
    size_t messages;
    size_t held; /* what tb__ws_on_held said last */
};

int tb__ws_on_message(tb_ws *ws, int binary, const void *data, size_t len)
{
    (void)binary;
    FUZZ_CHECK(!ws->ended && !ws->closing);
    FUZZ_CHECK(len <= ws->max_message);
    /* Touch every byte: ASan checks the buffer is that long. */
    const unsigned char *p = data;
    unsigned sum = 0;
    for (size_t i = 0; i < len; i++)
        sum += p[i];
    (void)sum;
    ws->messages++;
    return ws->full;
}

void tb__ws_on_held(tb_ws *ws, size_t bytes)
{
    FUZZ_CHECK(!ws->ended);
    ws->held = bytes;
}

int tb__ws_would_pass(const tb_ws *ws, size_t bytes)
{
    (void)ws;
    return bytes > 65536; /* the write-through path too */
}

void tb__ws_on_closing(tb_ws *ws)
{
    FUZZ_CHECK(!ws->ended && !ws->closing);
    ws->closing = 1;
}

void tb__ws_on_end(tb_ws *ws, int code, const char *why)
{
    FUZZ_CHECK(!ws->ended);
    FUZZ_CHECK(why != NULL && why[0] != '\0');
    FUZZ_CHECK(code >= 1000 && code <= 4999);
    ws->ended = 1;
}

void tb__ws_on_drained(tb_ws *ws)
{
    FUZZ_CHECK(!ws->ended); /* nothing is woken after the end */
}

const char *tb_ws_request_id(const tb_ws *ws)
{
    (void)ws;
    return "fuzz";
}

void tb__log(tb_log_level lvl, const char *fmt, ...)
{
    (void)lvl;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
}

static struct event_base *base;

static void run_loop(void)
{
    for (int i = 0; i < 8; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
}

static void client_write(int fd, const void *p, size_t n)
{
    /* Non-blocking: what does not fit is dropped, as if still in flight
     * forever (the server has stopped reading). */
    ssize_t w = write(fd, p, n);
    (void)w;
}

static void client_frame(int fd, unsigned h, const uint8_t *payload, size_t n)
{
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t f[4 + 4 + 255];
    size_t o = 0;
    f[o++] = (uint8_t)((h & 0x80) | (h & 0x0f));
    if (n < 126) {
        f[o++] = (uint8_t)(0x80 | n);
    } else {
        f[o++] = 0x80 | 126;
        f[o++] = (uint8_t)(n >> 8);
        f[o++] = (uint8_t)n;
    }
    memcpy(f + o, key, 4);
    o += 4;
    for (size_t i = 0; i < n; i++)
        f[o++] = payload[i] ^ key[i % 4];
    client_write(fd, f, o);
}

static void client_read(int fd)
{
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!base)
        FUZZ_CHECK((base = event_base_new()) != NULL);
    if (size < 1)
        return 0;
    tb_ws ws = {.max_message = 1 + (size_t)data[0] * 4};
    tb__ws_limits lim = {
        .max_message = ws.max_message,
        .send_queue_bytes = 2048,
        .send_queue_msgs = 4,
        .ping_interval_ms = 0,
        .ping_timeout_ms = 60000,
        .close_timeout_ms = 60000,
    };
    int sv[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    FUZZ_CHECK(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0);
    const tb__wsconn_ops *ops = tb__ws_wslay_ops();
    tb__wsconn *c = ops->open(&ws, base, sv[0], &lim, "fuzz-peer");
    FUZZ_CHECK(c != NULL); /* sv[0] is the connection's now */

    size_t i = 1;
    while (i < size && !ws.ended) {
        unsigned op = data[i++] % 8;
        size_t n = i < size ? data[i] : 0;
        switch (op) {
        case 0:
        case 1:
        case 2:
            i++;
            n = n < size - i ? n : size - i;
            client_write(sv[1], data + i, n);
            i += n;
            break;
        case 3: {
            unsigned h = n;
            i++;
            n = i < size ? data[i++] : 0;
            n = n < size - i ? n : size - i;
            client_frame(sv[1], h, data + i, n);
            i += n;
            break;
        }
        case 4: {
            i++;
            n = n < size - i ? n : size - i;
            int rc = ops->send(c, 0, data + i, n);
            FUZZ_CHECK(rc == 0 || rc == TB_EPIPE || rc == TB_ENOSPC);
            FUZZ_CHECK(rc != TB_EPIPE || ws.closing || ws.ended);
            i += n;
            break;
        }
        case 5:
            ws.full = !ws.full;
            ops->pause(c, ws.full);
            break;
        case 6:
            ops->close(c, 1000, "fuzz");
            break;
        default:
            client_read(sv[1]);
            break;
        }
        if (!ws.ended)
            run_loop();
    }
    if (!ws.ended)
        ops->abort(c);
    FUZZ_CHECK(ws.ended);
    close(sv[1]);
    return 0;
}
