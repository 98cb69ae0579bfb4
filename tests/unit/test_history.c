/* test_history.c - unit tests for service/history.c: parsing positions, the
 * in-process history ring (size, TTL, epoch), resuming a subscription on
 * the memory bus (replay, the seam, overflow during replay, recovered 0)
 * and tb_history_read's pages. */
#include "harness.h"

#include <stdatomic.h>

#include <unistd.h>

#include "history.h"
#include "internal.h"

/* ----------------------------------------------------------- positions */

static void test_pos_parse(void **state)
{
    (void)state;
    static const char *good[] = {"0123abcd-1", "0123456789abcdef-42",
                                 "deadbeef-0", "deadbeef-9007199254740991"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        tb__pos p;
        assert_int_equal(tb__pos_parse(good[i], strlen(good[i]), &p), 0);
        char back[TB_POS_MAX];
        tb__pos_format(back, p.epoch, p.seq);
        assert_string_equal(back, good[i]);
    }
    static const char *bad[] = {
        "",                           /* empty */
        "deadbee-1",                  /* epoch of 7 */
        "0123456789abcdef0-1",        /* epoch of 17 */
        "DEADBEEF-1",                 /* upper case */
        "deadbeef",                   /* no seq */
        "deadbeef-",                  /* empty seq */
        "deadbeef-01",                /* leading zero */
        "deadbeef--1",                /* sign */
        "deadbeef-+1",                /* sign */
        "deadbeef-1 ",                /* trailing blank */
        "deadbeef-9007199254740992",  /* 2^53 */
        "deadbeef-99999999999999999", /* 17 digits */
        "deadbeef-1x",                /* junk */
        "dead beef-1",                /* blank */
        "-1",                         /* no epoch */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tb__pos p;
        assert_int_equal(tb__pos_parse(bad[i], strlen(bad[i]), &p), TB_EINVAL);
        assert_int_equal(p.seq, 0);
        assert_string_equal(p.epoch, "");
    }
    /* Bounded by len, not by a NUL. */
    tb__pos p;
    assert_int_equal(tb__pos_parse("deadbeef-12", 10, &p), 0);
    assert_int_equal(p.seq, 1);
    assert_int_equal(tb__pos_parse("deadbeef-12", 8, &p), TB_EINVAL);
    assert_int_equal(tb__pos_parse(NULL, 0, &p), TB_EINVAL);
    /* Off an envelope's tail, as the publish script leaves it. */
    static const struct {
        const char *msg;
        uint64_t seq; /* 0: none there */
    } tails[] = {
        {"{\"id\":\"a\",\"data\":1,\"pos\":\"0123abcd-7\"}", 7},
        {"{\"i\":1,\"pos\":\"0123456789abcdef-9007199254740991\"}",
         TB__SEQ_MAX},
        {"{\"id\":\"a\",\"pos\":\"0123abcd-0\"}", 0},  /* seq 0 */
        {"{\"id\":\"a\",\"pos\":\"0123abcd-7\"} ", 0}, /* not last */
        {"{\"id\":\"a\",\"xpos\":\"0123abcd-7\"}", 0},
        {"{\"id\":\"a\",\"data\":\"0123abcd-7\"}", 0},
        {"\"pos\":\"0123abcd-7\"}", 0}, /* no comma: not a member */
        {"plain text", 0},
        {"\"}", 0},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
        tb__pos t;
        int rc = tb__pos_from_tail(tails[i].msg, strlen(tails[i].msg), &t);
        if (tails[i].seq) {
            assert_int_equal(rc, 0);
            assert_int_equal(t.seq, tails[i].seq);
        } else {
            assert_int_equal(rc, TB_EINVAL);
        }
    }
    char e[TB_EPOCH_MAX];
    tb__epoch_new(e);
    assert_true(tb__epoch_valid(e));
    assert_int_equal(strlen(e), 16);
}

/* ---------------------------------------------------------------- ring */

static void no_deliver(void *ud, tb_event *ev)
{
    (void)ev;
    (*(int *)ud)++;
}

