/* internal.h - the core's private structures: app, worker, task, event. */
#ifndef TASKBUS_INTERNAL_H
#define TASKBUS_INTERNAL_H

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event_struct.h> /* struct event, for tb__timer */

#include "taskbus/taskbus.h"

#include "adapter.h" /* what adapters see of the core; bus.h, log.h */
#include "bus.h"
#include "coro.h"
#include "htab.h"
#include "interest.h"
#include "log.h"
#include "pattern.h"

struct event_base;
struct event;
struct tb__worker;

/* ---------------------------------------------------------------- events */

typedef struct tb__json {
    size_t len;
    char text[];
} tb__json;

struct tb_event {
    atomic_int refs;
    size_t len;
    int64_t ts_us;
    const char *name; /* points into the same allocation */
    const char *data; /* NUL-terminated copy of the data */
    /* tb_event_json's envelope, made on first use: its length, then the
     * text (one allocation, published whole). */
    _Atomic(struct tb__json *) json;
    char id[TB_EVENT_ID_MAX];
    char origin[48];
    int hops;      /* re-dispatches behind it (tb_dispatch_from, relays) */
    int max_depth; /* its app's json_max_depth, for tb_event_json */
    uint64_t seq;  /* its position's seq; 0: no position */
    char pos[TB_POS_MAX]; /* "<epoch>-<seq>" (history.h), or "" */
    /* name and data follow */
};

/* Allocates an event with refcount 1. id NULL: a fresh unique id is made;
 * origin NULL: this thread's "<instance>/<worker>". Returns NULL on ENOMEM.
 * No validation: callers check the name and size first. */
tb_event *tb__event_new(tb_app *app, const char *name, const void *data,
                        size_t len, const char *id, const char *origin,
                        int64_t ts_us);

/* Checks an event to dispatch (tb_dispatch's rules: name, size, UTF-8,
 * the bus up) and makes it: 0 and *out (refcount 1), or the TB_E* code of
 * the check that failed. */
int tb__event_make(tb_app *app, const char *name, const void *data, size_t len,
                   tb_event **out);

/* Makes the event and hands it to the bus with cb(ud) (the bus's
 * publish callback: it runs once, on the bus's thread or, for the memory
 * bus, before this returns), never waiting. 0 with its id in id_out (may
 * be NULL), or tb__event_make's and publish's codes; cb never runs then. */
int tb__dispatch_cb(tb_app *app, const char *name, const void *data, size_t len,
                    tb__publish_cb cb, void *ud, char *id_out);

/* tb_dispatch_many without a wait: makes and hands over the n events as
 * tb__dispatch_many_start does (same codes, ids and *bad), with cb(uds[i])
 * as each one's publish callback. 0: each cb runs exactly once (none when
 * n is 0); else none runs. */
int tb__dispatch_many_cb(tb_app *app, const tb_event_item *items, size_t n,
                         char (*ids)[TB_EVENT_ID_MAX], size_t *bad,
                         tb__publish_cb cb, void *const *uds);

/* tb_dispatch_many in two steps (event_batch.c), so that a caller can let
 * go of the items' memory while the bus confirms them. start checks, makes
 * and hands over the events as tb_dispatch_many does and returns its
 * codes, filling ids, status (for every event: 0 taken, else the code) and
 * *bad; the items are copied and the caller may free them once it
 * returns. With timeout_ms nonzero and 0 returned, *out is the batch to
 * pass to tb__dispatch_many_wait exactly once (which frees it); else
 * *out is NULL. wait blocks as tb_dispatch_many does, fills status and
 * returns the first nonzero one. */
typedef struct tb__many tb__many;
int tb__dispatch_many_start(tb_app *app, const tb_event_item *items, size_t n,
                            int timeout_ms, char (*ids)[TB_EVENT_ID_MAX],
                            int *status, size_t *bad, tb__many **out);
int tb__dispatch_many_wait(tb__many *m, int *status);

