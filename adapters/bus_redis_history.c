/* bus_redis_history.c - the Redis bus's history: the publish script that
 * gives each event its position, and reading the stream back. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "bus_redis.h"

/* With core.history_size > 0 (docs/HISTORY.md), a namespace's history is
 *   "{ns}:hist"   a stream, one entry per event, id "<seq>-0", fields
 *                 n (the event name) and e (the envelope, with its pos),
 *                 trimmed to history_size and expiring history_ttl after
 *                 the last publish;
 *   "{ns}:hmeta"  a hash {epoch, seq}, without TTL: the epoch changes only
 *                 when Redis lost it (a flush, a restart without
 *                 persistence), and seq keeps counting after the stream
 *                 expired, so that a resume from before is told so;
 *   "{ns}:htx:<instance>"  the last publish number of an instance whose
 *                 publish ran (PX: twice publish_retry_ms), so that a
 *                 resend after a lost reply gets no second position.
 * Publishing is one script instead of PUBLISH (same link, same pipeline,
 * no extra round trip): it numbers the event, appends `,"pos":"..."` to
 * its envelope (which still starts with our id: note_echo relies on it),
 * adds it to the stream and PUBLISHes it. Reading is one script too
 * (meta, the oldest entry and a range, consistent with one another), on
 * the `pub` link, never on `sub`.
 *
 * A Redis ACL user needs +eval +evalsha +script|load +xadd +xrange
 * +pexpire +hget +hset +hincrby +hmget +get +set +del +publish +time on
 * "{<ns>}:*" besides what bus_redis.c and bus_redis_kv.c list, and +wait
 * with redis.wait_replicas (bus_redis.c sends the WAIT). */

/* KEYS[1] the stream, KEYS[2] the meta hash, KEYS[3] our publish number;
 * ARGV the instance's half of a new epoch (8 hex digits), maxlen ("~" or
 * "=" first), ttl ms, the publish number's keep ms, the master it was
 * sent to ("host:port" as the sentinels name it; "" without Sentinel) and
 * the failover count the instance last decided on, then for each event
 * (in queue order) its channel, envelope, name and publish number.
 * With Sentinel, refused (error TBFAILOVER, nothing written) while the
 * meta hash's master or failover count differ from the caller's: a
 * failover the instance has not decided on (tb__rh_failover) happened,
 * and numbering now could give a position out twice.
 * Events whose number ran already (a resend) are skipped; all of them
 * skipped, the publish number is written again all the same, so that a
 * WAIT after it on a new connection waits for the write that numbered
 * them (WAIT counts from the connection's last write). Returns {how
 * many were appended, the epoch, the seq of the last appended} ({0} when
 * none was). */
static const char pub_lua[] =
    "if ARGV[5] ~= '' then\n"
    "  local m = redis.call('HMGET', KEYS[2], 'master', 'fo')\n"
    "  if m[1] ~= ARGV[5] or (m[2] or '0') ~= ARGV[6] then\n"
    "    return redis.error_reply('TBFAILOVER the history has not decided "
    "on this master yet')\n"
    "  end\n"
    "end\n"
    "local prev = tonumber(redis.call('GET', KEYS[3]) or '0')\n"
    "local n, k, last = (#ARGV - 6) / 4, 0, prev\n"
    "for i = 0, n - 1 do\n"
    "  local tx = tonumber(ARGV[10 + 4 * i])\n"
    "  if tx > prev then k = k + 1; if tx > last then last = tx end end\n"
    "end\n"
    "if k == 0 then\n"
    "  redis.call('SET', KEYS[3], string.format('%d', prev), 'PX', ARGV[4])\n"
    "  return {0}\n"
    "end\n"
    "redis.call('SET', KEYS[3], string.format('%d', last), 'PX', ARGV[4])\n"
    "local ep = redis.call('HGET', KEYS[2], 'epoch')\n"
    "if not ep then\n"
    "  local t = redis.call('TIME')\n"
    "  ep = ARGV[1] .. string.format('%08x', (tonumber(t[1]) * 1000000 + "
    "tonumber(t[2])) % 4294967296)\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  redis.call('HSET', KEYS[2], 'epoch', ep, 'seq', 0)\n"
    "end\n"
    "local seq = redis.call('HINCRBY', KEYS[2], 'seq', k) - k\n"
    "local mark, maxlen = string.sub(ARGV[2], 1, 1), string.sub(ARGV[2], 2)\n"
    "for i = 0, n - 1 do\n"
    "  local a = 7 + 4 * i\n"
    "  if tonumber(ARGV[a + 3]) > prev then\n"
    "    seq = seq + 1\n"
    "    local s = string.format('%d', seq)\n"
    "    local env = string.sub(ARGV[a + 1], 1, -2) .. ',\"pos\":\"' .. ep .. "
    "'-' .. s .. '\"}'\n"
    "    redis.call('XADD', KEYS[1], 'MAXLEN', mark, maxlen, s .. '-0', 'n', "
    "ARGV[a + 2], 'e', env)\n"
    "    redis.call('PUBLISH', ARGV[a], env)\n"
    "  end\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "return {k, ep, seq}\n";