static void test_ring(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 1000);
    tb__hist_ring r;
    assert_int_equal(tb__hist_ring_init(&r, 3, 1 << 20, 200), 0);
    tb__hist_page pg;
    assert_int_equal(tb__hist_ring_read(&r, 0, 10, &pg), 0);
    assert_string_equal(pg.epoch, ""); /* nothing published yet */
    assert_int_equal(pg.top, 0);
    int delivered = 0;
    for (int i = 0; i < 5; i++) {
        tb_event *ev = tb__event_new(app, "a.b", "x", 1, NULL, NULL, 0);
        tb__hist_ring_publish(&r, ev, no_deliver, &delivered);
        assert_int_equal(ev->seq, (uint64_t)i + 1);
        tb_event_unref(ev);
    }
    assert_int_equal(delivered, 5);
    /* history_size 3: the oldest two are gone. */
    assert_int_equal(tb__hist_ring_read(&r, 0, 10, &pg), 0);
    assert_true(tb__epoch_valid(pg.epoch));
    assert_int_equal(pg.top, 5);
    assert_int_equal(pg.first, 3);
    assert_int_equal(pg.n, 3);
    assert_int_equal(pg.evs[0]->seq, 3);
    char want[TB_POS_MAX];
    tb__pos_format(want, pg.epoch, 5);
    assert_string_equal(tb_event_pos(pg.evs[2]), want);
    char epoch[TB_EPOCH_MAX];
    memcpy(epoch, pg.epoch, sizeof epoch);
    tb__hist_page_release(&pg);
    assert_int_equal(tb__hist_ring_read(&r, 4, 10, &pg), 0);
    assert_int_equal(pg.n, 1);
    assert_int_equal(pg.evs[0]->seq, 5);
    tb__hist_page_release(&pg);
    assert_int_equal(tb__hist_ring_read(&r, 3, 1, &pg), 0); /* count */
    assert_int_equal(pg.n, 1);
    assert_int_equal(pg.evs[0]->seq, 4);
    tb__hist_page_release(&pg);
    assert_int_equal(tb__hist_ring_read(&r, 5, 10, &pg), 0);
    assert_int_equal(pg.n, 0);
    tb__hist_page_release(&pg);
    /* history_ttl after the last publish: forgotten, epoch and seq kept. */
    usleep(300 * 1000);
    assert_int_equal(tb__hist_ring_read(&r, 0, 10, &pg), 0);
    assert_int_equal(pg.n, 0);
    assert_int_equal(pg.first, 0);
    assert_int_equal(pg.top, 5);
    assert_string_equal(pg.epoch, epoch);
    tb__hist_page_release(&pg);
    tb_event *ev = tb__event_new(app, "a.b", "x", 1, NULL, NULL, 0);
    tb__hist_ring_publish(&r, ev, no_deliver, &delivered);
    assert_int_equal(ev->seq, 6);
    tb_event_unref(ev);
    tb__hist_ring_destroy(&r);

    /* history_max_bytes: each event counts its struct too (about 200
     * bytes), not only "a.b" and its 2 bytes of data: room for exactly 2;
     * one alone over it is still kept. */
    ev = tb__event_new(app, "a.b", "xy", 2, NULL, NULL, 0);
    size_t each = tb__hist_ev_bytes(ev);
    tb_event_unref(ev);
    assert_true(each > 100);
    assert_int_equal(tb__hist_ring_init(&r, 100, 2 * each + each / 2, 60000),
                     0);
    for (int i = 0; i < 4; i++) {
        ev = tb__event_new(app, "a.b", "xy", 2, NULL, NULL, 0);
        tb__hist_ring_publish(&r, ev, no_deliver, &delivered);
        tb_event_unref(ev);
    }
    assert_int_equal(tb__hist_ring_read(&r, 0, 10, &pg), 0);
    assert_int_equal(pg.n, 2); /* exactly at the bound */
    assert_int_equal(pg.first, 3);
    tb__hist_page_release(&pg);
    char large[600];
    memset(large, 'z', sizeof large);
    ev = tb__event_new(app, "a.b", large, sizeof large, NULL, NULL, 0);
    tb__hist_ring_publish(&r, ev, no_deliver, &delivered);
    tb_event_unref(ev);
    assert_int_equal(tb__hist_ring_read(&r, 0, 10, &pg), 0);
    assert_int_equal(pg.n, 1);
    assert_int_equal(pg.first, 5);
    tb__hist_page_release(&pg);
    tb__hist_ring_destroy(&r);
    tb_app_free(app);
}

/* ------------------------------------------------------------- resume */

static tb_app *history_app(int size)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    cfg.core.history_size = size;
    return th_app_new_cfg(&cfg);
}

static tb_app *history_app_100(void)
{
    return history_app(100);
}

