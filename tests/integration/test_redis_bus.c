/* test_redis_bus.c - integration tests of the Redis event bus
 * (adapters/bus_redis.c) against a real redis-server: two instances in two
 * processes; events published with redis-cli (text, JSON, envelopes); the
 * wire format; namespaces; patterns; a server restart and crash, a server
 * that starts late, connections killed by the server; AUTH with a password
 * and an ACL user, refused credentials and channels; redis_url forms;
 * malformed and oversized messages; duplicate ids; tb_dispatch_wait; and
 * publish_queue_max. Every test starts its own server on a free loopback
 * port (redis_harness.h) and checks what a user of the public API would.
 *
 * TB_ITEST_FILTER=<glob> runs only the tests whose names match. */
#include "redis_harness.h"

#include <jansson.h>

#define CONNECT_MS 10000 /* a fresh app's bus reaches connected */
#define ARRIVE_MS 5000   /* an event published now reaches a receiver */

/* ------------------------------------------------------------ helpers */

/* A running app on srv's Redis (url from user/pass), connected. cfg_in may
 * be NULL for rh_config's defaults; its redis_url is replaced. */
static rh_app *start_app(const rh_server *srv, const char *user,
                         const char *pass, const tb_app_config *cfg_in)
{
    char url[256];
    rh_server_url(srv, user, pass, url, sizeof url);
    tb_app_config cfg;
    if (cfg_in)
        cfg = *cfg_in;
    else
        rh_config(&cfg, NULL, NULL);
    cfg.redis.url = url;
    rh_app *ra = rh_app_start(&cfg);
    rh_assert_connected(ra->app, CONNECT_MS);
    return ra;
}

static int dispatch_str(tb_app *app, const char *name, const char *data,
                        char *id)
{
    return tb_dispatch(app, name, data, strlen(data), id);
}

static int dispatch_wait_str(tb_app *app, const char *name, const char *data,
                             char *id)
{
    return tb_dispatch_wait(app, name, data, strlen(data), 5000, id);
}

static tb_bus_info bus_info(tb_app *app)
{
    tb_bus_info info;
    memset(&info, 0, sizeof info);
    assert_rc(tb_bus_status(app, &info), 0);
    return info;
}

/* A recorder with a waiter or subscriber task on worker, armed. */
static rh_rec *receiver(tb_app *app, int worker, int subscriber,
                        const char *pattern)
{
    rh_rec *r = rh_rec_new(pattern);
    if (!rh_spawn(app, worker, subscriber, r, 5000))
        fail_msg("receiver %s on worker %d did not start", pattern, worker);
    return r;
}

/* Fails unless r holds exactly the data strings given (in order), and all
 * of its ids are distinct. */
static void assert_rec_data(rh_rec *r, const char *label, size_t n,
                            const char *const *want)
{
    size_t got = rh_rec_count(r);
    int ok = got == n && rh_rec_dups(r) == 0;
    for (size_t i = 0; ok && i < n; i++) {
        rh_got g;
        ok = rh_rec_get(r, i, &g) && strcmp(g.data, want[i]) == 0;
    }
    if (!ok) {
        rh_rec_dump(r, label);
        fprintf(stderr, "%s: want %zu event(s):", label, n);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " \"%.40s\"", want[i]);
        fputc('\n', stderr);
        fail_msg("%s: unexpected events (see above)", label);
    }
}

