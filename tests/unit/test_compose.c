/* test_compose.c - unit tests for the composition point (adapters/
 * compose.c): tb_app_new picks the event bus and the HTTP server from the
 * settings, among the adapters this build has (TB_WITH_HTTP,
 * TB_WITH_REDIS), and refuses with a clear line a setting whose adapter the
 * build lacks. Through the public API; the HTTP server is reached on
 * 127.0.0.1 only. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

#ifndef TB_WITH_HTTP
#error "TB_WITH_HTTP comes from the build (taskbus_internal)"
#endif
#ifndef TB_WITH_REDIS
#error "TB_WITH_REDIS comes from the build (taskbus_internal)"
#endif

/* ------------------------------------------------------------ the log */

static struct {
    pthread_mutex_t mu;
    char text[8192]; /* the ERROR lines, one after the other */
} g_errors = {PTHREAD_MUTEX_INITIALIZER, ""};

static void capture(tb_log_level level, const char *msg, void *ud)
{
    (void)ud;
    if (level < TB_LOG_ERROR)
        return;
    pthread_mutex_lock(&g_errors.mu);
    size_t n = strlen(g_errors.text);
    snprintf(g_errors.text + n, sizeof g_errors.text - n, "%s\n", msg);
    pthread_mutex_unlock(&g_errors.mu);
}

static int setup(void **state)
{
    (void)state;
    g_errors.text[0] = '\0';
    tb_log_set_handler(capture, NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tb_log_set_handler(NULL, NULL);
    return 0;
}

/* 1 if an ERROR line logged since setup holds every one of the words. */
static int logged(const char *a, const char *b)
{
    pthread_mutex_lock(&g_errors.mu);
    int found = 0;
    for (const char *line = g_errors.text; *line && !found;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char one[2048];
        snprintf(one, sizeof one, "%.*s", (int)len, line);
        found = strstr(one, a) && strstr(one, b);
        line += len + (end != NULL);
    }
    pthread_mutex_unlock(&g_errors.mu);
    return found;
}

static const char *bus_name(tb_app *app)
{
    static tb_bus_info info;
    assert_int_equal(tb_bus_status(app, &info), 0);
    return info.name;
}

/* ------------------------------------------------------------ the bus */

static void test_no_redis_url_is_the_memory_bus(void **state)
{
    (void)state;
    int err = 1;
    tb_app *app = tb_app_new(NULL, &err);
    assert_non_null(app);
    assert_int_equal(err, 0);
    assert_string_equal(bus_name(app), "memory");
    tb_app_free(app);

    tb_app_config c;
    tb_app_config_init(&c);
    c.redis.url = ""; /* empty is unset */
    app = tb_app_new(&c, &err);
    assert_non_null(app);
    assert_string_equal(bus_name(app), "memory");
    tb_app_free(app);
}

static void test_redis_url_is_the_redis_bus(void **state)
{
    (void)state;
    tb_app_config c;
    tb_app_config_init(&c);
    /* Nothing connects before tb_app_run: the port is never tried. */
    c.redis.url = "redis://127.0.0.1:1/0";
    int err = 1;
    tb_app *app = tb_app_new(&c, &err);
#if TB_WITH_REDIS
    assert_non_null(app);
    assert_int_equal(err, 0);
    assert_string_equal(bus_name(app), "redis");
    tb_app_free(app);
    /* The Redis adapter's own checks still apply. */
    c.redis.url = "rediss://127.0.0.1:1";
    assert_null(tb_app_new(&c, &err));
    assert_int_equal(err, TB_EINVAL);
    assert_true(logged("invalid redis_url", "TLS"));
#else
    assert_null(app);
    assert_int_equal(err, TB_EINVAL);
    assert_true(logged("redis_url", "TB_WITH_REDIS=OFF"));
#endif
}

/* ------------------------------------------------------------ HTTP */

/* A loopback port nobody listens on now (bound, then released). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

typedef struct probe {
    int port;
    char status_line[64]; /* what GET /compose answered, or "" */
} probe;

static int answer_ok(tb_http_req *req, void *ud)
{
    (void)ud;
    return tb_http_respond(req, 200, "text/plain", "composed", 8);
}

/* MAIN_READY, on the thread that runs the app: one request to the port,
 * then stop. Civetweb's threads answer it. */
static int ask_then_stop(tb_app *app, int worker, void *arg)
{
    (void)worker;
    probe *p = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)p->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        static const char req[] = "GET /compose HTTP/1.0\r\n\r\n";
        if (write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
            ssize_t n = read(fd, p->status_line, sizeof p->status_line - 1);
            p->status_line[n > 0 ? n : 0] = '\0';
            char *eol = strchr(p->status_line, '\r');
            if (eol)
                *eol = '\0';
        }
    }
    if (fd >= 0)
        close(fd);
    tb_app_stop(app);
    return 0;
}

/* Runs an app with one route and http.listen set to listen (or unset),
 * asking it once; returns what came back ("" when nothing listened). */
static void run_with_route(const char *listen, probe *p)
{
    tb_app_config c;
    tb_app_config_init(&c);
    c.core.workers = 1;
    c.http.listen = listen;
    c.http.threads = 2;
    int err = 1;
    tb_app *app = tb_app_new(&c, &err);
    assert_non_null(app);
    assert_int_equal(tb_app_add_route(app, "GET", "/compose", answer_ok, NULL),
                     0);
    assert_int_equal(tb_app_add_listener(app, TB_MAIN_READY, ask_then_stop, p),
                     0);
    assert_int_equal(tb_app_run(app), 0);
    tb_app_free(app);
}

static void test_http_listen_is_the_http_server(void **state)
{
    (void)state;
    probe p = {.port = free_port()};
    char listen[32];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", p.port);
#if TB_WITH_HTTP
    run_with_route(listen, &p);
    assert_string_equal(p.status_line, "HTTP/1.1 200 OK");
#else
    tb_app_config c;
    tb_app_config_init(&c);
    c.http.listen = listen;
    int err = 1;
    assert_null(tb_app_new(&c, &err));
    assert_int_equal(err, TB_EINVAL);
    assert_true(logged("http_listen", "TB_WITH_HTTP=OFF"));
#endif
}

/* Routes without http.listen: the app runs, and nothing listens. */
static void test_no_http_listen_serves_nothing(void **state)
{
    (void)state;
    probe p = {.port = free_port()};
    run_with_route(NULL, &p);
    assert_string_equal(p.status_line, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_no_redis_url_is_the_memory_bus,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_url_is_the_redis_bus, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_http_listen_is_the_http_server,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_http_listen_serves_nothing,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