/* Dispatches n events named name with data "<first + i>". */
static void dispatch_n(tb_app *app, const char *name, int first, int n)
{
    for (int i = 0; i < n; i++) {
        char d[16];
        int len = snprintf(d, sizeof d, "%d", first + i);
        TH_CHECK_RC(tb_dispatch(app, name, d, (size_t)len, NULL), 0);
    }
}

/* The position of the next event of sub (waiting up to 2 s) into pos, and
 * its data as a number; -1 when none. */
static int next_num(tb_task *self, tb_sub *sub, char *pos)
{
    tb_event *ev;
    int rc = tb_sub_next(self, sub, 2000, &ev);
    if (rc != 0) {
        TH_CHECKF(0, "tb_sub_next: %d", rc);
        return -1;
    }
    if (pos)
        snprintf(pos, TB_POS_MAX, "%s", tb_event_pos(ev));
    int n = atoi(tb_event_data(ev, NULL));
    tb_event_unref(ev);
    return n;
}

/* Resumes s from before the first event of the history's epoch. */
static void resume_from_start(tb_task *self, tb_sub *s)
{
    tb_history h;
    TH_CHECK_RC(tb_history_read(self->app, NULL, 0, NULL, 1, &h), 0);
    char since[TB_POS_MAX];
    tb__pos_format(since, h.epoch, 0);
    tb_history_free(&h);
    TH_CHECK_RC(tb_sub_resume(self, s, since), 0);
}

TH_TASK_TEST(test_resume_replays_then_live, history_app_100(), 0, 10000)
{
    int err;
    tb_sub *all = tb_sub_open(self, "a.*", 0, &err);
    TH_CHECK(all != NULL);
    dispatch_n(app, "a.x", 1, 3);
    dispatch_n(app, "b.y", 4, 1); /* not a.*: never replayed */
    dispatch_n(app, "a.x", 5, 2);
    char p2[TB_POS_MAX], p[TB_POS_MAX];
    TH_CHECK_EQ(next_num(self, all, NULL), 1);
    TH_CHECK_EQ(next_num(self, all, p2), 2);
    for (int want = 3; want <= 6; want += want == 3 ? 2 : 1)
        TH_CHECK_EQ(next_num(self, all, p), want);

    /* Another subscription resumes after event 2: 3, 5 and 6 (4 does not
     * match), then live. */
    tb_sub *s = tb_sub_open(self, "a.*", 2, &err);
    TH_CHECK_RC(tb_sub_resume(self, s, p2), 0);
    TH_CHECK_RC(tb_sub_resume(self, s, p2), TB_EINVAL); /* once */
    tb_sub_recovery info;
    TH_CHECK_RC(tb_sub_recovery_info(s, &info), TB_EAGAIN);
    TH_CHECK_EQ(next_num(self, s, NULL), 3);
    TH_CHECK_EQ(next_num(self, s, NULL), 5);
    TH_CHECK_EQ(next_num(self, s, NULL), 6);
    tb_event *ev = (tb_event *)1;
    TH_CHECK_RC(tb_sub_next(self, s, 0, &ev), TB_SUB_LIVE);
    TH_CHECK(ev == NULL);
    TH_CHECK_RC(tb_sub_recovery_info(s, &info), 0);
    TH_CHECK_EQ(info.recovered, 1);
    TH_CHECK_EQ(info.replayed, 3);
    TH_CHECK_STR(info.pos, p); /* the history's end: event 6 */
    TH_CHECK(strncmp(p, info.epoch, strlen(info.epoch)) == 0);
    dispatch_n(app, "a.x", 7, 1);
    TH_CHECK_EQ(next_num(self, s, NULL), 7);
    TH_CHECK_RC(tb_sub_next(self, s, 50, &ev), TB_ETIMEDOUT);
    tb_sub_close(s);
    tb_sub_close(all);
}

/* A replay longer than the subscription's capacity, live events
 * overflowing it meanwhile: every event once, in order. */
