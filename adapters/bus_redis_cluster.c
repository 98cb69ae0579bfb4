/* bus_redis_cluster.c - the Redis bus's cluster state: name claims,
 * singleton leases with fences, definitions, periodic ticks, and messages
 * between instances, each change one Lua script on the command link. */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "bus_redis.h"

/* The keys (docs/CLUSTER.md), every one under the namespace's hash tag
 * "{ns}:" so that they share one Redis Cluster slot:
 *   {ns}:claim            hash  task name -> "<instance> <task id>"
 *   {ns}:claims:<inst>    set   the names <inst> claimed
 *   {ns}:claimers         set   instances that hold (or held) claims
 *   {ns}:gone             zset  claimers found dead -> when (Redis ms)
 *   {ns}:lease:<name>     string "<instance> <fence>", PX lease_ms
 *   {ns}:fence            hash  name -> the last fence handed out
 *   {ns}:singleton        hash  name -> definition (JSON, the core's)
 *   {ns}:tick             hash  name -> the last periodic tick fired
 * and the channel "<ns>:ctl:<inst>" (messages for <inst>; not a key).
 *
 * A claim is live while its instance's record "{ns}:instance:<inst>"
 * exists: no per-claim TTL to renew, so a heartbeat costs the same with
 * one claim or 100 000. Values are parsed with a strict pattern; a value
 * that does not match (written by someone else) counts as free.
 *
 * Fences are max(last + 1, Redis's clock in µs): strictly increasing per
 * name, also after a Redis that lost its data, as long as its clock does
 * not go back. In µs, not ms: a take costs Redis more than a µs, so fences
 * never run ahead of the clock, whereas in ms a burst of takes (a
 * singleton ended and started again in a loop) pushed them past it and a
 * FLUSHALL then handed out a lower one. Lua numbers are doubles: exact up
 * to 2^53, a clock in µs until the year 2255. */

/* What the scripts read back, parsed strictly: anyone may write to Redis,
 * and a value nobody of ours wrote counts as absent (free). holder(v):
 * "<instance> <number>", the instance 1..20 lowercase hex digits (as
 * instances make them) and the number 1..19 digits (below 2^63: a task id
 * or a fence); num(v): 1..19 digits. Anything else ("inf", "1e300", an id
 * in capitals, a number of 30 digits) would otherwise be taken for a
 * holder the C side refuses to read, or a number no tick or fence can
 * pass. */
#define PARSE_LUA                                                              \
    "local function holder(v)\n"                                               \
    "  if type(v) ~= 'string' or #v > 40 then return nil end\n"                \
    "  local i, n = string.match(v, '^([0-9a-f]+) (%d+)$')\n"                  \
    "  if i and #i <= 20 and #n <= 19 then return i, n end\n"                  \
    "end\n"                                                                    \
    "local function num(v)\n"                                                  \
    "  if type(v) == 'string' and #v <= 19 and string.match(v, '^%d+$') "      \
    "then\n"                                                                   \
    "    return tonumber(v)\n"                                                 \
    "  end\n"                                                                  \
    "end\n"

/* KEYS[1] claim hash; ARGV name, instance, id, prefix "{ns}:". {2, ...}
 * when our own record is missing: a claim then would look dead to the
 * others, so the caller retries once its heartbeat has put it back. */
static const char claim_lua[] = PARSE_LUA
    "local p = ARGV[4]\n"
    "if redis.call('EXISTS', p .. 'instance:' .. ARGV[2]) == 0 then\n"
    "  return {2, ARGV[2], ARGV[3], 0}\n"
    "end\n"
    "local i, id = holder(redis.call('HGET', KEYS[1], ARGV[1]))\n"
    "if i and i ~= ARGV[2] then\n"
    "  if redis.call('EXISTS', p .. 'instance:' .. i) == 1 then\n"
    "    return {0, i, id, 1}\n"
    "  end\n"
    "  redis.call('SREM', p .. 'claims:' .. i, ARGV[1])\n"
    "end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])\n"
    "redis.call('SADD', p .. 'claims:' .. ARGV[2], ARGV[1])\n"
    "redis.call('SADD', p .. 'claimers', ARGV[2])\n"
    "return {1, ARGV[2], ARGV[3], 1}\n";

