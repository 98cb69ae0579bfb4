/* cluster_impl.h - what the cluster's three files share (private to
 * cluster.c, cluster_calls.c and cluster_tasks.c): the cluster's state and
 * the calls between instances that the task operations are built on. */
#ifndef TASKBUS_CLUSTER_IMPL_H
#define TASKBUS_CLUSTER_IMPL_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <jansson.h>

#include "cluster.h"
#include "internal.h"

#define INST_MAX 24
#define PAGE_HARD_MAX 1000 /* tasks in one list answer (the setting's max) */
#define WIRE_TIMEOUT_MAX_MS (3600 * 1000) /* a cancel's timeout on the wire */
/* Bytes of task objects one list answer holds at most, below the bus's
 * message bound with room for the envelope. */
#define PAGE_BYTES_MAX (TB__CLUSTER_MSG_MAX - 4096)

typedef struct call {
    struct call *next;
    uint64_t rid;
    atomic_int refs; /* the caller's + the send callback's */
    int done;
    int status; /* a send failure, or 0 */
    json_t *reply;
    pthread_cond_t cv;
} call;

struct tb__cluster {
    tb_app *app;
    pthread_mutex_t mu; /* guards calls, next_rid, every call's fields, the
                           cleanups and full */
    call *calls;
    struct cleanup *cleanups;
    size_t ncleanups;
    uint64_t next_rid;
    atomic_uint_fast64_t claims, claim_conflicts, claim_errors;
    atomic_uint_fast64_t reasserted, reassert_conflicts;
    atomic_uint_fast64_t remote_calls, remote_failures, remote_cancels;
    atomic_uint_fast64_t messages_bad;
    tb__ratelog bad;  /* bad messages; the bus's thread */
    tb__ratelog full; /* cleanups dropped; any thread, under mu */
};

static inline const tb__cluster_ops *cl_ops(const tb_app *app)
{
    return app->bus ? app->bus->ops->cluster : NULL;
}

/* A caller's wait for an answer that takes timeout_ms to come: plus the
 * round trip's bound, without overflowing. */
static inline int cl_wait_ms(const tb_app *app, int timeout_ms)
{
    int64_t w = (int64_t)timeout_ms + app->cfg.redis.command_timeout_ms;
    return w > INT_MAX ? INT_MAX : (int)w;
}

/* ---- cluster_calls.c: task objects and calls to other instances ---- */

#define SCATTER_MAX 256 /* instances one call asks at most */
/* This instance's tasks named name, lowest id first (hidden ones never):
 * a new array, or NULL on ENOMEM. */
json_t *tb__cl_local_named(tb_app *app, const char *name);

/* Up to limit of this instance's tasks with id > after that f keeps (its
 * state and kind; NULL: all), by id; *more: others f keeps follow. A new
 * array, or NULL. */
json_t *tb__cl_local_page(tb_app *app, uint64_t after, size_t limit,
                          const tb__task_filter *f, int *more);

json_t *tb__cl_lost_json(const char *name, uint64_t id, const char *inst);

/* One call, waited for at most timeout_ms. */
int tb__cl_call1(tb_app *app, const char *to, json_t *req, int timeout_ms,
                 json_t **reply);

/* A reply's status as a TB_E* code. */
int tb__cl_reply_status(json_t *reply);

/* The live instances, sorted, this one included: n ids of INST_MAX. */
size_t tb__cl_live_instances(tb_app *app, char (*ids)[INST_MAX], size_t max);

/* Sends a copy of req to every live instance but this one and waits for
 * all their answers until timeout_ms. replies[i] (new references, NULL
 * for no answer) and ids[i] for i < return value. */
size_t tb__cl_scatter(tb_app *app, json_t *req, int timeout_ms,
                      char (*ids)[INST_MAX], json_t **replies);

#endif /* TASKBUS_CLUSTER_IMPL_H */
