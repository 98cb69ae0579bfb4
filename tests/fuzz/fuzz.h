/* fuzz.h - what the libFuzzer targets of tests/fuzz/ share: the entry point,
 * an invariant check that crashes, quiet logs and a stopped app. */
#ifndef TASKBUS_TESTS_FUZZ_H
#define TASKBUS_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taskbus/taskbus.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant that does not hold is a finding like a crash: abort, so
 * that libFuzzer keeps the input. Not assert(): the fuzz tree may be built
 * with NDEBUG. */
#define FUZZ_CHECK(cond)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

static void fuzz_log_drop(tb_log_level level, const char *msg, void *ud)
{
    (void)level;
    (void)ud;
    /* Read the message through, so that a bad one is still seen. */
    FUZZ_CHECK(strlen(msg) < 1u << 20);
}

/* Every log line is still formatted (a bad format argument is a finding)
 * but nothing is written: a target logs on most inputs. */
static inline void fuzz_quiet_logs(void)
{
    tb_log_set_level(TB_LOG_DEBUG);
    tb_log_set_handler(fuzz_log_drop, NULL);
}

/* A NUL-terminated copy of the input in a buffer of its exact size, so
 * that ASan sees a read past its end. Never NULL (aborts on ENOMEM). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    FUZZ_CHECK(s != NULL);
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* Splits s (NUL-terminated, modified) at the first '\n': returns the rest
 * after it, or "" when there is none. */
static inline char *fuzz_split_line(char *s)
{
    char *nl = strchr(s, '\n');
    if (!nl)
        return s + strlen(s);
    *nl = '\0';
    return nl + 1;
}

/* The input's bytes, taken one at a time (0 once they run out): what
 * drives a structured target's generator. */
typedef struct fuzz_reader {
    const uint8_t *p, *end;
} fuzz_reader;

static inline unsigned fuzz_take(fuzz_reader *r)
{
    return r->p < r->end ? *r->p++ : 0;
}

/* A growing, NUL-terminated text that a generator writes. */
typedef struct fuzz_buf {
    char *s;
    size_t n, cap;
} fuzz_buf;

static inline void fuzz_put_n(fuzz_buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        FUZZ_CHECK(b->s != NULL);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static inline void fuzz_put_s(fuzz_buf *b, const char *s)
{
    fuzz_put_n(b, s, strlen(s));
}

/* An app on the in-process bus that has run and stopped without starting
 * its workers (tb_app_stop before tb_app_run): its routes, kinds and
 * checks all answer, and whatever would add a task or publish an event
 * gets TB_ESHUTDOWN after validating its input, so that nothing piles up
 * from one input to the next. setup (may be NULL) registers what the
 * target needs before the run. */
static inline tb_app *fuzz_stopped_app(const tb_app_config *cfg,
                                       int (*setup)(tb_app *app))
{
    int err = 0;
    tb_app *app = tb_app_new(cfg, &err);
    FUZZ_CHECK(app != NULL);
    if (setup)
        FUZZ_CHECK(setup(app) == 0);
    tb_app_stop(app);
    FUZZ_CHECK(tb_app_run(app) == 0);
    return app;
}

#endif /* TASKBUS_TESTS_FUZZ_H */