/* KEYS[1] claim hash; ARGV name, instance, id, prefix. */
static const char release_lua[] =
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] .. ' ' .. ARGV[3] "
    "then\n"
    "  redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "  redis.call('SREM', ARGV[4] .. 'claims:' .. ARGV[2], ARGV[1])\n"
    "end\n"
    "return 1\n";

/* KEYS[1] claim hash; ARGV name, prefix. */
static const char whois_lua[] = PARSE_LUA
    "local i, id = holder(redis.call('HGET', KEYS[1], ARGV[1]))\n"
    "if not i then return {} end\n"
    "return {1, i, id, redis.call('EXISTS', ARGV[2] .. 'instance:' .. i)}\n";

/* Drops an instance's claims, at most ARGV[3] of them; returns how many
 * are left. KEYS[1] claim hash; ARGV instance, prefix, count. */
#define DROP_CLAIMS_LUA                                                        \
    "local function drop_claims(inst, p, n)\n"                                 \
    "  local set = p .. 'claims:' .. inst\n"                                   \
    "  local names = redis.call('SPOP', set, n)\n"                             \
    "  for _, name in ipairs(names) do\n"                                      \
    "    local cur = redis.call('HGET', KEYS[1], name)\n"                      \
    "    if cur and string.sub(cur, 1, #inst + 1) == inst .. ' ' then\n"       \
    "      redis.call('HDEL', KEYS[1], name)\n"                                \
    "    end\n"                                                                \
    "  end\n"                                                                  \
    "  return redis.call('SCARD', set)\n"                                      \
    "end\n"

/* A clean stop: our record and our claims go. KEYS[1] claim hash; ARGV
 * instance, prefix. Returns the claims left (the caller repeats). */
static const char leave_lua[] =
    DROP_CLAIMS_LUA "local p = ARGV[2]\n"
                    "redis.call('DEL', p .. 'instance:' .. ARGV[1])\n"
                    "redis.call('SREM', p .. 'instance', ARGV[1])\n"
                    "local left = drop_claims(ARGV[1], p, 5000)\n"
                    "if left == 0 then\n"
                    "  redis.call('SREM', p .. 'claimers', ARGV[1])\n"
                    "  redis.call('ZREM', p .. 'gone', ARGV[1])\n"
                    "end\n"
                    "return left\n";

/* Housekeeping. KEYS[1] claim hash; ARGV prefix, keep ms. Claimers whose
 * record is gone are noted with Redis's time; those gone for more than
 * keep ms lose their claims (a bounded number per call); one that came
 * back (its record is there again) is no longer gone. */
static const char reap_lua[] = DROP_CLAIMS_LUA
    "local p, keep = ARGV[1], tonumber(ARGV[2])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local ids = redis.call('SRANDMEMBER', p .. 'claimers', 256)\n"
    "for _, i in ipairs(ids) do\n"
    "  if redis.call('EXISTS', p .. 'instance:' .. i) == 1 then\n"
    "    redis.call('ZREM', p .. 'gone', i)\n"
    "  else\n"
    "    redis.call('ZADD', p .. 'gone', 'NX', now, i)\n"
    "  end\n"
    "end\n"
    "local old = redis.call('ZRANGEBYSCORE', p .. 'gone', '-inf', now - keep, "
    "'LIMIT', 0, 4)\n"
    "local dropped = 0\n"
    "for _, i in ipairs(old) do\n"
    "  if redis.call('EXISTS', p .. 'instance:' .. i) == 1 then\n"
    "    redis.call('ZREM', p .. 'gone', i)\n"
    "  elseif drop_claims(i, p, 2000) == 0 then\n"
    "    redis.call('SREM', p .. 'claimers', i)\n"
    "    redis.call('ZREM', p .. 'gone', i)\n"
    "    dropped = dropped + 1\n"
    "  end\n"
    "end\n"
    "return dropped\n";

