// libFuzzer target: any bytes given to the image decoder (PNG, JPEG, BMP, GIF, EXIF) yield an
// image or a Status, never a crash; a decoded image also goes through the resize. The pixel limit
// is small so that a header's claim cannot make the fuzzer allocate gigabytes.
#include <cstddef>
#include <cstdint>

#include "llmtrain/data/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  llmtrain::data::ImageLimits limits;
  limits.max_pixels = 1 << 20;
  const absl::Span<const uint8_t> bytes(data, size);
  (void)llmtrain::data::ExifOrientation(bytes);
  auto image = llmtrain::data::DecodeImage(bytes, limits);
  if (image.ok() && image->width * image->height <= 4096) (void)llmtrain::data::ResizeBilinear(*image, 7, 5);
  return 0;
}
