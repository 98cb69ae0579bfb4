/* log.c - process-wide logging: level filter, swappable handler, the
 * default handler that writes one line per message to stderr, and rate
 * limits for lines that a flood could repeat. */
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = TB_LOG_INFO;

/* Readers are the log calls (they run the handler while holding the read
 * lock); tb_log_set_handler is the writer. So once tb_log_set_handler has
 * returned, no thread is still inside the old handler and the caller may
 * free the old ud. Handlers still run concurrently with each other. */
static pthread_rwlock_t g_lock = PTHREAD_RWLOCK_INITIALIZER;
static tb_log_fn g_fn;
static void *g_ud;

void tb_log_set_level(tb_log_level level)
{
    if (level < TB_LOG_DEBUG || level > TB_LOG_OFF)
        return;
    atomic_store_explicit(&g_level, (int)level, memory_order_relaxed);
}

tb_log_level tb_log_get_level(void)
{
    return (tb_log_level)atomic_load_explicit(&g_level, memory_order_relaxed);
}

void tb_log_set_handler(tb_log_fn fn, void *ud)
{
    pthread_rwlock_wrlock(&g_lock);
    g_fn = fn;
    g_ud = fn != NULL ? ud : NULL;
    pthread_rwlock_unlock(&g_lock);
}

int tb__log_enabled(tb_log_level lvl)
{
    return lvl >= TB_LOG_DEBUG && lvl < TB_LOG_OFF &&
           (int)lvl >= atomic_load_explicit(&g_level, memory_order_relaxed);
}

const char *tb__log_level_name(tb_log_level lvl)
{
    switch (lvl) {
    case TB_LOG_DEBUG:
        return "DEBUG";
    case TB_LOG_INFO:
        return "INFO";
    case TB_LOG_WARN:
        return "WARN";
    case TB_LOG_ERROR:
        return "ERROR";
    default:
        return "?";
    }
}

size_t tb__log_format_line(char *buf, size_t size, tb_log_level lvl,
                           int64_t ts_us, const char *msg)
{
    if (size == 0)
        return 0;
    /* Floor division, so that times before 1970 still print sanely. */
    int64_t sec = ts_us / 1000000, us = ts_us % 1000000;
    if (us < 0) {
        us += 1000000;
        sec--;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL)
        memset(&tm, 0, sizeof tm);
    int n = snprintf(buf, size,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s taskbus: %s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, (int)(us / 1000),
                     tb__log_level_name(lvl), msg != NULL ? msg : "");
    if (n < 0) {
        buf[0] = '\0';
        return 0;
    }
    if ((size_t)n >= size) {
        n = (int)(size - 1);
        if (n > 0)
            buf[n - 1] = '\n';
    }
    return (size_t)n;
}

/* One write() per line: lines from different threads never interleave (a
 * pipe guarantees it up to PIPE_BUF = 4096 bytes, above our longest line). */
static void default_handler(tb_log_level lvl, const char *msg)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    char line[TB__LOG_LINE_MAX];
    size_t len = tb__log_format_line(line, sizeof line, lvl, us, msg);
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(STDERR_FILENO, line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* nowhere to report a failure to log */
        off += (size_t)w;
    }
}

/* Cuts msg, the first TB__LOG_MSG_MAX bytes of a longer message, so that
 * it ends in "..." without splitting a UTF-8 sequence. */
static void truncate_msg(char *msg)
{
    size_t k = TB__LOG_MSG_MAX - 3;
    /* msg[k] is the first byte dropped: if it continues a character, drop
     * that character's earlier bytes too (at most 3 of them). */
    for (int i = 0; i < 3 && k > 0 && ((unsigned char)msg[k] & 0xC0) == 0x80;
         i++)
        k--;
    memcpy(msg + k, "...", 4);
}

void tb__vlog(tb_log_level lvl, const char *fmt, va_list ap)
{
    if (!tb__log_enabled(lvl))
        return;
    int saved_errno = errno;

    char msg[TB__LOG_MSG_MAX + 1];
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    if (n < 0) {
        snprintf(msg, sizeof msg, "(unformattable log message: \"%.100s\")",
                 fmt);
        n = (int)strlen(msg);
    } else if ((size_t)n > TB__LOG_MSG_MAX) {
        truncate_msg(msg);
        n = (int)strlen(msg);
    }
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    for (int i = 0; i < n; i++)
        if (msg[i] == '\n' || msg[i] == '\r')
            msg[i] = ' ';

    pthread_rwlock_rdlock(&g_lock);
    if (g_fn != NULL)
        g_fn(lvl, msg, g_ud);
    else
        default_handler(lvl, msg);
    pthread_rwlock_unlock(&g_lock);

    errno = saved_errno;
}

void tb__log(tb_log_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tb__vlog(lvl, fmt, ap);
    va_end(ap);
}

/* The public name of tb__log, for embedders and the service binary. */
void tb_log(tb_log_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tb__vlog(lvl, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- floods */

const char *tb__log_printable(char *buf, size_t size, const char *s, size_t len)
{
    size_t room = size - 1, n = 0;
    int cut = len > room;
    if (cut)
        room -= 3;
    for (; n < len && n < room; n++) {
        unsigned char c = (unsigned char)s[n];
        buf[n] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (cut) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

void tb__ratelog_flush(tb__ratelog *r, int64_t now_us)
{
    if (r->suppressed &&
        (now_us - r->start_us >= 1000000 || now_us == INT64_MAX)) {
        tb__log(TB_LOG_WARN, "%s: %" PRIu64 " more %s suppressed", r->who,
                r->suppressed, r->what);
        r->suppressed = 0;
    }
}

int tb__ratelog_ok(tb__ratelog *r, int64_t now_us)
{
    if (now_us - r->start_us >= 1000000) {
        tb__ratelog_flush(r, now_us);
        r->start_us = now_us;
        r->lines = 0;
    }
    if (r->lines < TB__RATELOG_BURST) {
        r->lines++;
        return 1;
    }
    r->suppressed++;
    return 0;
}
