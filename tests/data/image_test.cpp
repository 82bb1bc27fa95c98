// data/image: decoding and Gemma 3's image processor against transformers' (Pillow backend) at
// test time, on images of every kind made by Pillow and on real images found on the machine;
// and bad image files refused with their reason.
#include "llmtrain/data/image.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "llmtrain/io/safetensors.h"
#include "testing/json_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using nlohmann::json;

// Real images this machine has (the .venv's packages always ship some PNGs; Debian docs and
// toolchains add JPEGs). Sorted, at most `per_root` from each root.
std::vector<std::string> RealImages(size_t per_root) {
  namespace fs = std::filesystem;
  std::vector<std::string> out;
  const std::string roots[] = {std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/lib", "/usr/share/doc", "/root/.rustup"};
  for (const std::string& root : roots) {
    std::error_code ec;
    if (!fs::is_directory(root, ec)) continue;
    std::vector<std::string> found;
    for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      const std::string ext = it->path().extension().string();
      if ((ext == ".png" || ext == ".jpg" || ext == ".jpeg") && it->is_regular_file(ec) &&
          it->file_size(ec) > 2048 && it->file_size(ec) < (8u << 20)) {
        found.push_back(it->path().string());
      }
    }
    std::sort(found.begin(), found.end());
    // Spread over the sorted list, JPEGs first where there are any.
    std::stable_partition(found.begin(), found.end(), [](const std::string& p) { return p.find(".jp") != std::string::npos; });
    for (size_t i = 0; i < found.size() && i < per_root; ++i) out.push_back(found[i]);
  }
  return out;
}


TEST_CASE("image: pixel_values equal transformers' Gemma 3 processor bit for bit", "[data][image][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("image_parity");
  const auto made = testing::RunReference("image_ref.py", {"make", dir + "/images"});
  REQUIRE(made.exit_code == 0);
  std::vector<std::string> files = testing::LastJsonLine(made.out)["files"].get<std::vector<std::string>>();
  const size_t generated = files.size();
  const std::vector<std::string> real = RealImages(4);
  REQUIRE(!real.empty());  // the .venv's packages at least
  files.insert(files.end(), real.begin(), real.end());
  const int64_t size = 896;  // Gemma 3's
  std::vector<std::string> args = {"run", dir + "/ref.safetensors", std::to_string(size)};
  args.insert(args.end(), files.begin(), files.end());
  REQUIRE(testing::RunReference("image_ref.py", args).exit_code == 0);
  auto ref = io::SafetensorsFile::Open(dir + "/ref.safetensors");
  REQUIRE(ref.ok());
  const data::ImageProcessorConfig config = data::DefaultImageProcessor(size);
  int exact = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    INFO("image " << files[i]);
    auto image = data::LoadImage(files[i]);
    INFO((image.ok() ? std::string("decoded") : std::string(image.status().message())));
    REQUIRE(image.ok());
    const io::TensorInfo* rgb = (*ref)->Find("rgb." + std::to_string(i));
    REQUIRE(rgb != nullptr);
    REQUIRE(rgb->shape == std::vector<int64_t>{image->height, image->width, 3});
    const auto rgb_bytes = (*ref)->Data(*rgb);
    CHECK(std::memcmp(rgb_bytes.data(), image->pixels.data(), image->pixels.size()) == 0);  // decode, EXIF, RGB
    const data::RgbImage resized = data::ResizeBilinear(*image, size, size);
    const auto resized_bytes = (*ref)->Data(*(*ref)->Find("resized." + std::to_string(i)));
    CHECK(std::memcmp(resized_bytes.data(), resized.pixels.data(), resized.pixels.size()) == 0);  // Pillow's resize
    const std::vector<float> pixels = data::PreprocessImage(*image, config);
    const io::TensorInfo* want = (*ref)->Find("pixels." + std::to_string(i));
    REQUIRE(want != nullptr);
    REQUIRE(want->shape == std::vector<int64_t>{3, size, size});
    const auto want_bytes = (*ref)->Data(*want);
    REQUIRE(want_bytes.size() == pixels.size() * sizeof(float));
    const bool same = std::memcmp(want_bytes.data(), pixels.data(), want_bytes.size()) == 0;
    CHECK(same);
    exact += same ? 1 : 0;
  }
  std::printf("image parity: %d of %zu images bit-identical to Gemma3ImageProcessorPil (%zu generated, %zu real)\n",
              exact, files.size(), generated, real.size());
}

