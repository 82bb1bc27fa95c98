// Image decoding and Gemma 3's image processor (data/image.h).
#include "llmtrain/data/image.h"

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdlib>
#include <cstdio>
#include <cstring>

// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>
#include <jerror.h>

// stb_image's allocations go through a per-decode cap: a PNG whose zlib stream inflates far past
// what its header's size needs (a decompression bomb: a 1 KiB file, gigabytes of output) fails
// with "outofmem" instead of taking the machine's memory. (Found by tests/fuzz/image_fuzz.)
namespace llmtrain::data::detail {
inline thread_local size_t stb_allocation_cap = 0;  // 0: none (not decoding)
inline void* StbMalloc(size_t n) { return stb_allocation_cap != 0 && n > stb_allocation_cap ? nullptr : std::malloc(n); }
inline void* StbRealloc(void* p, size_t n) {
  return stb_allocation_cap != 0 && n > stb_allocation_cap ? nullptr : std::realloc(p, n);
}
}  // namespace llmtrain::data::detail
#define STBI_MALLOC(n) ::llmtrain::data::detail::StbMalloc(n)
#define STBI_REALLOC(p, n) ::llmtrain::data::detail::StbRealloc(p, n)
#define STBI_FREE(p) std::free(p)
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunused-function"
#elif defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#endif
#include <stb/stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_image_write.h>
#if defined(__clang__)
#pragma clang diagnostic pop
#elif defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/core/threads.h"
#include "llmtrain/data/dataset.h"
#include "nlohmann/json.hpp"

#include <map>
#include <mutex>

