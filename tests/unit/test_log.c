/* test_log.c - unit tests for service/log.c (levels, handlers, line format,
 * truncation, concurrent logging). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "taskbus/taskbus.h"

/* ---------------------------------------------------------------- capture */

typedef struct {
    pthread_mutex_t mu;
    int calls;
    tb_log_level last_level;
    char last[TB__LOG_MSG_MAX + 64];
    size_t last_len;
    void *last_ud;
} capture;

static capture cap = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void capture_fn(tb_log_level level, const char *msg, void *ud)
{
    pthread_mutex_lock(&cap.mu);
    cap.calls++;
    cap.last_level = level;
    cap.last_len = strlen(msg);
    snprintf(cap.last, sizeof cap.last, "%s", msg);
    cap.last_ud = ud;
    pthread_mutex_unlock(&cap.mu);
}

static int setup(void **state)
{
    (void)state;
    tb_log_set_handler(NULL, NULL);
    tb_log_set_level(TB_LOG_INFO);
    pthread_mutex_lock(&cap.mu);
    cap.calls = 0;
    cap.last[0] = '\0';
    cap.last_len = 0;
    cap.last_ud = NULL;
    pthread_mutex_unlock(&cap.mu);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tb_log_set_handler(NULL, NULL);
    tb_log_set_level(TB_LOG_INFO);
    return 0;
}

/* Runs with fd 2 pointed at a fresh temp file (O_APPEND), then reads it
 * back into a malloc'ed string the caller frees. */
typedef struct {
    int saved;
    int fd;
    char path[64];
} stderr_redirect;

static void redirect_stderr(stderr_redirect *r)
{
    strcpy(r->path, "/tmp/test_log_XXXXXX");
    int fd = mkstemp(r->path);
    assert_true(fd >= 0);
    close(fd);
    r->fd = open(r->path, O_WRONLY | O_APPEND);
    assert_true(r->fd >= 0);
    fflush(stderr);
    r->saved = dup(STDERR_FILENO);
    assert_true(r->saved >= 0);
    assert_true(dup2(r->fd, STDERR_FILENO) >= 0);
}

