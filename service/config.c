/* config.c - the settings table: every setting's name, type, default,
 * bounds, flag and help, once; the defaults, the checks, tb_config_set and
 * the service's flags, --help and README table are all made from it. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "json.h"
#include "client_token.h"
#include "url.h"

#define KiB (1024LL)
#define MiB (1024LL * 1024)
#define GiB (1024LL * 1024 * 1024)
#define H1 3600000LL /* an hour in ms */
#define D1 86400000LL
#define IMAX 2147483647LL /* as long as an int holds: the C API's range */

/* X(group, field, TYPE, default number, default string, min, max, flag,
 *   help). Flag NULL: settable from C only. The variable is TASKBUS_ and
 * the flag in capitals with '_' for '-'. Checks across settings (and of a
 * string's form) are in check_rules() below. */
#define TB__CONFIG_TABLE(X)                                                    \
    X(core, workers, INT, 2, NULL, 1, 256, "workers", "worker threads")        \
    X(core, graceful_timeout_ms, SECONDS, 15000, NULL, 0, IMAX,                \
      "graceful-timeout", "seconds tasks get to finish at shutdown")           \
    X(core, shutdown_delay_ms, SECONDS, 0, NULL, 0, H1, "shutdown-delay",      \
      "seconds of /readyz 503 before stopping, for load balancers")            \
    X(core, stack_size, SIZE, 64 * KiB, NULL, 16 * KiB, 64 * MiB,              \
      "stack-size", "bytes of each task's stack")                              \
    X(core, max_event_size, SIZE, MiB, NULL, 1, 512 * MiB, "max-event-size",   \
      "largest event data, bytes")                                             \
    X(core, sub_capacity, INT, 1024, NULL, 1, 1 << 24, "sub-capacity",         \
      "events a subscription queues")                                          \
    X(core, worker_queue_max, INT, 65536, NULL, 1, 1 << 26,                    \
      "worker-queue-max", "events waiting for one worker")                     \
    X(core, blocking_threads, INT, 4, NULL, 1, 1024, "blocking-threads",       \
      "threads for blocking calls; each running exec task holds one")          \
    X(core, handle_signals, BOOL, 0, NULL, 0, 1, NULL,                         \
      "tb_app_run stops on SIGINT/SIGTERM")                                    \
    X(core, event_namespace, STRING, 0, "taskbus", 0, 0, "namespace",          \
      "event namespace: Redis channels NS:event:<name>")                       \
    X(core, json_max_depth, INT, 0, NULL, 0, 1000, "json-max-depth",           \
      "deepest JSON nesting accepted from clients and Redis, at most "         \
      "stack-size / 1024 (0: 64, or what the stack allows)")                   \
    X(core, event_max_hops, INT, 8, NULL, 0, 255, "event-max-hops",            \
      "times an event may be relayed on: stops relay cycles")                  \
    X(core, instance_heartbeat_ms, SECONDS, 1000, NULL, 50, 60000,             \
      "instance-heartbeat",                                                    \
      "seconds between renewals of this instance's "                           \
      "record")                                                                \
    X(core, instance_ttl_ms, SECONDS, 3000, NULL, 100, H1, "instance-ttl",     \
      "seconds an instance stays listed after its last heartbeat, above "      \
      "instance-heartbeat")                                                    \
    X(core, lost_keep_ms, SECONDS, 60000, NULL, 0, D1, "lost-keep",            \
      "seconds a dead instance's task names show as lost before they are "     \
      "forgotten")                                                             \
    X(core, singleton_lease_ms, SECONDS, 3000, NULL, 300, H1,                  \
      "singleton-lease",                                                       \
      "seconds a singleton's lease lasts; renewed every third of it")          \
    X(core, singleton_margin_ms, MS, 500, NULL, 0, H1, "singleton-margin",     \
      "ms before its lease may expire that a run unable to renew it cancels "  \
      "itself, below a third of the lease")                                    \
    X(core, periodic_min_ms, MS, 1000, NULL, 10, H1, "periodic-min",           \
      "shortest interval of a periodic task, ms")                              \
    X(core, history_size, INT, 10000, NULL, 0, 1 << 24, "history-size",        \
      "events of the namespace's history kept for resuming (0: no history, "   \
      "no positions)")                                                         \
    X(core, history_ttl_ms, SECONDS, 300000, NULL, 1000, 30 * D1,              \
      "history-ttl", "seconds the history lives after the last publish")       \
    X(core, history_max_bytes, SIZE, 64 * MiB, NULL, KiB, 64 * GiB,            \
      "history-max-bytes",                                                     \
      "event bytes the in-process bus's history holds at most (oldest out)")   \
    X(core, history_page_max, INT, 1000, NULL, 1, 100000, "history-page-max",  \
      "events one GET /history answers at most (its limit's default and "      \
      "cap)")                                                                  \
    X(core, history_scan_max, INT, 10000, NULL, 1, 1 << 24,                    \
      "history-scan-max",                                                      \
      "events one GET /history looks at most, matching or not (then more "     \
      "is true: go on from next)")                                             \
    X(core, batch_max_events, INT, 1000, NULL, 1, 1 << 20, "batch-max-events", \
      "events one batch (POST /events, tb_dispatch_many) carries at most")     \
    X(core, batch_max_concurrent, INT, 16, NULL, 1, 1 << 16,                   \
      "batch-max-concurrent",                                                  \
      "POST /events requests handled at once (more: 503 busy)")                \
    X(redis, url, URL, 0, NULL, 0, 0, "redis-url",                             \
      "redis://[user:password@]host:port[/db], unix:///path or "               \
      "redis-sentinel://[user:password@]host:26379[,host...]/master[/db]; "    \
      "none: the in-process bus")                                              \
    X(redis, password, SECRET, 0, NULL, 0, 0, NULL,                            \
      "Redis password (overrides the URL's)")                                  \
    X(redis, sentinel_password, SECRET, 0, NULL, 0, 0, NULL,                   \
      "password of the sentinels of a redis-sentinel:// URL (none: no AUTH)")  \
    X(redis, connect_timeout_ms, MS, 2000, NULL, 1, IMAX,                      \
      "redis-connect-timeout", "ms a connection attempt may take")             \
    X(redis, command_timeout_ms, MS, 5000, NULL, 1, IMAX,                      \
      "redis-command-timeout",                                                 \
      "ms without a reply before the link is taken for dead")                  \
    X(redis, ping_interval_ms, MS, 5000, NULL, 1, IMAX, "redis-ping-interval", \
      "ms between keepalive pings on an idle Redis link")                      \
    X(redis, retry_min_ms, MS, 100, NULL, 1, IMAX, "redis-retry-min",          \
      "ms, first reconnect delay")                                             \
    X(redis, retry_max_ms, MS, 5000, NULL, 1, IMAX, "redis-retry-max",         \
      "ms, reconnect backoff cap, with jitter")                                \
    X(redis, publish_queue_max, INT, 65536, NULL, 1, IMAX,                     \
      "publish-queue-max", "events waiting for Redis")                         \
    X(redis, publish_retry_ms, MS, 10000, NULL, 0, IMAX, "publish-retry",      \
      "ms an accepted event is resent after reconnects")                       \
    X(redis, wait_replicas, INT, 0, NULL, 0, 64, "redis-wait-replicas",        \
      "replicas that must confirm each publish (WAIT) before it is "           \
      "acknowledged, so that it survives a failover; needs history on (0: "    \
      "no WAIT)")                                                              \
    X(redis, wait_timeout_ms, MS, 1000, NULL, 1, IMAX, "redis-wait-timeout",   \
      "ms a publish waits for redis-wait-replicas (at most half of "           \
      "redis-command-timeout minus 1 s); then it is answered not_replicated")  \
    X(http, listen, STRING, 0, NULL, 0, 0, "listen",                           \
      "HTTP address, IPv4:port; none: no HTTP server")                         \
    X(http, threads, INT, 64, NULL, 1, 65536, "http-threads",                  \
      "concurrent HTTP requests")                                              \
    X(http, max_body, SIZE, MiB, NULL, 1, 512 * MiB, "max-body",               \
      "HTTP request body limit, bytes")                                        \
    X(http, longpoll_max, INT, 0, NULL, 0, 65535, "http-longpoll-max",         \
      "long polls waiting at once, below http-threads (0: half of them)")      \
    X(http, discard_max, SIZE, 4 * MiB, NULL, 0, GiB, "http-discard-max",      \
      "unread body bytes read and dropped after a refusal, then closed")       \
    X(http, discard_timeout_ms, MS, 2000, NULL, 0, H1, "http-discard-timeout", \
      "ms a refused request's unread body is drained at most")                 \
    X(http, api_token, SECRET, 0, NULL, 0, 0, "token",                         \
      "API token required by the HTTP API and websockets")                     \
    X(http, jwt_secret, SECRET, 0, NULL, 0, 0, "jwt-secret",                   \
      "HS256 key of client tokens (JWT), 32 bytes or more; none: no HS256")    \
    X(http, jwt_public_key, STRING, 0, NULL, 0, 0, "jwt-public-key",           \
      "PEM file of the RS256 or ES256 public key of client tokens (JWT)")      \
    X(http, jwt_audience, STRING, 0, NULL, 0, 0, "jwt-audience",               \
      "aud a client token must name (none: tokens with an aud are refused)")   \
    X(http, jwt_issuer, STRING, 0, NULL, 0, 0, "jwt-issuer",                   \
      "iss a client token must have (none: any)")                              \
    X(http, jwt_leeway_ms, SECONDS, 30000, NULL, 0, 300000, "jwt-leeway",      \
      "seconds of clock skew allowed on a client token's exp and nbf")         \
    X(http, jwt_max_size, INT, 4096, NULL, 256, 8192, "jwt-max-size",          \
      "longest client token, bytes")                                           \
    X(http, tasks_page_max, INT, 1000, NULL, 1, 1000, "tasks-page-max",        \
      "tasks in one GET /tasks page at most (its limit's default and cap)")    \
    X(http, front, BOOL, 1, NULL, 0, 1, "http-front",                          \
      "relay HTTP through the front, so that slow and idle clients hold no "   \
      "HTTP thread (0: civetweb listens itself)")                              \
    X(http, header_timeout_ms, MS, 5000, NULL, 1, H1, "http-header-timeout",   \
      "ms a request line and headers may take from their first byte, then "    \
      "the connection is closed (front)")                                      \
    X(http, body_timeout_ms, MS, 10000, NULL, 1, H1, "http-body-timeout",      \
      "ms without a byte of a request body, then the connection is closed "    \
      "(front)")                                                               \
    X(http, keepalive_timeout_ms, MS, 2000, NULL, 1, H1,                       \
      "http-keepalive-timeout",                                                \
      "ms an idle keep-alive connection is kept open")                         \
    X(http, upstream_pool, INT, 64, NULL, 0, 65536, "http-upstream-pool",      \
      "idle front-to-civetweb connections kept for reuse, at most "            \
      "http-threads (0: one connection per request)")                          \
    X(http, max_connections, INT, 10000, NULL, 1, 1 << 20,                     \
      "http-max-connections",                                                  \
      "open client connections to the front; beyond, a new one is closed "     \
      "at once (keep it below the descriptor limit)")                          \
    X(http, body_memory_max, SIZE, 256 * MiB, NULL, 1, 64 * GiB,               \
      "http-body-memory-max",                                                  \
      "bytes of request bodies the front holds at once, all connections; "     \
      "beyond, 503")                                                           \
    X(http, body_deadline_ms, MS, 60000, NULL, 1, H1, "http-body-deadline",    \
      "ms a whole request body may take from the end of its head, then the "   \
      "connection is closed (front)")                                          \
    X(http, queue_timeout_ms, MS, 10000, NULL, 1, H1, "http-queue-timeout",    \
      "ms a request read whole may wait for a free HTTP thread, then 503 "     \
      "(front)")                                                               \
    X(http, front_answers, BOOL, 1, NULL, 0, 1, "http-front-answers",          \
      "the front answers POST /events, /events/{name} and GET /healthz "       \
      "itself, without an HTTP thread (0: relayed like every other route)")    \
    X(http, front_batch_max_body, SIZE, 64 * KiB, NULL, 0, 512 * MiB,          \
      "http-front-batch-max-body",                                             \
      "POST /events bodies up to this many bytes are answered by the front; "  \
      "larger ones go to an HTTP thread (their parse would stall the front)")  \
    X(ws, max_clients, INT, 10000, NULL, 1, 1 << 20, "ws-max-clients",         \
      "open websockets")                                                       \
    X(ws, max_message, SIZE, MiB, NULL, 1, 512 * MiB, "ws-max-message",        \
      "largest client message, bytes")                                         \
    X(ws, send_queue_bytes, SIZE, 2 * MiB, NULL, KiB, GiB,                     \
      "ws-send-queue-bytes",                                                   \
      "per-client send queue, bytes; with history on, at least "               \
      "max-event-size + 1024")                                                 \
    X(ws, send_queue_msgs, INT, 4096, NULL, 1, IMAX, "ws-send-queue-msgs",     \
      "per-client send queue, messages")                                       \
    X(ws, recv_queue_msgs, INT, 64, NULL, 1, IMAX, "ws-recv-queue-msgs",       \
      "client messages waiting for the handler before reads pause")            \
    X(ws, max_patterns, INT, 64, NULL, 1, 4096, "ws-max-patterns",             \
      "patterns per /ws connection")                                           \
    X(ws, ping_interval_ms, MS, 20000, NULL, 0, IMAX, "ws-ping-interval",      \
      "ms between pings, 0: none")                                             \
    X(ws, ping_timeout_ms, MS, 20000, NULL, 1, IMAX, "ws-ping-timeout",        \
      "ms to wait for a pong")                                                 \
    X(ws, allowed_origins, STRING, 0, NULL, 0, 0, "ws-origins",                \
      "allowed websocket Origins, comma-separated, or * (none: any)")          \
    X(ws, memory_max, SIZE, 256 * MiB, NULL, 64 * KiB, 1024 * GiB,             \
      "ws-memory-max",                                                         \
      "bytes all websockets and SSE streams may hold in receive and send "     \
      "buffers; beyond, the largest are closed (1008)")                        \
    X(ws, sse_max_clients, INT, 10000, NULL, 1, 1 << 20, "sse-max-clients",    \
      "open SSE streams (GET /sse)")                                           \
    X(ws, sse_keepalive_ms, MS, 15000, NULL, 10, IMAX, "sse-keepalive",        \
      "ms between keep-alive comments on an idle SSE stream")                  \
    X(ws, sse_max_input, SIZE, 64 * KiB, NULL, 0, GiB, "sse-max-input",        \
      "bytes an SSE client may send after its request; beyond, the stream "    \
      "ends")