namespace llmtrain::data {
namespace {

enum class Kind { kUnknown, kJpeg, kPng, kBmp, kGif };

Kind Sniff(absl::Span<const uint8_t> b) {
  const auto starts = [&](std::initializer_list<uint8_t> sig) {
    return b.size() >= sig.size() && std::equal(sig.begin(), sig.end(), b.begin());
  };
  if (starts({0xFF, 0xD8, 0xFF})) return Kind::kJpeg;
  if (starts({0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'})) return Kind::kPng;
  if (starts({'B', 'M'})) return Kind::kBmp;
  if (starts({'G', 'I', 'F', '8'})) return Kind::kGif;
  return Kind::kUnknown;
}

absl::Status CheckSize(int64_t width, int64_t height, const ImageLimits& limits, const char* kind) {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(kind, ": zero-size image (", width, "×", height, ")"));
  }
  if (width > limits.max_pixels / height) {
    return absl::InvalidArgumentError(absl::StrCat(kind, ": ", width, "×", height, " pixels is over the limit of ",
                                                   limits.max_pixels, " (a decompression bomb or a corrupt header)"));
  }
  return absl::OkStatus();
}

// ---- JPEG through libjpeg-turbo ----

struct JpegErrors {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;
  int corrupt;  // other warnings: corrupt data libjpeg decoded around
};

extern "C" void JpegErrorExit(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

extern "C" void JpegEmitMessage(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace messages
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
    errors->truncated = true;
  } else {
    if (errors->corrupt == 0) (*cinfo->err->format_message)(cinfo, errors->message);
    ++errors->corrupt;
  }
}

// Decodes into *out (owned by the caller, so nothing here needs unwinding when libjpeg jumps).
// Returns an empty string or the reason.
std::string DecodeJpegInto(const uint8_t* data, size_t size, const ImageLimits* limits, RgbImage* out,
                           std::string* size_error) {
  jpeg_decompress_struct cinfo;
  JpegErrors errors;
  std::memset(&errors, 0, sizeof(errors));
  cinfo.err = jpeg_std_error(&errors.mgr);
  errors.mgr.error_exit = JpegErrorExit;
  errors.mgr.emit_message = JpegEmitMessage;
  if (setjmp(errors.jump) != 0) {
    jpeg_destroy_decompress(&cinfo);
    return errors.message;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&cinfo);
    return "CMYK/YCCK JPEG is not supported";
  }
  {  // (a scope: no object with a destructor may be alive when libjpeg jumps back)
    const absl::Status ok = CheckSize(cinfo.image_width, cinfo.image_height, *limits, "JPEG");
    if (!ok.ok()) *size_error = std::string(ok.message());
  }
  if (!size_error->empty()) {
    jpeg_destroy_decompress(&cinfo);
    return *size_error;
  }
  // The pixels, before decoding starts (an allocation failure here unwinds past nothing of libjpeg's
  // but cinfo, which is destroyed).
  try {
    out->width = cinfo.image_width;
    out->height = cinfo.image_height;
    out->pixels.assign(static_cast<size_t>(out->width) * static_cast<size_t>(out->height) * 3, 0);
  } catch (...) {
    jpeg_destroy_decompress(&cinfo);
    return "out of memory for the decoded image";
  }
  cinfo.out_color_space = JCS_RGB;  // libjpeg's defaults otherwise, as Pillow decodes
  jpeg_start_decompress(&cinfo);
  if (cinfo.output_components != 3 || static_cast<int64_t>(cinfo.output_width) != out->width ||
      static_cast<int64_t>(cinfo.output_height) != out->height) {
    jpeg_destroy_decompress(&cinfo);
    return "unexpected JPEG output size";
  }
  while (cinfo.output_scanline < cinfo.output_height && !errors.truncated) {
    JSAMPROW row = out->pixels.data() + static_cast<size_t>(cinfo.output_scanline) * static_cast<size_t>(out->width) * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  if (!errors.truncated) jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  // Pillow refuses a cut file ("image file is truncated") and decodes through libjpeg's other
  // warnings (extraneous bytes before a marker, a bad Huffman code, …): so do we.
  if (errors.truncated) return "truncated JPEG (premature end of data)";
  return "";
}

absl::StatusOr<RgbImage> DecodeJpeg(absl::Span<const uint8_t> bytes, const ImageLimits& limits) {
  RgbImage image;
  std::string size_error;
  const std::string reason = DecodeJpegInto(bytes.data(), bytes.size(), &limits, &image, &size_error);
  if (!size_error.empty()) return absl::InvalidArgumentError(size_error);
  if (!reason.empty()) return absl::InvalidArgumentError(absl::StrCat("JPEG: ", reason));
  return image;
}

// ---- PNG, BMP, GIF through stb_image ----

absl::StatusOr<RgbImage> DecodeStb(absl::Span<const uint8_t> bytes, Kind kind, const ImageLimits& limits) {
  const char* name = kind == Kind::kPng ? "PNG" : kind == Kind::kBmp ? "BMP" : "GIF";
  if (bytes.size() > static_cast<size_t>(INT32_MAX)) return absl::InvalidArgumentError(absl::StrCat(name, ": file too large"));
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int length = static_cast<int>(bytes.size());
  int w = 0, h = 0, comp = 0;
  detail::stb_allocation_cap = size_t{64} << 20;  // headers: small
  if (!stbi_info_from_memory(data, length, &w, &h, &comp)) {
    detail::stb_allocation_cap = 0;
    return absl::InvalidArgumentError(absl::StrCat(name, ": unreadable header (", stbi_failure_reason(), ")"));
  }
  if (absl::Status size = CheckSize(w, h, limits, name); !size.ok()) {
    detail::stb_allocation_cap = 0;
    return size;
  }
  // No buffer of a decode needs more than the image at 16 bits × 4 channels, plus PNG's filter
  // bytes, twice over (stb's zlib output grows by doubling).
  detail::stb_allocation_cap = static_cast<size_t>(w) * static_cast<size_t>(h) * 8 * 2 +
                               static_cast<size_t>(h) * 2 + (size_t{1} << 20);
  struct ResetCap {
    ~ResetCap() { detail::stb_allocation_cap = 0; }
  } reset;
  RgbImage image;
  if (kind == Kind::kPng && stbi_is_16_bit_from_memory(data, length)) {
    // Pillow reads 16-bit grey as I;16 and clips it to 255 in convert("RGB"); the other 16-bit
    // modes it reads as 8 bits (their high bytes).
    int channels = 0;
    stbi_us* raw = stbi_load_16_from_memory(data, length, &w, &h, &channels, 0);
    if (raw == nullptr) return absl::InvalidArgumentError(absl::StrCat(name, ": ", stbi_failure_reason()));
    image.width = w;
    image.height = h;
    image.pixels.resize(static_cast<size_t>(w) * static_cast<size_t>(h) * 3);
    for (size_t i = 0, n = static_cast<size_t>(w) * static_cast<size_t>(h); i < n; ++i) {
      const stbi_us* p = raw + i * static_cast<size_t>(channels);
      for (int c = 0; c < 3; ++c) {
        const stbi_us v = p[channels >= 3 ? c : 0];
        image.pixels[i * 3 + static_cast<size_t>(c)] =
            static_cast<uint8_t>(channels == 1 ? std::min<int>(v, 255) : (v >> 8));
      }
    }
    stbi_image_free(raw);
    return image;
  }
  if (kind == Kind::kGif && bytes.back() != 0x3B) {
    // stb_image decodes a cut GIF without a word (the missing rows stay black); Pillow refuses it.
    return absl::InvalidArgumentError("GIF: truncated (no trailer byte at the end)");
  }
  int channels = 0;
  stbi_uc* raw = stbi_load_from_memory(data, length, &w, &h, &channels, 3);
  if (raw == nullptr) return absl::InvalidArgumentError(absl::StrCat(name, ": ", stbi_failure_reason()));
  image.width = w;
  image.height = h;
  image.pixels.assign(raw, raw + static_cast<size_t>(w) * static_cast<size_t>(h) * 3);
  stbi_image_free(raw);
  return image;
}

// ---- EXIF ----

// Orientation (tag 0x0112) from TIFF-structured EXIF data; 1 when absent or unreadable.
int OrientationFromTiff(absl::Span<const uint8_t> t) {
  if (t.size() < 8) return 1;
  const bool little = t[0] == 'I' && t[1] == 'I';
  if (!little && !(t[0] == 'M' && t[1] == 'M')) return 1;
  const auto u16 = [&](size_t at) -> uint32_t {
    return little ? (t[at] | (t[at + 1] << 8)) : ((t[at] << 8) | t[at + 1]);
  };
  const auto u32 = [&](size_t at) -> uint32_t {
    return little ? (t[at] | (t[at + 1] << 8) | (t[at + 2] << 16) | (static_cast<uint32_t>(t[at + 3]) << 24))
                  : ((static_cast<uint32_t>(t[at]) << 24) | (t[at + 1] << 16) | (t[at + 2] << 8) | t[at + 3]);
  };
  if (u16(2) != 42) return 1;
  const size_t ifd = u32(4);
  if (ifd > t.size() || t.size() - ifd < 2) return 1;
  const size_t entries = u16(ifd);
  for (size_t i = 0; i < entries; ++i) {
    const size_t at = ifd + 2 + i * 12;
    if (at > t.size() || t.size() - at < 12) return 1;
    if (u16(at) != 0x0112) continue;
    const uint32_t type = u16(at + 2);
    const uint32_t value = type == 3 ? u16(at + 8) : type == 4 ? u32(at + 8) : 1;
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

}  // namespace

int ExifOrientation(absl::Span<const uint8_t> b) {
  switch (Sniff(b)) {
    case Kind::kJpeg: {
      // Markers after SOI until the scan: the first APP1 "Exif\0\0" segment.
      size_t at = 2;
      while (at + 4 <= b.size() && b[at] == 0xFF) {
        const uint8_t marker = b[at + 1];
        if (marker == 0xFF) {  // fill byte
          ++at;
          continue;
        }
        if (marker == 0xDA || marker == 0xD9) break;  // start of scan, end of image
        const size_t length = (static_cast<size_t>(b[at + 2]) << 8) | b[at + 3];
        if (length < 2 || b.size() - (at + 2) < length) break;
        const absl::Span<const uint8_t> payload = b.subspan(at + 4, length - 2);
        if (marker == 0xE1 && payload.size() >= 6 && std::memcmp(payload.data(), "Exif\0\0", 6) == 0) {
          return OrientationFromTiff(payload.subspan(6));
        }
        at += 2 + length;
      }
      return 1;
    }
    case Kind::kPng: {  // before or after the image data: Pillow reads the chunks after it too
      size_t at = 8;
      while (at + 12 <= b.size()) {
        const size_t length = (static_cast<size_t>(b[at]) << 24) | (static_cast<size_t>(b[at + 1]) << 16) |
                              (static_cast<size_t>(b[at + 2]) << 8) | b[at + 3];
        if (length > b.size() - at - 12) return 1;
        if (std::memcmp(b.data() + at + 4, "eXIf", 4) == 0) return OrientationFromTiff(b.subspan(at + 8, length));
        at += 12 + length;
      }
      return 1;
    }
    default:
      return 1;
  }
}

RgbImage ApplyOrientation(const RgbImage& in, int orientation) {
  if (orientation < 2 || orientation > 8) return in;
  const int64_t w = in.width, h = in.height;
  const bool swap = orientation >= 5;  // TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90
  RgbImage out;
  out.width = swap ? h : w;
  out.height = swap ? w : h;
  out.pixels.resize(in.pixels.size());
  for (int64_t y = 0; y < out.height; ++y) {
    for (int64_t x = 0; x < out.width; ++x) {
      int64_t sx = x, sy = y;  // the source pixel of output (x, y)
      switch (orientation) {
        case 2: sx = w - 1 - x; break;                       // FLIP_LEFT_RIGHT
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;       // ROTATE_180
        case 4: sy = h - 1 - y; break;                       // FLIP_TOP_BOTTOM
        case 5: sx = y; sy = x; break;                       // TRANSPOSE
        case 6: sx = y; sy = h - 1 - x; break;               // ROTATE_270 (clockwise)
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;       // TRANSVERSE
        case 8: sx = w - 1 - y; sy = x; break;               // ROTATE_90 (counter-clockwise)
        default: break;
      }
      std::memcpy(&out.pixels[static_cast<size_t>((y * out.width + x) * 3)],
                  &in.pixels[static_cast<size_t>((sy * w + sx) * 3)], 3);
    }
  }
  return out;
}

absl::StatusOr<RgbImage> DecodeImage(absl::Span<const uint8_t> bytes, const ImageLimits& limits) {
  if (bytes.empty()) return absl::InvalidArgumentError("empty file");
  if (static_cast<int64_t>(bytes.size()) > limits.max_file_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("file of ", bytes.size(), " bytes is over the limit of ",
                                                   limits.max_file_bytes));
  }
  const Kind kind = Sniff(bytes);
  absl::StatusOr<RgbImage> image;
  switch (kind) {
    case Kind::kJpeg: image = DecodeJpeg(bytes, limits); break;
    case Kind::kPng: case Kind::kBmp: case Kind::kGif: image = DecodeStb(bytes, kind, limits); break;
    case Kind::kUnknown:
      return absl::InvalidArgumentError("not a PNG, JPEG, BMP or GIF file (unknown signature)");
  }
  if (!image.ok()) return image.status();
  return ApplyOrientation(*image, ExifOrientation(bytes));
}

absl::StatusOr<RgbImage> LoadImage(const std::string& path, const ImageLimits& limits) {
  LLMTRAIN_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  auto image = DecodeImage(absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
                           limits);
  if (!image.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", image.status().message()));
  return image;
}

// ---- writing ----
namespace {

void AppendBytes(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
}

}  // namespace

absl::StatusOr<std::string> EncodePng(const RgbImage& image) {
  if (image.width < 1 || image.height < 1 || image.pixels.size() != static_cast<size_t>(image.width * image.height * 3)) {
    return absl::InvalidArgumentError("an empty or inconsistent image");
  }
  std::string bytes;
  if (stbi_write_png_to_func(AppendBytes, &bytes, static_cast<int>(image.width), static_cast<int>(image.height), 3,
                             image.pixels.data(), static_cast<int>(image.width * 3)) == 0) {
    return absl::InternalError("PNG encoding failed");
  }
  return bytes;
}

absl::Status WritePng(const std::string& path, const RgbImage& image) {
  auto bytes = EncodePng(image);
  if (!bytes.ok()) return Annotate(bytes.status(), path);
  return WriteFileAtomically(path, *bytes);
}

absl::Status WriteJpeg(const std::string& path, const RgbImage& image, int quality) {
  if (image.width < 1 || image.height < 1 || image.pixels.size() != static_cast<size_t>(image.width * image.height * 3)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": an empty or inconsistent image"));
  }
  if (image.width > 65500 || image.height > 65500) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": JPEG sides are at most 65500 pixels"));
  }
  jpeg_compress_struct c;
  JpegErrors errors;
  std::memset(&errors, 0, sizeof(errors));
  c.err = jpeg_std_error(&errors.mgr);
  errors.mgr.error_exit = JpegErrorExit;  // not libjpeg's default, which exits the process
  errors.mgr.emit_message = JpegEmitMessage;
  unsigned char* mem = nullptr;
  unsigned long size = 0;
  if (setjmp(errors.jump) != 0) {
    // (`mem` may have changed since setjmp: it is not freed here; this path is out of memory only.)
    jpeg_destroy_compress(&c);
    return absl::InternalError(absl::StrCat(path, ": JPEG encoding failed: ", errors.message));
  }
  jpeg_create_compress(&c);
  jpeg_mem_dest(&c, &mem, &size);
  c.image_width = static_cast<JDIMENSION>(image.width);
  c.image_height = static_cast<JDIMENSION>(image.height);
  c.input_components = 3;
  c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, std::clamp(quality, 1, 100), TRUE);
  jpeg_start_compress(&c, TRUE);
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(image.pixels.data()) + static_cast<size_t>(c.next_scanline) * image.width * 3;
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  const std::string bytes(reinterpret_cast<const char*>(mem), size);
  std::free(mem);
  return WriteFileAtomically(path, bytes);
}

