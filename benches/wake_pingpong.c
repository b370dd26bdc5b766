// A wake-up round trip between two threads pinned to CPU 0 and 1, through eventfds (blocking
// read/write, a 200 us pause between round trips so the CPUs go idle), or spinning on shared
// atomics ("spin"); prints p50/p99/p999 in microseconds. docs/benchmarks.md, issue 16 item 6.
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <stdatomic.h>
static int a2b, b2a; static int N = 20000; static int spin = 0;
static _Atomic uint64_t flagA, flagB;
static void pin(int c){cpu_set_t s;CPU_ZERO(&s);CPU_SET(c,&s);pthread_setaffinity_np(pthread_self(),sizeof s,&s);}
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static void* peer(void*x){pin(1);uint64_t v;for(int i=0;i<N;i++){ if(spin){while(atomic_load(&flagA)<=(uint64_t)i);atomic_store(&flagB,i+1);} else {read(a2b,&v,8);v=1;write(b2a,&v,8);} }return 0;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){ if(argc>1&&!strcmp(argv[1],"spin"))spin=1; a2b=eventfd(0,0);b2a=eventfd(0,0);
 pthread_t t;pthread_create(&t,0,peer,0);pin(0);usleep(10000);double*r=malloc(N*sizeof(double));uint64_t v;
 for(int i=0;i<N;i++){double s=now(); if(spin){atomic_store(&flagA,i+1);while(atomic_load(&flagB)<=(uint64_t)i);} else {v=1;write(a2b,&v,8);read(b2a,&v,8);} r[i]=now()-s; if(!spin) usleep(200);}
 pthread_join(t,0);qsort(r,N,sizeof(double),cmp);printf("%s round trip: p50 %.1f us p99 %.1f us p999 %.1f us (n=%d)\n",spin?"spin":"eventfd",r[N/2],r[N*99/100],r[N*999/1000],N);return 0;}
