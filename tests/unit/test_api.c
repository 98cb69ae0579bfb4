/* test_api.c - unit tests for service/api.c: the built-in JSON API driven
 * through tb__http_handle with a fake connection (no network), against a
 * running app; a wrapped bus stands in for a failing Redis. */
#include "harness.h"

#include <stdatomic.h>
#include <unistd.h>

#include <jansson.h>

#include "http.h"
#include "http_fake.h"
#include "internal.h"
#include "metrics.h"

/* One request; returns the status and sets *out to the parsed JSON body
 * (caller decrefs; NULL if the body is not JSON, which is a failed check).
 * Checks what every API answer has: one send, JSON content type, the
 * request id echoed. Any thread. */
static int call_auth(tb_app *app, const char *method, const char *path,
                     const char *query, const char *auth, const void *body,
                     size_t len, json_t **out, char *headers)
{
    fake_conn c;
    memset(&c, 0, sizeof c);
    c.request_id = "test-req-1";
    c.auth = auth;
    char *copy = malloc(len + 1);
    if (len)
        memcpy(copy, body, len);
    copy[len] = '\0';
    int status = fake_handle(&c, app, method, path, query, copy, len);
    free(copy);
    TH_CHECK_EQ(c.sends, 1);
    TH_CHECK_EQ(c.status, status);
    TH_CHECKF(strstr(c.headers, "Content-Type: application/json\r\n"),
              "%s %s: headers %s", method, path, c.headers);
    TH_CHECKF(strstr(c.headers, "X-Request-ID: test-req-1\r\n"),
              "%s %s: headers %s", method, path, c.headers);
    json_error_t jerr;
    json_t *j = c.body ? json_loadb(c.body, c.len, 0, &jerr) : NULL;
    TH_CHECKF(j != NULL, "%s %s: body is not JSON: %s", method, path,
              c.body ? c.body : "(none)");
    free(c.body);
    *out = j;
    if (headers)
        snprintf(headers, sizeof c.headers, "%s", c.headers);
    return status;
}

static int call_body(tb_app *app, const char *method, const char *path,
                     const char *query, const void *body, size_t len,
                     json_t **out)
{
    return call_auth(app, method, path, query, NULL, body, len, out, NULL);
}

static int call(tb_app *app, const char *method, const char *path,
                const char *query, json_t **out)
{
    return call_body(app, method, path, query, NULL, 0, out);
}

static const char *jget_str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static long long jget_int(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    TH_CHECKF(json_is_integer(v), "field %s is not an integer", key);
    return json_integer_value(v);
}

/* th_app_new(workers, 2000) with the API added. Main thread (cmocka). */
static tb_app *api_app(int workers)
{
    tb_app *app = th_app_new(workers, 2000);
    assert_rc(tb_app_add_api(app), 0);
    return app;
}

/* Checks an error answer: status and stable code; returns the body's
 * message (valid while j lives). */
#define CHECK_ERROR(j, st, want_status, want_code)                             \
    do {                                                                       \
        TH_CHECK_EQ((st), (want_status));                                      \
        TH_CHECK_STR(jget_str((j), "error"), (want_code));                     \
        TH_CHECK(json_is_string(json_object_get((j), "message")));             \
    } while (0)

/* A task in the listing by name, or NULL. Borrowed from j. */
static json_t *find_task(json_t *j, const char *name)
{
    json_t *arr = json_object_get(j, "tasks");
    size_t i;
    json_t *t;
    json_array_foreach(arr, i, t)
    {
        if (strcmp(jget_str(t, "name"), name) == 0)
            return t;
    }
    return NULL;
}

/* "2024-05-01T12:00:00.000001Z" */
static int is_rfc3339_us(json_t *v)
{
    const char *s = json_string_value(v);
    if (!s || strlen(s) != 27)
        return 0;
    return s[4] == '-' && s[10] == 'T' && s[19] == '.' && s[26] == 'Z';
}

/* ------------------------------------------------------------ dispatch */

#define MAX_EVENT 64

typedef struct dispatch_ctx {
    th_counter ready, got;
    char data[256];
    size_t len;
    char name[TB_EVENT_NAME_MAX + 1];
} dispatch_ctx;

static int subscriber(tb_task *self, void *arg)
{
    dispatch_ctx *d = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "api.hello", 0, &err);
    if (!TH_CHECK(sub != NULL))
        return 1;
    th_counter_add(&d->ready, 1);
    tb_event *ev = NULL;
    int rc = tb_sub_next(self, sub, 10000, &ev);
    if (!TH_CHECK_RC(rc, 0))
        return 1;
    size_t len;
    const void *data = tb_event_data(ev, &len);
    if (len < sizeof d->data) {
        memcpy(d->data, data, len);
        d->len = len;
    }
    snprintf(d->name, sizeof d->name, "%s", tb_event_name(ev));
    tb_event_unref(ev);
    th_counter_add(&d->got, 1);
    return 0;
}

static void post(tb_app *app, const char *name, const void *data, size_t len,
                 int want_status, const char *want_code)
{
    char path[512];
    snprintf(path, sizeof path, "/events/%s", name);
    json_t *j = NULL;
    int st = call_body(app, "POST", path, NULL, data, len, &j);
    if (want_code) {
        CHECK_ERROR(j, st, want_status, want_code);
    } else {
        TH_CHECK_EQ(st, want_status);
        TH_CHECK_STR(jget_str(j, "name"), name);
        const char *id = jget_str(j, "id");
        TH_CHECK(id && id[0]);
    }
    json_decref(j);
}

static void dispatch_body(tb_app *app, void *arg)
{
    dispatch_ctx *d = arg;
    uint64_t id;
    tb_task_opts o = th_opts("subscriber", TB_WORKER_ANY);
    TH_CHECK_RC(tb_task_add(app, subscriber, d, &o, &id), 0);
    TH_CHECK(th_counter_wait_ge(&d->ready, 1, 5000));

    /* 202, and the subscriber gets the exact bytes. */
    const char *json = "{\"a\": [1, 2.50], \"s\": \"\xc3\xa9\"}";
    json_t *j = NULL;
    int st = call_body(app, "POST", "/events/api.hello", NULL, json,
                       strlen(json), &j);
    TH_CHECK_EQ(st, 202);
    TH_CHECK_STR(jget_str(j, "name"), "api.hello");
    const char *eid = jget_str(j, "id");
    TH_CHECK(eid && strlen(eid) > 0 && strlen(eid) < TB_EVENT_ID_MAX);
    json_decref(j);
    TH_CHECK(th_counter_wait_ge(&d->got, 1, 5000));
    TH_CHECK_STR(d->name, "api.hello");
    TH_CHECK_EQ(d->len, strlen(json));
    TH_CHECK(memcmp(d->data, json, strlen(json)) == 0);

    /* Names: an empty segment, 9 segments, a bad character, 200 bytes is
     * fine, 201 is not. */
    post(app, "a..b", "x", 1, 400, "bad_name");
    post(app, "a.b.c.d.e.f.g.h.i", "x", 1, 400, "bad_name");
    post(app, "a%20b", "x", 1, 400, "bad_name");
    char longname[TB_EVENT_NAME_MAX + 2];
    memset(longname, 'n', sizeof longname);
    longname[TB_EVENT_NAME_MAX] = '\0';
    post(app, longname, "x", 1, 202, NULL);
    longname[TB_EVENT_NAME_MAX] = 'n';
    longname[TB_EVENT_NAME_MAX + 1] = '\0';
    post(app, longname, "x", 1, 400, "bad_name");

    /* Data: not UTF-8 (a lone continuation byte, a truncated sequence). */
    post(app, "api.data", "ok\x80", 3, 400, "bad_data");
    post(app, "api.data", "\xc3", 1, 400, "bad_data");
    /* Empty is fine; exactly max_event_size is fine, one more is not. */
    post(app, "api.data", "", 0, 202, NULL);
    char big[MAX_EVENT + 1];
    memset(big, 'x', sizeof big);
    post(app, "api.data", big, MAX_EVENT, 202, NULL);
    post(app, "api.data", big, MAX_EVENT + 1, 413, "too_large");

    /* POST to dispatch, GET to wait; nothing else. */
    st = call(app, "PUT", "/events/api.hello", NULL, &j);
    CHECK_ERROR(j, st, 405, "method_not_allowed");
    json_decref(j);
}