/* ---------------------------------------------------------------- messages */

/* What other threads post to a worker. ptr holds a reference (task or
 * event) that the worker drops once it has handled the message. */
enum {
    TB__MSG_SPAWN,  /* ptr: tb_task, newly registered on this worker */
    TB__MSG_CANCEL, /* ptr: tb_task to deliver a cancel to */
    TB__MSG_WAKE,   /* ptr: tb_task; seq/code: wake it if still waiting */
    TB__MSG_EVENT,  /* ptr: tb_event to deliver to this worker's waiters */
    TB__MSG_STOP,   /* begin this worker's shutdown */
    TB__MSG_CALL    /* ptr: tb__call (fn + arg) run on the worker */
};

typedef struct tb__msg {
    int kind;
    int code;
    uint64_t seq;
    void *ptr;
} tb__msg;

typedef struct tb__call {
    void (*fn)(tb_app *app, int worker, void *arg);
    void (*drop)(void *arg); /* when the worker ends before running it;
                                may be NULL */
    void *arg;
} tb__call;

/* Posts a call of fn(app, worker, arg) to w. If w's loop has ended by then,
 * drop(arg) runs instead (at tb_app_free). 0 or TB_ENOMEM (then neither
 * runs). */
int tb__worker_call(struct tb__worker *w,
                    void (*fn)(tb_app *app, int worker, void *arg),
                    void (*drop)(void *arg), void *arg);

/* ---------------------------------------------------------------- listeners */

/* A waiter (one-shot, from tb_event_wait) or a subscription, registered in
 * its worker's index: exact patterns in a table by name, the others in a
 * table by their literal prefix (the segments before the first wildcard),
 * so that an event is matched only against the wildcard patterns that
 * begin as its name does. Lives on the waiting task's stack (waiter) or in
 * the tb_sub allocation. Only touched on its worker's thread. */
typedef struct tb__listener tb__listener;
struct tb__listener {
    tb__listener *prev, *next;  /* in its bucket */
    struct tb__lbucket *bucket; /* while linked */
    tb__pattern pat;
    tb_task *task;
    tb_sub *sub;   /* NULL for a one-shot waiter */
    uint64_t seq;  /* waiter: the wait it belongs to */
    int linked;    /* in the index now */
    tb_event *got; /* waiter: the event delivered */
};

typedef struct tb__lbucket {
    tb__hnode node; /* keyed by name */
    tb__listener *head, *tail;
    int wild;    /* in the worker's wild table (then depth, name a prefix) */
    int depth;   /* wild: the prefix's segments, 0..TB_EVENT_SEGMENTS_MAX-1 */
    char name[]; /* the exact name, or the wildcard patterns' prefix */
} tb__lbucket;

struct tb_sub {
    tb__listener l;
    tb_task *task;
    tb_sub *tnext, *tprev; /* the task's subscriptions */
    tb_event **ring;
    int cap;  /* the bound: beyond it the oldest is dropped */
    int size; /* ring's allocation, grown up to cap */
    int head, count;
    uint64_t dropped;
    int waiting; /* its task is suspended in tb_sub_next on it */
    uint64_t wait_seq;
    uint64_t last_seq;    /* the worker's deliver_seq of the last event
                             queued: queued once however many match */
    tb__listener **extra; /* patterns beyond the first (tb_sub_add) */
    int nextra, extra_cap;
    struct tb__resume *rs; /* tb_sub_resume's state, or NULL */
    /* tb__sub_notify's: called for each event queued, instead of waking
     * the task (which then never waits in tb_sub_next on s). */
    void (*notify)(void *arg);
    void *notify_arg;
};

/* ---------------------------------------------------------------- tasks */

