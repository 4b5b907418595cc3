/* wire_request.h -- internal to the data path: the checks of a request's header, a pure function
 * that the server (data_server.c) and its fuzzer (native/fuzz/fuzz_wire_request.c) share; not
 * exported. */
#ifndef EMBPS_WIRE_REQUEST_H
#define EMBPS_WIRE_REQUEST_H

#include "embps_data_server.h"

#include <stddef.h>

/* Checks a request's header (the frame's first bytes, as they are in memory) against the limits of
 * cfg (max_batch_keys, max_request_bytes) before its body is read: the body's size must be bounded
 * first.  On success *body is the byte count of the body after the header (name, keys and, for
 * updates, gradients). */
int wire_request_check(const embps_wire_request *rq, const embps_data_server_config *cfg, size_t *body);

#endif
