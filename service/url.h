/* url.h - parsing of the Redis URLs taskbus accepts (private). */
#ifndef TASKBUS_URL_H
#define TASKBUS_URL_H

#include <stddef.h>

typedef struct tb__redis_target {
    int is_unix;        /* 1: path is a unix socket; host/port unused */
    char host[256];     /* name, IPv4, or IPv6 without brackets */
    int port;           /* default 6379 */
    char path[108];     /* unix socket path (sun_path's size) */
    char user[128];     /* "" for none (password-only AUTH) */
    char password[512]; /* "" for no AUTH */
    int db;             /* SELECT db; default 0 */
} tb__redis_target;

/* Parses
 *   redis://[[user]:password@]host[:port][/db]
 *   unix://[[user]:password@]/absolute/path.sock[?db=N]
 * with percent-decoding of user and password, IPv6 hosts in brackets
 * ("redis://[::1]:6380"), port 1..65535, db 0..2147483647. rediss:// (TLS)
 * is refused: Debian's hiredis 0.14 has no TLS. Returns 0, or TB_EINVAL
 * with a message for the operator in err (errlen bytes; it never contains
 * the password). */
int tb__redis_url_parse(const char *url, tb__redis_target *out, char *err,
                        size_t errlen);

/* Writes url into buf with any password replaced by "***", for logs. */
void tb__redis_url_redact(const char *url, char *buf, size_t buflen);

#endif /* TASKBUS_URL_H */
