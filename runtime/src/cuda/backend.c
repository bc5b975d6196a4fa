/* The table libpvq.so reaches the backend through (src/cuda_backend.h): a model file on the device behind
 * plain C types.  The backend loads the file with its own copy of the loader (libpvq_internal.so), so
 * libpvq.so's structs never cross into this separately built library. */
#include "cuda_backend.h"
#include "errmsg.h"
#include "pvq_cuda.h"

#include <stdlib.h>

struct pvq_cuda_session {
    model m; /* kept for the session's life: the upload may not be the mapping's last reader */
    pvq_cuda_model *g;
};

static int probe(char *why, size_t why_len)
{
    pvq_cuda_device d;
    return pvq_cuda_probe(&d, why, why_len);
}

static void session_close(pvq_cuda_session *s)
{
    if (!s) return;
    pvq_cuda_model_free(s->g);
    model_free(&s->m);
    free(s);
}

static int session_open(const char *path, int n_ctx, int n_batch, pvq_cuda_session **out, char *err, size_t err_len)
{
    *out = NULL;
    pvq_cuda_session *s = calloc(1, sizeof *s);
    if (!s) return err_fail(err, err_len, "out of memory");
    if (model_load(&s->m, path, PVQ_MODE_NATIVE, err, err_len)) {
        free(s);
        return -1;
    }
    if (pvq_cuda_model_load(&s->m, n_ctx, n_batch, &s->g, err, err_len)) {
        model_free(&s->m);
        free(s);
        return -1;
    }
    *out = s;
    return 0;
}

static int session_eval(pvq_cuda_session *s, const int32_t *tokens, int n, float *logits, char *err, size_t err_len)
{
    return pvq_cuda_forward(s->g, tokens, n, logits, err, err_len);
}

static void session_truncate(pvq_cuda_session *s, int n_keep) { pvq_cuda_truncate(s->g, n_keep); }

__attribute__((visibility("default"))) const pvq_cuda_backend pvq_cuda_backend_v1 = {
    PVQ_CUDA_BACKEND_ABI, probe, session_open, session_eval, session_truncate, session_close,
};
