/* bus_redis.c - the Redis event bus: hiredis pub/sub on its own thread. */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "bus_redis.h"

/* How it works.
 *
 * One thread per app ("tb-bus-redis") runs its own event_base with two
 * hiredis connections: `sub` holds PSUBSCRIBE "<ns>:event:*", `pub` sends
 * PUBLISH. One subscription per process means Redis sends each message once
 * per instance, not once per worker, and each envelope is decoded once; the
 * workers get the event through their inboxes (tb__app_deliver).
 *
 * Publishers (any thread) hand their events to the core's publish queue
 * (service/bus_tx.c), which encodes the envelope on their thread and wakes
 * the bus thread when the queue was empty. The bus thread pipelines PUBLISH
 * commands and keeps the sent ones in a FIFO: Redis answers in order. When
 * the connection is lost, the unanswered and queued requests are resent
 * after the reconnect (receivers drop the duplicates by event id), unless
 * they were accepted more than publish_retry_ms ago. At most TB__RB_ECHO_WINDOW
 * bytes of our own events are published ahead of what has come back on
 * `sub` (see bus_redis_publish.c).
 *
 * Received messages go to the core's receiver (service/bus_rx.c), which
 * checks, decodes and deduplicates them and hands them to every worker.
 *
 * A Redis ACL user needs +publish +psubscribe +ping (+select for a db other
 * than 0, +role with Sentinel) and the channels "<ns>:event:*".
 *
 * With a redis-sentinel:// URL, bus_redis_sentinel.c finds the master for
 * each attempt and watches for failovers; `pub` checks ROLE before the bus
 * counts as connected and every ping interval after, and a READONLY answer
 * or a failover announcement ends the connection (after a drain, for the
 * announcement: see tb__rb_switch). Everything else is the same.
 *
 * States (the core's tb__bus_conn, service/bus_conn.c): CONNECTING (first
 * attempt) -> CONNECTED -> RECONNECTING (lost; retrying with backoff) ->
 * CONNECTED ...; STOPPED after stop(). CONNECTED means both links are
 * authenticated, `pub` has answered a PING (with Sentinel: ROLE says
 * master) and `sub` has confirmed its PSUBSCRIBE, so our own events come
 * back to us.
 *
 * hiredis 0.14 rules this file and bus_redis_link.c (the links'
 * handshake and keepalive) live by:
 *  - A context is freed by hiredis itself after a failed connect (after the
 *    connect callback) or a lost link (after the disconnect callback), and
 *    by redisAsyncFree. Pending reply callbacks then run with a NULL reply.
 *    rlink.ac is cleared before any of that, and every callback ignores a
 *    NULL reply or a context that is no longer its link's.
 *  - redisAsyncFree is only ever called from this file's own top-level
 *    libevent callbacks (teardown, finish: tb__rb_links_close, and
 *    link_open's context never attached), never from inside a hiredis
 *    callback: there it would be deferred, or (in the connect callback) a
 *    use after free.
 *  - hiredis writes with write(2): the bus thread blocks SIGPIPE (all
 *    signals) so a peer that closed turns into EPIPE, not a dead process. */

/* ---------------------------------------------------------------- helpers */

