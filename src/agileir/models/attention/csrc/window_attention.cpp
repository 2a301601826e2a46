// Fused window attention on the CPU: softmax(q k^T + bias + mask) v, one window and head at a time.
//
// Why: at window attention's shapes (N = 64 tokens, 8-16 channels per head) the N x N scores
// cost more to move than to compute. ATen runs score, mask, softmax and product as separate
// passes over (windows, N, N) tensors that fall out of cache; here each window's scores live in
// a few rows of L1 and never reach memory. Forward and backward; the backward recomputes the
// probabilities from the row log-sum-exp (flash-attention style), so nothing N x N is saved.
//
// Shapes (the Python wrapper checks them): q, k (B_, h, N, dk), v (B_, h, N, dv), with the last
// dimension contiguous (any other strides); bias (h, N, N) contiguous; mask (nW, N, N)
// contiguous or empty, window w of image b being row b * nW + w of B_. q arrives scaled.
// Probabilities below exp(-60) of a row's maximum are set to zero (as the chunked kernel of
// kernels.py floors them): no float32 subnormal ever enters a product.
//
// The float32 AVX2 build also fuses GSWA's whole group cascade per window (cascade_forward /
// cascade_backward, below the attention kernels), and on AVX-512 BF16 / AMX CPUs a bf16 inference
// version of it whose N x N products run on the bf16 units (cascade_forward_bf16).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "simd_math.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

constexpr float kFloor = -60.0f;  // exp(-60) ~ 8.7e-27: far below float32 resolution of a row sum

#if defined(__AVX2__) && defined(__FMA__)
// The sum and the maximum of a register's 8 lanes in three shuffle steps: a window row is only 8
// registers long, so a reduction through memory and 7 dependent scalar steps cost as much as its exps.
inline float hsum8(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
inline float hmax8(__m256 v) {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}

// dst (8 x 8, row stride ldd) = the transpose of src (8 x 8, row stride lds)
inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int h = 0; h < 8; h += 4) {  // rows h..h+3: columns c (low half) and c + 4 (high half) in r[h + c]
    r[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);
    r[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xEE);
    r[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);
    r[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    _mm256_storeu_ps(dst + c * ldd, _mm256_permute2f128_ps(r[c], r[c + 4], 0x20));
    _mm256_storeu_ps(dst + (c + 4) * ldd, _mm256_permute2f128_ps(r[c], r[c + 4], 0x31));
  }
}
#endif

// dst (d x ldd) = the transpose of src (n x d, row stride lds): 8 x 8 register blocks, the rest by element
void transpose_block(const float* src, int64_t lds, int64_t n, int64_t d, float* dst, int64_t ldd) {
  int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const int64_t d8 = d / 8 * 8;
  for (; t + 8 <= n; t += 8) {
    for (int64_t c = 0; c < d8; c += 8) transpose8x8(src + t * lds + c, lds, dst + c * ldd + t, ldd);
    for (int64_t c = d8; c < d; ++c)
      for (int64_t i = t; i < t + 8; ++i) dst[c * ldd + i] = src[i * lds + c];
  }
#endif
  for (; t < n; ++t)
    for (int64_t c = 0; c < d; ++c) dst[c * ldd + t] = src[t * lds + c];
}

// p[j] = exp(x[j] - shift) where x[j] - shift > kFloor, else 0 (p may be x); returns the sum of p.
// shift >= max_j x[j] (the row maximum, or the row's log-sum-exp in backward).
float exp_row(const float* x, float* p, int64_t n, float shift) {
  int64_t j = 0;
  float total = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 floor = _mm256_set1_ps(kFloor), sh = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) {
    __m256 xv = _mm256_sub_ps(_mm256_loadu_ps(x + j), sh);
    __m256 keep = _mm256_cmp_ps(xv, floor, _CMP_GT_OQ);  // false for -inf (masked pairs): exact zeros
    __m256 y = _mm256_and_ps(agileir::exp8(_mm256_max_ps(xv, floor)), keep);
    _mm256_storeu_ps(p + j, y);
    acc = _mm256_add_ps(acc, y);
  }
  total = hsum8(acc);
#endif
  for (; j < n; ++j) {
    const float xj = x[j] - shift;
    p[j] = xj > kFloor ? std::exp(xj) : 0.0f;
    total += p[j];
  }
  return total;
}

double exp_row(const double* x, double* p, int64_t n, double shift) {
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double xj = x[j] - shift;
    p[j] = xj > -600.0 ? std::exp(xj) : 0.0;
    total += p[j];
  }
  return total;
}

template <typename T>
struct View4 {  // (B_, h, N, d) with a contiguous last dimension
  const T* data;
  int64_t sb, sh, sn;
  View4(const at::Tensor& t)
      : data(t.data_ptr<T>()), sb(t.stride(0)), sh(t.stride(1)), sn(t.stride(2)) {}
  const T* row(int64_t b, int64_t h, int64_t i) const { return data + b * sb + h * sh + i * sn; }
};

// Scores of query row i of window (b, h): s[j] = bias[i, j] + mask[i, j] + q_i . k_j, from the
// transposed keys kt (dk x N). Returns the row maximum.
template <typename T>
T score_row(const T* qi, const T* kt, const T* bias_row, const T* mask_row, int64_t n, int64_t dk, T* s) {
  if (mask_row) {
    for (int64_t j = 0; j < n; ++j) s[j] = bias_row[j] + mask_row[j];
  } else {
    std::memcpy(s, bias_row, n * sizeof(T));
  }
  for (int64_t d = 0; d < dk; ++d) {
    const T qd = qi[d];
    const T* kd = kt + d * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] += qd * kd[j];
  }
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = std::max(m, s[j]);
  return m;
}

// rows (N x d, row stride `stride`) into dst (d x N)
template <typename T>
void transpose_into(const View4<T>& src, int64_t b, int64_t h, int64_t n, int64_t d, T* dst) {
  for (int64_t j = 0; j < n; ++j) {
    const T* r = src.row(b, h, j);
    for (int64_t c = 0; c < d; ++c) dst[c * n + j] = r[c];
  }
}

template <typename T>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                  const at::Tensor& mask, at::Tensor& out, at::Tensor& lse, bool want_lse) {
  const int64_t b_ = q.size(0), heads = q.size(1), n = q.size(2), dk = q.size(3), dv = v.size(3);
  const int64_t nw = mask.numel() ? mask.size(0) : 0;
  const View4<T> qv(q), kv(k), vv(v);
  T* o = out.data_ptr<T>();  // contiguous (B_, h, N, dv)
  T* l = want_lse ? lse.data_ptr<T>() : nullptr;  // (B_, h, N)
  const T* bp = bias.data_ptr<T>();
  const T* mp = nw ? mask.data_ptr<T>() : nullptr;
  at::parallel_for(0, b_ * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> kt(dk * n), vt(dv * n), s(n), p(n);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      transpose_into(kv, b, h, n, dk, kt.data());
      transpose_into(vv, b, h, n, dv, vt.data());
      const T* mwin = mp ? mp + (b % nw) * n * n : nullptr;
      for (int64_t i = 0; i < n; ++i) {
        const T m = score_row(qv.row(b, h, i), kt.data(), bp + (h * n + i) * n, mwin ? mwin + i * n : nullptr,
                              n, dk, s.data());
        const T total = exp_row(s.data(), p.data(), n, m);
        const T inv = T(1) / total;
        T* oi = o + (bh * n + i) * dv;
        for (int64_t c = 0; c < dv; ++c) {
          const T* vc = vt.data() + c * n;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < n; ++j) acc += p[j] * vc[j];
          oi[c] = acc * inv;
        }
        if (l) l[bh * n + i] = m + std::log(total);
      }
    }
  });
}

template <typename T>
void backward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                   const at::Tensor& mask, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& grad,
                   at::Tensor& dq, at::Tensor& dk_, at::Tensor& dv_, at::Tensor& dbias_threads) {
  const int64_t b_ = q.size(0), heads = q.size(1), n = q.size(2), dk = q.size(3), dv = v.size(3);
  const int64_t nw = mask.numel() ? mask.size(0) : 0;
  const View4<T> qv(q), kv(k), vv(v);
  const T* o = out.data_ptr<T>();
  const T* g = grad.data_ptr<T>();  // contiguous (B_, h, N, dv)
  const T* l = lse.data_ptr<T>();
  const T* bp = bias.data_ptr<T>();
  const T* mp = nw ? mask.data_ptr<T>() : nullptr;
  T* dqp = dq.data_ptr<T>();  // contiguous outputs
  T* dkp = dk_.data_ptr<T>();
  T* dvp = dv_.data_ptr<T>();
  T* dbp = dbias_threads.data_ptr<T>();  // (threads, h, N, N), zeroed
  at::parallel_for(0, b_ * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> kt(dk * n), vt(dv * n), s(n), p(n), dp(n), dkt(dk * n), dvt(dv * n);
    T* dbias = dbp + at::get_thread_num() * heads * n * n;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      transpose_into(kv, b, h, n, dk, kt.data());
      transpose_into(vv, b, h, n, dv, vt.data());
      std::fill(dkt.begin(), dkt.end(), T(0));
      std::fill(dvt.begin(), dvt.end(), T(0));
      const T* mwin = mp ? mp + (b % nw) * n * n : nullptr;
      for (int64_t i = 0; i < n; ++i) {
        const T* qi = qv.row(b, h, i);
        score_row(qi, kt.data(), bp + (h * n + i) * n, mwin ? mwin + i * n : nullptr, n, dk, s.data());
        exp_row(s.data(), p.data(), n, l[bh * n + i]);  // the forward's normalised probabilities
        const T* gi = g + (bh * n + i) * dv;
        const T* oi = o + (bh * n + i) * dv;
        T delta = 0;  // rowsum(dO * O) = rowsum(P * dP)
        for (int64_t c = 0; c < dv; ++c) delta += gi[c] * oi[c];
        std::fill(dp.begin(), dp.end(), -delta);
        for (int64_t c = 0; c < dv; ++c) {
          const T gc = gi[c];
          const T* vc = vt.data() + c * n;
          T* dvc = dvt.data() + c * n;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            dp[j] += gc * vc[j];  // dP - delta
            dvc[j] += gc * p[j];  // dV^T += dO_i^T P_i
          }
        }
        T* dbi = dbias + (h * n + i) * n;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          dp[j] *= p[j];  // dS
          dbi[j] += dp[j];
        }
        T* dqi = dqp + (bh * n + i) * dk;
        for (int64_t c = 0; c < dk; ++c) {
          const T* kc = kt.data() + c * n;
          T* dkc = dkt.data() + c * n;
          const T qc = qi[c];
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < n; ++j) {
            acc += dp[j] * kc[j];
            dkc[j] += qc * dp[j];
          }
          dqi[c] = acc;
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        T* dkj = dkp + (bh * n + j) * dk;
        for (int64_t c = 0; c < dk; ++c) dkj[c] = dkt[c * n + j];
        T* dvj = dvp + (bh * n + j) * dv;
        for (int64_t c = 0; c < dv; ++c) dvj[c] = dvt[c * n + j];
      }
    }
  });
}

