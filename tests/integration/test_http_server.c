/* test_http_server.c - integration tests of the HTTP server
 * (adapters/http_civetweb.c with service/http.c): a real app listening on a
 * free 127.0.0.1 port, driven by a small blocking HTTP/1.1 client over
 * plain sockets. Routing answers (200, 404, 405 with Allow, 400 for an
 * encoded '/'), the raw path, body limits (Content-Length and chunked),
 * X-Request-ID, keep-alive, HEAD, a handler that never answers, many
 * concurrent clients, and start-up failures. */
#include "redis_harness.h" /* rh_free_port; TH_CHECK*, th_run_thread */

#include <stdatomic.h>

#include <jansson.h>

#include "internal.h" /* app->http_front_answered */

#define MAX_BODY 4096
#define IO_TIMEOUT_S 5
#define RUN_TIMEOUT_MS 60000

/* ------------------------------------------------------------ the app */

static int on_hello(tb_http_req *req, void *ud)
{
    (void)ud;
    json_t *o = json_pack("{s:s}", "hello", tb_http_param(req, "who"));
    char *s = json_dumps(o, JSON_COMPACT);
    tb_http_respond_json(req, 200, s);
    free(s);
    json_decref(o);
    return 0;
}

static int on_echo(tb_http_req *req, void *ud)
{
    (void)ud;
    size_t len;
    const void *body = tb_http_body(req, &len);
    tb_http_respond(req, 200, "application/octet-stream", body, len);
    return 0;
}

/* {"p": param, "path": raw path, "q": decoded query q or null} */
static int on_x(tb_http_req *req, void *ud)
{
    (void)ud;
    char q[64];
    int qn = tb_http_query(req, "q", q, sizeof q);
    json_t *o = json_pack("{s:s,s:s,s:o}", "p", tb_http_param(req, "p"), "path",
                          tb_http_path(req), "q",
                          qn >= 0 ? json_string(q) : json_null());
    char *s = json_dumps(o, JSON_COMPACT);
    tb_http_respond_json(req, 200, s);
    free(s);
    json_decref(o);
    return 0;
}

static int on_silent(tb_http_req *req, void *ud)
{
    (void)req;
    (void)ud;
    return 0;
}

static int port_;

/* A new app of one worker with the routes above, listening on listen, or
 * with NULL on a free loopback port (kept in port_, where the client
 * connects). Main thread (cmocka). */
static tb_app *new_app(const char *listen)
{
    char addr[32];
    if (!listen) {
        port_ = rh_free_port();
        assert_true(port_ > 0);
        snprintf(addr, sizeof addr, "127.0.0.1:%d", port_);
        listen = addr;
    }
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.core.handle_signals = 0;
    cfg.http.listen = listen;
    cfg.http.threads = 16;
    cfg.http.max_body = MAX_BODY;
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(tb_app_add_route(app, "GET", "/hello/{who}", on_hello, NULL), 0);
    assert_rc(tb_app_add_route(app, "POST", "/echo", on_echo, NULL), 0);
    assert_rc(tb_app_add_route(app, "GET", "/x/{p}", on_x, NULL), 0);
    assert_rc(tb_app_add_route(app, "GET", "/silent", on_silent, NULL), 0);
    return app;
}

/* ------------------------------------------------------------ client */

typedef struct client {
    int fd;
    size_t n; /* bytes in buf not yet consumed */
    char buf[16384];
} client;

typedef struct resp {
    int status;
    char head[4096]; /* status line and headers */
    size_t len;      /* Content-Length */
    char body[MAX_BODY + 1024];
} resp;

