/* fuzz_resp.c - the Redis protocol reader of the links the Redis bus
 * speaks without hiredis: its Sentinel links (service/resp.c), whose
 * replies come from outside. The input is a stream of replies read one
 * after the other, as a link reads them; every value must lie inside the
 * input and within the reader's bounds, and what it took must be counted
 * exactly once. */
#include "fuzz.h"
#include "resp.h"

static void check_val(const tb__resp_val *v, const char *buf, size_t len)
{
    FUZZ_CHECK(v->type == '+' || v->type == '-' || v->type == ':' ||
               v->type == '$' || v->type == '_');
    if (v->type == '+' || v->type == '-' || v->type == '$') {
        FUZZ_CHECK(v->len <= TB__RESP_STRING_MAX);
        FUZZ_CHECK(v->str >= buf && v->str + v->len <= buf + len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy: a read past the end is ASan's finding. */
    char *buf = malloc(size ? size : 1);
    FUZZ_CHECK(buf != NULL);
    if (size)
        memcpy(buf, data, size);
    size_t off = 0;
    while (off < size) {
        tb__resp r;
        size_t avail = size - off;
        int took = tb__resp_parse(buf + off, avail, &r);
        if (took <= 0) {
            /* Incomplete is only allowed within the bound. */
            FUZZ_CHECK(took == -1 || avail < TB__RESP_REPLY_MAX);
            break;
        }
        FUZZ_CHECK((size_t)took <= avail && took <= TB__RESP_REPLY_MAX);
        if (r.v.type == '*') {
            FUZZ_CHECK(r.n >= 0 && r.n <= TB__RESP_ELEMS_MAX);
            for (int i = 0; i < r.n; i++)
                check_val(&r.el[i], buf + off, (size_t)took);
        } else {
            FUZZ_CHECK(r.n == 0);
            check_val(&r.v, buf + off, (size_t)took);
        }
        off += (size_t)took;
    }
    free(buf);
    return 0;
}
