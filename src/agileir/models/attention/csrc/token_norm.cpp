// LayerNorm over the channels of a token, fused with the permutations and residual adds around it.
//
// Why: in a transformer block at inference, LayerNorm, the window gather before the attention,
// the reverse gather after it and the residual adds are each one pass over a feature map far
// larger than the caches (65536 tokens x 60 channels per block at a 256x256 input), and ATen's
// LayerNorm reaches only a few GB/s at 60 channels. Here the gather, the add and the norm of one
// token row happen while the row is in registers, and the normed row is written in the dtype
// the next product reads (bf16 under autocast), so no cast pass follows.
//
// Rows are C contiguous floats. An image of T tokens is rows b*T .. b*T + T - 1; ``order`` (T,
// int64) is a permutation of one image's tokens. Statistics in float32, two passes over the row
// (mean, then the centred sum of squares), biased variance, as torch.nn.LayerNorm.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kGrain = 256;  // rows per parallel task: a few hundred rows amortize a task's start

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN kept quiet (as c10::BFloat16)
  if (std::isnan(f)) return 0x7FC0;
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(uint16_t* p, __m256 v) {  // round to nearest even; NaN lanes -> 0x7FC0
  __m256i bits = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
  __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
#endif

inline float to_float(float v) { return v; }
inline float to_float(uint16_t v) { return bf16_to_float(v); }
inline void from_float(float* p, float v) { *p = v; }
inline void from_float(uint16_t* p, float v) { *p = float_to_bf16(v); }

struct RowStats {
  float mean, rstd;
};

// mean and 1 / sqrt(biased variance + eps) of one row of c floats: two passes (mean, then the
// centred sum of squares), as torch.nn.LayerNorm
inline RowStats row_stats(const float* row, int64_t c, float eps) {
  int64_t i = 0;
  float sum = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= c; i += 8) acc = _mm256_add_ps(acc, load8(row + i));
  sum = hsum(acc);
#endif
  for (; i < c; ++i) sum += row[i];
  const float mean = sum / static_cast<float>(c);
  float sq = 0.f;
  i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 vmean = _mm256_set1_ps(mean);
  __m256 acc2 = _mm256_setzero_ps();
  for (; i + 8 <= c; i += 8) {
    __m256 d = _mm256_sub_ps(load8(row + i), vmean);
    acc2 = _mm256_fmadd_ps(d, d, acc2);
  }
  sq = hsum(acc2);
#endif
  for (; i < c; ++i) sq += (row[i] - mean) * (row[i] - mean);
  return {mean, 1.f / std::sqrt(sq / static_cast<float>(c) + eps)};
}

// out = LN(row) * weight + bias for one row of c floats
template <typename OT>
inline void norm_row(const float* row, int64_t c, const float* weight, const float* bias, float eps, OT* out,
                     float* stats = nullptr) {
  const RowStats st = row_stats(row, c, eps);
  if (stats) stats[0] = st.mean, stats[1] = st.rstd;
  const float mean = st.mean, rstd = st.rstd;
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 vmean = _mm256_set1_ps(mean);
  const __m256 vrstd = _mm256_set1_ps(rstd);
  for (; i + 8 <= c; i += 8) {
    __m256 d = _mm256_mul_ps(_mm256_sub_ps(load8(row + i), vmean), vrstd);
    store8(out + i, _mm256_fmadd_ps(d, load8(weight + i), load8(bias + i)));
  }
#endif
  for (; i < c; ++i) from_float(out + i, (row[i] - mean) * rstd * weight[i] + bias[i]);
}

void check_rows(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 CPU tensor");
  const int64_t c = x.size(-1);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.numel() == c &&
                  bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == c,
              "weight and bias must be contiguous float32 of the channel count");
}

void check_order(const at::Tensor& order, int64_t rows) {
  TORCH_CHECK(order.scalar_type() == at::kLong && order.is_contiguous() && order.dim() == 1,
              "order must be a contiguous 1-D int64 tensor");
  TORCH_CHECK(order.numel() > 0 && rows % order.numel() == 0, "the rows must be whole images of order's length");
}

at::ScalarType out_type(bool bf16) { return bf16 ? at::kBFloat16 : at::kFloat; }

}  // namespace