static int cl_open(client *c)
{
    c->n = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    struct timeval tv = {IO_TIMEOUT_S, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port_)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

static void cl_close(client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

/* Sends everything (a failure is left to the read that follows). */
static void cl_send(client *c, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

/* Reads more into buf; 0 on EOF, timeout or error. */
static int cl_fill(client *c)
{
    if (c->n == sizeof c->buf)
        return 0;
    ssize_t n = recv(c->fd, c->buf + c->n, sizeof c->buf - c->n, 0);
    if (n <= 0)
        return 0;
    c->n += (size_t)n;
    return 1;
}

static void cl_consume(client *c, size_t k)
{
    memmove(c->buf, c->buf + k, c->n - k);
    c->n -= k;
}

/* The value of header name in r (first one), copied into out; 1 if found. */
static int header(const resp *r, const char *name, char *out, size_t outsz)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p && p[2];
         p = strstr(p + 2, "\r\n")) {
        const char *h = p + 2;
        if (strncasecmp(h, name, nl) == 0 && h[nl] == ':') {
            h += nl + 1;
            h += strspn(h, " ");
            size_t vl = strcspn(h, "\r");
            if (vl >= outsz)
                vl = outsz - 1;
            memcpy(out, h, vl);
            out[vl] = '\0';
            return 1;
        }
    }
    return 0;
}

/* Reads one response (skipping 100 Continue). For HEAD, no body is read.
 * Returns 0, or -1 if the connection ended or timed out first. */
static int cl_read(client *c, resp *r, int head)
{
    memset(r, 0, offsetof(resp, body));
    r->body[0] = '\0';
    for (;;) {
        char *end;
        while (!(end = memmem(c->buf, c->n, "\r\n\r\n", 4)))
            if (!cl_fill(c))
                return -1;
        size_t hl = (size_t)(end - c->buf) + 4;
        if (hl >= sizeof r->head ||
            sscanf(c->buf, "HTTP/1.1 %d", &r->status) != 1)
            return -1;
        memcpy(r->head, c->buf, hl - 2);
        r->head[hl - 2] = '\0';
        cl_consume(c, hl);
        if (r->status != 100)
            break;
    }
    char v[32];
    if (!header(r, "Content-Length", v, sizeof v))
        return -1;
    r->len = strtoul(v, NULL, 10);
    if (head)
        return 0;
    if (r->len >= sizeof r->body)
        return -1;
    while (c->n < r->len)
        if (!cl_fill(c))
            return -1;
    memcpy(r->body, c->buf, r->len);
    r->body[r->len] = '\0';
    cl_consume(c, r->len);
    return 0;
}

/* Sends "<method> <target> HTTP/1.1" with extra headers (each ending in
 * \r\n) and a Content-Length body when body is not NULL, then reads the
 * answer into r. Returns cl_read's result. */
static int cl_request(client *c, const char *method, const char *target,
                      const char *extra, const char *body, size_t len, resp *r)
{
    char head[1024];
    int n = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: test\r\n%s",
                     method, target, extra ? extra : "");
    if (body)
        n += snprintf(head + n, sizeof head - (size_t)n,
                      "Content-Length: %zu\r\n", len);
    n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    cl_send(c, head, (size_t)n);
    if (body)
        cl_send(c, body, len);
    return cl_read(c, r, strcmp(method, "HEAD") == 0);
}

/* One request on a new connection. */
static int request(const char *method, const char *target, const char *extra,
                   const char *body, size_t len, resp *r)
{
    client *c = malloc(sizeof *c);
    if (!c || cl_open(c) != 0) {
        free(c);
        return -1;
    }
    int rc = cl_request(c, method, target, extra, body, len, r);
    cl_close(c);
    free(c);
    return rc;
}

/* 1 once the server has closed c (EOF) within IO_TIMEOUT_S. */
static int cl_closed_by_server(client *c)
{
    char b[256];
    ssize_t n;
    while ((n = recv(c->fd, b, sizeof b, 0)) > 0)
        ;
    return n == 0 || errno == ECONNRESET;
}

/* The JSON error body {"error": code, "message": non-empty}. */
static int is_error(const resp *r, const char *code)
{
    json_t *o = json_loads(r->body, 0, NULL);
    const char *e = json_string_value(json_object_get(o, "error"));
    const char *m = json_string_value(json_object_get(o, "message"));
    int ok = e && strcmp(e, code) == 0 && m && m[0];
    json_decref(o);
    return TH_CHECKF(ok, "want error \"%s\", got %d %s", code, r->status,
                     r->body);
}

static resp *new_resp(void)
{
    resp *r = malloc(sizeof *r);
    TH_CHECK(r != NULL);
    return r;
}

/* ------------------------------------------------------------ tests */

