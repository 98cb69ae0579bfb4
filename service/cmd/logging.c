/* logging.c - the service's log output on stderr: text lines (the
 * library's default handler) or one JSON object per line, and the line a
 * second SIGTERM/SIGINT leaves in the same format. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "taskbus/taskbus.h"

#include "cmd.h"

static int log_json;

/* --log-format json: one JSON object per line. (Text lines are the
 * library's default handler's.) */
static void json_handler(tb_log_level lvl, const char *msg, void *ud)
{
    (void)ud;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char when[40];
    time_t secs = ts.tv_sec;
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t w = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + w, sizeof when - w, ".%03dZ", (int)(ts.tv_nsec / 1000000));
    json_t *o = json_object();
    json_t *m = json_string(msg);
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    json_object_set_new(o, "ts", json_string(when));
    json_object_set_new(o, "level",
                        json_string((unsigned)lvl < 4 ? levels[lvl] : "?"));
    json_object_set_new(o, "msg", m ? m : json_string("(not UTF-8)"));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s) {
        fprintf(stderr, "%s\n", s);
        free(s);
    }
}

/* Puts the decimal digits of v (width w, zero-padded) at p; returns the
 * end. Async-signal-safe. */
static char *digits(char *p, long v, int w)
{
    for (int i = w - 1; i >= 0; i--, v /= 10)
        p[i] = (char)('0' + v % 10);
    return p + w;
}

/* A second SIGTERM/SIGINT: one log line in the configured format, from the
 * signal handler, so only async-signal-safe calls (clock_gettime, write)
 * and arithmetic (civil date from days, Howard Hinnant's algorithm). */
static void second_signal(int sig)
{
    (void)sig;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long days = (long)(ts.tv_sec / 86400), sod = (long)(ts.tv_sec % 86400);
    long z = days + 719468, era = z / 146097, doe = z - era * 146097;
    long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long doy = doe - (365 * yoe + yoe / 4 - yoe / 100),
         mp = (5 * doy + 2) / 153;
    long d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
    long y = yoe + era * 400 + (m <= 2);
    char t[32], *p = t;
    p = digits(p, y, 4);
    *p++ = '-';
    p = digits(p, m, 2);
    *p++ = '-';
    p = digits(p, d, 2);
    *p++ = 'T';
    p = digits(p, sod / 3600, 2);
    *p++ = ':';
    p = digits(p, sod / 60 % 60, 2);
    *p++ = ':';
    p = digits(p, sod % 60, 2);
    *p++ = '.';
    p = digits(p, ts.tv_nsec / 1000000, 3);
    *p++ = 'Z';
    static const char msg[] = "second signal: exiting at once";
    char line[160], *q = line;
#define PUT(s, n) (memcpy(q, (s), (n)), q += (n))
    if (log_json) {
        PUT("{\"ts\":\"", 7);
        PUT(t, (size_t)(p - t));
        PUT("\",\"level\":\"warn\",\"msg\":\"", 24);
        PUT(msg, sizeof msg - 1);
        PUT("\"}\n", 3);
    } else {
        PUT(t, (size_t)(p - t));
        PUT(" WARN taskbus: ", 15);
        PUT(msg, sizeof msg - 1);
        PUT("\n", 1);
    }
#undef PUT
    ssize_t n = write(STDERR_FILENO, line, (size_t)(q - line));
    (void)n;
}

void cmd_log_setup(int json, tb_log_level level)
{
    log_json = json;
    tb_log_set_handler(json ? json_handler : NULL, NULL);
    tb_log_set_level(level);
    tb_app_set_second_signal_hook(second_signal);
}
