// The bad-input table of image+text data: corrupt images and Flickr8K caption files. Each bad
// image is refused with its reason, each bad record reported with file:line, never a crash;
// scripts/test also runs this binary under ASan+UBSan. No LibTorch and no Python: the valid files
// it corrupts are written here (PNG and BMP by stb_image_write, JPEG by libjpeg).
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <jpeglib.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_image_write.h>

#include "llmtrain/core/atomic_file.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/data/image.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using Bytes = std::vector<uint8_t>;

std::vector<uint8_t> Pixels(int w, int h, int channels) {
  std::vector<uint8_t> p(static_cast<size_t>(w * h * channels));
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<uint8_t>((i * 37 + i / 7) & 0xFF);
  return p;
}

void Append(void* context, void* data, int size) {
  auto* out = static_cast<Bytes*>(context);
  out->insert(out->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
}

Bytes Png(int w, int h) {
  Bytes out;
  const auto p = Pixels(w, h, 3);
  REQUIRE(stbi_write_png_to_func(Append, &out, w, h, 3, p.data(), w * 3) != 0);
  return out;
}

Bytes Bmp(int w, int h) {
  Bytes out;
  const auto p = Pixels(w, h, 3);
  REQUIRE(stbi_write_bmp_to_func(Append, &out, w, h, 3, p.data()) != 0);
  return out;
}

Bytes Jpeg(int w, int h, bool cmyk = false) {
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  unsigned char* mem = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&c, &mem, &size);
  c.image_width = static_cast<JDIMENSION>(w);
  c.image_height = static_cast<JDIMENSION>(h);
  c.input_components = cmyk ? 4 : 3;
  c.in_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, 85, TRUE);
  jpeg_start_compress(&c, TRUE);
  const auto p = Pixels(w, h, c.input_components);
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(p.data()) + static_cast<size_t>(c.next_scanline) * w * c.input_components;
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  Bytes out(mem, mem + size);
  std::free(mem);
  return out;
}

// A 1 × 1 GIF89a (the classic one-pixel image).
const Bytes kGif = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0, 0x80, 0, 0, 0xFF, 0xFF, 0xFF, 0, 0, 0, '!', 0xF9,
                    4, 1, 0, 0, 0, 0, ',', 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 'D', 1, 0, ';'};

Bytes Cut(const Bytes& b, size_t n) { return Bytes(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n)); }

// The SOF marker's height and width set to h × w.
Bytes JpegClaiming(Bytes b, int h, int w) {
  for (size_t i = 2; i + 9 < b.size(); ++i) {
    if (b[i] == 0xFF && (b[i + 1] == 0xC0 || b[i + 1] == 0xC2)) {
      b[i + 5] = static_cast<uint8_t>(h >> 8); b[i + 6] = static_cast<uint8_t>(h & 0xFF);
      b[i + 7] = static_cast<uint8_t>(w >> 8); b[i + 8] = static_cast<uint8_t>(w & 0xFF);
      break;
    }
  }
  return b;
}

struct BadImage {
  std::string name;
  Bytes bytes;
  std::string reason;  // a part of the message
};

