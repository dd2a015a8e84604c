// mf_kernels::frozen_mobileformer: a whole frozen Mobile-Former, images to logits, in one call
// (mf_kernels.freeze's fast path on the CPU).
//
// Each image runs through the network alone (image.cpp), in a workspace carved up once and
// kept between calls (page faults on freshly allocated feature maps cost as much as some
// convolutions); the head's two Linears then run on the whole batch, so that their weights
// (most of the model's bytes) are read once per batch, not once per image. With several
// images and threads the images are split over the threads (no synchronisation inside the
// network); a single image uses the threads inside each stage instead.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <mutex>
#include <vector>

#include "image.h"
#include "kernels.h"
#include "plan.h"
#include "tokens.h"

namespace mf_kernels {
namespace frozen {
namespace {

// Workspaces kept between calls, one per concurrent caller (threads of one call, or Python
// threads sharing a model). A request takes the smallest free one that is large enough.
class WorkspacePool {
 public:
  at::Tensor acquire(int64_t floats) {
    std::lock_guard<std::mutex> lock(mutex_);
    int best = -1;
    for (size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].numel() >= floats &&
          (best < 0 || free_[i].numel() < free_[best].numel())) {
        best = static_cast<int>(i);
      }
    }
    if (best < 0) return at::empty({floats}, at::kFloat);
    at::Tensor t = std::move(free_[best]);
    free_.erase(free_.begin() + best);
    return t;
  }

  void release(at::Tensor t) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(t));
    // Keep no more than one per thread: extra ones came from a burst of concurrent calls.
    const size_t keep = static_cast<size_t>(std::max(1, at::get_num_threads()));
    while (free_.size() > keep) {
      auto smallest = std::min_element(free_.begin(), free_.end(), [](auto& a, auto& b) {
        return a.numel() < b.numel();
      });
      free_.erase(smallest);
    }
  }

 private:
  std::mutex mutex_;
  std::vector<at::Tensor> free_;
};

WorkspacePool& workspaces() {
  static WorkspacePool pool;
  return pool;
}

class Workspace {
 public:
  explicit Workspace(int64_t floats) : t_(workspaces().acquire(floats)) {}
  ~Workspace() { workspaces().release(std::move(t_)); }
  float* data() { return t_.mutable_data_ptr<float>(); }

 private:
  at::Tensor t_;
};

// y [rows, out] = act(x [rows, in] W + b), split over column panels when there are threads
// to spare (at batch 1 the head's Linears are a matrix-vector product over ~7 MB of weight).
void batched_linear(const KernelTable& t, const Linear& l, const float* x, int64_t rows,
                    float* y, bool hard_swish) {
  const int64_t panel_count = (l.out + kPanel - 1) / kPanel;
  at::parallel_for(0, panel_count, 4, [&](int64_t begin, int64_t end) {
    const int64_t col = begin * kPanel, cols = std::min(l.out, end * kPanel) - col;
    Gemm g;
    g.a = x;
    g.a_row_stride = l.in;
    g.b = l.weight + begin * l.in * kPanel;
    g.b_panel_stride = l.in * kPanel;
    g.c = y + col;
    g.ldc = l.out;
    g.rows = rows;
    g.depth = l.in;
    g.cols = cols;
    g.epilogue.bias = l.bias + col;
    t.gemm(g, 0, rows);
    if (hard_swish) {
      for (int64_t r = 0; r < rows; ++r) {
        float* v = y + r * l.out + col;
        for (int64_t c = 0; c < cols; ++c) {
          v[c] = v[c] * std::min(std::max(v[c] + 3.0f, 0.0f), 6.0f) / 6.0f;
        }
      }
    }
  });
}

at::Tensor frozen_mobileformer(const at::Tensor& x, at::TensorList weights,
                               at::IntArrayRef config,
                               c10::optional<c10::string_view> isa) {
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == 3, "x: expected images [B, 3, H, W], got ",
                    x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat,
                   "x: the frozen CPU path runs float32 images, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x: expected a CPU tensor, got ", x.device());
  TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0, "x: expected a non-empty image, got ",
                    x.sizes());
  const Network n = parse_network(weights, config);
  const KernelTable& t = isa ? kernel_table(std::string(*isa)) : kernel_table();
  const int64_t B = x.size(0);
  at::Tensor logits = at::empty({B, n.classes}, x.options());
  if (B == 0) return logits;
  const Geometry geometry(n, x.size(2), x.size(3));
  const int64_t workspace_floats = geometry.workspace_floats(n);
  at::Tensor features = at::empty({B, geometry.feature_dim}, x.options());
  float* feature_rows = features.mutable_data_ptr<float>();
  const float* pixels = x.const_data_ptr<float>();
  const auto image = [&](int64_t b) {
    Image i;
    i.pixels = pixels + b * x.stride(0);
    i.stride_c = x.stride(1);
    i.stride_h = x.stride(2);
    i.stride_w = x.stride(3);
    return i;
  };
  const auto run_images = [&](int64_t begin, int64_t end) {
    Workspace workspace(workspace_floats);
    ImageRunner runner(t, n, geometry, workspace.data());
    for (int64_t b = begin; b < end; ++b) {
      runner.run(image(b), feature_rows + b * geometry.feature_dim);
    }
  };
  if (B > 1 && at::get_num_threads() > 1 && !at::in_parallel_region()) {
    at::parallel_for(0, B, 1, run_images);
  } else {
    run_images(0, B);
  }
  at::Tensor hidden = at::empty({B, n.head.fc1.out}, x.options());
  batched_linear(t, n.head.fc1, feature_rows, B, hidden.mutable_data_ptr<float>(), true);
  batched_linear(t, n.head.fc2, hidden.const_data_ptr<float>(), B,
                 logits.mutable_data_ptr<float>(), false);
  return logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(mf_kernels, CPU, m) {
  m.impl("frozen_mobileformer", &frozen_mobileformer);
}

}  // namespace frozen
}  // namespace mf_kernels
