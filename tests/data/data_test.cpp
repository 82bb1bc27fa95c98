// data/: readers, format detection, the bad-record table, the sampler (shuffle, shards, resume),
// the default Debian-package data set, `llmtrain data-check`, and the collator's labels against
// our chat template and against TRL's SFT data preparation.
#include <catch2/catch.hpp>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "llmtrain/data/builtin.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/io/mapped_file.h"
#include "nlohmann/json.hpp"
#include "testing/json_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

std::shared_ptr<const io::MappedFile> Bytes(const std::string& name, const std::string& text) {
  return io::MappedFile::FromBytes(name, absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()),
                                                                  text.size()));
}

std::string WriteFile(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

const char* kDolly1 = R"({"instruction": "What is 2+2?", "context": "", "response": "4", "category": "open_qa"})";
const char* kDolly2 = R"({"instruction": "Summarize.", "context": "A long text.", "response": "Short.", "category": "summarization"})";

TEST_CASE("data: formats are detected from the first records, and each maps to a conversation", "[data]") {
  struct Case {
    std::string name, text;
    data::Format format;
    std::string user, assistant;
  };
  const std::vector<Case> cases = {
      {"dolly.jsonl", std::string(kDolly2) + "\n" + kDolly1 + "\n", data::Format::kDolly, "Summarize.\n\nA long text.", "Short."},
      {"alpaca.json", R"([{"instruction": "Add", "input": "2 and 3", "output": "5"}, {"instruction": "Hi", "input": "", "output": "Hello"}])",
       data::Format::kAlpaca, "Add\n\n2 and 3", "5"},
      {"chat.jsonl", R"({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]})",
       data::Format::kMessages, "U", "A"},
      {"sharegpt.json", R"([{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "R"}], "image": "x.jpg"}])",
       data::Format::kShareGpt, "Q", "R"},
      {"captions.txt", "1000268201_693b08cb0e.jpg#0\tA child in a pink dress is climbing up stairs .\r\n"
                       "1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .\r\n",
       data::Format::kCaptions, "", "A child in a pink dress is climbing up stairs ."},
  };
  data::DatasetOptions no_image_files;  // the images these records name are not on disk
  no_image_files.check_images = false;
  for (const Case& c : cases) {
    INFO(c.name);
    auto d = data::Dataset::FromFiles({Bytes(c.name, c.text)}, no_image_files);
    REQUIRE(d.ok());
    CHECK((*d)->format() == c.format);
    CHECK_THAT((*d)->format_reason(), Catch::Contains("detected from"));
    CHECK((*d)->bad_records().empty());
    auto e = (*d)->Get(0);
    REQUIRE(e.ok());
    CHECK_THAT(e->where, Catch::StartsWith(c.name + ":"));
    const auto& m = e->messages;
    REQUIRE(m.size() >= 2);
    CHECK(m.back().role == "assistant");
    CHECK(m.back().content == c.assistant);
    if (!c.user.empty()) CHECK(m[m.size() - 2].content == c.user);
  }
  auto text = data::Dataset::FromFiles({Bytes("t.jsonl", R"({"text": "plain"})")});
  REQUIRE(text.ok());
  CHECK((*text)->format() == data::Format::kText);
  CHECK((*text)->Get(0)->text == "plain");
  // Image names come back as paths in the image folder (here: the data file's, the working one).
  const std::string here = std::filesystem::current_path().string();
  auto captions = data::Dataset::FromFiles({Bytes("c.txt", "a.jpg#0\tA dog .\n")}, no_image_files);
  REQUIRE(captions.ok());
  CHECK(captions->get()->Get(0)->images == std::vector<std::string>{here + "/a.jpg"});
  auto share = data::Dataset::FromFiles({Bytes("s.json", cases[3].text)}, no_image_files);
  CHECK(share->get()->Get(0)->images == std::vector<std::string>{here + "/x.jpg"});
}

TEST_CASE("data: the format can be given, and undetectable or mixed files are refused", "[data]") {
  data::DatasetOptions options;
  options.format = data::Format::kAlpaca;
  auto forced = data::Dataset::FromFiles({Bytes("d.jsonl", kDolly1)}, options);
  REQUIRE(forced.ok());
  CHECK((*forced)->format_reason() == "given");
  REQUIRE((*forced)->bad_records().size() == 1);
  CHECK((*forced)->bad_records()[0].ToString() == "d.jsonl:1: missing field \"output\"");

  auto unknown = data::Dataset::FromFiles({Bytes("u.jsonl", R"({"question": "a", "answer": "b"})")});
  REQUIRE(!unknown.ok());
  CHECK_THAT(std::string(unknown.status().message()), Catch::Contains("u.jsonl: cannot detect the data format"));

  auto mixed = data::Dataset::FromFiles({Bytes("a.jsonl", kDolly1), Bytes("b.jsonl", R"({"text": "x"})")});
  REQUIRE(!mixed.ok());
  CHECK_THAT(std::string(mixed.status().message()), Catch::Contains("b.jsonl: looks like text but a.jsonl is dolly"));
  CHECK(!data::ParseFormat("csv").ok());
}

// Each corrupted file: the bad record is reported with its file:line and reason, the valid ones
// around it are kept, and valid + bad = all records.
TEST_CASE("data: a table of corrupted files, each bad record reported with file:line and reason", "[data]") {
  struct Case {
    std::string name, text;
    int64_t bad_line;
    std::string reason;
  };
  const std::string ok = kDolly1;
  const std::vector<Case> cases = {
      {"bad_json.jsonl", ok + "\n{\"instruction\": \"x\", \n" + ok + "\n", 2, "bad JSON"},
      {"not_object.jsonl", ok + "\n[1, 2]\n" + ok + "\n", 2, "expected a JSON object, found an array"},
      {"string_record.jsonl", ok + "\n\"just text\"\n", 2, "expected a JSON object, found the string \"just text\""},
      {"missing_response.jsonl", ok + "\n{\"instruction\": \"q\", \"context\": \"\"}\n", 2, "missing field \"response\""},
      {"empty_instruction.jsonl", ok + "\n{\"instruction\": \"  \", \"response\": \"r\"}\n", 2, "empty field \"instruction\""},
      {"wrong_type.jsonl", ok + "\n{\"instruction\": 5, \"response\": \"r\"}\n", 2,
       "field \"instruction\" must be a string, found the number 5"},
      {"null_response.jsonl", ok + "\n{\"instruction\": \"q\", \"response\": null}\n", 2, "missing field \"response\""},
      {"context_type.jsonl", ok + "\n{\"instruction\": \"q\", \"context\": [], \"response\": \"r\"}\n", 2,
       "field \"context\" must be a string"},
      {"invalid_utf8.jsonl", ok + "\n{\"instruction\": \"caf\xC3\", \"response\": \"r\"}\n", 2, "invalid UTF-8"},
      {"over_long.jsonl", ok + "\n{\"instruction\": \"" + std::string(1100000, 'a') + "\", \"response\": \"r\"}\n", 2,
       "over-long record: 1100036 bytes (limit 1048576)"},
      {"messages_empty.jsonl",
       R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})"
       "\n"
       R"({"messages": []})",
       2, "empty field \"messages\""},
      {"truncated_line.jsonl", ok + "\n" + ok + "\n{\"instruction\": \"q\", \"resp", 3, "bad JSON"},
      {"trailing_comma.jsonl", ok + "\n{\"instruction\": \"q\", \"response\": \"r\",}\n", 2, "bad JSON"},
      {"duplicate_key.jsonl", ok + "\n{\"instruction\": \"q\", \"instruction\": \"p\", \"response\": \"r\"}\n", 2,
       "bad JSON"},
      {"truncated_array.json", "[" + ok + ",\n" + ok + ",\n{\"instruction\": \"q\"", 3,
       "the file ends inside the JSON array"},
      {"two_commas.json", "[" + ok + ",\n,\n" + ok + "]", 2, "empty element in the JSON array"},
      {"after_array.json", "[" + ok + "]\n{\"x\": 1}\n", 2, "text after the closing ] of the JSON array"},
      {"messages_no_assistant.jsonl",
       R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})"
       "\n"
       R"({"messages": [{"role": "user", "content": "only a question"}]})",
       2, "no assistant turn with content"},
      {"messages_bad_role.jsonl",
       R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})"
       "\n"
       R"({"messages": [{"role": "wizard", "content": "a"}, {"role": "assistant", "content": "b"}]})",
       2, "messages[0]: unknown role \"wizard\""},
      {"messages_not_list.jsonl",
       R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})"
       "\n"
       R"({"messages": "hello"})",
       2, "field \"messages\" must be a list, found the string \"hello\""},
      {"messages_content_number.jsonl",
       R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})"
       "\n"
       R"({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]})",
       2, "messages[0]: \"content\" must be a string or a list of parts"},
      {"sharegpt_bad_speaker.jsonl",
       R"({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})"
       "\n"
       R"({"conversations": [{"from": "robot", "value": "a"}, {"from": "gpt", "value": "b"}]})",
       2, "conversations[0]: unknown speaker \"robot\""},
      {"sharegpt_missing_value.jsonl",
       R"({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})"
       "\n"
       R"({"conversations": [{"from": "human"}, {"from": "gpt", "value": "b"}]})",
       2, "conversations[0]: missing field \"value\""},
      {"text_empty.jsonl", "{\"text\": \"a\"}\n{\"text\": \"\"}\n", 2, "empty field \"text\""},
      {"captions_no_tab.txt", "a.jpg#0\tA dog .\nb.jpg#0 A cat .\n", 2, "expected \"<image>#<n>\\t<caption>\""},
      {"captions_empty.txt", "a.jpg#0\tA dog .\nb.jpg#1\t   \n", 2, "empty caption"},
  };
  data::DatasetOptions no_image_files;  // the images these records name are not on disk
  no_image_files.check_images = false;
  for (const Case& c : cases) {
    INFO(c.name);
    auto d = data::Dataset::FromFiles({Bytes(c.name, c.text)}, no_image_files);
    INFO((d.ok() ? std::string("opened") : std::string(d.status().message())));
    REQUIRE(d.ok());
    REQUIRE((*d)->bad_records().size() == 1);
    const data::BadRecord& bad = (*d)->bad_records()[0];
    INFO(bad.ToString());
    CHECK(bad.file == c.name);
    CHECK(bad.line == c.bad_line);
    CHECK_THAT(bad.reason, Catch::Contains(c.reason));
    CHECK((*d)->size() >= 1);
    CHECK((*d)->size() + 1 == (*d)->total_records());
    for (int64_t i = 0; i < (*d)->size(); ++i) CHECK((*d)->Get(i).ok());
    CHECK_THAT((*d)->Summary(), Catch::Contains(absl::StrCat(c.name, ":", c.bad_line)));
  }
  std::printf("data: %zu corrupted-file cases, each reported with file:line and reason\n", cases.size());
  CHECK(cases.size() >= 20);
}

