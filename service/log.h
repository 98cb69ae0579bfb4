/* log.h - the core's logging call and the default line format (private). */
#ifndef TASKBUS_LOG_H
#define TASKBUS_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "taskbus/taskbus.h"

/* Longest message a handler receives, in bytes without the NUL. Longer
 * messages are cut (at a UTF-8 character boundary) and end in "...". */
#define TB__LOG_MSG_MAX 2048
/* Buffer size that always holds tb__log_format_line's output. */
#define TB__LOG_LINE_MAX (TB__LOG_MSG_MAX + 64)

/* Formats fmt like printf and hands the message to the current handler (the
 * default one writes it to stderr) if lvl is at or above the level set with
 * tb_log_set_level; otherwise returns at once without formatting. The
 * message the handler gets has no trailing newline, and any CR or LF inside
 * it is replaced by a space so that it stays one line. Any thread, including
 * inside a task (it never suspends; it uses about 5 KiB of stack). errno is
 * preserved. A handler must not call tb_log_set_handler (deadlock) and
 * should not log itself (it would be re-entered). */
void tb__log(tb_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* tb__log with a va_list, for functions that take printf-style arguments
 * themselves. ap is consumed. */
void tb__vlog(tb_log_level lvl, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* 1 if a message at lvl would be delivered now, else 0. One relaxed atomic
 * load: use it to skip building expensive arguments. */
int tb__log_enabled(tb_log_level lvl);

/* "DEBUG", "INFO", "WARN", "ERROR", or "?" for anything else. Static. */
const char *tb__log_level_name(tb_log_level lvl);

/* The one place that decides what a log line looks like. Writes into buf
 * (size bytes) the line the default handler prints, newline included:
 *   "2025-01-31T23:59:59.123Z INFO taskbus: message\n"
 * ts_us is CLOCK_REALTIME in microseconds (shown in UTC, milliseconds
 * truncated). Returns the line's length without the NUL; with size <
 * TB__LOG_LINE_MAX a long line is cut, but it is always NUL-terminated when
 * size > 0 and still ends in '\n' when size > 1. msg is not changed or kept. */
size_t tb__log_format_line(char *buf, size_t size, tb_log_level lvl,
                           int64_t ts_us, const char *msg);

/* Copies len bytes of s into buf (size >= 8 bytes) for a log line: bytes
 * outside printable ASCII become '?', and a long string ends in "...".
 * Returns buf. For text that came from outside (a channel name, a peer's
 * bytes), which may hold anything. */
const char *tb__log_printable(char *buf, size_t size, const char *s,
                              size_t len);

/* How many lines of one kind a tb__ratelog lets through per second. */
#define TB__RATELOG_BURST 10

/* A rate limit for one kind of log line that a flood could repeat: at most
 * TB__RATELOG_BURST lines a second, then, once that second is over, one
 * "<who>: N more <what> suppressed" line. Zero it and set who and what (both
 * static strings). Not locked: one thread uses it (a bus's own thread). */
typedef struct tb__ratelog {
    const char *who;  /* "redis bus" */
    const char *what; /* "dropped-message lines" */
    int64_t start_us; /* monotonic: the second being counted began */
    int lines;
    uint64_t suppressed;
} tb__ratelog;

/* 1 if a line may be logged now (now_us: monotonic), else 0 and the line
 * is counted as suppressed. */
int tb__ratelog_ok(tb__ratelog *r, int64_t now_us);

/* Logs how many lines were suppressed once their second is over; call it
 * now and then (a periodic timer), so that the count shows even if the
 * flood stops. now_us == INT64_MAX: at once (at stop). */
void tb__ratelog_flush(tb__ratelog *r, int64_t now_us);

#endif /* TASKBUS_LOG_H */