#if defined(__AVX2__) && defined(__FMA__)
// The float32 path: per window, whole N x N blocks in small buffers and every product through one
// register-blocked kernel (4 rows x 16 columns of accumulators), the shape of a GEMM micro-kernel.

int64_t round8(int64_t x) { return (x + 7) / 8 * 8; }
int64_t round4(int64_t x) { return (x + 3) / 4 * 4; }

// What a product's C starts from, 8 columns (j .. j+7) of row i at a time.
struct Zeros {
  __m256 operator()(int64_t, int64_t) const { return _mm256_setzero_ps(); }
};
struct Rows {  // a matrix (ld 0: one row for every i)
  const float* p;
  int64_t ld;
  __m256 operator()(int64_t i, int64_t j) const { return _mm256_loadu_ps(p + i * ld + j); }
};
struct RowsSum {  // the sum of two matrices (the relative-position bias and a window's shift mask)
  const float *p, *q;
  int64_t ld;
  __m256 operator()(int64_t i, int64_t j) const {
    return _mm256_add_ps(_mm256_loadu_ps(p + i * ld + j), _mm256_loadu_ps(q + i * ld + j));
  }
};

// C (M x NC, ldc) = init + A (M x K) B (K x NC, ldb); NC a multiple of 8. A's element (i, k) is
// A[i * lda + k * sa]: sa 1 for a row-major A, lda 1 for a transposed one (A is only ever read one
// element at a time, so q^T, dS^T, P^T or z^T need no copy). init(i, j) gives C's start for 8
// columns, so a bias row, a score prefill or C itself costs no pass of its own.
template <typename Init>
void gemm_from(int64_t M, int64_t NC, int64_t K, const float* A, int64_t lda, int64_t sa, const float* B, int64_t ldb,
               float* C, int64_t ldc, const Init& init) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) {
    const float* a0 = A + i * lda;
    const float* a1 = a0 + lda;
    const float* a2 = a1 + lda;
    const float* a3 = a2 + lda;
    float* c = C + i * ldc;
    int64_t j = 0;
    for (; j + 16 <= NC; j += 16) {
      __m256 c00 = init(i, j), c01 = init(i, j + 8), c10 = init(i + 1, j), c11 = init(i + 1, j + 8),
             c20 = init(i + 2, j), c21 = init(i + 2, j + 8), c30 = init(i + 3, j), c31 = init(i + 3, j + 8);
      const float* b = B + j;
      for (int64_t kk = 0; kk < K; ++kk, b += ldb) {
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        const int64_t o = kk * sa;
        __m256 a = _mm256_broadcast_ss(a0 + o);
        c00 = _mm256_fmadd_ps(a, b0, c00), c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(a1 + o);
        c10 = _mm256_fmadd_ps(a, b0, c10), c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(a2 + o);
        c20 = _mm256_fmadd_ps(a, b0, c20), c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(a3 + o);
        c30 = _mm256_fmadd_ps(a, b0, c30), c31 = _mm256_fmadd_ps(a, b1, c31);
      }
      _mm256_storeu_ps(c + j, c00), _mm256_storeu_ps(c + j + 8, c01);
      _mm256_storeu_ps(c + ldc + j, c10), _mm256_storeu_ps(c + ldc + j + 8, c11);
      _mm256_storeu_ps(c + 2 * ldc + j, c20), _mm256_storeu_ps(c + 2 * ldc + j + 8, c21);
      _mm256_storeu_ps(c + 3 * ldc + j, c30), _mm256_storeu_ps(c + 3 * ldc + j + 8, c31);
    }
  }
  const int64_t nc16 = NC / 16 * 16;
  if (nc16 < NC) {  // the last 8 columns of the rows above: 8 rows at a time, 8 independent sums
    int64_t r = 0;
    for (; r + 8 <= i; r += 8) {
      __m256 acc[8];
      for (int t = 0; t < 8; ++t) acc[t] = init(r + t, nc16);
      const float* b = B + nc16;
      for (int64_t kk = 0; kk < K; ++kk, b += ldb) {
        const __m256 b0 = _mm256_loadu_ps(b);
        for (int t = 0; t < 8; ++t) acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + (r + t) * lda + kk * sa), b0, acc[t]);
      }
      for (int t = 0; t < 8; ++t) _mm256_storeu_ps(C + (r + t) * ldc + nc16, acc[t]);
    }
    for (; r < i; ++r) {
      __m256 c0 = init(r, nc16);
      const float* b = B + nc16;
      for (int64_t kk = 0; kk < K; ++kk, b += ldb) c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(A + r * lda + kk * sa), _mm256_loadu_ps(b), c0);
      _mm256_storeu_ps(C + r * ldc + nc16, c0);
    }
  }
  for (; i < M; ++i) {  // rows past the last multiple of 4 (callers pad their rows to avoid these)
    const float* a0 = A + i * lda;
    float* c = C + i * ldc;
    for (int64_t j = 0; j < NC; j += 8) {
      __m256 c0 = init(i, j);
      const float* b = B + j;
      for (int64_t kk = 0; kk < K; ++kk, b += ldb) c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a0 + kk * sa), _mm256_loadu_ps(b), c0);
      _mm256_storeu_ps(c + j, c0);
    }
  }
}

// C (M x NC, ldc) = [C +] A (M x K, lda) B (K x NC, ldb); NC a multiple of 8.
void gemm(int64_t M, int64_t NC, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
          int64_t ldc, bool accumulate) {
  if (accumulate)
    gemm_from(M, NC, K, A, lda, 1, B, ldb, C, ldc, Rows{C, ldc});
  else
    gemm_from(M, NC, K, A, lda, 1, B, ldb, C, ldc, Zeros{});
}

// rows (n x d of a View4 window) into dst (d x ld), columns past n untouched
void transpose_rows(const View4<float>& src, int64_t b, int64_t h, int64_t n, int64_t d, float* dst, int64_t ld) {
  for (int64_t j = 0; j < n; ++j) {
    const float* r = src.row(b, h, j);
    for (int64_t c = 0; c < d; ++c) dst[c * ld + j] = r[c];
  }
}

// rows (n x d, row stride sn) into dst (n x ld), zero-padded to ld columns
void copy_rows(const float* src, int64_t sn, int64_t n, int64_t d, float* dst, int64_t ld) {
  for (int64_t j = 0; j < n; ++j) {
    std::memcpy(dst + j * ld, src + j * sn, d * sizeof(float));
    std::fill(dst + j * ld + d, dst + (j + 1) * ld, 0.0f);
  }
}

// S (n x np) = bias + mask (mask may be null), columns past n zero: the scores' start
void bias_and_mask_rows(const float* bias, const float* mask, int64_t n, int64_t np, float* s) {
  for (int64_t i = 0; i < n; ++i) {
    float* si = s + i * np;
    const float* bi = bias + i * n;
    if (mask) {
      const float* mi = mask + i * n;
      for (int64_t j = 0; j < n; ++j) si[j] = bi[j] + mi[j];
    } else {
      std::memcpy(si, bi, n * sizeof(float));
    }
    std::fill(si + n, si + np, 0.0f);
  }
}

// S (n x np) = bias + mask + Q K^T for window (b, h); kt (dk x np) is filled here.
void window_scores(const View4<float>& qv, const View4<float>& kv, int64_t b, int64_t h, int64_t n, int64_t np,
                   int64_t dk, const float* bias, const float* mask, float* kt, float* s) {
  std::fill(kt, kt + dk * np, 0.0f);
  transpose_rows(kv, b, h, n, dk, kt, np);
  bias_and_mask_rows(bias, mask, n, np, s);
  gemm(n, np, dk, qv.row(b, h, 0), qv.sn, kt, np, s, np, true);
}

float row_max(const float* x, int64_t n) {
  __m256 mv = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + j));
  float m = hmax8(mv);
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

