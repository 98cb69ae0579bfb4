/* singleton_impl.h - what singleton.c and periodic.c share (private):
 * the runs, the definitions added before run, and the instance's state. */
#ifndef TASKBUS_SINGLETON_IMPL_H
#define TASKBUS_SINGLETON_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "cluster.h"
#include "internal.h"
#include "singleton.h"

struct tb__single {
    atomic_int refs; /* the runs list's + the task's (until it is freed) */
    tb__singletons *s;
    struct tb__single *next; /* s->runs */
    char *name;
    char *def; /* the definition's JSON (re-put when Redis lost it) */
    uint64_t fence;
    int64_t every_ms;
    /* What runs: a kind and its arguments, or a local function. */
    char *kind, *args;
    tb_task_fn fn;
    void *ud;
    int64_t started_us; /* wall clock: when run_start began this run */
    /* s->mu */
    uint64_t task_id;
    int64_t renew_due_us, valid_until_us; /* monotonic */
    int lost, ended;
    int renewing;      /* a renewal is in flight */
    char lost_why[96]; /* set by a renewal's answer: lose() it */
    /* reg_mu: a periodic task's record */
    int64_t last_run_us, next_run_us;
    int last_result, last_state; /* last_state -1: no run yet */
    uint64_t nruns;
};
typedef struct tb__single single;

/* The definition of a run that could not renew its lease in time (Redis
 * unreachable): restored once Redis answers, in case Redis lost its data
 * meanwhile (then nobody else knows the singleton any more). */
typedef struct orphan {
    struct orphan *next;
    char *name, *def;
} orphan;

/* A singleton this instance added before run: any instance may run it. */
typedef struct local_def {
    struct local_def *next;
    char *name;
    char *kind; /* label, may be NULL */
    tb_task_fn fn;
    void *ud;
    int64_t every_ms;
} local_def;

struct tb__singletons {
    tb_app *app;
    const tb__cluster_ops *ops; /* NULL: this instance is the cluster */
    int64_t lease_ms, margin_ms, period_ms;
    pthread_t thread, taker; /* leases; takeovers */
    int started, taker_started;
    pthread_mutex_t mu; /* guards what follows */
    pthread_cond_t cv;
    int stop;
    single *runs;
    orphan *orphans;
    local_def *locals;
    uint64_t local_fence;
    atomic_uint_fast64_t runs_started, takeovers, renewals, renew_failures,
        leases_lost, ticks_fired, ticks_skipped;
};

/* Waits for the store op that returned rc (w its waiter) for at most
 * redis.command_timeout_ms: its status. */
int tb__sl_sync_done(tb__singletons *s, int rc, tb__opwait *w);

/* Cancels run r: its lease is not ours any more (why). */
void tb__sl_lose(tb__singletons *s, single *r, const char *why);

/* The task of a periodic run r (ud): fires r's action at each tick of its
 * interval that Redis records under r's fence (periodic.c). */
int tb__periodic_main(tb_task *self, void *ud);

#endif /* TASKBUS_SINGLETON_IMPL_H */