#define ASSERT_REC(r, ...)                                                     \
    do {                                                                       \
        const char *const want_[] = {__VA_ARGS__};                             \
        assert_rec_data((r), #r, sizeof want_ / sizeof want_[0], want_);       \
    } while (0)

/* Waits until r holds n events; fails with its contents if not. */
static void await_rec(rh_rec *r, long n, const char *label)
{
    if (!rh_rec_wait(r, n, ARRIVE_MS)) {
        rh_rec_dump(r, label);
        fail_msg("%s: %zu event(s) after %d ms, want %ld", label,
                 rh_rec_count(r), ARRIVE_MS, n);
    }
}

#define AWAIT(r, n) await_rec((r), (n), #r)

/* Polls until the counter picked by field reaches want (counters may be
 * updated just after the event is handed on), then checks it is exactly
 * want. */
#define AWAIT_COUNTER(app, base, field, delta)                                 \
    do {                                                                       \
        uint64_t want_ = (base).field + (uint64_t)(delta);                     \
        int64_t end_ = th_mono_ms() + 2000;                                    \
        tb_bus_info now_ = bus_info(app);                                      \
        while (now_.field < want_ && th_mono_ms() < end_) {                    \
            th_nap_ms(5);                                                      \
            now_ = bus_info(app);                                              \
        }                                                                      \
        if (now_.field != want_)                                               \
            fail_msg("tb_bus_info." #field ": %llu, want %llu (before: %llu)", \
                     (unsigned long long)now_.field,                           \
                     (unsigned long long)want_,                                \
                     (unsigned long long)(base).field);                        \
    } while (0)

/* PUBLISH with redis-cli; fails unless at least min_receivers (Redis's
 * count of subscribers reached) got it. */
static void publish_raw(const rh_server *srv, const char *chan, const char *msg,
                        long min_receivers)
{
    long n = rh_publish(srv, chan, msg);
    if (n < min_receivers)
        fail_msg("PUBLISH %.80s reached %ld subscriber(s), want >= %ld", chan,
                 n, min_receivers);
}

/* ------------------------------------------------------------ two processes */

#define XCHG_ROUNDS 6 /* events, alternately from the parent and the child */

/* The child's side of test_two_instances_in_two_processes: its own app with
 * two workers and a waiter per worker, driven by line commands:
 *   armed            -> "armed <waits w0> <waits w1>"
 *   dispatch N D     -> "rc <tb_dispatch_wait result> <id>"
 *   got <w>          -> "got <n> <name>|<id>|<origin>|<data> ..." (dups too)
 *   quit             -> "bye <tb_app_run result> <failed checks>", exit */
static int xchg_child(int rfd, int wfd, void *arg)
{
    const int port = *(const int *)arg;
    char url[64];
    snprintf(url, sizeof url, "redis://%s:%d", RH_HOST, port);
    tb_app_config cfg;
    rh_config(&cfg, url, NULL);
    th_failures_reset();
    rh_app *ra = rh_app_start(&cfg);
    tb_bus_info info;
    if (!rh_wait_bus(ra->app, TB_BUS_CONNECTED, CONNECT_MS, &info)) {
        rh_line_send(wfd, "error bus %s: %s", tb_bus_state_name(info.state),
                     info.last_error);
        rh_app_stop(ra);
        return 1;
    }
    rh_rec *w[2];
    for (int i = 0; i < 2; i++) {
        w[i] = rh_rec_new("xchg.*");
        if (!rh_spawn(ra->app, i, 0, w[i], 5000)) {
            rh_line_send(wfd, "error waiter %d", i);
            rh_app_stop(ra);
            return 1;
        }
    }
    rh_line_send(wfd, "ready");

    char buf[8192], line[1024];
    size_t buflen = 0;
    int rc = 1;
    while (rh_line_recv(rfd, buf, sizeof buf, &buflen, line, sizeof line, -1)) {
        char name[TB_EVENT_NAME_MAX + 1], data[256];
        int worker;
        if (strcmp(line, "armed") == 0) {
            rh_line_send(wfd, "armed %ld %ld", th_counter_get(&w[0]->armed),
                         th_counter_get(&w[1]->armed));
        } else if (sscanf(line, "dispatch %200s %255s", name, data) == 2) {
            char id[TB_EVENT_ID_MAX] = "";
            int drc = dispatch_wait_str(ra->app, name, data, id);
            rh_line_send(wfd, "rc %d %s", drc, id[0] ? id : "-");
        } else if (sscanf(line, "got %d", &worker) == 1 && worker >= 0 &&
                   worker < 2) {
            char out[8000];
            size_t n = rh_rec_count(w[worker]);
            int len = snprintf(out, sizeof out, "got %zu", n);
            for (size_t i = 0; i < n && len > 0 && (size_t)len < sizeof out;
                 i++) {
                rh_got g;
                rh_rec_get(w[worker], i, &g);
                len += snprintf(out + len, sizeof out - (size_t)len,
                                " %s|%s|%s|%s", g.name, g.id, g.origin, g.data);
            }
            rh_line_send(wfd, "%s", out);
        } else if (strcmp(line, "quit") == 0) {
            int run_rc = rh_app_stop(ra);
            ra = NULL;
            int failed = th_failures_count();
            rh_line_send(wfd, "bye %d %d", run_rc, failed);
            rc = run_rc == 0 && failed == 0 ? 0 : 1;
            break;
        } else {
            rh_line_send(wfd, "error unknown command");
        }
    }
    if (ra)
        rh_app_stop(ra); /* the parent went away without "quit" */
    return rc;
}

typedef struct xchg_event {
    char name[32];
    char data[32];
    char id[TB_EVENT_ID_MAX];
    int from_child;
} xchg_event;

/* Asks the child what its waiter on worker got, and checks it against the
 * events sent: each exactly once, with its name, data and the origin of
 * the instance that sent it. */
static void check_child_got(rh_proc *child, int worker, const xchg_event *sent,
                            int nsent, const char *parent_origin_prefix)
{
    char req[16], reply[8192];
    snprintf(req, sizeof req, "got %d", worker);
    if (!rh_proc_ask(child, reply, sizeof reply, 5000, req))
        fail_msg("child: no reply to \"%s\"", req);
    int n = -1, off = 0;
    if (sscanf(reply, "got %d%n", &n, &off) != 1)
        fail_msg("child: bad reply \"%.200s\"", reply);
    if (n != nsent)
        fail_msg("child worker %d's waiter got %d event(s), want %d: %.600s",
                 worker, n, nsent, reply);
    for (int k = 0; k < nsent; k++) {
        int seen = 0;
        char *p = reply + off;
        char tok[512];
        int used;
        while (sscanf(p, " %511s%n", tok, &used) == 1) {
            p += used;
            char *name = strtok(tok, "|"), *id = strtok(NULL, "|");
            char *origin = strtok(NULL, "|"), *data = strtok(NULL, "|");
            if (!name || !id || !origin || !data || strcmp(id, sent[k].id) != 0)
                continue;
            seen++;
            assert_string_equal(name, sent[k].name);
            assert_string_equal(data, sent[k].data);
            /* The parent's events come from the parent's instance. */
            int from_parent = strncmp(origin, parent_origin_prefix,
                                      strlen(parent_origin_prefix)) == 0;
            if (from_parent == sent[k].from_child)
                fail_msg("child w%d: event %s has origin %s", worker,
                         sent[k].name, origin);
        }
        if (seen != 1)
            fail_msg("child worker %d saw event %s (id %s) %d times, want 1",
                     worker, sent[k].name, sent[k].id, seen);
    }
}

/* Waits until every waiter of both instances has been armed `want` times:
 * only then may the next event go (a waiter re-arms after each event). */
static void await_all_armed(rh_rec *const *local, rh_proc *child, long want)
{
    for (int w = 0; w < 2; w++) {
        if (!th_counter_wait_ge(&local[w]->armed, want, ARRIVE_MS))
            fail_msg("parent worker %d's waiter not re-armed (%ld < %ld)", w,
                     th_counter_get(&local[w]->armed), want);
    }
    int64_t end = th_mono_ms() + ARRIVE_MS;
    for (;;) {
        char reply[128];
        long a0 = -1, a1 = -1;
        if (!rh_proc_ask(child, reply, sizeof reply, 5000, "armed") ||
            sscanf(reply, "armed %ld %ld", &a0, &a1) != 2)
            fail_msg("child: bad reply to armed: \"%s\"", reply);
        if (a0 >= want && a1 >= want)
            return;
        if (th_mono_ms() >= end)
            fail_msg("child's waiters not re-armed: %ld %ld < %ld", a0, a1,
                     want);
        th_nap_ms(5);
    }
}

/* Two app instances in separate processes, 2 workers each, on one Redis.
 * Events go both ways, one at a time; every waiter on every worker of both
 * instances (the dispatching instance's own included) gets each event
 * exactly once, with its data, and the origin names the instance that
 * dispatched it. */
static void test_two_instances_in_two_processes(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    int port = srv->port;
    /* Fork before this process runs an app: the child starts clean. */
    rh_proc *child = rh_proc_spawn(90, xchg_child, &port);
    char line[512];
    if (!rh_proc_recv(child, line, sizeof line, 20000))
        fail_msg("child: no \"ready\" within 20 s");
    if (strcmp(line, "ready") != 0)
        fail_msg("child: %s", line);

    rh_app *ra = start_app(srv, NULL, NULL, NULL);
    rh_rec *local[2];
    for (int w = 0; w < 2; w++)
        local[w] = receiver(ra->app, w, 0, "xchg.*");

    xchg_event sent[XCHG_ROUNDS];
    memset(sent, 0, sizeof sent);
    for (int k = 0; k < XCHG_ROUNDS; k++) {
        await_all_armed(local, child, k + 1);
        xchg_event *e = &sent[k];
        e->from_child = k % 2;
        snprintf(e->name, sizeof e->name, "xchg.%s%d",
                 e->from_child ? "c" : "p", k);
        snprintf(e->data, sizeof e->data, "from-%s-%d",
                 e->from_child ? "child" : "parent", k);
        if (e->from_child) {
            char req[128], reply[128];
            int drc = 1;
            snprintf(req, sizeof req, "dispatch %s %s", e->name, e->data);
            if (!rh_proc_ask(child, reply, sizeof reply, 10000, req) ||
                sscanf(reply, "rc %d %39s", &drc, e->id) != 2)
                fail_msg("child: bad reply to dispatch: \"%s\"", reply);
            assert_rc(drc, 0);
        } else {
            assert_rc(dispatch_wait_str(ra->app, e->name, e->data, e->id), 0);
        }
    }

    /* Every local waiter got all of them... */
    for (int w = 0; w < 2; w++)
        AWAIT(local[w], XCHG_ROUNDS);
    /* ...and so did the child's (poll: it answers for itself). */
    await_all_armed(local, child, XCHG_ROUNDS + 1);
    /* Late duplicates would show up now. */
    th_nap_ms(300);

    char prefix[64] = "";
    for (int w = 0; w < 2; w++) {
        assert_int_equal(rh_rec_count(local[w]), XCHG_ROUNDS);
        assert_int_equal(rh_rec_dups(local[w]), 0);
        for (int k = 0; k < XCHG_ROUNDS; k++) {
            if (rh_rec_count_id(local[w], sent[k].id) != 1) {
                rh_rec_dump(local[w], "local waiter");
                fail_msg("parent worker %d: event %s (id %s) not seen once", w,
                         sent[k].name, sent[k].id);
            }
        }
        for (size_t i = 0; i < XCHG_ROUNDS; i++) {
            rh_got g;
            assert_true(rh_rec_get(local[w], i, &g));
            assert_int_equal(g.worker, w);
            int k = -1;
            for (int j = 0; j < XCHG_ROUNDS; j++)
                k = strcmp(sent[j].id, g.id) == 0 ? j : k;
            assert_true(k >= 0);
            assert_string_equal(g.name, sent[k].name);
            assert_string_equal(g.data, sent[k].data);
            /* "<instance>/<worker>": one instance for the parent's events,
             * another for the child's. */
            char inst[64];
            snprintf(inst, sizeof inst, "%s", g.origin);
            char *slash = strchr(inst, '/');
            assert_non_null(slash);
            slash[1] = '\0';
            if (!sent[k].from_child && !prefix[0])
                snprintf(prefix, sizeof prefix, "%s", inst);
            if (!sent[k].from_child)
                assert_string_equal(inst, prefix);
        }
    }
    for (int w = 0; w < 2; w++) {
        for (size_t i = 0; i < XCHG_ROUNDS; i++) {
            rh_got g;
            rh_rec_get(local[w], i, &g);
            int from_parent = strncmp(g.origin, prefix, strlen(prefix)) == 0;
            int k = 0;
            while (k < XCHG_ROUNDS && strcmp(sent[k].id, g.id) != 0)
                k++;
            if (from_parent == sent[k].from_child)
                fail_msg("parent w%d: %s has origin %s (parent is %s)", w,
                         g.name, g.origin, prefix);
        }
    }
    for (int w = 0; w < 2; w++)
        check_child_got(child, w, sent, XCHG_ROUNDS, prefix);

    char reply[128];
    if (!rh_proc_ask(child, reply, sizeof reply, 20000, "quit"))
        fail_msg("child: no reply to quit");
    assert_string_equal(reply, "bye 0 0");
    assert_int_equal(rh_proc_wait(child, 10000), 0);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ redis-cli */

/* `redis-cli PUBLISH taskbus:event:my.custom.event hello` reaches a task
 * waiting on my.custom.event, on every worker, with data "hello", a fresh
 * id and the time of receipt. */
static void test_cli_publish_reaches_waiter(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv, NULL, NULL, NULL);
    rh_rec *w0 = rh_rec_new("my.custom.event");
    rh_rec *w1 = rh_rec_new("my.custom.event");
    w0->once = w1->once = 1;
    assert_true(rh_spawn(ra->app, 0, 0, w0, 5000));
    assert_true(rh_spawn(ra->app, 1, 0, w1, 5000));
    tb_bus_info before = bus_info(ra->app);

    int64_t t0 = th_real_us();
    publish_raw(srv, "taskbus:event:my.custom.event", "hello", 1);

    AWAIT(w0, 1);
    AWAIT(w1, 1);
    int64_t t1 = th_real_us();
    rh_rec *both[] = {w0, w1};
    char id0[TB_EVENT_ID_MAX] = "";
    for (int i = 0; i < 2; i++) {
        rh_got g;
        assert_true(rh_rec_get(both[i], 0, &g));
        assert_string_equal(g.name, "my.custom.event");
        assert_string_equal(g.data, "hello");
        assert_int_equal(g.len, 5);
        assert_true(g.id[0] != '\0');
        assert_true(g.origin[0] != '\0');
        if (g.ts_us < t0 - 1000000 || g.ts_us > t1 + 1000000)
            fail_msg("ts %lld not within the publish [%lld, %lld]",
                     (long long)g.ts_us, (long long)t0, (long long)t1);
        /* One message, one event: both workers see the same id. */
        if (i == 0)
            snprintf(id0, sizeof id0, "%s", g.id);
        else
            assert_string_equal(g.id, id0);
    }
    AWAIT_COUNTER(ra->app, before, received, 1);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* Messages from other producers: JSON that is not an envelope is data as
 * it is; a full envelope (as another language's client would send it)
 * gives its id, origin, ts and data (an object arrives as its JSON text). */
static void test_cli_publish_json(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv, NULL, NULL, NULL);
    rh_rec *sub = receiver(ra->app, 0, 1, "my.custom.event");
    const char *chan = "taskbus:event:my.custom.event";
    publish_raw(srv, chan, "{\"foo\":1}", 1);
    publish_raw(srv, chan, "[1,2,3]", 1);
    publish_raw(srv, chan, "{\"data\":\"no id, no name\"}", 1);
    publish_raw(srv, chan,
                "{\"id\":\"ext-1\",\"name\":\"my.custom.event\","
                "\"data\":{\"k\":[1,2]},\"ts\":1700000000000001,"
                "\"origin\":\"py/0\"}",
                1);
    publish_raw(srv, chan,
                "{\"id\":\"ext-2\",\"name\":\"my.custom.event\","
                "\"data\":\"text\",\"ts\":1700000000000002,"
                "\"origin\":\"py/1\"}",
                1);
    AWAIT(sub, 5);
    ASSERT_REC(sub, "{\"foo\":1}", "[1,2,3]", "{\"data\":\"no id, no name\"}",
               "{\"k\":[1,2]}", "text");
    rh_got g;
    assert_true(rh_rec_get(sub, 3, &g));
    assert_string_equal(g.id, "ext-1");
    assert_string_equal(g.origin, "py/0");
    assert_int_equal(g.ts_us, 1700000000000001LL);
    assert_true(rh_rec_get(sub, 4, &g));
    assert_string_equal(g.id, "ext-2");
    assert_string_equal(g.origin, "py/1");
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ wire format */

/* Checks one envelope as seen by a plain subscriber: the channel, exactly
 * the members id, name, data, ts, origin and (history is on by default)
 * pos, last, with their types, the id
 * tb_dispatch gave, ts within the dispatch, and data as the JSON value of
 * an object/array payload or else the payload as a string. */
static void check_envelope(const char *chan, const char *msg, const char *name,
                           const char *id, const char *payload, int64_t t0,
                           int64_t t1)
{
    char want_chan[256];
    snprintf(want_chan, sizeof want_chan, "taskbus:event:%s", name);
    assert_string_equal(chan, want_chan);
    json_error_t jerr;
    json_t *env = json_loads(msg, 0, &jerr);
    if (!env || !json_is_object(env))
        fail_msg("envelope is not a JSON object: %.200s", msg);
    const char *keys[] = {"id", "name", "data", "ts", "origin"};
    for (size_t i = 0; i < 5; i++) {
        if (!json_object_get(env, keys[i]))
            fail_msg("envelope has no \"%s\": %.200s", keys[i], msg);
    }
    json_t *jpos = json_object_get(env, "pos");
    if (!json_is_string(jpos) || !strstr(msg, ",\"pos\":\"") ||
        msg[strlen(msg) - 2] != '"')
        fail_msg("envelope has no position last: %.200s", msg);
    if (json_object_size(env) != 6)
        fail_msg("envelope has extra members: %.200s", msg);
    json_t *jid = json_object_get(env, "id"),
           *jname = json_object_get(env, "name");
    json_t *jts = json_object_get(env, "ts"),
           *jorigin = json_object_get(env, "origin");
    json_t *jdata = json_object_get(env, "data");
    assert_true(json_is_string(jid) && json_is_string(jname));
    assert_true(json_is_integer(jts) && json_is_string(jorigin));
    assert_string_equal(json_string_value(jid), id);
    assert_string_equal(json_string_value(jname), name);
    json_int_t ts = json_integer_value(jts);
    if (ts < t0 - 1000 || ts > t1 + 1000)
        fail_msg("envelope ts %lld not within the dispatch [%lld, %lld]",
                 (long long)ts, (long long)t0, (long long)t1);
    const char *origin = json_string_value(jorigin);
    size_t olen = strlen(origin);
    if (olen < 4 || strcmp(origin + olen - 3, "/-1") != 0)
        fail_msg("origin \"%s\" should be \"<instance>/-1\"", origin);
    json_t *as_json = json_loads(payload, JSON_DECODE_ANY, &jerr);
    if (as_json && (json_is_object(as_json) || json_is_array(as_json))) {
        if (!json_equal(jdata, as_json))
            fail_msg("data is not the JSON value of %.100s: %.200s", payload,
                     msg);
    } else {
        if (!json_is_string(jdata) ||
            strcmp(json_string_value(jdata), payload) != 0)
            fail_msg("data is not the string %.100s: %.200s", payload, msg);
    }
    json_decref(as_json);
    json_decref(env);
}

/* What tb_dispatch puts on the wire (the contract other producers and
 * consumers rely on), seen by a plain subscriber, and what the app's own
 * receivers get back: the same bytes for text and compact JSON, the same
 * JSON value for JSON written with blanks. */
static void test_wire_format(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv, NULL, NULL, NULL);
    rh_rec *sub = receiver(ra->app, 1, 1, "wire.*");
    redisContext *wire = rh_wire_subscribe(srv, "taskbus:event:wire.*");
    assert_non_null(wire);
    static const struct {
        const char *payload;
        int same_bytes; /* 0: the same JSON value, compacted */
    } cases[] = {
        {"{\"a\":1,\"b\":[true,null,\"x\"]}", 1},
        {"[1,\"two\",{\"three\":3}]", 1},
        {"plain text", 1},
        {"\"quoted\"", 1},
        {"42", 1},
        {"", 1},
        {"  leading blanks {not json", 1},
        {"{not json", 1}, /* starts with '{' but is not JSON: a string */
        /* Valid JSON that jansson cannot hold (an integer over 64 bits)
         * travels as a string, its text intact. */
        {"{\"big\":123456789012345678901234567890}", 1},
        {"{ \"a\" : 1 ,\n  \"b\" : [ 1 , 2 ] }", 0},
        {"{\"s\":\"caf\\u00e9\"}", 0},
    };
    const size_t n = sizeof cases / sizeof cases[0];
    char ids[sizeof cases / sizeof cases[0]][TB_EVENT_ID_MAX];
    for (size_t i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "wire.e%zu", i);
        int64_t t0 = th_real_us();
        int rc = tb_dispatch_wait(ra->app, name, cases[i].payload,
                                  strlen(cases[i].payload), 5000, ids[i]);
        int64_t t1 = th_real_us();
        if (rc != 0)
            fail_msg("tb_dispatch_wait(%s): %s", cases[i].payload,
                     tb_err_name(rc));
        char chan[256];
        char *msg = NULL;
        size_t len = 0;
        if (!rh_wire_next(wire, 5000, chan, sizeof chan, &msg, &len))
            fail_msg("no message on the wire for %s", name);
        fprintf(stderr, "wire: %s %s\n", chan, msg);
        check_envelope(chan, msg, name, ids[i], cases[i].payload, t0, t1);
        free(msg);
    }
    redisFree(wire);
    AWAIT(sub, (long)n);
    for (size_t i = 0; i < n; i++) {
        rh_got g;
        assert_true(rh_rec_get(sub, i, &g));
        assert_string_equal(g.id, ids[i]);
        int same = g.len == strlen(cases[i].payload) &&
                   memcmp(g.data, cases[i].payload, g.len) == 0;
        if (cases[i].same_bytes && !same)
            fail_msg("data \"%s\" arrived as \"%s\"", cases[i].payload, g.data);
        if (!cases[i].same_bytes && !same) {
            json_error_t jerr;
            json_t *a = json_loads(cases[i].payload, 0, &jerr);
            json_t *b = json_loads(g.data, 0, &jerr);
            int eq = a && b && json_equal(a, b);
            json_decref(a);
            json_decref(b);
            if (!eq)
                fail_msg("data \"%s\" arrived as \"%s\": not the same value",
                         cases[i].payload, g.data);
        }
    }
    /* The envelope is JSON text: data must be UTF-8. */
    assert_rc(tb_dispatch(ra->app, "wire.bin", "\xff\xfe", 2, NULL), TB_EINVAL);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ namespaces */

/* Apps in namespaces "a" and "b" on one server never see each other's
 * events, whether dispatched or published raw; a raw publish in the
 * default namespace reaches neither. A fence event, published last in each
 * namespace, bounds the wait: Redis delivers in publish order. */
static void test_namespaces_isolate(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    tb_app_config ca, cb;
    rh_config(&ca, NULL, "a");
    rh_config(&cb, NULL, "b");
    rh_app *a = start_app(srv, NULL, NULL, &ca);
    rh_app *b = start_app(srv, NULL, NULL, &cb);
    rh_rec *ra0 = receiver(a->app, 0, 1, "iso.*");
    rh_rec *ra1 = receiver(a->app, 1, 1, "iso.*");
    rh_rec *rb0 = receiver(b->app, 0, 1, "iso.*");
    rh_rec *rb1 = receiver(b->app, 1, 1, "iso.*");

    assert_rc(dispatch_wait_str(a->app, "iso.ping", "from-a", NULL), 0);
    assert_rc(dispatch_wait_str(b->app, "iso.ping", "from-b", NULL), 0);
    publish_raw(srv, "a:event:iso.ping", "raw-a", 1);
    publish_raw(srv, "b:event:iso.ping", "raw-b", 1);
    /* Nobody listens in the default namespace. */
    assert_int_equal(rh_publish(srv, "taskbus:event:iso.ping", "raw-default"),
                     0);
    publish_raw(srv, "a:event:iso.fence", "fence-a", 1);
    publish_raw(srv, "b:event:iso.fence", "fence-b", 1);

    AWAIT(ra0, 3);
    AWAIT(ra1, 3);
    AWAIT(rb0, 3);
    AWAIT(rb1, 3);
    ASSERT_REC(ra0, "from-a", "raw-a", "fence-a");
    ASSERT_REC(ra1, "from-a", "raw-a", "fence-a");
    ASSERT_REC(rb0, "from-b", "raw-b", "fence-b");
    ASSERT_REC(rb1, "from-b", "raw-b", "fence-b");
    assert_rc(rh_app_stop(a), 0);
    assert_rc(rh_app_stop(b), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ patterns */

/* order.* and order.<id> receive order.42 over Redis (with id = 42), and
 * neither receives order.42.x or shipment.1, which did travel (exact
 * receivers got them). */
static void test_patterns_over_redis(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv, NULL, NULL, NULL);
    /* One-shot waiters, each on the other worker than its subscription. */
    rh_rec *wstar = rh_rec_new("order.*");
    rh_rec *wparam = rh_rec_new("order.<id>");
    wstar->once = wparam->once = 1;
    wparam->param = "id";
    assert_true(rh_spawn(ra->app, 1, 0, wstar, 5000));
    assert_true(rh_spawn(ra->app, 0, 0, wparam, 5000));
    rh_rec *sstar = receiver(ra->app, 0, 1, "order.*");
    rh_rec *sparam = rh_rec_new("order.<id>");
    sparam->param = "id";
    assert_true(rh_spawn(ra->app, 1, 1, sparam, 5000));
    rh_rec *deep = receiver(ra->app, 0, 1, "order.42.x");
    rh_rec *ship = receiver(ra->app, 1, 1, "shipment.1");

    assert_rc(dispatch_wait_str(ra->app, "order.42.x", "deep", NULL), 0);
    assert_rc(dispatch_wait_str(ra->app, "shipment.1", "ship", NULL), 0);
    assert_rc(dispatch_wait_str(ra->app, "order.42", "order", NULL), 0);
    publish_raw(srv, "taskbus:event:order.7", "raw-order", 1);
    assert_rc(dispatch_wait_str(ra->app, "order.fence", "fence", NULL), 0);

    AWAIT(wstar, 1);
    AWAIT(wparam, 1);
    AWAIT(sstar, 3);
    AWAIT(sparam, 3);
    AWAIT(deep, 1);
    AWAIT(ship, 1);
    ASSERT_REC(wstar, "order");
    ASSERT_REC(wparam, "order");
    ASSERT_REC(sstar, "order", "raw-order", "fence");
    ASSERT_REC(sparam, "order", "raw-order", "fence");
    ASSERT_REC(deep, "deep");
    ASSERT_REC(ship, "ship");
    rh_got g;
    assert_true(rh_rec_get(wparam, 0, &g));
    assert_string_equal(g.name, "order.42");
    assert_string_equal(g.param, "42");
    assert_true(rh_rec_get(wstar, 0, &g));
    assert_string_equal(g.name, "order.42");
    const char *want_param[] = {"42", "7", "fence"};
    for (size_t i = 0; i < 3; i++) {
        assert_true(rh_rec_get(sparam, i, &g));
        assert_string_equal(g.param, want_param[i]);
    }
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ restart */

/* Fails unless every event named in names[] appears in r exactly once. */
static void assert_once_each(rh_rec *r, const char *label, const char **ids,
                             const char **names, int n)
{
    for (int i = 0; i < n; i++) {
        int c = rh_rec_count_id(r, ids[i]);
        if (c != 1) {
            rh_rec_dump(r, label);
            fail_msg("%s: %s (id %s) delivered %d times, want 1", label,
                     names[i], ids[i], c);
        }
    }
    if (rh_rec_dups(r) != 0) {
        rh_rec_dump(r, label);
        fail_msg("%s: an event was delivered twice", label);
    }
}

/* Waits for the bus to notice the server is gone, then checks that
 * dispatching is refused with TB_ENOTCONN (without waiting for a timeout)
 * and that it keeps trying. */
static void assert_down(tb_app *app)
{
    tb_bus_info info;
    if (!rh_wait_bus(app, TB_BUS_RECONNECTING, 10000, &info))
        fail_msg("bus not reconnecting 10 s after the server went away: "
                 "state %s",
                 tb_bus_state_name(info.state));
    assert_rc(dispatch_str(app, "rs.down", "lost", NULL), TB_ENOTCONN);
    int64_t t0 = th_mono_ms();
    assert_rc(tb_dispatch_wait(app, "rs.down", "lost", 4, 3000, NULL),
              TB_ENOTCONN);
    assert_true(th_mono_ms() - t0 < 1000);
    int64_t end = th_mono_ms() + 5000;
    while ((info = bus_info(app)).attempts == 0 && th_mono_ms() < end)
        th_nap_ms(10);
    assert_true(info.attempts > 0);
    assert_int_equal(info.state, TB_BUS_RECONNECTING);
    assert_true(info.last_error[0] != '\0');
}

/* redis-server restarts in the middle of a run (once stopped cleanly, once
 * killed while it held an unacknowledged event): dispatch returns
 * TB_ENOTCONN while it is down, works again after it is back, the
 * subscriptions opened before still receive, the unacknowledged event is
 * resent and arrives once, and no event arrives twice. */
static void test_server_restart(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    tb_app_config cfg;
    rh_config(&cfg, NULL, NULL);
    cfg.redis.ping_interval_ms = 200;
    cfg.redis.command_timeout_ms = 10000;
    rh_app *ra = start_app(srv, NULL, NULL, &cfg);
    rh_rec *s0 = receiver(ra->app, 0, 1, "rs.*");
    rh_rec *s1 = receiver(ra->app, 1, 1, "rs.*");
    char id[4][TB_EVENT_ID_MAX];
    const char *names[4] = {"rs.before", "rs.after", "rs.pending", "rs.final"};

    assert_rc(dispatch_wait_str(ra->app, names[0], "1", id[0]), 0);
    AWAIT(s0, 1);
    AWAIT(s1, 1);

    /* 1: a clean stop (SIGTERM) and a start on the same port. */
    rh_server_stop(srv);
    assert_down(ra->app);
    rh_server_restart(srv);
    rh_assert_connected(ra->app, CONNECT_MS);
    assert_true(bus_info(ra->app).reconnects >= 1);
    assert_rc(dispatch_wait_str(ra->app, names[1], "2", id[1]), 0);
    AWAIT(s0, 2);
    AWAIT(s1, 2);

    /* 2: the server stops answering with an event in flight, then dies
     * (SIGKILL: the connection is reset). The event was accepted, so it
     * must be resent after the reconnect. */
    uint64_t reconnects = bus_info(ra->app).reconnects;
    rh_server_pause(srv);
    assert_rc(dispatch_str(ra->app, names[2], "3", id[2]), 0);
    rh_server_kill(srv);
    assert_down(ra->app);
    rh_server_restart(srv);
    rh_assert_connected(ra->app, CONNECT_MS);
    assert_true(bus_info(ra->app).reconnects > reconnects);
    assert_rc(dispatch_wait_str(ra->app, names[3], "4", id[3]), 0);
    AWAIT(s0, 4);
    AWAIT(s1, 4);

    th_nap_ms(300); /* a duplicate would arrive by now */
    const char *ids[4] = {id[0], id[1], id[2], id[3]};
    assert_once_each(s0, "s0", ids, names, 4);
    assert_once_each(s1, "s1", ids, names, 4);
    assert_int_equal(rh_rec_count(s0), 4);
    assert_int_equal(rh_rec_count(s1), 4);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* An event tb_dispatch accepted (returned 0) before the link failed is
 * never lost silently nor delivered twice: it arrives exactly once, or it
 * is counted in publish_failed (given up on, and logged). Returns 1 if it
 * arrived. */
static int accepted_once_or_counted(tb_app *app, rh_rec *r, const char *id,
                                    const char *what, uint64_t failed_before)
{
    int n = rh_rec_count_id(r, id);
    uint64_t failed = bus_info(app).publish_failed - failed_before;
    fprintf(stderr, "%s: delivered %d time(s), publish_failed +%llu\n", what, n,
            (unsigned long long)failed);
    if (n + (int)failed != 1) {
        rh_rec_dump(r, what);
        fail_msg("%s: accepted, then delivered %d time(s) and counted as "
                 "given up %llu time(s); want exactly one of the two",
                 what, n, (unsigned long long)failed);
    }
    return n;
}

/* A server that hangs (SIGSTOP) with its connections open: the bus notices
 * within redis_ping_interval_ms + redis_command_timeout_ms whether or not
 * a PUBLISH is waiting, refuses dispatches with TB_ENOTCONN meanwhile, and
 * recovers when the server runs again. An event accepted before the hang,
 * or before an outage longer than redis_command_timeout_ms, is resent and
 * arrives once; one accepted before an outage longer than publish_retry_ms
 * is given up and counted in publish_failed, never delivered late. */
static void test_server_hangs(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    tb_app_config cfg;
    rh_config(&cfg, NULL, NULL);
    cfg.redis.command_timeout_ms = 1000;
    cfg.redis.ping_interval_ms = 200;
    cfg.redis.connect_timeout_ms = 500;
    rh_app *ra = start_app(srv, NULL, NULL, &cfg);
    rh_rec *sub = receiver(ra->app, 0, 1, "hang.*");
    tb_bus_info info;

    /* 1: an idle link; only the keepalive notices. */
    rh_server_pause(srv);
    int64_t t0 = th_mono_ms();
    if (!rh_wait_bus(ra->app, TB_BUS_RECONNECTING, 10000, &info))
        fail_msg("a hung server not noticed in 10 s (idle link)");
    int64_t took = th_mono_ms() - t0;
    if (took < 500 || took > 200 + 1000 + 1500)
        fail_msg("hung idle link noticed after %lld ms, want about "
                 "ping interval + command timeout (200 + 1000 ms)",
                 (long long)took);
    assert_true(info.last_error[0] != '\0');
    assert_rc(dispatch_str(ra->app, "hang.refused", "x", NULL), TB_ENOTCONN);
    rh_server_resume(srv);
    rh_assert_connected(ra->app, CONNECT_MS);
    assert_rc(dispatch_wait_str(ra->app, "hang.p1", "p1", NULL), 0);
    AWAIT(sub, 1);

    /* 2: a PUBLISH waiting for its answer. */
    uint64_t failed0 = bus_info(ra->app).publish_failed;
    char id_hung[TB_EVENT_ID_MAX];
    rh_server_pause(srv);
    t0 = th_mono_ms();
    assert_rc(dispatch_str(ra->app, "hang.accepted", "acc", id_hung), 0);
    if (!rh_wait_bus(ra->app, TB_BUS_RECONNECTING, 10000, &info))
        fail_msg("a hung server not noticed in 10 s (PUBLISH waiting)");
    took = th_mono_ms() - t0;
    if (took > 1000 + 1500)
        fail_msg("unanswered PUBLISH noticed after %lld ms, want about the "
                 "command timeout (1000 ms)",
                 (long long)took);
    assert_rc(dispatch_str(ra->app, "hang.refused", "x", NULL), TB_ENOTCONN);
    rh_server_resume(srv);
    rh_assert_connected(ra->app, CONNECT_MS);
    assert_rc(dispatch_wait_str(ra->app, "hang.p2", "p2", NULL), 0);
    th_nap_ms(300); /* a resend or a late duplicate would be here */
    int got = accepted_once_or_counted(ra->app, sub, id_hung,
                                       "accepted before a hang", failed0);
    /* Within publish_retry_ms (10 s by default) it is resent, not lost. */
    assert_int_equal(got, 1);

    /* 3: accepted, then the server dies and stays down longer than the
     * command timeout. */
    failed0 = bus_info(ra->app).publish_failed;
    char id_down[TB_EVENT_ID_MAX];
    rh_server_pause(srv);
    assert_rc(dispatch_str(ra->app, "hang.down", "down", id_down), 0);
    rh_server_kill(srv);
    th_nap_ms(1500);
    rh_server_restart(srv);
    rh_assert_connected(ra->app, CONNECT_MS);
    assert_rc(dispatch_wait_str(ra->app, "hang.p3", "p3", NULL), 0);
    th_nap_ms(300);
    assert_int_equal(accepted_once_or_counted(ra->app, sub, id_down,
                                              "accepted before a long outage",
                                              failed0),
                     1);
    AWAIT(sub, 5);
    assert_int_equal(rh_rec_count(sub), 5);
    assert_int_equal(rh_rec_dups(sub), 0);
    assert_rc(rh_app_stop(ra), 0);

    /* 4: an outage longer than publish_retry_ms: the accepted event is
     * given up, counted and never delivered late. */
    cfg.redis.publish_retry_ms = 300;
    ra = start_app(srv, NULL, NULL, &cfg);
    sub = receiver(ra->app, 0, 1, "hang.*");
    failed0 = bus_info(ra->app).publish_failed;
    rh_server_pause(srv);
    assert_rc(dispatch_str(ra->app, "hang.expired", "late", id_down), 0);
    rh_server_kill(srv);
    th_nap_ms(1500);
    rh_server_restart(srv);
    rh_assert_connected(ra->app, CONNECT_MS);
    assert_rc(dispatch_wait_str(ra->app, "hang.p4", "p4", NULL), 0);
    th_nap_ms(300);
    assert_int_equal(accepted_once_or_counted(ra->app, sub, id_down,
                                              "accepted, outage over "
                                              "publish_retry_ms",
                                              failed0),
                     0);
    AWAIT(sub, 1);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* Receivers drop a second message with an id they have seen (what a
 * resend after a reconnect looks like) and count it. */
static void test_duplicate_ids_dropped(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv, NULL, NULL, NULL);
    rh_rec *s0 = receiver(ra->app, 0, 1, "dup.ev");
    rh_rec *s1 = receiver(ra->app, 1, 1, "dup.ev");
    tb_bus_info before = bus_info(ra->app);
    const char *env = "{\"id\":\"dup-0001\",\"name\":\"dup.ev\","
                      "\"data\":\"once\",\"ts\":1700000000000000,"
                      "\"origin\":\"0000000000000000/0\"}";
    publish_raw(srv, "taskbus:event:dup.ev", env, 1);
    publish_raw(srv, "taskbus:event:dup.ev", env, 1);
    publish_raw(srv, "taskbus:event:dup.ev", "fence", 1);
    AWAIT(s0, 2);
    AWAIT(s1, 2);
    ASSERT_REC(s0, "once", "fence");
    ASSERT_REC(s1, "once", "fence");
    rh_got g;
    assert_true(rh_rec_get(s0, 0, &g));
    assert_string_equal(g.id, "dup-0001");
    assert_string_equal(g.origin, "0000000000000000/0");
    AWAIT_COUNTER(ra->app, before, duplicates, 1);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* An app started while its server is not there yet: the bus is not
 * connected, tb_dispatch returns TB_ENOTCONN, last_error says why; once the
 * server starts, the bus connects by itself and events flow. */
static void test_start_before_server(void **state)
{
    (void)state;
    rh_server *srv = rh_server_create(NULL, NULL, NULL);
    char url[128];
    rh_server_url(srv, NULL, NULL, url, sizeof url);
    tb_app_config cfg;
    rh_config(&cfg, url, NULL);
    cfg.redis.connect_timeout_ms = 300; /* tb_app_run waits this long */
    rh_app *ra = rh_app_start(&cfg);
    int64_t end = th_mono_ms() + 5000;
    tb_bus_info info = bus_info(ra->app);
    while ((info.attempts == 0 || !info.last_error[0]) && th_mono_ms() < end) {
        th_nap_ms(10);
        info = bus_info(ra->app);
    }
    assert_string_equal(info.name, "redis");
    if (info.state != TB_BUS_CONNECTING && info.state != TB_BUS_RECONNECTING)
        fail_msg("state %s with no server", tb_bus_state_name(info.state));
    assert_true(info.attempts > 0);
    assert_true(info.last_error[0] != '\0');
    assert_rc(dispatch_str(ra->app, "late.ev", "x", NULL), TB_ENOTCONN);
    rh_rec *sub = receiver(ra->app, 0, 1, "late.ev");

    rh_server_restart(srv); /* its first start */
    rh_assert_connected(ra->app, CONNECT_MS);
    assert_rc(dispatch_wait_str(ra->app, "late.ev", "now", NULL), 0);
    publish_raw(srv, "taskbus:event:late.ev", "raw", 1);
    AWAIT(sub, 2);
    ASSERT_REC(sub, "now", "raw");
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* Waits until the bus has reconnected more than `after` times and is
 * connected again. */
static void await_reconnect(tb_app *app, uint64_t after)
{
    int64_t end = th_mono_ms() + CONNECT_MS;
    tb_bus_info info = bus_info(app);
    while ((info.reconnects <= after || info.state != TB_BUS_CONNECTED) &&
           th_mono_ms() < end) {
        th_nap_ms(5);
        info = bus_info(app);
    }
    if (info.reconnects <= after || info.state != TB_BUS_CONNECTED)
        fail_msg("no reconnect: reconnects %llu (before %llu), state %s, "
                 "last_error \"%s\"",
                 (unsigned long long)info.reconnects, (unsigned long long)after,
                 tb_bus_state_name(info.state), info.last_error);
}

/* The server drops one of the app's connections (CLIENT KILL, as an
 * operator or a proxy might): first the subscriber, then the publisher.
 * The bus reconnects by itself and the subscription and a waiter opened
 * before still receive, once per event. */
static void test_connection_killed(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv, NULL, NULL, NULL);
    rh_rec *sub = receiver(ra->app, 0, 1, "kill.ev");
    rh_rec *waiter = receiver(ra->app, 1, 0, "kill.ev");
    char out[256];

    uint64_t before = bus_info(ra->app).reconnects;
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "CLIENT", "KILL", "TYPE", "pubsub"), 0);
    if (strcmp(out, "1") != 0)
        fail_msg("CLIENT KILL TYPE pubsub killed \"%s\" clients, want 1", out);
    await_reconnect(ra->app, before);
    assert_rc(dispatch_wait_str(ra->app, "kill.ev", "after-sub-kill", NULL), 0);
    AWAIT(sub, 1);
    AWAIT(waiter, 1);

    before = bus_info(ra->app).reconnects;
    /* TYPE normal: the publisher (redis-cli spares itself). */
    assert_int_equal(
        rh_cli(srv, out, sizeof out, "CLIENT", "KILL", "TYPE", "normal"), 0);
    if (strcmp(out, "1") != 0)
        fail_msg("CLIENT KILL TYPE normal killed \"%s\" clients, want 1", out);
    await_reconnect(ra->app, before);
    assert_true(th_counter_wait_ge(&waiter->armed, 2, ARRIVE_MS));
    assert_rc(dispatch_wait_str(ra->app, "kill.ev", "after-pub-kill", NULL), 0);
    AWAIT(sub, 2);
    AWAIT(waiter, 2);
    th_nap_ms(200);
    ASSERT_REC(sub, "after-sub-kill", "after-pub-kill");
    ASSERT_REC(waiter, "after-sub-kill", "after-pub-kill");
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ urls */

/* One app on url: connected, its publisher uses database db (CLIENT LIST;
 * pub/sub ignores databases, so the subscriber may stay on 0), and an
 * event makes the round trip. */
static void url_round_trip(rh_server *srv, const char *url, int db)
{
    tb_app_config cfg;
    rh_config(&cfg, url, NULL);
    rh_app *ra = rh_app_start(&cfg);
    rh_assert_connected(ra->app, CONNECT_MS);
    char out[4096], want[16];
    assert_int_equal(rh_cli(srv, out, sizeof out, "CLIENT", "LIST"), 0);
    snprintf(want, sizeof want, " db=%d ", db);
    if (!strstr(out, want))
        fail_msg("%s: no client on db %d: %s", url, db, out);
    rh_rec *sub = receiver(ra->app, 0, 1, "url.ev");
    assert_rc(dispatch_wait_str(ra->app, "url.ev", url, NULL), 0);
    AWAIT(sub, 1);
    ASSERT_REC(sub, url);
    assert_rc(rh_app_stop(ra), 0);
}

/* redis_url forms: a database number, a unix socket with ?db=, a password
 * with reserved characters percent-encoded; and URLs and namespaces that
 * tb_app_new refuses with TB_EINVAL. */
static void test_redis_url_forms(void **state)
{
    (void)state;
    rh_server *srv =
        rh_server_start("requirepass \"p@ss:w/rd%\"\n", NULL, "p@ss:w/rd%");
    char url[PATH_MAX + 64];
    snprintf(url, sizeof url, "redis://:p%%40ss%%3Aw%%2Frd%%25@%s:%d/3",
             RH_HOST, srv->port);
    url_round_trip(srv, url, 3);
    snprintf(url, sizeof url, "unix://:p%%40ss%%3Aw%%2Frd%%25@%s?db=5",
             srv->sock);
    url_round_trip(srv, url, 5);

    const char *bad_urls[] = {
        "rediss://127.0.0.1:6379", /* TLS: not supported */
        "http://127.0.0.1:6379",     "redis://127.0.0.1:0",
        "redis://127.0.0.1:65536",   "redis://127.0.0.1:6379/x",
        "unix://relative/path.sock",
    };
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
        tb_app_config cfg;
        rh_config(&cfg, bad_urls[i], NULL);
        int err = 0;
        tb_app *app = tb_app_new(&cfg, &err);
        if (app) {
            tb_app_free(app);
            fail_msg("tb_app_new accepted redis_url \"%s\"", bad_urls[i]);
        }
        assert_rc(err, TB_EINVAL);
    }
    char ns64[65], ns65[66];
    memset(ns64, 'n', 64);
    ns64[64] = '\0';
    memset(ns65, 'n', 65);
    ns65[65] = '\0';
    const char *bad_ns[] = {"", "bad ns", "a:b", "a*", ns65};
    for (size_t i = 0; i < sizeof bad_ns / sizeof bad_ns[0]; i++) {
        tb_app_config cfg;
        rh_config(&cfg, "redis://127.0.0.1:6379", bad_ns[i]);
        int err = 0;
        tb_app *app = tb_app_new(&cfg, &err);
        if (app) {
            tb_app_free(app);
            fail_msg("tb_app_new accepted event_namespace \"%s\"", bad_ns[i]);
        }
        assert_rc(err, TB_EINVAL);
    }
    /* The longest namespace works end to end. */
    snprintf(url, sizeof url, "redis://:p%%40ss%%3Aw%%2Frd%%25@%s:%d", RH_HOST,
             srv->port);
    tb_app_config cfg;
    rh_config(&cfg, url, ns64);
    rh_app *ra = rh_app_start(&cfg);
    rh_assert_connected(ra->app, CONNECT_MS);
    rh_rec *sub = receiver(ra->app, 1, 1, "ns.ev");
    char chan[128];
    snprintf(chan, sizeof chan, "%s:event:ns.ev", ns64);
    publish_raw(srv, chan, "long-ns", 1);
    AWAIT(sub, 1);
    ASSERT_REC(sub, "long-ns");
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ auth */

/* AUTH works with a password (requirepass) and with an ACL user: events
 * flow both ways (dispatched, and published by an authenticated
 * redis-cli). */
static void auth_round_trip(const char *conf, const char *user,
                            const char *pass)
{
    rh_server *srv = rh_server_start(conf, user, pass);
    /* The server really wants credentials: an anonymous PING is refused. */
    rh_server anon = *srv;
    anon.user[0] = anon.pass[0] = '\0';
    char out[256];
    rh_cli(&anon, out, sizeof out, "PING");
    if (!strstr(out, "NOAUTH"))
        fail_msg("anonymous PING answered \"%s\", want NOAUTH", out);

    rh_app *ra = start_app(srv, user, pass, NULL);
    rh_rec *s0 = receiver(ra->app, 0, 1, "auth.ping");
    rh_rec *s1 = receiver(ra->app, 1, 1, "auth.ping");
    assert_rc(dispatch_wait_str(ra->app, "auth.ping", "dispatched", NULL), 0);
    publish_raw(srv, "taskbus:event:auth.ping", "published", 1);
    AWAIT(s0, 2);
    AWAIT(s1, 2);
    ASSERT_REC(s0, "dispatched", "published");
    ASSERT_REC(s1, "dispatched", "published");
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
    rh_server_destroy(srv);
}

static void test_auth_requirepass(void **state)
{
    (void)state;
    auth_round_trip("requirepass s3cret-pass\n", NULL, "s3cret-pass");
}

static void test_auth_acl_user(void **state)
{
    (void)state;
    auth_round_trip("user default off\n"
                    "user alice on >wonder-land ~* &* +@all\n",
                    "alice", "wonder-land");
}

/* Waits (10 s at most) until the bus, never connected meanwhile, has failed
 * attempts and last_error mentions word1 or word2 (case-insensitive); a
 * loaded machine may first report a timeout. Then checks that it keeps
 * retrying and failing. Returns the last status. */
static tb_bus_info await_refusal(tb_app *app, const char *word1,
                                 const char *word2)
{
    tb_bus_info info;
    int64_t end = th_mono_ms() + 10000;
    for (;;) {
        info = bus_info(app);
        if (info.state == TB_BUS_CONNECTED)
            fail_msg("connected, but the server refuses us");
        if (info.attempts > 0 && (strcasestr(info.last_error, word1) ||
                                  strcasestr(info.last_error, word2)))
            break;
        if (th_mono_ms() >= end)
            fail_msg("after 10 s: state %s, attempts %llu, last_error \"%s\" "
                     "does not mention %s or %s",
                     tb_bus_state_name(info.state),
                     (unsigned long long)info.attempts, info.last_error, word1,
                     word2);
        th_nap_ms(10);
    }
    uint64_t attempts = info.attempts;
    end = th_mono_ms() + 5000;
    while ((info = bus_info(app)).attempts < attempts + 2 &&
           info.state != TB_BUS_CONNECTED && th_mono_ms() < end)
        th_nap_ms(10);
    if (info.state == TB_BUS_CONNECTED || info.attempts < attempts + 2)
        fail_msg("not retrying: state %s, attempts %llu then %llu",
                 tb_bus_state_name(info.state), (unsigned long long)attempts,
                 (unsigned long long)info.attempts);
    assert_string_equal(info.name, "redis");
    return info;
}

/* A wrong password (requirepass) or a wrong ACL user password: the bus never
 * connects, last_error names the authentication failure (and not the
 * password), tb_dispatch returns TB_ENOTCONN, and the app stops cleanly. */
static void test_auth_wrong_password(void **state)
{
    (void)state;
    static const struct {
        const char *conf, *user, *pass, *wrong;
    } cases[] = {
        {"requirepass s3cret-pass\n", NULL, "s3cret-pass", "Xyzzy-not-it"},
        {"user default off\nuser alice on >wonder-land ~* &* +@all\n", "alice",
         "wonder-land", "Plugh-not-it"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rh_server *srv =
            rh_server_start(cases[i].conf, cases[i].user, cases[i].pass);
        char url[256];
        rh_server_url(srv, cases[i].user, cases[i].wrong, url, sizeof url);
        tb_app_config cfg;
        rh_config(&cfg, url, NULL);
        rh_app *ra = rh_app_start(&cfg);

        tb_bus_info info = await_refusal(ra->app, "auth", "wrongpass");
        if (strstr(info.last_error, cases[i].wrong))
            fail_msg("case %zu: last_error shows the password: \"%s\"", i,
                     info.last_error);
        assert_rc(dispatch_str(ra->app, "auth.ping", "x", NULL), TB_ENOTCONN);
        assert_rc(tb_dispatch_wait(ra->app, "auth.ping", "x", 1, 2000, NULL),
                  TB_ENOTCONN);
        assert_true(tb_app_is_running(ra->app));
        int64_t t0 = th_mono_ms();
        assert_rc(rh_app_stop(ra), 0);
        if (th_mono_ms() - t0 > 5000)
            fail_msg("case %zu: stopping took %lld ms", i,
                     (long long)(th_mono_ms() - t0));
        rh_server_destroy(srv);
    }
    th_assert_clean();
}

/* An ACL user that may not use the channels (no &*): authentication
 * works but PSUBSCRIBE is refused. The bus never reports connected,
 * last_error names the refusal, tb_dispatch returns TB_ENOTCONN, and the
 * app stops cleanly. */
static void test_acl_without_channel_permission(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start("user default off\n"
                                     "user bob on >bob-pass ~* resetchannels "
                                     "+@all\n",
                                     "bob", "bob-pass");
    char url[256];
    rh_server_url(srv, "bob", "bob-pass", url, sizeof url);
    tb_app_config cfg;
    rh_config(&cfg, url, NULL);
    rh_app *ra = rh_app_start(&cfg);
    await_refusal(ra->app, "PSUBSCRIBE", "NOPERM");
    assert_rc(dispatch_str(ra->app, "perm.ev", "x", NULL), TB_ENOTCONN);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ malformed */

/* Messages published raw that are not events: malformed envelopes and bad
 * event names in the channel. None reaches a receiver, the app keeps
 * running, tb_bus_info.malformed counts each one, and valid events sent
 * afterwards still arrive. */
static void test_malformed_messages_dropped(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv, NULL, NULL, NULL);
    rh_rec *sub = receiver(ra->app, 0, 1, "my.custom.event");
    rh_rec *other = receiver(ra->app, 1, 1, "other.event");
    rh_rec *waiter = rh_rec_new("my.custom.event");
    waiter->once = 1;
    assert_true(rh_spawn(ra->app, 1, 0, waiter, 5000));
    tb_bus_info before = bus_info(ra->app);

    char long_chan[400];
    snprintf(long_chan, sizeof long_chan, "taskbus:event:%0300d", 0);
    memset(long_chan + strlen("taskbus:event:"), 'a', 300);
    /* 3 000 levels of nesting: refused before jansson recurses into it
     * (json_max_depth). */
    static char deep[3000 * 6 + 128];
    size_t dn = (size_t)snprintf(deep, sizeof deep,
                                 "{\"id\":\"m-6\",\"name\":\"my.custom.event\","
                                 "\"data\":");
    for (int i = 0; i < 3000; i++)
        dn += (size_t)snprintf(deep + dn, sizeof deep - dn, "{\"a\":");
    deep[dn++] = '1';
    memset(deep + dn, '}', 3001);
    deep[dn + 3001] = '\0';
    const struct {
        const char *what, *chan, *msg;
    } bad[] = {
        {"data nested 3000 deep", "taskbus:event:my.custom.event", deep},
        {"invalid JSON starting with '{'", "taskbus:event:my.custom.event",
         "{\"id\":\"m-1\",\"name\":\"my.custom.event\",\"data\":"},
        {"numeric id", "taskbus:event:my.custom.event",
         "{\"id\":42,\"name\":\"my.custom.event\",\"data\":\"x\"}"},
        {"name not matching the channel", "taskbus:event:my.custom.event",
         "{\"id\":\"m-3\",\"name\":\"other.event\",\"data\":\"x\"}"},
        {"ts that is a string", "taskbus:event:my.custom.event",
         "{\"id\":\"m-4\",\"name\":\"my.custom.event\",\"data\":\"x\","
         "\"ts\":\"soon\"}"},
        {"data that is a boolean", "taskbus:event:my.custom.event",
         "{\"id\":\"m-5\",\"name\":\"my.custom.event\",\"data\":true}"},
        {"invalid name in the channel", "taskbus:event:bad name", "x"},
        {"300-byte name in the channel", long_chan, "x"},
        {"empty name in the channel", "taskbus:event:", "x"},
    };
    const size_t nbad = sizeof bad / sizeof bad[0];
    for (size_t i = 0; i < nbad; i++) {
        long n = rh_publish(srv, bad[i].chan, bad[i].msg);
        if (n < 1)
            fail_msg("%s: PUBLISH reached %ld subscribers: the app is not "
                     "listening on %.60s",
                     bad[i].what, n, bad[i].chan);
    }
    /* The same names are refused at the source. */
    assert_rc(dispatch_str(ra->app, "bad name", "x", NULL), TB_EINVAL);
    assert_rc(dispatch_str(ra->app, "", "x", NULL), TB_EINVAL);
    assert_rc(
        dispatch_str(ra->app, long_chan + strlen("taskbus:event:"), "x", NULL),
        TB_ENAMETOOLONG);

    publish_raw(srv, "taskbus:event:my.custom.event", "ok", 1);
    assert_rc(dispatch_wait_str(ra->app, "my.custom.event", "after", NULL), 0);
    AWAIT(sub, 2);
    AWAIT(waiter, 1);
    ASSERT_REC(sub, "ok", "after");
    ASSERT_REC(waiter, "ok");
    if (rh_rec_count(other) != 0) {
        rh_rec_dump(other, "other");
        fail_msg("other.event got the envelope named other.event that came on "
                 "my.custom.event's channel");
    }
    AWAIT_COUNTER(ra->app, before, malformed, nbad);
    tb_bus_info after = bus_info(ra->app);
    assert_int_equal(after.state, TB_BUS_CONNECTED);
    assert_int_equal(after.oversize, before.oversize);
    assert_true(tb_app_is_running(ra->app));
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ size limit */

/* With max_event_size 4096, an event of exactly 4096 bytes of data arrives
 * intact (its JSON envelope is larger: quotes, backslashes and newlines
 * are escaped), one of 4097 is refused with TB_EMSGSIZE; a raw message of
 * 5000 bytes and a raw envelope with 4097 bytes of data are dropped and
 * counted as oversize, a raw envelope with 4096 (escaped) bytes arrives. */
static void test_event_size_limit(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    tb_app_config cfg;
    rh_config(&cfg, NULL, NULL);
    cfg.core.max_event_size = 4096;
    rh_app *ra = start_app(srv, NULL, NULL, &cfg);
    rh_rec *s0 = receiver(ra->app, 0, 1, "big.data");
    rh_rec *s1 = receiver(ra->app, 1, 1, "big.data");
    tb_bus_info before = bus_info(ra->app);

    /* 512 chunks of 8 bytes: x " y \ z newline and a 2-byte e-acute. */
    static char text[4097 + 1], json[4096 + 1], raw[5000 + 1];
    for (int i = 0; i < 512; i++)
        memcpy(text + i * 8, "x\"y\\z\n\xc3\xa9", 8);
    text[4096] = '\0';
    /* A compact JSON object of exactly 4096 bytes: delivered as its text. */
    memset(json, 'j', 4096);
    memcpy(json, "{\"k\":\"", 6);
    memcpy(json + 4096 - 2, "\"}", 2);
    json[4096] = '\0';
    memset(raw, 'r', 5000);
    raw[5000] = '\0';

    assert_rc(tb_dispatch_wait(ra->app, "big.data", text, 4096, 5000, NULL), 0);
    assert_rc(tb_dispatch_wait(ra->app, "big.data", json, 4096, 5000, NULL), 0);
    text[4096] = 'x';
    assert_rc(tb_dispatch(ra->app, "big.data", text, 4097, NULL), TB_EMSGSIZE);
    assert_rc(tb_dispatch_wait(ra->app, "big.data", text, 4097, 5000, NULL),
              TB_EMSGSIZE);
    text[4096] = '\0';
    publish_raw(srv, "taskbus:event:big.data", raw, 1);
    /* Envelopes from another producer: the limit is on the data, not on
     * the message (4096 quotes are 8192 bytes escaped). */
    static char env_ok[9000], env_big[9000];
    char *p = env_ok + sprintf(env_ok, "{\"id\":\"big-1\",\"name\":"
                                       "\"big.data\",\"data\":\"");
    for (int i = 0; i < 4096; i++)
        p += sprintf(p, "\\\"");
    sprintf(p, "\"}");
    snprintf(env_big, sizeof env_big,
             "{\"id\":\"big-2\",\"name\":\"big.data\",\"data\":\"%04097d\"}",
             0);
    publish_raw(srv, "taskbus:event:big.data", env_ok, 1);
    publish_raw(srv, "taskbus:event:big.data", env_big, 1);
    publish_raw(srv, "taskbus:event:big.data", "small", 1);

    static char quotes[4097];
    memset(quotes, '"', 4096);
    AWAIT(s0, 4);
    AWAIT(s1, 4);
    ASSERT_REC(s0, text, json, quotes, "small");
    ASSERT_REC(s1, text, json, quotes, "small");
    rh_got g;
    assert_true(rh_rec_get(s0, 0, &g));
    assert_int_equal(g.len, 4096);
    assert_memory_equal(g.data, text, 4096);
    assert_true(rh_rec_get(s0, 1, &g));
    assert_int_equal(g.len, 4096);
    AWAIT_COUNTER(ra->app, before, oversize, 2);
    assert_int_equal(bus_info(ra->app).malformed, before.malformed);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ dispatch_wait */

typedef struct dw_task_ctx {
    th_counter done;
    atomic_int rc;
} dw_task_ctx;

static int dw_task(tb_task *self, void *arg)
{
    dw_task_ctx *c = arg;
    char id[TB_EVENT_ID_MAX];
    atomic_store(&c->rc, tb_dispatch_wait(tb_task_app(self), "dw.ev",
                                          "from-task", 9, 5000, id));
    th_counter_add(&c->done, 1);
    return 0;
}

/* tb_dispatch_wait returns 0 once Redis has acknowledged the PUBLISH (the
 * published counter already shows it), from a thread and from a task;
 * TB_ETIMEDOUT when the server does not answer in time (the event still
 * goes out later); TB_ENOTCONN while the server is down. */
static void test_dispatch_wait(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    tb_app_config cfg;
    rh_config(&cfg, NULL, NULL);
    cfg.redis.command_timeout_ms = 5000;
    rh_app *ra = start_app(srv, NULL, NULL, &cfg);
    rh_rec *s0 = receiver(ra->app, 0, 1, "dw.ev");
    tb_bus_info before = bus_info(ra->app);

    char id[TB_EVENT_ID_MAX] = "";
    assert_rc(dispatch_wait_str(ra->app, "dw.ev", "acked", id), 0);
    assert_true(id[0] != '\0');
    assert_int_equal(bus_info(ra->app).published, before.published + 1);
    assert_rc(tb_dispatch_wait(ra->app, "dw.ev", "default-timeout", 15,
                               TB_TIMEOUT_DEFAULT, NULL),
              0);

    dw_task_ctx c;
    th_counter_init(&c.done);
    atomic_init(&c.rc, 1);
    tb_task_opts o = th_opts(NULL, 1);
    assert_rc(tb_task_add(ra->app, dw_task, &c, &o, NULL), 0);
    assert_true(th_counter_wait_ge(&c.done, 1, ARRIVE_MS));
    assert_rc(atomic_load(&c.rc), 0);
    th_counter_destroy(&c.done);

    /* A server that does not answer: the wait times out, the event is
     * still published once it answers again. */
    rh_server_pause(srv);
    int64_t t0 = th_mono_ms();
    assert_rc(tb_dispatch_wait(ra->app, "dw.ev", "late", 4, 300, NULL),
              TB_ETIMEDOUT);
    int64_t took = th_mono_ms() - t0;
    rh_server_resume(srv);
    assert_true(took >= 290 && took < 2000);

    /* Down: refused at once. */
    AWAIT(s0, 4);
    rh_server_stop(srv);
    assert_down(ra->app);
    rh_server_restart(srv);
    rh_assert_connected(ra->app, CONNECT_MS);
    assert_rc(dispatch_wait_str(ra->app, "dw.ev", "back", NULL), 0);
    AWAIT(s0, 5);
    ASSERT_REC(s0, "acked", "default-timeout", "from-task", "late", "back");
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* A task that stops waiting in tb_dispatch_wait (cancelled, or timed out)
 * and ends before Redis confirms the event: the confirmation that comes
 * later must not touch the freed task (it did: a heap use-after-free in
 * on_confirmed, found by a websocket client that dispatched and reset at
 * once; ASan reports it, a Release build may crash). */
typedef struct gone_ctx {
    th_counter waiting, done;
    int timeout_ms;
} gone_ctx;

static int gone_task(tb_task *self, void *arg)
{
    gone_ctx *c = arg;
    th_counter_add(&c->waiting, 1);
    int rc = tb_dispatch_wait(tb_task_app(self), "dw.gone", "x", 1,
                              c->timeout_ms, NULL);
    TH_CHECKF(rc == TB_ECANCELED || rc == TB_ETIMEDOUT, "rc %s",
              tb_err_name(rc));
    th_counter_add(&c->done, 1);
    return 0;
}

static void test_dispatch_wait_outlived(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    tb_app_config cfg;
    rh_config(&cfg, NULL, NULL);
    cfg.redis.command_timeout_ms = 10000; /* the pause is not a dead link */
    cfg.redis.ping_interval_ms = 10000;
    rh_app *ra = start_app(srv, NULL, NULL, &cfg);
    rh_rec *s0 = receiver(ra->app, 0, 1, "dw.gone");
    assert_rc(dispatch_wait_str(ra->app, "dw.gone", "warm-up", NULL), 0);
    AWAIT(s0, 1);

    rh_server_pause(srv);
    gone_ctx c[2];
    char cancelled[32] = "";
    for (int i = 0; i < 2; i++) {
        th_counter_init(&c[i].waiting);
        th_counter_init(&c[i].done);
        /* 0: cancelled while waiting; 1: gives up after 100 ms. Generated
         * names: a chosen one would be claimed in (paused) Redis first. */
        c[i].timeout_ms = i == 0 ? 5000 : 100;
        tb_task_opts o = th_opts(NULL, i);
        o.flags = TB_TASK_EPHEMERAL; /* freed as soon as it ends */
        uint64_t id;
        assert_rc(tb_task_add(ra->app, gone_task, &c[i], &o, &id), 0);
        if (i == 0)
            snprintf(cancelled, sizeof cancelled, "task-%llu",
                     (unsigned long long)id);
        assert_true(th_counter_wait_ge(&c[i].waiting, 1, ARRIVE_MS));
    }
    th_nap_ms(20);
    assert_rc(tb_task_cancel(ra->app, cancelled, 2000), 0);
    for (int i = 0; i < 2; i++)
        assert_true(th_counter_wait_ge(&c[i].done, 1, ARRIVE_MS));
    th_nap_ms(50); /* both tasks are gone from the registry and freed */
    assert_int_equal(tb_task_get(ra->app, "gone-cancelled", NULL), TB_ENOENT);
    assert_int_equal(tb_task_get(ra->app, "gone-timeout", NULL), TB_ENOENT);
    tb_bus_info before = bus_info(ra->app);
    rh_server_resume(srv);
    /* Both confirmations arrive now, after their tasks. */
    AWAIT(s0, 3);
    int64_t end = th_mono_ms() + ARRIVE_MS;
    while (bus_info(ra->app).published < before.published + 2 &&
           th_mono_ms() < end)
        th_nap_ms(5);
    assert_true(bus_info(ra->app).published >= before.published + 2);
    th_nap_ms(50);
    assert_rc(dispatch_wait_str(ra->app, "dw.gone", "after", NULL), 0);
    AWAIT(s0, 4);
    assert_rc(rh_app_stop(ra), 0);
    for (int i = 0; i < 2; i++) {
        th_counter_destroy(&c[i].waiting);
        th_counter_destroy(&c[i].done);
    }
    th_assert_clean();
}

/* The same, for a task abandoned at the graceful timeout while it waits:
 * it consumed its (one-shot) cancel and waits again, as cleanup may. It
 * never resumes; the bus gives the unconfirmed event up at stop and calls
 * back after the task was freed (ASan: heap use-after-free in
 * on_confirmed, then a leaked confirmation). */
static int abandon_task(tb_task *self, void *arg)
{
    th_counter *waiting = arg;
    for (;;) {
        th_counter_add(waiting, 1);
        int rc =
            tb_dispatch_wait(tb_task_app(self), "dw.ab", "x", 1, 60000, NULL);
        if (rc != TB_ECANCELED)
            return rc;
    }
}

static void test_dispatch_wait_abandoned(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    tb_app_config cfg;
    rh_config(&cfg, NULL, NULL);
    cfg.redis.command_timeout_ms =
        1000; /* the stop gives the event up after it */
    cfg.redis.ping_interval_ms = 10000;
    cfg.core.graceful_timeout_ms = 300;
    rh_app *ra = start_app(srv, NULL, NULL, &cfg);
    th_counter waiting;
    th_counter_init(&waiting);
    rh_server_pause(srv);
    tb_task_opts o = th_opts(NULL, 0); /* a chosen name waits on Redis */
    o.flags = TB_TASK_EPHEMERAL;
    assert_rc(tb_task_add(ra->app, abandon_task, &waiting, &o, NULL), 0);
    assert_true(th_counter_wait_ge(&waiting, 1, ARRIVE_MS));
    th_nap_ms(50);
    /* Abandoned: the stop reports it; the event is given up at bus stop. */
    assert_rc(rh_app_stop(ra), TB_ETIMEDOUT);
    assert_true(th_counter_get(&waiting) >= 2); /* it did wait again */
    rh_server_resume(srv);
    th_counter_destroy(&waiting);
}

/* ------------------------------------------------------------ queue bound */

/* publish_queue_max = 8 against a stopped (SIGSTOP) server: 8 dispatches
 * are accepted and wait for Redis, the 9th gets TB_ENOSPC; once the server
 * runs again all 8 arrive in order, the queue drains and dispatch works. */
static void test_publish_queue_max(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    tb_app_config cfg;
    rh_config(&cfg, NULL, NULL);
    cfg.redis.publish_queue_max = 8;
    cfg.redis.command_timeout_ms = 10000; /* the pause is not a dead link */
    cfg.redis.ping_interval_ms = 10000;
    rh_app *ra = start_app(srv, NULL, NULL, &cfg);
    rh_rec *s0 = receiver(ra->app, 0, 1, "q.ev");
    rh_rec *s1 = receiver(ra->app, 1, 1, "q.ev");
    /* Idle: nothing queued before the pause. */
    assert_rc(dispatch_wait_str(ra->app, "q.ev", "warm-up", NULL), 0);
    AWAIT(s0, 1);
    assert_int_equal(bus_info(ra->app).queued, 0);

    rh_server_pause(srv);
    char data[8][8];
    for (int i = 0; i < 8; i++) {
        snprintf(data[i], sizeof data[i], "q%d", i);
        assert_rc(dispatch_str(ra->app, "q.ev", data[i], NULL), 0);
    }
    assert_rc(dispatch_str(ra->app, "q.ev", "q8", NULL), TB_ENOSPC);
    assert_rc(tb_dispatch_wait(ra->app, "q.ev", "q9", 2, 1000, NULL),
              TB_ENOSPC);
    tb_bus_info info = bus_info(ra->app);
    assert_int_equal(info.queued, 8);
    assert_int_equal(info.state, TB_BUS_CONNECTED);
    rh_server_resume(srv);

    AWAIT(s0, 9);
    AWAIT(s1, 9);
    int64_t end = th_mono_ms() + ARRIVE_MS;
    while (bus_info(ra->app).queued != 0 && th_mono_ms() < end)
        th_nap_ms(5);
    assert_int_equal(bus_info(ra->app).queued, 0);
    assert_rc(dispatch_wait_str(ra->app, "q.ev", "after", NULL), 0);
    AWAIT(s0, 10);
    AWAIT(s1, 10);
    ASSERT_REC(s0, "warm-up", "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7",
               "after");
    ASSERT_REC(s1, "warm-up", "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7",
               "after");
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ main */

#define T(fn) RH_TEST(fn)

/* TB_ITEST_FILTER=<glob> runs only the tests whose names match. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_two_instances_in_two_processes),
        T(test_cli_publish_reaches_waiter),
        T(test_cli_publish_json),
        T(test_wire_format),
        T(test_namespaces_isolate),
        T(test_patterns_over_redis),
        T(test_server_restart),
        T(test_server_hangs),
        T(test_duplicate_ids_dropped),
        T(test_start_before_server),
        T(test_connection_killed),
        T(test_redis_url_forms),
        T(test_auth_requirepass),
        T(test_auth_acl_user),
        T(test_auth_wrong_password),
        T(test_acl_without_channel_permission),
        T(test_malformed_messages_dropped),
        T(test_event_size_limit),
        T(test_dispatch_wait),
        T(test_dispatch_wait_outlived),
        T(test_dispatch_wait_abandoned),
        T(test_publish_queue_max),
    };
    return rh_run_group("redis_bus", tests);
}