static void test_dispatch(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 2;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.core.max_event_size = MAX_EVENT;
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(tb_app_add_api(app), 0);
    assert_rc(tb_app_add_api(app), TB_EEXIST);
    dispatch_ctx d;
    memset(&d, 0, sizeof d);
    th_counter_init(&d.ready);
    th_counter_init(&d.got);
    assert_rc(th_run_thread(app, dispatch_body, &d, 30000), 0);
    th_assert_clean();

    /* After stop: the bus is down for good. */
    json_t *j = NULL;
    int st = call_body(app, "POST", "/events/api.late", NULL, "x", 1, &j);
    CHECK_ERROR(j, st, 503, "shutting_down");
    json_decref(j);
    th_assert_clean();
    tb_app_free(app);
    th_counter_destroy(&d.ready);
    th_counter_destroy(&d.got);
}

/* ------------------------------------------------------------ bus errors */

enum {
    FB_PASS,
    FB_DOWN,
    FB_FULL,
    FB_HOLD
};

/* Wraps the app's memory bus: publish fails or is never confirmed as mode
 * says; status reports a lost link while FB_DOWN. */
typedef struct fake_bus {
    tb__bus bus;
    tb__bus *inner;
    atomic_int mode;
    pthread_mutex_t mu;
    tb__publish_cb held_cb; /* FB_HOLD: confirmed at stop */
    void *held_ud;
} fake_bus;

static int fb_start(tb__bus *b)
{
    fake_bus *f = (fake_bus *)b;
    return f->inner->ops->start(f->inner);
}

static void fb_release(fake_bus *f)
{
    pthread_mutex_lock(&f->mu);
    tb__publish_cb cb = f->held_cb;
    void *ud = f->held_ud;
    f->held_cb = NULL;
    pthread_mutex_unlock(&f->mu);
    if (cb)
        cb(TB_ETIMEDOUT, ud);
}

static int fb_publish(tb__bus *b, tb_event *ev, tb__publish_cb cb, void *ud)
{
    fake_bus *f = (fake_bus *)b;
    switch (atomic_load(&f->mode)) {
    case FB_DOWN:
        return TB_ENOTCONN;
    case FB_FULL:
        return TB_ENOSPC;
    case FB_HOLD:
        fb_release(f);
        pthread_mutex_lock(&f->mu);
        f->held_cb = cb;
        f->held_ud = ud;
        pthread_mutex_unlock(&f->mu);
        return 0;
    default:
        return f->inner->ops->publish(f->inner, ev, cb, ud);
    }
}

/* All or none, as a bus must: down or full refuses the first event and so
 * the lot; held, each event's callback waits as publish's (the one before
 * given up). n is never 0 here (the core does not publish none). */
static int fb_publish_many(tb__bus *b, tb_event *const *evs, size_t n,
                           tb__publish_cb cb, void *const *uds)
{
    fake_bus *f = (fake_bus *)b;
    int mode = atomic_load(&f->mode);
    if (mode == FB_PASS)
        return f->inner->ops->publish_many(f->inner, evs, n, cb, uds);
    int rc = fb_publish(b, evs[0], cb, uds ? uds[0] : NULL);
    for (size_t i = 1; rc == 0 && i < n; i++)
        fb_publish(b, evs[i], cb, uds ? uds[i] : NULL);
    return rc;
}

static void fb_status(tb__bus *b, tb_bus_info *out)
{
    fake_bus *f = (fake_bus *)b;
    f->inner->ops->status(f->inner, out);
    if (atomic_load(&f->mode) == FB_DOWN) {
        out->state = TB_BUS_RECONNECTING;
        snprintf(out->last_error, sizeof out->last_error, "connection refused");
    }
}

static void fb_stop(tb__bus *b)
{
    fake_bus *f = (fake_bus *)b;
    fb_release(f);
    f->inner->ops->stop(f->inner);
}

