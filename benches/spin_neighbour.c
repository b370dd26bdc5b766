// A 4 KiB O_DIRECT pwrite loop over a pre-zeroed file, 100 us apart, as a shard's
// durable append: prints p50/p99/p999/max in us. Optional slice (us, sched_runtime of
// SCHED_OTHER, Linux 6.12+) and nice value for the writing thread. Run it beside a
// process spinning on the same CPU to see what a busy neighbour does to a thread that
// sleeps on the disk (docs/benchmarks.md, "A spinning process on the shard's CPU"):
//
//   gcc -O2 -o /tmp/spin_neighbour benches/spin_neighbour.c
//   taskset -c 1 python3 -c 'while True: pass' &
//   taskset -c 1 /tmp/spin_neighbour /path/on/the/data/disk/file 20000 [SLICE_US [NICE]]
//
// With FDATASYNC=1 in the environment every pwrite is followed by an fdatasync and the
// pair is timed: the floor of `fsync` durability (a 4 KiB write + fdatasync).
// It also prints the thread's CPU time per write: spent in the write call(s) alone, and in
// all of one iteration (the write and the wake-up after the 100 us sleep): what the disk
// itself costs a CPU, to compare with the broker's CPU per message (busy_attribution.py).
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <stdint.h>
struct attr { uint32_t size, policy; uint64_t flags; int32_t nice; uint32_t prio; uint64_t runtime, deadline, period; };
static int cmp(const void *a, const void *b) { long x = *(long *)a, y = *(long *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s FILE WRITES [SLICE_US [NICE]]\n", argv[0]); return 2; }
    const char *path = argv[1]; int n = atoi(argv[2]);
    if (argc > 3) { struct attr a = {48, 0, 0, argc > 4 ? atoi(argv[4]) : 0, 0, (uint64_t)atol(argv[3]) * 1000, 0, 0}; if (syscall(314, 0, &a, 0)) perror("sched_setattr"); }
    int fd = open(path, O_RDWR | O_CREAT | O_DIRECT, 0644);
    if (fd < 0) { perror("open"); return 1; }
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, 1 << 20)) { perror("posix_memalign"); return 1; }
    memset(buf, 0, 1 << 20);
    for (long off = 0; off < (long)n * 4096; off += 1 << 20) pwrite(fd, buf, 1 << 20, off);
    fsync(fd);
    memset(buf, 'x', 4096);
    const char *sync_env = getenv("FDATASYNC");
    int sync_each = sync_env && strcmp(sync_env, "1") == 0;
    long *lat = malloc(sizeof(long) * n);
    long write_cpu = 0;
    struct timespec loop_a, loop_b; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &loop_a);
    for (int i = 0; i < n; i++) {
        struct timespec a, b, ca, cb;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ca);
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (pwrite(fd, buf, 4096, (long)i * 4096) != 4096) { perror("pwrite"); return 1; }
        if (sync_each && fdatasync(fd)) { perror("fdatasync"); return 1; }
        clock_gettime(CLOCK_MONOTONIC, &b);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cb);
        lat[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
        write_cpu += (cb.tv_sec - ca.tv_sec) * 1000000000L + (cb.tv_nsec - ca.tv_nsec);
        usleep(100);
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &loop_b);
    long loop_cpu = (loop_b.tv_sec - loop_a.tv_sec) * 1000000000L + (loop_b.tv_nsec - loop_a.tv_nsec);
    qsort(lat, n, sizeof(long), cmp);
    printf("p50 %.0f p99 %.0f p999 %.0f max %.0f us; cpu per write %.1f us, per iteration %.1f us\n", lat[n / 2] / 1e3, lat[n * 99 / 100] / 1e3, lat[n * 999 / 1000] / 1e3, lat[n - 1] / 1e3, write_cpu / 1e3 / n, loop_cpu / 1e3 / n);
    unlink(path);
    return 0;
}