static struct timeval tv_ms(int64_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000,
                         .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* Takes everything publishers queued. Bus thread. */
void tb__rb_drain_inq(rbus *b)
{
    tb__bus_tx_take(b->tx, &b->sendq);
}

/* Gives up the unsent requests accepted more than publish_retry_ms ago:
 * cb(TB_ETIMEDOUT), one log line with the count. Bus thread. */
static void expire_stale(rbus *b, int64_t now)
{
    size_t n = tb__bus_tx_expire(b->tx, &b->sendq, now);
    if (n)
        tb__log(TB_LOG_WARN,
                "redis bus: gave up %zu event(s) not published within "
                "publish_retry_ms (%" PRId64 " ms) while %s was "
                "unreachable",
                n, b->retry_us / 1000, b->url);
}

/* ---------------------------------------------------------------- receive */

/* The receiver started a batch: hand it to the workers right after the
 * current read (flush_ev runs later in the same loop iteration), so that
 * batching adds no waiting. */
static void schedule_flush(void *arg)
{
    rbus *b = arg;
    event_active(b->flush_ev, EV_TIMEOUT, 0);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rbus *b = arg;
    tb__bus_rx_flush(b->rx);
}

/* Our own events coming back reopen the publish window (see
 * bus_redis_publish.c). Our encoder always starts an envelope with our id, so
 * the first bytes tell, without decoding. */
static void note_echo(rbus *b, const char *msg, size_t len)
{
    if (b->echo_out > 0 && len > b->own_prefix_len &&
        memcmp(msg, b->own_prefix, b->own_prefix_len) == 0) {
        b->echo_out -= (int64_t)len;
        if (b->echo_out < 0)
            b->echo_out = 0;
        b->echo_last_us = tb__mono_us();
        if (b->sendq.head && b->echo_out <= TB__RB_ECHO_WINDOW / 2)
            tb__rb_flush_sendq(b);
        tb__rb_maybe_switch(b);
    }
}

/* A pmessage: [pmessage, pattern, channel, message]. */
static void handle_message(rbus *b, const redisReply *chr,
                           const redisReply *msgr)
{
    if (chr->type != REDIS_REPLY_STRING || msgr->type != REDIS_REPLY_STRING) {
        tb__bus_rx_refuse(b->rx, "?", 1, 0, "not a string message");
        return;
    }
    const char *msg = msgr->str;
    if (tb__bus_rx_message(b->rx, chr->str, chr->len, msg, msgr->len) == 0)
        note_echo(b, msg, msgr->len);
}

void tb__rb_on_sub_message(redisAsyncContext *ac, void *r, void *priv)
{
    rlink *l = priv;
    redisReply *reply = r;
    if (!reply || ac != l->ac)
        return;
    rbus *b = l->b;
    l->last_rx_us = tb__mono_us();
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = reply->element[0]->str;
    if (strcasecmp(kind, "pmessage") == 0 && reply->elements == 4) {
        const redisReply *pat = reply->element[1];
        const redisReply *msg = reply->element[3];
        if (pat->type == REDIS_REPLY_STRING && !strcmp(pat->str, b->ctl)) {
            if (msg->type == REDIS_REPLY_STRING)
                tb__rcl_message(b, msg->str, msg->len);
        } else {
            handle_message(b, reply->element[2], msg);
        }
    } else if (strcasecmp(kind, "pong") == 0) {
        l->ping_sent_us = 0;
    } else if (strcasecmp(kind, "psubscribe") == 0) {
        /* One confirmation per pattern: ready after the second (events,
         * then our control channel). */
        if (l->step == STEP_PSUBSCRIBE && reply->elements == 3 &&
            reply->element[2]->type == REDIS_REPLY_INTEGER &&
            reply->element[2]->integer >= 2) {
            l->step = STEP_READY;
            tb__rb_link_step(b, l);
        }
    } else if (strcasecmp(kind, "punsubscribe") == 0) {
        tb__rb_fail(b, "the subscription was cancelled by the server");
    }
}

/* ---------------------------------------------------------------- tick */

static void on_stop(evutil_socket_t fd, short what, void *arg);

/* Periodic: attempt and command timeouts, keepalive pings, expiry of
 * requests while disconnected, suppressed-log counts, the stop deadline. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rbus *b = arg;
    int64_t now = tb__mono_us();
    tb__bus_rx_tick(b->rx, now);
    tb__ratelog_flush(&b->pub_log, now);
    tb__ratelog_flush(&b->kv_log, now);
    if (b->finished)
        return;
    if (b->stopping && now >= b->stop_deadline_us)
        event_active(b->stop_ev, EV_TIMEOUT, 0);
    tb__rsn_tick(b, now);
    if (b->failing)
        return;
    int st = tb__bus_conn_state(b->conn);
    if (st != TB_BUS_CONNECTED) {
        tb__rb_drain_inq(b);
        expire_stale(b, now);
        if (b->attempting && now - b->attempt_us > b->connect_to_us)
            tb__rb_fail(b,
                        "no connection within %" PRId64 " ms (connect and "
                        "handshake)",
                        b->connect_to_us / 1000);
        return;
    }
    tb__bus_req *h = b->inflight.head;
    if (h && now - h->sent_us > b->cmd_to_us) {
        tb__rb_fail(b, "PUBLISH not answered within %" PRId64 " ms",
                    b->cmd_to_us / 1000);
        return;
    }
    if (b->waiting && now - b->wait_sent_us > b->cmd_to_us) {
        tb__rb_fail(b, "WAIT not answered within %" PRId64 " ms",
                    b->cmd_to_us / 1000);
        return;
    }
    for (int i = 0; i < NLINKS; i++) {
        rlink *l = &b->links[i];
        if (l->ping_sent_us && now - l->ping_sent_us > b->cmd_to_us) {
            tb__rb_fail(
                b, "PING on the %s link not answered within %" PRId64 " ms",
                l->name, b->cmd_to_us / 1000);
            return;
        }
    }
    if (b->echo_out > 0 && now - b->echo_last_us > b->cmd_to_us) {
        /* Some of ours did not come back (dropped as malformed here, say).
         * The sub link itself is checked by its PINGs: just forget them so
         * that the window cannot stay shut. */
        tb__log(TB_LOG_DEBUG,
                "redis bus: %" PRId64 " bytes of our events not seen back "
                "within %" PRId64 " ms; echo window reset",
                b->echo_out, b->cmd_to_us / 1000);
        b->echo_out = 0;
        tb__rb_flush_sendq(b);
        tb__rb_maybe_switch(b);
    }
    if (b->switching && now >= b->switch_deadline_us) {
        tb__rb_fail(b,
                    "%s (not all of our events came back from the old "
                    "master within %" PRId64 " ms)",
                    b->switch_why, b->cmd_to_us / 1000);
        return;
    }
    rlink *sub = &b->links[LINK_SUB], *pub = &b->links[LINK_PUB];
    if (!sub->ping_sent_us && now - sub->last_rx_us >= b->ping_us)
        tb__rb_sub_ping(b, sub, now);
    if (!pub->ping_sent_us &&
        (b->t.nsentinels
             ? now - b->role_sent_us >= b->ping_us
             : !b->inflight.head && now - pub->last_rx_us >= b->ping_us))
        tb__rb_pub_ping(b, pub, now);
}

