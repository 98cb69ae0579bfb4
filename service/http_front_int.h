/* http_front_int.h - the HTTP front's private types, shared by
 * http_front.c (clients, requests, answers), http_front_pool.c (the
 * connections to the server) and http_front_take.c (hand-overs to the
 * server's threads). Everything here runs on the front's thread unless
 * its comment says otherwise. */
#ifndef TASKBUS_HTTP_FRONT_INT_H
#define TASKBUS_HTTP_FRONT_INT_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "http_front.h"
#include "http_head.h"
#include "internal.h"

/* Fixed bounds, and why they are not settings. Each is about the
 * front's own link to civetweb or its own thread, not about what a
 * client may send; the client-facing limits are the http.* settings.
 *
 * POOL_IDLE_MS: a kept server connection is closed after this idle; it
 *   must stay below the 2000 ms keep-alive the adapter gives civetweb
 *   behind the front, so that civetweb never closes one first. Tied to
 *   that constant, not to anything a user tunes.
 * CLOSE_FLUSH_MS: an answer's last bytes wait this long for a client
 *   that does not read before the connection is dropped; only a client
 *   that stops reading meets it, and it then loses nothing it would
 *   have read. http.discard_timeout_ms bounds what follows.
 * TAKE_TIMEOUT_MS: a hand-over (websocket, SSE) waits this long for the
 *   front's buffered bytes to reach the client; a server thread is held
 *   meanwhile, so it is short and fixed.
 * STOP_FLUSH_MS: answers in flight at shutdown get this long (the
 *   front's own, waiting for the bus, redis.command_timeout_ms more).
 * OUT_HIGH: client output that pauses reading the server's answer (back
 *   pressure); a client only sees its answer arrive as fast as it reads.
 * RESP_HEAD_MAX: a response head from civetweb (our own answers, a few
 *   hundred bytes); more is a bug, and the connection is closed.
 * CHUNK_SLACK: chunked framing (size lines, extensions, trailers) the
 *   front reads over http.max_body before it relays the body cut short,
 *   which civetweb refuses. A client meets it only with chunks of a few
 *   bytes each in a body near max_body (64 KiB of framing is over 10 000
 *   chunks); a body in reasonable chunks never does.
 * ACCEPT_PAUSE_MS: after a failed accept (out of descriptors); shorter
 *   spins, longer delays recovery, and neither is worth a knob. */
#define POOL_IDLE_MS 1000
#define CLOSE_FLUSH_MS 10000
#define TAKE_TIMEOUT_MS 2000
#define STOP_FLUSH_MS 1000
#define OUT_HIGH (256 * 1024)
#define RESP_HEAD_MAX 65536
#define CHUNK_SLACK (64 * 1024)
#define ACCEPT_PAUSE_MS 100

/* A connection to the server, from the pool or in use by one client. */
typedef struct upconn {
    struct tb__http_front *f;
    struct bufferevent *bev;
    int fd;
    int port;            /* local port, host order: the server's view */
    struct fconn *c;     /* the client it relays for, or NULL: pooled */
    struct event *idle;  /* a pooled connection's end */
    struct upconn *next; /* the pool */
    int reused;          /* it has carried a request before */
} upconn;

/* A hand-over asked for by a server thread (tb__http_front_take). */
typedef struct take_req {
    int port, upgraded;
    int result; /* the socket, or TB_EPIPE */
    int done;
    struct take_req *next;
} take_req;

enum cstate {
    C_HEAD,     /* reading a request head (or idle before one) */
    C_BODY,     /* reading its body before relaying */
    C_QUEUED,   /* read whole, waiting for a server connection */
    C_WAIT,     /* relayed: relaying the answer */
    C_UPGRADED, /* the 101 relayed: waiting for the hand-over */
    C_CLOSING,  /* flushing, then draining what the client still sends */
    C_LOCAL     /* answered by the front itself: waiting for the bus */
};
enum rstate {
    R_HEAD,
    R_BODY
};

