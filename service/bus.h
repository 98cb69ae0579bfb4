/* bus.h - the interface between the core and an event bus adapter. */
#ifndef TASKBUS_BUS_H
#define TASKBUS_BUS_H

#include "taskbus/taskbus.h"

/* A bus carries events from tb_dispatch() to every worker of every instance
 * that shares it. The core calls publish(); the bus hands each event it
 * receives to the workers (from any thread): through tb__bus_rx when it
 * comes from a backend, else with tb__app_deliver(). An event published by
 * this instance must reach this instance's workers exactly once, through
 * the bus (no local shortcut). adapters/compose.c makes the app's bus.
 *
 * Lifecycle, all called by the core on the thread that runs tb_app_run:
 * start() before the workers start, stop() after they have stopped, free()
 * from tb_app_free(). publish() is called from any thread between start and
 * stop, concurrently. */
typedef struct tb__bus tb__bus;
struct tb__hist_page; /* history.h */

/* Called once per published event that was given one: status 0 when the
 * backend has acknowledged it, or the TB_E* code it was given up with. Runs
 * on the bus's own thread (or the publisher's, for the memory bus); it must
 * not block. */
typedef void (*tb__publish_cb)(int status, void *ud);

typedef struct tb__bus_ops {
    const char *name; /* "memory", "redis" */
    int (*start)(tb__bus *bus);
    /* Borrows ev (take a reference to keep it). Returns 0 once the bus has
     * taken the event (and will deliver it, resending it after a reconnect
     * if need be), or a TB_E* code (TB_ENOTCONN when it cannot reach its
     * backend, TB_ENOSPC when its queue is full); never blocks. cb may be
     * NULL; when publish fails it is never called. */
    int (*publish)(tb__bus *bus, tb_event *ev, tb__publish_cb cb, void *ud);
    /* Fills the state and counters; any thread. */
    void (*status)(tb__bus *bus, tb_bus_info *out);
    void (*stop)(tb__bus *bus);
    void (*free)(tb__bus *bus);
    /* The shared store (optional: NULL when the bus has none), below. */
    const struct tb__kv_ops *kv;
    /* The cluster's state and messages (optional: NULL when this instance
     * is the whole cluster, as with the memory bus), below. */
    const struct tb__cluster_ops *cluster;
    /* The namespace's history (service/history.h), when
     * core.history_size > 0 (the core does not call it otherwise): the
     * held events after seq `after`, at most count, with the epoch, the
     * last seq and the oldest held. Any thread between start and stop;
     * never blocks. 0: cb runs exactly once with status 0 and the page
     * (borrowed: the callee refs what it keeps) or a TB_E* status and
     * NULL, on the bus's thread or, with history_sync, before the op
     * returns; else a TB_E* code and cb never runs. */
    int (*history)(tb__bus *bus, uint64_t after, size_t count,
                   void (*cb)(int status, const struct tb__hist_page *pg,
                              void *ud),
                   void *ud);
    int history_sync; /* 1: history's cb runs before it returns */
    /* publish() for n events at once, in order (mandatory, as publish:
     * tb__app_use_bus refuses a bus without it). All or nothing: 0 once the bus
     * has taken every one (then cb runs once per event, with uds[i]), or a
     * TB_E* code and none was taken (no cb runs). One lock and one wake-up
     * for the lot, so that the Redis bus carries them in few commands. */
    int (*publish_many)(tb__bus *bus, tb_event *const *evs, size_t n,
                        tb__publish_cb cb, void *const *uds);
} tb__bus_ops;

struct tb__bus {
    const tb__bus_ops *ops;
    tb_app *app;
};

/* ------------------------------------------------------------ shared store */