/* KEYS[1] the lease, KEYS[2] fence hash, KEYS[3] singleton hash; ARGV
 * name, instance, ttl ms. Only while the definition exists (a run that
 * ended for good deletes it with its lease, atomically). The fourth
 * member: 1 when an earlier run held a fence (a takeover), else 0; {0,
 * "", "0", 0} when there is no definition. */
static const char lease_take_lua[] =
    PARSE_LUA "if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then\n"
              "  return {0, '', '0', 0}\n"
              "end\n"
              "local i, f = holder(redis.call('GET', KEYS[1]))\n"
              "if i then return {0, i, f, 1} end\n"
              "local t = redis.call('TIME')\n"
              "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
              "local last = num(redis.call('HGET', KEYS[2], ARGV[1])) or 0\n"
              "local f = string.format('%d', math.max(last + 1, now))\n"
              "redis.call('HSET', KEYS[2], ARGV[1], f)\n"
              "redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. f, 'PX', ARGV[3])\n"
              "if last > 0 then return {1, ARGV[2], f, 1} end\n"
              "return {1, ARGV[2], f, 0}\n";

/* KEYS[1] the lease, KEYS[2] fence hash, KEYS[3] singleton hash; ARGV
 * name, instance, fence, ttl, definition. Extends our lease. A lease that
 * is gone is ours again only if no later fence was handed out (a takeover,
 * or the tombstone a definition's delete leaves: an ended singleton never
 * comes back); and if Redis lost its data (no fence recorded at all), the
 * definition is put back with it. A lease that is not a holder's counts as
 * gone, as for a take. */
static const char lease_renew_lua[] =
    PARSE_LUA "local mine = ARGV[2] .. ' ' .. ARGV[3]\n"
              "local cur = redis.call('GET', KEYS[1])\n"
              "if cur == mine then\n"
              "  redis.call('PEXPIRE', KEYS[1], ARGV[4])\n"
              "  return {1, ARGV[2], ARGV[3], 1}\n"
              "end\n"
              "local i, f = holder(cur)\n"
              "if i then return {0, i, f, 1} end\n"
              "local rec = redis.call('HGET', KEYS[2], ARGV[1])\n"
              "local last = num(rec) or 0\n"
              "if last > tonumber(ARGV[3]) then\n"
              "  return {0, '', string.format('%d', last), 1}\n"
              "end\n"
              "if rec and redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then\n"
              "  return {0, '', string.format('%d', last), 1}\n"
              "end\n"
              "redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])\n"
              "redis.call('SET', KEYS[1], mine, 'PX', ARGV[4])\n"
              "redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[5])\n"
              "return {1, ARGV[2], ARGV[3], 1}\n";

/* KEYS[1] the lease; ARGV instance, fence. */
static const char lease_drop_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] .. ' ' .. ARGV[2] then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "end\n"
    "return 1\n";

/* KEYS[1] singleton hash; ARGV name, value. */
static const char def_put_lua[] =
    "return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])\n";

/* KEYS[1] singleton hash, KEYS[2] fence hash; ARGV name, value. The
 * fence hash is the memory of Redis: a definition's delete leaves its
 * tombstone there, a Redis that lost its data has none. */
static const char def_restore_lua[] =
    "if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end\n"
    "return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])\n";

/* KEYS[1] singleton hash, KEYS[2] tick hash, KEYS[3] the lease, KEYS[4]
 * fence hash; ARGV name, "<instance> <fence>" or "" for any holder, fence
 * or 0. Leaves a tombstone: the recorded fence goes past the holder's, so
 * that a renewal of the ended run in flight cannot take the lease again.
 * Returns 1 when there was a definition. */
