/* http_civetweb.c - the HTTP server on civetweb: listens, reads each request
 * and its body, hands it to the core (service/http.c), writes its answer. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <civetweb.h>

#include "adapters.h"
#include "http_socket.h"

/* civetweb's max_request_size and request_timeout_ms, also quoted in
 * answers. */
#define MAX_HEAD_BYTES "8192"
#define REQUEST_TIMEOUT_MS "10000"

/* civetweb's user data: the server, for every callback. */
typedef struct server {
    tb__http_server base;   /* first: the core's handle on it */
    struct mg_context *ctx; /* while serving */
    char addr[80];          /* "a.b.c.d:port" as civetweb got it */
    struct sockaddr_in sa;  /* where to poke it (0.0.0.0: 127.0.0.1) */
    in_addr_t local;        /* the address accepted sockets have, or
                               INADDR_ANY when listening on 0.0.0.0 */
    struct sockaddr_in pub; /* http.listen: the front's, when it runs */
    tb__http_front *front;  /* NULL: civetweb listens on http.listen */
    atomic_int stopped;
} server;

/* The core's view of one request's connection. */
typedef struct conn {
    struct mg_connection *mg;
    int head;   /* HEAD: the answer has no body */
    int close;  /* the connection closes after the answer */
    int looked; /* fd was looked up (by conn_gone or linger) */
    int fd;     /* the socket, or -1 when not found */
    int unread; /* the request's body may still be on the socket */
    int ka_s;   /* http.keepalive_timeout_ms in whole seconds, for the
                   Keep-Alive header of an answer that keeps the
                   connection */
} conn;

static const char *conn_header(void *cp, const char *name)
{
    return mg_get_header(((conn *)cp)->mg, name);
}

/* One mg_write for the whole answer. mg_response_header_send would set
 * Connection for us too, but it writes the status line, every header and
 * the blank line with one send() each (tcp_nodelay is on), so Connection
 * is computed here the way civetweb decides (see keeps_alive). */
static int conn_send(void *cp, int status, const char *headers,
                     const void *body, size_t len)
{
    conn *c = cp;
    int no_body = c->head || status == 204 || status == 304;
    char clen[48] = "";
    if (status != 204 && status != 304)
        snprintf(clen, sizeof clen, "Content-Length: %zu\r\n", len);
    const char *fmt = "HTTP/1.1 %d %s\r\n%s%sConnection: %s\r\n%s\r\n";
    const char *reason = mg_get_response_code_text(NULL, status);
    const char *conn_hdr = c->close ? "close" : "keep-alive";
    char ka[40] = "";
    if (!c->close)
        tb__http_keepalive_header(ka, sizeof ka, c->ka_s);
    int hlen =
        snprintf(NULL, 0, fmt, status, reason, headers, clen, conn_hdr, ka);
    size_t blen = no_body ? 0 : len;
    char *buf = hlen < 0 ? NULL : malloc((size_t)hlen + 1 + blen);
    if (!buf)
        return TB_ENOMEM;
    snprintf(buf, (size_t)hlen + 1, fmt, status, reason, headers, clen,
             conn_hdr, ka);
    if (blen)
        memcpy(buf + hlen, body, blen);
    size_t total = (size_t)hlen + blen;
    int n = mg_write(c->mg, buf, total);
    free(buf);
    return n == (int)total ? 0 : TB_EPIPE;
}

/* The answer says "Connection: close", and civetweb closes after it. */
static void conn_close(void *cp)
{
    conn *c = cp;
    c->close = 1;
    mg_disable_connection_keep_alive(c->mg);
}

/* 1 if the client has closed, half-closed or reset the connection.
 * civetweb has no public way to get the socket: it is found by the peer's
 * address once (tb__http_find_socket, as for the websocket hand-over), then
 * polled. civetweb holds the socket open while this request runs, so one that
 * cannot be found has lost its peer (a reset leaves getpeername nothing to
 * name): gone. Hang-up or error flags mean gone whatever is still queued;
 * else readable means EOF or the client's next request (pipelined): a
 * one-byte MSG_PEEK tells them apart. */
static int conn_gone(void *cp)
{
    conn *c = cp;
    if (!c->looked) {
        const struct mg_request_info *ri = mg_get_request_info(c->mg);
        const server *srv = ri->user_data;
        c->looked = 1;
        c->fd = tb__http_find_socket(srv->sa.sin_port, srv->local,
                                     ri->remote_addr, ri->remote_port);
        if (c->fd < 0) {
            conn_close(c);
            return 1;
        }
    }
    if (c->fd < 0)
        return 1;
    struct pollfd p = {.fd = c->fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return 0;
    if (!(p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL))) {
        char b;
        ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
                                errno == EINTR)))
            return 0;
    }
    conn_close(c); /* EOF, a half-close, a reset, or another error */
    return 1;
}

