/* bench_wsraw.c - the websocket benchmark's baseline: a minimal wslay
 * broadcast server, one libevent thread and no taskbus, that bench_ws -m load
 * (tests/bench/bench_ws.c) measures side by side with taskbus
 * (tests/bench/run_ws.sh, run_coldstart.sh). What both use is in ws_bench.h.
 *
 * Usage: bench_wsraw -p PORT [-d SECONDS]
 *
 * It answers `GET /ws?events=p1,p2` (RFC 6455 upgrade; patterns of
 * dot-separated segments, '*' matching one), `POST /events/{name}` with 202
 * {"id","name"} and sends the event to every websocket whose pattern
 * matches, as one text frame holding taskbus's envelope
 * {"id","name","data","ts","origin"}, and `GET /healthz`. The frame is built
 * once per event (wslay's frame API) and its bytes appended to each client's
 * output buffer; a client's wslay event context (pings, close) exists only
 * once it sends something, so an idle client costs a socket, a bufferevent
 * and its record (about 2.4 KB resident, measured with 10 000). Keep-alive
 * as in HTTP/1.1; no limit on a slow client's buffer.
 * It runs until SIGINT/SIGTERM or SECONDS (default 900).
 *
 * It raises its open-file limit to the hard limit and listens on
 * 127.0.0.1 only. It prints "raw listening on 127.0.0.1:PORT (pid P, open
 * files N)" once it listens, and its counters and CPU time at the end.
 * Exit status: 0 after SIGINT/SIGTERM or the deadline, 1 when it cannot
 * listen, 2 on bad usage.
 */
#include "ws_bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <wslay/wslay.h>

#define BODY_MAX (1 << 20)   /* POST body */
#define RAW_PATS_MAX 16      /* patterns per websocket */
#define RAW_GROUPS_MAX 65536 /* distinct patterns */

typedef struct rconn rconn;

typedef struct rmember {
    rconn *c;
    int slot; /* index into c->mem */
} rmember;

/* The websockets subscribed to one pattern. */
typedef struct rgroup {
    char *pat;
    rmember *v;
    size_t n, cap;
} rgroup;

struct rconn {
    struct bufferevent *bev;
    int is_ws;
    int closing;                /* close once the output is written */
    wslay_event_context_ptr ws; /* from the first byte the client sends */
    long body_len;              /* a POST waiting for its body, or -1 */
    int body_json;
    char *body_name;
    int npat;
    struct {
        int g;
        size_t i;
    } mem[RAW_PATS_MAX];
    uint64_t stamp; /* the last event sent here */
};

static struct {
    struct event_base *base;
    rgroup *g;
    int ng, gcap;
    wslay_frame_context_ptr fctx;
    char *env, *frame; /* the envelope and its frame, reused */
    size_t envcap, framelen, framecap;
    int oom;
    uint64_t conns, ws_now, ws_peak, events, deliveries, requests;
} RS;

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 1024;
    while (n < need)
        n *= 2;
    char *p = realloc(*buf, n);
    if (!p)
        return -1;
    *buf = p;
    *cap = n;
    return 0;
}

static int raw_group(const char *pat, size_t len)
{
    for (int i = 0; i < RS.ng; i++)
        if (strlen(RS.g[i].pat) == len && memcmp(RS.g[i].pat, pat, len) == 0)
            return i;
    if (RS.ng == RAW_GROUPS_MAX)
        return -1;
    if (RS.ng == RS.gcap) {
        int cap = RS.gcap ? RS.gcap * 2 : 64;
        rgroup *g = realloc(RS.g, (size_t)cap * sizeof *g);
        if (!g)
            return -1;
        RS.g = g;
        RS.gcap = cap;
    }
    rgroup *g = &RS.g[RS.ng];
    memset(g, 0, sizeof *g);
    if (!(g->pat = strndup(pat, len)))
        return -1;
    return RS.ng++;
}

static int raw_subscribe(rconn *c, const char *pat, size_t len)
{
    int gi = raw_group(pat, len);

    if (gi < 0 || c->npat == RAW_PATS_MAX)
        return -1;
    for (int s = 0; s < c->npat; s++)
        if (c->mem[s].g == gi)
            return 0;
    rgroup *g = &RS.g[gi];
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 16;
        rmember *v = realloc(g->v, cap * sizeof *v);
        if (!v)
            return -1;
        g->v = v;
        g->cap = cap;
    }
    g->v[g->n] = (rmember){c, c->npat};
    c->mem[c->npat].g = gi;
    c->mem[c->npat].i = g->n;
    g->n++;
    c->npat++;
    return 0;
}

