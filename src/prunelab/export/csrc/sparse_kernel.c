/* Direct sparse convolution (a Linear layer is its 1x1 case); see prunelab/export/native.py.
   Follows sparse_layout.c in the same translation unit. */

/* Layer descriptor: int64 fields in this order (pointers stored as integers). */
enum { D_C, D_H, D_W, D_O, D_HO, D_WO, D_KH, D_KW, D_SH, D_SW, D_PT, D_PL, D_DH, D_DW,
       D_ROWPTR, D_TAPS, D_VAL, D_BIAS, D_RELU, D_BLOCK, D_POOL, D_POOL_CEIL, D_PRO_SCALE, D_PRO_SHIFT,
       D_TAPS2, D_SEG, D_NSEG, D_VAL2, D_WGRP, D_WSTEP, D_WVAL, D_LEN };

#define CHUNK 64   /* lanes of one tile: 8 vectors of 8 floats, all held in registers */

int pl_descriptor_length(void) { return D_LEN; }

int pl_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

static layer_t layer_of(const int64_t* d) {
  layer_t L;
  L.C = d[D_C]; L.H = d[D_H]; L.W = d[D_W]; L.O = d[D_O]; L.Ho = d[D_HO]; L.Wo = d[D_WO];
  L.KH = d[D_KH]; L.KW = d[D_KW]; L.sh = d[D_SH]; L.sw = d[D_SW]; L.pt = d[D_PT]; L.pl = d[D_PL];
  L.dh = d[D_DH]; L.dw = d[D_DW];
  L.Hp = (L.Ho - 1) * L.sh + (L.KH - 1) * L.dh + 1;
  L.Wp = (L.Wo - 1) * L.sw + (L.KW - 1) * L.dw + 1;
  L.Hq = (L.Hp + L.sh - 1) / L.sh;
  L.Wq = (L.Wp + L.sw - 1) / L.sw;
  L.rowptr = (const int32_t*)(intptr_t)d[D_ROWPTR];
  L.taps = (const int32_t*)(intptr_t)d[D_TAPS];
  L.val = (const float*)(intptr_t)d[D_VAL];
  L.bias = (const float*)(intptr_t)d[D_BIAS];
  L.relu = (int)d[D_RELU];
  L.pool = d[D_POOL] > 1 ? d[D_POOL] : 1;
  L.pool_ceil = (int)d[D_POOL_CEIL];
  L.pro_scale = (const float*)(intptr_t)d[D_PRO_SCALE];
  L.pro_shift = (const float*)(intptr_t)d[D_PRO_SHIFT];
  L.taps2 = (const int32_t*)(intptr_t)d[D_TAPS2];
  L.seg = (const int32_t*)(intptr_t)d[D_SEG];
  L.nseg = L.seg ? d[D_NSEG] : 1;
  L.val2 = (const float*)(intptr_t)d[D_VAL2];
  L.wgrp = (const int32_t*)(intptr_t)d[D_WGRP];
  L.wstep = (const int64_t*)(intptr_t)d[D_WSTEP];
  L.wval = (const float*)(intptr_t)d[D_WVAL];
  /* samples per block: a Linear layer reads each input once per output channel, so a wide
     block (64 lanes per load) pays; a convolution keeps its block small so that the input rows
     a tile reads (C x KH rows x a few pixels x nb) stay in L2 for all output channels */
  const int64_t auto_block = L.Ho * L.Wo == 1 ? 64 : 8;
  L.block = d[D_BLOCK] > 0 ? d[D_BLOCK] : auto_block;
  return L;
}

/* out[8q + j] = relu?(b + sum_p val[p] * in[tap[p] * nb + 8q + j]) for q < nv, j < 8. Few vectors
   get several partial sums over alternating non-zeros: the FMA latency, not the loads, would
   otherwise bound a short tile. nv is a constant after inlining, so a[][] lives in registers. */
