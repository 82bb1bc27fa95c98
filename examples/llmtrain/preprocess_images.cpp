// llmtrain preprocess-images (--processor PATH | --size S) --output OUT.safetensors IMAGE...
// The pixel_values a Gemma 3 image processor makes of image files (data/image.h).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/status.h"
#include "llmtrain/data/image.h"
#include "llmtrain/io/safetensors.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain preprocess-images (--processor PATH | --size S) --output OUT.safetensors IMAGE...\n"
    "  PATH: a preprocessor_config.json, or a model folder that has one; --size S: Gemma 3's\n"
    "  processor at S x S (896 for google/gemma-3-*). IMAGE: PNG, JPEG, BMP or GIF files.\n"
    "  OUT gets pixel_values (F32 [N, 3, H, W]): what transformers' Gemma3ImageProcessor (Pillow\n"
    "  backend) makes of the same paths, bit for bit (EXIF orientation applied, alpha dropped).\n";

}  // namespace

int RunPreprocessImages(const std::vector<std::string>& args) {
  std::string processor, out;
  int64_t size = 0;
  std::vector<std::string> images;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a.rfind("--", 0) != 0) {
      images.push_back(a);
      continue;
    }
    if (i + 1 >= args.size()) return Fail("preprocess-images", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& value = args[++i];
    if (a == "--processor") {
      processor = value;
    } else if (a == "--output") {
      out = value;
    } else if (a == "--size") {
      if (!absl::SimpleAtoi(value, &size) || size < 1 || size > 16384) {
        return Fail("preprocess-images", absl::StrCat("--size: expected a side in [1, 16384], found ", value), 2);
      }
    } else {
      return Fail("preprocess-images", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
  }
  if (out.empty() || images.empty() || processor.empty() == (size == 0)) {
    return Fail("preprocess-images", absl::StrCat("give --processor or --size, --output and images\n", kHelp), 2);
  }
  data::ImageProcessorConfig config = data::DefaultImageProcessor(size);
  if (!processor.empty()) {
    auto loaded = data::LoadImageProcessorConfig(processor);
    if (!loaded.ok()) return Fail("preprocess-images", std::string(loaded.status().message()));
    config = *loaded;
  }
  std::vector<float> all;
  for (const std::string& path : images) {
    auto image = data::LoadImage(path);
    if (!image.ok()) return Fail("preprocess-images", std::string(image.status().message()));
    const std::vector<float> pixels = data::PreprocessImage(*image, config);
    all.insert(all.end(), pixels.begin(), pixels.end());
  }
  const int64_t n = static_cast<int64_t>(images.size());
  if (!config.do_resize) return Fail("preprocess-images", "do_resize false: images of different sizes cannot batch");
  const int64_t h = config.height, w = config.width;
  io::TensorToWrite tensor;
  tensor.name = "pixel_values";
  tensor.dtype = Dtype::kF32;
  tensor.shape = {n, 3, h, w};
  tensor.data = absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(all.data()), all.size() * sizeof(float));
  const absl::Status saved = io::WriteSafetensors(out, {tensor}, {{"format", "pt"}});
  if (!saved.ok()) return Fail("preprocess-images", std::string(saved.message()));
  std::printf("%s: pixel_values [%lld, 3, %lld, %lld]\n", out.c_str(), static_cast<long long>(n),
              static_cast<long long>(h), static_cast<long long>(w));
  return 0;
}

}  // namespace llmtrain::cli