// out row b*T + i = LN(x row b*T + order[i]) (order empty: the identity); out in float32 or bf16;
// stats (rows x 2, optional): each out row's mean and 1 / std, for norm_gather_backward
at::Tensor norm_gather_impl(const at::Tensor& x, const at::Tensor& order, const at::Tensor& weight,
                            const at::Tensor& bias, double eps, bool bf16, float* stats) {
  check_rows(x, weight, bias);
  const int64_t c = x.size(-1), rows = x.numel() / c;
  const bool permuted = order.numel() > 0;
  if (permuted) check_order(order, rows);
  const int64_t t = permuted ? order.numel() : rows;
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(out_type(bf16)));
  const float* xp = x.data_ptr<float>();
  const int64_t* op = permuted ? order.data_ptr<int64_t>() : nullptr;
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  auto run = [&](auto* outp) {
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t src = permuted ? (r / t) * t + op[r % t] : r;
        norm_row(xp + src * c, c, wp, bp, static_cast<float>(eps), outp + r * c, stats ? stats + 2 * r : nullptr);
      }
    });
  };
  if (bf16) run(reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()));
  else run(out.data_ptr<float>());
  return out;
}

at::Tensor norm_gather(const at::Tensor& x, const at::Tensor& order, const at::Tensor& weight,
                       const at::Tensor& bias, double eps, bool bf16) {
  return norm_gather_impl(x, order, weight, bias, eps, bf16, nullptr);
}

// norm_gather with the rows' statistics: (out, stats), for training; out in bf16 where the next
// product reads bf16 (a linear layer under bf16 autocast: its own cast would be a pass more)
std::vector<at::Tensor> norm_gather_stats(const at::Tensor& x, const at::Tensor& order, const at::Tensor& weight,
                                          const at::Tensor& bias, double eps, bool bf16) {
  at::Tensor stats = at::empty({x.numel() / std::max<int64_t>(x.size(-1), 1), 2}, x.options());
  at::Tensor out = norm_gather_impl(x, order, weight, bias, eps, bf16, stats.data_ptr<float>());
  return {out, stats};
}

// sum row r = x row r + y row b*T + order[r % T] (y float32 or bf16; order empty: the identity),
// normed row r = LN(sum row r) in float32 or bf16. Returns (sum, normed).
std::vector<at::Tensor> add_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& order,
                                 const at::Tensor& weight, const at::Tensor& bias, double eps, bool bf16) {
  check_rows(x, weight, bias);
  const int64_t c = x.size(-1), rows = x.numel() / c;
  TORCH_CHECK(y.is_contiguous() && y.numel() == x.numel() && y.size(-1) == c &&
                  (y.scalar_type() == at::kFloat || y.scalar_type() == at::kBFloat16),
              "y must be a contiguous float32 or bf16 tensor of x's size");
  const bool permuted = order.numel() > 0;
  if (permuted) check_order(order, rows);
  const int64_t t = permuted ? order.numel() : rows;
  at::Tensor sum = at::empty(x.sizes(), x.options());
  at::Tensor normed = at::empty(x.sizes(), x.options().dtype(out_type(bf16)));
  const float* xp = x.data_ptr<float>();
  const int64_t* op = permuted ? order.data_ptr<int64_t>() : nullptr;
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* sp = sum.data_ptr<float>();
  auto run = [&](const auto* yp, auto* outp) {
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t src = permuted ? (r / t) * t + op[r % t] : r;
        const float* xr = xp + r * c;
        const auto* yr = yp + src * c;
        float* sr = sp + r * c;
        int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
        for (; i + 8 <= c; i += 8) store8(sr + i, _mm256_add_ps(load8(xr + i), load8(yr + i)));
#endif
        for (; i < c; ++i) sr[i] = xr[i] + to_float(yr[i]);
        norm_row(sr, c, wp, bp, static_cast<float>(eps), outp + r * c);
      }
    });
  };
  const bool ybf16 = y.scalar_type() == at::kBFloat16;
  const uint16_t* y16 = ybf16 ? reinterpret_cast<const uint16_t*>(y.data_ptr<at::BFloat16>()) : nullptr;
  const float* y32 = ybf16 ? nullptr : y.data_ptr<float>();
  uint16_t* o16 = bf16 ? reinterpret_cast<uint16_t*>(normed.data_ptr<at::BFloat16>()) : nullptr;
  float* o32 = bf16 ? nullptr : normed.data_ptr<float>();
  if (ybf16 && bf16) run(y16, o16);
  else if (ybf16) run(y16, o32);
  else if (bf16) run(y32, o16);
  else run(y32, o32);
  return {sum, normed};
}

