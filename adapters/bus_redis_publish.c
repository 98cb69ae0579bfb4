/* bus_redis_publish.c - the Redis bus's publish path: queued events sent
 * pipelined within the echo window, their replies, and the WAIT after them
 * (redis.wait_replicas) that answers their publishers. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "bus_redis.h"

/* Reply to a PUBLISH: requests are answered in the order they were sent. */
static void on_publish_reply(redisAsyncContext *ac, void *r, void *priv)
{
    rlink *l = ac->data;
    redisReply *reply = r;
    /* A NULL reply: the link is going; the request stays in flight and is
     * resent after the reconnect (or given up at stop). */
    if (!reply || ac != l->ac)
        return;
    rbus *b = l->b;
    int64_t now = tb__mono_us();
    l->last_rx_us = now;
    tb__bus_req *q = b->inflight.head;
    if (q != priv) {
        tb__rb_fail(b, "PUBLISH replies out of order");
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR &&
        (tb__rb_readonly(b, reply->str) || tb__rh_refused(b, reply->str)))
        return; /* kept in flight: resent after the reconnect */
    /* The command carried q and the batch - 1 after it. */
    tb__bus_req *last = q;
    for (int k = 1; k < q->batch && last->next; k++)
        last = last->next;
    int ok = b->h_on ? tb__rh_published(b, reply, last)
                     : reply->type == REDIS_REPLY_INTEGER;
    if (!ok && tb__ratelog_ok(&b->pub_log, now)) {
        char ch[128];
        tb__log(TB_LOG_ERROR,
                "redis bus: Redis refused PUBLISH of event %s on %s%s: %s",
                q->id, tb__log_printable(ch, sizeof ch, q->channel, q->chlen),
                q->batch > 1 ? " and the others sent with it" : "",
                reply->type == REDIS_REPLY_ERROR ? reply->str
                                                 : "unexpected reply");
    }
    for (int k = q->batch; k > 0 && b->inflight.head; k--) {
        tb__bus_req *p = tb__bus_reqlist_pop(&b->inflight);
        if (ok && b->wait_n)
            tb__bus_reqlist_push(&b->answered, p); /* until the WAIT */
        else
            tb__bus_tx_done(b->tx, p, ok ? 0 : TB_EIO);
    }
    if (b->stopping && !b->inflight.head && !b->answered.head && !b->sendq.head)
        event_active(b->stop_ev, EV_TIMEOUT, 0);
    tb__rb_maybe_switch(b);
}

/* Sends the queued requests on `pub` if connected, pipelined, as long as
 * the echo window allows.
 *
 * Why a window: every event we publish comes back to us on `sub`, and
 * receiving (decode, delivery to the workers) is slower than publishing.
 * Unchecked, a burst from one thread grows Redis's output buffer for our
 * subscription (and for every instance as slow as us) until Redis closes it
 * at client-output-buffer-limit and the events in it are lost. So at most
 * TB__RB_ECHO_WINDOW bytes of our own events may be published and not yet
 * received back (always at least one event); the sub callback reopens the
 * window as they come back. */
void tb__rb_flush_sendq(rbus *b)
{
    rlink *l = &b->links[LINK_PUB];
    /* One WAIT at a time: what is queued meanwhile goes out after its
     * answer, in as few commands as fit, so that a WAIT covers many
     * events (and a link without replicas costs a wait per round, not
     * per event). */
    if (b->failing || b->switching || b->waiting || b->h_deciding || !l->ac ||
        tb__bus_conn_state(b->conn) != TB_BUS_CONNECTED)
        return;
    int64_t now = tb__mono_us();
    int sent = 0;
    tb__bus_req *q;
    while ((q = b->sendq.head) != NULL) {
        /* One command carries one PUBLISH, or with the history up to
         * TB__RH_BATCH_MAX events for its script: what is queued now. */
        tb__bus_req *batch[TB__RH_BATCH_MAX];
        int n = 0;
        int64_t bytes = 0;
        for (tb__bus_req *p = q; p && n < (b->h_on ? TB__RH_BATCH_MAX : 1);
             p = p->next) {
            if ((b->echo_out > 0 || n > 0) &&
                b->echo_out + bytes + (int64_t)p->envlen >
                    (int64_t)TB__RB_ECHO_WINDOW)
                break;
            batch[n++] = p;
            bytes += (int64_t)p->envlen;
        }
        if (n == 0)
            break;
        const char *argv[TB__RH_ARGV_MAX] = {"PUBLISH", q->channel, q->env};
        size_t lens[TB__RH_ARGV_MAX] = {7, q->chlen, q->envlen};
        int argc = 3;
        char nums[TB__RH_BATCH_MAX][24];
        if (b->h_on) /* the history's script in its place */
            argc = tb__rh_publish_argv(b, batch, n, nums, argv, lens);
        if (redisAsyncCommandArgv(l->ac, on_publish_reply, q, argc, argv,
                                  lens) != REDIS_OK) {
            /* Still at the front, in order, for the next connection. */
            tb__rb_fail(b, "cannot send PUBLISH: %s",
                        l->ac->errstr[0] ? l->ac->errstr : "out of memory");
            return;
        }
        q->batch = n;
        for (int k = 0; k < n; k++) {
            tb__bus_req *p = tb__bus_reqlist_pop(&b->sendq);
            p->sent_us = now;
            tb__bus_reqlist_push(&b->inflight, p);
        }
        if (b->echo_out == 0)
            b->echo_last_us = now;
        b->echo_out += bytes;
        sent = 1;
    }
    if (sent && b->wait_n)
        tb__rbw_send(b, now);
}

