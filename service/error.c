/* error.c - tb_strerror() and tb_err_name(), generated from TB_ERRNO_MAP. */
#include "taskbus/taskbus.h"

#include <limits.h>
#include <string.h>

#define TB__ERRBUF_SIZE 128

/* Text for an errno value outside the map. The XSI strerror_r returns int
 * and fills buf; the GNU one (under _GNU_SOURCE on glibc) returns a pointer
 * that may or may not be buf. Either way the result ends up in buf. */
static const char *errno_text(int e, char *buf, size_t size)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
    const char *s = strerror_r(e, buf, size);
    if (s == NULL || s[0] == '\0')
        return NULL;
    if (s != buf) {
        strncpy(buf, s, size - 1);
        buf[size - 1] = '\0';
    }
    return buf;
#else
    if (strerror_r(e, buf, size) != 0 || buf[0] == '\0')
        return NULL;
    return buf;
#endif
}

/* For codes in the map the string is static. For any other -errno it lives
 * in a thread-local buffer that stays valid until this thread's next call
 * for an unmapped code. */
const char *tb_strerror(int code)
{
    static _Thread_local char buf[TB__ERRBUF_SIZE];

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
        const char *s = errno_text(-code, buf, sizeof buf);
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
