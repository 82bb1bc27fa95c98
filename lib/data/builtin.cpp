#include "llmtrain/data/builtin.h"

#include <algorithm>
#include <cstdlib>
#include <random>
#include <map>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/data/image.h"
#include "nlohmann/json.hpp"

namespace llmtrain::data {
namespace {

// A deterministic choice of phrasing per package, so the questions are not all the same.
const char* Question(absl::string_view name) {
  static const char* kTemplates[] = {"What is the Debian package %s for?", "What does the %s package do?",
                                     "Describe the Debian package %s.", "What is %s, as packaged in Debian?"};
  size_t h = 1469598103934665603ull;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return kTemplates[h % 4];
}

std::string Response(const DebianPackage& p) {
  std::string synopsis = p.synopsis;
  if (!synopsis.empty()) synopsis[0] = absl::ascii_toupper(static_cast<unsigned char>(synopsis[0]));
  if (!synopsis.empty() && synopsis.back() != '.') synopsis += '.';
  std::string out = absl::StrCat(p.name, ": ", synopsis);
  std::string paragraph;
  auto flush = [&] {
    if (!paragraph.empty()) absl::StrAppend(&out, "\n\n", paragraph);
    paragraph.clear();
  };
  for (const std::string& line : p.long_lines) {
    if (line == ".") {
      flush();
    } else if (absl::StartsWith(line, " ")) {  // preformatted (lists, code): keep the line as is
      absl::StrAppend(&paragraph, paragraph.empty() ? "" : "\n", line);
    } else {
      absl::StrAppend(&paragraph, paragraph.empty() ? "" : " ", line);
    }
  }
  flush();
  return out;
}

}  // namespace

absl::StatusOr<std::vector<DebianPackage>> ReadDpkgStatus(absl::string_view status_path) {
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(status_path));
  std::map<std::string, DebianPackage> packages;
  DebianPackage current;
  bool in_description = false;
  auto finish = [&] {
    if (!current.name.empty() && !current.synopsis.empty()) packages[current.name] = current;
    current = DebianPackage();
    in_description = false;
  };
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
    if (line.empty()) {
      finish();
      continue;
    }
    if (line[0] == ' ' || line[0] == '\t') {
      if (in_description) current.long_lines.emplace_back(line.substr(1));
      continue;
    }
    in_description = false;
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    const absl::string_view key = line.substr(0, colon);
    const absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
    if (key == "Package") current.name = std::string(value);
    if (key == "Section") current.section = std::string(value);
    if (key == "Description") {
      current.synopsis = std::string(value);
      in_description = true;
    }
  }
  finish();
  if (packages.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(status_path, ": no package with a description found"));
  }
  std::vector<DebianPackage> out;
  out.reserve(packages.size());
  for (auto& [name, p] : packages) out.push_back(std::move(p));
  return out;
}

absl::StatusOr<int64_t> BuildDebianPackageDataset(absl::string_view status_path, absl::string_view output) {
  LLMTRAIN_ASSIGN_OR_RETURN(const std::vector<DebianPackage> packages, ReadDpkgStatus(status_path));
  std::string jsonl;
  for (const DebianPackage& p : packages) {
    char question[512];
    std::snprintf(question, sizeof(question), Question(p.name), p.name.c_str());
    const nlohmann::json record = {{"instruction", question},
                                   {"context", ""},
                                   {"response", Response(p)},
                                   {"category", "open_qa"}};
    absl::StrAppend(&jsonl, record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "\n");
  }
  LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(output, jsonl));
  return static_cast<int64_t>(packages.size());
}

namespace {

struct Shape {
  const char* kind;   // circle, square, triangle
  const char* color;  // its name
  uint8_t rgb[3];
  const char* place;  // left, right, top, bottom, centre
  int cx, cy;         // its centre on a 128 × 96 canvas
};

constexpr struct {
  const char* name;
  uint8_t rgb[3];
} kColors[] = {{"red", {214, 40, 40}}, {"green", {46, 160, 67}}, {"blue", {45, 85, 200}},
               {"yellow", {236, 200, 40}}, {"white", {245, 245, 245}}, {"black", {20, 20, 20}}};
constexpr const char* kKinds[] = {"circle", "square", "triangle"};
constexpr struct {
  const char* name;
  int cx, cy;
} kPlaces[] = {{"left", 30, 48}, {"right", 98, 48}, {"top", 64, 22}, {"bottom", 64, 74}, {"centre", 64, 48}};

bool Inside(const Shape& s, int x, int y, int r) {
  const int dx = x - s.cx, dy = y - s.cy;
  if (std::string(s.kind) == "circle") return dx * dx + dy * dy <= r * r;
  if (std::string(s.kind) == "square") return std::abs(dx) <= r * 8 / 10 && std::abs(dy) <= r * 8 / 10;
  // An upright triangle: apex at the top, base at the bottom.
  return dy <= r * 8 / 10 && dy >= -r && std::abs(dx) * 2 <= (dy + r) * 9 / 10;
}

}  // namespace

