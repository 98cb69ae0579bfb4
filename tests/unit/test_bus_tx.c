/* test_bus_tx.c - unit tests for service/bus_tx.c's put_many: a batch is
 * queued whole or not at all, its refusals (no room now, never room,
 * closed) queue nothing and run no callback, and a batch that fits is
 * queued in order. */
#include "harness.h"

#include "internal.h"

static tb_app *app; /* made in setup, never run */
static int wakes;

static void count_wake(void *ud)
{
    (void)ud;
    wakes++;
}

static int called;

static void count_cb(int status, void *ud)
{
    (void)status;
    (void)ud;
    called++;
}

static int setup(void **state)
{
    (void)state;
    int err;
    app = tb_app_new(NULL, &err);
    return app ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    tb_app_free(app);
    return 0;
}

/* n events "e.x" with data "<k>" into evs. */
static void make(tb_event **evs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char d[24];
        snprintf(d, sizeof d, "%zu", i);
        evs[i] = tb__event_new(app, "e.x", d, strlen(d), NULL, NULL, 0);
        assert_non_null(evs[i]);
    }
}

static void unref(tb_event **evs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tb_event_unref(evs[i]);
}

static size_t queued(tb__bus_tx *tx)
{
    tb_bus_info info;
    memset(&info, 0, sizeof info);
    tb__bus_tx_status(tx, &info);
    return (size_t)info.queued;
}

/* A queue of 10 with 5 pending: 6 more do not fit now (TB_ENOSPC), 11
 * never will (TB_EMSGSIZE); either way nothing is queued and no callback
 * runs. 5 fit exactly, in order after the first 5. */
static void test_put_many_all_or_none(void **state)
{
    (void)state;
    wakes = called = 0;
    tb__bus_tx *tx = tb__bus_tx_new("p:", 10, 1000, count_wake, NULL);
    assert_non_null(tx);
    tb_event *evs[11];
    make(evs, 11);
    assert_rc(tb__bus_tx_put_many(tx, evs, 5, count_cb, NULL), 0);
    assert_int_equal(queued(tx), 5);
    assert_int_equal(wakes, 1);
    assert_rc(tb__bus_tx_put_many(tx, evs + 5, 6, count_cb, NULL), TB_ENOSPC);
    assert_rc(tb__bus_tx_put_many(tx, evs, 11, count_cb, NULL), TB_EMSGSIZE);
    assert_int_equal(queued(tx), 5);
    assert_int_equal(called, 0);
    assert_rc(tb__bus_tx_put_many(tx, evs + 5, 5, count_cb, NULL), 0);
    assert_int_equal(queued(tx), 10);
    assert_rc(tb__bus_tx_put(tx, evs[10], count_cb, NULL), TB_ENOSPC);

    tb__bus_reqlist l = {0};
    tb__bus_tx_take(tx, &l);
    assert_int_equal(l.n, 10);
    size_t k = 0;
    uint64_t seq = 0;
    for (tb__bus_req *q = l.head; q; q = q->next, k++) {
        assert_string_equal(q->id, evs[k]->id);
        assert_string_equal(q->channel, "p:e.x");
        assert_true(q->txseq > seq);
        seq = q->txseq;
    }
    assert_int_equal(tb__bus_tx_give_up(tx, &l, 0), 10);
    assert_int_equal(called, 10);
    assert_int_equal(queued(tx), 0);
    unref(evs, 11);
    tb__bus_tx_free(tx);
}

/* Closed: TB_ESHUTDOWN, nothing queued, no callback, no wake-up. */
static void test_put_many_closed(void **state)
{
    (void)state;
    wakes = called = 0;
    tb__bus_tx *tx = tb__bus_tx_new("p:", 10, 1000, count_wake, NULL);
    assert_non_null(tx);
    tb_event *evs[3];
    make(evs, 3);
    tb__bus_tx_close(tx);
    assert_rc(tb__bus_tx_put_many(tx, evs, 3, count_cb, NULL), TB_ESHUTDOWN);
    assert_rc(tb__bus_tx_put(tx, evs[0], count_cb, NULL), TB_ESHUTDOWN);
    assert_int_equal(queued(tx), 0);
    tb__bus_reqlist l = {0};
    tb__bus_tx_take(tx, &l);
    assert_int_equal(l.n, 0);
    assert_int_equal(called, 0);
    assert_int_equal(wakes, 0);
    unref(evs, 3);
    tb__bus_tx_free(tx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_many_all_or_none),
        cmocka_unit_test(test_put_many_closed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
