// Runs BlendMask's blender op from C++ through the PyTorch dispatcher, on CPU tensors.
//
// The op library (built by the repository's top-level CMakeLists.txt) registers the schema
//   blendmask::blend(Tensor bases, Tensor attns, Tensor rois, int output_size,
//                    float spatial_scale, int sampling_ratio, bool aligned, str top_interp,
//                    str normalize="softmax", str bottom_interp="bilinear") -> Tensor
// with TORCH_LIBRARY when it is loaded. This program links that library, looks the op up by
// name in the dispatcher and calls it on deterministic inputs, so that its printed output can be
// compared with the pure-PyTorch reference `blendmask.ops.blend_reference` (see
// tests/csrc/test_cpp_example.py, which rebuilds the same inputs in Python).
//
// Output format, one block per case:
//   case <name> <D> <R> <R>
//   <D*R*R values, one per line, row-major, printed with %.9e>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <string_view>
#include <vector>

namespace {

// blend(bases, attns, rois, output_size, spatial_scale, sampling_ratio, aligned, top_interp,
//       normalize, bottom_interp): the schema's arguments in order (the dispatcher passes defaults
// only from Python, so C++ callers give every one).
using BlendFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double,
                           int64_t, bool, std::string_view, std::string_view, std::string_view);

// sin(scale * i + offset) over the flattened index i, computed in float64 and cast to float32,
// reshaped to `shape`. The Python test builds the same tensors with the same torch calls.
at::Tensor deterministic(std::vector<int64_t> shape, double scale, double offset, double amplitude) {
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  return at::arange(numel, at::kDouble).mul(scale).add(offset).sin().mul(amplitude).reshape(shape).to(at::kFloat);
}

// Three rois over two images of 40x48 pixels (bases at stride 4): one inside image 0, one partly
// outside image 1, and one smaller than a base cell.
at::Tensor example_rois() {
  const std::vector<float> values = {
      0.0f, 2.5f, 3.0f, 30.0f, 25.5f,   //
      1.0f, -4.0f, 6.0f, 20.0f, 44.0f,  //
      1.0f, 12.25f, 8.5f, 13.0f, 9.0f,  //
  };
  return at::tensor(values, at::kFloat).reshape({3, 5});
}

struct Case {
  const char* name;
  int64_t output_size;
  int64_t sampling_ratio;
  bool aligned;
  const char* top_interp;
};

}  // namespace

int main() try {
  // The schema is registered by libblendmask_ops' static initialisers when the library loads.
  auto blend = c10::Dispatcher::singleton().findSchemaOrThrow("blendmask::blend", "").typed<BlendFn>();

  const at::Tensor bases = deterministic({2, 4, 10, 12}, 0.37, 0.0, 2.0);  // (N, K, Hb, Wb)
  const at::Tensor attns = deterministic({3, 4, 3, 3}, 0.61, 0.5, 3.0);    // (D, K, M, M)
  const at::Tensor rois = example_rois();                                  // (D, 5)

  const Case cases[] = {
      {"bilinear_aligned", 5, 1, true, "bilinear"},
      {"nearest_unaligned", 4, 2, false, "nearest"},
  };
  for (const Case& c : cases) {
    const at::Tensor out = blend.call(bases, attns, rois, c.output_size, 0.25, c.sampling_ratio, c.aligned,
                                      std::string_view(c.top_interp), std::string_view("softmax"),
                                      std::string_view("bilinear"))
                               .contiguous();  // (D, R, R)
    std::printf("case %s %lld %lld %lld\n", c.name, static_cast<long long>(out.size(0)),
                static_cast<long long>(out.size(1)), static_cast<long long>(out.size(2)));
    const float* data = out.data_ptr<float>();
    for (int64_t i = 0; i < out.numel(); ++i) std::printf("%.9e\n", static_cast<double>(data[i]));
  }
  return 0;
} catch (const c10::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
  return 1;
}