TEST_CASE("data: over max_bad_fraction the run stops with the report", "[data]") {
  std::string text;
  for (int i = 0; i < 97; ++i) text += std::string(kDolly1) + "\n";
  for (int i = 0; i < 3; ++i) text += "{broken\n";
  auto d = data::Dataset::FromFiles({Bytes("m.jsonl", text)});
  REQUIRE(d.ok());
  CHECK((*d)->size() == 97);
  CHECK((*d)->bad_records().size() == 3);
  CHECK((*d)->CheckBadFraction(0.05).ok());
  const absl::Status over = (*d)->CheckBadFraction(0.01);
  REQUIRE(!over.ok());
  const std::string message(over.message());
  CHECK_THAT(message, Catch::Contains("3.00% of the records are bad, over the limit of 1.00%"));
  CHECK_THAT(message, Catch::Contains("m.jsonl:98: bad JSON"));
  CHECK_THAT(message, Catch::Contains("m.jsonl:100: bad JSON"));
  CHECK_THAT((*d)->Summary(), Catch::Contains("3 × bad JSON: m.jsonl:98, m.jsonl:99, m.jsonl:100"));
  // Blank lines are not records, and nothing else is skipped silently.
  auto blank = data::Dataset::FromFiles({Bytes("b.jsonl", std::string("\n\n") + kDolly1 + "\n   \n" + kDolly2 + "\n")});
  REQUIRE(blank.ok());
  CHECK((*blank)->total_records() == 2);
  CHECK((*blank)->Get(1)->where == "b.jsonl:5");
}