/* The C type each TYPE is stored as, checked against the field. */
#define CT_INT int
#define CT_MS int
#define CT_SECONDS int
#define CT_BOOL int
#define CT_SIZE size_t
#define CT_STRING const char *
#define CT_SECRET const char *
#define CT_URL const char *

#define FIELD(c, g, f) (((tb_app_config *)(c))->g.f)

#define SIZE_CHECK(g, f, T, dn, ds, lo, hi, flag, help)                        \
    _Static_assert(sizeof(FIELD(0, g, f)) == sizeof(CT_##T),                   \
                   #g "." #f " is not stored as its type says");
TB__CONFIG_TABLE(SIZE_CHECK)

#define PUB(g, f, T, dn, ds, lo, hi, flag, help)                               \
    {#g "." #f, flag, NULL, TB_CONFIG_##T, lo, hi, help},
static tb_config_setting table[] = {TB__CONFIG_TABLE(PUB)};

#define NSET (sizeof table / sizeof table[0])

typedef struct where {
    size_t off;
    long long dnum;
    const char *dstr;
} where;

#define WHERE(g, f, T, dn, ds, lo, hi, flag, help)                             \
    {offsetof(tb_app_config, g.f), dn, ds},
static const where places[NSET] = {TB__CONFIG_TABLE(WHERE)};

/* ---------------------------------------------------------------- table */

static char envs[NSET][64];
static pthread_once_t envs_once = PTHREAD_ONCE_INIT;

static void make_envs(void)
{
    for (size_t i = 0; i < NSET; i++) {
        if (!table[i].flag)
            continue;
        char *e = envs[i];
        size_t n =
            (size_t)snprintf(e, sizeof envs[i], "TASKBUS_%s", table[i].flag);
        for (size_t k = 8; k < n && k < sizeof envs[i]; k++)
            e[k] = e[k] == '-'                  ? '_'
                   : e[k] >= 'a' && e[k] <= 'z' ? (char)(e[k] - 'a' + 'A')
                                                : e[k];
        table[i].env = e;
    }
}

const tb_config_setting *tb_config_settings(size_t *n)
{
    pthread_once(&envs_once, make_envs);
    if (n)
        *n = NSET;
    return table;
}

static void *place(const tb_app_config *cfg, size_t i)
{
    return (char *)(uintptr_t)cfg + places[i].off;
}

void tb_app_config_init(tb_app_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NSET; i++) {
        void *p = place(cfg, i);
        switch (table[i].type) {
        case TB_CONFIG_SIZE:
            *(size_t *)p = (size_t)places[i].dnum;
            break;
        case TB_CONFIG_STRING:
        case TB_CONFIG_SECRET:
        case TB_CONFIG_URL:
            *(const char **)p = places[i].dstr;
            break;
        default:
            *(int *)p = (int)places[i].dnum;
            break;
        }
    }
}

/* ---------------------------------------------------------------- text */

static const char *string_form(const char *name, const char *v);

static int find(const char *key)
{
    for (size_t i = 0; i < NSET; i++)
        if (strcmp(table[i].name, key) == 0 ||
            (table[i].flag && strcmp(table[i].flag, key) == 0))
            return (int)i;
    return -1;
}

static int errf(char *err, size_t errsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int errf(char *err, size_t errsz, const char *fmt, ...)
{
    if (err && errsz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsz, fmt, ap);
        va_end(ap);
    }
    return TB_EINVAL;
}

/* Decimal digits, at most one '.' followed by up to three more when
 * scale is 1000 (seconds into ms). No sign, blanks, exponents or hex:
 * strtod would take "inf", "0x10" and " 1", and read the decimal point of
 * the locale. *out in the field's unit. */
static int parse_number(const char *s, int scale, long long max, long long *out)
{
    long long v = 0;
    const char *p = s;
    if (*p < '0' || *p > '9')
        return TB_EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
        if (v > max / (scale ? scale : 1) + 1)
            return TB_EINVAL; /* out of range long before overflow */
    }
    long long frac = 0;
    int digits = 0;
    if (*p == '.' && scale == 1000) {
        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (digits >= 3)
                return TB_EINVAL;
            frac = frac * 10 + (*p - '0');
        }
        if (digits == 0)
            return TB_EINVAL;
        for (int d = digits; d < 3; d++)
            frac *= 10;
    }
    if (*p)
        return TB_EINVAL;
    *out = v * (scale ? scale : 1) + frac;
    return 0;
}

