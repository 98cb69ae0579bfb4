/* bus_redis_kv.c - the Redis bus's shared store: records with TTLs, kept by
 * Lua scripts on the command link. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "bus_redis.h"

/* Group g's records are the strings "{ns}:g:<id>" (SET ... PX ttl) and the
 * set "{ns}:g" of their ids; "{ns}" is a Redis Cluster hash tag, so all of
 * a namespace's keys share one slot and a script may touch them together.
 * Each op is one script, atomic in Redis, loaded once per connection with
 * SCRIPT LOAD and called with EVALSHA (EVAL with the body until the load
 * has answered; a NOSCRIPT answer, after SCRIPT FLUSH say, reloads it and
 * fails that one request with TB_EAGAIN).
 *
 * Requests come from any thread into a locked queue; the bus thread sends
 * them on the `pub` link, which answers in order. A reply is checked
 * before it is believed: whoever can write to Redis can put anything under
 * these keys, so the list script skips values of the wrong type or size,
 * and this file checks the reply's shape and every id and value length
 * again (a Redis that is not Redis, or a script replaced under our SHA).
 * Refused and malformed replies are logged at most TB__RATELOG_BURST
 * lines a second.
 *
 * A Redis ACL user needs +eval +evalsha +script|load and the keys
 * "{<ns>}:*" besides what bus_redis.c lists. */

enum {
    OP_PUT = 0,
    OP_DEL,
    OP_LIST,
    NOPS
};

/* KEYS[1] the set, KEYS[2] the record; ARGV id, value, ttl ms. */
static const char put_lua[] =
    "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])\n"
    "redis.call('SADD', KEYS[1], ARGV[1])\n"
    "return 1\n";

/* KEYS[1] the set, KEYS[2] the record; ARGV id. */
static const char del_lua[] = "redis.call('DEL', KEYS[2])\n"
                              "redis.call('SREM', KEYS[1], ARGV[1])\n"
                              "return 1\n";

/* KEYS[1] the set; ARGV key prefix, records at most, value bytes at most.
 * Returns id, value, id, value, ..., then the count skipped. Ids whose
 * record has expired leave the set; at most 4096 are looked at, so a set
 * someone stuffed cannot stall Redis for long. The records are named from
 * the set's members, in the same hash slot as KEYS[1]. */