absl::StatusOr<int64_t> BuildShapesCaptionDataset(absl::string_view dir_view, int64_t images, uint64_t seed) {
  if (images < 1) return absl::InvalidArgumentError(absl::StrCat("images: expected ≥ 1, found ", images));
  const std::string dir(dir_view);
  LLMTRAIN_RETURN_IF_ERROR(MakeDirectories(dir + "/Images"));
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 1);
  const auto pick = [&](uint64_t n) { return static_cast<int>(rng() % n); };
  std::string tokens, train, dev;
  int64_t lines = 0;
  for (int64_t i = 0; i < images; ++i) {
    const int background = 96 + pick(80);
    std::vector<Shape> shapes;
    const int count = 1 + (pick(3) == 0 ? 1 : 0);
    while (static_cast<int>(shapes.size()) < count) {
      const auto& c = kColors[pick(6)];
      const auto& p = kPlaces[pick(5)];
      bool clash = false;
      for (const Shape& s : shapes) clash = clash || std::string(s.place) == p.name || std::string(s.color) == c.name;
      if (clash || (count == 2 && std::string(p.name) == "centre")) continue;
      Shape s{kKinds[pick(3)], c.name, {c.rgb[0], c.rgb[1], c.rgb[2]}, p.name, p.cx, p.cy};
      shapes.push_back(s);
    }
    RgbImage image;
    image.width = 128;
    image.height = 96;
    image.pixels.assign(static_cast<size_t>(128 * 96 * 3), static_cast<uint8_t>(background));
    for (int y = 0; y < 96; ++y) {
      for (int x = 0; x < 128; ++x) {
        uint8_t* px = &image.pixels[static_cast<size_t>((y * 128 + x) * 3)];
        const int noise = static_cast<int>(rng() % 9) - 4;  // a little texture, as photos have
        for (int k = 0; k < 3; ++k) px[k] = static_cast<uint8_t>(std::clamp(background + noise, 0, 255));
        for (const Shape& s : shapes) {
          if (Inside(s, x, y, 18)) std::copy(s.rgb, s.rgb + 3, px);
        }
      }
    }
    const bool jpeg = i % 3 == 2;
    const std::string name = absl::StrFormat("shapes_%04d.%s", i, jpeg ? "jpg" : "png");
    LLMTRAIN_RETURN_IF_ERROR(jpeg ? WriteJpeg(dir + "/Images/" + name, image, 92) : WritePng(dir + "/Images/" + name, image));
    // Five true captions, in Flickr8K's style (lower case after the first word, " ." at the end).
    const Shape& a = shapes[0];
    std::vector<std::string> captions;
    if (shapes.size() == 1) {
      captions = {absl::StrFormat("A %s %s on the %s .", a.color, a.kind, a.place),
                  absl::StrFormat("A %s %s .", a.color, a.kind),
                  absl::StrFormat("There is a %s %s on a grey background .", a.color, a.kind),
                  absl::StrFormat("The %s is %s .", a.kind, a.color),
                  absl::StrFormat("One %s shape at the %s .", a.color, a.place)};
    } else {
      const Shape& b = shapes[1];
      captions = {absl::StrFormat("A %s %s on the %s and a %s %s on the %s .", a.color, a.kind, a.place, b.color,
                                  b.kind, b.place),
                  absl::StrFormat("A %s %s and a %s %s .", a.color, a.kind, b.color, b.kind),
                  absl::StrFormat("Two shapes : a %s %s and a %s %s .", a.color, a.kind, b.color, b.kind),
                  absl::StrFormat("The %s %s is at the %s .", b.color, b.kind, b.place),
                  absl::StrFormat("A %s shape and a %s shape on a grey background .", a.color, b.color)};
    }
    for (size_t k = 0; k < captions.size(); ++k) {
      absl::StrAppend(&tokens, name, "#", k, "\t", captions[k], "\n");
      ++lines;
    }
    absl::StrAppend(i % 10 == 9 ? &dev : &train, name, "\n");
  }
  LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(dir + "/Flickr8k.token.txt", tokens));
  LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(dir + "/Flickr_8k.trainImages.txt", train));
  LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(dir + "/Flickr_8k.devImages.txt", dev));
  return lines;
}

}  // namespace llmtrain::data