int tb_config_set(tb_app_config *cfg, const char *key, const char *value,
                  char *err, size_t errsz)
{
    if (!cfg || !key)
        return TB_EINVAL;
    int i = find(key);
    if (i < 0) {
        errf(err, errsz, "no setting named \"%s\"", key);
        return TB_ENOENT;
    }
    const tb_config_setting *s = &table[i];
    void *p = place(cfg, (size_t)i);
    if (!value)
        value = "";
    long long v;
    switch (s->type) {
    case TB_CONFIG_STRING:
    case TB_CONFIG_SECRET:
    case TB_CONFIG_URL: {
        /* Only plain strings have a form: a secret is never echoed. */
        const char *form = value[0] ? string_form(s->name, value) : NULL;
        if (form)
            return errf(err, errsz, "%s must be %s, not \"%.64s\"", s->name,
                        form, value);
        *(const char **)p = value[0] ? value : NULL;
        return 0;
    }
    case TB_CONFIG_BOOL:
        if (strcmp(value, "1") == 0 || strcasecmp(value, "true") == 0)
            *(int *)p = 1;
        else if (strcmp(value, "0") == 0 || strcasecmp(value, "false") == 0)
            *(int *)p = 0;
        else
            return errf(err, errsz,
                        "%s must be 1, 0, true or false, not "
                        "\"%.64s\"",
                        s->name, value);
        return 0;
    case TB_CONFIG_SECONDS:
        if (parse_number(value, 1000, s->max, &v) || v < s->min || v > s->max)
            return errf(err, errsz,
                        "%s must be %g..%g seconds (at most 3 decimals), "
                        "not \"%.64s\"",
                        s->name, s->min / 1000.0, s->max / 1000.0, value);
        *(int *)p = (int)v;
        return 0;
    default:
        if (parse_number(value, 0, s->max, &v) || v < s->min || v > s->max)
            return errf(err, errsz, "%s must be %lld..%lld%s, not \"%.64s\"",
                        s->name, s->min, s->max,
                        s->type == TB_CONFIG_SIZE ? " bytes"
                        : s->type == TB_CONFIG_MS ? " ms"
                                                  : "",
                        value);
        if (s->type == TB_CONFIG_SIZE)
            *(size_t *)p = (size_t)v;
        else
            *(int *)p = (int)v;
        return 0;
    }
}

