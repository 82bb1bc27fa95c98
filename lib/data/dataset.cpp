#include "llmtrain/data/dataset.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <map>
#include <random>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "io/json_checked.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/mapped_file.h"
#include "tokenizer/unicode.h"

namespace llmtrain::data {
namespace {

using nlohmann::json;

struct RawRecord {
  uint64_t offset;
  uint64_t length;
  int64_t line;
  std::string problem;  // set when the framing itself is broken
};

absl::string_view Trim(absl::string_view s) { return absl::StripAsciiWhitespace(s); }

// Lines of a text file (JSONL, captions): blank lines are not records; "\r\n" endings accepted.
std::vector<RawRecord> SplitLines(absl::string_view text) {
  std::vector<RawRecord> out;
  int64_t line = 1;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == absl::string_view::npos) end = text.size();
    size_t stop = end;
    if (stop > start && text[stop - 1] == '\r') --stop;
    if (!Trim(text.substr(start, stop - start)).empty()) out.push_back({start, stop - start, line, ""});
    start = end + 1;
    ++line;
  }
  return out;
}

// Top-level elements of a JSON array file, found by scanning strings and nesting; an element
// that the file ends inside is returned with a problem.
std::vector<RawRecord> SplitJsonArray(absl::string_view text) {
  std::vector<RawRecord> out;
  size_t i = text.find('[');
  int64_t line = 1;
  for (size_t k = 0; k < i; ++k) line += text[k] == '\n';
  ++i;
  int depth = 0;
  bool in_string = false, escape = false, closed = false;
  size_t element_start = std::string::npos;
  int64_t element_line = line;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') ++line;
    if (in_string) {
      if (escape) {
        escape = false;
      } else if (c == '\\') {
        escape = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (depth == 0 && (c == ',' || c == ']')) {
      if (element_start != std::string::npos) {
        out.push_back({element_start, i - element_start, element_line, ""});
        element_start = std::string::npos;
      } else if (c == ',') {
        out.push_back({i, 1, line, "empty element in the JSON array (two commas)"});
      }
      if (c == ']') {
        closed = true;
        ++i;
        break;
      }
      continue;
    }
    if (element_start == std::string::npos && !absl::ascii_isspace(static_cast<unsigned char>(c))) {
      element_start = i;
      element_line = line;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  if (!closed) {
    const uint64_t start = element_start != std::string::npos ? element_start : text.size();
    out.push_back({start, text.size() - start, element_start != std::string::npos ? element_line : line,
                   "the file ends inside the JSON array (truncated?)"});
  } else if (!Trim(text.substr(std::min(i, text.size()))).empty()) {
    size_t start = i;
    for (; start < text.size() && absl::ascii_isspace(static_cast<unsigned char>(text[start])); ++start) {
      line += text[start] == '\n';
    }
    out.push_back({start, text.size() - start, line, "text after the closing ] of the JSON array"});
  }
  return out;
}

std::string Describe(const json& v) { return io::detail::Describe(v); }

// A required string field; `allow_empty` for optional context/input.
absl::StatusOr<std::string> Field(const json& obj, const char* key, bool required, bool allow_empty) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat("missing field \"", key, "\""));
    return std::string();
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("field \"", key, "\" must be a string, found ", Describe(*it)));
  }
  std::string value = it->get<std::string>();
  if (!allow_empty && Trim(value).empty()) return absl::InvalidArgumentError(absl::StrCat("empty field \"", key, "\""));
  return value;
}

tokenizer::Message Text(const char* role, std::string content) {
  tokenizer::Message m;
  m.role = role;
  m.content = std::move(content);
  return m;
}