static const char def_del_lua[] = PARSE_LUA
    "local had = redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "redis.call('HDEL', KEYS[2], ARGV[1])\n"
    "local cur = redis.call('GET', KEYS[3])\n"
    "if cur and (ARGV[2] == '' or cur == ARGV[2]) then\n"
    "  redis.call('DEL', KEYS[3])\n"
    "end\n"
    "local last = num(redis.call('HGET', KEYS[4], ARGV[1])) or 0\n"
    "local f = math.max(last, tonumber(ARGV[3]))\n"
    "redis.call('HSET', KEYS[4], ARGV[1], string.format('%d', f + 1))\n"
    "return had\n";

/* KEYS[1] singleton hash; ARGV records at most, value bytes at most.
 * Returns name, value, ..., then the count skipped. */
static const char def_list_lua[] =
    "local maxn, maxv = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local all\n"
    "if redis.call('HLEN', KEYS[1]) <= maxn then\n"
    "  all = redis.call('HGETALL', KEYS[1])\n"
    "else\n"
    "  all = redis.call('HSCAN', KEYS[1], 0, 'COUNT', maxn)[2]\n"
    "end\n"
    "local out, skipped = {}, redis.call('HLEN', KEYS[1]) - #all / 2\n"
    "for i = 1, #all, 2 do\n"
    "  if #all[i + 1] > maxv or #out >= 2 * maxn then\n"
    "    skipped = skipped + 1\n"
    "  else\n"
    "    out[#out + 1] = all[i]\n"
    "    out[#out + 1] = all[i + 1]\n"
    "  end\n"
    "end\n"
    "out[#out + 1] = tostring(math.max(skipped, 0))\n"
    "return out\n";

/* KEYS[1] the lease, KEYS[2] tick hash; ARGV name, "<instance> <fence>",
 * tick. 1 + n: fired, n ticks after the last one recorded (none: n = 0);
 * 0: that tick fired already; -1: not the leaseholder. */
static const char tick_lua[] =
    PARSE_LUA "if redis.call('GET', KEYS[1]) ~= ARGV[2] then return -1 end\n"
              "local last = num(redis.call('HGET', KEYS[2], ARGV[1])) or -1\n"
              "local t = tonumber(ARGV[3])\n"
              "if t <= last then return 0 end\n"
              "redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])\n"
              "if last < 0 then return 1 end\n"
              "return t - last\n";

/* Slots 0..2 are the store's (bus_redis_kv.c). */
static const tb__rkv_script s_claim = {"claim", claim_lua, 3};
static const tb__rkv_script s_release = {"release", release_lua, 4};
static const tb__rkv_script s_whois = {"whois", whois_lua, 5};
static const tb__rkv_script s_leave = {"leave", leave_lua, 6};
static const tb__rkv_script s_reap = {"reap", reap_lua, 7};
static const tb__rkv_script s_lease_take = {"lease take", lease_take_lua, 8};
static const tb__rkv_script s_lease_renew = {"lease renew", lease_renew_lua, 9};
static const tb__rkv_script s_lease_drop = {"lease drop", lease_drop_lua, 10};
static const tb__rkv_script s_def_put = {"definition put", def_put_lua, 11};
static const tb__rkv_script s_def_del = {"definition delete", def_del_lua, 12};
static const tb__rkv_script s_def_list = {"definition list", def_list_lua, 13};
static const tb__rkv_script s_tick = {"tick", tick_lua, 14};
static const tb__rkv_script s_def_restore = {"definition restore",
                                             def_restore_lua, 15};

static const tb__rkv_script *const all_scripts[] = {
    &s_claim,      &s_release,     &s_whois,       &s_leave,   &s_reap,
    &s_lease_take, &s_lease_renew, &s_lease_drop,  &s_def_put, &s_def_del,
    &s_def_list,   &s_tick,        &s_def_restore,
};

void tb__rcl_load_scripts(rbus *b,
                          void (*load)(rbus *b, const tb__rkv_script *sc))
{
    for (size_t i = 0; i < sizeof all_scripts / sizeof all_scripts[0]; i++)
        load(b, all_scripts[i]);
}

/* ---------------------------------------------------------------- helpers */

static int name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    return n >= 1 && n <= TB_TASK_NAME_MAX;
}

/* Builds a request from NUL-terminated strings; key names are formed by
 * the caller. */
