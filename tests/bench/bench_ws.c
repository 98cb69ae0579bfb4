/* bench_ws.c - websocket fan-out benchmark: a load generator of websocket
 * subscribers and HTTP publishers (the C side of tests/bench/run_ws.sh). Its
 * baseline server, a minimal wslay broadcast server, is bench_wsraw
 * (tests/bench/bench_wsraw.c); what both use is in ws_bench.h.
 *
 * Usage: bench_ws -m load -p PORT [-c CLIENTS] [-P PATTERNS] [-n EVENTS]
 *                 [-r RATE] [-k CONNS] [-W WINDOW] [-j THREADS]
 *                 [-C CONCURRENCY] [-s BYTES] [-S SERVER_PID] [-d SECONDS]
 *                 [-b BATCH] [-B BUS_PID]
 *        bench_ws -m test
 *
 *   load  CLIENTS websocket clients (default 1) on 127.0.0.1:PORT, client i
 *         subscribed to "bench.p<i % PATTERNS>.*", and CONNS (default 4)
 *         keep-alive HTTP/1.1 publisher connections, each with one POST in
 *         flight. Phases:
 *           connect  at most CONCURRENCY (default 256) handshakes at once;
 *                    each must answer 101 with the right
 *                    Sec-WebSocket-Accept.
 *           probe    every 100 ms one "probe" event per pattern until every
 *                    client has received one: a server may open a
 *                    subscription after its 101, and events before that
 *                    would count as lost. With -S the server's VmRSS is
 *                    read before the connect phase and 1 s after this one.
 *           run      EVENTS (default 10000) events "bench.p<seq % PATTERNS>.e"
 *                    of BYTES (default 128) of JSON,
 *                    {"seq":N,"t":<CLOCK_MONOTONIC ns>,"p":"xx..."}, posted
 *                    as fast as they are answered, or RATE/s (-r, paced by a
 *                    1 ms timer), with at most WINDOW deliveries due for
 *                    events already published and not yet received (-W;
 *                    0: no limit), so that a fan-out run measures what the
 *                    server sustains rather than how fast it drains a
 *                    backlog. A 503 answer is retried. With -b BATCH
 *                    (more than 1), each POST carries BATCH consecutive
 *                    events as a JSON array to POST /events, and its
 *                    answer must hold one id per event.
 *         Receivers find "seq" and "t" in each frame by string search (not
 *         a JSON parse), keep one bit per expected event per client (lost,
 *         duplicated, or delivered to a client whose pattern does not match:
 *         "foreign") and a latency histogram (receive time - t, ~1.5%
 *         buckets). Clients are spread over THREADS (1 or 2) event loops;
 *         the publisher runs on the first. The run ends when every event is
 *         delivered, 2 s after the last answer and the last frame if some
 *         are missing, or at the deadline (default 120 s). A client the
 *         server closes (a slow-client limit, say) fails the benchmark; during
 *         the run the others go on and its missing events count as lost.
 *   test  Self-test: SHA-1 vectors, the RFC 6455 handshake example, pattern
 *         matching, the histogram. Exit 0 when all pass.
 *
 * load raises its open-file limit to the hard limit. Only 127.0.0.1 is
 * ever used. (`bench_ws -m raw`, the server, is now bench_wsraw.)
 *
 * load prints (run_ws.sh reads the last line):
 *   load clients: <n> on <p> patterns, connected in <s> s, probed in <s> s
 *   load server: pid <pid>, VmRSS <kB> kB before the clients, <kB> kB with
 *       them: <bytes> bytes per client                        (with -S)
 *   load published: <n> in <s> s: <r>/s (...)
 *   load delivered: <n> of <expected> in <s> s: <r>/s (lost <l>, duplicated
 *       <d>, foreign <f>, frames <n>, clients closed by the server <c>)
 *   load latency: p50 <us> us p90 <us> us p99 <us> us p999 <us> us max <us> us
 *   load cpu: load generator <ms> ms (<pct>% of one core), server <ms> ms
 *       (<pct>%), rest of the machine <ms> ms (<pct>%) in <s> s of <n> cores
 *       (server with -S; the rest: other processes and loopback softirqs)
 *   result key=value ...
 * With -B the CPU time of a second process the server relies on (its
 * redis-server) is read at the same instants as the server's and printed as
 * bus_cpu_ms, so that "server CPU per event" can count both.
 * Exit status: 0 when every event reached every matching client exactly
 * once, 1 on loss, duplicates, foreign deliveries, a failed connection or
 * the deadline (with a line on stderr), 2 on bad usage.
 */
#include "ws_bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>
#include <wslay/wslay.h>

#define THREADS_MAX 2 /* client event loops */
#define HANDSHAKE_TIMEOUT_S 30
#define PROBE_EVERY_MS 100
#define PROBE_WAIT_MS 10000
#define DRAIN_MS 2000 /* wait for stragglers this long */
#define RSS_SETTLE_MS 1000

/* ------------------------------------------------------------------- load */

enum {
    WSC_IDLE,
    WSC_CONNECTING,
    WSC_HANDSHAKE,
    WSC_OPEN,
    WSC_DONE
};
enum {
    PH_CONNECT,
    PH_PROBE,
    PH_RUN,
    PH_END
};
#define NO_JOB INT64_MIN

typedef struct lthread lthread;

typedef struct wsc {
    int fd, id, pat, state, eof;
    lthread *t;
    struct event *ev;
    char key[25];
    char *hs; /* the handshake answer so far */
    size_t hslen;
    uint8_t *left; /* bytes after the handshake, for wslay first */
    size_t leftn, lefto;
    wslay_event_context_ptr ws;
    uint8_t *seen; /* one bit per expected event */
    uint32_t distinct;
    int probed;
} wsc;

struct lthread {
    int idx;
    struct event_base *base;
    struct event *tick;
    pthread_t th;
    int first, count; /* clients [first, first + count) */
    int next, inflight;
    hist h;
    uint64_t dups, foreign, frames;
    _Atomic int64_t last_rx_ns;
};

typedef struct pubc {
    struct bufferevent *bev;
    int busy, used;
    int64_t job; /* seq, or -1 - pattern for a probe */
    int count;   /* events in the POST: 1, or up to -b in a batch */
} pubc;