TEST_CASE("data: the sampler is deterministic, shards are disjoint, and a resumed run sees the same records",
          "[data]") {
  const int64_t n = 103;
  auto take = [&](data::Sampler& s, int64_t k) {
    std::vector<int64_t> out;
    for (int64_t i = 0; i < k; ++i) out.push_back(*s.Next());
    return out;
  };
  data::Sampler a(n, {.seed = 7}), b(n, {.seed = 7}), c(n, {.seed = 8});
  const auto first = take(a, 250);
  CHECK(first == take(b, 250));
  CHECK(first != take(c, 250));
  // Each epoch is a permutation, and epochs differ.
  CHECK(std::set<int64_t>(first.begin(), first.begin() + n).size() == static_cast<size_t>(n));
  CHECK(std::vector<int64_t>(first.begin(), first.begin() + n) != std::vector<int64_t>(first.begin() + n, first.begin() + 2 * n));
  // Resume: stop after k, save the position, continue in a new sampler.
  for (const int64_t k : {0, 1, 50, 102, 103, 104, 200}) {
    data::Sampler run(n, {.seed = 7});
    const auto before = take(run, k);
    const data::Sampler::Position saved = run.position();
    data::Sampler resumed(n, {.seed = 7});
    resumed.Seek(saved);
    auto all = before;
    const auto after = take(resumed, 250 - k);
    all.insert(all.end(), after.begin(), after.end());
    CHECK(all == first);
  }
  // Shards: 4 ranks see disjoint records, the same count each, all from one epoch's order.
  std::set<int64_t> seen;
  for (int rank = 0; rank < 4; ++rank) {
    data::Sampler s(n, {.seed = 7, .rank = rank, .world_size = 4});
    CHECK(s.per_epoch() == 25);
    for (int64_t v : take(s, 25)) CHECK(seen.insert(v).second);
  }
  CHECK(seen.size() == 100);
  data::Sampler ordered(5, {.shuffle = false});
  CHECK(take(ordered, 7) == std::vector<int64_t>{0, 1, 2, 3, 4, 0, 1});
  data::Sampler empty(0, {});
  CHECK(!empty.Next().has_value());
}

