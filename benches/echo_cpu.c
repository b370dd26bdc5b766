// The CPU floor of answering one small request over loopback TCP: a server thread that
// blocks in recv for a 1 KiB request and sends a 64-byte answer, and a client thread that
// sends the next request when the answer arrives (one in flight, like the closed-loop
// Kafka producer of busy_attribution.py). Prints the round trip p50/p99/p999 and the
// server thread's CPU time per request (its wake-up, the recv and the send, which on
// loopback also delivers the answer to the client's socket): with one raw O_DIRECT append
// (spin_neighbour.c's "per iteration") it is what a broker's CPU per message cannot go
// below on this machine (docs/benchmarks.md).
//
//   gcc -O2 -pthread -o /tmp/echo_cpu benches/echo_cpu.c && /tmp/echo_cpu 20000 [SERVER_CPU CLIENT_CPU]
//
// Pin the two threads to different CPUs, as the broker's shard and its client are: on one
// CPU they hand the CPU to each other without ever going idle, which costs a fraction of a
// wake-up from idle.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQ 1024
#define ANS 64
static int n;
static int lfd;
static long server_cpu_ns;

static long ns(struct timespec t) { return t.tv_sec * 1000000000L + t.tv_nsec; }
static int cmp(const void *a, const void *b) { long x = *(long *)a, y = *(long *)b; return x < y ? -1 : x > y; }
static int full(int fd, char *p, int len, int rd) {
    for (int got = 0; got < len;) {
        int r = rd ? recv(fd, p + got, len - got, 0) : send(fd, p + got, len - got, 0);
        if (r <= 0) return -1;
        got += r;
    }
    return 0;
}

static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set)) { fprintf(stderr, "cannot pin to CPU %d\n", cpu); exit(1); }
}
static int server_cpu = -1;

static void *server(void *arg) {
    (void)arg;
    pin(server_cpu);
    int fd = accept(lfd, NULL, NULL), one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[REQ], ans[ANS];
    memset(ans, 'a', ANS);
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (int i = 0; i < n; i++) {
        if (full(fd, req, REQ, 1) || full(fd, ans, ANS, 0)) { perror("server"); exit(1); }
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    server_cpu_ns = ns(b) - ns(a);
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    n = argc > 1 ? atoi(argv[1]) : 20000;
    if (argc > 3) { server_cpu = atoi(argv[2]); pin(atoi(argv[3])); }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof addr;
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 1) ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen)) { perror("listen"); return 1; }
    pthread_t t;
    pthread_create(&t, NULL, server, NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) { perror("connect"); return 1; }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[REQ], ans[ANS];
    memset(req, 'x', REQ);
    long *lat = malloc(sizeof(long) * n);
    for (int i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (full(fd, req, REQ, 0) || full(fd, ans, ANS, 1)) { perror("client"); return 1; }
        clock_gettime(CLOCK_MONOTONIC, &b);
        lat[i] = ns(b) - ns(a);
    }
    pthread_join(t, NULL);
    qsort(lat, n, sizeof(long), cmp);
    printf("round trip p50 %.1f p99 %.1f p999 %.1f us; server cpu per request %.1f us\n", lat[n / 2] / 1e3,
           lat[n * 99 / 100] / 1e3, lat[n * 999 / 1000] / 1e3, server_cpu_ns / 1e3 / n);
    return 0;
}
