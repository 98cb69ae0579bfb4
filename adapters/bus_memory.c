/* bus_memory.c - the in-process event bus: fan-out to this app's workers. */
#include <stdlib.h>

#include "internal.h"

static int mem_start(tb__bus *bus)
{
    (void)bus;
    return 0;
}

static int mem_publish(tb__bus *bus, tb_event *ev)
{
    tb__app_deliver(bus->app, ev);
    return 0;
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
    .stop = mem_stop,
    .free = mem_free,
};

tb__bus *tb__bus_memory_new(tb_app *app)
{
    tb__bus *bus = calloc(1, sizeof *bus);
    if (!bus)
        return NULL;
    bus->ops = &memory_ops;
    bus->app = app;
    return bus;
}
