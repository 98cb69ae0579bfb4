/* test_redis_history.c - the Redis bus's history against a real
 * redis-server (adapters/bus_redis_history.c): positions on the wire and
 * in the stream, trimming at history_size, the TTL, reading pages back,
 * plain PUBLISHes without a position, a resend that must not take a
 * second position, SCRIPT FLUSH, and history off (plain PUBLISH, no
 * keys). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "redis_harness.h"

#include "bus_redis.h"
#include "history.h"
#include "internal.h"

#define CONNECT_MS 10000
#define ARRIVE_MS 5000

/* A running app on srv with history_size size (0: off) and, unless 0,
 * max_event_size max_event (with a send queue to match), connected. */
static rh_app *history_app_ev(const rh_server *srv, int size, size_t max_event)
{
    char url[256];
    rh_server_url(srv, NULL, NULL, url, sizeof url);
    tb_app_config cfg;
    rh_config(&cfg, url, NULL);
    cfg.core.history_size = size;
    if (max_event) {
        cfg.core.max_event_size = max_event;
        cfg.ws.send_queue_bytes = 2 * max_event;
    }
    rh_app *ra = rh_app_start(&cfg);
    rh_assert_connected(ra->app, CONNECT_MS);
    return ra;
}

static rh_app *history_app(const rh_server *srv, int size)
{
    return history_app_ev(srv, size, 0);
}

/* Dispatches "<first>".."<first + n - 1>" as name, each confirmed. */
static void publish_n(tb_app *app, const char *name, int first, int n)
{
    for (int i = 0; i < n; i++) {
        char d[16];
        int len = snprintf(d, sizeof d, "%d", first + i);
        assert_int_equal(
            tb_dispatch_wait(app, name, d, (size_t)len, ARRIVE_MS, NULL), 0);
    }
}

/* redis-cli's answer to one command, as a number. */
static long long cli_num(const rh_server *srv, const char *const *args)
{
    char out[256];
    if (rh_cliv(srv, out, sizeof out, args) != 0)
        fail_msg("redis-cli %s failed: %s", args[0], out);
    return atoll(out);
}
#define CLI_NUM(srv, ...)                                                      \
    cli_num((srv), (const char *const[]){__VA_ARGS__, NULL})

/* Every event's position, on the wire and in the stream; the stream is
 * trimmed to history_size exactly and expires after history_ttl; a page
 * read back has the events in order with their data and positions. */
static void test_history_stream(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    redisContext *wire = rh_wire_subscribe(srv, "taskbus:event:*");
    assert_non_null(wire);
    rh_app *ra = history_app(srv, 5);
    publish_n(ra->app, "h.ev", 1, 8);

    char epoch[TB_EPOCH_MAX] = "";
    for (int i = 1; i <= 8; i++) {
        char chan[128], *msg = NULL;
        size_t len;
        assert_true(
            rh_wire_next(wire, ARRIVE_MS, chan, sizeof chan, &msg, &len));
        tb__pos p;
        if (tb__pos_from_tail(msg, len, &p) != 0 || p.seq != (uint64_t)i)
            fail_msg("message %d has no position %d at its end: %s", i, i, msg);
        assert_non_null(strstr(msg, "{\"id\":\"")); /* still starts with it */
        assert_int_equal(msg[0], '{');
        if (i == 1)
            snprintf(epoch, sizeof epoch, "%s", p.epoch);
        assert_string_equal(p.epoch, epoch);
        free(msg);
    }
    redisFree(wire);
    assert_true(tb__epoch_valid(epoch));

    assert_int_equal(CLI_NUM(srv, "XLEN", "{taskbus}:hist"), 5);
    assert_int_equal(CLI_NUM(srv, "HGET", "{taskbus}:hmeta", "seq"), 8);
    char out[256];
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "HGET", "{taskbus}:hmeta", "epoch"), 0);
    assert_string_equal(out, epoch);
    long long pttl = CLI_NUM(srv, "PTTL", "{taskbus}:hist");
    assert_true(pttl > 0 && pttl <= 300000);
    assert_int_equal(CLI_NUM(srv, "PTTL", "{taskbus}:hmeta"), -1);

    /* Read back: 4..8 held; since 3 is just inside, 2 just outside. */
    tb_history h;
    assert_int_equal(tb_history_read(ra->app, NULL, 0, NULL, 100, &h), 0);
    assert_int_equal(h.n, 5);
    for (size_t i = 0; i < h.n; i++) {
        char want[TB_POS_MAX];
        tb__pos_format(want, epoch, 4 + i);
        assert_string_equal(tb_event_pos(h.events[i]), want);
        assert_int_equal(atoi(tb_event_data(h.events[i], NULL)), 4 + (int)i);
        assert_string_equal(tb_event_name(h.events[i]), "h.ev");
    }
    assert_int_equal(h.more, 0);
    tb_history_free(&h);
    char since[TB_POS_MAX];
    tb__pos_format(since, epoch, 3);
    assert_int_equal(tb_history_read(ra->app, NULL, 0, since, 2, &h), 0);
    assert_int_equal(h.recovered, 1);
    assert_int_equal(h.n, 2);
    assert_int_equal(h.more, 1);
    tb_history_free(&h);
    tb__pos_format(since, epoch, 2);
    assert_int_equal(tb_history_read(ra->app, NULL, 0, since, 2, &h), 0);
    assert_int_equal(h.recovered, 0);
    assert_int_equal(h.n, 0);
    tb_history_free(&h);
    /* The largest position there can be: beyond the end, not an error. */
    tb__pos_format(since, epoch, TB__SEQ_MAX);
    assert_int_equal(tb_history_read(ra->app, NULL, 0, since, 2, &h), 0);
    assert_int_equal(h.recovered, 0);
    tb_history_free(&h);

    /* The stream expires; the count goes on in the same epoch. */
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "PEXPIRE", "{taskbus}:hist", "1"), 0);
    th_nap_ms(50);
    assert_int_equal(tb_history_read(ra->app, NULL, 0, NULL, 100, &h), 0);
    assert_int_equal(h.n, 0);
    char end[TB_POS_MAX];
    tb__pos_format(end, epoch, 8);
    assert_string_equal(h.next, end); /* to go on from: the end */
    tb_history_free(&h);
    publish_n(ra->app, "h.ev", 9, 1);
    assert_int_equal(tb_history_read(ra->app, NULL, 0, NULL, 100, &h), 0);
    assert_int_equal(h.n, 1);
    assert_int_equal(h.events[0]->seq, 9);
    tb_history_free(&h);
    assert_int_equal(rh_app_stop(ra), 0);
}

