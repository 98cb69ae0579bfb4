/* redis_harness.c - the throwaway redis-servers, redis-cli runs, wire
 * subscribers, background apps, event recorders and child processes of the
 * C integration tests (see redis_harness.h for the contracts). */
#include "redis_harness.h"

#include <ftw.h>
#include <sys/prctl.h>

/* ------------------------------------------------------------ small bits */

/* Milliseconds left until the CLOCK_MONOTONIC deadline end_ms (>= 0). */
static int left_ms(int64_t end_ms)
{
    int64_t left = end_ms - th_mono_ms();
    return left < 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

/* Finds prog on PATH (in the parent: a forked child of a multithreaded
 * process may only call async-signal-safe functions before exec, and
 * execvp's search is not one). Returns 1 and the path in out. */
static int which(const char *prog, char *out, size_t outsz)
{
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *colon = strchr(path, ':');
        size_t n = colon ? (size_t)(colon - path) : strlen(path);
        int w = snprintf(out, outsz, "%.*s/%s", (int)n, n ? path : ".", prog);
        if (w > 0 && (size_t)w < outsz && access(out, X_OK) == 0)
            return 1;
        path += n + (colon ? 1 : 0);
    }
    return 0;
}

/* The steps of a forked child before it execs or runs: die with the parent
 * (the forking thread, in fact), keep only fds 0-2. Async-signal-safe. */
static void child_setup(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127); /* the parent died before prctl */
    close_range(3, ~0U, 0);
}

/* Waits up to timeout_ms for pid to exit. Returns 1 and *status if it did. */
static int wait_pid(pid_t pid, int timeout_ms, int *status)
{
    int64_t end = th_mono_ms() + timeout_ms;
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (status)
                *status = st;
            return 1;
        }
        if (r < 0 && errno != EINTR)
            return 1; /* not our child (any more) */
        if (th_mono_ms() >= end)
            return 0;
        th_nap_ms(2);
    }
}

/* SIGCONT (it may be stopped), sig, a bounded wait, then SIGKILL. */
static void end_pid(pid_t pid, int sig, int timeout_ms)
{
    kill(pid, SIGCONT);
    kill(pid, sig);
    if (!wait_pid(pid, timeout_ms, NULL)) {
        fprintf(stderr,
                "redis_harness: pid %d ignored signal %d for %d ms; "
                "SIGKILL\n",
                (int)pid, sig, timeout_ms);
        kill(pid, SIGKILL);
        wait_pid(pid, 5000, NULL);
    }
}

/* ------------------------------------------------------------ temp dir */

typedef struct global_state {
    pid_t owner;  /* the test process (not its forked children) */
    int in_child; /* this is an rh_proc child */
    char root[PATH_MAX];
    int reaper_fd; /* write end of the reaper's stdin */
    pid_t reaper;
    rh_server *servers[RH_MAX_SERVERS];
} global_state;

static global_state *gstate(void)
{
    static global_state g = {0, 0, "", -1, 0, {0}};
    return &g;
}

int rh__in_child(void)
{
    return gstate()->in_child;
}

static int rm_one(const char *path, const struct stat *sb, int flag,
                  struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (flag == FTW_DP)
        rmdir(path);
    else
        unlink(path);
    return 0;
}

/* rm -rf path. */
static void rm_rf(const char *path)
{
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void server_stop_raw(rh_server *s);

static void cleanup_at_exit(void)
{
    global_state *g = gstate();
    if (getpid() != g->owner)
        return; /* a forked child exiting: the servers are not its own */
    for (int i = 0; i < RH_MAX_SERVERS; i++) {
        if (g->servers[i])
            server_stop_raw(g->servers[i]);
    }
    if (g->root[0]) {
        rm_rf(g->root);
        g->root[0] = '\0';
    }
    if (g->reaper_fd >= 0) {
        close(g->reaper_fd); /* EOF: the reaper finds nothing left, exits */
        g->reaper_fd = -1;
        wait_pid(g->reaper, 2000, NULL);
    }
}

/* Starts the reaper: sh reading one line, the temp root, from a pipe whose
 * write end only this process (and its forks) holds; on EOF, that is when
 * the test process has ended however it ended, it removes the root. Own
 * session, so a Ctrl-C to the test does not kill it before it cleans. */
static void start_reaper(global_state *g)
{
    char sh[PATH_MAX];
    if (!which("sh", sh, sizeof sh))
        return; /* atexit still cleans in all but a crash */
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return;
    static const char script[] = "IFS= read -r root; cat >/dev/null; "
                                 "[ -n \"$root\" ] && rm -rf -- \"$root\"";
    char *argv[] = {"sh", "-c", (char *)script, NULL};
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        dup2(fds[0], 0);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        close_range(3, ~0U, 0);
        execv(sh, argv);
        _exit(127);
    }
    if (devnull >= 0)
        close(devnull);
    close(fds[0]);
    if (pid < 0) {
        close(fds[1]);
        return;
    }
    g->reaper = pid;
    g->reaper_fd = fds[1];
    char line[PATH_MAX + 2];
    int n = snprintf(line, sizeof line, "%s\n", g->root);
    if (write(g->reaper_fd, line, (size_t)n) != n)
        fprintf(stderr, "redis_harness: could not brief the reaper\n");
}