void forward_f32(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                 const at::Tensor& mask, at::Tensor& out, at::Tensor& lse, bool want_lse) {
  const int64_t b_ = q.size(0), heads = q.size(1), n = q.size(2), dk = q.size(3), dv = v.size(3);
  const int64_t np = round8(n), dvp = round8(dv);
  const int64_t nw = mask.numel() ? mask.size(0) : 0;
  const View4<float> qv(q), kv(k), vv(v);
  float* o = out.data_ptr<float>();
  float* l = want_lse ? lse.data_ptr<float>() : nullptr;
  const float* bp = bias.data_ptr<float>();
  const float* mp = nw ? mask.data_ptr<float>() : nullptr;
  at::parallel_for(0, b_ * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(dk * np), s(n * np), vpad(n * dvp), ob(n * dvp), inv(n);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      window_scores(qv, kv, b, h, n, np, dk, bp + h * n * n, mp ? mp + (b % nw) * n * n : nullptr, kt.data(),
                    s.data());
      for (int64_t i = 0; i < n; ++i) {
        float* si = s.data() + i * np;
        const float m = row_max(si, n);
        const float total = exp_row(si, si, n, m);
        inv[i] = 1.0f / total;
        if (l) l[bh * n + i] = m + std::log(total);
      }
      copy_rows(vv.row(b, h, 0), vv.sn, n, dv, vpad.data(), dvp);
      gemm(n, dvp, n, s.data(), np, vpad.data(), dvp, ob.data(), dvp, false);
      float* ow = o + bh * n * dv;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < dv; ++c) ow[i * dv + c] = ob[i * dvp + c] * inv[i];
    }
  });
}

void backward_f32(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                  const at::Tensor& mask, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& grad,
                  at::Tensor& dq, at::Tensor& dk_, at::Tensor& dv_, at::Tensor& dbias_threads) {
  const int64_t b_ = q.size(0), heads = q.size(1), n = q.size(2), dk = q.size(3), dv = v.size(3);
  const int64_t np = round8(n), dkp = round8(dk), dvp = round8(dv);
  const int64_t nw = mask.numel() ? mask.size(0) : 0;
  const View4<float> qv(q), kv(k), vv(v);
  const float* o = out.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  const float* l = lse.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* mp = nw ? mask.data_ptr<float>() : nullptr;
  float* dqp = dq.data_ptr<float>();
  float* dkp_ = dk_.data_ptr<float>();
  float* dvp_ = dv_.data_ptr<float>();
  float* dbp = dbias_threads.data_ptr<float>();
  at::parallel_for(0, b_ * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(dk * np), s(n * np), ds(n * np), gpad(n * dvp), vt(dvp * np), kpad(n * dkp),
        qt(round4(dk) * n), gt(round4(dv) * n), buf(round4(std::max(dk, dv)) * np), dqb(n * dkp);
    float* dbias = dbp + at::get_thread_num() * heads * n * n;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      window_scores(qv, kv, b, h, n, np, dk, bp + h * n * n, mp ? mp + (b % nw) * n * n : nullptr, kt.data(),
                    s.data());
      const float* gw = g + bh * n * dv;
      const float* ow = o + bh * n * dv;
      for (int64_t i = 0; i < n; ++i) {  // P, normalised, from the saved log-sum-exp
        float* si = s.data() + i * np;
        exp_row(si, si, n, l[bh * n + i]);
      }
      copy_rows(gw, dv, n, dv, gpad.data(), dvp);
      std::fill(vt.begin(), vt.end(), 0.0f);
      transpose_rows(vv, b, h, n, dv, vt.data(), np);
      gemm(n, np, dvp, gpad.data(), dvp, vt.data(), np, ds.data(), np, false);  // dP = dO V^T
      for (int64_t i = 0; i < n; ++i) {  // dS = P (dP - rowsum(dO * O)); dbias += dS
        float delta = 0.0f;
        for (int64_t c = 0; c < dv; ++c) delta += gw[i * dv + c] * ow[i * dv + c];
        float* dsi = ds.data() + i * np;
        const float* pi = s.data() + i * np;
        float* dbi = dbias + (h * n + i) * n;
        for (int64_t j = 0; j < n; ++j) {
          dsi[j] = pi[j] * (dsi[j] - delta);
          dbi[j] += dsi[j];
        }
        std::fill(dsi + n, dsi + np, 0.0f);
      }
      copy_rows(kv.row(b, h, 0), kv.sn, n, dk, kpad.data(), dkp);
      gemm(n, dkp, n, ds.data(), np, kpad.data(), dkp, dqb.data(), dkp, false);  // dQ = dS K
      float* dqw = dqp + bh * n * dk;
      for (int64_t i = 0; i < n; ++i) std::memcpy(dqw + i * dk, dqb.data() + i * dkp, dk * sizeof(float));
      transpose_rows(qv, b, h, n, dk, qt.data(), n);  // rows past dk stay zero
      gemm(round4(dk), np, n, qt.data(), n, ds.data(), np, buf.data(), np, false);  // dK^T = Q^T dS
      float* dkw = dkp_ + bh * n * dk;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t c = 0; c < dk; ++c) dkw[j * dk + c] = buf[c * np + j];
      for (int64_t j = 0; j < n; ++j)
        for (int64_t c = 0; c < dv; ++c) gt[c * n + j] = gw[j * dv + c];
      gemm(round4(dv), np, n, gt.data(), n, s.data(), np, buf.data(), np, false);  // dV^T = dO^T P
      float* dvw = dvp_ + bh * n * dv;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t c = 0; c < dv; ++c) dvw[j * dv + c] = buf[c * np + j];
    }
  });
}

// ---- GSWA's whole group cascade per window (float32, AVX2) -------------------------------------
// Group j of a window: z = x_j + y_{j-1}; [q0 k v] = z W_j^T + b_j; q = depthwise conv of q0 over
// the m x m grid (scale folded into its weights by the caller) or q0 * scale; y_j = softmax(q k^T +
// bias_j + mask) v. Out: the y_j side by side (B_, N, G * dv), through a ReLU if `relu` (GSWA's
// activation before its output projection: fused here, no pass over the output and none over its
// gradient; the next group still reads y_j itself). Every intermediate of a window lives in
// per-thread buffers; backward recomputes the window's cascade and runs it in reverse.

struct Cascade {
  // bias and mask may point into bias_pad / mask_pad: moved (buffers kept), never copied
  Cascade() = default;
  Cascade(const Cascade&) = delete;
  Cascade(Cascade&&) = default;
  int64_t n, groups, dk, dv, e, ep, dkp, dvp, dv4, np, m, ks;
  float scale;
  std::vector<float> wt;   // (G, dv, ep): W_j^T, columns past e zero
  std::vector<float> wp;   // (G, e, dvp): W_j, columns past dv zero
  std::vector<float> bq;   // (G, ep): b_j, zero past e
  const float *dw, *dwb;   // (G, ks*ks, dk), (G, dk) or null
  const float *bias, *mask;  // (G, n, np) and (nW, n, np) or null: columns past n zero
  std::vector<float> bias_pad, mask_pad;  // their storage where n is not a multiple of 8
  std::vector<char> mask_zero;  // per mask window: all zero (every window but the last row and column's)
  int64_t nw;
  bool relu;
  // per-group slot sizes of a window's workspace
  int64_t slot() const { return n * dvp + n * ep + n * dkp + n * np + n * dvp; }
};

struct Slot {  // one group's intermediates in a window
  float *z, *qkv, *q, *p, *y;
  Slot(float* base, const Cascade& c) {
    z = base;
    qkv = z + c.n * c.dvp;
    q = qkv + c.n * c.ep;
    p = q + c.n * c.dkp;
    y = p + c.n * c.np;
  }
};

// The 3 x 3 depthwise convolution with 8 channels per register: the window's grid copied with a
// zero border, so that every position takes all nine taps at fixed offsets, each tap's weight (or,
// in backward, its gradient) in a register for the whole window. GSWA's own shape (dk = 8, 8 x 8
// windows); the loops below take every other.
constexpr int64_t kPadMax = 18;  // windows up to 16 x 16

// dst ((m + 2) x (m + 2) x 8) = channels c .. c + 7 of src (m*m rows, row stride ld), zero border
void pad_grid8(const float* src, int64_t ld, int64_t m, int64_t c, float* dst) {
  const int64_t mp = m + 2;
  std::fill(dst, dst + mp * mp * 8, 0.0f);
  for (int64_t y = 0; y < m; ++y)
    for (int64_t x = 0; x < m; ++x)
      _mm256_storeu_ps(dst + ((y + 1) * mp + x + 1) * 8, _mm256_loadu_ps(src + (y * m + x) * ld + c));
}

bool dwconv3_applies(int64_t m, int64_t ks, int64_t dk) { return ks == 3 && dk % 8 == 0 && m + 2 <= kPadMax; }

void dwconv3_forward(const float* q0, int64_t ldp, const float* w, const float* wb, int64_t m, int64_t dk, float* q,
                     int64_t ldq) {
  alignas(32) float pad[kPadMax * kPadMax * 8];
  const int64_t mp = m + 2;
  for (int64_t c = 0; c < dk; c += 8) {
    pad_grid8(q0, ldp, m, c, pad);
    __m256 wt[9];
    for (int t = 0; t < 9; ++t) wt[t] = _mm256_loadu_ps(w + t * dk + c);
    const __m256 bias = _mm256_loadu_ps(wb + c);
    for (int64_t y = 0; y < m; ++y)
      for (int64_t x = 0; x < m; ++x) {
        const float* p = pad + (y * mp + x) * 8;  // the 3 x 3 neighbourhood's top left
        __m256 acc = bias;
        for (int a = 0; a < 3; ++a)
          for (int b = 0; b < 3; ++b) acc = _mm256_fmadd_ps(wt[a * 3 + b], _mm256_loadu_ps(p + (a * mp + b) * 8), acc);
        _mm256_storeu_ps(q + (y * m + x) * ldq + c, acc);
      }
  }
}

