/* ws_bench.h - what the websocket benchmark's two programs share:
 * bench_ws (the load generator, tests/bench/bench_ws.c) and bench_wsraw (its
 * baseline broadcast server, tests/bench/bench_wsraw.c). Clocks, the
 * open-file limit, SHA-1, base64 and Sec-WebSocket-Accept, event pattern
 * matching, number search in a frame, HTTP head parsing, and the latency
 * histogram.
 *
 * Static inline functions only: each benchmark is its own program, and what
 * one of them does not call costs it nothing. Include it before any system
 * header: it defines _GNU_SOURCE (memmem, strndup).
 */
#ifndef TASKBUS_TESTS_WS_BENCH_H
#define TASKBUS_TESTS_WS_BENCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/util.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define HEAD_MAX 8192 /* request or response head */

/* ----------------------------------------------------------------- common */

static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline double tv_ms(struct timeval tv)
{
    return (double)tv.tv_sec * 1e3 + (double)tv.tv_usec / 1e3;
}

static inline double ru_ms(const struct rusage *a, const struct rusage *b)
{
    return tv_ms(b->ru_utime) + tv_ms(b->ru_stime) - tv_ms(a->ru_utime) -
           tv_ms(a->ru_stime);
}

/* Raises the soft open-file limit to the hard one; returns the soft limit. */
static inline long raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (long)rl.rlim_cur;
}

/* A cheap per-thread generator for keys and masks (not for secrets). */
static _Thread_local uint64_t rnd_state;

