/* bus_memory.c - the in-process event bus: fan-out to this app's workers. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters.h"

static int mem_start(tb__bus *bus)
{
    (void)bus;
    tb__log(TB_LOG_INFO, "event bus: in-process (no Redis configured): "
                         "events stay inside this process");
    return 0;
}

typedef struct mem_bus {
    tb__bus bus;
    int64_t since_us;
    atomic_uint_fast64_t published;
} mem_bus;

static int mem_publish(tb__bus *bus, tb_event *ev, tb__publish_cb cb, void *ud)
{
    mem_bus *m = (mem_bus *)bus;
    tb__app_deliver(bus->app, ev);
    atomic_fetch_add_explicit(&m->published, 1, memory_order_relaxed);
    if (cb)
        cb(0, ud); /* in every worker's inbox: as published as it gets */
    return 0;
}

static void mem_status(tb__bus *bus, tb_bus_info *out)
{
    mem_bus *m = (mem_bus *)bus;
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "memory");
    out->state = TB_BUS_CONNECTED;
    out->since_us = m->since_us;
    out->published = atomic_load(&m->published);
    out->received = out->published;
}

static void mem_stop(tb__bus *bus)
{
    (void)bus;
}

static void mem_free(tb__bus *bus)
{
    free(bus);
}

static const tb__bus_ops memory_ops = {
    .name = "memory",
    .start = mem_start,
    .publish = mem_publish,
    .status = mem_status,
    .stop = mem_stop,
    .free = mem_free,
};

tb__bus *tb__bus_memory_new(tb_app *app)
{
    mem_bus *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->bus.ops = &memory_ops;
    m->bus.app = app;
    m->since_us = tb__now_us();
    atomic_init(&m->published, 0);
    return &m->bus;
}
