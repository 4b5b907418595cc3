/* version.c -- the build's version stamp, which the Python binding checks at import. */
#include "embps_store.h"

const char *embps_version(void)
{
    return EMBPS_NATIVE_VERSION;
}