// dq0 += the input gradient, dw += the weight gradient, dwb += the bias gradient (dq row stride ldq)
void dwconv3_backward(const float* q0, int64_t ldp, const float* w, const float* dq, int64_t ldq, int64_t m,
                      int64_t dk, float* dq0, float* dw, float* dwb) {
  alignas(32) float pad[kPadMax * kPadMax * 8];
  const int64_t mp = m + 2;
  for (int64_t c = 0; c < dk; c += 8) {
    pad_grid8(q0, ldp, m, c, pad);  // dw(a, b) = sum over positions of dq * q0 at the tap's neighbour
    __m256 gw[9], gb = _mm256_setzero_ps();
    for (int t = 0; t < 9; ++t) gw[t] = _mm256_setzero_ps();
    for (int64_t y = 0; y < m; ++y)
      for (int64_t x = 0; x < m; ++x) {
        const __m256 g = _mm256_loadu_ps(dq + (y * m + x) * ldq + c);
        const float* p = pad + (y * mp + x) * 8;
        gb = _mm256_add_ps(gb, g);
        for (int a = 0; a < 3; ++a)
          for (int b = 0; b < 3; ++b) gw[a * 3 + b] = _mm256_fmadd_ps(g, _mm256_loadu_ps(p + (a * mp + b) * 8), gw[a * 3 + b]);
      }
    for (int t = 0; t < 9; ++t) _mm256_storeu_ps(dw + t * dk + c, _mm256_add_ps(_mm256_loadu_ps(dw + t * dk + c), gw[t]));
    _mm256_storeu_ps(dwb + c, _mm256_add_ps(_mm256_loadu_ps(dwb + c), gb));
    // dq0(y, x) = sum over taps of w(a, b) dq(y + 1 - a, x + 1 - b): a gather from dq's padded grid
    pad_grid8(dq, ldq, m, c, pad);
    __m256 wt[9];
    for (int t = 0; t < 9; ++t) wt[t] = _mm256_loadu_ps(w + t * dk + c);
    for (int64_t y = 0; y < m; ++y)
      for (int64_t x = 0; x < m; ++x) {
        const float* p = pad + (y * mp + x) * 8;  // padded (y + 2 - a, x + 2 - b) is p + ((2 - a) mp + 2 - b)
        __m256 acc = _mm256_setzero_ps();
        for (int a = 0; a < 3; ++a)
          for (int b = 0; b < 3; ++b)
            acc = _mm256_fmadd_ps(wt[a * 3 + b], _mm256_loadu_ps(p + ((2 - a) * mp + 2 - b) * 8), acc);
        float* d = dq0 + (y * m + x) * ldp + c;
        _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), acc));
      }
  }
}

// q (n x dk, row stride ldq) = wb + depthwise ks x ks conv of q0 (row stride ldp) over the m x m grid
void dwconv_forward(const float* q0, int64_t ldp, const float* w, const float* wb, int64_t m, int64_t ks,
                    int64_t dk, float* q, int64_t ldq) {
  const int64_t r = ks / 2;
  if (dwconv3_applies(m, ks, dk)) {
    dwconv3_forward(q0, ldp, w, wb, m, dk, q, ldq);
    return;
  }
  if (dk % 8 == 0) {  // 8 channels per register
    for (int64_t y = 0; y < m; ++y)
      for (int64_t x = 0; x < m; ++x)
        for (int64_t c = 0; c < dk; c += 8) {
          __m256 acc = _mm256_loadu_ps(wb + c);
          for (int64_t a = std::max<int64_t>(0, r - y); a < std::min(ks, m - y + r); ++a)
            for (int64_t b = std::max<int64_t>(0, r - x); b < std::min(ks, m - x + r); ++b)
              acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + (a * ks + b) * dk + c),
                                    _mm256_loadu_ps(q0 + ((y + a - r) * m + x + b - r) * ldp + c), acc);
          _mm256_storeu_ps(q + (y * m + x) * ldq + c, acc);
        }
    return;
  }
  for (int64_t y = 0; y < m; ++y)
    for (int64_t x = 0; x < m; ++x) {
      float* out = q + (y * m + x) * ldq;
      for (int64_t c = 0; c < dk; ++c) out[c] = wb[c];
      for (int64_t a = std::max<int64_t>(0, r - y); a < std::min(ks, m - y + r); ++a)
        for (int64_t b = std::max<int64_t>(0, r - x); b < std::min(ks, m - x + r); ++b) {
          const float* in = q0 + ((y + a - r) * m + x + b - r) * ldp;
          const float* wt = w + (a * ks + b) * dk;
          for (int64_t c = 0; c < dk; ++c) out[c] += wt[c] * in[c];
        }
    }
}

// adds to dq0 (row stride ldp), dw and dwb the gradients of dwconv_forward given dq (row stride ldq)
void dwconv_backward(const float* q0, int64_t ldp, const float* w, const float* dq, int64_t ldq, int64_t m,
                     int64_t ks, int64_t dk, float* dq0, float* dw, float* dwb) {
  if (dwconv3_applies(m, ks, dk)) {
    dwconv3_backward(q0, ldp, w, dq, ldq, m, dk, dq0, dw, dwb);
    return;
  }
  const int64_t r = ks / 2;
  for (int64_t y = 0; y < m; ++y)
    for (int64_t x = 0; x < m; ++x) {
      const float* g = dq + (y * m + x) * ldq;
      for (int64_t c = 0; c < dk; ++c) dwb[c] += g[c];
      for (int64_t a = std::max<int64_t>(0, r - y); a < std::min(ks, m - y + r); ++a)
        for (int64_t b = std::max<int64_t>(0, r - x); b < std::min(ks, m - x + r); ++b) {
          const int64_t t = (y + a - r) * m + x + b - r;
          const float* in = q0 + t * ldp;
          float* din = dq0 + t * ldp;
          const float* wt = w + (a * ks + b) * dk;
          float* dwt = dw + (a * ks + b) * dk;
          int64_t c = 0;
          for (; c + 8 <= dk; c += 8) {
            const __m256 gc = _mm256_loadu_ps(g + c);
            _mm256_storeu_ps(din + c, _mm256_fmadd_ps(_mm256_loadu_ps(wt + c), gc, _mm256_loadu_ps(din + c)));
            _mm256_storeu_ps(dwt + c, _mm256_fmadd_ps(gc, _mm256_loadu_ps(in + c), _mm256_loadu_ps(dwt + c)));
          }
          for (; c < dk; ++c) {
            din[c] += wt[c] * g[c];
            dwt[c] += g[c] * in[c];
          }
        }
    }
}

// Window `w`'s cascade from its tokens xw (n x G*dv). keep: every group in its own slot with P
// normalised (for backward); else two slots in turn (group j reads y of j - 1) and y written to
// out (n x G*dv). kt: dk x np, zero past column n (its columns below n are rewritten here).
void cascade_window(const Cascade& c, int64_t w, const float* xw, float* ws, float* kt, bool keep, float* out) {
  const int64_t n = c.n, np = c.np, cdim = c.groups * c.dv;
  const float* mask = c.nw && !c.mask_zero[w % c.nw] ? c.mask + (w % c.nw) * n * np : nullptr;
  const float* yprev = nullptr;
  for (int64_t j = 0; j < c.groups; ++j) {
    Slot s(ws + (keep ? j : j % 2) * c.slot(), c);
    // z = x_j + y_{j-1} (columns past dv are never read: short loops, no library calls)
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = xw + i * cdim + j * c.dv;
      float* zi = s.z + i * c.dvp;
      if (yprev) {
        for (int64_t d = 0; d < c.dv; ++d) zi[d] = xi[d] + yprev[i * c.dvp + d];
      } else {
        for (int64_t d = 0; d < c.dv; ++d) zi[d] = xi[d];
      }
    }
    gemm_from(n, c.ep, c.dv, s.z, c.dvp, 1, c.wt.data() + j * c.dv * c.ep, c.ep, s.qkv, c.ep,
              Rows{c.bq.data() + j * c.ep, 0});
    if (c.ks) {
      dwconv_forward(s.qkv, c.ep, c.dw + j * c.ks * c.ks * c.dk, c.dwb + j * c.dk, c.m, c.ks, c.dk, s.q, c.dkp);
    } else {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t d = 0; d < c.dk; ++d) s.q[i * c.dkp + d] = s.qkv[i * c.ep + d] * c.scale;
    }
    transpose_block(s.qkv + c.dk, c.ep, n, c.dk, kt, np);  // S = bias + mask + q k^T
    const float* bias = c.bias + j * n * np;
    if (mask)
      gemm_from(n, np, c.dk, s.q, c.dkp, 1, kt, np, s.p, np, RowsSum{bias, mask, np});
    else
      gemm_from(n, np, c.dk, s.q, c.dkp, 1, kt, np, s.p, np, Rows{bias, np});
    float inv[256];
    for (int64_t i = 0; i < n; ++i) {
      float* si = s.p + i * np;
      const float mx = row_max(si, n);
      inv[i] = 1.0f / exp_row(si, si, n, mx);
      if (keep)
        for (int64_t t = 0; t < n; ++t) si[t] *= inv[i];
    }
    // y = P v: v is qkv's columns 2dk.., padded with the zero columns past e (so y's are zero too)
    gemm(n, c.dvp, n, s.p, np, s.qkv + 2 * c.dk, c.ep, s.y, c.dvp, false);
    if (!keep) {
      for (int64_t i = 0; i < n; ++i) {
        float* yi = s.y + i * c.dvp;
        float* oi = out + i * cdim + j * c.dv;
        if (c.relu) {
          for (int64_t d = 0; d < c.dv; ++d) oi[d] = std::max(yi[d] *= inv[i], 0.0f);  // NaN stays NaN
        } else {
          for (int64_t d = 0; d < c.dv; ++d) oi[d] = yi[d] *= inv[i];
        }
      }
    }
    yprev = s.y;
  }
}

