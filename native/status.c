/* status.c -- status names and the thread-local message of the last failure. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[512];

int fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return status;
}

const char *file_label(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

const char *embps_errormsg(void)
{
    return last_error;
}

const char *embps_status_name(int status)
{
    static const char *const names[] = {
        "OK", "INVALID_ARGUMENT", "NOT_FOUND", "EXISTS", "CAPACITY",
        "NONFINITE", "IO", "CORRUPT", "NOMEM", "CRASHED", "TOO_LARGE", "PROTOCOL",
    };
    if (status < 0 || status >= (int)(sizeof(names) / sizeof(names[0])))
        return "UNKNOWN";
    return names[status];
}