static rkv_req *req_of(rbus *b, const tb__rkv_script *sc, int nkeys, int argc,
                       const char *const *argv)
{
    size_t lens[RKV_ARGS_MAX];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return tb__rkv_new(b, sc, nkeys, argc, argv, lens);
}

static void key(char *out, size_t size, rbus *b, const char *what,
                const char *name)
{
    snprintf(out, size, "%s%s%s%s", b->kv_prefix, what, name ? ":" : "",
             name ? name : "");
}

static const char *self(rbus *b)
{
    return tb__app_instance(b->bus.app);
}

/* ---- replies {ok, instance, number, live} ---- */

static void claim_fail(rkv_req *r, int status)
{
    if (r->cb.claimed)
        r->cb.claimed(status, "", 0, 0, r->ud);
}

static int holder_ok(const redisReply *i, const redisReply *n)
{
    return i->type == REDIS_REPLY_STRING && i->len <= 32 &&
           strspn(i->str, "0123456789abcdef") == i->len &&
           n->type == REDIS_REPLY_STRING && n->len >= 1 && n->len <= 20 &&
           strspn(n->str, "0123456789") == n->len;
}

/* {1|0, instance, number, live}: 0 (ours) or TB_EEXIST (held). An empty
 * array (whois: no claim) is TB_ENOENT. A renew's {0, "", fence} (ours is
 * stale) reports TB_EEXIST with instance "". */
static void claim_reply(rkv_req *r, const redisReply *reply)
{
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 0) {
        claim_fail(r, TB_ENOENT);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[3]->type != REDIS_REPLY_INTEGER ||
        !(holder_ok(reply->element[1], reply->element[2]) ||
          (reply->element[1]->type == REDIS_REPLY_STRING &&
           reply->element[1]->len == 0))) {
        if (tb__ratelog_ok(&r->b->kv_log, tb__mono_us()))
            tb__log(TB_LOG_WARN, "redis bus: malformed answer to %s: ignored",
                    r->label);
        claim_fail(r, TB_EPROTO);
        return;
    }
    const redisReply *n = reply->element[2];
    uint64_t num = n->type == REDIS_REPLY_STRING && n->len <= 20
                       ? strtoull(n->str, NULL, 10)
                       : 0;
    long long ok = reply->element[0]->integer;
    if (r->cb.claimed)
        r->cb.claimed(ok == 1   ? 0
                      : ok == 2 ? TB_EAGAIN
                                : TB_EEXIST,
                      reply->element[1]->str, num,
                      reply->element[3]->integer == 1, r->ud);
}

static void claim_handlers(rkv_req *r, tb__claim_cb cb, void *ud)
{
    r->ok = claim_reply;
    r->fail = claim_fail;
    r->cb.claimed = cb;
    r->ud = ud;
}

/* ---------------------------------------------------------------- claims */

static int rcl_claim(tb__bus *bus, const char *name, uint64_t id,
                     tb__claim_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!name_ok(name))
        return TB_EINVAL;
    char hash[100], ids[24];
    key(hash, sizeof hash, b, "claim", NULL);
    snprintf(ids, sizeof ids, "%" PRIu64, id);
    const char *argv[] = {hash, name, self(b), ids, b->kv_prefix};
    rkv_req *r = req_of(b, &s_claim, 1, 5, argv);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "claim of a task name");
    claim_handlers(r, cb, ud);
    return tb__rkv_submit(r);
}

static int rcl_release(tb__bus *bus, const char *name, uint64_t id,
                       tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!name_ok(name))
        return TB_EINVAL;
    char hash[100], ids[24];
    key(hash, sizeof hash, b, "claim", NULL);
    snprintf(ids, sizeof ids, "%" PRIu64, id);
    const char *argv[] = {hash, name, self(b), ids, b->kv_prefix};
    rkv_req *r = req_of(b, &s_release, 1, 5, argv);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "release of a task name");
    tb__rkv_done_handlers(r, cb, ud);
    return tb__rkv_submit(r);
}

