// Training-mode batch normalisation fused with what follows it in a ResNet (nothing, a ReLU, or
// a residual add and a ReLU), for channels_last CPU tensors.
//
// PyTorch runs these as separate kernels: the forward reads the activation three times (mean,
// variance, normalise), then once more for the add and the ReLU each; the backward makes a pass
// for the ReLU mask and two for the normalisation. Here the forward makes two passes (shifted
// sums, then normalise + add + ReLU) and the backward two (masked sums, then the input
// gradient). Tensors are 2-D (rows, channels) views of channels_last activations, float32 or
// bfloat16; statistics and parameters are float32.
//
// Sums are taken per block of rows and combined in block order, so results do not depend on
// the number of threads (exact resume stays bit-identical).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBlockRows = 256;

inline float to_float(float v) { return v; }
inline float to_float(at::BFloat16 v) {
  uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

inline void store(float* p, float v) { *p = v; }
inline void store(at::BFloat16* p, float v) {
  // Round to nearest even, as c10::BFloat16 does (NaN is not expected in activations).
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits += 0x7FFF + ((bits >> 16) & 1);
  p->x = static_cast<uint16_t>(bits >> 16);
}

// The pre-activation y = x * scale + shift, computed the same way in both directions so the
// backward's ReLU mask is exactly the forward's.
inline float affine(float x, float scale, float shift) { return std::fma(x, scale, shift); }

int64_t num_blocks(int64_t rows) { return (rows + kBlockRows - 1) / kBlockRows; }

// scale = weight * invstd and shift = bias - mean * scale, in float32 from the float32 mean and
// invstd that the backward receives, so both directions use identical values.
void scale_shift(int64_t channels, const float* weight, const float* bias, const float* mean,
                 const float* invstd, float* scale, float* shift) {
  for (int64_t c = 0; c < channels; ++c) {
    scale[c] = weight[c] * invstd[c];
    shift[c] = bias[c] - mean[c] * scale[c];
  }
}

// What follows the normalisation: nothing, a ReLU, or adding a residual and then a ReLU (the
// end of a ResNet block).
enum class Act { kNone, kRelu, kAddRelu };

// Per-channel totals of two quantities over all rows: `add_row(r, first, second)` adds row r's
// terms to the float accumulators of one block of rows; blocks are summed in double in block
// order, so the totals do not depend on how blocks were spread over threads.
template <typename AddRow>
void channel_sums(int64_t rows, int64_t channels, const AddRow& add_row,
                  std::vector<double>& first_total, std::vector<double>& second_total) {
  const int64_t blocks = num_blocks(rows);
  std::vector<double> first(blocks * channels), second(blocks * channels);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> f(channels), s(channels);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(f.begin(), f.end(), 0.f);
      std::fill(s.begin(), s.end(), 0.f);
      const int64_t r_end = std::min(rows, (b + 1) * kBlockRows);
      for (int64_t r = b * kBlockRows; r < r_end; ++r) add_row(r, f.data(), s.data());
      std::copy(f.begin(), f.end(), first.begin() + b * channels);
      std::copy(s.begin(), s.end(), second.begin() + b * channels);
    }
  });
  first_total.assign(channels, 0.0);
  second_total.assign(channels, 0.0);
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t c = 0; c < channels; ++c) {
      first_total[c] += first[b * channels + c];
      second_total[c] += second[b * channels + c];
    }
  }
}

template <typename T, Act A>
void forward_kernel(const T* x, const T* residual, T* y, int64_t rows, int64_t channels,
                    const float* weight, const float* bias, double eps, float* mean_out,
                    float* var_out, float* invstd_out) {
  // Pass 1: per block, sums of (x - pivot) and its square; the first row is the pivot, which
  // keeps the variance accurate when the mean is large compared with the spread.
  std::vector<float> pivot(channels);
  for (int64_t c = 0; c < channels; ++c) pivot[c] = to_float(x[c]);
  std::vector<double> sums, squares;
  channel_sums(
      rows, channels,
      [&](int64_t r, float* s, float* q) {
        const T* row = x + r * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float d = to_float(row[c]) - pivot[c];
          s[c] += d;
          q[c] += d * d;
        }
      },
      sums, squares);
  for (int64_t c = 0; c < channels; ++c) {
    const double s = sums[c], q = squares[c];
    const double shifted_mean = s / rows;
    const double var = std::max(q / rows - shifted_mean * shifted_mean, 0.0);
    mean_out[c] = static_cast<float>(pivot[c] + shifted_mean);
    var_out[c] = static_cast<float>(var);
    invstd_out[c] = static_cast<float>(1.0 / std::sqrt(var + eps));
  }
  std::vector<float> scale(channels), shift(channels);
  scale_shift(channels, weight, bias, mean_out, invstd_out, scale.data(), shift.data());
  // Pass 2: normalise, scale, shift, then the activation.
  at::parallel_for(0, rows, kBlockRows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* in = x + r * channels;
      T* out = y + r * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        float v = affine(to_float(in[c]), scale[c], shift[c]);
        if constexpr (A == Act::kAddRelu) v += to_float(residual[r * channels + c]);
        if constexpr (A != Act::kNone) v = v > 0.f ? v : 0.f;
        store(out + c, v);
      }
    }
  });
}