/* A small store every instance on the bus shares, for the cluster's
 * records (service/instances.c; claims and leases later). It holds groups
 * of records: a group ("instance") maps ids to values, each record living
 * until its TTL runs out (the backend's clock, never an instance's) or it
 * is deleted. The Redis bus keeps group g of namespace ns as the keys
 * "{ns}:g:<id>" (strings, PX ttl) and the set "{ns}:g" of their ids, all
 * in one Redis Cluster hash slot, changed by Lua scripts loaded once
 * (docs/CLUSTER.md); the memory bus keeps them in this process.
 *
 * Every op may be called from any thread between start and stop and never
 * blocks. It returns 0 once the request is taken (cb then runs exactly
 * once, on the bus's thread or, for the memory bus, before the op
 * returns), or a TB_E* code (TB_ENOTCONN: the backend is unreachable now;
 * TB_EINVAL: a group, id or value out of bounds) and cb never runs. A
 * group is 1..32 bytes and an id 1..TB__KV_ID_MAX bytes of
 * [A-Za-z0-9_.-]; a value 1..TB__KV_VALUE_MAX bytes. */
#define TB__KV_ID_MAX 64
#define TB__KV_VALUE_MAX 4096
#define TB__KV_LIST_MAX 1024 /* records one list answers with, at most */

/* The outcome of a put or del: 0, or the TB_E* code it failed with; a put
 * that created its record (none was there) reports TB__KV_CREATED. */
typedef void (*tb__kv_done_cb)(int status, void *ud);
#define TB__KV_CREATED 1

/* One record of a list. id and value are the bus's, valid during the
 * callback; value comes from outside (another instance, or anyone who can
 * write to Redis): the callee checks it. Both are NUL-terminated; the
 * store has checked their lengths against the bounds above. */
typedef struct tb__kv_rec {
    const char *id;
    size_t idlen;
    const char *value;
    size_t len;
} tb__kv_rec;

/* The live records of a group (at most TB__KV_LIST_MAX, in no order; recs
 * is the bus's, valid during the callback), or a TB_E* status with n 0.
 * dropped counts the records the store refused to hand over (out of
 * bounds). */
typedef void (*tb__kv_list_cb)(int status, const tb__kv_rec *recs, size_t n,
                               size_t dropped, void *ud);

typedef struct tb__kv_ops {
    /* Sets group/id to value (len bytes, copied) for ttl_ms, replacing
     * what was there and its TTL. */
    int (*put)(tb__bus *bus, const char *group, const char *id,
               const char *value, size_t len, int64_t ttl_ms, tb__kv_done_cb cb,
               void *ud);
    /* Deletes group/id (no error when it does not exist). */
    int (*del)(tb__bus *bus, const char *group, const char *id,
               tb__kv_done_cb cb, void *ud);
    /* Lists the group's live records; expired ones are forgotten. */
    int (*list)(tb__bus *bus, const char *group, tb__kv_list_cb cb, void *ud);
} tb__kv_ops;

/* 1 if s (n bytes) is a valid group (max 32) or id (max TB__KV_ID_MAX):
 * 1..max bytes of [A-Za-z0-9_.-]. */