/* ---------------------------------------------------------------- connect */

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rbus *b = arg;
    if (b->finished || b->failing)
        return;
    if (b->t.nsentinels)
        tb__rsn_attempt(b); /* finds the master, then tb__rb_open_links */
    else
        tb__rb_open_links(b);
}

void tb__rb_connected(rbus *b)
{
    b->attempting = 0;
    b->logged_reject[0] = '\0';
    b->h_deciding = 0; /* a decision lost with the last connection */
    int reconnected;
    uint64_t failed = tb__bus_conn_up(b->conn, &reconnected);
    char where[1024];
    if (b->t.nsentinels)
        snprintf(where, sizeof where,
                 "master %s at %s:%d (named by sentinel "
                 "%d of %s)",
                 b->t.master, b->master_host, b->master_port,
                 b->master_from + 1, b->url);
    else
        snprintf(where, sizeof where, "%s", b->url);
    if (reconnected)
        tb__log(TB_LOG_INFO,
                "redis bus: reconnected to %s after %" PRId64 " ms (%" PRIu64
                " failed attempts)",
                where, (tb__mono_us() - b->lost_us) / 1000, failed);
    else
        tb__log(TB_LOG_INFO, "redis bus: connected to %s (channels %s)", where,
                b->pattern);
    if (b->t.nsentinels) {
        /* A new master may lack our last writes (replication is
         * asynchronous): the cluster puts its records again. */
        if (b->up_port && (b->up_port != b->master_port ||
                           strcmp(b->up_host, b->master_host) != 0)) {
            tb__log(TB_LOG_INFO,
                    "redis bus: master %s moved from %s:%d to %s:%d",
                    b->t.master, b->up_host, b->up_port, b->master_host,
                    b->master_port);
            tb__bus_store_lost(b->bus.app);
        }
        /* ... and the history its last positions: before we publish
         * anything there, the epoch goes on if the new master has what we
         * acknowledged and saw, else a new one. At every connection, not
         * only when we saw the master move: a failover (or two, M to R
         * and back) may have happened while we were away or before we
         * started, and the publish script refuses until we decided. */
        tb__rh_failover(b, NULL);
        snprintf(b->up_host, sizeof b->up_host, "%s", b->master_host);
        b->up_port = b->master_port;
    }
    b->echo_out = 0;
    tb__rkv_connected(b);
    /* What was published while we were away, from the history. */
    tb__bus_rx_connected(b->rx);
    /* Resend what waited, from the loop rather than inside this reply
     * callback; the stale ones are given up first. */
    tb__rb_drain_inq(b);
    expire_stale(b, tb__mono_us());
    event_active(b->wake_ev, EV_TIMEOUT, 0);
    if (b->stopping)
        event_active(b->stop_ev, EV_TIMEOUT, 0);
}