// ---- Pillow's bilinear resize (libImaging/Resample.c) ----
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS

struct Coefficients {
  int ksize = 0;
  std::vector<int> bounds;  // per output: first input index, count
  std::vector<int32_t> k;   // per output: ksize fixed-point weights
};

// precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter, support 1.
Coefficients Precompute(int64_t in_size, int64_t out_size) {
  const double scale = static_cast<double>(static_cast<float>(in_size)) / static_cast<double>(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(static_cast<size_t>(out_size) * 2);
  c.k.assign(static_cast<size_t>(out_size) * static_cast<size_t>(c.ksize), 0);
  std::vector<double> kk(static_cast<size_t>(c.ksize));
  for (int64_t xx = 0; xx < out_size; ++xx) {
    const double center = (static_cast<double>(xx) + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = static_cast<int>(in_size);
    xmax -= xmin;
    double ww = 0.0;
    std::fill(kk.begin(), kk.end(), 0.0);
    for (int x = 0; x < xmax; ++x) {
      double t = (x + xmin - center + 0.5) * ss;
      if (t < 0.0) t = -t;
      const double w = t < 1.0 ? 1.0 - t : 0.0;
      kk[static_cast<size_t>(x)] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) kk[static_cast<size_t>(x)] /= ww;
    }
    for (int x = 0; x < c.ksize; ++x) {
      const double v = kk[static_cast<size_t>(x)] * (1 << kPrecisionBits);
      c.k[static_cast<size_t>(xx * c.ksize + x)] = static_cast<int32_t>(v < 0 ? -0.5 + v : 0.5 + v);
    }
    c.bounds[static_cast<size_t>(xx * 2)] = xmin;
    c.bounds[static_cast<size_t>(xx * 2 + 1)] = xmax;
  }
  return c;
}

inline uint8_t Clip8(int32_t v) {
  const int32_t s = v >> kPrecisionBits;
  return static_cast<uint8_t>(s < 0 ? 0 : (s > 255 ? 255 : s));
}

}  // namespace