/* KEYS[1] the stream, KEYS[2] the meta hash; ARGV[1] the master it runs
 * on ("host:port" as the sentinels name it; "" without Sentinel), [2] this
 * instance's half of a new epoch, [3] the epoch it saw rolled back ("" after a
 * failover), then (a failover) [4] "1" if this instance may keep the epoch
 * (redis.wait_replicas > 0), [5] the epoch it knows ("" none), [6] [7]
 * the seq and event id of its last acknowledged publish (0 ""), [8] [9]
 * the last position delivered here and its event id ("": not known).
 *
 * After a rollback: a new epoch and an empty history, once per epoch
 * (skipped when it is no longer the one seen). After a failover, the
 * first instance to reach the new master (the hash's `master` is not this
 * one) counts it (`fo`, the failover count the publish script checks)
 * and records the master, whatever it knows; it keeps the epoch when it
 * may, the new master has it, its last acknowledged publish is there with
 * the same id, and its last position delivered is there with the same id
 * or beyond the new master's end; else a new epoch and an empty history,
 * as before. Keeping, positions from the new master's end (`fork`) to the
 * instance's last one (`fence`) were given out by the old master only
 * (not replicated, so never acknowledged with a WAIT): they are skipped,
 * never given out again (seq = fence). Each instance after it checks
 * the same for itself, and may raise the fence while nothing new was
 * given out past it; when its positions clash with the new master's
 * (it saw, on the old master, positions given out here since), a new
 * epoch. An instance that knows no epoch saw nothing to protect: it only
 * records the master (fork = fence = seq: nothing given out past it yet),
 * unless it may not keep (as before: a new epoch). seq, fork, fence and
 * fo must be decimal integers below 2^53 with fork <= fence <= seq:
 * anything else (written by someone else) is a new epoch.
 * Without Sentinel (ARGV[1] "") only a rollback calls it, and it is never
 * a failover: the hash's master and fo stay as they are (they are the
 * Sentinel instances' that may share the namespace: ":0" there, or one
 * more failover counted, would make them decide again).
 * Returns {what, fo}: what 0 (nothing to do), 1 (a new epoch), 2 (the
 * epoch kept), 3 (kept, the fence raised), 4 (a new epoch: the meta was
 * malformed); fo the failover count now. */