TEST_CASE("data: the default data set is built from this machine's Debian package database", "[data]") {
  const std::string dir = testing::TempDir("debian_dataset");
  const std::string out = dir + "/debian.jsonl";
  auto n = data::BuildDebianPackageDataset(data::kDpkgStatusPath, out);
  REQUIRE(n.ok());
  std::printf("default data set: %lld Dolly records from %s\n", static_cast<long long>(*n), data::kDpkgStatusPath);
  CHECK(*n >= 100);
  auto d = data::Dataset::Open({out});
  REQUIRE(d.ok());
  CHECK((*d)->format() == data::Format::kDolly);
  CHECK((*d)->size() == *n);
  CHECK((*d)->bad_records().empty());
  // A status file of our own: the record is exactly the package's description.
  const std::string status = WriteFile(dir, "status",
                                       "Package: zzz\nStatus: install ok installed\nDescription: tool for z\n"
                                       " First paragraph line one\n line two.\n .\n  - item\n .\n Last.\n\n"
                                       "Package: nodesc\nVersion: 1\n");
  REQUIRE(data::BuildDebianPackageDataset(status, dir + "/one.jsonl").value() == 1);
  auto one = data::Dataset::Open({dir + "/one.jsonl"});
  REQUIRE(one.ok());
  const auto example = (*one)->Get(0);
  REQUIRE(example.ok());
  CHECK_THAT(example->messages[0].content, Catch::Contains("zzz"));
  CHECK(example->messages[1].content == "zzz: Tool for z.\n\nFirst paragraph line one line two.\n\n - item\n\nLast.");
  CHECK(!data::BuildDebianPackageDataset(dir + "/missing", dir + "/x.jsonl").ok());
}

