/* redis_harness.h - what the C integration tests against a real
 * redis-server share (tests/support/, compiled once into the tbtest_redis
 * library): a throwaway server on a free 127.0.0.1 port in a mktemp -d
 * directory (hiredis's test.sh does the same), redis-cli runs, a plain
 * hiredis subscriber to look at the wire, apps run on a background thread,
 * tasks that record the events they receive, and forked child processes
 * driven through pipes. Builds on harness.h (TH_CHECK*, counters, clocks).
 *
 * Every wait is bounded: a bug fails a test, it never hangs it. Cleanup is
 * layered so that nothing outlives the test process however it ends:
 *  - rh_cleanup() (call it from each test's teardown) stops the apps and
 *    servers a test left behind, say after a failed assertion;
 *  - an atexit handler stops every server and removes the temp directory;
 *  - each redis-server gets PR_SET_PDEATHSIG SIGKILL, so it dies with the
 *    test process even on a crash or a SIGKILL from CTest's timeout (the
 *    signal follows the thread that forked it: start servers from the
 *    test's main thread only);
 *  - a small reaper (sh reading a pipe from us) removes the temp directory
 *    once the test process is gone, whatever killed it.
 *
 * Functions that use cmocka's assert_*() / fail_msg() say so: they only run
 * on the test's main thread. Code in tasks uses TH_CHECK*().
 */
#ifndef TASKBUS_TESTS_REDIS_HARNESS_H
#define TASKBUS_TESTS_REDIS_HARNESS_H

#include "harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define RH_HOST "127.0.0.1"
#define RH_START_TIMEOUT_MS 10000 /* redis-server up and answering PING */
#define RH_STOP_TIMEOUT_MS 5000   /* SIGTERM to exit, before SIGKILL */
#define RH_CLI_TIMEOUT_MS 5000    /* one redis-cli run */
#define RH_APP_TIMEOUT_MS 15000   /* tb_app_run start-up; stop: slack */
#define RH_MAX_SERVERS 8
#define RH_MAX_APPS 8

/* 1 in an rh_proc child (see rh_proc_spawn), 0 in the test process. */
int rh__in_child(void);

/* Fails the cmocka test (main thread), or, in an rh_proc child, where
 * cmocka's jump buffer belongs to the parent's copied stack, prints the
 * message and exits the child with status 1. */
#define rh_fail(...)                                                           \
    do {                                                                       \
        if (rh__in_child()) {                                                  \
            fprintf(stderr, "child: " __VA_ARGS__);                            \
            fputc('\n', stderr);                                               \
            _exit(1);                                                          \
        }                                                                      \
        fail_msg(__VA_ARGS__);                                                 \
    } while (0)

/* ------------------------------------------------------------ servers */

/* One throwaway redis-server. It belongs to the harness from
 * rh_server_create/rh_server_start until rh_server_destroy or rh_cleanup;
 * tests read its fields. */
typedef struct rh_server {
    pid_t pid; /* 0 when not running */
    int port;
    int paused;              /* SIGSTOP'd by rh_server_pause */
    char dir[PATH_MAX - 32]; /* its own mktemp -d directory */
    char conf[PATH_MAX];     /* "" or the generated config file */
    char log[PATH_MAX];
    char sock[PATH_MAX]; /* its unix socket (unixsocketperm 700) */
    char user[64];       /* credentials rh_cli uses; "" for none */
    char pass[128];
} rh_server;

/* A free loopback TCP port, found by binding port 0 and closing it; -1 if
 * none. */
int rh_free_port(void);

/* A plain TCP client: sends "PING\r\n" to 127.0.0.1:port and returns 1 if a
 * RESP reply comes back within timeout_ms ("+PONG", or "-NOAUTH ..." from a
 * server that wants a password: either way it is serving). */
int rh_ping(int port, int timeout_ms);

/* Prepares a server without starting it: its own mktemp -d directory, a
 * free port (nothing listens on it until rh_server_restart), and the
 * config file. conf_text (may be NULL) goes into a generated config file,
 * e.g. "requirepass s3cret\n" or ACL "user ..." lines; user/pass (may be
 * NULL) are what rh_cli authenticates with. The server belongs to the
 * harness: rh_server_destroy or rh_cleanup frees it. Main thread (cmocka:
 * fails the test). */
rh_server *rh_server_create(const char *conf_text, const char *user,
                            const char *pass);

/* rh_server_create, then starts it; retries with another port when the
 * chosen one was taken meanwhile. Main thread (cmocka). */
rh_server *rh_server_start(const char *conf_text, const char *user,
                           const char *pass);

/* Stops the server (SIGTERM, a bounded wait, then SIGKILL); its directory
 * and port stay for rh_server_restart. */
void rh_server_stop(rh_server *s);

/* Kills the server at once (SIGKILL: a crash; unread input is lost and the
 * clients' connections are reset). */
void rh_server_kill(rh_server *s);

/* Starts the server (again) on its port with the same config; retries
 * for a few seconds if the port is briefly unavailable. Main thread
 * (cmocka). */
void rh_server_restart(rh_server *s);

