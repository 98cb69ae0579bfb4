/* url.h - parsing of the Redis URLs taskbus accepts (private). */
#ifndef TASKBUS_URL_H
#define TASKBUS_URL_H

#include <stddef.h>

#define TB__REDIS_URL_MAX 8192     /* bytes of a Redis URL */
#define TB__SENTINELS_MAX 16       /* sentinels one URL may list */
#define TB__SENTINEL_MASTER_MAX 64 /* bytes of a master's name */

typedef struct tb__redis_hostport {
    char host[256]; /* name, IPv4, or IPv6 without brackets */
    int port;
} tb__redis_hostport;

typedef struct tb__redis_target {
    int is_unix;        /* 1: path is a unix socket; host/port unused */
    char host[256];     /* name, IPv4, or IPv6 without brackets */
    int port;           /* default 6379 */
    char path[108];     /* unix socket path (sun_path's size) */
    char user[128];     /* "" for none (password-only AUTH) */
    char password[512]; /* "" for no AUTH */
    int db;             /* SELECT db; default 0 */
    /* redis-sentinel:// only (nsentinels > 0): the sentinels to ask, in
     * order, for the master named master; host and port are then unused
     * (the bus connects where the sentinels say), and user, password and
     * db are the master's. */
    int nsentinels;
    tb__redis_hostport sentinels[TB__SENTINELS_MAX]; /* port default 26379 */
    char master[TB__SENTINEL_MASTER_MAX + 1];
} tb__redis_target;

/* Parses
 *   redis://[[user]:password@]host[:port][/db]
 *   unix://[[user]:password@]/absolute/path.sock[?db=N]
 *   redis-sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]
 * with percent-decoding of user and password, IPv6 hosts in brackets
 * ("redis://[::1]:6380"), port 1..65535 (a sentinel's default 26379), db
 * 0..2147483647, at most TB__SENTINELS_MAX sentinels, a master's name of
 * 1..TB__SENTINEL_MASTER_MAX bytes of [A-Za-z0-9_.-], the whole URL at most
 * TB__REDIS_URL_MAX bytes. rediss:// (TLS) is refused: Debian's hiredis
 * 0.14 has no TLS. Returns 0, or TB_EINVAL with a message for the operator
 * in err (errlen bytes; it never contains the password). */
int tb__redis_url_parse(const char *url, tb__redis_target *out, char *err,
                        size_t errlen);

/* A master's address as a sentinel gives it (hostile input: checked):
 * host (hlen bytes: a name or an IPv4 address of [A-Za-z0-9._~-], or a
 * bare IPv6 address, with "%zone" if any) and port (plen bytes of decimal
 * digits, 1..65535). 0 with both in *out, or TB_EINVAL. */
int tb__sentinel_addr_parse(const char *host, size_t hlen, const char *port,
                            size_t plen, tb__redis_hostport *out);

/* A sentinel's +switch-master message (len bytes, hostile): "<master>
 * <old host> <old port> <new host> <new port>", single spaces, at most 1024
 * bytes. 0 with the master's name (NUL-terminated) in name and the
 * addresses in *from and *to, or TB_EINVAL. */
int tb__sentinel_switch_parse(const char *msg, size_t len,
                              char name[TB__SENTINEL_MASTER_MAX + 1],
                              tb__redis_hostport *from, tb__redis_hostport *to);

/* Writes url into buf with any password replaced by "***", for logs. */
void tb__redis_url_redact(const char *url, char *buf, size_t buflen);

#endif /* TASKBUS_URL_H */