Cascade make_cascade(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bq, const at::Tensor& dw,
                     const at::Tensor& dwb, const at::Tensor& bias, const at::Tensor& mask, int64_t m, double scale,
                     bool relu) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 3 && x.is_contiguous(),
              "x must be a contiguous float32 (B_, N, C) CPU tensor");
  Cascade c;
  c.groups = weight.size(0);
  c.e = weight.size(1);
  c.dv = weight.size(2);
  c.dk = (c.e - c.dv) / 2;
  c.n = x.size(1);
  TORCH_CHECK(weight.dim() == 3 && weight.is_contiguous() && weight.scalar_type() == at::kFloat &&
                  c.dk > 0 && 2 * c.dk + c.dv == c.e && x.size(2) == c.groups * c.dv,
              "weight must be a contiguous float32 (G, 2 dk + dv, dv) with G * dv = C");
  TORCH_CHECK(bq.is_contiguous() && bq.sizes() == at::IntArrayRef({c.groups, c.e}) && bq.scalar_type() == at::kFloat,
              "qkv bias must be a contiguous float32 (G, 2 dk + dv)");
  TORCH_CHECK(c.n <= 256, "windows of at most 256 tokens");
  c.ks = dw.numel() ? static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(dw.size(1))))) : 0;
  c.m = m;
  c.scale = static_cast<float>(scale);
  c.relu = relu;
  if (c.ks) {
    TORCH_CHECK(m * m == c.n && dw.is_contiguous() && dw.dim() == 3 && dw.size(0) == c.groups &&
                    dw.size(1) == c.ks * c.ks && dw.size(2) == c.dk && c.ks % 2 == 1 && dwb.is_contiguous() &&
                    dwb.sizes() == at::IntArrayRef({c.groups, c.dk}),
                "depthwise weights must be (G, ks*ks, dk) with odd ks, biases (G, dk), windows m x m");
  }
  TORCH_CHECK(bias.is_contiguous() && bias.sizes() == at::IntArrayRef({c.groups, c.n, c.n}),
              "bias must be a contiguous (G, N, N)");
  c.nw = mask.numel() ? mask.size(0) : 0;
  if (c.nw)
    TORCH_CHECK(mask.is_contiguous() && mask.dim() == 3 && mask.size(1) == c.n && mask.size(2) == c.n &&
                    x.size(0) % c.nw == 0, "mask must be a contiguous (nW, N, N) with nW dividing B_");
  c.dkp = round8(c.dk);
  c.dvp = round8(c.dv);
  c.dv4 = round4(c.dv);
  c.np = round8(c.n);
  c.ep = round8(std::max(c.e, 2 * c.dk + c.dvp));
  c.ep = std::max(c.ep, round8(c.dk + c.dkp));
  const float* wptr = weight.data_ptr<float>();
  const float* bptr = bq.data_ptr<float>();
  c.wt.assign(c.groups * c.dv * c.ep, 0.0f);
  c.wp.assign(c.groups * c.e * c.dvp, 0.0f);
  c.bq.assign(c.groups * c.ep, 0.0f);
  for (int64_t j = 0; j < c.groups; ++j)
    for (int64_t r = 0; r < c.e; ++r) {
      c.bq[j * c.ep + r] = bptr[j * c.e + r];
      for (int64_t d = 0; d < c.dv; ++d) {
        const float wv = wptr[(j * c.e + r) * c.dv + d];
        c.wt[(j * c.dv + d) * c.ep + r] = wv;
        c.wp[(j * c.e + r) * c.dvp + d] = wv;
      }
    }
  c.dw = c.ks ? dw.data_ptr<float>() : nullptr;
  c.dwb = c.ks ? dwb.data_ptr<float>() : nullptr;
  // (count, n, n) as rows of np: the tensor itself where n is a multiple of 8, else a padded copy
  const auto rows_of = [&](const float* src, int64_t count, std::vector<float>& pad) -> const float* {
    if (c.n == c.np) return src;
    pad.assign(count * c.n * c.np, 0.0f);
    for (int64_t r = 0; r < count * c.n; ++r) std::memcpy(pad.data() + r * c.np, src + r * c.n, c.n * sizeof(float));
    return pad.data();
  };
  c.bias = rows_of(bias.data_ptr<float>(), c.groups, c.bias_pad);
  c.mask = nullptr;
  if (c.nw) {
    const float* mp = mask.data_ptr<float>();
    c.mask = rows_of(mp, c.nw, c.mask_pad);
    c.mask_zero.resize(c.nw);
    for (int64_t v = 0; v < c.nw; ++v) {  // one OR over the bits (sign dropped: -0 is zero), no early exit
      const uint32_t* bits = reinterpret_cast<const uint32_t*>(mp + v * c.n * c.n);
      uint32_t any = 0;
      for (int64_t k = 0; k < c.n * c.n; ++k) any |= bits[k] & 0x7fffffffu;
      c.mask_zero[v] = any == 0;
    }
  }
  return c;
}

at::Tensor cascade_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bq, const at::Tensor& dw,
                           const at::Tensor& dwb, const at::Tensor& bias, const at::Tensor& mask, int64_t m,
                           double scale, bool relu) {
  const Cascade c = make_cascade(x, weight, bq, dw, dwb, bias, mask, m, scale, relu);
  at::Tensor out = at::empty(x.sizes(), x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t cdim = x.size(2);
  at::parallel_for(0, x.size(0), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> ws(2 * c.slot()), kt(c.dk * c.np);
    for (int64_t w = begin; w < end; ++w)
      cascade_window(c, w, xp + w * c.n * cdim, ws.data(), kt.data(), false, op + w * c.n * cdim);
  });
  return out;
}

