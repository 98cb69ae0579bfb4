/* bus_redis_sentinel.c - the Redis bus's master from Redis Sentinel: asks
 * the sentinels where it is, and watches them for failovers. */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "bus_redis.h"

/* How it works (redis-sentinel://host1:26379,host2:26379/mymaster).
 *
 * Each connection attempt of the bus (bus_redis.c's on_retry) comes here
 * first. The query link asks the sentinels in turn, starting with the one
 * that answered last, SENTINEL get-master-addr-by-name <master>, each
 * within redis.connect_timeout_ms; the first valid address wins and the
 * bus opens `sub` and `pub` there. `pub` then checks ROLE before the bus
 * counts as connected, so a stale sentinel's answer never makes us write
 * to a replica (bus_redis.c, STEP_ROLE), and rechecks it every
 * redis.ping_interval_ms. When no sentinel answers, the attempt fails and
 * the bus retries with its backoff.
 *
 * A watch link per sentinel holds PSUBSCRIBE +switch-master. Why all of
 * them: a failover's leader announces it first and the others up to a few
 * seconds later (their hello period), and while instances sit on
 * different masters, what one publishes the others do not see: the first
 * announcement is the one to act on. The old master keeps answering as a
 * master until Sentinel demotes it, which takes several seconds after the
 * switch (measured: 10 s with Redis 7.0), so ROLE alone would notice far
 * too late. An announcement naming our master's successor makes the bus
 * drain `pub` (what it sent there comes back on `sub` first, so that this
 * instance's own acknowledged events still reach it) and reconnect
 * straight to the announced address (ROLE still checked). A watch that
 * fails is reopened with the bus's backoff; failovers are still noticed
 * by the other watches, by the ROLE check, by a READONLY answer, and by
 * Sentinel itself, which closes the clients of a master it demotes.
 *
 * Sentinel links do not use hiredis: a sentinel is hostile input like
 * anything else, and service/resp.c reads its replies within a few
 * kilobytes, where hiredis 0.14 would abort on some replies and buffer any
 * size. Commands are tiny and a link has at most two in flight.
 *
 * Authentication: AUTH redis.sentinel_password (the default user) when
 * set; the URL's user and password are the master's. */

enum {
    SEN_AUTH = 0, /* AUTH sent (only with a sentinel password) */
    SEN_WAITING,  /* the query or PSUBSCRIBE sent */
    SEN_READY     /* a watch: subscribed */
};

/* Bytes of one command we send: AUTH with a 511-byte password is the
 * longest. */
#define SEN_CMD_MAX 1200

/* ---------------------------------------------------------------- helpers */

static const char *sen_name(const rbus *b, int i, char *buf, size_t n)
{
    const tb__redis_hostport *h = &b->t.sentinels[i];
    if (strchr(h->host, ':'))
        snprintf(buf, n, "[%s]:%d", h->host, h->port);
    else
        snprintf(buf, n, "%s:%d", h->host, h->port);
    return buf;
}