TEST_CASE("cli: llmtrain data-check reports format, bad records and token lengths", "[data][cli]") {
  const std::string dir = testing::TempDir("data_check");
  std::string text;
  for (int i = 0; i < 30; ++i) text += std::string(kDolly1) + "\n";
  text += "{\"instruction\": 1}\n";
  const std::string path = WriteFile(dir, "d.jsonl", text);
  const std::string cli = testing::ShellQuote(testing::CliPath());
  const auto run = testing::RunCommand(cli + " data-check --data " + testing::ShellQuote(path) + " --json");
  CHECK(run.exit_code != 0);  // 1 of 31 is over 1%
  const auto out = nlohmann::json::parse(run.out, nullptr, false);
  REQUIRE(out.is_object());
  CHECK(out["format"] == "dolly");
  CHECK(out["used"] == 30);
  CHECK(out["bad_records"][0]["line"] == 31);
  CHECK(out["bad_records"][0]["reason"] == "field \"instruction\" must be a string, found the number 1");
  const auto lenient = testing::RunCommand(cli + " data-check --data " + testing::ShellQuote(path) +
                                           " --max-bad-fraction 0.05");
  CHECK(lenient.exit_code == 0);
  CHECK_THAT(lenient.out, Catch::Contains("bad record " + path + ":31:"));
  if (testing::ReferenceStackAvailable()) {
    const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
    const auto tokens = testing::RunCommand(cli + " data-check --data " + testing::ShellQuote(path) +
                                            " --max-bad-fraction 0.05 --json --tokenizer " + testing::ShellQuote(gguf));
    const auto t = nlohmann::json::parse(tokens.out, nullptr, false);
    REQUIRE(t.is_object());
    CHECK(t["tokens"]["examples"] == 30);
    CHECK(t["tokens"]["min"].get<int>() > 5);
  }
}

// The real Gemma 3 tokenizer (from the 270M GGUF) and chat template, and the default data set.
struct CollatorFixture {
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::unique_ptr<tokenizer::ChatTemplate> chat;
  std::unique_ptr<data::Dataset> dataset;
  CollatorFixture() {
    tok = std::move(tokenizer::Tokenizer::Load(std::string(LLMTRAIN_SOURCE_DIR) +
                                               "/.venv/models/gemma-3-270m-q4_k_m.gguf")
                        .value());
    chat = std::move(tokenizer::ChatTemplate::ForTokenizer(*tok).value());
    const std::string out = testing::TempDir("collator") + "/debian.jsonl";
    REQUIRE(data::BuildDebianPackageDataset(data::kDpkgStatusPath, out).ok());
    dataset = std::move(data::Dataset::Open({out}).value());
  }
};

TEST_CASE("collator: labels are the assistant tokens the chat template marks, padded right", "[data][collator]") {
  if (!testing::ReferenceStackAvailable()) return;  // needs the real GGUF from .venv
  CollatorFixture f;
  data::CollatorOptions options;
  options.batch_size = 4;
  options.max_length = 4096;
  data::Collator collator(*f.tok, f.chat.get(), options);
  const data::Example example = f.dataset->Get(0).value();
  const auto encoded = tokenizer::EncodeChat(*f.tok, *f.chat, example.messages, false).value();
  const auto tokenized = collator.Tokenize(example).value();
  REQUIRE(tokenized.ids == encoded.ids);
  for (size_t i = 0; i < encoded.ids.size(); ++i) {
    CHECK(tokenized.labels[i] == (encoded.assistant_mask[i] ? encoded.ids[i] : data::kIgnoreIndex));
  }
  data::CollatorOptions all = options;
  all.train_on_prompt = true;
  CHECK(data::Collator(*f.tok, f.chat.get(), all).Tokenize(example).value().labels == encoded.ids);

  data::DataLoader loader(*f.dataset, collator, {.seed = 3});
  const data::Batch batch = loader.Next().value();
  REQUIRE(batch.batch_size == 4);
  REQUIRE(batch.sources.size() == 4);
  int64_t targets = 0;
  for (int64_t r = 0; r < batch.batch_size; ++r) {
    bool padding = false;
    for (int64_t t = 0; t < batch.seq_len; ++t) {
      const size_t c = static_cast<size_t>(r * batch.seq_len + t);
      if (batch.attention_mask[c] == 0) padding = true;
      CHECK(batch.attention_mask[c] == (padding ? 0 : 1));  // right padding: zeros only at the end
      if (padding) {
        CHECK(batch.labels[c] == data::kIgnoreIndex);
        CHECK(batch.input_ids[c] == collator.pad_id());
      } else {
        CHECK(batch.position_ids[c] == t);
        targets += t > 0 && batch.labels[c] != data::kIgnoreIndex;
      }
    }
  }
  CHECK(batch.target_tokens == targets);
  CHECK(targets > 0);
}