int tb_config_format(const tb_app_config *cfg, const tb_config_setting *s,
                     char *out, size_t outsz)
{
    if (!cfg || !s || s < table || s >= table + NSET)
        return TB_EINVAL;
    const void *p = place(cfg, (size_t)(s - table));
    int n;
    switch (s->type) {
    case TB_CONFIG_STRING: {
        const char *v = *(const char *const *)p;
        n = snprintf(out, outsz, "%s", v ? v : "");
        break;
    }
    case TB_CONFIG_SECRET:
        n = snprintf(out, outsz, "%s", *(const char *const *)p ? "(set)" : "");
        break;
    case TB_CONFIG_URL: {
        /* "***" may be longer than the password it hides: room for it. */
        const char *v = *(const char *const *)p;
        size_t cap = (v ? strlen(v) : 0) + 4;
        char *safe = malloc(cap);
        if (!safe)
            return TB_ENOMEM;
        tb__redis_url_redact(v, safe, cap);
        n = snprintf(out, outsz, "%s", safe);
        free(safe);
        break;
    }
    case TB_CONFIG_SIZE:
        n = snprintf(out, outsz, "%zu", *(const size_t *)p);
        break;
    case TB_CONFIG_SECONDS: {
        /* Exactly, as tb_config_set reads it: "%g" would round 1234.567. */
        int ms = *(const int *)p;
        if (ms % 1000 == 0)
            n = snprintf(out, outsz, "%d", ms / 1000);
        else if (ms % 100 == 0)
            n = snprintf(out, outsz, "%d.%d", ms / 1000, ms % 1000 / 100);
        else if (ms % 10 == 0)
            n = snprintf(out, outsz, "%d.%02d", ms / 1000, ms % 1000 / 10);
        else
            n = snprintf(out, outsz, "%d.%03d", ms / 1000, ms % 1000);
        break;
    }
    default:
        n = snprintf(out, outsz, "%d", *(const int *)p);
        break;
    }
    return n < 0 || (size_t)n >= outsz ? TB_ENAMETOOLONG : n;
}

