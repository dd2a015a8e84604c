// One image through a frozen Mobile-Former, from the input pixels to the head's feature
// vector (the head's two Linears run on the whole batch at once: network.cpp).
#pragma once

#include <cstdint>

#include "kernels.h"
#include "plan.h"

namespace mf_kernels {
namespace frozen {

// Feature-map sizes of every stage, and the scratch they need, for an input of H x W.
struct Geometry {
  int64_t height = 0, width = 0;  // input
  // The largest [P, C] map each buffer holds: block inputs and outputs (maps), and the three
  // temporaries of a block (temp[0] the first hidden map, temp[1] the second or the down
  // block's r, temp[2] the down block's second hidden map).
  int64_t map_floats = 0;
  int64_t temp_floats[3] = {0, 0, 0};
  int64_t attention_floats = 0;   // the largest attention scratch
  int64_t token_floats = 0;       // token_scratch_floats
  int64_t hidden = 0;             // the widest dynamic-ReLU layer (slopes are 2 x that)
  int64_t max_out = 0;            // the widest block output (keys and values)
  int64_t feature_dim = 0;        // the head's feature vector: 6C + d

  Geometry(const Network& n, int64_t height, int64_t width);
  // Floats of one image's workspace.
  int64_t workspace_floats(const Network& n) const;
};

// The input image: pixel (c, y, x) at pixels[c * stride_c + y * stride_h + x * stride_w].
struct Image {
  const float* pixels = nullptr;
  int64_t stride_c = 0, stride_h = 0, stride_w = 0;
};

// Runs the network on one image at a time, in a workspace of Geometry::workspace_floats()
// floats that it carves up once. Not thread-safe: one runner per thread.
class ImageRunner {
 public:
  ImageRunner(const KernelTable& t, const Network& n, const Geometry& g, float* workspace);
  // Writes the head's feature vector [h-swish(mean(relu6(conv(x)))), token 0] to `features`.
  void run(const Image& image, float* features);

 private:
  void stem(const Image& image);
  void lite(const Block& b);
  void stride1(const Block& b);
  void down(const Block& b);
  void head(float* features);
  void tokens(const Block& b);
  void former2mobile(const Block& b, float* y);
  void pointwise(const PointwiseConv& pw, const float* x, int64_t positions, float* y,
                 Activation act, const float* slopes, const float* residual);
  void depthwise(const DepthwiseConv& dw, const float* x, int64_t out_height,
                 int64_t out_width, float* y, Activation act, const float* slopes);
  void swap_maps() { std::swap(map_, next_); }

  const KernelTable& t_;
  const Network& n_;
  // The current feature map (map_, [height_ * width_, channels_]) and the next block's.
  float *map_, *next_, *temp0_, *temp1_, *temp2_;
  float *attention_, *token_scratch_, *z_, *slopes1_, *slopes2_, *key_value_;
  int64_t height_ = 0, width_ = 0, channels_ = 0;
  const int64_t input_height_, input_width_;
};

}  // namespace frozen
}  // namespace mf_kernels