/* Who a hand-over is for, for its log line if it fails. */
static tb__http_peer peer_of(const struct mg_request_info *ri)
{
    return (tb__http_peer){ri->local_uri_raw ? ri->local_uri_raw : "?",
                           ri->remote_addr, ri->remote_port};
}

/* The response is the core's from here on (an SSE stream): the socket is
 * taken away as after a websocket handshake (see on_ws_ready), and
 * civetweb, told to close, closes only the stand-in when on_request
 * returns. */
static int conn_take(void *cp)
{
    conn *c = cp;
    const struct mg_request_info *ri = mg_get_request_info(c->mg);
    const server *srv = ri->user_data;
    tb__http_peer p = peer_of(ri);
    if (srv->front) {
        conn_close(c);
        c->looked = 1;
        c->fd = -1;
        c->unread = 0;
        return tb__http_front_handover(srv->base.app, srv->front, 0, &p);
    }
    int fd = c->looked ? c->fd
                       : tb__http_find_socket(srv->sa.sin_port, srv->local,
                                              ri->remote_addr, ri->remote_port);
    conn_close(c);
    c->looked = 1;
    c->fd = -1; /* the stand-in's number now: never polled again */
    c->unread = 0;
    return tb__http_take_socket(srv->base.app, fd, &p);
}

static const tb__http_conn_ops conn_ops = {conn_header, conn_send, conn_gone,
                                           conn_close, conn_take};

/* 1 if needle occurs in s, any case (civetweb's mg_strcasestr). */
static int has_substr(const char *s, const char *needle)
{
    size_t n = strlen(needle);
    for (; *s; s++)
        if (strncasecmp(s, needle, n) == 0)
            return 1;
    return 0;
}

/* civetweb 1.15's should_keep_alive() (not public), given that the server
 * enables keep-alive: the client's Connection header decides, else
 * HTTP/1.1 keeps the connection and 1.0 closes it. And as its request
 * loop: only a plain HTTP/1 request keeps it, and civetweb takes
 * "upgrade" anywhere in Connection (a substring, not a token) for an
 * upgrade unless Upgrade names h2 without websocket (it falls back to
 * HTTP/1 then). Saying keep-alive on a connection civetweb closes
 * would make the front pool a dead one. */
static int keeps_alive(const conn *c, const struct mg_request_info *ri)
{
    const char *h = mg_get_header(c->mg, "Connection");
    if (h && has_substr(h, "upgrade")) {
        const char *u = mg_get_header(c->mg, "Upgrade");
        if (!u || has_substr(u, "websocket") || !has_substr(u, "h2"))
            return 0;
    }
    if (h)
        return tb__http_has_token(h, "keep-alive");
    return ri->http_version && strcmp(ri->http_version, "1.1") == 0;
}