TH_TASK_TEST(test_resume_overflow, history_app(1000), 0, 20000)
{
    int err;
    tb_sub *s = tb_sub_open(self, "n", 4, &err);
    TH_CHECK(s != NULL);
    dispatch_n(app, "n", 1, 10);
    TH_CHECK_RC(tb_sleep(self, 20), 0); /* delivered: 7..10 queued */
    tb_sub_recovery info;
    /* From before the epoch's first event: the whole history. */
    resume_from_start(self, s);
    TH_CHECK_EQ(next_num(self, s, NULL), 1);
    /* While it replays, 20 more arrive live and overflow the queue. */
    dispatch_n(app, "n", 11, 20);
    TH_CHECK_RC(tb_sleep(self, 50), 0);
    TH_CHECK(tb_sub_dropped(s) > 0);
    for (int want = 2; want <= 30; want++)
        if (next_num(self, s, NULL) != want) {
            TH_CHECKF(0, "expected %d", want);
            break;
        }
    tb_event *ev;
    TH_CHECK_RC(tb_sub_next(self, s, 0, &ev), TB_SUB_LIVE);
    TH_CHECK_RC(tb_sub_recovery_info(s, &info), 0);
    TH_CHECK_EQ(info.replayed, 30);
    dispatch_n(app, "n", 31, 1);
    TH_CHECK_EQ(next_num(self, s, NULL), 31);
    TH_CHECK_RC(tb_sub_next(self, s, 50, &ev), TB_ETIMEDOUT);
    tb_sub_close(s);
}

static tb_app *history_app_5(void)
{
    return history_app(5);
}

/* Resumes a fresh sub from since; returns TB_SUB_LIVE's info. */
static tb_sub_recovery resume_live(tb_task *self, const char *since)
{
    tb_sub_recovery info = {0};
    int err;
    tb_sub *s = tb_sub_open(self, "n", 0, &err);
    TH_CHECK_RC(tb_sub_resume(self, s, since), 0);
    tb_event *ev;
    TH_CHECK_RC(tb_sub_next(self, s, 0, &ev), TB_SUB_LIVE);
    TH_CHECK_RC(tb_sub_recovery_info(s, &info), 0);
    tb_sub_close(s);
    return info;
}

TH_TASK_TEST(test_resume_not_recovered, history_app_5(), 0, 10000)
{
    dispatch_n(app, "n", 1, 10); /* history_size 5: 6..10 held */
    tb_history h;
    TH_CHECK_RC(tb_history_read(app, NULL, 0, NULL, 10, &h), 0);
    TH_CHECK_EQ(h.n, 5);
    TH_CHECK_EQ(h.events[0]->seq, 6);
    char epoch[TB_EPOCH_MAX], p[TB_POS_MAX], top[TB_POS_MAX];
    snprintf(epoch, sizeof epoch, "%s", h.epoch);
    tb__pos_format(top, epoch, 10);
    TH_CHECK_STR(h.next, top);
    tb_history_free(&h);

    /* Just inside the window (6 is held): recovered. */
    tb__pos_format(p, epoch, 5);
    tb_sub_recovery info = resume_live(self, NULL);
    TH_CHECK_EQ(info.recovered, 1); /* no since: from now */
    TH_CHECK_STR(info.pos, top);
    int err;
    tb_sub *s = tb_sub_open(self, "n", 0, &err);
    TH_CHECK_RC(tb_sub_resume(self, s, p), 0);
    TH_CHECK_EQ(next_num(self, s, NULL), 6);
    tb_sub_close(s);
    /* Just outside (5 is gone): not recovered, told the end. */
    tb__pos_format(p, epoch, 4);
    info = resume_live(self, p);
    TH_CHECK_EQ(info.recovered, 0);
    TH_CHECK_EQ(info.replayed, 0);
    TH_CHECK_STR(info.pos, top);
    TH_CHECK_STR(info.epoch, epoch);
    /* Another epoch, or beyond the end. */
    info = resume_live(self, "00000000-3");
    TH_CHECK_EQ(info.recovered, 0);
    TH_CHECK_STR(info.pos, top);
    tb__pos_format(p, epoch, 11);
    info = resume_live(self, p);
    TH_CHECK_EQ(info.recovered, 0);
    /* At the end: recovered, nothing to replay. */
    info = resume_live(self, top);
    TH_CHECK_EQ(info.recovered, 1);
    TH_CHECK_EQ(info.replayed, 0);
    /* Malformed: refused before anything. */
    s = tb_sub_open(self, "n", 0, &err);
    TH_CHECK_RC(tb_sub_resume(self, s, "nope"), TB_EINVAL);
    TH_CHECK_RC(tb_sub_resume(self, s, "deadbeef-01"), TB_EINVAL);
    tb_sub_close(s);
}

