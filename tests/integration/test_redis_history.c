/* test_redis_history.c - the Redis bus's history against a real
 * redis-server (adapters/bus_redis_history.c): positions on the wire and
 * in the stream, trimming at history_size, the TTL, reading pages back,
 * plain PUBLISHes without a position, a resend that must not take a
 * second position, SCRIPT FLUSH, and history off (plain PUBLISH, no
 * keys). */
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

/* The failover script: once per master after a failover, whether the
 * instance knew an epoch or not; once per epoch after a rollback. */
static void test_history_failover_script(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    char out[256], e1[TB_EPOCH_MAX];
    assert_int_equal(rh_cli(srv, out, sizeof out, "HSET", "{taskbus}:hmeta",
                            "epoch", "0123abcd", "seq", "5"),
                     0);
#define FAILOVER(master, rolled)                                               \
    CLI_NUM(srv, "EVAL", tb__rh_failover_lua, "2", "{taskbus}:hist",           \
            "{taskbus}:hmeta", master, "aaaaaaaa", rolled)
    assert_int_equal(FAILOVER("127.0.0.1:7001", ""), 1); /* the first */
    assert_int_equal(CLI_NUM(srv, "HGET", "{taskbus}:hmeta", "seq"), 0);
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "HGET", "{taskbus}:hmeta", "epoch"), 0);
    assert_int_equal(strncmp(out, "aaaaaaaa", 8), 0);
    snprintf(e1, sizeof e1, "%.16s", out);
    assert_int_equal(FAILOVER("127.0.0.1:7001", ""), 0); /* the others */
    assert_int_equal(FAILOVER("127.0.0.1:7002", ""), 1); /* the next one */
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "HGET", "{taskbus}:hmeta", "epoch"), 0);
    assert_string_not_equal(out, e1);
    /* A rollback of the epoch now: once. */
    char e2[TB_EPOCH_MAX];
    snprintf(e2, sizeof e2, "%.16s", out);
    assert_int_equal(FAILOVER("127.0.0.1:7002", e2), 1);
    assert_int_equal(FAILOVER("127.0.0.1:7002", e2), 0);
    assert_int_equal(FAILOVER("127.0.0.1:7002", e1), 0);
#undef FAILOVER
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

/* The script run twice with the same publish numbers (a resend after a
 * reply was lost) appends and publishes once; a batch with one old and
 * one new number appends the new one only. */
static void test_history_resend_once(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    const char *env = "{\"id\":\"x-1\",\"name\":\"r.ev\",\"data\":\"d\"}";
    const char *args[] = {"EVAL",
                          tb__rh_pub.body,
                          "3",
                          "{t}:hist",
                          "{t}:hmeta",
                          "{t}:htx:x",
                          "0123abcd",
                          "=100",
                          "60000",
                          "60000",
                          "t:event:r.ev",
                          env,
                          "r.ev",
                          "7",
                          "t:event:r.ev",
                          env,
                          "r.ev",
                          "8",
                          NULL};
    assert_int_equal(cli_num(srv, args), 2);
    assert_int_equal(cli_num(srv, args), 0); /* the resend */
    args[13] = "8";                          /* one old, one new */
    args[17] = "9";
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
        RH_TEST(test_history_failover_script),
        RH_TEST(test_history_plain_publish_and_flush),
        RH_TEST(test_history_resend_once),
        RH_TEST(test_history_off),
        RH_TEST(test_catch_up_after_kill),
    };
    return rh_run_group("redis_history", tests);
}