TEST_CASE("collator: packing restarts positions, separates segments and takes no loss across them",
          "[data][collator]") {
  if (!testing::ReferenceStackAvailable()) return;
  CollatorFixture f;
  data::CollatorOptions options;
  options.packing = true;
  options.max_length = 512;
  options.batch_size = 2;
  data::Collator collator(*f.tok, f.chat.get(), options);
  data::DataLoader loader(*f.dataset, collator, {.seed = 5});
  int64_t packed_rows = 0;
  for (int b = 0; b < 5; ++b) {
    const data::Batch batch = loader.Next().value();
    CHECK(batch.seq_len == 512);
    CHECK(batch.batch_size <= 2);
    for (int64_t r = 0; r < batch.batch_size; ++r) {
      int64_t segments = 0;
      for (int64_t t = 0; t < batch.seq_len; ++t) {
        const size_t c = static_cast<size_t>(r * batch.seq_len + t);
        if (batch.segment_ids[c] == 0) continue;
        const bool starts = t == 0 || batch.segment_ids[c - 1] != batch.segment_ids[c];
        if (starts) {
          ++segments;
          CHECK(batch.segment_ids[c] == segments);
          CHECK(batch.position_ids[c] == 0);
          CHECK(batch.labels[c] == data::kIgnoreIndex);
          CHECK(batch.input_ids[c] == *f.tok->bos_id());
        } else {
          CHECK(batch.position_ids[c] == batch.position_ids[c - 1] + 1);
        }
      }
      packed_rows += segments > 1;
    }
  }
  CHECK(packed_rows > 0);
}

TEST_CASE("collator: token budget, truncation, and resuming gives the identical batch stream", "[data][collator]") {
  if (!testing::ReferenceStackAvailable()) return;
  CollatorFixture f;
  for (const bool packing : {false, true}) {
    for (const int64_t budget : {int64_t{0}, int64_t{1024}}) {
      INFO("packing " << packing << " budget " << budget);
      data::CollatorOptions options;
      options.packing = packing;
      options.max_length = 256;
      options.batch_size = 3;
      options.token_budget = budget;
      data::Collator collator(*f.tok, f.chat.get(), options);
      data::DataLoader run(*f.dataset, collator, {.seed = 11});
      std::vector<data::Batch> straight;
      for (int b = 0; b < 12; ++b) straight.push_back(run.Next().value());
      for (const auto& batch : straight) {
        CHECK(batch.seq_len <= 256);
        if (budget > 0) CHECK(batch.batch_size * batch.seq_len <= budget);
        if (budget == 0) CHECK(batch.batch_size <= 3);
      }
      for (const int k : {1, 5}) {
        data::DataLoader first(*f.dataset, collator, {.seed = 11});
        for (int b = 0; b < k; ++b) (void)first.Next().value();
        data::DataLoader resumed(*f.dataset, collator, {.seed = 11});
        resumed.Seek(first.position());
        for (int b = k; b < 12; ++b) {
          const data::Batch batch = resumed.Next().value();
          CHECK(batch.input_ids == straight[b].input_ids);
          CHECK(batch.labels == straight[b].labels);
          CHECK(batch.sources == straight[b].sources);
        }
      }
    }
  }
  // Dropping over-long examples reports each one with its file:line.
  data::CollatorOptions drop;
  drop.max_length = 64;
  drop.truncation = data::CollatorOptions::Truncation::kDrop;
  data::Collator dropping(*f.tok, f.chat.get(), drop);
  data::DataLoader loader(*f.dataset, dropping, {.seed = 1});
  const data::Batch batch = loader.Next().value();
  CHECK(batch.seq_len <= 64);
  REQUIRE(!loader.skipped().empty());
  CHECK_THAT(loader.skipped()[0], Catch::Contains("debian.jsonl:") && Catch::Contains("over max_length 64"));
  // Truncating so that no reply is left: skipped with the reason.
  data::CollatorOptions tiny;
  tiny.max_length = 8;
  data::Collator truncating(*f.tok, f.chat.get(), tiny);
  auto none = truncating.Tokenize(f.dataset->Get(0).value());
  REQUIRE(!none.ok());
  CHECK_THAT(std::string(none.status().message()), Catch::Contains("no target token within max_length 8"));
}