const char tb__rh_failover_lua[] =
    "local m = redis.call('HMGET', KEYS[2], 'epoch', 'seq', 'master', "
    "'fork', 'fence', 'fo')\n"
    "local function int(v)\n"
    "  if type(v) ~= 'string' or #v > 16 or not string.match(v, '^%d+$') "
    "then return nil end\n"
    "  local x = tonumber(v)\n"
    "  if x >= 9007199254740992 then return nil end\n"
    "  return x\n"
    "end\n"
    "local function d(x) return string.format('%d', x) end\n"
    "local fo = int(m[6] or '0')\n"
    "local function restart(what)\n"
    "  local t = redis.call('TIME')\n"
    "  local ep = ARGV[2] .. string.format('%08x', (tonumber(t[1]) * 1000000 "
    "+ tonumber(t[2])) % 4294967296)\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  redis.call('HSET', KEYS[2], 'epoch', ep, 'seq', 0, 'fork', 0, "
    "'fence', 0, 'fo', d(fo))\n"
    "  if ARGV[1] ~= '' then redis.call('HSET', KEYS[2], 'master', ARGV[1]) "
    "end\n"
    "  return {what, d(fo)}\n"
    "end\n"
    "local first = ARGV[1] ~= '' and m[3] ~= ARGV[1]\n"
    "if not fo then fo = 1; return restart(4) end\n"
    "if first then fo = fo + 1 end\n"
    "local function noted()\n"
    "  if first then redis.call('HSET', KEYS[2], 'master', ARGV[1], 'fo', "
    "d(fo)) end\n"
    "  return {0, d(fo)}\n"
    "end\n"
    "if ARGV[3] ~= '' then\n"
    "  if m[1] ~= ARGV[3] then return noted() end\n"
    "  return restart(1)\n"
    "end\n"
    "if not m[1] then return noted() end\n"
    "local seq = int(m[2])\n"
    "local fork, fence = int(m[4] or '0'), int(m[5] or '0')\n"
    "if not seq or not fork or not fence or fork > fence or fence > seq "
    "then return restart(4) end\n"
    "local keep = ARGV[4] == '1'\n"
    "if ARGV[5] == '' and keep then\n"
    "  if first then redis.call('HSET', KEYS[2], 'master', ARGV[1], 'fo', "
    "d(fo), 'fork', d(seq), 'fence', d(seq)) end\n"
    "  return {0, d(fo)}\n"
    "end\n"
    "if ARGV[5] == '' or m[1] ~= ARGV[5] or (first and not keep) then\n"
    "  if first then return restart(1) end\n"
    "  return {0, d(fo)}\n"
    "end\n"
    "if first then fork, fence = seq, seq end\n"
    "local f = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)\n"
    "local oldest = seq + 1\n"
    "if f[1] then oldest = tonumber(string.match(f[1][1], '^(%d+)')) end\n"
    "local function has(s, id)\n"
    "  if s < oldest then return true end\n"
    "  local r = redis.call('XRANGE', KEYS[1], d(s) .. '-0', d(s) .. '-0')\n"
    "  if not r[1] then return false end\n"
    "  if id == '' then return s <= fork end\n"
    "  local fv = r[1][2]\n"
    "  for j = 1, #fv - 1, 2 do\n"
    "    if fv[j] == 'e' then\n"
    "      local h = '{\"id\":\"' .. id .. '\"'\n"
    "      return string.sub(fv[j + 1], 1, #h) == h\n"
    "    end\n"
    "  end\n"
    "  return false\n"
    "end\n"
    "local ack, last = int(ARGV[6]) or 0, int(ARGV[8]) or 0\n"
    "if ack > 0 and (ack > seq or not has(ack, ARGV[7])) then return "
    "restart(1) end\n"
    "local raised = false\n"
    "if last > seq then\n"
    "  if not first and seq > fence then return restart(1) end\n"
    "  seq, fence, raised = last, last, true\n"
    "elseif last > 0 and not (last > fork and last <= fence) and not "
    "has(last, ARGV[9]) then\n"
    "  return restart(1)\n"
    "end\n"
    "if first then\n"
    "  redis.call('HSET', KEYS[2], 'seq', d(seq), 'master', ARGV[1], 'fork', "
    "d(fork), 'fence', d(fence), 'fo', d(fo))\n"
    "  return {2, d(fo)}\n"
    "end\n"
    "if raised then\n"
    "  redis.call('HSET', KEYS[2], 'seq', d(seq), 'fence', d(fence))\n"
    "  return {3, d(fo)}\n"
    "end\n"
    "return {0, d(fo)}\n";

