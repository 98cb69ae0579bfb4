/* error.c - tb_strerror() and tb_err_name(), generated from TB_ERRNO_MAP. */
#include "taskbus/taskbus.h"

#include <limits.h>
#include <string.h>

/* Text for an errno value outside the map: a static string, so that
 * tb_strerror's result never changes under its caller (strerror_r would
 * need a buffer: a thread-local one is overwritten by the next call).
 * glibc 2.32+ has strerrordesc_np; elsewhere the text is generic. */
static const char *errno_text(int e)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE) &&                              \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    return strerrordesc_np(e);
#else
    (void)e;
    return NULL;
#endif
}

const char *tb_strerror(int code)
{
    switch (code) {
#define TB__ERR_MSG(name, value, msg)                                          \
    case (value):                                                              \
        return msg;
        TB_ERRNO_MAP(TB__ERR_MSG)
#undef TB__ERR_MSG
    case 0:
        return "success";
    default:
        break;
    }
    if (code < 0 && code != INT_MIN) {
        const char *s = errno_text(-code);
        if (s != NULL)
            return s;
    }
    return "unknown error";
}

const char *tb_err_name(int code)
{
    switch (code) {
#define TB__ERR_NAME(name, value, msg)                                         \
    case (value):                                                              \
        return #name;
        TB_ERRNO_MAP(TB__ERR_NAME)
#undef TB__ERR_NAME
    default:
        return "EUNKNOWN";
    }
}