/* Closes both links after tb__rb_fail, keeps the unanswered requests for the
 * next connection, updates the state, and schedules the next attempt. */
static void on_teardown(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rbus *b = arg;
    if (b->finished)
        return;
    tb__bus_rx_disconnected(b->rx);
    tb__rb_links_close(b);
    tb__rsn_teardown(b);
    tb__bus_reqlist_prepend(&b->sendq, &b->inflight);
    /* Published, but not confirmed by the WAIT: resent (the script skips
     * what ran) and waited for on the next connection. */
    tb__bus_reqlist_prepend(&b->sendq, &b->answered);
    b->waiting = 0;
    b->attempting = 0;
    b->switching = 0;
    int lost;
    uint64_t failed = tb__bus_conn_down(b->conn, b->fail_why, &lost);
    /* A master a sentinel announced is tried at once. */
    int64_t delay = b->hint_port && tb__rsn_switch_now(b)
                        ? 0
                        : tb__bus_conn_backoff_ms(b->conn, failed);
    if (lost) {
        b->lost_us = tb__mono_us();
        tb__log(TB_LOG_WARN,
                "redis bus: connection to %s lost: %s; reconnecting "
                "(%zu event(s) to resend)",
                b->url, b->fail_why, b->sendq.n);
    } else {
        tb__log(TB_LOG_DEBUG,
                "redis bus: attempt %" PRIu64 " to connect to %s failed: "
                "%s; next in %" PRId64 " ms",
                failed, b->url, b->fail_why, delay);
    }
    b->failing = 0;
    struct timeval tv = tv_ms(delay);
    event_add(b->retry_ev, &tv);
}

/* ---------------------------------------------------------------- stop */

/* Ends the bus: gives up what is left (cb(TB_ESHUTDOWN)), closes the
 * links and leaves the loop. Top level only. */
