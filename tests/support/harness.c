/* harness.c - the shared support of the C tests that run an app: checks,
 * counters, clocks, the registry helpers and th_run_*() with its watchdog
 * (see harness.h for the contracts). */
#include "harness.h"

#include "internal.h"

/* ------------------------------------------------------------ clocks */

int64_t th_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t th_mono_ms(void)
{
    return th_mono_us() / 1000;
}

int64_t th_real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t th_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void th_nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static unsigned th_rand(unsigned *seed)
{
    *seed = *seed * 1103515245u + 12345u;
    return (*seed >> 16) & 0x7fff;
}

char *th_name_near(const char *pattern, unsigned *seed, char *out, size_t n)
{
    static const char *lit[] = {"a", "b", "c", "d", "e", "x-1", "y_2", "q"};
    const char *segs[TB_EVENT_SEGMENTS_MAX + 3];
    char own[TB_EVENT_SEGMENTS_MAX + 3][16];
    int k = 0;
    for (const char *p = pattern; *p && k < TB_EVENT_SEGMENTS_MAX;) {
        const char *e = strchr(p, '.');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if ((len == 1 && *p == '*') || *p == '<') {
            segs[k++] = lit[th_rand(seed) % 8];
        } else if (len == 1 && *p == '>') {
            for (unsigned m = 1 + th_rand(seed) % 3;
                 m && k < TB_EVENT_SEGMENTS_MAX; m--)
                segs[k++] = lit[th_rand(seed) % 8];
        } else {
            snprintf(own[k], sizeof own[k], "%.*s", (int)len, p);
            segs[k] = own[k];
            k++;
        }
        p += len + (e != NULL);
    }
    switch (th_rand(seed) % 6) {
    case 0: /* a segment changed */
        segs[th_rand(seed) % (unsigned)k] = "zz";
        break;
    case 1: /* one more */
        if (k < TB_EVENT_SEGMENTS_MAX)
            segs[k++] = "zz";
        break;
    case 2: /* one fewer */
        if (k > 1)
            k--;
        break;
    default:
        break;
    }
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < k && used < n; i++)
        used += (size_t)snprintf(out + used, n - used, "%s%s", i ? "." : "",
                                 segs[i]);
    return out;
}

const char *const th_prefix_patterns[] = {
    "*",
    "a.*",
    "a.>",
    "a.b.*",
    "a.b.>",
    "a.<x>.c",
    "a.b.c.*",
    "b.*.c",
    "b.c.*",
    "c.d.e.*",
    "*.b",
    "x-1.*.*",
    "x-1.y_2",
    "c.<p>",
    "a.b.c.d.>",
    "a.b.c.d.e.<p>",
    "d.<p>.e.>",
    "a.b.c.d.e.f.*",
    "a.b.c.d.e.f.g.*",
    "a.b.c.d.e.f.g.>",
    "q.>",
    "*.*.*.*.*.*.*.*",
    ">",
    "a.b.c",
};
const int th_prefix_npatterns =
    (int)(sizeof th_prefix_patterns / sizeof *th_prefix_patterns);

long th_seq(void)
{
    static atomic_long seq;
    return atomic_fetch_add(&seq, 1) + 1;
}

/* CLOCK_REALTIME now + ms, for pthread_cond_timedwait. */
static struct timespec deadline_in(int ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    return dl;
}

/* ------------------------------------------------------------ checks */

static struct {
    pthread_mutex_t mu;
    int count;
    char first[768];
} failures = {PTHREAD_MUTEX_INITIALIZER, 0, ""};

void th_failures_reset(void)
{
    pthread_mutex_lock(&failures.mu);
    failures.count = 0;
    failures.first[0] = '\0';
    pthread_mutex_unlock(&failures.mu);
}

int th_failures_count(void)
{
    pthread_mutex_lock(&failures.mu);
    int n = failures.count;
    pthread_mutex_unlock(&failures.mu);
    return n;
}

int th__failures_first(char *buf, size_t bufsz)
{
    pthread_mutex_lock(&failures.mu);
    int n = failures.count;
    if (bufsz)
        snprintf(buf, bufsz, "%s", failures.first);
    pthread_mutex_unlock(&failures.mu);
    return n;
}