/* The per-process temp root ("mktemp -d"), created on first use with the
 * atexit handler and the reaper. Main thread (cmocka). */
static const char *temp_root(void)
{
    global_state *g = gstate();
    if (g->root[0])
        return g->root;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    snprintf(g->root, sizeof g->root, "%s/taskbus-itest.XXXXXX", tmp);
    if (!mkdtemp(g->root)) {
        int e = errno;
        g->root[0] = '\0';
        rh_fail("mkdtemp in %s: %s", tmp, strerror(e));
    }
    if (g->owner == 0) {
        g->owner = getpid();
        /* A test that forks children may not be reaped before it exits. */
        atexit(cleanup_at_exit);
    }
    start_reaper(g);
    return g->root;
}

/* ------------------------------------------------------------ servers */

static void server_register(rh_server *s, int on)
{
    global_state *g = gstate();
    for (int i = 0; i < RH_MAX_SERVERS; i++) {
        if (on && !g->servers[i]) {
            g->servers[i] = s;
            return;
        }
        if (!on && g->servers[i] == s) {
            g->servers[i] = NULL;
            return;
        }
    }
    if (on)
        rh_fail("redis_harness: more than %d servers", RH_MAX_SERVERS);
}

int rh_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t alen = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int rh_ping(int port, int timeout_ms)
{
    int64_t end = th_mono_ms() + timeout_ms;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 &&
        errno != EINPROGRESS)
        goto out;
    struct pollfd p = {fd, POLLOUT, 0};
    if (poll(&p, 1, left_ms(end)) != 1)
        goto out;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr)
        goto out;
    if (send(fd, "PING\r\n", 6, MSG_NOSIGNAL) != 6)
        goto out;
    p.events = POLLIN;
    char c;
    if (poll(&p, 1, left_ms(end)) == 1 && recv(fd, &c, 1, 0) == 1)
        ok = c == '+' || c == '-';
out:
    close(fd);
    return ok;
}

/* 1 if the server's log file contains needle. */
static int log_has(const rh_server *s, const char *needle)
{
    FILE *f = fopen(s->log, "r");
    if (!f)
        return 0;
    char line[1024];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

static void dump_log(const rh_server *s)
{
    FILE *f = fopen(s->log, "r");
    if (!f)
        return;
    char line[1024];
    fprintf(stderr, "---- %s\n", s->log);
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fprintf(stderr, "----\n");
    fclose(f);
}

/* One attempt: fork+exec redis-server on s->port and wait until it is ours
 * and answers PING. Returns 0, 1 if the port was taken (retry with
 * another), -1 on any other failure. */
static int server_spawn(rh_server *s)
{
    char bin[PATH_MAX];
    if (!which("redis-server", bin, sizeof bin)) {
        fprintf(stderr, "redis_harness: redis-server not on PATH (install "
                        "the Debian package redis-server)\n");
        return -1;
    }
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    char *argv[32];
    int n = 0;
    argv[n++] = "redis-server";
    if (s->conf[0])
        argv[n++] = s->conf; /* a config file must come first */
    /* clang-format off */
    char *opts[] = {
        "--save", "",
        "--appendonly", "no",
        "--dir", s->dir,
        "--bind", RH_HOST,
        "--port", port,
        "--unixsocket", s->sock,
        "--unixsocketperm", "700",
        "--daemonize", "no",
        "--logfile", s->log,
    };
    /* clang-format on */
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        argv[n++] = opts[i];
    argv[n] = NULL;

    unlink(s->log); /* "Ready" below must come from this run */
    pid_t parent = getpid();
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    pid_t pid = fork();
    if (pid == 0) {
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        child_setup(parent);
        execv(bin, argv);
        _exit(127);
    }
    if (devnull >= 0)
        close(devnull);
    if (pid < 0)
        return -1;

    /* "Ready to accept connections" is only logged once our instance has
     * bound the port: a PONG alone could come from a stranger on it. */
    int64_t end = th_mono_ms() + RH_START_TIMEOUT_MS;
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            int taken = log_has(s, "Address already in use");
            if (!taken)
                dump_log(s);
            return taken ? 1 : -1;
        }
        if (log_has(s, "Ready to accept connections") &&
            rh_ping(s->port, 500)) {
            s->pid = pid;
            s->paused = 0;
            return 0;
        }
        if (th_mono_ms() >= end) {
            fprintf(stderr,
                    "redis_harness: redis-server on port %d not "
                    "ready after %d ms\n",
                    s->port, RH_START_TIMEOUT_MS);
            dump_log(s);
            end_pid(pid, SIGKILL, 2000);
            return -1;
        }
        th_nap_ms(5);
    }
}

