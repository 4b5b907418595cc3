/* socket_io.c -- bounded waits on a socket for the data path's server and client. */
#include "socket_io.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int deadline_passed(const deadline *dl)
{
    return dl->at_ns && now_ns() >= dl->at_ns;
}

int wait_ready(int fd, short events, deadline *dl)
{
    uint64_t now = now_ns();
    if (!dl->at_ns)
        dl->at_ns = now + (uint64_t)dl->timeout_ms * 1000000u;
    if (now >= dl->at_ns)
        return -1;
    uint64_t ms = (dl->at_ns - now + 999999) / 1000000;
    struct pollfd p = {.fd = fd, .events = events};
    int ready = poll(&p, 1, ms > INT_MAX ? INT_MAX : (int)ms);
    return ready > 0 || (ready < 0 && errno == EINTR) ? 0 : -1;
}

int would_block(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK;
}

/* Drops the first `done` bytes from the front of iov[0..*n). */
static struct iovec *iov_advance(struct iovec *iov, size_t *n, size_t done)
{
    while (*n && done >= iov->iov_len) {
        done -= iov->iov_len;
        iov++;
        (*n)--;
    }
    if (*n) {
        iov->iov_base = (char *)iov->iov_base + done;
        iov->iov_len -= done;
    }
    return iov;
}

ssize_t recv_iov(int fd, struct iovec *iov, size_t n, size_t least, deadline *dl)
{
    size_t got = 0;
    while (n && (got < least || !got)) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = n < IOV_MAX ? n : IOV_MAX};
        ssize_t r = recvmsg(fd, &msg, MSG_DONTWAIT);
        if (r > 0) {
            got += (size_t)r;
            iov = iov_advance(iov, &n, (size_t)r);
        } else if (r == 0) {
            errno = 0;
            return -1;
        } else if (errno != EINTR && (!would_block() || wait_ready(fd, POLLIN, dl))) {
            return -1;
        }
    }
    return (ssize_t)got;
}

int recv_all(int fd, void *buf, size_t len, deadline *dl)
{
    struct iovec iov = {buf, len};
    return recv_iov(fd, &iov, len ? 1 : 0, len, dl) < 0 ? -1 : 0;
}

int send_iov(int fd, struct iovec *iov, size_t n, deadline *dl)
{
    while (n) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = n < IOV_MAX ? n : IOV_MAX};
        ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
            if (errno != EINTR && (!would_block() || wait_ready(fd, POLLOUT, dl)))
                return -1;
            continue;
        }
        iov = iov_advance(iov, &n, (size_t)sent);
    }
    return 0;
}
