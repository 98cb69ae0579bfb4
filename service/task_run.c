/* task_run.c - a task's life on its worker: start, run, suspend and wake,
 * timers, cancel delivery, finish; and what a task does to itself (sleep,
 * yield, fail, wait for other tasks to end, make a blocking call). The
 * registry and the calls by name are task.c. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "cluster.h"
#include "internal.h"
#include "singleton.h"

static _Thread_local tb_task *current_task;

tb_task *tb_task_current(void)
{
    return current_task;
}

/* ---------------------------------------------------------------- refs */

void tb__task_ref(tb_task *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void tb__task_unref(tb_task *t)
{
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    tb__singleton_release(t->single);
    free(t->kind);
    free(t->error);
    free(t);
}

/* -------------------------------------------------------------- worker side */

static void trampoline(void *arg)
{
    tb_task *t = arg;
    t->fn_result = t->fn(t, t->arg);
}

void tb__task_start_on_worker(tb_task *t)
{
    tb__worker *w = t->w;
    t->wprev = NULL;
    t->wnext = w->live;
    if (w->live)
        w->live->wprev = t;
    w->live = t;
    tb__worker_enqueue(w, t);
}

static void wake_watchers_locked(tb_task *t)
{
    for (tb__watch *x = t->watchers; x; x = x->next) {
        tb_task *waiter = x->waiter;
        if (waiter->w == tb__worker_current()) {
            tb__task_wake(waiter, x->seq, 0);
        } else {
            tb__task_ref(waiter);
            if (tb__worker_post(waiter->w, TB__MSG_WAKE, waiter, x->seq, 0))
                tb__task_unref(waiter);
        }
    }
    t->watchers = NULL;
}

/* Ends t on its worker: records its final state, wakes whoever waits for
 * it, releases what it held. abandoned: shutdown gave up on it. */
static void finish(tb_task *t, int abandoned)
{
    tb_app *app = t->app;
    tb__worker *w = t->w;
    int in_blocking = t->wait_kind == TB__WAIT_BLOCKING;

    /* A task abandoned at shutdown may still have a timer armed, and the
     * timer lives on its stack: out of the base before the stack goes. */
    tb__task_disarm_timer(t);
    t->timer = NULL;
    if (t->co && !(abandoned && in_blocking)) {
        /* A blocking call in flight still uses its job on this stack: keep
         * that stack until tb_app_free has joined the pool. */
        tb__coro_free(t->co);
        t->co = NULL;
        tb__worker_note_stack_freed(w);
    }
    tb__sub_close_all(t);
    tb__event_abandon_wait(t); /* only an abandoned task is still waiting */
    tb__event_abandon_confirm(t);
    t->wait_kind = TB__WAIT_NONE;

    if (t->wprev)
        t->wprev->wnext = t->wnext;
    else if (w->live == t)
        w->live = t->wnext;
    if (t->wnext)
        t->wnext->wprev = t->wprev;
    t->wprev = t->wnext = NULL;

    tb_task_state st;
    if (atomic_load(&t->cancel_requested))
        st = TB_TASK_CANCELLED;
    else if (t->fn_result != 0 || t->error)
        st = TB_TASK_FAILED;
    else
        st = TB_TASK_DONE;

    pthread_mutex_lock(&app->reg_mu);
    if (abandoned && !t->error)
        t->error = strdup("abandoned at shutdown: still running after the "
                          "graceful timeout");
    t->result = t->fn_result;
    if (t->state == TB_TASK_PENDING && st == TB_TASK_CANCELLED)
        t->result = TB_ECANCELED; /* its body never ran */
    t->state = st;
    t->ended_us = tb__now_us();
    int claimed = t->claimed; /* re-assertion may clear it (reg_mu) */
    wake_watchers_locked(t);
    if (app->thread_waiters)
        pthread_cond_broadcast(&app->done_cv);
    if (t->ephemeral)
        tb__task_registry_drop(app, t); /* waiters hold their own references */
    pthread_mutex_unlock(&app->reg_mu);

    if (st == TB_TASK_FAILED) {
        if (t->error)
            tb__log(TB_LOG_ERROR, "task %s (worker %d) failed: %s", t->name,
                    t->worker, t->error);
        else
            tb__log(TB_LOG_ERROR, "task %s (worker %d) failed: returned %d",
                    t->name, t->worker, t->result);
    } else if (abandoned) {
        tb__log(TB_LOG_WARN, "task %s (worker %d) abandoned at shutdown",
                t->name, t->worker);
    }
    if (claimed)
        tb__cluster_release(app, t->name, t->id);
    if (t->single)
        tb__singleton_ended(t, st);
    if (t->arg_free && !(abandoned && in_blocking))
        t->arg_free(t->arg);
    t->arg_free = NULL;
    atomic_fetch_sub(&w->load, 1);
    tb__task_unref(t); /* the worker's reference */
    tb__worker_maybe_finish_stop(w);
}

void tb__task_run(tb_task *t)
{
    if (!t->co) {
        if (tb__task_finished(t))
            return;
        if (atomic_load(&t->cancel_pending)) {
            /* Cancelled before it ever ran: like asyncio, its body never
             * starts. */
            finish(t, 0);
            return;
        }
        t->co = tb__coro_new(t->w->stacks, trampoline, t);
        if (!t->co) {
            char *msg = strdup("no memory for the task's stack");
            pthread_mutex_lock(&t->app->reg_mu);
            t->error = msg;
            pthread_mutex_unlock(&t->app->reg_mu);
            t->fn_result = TB_ENOMEM;
            finish(t, 0);
            return;
        }
        tb__coro_set_data(t->co, t);
        int64_t now = tb__now_us();
        pthread_mutex_lock(&t->app->reg_mu);
        t->state = TB_TASK_RUNNING;
        t->started_us = now;
        pthread_mutex_unlock(&t->app->reg_mu);
    }
    current_task = t;
    int done = tb__coro_resume(t->co);
    current_task = NULL;
    if (done)
        finish(t, 0);
}

void tb__task_deliver_cancel(tb_task *t)
{
    if (tb__task_finished(t) || !t->co)
        return; /* a pending task sees the flag when it would first run */
    if (t->wait_kind == TB__WAIT_NONE || t->wait_kind == TB__WAIT_BLOCKING)
        return; /* its next suspension point (or the blocking call's end)
                   consumes the flag */
    if (atomic_exchange(&t->cancel_pending, 0))
        tb__task_wake(t, t->wait_seq, TB_ECANCELED);
}

void tb__task_request_cancel(tb_task *t)
{
    atomic_store(&t->cancel_requested, 1);
    atomic_store(&t->cancel_pending, 1);
}

void tb__task_cancel_async(tb_task *t)
{
    if (tb__task_finished(t))
        return;
    tb__task_request_cancel(t);
    tb__task_deliver_cancel(t);
}

/* The names shown in the stop's line at most: a replica with thousands of
 * tasks writes one bounded line, not thousands. */
#define STOP_NAMES_MAX 10

/* One line saying what a worker's stop cancels: the tasks a user started
 * or can list (names and kinds, the first STOP_NAMES_MAX), and how many
 * connections' tasks (websockets, SSE streams, long polls) go with them.
 * Nothing when nothing runs. */
static void log_stop_cancels(tb__worker *w)
{
    char names[STOP_NAMES_MAX * 96];
    size_t len = 0;
    int listed = 0, named = 0, conns = 0;
    names[0] = '\0';
    for (tb_task *t = w->live; t; t = t->wnext) {
        if (t->hidden)
            continue; /* the cluster's own */
        if (t->ephemeral && t->kind &&
            (strncmp(t->kind, "ws", 2) == 0 || strcmp(t->kind, "sse") == 0 ||
             strncmp(t->kind, "http.", 5) == 0)) {
            conns++; /* a connection's: its client is told on its own */
            continue;
        }
        if (named++ >= STOP_NAMES_MAX)
            continue;
        int n = snprintf(names + len, sizeof names - len, "%s\"%.48s\" (%.24s)",
                         listed ? ", " : "", t->name ? t->name : "",
                         t->kind ? t->kind : "?");
        if (n > 0 && (size_t)n < sizeof names - len) {
            len += (size_t)n;
            listed++;
        }
    }
    if (named == 0 && conns == 0)
        return;
    char more[48] = "", extra[80] = "";
    if (named > listed)
        snprintf(more, sizeof more, " and %d more", named - listed);
    if (conns)
        snprintf(extra, sizeof extra,
                 "%s%d connection task(s) (websockets, SSE streams, long "
                 "polls)",
                 named ? "; and " : "", conns);
    if (named)
        tb__log(TB_LOG_INFO,
                "worker %d: stopping: cancelling %d task(s): %s%s%s", w->index,
                named, names, more, extra);
    else
        tb__log(TB_LOG_INFO, "worker %d: stopping: cancelling %s", w->index,
                extra);
}

void tb__task_cancel_all_on_worker(tb__worker *w)
{
    log_stop_cancels(w);
    for (tb_task *t = w->live; t; t = t->wnext) {
        tb__task_request_cancel(t);
        tb__task_deliver_cancel(t);
    }
}

int tb__task_abandon_all_on_worker(tb__worker *w)
{
    int n = 0;
    while (w->live) {
        tb_task *t = w->live;
        if (t->queued) {
            /* Ready but never got to run again before the deadline. */
            tb_task **pp = &w->runq_head, *prev = NULL;
            while (*pp != t) {
                prev = *pp;
                pp = &(*pp)->rnext;
            }
            *pp = t->rnext;
            if (w->runq_tail == t)
                w->runq_tail = prev;
            t->queued = 0;
        }
        finish(t, 1);
        n++;
    }
    return n;
}

/* --------------------------------------------------------------- suspension */

int tb__task_enter(tb_task *self, const char *who)
{
    if (!self || self != current_task || tb__coro_self() == NULL) {
        fprintf(stderr,
                "taskbus: %s called outside its task (it suspends, so it may "
                "only run inside the task it is given)\n",
                who);
        abort();
    }
    if (atomic_load_explicit(&self->cancel_pending, memory_order_relaxed) &&
        atomic_exchange(&self->cancel_pending, 0))
        return TB_ECANCELED;
    return 0;
}

uint64_t tb__task_begin_wait(tb_task *self, int wait_kind)
{
    self->wait_kind = wait_kind;
    return ++self->wait_seq;
}

int tb__task_suspend(tb_task *self, const char *who)
{
    tb__coro_yield(who);
    return self->wake_code;
}

int tb__task_wake(tb_task *t, uint64_t seq, int code)
{
    if (t->wait_kind == TB__WAIT_NONE || t->wait_seq != seq)
        return 0;
    t->wait_kind = TB__WAIT_NONE;
    t->wake_code = code;
    tb__worker_enqueue(t->w, t);
    return 1;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb_task *t = arg;
    t->timer_armed = 0;
    tb__task_wake(t, t->timer_seq, TB_ETIMEDOUT);
}

int tb__task_arm_timer(tb_task *t, tb__timer *tmr, uint64_t seq, int64_t ms)
{
    struct event *ev = &tmr->ev;
    struct timeval tv;
    if (evtimer_assign(ev, t->w->base, on_timer, t) != 0)
        return TB_ENOMEM;
    t->timer = ev;
    t->timer_seq = seq;
    if (evtimer_add(ev, tb__worker_timeout(t->w, ms, &tv)) != 0)
        return TB_ENOMEM;
    t->timer_armed = 1;
    return 0;
}

static int count_timer(const struct event_base *base, const struct event *ev,
                       void *arg)
{
    (void)base;
    if (event_get_callback(ev) == on_timer)
        ++*(int *)arg;
    return 0;
}

int tb__task_timers_left(struct event_base *base)
{
    int n = 0;
    event_base_foreach_event(base, count_timer, &n);
    return n;
}

void tb__task_disarm_timer(tb_task *self)
{
    if (self->timer_armed) {
        evtimer_del(self->timer);
        self->timer_armed = 0;
    }
}

/* ---------------------------------------------------------------- in a task */

tb_app *tb_task_app(tb_task *self)
{
    return self->app;
}

const char *tb_task_name(const tb_task *self)
{
    return self->name;
}

uint64_t tb_task_id(const tb_task *self)
{
    return self->id;
}

int tb_task_worker(const tb_task *self)
{
    return self->worker;
}

int tb_task_cancelled(const tb_task *self)
{
    return atomic_load(&self->cancel_requested);
}

void tb_task_fail(tb_task *self, const char *fmt, ...)
{
    char buf[TB_TASK_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *copy = strdup(buf[0] ? buf : "failed");
    pthread_mutex_lock(&self->app->reg_mu);
    free(self->error);
    self->error = copy;
    pthread_mutex_unlock(&self->app->reg_mu);
}

int tb_sleep(tb_task *self, int64_t ms)
{
    int rc = tb__task_enter(self, "tb_sleep");
    if (rc)
        return rc;
    if (ms < 0)
        return TB_EINVAL;
    uint64_t seq = tb__task_begin_wait(self, TB__WAIT_SLEEP);
    tb__timer tmr;
    if (ms == 0)
        tb__task_wake(self, seq, 0); /* back of the run queue */
    else if ((rc = tb__task_arm_timer(self, &tmr, seq, ms)) != 0) {
        self->wait_kind = TB__WAIT_NONE;
        return rc;
    }
    rc = tb__task_suspend(self, "tb_sleep");
    tb__task_disarm_timer(self);
    return rc == TB_ETIMEDOUT ? 0 : rc;
}

int tb_yield(tb_task *self)
{
    int rc = tb__task_enter(self, "tb_yield");
    if (rc)
        return rc;
    uint64_t seq = tb__task_begin_wait(self, TB__WAIT_SLEEP);
    tb__task_wake(self, seq, 0);
    return tb__task_suspend(self, "tb_yield");
}

/* -------------------------------------------------------- waiting for tasks */

static int64_t deadline_left_ms(tb__deadline *d)
{
    if (d->timeout_ms < 0)
        return -1;
    int64_t now = tb__mono_us();
    if (!d->at_us)
        d->at_us = now + (int64_t)d->timeout_ms * 1000;
    int64_t left = d->at_us - now;
    return left <= 0 ? 0 : (left + 999) / 1000;
}

int tb__task_wait_finished(tb_task *self, tb_task *target, tb__deadline *dl,
                           const char *who)
{
    tb_app *app = self->app;
    for (int round = 0;; round++) {
        int rc = tb__task_enter(self, who);
        if (rc)
            return rc;
        /* Same thread: its state is only written here, no lock needed to
         * read it, and no clock either when it has already ended. */
        int same = target->w == self->w;
        if (same && tb__task_finished(target))
            return 0;
        int64_t left_ms =
            round == 0 && same && target->queued ? -1 : deadline_left_ms(dl);
        if (same && left_ms != 0 && target->queued) {
            /* It is ready to run on this very worker (typically: just
             * cancelled): going to the back of the run queue lets it end
             * first, with no watch and no timer to set up. */
            uint64_t seq = tb__task_begin_wait(self, TB__WAIT_SLEEP);
            tb__task_wake(self, seq, 0);
            tb__task_suspend(self, who);
            continue;
        }
        tb__watch watch = {.waiter = self};
        tb__timer tmr;
        pthread_mutex_lock(&app->reg_mu);
        if (tb__task_finished(target)) {
            pthread_mutex_unlock(&app->reg_mu);
            return 0;
        }
        if (left_ms == 0) {
            pthread_mutex_unlock(&app->reg_mu);
            return TB_ETIMEDOUT;
        }
        watch.seq = tb__task_begin_wait(self, TB__WAIT_TASK);
        watch.next = target->watchers;
        target->watchers = &watch;
        pthread_mutex_unlock(&app->reg_mu);
        if (left_ms > 0 && tb__task_arm_timer(self, &tmr, watch.seq, left_ms)) {
            self->wait_kind = TB__WAIT_NONE;
            rc = TB_ENOMEM;
        } else {
            rc = tb__task_suspend(self, who);
        }
        tb__task_disarm_timer(self);
        pthread_mutex_lock(&app->reg_mu);
        for (tb__watch **pp = &target->watchers; *pp; pp = &(*pp)->next) {
            if (*pp == &watch) {
                *pp = watch.next;
                break;
            }
        }
        int done = tb__task_finished(target);
        pthread_mutex_unlock(&app->reg_mu);
        if (done)
            return 0;
        if (rc)
            return rc;
    }
}

/* ---------------------------------------------------------------- blocking */

int tb_run_blocking(tb_task *self, int (*fn)(void *arg), void *arg, int *ret)
{
    int rc = tb__task_enter(self, "tb_run_blocking");
    if (rc)
        return rc;
    if (!fn)
        return TB_EINVAL;
    tb__blocking_job job = {.fn = fn, .arg = arg, .task = self};
    job.seq = tb__task_begin_wait(self, TB__WAIT_BLOCKING);
    tb__task_ref(self); /* the pool hands it to the wake message */
    rc = tb__blocking_submit(self->app, &job);
    if (rc) {
        tb__task_unref(self);
        self->wait_kind = TB__WAIT_NONE;
        return rc;
    }
    tb__task_suspend(self, "tb_run_blocking");
    if (ret)
        *ret = job.ret;
    if (atomic_exchange(&self->cancel_pending, 0))
        return TB_ECANCELED;
    return 0;
}