int th__check(int ok, const char *file, int line, const char *fmt, ...)
{
    if (ok)
        return 1;
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&failures.mu);
    if (failures.count++ == 0)
        snprintf(failures.first, sizeof failures.first, "%s:%d: %s", file, line,
                 msg);
    if (failures.count <= 20)
        fprintf(stderr, "CHECK FAILED %s:%d: %s\n", file, line, msg);
    pthread_mutex_unlock(&failures.mu);
    return 0;
}

int th__check_eq(long long a, long long b, const char *ea, const char *eb,
                 const char *file, int line)
{
    return th__check(a == b, file, line, "%s == %s (%lld != %lld)", ea, eb, a,
                     b);
}

int th__check_rc(long long a, long long b, const char *ea, const char *eb,
                 const char *file, int line)
{
    return th__check(a == b, file, line, "%s == %s (%s (%lld) != %s (%lld))",
                     ea, eb, a < 0 ? tb_err_name((int)a) : "-", a,
                     b < 0 ? tb_err_name((int)b) : "-", b);
}

int th__check_str(const char *a, const char *b, const char *ea, const char *eb,
                  const char *file, int line)
{
    int ok = a && b && strcmp(a, b) == 0;
    return th__check(ok, file, line, "%s == %s (\"%s\" != \"%s\")", ea, eb,
                     a ? a : "(null)", b ? b : "(null)");
}

/* ------------------------------------------------------------ counters */

/* Every counter's value is read and written under this one lock, and every
 * change wakes every waiter, who looks at its own counter again: a zeroed
 * counter needs no init, and tests have few waiters at a time. */
static pthread_mutex_t counters_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t counters_cv = PTHREAD_COND_INITIALIZER;

void th_counter_init(th_counter *c)
{
    pthread_mutex_lock(&counters_mu);
    c->v = 0;
    pthread_mutex_unlock(&counters_mu);
}

void th_counter_destroy(th_counter *c)
{
    (void)c;
}

long th_counter_add(th_counter *c, long n)
{
    pthread_mutex_lock(&counters_mu);
    long v = (c->v += n);
    pthread_cond_broadcast(&counters_cv);
    pthread_mutex_unlock(&counters_mu);
    return v;
}

long th_counter_get(th_counter *c)
{
    pthread_mutex_lock(&counters_mu);
    long v = c->v;
    pthread_mutex_unlock(&counters_mu);
    return v;
}

int th_counter_wait_ge(th_counter *c, long target, int timeout_ms)
{
    struct timespec dl = deadline_in(timeout_ms);
    pthread_mutex_lock(&counters_mu);
    int rc = 0;
    while (c->v < target && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&counters_cv, &counters_mu, &dl);
    int ok = c->v >= target;
    pthread_mutex_unlock(&counters_mu);
    return ok;
}

int th_task_wait_ge(tb_task *self, th_counter *c, long target, int timeout_ms)
{
    int64_t end = th_mono_ms() + timeout_ms;
    while (th_counter_get(c) < target) {
        if (th_mono_ms() >= end || tb_sleep(self, 1) != 0)
            return th_counter_get(c) >= target;
    }
    return 1;
}

/* ------------------------------------------------------------ registry */

tb_task_opts th_opts(const char *name, int worker)
{
    tb_task_opts o;
    memset(&o, 0, sizeof o);
    o.name = name;
    o.worker = worker;
    return o;
}

int th_add(tb_app *app, const char *name, int worker, tb_task_fn fn, void *arg,
           uint64_t *id)
{
    tb_task_opts o = th_opts(name, worker);
    return tb_task_add(app, fn, arg, &o, id);
}

int th_wait_state(tb_app *app, const char *name, tb_task_state state,
                  int timeout_ms)
{
    int64_t end = th_mono_ms() + timeout_ms;
    for (;;) {
        tb_task_info info;
        if (tb_task_get(app, name, &info) > 0 && info.state == state)
            return 1;
        if (th_mono_ms() >= end)
            return 0;
        th_nap_ms(1);
    }
}

