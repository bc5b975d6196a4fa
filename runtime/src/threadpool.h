/* A fixed pool of worker threads that run one task at a time, the caller taking part as thread 0.
 * Workers spin briefly between tasks (a forward pass dispatches hundreds of short tasks per token),
 * then sleep on a condition variable. */
#ifndef PVQ_THREADPOOL_H
#define PVQ_THREADPOOL_H

typedef void (*pool_task)(void *arg, int ith, int nth);
typedef struct threadpool threadpool;

/* NULL when threads cannot be created. n_threads >= 1. */
threadpool *pool_new(int n_threads);
void pool_free(threadpool *p);
int pool_size(const threadpool *p);
/* Runs task(arg, i, n) for i in 0..n-1 on all threads and returns when every call has returned. */
void pool_run(threadpool *p, pool_task task, void *arg);

#endif