namespace {

// One horizontal pass: every row of `in` (or rows [first, first + rows)) to `width` columns.
RgbImage HorizontalPass(const RgbImage& in, const Coefficients& c, int64_t width, int64_t first, int64_t rows) {
  RgbImage out;
  out.width = width;
  out.height = rows;
  out.pixels.resize(static_cast<size_t>(width * rows * 3));
  for (int64_t y = 0; y < rows; ++y) {
    const uint8_t* row = in.pixels.data() + static_cast<size_t>((y + first) * in.width * 3);
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(y * width * 3);
    for (int64_t xx = 0; xx < width; ++xx) {
      const int xmin = c.bounds[static_cast<size_t>(xx * 2)], xmax = c.bounds[static_cast<size_t>(xx * 2 + 1)];
      const int32_t* k = c.k.data() + xx * c.ksize;
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < xmax; ++x) {
        const uint8_t* p = row + (x + xmin) * 3;
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      dst[xx * 3 + 0] = Clip8(s0);
      dst[xx * 3 + 1] = Clip8(s1);
      dst[xx * 3 + 2] = Clip8(s2);
    }
  }
  return out;
}

// acc[i] += src[i] · k over a row: AVX2's 32-bit multiplies where the CPU has them (generic
// x86-64 code has no packed 32-bit multiply); integer arithmetic, the same sums either way.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("avx2", "default")))
#endif
void AddScaledRow(int32_t* acc, const uint8_t* src, int32_t k,
                                                                     int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += src[i] * k;
}

// One vertical pass: `in` to `height` rows; bounds are row indices of `in`.
RgbImage VerticalPass(const RgbImage& in, const Coefficients& c, int64_t height) {
  RgbImage out;
  out.width = in.width;
  out.height = height;
  out.pixels.resize(static_cast<size_t>(in.width * height * 3));
  const int64_t stride = in.width * 3;
  // Row by row: each tap adds a whole input row into the output row's sums (contiguous, so the
  // compiler vectorizes it); integer sums, so the order of the taps changes nothing.
  std::vector<int32_t> sums(static_cast<size_t>(stride));
  for (int64_t yy = 0; yy < height; ++yy) {
    const int ymin = c.bounds[static_cast<size_t>(yy * 2)], ymax = c.bounds[static_cast<size_t>(yy * 2 + 1)];
    const int32_t* k = c.k.data() + yy * c.ksize;
    int32_t* acc = sums.data();
    std::fill(sums.begin(), sums.end(), int32_t{1} << (kPrecisionBits - 1));
    for (int y = 0; y < ymax; ++y) {
      AddScaledRow(acc, in.pixels.data() + static_cast<size_t>((y + ymin) * stride), k[y], stride);
    }
    uint8_t* row = out.pixels.data() + static_cast<size_t>(yy * stride);
    for (int64_t i = 0; i < stride; ++i) row[i] = Clip8(acc[i]);
  }
  return out;
}

}  // namespace