TH_APP_TEST(test_param, new_app(NULL), RUN_TIMEOUT_MS)
{
    (void)app;
    resp *r = new_resp();
    char v[64];
    TH_CHECK_EQ(request("GET", "/hello/w%C3%B6rld%20x", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 200);
    TH_CHECK_STR(r->body, "{\"hello\":\"w\xc3\xb6rld x\"}");
    TH_CHECK(header(r, "Content-Type", v, sizeof v));
    TH_CHECK_STR(v, "application/json");
    free(r);
}

TH_APP_TEST(test_errors, new_app(NULL), RUN_TIMEOUT_MS)
{
    (void)app;
    resp *r = new_resp();
    char v[64];
    TH_CHECK_EQ(request("GET", "/nope", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 404);
    is_error(r, "not_found");
    TH_CHECK(header(r, "X-Request-ID", v, sizeof v));

    TH_CHECK_EQ(request("DELETE", "/hello/a", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 405);
    is_error(r, "method_not_allowed");
    TH_CHECK(header(r, "Allow", v, sizeof v));
    TH_CHECK_STR(v, "GET, HEAD");

    TH_CHECK_EQ(request("GET", "/silent", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 500);
    is_error(r, "internal");
    free(r);
}

/* The router sees the path as sent: %2F stays an escape (400), %2541 is
 * decoded once ("%41"), and the query is passed on raw. */
TH_APP_TEST(test_raw_path, new_app(NULL), RUN_TIMEOUT_MS)
{
    (void)app;
    resp *r = new_resp();
    TH_CHECK_EQ(request("GET", "/x/a%2Fb", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 400);
    is_error(r, "bad_path");

    TH_CHECK_EQ(request("GET", "/x/%2541?q=a%20b+c", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 200);
    TH_CHECK_STR(r->body,
                 "{\"p\":\"%41\",\"path\":\"/x/%2541\",\"q\":\"a b c\"}");

    /* Dot segments are not resolved for the router either. */
    TH_CHECK_EQ(request("GET", "/x/../hello/a", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 404);
    free(r);
}

static void send_chunked(client *c, const char *body, size_t len, size_t step)
{
    char head[128];
    cl_send(c,
            "POST /echo HTTP/1.1\r\nHost: test\r\n"
            "Transfer-Encoding: chunked\r\n\r\n",
            strlen("POST /echo HTTP/1.1\r\nHost: test\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n"));
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        int hl = snprintf(head, sizeof head, "%zx\r\n", n);
        cl_send(c, head, (size_t)hl);
        cl_send(c, body + off, n);
        cl_send(c, "\r\n", 2);
    }
    cl_send(c, "0\r\n\r\n", 5);
}

TH_APP_TEST(test_body_limits, new_app(NULL), RUN_TIMEOUT_MS)
{
    (void)app;
    resp *r = new_resp();
    client *c = malloc(sizeof *c);
    char *big = malloc(2 * MAX_BODY);
    char v[64];
    if (!r || !c || !big)
        goto out;
    for (size_t i = 0; i < 2 * MAX_BODY; i++)
        big[i] = (char)('a' + i % 26);

    /* Exactly the limit: accepted and echoed, the connection stays. */
    TH_CHECK_EQ(cl_open(c), 0);
    TH_CHECK_EQ(cl_request(c, "POST", "/echo", NULL, big, MAX_BODY, r), 0);
    TH_CHECK_EQ(r->status, 200);
    TH_CHECK(r->len == MAX_BODY && memcmp(r->body, big, MAX_BODY) == 0);
    /* Chunked within the limit, on the same connection. */
    send_chunked(c, big, MAX_BODY, 1000);
    TH_CHECK_EQ(cl_read(c, r, 0), 0);
    TH_CHECK_EQ(r->status, 200);
    TH_CHECK(r->len == MAX_BODY && memcmp(r->body, big, MAX_BODY) == 0);
    /* One byte over (Content-Length): 413 at once, then closed. */
    TH_CHECK_EQ(cl_request(c, "POST", "/echo", "X-Request-ID: big-1\r\n", big,
                           MAX_BODY + 1, r),
                0);
    TH_CHECK_EQ(r->status, 413);
    is_error(r, "too_large");
    TH_CHECK(header(r, "Connection", v, sizeof v));
    TH_CHECK_STR(v, "close");
    TH_CHECK(header(r, "X-Request-ID", v, sizeof v));
    TH_CHECK(cl_closed_by_server(c));
    cl_close(c);

    /* A declared size far over the limit is refused before any body. */
    TH_CHECK_EQ(cl_open(c), 0);
    const char *huge = "POST /echo HTTP/1.1\r\nHost: test\r\n"
                       "Content-Length: 1000000000\r\n\r\n";
    cl_send(c, huge, strlen(huge));
    TH_CHECK_EQ(cl_read(c, r, 0), 0);
    TH_CHECK_EQ(r->status, 413);
    cl_close(c);

    /* Chunked over the limit: 413 once the count passes it. */
    TH_CHECK_EQ(cl_open(c), 0);
    send_chunked(c, big, MAX_BODY + 1, 1000);
    TH_CHECK_EQ(cl_read(c, r, 0), 0);
    TH_CHECK_EQ(r->status, 413);
    is_error(r, "too_large");
    TH_CHECK(cl_closed_by_server(c));
    cl_close(c);
out:
    free(big);
    free(c);
    free(r);
}

TH_APP_TEST(test_request_id, new_app(NULL), RUN_TIMEOUT_MS)
{
    (void)app;
    resp *r = new_resp();
    char a[80], b[80];
    TH_CHECK_EQ(
        request("GET", "/hello/a", "X-Request-ID: my-id.42\r\n", NULL, 0, r),
        0);
    TH_CHECK(header(r, "X-Request-ID", a, sizeof a));
    TH_CHECK_STR(a, "my-id.42");
    TH_CHECK_EQ(request("GET", "/hello/a", NULL, NULL, 0, r), 0);
    TH_CHECK(header(r, "X-Request-ID", a, sizeof a) && a[0]);
    TH_CHECK_EQ(request("GET", "/nope", NULL, NULL, 0, r), 0);
    TH_CHECK(header(r, "X-Request-ID", b, sizeof b) && b[0]);
    TH_CHECKF(strcmp(a, b) != 0, "generated ids repeat: %s", a);
    free(r);
}

/* Three requests on one connection, and HEAD without a body between them
 * (the next answer parses only if no body bytes followed the HEAD's). */
TH_APP_TEST(test_keep_alive_head, new_app(NULL), RUN_TIMEOUT_MS)
{
    (void)app;
    resp *r = new_resp();
    client *c = malloc(sizeof *c);
    char v[64];
    if (!r || !c || !TH_CHECK_EQ(cl_open(c), 0))
        goto out;
    TH_CHECK_EQ(cl_request(c, "GET", "/hello/one", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 200);
    size_t get_len = r->len;
    TH_CHECK(header(r, "Connection", v, sizeof v));
    TH_CHECK_STR(v, "keep-alive");
    TH_CHECK_EQ(cl_request(c, "HEAD", "/hello/one", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 200);
    TH_CHECK_EQ(r->len, get_len);
    TH_CHECK(header(r, "X-Request-ID", v, sizeof v));
    TH_CHECK_EQ(cl_request(c, "POST", "/echo", NULL, "two", 3, r), 0);
    TH_CHECK_EQ(r->status, 200);
    TH_CHECK_STR(r->body, "two");
    TH_CHECK_EQ(cl_request(c, "GET", "/hello/three", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 200);
    TH_CHECK_STR(r->body, "{\"hello\":\"three\"}");
    TH_CHECK_EQ(c->n, 0);
    /* Connection: close is honoured. */
    TH_CHECK_EQ(cl_request(c, "GET", "/hello/four", "Connection: close\r\n",
                           NULL, 0, r),
                0);
    TH_CHECK(header(r, "Connection", v, sizeof v));
    TH_CHECK_STR(v, "close");
    TH_CHECK(cl_closed_by_server(c));
    cl_close(c);
out:
    free(c);
    free(r);
}

/* ------------------------------------------------------------ /healthz
 * answered by the front (healthz_start) with a worker stuck: the front's
 * own 1 s deadline answers 503 worker_stuck naming it (GET and HEAD), and
 * probes whose clients vanish meanwhile do not keep the front's
 * http.threads places: a POST /events after more of them than there are
 * places is still answered by the front. */

static th_counter stuck_started = TH_COUNTER_INITIALIZER;

/* Blocks its worker's loop (what a buggy task calling sleep() does). */
static int stuck(tb_task *self, void *arg)
{
    (void)self;
    (void)arg;
    th_counter_add(&stuck_started, 1);
    th_nap_ms(4000);
    return 0;
}

static tb_app *health_app(void)
{
    port_ = rh_free_port();
    assert_true(port_ > 0);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port_);
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 2;
    cfg.core.graceful_timeout_ms = 6000;
    cfg.core.handle_signals = 0;
    cfg.http.listen = addr;
    cfg.http.threads = 4;
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(tb_app_add_api(app), 0);
    return app;
}

/* taskbus_http_front_answered_total (/metrics is longer than resp). */
static long front_answered(tb_app *app)
{
    return (long)atomic_load(&app->http_front_answered);
}

TH_APP_TEST(test_healthz_front_stuck, health_app(), RUN_TIMEOUT_MS)
{
    resp *r = new_resp();
    if (!r)
        return;
    TH_CHECK_EQ(request("GET", "/healthz", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 200);
    TH_CHECK_RC(th_add(app, "stuck", 1, stuck, NULL, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&stuck_started, 1, 5000));

    /* Twice http.threads probes that vanish (a reset: a client that only
     * half-closes still waits for its answer, and keeps its place until
     * the deadline), then a POST: answered by the front, not relayed for
     * want of a place. */
    long before = front_answered(app);
    TH_CHECK(before >= 1);
    for (int i = 0; i < 8; i++) {
        client c;
        if (!TH_CHECK_EQ(cl_open(&c), 0))
            break;
        struct linger lg = {1, 0};
        setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        static const char probe[] = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
        cl_send(&c, probe, sizeof probe - 1);
        th_nap_ms(20); /* read by the front before the client leaves */
        cl_close(&c);
    }
    th_nap_ms(200);
    TH_CHECK_EQ(request("POST", "/events/h.x", NULL, "1", 1, r), 0);
    TH_CHECK_EQ(r->status, 202);
    long after = front_answered(app);
    TH_CHECKF(after == before + 9,
              "front answered %ld more, want 9 (8 "
              "vanished probes, the POST)",
              after - before);

    /* The front's deadline: 503 naming worker 1, GET and HEAD. */
    int64_t t0 = th_mono_ms();
    TH_CHECK_EQ(request("GET", "/healthz", NULL, NULL, 0, r), 0);
    int64_t dt = th_mono_ms() - t0;
    TH_CHECK_EQ(r->status, 503);
    is_error(r, "worker_stuck");
    TH_CHECKF(strstr(r->body, "\"stuck\":[1]") != NULL, "body %s", r->body);
    TH_CHECKF(dt >= 900 && dt < 3000, "worker_stuck after %lld ms",
              (long long)dt);
    TH_CHECK_EQ(request("HEAD", "/healthz", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 503);
    TH_CHECK(r->len > 0);
    TH_CHECK(th_wait_state(app, "stuck", TB_TASK_DONE, 10000));
    TH_CHECK_EQ(request("GET", "/healthz", NULL, NULL, 0, r), 0);
    TH_CHECK_EQ(r->status, 200);
    free(r);
}

#define CONC_THREADS 8
#define CONC_EACH 25

static atomic_int conc_ok;

static void *conc_thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    resp *r = malloc(sizeof *r);
    char target[64], want[64];
    for (int i = 0; r && i < CONC_EACH; i++) {
        snprintf(target, sizeof target, "/hello/t%d-%d", t, i);
        snprintf(want, sizeof want, "{\"hello\":\"t%d-%d\"}", t, i);
        if (request("GET", target, NULL, NULL, 0, r) == 0 && r->status == 200 &&
            strcmp(r->body, want) == 0)
            atomic_fetch_add(&conc_ok, 1);
    }
    free(r);
    return NULL;
}

TH_APP_TEST(test_concurrent, new_app(NULL), RUN_TIMEOUT_MS)
{
    (void)app;
    pthread_t th[CONC_THREADS];
    atomic_store(&conc_ok, 0);
    for (int i = 0; i < CONC_THREADS; i++)
        TH_CHECK_EQ(
            pthread_create(&th[i], NULL, conc_thread, (void *)(intptr_t)i), 0);
    for (int i = 0; i < CONC_THREADS; i++)
        pthread_join(th[i], NULL);
    TH_CHECK_EQ(atomic_load(&conc_ok), CONC_THREADS * CONC_EACH);
}

/* A port in use and bad addresses: tb_app_run fails with TB_EINVAL. */
static void test_start_failure(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 1), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    char busy[32];
    snprintf(busy, sizeof busy, "127.0.0.1:%d", ntohs(a.sin_port));

    /* A port in use fails at run. */
    tb_app *app = new_app(busy);
    int rc = tb_app_run(app);
    tb_app_free(app);
    if (rc != TB_EINVAL)
        fail_msg("http_listen \"%s\" (in use): %s, want TB_EINVAL", busy,
                 tb_err_name(rc));
    close(fd);
    /* A malformed address is a bad config: tb_app_new refuses it. */
    const char *bad[] = {"127.0.0.1:0",    "127.0.0.1:70000",
                         "300.1.1.1:8080", "127.0.0.1:80s",
                         "8080",           "example.com:8080"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tb_app_config cfg;
        tb_app_config_init(&cfg);
        cfg.http.listen = bad[i];
        int err = 0;
        tb_app *a = tb_app_new(&cfg, &err);
        if (a || err != TB_EINVAL)
            fail_msg("http_listen \"%s\": tb_app_new gave %s, want "
                     "TB_EINVAL",
                     bad[i], a ? "an app" : tb_err_name(err));
        tb_app_free(a);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_param),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_raw_path),
        cmocka_unit_test(test_body_limits),
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_keep_alive_head),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_healthz_front_stuck),
        cmocka_unit_test(test_start_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
