/* http_client_civetweb.c - the binary's HTTP and websocket client
 * (service/cmd/http_client.h) on civetweb's client: one blocking request
 * per call, and a websocket that delivers messages until told to stop.
 * Compiled into the taskbus binary only, not into libtaskbus. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <civetweb.h>

#include "taskbus/taskbus.h"

#include "http_client.h"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* Once per process, before the first client call. */
static void library_init(void)
{
    mg_init_library(0); /* no TLS: the client speaks http:// only */
}

int cmd_http_request(const char *host, int port, const char *method,
                     const char *target, const char *token, const char *ctype,
                     const void *body, size_t len, int timeout_ms, int *status,
                     char **resp, size_t *resp_len, char *err, size_t errsz)
{
    pthread_once(&init_once, library_init);
    *resp = NULL;
    *resp_len = 0;
    struct mg_connection *c = mg_connect_client(host, port, 0, err, errsz);
    if (!c)
        return TB_ENOTCONN;
    char auth[400] = "";
    if (token && token[0])
        snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", token);
    char clen[64] = "";
    if (body)
        snprintf(clen, sizeof clen, "Content-Length: %zu\r\n", len);
    mg_printf(c,
              "%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n%s%s%s%s"
              "\r\n",
              method, target, host, port, auth, clen,
              ctype ? "Content-Type: " : "", ctype ? ctype : "");
    if (ctype)
        mg_printf(c, "\r\n"); /* ends the Content-Type line */
    explicit_bzero(auth, sizeof auth);
    if (body && len && mg_write(c, body, len) != (int)len) {
        snprintf(err, errsz, "the connection failed while sending");
        mg_close_connection(c);
        return TB_EPIPE;
    }
    if (mg_get_response(c, err, errsz, timeout_ms) < 0) {
        mg_close_connection(c);
        return TB_ETIMEDOUT;
    }
    const struct mg_response_info *ri = mg_get_response_info(c);
    *status = ri->status_code;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf)
            break;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        int r = mg_read(c, buf + n, cap - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    mg_close_connection(c);
    if (!buf) {
        snprintf(err, errsz, "out of memory");
        return TB_ENOMEM;
    }
    buf[n] = '\0';
    *resp = buf;
    *resp_len = n;
    return 0;
}

typedef struct watch_ctx {
    void (*on_text)(const char *text, size_t len, void *ud);
    void *ud;
    atomic_int closed;
} watch_ctx;

static int on_watch_data(struct mg_connection *c, int bits, char *data,
                         size_t len, void *ud)
{
    (void)c;
    watch_ctx *w = ud;
    int op = bits & 0x0f;
    if (op == MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE) {
        atomic_store(&w->closed, 1);
        return 0;
    }
    if (op == MG_WEBSOCKET_OPCODE_TEXT || op == MG_WEBSOCKET_OPCODE_BINARY)
        w->on_text(data, len, w->ud);
    return 1;
}

static void on_watch_close(const struct mg_connection *c, void *ud)
{
    (void)c;
    watch_ctx *w = ud;
    atomic_store(&w->closed, 1);
}

int cmd_ws_watch(const char *host, int port, const char *target,
                 void (*on_text)(const char *text, size_t len, void *ud),
                 void *ud, volatile sig_atomic_t *stop, char *err, size_t errsz)
{
    pthread_once(&init_once, library_init);
    watch_ctx w = {on_text, ud, 0};
    struct mg_connection *c =
        mg_connect_websocket_client(host, port, 0, err, errsz, target, NULL,
                                    on_watch_data, on_watch_close, &w);
    if (!c)
        return TB_ENOTCONN;
    while (!*stop && !atomic_load(&w.closed))
        nanosleep(&(struct timespec){0, 50 * 1000000L}, NULL);
    int peer_closed = atomic_load(&w.closed);
    if (!peer_closed)
        mg_websocket_client_write(c, MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE,
                                  "\x03\xe8", 2);
    mg_close_connection(c);
    if (peer_closed)
        snprintf(err, errsz, "the server closed the connection");
    return peer_closed ? TB_EPIPE : 0;
}