RgbImage ResizeBilinear(const RgbImage& in, int64_t width, int64_t height) {
  if (width == in.width && height == in.height) return in;  // Pillow returns a copy
  const bool need_horizontal = width != in.width;
  const bool need_vertical = height != in.height;
  const Coefficients horiz = Precompute(in.width, width);
  Coefficients vert = Precompute(in.height, height);
  if (!need_horizontal) return VerticalPass(in, vert, height);
  if (!need_vertical) return HorizontalPass(in, horiz, width, 0, in.height);
  // Pillow 13 resizes vertically first when the height loses more than twice the pixels the
  // width loses (python-pillow/Pillow#9549); ties and every other case go horizontally first.
  // The order changes the 8-bit rounding between the passes, so it must be the same.
  if (height < in.height && (in.height - height) > 2 * (in.width - width)) {
    return HorizontalPass(VerticalPass(in, vert, height), horiz, width, 0, height);
  }
  // Horizontally first, only over the rows the vertical pass reads.
  const int ybox_first = vert.bounds[0];
  const int ybox_last = vert.bounds[static_cast<size_t>(height * 2 - 2)] + vert.bounds[static_cast<size_t>(height * 2 - 1)];
  for (int64_t i = 0; i < height; ++i) vert.bounds[static_cast<size_t>(i * 2)] -= ybox_first;
  return VerticalPass(HorizontalPass(in, horiz, width, ybox_first, ybox_last - ybox_first), vert, height);
}

