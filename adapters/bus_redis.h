/* bus_redis.h - the Redis bus's state, shared by its files: bus_redis.c
 * (the bus thread, receiving, the tick, reconnection, stop),
 * bus_redis_link.c (the two connections: handshake, keepalive, failure),
 * bus_redis_publish.c (the publish path), bus_redis_kv.c (scripts on the
 * command link, and the shared store), bus_redis_cluster.c (claims,
 * leases, definitions, messages between instances), bus_redis_history.c
 * (the history's stream) and bus_redis_sentinel.c (the master from Redis
 * Sentinel, and failovers). Private to them: nothing else includes it. */
#ifndef TASKBUS_BUS_REDIS_H
#define TASKBUS_BUS_REDIS_H

#include <pthread.h>

#include <event2/event.h>
#include <hiredis/async.h>

#include "adapters.h"

#define RKV_SCRIPTS_MAX 18 /* scripts of the store, cluster and history */
#define RKV_ARGS_MAX 8     /* keys and arguments of one request */

enum {
    LINK_SUB = 0,
    LINK_PUB = 1,
    NLINKS = 2
};

/* Handshake steps, in order; a link skips the ones it does not need. */
enum {
    STEP_AUTH = 0,
    STEP_SELECT,
    STEP_ROLE, /* Sentinel: `pub` checks that it reached a master */
    STEP_PING,
    STEP_PSUBSCRIBE,
    STEP_READY
};

typedef struct rlink {
    struct rbus *b;
    const char *name;      /* "sub" or "pub", for logs */
    redisAsyncContext *ac; /* NULL when there is none or hiredis frees it */
    int step;              /* STEP_* */
    int64_t last_rx_us;    /* monotonic: last reply or message */
    int64_t ping_sent_us;  /* monotonic; 0: no PING outstanding */
} rlink;

/* A connection to one sentinel (bus_redis_sentinel.c): the query that asks
 * for the master, or a watch that waits for +switch-master. Not hiredis:
 * a bufferevent read with the core's bounded RESP reader (service/resp.c
 * says why). */
typedef struct rsen {
    struct rbus *b;
    int idx;                 /* which of b->t.sentinels */
    int watch;               /* 1: a watch; 0: the query */
    struct bufferevent *bev; /* NULL: closed */
    unsigned gen;            /* counts closes: a callback's link is gone */
    int step;                /* SEN_* (bus_redis_sentinel.c) */
    int64_t opened_us;       /* monotonic: connection attempt started */
    int64_t ping_sent_us;    /* a watch: PING outstanding since; 0: none */
    int64_t last_rx_us;      /* a watch: last reply or message */
    int64_t retry_at_us;     /* a watch that is down: next attempt; 0: none */
    uint64_t failures;       /* a watch: failed attempts in a row */
    char complaint[160];     /* a watch: the last problem logged ("": none) */
} rsen;