/* Milliseconds on the monotonic clock. */
static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Lingering close (nginx's), after a refusal on c: Linux answers a close
 * with unread bytes in the receive queue with a reset, and a client still
 * sending its body then loses the answer it has not read yet. So when the
 * body may be unread (c->unread) or bytes are waiting, the write side is
 * shut (the answer, already in the kernel, then a FIN) and what arrives
 * is read and dropped until the client closes, http.discard_max bytes or
 * http.discard_timeout_ms, whichever comes first; civetweb closes after.
 * The socket stays civetweb's; this thread only reads it. Bytes civetweb
 * has buffered already are dropped with the connection. */
static void linger(conn *c, const tb_http_config *hc)
{
    if (!hc->discard_max || hc->discard_timeout_ms <= 0)
        return;
    if (!c->looked) {
        const struct mg_request_info *ri = mg_get_request_info(c->mg);
        c->looked = 1;
        c->fd =
            tb__http_find_socket(((const server *)ri->user_data)->sa.sin_port,
                                 ((const server *)ri->user_data)->local,
                                 ri->remote_addr, ri->remote_port);
    }
    if (c->fd < 0)
        return;
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    if (!c->unread && (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN)))
        return; /* nothing sent beyond the request: close at once */
    shutdown(c->fd, SHUT_WR);
    long long end = now_ms() + hc->discard_timeout_ms;
    size_t left = hc->discard_max;
    char buf[16384];
    while (left) {
        long long wait = end - now_ms();
        if (wait <= 0)
            break;
        p.revents = 0;
        int r = poll(&p, 1, (int)wait);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break; /* the time bound, or an error */
        ssize_t n = recv(c->fd, buf, left < sizeof buf ? left : sizeof buf,
                         MSG_DONTWAIT);
        if (n < 0 &&
            (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            continue;
        if (n <= 0)
            break; /* the client closed, or reset */
        left -= (size_t)n;
    }
}

/* Answers before routing, with extra headers (NULL or "Name: value\r\n"
 * lines), and makes civetweb close the connection (the body may be
 * unread: it must not be taken for the next request), lingering while
 * the client may still be sending it (linger). */
static int refuse(tb_app *app, tb__http_in *in, int status, const char *code,
                  const char *headers, const char *message)
{
    conn_close(in->conn);
    int rc = tb__http_refuse(app, in, status, code, headers, message);
    linger(in->conn, &tb_app_get_config(app)->http);
    return rc;
}

/* ---------------------------------------------------------------- framing
 *
 * civetweb 1.15 frames a request by its first Content-Length, read with
 * strtoll ("0x10" is 0, "+3" and "3 3" are 3), ignores a Content-Length
 * next to "Transfer-Encoding: chunked", takes "identity" for no coding,
 * and parses the first MG_MAX_HEADERS (64) header lines only, ignoring
 * the rest. A proxy in front may frame such a request differently
 * (request smuggling, RFC 9112 11.2), so the framing headers of every
 * request are checked here, in one place, before its body is read. */

/* An answer that refuses a request. */
typedef struct refusal {
    int status;
    const char *code;
    const char *headers; /* NULL or "Name: value\r\n" lines */
    const char *message;
} refusal;

/* 0 and *v if s is 1*DIGIT, blanks after it allowed (civetweb strips only
 * those before); the value saturates at ULLONG_MAX (over any limit). */
static int parse_length(const char *s, unsigned long long *v)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (!n)
        return -1;
    unsigned long long x = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        unsigned d = (unsigned)(s[i] - '0');
        x = x > (ULLONG_MAX - d) / 10 ? ULLONG_MAX : x * 10 + d;
    }
    *v = x;
    return 0;
}

/* The transfer codings of a request, over all its Transfer-Encoding
 * headers in order. */
typedef struct codings {
    int headers; /* Transfer-Encoding header lines */
    int n;       /* codings listed */
    int chunked; /* of which exactly "chunked" (any case) */
    int last_chunked;
} codings;

static void add_codings(codings *tc, const char *list)
{
    tc->headers++;
    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        size_t len = strcspn(p, ",");
        size_t n = len;
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n) {
            int chunked = n == 7 && strncasecmp(p, "chunked", 7) == 0;
            tc->n++;
            tc->chunked += chunked;
            tc->last_chunked = chunked;
        }
        p += len;
    }
}

/* 0 if ri's framing headers are sound, else 1 with *r filled: at most
 * MG_MAX_HEADERS - 1 header lines (at MG_MAX_HEADERS civetweb may have
 * dropped some); each Content-Length 1*DIGIT and all equal; not both
 * Content-Length and Transfer-Encoding (RFC 9112 6.1 allows refusing,
 * 400, and the connection must close anyway); Transfer-Encoding exactly
 * "chunked", once, and only in HTTP/1.1. A coding other than chunked
 * before a final chunked is one this server does not know: 501 (RFC
 * 9112 6.1: SHOULD); chunked missing, repeated or not last: 400 (MUST). */
/* 1 if civetweb read every header line. Its parser stops, silently, at a
 * line that does not start like a header (an obs-fold's space or tab, a
 * ':', a control or non-ASCII byte) and ignores the rest, where a
 * Content-Length or Transfer-Encoding would go unseen and the body be read
 * as the next request. It ends each line it read with NULs in its buffer:
 * after the last value, past the NUL of its '\r' or '\n' (and of the '\n'
 * of a CRLF), must come the empty line ('\r', '\n', or the NUL civetweb
 * puts at the head's last byte). Bare-LF heads make one case ambiguous
 * (NUL, NUL): a CRLF line followed by a non-header line, or a bare-LF
 * line followed by the head's end and then the body. They cannot be told
 * apart, so a byte after them that does not end the head is refused (RFC
 * 9112 2.2 lets a server require CRLF). The byte is read only when it is surely
 * inside civetweb's max_request_size buffer. */
static int headers_complete(const struct mg_request_info *ri)
{
    if (ri->num_headers <= 0 || !ri->http_headers[ri->num_headers - 1].value)
        return 1;
    const char *v = ri->http_headers[ri->num_headers - 1].value;
    const char *e = v + strlen(v); /* the NUL of the line's end */
    if (e[1] == '\r' || e[1] == '\n')
        return 1;
    if (e[1] != '\0')
        return 0; /* bare LF, then a line that is not a header */
    if (e + 2 - ri->request_method >= atoi(MAX_HEAD_BYTES) - 8)
        return 1;
    return e[2] == '\r' || e[2] == '\n' || e[2] == '\0';
}