// gradients of x, weight, qkv bias, depthwise weight and bias, and relative-position bias. grad
// (and out, where given) float32, or both bf16: the dtype of the output projection's products
// under bf16 autocast, read and written here so that no cast pass precedes or follows
std::vector<at::Tensor> cascade_backward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bq,
                                         const at::Tensor& dw, const at::Tensor& dwb, const at::Tensor& bias,
                                         const at::Tensor& mask, int64_t m, double scale, bool relu,
                                         const at::Tensor& grad, const at::Tensor& out) {
  const Cascade c = make_cascade(x, weight, bq, dw, dwb, bias, mask, m, scale, relu);
  const bool bf16 = grad.scalar_type() == at::kBFloat16;
  TORCH_CHECK(grad.is_contiguous() && grad.sizes() == x.sizes() && (bf16 || grad.scalar_type() == at::kFloat),
              "grad must be a contiguous float32 or bf16 shaped like x");
  // out (optional): the forward output, written from the recomputed windows (a caller that did not
  // keep it saves its own forward pass)
  TORCH_CHECK(!out.numel() ||
                  (out.is_contiguous() && out.sizes() == x.sizes() && out.scalar_type() == grad.scalar_type()),
              "out must be empty or a contiguous tensor shaped like x in grad's dtype");
  const int64_t threads = at::get_num_threads(), n = c.n, np = c.np, G = c.groups, cdim = x.size(2);
  const int64_t kk = c.ks * c.ks;
  at::Tensor dx = at::empty(x.sizes(), x.options());
  at::Tensor dwt_t = at::zeros({threads, G, c.dv4, c.ep}, x.options());  // dW_j^T per thread
  at::Tensor db_t = at::zeros({threads, G, c.ep}, x.options());
  at::Tensor ddw_t = at::zeros({threads, G, std::max<int64_t>(kk, 1), c.dk}, x.options());
  at::Tensor ddwb_t = at::zeros({threads, G, c.dk}, x.options());
  at::Tensor dbias_t = at::zeros({threads, G, n, n}, x.options());
  const float* xp = x.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  auto run = [&](const auto* gp, auto* outp) {
    at::parallel_for(0, x.size(0), 1, [&](int64_t begin, int64_t end) {
      const int64_t tid = at::get_thread_num();
      float* dwt = dwt_t.data_ptr<float>() + tid * G * c.dv4 * c.ep;
      float* db = db_t.data_ptr<float>() + tid * G * c.ep;
      float* ddw = ddw_t.data_ptr<float>() + tid * G * std::max<int64_t>(kk, 1) * c.dk;
      float* ddwb = ddwb_t.data_ptr<float>() + tid * G * c.dk;
      float* dbias = dbias_t.data_ptr<float>() + tid * G * n * n;
      std::vector<float> ws(G * c.slot()), kt(c.dk * np), gy(n * c.dvp), gz(n * c.dvp), ds(n * np),
          vt(c.dv * np), dq(n * c.dkp), dqkv(n * c.ep);
      for (int64_t w = begin; w < end; ++w) {
        const float* xw = xp + w * n * cdim;
        const auto* gw = gp + w * n * cdim;
        float* dxw = dxp + w * n * cdim;
        cascade_window(c, w, xw, ws.data(), kt.data(), true, nullptr);
        if (outp) {  // (a bf16 out: each value rounded to nearest even)
          for (int64_t j = 0; j < G; ++j) {
            const float* y = Slot(ws.data() + j * c.slot(), c).y;
            for (int64_t i = 0; i < n; ++i) {
              auto* oi = outp + (w * n + i) * cdim + j * c.dv;
              for (int64_t d = 0; d < c.dv; ++d) oi[d] = c.relu ? std::max(y[i * c.dvp + d], 0.0f) : y[i * c.dvp + d];
            }
          }
        }
        for (int64_t j = G - 1; j >= 0; --j) {
          Slot s(ws.data() + j * c.slot(), c);
          // gy = dOut_j (through the ReLU) + the next group's dz (its input took y_j). Every operand is
          // loaded unconditionally and selected after: a conditional read compiles to masked loads,
          // which cost this loop as much as a product on AMD Zen 3.
          const bool chained = j + 1 < G;
          for (int64_t i = 0; i < n; ++i) {
            float* gi = gy.data() + i * c.dvp;  // columns past dv: zero since allocation
            const auto* go = gw + i * cdim + j * c.dv;
            const float* yi = s.y + i * c.dvp;
            const float* zi = gz.data() + i * c.dvp;  // read always, used only when chained
            for (int64_t d = 0; d < c.dv; ++d) {
              const float g = static_cast<float>(go[d]), y = yi[d], z = zi[d];
              gi[d] = (c.relu ? (y > 0.0f ? g : 0.0f) : g) + (chained ? z : 0.0f);
            }
          }
          transpose_block(s.qkv + 2 * c.dk, c.ep, n, c.dv, vt.data(), np);  // v^T; columns past n: zero since allocation
          gemm(n, np, c.dv, gy.data(), c.dvp, vt.data(), np, ds.data(), np, false);  // dP = gy v^T
          float* dbj = dbias + j * n * n;
          for (int64_t i = 0; i < n; ++i) {  // dS = P (dP - rowsum(gy y))
            float delta = 0.0f;
            for (int64_t d = 0; d < c.dv; ++d) delta += gy[i * c.dvp + d] * s.y[i * c.dvp + d];
            float* dsi = ds.data() + i * np;
            const float* pi = s.p + i * np;
            for (int64_t t = 0; t < n; ++t) {
              dsi[t] = pi[t] * (dsi[t] - delta);
              dbj[i * n + t] += dsi[t];
            }
            std::fill(dsi + n, dsi + np, 0.0f);
          }
          gemm(n, c.dkp, n, ds.data(), np, s.qkv + c.dk, c.ep, dq.data(), c.dkp, false);  // dq = dS k
          // dk = dS^T q and dv = P^T gy straight into dqkv's columns (dS^T, P^T read transposed). dk's
          // dkp columns may run into v's (zero: q's columns past dk are); dv's come after and win.
          std::fill(dqkv.begin(), dqkv.end(), 0.0f);
          gemm_from(n, c.dkp, n, ds.data(), 1, np, s.q, c.dkp, dqkv.data() + c.dk, c.ep, Zeros{});
          gemm_from(n, c.dvp, n, s.p, 1, np, gy.data(), c.dvp, dqkv.data() + 2 * c.dk, c.ep, Zeros{});
          if (c.ks) {
            dwconv_backward(s.qkv, c.ep, c.dw + j * kk * c.dk, dq.data(), c.dkp, c.m, c.ks, c.dk, dqkv.data(),
                            ddw + j * kk * c.dk, ddwb + j * c.dk);
          } else {
            for (int64_t t = 0; t < n; ++t)
              for (int64_t d = 0; d < c.dk; ++d) dqkv[t * c.ep + d] = dq[t * c.dkp + d] * c.scale;
          }
          float* dwtj = dwt + j * c.dv4 * c.ep;  // dW^T += z^T dqkv (rows past dv: discarded)
          gemm_from(c.dv4, c.ep, n, s.z, 1, c.dvp, dqkv.data(), c.ep, dwtj, c.ep, Rows{dwtj, c.ep});
          float* dbq = db + j * c.ep;
          for (int64_t t = 0; t < n; ++t)
            for (int64_t r = 0; r < c.e; ++r) dbq[r] += dqkv[t * c.ep + r];
          gemm(n, c.dvp, c.e, dqkv.data(), c.ep, c.wp.data() + j * c.e * c.dvp, c.dvp, gz.data(), c.dvp, false);
          for (int64_t i = 0; i < n; ++i)
            for (int64_t d = 0; d < c.dv; ++d) dxw[i * cdim + j * c.dv + d] = gz[i * c.dvp + d];
        }
      }
    });
  };
  if (bf16) {
    using B = at::BFloat16;
    run(grad.data_ptr<B>(), out.numel() ? out.data_ptr<B>() : static_cast<B*>(nullptr));
  } else {
    run(grad.data_ptr<float>(), out.numel() ? out.data_ptr<float>() : static_cast<float*>(nullptr));
  }
  at::Tensor dweight = dwt_t.sum(0).narrow(1, 0, c.dv).narrow(2, 0, c.e).transpose(1, 2).contiguous();
  at::Tensor dbq = db_t.sum(0).narrow(1, 0, c.e).contiguous();
  at::Tensor ddw = c.ks ? ddw_t.sum(0) : at::empty({0}, x.options());
  at::Tensor ddwb = c.ks ? ddwb_t.sum(0) : at::empty({0}, x.options());
  return {dx, dweight, dbq, ddw, ddwb, dbias_t.sum(0)};
}
// ---- The same cascade in bf16, for inference ------------------------------------------------------
// Under bf16 autocast at inference the cascade's products run on the CPU's bf16 units: each group's
// projection (z W^T, z and W rounded to bf16 as autocast's linear layers round them) by AVX-512
// BF16 dot products, and its two N x N products (S = q k^T and y = P v) with q, k, P and v rounded
// to bf16; every product accumulated in float32, the scores started from the bias, the depthwise
// conv, the softmax and every sum in float32 (P stored as bf16 unnormalised, its row sums taken
// from the rounded values, so y = P v / sum is a weighted mean of v: v carries a column of ones,
// so the product itself gives each row's sum, no horizontal sum per row). Windows of a multiple of
// 32 tokens, dk <= 16, dv <= 64. Two engines for the N x N products, one layout: AMX tiles where
// the CPU has them and Linux permits them, else AVX-512 BF16 dot products (vdpbf16ps, e.g. AMD
// Zen 4); both read k^T and v as bf16 pairs (the VNNI layout).
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define AGILEIR_BF16 1
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define AGILEIR_AMX 1
// The process's permission to use the tile registers (Linux asks for it once per process).
bool amx_permitted() {
  static const bool permitted = [] {
    constexpr long kGetPerm = 0x1022, kReqPerm = 0x1023, kXtileData = 18;
    unsigned long bits = 0;
    if (syscall(SYS_arch_prctl, kGetPerm, &bits) == 0 && (bits & (1ul << kXtileData))) return true;
    return syscall(SYS_arch_prctl, kReqPerm, kXtileData) == 0;
  }();
  return permitted;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tmm0: a 16-row block of q (dk2 bf16 columns); tmm1, tmm7: 16 keys of k^T in pairs (dk2 / 2
// rows; two, so a load does not wait for the product reading the other); tmm2, tmm3: score
// blocks; tmm4: 32 columns of P; tmm5: 32 rows of v in pairs; tmm6: a y block
TileConfig cascade_tiles(int64_t dk2) {
  TileConfig t;
  for (int r = 1; r < 8; ++r) t.rows[r] = 16, t.colsb[r] = 64;
  t.rows[0] = 16, t.colsb[0] = static_cast<uint16_t>(2 * dk2);
  t.rows[1] = t.rows[7] = static_cast<uint8_t>(dk2 / 2);
  return t;
}
#endif  // AMX

// whether the tiles run here: built for AMX, and Linux permits this process their use
bool amx_tiles() {
#ifdef AGILEIR_AMX
  return amx_permitted();
#else
  return false;
#endif
}
// the engine the cascade's products take by default: "amx" where the tiles run, else "avx512_bf16"
std::string cascade_bf16_engine() { return amx_tiles() ? "amx" : "avx512_bf16"; }

bool cascade_bf16_supported(int64_t n, int64_t dk, int64_t dv) {
  return n % 32 == 0 && n <= 256 && dk >= 1 && dk <= 16 && dv >= 1 && dv <= 64;
}

inline __m256i f32_to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
inline __mmask16 first(int64_t count) {  // the first `count` of 16 lanes
  return static_cast<__mmask16>(count >= 16 ? 0xffff : count <= 0 ? 0 : (1u << count) - 1);
}

// exp(x - shift) on 16 lanes, zero at or below kFloor, for probabilities rounded to bf16 next:
// e^r on |r| <= ln2/2 by its degree-4 Taylor polynomial (relative error below 6e-5, 30x under
// bf16's half step of 2e-3) and one-constant range reduction; four FMAs where the float32
// kernel's polynomial takes seven
inline __m512 exp16(__m512 x, __m512 shift) {
  const __m512 floor = _mm512_set1_ps(kFloor);
  __m512 xv = _mm512_sub_ps(x, shift);
  const __mmask16 keep = _mm512_cmp_ps_mask(xv, floor, _CMP_GT_OQ);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(xv, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693147180559945f), xv);
  __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(1.0f / 24), r, _mm512_set1_ps(1.0f / 6));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(keep, y, k);
}

