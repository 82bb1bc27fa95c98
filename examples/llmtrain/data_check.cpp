// llmtrain data-check --data FILE [--data FILE ...] [--format auto|dolly|alpaca|messages|sharegpt|text|captions]
//                     [--tokenizer PATH] [--max-length N] [--max-bad-fraction 0.01] [--json]
// Reads the files as training would: prints the detected format, counts, every bad record with
// file:line and reason, and with --tokenizer token-length statistics of the rendered examples.
// Exit status 1 when the bad records are over --max-bad-fraction.
//
// llmtrain make-default-dataset --output FILE [--status /var/lib/dpkg/status]
// Builds the default instruction data (Dolly JSONL) from this machine's Debian package database.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/data/builtin.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/data/image.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain data-check --data FILE [--data FILE ...] [--format auto] [--tokenizer PATH]\n"
    "                           [--max-length N] [--max-bad-fraction 0.01] [--json]\n"
    "                           [--images DIR] [--image-list FILE]\n"
    "  formats: auto, dolly, alpaca, messages, sharegpt, text, captions (Flickr8K token file).\n"
    "  --tokenizer: also tokenize every example (chat template of the tokenizer's family) and print\n"
    "  token-length statistics; --max-length counts the examples longer than N tokens.\n"
    "  --images DIR: the folder image paths are relative to (Flickr8K's image folder; default: each\n"
    "  data file's folder); every image is decoded, and a record whose image is missing, outside\n"
    "  the folder or undecodable is a bad record with file:line and the reason. --image-list: a\n"
    "  Flickr8K split list (Flickr_8k.trainImages.txt); captions of other images are left out.\n";

constexpr char kMakeHelp[] =
    "usage: llmtrain make-default-dataset --output FILE [--status /var/lib/dpkg/status]\n"
    "       llmtrain make-default-dataset --vlm --output DIR [--images 400] [--seed 0]\n"
    "  One Dolly record per installed Debian package: what the package is for, answered with its\n"
    "  description. With --vlm: a Flickr8K-format image-caption set in DIR (Images/,\n"
    "  Flickr8k.token.txt, Flickr_8k.trainImages.txt and devImages.txt): pictures of one or two\n"
    "  coloured shapes at named places, PNG and JPEG, five true captions each.\n";

double Percentile(std::vector<int64_t> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return static_cast<double>(v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))]);
}

}  // namespace

