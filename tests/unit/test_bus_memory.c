/* test_bus_memory.c - unit tests for adapters/bus_memory.c's shared store:
 * put, del, list, replacing, TTLs, bounds (the callback never runs on a
 * refusal). */
#include "harness.h"

#include <unistd.h>

#include "internal.h"

/* The value listed under id, or NULL. */
static const char *value_of(const th_kv_seen *s, const char *id)
{
    for (size_t i = 0; i < s->n && i < 8; i++)
        if (strcmp(s->ids[i], id) == 0)
            return s->values[i];
    return NULL;
}

static void test_memory_kv(void **state)
{
    (void)state;
    tb_app *app = th_memory_app();
    tb__bus *bus = app->bus;
    const tb__kv_ops *kv = bus->ops->kv;
    th_kv_seen s = {0};

    assert_int_equal(
        kv->put(bus, "instance", "a", "one", 3, 60000, th_kv_on_done, &s), 0);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.status, TB__KV_CREATED);
    kv->put(bus, "instance", "b", "two", 3, 60000, th_kv_on_done, &s);
    kv->put(bus, "claim", "a", "other group", 11, 60000, th_kv_on_done, &s);
    /* Replacing keeps one record with the new value. */
    kv->put(bus, "instance", "a", "uno", 3, 60000, th_kv_on_done, &s);
    assert_int_equal(s.status, 0);

    memset(&s, 0, sizeof s);
    assert_int_equal(kv->list(bus, "instance", th_kv_on_list, &s), 0);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.status, 0);
    assert_int_equal(s.n, 2);
    assert_string_equal(value_of(&s, "a"), "uno");
    assert_string_equal(value_of(&s, "b"), "two");

    memset(&s, 0, sizeof s);
    assert_int_equal(kv->del(bus, "instance", "a", th_kv_on_done, &s), 0);
    assert_int_equal(s.calls, 1);
    assert_int_equal(kv->del(bus, "instance", "gone", th_kv_on_done, &s), 0);
    memset(&s, 0, sizeof s);
    kv->list(bus, "instance", th_kv_on_list, &s);
    assert_int_equal(s.n, 1);
    assert_null(value_of(&s, "a"));
    memset(&s, 0, sizeof s);
    kv->list(bus, "claim", th_kv_on_list, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(value_of(&s, "a"), "other group");

    /* A record lives for its TTL, no longer. */
    kv->put(bus, "ttl", "short", "x", 1, 50, NULL, NULL);
    kv->put(bus, "ttl", "long", "y", 1, 60000, NULL, NULL);
    memset(&s, 0, sizeof s);
    kv->list(bus, "ttl", th_kv_on_list, &s);
    assert_int_equal(s.n, 2);
    usleep(120 * 1000);
    memset(&s, 0, sizeof s);
    kv->list(bus, "ttl", th_kv_on_list, &s);
    assert_int_equal(s.n, 1);
    assert_non_null(value_of(&s, "long"));

    /* Out of bounds: refused, and the callback never runs. */
    char big[TB__KV_VALUE_MAX + 2];
    memset(big, 'v', sizeof big);
    char longid[TB__KV_ID_MAX + 2];
    memset(longid, 'i', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    memset(&s, 0, sizeof s);
    assert_int_equal(
        kv->put(bus, "instance", "c", big, sizeof big, 1000, th_kv_on_done, &s),
        TB_EINVAL);
    assert_int_equal(
        kv->put(bus, "instance", "c", "", 0, 1000, th_kv_on_done, &s),
        TB_EINVAL);
    assert_int_equal(
        kv->put(bus, "instance", longid, "v", 1, 1000, th_kv_on_done, &s),
        TB_EINVAL);
    assert_int_equal(
        kv->put(bus, "instance", "a b", "v", 1, 1000, th_kv_on_done, &s),
        TB_EINVAL);
    assert_int_equal(
        kv->put(bus, "bad/group", "a", "v", 1, 1000, th_kv_on_done, &s),
        TB_EINVAL);
    assert_int_equal(
        kv->put(bus, "instance", "a", "v", 1, 0, th_kv_on_done, &s), TB_EINVAL);
    assert_int_equal(kv->del(bus, "instance", "", th_kv_on_done, &s),
                     TB_EINVAL);
    assert_int_equal(kv->list(bus, "", th_kv_on_list, &s), TB_EINVAL);
    assert_int_equal(s.calls, 0);
    tb_app_free(app);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory_kv),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