TEST_CASE("image: ResizeBilinear equals Pillow's Image.resize on 400 random size pairs", "[data][image][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("image_resize");
  const int n = 400;
  REQUIRE(testing::RunReference("image_ref.py", {"resize", dir + "/resize.safetensors", std::to_string(n)}).exit_code == 0);
  auto ref = io::SafetensorsFile::Open(dir + "/resize.safetensors");
  REQUIRE(ref.ok());
  int equal = 0, vertical_first = 0;
  for (int i = 0; i < n; ++i) {
    const io::TensorInfo* in = (*ref)->Find("in." + std::to_string(i));
    const io::TensorInfo* out = (*ref)->Find("out." + std::to_string(i));
    REQUIRE((in != nullptr && out != nullptr));
    data::RgbImage image;
    image.height = in->shape[0];
    image.width = in->shape[1];
    const auto bytes = (*ref)->Data(*in);
    image.pixels.assign(bytes.begin(), bytes.end());
    const data::RgbImage resized = data::ResizeBilinear(image, out->shape[1], out->shape[0]);
    const auto want = (*ref)->Data(*out);
    INFO(image.width << "x" << image.height << " -> " << out->shape[1] << "x" << out->shape[0]);
    REQUIRE(resized.pixels.size() == want.size());
    const bool same = std::memcmp(resized.pixels.data(), want.data(), want.size()) == 0;
    CHECK(same);
    equal += same;
    vertical_first += out->shape[0] < image.height && image.height - out->shape[0] > 2 * (image.width - out->shape[1]);
  }
  std::printf("resize: %d of %d random size pairs equal Pillow (%d of them resized vertically first)\n", equal, n,
              vertical_first);
}

std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