static inline __attribute__((always_inline)) void tile(const int nv, const float* in, int64_t nb,
                                                      const int32_t* tap, const float* val, int64_t n,
                                                      float b, int relu, float* out, int acc) {
  const int S = nv <= 2 ? 4 : nv <= 4 ? 2 : 1;
  v8 a[4][8];
  for (int s = 0; s < S; ++s)
    for (int q = 0; q < nv; ++q) {
      a[s][q] = (v8){0};
      if (s == 0) a[s][q] += acc ? load8(out + 8 * q) : (v8){0} + b;
    }
  int64_t p = 0;
  for (; p + S <= n; p += S)
    for (int s = 0; s < S; ++s) {
      const float* src = in + (int64_t)tap[p + s] * nb;
      const float v = val[p + s];
      for (int q = 0; q < nv; ++q) a[s][q] += v * load8(src + 8 * q);
    }
  for (; p < n; ++p) {
    const float* src = in + (int64_t)tap[p] * nb;
    const float v = val[p];
    for (int q = 0; q < nv; ++q) a[0][q] += v * load8(src + 8 * q);
  }
  for (int q = 0; q < nv; ++q) {
    for (int s = 1; s < S; ++s) a[0][q] += a[s][q];
    store8(out + 8 * q, relu ? relu8(a[0][q]) : a[0][q]);
  }
}

/* acc: add to what out holds (a later input-channel segment) instead of starting from b */
static void tile_any(int nv, const float* in, int64_t nb, const int32_t* tap, const float* val, int64_t n,
                     float b, int relu, float* out, int acc) {
  switch (nv) {
    case 8: tile(8, in, nb, tap, val, n, b, relu, out, acc); break;
    case 7: tile(7, in, nb, tap, val, n, b, relu, out, acc); break;
    case 6: tile(6, in, nb, tap, val, n, b, relu, out, acc); break;
    case 5: tile(5, in, nb, tap, val, n, b, relu, out, acc); break;
    case 4: tile(4, in, nb, tap, val, n, b, relu, out, acc); break;
    case 3: tile(3, in, nb, tap, val, n, b, relu, out, acc); break;
    case 2: tile(2, in, nb, tap, val, n, b, relu, out, acc); break;
    default: tile(1, in, nb, tap, val, n, b, relu, out, acc); break;
  }
}

/* Window format of a layer read at batch 1 (dot mode): rows in groups of 8, one vector lane per
   row; a group's non-zeros in *steps*, each step 8 weights (one per row, 0 where the row has none)
   whose columns lie in one window of 8 consecutive inputs. A step is one 8-float load of the
   window, one in-register permute (vpermps) putting each row's input in its lane, and one FMA: no
   gather (an AVX2 gather of 8 floats costs about as much as 8 scalar loads). step[s] holds the
   window's first input in its high 32 bits and the 8 lanes' 3-bit offsets in it in the low 24;
   val[8s + i] the weight of lane i; grp[g] the first step of group g. A group walks its windows
   in increasing order; a window takes as many steps as its fullest row has non-zeros in it.
   Windows start at multiples of 8, except that one reaching past the last input starts at
   n_in - 8 instead (no read past the input). Returns the number of steps (0 when the layer has
   no non-zero), -1 when n_in < 8, -2 when a row's taps are not increasing, -3 in a build without
   AVX2 and FMA. With step == NULL it only counts. */