/* ---------------------------------------------------------------- checks */

/* An API token: empty (none), or 1..256 visible ASCII bytes, so that it
 * fits an Authorization header as is. */
static int token_ok(const char *t)
{
    size_t n = strlen(t);
    if (n > 256)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (t[i] <= 0x20 || t[i] >= 0x7f)
            return 0;
    return 1;
}

static int namespace_ok(const char *ns)
{
    size_t n = strlen(ns);
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)ns[i];
        if (!(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') &&
            !(c >= '0' && c <= '9') && c != '_' && c != '.' && c != '-')
            return 0;
    }
    return 1;
}

static int listen_ok(const char *spec)
{
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || colon - spec >= 64)
        return 0;
    char host[64];
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    struct in_addr a;
    if (strcmp(host, "localhost") != 0 && inet_pton(AF_INET, host, &a) != 1)
        return 0;
    const char *p = colon + 1;
    size_t n = strlen(p);
    if (n < 1 || n > 5 || strspn(p, "0123456789") != n)
        return 0;
    long port = strtol(p, NULL, 10);
    return port >= 1 && port <= 65535;
}

#define NAMESPACE_FORM "1..64 bytes of [A-Za-z0-9_.-]"
#define LISTEN_FORM                                                            \
    "an IPv4 address or localhost, a colon and a port 1..65535 "               \
    "(127.0.0.1:8080)"

