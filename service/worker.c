/* worker.c - a worker: one thread, one libevent loop, an inbox and a run queue.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "internal.h"
#include "ws.h"

static _Thread_local tb__worker *current_worker;

tb__worker *tb__worker_current(void)
{
    return current_worker;
}

/* ---------------------------------------------------------------- inbox */

/* Makes room for n more messages (inbox_mu held). 0 or TB_ENOMEM. */
static int inbox_reserve(tb__worker *w, size_t n)
{
    if (w->inbox_len + n <= w->inbox_cap)
        return 0;
    size_t cap = w->inbox_cap ? w->inbox_cap : 256;
    while (cap < w->inbox_len + n)
        cap *= 2;
    tb__msg *b = realloc(w->inbox, cap * sizeof *b);
    if (!b)
        return TB_ENOMEM;
    w->inbox = b;
    w->inbox_cap = cap;
    return 0;
}

/* Only the post that makes the inbox non-empty wakes the loop: a burst of
 * posts costs one wake-up, and the drain takes them all at once. */
static void inbox_wake(tb__worker *w, int first)
{
    if (first)
        event_active(w->inbox_ev, EV_READ, 0);
}

int tb__worker_call(tb__worker *w,
                    void (*fn)(tb_app *app, int worker, void *arg),
                    void (*drop)(void *arg), void *arg)
{
    tb__call *c = malloc(sizeof *c);
    if (!c)
        return TB_ENOMEM;
    c->fn = fn;
    c->drop = drop;
    c->arg = arg;
    int rc = tb__worker_post(w, TB__MSG_CALL, c, 0, 0);
    if (rc)
        free(c);
    return rc;
}

int tb__worker_post(tb__worker *w, int kind, void *ptr, uint64_t seq, int code)
{
    pthread_mutex_lock(&w->inbox_mu);
    if (inbox_reserve(w, 1)) {
        pthread_mutex_unlock(&w->inbox_mu);
        return TB_ENOMEM;
    }
    int first = w->inbox_len == 0;
    w->inbox[w->inbox_len++] =
        (tb__msg){.kind = kind, .code = code, .seq = seq, .ptr = ptr};
    pthread_mutex_unlock(&w->inbox_mu);
    inbox_wake(w, first);
    return 0;
}

int tb__worker_post_many(tb__worker *w, int kind, void *const *ptrs, size_t n)
{
    if (n == 0)
        return 0;
    pthread_mutex_lock(&w->inbox_mu);
    if (inbox_reserve(w, n)) {
        pthread_mutex_unlock(&w->inbox_mu);
        return TB_ENOMEM;
    }
    int first = w->inbox_len == 0;
    for (size_t i = 0; i < n; i++)
        w->inbox[w->inbox_len++] = (tb__msg){.kind = kind, .ptr = ptrs[i]};
    pthread_mutex_unlock(&w->inbox_mu);
    inbox_wake(w, first);
    return 0;
}

size_t tb__worker_post_events(tb__worker *w, tb_event *const *evs, size_t n,
                              size_t max)
{
    pthread_mutex_lock(&w->inbox_mu);
    size_t room = w->inbox_events < max ? max - w->inbox_events : 0;
    size_t k = n < room ? n : room;
    if (k && inbox_reserve(w, k))
        k = 0;
    int first = w->inbox_len == 0;
    for (size_t i = 0; i < k; i++)
        w->inbox[w->inbox_len++] =
            (tb__msg){.kind = TB__MSG_EVENT, .ptr = evs[i]};
    w->inbox_events += k;
    pthread_mutex_unlock(&w->inbox_mu);
    if (k)
        inbox_wake(w, first);
    return k;
}

static void begin_stop(tb__worker *w);

static void handle(tb__worker *w, tb__msg *m)
{
    switch (m->kind) {
    case TB__MSG_SPAWN:
        tb__task_start_on_worker(m->ptr);
        tb__task_unref(m->ptr);
        break;
    case TB__MSG_CANCEL:
        tb__task_deliver_cancel(m->ptr);
        tb__task_unref(m->ptr);
        break;
    case TB__MSG_WAKE:
        tb__task_wake(m->ptr, m->seq, m->code);
        tb__task_unref(m->ptr);
        break;
    case TB__MSG_EVENT:
        tb__event_deliver_local(w, m->ptr);
        tb_event_unref(m->ptr);
        break;
    case TB__MSG_STOP:
        begin_stop(w);
        break;
    case TB__MSG_CALL: {
        tb__call *c = m->ptr;
        c->fn(w->app, w->index, c->arg);
        free(c);
        break;
    }
    }
}