TEST_CASE("image: bad files are refused with a reason, never a crash", "[data][image][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("image_bad");
  const auto made = testing::RunReference("image_ref.py", {"make", dir + "/images"});
  REQUIRE(made.exit_code == 0);
  const std::vector<uint8_t> png = ReadBytes(dir + "/images/rgb.png");
  const std::vector<uint8_t> jpg = ReadBytes(dir + "/images/q75_420.jpg");
  const std::vector<uint8_t> gif = ReadBytes(dir + "/images/palette.gif");
  const std::vector<uint8_t> bmp = ReadBytes(dir + "/images/rgb.bmp");
  REQUIRE(png.size() > 1000);
  REQUIRE(jpg.size() > 1000);
  // A PNG header claiming 30000 × 30000 (IHDR width/height at bytes 16..23), CRC left stale.
  std::vector<uint8_t> huge_png = png;
  for (int at : {16, 20}) {
    huge_png[at] = 0; huge_png[at + 1] = 0; huge_png[at + 2] = 0x75; huge_png[at + 3] = 0x30;  // 30000
  }
  // A JPEG whose SOF0 claims 30000 × 30000.
  std::vector<uint8_t> huge_jpg = jpg;
  for (size_t i = 2; i + 9 < huge_jpg.size(); ++i) {
    if (huge_jpg[i] == 0xFF && (huge_jpg[i + 1] == 0xC0 || huge_jpg[i + 1] == 0xC2)) {
      huge_jpg[i + 5] = 0x75; huge_jpg[i + 6] = 0x30; huge_jpg[i + 7] = 0x75; huge_jpg[i + 8] = 0x30;
      break;
    }
  }
  std::vector<uint8_t> zero_jpg = jpg;  // height 0
  for (size_t i = 2; i + 9 < zero_jpg.size(); ++i) {
    if (zero_jpg[i] == 0xFF && zero_jpg[i + 1] == 0xC0) {
      zero_jpg[i + 5] = 0; zero_jpg[i + 6] = 0;
      break;
    }
  }
  std::vector<uint8_t> garbled_jpg = jpg;  // scan data overwritten
  for (size_t i = garbled_jpg.size() / 2; i < garbled_jpg.size() / 2 + 400; ++i) garbled_jpg[i] = 0xFF;
  std::vector<uint8_t> garbled_png = png;
  for (size_t i = png.size() / 2; i < png.size() / 2 + 64; ++i) garbled_png[i] ^= 0x5A;
  const auto cut = [](const std::vector<uint8_t>& v, size_t n) { return std::vector<uint8_t>(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n)); };
  struct Bad {
    std::string name;
    std::vector<uint8_t> bytes;
    std::string reason;  // a part of the message
  };
  const std::string text = "just some text, not an image";
  const std::vector<Bad> cases = {
      {"empty file", {}, "empty file"},
      {"text file", std::vector<uint8_t>(text.begin(), text.end()), "unknown signature"},
      {"PNG signature only", cut(png, 8), "PNG"},
      {"PNG truncated in IDAT", cut(png, png.size() / 2), "PNG"},
      {"PNG with corrupt data", garbled_png, "PNG"},
      {"PNG claiming 30000x30000", huge_png, "PNG: unreadable header"},  // stb_image's own size check
      {"JPEG SOI only", cut(jpg, 3), "JPEG"},
      {"JPEG truncated in the scan", cut(jpg, jpg.size() * 2 / 3), "truncated JPEG"},
      {"JPEG with garbled scan", garbled_jpg, "JPEG"},
      {"JPEG claiming 30000x30000", huge_jpg, "over the limit"},
      {"JPEG of height 0", zero_jpg, "JPEG"},
      {"GIF truncated", cut(gif, gif.size() / 3), "GIF"},
      {"GIF header only", cut(gif, 6), "GIF"},
      {"BMP truncated", cut(bmp, 40), "BMP"},
      {"TIFF (unsupported)", {'I', 'I', 42, 0, 8, 0, 0, 0}, "unknown signature"},
      {"WebP (unsupported)", {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P'}, "unknown signature"},
  };
  for (const Bad& bad : cases) {
    INFO(bad.name);
    const auto image = data::DecodeImage(bad.bytes);
    REQUIRE_FALSE(image.ok());
    CHECK_THAT(std::string(image.status().message()), Catch::Contains(bad.reason));
    std::printf("bad image %-28s %s\n", bad.name.c_str(), std::string(image.status().message()).c_str());
  }
  // A smaller pixel limit refuses what the default accepts; the path leads the message.
  data::ImageLimits small;
  small.max_pixels = 1000;
  const auto limited = data::LoadImage(dir + "/images/rgb.png", small);
  REQUIRE_FALSE(limited.ok());
  CHECK_THAT(std::string(limited.status().message()), Catch::StartsWith(dir + "/images/rgb.png: PNG: 499×375"));
  CHECK(data::LoadImage(dir + "/images/rgb.png").ok());
}

TEST_CASE("image: processor configs", "[data][image]") {
  auto c = data::ParseImageProcessorConfig(
      R"({"size": {"height": 448, "width": 448}, "resample": 2, "image_mean": [0.5, 0.5, 0.5],
          "image_std": 0.25, "do_pan_and_scan": null, "image_processor_type": "Gemma3ImageProcessor"})",
      "p.json");
  REQUIRE(c.ok());
  CHECK(c->height == 448);
  CHECK(c->image_std[2] == 0.25);
  const auto refused = [](const std::string& text) {
    auto r = data::ParseImageProcessorConfig(text, "p.json");
    return r.ok() ? std::string("accepted") : std::string(r.status().message());
  };
  CHECK_THAT(refused(R"({"resample": 3})"), Catch::Contains("p.json: resample"));
  CHECK_THAT(refused(R"({"do_pan_and_scan": true})"), Catch::Contains("do_pan_and_scan"));
  CHECK_THAT(refused(R"({"size": {"height": 0, "width": 5}})"), Catch::Contains("size"));
  CHECK_THAT(refused(R"({"image_std": [1, 0, 1]})"), Catch::Contains("image_std"));
  CHECK_THAT(refused("[1, 2]"), Catch::Contains("JSON object"));
}

}  // namespace
}  // namespace llmtrain
