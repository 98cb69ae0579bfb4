/* dispatch.c - dispatching app events: checks, the hop limit, and the
 * publish with a callback or a confirmation wait. */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <time.h>

#include "envelope.h"
#include "history.h"
#include "internal.h"

/* Checks the arguments and builds the event (reference 1). */
int tb__event_make(tb_app *app, const char *name, const void *data, size_t len,
                   tb_event **out)
{
    if (!app || !name || (len && !data))
        return TB_EINVAL;
    int rc = tb_event_name_valid(name);
    if (rc)
        return rc;
    if (len > app->cfg.core.max_event_size)
        return TB_EMSGSIZE;
    if (!tb__utf8_valid(data, len))
        return TB_EINVAL;
    if (!atomic_load_explicit(&app->bus_up, memory_order_acquire))
        return TB_ESHUTDOWN;
    *out = tb__event_new(app, name, data, len, NULL, NULL, 0);
    return *out ? 0 : TB_ENOMEM;
}

int tb_dispatch(tb_app *app, const char *name, const void *data, size_t len,
                char *id_out)
{
    return tb_dispatch_from(app, NULL, name, data, len, id_out);
}

/* Counts a re-dispatch refused at event_max_hops, and says so at most once
 * a second (a cycle refuses one event per turn). */
static void hop_limit(tb_app *app, const tb_event *cause, const char *name)
{
    atomic_fetch_add(&app->hop_limit_drops, 1);
    int64_t now = tb__mono_us();
    int64_t last = atomic_load(&app->hop_limit_logged_us);
    if (now - last < 1000000 ||
        !atomic_compare_exchange_strong(&app->hop_limit_logged_us, &last, now))
        return;
    tb__log(TB_LOG_WARN,
            "event \"%s\" not dispatched: its cause \"%s\" (id %s) has "
            "already been re-dispatched %d times (event_max_hops; a relay "
            "cycle?); %llu refused in all",
            name, cause->name, cause->id, cause->hops,
            (unsigned long long)atomic_load(&app->hop_limit_drops));
}

int tb_dispatch_from(tb_app *app, const tb_event *cause, const char *name,
                     const void *data, size_t len, char *id_out)
{
    if (app && cause && name && cause->hops >= app->cfg.core.event_max_hops) {
        hop_limit(app, cause, name);
        return TB_ELOOP;
    }
    tb_event *ev;
    int rc = tb__event_make(app, name, data, len, &ev);
    if (rc)
        return rc;
    if (cause)
        ev->hops = cause->hops + 1;
    rc = app->bus->ops->publish(app->bus, ev, NULL, NULL);
    if (rc == 0 && id_out)
        memcpy(id_out, ev->id, sizeof ev->id);
    tb_event_unref(ev);
    return rc;
}

int tb__dispatch_cb(tb_app *app, const char *name, const void *data, size_t len,
                    tb__publish_cb cb, void *ud, char *id_out)
{
    tb_event *ev;
    int rc = tb__event_make(app, name, data, len, &ev);
    if (rc)
        return rc;
    rc = app->bus->ops->publish(app->bus, ev, cb, ud);
    if (rc == 0 && id_out)
        memcpy(id_out, ev->id, sizeof ev->id);
    tb_event_unref(ev);
    return rc;
}

/* What tb_dispatch_wait and the bus's publish callback share: it outlives
 * whichever side gives up first. */
typedef struct tb__confirm {
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int status;
    tb_task *task; /* waiting task, or NULL for a waiting thread; cleared
                      (under mu) when the task stops waiting or ends */
    uint64_t seq;
} confirm;