/* Publishers woke us: take their requests and send them. */
void tb__rb_on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rbus *b = arg;
    tb__rb_drain_inq(b);
    if (tb__bus_conn_state(b->conn) == TB_BUS_CONNECTED)
        tb__rb_flush_sendq(b);
}

/* The answer to the WAIT sent after the publishes in b->answered: how
 * many replicas have them. Fewer than redis.wait_replicas: the events are
 * in the master (and may have been delivered), but a failover now may
 * lose them: their publishers get TB_ENOTREPLICATED, counted, and logged
 * once per burst (the first, then a line with the count when replicas
 * confirm again). */
static void on_wait_reply(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    rlink *l = ac->data;
    redisReply *reply = r;
    /* NULL: the link is going; the answered requests are resent after the
     * reconnect (the script skips what ran) and waited for there. */
    if (!reply || ac != l->ac)
        return;
    rbus *b = l->b;
    l->last_rx_us = tb__mono_us();
    b->waiting = 0;
    long long got = reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
    int full = got >= b->wait_n;
    size_t n = b->answered.n;
    if (full) {
        tb__rh_acked(b);
        if (b->wait_short) {
            tb__log(TB_LOG_INFO,
                    "redis bus: %d replica(s) confirm publishes again; %" PRIu64
                    " event(s) were answered not_replicated meanwhile",
                    b->wait_n, b->wait_short);
            b->wait_short = 0;
        }
    } else {
        char where[sizeof b->url];
        if (b->t.nsentinels)
            snprintf(where, sizeof where, "%s:%d", b->master_host,
                     b->master_port);
        else
            snprintf(where, sizeof where, "%s", b->url);
        if (!b->wait_short)
            tb__log(TB_LOG_WARN,
                    "redis bus: %s%s: %zu event(s) published on %s but not "
                    "confirmed by redis.wait_replicas (%d) replicas within %s "
                    "ms: answered not_replicated (a failover may lose them); "
                    "logged again when replicas confirm",
                    got >= 0                           ? "too few replicas"
                    : reply->type == REDIS_REPLY_ERROR ? "WAIT refused: "
                                                       : "WAIT failed",
                    reply->type == REDIS_REPLY_ERROR ? reply->str : "", n,
                    where, b->wait_n, b->wait_to_s);
        b->wait_short += n;
        tb__bus_unreplicated(b->bus.app, n);
        /* Not acknowledged: a later WAIT must not make it so. */
        b->pend_seq = 0;
    }
    while (b->answered.head)
        tb__bus_tx_done(b->tx, tb__bus_reqlist_pop(&b->answered),
                        full ? 0 : TB_ENOTREPLICATED);
    if (b->stopping && !b->inflight.head && !b->sendq.head)
        event_active(b->stop_ev, EV_TIMEOUT, 0);
    tb__rb_flush_sendq(b);
    tb__rb_maybe_switch(b);
}

void tb__rbw_send(rbus *b, int64_t now)
{
    rlink *l = &b->links[LINK_PUB];
    /* WAIT covers every write sent before it on this link. */
    const char *argv[3] = {"WAIT", b->wait_n_s, b->wait_to_s};
    size_t lens[3] = {4, strlen(b->wait_n_s), strlen(b->wait_to_s)};
    if (redisAsyncCommandArgv(l->ac, on_wait_reply, NULL, 3, argv, lens) !=
        REDIS_OK) {
        tb__rb_fail(b, "cannot send WAIT: %s",
                    l->ac->errstr[0] ? l->ac->errstr : "out of memory");
        return;
    }
    b->waiting = 1;
    b->wait_sent_us = now;
}
