// Images for vision-language training: decoding (PNG, JPEG, BMP, GIF), EXIF orientation, and
// Gemma 3's image processor (resize to the tower's side with Pillow's bilinear filter, rescale,
// normalize). Every step reproduces what transformers' Gemma3ImageProcessorPil computes for an
// image given by path, bit for bit (tests/data/image_test.cpp compares pixel_values with it):
//   - JPEG through libjpeg-turbo with libjpeg's defaults (integer IDCT, fancy upsampling): the
//     decoder Pillow uses. stb_image's JPEG decoder differs from it by up to 13 levels.
//   - PNG, BMP and GIF (first frame) through stb_image.
//   - load_image(path): EXIF orientation applied, then convert("RGB"): alpha dropped, grey and
//     palettes expanded.
//   - Image.resize(BILINEAR): separable triangle filter (widened by the scale when shrinking),
//     8-bit between the passes, 22-bit fixed-point weights; horizontal pass first, except when
//     the height loses more than twice the pixels the width loses (Pillow 13's rule).
//
//   LLMTRAIN_ASSIGN_OR_RETURN(data::ImageProcessorConfig config,
//                             data::LoadImageProcessorConfig("model_dir"));
//   LLMTRAIN_ASSIGN_OR_RETURN(data::RgbImage image, data::LoadImage("dog.jpg"));
//   std::vector<float> pixels = data::PreprocessImage(image, config);  // (3, H, W)
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace llmtrain::data {

/// An 8-bit RGB image: rows top to bottom, 3 bytes per pixel.
struct RgbImage {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> pixels;  ///< width · height · 3
};

/// What a file may make the decoder allocate. A header that claims more is refused before any
/// pixel is decoded (a 30000 × 30000 claim in a 100-byte file costs nothing).
struct ImageLimits {
  int64_t max_file_bytes = int64_t{256} << 20;
  /// width · height; Pillow refuses above 2 × 89,478,485 (its decompression-bomb error).
  int64_t max_pixels = 178956970;
};

/// Decodes the bytes of a PNG, JPEG, BMP or GIF file (the kind is read from its signature) as
/// load_image(path).convert("RGB") does. InvalidArgument with the reason: unknown kind, truncated
/// or corrupt data, a zero or over-limit size, an unsupported variant (CMYK/YCCK JPEG).
absl::StatusOr<RgbImage> DecodeImage(absl::Span<const uint8_t> bytes, const ImageLimits& limits = {});
/// Reads and decodes the file at `path`; errors start with the path.
absl::StatusOr<RgbImage> LoadImage(const std::string& path, const ImageLimits& limits = {});

/// Writes `image` as a PNG (stb_image_write) or a baseline JPEG (libjpeg, 4:2:0, `quality`),
/// atomically. InvalidArgument for an empty image.
absl::Status WritePng(const std::string& path, const RgbImage& image);
/// The bytes of `image` as a PNG file (what WritePng writes). InvalidArgument for an empty image.
absl::StatusOr<std::string> EncodePng(const RgbImage& image);
absl::Status WriteJpeg(const std::string& path, const RgbImage& image, int quality = 90);

/// The EXIF orientation (1 … 8) in a JPEG's APP1 or a PNG's eXIf chunk; 1 when there is none or
/// it is unreadable (as Pillow's exif_transpose treats it).
int ExifOrientation(absl::Span<const uint8_t> bytes);
/// `image` turned upright for EXIF orientation 1 … 8 (Pillow's ImageOps.exif_transpose).
RgbImage ApplyOrientation(const RgbImage& image, int orientation);

/// Pillow's Image.resize((width, height), Image.BILINEAR), bit for bit.
RgbImage ResizeBilinear(const RgbImage& image, int64_t width, int64_t height);

/// A Gemma 3 image processor's settings (preprocessor_config.json).
struct ImageProcessorConfig {
  int64_t height = 896, width = 896;
  bool do_resize = true;
  bool do_rescale = true;
  bool do_normalize = true;
  double rescale_factor = 1.0 / 255.0;
  std::array<double, 3> image_mean = {0.5, 0.5, 0.5};
  std::array<double, 3> image_std = {0.5, 0.5, 0.5};
};

/// Parses a preprocessor_config.json (Gemma3ImageProcessor's fields; others are ignored).
/// InvalidArgument naming the field for values it cannot use: resample other than 2 (bilinear),
/// do_pan_and_scan true (not supported), a non-positive size or std.
absl::StatusOr<ImageProcessorConfig> ParseImageProcessorConfig(absl::string_view json_text, absl::string_view where);
/// The same from a file, or from a model folder's preprocessor_config.json.
absl::StatusOr<ImageProcessorConfig> LoadImageProcessorConfig(const std::string& path);
/// The processor for a tower of `image_size` pixels: Gemma 3's defaults at that size.
ImageProcessorConfig DefaultImageProcessor(int64_t image_size);

class Dataset;
struct BadRecord;
/// Every record of `data` with an image that does not decode (data::LoadImage with `limits`),
/// as bad records with the record's file:line and the reason; each distinct image is decoded
/// once, on all cores (what `llmtrain data-check --images` reports before training does).
std::vector<BadRecord> FindUndecodableImages(const Dataset& data, const ImageLimits& limits = {});

/// pixel_values of one image: float32 (3, height, width), channel-major. Resize (when the size
/// differs), then (float32(v · rescale_factor) − mean) / std per channel, as transformers does.
std::vector<float> PreprocessImage(const RgbImage& image, const ImageProcessorConfig& config);

}  // namespace llmtrain::data