absl::Status NeedsAssistant(const std::vector<tokenizer::Message>& messages) {
  for (const auto& m : messages) {
    if (m.role != "assistant") continue;
    if (m.content_is_list) {
      for (const auto& p : m.parts) {
        if (p.type == "text" && !Trim(p.text).empty()) return absl::OkStatus();
      }
    } else if (!Trim(m.content).empty()) {
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError("no assistant turn with content: nothing to train on");
}

// Images named inside content parts ({"type": "image", "image"|"path"|"url": …}).
void CollectImages(const json& content, std::vector<std::string>* images) {
  if (!content.is_array()) return;
  for (const json& part : content) {
    if (!part.is_object() || part.value("type", "") != "image") continue;
    for (const char* key : {"image", "path", "url"}) {
      if (part.contains(key) && part[key].is_string()) {
        images->push_back(part[key].get<std::string>());
        break;
      }
    }
  }
}

// Format guess of one parsed record from its keys.
Format Guess(const json& obj) {
  if (!obj.is_object()) return Format::kAuto;
  if (obj.contains("messages")) return Format::kMessages;
  if (obj.contains("conversations")) return Format::kShareGpt;
  if (obj.contains("instruction") && obj.contains("response")) return Format::kDolly;
  if (obj.contains("instruction") && obj.contains("output")) return Format::kAlpaca;
  if (obj.contains("text")) return Format::kText;
  return Format::kAuto;
}

bool LooksLikeCaption(absl::string_view line) {
  const size_t tab = line.find('\t');
  const size_t hash = line.rfind('#', tab);
  if (tab == absl::string_view::npos || hash == absl::string_view::npos) return false;
  int n = 0;
  return absl::SimpleAtoi(line.substr(hash + 1, tab - hash - 1), &n);
}

}  // namespace

absl::StatusOr<Format> ParseFormat(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "auto") return Format::kAuto;
  if (n == "dolly") return Format::kDolly;
  if (n == "alpaca") return Format::kAlpaca;
  if (n == "messages" || n == "chat") return Format::kMessages;
  if (n == "sharegpt") return Format::kShareGpt;
  if (n == "text") return Format::kText;
  if (n == "captions" || n == "flickr8k") return Format::kCaptions;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown data format \"", name, "\" (supported: auto, dolly, alpaca, messages, sharegpt, text, captions)"));
}

absl::string_view FormatName(Format format) {
  switch (format) {
    case Format::kAuto: return "auto";
    case Format::kDolly: return "dolly";
    case Format::kAlpaca: return "alpaca";
    case Format::kMessages: return "messages";
    case Format::kShareGpt: return "sharegpt";
    case Format::kText: return "text";
    case Format::kCaptions: return "captions";
  }
  return "auto";
}

std::string BadRecord::ToString() const { return absl::StrCat(file, ":", line, ": ", reason); }

