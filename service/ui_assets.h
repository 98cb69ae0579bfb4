/* ui_assets.h - the dashboard's files built into the library (private):
 * the table cmake/EmbedAssets.cmake generates from service/ui/. */
#ifndef TASKBUS_UI_ASSETS_H
#define TASKBUS_UI_ASSETS_H

#include <stddef.h>

typedef struct tb__ui_asset {
    const char *path;         /* "/ui/app.js" */
    const char *content_type; /* with its charset for text */
    const char *etag;         /* quoted: "\"0123456789abcdef\"" */
    const unsigned char *data;
    size_t len;
} tb__ui_asset;

/* Ends with an entry whose path is NULL. */
extern const tb__ui_asset tb__ui_assets[];

#endif /* TASKBUS_UI_ASSETS_H */