static void complain(rbus *b, rsen *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Logs a problem of s's sentinel, once until it changes or the link works
 * again: retries repeat it until someone fixes the cause. The query and
 * the watch of a sentinel keep their own (their retries interleave). */
static void complain(rbus *b, rsen *s, const char *fmt, ...)
{
    char what[160], name[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    char *last = s->watch ? s->complaint : b->ask_complaint[s->idx];
    sen_name(b, s->idx, name, sizeof name);
    if (strcmp(what, last) == 0) {
        tb__log(TB_LOG_DEBUG, "redis bus: sentinel %s: %s", name, what);
        return;
    }
    snprintf(last, sizeof s->complaint, "%s", what);
    tb__log(TB_LOG_WARN,
            "redis bus: sentinel %s: %s (logged once until it changes)", name,
            what);
}

/* s's sentinel answered as it should. */
static void uncomplain(rbus *b, rsen *s)
{
    char *last = s->watch ? s->complaint : b->ask_complaint[s->idx];
    if (!last[0])
        return;
    last[0] = '\0';
    char name[300];
    tb__log(TB_LOG_INFO, "redis bus: sentinel %s %s again",
            sen_name(b, s->idx, name, sizeof name),
            s->watch ? "can be watched" : "answers");
}

static void sen_close(rsen *s)
{
    if (s->bev)
        bufferevent_free(s->bev); /* safe inside its own callbacks */
    s->bev = NULL;
    s->ping_sent_us = 0;
    s->gen++;
}

/* Queues a command on s. 0, or -1 (out of memory, or too long). */
static int sen_send(rsen *s, int argc, const char *const *argv)
{
    char buf[SEN_CMD_MAX];
    size_t lens[4];
    for (int i = 0; i < argc && i < 4; i++)
        lens[i] = strlen(argv[i]);
    int n = tb__resp_command(buf, sizeof buf, argc, argv, lens);
    int rc = n < 0 ? -1 : bufferevent_write(s->bev, buf, (size_t)n);
    explicit_bzero(buf, sizeof buf); /* it may hold the password */
    return rc;
}

static void on_sen_read(struct bufferevent *bev, void *arg);
static void on_sen_event(struct bufferevent *bev, short what, void *arg);

/* Opens s to its sentinel and queues AUTH when there is a password (the
 * caller queues the rest). 0, or -1 with the reason in why. The name is
 * resolved here, blocking the bus thread as hiredis does for `sub` and
 * `pub`. */
static int sen_open(rbus *b, rsen *s, char *why, size_t whylen)
{
    const tb__redis_hostport *h = &b->t.sentinels[s->idx];
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[8];
    snprintf(port, sizeof port, "%d", h->port);
    int rc = getaddrinfo(h->host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        snprintf(why, whylen, "cannot resolve its name: %s",
                 rc ? gai_strerror(rc) : "no address");
        if (ai)
            freeaddrinfo(ai);
        return -1;
    }
    struct bufferevent *bev = bufferevent_socket_new(
        b->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!bev) {
        freeaddrinfo(ai);
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    bufferevent_setcb(bev, on_sen_read, NULL, on_sen_event, s);
    /* Reading stops with this much unparsed: on_sen_read then refuses it. */
    bufferevent_setwatermark(bev, EV_READ, 0, TB__RESP_REPLY_MAX);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    rc = bufferevent_socket_connect(bev, ai->ai_addr, (int)ai->ai_addrlen);
    int err = errno;
    freeaddrinfo(ai);
    if (rc != 0) {
        bufferevent_free(bev);
        snprintf(why, whylen, "cannot connect: %s", strerror(err));
        return -1;
    }
    s->bev = bev;
    s->opened_us = s->last_rx_us = tb__mono_us();
    s->ping_sent_us = 0;
    s->step = SEN_WAITING;
    if (b->sen_password[0]) {
        const char *argv[2] = {"AUTH", b->sen_password};
        s->step = SEN_AUTH;
        if (sen_send(s, 2, argv) != 0) {
            sen_close(s);
            snprintf(why, whylen, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* An error reply r to AUTH, or NOAUTH to a question, into why. */
static const char *auth_failed(const tb__resp *r, char *why, size_t whylen)
{
    snprintf(why, whylen,
             "authentication failed: %.*s; check redis.sentinel_password "
             "(--redis-sentinel-password-file)",
             (int)(r->v.len > 80 ? 80 : r->v.len), r->v.str);
    return why;
}

/* What an error reply r to a question means, into why. */
static const char *refusal(const tb__resp *r, char *why, size_t whylen)
{
    if ((r->v.len >= 6 && !strncmp(r->v.str, "NOAUTH", 6)) ||
        (r->v.len >= 9 && !strncmp(r->v.str, "WRONGPASS", 9)))
        return auth_failed(r, why, whylen);
    snprintf(why, whylen, "refused the question: %.*s",
             (int)(r->v.len > 80 ? 80 : r->v.len), r->v.str);
    return why;
}

/* A reply to AUTH: 0 when accepted, else -1 with the reason in why. */
static int auth_answer(rsen *s, const tb__resp *r, char *why, size_t whylen)
{
    if (r->v.type == '+') {
        s->step = SEN_WAITING;
        return 0;
    }
    if (r->v.type == '-')
        auth_failed(r, why, whylen);
    else
        snprintf(why, whylen, "answered AUTH with something else than OK");
    return -1;
}

/* ---------------------------------------------------------------- query */

static void ask(rbus *b);

static void ask_failed(rbus *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The sentinel being asked failed: ask the next one, or fail the attempt
 * when every sentinel has failed this round. */
static void ask_failed(rbus *b, const char *fmt, ...)
{
    rsen *q = &b->query;
    char why[160], name[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    sen_close(q);
    complain(b, q, "%s", why);
    size_t used = strlen(b->ask_why);
    snprintf(b->ask_why + used, sizeof b->ask_why - used, "%s%s: %s",
             used ? "; " : "", sen_name(b, q->idx, name, sizeof name), why);
    b->asked++;
    b->ask_next = (q->idx + 1) % b->t.nsentinels;
    if (b->asked < b->t.nsentinels) {
        ask(b);
        return;
    }
    b->resolving = 0;
    tb__rb_fail(b, "no sentinel named master %s (%s)", b->t.master, b->ask_why);
}

/* Asks sentinel b->ask_next for the master. */
static void ask(rbus *b)
{
    rsen *q = &b->query;
    q->idx = b->ask_next;
    char why[160];
    if (sen_open(b, q, why, sizeof why) != 0) {
        ask_failed(b, "%s", why);
        return;
    }
    const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", b->t.master};
    if (sen_send(q, 3, argv) != 0)
        ask_failed(b, "out of memory");
}

/* The sentinel asked says where the master is. */
static void ask_answer(rbus *b, const tb__resp *r)
{
    rsen *q = &b->query;
    int i = q->idx;
    char why[200];
    if (q->step == SEN_AUTH) {
        if (auth_answer(q, r, why, sizeof why) != 0)
            ask_failed(b, "%s", why);
        return;
    }
    tb__redis_hostport a;
    if (r->v.type == '_' || (r->v.type == '*' && r->n == 0)) {
        ask_failed(b, "monitors no master named %s", b->t.master);
        return;
    }
    if (r->v.type == '-') {
        ask_failed(b, "%s", refusal(r, why, sizeof why));
        return;
    }
    if (r->v.type != '*' || r->n != 2 ||
        (r->el[0].type != '$' && r->el[0].type != '+') ||
        (r->el[1].type != '$' && r->el[1].type != '+') ||
        tb__sentinel_addr_parse(r->el[0].str, r->el[0].len, r->el[1].str,
                                r->el[1].len, &a) != 0) {
        ask_failed(b, "answered something that is not a host and port");
        return;
    }
    uncomplain(b, q);
    sen_close(q);
    b->resolving = 0;
    b->sen_pref = i;
    int moved = strcmp(a.host, b->master_host) != 0 || a.port != b->master_port;
    snprintf(b->master_host, sizeof b->master_host, "%s", a.host);
    b->master_port = a.port;
    b->master_from = i;
    char name[300];
    tb__log(moved ? TB_LOG_INFO : TB_LOG_DEBUG,
            "redis bus: sentinel %s says master %s is at %s:%d",
            sen_name(b, i, name, sizeof name), b->t.master, a.host, a.port);
    tb__rb_open_links(b);
}

/* ---------------------------------------------------------------- watches */

static void watch_open(rbus *b, int i);

static void watch_failed(rbus *b, rsen *w, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Closes watch w and schedules its next attempt with the bus's backoff. */
static void watch_failed(rbus *b, rsen *w, const char *fmt, ...)
{
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    sen_close(w);
    complain(b, w, "cannot watch it for failovers: %s", why);
    w->retry_at_us =
        tb__mono_us() + tb__bus_conn_backoff_ms(b->conn, ++w->failures) * 1000;
}

static void watch_open(rbus *b, int i)
{
    rsen *w = &b->watches[i];
    w->retry_at_us = 0;
    char why[160];
    if (sen_open(b, w, why, sizeof why) != 0) {
        watch_failed(b, w, "%s", why);
        return;
    }
    const char *argv[2] = {"PSUBSCRIBE", "+switch-master"};
    if (sen_send(w, 2, argv) != 0)
        watch_failed(b, w, "out of memory");
}

static int same_addr(const char *host, int port, const tb__redis_hostport *a)
{
    return port == a->port && strcmp(host, a->host) == 0;
}

/* Sentinel i announced that master `name` moved from `from` to `to`. */
static void on_switch(rbus *b, int i, const char *name,
                      const tb__redis_hostport *from,
                      const tb__redis_hostport *to)
{
    char sname[300];
    sen_name(b, i, sname, sizeof sname);
    if (strcmp(name, b->t.master) != 0) {
        tb__log(TB_LOG_DEBUG,
                "redis bus: sentinel %s announced a failover of master %s, "
                "not ours",
                sname, name);
        return;
    }
    /* Where we are going already: the announced master, else ours. */
    int there = b->hint_port ? same_addr(b->hint_host, b->hint_port, to)
                             : b->master_port && same_addr(b->master_host,
                                                           b->master_port, to);
    tb__log(there ? TB_LOG_DEBUG : TB_LOG_INFO,
            "redis bus: sentinel %s announced a failover of master %s: "
            "%s:%d -> %s:%d",
            sname, name, from->host, from->port, to->host, to->port);
    if (there)
        return;
    snprintf(b->hint_host, sizeof b->hint_host, "%s", to->host);
    b->hint_port = to->port;
    b->hint_from = i;
    b->sen_pref = i;
    snprintf(b->switch_why, sizeof b->switch_why,
             "failover: sentinel %s moved master %s from %s:%d to %s:%d", sname,
             name, from->host, from->port, to->host, to->port);
    tb__rb_switch(b);
}

/* A reply or message on watch w. */
static void watch_answer(rbus *b, rsen *w, const tb__resp *r)
{
    char why[200];
    if (w->step == SEN_AUTH) {
        if (auth_answer(w, r, why, sizeof why) != 0)
            watch_failed(b, w, "%s", why);
        return;
    }
    if (r->v.type == '-') {
        watch_failed(b, w, "%s", refusal(r, why, sizeof why));
        return;
    }
    if (r->v.type != '*' || r->n < 2) {
        watch_failed(b, w, "sent something that is not a pub/sub message");
        return;
    }
    if (w->step == SEN_WAITING) {
        if (r->n != 3 || !tb__resp_is(&r->el[0], "psubscribe") ||
            !tb__resp_is(&r->el[1], "+switch-master")) {
            watch_failed(b, w, "did not confirm PSUBSCRIBE +switch-master");
            return;
        }
        w->step = SEN_READY;
        w->failures = 0;
        uncomplain(b, w);
        char name[300];
        tb__log(TB_LOG_DEBUG, "redis bus: watching sentinel %s for failovers",
                sen_name(b, w->idx, name, sizeof name));
        return;
    }
    if (tb__resp_is(&r->el[0], "pong")) {
        w->ping_sent_us = 0;
        return;
    }
    if (r->n == 4 && tb__resp_is(&r->el[0], "pmessage") &&
        tb__resp_is(&r->el[2], "+switch-master") &&
        (r->el[3].type == '$' || r->el[3].type == '+')) {
        char name[TB__SENTINEL_MASTER_MAX + 1];
        tb__redis_hostport from, to;
        if (tb__sentinel_switch_parse(r->el[3].str, r->el[3].len, name, &from,
                                      &to) == 0)
            on_switch(b, w->idx, name, &from, &to);
        else
            complain(b, w,
                     "sent a +switch-master message that is not "
                     "\"<master> <host> <port> <host> <port>\"");
        return;
    }
    /* Anything else on the subscription is not for us. */
}

/* ---------------------------------------------------------------- I/O */

static void on_sen_read(struct bufferevent *bev, void *arg)
{
    rsen *s = arg;
    rbus *b = s->b;
    struct evbuffer *in = bufferevent_get_input(bev);
    /* An answer may close s, and even open it again (the next sentinel):
     * then this buffer is no longer s's. */
    unsigned gen = s->gen;
    while (s->gen == gen && s->bev == bev) {
        size_t n = evbuffer_get_length(in);
        if (n == 0)
            return;
        size_t take = n < TB__RESP_REPLY_MAX ? n : TB__RESP_REPLY_MAX;
        const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)take);
        tb__resp r;
        int used = p ? tb__resp_parse(p, take, &r) : -1;
        if (used == 0)
            return; /* the rest is on its way */
        if (used < 0) {
            static const char bad[] =
                "sent something that is not the Redis protocol, or a reply "
                "over 8192 bytes";
            if (s->watch)
                watch_failed(b, s, "%s", bad);
            else
                ask_failed(b, "%s", bad);
            return;
        }
        s->last_rx_us = tb__mono_us();
        /* r points into the buffer: drain it after the answer, unless the
         * answer closed the link (and freed the buffer). */
        if (s->watch)
            watch_answer(b, s, &r);
        else
            ask_answer(b, &r);
        if (s->gen == gen)
            evbuffer_drain(in, (size_t)used);
    }
}

static void on_sen_event(struct bufferevent *bev, short what, void *arg)
{
    rsen *s = arg;
    if (s->bev != bev || !(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return; /* BEV_EVENT_CONNECTED: the commands go out now */
    int err = EVUTIL_SOCKET_ERROR();
    char why[160];
    if (what & BEV_EVENT_EOF)
        snprintf(why, sizeof why, "closed the connection");
    else
        snprintf(why, sizeof why, "connection failed: %s",
                 err ? strerror(err) : "error");
    if (s->watch)
        watch_failed(s->b, s, "%s", why);
    else
        ask_failed(s->b, "%s", why);
}

/* ---------------------------------------------------------------- the bus */

void tb__rsn_attempt(rbus *b)
{
    if (!b->watches_started) {
        b->watches_started = 1;
        for (int i = 0; i < b->t.nsentinels; i++)
            watch_open(b, i);
    }
    if (b->hint_port) {
        /* Announced by a sentinel: no need to ask. */
        char name[300];
        snprintf(b->master_host, sizeof b->master_host, "%s", b->hint_host);
        b->master_port = b->hint_port;
        b->master_from = b->hint_from;
        b->hint_port = 0;
        tb__log(TB_LOG_INFO,
                "redis bus: connecting to master %s at %s:%d, as sentinel %s "
                "announced",
                b->t.master, b->master_host, b->master_port,
                sen_name(b, b->master_from, name, sizeof name));
        tb__rb_open_links(b);
        return;
    }
    b->resolving = 1;
    b->asked = 0;
    b->ask_next = b->sen_pref;
    b->ask_why[0] = '\0';
    ask(b);
}

void tb__rsn_tick(rbus *b, int64_t now)
{
    if (!b->t.nsentinels)
        return;
    rsen *q = &b->query;
    if (q->bev && !b->failing && now - q->opened_us > b->connect_to_us)
        ask_failed(b, "no answer within %" PRId64 " ms",
                   b->connect_to_us / 1000);
    if (!b->watches_started)
        return;
    for (int i = 0; i < b->t.nsentinels; i++) {
        rsen *w = &b->watches[i];
        if (!w->bev) {
            if (w->retry_at_us && now >= w->retry_at_us)
                watch_open(b, i);
            continue;
        }
        if (w->step != SEN_READY) {
            if (now - w->opened_us > b->connect_to_us)
                watch_failed(b, w, "no answer within %" PRId64 " ms",
                             b->connect_to_us / 1000);
        } else if (w->ping_sent_us) {
            if (now - w->ping_sent_us > b->cmd_to_us)
                watch_failed(b, w, "PING not answered within %" PRId64 " ms",
                             b->cmd_to_us / 1000);
        } else if (now - w->last_rx_us >= b->ping_us) {
            /* In a subscribed context PING answers ["pong", argument]. */
            const char *argv[2] = {"PING", "+switch-master"};
            if (sen_send(w, 2, argv) != 0)
                watch_failed(b, w, "out of memory");
            else
                w->ping_sent_us = now;
        }
    }
}

void tb__rsn_teardown(rbus *b)
{
    sen_close(&b->query);
    b->resolving = 0;
}

void tb__rsn_finish(rbus *b)
{
    tb__rsn_teardown(b);
    for (int i = 0; i < b->t.nsentinels; i++) {
        sen_close(&b->watches[i]);
        b->watches[i].retry_at_us = 0;
    }
}

int tb__rsn_init(rbus *b, const tb_app_config *c)
{
    const char *pw = c->redis.sentinel_password;
    if (pw && strlen(pw) >= sizeof b->sen_password) {
        tb__log(TB_LOG_ERROR, "redis.sentinel_password is over %zu bytes",
                sizeof b->sen_password - 1);
        return TB_EINVAL;
    }
    snprintf(b->sen_password, sizeof b->sen_password, "%s", pw ? pw : "");
    b->query.b = b;
    b->query.watch = 0;
    for (int i = 0; i < TB__SENTINELS_MAX; i++) {
        b->watches[i].b = b;
        b->watches[i].idx = i;
        b->watches[i].watch = 1;
    }
    return 0;
}

void tb__rsn_replicas(rbus *b, const redisReply *reply)
{
    /* ROLE of a master: "master", offset, [[host, port, offset], ...]. */
    if (!b->wait_n || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[2]->type != REDIS_REPLY_ARRAY)
        return;
    size_t n = reply->element[2]->elements;
    if (n <= (size_t)b->wait_n) {
        b->wait_warned = 0;
        return;
    }
    if (b->wait_warned == n)
        return;
    b->wait_warned = n;
    tb__log(TB_LOG_WARN,
            "redis bus: master %s at %s:%d has %zu replicas attached but "
            "redis.wait_replicas is %d: a failover to a replica that did "
            "not confirm may lose acknowledged events without it being "
            "detected; set redis.wait_replicas to the number of replicas "
            "(docs/HISTORY.md)",
            b->t.master, b->master_host, b->master_port, n, b->wait_n);
}

/* ------------------------------------------- ROLE and the switch itself */

/* What a ROLE reply says the server is ("master", "slave", "sentinel"),
 * into role; 0 when it is an answer of that form. */
int tb__rsn_role_of(const redisReply *reply, char *role, size_t n)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return -1;
    tb__log_printable(role, n, reply->element[0]->str, reply->element[0]->len);
    return 0;
}

/* The periodic ROLE check's answer (see tb__rb_pub_ping). */
void tb__rsn_role_probe(redisAsyncContext *ac, void *r, void *priv)
{
    rlink *l = priv;
    redisReply *reply = r;
    if (!reply || ac != l->ac)
        return;
    rbus *b = l->b;
    l->last_rx_us = tb__mono_us();
    l->ping_sent_us = 0;
    char role[32];
    if (reply->type != REDIS_REPLY_ERROR &&
        tb__rsn_role_of(reply, role, sizeof role) == 0 &&
        strcmp(role, "master") == 0)
        tb__rsn_replicas(b, reply);
    if (reply->type != REDIS_REPLY_ERROR &&
        (tb__rsn_role_of(reply, role, sizeof role) != 0 ||
         strcmp(role, "master") != 0))
        tb__rb_fail(b, "%s:%d is no longer the master of %s (ROLE: %s)",
                    b->master_host, b->master_port, b->t.master,
                    tb__rsn_role_of(reply, role, sizeof role) ? "?" : role);
}

int tb__rb_readonly(rbus *b, const char *err)
{
    if (!b->t.nsentinels || strncmp(err, "READONLY", 8) != 0)
        return 0;
    tb__rb_fail(b, "%s:%d answered READONLY: it is a replica now",
                b->master_host, b->master_port);
    return 1;
}

/* Leaves the old master once the switch may go: nothing of ours in
 * flight, and all we published there seen back on `sub`. */
void tb__rb_maybe_switch(rbus *b)
{
    if (b->switching && !b->failing && !b->inflight.head && !b->answered.head &&
        b->echo_out == 0)
        tb__rb_fail(b, "%s", b->switch_why);
}

/* 1 if an announced master may be tried without the backoff: at most once
 * per redis.retry_min_ms, so that a sentinel announcing on and on (a
 * hostile one) cannot make the bus reconnect in a tight loop. */
int tb__rsn_switch_now(rbus *b)
{
    int64_t now = tb__mono_us();
    if (b->switch_now_us && now - b->switch_now_us < b->retry_min_us)
        return 0;
    b->switch_now_us = now;
    return 1;
}

/* Why drain before leaving: events the old master acknowledged are on
 * their way to our `sub` (and every other instance's that is still
 * there); closing `sub` at once would lose those this instance's own
 * subscribers were to get. New events wait in the queue meanwhile and go
 * to the new master. The drain lasts a round trip, at most
 * redis.command_timeout_ms (on_tick). */
void tb__rb_switch(rbus *b)
{
    if (b->finished || b->failing)
        return; /* the next attempt takes the announced master */
    if (tb__bus_conn_state(b->conn) == TB_BUS_CONNECTED) {
        if (!b->switching) {
            b->switching = 1;
            b->switch_deadline_us = tb__mono_us() + b->cmd_to_us;
        }
        tb__rb_maybe_switch(b);
        return;
    }
    if (b->attempting || b->resolving) {
        tb__rb_fail(b, "%s", b->switch_why);
        return;
    }
    /* Waiting for the next attempt: make it now (a failover usually ends
     * an outage, during which the backoff has grown). */
    if (tb__rsn_switch_now(b)) {
        event_del(b->retry_ev);
        event_active(b->retry_ev, EV_TIMEOUT, 0);
    }
}