TH_TASK_TEST(test_history_off, history_app(0), 0, 10000)
{
    int err;
    tb_sub *s = tb_sub_open(self, "n", 0, &err);
    TH_CHECK_RC(tb_sub_resume(self, s, "deadbeef-1"), TB_ENOTSUP);
    tb_sub_close(s);
    tb_history h;
    TH_CHECK_RC(tb_history_read(app, NULL, 0, NULL, 1, &h), TB_ENOTSUP);
    /* No positions, and none in the envelope. */
    s = tb_sub_open(self, "n", 0, &err);
    dispatch_n(app, "n", 1, 1);
    tb_event *ev;
    TH_CHECK_RC(tb_sub_next(self, s, 2000, &ev), 0);
    TH_CHECK_STR(tb_event_pos(ev), "");
    TH_CHECK(strstr(tb_event_json(ev, NULL), "\"pos\"") == NULL);
    tb_event_unref(ev);
    tb_sub_close(s);
}

TH_APP_TEST(test_history_read_pages, history_app_100(), 10000)
{
    dispatch_n(app, "a.x", 1, 5);
    dispatch_n(app, "b.x", 6, 5);
    dispatch_n(app, "a.y", 11, 5);
    const char *pats[] = {"a.*"};
    tb_history h;
    /* limit: 1..history_page_max (1000). */
    TH_CHECK_RC(tb_history_read(app, pats, 1, NULL, 0, &h), TB_EINVAL);
    TH_CHECK_RC(tb_history_read(app, pats, 1, NULL, 1001, &h), TB_EINVAL);
    TH_CHECK_RC(tb_history_read(app, pats, 1, "x-1", 1, &h), TB_EINVAL);
    const char *badpat[] = {"a..b"};
    TH_CHECK_RC(tb_history_read(app, badpat, 1, NULL, 1, &h), TB_EINVAL);
    TH_CHECK_RC(tb_history_read(app, pats, 1, NULL, 1000, &h), 0);
    TH_CHECK_EQ(h.n, 10);
    TH_CHECK_EQ(h.more, 0);
    TH_CHECK_EQ(h.recovered, 1);
    tb_history_free(&h);
    /* Pages of 4 matching events: 1-4, then 5 and 11-13 (6-10 looked at
     * and skipped), then 14-15. */
    char since[TB_POS_MAX] = "";
    int want[] = {1, 2, 3, 4, 5, 11, 12, 13, 14, 15}, k = 0, pages = 0;
    do {
        TH_CHECK_RC(tb_history_read(app, pats, 1, since, 4, &h), 0);
        for (size_t i = 0; i < h.n && k < 10; i++)
            TH_CHECK_EQ(atoi(tb_event_data(h.events[i], NULL)), want[k++]);
        snprintf(since, sizeof since, "%s", h.next);
        pages++;
        int more = h.more;
        tb_history_free(&h);
        if (!more)
            break;
    } while (pages < 10);
    TH_CHECK_EQ(k, 10);
    TH_CHECK_EQ(pages, 3);
}

/* history_scan_max bounds what one read looks at when nothing matches:
 * at the limit it goes on from next; one over, it reaches the end. */
static tb_app *history_app_scan3(void)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    cfg.core.history_size = 100;
    cfg.core.history_scan_max = 3;
    return th_app_new_cfg(&cfg);
}

TH_TASK_TEST(test_history_scan_max, history_app_scan3(), 0, 10000)
{
    dispatch_n(app, "n", 1, 5);
    const char *none[] = {"zz"};
    tb_history h;
    TH_CHECK_RC(tb_history_read(app, none, 1, NULL, 1, &h), 0);
    char epoch[TB_EPOCH_MAX], want[TB_POS_MAX], since[TB_POS_MAX];
    snprintf(epoch, sizeof epoch, "%s", h.epoch);
    TH_CHECK_EQ(h.n, 0);
    TH_CHECK_EQ(h.more, 1);
    tb__pos_format(want, epoch, 3); /* three looked at */
    TH_CHECK_STR(h.next, want);
    snprintf(since, sizeof since, "%s", h.next);
    tb_history_free(&h);
    TH_CHECK_RC(tb_history_read(app, none, 1, since, 1, &h), 0);
    TH_CHECK_EQ(h.n, 0);
    TH_CHECK_EQ(h.more, 0); /* 4 and 5: the end */
    tb__pos_format(want, epoch, 5);
    TH_CHECK_STR(h.next, want);
    tb_history_free(&h);
    tb__pos_format(since, epoch, 2); /* exactly 3 left: the end too */
    TH_CHECK_RC(tb_history_read(app, none, 1, since, 1, &h), 0);
    TH_CHECK_EQ(h.more, 0);
    TH_CHECK_STR(h.next, want);
    tb_history_free(&h);
}