static inline uint64_t rnd(void)
{
    if (!rnd_state)
        rnd_state = (uint64_t)mono_ns() ^ ((uint64_t)getpid() << 32) ^
                    (uint64_t)(uintptr_t)&rnd_state;
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

static inline void nodelay(evutil_socket_t fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* SHA-1 (FIPS 180-4), one shot: enough for Sec-WebSocket-Accept. */
static inline uint32_t rol32(uint32_t x, int n)
{
    return x << n | x >> (32 - n);
}

static inline void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];

    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5a827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ed9eba1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8f1bbcdc;
        } else {
            f = b ^ c ^ d;
            k = 0xca62c1d6;
        }
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol32(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

static inline void sha1(const void *data, size_t len, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476,
                     0xc3d2e1f0};
    const uint8_t *p = data;
    uint8_t tail[128] = {0};
    size_t full = len & ~(size_t)63, rest = len - full;
    size_t tn = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;

    for (size_t i = 0; i < full; i += 64)
        sha1_block(h, p + i);
    memcpy(tail, p + full, rest);
    tail[rest] = 0x80;
    for (int i = 0; i < 8; i++)
        tail[tn - 1 - (size_t)i] = (uint8_t)(bits >> (8 * i));
    sha1_block(h, tail);
    if (tn == 128)
        sha1_block(h, tail + 64);
    for (int i = 0; i < 20; i++)
        out[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}

/* Writes the base64 of in[0..n-1] and a NUL to out (4 * ceil(n / 3) + 1). */
static inline void base64(const uint8_t *in, size_t n, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 |
                     (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        *out++ = tab[v >> 18 & 63];
        *out++ = tab[v >> 12 & 63];
        *out++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *out++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *out = '\0';
}

/* Sec-WebSocket-Accept for a key (RFC 6455 4.2.2) into out[29]. */
static inline void ws_accept(const char *key, size_t klen, char out[29])
{
    char buf[128];
    uint8_t md[20];

    if (klen > sizeof buf - sizeof WS_GUID)
        klen = sizeof buf - sizeof WS_GUID;
    memcpy(buf, key, klen);
    memcpy(buf + klen, WS_GUID, sizeof WS_GUID - 1);
    sha1(buf, klen + sizeof WS_GUID - 1, md);
    base64(md, sizeof md, out);
}

/* 1 if an event name matches a pattern of dot-separated segments, where a
 * '*' segment matches exactly one non-empty segment. */
static inline int pattern_match(const char *pat, const char *name)
{
    for (;;) {
        size_t pl = strcspn(pat, "."), nl = strcspn(name, ".");
        int star = pl == 1 && pat[0] == '*';
        if (star ? nl == 0 : pl != nl || memcmp(pat, name, pl) != 0)
            return 0;
        pat += pl;
        name += nl;
        if (!*pat || !*name)
            return !*pat && !*name;
        pat++;
        name++;
    }
}

/* Finds "key" (also \"key\" inside a JSON string) followed by a colon and
 * an unsigned number in m[0..n-1]; 0 and the number in *val, with *after
 * just past it; -1 if there is none. */
static inline int find_num(const char *m, size_t n, const char *key,
                           uint64_t *val, const char **after)
{
    size_t kl = strlen(key);
    const char *p = m, *end = m + n;

    while (p < end && (p = memmem(p, (size_t)(end - p), key, kl)) != NULL) {
        const char *q = p + kl;
        if (p > m && p[-1] == '"') {
            if (q < end && *q == '\\')
                q++;
            if (q < end && *q == '"') {
                for (q++; q < end && (*q == ' ' || *q == ':'); q++)
                    ;
                if (q < end && *q >= '0' && *q <= '9') {
                    uint64_t v = 0;
                    while (q < end && *q >= '0' && *q <= '9')
                        v = v * 10 + (uint64_t)(*q++ - '0');
                    *val = v;
                    if (after)
                        *after = q;
                    return 0;
                }
            }
        }
        p += kl;
    }
    return -1;
}

/* Case-insensitive header lookup in a head (request or status line, header
 * lines, blank line); the value, trimmed, or NULL. */
static inline const char *header(const char *h, size_t hl, const char *name,
                                 size_t *vlen)
{
    size_t nl = strlen(name);
    const char *end = h + hl, *p = memmem(h, hl, "\r\n", 2);

    while (p && p + 2 < end) {
        const char *line = p + 2,
                   *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (!eol)
            break;
        if ((size_t)(eol - line) > nl && line[nl] == ':' &&
            strncasecmp(line, name, nl) == 0) {
            const char *v = line + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        p = eol;
    }
    return NULL;
}

/* 1 if a comma-separated header value holds token (any case). */
static inline int has_token(const char *v, size_t vl, const char *token)
{
    size_t tl = strlen(token);

    for (size_t i = 0; i + tl <= vl; i++)
        if (strncasecmp(v + i, token, tl) == 0 &&
            (i == 0 || v[i - 1] == ',' || v[i - 1] == ' ') &&
            (i + tl == vl || v[i + tl] == ',' || v[i + tl] == ' '))
            return 1;
    return 0;
}

/* -------------------------------------------------------------- histogram */

/* Latencies in ns: exact below 128, then 64 buckets per power of two
 * (under 1.6% apart) up to 2^55 ns. */
#define HIST_SUB 64
#define HIST_BUCKETS (2 * HIST_SUB + 48 * HIST_SUB)

typedef struct hist {
    uint64_t n, max;
    uint64_t b[HIST_BUCKETS];
} hist;

static inline int hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (int)v;
    int bit = 63 - __builtin_clzll(v); /* >= 7 */
    int idx = 2 * HIST_SUB + (bit - 7) * HIST_SUB +
              (int)((v >> (bit - 6)) - HIST_SUB);
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

/* The middle of bucket idx. */
static inline uint64_t hist_value(int idx)
{
    if (idx < 2 * HIST_SUB)
        return (uint64_t)idx;
    int bit = (idx - 2 * HIST_SUB) / HIST_SUB + 7, shift = bit - 6;
    uint64_t lo = (uint64_t)((idx - 2 * HIST_SUB) % HIST_SUB + HIST_SUB)
                  << shift;
    return lo + ((1ull << shift) >> 1);
}

static inline void hist_add(hist *h, uint64_t v)
{
    h->b[hist_index(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

static inline void hist_merge(hist *to, const hist *from)
{
    for (int i = 0; i < HIST_BUCKETS; i++)
        to->b[i] += from->b[i];
    to->n += from->n;
    if (from->max > to->max)
        to->max = from->max;
}

/* The p-th percentile (nearest rank), at most the exact maximum. */
static inline uint64_t hist_pct(const hist *h, double p)
{
    uint64_t rank = (uint64_t)(p / 100.0 * (double)h->n + 0.999999), seen = 0;

    if (!h->n)
        return 0;
    if (rank < 1)
        rank = 1;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = hist_value(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

#endif /* TASKBUS_TESTS_WS_BENCH_H */