static struct {
    /* options */
    int port, nclients, npat, nevents, rate, nconns, window, nthreads, conc,
        dsize, deadline_s, server_pid, batch, bus_pid;
    struct sockaddr_in sa;
    wsc *c;
    lthread t[THREADS_MAX];
    uint32_t *fan; /* clients per pattern */
    uint64_t expected;
    atomic_int opened, probed, failed, stop, errors;
    atomic_int running; /* the run phase has begun */
    atomic_int closed;  /* clients the server closed */
    atomic_uint_fast64_t delivered;
    /* publisher and phases: thread 0 only */
    int phase;
    pubc *pc;
    uint32_t next_seq, acked;
    uint64_t issued; /* deliveries the issued events are due */
    int64_t *retry;
    int *retry_count;
    int nretry;
    char *batch_body; /* -b: the JSON array of one POST */
    uint64_t bad_ids; /* batch answers without one id per event */
    int probe_next, probe_round;
    int64_t probe_at;
    uint64_t busy503, resent, reconnects;
    int64_t t0, t_connected, t_probed, t_start, t_last_ack, t_end, t_cpu_end,
        deadline, settle_until;
    struct rusage ru0, ru1;
    long long srv0, srv1, bus0, bus1, sys0, sys1;
    long rss_before, rss_after;
    char *body;
} L;

/* Marks the run failed; lfail also ends it. The first few messages say
 * what went wrong; the rest (every client refused, say) are only counted. */
static void lerr(int stop, const char *fmt, va_list ap)
{
    if (atomic_fetch_add(&L.errors, 1) < 3) {
        fprintf(stderr, "bench_ws: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
    }
    atomic_store(&L.failed, 1);
    if (stop)
        atomic_store(&L.stop, 1);
}

static void lfail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void lfail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lerr(1, fmt, ap);
    va_end(ap);
}

static void lwarn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void lwarn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lerr(0, fmt, ap);
    va_end(ap);
}

/* utime + stime of a process in clock ticks, or -1. */
static long long proc_ticks(int pid)
{
    char path[64], buf[1024], *p;
    unsigned long long ut, st;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (!(f = fopen(path, "r")))
        return -1;
    p = fgets(buf, sizeof buf, f);
    fclose(f);
    if (!p || !(p = strrchr(buf, ')')))
        return -1;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

/* CPU ticks every core spent busy (not idle or iowait), from /proc/stat:
 * with the load generator's and the server's, it shows what else ran. */
static long long machine_ticks(void)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    int n = f ? fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
                       &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7])
              : 0;

    if (f)
        fclose(f);
    if (n < 8)
        return -1;
    /* user nice system idle iowait irq softirq steal */
    return (long long)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
}

/* VmRSS of a process in kB, or -1. */
static long proc_rss_kb(int pid)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/status", pid);
    if (!(f = fopen(path, "r")))
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static uint32_t events_of_pattern(int pat)
{
    return ((uint32_t)L.nevents + (uint32_t)L.npat - 1 - (uint32_t)pat) /
           (uint32_t)L.npat;
}

/* ---------------------------------------------------------------- clients */

static void wsc_close(wsc *c)
{
    if (c->ev) {
        event_free(c->ev);
        c->ev = NULL;
    }
    if (c->ws) {
        wslay_event_context_free(c->ws);
        c->ws = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    free(c->hs);
    c->hs = NULL;
    free(c->left);
    c->left = NULL;
    c->state = WSC_DONE;
}

static void wsc_pump(lthread *t);

static ssize_t wsc_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                        int flags, void *ud)
{
    wsc *c = ud;
    ssize_t n;

    (void)flags;
    if (c->lefto < c->leftn) {
        n = (ssize_t)(c->leftn - c->lefto < len ? c->leftn - c->lefto : len);
        memcpy(buf, c->left + c->lefto, (size_t)n);
        c->lefto += (size_t)n;
        return n;
    }
    n = recv(c->fd, buf, len, 0);
    if (n > 0)
        return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    c->eof = 1;
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

static ssize_t wsc_send(wslay_event_context_ptr ctx, const uint8_t *data,
                        size_t len, int flags, void *ud)
{
    wsc *c = ud;
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);

    (void)flags;
    if (n >= 0)
        return n;
    wslay_event_set_error(ctx, errno == EAGAIN || errno == EWOULDBLOCK
                                   ? WSLAY_ERR_WOULDBLOCK
                                   : WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

static int wsc_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                       void *ud)
{
    (void)ctx;
    (void)ud;
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)rnd();
    return 0;
}

static void wsc_on_msg(wslay_event_context_ptr ctx,
                       const struct wslay_event_on_msg_recv_arg *a, void *ud)
{
    wsc *c = ud;
    lthread *t = c->t;
    const char *m = (const char *)a->msg, *after;
    size_t n = a->msg_length;
    uint64_t seq, ts, pat;
    int64_t now;

    (void)ctx;
    if (a->opcode != WSLAY_TEXT_FRAME)
        return;
    now = mono_ns();
    t->frames++;
    if (find_num(m, n, "seq", &seq, &after) == 0 &&
        find_num(after, (size_t)(m + n - after), "t", &ts, NULL) == 0) {
        if (seq >= (uint64_t)L.nevents ||
            seq % (uint64_t)L.npat != (uint64_t)c->pat) {
            t->foreign++;
            return;
        }
        uint32_t bit = (uint32_t)(seq / (uint64_t)L.npat);
        if (c->seen[bit >> 3] & (1u << (bit & 7))) {
            t->dups++;
            return;
        }
        c->seen[bit >> 3] |= (uint8_t)(1u << (bit & 7));
        c->distinct++;
        hist_add(&t->h, now > (int64_t)ts ? (uint64_t)(now - (int64_t)ts) : 0);
        atomic_fetch_add_explicit(&L.delivered, 1, memory_order_relaxed);
        atomic_store_explicit(&t->last_rx_ns, now, memory_order_relaxed);
        return;
    }
    if (find_num(m, n, "probe", &seq, &after) == 0 &&
        find_num(after, (size_t)(m + n - after), "pat", &pat, NULL) == 0) {
        if (pat != (uint64_t)c->pat)
            t->foreign++;
        else if (!c->probed && (c->probed = 1))
            atomic_fetch_add(&L.probed, 1);
        return;
    }
    t->foreign++;
}

static void wsc_on_read(evutil_socket_t fd, short what, void *arg);