static int check_framing(const struct mg_request_info *ri, refusal *r)
{
    static const char *const cl_digits =
        "Content-Length must be decimal digits (RFC 9112 6.3)";
    _Static_assert(MG_MAX_HEADERS == 64, "the message below says 63");
    if (ri->num_headers >= MG_MAX_HEADERS) {
        *r = (refusal){431, "headers_too_large", NULL,
                       "more than 63 header lines (the server would not "
                       "read them all)"};
        return 1;
    }
    if (!headers_complete(ri)) {
        *r = (refusal){400, "bad_header", NULL,
                       "a header line that starts with a blank (obs-fold), "
                       "a ':' or a control byte, or bare-LF line endings "
                       "before a body (use CRLF) (RFC 9112 2.2, 5.2)"};
        return 1;
    }
    int ncl = 0;
    unsigned long long cl = 0;
    codings tc = {0};
    for (int i = 0; i < ri->num_headers; i++) {
        const char *name = ri->http_headers[i].name;
        const char *value = ri->http_headers[i].value;
        if (strcasecmp(name, "Content-Length") == 0) {
            unsigned long long v;
            if (parse_length(value, &v) != 0) {
                *r = (refusal){400, "bad_content_length", NULL, cl_digits};
                return 1;
            }
            if (ncl++ && v != cl) {
                *r = (refusal){400, "bad_content_length", NULL,
                               "Content-Length is given twice with "
                               "different values"};
                return 1;
            }
            cl = v;
        } else if (strcasecmp(name, "Transfer-Encoding") == 0) {
            add_codings(&tc, value);
        }
    }
    if (!tc.headers)
        return 0;
    if (ncl)
        *r = (refusal){400, "bad_framing", NULL,
                       "Content-Length together with Transfer-Encoding: "
                       "the body's length is ambiguous (RFC 9112 6.1)"};
    else if (ri->http_version && strcmp(ri->http_version, "1.0") == 0)
        *r = (refusal){400, "bad_transfer_encoding", NULL,
                       "Transfer-Encoding in an HTTP/1.0 request "
                       "(RFC 9112 6.1)"};
    else if (tc.headers == 1 && tc.n == 1 && tc.chunked == 1)
        return 0;
    else if (tc.chunked == 1 && tc.last_chunked && tc.n > 1)
        *r = (refusal){501, "unsupported_transfer_encoding", NULL,
                       "the only transfer coding served is chunked, "
                       "alone"};
    else
        *r = (refusal){400, "bad_transfer_encoding", NULL,
                       "Transfer-Encoding must be chunked, once and last "
                       "(RFC 9112 6.1)"};
    return 1;
}

/* Reads the body into a malloc'd NUL-terminated buffer (*out, NULL when
 * empty). Returns 0, 413 (over limit: the rest stays unread), 400 (the
 * client stopped sending: closed or request_timeout_ms) or 500 (ENOMEM). */
