
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
#define SLACK 64   /* floats of slack after every buffer: vector loops may run < 16 lanes past */

static inline v16 load16(const float* p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void store16(float* p, v16 v) { memcpy(p, &v, sizeof v); }
static inline v16 relu16(v16 a) { v16 z = {0}; return (v16)((vi16)a & ~(a < z)); }  /* keeps NaN */

#if defined(__AVX__)
/* one 8x8 tile: d[c * dst_ld + r] = s[r * src_ld + c], r, c < 8 */
static inline void tile8(const float* s, int64_t src_ld, float* d, int64_t dst_ld) {
  __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + src_ld);
  __m256 a2 = _mm256_loadu_ps(s + 2 * src_ld), a3 = _mm256_loadu_ps(s + 3 * src_ld);
  __m256 a4 = _mm256_loadu_ps(s + 4 * src_ld), a5 = _mm256_loadu_ps(s + 5 * src_ld);
  __m256 a6 = _mm256_loadu_ps(s + 6 * src_ld), a7 = _mm256_loadu_ps(s + 7 * src_ld);
  __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
  __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
  __m256 t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5);
  __m256 t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + dst_ld, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * dst_ld, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * dst_ld, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * dst_ld, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * dst_ld, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * dst_ld, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * dst_ld, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

/* dst[c * dst_ld + r] = src[r * src_ld + c] for r < rows, c < cols. Blocks of 64 rows keep the
   source lines in L1 while every destination row is written in whole cache lines: destination
   rows may lie a power-of-two-like stride apart (batch rows of an output), which otherwise
   thrashes a few cache sets. */
static void transpose2d(const float* src, int64_t rows, int64_t cols, int64_t src_ld,
                        float* dst, int64_t dst_ld) {
  if (rows == 1 && dst_ld == 1) { memcpy(dst, src, sizeof(float) * cols); return; }
  if (cols == 1 && src_ld == 1) { memcpy(dst, src, sizeof(float) * rows); return; }
  int64_t rfull = 0, cfull = 0;
#if defined(__AVX__)
  rfull = rows & ~(int64_t)7;
  cfull = cols & ~(int64_t)7;
  for (int64_t rb = 0; rb < rfull; rb += 64) {
    const int64_t re = rb + 64 < rfull ? rb + 64 : rfull;
    for (int64_t c0 = 0; c0 < cfull; c0 += 8)
      for (int64_t r0 = rb; r0 < re; r0 += 8) tile8(src + r0 * src_ld + c0, src_ld, dst + c0 * dst_ld + r0, dst_ld);
  }
#endif
  for (int64_t c = cfull; c < cols; ++c)          /* right edge, full-tile rows */
    for (int64_t r = 0; r < rfull; ++r) dst[c * dst_ld + r] = src[r * src_ld + c];
  for (int64_t c = 0; c < cols; ++c)              /* bottom edge */
    for (int64_t r = rfull; r < rows; ++r) dst[c * dst_ld + r] = src[r * src_ld + c];
}

/* Non-overlapping k x k max pooling (floor mode) of one channel held as (Ho, Wo, nb) into
   (Ho / k, Wo / k, nb); NaN propagates, as in torch.max_pool2d. */
static void maxpool(const float* in, int64_t Ho, int64_t Wo, int64_t nb, int64_t k, float* out) {
  const int64_t Hq = Ho / k, Wq = Wo / k;
  for (int64_t ph = 0; ph < Hq; ++ph)
    for (int64_t pw = 0; pw < Wq; ++pw) {
      float* o = out + (ph * Wq + pw) * nb;
      const float* first = in + (ph * k * Wo + pw * k) * nb;
      memcpy(o, first, sizeof(float) * nb);
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j) {
          const float* v = in + ((ph * k + i) * Wo + pw * k + j) * nb;
          for (int64_t b = 0; b < nb; ++b) o[b] = (v[b] > o[b] || v[b] != v[b]) && o[b] == o[b] ? v[b] : o[b];
        }
    }
}