/* Entries this instance cannot decode (here: not envelopes; in life,
 * one over its max_event_size) are skipped, but do not end the paging:
 * a page of them is not the history's end. */
static void test_history_undecodable_page(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = history_app(srv, 1000);
    publish_n(ra->app, "u.ev", 1, 1);
    char epoch[TB_EPOCH_MAX], out[256];
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "HGET", "{taskbus}:hmeta", "epoch"), 0);
    snprintf(epoch, sizeof epoch, "%.16s", out);
    /* 2..600 undecodable, then 601 a real one. */
    char env[256];
    snprintf(env, sizeof env,
             "{\"id\":\"z\",\"name\":\"u.ev\",\"data\":\"x\","
             "\"pos\":\"%s-601\"}",
             epoch);
    assert_int_equal(
        CLI_NUM(srv, "EVAL",
                "for i = 2, 600 do redis.call('XADD', KEYS[1], i .. '-0', "
                "'n', 'u.ev', 'e', 'nope') end "
                "redis.call('XADD', KEYS[1], '601-0', 'n', 'u.ev', 'e', "
                "ARGV[1]) "
                "return redis.call('HSET', KEYS[2], 'seq', 601)",
                "2", "{taskbus}:hist", "{taskbus}:hmeta", env),
        0);

    tb__hist_page pg;
    assert_int_equal(tb__history_fetch(ra->app, 1, 10, &pg), 0);
    assert_int_equal(pg.n, 0);
    assert_int_equal(pg.seen, 10);
    assert_int_equal(pg.seen_to, 11);
    tb__hist_page_release(&pg);

    char since[TB_POS_MAX], want[TB_POS_MAX];
    tb__pos_format(since, epoch, 1);
    tb_history h;
    assert_int_equal(tb_history_read(ra->app, NULL, 0, since, 10, &h), 0);
    assert_int_equal(h.recovered, 1);
    assert_int_equal(h.n, 1); /* 601, after more than a page skipped */
    assert_int_equal(h.events[0]->seq, 601);
    tb__pos_format(want, epoch, 601);
    assert_string_equal(h.next, want);
    assert_int_equal(h.more, 0);
    tb_history_free(&h);
    assert_int_equal(rh_app_stop(ra), 0);
}

/* A history read answers at most READ_MAX_BYTES (8 MiB) of entries, at
 * least one: three events of 5 MiB come one per page, and all three are
 * still read. */
static void test_history_read_byte_cap(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = history_app_ev(srv, 100, 6 << 20);
    size_t big = 5 << 20;
    char *d = malloc(big);
    assert_non_null(d);
    memset(d, 'x', big);
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            tb_dispatch_wait(ra->app, "b.ev", d, big, ARRIVE_MS, NULL), 0);
    free(d);
    tb__hist_page pg;
    assert_int_equal(tb__history_fetch(ra->app, 0, 10, &pg), 0);
    assert_int_equal(pg.n, 1);     /* 5 MiB: a second would pass 8 */
    assert_int_equal(pg.seen, 10); /* cut short: not the end */
    assert_int_equal(pg.seen_to, 1);
    tb__hist_page_release(&pg);
    tb_history h;
    assert_int_equal(tb_history_read(ra->app, NULL, 0, NULL, 10, &h), 0);
    assert_int_equal(h.n, 3);
    assert_int_equal(h.more, 0);
    tb_history_free(&h);
    assert_int_equal(rh_app_stop(ra), 0);
}

/* The failover script after a rollback: once per epoch. */
static void test_history_rollback_script(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    char out[256], e1[TB_EPOCH_MAX];
    assert_int_equal(rh_cli(srv, out, sizeof out, "HSET", "{taskbus}:hmeta",
                            "epoch", "0123abcd", "seq", "5"),
                     0);
#define ROLLBACK(rolled)                                                       \
    CLI_NUM(srv, "EVAL", tb__rh_failover_lua, "2", "{taskbus}:hist",           \
            "{taskbus}:hmeta", "127.0.0.1:7001", "aaaaaaaa", rolled, "0", "",  \
            "0", "", "0", "")
    assert_int_equal(ROLLBACK("0123abcd"), 1);
    assert_int_equal(CLI_NUM(srv, "HGET", "{taskbus}:hmeta", "seq"), 0);
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "HGET", "{taskbus}:hmeta", "epoch"), 0);
    assert_int_equal(strncmp(out, "aaaaaaaa", 8), 0);
    snprintf(e1, sizeof e1, "%.16s", out);
    assert_int_equal(ROLLBACK(e1), 1);
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "HGET", "{taskbus}:hmeta", "epoch"), 0);
    assert_string_not_equal(out, e1);
    assert_int_equal(ROLLBACK(e1), 0); /* no longer the one seen */
    assert_int_equal(ROLLBACK("0123abcd"), 0);
#undef ROLLBACK
}

#define FO_EPOCH "0123abcd0123abcd"

/* The new master's history: epoch FO_EPOCH, events 1..n with ids "i<seq>",
 * meta seq n, no master recorded. */