typedef struct fconn {
    struct tb__http_front *f;
    struct bufferevent *bev;
    int fd;
    struct sockaddr_in peer;
    struct fconn *prev, *next;
    struct event *timer;
    enum cstate state;
    int started;         /* a byte of the current request has come */
    int close_after;     /* the connection ends after this answer */
    int client_eof;      /* the client has half-closed or gone */
    int flushed;         /* C_CLOSING: the answer is out, write side shut */
    int sent_100;        /* the front answered Expect: 100-continue */
    int paused;          /* the server's answer waits for the client */
    int port;            /* the server connection's port it was mapped at */
    struct fconn *wnext; /* C_QUEUED: the queue */
    size_t pend_n;       /* C_QUEUED: the request's bytes in the input */
    int pend_shut;
    /* the request */
    tb__http_head req;
    size_t head_len;
    int req_kind;
    size_t body_seen; /* body bytes looked at, after the head */
    tb__http_chunks req_chunks;
    int up_shut;         /* shut the server connection's write side once sent */
    int up_close;        /* the server closes its connection after the answer */
    size_t scanned;      /* C_HEAD: bytes searched for the head's end */
    struct event *rdhup; /* reading paused: the client's end, seen */
    /* The request as sent on a reused server connection, when its method
     * is safe (GET, HEAD, OPTIONS): sent again, once, on a new one if that
     * connection ends before the first byte of the answer (the server
     * closed it, idle or after its last answer: it may not have run it).
     * Any other method gets 502 upstream_closed then: never run twice. */
    struct evbuffer *resend;
    int retried;
    int up_reused; /* the request went on a reused server connection */
    /* the answer */
    upconn *up;
    enum rstate rstate;
    int resp_kind;
    int resp_keep;
    unsigned long long resp_left;
    tb__http_chunks resp_chunks;
    size_t drained;      /* C_CLOSING: bytes read and dropped */
    size_t held;         /* body bytes counted in f->body_bytes */
    int64_t body_end_us; /* C_BODY: the whole body by then (monotonic) */
    int body_late;       /* C_BODY: the timer is armed for body_end_us */
    take_req *take;
    struct fpost *post; /* C_LOCAL: the request (http_front_events.c) */
} fconn;

struct tb__http_front {
    tb_app *app;
    const tb_app_config *cfg;
    struct event_base *base;
    struct evconnlistener *lis;
    struct sockaddr_in upstream;
    pthread_t thread;
    struct event *stop_ev, *quit_ev, *take_ev, *end_timer;
    int stopping;
    int ending; /* stop asked: the front's own answers close */
    fconn *conns;
    int nconns;
    upconn *pool;
    int npool;
    int nup;                   /* server connections open, pooled or in use */
    int up_max;                /* http.threads: civetweb's threads */
    fconn *waitq, *waitq_tail; /* requests waiting for a connection */
    /* the server connection's local port -> the client it relays for */
    int pool_max; /* http.upstream_pool, at most a quarter of threads */
    fconn **by_port;
    /* the same, for server threads: (1 << 48) | addr << 16 | port */
    _Atomic uint64_t *peers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    take_req *takes;
    tb__ratelog timeout_log;
    tb__ratelog accept_log;
    struct event *accept_timer; /* accepting again after a failure */
    size_t body_bytes;          /* request body bytes held, all connections */
    struct fpost *posts;        /* requests the front answers, in flight */
    int nposts;                 /* on posts */
    struct fpost *posts_done;   /* ready to answer; under mu */
    struct event *posts_ev;     /* posts_done has some */
};

/* http_front.c */
int tb__front_push(struct bufferevent *bev, int fd);
void tb__front_close_bev(struct bufferevent *bev, int fd);
void tb__front_arm(fconn *c, int ms);
void tb__front_dispatch(fconn *c, size_t n, int shut);
void tb__front_resp_progress(fconn *c);
void tb__front_resp_done(fconn *c);
void tb__front_start_closing(fconn *c);
void tb__front_conn_free(fconn *c);
void tb__front_refuse(fconn *c, int status, const char *reason,
                      const char *code, const char *message);

/* http_front_pool.c */
void tb__front_serve_waiters(tb__http_front *f);
void tb__front_unqueue(tb__http_front *f, fconn *c);
void tb__front_up_free(upconn *up);
void tb__front_up_release(upconn *up);
upconn *tb__front_up_get(tb__http_front *f, int fresh);

/* How much longer than STOP_FLUSH_MS the stop waits for the requests the
 * front answers: the longest timeout_ms of those whose client still waits
 * for the outcome (redis.command_timeout_ms for a publish, 64 bits: it may
 * be near INT_MAX), else 0 (a client that left reads no answer). */
int64_t tb__front_local_stop_ms(const tb__http_front *f);

/* http_front_events.c: the requests the front answers itself. local: 1
 * if it took c's request (its first n bytes), else 0 (relay it). */
int tb__front_local(fconn *c, size_t n);
void tb__front_local_timeout(fconn *c);
void tb__front_local_detach(fconn *c);
void tb__front_local_end(tb__http_front *f);
void tb__front_on_posts(evutil_socket_t fd, short what, void *arg);

/* http_front_take.c */
void tb__front_answer_take(tb__http_front *f, take_req *t, int result);
void tb__front_try_take(fconn *c);
void tb__front_on_take(evutil_socket_t fd, short what, void *arg);

#endif