static int read_body(conn *c, const struct mg_request_info *ri, size_t limit,
                     char **out, size_t *outlen)
{
    long long cl = ri->content_length; /* -1: chunked (civetweb ignores a
                                          Content-Length next to it) */
    *out = NULL;
    *outlen = 0;
    if (cl == 0)
        return 0;
    if (cl > 0 && (unsigned long long)cl > limit)
        return 413;
    const char *expect = mg_get_header(c->mg, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0)
        mg_printf(c->mg, "HTTP/1.1 100 Continue\r\n\r\n");
    /* Chunked: grow up to limit + 1, one byte to see that it is over. */
    size_t cap = cl > 0 ? (size_t)cl : (limit < 16384 ? limit + 1 : 16384);
    size_t want = cl > 0 ? (size_t)cl : limit + 1;
    char *buf = malloc(cap + 1);
    size_t n = 0;
    int rc = 0;
    while (buf && n < want) {
        if (n == cap) {
            size_t ncap = cap * 2 < want ? cap * 2 : want;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        int r = mg_read(c->mg, buf + n, cap - n);
        if (r <= 0) {
            rc = cl > 0 || r < 0 ? 400 : 0; /* chunked: 0 is its end */
            break;
        }
        n += (size_t)r;
    }
    if (!buf)
        return 500;
    if (!rc && n > limit)
        rc = 413;
    if (rc) {
        free(buf);
        return rc;
    }
    buf[n] = '\0';
    *out = buf;
    *outlen = n;
    return 0;
}

/* The core's view of the request on c. local_uri_raw: the path as sent,
 * without the query (civetweb cuts the request line at '?'); with
 * decode_url=no it is not decoded. request_uri may be an absolute URI;
 * local_uri has had its dot segments removed. NULL for "*" and other
 * hosts' absolute URIs: the caller refuses those (path "*"). */
static tb__http_in request_of(conn *c, const struct mg_request_info *ri)
{
    return (tb__http_in){
        .ops = &conn_ops,
        .conn = c,
        .method = ri->request_method,
        .path = ri->local_uri_raw ? ri->local_uri_raw : "*",
        .query = ri->query_string,
    };
}

/* 1 if the request is a websocket handshake (RFC 6455 4.1: GET,
 * Upgrade: websocket, Connection: upgrade, a Sec-WebSocket-Key); anything
 * else, even with an Upgrade header, is an ordinary request. */
static int wants_websocket(struct mg_connection *mg,
                           const struct mg_request_info *ri)
{
    const char *up = mg_get_header(mg, "Upgrade");
    const char *co = mg_get_header(mg, "Connection");
    return strcmp(ri->request_method, "GET") == 0 && up &&
           tb__http_has_token(up, "websocket") && co &&
           tb__http_has_token(co, "upgrade") &&
           mg_get_header(mg, "Sec-WebSocket-Key");
}

/* 0 if the websocket handshake's own headers are ones civetweb can
 * answer, else 1 with *r filled. RFC 6455 4.2.1: the key is 16 bytes in
 * base64 (24 characters; civetweb fails a 101 for a key over about 60,
 * after on_ws_connect has accepted it) and the version 13 (426 with
 * Sec-WebSocket-Version, 4.4). */
static int check_handshake(struct mg_connection *mg, refusal *r)
{
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        "0123456789+/";
    const char *key = mg_get_header(mg, "Sec-WebSocket-Key");
    const char *version = mg_get_header(mg, "Sec-WebSocket-Version");
    if (strlen(key) != 24 || strspn(key, b64) != 22 ||
        strcmp(key + 22, "==") != 0) {
        *r = (refusal){400, "bad_websocket_key", NULL,
                       "Sec-WebSocket-Key must be 16 bytes in base64 (24 "
                       "characters, RFC 6455 4.2.1)"};
        return 1;
    }
    if (!version || strcmp(version, "13") != 0) {
        *r = (refusal){426, "bad_websocket_version",
                       "Sec-WebSocket-Version: 13\r\n",
                       "Sec-WebSocket-Version must be 13 (RFC 6455)"};
        return 1;
    }
    return 0;
}

/* civetweb's begin_request: every request is ours, before civetweb looks
 * at files, .htpasswd, CORS or its handler table; but a websocket upgrade
 * goes on to civetweb's websocket handshake (on_ws_connect below). */
static int on_request(struct mg_connection *mg)
{
    const struct mg_request_info *ri = mg_get_request_info(mg);
    const server *srv = ri->user_data;
    tb_app *app = srv->base.app;
    conn c = {.mg = mg, .head = strcmp(ri->request_method, "HEAD") == 0};
    c.close = !keeps_alive(&c, ri);
    c.ka_s = tb_app_get_config(app)->http.keepalive_timeout_ms / 1000;
    c.unread = ri->content_length != 0; /* -1: chunked or unknown */
    tb__http_in req = request_of(&c, ri);
    int upgrade = tb__app_has_websockets(app) && wants_websocket(mg, ri);
    refusal r;
    if (check_framing(ri, &r) || (upgrade && check_handshake(mg, &r)))
        return refuse(app, &req, r.status, r.code, r.headers, r.message);
    if (upgrade)
        return 0; /* on to civetweb's handshake: on_ws_connect */
    if (!ri->local_uri_raw)
        return refuse(app, &req, 400, "bad_path", NULL,
                      "the request target is not a path on this server");
    size_t max_body = tb_app_get_config(app)->http.max_body;
    char *body;
    size_t len;
    int got = read_body(&c, ri, max_body, &body, &len);
    c.unread = got == 413; /* 400: the client stopped sending */
    switch (got) {
    case 0:
        break;
    case 413: {
        char msg[96];
        snprintf(msg, sizeof msg, "the request body is over %zu bytes",
                 max_body);
        return refuse(app, &req, 413, "too_large", NULL, msg);
    }
    case 400:
        return refuse(app, &req, 400, "bad_body", NULL,
                      "the request body ended early (connection closed "
                      "or timed out)");
    default:
        return refuse(app, &req, 500, "internal", NULL,
                      "out of memory reading the request body");
    }
    req.body = body;
    req.body_len = len;
    int status = tb__http_handle(app, &req);
    free(body);
    /* For civetweb's access log; 1..999 means "handled". */
    return status >= 100 && status <= 999 ? status : 500;
}

/* ---------------------------------------------------------------- websockets
 *
 * civetweb does the upgrade (it checks the request and sends the 101), and
 * then would keep one of its threads in a read loop for the connection's
 * whole life. Instead, the ready handler takes the socket away: it finds
 * the descriptor by the connection's peer address (civetweb has no public
 * way to get it), duplicates it for the core, and puts a fresh unconnected
 * socket under civetweb's descriptor number (dup2), so that civetweb's own
 * clean-up (shutdown, close) only touches that stand-in (http_socket.c). Marked
 * must_close, civetweb leaves its read loop at once and frees the thread. */

static int on_ws_connect(const struct mg_connection *cmg, void *ud)
{
    struct mg_connection *mg = (struct mg_connection *)(uintptr_t)cmg;
    const server *srv = ud;
    const struct mg_request_info *ri = mg_get_request_info(mg);
    conn c = {.mg = mg, .close = 1};
    tb__http_in req = request_of(&c, ri);
    if (!ri->local_uri_raw) {
        mg_disable_connection_keep_alive(mg);
        tb__http_refuse(srv->base.app, &req, 400, "bad_path", NULL,
                        "the request target is not a path on this server");
        return 1;
    }
    tb_ws *ws = tb__http_handle_upgrade(srv->base.app, &req);
    if (!ws) {
        mg_disable_connection_keep_alive(mg); /* answered: close after */
        return 1;
    }
    mg_set_user_connection_data(mg, ws);
    return 0;
}

static void on_ws_ready(struct mg_connection *mg, void *ud)
{
    const server *srv = ud;
    tb_ws *ws = mg_get_user_connection_data(mg);
    mg_set_user_connection_data(mg, NULL);
    mg_disable_connection_keep_alive(mg); /* leave the read loop at once */
    if (!ws)
        return;
    const struct mg_request_info *ri = mg_get_request_info(mg);
    tb__http_peer p = peer_of(ri);
    int fd = srv->front
                 ? tb__http_front_handover(srv->base.app, srv->front, 1, &p)
                 : tb__http_take_socket(
                       srv->base.app,
                       tb__http_find_socket(srv->sa.sin_port, srv->local,
                                            ri->remote_addr, ri->remote_port),
                       &p);
    if (fd < 0)
        tb__ws_release(ws);
    else
        tb__ws_adopt(ws, fd);
}

static int on_ws_data(struct mg_connection *mg, int bits, char *data,
                      size_t len, void *ud)
{
    (void)mg;
    (void)bits;
    (void)data;
    (void)len;
    (void)ud;
    return 0; /* never reached: the socket has left civetweb */
}

static void on_ws_close(const struct mg_connection *cmg, void *ud)
{
    (void)ud;
    struct mg_connection *mg = (struct mg_connection *)(uintptr_t)cmg;
    tb_ws *ws = mg_get_user_connection_data(mg);
    if (ws) { /* accepted, but the handshake failed */
        mg_set_user_connection_data(mg, NULL);
        tb__ws_release(ws);
    }
}

/* civetweb's own error answers, for what it refuses before on_request or
 * during a websocket handshake: a request it cannot parse (request line,
 * headers over max_request_size or not complete within
 * request_timeout_ms), a version other than HTTP/1.0 and 1.1, a framing
 * header it refuses, a handshake it cannot complete. civetweb would answer
 * text/plain with the request's own version echoed into the status line
 * (garbage for a bad request line) or, once a handshake has started, with
 * no status line at all. Answered here in the API's JSON shape instead,
 * with our own status line; the connection closes. */
static refusal civetweb_refusal(int status, const char *msg)
{
    static const char malformed[] =
        "malformed or incomplete request: the request line and headers "
        "(printable \"Name: value\" lines) must end with an empty line "
        "within " MAX_HEAD_BYTES " bytes and " REQUEST_TIMEOUT_MS " ms";
    static const char too_large[] =
        "the request line and headers are over " MAX_HEAD_BYTES " bytes";
    switch (status) {
    case 400:
        if (msg && strcmp(msg, "Malformed message") == 0)
            return (refusal){400, "bad_request", NULL, malformed};
        return (refusal){400, "bad_request", NULL,
                         "malformed request: want a request line "
                         "\"METHOD target HTTP/1.1\" and \"Name: value\" "
                         "headers (RFC 9112)"};
    case 411:
        return (refusal){400, "bad_content_length", NULL,
                         "Content-Length must be decimal digits (RFC 9112 "
                         "6.3)"};
    case 413:
        return (refusal){431, "headers_too_large", NULL, too_large};
    case 426:
        return (refusal){426, "bad_websocket_version",
                         "Sec-WebSocket-Version: 13\r\n",
                         "Sec-WebSocket-Version must be 13 (RFC 6455)"};
    case 505:
        return (refusal){505, "http_version_not_supported", NULL,
                         "only HTTP/1.0 and HTTP/1.1 are served"};
    default:
        if (status >= 400 && status < 500)
            return (refusal){status, "bad_request", NULL,
                             "the request was refused"};
        return (refusal){500, "internal", NULL,
                         "the server could not answer this request"};
    }
}

static int on_http_error(struct mg_connection *mg, int status, const char *msg)
{
    const struct mg_request_info *ri = mg_get_request_info(mg);
    /* A websocket that on_ws_connect accepted and whose handshake civetweb
     * then failed: civetweb runs no close handler for it. */
    tb_ws *ws = mg_get_user_connection_data(mg);
    if (ws) {
        mg_set_user_connection_data(mg, NULL);
        tb__ws_release(ws);
    }
    const server *srv = ri->user_data;
    conn c = {.mg = mg};
    /* Not ri's method and path: unparsed, they may be anything. */
    tb__http_in req = {
        .ops = &conn_ops,
        .conn = &c,
        .method = "-",
        .path = "-",
    };
    /* Headers parsed (get_request resets num_headers first): the request
     * line was good, and a framing header says more than civetweb's
     * status. */
    refusal r;
    if (ri->num_headers <= 0 || !check_framing(ri, &r))
        r = civetweb_refusal(status, msg);
    refuse(srv->base.app, &req, r.status, r.code, r.headers, r.message);
    return 0; /* answered: civetweb sends nothing */
}

static int on_log(const struct mg_connection *mg, const char *message)
{
    (void)mg;
    tb__log(TB_LOG_WARN, "http: civetweb: %s", message);
    return 1; /* logged: civetweb writes nothing itself */
}

/* Parses "host:port" (dotted IPv4 or "localhost"; port 1..65535) into
 * civetweb's "a.b.c.d:port" (its own parser takes 300.1.1.1 or port 70000
 * silently, and a trailing 's' or 'r' as TLS or redirect). */
static int parse_listen(const char *spec, char *out, size_t outsz,
                        struct sockaddr_in *sa, in_addr_t *local, int *loopback)
{
    const char *colon = strrchr(spec, ':');
    char host[64];
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof host)
        return TB_EINVAL;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) != 1)
        return TB_EINVAL;
    const char *p = colon + 1;
    if (!*p || strspn(p, "0123456789") != strlen(p) || strlen(p) > 5)
        return TB_EINVAL;
    long port = strtol(p, NULL, 10);
    if (port < 1 || port > 65535)
        return TB_EINVAL;
    *loopback = (ntohl(a.s_addr) >> 24) == 127;
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    sa->sin_addr.s_addr =
        a.s_addr == htonl(INADDR_ANY) ? htonl(INADDR_LOOPBACK) : a.s_addr;
    *local = a.s_addr;
    snprintf(out, outsz, "%s:%ld", host, port);
    return 0;
}