static void fo_reset(const rh_server *srv, int n)
{
    char out[256];
    assert_int_equal(rh_cli(srv, out, sizeof out, "DEL", "{taskbus}:hist",
                            "{taskbus}:hmeta", "{taskbus}:htx:d"),
                     0);
    for (int s = 1; s <= n; s++) {
        char id[16], env[128];
        snprintf(id, sizeof id, "%d-0", s);
        snprintf(env, sizeof env,
                 "{\"id\":\"i%d\",\"name\":\"f.ev\",\"data\":\"d\",\"pos\":"
                 "\"" FO_EPOCH "-%d\"}",
                 s, s);
        assert_int_equal(rh_cli(srv, out, sizeof out, "XADD", "{taskbus}:hist",
                                id, "n", "f.ev", "e", env),
                         0);
    }
    char seq[16];
    snprintf(seq, sizeof seq, "%d", n);
    assert_int_equal(rh_cli(srv, out, sizeof out, "HSET", "{taskbus}:hmeta",
                            "epoch", FO_EPOCH, "seq", seq),
                     0);
}

/* An instance reaching master m: may it keep (k "1"/"0"), the epoch it
 * knows, its last acknowledged seq and id, its last delivered seq and
 * id. */
#define FO(m, k, ep, ack, ackid, last, lastid)                                 \
    CLI_NUM(srv, "EVAL", tb__rh_failover_lua, "2", "{taskbus}:hist",           \
            "{taskbus}:hmeta", m, "aaaaaaaa", "", k, ep, ack, ackid, last,     \
            lastid)
#define M1 "127.0.0.1:7001"
#define M2 "127.0.0.1:7002"

static long long fo_meta(const rh_server *srv, const char *field)
{
    return CLI_NUM(srv, "HGET", "{taskbus}:hmeta", field);
}

static int fo_kept(const rh_server *srv)
{
    char out[256];
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "HGET", "{taskbus}:hmeta", "epoch"), 0);
    return strcmp(out, FO_EPOCH) == 0;
}

/* The failover script's decision (docs/HISTORY.md): the epoch goes on
 * only when the new master has what the instance acknowledged and saw;
 * positions the old master alone gave out are fenced off, never given
 * out again; an instance whose positions clash with the new master's
 * starts a new epoch; without wait_replicas, as before. */
static void test_history_failover_script(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);

    /* Without wait_replicas: a new epoch, once per master. */
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "0", FO_EPOCH, "5", "i5", "5", "i5"), 1);
    assert_false(fo_kept(srv));
    assert_int_equal(fo_meta(srv, "seq"), 0);
    assert_int_equal(CLI_NUM(srv, "XLEN", "{taskbus}:hist"), 0);
    assert_int_equal(FO(M1, "0", FO_EPOCH, "5", "i5", "5", "i5"), 0);

    /* Everything there: kept, nothing fenced. */
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "5", "i5", "5", "i5"), 2);
    assert_true(fo_kept(srv));
    assert_int_equal(fo_meta(srv, "seq"), 5);
    assert_int_equal(fo_meta(srv, "fork"), 5);
    assert_int_equal(fo_meta(srv, "fence"), 5);
    assert_int_equal(CLI_NUM(srv, "XLEN", "{taskbus}:hist"), 5);
    /* The next instance, which saw less: nothing to do. */
    assert_int_equal(FO(M1, "1", FO_EPOCH, "0", "", "4", "i4"), 0);
    /* One that saw 6 and 7 on the old master (not replicated): fenced. */
    assert_int_equal(FO(M1, "1", FO_EPOCH, "0", "", "7", "x7"), 3);
    assert_int_equal(fo_meta(srv, "seq"), 7);
    assert_int_equal(fo_meta(srv, "fence"), 7);
    assert_true(fo_kept(srv));
    /* And one that saw 6 there: inside the fence. */
    assert_int_equal(FO(M1, "1", FO_EPOCH, "0", "", "6", "x6"), 0);
    /* 8 given out here; one that saw the old master's 8 or 9: a clash. */
    assert_int_equal(CLI_NUM(srv, "HINCRBY", "{taskbus}:hmeta", "seq", "1"), 8);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "0", "", "9", "x9"), 1);
    assert_false(fo_kept(srv));

    /* The first one saw 6..8 on the old master: fenced at once. */
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "5", "i5", "8", "x8"), 2);
    assert_int_equal(fo_meta(srv, "seq"), 8);
    assert_int_equal(fo_meta(srv, "fork"), 5);
    assert_int_equal(fo_meta(srv, "fence"), 8);
    /* 9 given out here; one that saw the old master's 9: its id decides. */
    assert_int_equal(CLI_NUM(srv, "HINCRBY", "{taskbus}:hmeta", "seq", "1"), 9);
    char out[256];
    assert_int_equal(rh_cli(srv, out, sizeof out, "XADD", "{taskbus}:hist",
                            "9-0", "n", "f.ev", "e",
                            "{\"id\":\"n9\",\"name\":\"f.ev\",\"data\":\"d\"}"),
                     0);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "0", "", "9", "n9"), 0);
    assert_true(fo_kept(srv));
    assert_int_equal(FO(M1, "1", FO_EPOCH, "0", "", "9", "x9"), 1);
    assert_false(fo_kept(srv));

    /* Our acknowledged publish is not on the new master: a new epoch. */
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "6", "i6", "6", "i6"), 1);
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "5", "other", "5", "i5"), 1);
    /* Our last delivered is there with another id: a new epoch. */
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "3", "i3", "5", "x5"), 1);
    /* A later one whose acknowledged publish is not there: a new epoch. */
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "5", "i5", "5", "i5"), 2);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "6", "x6", "6", "x6"), 1);
    /* Another epoch there: a new one, once per master. */
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "1", "89abcdef89abcdef", "2", "y2", "2", "y2"), 1);
    assert_false(fo_kept(srv));
    /* Knowing no epoch: nothing to protect, but the master is recorded
     * (nothing given out past seq yet), so the next instance checks
     * itself against it; not allowed to keep: a new epoch, as before. */
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "1", "", "0", "", "0", ""), 0);
    assert_true(fo_kept(srv));
    assert_int_equal(fo_meta(srv, "fork"), 5);
    assert_int_equal(fo_meta(srv, "fence"), 5);
    assert_int_equal(fo_meta(srv, "fo"), 1);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "5", "i5", "5", "i5"), 0);
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "0", "", "0", "", "0", ""), 1);
    /* A baseline (no id known) within what the new master has: kept. */
    fo_reset(srv, 5);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "0", "", "4", ""), 2);
    /* Trimmed: an acknowledged publish older than the oldest held. */
    fo_reset(srv, 5);
    assert_int_equal(CLI_NUM(srv, "XTRIM", "{taskbus}:hist", "MAXLEN", "2"), 3);
    assert_int_equal(FO(M1, "1", FO_EPOCH, "2", "i2", "5", "i5"), 2);
    /* The next failover, to M2: decided again there. */
    assert_int_equal(FO(M2, "1", FO_EPOCH, "5", "i5", "5", "i5"), 2);
    assert_int_equal(FO(M2, "1", FO_EPOCH, "5", "i5", "5", "i5"), 0);
}
/* The publish script on hmeta's master with failover count fo, as an
 * instance with publish number tx and event id "<id>" sends it; the
 * number appended, or -1 when refused (TBFAILOVER). */