int th_find_id(tb_app *app, uint64_t id, tb_task_info *out)
{
    tb_task_info *list = NULL;
    size_t n = 0;
    int found = 0;
    if (tb_task_list(app, &list, &n) < 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (list[i].id == id) {
            if (out)
                *out = list[i];
            found = 1;
            break;
        }
    }
    free(list);
    return found;
}

int th_count_named(tb_app *app, const char *name, int state, int *states_ok,
                   unsigned *worker_mask)
{
    tb_task_info *list = NULL;
    size_t n = 0;
    if (tb_task_list(app, &list, &n) < 0)
        return -1;
    int count = 0, ok = 1;
    unsigned mask = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].name, name) != 0)
            continue;
        count++;
        if (state >= 0 && (int)list[i].state != state)
            ok = 0;
        if (list[i].worker >= 0 && list[i].worker < 32)
            mask |= 1u << list[i].worker;
    }
    free(list);
    if (states_ok)
        *states_ok = ok;
    if (worker_mask)
        *worker_mask = mask;
    return count;
}

/* ------------------------------------------------------------ apps */

tb_app *th_app_new_cfg(const tb_app_config *cfg)
{
    th_failures_reset();
    tb_log_set_level(TB_LOG_WARN);
    int err = 1;
    tb_app *app = tb_app_new(cfg, &err);
    if (!app)
        fail_msg("tb_app_new failed: %s", tb_err_name(err));
    return app;
}

tb_app *th_app_new(int workers, int graceful_ms)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = workers;
    cfg.core.graceful_timeout_ms = graceful_ms;
    cfg.core.handle_signals = 0;
    return th_app_new_cfg(&cfg);
}

/* ------------------------------------------------------------ running */

/* One th_run_*() call: lives on its caller's stack for the whole run. */
typedef struct run {
    tb_app *app;
    th_thread_body thread_body;
    th_task_body task_body;
    int task_worker;
    void *ctx;
    int timeout_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready;    /* MAIN_READY ran */
    int returned; /* tb_app_run returned ... */
    int rc;       /* ... this */
    int done;     /* ... and the driver thread was joined */
} run;

/* The run under way (tests run one at a time), for th_app_stopped. Set
 * before the driver thread starts, cleared after it was joined. */
static run *current_run;