static void library_init(void)
{
    mg_init_library(0); /* no TLS; mg_start2 reports a failure */
}

/* Listens on http.listen; civetweb's threads serve from then on. */
static int server_start(tb__http_server *srv)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    server *s = (server *)srv;
    tb_app *app = srv->app;
    const tb_app_config *cfg = tb_app_get_config(app);
    if (s->ctx)
        return TB_EBUSY;
    int loopback = 0;
    if (parse_listen(cfg->http.listen, s->addr, sizeof s->addr, &s->sa,
                     &s->local, &loopback)) {
        tb__log(TB_LOG_ERROR,
                "http: bad http_listen \"%s\": want an IPv4 address or "
                "localhost, a colon and a port 1..65535 (127.0.0.1:8080)",
                cfg->http.listen);
        return TB_EINVAL;
    }
    pthread_once(&once, library_init);
    char threads[16], keepalive[16];
    snprintf(threads, sizeof threads, "%d", cfg->http.threads);
    /* Behind the front, civetweb listens on a loopback port of its own,
     * and keeps its pooled connections longer than the front does (so it
     * never closes one under a request). */
    s->pub = s->sa;
    s->pub.sin_addr.s_addr = s->local; /* 0.0.0.0 stays every address */
    if (cfg->http.front) {
        snprintf(s->addr, sizeof s->addr, "127.0.0.1:0");
        s->local = htonl(INADDR_LOOPBACK);
    }
    snprintf(keepalive, sizeof keepalive, "%d",
             cfg->http.front ? 2000 : cfg->http.keepalive_timeout_ms);
    /* clang-format off */
    const char *options[] = {
        "listening_ports", s->addr,
        "num_threads", threads,
        "enable_keep_alive", "yes",
        "keep_alive_timeout_ms", keepalive,
        "request_timeout_ms", REQUEST_TIMEOUT_MS,
        "listen_backlog", "1024",
        "connection_queue", "256",
        "tcp_nodelay", "1",
        "max_request_size", MAX_HEAD_BYTES, /* request line + headers */
        "decode_url", "no",         /* the router decodes the raw path */
        NULL};
    /* clang-format on */
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.begin_request = on_request;
    cb.log_message = on_log;
    cb.http_error = on_http_error;
    struct mg_init_data init = {&cb, s, options};
    char etext[256] = "";
    unsigned ecode = 0;
    struct mg_error_data err = {&ecode, etext, sizeof etext};
    if (!(s->ctx = mg_start2(&init, &err))) {
        tb__log(TB_LOG_ERROR,
                "http: cannot listen on %s: %s (address in use, or not "
                "an address of this host?)",
                s->addr, etext[0] ? etext : "mg_start failed");
        return TB_EINVAL;
    }
    if (tb__app_has_websockets(app))
        mg_set_websocket_handler(s->ctx, "/", on_ws_connect, on_ws_ready,
                                 on_ws_data, on_ws_close, s);
    if (cfg->http.front) {
        struct mg_server_port port;
        int rc = TB_EINVAL;
        if (mg_get_server_ports(s->ctx, 1, &port) == 1 && port.port > 0) {
            s->sa.sin_family = AF_INET;
            s->sa.sin_port = htons((uint16_t)port.port);
            s->sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            s->front = tb__http_front_start(app, &s->pub, &s->sa, &rc);
        }
        if (!s->front) {
            mg_stop(s->ctx);
            s->ctx = NULL;
            return rc;
        }
        snprintf(s->addr, sizeof s->addr, "%s", cfg->http.listen);
    }
    int token = cfg->http.api_token && cfg->http.api_token[0];
    tb__log(TB_LOG_INFO,
            "http: listening on %s (%d threads, at most %d in long polls, %s)",
            s->addr, cfg->http.threads, cfg->http.longpoll_max,
            token ? "API token required" : "no API token");
    if (!loopback && !token)
        tb__log(TB_LOG_WARN,
                "http: %s is not a loopback address and there is no API "
                "token: the API is open to anyone on the network "
                "(set api_token)",
                s->addr);
    else if (!loopback)
        tb__log(TB_LOG_WARN,
                "http: %s is not a loopback address: the API is reachable "
                "from the network, and the API token travels in clear text "
                "(no TLS)",
                s->addr);
    return 0;
}