static int rcl_whois(tb__bus *bus, const char *name, tb__claim_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!name_ok(name))
        return TB_EINVAL;
    char hash[100];
    key(hash, sizeof hash, b, "claim", NULL);
    const char *argv[] = {hash, name, b->kv_prefix};
    rkv_req *r = req_of(b, &s_whois, 1, 3, argv);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "lookup of a task name");
    claim_handlers(r, cb, ud);
    return tb__rkv_submit(r);
}

/* leave: resent while claims are left, at most this many times (5 000
 * claims each). */
#define LEAVE_REPEATS_MAX 40

static void leave_reply(rkv_req *r, const redisReply *reply)
{
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer > 0 &&
        r->repeats < LEAVE_REPEATS_MAX) {
        /* Send the same again, from here: a new request with our handlers. */
        rkv_req *again =
            tb__rkv_new(r->b, r->script, r->nkeys, r->argc, r->argv, r->lens);
        if (again) {
            again->ok = r->ok;
            again->fail = r->fail;
            again->cb = r->cb;
            again->ud = r->ud;
            again->repeats = r->repeats + 1;
            memcpy(again->label, r->label, sizeof again->label);
            if (tb__rkv_submit(again) == 0)
                return;
        }
    }
    if (r->cb.done)
        r->cb.done(reply->type == REDIS_REPLY_INTEGER ? 0 : TB_EPROTO, r->ud);
}

static int rcl_leave(tb__bus *bus, tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    char hash[100];
    key(hash, sizeof hash, b, "claim", NULL);
    const char *argv[] = {hash, self(b), b->kv_prefix};
    rkv_req *r = req_of(b, &s_leave, 1, 3, argv);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "leave of instance %s", self(b));
    tb__rkv_done_handlers(r, cb, ud);
    r->ok = leave_reply;
    return tb__rkv_submit(r);
}

static int rcl_reap(tb__bus *bus, int64_t keep_ms, tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    char hash[100], keep[24];
    key(hash, sizeof hash, b, "claim", NULL);
    snprintf(keep, sizeof keep, "%" PRId64, keep_ms);
    const char *argv[] = {hash, b->kv_prefix, keep};
    rkv_req *r = req_of(b, &s_reap, 1, 3, argv);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "reap of dead instances' claims");
    tb__rkv_done_handlers(r, cb, ud);
    return tb__rkv_submit(r);
}

/* ---------------------------------------------------------------- leases */

static int rcl_lease_take(tb__bus *bus, const char *name, int64_t ttl_ms,
                          tb__claim_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!name_ok(name) || ttl_ms <= 0)
        return TB_EINVAL;
    char lease[300], fences[100], defs[100], ttl[24];
    key(lease, sizeof lease, b, "lease", name);
    key(fences, sizeof fences, b, "fence", NULL);
    key(defs, sizeof defs, b, "singleton", NULL);
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    const char *argv[] = {lease, fences, defs, name, self(b), ttl};
    rkv_req *r = req_of(b, &s_lease_take, 3, 6, argv);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "lease take");
    claim_handlers(r, cb, ud);
    return tb__rkv_submit(r);
}

static int rcl_lease_renew(tb__bus *bus, const char *name, uint64_t fence,
                           int64_t ttl_ms, const char *def, size_t deflen,
                           tb__claim_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!name_ok(name) || ttl_ms <= 0 || !deflen ||
        deflen > TB__CLUSTER_DEF_MAX)
        return TB_EINVAL;
    char lease[300], fences[100], defs[100], ttl[24], f[24];
    key(lease, sizeof lease, b, "lease", name);
    key(fences, sizeof fences, b, "fence", NULL);
    key(defs, sizeof defs, b, "singleton", NULL);
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    snprintf(f, sizeof f, "%" PRIu64, fence);
    const char *argv[] = {lease, fences, defs, name, self(b), f, ttl, def};
    size_t lens[] = {strlen(lease), strlen(fences),  strlen(defs),
                     strlen(name),  strlen(self(b)), strlen(f),
                     strlen(ttl),   deflen};
    rkv_req *r = tb__rkv_new(b, &s_lease_renew, 3, 8, argv, lens);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "lease renewal");
    claim_handlers(r, cb, ud);
    return tb__rkv_submit(r);
}