typedef struct rbus {
    tb__bus bus;

    /* --- fixed in tb__bus_redis_new --- */
    tb__redis_target t;
    char url[512];        /* redacted, for logs */
    char prefix[128];     /* "<ns>:event:" */
    char pattern[130];    /* "<ns>:event:*" */
    char ctl[160];        /* "<ns>:ctl:<instance>": messages for us */
    char ctl_prefix[140]; /* "<ns>:ctl:" */
    int64_t connect_to_us, cmd_to_us, ping_us;
    int64_t retry_us;   /* publish_retry_ms: how long an accepted event is
                           kept for resending */
    tb__bus_conn *conn; /* the state; any thread reads it */
    tb__bus_tx *tx;     /* accepted events (any thread), until completed */
    tb__bus_rx *rx;     /* received messages (bus thread) */

    /* --- the app's thread (start/stop/free) --- */
    pthread_t thread;
    int thread_started, joined;
    int closed; /* stop() has begun */

    /* --- the bus thread only --- */
    struct event_base *base;
    struct event *wake_ev;     /* publishers: the queue became non-empty */
    struct event *stop_ev;     /* stop(): flush, then finish; also a timer */
    struct event *teardown_ev; /* close both links, schedule a retry */
    struct event *retry_ev;    /* the next connection attempt */
    struct event *tick_ev;     /* timeouts and keepalive pings */
    rlink links[NLINKS];
    tb__bus_reqlist sendq;    /* to send once connected (resends first) */
    tb__bus_reqlist inflight; /* sent on `pub`, answer pending; in order */
    tb__bus_reqlist answered; /* published, waiting for the WAIT after them
                                 (redis.wait_replicas); in order */
    int waiting;              /* a WAIT is in flight on `pub` */
    int64_t wait_sent_us;
    int attempting; /* an attempt is under way */
    int64_t attempt_us;
    int failing; /* teardown_ev is active: the first reason wins */
    char fail_why[256];
    int64_t lost_us;      /* monotonic time the connection was lost */
    int64_t echo_out;     /* bytes published, not yet back on `sub` */
    int64_t echo_last_us; /* last echo, or when echo_out left 0 */
    char own_prefix[48];  /* how our own envelopes start: {"id":"<inst>- */
    size_t own_prefix_len;
    /* Received events are handed to the workers together after the read
     * that produced them: one lock and one wake-up per worker per batch
     * instead of per event. */
    struct event *flush_ev;
    int stopping, finished;
    int64_t stop_deadline_us;
    char logged_reject[512]; /* last refusal logged; "" after a success */
    tb__ratelog pub_log;

    /* --- Sentinel (bus_redis_sentinel.c), when t.nsentinels > 0 --- */
    char sen_password[512]; /* redis.sentinel_password; "" for none */
    char master_host[256];  /* where the links connect: the master a
                               sentinel named last */
    int master_port;
    int master_from;   /* the sentinel that named it */
    char up_host[256]; /* the master we were last connected to */
    int up_port;
    char hint_host[256];      /* a master a sentinel announced: the next
                                 attempt goes there without asking */
    int hint_port, hint_from; /* hint_port 0: no hint */
    int resolving;            /* the query is asking the sentinels */
    int ask_next, asked;      /* the next sentinel to ask; asked this round */
    int sen_pref;             /* asked first: the last that answered */
    char ask_why[256];        /* why each sentinel of the round failed */
    char ask_complaint[TB__SENTINELS_MAX][160]; /* the query's last problem
                                                   logged, per sentinel */
    int switching;         /* a failover was announced: draining `pub` */
    int64_t switch_now_us; /* the last attempt an announcement hurried */
    int64_t retry_min_us;  /* redis.retry_min_ms */
    int64_t switch_deadline_us;
    char switch_why[1024];
    int64_t role_sent_us; /* the last ROLE check of `pub` */
    int watches_started;
    rsen query;
    rsen watches[TB__SENTINELS_MAX]; /* watches[i]: sentinel i */

    /* --- the store (bus_redis_kv.c) --- */
    pthread_mutex_t kv_mu;             /* guards kv_head, kv_tail, kv_closed */
    struct rkv_req *kv_head, *kv_tail; /* queued by any thread */
    int kv_closed;                     /* finish() has run: refuse */
    struct event *kv_ev;               /* requests were queued */
    char kv_prefix[80];                /* "{<ns>}:", the hash tag */
    char sha[RKV_SCRIPTS_MAX][41];     /* the scripts' SHA1s; "": not loaded */
    tb__ratelog kv_log;                /* refused or malformed replies */

    /* --- the history (bus_redis_history.c), fixed in tb__rh_init --- */
    int h_on;                     /* core.history_size > 0 */
    char h_epoch[TB_EPOCH_MAX];   /* ours, if we publish first */
    char h_maxlen[16];            /* "=N" or "~N" */
    char h_ttl[16], h_txkeep[24]; /* ms */
    char h_stream[100], h_meta[100], h_tx[120];
    /* The failover count (the meta hash's `fo`) of the last decision on
     * this master, and whether one is under way (nothing is published
     * until it is answered). */
    char h_fo[24];
    char h_master[300]; /* the publish script's ARGV[5]: argv points here
                           until redisAsyncCommandArgv has copied it */
    int h_deciding;
    /* redis.wait_replicas (0: no WAIT) and its timeout, as arguments. */
    int wait_n;
    char wait_n_s[16], wait_to_s[16];
    uint64_t wait_short; /* events answered not_replicated this burst */
    size_t wait_warned;  /* replicas attached when last warned of; 0 none */
    /* This instance's last publish the script answered (pend_*) and the
     * last one acknowledged to its publisher (ack_*, after the WAIT with
     * wait_n): a failover checks that the new master has it. */
    char pend_epoch[TB_EPOCH_MAX], ack_epoch[TB_EPOCH_MAX];
    uint64_t pend_seq, ack_seq;
    char pend_id[TB_EVENT_ID_MAX], ack_id[TB_EVENT_ID_MAX];
} rbus;