absl::StatusOr<Example> ParseRecord(Format format, absl::string_view record, absl::string_view where) {
  Example ex;
  ex.where = std::string(where);
  if (format == Format::kCaptions) {
    absl::string_view line = record;
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
    if (!io::detail::IsValidUtf8(line)) return absl::InvalidArgumentError("invalid UTF-8");
    const size_t tab = line.find('\t');
    const size_t hash = tab == absl::string_view::npos ? tab : line.rfind('#', tab);
    int n = 0;
    if (tab == absl::string_view::npos || hash == absl::string_view::npos ||
        !absl::SimpleAtoi(line.substr(hash + 1, tab - hash - 1), &n)) {
      return absl::InvalidArgumentError("expected \"<image>#<n>\\t<caption>\"");
    }
    const absl::string_view caption = Trim(line.substr(tab + 1));
    if (hash == 0) return absl::InvalidArgumentError("empty image name");
    if (caption.empty()) return absl::InvalidArgumentError("empty caption");
    ex.images.emplace_back(line.substr(0, hash));
    tokenizer::Message user;
    user.role = "user";
    user.content_is_list = true;
    user.parts = {{"image", ""}, {"text", kCaptionPrompt}};
    ex.messages = {user, Text("assistant", std::string(caption))};
    return ex;
  }
  // JSON formats: the checked parser reports invalid UTF-8 and nesting too deep.
  auto parsed = io::detail::ParseJson("record", record);
  if (!parsed.ok()) {
    std::string message(parsed.status().message());
    if (absl::StrContains(message, "UTF-8")) return absl::InvalidArgumentError("invalid UTF-8");
    if (absl::StartsWith(message, "record: ")) message = message.substr(8);
    return absl::InvalidArgumentError(absl::StrCat("bad JSON: ", message));
  }
  const json& obj = *parsed;
  if (!obj.is_object()) return absl::InvalidArgumentError(absl::StrCat("expected a JSON object, found ", Describe(obj)));
  switch (format) {
    case Format::kDolly: {
      LLMTRAIN_ASSIGN_OR_RETURN(const std::string instruction, Field(obj, "instruction", true, false));
      LLMTRAIN_ASSIGN_OR_RETURN(const std::string context, Field(obj, "context", false, true));
      LLMTRAIN_ASSIGN_OR_RETURN(std::string response, Field(obj, "response", true, false));
      ex.messages = {Text("user", Trim(context).empty() ? instruction : absl::StrCat(instruction, "\n\n", context)),
                     Text("assistant", std::move(response))};
      return ex;
    }
    case Format::kAlpaca: {
      LLMTRAIN_ASSIGN_OR_RETURN(const std::string instruction, Field(obj, "instruction", true, false));
      LLMTRAIN_ASSIGN_OR_RETURN(const std::string input, Field(obj, "input", false, true));
      LLMTRAIN_ASSIGN_OR_RETURN(std::string output, Field(obj, "output", true, false));
      ex.messages = {Text("user", Trim(input).empty() ? instruction : absl::StrCat(instruction, "\n\n", input)),
                     Text("assistant", std::move(output))};
      return ex;
    }
    case Format::kText: {
      LLMTRAIN_ASSIGN_OR_RETURN(ex.text, Field(obj, "text", true, false));
      return ex;
    }
    case Format::kMessages: {
      const auto it = obj.find("messages");
      if (it == obj.end()) return absl::InvalidArgumentError("missing field \"messages\"");
      if (!it->is_array()) {
        return absl::InvalidArgumentError(absl::StrCat("field \"messages\" must be a list, found ", Describe(*it)));
      }
      if (it->empty()) return absl::InvalidArgumentError("empty field \"messages\"");
      auto messages = tokenizer::ParseMessages(it->dump());
      if (!messages.ok()) return messages.status();
      for (size_t i = 0; i < messages->size(); ++i) {
        const std::string& role = (*messages)[i].role;
        if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
          return absl::InvalidArgumentError(absl::StrCat("messages[", i, "]: unknown role \"", role, "\""));
        }
        CollectImages((*it)[i]["content"], &ex.images);
      }
      ex.messages = std::move(*messages);
      if (obj.contains("images") && obj["images"].is_array()) {
        for (const json& image : obj["images"]) {
          if (image.is_string()) ex.images.push_back(image.get<std::string>());
        }
      }
      LLMTRAIN_RETURN_IF_ERROR(NeedsAssistant(ex.messages));
      return ex;
    }
    case Format::kShareGpt: {
      const auto it = obj.find("conversations");
      if (it == obj.end()) return absl::InvalidArgumentError("missing field \"conversations\"");
      if (!it->is_array()) {
        return absl::InvalidArgumentError(absl::StrCat("field \"conversations\" must be a list, found ", Describe(*it)));
      }
      if (it->empty()) return absl::InvalidArgumentError("empty field \"conversations\"");
      for (size_t i = 0; i < it->size(); ++i) {
        const json& turn = (*it)[i];
        if (!turn.is_object()) return absl::InvalidArgumentError(absl::StrCat("conversations[", i, "]: expected an object"));
        const std::string prefix = absl::StrCat("conversations[", i, "]: ");
        auto from = Field(turn, "from", true, false);
        if (!from.ok()) return absl::InvalidArgumentError(prefix + std::string(from.status().message()));
        auto value = Field(turn, "value", true, true);
        if (!value.ok()) return absl::InvalidArgumentError(prefix + std::string(value.status().message()));
        std::string role;
        if (*from == "human" || *from == "user") role = "user";
        else if (*from == "gpt" || *from == "assistant") role = "assistant";
        else if (*from == "system") role = "system";
        else if (*from == "tool") role = "tool";
        else return absl::InvalidArgumentError(absl::StrCat(prefix, "unknown speaker \"", *from, "\""));
        ex.messages.push_back(Text(role.c_str(), std::move(*value)));
      }
      if (obj.contains("image") && obj["image"].is_string()) ex.images.push_back(obj["image"].get<std::string>());
      LLMTRAIN_RETURN_IF_ERROR(NeedsAssistant(ex.messages));
      return ex;
    }
    case Format::kAuto:
    case Format::kCaptions:
      break;
  }
  return absl::InvalidArgumentError("no format to parse the record with");
}

