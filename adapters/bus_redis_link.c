/* bus_redis_link.c - the Redis bus's two hiredis connections (`sub` and
 * `pub`, see bus_redis.c): opening them, their handshake (AUTH, SELECT,
 * ROLE, PING, PSUBSCRIBE), their keepalive PINGs, and failing them.
 *
 * bus_redis.c's hiredis rules hold here: every callback ignores a NULL
 * reply or a context that is no longer its link's, and the contexts are
 * freed only from bus_redis.c's top-level event callbacks (teardown,
 * finish) through tb__rb_links_close. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "bus_redis.h"

/* ---------------------------------------------------------------- handshake */

void tb__rb_fail(rbus *b, const char *fmt, ...)
{
    if (b->failing || b->finished)
        return;
    b->failing = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->fail_why, sizeof b->fail_why, fmt, ap);
    va_end(ap);
    event_active(b->teardown_ev, EV_TIMEOUT, 0);
}

/* Reports a refusal by the server during the handshake (AUTH, SELECT,
 * PSUBSCRIBE): logged once per distinct message until the next success,
 * since retrying will repeat it until an operator fixes the cause. */
static void handshake_refused(rbus *b, rlink *l, const char *what,
                              const char *msg)
{
    char why[256];
    int auth = what && strcmp(what, "AUTH") == 0;
    if (!auth && msg &&
        (!strncmp(msg, "NOAUTH", 6) || !strncmp(msg, "WRONGPASS", 9)))
        auth = 1;
    if (auth)
        snprintf(why, sizeof why, "authentication failed: %s", msg ? msg : "?");
    else
        snprintf(why, sizeof why, "Redis refused %s on the %s link: %s",
                 what ? what : "the connection", l->name, msg ? msg : "?");
    if (strcmp(why, b->logged_reject) != 0) {
        snprintf(b->logged_reject, sizeof b->logged_reject, "%s", why);
        tb__log(TB_LOG_ERROR,
                "redis bus: %s (%s)%s; retrying with backoff, this is "
                "logged once",
                why, b->url,
                auth ? "; check the user and password in redis_url" : "");
    }
    tb__rb_fail(b, "%s", why);
}

static void on_role_reply(redisAsyncContext *ac, void *r, void *priv);

/* Reply to a handshake command (AUTH, SELECT, PING on `pub`). */
static void on_step_reply(redisAsyncContext *ac, void *r, void *priv)
{
    rlink *l = priv;
    redisReply *reply = r;
    rbus *b = l->b;
    if (!reply || ac != l->ac || b->failing)
        return; /* the link is going away */
    l->last_rx_us = tb__mono_us();
    static const char *names[] = {"AUTH", "SELECT", "ROLE", "PING",
                                  "PSUBSCRIBE"};
    if (reply->type == REDIS_REPLY_ERROR) {
        handshake_refused(b, l, names[l->step], reply->str);
        return;
    }
    l->step++;
    tb__rb_link_step(b, l);
}