enum {
    TB__WAIT_NONE = 0,
    TB__WAIT_SLEEP,
    TB__WAIT_EVENT,
    TB__WAIT_SUB,
    TB__WAIT_TASK,     /* join / cancel waiting for another task */
    TB__WAIT_BLOCKING, /* tb_run_blocking: cancel does not wake it */
    TB__WAIT_WS        /* tb_ws_recv */
};

/* A registration on a task's finish list: whoever waits for it (a task on
 * some worker, woken through its inbox) - see tb__task_wait_finished(). */
typedef struct tb__watch {
    struct tb__watch *next;
    tb_task *waiter;
    uint64_t seq;
} tb__watch;

struct tb_task {
    /* Packed (one byte of padding left), one-byte flags: cancelling 100 000
     * tasks by name is bound by cache misses, and every line of a task counts
     * (docs/BENCHMARKS.md, section 1). */

    /* --- registry: written under app->reg_mu --- */
    tb_task *all_prev, *all_next; /* app->all_*, ordered by id */
    uint64_t id;
    char *name;
    char *kind;
    char *error;
    int worker;
    tb_task_state state;
    int result;
    bool replica;   /* one of a pre-run named task's replicas */
    bool ephemeral; /* TB_TASK_EPHEMERAL: dropped from the registry at end */
    bool hidden;    /* TB__TASK_HIDDEN: the cluster's own, never listed */
    bool claimed;   /* its name is claimed across the cluster (cluster.c) */
    uint64_t fence; /* a singleton run's fencing token; else 0 */
    struct tb__single *single; /* a singleton run: singleton.c's; else NULL */
    int64_t created_us, started_us, ended_us;
    tb__watch *watchers;
    atomic_int refs; /* registry + worker + in-flight messages */

    /* --- cancel flags: any thread --- */
    atomic_int cancel_requested; /* sticky */
    atomic_int cancel_pending;   /* consumed when delivered */

    /* --- worker side: only on the worker's thread --- */
    int fn_result; /* copied to result under reg_mu at the end */
    tb_app *app;
    struct tb__worker *w;
    tb__coro *co;
    tb_task_fn fn;
    void *arg;
    void (*arg_free)(void *);
    tb_task *rnext;         /* run queue */
    tb_task *wprev, *wnext; /* the worker's live tasks */
    uint64_t wait_seq;
    int wake_code;
    unsigned char wait_kind; /* TB__WAIT_* */
    bool queued;
    bool timer_armed;
    struct event *timer; /* the armed wait's (tb__timer), else stale */
    uint64_t timer_seq;
    tb_sub *subs;
    tb__listener *waiter;        /* while in tb_event_wait */
    struct tb__confirm *confirm; /* while in tb_dispatch_wait */
    /* Last, so that a lookup's compare finds the node and a short name in
     * one cache line. */
    tb__hnode node;  /* in app->names, keyed by name */
    char name_buf[]; /* name points here */
};

void tb__task_ref(tb_task *t);
void tb__task_unref(tb_task *t);

/* Internal flags of tb__task_add, beside the public TB_TASK_* ones. */
enum {
    TB__TASK_LOCAL = 1u << 24,  /* a name of this instance only (a request's
                                   or a connection's): never claimed */
    TB__TASK_HIDDEN = 1u << 25, /* the cluster's own helper: not listed,
                                   not claimed */
};

/* What tb__task_add takes and tells beyond tb_task_add's. */
typedef struct tb__add_extra {
    unsigned iflags;           /* TB__TASK_* */
    uint64_t fence;            /* a singleton run's fence */
    struct tb__single *single; /* a singleton run's state (singleton.c) */
    char holder[24]; /* out: on TB_EEXIST, the instance holding the name */
} tb__add_extra;

/* tb_task_add with x (may be NULL). */
int tb__task_add(tb_app *app, tb_task_fn fn, void *ud, const tb_task_opts *o,
                 tb__add_extra *x, uint64_t *id_out);

/* Drops the finished task name with id from the registry, if it is there
 * (a periodic task's run, once its result is recorded). Any thread. */
