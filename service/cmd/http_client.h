/* http_client.h - what the binary's client commands need from an HTTP and
 * websocket client; adapters/http_client_civetweb.c provides it with
 * civetweb's client, compiled into the binary only. */
#ifndef TASKBUS_CMD_HTTP_CLIENT_H
#define TASKBUS_CMD_HTTP_CLIENT_H

#include <signal.h>
#include <stddef.h>

/* One blocking request to host:port, target being the path and query,
 * with "Authorization: Bearer <token>" when token is not NULL or "", and
 * body (len bytes, Content-Type ctype when not NULL) when body is not NULL.
 * Waits for the answer at most timeout_ms. Returns 0 with the status in
 * *status and the whole body in *resp (malloc'd, NUL-terminated; the caller
 * frees it) and its length in *resp_len; or TB_ENOTCONN, TB_EPIPE,
 * TB_ETIMEDOUT or TB_ENOMEM with *resp NULL and a reason in err (errsz
 * bytes). The Authorization line is wiped from this side's own buffer once
 * sent. Any thread. */
int cmd_http_request(const char *host, int port, const char *method,
                     const char *target, const char *token, const char *ctype,
                     const void *body, size_t len, int timeout_ms, int *status,
                     char **resp, size_t *resp_len, char *err, size_t errsz);

/* Opens a websocket to host:port target and calls on_text(text, len, ud)
 * for each message, on the client's own thread (text is valid during the
 * call), until *stop becomes non-zero (then it closes with 1000 and
 * returns 0) or the server closes (TB_EPIPE). TB_ENOTCONN when the
 * connection or the upgrade fails, with a reason in err (errsz bytes). */
int cmd_ws_watch(const char *host, int port, const char *target,
                 void (*on_text)(const char *text, size_t len, void *ud),
                 void *ud, volatile sig_atomic_t *stop, char *err,
                 size_t errsz);

#endif /* TASKBUS_CMD_HTTP_CLIENT_H */