/* --------------------------------------------------- the store (kv.c) */

/* A Lua script: loaded once per connection; slot indexes b->sha. */
typedef struct tb__rkv_script {
    const char *name; /* for logs */
    const char *body;
    int slot; /* 0..RKV_SCRIPTS_MAX-1, one per script */
} tb__rkv_script;

struct redisReply;

/* One request on the command link: a script call (EVALSHA sha nkeys
 * argv...) or, with no script, a plain command (argv). ok runs with a
 * reply that is not an error; fail with the TB_E* status otherwise
 * (TB_ENOTCONN, TB_EIO for an error reply, TB_EAGAIN after NOSCRIPT,
 * TB_ESHUTDOWN). Exactly one of them runs, on the bus thread; then the
 * request is freed. */
typedef struct rkv_req rkv_req;
struct rkv_req {
    rkv_req *next;
    rbus *b;
    const tb__rkv_script *script; /* NULL: argv is a command */
    int nkeys, argc;
    const char *argv[RKV_ARGS_MAX];
    size_t lens[RKV_ARGS_MAX];
    void (*ok)(rkv_req *r, const struct redisReply *reply);
    void (*fail)(rkv_req *r, int status);
    union {
        tb__kv_done_cb done;
        tb__kv_list_cb listed;
        tb__claim_cb claimed;
        void (*hist)(int status, const tb__hist_page *pg, void *ud);
    } cb;
    void *ud;
    size_t list_max, value_max; /* a list's bounds */
    int names_any;              /* a list's ids are names, not store ids */
    int repeats;                /* the cluster's: resends so far */
    uint64_t after;             /* a history read's: from after this seq */
    char label[96];             /* what it is, for logs */
    char data[];                /* argv's bytes */
};

/* A request of script (NULL: a command) with argc arguments (copied), the
 * first nkeys of them keys. NULL when out of bounds or memory. Set its
 * handlers and label, then tb__rkv_submit it. */
rkv_req *tb__rkv_new(rbus *b, const tb__rkv_script *script, int nkeys, int argc,
                     const char *const *argv, const size_t *lens);
/* Queues r for the bus thread (any thread): 0, or TB_ENOTCONN /
 * TB_ESHUTDOWN with r freed and no handler run. */
int tb__rkv_submit(rkv_req *r);
/* Handlers for a reply that is an integer (cb 0) and for failures. */
void tb__rkv_done_handlers(rkv_req *r, tb__kv_done_cb cb, void *ud);
/* Handlers for a reply of id, value pairs and a skipped count. */
void tb__rkv_list_handlers(rkv_req *r, size_t list_max, size_t value_max,
                           int names_any, tb__kv_list_cb cb, void *ud);

/* Fills b's store state (after b->prefix's namespace is known). Before
 * the thread starts; tb__rkv_free undoes it. */
void tb__rkv_init(rbus *b, const char *ns);
/* kv_ev's callback: sends what was queued. */
void tb__rkv_on_queued(evutil_socket_t fd, short what, void *arg);
/* Its ops table, for redis_ops. */
extern const tb__kv_ops tb__rkv_ops;
/* Bus thread: the links are up: (re)loads the scripts. */
void tb__rkv_connected(rbus *b);
/* Bus thread, from finish(): refuses new requests and completes the
 * queued ones with TB_ESHUTDOWN. Requests sent already are completed by
 * hiredis's NULL replies when the links close. */
void tb__rkv_finish(rbus *b);
/* Frees what tb__rkv_init made (after the thread has ended). */
void tb__rkv_free(rbus *b);

/* ------------------------------------------------ the cluster (cluster.c) */

extern const tb__cluster_ops tb__rcl_ops;
/* Loads the cluster's scripts with load (tb__rkv_connected). */
void tb__rcl_load_scripts(rbus *b,
                          void (*load)(rbus *b, const tb__rkv_script *sc));
/* A message on our control channel (bus thread). */
void tb__rcl_message(rbus *b, const char *msg, size_t len);