/* civetweb's accept thread sees mg_stop's flag only when its poll() on
 * the listener returns, which it does every 2 s (SOCKET_TIMEOUT_QUANTUM)
 * or on a new connection: connect to it until mg_stop returns. */
static void *poke_thread(void *arg)
{
    server *s = arg;
    while (!atomic_load(&s->stopped)) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            (void)connect(fd, (struct sockaddr *)&s->sa, sizeof s->sa);
            close(fd);
        }
        nanosleep(&(struct timespec){0, 10 * 1000000L}, NULL);
    }
    return NULL;
}

/* Stops accepting, waits for the handlers in flight. */
static void server_stop(tb__http_server *srv)
{
    server *s = (server *)srv;
    if (!s->ctx)
        return;
    tb__http_front_stop(s->front); /* no new connections */
    pthread_t poke;
    int poking = pthread_create(&poke, NULL, poke_thread, s) == 0;
    mg_stop(s->ctx); /* closes the listener, waits for handlers in flight */
    atomic_store(&s->stopped, 1);
    if (poking)
        pthread_join(poke, NULL);
    s->ctx = NULL;
    tb__http_front_free(s->front); /* their answers go out, then the end */
    s->front = NULL;
    tb__log(TB_LOG_INFO, "http: stopped listening on %s", s->addr);
}

static void server_free(tb__http_server *srv)
{
    server_stop(srv);
    free(srv);
}

static const tb__http_server_ops server_ops = {
    .name = "civetweb",
    .start = server_start,
    .stop = server_stop,
    .free = server_free,
};

tb__http_server *tb__http_civetweb_new(tb_app *app)
{
    server *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->base.ops = &server_ops;
    s->base.app = app;
    atomic_init(&s->stopped, 0);
    return &s->base;
}
