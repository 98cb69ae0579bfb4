/* cluster.h - one app across instances (cluster.c): task names claimed
 * across the cluster, and the task calls (get, list, cancel) answered for
 * every instance by asking the instance that runs the task. */
#ifndef TASKBUS_CLUSTER_H
#define TASKBUS_CLUSTER_H

#include <jansson.h>
#include <stdint.h>

#include "taskbus/taskbus.h"

typedef struct tb__cluster tb__cluster;

/* Made by tb_app_new, freed by tb_app_free (after the bus has stopped).
 * NULL on ENOMEM. */
tb__cluster *tb__cluster_new(tb_app *app);
void tb__cluster_free(tb__cluster *c);

/* 1 when the app's bus spans instances (it has cluster ops): the calls
 * below then ask the others; else this instance is the cluster. */
int tb__cluster_on(const tb_app *app);

/* ---- claims (task.c) ---- */

/* Claims name for this instance's task id, waiting for the answer (at most
 * redis.command_timeout_ms). 0; TB_EEXIST with the live holder's instance
 * id in holder (24 bytes); TB_ENOTCONN (Redis unreachable), TB_ETIMEDOUT,
 * TB_EIO. Any thread but a worker's loop blocks; from a worker's loop it
 * blocks that loop for the round trip. */
int tb__cluster_claim(tb_app *app, const char *name, uint64_t id,
                      char holder[24]);

/* Who holds name's claim, waited for (at most redis.command_timeout_ms):
 * 0 with the holder's instance (24 bytes), its task id and whether that
 * instance is live; TB_ENOENT (no claim, or no cluster), or an error. */
int tb__cluster_whois(tb_app *app, const char *name, char holder[24],
                      uint64_t *id, int *live);

/* Drops the claim of name by task id, without waiting: sent now and again
 * at each heartbeat until Redis confirms it. Any thread. */
void tb__cluster_release(tb_app *app, const char *name, uint64_t id);
/* The same for an ended singleton's definition (and its lease, if fence
 * holds it), and for the lease a run gives up at a stop. */
void tb__cluster_def_del(tb_app *app, const char *name, uint64_t fence);
void tb__cluster_lease_drop(tb_app *app, const char *name, uint64_t fence);
/* Sends again what has not been confirmed yet. The heartbeat's thread. */
void tb__cluster_retry(tb_app *app);

/* After this instance's record was found missing in the store (a Redis
 * restart, a partition that outlived its TTL), or the bus moved to a new
 * Redis master (tb__bus_store_lost): claims again the name of every live
 * claimed task; a name some other live instance took meanwhile makes our
 * task a duplicate, and it is cancelled with a logged reason. why says
 * which, for the log. The heartbeat's thread. */
void tb__cluster_reassert(tb_app *app, const char *why);

/* ---- the task calls, as JSON (api.c, the C API) ---- */

/* Task objects are tb__api_task_json's plus "instance" (and "fence" and
 * "singleton"/"every" for singleton runs). A lost task (its instance's
 * heartbeat expired) is {"name","id","instance","state":"lost"}.
 *
 * Each call blocks the calling thread (an HTTP handler's, say) and is
 * bounded: a remote instance that does not answer within
 * redis.command_timeout_ms (plus the cancel's own timeout) is reported,
 * never waited on forever. local: this instance only. */

/* The task named name: its object plus "replicas" (how many tasks hold the
 * name across the cluster). *out is a new reference. 0, TB_ENOENT,
 * TB_ENOTCONN (the cluster cannot be asked: Redis unreachable),
 * TB_ETIMEDOUT (its instance did not answer), TB_ENOMEM. */
int tb__cluster_get(tb_app *app, const char *name, int local, json_t **out);

/* Cancels the tasks named name where they run and waits up to timeout_ms
 * for their end. 0 with the final state in *out (plus "replicas"), or a
 * lost object; TB_ETIMEDOUT with the state at the deadline in *out (NULL
 * when the owner did not answer at all); TB_ENOENT; TB_ENOTCONN. */
