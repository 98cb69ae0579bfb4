/* http_socket.h - handing an accepted socket to the core, for an HTTP
 * server that gives no access to its descriptors (http_civetweb.c):
 * finding it by its peer, taking it away, or getting it from the front. */
#ifndef TASKBUS_HTTP_SOCKET_H
#define TASKBUS_HTTP_SOCKET_H

#include <netinet/in.h>

#include "adapter.h"

/* The descriptor of the TCP socket accepted on lport (network order) at
 * local (INADDR_ANY: any) whose peer is addr:port (dotted IPv4), or -1.
 * Descriptors the core owns (tb__ws_fd_owned) are skipped. Any thread. */
int tb__http_find_socket(in_port_t lport, in_addr_t local, const char *addr,
                         int port);

/* Who a hand-over is for, for the log line of a failed one: the request's
 * path ("?" when unknown) and the client's address and port as the server
 * saw them. The strings are the caller's, read during the call only. */
typedef struct tb__http_peer {
    const char *path;
    const char *addr;
    int port;
} tb__http_peer;

/* Takes the client's socket fd (-1 when not found) away from the server:
 * a duplicate for the core, and a fresh unconnected socket under the
 * server's number for its own clean-up to close. The connection must close
 * after this request. Returns the duplicate (the caller's), or TB_EPIPE /
 * TB_EAGAIN after counting and logging the failure
 * (tb__ws_handover_failed). Any thread. */
int tb__http_take_socket(tb_app *app, int fd, const tb__http_peer *p);

/* Behind the front, the client's socket is the front's: it hands it over
 * once what it relayed (upgraded: the 101) is out. Returns it (the
 * caller's), or TB_EPIPE after counting and logging the failure with the
 * client's own address (the server saw the front's). Server thread. */
int tb__http_front_handover(tb_app *app, tb__http_front *front, int upgraded,
                            const tb__http_peer *p);

#endif /* TASKBUS_HTTP_SOCKET_H */