/* What a string setting must look like, if it has a form and v (not "")
 * lacks it; else NULL. */
static const char *string_form(const char *name, const char *v)
{
    if (strcmp(name, "core.event_namespace") == 0 && !namespace_ok(v))
        return NAMESPACE_FORM;
    if (strcmp(name, "http.listen") == 0 && !listen_ok(v))
        return LISTEN_FORM;
    return NULL;
}

/* The round trips and scheduling a command on the `pub` link may take
 * besides a WAIT ahead of it, ms (redis.wait_timeout_ms's rules). */
#define TB__WAIT_SLACK_MS 1000

/* What the table's bounds cannot say: a string's form, and one setting
 * against another. NULL when all hold. */
static const char *check_rules(const tb_app_config *c)
{
    if (!c->core.event_namespace || !namespace_ok(c->core.event_namespace))
        return "core.event_namespace must be " NAMESPACE_FORM;
    if (c->core.instance_ttl_ms <= c->core.instance_heartbeat_ms)
        return "core.instance_ttl_ms must be above "
               "core.instance_heartbeat_ms (a record must outlive the wait "
               "for its next renewal)";
    if ((int64_t)c->core.singleton_margin_ms * 3 >= c->core.singleton_lease_ms)
        return "core.singleton_margin_ms must be below a third of "
               "core.singleton_lease_ms (a run renews its lease every third "
               "of it, and must still hold it after the margin)";
    if (c->redis.retry_max_ms < c->redis.retry_min_ms)
        return "redis.retry_min_ms must be <= redis.retry_max_ms";
    if (c->redis.wait_replicas > 0 && c->core.history_size == 0)
        return "redis.wait_replicas needs history on (core.history_size > "
               "0): a plain PUBLISH stores nothing a replica could confirm";
    /* A WAIT blocks the `pub` link for up to wait_timeout_ms: everything
     * sent behind it (cluster heartbeats, lease renewals, history reads,
     * PING/ROLE) is answered that much later, and a publish queued while
     * one is out waits for it and then for its own. */
    int64_t wto = c->redis.wait_replicas > 0 ? c->redis.wait_timeout_ms : 0;
    if (wto && 2 * wto + TB__WAIT_SLACK_MS > c->redis.command_timeout_ms)
        return "redis.wait_timeout_ms must be at most half of "
               "redis.command_timeout_ms minus 1000 ms (a publish queued "
               "behind a WAIT waits for it and then for its own; a link "
               "slower than that is taken for dead)";
    if (wto &&
        (int64_t)c->core.instance_heartbeat_ms + wto + TB__WAIT_SLACK_MS >
            c->core.instance_ttl_ms)
        return "redis.wait_timeout_ms must be at most core.instance_ttl_ms "
               "minus core.instance_heartbeat_ms minus 1000 ms (a heartbeat "
               "queued behind a WAIT must land before the instance's record "
               "expires, or it looks dead to the others)";
    if (wto &&
        c->core.singleton_lease_ms / 3 + wto + c->core.singleton_margin_ms >
            c->core.singleton_lease_ms)
        return "redis.wait_timeout_ms must be at most two thirds of "
               "core.singleton_lease_ms minus core.singleton_margin_ms (a "
               "lease renewal queued behind a WAIT must land before the run "
               "gives the lease up)";
    if (c->http.longpoll_max && c->http.longpoll_max >= c->http.threads)
        return "http.longpoll_max must be below http.threads (a waiting "
               "long poll holds an HTTP thread: other requests need one "
               "left), or 0 for half of http.threads";
    if (c->http.body_memory_max < c->http.max_body)
        return "http.body_memory_max must be at least http.max_body: a body "
               "the server takes would not fit in the front's memory for "
               "request bodies";
    if (c->http.api_token && !token_ok(c->http.api_token))
        return "http.api_token must be 1..256 visible ASCII bytes (no "
               "blanks) or empty";
    int jwt_secret = c->http.jwt_secret && c->http.jwt_secret[0];
    if ((jwt_secret || (c->http.jwt_public_key && c->http.jwt_public_key[0])) &&
        !(c->http.api_token && c->http.api_token[0]))
        return "http.jwt_secret and http.jwt_public_key need http.api_token: "
               "client tokens open the event routes only, and without an "
               "API token every other route would be open to anyone";
    if (jwt_secret && strlen(c->http.jwt_secret) < TB__JWT_SECRET_MIN)
        return "http.jwt_secret must be at least 32 bytes (RFC 7518: an "
               "HS256 key as long as its hash); make one with: openssl rand "
               "-base64 32";
    if (c->http.listen && c->http.listen[0] && !listen_ok(c->http.listen))
        return "http.listen must be " LISTEN_FORM;
    if (c->core.history_size > 0 &&
        c->ws.send_queue_bytes <
            c->core.max_event_size + TB_EVENT_FRAME_OVERHEAD)
        return "ws.send_queue_bytes must be at least core.max_event_size + "
               "1024 with history on (core.history_size > 0): an event a "
               "stream cannot send would end it at every resume";
    if (c->core.json_max_depth > 0 &&
        (size_t)c->core.json_max_depth * TB__JSON_STACK_PER_LEVEL >
            c->core.stack_size / 2)
        return "core.json_max_depth is too deep for core.stack_size: each "
               "level may take 512 bytes of a task's stack and they must "
               "fit in half of it (raise stack_size or lower "
               "json_max_depth)";
    return NULL;
}

int tb__config_check(const tb_app_config *c)
{
    char why[160];
    for (size_t i = 0; i < NSET; i++) {
        const tb_config_setting *s = &table[i];
        const void *p = place(c, i);
        long long v;
        if (s->type == TB_CONFIG_STRING || s->type == TB_CONFIG_SECRET ||
            s->type == TB_CONFIG_URL || s->type == TB_CONFIG_BOOL)
            continue; /* a bool is any int: non-zero is on */
        v = s->type == TB_CONFIG_SIZE ? (long long)*(const size_t *)p
                                      : *(const int *)p;
        if (v < s->min || v > s->max) {
            snprintf(why, sizeof why, "%s is %lld: it must be %lld..%lld",
                     s->name, v, s->min, s->max);
            tb__log(TB_LOG_ERROR, "invalid app config: %s", why);
            return TB_EINVAL;
        }
    }
    const char *what = check_rules(c);
    if (what) {
        tb__log(TB_LOG_ERROR, "invalid app config: %s", what);
        return TB_EINVAL;
    }
    return 0;
}