// ---- the processor ----

absl::StatusOr<ImageProcessorConfig> ParseImageProcessorConfig(absl::string_view text, absl::string_view where) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  const auto bad = [&](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", field, ": ", why));
  };
  if (!j.is_object()) return bad("(file)", "expected a JSON object");
  ImageProcessorConfig c;
  const auto flag = [&](const char* key, bool* out) -> absl::Status {
    if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
    if (!j[key].is_boolean()) return bad(key, "expected true or false");
    *out = j[key].get<bool>();
    return absl::OkStatus();
  };
  LLMTRAIN_RETURN_IF_ERROR(flag("do_resize", &c.do_resize));
  LLMTRAIN_RETURN_IF_ERROR(flag("do_rescale", &c.do_rescale));
  LLMTRAIN_RETURN_IF_ERROR(flag("do_normalize", &c.do_normalize));
  bool pan_and_scan = false;
  LLMTRAIN_RETURN_IF_ERROR(flag("do_pan_and_scan", &pan_and_scan));
  if (pan_and_scan) return bad("do_pan_and_scan", "true is not supported (Gemma 3's default is off)");
  if (j.contains("size") && !j["size"].is_null()) {
    const nlohmann::json& s = j["size"];
    if (s.is_object() && s.contains("height") && s.contains("width") && s["height"].is_number_integer() &&
        s["width"].is_number_integer()) {
      c.height = s["height"].get<int64_t>();
      c.width = s["width"].get<int64_t>();
    } else if (s.is_number_integer()) {
      c.height = c.width = s.get<int64_t>();
    } else {
      return bad("size", "expected {\"height\": H, \"width\": W}");
    }
    if (c.height < 1 || c.width < 1 || c.height > 16384 || c.width > 16384) {
      return bad("size", absl::StrCat(c.height, "×", c.width, " is outside [1, 16384]"));
    }
  }
  if (j.contains("resample") && !j["resample"].is_null() &&
      (!j["resample"].is_number_integer() || j["resample"].get<int>() != 2)) {
    return bad("resample", absl::StrCat(j["resample"].dump(), ": only 2 (bilinear, Gemma 3's) is supported"));
  }
  if (j.contains("rescale_factor") && !j["rescale_factor"].is_null()) {
    if (!j["rescale_factor"].is_number()) return bad("rescale_factor", "expected a number");
    c.rescale_factor = j["rescale_factor"].get<double>();
  }
  for (const auto& [key, out] : {std::pair<const char*, std::array<double, 3>*>{"image_mean", &c.image_mean},
                                 {"image_std", &c.image_std}}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const nlohmann::json& v = j[key];
    if (v.is_number()) {
      out->fill(v.get<double>());
    } else if (v.is_array() && v.size() == 3 && v[0].is_number() && v[1].is_number() && v[2].is_number()) {
      for (size_t i = 0; i < 3; ++i) (*out)[i] = v[i].get<double>();
    } else {
      return bad(key, "expected a number or three numbers");
    }
  }
  for (double s : c.image_std) {
    if (!(s > 0)) return bad("image_std", "every value must be > 0");
  }
  return c;
}