/* The client's socket becomes readable for frames, with no timeout. */
static int wsc_open(wsc *c)
{
    static const struct wslay_event_callbacks cb = {
        .recv_callback = wsc_recv,
        .send_callback = wsc_send,
        .genmask_callback = wsc_genmask,
        .on_msg_recv_callback = wsc_on_msg,
    };

    if (wslay_event_context_client_init(&c->ws, &cb, c) != 0) {
        c->ws = NULL;
        return -1;
    }
    event_del(c->ev);
    event_add(c->ev, NULL);
    c->state = WSC_OPEN;
    c->t->inflight--;
    atomic_fetch_add(&L.opened, 1);
    return 0;
}

/* Reads frames. A client the server closes before the run ends the
 * benchmark; during the run the others go on, and its missing events count
 * as lost. */
static void wsc_frames(wsc *c)
{
    int rc = wslay_event_recv(c->ws);
    char why[80];

    if (rc == 0 && wslay_event_want_write(c->ws))
        wslay_event_send(c->ws); /* pongs, the answer to a close */
    if (rc == 0 && wslay_event_want_read(c->ws))
        return;
    if (!atomic_load(&L.stop)) {
        if (rc == 0)
            snprintf(why, sizeof why,
                     "the server closed the websocket with code %u",
                     (unsigned)wslay_event_get_status_code_received(c->ws));
        else if (c->eof)
            snprintf(why, sizeof why, "the server closed the connection");
        else
            snprintf(why, sizeof why, "websocket error %d (a bad frame?)", rc);
        atomic_fetch_add(&L.closed, 1);
        if (atomic_load(&L.running))
            lwarn("client %d: %s after %u events", c->id, why, c->distinct);
        else
            lfail("client %d: %s before the run", c->id, why);
    }
    wsc_close(c);
}

/* Reads the answer to the upgrade: 101 with the right accept key. */
static void wsc_handshake(wsc *c)
{
    char want[29];
    size_t vl;
    const char *v, *end;
    ssize_t n = recv(c->fd, c->hs + c->hslen, HEAD_MAX - c->hslen, 0);

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        lfail("client %d: the server closed the connection during the "
              "websocket handshake%s%s",
              c->id, n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
        wsc_close(c);
        return;
    }
    c->hslen += (size_t)n;
    c->hs[c->hslen] = '\0';
    end = memmem(c->hs, c->hslen, "\r\n\r\n", 4);
    if (!end) {
        if (c->hslen == HEAD_MAX) {
            lfail("client %d: handshake answer over %d bytes", c->id, HEAD_MAX);
            wsc_close(c);
        }
        return;
    }
    size_t hl = (size_t)(end - c->hs) + 4;
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
        lfail("client %d: the websocket upgrade was refused: %.*s", c->id,
              (int)strcspn(c->hs, "\r\n"), c->hs);
        wsc_close(c);
        return;
    }
    ws_accept(c->key, strlen(c->key), want);
    v = header(c->hs, hl, "Sec-WebSocket-Accept", &vl);
    if (!v || vl != strlen(want) || memcmp(v, want, vl) != 0) {
        lfail("client %d: wrong Sec-WebSocket-Accept: %.*s (want %s)", c->id,
              v ? (int)vl : 6, v ? v : "(none)", want);
        wsc_close(c);
        return;
    }
    if (c->hslen > hl) {
        c->leftn = c->hslen - hl;
        if (!(c->left = malloc(c->leftn))) {
            lfail("out of memory");
            return;
        }
        memcpy(c->left, c->hs + hl, c->leftn);
    }
    free(c->hs);
    c->hs = NULL;
    if (wsc_open(c) != 0) {
        lfail("out of memory");
        return;
    }
    wsc_pump(c->t);
    if (c->leftn)
        wsc_frames(c);
}

static void wsc_on_read(evutil_socket_t fd, short what, void *arg)
{
    wsc *c = arg;

    (void)fd;
    if (what & EV_TIMEOUT) {
        lfail("client %d: no websocket handshake answer in %d s", c->id,
              HANDSHAKE_TIMEOUT_S);
        wsc_close(c);
        return;
    }
    if (c->state == WSC_HANDSHAKE)
        wsc_handshake(c);
    else if (c->state == WSC_OPEN)
        wsc_frames(c);
}

static void wsc_on_connect(evutil_socket_t fd, short what, void *arg)
{
    wsc *c = arg;
    int err = 0;
    socklen_t el = sizeof err;
    char req[512];
    uint8_t raw[16];
    struct timeval tv = {HANDSHAKE_TIMEOUT_S, 0};

    if (what & EV_TIMEOUT)
        err = ETIMEDOUT;
    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
        err = errno;
    if (err) {
        lfail("cannot connect to 127.0.0.1:%d: %s (client %d; is the server "
              "running?)",
              L.port, strerror(err), c->id);
        wsc_close(c);
        return;
    }
    for (int i = 0; i < 16; i++)
        raw[i] = (uint8_t)rnd();
    base64(raw, sizeof raw, c->key);
    int n = snprintf(req, sizeof req,
                     "GET /ws?events=bench.p%d.* HTTP/1.1\r\n"
                     "Host: 127.0.0.1:%d\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     c->pat, L.port, c->key);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        lfail("client %d: cannot send the upgrade request: %s", c->id,
              strerror(errno));
        wsc_close(c);
        return;
    }
    if (!(c->hs = malloc(HEAD_MAX + 1))) {
        lfail("out of memory");
        return;
    }
    event_free(c->ev);
    c->ev = event_new(c->t->base, fd, EV_READ | EV_PERSIST, wsc_on_read, c);
    if (!c->ev || event_add(c->ev, &tv) != 0) {
        lfail("out of memory");
        return;
    }
    c->state = WSC_HANDSHAKE;
}