Dataset::~Dataset() = default;

absl::StatusOr<std::unique_ptr<Dataset>> Dataset::Open(absl::Span<const std::string> files,
                                                       const DatasetOptions& options) {
  if (absl::Status valid = Validate(options); !valid.ok()) return valid;
  if (files.empty()) return absl::InvalidArgumentError("no data files given");
  std::vector<std::shared_ptr<const io::MappedFile>> mapped;
  for (const std::string& name : files) {
    LLMTRAIN_ASSIGN_OR_RETURN(auto file, io::MappedFile::Open(name));
    mapped.push_back(std::move(file));
  }
  return FromFiles(std::move(mapped), options);
}

absl::StatusOr<std::string> ResolveImagePath(absl::string_view root_view, absl::string_view name_view,
                                             bool must_exist) {
  namespace fs = std::filesystem;
  const std::string name(name_view);
  if (name.empty()) return absl::InvalidArgumentError("empty image path");
  if (name.find('\0') != std::string::npos) return absl::InvalidArgumentError("image path holds a NUL byte");
  std::error_code ec;
  const fs::path root = fs::absolute(fs::path(std::string(root_view.empty() ? "." : root_view)), ec).lexically_normal();
  const fs::path given(name);
  const fs::path path = (given.is_absolute() ? given : root / given).lexically_normal();
  const auto inside = [](const fs::path& folder, const fs::path& p) {
    const fs::path relative = p.lexically_relative(folder);
    return !relative.empty() && *relative.begin() != ".." && relative != ".";
  };
  if (!inside(root, path)) {
    return absl::InvalidArgumentError(absl::StrCat("image path \"", name, "\" leaves the image folder ", root.string()));
  }
  if (!must_exist) return path.string();
  if (!fs::is_regular_file(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat("image file not found: ", path.string()));
  }
  // A symbolic link inside the folder must not lead out of it.
  const fs::path real = fs::weakly_canonical(path, ec), real_root = fs::weakly_canonical(root, ec);
  if (!ec && !inside(real_root, real)) {
    return absl::InvalidArgumentError(absl::StrCat("image path \"", name, "\" leads out of the image folder ",
                                                   root.string(), " (to ", real.string(), ")"));
  }
  return path.string();
}

