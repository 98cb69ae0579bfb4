/* fuzz_http_head.c - the front's HTTP framing (service/http_head.c): where
 * a head ends, what it says about the body, and where a chunked body ends.
 * The first byte picks request or response and how the rest is cut into
 * pieces for the chunked reader; the rest is a message stream. Whatever
 * comes, every answer lies inside the input, and a chunked body read in
 * pieces ends where it ends when read whole. */
#include "fuzz.h"
#include "http_head.h"

/* Reads buf as a chunked body, step bytes at a time: the bytes it took
 * (-1: malformed) and whether it ended. */
static long chunks(const char *buf, size_t len, size_t step, int *ended)
{
    tb__http_chunks c;
    memset(&c, 0, sizeof c);
    size_t off = 0;
    *ended = 0;
    while (off < len) {
        size_t n = len - off < step ? len - off : step;
        int done;
        long used = tb__http_chunks_feed(&c, buf + off, n, &done);
        if (used < 0)
            return -1;
        FUZZ_CHECK((size_t)used <= n);
        FUZZ_CHECK(done || (size_t)used == n);
        off += (size_t)used;
        if (done) {
            *ended = 1;
            break;
        }
        FUZZ_CHECK(c.line <= TB__HTTP_CHUNK_LINE_MAX);
        FUZZ_CHECK(c.trailer <= TB__HTTP_TRAILER_MAX);
    }
    FUZZ_CHECK(c.data <= off);
    return (long)off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int request = data[0] & 1;
    size_t step = 1 + (data[0] >> 1);
    size -= 1;
    /* An exact-size copy: a read past the end is ASan's finding. */
    char *buf = malloc(size ? size : 1);
    FUZZ_CHECK(buf != NULL);
    if (size)
        memcpy(buf, data + 1, size);
    size_t end = tb__http_head_end(buf, size);
    FUZZ_CHECK(end <= size);
    if (end) {
        /* civetweb's two ends exactly: LF LF or CR LF CR LF. */
        FUZZ_CHECK(end >= 2 && buf[end - 1] == '\n' &&
                   (buf[end - 2] == '\n' ||
                    (end >= 4 && memcmp(buf + end - 4, "\r\n\r\n", 4) == 0)));
        /* The first end: no shorter prefix is a head. */
        FUZZ_CHECK(tb__http_head_end(buf, end - 1) == 0);
        tb__http_head h;
        tb__http_head_parse(buf, end, request, &h);
        int kind = tb__http_body_kind(&h, 0);
        FUZZ_CHECK(kind >= TB__HTTP_BODY_NONE && kind <= TB__HTTP_BODY_CLOSE);
        FUZZ_CHECK(request ? h.status == 0 && kind != TB__HTTP_BODY_CLOSE
                           : h.bad || (h.status >= 100 && h.status <= 999));
        FUZZ_CHECK(!h.bad || !h.keep_alive);
        FUZZ_CHECK(!h.reject || h.bad);
        if (kind == TB__HTTP_BODY_CHUNKED) {
            int e1, e2;
            long whole = chunks(buf + end, size - end, size, &e1);
            long piece = chunks(buf + end, size - end, step, &e2);
            FUZZ_CHECK(whole == piece && e1 == e2);
        }
    } else {
        int e;
        (void)chunks(buf, size, step, &e);
    }
    free(buf);
    return 0;
}