static void raw_unsubscribe_all(rconn *c)
{
    for (int s = 0; s < c->npat; s++) {
        rgroup *g = &RS.g[c->mem[s].g];
        size_t i = c->mem[s].i;
        rmember last = g->v[--g->n];
        if (i != g->n) {
            g->v[i] = last;
            last.c->mem[last.slot].i = i;
        }
    }
    c->npat = 0;
}

static void raw_close(rconn *c)
{
    if (c->is_ws) {
        raw_unsubscribe_all(c);
        RS.ws_now--;
    }
    if (c->ws)
        wslay_event_context_free(c->ws);
    free(c->body_name);
    bufferevent_free(c->bev);
    free(c);
}

static void raw_answer(rconn *c, int status, const char *reason,
                       const char *body, int close)
{
    evbuffer_add_printf(bufferevent_get_output(c->bev),
                        "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\nConnection: %s\r\n\r\n%s",
                        status, reason, strlen(body),
                        close ? "close" : "keep-alive", body);
    if (close)
        c->closing = 1;
}

static ssize_t raw_frame_out(const uint8_t *data, size_t len, int flags,
                             void *ud)
{
    (void)flags;
    (void)ud;
    if (grow(&RS.frame, &RS.framecap, RS.framelen + len)) {
        RS.oom = 1;
        return (ssize_t)len;
    }
    memcpy(RS.frame + RS.framelen, data, len);
    RS.framelen += len;
    return (ssize_t)len;
}

/* Appends data as a JSON string to RS.env at *at. */
static int raw_json_string(size_t *at, const char *s, size_t n)
{
    if (grow(&RS.env, &RS.envcap, *at + 6 * n + 3))
        return -1;
    char *o = RS.env + *at;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        } else if (ch < 0x20) {
            o += sprintf(o, "\\u%04x", ch);
        } else {
            *o++ = (char)ch;
        }
    }
    *o++ = '"';
    *at = (size_t)(o - RS.env);
    return 0;
}

/* Sends an event to every websocket whose pattern matches its name. */
static void raw_broadcast(const char *id, const char *name, const char *data,
                          size_t len, int json)
{
    size_t at;
    int n;

    if (grow(&RS.env, &RS.envcap, 256 + strlen(name) + len))
        return;
    n = snprintf(RS.env, RS.envcap,
                 "{\"id\":\"%s\",\"name\":\"%s\",\"data\":", id, name);
    at = (size_t)n;
    if (json) {
        memcpy(RS.env + at, data, len);
        at += len;
    } else if (raw_json_string(&at, data, len)) {
        return;
    }
    if (grow(&RS.env, &RS.envcap, at + 64))
        return;
    at += (size_t)snprintf(RS.env + at, RS.envcap - at,
                           ",\"ts\":%lld,\"origin\":\"raw\"}",
                           (long long)real_us());

    struct wslay_frame_iocb io = {
        .fin = 1,
        .opcode = WSLAY_TEXT_FRAME,
        .payload_length = at,
        .data = (const uint8_t *)RS.env,
        .data_length = at,
    };
    RS.framelen = 0;
    if (wslay_frame_send(RS.fctx, &io) != (ssize_t)at || RS.oom) {
        fprintf(stderr, "bench_wsraw: cannot frame event %s\n", id);
        return;
    }
    RS.events++;
    for (int gi = 0; gi < RS.ng; gi++) {
        rgroup *g = &RS.g[gi];
        if (!g->n || !pattern_match(g->pat, name))
            continue;
        for (size_t i = 0; i < g->n; i++) {
            rconn *c = g->v[i].c;
            if (c->stamp == RS.events)
                continue;
            c->stamp = RS.events;
            evbuffer_add(bufferevent_get_output(c->bev), RS.frame, RS.framelen);
            RS.deliveries++;
        }
    }
}

static void raw_post(rconn *c, const char *body, size_t len)
{
    char id[24], ans[600];

    snprintf(id, sizeof id, "r%016" PRIx64, RS.events + 1);
    snprintf(ans, sizeof ans, "{\"id\":\"%s\",\"name\":\"%s\"}", id,
             c->body_name);
    raw_answer(c, 202, "Accepted", ans, c->closing == 2);
    raw_broadcast(id, c->body_name, body, len, c->body_json);
}