int64_t pl_window_build(int64_t O, int64_t n_in, const int32_t* rowptr, const int32_t* taps, const float* val,
                        int32_t* grp, int64_t* step, float* wval) {
#if !(defined(__AVX2__) && defined(__FMA__))
  return -3;   /* the kernel could not read it */
#endif
  if (n_in < 8) return -1;
  for (int64_t o = 0; o < O; ++o)
    for (int64_t p = rowptr[o] + 1; p < rowptr[o + 1]; ++p)
      if (taps[p] <= taps[p - 1]) return -2;
  int64_t s = 0;
  for (int64_t g = 0; g * 8 < O; ++g) {
    int64_t p[8], end[8];
    for (int i = 0; i < 8; ++i) {
      const int64_t o = g * 8 + i;
      p[i] = o < O ? rowptr[o] : 0;
      end[i] = o < O ? rowptr[o + 1] : 0;
    }
    if (step) grp[g] = (int32_t)s;
    for (;;) {
      int64_t w = INT64_MAX;
      for (int i = 0; i < 8; ++i)
        if (p[i] < end[i] && taps[p[i]] / 8 < w) w = taps[p[i]] / 8;
      if (w == INT64_MAX) break;
      const int64_t base = 8 * w + 8 <= n_in ? 8 * w : n_in - 8;
      int64_t k = 0;   /* steps this window takes: its fullest row's count */
      for (int i = 0; i < 8; ++i) {
        int64_t q = p[i];
        while (q < end[i] && taps[q] < 8 * w + 8) ++q;
        if (q - p[i] > k) k = q - p[i];
      }
      if (step) {
        for (int64_t j = 0; j < k; ++j) {
          step[s + j] = base << 32;
          for (int i = 0; i < 8; ++i) wval[8 * (s + j) + i] = 0.f;
        }
        for (int i = 0; i < 8; ++i)
          for (int64_t j = 0; p[i] < end[i] && taps[p[i]] < 8 * w + 8; ++j, ++p[i]) {
            step[s + j] |= (int64_t)(taps[p[i]] - base) << (3 * i);
            wval[8 * (s + j) + i] = val[p[i]];
          }
      } else {
        for (int i = 0; i < 8; ++i)
          while (p[i] < end[i] && taps[p[i]] < 8 * w + 8) ++p[i];
      }
      s += k;
    }
  }
  if (step) grp[(O + 7) / 8] = (int32_t)s;
  return s;
}

/* one sample, one output pixel (a Linear layer at batch 1): a sparse dot product per channel.
   With AVX2, the window format above where the layer has it (o0 a multiple of 8), else 8
   non-zeros at a time through a gather, the row's tail through a masked gather. */
static void dot_rows(const layer_t* L, const float* in, int64_t o0, int64_t o1, float* out) {
#if defined(__AVX2__) && defined(__FMA__)
  if (L->wstep) {
    const __m256i shift = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
    for (int64_t g = o0 / 8; g * 8 < o1; ++g) {
      __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      int64_t s = L->wgrp[g];
      const int64_t e = L->wgrp[g + 1];
      /* four accumulators: one FMA chain would wait on its latency */
      for (; s + 4 <= e; s += 4)
        for (int u = 0; u < 4; ++u) {
          const int64_t w = L->wstep[s + u];
          const __m256i lanes = _mm256_srlv_epi32(_mm256_set1_epi32((int32_t)w), shift);
          const __m256 xin = _mm256_permutevar8x32_ps(_mm256_loadu_ps(in + (w >> 32)), lanes);
          a[u] = _mm256_fmadd_ps(_mm256_loadu_ps(L->wval + 8 * (s + u)), xin, a[u]);
        }
      for (; s < e; ++s) {
        const int64_t w = L->wstep[s];
        const __m256i lanes = _mm256_srlv_epi32(_mm256_set1_epi32((int32_t)w), shift);
        a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(L->wval + 8 * s), _mm256_permutevar8x32_ps(_mm256_loadu_ps(in + (w >> 32)), lanes), a[0]);
      }
      float r[8];
      _mm256_storeu_ps(r, _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
      for (int i = 0; i < 8 && g * 8 + i < o1; ++i) {
        const float v = r[i] + (L->bias ? L->bias[g * 8 + i] : 0.f);
        out[g * 8 + i] = L->relu && v < 0.f ? 0.f : v;
      }
    }
    return;
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t o = o0; o < o1; ++o) {
    const int32_t* tap = L->taps + L->rowptr[o];
    const float* v = L->val + L->rowptr[o];
    const int64_t n = L->rowptr[o + 1] - L->rowptr[o];
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 16 <= n; p += 16) {
      a = _mm256_fmadd_ps(_mm256_loadu_ps(v + p), _mm256_i32gather_ps(in, _mm256_loadu_si256((const __m256i*)(tap + p)), 4), a);
      b = _mm256_fmadd_ps(_mm256_loadu_ps(v + p + 8), _mm256_i32gather_ps(in, _mm256_loadu_si256((const __m256i*)(tap + p + 8)), 4), b);
    }
    for (; p + 8 <= n; p += 8)
      a = _mm256_fmadd_ps(_mm256_loadu_ps(v + p), _mm256_i32gather_ps(in, _mm256_loadu_si256((const __m256i*)(tap + p)), 4), a);
    if (p < n) {   /* masked lanes are neither loaded nor gathered: no read past the row */
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - p)), lane);
      const __m256i t = _mm256_maskload_epi32(tap + p, m);
      const __m256 g = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), in, t, _mm256_castsi256_ps(m), 4);
      b = _mm256_fmadd_ps(_mm256_maskload_ps(v + p, m), g, b);
    }
    a = _mm256_add_ps(a, b);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    const float r = _mm_cvtss_f32(s) + (L->bias ? L->bias[o] : 0.f);
    out[o] = L->relu && r < 0.f ? 0.f : r;
  }