static void on_inbox(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__worker *w = arg;
    if (!w->started)
        return; /* on_loop_started drains once after-start has run */
    pthread_mutex_lock(&w->inbox_mu);
    tb__msg *batch = w->inbox;
    size_t n = w->inbox_len, cap = w->inbox_cap;
    w->inbox = w->spare;
    w->inbox_cap = w->spare_cap;
    w->inbox_len = 0;
    w->inbox_events = 0;
    pthread_mutex_unlock(&w->inbox_mu);
    for (size_t i = 0; i < n; i++)
        handle(w, &batch[i]);
    w->spare = batch;
    w->spare_cap = cap;
    /* Messages may have created ready tasks: run them in this same loop
     * iteration rather than paying another trip through libevent. */
    tb__worker_run_ready(w);
}

/* ---------------------------------------------------------------- run queue */

void tb__worker_enqueue(tb__worker *w, tb_task *t)
{
    if (t->queued)
        return;
    t->queued = 1;
    t->rnext = NULL;
    int was_empty = w->runq_head == NULL;
    if (w->runq_tail)
        w->runq_tail->rnext = t;
    else
        w->runq_head = t;
    w->runq_tail = t;
    if (was_empty && !w->in_run)
        event_active(w->runq_ev, EV_READ, 0);
}

void tb__worker_run_ready(tb__worker *w)
{
    if (w->in_run)
        return;
    w->in_run = 1;
    /* Tasks made ready while we drain run in this drain too, up to a bound,
     * so a chain of wake-ups does not cost a loop iteration each; the bound
     * keeps timers and I/O from starving behind a task that keeps yielding. */
    int budget = 65536;
    tb_task *t;
    while ((t = w->runq_head) && budget-- > 0) {
        w->runq_head = t->rnext;
        if (!w->runq_head)
            w->runq_tail = NULL;
        t->queued = 0;
        tb__task_run(t);
    }
    w->in_run = 0;
    if (w->runq_head)
        event_active(w->runq_ev, EV_READ, 0);
}

static void on_runq(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__worker_run_ready(arg);
}

/* ---------------------------------------------------------------- timers */

const struct timeval *tb__worker_timeout(tb__worker *w, int64_t ms,
                                         struct timeval *tmp)
{
    tmp->tv_sec = (time_t)(ms / 1000);
    tmp->tv_usec = (suseconds_t)(ms % 1000) * 1000;
    /* Tasks tend to use a few durations over and over (a poll interval, a
     * request timeout). libevent keeps the timers of a "common timeout" in
     * a FIFO list instead of its heap, so adding and cancelling one is O(1)
     * instead of O(log n): worth it when 100 000 tasks sleep alike. */
    for (int i = 0; i < w->ncommon; i++)
        if (w->common_ms[i] == ms)
            return &w->common_tv[i];
    if (w->ncommon < TB__COMMON_TIMEOUTS) {
        const struct timeval *c = event_base_init_common_timeout(w->base, tmp);
        if (c) {
            w->common_ms[w->ncommon] = ms;
            w->common_tv[w->ncommon++] = *c;
            return c;
        }
    }
    return tmp;
}

/* ---------------------------------------------------------------- stacks */

/* Stacks given back per timer tick: each is a system call and a TLB
 * shootdown, so a burst of 100 000 finished tasks is trimmed over a few
 * ticks instead of stalling the loop. */
#define TRIM_BATCH 4096
#define TRIM_DELAY_MS 200

static void arm_trim(tb__worker *w)
{
    struct timeval tv = {0, TRIM_DELAY_MS * 1000};
    evtimer_add(w->trim_ev, &tv);
}

static void on_trim(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__worker *w = arg;
    tb__stack_pool_trim(w->stacks, TRIM_BATCH);
    if (tb__stack_pool_excess(w->stacks))
        arm_trim(w);
    else
        w->trim_armed = 0;
}

void tb__worker_note_stack_freed(tb__worker *w)
{
    if (tb__stack_pool_excess(w->stacks) && !w->trim_armed) {
        w->trim_armed = 1;
        arm_trim(w);
    }
}

/* ---------------------------------------------------------------- stop */

static void finish_stop(tb__worker *w)
{
    if (w->stopped)
        return;
    w->stopped = 1;
    if (w->grace_ev)
        event_del(w->grace_ev);
    tb__app_run_listeners(w->app, TB_WORKER_AFTER_STOP, w->index);
    event_base_loopbreak(w->base);
}