static void confirm_unref(confirm *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

/* The bus's publish callback. c->task is only read under c->mu: the
 * waiting task clears it when it stops waiting. */
static void on_confirmed(int status, void *ud)
{
    confirm *c = ud;
    pthread_mutex_lock(&c->mu);
    c->done = 1;
    c->status = status;
    if (!c->task) {
        pthread_cond_signal(&c->cv);
    } else if (tb_task_current() != c->task) {
        /* Not called from inside the waiting task itself (the memory bus
         * confirms synchronously): wake it through its inbox. */
        tb__task_ref(c->task);
        if (tb__worker_post(c->task->w, TB__MSG_WAKE, c->task, c->seq, 0))
            tb__task_unref(c->task);
    }
    pthread_mutex_unlock(&c->mu);
    confirm_unref(c);
}

int tb_dispatch_wait(tb_app *app, const char *name, const void *data,
                     size_t len, int timeout_ms, char *id_out)
{
    tb_task *self = tb_task_current();
    if (self && self->app != app)
        self = NULL;
    if (!self && tb__worker_current())
        return TB_EDEADLK; /* a worker's loop must never block */
    int rc = self ? tb__task_enter(self, "tb_dispatch_wait") : 0;
    if (rc)
        return rc;
    tb_event *ev;
    if ((rc = tb__event_make(app, name, data, len, &ev)) != 0)
        return rc;
    if (timeout_ms == TB_TIMEOUT_DEFAULT)
        timeout_ms = app->cfg.redis.command_timeout_ms;
    confirm *c = calloc(1, sizeof *c);
    if (!c) {
        tb_event_unref(ev);
        return TB_ENOMEM;
    }
    atomic_init(&c->refs, 2); /* ours + the callback's */
    pthread_mutex_init(&c->mu, NULL);
    tb__cond_init_mono(&c->cv);
    c->task = self;
    if (self) {
        c->seq = tb__task_begin_wait(self, TB__WAIT_TASK);
        self->confirm = c;
    }

    rc = app->bus->ops->publish(app->bus, ev, on_confirmed, c);
    if (rc == 0 && id_out)
        memcpy(id_out, ev->id, sizeof ev->id);
    tb_event_unref(ev);
    if (rc) {
        if (self) {
            self->wait_kind = TB__WAIT_NONE;
            self->confirm = NULL;
        }
        atomic_fetch_sub(&c->refs, 1); /* the callback will never run */
        confirm_unref(c);
        return rc;
    }

    if (self) {
        pthread_mutex_lock(&c->mu);
        int done = c->done;
        pthread_mutex_unlock(&c->mu);
        tb__timer tmr;
        if (done) {
            self->wait_kind = TB__WAIT_NONE;
        } else if (timeout_ms >= 0 &&
                   (rc = tb__task_arm_timer(self, &tmr, c->seq, timeout_ms))) {
            self->wait_kind = TB__WAIT_NONE;
        } else {
            rc = tb__task_suspend(self, "tb_dispatch_wait");
            tb__task_disarm_timer(self);
        }
        pthread_mutex_lock(&c->mu);
        if (rc == 0)
            rc = c->done ? c->status : TB_ETIMEDOUT;
        /* Given up (timed out or cancelled): the confirmation may still
         * come after this task has ended and been freed, so it must not
         * wake the task any more. */
        if (!c->done)
            c->task = NULL;
        pthread_mutex_unlock(&c->mu);
        self->confirm = NULL;
    } else {
        struct timespec ts;
        tb__deadline_ts(&ts, timeout_ms < 0 ? 0 : timeout_ms);
        pthread_mutex_lock(&c->mu);
        while (!c->done) {
            if (timeout_ms < 0)
                pthread_cond_wait(&c->cv, &c->mu); /* no limit */
            else if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) == ETIMEDOUT)
                break;
        }
        rc = c->done ? c->status : TB_ETIMEDOUT;
        pthread_mutex_unlock(&c->mu);
    }
    confirm_unref(c);
    return rc;
}

void tb__event_abandon_confirm(tb_task *t)
{
    confirm *c = t->confirm;
    if (!c)
        return;
    t->confirm = NULL;
    pthread_mutex_lock(&c->mu);
    c->task = NULL;
    pthread_mutex_unlock(&c->mu);
    confirm_unref(c); /* the wait's reference: it never returns */
}