static void finish(rbus *b)
{
    b->finished = 1;
    tb__bus_rx_flush(b->rx);
    event_del(b->flush_ev);
    event_del(b->tick_ev);
    event_del(b->retry_ev);
    event_del(b->teardown_ev);
    event_del(b->wake_ev);
    event_del(b->stop_ev);
    tb__rkv_finish(b);
    tb__bus_rx_disconnected(b->rx);
    tb__rb_links_close(b);
    tb__rsn_finish(b);
    tb__rb_drain_inq(b);
    tb__bus_reqlist_prepend(&b->sendq, &b->inflight);
    tb__bus_reqlist_prepend(&b->sendq, &b->answered);
    b->waiting = 0;
    tb__bus_rx_tick(b->rx, INT64_MAX);
    tb__ratelog_flush(&b->pub_log, INT64_MAX);
    tb__ratelog_flush(&b->kv_log, INT64_MAX);
    size_t n = tb__bus_tx_give_up(b->tx, &b->sendq, TB_ESHUTDOWN);
    if (n)
        tb__log(TB_LOG_WARN,
                "redis bus: %zu event(s) not confirmed by %s at stop: "
                "given up",
                n, b->url);
    tb__bus_conn_set(b->conn, TB_BUS_STOPPED);
    tb__log(TB_LOG_INFO, "redis bus: stopped (%s)", b->url);
    event_base_loopbreak(b->base);
}

/* stop() asked us to end: flush for at most redis_command_timeout_ms, then
 * finish. Also runs when the last request is answered and at the deadline. */
static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rbus *b = arg;
    if (b->finished)
        return;
    int64_t now = tb__mono_us();
    if (!b->stopping) {
        b->stopping = 1;
        b->stop_deadline_us = now + b->cmd_to_us;
        tb__rb_drain_inq(b);
        tb__rb_flush_sendq(b);
        struct timeval tv = tv_ms(b->cmd_to_us / 1000 + 1);
        event_add(b->stop_ev, &tv);
    }
    if ((!b->sendq.head && !b->inflight.head && !b->answered.head) ||
        now >= b->stop_deadline_us)
        finish(b);
}

static void *bus_main(void *arg)
{
    rbus *b = arg;
    event_base_loop(b->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

/* ---------------------------------------------------------------- ops */

static void free_events(rbus *b)
{
    struct event **evs[] = {&b->wake_ev,  &b->stop_ev, &b->teardown_ev,
                            &b->retry_ev, &b->tick_ev, &b->flush_ev,
                            &b->kv_ev};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++) {
        if (*evs[i])
            event_free(*evs[i]);
        *evs[i] = NULL;
    }
    if (b->base)
        event_base_free(b->base);
    b->base = NULL;
}

/* Launches the bus thread and waits up to redis_connect_timeout_ms for the
 * first connection. Returns 0 whether or not it is connected by then (it
 * keeps trying in the background); TB_ENOMEM or TB_EAGAIN only if the
 * thread or its loop cannot be created. */
static int rb_start(tb__bus *bus)
{
    rbus *b = (rbus *)bus;
    if (b->thread_started || b->closed)
        return TB_ESHUTDOWN;
    b->base = event_base_new();
    if (!b->base)
        goto nomem;
    b->wake_ev = event_new(b->base, -1, 0, tb__rb_on_wake, b);
    b->stop_ev = event_new(b->base, -1, 0, on_stop, b);
    b->teardown_ev = event_new(b->base, -1, 0, on_teardown, b);
    b->retry_ev = event_new(b->base, -1, 0, on_retry, b);
    b->tick_ev = event_new(b->base, -1, EV_PERSIST, on_tick, b);
    b->flush_ev = event_new(b->base, -1, 0, on_flush, b);
    b->kv_ev = event_new(b->base, -1, 0, tb__rkv_on_queued, b);
    if (!b->wake_ev || !b->stop_ev || !b->teardown_ev || !b->retry_ev ||
        !b->tick_ev || !b->flush_ev || !b->kv_ev)
        goto nomem;
    /* The tick bounds how late a timeout is noticed: a quarter of the
     * shortest one, within 10..250 ms. */
    int64_t tick = b->cmd_to_us;
    if (b->connect_to_us < tick)
        tick = b->connect_to_us;
    if (b->ping_us < tick)
        tick = b->ping_us;
    tick = tick / 4000;
    tick = tick < 10 ? 10 : tick > 250 ? 250 : tick;
    struct timeval tv = tv_ms(tick);
    event_add(b->tick_ev, &tv);
    tb__bus_conn_set(b->conn, TB_BUS_CONNECTING);
    event_active(b->retry_ev, EV_TIMEOUT, 0); /* the first attempt */
    tb__log(TB_LOG_INFO, "event bus: redis at %s, channels %s", b->url,
            b->pattern);

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&b->thread, NULL, bus_main, b);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        tb__log(TB_LOG_ERROR, "redis bus: cannot create its thread: %s",
                strerror(rc));
        free_events(b);
        tb__bus_conn_set(b->conn, TB_BUS_STOPPED);
        return TB_EAGAIN;
    }
    pthread_setname_np(b->thread, "tb-bus-redis");
    b->thread_started = 1;

    char err[256] = "";
    /* With Sentinel, a sentinel's answer first, then the master. */
    int64_t wait = b->connect_to_us * (b->t.nsentinels ? 2 : 1);
    if (!tb__bus_conn_wait(b->conn, wait, err, sizeof err))
        tb__log(TB_LOG_WARN,
                "redis bus: not connected to %s after %" PRId64 " ms (%s); "
                "dispatch fails with ENOTCONN until it is; retrying in the "
                "background",
                b->url, wait / 1000, err[0] ? err : "no answer yet");
    return 0;
