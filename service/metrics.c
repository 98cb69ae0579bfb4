/* metrics.c - the service's counters: HTTP request counters, the text of
 * GET /metrics (Prometheus exposition format 0.0.4) and the same numbers
 * as one JSON object, GET /stats, for dashboards. */
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "http.h"
#include "cluster.h"
#include "instances.h"
#include "singleton.h"
#include "internal.h"
#include "metrics.h"
#include "ws.h"

/* Regular series may take this many slots; the rest are kept for
 * route="other" so that the overflow still keeps method and status. */
#define REGULAR_SERIES (TB__METRICS_SERIES - 32)
#define METHOD_MAX 15

/* Upper bounds of the duration histogram, in seconds, and as printed. */
static const double bucket_le[] = {0.0005, 0.001, 0.005, 0.01, 0.05,
                                   0.1,    0.5,   1,     5};
static const char *const bucket_name[] = {
    "0.0005", "0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5"};
#define NBUCKETS (sizeof bucket_le / sizeof bucket_le[0])

typedef struct series {
    const char *route; /* NULL: "unmatched"; the router's template else */
    int other;         /* route="other" (the table was full) */
    char method[METHOD_MAX + 1];
    int status;
    uint64_t count;
} series;

struct tb__metrics {
    pthread_mutex_t mu;
    series s[TB__METRICS_SERIES];
    size_t n;
    uint64_t lost;                 /* not even an "other" slot left */
    uint64_t bucket[NBUCKETS + 1]; /* per bucket (not cumulative); +Inf */
    double sum;
    uint64_t count;
};

