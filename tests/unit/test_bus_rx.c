/* test_bus_rx.c - unit tests for service/bus_rx.c's catching up: the
 * baseline, duplicates by position, a gap read from the history with the
 * live messages parked meanwhile, a position beyond the history's end, an
 * epoch change, and the read after a reconnection. The bus is a fake: it
 * records the reads asked for, and the test answers them. */
#include "harness.h"

#include "history.h"
#include "internal.h"

#define E "0123abcd"
#define F "89abcdef"

typedef struct reads {
    int fail;      /* what fetch returns */
    int rollbacks; /* rollback calls */
    int n;
    uint64_t after[16];
    size_t count[16];
} reads;

static int fake_fetch(void *ud, uint64_t after, size_t count)
{
    reads *r = ud;
    if (r->n < 16) {
        r->after[r->n] = after;
        r->count[r->n] = count;
    }
    r->n++;
    return r->fail;
}

static void fake_rollback(void *ud)
{
    ((reads *)ud)->rollbacks++;
}

static void no_schedule(void *ud)
{
    (void)ud;
}

/* One live message of epoch ep, seq seq. */
static void msg(tb__bus_rx *rx, const char *ep, int seq)
{
    char m[256];
    int n = snprintf(m, sizeof m,
                     "{\"id\":\"x-%d\",\"name\":\"a.b\",\"data\":\"d\","
                     "\"pos\":\"%s-%d\"}",
                     seq, ep, seq);
    const char *ch = "taskbus:event:a.b";
    assert_int_equal(tb__bus_rx_message(rx, ch, strlen(ch), m, (size_t)n), 0);
}

static tb_bus_info stats(tb__bus_rx *rx)
{
    tb_bus_info i;
    memset(&i, 0, sizeof i);
    tb__bus_rx_status(rx, &i);
    return i;
}

/* Answers the last read with events first..last of ep (none when
 * first > last), top top. */
static void answer(tb__bus_rx *rx, const char *ep, int first, int last,
                   uint64_t top, tb_app *app)
{
    tb__hist_page pg;
    memset(&pg, 0, sizeof pg);
    snprintf(pg.epoch, sizeof pg.epoch, "%s", ep);
    pg.top = top;
    pg.first = first <= last ? (uint64_t)first : 0;
    tb_event *evs[16];
    for (int s = first; s <= last; s++) {
        tb_event *ev = tb__event_new(app, "a.b", "d", 1, NULL, NULL, 0);
        tb__event_set_pos(ev, ep, (uint64_t)s);
        evs[pg.n++] = ev;
    }
    pg.evs = evs;
    pg.seen = pg.n;
    pg.seen_to = pg.n ? (uint64_t)last : 0;
    tb__bus_rx_fetched(rx, 0, &pg);
    for (size_t i = 0; i < pg.n; i++)
        tb_event_unref(evs[i]);
}