#else
  for (int64_t o = o0; o < o1; ++o) {
    const int32_t* tap = L->taps + L->rowptr[o];
    const float* v = L->val + L->rowptr[o];
    const int64_t n = L->rowptr[o + 1] - L->rowptr[o];
    float a0 = L->bias ? L->bias[o] : 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    int64_t p = 0;
    for (; p + 4 <= n; p += 4) {
      a0 += v[p] * in[tap[p]]; a1 += v[p + 1] * in[tap[p + 1]];
      a2 += v[p + 2] * in[tap[p + 2]]; a3 += v[p + 3] * in[tap[p + 3]];
    }
    for (; p < n; ++p) a0 += v[p] * in[tap[p]];
    a0 = (a0 + a1) + (a2 + a3);
    out[o] = L->relu && a0 < 0.f ? 0.f : a0;
  }
#endif
}

/* How one block of nb samples is cut into tiles. Row mode: every output row holds Wo * nb lanes
   (a multiple of 8, at least 32, or 16 where shift mode does not apply), read from the packed
   row oh * Wq; the output buffer holds (O, Ho, Wo, nb). Wide mode (short rows): with every
   stride 1 in phase space, output pixel (oh, ow) reads packed pixel (oh * Wq + ow) + tap, so one
   run of ((Ho-1) * Wq + Wo) * nb lanes covers the channel; the Wq - Wo junk pixels per row are
   computed and dropped (buffer pitch Wq). Shift mode (where wide mode's junk would be at least a
   fifth more lanes, and the layer has shift taps): one run of Ho * Wo * nb lanes over
   shift_copy's input (buffer pitch Wo). Dot mode: one lane (Linear at batch 1). */
typedef struct {
  int mode;                      /* 0 row, 1 wide, 2 dot, 3 shift */
  int64_t pitch, row_chunks, tiles, out_len;
} plan_t;