/* SIGSTOP / SIGCONT: a server that keeps its connections open and stops
 * answering. */
void rh_server_pause(rh_server *s);
void rh_server_resume(rh_server *s);

/* Stops the server, removes its directory and frees s. NULL is a no-op, and
 * so is any call in an rh_proc child (the servers are the parent's). */
void rh_server_destroy(rh_server *s);

/* redis://[user:pass@]127.0.0.1:port into buf. user and pass may be NULL. */
void rh_server_url(const rh_server *s, const char *user, const char *pass,
                   char *buf, size_t bufsz);

/* Runs redis-cli against s with the server's credentials and the given
 * arguments (argv-style, NULL-terminated, no shell). Captures stdout and
 * stderr into out (NUL-terminated, trailing newlines trimmed; may be NULL).
 * Bounded by RH_CLI_TIMEOUT_MS (then killed). Returns the exit status, or
 * -1 if it could not run or timed out. Any thread. */
int rh_cliv(const rh_server *s, char *out, size_t outsz,
            const char *const *args);

/* rh_cli(s, out, outsz, "PUBLISH", channel, message). */
#define rh_cli(s, out, outsz, ...)                                             \
    rh_cliv((s), (out), (outsz), (const char *const[]){__VA_ARGS__, NULL})

/* PUBLISH channel message with redis-cli (message may hold anything but
 * NUL); returns the number of subscribers Redis reports it reached, or
 * -1. */
long rh_publish(const rh_server *s, const char *channel, const char *message);

/* ------------------------------------------------------------ wire */

/* A plain subscriber (hiredis, blocking) to see what travels on the
 * channels matching a glob pattern (PSUBSCRIBE). Returns NULL (after
 * printing why) if it cannot subscribe. The caller frees it with
 * redisFree. Any thread. */
redisContext *rh_wire_subscribe(const rh_server *s, const char *pattern);

/* The next message, within timeout_ms: returns 1 with its channel in chan
 * (chansz bytes) and a malloc'ed NUL-terminated copy of the message in
 * *msg (the caller frees it), *len bytes; 0 on timeout or error. */
int rh_wire_next(redisContext *c, int timeout_ms, char *chan, size_t chansz,
                 char **msg, size_t *len);

/* ------------------------------------------------------------ apps */

/* An app run on its own thread (rh_app_start). */
typedef struct rh_app {
    tb_app *app;
    pthread_t thread;
    int run_rc;
    atomic_int returned;
} rh_app;

/* The config the tests start from: 2 workers, short graceful timeout,
 * quick reconnects, the given bus URL (NULL: in-process) and namespace
 * (NULL: the default "taskbus"). The strings must outlive tb_app_new. */
void rh_config(tb_app_config *cfg, const char *url, const char *ns);

/* Creates an app from cfg and runs it (tb_app_run blocks) on a new thread;
 * returns once it is running. The rh_app belongs to the harness until
 * rh_app_stop (or rh_cleanup). Main thread (cmocka: fails the test). */
rh_app *rh_app_start(const tb_app_config *cfg);

/* Stops the app, joins its thread (bounded: if tb_app_run never returns
 * the process aborts, as hanging would be worse) and frees it and ra.
 * Returns tb_app_run's result. NULL is a no-op returning 0. Not from the
 * app's own threads. */
int rh_app_stop(rh_app *ra);

/* Polls tb_bus_status (5 ms) until its state is want, at most timeout_ms.
 * Returns 1 if it got there; *out (may be NULL) gets the last status. */
int rh_wait_bus(tb_app *app, tb_bus_state want, int timeout_ms,
                tb_bus_info *out);

/* Main thread: fails the test unless the app's bus reaches connected within
 * timeout_ms, and is the Redis bus. */
void rh_assert_connected(tb_app *app, int timeout_ms);

/* ------------------------------------------------------------ recorders */

/* One received event, copied out of the tb_event. */
typedef struct rh_got {
    char name[TB_EVENT_NAME_MAX + 1];
    char id[TB_EVENT_ID_MAX];
    char origin[64];
    char param[TB_EVENT_NAME_MAX + 1]; /* the recorder's <param>, if any */
    int worker;
    int64_t ts_us;
    size_t len;
    char *data; /* NUL-terminated copy */
} rh_got;

/* What one receiving task records; it outlives the task (the harness owns
 * it). armed counts the task's suspensions in a wait (see rh_arm), count
 * the events recorded; both can be waited on from the main thread. */
typedef struct rh_rec {
    pthread_mutex_t mu;
    rh_got *items;
    size_t n, cap;
    th_counter count;
    th_counter armed;
    atomic_int ended;   /* the task returned */
    atomic_int last_rc; /* the last wait's result */
    const char *pattern;
    const char *param; /* <param> name to capture with tb_pattern_param */
    int once;          /* stop after one event */
    int capacity;      /* subscription capacity (<= 0: default) */
} rh_rec;

/* A new recorder for pattern (a string that outlives the tasks: a literal
 * or the test's). It belongs to the harness and lives until rh_cleanup,
 * after the apps whose tasks write to it have stopped. Main thread. */
rh_rec *rh_rec_new(const char *pattern);