static ssize_t raw_ws_recv(wslay_event_context_ptr ctx, uint8_t *buf,
                           size_t len, int flags, void *ud)
{
    rconn *c = ud;
    int n = evbuffer_remove(bufferevent_get_input(c->bev), buf, len);

    (void)flags;
    if (n <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    return n;
}

static ssize_t raw_ws_send(wslay_event_context_ptr ctx, const uint8_t *data,
                           size_t len, int flags, void *ud)
{
    rconn *c = ud;

    (void)ctx;
    (void)flags;
    if (evbuffer_add(bufferevent_get_output(c->bev), data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

/* Messages from a client (subscribe, dispatch) are not part of the
 * benchmark: they are read and dropped. */
static void raw_ws_msg(wslay_event_context_ptr ctx,
                       const struct wslay_event_on_msg_recv_arg *arg, void *ud)
{
    (void)ctx;
    (void)arg;
    (void)ud;
}

static void raw_ws_read(rconn *c)
{
    static const struct wslay_event_callbacks cb = {
        .recv_callback = raw_ws_recv,
        .send_callback = raw_ws_send,
        .on_msg_recv_callback = raw_ws_msg,
    };

    if (!c->ws && wslay_event_context_server_init(&c->ws, &cb, c) != 0) {
        c->ws = NULL;
        raw_close(c);
        return;
    }
    if (wslay_event_recv(c->ws) != 0) {
        raw_close(c);
        return;
    }
    if (wslay_event_want_write(c->ws) && wslay_event_send(c->ws) != 0) {
        raw_close(c);
        return;
    }
    if (!wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws)) {
        c->closing = 1;
        if (!evbuffer_get_length(bufferevent_get_output(c->bev)))
            raw_close(c);
    }
}

/* Subscribes c to the comma-separated patterns of the query's events=
 * (%2C and %2c count as commas); the number subscribed, or -1. */
static int raw_query_patterns(rconn *c, const char *q, size_t qlen)
{
    char pat[256];
    size_t pl = 0;
    int n = 0;
    const char *p = q, *end = q + qlen;

    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if (e - p > 7 && memcmp(p, "events=", 7) == 0) {
            for (const char *s = p + 7; s <= e; s++) {
                char ch = s < e ? *s : ',';
                if (s + 2 < e && *s == '%' && s[1] == '2' &&
                    (s[2] == 'C' || s[2] == 'c')) {
                    ch = ',';
                    s += 2;
                } else if (s + 2 < e && *s == '%' && s[1] == '2' &&
                           s[2] == 'A') {
                    ch = '*';
                    s += 2;
                }
                if (ch == ',') {
                    if (pl && raw_subscribe(c, pat, pl) != 0)
                        return -1;
                    n += pl > 0;
                    pl = 0;
                } else if (pl < sizeof pat) {
                    pat[pl++] = ch;
                } else {
                    return -1;
                }
            }
        }
        p = e + 1;
    }
    return n;
}

/* Handles one request head; for a POST sets c->body_len (the body is read
 * by the caller), for an upgrade switches c to websocket. */
static void raw_head(rconn *c, const char *h, size_t hl)
{
    const char *sp1 = memchr(h, ' ', hl), *sp2, *eol, *v;
    size_t vl = 0, tl; /* 0: gcc cannot see that header() sets it */

    RS.requests++;
    eol = memmem(h, hl, "\r\n", 2);
    sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || eol - sp2 < 9) {
        raw_answer(c, 400, "Bad Request", "{\"error\":\"bad_request\"}", 1);
        return;
    }
    const char *target = sp1 + 1;
    tl = (size_t)(sp2 - target);
    int v11 = memcmp(sp2 + 1, "HTTP/1.1", 8) == 0;
    int close = !v11;
    if ((v = header(h, hl, "Connection", &vl)) != NULL) {
        if (has_token(v, vl, "close"))
            close = 1;
        else if (has_token(v, vl, "keep-alive"))
            close = 0;
    }
    const char *q = memchr(target, '?', tl);
    size_t pathlen = q ? (size_t)(q - target) : tl;
    size_t mlen = (size_t)(sp1 - h);

    if (mlen == 3 && memcmp(h, "GET", 3) == 0 && pathlen == 3 &&
        memcmp(target, "/ws", 3) == 0) {
        const char *key = header(h, hl, "Sec-WebSocket-Key", &vl);
        size_t ul;
        const char *up = header(h, hl, "Upgrade", &ul);
        char accept[29], ans[256];
        if (!key || !up || !has_token(up, ul, "websocket")) {
            raw_answer(c, 400, "Bad Request", "{\"error\":\"not_websocket\"}",
                       1);
            return;
        }
        ws_accept(key, vl, accept);
        if (!q || raw_query_patterns(c, q + 1, (size_t)(sp2 - q - 1)) <= 0) {
            raw_unsubscribe_all(c);
            raw_answer(c, 400, "Bad Request", "{\"error\":\"no_patterns\"}", 1);
            return;
        }
        snprintf(ans, sizeof ans,
                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                 accept);
        evbuffer_add(bufferevent_get_output(c->bev), ans, strlen(ans));
        c->is_ws = 1;
        if (++RS.ws_now > RS.ws_peak)
            RS.ws_peak = RS.ws_now;
        return;
    }
    if (mlen == 4 && memcmp(h, "POST", 4) == 0 && pathlen > 8 &&
        pathlen < 8 + 256 && memcmp(target, "/events/", 8) == 0 &&
        !memchr(target + 8, '/', pathlen - 8)) {
        if (header(h, hl, "Transfer-Encoding", &vl)) {
            raw_answer(c, 411, "Length Required",
                       "{\"error\":\"chunked_unsupported\"}", 1);
            return;
        }
        v = header(h, hl, "Content-Length", &vl);
        long cl = v ? strtol(v, NULL, 10) : 0;
        if (cl < 0 || cl > BODY_MAX) {
            raw_answer(c, 413, "Payload Too Large", "{\"error\":\"too_large\"}",
                       1);
            return;
        }
        v = header(h, hl, "Content-Type", &vl);
        c->body_json =
            v && vl >= 16 && strncasecmp(v, "application/json", 16) == 0;
        c->body_name = strndup(target + 8, pathlen - 8);
        if (!c->body_name) {
            raw_answer(c, 500, "Internal Server Error", "{\"error\":\"oom\"}",
                       1);
            return;
        }
        c->body_len = cl;
        if (close)
            c->closing = 2; /* after the answer */
        return;
    }
    if (mlen == 3 && memcmp(h, "GET", 3) == 0 && pathlen == 8 &&
        memcmp(target, "/healthz", 8) == 0) {
        raw_answer(c, 200, "OK", "{\"status\":\"ok\"}", close);
        return;
    }
    raw_answer(c, 404, "Not Found", "{\"error\":\"not_found\"}", close);
}

static void raw_on_read(struct bufferevent *bev, void *arg)
{
    rconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    if (c->is_ws) {
        raw_ws_read(c);
        return;
    }
    while (!c->closing || c->closing == 2) {
        size_t have = evbuffer_get_length(in);
        if (c->body_len >= 0) {
            if (have < (size_t)c->body_len)
                return;
            const char *body =
                c->body_len ? (const char *)evbuffer_pullup(in, c->body_len)
                            : "";
            raw_post(c, body, (size_t)c->body_len);
            evbuffer_drain(in, (size_t)c->body_len);
            free(c->body_name);
            c->body_name = NULL;
            c->body_len = -1;
            continue;
        }
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0) {
            if (have > HEAD_MAX)
                raw_answer(c, 431, "Request Header Fields Too Large",
                           "{\"error\":\"head_too_large\"}", 1);
            break;
        }
        size_t hl = (size_t)end.pos + 4;
        raw_head(c, (const char *)evbuffer_pullup(in, (ev_ssize_t)hl), hl);
        evbuffer_drain(in, hl);
        if (c->is_ws) {
            if (evbuffer_get_length(in))
                raw_ws_read(c);
            return;
        }
    }
    if (c->closing == 1 && !evbuffer_get_length(bufferevent_get_output(bev)))
        raw_close(c);
}

