/* test_metrics.c - unit tests for service/metrics.c: GET /metrics driven
 * through tb__http_handle with a fake connection (no network), against a
 * running app, and the label escaping. */
#include "harness.h"

#include <stdlib.h>

#include "http.h"
#include "http_fake.h"
#include "internal.h"
#include "metrics.h"

/* One request (path may end in "?query"); returns the status, and the
 * body in *body (caller frees) and the headers in headers (1024 bytes)
 * when not NULL. */
static int call(tb_app *app, const char *method, const char *path,
                const char *auth, const char *data, char **body, char *headers)
{
    fake_conn c;
    memset(&c, 0, sizeof c);
    c.auth = auth;
    char p[256];
    snprintf(p, sizeof p, "%s", path);
    char *query = strchr(p, '?');
    if (query)
        *query++ = '\0';
    int status = fake_handle(&c, app, method, p, query, data ? data : "",
                             data ? strlen(data) : 0);
    TH_CHECK_EQ(c.sends, 1);
    TH_CHECK_EQ(c.status, status);
    if (headers)
        memcpy(headers, c.headers, sizeof c.headers);
    if (body)
        *body = c.body;
    else
        free(c.body);
    return status;
}

/* The value of the sample whose name and labels are exactly series
 * ("name" or "name{a=\"b\"}"), or -1 if text has no such line. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *l = text; l && *l;
         l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, series, n) == 0 && l[n] == ' ')
            return strtod(l + n + 1, NULL);
    }
    return -1;
}

/* 1 if text has "# HELP name " and "# TYPE name type\n". */
static int has_meta(const char *text, const char *name, const char *type)
{
    char help[128], typ[128];
    snprintf(help, sizeof help, "# HELP %s ", name);
    snprintf(typ, sizeof typ, "# TYPE %s %s\n", name, type);
    return strstr(text, help) && strstr(text, typ);
}

/* GET /metrics: checks status and content type; returns the text (caller
 * frees). */
static char *get_metrics(tb_app *app, const char *auth)
{
    char *body = NULL, headers[1024];
    int st = call(app, "GET", "/metrics", auth, NULL, &body, headers);
    TH_CHECK_EQ(st, 200);
    TH_CHECKF(strstr(headers, "Content-Type: text/plain; version=0.0.4\r\n"),
              "headers %s", headers);
    return body;
}

/* Checks the histogram: buckets in order, non-decreasing, ending with
 * +Inf == _count == want. */
static void check_histogram(const char *text, double want)
{
    static const char *const le[] = {"0.0005", "0.001", "0.005", "0.01",
                                     "0.05",   "0.1",   "0.5",   "1",
                                     "5",      "+Inf"};
    double prev = 0;
    for (size_t i = 0; i < sizeof le / sizeof le[0]; i++) {
        char series[128];
        snprintf(series, sizeof series,
                 "taskbus_http_request_duration_seconds_bucket{le=\"%s\"}",
                 le[i]);
        double v = sample(text, series);
        TH_CHECKF(v >= prev, "%s = %g after %g", series, v, prev);
        prev = v;
    }
    double count = sample(text, "taskbus_http_request_duration_seconds_count");
    TH_CHECKF(count == want, "_count %g, want %g", count, want);
    TH_CHECKF(prev == count, "+Inf %g != _count %g", prev, count);
    TH_CHECK(sample(text, "taskbus_http_request_duration_seconds_sum") >= 0);
    TH_CHECK(strstr(text, "_bucket{le=\"0.0005\"}") <
             strstr(text, "_bucket{le=\"+Inf\"}"));
}

/* ------------------------------------------------------------ tests */

/* An app of workers workers, graceful timeout 2 s, with the HTTP API added
 * and api_token token (NULL: none). Main thread (cmocka). */
static tb_app *api_app(int workers, const char *token)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = workers;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.http.api_token = token;
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(tb_app_add_api(app), 0);
    return app;
}

static int sleeper(tb_task *self, void *arg)
{
    (void)arg;
    while (tb_sleep(self, 60000) == 0)
        ;
    return 0;
}

