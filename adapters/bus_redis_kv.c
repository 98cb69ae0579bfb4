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

/* KEYS[1] the set, KEYS[2] the record; ARGV id, value, ttl ms. Returns 1
 * when the record was not there. */
static const char put_lua[] =
    "local existed = redis.call('EXISTS', KEYS[2])\n"
    "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])\n"
    "redis.call('SADD', KEYS[1], ARGV[1])\n"
    "return 1 - existed\n";

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

const tb__rkv_script tb__rkv_put = {"put", put_lua, 0};
const tb__rkv_script tb__rkv_del = {"del", del_lua, 1};
const tb__rkv_script tb__rkv_list = {"list", list_lua, 2};

/* Runs r's failure path with status and frees r. */
static void complete(rkv_req *r, int status)
{
    if (r->fail)
        r->fail(r, status);
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

rkv_req *tb__rkv_new(rbus *b, const tb__rkv_script *script, int nkeys, int argc,
                     const char *const *argv, const size_t *lens)
{
    if (argc > RKV_ARGS_MAX || nkeys > argc)
        return NULL;
    size_t total = 0;
    for (int i = 0; i < argc; i++)
        total += lens[i] + 1;
    rkv_req *r = calloc(1, sizeof *r + total);
    if (!r)
        return NULL;
    r->b = b;
    r->script = script;
    r->nkeys = nkeys;
    r->argc = argc;
    char *p = r->data;
    for (int i = 0; i < argc; i++) {
        memcpy(p, argv[i], lens[i]);
        p[lens[i]] = '\0';
        r->argv[i] = p;
        r->lens[i] = lens[i];
        p += lens[i] + 1;
    }
    return r;
}

int tb__rkv_submit(rkv_req *r)
{
    return enqueue(r->b, r);
}

/* ---------------------------------------------------------------- records */

static void done_fail(rkv_req *r, int status)
{
    if (r->cb.done)
        r->cb.done(status, r->ud);
}

static void done_reply(rkv_req *r, const redisReply *reply)
{
    done_fail(r, reply->type == REDIS_REPLY_INTEGER ? 0 : TB_EPROTO);
}

static void put_reply(rkv_req *r, const redisReply *reply)
{
    done_fail(r, reply->type != REDIS_REPLY_INTEGER ? TB_EPROTO
                 : reply->integer == 1              ? TB__KV_CREATED
                                                    : 0);
}

static void list_fail(rkv_req *r, int status)
{
    if (r->cb.listed)
        r->cb.listed(status, NULL, 0, 0, r->ud);
}

/* A list's answer: pairs of strings, then the count skipped. Ids are store
 * ids (r->names_any 0) or any 1..TB_TASK_NAME_MAX bytes (1); values are at
 * most r->value_max bytes. */
static void list_reply(rkv_req *r, const redisReply *reply)
{
    rbus *b = r->b;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 2 != 1 ||
        reply->elements > 2 * r->list_max + 1) {
        if (tb__ratelog_ok(&b->kv_log, tb__mono_us()))
            tb__log(TB_LOG_WARN,
                    "redis bus: malformed answer to %s (type %d, %zu "
                    "elements): ignored",
                    r->label, reply->type,
                    reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0);
        list_fail(r, TB_EPROTO);
        return;
    }
    size_t npairs = reply->elements / 2, n = 0, dropped = 0;
    redisReply *last = reply->element[reply->elements - 1];
    if (last->type == REDIS_REPLY_STRING && last->len < 12)
        dropped = strtoull(last->str, NULL, 10);
    tb__kv_rec *recs = calloc(npairs ? npairs : 1, sizeof *recs);
    if (!recs) {
        list_fail(r, TB_ENOMEM);
        return;
    }
    for (size_t i = 0; i < npairs; i++) {
        redisReply *id = reply->element[2 * i];
        redisReply *v = reply->element[2 * i + 1];
        int id_ok =
            id->type == REDIS_REPLY_STRING &&
            (r->names_any ? id->len >= 1 && id->len <= TB_TASK_NAME_MAX
                          : tb__kv_name_ok(id->str, id->len, TB__KV_ID_MAX));
        if (!id_ok || v->type != REDIS_REPLY_STRING || !v->len ||
            v->len > r->value_max) {
            dropped++;
            continue;
        }
        /* hiredis ends every string with a NUL. */
        recs[n++] = (tb__kv_rec){id->str, id->len, v->str, v->len};
    }
    if (r->cb.listed)
        r->cb.listed(0, recs, n, dropped, r->ud);
    free(recs);
}

void tb__rkv_list_handlers(rkv_req *r, size_t list_max, size_t value_max,
                           int names_any, tb__kv_list_cb cb, void *ud)
{
    r->ok = list_reply;
    r->fail = list_fail;
    r->list_max = list_max;
    r->value_max = value_max;
    r->names_any = names_any;
    r->cb.listed = cb;
    r->ud = ud;
}

void tb__rkv_done_handlers(rkv_req *r, tb__kv_done_cb cb, void *ud)
{
    r->ok = done_reply;
    r->fail = done_fail;
    r->cb.done = cb;
    r->ud = ud;
}

/* group/id's keys: the set "{ns}:group" and the record "{ns}:group:id". */
static rkv_req *record_req(rbus *b, const tb__rkv_script *script,
                           const char *group, const char *id, const char *value,
                           size_t len, int64_t ttl_ms)
{
    if (!tb__kv_name_ok(group, strlen(group), 32) ||
        !tb__kv_name_ok(id, strlen(id), TB__KV_ID_MAX))
        return NULL;
    char set[128], key[200], ttl[24];
    snprintf(set, sizeof set, "%s%s", b->kv_prefix, group);
    snprintf(key, sizeof key, "%s:%s", set, id);
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    const char *argv[5] = {set, key, id, value, ttl};
    size_t lens[5] = {strlen(set), strlen(key), strlen(id), len, strlen(ttl)};
    rkv_req *r = tb__rkv_new(b, script, 2, value ? 5 : 3, argv, lens);
    if (r)
        snprintf(r->label, sizeof r->label, "%s %s/%s", script->name, group,
                 id);
    return r;
}