static void raw_on_write(struct bufferevent *bev, void *arg)
{
    rconn *c = arg;

    if (c->closing == 1 && !evbuffer_get_length(bufferevent_get_output(bev)))
        raw_close(c);
}

static void raw_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        raw_close(arg);
}

static void raw_on_accept(struct evconnlistener *l, evutil_socket_t fd,
                          struct sockaddr *sa, int salen, void *arg)
{
    rconn *c = calloc(1, sizeof *c);

    (void)l;
    (void)sa;
    (void)salen;
    (void)arg;
    if (!c || !(c->bev = bufferevent_socket_new(RS.base, fd,
                                                BEV_OPT_CLOSE_ON_FREE))) {
        free(c);
        evutil_closesocket(fd);
        return;
    }
    nodelay(fd);
    c->body_len = -1;
    RS.conns++;
    bufferevent_setcb(c->bev, raw_on_read, raw_on_write, raw_on_event, c);
    bufferevent_enable(c->bev, EV_READ);
}

static void raw_on_accept_error(struct evconnlistener *l, void *arg)
{
    static int64_t last;
    int err = EVUTIL_SOCKET_ERROR();

    (void)l;
    (void)arg;
    if (mono_ns() - last > 1000000000) {
        fprintf(stderr, "bench_wsraw: accept: %s\n",
                evutil_socket_error_to_string(err));
        last = mono_ns();
    }
}