TH_APP_TEST(test_metrics, api_app(2, NULL), 30000)
{
    TH_CHECK_RC(th_add(app, "sleeper", 0, sleeper, NULL, NULL), 0);
    TH_CHECK(th_wait_state(app, "sleeper", TB_TASK_RUNNING, 5000));

    int answered = 0;
    for (int i = 0; i < 3; i++, answered++)
        TH_CHECK_EQ(call(app, "POST", "/events/m.hello", NULL, "x", NULL, NULL),
                    202);
    TH_CHECK_EQ(call(app, "GET", "/nope", NULL, NULL, NULL, NULL), 404);
    answered++;

    /* The bus acknowledges on its own time: poll until it counted all 3. */
    char *text = NULL;
    for (int64_t end = th_mono_ms() + 5000;; th_nap_ms(5)) {
        free(text);
        text = get_metrics(app, NULL);
        if (!text)
            return;
        check_histogram(text, answered);
        answered++;
        if (sample(text, "taskbus_events_published_total") == 3 ||
            th_mono_ms() > end)
            break;
    }
    TH_CHECK(sample(text, "taskbus_events_published_total") == 3);
    TH_CHECK(sample(text, "taskbus_events_received_total") >= 0);
    TH_CHECK(sample(text,
                    "taskbus_http_requests_total{route=\"/events/{name}\","
                    "method=\"POST\",status=\"202\"}") == 3);
    TH_CHECK(sample(text, "taskbus_http_requests_total{route=\"unmatched\","
                          "method=\"GET\",status=\"404\"}") == 1);
    TH_CHECK(sample(text, "taskbus_tasks{state=\"running\"}") == 1);
    TH_CHECK(sample(text, "taskbus_tasks{state=\"pending\"}") == 0);
    TH_CHECK(sample(text, "taskbus_bus_connected") == 1);
    TH_CHECK(sample(text, "taskbus_bus_queued") >= 0);
    TH_CHECK(sample(text, "taskbus_bus_reconnects_total") == 0);
    static const char *const reasons[] = {"malformed", "oversize", "duplicate",
                                          "queue_full", "publish_failed"};
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++) {
        char series[96];
        snprintf(series, sizeof series,
                 "taskbus_events_dropped_total{reason=\"%s\"}", reasons[i]);
        TH_CHECKF(sample(text, series) == 0, "%s", series);
    }
    TH_CHECK(has_meta(text, "taskbus_events_published_total", "counter"));
    TH_CHECK(has_meta(text, "taskbus_events_received_total", "counter"));
    TH_CHECK(has_meta(text, "taskbus_events_dropped_total", "counter"));
    TH_CHECK(has_meta(text, "taskbus_bus_reconnects_total", "counter"));
    TH_CHECK(has_meta(text, "taskbus_bus_connected", "gauge"));
    TH_CHECK(has_meta(text, "taskbus_bus_queued", "gauge"));
    TH_CHECK(has_meta(text, "taskbus_tasks", "gauge"));
    TH_CHECK(has_meta(text, "taskbus_http_requests_total", "counter"));
    TH_CHECK(
        has_meta(text, "taskbus_http_request_duration_seconds", "histogram"));
    TH_CHECK(has_meta(text, "taskbus_ws_clients", "gauge"));
    TH_CHECK(sample(text, "taskbus_ws_clients") == 0);
    TH_CHECK(has_meta(text, "taskbus_ws_slow_closes_total", "counter"));
    TH_CHECK(sample(text, "taskbus_ws_slow_closes_total") == 0);
    TH_CHECK(has_meta(text, "taskbus_ws_handover_failures_total", "counter"));
    TH_CHECK(sample(text, "taskbus_ws_handover_failures_total") == 0);
    TH_CHECK(has_meta(text, "taskbus_http_longpolls", "gauge"));
    TH_CHECK(sample(text, "taskbus_http_longpolls") == 0);
    TH_CHECK(has_meta(text, "taskbus_http_longpolls_refused_total", "counter"));
    TH_CHECK(sample(text, "taskbus_http_longpolls_refused_total") == 0);
    TH_CHECK(
        has_meta(text, "taskbus_http_longpolls_abandoned_total", "counter"));
    TH_CHECK(sample(text, "taskbus_http_longpolls_abandoned_total") == 0);
    free(text);

    /* The previous GET /metrics calls count too, under their template. */
    text = get_metrics(app, NULL);
    if (text)
        TH_CHECK(sample(text,
                        "taskbus_http_requests_total{route=\"/metrics\","
                        "method=\"GET\",status=\"200\"}") == answered - 4);
    free(text);
}