rh_server *rh_server_create(const char *conf_text, const char *user,
                            const char *pass)
{
    rh_server *s = calloc(1, sizeof *s);
    if (!s)
        rh_fail("out of memory");
    server_register(s, 1);
    snprintf(s->user, sizeof s->user, "%s", user ? user : "");
    snprintf(s->pass, sizeof s->pass, "%s", pass ? pass : "");
    snprintf(s->dir, sizeof s->dir, "%s/redis.XXXXXX", temp_root());
    if (!mkdtemp(s->dir))
        rh_fail("mkdtemp %s: %s", s->dir, strerror(errno));
    snprintf(s->log, sizeof s->log, "%s/redis.log", s->dir);
    snprintf(s->sock, sizeof s->sock, "%s/redis.sock", s->dir);
    if (conf_text) {
        snprintf(s->conf, sizeof s->conf, "%s/redis.conf", s->dir);
        FILE *f = fopen(s->conf, "w");
        if (!f || fputs(conf_text, f) < 0 || fclose(f) != 0)
            rh_fail("cannot write %s", s->conf);
    }
    s->port = rh_free_port();
    if (s->port <= 0)
        rh_fail("no free loopback port: %s", strerror(errno));
    return s;
}

rh_server *rh_server_start(const char *conf_text, const char *user,
                           const char *pass)
{
    rh_server *s = rh_server_create(conf_text, user, pass);
    for (int attempt = 0; attempt < 10; attempt++) {
        int rc = server_spawn(s);
        if (rc == 0)
            return s;
        if (rc < 0)
            break;
        fprintf(stderr, "redis_harness: port %d taken, retrying\n", s->port);
        s->port = rh_free_port();
    }
    rh_fail("could not start redis-server (see the log above)");
    return NULL;
}

static void server_stop_raw(rh_server *s)
{
    if (s->pid > 0) {
        end_pid(s->pid, SIGTERM, RH_STOP_TIMEOUT_MS);
        s->pid = 0;
        s->paused = 0;
    }
}

void rh_server_stop(rh_server *s)
{
    server_stop_raw(s);
}

void rh_server_kill(rh_server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        wait_pid(s->pid, 5000, NULL);
        s->pid = 0;
        s->paused = 0;
    }
}

void rh_server_restart(rh_server *s)
{
    server_stop_raw(s);
    int64_t end = th_mono_ms() + RH_START_TIMEOUT_MS;
    for (;;) {
        int rc = server_spawn(s);
        if (rc == 0)
            return;
        if (rc < 0 || th_mono_ms() >= end)
            rh_fail("could not restart redis-server on port %d", s->port);
        th_nap_ms(50);
    }
}

void rh_server_pause(rh_server *s)
{
    if (s->pid > 0 && kill(s->pid, SIGSTOP) == 0)
        s->paused = 1;
}

void rh_server_resume(rh_server *s)
{
    if (s->pid > 0 && kill(s->pid, SIGCONT) == 0)
        s->paused = 0;
}

void rh_server_destroy(rh_server *s)
{
    if (!s || gstate()->in_child)
        return; /* a child leaves the parent's servers alone */
    server_stop_raw(s);
    server_register(s, 0);
    if (s->dir[0])
        rm_rf(s->dir);
    free(s);
}

