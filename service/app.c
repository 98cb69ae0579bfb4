/* app.c - the app: configuration, listeners, and the run/stop lifecycle. */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "http.h"
#include "json.h"
#include "cluster.h"
#include "client_token.h"
#include "instances.h"
#include "singleton.h"
#include "internal.h"
#include "ws.h"
#include "kinds.h"
#include "metrics.h"

int64_t tb__now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t tb__mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void tb__cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

void tb__deadline_ts(struct timespec *ts, int timeout_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* ---------------------------------------------------------------- new/free */

static pthread_once_t libevent_once = PTHREAD_ONCE_INIT;
static int libevent_threads_rc;

static void libevent_init(void)
{
    /* Other threads call event_active() on worker bases. */
    libevent_threads_rc = evthread_use_pthreads();
}

/* *s, a string of the caller's config, replaced by a copy (NULL when
 * empty). 0 on ENOMEM, with *s NULL. */
static int copy_string_from(const char **s, const char *from)
{
    *s = from && from[0] ? strdup(from) : NULL;
    return !from || !from[0] || *s;
}

/* Frees a copied secret, not leaving it in freed memory. */
static void wipe_string(const char *s)
{
    if (s) {
        char *t = (char *)(uintptr_t)s;
        explicit_bzero(t, strlen(t));
        free(t);
    }
}

/* tb_app_new is adapters/compose.c's: it makes the app here, then hands
 * it its adapters (tb__app_use_bus, tb__app_use_http). */
tb_app *tb__app_create(const tb_app_config *cfg, int *err)
{
    tb_app_config c;
    if (cfg)
        c = *cfg;
    else
        tb_app_config_init(&c);
    int rc = tb__config_check(&c);
    tb_app *app = NULL;
    if (rc)
        goto fail;
    pthread_once(&libevent_once, libevent_init);
    if (libevent_threads_rc != 0) {
        tb__log(TB_LOG_ERROR, "libevent has no pthreads support");
        rc = TB_EINVAL;
        goto fail;
    }
    /* A task's timer is a struct event in its waiting function's frame
     * (tb__timer): the libevent run must not need more than the one
     * built against. */
    if (event_get_struct_event_size() > sizeof(struct event)) {
        tb__log(TB_LOG_ERROR,
                "libevent's struct event is %zu bytes, taskbus was built "
                "for %zu: rebuild taskbus against this libevent",
                event_get_struct_event_size(), sizeof(struct event));
        rc = TB_EINVAL;
        goto fail;
    }
    rc = TB_ENOMEM;
    app = calloc(1, sizeof *app);
    if (!app)
        goto fail;
    app->cfg = c;
    if (!c.core.json_max_depth) /* automatic: what half the stack holds */
        app->cfg.core.json_max_depth =
            c.core.stack_size / 2 / TB__JSON_STACK_PER_LEVEL < 64
                ? (int)(c.core.stack_size / 2 / TB__JSON_STACK_PER_LEVEL)
                : 64;
    if (!app->cfg.http.longpoll_max) /* with one HTTP thread: none */
        app->cfg.http.longpoll_max = c.http.threads / 2;
    /* Owned through these (freed in tb_app_free), set below: none may
     * point at the caller's strings meanwhile. */
    app->cfg.http.jwt_secret = app->cfg.http.jwt_public_key = NULL;
    app->cfg.http.jwt_audience = app->cfg.http.jwt_issuer = NULL;
    app->cfg.http.api_token = NULL;
    app->cfg.redis.password = app->cfg.redis.sentinel_password = NULL;
    app->cfg.ws.allowed_origins = NULL;
    /* The config's strings are the caller's: keep copies. */
    app->cfg.core.event_namespace = app->ns = strdup(c.core.event_namespace);
    app->cfg.redis.url = NULL;
    if (c.redis.url && c.redis.url[0] &&
        !(app->cfg.redis.url = app->redis_url = strdup(c.redis.url)))
        goto fail;
    if (!app->ns)
        goto fail;
    app->cfg.http.listen = NULL;
    if (c.http.listen && c.http.listen[0] &&
        !(app->cfg.http.listen = app->http_listen = strdup(c.http.listen)))
        goto fail;
    if (c.http.api_token && c.http.api_token[0] &&
        !(app->cfg.http.api_token = strdup(c.http.api_token)))
        goto fail;
    app->cfg.redis.password = NULL;
    if (c.redis.password && c.redis.password[0] &&
        !(app->cfg.redis.password = strdup(c.redis.password)))
        goto fail;
    app->cfg.ws.allowed_origins = NULL;
    if (c.ws.allowed_origins && c.ws.allowed_origins[0] &&
        !(app->cfg.ws.allowed_origins = strdup(c.ws.allowed_origins)))
        goto fail;
    if (!copy_string_from(&app->cfg.redis.sentinel_password,
                          c.redis.sentinel_password) ||
        !copy_string_from(&app->cfg.http.jwt_secret, c.http.jwt_secret) ||
        !copy_string_from(&app->cfg.http.jwt_public_key,
                          c.http.jwt_public_key) ||
        !copy_string_from(&app->cfg.http.jwt_audience, c.http.jwt_audience) ||
        !copy_string_from(&app->cfg.http.jwt_issuer, c.http.jwt_issuer))
        goto fail;
    /* Reads the public key file now: a bad one is a config error. */
    if ((rc = tb__jwt_new(&app->cfg, &app->jwt)) != 0)
        goto fail;
    rc = TB_ENOMEM;
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
        rnd = (uint64_t)tb__now_us() ^ ((uint64_t)getpid() << 32);
    snprintf(app->instance, sizeof app->instance, "%016llx",
             (unsigned long long)rnd);
    atomic_init(&app->state, TB__APP_NEW);
    atomic_init(&app->stop_requested, 0);
    atomic_init(&app->store_lost, 0);
    sem_init(&app->stop_sem, 0, 0);
    pthread_mutex_init(&app->start_mu, NULL);
    pthread_cond_init(&app->start_cv, NULL);
    pthread_mutex_init(&app->reg_mu, NULL);
    tb__cond_init_mono(&app->done_cv);
    pthread_mutex_init(&app->blk_mu, NULL);
    pthread_cond_init(&app->blk_cv, NULL);
    tb__htab_init(&app->names);
    tb__interest_init(&app->interest);
    app->mode = TB__MODE_PRERUN;
    if (!(app->cluster = tb__cluster_new(app))) {
        rc = TB_ENOMEM;
        goto fail;
    }
    if (err)
        *err = 0;
    return app;
fail:
    if (app) {
        tb_app_free(app);
        app = NULL;
    }
    if (err)
        *err = rc;
    return NULL;
}

static void worker_free(tb__worker *w)
{
    for (size_t i = 0; i < w->inbox_len; i++) {
        tb__msg *m = &w->inbox[i];
        if (m->kind == TB__MSG_EVENT)
            tb_event_unref(m->ptr);
        else if (m->kind == TB__MSG_CALL) {
            tb__call *c = m->ptr;
            if (c->drop)
                c->drop(c->arg);
            free(c);
        } else if (m->ptr)
            tb__task_unref(m->ptr);
    }
    free(w->inbox);
    free(w->spare);
    tb__listener_free_spares(w);
    tb__htab_destroy(&w->exact);
    tb__htab_destroy(&w->wild);
    tb__interest_destroy(&w->interest);
    if (w->grace_ev)
        event_free(w->grace_ev);
    if (w->trim_ev)
        event_free(w->trim_ev);
    if (w->inbox_ev)
        event_free(w->inbox_ev);
    if (w->runq_ev)
        event_free(w->runq_ev);
    /* A task timer still in the base lives in a frame of a stack that
     * is gone: freeing the base would write to it. Kept (a leak, which
     * LeakSanitizer reports) and said, instead: a waiting function or an
     * end that did not disarm (tb__task_arm_timer's contract). */
    int left = w->base ? tb__task_timers_left(w->base) : 0;
    if (left)
        tb__log(TB_LOG_ERROR,
                "worker %d: %d task timer(s) still armed at the end: its "
                "event loop is not freed",
                w->index, left);
    else if (w->base)
        event_base_free(w->base);
    pthread_mutex_destroy(&w->inbox_mu);
}

void tb_app_free(tb_app *app)
{
    if (!app)
        return;
    int st = atomic_load(&app->state);
    if (st == TB__APP_STARTING || st == TB__APP_RUNNING ||
        st == TB__APP_STOPPING) {
        tb__log(TB_LOG_ERROR, "tb_app_free on a running app: ignored");
        return;
    }
    tb__blocking_shutdown(app);
    /* Task timers and coroutines belong to worker bases and stack pools:
     * free them before those go. */
    tb__task_free_registry(app);
    for (int i = 0; i < app->nworkers; i++) {
        tb__worker *w = &app->workers[i];
        worker_free(w);
        if (w->stacks)
            tb__stack_pool_free(w->stacks);
    }
    free(app->workers);
    tb__htab_destroy(&app->names);
    tb__interest_destroy(&app->interest);
    while (app->prerun) {
        tb__prerun *p = app->prerun;
        app->prerun = p->next;
        if (p->arg_free)
            p->arg_free(p->arg);
        free(p->name);
        free(p->kind);
        free(p);
    }
    for (int k = 0; k < TB__LISTENER_COUNT; k++) {
        while (app->listeners[k]) {
            tb__listener_fn *l = app->listeners[k];
            app->listeners[k] = l->next;
            free(l);
        }
    }
    if (app->http)
        app->http->ops->free(app->http);
    tb__singletons_free(app->singletons);
    tb__instances_free(app->instances);
    if (app->bus)
        app->bus->ops->free(app->bus);
    tb__cluster_free(app->cluster);
    tb__kinds_free(app);
    tb__router_free(app->router);
    for (size_t i = 0; i < app->nroute_fns; i++)
        free(app->route_fns[i]);
    free(app->route_fns);
    tb__metrics_free(app->metrics);
    free(app->ns);
    free(app->redis_url);
    free(app->http_listen);
    free((char *)(uintptr_t)app->cfg.ws.allowed_origins);
    if (app->cfg.redis.password) {
        char *t = (char *)(uintptr_t)app->cfg.redis.password;
        explicit_bzero(t, strlen(t));
        free(t);
    }
    tb__ws_app_free(app);
    tb__jwt_free(app->jwt);
    wipe_string(app->cfg.http.jwt_secret);
    wipe_string(app->cfg.redis.sentinel_password);
    free((char *)(uintptr_t)app->cfg.http.jwt_public_key);
    free((char *)(uintptr_t)app->cfg.http.jwt_audience);
    free((char *)(uintptr_t)app->cfg.http.jwt_issuer);
    if (app->cfg.http.api_token) {
        /* Not left in freed memory. */
        char *t = (char *)(uintptr_t)app->cfg.http.api_token;
        explicit_bzero(t, strlen(t));
        free(t);
    }
    sem_destroy(&app->stop_sem);
    pthread_mutex_destroy(&app->start_mu);
    pthread_cond_destroy(&app->start_cv);
    pthread_mutex_destroy(&app->reg_mu);
    pthread_cond_destroy(&app->done_cv);
    pthread_mutex_destroy(&app->blk_mu);
    pthread_cond_destroy(&app->blk_cv);
    free(app);
}

int tb__app_use_bus(tb_app *app, tb__bus *bus)
{
    /* publish_many is what makes a batch all or none: a bus without it
     * would leave half a batch dispatched. */
    if (!bus->ops->publish || !bus->ops->publish_many) {
        tb__log(TB_LOG_ERROR,
                "event bus \"%s\" lacks publish%s: it cannot be used",
                bus->ops->name, bus->ops->publish ? "_many" : "");
        return TB_EINVAL;
    }
    app->bus = bus;
    return 0;
}

void tb__app_use_http(tb_app *app, tb__http_server *srv,
                      const tb__wsconn_ops *ws)
{
    app->http = srv;
    app->wsconn = ws;
}

const tb__jwt_keys *tb__app_jwt_keys(const tb_app *app)
{
    return app->jwt ? tb__jwt_keys_of(app->jwt) : NULL;
}

void tb__app_use_jwt(tb_app *app, tb__jwt_verifier *v)
{
    tb__jwt_set_verifier(app->jwt, v);
}

/* ---------------------------------------------------------------- accessors */

int tb_app_is_running(const tb_app *app)
{
    return atomic_load(&((tb_app *)app)->state) == TB__APP_RUNNING;
}

int tb_app_workers(const tb_app *app)
{
    return app->cfg.core.workers;
}

const tb_app_config *tb_app_get_config(const tb_app *app)
{
    return &app->cfg;
}

int tb_app_current_worker(const tb_app *app)
{
    tb__worker *w = tb__worker_current();
    return w && w->app == app ? w->index : -1;
}

void tb_app_set_userdata(tb_app *app, void *ud)
{
    app->userdata = ud;
}

void *tb_app_get_userdata(const tb_app *app)
{
    return app->userdata;
}

const char *tb_app_instance(const tb_app *app)
{
    return app->instance;
}

const char *tb__app_instance(const tb_app *app)
{
    return app->instance;
}

/* ---------------------------------------------------------------- listeners */

int tb_app_add_listener(tb_app *app, tb_listener_kind kind, tb_listener_fn fn,
                        void *arg)
{
    if (!app || !fn || kind < 0 || kind >= TB__LISTENER_COUNT)
        return TB_EINVAL;
    if (atomic_load(&app->state) != TB__APP_NEW)
        return TB_EBUSY;
    tb__listener_fn *l = calloc(1, sizeof *l);
    if (!l)
        return TB_ENOMEM;
    l->fn = fn;
    l->arg = arg;
    tb__listener_fn **pp = &app->listeners[kind];
    while (*pp)
        pp = &(*pp)->next;
    *pp = l;
    return 0;
}

static const char *listener_kind_name(tb_listener_kind k)
{
    static const char *names[] = {"main_process_start", "main_process_ready",
                                  "main_process_stop",  "before_server_start",
                                  "after_server_start", "before_server_stop",
                                  "after_server_stop"};
    return k >= 0 && k < TB__LISTENER_COUNT ? names[k] : "?";
}

static int is_stop_kind(tb_listener_kind k)
{
    return k == TB_MAIN_STOP || k == TB_WORKER_BEFORE_STOP ||
           k == TB_WORKER_AFTER_STOP;
}

int tb__app_run_listeners(tb_app *app, tb_listener_kind kind, int worker)
{
    tb__listener_fn *v[64], **list = v;
    size_t n = 0;
    for (tb__listener_fn *l = app->listeners[kind]; l; l = l->next)
        n++;
    if (n > sizeof v / sizeof v[0] && !(list = malloc(n * sizeof *list)))
        return TB_ENOMEM;
    n = 0;
    for (tb__listener_fn *l = app->listeners[kind]; l; l = l->next)
        list[n++] = l;
    int stop = is_stop_kind(kind), first_err = 0;
    for (size_t i = 0; i < n; i++) {
        tb__listener_fn *l = list[stop ? n - 1 - i : i];
        int rc = l->fn(app, worker, l->arg);
        if (rc == 0)
            continue;
        tb__log(TB_LOG_ERROR, "%s listener on worker %d returned %d (%s)",
                listener_kind_name(kind), worker, rc, tb_strerror(rc));
        if (kind == TB_MAIN_START || kind == TB_WORKER_BEFORE_START) {
            first_err = rc;
            break;
        }
    }
    if (list != v)
        free(list);
    return first_err;
}

/* ---------------------------------------------------------------- run/stop */

void tb_app_stop(tb_app *app)
{
    if (!app)
        return;
    /* Only async-signal-safe calls: an atomic store and sem_post. */
    if (atomic_exchange(&app->stop_requested, 1) == 0)
        sem_post(&app->stop_sem);
}

static tb_app *signal_app;

static volatile sig_atomic_t signals_seen;
static void (*second_signal_hook)(int sig);

void tb_app_set_second_signal_hook(void (*fn)(int sig))
{
    second_signal_hook = fn;
}

static void on_signal(int sig)
{
    if (signals_seen++) {
        /* A second signal: the operator wants out now. */
        if (second_signal_hook) {
            second_signal_hook(sig);
        } else {
            static const char msg[] =
                "taskbus: second signal: exiting at once\n";
            ssize_t n = write(STDERR_FILENO, msg, sizeof msg - 1);
            (void)n;
        }
        _exit(128 + sig);
    }
    tb_app_stop(signal_app);
}

static int workers_setup(tb_app *app)
{
    int n = app->cfg.core.workers;
    app->workers = calloc((size_t)n, sizeof *app->workers);
    if (!app->workers)
        return TB_ENOMEM;
    app->nworkers = n;
    for (int i = 0; i < n; i++) {
        int rc = tb__worker_init(&app->workers[i], app, i);
        if (rc)
            return rc;
    }
    return 0;
}

static void workers_stop(tb_app *app, int started)
{
    for (int i = 0; i < started; i++)
        tb__worker_post(&app->workers[i], TB__MSG_STOP, NULL, 0, 0);
    for (int i = 0; i < started; i++) {
        pthread_join(app->workers[i].thread, NULL);
        app->abandoned += app->workers[i].abandoned;
    }
}

static void close_registry(tb_app *app)
{
    pthread_mutex_lock(&app->reg_mu);
    app->mode = TB__MODE_CLOSED;
    pthread_mutex_unlock(&app->reg_mu);
}

int tb_app_run(tb_app *app)
{
    if (!app)
        return TB_EINVAL;
    int expect = TB__APP_NEW;
    if (!atomic_compare_exchange_strong(&app->state, &expect, TB__APP_STARTING))
        return TB_ESHUTDOWN;

    struct sigaction old_int, old_term;
    sigset_t stop_sigs, run_mask;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGINT);
    sigaddset(&stop_sigs, SIGTERM);
    if (app->cfg.core.handle_signals) {
        signal_app = app;
        signals_seen = 0;
        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        /* Every thread started from here (the bus's, the HTTP server's,
         * the front's, the instances' and singletons') inherits the mask:
         * SIGINT and SIGTERM reach this thread alone, once it waits below
         * (one that came meanwhile is taken then). A handler run on a
         * library's thread could be held back by a sanitizer's runtime
         * until that thread next makes an intercepted call. */
        pthread_sigmask(SIG_BLOCK, &stop_sigs, &run_mask);
    }

    int rc = tb__app_run_listeners(app, TB_MAIN_START, -1);
    int started = 0;
    if (rc || atomic_load(&app->stop_requested))
        goto stopped;
    if ((rc = workers_setup(app)) != 0)
        goto stopped;
    if ((rc = app->bus->ops->start(app->bus)) != 0) {
        tb__log(TB_LOG_ERROR, "event bus %s failed to start: %s",
                app->bus->ops->name, tb_strerror(rc));
        goto stopped;
    }
    atomic_store_explicit(&app->bus_up, 1, memory_order_release);
    pthread_mutex_lock(&app->reg_mu);
    app->mode = TB__MODE_ACCEPT;
    pthread_mutex_unlock(&app->reg_mu);

    /* Workers leave signals to the thread that runs the app. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (; started < app->nworkers; started++) {
        tb__worker *w = &app->workers[started];
        if (pthread_create(&w->thread, NULL, tb__worker_main, w) != 0) {
            rc = TB_EAGAIN;
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    pthread_mutex_lock(&app->start_mu);
    while (app->workers_started < started)
        pthread_cond_wait(&app->start_cv, &app->start_mu);
    if (!rc)
        rc = app->start_err;
    pthread_mutex_unlock(&app->start_mu);
    if (rc) {
        tb__log(TB_LOG_ERROR, "start-up failed: %s", tb_strerror(rc));
        goto stopping;
    }

    /* Registered before the HTTP server starts, so that GET /instances
     * always finds the registry. */
    app->instances = tb__instances_start(app);
    tb__singletons_start(app); /* sets app->singletons */
    if (app->router && app->http &&
        (rc = app->http->ops->start(app->http)) != 0) {
        tb__log(TB_LOG_ERROR, "HTTP server on %s failed to start: %s",
                app->cfg.http.listen, tb_strerror(rc));
        goto stopping;
    }
    atomic_store(&app->run_wall_us, tb__now_us());
    atomic_store(&app->run_mono_us, tb__mono_us());
    atomic_store(&app->state, TB__APP_RUNNING);
    tb__log(TB_LOG_DEBUG, "app %s running: %d workers, %s bus", app->instance,
            app->nworkers, app->bus->ops->name);
    tb__app_run_listeners(app, TB_MAIN_READY, -1);
    if (app->cfg.core.handle_signals)
        pthread_sigmask(SIG_SETMASK, &run_mask, NULL);
    while (!atomic_load(&app->stop_requested))
        sem_wait(&app->stop_sem); /* EINTR just loops */

stopping:
    atomic_store(&app->state, TB__APP_STOPPING);
    if (app->cfg.core.shutdown_delay_ms > 0 && started == app->nworkers &&
        !rc) {
        /* /readyz now answers 503 while everything else still works, so
         * that load balancers stop sending before we stop accepting. */
        tb__log(TB_LOG_INFO,
                "stopping: not ready; serving for %d ms more "
                "(shutdown_delay_ms) so that load balancers drain",
                app->cfg.core.shutdown_delay_ms);
        struct timespec ts = {app->cfg.core.shutdown_delay_ms / 1000,
                              (app->cfg.core.shutdown_delay_ms % 1000) *
                                  1000000L};
        while (nanosleep(&ts, &ts) != 0)
            ;
    }
    /* Stop accepting requests first; handlers in flight finish while the
     * workers and the bus still run. */
    if (app->http)
        app->http->ops->stop(app->http);
    close_registry(app);
    workers_stop(app, started);
    /* Its singleton runs have ended and given their leases up. */
    tb__singletons_stop(app->singletons);
    /* Its tasks have ended: the instance leaves the cluster now, not when
     * its record expires. */
    tb__instances_stop(app->instances);
    atomic_store_explicit(&app->bus_up, 0, memory_order_release);
    app->bus->ops->stop(app->bus);
    if (!rc && app->abandoned)
        rc = TB_ETIMEDOUT;
stopped:
    close_registry(app);
    atomic_store(&app->state, TB__APP_STOPPED);
    tb__app_run_listeners(app, TB_MAIN_STOP, -1);
    if (app->cfg.core.handle_signals) {
        pthread_sigmask(SIG_SETMASK, &run_mask, NULL); /* a failed start */
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        signal_app = NULL;
    }
    return rc;
}