/* KEYS[1] the stream, KEYS[2] the meta hash; ARGV the first entry id to
 * read, how many, how many bytes of names and envelopes at most (at least
 * one entry is answered whatever its size). Returns epoch (or ""), seq (or
 * "0"), the oldest entry's id (or ""), "1" if the byte cap cut the read
 * short (else ""), then id, name, envelope of each entry read. */
static const char read_lua[] =
    "local m = redis.call('HMGET', KEYS[2], 'epoch', 'seq')\n"
    "local out = {m[1] or '', m[2] or '0', '', ''}\n"
    "local f = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)\n"
    "if f[1] then out[3] = f[1][1] end\n"
    "local n, cap, bytes = tonumber(ARGV[2]), tonumber(ARGV[3]), 0\n"
    "if n > 0 then\n"
    "  local r = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', n)\n"
    "  for i = 1, #r do\n"
    "    local fv, name, env = r[i][2], '', ''\n"
    "    for j = 1, #fv - 1, 2 do\n"
    "      if fv[j] == 'n' then name = fv[j + 1]\n"
    "      elseif fv[j] == 'e' then env = fv[j + 1] end\n"
    "    end\n"
    "    bytes = bytes + #name + #env\n"
    "    if i > 1 and bytes > cap then out[4] = '1'; break end\n"
    "    out[#out + 1] = r[i][1]\n"
    "    out[#out + 1] = name\n"
    "    out[#out + 1] = env\n"
    "  end\n"
    "end\n"
    "return out\n";

/* Bytes of names and envelopes one history read answers at most (at least
 * one entry): a page of 512 entries of up to max_event_size each would
 * otherwise be gigabytes in one reply. */
#define READ_MAX_BYTES (8 << 20)

const tb__rkv_script tb__rh_pub = {"history publish", pub_lua, 16};
static const tb__rkv_script s_read = {"history read", read_lua, 17};

void tb__rh_load_scripts(rbus *b,
                         void (*load)(rbus *b, const tb__rkv_script *sc))
{
    if (!b->h_on)
        return;
    load(b, &tb__rh_pub);
    load(b, &s_read);
}

/* The receiver's catch-up reads (tb__bus_rx_track). */
static void on_fetched(int status, const tb__hist_page *pg, void *ud)
{
    rbus *b = ud;
    tb__bus_rx_fetched(b->rx, status, pg);
}

static int fetch(void *ud, uint64_t after, size_t count)
{
    return tb__rh_read(ud, after, count, on_fetched, ud);
}

static void rollback(void *ud)
{
    rbus *b = ud;
    char seen[TB_EPOCH_MAX];
    tb__bus_rx_epoch(b->rx, seen);
    if (seen[0])
        tb__rh_failover(b, seen);
}

void tb__rh_init(rbus *b, const tb_app_config *c)
{
    b->h_on = c->core.history_size > 0;
    if (!b->h_on)
        return;
    /* Half of an epoch: the script adds 8 hex digits of Redis's clock, so
     * that the epoch after a loss differs from the one before even when
     * the same instance publishes first again. */
    char e[TB_EPOCH_MAX];
    tb__epoch_new(e);
    snprintf(b->h_epoch, sizeof b->h_epoch, "%.8s", e);
    /* Exact trimming for small histories (a size someone tests at its
     * edge); in blocks beyond, as Redis trims cheaply. */
    snprintf(b->h_maxlen, sizeof b->h_maxlen, "%c%d",
             c->core.history_size > 1000 ? '~' : '=', c->core.history_size);
    snprintf(b->h_ttl, sizeof b->h_ttl, "%d", c->core.history_ttl_ms);
    int64_t keep = 2 * (int64_t)c->redis.publish_retry_ms;
    snprintf(b->h_txkeep, sizeof b->h_txkeep, "%" PRId64,
             keep < 60000 ? 60000 : keep);
    snprintf(b->h_stream, sizeof b->h_stream, "%shist", b->kv_prefix);
    snprintf(b->h_meta, sizeof b->h_meta, "%shmeta", b->kv_prefix);
    snprintf(b->h_tx, sizeof b->h_tx, "%shtx:%s", b->kv_prefix,
             tb__app_instance(b->bus.app));
    /* The config's rules allow WAIT with history on only: it confirms
     * what the script stored, and a plain PUBLISH stores nothing. */
    b->wait_n = c->redis.wait_replicas;
    snprintf(b->wait_n_s, sizeof b->wait_n_s, "%d", b->wait_n);
    snprintf(b->wait_to_s, sizeof b->wait_to_s, "%d", c->redis.wait_timeout_ms);
    snprintf(b->h_fo, sizeof b->h_fo, "0");
    tb__bus_rx_track(b->rx, fetch, b);
    tb__bus_rx_on_rollback(b->rx, rollback);
}

