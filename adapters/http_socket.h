/* http_socket.h - finding an accepted socket by its peer, for an HTTP
 * server that gives no access to its descriptors (http_civetweb.c). */
#ifndef TASKBUS_HTTP_SOCKET_H
#define TASKBUS_HTTP_SOCKET_H

#include <netinet/in.h>

/* The descriptor of the TCP socket accepted on lport (network order) at
 * local (INADDR_ANY: any) whose peer is addr:port (dotted IPv4), or -1.
 * Descriptors the core owns (tb__ws_fd_owned) are skipped. Any thread. */
int tb__http_find_socket(in_port_t lport, in_addr_t local, const char *addr,
                         int port);

#endif /* TASKBUS_HTTP_SOCKET_H */