std::vector<BadImage> BadImages() {
  const Bytes png = Png(40, 30), jpg = Jpeg(40, 30), bmp = Bmp(20, 10);
  Bytes huge_png = png;  // IHDR width and height (bytes 16..23) = 30000
  for (int at : {16, 20}) {
    huge_png[at] = 0; huge_png[at + 1] = 0; huge_png[at + 2] = 0x75; huge_png[at + 3] = 0x30;
  }
  Bytes garbled_png = png;
  for (size_t i = 41; i < 41 + 24 && i < garbled_png.size(); ++i) garbled_png[i] ^= 0x5A;
  Bytes garbled_jpg = jpg;
  for (size_t i = jpg.size() / 2; i < jpg.size() / 2 + 200 && i + 2 < jpg.size(); ++i) garbled_jpg[i] = 0xFF;
  const std::string text = "not an image at all";
  return {
      {"empty.png", {}, "empty file"},
      {"text.jpg", Bytes(text.begin(), text.end()), "unknown signature"},
      {"signature_only.png", Cut(png, 8), "PNG"},
      {"truncated.png", Cut(png, png.size() / 2), "PNG"},
      {"garbled.png", garbled_png, "PNG"},
      {"claims_30000x30000.png", huge_png, "PNG"},
      {"soi_only.jpg", Cut(jpg, 3), "JPEG"},
      {"truncated.jpg", Cut(jpg, jpg.size() * 2 / 3), "truncated JPEG"},
      {"garbled.jpg", garbled_jpg, "JPEG"},
      {"claims_30000x30000.jpg", JpegClaiming(jpg, 30000, 30000), "over the limit"},
      {"height_0.jpg", JpegClaiming(jpg, 0, 40), "JPEG"},
      {"cmyk.jpg", Jpeg(16, 16, /*cmyk=*/true), "CMYK"},
      {"truncated.gif", Cut(kGif, kGif.size() - 4), "GIF"},
      {"header_only.gif", Cut(kGif, 6), "GIF"},
      {"truncated.bmp", Cut(bmp, 30), "BMP"},
      {"tiff.jpg", {'I', 'I', 42, 0, 8, 0, 0, 0}, "unknown signature"},
      {"webp.png", {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P'}, "unknown signature"},
  };
}

TEST_CASE("images: the valid files decode, each corrupt one is refused with its reason", "[data][image]") {
  for (const auto& [name, bytes, w, h] : std::vector<std::tuple<std::string, Bytes, int, int>>{
           {"png", Png(40, 30), 40, 30}, {"jpeg", Jpeg(40, 30), 40, 30}, {"bmp", Bmp(20, 10), 20, 10},
           {"gif", kGif, 1, 1}}) {
    INFO(name);
    auto image = data::DecodeImage(bytes);
    REQUIRE(image.ok());
    CHECK(image->width == w);
    CHECK(image->height == h);
  }
  const std::vector<BadImage> table = BadImages();
  REQUIRE(table.size() >= 15);
  for (const BadImage& bad : table) {
    INFO(bad.name);
    auto image = data::DecodeImage(bad.bytes);
    REQUIRE_FALSE(image.ok());
    CHECK_THAT(std::string(image.status().message()), Catch::Contains(bad.reason));
  }
}

void Write(const std::string& path, const std::string& text) { REQUIRE(WriteFileAtomically(path, text).ok()); }

TEST_CASE("captions: every bad line and every bad image is reported with file:line and the reason",
          "[data][image]") {
  const std::string dir = testing::TempDir("bad_captions");
  std::filesystem::create_directories(dir + "/Images");
  const Bytes good = Png(24, 16);
  Write(dir + "/Images/good.png", std::string(good.begin(), good.end()));
  const std::vector<BadImage> table = BadImages();
  std::string captions = "good.png#0\tA good image .\n";
  for (const BadImage& bad : table) {
    Write(dir + "/Images/" + bad.name, std::string(bad.bytes.begin(), bad.bytes.end()));
    captions += bad.name + "#0\tA caption .\n";  // lines 2 … 18
  }
  // Lines 19 … : bad caption lines themselves.
  const std::vector<std::pair<std::string, std::string>> bad_lines = {
      {"good.png#0 no tab here", "expected \"<image>#<n>\\t<caption>\""},
      {"good.png\tno hash", "expected \"<image>#<n>\\t<caption>\""},
      {"good.png#x\tnot a number", "expected \"<image>#<n>\\t<caption>\""},
      {"#0\tno image name", "empty image name"},
      {"good.png#1\t   ", "empty caption"},
      {"good.png#2\tbad \xC3\x28 utf-8", "invalid UTF-8"},
      {"missing.png#0\tno such file", "image file not found"},
      {"../outside.png#0\tout of the folder", "leaves the image folder"},
      {"/etc/hostname#0\tan absolute path", "leaves the image folder"},
  };
  for (const auto& [line, reason] : bad_lines) captions += line + "\n";
  Write(dir + "/captions.txt", captions);
  Write(dir + "/outside.png", std::string(good.begin(), good.end()));

  data::DatasetOptions options;
  options.format = data::Format::kCaptions;
  options.image_dir = dir + "/Images";
  auto dataset = data::Dataset::Open({dir + "/captions.txt"}, options);
  REQUIRE(dataset.ok());
  // The caption lines: bad when read.
  const auto& bad = (*dataset)->bad_records();
  REQUIRE(bad.size() == bad_lines.size());
  for (size_t i = 0; i < bad.size(); ++i) {
    INFO(bad[i].ToString());
    CHECK(bad[i].file == dir + "/captions.txt");
    CHECK(bad[i].line == static_cast<int64_t>(2 + table.size() + i));
    CHECK_THAT(bad[i].reason, Catch::Contains(bad_lines[i].second));
  }
  // The images: bad when decoded (data-check --images, or the collator, which skips them).
  const std::vector<data::BadRecord> images = data::FindUndecodableImages(**dataset);
  REQUIRE(images.size() == table.size());
  for (size_t i = 0; i < images.size(); ++i) {
    INFO(images[i].ToString());
    CHECK(images[i].file == dir + "/captions.txt");
    CHECK(images[i].line == static_cast<int64_t>(2 + i));
    CHECK_THAT(images[i].reason, Catch::Contains(table[i].name));
    CHECK_THAT(images[i].reason, Catch::Contains(table[i].reason));
  }
  CHECK((*dataset)->size() == 1 + static_cast<int64_t>(table.size()));
}

}  // namespace
}  // namespace llmtrain