// The gradient reaching the normalisation's output: `grad` where the ReLU let the value through.
// For kRelu the mask is recomputed from x (the output need not be kept); for kAddRelu it is read
// from the block's output y, as PyTorch's ReLU backward does (y > 0).
template <typename T, Act A>
inline float masked_grad(const T* grad, const T* y, float xv, float scale, float shift,
                         int64_t i) {
  const float g = to_float(grad[i]);
  if constexpr (A == Act::kRelu) return affine(xv, scale, shift) > 0.f ? g : 0.f;
  if constexpr (A == Act::kAddRelu) return to_float(y[i]) > 0.f ? g : 0.f;
  return g;
}

template <typename T, Act A>
void backward_kernel(const T* grad, const T* x, const T* y, T* grad_x, T* grad_residual,
                     int64_t rows, int64_t channels, const float* weight, const float* bias,
                     const float* mean, const float* invstd, float* grad_weight,
                     float* grad_bias) {
  std::vector<float> scale(channels), shift(channels);
  scale_shift(channels, weight, bias, mean, invstd, scale.data(), shift.data());
  // Pass 1: per block, sums of the masked gradient g and of g * (x - mean); for kAddRelu g is
  // also the residual's gradient.
  std::vector<double> sum_g, sum_gx;
  channel_sums(
      rows, channels,
      [&](int64_t r, float* s, float* p) {
        const int64_t base = r * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float xv = to_float(x[base + c]);
          const float g = masked_grad<T, A>(grad, y, xv, scale[c], shift[c], base + c);
          if constexpr (A == Act::kAddRelu) store(grad_residual + base + c, g);
          s[c] += g;
          p[c] += g * (xv - mean[c]);
        }
      },
      sum_g, sum_gx);
  // grad_x = scale * (g - mean(g) - (x - mean) * invstd^2 * mean(g * (x - mean)))
  //        = g * scale + x * b + k, per channel.
  std::vector<float> b_coef(channels), k(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const double sg = sum_g[c], sgx = sum_gx[c];
    grad_bias[c] = static_cast<float>(sg);
    grad_weight[c] = static_cast<float>(sgx * invstd[c]);
    const double mean_g = sg / rows;
    const double proj = sgx / rows * invstd[c] * invstd[c];
    b_coef[c] = static_cast<float>(-scale[c] * proj);
    k[c] = static_cast<float>(scale[c] * (mean[c] * proj - mean_g));
  }
  // Pass 2: the input gradient. For kAddRelu the masked gradient is read back from
  // grad_residual (exact: it is grad or 0), one stream instead of grad and y.
  at::parallel_for(0, rows, kBlockRows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t base = r * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        const float xv = to_float(x[base + c]);
        float g;
        if constexpr (A == Act::kAddRelu) {
          g = to_float(grad_residual[base + c]);
        } else {
          g = masked_grad<T, A>(grad, y, xv, scale[c], shift[c], base + c);
        }
        store(grad_x + base + c, g * scale[c] + xv * b_coef[c] + k[c]);
      }
    }
  });
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(),
              "batch_norm_act: x must be a contiguous (rows, channels) CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "batch_norm_act: x must be float32 or bfloat16");
  TORCH_CHECK(x.size(0) > 1, "batch_norm_act: needs more than one value per channel");
  for (const auto& p : {weight, bias}) {
    TORCH_CHECK(p.scalar_type() == at::kFloat && p.is_contiguous() && p.numel() == x.size(1),
                "batch_norm_act: weight and bias must be contiguous float32 of size channels");
  }
}