static long long fo_publish(const rh_server *srv, const char *m, const char *fo,
                            const char *tx, const char *id)
{
    char env[128], out[256];
    snprintf(env, sizeof env, "{\"id\":\"%s\",\"name\":\"f.ev\",\"data\":1}",
             id);
    const char *args[] = {"EVAL",
                          tb__rh_pub.body,
                          "3",
                          "{taskbus}:hist",
                          "{taskbus}:hmeta",
                          "{taskbus}:htx:d",
                          "dddddddd",
                          "=100",
                          "60000",
                          "60000",
                          m,
                          fo,
                          "taskbus:event:f.ev",
                          env,
                          "f.ev",
                          tx,
                          NULL};
    if (rh_cliv(srv, out, sizeof out, args) != 0 || strstr(out, "TBFAILOVER"))
        return strstr(out, "TBFAILOVER") ? -1 : -2;
    return atoll(out);
}

/* The failover count a decision answered (its second element). */
static long long fo_count(const rh_server *srv, const char *const *args,
                          long long *what)
{
    char out[256];
    assert_int_equal(rh_cliv(srv, out, sizeof out, args), 0);
    *what = atoll(out);
    const char *nl = strchr(out, '\n');
    assert_non_null(nl);
    return atoll(nl + 1);
}
#define FO2(what, m, k, ep, ack, ackid, last, lastid)                          \
    fo_count(srv,                                                              \
             (const char *const[]){"EVAL", tb__rh_failover_lua, "2",           \
                                   "{taskbus}:hist", "{taskbus}:hmeta", m,     \
                                   "aaaaaaaa", "", k, ep, ack, ackid, last,    \
                                   lastid, NULL},                              \
             what)

/* The publish script refuses while the meta hash's master or failover
 * count are not the caller's (a failover it has not decided on, or M to
 * R and back to M while it was away); a fresh instance that knows no
 * epoch records the master when it decides, so that a late instance that
 * saw the old master's unreplicated positions starts a new epoch (or
 * fences), never keeps it over the positions the fresh one gave out. */
static void test_history_failover_fresh_instance(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    long long what;

    /* Refused on a master not decided on, and after M1, M2, M1 again. */
    fo_reset(srv, 5);
    assert_int_equal(fo_publish(srv, M1, "0", "1", "d1"), -1);
    assert_int_equal(FO2(&what, M1, "1", "", "0", "", "0", ""), 1);
    assert_int_equal(fo_publish(srv, M1, "1", "1", "d1"), 1);
    assert_int_equal(fo_meta(srv, "seq"), 6);
    assert_int_equal(FO2(&what, M2, "1", "", "0", "", "0", ""), 2);
    assert_int_equal(FO2(&what, M1, "1", "", "0", "", "0", ""), 3);
    assert_int_equal(fo_publish(srv, M1, "1", "2", "d2"), -1); /* M1 again */
    assert_int_equal(fo_publish(srv, M2, "2", "2", "d2"), -1);
    assert_int_equal(fo_publish(srv, M1, "3", "2", "d2"), 1);
    assert_int_equal(fo_meta(srv, "seq"), 7);
    /* Nothing written by a refused publish. */
    assert_int_equal(CLI_NUM(srv, "XLEN", "{taskbus}:hist"), 7);

    /* The reviewer's case: the old master M1 gave out 6..8 (not
     * replicated), delivered to A (acknowledged up to 5); the new master
     * M2 has 1..5. A fresh D decides on M2 (knows no epoch) and gives out
     * 6 and 7 there; late A must start a new epoch. */
    fo_reset(srv, 5);
    CLI_NUM(srv, "HSET", "{taskbus}:hmeta", "master", M1, "fo", "4");
    assert_int_equal(FO2(&what, M2, "1", "", "0", "", "0", ""), 5);
    assert_int_equal(what, 0);
    assert_int_equal(fo_publish(srv, M2, "5", "1", "d6"), 1);
    assert_int_equal(fo_publish(srv, M2, "5", "2", "d7"), 1);
    assert_int_equal(FO2(&what, M2, "1", FO_EPOCH, "5", "i5", "8", "x8"), 5);
    assert_int_equal(what, 1);
    assert_false(fo_kept(srv));
    /* D gave out 6..10, beyond what A saw: a new epoch too. */
    fo_reset(srv, 5);
    CLI_NUM(srv, "HSET", "{taskbus}:hmeta", "master", M1);
    FO2(&what, M2, "1", "", "0", "", "0", "");
    for (int i = 1; i <= 5; i++) {
        char tx[8];
        snprintf(tx, sizeof tx, "%d", 10 + i);
        assert_int_equal(fo_publish(srv, M2, "1", tx, "dx"), 1);
    }
    assert_int_equal(FO2(&what, M2, "1", FO_EPOCH, "5", "i5", "8", "x8"), 1);
    assert_int_equal(what, 1);
    /* D gave out nothing yet: A fences 6..8, and D's next is 9. */
    fo_reset(srv, 5);
    CLI_NUM(srv, "HSET", "{taskbus}:hmeta", "master", M1);
    FO2(&what, M2, "1", "", "0", "", "0", "");
    assert_int_equal(FO2(&what, M2, "1", FO_EPOCH, "5", "i5", "8", "x8"), 1);
    assert_int_equal(what, 3);
    assert_true(fo_kept(srv));
    assert_int_equal(fo_publish(srv, M2, "1", "30", "d9"), 1);
    assert_int_equal(fo_meta(srv, "seq"), 9);
}