int tb__cluster_cancel(tb_app *app, const char *name, int timeout_ms, int local,
                       json_t **out);

/* Cancels the task named name on instance (its claim holder), for
 * tb_task_add's TB_TASK_REPLACE: 0, TB_ENOENT, TB_ETIMEDOUT, ... */
int tb__cluster_cancel_on(tb_app *app, const char *instance, const char *name,
                          int timeout_ms);

/* Which tasks a listing keeps. state -1: any; kind NULL: any, else only
 * tasks of exactly that kind (1..TB_KIND_NAME_MAX bytes, as listings show
 * every kind a task can be spawned as; a longer free-form label of
 * tb_task_opts is listed cut and matches no filter); instance NULL: every
 * instance, else only that one. */
typedef struct tb__task_filter {
    int state;
    const char *kind;
    const char *instance;
} tb__task_filter;

/* 1 if a task of kind (NULL: none) has the kind filter want (NULL: any). */
int tb__task_kind_is(const char *kind, const char *want);

/* One page of the cluster's tasks that f keeps (NULL: all), instance by
 * instance (ordered by id), each instance's by task id: at most limit,
 * after cursor ("" or NULL: from the start). Filtering happens where the
 * tasks are, before the page is counted, so pages stay full and the cursor
 * skips nothing. A page may still come short with a cursor (an instance's
 * answer stopped at its byte bound): go on while next is not "". *tasks is
 * a new array; next (TB_CURSOR_MAX bytes) gets the cursor of the next
 * page, "" after the last; *unreachable (new array) lists the instances
 * that did not answer (their tasks are missing from the page). 0,
 * TB_EINVAL (a bad cursor), TB_ENOMEM. */
int tb__cluster_list(tb_app *app, const char *cursor, size_t limit,
                     const tb__task_filter *f, int local, json_t **tasks,
                     char *next, json_t **unreachable);

/* Every other live instance's GET /stats object (tb__stats_json), all
 * asked at once and waited for at most redis.command_timeout_ms: *stats
 * (new array) holds the objects of those that answered, *unreachable (new
 * array) the ids of those that did not. Without a cluster (the memory
 * bus) both are empty. Blocks the calling thread (not a worker's loop).
 * 0, or TB_ENOMEM with both NULL. */
int tb__cluster_stats_all(tb_app *app, json_t **stats, json_t **unreachable);

/* ---- waiting for one store op (any thread but the bus's) ---- */

/* Shared by a waiting thread and the op's callback, which may run after
 * the waiter gave up. Pass one of the callbacks below with it as ud, then
 * tb__opwait_wait with the op's return code. */
typedef struct tb__opwait tb__opwait;
tb__opwait *tb__opwait_new(void); /* NULL on ENOMEM */
void tb__opwait_claim_cb(int status, const char *inst, uint64_t num, int live,
                         void *ud);
void tb__opwait_done_cb(int status, void *ud);
/* rc: what the op returned (non-zero: refused, its callback never runs).
 * Waits up to timeout_ms: the op's status, or TB_ETIMEDOUT; inst (24
 * bytes), num, live (each may be NULL) get the answer's. Frees w's share
 * of the caller. */
int tb__opwait_wait(tb__opwait *w, int rc, int timeout_ms, char inst[24],
                    uint64_t *num, int *live);

/* ---- metrics ---- */

typedef struct tb__cluster_stats {
    uint64_t claims, claim_conflicts, claim_errors;
    uint64_t reasserted, reassert_conflicts;
    uint64_t remote_calls, remote_failures, remote_cancels;
    uint64_t messages_bad;
} tb__cluster_stats;

void tb__cluster_stats_get(tb_app *app, tb__cluster_stats *out);

/* The object of local task t (reg_mu held): tb__api_task_json's fields
 * plus "instance", and a singleton's (singleton.c). New reference. */
json_t *tb__cluster_task_json(tb_app *app, const struct tb_task *t);

#endif /* TASKBUS_CLUSTER_H */
