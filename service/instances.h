/* instances.h - the instance registry (instances.c): who is in the
 * cluster, from the bus's shared store. */
#ifndef TASKBUS_INSTANCES_H
#define TASKBUS_INSTANCES_H

#include <jansson.h>
#include <stddef.h>

#include "taskbus/taskbus.h"

typedef struct tb__instances tb__instances;

/* Registers app's instance in its bus's store and starts the heartbeat
 * (core.instance_heartbeat_ms; records live core.instance_ttl_ms). Call
 * once the bus has started. The app owns the result (NULL on ENOMEM: the
 * app runs unregistered); free it with tb__instances_free after the bus
 * has stopped. */
tb__instances *tb__instances_start(tb_app *app);

/* Stops the heartbeat and deletes this instance's record, waiting for the
 * store's answer up to redis.command_timeout_ms. Call before the bus
 * stops. Idempotent; NULL is a no-op. */
void tb__instances_stop(tb__instances *in);

/* Stops if need be and frees. NULL is a no-op. */
void tb__instances_free(tb__instances *in);

/* GET /instances's body: {"instances":[{id, host, listen, version,
 * workers, started, bus, self}...]} by id, from the last list read (this
 * instance always in it). New reference (NULL on ENOMEM). Any thread;
 * never waits on the store. */
json_t *tb__instances_json(tb__instances *in);

/* Asks the heartbeat to claim this instance's names again at its next
 * beat (a re-claim did not get through). Any thread; NULL is a no-op. */
void tb__instances_reassert_later(tb__instances *in);

/* The ids of the instances in the last list read, this one included,
 * sorted: at most max of them into ids. Any thread; never waits. */
size_t tb__instances_ids(tb__instances *in, char (*ids)[24], size_t max);

/* Instances in the last list read, this one included (0 for NULL). Any
 * thread. */
size_t tb__instances_count(tb__instances *in);

/* Checks one record read from the store (hostile: anyone who can write to
 * Redis may have put it there): a JSON object of at most
 * TB__KV_VALUE_MAX bytes whose id matches its key, with host, listen
 * (or null), version, workers, started and bus in bounds. Returns a new
 * object with those fields alone, or NULL with *why a static reason. */
json_t *tb__instance_parse(const char *id, size_t idlen, const char *value,
                           size_t len, const char **why);

/* GET /instances (a tb_http_fn; ud unused): the body above, or 503
 * not_running before the app runs. */
int tb__instances_handler(tb_http_req *req, void *ud);

#endif /* TASKBUS_INSTANCES_H */
