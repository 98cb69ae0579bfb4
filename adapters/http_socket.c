/* http_socket.c - handing a websocket's or SSE stream's socket from the
 * HTTP server to the core: finding it by its peer address, taking it away
 * from the server, or getting it from the front. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "adapter.h"
#include "http_socket.h"

/* 1 if fd is a TCP socket accepted on lport (network order) at local
 * whose peer is want:port. */
static int is_client_socket(in_port_t lport, in_addr_t local, int fd,
                            struct in_addr want, int port)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (getpeername(fd, (struct sockaddr *)&sa, &sl) != 0)
        return 0;
    if (sa.sin_family != AF_INET || sa.sin_addr.s_addr != want.s_addr ||
        ntohs(sa.sin_port) != port)
        return 0;
    struct sockaddr_in la;
    socklen_t ll = sizeof la;
    int type = 0;
    socklen_t tl = sizeof type;
    return getsockname(fd, (struct sockaddr *)&la, &ll) == 0 &&
           la.sin_family == AF_INET && la.sin_port == lport &&
           (local == htonl(INADDR_ANY) || la.sin_addr.s_addr == local) &&
           getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 &&
           type == SOCK_STREAM;
}

/* One more than the highest descriptor number the process may have open
 * now: the size of its descriptor table (FDSize in /proc/self/status,
 * which grows in powers of two as descriptors are opened), else the
 * open-file limit. */
static int fd_bound(void)
{
    int bound = 0;
    FILE *f = fopen("/proc/self/status", "re");
    if (f) {
        char line[128];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "FDSize: %d", &bound) == 1)
                break;
        fclose(f);
    }
    struct rlimit rl;
    int lim = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 1u << 20
                  ? (int)rl.rlim_cur
                  : 1 << 20;
    return bound > 0 && bound < lim ? bound : lim;
}

/* (http_socket.h) The search: sockets already handed to the core are
 * skipped without a system call, and so is any other socket (a Redis link, an
 * embedder's) that merely talks to the same peer. The search stops at the one
 * it wants, so a hand-over costs about one getpeername per non-websocket
 * descriptor below it (10 000 clients connect in about a second). One that is
 * not found (its client reset first) is searched for up to the descriptor
 * table's size only, not up to the open-file limit: at LimitNOFILE=1048576 that
 * cost ~0.2 s of CPU per reset. (A walk of /proc/self/fd instead made every
 * hand-over cost one step per open descriptor: 10 000 clients took 19 s to
 * connect.) */
int tb__http_find_socket(in_port_t lport, in_addr_t local, const char *addr,
                         int port)
{
    struct in_addr want;
    if (inet_pton(AF_INET, addr, &want) != 1)
        return -1;
    /* The table's size is read (a file read) only once the search passes
     * the first 1024 numbers: most sockets are found below them. */
    int max = 1024;
    for (int fd = 0; fd < max; fd++) {
        if (!tb__ws_fd_owned(fd) &&
            is_client_socket(lport, local, fd, want, port))
            return fd;
        if (fd == 1023)
            max = fd_bound();
    }
    return -1;
}

int tb__http_take_socket(tb_app *app, int fd, const tb__http_peer *p)
{
    int mine = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    int stand_in =
        mine >= 0 ? socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
    if (stand_in < 0 || dup2(stand_in, fd) < 0) {
        tb__ws_handover_failed(app, p->path, p->addr, p->port, fd >= 0);
        if (mine >= 0)
            close(mine);
        if (stand_in >= 0)
            close(stand_in);
        return fd >= 0 ? TB_EAGAIN : TB_EPIPE;
    }
    close(stand_in);
    return mine;
}

int tb__http_front_handover(tb_app *app, tb__http_front *front, int upgraded,
                            const tb__http_peer *p)
{
    int fd = tb__http_front_take(front, p->port, upgraded);
    if (fd < 0) {
        char addr[48];
        int port;
        if (tb__http_front_peer(front, p->port, addr, sizeof addr, &port) !=
            0) {
            snprintf(addr, sizeof addr, "%s", p->addr);
            port = p->port;
        }
        tb__ws_handover_failed(app, p->path, addr, port, 0);
    }
    return fd;
}