/* GET /stats as JSON (NULL, having failed the test, if it is not 200). */
static json_t *get_stats(tb_app *app, const char *auth)
{
    char *body = NULL;
    int st = call(app, "GET", "/stats", auth, NULL, &body, NULL);
    json_error_t err;
    json_t *o = st == 200 && body ? json_loads(body, 0, &err) : NULL;
    TH_CHECKF(json_is_object(o), "GET /stats: %d %s", st, body ? body : "");
    free(body);
    return o;
}

/* A member of a group of GET /stats: group.key as an integer, -1 if it is
 * not one. */
static long long stat(json_t *o, const char *group, const char *key)
{
    json_t *v = json_object_get(group ? json_object_get(o, group) : o, key);
    TH_CHECKF(json_is_integer(v), "%s.%s is not an integer", group ? group : "",
              key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

static th_counter stats_got;

/* One subscription with two patterns that both match st.* events: each
 * event is delivered (and counted) once. */
static int stats_reader(tb_task *self, void *arg)
{
    (void)arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "st.>", 64, &err);
    if (!TH_CHECK(sub != NULL) || !TH_CHECK_RC(tb_sub_add(sub, "st.*"), 0))
        return -1;
    th_counter_add(&stats_got, 1000); /* subscribed */
    tb_event *ev;
    while (tb_sub_next(self, sub, -1, &ev) == 0) {
        tb_event_unref(ev);
        th_counter_add(&stats_got, 1);
    }
    tb_sub_close(sub);
    return 0;
}

/* GET /stats: every member there with its type; the counters move as
 * events are dispatched and delivered, by exactly as many. */
TH_APP_TEST(test_stats, api_app(2, NULL), 30000)
{
    th_counter_init(&stats_got);
    TH_CHECK_RC(th_add(app, "reader", 1, stats_reader, NULL, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&stats_got, 1000, 5000));
    json_t *a = get_stats(app, NULL);
    if (!a)
        return;
    TH_CHECK_STR(json_string_value(json_object_get(a, "instance")),
                 tb_app_instance(app));
    TH_CHECK(json_is_string(json_object_get(a, "version")));
    TH_CHECK(json_is_string(json_object_get(a, "started")));
    TH_CHECK(stat(a, NULL, "uptime_s") >= 0);
    TH_CHECK_EQ(stat(a, NULL, "workers"), 2);
    json_t *bus = json_object_get(a, "bus");
    TH_CHECK_STR(json_string_value(json_object_get(bus, "kind")), "memory");
    TH_CHECK_STR(json_string_value(json_object_get(bus, "state")), "connected");
    TH_CHECK(json_is_true(json_object_get(bus, "connected")));
    static const char *const bus_keys[] = {"attempts",    "reconnects",
                                           "queue_depth", "published",
                                           "received",    "dropped"};
    for (size_t i = 0; i < sizeof bus_keys / sizeof bus_keys[0]; i++)
        TH_CHECK(stat(a, "bus", bus_keys[i]) >= 0);
    TH_CHECK_EQ(json_object_size(json_object_get(bus, "drops")), 6);
    static const struct {
        const char *group, *keys[10];
    } groups[] = {
        {"events",
         {"dispatched", "received", "delivered", "worker_queue_depth"}},
        {"tasks",
         {"pending", "running", "done", "failed", "cancelled", "added"}},
        {"ws",
         {"clients", "memory_bytes", "memory_max_bytes", "slow_closes",
          "memory_closes", "handover_failures"}},
        {"sse", {"clients", "refused", "slow_closes"}},
        {"longpolls", {"waiting", "refused", "abandoned"}},
        {"history",
         {"catchup_reads", "recovered", "lost", "resumes_recovered",
          "resumes_not_recovered"}},
        {"cluster",
         {"instances", "claims", "calls", "call_failures", "messages_bad"}},
        {"singletons", {"leases_held", "runs", "failovers", "periodic_ticks"}},
        {"http", {"requests"}},
    };
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
        for (size_t k = 0; k < 10 && groups[g].keys[k]; k++)
            TH_CHECK(stat(a, groups[g].group, groups[g].keys[k]) >= 0);
    TH_CHECK_EQ(stat(a, "tasks", "running"), 1);
    TH_CHECK_EQ(stat(a, "cluster", "instances"), 1);

    enum {
        N = 7
    };
    for (int i = 0; i < N; i++)
        TH_CHECK_EQ(call(app, "POST", "/events/st.x", NULL, "x", NULL, NULL),
                    202);
    TH_CHECK_RC(tb_dispatch(app, "other.x", "", 0, NULL), 0); /* no one */
    TH_CHECK(th_counter_wait_ge(&stats_got, 1000 + N, 5000));
    json_t *b = NULL;
    for (int64_t end = th_mono_ms() + 5000; th_mono_ms() < end; th_nap_ms(5)) {
        json_decref(b);
        if (!(b = get_stats(app, NULL)))
            break;
        if (stat(b, "events", "dispatched") ==
            stat(a, "events", "dispatched") + N + 1)
            break;
    }
    if (b) {
        TH_CHECK_EQ(stat(b, "events", "dispatched"),
                    stat(a, "events", "dispatched") + N + 1);
        TH_CHECK_EQ(stat(b, "events", "delivered"),
                    stat(a, "events", "delivered") + N);
        TH_CHECK_EQ(stat(b, "bus", "published"),
                    stat(b, "events", "dispatched"));
        TH_CHECK(stat(b, "http", "requests") >=
                 stat(a, "http", "requests") + N + 1);
        TH_CHECK(stat(b, NULL, "uptime_ms") >= stat(a, NULL, "uptime_ms"));
    }
    json_decref(a);
    json_decref(b);
    TH_CHECK_EQ(call(app, "POST", "/stats", NULL, "{}", NULL, NULL), 405);
    th_counter_destroy(&stats_got);
}

/* GET /stats?scope=cluster on the memory bus: this instance is the
 * cluster, so the sums are its own numbers, with "instances": 1 and no
 * one unreachable; what does not add up (clock, strings, a setting) is
 * left out. A scope that is neither local nor cluster: 400 bad_scope. */
TH_APP_TEST(test_stats_cluster, api_app(2, NULL), 30000)
{
    TH_CHECK_RC(th_add(app, "sleeper", 0, sleeper, NULL, NULL), 0);
    TH_CHECK(th_wait_state(app, "sleeper", TB_TASK_RUNNING, 5000));
    char *body = NULL;
    int st = call(app, "GET", "/stats", NULL, NULL, &body, NULL);
    free(body);
    TH_CHECK_EQ(st, 200);
    st = call(app, "GET", "/stats?scope=cluster", NULL, NULL, &body, NULL);
    json_error_t err;
    json_t *o = st == 200 && body ? json_loads(body, 0, &err) : NULL;
    TH_CHECKF(json_is_object(o), "scope=cluster: %d %s", st, body ? body : "");
    free(body);
    TH_CHECK_STR(json_string_value(json_object_get(o, "scope")), "cluster");
    TH_CHECK_EQ(stat(o, NULL, "instances"), 1);
    TH_CHECK(json_is_array(json_object_get(o, "unreachable")) &&
             json_array_size(json_object_get(o, "unreachable")) == 0);
    TH_CHECK_EQ(stat(o, NULL, "workers"), 2);
    TH_CHECK_EQ(stat(o, "tasks", "running"), 1);
    TH_CHECK(stat(o, "events", "delivered") >= 0);
    TH_CHECK(stat(o, "ws", "clients") == 0 && stat(o, "sse", "clients") == 0);
    TH_CHECK(stat(o, "http", "requests") >= 1);
    TH_CHECK_EQ(
        json_object_size(json_object_get(json_object_get(o, "bus"), "drops")),
        6);
    static const char *const absent[][2] = {
        {NULL, "instance"},         {NULL, "version"},
        {NULL, "uptime_ms"},        {"bus", "kind"},
        {"bus", "attempts"},        {"bus", "connected"},
        {"ws", "memory_max_bytes"}, {"cluster", "instances"},
    };
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++) {
        json_t *g = absent[i][0] ? json_object_get(o, absent[i][0]) : o;
        TH_CHECKF(!json_object_get(g, absent[i][1]), "%s.%s is there",
                  absent[i][0] ? absent[i][0] : "", absent[i][1]);
    }
    json_decref(o);
    static const char *const bad[] = {"scope=", "scope=x", "scope=LOCAL",
                                      "scope=cluster%20", "scope=%zz"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[64];
        snprintf(path, sizeof path, "/stats?%s", bad[i]);
        body = NULL;
        st = call(app, "GET", path, NULL, NULL, &body, NULL);
        TH_CHECKF(st == 400 && body && strstr(body, "\"bad_scope\""),
                  "%s: %d %s", path, st, body ? body : "");
        free(body);
    }
    body = NULL;
    st = call(app, "GET", "/stats?scope=local", NULL, NULL, &body, NULL);
    TH_CHECKF(st == 200 && body && strstr(body, "\"instance\""), "local: %d",
              st);
    free(body);
}

