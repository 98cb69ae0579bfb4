/* taskbus.h - the public API of taskbus: workers, named background tasks,
 * app events and lifecycle listeners.
 *
 * Conventions (they hold for every function below unless its comment says
 * otherwise):
 *
 *  - Functions return int: 0 (or a non-negative count) on success, a
 *    negative TB_E* code on failure. TB_E* codes are negated errno values, so
 *    -ECANCELED == TB_ECANCELED; tb_strerror() names them.
 *  - If a function that takes a callback fails, the callback is never called.
 *  - Strings passed in are copied; the caller keeps ownership of its buffers.
 *  - Functions marked TB_TASK_FN suspend the calling task: they may only be
 *    called from inside a task (a coroutine run by a worker). Calling one from
 *    anywhere else aborts the process with a message naming the function.
 *  - Cancellation is delivered once, as in asyncio: the suspension point a
 *    task is in when it is cancelled (or its next one) returns TB_ECANCELED;
 *    later suspension points work normally, so the task can clean up (even
 *    with I/O) before it returns. tb_task_cancelled() stays 1. A task that
 *    keeps going after that is ended by the graceful timeout at shutdown.
 *  - "Any thread" functions are safe to call concurrently from any thread,
 *    including worker threads and civetweb's handler threads.
 *  - Timeouts are in milliseconds: 0 does not wait, a negative value
 *    (TB_FOREVER) waits without limit, and TB_TIMEOUT_DEFAULT takes the
 *    app's setting for that wait (the function's comment names it).
 *  - Registration is tb_app_add_<what> (tb_app_add_listener, _route,
 *    _websocket, _kind, _kind_check, _builtin_kinds, _api): before
 *    tb_app_run, except where a comment says otherwise.
 *  - The pointer a caller passes for its own use is called ud (user data)
 *    everywhere; taskbus hands it back as it was and never frees it unless
 *    a free function is given with it.
 */
#ifndef TASKBUS_TASKBUS_H
#define TASKBUS_TASKBUS_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TB_VERSION_MAJOR 0
#define TB_VERSION_MINOR 1
#define TB_VERSION_PATCH 0
#define TB_VERSION_STRING "0.1.0"

/* Marks a function that may only run inside a task because it suspends. */
#define TB_TASK_FN

/* Timeouts (milliseconds): wait without limit, or take the app's setting.
 * TB_TIMEOUT_DEFAULT is the largest int, so no real timeout means it. */
#define TB_FOREVER (-1)
#define TB_TIMEOUT_DEFAULT 0x7fffffff

/* ---------------------------------------------------------------- errors */

/* X(name, value, message): the one table behind the enum and tb_strerror(). */
#define TB_ERRNO_MAP(X)                                                        \
    X(EINVAL, -EINVAL, "invalid argument")                                     \
    X(ENOMEM, -ENOMEM, "out of memory")                                        \
    X(EEXIST, -EEXIST, "a live task already holds that name")                  \
    X(ENOENT, -ENOENT, "no such task")                                         \
    X(ECANCELED, -ECANCELED, "cancelled")                                      \
    X(ETIMEDOUT, -ETIMEDOUT, "timed out")                                      \
    X(EAGAIN, -EAGAIN, "resource temporarily unavailable")                     \
    X(EBUSY, -EBUSY, "busy")                                                   \
    X(EDEADLK, -EDEADLK, "would wait for itself")                              \
    X(EINPROGRESS, -EINPROGRESS, "requested; not finished yet")                \
    X(EMSGSIZE, -EMSGSIZE, "message too long")                                 \
    X(ENAMETOOLONG, -ENAMETOOLONG, "name too long")                            \
    X(ENOTCONN, -ENOTCONN, "event bus not connected")                          \
    X(ESHUTDOWN, -ESHUTDOWN, "app is stopping or stopped")                     \
    X(ENOSPC, -ENOSPC, "queue full")                                           \
    X(EPIPE, -EPIPE, "peer closed")                                            \
    X(EPERM, -EPERM, "operation not permitted")                                \
    X(EACCES, -EACCES, "authentication failed")                                \
    X(EPROTO, -EPROTO, "protocol error")                                       \
    X(EIO, -EIO, "input/output error")                                         \
    X(ELOOP, -ELOOP, "event relayed too many times (event_max_hops)")          \
    X(ENOTSUP, -ENOTSUP, "not supported here (history is off)")                \
    X(ENOTREPLICATED, -EREMOTEIO,                                              \
      "published, but fewer Redis replicas than wait_replicas confirmed it")

typedef enum {
#define TB__ERR_ENUM(name, value, msg) TB_##name = (value),
    TB_ERRNO_MAP(TB__ERR_ENUM)
#undef TB__ERR_ENUM
} tb_errno;

/* A static string describing code (a TB_E* value or any -errno). Never NULL. */
const char *tb_strerror(int code);
/* The symbolic name of code ("ECANCELED"), or "EUNKNOWN". Never NULL. */
const char *tb_err_name(int code);

/* ---------------------------------------------------------------- logging */

typedef enum {
    TB_LOG_DEBUG = 0,
    TB_LOG_INFO = 1,
    TB_LOG_WARN = 2,
    TB_LOG_ERROR = 3,
    TB_LOG_OFF = 4
} tb_log_level;

/* Receives one formatted log line (no trailing newline). Called from any
 * thread, possibly concurrently; msg is valid only during the call. */
typedef void (*tb_log_fn)(tb_log_level level, const char *msg, void *ud);

/* Process-wide logging. The default handler writes
 * "LEVEL taskbus: message" lines to stderr at TB_LOG_INFO and above.
 * Set handler to NULL to restore the default. Any thread. */
void tb_log_set_level(tb_log_level level);
void tb_log_set_handler(tb_log_fn fn, void *ud);
tb_log_level tb_log_get_level(void);

/* Logs a printf-style message at level, through the same handler and level
 * filter as taskbus's own lines: below the level it returns at once without
 * formatting. The handler gets one line: trailing newlines dropped, CR and
 * LF inside replaced by blanks, at most 2048 bytes (a longer message is cut
 * at a character boundary and ends in "..."). Any thread, also inside a
 * task (it never suspends; it takes about 5 KiB of stack); errno is kept.
 * Not from inside a log handler (it would re-enter it). */