void tb__task_forget(tb_app *app, const char *name, uint64_t id);

/* Copies t's state into *o (reg_mu held). */
void tb__task_info_fill(const tb_task *t, tb_task_info *o);

/* A task that ends while suspended in tb_dispatch_wait (abandoned at
 * shutdown) lets go of its confirmation, so that the bus's later callback
 * no longer points at it. Its worker's thread, from finish(). */
void tb__event_abandon_confirm(tb_task *t);

/* 1 once t has ended (done, failed or cancelled). Read under reg_mu, or on
 * t's own worker. */
static inline int tb__task_finished(const tb_task *t)
{
    return t->state >= TB_TASK_DONE;
}

/* task.c: unlinks t from the registry (reg_mu held) and drops the
 * registry's reference. */
void tb__task_registry_drop(tb_app *app, tb_task *t);

/* Marks t cancel-requested (sticky) and cancel-pending (consumed by the
 * delivery, tb__task_deliver_cancel). Any thread. */
void tb__task_request_cancel(tb_task *t);

/* A deadline read from the clock only once something has to wait, shared
 * by several waits in a row. */
typedef struct tb__deadline {
    int timeout_ms; /* negative: none */
    int64_t at_us;  /* monotonic; 0 until computed */
} tb__deadline;

/* Suspends self (TB_TASK_FN) until target has finished or dl passes: 0,
 * TB_ETIMEDOUT, TB_ECANCELED, TB_ENOMEM. who names the caller for
 * tb__task_enter. */
int tb__task_wait_finished(tb_task *self, tb_task *target, tb__deadline *dl,
                           const char *who);

/* tb_task_cancel, and then, unless it returns TB_ENOENT or TB_EINVAL or
 * TB_ENOMEM, a snapshot of the first (lowest id) of the tasks it cancelled
 * in *out and their number in *count (either may be NULL), taken after the
 * wait: the cancelled task's final state even if another task has taken
 * the name since. only_id, when not 0, limits the cancel to the task of
 * that name with that id (a name whose task ended may be taken by another
 * before the caller gets to cancel it). */
int tb__task_cancel_report(tb_app *app, const char *name, uint64_t only_id,
                           int timeout_ms, tb_task_info *out, int *count);

/* Suspension protocol, used by every TB_TASK_FN:
 *   rc = tb__task_enter(self, "tb_x");     aborts unless self is running here;
 *                                          TB_ECANCELED if a cancel is pending
 *   seq = tb__task_begin_wait(self, kind); then register wake sources with seq
 *   rc = tb__task_suspend(self, "tb_x");   yields; returns the wake code
 *   ... unregister whatever did not fire (listener, timer, watch).
 */
int tb__task_enter(tb_task *self, const char *who);
uint64_t tb__task_begin_wait(tb_task *self, int wait_kind);
int tb__task_suspend(tb_task *self, const char *who);
/* Disarms self's timer if armed. */
/* How many task timers (tb__task_arm_timer) are still in base: 0 once
 * every waiting function and every task's end has disarmed its own. */
int tb__task_timers_left(struct event_base *base);

void tb__task_disarm_timer(tb_task *self);

/* Wakes task t (on its own worker's thread) with code if it is still in the
 * wait numbered seq. Returns 1 if it woke it. */
int tb__task_wake(tb_task *t, uint64_t seq, int code);

/* One libevent timer in the frame of the function that waits: on the
 * task's own stack, a page that the task touches anyway. A timer per task
 * on the heap cost a malloc and a free per task, and unlinking it from
 * libevent's list touched its neighbour, another task's cold allocation:
 * an eighth of cancel+join's time (docs/BENCHMARKS.md, section 1). */
typedef struct tb__timer {
    struct event ev;
} tb__timer;

/* Arms a timer in *tmr to wake t's current wait with TB_ETIMEDOUT after ms.
 * *tmr must stay in place until tb__task_disarm_timer(t), which every
 * waiting function calls before it returns (finish() does for a task that
 * ends suspended). 0, or TB_ENOMEM with nothing armed. */