static const char list_lua[] =
    "local ids = redis.call('SMEMBERS', KEYS[1])\n"
    "local out, skipped = {}, 0\n"
    "local maxn, maxv = 2 * tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "for i = 1, math.min(#ids, 4096) do\n"
    "  local id = ids[i]\n"
    "  local v = redis.pcall('GET', ARGV[1] .. id)\n"
    "  if v == false then\n"
    "    redis.call('SREM', KEYS[1], id)\n"
    "  elseif type(v) ~= 'string' or #v > maxv or #out >= maxn then\n"
    "    skipped = skipped + 1\n"
    "  else\n"
    "    out[#out + 1] = id\n"
    "    out[#out + 1] = v\n"
    "  end\n"
    "end\n"
    "if #ids > 4096 then skipped = skipped + #ids - 4096 end\n"
    "out[#out + 1] = tostring(skipped)\n"
    "return out\n";

static const char *const scripts[NOPS] = {put_lua, del_lua, list_lua};
static const char *const op_names[NOPS] = {"put", "del", "list"};

typedef struct rkv_req {
    struct rkv_req *next;
    rbus *b;
    int op;
    char group[33];
    char id[TB__KV_ID_MAX + 1];
    int64_t ttl_ms;
    tb__kv_done_cb done;
    tb__kv_list_cb listed;
    void *ud;
    size_t len;
    char value[]; /* put's value */
} rkv_req;

/* Runs r's callback with status (a list with no records) and frees r. */
static void complete(rkv_req *r, int status)
{
    if (r->op == OP_LIST) {
        if (r->listed)
            r->listed(status, NULL, 0, 0, r->ud);
    } else if (r->done) {
        r->done(status, r->ud);
    }
    free(r);
}

/* Takes r (any thread): queued for the bus thread, or refused. */
static int enqueue(rbus *b, rkv_req *r)
{
    tb_bus_state st = tb__bus_conn_state(b->conn);
    if (st != TB_BUS_CONNECTED) {
        free(r);
        return st == TB_BUS_STOPPED ? TB_ESHUTDOWN : TB_ENOTCONN;
    }
    pthread_mutex_lock(&b->kv_mu);
    if (b->kv_closed) {
        pthread_mutex_unlock(&b->kv_mu);
        free(r);
        return TB_ESHUTDOWN;
    }
    int was_empty = !b->kv_head;
    if (b->kv_tail)
        b->kv_tail->next = r;
    else
        b->kv_head = r;
    b->kv_tail = r;
    if (was_empty)
        event_active(b->kv_ev, EV_TIMEOUT, 0);
    pthread_mutex_unlock(&b->kv_mu);
    return 0;
}

static rkv_req *new_req(rbus *b, int op, const char *group, const char *id,
                        size_t vlen)
{
    if (!tb__kv_name_ok(group, strlen(group), 32) ||
        (id && !tb__kv_name_ok(id, strlen(id), TB__KV_ID_MAX)))
        return NULL;
    rkv_req *r = calloc(1, sizeof *r + vlen + 1);
    if (!r)
        return NULL;
    r->b = b;
    r->op = op;
    snprintf(r->group, sizeof r->group, "%s", group);
    if (id)
        snprintf(r->id, sizeof r->id, "%s", id);
    return r;
}

static int kv_put(tb__bus *bus, const char *group, const char *id,
                  const char *value, size_t len, int64_t ttl_ms,
                  tb__kv_done_cb cb, void *ud)
{
    if (!len || len > TB__KV_VALUE_MAX || ttl_ms <= 0)
        return TB_EINVAL;
    rbus *b = (rbus *)bus;
    rkv_req *r = new_req(b, OP_PUT, group, id, len);
    if (!r)
        return TB_EINVAL; /* or ENOMEM: both leave cb uncalled */
    memcpy(r->value, value, len);
    r->len = len;
    r->ttl_ms = ttl_ms;
    r->done = cb;
    r->ud = ud;
    return enqueue(b, r);
}

static int kv_del(tb__bus *bus, const char *group, const char *id,
                  tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    rkv_req *r = new_req(b, OP_DEL, group, id, 0);
    if (!r)
        return TB_EINVAL;
    r->done = cb;
    r->ud = ud;
    return enqueue(b, r);
}

static int kv_list(tb__bus *bus, const char *group, tb__kv_list_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    rkv_req *r = new_req(b, OP_LIST, group, NULL, 0);
    if (!r)
        return TB_EINVAL;
    r->listed = cb;
    r->ud = ud;
    return enqueue(b, r);
}

const tb__kv_ops tb__rkv_ops = {
    .put = kv_put,
    .del = kv_del,
    .list = kv_list,
};

/* ---------------------------------------------------------------- scripts */

static void on_script_load(redisAsyncContext *ac, void *rp, void *priv)
{
    rlink *l = ac->data;
    redisReply *reply = rp;
    if (!reply || ac != l->ac)
        return;
    rbus *b = l->b;
    int op = (int)(intptr_t)priv;
    if (reply->type == REDIS_REPLY_STRING && reply->len == 40 &&
        strspn(reply->str, "0123456789abcdef") == 40) {
        memcpy(b->sha[op], reply->str, 41);
        return;
    }
    if (tb__ratelog_ok(&b->kv_log, tb__mono_us()))
        tb__log(TB_LOG_ERROR,
                "redis bus: SCRIPT LOAD of the %s script refused: %s; "
                "sending it with EVAL instead",
                op_names[op],
                reply->type == REDIS_REPLY_ERROR ? reply->str
                                                 : "unexpected reply");
}

static void load_script(rbus *b, int op)
{
    rlink *l = &b->links[LINK_PUB];
    if (!l->ac)
        return;
    const char *argv[3] = {"SCRIPT", "LOAD", scripts[op]};
    size_t lens[3] = {6, 4, strlen(scripts[op])};
    redisAsyncCommandArgv(l->ac, on_script_load, (void *)(intptr_t)op, 3, argv,
                          lens);
}

void tb__rkv_connected(rbus *b)
{
    for (int op = 0; op < NOPS; op++) {
        b->sha[op][0] = '\0'; /* a restarted Redis has forgotten them */
        load_script(b, op);
    }
}

/* ---------------------------------------------------------------- replies */

/* A list's answer: pairs of strings, then the count skipped. */
static void list_reply(rkv_req *r, redisReply *reply)
{
    rbus *b = r->b;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 2 != 1 ||
        reply->elements > 2 * TB__KV_LIST_MAX + 1) {
        if (tb__ratelog_ok(&b->kv_log, tb__mono_us()))
            tb__log(TB_LOG_WARN,
                    "redis bus: malformed answer to list %s (type %d, %zu "
                    "elements): ignored",
                    r->group, reply->type,
                    reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0);
        complete(r, TB_EPROTO);
        return;
    }
    size_t npairs = reply->elements / 2, n = 0, dropped = 0;
    redisReply *last = reply->element[reply->elements - 1];
    if (last->type == REDIS_REPLY_STRING && last->len < 12)
        dropped = strtoull(last->str, NULL, 10);
    tb__kv_rec *recs = calloc(npairs ? npairs : 1, sizeof *recs);
    if (!recs) {
        complete(r, TB_ENOMEM);
        return;
    }
    for (size_t i = 0; i < npairs; i++) {
        redisReply *id = reply->element[2 * i];
        redisReply *v = reply->element[2 * i + 1];
        if (id->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            !tb__kv_name_ok(id->str, id->len, TB__KV_ID_MAX) || !v->len ||
            v->len > TB__KV_VALUE_MAX) {
            dropped++;
            continue;
        }
        /* hiredis ends every string with a NUL. */
        recs[n++] = (tb__kv_rec){id->str, id->len, v->str, v->len};
    }
    if (r->listed)
        r->listed(0, recs, n, dropped, r->ud);
    free(recs);
    free(r);
}