static char *restore_stderr(stderr_redirect *r)
{
    assert_true(dup2(r->saved, STDERR_FILENO) >= 0);
    close(r->saved);
    close(r->fd);
    FILE *f = fopen(r->path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
    buf[size] = '\0';
    fclose(f);
    unlink(r->path);
    return buf;
}

#define LINE_RE                                                                \
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "      \
    "(DEBUG|INFO|WARN|ERROR) taskbus: "

/* ---------------------------------------------------------------- tests */

/* Runs first, before any test changes the level. */
static void test_default_level_is_info(void **state)
{
    (void)state;
    assert_int_equal(tb_log_get_level(), TB_LOG_INFO);
}

static void test_level_filtering(void **state)
{
    (void)state;
    int ud;
    tb_log_set_handler(capture_fn, &ud);

    tb__log(TB_LOG_DEBUG, "debug");
    assert_int_equal(cap.calls, 0);
    tb__log(TB_LOG_INFO, "info");
    assert_int_equal(cap.calls, 1);
    assert_int_equal(cap.last_level, TB_LOG_INFO);

    tb_log_set_level(TB_LOG_WARN);
    assert_int_equal(tb_log_get_level(), TB_LOG_WARN);
    tb__log(TB_LOG_INFO, "info");
    assert_int_equal(cap.calls, 1);
    assert_false(tb__log_enabled(TB_LOG_INFO));
    assert_true(tb__log_enabled(TB_LOG_WARN));
    tb__log(TB_LOG_WARN, "warn");
    tb__log(TB_LOG_ERROR, "error");
    assert_int_equal(cap.calls, 3);
    assert_int_equal(cap.last_level, TB_LOG_ERROR);
    assert_string_equal(cap.last, "error");

    tb_log_set_level(TB_LOG_DEBUG);
    tb__log(TB_LOG_DEBUG, "debug");
    assert_int_equal(cap.calls, 4);
    assert_int_equal(cap.last_level, TB_LOG_DEBUG);

    tb_log_set_level(TB_LOG_OFF);
    tb__log(TB_LOG_ERROR, "error");
    assert_int_equal(cap.calls, 4);
    assert_false(tb__log_enabled(TB_LOG_ERROR));

    /* Levels out of range: set is ignored, messages are dropped. */
    tb_log_set_level(TB_LOG_DEBUG);
    tb_log_set_level((tb_log_level)17);
    tb_log_set_level((tb_log_level)-1);
    assert_int_equal(tb_log_get_level(), TB_LOG_DEBUG);
    tb__log(TB_LOG_OFF, "not a message level");
    tb__log((tb_log_level)9, "nor this");
    tb__log((tb_log_level)-1, "nor this");
    assert_int_equal(cap.calls, 4);
}

static void test_handler_gets_formatted_text(void **state)
{
    (void)state;
    int ud;
    tb_log_set_handler(capture_fn, &ud);
    tb__log(TB_LOG_WARN, "task %s failed: %d (%.1f%%)", "fetch", -110, 12.5);
    assert_int_equal(cap.calls, 1);
    assert_string_equal(cap.last, "task fetch failed: -110 (12.5%)");
    assert_ptr_equal(cap.last_ud, &ud);
    assert_int_equal(cap.last_level, TB_LOG_WARN);

    /* Newlines never split a message into several lines. */
    tb__log(TB_LOG_INFO, "one\ntwo\r\nthree\n\n");
    assert_string_equal(cap.last, "one two  three");
    tb__log(TB_LOG_INFO, "%s", "");
    assert_string_equal(cap.last, "");
    assert_int_equal(cap.calls, 3);
}

static void test_handler_swap_and_restore(void **state)
{
    (void)state;
    int a, b;
    tb_log_set_handler(capture_fn, &a);
    tb__log(TB_LOG_INFO, "to a");
    assert_ptr_equal(cap.last_ud, &a);
    tb_log_set_handler(capture_fn, &b);
    tb__log(TB_LOG_INFO, "to b");
    assert_ptr_equal(cap.last_ud, &b);
    assert_int_equal(cap.calls, 2);

    /* NULL restores the default handler: nothing reaches capture_fn, and a
     * line reaches stderr. */
    tb_log_set_handler(NULL, &a);
    stderr_redirect r;
    redirect_stderr(&r);
    tb__log(TB_LOG_ERROR, "back to default %d", 7);
    char *out = restore_stderr(&r);
    assert_int_equal(cap.calls, 2);
    regex_t re;
    assert_int_equal(regcomp(&re, LINE_RE "back to default 7\n$", REG_EXTENDED),
                     0);
    if (regexec(&re, out, 0, NULL, 0) != 0)
        fail_msg("unexpected stderr output: \"%s\"", out);
    assert_non_null(strstr(out, "Z ERROR taskbus: "));
    regfree(&re);
    free(out);
}

/* tb_log, the public name: the same filter, handler and line rules. */
static void test_public_tb_log(void **state)
{
    (void)state;
    int ud;
    tb_log_set_handler(capture_fn, &ud);
    tb_log(TB_LOG_DEBUG, "filtered %d", 1);
    assert_int_equal(cap.calls, 0);
    errno = EPIPE;
    tb_log(TB_LOG_WARN, "kind %s: %d\nmore\n", "exec", 3);
    assert_int_equal(errno, EPIPE);
    assert_int_equal(cap.calls, 1);
    assert_int_equal(cap.last_level, TB_LOG_WARN);
    assert_string_equal(cap.last, "kind exec: 3 more");
    assert_ptr_equal(cap.last_ud, &ud);
}

static void clobbering_fn(tb_log_level level, const char *msg, void *ud)
{
    capture_fn(level, msg, ud);
    errno = EIO; /* as a failed write() in a real handler would */
}

static void test_errno_preserved(void **state)
{
    (void)state;
    tb_log_set_handler(clobbering_fn, NULL);
    errno = EPIPE;
    tb__log(TB_LOG_ERROR, "x");
    assert_int_equal(errno, EPIPE);
    errno = ENOENT;
    tb__log(TB_LOG_DEBUG, "filtered");
    assert_int_equal(errno, ENOENT);
    assert_int_equal(cap.calls, 1);
}

static void test_truncation(void **state)
{
    (void)state;
    tb_log_set_handler(capture_fn, NULL);
    char *big = malloc(5001);
    assert_non_null(big);
    for (int i = 0; i < 5000; i++)
        big[i] = (char)('a' + i % 26);
    big[5000] = '\0';

    tb__log(TB_LOG_INFO, "%s", big);
    assert_int_equal(cap.last_len, TB__LOG_MSG_MAX);
    assert_memory_equal(cap.last, big, TB__LOG_MSG_MAX - 3);
    assert_string_equal(cap.last + TB__LOG_MSG_MAX - 3, "...");

    /* Exactly at the limit: untouched. One more byte: cut. */
    big[TB__LOG_MSG_MAX] = '\0';
    tb__log(TB_LOG_INFO, "%s", big);
    assert_int_equal(cap.last_len, TB__LOG_MSG_MAX);
    assert_string_equal(cap.last, big);
    big[TB__LOG_MSG_MAX] = 'x';
    big[TB__LOG_MSG_MAX + 1] = '\0';
    tb__log(TB_LOG_INFO, "%s", big);
    assert_int_equal(cap.last_len, TB__LOG_MSG_MAX);
    assert_string_equal(cap.last + TB__LOG_MSG_MAX - 3, "...");

    /* The cut never splits a UTF-8 character: a 3-byte euro sign straddling
     * the cut point is dropped whole. */
    memset(big, 'a', TB__LOG_MSG_MAX - 4);
    memcpy(big + TB__LOG_MSG_MAX - 4, "\xe2\x82\xac", 3);
    memset(big + TB__LOG_MSG_MAX - 1, 'b', 10);
    big[TB__LOG_MSG_MAX + 9] = '\0';
    tb__log(TB_LOG_INFO, "%s", big);
    assert_int_equal(cap.last_len, TB__LOG_MSG_MAX - 1);
    assert_memory_equal(cap.last, big, TB__LOG_MSG_MAX - 4);
    assert_string_equal(cap.last + TB__LOG_MSG_MAX - 4, "...");
    free(big);

    /* The default handler's line holds the whole truncated message. */
    tb_log_set_handler(NULL, NULL);
    char *line = malloc(TB__LOG_LINE_MAX);
    assert_non_null(line);
    char *msg = malloc(TB__LOG_MSG_MAX + 1);
    memset(msg, 'm', TB__LOG_MSG_MAX);
    msg[TB__LOG_MSG_MAX] = '\0';
    size_t n = tb__log_format_line(line, TB__LOG_LINE_MAX, TB_LOG_ERROR,
                                   INT64_C(253402300799999999), msg);
    assert_int_equal(n, strlen(line));
    assert_true(n < TB__LOG_LINE_MAX);
    assert_int_equal(line[n - 1], '\n');
    assert_memory_equal(line + n - 1 - TB__LOG_MSG_MAX, msg, TB__LOG_MSG_MAX);
    free(msg);
    free(line);
}

static void test_format_line(void **state)
{
    (void)state;
    char line[TB__LOG_LINE_MAX];
    size_t n = tb__log_format_line(line, sizeof line, TB_LOG_INFO, 0, "hi");
    assert_string_equal(line, "1970-01-01T00:00:00.000Z INFO taskbus: hi\n");
    assert_int_equal(n, strlen(line));
    /* 1700000000 s is 2023-11-14T22:13:20Z; microseconds are cut to ms. */
    tb__log_format_line(line, sizeof line, TB_LOG_WARN,
                        INT64_C(1700000000123999), "x y");
    assert_string_equal(line, "2023-11-14T22:13:20.123Z WARN taskbus: x y\n");
    tb__log_format_line(line, sizeof line, TB_LOG_DEBUG,
                        INT64_C(951782400999000), "leap");
    assert_string_equal(line, "2000-02-29T00:00:00.999Z DEBUG taskbus: leap\n");
    tb__log_format_line(line, sizeof line, TB_LOG_ERROR, -1000, "before");
    assert_string_equal(line,
                        "1969-12-31T23:59:59.999Z ERROR taskbus: before\n");

    /* A small buffer: cut, NUL-terminated, still ends the line. */
    char small[16];
    n = tb__log_format_line(small, sizeof small, TB_LOG_INFO, 0, "hi");
    assert_int_equal(n, 15);
    assert_memory_equal(small, "1970-01-01T00:\n", 16);
    assert_int_equal(tb__log_format_line(small, 0, TB_LOG_INFO, 0, "hi"), 0);

    assert_string_equal(tb__log_level_name(TB_LOG_DEBUG), "DEBUG");
    assert_string_equal(tb__log_level_name(TB_LOG_ERROR), "ERROR");
    assert_string_equal(tb__log_level_name(TB_LOG_OFF), "?");
}

/* ---------------------------------------------------------------- threads */

#define NTHREADS 4
#define PER_THREAD 2000

static unsigned char seen[NTHREADS][PER_THREAD];
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static int seen_bad;

static void record(const char *msg)
{
    int t, i;
    char tail;
    if (sscanf(msg, "thread %d msg %d%c", &t, &i, &tail) != 2 || t < 0 ||
        t >= NTHREADS || i < 0 || i >= PER_THREAD) {
        seen_bad++;
        return;
    }
    seen[t][i]++;
}

static void counting_fn(tb_log_level level, const char *msg, void *ud)
{
    (void)level;
    (void)ud;
    pthread_mutex_lock(&seen_mu);
    record(msg);
    pthread_mutex_unlock(&seen_mu);
}

typedef struct {
    int id;
    int count;
} worker_arg;

/* All threads start logging at once, so that their calls overlap. */
static pthread_barrier_t start_line;

static void *log_worker(void *p)
{
    const worker_arg *a = p;
    pthread_barrier_wait(&start_line);
    for (int i = 0; i < a->count; i++)
        tb__log(TB_LOG_INFO, "thread %d msg %d", a->id, i);
    return NULL;
}

static void run_threads(int count)
{
    pthread_t th[NTHREADS];
    worker_arg args[NTHREADS];
    assert_int_equal(pthread_barrier_init(&start_line, NULL, NTHREADS), 0);
    for (int t = 0; t < NTHREADS; t++) {
        args[t] = (worker_arg){t, count};
        assert_int_equal(pthread_create(&th[t], NULL, log_worker, &args[t]), 0);
    }
    for (int t = 0; t < NTHREADS; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
    pthread_barrier_destroy(&start_line);
}

static void check_seen_once(int count)
{
    assert_int_equal(seen_bad, 0);
    for (int t = 0; t < NTHREADS; t++)
        for (int i = 0; i < count; i++)
            if (seen[t][i] != 1)
                fail_msg("thread %d msg %d delivered %d times", t, i,
                         seen[t][i]);
}

static void test_concurrent_handler(void **state)
{
    (void)state;
    memset(seen, 0, sizeof seen);
    seen_bad = 0;
    tb_log_set_handler(counting_fn, NULL);
    run_threads(PER_THREAD);
    check_seen_once(PER_THREAD);
}

/* Four threads writing through the default handler: every line arrives
 * whole, none interleaved with another. */
static void test_concurrent_default_lines(void **state)
{
    (void)state;
    const int count = PER_THREAD;
    memset(seen, 0, sizeof seen);
    seen_bad = 0;
    stderr_redirect r;
    redirect_stderr(&r);
    run_threads(count);
    char *out = restore_stderr(&r);

    regex_t re;
    assert_int_equal(
        regcomp(&re, LINE_RE "(thread [0-9]+ msg [0-9]+)$", REG_EXTENDED), 0);
    int lines = 0;
    char *save = NULL;
    /* The file ends with '\n', so strtok_r sees every line. */
    assert_true(strlen(out) > 0 && out[strlen(out) - 1] == '\n');
    for (char *l = strtok_r(out, "\n", &save); l != NULL;
         l = strtok_r(NULL, "\n", &save)) {
        regmatch_t m[3];
        if (regexec(&re, l, 3, m, 0) != 0)
            fail_msg("malformed line %d: \"%s\"", lines, l);
        record(l + m[2].rm_so);
        lines++;
    }
    regfree(&re);
    free(out);
    assert_int_equal(lines, NTHREADS * count);
    check_seen_once(count);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_level_is_info),
        cmocka_unit_test_setup_teardown(test_level_filtering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handler_gets_formatted_text, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_handler_swap_and_restore, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_errno_preserved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_public_tb_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_handler, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_default_lines, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
