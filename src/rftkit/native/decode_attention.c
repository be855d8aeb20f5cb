/* One decode step of attention for a batch of rows that share prompts (rftkit/rollout/decode.py).
 *
 * Per row r and layer: the new token's raw projections q [Hq, D], k and v [Hkv, D] arrive with
 * the rotary tables of its position. k is rotated and, with v, written to slot `len` of the row's
 * own cache; each query head is rotated and attends over its prompt's keys (shared by all rows of
 * that prompt, padding skipped) followed by the row's own keys 0..len. The result is
 * softmax(q.k * scale) . v per query head, [Hq, D] per row.
 *
 * The maths is PyTorch's (HF Llama's rotate_half rotary, softmax, weighted sum of values); only the
 * order of floating-point additions differs. float32 only.
 */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    const float *q, *k, *v, *cos, *sin;   /* [b, Hq*D], [b, Hkv*D], [b, Hkv*D], [b, D], [b, D] */
    const float *pk, *pv;                 /* [U, Hkv, P, D] the prompts' keys and values */
    const uint8_t *pmask;                 /* [U, P] 1 where the prompt has a real token */
    const int64_t *group;                 /* [b] each row's prompt */
    const int64_t *slot;                  /* [b] each row's place in ok/ov */
    float *ok, *ov;                       /* [B, Hkv, N, D] the rows' own keys and values */
    float *out;                           /* [b, Hq*D] */
    int64_t hq, hkv, d, p, n, len;
    float scale;
    int64_t begin, end;                   /* rows [begin, end) */
} job_t;

static void rotate(const float *x, const float *c, const float *s, float *y, int64_t d) {
    int64_t h = d / 2;
    for (int64_t i = 0; i < h; i++) y[i] = x[i] * c[i] - x[i + h] * s[i];
    for (int64_t i = h; i < d; i++) y[i] = x[i] * c[i] + x[i - h] * s[i];
}

static float dot(const float *a, const float *b, int64_t d) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < d; i++) acc += a[i] * b[i];
    return acc;
}

static void axpy(float w, const float *x, float *y, int64_t d) {
#pragma omp simd
    for (int64_t i = 0; i < d; i++) y[i] += w * x[i];
}

/* Ask for the next block while this one is worked on: the rows' caches are many short streams,
 * too short for the hardware prefetcher to get going, and cold by the time the layer comes round. */
static void prefetch(const float *x, int64_t count) {
    const char *p = (const char *)x, *end = (const char *)(x + count);
    for (; p < end; p += 64) __builtin_prefetch(p, 0, 1);
}

static void *run(void *arg) {
    const job_t *j = (const job_t *)arg;
    const int64_t d = j->d, p = j->p, n = j->n, len = j->len, per_kv = j->hq / j->hkv;
    float *scores = malloc(sizeof(float) * (size_t)(p + len + 1));
    float *qr = malloc(sizeof(float) * (size_t)d);
    int64_t *keep = malloc(sizeof(int64_t) * (size_t)(p > 0 ? p : 1));
    if (!scores || !qr || !keep) { free(scores); free(qr); free(keep); return (void *)1; }
    for (int64_t r = j->begin; r < j->end; r++) {
        const int64_t u = j->group[r], own = j->slot[r];
        const float *c = j->cos + r * d, *s = j->sin + r * d;
        const uint8_t *mask = j->pmask + u * p;
        int64_t kept = 0;
        for (int64_t t = 0; t < p; t++)
            if (mask[t]) keep[kept++] = t;
        for (int64_t g = 0; g < j->hkv; g++) {
            float *slot_k = j->ok + ((own * j->hkv + g) * n + len) * d;
            float *slot_v = j->ov + ((own * j->hkv + g) * n + len) * d;
            rotate(j->k + (r * j->hkv + g) * d, c, s, slot_k, d);
            const float *vv = j->v + (r * j->hkv + g) * d;
            for (int64_t i = 0; i < d; i++) slot_v[i] = vv[i];
        }
        for (int64_t h = 0; h < j->hq; h++) {
            const int64_t g = h / per_kv;
            const float *keys_p = j->pk + (u * j->hkv + g) * p * d, *vals_p = j->pv + (u * j->hkv + g) * p * d;
            const float *keys_o = j->ok + (own * j->hkv + g) * n * d, *vals_o = j->ov + (own * j->hkv + g) * n * d;
            {
                const int64_t nr = h + 1 < j->hq ? r : r + 1, ng = (h + 1 < j->hq ? h + 1 : 0) / per_kv;
                if (nr < j->end && (nr != r || ng != g)) {
                    const int64_t next = j->slot[nr];
                    prefetch(j->ok + (next * j->hkv + ng) * n * d, (len + 1) * d);
                    prefetch(j->ov + (next * j->hkv + ng) * n * d, (len + 1) * d);
                }
            }
            rotate(j->q + (r * j->hq + h) * d, c, s, qr, d);
            float top = -INFINITY;
            for (int64_t i = 0; i < kept; i++) {
                scores[i] = dot(qr, keys_p + keep[i] * d, d) * j->scale;
                if (scores[i] > top) top = scores[i];
            }
            for (int64_t t = 0; t <= len; t++) {
                float x = dot(qr, keys_o + t * d, d) * j->scale;
                scores[kept + t] = x;
                if (x > top) top = x;
            }
            const int64_t total = kept + len + 1;
            float sum = 0.0f;
            for (int64_t i = 0; i < total; i++) {
                scores[i] = expf(scores[i] - top);
                sum += scores[i];
            }
            float *o = j->out + (r * j->hq + h) * d;
            for (int64_t i = 0; i < d; i++) o[i] = 0.0f;
            for (int64_t i = 0; i < kept; i++) axpy(scores[i], vals_p + keep[i] * d, o, d);
            for (int64_t t = 0; t <= len; t++) axpy(scores[kept + t], vals_o + t * d, o, d);
            const float inv = 1.0f / sum;
            for (int64_t i = 0; i < d; i++) o[i] *= inv;
        }
    }
    free(scores); free(qr); free(keep);
    return NULL;
}

/* Returns 0 on success, 1 when memory ran out. With OpenMP (built with -fopenmp against the
 * libgomp PyTorch has loaded, so its threads, already awake, take the rows) rows are split over
 * `threads`; without it they run here, one after another. */
int rft_decode_attention(const float *q, const float *k, const float *v, const float *cos, const float *sin,
                         const float *pk, const float *pv, const uint8_t *pmask, const int64_t *group,
                         const int64_t *slot, float *ok, float *ov, float *out, int64_t b, int64_t hq, int64_t hkv, int64_t d,
                         int64_t p, int64_t n, int64_t len, float scale, int64_t threads) {
    int failed = 0;
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads((int)threads) reduction(| : failed)
    {
        int64_t part = 0, parts = 1;
#ifdef _OPENMP
        part = omp_get_thread_num();
        parts = omp_get_num_threads();
#endif
        job_t job = {q, k, v, cos, sin, pk, pv, pmask, group, slot, ok, ov, out, hq, hkv, d, p, n, len, scale,
                     b * part / parts, b * (part + 1) / parts};
        failed |= run(&job) != NULL;
    }
    return failed;
}
