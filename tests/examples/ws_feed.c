/* ws_feed.c - the websocket snippet of Sanic's background-tasks guide, in
 * C, run against a real websocket client:
 *
 *     async def receiver(ws):
 *         while True:
 *             message = await ws.recv()
 *             if not message:
 *                 break
 *             print(f"Received: {message}")
 *
 *     @app.websocket("/feed")
 *     async def feed(request, ws):
 *         task_name = f"receiver:{request.id}"
 *         request.app.add_task(receiver(ws), name=task_name)
 *         try:
 *             while True:
 *                 await request.app.event("my.custom.event")
 *                 await ws.send("A message was sent")
 *         finally:
 *             # When the websocket closes, let's cleanup the task
 *             await request.app.cancel_task(task_name)
 *             request.app.purge_tasks()
 *
 * The program serves /feed (and the built-in API, for the client to POST
 * events and read the task list), then runs a Python websockets client
 * (Debian's python3-websockets) that connects with request id "feed1",
 * sends two messages, fires my.custom.event three times over HTTP and
 * expects "A message was sent" after each, checks that receiver:feed1 is
 * running, closes, and checks that receiver:feed1 is gone from the task
 * list. Exits 0 only if the client passed and the receiver printed both
 * messages. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <taskbus/taskbus.h>

static atomic_int received; /* messages the receiver printed */
static int port;
static int client_status = -1;

/* async def receiver(ws) */
static int receiver(tb_task *self, void *arg)
{
    tb_ws *ws = arg;
    for (;;) {
        tb_ws_msg m;
        if (tb_ws_recv(self, ws, -1, &m) != 0)
            break; /* closed, or cancelled by feed's clean-up */
        printf("Received: %.*s\n", (int)m.len, (const char *)m.data);
        fflush(stdout);
        atomic_fetch_add(&received, 1);
    }
    return 0;
}

/* @app.websocket("/feed") async def feed(request, ws) */
static int feed(tb_task *self, tb_ws *ws, void *ud)
{
    (void)ud;
    tb_app *app = tb_ws_app(ws);
    char task_name[128];
    snprintf(task_name, sizeof task_name, "receiver:%s", tb_ws_request_id(ws));
    /* On the connection's worker: tb_ws_recv is served there. */
    tb_task_opts o = {.name = task_name, .worker = tb_ws_worker(ws)};
    if (tb_task_add(app, receiver, ws, &o, NULL) != 0)
        return 1;
    for (;;) {
        tb_event *ev = NULL;
        if (tb_event_wait(self, "my.custom.event", -1, &ev) != 0)
            break; /* the socket closed: this task is cancelled */
        tb_event_unref(ev);
        const char *msg = "A message was sent";
        if (tb_ws_send(ws, TB_WS_TEXT, msg, strlen(msg)) != 0)
            break;
    }
    /* finally: */
    tb_task_cancel(app, task_name, TB_TIMEOUT_DEFAULT);
    tb_task_purge(app);
    return 0;
}

static const char client_py[] =
    "import asyncio, json, sys, urllib.request, urllib.error\n"
    "import websockets\n"
    "base = 'http://127.0.0.1:%d'\n"
    "def http(method, path, body=None):\n"
    "    req = urllib.request.Request(base + path, data=body, method=method)\n"
    "    try:\n"
    "        with urllib.request.urlopen(req, timeout=5) as r:\n"
    "            return r.status, r.read()\n"
    "    except urllib.error.HTTPError as e:\n"
    "        return e.code, e.read()\n"
    "async def main():\n"
    "    url = 'ws://127.0.0.1:%d/feed'\n"
    "    async with websockets.connect(url, extra_headers={'X-Request-ID': "
    "'feed1'}) as ws:\n"
    "        await ws.send('hello')\n"
    "        await ws.send('world')\n"
    "        for i in range(3):\n"
    "            # the handler waits for the event: fire until it answers\n"
    "            for attempt in range(50):\n"
    "                st, _ = http('POST', '/events/my.custom.event', b'x')\n"
    "                assert st == 202, st\n"
    "                try:\n"
    "                    got = await asyncio.wait_for(ws.recv(), 0.2)\n"
    "                    break\n"
    "                except asyncio.TimeoutError:\n"
    "                    pass\n"
    "            else:\n"
    "                sys.exit('no answer to my.custom.event')\n"
    "            assert got == 'A message was sent', got\n"
    "        st, body = http('GET', '/tasks/receiver:feed1')\n"
    "        assert st == 200 and json.loads(body)['state'] == 'running', "
    "(st, body)\n"
    "    for attempt in range(100):\n"
    "        st, _ = http('GET', '/tasks/receiver:feed1')\n"
    "        if st == 404:\n"
    "            return\n"
    "        await asyncio.sleep(0.05)\n"
    "    sys.exit('receiver:feed1 still listed after the socket closed')\n"
    "asyncio.run(asyncio.wait_for(main(), 30))\n";

/* A free loopback port (bound and released: civetweb takes a number). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0)
        return -1;
    close(fd);
    return ntohs(sa.sin_port);
}

static void *run_client(void *arg)
{
    tb_app *app = arg;
    char script[sizeof client_py + 32];
    snprintf(script, sizeof script, client_py, port, port);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/usr/bin/python3", "python3", "-c", script, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    if (pid > 0 && waitpid(pid, &st, 0) == pid)
        client_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    tb_app_stop(app);
    return NULL;
}

static pthread_t client_thread;

static int on_ready(tb_app *app, int worker, void *arg)
{
    (void)worker;
    (void)arg;
    return pthread_create(&client_thread, NULL, run_client, app) ? 1 : 0;
}

int main(void)
{
    char listen[32];
    port = free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.http.listen = listen;
    tb_app *app = tb_app_new(&cfg, NULL);
    if (!app || tb_app_add_websocket(app, "/feed", feed, NULL, NULL) != 0 ||
        tb_app_add_api(app) != 0 ||
        tb_app_add_listener(app, TB_MAIN_READY, on_ready, NULL) != 0)
        return 1;
    int rc = tb_app_run(app);
    pthread_join(client_thread, NULL);
    tb_app_free(app);
    printf("client exit %d, receiver got %d messages, app %s\n", client_status,
           atomic_load(&received), tb_strerror(rc));
    return client_status == 0 && atomic_load(&received) == 2 && rc == 0 ? 0 : 1;
}
