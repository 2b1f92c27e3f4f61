/* Layout helpers of the sparse kernel: vector types, transposes, packing, max pooling.
   Compiled as one translation unit with sparse_kernel.c (prunelab.export.native joins them). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
#define SLACK 64   /* floats of slack after every buffer: vector tiles may run < 8 lanes past */

static inline v8 load8(const float* p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float* p, v8 v) { memcpy(p, &v, sizeof v); }
static inline v8 relu8(v8 a) { v8 z = {0}; return (v8)((vi8)a & ~(a < z)); }  /* keeps NaN */

/* One layer, as described by the int64 descriptor (see enum in sparse_kernel.c), plus the
   extents derived from it. Hp x Wp: the padded input that the outputs read; the packed input
   splits it into sh x sw phase planes of Hq x Wq pixels, so that every stride becomes 1. */
typedef struct {
  int64_t C, H, W, O, Ho, Wo, KH, KW, sh, sw, pt, pl, dh, dw;
  int64_t Hp, Wp, Hq, Wq;
  const int32_t* rowptr;
  const int32_t* taps;
  const float* val;
  const float* bias;
  const int32_t* taps2;          /* taps into the shifted copy (shift mode), or NULL */
  const int32_t* seg;            /* shift mode: starts of (input-channel segment, row), or NULL */
  const float* val2;             /* with seg: the values in (segment, row) order */
  int64_t nseg;
  const int32_t* wgrp;           /* window format (dot mode, see pl_window_build), or NULL */
  const int64_t* wstep;
  const float* wval;
  const float* pro_scale;        /* prologue: the input is relu(x * scale[c] + shift[c]) when set */
  const float* pro_shift;
  int relu, pool_ceil;
  int64_t pool, block;
} layer_t;

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

/* n values of input channel c in place: v = relu(v * scale[c] + shift[c]) (the pre-activation
   BatchNorm + ReLU of the layer's input, fused into packing; padding stays zero). NaN stays NaN. */
static inline void prologue(const layer_t* L, int64_t c, float* v, int64_t n) {
  const float s = L->pro_scale[c], t = L->pro_shift[c];
  for (int64_t i = 0; i < n; ++i) { const float a = v[i] * s + t; v[i] = a < 0.f ? 0.f : a; }
}

static inline int64_t packed_pixels(const layer_t* L) { return L->C * L->sh * L->sw * L->Hq * L->Wq; }

/* Pack nb samples (x: the first one's (C, H, W)) into xp[c][ph][pw][hq][wq][b], the zero-padded
   input split into stride phases: padded pixel (hp, wp) lands in phase (hp % sh, wp % sw) at
   (hp / sh, wp / sw). With no padding and stride 1 this is the plain transpose (C*H*W, nb).
   tmp: W * nb + SLACK floats. */
static void pack(const layer_t* L, const float* x, int64_t nb, float* xp, float* tmp) {
  const int64_t chw = L->C * L->H * L->W, total = packed_pixels(L) * nb;
  if (L->pt == 0 && L->pl == 0 && L->sh == 1 && L->sw == 1 && L->Hp == L->H && L->Wp == L->W) {
    transpose2d(x, nb, chw, chw, xp, nb);
    if (L->pro_scale)
      for (int64_t c = 0; c < L->C; ++c) prologue(L, c, xp + c * L->H * L->W * nb, L->H * L->W * nb);
  } else if (L->sh == 1 && L->sw == 1) {
    /* stride 1 (one phase): zero only the padding around each row, not the whole buffer (a
       ResNet's 64 x 34 x 34 padded input is 300 KB to clear otherwise) */
    const int64_t w_hi = L->W < L->Wp - L->pl ? (L->W > 0 ? L->W : 0) : (L->Wp - L->pl > 0 ? L->Wp - L->pl : 0);
    const int64_t lead = L->pl < L->Wp ? L->pl : L->Wp, rowlen = L->Wp * nb;
    for (int64_t c = 0; c < L->C; ++c)
      for (int64_t hp = 0; hp < L->Hp; ++hp) {
        const int64_t h = hp - L->pt;
        float* row = xp + (c * L->Hp + hp) * rowlen;
        if (h < 0 || h >= L->H || w_hi == 0) { memset(row, 0, sizeof(float) * rowlen); continue; }
        memset(row, 0, sizeof(float) * lead * nb);
        transpose2d(x + (c * L->H + h) * L->W, nb, w_hi, chw, row + lead * nb, nb);
        if (L->pro_scale) prologue(L, c, row + lead * nb, w_hi * nb);
        memset(row + (lead + w_hi) * nb, 0, sizeof(float) * (rowlen - (lead + w_hi) * nb));
      }
  } else {
    memset(xp, 0, sizeof(float) * total);
    /* phases no weight reads (a 1x1 stride-2 shortcut reads only phase (0, 0)) stay zero */
    uint64_t rows_read = 0, cols_read = 0;
    for (int64_t i = 0; i < L->KH; ++i) rows_read |= L->sh > 64 ? ~(uint64_t)0 : (uint64_t)1 << ((i * L->dh) % L->sh);
    for (int64_t j = 0; j < L->KW; ++j) cols_read |= L->sw > 64 ? ~(uint64_t)0 : (uint64_t)1 << ((j * L->dw) % L->sw);
    const int64_t w_hi = L->W < L->Wp - L->pl ? L->W : L->Wp - L->pl;
    for (int64_t c = 0; c < L->C && w_hi > 0; ++c)
      for (int64_t h = 0; h < L->H; ++h) {
        const int64_t hp = h + L->pt;
        if (hp >= L->Hp) break;
        if (L->sh <= 64 && !((rows_read >> (hp % L->sh)) & 1)) continue;
        const float* src = x + (c * L->H + h) * L->W;
        float* plane = xp + ((c * L->sh + hp % L->sh) * L->sw * L->Hq + hp / L->sh) * L->Wq * nb;
        if (L->sw == 1) {
          transpose2d(src, nb, w_hi, chw, plane + L->pl * nb, nb);
          if (L->pro_scale) prologue(L, c, plane + L->pl * nb, w_hi * nb);
          continue;
        }
        const float* row = src;
        int64_t ld = 1;
        if (nb > 1) {   /* a row at a time, then each pixel's nb values to its phase */
          transpose2d(src, nb, w_hi, chw, tmp, nb);
          row = tmp; ld = nb;
        } else if (L->pro_scale) {
          memcpy(tmp, src, sizeof(float) * w_hi);
          row = tmp;
        }
        if (L->pro_scale) prologue(L, c, tmp, w_hi * nb);
        /* phase by phase: no division per pixel */
        for (int64_t px = 0; px < L->sw; ++px) {
          if (L->sw <= 64 && !((cols_read >> px) & 1)) continue;
          int64_t w = ((px - L->pl) % L->sw + L->sw) % L->sw;   /* first w with (w + pl) % sw == px */
          float* dst = plane + (px * L->Hq * L->Wq + (w + L->pl) / L->sw) * nb;
          for (; w < w_hi; w += L->sw, dst += nb)
            for (int64_t b = 0; b < nb; ++b) dst[b] = row[w * ld + b];
        }
      }
  }
  memset(xp + total, 0, sizeof(float) * SLACK);
}