void tb__rb_link_step(rbus *b, rlink *l)
{
    char db[16];
    const char *argv[4];
    size_t lens[4];
    int argc = 0;
    redisCallbackFn *fn = on_step_reply;
    void *priv = l;
    for (;;) {
        if (l->step == STEP_AUTH && b->t.password[0]) {
            argv[argc++] = "AUTH";
            if (b->t.user[0])
                argv[argc++] = b->t.user;
            argv[argc++] = b->t.password;
            break;
        }
        if (l->step == STEP_SELECT && l == &b->links[LINK_PUB] && b->t.db) {
            snprintf(db, sizeof db, "%d", b->t.db);
            argv[argc++] = "SELECT";
            argv[argc++] = db;
            break;
        }
        if (l->step == STEP_ROLE && l == &b->links[LINK_PUB] &&
            b->t.nsentinels) {
            argv[argc++] = "ROLE";
            fn = on_role_reply;
            break;
        }
        /* With Sentinel, ROLE has shown that `pub` works. */
        if (l->step == STEP_PING && l == &b->links[LINK_PUB] &&
            !b->t.nsentinels) {
            argv[argc++] = "PING";
            break;
        }
        if (l->step == STEP_PSUBSCRIBE && l == &b->links[LINK_SUB]) {
            /* Replies to it (the confirmation, then every message) go to
             * the pattern's callback, tb__rb_on_sub_message. */
            argv[argc++] = "PSUBSCRIBE";
            argv[argc++] = b->pattern;
            argv[argc++] = b->ctl;
            fn = tb__rb_on_sub_message;
            break;
        }
        if (l->step >= STEP_READY) {
            if (!b->failing && b->links[LINK_SUB].step == STEP_READY &&
                b->links[LINK_PUB].step == STEP_READY)
                tb__rb_connected(b);
            return;
        }
        l->step++;
    }
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (redisAsyncCommandArgv(l->ac, fn, priv, argc, argv, lens) != REDIS_OK)
        tb__rb_fail(b, "cannot send %s on the %s link: %s", argv[0], l->name,
                    l->ac->errstr[0] ? l->ac->errstr : "out of memory");
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rlink *l = ac->data;
    if (ac != l->ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees ac when we return. */
        l->ac = NULL;
        tb__rb_fail(l->b, "cannot connect: %s", ac->errstr);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rlink *l = ac->data;
    if (ac != l->ac)
        return; /* we closed it */
    /* hiredis frees ac when we return. */
    l->ac = NULL;
    rbus *b = l->b;
    if (ac->err == REDIS_ERR_OTHER && l->step != STEP_READY) {
        /* An error reply hiredis had no callback for (say NOAUTH or NOPERM
         * to PSUBSCRIBE): it closes the link with the server's text. */
        handshake_refused(
            b, l, l->step == STEP_PSUBSCRIBE ? "PSUBSCRIBE" : NULL, ac->errstr);
    } else if (status == REDIS_OK) {
        tb__rb_fail(b, "the %s link was closed", l->name);
    } else {
        tb__rb_fail(b, "the %s link was lost: %s", l->name,
                    ac->errstr[0] ? ac->errstr : "connection error");
    }
}

/* Opens l and starts its handshake. Returns 0, or -1 with the link failed
 * (the reason given to tb__rb_fail). */
static int link_open(rbus *b, rlink *l)
{
    redisAsyncContext *ac =
        b->t.is_unix      ? redisAsyncConnectUnix(b->t.path)
        : b->t.nsentinels ? redisAsyncConnect(b->master_host, b->master_port)
                          : redisAsyncConnect(b->t.host, b->t.port);
    if (!ac) {
        tb__rb_fail(b, "cannot connect: out of memory");
        return -1;
    }
    if (ac->err) {
        tb__rb_fail(b, "cannot connect: %s", ac->errstr);
        redisAsyncFree(ac); /* never attached: no callbacks run */
        return -1;
    }
    ac->data = l;
    if (redisLibeventAttach(ac, b->base) != REDIS_OK) {
        tb__rb_fail(b, "cannot attach the %s link to the event loop", l->name);
        redisAsyncFree(ac);
        return -1;
    }
    l->ac = ac;
    l->step = STEP_AUTH;
    l->last_rx_us = tb__mono_us();
    l->ping_sent_us = 0;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Commands are buffered until the socket is connected. */
    tb__rb_link_step(b, l);
    return 0;
}

void tb__rb_links_close(rbus *b)
{
    for (int i = 0; i < NLINKS; i++) {
        rlink *l = &b->links[i];
        redisAsyncContext *ac = l->ac;
        l->ac = NULL;
        l->step = STEP_AUTH;
        l->ping_sent_us = 0;
        if (ac)
            redisAsyncFree(ac);
    }
}

void tb__rb_open_links(rbus *b)
{
    b->attempting = 1;
    b->attempt_us = tb__mono_us();
    for (int i = 0; i < NLINKS; i++)
        if (link_open(b, &b->links[i]) != 0)
            return;
}

/* ---------------------------------------------------------------- Sentinel */

/* `pub`'s ROLE during the handshake: only a master will do. A sentinel's
 * answer may be stale (it has not heard of a failover yet), so this is
 * what guarantees that the bus never writes to a replica. */
static void on_role_reply(redisAsyncContext *ac, void *r, void *priv)
{
    rlink *l = priv;
    redisReply *reply = r;
    rbus *b = l->b;
    if (!reply || ac != l->ac || b->failing)
        return;
    int64_t now = tb__mono_us();
    l->last_rx_us = now;
    if (reply->type == REDIS_REPLY_ERROR) {
        handshake_refused(b, l, "ROLE", reply->str);
        return;
    }
    char role[32] = "something else than a ROLE reply";
    int ok = tb__rsn_role_of(reply, role, sizeof role) == 0;
    if (!ok || strcmp(role, "master") != 0) {
        char why[512];
        snprintf(why, sizeof why,
                 "%s:%d, which sentinel %d named master %s, says it is %s%s: "
                 "not using it",
                 b->master_host, b->master_port, b->master_from + 1,
                 b->t.master, ok ? "a " : "", role);
        if (strcmp(why, b->logged_reject) != 0) {
            snprintf(b->logged_reject, sizeof b->logged_reject, "%s", why);
            tb__log(TB_LOG_WARN,
                    "redis bus: %s; asking another sentinel (logged once "
                    "until it changes)",
                    why);
        }
        /* That sentinel may be stale: another one first next time. */
        b->sen_pref = (b->master_from + 1) % b->t.nsentinels;
        tb__rb_fail(b, "%s", why);
        return;
    }
    b->role_sent_us = now;
    tb__rsn_replicas(b, reply);
    l->step++;
    tb__rb_link_step(b, l);
}

/* ---------------------------------------------------------------- keepalive */

static void on_ping_reply(redisAsyncContext *ac, void *r, void *priv)
{
    rlink *l = priv;
    if (!r || ac != l->ac)
        return;
    l->last_rx_us = tb__mono_us();
    l->ping_sent_us = 0; /* any answer (even an ACL refusal) proves life */
}

/* PING on the subscribed link. hiredis 0.14 does not route a subscribed
 * connection's PING reply: redisAsyncCommand would park a callback in
 * ac->sub.invalid that is never called (a leak per PING) and the reply,
 * ["pong", arg], is looked up among the patterns by arg. So the command is
 * appended without a callback, with our pattern as the argument: the reply
 * then reaches tb__rb_on_sub_message like a message of the pattern. */
void tb__rb_sub_ping(rbus *b, rlink *l, int64_t now)
{
    if (!l->ac || (l->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)))
        return;
    redisContext *c = &l->ac->c;
    const char *argv[2] = {"PING", b->pattern};
    size_t lens[2] = {4, strlen(b->pattern)};
    if (redisAppendCommandArgv(c, 2, argv, lens) != REDIS_OK) {
        tb__rb_fail(b, "cannot send PING on the sub link: out of memory");
        return;
    }
    if (l->ac->ev.addWrite)
        l->ac->ev.addWrite(l->ac->ev.data); /* what hiredis does itself */
    l->ping_sent_us = now;
}

void tb__rb_pub_ping(rbus *b, rlink *l, int64_t now)
{
    if (!l->ac)
        return;
    int role = b->t.nsentinels > 0;
    const char *argv[1] = {role ? "ROLE" : "PING"};
    size_t lens[1] = {4};
    if (redisAsyncCommandArgv(l->ac, role ? tb__rsn_role_probe : on_ping_reply,
                              l, 1, argv, lens) != REDIS_OK) {
        tb__rb_fail(b, "cannot send %s on the pub link", argv[0]);
        return;
    }
    l->ping_sent_us = now;
    if (role)
        b->role_sent_us = now;
}