/* A meta hash someone else wrote (seq, fork, fence or fo not integers
 * below 2^53 with fork <= fence <= seq): a new epoch, answered 4. Positions
 * past 10^14 stay integers in the script's stream ids. */
static void test_history_failover_forged_meta(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    static const char *const forged[][2] = {
        {"seq", "abc"}, {"seq", "1e+14"}, {"seq", "9007199254740992"},
        {"seq", "-1"},  {"fork", "6"},    {"fence", "9"},
        {"fo", "x"},    {"seq", "5.5"},
    };
    for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
        fo_reset(srv, 5);
        CLI_NUM(srv, "HSET", "{taskbus}:hmeta", "master", M1, "fork", "5",
                "fence", "5");
        CLI_NUM(srv, "HSET", "{taskbus}:hmeta", forged[i][0], forged[i][1]);
        assert_int_equal(FO(M1, "1", FO_EPOCH, "5", "i5", "5", "i5"), 4);
        assert_false(fo_kept(srv));
        assert_int_equal(fo_meta(srv, "seq"), 0);
        assert_int_equal(CLI_NUM(srv, "XLEN", "{taskbus}:hist"), 0);
    }
    /* 10^14: kept, its entry found by id. */
    char out[256];
    CLI_NUM(srv, "DEL", "{taskbus}:hist", "{taskbus}:hmeta");
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "XADD", "{taskbus}:hist",
               "100000000000000-0", "n", "f.ev", "e",
               "{\"id\":\"big\",\"name\":\"f.ev\",\"data\":\"d\"}"),
        0);
    CLI_NUM(srv, "HSET", "{taskbus}:hmeta", "epoch", FO_EPOCH, "seq",
            "100000000000000", "master", M1);
    assert_int_equal(FO(M2, "1", FO_EPOCH, "100000000000000", "big",
                        "100000000000000", "big"),
                     2);
    assert_true(fo_kept(srv));
    assert_int_equal(fo_meta(srv, "fork"), 100000000000000LL);
}
#undef FO2
#undef FO
#undef M1
#undef M2

/* redis.wait_replicas: without a replica each publish is answered
 * TB_ENOTREPLICATED after wait_timeout_ms (it is in the history all the
 * same, and counted); with one, acknowledged only once the replica has
 * it. */
static void test_history_wait_replicas(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    char url[256];
    rh_server_url(srv, NULL, NULL, url, sizeof url);
    tb_app_config cfg;
    rh_config(&cfg, url, NULL);
    cfg.core.history_size = 100;
    cfg.redis.wait_replicas = 1;
    /* The replica's acknowledgements below must come within it on a
     * loaded machine too (200 ms failed there); 900 is near the most the
     * default instance_ttl_ms allows. */
    cfg.redis.wait_timeout_ms = 900;
    rh_app *ra = rh_app_start(&cfg);
    rh_assert_connected(ra->app, CONNECT_MS);
    char id[TB_EVENT_ID_MAX];
    assert_int_equal(tb_dispatch_wait(ra->app, "w.ev", "1", 1, ARRIVE_MS, id),
                     TB_ENOTREPLICATED);
    assert_int_equal(CLI_NUM(srv, "XLEN", "{taskbus}:hist"), 1);
    assert_int_equal(atomic_load(&ra->app->pub_unreplicated), 1);
    /* Not acknowledged, and not pending either: a later WAIT must not
     * make it the acknowledged publish a failover checks for (the bus
     * thread wrote these before answering the publisher). */
    rbus *rb = (rbus *)ra->app->bus;
    assert_int_equal(rb->ack_seq, 0);
    assert_int_equal(rb->pend_seq, 0);

    char conf[128];
    snprintf(conf, sizeof conf, "replicaof 127.0.0.1 %d\n", srv->port);
    rh_server *rep = rh_server_start(conf, NULL, NULL);
    /* Once the replica has synced, publishes are confirmed. */
    int rc = TB_ENOTREPLICATED;
    for (int i = 0; i < 100 && rc == TB_ENOTREPLICATED; i++)
        rc = tb_dispatch_wait(ra->app, "w.ev", "2", 1, ARRIVE_MS, id);
    assert_int_equal(rc, 0);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(
            tb_dispatch_wait(ra->app, "w.ev", "3", 1, ARRIVE_MS, id), 0);
        /* Acknowledged: the replica has it already. */
        long long m = CLI_NUM(srv, "XLEN", "{taskbus}:hist");
        assert_int_equal(CLI_NUM(rep, "XLEN", "{taskbus}:hist"), m);
    }
    uint64_t before = atomic_load(&ra->app->pub_unreplicated);
    rh_server_stop(rep); /* the replica gone: not_replicated again */
    assert_int_equal(tb_dispatch_wait(ra->app, "w.ev", "4", 1, ARRIVE_MS, id),
                     TB_ENOTREPLICATED);
    assert_int_equal(atomic_load(&ra->app->pub_unreplicated), before + 1);
    assert_int_equal(rh_app_stop(ra), 0);
}