static void wsc_start(wsc *c)
{
    struct timeval tv = {HANDSHAKE_TIMEOUT_S, 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    c->t->inflight++;
    if (fd < 0) {
        lfail("client %d: socket: %s (open-file limit %ld)", c->id,
              strerror(errno), raise_nofile());
        return;
    }
    c->fd = fd;
    nodelay(fd);
    if (connect(fd, (struct sockaddr *)&L.sa, sizeof L.sa) != 0 &&
        errno != EINPROGRESS) {
        lfail("cannot connect to 127.0.0.1:%d: %s (client %d; is the server "
              "running?)",
              L.port, strerror(errno), c->id);
        wsc_close(c);
        return;
    }
    c->state = WSC_CONNECTING;
    c->ev = event_new(c->t->base, fd, EV_WRITE, wsc_on_connect, c);
    if (!c->ev || event_add(c->ev, &tv) != 0)
        lfail("out of memory");
}

/* Starts connections until CONCURRENCY handshakes are in progress. */
static void wsc_pump(lthread *t)
{
    int limit = L.conc / L.nthreads > 0 ? L.conc / L.nthreads : 1;

    while (t->inflight < limit && t->next < t->first + t->count &&
           !atomic_load(&L.stop))
        wsc_start(&L.c[t->next++]);
}

/* -------------------------------------------------------------- publisher */

/* The next POST: its first seq (a probe: -1 - pattern) and, in *count, how
 * many events it carries (consecutive seqs). */
static int64_t pub_next_job(int64_t now, int *count)
{
    *count = 1;
    if (L.nretry) {
        L.nretry--;
        *count = L.retry_count[L.nretry];
        return L.retry[L.nretry];
    }
    if (L.phase == PH_PROBE && L.probe_next < L.npat)
        return -1 - (int64_t)L.probe_next++;
    if (L.phase != PH_RUN || L.next_seq >= (uint32_t)L.nevents)
        return NO_JOB;
    if (L.rate &&
        L.next_seq >=
            (uint64_t)(now - L.t_start) * (uint64_t)L.rate / 1000000000u + 1)
        return NO_JOB;
    if (L.window &&
        L.issued - atomic_load_explicit(&L.delivered, memory_order_relaxed) >=
            (uint64_t)L.window)
        return NO_JOB;
    uint32_t first = L.next_seq;
    uint32_t left = (uint32_t)L.nevents - first;
    *count = L.batch < 2
                 ? 1
                 : (int)(left < (uint32_t)L.batch ? left : (uint32_t)L.batch);
    for (int i = 0; i < *count; i++)
        L.issued += L.fan[(first + (uint32_t)i) % (uint32_t)L.npat];
    L.next_seq += (uint32_t)*count;
    return first;
}

/* The body of a batch POST: events first .. first + count - 1, each as an
 * item {"name": "bench.p<seq % PATTERNS>.e", "data": <the single-event
 * body>}. Its length. */
static int batch_body(int64_t first, int count)
{
    char *o = L.batch_body;
    int64_t t = mono_ns();
    *o++ = '[';
    for (int i = 0; i < count; i++) {
        int64_t seq = first + i;
        o += sprintf(o, "%s{\"name\":\"bench.p%d.e\",\"data\":", i ? "," : "",
                     (int)(seq % L.npat));
        int n = sprintf(o, "{\"seq\":%" PRId64 ",\"t\":%" PRId64 ",\"p\":\"",
                        seq, t);
        memset(o + n, 'x', (size_t)(L.dsize - n - 2));
        o += L.dsize - 2;
        *o++ = '"';
        *o++ = '}';
        *o++ = '}';
    }
    *o++ = ']';
    return (int)(o - L.batch_body);
}

static void pub_on_read(struct bufferevent *bev, void *arg);
static void pub_on_event(struct bufferevent *bev, short what, void *arg);

static int pub_connect(pubc *p)
{
    p->bev = bufferevent_socket_new(L.t[0].base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!p->bev)
        return -1;
    bufferevent_setcb(p->bev, pub_on_read, NULL, pub_on_event, p);
    bufferevent_enable(p->bev, EV_READ);
    if (bufferevent_socket_connect(p->bev, (struct sockaddr *)&L.sa,
                                   sizeof L.sa) != 0) {
        bufferevent_free(p->bev);
        p->bev = NULL;
        return -1;
    }
    if (p->used++)
        L.reconnects++;
    return 0;
}

/* Sends the next POST on p if it is free and there is one to send. */
static void pub_issue(pubc *p)
{
    char head[512], probe[64];
    const char *body = L.body;
    int hn, bn = L.dsize;

    if (p->busy || atomic_load(&L.stop))
        return;
    int count;
    int64_t now = mono_ns(), job = pub_next_job(now, &count);
    if (job == NO_JOB)
        return;
    if (!p->bev && pub_connect(p) != 0) {
        lfail("publisher: cannot connect to 127.0.0.1:%d", L.port);
        return;
    }
    if (job >= 0 && L.batch > 1) {
        bn = batch_body(job, count);
        body = L.batch_body;
        hn = snprintf(head, sizeof head, "POST /events HTTP/1.1\r\n");
    } else if (job >= 0) {
        int n = snprintf(L.body, 64,
                         "{\"seq\":%" PRId64 ",\"t\":%" PRId64 ",\"p\":\"", job,
                         mono_ns());
        memset(L.body + n, 'x', (size_t)(L.dsize - n - 2));
        hn =
            snprintf(head, sizeof head, "POST /events/bench.p%d.e HTTP/1.1\r\n",
                     (int)(job % L.npat));
    } else {
        bn = snprintf(probe, sizeof probe, "{\"probe\":%d,\"pat\":%d}",
                      L.probe_round, (int)(-1 - job));
        body = probe;
        hn = snprintf(head, sizeof head,
                      "POST /events/bench.p%d.e HTTP/1.1\r\n", (int)(-1 - job));
    }
    hn += snprintf(head + hn, sizeof head - (size_t)hn,
                   "Host: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n",
                   L.port, bn);
    struct evbuffer *out = bufferevent_get_output(p->bev);
    evbuffer_add(out, head, (size_t)hn);
    evbuffer_add(out, body, (size_t)bn);
    p->busy = 1;
    p->job = job;
    p->count = count;
}

static void pub_kick(void)
{
    for (int i = 0; i < L.nconns; i++)
        pub_issue(&L.pc[i]);
}

static void pub_retry(int64_t job, int count)
{
    if (job >= 0) {
        L.retry[L.nretry] = job;
        L.retry_count[L.nretry++] = count;
    }
}

static void pub_on_event(struct bufferevent *bev, short what, void *arg)
{
    pubc *p = arg;

    if (what & BEV_EVENT_CONNECTED) {
        nodelay(bufferevent_getfd(bev));
        return;
    }
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    int err = EVUTIL_SOCKET_ERROR();
    bufferevent_free(bev);
    p->bev = NULL;
    if (p->busy) {
        p->busy = 0;
        if (what & BEV_EVENT_ERROR && err == ECONNREFUSED) {
            lfail("publisher: cannot connect to 127.0.0.1:%d: %s (is the "
                  "server running?)",
                  L.port, strerror(err));
            return;
        }
        /* The POST may have been taken: sent again, it may duplicate. */
        if (p->job >= 0) {
            L.resent++;
            pub_retry(p->job, p->count);
        }
    }
    pub_issue(p);
}

/* The ids in a batch's answer {"ids":["a","b",...]}: its strings, less
 * the "ids" key. */
static int ids_in(const char *body, size_t len)
{
    int quotes = 0;
    for (size_t i = 0; i < len; i++)
        quotes += body[i] == '"';
    return quotes / 2 - 1;
}

static void pub_on_read(struct bufferevent *bev, void *arg)
{
    pubc *p = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    for (;;) {
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        size_t vl;
        const char *v;
        if (end.pos < 0)
            return;
        size_t hl = (size_t)end.pos + 4;
        const char *h = (const char *)evbuffer_pullup(in, (ev_ssize_t)hl);
        int status = hl > 12 ? atoi(h + 9) : 0;
        v = header(h, hl, "Content-Length", &vl);
        long cl = v ? strtol(v, NULL, 10) : 0;
        v = header(h, hl, "Connection", &vl);
        int close = v && has_token(v, vl, "close");
        if (evbuffer_get_length(in) < hl + (size_t)cl)
            return;
        h = (const char *)evbuffer_pullup(in, (ev_ssize_t)(hl + (size_t)cl));
        if (!p->busy) {
            lfail("publisher: an answer to no request: %.*s",
                  (int)strcspn(h, "\r\n"), h);
            return;
        }
        if (status == 202) {
            if (p->job >= 0) {
                L.acked += (uint32_t)p->count;
                L.t_last_ack = mono_ns();
            }
            /* A batch answers {"ids": [...]}: one id per event. */
            if (p->job >= 0 && L.batch > 1 &&
                ids_in(h + hl, (size_t)cl) != p->count)
                L.bad_ids++;
        } else if (status == 503) {
            L.busy503++;
            pub_retry(p->job, p->count);
        } else {
            lfail("publisher: POST %s/bench.p%d.e: %.*s: %.*s",
                  L.batch > 1 ? "/events (a batch from" : "/events",
                  (int)(p->job >= 0 ? p->job % L.npat : -1 - p->job),
                  (int)strcspn(h, "\r\n"), h, (int)(cl > 300 ? 300 : cl),
                  h + hl);
            return;
        }
        evbuffer_drain(in, hl + (size_t)cl);
        p->busy = 0;
        if (close) {
            bufferevent_free(bev);
            p->bev = NULL;
            pub_issue(p);
            return;
        }
        pub_issue(p);
    }
}

/* ----------------------------------------------------------------- phases */

static int64_t last_rx(void)
{
    int64_t m = 0;
    for (int i = 0; i < L.nthreads; i++) {
        int64_t v =
            atomic_load_explicit(&L.t[i].last_rx_ns, memory_order_relaxed);
        if (v > m)
            m = v;
    }
    return m;
}

static void load_end(int64_t now)
{
    int64_t rx = last_rx();

    L.t_end = rx > L.t_start ? rx : now;
    L.t_cpu_end = now;
    getrusage(RUSAGE_SELF, &L.ru1);
    if (L.server_pid)
        L.srv1 = proc_ticks(L.server_pid);
    if (L.bus_pid)
        L.bus1 = proc_ticks(L.bus_pid);
    L.sys1 = machine_ticks();
    L.phase = PH_END;
    atomic_store(&L.stop, 1);
}

static void load_tick(evutil_socket_t fd, short what, void *arg)
{
    lthread *t = arg;
    int64_t now = mono_ns();

    (void)fd;
    (void)what;
    if (atomic_load(&L.stop)) {
        event_base_loopbreak(t->base);
        return;
    }
    if (t->idx != 0)
        return;
    if (now > L.deadline) {
        static const char *const names[] = {"connecting", "probing", "running"};
        lfail("deadline of %d s passed while %s (%d of %d clients open, "
              "%d probed, %" PRIu32 " of %d events answered, %" PRIu64
              " of %" PRIu64 " deliveries)",
              L.deadline_s, names[L.phase], atomic_load(&L.opened), L.nclients,
              atomic_load(&L.probed), L.acked, L.nevents,
              (uint64_t)atomic_load(&L.delivered), L.expected);
        return;
    }
    switch (L.phase) {
    case PH_CONNECT:
        if (atomic_load(&L.opened) < L.nclients)
            break;
        L.t_connected = now;
        L.phase = PH_PROBE;
        L.probe_next = L.npat;
        L.probe_at = now;
        /* fall through */
    case PH_PROBE:
        if (atomic_load(&L.probed) == L.nclients) {
            if (!L.t_probed)
                L.t_probed = now;
            if (L.server_pid && !L.rss_after) {
                if (!L.settle_until)
                    L.settle_until = now + (int64_t)RSS_SETTLE_MS * 1000000;
                if (now < L.settle_until)
                    break;
                L.rss_after = proc_rss_kb(L.server_pid);
            }
            L.phase = PH_RUN;
            atomic_store(&L.running, 1);
            L.t_start = now;
            getrusage(RUSAGE_SELF, &L.ru0);
            if (L.server_pid)
                L.srv0 = proc_ticks(L.server_pid);
            if (L.bus_pid)
                L.bus0 = proc_ticks(L.bus_pid);
            L.sys0 = machine_ticks();
            break;
        }
        if (now - L.t_connected > (int64_t)PROBE_WAIT_MS * 1000000) {
            lfail("%d of %d clients received no event in %d ms after their "
                  "upgrade: is the subscription active?",
                  L.nclients - atomic_load(&L.probed), L.nclients,
                  PROBE_WAIT_MS);
            return;
        }
        if (L.probe_next >= L.npat && now >= L.probe_at) {
            L.probe_round++;
            L.probe_next = 0;
            L.probe_at = now + (int64_t)PROBE_EVERY_MS * 1000000;
        }
        break;
    case PH_RUN:
        if (L.acked < (uint32_t)L.nevents)
            break;
        if (atomic_load(&L.delivered) >= L.expected) {
            load_end(now);
            return;
        }
        int64_t rx = last_rx();
        if (now - (rx > L.t_last_ack ? rx : L.t_last_ack) >
            (int64_t)DRAIN_MS * 1000000) {
            load_end(now);
            return;
        }
        break;
    }
    pub_kick();
}

static void *load_thread(void *arg)
{
    lthread *t = arg;

    wsc_pump(t);
    event_base_dispatch(t->base);
    return NULL;
}

static void load_on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    lfail("interrupted");
}