void tb__worker_maybe_finish_stop(tb__worker *w)
{
    if (w->stopping && !w->stopped && w->live == NULL)
        finish_stop(w);
}

static void on_grace(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__worker *w = arg;
    int n = tb__task_abandon_all_on_worker(w);
    if (n > 0) {
        w->abandoned += n;
        tb__log(TB_LOG_WARN,
                "worker %d: %d task(s) still running after the graceful "
                "timeout of %d ms were abandoned",
                w->index, n, w->app->cfg.core.graceful_timeout_ms);
    }
    finish_stop(w);
}

static void begin_stop(tb__worker *w)
{
    if (w->stopping)
        return;
    w->stopping = 1;
    tb__app_run_listeners(w->app, TB_WORKER_BEFORE_STOP, w->index);
    tb__task_cancel_all_on_worker(w);
    /* Cancelled tasks run from the run queue; if none is left we are done
     * now, else the last one to end finishes the stop, or the timer does.
     * The loop sleeps meanwhile: nothing polls. */
    if (w->live == NULL) {
        finish_stop(w);
        return;
    }
    int ms = w->app->cfg.core.graceful_timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    w->grace_ev = evtimer_new(w->base, on_grace, w);
    if (!w->grace_ev || evtimer_add(w->grace_ev, &tv) != 0) {
        tb__log(TB_LOG_ERROR, "worker %d: cannot arm the graceful timer",
                w->index);
        on_grace(-1, 0, w);
    }
}

/* ---------------------------------------------------------------- thread */

static void report_started(tb__worker *w, int err)
{
    tb_app *app = w->app;
    pthread_mutex_lock(&app->start_mu);
    if (err && !app->start_err)
        app->start_err = err;
    app->workers_started++;
    pthread_cond_broadcast(&app->start_cv);
    pthread_mutex_unlock(&app->start_mu);
}

static void on_loop_started(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__worker *w = arg;
    tb__app_run_listeners(w->app, TB_WORKER_AFTER_START, w->index);
    tb__task_start_prerun(w);
    /* Whatever was posted while the worker started is handled now, after
     * its after-start listeners, as Sanic orders them. */
    w->started = 1;
    on_inbox(-1, 0, w);
    report_started(w, 0);
}

int tb__worker_init(tb__worker *w, tb_app *app, int index)
{
    w->app = app;
    w->index = index;
    pthread_mutex_init(&w->inbox_mu, NULL);
    tb__htab_init(&w->exact);
    tb__htab_init(&w->wild);
    tb__interest_init(&w->interest);
    atomic_init(&w->load, 0);
    /* Base and events exist before the thread so that tasks and events can
     * be posted to the worker as soon as the registry accepts them. */
    w->base = event_base_new();
    if (!w->base)
        return TB_ENOMEM;
    w->inbox_ev = event_new(w->base, -1, 0, on_inbox, w);
    w->runq_ev = event_new(w->base, -1, 0, on_runq, w);
    w->trim_ev = evtimer_new(w->base, on_trim, w);
    return w->inbox_ev && w->runq_ev && w->trim_ev ? 0 : TB_ENOMEM;
}

static int setup(tb__worker *w)
{
    /* Stacks are made on the thread that will use them. */
    w->stacks = tb__stack_pool_new(w->app->cfg.core.stack_size, 1024);
    return w->stacks ? 0 : TB_ENOMEM;
}

void *tb__worker_main(void *arg)
{
    tb__worker *w = arg;
    current_worker = w;
    char tname[16];
    snprintf(tname, sizeof tname, "tb-worker-%d", w->index % 1000);
    pthread_setname_np(pthread_self(), tname);

    int err = setup(w);
    if (err == 0)
        err = tb__app_run_listeners(w->app, TB_WORKER_BEFORE_START, w->index);
    if (err != 0) {
        w->start_err = err;
        report_started(w, err);
        current_worker = NULL;
        return NULL;
    }
    if (event_base_once(w->base, -1, EV_TIMEOUT, on_loop_started, w,
                        &(struct timeval){0, 0}) != 0) {
        report_started(w, TB_ENOMEM);
        current_worker = NULL;
        return NULL;
    }
    /* Tasks and inbox posts activate events without adding any: without
     * this flag an idle loop would return at once. */
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    /* Websockets still open (their handlers ended at the stop): flush what
     * can be flushed at once and close them. */
    tb__ws_worker_shutdown(w);
    current_worker = NULL;
    return NULL;
}