int tb__task_arm_timer(tb_task *t, tb__timer *tmr, uint64_t seq, int64_t ms);

/* Runs t (popped from the run queue) until it suspends or ends. */
void tb__task_run(tb_task *t);

/* Worker side of messages. */
void tb__task_start_on_worker(tb_task *t); /* SPAWN */
void tb__task_deliver_cancel(tb_task *t);  /* CANCEL */
/* Runs every task in w's run queue present at entry. */
void tb__worker_run_ready(struct tb__worker *w);

/* Creates the worker's replica of every task added before run. */
void tb__task_start_prerun(struct tb__worker *w);

/* Asks t (a task of the calling worker) to cancel, without waiting. */
void tb__task_cancel_async(tb_task *t);

/* Cancels every live task of w; used at shutdown. */
void tb__task_cancel_all_on_worker(struct tb__worker *w);
/* Ends tasks that ignored cancellation until the graceful timeout. Returns
 * how many were abandoned. */
int tb__task_abandon_all_on_worker(struct tb__worker *w);

void tb__task_free_registry(tb_app *app);

/* Event delivery on a worker, and listener bookkeeping. */
void tb__event_deliver_local(struct tb__worker *w, tb_event *ev);
int tb__listener_add(struct tb__worker *w, tb__listener *l);
void tb__listener_remove(struct tb__worker *w, tb__listener *l);
void tb__sub_close_all(tb_task *t);
/* From now on each event queued on s calls fn(arg) on s's worker, right
 * as it is queued (inside the delivery: fn must not close s or change
 * listeners), and s's task is never woken for s: fn takes the events with
 * tb__sub_pop. So a connection's deliveries need no task of their own
 * waiting in tb_sub_next. s still belongs to its task (closed with it). */
void tb__sub_notify(tb_sub *s, void (*fn)(void *arg), void *arg);
/* Hands s over to task to (on s's worker; s's task is not waiting in
 * tb_sub_next on it): s is to's from now on, closed when to ends. */
void tb__sub_move(tb_sub *s, tb_task *to);
/* The oldest event queued on s (a reference for the caller), without
 * waiting: 0, or TB_EAGAIN when none is. On s's worker. */
int tb__sub_pop(tb_sub *s, tb_event **ev);
/* Drops the event wait of a task abandoned while suspended in it. */
void tb__event_abandon_wait(tb_task *t);
void tb__listener_free_spares(struct tb__worker *w);

/* ---------------------------------------------------------------- workers */

#include <sys/time.h>

#define TB__COMMON_TIMEOUTS 32 /* durations given libevent's O(1) lists */