/* out[j] = b + sum_{p < n} val[p] * in[tap[p] * nb + j] for j < lanes (then ReLU if asked) */
static void accumulate(int64_t lanes, const float* in, const int32_t* tap, int64_t nb,
                       const float* val, int64_t n, float b, int relu, float* out) {
  if (lanes < 16) {
    for (int64_t j = 0; j < lanes; ++j) {
      float a0 = b, a1 = 0.f;   /* two chains: the FMA latency, not the loads, bounds a dot product */
      int64_t p = 0;
      for (; p + 1 < n; p += 2) { a0 += val[p] * in[tap[p] * nb + j]; a1 += val[p + 1] * in[tap[p + 1] * nb + j]; }
      if (p < n) a0 += val[p] * in[tap[p] * nb + j];
      a0 += a1;
      out[j] = relu && a0 < 0.f ? 0.f : a0;
    }
    return;
  }
  v16 bv = {0};
  bv += b;
  int64_t j = 0;
  for (; j + 48 < lanes; j += 64) {   /* four independent accumulators hide the FMA latency */
    v16 a0 = bv, a1 = bv, a2 = bv, a3 = bv;
    for (int64_t p = 0; p < n; ++p) {
      const float* s = in + tap[p] * nb + j;
      const float v = val[p];
      a0 += v * load16(s); a1 += v * load16(s + 16); a2 += v * load16(s + 32); a3 += v * load16(s + 48);
    }
    if (relu) { a0 = relu16(a0); a1 = relu16(a1); a2 = relu16(a2); a3 = relu16(a3); }
    store16(out + j, a0); store16(out + j + 16, a1); store16(out + j + 32, a2); store16(out + j + 48, a3);
  }
  for (; j < lanes; j += 16) {
    v16 a0 = bv;
    for (int64_t p = 0; p < n; ++p) a0 += val[p] * load16(in + tap[p] * nb + j);
    if (relu) a0 = relu16(a0);
    store16(out + j, a0);
  }
}

/* Layer descriptor: int64 fields in this order (pointers stored as integers). */
enum { D_C, D_H, D_W, D_O, D_HO, D_WO, D_KH, D_KW, D_SH, D_SW, D_PT, D_PL, D_DH, D_DW,
       D_ROWPTR, D_TAPS, D_VAL, D_BIAS, D_RELU, D_BLOCK, D_THREADS, D_POOL, D_LEN };

int pl_descriptor_length(void) { return D_LEN; }

int pl_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

/* y = maxpool_k?(relu?(conv2d(x (batch, C, H, W), W_csr) + bias)), y (batch, O, Ho/k, Wo/k) with k = d[D_POOL]
   (k <= 1: no pooling, y (batch, O, Ho, Wo)). Returns 0 on success. */
