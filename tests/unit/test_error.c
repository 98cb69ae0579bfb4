/* test_error.c - unit tests for service/error.c (tb_strerror, tb_err_name). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>

#include "taskbus/taskbus.h"

typedef struct {
    int code;
    const char *name, *msg;
} err_row;

static const err_row rows[] = {
#define ROW(name, value, msg) {(value), #name, (msg)},
    TB_ERRNO_MAP(ROW)
#undef ROW
};
#define NROWS (sizeof rows / sizeof rows[0])

static void test_map_codes(void **state)
{
    (void)state;
    assert_true(NROWS >= 20);
    for (size_t i = 0; i < NROWS; i++) {
        /* Codes are negated errno values, so each name is also an errno
         * name and the table's message is what tb_strerror returns. */
        assert_true(rows[i].code < 0);
        assert_string_equal(tb_err_name(rows[i].code), rows[i].name);
        assert_string_equal(tb_strerror(rows[i].code), rows[i].msg);
        assert_true(strlen(tb_strerror(rows[i].code)) > 0);
        for (size_t j = 0; j < i; j++) {
            if (rows[i].code == rows[j].code)
                fail_msg("%s and %s share a code", rows[i].name, rows[j].name);
            if (strcmp(tb_strerror(rows[i].code), tb_strerror(rows[j].code)) ==
                0)
                fail_msg("%s and %s share a message", rows[i].name,
                         rows[j].name);
        }
    }
}

static void test_known_values(void **state)
{
    (void)state;
    /* Written out by hand, independently of the X-macro. */
    assert_int_equal(TB_ECANCELED, -ECANCELED);
    assert_int_equal(TB_ETIMEDOUT, -ETIMEDOUT);
    assert_string_equal(tb_err_name(-ECANCELED), "ECANCELED");
    assert_string_equal(tb_err_name(TB_EINVAL), "EINVAL");
    assert_string_equal(tb_err_name(TB_EIO), "EIO");
    assert_string_equal(tb_err_name(TB_ENAMETOOLONG), "ENAMETOOLONG");
    assert_string_equal(tb_strerror(TB_ECANCELED), "cancelled");
    assert_string_equal(tb_strerror(-ETIMEDOUT), "timed out");
    assert_string_equal(tb_strerror(TB_EEXIST),
                        "a live task already holds that name");
    assert_string_equal(tb_strerror(TB_ENOTCONN), "event bus not connected");
}

static void test_unknown_codes(void **state)
{
    (void)state;
    static const int unknown[] = {0,        1,      EINVAL,  -EBADF,
                                  -ENOTDIR, -99999, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        assert_string_equal(tb_err_name(unknown[i]), "EUNKNOWN");
        const char *s = tb_strerror(unknown[i]);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
    }
    assert_string_equal(tb_strerror(0), "success");
    /* Positive values are not error codes (a classic sign slip). */
    assert_string_equal(tb_strerror(1), "unknown error");
    assert_string_equal(tb_strerror(EINVAL), "unknown error");
    assert_string_equal(tb_strerror(INT_MAX), "unknown error");
    /* Any other -errno gets the C library's text. */
    assert_string_equal(tb_strerror(-EBADF), strerror(EBADF));
    assert_string_equal(tb_strerror(-ENOTDIR), strerror(ENOTDIR));
    assert_true(strlen(tb_strerror(INT_MIN)) > 0);
}

static void *other_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++)
        (void)tb_strerror(i % 2 ? -ENOTDIR : -EISDIR);
    return NULL;
}

/* The text for an unmapped code is static, as the header promises: the
 * same pointer from every call and every thread, and it stays as it was
 * after calls for other codes on this thread and another. */
static void test_unknown_text_is_static(void **state)
{
    (void)state;
    const char *mine = tb_strerror(-EBADF);
    char copy[128];
    strncpy(copy, mine, sizeof copy - 1);
    copy[sizeof copy - 1] = '\0';
    assert_true(strlen(copy) > 0);
    assert_string_not_equal(copy, "unknown error"); /* glibc knows EBADF */
    (void)tb_strerror(-EMFILE);
    (void)tb_strerror(-ENOEXEC);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_string_equal(mine, copy);
    assert_ptr_equal(tb_strerror(-EBADF), mine);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_codes),
        cmocka_unit_test(test_known_values),
        cmocka_unit_test(test_unknown_codes),
        cmocka_unit_test(test_unknown_text_is_static),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