static int load_report(void)
{
    hist *h = &L.t[0].h;
    uint64_t dups = 0, foreign = 0, frames = 0;
    uint64_t delivered = atomic_load(&L.delivered);
    double hz = (double)sysconf(_SC_CLK_TCK);

    for (int i = 0; i < L.nthreads; i++) {
        if (i)
            hist_merge(h, &L.t[i].h);
        dups += L.t[i].dups;
        foreign += L.t[i].foreign;
        frames += L.t[i].frames;
    }
    uint64_t lost = L.expected > delivered ? L.expected - delivered : 0;
    int ran = L.t_start != 0; /* the run phase began */
    double cs = L.t_connected ? (double)(L.t_connected - L.t0) / 1e9 : -1;
    double ps = L.t_probed ? (double)(L.t_probed - L.t_connected) / 1e9 : -1;
    double pubs = ran && L.t_last_ack > L.t_start
                      ? (double)(L.t_last_ack - L.t_start) / 1e9
                      : 0;
    double ds =
        ran && L.t_end > L.t_start ? (double)(L.t_end - L.t_start) / 1e9 : 0;
    /* CPU is read when the run ends, which is up to DRAIN_MS after the last
     * delivery when some are missing: its own window. */
    double cpus = ran && L.t_cpu_end > L.t_start
                      ? (double)(L.t_cpu_end - L.t_start) / 1e9
                      : 0;
    double lms = ran ? ru_ms(&L.ru0, &L.ru1) : -1;
    double sms = ran && L.server_pid && L.srv0 >= 0 && L.srv1 >= L.srv0
                     ? (double)(L.srv1 - L.srv0) * 1e3 / hz
                     : -1;
    double bms = ran && L.bus_pid && L.bus0 >= 0 && L.bus1 >= L.bus0
                     ? (double)(L.bus1 - L.bus0) * 1e3 / hz
                     : -1;
    double mms = ran && L.sys0 >= 0 && L.sys1 >= L.sys0
                     ? (double)(L.sys1 - L.sys0) * 1e3 / hz
                     : -1;
    /* Everything else: other processes, and the kernel's work that is
     * charged to no process (softirqs of loopback TCP, mostly). */
    double oms =
        mms >= 0 ? mms - lms - (sms > 0 ? sms : 0) - (bms > 0 ? bms : 0) : -1;

    printf("load clients: %d on %d patterns (%u per pattern), %d threads: "
           "connected in %.3f s, probed in %.3f s\n",
           L.nclients, L.npat, L.fan[0], L.nthreads, cs, ps);
    if (L.server_pid)
        printf("load server: pid %d, VmRSS %ld kB before the clients, %ld kB "
               "with them: %.0f bytes per client\n",
               L.server_pid, L.rss_before, L.rss_after,
               L.rss_after > 0 && L.rss_before > 0
                   ? (double)(L.rss_after - L.rss_before) * 1024 / L.nclients
                   : -1.0);
    printf("load published: %" PRIu32 " of %d in %.3f s: %.0f/s (%d "
           "connections%s, %d event(s) a POST; 503 busy %" PRIu64
           ", resent %" PRIu64 ", reconnects %" PRIu64 ", bad id lists %" PRIu64
           ")\n",
           L.acked, L.nevents, pubs, pubs > 0 ? L.acked / pubs : 0, L.nconns,
           L.rate ? ", paced" : "", L.batch, L.busy503, L.resent, L.reconnects,
           L.bad_ids);
    printf("load delivered: %" PRIu64 " of %" PRIu64 " in %.3f s: %.0f/s "
           "(lost %" PRIu64 ", duplicated %" PRIu64 ", foreign %" PRIu64
           ", frames %" PRIu64 ", clients closed by the server %d)\n",
           delivered, L.expected, ds, ds > 0 ? (double)delivered / ds : 0, lost,
           dups, foreign, frames, atomic_load(&L.closed));
    printf("load latency: p50 %.0f us p90 %.0f us p99 %.0f us p999 %.0f us "
           "max %.0f us (publish to receive, %" PRIu64 " samples)\n",
           hist_pct(h, 50) / 1e3, hist_pct(h, 90) / 1e3, hist_pct(h, 99) / 1e3,
           hist_pct(h, 99.9) / 1e3, (double)h->max / 1e3, h->n);
    printf("load cpu: load generator %.0f ms (%.0f%% of one core)", lms,
           cpus > 0 ? lms / 10 / cpus : 0);
    if (sms >= 0)
        printf(", server %.0f ms (%.0f%%)", sms,
               cpus > 0 ? sms / 10 / cpus : 0);
    if (bms >= 0)
        printf(", bus (pid %d) %.0f ms (%.0f%%)", L.bus_pid, bms,
               cpus > 0 ? bms / 10 / cpus : 0);
    if (oms >= 0)
        printf(", rest of the machine %.0f ms (%.0f%%)", oms,
               cpus > 0 ? oms / 10 / cpus : 0);
    printf(" in %.3f s of %ld cores\n", cpus, sysconf(_SC_NPROCESSORS_ONLN));
    printf("result clients=%d patterns=%d events=%d published=%" PRIu32
           " expected=%" PRIu64 " delivered=%" PRIu64 " lost=%" PRIu64
           " dup=%" PRIu64 " foreign=%" PRIu64 " pub_rate=%.0f rate=%.0f"
           " p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f"
           " load_cpu_ms=%.0f server_cpu_ms=%.0f bus_cpu_ms=%.0f"
           " other_cpu_ms=%.0f"
           " wall_s=%.3f cpu_s=%.3f"
           " rss_before_kb=%ld rss_after_kb=%ld connect_s=%.3f busy503=%" PRIu64
           " resent=%" PRIu64 " closed=%d failed=%d batch=%d bad_ids=%" PRIu64
           "\n",
           L.nclients, L.npat, L.nevents, L.acked, L.expected, delivered, lost,
           dups, foreign, pubs > 0 ? L.acked / pubs : 0,
           ds > 0 ? (double)delivered / ds : 0, hist_pct(h, 50) / 1e3,
           hist_pct(h, 90) / 1e3, hist_pct(h, 99) / 1e3, (double)h->max / 1e3,
           lms, sms, bms, oms, ds, cpus, L.rss_before, L.rss_after, cs,
           L.busy503, L.resent, atomic_load(&L.closed), atomic_load(&L.failed),
           L.batch, L.bad_ids);
    fflush(stdout);
    if (atomic_load(&L.errors) > 3)
        fprintf(stderr, "bench_ws: and %d more errors\n",
                atomic_load(&L.errors) - 3);
    if (!ran) {
        fprintf(stderr, "bench_ws: no event was published: the run failed "
                        "before it began\n");
        return 1;
    }
    if (L.bad_ids) {
        fprintf(stderr,
                "bench_ws: %" PRIu64 " batch answers without one id per "
                "event\n",
                L.bad_ids);
        return 1;
    }
    if (lost || dups || foreign) {
        fprintf(stderr,
                "bench_ws: %" PRIu64 " deliveries lost, %" PRIu64
                " duplicated, %" PRIu64 " foreign\n",
                lost, dups, foreign);
        return 1;
    }
    return atomic_load(&L.failed) ? 1 : 0;
}