/* A bus whose history is lost between two pages of a replay once losing
 * is set: the real in-process one, but its pages then say epoch 89abcdef,
 * end 7, no events. Its ops are swapped in before the app runs (the bus's
 * ops are read by other threads without a lock once it runs). */
static const tb__bus_ops *real_ops;
static tb__bus_ops lost_ops;
static atomic_int losing;
static void (*real_cb)(int, const tb__hist_page *, void *);

static void lost_cb(int status, const tb__hist_page *pg, void *ud)
{
    tb__hist_page p = *pg;
    snprintf(p.epoch, sizeof p.epoch, "89abcdef");
    p.top = 7;
    p.first = 0;
    p.n = p.seen = 0;
    p.seen_to = 0;
    real_cb(status, &p, ud);
}

static int lost_history(tb__bus *bus, uint64_t after, size_t count,
                        void (*cb)(int, const tb__hist_page *, void *),
                        void *ud)
{
    if (!atomic_load(&losing))
        return real_ops->history(bus, after, count, cb, ud);
    real_cb = cb; /* history_sync: cb runs before this returns */
    return real_ops->history(bus, after, count, lost_cb, ud);
}

static tb_app *losing_history_app(void)
{
    tb_app *app = history_app(1000);
    real_ops = app->bus->ops;
    lost_ops = *real_ops;
    lost_ops.history = lost_history;
    app->bus->ops = &lost_ops;
    return app;
}

/* The history lost during a replay: recovered 0, with the new epoch and
 * its end, not the old epoch. */
TH_TASK_TEST(test_resume_epoch_lost, losing_history_app(), 0, 10000)
{
    dispatch_n(app, "n", 1, 600); /* more than a page */
    int err;
    tb_sub *s = tb_sub_open(self, "n", 0, &err);
    resume_from_start(self, s);
    TH_CHECK_EQ(next_num(self, s, NULL), 1);
    atomic_store(&losing, 1);
    tb_event *ev;
    int rc, n = 1;
    while ((rc = tb_sub_next(self, s, 2000, &ev)) == 0) {
        tb_event_unref(ev);
        n++;
    }
    atomic_store(&losing, 0);
    TH_CHECK_RC(rc, TB_SUB_LIVE);
    TH_CHECK_EQ(n, 512); /* the first page */
    tb_sub_recovery info;
    TH_CHECK_RC(tb_sub_recovery_info(s, &info), 0);
    TH_CHECK_EQ(info.recovered, 0);
    TH_CHECK_STR(info.epoch, "89abcdef");
    TH_CHECK_STR(info.pos, "89abcdef-7");
    tb_sub_close(s);
}

/* A pattern added during a replay applies to the rest of it, not to
 * what it passed already. */
TH_TASK_TEST(test_resume_pattern_added, history_app_100(), 0, 10000)
{
    dispatch_n(app, "m", 1, 1);
    dispatch_n(app, "n", 2, 1);
    dispatch_n(app, "m", 3, 1);
    int err;
    tb_sub *s = tb_sub_open(self, "n", 0, &err);
    resume_from_start(self, s);
    TH_CHECK_EQ(next_num(self, s, NULL), 2); /* m 1 passed: not for "n" */
    TH_CHECK_RC(tb_sub_add(s, "m"), 0);
    TH_CHECK_EQ(next_num(self, s, NULL), 3); /* the rest: m 3 */
    tb_event *ev;
    TH_CHECK_RC(tb_sub_next(self, s, 2000, &ev), TB_SUB_LIVE);
    tb_sub_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pos_parse),
        cmocka_unit_test(test_ring),
        cmocka_unit_test(test_resume_replays_then_live),
        cmocka_unit_test(test_resume_overflow),
        cmocka_unit_test(test_resume_not_recovered),
        cmocka_unit_test(test_history_off),
        cmocka_unit_test(test_history_read_pages),
        cmocka_unit_test(test_history_scan_max),
        cmocka_unit_test(test_resume_epoch_lost),
        cmocka_unit_test(test_resume_pattern_added),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
