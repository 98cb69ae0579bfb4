/* periodic.c - periodic tasks: a singleton whose run fires its action
 * once per wall-clock tick for the whole cluster; and the durations
 * ("30s") they are given with. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "kinds.h"
#include "singleton_impl.h"

int tb__duration_ms(const char *s, int64_t *ms)
{
    if (!s)
        return TB_EINVAL;
    int64_t v = 0;
    int digits = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        v = v * 10 + (*p - '0');
        if (v > TB_PERIODIC_MAX_MS)
            return TB_EINVAL;
    }
    int64_t unit;
    if (!strcmp(p, "ms"))
        unit = 1;
    else if (!strcmp(p, "s"))
        unit = 1000;
    else if (!strcmp(p, "m"))
        unit = 60 * 1000;
    else if (!strcmp(p, "h"))
        unit = 3600 * 1000;
    else
        return TB_EINVAL;
    if (!digits || v > TB_PERIODIC_MAX_MS / unit)
        return TB_EINVAL;
    *ms = v * unit;
    return 0;
}

/* ---------------------------------------------------------------- periodic */

/* Records tick under r's fence (the blocking pool's thread): 0 to fire. */
typedef struct tick_job {
    single *r;
    int64_t tick;
} tick_job;

static int tick_blocking(void *ud)
{
    tick_job *j = ud;
    tb__singletons *s = j->r->s;
    tb__opwait *w = tb__opwait_new();
    if (!w)
        return TB_ENOMEM;
    int rc = s->ops->tick(s->app->bus, j->r->name, j->tick, j->r->fence,
                          tb__opwait_done_cb, w);
    return tb__sl_sync_done(s, rc, w);
}

/* Runs the action once, in a child task of its own, and waits for it. */
static void fire(tb_task *self, single *r)
{
    tb_app *app = tb_task_app(self);
    tb_task_opts o = {.worker = TB_WORKER_ANY,
                      .flags = TB__TASK_LOCAL,
                      .kind = r->kind ? r->kind : "periodic"};
    tb__add_extra x = {.iflags = TB__TASK_LOCAL};
    uint64_t id = 0;
    char err[256] = "";
    int rc = r->fn ? tb__task_add(app, r->fn, r->ud, &o, &x, &id)
                   : tb__kind_spawn(app, r->kind, r->args, &o, &x, &id, err,
                                    sizeof err);
    int result = rc;
    tb_task_state st = TB_TASK_FAILED;
    if (rc == 0) {
        char child[32];
        snprintf(child, sizeof child, "task-%" PRIu64, id);
        rc = tb_task_join(self, child, -1, &result, &st);
        if (rc == TB_ECANCELED) {
            /* Nothing we started outlives us. */
            tb_task_cancel(app, child, TB_TIMEOUT_DEFAULT);
            tb_task_join(self, child, -1, &result, &st);
        }
        tb__task_forget(app, child, id);
    } else {
        tb__log(TB_LOG_ERROR, "periodic task %s: cannot start its run: %s",
                r->name, err[0] ? err : tb_strerror(rc));
    }
    pthread_mutex_lock(&app->reg_mu);
    r->last_result = result;
    r->last_state = (int)st;
    r->nruns++;
    pthread_mutex_unlock(&app->reg_mu);
}

/* Counts n ticks of r that passed without firing anywhere, and says so:
 * a tick is either fired once or counted here (the reason: no instance
 * held the lease then, or its run woke too late, e.g. a busy machine). */
static void skipped(tb__singletons *s, single *r, int64_t n, int64_t tick)
{
    if (n <= 0)
        return;
    atomic_fetch_add(&s->ticks_skipped, (uint64_t)n);
    tb__log(TB_LOG_WARN,
            "periodic task %s: %" PRId64 " tick(s) before tick %" PRId64
            " skipped: no run held the lease or woke in time for them",
            r->name, n, tick);
}

int tb__periodic_main(tb_task *self, void *ud)
{
    single *r = ud;
    tb__singletons *s = r->s;
    tb_app *app = s->app;
    int64_t every_us = r->every_ms * 1000;
    int64_t last_tick = -1;
    /* The tick current when this run was started (not when its task got
     * a worker, later on a busy machine): the ticks after it that this run
     * misses before its first are its own to count. */
    int64_t start_tick = r->started_us / every_us;
    for (;;) {
        int64_t now = tb__now_us();
        int64_t next = (now / every_us + 1) * every_us;
        pthread_mutex_lock(&app->reg_mu);
        r->next_run_us = next;
        pthread_mutex_unlock(&app->reg_mu);
        int rc = tb_sleep(self, (next - now + 999) / 1000);
        if (rc)
            return 0; /* cancelled: ends cancelled */
        /* The latest tick: one missed while suspended (or while nobody ran
         * it) is skipped, not replayed. */
        int64_t tick = tb__now_us() / every_us;
        if (tick <= last_tick)
            continue;
        int64_t late = tick - (last_tick < 0 ? start_tick : last_tick) - 1;
        last_tick = tick;
        if (s->ops) {
            tick_job j = {r, tick};
            int st = 0;
            rc = tb_run_blocking(self, tick_blocking, &j, &st);
            if (rc) {
                /* Cancelled (its lease lost, say) while Redis may have
                 * recorded the tick: it will not fire. */
                atomic_fetch_add(&s->ticks_skipped, 1);
                return 0;
            }
            if (st == TB_EEXIST) { /* fired by someone else already */
                atomic_fetch_add(&s->ticks_skipped, 1);
                continue;
            }
            if (st == TB_EPERM) {
                tb__sl_lose(s, r, "Redis says another instance holds it");
                return 0;
            }
            if (st < 0) {
                /* Counted now: Redis may have recorded it (the answer was
                 * lost), and then no later gap counts it. */
                atomic_fetch_add(&s->ticks_skipped, 1);
                tb__log(TB_LOG_WARN,
                        "periodic task %s: tick skipped: cannot record it in "
                        "Redis (%s)",
                        r->name, tb_strerror(st));
                continue;
            }
            /* Redis counts the ticks since the last one fired in the
             * cluster, the ones of a dead or stalled owner included; for
             * a name's first tick it has none, and this run's own count
             * is the one. */
            skipped(s, r, st > late ? st : late, tick);
        } else {
            skipped(s, r, late, tick);
        }
        atomic_fetch_add(&s->ticks_fired, 1);
        pthread_mutex_lock(&app->reg_mu);
        r->last_run_us = tb__now_us();
        pthread_mutex_unlock(&app->reg_mu);
        fire(self, r);
        if (tb_task_cancelled(self))
            return 0;
    }
}