typedef struct tb__worker {
    tb_app *app;
    int index;
    pthread_t thread;
    struct event_base *base;
    struct event *inbox_ev;
    struct event *runq_ev;
    struct event *grace_ev;
    struct event *trim_ev; /* gives back idle stacks' pages, lazily */
    int trim_armed;

    pthread_mutex_t inbox_mu;
    tb__msg *inbox, *spare;
    size_t inbox_len, inbox_cap, spare_cap;
    size_t inbox_events; /* TB__MSG_EVENTs among them (worker_queue_max) */

    tb_task *runq_head, *runq_tail;
    int in_run; /* inside tb__worker_run_ready */

    tb_task *live;   /* live (not finished) tasks of this worker */
    atomic_int load; /* their number, read by other threads */

    tb__stack_pool *stacks;
    int ncommon;
    int64_t common_ms[TB__COMMON_TIMEOUTS];
    struct timeval common_tv[TB__COMMON_TIMEOUTS];
    tb__htab exact;                /* name -> tb__lbucket */
    tb__interest interest;         /* what this worker's listeners could
                                      match: events nobody here wants are
                                      not posted to it (no wake-up) */
    tb__listener *spare_listeners; /* free waiter listeners, reused */
    int nspare_listeners;
    tb__htab wild; /* literal prefix -> tb__lbucket of wildcard patterns */
    /* Buckets in wild per prefix depth: delivery looks up only the depths
     * some pattern has. */
    int wild_depths[TB_EVENT_SEGMENTS_MAX];

    struct tb_ws *ws_head;     /* open websocket connections served here */
    atomic_int nws;            /* their number, read by other threads */
    atomic_llong ws_biggest;   /* bytes held by the biggest of them that
                                  may still be shed (ws.c, ws_memory_max):
                                  raised as one grows, exact after a shed
                                  walk here */
    atomic_int ws_shed_posted; /* a shed call is on its way here */
    int ws_shedding;           /* inside ws.c's shed: no recursion */
    uint64_t deliver_seq;      /* bumped per event delivered here: a
                                  subscription with several patterns queues an
                                  event once */
    /* Events handed to a listener here (queued on a subscription, or
     * taken by a waiter), once per listener: GET /stats. Written by this
     * worker only (a relaxed load and store, no locked add on the hot
     * path), read by any thread. */
    atomic_uint_fast64_t delivered;

    int stopping; /* shutdown begun */
    int stopped;  /* loop asked to exit */
    int abandoned;
    int start_err;
    int started; /* after-start listeners done: inbox is drained */
} tb__worker;

/* Posts a message to w from any thread (including w's own). Returns 0 or
 * TB_ENOMEM (then the reference in ptr is still the caller's). */
int tb__worker_post(tb__worker *w, int kind, void *ptr, uint64_t seq, int code);
/* Posts n messages of one kind (seq and code 0) at once. All or none:
 * TB_ENOMEM leaves every reference with the caller. */
int tb__worker_post_many(tb__worker *w, int kind, void *const *ptrs, size_t n);
/* Posts the first of n events that fit under max events waiting in w's
 * inbox; returns how many it took (the rest stay the caller's). */
size_t tb__worker_post_events(tb__worker *w, tb_event *const *evs, size_t n,
                              size_t max);

/* Prepares w (base, inbox and run-queue events) on the app's thread. */
int tb__worker_init(tb__worker *w, tb_app *app, int index);

/* Thread entry of a worker. */
void *tb__worker_main(void *arg);

/* The worker running on this thread (any app), or NULL. */
tb__worker *tb__worker_current(void);

/* Called on w's thread after a task's coroutine went back to the pool. */
void tb__worker_note_stack_freed(tb__worker *w);

/* Called on w's thread when its last live task ended during shutdown. */
void tb__worker_maybe_finish_stop(tb__worker *w);

/* The timeval to pass to evtimer_add for ms on w's base: one of libevent's
 * common timeouts for durations seen before (up to TB__COMMON_TIMEOUTS),
 * else *tmp filled in. w's thread only. */
const struct timeval *tb__worker_timeout(tb__worker *w, int64_t ms,
                                         struct timeval *tmp);

/* Schedules t (on its worker's thread) to run. */
void tb__worker_enqueue(tb__worker *w, tb_task *t);

/* ---------------------------------------------------------------- blocking */

typedef struct tb__blocking_job {
    struct tb__blocking_job *next;
    int (*fn)(void *);
    void *arg;
    int ret;
    tb_task *task;
    uint64_t seq;
} tb__blocking_job;

int tb__blocking_submit(tb_app *app, tb__blocking_job *job);
void tb__blocking_shutdown(tb_app *app);

/* ---------------------------------------------------------------- app */

typedef struct tb__prerun {
    struct tb__prerun *next;
    unsigned flags;   /* TB_TASK_SINGLETON: one run in the cluster */
    int64_t every_ms; /* a periodic task's interval; else 0 */
    tb_task_fn fn;
    int fn_result; /* copied to result under reg_mu at the end */
    void *arg;
    void (*arg_free)(void *);
    char *name; /* NULL: each replica gets a generated name */
    char *kind;
} tb__prerun;