static plan_t plan_of(const layer_t* L, int64_t nb) {
  plan_t P;
  const int64_t row = L->Wo * nb;
  const int64_t lanes = (((L->Ho - 1) * L->Wq + L->Wo) * nb + 7) & ~(int64_t)7;
  const int64_t tight = (L->Ho * L->Wo * nb + 7) & ~(int64_t)7;
  const int shift = L->taps2 && 5 * lanes >= 6 * tight;
  /* dot mode reads x itself at the taps: only where the packed layout is x's (no padding, no
     stride phases, the kernel covering the whole input) and no prologue has to be applied */
  if (L->Ho * L->Wo == 1 && nb == 1 && !L->pro_scale && L->pt == 0 && L->pl == 0 && L->sh == 1 && L->sw == 1
      && L->Hp == L->H && L->Wp == L->W) {
    P.mode = 2; P.pitch = 1; P.row_chunks = 1; P.tiles = 1; P.out_len = 1;
  } else if (row % 8 == 0 && (row >= 32 || (row >= 16 && !shift))) {
    /* rows of 16 lanes (a 16x16 output at batch 1) measured about 8 % faster than wide mode:
       a tile's input rows stay in L1 */
    P.mode = 0; P.pitch = L->Wo; P.row_chunks = (row + CHUNK - 1) / CHUNK;
    P.tiles = L->Ho * P.row_chunks; P.out_len = L->Ho * row;
  } else if (shift) {
    P.mode = 3; P.pitch = L->Wo; P.row_chunks = 1; P.tiles = (tight + CHUNK - 1) / CHUNK; P.out_len = tight;
  } else {
    P.mode = 1; P.pitch = L->Wq; P.row_chunks = 1; P.tiles = (lanes + CHUNK - 1) / CHUNK;
    P.out_len = lanes > L->Ho * L->Wq * nb ? lanes : L->Ho * L->Wq * nb;
  }
  return P;
}

/* tile t for output channels [o0, o1): ob holds (O, out_len) */
static void run_tile(const layer_t* L, const plan_t* P, const float* in, int64_t nb, int64_t t,
                     int64_t o0, int64_t o1, float* ob) {
  if (P->mode == 2) { dot_rows(L, in, o0, o1, ob); return; }
  int64_t in_off, out_off, lanes;
  if (P->mode == 0) {
    const int64_t oh = t / P->row_chunks, j = (t % P->row_chunks) * CHUNK, row = L->Wo * nb;
    in_off = oh * L->Wq * nb + j; out_off = oh * row + j;
    lanes = row - j < CHUNK ? row - j : CHUNK;
  } else {
    const int64_t total = P->mode == 3 ? P->out_len : (((L->Ho - 1) * L->Wq + L->Wo) * nb + 7) & ~(int64_t)7;
    in_off = out_off = t * CHUNK;
    lanes = total - t * CHUNK < CHUNK ? total - t * CHUNK : CHUNK;
  }
  const int nv = (int)((lanes + 7) / 8);
  if (P->mode == 3 && L->seg) {
    /* input channels in segments whose shifted copies fit in L1, each segment for every output
       channel before the next; taps2 and val2 hold the non-zeros in that order (segment, row),
       seg[k * O + o] the first of segment k of row o, so the weights still stream in order */
    const int64_t K = L->nseg;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t start = L->seg[k * L->O + o], n = L->seg[k * L->O + o + 1] - start;
        tile_any(nv, in + in_off, nb, L->taps2 + start, L->val2 + start, n, L->bias ? L->bias[o] : 0.f,
                 L->relu && k == K - 1, ob + o * P->out_len + out_off, k > 0);
      }
    return;
  }
  for (int64_t o = o0; o < o1; ++o) {
    const int64_t start = L->rowptr[o];
    tile_any(nv, in + in_off, nb, (P->mode == 3 ? L->taps2 : L->taps) + start, L->val + start,
             L->rowptr[o + 1] - start, L->bias ? L->bias[o] : 0.f, L->relu, ob + o * P->out_len + out_off, 0);
  }
}

