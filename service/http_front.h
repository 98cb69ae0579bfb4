/* http_front.h - the HTTP front (private): the libevent loop that owns the
 * public listening socket, reads each request whole, and only then relays
 * it to the HTTP server (civetweb) on a private loopback port, so that slow
 * and idle clients hold no server thread. See docs/HTTP_DESIGN.md. */
#ifndef TASKBUS_HTTP_FRONT_H
#define TASKBUS_HTTP_FRONT_H

#include <netinet/in.h>
#include <stddef.h>

#include "taskbus/taskbus.h"

typedef struct tb__http_front tb__http_front;

/* Listens on pub (the app's http.listen) and relays to the server
 * listening on upstream (127.0.0.1), from a thread of its own. Returns the
 * front, or NULL with *err set (TB_EINVAL when pub cannot be bound,
 * logged; TB_ENOMEM; TB_EAGAIN without a thread). */
tb__http_front *tb__http_front_start(tb_app *app, const struct sockaddr_in *pub,
                                     const struct sockaddr_in *upstream,
                                     int *err);

/* Stops accepting new connections; connections already open go on (their
 * requests in flight are answered). Any thread but the front's. */
void tb__http_front_stop(tb__http_front *f);

/* Ends the front after the server has stopped: open connections get
 * what is already relayed (at most about a second), then everything is
 * closed and f freed. NULL is a no-op. */
void tb__http_front_free(tb__http_front *f);

/* The client ("a.b.c.d" and port) whose request the front relays on the
 * server connection from 127.0.0.1:port. 0, or -1 when unknown. Any
 * thread. */
int tb__http_front_peer(tb__http_front *f, int port, char *addr, size_t addrsz,
                        int *peer_port);

/* Takes the client's socket away from the front, for the request relayed
 * on the connection from 127.0.0.1:port: after the 101 of a websocket
 * handshake (upgraded), or, for a response the core writes itself (an SSE
 * stream), before any of its answer. What the front has relayed to the
 * client is written first; the front then never reads, writes or closes
 * the socket again. Blocks the calling (server) thread until then, at
 * most about 2 s. Returns the socket (close-on-exec), now the caller's,
 * or TB_EPIPE (the client has gone, or the front had no such request).
 * Bytes the client sent after its request and that the front had already
 * read are dropped (an RFC 6455 client sends none before the 101; an SSE
 * stream ignores its client's bytes). Any thread but the front's. */
int tb__http_front_take(tb__http_front *f, int port, int upgraded);

#endif