// TRL's SFT data preparation of the same records with the same tokenizers and chat templates
// (tests/reference/collator_ref.py), made once per run of this binary.
const std::string& TrlReferenceDir() {
  static const std::string dir = [] {
    const std::string d = testing::TempDir("collator_ref");
    const auto run = testing::RunReference(
        "collator_ref.py", {"make", d, std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf"});
    if (run.exit_code != 0) return std::string();
    std::printf("collator reference (TRL): %s\n", testing::LastJsonLine(run.out).dump().c_str());
    return d;
  }();
  return dir;
}

std::vector<nlohmann::json> ReadJsonLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// Our labels (loss on the assistant's reply and its end-of-turn marker, as the chat template
// marks them) against the labels TRL's SFTTrainer computes: completion_only_loss for Dolly and
// Alpaca records (prompt/completion pairs), assistant_only_loss for messages and ShareGPT records
// (return_assistant_tokens_mask with TRL's {% generation %} training templates). On the same ids,
// every token is labelled alike except where TRL trains one of two tokens we do not:
//   - the newline after each assistant turn's end-of-turn marker ("<end_of_turn>\n",
//     "<|im_end|>\n"): TRL's completion is everything after the prompt, and its training
//     templates put the newline inside {% generation %}; the model stops at the marker, so we
//     end there. TRL trains exactly one more token per assistant turn;
//   - with Qwen2.5 and assistant_only_loss, the newline after "<|im_start|>assistant": TRL's
//     qwen2_5_training.jinja opens {% generation %} before it, though it belongs to the
//     generation prompt (TRL's own prompt/completion rule leaves it out, and so do we).
// The ids differ only with Qwen3 and assistant_only_loss: TRL's qwen3_training.jinja gives every
// assistant turn a <think> block, while Qwen3's real template (ours) drops it from turns before
// the last user query, so conversations with such a turn render differently.
TEST_CASE("collator: labels equal TRL's SFT completion and assistant masks on Dolly, Alpaca, messages and ShareGPT",
          "[data][collator][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string& dir = TrlReferenceDir();
  REQUIRE(!dir.empty());
  struct Family {
    std::string name, path;
  };
  const std::vector<Family> families = {
      {"gemma3", std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf"},
      {"qwen2.5", dir + "/qwen2.5"},
      {"qwen3", dir + "/qwen3"},
  };
  const std::vector<std::pair<std::string, data::Format>> formats = {
      {"dolly", data::Format::kDolly},
      {"alpaca", data::Format::kAlpaca},
      {"messages", data::Format::kMessages},
      {"sharegpt", data::Format::kShareGpt},
  };
  for (const Family& family : families) {
    auto tok = tokenizer::Tokenizer::Load(family.path);
    INFO(family.name << ": " << (tok.ok() ? std::string("loaded") : std::string(tok.status().message())));
    REQUIRE(tok.ok());
    const tokenizer::Tokenizer& t = **tok;
    auto chat = tokenizer::ChatTemplate::ForTokenizer(t);
    REQUIRE(chat.ok());
    const std::optional<int32_t> end_of_turn =
        t.TokenToId("<end_of_turn>") ? t.TokenToId("<end_of_turn>") : t.TokenToId("<|im_end|>");
    REQUIRE(end_of_turn.has_value());
    const std::optional<int32_t> chatml_start = t.TokenToId("<|im_start|>");  // none for Gemma
    auto text_of = [&t](int32_t id) { return t.Decode(absl::Span<const int32_t>(&id, 1)); };
    data::CollatorOptions options;
    options.max_length = int64_t{1} << 20;  // TRL ran with max_length=None: nothing is truncated
    const data::Collator collator(t, chat->get(), options);
    for (const auto& [format_name, format] : formats) {
      INFO(family.name << " " << format_name);
      const bool assistant_only = format == data::Format::kMessages || format == data::Format::kShareGpt;
      auto dataset = data::Dataset::Open({dir + "/" + format_name + ".jsonl"});
      REQUIRE(dataset.ok());
      CHECK((*dataset)->format() == format);
      REQUIRE((*dataset)->bad_records().empty());
      const auto expected = ReadJsonLines(dir + "/" + family.name + "." + format_name + ".trl");
      REQUIRE(static_cast<int64_t>(expected.size()) == (*dataset)->size());
      size_t same_ids = 0, different_ids = 0, tokens = 0, agree = 0, trained = 0, turns = 0, eot_newlines = 0,
             header_newlines = 0, unexplained = 0, shown = 0;
      for (int64_t i = 0; i < (*dataset)->size(); ++i) {
        const data::Example example = (*dataset)->Get(i).value();
        const auto ours = collator.Tokenize(example);
        INFO(example.where << ": " << (ours.ok() ? std::string("tokenized") : std::string(ours.status().message())));
        REQUIRE(ours.ok());
        REQUIRE(!expected[i].contains("error"));
        const auto trl_ids = expected[i]["ids"].get<std::vector<int32_t>>();
        const auto trl_labels = expected[i]["labels"].get<std::vector<int64_t>>();
        REQUIRE(trl_labels.size() == trl_ids.size());
        size_t assistant_turns = 0, last_user = 0;
        bool assistant_before_last_user = false;
        for (size_t m = 0; m < example.messages.size(); ++m) {
          if (example.messages[m].role == "user") last_user = m;
        }
        for (size_t m = 0; m < example.messages.size(); ++m) {
          if (example.messages[m].role != "assistant") continue;
          ++assistant_turns;
          assistant_before_last_user = assistant_before_last_user || m < last_user;
        }
        if (ours->ids != trl_ids) {
          ++different_ids;
          INFO("ours " << nlohmann::json(t.Decode(ours->ids)).dump() << "\nTRL  " << nlohmann::json(t.Decode(trl_ids)).dump());
          CHECK((family.name == "qwen3" && assistant_only && assistant_before_last_user));
          continue;
        }
        ++same_ids;
        turns += assistant_turns;
        for (size_t k = 0; k < trl_ids.size(); ++k) {
          ++tokens;
          const bool ours_trained = ours->labels[k] != data::kIgnoreIndex;
          const bool trl_trained = trl_labels[k] != -100;
          if (ours_trained == trl_trained) {
            ++agree;
            trained += ours_trained;
            if (ours_trained) CHECK(ours->labels[k] == trl_labels[k]);
            continue;
          }
          const bool trl_newline = trl_trained && text_of(trl_ids[k]) == "\n";
          if (trl_newline && k >= 1 && trl_ids[k - 1] == *end_of_turn) {
            ++eot_newlines;
          } else if (trl_newline && chatml_start && k >= 2 && trl_ids[k - 2] == *chatml_start &&
                     text_of(trl_ids[k - 1]) == "assistant") {
            ++header_newlines;
          } else {
            ++unexplained;
            if (shown++ < 3) {
              UNSCOPED_INFO(example.where << " token " << k << " " << nlohmann::json(text_of(trl_ids[k])).dump()
                                          << ": ours " << (ours_trained ? "trained" : "not trained") << ", TRL "
                                          << (trl_trained ? "trained" : "not trained"));
            }
          }
        }
      }
      std::printf("collator vs TRL %s, %s (%s): %zu records, %zu with the same ids (%zu differ); labels agree on %zu "
                  "of %zu tokens (%zu trained by both); TRL also trains %zu newlines after the end-of-turn marker "
                  "(%zu assistant turns) and %zu after \"<|im_start|>assistant\"; %zu other differences\n",
                  family.name.c_str(), format_name.c_str(), assistant_only ? "assistant_only_loss" : "completion_only_loss",
                  expected.size(), same_ids, different_ids, agree, tokens, trained, eot_newlines, turns, header_newlines,
                  unexplained);
      CHECK(unexplained == 0);
      CHECK(eot_newlines == turns);
      CHECK(same_ids >= expected.size() / 4);
      if (!(family.name == "qwen2.5" && assistant_only)) CHECK(header_newlines == 0);
      if (!(family.name == "qwen3" && assistant_only)) CHECK(different_ids == 0);
    }
  }
}

}  // namespace
}  // namespace llmtrain