nomem:
    tb__log(TB_LOG_ERROR, "redis bus: cannot create its event loop");
    free_events(b);
    return TB_ENOMEM;
}

static int rb_publish(tb__bus *bus, tb_event *ev, tb__publish_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    tb_bus_state st = tb__bus_conn_state(b->conn);
    if (st != TB_BUS_CONNECTED)
        return st == TB_BUS_STOPPED ? TB_ESHUTDOWN : TB_ENOTCONN;
    return tb__bus_tx_put(b->tx, ev, cb, ud);
}

static int rb_publish_many(tb__bus *bus, tb_event *const *evs, size_t n,
                           tb__publish_cb cb, void *const *uds)
{
    rbus *b = (rbus *)bus;
    tb_bus_state st = tb__bus_conn_state(b->conn);
    if (st != TB_BUS_CONNECTED)
        return st == TB_BUS_STOPPED ? TB_ESHUTDOWN : TB_ENOTCONN;
    return tb__bus_tx_put_many(b->tx, evs, n, cb, uds);
}

/* A publisher queued the first event: the bus thread takes the queue. */
static void wake(void *arg)
{
    rbus *b = arg;
    event_active(b->wake_ev, EV_TIMEOUT, 0);
}

static void rb_status(tb__bus *bus, tb_bus_info *out)
{
    rbus *b = (rbus *)bus;
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "redis");
    tb__bus_conn_status(b->conn, out);
    tb__bus_tx_status(b->tx, out);
    tb__bus_rx_status(b->rx, out);
}

/* Flushes for at most redis_command_timeout_ms, gives up the rest with
 * TB_ESHUTDOWN, closes the links and joins the thread. Safe without start
 * and when called twice. */
static void rb_stop(tb__bus *bus)
{
    rbus *b = (rbus *)bus;
    tb__bus_tx_close(b->tx);
    b->closed = 1;
    if (!b->thread_started || b->joined) {
        tb__bus_conn_set(b->conn, TB_BUS_STOPPED);
        return;
    }
    event_active(b->stop_ev, EV_TIMEOUT, 0);
    pthread_join(b->thread, NULL);
    b->joined = 1;
}

static void rb_free(tb__bus *bus)
{
    rbus *b = (rbus *)bus;
    if (b->thread_started && !b->joined)
        rb_stop(bus);
    free_events(b);
    /* Empty after a stop; callbacks are not run for anything left. */
    tb__bus_tx_free(b->tx);
    tb__bus_reqlist_free(&b->sendq);
    tb__bus_reqlist_free(&b->inflight);
    tb__bus_reqlist_free(&b->answered);
    tb__bus_rx_free(b->rx);
    tb__bus_conn_free(b->conn);
    tb__rkv_free(b);
    free(b);
}