// The gradients of norm_gather: grad (float32, or bf16 for a bf16 out) row r belongs to x row
// src(r) = b*T + order[r % T].
// dx row src(r) = rstd (g - mean(g) - xhat mean(g xhat)), g = grad row r * weight, xhat the row's
// normalised values (from the statistics norm_gather_stats saved); dweight = sum grad xhat,
// dbias = sum grad, over rows, summed per thread and then across threads. Returns (dx, dweight, dbias).
std::vector<at::Tensor> norm_gather_backward(const at::Tensor& x, const at::Tensor& order, const at::Tensor& grad,
                                             const at::Tensor& weight, const at::Tensor& stats) {
  check_rows(x, weight, weight);
  TORCH_CHECK((grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kBFloat16) && grad.is_contiguous() &&
                  grad.numel() == x.numel(),
              "grad must be a contiguous float32 or bf16 tensor of x's size");
  const int64_t c = x.size(-1), rows = x.numel() / c;
  const bool permuted = order.numel() > 0;
  if (permuted) check_order(order, rows);
  const int64_t t = permuted ? order.numel() : rows;
  const int64_t threads = at::get_num_threads();
  at::Tensor dx = at::empty(x.sizes(), x.options());
  at::Tensor partial = at::zeros({threads, 2, c}, x.options());  // per thread: dweight, dbias
  const float* xp = x.data_ptr<float>();
  const int64_t* op = permuted ? order.data_ptr<int64_t>() : nullptr;
  const float* wp = weight.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  TORCH_CHECK(stats.scalar_type() == at::kFloat && stats.is_contiguous() && stats.numel() == 2 * rows,
              "stats must be norm_gather_stats's (rows x 2 float32)");
  const float* stp = stats.data_ptr<float>();
  const float fc = static_cast<float>(c);
  auto run = [&](const auto* gp) {
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      float* dw = partial.data_ptr<float>() + at::get_thread_num() * 2 * c;
      float* db = dw + c;
      for (int64_t r = begin; r < end; ++r) {
        const int64_t src = permuted ? (r / t) * t + op[r % t] : r;
        const float* xr = xp + src * c;
        const auto* gr = gp + r * c;
        float* dr = dxp + src * c;
        const float mean = stp[2 * r], rstd = stp[2 * r + 1];
        float sg = 0.f, sgx = 0.f;
        // sums of g and g xhat; dweight and dbias of this row
        int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
        const __m256 vmean = _mm256_set1_ps(mean);
        const __m256 vrstd = _mm256_set1_ps(rstd);
        __m256 ag = _mm256_setzero_ps(), agx = _mm256_setzero_ps();
        for (; i + 8 <= c; i += 8) {
          const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(load8(xr + i), vmean), vrstd);
          const __m256 go = load8(gr + i);
          const __m256 g = _mm256_mul_ps(go, load8(wp + i));
          ag = _mm256_add_ps(ag, g);
          agx = _mm256_fmadd_ps(g, xh, agx);
          store8(dw + i, _mm256_fmadd_ps(go, xh, load8(dw + i)));
          store8(db + i, _mm256_add_ps(go, load8(db + i)));
        }
        sg = hsum(ag);
        sgx = hsum(agx);
#endif
        for (; i < c; ++i) {
          const float xh = (xr[i] - mean) * rstd, go = to_float(gr[i]), g = go * wp[i];
          sg += g;
          sgx += g * xh;
          dw[i] += go * xh;
          db[i] += go;
        }
        const float mg = sg / fc, mgx = sgx / fc;
        i = 0;
#if defined(__AVX2__) && defined(__FMA__)
        const __m256 vmg = _mm256_set1_ps(mg), vmgx = _mm256_set1_ps(mgx);
        for (; i + 8 <= c; i += 8) {
          const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(load8(xr + i), vmean), vrstd);
          const __m256 g = _mm256_mul_ps(load8(gr + i), load8(wp + i));
          store8(dr + i, _mm256_mul_ps(vrstd, _mm256_sub_ps(_mm256_sub_ps(g, vmg), _mm256_mul_ps(xh, vmgx))));
        }
#endif
        for (; i < c; ++i) {
          const float xh = (xr[i] - mean) * rstd, g = to_float(gr[i]) * wp[i];
          dr[i] = rstd * (g - mg - xh * mgx);
        }
      }
    });
  };
  if (grad.scalar_type() == at::kBFloat16) run(reinterpret_cast<const uint16_t*>(grad.data_ptr<at::BFloat16>()));
  else run(grad.data_ptr<float>());
  at::Tensor sums = partial.sum(0);
  return {dx, sums[0], sums[1]};
}