int tb__rh_publish_argv(rbus *b, tb__bus_req *const *qs, int n,
                        char (*nums)[24], const char **argv, size_t *lens)
{
    int c = 0;
    const char *sha = b->sha[tb__rh_pub.slot];
    if (sha[0]) {
        argv[c] = "EVALSHA";
        lens[c++] = 7;
        argv[c] = sha;
        lens[c++] = 40;
    } else {
        argv[c] = "EVAL";
        lens[c++] = 4;
        argv[c] = pub_lua;
        lens[c++] = sizeof pub_lua - 1;
    }
    /* With Sentinel, the master it goes to and the failover count this
     * instance decided on: the script refuses if they are not the hash's.
     * It lives in b, not on this stack: hiredis reads argv after we
     * return (a local here sent stale bytes, and every publish was
     * refused). */
    if (b->t.nsentinels)
        snprintf(b->h_master, sizeof b->h_master, "%s:%d", b->master_host,
                 b->master_port);
    else
        b->h_master[0] = '\0';
    const char *head[] = {"3",         b->h_stream, b->h_meta, b->h_tx,
                          b->h_epoch,  b->h_maxlen, b->h_ttl,  b->h_txkeep,
                          b->h_master, b->h_fo};
    for (size_t i = 0; i < sizeof head / sizeof head[0]; i++) {
        argv[c] = head[i];
        lens[c++] = strlen(head[i]);
    }
    size_t plen = strlen(b->prefix);
    for (int i = 0; i < n; i++) {
        const tb__bus_req *q = qs[i];
        snprintf(nums[i], sizeof nums[i], "%" PRIu64, q->txseq);
        argv[c] = q->channel;
        lens[c++] = q->chlen;
        argv[c] = q->env;
        lens[c++] = q->envlen;
        argv[c] = q->channel + plen; /* the event name */
        lens[c++] = q->chlen - plen;
        argv[c] = nums[i];
        lens[c++] = strlen(nums[i]);
    }
    return c;
}

int tb__rh_published(rbus *b, const redisReply *reply, const tb__bus_req *last)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER)
        return 0;
    if (reply->element[0]->integer == 0)
        return 1; /* all of it ran before (a resend): nothing new */
    const redisReply *ep = reply->elements == 3 ? reply->element[1] : NULL;
    const redisReply *seq = reply->elements == 3 ? reply->element[2] : NULL;
    if (!ep || ep->type != REDIS_REPLY_STRING || ep->len > 16 ||
        !tb__epoch_valid(ep->str) || seq->type != REDIS_REPLY_INTEGER ||
        seq->integer <= 0)
        return 0;
    memcpy(b->pend_epoch, ep->str, ep->len + 1);
    b->pend_seq = (uint64_t)seq->integer;
    snprintf(b->pend_id, sizeof b->pend_id, "%s", last->id);
    if (!b->wait_n)
        tb__rh_acked(b);
    return 1;
}

void tb__rh_acked(rbus *b)
{
    if (!b->pend_seq)
        return;
    memcpy(b->ack_epoch, b->pend_epoch, sizeof b->ack_epoch);
    b->ack_seq = b->pend_seq;
    memcpy(b->ack_id, b->pend_id, sizeof b->ack_id);
    b->pend_seq = 0;
}