static const tb__bus_ops redis_ops = {
    .name = "redis",
    .start = rb_start,
    .publish = rb_publish,
    .publish_many = rb_publish_many,
    .status = rb_status,
    .stop = rb_stop,
    .free = rb_free,
    .kv = &tb__rkv_ops,
    .cluster = &tb__rcl_ops,
    .history = tb__rh_history,
};

tb__bus *tb__bus_redis_new(tb_app *app, int *err)
{
    const tb_app_config *c = tb_app_get_config(app);
    tb__redis_target t;
    char why[256] = "";
    char url[512];
    tb__redis_url_redact(c->redis.url, url, sizeof url);
    if (tb__redis_url_parse(c->redis.url, &t, why, sizeof why) != 0) {
        tb__log(TB_LOG_ERROR, "invalid redis_url %s: %s", url, why);
        *err = TB_EINVAL;
        return NULL;
    }
    if (c->redis.password && c->redis.password[0]) {
        if (strlen(c->redis.password) >= sizeof t.password) {
            tb__log(TB_LOG_ERROR, "redis_password is over %zu bytes",
                    sizeof t.password - 1);
            *err = TB_EINVAL;
            return NULL;
        }
        snprintf(t.password, sizeof t.password, "%s", c->redis.password);
    }
    rbus *b = calloc(1, sizeof *b);
    if (!b) {
        *err = TB_ENOMEM;
        return NULL;
    }
    /* event_namespace is 1..64 bytes (checked by the app). */
    snprintf(b->prefix, sizeof b->prefix, "%s:event:", c->core.event_namespace);
    b->conn = tb__bus_conn_new(c->redis.retry_min_ms, c->redis.retry_max_ms);
    b->tx = tb__bus_tx_new(b->prefix, c->redis.publish_queue_max,
                           c->redis.publish_retry_ms, wake, b);
    b->rx = tb__bus_rx_new(app, "redis bus", b->prefix, schedule_flush, b);
    if (!b->conn || !b->tx || !b->rx) {
        tb__bus_conn_free(b->conn);
        tb__bus_tx_free(b->tx);
        tb__bus_rx_free(b->rx);
        free(b);
        *err = TB_ENOMEM;
        return NULL;
    }
    b->bus.ops = &redis_ops;
    b->bus.app = app;
    tb__rkv_init(b, c->core.event_namespace);
    tb__rh_init(b, c);
    b->t = t;
    explicit_bzero(&t, sizeof t);
    if (tb__rsn_init(b, c) != 0) {
        rb_free(&b->bus);
        *err = TB_EINVAL;
        return NULL;
    }
    snprintf(b->url, sizeof b->url, "%s", url);
    snprintf(b->pattern, sizeof b->pattern, "%s*", b->prefix);
    snprintf(b->ctl_prefix, sizeof b->ctl_prefix,
             "%s:ctl:", c->core.event_namespace);
    snprintf(b->ctl, sizeof b->ctl, "%s%s", b->ctl_prefix,
             tb__app_instance(app));
    b->connect_to_us = (int64_t)c->redis.connect_timeout_ms * 1000;
    b->cmd_to_us = (int64_t)c->redis.command_timeout_ms * 1000;
    b->retry_us = (int64_t)c->redis.publish_retry_ms * 1000;
    b->retry_min_us = (int64_t)c->redis.retry_min_ms * 1000;
    b->ping_us = (int64_t)c->redis.ping_interval_ms * 1000;
    for (int i = 0; i < NLINKS; i++) {
        b->links[i].b = b;
        b->links[i].name = i == LINK_SUB ? "sub" : "pub";
    }
    b->pub_log.who = "redis bus";
    b->pub_log.what = "refused-PUBLISH lines";
    b->own_prefix_len =
        (size_t)snprintf(b->own_prefix, sizeof b->own_prefix, "{\"id\":\"%s-",
                         tb__app_instance(app));
    *err = 0;
    return &b->bus;
}