absl::StatusOr<ImageProcessorConfig> LoadImageProcessorConfig(const std::string& path) {
  const std::string file = IsDirectory(path) ? path + "/preprocessor_config.json" : path;
  LLMTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(file));
  return ParseImageProcessorConfig(text, file);
}

ImageProcessorConfig DefaultImageProcessor(int64_t image_size) {
  ImageProcessorConfig c;
  c.height = c.width = image_size;
  return c;
}

std::vector<float> PreprocessImage(const RgbImage& image, const ImageProcessorConfig& config) {
  const RgbImage resized = config.do_resize ? ResizeBilinear(image, config.width, config.height) : image;
  // uint8 → float64 · factor → float32, then (x − mean) / std in float32 (numpy's order), as one
  // table per channel.
  float table[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      float x = config.do_rescale ? static_cast<float>(static_cast<double>(v) * config.rescale_factor)
                                  : static_cast<float>(v);
      if (config.do_normalize) {
        x = (x - static_cast<float>(config.image_mean[static_cast<size_t>(c)])) /
            static_cast<float>(config.image_std[static_cast<size_t>(c)]);
      }
      table[c][v] = x;
    }
  }
  const size_t plane = static_cast<size_t>(resized.width * resized.height);
  std::vector<float> out(plane * 3);
  for (size_t c = 0; c < 3; ++c) {  // plane by plane: the writes are contiguous
    const uint8_t* src = resized.pixels.data() + c;
    const float* t = table[c];
    float* dst = out.data() + c * plane;
    for (size_t i = 0; i < plane; ++i) dst[i] = t[src[i * 3]];
  }
  return out;
}