/* A dispatch from another thread (tb_dispatch_wait blocks). */
typedef struct {
    tb_app *app;
    int rc;
    char id[TB_EVENT_ID_MAX];
} kw_dispatch;

static void *kw_dispatch_run(void *arg)
{
    kw_dispatch *d = arg;
    d->rc = tb_dispatch_wait(d->app, "k.ev", "1", 1, 3 * ARRIVE_MS, d->id);
    return NULL;
}

/* DEBUG SLEEP on a replica, from another thread (it blocks). */
typedef struct {
    rh_server *rep;
    const char *secs;
} kw_sleep;

static void *kw_sleep_run(void *arg)
{
    kw_sleep *k = arg;
    char out[64];
    rh_cli(k->rep, out, sizeof out, "DEBUG", "SLEEP", k->secs);
    return NULL;
}

/* 1 when rep does not answer a PING within 100 ms: its DEBUG SLEEP has
 * begun (the kernel still accepts the connection and takes the bytes). */
static int replica_asleep(const rh_server *rep)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)rep->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int asleep = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        write(fd, "PING\r\n", 6) == 6) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        asleep = poll(&p, 1, 100) == 0;
    }
    close(fd);
    return asleep;
}

/* Cuts ra's link to srv while its WAIT for one k.ev is out (the replica
 * rep asleep for secs, so it has not confirmed); returns the dispatch's
 * answer, its id in id. */
static int kw_cut(rh_server *srv, rh_server *rep, rh_app *ra, const char *secs,
                  char *id)
{
    pthread_t sleeper, pub;
    kw_sleep k = {rep, secs};
    assert_int_equal(pthread_create(&sleeper, NULL, kw_sleep_run, &k), 0);
    /* The dispatch must start after the sleep has: redis-cli is a process
     * of its own, and on a loaded machine a fixed nap was not enough (the
     * replica still awake confirmed the first WAIT, or woke too late for
     * the second). */
    int asleep = 0;
    for (int i = 0; i < 500 && !asleep; i++)
        if (!(asleep = replica_asleep(rep)))
            th_nap_ms(5);
    assert_true(asleep);
    kw_dispatch d = {.app = ra->app, .rc = 1};
    assert_int_equal(pthread_create(&pub, NULL, kw_dispatch_run, &d), 0);
    static char out[65536];
    char wid[32] = "";
    for (int i = 0; i < 100 && !wid[0]; i++) {
        assert_int_equal(rh_cli(srv, out, sizeof out, "CLIENT", "LIST"), 0);
        for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"))
            if (strstr(line, "cmd=wait") && strstr(line, "flags=b"))
                sscanf(line, "id=%31s", wid);
        if (!wid[0])
            th_nap_ms(5);
    }
    assert_true(wid[0]);
    assert_int_equal(rh_cli(srv, out, sizeof out, "CLIENT", "KILL", "ID", wid),
                     0);
    pthread_join(pub, NULL);
    pthread_join(sleeper, NULL);
    memcpy(id, d.id, sizeof d.id);
    return d.rc;
}

/* The link is cut while a WAIT is out (the replica asleep, so it has not
 * confirmed): the publish is resent on the next connection and the script
 * skips it (no second position, one delivery). The WAIT there still
 * covers the first write (the skip writes too, so the new connection's
 * WAIT waits for the replica to reach it): the replica asleep past
 * wait_timeout_ms, 504 not_replicated; awake within it, 202. Either
 * answered once. */
static void test_history_cut_during_wait(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    char conf[128];
    snprintf(conf, sizeof conf,
             "replicaof 127.0.0.1 %d\nenable-debug-command yes\n", srv->port);
    rh_server *rep = rh_server_start(conf, NULL, NULL);
    char url[256];
    rh_server_url(srv, NULL, NULL, url, sizeof url);
    tb_app_config cfg;
    rh_config(&cfg, url, NULL);
    cfg.core.history_size = 100;
    cfg.redis.wait_replicas = 1;
    cfg.redis.wait_timeout_ms = 900;
    rh_app *ra = rh_app_start(&cfg);
    rh_assert_connected(ra->app, CONNECT_MS);
    rh_rec *rec = rh_rec_new("k.ev");
    assert_true(rh_spawn(ra->app, 0, 1, rec, 5000));
    char id[TB_EVENT_ID_MAX], id2[TB_EVENT_ID_MAX];
    int rc = TB_ENOTREPLICATED;
    for (int i = 0; i < 100 && rc == TB_ENOTREPLICATED; i++)
        rc = tb_dispatch_wait(ra->app, "k.warm", "0", 1, ARRIVE_MS, id);
    assert_int_equal(rc, 0); /* the replica has synced */
    long long before = CLI_NUM(srv, "XLEN", "{taskbus}:hist");

    assert_int_equal(kw_cut(srv, rep, ra, "3", id), TB_ENOTREPLICATED);
    assert_int_equal(kw_cut(srv, rep, ra, "0.6", id2), 0);
    /* One position each, one delivery each; the replica has them. */
    assert_int_equal(CLI_NUM(srv, "XLEN", "{taskbus}:hist"), before + 2);
    assert_int_equal(CLI_NUM(rep, "XLEN", "{taskbus}:hist"), before + 2);
    assert_true(rh_rec_wait(rec, 2, ARRIVE_MS));
    th_nap_ms(200);
    assert_int_equal(rh_rec_count(rec), 2);
    assert_int_equal(rh_rec_count_id(rec, id), 1);
    assert_int_equal(rh_rec_count_id(rec, id2), 1);
    assert_int_equal(rh_app_stop(ra), 0);
}