/* (O, out_len) buffer of samples b0.. b0+nb -> y (batch, O, Ho', Wo'), pooling if asked */
static void unpack(const layer_t* L, const plan_t* P, const float* ob, int64_t nb, int64_t o0, int64_t o1,
                   float* pooled, float* yb) {
  const int64_t hwo = L->Ho * L->Wo;
  if (L->pool > 1) {
    const int64_t k = L->pool;
    const int64_t hq = L->pool_ceil ? (L->Ho + k - 1) / k : L->Ho / k, wq = L->pool_ceil ? (L->Wo + k - 1) / k : L->Wo / k;
    const int64_t oq = L->O * hq * wq;
    for (int64_t o = o0; o < o1; ++o) {
      maxpool(ob + o * P->out_len, L->Ho, L->Wo, P->pitch, nb, k, L->pool_ceil, pooled);
      transpose2d(pooled, hq * wq, nb, nb, yb + o * hq * wq, oq);
    }
  } else if (hwo == 1) {
    transpose2d(ob + o0 * P->out_len, o1 - o0, nb, P->out_len, yb + o0, L->O);
  } else if (P->pitch == L->Wo) {
    for (int64_t o = o0; o < o1; ++o) transpose2d(ob + o * P->out_len, hwo, nb, nb, yb + o * hwo, L->O * hwo);
  } else {
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t oh = 0; oh < L->Ho; ++oh)
        transpose2d(ob + o * P->out_len + oh * P->pitch * nb, L->Wo, nb, nb, yb + o * hwo + oh * L->Wo, L->O * hwo);
  }
}

static inline int64_t out_per_sample(const layer_t* L) {
  const int64_t k = L->pool;
  if (k <= 1) return L->O * L->Ho * L->Wo;
  const int64_t hq = L->pool_ceil ? (L->Ho + k - 1) / k : L->Ho / k, wq = L->pool_ceil ? (L->Wo + k - 1) / k : L->Wo / k;
  return L->O * hq * wq;
}

/* The output goes straight to y when the buffer layout is already y's: one sample, no pooling,
   and a buffer row of exactly Ho * Wo lanes (no junk pixels, no rounding: a tile writing past
   its channel would overwrite the next channel, computed earlier). */
static inline int direct_out(const layer_t* L, const plan_t* P, int64_t nb) {
  return nb == 1 && L->pool == 1 && P->out_len == L->Ho * L->Wo;
}

/* Floats of one block's packed input buffer: the packed input, and shift mode's copy of it. */
static inline size_t packed_len(const layer_t* L, int64_t nb) {
  return (size_t)(packed_pixels(L) * nb + SLACK + (L->taps2 ? shifted_len(L, nb) + SLACK : 0));
}

/* What the tiles read for nb samples starting at x: x itself (dot mode), or the packed input
   (shift mode: its shifted copy, after the packed input in xp). */
static const float* pack_input(const layer_t* L, const plan_t* P, const float* x, int64_t nb, float* xp, float* tmp) {
  if (P->mode == 2) return x;
  pack(L, x, nb, xp, tmp);
  if (P->mode != 3) return xp;
  float* xs = xp + packed_pixels(L) * nb + SLACK;
  shift_copy(L, xp, nb, xs);
  return xs;
}

/* Pack, compute and unpack samples [b0, b0 + nb) on the calling thread alone. */
static void run_block(const layer_t* L, const float* x, int64_t b0, int64_t nb, float* xp, float* ob,
                      float* tmp, float* pooled, float* y) {
  const plan_t P = plan_of(L, nb);
  const int64_t chw = L->C * L->H * L->W, oy = out_per_sample(L);
  const float* in = pack_input(L, &P, x + b0 * chw, nb, xp, tmp);
  float* out = direct_out(L, &P, nb) ? y + b0 * oy : ob;
  for (int64_t t = 0; t < P.tiles; ++t) run_tile(L, &P, in, nb, t, 0, L->O, out);
  if (out == ob) unpack(L, &P, ob, nb, 0, L->O, pooled, y + b0 * oy);
}

/* y = maxpool?(relu?(conv2d(x (batch, C, H, W), W_csr) + bias)) for nthreads threads (<= 0: one).
   Threads take whole blocks of samples when there are enough blocks, else they share the tiles
   (and output channels) of each block. Returns 0 on success, 1 when out of memory. */