absl::StatusOr<std::unique_ptr<Dataset>> Dataset::FromFiles(std::vector<std::shared_ptr<const io::MappedFile>> files,
                                                            const DatasetOptions& options) {
  if (files.empty()) return absl::InvalidArgumentError("no data files given");
  auto data = std::unique_ptr<Dataset>(new Dataset());
  // A split list: the image names whose captions are used.
  std::optional<absl::flat_hash_set<std::string>> listed;
  if (!options.image_list.empty()) {
    LLMTRAIN_ASSIGN_OR_RETURN(std::string list, ReadFileToString(options.image_list));
    listed.emplace();
    for (absl::string_view line : absl::StrSplit(list, '\n')) {
      line = Trim(line);
      if (!line.empty()) listed->insert(std::string(line));
    }
    if (listed->empty()) return absl::InvalidArgumentError(absl::StrCat(options.image_list, ": lists no image"));
  }
  data->format_ = options.format;
  data->check_images_ = options.check_images;
  data->format_reason_ = options.format == Format::kAuto ? "" : "given";
  for (uint32_t f = 0; f < files.size(); ++f) {
    std::shared_ptr<const io::MappedFile> mapped = files[f];
    const std::string name = mapped->path();
    const absl::string_view text(reinterpret_cast<const char*>(mapped->bytes().data()), mapped->bytes().size());
    absl::string_view body = text;
    if (absl::StartsWith(body, "\xEF\xBB\xBF")) body.remove_prefix(3);  // UTF-8 byte order mark
    const size_t first = body.find_first_not_of(" \t\r\n");
    std::vector<RawRecord> raw = first != absl::string_view::npos && body[first] == '[' ? SplitJsonArray(text)
                                                                                        : SplitLines(text);
    // Where this file's images are: the given folder, or the file's own.
    const std::string root = !options.image_dir.empty() ? options.image_dir
                             : name.find('/') != std::string::npos ? name.substr(0, name.rfind('/'))
                                                                   : std::string(".");
    // Format of this file, from its first records.
    std::map<Format, int> votes;
    int looked = 0;
    for (const RawRecord& r : raw) {
      if (looked >= options.detect_records) break;
      if (!r.problem.empty() || r.length > static_cast<uint64_t>(options.max_record_bytes)) continue;
      const absl::string_view record = text.substr(r.offset, r.length);
      ++looked;
      const json parsed = json::parse(record, nullptr, false);
      const Format guess = !parsed.is_discarded() ? Guess(parsed) : (LooksLikeCaption(record) ? Format::kCaptions : Format::kAuto);
      if (guess != Format::kAuto) ++votes[guess];
    }
    Format detected = Format::kAuto;
    int best = 0;
    for (const auto& [format, count] : votes) {
      if (count > best) {
        best = count;
        detected = format;
      }
    }
    if (data->format_ == Format::kAuto) {
      if (detected == Format::kAuto) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, ": cannot detect the data format from its first ", looked,
            " records (expected the fields of dolly: instruction/context/response, alpaca: instruction/input/output, "
            "messages, sharegpt: conversations, text, or Flickr8K caption lines); give the format"));
      }
      data->format_ = detected;
      data->format_reason_ = absl::StrCat("detected from ", best, " of the first ", looked, " records of ", name);
    } else if (options.format == Format::kAuto && detected != Format::kAuto && detected != data->format_) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": looks like ", FormatName(detected), " but ",
                                                     files[0]->path(), " is ", FormatName(data->format_),
                                                     "; one run takes one format"));
    }
    for (const RawRecord& r : raw) {
      if (!r.problem.empty()) {
        data->bad_.push_back({name, r.line, r.problem});
        continue;
      }
      if (r.length > static_cast<uint64_t>(options.max_record_bytes)) {
        data->bad_.push_back({name, r.line, absl::StrCat("over-long record: ", r.length, " bytes (limit ",
                                                         options.max_record_bytes, ")")});
        continue;
      }
      auto example = ParseRecord(data->format_, text.substr(r.offset, r.length), "");
      if (!example.ok()) {
        data->bad_.push_back({name, r.line, std::string(example.status().message())});
        continue;
      }
      if (listed.has_value() && data->format_ == Format::kCaptions && !example->images.empty() &&
          listed->count(example->images.front()) == 0) {
        ++data->excluded_;
        continue;
      }
      std::string image_problem;
      for (const std::string& image : example->images) {
        auto resolved = ResolveImagePath(root, image, options.check_images);
        if (!resolved.ok()) {
          image_problem = std::string(resolved.status().message());
          break;
        }
      }
      if (!image_problem.empty()) {
        data->bad_.push_back({name, r.line, image_problem});
        continue;
      }
      data->records_.push_back({f, static_cast<uint32_t>(r.length), r.offset, r.line});
    }
    data->files_.push_back(std::move(mapped));
    data->names_.push_back(name);
    data->image_roots_.push_back(root);
  }
  return data;
}

absl::StatusOr<Example> Dataset::Get(int64_t index) const {
  if (index < 0 || index >= size()) {
    return absl::OutOfRangeError(absl::StrCat("record ", index, " of a dataset of ", size()));
  }
  const Record& r = records_[index];
  const auto bytes = files_[r.file]->bytes();
  const absl::string_view record(reinterpret_cast<const char*>(bytes.data()) + r.offset, r.length);
  LLMTRAIN_ASSIGN_OR_RETURN(Example example, ParseRecord(format_, record, absl::StrCat(names_[r.file], ":", r.line)));
  for (std::string& image : example.images) {
    // Checked again (a file replaced by a link out of the folder since Open is refused).
    LLMTRAIN_ASSIGN_OR_RETURN(image, ResolveImagePath(image_roots_[r.file], image, check_images_));
  }
  return example;
}