/* A plain PUBLISH is delivered without a position and is not in the
 * history; a SCRIPT FLUSH costs a reconnect, not an event. */
static void test_history_plain_publish_and_flush(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = history_app(srv, 100);
    rh_rec *rec = rh_rec_new("p.ev");
    assert_true(rh_spawn(ra->app, 0, 1, rec, 5000));
    publish_n(ra->app, "p.ev", 1, 1);
    assert_true(rh_publish(srv, "taskbus:event:p.ev", "raw") >= 1);
    assert_true(rh_rec_wait(rec, 2, ARRIVE_MS));
    assert_int_equal(CLI_NUM(srv, "XLEN", "{taskbus}:hist"), 1);

    char out[256];
    assert_int_equal(rh_cli(srv, out, sizeof out, "SCRIPT", "FLUSH"), 0);
    publish_n(ra->app, "p.ev", 2, 3);
    assert_true(rh_rec_wait(rec, 5, ARRIVE_MS));
    th_nap_ms(100);
    assert_int_equal(rh_rec_count(rec), 5);
    assert_int_equal(rh_rec_dups(rec), 0);
    assert_int_equal(CLI_NUM(srv, "XLEN", "{taskbus}:hist"), 4);
    assert_int_equal(CLI_NUM(srv, "HGET", "{taskbus}:hmeta", "seq"), 4);
    assert_int_equal(rh_app_stop(ra), 0);
}

/* Redis back from an older snapshot, without Sentinel: a new epoch, and
 * nothing else of the meta hash changes. The master and failover count
 * there belong to the Sentinel instances that may share the namespace;
 * recording ":0" and counting a failover would make them decide again. */
static void test_history_rollback_without_sentinel(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = history_app(srv, 100);
    rh_rec *rec = rh_rec_new("rb.ev");
    assert_true(rh_spawn(ra->app, 0, 1, rec, 5000));
    publish_n(ra->app, "rb.ev", 1, 3);
    /* What a Sentinel instance on the same namespace decided. */
    CLI_NUM(srv, "HSET", "{taskbus}:hmeta", "master", "127.0.0.1:7001", "fo",
            "3");
    char out[256], old[TB_EPOCH_MAX];
    assert_int_equal(rh_cli(srv, out, sizeof out, "SAVE"), 0);
    publish_n(ra->app, "rb.ev", 4, 3);
    assert_true(rh_rec_wait(rec, 6, ARRIVE_MS));
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "HGET", "{taskbus}:hmeta", "epoch"), 0);
    snprintf(old, sizeof old, "%.16s", out);

    /* --save "": the stop writes nothing, the restart loads the SAVE
     * (seq 3; the app may have rolled it back before we could look). */
    rh_server_stop(srv);
    rh_server_restart(srv);
    int64_t until = th_mono_ms() + 15000;
    for (;;) {
        assert_int_equal(
            rh_cli(srv, out, sizeof out, "HGET", "{taskbus}:hmeta", "epoch"),
            0);
        if (out[0] && strcmp(out, old) != 0)
            break;
        if (th_mono_ms() > until)
            fail_msg("still in epoch %s after the rollback", old);
        th_nap_ms(50);
    }
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "HGET", "{taskbus}:hmeta", "master"), 0);
    assert_string_equal(out, "127.0.0.1:7001");
    assert_int_equal(CLI_NUM(srv, "HGET", "{taskbus}:hmeta", "fo"), 3);
    /* And the history goes on in the new epoch. */
    publish_n(ra->app, "rb.ev", 7, 1);
    assert_int_equal(CLI_NUM(srv, "HGET", "{taskbus}:hmeta", "seq"), 1);
    assert_int_equal(rh_app_stop(ra), 0);
}

/* The script run twice with the same publish numbers (a resend after a
 * reply was lost) appends and publishes once; a batch with one old and
 * one new number appends the new one only. */
static void test_history_resend_once(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    const char *env = "{\"id\":\"x-1\",\"name\":\"r.ev\",\"data\":\"d\"}";
    const char *args[] = {"EVAL",      tb__rh_pub.body,
                          "3",         "{t}:hist",
                          "{t}:hmeta", "{t}:htx:x",
                          "0123abcd",  "=100",
                          "60000",     "60000",
                          "", /* no Sentinel: no master check */
                          "0",         "t:event:r.ev",
                          env,         "r.ev",
                          "7",         "t:event:r.ev",
                          env,         "r.ev",
                          "8",         NULL};
    assert_int_equal(cli_num(srv, args), 2);
    assert_int_equal(cli_num(srv, args), 0); /* the resend */
    args[15] = "8";                          /* one old, one new */
    args[19] = "9";
    assert_int_equal(cli_num(srv, args), 1);
    assert_int_equal(CLI_NUM(srv, "XLEN", "{t}:hist"), 3);
    assert_int_equal(CLI_NUM(srv, "HGET", "{t}:hmeta", "seq"), 3);
    char out[1024];
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "XRANGE", "{t}:hist", "-", "+"), 0);
    assert_non_null(strstr(out, "1-0"));
    assert_non_null(strstr(out, "3-0"));
    /* The epoch: our half, then 8 hex digits of Redis's clock. */
    const char *p = strstr(out, ",\"pos\":\"0123abcd"), *p2;
    assert_non_null(p);
    while ((p2 = strstr(p + 1, ",\"pos\":\"0123abcd")) != NULL)
        p = p2; /* the last entry's */
    tb__pos pos;
    const char *q = strchr(p + 8, '"');
    assert_non_null(q);
    assert_int_equal(tb__pos_parse(p + 8, (size_t)(q - p - 8), &pos), 0);
    assert_int_equal(strlen(pos.epoch), 16);
    assert_int_equal(pos.seq, 3);
}