static void run_set(run *r, int *field)
{
    pthread_mutex_lock(&r->mu);
    *field = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static int driver_task(tb_task *self, void *arg)
{
    run *r = arg;
    int rc = r->task_body(self, r->ctx);
    tb_app_stop(tb_task_app(self));
    return rc;
}

static int on_ready(tb_app *app, int worker, void *arg)
{
    (void)worker;
    run *r = arg;
    if (r->task_body) {
        tb_task_opts o = th_opts(TH_DRIVER_NAME, r->task_worker);
        o.kind = "harness";
        int rc = tb_task_add(app, driver_task, r, &o, NULL);
        if (!TH_CHECK_RC(rc, 0))
            tb_app_stop(app);
    }
    run_set(r, &r->ready);
    return 0;
}

static void *driver_thread(void *arg)
{
    run *r = arg;
    pthread_mutex_lock(&r->mu);
    while (!r->ready && !r->returned)
        pthread_cond_wait(&r->cv, &r->mu);
    int go = r->ready;
    pthread_mutex_unlock(&r->mu);
    if (go)
        r->thread_body(r->app, r->ctx);
    tb_app_stop(r->app);
    return NULL;
}

/* Waits until r->done or the deadline; returns r->done. */
static int wait_done(run *r, const struct timespec *dl)
{
    pthread_mutex_lock(&r->mu);
    int rc = 0;
    while (!r->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&r->cv, &r->mu, dl);
    int done = r->done;
    pthread_mutex_unlock(&r->mu);
    return done;
}

static void *watchdog(void *arg)
{
    run *r = arg;
    struct timespec dl = deadline_in(r->timeout_ms);
    if (wait_done(r, &dl))
        return NULL;
    TH_CHECKF(0, "watchdog: the test did not finish within %d ms; stopping",
              r->timeout_ms);
    tb_app_stop(r->app);
    /* Stop has the graceful timeout plus some slack to return. */
    const tb_app_config *cfg = tb_app_get_config(r->app);
    int grace = (cfg ? cfg->core.graceful_timeout_ms : 15000) + 10000;
    dl = deadline_in(grace);
    if (!wait_done(r, &dl)) {
        fprintf(stderr, "watchdog: %s after tb_app_stop + %d ms; aborting\n",
                r->returned ? "the driver thread did not end"
                            : "tb_app_run did not return",
                grace);
        abort();
    }
    return NULL;
}

static int run_app(tb_app *app, th_thread_body thread_body,
                   th_task_body task_body, int task_worker, void *ctx,
                   int timeout_ms)
{
    run r;
    memset(&r, 0, sizeof r);
    r.app = app;
    r.thread_body = thread_body;
    r.task_body = task_body;
    r.task_worker = task_worker;
    r.ctx = ctx;
    r.timeout_ms = timeout_ms;
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    assert_rc(tb_app_add_listener(app, TB_MAIN_READY, on_ready, &r), 0);
    current_run = &r;

    pthread_t driver, dog;
    if (thread_body)
        assert_int_equal(pthread_create(&driver, NULL, driver_thread, &r), 0);
    assert_int_equal(pthread_create(&dog, NULL, watchdog, &r), 0);

    int rc = tb_app_run(app);

    pthread_mutex_lock(&r.mu);
    r.rc = rc;
    pthread_mutex_unlock(&r.mu);
    run_set(&r, &r.returned);
    if (thread_body)
        pthread_join(driver, NULL);
    run_set(&r, &r.done);
    pthread_join(dog, NULL);
    current_run = NULL;
    pthread_cond_destroy(&r.cv);
    pthread_mutex_destroy(&r.mu);
    return rc;
}

int th_run_thread(tb_app *app, th_thread_body body, void *ctx, int timeout_ms)
{
    return run_app(app, body, NULL, 0, ctx, timeout_ms);
}

int th_run_task(tb_app *app, int worker, th_task_body body, void *ctx,
                int timeout_ms)
{
    return run_app(app, NULL, body, worker, ctx, timeout_ms);
}

int th_run_plain(tb_app *app, int timeout_ms)
{
    return run_app(app, NULL, NULL, 0, NULL, timeout_ms);
}

int th_app_stopped(tb_app *app)
{
    run *r = current_run;
    if (!TH_CHECKF(r && r->app == app && r->thread_body &&
                       tb_task_current() == NULL,
                   "th_app_stopped: not called from th_run_thread's body"))
        return TB_EINVAL;
    tb_app_stop(app);
    pthread_mutex_lock(&r->mu);
    while (!r->returned)
        pthread_cond_wait(&r->cv, &r->mu); /* the watchdog bounds it */
    int rc = r->rc;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* ------------------------------------------------------------ app tests */

void th_app_test(tb_app *app, th_thread_body thread, th_task_body task,
                 int worker, int timeout_ms)
{
    int rc = thread ? th_run_thread(app, thread, app, timeout_ms)
                    : th_run_task(app, worker, task, app, timeout_ms);
    tb_app_free(app);
    th_assert_clean();
    assert_rc(rc, 0);
}

/* ------------------------------------------------------------ bus store */

tb_app *th_memory_app(void)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    tb_app *app = tb_app_new(&cfg, NULL);
    assert_non_null(app);
    assert_string_equal(app->bus->ops->name, "memory");
    assert_non_null(app->bus->ops->kv);
    return app;
}

void th_kv_on_done(int status, void *ud)
{
    th_kv_seen *s = ud;
    s->calls++;
    s->status = status;
}

void th_kv_on_list(int status, const tb__kv_rec *recs, size_t n, size_t dropped,
                   void *ud)
{
    th_kv_seen *s = ud;
    s->calls++;
    s->status = status;
    s->n = n;
    s->dropped = dropped;
    for (size_t i = 0; i < n && i < 8; i++) {
        assert_int_equal(strlen(recs[i].id), recs[i].idlen);
        assert_int_equal(strlen(recs[i].value), recs[i].len);
        snprintf(s->ids[i], sizeof s->ids[i], "%s", recs[i].id);
        snprintf(s->values[i], sizeof s->values[i], "%s", recs[i].value);
    }
}