// x += y in place, x float32, y bf16 of x's size (the float32 residual stream and a bf16 branch)
void add_bf16_(at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 CPU tensor");
  TORCH_CHECK(y.scalar_type() == at::kBFloat16 && y.is_contiguous() && y.numel() == x.numel(),
              "y must be a contiguous bf16 tensor of x's size");
  float* xp = x.data_ptr<float>();
  const uint16_t* yp = reinterpret_cast<const uint16_t*>(y.data_ptr<at::BFloat16>());
  at::parallel_for(0, x.numel(), kGrain * 64, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(__AVX2__) && defined(__FMA__)
    for (; i + 8 <= end; i += 8) store8(xp + i, _mm256_add_ps(load8(xp + i), load8(yp + i)));
#endif
    for (; i < end; ++i) xp[i] += bf16_to_float(yp[i]);
  });
}

// The training step's residual with a bf16 branch under stochastic depth: out = x + s_b y for
// sample b (x float32 (B, ...), y bf16 of x's size, s (B,) float32 keep / (1 - p)), and its
// branch gradient s_b g rounded to bf16 (the dtype y's gradient takes). ATen widens y into a
// temporary before its addcmul, and multiplies and then casts in backward: a pass more each.
namespace {
void check_residual(const at::Tensor& x, const at::Tensor& scale) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() >= 1,
              "x must be a contiguous float32 CPU tensor");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == x.size(0),
              "scale must be a contiguous float32 with one value per sample");
}

// f(i, end, s) over x's elements in spans [i, end) within one sample, s that sample's scale
template <typename F>
void per_sample(const at::Tensor& x, const at::Tensor& scale, F f) {
  const int64_t per = x.numel() / std::max<int64_t>(x.size(0), 1);
  const float* sp = scale.data_ptr<float>();
  at::parallel_for(0, x.numel(), kGrain * 64, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / per, stop = std::min(end, (b + 1) * per);
      f(i, stop, sp[b]);
      i = stop;
    }
  });
}
}  // namespace

at::Tensor residual_bf16(const at::Tensor& x, const at::Tensor& y, const at::Tensor& scale) {
  check_residual(x, scale);
  TORCH_CHECK(y.scalar_type() == at::kBFloat16 && y.is_contiguous() && y.numel() == x.numel(),
              "y must be a contiguous bf16 tensor of x's size");
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const uint16_t* yp = reinterpret_cast<const uint16_t*>(y.data_ptr<at::BFloat16>());
  float* op = out.data_ptr<float>();
  per_sample(x, scale, [&](int64_t i, int64_t end, float s) {
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 vs = _mm256_set1_ps(s);
    for (; i + 8 <= end; i += 8) store8(op + i, _mm256_fmadd_ps(vs, load8(yp + i), load8(xp + i)));
#endif
    for (; i < end; ++i) op[i] = std::fma(s, bf16_to_float(yp[i]), xp[i]);
  });
  return out;
}

at::Tensor scale_to_bf16(const at::Tensor& g, const at::Tensor& scale) {
  check_residual(g, scale);
  at::Tensor out = at::empty(g.sizes(), g.options().dtype(at::kBFloat16));
  const float* gp = g.data_ptr<float>();
  uint16_t* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  per_sample(g, scale, [&](int64_t i, int64_t end, float s) {
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 vs = _mm256_set1_ps(s);
    for (; i + 8 <= end; i += 8) store8(op + i, _mm256_mul_ps(vs, load8(gp + i)));
#endif
    for (; i < end; ++i) op[i] = float_to_bf16(s * gp[i]);
  });
  return out;
}

void register_token_norm(pybind11::module& m) {
  m.def("norm_gather", &norm_gather, "LayerNorm of permuted token rows, float32 or bf16 out");
  m.def("add_norm", &add_norm, "residual add of permuted rows and LayerNorm of the sum: (sum, normed)");
  m.def("add_bf16_", &add_bf16_, "float32 += bf16 in place");
  m.def("residual_bf16", &residual_bf16, "x + scale[b] * y, x float32, y bf16, one scale per sample");
  m.def("scale_to_bf16", &scale_to_bf16, "bf16(scale[b] * g), g float32, one scale per sample");
  m.def("norm_gather_stats", &norm_gather_stats, "norm_gather with the rows' (mean, 1/std), float32 or bf16 out",
        pybind11::arg("x"), pybind11::arg("order"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("eps"), pybind11::arg("bf16") = false);
  m.def("norm_gather_backward", &norm_gather_backward,
        "gradients of norm_gather (grad float32 or bf16): (dx, dweight, dbias)");
}