/* History off: plain PUBLISH (no script, no keys) and no positions. */
static void test_history_off(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    redisContext *wire = rh_wire_subscribe(srv, "taskbus:event:*");
    assert_non_null(wire);
    rh_app *ra = history_app(srv, 0);
    publish_n(ra->app, "o.ev", 1, 1);
    char chan[128], *msg = NULL;
    size_t len;
    assert_true(rh_wire_next(wire, ARRIVE_MS, chan, sizeof chan, &msg, &len));
    assert_null(strstr(msg, "\"pos\""));
    free(msg);
    redisFree(wire);
    assert_int_equal(CLI_NUM(srv, "EXISTS", "{taskbus}:hist"), 0);
    assert_int_equal(CLI_NUM(srv, "EXISTS", "{taskbus}:hmeta"), 0);
    tb_history h;
    assert_int_equal(tb_history_read(ra->app, NULL, 0, NULL, 1, &h),
                     TB_ENOTSUP);
    assert_int_equal(rh_app_stop(ra), 0);
}

/* The id (CLIENT LIST) of the only client subscribed with PSUBSCRIBE. */
static void psubscriber_id(const rh_server *srv, char *id, size_t idsz)
{
    static char out[65536];
    assert_int_equal(rh_cli(srv, out, sizeof out, "CLIENT", "LIST"), 0);
    id[0] = '\0';
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strstr(line, "cmd=psubscribe") && !strstr(line, "psub=2"))
            continue;
        if (id[0])
            fail_msg("more than one subscriber: %s", out);
        if (sscanf(line, "id=%31s", id) != 1)
            fail_msg("CLIENT LIST line without id: %s", line);
        (void)idsz;
    }
    if (!id[0])
        fail_msg("no subscriber in CLIENT LIST");
}

/* Fails unless r holds exactly the numbers 0..n-1 in order. */
static void assert_sequence(rh_rec *r, const char *label, int n)
{
    if (!rh_rec_wait(r, n, 15000) || (int)rh_rec_count(r) != n) {
        rh_rec_dump(r, label);
        fail_msg("%s: %zu events, want %d", label, rh_rec_count(r), n);
    }
    for (int i = 0; i < n; i++) {
        rh_got g;
        if (!rh_rec_get(r, (size_t)i, &g) || atoi(g.data) != i) {
            rh_rec_dump(r, label);
            fail_msg("%s: event %d is \"%s\"", label, i, g.data);
        }
    }
}

/* An instance whose subscription is killed (CLIENT KILL) in the middle of
 * a stream another instance publishes at about 1000 events/s reads what
 * it missed from the history: its subscribers on every worker get every
 * event once, in order, and a waiter on each worker gets the one
 * published while it was away. */
static void test_catch_up_after_kill(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *a = history_app(srv, 10000);
    char subid[32];
    psubscriber_id(srv, subid, sizeof subid);
    rh_rec *subs[2];
    for (int w = 0; w < 2; w++) {
        subs[w] = rh_rec_new("k.ev");
        subs[w]->capacity = 100000;
        assert_true(rh_spawn(a->app, w, 1, subs[w], 5000));
    }
    rh_rec *waiters[2];
    for (int w = 0; w < 2; w++) {
        waiters[w] = rh_rec_new("k.mark");
        waiters[w]->once = 1;
        assert_true(rh_spawn(a->app, w, 0, waiters[w], 5000));
    }
    rh_app *b = history_app(srv, 10000);

    const int total = 2000;
    uint64_t before = 0;
    tb_bus_info info;
    assert_int_equal(tb_bus_status(a->app, &info), 0);
    before = info.reconnects;
    for (int i = 0; i < total; i++) {
        if (i == total / 4) {
            char out[64];
            assert_int_equal(
                rh_cli(srv, out, sizeof out, "CLIENT", "KILL", "ID", subid), 0);
            assert_string_equal(out, "1");
            assert_int_equal(tb_dispatch(b->app, "k.mark", "m", 1, NULL), 0);
        }
        char d[16];
        int len = snprintf(d, sizeof d, "%d", i);
        int rc = tb_dispatch(b->app, "k.ev", d, (size_t)len, NULL);
        if (rc != 0)
            fail_msg("dispatch %d: %s", i, tb_err_name(rc));
        usleep(1000);
    }
    assert_sequence(subs[0], "worker 0", total);
    assert_sequence(subs[1], "worker 1", total);
    for (int w = 0; w < 2; w++)
        assert_true(rh_rec_wait(waiters[w], 1, 5000));
    assert_int_equal(tb_bus_status(a->app, &info), 0);
    assert_true(info.reconnects > before); /* it did lose its link */
    th_nap_ms(100);
    assert_int_equal(rh_rec_count(subs[0]), total);
    assert_int_equal(rh_app_stop(b), 0);
    assert_int_equal(rh_app_stop(a), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RH_TEST(test_history_stream),
        RH_TEST(test_history_undecodable_page),
        RH_TEST(test_history_read_byte_cap),
        RH_TEST(test_history_rollback_script),
        RH_TEST(test_history_failover_script),
        RH_TEST(test_history_failover_fresh_instance),
        RH_TEST(test_history_failover_forged_meta),
        RH_TEST(test_history_wait_replicas),
        RH_TEST(test_history_cut_during_wait),
        RH_TEST(test_history_rollback_without_sentinel),
        RH_TEST(test_history_plain_publish_and_flush),
        RH_TEST(test_history_resend_once),
        RH_TEST(test_history_off),
        RH_TEST(test_catch_up_after_kill),
    };
    return rh_run_group("redis_history", tests);
}