static void on_failover(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    rlink *l = ac->data;
    redisReply *reply = r;
    if (!reply || ac != l->ac)
        return;
    rbus *b = l->b;
    /* {what, failover count}: anything else is a failed link, never a
     * decision (publishing on would risk giving positions out twice). */
    const redisReply *what = NULL, *fo = NULL;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        what = reply->element[0];
        fo = reply->element[1];
    }
    char *end = NULL;
    unsigned long long n = 0;
    if (what && what->type == REDIS_REPLY_INTEGER && what->integer >= 0 &&
        what->integer <= 4 && fo->type == REDIS_REPLY_STRING && fo->len &&
        fo->len < sizeof b->h_fo)
        n = strtoull(fo->str, &end, 10);
    if (!end || *end || n > TB__SEQ_MAX) {
        tb__rb_fail(b, "the history's failover decision failed: %s",
                    reply->type == REDIS_REPLY_ERROR ? reply->str
                                                     : "unexpected reply");
        return;
    }
    memcpy(b->h_fo, fo->str, fo->len + 1);
    b->h_deciding = 0;
    long long w = what->integer;
    if (w == 1 || w == 4)
        tb__log(TB_LOG_WARN,
                "redis bus: %s: the history starts over in a new epoch "
                "(resuming clients are told recovered false)%s",
                w == 4 ? "the history's meta hash on the master was malformed "
                         "(seq, fork, fence or fo not integers with fork <= "
                         "fence <= seq; written by someone else?)"
                : b->t.nsentinels ? "the new master may lack the last events"
                                  : "Redis lost the last events",
                w == 1 && !b->wait_n && b->t.nsentinels
                    ? "; redis.wait_replicas > 0 would let "
                      "it keep the epoch"
                    : "");
    else if (w >= 2) {
        char epoch[TB_EPOCH_MAX];
        tb__bus_rx_epoch(b->rx, epoch);
        tb__log(TB_LOG_INFO,
                "redis bus: the new master has every event acknowledged "
                "and seen here: the history goes on in epoch %s%s",
                epoch[0] ? epoch : b->ack_epoch,
                w == 3 ? ", after the positions the old master "
                         "alone gave out"
                       : "");
    }
    /* Decided: what waited for it goes out now. */
    event_active(b->wake_ev, EV_TIMEOUT, 0);
}

void tb__rh_failover(rbus *b, const char *rolled_back)
{
    rlink *l = &b->links[LINK_PUB];
    if (!b->h_on || !l->ac)
        return;
    /* Without Sentinel there is no master to record (a rollback only):
     * "" keeps the script from counting a failover. */
    char master[300] = "";
    if (b->t.nsentinels)
        snprintf(master, sizeof master, "%s:%d", b->master_host,
                 b->master_port);
    /* What this instance knows of the old master's history: its last
     * acknowledged publish and the last position delivered here. */
    char epoch[TB_EPOCH_MAX], last_id[TB_EVENT_ID_MAX], ack[24], last[24];
    uint64_t last_seq;
    tb__bus_rx_last(b->rx, epoch, &last_seq, last_id);
    int keep = b->wait_n > 0;
    uint64_t ack_seq = b->ack_seq;
    if (!epoch[0])
        memcpy(epoch, b->ack_epoch, sizeof epoch);
    if (ack_seq && strcmp(b->ack_epoch, epoch) != 0)
        ack_seq = 0; /* of an epoch the history has left since */
    snprintf(ack, sizeof ack, "%" PRIu64, ack_seq);
    snprintf(last, sizeof last, "%" PRIu64, last_seq);
    const char *argv[] = {"EVAL",
                          tb__rh_failover_lua,
                          "2",
                          b->h_stream,
                          b->h_meta,
                          master,
                          b->h_epoch,
                          rolled_back ? rolled_back : "",
                          keep ? "1" : "0",
                          epoch,
                          ack,
                          ack_seq ? b->ack_id : "",
                          last,
                          last_id};
    enum {
        ARGC = sizeof argv / sizeof argv[0]
    };
    size_t lens[ARGC];
    for (int i = 0; i < ARGC; i++)
        lens[i] = strlen(argv[i]);
    if (redisAsyncCommandArgv(l->ac, on_failover, NULL, ARGC, argv, lens) !=
        REDIS_OK) {
        tb__rb_fail(b, "cannot send the history's failover script");
        return;
    }
    /* Nothing is published until the answer (flush_sendq). */
    b->h_deciding = 1;
}

