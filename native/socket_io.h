/* socket_io.h -- internal to the data path: bounded waits on a socket, shared by the server
 * (data_server.c) and the client (data_client.c); not exported. */
#ifndef EMBPS_SOCKET_IO_H
#define EMBPS_SOCKET_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* The deadline of one exchange (receiving a request, sending a reply): it starts at the exchange's
 * first wait, unless set beforehand, and holds for the rest of it, however the bytes trickle.  Calls
 * that never wait (the hot path, where the socket buffers have room) never read the clock. */
typedef struct {
    uint32_t timeout_ms;
    uint64_t at_ns;             /* 0 until the first wait */
} deadline;

uint64_t now_ns(void);
int deadline_passed(const deadline *dl);
/* Waits until fd is ready for events; -1 once the deadline has passed. */
int wait_ready(int fd, short events, deadline *dl);
int would_block(void);
/* Receives into iov (which it consumes) until at least `least` bytes, and at least one, have come,
 * reading whatever more is already there up to the iov's end, in as few recvmsg calls as the bytes
 * allow; returns the count, or -1 as recv_all. */
ssize_t recv_iov(int fd, struct iovec *iov, size_t n, size_t least, deadline *dl);
/* Exactly len bytes into buf; -1 if the connection broke (errno says how; 0 when the peer closed
 * it) or the deadline passed. */
int recv_all(int fd, void *buf, size_t len, deadline *dl);
/* Sends every byte described by iov (which it consumes), at most IOV_MAX entries per call; -1 as
 * recv_all. */
int send_iov(int fd, struct iovec *iov, size_t n, deadline *dl);

#endif