void tb_log(tb_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------- types */

typedef struct tb_app tb_app;     /* one app instance: workers + registry */
typedef struct tb_task tb_task;   /* a running task, as seen from inside */
typedef struct tb_event tb_event; /* an immutable, reference-counted event */
typedef struct tb_sub tb_sub;     /* a task's subscription (bounded queue) */

/* ---------------------------------------------------------------- app */

/* An app's settings, in four groups. Defaults, bounds, units, the service's
 * flags and TASKBUS_* variables all come from one table (service/config.c),
 * listed by tb_config_settings() and in README's settings table; the
 * comments here say what each setting means. Each group ends with reserved
 * room, so that settings added later keep the struct's size and layout:
 * fill a config with tb_app_config_init() and set fields by name. */
typedef struct tb_core_config {
    int workers;             /* worker threads */
    int graceful_timeout_ms; /* stop: how long tasks get to finish */
    int shutdown_delay_ms;   /* stop: first this long with /readyz at 503
                                and new websockets refused (503), requests
                                and open websockets still served, so load
                                balancers drain */
    size_t stack_size;       /* per-task stack, bytes, rounded up to pages */
    size_t max_event_size;   /* largest event data, bytes */
    int sub_capacity;        /* default subscription queue bound */
    int worker_queue_max;    /* events waiting in one worker's inbox; a
                                worker that falls further behind drops the
                                newest for itself and counts them
                                (tb_bus_info.queue_full_drops) */
    int blocking_threads;    /* tb_run_blocking pool size */
    int handle_signals;      /* 1: tb_app_run stops on SIGINT/SIGTERM; 0:
                                the embedder handles its signals */
    const char *event_namespace; /* [A-Za-z0-9_.-], 1..64 bytes: Redis
                                    channels are "<ns>:event:<name>" */
    int json_max_depth; /* deepest nesting of arrays and objects accepted in
                           JSON from outside (HTTP bodies, websocket and
                           Redis messages); deeper is refused (400
                           bad_json, a websocket error, a dropped Redis
                           message). Event data nested deeper than
                           json_max_depth - 1 travels as a JSON string.
                           0: 64, or stack_size / 1 KiB if that is less
                           (each level may take 512 bytes of a task's
                           stack, and they must fit in half of it) */
    int event_max_hops; /* how many times an event may be re-dispatched as
                           the cause of another (relay tasks,
                           tb_dispatch_from): an event that has made this
                           many hops is not relayed again, so a relay cycle
                           dies out */
    int instance_heartbeat_ms; /* how often this instance renews its record
                                  in the bus's shared store (GET
                                  /instances; docs/CLUSTER.md) */
    int instance_ttl_ms;     /* how long a record lives after its last renewal:
                                a killed instance leaves the list within it;
                                above instance_heartbeat_ms */
    int lost_keep_ms;        /* how long the task names a dead instance held
                                are answered as "lost" before they are
                                forgotten */
    int singleton_lease_ms;  /* a singleton run's lease in Redis, renewed
                                every third of it: another instance takes
                                over at most this long after the holder
                                died */
    int singleton_margin_ms; /* a run that could not renew cancels itself
                                this long before its lease may expire
                                (clock drift between instances and Redis);
                                below a third of the lease */
    int periodic_min_ms;     /* shortest interval of a periodic task */
    /* The namespace's history (docs/HISTORY.md): the last history_size
     * events are kept (in Redis with the Redis bus, in this process with
     * the in-process bus), each with a position (tb_event_pos), so that a
     * subscriber can resume after a position (tb_sub_resume, GET /ws and
     * /events with since, GET /history) and instances catch up after a
     * lost link. 0: no history, no positions: Redis gets plain PUBLISHes
     * as before. */
    int history_size;
    int history_ttl_ms;       /* the history lives this long after the last
                                 publish (its Redis key's TTL, renewed by each
                                 publish); the epoch and the count stay, so a
                                 resume after it is told recovered 0 */
    int history_page_max;     /* events one GET /history answers at most: the
                                 limit's default and cap */
    int history_scan_max;     /* events one tb_history_read (GET /history)
                                 looks at most, matching or not, so that a
                                 pattern nothing matches costs a bounded
                                 read; beyond, more is 1 */
    size_t history_max_bytes; /* the in-process bus's history holds at most
                                 this much event memory (names, data and
                                 each event's ~200 bytes of its own): the
                                 oldest go first beyond it. (Redis keeps
                                 history_size events whatever their size:
                                 size its maxmemory for them.) */
    int batch_max_events;     /* events one tb_dispatch_many (POST /events)
                                 carries at most (the Redis bus also
                                 refuses more than
                                 redis.publish_queue_max) */
    int batch_max_concurrent; /* POST /events requests handled at once (more:
                                 503 busy): each holds one item's parse
                                 (up to ~20 x max_event_size) and its
                                 events until the bus confirms them */
    void *reserved_[1];       /* room for later settings; keep zero (the twelve
                                 ints above took six slots, batch_max_events
                                 and batch_max_concurrent one) */
} tb_core_config;

/* The event bus. With no url, events stay in this process (the in-process
 * bus). With one, they travel over Redis pub/sub on channel
 * "<event_namespace>:event:<name>" between every instance that shares the
 * server and namespace. A library built without Redis (CMake
 * TB_WITH_REDIS=OFF, no hiredis) has the in-process bus only: a url makes
 * tb_app_new fail. */
typedef struct tb_redis_config {
    const char *url;        /* redis://[user:password@]host[:port][/db],
                               unix://[user:password@]/path[?db=N], or
                               redis-sentinel://[user:password@]host[:port]
                               [,host[:port]...]/master[/db]: the master
                               the sentinels name (user, password and db
                               are the master's); NULL or "": the
                               in-process bus */
    const char *password;   /* overrides the URL's password (a secret kept
                               out of the URL, e.g. read from a file); NULL:
                               the URL's. Copied, never logged */
    int connect_timeout_ms; /* per attempt */
    int command_timeout_ms; /* a PUBLISH or PING without a reply by then
                               means the link is dead */
    int ping_interval_ms;   /* keepalive on an idle link */
    int retry_min_ms;       /* reconnect backoff start */
    int retry_max_ms;       /* backoff cap (with jitter) */
    int publish_queue_max;  /* events handed to the bus and not yet
                               acknowledged by Redis; beyond it tb_dispatch
                               returns TB_ENOSPC */
    int publish_retry_ms;   /* an accepted event Redis has not acknowledged
                               is resent after reconnects for this long,
                               then given up (logged,
                               tb_bus_info.publish_failed) */
    const char *sentinel_password; /* AUTH for the sentinels of a
                                      redis-sentinel:// URL (every sentinel
                                      the same; the default user); NULL:
                                      none. Copied, never logged */
    /* wait_replicas > 0 (history on only): after each publish command,
     * WAIT for that many replicas, at most wait_timeout_ms (below
     * command_timeout_ms), before its events are acknowledged; fewer:
     * TB_ENOTREPLICATED (published, but a failover may lose it). With it a
     * Sentinel failover keeps the history's epoch when that is safe
     * (docs/HISTORY.md). 0: no WAIT. */
    int wait_replicas;
    int wait_timeout_ms;
    void *reserved_[6]; /* the two ints above took one slot */
} tb_redis_config;

/* The embedded HTTP server (civetweb). A library built without it (CMake
 * TB_WITH_HTTP=OFF, no civetweb or wslay) serves no HTTP: a listen makes
 * tb_app_new fail; routes and websocket endpoints may still be added, and
 * nothing serves them. */
typedef struct tb_http_config {
    const char *listen; /* "127.0.0.1:8080" (IPv4 host:port; civetweb 1.15
                           has no IPv6); NULL or "": no HTTP server */
    int threads;        /* civetweb worker threads: concurrent connections */
    size_t max_body;    /* request body limit, bytes; beyond it 413 */
    int longpoll_max;   /* long polls (GET /events/{pattern}) waiting at
                           once; each holds an HTTP thread, so it must be
                           below threads; beyond it 503 (too_many_waits); 0:
                           half of threads */
    /* Lingering close: a request refused before its body was read (413,
     * a framing error...) is answered, the socket's write side shut, and
     * up to discard_max bytes are read and dropped for at most
     * discard_timeout_ms, until the client closes, so that a client still
     * sending its body reads the answer instead of a reset. Then the
     * connection is closed. 0 in either: closed at once. */
    size_t discard_max;
    int discard_timeout_ms;
    /* The HTTP API's token. With one, every route but GET and HEAD of
     * /healthz, /readyz and the dashboard's files (tb_app_add_dashboard;
     * every route added with tb_app_add_route is protected)
     * answers 401 unless the request carries "Authorization: Bearer
     * <token>" or "?token=<token>". Checked before routing: without the
     * token, unknown paths, wrong methods and upgrades to paths that are
     * no websocket endpoint answer 401 too, not 404/405.
     * NULL or "": no token (anyone who reaches listen may use the API).
     * 1..256 visible ASCII bytes; copied. Never logged. */
    const char *api_token;
    /* Client tokens (JWT), for clients that may only use events: with
     * one, the event routes (GET /ws, GET /sse, GET and POST
     * /events/{...}) also take a JWT in place of api_token, signed with
     * jwt_secret (HS256) or the key in the file jwt_public_key (RS256 or
     * ES256, whichever the key is for); its claims "subscribe" and
     * "dispatch" (arrays of event patterns) say what the client may do,
     * and anything else is 403 (forbidden). "exp" is required; a websocket
     * opened with the token is closed (1008) when it passes, an SSE stream
     * ended. Every other route still needs
     * api_token, so either key needs api_token set. Both NULL or "": client
     * tokens are off. Copied; the secret is never logged. */
    const char *jwt_secret;     /* at least 32 bytes */
    const char *jwt_public_key; /* path of a PEM "PUBLIC KEY" file (RSA of
                                   2048 bits or more, or EC P-256), read by
                                   tb_app_new */
    const char *jwt_audience;   /* NULL: tokens with an "aud" are refused;
                                   else "aud" must name it */
    const char *jwt_issuer;     /* NULL: any "iss"; else "iss" must equal it */
    int jwt_leeway_ms;          /* clock skew allowed on "exp" and "nbf" */
    int jwt_max_size;           /* longest token accepted, bytes; longer is
                                   refused (401 token_too_large) unread */
    int tasks_page_max;         /* tasks in one GET /tasks page at most: the
                                   limit's default and cap (1..1000) */
    /* The front (on by default): a libevent loop owns listen, reads each
     * request whole and only then relays it to civetweb on a private
     * loopback port, so that clients slow to send their request, or idle
     * between requests, hold no civetweb thread. 0: civetweb listens on
     * listen itself (one thread per open connection). */
    int front;
    int header_timeout_ms;    /* a request line and headers not complete
                                 this long after their first byte: the
                                 connection is closed (front) */
    int body_timeout_ms;      /* no byte of a request body for this long:
                                 the connection is closed (front) */
    int keepalive_timeout_ms; /* an idle keep-alive connection is closed
                                 after this long */
    int upstream_pool;        /* idle front-to-civetweb connections kept
                                 for the next request (0: a connection
                                 per request); at most threads are kept
                                 whatever this says. Each holds a
                                 civetweb thread, but the front takes a
                                 kept one before it opens another, so
                                 they never hold a request back */
    int max_connections;      /* client connections the front holds open;
                                 a new one beyond is closed at once */
    size_t body_memory_max;   /* request body bytes the front holds across
                                 all connections; a body beyond is 503 */
    int body_deadline_ms;     /* a whole request body within this long of
                                 its head, or the connection is closed */
    int queue_timeout_ms;     /* a request waiting this long for an HTTP
                                 thread is answered 503 (front) */
    int front_answers;        /* with front: the front answers POST
                                 /events and POST /events/{name} itself
                                 (publishes, then answers once the bus has
                                 confirmed), without a civetweb thread or
                                 the loopback hop; 0: relayed as every
                                 other route. Same answers either way */
    /* With front_answers: a POST /events body over this many bytes is
     * relayed to a civetweb thread, whose parse stalls no other client. */
    size_t front_batch_max_body;
    /* No reserved slot was left in this group: the front's settings
     * (front_answers, front_batch_max_body) changed the size of
     * tb_app_config (SOVERSION 0 still: 0.x). */
} tb_http_config;

/* Websockets (tb_app_add_websocket, GET /ws). An upgraded connection leaves
 * civetweb's threads for a worker's event loop, so idle clients cost
 * memory, not threads. */
typedef struct tb_ws_config {
    int max_clients;         /* open websockets; beyond, the upgrade is
                                answered 503 (too_many_clients) */
    size_t max_message;      /* largest message a client may send, bytes
                                (after reassembly); beyond, close 1009 */
    size_t send_queue_bytes; /* bytes queued for one client and not yet
                                taken by its socket; a client that lets
                                more pile up is closed with 1008. With
                                history on, at least max_event_size +
                                TB_EVENT_FRAME_OVERHEAD (tb_app_new
                                refuses less: an event that cannot be
                                sent would end every resume) */
    int send_queue_msgs;     /* the same bound in messages */
    int recv_queue_msgs;     /* messages received and not yet taken by
                                tb_ws_recv; beyond, the socket is not read
                                (TCP pushes back) */
    int max_patterns;        /* event patterns one GET /ws connection may
                                hold */
    int ping_interval_ms;    /* a ping after this long; 0: no pings */
    int ping_timeout_ms;     /* no pong by then: close 1011 */
    /* Origins allowed to open websockets: a comma-separated list of exact
     * Origin values ("https://app.example.com"), or "*". NULL or "": any
     * (requests without an Origin header, i.e. non-browser clients, are
     * always allowed). Others are answered 403 (origin_not_allowed). */
    const char *allowed_origins;
    /* Bytes all websocket connections and SSE streams of the app may hold
     * together in receive buffers (a message arriving, messages waiting
     * for tb_ws_recv, the one it returned last) and send queues. Beyond,
     * the connections holding the most are closed with 1008 ("memory
     * limit"; an SSE stream ends with a comment saying so) until the
     * total is below 7/8 of it. */
    size_t memory_max;
    /* SSE streams (GET /sse) follow the websocket rules above (Origin,
     * send queue bounds, patterns per connection) with their own count: */
    int sse_max_clients;  /* open SSE streams; beyond, 503
                             (too_many_clients) */
    int sse_keepalive_ms; /* a comment line after this long without
                             anything sent, so that proxies and clients see
                             the stream alive */
    size_t sse_max_input; /* bytes a client may send after its request (it
                             has nothing to send); beyond, the stream
                             ends, logged */
    void *reserved_[5];   /* memory_max, the two ints above and
                             sse_max_input took three slots */
} tb_ws_config;

typedef struct tb_app_config {
    tb_core_config core;
    tb_redis_config redis;
    tb_http_config http;
    tb_ws_config ws;
} tb_app_config;

/* Fills cfg with the defaults (tb_config_settings lists them). */
void tb_app_config_init(tb_app_config *cfg);

/* The settings table, for tools that configure an app from text (the
 * service's flags and TASKBUS_* variables are made from it). */
typedef enum {
    TB_CONFIG_INT,     /* int, in [min, max] */
    TB_CONFIG_SIZE,    /* size_t bytes, in [min, max] */
    TB_CONFIG_MS,      /* int milliseconds, in [min, max] */
    TB_CONFIG_SECONDS, /* int milliseconds, written as (decimal) seconds */
    TB_CONFIG_BOOL,    /* int 0 or 1 */
    TB_CONFIG_STRING,  /* const char *, NULL when unset */
    TB_CONFIG_SECRET,  /* a string never printed */
    TB_CONFIG_URL      /* a string printed without its password */
} tb_config_type;

typedef struct tb_config_setting {
    const char *name; /* "ws.max_clients": group and field */
    const char *flag; /* "ws-max-clients" (the service's --flag), or NULL
                         for a setting with no flag */
    const char *env;  /* "TASKBUS_WS_MAX_CLIENTS", or NULL likewise */
    tb_config_type type;
    long long min, max; /* bounds of numbers, in the field's unit (ms for
                           TB_CONFIG_SECONDS) */
    const char *help;   /* one line */
} tb_config_setting;

/* The table: *n entries, static, in a stable order. Any thread. */
const tb_config_setting *tb_config_settings(size_t *n);

/* Sets the setting named key (its name or its flag) from text: numbers in
 * decimal (TB_CONFIG_SECONDS: decimal seconds, at most 3 decimals),
 * booleans as 1/0/true/false; "" or NULL unsets a string. A string setting
 * keeps the pointer: value must outlive cfg's use (tb_app_new copies what it
 * keeps). Strings with a form are checked here too (core.event_namespace,
 * http.listen); rules between settings wait for tb_app_new. Returns 0,
 * TB_ENOENT (no such setting) or TB_EINVAL with a reason in err (errsz
 * bytes; may be NULL) naming the setting, its bounds and the value. */
int tb_config_set(tb_app_config *cfg, const char *key, const char *value,
                  char *err, size_t errsz);

/* Writes setting s's value in cfg as text into out (outsz bytes): numbers
 * in their unit (seconds for TB_CONFIG_SECONDS), strings as they are, ""
 * for an unset string, "(set)" for a set secret, a URL with its password
 * (or a userinfo without ':', which may be one) as "***". Safe to log.
 * Returns the length, TB_ENAMETOOLONG if out is too small, TB_ENOMEM. */
int tb_config_format(const tb_app_config *cfg, const tb_config_setting *s,
                     char *out, size_t outsz);

/* Creates an app. cfg may be NULL for defaults; it is copied. Returns NULL
 * and sets *err (if err is not NULL) to a TB_E* code on bad config or no
 * memory. A setting that needs an adapter this build of the library lacks
 * (redis.url without Redis, http.listen without HTTP: see their groups) is
 * bad config: TB_EINVAL, with a logged line that says which. The app is
 * not running until tb_app_run(). */
tb_app *tb_app_new(const tb_app_config *cfg, int *err);

/* Runs the app on the calling thread (the "main process" of Sanic's model):
 * main-start listeners, then the workers (each: before-start, loop start,
 * after-start, then the tasks added before run), then main-ready listeners;
 * blocks until tb_app_stop(); then stops the workers (before-stop, cancel
 * every task and wait up to graceful_timeout_ms, after-stop), then the bus
 * (the Redis bus first tries to publish what it has accepted, for up to
 * redis_command_timeout_ms), then main-stop listeners. Returns 0 after a clean
 * stop, TB_ETIMEDOUT if tasks had to be abandoned at the graceful timeout, or
 * the error that aborted start-up (a start listener's non-zero return, a worker
 * that could not start). An app runs once: a second call returns TB_ESHUTDOWN.
 */
int tb_app_run(tb_app *app);

/* With core.handle_signals, tb_app_run stops the app on SIGINT or SIGTERM,
 * and a second one while it stops ends the process at once with
 * _exit(128 + sig). Just before, fn(sig) runs inside the signal handler to
 * say so in the program's own log format: it must be async-signal-safe
 * (write(2) is; stdio, malloc and tb_log are not). NULL (the default)
 * writes "taskbus: second signal: exiting at once" to stderr. Process-wide,
 * like signal handlers; set it before tb_app_run. */
void tb_app_set_second_signal_hook(void (*fn)(int sig));

/* Asks a running (or starting) app to stop. Any thread; async-signal-safe,
 * so it may be called from a signal handler. Idempotent. Before run, it makes
 * the coming tb_app_run() return at once after main-start listeners. */
void tb_app_stop(tb_app *app);

/* Frees an app that is not running (never run, or tb_app_run returned).
 * Calls arg_free of the tasks added before run. No other thread may still
 * be calling into the app (a tb_dispatch racing tb_app_run's return is
 * fine; one racing tb_app_free is a use after free). NULL is a no-op. */
void tb_app_free(tb_app *app);

/* 1 while the app is between worker start and the beginning of stop. */
int tb_app_is_running(const tb_app *app);
int tb_app_workers(const tb_app *app);
const tb_app_config *tb_app_get_config(const tb_app *app);

/* The worker index (0..workers-1) of the calling thread if it is one of
 * app's workers, else -1. Any thread. */
int tb_app_current_worker(const tb_app *app);

/* Opaque pointer for the embedder; not used by taskbus. */
void tb_app_set_userdata(tb_app *app, void *ud);
void *tb_app_get_userdata(const tb_app *app);

/* ---------------------------------------------------------------- listeners */

typedef enum {
    TB_MAIN_START = 0,      /* main thread, before any worker starts */
    TB_MAIN_READY,          /* main thread, after every worker has started */
    TB_MAIN_STOP,           /* main thread, after every worker has stopped */
    TB_WORKER_BEFORE_START, /* worker thread, before its loop runs */
    TB_WORKER_AFTER_START,  /* worker thread, loop running, before tasks
                               added before run are started */
    TB_WORKER_BEFORE_STOP,  /* worker thread, before its tasks are cancelled */
    TB_WORKER_AFTER_STOP,   /* worker thread, after its tasks have ended */
    TB__LISTENER_COUNT
} tb_listener_kind;

/* worker is the worker index, or -1 for main-process listeners. A non-zero
 * return from a MAIN_START or WORKER_BEFORE_START listener aborts start-up
 * and becomes tb_app_run's return value; other listeners' returns are
 * logged and otherwise ignored. Listeners must not suspend. */
typedef int (*tb_listener_fn)(tb_app *app, int worker, void *ud);

/* Registers a listener; they run in registration order (stop listeners in
 * reverse order, as Sanic does). Only before tb_app_run: TB_EBUSY after. */
int tb_app_add_listener(tb_app *app, tb_listener_kind kind, tb_listener_fn fn,
                        void *ud);

/* ---------------------------------------------------------------- tasks */

/* A task's body. Its return value is the task's result: 0 means done,
 * anything else (or an error set with tb_task_fail) means failed; a task
 * that was cancelled before it finished ends cancelled whatever it returns. */
typedef int (*tb_task_fn)(tb_task *self, void *ud);

typedef enum {
    TB_TASK_PENDING = 0, /* added, not yet run */
    TB_TASK_RUNNING,     /* started (running or suspended) */
    TB_TASK_DONE,        /* returned 0 */
    TB_TASK_FAILED,      /* returned non-zero or set an error */
    TB_TASK_CANCELLED,   /* cancelled before it finished */
    TB_TASK_LOST         /* cluster answers only: the instance that ran it
                            is gone (its heartbeat expired); how it ended
                            is unknown */
} tb_task_state;

const char *tb_task_state_name(tb_task_state s); /* "pending", ... */

#define TB_TASK_NAME_MAX 200 /* bytes, excluding the NUL */
#define TB_TASK_ERROR_MAX 256
#define TB_KIND_NAME_MAX 64 /* bytes of a kind's name (tb_app_add_kind) */

enum {
    TB_TASK_REPLACE = 1u << 0,   /* cancel (and wait for) a live task that
                                    holds the name, then add this one */
    TB_TASK_EPHEMERAL = 1u << 1, /* leave the registry as soon as it ends
                                   (no purge needed; a join or cancel that
                                   was waiting for it still sees it end) */
    TB_TASK_SINGLETON = 1u << 2  /* one run in the whole cluster, moved to
                                   another instance if its own dies
                                   (docs/CLUSTER.md). Needs a name. Before
                                   tb_app_run with tb_task_add (every
                                   instance must add it: any may run it);
                                   while running only with tb_task_spawn,
                                   whose kind and args every instance can
                                   run */
};

#define TB_WORKER_ANY (-1) /* least loaded worker */

typedef struct tb_task_opts {
    const char *name; /* NULL: a generated unique name "task-<id>"; else
                         1..TB_TASK_NAME_MAX bytes, no control characters,
                         not "." or ".." (a URL cannot address those) */
    int worker;       /* TB_WORKER_ANY (default) or 0..workers-1 */
    unsigned flags; /* TB_TASK_REPLACE, TB_TASK_EPHEMERAL, TB_TASK_SINGLETON */
    void (*ud_free)(void *ud); /* called with ud when the task ends (for
                                  tasks added before run: at tb_app_free) */
    const char *kind; /* free-form label shown in listings; may be NULL */
} tb_task_opts;

/* Adds a task. Any thread. A name held only by finished tasks is free: the
 * finished entries are dropped from the registry when it is reused.
 *  - Before tb_app_run: the task is remembered and started on every worker
 *    after that worker's after-start listeners; with a name, each worker gets
 *    its own replica under that name. *id_out (if not NULL) is 0.
 *  - While running: the task is created on opts->worker (or the least loaded
 *    worker) and runs on that worker's loop soon; *id_out gets its id.
 *    With the Redis bus, a name given here is first claimed across the
 *    cluster: the call waits for Redis (a round trip, at most
 *    redis.command_timeout_ms; from a task or a listener that blocks its
 *    worker meanwhile) and fails with TB_EEXIST when a live task on any
 *    instance holds the name, TB_ENOTCONN or TB_ETIMEDOUT when Redis cannot
 *    answer (docs/CLUSTER.md).
 * ud is passed to fn as is and stays the caller's unless ud_free is set.
 * Errors: TB_EINVAL (bad name or worker), TB_ENAMETOOLONG, TB_EEXIST (a live
 * task holds the name and TB_TASK_REPLACE is not set), TB_ESHUTDOWN (the app
 * is stopping), TB_ENOMEM. With TB_TASK_REPLACE the older task is cancelled
 * and waited for as tb_task_cancel does, bounded by the graceful timeout,
 * and that wait's errors come back (TB_ETIMEDOUT; TB_EINPROGRESS from a
 * worker's loop; TB_EBUSY if other adds keep taking the name, after three
 * tries). On error arg_free is not called. */
int tb_task_add(tb_app *app, tb_task_fn fn, void *ud, const tb_task_opts *opts,
                uint64_t *id_out);

typedef struct tb_task_info {
    uint64_t id;
    char name[TB_TASK_NAME_MAX + 1];
    char kind[TB_KIND_NAME_MAX + 1]; /* its first TB_KIND_NAME_MAX bytes:
                                        a registered kind's whole name */
    int worker;
    tb_task_state state;
    int64_t created_us, started_us, ended_us; /* CLOCK_REALTIME µs; 0 if not */
    int result;                               /* the function's return value */
    char error[TB_TASK_ERROR_MAX];            /* "" unless failed/cancelled */
    int cancel_requested;
} tb_task_info;

/* Looks a task up by name. Any thread. Fills *out (if not NULL) with a copy
 * of the first replica's state and returns the number of tasks holding that
 * name (1, or one per worker for a named task added before run), or
 * TB_ENOENT. */
int tb_task_get(tb_app *app, const char *name, tb_task_info *out);

/* Copies every task (live and finished, not yet purged) into a new array,
 * ordered by id. Any thread. *out is NULL when *n is 0; free it with free().
 * Returns the count or TB_ENOMEM. */
int tb_task_list(tb_app *app, tb_task_info **out, size_t *n);

/* Cancels every task named name and waits until they have finished, at most
 * timeout_ms (TB_TIMEOUT_DEFAULT: the app's core.graceful_timeout_ms).
 *  - From inside a task: suspends that task while waiting (TB_TASK_FN-like,
 *    and TB_ECANCELED if the caller itself is cancelled while waiting).
 *  - From any other thread except a worker's loop: blocks that thread.
 *  - From a worker's loop outside any task (a listener): only requests the
 *    cancel and returns TB_EINPROGRESS if not all have finished.
 * A task cancelling itself (alone or among replicas) only records the
 * request for itself: the call returns 0 once the others are done, and its
 * own next suspension point returns TB_ECANCELED.
 * Returns 0 when all have finished (or had finished: idempotent),
 * TB_ENOENT if no task holds the name, TB_ETIMEDOUT if some were still
 * running at the deadline (they stay cancel-requested). */
int tb_task_cancel(tb_app *app, const char *name, int timeout_ms);

/* Removes finished (done, failed, cancelled) tasks from the registry and
 * returns how many. Any thread. */
int tb_task_purge(tb_app *app);

/* ---- periodic tasks ---- */

/* A periodic task: fn(self, ud) runs at each multiple of every_ms (on the
 * wall clock, so that every instance agrees on the ticks), once per tick
 * for the whole cluster, as a run of its own (a task with a generated
 * name, waited for: a run still going at the next tick delays that one).
 * It is one named singleton task (TB_TASK_SINGLETON: moved to another
 * instance if its own dies) whose object shows its runs, last and next
 * run and last result. A tick missed because no instance was alive is
 * skipped, not replayed. Only before tb_app_run (TB_EBUSY after), on every
 * instance: any of them may run it. opts->name is required; every_ms is
 * core.periodic_min_ms .. 7 days. 0, TB_EINVAL, TB_ENAMETOOLONG,
 * TB_ENOMEM. ud stays the caller's unless opts->ud_free is set (called at
 * tb_app_free). */
int tb_task_add_every(tb_app *app, tb_task_fn fn, void *ud,
                      const tb_task_opts *opts, int64_t every_ms);

/* While running: a periodic task of kind with args_json (checked as
 * tb_task_spawn does), defined in the cluster and run by whichever
 * instance takes its lease. *id_out (may be NULL) gets its task id when it
 * runs here, 0 when another instance runs it. Errors as tb_task_spawn's,
 * and TB_EEXIST when the name is taken, TB_ENOTCONN while Redis is
 * unreachable, TB_EMSGSIZE when kind and args_json together are over 64
 * KiB (a singleton's definition is kept in Redis). Any thread but a
 * worker's loop (it waits on Redis). */
int tb_task_spawn_every(tb_app *app, const char *kind, const char *args_json,
                        const tb_task_opts *opts, int64_t every_ms,
                        uint64_t *id_out, char *err, size_t errsz);

/* ---- across instances (docs/CLUSTER.md) ---- */

/* With the Redis bus, every instance on one Redis and namespace is one app.
 * A named task added while running claims its name across them first, so
 * tb_task_add's and tb_task_spawn's TB_EEXIST means that a live task on
 * any instance holds it (TB_ENOTCONN: Redis is unreachable and the name
 * cannot be claimed). Not claimed: tasks added before run (one replica
 * per worker on every instance, as in Sanic), tasks with a generated
 * name, and the per-request tasks of the HTTP API. With the memory bus
 * this instance is the cluster.
 *
 * The tb_cluster_* calls answer for every instance, asking the one that
 * runs the task. Each blocks the calling thread, bounded by
 * redis.command_timeout_ms per instance asked (plus a cancel's own
 * timeout); from inside a task, call them through tb_run_blocking: on a
 * worker's thread (a task, a listener) they refuse with TB_EDEADLK. */

#define TB_INSTANCE_ID_MAX 24 /* bytes of an instance id, NUL included */
#define TB_CURSOR_MAX 48      /* bytes of a listing cursor, NUL included */

/* This instance's id: 16 hex digits, made by tb_app_new; valid as long as
 * app. */
const char *tb_app_instance(const tb_app *app);

typedef struct tb_cluster_task {
    tb_task_info task; /* TB_TASK_LOST: only name and id are known */
    char instance[TB_INSTANCE_ID_MAX]; /* where it runs or ran */
    int replicas;   /* tasks holding the name across the cluster */
    uint64_t fence; /* a singleton run's fencing token; else 0 */
} tb_cluster_task;

/* The task named name wherever it runs (a claimed name's holder, else
 * the first replica found): 0 with *out, TB_ENOENT, TB_ENOTCONN (Redis
 * unreachable), TB_ETIMEDOUT (its instance did not answer in time). */
int tb_cluster_get(tb_app *app, const char *name, tb_cluster_task *out);

/* Cancels the tasks named name where they run and waits for their end,
 * at most timeout_ms (TB_TIMEOUT_DEFAULT: core.graceful_timeout_ms), as
 * tb_task_cancel does: 0 with the final state reported by their instance
 * in *out (may be NULL), TB_TASK_LOST when that instance's heartbeat has
 * expired; TB_ETIMEDOUT when still cancelling at the deadline (*out then
 * has the state it reported, or instance "" when it did not answer);
 * TB_ENOENT; TB_ENOTCONN. */
int tb_cluster_cancel(tb_app *app, const char *name, int timeout_ms,
                      tb_cluster_task *out);

/* One page of the cluster's tasks: instance by instance in id order, each
 * one's by task id, at most limit (1..1000) of them, after cursor (NULL
 * or "": from the start; else the next of an earlier page). *out is a new
 * array (free() it; NULL when *n is 0); next (TB_CURSOR_MAX bytes) gets
 * the next page's cursor, "" after the last page (next may be cursor's
 * buffer itself). Instances that do not
 * answer in time are skipped: *skipped (may be NULL) counts them. 0,
 * TB_EINVAL (a bad cursor or limit), TB_ENOMEM. */
int tb_cluster_list(tb_app *app, const char *cursor, size_t limit,
                    tb_cluster_task **out, size_t *n, char *next,
                    size_t *skipped);

/* ---- inside a task ---- */

tb_app *tb_task_app(tb_task *self); /* Sanic's app injection */
const char *tb_task_name(const tb_task *self);
uint64_t tb_task_id(const tb_task *self);
int tb_task_worker(const tb_task *self);
/* The task running on the calling thread, or NULL outside any task. */
tb_task *tb_task_current(void);
/* 1 once cancel has been requested for self. */
int tb_task_cancelled(const tb_task *self);
/* A singleton run's fencing token: strictly increasing per name across
 * the cluster, so that whatever the run writes elsewhere can refuse a
 * stale run's writes (docs/CLUSTER.md). 0 for other tasks. */
uint64_t tb_task_fence(const tb_task *self);

/* Sets self's error message (printf-style); the task ends failed even if it
 * returns 0. The message is logged with the task's name when it ends. */
void tb_task_fail(tb_task *self, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Suspends self for ms milliseconds (0: yield to the other ready tasks).
 * Returns 0, or TB_ECANCELED. */
TB_TASK_FN int tb_sleep(tb_task *self, int64_t ms);
TB_TASK_FN int tb_yield(tb_task *self);

/* Waits until the task named name has finished, at most timeout_ms
 * (negative: no limit). *result (if not NULL) gets its result and *state
 * (if not NULL) its final state. Several replicas: waits for all, reports
 * the first. TB_ENOENT, TB_ETIMEDOUT, TB_ECANCELED, TB_EDEADLK (self). */
TB_TASK_FN int tb_task_join(tb_task *self, const char *name, int timeout_ms,
                            int *result, tb_task_state *state);

/* Runs fn(ud) on the app's blocking-call thread pool and suspends self
 * until it returns; *ret (if not NULL) gets fn's return value. fn must not
 * call TB_TASK_FN functions. Cancellation cannot interrupt fn: if self is
 * cancelled meanwhile, the call still waits for fn (so ud may live on the
 * task's stack) and then returns TB_ECANCELED. */
TB_TASK_FN int tb_run_blocking(tb_task *self, int (*fn)(void *ud), void *ud,
                               int *ret);

/* ---------------------------------------------------------------- events */

#define TB_EVENT_NAME_MAX 200 /* bytes */
#define TB_EVENT_SEGMENTS_MAX 8
#define TB_EVENT_ID_MAX 40 /* bytes of an id, including the NUL */

/* Checks an event name: 1..8 dot-separated segments of [A-Za-z0-9_-], at
 * most TB_EVENT_NAME_MAX bytes. Returns 0 or TB_EINVAL/TB_ENAMETOOLONG. */
int tb_event_name_valid(const char *name);

/* Checks a pattern: like a name, but a segment may also be "*" (any one
 * segment) or "<param>" (any one segment, captured as param), and the last
 * segment may be ">" (one or more segments, as in NATS): "orders.>" matches
 * "orders.a" and "orders.a.b.c" but not "orders"; ">" alone matches every
 * name. ">" elsewhere, or inside a segment ("a.b>"), is TB_EINVAL. A ">"
 * captures nothing; "<param>" before it does ("orders.<id>.>"). Returns 0
 * or TB_EINVAL/TB_ENAMETOOLONG. */
int tb_pattern_valid(const char *pattern);

/* 1 if name matches pattern, 0 if not (also when either is invalid). */
int tb_pattern_match(const char *pattern, const char *name);

/* Copies into out the segment of name that pattern's <param> captures.
 * Returns its length, TB_ENOENT (no such param or no match), or
 * TB_ENAMETOOLONG if out (outsz bytes, NUL included) is too small. */
int tb_pattern_param(const char *pattern, const char *name, const char *param,
                     char *out, size_t outsz);

/* Dispatches an event to every matching waiter and subscription on every
 * worker (and, with the Redis bus, of every instance). Any thread. data is
 * copied (len bytes, may be 0) and must be UTF-8 text (JSON included): any
 * valid UTF-8, U+0000 (a NUL byte) too, which arrives as it was sent. The
 * Redis bus carries it in a JSON envelope; encode binary data yourself. Over
 * Redis, data that is a JSON object or array travels as a JSON value and
 * arrives as its compact re-serialization (same value; blanks, escapes and
 * number spelling may differ); any other data arrives byte for byte.
 * Returns 0 once the event has been handed to the bus (the Redis bus
 * pipelines it; if the link drops before Redis acknowledged it, it is resent
 * after the reconnect, for up to publish_retry_ms, and receivers drop the
 * duplicates by id), TB_EINVAL for invalid UTF-8, TB_EINVAL/TB_ENAMETOOLONG for
 * a bad name, TB_EMSGSIZE over max_event_size, TB_ENOTCONN when the bus is
 * down, TB_ESHUTDOWN when the app is not running, TB_ENOSPC when
 * publish_queue_max events await Redis. *id_out (if not NULL, TB_EVENT_ID_MAX
 * bytes) gets the event's id. Never blocks a worker loop. */
int tb_dispatch(tb_app *app, const char *name, const void *data, size_t len,
                char *id_out);

/* Like tb_dispatch, but returns only once the bus has confirmed the event:
 * with the Redis bus, when Redis has acknowledged the PUBLISH (so a 0 here
 * means the event was published; with redis.wait_replicas, also that many
 * replicas have it, else TB_ENOTREPLICATED: published, and maybe
 * delivered, but a failover may lose it). Waits at most timeout_ms
 * (TB_TIMEOUT_DEFAULT: the app's redis.command_timeout_ms) and returns
 * TB_ETIMEDOUT after that (the
 * event may still be published later). From inside a task it suspends the
 * task (and returns TB_ECANCELED if the task is cancelled meanwhile); from
 * any other thread it blocks that thread; from a worker's loop outside any
 * task it returns TB_EDEADLK without dispatching. */
int tb_dispatch_wait(tb_app *app, const char *name, const void *data,
                     size_t len, int timeout_ms, char *id_out);

/* One event of tb_dispatch_many: its name and data, as tb_dispatch's. */
typedef struct tb_event_item {
    const char *name;
    const void *data;
    size_t len;
} tb_event_item;

/* Dispatches n events (items[0..n-1], in that order) as one batch: every
 * item is checked first (tb_dispatch's rules) and if one is refused,
 * nothing is dispatched: the function returns its code and *bad (may be
 * NULL) gets its index. More than core.batch_max_events items is
 * TB_EMSGSIZE with *bad = batch_max_events. Then the bus takes all of them
 * at once or none (TB_ENOTCONN, TB_ENOSPC when they do not all fit below
 * redis.publish_queue_max now, TB_EMSGSIZE when n is over it, TB_ESHUTDOWN;
 * *bad = n, nothing dispatched); the Redis bus sends them in order, up to
 * 64 per history script call (one PUBLISH each, pipelined, with
 * history_size 0). Every subscriber sees them in items' order (events of
 * other publishers may fall between them).
 *
 * timeout_ms 0: returns once the bus has taken them (as tb_dispatch; any
 * thread, a task or a worker loop too). Else, like tb_dispatch_wait, it
 * waits up to timeout_ms (TB_TIMEOUT_DEFAULT: redis.command_timeout_ms; <0
 * no limit) for the bus to confirm each event; only on a thread that is no
 * worker's (an HTTP handler's, the embedder's): on a worker it returns
 * TB_EDEADLK without dispatching. It returns 0 when every event was
 * confirmed, else the status of the first that was not (in items' order):
 * TB_ETIMEDOUT (not confirmed in time, or given up by the bus after
 * publish_retry_ms of reconnects: it may or may not be published, and a
 * subscriber gets it at most once), TB_EIO (Redis refused it: not
 * published) or TB_ESHUTDOWN (given up at stop). So a failure may leave
 * some events published and some not: status says which are known to be
 * (0: confirmed). With timeout_ms 0 a 0 status means taken, as
 * tb_dispatch's 0.
 *
 * ids (may be NULL; n strings of TB_EVENT_ID_MAX bytes) gets each event's
 * id, or "" for those the bus did not take; status (may be NULL; n ints)
 * gets each event's status on every return after the arguments were
 * checked (the return code for events never dispatched). items and what
 * they point to are copied. */
int tb_dispatch_many(tb_app *app, const tb_event_item *items, size_t n,
                     int timeout_ms, char (*ids)[TB_EVENT_ID_MAX], int *status,
                     size_t *bad);

/* Like tb_dispatch, for an event caused by another one (cause): a task that
 * reacts to events by dispatching others (a relay) uses it so that a cycle
 * of such tasks dies out. The new event carries cause's hop count plus one
 * (tb_event_hops), also across Redis; when that would exceed the app's
 * event_max_hops, nothing is dispatched and TB_ELOOP is returned. cause NULL:
 * tb_dispatch. */
int tb_dispatch_from(tb_app *app, const tb_event *cause, const char *name,
                     const void *data, size_t len, char *id_out);

/* Waits for the next event matching pattern, at most timeout_ms (negative:
 * no limit). On 0, *ev holds a reference the caller must release with
 * tb_event_unref(). TB_ETIMEDOUT, TB_ECANCELED, TB_EINVAL (bad pattern).
 * Like Sanic's app.event(), an event dispatched while the task is not
 * waiting is not seen: use a subscription to miss nothing. */
TB_TASK_FN int tb_event_wait(tb_task *self, const char *pattern, int timeout_ms,
                             tb_event **ev);

/* A subscription queues every matching event for its task, up to capacity
 * events (<= 0: the app's sub_capacity). When full, the oldest queued event
 * is dropped and counted (tb_sub_dropped). A subscription belongs to self
 * and is closed when self ends if not before. Returns NULL and sets *err on
 * a bad pattern or no memory. */
tb_sub *tb_sub_open(tb_task *self, const char *pattern, int capacity, int *err);
/* Takes the next queued event, waiting up to timeout_ms (0: don't wait;
 * negative: no limit). Same return codes as tb_event_wait. */
TB_TASK_FN int tb_sub_next(tb_task *self, tb_sub *sub, int timeout_ms,
                           tb_event **ev);
/* Adds pattern to sub (a subscription may hold several patterns; an event
 * matching more than one is queued once). From sub's task, or from any task
 * on the same worker. TB_EINVAL (bad pattern), TB_EEXIST (already there),
 * TB_ENOMEM. tb_sub_open accepts a NULL pattern: a subscription with none
 * yet. */
int tb_sub_add(tb_sub *sub, const char *pattern);
/* Removes pattern from sub (events already queued stay). TB_ENOENT. */
int tb_sub_remove(tb_sub *sub, const char *pattern);
/* The number of patterns sub holds. */
int tb_sub_patterns(const tb_sub *sub);
uint64_t tb_sub_dropped(const tb_sub *sub); /* events dropped on overflow */
size_t tb_sub_pending(const tb_sub *sub);   /* events queued now */
/* Closes sub and releases its queued events. Only from its task. */
void tb_sub_close(tb_sub *sub);

/* ---- positions and history (docs/HISTORY.md) ---- */

/* With core.history_size > 0 every event gets a position in its
 * namespace's history: "<epoch>-<seq>", where epoch is 8..16 lowercase hex
 * digits that change when the history was lost (Redis flushed, or a
 * restarted in-process bus) and seq counts the namespace's events from 1
 * in each epoch. Clients must treat a position as opaque: keep the last
 * one received and hand it back (since). Within one epoch, a later event
 * has a larger seq. */
/* Bytes an event's envelope and SSE framing may add to its data, at most
 * (data that JSON must escape adds more): see tb_ws_config's
 * send_queue_bytes. */
#define TB_EVENT_FRAME_OVERHEAD 1024
#define TB_POS_MAX 40   /* bytes of a position, NUL included */
#define TB_EPOCH_MAX 17 /* bytes of an epoch, NUL included */

/* ev's position, or "" when it has none: history off, or an event that
 * reached Redis without taskbus (a plain `redis-cli PUBLISH`): such an
 * event is delivered live and is not in the history. Lives as long as the
 * reference. */
const char *tb_event_pos(const tb_event *ev);

/* Where a resumed subscription's replay ended (tb_sub_resume). */
typedef struct tb_sub_recovery {
    int recovered;            /* 1: every event after since that matches
                                 the subscription was replayed; 0: since
                                 is older than the history (expired,
                                 trimmed) or of another epoch: nothing was
                                 replayed, reload your state */
    char pos[TB_POS_MAX];     /* the position replay reached: live events
                                 at or before it are not delivered again;
                                 the position to resume from later if no
                                 event arrives meanwhile. "" when the
                                 namespace has no events yet */
    char epoch[TB_EPOCH_MAX]; /* the namespace's epoch now ("" as pos) */
    uint64_t replayed;        /* events tb_sub_next returned from history */
} tb_sub_recovery;

/* tb_sub_next's answer, once, at the seam between a resumed
 * subscription's replay and its live events: *ev is NULL and
 * tb_sub_recovery says what happened. */
#define TB_SUB_LIVE 1

/* Resumes sub (opened by self, with its patterns added) after position
 * since (from a client: parsed strictly; NULL or "": nothing to replay).
 * Before returning it reads the history's first page (suspending self on
 * the bus, at most redis.command_timeout_ms). Then tb_sub_next returns,
 * in order: the history's events after since that match sub's patterns
 * (read page by page as they are taken, so a replay longer than sub's
 * capacity does not overflow it), TB_SUB_LIVE once, then the live events
 * queued meanwhile and later, without those at or before the seam's
 * position (already replayed, or not matching). Nothing is lost or
 * duplicated at the seam: live events that overflowed sub while it
 * replayed are read from the history again. Events from one dispatcher
 * keep their order throughout. A since that cannot be recovered (older
 * than the history, another epoch, beyond its end) replays nothing:
 * TB_SUB_LIVE comes first, with recovered 0. Call it once per sub,
 * before its first tb_sub_next. The replay matches the sub's patterns as
 * they are when each event is taken: one added (or removed) during the
 * replay applies to the events not replayed yet, not to those already
 * passed. Returns 0, TB_EINVAL (since malformed,
 * or sub not self's, or resumed already), TB_ENOTSUP (history is off:
 * core.history_size 0), TB_ENOTCONN / TB_ETIMEDOUT (the bus could not
 * answer), TB_ECANCELED, TB_ENOMEM. */
TB_TASK_FN int tb_sub_resume(tb_task *self, tb_sub *sub, const char *since);

/* After tb_sub_next returned TB_SUB_LIVE: fills *out and returns 0; else
 * TB_EAGAIN (still replaying) or TB_EINVAL (sub was not resumed). */
int tb_sub_recovery_info(const tb_sub *sub, tb_sub_recovery *out);

/* One page of the history (tb_history_read). */
typedef struct tb_history {
    tb_event **events; /* n matching events in order; references
                          owned by the page (tb_history_free) */
    size_t n;
    int recovered;            /* 0: since could not be recovered (as for
                                 tb_sub_recovery): events is empty */
    int more;                 /* 1: the history holds events after next */
    char next[TB_POS_MAX];    /* since for the next page: the last
                                 position looked at (matching or not);
                                 "" when the namespace has no events */
    char epoch[TB_EPOCH_MAX]; /* the namespace's epoch now, or "" */
} tb_history;

/* Reads up to limit (1..core.history_page_max) events of the history after
 * since (NULL or "": from the oldest held) that match one of npatterns
 * patterns (0: every event), into *out (free it with tb_history_free).
 * Looks at most core.history_scan_max events, matching or not (then more is
 * 1 and next is the last one looked at), so it is bounded. Blocks the calling
 * thread up to redis.command_timeout_ms per page read: any thread but a
 * worker's (from a task, call it through tb_run_blocking): TB_EDEADLK
 * there. Returns 0, TB_EINVAL (since malformed, a bad pattern, limit out
 * of range), TB_ENOTSUP (history off), TB_ENOTCONN, TB_ETIMEDOUT,
 * TB_ENOMEM. On error *out is empty. */
int tb_history_read(tb_app *app, const char *const *patterns, int npatterns,
                    const char *since, size_t limit, tb_history *out);
/* Releases out's events; out is then empty. */
void tb_history_free(tb_history *out);

/* Accessors; the returned pointers live as long as the reference. The data
 * is always followed by a NUL byte (not counted in len) for convenience; it
 * may hold NUL bytes itself (U+0000 is valid UTF-8), so use len. */
const char *tb_event_name(const tb_event *ev);
const void *tb_event_data(const tb_event *ev, size_t *len);
const char *tb_event_id(const tb_event *ev);
int64_t tb_event_ts_us(const tb_event *ev); /* CLOCK_REALTIME µs */
/* Where it was dispatched: "<instance id>/<worker>" ("/-1" off-worker). */
const char *tb_event_origin(const tb_event *ev);
/* How many tb_dispatch_from re-dispatches led to it (0 for an event
 * dispatched directly). */
int tb_event_hops(const tb_event *ev);
tb_event *tb_event_ref(tb_event *ev);
void tb_event_unref(tb_event *ev); /* NULL is a no-op */

/* ---------------------------------------------------------------- task kinds
 */

/* A task kind is a task function registered by name, so that a task of it
 * can be spawned from JSON (POST /tasks) with arguments the library checks
 * against what the kind declares. */

typedef enum {
    TB_ARG_NUMBER,     /* JSON integer or real */
    TB_ARG_INT,        /* JSON integer */
    TB_ARG_STRING,     /* JSON string (UTF-8, no NUL) */
    TB_ARG_EVENT_NAME, /* string that tb_event_name_valid accepts */
    TB_ARG_PATTERN,    /* string that tb_pattern_valid accepts */
    TB_ARG_BOOL        /* true or false */
} tb_arg_type;

/* One declared argument. name: 1..64 bytes, unique within the spec. */
typedef struct tb_arg_spec {
    const char *name;
    tb_arg_type type;
    int required;
    double min, max; /* numbers: inclusive range when min < max; either
                        side may be -INFINITY/INFINITY (open on that side;
                        GET /kinds shows only finite bounds) */
} tb_arg_spec;

/* A kind task's validated arguments: its task's ud, owned by the task
 * (freed when it ends), valid for the task's whole life. */
typedef struct tb_kind_args tb_kind_args;

/* Registers kind name (1..TB_KIND_NAME_MAX bytes of [A-Za-z0-9_.-]) whose
 * tasks run fn(self, args) with args a validated tb_kind_args *. spec is an
 * array ended by an entry with a NULL name (NULL: no arguments); it is
 * copied. Only before tb_app_run (TB_EBUSY after). TB_EEXIST (name taken),
 * TB_EINVAL (bad name, NULL fn, bad or duplicate spec entry), TB_ENOMEM. */
int tb_app_add_kind(tb_app *app, const char *name, tb_task_fn fn,
                    const tb_arg_spec *spec);

/* A kind's own check of a spawn's arguments, for what a spec cannot say (an
 * allow-list, one argument against another). tb_task_spawn runs it after
 * the spec's checks passed, on the spawning thread (any thread, possibly
 * concurrently; it must not suspend); args is valid during the call only.
 * Returns 0 to accept, or TB_EPERM (refused by policy; POST /tasks answers
 * 403 not_allowed) or TB_EINVAL (bad arguments; 400 bad_args) with a
 * message in err (errsz bytes); tb_task_spawn returns that code. */
typedef int (*tb_kind_check_fn)(const tb_kind_args *args, void *ud, char *err,
                                size_t errsz);

/* Gives kind, registered with tb_app_add_kind, its check (one per kind). ud
 * is passed to fn as is; ud_free (may be NULL) is called with ud when the
 * app is freed (tb_app_free). Only before tb_app_run (TB_EBUSY after).
 * TB_EINVAL (NULL fn), TB_ENOENT (no such kind), TB_EEXIST (it has a check
 * already). On error ud stays the caller's: ud_free is not called. */
int tb_app_add_kind_check(tb_app *app, const char *kind, tb_kind_check_fn fn,
                          void *ud, void (*ud_free)(void *ud));

/* Registers the built-in kinds, which POST /tasks and tb_task_spawn can
 * then start:
 *   sleep {seconds}                         sleeps, then is done
 *   delay {seconds, event, data?}           dispatches event once, later
 *   interval {seconds, event, data?, count?} dispatches event every seconds
 *   relay {pattern, event}                  re-dispatches each event
 *                                           matching pattern as event
 * (seconds: 0..86400, interval's from 0.001; relayed events count hops,
 * see tb_dispatch_from). Only before tb_app_run. 0, or tb_app_add_kind's
 * error (TB_EEXIST if one of the names is taken). */
int tb_app_add_builtin_kinds(tb_app *app);

/* Typed getters, for a kind's task (a is its ud). An argument that was
 * not given (or is not of the getter's type) yields dflt, or NULL for
 * tb_kind_string. tb_kind_number also reads TB_ARG_INT arguments;
 * tb_kind_string reads strings, event names and patterns, and its pointer
 * lives as long as a. */
double tb_kind_number(const tb_kind_args *a, const char *name, double dflt);
long long tb_kind_int(const tb_kind_args *a, const char *name, long long dflt);
const char *tb_kind_string(const tb_kind_args *a, const char *name);
int tb_kind_bool(const tb_kind_args *a, const char *name, int dflt);

/* Spawns a task of kind with args_json, the text of a JSON object (NULL,
 * "" or "null": no arguments). Validates it against the kind's spec: an
 * unknown member, a wrong type (TB_ARG_INT wants an integer), a number out
 * of range, a missing required member, or a bad event name or pattern is
 * TB_EINVAL, with a message naming the member in err; then runs the kind's
 * check, if it has one (tb_app_add_kind_check). Then adds the task
 * as tb_task_add does with opts (may be NULL: defaults; its ud_free and
 * kind are ignored: the kind's name is the task's kind). err (errsz bytes,
 * may be NULL) gets a message on every error and "" on success. Returns 0,
 * TB_ENOENT (unknown kind), TB_EINVAL, the check's TB_EPERM, or
 * tb_task_add's errors. Any thread. */
int tb_task_spawn(tb_app *app, const char *kind, const char *args_json,
                  const tb_task_opts *opts, uint64_t *id_out, char *err,
                  size_t errsz);

/* ---------------------------------------------------------------- http */

/* One HTTP request, valid until its handler returns. Handlers run on the
 * HTTP server's threads (never on a worker loop) and may call every "any
 * thread" function, and block (tb_task_cancel, tb_dispatch_wait). */
typedef struct tb_http_req tb_http_req;

/* Handles req: must answer with tb_http_respond* or tb_http_error before it
 * returns (otherwise the server answers 500 and logs it). The return value
 * is ignored. */
typedef int (*tb_http_fn)(tb_http_req *req, void *ud);

/* Registers a route: method ("GET", "POST", "PUT", "DELETE", "PATCH") and
 * a path template of '/'-separated segments, literal or "{name}" (one
 * segment, percent-decoded, read with tb_http_param). The most specific
 * template wins (a literal beats a {param}); a path that matches no
 * template is 404, one that matches for other methods 405 with Allow.
 * Only before tb_app_run (TB_EBUSY after). TB_EINVAL (bad method or
 * template), TB_EEXIST (same method and template shape), TB_ENOMEM. */
int tb_app_add_route(tb_app *app, const char *method, const char *path,
                     tb_http_fn fn, void *ud);
/* When the app has an api_token, a route registered with tb_app_add_route is
 * protected: a request without the token (Authorization: Bearer, or a
 * "token" query parameter) is answered 401 with WWW-Authenticate: Bearer,
 * and the handler is not called. */

/* Registers taskbus's built-in JSON API (events, tasks, health): see
 * README. Only before tb_app_run. Besides POST /events/{name}, the task
 * routes and the probes, it serves GET /events/{pattern}?timeout=S, a long
 * poll (Sanic's app.event over HTTP): the next event matching pattern
 * within S seconds (default 30, at most 300), or 204. While it waits, the
 * request shows in GET /tasks as a task of kind "http.wait" named
 * "http.wait:<request id>"; its finished entry stays until purged. */
int tb_app_add_api(tb_app *app);

/* Registers the web dashboard (README "Dashboard"): GET / and GET /ui/
 * answer its page, GET /ui/<file> its scripts and styles, all built into
 * the library, so nothing is read from disk or fetched from elsewhere.
 * These routes are open even with an api_token (they hold no data; the
 * page asks for the token and sends it with every API call); any other
 * path under /ui/ is not, and answers as unknown paths do. The page uses
 * the routes of tb_app_add_api. Only before tb_app_run: TB_EBUSY after,
 * TB_EEXIST if it was registered already or one of its paths is taken (a
 * GET / of the embedder's, say): then none of it is registered; TB_ENOMEM. */
int tb_app_add_dashboard(tb_app *app);

tb_app *tb_http_app(const tb_http_req *req);
const char *tb_http_method(const tb_http_req *req);
const char *tb_http_path(const tb_http_req *req); /* raw, no query */
/* The request's id: its X-Request-ID header when it has a usable one
 * (1..64 printable ASCII bytes), else a generated unique id. */
const char *tb_http_request_id(const tb_http_req *req);
/* A {param} of the matched template, percent-decoded; NULL if none. */
const char *tb_http_param(const tb_http_req *req, const char *name);
/* A query-string value, decoded into out: its length, TB_ENOENT,
 * TB_ENAMETOOLONG (out too small), TB_EINVAL (bad escape). */
int tb_http_query(const tb_http_req *req, const char *key, char *out,
                  size_t outsz);
/* A request header (case-insensitive name), or NULL. */
const char *tb_http_header(const tb_http_req *req, const char *name);
/* The request body (at most http_max_body bytes; a longer one was already
 * answered 413), NUL-terminated for convenience; *len excludes the NUL. */
const void *tb_http_body(const tb_http_req *req, size_t *len);

/* Answers req once (TB_EBUSY on a second answer). content_type may be NULL
 * (no Content-Type). Every answer carries X-Request-ID. */
int tb_http_respond(tb_http_req *req, int status, const char *content_type,
                    const void *body, size_t len);
/* Answers with a JSON text (application/json). */
int tb_http_respond_json(tb_http_req *req, int status, const char *json);
/* Answers {"error": code, "message": <printf>} with status, and logs a line
 * naming the request (method, path, id) and the error. code is a stable
 * machine-readable word ("bad_name", "too_large", ...). */
int tb_http_error(tb_http_req *req, int status, const char *code,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---------------------------------------------------------------- websockets
 */

/* One websocket connection. Its handler is a task: when a client connects
 * to a path registered with tb_app_add_websocket, the app spawns a task named
 * "ws:<request id>" (kind "ws") on a worker for the connection, the way
 * Sanic runs `async def feed(request, ws)`. The connection's socket is
 * served by that worker's event loop. The handler's return closes the
 * connection (1000; 1001 when the app is stopping); the peer's close (or a
 * lost connection) makes a pending tb_ws_recv return TB_EPIPE, or, when the
 * handler is waiting on something else, cancels it. A tb_ws is valid until
 * its handler returns. */
typedef struct tb_ws tb_ws;

typedef int (*tb_ws_fn)(tb_task *self, tb_ws *ws, void *ud);

/* Runs on the HTTP thread before the upgrade, after the API token and
 * Origin checks: answer with tb_http_error (or tb_http_respond) to refuse
 * the upgrade, or return without answering to accept it. */
typedef int (*tb_ws_check_fn)(tb_http_req *req, void *ud);

/* Registers a websocket endpoint on a path template (as tb_app_add_route;
 * the same path answers a plain GET with 426). check may be NULL. When the
 * app has an api_token, the upgrade needs it (Bearer or ?token=) and is
 * answered 401 without. Only before tb_app_run. */
int tb_app_add_websocket(tb_app *app, const char *path, tb_ws_fn fn,
                         tb_ws_check_fn check, void *ud);

typedef enum {
    TB_WS_TEXT = 1,
    TB_WS_BINARY = 2
} tb_ws_type;

typedef struct tb_ws_msg {
    tb_ws_type type;
    const void *data; /* NUL-terminated; valid until the next tb_ws_recv on
                         the same connection or the handler's return */
    size_t len;
} tb_ws_msg;

/* Takes the next message from the client, waiting up to timeout_ms
 * (negative: no limit; 0: don't wait). Text messages are valid UTF-8 (the
 * connection is closed with 1007 otherwise). Returns 0, TB_ETIMEDOUT,
 * TB_ECANCELED, TB_EPIPE (the peer closed or the connection was lost:
 * tb_ws_close_code says how), TB_EINVAL (not called from a task on the
 * connection's worker), TB_EBUSY (another task is already waiting in
 * tb_ws_recv on it: one reader at a time). */
TB_TASK_FN int tb_ws_recv(tb_task *self, tb_ws *ws, int timeout_ms,
                          tb_ws_msg *msg);

/* Queues one message to the client; never blocks. Any thread (from a task
 * on the connection's worker it is queued at once, from elsewhere it is
 * handed to that worker). Returns 0, TB_EPIPE (closed or closing),
 * TB_EINVAL (text that is not UTF-8), TB_EMSGSIZE (longer than
 * ws_send_queue_bytes), TB_ENOSPC (the client's send queue is full: it is
 * a slow client, and it is being closed with 1008, logged). */
int tb_ws_send(tb_ws *ws, tb_ws_type type, const void *data, size_t len);
/* Sends ev as its JSON envelope {"id","name","data","ts","origin"} in a
 * text message (built once per event, however many clients get it). */
int tb_ws_send_event(tb_ws *ws, const tb_event *ev);
/* Starts closing with code (1000..4999) and reason (UTF-8, at most 123
 * bytes). Any thread. Idempotent. */
void tb_ws_close(tb_ws *ws, int code, const char *reason);

int tb_ws_worker(const tb_ws *ws); /* the worker serving it */
tb_app *tb_ws_app(const tb_ws *ws);
const char *tb_ws_request_id(const tb_ws *ws);
const char *tb_ws_path(const tb_ws *ws); /* raw, no query */
/* A {param} of the matched path template, decoded, or NULL. */
const char *tb_ws_param(const tb_ws *ws, const char *name);
/* As tb_http_query, on the upgrade request's query string. */
int tb_ws_query(const tb_ws *ws, const char *key, char *out, size_t outsz);
/* The close code the peer sent (0 if none yet, 1006 if the connection was
 * lost without one). */
int tb_ws_close_code(const tb_ws *ws);
/* The event's JSON envelope, as tb_ws_send_event sends it; *len (may be
 * NULL) gets its length. Built once and kept with the event; NULL on
 * ENOMEM. */
const char *tb_event_json(const tb_event *ev, size_t *len);

/* ---------------------------------------------------------------- bus */

typedef enum {
    TB_BUS_CONNECTING = 0, /* first connection under way */
    TB_BUS_CONNECTED,      /* events flow */
    TB_BUS_RECONNECTING,   /* lost; retrying with backoff */
    TB_BUS_STOPPED         /* not started, or stopped */
} tb_bus_state;

const char *tb_bus_state_name(tb_bus_state s); /* "connected", ... */

typedef struct tb_bus_info {
    char name[16]; /* "memory" or "redis" */
    tb_bus_state state;
    int64_t since_us;          /* CLOCK_REALTIME µs of the last state change */
    uint64_t attempts;         /* failed attempts since the last success */
    uint64_t reconnects;       /* successful reconnections after a loss */
    char last_error[256];      /* "" if none */
    uint64_t published;        /* events acknowledged by the backend */
    uint64_t publish_failed;   /* accepted, then given up on (logged) */
    uint64_t received;         /* events taken from the backend */
    uint64_t duplicates;       /* received again (a resend) and dropped */
    uint64_t malformed;        /* messages dropped as malformed (logged) */
    uint64_t oversize;         /* messages dropped over max_event_size */
    int queued;                /* waiting to be published now */
    uint64_t queue_full_drops; /* event deliveries dropped because a
                                  worker's inbox held worker_queue_max */
} tb_bus_info;

/* Fills *out with the bus's state and counters. Any thread. */
int tb_bus_status(tb_app *app, tb_bus_info *out);

#ifdef __cplusplus
}
#endif

#endif /* TASKBUS_TASKBUS_H */