// S rows i0..i0+3, columns c0..c0+16C: bias + q k^T by AVX-512 BF16 dot products, one pair of
// q's columns broadcast against 16 keys' pairs per instruction. N: the window's tokens where known
// at compile time (64, 256: every row address a constant offset, the accumulators stay in
// registers; with a run-time n, or inlined into the window's function, GCC spilled them on every
// step), else 0 and n.
template <int C, int N>
__attribute__((noinline)) void score_rows(const uint16_t* qb, int64_t dk2, const uint32_t* kv, int64_t n_,
                                          const float* bias, int64_t ldb, float* s, int64_t i0, int64_t c0) {
  const int64_t n = N ? N : n_;
  __m512 acc[4][C];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(bias + (i0 + r) * ldb + c0 + 16 * c);
  for (int64_t p = 0; p < dk2 / 2; ++p) {
    __m512bh kb[C];
    for (int c = 0; c < C; ++c) kb[c] = (__m512bh)_mm512_loadu_si512(kv + p * n + c0 + 16 * c);
    for (int r = 0; r < 4; ++r) {
      int32_t pair;
      std::memcpy(&pair, qb + (i0 + r) * dk2 + 2 * p, 4);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, kb[c]);
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(s + (i0 + r) * n + c0 + 16 * c, acc[r][c]);
}

template <int N>
void score_all(const uint16_t* qb, int64_t dk2, const uint32_t* kv, int64_t n_, const float* bias, int64_t ldb,
               float* s) {
  const int64_t n = N ? N : n_;
  for (int64_t i0 = 0; i0 < n; i0 += 4) {  // 4 rows x 64 columns of accumulators
    int64_t c0 = 0;
    for (; c0 + 64 <= n; c0 += 64) score_rows<4, N>(qb, dk2, kv, n, bias, ldb, s, i0, c0);
    if (c0 < n) score_rows<2, N>(qb, dk2, kv, n, bias, ldb, s, i0, c0);
  }
}

// out rows i0..i0+R-1 (D vectors of 16 columns) = init + A B by AVX-512 BF16 dot products: A in
// bf16 rows (LDA: their stride where known at compile time, see score_rows; else 0 and lda),
// B as pairs of its rows (`pairs` x 16D), init a row broadcast to every row, or zero. y = P [v 1]
// and each group's qkv = b + z W^T both take this.
template <int D, int R, int LDA>
__attribute__((noinline)) void pair_rows(const uint16_t* a, int64_t lda_, int64_t pairs, const uint32_t* b,
                                         int64_t ldb, const float* init, float* out, int64_t ldo, int64_t i0) {
  const int64_t lda = LDA ? LDA : lda_;
  __m512 acc[R][D];
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < D; ++d) acc[r][d] = init ? _mm512_loadu_ps(init + 16 * d) : _mm512_setzero_ps();
  const uint16_t* a0 = a + i0 * lda;
  for (int64_t k = 0; k < pairs; ++k) {
    __m512bh bk[D];
    for (int d = 0; d < D; ++d) bk[d] = (__m512bh)_mm512_loadu_si512(b + k * ldb + 16 * d);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a0 + r * lda + 2 * k, 4);
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(pair);
      for (int d = 0; d < D; ++d) acc[r][d] = _mm512_dpbf16_ps(acc[r][d], ar, bk[d]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < D; ++d) _mm512_storeu_ps(out + (i0 + r) * ldo + 16 * d, acc[r][d]);
}

// all n rows, B and out `width` columns wide (a multiple of 16, at most 96): 8 rows of
// accumulators where they fit in the 32 registers, else 4
template <int LDA>
void pair_product(const uint16_t* a, int64_t lda, int64_t n, int64_t pairs, const uint32_t* b, int64_t width,
                  const float* init, float* out) {
  for (int64_t i0 = 0; i0 < n; i0 += 8)
    switch (width / 16) {
      case 1: pair_rows<1, 8, LDA>(a, lda, pairs, b, width, init, out, width, i0); break;
      case 2: pair_rows<2, 8, LDA>(a, lda, pairs, b, width, init, out, width, i0); break;
#define AGILEIR_PAIR_ROWS4(D)                                                  \
  case D:                                                                      \
    pair_rows<D, 4, LDA>(a, lda, pairs, b, width, init, out, width, i0);       \
    pair_rows<D, 4, LDA>(a, lda, pairs, b, width, init, out, width, i0 + 4); \
    break;
      AGILEIR_PAIR_ROWS4(3)
      AGILEIR_PAIR_ROWS4(4)
      AGILEIR_PAIR_ROWS4(5)
      AGILEIR_PAIR_ROWS4(6)
#undef AGILEIR_PAIR_ROWS4
      default: TORCH_CHECK(false, "pair_product: width ", width, " is not 16 to 96");
    }
}

// per call: each group's W^T as bf16 pairs of its rows ((dv + 1) / 2 x e16) and its bias padded to e16
struct Bf16Projections {
  int64_t e16, pairs;
  std::vector<uint32_t> wp;
  std::vector<float> bq;
  explicit Bf16Projections(const Cascade& c)
      : e16((c.e + 15) / 16 * 16), pairs((c.dv + 1) / 2), wp(c.groups * pairs * e16), bq(c.groups * e16) {
    const auto bits = [](float v) { return static_cast<uint32_t>(at::BFloat16(v).x); };
    for (int64_t j = 0; j < c.groups; ++j)
      for (int64_t col = 0; col < c.e; ++col) {
        bq[j * e16 + col] = c.bq[j * c.ep + col];
        for (int64_t p = 0; p < pairs; ++p) {
          const float* w = c.wt.data() + j * c.dv * c.ep + col;
          const uint32_t hi = 2 * p + 1 < c.dv ? bits(w[(2 * p + 1) * c.ep]) : 0;
          wp[(j * pairs + p) * e16 + col] = bits(w[2 * p * c.ep]) | (hi << 16);
        }
      }
  }
};

struct Bf16Workspace {  // one thread's buffers for one window's cascade
  std::vector<float> qkv, q, s, y;
  std::vector<uint16_t> zb, qb, pb;  // zb: z in bf16 rows of 64, zero past dv
  std::vector<uint32_t> kv, vv;  // bf16 pairs: k^T (dk2/2 x n), v (n/2 x dvb)
  Bf16Workspace(const Cascade& c, int64_t dk2, int64_t dvb, int64_t e16)
      : qkv(c.n * e16), q(c.n * c.dkp), s(c.n * c.n), y(c.n * dvb), zb(c.n * 64), qb(c.n * dk2),
        pb(c.n * c.n), kv(dk2 / 2 * c.n), vv(c.n / 2 * dvb) {}
};