/* A bus whose last error is not UTF-8 (a server's reply may hold any
 * bytes): its status op is the real one's plus that, swapped in before the
 * app runs (the bus's threads read the ops without a lock). */
static const tb__bus_ops *real_ops;
static tb__bus_ops odd_ops;

static void odd_status(tb__bus *bus, tb_bus_info *out)
{
    real_ops->status(bus, out);
    snprintf(out->last_error, sizeof out->last_error, "refused: \xff\xfe!");
}

static tb_app *odd_error_app(void)
{
    tb_app *app = api_app(1, NULL);
    real_ops = app->bus->ops;
    odd_ops = *real_ops;
    odd_ops.status = odd_status;
    app->bus->ops = &odd_ops;
    return app;
}

/* GET /stats with a last_error that is not UTF-8: 200, the bytes shown as
 * U+FFFD (not a 500 for the whole object). */
TH_APP_TEST(test_stats_odd_error, odd_error_app(), 30000)
{
    json_t *o = get_stats(app, NULL);
    json_t *bus = json_object_get(o, "bus");
    TH_CHECK_STR(json_string_value(json_object_get(bus, "last_error")),
                 "refused: \xef\xbf\xbd\xef\xbf\xbd!");
    TH_CHECK_STR(json_string_value(json_object_get(bus, "kind")), "memory");
    json_decref(o);
}

