/* http_front_take.c - hand-overs: a server thread asks the front for a
 * client's socket (a websocket after its 101, an SSE stream), or which
 * client a server connection relays for. */
#include <arpa/inet.h>
#include <stdlib.h>

#include <event2/buffer.h>

#include "http_front_int.h"

void tb__front_answer_take(tb__http_front *f, take_req *t, int result)
{
    pthread_mutex_lock(&f->mu);
    t->result = result;
    t->done = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* The socket leaves the front for the core (a websocket after its 101, an
 * SSE stream before its answer), once what the front relayed is out. */
void tb__front_try_take(fconn *c)
{
    take_req *t = c->take;
    if (!t)
        return;
    int ready = t->upgraded
                    ? c->state == C_UPGRADED
                    : c->state == C_WAIT && c->rstate == R_HEAD &&
                          (!c->up || !evbuffer_get_length(
                                         bufferevent_get_input(c->up->bev)));
    if (!ready && c->state != C_WAIT && c->state != C_UPGRADED) {
        c->take = NULL;
        tb__front_answer_take(c->f, t, TB_EPIPE);
        return;
    }
    if (!ready || evbuffer_get_length(bufferevent_get_output(c->bev)))
        return; /* the 101 is on its way, or the output drains first */
    c->take = NULL;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    tb__http_front *f = c->f;
    int fd = c->fd;
    c->fd = -1;
    tb__front_conn_free(c);
    tb__front_answer_take(f, t, fd);
}

void tb__front_on_take(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__http_front *f = arg;
    pthread_mutex_lock(&f->mu);
    take_req *list = f->takes;
    f->takes = NULL;
    pthread_mutex_unlock(&f->mu);
    while (list) {
        take_req *t = list;
        list = t->next;
        fconn *c = t->port > 0 && t->port < 65536 ? f->by_port[t->port] : NULL;
        if (!c || c->take) {
            tb__front_answer_take(f, t, TB_EPIPE);
            continue;
        }
        c->take = t;
        if (c->state == C_WAIT)
            tb__front_arm(c, TAKE_TIMEOUT_MS);
        tb__front_try_take(c);
    }
}

int tb__http_front_peer(tb__http_front *f, int port, char *addr, size_t addrsz,
                        int *peer_port)
{
    if (!f || port <= 0 || port > 65535)
        return -1;
    uint64_t v = atomic_load_explicit(&f->peers[port], memory_order_acquire);
    if (!(v >> 48))
        return -1;
    struct in_addr a = {htonl((uint32_t)(v >> 16))};
    if (!inet_ntop(AF_INET, &a, addr, (socklen_t)addrsz))
        return -1;
    *peer_port = (int)(v & 0xffff);
    return 0;
}

int tb__http_front_take(tb__http_front *f, int port, int upgraded)
{
    take_req t = {.port = port, .upgraded = upgraded, .result = TB_EPIPE};
    pthread_mutex_lock(&f->mu);
    t.next = f->takes;
    f->takes = &t;
    pthread_mutex_unlock(&f->mu);
    event_active(f->take_ev, 0, 0);
    pthread_mutex_lock(&f->mu);
    while (!t.done)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    return t.result;
}