std::vector<BadRecord> FindUndecodableImages(const Dataset& data, const ImageLimits& limits) {
  std::vector<BadRecord> bad;
  // Which records use which image (Get resolves the paths; it fails only if the file changed).
  std::map<std::string, std::vector<int64_t>> users;
  for (int64_t i = 0; i < data.size(); ++i) {
    auto example = data.Get(i);
    if (!example.ok()) continue;
    for (const std::string& image : example->images) users[image].push_back(i);
  }
  std::vector<std::string> paths;
  for (const auto& [path, unused] : users) paths.push_back(path);
  std::vector<std::string> reasons(paths.size());
  ParallelFor(static_cast<int64_t>(paths.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      auto image = LoadImage(paths[static_cast<size_t>(i)], limits);
      if (!image.ok()) reasons[static_cast<size_t>(i)] = std::string(image.status().message());
    }
  });
  std::vector<std::pair<int64_t, std::string>> found;  // (record, reason)
  for (size_t i = 0; i < paths.size(); ++i) {
    if (reasons[i].empty()) continue;
    for (int64_t record : users[paths[i]]) found.emplace_back(record, reasons[i]);
  }
  std::sort(found.begin(), found.end());
  // One bad record per record (its first bad image), however many of its images fail.
  found.erase(std::unique(found.begin(), found.end(),
                          [](const auto& a, const auto& b) { return a.first == b.first; }),
              found.end());
  for (const auto& [record, reason] : found) {
    auto example = data.Get(record);
    const std::string where = example.ok() ? example->where : std::string();
    const size_t colon = where.rfind(':');
    BadRecord b;
    b.file = colon == std::string::npos ? where : where.substr(0, colon);
    b.line = colon == std::string::npos ? 0 : std::stoll(where.substr(colon + 1));
    b.reason = reason;
    bad.push_back(std::move(b));
  }
  return bad;
}

}  // namespace llmtrain::data