int RunDataCheck(const std::vector<std::string>& args) {
  std::vector<std::string> files;
  std::string tokenizer_path;
  data::DatasetOptions options;
  double max_bad = 0.01;
  int64_t max_length = 0;
  bool as_json = false;
  bool check_images = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--json") {
      as_json = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("data-check", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& v = args[++i];
    if (a == "--data") {
      files.push_back(v);
    } else if (a == "--format") {
      auto format = data::ParseFormat(v);
      if (!format.ok()) return Fail("data-check", std::string(format.status().message()), 2);
      options.format = *format;
    } else if (a == "--tokenizer") {
      tokenizer_path = v;
    } else if (a == "--images") {
      options.image_dir = v;
      check_images = true;
    } else if (a == "--image-list") {
      options.image_list = v;
    } else if (a == "--max-bad-fraction") {
      if (!absl::SimpleAtod(v, &max_bad) || max_bad < 0 || max_bad > 1) {
        return Fail("data-check", "--max-bad-fraction: expected a number in [0, 1]", 2);
      }
    } else if (a == "--max-length") {
      if (!absl::SimpleAtoi(v, &max_length) || max_length <= 0) return Fail("data-check", "--max-length: expected N > 0", 2);
    } else {
      return Fail("data-check", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
  }
  if (files.empty()) return Fail("data-check", absl::StrCat("--data is required\n", kHelp), 2);
  auto dataset = data::Dataset::Open(files, options);
  if (!dataset.ok()) return Fail("data-check", std::string(dataset.status().message()));
  const data::Dataset& d = **dataset;
  // Images: each distinct one decoded once; a record with one that does not decode is bad.
  std::vector<data::BadRecord> bad_images;
  int64_t with_images = 0;
  for (int64_t i = 0; i < d.size(); ++i) {
    auto example = d.Get(i);
    with_images += example.ok() && !example->images.empty();
  }
  if (check_images || with_images > 0) bad_images = data::FindUndecodableImages(d);

  nlohmann::json out = {{"format", std::string(data::FormatName(d.format()))},
                        {"format_reason", d.format_reason()},
                        {"records", d.total_records()},
                        {"used", d.size()},
                        {"bad", d.bad_records().size()}};
  nlohmann::json bad = nlohmann::json::array();
  for (const auto& b : d.bad_records()) bad.push_back({{"file", b.file}, {"line", b.line}, {"reason", b.reason}});
  for (const auto& b : bad_images) bad.push_back({{"file", b.file}, {"line", b.line}, {"reason", b.reason}});
  out["bad_records"] = bad;
  out["bad"] = bad.size();
  out["used"] = d.size() - static_cast<int64_t>(bad_images.size());
  out["records_with_images"] = with_images;
  out["bad_images"] = bad_images.size();
  if (!tokenizer_path.empty()) {
    auto tok = tokenizer::Tokenizer::Load(tokenizer_path);
    if (!tok.ok()) return Fail("data-check", std::string(tok.status().message()));
    auto chat = tokenizer::ChatTemplate::ForTokenizer(**tok);
    std::vector<int64_t> lengths, targets;
    int64_t failed = 0;
    for (int64_t i = 0; i < d.size(); ++i) {
      auto example = d.Get(i);
      if (!example.ok()) continue;
      if (!example->messages.empty()) {
        if (!chat.ok()) return Fail("data-check", std::string(chat.status().message()));
        auto encoded = tokenizer::EncodeChat(**tok, **chat, example->messages, false);
        if (!encoded.ok()) {
          ++failed;
          std::fprintf(stderr, "%s: %s\n", example->where.c_str(), std::string(encoded.status().message()).c_str());
          continue;
        }
        lengths.push_back(static_cast<int64_t>(encoded->ids.size()));
        int64_t n = 0;
        for (uint8_t m : encoded->assistant_mask) n += m;
        targets.push_back(n);
      } else {
        const auto ids = (*tok)->Encode(example->text);
        lengths.push_back(static_cast<int64_t>(ids.size()));
        targets.push_back(static_cast<int64_t>(ids.size()));
      }
    }
    int64_t total = 0, target_total = 0, over = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      total += lengths[i];
      target_total += targets[i];
      over += max_length > 0 && lengths[i] > max_length;
    }
    out["tokens"] = {{"examples", lengths.size()},
                     {"total", total},
                     {"target_tokens", target_total},
                     {"min", lengths.empty() ? 0 : *std::min_element(lengths.begin(), lengths.end())},
                     {"mean", lengths.empty() ? 0.0 : static_cast<double>(total) / lengths.size()},
                     {"p50", Percentile(lengths, 0.5)},
                     {"p95", Percentile(lengths, 0.95)},
                     {"max", lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end())},
                     {"template_errors", failed}};
    if (max_length > 0) out["tokens"]["over_max_length"] = over;
  }
  const int64_t n_bad = static_cast<int64_t>(d.bad_records().size() + bad_images.size());
  const bool within_limit = d.total_records() > 0 && n_bad <= max_bad * static_cast<double>(d.total_records()) &&
                            d.size() > static_cast<int64_t>(bad_images.size());
  const absl::Status within = within_limit ? absl::OkStatus() : absl::InvalidArgumentError("over the limit");
  out["within_bad_fraction"] = within.ok();
  if (as_json) {
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("%s\n", d.Summary().c_str());
    for (const auto& b : d.bad_records()) std::printf("bad record %s\n", b.ToString().c_str());
    if (with_images > 0) {
      std::printf("images: %lld records with images, %zu with an image that does not decode\n",
                  static_cast<long long>(with_images), bad_images.size());
    }
    for (const auto& b : bad_images) std::printf("bad record %s\n", b.ToString().c_str());
    if (out.contains("tokens")) {
      const auto& t = out["tokens"];
      std::printf("tokens per example: min %lld, mean %.1f, p50 %.0f, p95 %.0f, max %lld; %lld in all, %lld to train on\n",
                  t["min"].get<long long>(), t["mean"].get<double>(), t["p50"].get<double>(), t["p95"].get<double>(),
                  t["max"].get<long long>(), t["total"].get<long long>(), t["target_tokens"].get<long long>());
      if (max_length > 0) {
        std::printf("examples over --max-length %lld: %lld\n", static_cast<long long>(max_length),
                    t["over_max_length"].get<long long>());
      }
    }
    if (!within.ok()) std::printf("over the bad-record limit of %.2f%%\n", 100.0 * max_bad);
  }
  return within.ok() ? 0 : 1;
}

int RunMakeDefaultDataset(const std::vector<std::string>& args) {
  std::string output, status = data::kDpkgStatusPath;
  bool vlm = false;
  int64_t images = 400;
  uint64_t seed = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      std::fputs(kMakeHelp, stdout);
      return 0;
    }
    if (args[i] == "--vlm") {
      vlm = true;
      continue;
    }
    if ((args[i] == "--images" || args[i] == "--seed") && i + 1 < args.size()) {
      const bool ok = args[i] == "--images" ? absl::SimpleAtoi(args[i + 1], &images) && images >= 1
                                            : absl::SimpleAtoi(args[i + 1], &seed);
      if (!ok) return Fail("make-default-dataset", absl::StrCat(args[i], ": expected a positive integer"), 2);
      ++i;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("make-default-dataset", absl::StrCat(args[i], " needs a value\n", kMakeHelp), 2);
    if (args[i] == "--output") {
      output = args[++i];
    } else if (args[i] == "--status") {
      status = args[++i];
    } else {
      return Fail("make-default-dataset", absl::StrCat("unknown option ", args[i], "\n", kMakeHelp), 2);
    }
  }
  if (output.empty()) return Fail("make-default-dataset", absl::StrCat("--output is required\n", kMakeHelp), 2);
  if (vlm) {
    auto lines = data::BuildShapesCaptionDataset(output, images, seed);
    if (!lines.ok()) return Fail("make-default-dataset", std::string(lines.status().message()));
    std::printf("%s: %lld images, %lld captions (Flickr8K layout: Images/, Flickr8k.token.txt, "
                "Flickr_8k.trainImages.txt, Flickr_8k.devImages.txt)\n",
                output.c_str(), static_cast<long long>(images), static_cast<long long>(*lines));
    return 0;
  }
  auto n = data::BuildDebianPackageDataset(status, output);
  if (!n.ok()) return Fail("make-default-dataset", std::string(n.status().message()));
  std::printf("%s: %lld Dolly records from %s\n", output.c_str(), static_cast<long long>(*n), status.c_str());
  return 0;
}

}  // namespace llmtrain::cli