typedef struct tb__listener_fn {
    struct tb__listener_fn *next;
    tb_listener_fn fn;
    void *arg;
} tb__listener_fn;

enum {
    TB__APP_NEW = 0,
    TB__APP_STARTING,
    TB__APP_RUNNING,
    TB__APP_STOPPING,
    TB__APP_STOPPED
};

enum {
    TB__MODE_PRERUN = 0, /* before workers exist: remembered for each */
    TB__MODE_ACCEPT,     /* workers exist: created on one of them */
    TB__MODE_CLOSED      /* stopping: refused */
};

struct tb_app {
    tb_app_config cfg; /* its strings point at ns and redis_url below */
    char *ns;
    char *redis_url;
    char *http_listen;
    char instance[20]; /* random hex id of this instance */
    /* When tb_app_run began running (GET /stats's uptime): wall clock,
     * and monotonic for the uptime itself. 0 before. */
    atomic_int_fast64_t run_wall_us, run_mono_us;
    atomic_uint_fast64_t event_seq;
    void *userdata;

    atomic_int state;
    atomic_int stop_requested;
    sem_t stop_sem;

    tb__listener_fn *listeners[TB__LISTENER_COUNT];
    tb__prerun *prerun, *prerun_tail;

    tb__worker *workers;
    int nworkers;
    pthread_mutex_t start_mu;
    pthread_cond_t start_cv;
    int workers_started;
    int start_err;

    tb__bus *bus;
    atomic_int store_lost; /* tb__bus_store_lost: reassert at the next beat */
    struct tb__instances *instances;   /* instances.c, while running */
    struct tb__cluster *cluster;       /* cluster.c: calls between instances */
    struct tb__singletons *singletons; /* singleton.c, while running */
    struct tb__router *router;         /* HTTP routes, NULL if none */
    void **route_fns; /* the handlers' wrappers, freed with us */
    size_t nroute_fns;
    tb__http_server *http;          /* compose.c's, or NULL: no HTTP */
    const tb__wsconn_ops *wsconn;   /* its websockets' framing */
    struct tb__jwt *jwt;            /* jwt.c: client tokens, NULL: off */
    void *metrics;                  /* metrics.c: request counters */
    struct app_kinds *kinds;        /* kinds.c: task kinds by name */
    struct tb__ws_route *ws_routes; /* ws.c: websocket endpoints */
    atomic_int ws_clients;          /* websockets accepted, not yet freed */
    atomic_uint_fast64_t ws_slow_closes; /* closed for a full send queue */
    atomic_uint_fast64_t http_header_timeouts; /* http_front.c: heads not
                                                  complete in time */
    atomic_uint_fast64_t http_body_timeouts;   /* bodies that stalled */
    atomic_uint_fast64_t http_heads_too_large; /* 431 from the front */
    atomic_uint_fast64_t http_front_refused;   /* 400 from the front: heads
                                                  civetweb may frame apart */
    atomic_uint_fast64_t http_conns_refused;   /* over http.max_connections */
    atomic_uint_fast64_t http_accept_errors;   /* accept failed (EMFILE...) */
    atomic_uint_fast64_t http_front_busy;      /* 503 from the front: body
                                                  memory or queue wait */
    atomic_uint_fast64_t http_front_answered;  /* http_front_events.c: POST
                                                  /events requests answered
                                                  by the front itself */
    atomic_uint_fast64_t ws_handover_failures; /* upgrades whose socket
                                                  could not be taken over */
    atomic_int_fast64_t ws_handover_logged_us; /* rate limit of that log */
    atomic_uint_fast64_t ws_handover_logged_n; /* failures at that line */
    atomic_llong ws_memory;      /* bytes websockets hold (ws_memory_max) */
    atomic_llong ws_memory_shed; /* of those, held by connections that
                                    cannot be shed: closed for it, or
                                    ended and not yet freed */
    atomic_uint_fast64_t ws_memory_closes;   /* closed for ws_memory_max */
    atomic_int_fast64_t ws_memory_logged_us; /* rate limit of that log */
    atomic_uint_fast64_t ws_memory_logged_n; /* closes at that line */
    atomic_int sse_clients;                  /* SSE streams accepted, not yet
                                                freed */
    atomic_uint_fast64_t sse_slow_closes;    /* closed for a full send queue */
    atomic_uint_fast64_t sse_refused;        /* refused at sse_max_clients */
    atomic_int http_longpolls; /* GET /events/{pattern} waiting now */
    atomic_uint_fast64_t http_longpolls_refused;   /* http_longpoll_max */
    atomic_uint_fast64_t http_longpolls_abandoned; /* their client left */
    tb__interest interest; /* what the workers' listeners could match */

