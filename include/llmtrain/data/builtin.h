// The default instruction data set, built at run time from real text every machine of this kind
// has: the Debian package database. Each installed package becomes one Dolly record whose
// instruction asks what the package is for and whose response is the package's own description
// (its synopsis and long description, with Debian's " ." paragraph marks turned into blank lines).
// The builder ships, not the text; the records come from the machine it runs on.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(int64_t n, data::BuildDebianPackageDataset("/var/lib/dpkg/status",
//                                                                        "debian_packages.jsonl"));
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llmtrain::data {

constexpr char kDpkgStatusPath[] = "/var/lib/dpkg/status";

/// One package of the dpkg status file: its name, section, synopsis (the Description line) and the
/// continuation lines of its long description (leading space removed; "." marks a paragraph).
struct DebianPackage {
  std::string name, section, synopsis;
  std::vector<std::string> long_lines;
};

/// The packages of a dpkg status file that have a description, sorted by name (a name listed twice
/// keeps its last entry). Errors when the file is missing or describes no package.
absl::StatusOr<std::vector<DebianPackage>> ReadDpkgStatus(absl::string_view status_path);

/// Writes Dolly-format JSONL ({"instruction", "context", "response", "category"}) to `output`
/// (atomically), one record per package of the dpkg status file, sorted by package name. Returns
/// the number of records. Errors when the status file is missing or describes no package.
absl::StatusOr<int64_t> BuildDebianPackageDataset(absl::string_view status_path, absl::string_view output);

/// The default image-caption set, generated: `images` pictures of one or two coloured shapes
/// (circle, square, triangle; red, green, blue, yellow, white, black) at named places (left,
/// right, top, bottom, centre) on a plain background, saved as PNG and JPEG (every third one) in
/// `dir`/Images, with Flickr8K's files: `dir`/Flickr8k.token.txt (five captions per image,
/// "name#k<TAB>caption", each caption true of the picture, so it can be learned from the pixels)
/// and the split lists Flickr_8k.trainImages.txt / devImages.txt (one image in ten for dev).
/// Deterministic for a seed. Returns the number of caption lines.
absl::StatusOr<int64_t> BuildShapesCaptionDataset(absl::string_view dir, int64_t images, uint64_t seed = 0);

}  // namespace llmtrain::data