int pl_sparse_forward(const int64_t* d, int64_t batch, const float* x, float* y, int64_t nthreads) {
  const layer_t L = layer_of(d);
  if (batch <= 0) return 0;
  const int64_t nb_max = batch < L.block ? batch : L.block;
  const int64_t nblocks = (batch + nb_max - 1) / nb_max;
  const int nt = nthreads > 1 ? (int)nthreads : 1;
  const plan_t Pm = plan_of(&L, nb_max);
  const size_t xp_len = packed_len(&L, nb_max);
  /* a smaller last block may take another mode: room for the widest (wide mode's) layout */
  const int64_t wide_lanes = (((L.Ho - 1) * L.Wq + L.Wo) * nb_max + 7) & ~(int64_t)7;
  const int64_t wide_len = wide_lanes > L.Ho * L.Wq * nb_max ? wide_lanes : L.Ho * L.Wq * nb_max;
  const size_t ob_len = (size_t)(L.O * (Pm.out_len > wide_len ? Pm.out_len : wide_len) + SLACK);
  const size_t tmp_len = (size_t)(L.W * nb_max + SLACK);
  const size_t pool_len = (size_t)(L.Ho * L.Wo * nb_max + SLACK);
  const size_t per_thread = xp_len + ob_len + tmp_len + pool_len;
  int status = 0;
  if (nt > 1 && nblocks >= nt) {
#pragma omp parallel num_threads(nt)
    {
      float* buf = (float*)malloc(sizeof(float) * per_thread);
      if (!buf) {
#pragma omp atomic write
        status = 1;
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t k = 0; k < nblocks; ++k) {
        if (!buf) continue;
        const int64_t b0 = k * nb_max, nb = batch - b0 < nb_max ? batch - b0 : nb_max;
        run_block(&L, x, b0, nb, buf, buf + xp_len, buf + xp_len + ob_len, buf + xp_len + ob_len + tmp_len, y);
      }
      free(buf);
    }
    return status;
  }
  float* buf = (float*)malloc(sizeof(float) * (xp_len + ob_len + tmp_len));
  if (!buf) return 1;
  float *xp = buf, *ob = buf + xp_len, *tmp = buf + xp_len + ob_len;
  const int64_t chw = L.C * L.H * L.W, oy = out_per_sample(&L);
  for (int64_t b0 = 0; b0 < batch && !status; b0 += nb_max) {
    const int64_t nb = batch - b0 < nb_max ? batch - b0 : nb_max;
    const plan_t P = plan_of(&L, nb);
    const float* in = pack_input(&L, &P, x + b0 * chw, nb, xp, tmp);
    float* out = direct_out(&L, &P, nb) ? y + b0 * oy : ob;
    /* split output channels too when there are few tiles, so that every thread has work */
    const int64_t osplit = nt > 1 && P.tiles < 4 * nt ? nt : 1;
    int64_t ochunk = (L.O + osplit - 1) / osplit;
    if (P.mode == 2 && L.wstep) ochunk = (ochunk + 7) & ~(int64_t)7;   /* whole groups of 8 rows */
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      float* pooled = out == ob ? (float*)malloc(sizeof(float) * pool_len) : NULL;
      if (out == ob && !pooled) {
#pragma omp atomic write
        status = 1;
      }
#pragma omp for schedule(static)
      for (int64_t i = 0; i < osplit * P.tiles; ++i) {
        const int64_t o0 = (i / P.tiles) * ochunk, o1 = o0 + ochunk < L.O ? o0 + ochunk : L.O;
        if (o0 < o1) run_tile(&L, &P, in, nb, i % P.tiles, o0, o1, out);
      }
      if (out == ob) {
        const int64_t per = (L.O + nt - 1) / nt;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < nt; ++k) {
          const int64_t o0 = k * per, o1 = o0 + per < L.O ? o0 + per : L.O;
          if (pooled && o0 < o1) unpack(&L, &P, ob, nb, o0, o1, pooled, y + b0 * oy);
        }
      }
      free(pooled);
    }
  }
  free(buf);
  return status;
}