static void on_kv_reply(redisAsyncContext *ac, void *rp, void *priv)
{
    rkv_req *r = priv;
    redisReply *reply = rp;
    rlink *l = ac->data;
    if (!reply || ac != l->ac) {
        complete(r, TB_ENOTCONN); /* the link is going */
        return;
    }
    rbus *b = r->b;
    l->last_rx_us = tb__mono_us();
    if (reply->type == REDIS_REPLY_ERROR) {
        int noscript = !strncmp(reply->str, "NOSCRIPT", 8);
        if (noscript) {
            b->sha[r->op][0] = '\0';
            load_script(b, r->op);
        } else if (tb__ratelog_ok(&b->kv_log, l->last_rx_us)) {
            tb__log(TB_LOG_ERROR, "redis bus: Redis refused %s %s%s%s: %s",
                    op_names[r->op], r->group, r->id[0] ? "/" : "", r->id,
                    reply->str);
        }
        complete(r, noscript ? TB_EAGAIN : TB_EIO);
        return;
    }
    if (r->op == OP_LIST) {
        list_reply(r, reply);
        return;
    }
    complete(r, reply->type == REDIS_REPLY_INTEGER ? 0 : TB_EPROTO);
}

/* Sends r on the `pub` link; on failure completes it. */
static void send_req(rbus *b, rkv_req *r)
{
    rlink *l = &b->links[LINK_PUB];
    if (tb__bus_conn_state(b->conn) != TB_BUS_CONNECTED || !l->ac ||
        b->failing) {
        complete(r, TB_ENOTCONN);
        return;
    }
    char set[128], key[200], ttl[24], maxn[16], maxv[16];
    snprintf(set, sizeof set, "%s%s", b->kv_prefix, r->group);
    snprintf(key, sizeof key, "%s:%s", set, r->id);
    const char *argv[9];
    size_t lens[9];
    int argc = 0;
    const char *sha = b->sha[r->op];
#define ARG(s, n) (argv[argc] = (s), lens[argc++] = (n))
    if (sha[0]) {
        ARG("EVALSHA", 7);
        ARG(sha, 40);
    } else {
        ARG("EVAL", 4);
        ARG(scripts[r->op], strlen(scripts[r->op]));
    }
    if (r->op == OP_LIST) {
        char pfx[140];
        snprintf(pfx, sizeof pfx, "%s:", set);
        snprintf(maxn, sizeof maxn, "%d", TB__KV_LIST_MAX);
        snprintf(maxv, sizeof maxv, "%d", TB__KV_VALUE_MAX);
        ARG("1", 1);
        ARG(set, strlen(set));
        ARG(pfx, strlen(pfx));
        ARG(maxn, strlen(maxn));
        ARG(maxv, strlen(maxv));
        /* hiredis copies the arguments before it returns. */
        if (redisAsyncCommandArgv(l->ac, on_kv_reply, r, argc, argv, lens) !=
            REDIS_OK)
            complete(r, TB_ENOTCONN);
        return;
    }
    ARG("2", 1);
    ARG(set, strlen(set));
    ARG(key, strlen(key));
    ARG(r->id, strlen(r->id));
    if (r->op == OP_PUT) {
        snprintf(ttl, sizeof ttl, "%" PRId64, r->ttl_ms);
        ARG(r->value, r->len);
        ARG(ttl, strlen(ttl));
    }
#undef ARG
    if (redisAsyncCommandArgv(l->ac, on_kv_reply, r, argc, argv, lens) !=
        REDIS_OK)
        complete(r, TB_ENOTCONN);
}

void tb__rkv_on_queued(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rbus *b = arg;
    pthread_mutex_lock(&b->kv_mu);
    rkv_req *r = b->kv_head;
    b->kv_head = b->kv_tail = NULL;
    pthread_mutex_unlock(&b->kv_mu);
    while (r) {
        rkv_req *next = r->next;
        r->next = NULL;
        send_req(b, r);
        r = next;
    }
}

/* ---------------------------------------------------------------- life */

void tb__rkv_init(rbus *b, const char *ns)
{
    pthread_mutex_init(&b->kv_mu, NULL);
    snprintf(b->kv_prefix, sizeof b->kv_prefix, "{%s}:", ns);
    b->kv_log.who = "redis bus";
    b->kv_log.what = "store reply lines";
}

void tb__rkv_finish(rbus *b)
{
    pthread_mutex_lock(&b->kv_mu);
    b->kv_closed = 1;
    rkv_req *r = b->kv_head;
    b->kv_head = b->kv_tail = NULL;
    pthread_mutex_unlock(&b->kv_mu);
    while (r) {
        rkv_req *next = r->next;
        complete(r, TB_ESHUTDOWN);
        r = next;
    }
}

void tb__rkv_free(rbus *b)
{
    tb__rkv_finish(b); /* nothing is left after a stop; this frees it */
    pthread_mutex_destroy(&b->kv_mu);
}