static void fb_free(tb__bus *b)
{
    fake_bus *f = (fake_bus *)b;
    f->inner->ops->free(f->inner);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static const tb__bus_ops fake_bus_ops = {
    .name = "fake",
    .start = fb_start,
    .publish = fb_publish,
    .status = fb_status,
    .stop = fb_stop,
    .free = fb_free,
    .publish_many = fb_publish_many,
};

static fake_bus *wrap_bus(tb_app *app)
{
    fake_bus *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->bus.ops = &fake_bus_ops;
    f->bus.app = app;
    f->inner = app->bus;
    atomic_init(&f->mode, FB_PASS);
    pthread_mutex_init(&f->mu, NULL);
    app->bus = &f->bus;
    return f;
}

static void bus_errors_body(tb_app *app, void *arg)
{
    fake_bus *f = arg;
    json_t *j = NULL;

    post(app, "api.ok", "1", 1, 202, NULL);

    atomic_store(&f->mode, FB_DOWN);
    int st = call_body(app, "POST", "/events/api.x", NULL, "1", 1, &j);
    CHECK_ERROR(j, st, 503, "bus_down");
    const char *msg = jget_str(j, "message");
    TH_CHECKF(msg && strstr(msg, "connection refused"), "message: %s",
              msg ? msg : "(none)");
    json_decref(j);
    /* Not ready while the bus is down; the reason names it. */
    st = call(app, "GET", "/readyz", NULL, &j);
    CHECK_ERROR(j, st, 503, "not_ready");
    TH_CHECK_STR(jget_str(j, "message"),
                 "bus reconnecting: connection refused");
    TH_CHECK_STR(jget_str(json_object_get(j, "bus"), "state"), "reconnecting");
    json_decref(j);

    atomic_store(&f->mode, FB_FULL);
    post(app, "api.x", "1", 1, 503, "busy");

    /* Never confirmed: 504 after redis_command_timeout_ms (100). */
    atomic_store(&f->mode, FB_HOLD);
    int64_t t0 = th_mono_ms();
    post(app, "api.x", "1", 1, 504, "publish_timeout");
    int64_t dt = th_mono_ms() - t0;
    TH_CHECKF(dt >= 90 && dt < 3000, "publish_timeout after %lld ms",
              (long long)dt);

    atomic_store(&f->mode, FB_PASS);
    st = call(app, "GET", "/readyz", NULL, &j);
    TH_CHECK_EQ(st, 200);
    json_decref(j);
}

/* A batch whose event the fake bus holds: its answer (504 once
 * released). */
static void *held_batch(void *arg)
{
    tb_app *app = arg;
    json_t *j = NULL;
    static const char body[] = "[{\"name\":\"api.held\"}]";
    intptr_t st =
        call_body(app, "POST", "/events", NULL, body, sizeof body - 1, &j);
    json_decref(j);
    return (void *)st;
}

/* core.batch_max_concurrent 1: while one batch waits for the bus, a second
 * is 503 busy naming the setting; once the first is answered, one passes. */
static void batch_concurrency_body(tb_app *app, void *arg)
{
    fake_bus *f = arg;
    static const char body[] = "[{\"name\":\"api.b\"}]";
    atomic_store(&f->mode, FB_HOLD);
    pthread_t t;
    TH_CHECK_EQ(pthread_create(&t, NULL, held_batch, app), 0);
    for (int i = 0; i < 2000; i++) { /* until the bus holds its event */
        pthread_mutex_lock(&f->mu);
        int held = f->held_cb != NULL;
        pthread_mutex_unlock(&f->mu);
        if (held)
            break;
        usleep(1000);
    }
    atomic_store(&f->mode, FB_PASS);
    json_t *j = NULL;
    int st = call_body(app, "POST", "/events", NULL, body, sizeof body - 1, &j);
    const char *msg;
    CHECK_ERROR(j, st, 503, "busy");
    msg = jget_str(j, "message");
    TH_CHECKF(msg && strstr(msg, "core.batch_max_concurrent"), "message: %s",
              msg ? msg : "(none)");
    json_decref(j);
    fb_release(f);
    void *held_st;
    pthread_join(t, &held_st);
    TH_CHECK_EQ((int)(intptr_t)held_st, 504);
    st = call_body(app, "POST", "/events", NULL, body, sizeof body - 1, &j);
    TH_CHECK_EQ(st, 202);
    json_decref(j);
}

static void test_batch_concurrency(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    cfg.core.batch_max_concurrent = 1;
    cfg.redis.command_timeout_ms = 20000; /* the held batch waits for us */
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(tb_app_add_api(app), 0);
    fake_bus *f = wrap_bus(app);
    assert_rc(th_run_thread(app, batch_concurrency_body, f, 30000), 0);
    th_assert_clean();
    tb_app_free(app);
}

static void test_bus_errors(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.redis.command_timeout_ms = 100;
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(tb_app_add_api(app), 0);
    fake_bus *f = wrap_bus(app);

    /* Before run: not ready (starting), not live. */
    json_t *j = NULL;
    int st = call(app, "GET", "/readyz", NULL, &j);
    CHECK_ERROR(j, st, 503, "not_ready");
    TH_CHECK_STR(jget_str(j, "message"), "starting");
    json_decref(j);
    st = call(app, "GET", "/healthz", NULL, &j);
    CHECK_ERROR(j, st, 503, "not_running");
    json_decref(j);
    th_assert_clean();

    assert_rc(th_run_thread(app, bus_errors_body, f, 30000), 0);
    th_assert_clean();

    st = call(app, "GET", "/readyz", NULL, &j);
    CHECK_ERROR(j, st, 503, "not_ready");
    TH_CHECK_STR(jget_str(j, "message"), "stopping");
    json_decref(j);
    th_assert_clean();
    tb_app_free(app);
}

/* ------------------------------------------------------------ tasks */

typedef struct tasks_ctx {
    atomic_int release; /* lets "stubborn" end */
    uint64_t sleeper_id;
} tasks_ctx;

static int sleeper(tb_task *self, void *arg)
{
    (void)arg;
    while (tb_sleep(self, 60000) == 0)
        ;
    return 0;
}

static int quick(tb_task *self, void *arg)
{
    (void)self;
    (void)arg;
    return 0;
}

static int failer(tb_task *self, void *arg)
{
    (void)arg;
    tb_task_fail(self, "boom");
    return 1;
}

/* Ignores cancellation until released. */
static int stubborn(tb_task *self, void *arg)
{
    tasks_ctx *c = arg;
    while (!atomic_load(&c->release))
        tb_sleep(self, 5);
    return 0;
}

static void delete_timeout(tb_app *app, const char *name, const char *timeout,
                           int want_status)
{
    char path[256], query[128];
    snprintf(path, sizeof path, "/tasks/%s", name);
    snprintf(query, sizeof query, "timeout=%s", timeout);
    json_t *j = NULL;
    int st = call(app, "DELETE", path, query, &j);
    if (want_status == 400) {
        CHECK_ERROR(j, st, 400, "bad_timeout");
    } else {
        TH_CHECKF(st == want_status, "DELETE %s?%s: %d, want %d", path, query,
                  st, want_status);
    }
    json_decref(j);
}

static void tasks_body(tb_app *app, void *arg)
{
    tasks_ctx *c = arg;
    json_t *j = NULL, *t;
    int st;
    tb_task_opts o = th_opts("sleeper", 0);
    o.kind = "sleepy";
    TH_CHECK_RC(tb_task_add(app, sleeper, NULL, &o, &c->sleeper_id), 0);
    TH_CHECK_RC(th_add(app, "quick", 1, quick, NULL, NULL), 0);
    TH_CHECK_RC(th_add(app, "failer", 0, failer, NULL, NULL), 0);
    TH_CHECK_RC(th_add(app, "stubborn", 1, stubborn, c, NULL), 0);
    TH_CHECK(th_wait_state(app, "sleeper", TB_TASK_RUNNING, 5000));
    TH_CHECK(th_wait_state(app, "quick", TB_TASK_DONE, 5000));
    TH_CHECK(th_wait_state(app, "failer", TB_TASK_FAILED, 5000));
    TH_CHECK(th_wait_state(app, "stubborn", TB_TASK_RUNNING, 5000));

    /* The whole list (an unknown parameter is ignored). */
    st = call(app, "GET", "/tasks", "foo=bar", &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_EQ(json_array_size(json_object_get(j, "tasks")), 6);
    t = find_task(j, "quick");
    TH_CHECK(t != NULL);
    if (t) {
        TH_CHECK_STR(jget_str(t, "state"), "done");
        TH_CHECK_EQ(jget_int(t, "result"), 0);
        TH_CHECK_EQ(jget_int(t, "worker"), 1);
        TH_CHECK(json_is_null(json_object_get(t, "error")));
        TH_CHECK(json_is_false(json_object_get(t, "cancel_requested")));
        TH_CHECK(is_rfc3339_us(json_object_get(t, "created")));
        TH_CHECK(is_rfc3339_us(json_object_get(t, "started")));
        TH_CHECK(is_rfc3339_us(json_object_get(t, "ended")));
        TH_CHECK(jget_int(t, "id") > 0);
    }
    t = find_task(j, "sleeper");
    TH_CHECK(t != NULL);
    if (t) {
        TH_CHECK_STR(jget_str(t, "state"), "running");
        TH_CHECK_STR(jget_str(t, "kind"), "sleepy");
        TH_CHECK_EQ(jget_int(t, "id"), c->sleeper_id);
        TH_CHECK(json_is_null(json_object_get(t, "ended")));
    }
    json_decref(j);

    /* Filters. */
    st = call(app, "GET", "/tasks", "state=failed", &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_EQ(json_array_size(json_object_get(j, "tasks")), 1);
    t = find_task(j, "failer");
    TH_CHECK(t != NULL);
    if (t) {
        TH_CHECK_STR(jget_str(t, "error"), "boom");
        TH_CHECK_EQ(jget_int(t, "result"), 1);
    }
    json_decref(j);
    st = call(app, "GET", "/tasks", "state=running", &j);
    TH_CHECK_EQ(st, 200);
    /* sleeper, stubborn, and the two replicas of "replicated" */
    TH_CHECK_EQ(json_array_size(json_object_get(j, "tasks")), 4);
    TH_CHECK(find_task(j, "quick") == NULL);
    json_decref(j);
    st = call(app, "GET", "/tasks", "state=cancelled", &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_EQ(json_array_size(json_object_get(j, "tasks")), 0);
    json_decref(j);
    const char *bad_states[] = {"state=bogus", "state=", "state=Done",
                                "state=%zz", "state=runningx"};
    for (size_t i = 0; i < sizeof bad_states / sizeof *bad_states; i++) {
        st = call(app, "GET", "/tasks", bad_states[i], &j);
        CHECK_ERROR(j, st, 400, "bad_state");
        json_decref(j);
    }

    /* One task; replicas of a task added before run. */
    st = call(app, "GET", "/tasks/sleeper", NULL, &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_STR(jget_str(j, "name"), "sleeper");
    TH_CHECK_STR(jget_str(j, "state"), "running");
    TH_CHECK_EQ(jget_int(j, "replicas"), 1);
    TH_CHECK_EQ(jget_int(j, "worker"), 0);
    json_decref(j);
    st = call(app, "GET", "/tasks/replicated", NULL, &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_EQ(jget_int(j, "replicas"), 2);
    json_decref(j);
    st = call(app, "GET", "/tasks/nope", NULL, &j);
    CHECK_ERROR(j, st, 404, "not_found");
    json_decref(j);

    /* Cancel a sleeping task: 200 with its final state. */
    st = call(app, "DELETE", "/tasks/sleeper", NULL, &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_STR(jget_str(j, "state"), "cancelled");
    TH_CHECK(json_is_true(json_object_get(j, "cancel_requested")));
    TH_CHECK(is_rfc3339_us(json_object_get(j, "ended")));
    json_decref(j);
    st = call(app, "DELETE", "/tasks/nope", NULL, &j);
    CHECK_ERROR(j, st, 404, "not_found");
    json_decref(j);

    /* A task that ignores the cancel: 504 after ~0.2 s, body has it. */
    int64_t t0 = th_mono_ms();
    st = call(app, "DELETE", "/tasks/stubborn", "timeout=0.2", &j);
    int64_t dt = th_mono_ms() - t0;
    CHECK_ERROR(j, st, 504, "cancel_timeout");
    TH_CHECKF(dt >= 180 && dt < 2000, "cancel_timeout after %lld ms",
              (long long)dt);
    t = json_object_get(j, "task");
    TH_CHECK_STR(jget_str(t, "name"), "stubborn");
    TH_CHECK_STR(jget_str(t, "state"), "running");
    TH_CHECK(json_is_true(json_object_get(t, "cancel_requested")));
    json_decref(j);

    /* Timeouts: bad ones are refused before anything is cancelled. */
    const char *bad[] = {"abc",
                         "-1",
                         "3601",
                         "3600.001",
                         "",
                         "1e3",
                         ".5",
                         "1.",
                         "inf",
                         " 1",
                         "0x10",
                         "1,5",
                         "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        delete_timeout(app, "quick", bad[i], 400);
    /* Good edges: 0 and 3600 (on a finished and an unknown task). */
    delete_timeout(app, "quick", "0", 200);
    delete_timeout(app, "nope", "3600", 404);
    delete_timeout(app, "nope", "3600.000", 404);
    st = call(app, "GET", "/tasks/quick", NULL, &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_STR(jget_str(j, "state"), "done"); /* already finished */
    json_decref(j);

    /* Purge: quick, failer, sleeper are finished; stubborn is not. */
    st = call(app, "POST", "/tasks/purge", NULL, &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_EQ(jget_int(j, "purged"), 3);
    json_decref(j);
    st = call(app, "POST", "/tasks/purge", NULL, &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_EQ(jget_int(j, "purged"), 0);
    json_decref(j);
    st = call(app, "GET", "/tasks/quick", NULL, &j);
    CHECK_ERROR(j, st, 404, "not_found");
    json_decref(j);

    atomic_store(&c->release, 1);
    TH_CHECK(th_wait_state(app, "stubborn", TB_TASK_CANCELLED, 5000));
}

static void test_tasks(void **state)
{
    (void)state;
    tb_app *app = api_app(2);
    tb_task_opts o = th_opts("replicated", TB_WORKER_ANY);
    assert_rc(tb_task_add(app, sleeper, NULL, &o, NULL), 0);
    tasks_ctx c;
    memset(&c, 0, sizeof c);
    assert_rc(th_run_thread(app, tasks_body, &c, 30000), 0);
    th_assert_clean();
    tb_app_free(app);
}

/* DELETE /tasks/{name} answers with the task it cancelled, even when a new
 * task takes the name the moment the old one ends (it answered with the
 * new, running task in 6 of 20 tries). Two racing threads re-add "job" in
 * a tight loop; each DELETE must report the id it found before. */
typedef struct race_ctx {
    atomic_int stop;
    atomic_long added;
} race_ctx;

static void *racer(void *arg)
{
    race_ctx *r = ((void **)arg)[1];
    tb_app *app = ((void **)arg)[0];
    while (!atomic_load(&r->stop)) {
        tb_task_opts o = th_opts("job", TB_WORKER_ANY);
        if (tb_task_add(app, sleeper, NULL, &o, NULL) == 0)
            atomic_fetch_add(&r->added, 1);
    }
    return NULL;
}

TH_APP_TEST(test_cancel_race, api_app(2), 30000)
{
    race_ctx r;
    atomic_init(&r.stop, 0);
    atomic_init(&r.added, 0);
    void *args[2] = {app, &r};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        TH_CHECK(pthread_create(&th[i], NULL, racer, args) == 0);
    for (int i = 0; i < 50; i++) {
        tb_task_info before;
        TH_CHECK(th_wait_state(app, "job", TB_TASK_RUNNING, 3000));
        TH_CHECK(tb_task_get(app, "job", &before) == 1);
        json_t *j = NULL;
        int st = call(app, "DELETE", "/tasks/job", NULL, &j);
        TH_CHECK_EQ(st, 200);
        TH_CHECKF(jget_int(j, "id") == (long long)before.id,
                  "try %d: DELETE answered task %lld, it cancelled %llu", i,
                  jget_int(j, "id"), (unsigned long long)before.id);
        TH_CHECK_STR(jget_str(j, "state"), "cancelled");
        json_decref(j);
        tb_task_purge(app);
    }
    atomic_store(&r.stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    TH_CHECK(atomic_load(&r.added) >= 50);
}

/* ------------------------------------------------------------ health */

/* Blocks its worker's loop (what a buggy task calling sleep() does). */
static int blocker(tb_task *self, void *arg)
{
    (void)self;
    th_counter_add(arg, 1);
    th_nap_ms(1500);
    return 0;
}

TH_APP_TEST(test_health, api_app(3), 30000)
{
    json_t *j = NULL;
    int64_t t0 = th_mono_ms();
    int st = call(app, "GET", "/healthz", NULL, &j);
    int64_t dt = th_mono_ms() - t0;
    TH_CHECK_EQ(st, 200);
    /* Idle loops answer at once, not at the deadline. */
    TH_CHECKF(dt < 500, "healthz took %lld ms", (long long)dt);
    TH_CHECK_STR(jget_str(j, "status"), "ok");
    TH_CHECK_EQ(jget_int(j, "workers"), 3);
    json_decref(j);

    st = call(app, "GET", "/readyz", NULL, &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_STR(jget_str(j, "status"), "ready");
    json_t *bus = json_object_get(j, "bus");
    TH_CHECK_STR(jget_str(bus, "name"), "memory");
    TH_CHECK_STR(jget_str(bus, "state"), "connected");
    TH_CHECK(json_is_null(json_object_get(bus, "last_error")));
    json_decref(j);

    /* Worker 1 stuck: 503 naming it, after the 1 s deadline. Its late
     * answer must find the probe still alive (ASan checks). */
    th_counter blocked = TH_COUNTER_INITIALIZER;
    TH_CHECK_RC(th_add(app, "blocker", 1, blocker, &blocked, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&blocked, 1, 5000));
    t0 = th_mono_ms();
    st = call(app, "GET", "/healthz", NULL, &j);
    dt = th_mono_ms() - t0;
    CHECK_ERROR(j, st, 503, "worker_stuck");
    TH_CHECKF(dt >= 950 && dt < 3000, "worker_stuck after %lld ms",
              (long long)dt);
    json_t *stuck = json_object_get(j, "stuck");
    TH_CHECK_EQ(json_array_size(stuck), 1);
    TH_CHECK_EQ(json_integer_value(json_array_get(stuck, 0)), 1);
    TH_CHECK_EQ(jget_int(j, "workers"), 3);
    TH_CHECK_STR(jget_str(j, "message"),
                 "worker(s) 1 did not answer within 1000 ms");
    json_decref(j);

    /* Once the loop is free again, healthy. */
    TH_CHECK(th_wait_state(app, "blocker", TB_TASK_DONE, 5000));
    st = call(app, "GET", "/healthz", NULL, &j);
    TH_CHECK_EQ(st, 200);
    json_decref(j);

    th_app_stopped(app);
    /* After the stop: not running. */
    st = call(app, "GET", "/healthz", NULL, &j);
    CHECK_ERROR(j, st, 503, "not_running");
    json_decref(j);
}

/* The front's /healthz (healthz_start, through tb__http_start): done is
 * told when every worker has answered; a stuck worker leaves it untold
 * and the caller's timeout answers 503 naming it; a client gone before
 * then is not answered, and the late probe answers find the work alive
 * until release (ASan checks). */
static void health_done(void *ud)
{
    th_counter_add(ud, 1);
}

/* Starts GET /healthz as the front does; returns tb__http_start's rc. */
static int health_start(tb_app *app, fake_conn *c, tb_http_req *req,
                        th_counter *done, tb__http_work **work)
{
    static const tb__http_conn_ops ops = {fake_header, fake_send, fake_gone,
                                          NULL, NULL};
    memset(c, 0, sizeof *c);
    c->request_id = "front-1";
    tb__http_in in = {
        .ops = &ops, .conn = c, .method = "GET", .path = "/healthz"};
    return tb__http_start(app, &in, req, health_done, done, work);
}

TH_APP_TEST(test_health_front, api_app(3), 30000)
{
    fake_conn c;
    tb_http_req req;
    tb__http_work *work;
    th_counter done = TH_COUNTER_INITIALIZER;
    json_error_t jerr;

    /* Every worker answers: done is told, the answer is healthz's. */
    TH_CHECK_EQ(health_start(app, &c, &req, &done, &work), 0);
    TH_CHECK(work != NULL);
    TH_CHECK_EQ(work->timeout_ms, 1000);
    TH_CHECK(th_counter_wait_ge(&done, 1, 5000));
    TH_CHECK_EQ(tb__http_finish(&req, work, 0), 200);
    json_t *j = json_loads(c.body, 0, &jerr);
    TH_CHECK_STR(jget_str(j, "status"), "ok");
    TH_CHECK_EQ(jget_int(j, "workers"), 3);
    TH_CHECKF(strstr(c.headers, "X-Request-ID: front-1\r\n"), "headers %s",
              c.headers);
    json_decref(j);
    free(c.body);

    /* Worker 1 stuck: not told; the caller's timeout answers 503 naming
     * it, and done is never told after (its late answer comes). */
    th_counter blocked = TH_COUNTER_INITIALIZER;
    TH_CHECK_RC(th_add(app, "blocker", 1, blocker, &blocked, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&blocked, 1, 5000));
    TH_CHECK_EQ(health_start(app, &c, &req, &done, &work), 0);
    TH_CHECK(!th_counter_wait_ge(&done, 2, 300));
    TH_CHECK_EQ(tb__http_finish(&req, work, TB_ETIMEDOUT), 503);
    j = json_loads(c.body, 0, &jerr);
    CHECK_ERROR(j, c.status, 503, "worker_stuck");
    json_t *stuck = json_object_get(j, "stuck");
    TH_CHECK_EQ(json_array_size(stuck), 1);
    TH_CHECK_EQ(json_integer_value(json_array_get(stuck, 0)), 1);
    json_decref(j);
    free(c.body);
    TH_CHECK(th_wait_state(app, "blocker", TB_TASK_DONE, 5000));
    th_nap_ms(50);
    TH_CHECK_EQ(th_counter_get(&done), 1);
    tb_task_purge(app);

    /* The client gone while worker 1 is stuck: nothing sent, and done is
     * told at once (a probe holds nothing of the client's: the caller
     * frees its place now, not when the stuck worker answers), never
     * again; release lets go, and the worker's late answer finds the
     * probe alive. */
    TH_CHECK_RC(th_add(app, "blocker", 1, blocker, &blocked, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&blocked, 2, 5000));
    TH_CHECK_EQ(health_start(app, &c, &req, &done, &work), 0);
    tb__http_finish(&req, work, TB__HTTP_GONE);
    TH_CHECK_EQ(c.sends, 0);
    TH_CHECK_EQ(th_counter_get(&done), 2);
    work->release(work);
    TH_CHECK(th_wait_state(app, "blocker", TB_TASK_DONE, 5000));
    th_nap_ms(50);
    TH_CHECK_EQ(th_counter_get(&done), 2);
    tb_task_purge(app);

    /* Stopped: 503 not_running at once, nothing left running. */
    th_app_stopped(app);
    TH_CHECK_EQ(health_start(app, &c, &req, &done, &work), 503);
    TH_CHECK(work == NULL);
    j = json_loads(c.body, 0, &jerr);
    CHECK_ERROR(j, c.status, 503, "not_running");
    json_decref(j);
    free(c.body);
}

/* ------------------------------------------------------------ long poll */

typedef struct poll_ctx {
    tb_app *app;
    const char *path, *query, *request_id;
    int status;
    char *body;
    size_t len;
    int64_t ms; /* how long the request took */
    pthread_t thread;
    fake_conn conn; /* set conn.gone to make the client leave */
} poll_ctx;

/* GET path?query on the calling thread; fills status, body, ms. A client
 * that left is sent nothing. */
static void *poll_run(void *arg)
{
    poll_ctx *p = arg;
    fake_conn *c = &p->conn;
    c->request_id = p->request_id;
    int64_t t0 = th_mono_ms();
    p->status = fake_handle(c, p->app, "GET", p->path, p->query, NULL, 0);
    p->ms = th_mono_ms() - t0;
    if (p->status == TB__HTTP_STATUS_GONE) {
        TH_CHECK_EQ(c->sends, 0);
    } else {
        TH_CHECK_EQ(c->sends, 1);
        TH_CHECK_EQ(c->status, p->status);
    }
    p->body = c->body;
    p->len = c->len;
    return NULL;
}

/* Log lines, captured (the long-poll tests wait for its "waiting" line;
 * the token tests look for the token). */
static struct {
    pthread_mutex_t mu;
    char text[1 << 16];
    size_t len;
} logs = {PTHREAD_MUTEX_INITIALIZER, "", 0};

static void capture_log(tb_log_level level, const char *msg, void *ud)
{
    (void)level;
    (void)ud;
    pthread_mutex_lock(&logs.mu);
    size_t n = strlen(msg);
    if (logs.len + n + 2 < sizeof logs.text) {
        memcpy(logs.text + logs.len, msg, n);
        logs.len += n;
        logs.text[logs.len++] = '\n';
        logs.text[logs.len] = '\0';
    }
    pthread_mutex_unlock(&logs.mu);
}

static int logs_have(const char *needle)
{
    pthread_mutex_lock(&logs.mu);
    int found = strstr(logs.text, needle) != NULL;
    pthread_mutex_unlock(&logs.mu);
    return found;
}

static void logs_start(void)
{
    pthread_mutex_lock(&logs.mu);
    logs.len = 0;
    logs.text[0] = '\0';
    pthread_mutex_unlock(&logs.mu);
    tb_log_set_level(TB_LOG_DEBUG);
    tb_log_set_handler(capture_log, NULL);
}

static void logs_stop(void)
{
    tb_log_set_handler(NULL, NULL);
    tb_log_set_level(TB_LOG_INFO);
}

/* Starts a long poll on its own thread and returns once its task has
 * subscribed (the handler logs "waiting ... in task http.wait:<id>"). */
static void poll_start(poll_ctx *p, tb_app *app, const char *path,
                       const char *query, const char *request_id)
{
    memset(p, 0, sizeof *p);
    p->app = app;
    p->path = path;
    p->query = query;
    p->request_id = request_id;
    TH_CHECK(pthread_create(&p->thread, NULL, poll_run, p) == 0);
    char needle[128];
    snprintf(needle, sizeof needle, "in task http.wait:%s", request_id);
    int64_t t0 = th_mono_ms();
    while (!logs_have(needle) && th_mono_ms() - t0 < 5000)
        th_nap_ms(5);
    TH_CHECKF(logs_have(needle), "poll %s never subscribed", request_id);
}

/* Joins the poll; returns its parsed JSON body (NULL for none). */
static json_t *poll_join(poll_ctx *p)
{
    pthread_join(p->thread, NULL);
    json_error_t jerr;
    json_t *j = p->len ? json_loadb(p->body, p->len, 0, &jerr) : NULL;
    TH_CHECKF(!p->len || j, "poll body is not JSON: %s", p->body);
    free(p->body);
    return j;
}

static void poll_body(tb_app *app, void *arg)
{
    (void)arg;
    poll_ctx p;
    json_t *j;

    /* JSON data comes back as its value; the pattern's <param> and '*'
     * match. */
    poll_start(&p, app, "/events/poll.<kind>.*", "timeout=10", "poll-1");
    const char *data = "{\"n\": 1, \"list\": [true, null]}";
    TH_CHECK_RC(
        tb_dispatch(app, "poll.order.created", data, strlen(data), NULL), 0);
    j = poll_join(&p);
    TH_CHECK_EQ(p.status, 200);
    TH_CHECKF(p.ms < 5000, "poll took %lld ms", (long long)p.ms);
    TH_CHECK_STR(jget_str(j, "name"), "poll.order.created");
    json_t *want = json_loads(data, 0, NULL);
    TH_CHECK(json_equal(json_object_get(j, "data"), want));
    json_decref(want);
    TH_CHECK(jget_str(j, "id") && jget_str(j, "id")[0]);
    /* The envelope's ts: CLOCK_REALTIME µs, as over websockets and Redis. */
    TH_CHECK(json_is_integer(json_object_get(j, "ts")) &&
             json_integer_value(json_object_get(j, "ts")) > 1700000000000000);
    TH_CHECK(jget_str(j, "origin") && strchr(jget_str(j, "origin"), '/'));
    json_decref(j);

    /* Text (and JSON-looking text that does not parse) comes back as a
     * string; a non-matching event first is skipped. */
    poll_start(&p, app, "/events/poll.text", NULL, "poll-2");
    TH_CHECK_RC(tb_dispatch(app, "poll.other", "x", 1, NULL), 0);
    TH_CHECK_RC(tb_dispatch(app, "poll.text", "{not json", 9, NULL), 0);
    j = poll_join(&p);
    TH_CHECK_EQ(p.status, 200);
    TH_CHECK_STR(jget_str(j, "name"), "poll.text");
    TH_CHECK_STR(jget_str(j, "data"), "{not json");
    json_decref(j);
    poll_start(&p, app, "/events/poll.text", NULL, "poll-3");
    TH_CHECK_RC(tb_dispatch(app, "poll.text", "hello", 5, NULL), 0);
    j = poll_join(&p);
    TH_CHECK_EQ(p.status, 200);
    TH_CHECK_STR(jget_str(j, "data"), "hello");
    json_decref(j);

    /* Timeout: 204 with no body, after ~0.3 s. */
    poll_start(&p, app, "/events/poll.never", "timeout=0.3", "poll-4");
    j = poll_join(&p);
    TH_CHECK_EQ(p.status, 204);
    TH_CHECK(j == NULL);
    TH_CHECKF(p.ms >= 280 && p.ms < 1300, "204 after %lld ms", (long long)p.ms);
    /* timeout=0: at once. */
    memset(&p, 0, sizeof p);
    p.app = app;
    p.path = "/events/poll.never";
    p.query = "timeout=0";
    p.request_id = "poll-5";
    poll_run(&p); /* may end before it logs "waiting" */
    TH_CHECK_EQ(p.status, 204);
    TH_CHECK_EQ(p.len, 0);
    free(p.body);

    /* The wait tasks are ephemeral: once they end they leave the listing,
     * so a busy server does not pile up one entry per request. */
    int st = 0;
    json_t *t = NULL;
    for (int i = 0; i < 200; i++) {
        st = call(app, "GET", "/tasks", NULL, &j);
        t = find_task(j, "http.wait:poll-1");
        json_decref(j);
        if (!t)
            break;
        th_nap_ms(5);
    }
    TH_CHECK_EQ(st, 200);
    TH_CHECK(t == NULL);

    /* Bad patterns and timeouts. */
    const char *bad_patterns[] = {"/events/a..b", "/events/a.<b",
                                  "/events/a%20b", "/events/a.b.c.d.e.f.g.h.i"};
    for (size_t i = 0; i < sizeof bad_patterns / sizeof *bad_patterns; i++) {
        st = call(app, "GET", bad_patterns[i], NULL, &j);
        CHECK_ERROR(j, st, 400, "bad_pattern");
        json_decref(j);
    }
    const char *bad_timeouts[] = {"timeout=301", "timeout=300.5", "timeout=-1",
                                  "timeout=abc", "timeout="};
    for (size_t i = 0; i < sizeof bad_timeouts / sizeof *bad_timeouts; i++) {
        st = call(app, "GET", "/events/poll.x", bad_timeouts[i], &j);
        CHECK_ERROR(j, st, 400, "bad_timeout");
        json_decref(j);
    }

    /* The app stopping meanwhile: 503 shutting_down, well before the
     * timeout. */
    poll_start(&p, app, "/events/poll.never", "timeout=60", "poll-6");
    tb_app_stop(app);
    j = poll_join(&p);
    CHECK_ERROR(j, p.status, 503, "shutting_down");
    TH_CHECKF(p.ms < 5000, "503 after %lld ms", (long long)p.ms);
    json_decref(j);
}

/* A bus whose history reads fail with fail_rc: its ops are the real
 * ones but history, swapped in before the app runs (the bus's ops are read
 * by its threads without a lock once it runs). */
static const tb__bus_ops *real_ops;
static tb__bus_ops failing_ops;
static atomic_int fail_rc;

static int failing_history(tb__bus *bus, uint64_t after, size_t count,
                           void (*cb)(int, const tb__hist_page *, void *),
                           void *ud)
{
    (void)bus, (void)after, (void)count, (void)cb, (void)ud;
    return atomic_load(&fail_rc);
}

static tb_app *failing_history_app(void)
{
    tb_app *app = api_app(2);
    real_ops = app->bus->ops;
    failing_ops = *real_ops;
    failing_ops.history = failing_history;
    app->bus->ops = &failing_ops;
    return app;
}

/* A history read that fails answers 503 bus_unavailable when the bus
 * could not answer, on GET /history and on a long poll with since alike
 * (not 204 as if the poll had timed out, nor 504 or 500). */
TH_APP_TEST(test_history_read_errors, failing_history_app(), 30000)
{
    const int rcs[] = {TB_ETIMEDOUT, TB_ENOTCONN, TB_EAGAIN};
    for (size_t i = 0; i < sizeof rcs / sizeof *rcs; i++) {
        atomic_store(&fail_rc, rcs[i]);
        json_t *j = NULL;
        int st = call(app, "GET", "/history", "events=hx.*", &j);
        CHECK_ERROR(j, st, 503, "bus_unavailable");
        json_decref(j);
        j = NULL;
        st = call(app, "GET", "/events/hx.a", "timeout=5&since=0123abcd-0", &j);
        CHECK_ERROR(j, st, 503, "bus_unavailable");
        json_decref(j);
    }
    atomic_store(&fail_rc, TB_EIO);
    json_t *j = NULL;
    int st = call(app, "GET", "/history", "events=hx.*", &j);
    CHECK_ERROR(j, st, 500, "internal");
    json_decref(j);
}

static void test_long_poll(void **state)
{
    (void)state;
    tb_app *app = th_app_new(2, 2000);
    logs_start(); /* after th_app_new, which quiets the logs */
    assert_rc(tb_app_add_api(app), 0);
    assert_rc(th_run_thread(app, poll_body, NULL, 30000), 0);
    logs_stop();
    th_assert_clean();
    tb_app_free(app);
}

/* The number in text's line "<series> <n>", or -1. */
static long long metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtoll(p + n + 1, NULL, 10);
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    return -1;
}

static void poll_limits_body(tb_app *app, void *arg)
{
    (void)arg;
    poll_ctx a, b;
    json_t *j;
    char headers[1024];
    size_t len;

    /* http_longpoll_max 2: two wait, the third is refused at once. */
    poll_start(&a, app, "/events/lim.a", "timeout=20", "lim-1");
    poll_start(&b, app, "/events/lim.b", "timeout=20", "lim-2");
    int st = call_auth(app, "GET", "/events/lim.c", "timeout=20", NULL, NULL, 0,
                       &j, headers);
    CHECK_ERROR(j, st, 503, "too_many_waits");
    TH_CHECKF(strstr(headers, "Retry-After: 1\r\n"), "headers %s", headers);
    json_decref(j);

    /* The first one's client leaves: its wait ends within a slice or
     * two, nothing is sent, its task is gone, and its place is free. */
    int64_t t0 = th_mono_ms();
    atomic_store(&a.conn.gone, 1);
    j = poll_join(&a);
    TH_CHECK_EQ(a.status, TB__HTTP_STATUS_GONE);
    TH_CHECK(j == NULL);
    TH_CHECKF(th_mono_ms() - t0 < 1000,
              "the wait ended %lld ms after its "
              "client left",
              (long long)(th_mono_ms() - t0));
    TH_CHECK(logs_have("(request lim-1): the client closed the connection"));
    st = call(app, "GET", "/tasks", NULL, &j);
    TH_CHECK_EQ(st, 200);
    TH_CHECK(find_task(j, "http.wait:lim-1") == NULL);
    TH_CHECK(find_task(j, "http.wait:lim-2") != NULL);
    json_decref(j);
    char *text = tb__metrics_render(app, &len);
    TH_CHECK(text != NULL);
    TH_CHECK_EQ(metric(text, "taskbus_http_longpolls"), 1);
    TH_CHECK_EQ(metric(text, "taskbus_http_longpolls_refused_total"), 1);
    TH_CHECK_EQ(metric(text, "taskbus_http_longpolls_abandoned_total"), 1);
    free(text);
    poll_start(&a, app, "/events/lim.a", "timeout=0.2", "lim-3");
    j = poll_join(&a);
    TH_CHECK_EQ(a.status, 204);

    /* The one still waiting ends with the app. */
    tb_app_stop(app);
    j = poll_join(&b);
    CHECK_ERROR(j, b.status, 503, "shutting_down");
    json_decref(j);
}

static void test_long_poll_limits(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 2;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.http.threads = 4;
    cfg.http.longpoll_max = 2;
    tb_app *app = th_app_new_cfg(&cfg);
    logs_start(); /* after th_app_new, which quiets the logs */
    assert_rc(tb_app_add_api(app), 0);
    assert_rc(th_run_thread(app, poll_limits_body, NULL, 30000), 0);
    logs_stop();
    th_assert_clean();
    tb_app_free(app);
}

/* ------------------------------------------------------------ token */

#define TOKEN "s3cret-T0ken_xyz"

static void token_body(tb_app *app, void *arg)
{
    (void)arg;
    json_t *j;
    char headers[1024];
    /* Without, with a wrong token, with another scheme: 401. */
    const char *bad_auth[] = {
        NULL,           "Bearer nope", "Bearer " TOKEN "x", "Bearer s3cret",
        "Basic " TOKEN, TOKEN};
    for (size_t i = 0; i < sizeof bad_auth / sizeof *bad_auth; i++) {
        int st = call_auth(app, "POST", "/events/tok.x", NULL, bad_auth[i], "1",
                           1, &j, headers);
        CHECK_ERROR(j, st, 401, "unauthorized");
        TH_CHECKF(strstr(headers, "WWW-Authenticate: Bearer\r\n"),
                  "headers: %s", headers);
        json_decref(j);
        st = call_auth(app, "GET", "/tasks", NULL, bad_auth[i], NULL, 0, &j,
                       NULL);
        CHECK_ERROR(j, st, 401, "unauthorized");
        json_decref(j);
    }
    int st =
        call_auth(app, "GET", "/tasks", "token=wrong", NULL, NULL, 0, &j, NULL);
    CHECK_ERROR(j, st, 401, "unauthorized");
    json_decref(j);
    st = call_auth(app, "GET", "/events/tok.x", "timeout=0", NULL, NULL, 0, &j,
                   NULL);
    CHECK_ERROR(j, st, 401, "unauthorized");
    json_decref(j);

    /* With the header (any case of the scheme) or the query: served. */
    st = call_auth(app, "POST", "/events/tok.x", NULL, "Bearer " TOKEN, "1", 1,
                   &j, NULL);
    TH_CHECK_EQ(st, 202);
    json_decref(j);
    st = call_auth(app, "GET", "/tasks", NULL, "bearer " TOKEN, NULL, 0, &j,
                   NULL);
    TH_CHECK_EQ(st, 200);
    json_decref(j);
    st = call_auth(app, "POST", "/events/tok.x", "token=" TOKEN, NULL, "1", 1,
                   &j, NULL);
    TH_CHECK_EQ(st, 202);
    json_decref(j);
    st = call_auth(app, "GET", "/tasks", "state=running&token=" TOKEN, NULL,
                   NULL, 0, &j, NULL);
    TH_CHECK_EQ(st, 200);
    json_decref(j);

    /* The probes stay open. */
    st = call(app, "GET", "/healthz", NULL, &j);
    TH_CHECK_EQ(st, 200);
    json_decref(j);
    st = call(app, "GET", "/readyz", NULL, &j);
    TH_CHECK_EQ(st, 200);
    json_decref(j);
}

static void test_token(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    cfg.core.graceful_timeout_ms = 2000;
    char token[] = TOKEN; /* the app keeps its own copy */
    cfg.http.api_token = token;
    tb_app *app = th_app_new_cfg(&cfg);
    memset(token, 'z', sizeof token - 1);
    logs_start(); /* after th_app_new, which quiets the logs */
    assert_rc(tb_app_add_api(app), 0);
    assert_rc(th_run_thread(app, token_body, NULL, 30000), 0);
    logs_stop();
    th_assert_clean();
    /* 401s were logged, the token never. */
    TH_CHECK(logs_have("401 unauthorized"));
    TH_CHECK(!logs_have(TOKEN));
    TH_CHECK(!logs_have("s3cret"));
    th_assert_clean();
    tb_app_free(app);

    /* Config: blanks or controls in a token are refused; "" is none. */
    int err = 0;
    cfg.http.api_token = "has blank";
    TH_CHECK(tb_app_new(&cfg, &err) == NULL);
    TH_CHECK_RC(err, TB_EINVAL);
    cfg.http.api_token = "";
    app = tb_app_new(&cfg, &err);
    TH_CHECK(app != NULL);
    TH_CHECK(tb_app_get_config(app)->http.api_token == NULL);
    tb_app_free(app);
    th_assert_clean();
}

/* An embedder's own route: answers 200 {"mine":true}. */
static int mine_route(tb_http_req *req, void *ud)
{
    (void)ud;
    return tb_http_respond_json(req, 200, "{\"mine\":true}");
}

/* A websocket upgrade through the fake connection, as the adapter would
 * hand it over; returns the status the core answered with (the refusals
 * tested here never accept). */
static int fake_upgrade(tb_app *app, const char *path, const char *auth,
                        json_t **out, char *headers)
{
    static const tb__http_conn_ops ops = {fake_header, fake_send, fake_gone,
                                          NULL, NULL};
    fake_conn c;
    memset(&c, 0, sizeof c);
    c.request_id = "test-req-1";
    c.auth = auth;
    tb__http_in in = {.ops = &ops, .conn = &c, .method = "GET", .path = path};
    tb_ws *ws = tb__http_handle_upgrade(app, &in);
    TH_CHECKF(ws == NULL, "upgrade to %s accepted", path);
    TH_CHECK_EQ(c.sends, 1);
    json_error_t jerr;
    *out = c.body ? json_loadb(c.body, c.len, 0, &jerr) : NULL;
    if (headers)
        memcpy(headers, c.headers, sizeof c.headers);
    free(c.body);
    return c.status;
}

/* No token configured: 404, 405 and 400 straight from the router. */
static void no_token_body(tb_app *app, void *arg)
{
    (void)arg;
    json_t *j;
    int st = call(app, "GET", "/nope", NULL, &j);
    CHECK_ERROR(j, st, 404, "not_found");
    json_decref(j);
    st = call(app, "PUT", "/tasks", NULL, &j);
    CHECK_ERROR(j, st, 405, "method_not_allowed");
    json_decref(j);
    st = call(app, "GET", "/tasks/%zz", NULL, &j);
    CHECK_ERROR(j, st, 400, "bad_path");
    json_decref(j);
}

static void auth_order_body(tb_app *app, void *arg)
{
    (void)arg;
    json_t *j;
    char headers[1024];
    /* Without a token, with a wrong one, with another scheme: unknown
     * paths, wrong methods (also on an open path), a malformed path and an
     * embedder's route all answer 401, never 404/405/400. */
    const char *bad_auth[] = {NULL, "Bearer nope", "Basic " TOKEN};
    const struct {
        const char *method, *path;
        int status; /* with the token */
        const char *code;
    } cases[] = {
        {"GET", "/nope", 404, "not_found"},
        {"HEAD", "/nope", 404, "not_found"},
        {"GET", "/tasks/a/b/c", 404, "not_found"},
        {"PUT", "/tasks", 405, "method_not_allowed"},
        {"DELETE", "/events/x", 405, "method_not_allowed"},
        {"POST", "/healthz", 405, "method_not_allowed"},
        {"BREW", "/tasks", 405, "method_not_allowed"},
        {"GET", "/tasks/%zz", 400, "bad_path"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        for (size_t i = 0; i < sizeof bad_auth / sizeof *bad_auth; i++) {
            int st = call_auth(app, cases[k].method, cases[k].path, NULL,
                               bad_auth[i], NULL, 0, &j, headers);
            TH_CHECKF(st == 401, "%s %s (auth %s): %d, want 401",
                      cases[k].method, cases[k].path,
                      bad_auth[i] ? bad_auth[i] : "none", st);
            CHECK_ERROR(j, st, 401, "unauthorized");
            TH_CHECKF(strstr(headers, "WWW-Authenticate: Bearer\r\n"),
                      "headers: %s", headers);
            TH_CHECKF(!strstr(headers, "Allow:"), "headers: %s", headers);
            json_decref(j);
        }
        /* ?token= wrong: 401 too. */
        int st = call_auth(app, cases[k].method, cases[k].path, "token=no",
                           NULL, NULL, 0, &j, NULL);
        CHECK_ERROR(j, st, 401, "unauthorized");
        json_decref(j);
        /* With the token: what the router says. */
        st = call_auth(app, cases[k].method, cases[k].path, NULL,
                       "Bearer " TOKEN, NULL, 0, &j, headers);
        TH_CHECKF(st == cases[k].status, "%s %s with the token: %d, want %d",
                  cases[k].method, cases[k].path, st, cases[k].status);
        CHECK_ERROR(j, st, cases[k].status, cases[k].code);
        if (st == 405)
            TH_CHECKF(strstr(headers, "Allow: "), "headers: %s", headers);
        json_decref(j);
        st = call_auth(app, cases[k].method, cases[k].path, "token=" TOKEN,
                       NULL, NULL, 0, &j, NULL);
        TH_CHECK_EQ(st, cases[k].status);
        json_decref(j);
    }

    /* An embedder's route stays behind the token. */
    int st = call_auth(app, "GET", "/mine", NULL, NULL, NULL, 0, &j, NULL);
    CHECK_ERROR(j, st, 401, "unauthorized");
    json_decref(j);
    st = call_auth(app, "GET", "/mine", NULL, "Bearer " TOKEN, NULL, 0, &j,
                   NULL);
    TH_CHECK_EQ(st, 200);
    json_decref(j);

    /* The probes stay open, GET and HEAD, with or without a token. */
    const char *open_auth[] = {NULL, "Bearer nope", "Bearer " TOKEN};
    for (size_t i = 0; i < sizeof open_auth / sizeof *open_auth; i++) {
        st = call_auth(app, "GET", "/healthz", NULL, open_auth[i], NULL, 0, &j,
                       NULL);
        TH_CHECK_EQ(st, 200);
        json_decref(j);
        st = call_auth(app, "HEAD", "/readyz", NULL, open_auth[i], NULL, 0, &j,
                       NULL);
        TH_CHECK_EQ(st, 200);
        json_decref(j);
    }

    /* Websocket upgrades: an unknown path is 401 without the token and 404
     * with it; an open path that is no websocket endpoint is 404. */
    for (size_t i = 0; i < sizeof bad_auth / sizeof *bad_auth; i++) {
        st = fake_upgrade(app, "/nope", bad_auth[i], &j, headers);
        CHECK_ERROR(j, st, 401, "unauthorized");
        TH_CHECKF(strstr(headers, "WWW-Authenticate: Bearer\r\n"),
                  "headers: %s", headers);
        json_decref(j);
    }
    st = fake_upgrade(app, "/nope", "Bearer " TOKEN, &j, NULL);
    CHECK_ERROR(j, st, 404, "not_found");
    json_decref(j);
    st = fake_upgrade(app, "/healthz", NULL, &j, NULL);
    CHECK_ERROR(j, st, 404, "not_found");
    json_decref(j);
}

/* Issue 14.3: with a token, the token is checked before routing. */
static void test_auth_before_routing(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.http.api_token = TOKEN;
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(tb_app_add_api(app), 0);
    assert_rc(tb_app_add_route(app, "GET", "/mine", mine_route, NULL), 0);
    assert_rc(th_run_thread(app, auth_order_body, NULL, 30000), 0);
    th_assert_clean();
    tb_app_free(app);

    /* Without a token: the router answers as before. */
    app = api_app(1);
    assert_rc(th_run_thread(app, no_token_body, NULL, 30000), 0);
    th_assert_clean();
    tb_app_free(app);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dispatch),
        cmocka_unit_test(test_bus_errors),
        cmocka_unit_test(test_batch_concurrency),
        cmocka_unit_test(test_tasks),
        cmocka_unit_test(test_health),
        cmocka_unit_test(test_health_front),
        cmocka_unit_test(test_long_poll),
        cmocka_unit_test(test_history_read_errors),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_auth_before_routing),
        cmocka_unit_test(test_long_poll_limits),
        cmocka_unit_test(test_cancel_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