/* A chain of layers in one call (batch-1 latency is otherwise Python and ctypes overhead):
   steps[i] is the address of layer i's descriptor; layer i reads layer i-1's output (a
   Flatten between them is free: the memory is the same). Intermediates alternate between two
   buffers of batch * max_elems floats. Returns 0 on success, 1 when out of memory. */
int pl_chain_forward(const int64_t* steps, int64_t nsteps, int64_t batch, const float* x, float* y,
                     int64_t nthreads, int64_t max_elems) {
  if (nsteps <= 0 || batch <= 0) return 0;
  /* both buffers start on a cache line, as PyTorch's tensors do: split vector loads across
     lines measured about 10 % slower at batch 64 */
  const int64_t stride = (batch * max_elems + SLACK + 15) & ~(int64_t)15;
  void* mem = NULL;
  if (nsteps > 1 && posix_memalign(&mem, 64, sizeof(float) * (size_t)(2 * stride))) return 1;
  float* buf = (float*)mem;
  const float* in = x;
  int status = 0;
  for (int64_t i = 0; i < nsteps && !status; ++i) {
    float* out = i == nsteps - 1 ? y : buf + (i % 2) * stride;
    status = pl_sparse_forward((const int64_t*)(intptr_t)steps[i], batch, in, out, nthreads);
    in = out;
  }
  free(buf);
  return status;
}

/* y = layer(x) + res (res shaped as y): the residual add of a ResNet block, in the call that
   computes the convolution instead of one more PyTorch operation. */
int pl_sparse_forward_add(const int64_t* d, int64_t batch, const float* x, float* y, int64_t nthreads,
                          const float* res) {
  const int status = pl_sparse_forward(d, batch, x, y, nthreads);
  if (status) return status;
  const layer_t L = layer_of(d);
  const int64_t n = batch * out_per_sample(&L);
  for (int64_t i = 0; i < n; ++i) y[i] += res[i];
  return 0;
}

/* A graph of layers in one call (a ResNet's residual trunk at batch 1): prog holds 4 int64 per
   step, (descriptor address, input slot, residual slot or -1, output slot); slot 0 is x, 1 is y,
   2 + b is work buffer b of batch * buf_elems[b] floats. Each step computes out = layer(in)
   (+ residual), exactly as pl_sparse_forward_add. Returns 0 on success, 1 when out of memory. */
int pl_graph_forward(const int64_t* prog, int64_t nsteps, int64_t batch, const float* x, float* y,
                     int64_t nthreads, int64_t nbufs, const int64_t* buf_elems) {
  if (nsteps <= 0 || batch <= 0) return 0;
  if (nbufs > 64) return 1;
  /* one allocation per buffer, not one arena: at batch 64 an arena passes glibc's largest mmap
     threshold (32 MB) and would be mapped and faulted in again at every call */
  float* slots[66] = {(float*)x, y};
  int status = 0;
  for (int64_t b = 0; b < nbufs && !status; ++b) {
    void* mem = NULL;
    if (posix_memalign(&mem, 64, sizeof(float) * (size_t)(batch * buf_elems[b] + SLACK))) status = 1;
    slots[2 + b] = (float*)mem;
  }
  for (int64_t i = 0; i < nsteps && !status; ++i) {
    const int64_t* s = prog + 4 * i;
    const int64_t* d = (const int64_t*)(intptr_t)s[0];
    float* out = slots[s[3]];
    status = pl_sparse_forward(d, batch, slots[s[1]], out, nthreads);
    if (!status && s[2] >= 0) {
      const layer_t L = layer_of(d);
      const float* res = slots[s[2]];
      const int64_t n = batch * out_per_sample(&L);
      for (int64_t j = 0; j < n; ++j) out[j] += res[j];
    }
  }
  for (int64_t b = 0; b < nbufs; ++b) free(slots[2 + b]);
  return status;
}