int pl_sparse_forward(const int64_t* d, int64_t batch, const float* x, float* y) {
  const int64_t C = d[D_C], H = d[D_H], W = d[D_W], O = d[D_O], Ho = d[D_HO], Wo = d[D_WO];
  const int64_t sh = d[D_SH], sw = d[D_SW], pt = d[D_PT], pl = d[D_PL];
  const int32_t* rowptr = (const int32_t*)(intptr_t)d[D_ROWPTR];
  const int32_t* taps = (const int32_t*)(intptr_t)d[D_TAPS];
  const float* val = (const float*)(intptr_t)d[D_VAL];
  const float* bias = (const float*)(intptr_t)d[D_BIAS];
  const int relu = (int)d[D_RELU];
  const int nthreads = (int)d[D_THREADS];
  const int64_t pool = d[D_POOL] > 1 ? d[D_POOL] : 1;
  const int64_t hwq = (Ho / pool) * (Wo / pool), oq = O * hwq;
  const int64_t Hp = (Ho - 1) * sh + (d[D_KH] - 1) * d[D_DH] + 1;
  const int64_t Wp = (Wo - 1) * sw + (d[D_KW] - 1) * d[D_DW] + 1;
  const int64_t chw = C * H * W, ohw = O * Ho * Wo, hwo = Ho * Wo;
  const int direct = pt == 0 && pl == 0 && Hp == H && Wp == W;
  const int64_t block = d[D_BLOCK] > 0 ? d[D_BLOCK] : 64;
  const int64_t nb_max = batch < block ? batch : block;
  const int64_t group = hwo == 1 && pool == 1 ? 16 : 1;   /* output channels unpacked together */
  const int64_t ngroups = (O + group - 1) / group;
  /* one sample of a Linear layer: read x as it is (the scalar path never reads past a row; the
     vector paths may read < 16 floats past the input, so they always get the padded copy) */
  const int in_place = direct && nb_max == 1 && hwo == 1;
  if (batch <= 0) return 0;
  float* xp = in_place ? NULL : (float*)malloc(sizeof(float) * (C * Hp * Wp * nb_max + SLACK));
  if (!in_place && !xp) return 1;
  int status = 0;
  for (int64_t b0 = 0; b0 < batch; b0 += nb_max) {
    const int64_t nb = batch - b0 < nb_max ? batch - b0 : nb_max;
    const float* xb = x + b0 * chw;
    const float* in = xp;
    if (in_place) {
      in = xb;
    } else if (direct) {
      transpose2d(xb, nb, chw, chw, xp, nb);
    } else {
      memset(xp, 0, sizeof(float) * C * Hp * Wp * nb);
      const int64_t w_lo = pl < 0 ? -pl : 0, w_hi = W < Wp - pl ? W : Wp - pl;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h) {
          const int64_t hp = h + pt;
          if (hp < 0 || hp >= Hp || w_hi <= w_lo) continue;
          transpose2d(xb + (c * H + h) * W + w_lo, nb, w_hi - w_lo, chw,
                      xp + ((c * Hp + hp) * Wp + pl + w_lo) * nb, nb);
        }
    }
    if (!in_place) memset(xp + C * Hp * Wp * nb, 0, sizeof(float) * SLACK);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
      /* ob[channel in group, oh, ow, b]; a row may be overrun by < 16 lanes, which the next row
         (computed later) overwrites, and the last one spills into the slack */
      /* short rows (few samples, narrow outputs) use whole-channel "wide" rows instead: with
         stride 1 the outputs (oh, ow < Wp) of a channel read one contiguous input range, so a
         single long vector loop covers the channel and the Wp - Wo junk columns are dropped */
      const int wide = sh == 1 && sw == 1 && Wo * nb < 64 && Ho > 1;
      const int64_t wide_len = wide ? Ho * Wp * nb + SLACK : 0;
      float* ob = (float*)malloc(sizeof(float) * (group * hwo * nb + hwq * nb + wide_len + 2 * SLACK));
      float* pooled = ob ? ob + group * hwo * nb + SLACK : NULL;
      float* wrow = ob ? pooled + hwq * nb + SLACK : NULL;
      if (!ob) {
#pragma omp atomic write
        status = 1;
      }
#pragma omp for schedule(static)
      for (int64_t g = 0; g < ngroups; ++g) {
        if (!ob) continue;
        const int64_t o0 = g * group, o1 = o0 + group < O ? o0 + group : O;
        for (int64_t o = o0; o < o1; ++o) {
          const float bo = bias ? bias[o] : 0.f;
          const int32_t* tap = taps + rowptr[o];
          const float* v = val + rowptr[o];
          const int64_t n = rowptr[o + 1] - rowptr[o];
          if (wide) {
            accumulate(((Ho - 1) * Wp + Wo) * nb, in, tap, nb, v, n, bo, relu, wrow);
            for (int64_t oh = 0; oh < Ho; ++oh)
              memcpy(ob + ((o - o0) * Ho + oh) * Wo * nb, wrow + oh * Wp * nb, sizeof(float) * Wo * nb);
            continue;
          }
          for (int64_t oh = 0; oh < Ho; ++oh) {
            float* orow = ob + ((o - o0) * Ho + oh) * Wo * nb;
            if (sw == 1)
              accumulate(Wo * nb, in + oh * sh * Wp * nb, tap, nb, v, n, bo, relu, orow);
            else
              for (int64_t ow = 0; ow < Wo; ++ow)
                accumulate(nb, in + (oh * sh * Wp + ow * sw) * nb, tap, nb, v, n, bo, relu, orow + ow * nb);
          }
        }
        if (pool > 1) {
          for (int64_t o = o0; o < o1; ++o) {
            maxpool(ob + (o - o0) * hwo * nb, Ho, Wo, nb, pool, pooled);
            transpose2d(pooled, hwq, nb, nb, y + b0 * oq + o * hwq, oq);
          }
        } else if (hwo == 1) {
          transpose2d(ob, o1 - o0, nb, nb, y + b0 * ohw + o0, ohw);
        } else {
          for (int64_t o = o0; o < o1; ++o)
            transpose2d(ob + (o - o0) * hwo * nb, hwo, nb, nb, y + b0 * ohw + o * hwo, ohw);
        }
      }
      free(ob);
    }
  }
  free(xp);
  return status;
}