/* Records ev as received by worker. Any thread, tasks included. */
void rh_rec_add(rh_rec *r, const tb_event *ev, int worker);

size_t rh_rec_count(rh_rec *r);

/* Copies entry i (its data pointer stays the recorder's). Returns 1 if it
 * exists. */
int rh_rec_get(rh_rec *r, size_t i, rh_got *out);

/* How many recorded events carry id. */
int rh_rec_count_id(rh_rec *r, const char *id);

/* How many recorded events have an id seen earlier in the record. */
int rh_rec_dups(rh_rec *r);

/* Waits (main or helper thread) until the recorder holds n events. */
int rh_rec_wait(rh_rec *r, long n, int timeout_ms);

/* Prints what a recorder got, for a failure message's context. */
void rh_rec_dump(rh_rec *r, const char *label);

/* ------------------------------------------------------------ tasks */

/* Makes `armed` count up once self is suspended in the wait it calls next:
 * the ack task goes on self's own worker, so it cannot run before self
 * suspends, and self registers its wait before it suspends. Replaces "sleep
 * a bit, then dispatch" (tb_event_wait does not see events dispatched
 * before it was called). In a task. */
void rh_arm(tb_task *self, th_counter *armed);

/* Adds a waiter (subscriber = 0: tb_event_wait(pattern) in a loop, or once)
 * or subscriber (tb_sub_open(pattern, capacity), then tb_sub_next in a
 * loop) task recording into r on worker of a running app, until cancelled
 * at app stop, and waits until it is armed. Returns 1 if it got armed
 * within timeout_ms. Not from a task. */
int rh_spawn(tb_app *app, int worker, int subscriber, rh_rec *r,
             int timeout_ms);

/* ------------------------------------------------------------ children */

/* A forked child process running fn(rfd, wfd, arg): it reads commands from
 * rfd and answers on wfd, and exits with fn's return value. It dies with
 * the parent (PDEATHSIG) and after alarm_s seconds at most (SIGALRM).
 * Fork it while the parent runs no app (the child starts with one thread).
 * The child must not use cmocka (rh_fail exits it instead), and it leaves
 * with _exit (no atexit handlers: the servers are the parent's). */
typedef struct rh_proc {
    pid_t pid;
    int to_child;   /* parent writes */
    int from_child; /* parent reads */
    char buf[8192]; /* bytes read past the last line returned */
    size_t buflen;
} rh_proc;

/* Forks the child. The rh_proc belongs to the harness until rh_proc_wait
 * (or rh_cleanup, which kills a child a failed test left behind). Main
 * thread (cmocka). */
rh_proc *rh_proc_spawn(int alarm_s, int (*fn)(int rfd, int wfd, void *arg),
                       void *arg);

/* Writes one line (fmt, a '\n' is added) to the child or, from the child,
 * to the parent. Returns 1 on success. */
int rh_line_send(int fd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Reads one line (without its '\n') from fd into out, keeping the bytes
 * after it in buf/buflen, at most timeout_ms (negative: no limit). Returns
 * 1, or 0 on timeout, EOF or a line longer than outsz. */
int rh_line_recv(int fd, char *buf, size_t bufsz, size_t *buflen, char *out,
                 size_t outsz, int timeout_ms);

/* Parent side: one request line, one reply line, within timeout_ms.
 * Returns 1 if a reply came. */
int rh_proc_ask(rh_proc *p, char *reply, size_t replysz, int timeout_ms,
                const char *request);

/* Reads the child's next line (one it sends unasked), within timeout_ms. */
int rh_proc_recv(rh_proc *p, char *out, size_t outsz, int timeout_ms);

/* Waits up to timeout_ms for the child to exit (then kills it) and frees
 * p. Returns its exit status, or -1 if it was killed or died of a signal. */
int rh_proc_wait(rh_proc *p, int timeout_ms);

/* ------------------------------------------------------------ cleanup */

/* Stops every app still running (rh_app_start), frees every recorder
 * (rh_rec_new) once no task can write to it, then stops every server and
 * removes its directory. Call it from each test's teardown: after a failed
 * assertion the test body never got to its own cleanup. Returns the number
 * of apps it had to stop. Main thread. */
int rh_cleanup(void);

/* ------------------------------------------------------------ the run */

/* cmocka setup and teardown of each test: forgets the recorded check
 * failures and logs warnings and errors only; then rh_cleanup(). RH_TEST
 * names a test with both. */
int rh_setup(void **state);
int rh_teardown(void **state);
#define RH_TEST(fn) cmocka_unit_test_setup_teardown(fn, rh_setup, rh_teardown)

/* A test program's main: runs the group of tests (an array of RH_TEST)
 * named name with SIGPIPE ignored (a PUBLISH to a dead peer must not kill
 * the test) and, when TB_ITEST_FILTER=<glob> is set, only the tests whose
 * names match. */
void rh__main_prepare(void);
#define rh_run_group(name, tests)                                              \
    (rh__main_prepare(), cmocka_run_group_tests_name(name, tests, NULL, NULL))

#endif /* TASKBUS_TESTS_REDIS_HARNESS_H */
