/* fuzz_position.c - positions from outside (service/history.c): a since or
 * Last-Event-ID parsed strictly, and the position read off an envelope's
 * tail. What parses formats back to the same bytes; nothing is read past
 * the input (an exact-size copy: ASan sees it). */
#include "fuzz.h"
#include "history.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size ? size : 1);
    FUZZ_CHECK(in != NULL);
    if (size)
        memcpy(in, data, size);

    tb__pos p;
    int rc = tb__pos_parse(in, size, &p);
    FUZZ_CHECK(rc == 0 || rc == TB_EINVAL);
    if (rc == 0) {
        char back[TB_POS_MAX];
        size_t n = tb__pos_format(back, p.epoch, p.seq);
        FUZZ_CHECK(n == size && memcmp(back, in, size) == 0);
        FUZZ_CHECK(tb__epoch_valid(p.epoch));
        FUZZ_CHECK(p.seq <= TB__SEQ_MAX);
    } else {
        FUZZ_CHECK(p.seq == 0 && p.epoch[0] == '\0');
    }

    rc = tb__pos_from_tail(in, size, &p);
    FUZZ_CHECK(rc == 0 || rc == TB_EINVAL);
    if (rc == 0) {
        /* It is the message's last member: ,"pos":"<pos>"} at the end. */
        char tail[TB_POS_MAX + 16];
        int n = snprintf(tail, sizeof tail, ",\"pos\":\"%s-%llu\"}", p.epoch,
                         (unsigned long long)p.seq);
        FUZZ_CHECK(n > 0 && (size_t)n <= size);
        FUZZ_CHECK(memcmp(in + size - (size_t)n, tail, (size_t)n) == 0);
        FUZZ_CHECK(p.seq >= 1);
    }
    free(in);
    return 0;
}