std::string Dataset::Summary() const {
  const double fraction = total_records() > 0 ? static_cast<double>(bad_.size()) / total_records() : 0.0;
  std::string out = absl::StrFormat("format %s (%s); %d records: %d used, %d bad (%.2f%%)", FormatName(format_),
                                    format_reason_, total_records(), size(), bad_.size(), 100.0 * fraction);
  if (excluded_ > 0) absl::StrAppend(&out, ", ", excluded_, " not in the image list");
  // Group by the reason's kind (the text before any ':'), with the first places.
  std::map<std::string, std::vector<const BadRecord*>> groups;
  for (const BadRecord& b : bad_) {
    std::string kind = b.reason.substr(0, b.reason.find(':'));
    if (absl::StartsWith(b.reason, "messages[") || absl::StartsWith(b.reason, "conversations[")) {
      kind = b.reason.substr(b.reason.find(':') + 2);
    }
    groups[kind].push_back(&b);
  }
  for (const auto& [kind, list] : groups) {
    absl::StrAppend(&out, "\n  ", list.size(), " × ", kind, ": ");
    for (size_t i = 0; i < list.size() && i < 5; ++i) {
      absl::StrAppend(&out, i ? ", " : "", list[i]->file, ":", list[i]->line);
    }
    if (list.size() > 5) absl::StrAppend(&out, ", …");
  }
  return out;
}

absl::Status Dataset::CheckBadFraction(double max_bad_fraction) const {
  const double fraction = total_records() > 0 ? static_cast<double>(bad_.size()) / total_records() : 0.0;
  if (fraction <= max_bad_fraction && size() > 0) return absl::OkStatus();
  std::string report = Summary();
  for (const BadRecord& b : bad_) absl::StrAppend(&report, "\n", b.ToString());
  if (size() == 0) return absl::InvalidArgumentError(absl::StrCat("no usable records\n", report));
  return absl::InvalidArgumentError(absl::StrFormat("%.2f%% of the records are bad, over the limit of %.2f%%\n%s",
                                                    100.0 * fraction, 100.0 * max_bad_fraction, report));
}

Sampler::Sampler(int64_t n_records, const SamplerOptions& options) : n_(n_records), options_(options) {
  if (options_.world_size < 1) options_.world_size = 1;
  if (options_.rank < 0 || options_.rank >= options_.world_size) options_.rank = 0;
}

int64_t Sampler::per_epoch() const {
  // Every rank sees the same count (the tail that does not divide evenly is left out when
  // sharding), so ranks stay in step.
  if (options_.world_size == 1) return n_;
  return n_ / options_.world_size;
}

void Sampler::Shuffle() {
  order_.resize(n_);
  for (int64_t i = 0; i < n_; ++i) order_[i] = i;
  if (options_.shuffle) {
    // Fisher–Yates with mt19937_64 (fully specified by the standard) and rejection sampling, so
    // the order is the same with every standard library.
    std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(position_.epoch));
    for (int64_t i = n_ - 1; i > 0; --i) {
      const uint64_t range = static_cast<uint64_t>(i) + 1;
      const uint64_t limit = UINT64_MAX - UINT64_MAX % range;
      uint64_t r;
      do {
        r = rng();
      } while (r >= limit);
      std::swap(order_[i], order_[static_cast<int64_t>(r % range)]);
    }
  }
  shuffled_epoch_ = position_.epoch;
}

std::optional<int64_t> Sampler::Next() {
  if (per_epoch() == 0) return std::nullopt;
  if (position_.cursor >= per_epoch()) {
    ++position_.epoch;
    position_.cursor = 0;
  }
  if (shuffled_epoch_ != position_.epoch) Shuffle();
  const int64_t slot = position_.cursor * options_.world_size + options_.rank;
  ++position_.cursor;
  return order_[slot];
}

void Sampler::Seek(const Position& position) { position_ = position; }

absl::Status Validate(const DatasetOptions& o) {
  if (o.max_record_bytes < 1 || o.detect_records < 1) {
    return absl::InvalidArgumentError(absl::StrCat("DatasetOptions.max_record_bytes / detect_records: expected ≥ 1, found ",
                                                   o.max_record_bytes, " / ", o.detect_records));
  }
  return absl::OkStatus();
}

absl::Status Validate(const SamplerOptions& o) {
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("SamplerOptions.rank / world_size: expected 0 ≤ rank < world_size, found ",
                                                   o.rank, " / ", o.world_size));
  }
  return absl::OkStatus();
}

}  // namespace llmtrain::data