/* One blocking connect first, so that a server that is not there gets one
 * clear line rather than one per client. */
static int load_reachable(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), rc = -1;

    if (fd >= 0)
        rc = connect(fd, (struct sockaddr *)&L.sa, sizeof L.sa);
    if (rc != 0)
        fprintf(stderr,
                "bench_ws: cannot connect to 127.0.0.1:%d: %s (is the server "
                "running?)\n",
                L.port, strerror(errno));
    if (fd >= 0)
        close(fd);
    return rc;
}

static int load_run(void)
{
    long nofile = raise_nofile();
    int rc;

    if (nofile > 0 && L.nclients + L.nconns + 64 > nofile) {
        fprintf(stderr,
                "bench_ws: %d clients need more open files than the limit "
                "(%ld)\n",
                L.nclients, nofile);
        return 2;
    }
    L.sa.sin_family = AF_INET;
    L.sa.sin_port = htons((uint16_t)L.port);
    L.sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (load_reachable() != 0)
        return 1;
    L.c = calloc((size_t)L.nclients, sizeof *L.c);
    L.fan = calloc((size_t)L.npat, sizeof *L.fan);
    L.pc = calloc((size_t)L.nconns, sizeof *L.pc);
    L.retry = calloc((size_t)L.nconns + 1, sizeof *L.retry);
    L.retry_count = calloc((size_t)L.nconns + 1, sizeof *L.retry_count);
    L.body = malloc((size_t)L.dsize + 1);
    L.batch_body = malloc((size_t)L.batch * ((size_t)L.dsize + 64) + 2);
    if (!L.c || !L.fan || !L.pc || !L.retry || !L.retry_count || !L.body ||
        !L.batch_body) {
        fprintf(stderr, "bench_ws: out of memory\n");
        return 1;
    }
    L.body[L.dsize - 2] = '"';
    L.body[L.dsize - 1] = '}';
    L.body[L.dsize] = '\0';
    for (int i = 0; i < L.nclients; i++) {
        wsc *c = &L.c[i];
        c->fd = -1;
        c->id = i;
        c->pat = i % L.npat;
        c->t = &L.t[i * L.nthreads / L.nclients];
        c->seen = calloc((events_of_pattern(c->pat) + 7) / 8, 1);
        if (!c->seen) {
            fprintf(stderr, "bench_ws: out of memory\n");
            return 1;
        }
        L.fan[c->pat]++;
    }
    for (int p = 0; p < L.npat; p++)
        L.expected += (uint64_t)L.fan[p] * events_of_pattern(p);
    for (int i = 0; i < L.nthreads; i++) {
        lthread *t = &L.t[i];
        struct timeval tv = {0, i ? 10000 : 1000};
        t->idx = i;
        for (int j = 0; j < L.nclients; j++)
            if (L.c[j].t == t && !t->count++)
                t->first = j;
        t->next = t->first;
        if (!(t->base = event_base_new()) ||
            !(t->tick = event_new(t->base, -1, EV_PERSIST, load_tick, t)) ||
            event_add(t->tick, &tv) != 0) {
            fprintf(stderr, "bench_ws: out of memory\n");
            return 1;
        }
    }
    struct event *s1 = evsignal_new(L.t[0].base, SIGINT, load_on_signal, NULL);
    struct event *s2 = evsignal_new(L.t[0].base, SIGTERM, load_on_signal, NULL);
    event_add(s1, NULL);
    event_add(s2, NULL);
    if (L.server_pid && (L.rss_before = proc_rss_kb(L.server_pid)) < 0) {
        fprintf(stderr, "bench_ws: no process %d (-S)\n", L.server_pid);
        return 1;
    }
    L.t0 = mono_ns();
    L.deadline = L.t0 + (int64_t)L.deadline_s * 1000000000;
    for (int i = 1; i < L.nthreads; i++)
        if (pthread_create(&L.t[i].th, NULL, load_thread, &L.t[i]) != 0) {
            fprintf(stderr, "bench_ws: cannot start a thread\n");
            return 1;
        }
    load_thread(&L.t[0]);
    for (int i = 1; i < L.nthreads; i++)
        pthread_join(L.t[i].th, NULL);
    if (L.phase != PH_END)
        load_end(mono_ns());
    rc = load_report();
    for (int i = 0; i < L.nclients; i++) {
        wsc_close(&L.c[i]);
        free(L.c[i].seen);
    }
    for (int i = 0; i < L.nconns; i++)
        if (L.pc[i].bev)
            bufferevent_free(L.pc[i].bev);
    event_free(s1);
    event_free(s2);
    for (int i = 0; i < L.nthreads; i++) {
        event_free(L.t[i].tick);
        event_base_free(L.t[i].base);
    }
    free(L.c);
    free(L.fan);
    free(L.pc);
    free(L.retry);
    free(L.body);
    return rc;
}