static int kv_put(tb__bus *bus, const char *group, const char *id,
                  const char *value, size_t len, int64_t ttl_ms,
                  tb__kv_done_cb cb, void *ud)
{
    if (!len || len > TB__KV_VALUE_MAX || ttl_ms <= 0)
        return TB_EINVAL;
    rbus *b = (rbus *)bus;
    rkv_req *r = record_req(b, &tb__rkv_put, group, id, value, len, ttl_ms);
    if (!r)
        return TB_EINVAL; /* or ENOMEM: both leave cb uncalled */
    tb__rkv_done_handlers(r, cb, ud);
    r->ok = put_reply;
    return enqueue(b, r);
}

static int kv_del(tb__bus *bus, const char *group, const char *id,
                  tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    rkv_req *r = record_req(b, &tb__rkv_del, group, id, NULL, 0, 0);
    if (!r)
        return TB_EINVAL;
    tb__rkv_done_handlers(r, cb, ud);
    return enqueue(b, r);
}

static int kv_list(tb__bus *bus, const char *group, tb__kv_list_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!tb__kv_name_ok(group, strlen(group), 32))
        return TB_EINVAL;
    char set[128], pfx[140], maxn[16], maxv[16];
    snprintf(set, sizeof set, "%s%s", b->kv_prefix, group);
    snprintf(pfx, sizeof pfx, "%s:", set);
    snprintf(maxn, sizeof maxn, "%d", TB__KV_LIST_MAX);
    snprintf(maxv, sizeof maxv, "%d", TB__KV_VALUE_MAX);
    const char *argv[4] = {set, pfx, maxn, maxv};
    size_t lens[4] = {strlen(set), strlen(pfx), strlen(maxn), strlen(maxv)};
    rkv_req *r = tb__rkv_new(b, &tb__rkv_list, 1, 4, argv, lens);
    if (!r)
        return TB_EINVAL;
    snprintf(r->label, sizeof r->label, "list %s", group);
    tb__rkv_list_handlers(r, TB__KV_LIST_MAX, TB__KV_VALUE_MAX, 0, cb, ud);
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
    const tb__rkv_script *sc = priv;
    if (reply->type == REDIS_REPLY_STRING && reply->len == 40 &&
        strspn(reply->str, "0123456789abcdef") == 40) {
        memcpy(b->sha[sc->slot], reply->str, 41);
        return;
    }
    if (tb__ratelog_ok(&b->kv_log, tb__mono_us()))
        tb__log(TB_LOG_ERROR,
                "redis bus: SCRIPT LOAD of the %s script refused: %s; "
                "sending it with EVAL instead",
                sc->name,
                reply->type == REDIS_REPLY_ERROR ? reply->str
                                                 : "unexpected reply");
}

static void load_script(rbus *b, const tb__rkv_script *sc)
{
    rlink *l = &b->links[LINK_PUB];
    if (!l->ac)
        return;
    const char *argv[3] = {"SCRIPT", "LOAD", sc->body};
    size_t lens[3] = {6, 4, strlen(sc->body)};
    redisAsyncCommandArgv(l->ac, on_script_load, (void *)sc, 3, argv, lens);
}

void tb__rkv_connected(rbus *b)
{
    /* A restarted Redis has forgotten them: every script is loaded again,
     * the store's and the cluster's. */
    for (int i = 0; i < RKV_SCRIPTS_MAX; i++)
        b->sha[i][0] = '\0';
    load_script(b, &tb__rkv_put);
    load_script(b, &tb__rkv_del);
    load_script(b, &tb__rkv_list);
    tb__rcl_load_scripts(b, load_script);
    tb__rh_load_scripts(b, load_script);
}

/* ---------------------------------------------------------------- replies */

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
        int noscript = r->script && !strncmp(reply->str, "NOSCRIPT", 8);
        if (tb__rb_readonly(b, reply->str)) {
            /* Its caller retries (a heartbeat, a renewal), on the master. */
        } else if (noscript) {
            b->sha[r->script->slot][0] = '\0';
            load_script(b, r->script);
        } else if (tb__ratelog_ok(&b->kv_log, l->last_rx_us)) {
            tb__log(TB_LOG_ERROR, "redis bus: Redis refused %s: %s", r->label,
                    reply->str);
        }
        complete(r, noscript ? TB_EAGAIN : TB_EIO);
        return;
    }
    if (r->ok)
        r->ok(r, reply);
    free(r);
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
    const char *argv[RKV_ARGS_MAX + 3];
    size_t lens[RKV_ARGS_MAX + 3];
    int argc = 0;
    char nkeys[8];
    if (r->script) {
        const char *sha = b->sha[r->script->slot];
        if (sha[0]) {
            argv[argc] = "EVALSHA";
            lens[argc++] = 7;
            argv[argc] = sha;
            lens[argc++] = 40;
        } else {
            argv[argc] = "EVAL";
            lens[argc++] = 4;
            argv[argc] = r->script->body;
            lens[argc++] = strlen(r->script->body);
        }
        snprintf(nkeys, sizeof nkeys, "%d", r->nkeys);
        argv[argc] = nkeys;
        lens[argc++] = strlen(nkeys);
    }
    for (int i = 0; i < r->argc; i++) {
        argv[argc] = r->argv[i];
        lens[argc++] = r->lens[i];
    }
    /* hiredis copies the arguments before it returns. */
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