static inline int tb__kv_name_ok(const char *s, size_t n, size_t max)
{
    if (!s || n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- cluster */

/* What several instances on one backend share to act as one app
 * (service/cluster.c, service/singleton.c; docs/CLUSTER.md has the
 * protocol and the Redis keys). Every op follows the store's rules above:
 * any thread, never blocks, 0 and cb runs exactly once on the bus's
 * thread, or a TB_E* code and cb never runs. The bus fills in this
 * instance's id (tb__app_instance) where an op records an owner.
 *
 * Claims make a running task's name unique across the cluster: name ->
 * (instance, task id). A claim is live while its instance's record (group
 * "instance" of the store) is; a dead instance's claims are reported as
 * lost for core.lost_keep_ms, then reaped. Leases make a singleton run on
 * one instance at a time: name -> (instance, fence), with a TTL of the
 * backend's clock; a fence is strictly increasing per name, even across a
 * backend that forgot everything (it is at least the backend's clock in
 * µs). Definitions are the singletons (and periodic tasks) the cluster
 * keeps running: name -> a JSON value the core wrote. Messages are the
 * instances' requests and answers to one another (cluster.c). */

#define TB__CLUSTER_DEF_MAX 65536   /* bytes of one definition */
#define TB__CLUSTER_DEFS_MAX 1024   /* definitions one list answers with */
#define TB__CLUSTER_MSG_MAX 1048576 /* bytes of one message */

/* A claim's or lease's holder: status 0 with the holder's instance
 * (NUL-terminated, valid during the callback) and its task id or fence;
 * live is 0 when that instance's record is gone (the holder is lost).
 * Else a TB_E* status and instance "". */
typedef void (*tb__claim_cb)(int status, const char *instance, uint64_t num,
                             int live, void *ud);

/* A definition list: status 0 and n records (name in id, the JSON in
 * value), or a TB_E* status with n 0. */
typedef tb__kv_list_cb tb__defs_cb;

typedef struct tb__cluster_ops {
    /* Claims name (1..TB_TASK_NAME_MAX bytes) for this instance's task id.
     * cb: status 0 (ours now: it was free, held by a dead instance, or
     * already ours), TB_EEXIST with the live holder, or TB_EAGAIN when
     * this instance's own record is missing (retry after a heartbeat). */
    int (*claim)(tb__bus *bus, const char *name, uint64_t id, tb__claim_cb cb,
                 void *ud);
    /* Drops this instance's claim of name for task id (nothing when
     * someone else holds it now). */
    int (*release)(tb__bus *bus, const char *name, uint64_t id,
                   tb__kv_done_cb cb, void *ud);
    /* Who holds name: status 0 with the holder (live or not), or
     * TB_ENOENT. */
    int (*whois)(tb__bus *bus, const char *name, tb__claim_cb cb, void *ud);
    /* Leaves: drops this instance's record and every claim it holds, at a
     * clean stop. */
    int (*leave)(tb__bus *bus, tb__kv_done_cb cb, void *ud);
    /* Housekeeping, at each heartbeat: forgets the claims of instances
     * dead for more than keep_ms (a bounded amount per call). */
    int (*reap)(tb__bus *bus, int64_t keep_ms, tb__kv_done_cb cb, void *ud);

    /* Takes the lease of name for ttl_ms if it is free and name still has
     * a definition: status 0 with this instance and the new fence (live 1
     * when an earlier run had held a fence: a takeover), or TB_EEXIST with
     * the holder (instance "" when there is no definition). */
    int (*lease_take)(tb__bus *bus, const char *name, int64_t ttl_ms,
                      tb__claim_cb cb, void *ud);
    /* Extends this instance's lease of name (fence) to ttl_ms from now. A
     * lease that expired is taken again if no later fence was handed out
     * (a takeover, or the definition's delete); one the backend forgot
     * with the rest of its data is taken again and the definition (def,
     * deflen bytes) put back. cb: 0, or TB_EEXIST (ours is lost). */
    int (*lease_renew)(tb__bus *bus, const char *name, uint64_t fence,
                       int64_t ttl_ms, const char *def, size_t deflen,
                       tb__claim_cb cb, void *ud);
    /* Gives up this instance's lease of name (fence), if it still holds
     * it. */
    int (*lease_drop)(tb__bus *bus, const char *name, uint64_t fence,
                      tb__kv_done_cb cb, void *ud);

    /* Stores name's definition (value, len bytes, at most
     * TB__CLUSTER_DEF_MAX) unless it has one: cb 0, or TB_EEXIST. */
    int (*def_put)(tb__bus *bus, const char *name, const char *value,
                   size_t len, tb__kv_done_cb cb, void *ud);
    /* Stores name's definition again (value, len bytes) after the backend
     * may have lost its data: only when it has none and knows no fence for
     * name (a definition deleted on purpose leaves its fence). cb 0
     * (restored), or TB_EEXIST (not needed, or deleted on purpose). */
    int (*def_restore)(tb__bus *bus, const char *name, const char *value,
                       size_t len, tb__kv_done_cb cb, void *ud);
    /* Deletes name's definition, and its lease if fence holds it (fence 0:
     * whoever holds it), leaving the recorded fence past fence so that no
     * renewal of the ended run takes the lease again. cb: 0 when there was
     * a definition, TB_ENOENT when there was none. */
    int (*def_del)(tb__bus *bus, const char *name, uint64_t fence,
                   tb__kv_done_cb cb, void *ud);
    /* The definitions, at most TB__CLUSTER_DEFS_MAX. */
    int (*def_list)(tb__bus *bus, tb__defs_cb cb, void *ud);
    /* Records that periodic task name fired tick (a count of intervals
     * since the epoch) under fence: n >= 0 when tick is newer than the
     * last one recorded and fence still holds the lease, n being how many
     * ticks between the two none fired (0 when none was recorded);
     * TB_EEXIST when that tick (or a later one) fired already; TB_EPERM
     * when the lease is not fence's. */
    int (*tick)(tb__bus *bus, const char *name, int64_t tick, uint64_t fence,
                tb__kv_done_cb cb, void *ud);

    /* Sends msg (len bytes, at most TB__CLUSTER_MSG_MAX) to instance. cb:
     * 0 when that instance is listening, TB_ENOENT when nobody is. The
     * bus hands what it receives for this instance to
     * tb__cluster_message(). */
    int (*send)(tb__bus *bus, const char *instance, const char *msg, size_t len,
                tb__kv_done_cb cb, void *ud);
} tb__cluster_ops;

/* The bus is connected again, to a backend that may lack what this
 * instance wrote last (a Redis failover to a replica that had not received
 * it yet: replication is asynchronous). This instance's claims are made
 * again at its next heartbeat (tb__cluster_reassert), as after a backend
 * that lost its data. Any thread; never blocks. */
void tb__bus_store_lost(tb_app *app);

/* n published events were answered TB_ENOTREPLICATED (fewer replicas than
 * redis.wait_replicas confirmed them): counted for /metrics. Any
 * thread. */
void tb__bus_unreplicated(tb_app *app, uint64_t n);

/* The core's side of send(): one message for this instance (msg, len bytes,
 * any length, from outside: the core checks it, and drops and counts one
 * over TB__CLUSTER_MSG_MAX). Bus thread; does not block and does not keep
 * msg. */
void tb__cluster_message(tb_app *app, const char *msg, size_t len);

/* --------------------------------------------------------------- connection */

/* A bus's connection to its backend as tb_bus_status shows it, for every
 * bus that has one (service/bus_conn.c): CONNECTING (the first attempt)
 * -> CONNECTED -> RECONNECTING (lost; retrying with backoff) -> CONNECTED
 * ...; STOPPED before start and after stop. With it: since when, the
 * failed attempts in a row, the reconnects, the last error, and the
 * backoff between attempts. The bus's own thread moves it; any thread
 * reads it. */
typedef struct tb__bus_conn tb__bus_conn;

/* A connection in state STOPPED whose attempts back off from retry_min_ms
 * to retry_max_ms (see tb__bus_conn_backoff_ms). NULL on ENOMEM. */
tb__bus_conn *tb__bus_conn_new(int retry_min_ms, int retry_max_ms);
void tb__bus_conn_free(tb__bus_conn *c); /* NULL is a no-op */

/* The state now. Any thread; what the bus did before it moved the state
 * there is visible to whoever reads it. */
tb_bus_state tb__bus_conn_state(tb__bus_conn *c);

/* Moves to st (CONNECTING at start, STOPPED at the end; up and down below
 * make the others) and wakes tb__bus_conn_wait. */
void tb__bus_conn_set(tb__bus_conn *c, tb_bus_state st);

/* The connection is up: CONNECTED. Returns how many attempts had failed in
 * a row before it; *reconnected is 1 when it had been lost (RECONNECTING;
 * counted as a reconnect), else 0. */
uint64_t tb__bus_conn_up(tb__bus_conn *c, int *reconnected);

/* An attempt failed, or the connection was lost, because of why (copied:
 * the last error). Returns the failed attempts in a row: 0 when it was
 * connected, and then it is RECONNECTING and *lost is 1 (else 0). */
uint64_t tb__bus_conn_down(tb__bus_conn *c, const char *why, int *lost);

/* The wait before the next attempt after `failed` failed attempts in a row
 * (0: the connection was just lost): retry_min_ms doubled per failure,
 * capped at retry_max_ms, then a uniform pick between half and all of it
 * so that instances do not retry in lockstep. The bus's thread. */
int64_t tb__bus_conn_backoff_ms(tb__bus_conn *c, uint64_t failed);

/* Waits up to timeout_us for CONNECTED: 1 when it is, else 0 with the last
 * error ("" when none yet) in err. */
int tb__bus_conn_wait(tb__bus_conn *c, int64_t timeout_us, char *err,
                      size_t errsz);

/* Fills out's state, since_us, attempts, reconnects and last_error. Any
 * thread. */
void tb__bus_conn_status(tb__bus_conn *c, tb_bus_info *out);

/* ---------------------------------------------------------------- publish */

/* What every bus does with the events it is asked to publish (service/
 * bus_tx.c): accepts them from any thread (encoding each envelope on the
 * publisher's thread), bounded in number, hands them to the bus's own
 * thread, and runs each one's callback once with the outcome: confirmed,
 * given up when unsent for too long, or given up at stop.
 * Sending, confirming and resending are the bus's: it moves requests
 * between its own lists (queued, in flight) with the tb__bus_reqlist
 * calls. */

/* One event accepted for publishing. */
typedef struct tb__bus_req {
    struct tb__bus_req *next;
    char *env; /* the JSON envelope (tb__envelope_encode), owned */
    size_t envlen;
    tb__publish_cb cb;
    void *ud;
    int64_t accepted_us; /* monotonic */
    int64_t sent_us;     /* monotonic, last time the bus sent it */
    uint64_t txseq;      /* its number in the queue: 1, 2, ... in the
                            order the bus sends them (first time) */
    int batch;           /* the bus's: on the first request one command
                            carried, how many it carried */
    size_t chlen;
    char id[TB_EVENT_ID_MAX];
    char channel[]; /* the bus's prefix and the event name */
} tb__bus_req;

/* A FIFO of requests; zero it to start. */
typedef struct tb__bus_reqlist {
    tb__bus_req *head, *tail;
    size_t n;
} tb__bus_reqlist;

void tb__bus_reqlist_push(tb__bus_reqlist *l, tb__bus_req *q);
/* The first request, taken off l, or NULL. */
tb__bus_req *tb__bus_reqlist_pop(tb__bus_reqlist *l);
/* Move all of src to the end (append) or the front (prepend) of dst, in
 * order; src becomes empty. */
void tb__bus_reqlist_append(tb__bus_reqlist *dst, tb__bus_reqlist *src);
void tb__bus_reqlist_prepend(tb__bus_reqlist *dst, tb__bus_reqlist *src);
/* Frees the requests of *l without running their callbacks. */
void tb__bus_reqlist_free(tb__bus_reqlist *l);

typedef struct tb__bus_tx tb__bus_tx;

/* A publish queue. prefix (copied, at most 127 bytes) starts every
 * request's channel; at most queue_max requests are accepted and not yet
 * completed; one not sent retry_ms after it was accepted may be given up
 * (tb__bus_tx_expire). wake(ud) runs when the queue goes from empty to
 * holding a request, on the publisher's thread with the queue's lock held
 * (so after tb__bus_tx_close it never runs): it must only signal the bus's
 * thread (event_active, say). NULL on ENOMEM. */
tb__bus_tx *tb__bus_tx_new(const char *prefix, int queue_max, int retry_ms,
                           void (*wake)(void *ud), void *ud);

/* Frees tx and the requests it still holds, without running their
 * callbacks. NULL is a no-op. */
void tb__bus_tx_free(tb__bus_tx *tx);

/* Any thread. Encodes ev (borrowed) and queues it with cb and ud (cb may
 * be NULL). 0, or TB_ESHUTDOWN (closed), TB_ENOSPC (queue_max requests
 * accepted and not yet completed), TB_EINVAL (data not UTF-8), TB_ENOMEM;
 * on error cb is never called. */
int tb__bus_tx_put(tb__bus_tx *tx, const tb_event *ev, tb__publish_cb cb,
                   void *ud);
/* tb__bus_tx_put for n events, queued in order one after the other under
 * one lock, all or none: 0, or the same codes and none was queued (not one
 * cb runs). TB_ENOSPC when the n do not all fit below queue_max now,
 * TB_EMSGSIZE when n is over queue_max (they never will). */
int tb__bus_tx_put_many(tb__bus_tx *tx, tb_event *const *evs, size_t n,
                        tb__publish_cb cb, void *const *uds);

/* Any thread: every tb__bus_tx_put from now on fails with TB_ESHUTDOWN. */
void tb__bus_tx_close(tb__bus_tx *tx);

/* Bus thread: moves what was put since the last call to the end of *to. */
void tb__bus_tx_take(tb__bus_tx *tx, tb__bus_reqlist *to);

/* Bus thread: completes q (no longer on any list): runs its callback with
 * status (0: the backend confirmed it), counts it published or failed, and
 * frees it. */
void tb__bus_tx_done(tb__bus_tx *tx, tb__bus_req *q, int status);

/* Bus thread: completes with TB_ETIMEDOUT the requests of *l accepted more
 * than retry_ms before now_us (monotonic). Returns how many. */
size_t tb__bus_tx_expire(tb__bus_tx *tx, tb__bus_reqlist *l, int64_t now_us);

/* Bus thread: completes every request of *l with status. Returns how
 * many. */
size_t tb__bus_tx_give_up(tb__bus_tx *tx, tb__bus_reqlist *l, int status);

/* Fills out's published, publish_failed and queued. Any thread. */
void tb__bus_tx_status(tb__bus_tx *tx, tb_bus_info *out);

/* ---------------------------------------------------------------- receive */

/* What every bus does with a message its backend delivered (service/
 * bus_rx.c), so that a bus adapter only speaks its backend's protocol:
 * takes the event name from the channel and checks it, refuses a message
 * too large for max_event_size, skips what no listener in this process
 * could match, decodes the envelope, drops an id seen among the last
 * 16384 (a resend after a reconnect), and hands the events to the workers
 * in batches. Each dropped message is counted (malformed, oversize) and
 * logged with its channel, at most TB__RATELOG_BURST lines a second.
 * Everything but tb__bus_rx_status runs on the bus's own thread. */
typedef struct tb__bus_rx tb__bus_rx;

/* A receiver for app's events. who names the bus in log lines ("redis
 * bus"); prefix is what every channel holds before the event name
 * ("<ns>:event:", at most 127 bytes); both are copied. schedule(ud) runs
 * whenever the batch goes from empty to holding an event: the bus must
 * then call tb__bus_rx_flush soon (after the read at hand, say). NULL on
 * ENOMEM. Free with tb__bus_rx_free. */
tb__bus_rx *tb__bus_rx_new(tb_app *app, const char *who, const char *prefix,
                           void (*schedule)(void *ud), void *ud);

/* The random key of rx's duplicate-id table (for tests). */
uint64_t tb__bus_rx_seed(const tb__bus_rx *rx);

/* Drops the events still batched (call tb__bus_rx_flush first to deliver
 * them) and frees rx. NULL is a no-op. */
void tb__bus_rx_free(tb__bus_rx *rx);

/* Takes one message (len bytes at msg) received on channel (chlen bytes,
 * not NUL-terminated). Returns 0 when its name and size were acceptable,
 * whatever happened next (batched for the workers, skipped because nobody
 * here listens, dropped as a duplicate or as a malformed envelope);
 * TB_EINVAL when the channel holds no valid event name, TB_EMSGSIZE when
 * no envelope of an acceptable event is that large (both counted and
 * logged). msg is not kept. */
int tb__bus_rx_message(tb__bus_rx *rx, const char *channel, size_t chlen,
                       const char *msg, size_t len);

/* Counts and logs a message of len bytes on channel that the bus could not
 * even read as one (why: a static reason), as malformed. */
void tb__bus_rx_refuse(tb__bus_rx *rx, const char *channel, size_t chlen,
                       size_t len, const char *why);

/* Hands the batched events to the workers (tb__app_deliver_batch). */
void tb__bus_rx_flush(tb__bus_rx *rx);

/* Logs how many drop lines were suppressed once their second is over (see
 * tb__ratelog_flush; now_us monotonic, INT64_MAX: at once), and sends
 * again a catch-up read that failed once its retry time has come. */
void tb__bus_rx_tick(tb__bus_rx *rx, int64_t now_us);

/* Fills out's received, duplicates, malformed and oversize. Any thread. */
void tb__bus_rx_status(tb__bus_rx *rx, tb_bus_info *out);

/* Catching up (history on, docs/HISTORY.md). The receiver remembers the
 * last position it delivered. A message whose position (read off its
 * envelope's tail) skips ahead in the same epoch is a gap: the receiver
 * parks what arrives live, asks the bus for the history after its last
 * position (fetch), delivers what it missed in order, then the parked
 * messages (those the read brought already are duplicates, dropped). A
 * live message at or before the last position goes on to the id check
 * (a resend, or one on its way since before the first read). One of
 * another epoch is parked and the history read: if it answers with that
 * epoch, the history was lost (logged, counting starts over from that
 * epoch's beginning); if not, the message is dropped as malformed. After a
 * reconnect it reads everything after its last position the same way. fetch(ud,
 * after, count) asks for the page of at most count entries after seq `after`
 * (count 0: only where the history stands), returning 0 or the TB_E* code it
 * could not be asked with; the bus hands the answer to tb__bus_rx_fetched. Bus
 * thread, like the rest. */
void tb__bus_rx_track(tb__bus_rx *rx,
                      int (*fetch)(void *ud, uint64_t after, size_t count),
                      void *ud);
/* rollback(ud), ud as fetch's: called when a catch-up answer shows the
 * history's end before the last position delivered here, in the same
 * epoch (Redis came back from an older RDB/AOF: the positions after its
 * end will be given out again): the bus starts the history over in a new
 * epoch, as after a failover, so that no client resumes over the reused
 * positions with recovered true. */
void tb__bus_rx_on_rollback(tb__bus_rx *rx, void (*rollback)(void *ud));
/* The subscription is confirmed (a connection or a reconnection): catch
 * up from the last position delivered, or, the first time, learn where
 * the history stands. */
void tb__bus_rx_connected(tb__bus_rx *rx);
/* The connection is lost: a read under way will not be answered. */
void tb__bus_rx_disconnected(tb__bus_rx *rx);
/* The epoch of the last position delivered ("" when none yet) into
 * out. */
void tb__bus_rx_epoch(tb__bus_rx *rx, char out[TB_EPOCH_MAX]);
/* The last position delivered here (or read as the baseline): its epoch
 * ("" when none yet), seq, and the id of the event there ("" when not
 * known: a baseline, or a hole that was counted lost). A failover
 * checks them against the new master (bus_redis_history.c). Bus
 * thread. */
void tb__bus_rx_last(tb__bus_rx *rx, char epoch[TB_EPOCH_MAX], uint64_t *seq,
                     char id[TB_EVENT_ID_MAX]);
/* fetch's answer: status 0 with the page (borrowed), or a TB_E* code. */
void tb__bus_rx_fetched(tb__bus_rx *rx, int status,
                        const struct tb__hist_page *pg);

#endif /* TASKBUS_BUS_H */