void rh_server_url(const rh_server *s, const char *user, const char *pass,
                   char *buf, size_t bufsz)
{
    if (pass)
        snprintf(buf, bufsz, "redis://%s:%s@%s:%d", user ? user : "", pass,
                 RH_HOST, s->port);
    else
        snprintf(buf, bufsz, "redis://%s:%d", RH_HOST, s->port);
}

int rh_cliv(const rh_server *s, char *out, size_t outsz,
            const char *const *args)
{
    char bin[PATH_MAX];
    if (out && outsz)
        out[0] = '\0';
    if (!which("redis-cli", bin, sizeof bin)) {
        fprintf(stderr, "redis_harness: redis-cli not on PATH (install the "
                        "Debian package redis-tools)\n");
        return -1;
    }
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    const char *argv[64];
    int n = 0;
    argv[n++] = "redis-cli";
    argv[n++] = "-h";
    argv[n++] = RH_HOST;
    argv[n++] = "-p";
    argv[n++] = port;
    if (s->user[0]) {
        argv[n++] = "--user";
        argv[n++] = s->user;
    }
    if (s->pass[0]) {
        argv[n++] = "--pass";
        argv[n++] = s->pass;
        argv[n++] = "--no-auth-warning";
    }
    for (size_t i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -1;
    pid_t parent = getpid();
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(devnull, 0);
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        child_setup(parent);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    if (devnull >= 0)
        close(devnull);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }
    int64_t end = th_mono_ms() + RH_CLI_TIMEOUT_MS;
    size_t len = 0;
    int timed_out = 0;
    for (;;) {
        struct pollfd p = {fds[0], POLLIN, 0};
        int left = left_ms(end);
        int pr = poll(&p, 1, left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            timed_out = 1;
            break;
        }
        char buf[4096];
        ssize_t r = read(fds[0], buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (out && outsz > 1) {
            size_t take = (size_t)r;
            if (take > outsz - 1 - len)
                take = outsz - 1 - len;
            memcpy(out + len, buf, take);
            len += take;
            out[len] = '\0';
        }
    }
    close(fds[0]);
    while (out && len > 0 && (out[len - 1] == '\n' || out[len - 1] == '\r'))
        out[--len] = '\0';
    int st = 0;
    if (timed_out) {
        kill(pid, SIGKILL);
        wait_pid(pid, 2000, NULL);
        fprintf(stderr, "redis_harness: redis-cli %s timed out\n",
                args[0] ? args[0] : "");
        return -1;
    }
    if (!wait_pid(pid, left_ms(end) + 1000, &st)) {
        kill(pid, SIGKILL);
        wait_pid(pid, 2000, NULL);
        return -1;
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

long rh_publish(const rh_server *s, const char *channel, const char *message)
{
    char out[256];
    int rc = rh_cli(s, out, sizeof out, "PUBLISH", channel, message);
    if (rc != 0) {
        fprintf(stderr, "redis_harness: PUBLISH %s failed (%d): %s\n", channel,
                rc, out);
        return -1;
    }
    char *endp;
    long n = strtol(out, &endp, 10);
    return endp == out ? -1 : n;
}

/* ------------------------------------------------------------ wire */

redisContext *rh_wire_subscribe(const rh_server *s, const char *pattern)
{
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(RH_HOST, s->port, tv);
    if (!c || c->err) {
        fprintf(stderr, "redis_harness: connect: %s\n",
                c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *r = NULL;
    if (s->pass[0])
        r = s->user[0] ? redisCommand(c, "AUTH %s %s", s->user, s->pass)
                       : redisCommand(c, "AUTH %s", s->pass);
    if (r)
        freeReplyObject(r);
    r = redisCommand(c, "PSUBSCRIBE %s", pattern);
    int ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 3;
    if (!ok)
        fprintf(stderr, "redis_harness: PSUBSCRIBE %s failed: %s\n", pattern,
                r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
    if (r)
        freeReplyObject(r);
    if (!ok) {
        redisFree(c);
        return NULL;
    }
    return c;
}

int rh_wire_next(redisContext *c, int timeout_ms, char *chan, size_t chansz,
                 char **msg, size_t *len)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisSetTimeout(c, tv);
    redisReply *r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK || !r)
        return 0;
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
             r->element[2]->type == REDIS_REPLY_STRING &&
             r->element[3]->type == REDIS_REPLY_STRING;
    if (ok) {
        snprintf(chan, chansz, "%s", r->element[2]->str);
        *len = r->element[3]->len;
        *msg = malloc(*len + 1);
        ok = *msg != NULL;
        if (ok) {
            memcpy(*msg, r->element[3]->str, *len);
            (*msg)[*len] = '\0';
        }
    }
    freeReplyObject(r);
    return ok;
}

/* ------------------------------------------------------------ apps */

static rh_app **apps_all(void)
{
    static rh_app *apps[RH_MAX_APPS];
    return apps;
}

void rh_config(tb_app_config *cfg, const char *url, const char *ns)
{
    tb_app_config_init(cfg);
    cfg->core.workers = 2;
    cfg->core.graceful_timeout_ms = 2000;
    cfg->core.handle_signals = 0;
    cfg->redis.url = url;
    if (ns)
        cfg->core.event_namespace = ns;
    cfg->redis.connect_timeout_ms = 1000;
    cfg->redis.retry_min_ms = 50;
    cfg->redis.retry_max_ms = 300;
}

static void *app_thread(void *arg)
{
    rh_app *ra = arg;
    ra->run_rc = tb_app_run(ra->app);
    atomic_store(&ra->returned, 1);
    return NULL;
}

int rh_app_stop(rh_app *ra)
{
    if (!ra)
        return 0;
    /* Stopping may take the graceful timeout (tasks) plus the bus's flush
     * of unacknowledged events (up to redis_command_timeout_ms). */
    const tb_app_config *cfg = tb_app_get_config(ra->app);
    int bound = cfg->core.graceful_timeout_ms + cfg->redis.command_timeout_ms +
                RH_APP_TIMEOUT_MS;
    tb_app_stop(ra->app);
    int64_t end = th_mono_ms() + bound;
    while (!atomic_load(&ra->returned)) {
        if (th_mono_ms() >= end) {
            fprintf(stderr,
                    "redis_harness: tb_app_run did not return %d ms "
                    "after tb_app_stop; aborting\n",
                    bound);
            abort();
        }
        th_nap_ms(2);
    }
    pthread_join(ra->thread, NULL);
    int rc = ra->run_rc;
    tb_app_free(ra->app);
    rh_app **apps = apps_all();
    for (int i = 0; i < RH_MAX_APPS; i++) {
        if (apps[i] == ra)
            apps[i] = NULL;
    }
    free(ra);
    return rc;
}

rh_app *rh_app_start(const tb_app_config *cfg)
{
    rh_app **apps = apps_all();
    int slot = 0;
    while (slot < RH_MAX_APPS && apps[slot])
        slot++;
    if (slot == RH_MAX_APPS)
        rh_fail("redis_harness: more than %d apps", RH_MAX_APPS);
    rh_app *ra = calloc(1, sizeof *ra);
    if (!ra)
        rh_fail("out of memory");
    int err = 1;
    ra->app = tb_app_new(cfg, &err);
    if (!ra->app) {
        free(ra);
        rh_fail("tb_app_new: %s (%d)", tb_err_name(err), err);
        return NULL;
    }
    if (pthread_create(&ra->thread, NULL, app_thread, ra) != 0) {
        tb_app_free(ra->app);
        free(ra);
        rh_fail("pthread_create failed");
        return NULL;
    }
    apps[slot] = ra;
    int64_t end = th_mono_ms() + RH_APP_TIMEOUT_MS;
    while (!tb_app_is_running(ra->app)) {
        if (atomic_load(&ra->returned))
            rh_fail("tb_app_run returned %s during start-up",
                    tb_err_name(ra->run_rc));
        if (th_mono_ms() >= end)
            rh_fail("app not running after %d ms", RH_APP_TIMEOUT_MS);
        th_nap_ms(2);
    }
    return ra;
}

int rh_wait_bus(tb_app *app, tb_bus_state want, int timeout_ms,
                tb_bus_info *out)
{
    int64_t end = th_mono_ms() + timeout_ms;
    tb_bus_info info;
    for (;;) {
        memset(&info, 0, sizeof info);
        int rc = tb_bus_status(app, &info);
        if (rc == 0 && info.state == want)
            break;
        if (th_mono_ms() >= end) {
            if (out)
                *out = info;
            return 0;
        }
        th_nap_ms(5);
    }
    if (out)
        *out = info;
    return 1;
}

void rh_assert_connected(tb_app *app, int timeout_ms)
{
    tb_bus_info info;
    if (!rh_wait_bus(app, TB_BUS_CONNECTED, timeout_ms, &info))
        rh_fail("bus not connected after %d ms: state %s, last_error \"%s\"",
                timeout_ms, tb_bus_state_name(info.state), info.last_error);
    if (strcmp(info.name, "redis") != 0)
        rh_fail("bus is \"%s\", want \"redis\"", info.name);
}

/* ------------------------------------------------------------ recorders */

typedef struct recs {
    rh_rec **v;
    size_t n, cap;
} recs;

static recs *recs_all(void)
{
    static recs all;
    return &all;
}

rh_rec *rh_rec_new(const char *pattern)
{
    recs *all = recs_all();
    rh_rec *r = calloc(1, sizeof *r);
    if (!r)
        rh_fail("out of memory");
    if (all->n == all->cap) {
        size_t cap = all->cap ? all->cap * 2 : 16;
        rh_rec **v = realloc(all->v, cap * sizeof *v);
        if (!v)
            rh_fail("out of memory");
        all->v = v;
        all->cap = cap;
    }
    all->v[all->n++] = r;
    pthread_mutex_init(&r->mu, NULL);
    th_counter_init(&r->count);
    th_counter_init(&r->armed);
    r->pattern = pattern;
    return r;
}

static void rec_free(rh_rec *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->items[i].data);
    free(r->items);
    th_counter_destroy(&r->count);
    th_counter_destroy(&r->armed);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

void rh_rec_add(rh_rec *r, const tb_event *ev, int worker)
{
    rh_got g;
    memset(&g, 0, sizeof g);
    snprintf(g.name, sizeof g.name, "%s", tb_event_name(ev));
    snprintf(g.id, sizeof g.id, "%s", tb_event_id(ev));
    const char *origin = tb_event_origin(ev);
    snprintf(g.origin, sizeof g.origin, "%s", origin ? origin : "");
    if (r->param)
        tb_pattern_param(r->pattern, g.name, r->param, g.param, sizeof g.param);
    g.worker = worker;
    g.ts_us = tb_event_ts_us(ev);
    const void *data = tb_event_data(ev, &g.len);
    g.data = malloc(g.len + 1);
    TH_CHECK(g.data != NULL);
    if (g.data) {
        if (g.len)
            memcpy(g.data, data, g.len);
        g.data[g.len] = '\0';
    }
    pthread_mutex_lock(&r->mu);
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        rh_got *items = realloc(r->items, cap * sizeof *items);
        if (!TH_CHECK(items != NULL)) {
            pthread_mutex_unlock(&r->mu);
            free(g.data);
            return;
        }
        r->items = items;
        r->cap = cap;
    }
    r->items[r->n++] = g;
    pthread_mutex_unlock(&r->mu);
    th_counter_add(&r->count, 1);
}

size_t rh_rec_count(rh_rec *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->n;
    pthread_mutex_unlock(&r->mu);
    return n;
}

int rh_rec_get(rh_rec *r, size_t i, rh_got *out)
{
    pthread_mutex_lock(&r->mu);
    int ok = i < r->n;
    if (ok)
        *out = r->items[i];
    pthread_mutex_unlock(&r->mu);
    return ok;
}

int rh_rec_count_id(rh_rec *r, const char *id)
{
    pthread_mutex_lock(&r->mu);
    int n = 0;
    for (size_t i = 0; i < r->n; i++)
        n += strcmp(r->items[i].id, id) == 0;
    pthread_mutex_unlock(&r->mu);
    return n;
}

int rh_rec_dups(rh_rec *r)
{
    pthread_mutex_lock(&r->mu);
    int n = 0;
    for (size_t i = 0; i < r->n; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(r->items[i].id, r->items[j].id) == 0) {
                n++;
                break;
            }
        }
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

int rh_rec_wait(rh_rec *r, long n, int timeout_ms)
{
    return th_counter_wait_ge(&r->count, n, timeout_ms);
}

void rh_rec_dump(rh_rec *r, const char *label)
{
    pthread_mutex_lock(&r->mu);
    fprintf(stderr, "%s (pattern %s): %zu event(s)\n", label,
            r->pattern ? r->pattern : "-", r->n);
    for (size_t i = 0; i < r->n; i++)
        fprintf(stderr, "  [%zu] w%d %s id=%s origin=%s len=%zu data=%.60s\n",
                i, r->items[i].worker, r->items[i].name, r->items[i].id,
                r->items[i].origin, r->items[i].len,
                r->items[i].data ? r->items[i].data : "");
    pthread_mutex_unlock(&r->mu);
}

/* ------------------------------------------------------------ tasks */

static int ack_body(tb_task *self, void *arg)
{
    (void)self;
    th_counter_add(arg, 1);
    return 0;
}

void rh_arm(tb_task *self, th_counter *armed)
{
    tb_task_opts o = th_opts(NULL, tb_task_worker(self));
    o.kind = "ack";
    TH_CHECK_RC(tb_task_add(tb_task_app(self), ack_body, armed, &o, NULL), 0);
}

/* A waiter: tb_event_wait(pattern) in a loop (or once), recording each
 * event, until cancelled (at app stop). armed counts each wait. */
static int waiter_body(tb_task *self, void *arg)
{
    rh_rec *r = arg;
    for (;;) {
        tb_event *ev = NULL;
        rh_arm(self, &r->armed);
        int rc = tb_event_wait(self, r->pattern, -1, &ev);
        atomic_store(&r->last_rc, rc);
        if (rc != 0) {
            TH_CHECKF(rc == TB_ECANCELED, "waiter %s: tb_event_wait: %s",
                      r->pattern, tb_err_name(rc));
            break;
        }
        rh_rec_add(r, ev, tb_task_worker(self));
        tb_event_unref(ev);
        if (r->once)
            break;
    }
    atomic_store(&r->ended, 1);
    return 0;
}

/* A subscriber: tb_sub_open(pattern, capacity), then tb_sub_next in a loop,
 * recording each event, until cancelled. armed counts up once the
 * subscription is open and the task waits in it. */
static int subscriber_body(tb_task *self, void *arg)
{
    rh_rec *r = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, r->pattern, r->capacity, &err);
    if (!TH_CHECKF(sub != NULL, "tb_sub_open %s: %s", r->pattern,
                   tb_err_name(err))) {
        atomic_store(&r->ended, 1);
        return -1;
    }
    rh_arm(self, &r->armed);
    for (;;) {
        tb_event *ev = NULL;
        int rc = tb_sub_next(self, sub, -1, &ev);
        atomic_store(&r->last_rc, rc);
        if (rc != 0) {
            TH_CHECKF(rc == TB_ECANCELED, "subscriber %s: tb_sub_next: %s",
                      r->pattern, tb_err_name(rc));
            break;
        }
        rh_rec_add(r, ev, tb_task_worker(self));
        tb_event_unref(ev);
    }
    TH_CHECK_EQ(tb_sub_dropped(sub), 0);
    tb_sub_close(sub);
    atomic_store(&r->ended, 1);
    return 0;
}

int rh_spawn(tb_app *app, int worker, int subscriber, rh_rec *r, int timeout_ms)
{
    long before = th_counter_get(&r->armed);
    tb_task_opts o = th_opts(NULL, worker);
    o.kind = subscriber ? "rh-subscriber" : "rh-waiter";
    int rc = tb_task_add(app, subscriber ? subscriber_body : waiter_body, r, &o,
                         NULL);
    if (!TH_CHECK_RC(rc, 0))
        return 0;
    return TH_CHECKF(th_counter_wait_ge(&r->armed, before + 1, timeout_ms),
                     "%s on %s (worker %d) not armed after %d ms",
                     subscriber ? "subscriber" : "waiter", r->pattern, worker,
                     timeout_ms);
}

/* ------------------------------------------------------------ children */

static rh_proc **procs_all(void)
{
    static rh_proc *procs[RH_MAX_APPS];
    return procs;
}

rh_proc *rh_proc_spawn(int alarm_s, int (*fn)(int rfd, int wfd, void *arg),
                       void *arg)
{
    rh_proc **procs = procs_all();
    int slot = 0;
    while (slot < RH_MAX_APPS && procs[slot])
        slot++;
    if (slot == RH_MAX_APPS)
        rh_fail("redis_harness: more than %d child processes", RH_MAX_APPS);
    rh_proc *p = calloc(1, sizeof *p);
    if (!p)
        rh_fail("out of memory");
    int down[2], up[2];
    if (pipe2(down, O_CLOEXEC) != 0 || pipe2(up, O_CLOEXEC) != 0)
        rh_fail("pipe2: %s", strerror(errno));
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        rh_fail("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        gstate()->in_child = 1;
        signal(SIGALRM, SIG_DFL);
        alarm((unsigned)alarm_s);
        close(down[1]);
        close(up[0]);
        int rc = fn(down[0], up[1], arg);
        _exit(rc & 0xff);
    }
    close(down[0]);
    close(up[1]);
    p->pid = pid;
    p->to_child = down[1];
    p->from_child = up[0];
    procs[slot] = p;
    return p;
}

int rh_line_send(int fd, const char *fmt, ...)
{
    char line[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line - 1)
        return 0;
    line[n++] = '\n';
    size_t off = 0;
    while (off < (size_t)n) {
        ssize_t w = write(fd, line + off, (size_t)n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return 0;
        off += (size_t)w;
    }
    return 1;
}

int rh_line_recv(int fd, char *buf, size_t bufsz, size_t *buflen, char *out,
                 size_t outsz, int timeout_ms)
{
    int64_t end = th_mono_ms() + (timeout_ms < 0 ? INT_MAX : timeout_ms);
    for (;;) {
        char *nl = memchr(buf, '\n', *buflen);
        if (nl) {
            size_t n = (size_t)(nl - buf);
            if (n >= outsz)
                return 0;
            memcpy(out, buf, n);
            out[n] = '\0';
            *buflen -= n + 1;
            memmove(buf, nl + 1, *buflen);
            return 1;
        }
        if (*buflen == bufsz)
            return 0;
        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, left_ms(end));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return 0;
        ssize_t r = read(fd, buf + *buflen, bufsz - *buflen);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        *buflen += (size_t)r;
    }
}

int rh_proc_ask(rh_proc *p, char *reply, size_t replysz, int timeout_ms,
                const char *request)
{
    if (!rh_line_send(p->to_child, "%s", request))
        return 0;
    return rh_line_recv(p->from_child, p->buf, sizeof p->buf, &p->buflen, reply,
                        replysz, timeout_ms);
}

int rh_proc_recv(rh_proc *p, char *out, size_t outsz, int timeout_ms)
{
    return rh_line_recv(p->from_child, p->buf, sizeof p->buf, &p->buflen, out,
                        outsz, timeout_ms);
}

int rh_proc_wait(rh_proc *p, int timeout_ms)
{
    int st = 0;
    int rc = -1;
    close(p->to_child); /* EOF: a child reading commands ends */
    if (wait_pid(p->pid, timeout_ms, &st)) {
        if (WIFEXITED(st))
            rc = WEXITSTATUS(st);
        else if (WIFSIGNALED(st))
            fprintf(stderr, "redis_harness: child %d died of signal %d\n",
                    (int)p->pid, WTERMSIG(st));
    } else {
        fprintf(stderr,
                "redis_harness: child %d still running after %d ms; "
                "SIGKILL\n",
                (int)p->pid, timeout_ms);
        kill(p->pid, SIGKILL);
        wait_pid(p->pid, 2000, NULL);
    }
    close(p->from_child);
    rh_proc **procs = procs_all();
    for (int i = 0; i < RH_MAX_APPS; i++) {
        if (procs[i] == p)
            procs[i] = NULL;
    }
    free(p);
    return rc;
}

/* ------------------------------------------------------------ cleanup */

int rh_cleanup(void)
{
    int stopped = 0;
    rh_proc **procs = procs_all();
    for (int i = 0; i < RH_MAX_APPS; i++) {
        if (procs[i])
            rh_proc_wait(procs[i], 2000);
    }
    /* A test that failed while a server was paused: let it answer, or the
     * apps' stop would wait for it. */
    global_state *g = gstate();
    for (int i = 0; i < RH_MAX_SERVERS; i++) {
        if (g->servers[i] && g->servers[i]->paused)
            rh_server_resume(g->servers[i]);
    }
    rh_app **apps = apps_all();
    for (int i = 0; i < RH_MAX_APPS; i++) {
        if (apps[i]) {
            rh_app_stop(apps[i]);
            stopped++;
        }
    }
    recs *all = recs_all();
    for (size_t i = 0; i < all->n; i++)
        rec_free(all->v[i]);
    free(all->v);
    memset(all, 0, sizeof *all);
    for (int i = 0; i < RH_MAX_SERVERS; i++) {
        if (g->servers[i])
            rh_server_destroy(g->servers[i]);
    }
    return stopped;
}

/* ------------------------------------------------------------ the run */

int rh_setup(void **state)
{
    (void)state;
    th_failures_reset();
    tb_log_set_level(TB_LOG_WARN);
    return 0;
}

int rh_teardown(void **state)
{
    (void)state;
    rh_cleanup();
    return 0;
}

void rh__main_prepare(void)
{
    signal(SIGPIPE, SIG_IGN);
    const char *filter = getenv("TB_ITEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
}
