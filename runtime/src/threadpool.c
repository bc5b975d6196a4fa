#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* Spin this long for the next task, then sleep. When the machine is oversubscribed a spinning thread
 * steals the core the thread it waits for needs: after YIELD_AFTER spins, waits yield the CPU. */
#define SPINS 200000
#define YIELD_AFTER 2000

struct threadpool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    atomic_int generation; /* bumped once per task */
    atomic_int pending;    /* workers still running the current task */
    atomic_int stop;
    pool_task task;
    void *arg;
};

typedef struct {
    threadpool *p;
    int ith;
} worker_arg;

static worker_arg *worker_args(threadpool *p) { return (worker_arg *)(p->threads + p->n); }

static void *worker(void *wa) {
    threadpool *p = ((worker_arg *)wa)->p;
    int ith = ((worker_arg *)wa)->ith, seen = 0;
    for (;;) {
        int spins = 0, g;
        while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop)) {
            if (++spins < SPINS) {
                if (spins < YIELD_AFTER)
                    cpu_relax();
                else
                    sched_yield();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        p->task(p->arg, ith, p->n);
        atomic_fetch_sub(&p->pending, 1);
    }
}

threadpool *pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    threadpool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n_threads;
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t) + sizeof(worker_arg));
    if (!p->threads) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    for (int i = 1; i < n_threads; i++) {
        worker_args(p)[i] = (worker_arg){p, i};
        if (pthread_create(&p->threads[i], NULL, worker, &worker_args(p)[i])) {
            p->n = i; /* join the ones that started */
            pool_free(p);
            return NULL;
        }
    }
    return p;
}

void pool_free(threadpool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    free(p->threads);
    free(p);
}

int pool_size(const threadpool *p) { return p->n; }

void pool_run(threadpool *p, pool_task task, void *arg) {
    if (p->n == 1) {
        task(arg, 0, 1);
        return;
    }
    p->task = task;
    p->arg = arg;
    atomic_store(&p->pending, p->n - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->generation, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    task(arg, 0, p->n);
    for (int spins = 0; atomic_load(&p->pending); spins++)
        if (spins < YIELD_AFTER)
            cpu_relax();
        else
            sched_yield();
}