tb__metrics *tb__metrics_new(void)
{
    tb__metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

void tb__metrics_free(tb__metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* The series for the key, added if there is room below limit, or NULL. */
static series *find_series(tb__metrics *m, const char *route, int other,
                           const char *method, int status, size_t limit)
{
    for (size_t i = 0; i < m->n; i++) {
        series *s = &m->s[i];
        if (s->route == route && s->other == other && s->status == status &&
            strcmp(s->method, method) == 0)
            return s;
    }
    if (m->n >= limit)
        return NULL;
    series *s = &m->s[m->n++];
    s->route = route;
    s->other = other;
    snprintf(s->method, sizeof s->method, "%s", method);
    s->status = status;
    s->count = 0;
    return s;
}

void tb__metrics_count(tb__metrics *m, const char *route, const char *method,
                       int status, double seconds)
{
    /* A method that does not fit is not one the router knows anyway. */
    if (!method || strlen(method) > METHOD_MAX)
        method = "other";
    size_t b = 0;
    while (b < NBUCKETS && seconds > bucket_le[b])
        b++;
    pthread_mutex_lock(&m->mu);
    series *s = find_series(m, route, 0, method, status, REGULAR_SERIES);
    if (!s)
        s = find_series(m, NULL, 1, method, status, TB__METRICS_SERIES);
    if (s)
        s->count++;
    else
        m->lost++;
    m->bucket[b]++;
    m->sum += seconds;
    m->count++;
    pthread_mutex_unlock(&m->mu);
}

/* ---------------------------------------------------------------- text */

/* A growing text; on ENOMEM it keeps failing (oom) and the text is lost. */
typedef struct buf {
    char *p;
    size_t len, cap;
    int oom;
} buf;

static int reserve(buf *b, size_t more)
{
    if (b->oom)
        return -1;
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void add(buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void add(buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || reserve(b, (size_t)n) != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void add_escaped(buf *b, const char *s)
{
    for (; *s; s++) {
        if (reserve(b, 2) != 0)
            return;
        if (*s == '\\' || *s == '"') {
            b->p[b->len++] = '\\';
            b->p[b->len++] = *s;
        } else if (*s == '\n') {
            b->p[b->len++] = '\\';
            b->p[b->len++] = 'n';
        } else {
            b->p[b->len++] = *s;
        }
        b->p[b->len] = '\0';
    }
}

char *tb__metrics_escape(const char *s)
{
    buf b = {0};
    if (reserve(&b, 0) != 0)
        return NULL;
    b.p[0] = '\0';
    add_escaped(&b, s);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

static void header(buf *b, const char *name, const char *type, const char *help)
{
    add(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Events dropped, by reason: the bus's counters and the hop limit's. */
typedef struct drop {
    const char *reason;
    uint64_t n;
} drop;
#define NDROPS 6

static void bus_drops(tb_app *app, const tb_bus_info *bi, drop d[NDROPS])
{
    const drop all[NDROPS] = {
        {"malformed", bi->malformed},
        {"oversize", bi->oversize},
        {"duplicate", bi->duplicates},
        {"queue_full", bi->queue_full_drops},
        {"publish_failed", bi->publish_failed},
        {"hop_limit", (uint64_t)atomic_load(&app->hop_limit_drops)},
    };
    memcpy(d, all, sizeof all);
}

static void bus_metrics(buf *b, tb_app *app)
{
    tb_bus_info bi;
    if (tb_bus_status(app, &bi) != 0)
        return;
    header(b, "taskbus_events_published_total", "counter",
           "Events acknowledged by the bus backend.");
    add(b, "taskbus_events_published_total %" PRIu64 "\n", bi.published);
    header(b, "taskbus_events_received_total", "counter",
           "Events taken from the bus backend.");
    add(b, "taskbus_events_received_total %" PRIu64 "\n", bi.received);
    header(b, "taskbus_events_dropped_total", "counter",
           "Events dropped, by reason.");
    drop drops[NDROPS];
    bus_drops(app, &bi, drops);
    for (size_t i = 0; i < NDROPS; i++)
        add(b, "taskbus_events_dropped_total{reason=\"%s\"} %" PRIu64 "\n",
            drops[i].reason, drops[i].n);
    header(b, "taskbus_events_unreplicated_total", "counter",
           "Events published but answered not_replicated: fewer Redis "
           "replicas than redis.wait_replicas confirmed them in time.");
    add(b, "taskbus_events_unreplicated_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->pub_unreplicated));
    header(b, "taskbus_bus_reconnects_total", "counter",
           "Successful reconnections to the bus after a loss.");
    add(b, "taskbus_bus_reconnects_total %" PRIu64 "\n", bi.reconnects);
    header(b, "taskbus_bus_connected", "gauge",
           "1 if the bus is connected, else 0.");
    add(b, "taskbus_bus_connected %d\n", bi.state == TB_BUS_CONNECTED);
    header(b, "taskbus_bus_queued", "gauge", "Events waiting to be published.");
    add(b, "taskbus_bus_queued %d\n", bi.queued);
}

static void history_metrics(buf *b, tb_app *app)
{
    header(b, "taskbus_history_catchup_reads_total", "counter",
           "History reads of this instance catching up after a gap or a "
           "reconnection.");
    add(b, "taskbus_history_catchup_reads_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->hist_reads));
    header(b, "taskbus_history_events_recovered_total", "counter",
           "Events this instance missed live and delivered from the "
           "history.");
    add(b, "taskbus_history_events_recovered_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->hist_recovered));
    header(b, "taskbus_history_events_lost_total", "counter",
           "Events this instance missed that were no longer in the history "
           "(history_size, history_ttl).");
    add(b, "taskbus_history_events_lost_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->hist_lost));
    header(b, "taskbus_history_resumes_total", "counter",
           "Subscriptions resumed from a position (websocket, long poll, "
           "tb_sub_resume), by whether the history still had what followed "
           "it.");
    for (int r = 1; r >= 0; r--)
        add(b, "taskbus_history_resumes_total{recovered=\"%s\"} %" PRIu64 "\n",
            r ? "true" : "false", (uint64_t)atomic_load(&app->hist_resumes[r]));
}

static void ws_metrics(buf *b, tb_app *app)
{
    header(b, "taskbus_instances", "gauge",
           "Live instances in the last list read (this one included).");
    add(b, "taskbus_instances %zu\n", tb__instances_count(app->instances));
    header(b, "taskbus_ws_clients", "gauge", "Open websocket connections.");
    add(b, "taskbus_ws_clients %d\n", tb__ws_clients(app));
    header(b, "taskbus_ws_slow_closes_total", "counter",
           "Websocket clients closed because their send queue was full.");
    add(b, "taskbus_ws_slow_closes_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->ws_slow_closes));
    header(b, "taskbus_http_header_timeouts_total", "counter",
           "Connections closed because a request line and headers were not "
           "complete within http.header_timeout_ms.");
    add(b, "taskbus_http_header_timeouts_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->http_header_timeouts));
    header(b, "taskbus_http_body_timeouts_total", "counter",
           "Connections closed because a request body stalled for "
           "http.body_timeout_ms.");
    add(b, "taskbus_http_body_timeouts_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->http_body_timeouts));
    header(b, "taskbus_http_heads_too_large_total", "counter",
           "Requests refused (431) by the front: request line and headers "
           "over 8192 bytes.");
    add(b, "taskbus_http_heads_too_large_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->http_heads_too_large));
    header(b, "taskbus_http_front_refused_total", "counter",
           "Requests refused (400) by the front: a control byte, blanks "
           "before a colon, a folded line, or an upgrade with a body.");
    add(b, "taskbus_http_front_refused_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->http_front_refused));
    header(b, "taskbus_http_connections_refused_total", "counter",
           "Connections closed at once: over http.max_connections.");
    add(b, "taskbus_http_connections_refused_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->http_conns_refused));
    header(b, "taskbus_http_accept_errors_total", "counter",
           "accept() failures on the public socket (out of descriptors); "
           "the front stops accepting for 100 ms after each.");
    add(b, "taskbus_http_accept_errors_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->http_accept_errors));
    header(b, "taskbus_http_front_busy_total", "counter",
           "Requests refused (503) by the front: over http.body_memory_max, "
           "or waiting for a server thread past http.queue_timeout_ms.");
    add(b, "taskbus_http_front_busy_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->http_front_busy));
    header(b, "taskbus_http_front_answered_total", "counter",
           "POST /events, POST /events/{name} and GET /healthz requests "
           "the front answered itself, without an HTTP thread "
           "(http.front_answers).");
    add(b, "taskbus_http_front_answered_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->http_front_answered));
    header(b, "taskbus_ws_handover_failures_total", "counter",
           "Websocket upgrades and SSE streams whose socket could not be "
           "taken over from the HTTP server (the client reset it, or no "
           "descriptor was left).");
    add(b, "taskbus_ws_handover_failures_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->ws_handover_failures));
    header(b, "taskbus_ws_memory_bytes", "gauge",
           "Bytes websocket connections hold in receive and send buffers.");
    add(b, "taskbus_ws_memory_bytes %lld\n", tb__ws_memory(app));
    header(b, "taskbus_ws_memory_max_bytes", "gauge",
           "ws_memory_max: the cap on taskbus_ws_memory_bytes.");
    add(b, "taskbus_ws_memory_max_bytes %zu\n", app->cfg.ws.memory_max);
    header(b, "taskbus_ws_memory_closes_total", "counter",
           "Websocket clients closed (1008) because all websockets held "
           "more than ws_memory_max.");
    add(b, "taskbus_ws_memory_closes_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->ws_memory_closes));
    header(b, "taskbus_sse_clients", "gauge", "Open SSE streams (GET /sse).");
    add(b, "taskbus_sse_clients %d\n", tb__sse_clients(app));
    header(b, "taskbus_sse_refused_total", "counter",
           "SSE streams refused at sse_max_clients (503).");
    add(b, "taskbus_sse_refused_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->sse_refused));
    header(b, "taskbus_sse_slow_closes_total", "counter",
           "SSE streams closed because their send queue was full.");
    add(b, "taskbus_sse_slow_closes_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->sse_slow_closes));
}

/* The cluster's and singletons' counters: a Prometheus series, and the
 * member of GET /stats's "cluster" (singleton 0) or "singletons" group. */
typedef struct crow {
    const char *name, *type, *help;
    int singleton;
    const char *key;
    uint64_t v;
} crow;
#define NCROWS 17

static void cluster_rows(tb_app *app, crow r[NCROWS])
{
    tb__cluster_stats c;
    tb__singleton_stats g;
    tb__cluster_stats_get(app, &c);
    tb__singleton_stats_get(app, &g);
    const crow rows[NCROWS] = {
        {"taskbus_claims_total", "counter",
         "Task names claimed across the cluster by this instance.", 0, "claims",
         c.claims},
        {"taskbus_claim_conflicts_total", "counter",
         "Claims refused: a live task on some instance held the name.", 0,
         "claim_conflicts", c.claim_conflicts},
        {"taskbus_claim_errors_total", "counter",
         "Claims that failed (Redis unreachable or slow).", 0, "claim_errors",
         c.claim_errors},
        {"taskbus_claims_reasserted_total", "counter",
         "Claims made again after Redis lost this instance's record.", 0,
         "claims_reasserted", c.reasserted},
        {"taskbus_claim_duplicates_cancelled_total", "counter",
         "Tasks cancelled because another instance took their name while "
         "this one was cut off.",
         0, "claim_duplicates_cancelled", c.reassert_conflicts},
        {"taskbus_cluster_calls_total", "counter",
         "Calls to other instances (get, list, cancel).", 0, "calls",
         c.remote_calls},
        {"taskbus_cluster_call_failures_total", "counter",
         "Calls to other instances that got no answer.", 0, "call_failures",
         c.remote_failures},
        {"taskbus_cluster_cancels_served_total", "counter",
         "Cancels asked by other instances and done here.", 0, "cancels_served",
         c.remote_cancels},
        {"taskbus_cluster_messages_bad_total", "counter",
         "Messages on this instance's control channel that were dropped.", 0,
         "messages_bad", c.messages_bad},
        {"taskbus_singleton_leases_held", "gauge",
         "Singleton leases this instance holds (its runs).", 1, "leases_held",
         g.held},
        {"taskbus_singleton_runs_total", "counter",
         "Singleton runs started here.", 1, "runs", g.runs},
        {"taskbus_singleton_failovers_total", "counter",
         "Singletons taken over here after their lease expired elsewhere.", 1,
         "failovers", g.takeovers},
        {"taskbus_lease_renewals_total", "counter", "Singleton leases renewed.",
         1, "lease_renewals", g.renewals},
        {"taskbus_lease_renewal_failures_total", "counter",
         "Lease renewals that got no answer.", 1, "lease_renewal_failures",
         g.renew_failures},
        {"taskbus_leases_lost_total", "counter",
         "Runs cancelled here because their lease was lost.", 1, "leases_lost",
         g.leases_lost},
        {"taskbus_periodic_ticks_total", "counter",
         "Periodic ticks fired here.", 1, "periodic_ticks", g.ticks_fired},
        {"taskbus_periodic_ticks_skipped_total", "counter",
         "Periodic ticks not fired here: fired elsewhere first, or passed "
         "unfired (no run held the lease, woke in time or could record "
         "them), counted by the run that fired the next one.",
         1, "periodic_ticks_skipped", g.ticks_skipped},
    };
    memcpy(r, rows, sizeof rows);
}

static void cluster_metrics(buf *b, tb_app *app)
{
    crow rows[NCROWS];
    cluster_rows(app, rows);
    for (size_t i = 0; i < NCROWS; i++) {
        header(b, rows[i].name, rows[i].type, rows[i].help);
        add(b, "%s %" PRIu64 "\n", rows[i].name, rows[i].v);
    }
}

static void longpoll_metrics(buf *b, tb_app *app)
{
    header(b, "taskbus_http_longpolls", "gauge",
           "Long polls (GET /events/{pattern}) waiting now.");
    add(b, "taskbus_http_longpolls %d\n", atomic_load(&app->http_longpolls));
    header(b, "taskbus_http_longpolls_refused_total", "counter",
           "Long polls refused with 503 at http_longpoll_max.");
    add(b, "taskbus_http_longpolls_refused_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->http_longpolls_refused));
    header(b, "taskbus_http_longpolls_abandoned_total", "counter",
           "Long polls ended because their client closed the connection.");
    add(b, "taskbus_http_longpolls_abandoned_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&app->http_longpolls_abandoned));
}

static const tb_task_state task_states[] = {TB_TASK_PENDING, TB_TASK_RUNNING,
                                            TB_TASK_DONE, TB_TASK_FAILED,
                                            TB_TASK_CANCELLED};
#define NSTATES (sizeof task_states / sizeof task_states[0])

/* This instance's tasks in the registry (not yet purged) by state, in
 * task_states' order. 0, or -1 out of memory. */
static int task_counts(tb_app *app, size_t count[NSTATES])
{
    tb_task_info *list = NULL;
    size_t n = 0;
    memset(count, 0, NSTATES * sizeof count[0]);
    if (tb_task_list(app, &list, &n) < 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < NSTATES; k++)
            if (list[i].state == task_states[k])
                count[k]++;
    free(list);
    return 0;
}

static void task_metrics(buf *b, tb_app *app)
{
    size_t count[NSTATES];
    if (task_counts(app, count) != 0) {
        b->oom = 1;
        return;
    }
    header(b, "taskbus_tasks", "gauge",
           "Tasks in the registry (not yet purged), by state.");
    for (size_t k = 0; k < NSTATES; k++)
        add(b, "taskbus_tasks{state=\"%s\"} %zu\n",
            tb_task_state_name(task_states[k]), count[k]);
}

static void http_metrics(buf *b, tb__metrics *m)
{
    pthread_mutex_lock(&m->mu);
    header(b, "taskbus_http_requests_total", "counter",
           "HTTP requests answered, by route template, method and status.");
    for (size_t i = 0; i < m->n; i++) {
        const series *s = &m->s[i];
        add(b, "taskbus_http_requests_total{route=\"");
        add_escaped(b, s->other ? "other" : s->route ? s->route : "unmatched");
        add(b, "\",method=\"");
        add_escaped(b, s->method);
        add(b, "\",status=\"%d\"} %" PRIu64 "\n", s->status, s->count);
    }
    if (m->lost)
        add(b,
            "taskbus_http_requests_total{route=\"other\",method=\"other\","
            "status=\"other\"} %" PRIu64 "\n",
            m->lost);
    header(b, "taskbus_http_request_duration_seconds", "histogram",
           "Time to answer an HTTP request.");
    uint64_t cum = 0;
    for (size_t i = 0; i < NBUCKETS; i++) {
        cum += m->bucket[i];
        add(b,
            "taskbus_http_request_duration_seconds_bucket{le=\"%s\"} %" PRIu64
            "\n",
            bucket_name[i], cum);
    }
    add(b,
        "taskbus_http_request_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64
        "\n",
        m->count);
    add(b, "taskbus_http_request_duration_seconds_sum %.9g\n", m->sum);
    add(b, "taskbus_http_request_duration_seconds_count %" PRIu64 "\n",
        m->count);
    pthread_mutex_unlock(&m->mu);
}

char *tb__metrics_render(tb_app *app, size_t *len)
{
    buf b = {0};
    if (reserve(&b, 0) != 0)
        return NULL;
    b.p[0] = '\0';
    bus_metrics(&b, app);
    history_metrics(&b, app);
    task_metrics(&b, app);
    ws_metrics(&b, app);
    longpoll_metrics(&b, app);
    cluster_metrics(&b, app);
    if (app->metrics)
        http_metrics(&b, app->metrics);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

int tb__metrics_handler(tb_http_req *req, void *ud)
{
    (void)ud;
    size_t len = 0;
    char *text = tb__metrics_render(tb_http_app(req), &len);
    if (!text)
        return tb_http_error(req, 500, "internal", "out of memory");
    int rc = tb_http_respond(req, 200, "text/plain; version=0.0.4", text, len);
    free(text);
    return rc;
}

/* ---------------------------------------------------------------- GET /stats
 */

#define J(x) ((json_int_t)(x))

/* Events waiting in the workers' inboxes now. */
static uint64_t worker_queue_depth(tb_app *app)
{
    uint64_t n = 0;
    for (int i = 0; app->workers && i < app->nworkers; i++) {
        tb__worker *w = &app->workers[i];
        pthread_mutex_lock(&w->inbox_mu);
        n += w->inbox_events;
        pthread_mutex_unlock(&w->inbox_mu);
    }
    return n;
}

static uint64_t delivered(tb_app *app)
{
    uint64_t n = 0;
    for (int i = 0; app->workers && i < app->nworkers; i++)
        n += atomic_load_explicit(&app->workers[i].delivered,
                                  memory_order_relaxed);
    return n;
}

static json_t *bus_stats(tb_app *app, const tb_bus_info *bip)
{
    tb_bus_info bi = *bip;
    drop drops[NDROPS];
    bus_drops(app, &bi, drops);
    json_t *by = json_object();
    uint64_t total = 0;
    for (size_t i = 0; by && i < NDROPS; i++) {
        json_object_set_new(by, drops[i].reason, json_integer(J(drops[i].n)));
        total += drops[i].n;
    }
    /* name and last_error come from the adapter (last_error from a
     * server's reply): not necessarily UTF-8, which "s" would refuse and
     * turn the whole answer into a 500. */
    return json_pack("{s:o,s:s,s:b,s:o,s:I,s:I,s:o,s:i,s:I,s:I,s:I,s:o}",
                     "kind", tb__api_jstr(bi.name), "state",
                     tb_bus_state_name(bi.state), "connected",
                     bi.state == TB_BUS_CONNECTED, "since",
                     bi.since_us ? tb__api_jtime(bi.since_us) : json_null(),
                     "attempts", J(bi.attempts), "reconnects", J(bi.reconnects),
                     "last_error", tb__api_jstr(bi.last_error), "queue_depth",
                     bi.queued, "published", J(bi.published), "received",
                     J(bi.received), "dropped", J(total), "drops", by);
}

static json_t *task_stats(tb_app *app)
{
    size_t count[NSTATES];
    if (task_counts(app, count) != 0)
        return NULL;
    json_t *o = json_object();
    for (size_t k = 0; o && k < NSTATES; k++)
        json_object_set_new(o, tb_task_state_name(task_states[k]),
                            json_integer(J(count[k])));
    pthread_mutex_lock(&app->reg_mu);
    uint64_t added = app->next_id;
    pthread_mutex_unlock(&app->reg_mu);
    if (o)
        json_object_set_new(o, "added", json_integer(J(added)));
    return o;
}

static json_t *cluster_stats(tb_app *app, int singleton)
{
    crow rows[NCROWS];
    cluster_rows(app, rows);
    json_t *o = json_object();
    if (o && !singleton)
        json_object_set_new(
            o, "instances",
            json_integer(J(tb__instances_count(app->instances))));
    for (size_t i = 0; o && i < NCROWS; i++)
        if (rows[i].singleton == singleton)
            json_object_set_new(o, rows[i].key, json_integer(J(rows[i].v)));
    return o;
}

#define LOAD(x) J(atomic_load(&app->x))

json_t *tb__stats_json(tb_app *app)
{
    tb_bus_info bi;
    if (tb_bus_status(app, &bi) != 0)
        memset(&bi, 0, sizeof bi); /* no bus (not running): zeros */
    int64_t mono0 = atomic_load(&app->run_mono_us);
    int64_t up_ms = mono0 ? (tb__mono_us() - mono0) / 1000 : 0;
    uint64_t requests = 0;
    if (app->metrics) {
        tb__metrics *m = app->metrics;
        pthread_mutex_lock(&m->mu);
        requests = m->count;
        pthread_mutex_unlock(&m->mu);
    }
    int64_t wall0 = atomic_load(&app->run_wall_us);
    return json_pack(
        "{s:s,s:s,s:o,s:I,s:I,s:i,s:o,"
        "s:{s:I,s:I,s:I,s:I},s:o,"
        "s:{s:i,s:I,s:I,s:I,s:I,s:I},s:{s:i,s:I,s:I},s:{s:i,s:I,s:I},"
        "s:{s:I,s:I,s:I,s:I,s:I},s:o,s:o,s:{s:I}}",
        "instance", app->instance, "version", TB_VERSION_STRING, "started",
        wall0 ? tb__api_jtime(wall0) : json_null(), "uptime_s", J(up_ms / 1000),
        "uptime_ms", J(up_ms), "workers", app->nworkers, "bus",
        bus_stats(app, &bi),
        /* events */
        "events", "dispatched", J(bi.published), "received", J(bi.received),
        "delivered", J(delivered(app)), "worker_queue_depth",
        J(worker_queue_depth(app)),
        /* tasks */
        "tasks", task_stats(app),
        /* ws */
        "ws", "clients", tb__ws_clients(app), "memory_bytes",
        J(tb__ws_memory(app)), "memory_max_bytes", J(app->cfg.ws.memory_max),
        "slow_closes", LOAD(ws_slow_closes), "memory_closes",
        LOAD(ws_memory_closes), "handover_failures", LOAD(ws_handover_failures),
        /* sse */
        "sse", "clients", tb__sse_clients(app), "refused", LOAD(sse_refused),
        "slow_closes", LOAD(sse_slow_closes),
        /* long polls */
        "longpolls", "waiting", atomic_load(&app->http_longpolls), "refused",
        LOAD(http_longpolls_refused), "abandoned",
        LOAD(http_longpolls_abandoned),
        /* history */
        "history", "catchup_reads", LOAD(hist_reads), "recovered",
        LOAD(hist_recovered), "lost", LOAD(hist_lost), "resumes_recovered",
        LOAD(hist_resumes[1]), "resumes_not_recovered", LOAD(hist_resumes[0]),
        "cluster", cluster_stats(app, 0), "singletons", cluster_stats(app, 1),
        "http", "requests", J(requests));
}

/* ---- ?scope=cluster: the sums over the live instances ---- */

/* Integer members of one instance's object that do not add up across
 * instances: its clock, a setting, its count of the others. (Strings and
 * booleans are left out too.) */
static const char *const not_summed[] = {"uptime_s", "uptime_ms",
                                         "bus.attempts", "ws.memory_max_bytes",
                                         "cluster.instances"};

static int summed(const char *path)
{
    for (size_t i = 0; i < sizeof not_summed / sizeof not_summed[0]; i++)
        if (!strcmp(path, not_summed[i]))
            return 0;
    return 1;
}

/* A copy of o (at path prefix, "" at the top) with only what adds up: its
 * integers but not_summed, and objects of them, depth levels deep. NULL on
 * ENOMEM. */
static json_t *summable(json_t *o, const char *prefix, int depth)
{
    json_t *out = json_object(), *v;
    const char *k;
    json_object_foreach(o, k, v)
    {
        if (!out)
            break;
        char path[128];
        int n = snprintf(path, sizeof path, "%s%s%s", prefix,
                         *prefix ? "." : "", k);
        if (n < 0 || (size_t)n >= sizeof path)
            continue; /* no member of ours has so long a path */
        json_t *c;
        if (json_is_integer(v) && summed(path))
            c = json_integer(json_integer_value(v));
        else if (json_is_object(v) && depth > 1)
            c = summable(v, path, depth - 1);
        else
            continue;
        if (!c || json_object_set_new(out, k, c)) {
            json_decref(out);
            out = NULL;
        }
    }
    return out;
}

/* Adds each integer >= 0 of other (another instance's answer) to the
 * member of sum at the same path, saturating; nothing else of other is
 * looked at, so a member it lacks or garbles adds nothing. */
static void add_into(json_t *sum, json_t *other)
{
    json_t *v;
    const char *k;
    json_object_foreach(sum, k, v)
    {
        json_t *o = json_object_get(other, k);
        if (json_is_object(v)) {
            add_into(v, o);
        } else if (json_is_integer(o) && json_integer_value(o) >= 0) {
            json_int_t a = json_integer_value(v), b = json_integer_value(o);
            json_integer_set(v, a > LLONG_MAX - b ? LLONG_MAX : a + b);
        }
    }
}

/* GET /stats?scope=cluster: this instance's summable members plus every
 * other live instance's, "instances" (how many answered, this one
 * included) and "unreachable" (the ids of those that did not). NULL on
 * ENOMEM. */
static json_t *cluster_sums(tb_app *app)
{
    json_t *mine = tb__stats_json(app), *others, *unreachable;
    json_t *sum = mine ? summable(mine, "", 3) : NULL;
    json_decref(mine);
    if (!sum || tb__cluster_stats_all(app, &others, &unreachable) != 0) {
        json_decref(sum);
        return NULL;
    }
    size_t i;
    json_t *o;
    json_array_foreach(others, i, o)
    {
        add_into(sum, o);
    }
    json_int_t answered = (json_int_t)json_array_size(others) + 1;
    json_decref(others);
    if (json_object_set_new(sum, "scope", json_string("cluster")) |
        json_object_set_new(sum, "instances", json_integer(answered)) |
        json_object_set_new(sum, "unreachable", unreachable)) {
        json_decref(sum);
        return NULL;
    }
    return sum;
}

int tb__stats_handler(tb_http_req *req, void *ud)
{
    (void)ud;
    tb_app *app = tb_http_app(req);
    char scope[16];
    int rc = tb_http_query(req, "scope", scope, sizeof scope);
    if (rc == TB_ENOENT || (rc >= 0 && !strcmp(scope, "local")))
        return tb__api_respond(req, 200, tb__stats_json(app));
    if (rc < 0 || strcmp(scope, "cluster") != 0)
        return tb_http_error(req, 400, "bad_scope",
                             "scope must be local (this instance: the "
                             "default) or cluster (the sums over every live "
                             "instance)");
    return tb__api_respond(req, 200, cluster_sums(app));
}