/* ------------------------------------ the history (bus_redis_history.c) */

/* The publish script (tests run it by hand). */
extern const tb__rkv_script tb__rh_pub;
/* The failover script (bus_redis_history.c; exposed for its test). */
extern const char tb__rh_failover_lua[];
/* Fills b's history state from the config (after tb__rkv_init). */
void tb__rh_init(rbus *b, const tb_app_config *c);
/* Loads the history's scripts with load (tb__rkv_connected), if on. */
void tb__rh_load_scripts(rbus *b,
                         void (*load)(rbus *b, const tb__rkv_script *sc));
/* Events one publish command carries at most, and its arguments. */
#define TB__RH_BATCH_MAX 64
#define TB__RH_ARGV_MAX (12 + 4 * TB__RH_BATCH_MAX)
/* The command that publishes qs[0..n-1] (1..TB__RH_BATCH_MAX, in queue
 * order) with their positions (EVALSHA, or EVAL while the script is not
 * loaded) into argv/lens (TB__RH_ARGV_MAX slots); nums holds some of its
 * arguments. Returns argc. Bus thread. */
int tb__rh_publish_argv(rbus *b, tb__bus_req *const *qs, int n,
                        char (*nums)[24], const char **argv, size_t *lens);
/* The bus reached a master (with Sentinel, at every connection, or when
 * the publish script refused: rolled_back NULL), or Redis came back from
 * an older snapshot of epoch rolled_back: after a failover it may lack the
 * last events and give their positions out again, so the failover script
 * decides (docs/HISTORY.md) whether the epoch goes on. Sent on `pub`
 * before anything else; nothing is published until it is answered, and a
 * failed answer fails the connection (retried). Bus thread. */
void tb__rh_failover(rbus *b, const char *rolled_back);
/* A publish command's reply: 1 when it is the script's answer ({appended,
 * epoch, seq of the last appended}), whose position (the event last, the
 * last of the command's) becomes the pending acknowledged one (committed
 * at once without wait_n, else by tb__rh_acked after the WAIT). 0 for
 * anything else. Bus thread. */
int tb__rh_published(rbus *b, const struct redisReply *reply,
                     const tb__bus_req *last);
/* The WAIT after the pending publishes confirmed them: they are
 * acknowledged. Bus thread. */
void tb__rh_acked(rbus *b);
/* A publish answered err: 1 when it was NOSCRIPT (to load the scripts)
 * or TBFAILOVER (to decide on the new master first): the connection is
 * failed, and the next one resends (none of it ran). Else 0. */
int tb__rh_refused(rbus *b, const char *err);
/* Reads the history after seq after, at most count (<= TB__KV_LIST_MAX)
 * entries, as the bus's history op does. Any thread. */
int tb__rh_read(rbus *b, uint64_t after, size_t count,
                void (*cb)(int status, const tb__hist_page *pg, void *ud),
                void *ud);
/* The bus's history op. */
int tb__rh_history(tb__bus *bus, uint64_t after, size_t count,
                   void (*cb)(int status, const tb__hist_page *pg, void *ud),
                   void *ud);

/* ----------------------------------------- the links (bus_redis_link.c) */

/* Declares the connection failed (the links are closed and the next
 * attempt scheduled, from the loop: outside any hiredis callback, so that
 * the teardown can free the contexts at once); the first reason wins. Bus
 * thread. */