static int rcl_lease_drop(tb__bus *bus, const char *name, uint64_t fence,
                          tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!name_ok(name))
        return TB_EINVAL;
    char lease[300], f[24];
    key(lease, sizeof lease, b, "lease", name);
    snprintf(f, sizeof f, "%" PRIu64, fence);
    const char *argv[] = {lease, self(b), f};
    rkv_req *r = req_of(b, &s_lease_drop, 1, 3, argv);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "lease drop");
    tb__rkv_done_handlers(r, cb, ud);
    return tb__rkv_submit(r);
}

/* ---------------------------------------------------------------- definitions
 */

static void def_put_reply(rkv_req *r, const redisReply *reply)
{
    int st = reply->type != REDIS_REPLY_INTEGER ? TB_EPROTO
             : reply->integer == 1              ? 0
                                                : TB_EEXIST;
    if (r->cb.done)
        r->cb.done(st, r->ud);
}

static int rcl_def_put(tb__bus *bus, const char *name, const char *value,
                       size_t len, tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!name_ok(name) || !len || len > TB__CLUSTER_DEF_MAX)
        return TB_EINVAL;
    char hash[100];
    key(hash, sizeof hash, b, "singleton", NULL);
    const char *argv[] = {hash, name, value};
    size_t lens[] = {strlen(hash), strlen(name), len};
    rkv_req *r = tb__rkv_new(b, &s_def_put, 1, 3, argv, lens);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "definition put");
    tb__rkv_done_handlers(r, cb, ud);
    r->ok = def_put_reply;
    return tb__rkv_submit(r);
}

/* 0 when there was a definition, TB_ENOENT when there was none. */
static void def_del_reply(rkv_req *r, const redisReply *reply)
{
    int st = reply->type != REDIS_REPLY_INTEGER ? TB_EPROTO
             : reply->integer == 1              ? 0
                                                : TB_ENOENT;
    if (r->cb.done)
        r->cb.done(st, r->ud);
}

static int rcl_def_restore(tb__bus *bus, const char *name, const char *value,
                           size_t len, tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!name_ok(name) || !len || len > TB__CLUSTER_DEF_MAX)
        return TB_EINVAL;
    char defs[100], fences[100];
    key(defs, sizeof defs, b, "singleton", NULL);
    key(fences, sizeof fences, b, "fence", NULL);
    const char *argv[] = {defs, fences, name, value};
    size_t lens[] = {strlen(defs), strlen(fences), strlen(name), len};
    rkv_req *r = tb__rkv_new(b, &s_def_restore, 2, 4, argv, lens);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "definition restore");
    tb__rkv_done_handlers(r, cb, ud);
    r->ok = def_put_reply; /* 1: restored; 0: TB_EEXIST */
    return tb__rkv_submit(r);
}

static int rcl_def_del(tb__bus *bus, const char *name, uint64_t fence,
                       tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!name_ok(name))
        return TB_EINVAL;
    char defs[100], ticks[100], lease[300], fences[100], holder[64] = "";
    char f[24];
    key(defs, sizeof defs, b, "singleton", NULL);
    key(ticks, sizeof ticks, b, "tick", NULL);
    key(lease, sizeof lease, b, "lease", name);
    key(fences, sizeof fences, b, "fence", NULL);
    if (fence)
        snprintf(holder, sizeof holder, "%s %" PRIu64, self(b), fence);
    snprintf(f, sizeof f, "%" PRIu64, fence);
    const char *argv[] = {defs, ticks, lease, fences, name, holder, f};
    rkv_req *r = req_of(b, &s_def_del, 4, 7, argv);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "definition delete");
    tb__rkv_done_handlers(r, cb, ud);
    r->ok = def_del_reply;
    return tb__rkv_submit(r);
}