void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() && t.is_contiguous(),
              "batch_norm_act: ", name, " must be a contiguous tensor like x");
}

Act activation(bool relu, bool residual) {
  TORCH_CHECK(relu || !residual, "batch_norm_act: a residual is only fused with relu=True");
  return residual ? Act::kAddRelu : relu ? Act::kRelu : Act::kNone;
}

// Calls fn(T{}, std::integral_constant<Act, A>{}) for x's dtype and the activation.
template <typename Fn>
void dispatch(at::ScalarType dtype, Act act, Fn fn) {
  auto with_type = [&](auto type_tag) {
    switch (act) {
      case Act::kNone: return fn(type_tag, std::integral_constant<Act, Act::kNone>{});
      case Act::kRelu: return fn(type_tag, std::integral_constant<Act, Act::kRelu>{});
      case Act::kAddRelu: return fn(type_tag, std::integral_constant<Act, Act::kAddRelu>{});
    }
  };
  if (dtype == at::kFloat) {
    with_type(float{});
  } else {
    with_type(at::BFloat16{});
  }
}

// Returns (y, mean, biased variance, 1 / sqrt(variance + eps)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const std::optional<at::Tensor>& residual, double eps, bool relu) {
  check_inputs(x, weight, bias);
  const bool has_residual = residual.has_value() && residual->defined();
  if (has_residual) check_like(*residual, x, "residual");
  const Act act = activation(relu, has_residual);
  auto y = at::empty_like(x);
  auto mean = at::empty({x.size(1)}, weight.options());
  auto var = at::empty({x.size(1)}, weight.options());
  auto invstd = at::empty({x.size(1)}, weight.options());
  dispatch(x.scalar_type(), act, [&](auto type_tag, auto act_tag) {
    using T = decltype(type_tag);
    const T* res = has_residual ? residual->data_ptr<T>() : nullptr;
    forward_kernel<T, decltype(act_tag)::value>(
        x.data_ptr<T>(), res, y.data_ptr<T>(), x.size(0), x.size(1), weight.data_ptr<float>(),
        bias.data_ptr<float>(), eps, mean.data_ptr<float>(), var.data_ptr<float>(),
        invstd.data_ptr<float>());
  });
  return {y, mean, var, invstd};
}

// Returns (grad_x, grad_weight, grad_bias, grad_residual); grad_residual is empty unless
// `output` (the forward's y, given when it added a residual) is.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& invstd, const std::optional<at::Tensor>& output,
    bool relu) {
  check_inputs(x, weight, bias);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "batch_norm_act: grad must match x");
  const bool has_output = output.has_value() && output->defined();
  if (has_output) check_like(*output, x, "output");
  const Act act = activation(relu, has_output);
  auto g = grad.contiguous();
  auto grad_x = at::empty_like(x);
  auto grad_residual = has_output ? at::empty_like(x) : at::empty({0}, x.options());
  auto grad_weight = at::empty_like(weight);
  auto grad_bias = at::empty_like(bias);
  dispatch(x.scalar_type(), act, [&](auto type_tag, auto act_tag) {
    using T = decltype(type_tag);
    const T* y = has_output ? output->data_ptr<T>() : nullptr;
    T* grad_res = has_output ? grad_residual.data_ptr<T>() : nullptr;
    backward_kernel<T, decltype(act_tag)::value>(
        g.data_ptr<T>(), x.data_ptr<T>(), y, grad_x.data_ptr<T>(), grad_res, x.size(0),
        x.size(1), weight.data_ptr<float>(), bias.data_ptr<float>(), mean.data_ptr<float>(),
        invstd.data_ptr<float>(), grad_weight.data_ptr<float>(), grad_bias.data_ptr<float>());
  });
  return {grad_x, grad_weight, grad_bias, grad_residual};
}

}  // namespace

TORCH_LIBRARY(tsla, m) {
  m.def("batch_norm_act_forward(Tensor x, Tensor weight, Tensor bias, Tensor? residual,"
        " float eps, bool relu) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("batch_norm_act_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias, Tensor mean,"
        " Tensor invstd, Tensor? output, bool relu) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tsla, CPU, m) {
  m.impl("batch_norm_act_forward", &forward);
  m.impl("batch_norm_act_backward", &backward);
}
