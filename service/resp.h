/* resp.h - a strict, bounded reader and writer of the Redis protocol
 * (RESP2), for the links the Redis bus speaks without hiredis (private). */
#ifndef TASKBUS_RESP_H
#define TASKBUS_RESP_H

#include <stddef.h>

/* The bounds of what tb__resp_parse accepts: a reply longer than
 * TB__RESP_REPLY_MAX bytes, a string longer than TB__RESP_STRING_MAX, an
 * array of more than TB__RESP_ELEMS_MAX elements or an array inside an
 * array is refused. Enough for what Sentinel says to its clients (an
 * address, a pub/sub message, a confirmation); a reader that holds
 * TB__RESP_REPLY_MAX bytes without a whole reply has been sent too much. */
#define TB__RESP_REPLY_MAX 8192
#define TB__RESP_STRING_MAX 1024
#define TB__RESP_ELEMS_MAX 8

/* One value: a simple string ('+'), an error ('-'), an integer (':'), a
 * bulk string ('$') or a nil ('_': "$-1" or "*-1"). str points into the
 * parsed buffer (not NUL-terminated; len bytes, which may hold any byte). */
typedef struct tb__resp_val {
    char type;
    const char *str;
    size_t len;
    long long num;
} tb__resp_val;

/* One reply: a value, or an array ('*') of n values in el. */
typedef struct tb__resp {
    tb__resp_val v;
    int n;
    tb__resp_val el[TB__RESP_ELEMS_MAX];
} tb__resp;

/* Parses the reply at the start of buf (len bytes, from outside: hostile).
 * Returns the bytes it took (> 0) with *out filled (pointing into buf), 0
 * when buf holds only the start of a reply within the bounds (read more),
 * or -1 when it is not RESP2 or exceeds a bound (close the link). */
int tb__resp_parse(const char *buf, size_t len, tb__resp *out);

/* 1 if v is a string (simple or bulk) equal to s, ignoring case. */
int tb__resp_is(const tb__resp_val *v, const char *s);

/* Writes the command argv[0..argc) (lens bytes each) as a RESP array into
 * buf (size bytes). Returns its length, or -1 when it does not fit. */
int tb__resp_command(char *buf, size_t size, int argc, const char *const *argv,
                     const size_t *lens);

#endif /* TASKBUS_RESP_H */