static void test_catch_up(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 1000);
    tb__bus_rx *rx =
        tb__bus_rx_new(app, "test bus", "taskbus:event:", no_schedule, NULL);
    reads r = {0};
    tb__bus_rx_track(rx, fake_fetch, &r);

    /* First connection: only where the history stands. */
    tb__bus_rx_connected(rx);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.count[0], 0);
    answer(rx, E, 1, 0, 5, app);
    /* Published before the read, still on its way: not a duplicate. */
    msg(rx, E, 3);
    assert_int_equal(stats(rx).duplicates, 0);
    msg(rx, E, 6);
    msg(rx, E, 6); /* the same position again: the id decides (nobody
                      listens here: not even decoded) */
    assert_int_equal(stats(rx).duplicates, 0);
    assert_int_equal(r.n, 1);

    /* 7 and 8 missed: read after 6; 10 arrives meanwhile and waits. */
    msg(rx, E, 9);
    assert_int_equal(r.n, 2);
    assert_int_equal(r.after[1], 6);
    assert_true(r.count[1] > 0);
    msg(rx, E, 10);
    assert_int_equal(r.n, 2); /* parked, no second read */
    answer(rx, E, 7, 10, 10, app);
    /* The parked 9 and 10 came with the page: duplicates now. */
    assert_int_equal(stats(rx).duplicates, 2);
    msg(rx, E, 11);
    assert_int_equal(r.n, 2);

    /* A position the history never gave out: dropped as malformed. */
    msg(rx, E, 100);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.after[2], 11);
    answer(rx, E, 12, 12, 12, app);
    assert_int_equal(stats(rx).malformed, 1);
    msg(rx, E, 13); /* and the real next one is fine */
    assert_int_equal(r.n, 3);
    assert_int_equal(stats(rx).duplicates, 2);

    /* Live after a read was sent, beyond its end: real (published after
     * the read ran), it goes through. */
    msg(rx, E, 15);
    assert_int_equal(r.n, 4);
    msg(rx, E, 16);
    answer(rx, E, 14, 15, 15, app);
    assert_int_equal(r.n, 4); /* 16 follows 15: no read */
    assert_int_equal(stats(rx).malformed, 1);

    /* Redis lost the history: a message of another epoch is parked and
     * the history asked; it says the new epoch, which is read from its
     * start. */
    msg(rx, F, 1);
    msg(rx, F, 2);
    assert_int_equal(r.n, 5);
    assert_int_equal(r.after[4], 16);
    answer(rx, F, 1, 0, 2, app);
    assert_int_equal(r.n, 6);
    assert_int_equal(r.after[5], 0);
    answer(rx, F, 1, 2, 2, app);
    assert_int_equal(stats(rx).duplicates, 5); /* the parked two */
    assert_int_equal(stats(rx).malformed, 1);

    /* A reconnection reads what came after the last one delivered; a read
     * of a lost connection is ignored. */
    tb__bus_rx_connected(rx);
    assert_int_equal(r.n, 7);
    assert_int_equal(r.after[6], 2);
    tb__bus_rx_disconnected(rx);
    answer(rx, F, 3, 3, 3, app); /* too late: ignored */
    msg(rx, F, 4);               /* a gap again: 3 is read */
    assert_int_equal(r.n, 8);
    assert_int_equal(r.after[7], 2);
    answer(rx, F, 3, 4, 4, app);
    msg(rx, F, 5);
    assert_int_equal(r.n, 8);
    assert_int_equal(stats(rx).duplicates, 6);

    /* Another epoch again, first seen at its third event: the history
     * says so, and the first two are read from it. */
    msg(rx, E, 3);
    assert_int_equal(r.n, 9);
    answer(rx, E, 1, 0, 3, app);
    assert_int_equal(r.n, 10);
    assert_int_equal(r.after[9], 0);
    answer(rx, E, 1, 3, 3, app);
    msg(rx, E, 4);
    assert_int_equal(r.n, 10);

    /* Messages without a position pass untouched. */
    const char *ch = "taskbus:event:a.b";
    assert_int_equal(tb__bus_rx_message(rx, ch, strlen(ch), "raw", 3), 0);
    assert_int_equal(r.n, 10);

    tb__bus_rx_flush(rx);
    tb__bus_rx_free(rx);
    tb_app_free(app);
}

static tb__bus_rx *rx_new(tb_app *app, reads *r)
{
    tb__bus_rx *rx =
        tb__bus_rx_new(app, "test bus", "taskbus:event:", no_schedule, NULL);
    tb__bus_rx_track(rx, fake_fetch, r);
    tb__bus_rx_on_rollback(rx, fake_rollback);
    tb__bus_rx_connected(rx);
    assert_int_equal(r->n, 1);
    return rx;
}

/* A forged message of another epoch costs one read, then is dropped: it
 * does not make the receiver read the history again and again. */
static void test_forged_epoch(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 1000);
    reads r = {0};
    tb__bus_rx *rx = rx_new(app, &r);
    answer(rx, E, 1, 0, 5, app);
    msg(rx, E, 6);
    for (int round = 0; round < 3; round++) {
        msg(rx, F, 5); /* PUBLISH ... "pos":"89abcdef-5" from outside */
        assert_int_equal(r.n, 2 + round);
        assert_int_equal(r.after[1 + round], 6);
        answer(rx, E, 1, 0, 6, app);      /* the history: still E, at 6 */
        assert_int_equal(r.n, 2 + round); /* no read of the whole history */
        assert_int_equal(stats(rx).malformed, (uint64_t)round + 1);
    }
    msg(rx, E, 7); /* and E goes on */
    assert_int_equal(r.n, 4);
    assert_int_equal(stats(rx).malformed, 3);
    tb__bus_rx_flush(rx);
    tb__bus_rx_free(rx);
    tb_app_free(app);
}

/* Messages parked for a gap, then the link drops and Redis comes back in
 * a new epoch: the new epoch is read once, the parked ones of the old
 * epoch are dropped, not tracked again. */