static void raw_on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    event_base_loopbreak(RS.base);
}

static int raw_run(int port, int deadline_s)
{
    static const struct wslay_frame_callbacks fcb = {.send_callback =
                                                         raw_frame_out};
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    struct evconnlistener *l;
    struct rusage ru0, ru1;
    long nofile = raise_nofile();

    getrusage(RUSAGE_SELF, &ru0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (!(RS.base = event_base_new()) ||
        wslay_frame_context_init(&RS.fctx, &fcb, NULL) != 0) {
        fprintf(stderr, "bench_wsraw: out of memory\n");
        return 1;
    }
    l = evconnlistener_new_bind(RS.base, raw_on_accept, NULL,
                                LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE |
                                    LEV_OPT_CLOSE_ON_EXEC,
                                4096, (struct sockaddr *)&sa, sizeof sa);
    if (!l) {
        fprintf(stderr, "bench_wsraw: cannot listen on 127.0.0.1:%d: %s\n",
                port, strerror(errno));
        return 1;
    }
    evconnlistener_set_error_cb(l, raw_on_accept_error);
    struct event *s1 = evsignal_new(RS.base, SIGINT, raw_on_stop, NULL);
    struct event *s2 = evsignal_new(RS.base, SIGTERM, raw_on_stop, NULL);
    struct event *dl = evtimer_new(RS.base, raw_on_stop, NULL);
    struct timeval tv = {deadline_s, 0};
    event_add(s1, NULL);
    event_add(s2, NULL);
    event_add(dl, &tv);
    printf("raw listening on 127.0.0.1:%d (pid %d, open files %ld)\n", port,
           (int)getpid(), nofile);
    fflush(stdout);
    event_base_dispatch(RS.base);
    getrusage(RUSAGE_SELF, &ru1);
    printf("raw: connections %" PRIu64 ", requests %" PRIu64
           ", websockets peak %" PRIu64 ", events %" PRIu64
           ", deliveries %" PRIu64 ", cpu %.0f ms\n",
           RS.conns, RS.requests, RS.ws_peak, RS.events, RS.deliveries,
           ru_ms(&ru0, &ru1));
    /* The process ends here: connections are left to the kernel. */
    evconnlistener_free(l);
    event_free(s1);
    event_free(s2);
    event_free(dl);
    return 0;
}

/* ------------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr, "usage: bench_wsraw -p PORT [-d SECONDS]\n"
                    "  -p  port on 127.0.0.1\n"
                    "  -d  stop after this many seconds (default 900)\n");
    exit(2);
}

static int int_opt(const char *s, int min, int max)
{
    char *end;
    long v = strtol(s, &end, 10);

    if (!*s || *end || v < min || v > max)
        usage();
    return (int)v;
}

int main(int argc, char **argv)
{
    int port = 0, deadline_s = 900, c;

    signal(SIGPIPE, SIG_IGN);
    while ((c = getopt(argc, argv, "p:d:h")) != -1) {
        switch (c) {
        case 'p':
            port = int_opt(optarg, 1, 65535);
            break;
        case 'd':
            deadline_s = int_opt(optarg, 1, 86400);
            break;
        default:
            usage();
        }
    }
    if (optind != argc || !port)
        usage();
    return raw_run(port, deadline_s);
}