/* Past TB__METRICS_SERIES series, requests count under route="other". */
TH_APP_TEST(test_overflow, api_app(1, NULL), 30000)
{
    static char routes[TB__METRICS_SERIES + 10][16];
    for (size_t i = 0; i < TB__METRICS_SERIES + 10; i++) {
        snprintf(routes[i], sizeof routes[i], "/r%zu", i);
        tb__metrics_count(app->metrics, routes[i], "GET", 200, 0.002);
    }
    char *text = get_metrics(app, NULL);
    if (!text)
        return;
    TH_CHECK(sample(text, "taskbus_http_requests_total{route=\"/r0\","
                          "method=\"GET\",status=\"200\"}") == 1);
    double other = sample(text, "taskbus_http_requests_total{route=\"other\","
                                "method=\"GET\",status=\"200\"}");
    TH_CHECKF(other >= 10, "other = %g", other);
    check_histogram(text, TB__METRICS_SERIES + 10);
    TH_CHECK(sample(text, "taskbus_http_request_duration_seconds_bucket{le="
                          "\"0.001\"}") == 0);
    TH_CHECK(sample(text, "taskbus_http_request_duration_seconds_bucket{le="
                          "\"0.005\"}") == TB__METRICS_SERIES + 10);
    free(text);
}

/* GET /metrics needs the API token like the other GETs. */
TH_APP_TEST(test_token, api_app(1, "s3cret"), 30000)
{
    TH_CHECK_EQ(call(app, "GET", "/metrics", NULL, NULL, NULL, NULL), 401);
    TH_CHECK_EQ(call(app, "GET", "/stats", NULL, NULL, NULL, NULL), 401);
    TH_CHECK_EQ(call(app, "GET", "/stats", "Bearer wrong", NULL, NULL, NULL),
                401);
    json_decref(get_stats(app, "Bearer s3cret"));
    char *text = get_metrics(app, "Bearer s3cret");
    if (text)
        TH_CHECK(sample(text, "taskbus_http_requests_total{route=\"/metrics\","
                              "method=\"GET\",status=\"401\"}") == 1);
    free(text);
}

static void test_escape(void **state)
{
    (void)state;
    char *s = tb__metrics_escape("a\\b\"c\nd");
    assert_non_null(s);
    assert_string_equal(s, "a\\\\b\\\"c\\nd");
    free(s);
    s = tb__metrics_escape("");
    assert_non_null(s);
    assert_string_equal(s, "");
    free(s);
    s = tb__metrics_escape("/events/{name}");
    assert_string_equal(s, "/events/{name}");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_stats_odd_error),
        cmocka_unit_test(test_stats_cluster),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