static void test_parked_across_epoch_change(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 1000);
    reads r = {0};
    tb__bus_rx *rx = rx_new(app, &r);
    answer(rx, E, 1, 0, 5, app);
    msg(rx, E, 8); /* 6 and 7 missed: read after 5 */
    msg(rx, E, 9);
    assert_int_equal(r.n, 2);
    tb__bus_rx_disconnected(rx);
    tb__bus_rx_connected(rx); /* read after 5 again */
    assert_int_equal(r.n, 3);
    assert_int_equal(r.after[2], 5);
    answer(rx, F, 1, 0, 2, app); /* Redis lost it: F, at 2 */
    assert_int_equal(r.n, 4);
    assert_int_equal(r.after[3], 0);
    answer(rx, F, 1, 2, 2, app);
    assert_int_equal(r.n, 4); /* E-8 and E-9 do not start it over */
    assert_int_equal(stats(rx).malformed, 2);
    msg(rx, F, 3);
    assert_int_equal(r.n, 4);
    tb__bus_rx_flush(rx);
    tb__bus_rx_free(rx);
    tb_app_free(app);
}

/* A full page whose last entries could not be decoded here (logged and
 * skipped by the bus) is not the history's end: the next page is read
 * after them. */
static void test_page_of_skipped_entries(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 1000);
    reads r = {0};
    tb__bus_rx *rx = rx_new(app, &r);
    answer(rx, E, 1, 0, 1, app);
    msg(rx, E, 1);
    msg(rx, E, 515); /* a gap: read after 1 */
    assert_int_equal(r.n, 2);
    size_t asked = r.count[1];
    assert_int_equal(asked, 512);
    tb__hist_page pg;
    memset(&pg, 0, sizeof pg);
    snprintf(pg.epoch, sizeof pg.epoch, "%s", E);
    pg.top = 515;
    pg.first = 1;
    tb_event *ev = tb__event_new(app, "a.b", "d", 1, NULL, NULL, 0);
    tb__event_set_pos(ev, E, 2);
    pg.evs = &ev;
    pg.n = 1;        /* 2 decoded, */
    pg.seen = asked; /* the rest of the page skipped */
    pg.seen_to = 1 + asked;
    tb__bus_rx_fetched(rx, 0, &pg);
    tb_event_unref(ev);
    assert_int_equal(r.n, 3); /* not the end: the next page */
    assert_int_equal(r.after[2], 1 + asked);
    answer(rx, E, 514, 515, 515, app);
    assert_int_equal(r.n, 3);
    assert_int_equal(stats(rx).duplicates, 1); /* the parked 515 */
    tb__bus_rx_flush(rx);
    tb__bus_rx_free(rx);
    tb_app_free(app);
}

/* A catch-up read that fails (or cannot be sent) declares nothing lost:
 * the parked messages and the position stay, live ones keep being
 * parked, and the read is tried again later. */
static void test_failed_read_retried(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 1000);
    reads r = {0};
    tb__bus_rx *rx = rx_new(app, &r);
    answer(rx, E, 1, 0, 5, app);
    msg(rx, E, 8); /* 6 and 7 missed */
    assert_int_equal(r.n, 2);
    tb__bus_rx_fetched(rx, TB_ENOTCONN, NULL);
    msg(rx, E, 9); /* still parked: no read, nothing taken over the hole */
    assert_int_equal(r.n, 2);
    tb__bus_rx_tick(rx, tb__mono_us()); /* not yet */
    assert_int_equal(r.n, 2);
    r.fail = TB_ENOMEM; /* and the retry cannot be sent */
    tb__bus_rx_tick(rx, tb__mono_us() + 2000000);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.after[2], 5);
    r.fail = 0;
    tb__bus_rx_tick(rx, tb__mono_us() + 2000000);
    assert_int_equal(r.n, 4);
    assert_int_equal(r.after[3], 5);
    answer(rx, E, 6, 9, 9, app);
    assert_int_equal(atomic_load(&app->hist_lost), 0);
    assert_int_equal(stats(rx).duplicates, 2); /* the parked 8 and 9 */
    msg(rx, E, 10);
    assert_int_equal(r.n, 4);
    tb__bus_rx_flush(rx);
    tb__bus_rx_free(rx);
    tb_app_free(app);
}

/* Redis came back from an older snapshot: same epoch, its end before
 * what was delivered here. The bus is told to start a new epoch; what
 * follows the end goes through. */