/* -------------------------------------------------------------- self-test */

static int check(int ok, const char *what)
{
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    return ok ? 0 : 1;
}

static int sha1_is(const char *in, const char *hex)
{
    uint8_t md[20];
    char got[41];

    sha1(in, strlen(in), md);
    for (int i = 0; i < 20; i++)
        sprintf(got + 2 * i, "%02x", md[i]);
    return strcmp(got, hex) == 0;
}

static int self_test(void)
{
    char acc[29], *mill = malloc(1000001);
    const char *env = "{\"id\":\"x\",\"name\":\"bench.p3.e\",\"data\":"
                      "{\"seq\": 42,\"t\":1234,\"p\":\"xx\"},\"ts\":99}";
    const char *str = "{\"data\":\"{\\\"seq\\\":7,\\\"t\\\":5}\",\"ts\":1}";
    uint64_t v = 0, w = 0;
    const char *after;
    hist h;
    int bad = 0;

    bad += check(sha1_is("", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
                 "sha1 \"\"");
    bad += check(sha1_is("abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
                 "sha1 \"abc\"");
    bad += check(
        sha1_is("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "84983e441c3bd26ebaae4aa1f95129e5e54670f1"),
        "sha1 56 bytes (two padding blocks)");
    if (mill) {
        memset(mill, 'a', 1000000);
        mill[1000000] = '\0';
        bad += check(sha1_is(mill, "34aa973cd4c4daa4f61eeb2bdbad27316534016f"),
                     "sha1 a million 'a'");
        free(mill);
    }
    /* RFC 6455 section 1.3 (the value "s3pPLMBiTxaHxmdEr/GXq7E3ZXk=" that
     * is sometimes quoted for this key is not its SHA-1). */
    ws_accept("dGhlIHNhbXBsZSBub25jZQ==", 24, acc);
    bad += check(strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0,
                 "RFC 6455 Sec-WebSocket-Accept example");
    bad += check(
        pattern_match("bench.p1.*", "bench.p1.e") && pattern_match("*", "a") &&
            pattern_match("a.*.c", "a.b.c") && pattern_match("a.b", "a.b"),
        "patterns that match");
    bad += check(!pattern_match("bench.p1.*", "bench.p10.e") &&
                     !pattern_match("*", "a.b") && !pattern_match("a.*", "a") &&
                     !pattern_match("a.*", "a.b.c") &&
                     !pattern_match("a.b", "a.bc"),
                 "patterns that do not match");
    bad += check(
        find_num(env, strlen(env), "seq", &v, &after) == 0 && v == 42 &&
            find_num(after, strlen(after), "t", &w, NULL) == 0 && w == 1234,
        "seq and t in a JSON envelope");
    bad +=
        check(find_num(str, strlen(str), "seq", &v, &after) == 0 && v == 7 &&
                  find_num(after, strlen(after), "t", &w, NULL) == 0 && w == 5,
              "seq and t in a JSON string");
    memset(&h, 0, sizeof h);
    for (uint64_t i = 1; i <= 100000; i++)
        hist_add(&h, i * 1000);
    uint64_t p50 = hist_pct(&h, 50), p99 = hist_pct(&h, 99);
    bad += check(p50 > 49000000 && p50 < 51000000 && p99 > 97500000 &&
                     p99 < 100500000 && hist_pct(&h, 100) == 100000000,
                 "histogram percentiles within 2%");
    return bad ? 1 : 0;
}

/* ------------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_ws -m load -p PORT [-c CLIENTS] [-P PATTERNS] "
            "[-n EVENTS] [-r RATE]\n"
            "                [-k CONNS] [-W WINDOW] [-j THREADS] "
            "[-C CONCURRENCY] [-s BYTES]\n"
            "                [-S SERVER_PID] [-d SECONDS] [-b BATCH] "
            "[-B BUS_PID]\n"
            "       bench_ws -m test\n"
            "  -m  load: the load generator; test: self-test (the baseline "
            "server is\n"
            "      bench_wsraw -p PORT [-d SECONDS])\n"
            "  -p  port on 127.0.0.1\n"
            "  -c  websocket clients (default 1)\n"
            "  -P  patterns, bench.p<i>.*, clients spread over them "
            "(default 1)\n"
            "  -n  events to publish (default 10000)\n"
            "  -r  events per second (default: as fast as answered)\n"
            "  -k  publisher connections, one POST in flight each "
            "(default 4)\n"
            "  -W  at most this many deliveries due for events already "
            "published (default 0:\n      no limit)\n"
            "  -j  client event-loop threads, 1 or 2 (default 1)\n"
            "  -C  websocket handshakes in progress at once (default 256)\n"
            "  -s  event data size in bytes, 64 or more (default 128)\n"
            "  -S  server pid: its CPU time and VmRSS from /proc\n"
            "  -B  the server's bus pid (redis-server): its CPU time too\n"
            "  -d  deadline in seconds (default 120)\n"
            "  -b  events per POST (default 1: POST /events/NAME); more: "
            "POST /events\n      with a JSON array of that many\n");
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
    const char *mode = NULL;
    int c;

    signal(SIGPIPE, SIG_IGN);
    L.nclients = 1;
    L.npat = 1;
    L.nevents = 10000;
    L.nconns = 4;
    L.nthreads = 1;
    L.conc = 256;
    L.dsize = 128;
    L.deadline_s = -1;
    L.batch = 1;
    while ((c = getopt(argc, argv, "m:p:c:P:n:r:k:W:j:C:s:S:d:b:B:h")) != -1) {
        switch (c) {
        case 'm':
            mode = optarg;
            break;
        case 'p':
            L.port = int_opt(optarg, 1, 65535);
            break;
        case 'c':
            L.nclients = int_opt(optarg, 1, 1000000);
            break;
        case 'P':
            L.npat = int_opt(optarg, 1, 100000);
            break;
        case 'n':
            L.nevents = int_opt(optarg, 1, INT32_MAX);
            break;
        case 'r':
            L.rate = int_opt(optarg, 0, 100000000);
            break;
        case 'k':
            L.nconns = int_opt(optarg, 1, 1024);
            break;
        case 'W':
            L.window = int_opt(optarg, 0, INT32_MAX);
            break;
        case 'j':
            L.nthreads = int_opt(optarg, 1, THREADS_MAX);
            break;
        case 'C':
            L.conc = int_opt(optarg, 1, 100000);
            break;
        case 's':
            L.dsize = int_opt(optarg, 64, 1 << 20);
            break;
        case 'S':
            L.server_pid = int_opt(optarg, 1, INT32_MAX);
            break;
        case 'B':
            L.bus_pid = int_opt(optarg, 1, INT32_MAX);
            break;
        case 'd':
            L.deadline_s = int_opt(optarg, 1, 86400);
            break;
        case 'b':
            L.batch = int_opt(optarg, 1, 100000);
            break;
        default:
            usage();
        }
    }
    if (optind != argc || !mode)
        usage();
    if (strcmp(mode, "test") == 0)
        return self_test();
    if (strcmp(mode, "raw") == 0) {
        fprintf(stderr, "bench_ws: -m raw is now its own program: "
                        "bench_wsraw -p PORT [-d SECONDS]\n");
        return 2;
    }
    if (!L.port)
        usage();
    if (strcmp(mode, "load") != 0 || L.npat > L.nclients)
        usage();
    if (L.nthreads > L.nclients)
        L.nthreads = L.nclients; /* a thread per client at most */
    if (L.deadline_s < 0)
        L.deadline_s = 120;
    return load_run();
}