    /* registry */
    pthread_mutex_t reg_mu;
    pthread_cond_t done_cv; /* broadcast when a task ends, or a claim
                               in flight (claiming) completes */
    int thread_waiters;     /* threads blocked on done_cv */
    tb__htab names;         /* name -> tb_task chain */
    tb_task *all_head, *all_tail;
    uint64_t next_id;
    struct tb__claiming *claiming; /* names being claimed (task.c) */
    int mode;                      /* TB__MODE_*: where tb_task_add goes */
    atomic_int bus_up;             /* tb_dispatch allowed */
    atomic_uint_fast64_t queue_full_drops;    /* worker_queue_max drops */
    atomic_int_fast64_t queue_full_logged_us; /* rate limit of that log */
    atomic_uint_fast64_t hop_limit_drops;     /* event_max_hops refusals */
    atomic_int batches_in; /* POST /events in progress (api_batch.c) */
    atomic_uint_fast64_t pub_unreplicated; /* published, fewer replicas
                                              than wait_replicas confirmed */
    /* The history (bus_rx.c's catch-up, history.c's resumes): /metrics. */
    atomic_uint_fast64_t hist_reads;         /* catch-up reads answered */
    atomic_uint_fast64_t hist_recovered;     /* events a catch-up delivered */
    atomic_uint_fast64_t hist_lost;          /* events found gone by one */
    atomic_uint_fast64_t hist_resumes[2];    /* [recovered] */
    atomic_int_fast64_t hop_limit_logged_us; /* rate limit of that log */
    int abandoned; /* tasks abandoned at the graceful timeout */

    /* blocking pool */
    pthread_mutex_t blk_mu;
    pthread_cond_t blk_cv;
    tb__blocking_job *blk_head, *blk_tail;
    pthread_t *blk_threads;
    int blk_nthreads;
    int blk_stop;
};

/* Checks a config against the settings table's bounds and the rules that
 * relate settings (config.c). 0, or TB_EINVAL with the reason logged. */
int tb__config_check(const tb_app_config *c);

/* *ts = CLOCK_MONOTONIC now + timeout_ms, for pthread_cond_timedwait on a
 * condition variable made by tb__cond_init_mono. */
struct timespec;
void tb__deadline_ts(struct timespec *ts, int timeout_ms);
/* pthread_cond_init on CLOCK_MONOTONIC (a wall-clock step cannot stretch or
 * cut a timed wait). */
void tb__cond_init_mono(pthread_cond_t *cv);

/* Runs the listeners of kind in order (reverse for stop kinds). Returns the
 * first non-zero return for start kinds, else 0. */
int tb__app_run_listeners(tb_app *app, tb_listener_kind kind, int worker);

/* 1 if a listener on some worker could match the event name (split and
 * validated by the caller, once). Any thread. Buses use it to skip what
 * nobody here wants. */
int tb__app_wants(tb_app *app, const tb__name *name);

#endif /* TASKBUS_INTERNAL_H */