static void test_rollback(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 1000);
    reads r = {0};
    tb__bus_rx *rx = rx_new(app, &r);
    answer(rx, E, 1, 0, 5, app);
    msg(rx, E, 6);
    msg(rx, E, 7);
    msg(rx, E, 8);
    tb__bus_rx_disconnected(rx);
    tb__bus_rx_connected(rx);
    assert_int_equal(r.n, 2);
    assert_int_equal(r.after[1], 8);
    answer(rx, E, 1, 0, 8, app); /* up to date: nothing */
    assert_int_equal(r.rollbacks, 0);
    tb__bus_rx_disconnected(rx);
    tb__bus_rx_connected(rx);
    answer(rx, E, 1, 0, 6, app); /* restarted from a snapshot at 6 */
    assert_int_equal(r.rollbacks, 1);
    msg(rx, E, 7); /* the rolled back Redis's 7: not a gap, delivered */
    assert_int_equal(r.n, 3);
    assert_int_equal(stats(rx).duplicates, 0);
    tb__bus_rx_flush(rx);
    tb__bus_rx_free(rx);
    tb_app_free(app);
}

/* What a failover checks against the new master: the last position
 * delivered and the id of its event, whether it came live or from a
 * catch-up read; unknown ("") for a baseline or a hole counted lost. */
static void test_last_position(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 1000);
    reads r = {0};
    tb__bus_rx *rx = rx_new(app, &r);
    char ep[TB_EPOCH_MAX], id[TB_EVENT_ID_MAX];
    uint64_t seq = 99;
    tb__bus_rx_last(rx, ep, &seq, id);
    assert_string_equal(ep, "");
    assert_int_equal(seq, 0);
    assert_string_equal(id, "");
    answer(rx, E, 1, 0, 5, app); /* the baseline: no event seen */
    tb__bus_rx_last(rx, ep, &seq, id);
    assert_string_equal(ep, E);
    assert_int_equal(seq, 5);
    assert_string_equal(id, "");
    msg(rx, E, 6);
    tb__bus_rx_last(rx, ep, &seq, id);
    assert_int_equal(seq, 6);
    assert_string_equal(id, "x-6");
    msg(rx, E, 5); /* before the last: the last stays */
    tb__bus_rx_last(rx, ep, &seq, id);
    assert_int_equal(seq, 6);
    assert_string_equal(id, "x-6");
    /* A gap read from the history: the page's last event. */
    msg(rx, E, 9);
    tb__hist_page pg;
    memset(&pg, 0, sizeof pg);
    snprintf(pg.epoch, sizeof pg.epoch, "%s", E);
    tb_event *evs[3];
    for (int i = 0; i < 3; i++) {
        evs[i] = tb__event_new(app, "a.b", "d", 1, NULL, NULL, 0);
        tb__event_set_pos(evs[i], E, (uint64_t)(7 + i));
    }
    pg.evs = evs;
    pg.n = pg.seen = 3;
    pg.first = 1;
    pg.top = pg.seen_to = 9;
    tb__bus_rx_fetched(rx, 0, &pg);
    tb__bus_rx_last(rx, ep, &seq, id);
    assert_int_equal(seq, 9); /* the parked 9: a duplicate now */
    assert_string_equal(id, tb_event_id(evs[2]));
    /* A message whose envelope does not start with its id: not known. */
    const char *ch = "taskbus:event:a.b";
    const char *odd = "{\"name\":\"a.b\",\"id\":\"y\",\"pos\":\"" E "-10\"}";
    assert_int_equal(tb__bus_rx_message(rx, ch, strlen(ch), odd, strlen(odd)),
                     0);
    tb__bus_rx_last(rx, ep, &seq, id);
    assert_int_equal(seq, 10);
    assert_string_equal(id, "");
    /* Events gone from the history: its end, of no known event. */
    msg(rx, E, 14);
    answer(rx, E, 1, 0, 13, app);
    tb__bus_rx_last(rx, ep, &seq, id);
    assert_int_equal(seq, 13);
    assert_string_equal(id, "");
    for (int i = 0; i < 3; i++)
        tb_event_unref(evs[i]);
    tb__bus_rx_flush(rx);
    tb__bus_rx_free(rx);
    tb_app_free(app);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catch_up),
        cmocka_unit_test(test_forged_epoch),
        cmocka_unit_test(test_parked_across_epoch_change),
        cmocka_unit_test(test_page_of_skipped_entries),
        cmocka_unit_test(test_failed_read_retried),
        cmocka_unit_test(test_rollback),
        cmocka_unit_test(test_last_position),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