void cascade_window_bf16(const Cascade& c, const Bf16Projections& pr, int64_t w, const float* xw, Bf16Workspace& b,
                         int64_t dk2, int64_t dvb, bool tiles, at::BFloat16* out) {
  const int64_t n = c.n, cdim = c.groups * c.dv, lq = pr.e16;
  const float* mask = c.nw && !c.mask_zero[w % c.nw] ? c.mask + (w % c.nw) * n * c.np : nullptr;
  uint16_t* ob = reinterpret_cast<uint16_t*>(out);
  for (int64_t j = 0; j < c.groups; ++j) {
    for (int64_t i = 0; i < n; ++i) {  // z = x_j + y_{j-1} in bf16 (dv <= 64: up to four registers)
      for (int64_t d = 0; d < c.dv; d += 16) {
        const __mmask16 mk = first(c.dv - d);
        __m512 zi = _mm512_maskz_loadu_ps(mk, xw + i * cdim + j * c.dv + d);
        if (j) zi = _mm512_add_ps(zi, _mm512_maskz_loadu_ps(mk, b.y.data() + i * dvb + d));
        _mm256_mask_storeu_epi16(b.zb.data() + i * 64 + d, mk, f32_to_bf16(zi));
      }
    }
    pair_product<64>(b.zb.data(), 64, n, pr.pairs, pr.wp.data() + j * pr.pairs * lq, lq, pr.bq.data() + j * lq,
                     b.qkv.data());
    const float* qf = b.q.data();
    int64_t ldq = c.dkp;
    if (c.ks) {
      dwconv_forward(b.qkv.data(), lq, c.dw + j * c.ks * c.ks * c.dk, c.dwb + j * c.dk, c.m, c.ks, c.dk,
                     b.q.data(), c.dkp);
    } else {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t d = 0; d < c.dk; ++d) b.q[i * c.dkp + d] = b.qkv[i * lq + d] * c.scale;
    }
    // q in bf16 rows; k^T as pairs of its columns (the B layout of the tiles); v likewise
    alignas(64) uint32_t pair[16];
    const __mmask16 dkm = first(c.dk);
    for (int64_t i = 0; i < n; ++i) {
      const __m256i qh = f32_to_bf16(_mm512_maskz_loadu_ps(dkm, qf + i * ldq));
      _mm256_mask_storeu_epi16(b.qb.data() + i * dk2, first(dk2), qh);
      _mm256_store_si256(reinterpret_cast<__m256i*>(pair),
                         f32_to_bf16(_mm512_maskz_loadu_ps(dkm, b.qkv.data() + i * lq + c.dk)));
      for (int64_t r = 0; r < dk2 / 2; ++r) b.kv[r * n + i] = pair[r];
    }
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                                22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512 ones = _mm512_set1_ps(1.0f);
    for (int64_t r = 0; r < n / 2; ++r) {
      const float* v0 = b.qkv.data() + 2 * r * lq + 2 * c.dk;
      for (int64_t d = 0; d < dvb; d += 16) {
        const __mmask16 mk = first(c.dv - d), one = static_cast<__mmask16>(first(c.dv - d + 1) & ~mk);
        const __m512bh both = _mm512_cvtne2ps_pbh(_mm512_mask_mov_ps(_mm512_maskz_loadu_ps(mk, v0 + lq + d), one, ones),
                                                  _mm512_mask_mov_ps(_mm512_maskz_loadu_ps(mk, v0 + d), one, ones));
        _mm512_storeu_si512(b.vv.data() + r * dvb + d, _mm512_permutexvar_epi16(interleave, (__m512i)both));
      }
    }
    // S = bias + q k^T
    const float* bias = c.bias + j * n * c.np;
    if (tiles) {
#ifdef AGILEIR_AMX
      for (int64_t i0 = 0; i0 < n; i0 += 16) {  // 16 x 16 blocks
        _tile_loadd(0, b.qb.data() + i0 * dk2, 2 * dk2);
        for (int64_t c0 = 0; c0 < n; c0 += 32) {
          _tile_loadd(1, b.kv.data() + c0, n * 4);
          _tile_loadd(2, bias + i0 * c.np + c0, c.np * 4);
          _tile_loadd(7, b.kv.data() + c0 + 16, n * 4);
          _tile_loadd(3, bias + i0 * c.np + c0 + 16, c.np * 4);
          _tile_dpbf16ps(2, 0, 1);
          _tile_dpbf16ps(3, 0, 7);
          _tile_stored(2, b.s.data() + i0 * n + c0, n * 4);
          _tile_stored(3, b.s.data() + i0 * n + c0 + 16, n * 4);
        }
      }
#endif
    } else if (n == 64) {
      score_all<64>(b.qb.data(), dk2, b.kv.data(), n, bias, c.np, b.s.data());
    } else if (n == 256) {
      score_all<256>(b.qb.data(), dk2, b.kv.data(), n, bias, c.np, b.s.data());
    } else {
      score_all<0>(b.qb.data(), dk2, b.kv.data(), n, bias, c.np, b.s.data());
    }
    // P = exp(S + mask - row max) in bf16
    for (int64_t i = 0; i < n; ++i) {
      float* si = b.s.data() + i * n;
      if (mask)
        for (int64_t t = 0; t < n; t += 16)
          _mm512_storeu_ps(si + t, _mm512_add_ps(_mm512_loadu_ps(si + t), _mm512_loadu_ps(mask + i * c.np + t)));
      __m512 mx = _mm512_loadu_ps(si);
      for (int64_t t = 16; t < n; t += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(si + t));
      const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
      for (int64_t t = 0; t < n; t += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(b.pb.data() + i * n + t),
                            f32_to_bf16(exp16(_mm512_loadu_ps(si + t), shift)));
    }
    // y = P [v 1] (column dv: the row sums), then y / row sum (the next group's input) and out = act(y) in bf16
    if (tiles) {
#ifdef AGILEIR_AMX
      for (int64_t i0 = 0; i0 < n; i0 += 16)
        for (int64_t d = 0; d < dvb; d += 16) {
          _tile_zero(6);
          for (int64_t k0 = 0; k0 < n; k0 += 32) {
            _tile_loadd(4, b.pb.data() + i0 * n + k0, n * 2);
            _tile_loadd(5, b.vv.data() + k0 / 2 * dvb + d, dvb * 4);
            _tile_dpbf16ps(6, 4, 5);
          }
          _tile_stored(6, b.y.data() + i0 * dvb + d, dvb * 4);
        }
#endif
    } else {
      if (n == 64) pair_product<64>(b.pb.data(), n, n, n / 2, b.vv.data(), dvb, nullptr, b.y.data());
      else if (n == 256) pair_product<256>(b.pb.data(), n, n, n / 2, b.vv.data(), dvb, nullptr, b.y.data());
      else pair_product<0>(b.pb.data(), n, n, n / 2, b.vv.data(), dvb, nullptr, b.y.data());
    }
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; ++i) {
      const __m512 s = _mm512_set1_ps(1.0f / b.y[i * dvb + c.dv]);
      for (int64_t d = 0; d < c.dv; d += 16) {
        float* yi = b.y.data() + i * dvb + d;
        const __m512 yv = _mm512_mul_ps(_mm512_loadu_ps(yi), s);
        _mm512_storeu_ps(yi, yv);
        _mm256_mask_storeu_epi16(ob + i * cdim + j * c.dv + d, first(c.dv - d),
                                 f32_to_bf16(c.relu ? _mm512_max_ps(zero, yv) : yv));  // NaN stays NaN
      }
    }
  }
}

at::Tensor cascade_forward_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bq,
                                const at::Tensor& dw, const at::Tensor& dwb, const at::Tensor& bias,
                                const at::Tensor& mask, int64_t m, double scale, bool relu, bool tiles) {
  const Cascade c = make_cascade(x, weight, bq, dw, dwb, bias, mask, m, scale, relu);
  TORCH_CHECK(cascade_bf16_supported(c.n, c.dk, c.dv), "the bf16 cascade takes windows of a multiple of 32 tokens, "
              "dk <= 16 and dv <= 64");
  TORCH_CHECK(!tiles || amx_tiles(), "this process may not use AMX tiles (or the CPU has none)");
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const float* xp = x.data_ptr<float>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const int64_t cdim = x.size(2), dk2 = (c.dk + 1) / 2 * 2, dvb = (c.dv + 16) / 16 * 16;
  const Bf16Projections projections(c);
  at::parallel_for(0, x.size(0), 1, [&](int64_t begin, int64_t end) {
#ifdef AGILEIR_AMX
    const TileConfig config = cascade_tiles(dk2);
    if (tiles) _tile_loadconfig(&config);
#endif
    Bf16Workspace ws(c, dk2, dvb, projections.e16);
    for (int64_t w = begin; w < end; ++w)
      cascade_window_bf16(c, projections, w, xp + w * c.n * cdim, ws, dk2, dvb, tiles, op + w * c.n * cdim);
#ifdef AGILEIR_AMX
    if (tiles) _tile_release();
#endif
  });
  return out;
}
#endif  // AVX-512 BF16
#endif

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                  const at::Tensor& mask) {
  TORCH_CHECK(q.device().is_cpu(), "the fused window-attention kernel runs on the CPU");
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.dim() == 4 && v.size(0) == q.size(0) &&
                  v.size(1) == q.size(1) && v.size(2) == q.size(2),
              "q, k must be (B_, h, N, dk) and v (B_, h, N, dv)");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "last dimensions must be contiguous");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
                  bias.scalar_type() == q.scalar_type(), "q, k, v and bias must share one dtype");
  TORCH_CHECK(bias.is_contiguous() && bias.dim() == 3 && bias.size(0) == q.size(1) && bias.size(1) == q.size(2) &&
                  bias.size(2) == q.size(2), "bias must be a contiguous (h, N, N)");
  if (mask.numel()) {
    TORCH_CHECK(mask.is_contiguous() && mask.dim() == 3 && mask.size(1) == q.size(2) && mask.size(2) == q.size(2) &&
                    q.size(0) % mask.size(0) == 0 && mask.scalar_type() == q.scalar_type(),
                "mask must be a contiguous (nW, N, N) of q's dtype with nW dividing B_");
  }
}

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& bias, const at::Tensor& mask, bool want_lse) {
  check_inputs(q, k, v, bias, mask);
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options());
  at::Tensor lse = want_lse ? at::empty({q.size(0), q.size(1), q.size(2)}, q.options()) : at::empty({0}, q.options());
#if defined(__AVX2__) && defined(__FMA__)
  if (q.scalar_type() == at::kFloat) {
    forward_f32(q, k, v, bias, mask, out, lse, want_lse);
    return {out, lse};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fused_window_attention_forward",
                             [&] { forward_impl<scalar_t>(q, k, v, bias, mask, out, lse, want_lse); });
  return {out, lse};
}

std::vector<at::Tensor> backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& bias, const at::Tensor& mask, const at::Tensor& out,
                                 const at::Tensor& lse, const at::Tensor& grad) {
  check_inputs(q, k, v, bias, mask);
  TORCH_CHECK(out.is_contiguous() && lse.is_contiguous() && grad.is_contiguous() &&
                  grad.sizes() == out.sizes() && grad.scalar_type() == q.scalar_type(),
              "out, lse and grad must be contiguous, grad shaped like out");
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  at::Tensor dbias = at::zeros({at::get_num_threads(), q.size(1), q.size(2), q.size(2)}, q.options());
#if defined(__AVX2__) && defined(__FMA__)
  if (q.scalar_type() == at::kFloat) {
    backward_f32(q, k, v, bias, mask, out, lse, grad, dq, dk, dv, dbias);
    return {dq, dk, dv, dbias.sum(0)};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fused_window_attention_backward", [&] {
    backward_impl<scalar_t>(q, k, v, bias, mask, out, lse, grad, dq, dk, dv, dbias);
  });
  return {dq, dk, dv, dbias.sum(0)};
}

}  // namespace

bool vectorized() {  // whether float32 takes the AVX2 path (else the plain loops, for any CPU)
#if defined(__AVX2__) && defined(__FMA__)
  return true;
#else
  return false;
#endif
}

void register_token_norm(pybind11::module& m);  // token_norm.cpp
void register_gelu(pybind11::module& m);  // gelu.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  register_token_norm(m);
  register_gelu(m);
  m.def("vectorized", &vectorized, "whether float32 runs the AVX2 path");
#if defined(__AVX2__) && defined(__FMA__)
  m.def("cascade_forward", &cascade_forward, "GSWA's group cascade, fused per window (float32)");
  m.def("cascade_backward", &cascade_backward, "gradients of the fused GSWA cascade");
#endif
#ifdef AGILEIR_BF16
  m.def("cascade_bf16_engine", &cascade_bf16_engine, "amx where the tiles run here (Linux asked once), else avx512_bf16");
  m.def("cascade_bf16_supported", &cascade_bf16_supported, "whether the bf16 cascade takes (N, dk, dv)");
  m.def("cascade_forward_bf16", &cascade_forward_bf16, "GSWA's group cascade with bf16 products, bf16 out (inference)");
#endif
  m.def("forward", &forward, "fused window attention: (out, row log-sum-exp)");
  m.def("backward", &backward, "gradients of q, k, v and bias");
}