int tb__rh_refused(rbus *b, const char *err)
{
    if (!b->h_on)
        return 0;
    if (strncmp(err, "NOSCRIPT", 8) == 0) {
        /* The scripts were flushed: the next connection loads them again
         * and resends what is in flight (none of it ran). */
        tb__rb_fail(b, "Redis has forgotten the history script (SCRIPT "
                       "FLUSH?)");
        return 1;
    }
    if (strncmp(err, "TBFAILOVER", 10) == 0) {
        /* The master changed since this instance decided (or it never
         * did): the next connection decides, then resends (none of it
         * ran). */
        tb__rb_fail(b, "the history's master changed (a failover this "
                       "instance has not decided on): deciding again");
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- reading */

/* "<seq>-0" (len bytes) into *seq; 0 or -1. */
static int entry_seq(const char *s, size_t len, uint64_t *seq)
{
    tb__pos p;
    char buf[TB_POS_MAX + 8];
    /* As a position of a made-up epoch: the same digits rule. */
    if (len < 3 || len > 18 || s[len - 2] != '-' || s[len - 1] != '0')
        return -1;
    int n = snprintf(buf, sizeof buf, "00000000-%.*s", (int)(len - 2), s);
    if (tb__pos_parse(buf, (size_t)n, &p) != 0 || p.seq == 0)
        return -1;
    *seq = p.seq;
    return 0;
}

/* A decimal seq (len bytes) into *seq, "0" allowed; 0 or -1. */
static int meta_seq(const char *s, size_t len, uint64_t *seq)
{
    if (len == 1 && s[0] == '0') {
        *seq = 0;
        return 0;
    }
    char buf[TB_POS_MAX + 8];
    tb__pos p;
    int n = snprintf(buf, sizeof buf, "00000000-%.*s",
                     (int)(len < 20 ? len : 20), s);
    if (len >= 20 || tb__pos_parse(buf, (size_t)n, &p) != 0)
        return -1;
    *seq = p.seq;
    return 0;
}

/* The <ms> part of a stream entry id "<ms>-<seq>" into *out; 0 or -1. */
static int id_ms(const char *s, size_t len, uint64_t *out)
{
    const char *dash = memchr(s, '-', len);
    return dash ? meta_seq(s, (size_t)(dash - s), out) : -1;
}

static void bad_reply(rbus *b, const char *what, const char *why)
{
    if (tb__ratelog_ok(&b->kv_log, tb__mono_us()))
        tb__log(TB_LOG_WARN, "redis bus: %s: %s", what, why);
}

static void hist_fail(rkv_req *r, int status)
{
    if (r->cb.hist)
        r->cb.hist(status, NULL, r->ud);
}

/* The read script's answer, checked (whoever can write to Redis can put
 * anything there): a malformed entry is skipped (a hole the reader sees
 * as lost events), a malformed head fails the read. */
static void hist_reply(rkv_req *r, const redisReply *reply)
{
    rbus *b = r->b;
    tb__hist_page pg;
    memset(&pg, 0, sizeof pg);
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 4 ||
        (reply->elements - 4) % 3 != 0 ||
        (reply->elements - 4) / 3 > r->list_max) {
        bad_reply(b, r->label, "malformed answer");
        hist_fail(r, TB_EPROTO);
        return;
    }
    redisReply **el = reply->element;
    for (int i = 0; i < 4; i++)
        if (el[i]->type != REDIS_REPLY_STRING) {
            bad_reply(b, r->label, "malformed answer");
            hist_fail(r, TB_EPROTO);
            return;
        }
    if ((el[0]->len && (el[0]->len > 16 || !tb__epoch_valid(el[0]->str))) ||
        meta_seq(el[1]->str, el[1]->len, &pg.top) != 0 ||
        (el[2]->len && entry_seq(el[2]->str, el[2]->len, &pg.first) != 0)) {
        bad_reply(b, r->label, "malformed epoch, seq or entry id");
        hist_fail(r, TB_EPROTO);
        return;
    }
    memcpy(pg.epoch, el[0]->str, el[0]->len);
    size_t n = (reply->elements - 4) / 3;
    if (n && !(pg.evs = calloc(n, sizeof *pg.evs))) {
        hist_fail(r, TB_ENOMEM);
        return;
    }
    uint64_t prev = r->after;
    /* Cut short by the byte cap: not the end (seen as a full page). */
    pg.seen = el[3]->len ? r->list_max : n;
    /* Where the next page starts, whatever becomes of the entries: one
     * skipped here must not end the paging (XRANGE ids are Redis's,
     * "<ms>-<seq>"; ours have seq 0). */
    if (n && (el[4 + 3 * (n - 1)]->type != REDIS_REPLY_STRING ||
              id_ms(el[4 + 3 * (n - 1)]->str, el[4 + 3 * (n - 1)]->len,
                    &pg.seen_to) != 0 ||
              pg.seen_to <= r->after)) {
        free(pg.evs);
        bad_reply(b, r->label, "malformed entry id");
        hist_fail(r, TB_EPROTO);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        redisReply *id = el[4 + 3 * i], *nm = el[5 + 3 * i],
                   *env = el[6 + 3 * i];
        uint64_t seq;
        const char *why = "malformed entry";
        tb_event *ev = NULL;
        if (id->type != REDIS_REPLY_STRING || nm->type != REDIS_REPLY_STRING ||
            env->type != REDIS_REPLY_STRING ||
            entry_seq(id->str, id->len, &seq) != 0 || seq <= prev ||
            tb__hist_entry(b->bus.app, seq, nm->str, nm->len, env->str,
                           env->len, &ev, &why) != 0) {
            char what[160];
            snprintf(what, sizeof what, "%s: entry skipped", r->label);
            bad_reply(b, what, why);
            continue;
        }
        prev = seq;
        pg.evs[pg.n++] = ev;
    }
    if (r->cb.hist)
        r->cb.hist(0, &pg, r->ud);
    tb__hist_page_release(&pg);
}

int tb__rh_read(rbus *b, uint64_t after, size_t count,
                void (*cb)(int status, const tb__hist_page *pg, void *ud),
                void *ud)
{
    if (!b->h_on)
        return TB_ENOTSUP;
    if (after > TB__SEQ_MAX || count > TB__KV_LIST_MAX)
        return TB_EINVAL;
    char from[32], cnt[16], cap[16];
    snprintf(from, sizeof from, "%" PRIu64 "-0", after + 1);
    snprintf(cnt, sizeof cnt, "%zu", count);
    snprintf(cap, sizeof cap, "%d", READ_MAX_BYTES);
    const char *argv[5] = {b->h_stream, b->h_meta, from, cnt, cap};
    size_t lens[5] = {strlen(b->h_stream), strlen(b->h_meta), strlen(from),
                      strlen(cnt), strlen(cap)};
    rkv_req *r = tb__rkv_new(b, &s_read, 2, 5, argv, lens);
    if (!r)
        return TB_ENOMEM;
    snprintf(r->label, sizeof r->label, "history read after %" PRIu64, after);
    r->ok = hist_reply;
    r->fail = hist_fail;
    r->cb.hist = cb;
    r->ud = ud;
    r->list_max = count;
    r->after = after;
    return tb__rkv_submit(r);
}

int tb__rh_history(tb__bus *bus, uint64_t after, size_t count,
                   void (*cb)(int status, const tb__hist_page *pg, void *ud),
                   void *ud)
{
    return tb__rh_read((rbus *)bus, after, count, cb, ud);
}