static int rcl_def_list(tb__bus *bus, tb__defs_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    char hash[100], maxn[16], maxv[16];
    key(hash, sizeof hash, b, "singleton", NULL);
    snprintf(maxn, sizeof maxn, "%d", TB__CLUSTER_DEFS_MAX);
    snprintf(maxv, sizeof maxv, "%d", TB__CLUSTER_DEF_MAX);
    const char *argv[] = {hash, maxn, maxv};
    rkv_req *r = req_of(b, &s_def_list, 1, 3, argv);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "definition list");
    tb__rkv_list_handlers(r, TB__CLUSTER_DEFS_MAX, TB__CLUSTER_DEF_MAX, 1, cb,
                          ud);
    return tb__rkv_submit(r);
}

static void tick_reply(rkv_req *r, const redisReply *reply)
{
    long long n = reply->integer;
    int st = reply->type != REDIS_REPLY_INTEGER ? TB_EPROTO
             : n > INT_MAX                      ? INT_MAX
             : n >= 1                           ? (int)(n - 1)
             : n == 0                           ? TB_EEXIST
                                                : TB_EPERM;
    if (r->cb.done)
        r->cb.done(st, r->ud);
}

static int rcl_tick(tb__bus *bus, const char *name, int64_t tick,
                    uint64_t fence, tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    if (!name_ok(name) || tick < 0)
        return TB_EINVAL;
    char lease[300], ticks[100], holder[64], t[24];
    key(lease, sizeof lease, b, "lease", name);
    key(ticks, sizeof ticks, b, "tick", NULL);
    snprintf(holder, sizeof holder, "%s %" PRIu64, self(b), fence);
    snprintf(t, sizeof t, "%" PRId64, tick);
    const char *argv[] = {lease, ticks, name, holder, t};
    rkv_req *r = req_of(b, &s_tick, 2, 5, argv);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "periodic tick");
    tb__rkv_done_handlers(r, cb, ud);
    r->ok = tick_reply;
    return tb__rkv_submit(r);
}

/* ---------------------------------------------------------------- messages */

static void send_reply(rkv_req *r, const redisReply *reply)
{
    int st = reply->type != REDIS_REPLY_INTEGER ? TB_EPROTO
             : reply->integer > 0               ? 0
                                                : TB_ENOENT;
    if (r->cb.done)
        r->cb.done(st, r->ud);
}

static int rcl_send(tb__bus *bus, const char *instance, const char *msg,
                    size_t len, tb__kv_done_cb cb, void *ud)
{
    rbus *b = (rbus *)bus;
    size_t ilen = instance ? strlen(instance) : 0;
    if (!ilen || ilen > 32 || strspn(instance, "0123456789abcdef") != ilen ||
        !len || len > TB__CLUSTER_MSG_MAX)
        return TB_EINVAL;
    char ch[200];
    snprintf(ch, sizeof ch, "%s%s", b->ctl_prefix, instance);
    const char *argv[] = {"PUBLISH", ch, msg};
    size_t lens[] = {7, strlen(ch), len};
    rkv_req *r = tb__rkv_new(b, NULL, 0, 3, argv, lens);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "message to instance %s", instance);
    tb__rkv_done_handlers(r, cb, ud);
    r->ok = send_reply;
    return tb__rkv_submit(r);
}

void tb__rcl_message(rbus *b, const char *msg, size_t len)
{
    /* The core checks it, its size included, and counts what it drops. */
    tb__cluster_message(b->bus.app, msg, len);
}

const tb__cluster_ops tb__rcl_ops = {
    .claim = rcl_claim,
    .release = rcl_release,
    .whois = rcl_whois,
    .leave = rcl_leave,
    .reap = rcl_reap,
    .lease_take = rcl_lease_take,
    .lease_renew = rcl_lease_renew,
    .lease_drop = rcl_lease_drop,
    .def_put = rcl_def_put,
    .def_restore = rcl_def_restore,
    .def_del = rcl_def_del,
    .def_list = rcl_def_list,
    .tick = rcl_tick,
    .send = rcl_send,
};
