/* Error reporting shared by the native core: a status code plus a thread-local message. */
#ifndef EMBPS_STATUS_H
#define EMBPS_STATUS_H

#include "embps_store.h"

/* Records a message for embps_errormsg() and returns status, so callers can `return fail(...)`. */
int fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* What messages call a file: its name in the store's directory, never the server's path to it
 * (messages reach clients). */
const char *file_label(const char *path);

#endif