void tb__rb_fail(rbus *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Opens `sub` and `pub` to b->master_host:master_port (Sentinel: the
 * address is known), or the URL's address, and starts their handshakes.
 * From a top-level event of the bus thread. */
void tb__rb_open_links(rbus *b);
/* Sends l's next handshake command, or marks it ready; both ready, calls
 * tb__rb_connected. Bus thread. */
void tb__rb_link_step(rbus *b, rlink *l);
/* Frees both links' contexts. Their pending callbacks run now with NULL
 * replies and are ignored (l->ac is cleared first). Only from a top-level
 * event callback of bus_redis.c (teardown, finish). */
void tb__rb_links_close(rbus *b);
/* PING on the subscribed link, whose answer comes to
 * tb__rb_on_sub_message as a message of our pattern. From on_tick. */
void tb__rb_sub_ping(rbus *b, rlink *l, int64_t now);
/* `pub`'s keepalive: PING, or with Sentinel ROLE, which on_tick sends
 * every ping interval even while PUBLISHes flow (they would otherwise keep
 * the link from being idle): a master demoted without Sentinel closing our
 * links (by hand, or by a sentinel we cannot reach) is left within an
 * interval (tb__rsn_role_probe). */
void tb__rb_pub_ping(rbus *b, rlink *l, int64_t now);

/* ------------------------------------------ the bus thread (bus_redis.c) */

/* Both links have finished their handshake: the bus is connected. */
void tb__rb_connected(rbus *b);
/* The pattern's callback on `sub`: the PSUBSCRIBE confirmation, every
 * pmessage, and the answers to our keepalive PING (tb__rb_sub_ping). */
void tb__rb_on_sub_message(redisAsyncContext *ac, void *r, void *priv);
/* With Sentinel, an error reply err that starts with READONLY (we wrote
 * to a replica: a failover we have not heard of) fails the connection, so
 * that the next attempt asks the sentinels again: returns 1. Else 0. */
int tb__rb_readonly(rbus *b, const char *err);
/* A sentinel announced that the master moved to b->hint_host: leave the
 * old one once what was sent there has come back (Sentinel). Bus thread. */
void tb__rb_switch(rbus *b);

/* ------------------------------------------ Sentinel (bus_redis_sentinel.c) */

/* Fills b's Sentinel state from the config (before the thread starts).
 * 0, or TB_EINVAL (logged) when the sentinels' password is too long. */
int tb__rsn_init(rbus *b, const tb_app_config *c);
/* An attempt to connect (on_retry): to the announced master if there is
 * one, else asks the sentinels in turn, then opens the links. Also starts
 * the watches the first time. Bus thread. */
void tb__rsn_attempt(rbus *b);
/* Timeouts of the query and the watches, keepalive pings, watches to
 * reopen. From on_tick. */
void tb__rsn_tick(rbus *b, int64_t now);
/* The connection failed: drops the query if one is under way (the
 * watches stay). From on_teardown. */
void tb__rsn_teardown(rbus *b);
/* Closes the query and every watch. From finish(). */
void tb__rsn_finish(rbus *b);
/* What a ROLE reply says the server is ("master", "slave", "sentinel"),
 * into role (n bytes); 0 when it is an answer of that form. */
int tb__rsn_role_of(const struct redisReply *reply, char *role, size_t n);
/* The periodic ROLE check's answer (tb__rb_pub_ping sends it; priv the
 * link). */
void tb__rsn_role_probe(redisAsyncContext *ac, void *r, void *priv);
/* 1 if an announced master may be tried without the backoff (at most
 * once per redis.retry_min_ms). */
int tb__rsn_switch_now(rbus *b);
/* Leaves the old master once the switch may go (nothing of ours in
 * flight, all we published there seen back on `sub`). Bus thread. */
void tb__rb_maybe_switch(rbus *b);
/* ------------------------------- the publish path (bus_redis_publish.c) */

/* Bytes of our own PUBLISHes that may be on their way back to our
 * subscription (see tb__rb_flush_sendq). Well under Redis's default pubsub
 * output buffer limits (32 MB hard, 8 MB for 60 s). */
#define TB__RB_ECHO_WINDOW (4 << 20)
/* Sends the queued requests on `pub` if connected, within the echo
 * window, then the WAIT for them with redis.wait_replicas. Bus thread. */
void tb__rb_flush_sendq(rbus *b);
/* Sends the WAIT after the publishes just sent (redis.wait_replicas > 0):
 * their publishers are answered by its reply; fails the connection if it
 * cannot be sent. Bus thread. */
void tb__rbw_send(rbus *b, int64_t now);
/* Publishers woke the bus thread (b->wake_ev): take and send. */
void tb__rb_on_wake(evutil_socket_t fd, short what, void *arg);
/* Moves what publishers handed over into b->sendq (bus_redis.c). */
void tb__rb_drain_inq(rbus *b);
/* A ROLE reply from the master: warns (once per count) when more replicas
 * are attached than redis.wait_replicas, which then no longer makes a
 * lost acknowledged event detected. */
void tb__rsn_replicas(rbus *b, const struct redisReply *reply);

#endif /* TASKBUS_BUS_REDIS_H */
