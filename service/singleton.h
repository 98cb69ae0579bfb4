/* singleton.h - singleton and periodic tasks (singleton.c): one run in the
 * whole cluster, held by a lease with a fencing token, moved to another
 * instance when its own dies; periodic ones fire once per tick. */
#ifndef TASKBUS_SINGLETON_H
#define TASKBUS_SINGLETON_H

#include <jansson.h>
#include <stdint.h>

#include "taskbus/taskbus.h"

#define TB_PERIODIC_MAX_MS (7LL * 24 * 3600 * 1000) /* the longest interval */

typedef struct tb__singletons tb__singletons;
struct tb__single;
struct tb_task;

/* Starts what keeps the singletons running: this instance's pre-run ones
 * (tb_task_add with TB_TASK_SINGLETON, tb_task_add_every) are defined in
 * the cluster, and a thread ("tb-singletons") renews the leases of the
 * runs here and takes over the free ones. With a bus that has no cluster,
 * each pre-run singleton just starts here. After the workers and the
 * instance registry have started. NULL on ENOMEM (then no singleton
 * runs). */
tb__singletons *tb__singletons_start(tb_app *app);

/* After the workers have stopped (the runs have ended, their leases given
 * up for another instance to take) and before the instance registry
 * stops. Idempotent; NULL is a no-op. */
void tb__singletons_stop(tb__singletons *s);
void tb__singletons_free(tb__singletons *s);

/* Spawns a singleton of kind with args_json (checked already) named
 * opts->name, periodic when every_ms > 0: defined in the cluster, then
 * run here if this instance takes its lease (*id_out its id; 0 when
 * another instance holds the lease and runs it). TB_EEXIST (the name is a
 * singleton already, or a task holds it: holder, 24 bytes, names its
 * instance when known), TB_EMSGSIZE (the definition would be over
 * TB__CLUSTER_DEF_MAX bytes), TB_ENOTCONN, TB_ESHUTDOWN, TB_ENOMEM, with a
 * message in err. Any thread but a worker's loop (it waits on Redis). */
int tb__singleton_spawn(tb_app *app, const char *kind, const char *args_json,
                        const tb_task_opts *opts, int64_t every_ms,
                        uint64_t *id_out, char holder[24], char *err,
                        size_t errsz);

/* From finish() on t's worker: t, a singleton run, ended in state st. A
 * run that ended for good (done, failed, or cancelled by someone) deletes
 * its definition; one stopped by a lost lease or the app's stop leaves it
 * for another instance. */
void tb__singleton_ended(struct tb_task *t, tb_task_state st);

/* A task's reference to its run (tb__task_add takes it, the task's last
 * unref releases it). */
void tb__singleton_hold(struct tb__single *r);
void tb__singleton_release(struct tb__single *r);

/* Marks t's run as lost (its name is another instance's now): its end
 * leaves the definition alone. Any thread. */
void tb__singleton_lost(struct tb_task *t);

/* Adds a run's fields to its task object o: "singleton", "fence", and for
 * a periodic task "every", "last_run", "next_run", "last_result",
 * "last_state", "runs". reg_mu held. */
void tb__singleton_task_json(const struct tb_task *t, json_t *o);

/* Parses a duration: digits then "ms", "s", "m" or "h". 0, or TB_EINVAL. */
int tb__duration_ms(const char *s, int64_t *ms);

typedef struct tb__singleton_stats {
    uint64_t runs, takeovers, renewals, renew_failures, leases_lost;
    uint64_t ticks_fired, ticks_skipped;
    uint64_t held; /* leases held by this instance now */
} tb__singleton_stats;

void tb__singleton_stats_get(tb_app *app, tb__singleton_stats *out);

#endif /* TASKBUS_SINGLETON_H */