/* Shift mode's copy of the packed input: for each phase plane g (channel, phase) and column
   offset q < J of the kernel (in phase space), xs[g][q][hq][wo][b] = xp[g][hq][wo + q][b] for
   wo < Wo (a channel's copies stay together, as its weights do). Output pixel (oh, ow) then
   reads xs at tap2 + (oh * Wo + ow) * nb for every weight: one run of Ho * Wo * nb lanes per
   channel with no junk pixels (wide mode computes Wq - Wo junk pixels per row, half the work
   for a 4x4 output with a 3x3 kernel). */
static inline int64_t shift_count(const layer_t* L) { return (L->KW - 1) * L->dw / L->sw + 1; }
static inline int64_t shifted_len(const layer_t* L, int64_t nb) {
  return shift_count(L) * L->C * L->sh * L->sw * L->Hq * L->Wo * nb;
}
static void shift_copy(const layer_t* L, const float* xp, int64_t nb, float* xs) {
  const int64_t planes = L->C * L->sh * L->sw, J = shift_count(L), n = L->Wo * nb;
  float* dst = xs;
  for (int64_t g = 0; g < planes; ++g)
    for (int64_t q = 0; q < J; ++q)
      for (int64_t hq = 0; hq < L->Hq; ++hq, dst += n) {
        const float* src = xp + ((g * L->Hq + hq) * L->Wq + q) * nb;
        for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
      }
  memset(dst, 0, sizeof(float) * SLACK);
}

/* k x k max pooling with stride k (no padding) of one channel held as (Ho, pitch, nb), the
   first Wo pixels of each row valid, into (Hq, Wq, nb); ceil_mode keeps the partial windows at
   the bottom and right edge (as torch's ceil_mode=True with no padding). NaN propagates. */
static void maxpool(const float* in, int64_t Ho, int64_t Wo, int64_t pitch, int64_t nb, int64_t k,
                    int ceil_mode, float* out) {
  const int64_t Hq = ceil_mode ? (Ho + k - 1) / k : Ho / k, Wq = ceil_mode ? (Wo + k - 1) / k : Wo / k;
  for (int64_t ph = 0; ph < Hq; ++ph)
    for (int64_t pw = 0; pw < Wq; ++pw) {
      float* o = out + (ph * Wq + pw) * nb;
      memcpy(o, in + (ph * k * pitch + pw * k) * nb, sizeof(float) * nb);
      for (int64_t i = 0; i < k && ph * k + i < Ho; ++i)
        for (int64_t j = 0; j < k && pw * k + j < Wo; ++j) {
          const float* v = in + ((ph * k + i) * pitch + pw * k + j) * nb;
          for (int64_t b = 0; b < nb; ++b) o[b] = (v[b] > o[b] || v[b] != v[b]) && o[b] == o[b] ? v[b] : o[b];
        }
    }
}
